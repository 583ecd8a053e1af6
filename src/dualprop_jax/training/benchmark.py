"""Step-time benchmark: BP, DP⊤, DP and the fast path on the same model, batch and optimizer.

The command is ``dualprop bench`` ; this module measures
and returns plain dicts, and prints nothing.

For every model it builds one train step per rule with :func:`dualprop_jax.make_train_step`
(gradient + optax update, the state donated), compiles it ahead of time (``compile_s``), runs
``warmup`` steps of each, then times ``steps`` steps of each with the rules interleaved
round-robin (the starting rule rotates every round), each step ended by
``block_until_ready``. A row reports the median step time and its ratio to BP's median on the
same model. Every rule starts from the same parameters and sees the same (random, fixed) batch.

:func:`time_epoch` times whole training epochs with the training loop itself,
:func:`dualprop_jax.training.loop.train_epoch`,
fed from the host and from the device (CIFAR-10-shaped
random data: 45k images 32x32x3, batch 100, random crop + flip; or a real dataset such as
Fashion-MNIST), and relates each epoch to the cost of its steps.

Rows name rules by their label (:func:`dualprop_jax.rules.from_label`): ``bp``, ``dp_top``,
``dp``, ``dp+fast`` (the fast path of the 2023 rule, α = ½), ``dp_top+damped`` (damped DP⊤),
``dp+kp`` (Kolen–Pollack DP), ``ep`` (equilibrium propagation, symmetric nudging) and ``chl``
(contrastive Hebbian learning). EP and CHL relax for T + K (EP symmetric: T + 2K) steps per
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
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.data import Dataset
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.loop import train_epoch
from dualprop_jax.training.steps import TrainState, make_optimizer, make_train_step, rule_params

RULES = ("bp", "dp_top", "dp", "dp+fast", "dp_top+damped", "dp+kp", "ep", "chl")
"""Default rows: back-propagation; DP⊤ and DP with one top-down sweep; the fast path; damped
DP⊤; KP-DP; EP and CHL at their literature settings (:data:`ENERGY_RULES`)."""
ENERGY_RULES = ("ep", "chl")
"""Rules that relax to equilibrium (T + K steps per train step): timed in their own group."""
ENERGY_STEPS = {"mlp": 5, "cnn": 3, "vgg16": 1}
"""Timed steps of the EP / CHL group per model (after one warm-up step)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: a builder ``(rngs) -> Network`` and the per-example input shape.

    ``layouts`` are the conv layouts (:data:`dualprop_jax.models.LAYOUTS`) the builder takes
    as ``build(rngs, layout=...)``; empty for models without max-pooling. ``graph``: a
    residual/DAG network, on which the chain-only rules (:func:`chain_only`) get no row.
    """

    build: Callable[..., models.Network]
    input_shape: tuple[int, ...]
    description: str
    num_classes: int = 10
    layouts: tuple[str, ...] = ()
    graph: bool = False


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        lambda rngs: models.mlp((784, 1000, 1000, 1000, 10), rngs=rngs),
        (784,),
        "MLP 784-1000-1000-1000-10",
    ),
    "cnn": ModelSpec(
        lambda rngs, layout="unpooled": models.cnn(
            (28, 28, 1), channels=(32, 64), dense=(512,), layout=layout, rngs=rngs
        ),
        (28, 28, 1),
        "CNN 28x28x1: conv32-pool-conv64-pool-512-10",
        layouts=models.LAYOUTS,
    ),
    "vgg16": ModelSpec(
        lambda rngs, layout="unpooled": models.vgg16(
            input_shape=(32, 32, 3), num_classes=10, layout=layout, rngs=rngs
        ),
        (32, 32, 3),
        "VGG16 32x32x3 (13 conv, 4096-4096-10, no BatchNorm)",
        layouts=models.LAYOUTS,
    ),
}

MODELS |= {
    "resnet8": ModelSpec(
        lambda rngs: models.resnet8(input_shape=(28, 28, 1), rngs=rngs),
        (28, 28, 1),
        "ResNet-8 28x28x1: stem 16, blocks 16/32/64 (identity and 1x1 skips), no BatchNorm",
        graph=True,
    ),
    "resnet18": ModelSpec(
        lambda rngs: models.resnet18(input_shape=(32, 32, 3), rngs=rngs),
        (32, 32, 3),
        "ResNet-18 32x32x3: stem 64, 2 blocks each of 64/128/256/512, no BatchNorm",
        graph=True,
    ),
}


def chain_only(label: str) -> bool:
    """Whether the rule of ``label`` is defined on layered chains only (EP, CHL, damped DP,
    Kolen–Pollack DP): a graph model gets no row for it."""
    name, *extras = label.split("+")
    return name in ENERGY_RULES or bool({"damped", "kp"} & set(extras))


DEFAULT_STEPS = {"mlp": 200, "cnn": 60, "vgg16": 20, "resnet8": 30, "resnet18": 5}
MULTIPASS_STEPS = {"mlp": 30, "cnn": 10, "vgg16": 5}
"""Timed steps per row of :func:`bench_multipass` (each step runs ~K sweeps)."""
BENCH_OPTIONS = dict(
    warmup=5,
    rule_labels=RULES,
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
LARGE_MODELS = ("vgg16", "resnet18")
"""Models timed at ``vgg_batch`` (:data:`CPU_VGG_BATCH` on CPU) with ``vgg_steps``."""


def train_config(
    label: str,
    alpha: float,
    beta: float,
    dtype: str,
    passes: int,
    free_steps: int = 100,
    nudged_steps: int = 20,
) -> TrainConfig:
    """The training config of one benchmark row: its rule and the shared optimizer.

    Every rule uses the paper's VGG optimizer, SGD with momentum 0.9, decoupled weight decay
    5e-4 and a constant learning rate of 0.01 (:func:`dualprop_jax.make_optimizer`).
    ``dp+fast`` is the 2023 rule on the fast path (α = ½ there, one sweep). α, β and passes
    are DP's; EP keeps its own β (0.5) and takes T = ``free_steps``, K = ``nudged_steps``
    (CHL: K clamped steps).
    """
    if label.split("+")[0] in ENERGY_RULES:
        rule = rules.from_label(
            label,
            dtype=dtype,
            free_steps=free_steps,
            nudged_steps=nudged_steps,
            clamped_steps=nudged_steps,
        )
    else:
        rule = rules.from_label(label, alpha=alpha, beta=beta, dtype=dtype, passes=passes)
    return TrainConfig(
        rule=rule, optimizer="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4
    )


def _init(spec: ModelSpec, config: TrainConfig, seed: int, *, augment: bool = False, layout=None):
    """``(step, state)`` of one row: the jitted, donating train step and a fresh state (with
    the rule's own weights and state: KP's B_k, the damped rule's power iteration)."""
    kw = {} if layout is None else {"layout": layout}
    net, params = models.split(spec.build(nnx.Rngs(seed), **kw))
    params = rule_params(config.rule, net, params, seed)
    optimizer = make_optimizer(config, steps_per_epoch=1)  # constant rate: no schedule
    step = make_train_step(net, config.rule, optimizer, donate=True, augment=augment)
    return step, TrainState.create(net, params, config.rule, optimizer)


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


def random_batch(spec: ModelSpec, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed host batch: standard-normal inputs and uniform integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, *spec.input_shape), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, size=size).astype(np.int32)
    return x, y


