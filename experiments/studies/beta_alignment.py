"""β → 0: how fast do the DP, DP⊤ and fast-path gradients tend to the BP gradient?

The 2023 paper's central finding: the contrastive DP gradient -(1/β) δ_k s̄_{k-1}ᵀ tends to the
back-propagation gradient as the nudging strength β → 0, and symmetric nudging (α = ½) is exact
to second order. For a smooth activation f a Taylor expansion of the dyads gives the relative
error ‖g − g_BP‖/‖g_BP‖ = O(β²) at α = ½ and O(β) at α ∈ {0, 1} (DP: the mean s̄ moves by
(2α−1) f′ fb and δ picks up (2α−1) f″ fb²/2; DP⊤: s̄ is exact to first order, δ picks up
(1−2α) f″ fb²/2), and 1 − cos = O(error²). This study measures it, per layer, for
β ∈ logspace(−4, 0, 13), α ∈ {0, ½, 1}, DP, DP⊤ and the fast path (α = ½ only), in float32 and
float64, on the 2024 paper's Fashion-MNIST MLP 784-512-512-10 with ReLU, and on the same MLP
with tanh as the smooth control, at initialisation and after a short BP training.

    python experiments/studies/beta_alignment.py          # the study (about 2 CPU-minutes)
    python experiments/studies/beta_alignment.py --quick  # CI: MLP 784-64-64-10, 5 β, init only

Measurement: one fixed batch of 500 Fashion-MNIST training images (held out of the training
below); every gradient is the batch-mean gradient of softmax cross-entropy, computed by
``rule.grad`` in the rule's dtype with the parameters cast to it (float64: the float32
parameters cast up, so both dtypes see the same weights), against BP in the same dtype. One
compiled program per (variant, fast path, dtype) runs all 13 β at once (``jax.vmap`` over the
rule's β leaf). "Trained": 400 steps of BP with Adam (lr 1e-3, batch 100) on 10 000 other
training images, then all gradients again at those weights.

Columns of the slope tables (error = ‖g − g_BP‖/‖g_BP‖ over all parameters together):
  slope: least-squares slope of log10(error) against log10(β) over the fit range;
  fit range: the β (and how many of the grid points) where the error is above
    5 × the round-off floor, contiguous from β = 1 down; "—" where fewer than 3 points are;
  round-off from β ≤: the largest β below which round-off dominates (the first β left out
    of the fit), "—" where the whole grid is above the floor;
  min error (β): the smallest error over the grid and where it occurs;
  error, 1 − cos, ‖g‖/‖g_BP‖ at β = 1e-3: the error, one minus the cosine similarity and the norm
    ratio of the whole gradient at β = 10⁻³.
Round-off floor: the float32 round-off is measured, ‖g₃₂ − g₆₄‖/‖g_BP‖ for the same rule, β and
weights (it grows as ε₃₂/β: δ = s⁺ − s⁻ is a difference of two states O(β) apart); the float64
floor is that times ε₆₄/ε₃₂.

Kink table (ReLU): the fraction of hidden (example, unit) pairs whose dyad straddles ReLU's kink,
s⁺ > 0 ≠ s⁻ > 0 (DP, α = ½, float64), and the error divided by √(that fraction). Per-layer
tables: 1 − cos of each kernel's gradient (computed as ½‖ĝ − ĝ_BP‖², exact where the cosine is
within round-off of 1). The JSON holds every number per layer (kernel and bias) and per β,
also DP⊤ at α = ½ (identical to DP there), ‖g_DP − g_DP⊤‖/‖g_BP‖ at α ∈ {0, ½, 1}, the fast path
against DP at α = ½, and the error of the mean of the α = 0 and α = 1 gradients
(``mean_of_ends``: the O(β) term is odd in 2α − 1, so it is O(β²) again).
"""

from __future__ import annotations

import functools
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dualprop_jax import core, models, rules

STUDY = "beta_alignment"
TITLE = "β → 0: alignment of the DP, DP⊤ and fast-path gradients with BP"

