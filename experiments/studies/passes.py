"""What do extra inference passes buy? Accuracy, cosine to BP and step time against passes.

The default dual-propagation schedule (forward pass, output nudge, one top-down sweep) costs
what BP costs. Both papers also ran more inference: the 2023 MLP code alternates bottom-up and
top-down sweeps (``schedule="alternating"``), the 2024 scripts repeat bottom-up sweeps
(``schedule="bottom_up"``). This study runs 0, 1, 2, 4, 8 and 16 extra passes after the default
schedule (``rules.dual_prop(..., schedule=..., passes=p)``; p = 0 is the default, where the two
schedules coincide, so it runs once) for three rules at β = 0.1:

- DP⊤ at α = ½ (= DP at α = ½, the symmetric rule),
- DP at α = 1 and DP⊤ at α = 1 (the asymmetric pair: the 2024 paper finds DP's stability
  relies on α = ½ while DP⊤ is stable for any α; extra passes are where that shows).

A built-in check: DP⊤ at α = 1 has s̄ = s⁺ = f(a), the forward activity, whatever the
feedback, so after the top-down sweep its dyads are already at the fixed point and extra
passes of either schedule change nothing: its rows must agree for every pass count.

    python experiments/studies/passes.py            # the study (32 min on 2 busy CPU cores)
    python experiments/studies/passes.py --quick    # a tiny slice (CI)

Model and training: the Fashion-MNIST MLP 784-512-512-10 of the 2024 paper, Adam (lr 1e-3),
batch 100, one epoch over a seeded 20 000-image subset of the training set (200 steps), 3
seeds; every cell sees the same batches in the same order, and seed k starts every rule from
the same weights. The cells of one compiled program (a variant × schedule × passes: both DP⊤
rules and all seeds) train together, vmapped (:mod:`dualprop_jax.training.sweep`); passes ≥ 1 run in
a rolled ``lax.fori_loop`` (``unroll=1``). BP trains the same way as a reference row.

Columns:
- test acc: accuracy on the 10 000 test images after the epoch, mean ± std over seeds (a
  diverged seed counts with whatever its non-finite weights predict).
- diverged: seeds whose training loss became non-finite, and the first such step.
- cos init / cos trained: per-layer cosine similarity of the rule's gradient to BP's gradient
  (kernel and bias of a layer together; ``core.alignment``) on a fixed batch of 1000
  training images, at initialisation and at each cell's trained weights; "mean/min" is the
  mean over layers / the worst layer, averaged over seeds (over finite seeds after training).
- step ms, × BP: median time of one jitted train step of one model (not vmapped;
  ``steps.make_train_step``) after warm-up, and its ratio to BP's step. All programs are
  timed round-robin in one run (each round times one step of every program, BP included), so
  load from other processes spreads over all of them; the ratios are from that one run. The
  cost depends only on the program (variant, schedule, passes), so DP⊤ at α = 1 shares the
  timing of DP⊤ at α = ½.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dualprop_jax import core, models, rules
from dualprop_jax.training import sweep
from dualprop_jax.training.steps import TrainState, make_train_step

STUDY = "passes"
BETA = 0.1
RULES = (("DP⊤ α=½", "dp_top", 0.5), ("DP α=1", "dp", 1.0), ("DP⊤ α=1", "dp_top", 1.0))
"""(label, variant, α) of each rule; β = :data:`BETA` for all."""
SCHEDULES = ("alternating", "bottom_up")
DATA_SEED = 0
"""Seed of the training subset and of the batch order (the same for every rule)."""


@dataclasses.dataclass(frozen=True)
class Setup:
    widths: tuple[int, ...] = (784, 512, 512, 10)
    passes: tuple[int, ...] = (0, 1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (0, 1, 2)
    train_images: int = 20000
    batch_size: int = 100
    lr: float = 1e-3
    cos_images: int = 1000
    warmup_steps: int = 3
    timed_steps: int = 30
    rules: tuple[str, ...] = tuple(label for label, *_ in RULES)


FULL = Setup()
QUICK = Setup(
    widths=(784, 32, 32, 10),
    passes=(0, 2),
    seeds=(0,),
    train_images=2000,
    cos_images=200,
    warmup_steps=2,
    timed_steps=5,
    rules=("DP⊤ α=½", "DP⊤ α=1"),  # one variant: three compiled programs
)


def setup(quick: bool) -> Setup:
    return QUICK if quick else FULL


def make_rule(variant: str, alpha: float, schedule: str, passes: int) -> rules.DualProp:
    """The rule of one cell: β = :data:`BETA`; passes ≥ 1 in a rolled loop."""
    return rules.dual_prop(
        variant,
        alpha=alpha,
        beta=BETA,
        schedule=schedule,
        passes=passes,
        unroll=1 if passes else None,
    )


def init_params(widths, seed: int):
    return models.split(models.mlp(widths, rngs=nnx.Rngs(seed)))


@functools.cache
def load_data(s: Setup):
    """``(x, y, x_test, y_test, perm, (x_cos, y_cos))``: the training subset, the test set,
    the batch order (one permutation of the subset, from :data:`DATA_SEED`) and the fixed batch
    for the cosines (the first ``cos_images`` of the subset)."""
    x, y, x_test, y_test = common.load_fashion_mnist(s.train_images, seed=DATA_SEED)
    perm = jax.random.permutation(jax.random.key(DATA_SEED), x.shape[0])
    return x, y, x_test, y_test, perm, (x[: s.cos_images], y[: s.cos_images])


def rules_of(s: Setup) -> list[tuple[str, str, float]]:
    """The (label, variant, α) of the rules this setup runs."""
    return [r for r in RULES if r[0] in s.rules]


def programs(s: Setup) -> list[tuple[str, str, int]]:
    """The compiled programs (variant, schedule, passes); passes = 0 once (schedule moot)."""
    out = []
    for variant in dict.fromkeys(v for _, v, _ in rules_of(s)):
        for p in s.passes:
            for sched in SCHEDULES[:1] if p == 0 else SCHEDULES:
                out.append((variant, sched, p))
    return out


def _per_layer(tree) -> dict[str, jax.Array]:
    """Layer k -> all its parameters' entries as one vector (kernel and bias together)."""
    return {
        str(k): jnp.concatenate([v.ravel() for v in jax.tree.leaves(layer)])
        for k, layer in tree["layers"].items()
    }


