"""The training loop: one epoch of jitted steps over host batches. Used by ``train_and_evaluate``,
the benchmark and the multi-device throughput script, so all three time the same work.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dualprop_jax import parallel as par
from dualprop_jax.data import Dataset
from dualprop_jax.errors import DivergenceError
from dualprop_jax.input_pipeline import epoch_order, step_key
from dualprop_jax.steps import TrainState, TrainStep


@dataclasses.dataclass
class EpochResult:
    """What one epoch leaves: the new state, its mean training loss and accuracy, and timings.

    ``timed_s`` runs from the end of the first step (compilation excluded) to the end of the
    epoch, over ``timed_steps`` = steps - 1 steps; ``diagnostics`` holds the alignment records.
    """

    state: TrainState
    loss: float
    accuracy: float
    time_s: float
    timed_steps: int
    timed_s: float
    diagnostics: list[dict]


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
) -> EpochResult:
    """Run training epoch ``epoch`` (1-based) of ``dataset.x_train``.

    The batches are :func:`~dualprop_jax.input_pipeline.epoch_order` ``(seed, epoch)``; step i
    of the epoch has global number g = (epoch-1)·steps + i and augmentation key
    ``step_key(seed, g)``. Every ``log_every`` steps the running mean loss is checked (NaN/Inf
    raises :class:`DivergenceError`) and reported to ``on_progress``. ``diagnostics = (fn,
    every)`` records ``fn(params, x, y)`` (per-leaf cosines) every ``every`` global steps.
    """
    order = epoch_order(len(dataset.x_train), batch_size, seed, epoch)
    sharding, throttle = par.batch_sharding(mesh), par.StepThrottle(mesh)
    loss_sum, correct_sum, seen = jnp.zeros(()), jnp.zeros((), jnp.int32), 0
    records: list[dict] = []
    t0 = t_first = time.perf_counter()
    for i, idx in enumerate(order):
        global_step = (epoch - 1) * len(order) + i
        x = par.global_array(dataset.images("train", idx), sharding)  # standardised per batch
        y = par.global_array(dataset.y_train[idx], sharding)
        key = step_key(seed, global_step) if step.augment else None
        state, metrics = step(state, x, y, key)
        loss_sum, correct_sum = loss_sum + metrics["loss"], correct_sum + metrics["correct"]
        throttle(metrics["loss"])
        seen += len(idx)
        if i == 0:
            jax.block_until_ready(state.params)
            t_first = time.perf_counter()
        if diagnostics is not None and global_step % diagnostics[1] == 0:
            cos = jax.device_get(diagnostics[0](state.params, x, y))
            records.append({"step": global_step, "epoch": epoch, "cosine": _floats(cos)})
        if (i + 1) % log_every == 0 or i + 1 == len(order):
            mean_loss = float(loss_sum) / (i + 1)
            if not math.isfinite(mean_loss):
                raise DivergenceError(
                    f"the training loss became {mean_loss} at epoch {epoch}, step {i + 1}."
                )
            if on_progress is not None:
                progress = dict(epoch=epoch, step=i + 1, steps=len(order), loss=mean_loss)
                on_progress(dict(progress, accuracy=int(correct_sum) / seen))
    jax.block_until_ready(state.params)
    t1 = time.perf_counter()
    return EpochResult(
        state=state,
        loss=float(loss_sum) / len(order),
        accuracy=int(correct_sum) / seen,
        time_s=t1 - t0,
        timed_steps=len(order) - 1,
        timed_s=t1 - t_first if len(order) > 1 else 0.0,
        diagnostics=records,
    )


def _floats(tree: dict) -> dict[str, float]:
    return {k: float(v) for k, v in tree.items()}
