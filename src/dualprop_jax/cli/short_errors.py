"""An argparse parser whose errors are short: one line of usage, the message, where help is.

argparse prints a command's whole usage block (dozens of lines for ``dualprop train``) before
a one-line error; a user then has to scroll up to find the message. Here an error is three
lines on stderr and exit status 2, as argparse's::

    usage: dualprop train [options]
    dualprop train: error: argument --epochs: invalid int value: 'x'
    run 'dualprop train --help' for the options
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class ShortErrorParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with short errors; its subcommands' parsers are of this class
    too. An unknown flag after a subcommand is reported by that subcommand's parser (argparse
    reports it at the top level, with the top level's usage)."""

    _commands: argparse.Action | None = None

    def add_subparsers(self, **kwargs):
        """argparse's, and the help ends by saying where each command's own help is."""
        self._commands = super().add_subparsers(**kwargs)
        self.epilog = self.epilog or f"run '{self.prog} COMMAND --help' for a command's options"
        return self._commands

    @property
    def commands(self) -> dict[str, argparse.ArgumentParser]:
        """The subcommands' parsers by name (none before ``add_subparsers``)."""
        return dict(self._commands.choices) if self._commands is not None else {}

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        """Parse like argparse, reporting an unknown flag through the subcommand's parser."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._commands and getattr(parsed, self._commands.dest, None)
            parser = self.commands.get(command, self)
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        """Exit with status 2 after three lines on stderr: usage, message and where help is."""
        if self._commands is None:
            usage, help_for = f"{self.prog} [options]", "the options"
        else:
            usage, help_for = f"{self.prog} COMMAND [options]", "the commands"
        self.exit(
            2,
            f"usage: {usage}\n{self.prog}: error: {message}\n"
            f"run '{self.prog} --help' for {help_for}\n",
        )
