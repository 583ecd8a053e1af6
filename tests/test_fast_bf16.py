"""Fast path (custom-VJP dual activation) against the dyad sweep; bfloat16 compute against BP."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules
from dualprop_jax.training.parallel import make_mesh
from dualprop_jax.training.steps import TrainState, make_train_step

# ---------------------------------------------------------------- the fast path


@pytest.mark.parametrize("beta", [0.5, 0.01])
def test_dual_activation_backward_is_the_finite_difference_with_the_given_beta(beta):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        a, c = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
        out, vjp = jax.vjp(lambda a_: dp.dual_activation(jnp.tanh, beta, a_), jnp.asarray(a))
        np.testing.assert_allclose(out, np.tanh(a), rtol=1e-14)
        expected = (np.tanh(a + beta * c / 2) - np.tanh(a - beta * c / 2)) / beta
        np.testing.assert_allclose(vjp(jnp.asarray(c))[0], expected, rtol=1e-12, atol=1e-14)


def _tanh_mlp():
    model = dp.mlp((12, 10, 8, 4), activation="tanh", rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    net, params = dp.split(model)
    x = jax.random.normal(jax.random.key(1), (9, 12), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (9,), 0, 4)
    return net, params, x, y


def _dist(a, b) -> float:
    sq = jax.tree.map(lambda u, v: jnp.sum((u - v) ** 2), a, b)
    return float(jnp.sqrt(sum(jax.tree.leaves(sq))))


def test_fast_path_agrees_with_the_explicit_dyad_sweep_to_second_order_in_beta():
    """Same δ_k; presynaptic f(a) instead of s̄ = f(a) + O(β²): the error shrinks ~100x per 10x."""
    with jax.enable_x64(True):
        net, params, x, y = _tanh_mlp()

        def err(beta):
            sweep = dp.rules.dual_prop("dp_top", alpha=0.5, beta=beta, dtype="float64")
            g_sweep, _ = dp.contrastive_grad(net, params, x, y, sweep)
            g_fast, _ = dp.fast_grad(net, params, x, y, sweep)
            return _dist(g_fast, g_sweep) / _dist(g_sweep, jax.tree.map(jnp.zeros_like, g_sweep))

        e1, e2 = err(0.2), err(0.02)
        assert e1 < 1e-2, e1
        assert 60 < e1 / e2 < 140, (e1, e2)


def test_fast_config_switch_reaches_the_fast_path_and_reports_the_bp_loss():
    with jax.enable_x64(True):
        net, params, x, y = _tanh_mlp()
        cfg = dp.rules.dual_prop(beta=0.05, fast=True, dtype="float64")
        g_cfg, aux, _ = cfg.grad(net, params, (), x, y)
        g_fast, _ = dp.fast_grad(net, params, x, y, cfg)
        chex.assert_trees_all_close(g_cfg, g_fast, rtol=1e-13, atol=1e-15)
        _, aux_bp = dp.bp_grad(net, params, x, y, cfg)
        np.testing.assert_allclose(aux.loss, aux_bp.loss, rtol=1e-13)
        np.testing.assert_allclose(aux.logits, aux_bp.logits, rtol=1e-13)


def test_fast_path_tends_to_bp_as_beta_shrinks():
    with jax.enable_x64(True):
        net, params, x, y = _tanh_mlp()
        cfg = dp.rules.dual_prop(beta=1e-4, fast=True, dtype="float64")
        g_fast, _ = dp.fast_grad(net, params, x, y, cfg)
        g_bp, _ = dp.bp_grad(net, params, x, y, cfg)
        for name, c in dp.alignment(g_fast, g_bp)["cosine"].items():
            assert float(c) > 1 - 1e-8, name


# ---------------------------------------------------------------- bfloat16 compute


@pytest.fixture(scope="module")
def fmnist_batch(fmnist_raw):
    xtr, ytr, _, _ = fmnist_raw
    x = xtr[:256].astype(np.float32) / 255.0
    x = (x - x.mean()) / x.std()
    return jnp.asarray(x), jnp.asarray(ytr[:256])


def _nets():
    return {
        "mlp": dp.mlp((784, 256, 256, 10), rngs=nnx.Rngs(0)),
        "cnn": dp.cnn((28, 28, 1), channels=(16, 32), dense=(128,), rngs=nnx.Rngs(0)),
    }


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("fast", [False, True])
def test_bf16_dp_top_gradient_stays_aligned_with_float32_bp(fmnist_batch, kind, fast):
    x, y = fmnist_batch
    net, params = dp.split(_nets()[kind])
    g_bp32, aux_bp32 = dp.bp_grad(net, params, x, y, dp.rules.dual_prop())
    cfg = dp.rules.dual_prop(variant="dp_top", alpha=0.5, beta=0.01, dtype="bfloat16", fast=fast)
    g16, aux16 = (dp.fast_grad if fast else dp.contrastive_grad)(net, params, x, y, cfg)
    # parameters stay float32: the gradient tree is float32, the loss is computed in float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    assert aux16.loss.dtype == jnp.float32
    assert aux16.logits.dtype == jnp.bfloat16  # the layer maps did compute in bfloat16
    np.testing.assert_allclose(aux16.loss, aux_bp32.loss, rtol=2e-2)
    al = dp.alignment(g16, g_bp32)
    assert len(al["cosine"]) == 2 * net.num_maps
    for name, c in al["cosine"].items():
        assert float(c) >= 0.99, (name, float(c))
        assert abs(float(al["norm_ratio"][name]) - 1) < 0.05, name


def test_bf16_train_step_keeps_params_grads_and_optimizer_state_float32(fmnist_batch):
    x, y = fmnist_batch
    net, params = dp.split(_nets()["mlp"])
    opt = optax.sgd(0.05, momentum=0.9)
    mesh = make_mesh(1)
    cfg = dp.rules.dual_prop(beta=0.01, dtype="bfloat16")
    for rule in (rules.dual_prop(beta=0.01, dtype="bfloat16"), rules.backprop(dtype="bfloat16")):
        step = make_train_step(net, rule, opt, mesh=mesh, donate=False)
        state = TrainState.create(net, params, rule, opt, mesh)
        new, m = step(state, x, y)
        p1, s1 = new.params, new.opt_state
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(p1)), rule.name
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(s1)), rule.name
        assert m["loss"].dtype == jnp.float32
        # the update is -lr * grad of the float32 gradient tree (first momentum step)
        grad_fn = dp.bp_grad if rule.name == "bp" else dp.contrastive_grad
        g = grad_fn(net, params, x, y, cfg)[0]
        expected = jax.tree.map(lambda p, g_: p - 0.05 * g_, params, g)
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