@functools.partial(jax.jit, static_argnames="net")
def layer_cosines(net, grid, params, x, y) -> jax.Array:
    """Per-layer cosine of each cell's gradient to BP's at that cell's weights, (M, layers)."""
    bp = rules.backprop()

    def one(rule, p):
        g, _, _ = rule.grad(net, p, (), x, y)
        g_bp, _, _ = bp.grad(net, p, (), x, y)
        cos = core.alignment(_per_layer(g), _per_layer(g_bp))["cosine"]
        return jnp.stack([cos[k] for k in sorted(cos, key=int)])

    axes = jax.tree.map(lambda _: 0, grid)
    return jax.vmap(one, in_axes=(axes, 0))(grid, params)


def accuracy(net, params, x_test, y_test) -> jax.Array:
    """Test accuracy of each of M stacked parameter sets, shape (M,). Every rule here
    predicts with the feedforward pass, so one compiled program (BP's ``predict``, a rule
    without leaves) serves every grid."""
    return sweep.accuracy(net, rules.backprop(), params, x_test, y_test)


def train_program(s, net, seed_params, data, optimizer, variant, sched, p) -> list[dict]:
    """Train every rule of ``variant`` × every seed in one vmapped program; one row per rule."""
    x, y, x_test, y_test, perm, (x_cos, y_cos) = data
    mine = [(label, alpha) for label, v, alpha in rules_of(s) if v == variant]
    cells = [(label, alpha, i) for label, alpha in mine for i in range(len(s.seeds))]
    grid = sweep.stack_rules([make_rule(variant, a, sched, p) for _, a, _ in cells])
    params = [seed_params[i] for _, _, i in cells]
    stacked = sweep.stack_trees(params)
    cos_init = np.asarray(layer_cosines(net, grid, stacked, x_cos, y_cos))
    states = sweep.init_states(net, params, grid, optimizer)
    states, losses = sweep.train_epoch(net, grid, optimizer, states, x, y, perm, s.batch_size)
    acc = np.asarray(accuracy(net, states.params, x_test, y_test))
    bad = sweep.first_nonfinite(losses)
    cos_after = np.asarray(layer_cosines(net, grid, states.params, x_cos, y_cos))
    losses = np.asarray(losses)
    rows = []
    for label, alpha in mine:
        idx = [j for j, c in enumerate(cells) if c[0] == label]
        rows.append(
            dict(
                rule=label,
                variant=variant,
                alpha=alpha,
                beta=BETA,
                schedule="both" if p == 0 else sched,
                passes=p,
                acc=acc[idx],
                first_nonfinite=bad[idx],
                final_loss=losses[-1, idx],
                cos_init_layers=cos_init[idx],
                cos_after_layers=cos_after[idx],
            )
        )
    return rows