RULES = (
    ("DP α=0", "dp", 0.0, False),
    ("DP α=½", "dp", 0.5, False),
    ("DP α=1", "dp", 1.0, False),
    ("DP⊤ α=0", "dp_top", 0.0, False),
    ("DP⊤ α=½", "dp_top", 0.5, False),
    ("DP⊤ α=1", "dp_top", 1.0, False),
    ("fast α=½", "dp", 0.5, True),
)
"""(label, variant, α, fast path). DP⊤ α=½ coincides with DP α=½ (checked, not tabulated)."""
TABLE_RULES = tuple(r[0] for r in RULES if r[0] != "DP⊤ α=½")
DTYPES = ("float64", "float32")
ACTIVATIONS = ("relu", "tanh")
FLOOR_FACTOR = 5.0
"""A β point enters the fit where its error exceeds this many times the round-off floor."""
MIN_FIT_POINTS = 3
BETA_REF = 1e-3
EPS = {d: float(jnp.finfo(d).eps) for d in ("float32", "float64")}

FULL = dict(
    widths=(784, 512, 512, 10),
    betas=tuple(np.logspace(-4, 0, 13)),
    batch=500,
    train_images=10_000,
    train_steps=400,
    train_batch=100,
    lr=1e-3,
    seed=0,
    table_betas=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    stages=("init", "trained"),
)
QUICK = dict(
    FULL,
    widths=(784, 64, 64, 10),
    betas=tuple(np.logspace(-4, 0, 5)),
    train_images=0,
    train_steps=0,
    stages=("init",),
)


# ------------------------------------------------------------------------------ measurement


@functools.partial(jax.jit, static_argnames=("net",))
def grads_over(net, grid, params, x, y):
    """The gradient of every cell of a stacked rule (leaves of shape (M,)): a tree of (M, ...)."""
    return jax.vmap(lambda rule: rule.grad(net, params, (), x, y)[0])(grid)


@functools.partial(jax.jit, static_argnames=("net",))
def grad_of(net, rule, params, x, y):
    """One rule's gradient, jitted (``Backprop.grad`` itself runs eagerly)."""
    return rule.grad(net, params, (), x, y)[0]


def host(tree) -> list[np.ndarray]:
    """The leaves of a gradient tree as float64 NumPy arrays (the metrics are taken there)."""
    return [np.asarray(a, np.float64) for a in jax.tree.leaves(tree)]


def rel_diff(g, h, ref) -> tuple[list[np.ndarray], np.ndarray]:
    """‖g − h‖/‖ref‖ per leaf and over all leaves, for every cell of ``g`` (leaves (M, ...), from
    :func:`host`); ``h`` is stacked the same way or one tree broadcast to every cell."""
    m = g[0].shape[0]
    sq = [np.sum(((a - b) ** 2).reshape(m, -1), axis=1) for a, b in zip(g, h, strict=True)]
    ref_sq = [np.sum(r**2) for r in ref]
    per = [np.sqrt(d / r) for d, r in zip(sq, ref_sq, strict=True)]
    return per, np.sqrt(sum(sq) / sum(ref_sq))


def one_minus_cos(g, ref) -> np.ndarray:
    """1 − cos(g, ref) = ½‖g/‖g‖ − ref/‖ref‖‖² for every row of ``g`` (M, n): exact where the
    cosine is within round-off of 1 (1 − cos of the cosine itself would cancel)."""
    g_hat = g / np.linalg.norm(g, axis=1, keepdims=True)
    return 0.5 * np.sum((g_hat - ref / np.linalg.norm(ref)) ** 2, axis=1)


def alignment_over(g_tree, ref_tree) -> tuple[dict, dict]:
    """Per-leaf cosine and norm ratio of every cell of the stacked ``g_tree`` against
    ``ref_tree`` in float64 (:func:`dualprop_jax.core.alignment`, cell by cell), 1 − cos per
    leaf (:func:`one_minus_cos`), and the three over all leaves together."""
    ref = jax.tree.map(lambda a: np.asarray(a, np.float64), ref_tree)
    g = jax.tree.map(lambda a: np.asarray(a, np.float64), g_tree)
    m = jax.tree.leaves(g)[0].shape[0]
    cells = [core.alignment(jax.tree.map(lambda a, i=i: a[i], g), ref) for i in range(m)]
    names = list(cells[0]["cosine"])
    per = {
        key: {n: np.array([float(c[key][n]) for c in cells]) for n in names}
        for key in ("cosine", "norm_ratio")
    }
    leaves_g = [a.reshape(m, -1) for a in jax.tree.leaves(g)]
    leaves_r = [a.ravel() for a in jax.tree.leaves(ref)]
    per["one_minus_cos"] = {
        n: one_minus_cos(a, r) for n, a, r in zip(names, leaves_g, leaves_r, strict=True)
    }
    flat_g, flat_r = np.concatenate(leaves_g, axis=1), np.concatenate(leaves_r)
    ng, nr = np.linalg.norm(flat_g, axis=1), np.linalg.norm(flat_r)
    total = {
        "cosine": flat_g @ flat_r / (ng * nr),
        "norm_ratio": ng / nr,
        "one_minus_cos": one_minus_cos(flat_g, flat_r),
    }
    return per, total


