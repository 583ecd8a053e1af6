"""Learning rules as values: one compilation per static structure, the interface every rule
shares (state included), and the hand-written data-parallel recipes over a rule's gradient."""

from __future__ import annotations

import collections
import pathlib
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _oracles import np_dense_dyads, np_hebbian_grads
from _workers import run_cpu_worker
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules
from dualprop_jax.training.steps import TrainState

HERE = pathlib.Path(__file__).resolve().parent


def _problem(seed: int = 0):
    net, params = dp.split(dp.mlp((12, 16, 16, 5), rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((24, 12)), jnp.float32)
    y = jnp.asarray(np.arange(24) % 5, jnp.int32)
    return net, params, x, y


def _rel_err(a, b) -> float:
    """Largest per-leaf relative error ‖a - b‖ / ‖b‖ over two gradient trees."""
    errs = jax.tree.map(lambda u, v: float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v)), a, b)
    return max(jax.tree.leaves(errs))


def test_alpha_beta_sweep_traces_once_per_static_structure():
    """A β × α sweep through one jitted function: one trace per variant, none per value.

    Oracle for the values: the same rule with α and β as Python constants, run eagerly. A rule
    whose α or β were static (retrace per value) fails the trace count; one whose traced leaves
    were ignored or frozen at the first value fails the comparison.
    """
    net, params, x, y = _problem()
    traces: collections.Counter = collections.Counter()

    @jax.jit
    def grad_fn(rule, params, x, y):
        traces[rule.name] += 1
        return rule.grad(net, params, (), x, y)[:2]

    for variant in ("dp_top", "dp"):
        for beta in (1.0, 0.1, 0.01, 1e-3, 1e-4):
            for alpha in (0.0, 0.5, 1.0):
                rule = rules.dual_prop(variant=variant, alpha=alpha, beta=beta)
                g, aux = grad_fn(rule, params, x, y)
                g_ref, aux_ref, _ = rule.grad(net, params, (), x, y)
                # f32: δ = O(β) is a difference of O(1) states, so rounding costs ~1e-7/β
                assert _rel_err(g, g_ref) < 1e-6 + 2e-7 / beta, (variant, alpha, beta)
                np.testing.assert_allclose(aux.loss, aux_ref.loss, rtol=1e-6)
    assert traces == {"dp_top": 1, "dp": 1}
    assert grad_fn._cache_size() == 2


def test_static_fields_do_change_the_program():
    """passes, schedule, variant, loss, fast are static: a new value is a new structure."""
    base = rules.dual_prop()
    structure = jax.tree_util.tree_structure
    for change in (
        dict(passes=2),
        dict(schedule="bottom_up"),
        dict(variant="dp"),
        dict(loss="squared_error"),
        dict(fast=True),
        dict(dtype="bfloat16"),
    ):
        assert structure(base.replace(**change)) != structure(base), change
    assert structure(base.replace(beta=0.5, alpha=0.2)) == structure(base)
    assert jax.tree.leaves(base) == [0.5, 0.01]
    assert jax.tree.leaves(rules.backprop()) == []


def test_beta_vmap_equals_one_rule_per_beta():
    """α and β are ordinary leaves: ``vmap`` over β gives each β's own loss and gradient."""
    net, params, x, y = _problem(1)
    betas = jnp.asarray([0.5, 0.05, 0.005])
    rule = rules.dual_prop(variant="dp", alpha=0.25)
    g_all, _, _ = jax.vmap(lambda b: rule.replace(beta=b).grad(net, params, (), x, y))(betas)
    for i, b in enumerate(np.asarray(betas)):
        g_ref, _, _ = rule.replace(beta=float(b)).grad(net, params, (), x, y)
        assert _rel_err(jax.tree.map(lambda g, i=i: g[i], g_all), g_ref) < 1e-5


def _raw_loss(net, params, x, y):
    """Batch-mean softmax cross-entropy of the NNX module, in raw JAX."""
    logits = dp.merge(net, params)(x)
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)


def test_backprop_rule_is_jax_grad_of_the_mean_loss():
    """Oracle: raw JAX, jax.grad of the batch-mean softmax cross-entropy of the NNX module."""
    net, params, x, y = _problem(2)
    g, aux, _ = rules.backprop().grad(net, params, (), x, y)
    assert _rel_err(g, jax.grad(_raw_loss, argnums=1)(net, params, x, y)) < 1e-5
    np.testing.assert_allclose(aux.loss, _raw_loss(net, params, x, y), rtol=1e-6)


