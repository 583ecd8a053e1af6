"""Device-resident training data: the training split copied to the device(s) once, and each
epoch run as a few jitted chunks of steps, with no host round trip per step.

The host feed (:func:`~dualprop_jax.training.loop.train_epoch` with ``feed="host"``) gathers and
standardises every batch on the host, copies it to the device and then calls the step. The
device feed instead:

* copies the training split once per dataset and mesh (:func:`resident`), as stored: the uint8
  pixels with the train ``mean`` and ``std`` of :class:`~dualprop_jax.data.StandardisedImages`
  (float data as its float32 array), labels int32, replicated on every device of the mesh;
* once per epoch copies the epoch's order, :func:`~dualprop_jax.data.pipeline.epoch_order`
  (the one definition of it, computed on the host), and where its chunks end, with one explicit
  ``jax.device_put`` (:func:`start_epoch`);
* runs the steps ``[bounds[c], bounds[c+1])`` of chunk ``c`` in one jitted program
  (``Runner.chunk``), a ``lax.fori_loop`` whose step i gathers batch ``order[i]``,
  standardises it with the float32 operations of :func:`~dualprop_jax.data.standardise`,
  calls the train step (which augments with ``fold_in(key(seed), first_step + i)``, the key of
  :func:`~dualprop_jax.data.pipeline.step_key`), and adds its loss and correct count to running
  sums. The chunk number ``c`` travels on the device in the carry (state, sums, ``c``; donated),
  so chunks of any length, in any epoch, run one compiled program and take no host value.

Chunks end where the host must act (:func:`chunk_stops`): after the first step (timings
exclude it, as on the host feed), every ``log_every`` steps (progress and the divergence
check), after each diagnostics step, and at the end of the epoch. Each chunk end waits for the
chunk, so at most one chunk is queued and multi-device CPU runs need no
:class:`~dualprop_jax.training.parallel.StepThrottle`.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dualprop_jax.data import Dataset, StandardisedImages
from dualprop_jax.errors import DataError
from dualprop_jax.training import parallel as par
from dualprop_jax.training.config import FEEDS
from dualprop_jax.training.steps import TrainState, TrainStep

BUDGET_FRACTION = 0.25
"""``feed="auto"`` keeps the training set on the device when it takes at most this fraction of
the device's memory (``memory_stats()["bytes_limit"]``)."""
DEFAULT_BUDGET_BYTES = 2 * 2**30
"""The budget of ``feed="auto"`` where the device reports no memory limit (CPU)."""


class DeviceData(NamedTuple):
    """A training split on the device(s): ``x`` as stored (uint8 or float32), ``y`` int32, and
    for uint8 pixels the ``mean`` and ``std`` that standardise them (else None)."""

    x: jax.Array
    y: jax.Array
    mean: jax.Array | None
    std: jax.Array | None


class EpochPlan(NamedTuple):
    """One epoch's order on the device: ``order`` (steps, batch) int32; ``bounds`` (steps + 1,)
    int32, chunk ``c`` runs steps ``[bounds[c], bounds[c+1])`` (padded with ``steps``);
    ``first_step`` the global number of step 0; ``key`` the uint32 data of ``key(seed)``."""

    order: jax.Array
    bounds: jax.Array
    first_step: jax.Array
    key: jax.Array


class Carry(NamedTuple):
    """What a chunk updates: the train state, the epoch's running loss and correct sums, and
    the number of the next chunk."""

    state: TrainState
    loss_sum: jax.Array
    correct_sum: jax.Array
    chunk: jax.Array


# ---------------------------------------------------------------------------------------------
# Which feed
# ---------------------------------------------------------------------------------------------


def split_bytes(x, y) -> int:
    """Bytes of a split ``(x, y)`` as the device copy holds it: x as stored (uint8 pixels, or
    its array) and integer labels as int32 (other targets as they are)."""
    pixels = x.raw.nbytes if isinstance(x, StandardisedImages) else np.asarray(x).nbytes
    y = np.asarray(y)
    labels = y.size * 4 if np.issubdtype(y.dtype, np.integer) else y.nbytes
    return int(pixels + labels)


def stored_bytes(dataset: Dataset) -> int:
    """Bytes of the training split as stored (uint8 pixels, or float32) plus its int32 labels:
    what the device feed copies to each device."""
    return split_bytes(dataset.x_train, dataset.y_train)


def device_memory(mesh: Mesh | None) -> int | None:
    """The smallest ``bytes_limit`` among this process's devices of ``mesh`` (the default
    device when None); None where a device reports none (CPU)."""
    devices = [jax.devices()[0]] if mesh is None else list(mesh.devices.flat)
    limits = []
    for device in devices:
        if device.process_index != jax.process_index():
            continue
        try:
            stats = device.memory_stats()
        except Exception:  # a backend may not implement it
            stats = None
        if not stats or "bytes_limit" not in stats:
            return None
        limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def default_budget(mesh: Mesh | None) -> int:
    """Bytes the training set may take on each device for ``feed="auto"`` to choose the device.

    ``BUDGET_FRACTION`` (a quarter) of the device's memory: the set is replicated on every
    device, and the other three quarters stay for parameters, optimizer state and activations
    (a VGG16 step at batch 128 needs a few GB), so the model never loses memory to a set large
    enough to matter. CPU devices report no limit; their memory is host RAM, which already holds
    the host copy of the set, so :data:`DEFAULT_BUDGET_BYTES` (2 GiB: Fashion-MNIST, CIFAR-10
    and ImageNet 32x32 as uint8 fit) caps what ``auto`` doubles there.
    """
    limit = device_memory(mesh)
    return int(BUDGET_FRACTION * limit) if limit else DEFAULT_BUDGET_BYTES


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (not POSIX)
        return None


