"""Evaluation on the device against the host path and against raw JAX on the whole split.

Oracles: the batch plan's closed form; the host path (batches gathered, standardised and
copied one by one); the loss and accuracy of the whole split computed at once with raw JAX and
optax (the network's forward pass, ``optax.softmax_cross_entropy_with_integer_labels``,
``argmax``); the shapes the evaluation function is traced with (no padding beyond need).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dualprop_jax import data, models, rules
from dualprop_jax.data import device as device_data
from dualprop_jax.training import evaluation, steps


@pytest.mark.parametrize(
    "n, batch, devices, plan",
    [
        (20, 1000, 1, (20, 1, 0)),  # a small split: one batch of its own size
        (2500, 1000, 1, (1000, 2, 500)),  # the last batch only as long as the rows left
        (21, 1000, 4, (24, 0, 24)),  # rounded up to the devices: 3 masked rows
        (2500, 1000, 4, (1000, 2, 500)),
        (2502, 1000, 4, (1000, 2, 504)),
    ],
)
def test_eval_plan_pads_only_what_the_devices_need(n, batch, devices, plan):
    assert evaluation.eval_plan(n, batch, devices) == plan
    b, full, last = plan
    assert full * b + last - n == (-(n - full * b)) % devices  # the padding, and no more


@pytest.fixture(scope="module")
def fmnist_uint8(fmnist_raw):
    """2,050 real Fashion-MNIST images kept as uint8 and standardised when taken, as the
    library loads them: 1,000 train, 1,030 val (batches of 1,000 and a last one of 30), 20
    test."""
    xtr, ytr, xte, yte = fmnist_raw
    raw = xtr[:2030]
    scaled = raw[:1000] / 255.0
    mean, std = np.float32(scaled.mean()), np.float32(scaled.std())
    x = data.StandardisedImages(raw, mean, std)
    xt = data.StandardisedImages(xte[:20], mean, std)
    return data.Dataset(
        "fashion_mnist", x[:1000], ytr[:1000], x[1000:2030], ytr[1000:2030], xt, yte[:20], 10,
        False, "fashion-mnist uint8 subset",
    )  # fmt: skip


def _raw_jax(net, params, x, y):
    """Mean cross-entropy and accuracy of the whole split at once, with raw JAX and optax."""
    logits = net.forward(params, jnp.asarray(x))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()
    return float(loss), int(jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(y))) / len(y)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("split", ["val", "test"])
def test_device_evaluation_equals_host_and_raw_jax(fmnist_uint8, model, split):
    """Loss to float32 rounding of a 1,000-term sum (1e-5 relative), accuracy exactly."""
    rngs = nnx.Rngs(0)
    if model == "mlp":
        module = models.mlp((784, 64, 10), rngs=rngs)
    else:
        module = models.cnn((28, 28, 1), channels=(8,), dense=(32,), rngs=rngs)
    net, params = models.split(module)
    rule = rules.dual_prop(variant="dp_top")
    got = {
        feed: steps.evaluate(net, params, fmnist_uint8, rule, split=split, feed=feed)
        for feed in ("device", "host")
    }
    x, y = fmnist_uint8.split(split)
    x = x[np.arange(len(y))]  # standardised on the host
    if model == "mlp":
        x = x.reshape(len(y), -1)
    loss, accuracy = _raw_jax(net, params, x, y)
    for feed, result in got.items():
        assert result["accuracy"] == accuracy, feed
        assert result["loss"] == pytest.approx(loss, rel=1e-5), feed
    assert got["device"]["loss"] == pytest.approx(got["host"]["loss"], rel=1e-6)


def test_a_20_image_split_is_scored_in_one_batch_of_20():
    """The evaluation function is traced with the split's own size, never padded to the
    batch size (1000)."""
    net, params = models.split(models.mlp((6, 5, 3), rngs=nnx.Rngs(0)))
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    y = np.arange(20, dtype=np.int32) % 3
    shapes = []
    score = steps.eval_score(net)

    def traced(rule, params, xb, yb, mask):
        shapes.append(xb.shape)
        return score(rule, params, xb, yb, mask)

    on_device = device_data.put(x, y, None)
    rule = rules.backprop()
    loss, correct = evaluation.device_sums(traced, rule, params, on_device, 1000)
    assert shapes == [(20, 6)]
    logits = net.forward(params, jnp.asarray(x))
    want = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).sum()
    assert loss == pytest.approx(float(want), rel=1e-6)
    assert correct == int(jnp.sum(jnp.argmax(logits, -1) == y))


def test_soft_targets_and_pairs_evaluate_alike_on_both_feeds():
    """A pair (x, one-hot y) on the device equals the same pair on the host and the
    integer-label evaluation (one-hot targets give the same cross-entropy)."""
    net, params = models.split(models.mlp((6, 5, 3), rngs=nnx.Rngs(0)))
    x = np.random.default_rng(1).normal(size=(45, 6)).astype(np.float32)
    y = np.arange(45, dtype=np.int32) % 3
    onehot = np.eye(3, dtype=np.float32)[y]
    rule = rules.backprop()
    labels = steps.evaluate(net, params, (x, y), rule, batch_size=20, feed="host")
    for feed in ("device", "host"):
        got = steps.evaluate(net, params, (x, onehot), rule, batch_size=20, feed=feed)
        assert got["accuracy"] == labels["accuracy"]
        assert got["loss"] == pytest.approx(labels["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="feed must be"):
        steps.evaluate(net, params, (x, y), rule, feed="gpu")
