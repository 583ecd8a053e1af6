"""The rule variants: damped DP (Høier & Zach 2024), Kolen–Pollack DP and the exact
squared-error output (Høier et al. 2023), against oracles independent of the library.

Oracles: the closed-form updates written in numpy (dense maps, explicit loops), numpy's SVD,
the explicit matrix of a convolution (``lax.conv_general_dilated`` applied to every basis
vector), ``jax.grad`` of the output objectives, the BP gradient, optax driven directly, and
identities the variants must keep (damping with every L_k = 0 is plain DP bit for bit; KP
with B_k = W_k is DP).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import core, rules

B, CLASSES = 6, 3



def _jit_grad(net, x, y):
    """``(rule, params, state) -> rule.grad(net, params, state, x, y)``, jitted."""
    return jax.jit(lambda r, p, s: r.grad(net, p, s, x, y))

def _data(shape, seed=1, classes=CLASSES):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=shape)), jnp.asarray(rng.integers(0, classes, shape[0]))


def _with_biases(net_params, seed=5):
    """Nonzero biases (the builders start them at 0, which would hide bias bugs)."""
    net, params = net_params
    rng = np.random.default_rng(seed)
    layers = {
        k: {**p, "bias": jnp.asarray(0.1 * rng.normal(size=p["bias"].shape), p["bias"].dtype)}
        for k, p in params["layers"].items()
    }
    return net, {**params, "layers": layers}


def _mlp(widths=(6, 8, 7, CLASSES), seed=2):
    return _with_biases(dp.split(dp.mlp(widths, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)))


def _cnn(layout="unpooled"):
    """cnn((8, 8, 2)): conv 2→3, pool, conv 3→4, pool, dense 16→6, dense 6→3."""
    model = dp.cnn(
        (8, 8, 2),
        channels=(3, 4),
        dense=(6,),
        num_classes=CLASSES,
        layout=layout,
        rngs=nnx.Rngs(0),
        param_dtype=jnp.float64,
    )
    return _with_biases(dp.split(model))


def _net(kind):
    net, params = _mlp() if kind == "mlp" else _cnn()
    x, y = _data((B, 6) if kind == "mlp" else (B, 8, 8, 2))
    return net, params, x, y


def _scale_kernels(params, factors):
    """A copy of params with kernel k multiplied by factors[k]."""
    layers = {
        k: {**p, "kernel": p["kernel"] * factors.get(k, 1.0)} for k, p in params["layers"].items()
    }
    return {**params, "layers": layers}


def _sigma_max(kernel):
    return float(np.linalg.svd(np.asarray(kernel), compute_uv=False)[0])


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _max_rel(tree_a, tree_b):
    return max(
        _rel(a, b) for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b), strict=True)
    )


def _bit_equal(tree_a, tree_b):
    leaves_a, leaves_b = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b, strict=True)
    )


def _np_dyads(
    params,
    x,
    y,
    variant,
    alpha,
    beta,
    *,
    passes=0,
    damping=None,
    feedback=None,
    output="linearised",
    loss="softmax_ce",
):
    """Dyads of a ReLU MLP by the closed-form updates in numpy loops, and ∇θ J.

    ``damping``: {k: L_k} for the hidden layers (s± = relu((a ± c± fb + L_k s±)/(1 + L_k)),
    s± on the right the current state); ``feedback``: {k: B_k} replacing W_k in fb_k = δ W_kᵀ
    (KP); ``output``: "linearised" (s± = a ∓ c± βg) or "exact"
    (s⁺ = (a + c⁺β t)/(1 + c⁺β), s⁻ = (a - c⁻β t)/(1 - c⁻β)). Bottom-up passes; g at the
    current output for DP, at ŷ for DP⊤.
    """
    Ws = [np.asarray(params["layers"][k]["kernel"]) for k in range(len(params["layers"]))]
    bs = [np.asarray(params["layers"][k]["bias"]) for k in range(len(Ws))]
    x, n = np.asarray(x), len(Ws)
    t = np.eye(Ws[-1].shape[1])[np.asarray(y)]
    c_plus, c_minus = (alpha, 1 - alpha) if variant == "dp" else (1 - alpha, alpha)
    L = damping or {}
    FB = {k: np.asarray(v) for k, v in (feedback or {}).items()}

    def relu(z):
        return np.maximum(z, 0.0)

    def g(a):
        if loss == "squared_error":
            return a - t
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True) - t

    def out(a, g_a):
        if output == "exact":
            bp, bm = c_plus * beta, c_minus * beta
            return (a + bp * t) / (1 + bp), (a - bm * t) / (1 - bm)
        return a - c_plus * beta * g_a, a + c_minus * beta * g_a

    def hidden(k, a, fb, cur_p, cur_m):
        lk = L.get(k, 0.0)
        return (
            relu((a + c_plus * fb + lk * cur_p) / (1 + lk)),
            relu((a - c_minus * fb + lk * cur_m) / (1 + lk)),
        )

    s, a_fwd = [x], [None]
    for k in range(n):
        a_fwd.append(s[k] @ Ws[k] + bs[k])
        s.append(a_fwd[-1] if k == n - 1 else relu(a_fwd[-1]))
    y_hat = s[n]
    sp, sm = list(s), list(s)
    sp[n], sm[n] = out(y_hat, g(y_hat))
    for k in range(n - 1, 0, -1):
        fb = (sp[k + 1] - sm[k + 1]) @ FB.get(k, Ws[k]).T
        sp[k], sm[k] = hidden(k, a_fwd[k], fb, s[k], s[k])
    for _ in range(passes):
        for k in range(1, n + 1):
            a = (alpha * sp[k - 1] + (1 - alpha) * sm[k - 1]) @ Ws[k - 1] + bs[k - 1]
            if k == n:
                sp[k], sm[k] = out(a, g(a) if variant == "dp" else g(y_hat))
            else:
                fb = (sp[k + 1] - sm[k + 1]) @ FB.get(k, Ws[k]).T
                sp[k], sm[k] = hidden(k, a, fb, sp[k], sm[k])
    grads = {}
    for k in range(1, n + 1):
        bar, d = alpha * sp[k - 1] + (1 - alpha) * sm[k - 1], sp[k] - sm[k]
        grads[k - 1] = {"kernel": -bar.T @ d / (beta * len(x)), "bias": -d.mean(0) / beta}
    return sp, sm, grads


# float64 agreement of two computations of the same arithmetic in another order.
EXACT = 1e-12

# ------------------------------------------------------------------ damped DP


@pytest.mark.parametrize(
    ("kind", "variant", "passes"),
    [("mlp", "dp", 0), ("mlp", "dp_top", 3), ("cnn", "dp", 3), ("cnn", "dp_top", 0)],
)
def test_damped_with_every_gamma_at_most_one_is_bit_identical_to_plain_dp(kind, variant, passes):
    """Oracle: plain DP itself. With every γ_k ≤ 1, L_k = max(0, (γ_k² - 1)/2) = 0 and the
    damped update must give the plain s± = f(a ± c± fb) bit for bit, in the sweep and in the
    passes (jitted, as in training). Catches damping that is active although every γ_k < 1
    (L_k not clamped at 0, i.e. negative for γ_k < 1; a wrong formula such as
    (γ_k² + 1)/2), and a damped path whose undamped part differs from plain DP's."""
    with jax.enable_x64(True):
        net, params, x, y = _net(kind)
        plain = rules.dual_prop(variant, 0.3, 0.1, passes=passes, dtype="float64")
        damped = plain.replace(damped=True)
        # scale every map to γ ≤ ~0.8 (the rule's own estimate, with a margin)
        gammas = damped.metrics(net, params, damped.init(net, params))
        params = _scale_kernels(
            params, {k: 0.8 / float(gammas[f"gamma/{k}"]) for k in range(1, net.num_maps)}
        )
        state = damped.init(net, params)
        gammas = damped.metrics(net, params, state)
        assert 0.7 < min(float(v) for v in gammas.values())
        assert max(float(v) for v in gammas.values()) < 0.9
        g_plain, aux_plain = dp.contrastive_grad(net, params, x, y, plain)
        g_damped, aux_damped, new_state = _jit_grad(net, x, y)(damped, params, state)
        assert _bit_equal(g_damped, g_plain)
        assert _bit_equal(aux_damped, aux_plain)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)
        assert jax.tree.structure(g_damped) == jax.tree.structure(params)