def describe_bytes(n: float) -> str:
    """``n`` bytes for people: ``0.5 MB``, ``47 MB``, ``1.2 GB``."""
    if n >= 1e9:
        return f"{n / 1e9:,.1f} GB"
    return f"{n / 1e6:.1f} MB" if n < 1e7 else f"{n / 1e6:,.0f} MB"


def choose_feed(
    feed: str, dataset: Dataset, mesh: Mesh | None = None, *, budget: int | None = None
) -> str:
    """``"device"`` or ``"host"``: how ``train_epoch`` feeds ``dataset``'s training split.

    ``"auto"`` is ``"device"`` when :func:`stored_bytes` is at most ``budget`` (default:
    :func:`default_budget`); in a multi-process run process 0 decides for all, so every process
    runs the same programs. An explicit ``"device"`` for a set larger than the device's memory
    (or, on CPU, the host's) raises :class:`DataError` naming ``--feed host``.
    """
    if feed not in FEEDS:
        raise ValueError(f"feed={feed!r} is invalid: feed must be one of {FEEDS}.")
    if feed == "host":
        return "host"
    size = stored_bytes(dataset)
    if feed == "device":
        capacity = device_memory(mesh) or _host_memory()
        if capacity is not None and size > capacity:
            raise DataError(
                f"the training set takes {describe_bytes(size)} as stored, more than the "
                f"{describe_bytes(capacity)} of memory of each device, so it cannot be kept on "
                "the device (feed 'device'); "
                "use --feed host (feed='host'), which copies one batch at a time."
            )
        return "device"
    choice = size <= (default_budget(mesh) if budget is None else budget)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        choice = bool(multihost_utils.broadcast_one_to_all(np.int32(choice)))
    return "device" if choice else "host"


# ---------------------------------------------------------------------------------------------
# The data and the epoch on the device
# ---------------------------------------------------------------------------------------------

_resident: dict[str, dict[str, Any]] = {}  # per split, the one copy kept: ref, mesh, data


def resident(dataset: Dataset, mesh: Mesh | None, split: str = "train") -> DeviceData:
    """``dataset``'s split ``split`` (default the training split) on every device of ``mesh``,
    copied on the first call for this dataset object, split and mesh and reused after. One set
    is kept per split: another dataset (or mesh) replaces it, and it is dropped when
    ``dataset`` is garbage-collected; arrays changed in place are not seen. Every process of a
    multi-process run holds the whole split (as it does on the host)."""
    kept = _resident.get(split, {})
    ref = kept.get("ref")
    if ref is not None and ref() is dataset and kept["mesh"] == mesh:
        return kept["data"]
    x, y = dataset.split(split)
    _resident.pop(split, None)
    data = put(x, y, mesh)
    forget = functools.partial(_forget, split)
    _resident[split] = dict(ref=weakref.ref(dataset, forget), mesh=mesh, data=data)
    return data


def put(x, y, mesh: Mesh | None) -> DeviceData:
    """``(x, y)`` on every device of ``mesh`` as stored: uint8
    :class:`~dualprop_jax.data.StandardisedImages` with their ``mean`` and ``std``, else x as
    its array; integer labels as int32, other targets (one-hot, soft) as they are."""
    y = np.asarray(y)
    y = y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y
    if isinstance(x, StandardisedImages):
        host = DeviceData(x.raw, y, x.mean, x.std)
    else:
        host = DeviceData(np.asarray(x), y, None, None)
    return jax.device_put(host, par.replicated(mesh))


def _forget(split: str, ref: weakref.ref) -> None:
    if _resident.get(split, {}).get("ref") is ref:
        _resident.pop(split, None)


def chunk_stops(steps: int, log_every: int, first_step: int, diagnostics_every: int = 0):
    """Where the chunks of an epoch of ``steps`` steps end (steps done, increasing): after step
    1, at multiples of ``log_every``, after each step whose global number ``first_step + i`` is
    a multiple of ``diagnostics_every`` (0: none), and at ``steps``."""
    stops = {1, steps, *range(log_every, steps, log_every)}
    if diagnostics_every:
        stops |= {i + 1 for i in range(steps) if (first_step + i) % diagnostics_every == 0}
    return sorted(stops)


@functools.lru_cache(maxsize=16)
def _key_data(seed: int) -> np.ndarray:
    """The uint32 data of ``jax.random.key(seed)``, the base of ``step_key(seed, g)``."""
    return np.asarray(jax.random.key_data(jax.random.key(seed)))