def _interleaved(labels: Sequence[str], rounds: int, run: Callable[[str, int], None]) -> None:
    """``run(label, round)`` for every label, ``rounds`` times, the first label rotating per
    round so that no rule always follows the same other rule."""
    for r in range(rounds):
        shift = r % len(labels)
        for label in [*labels[shift:], *labels[:shift]]:
            run(label, r)


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
    rule_labels: Sequence[str] = RULES,
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
        t, ref = timed[label]
        bp_ms = ref["step_ms_median"]
        relax = {}
        if label in energy:
            rule = configs[label].rule
            relax = {
                "T": rule.free_steps,
                "K": rule.phase_steps,
                "relaxation_steps": rule.relaxation_steps,
            }
        rows.append(
            {"model": name, "rule": label, "batch": batch, "dtype": dtype}
            | {"steps": n if label in energy else steps}
            | t
            | relax
            | {"bp_step_ms": bp_ms, "ratio_to_bp": t["step_ms_median"] / bp_ms}
        )
    return rows


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
        t0 = time.perf_counter()
        state[label], metrics = compiled[label](state[label], x, y, None)
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


FMNIST_MLP = ModelSpec(
    lambda rngs: models.mlp((784, 1000, 1000, 10), rngs=rngs),
    (28, 28, 1),
    "MLP 784-1000-1000-10 (the default of dualprop train)",
)
"""The model of :func:`time_epoch` on Fashion-MNIST: ``dualprop train``'s default MLP."""


