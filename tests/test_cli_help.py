"""What a user reads from ``dualprop`` in a terminal: help texts in plain text that list every
command, and errors of a few lines that end in where the help is."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from dualprop_jax import cli
from dualprop_jax.cli.short_errors import ShortErrorParser

MARKUP = ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:", ":attr:", ":ref:", ":doc:")
"""reStructuredText that a docstring may hold and a terminal shows as it is."""

COMMANDS = sorted(cli.build_parser().commands)


def _dualprop(*argv: str) -> subprocess.CompletedProcess:
    """The installed ``dualprop`` script (``python -m dualprop_jax.cli`` where there is none)."""
    script = pathlib.Path(sys.executable).with_name("dualprop")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "dualprop_jax.cli"]
    env = dict(os.environ, COLUMNS="80")  # a terminal's usual width, whatever pytest's is
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_the_commands_are_train_eval_bench_at_least():
    assert {"train", "eval", "bench"} <= set(COMMANDS)


def test_top_level_help_lists_every_command_with_a_one_line_summary_in_plain_text():
    proc = _dualprop("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert not [m for m in MARKUP if m in text] and "SUPPRESS" not in text, text
    lines = text.splitlines()
    for name in COMMANDS:
        (row,) = [i for i, line in enumerate(lines) if line.split()[:1] == [name]]
        summary = lines[row].split(None, 1)[1:]
        assert summary, f"{name} has no summary"
        after = lines[row + 1] if row + 1 < len(lines) else ""
        # one line: the next line is another command's row, not the summary's continuation
        assert not after.strip() or after.split()[0] in COMMANDS, (name, after)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_is_plain_text(command, capsys):
    text = _help(capsys, command)
    assert text.startswith(f"usage: dualprop {command} ")
    assert not [m for m in MARKUP if m in text], text


def test_error_of_the_real_command_is_three_lines_with_status_2():
    proc = _dualprop("train", "--epochs", "x")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) <= 4, proc.stderr
    assert "argument --epochs: invalid int value: 'x'" in proc.stderr
    assert lines[-1] == "run 'dualprop train --help' for the options"


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["train", "--epochs", "x"], "invalid int value: 'x'", "dualprop train --help"),
        (["train", "--frob"], "unrecognized arguments: --frob", "dualprop train --help"),
        (["eval"], "the following arguments are required: --workdir", "dualprop eval --help"),
        (["bench", "--models", "nope"], "unknown models ['nope']", "dualprop bench --help"),
        (["frobnicate"], "invalid choice: 'frobnicate'", "dualprop --help"),
        ([], "the following arguments are required", "dualprop --help"),
    ],
)
def test_errors_are_short_name_the_mistake_and_where_help_is(argv, message, hint, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) <= 4, err
    assert message in err
    assert lines[0].startswith("usage: dualprop") and len(lines[0]) < 60
    assert f"run '{hint}" in lines[-1]


def test_a_parser_without_commands_reports_unknown_arguments_itself(capsys):
    parser = ShortErrorParser(prog="tool")
    parser.add_argument("--n", type=int)
    assert parser.parse_args(["--n", "3"]).n == 3
    assert parser.commands == {}
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--n", "3", "extra"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "usage: tool [options]",
        "tool: error: unrecognized arguments: extra",
        "run 'tool --help' for the options",
    ]


# ------------------------------------------------- the studies' help (their docstrings)

STUDIES = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "studies"


def _study_common():
    sys.path.insert(0, str(STUDIES))
    try:
        import common
    finally:
        sys.path.remove(str(STUDIES))
    return common


@pytest.mark.parametrize(
    ("doc", "plain"),
    [
        ("see :func:`dualprop_jax.core.alignment`.", "see dualprop_jax.core.alignment."),
        ("(:mod:`~dualprop_jax.training.sweep`)", "(sweep)"),
        (":py:data:`the seed <DATA_SEED>` and :meth:`finish`", "the seed and finish"),
        ("with ``--schedule\nbottom_up`` and ``x``", "with --schedule\nbottom_up and x"),
        ("Example::\n\n    run it", "Example:\n\n    run it"),
        ("a `single` quote and 2 :: 3", "a `single` quote and 2 :: 3"),
    ],
)
def test_plain_text_of_a_docstring(doc, plain):
    assert _study_common().plain_text(doc) == plain


def test_every_studys_help_is_plain_text():
    import ast

    plain_text = _study_common().plain_text
    scripts = sorted(p for p in STUDIES.glob("*.py") if p.stem != "common")
    assert len(scripts) >= 5
    for script in scripts:
        doc = ast.get_docstring(ast.parse(script.read_text()), clean=False)
        text = plain_text(doc)
        assert not [m for m in MARKUP if m in text], (script.name, text)
    proc = subprocess.run(
        [sys.executable, str(STUDIES / "paper_grid.py"), "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "VGG16 on CIFAR-10" in proc.stdout
    assert not [m for m in MARKUP if m in proc.stdout], proc.stdout
