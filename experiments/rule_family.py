"""The rule family on one model, optimizer and data: BP, DP⊤, DP, damped DP⊤, KP-DP, EP, CHL.

The measured half of the papers' claim: DP costs what BP costs, while EP and CHL, which relax
to equilibrium twice per step, cost orders of magnitude more. Every rule trains the same
Fashion-MNIST MLP 784-512-512-10 (``experiments/configs/fmnist_mlp512.json``: Adam, batch 100,
10% of train held out) through ``dualprop_jax.train_and_evaluate``, the loop ``dualprop train``
runs, over several seeds. Rules and their settings are :data:`RULES`.

    python experiments/rule_family.py                       # the table in RULE_FAMILY.md
    python experiments/rule_family.py --epochs 1 --seeds 0  # a quick look
    python experiments/rule_family.py --setup fmnist_cnn_pooled --out RULE_FAMILY_CNN.md

``--setup`` names another config of ``experiments/configs/`` (the CNN rows: conv32-pool-
conv64-pool-512 with the pooled layout, which EP and CHL need on max-pool nets).

Columns: test accuracy of the best-validation epoch (mean ± std over seeds); train time per
epoch = steps per epoch / timed steps per second (the first step of every epoch, which
compiles, is not timed; evaluation is not included); that time relative to BP's; train steps
per second. KP-DP also reports the angle between B_k and W_k at the start and the end.

Each run lives in ``<runs>/<label>-seed<k>``; a finished run (results.json) is reused and an
interrupted one resumed, so the script can be stopped and started again. The table (Markdown,
with the command that made it), a JSON of every run and a plot are rewritten after each run.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import pathlib
import statistics
import sys

import jax

from dualprop_jax import rules
from dualprop_jax.training.benchmark import device_description
from dualprop_jax.training.checkpoints import latest_epoch
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.progress import describe_rule
from dualprop_jax.training.train import train_and_evaluate

HERE = pathlib.Path(__file__).resolve().parent
SETUPS = HERE / "configs"

RULES: dict[str, dict] = {
    "bp": {},
    "dp_top": dict(alpha=0.5, beta=0.01),
    "dp": dict(alpha=0.5, beta=0.01),
    "dp_top+damped": dict(alpha=0.5, beta=0.01),
    "dp+kp": dict(alpha=0.5, beta=0.01),
    "ep": {},  # β = 0.5, T = 100, K = 20, symmetric: Ernoult et al. 2019; Laborieux et al. 2021
    "chl": {},  # T = 100, 20 clamped steps: the same relaxation as EP
    "ep+odd_even": {},  # odd layers, then even layers: settles where synchronous updates cycle
    "chl+odd_even": {},
    "dp_top+fw16": dict(alpha=0.5, beta=0.01),  # the 2024 scripts: 16 bottom-up passes
    "pc": {},  # T = 20 inference steps of γ = 0.1
    "pc+fixed": {},  # fixed prediction
    "ep_pcn": {},  # centered, β = 2e-4, K = the number of layers, backward scheme
}
"""Rule label -> its settings (the rest are the rule's defaults)."""
DEFAULT_RULES = ("bp", "dp_top", "dp", "dp_top+damped", "dp+kp", "ep", "chl")
"""The rows of the default table: BP, DP⊤, DP, damped DP⊤, KP-DP, EP and CHL."""


def load_setup(name: str) -> dict:
    path = SETUPS / f"{name}.json"
    if not path.exists():
        sys.exit(f"unknown setup {name!r}; known: {sorted(p.stem for p in SETUPS.glob('*.json'))}")
    return json.loads(path.read_text())


def describe_setup(values: dict) -> str:
    """E.g. ``MLP 784-512-512-10`` or ``CNN conv32-pool-conv64-pool-512-10 (pooled layout)``."""
    if values.get("model", "mlp") == "mlp":
        return "MLP " + "-".join(map(str, [784, *values["widths"], 10]))
    convs = "-".join(f"conv{c}-pool" for c in values["channels"])
    dense = "-".join(map(str, [*values["dense"], 10]))
    return f"CNN {convs}-{dense} ({values.get('layout', 'unpooled')} layout)"


def rule_config(
    setup: str, label: str, seed: int, epochs: int | None, overrides: dict
) -> TrainConfig:
    values = load_setup(setup)
    values.update({k: v for k, v in overrides.items() if k != "rule"})
    if epochs is not None:
        values["epochs"] = epochs
    rule = rules.from_label(label, **RULES[label])
    return TrainConfig.from_dict({**values, "rule": rule.to_dict(), "seed": seed})


def run_one(setup: str, label: str, seed: int, runs: pathlib.Path, epochs, overrides: dict) -> dict:
    workdir = runs / f"{label}-seed{seed}"
    done = workdir / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = rule_config(setup, label, seed, epochs, overrides)

    def hook(event, info):
        if event == "epoch":
            print(
                f"  [{label} seed {seed}] epoch {info['epoch']:3d} val "
                f"{100 * info['val_accuracy']:.2f}% ({info['epoch_time_s']:.1f} s)",
                flush=True,
            )

    resume = latest_epoch(workdir) is not None
    return train_and_evaluate(cfg, workdir, resume=resume, hook=hook)


def epoch_seconds(result: dict) -> float:
    """Train time per epoch: steps per epoch / timed steps per second."""
    cfg = result["config"]
    return (result["num_train"] // cfg["batch_size"]) / result["steps_per_s"]


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return (
        f"{scale * statistics.mean(values):.{digits}f} ± "
        f"{scale * statistics.stdev(values):.{digits}f}"
    )


def summarise(found: dict[str, list[dict]]) -> list[dict]:
    """One summary row per rule label with runs."""
    bp_epoch = [epoch_seconds(r) for r in found.get("bp", [])]
    rows = []
    for label, rs in found.items():
        if not rs:
            continue
        epoch_s = [epoch_seconds(r) for r in rs]
        row = {
            "rule": label,
            "settings": describe_rule(rules.from_dict(rs[0]["rule"])),
            "seeds": [r["seed"] for r in rs],
            "epochs": rs[0]["epochs"],
            "test_accuracy": [r["test_accuracy"] for r in rs],
            "epoch_s": epoch_s,
            "epoch_over_bp": statistics.median(epoch_s) / statistics.median(bp_epoch)
            if bp_epoch
            else None,
            "steps_per_s": [r["steps_per_s"] for r in rs],
        }
        starts = [_unprefixed(r.get("rule_metrics_start") or {}) for r in rs]
        ends = [r.get("rule_metrics_end", {}) for r in rs]
        if any(starts):
            row["rule_metrics_start"], row["rule_metrics_end"] = starts, ends
        rows.append(row)
    return rows


def _unprefixed(metrics: dict) -> dict:
    return {k.removeprefix("rule/"): v for k, v in metrics.items()}


def _angle_text(row: dict) -> str:
    if "rule_metrics_start" not in row:
        return ""
    out = []
    for start, end in zip(row["rule_metrics_start"], row["rule_metrics_end"], strict=True):
        keys = sorted(k for k in start if "angle" in k)
        out.append(
            ", ".join(
                f"{k.split('/')[-1]}: {start[k]:.0f}° → {end.get(k, float('nan')):.0f}°"
                for k in keys
            )
        )
    return out[0] if out else ""


def write_outputs(
    rows: list[dict],
    out: pathlib.Path,
    command: str,
    epochs: int,
    runs: pathlib.Path,
    data: str,
    setup: str,
) -> None:
    model = describe_setup(load_setup(setup))
    lines = [
        f"# The rule family on one model: {model}",
        "",
        "Generated by `experiments/rule_family.py`; do not edit by hand. Command:",
        "",
        f"    {command}",
        "",
        f"Updated {datetime.datetime.now():%Y-%m-%d %H:%M}; jax {jax.__version__}, backend "
        f"`{jax.default_backend()}` ({device_description()}). Fashion-MNIST, {model}, "
        f"{epochs} epoch(s), setup `experiments/configs/{setup}.json` "
        f"(Adam, lr 1e-3, batch 100; {data}). Test accuracy of the best-validation epoch, "
        "mean ± std over seeds. Time per epoch = steps per epoch / timed train steps per "
        "second (compilation and evaluation excluded).",
        "",
        "| rule | settings | seeds | test acc (%) | time / epoch (s) | × BP | train steps/s "
        "| KP angle B_k vs W_k (start → end, seed 0) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['epoch_over_bp']:.2f}" if r["epoch_over_bp"] is not None else "n/a"
        lines.append(
            f"| {r['rule']} | {r['settings']} | {','.join(map(str, r['seeds']))} | "
            f"{_mean_std(r['test_accuracy'], 100)} | {_mean_std(r['epoch_s'], 1, 2)} | "
            f"{ratio} | {_mean_std(r['steps_per_s'], 1, 1)} | {_angle_text(r)} |"
        )
    lines += ["", f"Runs: `{runs}/`. Raw numbers: `{out.with_suffix('.json').name}`.", ""]
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, out.with_suffix(".png"), model)


def _plot(rows: list[dict], path: pathlib.Path, model: str) -> None:
    """Test accuracy against time per epoch relative to BP (log scale), one point per seed."""
    rows = [r for r in rows if r["epoch_over_bp"] is not None]
    if not rows:
        return
    bp = statistics.median(next(r for r in rows if r["rule"] == "bp")["epoch_s"])
    points = [(r["rule"], [t / bp for t in r["epoch_s"]], r["test_accuracy"]) for r in rows]
    scatter_against_cost(points, path, f"Fashion-MNIST {model}: accuracy against cost per epoch",
                         "train time per epoch / BP's (log scale)")  # fmt: skip


def scatter_against_cost(points, path: pathlib.Path, title: str, xlabel: str) -> None:
    """Test accuracy (%) against a cost relative to BP (log scale): ``points`` holds
    ``(label, costs, accuracies)``, one point per seed, each rule labelled at its centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, xs, accs in points:
        ys = [100 * a for a in accs]
        ax.scatter(xs, ys, label=label, s=25)
        ax.annotate(label, (statistics.median(xs), statistics.mean(ys)), fontsize=8,
                    textcoords="offset points", xytext=(5, 5))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_run_arguments(
    parser: argparse.ArgumentParser, rules: tuple[str, ...], runs: str, out: pathlib.Path
) -> None:
    """The flags a table of rules shares: --setup, --rules (default ``rules``), --seeds, --runs
    (where the runs go), --out (the table) and --override (TrainConfig fields of every run)."""
    parser.add_argument("--setup", default="fmnist_mlp512", help="a config in experiments/configs")
    parser.add_argument("--rules", default=",".join(rules), help="labels of RULES")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", type=pathlib.Path, default=pathlib.Path(runs))
    parser.add_argument("--out", type=pathlib.Path, default=out)
    parser.add_argument(
        "--override", action="append", default=[],
        help="FIELD=JSON value of TrainConfig for every run, e.g. max_eval=2000",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    add_run_arguments(parser, DEFAULT_RULES, "runs/rule_family", HERE / "RULE_FAMILY.md")
    parser.add_argument("--epochs", type=int, help="default: the setup's")
    args = parser.parse_args()
    labels = [s for s in args.rules.split(",") if s]
    unknown = [s for s in labels if s not in RULES]
    if unknown:
        sys.exit(f"unknown rule label(s) {unknown}; choose from {list(RULES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    epochs = args.epochs or load_setup(args.setup)["epochs"]
    command = "python experiments/rule_family.py " + " ".join(sys.argv[1:])
    found: dict[str, list[dict]] = {label: [] for label in labels}
    for seed in seeds:
        for label in labels:  # rules interleaved, so a partial table stays comparable
            r = run_one(args.setup, label, seed, args.runs, args.epochs, overrides)
            r.setdefault("rule_metrics_end", _metrics_end(args.runs / f"{label}-seed{seed}"))
            found[label].append(r)
            print(f"{label} seed {seed}: test {100 * r['test_accuracy']:.2f}%", flush=True)
            data = (
                f"{r['num_train']} train images, {r['config']['val_fraction']:.0%} of train held "
                "out for validation, 10k test"
            )
            write_outputs(summarise(found), args.out, command, epochs, args.runs, data, args.setup)


def _metrics_end(workdir: pathlib.Path) -> dict:
    """The ``rule/...`` columns of the last row of the run's metrics.csv."""
    path = workdir / "metrics.csv"
    if not path.exists():
        return {}
    with path.open() as fh:
        last = list(csv.DictReader(fh))[-1]
    return _unprefixed({k: float(v) for k, v in last.items() if k.startswith("rule/")})


if __name__ == "__main__":
    main()