@functools.partial(jax.jit, static_argnames=("net",))
def kink_fractions(net, grid, params, x, y):
    """Per hidden layer, the fraction of (example, unit) pairs with s⁺ > 0 ≠ s⁻ > 0: the dyads
    that straddle ReLU's kink. Shape (M, L−1)."""

    def one(rule):
        d = core.infer_dyads(net, params, x, y, rule)
        return jnp.stack(
            [jnp.mean((d.s_plus[k] > 0) != (d.s_minus[k] > 0)) for k in range(1, net.num_maps)]
        )

    return jax.vmap(one)(grid)


def stacked(variant: str, alpha: float, fast: bool, betas, dtype: str) -> rules.DualProp:
    """One rule per β, stacked into leaves of shape (len(betas),) in ``dtype``."""
    cells = [
        rules.dual_prop(variant=variant, alpha=alpha, beta=float(b), dtype=dtype, fast=fast)
        for b in betas
    ]
    return jax.tree.map(lambda *v: jnp.asarray(v, dtype), *cells)


def fit_slope(betas, err, floor) -> dict:
    """Slope of log10(err) on log10(β) over the points above FLOOR_FACTOR × floor, contiguous
    from the largest β down."""
    betas, err, floor = map(np.asarray, (betas, err, floor))
    keep = []
    for i in range(len(betas) - 1, -1, -1):
        if np.isfinite(err[i]) and err[i] > FLOOR_FACTOR * floor[i]:
            keep.append(i)
        else:
            break
    keep = sorted(keep)
    cutoff = float(betas[keep[0] - 1]) if keep and keep[0] > 0 else None
    if not keep:
        cutoff = float(betas[-1])
    out = {"points": len(keep), "roundoff_below_beta": cutoff, "slope": None}
    if len(keep) >= MIN_FIT_POINTS:
        lb, le = np.log10(betas[keep]), np.log10(err[keep])
        slope, intercept = np.polyfit(lb, le, 1)
        out.update(
            slope=float(slope),
            intercept=float(intercept),
            beta_min=float(betas[keep[0]]),
            beta_max=float(betas[keep[-1]]),
        )
    return out


