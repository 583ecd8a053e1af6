"""The vmapped grid trainer and the fixed-point diagnostic, against independent computations.

Oracles:
- one cell of a stacked grid trains exactly as the library's own single-model train step
  (``make_train_step``) does on the same batches: vmap must not mix cells or reorder data;
- ``first_nonfinite`` against a hand-made loss array;
- ``core.pass_residuals`` against the differences of ``infer_dyads`` run with p and p-1 passes;
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dualprop_jax import core, models, rules
from dualprop_jax.training import sweep
from dualprop_jax.training.steps import TrainState, make_train_step

WIDTHS = (20, 16, 12, 5)
N, BATCH = 60, 20


def _net(seed):
    return models.split(models.mlp(WIDTHS, rngs=nnx.Rngs(seed)))


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, WIDTHS[0])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, WIDTHS[-1], N).astype(np.int32))
    return x, y


def test_each_grid_cell_trains_as_the_single_model_step_does():
    x, y = _data()
    net, _ = _net(0)
    cells = [
        (rules.dual_prop("dp", alpha=1.0, beta=0.5), 0),
        (rules.dual_prop("dp", alpha=0.25, beta=0.01), 1),
        (rules.dual_prop("dp", alpha=0.5, beta=1.0), 0),
    ]
    optimizer = optax.adam(1e-2)
    grid = sweep.stack_rules([r for r, _ in cells])
    states = sweep.init_states(net, [_net(s)[1] for _, s in cells], grid, optimizer)
    perm = jax.random.permutation(jax.random.key(3), N)
    for _ in range(2):
        states, losses = sweep.train_epoch(net, grid, optimizer, states, x, y, perm, BATCH)
    assert losses.shape == (N // BATCH, len(cells))
    for i, (rule, seed) in enumerate(cells):
        params = _net(seed)[1]
        step = make_train_step(net, rule, optimizer)
        state = TrainState.create(net, params, rule, optimizer)
        expected = []
        for _ in range(2):
            expected = []
            for b in range(N // BATCH):
                idx = perm[b * BATCH : (b + 1) * BATCH]
                state, metrics = step(state, x[idx], y[idx])
                expected.append(float(metrics["loss"]))
        np.testing.assert_allclose(np.asarray(losses[:, i]), expected, rtol=2e-5, atol=1e-6)
        for got, want in zip(
            jax.tree.leaves(sweep.unstack(states.params, i)),
            jax.tree.leaves(state.params),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    # accuracy: argmax of each cell's own forward pass
    acc = sweep.accuracy(net, grid, states.params, x, y, batch_size=20)
    for i in range(len(cells)):
        logits = net.forward(sweep.unstack(states.params, i), x)
        assert float(acc[i]) == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == y)))


def test_backprop_cells_vmap_over_seeds_only():
    x, y = _data()
    net, _ = _net(0)
    optimizer = optax.sgd(0.1)
    grid = sweep.stack_rules([rules.backprop()] * 2)
    states = sweep.init_states(net, [_net(0)[1], _net(1)[1]], grid, optimizer)
    states, losses = sweep.train_epoch(net, grid, optimizer, states, x, y, jnp.arange(N), BATCH)
    ref = _net(1)[1]
    step = make_train_step(net, rules.backprop(), optimizer)
    state = TrainState.create(net, ref, rules.backprop(), optimizer)
    for b in range(N // BATCH):
        state, m = step(state, x[b * BATCH : (b + 1) * BATCH], y[b * BATCH : (b + 1) * BATCH])
        assert float(losses[b, 1]) == pytest.approx(float(m["loss"]), rel=1e-5)


def test_stack_rules_refuses_rules_of_different_static_settings():
    with pytest.raises(ValueError, match="differ only in their leaves"):
        sweep.stack_rules([rules.dual_prop("dp"), rules.dual_prop("dp_top")])
    with pytest.raises(ValueError, match="at least one rule"):
        sweep.stack_rules([])
    net, params = _net(0)
    grid = sweep.stack_rules([rules.dual_prop("dp")] * 2)
    with pytest.raises(ValueError, match="3 parameter sets"):
        sweep.init_states(net, [params] * 3, grid, optax.sgd(0.1))


def test_first_nonfinite_finds_the_first_bad_step_per_cell():
    losses = np.array([[1.0, 1.0, 1.0], [np.nan, 1.0, 2.0], [np.inf, np.inf, 3.0]])
    np.testing.assert_array_equal(sweep.first_nonfinite(losses), [1, 2, -1])


@pytest.mark.parametrize(
    ("variant", "schedule", "sweep_first"),
    [("dp", "bottom_up", False), ("dp_top", "alternating", True)],
)
def test_pass_residuals_are_the_steps_between_consecutive_pass_counts(
    variant, schedule, sweep_first
):
    x, y = _data()
    net, params = _net(0)
    base = dict(alpha=1.0, beta=0.7, schedule=schedule, sweep=sweep_first, unroll=1)
    out = core.pass_residuals(
        net, params, x, y, rules.dual_prop(variant, passes=1, **base), passes=3
    )

    def states(p):
        """Dyads of layers 1..L after p passes, by the library's own inference."""
        cfg = rules.dual_prop(variant, passes=p, **base) if p else rules.dual_prop(variant)
        d = core.infer_dyads(net, params, x, y, cfg.replace(alpha=1.0, beta=0.7))
        return d.s_plus[1:] + d.s_minus[1:]

    # with the sweep, pass 1 starts from the one-sweep dyads (passes = 0); without it (fwK)
    # the start is not a rule of its own, so the check begins at pass 2
    for p in range(1 if sweep_first else 2, 4):
        now, before = states(p), states(p - 1)
        want = jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(now, before, strict=True)))
        assert float(out["residual"][p - 1]) == pytest.approx(float(want) / np.sqrt(N), rel=1e-5)
        half = len(now) // 2
        delta = jnp.sqrt(
            sum(jnp.sum((a - b) ** 2) for a, b in zip(now[:half], now[half:], strict=True))
        )
        assert float(out["delta"][p - 1]) == pytest.approx(float(delta) / np.sqrt(N), rel=1e-5)
