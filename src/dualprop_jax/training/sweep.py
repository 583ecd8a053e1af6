"""Train a grid of models at once: many (α, β, seed) cells in one jitted, vmapped program.

α and β are pytree leaves of a rule (:mod:`dualprop_jax.rules`), so M rules that share
everything else stack into one rule whose leaves have shape (M,), and ``jax.vmap`` maps the
train step over it together with M parameter sets:

    grid = sweep.stack_rules([rules.dual_prop("dp", alpha=a, beta=b) for a, b in cells])
    states = sweep.init_states(net, [params_seed0, params_seed1, ...], grid, optax.adam(1e-3))
    states, losses = sweep.train_epoch(net, grid, optimizer, states, x, y, perm, batch_size)
    accuracy = sweep.accuracy(net, grid, states.params, x_test, y_test)    # shape (M,)

Every cell sees the same batches in the same order, and the whole epoch is one ``lax.scan``:
one compilation for the grid, one dispatch per epoch. A cell whose training diverges (a
non-finite loss) stays non-finite without touching the others; :func:`first_nonfinite` finds
the step where it happened. Rules of different static metadata (DP vs DP⊤, other passes or
schedules) make different programs: stack them in separate grids.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dualprop_jax.losses import labels_per_example, num_correct
from dualprop_jax.models import LayeredNet
from dualprop_jax.rules import Rule
from dualprop_jax.training.steps import TrainState, train_step


def stack_rules(rules: Sequence[Rule]) -> Rule:
    """One rule whose leaves (α, β, ...) are the M rules' leaves stacked: shape (M,).

    All rules must share their static metadata (class, variant, passes, schedule, loss, ...),
    which is what makes them one compiled program.
    """
    rules = list(rules)
    if not rules:
        raise ValueError("stack_rules needs at least one rule.")
    treedefs = {jax.tree.structure(r) for r in rules}
    if len(treedefs) != 1:
        labels = sorted({repr(jax.tree.structure(r)) for r in rules})
        raise ValueError(
            "stack_rules needs rules that differ only in their leaves (α, β); got rules with "
            f"different static settings: {labels}. Stack each kind in its own grid."
        )
    return jax.tree.map(lambda *v: jnp.stack([jnp.asarray(x, jnp.float32) for x in v]), *rules)


def grid_size(grid: Rule, default: int | None = None) -> int:
    """M, the number of cells of a stacked rule (``default`` for a rule without leaves, BP)."""
    leaves = jax.tree.leaves(grid)
    if not leaves:
        if default is None:
            raise ValueError("this rule has no leaves (e.g. BP): pass the number of cells.")
        return default
    return int(jnp.shape(leaves[0])[0])


def stack_trees(trees: Sequence) -> object:
    """Stack M pytrees of the same structure along a new leading axis."""
    return jax.tree.map(lambda *v: jnp.stack(v), *trees)


def unstack(tree, i: int):
    """Cell ``i`` of a stacked pytree."""
    return jax.tree.map(lambda v: v[i], tree)


def init_states(
    net: LayeredNet, params: Sequence, grid: Rule, optimizer: optax.GradientTransformation
) -> TrainState:
    """The stacked :class:`TrainState` of M cells: cell i starts from ``params[i]``.

    Pass the same parameters several times to train several rules from one initialisation
    (a fair comparison), or one parameter set per seed.
    """
    stacked = stack_trees(params)
    m = grid_size(grid, len(params))
    if m != len(params):
        raise ValueError(f"the grid has {m} rules but {len(params)} parameter sets were given.")

    def one(rule, p):
        return TrainState(p, optimizer.init(p), rule.init(net, p))

    return jax.vmap(one)(grid, stacked)


@functools.partial(
    jax.jit, static_argnames=("net", "optimizer", "batch_size"), donate_argnames=("states",)
)
def train_epoch(
    net: LayeredNet,
    grid: Rule,
    optimizer: optax.GradientTransformation,
    states: TrainState,
    x: jax.Array,
    y: jax.Array,
    perm: jax.Array,
    batch_size: int,
) -> tuple[TrainState, jax.Array]:
    """One epoch of every cell: batches ``x[perm[i·B:(i+1)·B]]``, i = 0..⌊N/B⌋-1, in a scan.

    The step is :func:`~dualprop_jax.training.steps.train_step`, vmapped over the cells; the
    input ``states`` are donated (deleted). Returns the new states and the batch-mean train
    loss of every step and cell, shape (steps, M). ``optimizer`` must be hashable (optax's
    transformations are, as long as the same object is passed each epoch).
    """
    steps = perm.shape[0] // batch_size
    batches = perm[: steps * batch_size].reshape(steps, batch_size)
    vstep = jax.vmap(train_step(net, optimizer), in_axes=(0, 0, None, None, None))

    def body(states, idx):
        states, metrics = vstep(grid, states, x[idx], y[idx], None)
        return states, metrics["loss"]

    return jax.lax.scan(body, states, batches)


@functools.partial(jax.jit, static_argnames=("net", "batch_size"))
def accuracy(net: LayeredNet, grid: Rule, params, x, y, batch_size: int = 1000) -> jax.Array:
    """Fraction of ``x`` that each cell classifies correctly (``rule.predict``), shape (M,)
    (of every position, for sequence labels (N, T)).

    ``len(x)`` must be a multiple of ``batch_size`` (the test sets here: 10 000 images).
    """
    n = x.shape[0]
    if n % batch_size:
        raise ValueError(
            f"accuracy needs len(x) = {n} to be a multiple of batch_size={batch_size}."
        )
    xb = x.reshape(n // batch_size, batch_size, *x.shape[1:])
    yb = y.reshape(n // batch_size, batch_size, *y.shape[1:])
    def correct(rule, p, xs, ys):
        return num_correct(rule.predict(net, p, xs), ys)

    vcorrect = jax.vmap(correct, in_axes=(0, 0, None, None))

    def body(total, batch):
        return total + vcorrect(grid, params, *batch), None

    m = jax.tree.leaves(params)[0].shape[0]
    total, _ = jax.lax.scan(body, jnp.zeros((m,), jnp.int32), (xb, yb))
    return total / (n * labels_per_example(y))


def first_nonfinite(losses: np.ndarray) -> np.ndarray:
    """Index of the first non-finite entry along axis 0 of ``losses`` (steps, M); -1 where none."""
    bad = ~np.isfinite(np.asarray(losses))
    return np.where(bad.any(0), bad.argmax(0), -1)