def bp_row(s, net, seed_params, data, optimizer) -> dict:
    x, y, x_test, y_test, perm, _ = data
    n = len(s.seeds)
    grid = rules.backprop()  # no leaves: one rule for every cell
    states = sweep.init_states(net, seed_params, grid, optimizer)
    states, losses = sweep.train_epoch(net, grid, optimizer, states, x, y, perm, s.batch_size)
    acc = np.asarray(accuracy(net, states.params, x_test, y_test))
    ones = np.ones((n, len(s.widths) - 1))
    return dict(
        rule="BP",
        variant="bp",
        alpha=None,
        beta=None,
        schedule="—",
        passes=0,
        acc=acc,
        first_nonfinite=sweep.first_nonfinite(losses),
        final_loss=np.asarray(losses)[-1],
        cos_init_layers=ones,
        cos_after_layers=ones,
    )


def time_steps(s, net, params, data, progs) -> dict:
    """Median ms of one train step of one model per program (and of BP), timed round-robin."""
    x, y, *_, perm, _ = data
    rule_of = {"bp": rules.backprop()}
    for variant, sched, p in progs:
        alpha = next(a for _, v, a in rules_of(s) if v == variant)
        rule_of[(variant, sched, p)] = make_rule(variant, alpha, sched, p)
    steps, states = {}, {}
    for key, rule in rule_of.items():
        opt = optax.adam(s.lr)
        steps[key] = make_train_step(net, rule, opt)
        states[key] = TrainState.create(net, params, rule, opt)
    n_batches = perm.shape[0] // s.batch_size
    batches = [perm[i * s.batch_size : (i + 1) * s.batch_size] for i in range(n_batches)]
    times = {key: [] for key in rule_of}
    for i in range(s.warmup_steps + s.timed_steps):
        idx = batches[i % n_batches]
        xb, yb = jax.block_until_ready((x[idx], y[idx]))  # not inside the first timed step
        for key in rule_of:  # round-robin: one step of every program per round
            t0 = time.perf_counter()
            states[key], metrics = steps[key](states[key], xb, yb)
            jax.block_until_ready((states[key], metrics))
            if i >= s.warmup_steps:
                times[key].append(time.perf_counter() - t0)
        if i + 1 == s.warmup_steps:
            common.progress(f"timing: compiled and warmed up {len(rule_of)} programs")
    return {key: 1000 * float(np.median(t)) for key, t in times.items()}


def summarise(row: dict) -> dict:
    """Seed means of a row (cosines over the seeds whose trained weights are finite)."""
    acc = np.asarray(row["acc"], float)
    ok = np.asarray(row["first_nonfinite"]) < 0
    ci = np.asarray(row["cos_init_layers"], float)
    ca = np.asarray(row["cos_after_layers"], float)[ok]
    finite = bool(ok.any())
    return dict(
        acc_mean=float(acc.mean()),
        acc_std=float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
        diverged=int((~ok).sum()),
        cos_init_mean=float(ci.mean(1).mean()),
        cos_init_min=float(ci.min(1).mean()),
        cos_after_mean=float(ca.mean(1).mean()) if finite else float("nan"),
        cos_after_min=float(ca.min(1).mean()) if finite else float("nan"),
    )


