"""α × β robustness of DP and DP⊤: where does each rule train, and where does it diverge?

The 2024 paper (Høier & Zach, ICML 2024) finds that the 2023 DP update is numerically stable
only with symmetric nudging (α = ½), while DP⊤ is stable for any α. This study maps it on
Fashion-MNIST: DP and DP⊤ over α ∈ {0, ¼, ½, ¾, 1} × β ∈ {0.01, 0.1, 0.5, 1}, with the
default one-sweep inference and with the 2024 scripts' 16 bottom-up passes ("fw16": the
forward state with the output nudged, then 15 bottom-up passes), on two depths: the 2024 MLP
784-512-512-10 and a deeper MLP 784-256×6-10, over 3 seeds.

    python experiments/studies/alpha_beta.py            # the study (about 40 min on 2 CPU cores)
    python experiments/studies/alpha_beta.py --quick    # a tiny slice (CI)

Training: Adam (lr 1e-3), batch 100, a fixed budget of ``--train-images`` (a seeded random
subset of the training set) × ``--epochs``, the same batches in the same order for every cell;
all cells of one (depth, schedule, variant) train together in one vmapped program
(:mod:`~dualprop_jax.training.sweep`).
Cell (α, β, seed k) starts from the same weights as every other
cell of seed k. Reported per cell: test accuracy (10 000 test images) after the budget, mean
over seeds; how many seeds diverged (a non-finite training loss) and at which step/epoch.

Inference diagnostic: whether the multi-pass fixed-point iteration of the dyads converges.
:func:`dualprop_jax.core.pass_residuals` runs 16 bottom-up passes from the fw16 start on 1000
training images and returns r_p = ‖S_p − S_{p−1}‖ (S_p all dyads after pass p). The table
reports ρ = (r_16 / r_8)^(1/8), the per-pass contraction factor late in the iteration (the
spectral radius of the pass's linearisation where the iteration settles): ρ < 1 (or r = 0)
converges, ρ ≈ 1 with r_16 ≫ 0 keeps moving (oscillates), ρ > 1 diverges. Measured at
initialisation (seed 0) and at the end of fw16 training (seed 0, where finite).

Partial results live in ``<out>/partial/`` (one JSON per group), so an interrupted run resumes
where it stopped.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common
import jax
import numpy as np
import optax
from flax import nnx

from dualprop_jax import core, models, rules
from dualprop_jax.training import sweep

STUDY = "alpha_beta"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
BETAS = (0.01, 0.1, 0.5, 1.0)
VARIANTS = ("dp", "dp_top")
DEPTHS = {"mlp2x512": (784, 512, 512, 10), "mlp6x256": (784, *[256] * 6, 10)}
"""Depth name -> MLP widths: the 2024 paper's MLP, and a deeper one."""
SCHEDULES = {
    "sweep": {},
    "fw16": dict(schedule="bottom_up", passes=15, sweep=False, unroll=1),
}
"""Schedule name -> rule fields: one top-down sweep (BP's cost), or the 2024 scripts' fw16."""
DIAG_PASSES = 16
LABEL = {"dp": "DP", "dp_top": "DP⊤"}

QUICK = dict(
    alphas=(0.0, 0.5, 1.0),
    betas=(1.0,),
    depths={"mlp2x16": (784, 16, 16, 10)},
    schedules={"sweep": {}, "fw4": dict(schedule="bottom_up", passes=3, sweep=False, unroll=1)},
    seeds=(0,),
    train_images=600,
    diag_images=100,
)


def make_rule(variant: str, alpha: float, beta: float, schedule: dict) -> rules.DualProp:
    return rules.dual_prop(variant, alpha=alpha, beta=beta, **schedule)


def init_params(widths, seed: int):
    return models.split(models.mlp(widths, rngs=nnx.Rngs(seed)))


