"""The ``dualprop`` command: ``main`` reads the command line and runs train, eval or bench.

Application layer over :func:`dualprop_jax.training.train.train_and_evaluate` and
:mod:`dualprop_jax.training.benchmark`: parses flags, shows a progress bar, prints tables,
writes the plots, and turns errors into one clear line. Its parts:

- :mod:`~dualprop_jax.cli.parsers`: the command line (subcommands, flags, defaults);
- :mod:`~dualprop_jax.cli.short_errors`: its parser's errors, three lines each;
- :mod:`~dualprop_jax.cli.config`: the TrainConfig from a ``--config`` file and the flags;
- :mod:`~dualprop_jax.cli.train`, :mod:`~dualprop_jax.cli.eval`, :mod:`~dualprop_jax.cli.bench`:
  the subcommands;
- :mod:`~dualprop_jax.cli.launcher`: a multi-process run's training in a watched child process.
"""

from __future__ import annotations

import sys

from dualprop_jax.cli.bench import cmd_bench, format_table
from dualprop_jax.cli.config import config_from_args
from dualprop_jax.cli.eval import cmd_eval
from dualprop_jax.cli.parsers import FLAGS, RULE_FLAGS, build_parser
from dualprop_jax.cli.train import cmd_train

__all__ = ["FLAGS", "RULE_FLAGS", "build_parser", "config_from_args", "format_table", "main"]

_parser = build_parser  # the name other code and tests use


def main(argv: list[str] | None = None) -> int:
    """Run ``dualprop`` with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        try:
            return cmd_bench(args, argv)
        except ValueError as e:
            print(f"dualprop bench: error: {e}", file=sys.stderr)
            return 2
    if args.command == "eval":
        return cmd_eval(args)
    return cmd_train(args, argv)
