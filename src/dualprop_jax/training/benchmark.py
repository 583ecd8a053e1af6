"""Step-time benchmark: BP, DP⊤, DP and the fast path on the same model, batch and optimizer.

The command is ``dualprop bench`` ; this module measures
and returns plain dicts, and prints nothing.

For every model it builds one train step per rule with :func:`dualprop_jax.make_train_step`
(gradient + optax update, the state donated), compiles it ahead of time (``compile_s``), runs
``warmup`` steps of each, then times ``steps`` steps of each with the rules interleaved
round-robin (the starting rule rotates every round), each step ended by
``block_until_ready``. A row reports the median step time and its ratio to BP's median on the
same model. Every rule starts from the same parameters and sees the same (random, fixed) batch.

Whole-epoch timing, :func:`time_epoch`, lives in :mod:`dualprop_jax.training.epoch_timing`,
and the model table and row setup (:data:`MODELS`, :class:`ModelSpec`, :func:`train_config`)
in :mod:`dualprop_jax.training.bench_setup`; both are importable from here.

Rows name rules by their label (:func:`dualprop_jax.rules.from_label`): ``bp``, ``dp_top``,
``dp``, ``dp+fast`` (the fast path of the 2023 rule, α = ½), ``dp_top+damped`` (damped DP⊤),
``dp+kp`` (Kolen–Pollack DP), ``ep`` (equilibrium propagation, symmetric nudging) and ``chl``
(contrastive Hebbian learning); :data:`DEFAULT_RULES`, the rows of a benchmark that names no
rules, leave out EP and CHL. EP and CHL relax for T + K (EP symmetric: T + 2K) steps per
train step, so they are timed in a second interleaved group with BP again and fewer steps
(:data:`ENERGY_STEPS`); every row's ``ratio_to_bp`` divides by the BP median of its own group
(``bp_step_ms``), and EP/CHL rows carry their T and K.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Sequence

import jax

from dualprop_jax import rules
from dualprop_jax.training.bench_setup import (
    ENERGY_RULES,
    MODELS,
    ModelSpec,
    _init,
    _interleaved,
    chain_only,
    random_batch,
    train_config,
)
from dualprop_jax.training.epoch_timing import EPOCH_STEPS as EPOCH_STEPS
from dualprop_jax.training.epoch_timing import FMNIST_MLP as FMNIST_MLP
from dualprop_jax.training.epoch_timing import time_epoch as time_epoch

RULES = ("bp", "dp_top", "dp", "dp+fast", "dp_top+damped", "dp+kp", "ep", "chl")
"""Every rule the benchmark has a row for: back-propagation; DP⊤ and DP with one top-down
sweep; the fast path; damped DP⊤; KP-DP; EP and CHL at their literature settings
(:data:`ENERGY_RULES`)."""
DEFAULT_RULES = tuple(label for label in RULES if label.split("+")[0] not in ENERGY_RULES)
"""Default rows: :data:`RULES` less the slow EP and CHL (T + K relaxation steps per train
step), which run only when asked for."""
ENERGY_STEPS = {"mlp": 5, "cnn": 3, "vgg11": 1, "vgg16": 1}
"""Timed steps of the EP / CHL group per model (after one warm-up step)."""

DEFAULT_STEPS = {
    "mlp": 200, "cnn": 60, "vgg11": 20, "vgg16": 20, "resnet8": 30, "resnet20": 10,
    "resnet18": 5, "vit": 60, "lm": 30,
}  # fmt: skip
"""Timed steps per rule and model, unless ``steps`` says otherwise."""
MULTIPASS_STEPS = {"mlp": 30, "cnn": 10, "vgg11": 5, "vgg16": 5}
"""Timed steps per row of :func:`bench_multipass` (each step runs ~K sweeps)."""
BENCH_OPTIONS = dict(
    warmup=5,
    rule_labels=DEFAULT_RULES,
    alpha=0.5,
    beta=0.01,
    dtype="float32",
    passes=0,
    seed=0,
    free_steps=100,
    nudged_steps=20,
    energy_steps=None,
)
"""The settings every row of a benchmark shares, with their defaults."""
CPU_VGG_BATCH = 8
"""The batch size of the large models' rows on a CPU (their GPU batch would take minutes)."""
LARGE_MODELS = ("vgg11", "vgg16", "resnet18")
"""Models timed at ``vgg_batch`` (:data:`CPU_VGG_BATCH` on CPU) with ``vgg_steps``."""


def device_description() -> str:
    """The first device's kind, and the CPU model name on CPU."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.device_kind} x{jax.device_count()}"
    name = platform.processor() or ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name or 'unknown'}, {os.cpu_count()} cores"


def _peak_bytes(compiled) -> int | None:
    """Device memory one call of the executable needs, from XLA's buffer assignment.

    arguments + outputs - donated (aliased) + temporaries, or XLA's own peak estimate when that
    is larger; None where the backend has no memory analysis.
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # a backend may not implement it
        return None
    if m is None:
        return None
    live = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )
    return int(max(live, getattr(m, "peak_memory_in_bytes", 0))) or None


