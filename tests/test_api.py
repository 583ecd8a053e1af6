"""The notebook-grade API at top level: batches, train steps, evaluation, checked against numpy,
raw JAX and optax driven by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules
from dualprop_jax.data import Dataset
from dualprop_jax.data.pipeline import augment_batch
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import TrainState


def _dataset(n_train=50, n_test=23, shape=(6,), classes=3, augment=False, seed=0):
    rng = np.random.default_rng(seed)
    x = lambda n: rng.standard_normal((n, *shape)).astype(np.float32)  # noqa: E731
    y = lambda n: rng.integers(0, classes, n).astype(np.int32)  # noqa: E731
    return Dataset("toy", x(n_train), y(n_train), x(7), y(7), x(n_test), y(n_test), classes,
                      augment, "generated")  # fmt: skip


def test_batches_shuffle_each_epoch_and_drop_the_partial_batch():
    ds = _dataset(n_train=50)
    got = list(dp.batches(ds, 8, seed=3, epochs=2))
    assert len(got) == 2 * (50 // 8)
    epochs = [np.concatenate([y for _, y in got[i * 6 : (i + 1) * 6]]) for i in range(2)]
    for e, ys in enumerate(epochs, start=1):
        # oracle: the permutation numpy draws from (seed, epoch), as train_and_evaluate uses
        perm = np.random.default_rng([3, e]).permutation(50)[:48]
        np.testing.assert_array_equal(ys, ds.y_train[perm])
    xs = np.concatenate([x for x, _ in got[:6]])
    assert len({tuple(r) for r in xs.round(6)}) == 48  # 48 distinct examples, none repeated
    assert not np.array_equal(epochs[0], epochs[1])


def test_batches_of_a_held_out_split_run_once_in_order_with_the_remainder():
    ds = _dataset(n_test=23)
    got = list(dp.batches(ds, 10, split="test"))
    assert [len(y) for _, y in got] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), ds.x_test)
    with pytest.raises(ValueError, match="split='dev' is unknown"):
        next(dp.batches(ds, 10, split="dev"))


def test_augmented_batches_use_the_training_keys():
    """Oracle: augment_batch with fold_in(key(seed), global step), as the train step does."""
    ds = _dataset(n_train=20, shape=(8, 8, 3), augment=True)
    got = list(dp.batches(ds, 5, seed=1, epochs=2))
    for g, (xb, _) in enumerate(got):
        epoch, i = divmod(g, 4)
        idx = np.random.default_rng([1, epoch + 1]).permutation(20)[:20].reshape(4, 5)[i]
        key = jax.random.fold_in(jax.random.key(1), g)
        np.testing.assert_array_equal(xb, augment_batch(key, ds.x_train[idx]))
    plain = next(dp.batches(ds, 5, seed=1, augment=False))[0]
    assert not np.array_equal(plain, got[0][0])


def test_evaluate_matches_numpy_with_a_padded_last_batch():
    ds = _dataset(n_test=23)
    net, params = dp.split(dp.mlp((6, 8, 3), rngs=nnx.Rngs(0)))
    logits = np.asarray(dp.merge(net, params)(jnp.asarray(ds.x_test)), np.float64)
    ce = np.log(np.exp(logits).sum(-1)) - logits[np.arange(23), ds.y_test]
    for bs in (23, 10, 64):  # one batch, a padded last batch, a batch larger than the split
        got = dp.evaluate(net, params, ds, rules.backprop(), batch_size=bs)
        assert got["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == ds.y_test))
        assert got["loss"] == pytest.approx(ce.mean(), rel=1e-5)
    bp = rules.backprop()
    pair = dp.evaluate(net, params, (ds.x_test, ds.y_test), bp, batch_size=10)
    assert pair == dp.evaluate(net, params, ds, bp, batch_size=10)
    empty = dp.evaluate(net, params, (ds.x_test[:0], ds.y_test[:0]), bp)
    assert np.isnan(empty["loss"]) and np.isnan(empty["accuracy"])


def _step_problem():
    net, params = dp.split(dp.mlp((6, 8, 8, 3), rngs=nnx.Rngs(1)))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((16, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    return net, params, x, y


def _optax_by_hand(net, rule, opt, params, x, y, steps=3):
    """Parameters after ``steps`` optax updates of ``rule.grad``, driven by hand."""
    p, o = params, opt.init(params)
    for _ in range(steps):
        g, _, _ = rule.grad(net, p, (), x, y)
        updates, o = opt.update(g, o, p)
        p = optax.apply_updates(p, updates)
    return p


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(u - v))) for u, v in pairs)


@pytest.mark.parametrize("rule", [rules.dual_prop("dp", alpha=0.3, beta=1.0), rules.backprop()])
def test_train_step_is_the_rule_gradient_through_optax(rule):
    """Oracle: optax driven by hand on rule.grad; the metrics are the batch loss and # correct.
    At β = 1, α = 0.3 the DP gradient is far from its β → 0 value: a step that ignored β (or
    took the rule's default β = 0.01) would miss by over 100x the tolerance, which the test
    checks; ``rule=`` of a call trains with that rule's β, by the same oracle."""
    net, params, x, y = _step_problem()
    opt = optax.chain(optax.trace(0.9), optax.scale(-0.1))
    step = dp.make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    p, o = params, opt.init(params)
    if isinstance(rule, rules.DualProp):
        small = rule.replace(beta=0.01)
        assert _max_diff(_optax_by_hand(net, small, opt, params, x, y), _optax_by_hand(
            net, rule, opt, params, x, y)) > 100 * 1e-5  # fmt: skip
        moved, _ = step(TrainState.create(net, params, rule, opt), x, y, rule=small)
        for _ in range(2):
            moved, _ = step(moved, x, y, rule=small)
        assert _max_diff(moved.params, _optax_by_hand(net, small, opt, params, x, y)) < 1e-5
    for _ in range(3):
        g, aux, _ = rule.grad(net, p, (), x, y)
        correct = int(jnp.sum(jnp.argmax(aux.logits, -1) == y))
        updates, o = opt.update(g, o, p)
        p = optax.apply_updates(p, updates)
        state, metrics = step(state, x, y)
        assert float(metrics["loss"]) == pytest.approx(float(aux.loss), rel=1e-5)
        assert int(metrics["correct"]) == correct
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_train_step_without_donate_leaves_the_callers_params_usable():
    net, params, x, y = _step_problem()
    rule, opt = rules.dual_prop(), optax.sgd(0.1)
    before = jax.tree.map(np.array, params)
    state = TrainState.create(net, params, rule, opt)
    new_state, _ = dp.make_train_step(net, rule, opt)(state, x, y)
    for leaf, copy in zip(jax.tree.leaves(params), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf), copy)  # alive, and unchanged
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), new_state.params, before)
    assert all(jax.tree.leaves(moved))  # the step did update
    # donate=True is opt-in and does what its docstring says: the input arrays are consumed
    donated = TrainState.create(net, jax.tree.map(jnp.copy, params), rule, opt)
    dp.make_train_step(net, rule, opt, donate=True)(donated, x, y)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(donated.params))


