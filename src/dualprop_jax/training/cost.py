"""What a train step costs, counted two ways: from a rule's settings, and from the compiled program.

A *sweep* is one pass over every map of the network: forward (W_k s), transposed (W_kᵀ δ) or a
weight product (δ sᵀ, the gradient or Hebbian update of W_k). :func:`sweeps` counts a rule's
sweeps per train step from its settings; :func:`compiled_flops` sums the floating-point
operations of every dot and convolution of a compiled step, loop bodies times their trip counts,
so that the two can be checked against each other: adding one map of F flops (2·B·n_in·n_out for
a dense map at batch B) to the network adds sweeps × F to the step (:func:`sweeps_per_map`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from dualprop_jax import rules

_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_DEF = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_TRIP = re.compile(r'known_trip_count[^0-9]*(\d+)')


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
    comps: dict[str, list[str]] = {}
    current, entry = None, ""
    for line in text.splitlines():
        head = _HEADER.match(line)
        if head and "->" in line:
            current = head.group(2)
            comps[current] = []
            entry = current if head.group(1) else entry
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def _dims(shape: str) -> list[int]:
    return [int(d) for d in shape.split(",") if d]


def _product_flops(line: str, shapes: dict[str, list[int]]) -> float:
    """2 · (output elements) · (terms per output element) of a dot or convolution line."""
    out = _DEF.match(line)
    operands = re.search(r" (?:dot|convolution)\(%([\w.\-]+), %([\w.\-]+)\)", line)
    if out is None or operands is None:
        raise ValueError(f"cannot read the shapes of: {line.strip()[:200]}")
    lhs, rhs = shapes[operands.group(1)], shapes[operands.group(2)]
    if " dot(" in line:
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1)
        terms = math.prod(lhs[int(i)] for i in _dims(contracting))
    else:  # convolution: every kernel entry but the output features, per feature group
        labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
        terms = math.prod(rhs) // rhs[labels.index("o")]  # 'i' is per feature group already
    return 2.0 * math.prod(_dims(out.group(3))) * terms


def compiled_flops(text: str) -> float:
    """Flops of the dots and convolutions of an HLO module's text (``compiled.as_text()``):
    fusions, calls and branches counted once (the largest branch), while loops' bodies times
    their known trip count (NaN where a loop has none)."""
    comps, entry = _computations(text)
    memo: dict[str, float] = {}

    def count(name: str) -> float:
        if name in memo:
            return memo[name]
        shapes = {m.group(1): _dims(m.group(3)) for m in map(_DEF.match, comps.get(name, [])) if m}
        total = 0.0
        for line in comps.get(name, []):
            if re.search(r"\]\S* (?:dot|convolution)\(", line):
                total += _product_flops(line, shapes)
            if " while(" in line:
                trip = _TRIP.search(line)
                body = re.search(r"body=%?([\w.\-]+)", line).group(1)
                total += (int(trip.group(1)) if trip else math.nan) * count(body)
                continue
            branches = re.search(r"branch_computations=\{([^}]*)\}", line)
            if branches:
                total += max(count(b.strip().lstrip("%")) for b in branches.group(1).split(","))
                continue
            for sub in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line):
                total += count(sub)
        memo[name] = total
        return total

    return count(entry)


def sweeps(rule, net) -> dict[str, float] | None:
    """Sweeps per train step from the rule's settings: ``forward``, ``transposed``, ``weight``
    (weight products), ``total``, and ``matvec`` (damped DP's power iteration: two
    matrix-vector products per map, 2/B of a sweep at batch B); None for settings not counted
    here (DP with extra passes other than the bottom-up schedule without a sweep).

    BP: one of each. DP and DP⊤, one sweep: the same (the sweep's W_kᵀ δ is BP's backward pass,
    the Hebbian product its weight gradient); with the 2024 scripts' P + 1 bottom-up passes
    (``+fw16``: P = 15): P + 1 forward, P transposed, 1 weight. Kolen–Pollack: as DP (B_k
    takes W_kᵀ's place). EP: T + nK relaxation steps (n = 2 nudged phases at ±β, else 1), each
    one forward and one transposed, and 2 weight products (the two states compared); CHL the
    same with its clamped steps. Predictive coding: 1 + T + 1 forward, T transposed, 1 weight;
    fixed prediction: 1 forward, T transposed, 1 weight. EP on the PC energy: n phases of K
    iterations (one forward and one transposed each) and a last forward and weight product
    each, after the shared forward pass: 1 + n(K + 1), nK, n.
    """
    name = rule.name
    if name == "bp":
        f, t, w = 1, 1, 1
    elif isinstance(rule, rules.DualProp):
        if rule.passes and not (rule.schedule == "bottom_up" and not rule.sweep):
            return None
        f, t, w = 1 + rule.passes, rule.passes or 1, 1
    elif isinstance(rule, rules.EquilibriumProp | rules.ContrastiveHebbian):
        k = rule.clamped_steps if name == "chl" else rule.nudged_steps
        n = 2 if name == "ep" and rule.nudging == "symmetric" else 1
        f = t = rule.free_steps + n * k
        w = 2
    elif isinstance(rule, rules.PredictiveCoding):
        steps = rule.inference_steps
        f, t, w = (1, steps, 1) if rule.fixed_prediction else (steps + 2, steps, 1)
    elif isinstance(rule, rules.PCNEquilibriumProp):
        n, k = (2 if rule.nudging == "symmetric" else 1), rule.steps(net)
        f, t, w = 1 + n * (k + 1), n * k, n
    else:
        return None
    out = {"forward": f, "transposed": t, "weight": w, "total": f + t + w}
    if getattr(rule, "damped", False):
        out["matvec"] = 2
    return out


def sweeps_per_map(flops_of: Callable[[int], float], map_flops: float, depth: int = 2) -> float:
    """Sweeps per step seen in the compiled program: the flops a step gains when the network
    gains one map of ``map_flops`` flops (``flops_of(d)``: a step's flops with ``d`` hidden
    layers of the same width), divided by those flops."""
    return (flops_of(depth + 1) - flops_of(depth)) / map_flops


__all__ = ["compiled_flops", "sweeps", "sweeps_per_map"]