def _check_rules(labels: Sequence[str]) -> None:
    if "bp" not in labels:
        raise ValueError("the rules must include 'bp' (rows report ratio_to_bp).")


def bench_model(
    name: str,
    spec: ModelSpec,
    *,
    batch: int,
    steps: int,
    warmup: int = 5,
    rule_labels: Sequence[str] = DEFAULT_RULES,
    alpha: float = 0.5,
    beta: float = 0.01,
    dtype: str = "float32",
    passes: int = 0,
    seed: int = 0,
    free_steps: int = 100,
    nudged_steps: int = 20,
    energy_steps: int | None = None,
) -> list[dict]:
    """Time the train step of each rule on one model; one row per rule (on a graph model
    none for the chain-only rules, :func:`chain_only`).

    EP / CHL rows (:data:`ENERGY_RULES`) are timed in a second group, interleaved with BP
    again, for ``energy_steps`` steps (default :data:`ENERGY_STEPS`, at most ``steps``) after
    one warm-up step.
    """
    _check_rules(rule_labels)
    if spec.graph:
        rule_labels = [label for label in rule_labels if not chain_only(label)]
    energy = [label for label in rule_labels if label.split("+")[0] in ENERGY_RULES]
    fast = [label for label in rule_labels if label not in energy]

    configs = {
        label: train_config(label, alpha, beta, dtype, passes, free_steps, nudged_steps)
        for label in rule_labels
    }

    def entries(labels):
        return {label: _init(spec, configs[label], seed) for label in labels}

    group = _time_steps(entries(fast), spec, batch, seed, warmup, steps)
    timed = {label: (group[label], group["bp"]) for label in fast}  # (row, its group's BP)
    if energy:
        n = min(steps, energy_steps or ENERGY_STEPS.get(name, 3))
        group = _time_steps(entries(["bp", *energy]), spec, batch, seed, min(warmup, 1), n)
        timed |= {label: (group[label], group["bp"]) for label in energy}
    rows = []
    for label in rule_labels:
        is_energy = label in energy
        head = {"model": name, "rule": label, "batch": batch, "dtype": dtype}
        head["steps"] = n if is_energy else steps
        rows.append(_step_row(head, *timed[label], configs[label].rule if is_energy else None))
    return rows


def _step_row(head: dict, t: dict, ref: dict, energy_rule=None) -> dict:
    """One row of :func:`bench_model`: ``head`` (model, rule, batch, dtype, steps), then the
    rule's timings ``t``, then for an EP / CHL rule (``energy_rule``) its T and K, then the BP
    median of its group (``ref``) and the ratio to it."""
    bp_ms = ref["step_ms_median"]
    relax = {}
    if energy_rule is not None:
        relax = {
            "T": energy_rule.free_steps,
            "K": energy_rule.phase_steps,
            "relaxation_steps": energy_rule.relaxation_steps,
        }
    return head | t | relax | {"bp_step_ms": bp_ms, "ratio_to_bp": t["step_ms_median"] / bp_ms}