def measure(net, params32, x, y, cfg) -> dict:
    """Every rule × dtype at one set of weights: per-β, per-leaf numbers and the fits."""
    betas = cfg["betas"]
    params = {
        "float32": params32,
        "float64": jax.tree.map(lambda a: a.astype(jnp.float64), params32),
    }
    xs = {"float32": x.astype(jnp.float32), "float64": x.astype(jnp.float64)}
    bp = {dt: grad_of(net, rules.backprop(dtype=dt), params[dt], xs[dt], y) for dt in DTYPES}
    bp_host = {dt: host(bp[dt]) for dt in DTYPES}
    out, keep64, floor64 = {}, {}, {}
    for label, variant, alpha, fast in RULES:
        g = {
            dt: grads_over(net, stacked(variant, alpha, fast, betas, dt), params[dt], xs[dt], y)
            for dt in DTYPES
        }
        g_host = {dt: host(g[dt]) for dt in DTYPES}
        keep64[label] = g_host["float64"]
        per_round, round_total = rel_diff(g_host["float32"], g_host["float64"], bp_host["float64"])
        entry = {}
        for dt in DTYPES:
            per_err, err = rel_diff(g_host[dt], bp_host[dt], bp_host[dt])
            per_al, total = alignment_over(g[dt], bp[dt])
            scale = EPS[dt] / EPS["float32"]
            floor = round_total * scale
            entry[dt] = {
                "rel_error": err,
                **total,
                "roundoff_floor": floor,
                "per_layer": {
                    n: {
                        "rel_error": per_err[i],
                        **{key: per_al[key][n] for key in per_al},
                        "roundoff_floor": per_round[i] * scale,
                    }
                    for i, n in enumerate(per_al["cosine"])
                },
                "fit": fit_slope(betas, err, floor),
            }
        out[label] = entry
        floor64[label] = entry["float64"]["roundoff_floor"]
    # DP and DP⊤ coincide at α = ½ (the two variants' coefficients are equal there), and differ
    # at α ∈ {0, 1}: relative difference ‖g_DP − g_DP⊤‖/‖g_BP‖ in float64, per β.
    ref = bp_host["float64"]
    out["dp_minus_dp_top"] = {
        f"α={a}": rel_diff(keep64[f"DP α={a}"], keep64[f"DP⊤ α={a}"], ref)[1]
        for a in ("0", "½", "1")
    }
    out["fast_minus_dp"] = rel_diff(keep64["fast α=½"], keep64["DP α=½"], ref)[1]
    # The O(β) error is odd in (2α − 1) for both variants, so the mean of the α = 0 and α = 1
    # gradients is again O(β²)-accurate (float64).
    out["mean_of_ends"] = {}
    for name in ("DP", "DP⊤"):
        ends = [keep64[f"{name} α={a}"] for a in ("0", "1")]
        mean = [0.5 * (a + b) for a, b in zip(*ends, strict=True)]
        err = rel_diff(mean, ref, ref)[1]
        floor = np.maximum(floor64[f"{name} α=0"], floor64[f"{name} α=1"])
        out["mean_of_ends"][name] = {"rel_error": err, "fit": fit_slope(betas, err, floor)}
    if net.activation == "relu":
        grid = stacked("dp", 0.5, False, betas, "float64")
        kinks = np.asarray(kink_fractions(net, grid, params["float64"], xs["float64"], y))
        out["kink_fraction"] = {f"layer {k + 1}": kinks[:, k] for k in range(kinks.shape[1])}
    return out


# ------------------------------------------------------------------------------ training


def train_bp(net, params, x, y, cfg):
    """``cfg["train_steps"]`` steps of BP with Adam on (x, y), batches of a fresh permutation
    each epoch; returns the trained weights and the per-step batch losses."""
    steps, batch = cfg["train_steps"], cfg["train_batch"]
    per_epoch = x.shape[0] // batch
    epochs = -(-steps // per_epoch)
    key = jax.random.key(cfg["seed"])
    perms = [jax.random.permutation(k, x.shape[0]) for k in jax.random.split(key, epochs)]
    idx = jnp.concatenate([p[: per_epoch * batch] for p in perms])[: steps * batch]
    optimizer = optax.adam(cfg["lr"])
    rule = rules.backprop(dtype="float32")

    @jax.jit
    def run(params, idx):
        def body(carry, ids):
            p, s = carry
            g, aux, _ = rule.grad(net, p, (), x[ids], y[ids])
            updates, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, updates), s), aux.loss

        (p, _), losses = jax.lax.scan(body, (params, optimizer.init(params)), idx)
        return p, losses

    return run(params, idx.reshape(steps, batch))


def accuracy_on(net, params, x, y) -> float:
    return float(jnp.mean(jnp.argmax(net.forward(params, x, jnp.float32), -1) == y))


# ------------------------------------------------------------------------------ report


def _e(v, digits: int = 1) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.{digits}e}"


def _beta(b) -> str:
    return "—" if b is None else f"{b:.0e}".replace("e-0", "e-").replace("e+00", "")


def stages_of(results: dict) -> list[str]:
    return list(results["runs"]["tanh"])


def _at(betas, value) -> int:
    return int(np.argmin(np.abs(np.log10(np.asarray(betas)) - math.log10(value))))


