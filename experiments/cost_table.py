"""The cost table: every rule on one model, one optimizer and one data pipeline, with the
learning rate each rule chose on validation, accuracy, paired differences to BP, and cost.

The successor of ``rule_family.py`` (whose runs, rules and setups it reuses). Three phases,
each resumable (finished runs are read back from ``--runs``):

1. **Learning rates.** Each rule trains ``--sweep-epochs`` on ``--sweep-train`` images (seed 0)
   at every rate of ``--lrs``; the rate of the best validation accuracy is the rule's. The
   sweep is a table of its own in the output, so no rule is judged at a rate it did not pick.
2. **Cost.** For each rule, in this one process and one after another: the train step's
   compile time (``lower().compile()``), its median time over ``--timed-steps`` steps after
   two warm-up steps (time per epoch = steps per epoch x that median; the ratio to BP is
   taken within this run), and its sweeps per step, counted from the rule's settings
   (:func:`dualprop_jax.training.cost.sweeps`) and checked against the flops the compiled step
   gains per added map of a small MLP (:func:`~dualprop_jax.training.cost.sweeps_per_map`).
3. **Accuracy.** Each rule trains ``--epochs`` at its rate for every seed of ``--seeds``: test
   accuracy of the best-validation epoch (mean ± std), the difference to BP paired by seed,
   and the time to ``--target`` validation accuracy (the first epoch that reaches it, times
   the time per epoch of phase 2).

    python experiments/cost_table.py                              # COST_TABLE.md (the MLP)
    python experiments/cost_table.py --setup fmnist_cnn_ep --epochs 1 --lrs 1e-4,3e-4,1e-3 \\
        --out experiments/COST_TABLE_CNN.md --runs runs/cost_cnn --override max_eval=2000
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import optax
import rule_family as rf
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.training.benchmark import device_description
from dualprop_jax.training.cost import compiled_flops, sweeps, sweeps_per_map
from dualprop_jax.training.progress import describe_rule
from dualprop_jax.training.steps import (
    TrainState,
    build_model,
    make_optimizer,
    make_train_step,
    rule_params,
)
from dualprop_jax.training.train import load_data

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_RULES = (
    "bp", "dp_top", "dp", "dp_top+fw16", "dp_top+damped", "dp+kp", "ep", "chl", "pc",
    "pc+fixed", "ep_pcn",
)  # fmt: skip
"""The table's rows: BP, the DP family, EP and CHL, predictive coding, EP on the PC energy."""


def sweep_lr(args, labels: list[str]) -> dict[str, dict]:
    """Phase 1: {label: {"lr": chosen, "val": {lr: best val accuracy}}}."""
    chosen = {}
    for label in labels:
        val = {}
        for lr in args.lrs:
            over = {**args.overrides, "learning_rate": lr}
            if args.sweep_train:
                over["max_train"] = args.sweep_train
            r = rf.run_one(args.setup, label, 0, args.runs / f"sweep-lr{lr:g}", args.sweep_epochs,
                           over)  # fmt: skip
            val[lr] = r["best_val_accuracy"]
            args.train_s["sweep"] += r["train_time_s"]
            print(f"  sweep {label} lr {lr:g}: val {100 * val[lr]:.2f}%", flush=True)
        chosen[label] = {"lr": max(val, key=val.get), "val": {f"{k:g}": v for k, v in val.items()}}
    return chosen


def _compiled_step(cfg, input_shape, steps_per_epoch: int):
    module = build_model(cfg, input_shape, 10, nnx.Rngs(cfg.seed))
    net, params = models.split(module)
    params = rule_params(cfg.rule, net, params, cfg.seed)
    optimizer = make_optimizer(cfg, steps_per_epoch)
    step = make_train_step(net, cfg.rule, optimizer)
    state = TrainState.create(net, params, cfg.rule, optimizer)
    key = jax.random.key(0)
    x = jax.random.uniform(key, (cfg.batch_size, *input_shape))
    y = jax.random.randint(key, (cfg.batch_size,), 0, 10)
    args = step._args(state, x, y, None, None)
    start = time.perf_counter()
    compiled = step.jitted.lower(*args).compile()
    return compiled, args, time.perf_counter() - start, net


def _small_mlp_flops(rule, hidden: int, batch: int = 16) -> float:
    net, params = models.split(models.mlp((20, *(16,) * hidden, 10), rngs=nnx.Rngs(0)))
    params = rule_params(rule, net, params, 0)
    step = make_train_step(net, rule, optax.sgd(0.1))
    state = TrainState.create(net, params, rule, optax.sgd(0.1))
    x, y = jnp.ones((batch, 20)), jnp.zeros((batch,), jnp.int32)
    return compiled_flops(step.lower(state, x, y).compile().as_text())