def train_group(net, params_by_seed, cells, data, args, optimizer):
    """Train every cell ``(rule, seed)`` of one static setting together; per-cell results."""
    x, y, x_test, y_test = data
    grid = sweep.stack_rules([rule for rule, _ in cells])
    states = sweep.init_states(net, [params_by_seed[s] for _, s in cells], grid, optimizer)
    n = x.shape[0]
    steps_per_epoch = n // args.batch_size
    losses, t0 = [], time.perf_counter()
    for epoch in range(args.epochs):
        perm = jax.random.permutation(jax.random.key(1000 + epoch), n)
        states, loss = sweep.train_epoch(net, grid, optimizer, states, x, y, perm, args.batch_size)
        losses.append(np.asarray(loss))
        bad = int((sweep.first_nonfinite(np.concatenate(losses)) >= 0).sum())
        common.progress(
            f"    epoch {epoch + 1}/{args.epochs}: {time.perf_counter() - t0:.0f} s, "
            f"{bad}/{len(cells)} cells diverged"
        )
    losses = np.concatenate(losses)
    acc = np.asarray(sweep.accuracy(net, grid, states.params, x_test, y_test))
    first = sweep.first_nonfinite(losses)
    tail = losses[-min(20, len(losses)) :]
    out = []
    for i, (rule, seed) in enumerate(cells):
        step = int(first[i])
        out.append(
            {
                "alpha": float(rule.alpha),
                "beta": float(rule.beta),
                "seed": seed,
                "test_accuracy": float(acc[i]),
                "diverged": step >= 0,
                "diverged_step": step if step >= 0 else None,
                "diverged_epoch": step // steps_per_epoch + 1 if step >= 0 else None,
                "final_train_loss": float(np.mean(tail[:, i])),
            }
        )
    return out, states, time.perf_counter() - t0


