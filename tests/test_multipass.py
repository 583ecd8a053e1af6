"""Multi-pass inference and the two conv layouts, against explicit loops written in this file.

The oracles are independent of the library's inference code: layer maps written with
``lax.conv_general_dilated``, a reshape-based 2x2 max-pool and matmuls; feedback and ff inputs
as gradients of the energy ⟨u, W(s)⟩ (the official 2024 code's construction); the weight
gradient as ``jax.grad`` of J = (1/β) Σ_k ⟨-δ_k, W_{k-1}(s̄_{k-1})⟩ / B.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules
from dualprop_jax.training.config import TrainConfig

B, CLASSES = 6, 5


def _pool(z):
    n, h, w, c = z.shape
    return z.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _conv(p, s):
    dn = ("NHWC", "HWIO", "NHWC")
    return (
        jax.lax.conv_general_dilated(s, p["kernel"], (1, 1), "SAME", dimension_numbers=dn)
        + (p["bias"])
    )


def _maps(layout):
    """Explicit maps of dp.cnn((8, 8, 2), channels=(3, 4), dense=(6,), num_classes=5)."""
    if layout == "pooled":  # conv → pool is one map; the dense map flattens
        return [
            lambda p, s: _pool(_conv(p, s)),
            lambda p, s: _pool(_conv(p, s)),
            lambda p, s: s.reshape(len(s), -1) @ p["kernel"] + p["bias"],
            lambda p, s: s @ p["kernel"] + p["bias"],
        ]
    return [  # the pool sits at the next map's input
        _conv,
        lambda p, s: _conv(p, _pool(s)),
        lambda p, s: _pool(s).reshape(len(s), -1) @ p["kernel"] + p["bias"],
        lambda p, s: s @ p["kernel"] + p["bias"],
    ]


def _cnn(layout):
    model = dp.cnn(
        (8, 8, 2),
        channels=(3, 4),
        dense=(6,),
        num_classes=CLASSES,
        layout=layout,
        rngs=nnx.Rngs(0),
        param_dtype=jnp.float64,
    )
    return dp.split(model)


def _data(shape, seed=1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape)), jnp.asarray(rng.integers(0, CLASSES, shape[0]))


def _explicit(
    maps, thetas, x, y, variant, alpha, beta, *, passes=0, sweep=True, lin="s_bar", g_at="rule"
):
    """Dyads by the closed-form updates, in plain Python loops, and ∇θ J (softmax CE).

    ``lin``: where the feedback map is linearised in the extra passes ("s_bar" or "s_plus",
    the official code's choice). ``g_at``: the output nudge's g at the forward prediction
    ("y_hat"), at the current output ("current"), or as the rule defines it ("rule": DP
    current, DP⊤ ŷ). Bottom-up passes; ``sweep`` as in :class:`rules.DualProp`.
    """
    L = len(maps)
    t = jax.nn.one_hot(y, CLASSES, dtype=x.dtype)
    c_plus, c_minus = (alpha, 1 - alpha) if variant == "dp" else (1 - alpha, alpha)
    if g_at == "rule":
        g_at = "current" if variant == "dp" else "y_hat"

    def grad_of_energy(u, fn, s, wrt):  # ∂/∂(u or s) Σ u · fn(s)
        return jax.grad(lambda u_, s_: jnp.vdot(u_, fn(s_)), argnums=wrt)(u, s)

    s = [x]
    for k in range(L):
        a = maps[k](thetas[k], s[k])
        s.append(a if k == L - 1 else jax.nn.relu(a))
    y_hat = s[L]
    sp, sm = list(s), list(s)

    def nudge(a_L):
        g = jax.nn.softmax(a_L if g_at == "current" else y_hat) - t
        return a_L - c_plus * beta * g, a_L + c_minus * beta * g

    def solve(k, at):
        bar = alpha * sp[k - 1] + (1 - alpha) * sm[k - 1]
        a = grad_of_energy(sp[k], lambda s_: maps[k - 1](thetas[k - 1], s_), bar, 0)
        if k == L:
            sp[k], sm[k] = nudge(a)
            return
        fb = grad_of_energy(sp[k + 1] - sm[k + 1], lambda s_: maps[k](thetas[k], s_), at, 1)
        sp[k], sm[k] = jax.nn.relu(a + c_plus * fb), jax.nn.relu(a - c_minus * fb)

    sp[L], sm[L] = nudge(y_hat)
    for k in range(L - 1, 0, -1) if sweep else ():
        solve(k, s[k])  # the sweep: every layer still at its forward activity
    for _ in range(passes):
        for k in range(1, L + 1):
            at = alpha * sp[k] + (1 - alpha) * sm[k] if lin == "s_bar" else sp[k]
            solve(k, at if k < L else None)

    def J(th):
        total = 0.0
        for k in range(1, L + 1):
            bar = alpha * sp[k - 1] + (1 - alpha) * sm[k - 1]
            total += jnp.vdot(-(sp[k] - sm[k]), maps[k - 1](th[k - 1], bar))
        return total / (beta * len(x))

    return sp, sm, jax.grad(J)(thetas)


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _max_rel(tree_a, tree_b):
    return max(
        _rel(a, b) for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)
    )


# ------------------------------------------------------------------ the official layout

# float64 agreement: both sides run the same arithmetic in another order, so the differences
# are rounding, ~1e-16 relative per operation; 1e-12 leaves room for a few hundred operations
# and fails on any modelling difference (the layouts differ by ~1e-3 at these β).
EXACT = 1e-12


@pytest.mark.parametrize("variant", ["dp", "dp_top"])
def test_pooled_layout_one_sweep_equals_the_official_conventions(variant):
    with jax.enable_x64(True):
        net, params = _cnn("pooled")
        x, y = _data((B, 8, 8, 2))
        alpha, beta = 0.3, 0.5
        rule = rules.dual_prop(variant, alpha, beta, dtype="float64")
        thetas = [params["layers"][k] for k in range(net.num_maps)]
        sp, sm, g = _explicit(_maps("pooled"), thetas, x, y, variant, alpha, beta)
        dy = dp.infer_dyads(net, params, x, y, rule)
        for k in range(1, net.num_maps + 1):
            assert dy.s_plus[k].shape == sp[k].shape  # states are stored pooled
            assert _rel(dy.s_plus[k], sp[k]) < EXACT and _rel(dy.s_minus[k], sm[k]) < EXACT
        grads, _, _ = rule.grad(net, params, (), x, y)
        assert _max_rel(grads["layers"], dict(enumerate(g))) < EXACT
        # the test can tell the layouts apart: the default layout's gradient differs here
        net_u, params_u = _cnn("unpooled")
        grads_u, _, _ = rule.grad(net_u, params_u, (), x, y)
        assert _max_rel(grads_u["layers"], dict(enumerate(g))) > 1e-6


def test_layouts_agree_on_the_forward_pass_bp_and_the_beta_to_zero_limit():
    with jax.enable_x64(True):
        (net_p, params_p), (net_u, params_u) = _cnn("pooled"), _cnn("unpooled")
        x, y = _data((B, 8, 8, 2))
        # the same parameters (same rngs), the same network function
        assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params_p, params_u)))
        np.testing.assert_allclose(
            net_p.forward(params_p, x), net_u.forward(params_u, x), rtol=EXACT, atol=1e-14
        )
        bp = rules.backprop(dtype="float64")
        g_p, g_u = bp.grad(net_p, params_p, (), x, y)[0], bp.grad(net_u, params_u, (), x, y)[0]
        assert _max_rel(g_p, g_u) < EXACT
        # β → 0: both layouts' DP⊤ gradients tend to BP (α = ½: O(β²); bounds of test_core)
        for net, params in ((net_p, params_p), (net_u, params_u)):
            g = rules.dual_prop(beta=1e-3, dtype="float64").grad(net, params, (), x, y)[0]
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_p), strict=True):
                cos = np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
                assert 1 - cos < 1e-14 and abs(np.linalg.norm(a) / np.linalg.norm(b) - 1) < 1e-10


def test_pooled_layout_multi_pass_linearises_the_feedback_at_the_mean():
    """The official code takes a pooled map's feedback vjp at s⁺; the library at s̄, where the
    map is applied. At α = 1 (s̄ = s⁺) the two are the same; at α < 1 they differ."""
    with jax.enable_x64(True):
        net, params = _cnn("pooled")
        x, y = _data((B, 8, 8, 2))
        thetas = [params["layers"][k] for k in range(net.num_maps)]
        for alpha in (0.3, 1.0):
            rule = rules.dual_prop(
                alpha=alpha, beta=1.0, passes=3, schedule="bottom_up", dtype="float64"
            )
            dy = dp.infer_dyads(net, params, x, y, rule)
            runs = {
                lin: _explicit(
                    _maps("pooled"), thetas, x, y, "dp_top", alpha, 1.0, passes=3, lin=lin
                )
                for lin in ("s_bar", "s_plus")
            }
            assert max(_rel(dy.s_plus[k], runs["s_bar"][0][k]) for k in (1, 2, 3)) < EXACT
            off = max(_rel(dy.s_plus[k], runs["s_plus"][0][k]) for k in (1, 2, 3))
            assert off < EXACT if alpha == 1.0 else off > 1e-6


# ------------------------------------------------------------------ schedules and loop form


def _mlp():
    model = dp.mlp((6, 8, 7, CLASSES), rngs=nnx.Rngs(2), param_dtype=jnp.float64)
    net, params = dp.split(model)
    maps = [lambda p, s: s @ p["kernel"] + p["bias"]] * 3
    return net, params, maps, [params["layers"][k] for k in range(3)]


@pytest.mark.parametrize("variant", ["dp", "dp_top"])
def test_output_nudge_follows_each_variants_definition(variant):
    """DP⊤ nudges by g(ŷ) at the forward prediction, fixed in every pass (docs/method.md, the
    official DP⊤ code); DP by g at the current output (2023). At β = 1 the two conventions
    differ by ~1e-4..1e-3 relative, far above float64 rounding."""
    with jax.enable_x64(True):
        net, params, maps, thetas = _mlp()
        x, y = _data((B, 6))
        alpha, beta = 0.25, 1.0
        rule = rules.dual_prop(
            variant, alpha, beta, passes=4, schedule="bottom_up", dtype="float64"
        )
        dy = dp.infer_dyads(net, params, x, y, rule)
        runs = {
            g_at: _explicit(maps, thetas, x, y, variant, alpha, beta, passes=4, g_at=g_at)
            for g_at in ("y_hat", "current")
        }
        own = "current" if variant == "dp" else "y_hat"
        other = "y_hat" if variant == "dp" else "current"
        for k in (1, 2, 3):
            assert _rel(dy.s_plus[k], runs[own][0][k]) < EXACT
            assert _rel(dy.s_minus[k], runs[own][1][k]) < EXACT
        gap = max(_rel(dy.s_plus[k], runs[other][0][k]) for k in (1, 2, 3))
        assert gap > 1e-5, gap
        grads, _, _ = rule.grad(net, params, (), x, y)
        assert _max_rel(grads["layers"], dict(enumerate(runs[own][2]))) < EXACT


def test_without_the_sweep_k_minus_1_passes_are_the_published_fwk_schedule():
    """The 2024 scripts' fwK: from the forward state, K bottom-up passes over k = 1..L; its
    first pass changes only the output (every hidden δ is still 0), so it is sweep=False with
    K - 1 passes. The explicit loop below runs all K passes literally."""
    with jax.enable_x64(True):
        net, params, maps, thetas = _mlp()
        x, y = _data((B, 6))
        K, alpha, beta = 5, 0.25, 1.0
        rule = rules.dual_prop(
            alpha=alpha, beta=beta, passes=K - 1, schedule="bottom_up", sweep=False, dtype="float64"
        )
        dy = dp.infer_dyads(net, params, x, y, rule)
        # literal fwK: no nudge before the passes; pass 1 reaches the output last
        L, t = 3, jax.nn.one_hot(y, CLASSES, dtype=x.dtype)
        s = [x]
        for k in range(L):
            a = maps[k](thetas[k], s[k])
            s.append(a if k == L - 1 else jax.nn.relu(a))
        sp, sm, g_hat = list(s), list(s), jax.nn.softmax(s[L]) - t
        for _ in range(K):
            for k in range(1, L + 1):
                a = maps[k - 1](thetas[k - 1], alpha * sp[k - 1] + (1 - alpha) * sm[k - 1])
                if k == L:
                    sp[k], sm[k] = a - (1 - alpha) * beta * g_hat, a + alpha * beta * g_hat
                else:
                    fb = (sp[k + 1] - sm[k + 1]) @ thetas[k]["kernel"].T
                    sp[k], sm[k] = jax.nn.relu(a + (1 - alpha) * fb), jax.nn.relu(a - alpha * fb)
        for k in (1, 2, 3):
            assert _rel(dy.s_plus[k], sp[k]) < EXACT and _rel(dy.s_minus[k], sm[k]) < EXACT
        # one pass fewer would leave layer 1 without error from the output (L = 3 layers)
        short = dp.infer_dyads(net, params, x, y, rule.replace(passes=1))
        assert np.allclose(short.s_plus[1], short.s_minus[1])


@pytest.mark.parametrize("schedule", ["bottom_up", "alternating"])
def test_unroll_changes_the_program_not_the_result(schedule):
    """Rolled (unroll=1), partly unrolled with a remainder (4 does not divide 6), fully
    unrolled and automatic loops give the same dyads and gradients."""
    with jax.enable_x64(True):
        net, params = _cnn("pooled")
        x, y = _data((B, 8, 8, 2))
        # DP (2023): its output nudge moves with the output, so passes keep changing the
        # states (DP⊤ with g(ŷ) fixed reaches its fixed point exactly in a few passes here)
        base = rules.dual_prop(
            "dp", alpha=0.3, beta=0.5, passes=6, schedule=schedule, unroll=1, dtype="float64"
        )
        ref, _, _ = base.grad(net, params, (), x, y)
        for unroll in (4, 6, None):
            g, _, _ = base.replace(unroll=unroll).grad(net, params, (), x, y)
            assert _max_rel(g, ref) < EXACT
        # and the passes matter: one pass fewer is a different gradient
        g5, _, _ = base.replace(passes=5).grad(net, params, (), x, y)
        assert _max_rel(g5, ref) > 1e-6


def test_unroll_setting_is_validated_and_resolved():
    assert rules.dual_prop(passes=16).unroll_factor == 16
    assert rules.dual_prop(passes=40).unroll_factor == rules.AUTO_UNROLL_FACTOR
    assert rules.dual_prop(passes=6, unroll=1).unroll_factor == 1
    assert rules.dual_prop(passes=6, unroll=100).unroll_factor == 6
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="unroll"):
            rules.dual_prop(passes=4, unroll=bad)
    with pytest.raises(ValueError, match="sweep"):
        rules.dual_prop(passes=0, sweep=False)
    rule = rules.dual_prop(passes=3, sweep=False, unroll=2)
    assert rules.from_dict(rule.to_dict()) == rule


def test_layout_is_validated():
    with pytest.raises(ValueError, match="layout"):
        dp.cnn(layout="official", rngs=nnx.Rngs(0))


def test_pooled_layout_trains_with_optax_on_a_fixed_batch():
    """A training-level check of the pooled layout: 30 SGD steps of 16-pass DP⊤ (the 2024
    schedule) lower the loss of a fixed batch as BP's gradient does (both from one start)."""
    net, params = dp.split(
        dp.cnn(
            (8, 8, 2),
            channels=(3, 4),
            dense=(6,),
            num_classes=CLASSES,
            layout="pooled",
            rngs=nnx.Rngs(0),
        )
    )
    x, y = (jnp.asarray(a, jnp.float32) for a in _data((32, 8, 8, 2)))
    y = y.astype(jnp.int32)
    opt = optax.sgd(0.05)
    losses = {}
    for rule in (rules.dual_prop(passes=16, schedule="bottom_up"), rules.backprop()):
        step = jax.jit(lambda p, s, rule=rule: _sgd(rule, net, opt, p, s, x, y))
        p, s = params, opt.init(params)
        first = None
        for _ in range(30):
            p, s, loss = step(p, s)
            first = loss if first is None else first
        losses[rule.name] = (float(first), float(loss))
    for first, last in losses.values():
        assert last < 0.5 * first
    assert abs(losses["dp_top"][1] - losses["bp"][1]) < 0.1 * losses["bp"][0]


def _sgd(rule, net, opt, p, s, x, y):
    g, aux, _ = rule.grad(net, p, (), x, y)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, aux.loss


def test_command_line_names_the_layout_and_the_published_schedule():
    from dualprop_jax import cli
    from dualprop_jax.training.steps import build_model

    argv = ["train", "--model", "cnn", "--layout", "pooled", "--schedule", "bottom_up"]
    argv += ["--passes", "15", "--no-sweep", "--unroll", "5"]
    cfg = cli.config_from_args(cli._parser().parse_args(argv))
    assert cfg.layout == "pooled"
    assert cfg.rule == rules.dual_prop(passes=15, schedule="bottom_up", sweep=False, unroll=5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # the config builds the pooled network: conv → pool inside the conv maps
    model = build_model(cfg, (28, 28, 1), 10, nnx.Rngs(0))
    assert [getattr(m, "pool_output", False) for m in model.layers] == [True, True, False, False]
    assert not any(getattr(m, "pool_input", False) for m in model.layers)
    with pytest.raises(ValueError, match="layout"):
        TrainConfig(layout="official")
    # the default stays the unpooled layout and the default rule sweeps
    default = cli.config_from_args(cli._parser().parse_args(["train"]))
    assert default.layout == "unpooled" and default.rule.sweep
