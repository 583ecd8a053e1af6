"""Evaluation on the device: a split copied once, its batches summed by one jitted scan.

:func:`~dualprop_jax.training.steps.evaluate` with ``feed="device"`` (or ``"auto"``, where the
split fits the device feed's budget) runs here. The split is copied to the device(s) as stored
(:func:`dualprop_jax.data.device.resident` for a :class:`~dualprop_jax.data.Dataset`'s split,
kept across calls; :func:`dualprop_jax.data.device.put` for a pair of arrays), and

* its ``full = n // B`` full batches of B examples run in one jitted ``lax.scan``: batch i is
  rows ``[iB, (i+1)B)``, standardised on the device with the float32 operations of the host
  (``dualprop_jax.data.device.standardise``), scored by the same function as the host
  path's evaluation step, its summed loss and correct count kept per batch;
* the last ``n - full·B`` rows run as one more batch, padded only to a multiple of the mesh's
  devices (a masked row adds nothing).

The per-batch sums are added on the host in float64, in batch order, as the host path adds
them, so the two paths agree to the rounding of one batch's float32 sum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dualprop_jax.data import device as device_data
from dualprop_jax.training import parallel as par


def eval_plan(n: int, batch_size: int, devices: int = 1) -> tuple[int, int, int]:
    """``(B, full, last)`` for ``n`` examples: the batch B = min(``batch_size``, n) rounded up to
    a multiple of ``devices``, ``full = n // B`` full batches, and the last batch's size
    ``last``: the ``n - full·B`` remaining rows rounded up to a multiple of ``devices`` (0 when
    none remain). A 20-image split at batch 1000 is one batch of 20."""
    if batch_size < 1:
        raise ValueError(f"the evaluation batch size must be positive, got {batch_size}.")
    batch = min(batch_size, n)
    batch += (-batch) % devices
    full = n // batch if batch else 0
    rest = n - full * batch
    return batch, full, rest + (-rest) % devices


@functools.lru_cache(maxsize=16)
def _programs(score: Callable, mesh: Mesh | None, batch: int):
    """The jitted ``(full batches, last batch)`` programs of ``score`` at batch ``batch``."""
    sharding = par.batch_sharding(mesh)

    def rows(data: device_data.DeviceData, start, size: int):
        x = jax.lax.dynamic_slice_in_dim(data.x, start, size)
        y = jax.lax.dynamic_slice_in_dim(data.y, start, size)
        if data.mean is not None:
            x = device_data.standardise(x, data.mean, data.std)
        if sharding is not None:
            x, y = jax.lax.with_sharding_constraint((x, y), sharding)
        return x, y

    def full_batches(rule, params, data, count: int):
        def body(carry, i):
            x, y = rows(data, i * batch, batch)
            return carry, score(rule, params, x, y, jnp.ones(batch, bool))

        return jax.lax.scan(body, None, jnp.arange(count))[1]

    def last_batch(rule, params, data, start: int, size: int):
        n = data.y.shape[0]
        x, y = rows(data, start, n - start)
        pad = size - (n - start)
        if pad:
            x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
            y = jnp.concatenate([y, jnp.zeros((pad, *y.shape[1:]), y.dtype)])
        return score(rule, params, x, y, jnp.arange(size) < n - start)

    return (
        jax.jit(full_batches, static_argnums=3),
        jax.jit(last_batch, static_argnums=(3, 4)),
    )


def device_sums(
    score: Callable, rule, params, data: device_data.DeviceData, batch_size: int,
    mesh: Mesh | None = None,
) -> tuple[float, int]:  # fmt: skip
    """``(Σ loss, # correct)`` over the split ``data`` on the device, batches by
    :func:`eval_plan`; ``score(rule, params, x, y, mask) -> (Σ loss, # correct)`` is the
    evaluation step's function (not jitted)."""
    n = int(data.y.shape[0])
    batch, full, last = eval_plan(n, batch_size, par.num_devices(mesh))
    full_program, last_program = _programs(score, mesh, batch)
    sums = []
    if full:
        losses, correct = jax.device_get(full_program(rule, params, data, full))
        sums += list(zip(losses.tolist(), correct.tolist(), strict=True))
    if last:
        loss, correct = jax.device_get(last_program(rule, params, data, full * batch, last))
        sums.append((float(loss), int(correct)))
    return sum(s[0] for s in sums), sum(int(s[1]) for s in sums)


__all__ = ["device_sums", "eval_plan"]
