"""Two things a new user hit: a loss that explodes to a huge finite value is a divergence, and
integer labels that do not fit the network's outputs are refused in Python, not trained on."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.errors import DivergenceError
from dualprop_jax.training import checkpoints, steps, train
from dualprop_jax.training.config import TrainConfig


def _explosive(lr: float, epochs: int = 1) -> TrainConfig:
    """Squared error, tanh, plain SGD: at lr 1 the loss grows ~10x a step yet stays finite for
    the 6 steps of an epoch of ``fmnist_small`` (4.3 → 1.6e5, checked when written)."""
    return TrainConfig(
        widths=(16,), activation="tanh", rule=rules.Backprop(loss="squared_error"),
        optimizer="sgd", momentum=0.0, learning_rate=lr, epochs=epochs, batch_size=100,
    )  # fmt: skip


def test_a_loss_grown_1000x_past_its_start_is_a_divergence(fmnist_small, tmp_path):
    with pytest.raises(DivergenceError) as info:
        train.train_and_evaluate(_explosive(1.0), tmp_path / "run", dataset=fmnist_small)
    message = str(info.value)
    assert "the training loss grew from" in message
    assert "more than 1000x its start" in message
    assert "at epoch 1, step 6" in message
    assert "No checkpoint was written" in message and "a lower --lr than 1" in message


def test_normal_training_is_not_a_divergence_and_the_start_loss_survives_resume(
    fmnist_small, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    results = train.train_and_evaluate(_explosive(1e-3), run, dataset=fmnist_small, plots=False)
    assert np.isfinite(results["test_loss"])
    start = checkpoints.load_checkpoint(run)[2]["start_loss"]
    assert 0.5 < start < 50  # ½‖ŷ - t‖² of a fresh 10-output net

    seen = []
    real = train.train_epoch

    def spy(*args, **kwargs):
        seen.append(kwargs["start_loss"])
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", spy)
    train.train_and_evaluate(
        _explosive(1e-3, epochs=2), run, dataset=fmnist_small, resume=True, plots=False
    )
    assert seen == [start]  # the resumed epoch is checked against the run's first loss


@pytest.fixture(scope="module")
def small_net():
    net, params = models.split(models.mlp((12, 8, 10), rngs=nnx.Rngs(0)))
    return net, params


def _batch():
    x = np.asarray(jax.random.normal(jax.random.key(1), (6, 12)))
    return x, np.array([0, 1, 2, 3, 4, 9], np.int32)


def test_train_step_refuses_labels_outside_the_outputs(small_net):
    net, params = small_net
    rule, opt = rules.Backprop(), optax.sgd(0.1)
    step = steps.make_train_step(net, rule, opt)
    state = steps.TrainState.create(net, params, rule, opt)
    x, y = _batch()
    bad = y.copy()
    bad[3] = 12
    message = r"labels must be in 0\.\.9 \(the network has 10 outputs\); got 12 at index 3"
    with pytest.raises(ValueError, match=message):
        step(state, x, bad)
    bad[5] = -1
    with pytest.raises(ValueError, match=r"got 12 at index 3, -1 at index 5"):
        step(state, x, bad)
    with pytest.raises(ValueError, match=message):  # a concrete jax array: checked (first call)
        steps.make_train_step(net, rule, opt)(state, jnp.asarray(x), jnp.asarray(y).at[3].set(12))

    # valid labels, and one-hot targets, train exactly as the unchecked step does
    for targets in (y, np.eye(10, dtype=np.float32)[y]):
        new, metrics = step(state, x, targets)
        ref, ref_metrics = steps.train_step(net, opt)(rule, state, x, targets, None)
        assert np.isfinite(float(metrics["loss"]))
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new, ref)


def test_evaluate_refuses_labels_outside_the_outputs(small_net):
    net, params = small_net
    x, y = _batch()
    assert np.isfinite(steps.evaluate(net, params, (x, y), rules.Backprop())["loss"])
    y[3] = 12
    with pytest.raises(ValueError, match=r"0\.\.9 \(the network has 10 outputs\); got 12 at"):
        steps.evaluate(net, params, (x, y), rules.Backprop())