def slope_table(results: dict, activation: str, betas) -> str:
    i = _at(betas, BETA_REF)
    rows = []
    for stage in stages_of(results):
        run = results["runs"][activation][stage]
        for dt in DTYPES:
            for label in TABLE_RULES:
                r = run[label][dt]
                fit = r["fit"]
                slope = "—" if fit["slope"] is None else f"{fit['slope']:.2f}"
                span = (
                    f"{_beta(fit['beta_min'])} … {_beta(fit['beta_max'])} ({fit['points']})"
                    if fit["slope"] is not None
                    else f"— ({fit['points']})"
                )
                err = np.asarray(r["rel_error"])
                j = int(np.argmin(err))
                rows.append(
                    [
                        stage,
                        dt,
                        label,
                        f"**{slope}**",
                        span,
                        _beta(fit["roundoff_below_beta"]),
                        f"{_e(err[j])} ({_beta(betas[j])})",
                        _e(err[i]),
                        _e(r["one_minus_cos"][i]),
                        f"{r['norm_ratio'][i]:.6f}",
                    ]
                )
    cols = [
        "when",
        "dtype",
        "rule",
        "slope",
        "fit range (points)",
        "round-off from β ≤",
        "min error (β)",
        f"error at β={_beta(BETA_REF)}",
        "1 − cos",
        "‖g‖/‖g_BP‖",
    ]
    return common.md_table(cols, rows)


def kink_table(results: dict, betas) -> str:
    rows = []
    relu = results["runs"]["relu"]
    for i, b in enumerate(betas):
        row = [_beta(b)]
        for stage in stages_of(results):
            fr = relu[stage]["kink_fraction"]
            err = relu[stage]["DP α=½"]["float64"]["rel_error"][i]
            mean = float(np.mean([fr[k][i] for k in fr]))
            row.append(" / ".join(f"{fr[k][i]:.1e}" for k in fr))
            row.append(_e(err))
            row.append(f"{err / math.sqrt(mean):.3f}" if mean > 0 else "— (none straddle)")
        rows.append(row)
    layers = " / ".join(relu["init"]["kink_fraction"])
    cols = ["β"]
    for stage in stages_of(results):
        cols += [
            f"straddling fraction, {stage} ({layers})",
            f"error, {stage}",
            f"error / √(mean fraction), {stage}",
        ]
    return common.md_table(cols, rows)


def layer_table(results: dict, activation: str, stage: str, cfg) -> str:
    betas = cfg["betas"]
    cols_b = [_at(betas, b) for b in cfg["table_betas"]]
    j = _at(betas, 1e-2)
    rows = []
    run = results["runs"][activation][stage]
    for dt in DTYPES:
        for label in TABLE_RULES:
            for name, layer in run[label][dt]["per_layer"].items():
                if not name.endswith("kernel"):
                    continue
                rows.append(
                    [dt, label, name]
                    + [_e(layer["one_minus_cos"][i]) for i in cols_b]
                    + [f"{layer['norm_ratio'][j]:.5f}"]
                )
    cols = (
        ["dtype", "rule", "layer"]
        + [f"1 − cos, β={_beta(betas[i])}" for i in cols_b]
        + [f"‖g‖/‖g_BP‖, β={_beta(betas[j])}"]
    )
    return common.md_table(cols, rows)


def slope_of(results, activation, stage, dt, label):
    return results["runs"][activation][stage][label][dt]["fit"]["slope"]


def _s(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def headline(results: dict) -> str:
    lines = []
    for act, name in (("tanh", "tanh (smooth f)"), ("relu", "ReLU (the paper's model)")):
        for stage in stages_of(results):
            parts = []
            for dt in DTYPES:
                half = [
                    _s(slope_of(results, act, stage, dt, lab)) for lab in ("DP α=½", "fast α=½")
                ]
                ends = [
                    _s(slope_of(results, act, stage, dt, lab))
                    for lab in ("DP α=0", "DP α=1", "DP⊤ α=0", "DP⊤ α=1")
                ]
                parts.append(
                    f"{dt}: α=½ (DP, fast) {', '.join(half)}; α∈{{0,1}} (DP 0, DP 1, DP⊤ 0, "
                    f"DP⊤ 1) {', '.join(ends)}"
                )
            lines.append(f"- **{name}, {stage}**: fitted slopes — " + " · ".join(parts) + ".")
    return "\n".join(lines) + "\n"


def _slopes(results, act, dtype, labels) -> list[float]:
    return [
        v
        for stage in stages_of(results)
        for lab in labels
        if (v := slope_of(results, act, stage, dtype, lab)) is not None
    ]


def _span(values, fmt=".2f", sep="–") -> str:
    if not values:
        return "—"
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}{sep}{hi}"