@pytest.mark.parametrize(
    ("variant", "alpha", "passes", "schedule"),
    [("dp", 0.3, 2, "bottom_up"), ("dp_top", 0.7, 0, "alternating"), ("dp", 1.0, 1, "alternating")],
)
def test_dual_prop_rule_gradient_is_the_numpy_closed_form(variant, alpha, passes, schedule):
    """Oracle: the dyad table and Hebbian update of docs/method.md written out in numpy
    (tests/_oracles.py), float64, on a tanh MLP at a β where the variants differ visibly. A rule
    that dropped its passes, swapped c⁺ and c⁻ or lost the 1/B would miss by far more than 1e-10."""
    with jax.enable_x64(True):
        net, params = dp.split(dp.mlp((5, 6, 4, 3), activation="tanh", rngs=nnx.Rngs(4),
                                      param_dtype=jnp.float64))  # fmt: skip
        rng = np.random.default_rng(5)
        x, y = rng.normal(size=(9, 5)), rng.integers(0, 3, size=9)
        beta = 0.4
        rule = rules.dual_prop(variant, alpha=alpha, beta=beta, passes=passes,
                               schedule=schedule, dtype="float64")  # fmt: skip
        g, aux, state = rule.grad(net, params, rule.init(net, params), jnp.asarray(x), y)
        Ws = [np.asarray(params["layers"][k]["kernel"]) for k in range(3)]
        bs = [np.asarray(params["layers"][k]["bias"]) for k in range(3)]
        sp, sm = np_dense_dyads(Ws, bs, x, np.eye(3)[y], variant, alpha, beta, np.tanh,
                                passes, schedule)  # fmt: skip
        want = np_hebbian_grads(Ws, sp, sm, alpha, beta)
        for k in range(3):
            for leaf in ("kernel", "bias"):
                np.testing.assert_allclose(g["layers"][k][leaf], want[k][leaf], rtol=1e-10,
                                           atol=1e-13, err_msg=f"{k}/{leaf}")  # fmt: skip
        assert state == ()
        h = np.tanh(np.tanh(x @ Ws[0] + bs[0]) @ Ws[1] + bs[1])
        np.testing.assert_allclose(aux.logits, h @ Ws[2] + bs[2], rtol=1e-12)  # ŷ: forward


def test_names_dicts_and_labels_round_trip():
    for rule in (
        rules.dual_prop(),
        rules.dual_prop(variant="dp", alpha=0.25, beta=0.5, passes=3, schedule="bottom_up"),
        rules.dual_prop(fast=True, dtype="bfloat16"),
        rules.backprop(loss="squared_error"),
    ):
        d = rule.to_dict()
        assert d["name"] == rule.name and rules.from_dict(d) == rule
    assert rules.from_dict("bp") == rules.backprop()
    assert (
        rules.from_label("dp+fast", beta=0.02).to_dict()
        == rules.dual_prop(variant="dp", fast=True, beta=0.02).to_dict()
    )
    assert rules.from_label("bp", alpha=0.3, dtype="float64") == rules.backprop(dtype="float64")
    assert rules.dual_prop(variant="dp", fast=True).label == "dp+fast"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: rules.from_dict({"name": "bp", "beta": 0.1}), r"'bp' has no setting.*beta"),
        (lambda: rules.from_dict({"name": "hebb"}), r"'hebb' is unknown.*'dp', 'dp_top', 'bp'"),
        (lambda: rules.from_dict({"alpha": 0.5}), r"'name' key"),
        (lambda: rules.backprop(loss="hinge"), r"loss='hinge'.*one of"),
        (lambda: rules.dual_prop(beta=-1.0), r"beta=-1.0.*finite real number > 0"),
        (lambda: rules.dual_prop(alpha=0.3, fast=True), r"fast=True.*alpha == 0.5"),
        (lambda: rules.from_label("dp+slow"), r"'dp\+slow' is unknown"),
    ],
)
def test_bad_rules_fail_at_construction_with_a_clear_message(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_stateful_rule_plugs_into_the_train_step():
    """The interface later rules need: ``init`` gives a state, ``grad`` threads it, the train
    step carries it. Oracle: BP driven through optax by hand, and a counter of the steps."""

    @rules.ruleclass
    class CountingBP(rules.Backprop):
        name: ClassVar[str] = "counting_bp_test"

        def init(self, net, params):
            return jnp.zeros((), jnp.int32)

        def grad(self, net, params, state, x, y):
            grads, aux, _ = super().grad(net, params, state, x, y)
            return grads, aux, state + 1

    net, params, x, y = _problem(4)
    rule, opt = CountingBP(), optax.sgd(0.1)
    step = dp.make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    p_ref, o_ref = params, opt.init(params)
    for _ in range(3):
        state, _ = step(state, x, y)
        g = jax.grad(_raw_loss, argnums=1)(net, p_ref, x, y)
        updates, o_ref = opt.update(g, o_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, updates)
    assert int(state.rule_state) == 3
    assert _rel_err(state.params, p_ref) < 1e-5


def test_pmap_and_shard_map_recipes_equal_the_one_device_gradient(tmp_path):
    """On 4 simulated CPU devices: pmap + pmean, and shard_map with the parameters cast to
    varying + pmean, give the one-device gradient (to 1e-5); shard_map on replicated
    parameters + pmean gives N = 4 times it (the pitfall the docs warn of)."""
    got = run_cpu_worker("_recipes_worker.py", tmp_path / "recipes.npz", "4")
    net, params = dp.split(dp.mlp((12, 16, 16, 5), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 12)).astype(np.float32)
    y = (np.arange(32) % 5).astype(np.int32)
    g_ref, _, _ = rules.dual_prop(alpha=0.3, beta=0.05).grad(net, params, (), x, y)
    flat = jax.tree_util.tree_flatten_with_path(g_ref)[0]
    for path, ref in flat:
        name = jax.tree_util.keystr(path)
        ref = np.asarray(ref)
        np.testing.assert_allclose(got[f"pmap/{name}"], ref, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[f"shard_map/{name}"], ref, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got[f"pitfall/{name}"], 4 * ref, rtol=1e-4, atol=1e-5)
