"""Step-time benchmark: BP, DP⊤, DP and the fast path on the same model, batch and optimizer.

    python -m dualprop_jax.bench --models mlp,cnn,vgg16 --out bench.json

For every model it builds one train step per algorithm with
:func:`dualprop_jax.train.make_train_step` (gradient + optax update, params and optimizer
state donated), compiles it ahead of time (``compile_s``), runs ``--warmup`` steps of each, then
times ``--steps`` steps of each with the algorithms interleaved round-robin (the starting
algorithm rotates every round), each step ended by ``block_until_ready``. A row reports the
median step time and its ratio to BP's median on the same model. Every algorithm starts from
the same parameters and sees the same (random, fixed) batch.

``--vgg-epoch`` also times one VGG16 training epoch (CIFAR-10-shaped random data: 45k images
32x32x3, batch 100, random crop + flip, host-to-device batches as in training) for BP and DP⊤.

An entry point, not library code: it parses flags and prints. The measuring functions
(:func:`run_benchmark`, :func:`time_epoch`) return plain dicts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dualprop_jax import models
from dualprop_jax.train import (
    TrainConfig,
    global_array,
    make_mesh,
    make_optimizer,
    make_train_step,
)

ALGOS = ("bp", "dp_top", "dp", "fast")
"""``bp``: back-propagation; ``dp_top``: DP⊤, one top-down sweep; ``dp``: DP (2023 variant),
same schedule; ``fast``: the fast path (custom-VJP dual activation, α = ½, one sweep)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: a builder ``(rngs) -> Network`` and the per-example input shape."""

    build: Callable[[nnx.Rngs], models.Network]
    input_shape: tuple[int, ...]
    description: str
    num_classes: int = 10


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        lambda rngs: models.mlp((784, 1000, 1000, 1000, 10), rngs=rngs),
        (784,),
        "MLP 784-1000-1000-1000-10",
    ),
    "cnn": ModelSpec(
        lambda rngs: models.cnn((28, 28, 1), channels=(32, 64), dense=(512,), rngs=rngs),
        (28, 28, 1),
        "CNN 28x28x1: conv32-pool-conv64-pool-512-10",
    ),
    "vgg16": ModelSpec(
        lambda rngs: models.vgg16(input_shape=(32, 32, 3), num_classes=10, rngs=rngs),
        (32, 32, 3),
        "VGG16 32x32x3 (13 conv, 4096-4096-10, no BatchNorm)",
    ),
}

DEFAULT_STEPS = {"mlp": 200, "cnn": 60, "vgg16": 20}
CPU_VGG_BATCH = 8


def train_config(algo: str, alpha: float, beta: float, dtype: str, passes: int) -> TrainConfig:
    """The training config of one benchmark row: its learning rule and the shared optimizer.

    Every algorithm uses the paper's VGG optimizer, SGD with momentum 0.9, decoupled weight
    decay 5e-4 and a constant learning rate of 0.01, built by :func:`train.make_optimizer`.
    ``fast`` is the 2023 rule on the fast path (α = ½ there).
    """
    if algo not in ALGOS:
        raise ValueError(f"algo={algo!r} is unknown; choose from {ALGOS}.")
    fast = algo == "fast"
    return TrainConfig(
        algo="dp" if fast else algo,
        alpha=0.5 if fast else alpha,
        beta=beta,
        dtype=dtype,
        passes=0 if fast else passes,
        fast=fast,
        optimizer="sgd",
        learning_rate=0.01,
        momentum=0.9,
        weight_decay=5e-4,
    )


def _step(net, config: TrainConfig, mesh, *, augment: bool = False):
    """The jitted train step and the optimizer of one benchmark row (the ones training runs)."""
    optimizer = make_optimizer(config, steps_per_epoch=1)  # constant rate: no schedule
    step = make_train_step(net, config.dp_config(), config.algo, optimizer, mesh, augment=augment)
    return step, optimizer


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


def bench_model(
    name: str,
    spec: ModelSpec,
    *,
    batch: int,
    steps: int,
    warmup: int = 5,
    algos: Sequence[str] = ALGOS,
    alpha: float = 0.5,
    beta: float = 0.01,
    dtype: str = "float32",
    passes: int = 0,
    seed: int = 0,
) -> list[dict]:
    """Time the train step of each of ``algos`` on one model; one row per algorithm."""
    if "bp" not in algos:
        raise ValueError("the algorithms must include 'bp' (rows report ratio_to_bp).")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}.")
    mesh = make_mesh(1)
    net, params0 = models.split(spec.build(nnx.Rngs(seed)))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    x, y = (global_array(v, sharded) for v in random_batch(spec, batch, seed))
    key = jax.random.key(seed)

    compiled, state, compile_s, peak = {}, {}, {}, {}
    for algo in algos:
        step, optimizer = _step(net, train_config(algo, alpha, beta, dtype, passes), mesh)
        # every algorithm owns a copy of the same initial state (the step donates it)
        params = jax.device_put(jax.tree.map(np.asarray, params0), replicated)
        opt_state = jax.device_put(optimizer.init(params), replicated)
        t0 = time.perf_counter()
        compiled[algo] = step.lower(params, opt_state, x, y, key).compile()
        compile_s[algo] = time.perf_counter() - t0
        peak[algo] = _peak_bytes(compiled[algo])
        state[algo] = (params, opt_state)

    first_loss = {}

    def run(algo: str) -> float:
        params, opt_state = state[algo]
        t0 = time.perf_counter()
        params, opt_state, metrics = compiled[algo](params, opt_state, x, y, key)
        jax.block_until_ready((params, opt_state, metrics))
        dt = time.perf_counter() - t0
        state[algo] = (params, opt_state)
        first_loss.setdefault(algo, metrics["loss"])
        return dt

    times: dict[str, list[float]] = {a: [] for a in algos}
    for r in range(warmup + steps):
        shift = r % len(algos)  # rotate who goes first, so no algorithm always follows another
        for algo in [*algos[shift:], *algos[:shift]]:
            dt = run(algo)
            if r >= warmup:
                times[algo].append(dt)

    bp_ms = 1e3 * statistics.median(times["bp"])
    rows = []
    for algo in algos:
        ms = [1e3 * t for t in times[algo]]
        med = statistics.median(ms)
        q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (med, med, med)
        rows.append(
            {
                "model": name,
                "algo": algo,
                "batch": batch,
                "dtype": dtype,
                "steps": steps,
                "step_ms_median": med,
                "step_ms_iqr": [q1, q3],
                "ratio_to_bp": med / bp_ms,
                "compile_s": compile_s[algo],
                "peak_bytes": peak[algo],
                "first_loss": float(first_loss[algo]),
            }
        )
    return rows


def time_epoch(
    *,
    images: int = 45_000,
    batch: int = 100,
    algos: Sequence[str] = ("bp", "dp_top"),
    beta: float = 0.01,
    dtype: str = "float32",
    seed: int = 0,
    repeats: int = 3,
    warmup_epochs: int = 1,
    name: str = "vgg16",
    spec: ModelSpec | None = None,
) -> list[dict]:
    """Wall time of one training epoch per algorithm on CIFAR-10-shaped random data.

    The loop is the one :func:`dualprop_jax.train.train_and_evaluate` runs: a shuffled epoch of
    host batches, each put on the device, random crop + flip on the device, the donated train
    step. Each step is compiled and run once before any clock starts; then ``warmup_epochs``
    untimed rounds and ``repeats`` timed rounds run one epoch of every algorithm each,
    interleaved (the first algorithm rotates per round), every epoch ended by
    ``block_until_ready``. A row reports the median timed epoch; ``warmup_epoch_s`` keeps the
    untimed ones (the first epoch pays for autotuning and allocator growth).
    """
    spec = spec or MODELS[name]
    if images < batch:
        raise ValueError(f"--epoch-images {images} is smaller than one batch of {batch}.")
    if repeats < 1 or warmup_epochs < 0:
        raise ValueError(
            f"need repeats >= 1 and warmup_epochs >= 0, got {repeats} and {warmup_epochs}."
        )
    mesh = make_mesh(1)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    x_host, y_host = random_batch(spec, images, seed)
    rng = np.random.default_rng(seed)
    net, params0 = models.split(spec.build(nnx.Rngs(seed)))
    augment = len(spec.input_shape) == 3
    steps, state, first_s = {}, {}, {}
    key = jax.random.key(seed)
    for algo in algos:
        steps[algo], optimizer = _step(
            net, train_config(algo, 0.5, beta, dtype, 0), mesh, augment=augment
        )
        params = jax.device_put(jax.tree.map(np.asarray, params0), replicated)
        opt_state = jax.device_put(optimizer.init(params), replicated)
        t0 = time.perf_counter()
        xb, yb = global_array(x_host[:batch], sharded), global_array(y_host[:batch], sharded)
        params, opt_state, _ = steps[algo](params, opt_state, xb, yb, key)
        jax.block_until_ready(params)
        first_s[algo] = time.perf_counter() - t0
        state[algo] = (params, opt_state)

    epoch_times: dict[str, list[float]] = {a: [] for a in algos}
    warm_times: dict[str, list[float]] = {a: [] for a in algos}
    for r in range(warmup_epochs + repeats):
        order = rng.permutation(images)[: images // batch * batch].reshape(-1, batch)
        shift = r % len(algos)
        for algo in [*algos[shift:], *algos[:shift]]:
            params, opt_state = state[algo]
            t0 = time.perf_counter()
            for i, idx in enumerate(order):
                xb, yb = global_array(x_host[idx], sharded), global_array(y_host[idx], sharded)
                params, opt_state, _ = steps[algo](
                    params, opt_state, xb, yb, jax.random.fold_in(key, i)
                )
            jax.block_until_ready((params, opt_state))
            (warm_times if r < warmup_epochs else epoch_times)[algo].append(
                time.perf_counter() - t0
            )
            state[algo] = (params, opt_state)

    n_steps = images // batch
    rows = []
    for algo in algos:
        epoch_s = statistics.median(epoch_times[algo])
        rows.append(
            {
                "model": name,
                "algo": algo,
                "images": n_steps * batch,
                "batch": batch,
                "steps": n_steps,
                "dtype": dtype,
                "repeats": repeats,
                "epoch_s": epoch_s,
                "epoch_s_all": epoch_times[algo],
                "warmup_epoch_s": warm_times[algo],
                "images_per_s": n_steps * batch / epoch_s,
                "first_step_s": first_s[algo],
            }
        )
    bp = next((r["epoch_s"] for r in rows if r["algo"] == "bp"), None)
    for r in rows:
        r["ratio_to_bp"] = r["epoch_s"] / bp if bp else None
    return rows


def run_benchmark(
    model_names: Sequence[str],
    *,
    batch: int = 128,
    vgg_batch: int | None = None,
    steps: int | None = None,
    vgg_steps: int | None = None,
    warmup: int = 5,
    algos: Sequence[str] = ALGOS,
    alpha: float = 0.5,
    beta: float = 0.01,
    dtype: str = "float32",
    passes: int = 0,
    specs: dict[str, ModelSpec] | None = None,
) -> dict:
    """The benchmark result dict: environment, settings, notes and one row per (model, algo)."""
    specs = MODELS if specs is None else specs
    unknown = [m for m in model_names if m not in specs]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {sorted(specs)}.")
    backend = jax.default_backend()
    notes = []
    rows = []
    for name in model_names:
        b = batch
        if name == "vgg16":
            if vgg_batch is not None:
                b = vgg_batch
            elif backend == "cpu":
                b = CPU_VGG_BATCH
        if b != batch:
            notes.append(f"{name}: batch {b} instead of {batch} on {backend}")
        n = steps if steps is not None else DEFAULT_STEPS.get(name, 20)
        if name == "vgg16" and vgg_steps is not None:
            n = vgg_steps
        rows += bench_model(
            name,
            specs[name],
            batch=b,
            steps=n,
            warmup=warmup,
            algos=algos,
            alpha=alpha,
            beta=beta,
            dtype=dtype,
            passes=passes,
        )
    return {
        "backend": backend,
        "device": device_description(),
        "jax_version": jax.__version__,
        "settings": {
            "alpha": alpha,
            "beta": beta,
            "dtype": dtype,
            "passes": passes,
            "warmup": warmup,
            "optimizer": "sgd momentum 0.9, decoupled weight decay 5e-4, lr 0.01",
            "peak_bytes": "XLA memory analysis of the compiled step: arguments + outputs "
            "- donated + temporaries",
            "timing": "median over timed steps; algorithms interleaved round-robin; "
            "block_until_ready after every step; warm-up and compilation excluded",
        },
        "models": {name: specs[name].description for name in model_names},
        "notes": notes,
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """A Markdown table of the rows (and of the epoch rows, when present)."""
    lines = [f"backend {result['backend']} ({result['device']}), jax {result['jax_version']}"]
    if result.get("rows"):
        lines += [
            "",
            "| model | algo | batch | step ms (median) | IQR ms | ratio to BP | compile s "
            "| peak MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in result.get("rows", []):
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "n/a"
        q1, q3 = r["step_ms_iqr"]
        lines.append(
            f"| {r['model']} | {r['algo']} | {r['batch']} | {r['step_ms_median']:.2f} | "
            f"{q1:.2f}-{q3:.2f} | {r['ratio_to_bp']:.3f} | {r['compile_s']:.1f} | {peak} |"
        )
    if result.get("epoch_rows"):
        lines += [
            "",
            "| model | algo | images | batch | epoch s (median) | images/s | ratio to BP |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["epoch_rows"]:
            ratio = f"{r['ratio_to_bp']:.3f}" if r["ratio_to_bp"] else "n/a"
            lines.append(
                f"| {r['model']} | {r['algo']} | {r['images']} | {r['batch']} | "
                f"{r['epoch_s']:.2f} | {r['images_per_s']:.0f} | {ratio} |"
            )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m dualprop_jax.bench",
        description="Time the jitted train step (gradient + optax update) of BP, DP⊤, DP and "
        "the fast path on the same model and batch.",
    )
    p.add_argument("--models", default="mlp,cnn,vgg16", help="comma-separated; '' for none")
    p.add_argument("--algos", default=",".join(ALGOS), help=f"subset of {ALGOS}, with bp")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--vgg-batch",
        type=int,
        default=None,
        help=f"VGG16 batch (default: --batch; {CPU_VGG_BATCH} on CPU)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"timed steps per algo (default {DEFAULT_STEPS})"
    )
    p.add_argument("--vgg-steps", type=int, default=None, help="timed VGG16 steps per algo")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per algo")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--passes", type=int, default=0, help="extra inference passes for dp/dp_top")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--vgg-epoch", action="store_true", help="also time one VGG16 epoch")
    p.add_argument("--epoch-images", type=int, default=45_000, help="images in that epoch")
    p.add_argument("--epoch-batch", type=int, default=100)
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed epochs per algo (median)")
    p.add_argument("--epoch-warmup", type=int, default=1, help="untimed epochs per algo first")
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)

    algos = _names(args.algos)
    result = run_benchmark(
        _names(args.models),
        batch=args.batch,
        vgg_batch=args.vgg_batch,
        steps=args.steps,
        vgg_steps=args.vgg_steps,
        warmup=args.warmup,
        algos=algos,
        alpha=args.alpha,
        beta=args.beta,
        dtype=args.dtype,
        passes=args.passes,
    )
    if args.vgg_epoch:
        result["epoch_rows"] = time_epoch(
            images=args.epoch_images,
            batch=args.epoch_batch,
            beta=args.beta,
            dtype=args.dtype,
            repeats=args.epoch_repeats,
            warmup_epochs=args.epoch_warmup,
        )
    result["command"] = " ".join(["python -m dualprop_jax.bench", *(argv or sys.argv[1:])])
    print(format_table(result))
    if args.out:
        path = pathlib.Path(args.out)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