def _time_steps(entries: dict, spec: ModelSpec, batch: int, seed: int, warmup: int, steps: int):
    """Compile each ``label -> (step, state)`` ahead of time, then time them interleaved.

    Returns ``label -> {step_ms_median, step_ms_iqr, compile_s, peak_bytes, first_loss}``.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}.")
    x, y = (jax.device_put(v) for v in random_batch(spec, batch, seed))
    compiled, state, compile_s, first_loss = {}, {}, {}, {}
    for label, (step, state[label]) in entries.items():
        t0 = time.perf_counter()
        compiled[label] = step.lower(state[label], x, y).compile()
        compile_s[label] = time.perf_counter() - t0
    times: dict[str, list[float]] = {label: [] for label in entries}

    def run(label: str, r: int) -> None:
        rule = entries[label][0].rule
        t0 = time.perf_counter()
        state[label], metrics = compiled[label](rule, state[label], x, y, None)
        jax.block_until_ready((state[label], metrics))
        if r >= warmup:
            times[label].append(time.perf_counter() - t0)
        first_loss.setdefault(label, float(metrics["loss"]))

    _interleaved(list(entries), warmup + steps, run)
    out = {}
    for label in entries:
        ms = [1e3 * t for t in times[label]]
        med = statistics.median(ms)
        q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (med, med, med)
        out[label] = {
            "step_ms_median": med,
            "step_ms_iqr": [q1, q3],
            "compile_s": compile_s[label],
            "peak_bytes": _peak_bytes(compiled[label]),
            "first_loss": first_loss[label],
        }
    return out


def bench_multipass(
    name: str,
    spec: ModelSpec,
    *,
    batch: int,
    steps: int,
    passes: int = 16,
    warmup: int = 3,
    beta: float = 0.01,
    dtype: str = "float32",
    seed: int = 0,
) -> list[dict]:
    """The 2024 scripts' inference schedule against one sweep and BP, on every conv layout.

    The schedule is their ``fwK`` with K = ``passes``: from the forward state, K bottom-up
    passes, i.e. ``rules.dual_prop(schedule="bottom_up", sweep=False, passes=K - 1)`` (their
    first pass only nudges the output). Rows per layout: ``bp``, ``dp_top`` with one sweep and
    ``dp_top`` with the schedule (α = ½), all timed interleaved; ``ratio_to_one_sweep`` divides
    by the one-sweep DP⊤ of the same layout. Models without pooling have one layout row set.
    """
    if passes < 2:
        raise ValueError(
            f"the multi-pass rows need passes >= 2 (the 2024 scripts: 16), got {passes}"
        )
    schedules = {
        "one sweep": rules.dual_prop(beta=beta, dtype=dtype),
        f"fwK {passes}": rules.dual_prop(
            beta=beta, dtype=dtype, schedule="bottom_up", sweep=False, passes=passes - 1
        ),
    }
    entries, meta = {}, {}
    for layout in spec.layouts or (None,):
        for schedule, rule in [("", rules.backprop(dtype=dtype)), *schedules.items()]:
            label = f"{rule.name} {schedule} {layout or ''}".strip()
            config = dataclasses.replace(train_config("bp", 0.5, beta, dtype, 0), rule=rule)
            entries[label] = _init(spec, config, seed, layout=layout)
            meta[label] = dict(rule=rule.name, schedule=schedule or "-", layout=layout or "-")
    timed = _time_steps(entries, spec, batch, seed, warmup, steps)
    rows = []
    for label, m in meta.items():
        same = [k for k, v in meta.items() if v["layout"] == m["layout"]]
        bp = next(k for k in same if meta[k]["rule"] == "bp")
        sweep = next(k for k in same if meta[k]["schedule"] == "one sweep")
        ms = timed[label]["step_ms_median"]
        rows.append(
            {"model": name, **m, "passes": passes, "batch": batch, "dtype": dtype}
            | timed[label]
            | {
                "ratio_to_bp": ms / timed[bp]["step_ms_median"],
                "ratio_to_one_sweep": ms / timed[sweep]["step_ms_median"],
            }
        )
    return rows


def run_benchmark(
    model_names: Sequence[str],
    *,
    batch: int = 128,
    vgg_batch: int | None = None,
    steps: int | None = None,
    vgg_steps: int | None = None,
    specs: dict[str, ModelSpec] | None = None,
    **options,
) -> dict:
    """The benchmark result dict: environment, settings, notes and one row per (model, rule).

    ``options`` go to :func:`bench_model` (defaults :data:`BENCH_OPTIONS`): ``warmup``,
    ``rule_labels``, ``alpha``, ``beta``, ``dtype``, ``passes``, ``seed``, ``free_steps``,
    ``nudged_steps``, ``energy_steps``.
    """
    specs = MODELS if specs is None else specs
    unknown_options = sorted(set(options) - set(BENCH_OPTIONS))
    if unknown_options:
        raise TypeError(f"unknown options {unknown_options}; known: {sorted(BENCH_OPTIONS)}")
    options = {**BENCH_OPTIONS, **options}
    unknown = [m for m in model_names if m not in specs]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {sorted(specs)}.")
    backend = jax.default_backend()
    notes, rows = [], []
    for name in model_names:
        b, n = batch, steps if steps is not None else DEFAULT_STEPS.get(name, 20)
        if name in LARGE_MODELS:
            b = vgg_batch or (CPU_VGG_BATCH if backend == "cpu" else batch)
            n = vgg_steps or n
        if b != batch:
            notes.append(f"{name}: batch {b} instead of {batch} on {backend}")
        rows += bench_model(name, specs[name], batch=b, steps=n, **options)
    return {
        "backend": backend,
        "device": device_description(),
        "jax_version": jax.__version__,
        "settings": {
            **{k: options[k] for k in ("alpha", "beta", "dtype", "passes", "warmup")},
            "ep_chl": f"T={options['free_steps']}, K={options['nudged_steps']}, EP β=0.5 "
            "symmetric; timed with BP in their own group (ENERGY_STEPS)",
            "optimizer": "sgd momentum 0.9, decoupled weight decay 5e-4, lr 0.01",
            "peak_bytes": "XLA memory analysis of the compiled step: arguments + outputs "
            "- donated + temporaries",
            "timing": "median over timed steps; rules interleaved round-robin; "
            "block_until_ready after every step; warm-up and compilation excluded",
        },
        "models": {name: specs[name].description for name in model_names},
        "notes": notes,
        "rows": rows,
    }
