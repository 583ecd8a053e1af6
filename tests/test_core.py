"""Core learning rule: DP/DP⊤ gradients against BP, closed forms, vjp feedback, jit behaviour."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _oracles import assert_each_leaf_near, np_dense_dyads
from flax import nnx

import dualprop_jax as dp
from dualprop_jax.core.nodes import transpose_feedback


def _model(kind, dtype):
    rngs = nnx.Rngs(0)
    if kind == "mlp":
        return dp.mlp((20, 16, 12, 5), rngs=rngs, param_dtype=dtype), (6, 20)
    # conv+pool, conv+pool, dense, dense: pooling feeds both a conv and the first dense map
    return dp.cnn(
        (8, 8, 2), channels=(4, 6), dense=(10,), num_classes=5, rngs=rngs, param_dtype=dtype
    ), (6, 8, 8, 2)


def _data(x_shape, dtype):
    x = jax.random.normal(jax.random.key(1), x_shape, dtype)
    y = jax.random.randint(jax.random.key(2), (x_shape[0],), 0, 5)
    return x, y


# Bounds from the math, with the measured worst case (float64, over MLP and CNN with max-pool,
# DP and DP⊤, both losses, passes 0/1/3) and a margin of 20-100x:
# * α = ½: the error is O(β²) in general, and for a piecewise-linear f (ReLU here) it vanishes
#   unless a pre-activation crosses the kink within ±β: what is left is rounding, δ = O(β)
#   loses ~ε/β ≈ 2e-13 relative. Measured worst: 1 - cos = 2.2e-16, |‖g‖/‖g_bp‖ - 1| = 1.4e-12.
# * α ∈ {0, 1}: the error is O(β): |ratio - 1| ≈ Cβ with C ≤ 0.36 (passes 0) and C ≤ 4.7
#   (extra passes, where s̄ = s± moves the bottom-up inputs by O(β)); 1 - cos ≈ (C'β)². At
#   β = 1e-6 the measured worst is |ratio - 1| = 4.7e-6, 1 - cos = 2.7e-12. (At β = 1e-4 the
#   O(β) bias with passes is already 4.7e-4, too close to the 1e-3 a 0.1% error makes.)
# Either bound fails for a 0.1% error in one leaf (|ratio - 1| = 1e-3): checked below.
# Extra passes run with one loss each (every static setting is one more compilation).
_PASSES = [(0, "alternating", loss) for loss in ("softmax_ce", "squared_error")] + [
    (1, "bottom_up", "squared_error"),
    (3, "alternating", "softmax_ce"),
]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("variant", ["dp", "dp_top"])
@pytest.mark.parametrize(("passes", "schedule", "loss"), _PASSES)
@pytest.mark.parametrize(
    ("alpha", "beta", "max_cos_err", "max_ratio_err"),
    [(0.5, 1e-3, 1e-14, 1e-10), (0.0, 1e-6, 1e-10, 1e-4), (1.0, 1e-6, 1e-10, 1e-4)],
)
def test_contrastive_gradient_tends_to_bp(
    kind, variant, loss, passes, schedule, alpha, beta, max_cos_err, max_ratio_err
):
    with jax.enable_x64(True):
        model, x_shape = _model(kind, jnp.float64)
        net, params = dp.split(model)
        x, y = _data(x_shape, jnp.float64)
        cfg = dp.rules.dual_prop(
            variant=variant,
            alpha=alpha,
            beta=beta,
            loss=loss,
            passes=passes,
            schedule=schedule,
            dtype="float64",
        )
        g_dp, _ = dp.contrastive_grad(net, params, x, y, cfg)
        g_bp, _ = dp.bp_grad(net, params, x, y, cfg)
        assert jax.tree.structure(g_dp) == jax.tree.structure(params)
        if passes == 0:  # the BP side does not depend on the passes: check it once
            # oracle for the BP side: raw jax.grad through the NNX module itself
            graphdef, state = nnx.split(model)

            def raw_loss(st):
                y_hat = nnx.merge(graphdef, st)(x)
                t = jax.nn.one_hot(y, 5, dtype=jnp.float64)
                if loss == "softmax_ce":
                    return jnp.mean(jax.nn.logsumexp(y_hat, -1) - jnp.sum(t * y_hat, -1))
                return jnp.mean(0.5 * jnp.sum((y_hat - t) ** 2, -1))

            g_raw = nnx.to_pure_dict(jax.grad(raw_loss)(state))
            chex.assert_trees_all_close(g_bp, g_raw, rtol=1e-10, atol=1e-12)
        assert len(jax.tree.leaves(g_dp)) == 2 * net.num_maps  # kernel and bias of every layer
        assert_each_leaf_near(g_dp, g_bp, max_cos_err, max_ratio_err)


def test_gradient_error_is_second_order_in_beta_at_half_and_first_order_otherwise():
    """α = ½: error ∝ β² (shrinks ~100x for 10x smaller β); DP at α = 0: error ∝ β (~10x)."""
    with jax.enable_x64(True):
        model = dp.mlp(
            (20, 16, 12, 5), activation="tanh", rngs=nnx.Rngs(0), param_dtype=jnp.float64
        )
        net, params = dp.split(model)
        x, y = _data((6, 20), jnp.float64)

        def err(alpha, beta):
            cfg = dp.rules.dual_prop(variant="dp", alpha=alpha, beta=beta, dtype="float64")
            g, _ = dp.contrastive_grad(net, params, x, y, cfg)
            g_bp, _ = dp.bp_grad(net, params, x, y, cfg)
            sq = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), g, g_bp)
            return float(jnp.sqrt(sum(jax.tree.leaves(sq))))

        half = err(0.5, 0.1) / err(0.5, 0.01)
        zero = err(0.0, 0.1) / err(0.0, 0.01)
        assert 60 < half < 140, half
        assert 6 < zero < 14, zero


# ---------------------------------------------------------------- closed form of docs/method.md


@pytest.mark.parametrize("variant", ["dp", "dp_top"])
@pytest.mark.parametrize(
    ("passes", "schedule"), [(0, "alternating"), (2, "alternating"), (3, "bottom_up")]
)
def test_dyads_equal_closed_form_dense(variant, passes, schedule):
    with jax.enable_x64(True):
        model = dp.mlp((4, 5, 3, 3), activation="tanh", rngs=nnx.Rngs(3), param_dtype=jnp.float64)
        net, params = dp.split(model)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(7, 4))
        y = rng.integers(0, 3, size=7)
        alpha, beta = 0.2, 0.3  # asymmetric α and a large β: DP and DP⊤ differ visibly
        cfg = dp.rules.dual_prop(
            variant=variant,
            alpha=alpha,
            beta=beta,
            dtype="float64",
            passes=passes,
            schedule=schedule,
        )
        dy = dp.infer_dyads(net, params, jnp.asarray(x), jnp.asarray(y), cfg)
        Ws = [np.asarray(params["layers"][k]["kernel"]) for k in range(3)]
        bs = [np.asarray(params["layers"][k]["bias"]) for k in range(3)]
        sp, sm = np_dense_dyads(
            Ws, bs, x, np.eye(3)[y], variant, alpha, beta, np.tanh, passes, schedule
        )
        for k in range(4):
            np.testing.assert_allclose(dy.s_plus[k], sp[k], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dy.s_minus[k], sm[k], rtol=1e-12, atol=1e-12)
        # the Hebbian update: ∇W_{k-1} = -(1/β) s̄_{k-1}ᵀ δ_k / B,  ∇b_{k-1} = -(1/β) mean δ_k
        g, _ = dp.contrastive_grad(net, params, jnp.asarray(x), jnp.asarray(y), cfg)
        for k in range(1, 4):
            bar = alpha * sp[k - 1] + (1 - alpha) * sm[k - 1]
            d = sp[k] - sm[k]
            np.testing.assert_allclose(
                g["layers"][k - 1]["kernel"], -bar.T @ d / (beta * 7), rtol=1e-10, atol=1e-12
            )
            np.testing.assert_allclose(
                g["layers"][k - 1]["bias"], -d.mean(0) / beta, rtol=1e-10, atol=1e-12
            )
        # the helpers read the same activity and error
        np.testing.assert_allclose(dp.s_bar(dy, alpha)[1], alpha * sp[1] + (1 - alpha) * sm[1])
        np.testing.assert_allclose(dp.delta(dy)[2], sp[2] - sm[2])


def test_dp_and_dp_top_differ_for_asymmetric_alpha_and_coincide_at_half():
    model = dp.mlp((4, 5, 3), rngs=nnx.Rngs(0))
    net, params = dp.split(model)
    x, y = jax.random.normal(jax.random.key(0), (5, 4)), jnp.arange(5) % 3

    def dyads(variant, alpha):
        return dp.infer_dyads(
            net, params, x, y, dp.rules.dual_prop(variant=variant, alpha=alpha, beta=0.5)
        )

    a, b = dyads("dp", 0.2), dyads("dp_top", 0.2)
    assert float(jnp.abs(a.s_plus[2] - b.s_plus[2]).max()) > 1e-3
    chex.assert_trees_all_close(dyads("dp", 0.5), dyads("dp_top", 0.5))


# ---------------------------------------------------------------- feedback through jax.vjp


def test_feedback_dense_is_w_transpose_delta():
    model = dp.mlp((6, 4, 3), rngs=nnx.Rngs(0))
    net, params = dp.split(model)
    s_bar_1 = jax.random.normal(jax.random.key(0), (5, 4))
    delta_2 = jax.random.normal(jax.random.key(1), (5, 3))
    fb = transpose_feedback(net, params, 1, s_bar_1, delta_2)
    W = np.asarray(params["layers"][1]["kernel"])  # (in, out): a = s W + b
    np.testing.assert_allclose(fb, np.asarray(delta_2) @ W.T, rtol=1e-5, atol=1e-6)


def _np_conv_transpose_same(d, K):
    """Adjoint of a stride-1 'SAME' 3x3 cross-correlation, written as explicit loops."""
    n, h, w, _ = d.shape
    kh, kw, cin, _ = K.shape
    ph, pw = kh // 2, kw // 2
    out = np.zeros((n, h, w, cin))
    for i in range(h):
        for j in range(w):
            for di in range(kh):
                for dj in range(kw):
                    oi, oj = i - di + ph, j - dj + pw  # output position that read input (i, j)
                    if 0 <= oi < h and 0 <= oj < w:
                        out[:, i, j, :] += d[:, oi, oj, :] @ K[di, dj].T
    return out


def _np_pool_routing(s, c):
    """vjp of 2x2/2 max-pool at s: each window's cotangent goes to its argmax."""
    out = np.zeros_like(s)
    n, h, w, ch = s.shape
    for b in range(n):
        for i in range(h // 2):
            for j in range(w // 2):
                for q in range(ch):
                    win = s[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, q]
                    di, dj = np.unravel_index(np.argmax(win), (2, 2))
                    out[b, 2 * i + di, 2 * j + dj, q] = c[b, i, j, q]
    return out


@pytest.mark.parametrize("pool", [False, True])
def test_feedback_conv_is_transposed_convolution(pool):
    with jax.enable_x64(True):
        model = dp.cnn(
            (8, 8, 2),
            channels=(3, 4),
            pool=pool,
            dense=(),
            num_classes=2,
            rngs=nnx.Rngs(0),
            param_dtype=jnp.float64,
        )
        net, params = dp.split(model)
        k = 1  # map 1: conv 3 -> 4 channels (its input is pooled when pool=True)
        s_bar_1 = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
        out_hw = 4 if pool else 8
        d = np.random.default_rng(1).normal(size=(2, out_hw, out_hw, 4))
        fb = transpose_feedback(net, params, k, jnp.asarray(s_bar_1), jnp.asarray(d))
        K = np.asarray(params["layers"][k]["kernel"])
        expected = _np_conv_transpose_same(d, K)
        if pool:
            expected = _np_pool_routing(s_bar_1, expected)
        np.testing.assert_allclose(fb, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- jit behaviour


def test_jit_and_no_jit_agree_including_extra_passes():
    model = dp.cnn((8, 8, 1), channels=(4,), dense=(8,), num_classes=3, rngs=nnx.Rngs(0))
    net, params = dp.split(model)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    y = jnp.array([0, 1, 2, 1])
    for cfg in (
        dp.rules.dual_prop(),
        dp.rules.dual_prop(variant="dp", alpha=0.3, passes=2),
        dp.rules.dual_prop(passes=2, schedule="bottom_up"),
    ):
        g_jit, aux_jit = dp.contrastive_grad(net, params, x, y, cfg)
        with jax.disable_jit():
            g_eager, aux_eager = dp.contrastive_grad(net, params, x, y, cfg)
        chex.assert_trees_all_close(g_jit, g_eager, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(aux_jit.loss, aux_eager.loss, rtol=1e-6)


def test_second_call_with_new_data_does_not_retrace():
    model = dp.mlp((10, 8, 3), rngs=nnx.Rngs(0))
    net, params = dp.split(model)
    opt = optax.sgd(0.1)

    def step(params, opt_state, x, y):
        g, aux = dp.contrastive_grad(net, params, x, y, dp.rules.dual_prop(passes=1))
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux.loss

    step = jax.jit(chex.assert_max_traces(step, n=1))
    opt_state = opt.init(params)
    for seed in range(3):
        x = jax.random.normal(jax.random.key(seed), (4, 10))
        y = jax.random.randint(jax.random.key(seed + 10), (4,), 0, 3)
        params, opt_state, _ = step(params, opt_state, x, y)
    # the library's own jitted function: an equal (new) config and new data hit the cache
    x = jax.random.normal(jax.random.key(5), (4, 10))
    y = jnp.array([0, 1, 2, 0])
    dp.contrastive_grad(net, params, x, y, dp.rules.dual_prop(beta=0.02))
    size = dp.contrastive_grad._cache_size()
    dp.contrastive_grad(net, params, x + 1, (y + 1) % 3, dp.rules.dual_prop(beta=0.02))
    assert dp.contrastive_grad._cache_size() == size


# ---------------------------------------------------------------- it learns


def test_optax_sgd_with_dp_top_halves_the_loss_of_an_mlp_on_a_fixed_batch(fmnist_raw):
    xtr, ytr, _, _ = fmnist_raw
    x = jnp.asarray(xtr[:256], jnp.float32) / 255.0
    x = (x - x.mean()) / x.std()
    y = jnp.asarray(ytr[:256])
    net, params = dp.split(dp.mlp((784, 128, 10), rngs=nnx.Rngs(0)))
    cfg = dp.rules.dual_prop(variant="dp_top", alpha=0.5, beta=0.01)
    opt = optax.sgd(0.05)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state):
        g, aux = dp.contrastive_grad(net, params, x, y, cfg)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux.loss

    losses = []
    for _ in range(100):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] <= 0.5 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("variant", ["dp", "dp_top"])
def test_contrastive_grad_is_the_gradient_of_the_local_objective_at_fixed_dyads(kind, variant):
    # oracle: plain jax.grad of J(θ) = (1/β) Σ ⟨-δ_k, W_{k-1}(θ, s̄_{k-1})⟩ / B, dyads held fixed
    with jax.enable_x64(True):
        model, x_shape = _model(kind, jnp.float64)
        net, params = dp.split(model)
        x, y = _data(x_shape, jnp.float64)
        cfg = dp.rules.dual_prop(variant=variant, alpha=0.3, beta=0.05, dtype="float64", passes=1)
        dyads = dp.infer_dyads(net, params, x, y, cfg)
        want = jax.grad(dp.local_objective, argnums=1)(net, params, dyads, cfg)
        got, _ = dp.contrastive_grad(net, params, x, y, cfg)
        chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)  # structure too


def test_dense_contrastive_grad_is_the_hebbian_outer_product():
    # closed form of docs/method.md: ∇W_{k-1} = -(1/(βB)) s̄_{k-1}ᵀ δ_k, ∇b_{k-1} = -(1/(βB)) Σ δ_k
    with jax.enable_x64(True):
        model, x_shape = _model("mlp", jnp.float64)
        net, params = dp.split(model)
        x, y = _data(x_shape, jnp.float64)
        cfg = dp.rules.dual_prop(variant="dp_top", alpha=0.7, beta=0.02, dtype="float64")
        dyads = dp.infer_dyads(net, params, x, y, cfg)
        got, _ = dp.contrastive_grad(net, params, x, y, cfg)
        sp = [np.asarray(v) for v in dyads.s_plus]
        sm = [np.asarray(v) for v in dyads.s_minus]
        scale = -1.0 / (cfg.beta * x_shape[0])
        for k in range(1, net.num_maps + 1):
            s_bar = 0.7 * sp[k - 1] + 0.3 * sm[k - 1]
            d = sp[k] - sm[k]
            g = net.layer_params(got, k - 1)
            np.testing.assert_allclose(g["kernel"], scale * s_bar.T @ d, rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(g["bias"], scale * d.sum(0), rtol=1e-10, atol=1e-13)