def measure_cost(args, label: str, lr: float, num_train: int, input_shape) -> dict:
    """Phase 2 for one rule: compile s, median step s, sweeps counted and seen."""
    cfg = rf.rule_config(args.setup, label, 0, 1, {**args.overrides, "learning_rate": lr})
    steps_per_epoch = num_train // cfg.batch_size
    compiled, call_args, compile_s, net = _compiled_step(cfg, input_shape, steps_per_epoch)
    rule_, state, *rest = call_args
    times = []
    for i in range(2 + args.timed_steps):
        start = time.perf_counter()
        state, metrics = compiled(rule_, state, *rest)
        jax.block_until_ready((state, metrics))
        if i >= 2:
            times.append(time.perf_counter() - start)
    counted = sweeps(cfg.rule, net)
    fixed = cfg.rule  # ep_pcn's K is this network's layers, also on the small MLP
    if isinstance(fixed, rules.PCNEquilibriumProp):
        fixed = fixed.replace(nudged_steps=fixed.steps(net))
    seen = sweeps_per_map(lambda h: _small_mlp_flops(fixed, h), 2 * 16 * 16 * 16)
    step_s = statistics.median(times)
    print(f"  cost {label}: compile {compile_s:.1f} s, step {1e3 * step_s:.1f} ms", flush=True)
    return {"compile_s": compile_s, "step_s": step_s, "epoch_s": step_s * steps_per_epoch,
            "sweeps": counted, "sweeps_seen": seen}  # fmt: skip


def _val_curve(workdir: pathlib.Path) -> list[float]:
    with (workdir / "metrics.csv").open() as fh:
        return [float(row["val_accuracy"]) for row in csv.DictReader(fh)]


def _first_epoch_at(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= target), None)


def summarise(labels, lrs, costs, runs, target: float) -> list[dict]:
    """One row per rule with runs: accuracies, paired Δ to BP, cost, time to target."""
    bp_by_seed = {r["seed"]: r["test_accuracy"] for r, _ in runs.get("bp", [])}
    rows = []
    for label in labels:
        done = runs.get(label, [])
        if not done:
            continue
        accs = [r["test_accuracy"] for r, _ in done]
        deltas = [r["test_accuracy"] - bp_by_seed[r["seed"]] for r, _ in done
                  if r["seed"] in bp_by_seed]  # fmt: skip
        epochs_to = [_first_epoch_at(curve, target) for _, curve in done]
        cost = costs[label]
        rows.append({
            "rule": label, "settings": describe_rule(rules.from_dict(done[0][0]["rule"])),
            "lr": lrs[label]["lr"], "seeds": [r["seed"] for r, _ in done],
            "test_accuracy": accs, "delta_vs_bp": deltas, **cost,
            "epoch_over_bp": cost["epoch_s"] / costs["bp"]["epoch_s"],
            "epochs_to_target": epochs_to,
            "time_to_target_s": [None if e is None else e * cost["epoch_s"] for e in epochs_to],
        })  # fmt: skip
    return rows


