"""Data parallelism: a 1-D mesh over devices, shardings, global arrays, the queued-step bound.

The batch is sharded along the mesh axis ``"data"``; parameters and optimizer state are
replicated. ``mesh=None`` everywhere means one device and no shardings.

Hand-written data parallelism over a rule's gradient (the library's own step needs neither):

* ``jax.pmap`` with parameters broadcast (``in_axes=(None, 0, 0)``): average the per-device
  gradients with ``lax.pmean(grads, axis)``.
* ``jax.shard_map`` with replicated parameters (``in_specs=P()``): JAX *sums* the cotangents
  of inputs that do not vary over the mesh axis, so a vjp with respect to replicated
  parameters comes back already summed over the N devices, and ``pmean`` of that is N times
  the gradient. Mark the parameters as varying first, ``params = as_varying(params, axis)``;
  then each device's gradient is its own and ``lax.pmean`` averages them.
"""

from __future__ import annotations

import collections
import numbers

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
"""The name of the mesh axis the batch is split over."""


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D data-parallel mesh (axis ``"data"``) over ``devices`` devices (default: all).

    In a multi-process run (``jax.distributed``) the mesh spans every process's devices.
    """
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not _positive_int(n):
        raise ValueError(f"devices={devices!r} is invalid: use None (all) or an integer >= 1.")
    if n > len(available):
        raise ValueError(
            f"{n} devices requested but only {len(available)} are available "
            f"({available[0].platform}); pass --devices {len(available)} or fewer. On CPU, set "
            f"JAX_NUM_CPU_DEVICES={n} before JAX starts to simulate more."
        )
    if jax.process_count() > 1 and n != len(available):
        raise ValueError(
            f"{n} devices requested, but a multi-process run uses every device of every process "
            f"({len(available)} over {jax.process_count()} processes); omit --devices, or "
            "change the number of processes or of devices per process."
        )
    return Mesh(np.asarray(available[:n]), (AXIS,))


def num_devices(mesh: Mesh | None) -> int:
    """The number of devices of ``mesh`` (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.devices.size)


def replicated(mesh: Mesh | None) -> NamedSharding | None:
    """The sharding of parameters and optimizer state: a full copy on every device."""
    return None if mesh is None else NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh | None) -> NamedSharding | None:
    """The sharding of a batch: split along its leading axis over the mesh's devices."""
    return None if mesh is None else NamedSharding(mesh, P(AXIS))


def check_divisible(batch_size: int, mesh: Mesh | None, what: str = "batch size") -> None:
    """The global batch must split evenly over the data-parallel devices."""
    n = num_devices(mesh)
    if batch_size % n:
        lo = batch_size - batch_size % n
        raise ValueError(
            f"the global {what} {batch_size} is not divisible by the {n} devices; use a "
            f"multiple of {n} such as {lo or n} or {lo + n}, or pass --devices."
        )


def global_array(x: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    """A global jax.Array from host data every process holds in full (single or multi-process).

    Each process copies only the slices its own devices hold. ``sharding=None``: the default
    device.
    """
    x = np.asarray(x)
    if sharding is None:
        return jax.device_put(x)
    if sharding.spec and sharding.spec[0] is not None:
        check_divisible(len(x), sharding.mesh, "batch size")
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def put_replicated(tree, mesh: Mesh | None):
    """``tree`` on every device of ``mesh`` (on the default device when ``mesh`` is None)."""
    return jax.device_put(tree, replicated(mesh)) if mesh is not None else tree


def put_scalars(tree, mesh: Mesh | None):
    """The scalar leaves of ``tree`` (a rule's α, β) on every device of ``mesh``, once.

    Python floats keep their weak type (as when passed to a jitted function), so the values
    promote as they would there. Across processes, ``jax.device_put`` of a Python scalar to a
    global sharding fails its equality check in this JAX, so each leaf becomes a global array of
    the default float dtype instead (every process holds the same value).
    """
    if mesh is None:
        return jax.device_put(tree)
    if jax.process_count() == 1:
        return jax.device_put(tree, replicated(mesh))
    dtype = jax.dtypes.canonicalize_dtype(np.float64)
    return jax.tree.map(lambda v: global_array(np.asarray(v, dtype), replicated(mesh)), tree)


def as_varying(tree, axis: str = AXIS):
    """``tree`` marked as varying over mesh axis ``axis`` inside ``shard_map``.

    A replicated input is "unvarying": its cotangent is summed over the axis. Cast to varying,
    its cotangent stays per device (see the module docstring). ``lax.pcast(..., to="varying")``
    where JAX has it, ``lax.pvary`` on older versions.
    """
    pcast = getattr(jax.lax, "pcast", None)
    if pcast is not None:
        return pcast(tree, axis, to="varying")
    return jax.lax.pvary(tree, axis)  # pragma: no cover (older JAX)


def steps_in_flight(mesh: Mesh | None) -> int | None:
    """How many train steps a loop may queue before waiting for the oldest; None: no limit.

    2 on several CPU devices: with dozens of multi-device steps queued, XLA's CPU runtime can
    deadlock in the cross-device all-reduce (seen with jax 0.10.2 at 50 queued steps, never at
    20; the process aborts after 40 s in ``rendezvous.cc``). Two keep host and devices busy.
    """
    if mesh is None:
        return None
    return 2 if mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu" else None


class StepThrottle:
    """Keeps at most :func:`steps_in_flight` dispatched train steps queued on ``mesh``.

    Call ``throttle(metrics)`` after dispatching each step: where the mesh needs a bound it
    waits for the oldest queued step's output; elsewhere it does nothing.
    """

    def __init__(self, mesh: Mesh | None) -> None:
        self.limit = steps_in_flight(mesh)
        self._queued: collections.deque = collections.deque()

    def __call__(self, step_output) -> None:
        if self.limit:
            self._queued.append(step_output)
            if len(self._queued) >= self.limit:
                jax.block_until_ready(self._queued.popleft())
