"""The training loop: one epoch of jitted steps, fed from the host or from the device. Used by
``train_and_evaluate``, the benchmark and the multi-device throughput script, so all three time
the same work.

Two feeds give the same batches, keys and (to float rounding) parameters:

* ``"host"``: each batch is gathered and standardised on the host, copied to the device(s) and
  passed to the step; one dispatch per step.
* ``"device"``: the training split lives on the device(s) and the steps run in chunks of one
  jitted program each (:mod:`dualprop_jax.data.device`); one dispatch per chunk.

Either feed yields after the steps where the host acts (the first step, every ``log_every``,
diagnostics steps, the last); :func:`train_epoch` does that work in one place, including the
divergence check: a NaN/Inf running mean loss, or one more than ``GROWTH_LIMIT`` (1000) times
max(1, the run's first loss), raises :class:`DivergenceError`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dualprop_jax.data import Dataset
from dualprop_jax.data import device as device_data
from dualprop_jax.data.pipeline import epoch_order, step_key
from dualprop_jax.errors import DivergenceError
from dualprop_jax.losses import labels_per_example
from dualprop_jax.training import parallel as par
from dualprop_jax.training.steps import TrainState, TrainStep

# (steps done, state, Σ loss, Σ correct, () -> the last step's (x, y)) after a step or a chunk
_Done = tuple[int, TrainState, jax.Array, jax.Array, Callable[[], tuple]]

GROWTH_LIMIT = 1e3
"""A finite running mean loss above ``GROWTH_LIMIT · max(1, start loss)`` is a divergence: a
cross-entropy starts near ln(classes) and falls, so normal training never gets there."""


@dataclasses.dataclass
class EpochResult:
    """What one epoch leaves: the new state, its mean training loss and accuracy, and timings.

    ``timed_s`` runs from the end of the first step (compilation excluded) to the end of the
    epoch, over ``timed_steps`` = steps - 1 steps; ``diagnostics`` holds the alignment records;
    ``feed`` is the feed that ran, ``"device"`` or ``"host"``; ``start_loss`` is the baseline
    of the divergence check (the ``start_loss`` passed in, else this epoch's first-step loss).
    """

    state: TrainState
    loss: float
    accuracy: float
    time_s: float
    timed_steps: int
    timed_s: float
    diagnostics: list[dict]
    feed: str = "host"
    start_loss: float | None = None


def train_epoch(
    step: TrainStep,
    state: TrainState,
    dataset: Dataset,
    *,
    batch_size: int,
    epoch: int,
    seed: int = 0,
    mesh: Mesh | None = None,
    log_every: int = 20,
    on_progress: Callable[[dict], None] | None = None,
    diagnostics: tuple[Callable, int] | None = None,
    feed: str = "auto",
    start_loss: float | None = None,
) -> EpochResult:
    """Run training epoch ``epoch`` (1-based) of ``dataset.x_train``.

    The batches are :func:`~dualprop_jax.data.pipeline.epoch_order` ``(seed, epoch)``; step i
    of the epoch has global number g = (epoch-1)·steps + i and augmentation key
    ``step_key(seed, g)``. Every ``log_every`` steps the running mean loss is checked (NaN/Inf,
    or above ``GROWTH_LIMIT`` (1000) × max(1, ``start_loss``: the run's first loss, default this
    epoch's first) raises :class:`DivergenceError`) and reported to ``on_progress``.
    ``diagnostics = (fn, every)`` records ``fn(params, x, y)`` (per-leaf cosines) every
    ``every`` global steps. ``feed``: ``"host"``, ``"device"`` (the training split kept on the
    device, see :mod:`dualprop_jax.data.device`) or ``"auto"``
    (:func:`~dualprop_jax.data.device.choose_feed`: the device when the split fits its budget).
    The input ``state`` is donated when ``step`` donates.
    """
    feed = device_data.choose_feed(feed, dataset, mesh)
    order = epoch_order(len(dataset.x_train), batch_size, seed, epoch)
    steps, first_step = len(order), (epoch - 1) * len(order)
    scored = batch_size * labels_per_example(dataset.y_train[:1])  # predictions per batch
    every = diagnostics[1] if diagnostics is not None else 0
    if feed == "device":
        stops = device_data.chunk_stops(steps, log_every, first_step, every)
        done = _device_feed(step, state, dataset, order, stops, first_step, seed, mesh)
    else:
        done = _host_feed(step, state, dataset, order, first_step, seed, mesh)
    records, t0 = [], time.perf_counter()  # t_first: set at step 1, which every epoch has
    for n, state, loss_sum, correct_sum, last_batch in done:
        if n == 1:
            start_loss, t_first = _first_step(state, loss_sum, start_loss)
        if every and (first_step + n - 1) % every == 0:
            cos = jax.device_get(diagnostics[0](state.params, *last_batch()))
            records.append({"step": first_step + n - 1, "epoch": epoch, "cosine": _floats(cos)})
        if n % log_every == 0 or n == steps:
            _report(on_progress, epoch, n, steps, loss_sum, correct_sum, scored, start_loss)
    jax.block_until_ready(state.params)
    t1 = time.perf_counter()
    return EpochResult(
        state=state,
        loss=float(loss_sum) / steps,
        accuracy=int(correct_sum) / (steps * scored),
        time_s=t1 - t0,
        timed_steps=steps - 1,
        timed_s=t1 - t_first if steps > 1 else 0.0,
        diagnostics=records,
        feed=feed,
        start_loss=start_loss,
    )


def _first_step(state, loss_sum, start_loss) -> tuple[float, float]:
    """After the epoch's first step (compiled and run): ``(start_loss or that step's loss, the
    time)``. The loss is computed with the parameters waited for, so reading it costs no wait."""
    jax.block_until_ready(state.params)
    start = float(loss_sum) if start_loss is None else start_loss
    return start, time.perf_counter()


def _report(on_progress, epoch, n, steps, loss_sum, correct_sum, scored, start) -> None:
    """Check the running mean loss after step ``n`` of the epoch (NaN/Inf, or above
    ``GROWTH_LIMIT`` × max(1, ``start``), raises :class:`DivergenceError`) and pass it, with the
    running accuracy (``scored`` predictions per batch), to ``on_progress``."""
    mean_loss = float(loss_sum) / n
    if not math.isfinite(mean_loss):
        raise DivergenceError(f"the training loss became {mean_loss} at epoch {epoch}, step {n}.")
    if start is not None and mean_loss > GROWTH_LIMIT * max(1.0, start):
        raise DivergenceError(
            f"the training loss grew from {start:.3g} to {mean_loss:.3g} at epoch {epoch}, step "
            f"{n} (more than {GROWTH_LIMIT:g}x its start, max(1, {start:.3g})): it diverged."
        )
    if on_progress is not None:
        progress = dict(epoch=epoch, step=n, steps=steps, loss=mean_loss)
        on_progress(dict(progress, accuracy=int(correct_sum) / (n * scored)))


def _host_feed(step, state, dataset, order, first_step, seed, mesh) -> Iterator[_Done]:
    """Each batch taken and standardised on the host, put on the devices, then stepped."""
    sharding, throttle = par.batch_sharding(mesh), par.StepThrottle(mesh)
    loss_sum, correct_sum = jnp.zeros(()), jnp.zeros((), jnp.int32)
    for i, idx in enumerate(order):
        x = par.global_array(dataset.images("train", idx), sharding)  # standardised per batch
        y = par.global_array(dataset.y_train[idx], sharding)
        key = step_key(seed, first_step + i) if step.augment else None
        state, metrics = step(state, x, y, key)
        loss_sum, correct_sum = loss_sum + metrics["loss"], correct_sum + metrics["correct"]
        throttle(metrics["loss"])
        yield i + 1, state, loss_sum, correct_sum, lambda x=x, y=y: (x, y)


def _device_feed(step, state, dataset, order, stops, first_step, seed, mesh) -> Iterator[_Done]:
    """The training split on the devices, the epoch in chunks ending at ``stops``."""
    data = device_data.resident(dataset, mesh)
    run = device_data.runner(step, mesh)
    plan, carry = device_data.start_epoch(run, state, data, order, stops, first_step, seed, mesh)
    for stop in stops:
        carry = run.chunk(carry, data, plan, run.rule)
        state, loss_sum, correct_sum, chunk = carry

        def last_batch(chunk=chunk):  # called before the next chunk donates the carry
            return run.last_batch(data, plan, chunk)

        yield stop, state, loss_sum, correct_sum, last_batch


def _floats(tree: dict) -> dict[str, float]:
    return {k: float(v) for k, v in tree.items()}
