"""Multi-process runs through JAX's own distributed runtime (``jax.distributed``).

Every process runs the same program. Call :func:`initialize` first, before any other JAX call;
afterwards ``jax.devices()`` lists the devices of all processes, and ``parallel.make_mesh`` spans
them. Each process loads the same data and builds the same global batch; each device receives
its slice of it, and the gradients are averaged across all devices of all processes.

On CPU, the cross-process collectives are gloo's, and ``local_cpu_devices`` sets how many CPU
devices each process simulates.
"""

from __future__ import annotations

import numbers

import jax

from dualprop_jax.errors import DistributedError


def _check_address(address: object) -> str:
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(
            f"coordinator_address={address!r} is invalid: use 'host:port' of process 0, "
            "e.g. '127.0.0.1:12345' on one machine or '10.0.0.1:12345' across machines."
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator_address={address!r} is invalid: it needs a host and a port in "
            "1..65535, e.g. '127.0.0.1:12345'."
        )
    return address


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    local_cpu_devices: int | None = None,
    *,
    timeout_s: int = 300,
) -> None:
    """Join a run of ``num_processes`` processes as process ``process_id``.

    ``coordinator_address`` is ``"host:port"`` where process 0 listens; every process passes the
    same one. ``local_cpu_devices`` (CPU only) is the number of CPU devices this process
    simulates; None keeps JAX's default (``JAX_NUM_CPU_DEVICES``, else 1). ``timeout_s`` bounds
    the wait for the other processes: past it JAX itself aborts the process (a fatal
    ``DEADLINE_EXCEEDED`` log, not a Python exception), so a missing peer cannot hang a job.
    Must run before anything else touches JAX.
    """
    _check_address(coordinator_address)
    if not _is_int(num_processes) or num_processes < 1:
        raise ValueError(f"num_processes={num_processes!r} is invalid: it must be an integer >= 1.")
    if not _is_int(process_id) or not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id={process_id!r} is invalid: it must be an integer in "
            f"0..{num_processes - 1} (num_processes={num_processes}), distinct per process."
        )
    if local_cpu_devices is not None and (not _is_int(local_cpu_devices) or local_cpu_devices < 1):
        raise ValueError(
            f"local_cpu_devices={local_cpu_devices!r} is invalid: it must be None or an "
            "integer >= 1."
        )
    if not _is_int(timeout_s) or timeout_s < 1:
        raise ValueError(f"timeout_s={timeout_s!r} is invalid: it must be an integer >= 1.")
    try:
        if local_cpu_devices is not None:
            jax.config.update("jax_num_cpu_devices", int(local_cpu_devices))
        # Only the CPU client reads this; without it CPU computations cannot cross processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=int(num_processes),
            process_id=int(process_id),
            initialization_timeout=int(timeout_s),
        )
    except RuntimeError as err:
        raise DistributedError(
            f"process {process_id} of {num_processes} could not join the run at "
            f"{coordinator_address}: {err}. Call dualprop_jax.distributed.initialize once, "
            "before any other JAX call (even jax.devices()); start every process with the same "
            "coordinator address and num_processes and distinct process ids; make sure process "
            "0's host is reachable on that port."
        ) from err


def shutdown() -> None:
    """Leave the run (``jax.distributed.shutdown``); a no-op when not initialised."""
    jax.distributed.shutdown()
