"""The rule contract from the outside: a user's rule trains, runs and resumes like the library's;
evaluation scores what the rule predicts; targets and inputs are checked where they enter."""

import csv
import json
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax.training import checkpoints
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import TrainState, evaluate, make_train_step
from dualprop_jax.training.train import train_and_evaluate


@dp.rules.ruleclass
class ScaledBP(dp.rules.Rule):
    """A rule defined outside the library: back-propagation's gradient times ``scale``."""

    name: ClassVar[str] = "scaled_bp_test"
    scale: float = dp.rules.leaf(0.5)

    def grad(self, net, params, state, x, y):
        grads, aux = dp.bp_grad(net, params, x, y, self)
        return jax.tree.map(lambda g: self.scale * g, grads), aux, state


# ------------------------------------------------------------------ oracles in numpy


def _weights(params):
    layers = params["layers"]
    return [
        (np.asarray(layers[k]["kernel"], np.float64), np.asarray(layers[k]["bias"], np.float64))
        for k in range(len(layers))
    ]


def np_forward(params, x):
    """(pre-activations, states) of a ReLU MLP in float64: s_0 = flatten(x)."""
    states, pre = [np.asarray(x, np.float64).reshape(len(x), -1)], []
    for k, (W, b) in enumerate(ws := _weights(params)):
        pre.append(states[-1] @ W + b)
        states.append(pre[-1] if k == len(ws) - 1 else np.maximum(pre[-1], 0))
    return pre, states


def np_softmax_ce(z, t):
    """Per-example softmax cross-entropy logsumexp(z) - ⟨t, z⟩."""
    m = z.max(axis=1, keepdims=True)
    return (m[:, 0] + np.log(np.exp(z - m).sum(axis=1))) - (t * z).sum(axis=1)


