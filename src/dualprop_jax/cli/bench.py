"""``dualprop bench``: time the train step of several rules and print the table of the timings."""

from __future__ import annotations

import argparse
import json
import pathlib

from dualprop_jax.training.config import TrainConfig


def format_table(result: dict) -> str:
    """A Markdown table of the benchmark rows (and of the epoch rows, when present)."""
    lines = [f"backend {result['backend']} ({result['device']}), jax {result['jax_version']}"]
    if result.get("rows"):
        lines += [
            "",
            "| model | rule | T, K | batch | step ms (median) | IQR ms | ratio to BP "
            "| compile s | peak MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in result.get("rows", []):
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "n/a"
        q1, q3 = r["step_ms_iqr"]
        relax = f"{r['T']}, {r['K']}" if "T" in r else "-"
        lines.append(
            f"| {r['model']} | {r['rule']} | {relax} | {r['batch']} | {r['step_ms_median']:.2f} "
            f"| {q1:.2f}-{q3:.2f} | {r['ratio_to_bp']:.3f} | {r['compile_s']:.1f} | {peak} |"
        )
    if result.get("multipass_rows"):
        lines += [
            "",
            "| model | rule | schedule | layout | batch | step ms (median) | ratio to BP "
            "| ratio to one sweep | compile s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["multipass_rows"]:
            lines.append(
                f"| {r['model']} | {r['rule']} | {r['schedule']} | {r['layout']} | {r['batch']} "
                f"| {r['step_ms_median']:.2f} | {r['ratio_to_bp']:.3f} | "
                f"{r['ratio_to_one_sweep']:.3f} | {r['compile_s']:.1f} |"
            )
    if result.get("epoch_rows"):
        lines += [
            "",
            "| model | rule | feed | images | batch | epoch s (median) | step ms (median) "
            "| epoch / (steps × step) | images/s | ratio to BP |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["epoch_rows"]:
            ratio = f"{r['ratio_to_bp']:.3f}" if r["ratio_to_bp"] else "n/a"
            feed = r["feed"] if r.get("feed_ran", r["feed"]) == r["feed"] else (
                f"{r['feed']} ({r['feed_ran']})"
            )  # fmt: skip
            lines.append(
                f"| {r['model']} | {r['rule']} | {feed} | {r['images']} | {r['batch']} | "
                f"{r['epoch_s']:.2f} | {r['step_ms_median']:.2f} | {r['epoch_over_steps']:.3f} "
                f"| {r['images_per_s']:.0f} | {ratio} |"
            )
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _multipass_rows(benchmark, args: argparse.Namespace, result: dict) -> list[dict]:
    rows = []
    for name in _names(args.models):
        batch = args.batch
        if name in benchmark.LARGE_MODELS:
            cpu = result["backend"] == "cpu"
            batch = args.vgg_batch or (benchmark.CPU_VGG_BATCH if cpu else args.batch)
        steps = args.multipass_steps or benchmark.MULTIPASS_STEPS.get(name, 5)
        rows += benchmark.bench_multipass(
            name, benchmark.MODELS[name], batch=batch, steps=steps, passes=args.multipass,
            beta=args.beta, dtype=args.dtype,
        )  # fmt: skip
    return rows


def _model_epoch(benchmark, args: argparse.Namespace, name: str, cpu: bool, epoch: dict):
    """The epoch rows of model ``name`` on random data: ``--epoch-batch`` (``--vgg-batch``, 8
    on CPU, for the large models), and ``--epoch-images`` or
    :data:`~dualprop_jax.training.epoch_timing.EPOCH_STEPS` steps."""
    batch = args.epoch_batch
    if name in benchmark.LARGE_MODELS:
        batch = args.vgg_batch or (benchmark.CPU_VGG_BATCH if cpu else args.epoch_batch)
    images = args.epoch_images or batch * benchmark.EPOCH_STEPS.get(name, 20)
    spec = benchmark.MODELS[name]
    return benchmark.time_epoch(name=name, spec=spec, images=images, batch=batch, **epoch)


def cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    """``dualprop bench``: time the train steps of the rules asked for and print the table;
    returns the exit code."""
    from dualprop_jax.training import benchmark

    result = benchmark.run_benchmark(
        _names(args.models), batch=args.batch, vgg_batch=args.vgg_batch, steps=args.steps,
        vgg_steps=args.vgg_steps, warmup=args.warmup, rule_labels=_names(args.rules),
        alpha=args.alpha, beta=args.beta, dtype=args.dtype, passes=args.passes,
        free_steps=args.free_steps, nudged_steps=args.nudged_steps,
        energy_steps=args.energy_steps,
    )  # fmt: skip
    if args.multipass:
        result["multipass_rows"] = _multipass_rows(benchmark, args, result)
    epoch = dict(
        beta=args.beta, dtype=args.dtype, repeats=args.epoch_repeats,
        warmup_epochs=args.epoch_warmup, feeds=_names(args.epoch_feeds),
    )  # fmt: skip
    if args.fmnist_epoch:
        from dualprop_jax.data import load_dataset

        fmnist = dict(dataset=load_dataset("fashion_mnist"), spec=benchmark.FMNIST_MLP)
        rows = benchmark.time_epoch(
            name="fmnist_mlp", batch=TrainConfig().batch_size, **fmnist, **epoch
        )
        result.setdefault("epoch_rows", []).extend(rows)
    if args.vgg_epoch:
        result.setdefault("epoch_rows", []).extend(
            benchmark.time_epoch(
                images=args.epoch_images or 45_000, batch=args.epoch_batch, **epoch
            )
        )
    for name in _names(args.epoch_models):
        result.setdefault("epoch_rows", []).extend(
            _model_epoch(benchmark, args, name, result["backend"] == "cpu", epoch)
        )
    result["command"] = " ".join(["dualprop", *argv])
    print(format_table(result))
    if args.out:
        path = pathlib.Path(args.out)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
