"""Rule labels, the names in tables, file names and the CLI: ``"dp_top+damped"``.

A label is a rule name followed by ``+tags``, each of which sets some fields
(:data:`LABEL_EXTRAS`); :func:`from_label` turns a label and shared settings into a rule.
"""

from __future__ import annotations

from typing import Any

from dualprop_jax.rules.base import NAMES, RULES, Rule, fields_of, from_dict

LABEL_EXTRAS: dict[str, dict[str, Any]] = {
    "fast": dict(fast=True, alpha=0.5, passes=0, sweep=True),
    "fw16": dict(schedule="bottom_up", sweep=False, passes=15),
    "damped": dict(damped=True),
    "kp": dict(feedback="kolen_pollack"),
    "exact": dict(output="exact", loss="squared_error"),
    "one_sided": dict(nudging="one_sided"),
    "odd_even": dict(order="odd_even"),
    "fixed": dict(fixed_prediction=True),
    "synchronous": dict(scheme="synchronous"),
}
"""What each ``+tag`` of a rule label sets: ``"dp_top+damped"``, ``"dp+kp"``, ``"ep+one_sided"``;
``+fw16`` is the 2024 scripts' schedule, 16 bottom-up passes and no top-down sweep (a rule's
own label does not carry that tag: such a rule's label is its variant's)."""


def from_label(label: str, **settings) -> Rule:
    """A rule from a table label (``"dp_top"``, ``"bp"``, ``"dp+fast"``, ``"dp_top+damped"``,
    ``"dp+kp"``, ``"ep+one_sided"``) and shared settings.

    Settings the rule does not take are dropped (e.g. ``alpha`` for ``bp``); each ``+tag`` sets
    the fields of :data:`LABEL_EXTRAS` (``+fast`` sets ``fast=True`` and α = ½).
    """
    name, *extras = label.split("+")
    if name not in RULES:
        raise ValueError(
            f"rule label {label!r} is unknown: {name!r} is not one of {NAMES} (or the name of "
            "a registered rule)."
        )
    allowed = fields_of(name)
    kept = {k: v for k, v in settings.items() if k in allowed}
    for tag in extras:
        fields = LABEL_EXTRAS.get(tag)
        if fields is None or not set(fields) <= set(allowed):
            usable = [t for t, f in LABEL_EXTRAS.items() if set(f) <= set(allowed)]
            raise ValueError(
                f"rule label {label!r} is unknown: {name!r} takes the tags {usable} "
                f"(e.g. {name}+{usable[0]!s}), not {tag!r}."
                if usable
                else f"rule label {label!r} is unknown: {name!r} takes no '+' tags."
            )
        kept.update(fields)
    return from_dict({"name": name, **kept})