def _cos(mean: float, lo: float) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.5f} / {lo:.5f}"


def table(s: Setup, rows: list[dict]) -> str:
    cols = [
        "rule",
        "schedule",
        "passes",
        "test acc",
        "diverged",
        "cos init (mean / min)",
        "cos trained (mean / min)",
        "step ms",
        "× BP",
    ]
    body = []
    n = len(s.seeds)
    for r in rows:
        bad = np.asarray(r["first_nonfinite"])
        div = f"{r['diverged']}/{n}"
        if r["diverged"]:
            div += f" (step {int(bad[bad >= 0].min())})"
        body.append(
            [
                r["rule"],
                r["schedule"],
                r["passes"],
                f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f}",
                div,
                "1 (BP)" if r["rule"] == "BP" else _cos(r["cos_init_mean"], r["cos_init_min"]),
                "1 (BP)" if r["rule"] == "BP" else _cos(r["cos_after_mean"], r["cos_after_min"]),
                f"{r['step_ms']:.2f}",
                f"{r['step_ratio']:.2f}",
            ]
        )
    return common.md_table(cols, body)


def figure(s: Setup, rows: list[dict], bp: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = dict(zip([r[0] for r in RULES], ["C0", "C3", "C2"], strict=True))
    style = {"alternating": "-", "bottom_up": "--"}
    for label, *_ in rules_of(s):
        for sched in SCHEDULES:
            line = sorted(
                (r for r in rows if r["rule"] == label and r["schedule"] in (sched, "both")),
                key=lambda r: r["passes"],
            )
            p = [r["passes"] for r in line]
            kw = dict(color=colors[label], ls=style[sched], marker="o", ms=4)
            name = f"{label}, {sched}"
            axes[0].errorbar(
                p,
                [100 * r["acc_mean"] for r in line],
                yerr=[100 * r["acc_std"] for r in line],
                label=name,
                capsize=2,
                **kw,
            )
            axes[1].plot(p, [max(1 - r["cos_after_mean"], 1e-7) for r in line], **kw)
            axes[1].plot(
                p,
                [max(1 - r["cos_init_mean"], 1e-7) for r in line],
                color=colors[label],
                ls=style[sched],
                marker="x",
                ms=4,
                alpha=0.4,
            )
    variants = {"dp_top": ("DP⊤", "C0"), "dp": ("DP", "C3")}
    for variant in dict.fromkeys(v for _, v, _ in rules_of(s)):
        for sched in SCHEDULES:  # one line per program: the cost does not depend on α
            line = sorted(
                (r for r in rows if r["variant"] == variant and r["schedule"] in (sched, "both")),
                key=lambda r: r["passes"],
            )
            ms = {r["passes"]: r["step_ms"] for r in line}
            name, color = variants[variant]
            axes[2].plot(
                list(ms),
                list(ms.values()),
                color=color,
                ls=style[sched],
                marker="o",
                ms=4,
                label=f"{name}, {sched}",
            )
    axes[0].axhline(100 * bp["acc_mean"], color="k", lw=1, ls=":", label="BP")
    axes[2].axhline(bp["step_ms"], color="k", lw=1, ls=":", label="BP")
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("1 − cosine to BP (mean over layers)")
    axes[1].set_yscale("log")
    axes[1].set_title("o: after training, x (faint): at initialisation", fontsize=9)
    axes[2].set_ylabel("train step (ms, one model)")
    axes[2].set_ylim(bottom=0)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)
        ax.set_xticks(list(s.passes), [str(p) for p in s.passes])
        ax.set_xlabel("extra inference passes")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Fashion-MNIST MLP {'-'.join(map(str, s.widths))}, β = {BETA}, "
        f"{s.train_images // s.batch_size} Adam steps, {len(s.seeds)} seed(s)"
    )
    fig.tight_layout()
    return fig