HALF = ("DP α=½", "DP⊤ α=½", "fast α=½")
ENDS = ("DP α=0", "DP α=1", "DP⊤ α=0", "DP⊤ α=1")


def tanh_summary(results: dict, betas) -> str:
    ends_mean = [
        results["runs"]["tanh"][stage]["mean_of_ends"][v]["fit"]["slope"]
        for stage in stages_of(results)
        for v in ("DP", "DP⊤")
    ]
    best = []
    for stage in stages_of(results):
        run = results["runs"]["tanh"][stage]
        for labels, name in ((HALF, "α = ½"), (ENDS, "α ∈ {0, 1}")):
            where = [betas[int(np.argmin(run[lab]["float32"]["rel_error"]))] for lab in labels]
            lo, hi = _beta(min(where)), _beta(max(where))
            best.append(f"{name}, {stage}: β ≈ {lo if lo == hi else f'{lo} … {hi}'}")
    return (
        "**Smooth f (tanh)**: float64 gives the predicted orders, slope "
        f"{_span(_slopes(results, 'tanh', 'float64', HALF))} at α = ½ (DP, DP⊤, fast path) and "
        f"{_span(_slopes(results, 'tanh', 'float64', ENDS))} at α ∈ {{0, 1}} (DP, DP⊤). The "
        "mean of the α = 0 and α = 1 gradients has slope "
        f"{_span([v for v in ends_mean if v is not None])}: the O(β) term is odd in 2α − 1, "
        "as the expansion says. float32 follows the same lines only down to the round-off "
        "floor, which grows as ε₃₂/β (δ = s⁺ − s⁻ is a difference of states O(β) apart): below "
        "the β in 'round-off from β ≤' the float32 error *rises* again as β falls, so a small "
        "β buys nothing in float32. Smallest float32 error at " + "; ".join(best) + "."
    )


def relu_summary(results: dict) -> str:
    clean, total = [], 0
    for stage in stages_of(results):
        run = results["runs"]["relu"][stage]
        fractions = np.asarray(list(run["kink_fraction"].values()))
        total += fractions.shape[1]
        none = np.all(fractions == 0, axis=0)
        clean += list(np.asarray(run["DP α=½"]["float64"]["rel_error"])[none])
    exact = (
        f"here {len(clean)} of the {total} (weights, β) points have no straddling dyad, and "
        f"there the DP α = ½ error is at most {max(clean):.0e}"
        if clean
        else "no point of this run is free of straddling dyads"
    )
    return (
        "**ReLU (the paper's model)**: the fitted slopes are "
        f"{_span(_slopes(results, 'relu', 'float64', HALF))} at α = ½ and "
        f"{_span(_slopes(results, 'relu', 'float64', ENDS))} at α ∈ {{0, 1}} (float64), not 2 "
        "and 1. The Taylor argument needs a smooth f, and ReLU has a kink: a dyad whose two "
        "states lie on opposite sides of it (s⁺ > 0 ≠ s⁻ > 0) makes an O(1) error in that "
        "unit's δ/β however small β is. The fraction of such dyads is proportional to β (kink "
        "table), so this error grows like √β, for every α and also on the fast path. Away "
        "from the kink ReLU is linear (f″ = 0), so where no dyad straddles it DP at α = ½, the "
        f"fast path and DP⊤ at any α are *exact* up to round-off ({exact}), while DP at "
        "α ∈ {0, 1} keeps the O(β) error of its shifted "
        "mean s̄ = f(a) + (2α−1) f′ fb (in the per-layer table it is in layers/1 and "
        "layers/2, while layers/0, whose presynaptic factor is the input x, stays exact). The "
        "fitted slope mixes these regimes "
        "and is no clean order. This is ReLU, not the implementation: the same code gives "
        f"slopes {_span(_slopes(results, 'tanh', 'float64', HALF))} and "
        f"{_span(_slopes(results, 'tanh', 'float64', ENDS))} with tanh."
    )