def contraction(residual: np.ndarray) -> float:
    """ρ = (r_P / r_{P/2})^(2/P); 0 where the iteration has stopped moving (r = 0)."""
    p = len(residual)
    late, mid = float(residual[-1]), float(residual[p // 2 - 1])
    if not (math.isfinite(late) and math.isfinite(mid)):
        return math.inf
    if late == 0.0 or mid == 0.0:
        return 0.0
    return (late / mid) ** (1.0 / (p - p // 2))


def diagnose(net, grid_rules, params, x, y) -> list[dict]:
    """Pass residuals of every rule at ``params`` (one parameter set per rule, stacked)."""
    grid = sweep.stack_rules(grid_rules)
    axes = jax.tree.map(lambda _: 0, grid)
    fn = jax.jit(
        jax.vmap(
            lambda rule, p: core.pass_residuals(net, p, x, y, rule, DIAG_PASSES),
            in_axes=(axes, 0),
        )
    )
    out = jax.device_get(fn(grid, params))
    rows = []
    for i in range(len(grid_rules)):
        r = np.asarray(out["residual"][i], np.float64)
        rows.append(
            {
                "residual": r.tolist(),
                "delta": np.asarray(out["delta"][i], np.float64).tolist(),
                "rho": contraction(r),
                "r_last_over_first": float(r[-1] / r[0]) if r[0] > 0 else 0.0,
            }
        )
    return rows


def signature(args, depth, widths, sched_name, schedule, variant) -> dict:
    return {
        "depth": depth,
        "widths": list(widths),
        "schedule": sched_name,
        "schedule_fields": schedule,
        "variant": variant,
        "alphas": list(args.alphas),
        "betas": list(args.betas),
        "seeds": list(args.seeds),
        "train_images": args.train_images,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
    }


def run_group(args, out, data, diag_data, depth, widths, sched_name, schedule, variant):
    sig = signature(args, depth, widths, sched_name, schedule, variant)
    path = out / "partial" / f"{depth}-{sched_name}-{variant}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("signature") == sig:
            common.progress(f"  {path.name}: reused")
            return {**saved, "reused": True}
    common.progress(f"  {depth} {sched_name} {LABEL[variant]}: training")
    optimizer = optax.adam(args.lr)
    net, _ = init_params(widths, 0)
    params_by_seed = {s: init_params(widths, s)[1] for s in args.seeds}
    cells = [
        (make_rule(variant, a, b, schedule), s)
        for a in args.alphas
        for b in args.betas
        for s in args.seeds
    ]
    runs, states, seconds = train_group(net, params_by_seed, cells, data, args, optimizer)
    group = {
        "signature": sig,
        "runs": runs,
        "train_seconds": round(seconds, 1),
        "trained_with": {  # a resumed run reuses this group: say which code trained it
            "git_commit": common.git("rev-parse", "--short=12", "HEAD"),
            "finished": time.strftime("%Y-%m-%d %H:%M"),
        },
    }
    if sched_name != "sweep":  # the fixed-point iteration this schedule runs, per (α, β)
        first = args.seeds[0]
        idx = [i for i, (_, s) in enumerate(cells) if s == first]
        diag_rules = [cells[i][0] for i in idx]
        x, y = diag_data
        init = sweep.stack_trees([params_by_seed[first]] * len(idx))
        trained = jax.tree.map(lambda v: v[np.asarray(idx)], states.params)
        at_init = diagnose(net, diag_rules, init, x, y)
        at_end = diagnose(net, diag_rules, trained, x, y)
        group["diagnostic"] = [
            {"alpha": float(r.alpha), "beta": float(r.beta), "init": a, "trained": b}
            for r, a, b in zip(diag_rules, at_init, at_end, strict=True)
        ]
    group = json.loads(json.dumps(common._jsonable(group)))  # as a resumed run reads it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(group, indent=1) + "\n")
    return group


def summarise(group: dict, alphas, betas) -> dict:
    """(α, β) -> mean/std accuracy, diverged seeds, first divergence epoch."""
    cells = {}
    for a in alphas:
        for b in betas:
            runs = [r for r in group["runs"] if r["alpha"] == a and r["beta"] == b]
            accs = [r["test_accuracy"] for r in runs]
            div = [r for r in runs if r["diverged"]]
            cells[(a, b)] = {
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs)),
                "diverged": len(div),
                "seeds": len(runs),
                "epoch": min((r["diverged_epoch"] for r in div), default=None),
                "step": min((r["diverged_step"] for r in div), default=None),
            }
    return cells


def _fmt_settle(d: dict | None) -> str:
    """r_16/r_1 of a diagnostic: how far the last pass still moves, relative to the first."""
    if d is None:
        return ""
    ratio = d["r_last_over_first"]
    if ratio is None or isinstance(ratio, str) or not math.isfinite(ratio):
        return "diverged"
    return "0" if ratio == 0.0 else f"{ratio:.0e}"


def tables(args, groups: dict) -> str:
    lines = []
    for depth, widths in args.depths.items():
        for sched in args.schedules:
            name = "-".join(map(str, widths))
            lines.append(f"\n## MLP {name}, {sched}\n")
            lines.append(
                "Test accuracy (%) mean ± std over seeds; ✕k: k seeds diverged (non-finite "
                "loss), from epoch e (step s).\n"
            )
            cols = ["variant", "β \\ α", *[f"α={a:g}" for a in args.alphas]]
            rows = []
            for variant in VARIANTS:
                cells = summarise(groups[(depth, sched, variant)], args.alphas, args.betas)
                for b in args.betas:
                    row = [LABEL[variant], f"β={b:g}"]
                    for a in args.alphas:
                        c = cells[(a, b)]
                        text = f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"
                        if c["diverged"]:
                            text += f" ✕{c['diverged']} (e{c['epoch']}, s{c['step']})"
                        row.append(text)
                    rows.append(row)
            lines.append(common.md_table(cols, rows))
            diag = [groups[(depth, sched, v)].get("diagnostic") for v in VARIANTS]
            if all(diag):
                lines.append(
                    f"\nFixed-point iteration of the dyads ({DIAG_PASSES} bottom-up passes, "
                    "seed 0): r_16/r_1, the step of the last pass relative to the first, at "
                    "initialisation / after training. ≲ 1e-5: settled (to float32 round-off); "
                    "≳ 1e-2: still moving after 16 passes; 0: exactly still.\n"
                )
                rows = []
                for variant, d in zip(VARIANTS, diag, strict=True):
                    by = {(e["alpha"], e["beta"]): e for e in d}
                    for b in args.betas:
                        row = [LABEL[variant], f"β={b:g}"]
                        for a in args.alphas:
                            e = by[(a, b)]
                            row.append(f"{_fmt_settle(e['init'])} / {_fmt_settle(e['trained'])}")
                        rows.append(row)
                lines.append(common.md_table(cols, rows))
    return "\n".join(lines)


def headline(args, groups) -> str:
    """One sentence per depth and schedule: DP vs DP⊤ at α = 1 (and α = 0), largest β."""
    b = max(args.betas)
    out = ["\n## Headline\n"]
    for depth, widths in args.depths.items():
        for sched in args.schedules:
            parts = []
            for a in (max(args.alphas), min(args.alphas)):
                vals = []
                for variant in VARIANTS:
                    c = summarise(groups[(depth, sched, variant)], args.alphas, args.betas)[(a, b)]
                    div = f", {c['diverged']}/{c['seeds']} diverged" if c["diverged"] else ""
                    vals.append(f"{LABEL[variant]} {100 * c['mean']:.1f}%{div}")
                parts.append(f"α = {a:g}: " + " vs ".join(vals))
            worst = []
            for variant in VARIANTS:
                cells = summarise(groups[(depth, sched, variant)], args.alphas, args.betas)
                (wa, wb), c = min(cells.items(), key=lambda kv: kv[1]["mean"])
                worst.append(f"{LABEL[variant]} {100 * c['mean']:.1f}% (α = {wa:g}, β = {wb:g})")
            name = "-".join(map(str, widths))
            out.append(
                f"- MLP {name}, {sched}, β = {b:g}: "
                + "; ".join(parts)
                + ". Worst cell: "
                + ", ".join(worst)
                + "."
            )
    return "\n".join(out) + "\n"


def figure(args, groups):
    import matplotlib.pyplot as plt

    rows = [(d, s) for d in args.depths for s in args.schedules]
    fig, axes = plt.subplots(
        len(rows) + 1, 2, figsize=(9, 2.8 * (len(rows) + 1)), squeeze=False, layout="constrained"
    )
    summaries = {key: summarise(groups[key], args.alphas, args.betas) for key in groups}
    means = [100 * c["mean"] for cells in summaries.values() for c in cells.values()]
    vmin, vmax = np.floor(min(means)) - 1, np.ceil(max(means)) + 1  # the grid's own range
    for r, (depth, sched) in enumerate(rows):
        for c, variant in enumerate(VARIANTS):
            ax = axes[r][c]
            cells = summaries[(depth, sched, variant)]
            grid = np.array(
                [[100 * cells[(a, b)]["mean"] for a in args.alphas] for b in args.betas]
            )
            im = ax.imshow(
                grid, vmin=vmin, vmax=vmax, cmap="viridis", origin="lower", aspect="auto"
            )
            for i, b in enumerate(args.betas):
                for j, a in enumerate(args.alphas):
                    cell = cells[(a, b)]
                    text = f"{grid[i, j]:.1f}" + (
                        f"\n✕{cell['diverged']}" if cell["diverged"] else ""
                    )
                    light = grid[i, j] < (vmin + vmax) / 2
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="w" if light else "k")  # fmt: skip
            ax.set_xticks(range(len(args.alphas)), [f"{a:g}" for a in args.alphas])
            ax.set_yticks(range(len(args.betas)), [f"{b:g}" for b in args.betas])
            ax.set_xlabel("α")
            ax.set_ylabel("β")
            name = "-".join(map(str, args.depths[depth]))
            ax.set_title(f"{LABEL[variant]}, {name}, {sched}", fontsize=9)
    fig.colorbar(im, ax=axes[: len(rows)].ravel().tolist(), shrink=0.6, label="test accuracy (%)")
    diag_sched = [s for s in args.schedules if s != "sweep"]
    for c in range(2):
        ax = axes[len(rows)][c]
        if not diag_sched or c >= len(args.depths):
            ax.axis("off")
            continue
        depth = list(args.depths)[c]
        for variant, style in zip(VARIANTS, ("-", "--"), strict=True):
            d = groups[(depth, diag_sched[0], variant)]["diagnostic"]
            for b in args.betas:
                ratio = [
                    next(
                        e["init"]["r_last_over_first"]
                        for e in d
                        if e["alpha"] == a and e["beta"] == b
                    )
                    for a in args.alphas
                ]
                # 0 (exactly still) and round-off are drawn at the floor of the axis
                ratio = [1e3 if v is None or isinstance(v, str) else max(v, 1e-9) for v in ratio]
                ax.semilogy(
                    args.alphas, ratio, style, marker="o", label=f"{LABEL[variant]} β={b:g}"
                )
        ax.set_ylim(5e-10, 2e3)
        ax.set_xlabel("α")
        ax.set_ylabel(f"r_{DIAG_PASSES}/r_1 at init (floor: 1e-9)")
        name = "-".join(map(str, args.depths[depth]))
        ax.set_title(f"does the {DIAG_PASSES}-pass iteration settle? {name}", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    return fig


def main(argv=None) -> int:
    p = common.parser(STUDY, __doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--train-images", type=int, default=20000, help="training-set subset (0: all 60 000)"
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--diag-images", type=int, default=1000)
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="α values")
    p.add_argument("--betas", type=float, nargs="+", default=list(BETAS), help="β values")
    p.add_argument(
        "--depths", nargs="+", choices=sorted(DEPTHS), default=list(DEPTHS), help="networks"
    )
    p.add_argument(
        "--schedules",
        nargs="+",
        choices=sorted(SCHEDULES),
        default=list(SCHEDULES),
        help="inference schedules",
    )
    args = p.parse_args(argv)
    prov = common.Provenance(STUDY, args.quick, argv)
    if args.train_images <= 0:
        args.train_images = None  # the whole training set (60 000 images)
    args.alphas, args.betas = tuple(args.alphas), tuple(args.betas)
    args.depths = {d: DEPTHS[d] for d in args.depths}
    args.schedules = {s: SCHEDULES[s] for s in args.schedules}
    if args.quick:
        args.alphas, args.betas = QUICK["alphas"], QUICK["betas"]
        args.depths, args.schedules = QUICK["depths"], QUICK["schedules"]
        args.seeds, args.train_images = list(QUICK["seeds"]), QUICK["train_images"]
        args.diag_images = QUICK["diag_images"]
    out = common.out_dir(STUDY, args)
    x, y, x_test, y_test = common.load_fashion_mnist(args.train_images)
    data = (x, y, x_test, y_test)
    n_train = int(x.shape[0])
    diag_data = (x[: args.diag_images], y[: args.diag_images])
    groups = {}
    for depth, widths in args.depths.items():
        for sched_name, schedule in args.schedules.items():
            for variant in VARIANTS:
                groups[(depth, sched_name, variant)] = run_group(
                    args, out, data, diag_data, depth, widths, sched_name, schedule, variant
                )
    meta = prov.finish()
    train_minutes = sum(g["train_seconds"] for g in groups.values()) / 60
    reused = sum(bool(g.get("reused")) for g in groups.values())
    if reused:
        train_minutes_note = (
            f" {reused} of {len(groups)} groups were read back from `partial/`, as finished by an "
            "earlier run of the same command (the run time above does not include them)."
        )
    else:
        train_minutes_note = ""
    body = (
        f"Fashion-MNIST; Adam lr {args.lr:g}, batch {args.batch_size}, {n_train} "
        f"training images × {args.epochs} epoch(s) "
        f"({n_train // args.batch_size * args.epochs} steps), seeds "
        f"{', '.join(map(str, args.seeds))}; test accuracy on the 10 000 test images. "
        "Schedules: `sweep` = forward pass, output nudge, one top-down sweep (BP's cost); "
        "`fw16` = the 2024 scripts' 16 bottom-up passes (the first nudges only the output). "
        "At α = ½ with one sweep DP and DP⊤ are the same rule. Training time of all groups "
        f"(summed over their first runs, on this machine): {train_minutes:.0f} min."
        + train_minutes_note
        + "\n"
        + headline(args, groups)
        + tables(args, groups)
        + "\nRaw numbers (every seed, divergence step, residuals r_p per pass): "
        f"`{STUDY}.json`.\n"
    )
    results = {
        "settings": {
            "alphas": args.alphas,
            "betas": args.betas,
            "depths": {k: list(v) for k, v in args.depths.items()},
            "schedules": args.schedules,
            "seeds": args.seeds,
            "train_images": args.train_images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "diag_passes": DIAG_PASSES,
        },
        "groups": [
            {"depth": d, "schedule": s, "variant": v, **g} for (d, s, v), g in groups.items()
        ],
    }
    common.write_outputs(
        out, STUDY, "α × β robustness of DP and DP⊤", body, results, figure(args, groups), meta
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
