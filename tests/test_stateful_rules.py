"""Rules with state: damped DP's power-iteration vectors follow the kernels during training, and
a killed run resumes with that state, bit for bit."""

import csv

import chex
import numpy as np
import optax
from flax import nnx

import dualprop_jax as dp
from dualprop_jax.core.damping import DampingState
from dualprop_jax.core.diagnostics import damping_norms
from dualprop_jax.training import checkpoints
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import TrainState, make_train_step
from dualprop_jax.training.train import train_and_evaluate


def _top_singular_value(kernel) -> float:
    return float(np.linalg.svd(np.asarray(kernel, np.float64), compute_uv=False)[0])


def test_damped_gamma_after_30_steps_is_the_spectral_norm_of_the_current_kernels():
    """γ_k, read from the rule's state after training, is σ_max of map k's kernel now.

    Power iteration gives a lower bound of σ_max that converges to it; warm-started every step
    (50 iterations at init, one per step) it tracks the kernel within 1%. Adam at lr 0.03 moves
    each σ_max by well over 10% in 30 steps, so a state that stopped following the kernels
    (e.g. still the vectors of the initial kernels) misses by far more than 1%.
    """
    net, params = dp.split(dp.mlp((20, 32, 32, 10), rngs=nnx.Rngs(0)))
    rule = dp.rules.damped_dual_prop("dp_top", beta=0.1)
    opt = optax.adam(0.03)
    step = make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    steps, batch = 30, 32
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 20)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(20, 10)), axis=1).astype(np.int32)  # a linear teacher
    hidden = (1, 2)  # the maps whose γ damps a hidden layer (map 0 reads the input)
    kernel = lambda p, k: p["layers"][k]["kernel"]  # noqa: E731
    start = {k: _top_singular_value(kernel(params, k)) for k in hidden}
    for i in range(steps):
        state, metrics = step(state, x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
    assert np.isfinite(metrics["loss"])
    assert isinstance(state.rule_state, DampingState)
    assert sorted(state.rule_state.vectors) == list(hidden)

    gammas = damping_norms(net, state.params, state.rule_state)
    for k in hidden:
        W = np.asarray(kernel(state.params, k), np.float64)
        sigma = _top_singular_value(W)
        assert abs(sigma / start[k] - 1) > 0.10, (k, start[k], sigma)  # the kernels moved
        # one more power step by hand from the state's vector: v ↦ v W, γ = √‖(v W) Wᵀ‖
        v = np.asarray(state.rule_state.vectors[k], np.float64)
        assert v.shape == (1, W.shape[0])
        gamma_by_hand = np.sqrt(np.linalg.norm((v @ W) @ W.T))
        gamma = float(gammas[f"gamma/{k}"])
        np.testing.assert_allclose(gamma, gamma_by_hand, rtol=1e-5)
        assert abs(gamma / sigma - 1) < 0.01, (k, gamma, sigma)


# ------------------------------------------------------------------ kill and resume


def _rows(workdir) -> list[dict]:
    with (workdir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        del row["epoch_time_s"]  # the one column that is a clock
    return rows


def test_killed_damped_run_resumes_bit_for_bit(fmnist_small, tmp_path):
    config = TrainConfig(
        model="mlp", widths=(32,), max_train=600, epochs=3, batch_size=50, feed="host",
        rule=dp.rules.damped_dual_prop("dp_top", beta=0.1), learning_rate=3e-3,
    )  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = train_and_evaluate(config, straight, dataset=fmnist_small, plots=False)
    # the killed run: its epoch-1 checkpoint is on disk, then it is resumed to 3 epochs
    train_and_evaluate(config.replace(epochs=1), killed, dataset=fmnist_small, plots=False)
    assert checkpoints.latest_epoch(killed) == 1
    resumed = train_and_evaluate(config, killed, resume=True, dataset=fmnist_small, plots=False)

    _, a, _ = checkpoints.load_checkpoint(straight)
    _, b, _ = checkpoints.load_checkpoint(killed)
    assert isinstance(a["rule_state"], DampingState) and sorted(a["rule_state"].vectors) == [1]
    chex.assert_trees_all_equal(a["params"], b["params"])
    chex.assert_trees_all_equal(a["rule_state"], b["rule_state"])
    chex.assert_trees_all_equal(a, b)  # optimizer state and best parameters too

    rows_a, rows_b = _rows(straight), _rows(killed)
    assert [r["epoch"] for r in rows_a] == ["1", "2", "3"] == [r["epoch"] for r in rows_b]
    assert "rule/gamma/1" in rows_a[0]
    assert rows_a[1:] == rows_b[1:]
    assert resumed["test_accuracy"] == done["test_accuracy"]
    assert resumed["test_loss"] == done["test_loss"]