def standardise(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``(x / 255 - mean) / std`` in float32, for uint8 ``x``: the operations, order and dtype of
    :func:`dualprop_jax.data.standardise`, so a batch is bit-identical to the host's. The
    divisors pass an optimization barrier: XLA would otherwise multiply by their rounded
    reciprocals (up to 1 ulp off)."""
    out = x.astype(jnp.float32)
    scale, std = jax.lax.optimization_barrier(
        (jnp.full(out.shape, 255.0, jnp.float32), jnp.broadcast_to(std, out.shape))
    )
    return (out / scale - mean) / std


def take_batch(data: DeviceData, idx: jax.Array, mesh: Mesh | None) -> tuple[jax.Array, ...]:
    """Batch ``(x, y)`` of examples ``idx``, standardised, split over ``mesh``'s devices along
    the batch axis (each device gathers only its own rows)."""
    sharding = par.batch_sharding(mesh)
    if sharding is not None:
        idx = jax.lax.with_sharding_constraint(idx, sharding)
    x, y = data.x[idx], data.y[idx]
    if data.mean is not None:
        x = standardise(x, data.mean, data.std)
    if sharding is not None:
        x, y = jax.lax.with_sharding_constraint((x, y), sharding)
    return x, y


class Runner:
    """The jitted programs of the device feed for one train step on one mesh (see the module
    docstring): ``chunk(carry, data, plan, rule) -> carry`` (carry donated; the rule an
    argument, as in the step itself) and ``last_batch(data,
    plan, chunk)``, the batch of the last step before chunk ``chunk`` (for diagnostics)."""

    def __init__(self, step: TrainStep, mesh: Mesh | None) -> None:
        self.step = step
        # the step's rule (α, β) on the device(s) once: no transfer per chunk
        self.rule = par.put_scalars(step.rule, mesh)
        rep = {} if mesh is None else dict(out_shardings=par.replicated(mesh))

        def run(carry: Carry, data: DeviceData, plan: EpochPlan, rule) -> Carry:
            base = jax.random.wrap_key_data(plan.key) if step.augment else None

            def body(i, acc):
                state, loss_sum, correct_sum = acc
                x, y = take_batch(data, plan.order[i], mesh)
                key = None if base is None else jax.random.fold_in(base, plan.first_step + i)
                state, metrics = step.jitted(rule, state, x, y, key)
                # the sums keep their dtype (a float64 rule's loss would promote them)
                loss = metrics["loss"].astype(loss_sum.dtype)
                correct = metrics["correct"].astype(correct_sum.dtype)
                return state, loss_sum + loss, correct_sum + correct

            start, stop = plan.bounds[carry.chunk], plan.bounds[carry.chunk + 1]
            acc = jax.lax.fori_loop(start, stop, body, tuple(carry[:3]))
            return Carry(*acc, carry.chunk + 1)

        def last_batch(data: DeviceData, plan: EpochPlan, chunk: jax.Array):
            return take_batch(data, plan.order[plan.bounds[chunk] - 1], mesh)

        self.chunk = jax.jit(run, donate_argnums=0, **rep)
        self.last_batch = jax.jit(last_batch)

    def donates(self) -> bool:
        """Whether the train step donates its input state (then so may the epoch). A step
        built by hand without the ``donate`` flag counts as not donating (the epoch then copies
        the state once, which is safe either way)."""
        return bool(getattr(self.step, "donate", False))


@functools.lru_cache(maxsize=8)
def runner(step: TrainStep, mesh: Mesh | None) -> Runner:
    """The :class:`Runner` of ``step`` on ``mesh``, built once: a second epoch compiles nothing."""
    return Runner(step, mesh)


def start_epoch(
    runner: Runner,
    state: TrainState,
    data: DeviceData,
    order: np.ndarray,
    stops: list[int],
    first_step: int,
    seed: int,
    mesh: Mesh | None,
) -> tuple[EpochPlan, Carry]:
    """The epoch's plan and first carry, replicated on ``mesh``: one explicit transfer of the
    order, the chunk bounds and zero sums. When ``runner``'s step does not donate its input,
    the carry holds a copy of ``state`` (the chunks donate their carry), so ``state`` stays
    usable, as it would on the host feed."""
    steps = len(order)
    bounds = np.full(steps + 1, steps, np.int32)
    bounds[0] = 0
    bounds[1 : len(stops) + 1] = stops
    host = (
        EpochPlan(np.asarray(order, np.int32), bounds, np.int32(first_step), _key_data(seed)),
        (np.float32(0), np.int32(0), np.int32(0)),
    )
    plan, sums = jax.device_put(host, par.replicated(mesh))
    if not runner.donates():
        state = jax.tree.map(jnp.copy, state)
    return plan, Carry(state, *sums)


__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "Carry",
    "DeviceData",
    "EpochPlan",
    "Runner",
    "choose_feed",
    "chunk_stops",
    "default_budget",
    "describe_bytes",
    "device_memory",
    "put",
    "resident",
    "runner",
    "split_bytes",
    "start_epoch",
    "stored_bytes",
]