def time_epoch(
    *,
    images: int = 45_000,
    batch: int = 100,
    rule_labels: Sequence[str] = ("bp", "dp_top"),
    beta: float = 0.01,
    dtype: str = "float32",
    seed: int = 0,
    repeats: int = 3,
    warmup_epochs: int = 1,
    name: str = "vgg16",
    spec: ModelSpec | None = None,
    dataset: Dataset | None = None,
    feeds: Sequence[str] = ("host", "device"),
    step_samples: int = 30,
) -> list[dict]:
    """Wall time of one training epoch per rule and feed, against the cost of its steps.

    The loop is :func:`dualprop_jax.training.loop.train_epoch`, the one ``train_and_evaluate`` runs,
    with each feed of ``feeds``: ``"host"`` (batches gathered on the host and copied one by
    one) and ``"device"`` (the set kept on the device, chunks of steps there). The data is
    ``dataset``'s training split, or CIFAR-10-shaped random images (``images`` of them, for
    ``name``/``spec``, VGG16 by default); image inputs get random crop + flip on the device.
    Each step is compiled and run once before any clock starts; then ``warmup_epochs``
    untimed rounds (the device feed copies the set and compiles its chunk program there) and
    ``repeats`` timed rounds run one epoch of every (rule, feed), interleaved (the first one
    rotating per round). A row reports the median timed epoch, the median of ``step_samples``
    train steps each timed alone on a batch already on the device (``step_ms_median``), and
    ``epoch_over_steps`` = epoch time / (steps × that median): 1 is an epoch at the cost of its
    steps; the host feed pays for gathering and copying batches on top.
    """
    spec = spec or MODELS[name]
    if dataset is None:
        if images < batch:
            raise ValueError(f"--epoch-images {images} is smaller than one batch of {batch}.")
        x_host, y_host = random_batch(spec, images, seed)
        empty_x, empty_y = x_host[:0], y_host[:0]
        dataset = Dataset(
            "random", x_host, y_host, empty_x, empty_y, empty_x, empty_y, 10, False, "random"
        )
    if repeats < 1 or warmup_epochs < 0:
        raise ValueError(
            f"need repeats >= 1 and warmup_epochs >= 0, got {repeats} and {warmup_epochs}."
        )
    if "device" in feeds and warmup_epochs < 1:
        raise ValueError(
            "the device feed copies the set and compiles its chunk program in its first epoch: "
            "time it with warmup_epochs >= 1."
        )
    # crop + flip for images: CIFAR-like data, and the random CIFAR-shaped set
    augment = len(spec.input_shape) == 3 and (dataset.augment or dataset.name == "random")
    x0, y0 = dataset.images("train", np.arange(batch)), np.asarray(dataset.y_train[:batch])
    x0, y0 = jax.device_put(x0), jax.device_put(y0.astype(np.int32))
    key = jax.random.key(seed)
    steps, state, first_s = {}, {}, {}
    for label in rule_labels:
        steps[label], start = _init(spec, train_config(label, 0.5, beta, dtype, 0), seed,
                                    augment=augment)  # fmt: skip
        for feed in feeds:  # one step (one compilation) per rule; a fresh state per feed
            state[label, feed] = jax.tree.map(jnp.copy, start)
            t0 = time.perf_counter()
            state[label, feed], _ = steps[label](state[label, feed], x0, y0, key)
            jax.block_until_ready(state[label, feed])
            first_s[label, feed] = time.perf_counter() - t0

    epoch_times: dict = {k: [] for k in state}
    warm_times: dict = {k: [] for k in state}

    def run(entry: tuple[str, str], r: int) -> None:
        label, feed = entry
        result = train_epoch(
            steps[label], state[entry], dataset, batch_size=batch, epoch=r + 1, seed=seed,
            log_every=len(dataset.x_train), feed=feed,
        )  # fmt: skip
        state[entry] = result.state
        (warm_times if r < warmup_epochs else epoch_times)[entry].append(result.time_s)

    _interleaved(list(state), warmup_epochs + repeats, run)
    step_ms = _step_medians(steps, state, x0, y0, key, step_samples)
    n_steps = len(dataset.x_train) // batch
    rows = []
    for (label, feed), times in epoch_times.items():
        epoch_s = statistics.median(times)
        rows.append(
            {
                "model": name,
                "rule": label,
                "feed": feed,
                "images": n_steps * batch,
                "batch": batch,
                "steps": n_steps,
                "dtype": dtype,
                "repeats": repeats,
                "epoch_s": epoch_s,
                "epoch_s_all": times,
                "warmup_epoch_s": warm_times[label, feed],
                "images_per_s": n_steps * batch / epoch_s,
                "first_step_s": first_s[label, feed],
                "step_ms_median": step_ms[label],
                "epoch_over_steps": epoch_s / (n_steps * step_ms[label] / 1e3),
            }
        )
    for r in rows:
        bp = next((b["epoch_s"] for b in rows if b["rule"] == "bp" and b["feed"] == r["feed"]), 0)
        r["ratio_to_bp"] = r["epoch_s"] / bp if bp else None
    return rows


def _step_medians(steps: dict, state: dict, x, y, key, samples: int) -> dict[str, float]:
    """Median ms of ``samples`` steps of each rule, each step timed alone (ended by
    ``block_until_ready``) on a batch already on the device, rules interleaved."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    current = {label: next(v for k, v in state.items() if k[0] == label) for label in steps}

    def run(label: str, r: int) -> None:
        t0 = time.perf_counter()
        current[label], metrics = steps[label](current[label], x, y, key)
        jax.block_until_ready((current[label], metrics))
        if r >= 2:
            times[label].append(time.perf_counter() - t0)

    _interleaved(list(steps), 2 + max(samples, 1), run)
    return {label: 1e3 * statistics.median(t) for label, t in times.items()}


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