def headline(s: Setup, rows: list[dict]) -> str:
    lines = []
    for label, *_ in rules_of(s):
        for sched in SCHEDULES:
            line = sorted(
                (r for r in rows if r["rule"] == label and r["schedule"] in (sched, "both")),
                key=lambda r: r["passes"],
            )
            accs = ", ".join(f"{r['passes']}: {100 * r['acc_mean']:.1f}" for r in line)
            div = [r["passes"] for r in line if r["diverged"]]
            tail = f"; diverged at passes {div}" if div else ""
            lines.append(f"- {label}, {sched}: test acc (%) by passes {accs}{tail}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = common.parser(STUDY, __doc__)
    args = p.parse_args(argv)
    prov = common.Provenance(STUDY, args.quick, argv)
    s = setup(args.quick)
    out = common.out_dir(STUDY, args)
    data = load_data(s)
    nets, seed_params = zip(*(init_params(s.widths, seed) for seed in s.seeds), strict=True)
    net = nets[0]  # the static view: the same for every seed
    optimizer = optax.adam(s.lr)  # one object for every call: train_epoch's static argument
    progs = programs(s)

    rows = []
    for variant, sched, passes in progs:
        t0 = time.perf_counter()
        rows += train_program(s, net, seed_params, data, optimizer, variant, sched, passes)
        common.progress(f"{variant} {sched} passes={passes}: {time.perf_counter() - t0:.1f} s")
    bp = bp_row(s, net, seed_params, data, optimizer)
    common.progress("BP trained")
    ms = time_steps(s, net, seed_params[0], data, progs)
    common.progress("timing done")

    order = {label: i for i, (label, *_) in enumerate(RULES)}
    sched_order = {"both": 0, **{sc: i + 1 for i, sc in enumerate(SCHEDULES)}}
    rows.sort(key=lambda r: (order[r["rule"]], sched_order[r["schedule"]], r["passes"]))
    for r in [bp, *rows]:
        r.update(summarise(r))
        key = "bp" if r["rule"] == "BP" else (r["variant"], r["schedule"], r["passes"])
        if r["passes"] == 0 and r["rule"] != "BP":
            key = (r["variant"], SCHEDULES[0], 0)
        r["step_ms"] = ms[key]
        r["step_ratio"] = ms[key] / ms["bp"]

    meta = prov.finish()
    steps = s.train_images // s.batch_size
    body = (
        f"Fashion-MNIST MLP {'-'.join(map(str, s.widths))}; Adam lr {s.lr:g}, batch "
        f"{s.batch_size}, one epoch over {s.train_images} training images ({steps} steps), "
        f"seeds {', '.join(map(str, s.seeds))}; test accuracy on the 10 000 test images. "
        f"β = {BETA}. Passes: extra inference passes after the default forward pass + output "
        "nudge + one top-down sweep (`alternating`: a bottom-up and a top-down sweep per pass, "
        "the 2023 MLP code; `bottom_up`: one bottom-up sweep per pass, the 2024 scripts); at 0 "
        "passes the schedules coincide (`both`). Cosines: per-layer cosine to BP's gradient on "
        f"{s.cos_images} training images, mean / min over layers, averaged over seeds (after "
        "training: over the seeds that did not diverge). Step times: one model, median of "
        f"{s.timed_steps} steps after {s.warmup_steps} warm-up steps, all programs timed "
        "round-robin in **one run** (the × BP ratios come from that run; DP⊤ α=1 shares DP⊤ "
        "α=½'s program and timing).\n\n"
        + headline(s, rows)
        + "\n"
        + table(s, [bp, *rows])
        + f"\nRaw numbers (every seed and layer, divergence steps, final losses): `{STUDY}.json`.\n"
    )
    results = {
        "setup": dataclasses.asdict(s),
        "beta": BETA,
        "data_seed": DATA_SEED,
        "rows": [bp, *rows],
        "step_ms": {"bp" if k == "bp" else "/".join(map(str, k)): v for k, v in ms.items()},
    }
    fig = figure(s, rows, bp)
    common.write_outputs(
        out,
        STUDY,
        "Inference passes: accuracy, cosine to BP and step time",
        body,
        results,
        fig,
        meta,
    )
    return results


if __name__ == "__main__":
    main()