def _pm(values, scale=1.0, digits=2) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    mean, std = scale * statistics.mean(values), scale * statistics.stdev(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _sweeps_text(row) -> str:
    c = row["sweeps"]
    if c is None:
        return "n/a"
    mv = f" + {c['matvec']} matvec" if "matvec" in c else ""
    return f"{c['total']} ({c['forward']}F {c['transposed']}T {c['weight']}W{mv})"


def _time_to_text(row) -> str:
    reached = [t for t in row["time_to_target_s"] if t is not None]
    n = len(row["time_to_target_s"])
    if not reached:
        return f"not reached (0/{n})"
    return f"{_pm(reached, 1, 1)} ({len(reached)}/{n})"


def _table_lines(rows, target) -> list[str]:
    lines = [
        f"| rule | settings | lr | seeds | test acc (%) | Δ vs BP (points, paired) | time / epoch "
        f"(s) | × BP | compile (s) | sweeps / step (counted) | sweeps seen in the compiled step "
        f"| time to {100 * target:.0f}% val (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['settings']} | {r['lr']:g} | {','.join(map(str, r['seeds']))} | "
            f"{_pm(r['test_accuracy'], 100)} | {_pm(r['delta_vs_bp'], 100)} | "
            f"{r['epoch_s']:.2f} | {r['epoch_over_bp']:.2f} | {r['compile_s']:.1f} | "
            f"{_sweeps_text(r)} | {r['sweeps_seen']:.3f} | {_time_to_text(r)} |"
        )
    return lines


def _sweep_lines(lrs: dict, grid) -> list[str]:
    head = "| rule | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |"
    lines = [head, "|---|" + "---|" * (len(grid) + 1)]
    for label, info in lrs.items():
        vals = " | ".join(f"{100 * info['val'][f'{lr:g}']:.2f}" for lr in grid)
        lines.append(f"| {label} | {vals} | {info['lr']:g} |")
    return lines


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=HERE, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_outputs(args, rows, lrs, started: float, data: str) -> None:
    model = rf.describe_setup(rf.load_setup(args.setup))
    minutes = (time.time() - started) / 60
    lines = [
        f"# Cost table: {model}",
        "",
        "Generated by `experiments/cost_table.py`; do not edit by hand. Command:",
        "",
        f"    {args.command}",
        "",
        f"Commit {_commit()}; {datetime.datetime.now():%Y-%m-%d %H:%M}; this invocation ran "
        f"{minutes:.1f} min (runs it found finished are read back, not rerun); the runs' "
        f"training took {args.train_s['table'] / 60:.1f} min, the learning-rate sweep's "
        f"{args.train_s['sweep'] / 60:.1f} min (evaluation excluded). Python "
        f"{platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, optax "
        f"{optax.__version__}; backend `{jax.default_backend()}` ({device_description()}).",
        "",
        f"Fashion-MNIST, {model}, setup `experiments/configs/{args.setup}.json` ({data}); "
        f"{args.epochs} epoch(s) per run. Test accuracy of the best-validation epoch, mean ± std "
        "over seeds; Δ = rule − BP on the same seed. Time per epoch = steps per epoch × the "
        f"median of {args.timed_steps} timed steps, measured one rule after another in this "
        "process (compilation apart). A sweep is one pass over every map: F forward, T "
        "transposed, W weight products; 'seen' is the flops the compiled step gains per added "
        "map of a small MLP over that map's flops (damped DP's power iteration adds 2/B). "
        f"Time to {100 * args.target:.0f}% = first epoch whose validation accuracy reaches it × "
        "time per epoch (seeds that reached it / seeds).",
        "",
        *_table_lines(rows, args.target),
        "",
        f"## Learning rates (validation accuracy %, {args.sweep_epochs} epoch(s) on "
        f"{args.sweep_train or 'all the'} training images, seed 0)",
        "",
        *_sweep_lines(lrs, args.lrs),
        "",
        f"Runs: `{args.runs}/`. Raw numbers: `{args.out.with_suffix('.json').name}`; figure: "
        f"`{args.out.with_suffix('.png').name}`.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    payload = {"rows": rows, "learning_rates": lrs, "command": args.command}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    plot(rows, args.out.with_suffix(".png"), model)


def plot(rows: list[dict], path: pathlib.Path, model: str) -> None:
    """Test accuracy (one point per seed) against time per epoch relative to BP (log scale)."""
    points = [(r["rule"], [r["epoch_over_bp"]] * len(r["test_accuracy"]), r["test_accuracy"])
              for r in rows]  # fmt: skip
    rf.scatter_against_cost(points, path, f"Fashion-MNIST {model}: accuracy against cost",
                            "time per epoch / BP's (log scale; compilation excluded)")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    rf.add_run_arguments(p, DEFAULT_RULES, "runs/cost_table", HERE / "COST_TABLE.md")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3", help="the learning rates each rule tries")
    p.add_argument("--sweep-epochs", type=int, default=1)
    p.add_argument(
        "--sweep-train", type=int, default=10000,
        help="training images of the sweep (0: those of the table's runs; with --sweep-epochs "
        "equal to --epochs the sweep then has the table's budget)",
    )  # fmt: skip
    p.add_argument("--timed-steps", type=int, default=20)
    p.add_argument("--target", type=float, default=0.85, help="validation accuracy to reach")
    args = p.parse_args(argv)
    args.labels = [s for s in args.rules.split(",") if s]
    unknown = [s for s in args.labels if s not in rf.RULES]
    if unknown or "bp" not in args.labels:
        p.error(f"rules must include bp and come from {list(rf.RULES)}; unknown: {unknown}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.lrs = [float(s) for s in args.lrs.split(",")]
    args.overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    args.command = "python experiments/cost_table.py " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv)  # fmt: skip
    return args


def main(argv=None) -> None:
    args, started = parse_args(argv), time.time()
    args.train_s = {"sweep": 0.0, "table": 0.0}
    lrs = sweep_lr(args, args.labels)
    first = rf.run_one(args.setup, "bp", args.seeds[0], args.runs, args.epochs,
                       {**args.overrides, "learning_rate": lrs["bp"]["lr"]})  # fmt: skip
    shape = load_data(rf.rule_config(args.setup, "bp", 0, 1, args.overrides)).input_shape
    costs = {label: measure_cost(args, label, lrs[label]["lr"], first["num_train"], shape)
             for label in args.labels}  # fmt: skip
    data = (f"{first['num_train']} train images, {first['num_val']} validation, "
            f"{first['num_test']} test; batch {first['config']['batch_size']}, "
            f"{first['config']['optimizer']}")  # fmt: skip
    runs: dict[str, list] = {}
    for seed in args.seeds:
        for label in args.labels:  # interleaved, so that a partial table stays comparable
            over = {**args.overrides, "learning_rate": lrs[label]["lr"]}
            r = rf.run_one(args.setup, label, seed, args.runs, args.epochs, over)
            args.train_s["table"] += r["train_time_s"]
            curve = _val_curve(args.runs / f"{label}-seed{seed}")
            runs.setdefault(label, []).append((r, curve))
            print(f"{label} seed {seed}: test {100 * r['test_accuracy']:.2f}%", flush=True)
            rows = summarise(args.labels, lrs, costs, runs, args.target)
            write_outputs(args, rows, lrs, started, data)


if __name__ == "__main__":
    main()