def test_an_augmenting_step_asks_for_a_key():
    net, params = dp.split(dp.cnn((8, 8, 3), channels=(4,), dense=(8,), num_classes=3,
                                  rngs=nnx.Rngs(0)))  # fmt: skip
    rule, opt = rules.dual_prop(), optax.sgd(0.1)
    step = dp.make_train_step(net, rule, opt, augment=True)
    state = TrainState.create(net, params, rule, opt)
    x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
    y = jnp.arange(4) % 3
    with pytest.raises(ValueError, match=r"augment=True.*pass a key"):
        step(state, x, y)
    # oracle: the plain step on the batch augment_batch makes from the same key
    plain = dp.make_train_step(net, rule, opt)
    for key in (jax.random.key(0), jax.random.key(1)):
        xa = augment_batch(key, x)
        assert not np.array_equal(np.asarray(xa), np.asarray(x))  # the key changes the batch
        got, _ = step(state, x, y, key)
        want, _ = plain(state, xa, y)
        assert _max_diff(got.params, want.params) < 1e-6
        assert _max_diff(got.params, plain(state, x, y)[0].params) > 1e-4
    other, _ = step(state, x, y, jax.random.key(1))
    assert _max_diff(other.params, step(state, x, y, jax.random.key(0))[0].params) > 1e-4


def test_train_config_holds_the_rule():
    cfg = TrainConfig(rule=rules.dual_prop(variant="dp", alpha=0.25, beta=0.1, passes=2))
    d = cfg.to_dict()
    assert d["rule"] == {"name": "dp", "alpha": 0.25, "beta": 0.1, "loss": "softmax_ce",
                         "schedule": "alternating", "passes": 2, "dtype": "float32",
                         "fast": False, "sweep": True, "unroll": None, "damped": False,
                         "power_iterations": 1, "feedback": "transpose",
                         "output": "linearised"}  # fmt: skip
    assert TrainConfig.from_dict(d) == cfg
    assert TrainConfig(rule="bp").rule == rules.backprop()
    assert TrainConfig(rule={"name": "dp_top", "beta": 0.5}).rule == rules.dual_prop(beta=0.5)
    with pytest.raises(ValueError, match="'bp' has no setting"):
        TrainConfig(rule={"name": "bp", "alpha": 0.5})
    with pytest.raises(ValueError, match="old flat format, which is no longer read"):
        TrainConfig.from_dict({"rule": "bp", "beta": 0.1})