def body(results: dict, cfg) -> str:
    setup = results["setup"]
    betas = cfg["betas"]
    widths = "-".join(map(str, cfg["widths"]))
    if "trained" in stages_of(results):
        acc = ", ".join(
            f"{act} {100 * setup['trained'][act]['test_accuracy']:.1f}%" for act in ACTIVATIONS
        )
        trained = (
            f"Trained: {cfg['train_steps']} BP steps with Adam (lr {cfg['lr']:g}, batch "
            f"{cfg['train_batch']}) on {cfg['train_images']} other training images; test "
            f"accuracy after training: {acc}."
        )
    else:
        trained = "No training in this run (initialisation only)."
    same = max(
        float(np.max(results["runs"][a][s]["dp_minus_dp_top"]["α=½"]))
        for a in ACTIVATIONS
        for s in stages_of(results)
    )
    fast_dp = results["runs"]["tanh"]["init"]["fast_minus_dp"]
    i1, i2 = _at(betas, 1e-1), _at(betas, 1e-2)
    text = [
        f"MLP {widths}, one fixed batch of {setup['batch']} Fashion-MNIST training images, "
        f"β ∈ logspace(−4, 0, {len(betas)}). {trained} Error = "
        "‖g − g_BP‖/‖g_BP‖ over all parameters; theory for a smooth f: slope 2 at α = ½, "
        "1 at α ∈ {0, 1}; 1 − cos falls twice as fast.",
        "",
        "## Headline",
        "",
        headline(results),
        tanh_summary(results, betas),
        "",
        relu_summary(results),
        "",
        f"Checks: DP and DP⊤ coincide at α = ½ (largest relative difference {same:.1e}, "
        f"float64). The fast path differs from DP α = ½ (tanh, init) by "
        f"{fast_dp[i1]:.1e} at β = 0.1 and {fast_dp[i2]:.1e} at β = 0.01 (O(β²)).",
        "",
    ]
    for act, name in (("relu", "ReLU (the paper's model)"), ("tanh", "tanh (smooth control)")):
        text += [f"## Slopes, {name}", "", slope_table(results, act, betas)]
    text += [
        "## ReLU: dyads straddling the kink (DP α = ½, float64)",
        "",
        "The fraction of hidden (example, unit) pairs with s⁺ > 0 ≠ s⁻ > 0, per hidden layer: "
        "proportional to β; the error over √(fraction) stays about constant (the error is "
        "√β-like), and where no dyad straddles the kink the error is round-off.",
        "",
        kink_table(results, betas),
    ]
    last = stages_of(results)[-1]
    for act, name in (("relu", "ReLU"), ("tanh", "tanh")):
        text += [f"## Per-layer 1 − cos, {name}, {last}", "", layer_table(results, act, last, cfg)]
    return "\n".join(text)


COLORS = {
    "DP α=0": "tab:blue",
    "DP α=½": "tab:green",
    "DP α=1": "tab:red",
    "DP⊤ α=0": "tab:cyan",
    "DP⊤ α=1": "tab:orange",
    "fast α=½": "black",
}


