"""The TrainConfig of ``dualprop train``: a ``--config`` JSON file, overridden by the flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import jax

from dualprop_jax import rules
from dualprop_jax.cli.parsers import RULE_FLAGS, SWITCHES
from dualprop_jax.training.config import TrainConfig, check_fields


def read_config_file(path: pathlib.Path) -> dict:
    """The fields in a JSON config file (the current format: the rule is one field)."""
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist.")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"config file {path} is not valid JSON ({e.msg} at line {e.lineno}, "
            f"column {e.colno}); fix it, or see experiments/configs/ for examples."
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} cannot be read: {e}.") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object of fields.")
    try:
        check_fields(values)
    except ValueError as e:
        raise ValueError(f"config file {path}: {e}") from None
    return values


def _rule_from_args(args: argparse.Namespace, given: dict | str | None) -> dict:
    """The rule dict: the config file's rule, then ``--rule`` and the rule flags over it.

    Switching ``--rule`` keeps only the file's settings the new rule takes; a flag the rule
    does not take is an error.
    """
    rule = {"name": given} if isinstance(given, str) else dict(given or {"name": "dp_top"})
    name = args.rule_name or rule.get("name", "dp_top")
    if name != rule.get("name"):
        rule = {k: v for k, v in rule.items() if k in rules.fields_of(name)}
    settings = [s for _, (s, _) in RULE_FLAGS.items()] + list(SWITCHES)
    flags = {s: getattr(args, f"rule_{s}") for s in settings}
    flags = {s: v for s, v in flags.items() if v is not None}
    misplaced = [s for s in flags if s not in rules.fields_of(name)]
    if misplaced:
        shown = ", ".join(f"--{s}" for s in misplaced)
        raise ValueError(
            f"{shown} does not apply to --rule {name} (its settings: "
            f"{', '.join(rules.fields_of(name))}); drop it, or choose a --rule that takes it."
        )
    return {**rule, **flags, "name": name}


def use_dtype(config: TrainConfig) -> None:
    """Turn on JAX's 64-bit mode for a rule that computes in float64 (the library refuses
    float64 without it; the command, which owns its process, may switch it on)."""
    if config.rule.dtype == "float64":
        jax.config.update("jax_enable_x64", True)


def saved_values(args: argparse.Namespace) -> dict:
    """The saved settings of the run that ``--resume`` continues (its ``--workdir``'s
    ``config.json``), the base that a ``--config`` file and the given flags override; ``{}``
    without ``--resume`` or where the workdir holds no config (the resume itself then says
    what is missing)."""
    workdir = getattr(args, "workdir", None)
    if not getattr(args, "resume", False) or workdir is None:
        return {}
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"--resume: the saved settings {path} cannot be read ({e}); restore that file, "
            "or start a new --workdir."
        ) from None
    if not isinstance(values, dict):
        raise ValueError(f"--resume: the saved settings {path} are not a JSON object of fields.")
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the given flags over an optional ``--config`` JSON file, over the
    defaults; with ``--resume``, over the resumed run's saved settings instead of the defaults
    (:func:`saved_values`), so a resume needs only the flags it changes."""
    values = saved_values(args)
    if args.config is not None:
        values.update(read_config_file(args.config))
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name != "rule":
            values[f.name] = v
    values["rule"] = _rule_from_args(args, values.get("rule"))
    return TrainConfig.from_dict(values)