@pytest.mark.parametrize(("variant", "passes"), [("dp", 0), ("dp_top", 2)])
def test_damped_dyads_equal_the_closed_form_with_numpy_svd_norms(variant, passes):
    """Oracle: the damped updates in numpy loops with L_k = max(0, (σ_max(W_k)² - 1)/2) from
    numpy's SVD of map k's kernel (map k sends hidden layer k to layer k+1: the 2024 code's
    convention). The three maps get distinct norms (γ = 1.5, 2, 3) and β is large, so the test
    catches γ of the wrong map (the one feeding layer k, k-1), a missing 1/(1 + L_k), γ in
    place of γ², or the mean s̄_k in place of each current state s±_k in the passes."""
    with jax.enable_x64(True):
        net, params = _mlp()
        target = {0: 1.5, 1: 2.0, 2: 3.0}
        params = _scale_kernels(
            params, {k: v / _sigma_max(params["layers"][k]["kernel"]) for k, v in target.items()}
        )
        x, y = _data((B, 6))
        alpha, beta = 0.3, 0.5
        rule = rules.damped_dual_prop(
            variant, alpha=alpha, beta=beta, passes=passes, schedule="bottom_up", dtype="float64"
        )
        state = rule.init(net, params)
        L = {k: max(0.0, (_sigma_max(params["layers"][k]["kernel"]) ** 2 - 1) / 2) for k in (1, 2)}
        sp, sm, g = _np_dyads(params, x, y, variant, alpha, beta, passes=passes, damping=L)
        dy = jax.jit(lambda r, p, s: r.infer(net, p, s, x, y))(rule, params, state)
        # power iteration converges to ~1e-13 here (50 + 1 steps, well separated σ's)
        for k in range(1, 4):
            assert _rel(dy.s_plus[k], sp[k]) < 1e-9 and _rel(dy.s_minus[k], sm[k]) < 1e-9
        grads, _, _ = rule.grad(net, params, state, x, y)
        assert _max_rel(grads["layers"], g) < 1e-9
        # the oracle tells damping from none: undamped numpy dyads are far off
        sp0, _, _ = _np_dyads(params, x, y, variant, alpha, beta, passes=passes)
        assert _rel(dy.s_plus[1], sp0[1]) > 1e-3