def np_bp_grads(params, x, t):
    """∇θ of the batch-mean softmax CE of a ReLU MLP, back-propagated by hand."""
    pre, states = np_forward(params, x)
    z = states[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    err = (p / p.sum(axis=1, keepdims=True) - t) / len(x)
    grads = {}
    for k in reversed(range(len(pre))):
        grads[k] = {"kernel": states[k].T @ err, "bias": err.sum(axis=0)}
        if k:
            err = (err @ _weights(params)[k][0].T) * (pre[k - 1] > 0)
    return {"layers": grads}


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------ 6. a user's rule


def test_users_rule_trains_with_make_train_step_as_scaled_sgd_on_the_raw_loss():
    net, params = dp.split(dp.mlp((12, 16, 3), rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (10, 12))
    y = jnp.arange(10) % 3

    def raw_loss(p):  # batch-mean softmax CE in plain JAX on the network's forward pass
        z = net.forward(p, x)
        return jnp.mean(jax.nn.logsumexp(z, axis=-1) - z[jnp.arange(len(y)), y])

    g = jax.grad(raw_loss)(params)
    lr, rule = 0.1, ScaledBP()
    opt = optax.sgd(lr)
    step = make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    assert state.rule_state == ()
    for scale, (new, metrics) in (
        (0.5, step(state, x, y)),  # the step's own rule: the default scale
        (2.0, step(state, x, y, rule=rule.replace(scale=2.0))),
        (-1.0, step(state, x, y, rule=rule.replace(scale=-1.0))),
    ):
        expected = jax.tree.map(lambda p, gi, s=scale: p - lr * s * gi, params, g)
        chex.assert_trees_all_close(new.params, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(metrics["loss"], raw_loss(params), rtol=1e-6)
    assert step.jitted._cache_size() == 1  # scale is a traced leaf


def _test_accuracy_by_hand(params, ds) -> float:
    z = np_forward(params, ds.x_test)[1][-1]
    return int(np.sum(np.argmax(z, axis=1) == ds.y_test)) / len(ds.y_test)


def test_users_rule_runs_and_resumes_through_train_and_evaluate(fmnist_small, tmp_path):
    config = TrainConfig(
        model="mlp", widths=(32,), max_train=600, epochs=1, batch_size=50, feed="host",
        rule=ScaledBP(scale=2.0),
    )  # fmt: skip
    workdir = tmp_path / "run"
    results = train_and_evaluate(config, workdir, dataset=fmnist_small)
    for name in ("results.json", "metrics.csv", "curves.png", "config.json"):
        assert (workdir / name).is_file(), name
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["rule"] == {"name": "scaled_bp_test", "scale": 2.0}
    assert on_disk["test_accuracy"] == results["test_accuracy"]
    net, state, meta = checkpoints.load_checkpoint(workdir)  # reads the rule back by its name
    assert meta["epoch"] == 1 and meta["best_epoch"] == 1
    recomputed = evaluate(net, state["best_params"], fmnist_small, config.rule)
    assert results["test_accuracy"] == recomputed["accuracy"]
    assert results["test_accuracy"] == _test_accuracy_by_hand(state["best_params"], fmnist_small)
    assert results["test_accuracy"] > 0.3  # it trained (chance: 0.1)
    with (workdir / "metrics.csv").open() as fh:
        first = list(csv.DictReader(fh))
    assert [r["epoch"] for r in first] == ["1"]

    resumed = train_and_evaluate(config.replace(epochs=2), workdir, resume=True,
                                 dataset=fmnist_small)  # fmt: skip
    with (workdir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == first[0]
    assert resumed["epochs"] == 2 and resumed["epoch_extensions"][0]["at_epoch"] == 1
    net, state, meta = checkpoints.load_checkpoint(workdir)
    assert meta["epoch"] == 2
    assert resumed["test_accuracy"] == _test_accuracy_by_hand(state["best_params"], fmnist_small)


class NoGrad:
    """Everything a rule has but ``grad``, and no Rule base class."""

    name, loss, dtype = "no_grad_test", "softmax_ce", "float32"

    def init(self, net, params):
        return ()

    def predict(self, net, params, x):
        return net.forward(params, x)

    def to_dict(self):
        return {"name": self.name}


class Undecorated(dp.rules.Rule):
    """A Rule subclass without @ruleclass: not a pytree, so it cannot enter a jitted step."""

    name: ClassVar[str] = "undecorated_test"

    def grad(self, net, params, state, x, y):
        return (*dp.bp_grad(net, params, x, y, self), state)


@pytest.mark.parametrize(
    "cls, fix",
    [(NoGrad, r"lacks \['grad'\].*dualprop_jax\.rules\.Rule"), (Undecorated, "ruleclass")],
)
def test_a_class_that_is_not_a_rule_is_refused_with_the_fix(cls, fix):
    net, params = dp.split(dp.mlp((12, 16, 3), rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match=fix):
        make_train_step(net, cls(), optax.sgd(0.1))
    with pytest.raises(TypeError, match=fix):
        TrainConfig(rule=cls())
    rule, opt = ScaledBP(), optax.sgd(0.1)
    step = make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    x, y = jnp.zeros((2, 12)), jnp.zeros(2, jnp.int32)
    with pytest.raises(TypeError, match=fix):
        step(state, x, y, rule=cls())


# ------------------------------------------------------------------ 7. evaluate = rule.predict


def ep_free_phase_by_hand(params, x, steps: int) -> np.ndarray:
    """The output of EP's free phase in float64: from s = 0, ``steps`` synchronous steps
    s_k ← clip(W_{k-1} s_{k-1} + b_{k-1} + W_kᵀ s_{k+1}, 0, 1) (hidden), s_L ← W_{L-1} s_{L-1}
    + b_{L-1} (output), all from the previous step's states."""
    ws = _weights(params)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    s = [np.zeros((len(x), W.shape[1])) for W, _ in ws]  # s[k] is layer k + 1
    for _ in range(steps):
        new = []
        for k, (W, b) in enumerate(ws):
            d = (x if k == 0 else s[k - 1]) @ W + b
            if k < len(ws) - 1:
                new.append(np.clip(d + s[k + 1] @ ws[k + 1][0].T, 0, 1))
            else:
                new.append(d)
        s = new
    return s[-1]


def test_evaluate_scores_what_ep_predicts_not_the_feedforward_output():
    net, params = dp.split(dp.mlp((20, 32, 5), rngs=nnx.Rngs(0)))
    x = np.random.default_rng(0).normal(size=(200, 20)).astype(np.float32)
    y = np.argmax(np_forward(params, x)[1][-1], axis=1)  # the feedforward net gets all right
    rule = dp.rules.equilibrium_prop(free_steps=5, nudged_steps=2)
    out = ep_free_phase_by_hand(params, x, 5)
    predicted = np.asarray(rule.predict(net, params, x))
    np.testing.assert_allclose(predicted, out, rtol=1e-4, atol=1e-5)
    assert np.array_equal(np.argmax(predicted, axis=1), np.argmax(out, axis=1))
    by_hand = int(np.sum(np.argmax(out, axis=1) == y)) / len(y)
    feedforward = evaluate(net, params, (x, y), dp.rules.backprop())["accuracy"]
    assert feedforward == 1.0 and by_hand < 0.9  # the two predictions differ: the test has power

    scores = evaluate(net, params, (x, y), rule, batch_size=64)  # 4 batches, the last padded
    assert scores["accuracy"] == by_hand
    loss = np.mean(0.5 * np.sum((out - np.eye(5)[y]) ** 2, axis=1))  # EP's squared error
    np.testing.assert_allclose(scores["loss"], loss, rtol=1e-5)


# ------------------------------------------------------------------ 8. targets from Python


@pytest.fixture(scope="module")
def batch(fmnist_raw):
    """64 real images (B, 28, 28, 1), standardised; labels, one-hot, label-smoothed and
    random soft targets (whose argmax is often not the label)."""
    xtr, ytr, _, _ = fmnist_raw
    x = xtr[:64].astype(np.float32) / 255
    x = (x - x.mean()) / x.std()
    y = ytr[:64]
    one_hot = np.eye(10, dtype=np.float32)[y]
    smoothed = 0.8 * one_hot + 0.2 / 10
    soft = np.random.default_rng(0).dirichlet(np.ones(10), size=64).astype(np.float32)
    return x, {"labels": y, "one_hot": one_hot, "smoothed": smoothed, "soft": soft}


def _net():
    return dp.split(dp.mlp((784, 16, 10), rngs=nnx.Rngs(0)))


def _as_array(t):
    return np.eye(10)[t] if t.ndim == 1 else np.asarray(t, np.float64)


RULES = {"dp_top": dp.rules.dual_prop("dp_top", beta=0.01), "bp": dp.rules.backprop()}


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_labels_one_hot_and_soft_targets_through_rule_grad(batch, rule_name):
    net, params = _net()
    rule = RULES[rule_name]
    x, targets = batch
    z = np_forward(params, x)[1][-1]
    grads = {}
    for kind, t in targets.items():
        grads[kind], aux, _ = rule.grad(net, params, (), x, t)
        np.testing.assert_allclose(aux.loss, np.mean(np_softmax_ce(z, _as_array(t))), rtol=1e-5)
    chex.assert_trees_all_close(grads["labels"], grads["one_hot"], rtol=1e-6, atol=1e-8)
    # BP: exact up to float32 rounding; DP⊤ at α = ½: BP's gradient up to O(β²) and the
    # float32 rounding of δ = s⁺ - s⁻ divided by β
    tol = 1e-5 if rule_name == "bp" else 2e-4
    for kind in ("smoothed", "soft"):
        reference = np_bp_grads(params, x, _as_array(targets[kind]))
        labels_ref = np_bp_grads(params, x, _as_array(targets["labels"]))
        for k in (0, 1):
            for leaf in ("kernel", "bias"):
                ref = reference["layers"][k][leaf]
                got = grads[kind]["layers"][k][leaf]
                assert _relative_error(got, ref) < tol, (kind, k, leaf)
                # the targets matter far beyond the tolerance
                assert _relative_error(labels_ref["layers"][k][leaf], ref) > 10 * tol


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_train_step_counts_the_argmax_class_of_any_target(batch, rule_name):
    net, params = _net()
    rule, opt = RULES[rule_name], optax.sgd(0.01)
    step = make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    x, targets = batch
    z = np_forward(params, x)[1][-1]  # the prediction before the update
    counts = set()
    for kind, t in targets.items():
        _, metrics = step(state, x, t)
        expected = int(np.sum(np.argmax(z, axis=1) == np.argmax(_as_array(t), axis=1)))
        assert int(metrics["correct"]) == expected, kind
        np.testing.assert_allclose(metrics["loss"], np.mean(np_softmax_ce(z, _as_array(t))),
                                   rtol=1e-5)  # fmt: skip
        counts.add((kind in ("labels", "one_hot", "smoothed"), expected))
    assert len(counts) == 2 and all(0 < n < len(x) for _, n in counts)  # the counts have power


def test_evaluate_takes_labels_one_hot_and_soft_targets(batch):
    net, params = _net()
    x, targets = batch
    z = np_forward(params, x)[1][-1]
    for rule in RULES.values():
        scores = {k: evaluate(net, params, (x, t), rule, batch_size=50) for k, t in targets.items()}
        assert scores["labels"]["accuracy"] == scores["one_hot"]["accuracy"]
        assert scores["labels"]["accuracy"] == int(
            np.sum(np.argmax(z, axis=1) == targets["labels"])
        ) / len(x)
        for kind, t in targets.items():
            ce = np.mean(np_softmax_ce(z, _as_array(t)))
            np.testing.assert_allclose(scores[kind]["loss"], ce, rtol=1e-5, err_msg=kind)


@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_input_of_the_wrong_shape_names_net_input_shape(batch, rule_name):
    net, params = _net()
    rule = RULES[rule_name]
    x, targets = batch
    y = targets["labels"]
    # any x whose examples hold 784 numbers is the MLP's input: images or flat vectors
    g_images = rule.grad(net, params, (), x, y)[0]
    g_flat = rule.grad(net, params, (), x.reshape(len(x), 784), y)[0]
    chex.assert_trees_all_close(g_images, g_flat, rtol=1e-6, atol=1e-8)
    wrong = np.zeros((len(x), 27), np.float32)
    with pytest.raises(ValueError) as info:
        rule.grad(net, params, (), wrong, y)
    for part in ("net.input_shape", "(27,)", "(784,)"):
        assert part in str(info.value), (part, str(info.value))
    opt = optax.sgd(0.1)
    step = make_train_step(net, rule, opt)
    with pytest.raises(ValueError, match=r"net\.input_shape.*\(784,\)"):
        step(TrainState.create(net, params, rule, opt), wrong, y)


def test_evaluate_with_input_of_the_wrong_shape_names_net_input_shape(batch):
    net, params = _net()
    _, targets = batch
    wrong = np.zeros((len(targets["labels"]), 27), np.float32)
    with pytest.raises(ValueError) as info:
        evaluate(net, params, (wrong, targets["labels"]), RULES["dp_top"])
    for part in ("net.input_shape", "(27,)", "(784,)"):
        assert part in str(info.value), (part, str(info.value))


def test_the_unsplit_network_is_refused_with_a_pointer_to_dp_split(batch):
    model = dp.mlp((784, 16, 10), rngs=nnx.Rngs(0))
    _, params = dp.split(model)
    x, targets = batch
    y = targets["labels"]
    for rule in RULES.values():
        with pytest.raises(TypeError, match=r"dp\.split"):
            rule.grad(model, params, (), x, y)
        with pytest.raises(TypeError, match=r"dp\.split"):
            make_train_step(model, rule, optax.sgd(0.1))
        with pytest.raises(TypeError, match=r"dp\.split"):
            evaluate(model, params, (x, y), rule)


def test_the_unsplit_network_is_refused_by_a_stateful_rules_init():
    model = dp.mlp((784, 16, 10), rngs=nnx.Rngs(0))
    _, params = dp.split(model)
    rule = dp.rules.damped_dual_prop("dp_top")
    with pytest.raises(TypeError, match=r"dp\.split"):
        rule.init(model, params)
    with pytest.raises(TypeError, match=r"dp\.split"):
        TrainState.create(model, params, rule, optax.sgd(0.1))