def figure(results: dict, cfg):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    betas = np.asarray(cfg["betas"])
    panels = [(a, s) for a in ACTIVATIONS for s in stages_of(results)]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.5), squeeze=False)
    for col, (act, stage) in enumerate(panels):
        run = results["runs"][act][stage]
        for row, key in enumerate(("rel_error", "one_minus_cos")):
            ax = axes[row][col]
            lows, tops = [], []
            for label in TABLE_RULES:
                fast = label.startswith("fast")
                for dt, style in (("float64", "-"), ("float32", "--")):
                    v = np.asarray(run[label][dt][key], dtype=float)
                    v = np.where(v > 0, v, np.nan)
                    lows.append(np.nanmin(v))
                    tops.append(v[-1])
                    ax.plot(
                        betas,
                        v,
                        color=COLORS[label],
                        ls="none" if fast else style,
                        marker=("x" if dt == "float64" else "+") if fast else ".",
                        ms=6 if fast else 4,
                        lw=1.2,
                        label=f"{label} {dt}" if col == 0 and row == 0 else None,
                    )
            # reference slopes through a point below the curves at β = 1, down to the data
            powers = {"rel_error": (0.5, 1, 2), "one_minus_cos": (1, 2, 4)}[key]
            anchor, floor = np.nanmin(tops) / 4, np.nanmin(lows) / 2
            for power in powers:
                guide = anchor * betas**power
                shown = guide >= floor
                ax.plot(betas[shown], guide[shown], color="grey", ls=":", lw=0.9)
                i = int(np.argmax(shown))
                ax.annotate(
                    f"β^{power:g}", (betas[i], guide[i]), fontsize=7, color="grey", va="top"
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both", lw=0.3)
            ax.set_xlabel("β")
            if row == 0:
                ax.set_title(f"{act}, {stage}")
                ax.set_ylabel("‖g − g_BP‖ / ‖g_BP‖" if col == 0 else "")
            else:
                ax.set_ylabel("1 − cos(g, g_BP)" if col == 0 else "")
    fig.legend(loc="lower center", ncol=6, fontsize=8, bbox_to_anchor=(0.5, -0.06))
    fig.suptitle(
        f"MLP {'-'.join(map(str, cfg['widths']))}: gradient error vs β (solid float64, "
        "dashed float32; fast path: × float64, + float32; grey: slopes)",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ main


def compact(obj, key: str = ""):
    """``obj`` with its measured floats rounded to 6 significant digits for the JSON (cosines,
    which sit within round-off of 1, and the β grid are kept whole)."""
    if isinstance(obj, dict):
        return {k: compact(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [compact(v, key) for v in obj]
    if isinstance(obj, np.ndarray):
        return compact(obj.tolist(), key)
    if isinstance(obj, float | np.floating) and key not in ("cosine", "betas"):
        return float(f"{float(obj):.6g}")
    return obj


def main(argv=None) -> int:
    args = common.parser(STUDY, __doc__.split("\n\n")[0]).parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = common.out_dir(STUDY, args)
    prov = common.Provenance(STUDY, args.quick, argv)
    with jax.enable_x64(True):  # float64 rules need it; restored on exit (tests share jax)
        results = run(cfg)
        meta = prov.finish()
    text, fig = body(results, cfg), figure(results, cfg)
    common.write_outputs(out, STUDY, TITLE, text, compact(results), fig, meta)
    return 0


def run(cfg) -> dict:
    x_train, y_train, x_test, y_test = common.load_fashion_mnist(
        cfg["batch"] + cfg["train_images"], seed=cfg["seed"]
    )
    x, y = x_train[: cfg["batch"]], y_train[: cfg["batch"]]
    x_fit, y_fit = x_train[cfg["batch"] :], y_train[cfg["batch"] :]
    results = {
        "setup": {
            "widths": cfg["widths"],
            "betas": cfg["betas"],
            "batch": cfg["batch"],
            "train": {k: cfg[k] for k in ("train_images", "train_steps", "train_batch", "lr")},
            "seed": cfg["seed"],
            "rules": [
                {"label": lab, "variant": v, "alpha": a, "fast": f} for lab, v, a, f in RULES
            ],
            "floor_factor": FLOOR_FACTOR,
            "eps": EPS,
            "trained": {},
        },
        "runs": {},
    }
    for act in ACTIVATIONS:
        model = models.mlp(cfg["widths"], activation=act, rngs=nnx.Rngs(cfg["seed"]))
        net, params = models.split(model)
        common.progress(f"{act}: measuring at initialisation")
        runs = {"init": measure(net, params, x, y, cfg)}
        if "trained" in cfg["stages"]:
            common.progress(f"{act}: training {cfg['train_steps']} BP steps")
            trained, losses = train_bp(net, params, x_fit, y_fit, cfg)
            acc = accuracy_on(net, trained, x_test, y_test)
            results["setup"]["trained"][act] = {
                "test_accuracy": acc,
                "first_loss": float(losses[0]),
                "last_loss": float(jnp.mean(losses[-20:])),
            }
            common.progress(f"{act}: test accuracy {acc:.3f}; measuring trained")
            runs["trained"] = measure(net, trained, x, y, cfg)
        results["runs"][act] = runs
    return results


if __name__ == "__main__":
    sys.exit(main())
