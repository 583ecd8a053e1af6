"""Does DP⊤ keep back-propagation's bits per byte on a causal transformer language model?

A byte-level GPT-style model (:func:`dualprop_jax.models.causal_lm`: token + learned position
embedding of 64 byte ids, 2 pre-LN blocks of 4-head causal attention and a GELU MLP of width
256 on 64-wide token states, a per-position LayerNorm + dense head to 256 logits) learns to
predict the next byte of Debian's ``fortunes`` corpus (:mod:`dualprop_jax.data.text`; about 2 MB
of training text, fortunes split 80/10/10 into train / validation / test). Each example's loss
is the sum of its 64 positions' cross-entropies, so BP's batch mean and DP⊤'s Hebbian 1/B
refer to the same objective. DP⊤ (α = ½, β = 0.01, one sweep) and BP train from the same
initial weights, on the same batches, with the same optimizer.

    python experiments/studies/byte_lm.py            # the study (about 30 min on 2 CPU cores)
    python experiments/studies/byte_lm.py --quick    # a tiny slice (CI)

Training: Adam (lr 1e-3), batch 32 windows of 64 bytes, ``--steps`` (default 3000, 3 epochs
of the training windows in seeded random order), seeds 0, 1, 2: seed k gives both rules the
same initial weights and batch order. Validation bits per byte every ``eval_every`` steps on
all validation windows; at the end, validation and test bits per byte and next-byte accuracy.
Each finished (rule, seed) run is kept in ``<out>/partial/<rule>-s<seed>.json`` and read back
when the study is run again.

Bits per byte: mean cross-entropy per predicted byte in nats / ln 2 (a uniform guess over 256
byte values scores 8). Δ vs BP: the rule's final validation bits per byte minus BP's on the same
seed (paired), in bits and relative to BP's, mean ± std over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common

STUDY = "byte_lm"
TITLE = "DP⊤ and BP on a causal byte-level transformer language model (Debian fortunes)"


@dataclasses.dataclass(frozen=True)
class Settings:
    rules: tuple[str, ...] = ("bp", "dp_top")
    seeds: tuple[int, ...] = (0, 1, 2)
    length: int = 64
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    batch_size: int = 32
    steps: int = 3000
    eval_every: int = 250
    learning_rate: float = 1e-3
    max_eval: int | None = None  # evaluation windows per split (None: all)


QUICK = Settings(seeds=(0,), steps=20, eval_every=10, max_eval=256)


def _rule(name: str):
    from dualprop_jax import rules

    return rules.backprop() if name == "bp" else rules.dual_prop(name, alpha=0.5, beta=0.01)


def _bits(net, params, rule, ds, split: str, s: Settings) -> dict:
    from dualprop_jax.data import text
    from dualprop_jax.training import steps

    x, y = ds.split(split)
    n = len(x) if s.max_eval is None else min(len(x), s.max_eval)
    r = steps.evaluate(net, params, (x[:n], y[:n]), rule, batch_size=512)
    return {"bpb": text.bits_per_byte(r["loss"], s.length), "accuracy": r["accuracy"]}


def _run(s: Settings, rule_name: str, seed: int, ds) -> dict:
    """Train one (rule, seed): validation bits per byte against steps, then the final figures."""
    import jax
    import optax
    from flax import nnx

    from dualprop_jax import models
    from dualprop_jax.data.pipeline import epoch_order
    from dualprop_jax.training import steps

    module = models.causal_lm(
        s.length, 256, width=s.width, depth=s.depth, heads=s.heads, mlp_ratio=s.mlp_ratio,
        rngs=nnx.Rngs(seed),
    )  # fmt: skip
    net, params = models.split(module)
    rule, optimizer = _rule(rule_name), optax.adam(s.learning_rate)
    state = steps.TrainState.create(net, params, rule, optimizer)
    step = steps.make_train_step(net, rule, optimizer, donate=True)
    curve = [{"step": 0, **_bits(net, state.params, rule, ds, "val", s)}]
    order, epoch, done, train_s = [], 0, 0, 0.0
    while done < s.steps:
        if not order:
            epoch += 1
            order = list(epoch_order(len(ds.x_train), s.batch_size, seed, epoch))
        idx = order.pop(0)
        t0 = time.perf_counter()
        state, metrics = step(state, ds.x_train[idx], ds.y_train[idx])
        jax.block_until_ready(state.params)
        train_s += time.perf_counter() - t0
        done += 1
        if done % s.eval_every == 0 or done == s.steps:
            point = {"step": done, **_bits(net, state.params, rule, ds, "val", s)}
            point["train_bpb"] = float(metrics["loss"]) / (s.length * 0.6931471805599453)
            curve.append(point)
            common.progress(
                f"  {rule_name} seed {seed} step {done}/{s.steps}: validation "
                f"{point['bpb']:.3f} bits/byte (batch {point['train_bpb']:.3f}), next-byte "
                f"accuracy {100 * point['accuracy']:.1f}%"
            )
    val, test = curve[-1], _bits(net, state.params, rule, ds, "test", s)
    return {
        "rule": rule_name, "seed": seed, "curve": curve, "val_bpb": val["bpb"],
        "val_accuracy": val["accuracy"], "test_bpb": test["bpb"],
        "test_accuracy": test["accuracy"], "train_time_s": train_s,
        "num_params": sum(int(a.size) for a in jax.tree.leaves(params)),
    }  # fmt: skip


def run(s: Settings, out: pathlib.Path) -> dict:
    from dualprop_jax.data import text

    ds = text.fortunes(s.length)
    common.progress(
        f"fortunes: {ds.x_train.size} / {ds.x_val.size} / {ds.x_test.size} train / validation / "
        f"test bytes in windows of {s.length}"
    )
    cells, settings = [], json.loads(json.dumps(dataclasses.asdict(s)))  # as stored
    for seed in s.seeds:
        for rule in s.rules:
            path = out / "partial" / f"{rule}-s{seed}.json"
            if path.is_file() and json.loads(path.read_text())["settings"] == settings:
                common.progress(f"{rule} seed {seed}: finished before, read from {path}")
                cells.append(json.loads(path.read_text())["cell"])
                continue
            common.progress(f"{rule} seed {seed}: training")
            cell = _run(s, rule, seed, ds)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"settings": dataclasses.asdict(s), "cell": cell}))
            cells.append(cell)
    sizes = {"train": int(ds.x_train.size), "val": int(ds.x_val.size), "test": int(ds.x_test.size)}
    return {"settings": dataclasses.asdict(s), "bytes": sizes, "cells": cells}


def _mean_std(values, digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: dict) -> str:
    s, cells = results["settings"], results["cells"]
    by = {(c["rule"], c["seed"]): c for c in cells}
    seeds, rows = s["seeds"], []
    for rule in s["rules"]:
        val = [by[rule, k]["val_bpb"] for k in seeds]
        delta = [by[rule, k]["val_bpb"] - by["bp", k]["val_bpb"] for k in seeds]
        rel = [100 * d / by["bp", k]["val_bpb"] for d, k in zip(delta, seeds, strict=True)]
        rows.append(
            [
                rule,
                " / ".join(f"{v:.3f}" for v in val),
                _mean_std(val),
                "—" if rule == "bp" else f"{_mean_std(delta)} ({_mean_std(rel, 2)} %)",
                _mean_std([by[rule, k]["test_bpb"] for k in seeds]),
                _mean_std([100 * by[rule, k]["test_accuracy"] for k in seeds], 2),
                f"{statistics.mean(by[rule, k]['train_time_s'] for k in seeds):.0f}",
            ]
        )
    b = results["bytes"]
    intro = (
        f"causal_lm (width {s['width']}, {s['depth']} blocks, {s['heads']} heads, context "
        f"{s['length']} bytes, {cells[0]['num_params']} parameters) on Debian's fortunes "
        f"({b['train']} / {b['val']} / {b['test']} train / validation / test bytes): "
        f"{s['steps']} steps of Adam (lr {s['learning_rate']}), batch {s['batch_size']}, "
        f"seeds {tuple(seeds)}; DP⊤ at α = ½, β = 0.01, one sweep. Bits per byte (lower is "
        "better; a uniform guess is 8).\n\n"
    )
    cols = [
        "rule", "val bits/byte per seed", "val mean ± std", "Δ vs BP (paired, bits and %)",
        "test bits/byte", "test next-byte acc %", "train s (mean)",
    ]  # fmt: skip
    return intro + common.md_table(cols, rows)


def figure(results: dict):
    """Left: validation bits per byte against steps, each seed thin and the mean bold. Right:
    each rule's curve minus BP's on the same seed (the curves overlap on the left)."""
    import matplotlib.pyplot as plt
    import numpy as np

    s = results["settings"]
    fig, (ax, dax) = plt.subplots(1, 2, figsize=(11, 3.6))
    by = {(c["rule"], c["seed"]): [p["bpb"] for p in c["curve"]] for c in results["cells"]}
    x = [p["step"] for p in results["cells"][0]["curve"]]
    for i, rule in enumerate(s["rules"]):
        ys = np.array([by[rule, k] for k in s["seeds"]])
        for y in ys:
            ax.plot(x, y, color=f"C{i}", alpha=0.3, lw=0.8)
        ax.plot(x, ys.mean(axis=0), color=f"C{i}", lw=2, label=f"{rule} (mean of {len(ys)})")
        if rule != "bp":
            for k in s["seeds"]:
                gap = np.array(by[rule, k]) - np.array(by["bp", k])
                dax.plot(x, gap, color=f"C{i}", lw=1, label=f"{rule} − bp, seed {k}")
    ax.set(xlabel="training step", ylabel="validation bits per byte")
    ax.set_title("byte-level causal transformer on fortunes")
    ax.set_ylim(top=min(8.5, ax.get_ylim()[1]))
    dax.axhline(0.0, color="k", lw=0.8)
    dax.set(xlabel="training step", ylabel="Δ validation bits per byte (paired)")
    dax.set_title("each rule minus BP, same seed")
    for a in (ax, dax):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = common.parser(STUDY, __doc__)
    p.add_argument("--steps", type=int, default=None, help="training steps per run (3000)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.steps is not None:
        s = dataclasses.replace(s, steps=args.steps)
    if args.seeds is not None:
        s = dataclasses.replace(s, seeds=tuple(int(v) for v in args.seeds.split(",")))
    out = common.out_dir(STUDY, args)
    prov = common.Provenance(STUDY, args.quick, argv)
    results = run(s, out)
    meta = prov.finish()
    common.write_outputs(out, STUDY, TITLE, table(results), results, figure(results), meta)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