@pytest.mark.parametrize(("variant", "alpha", "beta"), [("dp", 0.5, 0.01), ("dp_top", 0.25, 0.05)])
def test_damped_fixed_point_equals_the_undamped_fixed_point(variant, alpha, beta):
    """Oracle: the undamped iteration's fixed point. For ReLU, s = relu((p + L s)/(1 + L))
    holds iff s = relu(p) (s > 0: s = p; s = 0: p ≤ 0), so where both iterations converge
    (300 passes; γ = 2 and 3, L_k = 1.5 and 4, small β) they reach the same dyads and
    gradient. After one sweep they differ, so the damping is really active. Catches a damped
    update whose fixed point moves (e.g. (p + L s)/L, or L s added without normalisation)."""
    with jax.enable_x64(True):
        net, params = _mlp()
        target = {1: 2.0, 2: 3.0}
        params = _scale_kernels(
            params, {k: v / _sigma_max(params["layers"][k]["kernel"]) for k, v in target.items()}
        )
        x, y = _data((B, 6))
        plain = rules.dual_prop(variant, alpha, beta, dtype="float64", schedule="alternating")
        damped = plain.replace(damped=True)
        state = damped.init(net, params)
        gammas = damped.metrics(net, params, state)
        np.testing.assert_allclose([gammas["gamma/1"], gammas["gamma/2"]], [2.0, 3.0], rtol=1e-9)

        def hebbian(dy):  # ∇W_{k-1} = -(1/β) s̄_{k-1}ᵀ δ_k / B,  ∇b_{k-1} = -(1/β) mean δ_k
            sp, sm = [np.asarray(v) for v in dy.s_plus], [np.asarray(v) for v in dy.s_minus]
            out = {}
            for k in range(1, net.num_maps + 1):
                bar, d = alpha * sp[k - 1] + (1 - alpha) * sm[k - 1], sp[k] - sm[k]
                out[k - 1] = {"kernel": -bar.T @ d / (beta * B), "bias": -d.mean(0) / beta}
            return out

        def run(passes):
            dy_p = dp.infer_dyads(net, params, x, y, plain.replace(passes=passes))
            dy_d = jax.jit(lambda r, p, s: r.infer(net, p, s, x, y))(
                damped.replace(passes=passes), params, state
            )
            return dy_p, dy_d

        dy_p, dy_d = run(0)
        assert (
            max(_rel(a, b) for a, b in zip(dy_d.s_plus[1:3], dy_p.s_plus[1:3], strict=True)) > 1e-4
        )
        assert _max_rel(hebbian(dy_d), hebbian(dy_p)) > 1e-2
        # 300 passes: both converge (plain at once for α = ½, where s̄ keeps the forward
        # activity; damped geometrically, by ~L/(1 + L) per pass at worst) ...
        dy_p, dy_d = run(300)
        for a, b in zip(jax.tree.leaves(dy_d), jax.tree.leaves(dy_p), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        assert _max_rel(hebbian(dy_d), hebbian(dy_p)) < 1e-9
        # ... and the library's gradient is the Hebbian one at those dyads
        grads, _, _ = _jit_grad(net, x, y)(damped.replace(passes=300), params, state)
        assert _max_rel(grads["layers"], hebbian(dy_p)) < 1e-9


def _conv_matrix(kernel, shape):
    """The matrix of the stride-1 'SAME' convolution s ↦ K ⋆ s on one example of ``shape``,
    column j = the convolution of the j-th basis vector (an independent construction)."""
    n = int(np.prod(shape))

    def conv(e):
        s = e.reshape(1, *shape)
        dn = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(s, kernel, (1, 1), "SAME", dimension_numbers=dn).ravel()

    return np.asarray(jax.vmap(conv)(jnp.eye(n, dtype=kernel.dtype))).T


def test_power_iteration_is_within_one_percent_of_the_spectral_norm():
    """Oracle: numpy's SVD of a dense kernel, and of the explicit matrix of a convolution on
    the map's actual input grid (pooled where the map pools its input, unpooled before a
    pool_output). Realistic iteration counts: the rule's state after init (50 iterations) plus
    the one iteration of ``damping_norms``, and ``spectral_norm``'s default 50. The estimate
    √‖AᵀA v‖ is a lower bound. Catches: the norm of the map with its max-pool (linearised at 0
    the pool picks one element per window: a smaller norm), the pre-pool grid for a
    pool_input conv (the 8x8 instead of the 4x4 grid), and γ of the affine map with its bias
    (√‖Aᵀ(Av + b)‖ overshoots σ_max)."""
    with jax.enable_x64(True):
        net, params = _cnn()  # conv 8x8x2→3, pool + conv 4x4x3→4, pool + dense 16→6, 6→3
        grids = ((8, 8, 2), (4, 4, 3), (16,), (6,))  # map 1 convolves the pooled 4x4 grid
        assert net.map_input_shapes(params) == grids
        rule = rules.damped_dual_prop(dtype="float64")
        est = rule.metrics(net, params, rule.init(net, params))
        for k in range(1, net.num_maps):
            K = params["layers"][k]["kernel"]
            exact = _sigma_max(_conv_matrix(K, grids[k]) if K.ndim == 4 else K)
            gamma = float(est[f"gamma/{k}"])
            print("cnn map", k, gamma, exact)
            assert abs(gamma / exact - 1) < 0.01 and gamma <= exact * (1 + 1e-12)
        # a 2 → 3 channel conv with a 5x5 kernel on a 5x5 or 6x6 grid, alone and with either pool
        for pools, in_shape, grid in [
            ({}, (5, 5, 2), (5, 5, 2)),
            ({"pool_input": True}, (10, 10, 2), (5, 5, 2)),
            ({"pool_output": True}, (6, 6, 2), (6, 6, 2)),
        ]:
            conv = dp.Conv(2, 3, kernel_size=5, rngs=nnx.Rngs(1), param_dtype=jnp.float64, **pools)
            net, params = _with_biases(dp.split(dp.Network([conv], input_shape=in_shape)))
            exact = _sigma_max(_conv_matrix(params["layers"][0]["kernel"], grid))
            gamma = float(core.spectral_norm(net, params, 0, dtype=jnp.float64))
            print(pools, gamma, exact)
            assert abs(gamma / exact - 1) < 0.01 and gamma <= exact * (1 + 1e-12)
        # dense: a map with a flat (30,) input and a γ of 20 iterations
        net, params = _mlp((5, 30, 20, 4))
        exact = _sigma_max(params["layers"][1]["kernel"])
        assert abs(float(core.spectral_norm(net, params, 1, 20, jnp.float64)) / exact - 1) < 0.01


def test_damped_rule_state_and_errors():
    """Oracle: the interface's contract. The state is one unit vector per hidden map of the
    core's input shape; it stays a fixed pytree under jit; a conv net built by hand without
    input_shape gets a clear error (a dense one needs none); plain gradient functions refuse a
    damped rule instead of silently dropping the damping."""
    net, params = _cnn()
    rule = rules.damped_dual_prop("dp_top", power_iterations=2)
    state = rule.init(net, params)
    assert isinstance(state, core.DampingState)
    assert {k: v.shape for k, v in state.vectors.items()} == {
        1: (1, 4, 4, 3),
        2: (1, 16),
        3: (1, 6),
    }
    for v in state.vectors.values():
        np.testing.assert_allclose(jnp.linalg.norm(v), 1.0, rtol=1e-6)
    net_m, params_m = dp.split(dp.mlp((6, 8, 7, CLASSES), rngs=nnx.Rngs(2)))
    x, y = _data((B, 6))
    x = x.astype(jnp.float32)
    step = jax.jit(lambda p, s: rule.grad(net_m, p, s, x, y))
    state = rule.init(net_m, params_m)
    _, _, state2 = step(params_m, state)
    _, _, state3 = step(params_m, state2)
    assert step._cache_size() == 1
    assert jax.tree.structure(state3) == jax.tree.structure(state)
    with pytest.raises(ValueError, match="state"):
        rule.grad(net_m, params_m, (), x, y)
    with pytest.raises(ValueError, match="damped"):
        dp.contrastive_grad(net_m, params_m, x, y, rule)
    # a hand-built Network: dense maps need no input_shape, conv maps do
    dense = dp.Network([dp.Dense(4, 3, rngs=nnx.Rngs(0)), dp.Dense(3, 2, rngs=nnx.Rngs(0))])
    net_d, params_d = dp.split(dense)
    assert net_d.input_shape is None and set(rule.init(net_d, params_d).vectors) == {1}
    convs = dp.Network(
        [dp.Conv(1, 2, rngs=nnx.Rngs(0)), dp.Conv(2, 2, pool_input=True, rngs=nnx.Rngs(0))]
    )
    net_c, params_c = dp.split(convs)
    with pytest.raises(ValueError, match="input_shape"):
        rule.init(net_c, params_c)
    net_c, params_c = dp.split(dp.Network(list(convs.layers), input_shape=(6, 6, 1)))
    assert net_c.map_input_shapes(params_c) == ((6, 6, 1), (3, 3, 2))
    # LayeredNet stays hashable and constructible as before; merge keeps the shape
    assert dp.LayeredNet(net.graphdefs, net.activation).input_shape is None
    assert hash(net) == hash(dp.LayeredNet(net.graphdefs, net.activation, (8, 8, 2)))
    assert dp.split(dp.merge(net, params))[0] == net


# ------------------------------------------------------------------ Kolen–Pollack DP


@pytest.mark.parametrize(
    ("kind", "variant", "passes"),
    [("mlp", "dp", 0), ("mlp", "dp_top", 2), ("cnn", "dp", 2), ("cnn", "dp_top", 0)],
)
def test_kp_with_b_equal_to_w_is_dp(kind, variant, passes):
    """Oracle: plain DP. With B_k = W_k, KP's feedback (the vjp of map k with kernel B_k at
    s̄_k) is DP's J_kᵀ δ_{k+1}, for dense, conv and pooled maps alike, so the layers' gradient
    is DP's; B_k's gradient is W_k's kernel gradient. Catches a KP feedback taken at another
    point (e.g. at s⁺ in the passes: it differs through a max-pool), a missing or zero B_k
    gradient, or a gradient tree that is not params' structure."""
    with jax.enable_x64(True):
        net, params, x, y = _net(kind)
        plain = rules.dual_prop(variant, 0.3, 0.5, passes=passes, dtype="float64")
        kp = plain.replace(feedback="kolen_pollack")
        kp_params = kp.init_params(net, params, jax.random.key(3))
        kp_params["feedback"] = {
            k: {"kernel": params["layers"][k]["kernel"]} for k in kp_params["feedback"]
        }
        g_plain, aux_plain, _ = jax.jit(lambda p: plain.grad(net, p, (), x, y))(params)
        g_kp, aux_kp, _ = jax.jit(lambda p: kp.grad(net, p, (), x, y))(kp_params)
        assert jax.tree.structure(g_kp) == jax.tree.structure(kp_params)
        assert _max_rel(g_kp["layers"], g_plain["layers"]) < EXACT
        np.testing.assert_array_equal(aux_kp.logits, aux_plain.logits)
        for k in range(1, net.num_maps):
            np.testing.assert_array_equal(
                g_kp["feedback"][k]["kernel"], g_kp["layers"][k]["kernel"]
            )
        angles = kp.metrics(net, kp_params, ())
        assert set(angles) == {f"kp_angle/{k}" for k in range(1, net.num_maps)}
        assert max(float(a) for a in angles.values()) < 1e-5


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_damped_kp_is_a_combination_of_parts(kind):
    """Damped Kolen–Pollack DP is the damped update with KP's feedback part, no branch of its
    own. Oracles: with B_k = W_k it is damped DP (same L_k, same dyads, same gradient), and
    with B_k ≠ W_k it is neither plain KP nor damped DP. Kernels are scaled so that every
    L_k > 0: a combination that dropped the damping (or the B_k) would show."""
    with jax.enable_x64(True):
        net, params, x, y = _net(kind)
        params = _scale_kernels(params, {k: 3.0 for k in range(1, net.num_maps)})
        damped = rules.damped_dual_prop("dp_top", alpha=0.3, beta=0.5, passes=2,
                                        dtype="float64")  # fmt: skip
        both = damped.replace(feedback="kolen_pollack")
        state = damped.init(net, params)
        gammas = damped.metrics(net, params, state)
        assert min(float(g) for g in gammas.values()) > 1.2  # every L_k > 0
        kp_params = both.init_params(net, params, jax.random.key(3))
        same = {**kp_params, "feedback": {
            k: {"kernel": params["layers"][k]["kernel"]} for k in kp_params["feedback"]}}
        g_damped, _, s_damped = _jit_grad(net, x, y)(damped, params, state)
        g_both, _, s_both = _jit_grad(net, x, y)(both, same, state)
        assert _max_rel(g_both["layers"], g_damped["layers"]) < EXACT
        assert _max_rel(s_both.vectors, s_damped.vectors) < EXACT
        g_b, _, _ = _jit_grad(net, x, y)(both, kp_params, state)
        g_kp, _, _ = _jit_grad(net, x, y)(both.replace(damped=False), kp_params, ())
        assert _max_rel(g_b["layers"], g_damped["layers"]) > 1e-3
        assert _max_rel(g_b["layers"], g_kp["layers"]) > 1e-3


@pytest.mark.parametrize("variant", ["dp", "dp_top"])
def test_kp_feedback_is_b_transpose_delta(variant):
    """Oracle: the closed-form updates in numpy with fb_k = δ_{k+1} B_kᵀ (dense KP), one sweep
    and two passes, and the Hebbian gradient -(1/β) s̄ᵀδ / B for both W_k and B_k. Catches a KP
    rule that still feeds back through W_k, or uses B_k in place of W_k in the forward map."""
    with jax.enable_x64(True):
        net, params = _mlp()
        x, y = _data((B, 6))
        for passes in (0, 2):
            rule = rules.kolen_pollack(
                variant, alpha=0.3, beta=0.5, passes=passes, schedule="bottom_up", dtype="float64"
            )
            kp_params = rule.init_params(net, params, jax.random.key(4))
            Bs = {k: v["kernel"] for k, v in kp_params["feedback"].items()}
            assert set(Bs) == {1, 2}
            sp, sm, g = _np_dyads(params, x, y, variant, 0.3, 0.5, passes=passes, feedback=Bs)
            with pytest.raises(ValueError, match="kolen_pollack feedback"):
                dp.infer_dyads(net, kp_params, x, y, rule)  # would run plain DP: refused
            dy = rule.infer(net, kp_params, (), x, y)
            for k in range(1, 4):
                assert _rel(dy.s_plus[k], sp[k]) < EXACT and _rel(dy.s_minus[k], sm[k]) < EXACT
            grads, _, _ = rule.grad(net, kp_params, (), x, y)
            assert _max_rel(grads["layers"], g) < EXACT
            for k in (1, 2):
                np.testing.assert_allclose(
                    grads["feedback"][k]["kernel"], g[k]["kernel"], rtol=1e-10
                )
            # and it is not DP: the random B_k's feedback is far from W_kᵀ's
            sp_dp, _, _ = _np_dyads(params, x, y, variant, 0.3, 0.5, passes=passes)
            assert _rel(dy.s_plus[1], sp_dp[1]) > 1e-2


def test_kp_init_params_and_errors():
    """Oracle: the initializer family (He normal for hidden maps, LeCun normal for the output
    map: std √2/√fan_in and 1/√fan_in), independence from W_k, and a clear error without
    B_k."""
    net, params = dp.split(dp.mlp((400, 300, 200, 100), rngs=nnx.Rngs(0)))
    rule = rules.kolen_pollack("dp")
    kp_params = rule.init_params(net, params, jax.random.key(0))
    assert set(kp_params) == {"layers", "feedback"} and set(kp_params["feedback"]) == {1, 2}
    assert kp_params["layers"] is params["layers"]
    for k, fan_in, gain in ((1, 300, 2.0), (2, 200, 1.0)):
        B_k, W_k = kp_params["feedback"][k]["kernel"], params["layers"][k]["kernel"]
        assert B_k.shape == W_k.shape and B_k.dtype == W_k.dtype
        assert abs(float(jnp.std(B_k)) / np.sqrt(gain / fan_in) - 1) < 0.05
        assert abs(float(rule.metrics(net, kp_params, ())[f"kp_angle/{k}"]) - 90) < 2
    x, y = _data((B, 400))
    with pytest.raises(ValueError, match="init_params"):
        rule.grad(net, params, (), x.astype(jnp.float32), y)


def test_kp_angle_to_w_shrinks_during_training(fmnist_raw):
    """Oracle: the Kolen–Pollack argument, with optax driven directly. B_k and W_k get the same
    gradient and each its own weight decay, so an SGD step (u = -η(g + λθ)) maps
    B - W ↦ (1 - ηλ)(B - W): after n steps B - W = (1 - ηλ)ⁿ (B₀ - W₀) exactly up to rounding,
    while W grows by the learned updates; the angle between B_k and W_k shrinks. 200 steps of
    DP⊤-KP on 2000 Fashion-MNIST images, 784-64-32-10 (float32). Catches a missing or wrong
    B_k gradient (the angle stays ~90°: B only decays) and B_k updated with another gradient."""
    xtr, ytr, _, _ = fmnist_raw
    x = jnp.asarray(xtr[:2000].reshape(2000, -1) / 255.0, jnp.float32)
    y = jnp.asarray(ytr[:2000])
    net, params = dp.split(dp.mlp((784, 64, 32, 10), rngs=nnx.Rngs(0)))
    rule = rules.kolen_pollack("dp_top", alpha=0.5, beta=0.01)
    params = rule.init_params(net, params, jax.random.key(1))
    lr, wd, steps, batch = 0.1, 0.1, 200, 50
    opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        g, aux, _ = rule.grad(net, params, (), xb, yb)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux.loss

    start = {k: float(v) for k, v in rule.metrics(net, params, ()).items()}
    gap0 = {k: params["feedback"][k]["kernel"] - params["layers"][k]["kernel"] for k in (1, 2)}
    losses = []
    for i in range(steps):
        j = (i * batch) % len(x)
        params, opt_state, loss = step(params, opt_state, x[j : j + batch], y[j : j + batch])
        losses.append(float(loss))
    end = {k: float(v) for k, v in rule.metrics(net, params, ()).items()}
    print("kp angles", start, "->", end, "loss", losses[0], "->", np.mean(losses[-10:]))
    for k in (1, 2):
        gap = params["feedback"][k]["kernel"] - params["layers"][k]["kernel"]
        assert _rel(gap, (1 - lr * wd) ** steps * gap0[k]) < 1e-3
        assert start[f"kp_angle/{k}"] > 80 and end[f"kp_angle/{k}"] < start[f"kp_angle/{k}"] - 30
    assert np.mean(losses[-10:]) < 0.6 * losses[0]  # and the network learns


# ------------------------------------------------------------------ exact squared-error output


@pytest.mark.parametrize(("variant", "passes"), [("dp", 0), ("dp_top", 2)])
def test_exact_output_is_the_stationary_point_of_the_output_objectives(variant, passes):
    """Oracle: ``jax.grad`` of the output objectives, and the numpy closed form. s⁺_L
    minimises ½‖s - a_L‖² + c⁺β·½‖s - t‖² and s⁻_L is stationary for
    ½‖s - a_L‖² - c⁻β·½‖s - t‖², with a_L = W_{L-1}(s̄_{L-1}) the current output input (c⁺, c⁻
    = α, 1-α for DP, 1-α, α for DP⊤; α = 0.3 tells them apart). Catches c⁺ and c⁻ swapped,
    the sign of the s⁻ term, a_L held at the forward ŷ in the passes, or the linearised nudge."""
    with jax.enable_x64(True):
        net, params = _mlp()
        x, y = _data((B, 6))
        alpha, beta = 0.3, 0.5
        rule = rules.dual_prop(
            variant,
            alpha,
            beta,
            loss="squared_error",
            output="exact",
            passes=passes,
            schedule="bottom_up",
            dtype="float64",
        )
        dy = dp.infer_dyads(net, params, x, y, rule)
        t = jax.nn.one_hot(y, CLASSES, dtype=jnp.float64)
        L = net.num_maps
        # a_L: after the sweep, the forward prediction ŷ = W_{L-1}(s_{L-1}) (the forward
        # state, not the swept one); after a pass, W_{L-1}(s̄_{L-1}) at the current dyads
        if passes:
            s_prev = alpha * dy.s_plus[L - 1] + (1 - alpha) * dy.s_minus[L - 1]
        else:
            s_prev = x
            for k in range(L - 1):
                s_prev = jax.nn.relu(
                    s_prev @ params["layers"][k]["kernel"] + params["layers"][k]["bias"]
                )
        a_L = s_prev @ params["layers"][L - 1]["kernel"] + params["layers"][L - 1]["bias"]
        c_plus, c_minus = (alpha, 1 - alpha) if variant == "dp" else (1 - alpha, alpha)

        def objective(s, c):  # c = +c⁺β for s⁺, -c⁻β for s⁻
            return 0.5 * jnp.sum((s - a_L) ** 2) + c * 0.5 * jnp.sum((s - t) ** 2)

        for s, c in ((dy.s_plus[L], c_plus * beta), (dy.s_minus[L], -c_minus * beta)):
            residual = jax.grad(objective)(s, c)
            assert float(jnp.abs(residual).max()) < 1e-13
        # the whole inference against the numpy closed form
        sp, sm, g = _np_dyads(
            params, x, y, variant, alpha, beta, passes=passes, output="exact", loss="squared_error"
        )
        for k in range(1, L + 1):
            assert _rel(dy.s_plus[k], sp[k]) < EXACT and _rel(dy.s_minus[k], sm[k]) < EXACT
        assert _max_rel(rule.grad(net, params, (), x, y)[0]["layers"], g) < EXACT
        # not the linearised nudge: at β = 0.5 the two outputs differ visibly
        lin = dp.infer_dyads(net, params, x, y, rule.replace(output="linearised"))
        assert _rel(lin.s_minus[L], dy.s_minus[L]) > 1e-3


@pytest.mark.parametrize("variant", ["dp", "dp_top"])
def test_exact_output_tends_to_bp_as_beta_tends_to_zero(variant):
    """Oracle: the BP gradient of the squared error. δ_L = s⁺ - s⁻ = -βg/(1 - β²/4) at α = ½
    (exactly -βg (1 + O(β)) otherwise), so the gradient tends to BP: per-leaf 1 - cos < 1e-10
    at β = 1e-3 (α = ½), and the norm error shrinks ~100x per 10x smaller β (second order).
    Catches an exact output that does not reduce to the linearised nudge (e.g. t and a swapped,
    or 1 ± c β where c β was meant)."""
    with jax.enable_x64(True):
        net, params = _mlp()
        x, y = _data((B, 6))
        bp, _ = dp.bp_grad(net, params, x, y, rules.backprop("squared_error", "float64"))
        errors = []
        for beta in (1e-1, 1e-2, 1e-3):
            rule = rules.dual_prop(
                variant, 0.5, beta, loss="squared_error", output="exact", dtype="float64"
            )
            g, _, _ = rule.grad(net, params, (), x, y)
            cos = dp.alignment(g, bp)["cosine"]
            errors.append(_max_rel(g, bp))
            if beta == 1e-3:
                assert min(float(c) for c in cos.values()) > 1 - 1e-10
        print("exact output, relative error to BP:", errors)
        assert errors[2] < 1e-5 and errors[1] < errors[0] / 30 and errors[2] < errors[1] / 30
