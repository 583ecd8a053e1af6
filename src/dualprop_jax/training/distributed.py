"""Joining a multi-process run through JAX's own distributed runtime (``jax.distributed``).

Every process runs the same program. Call :func:`initialize` first, before any other JAX call;
afterwards ``jax.devices()`` lists the devices of all processes, and ``parallel.make_mesh`` spans
them. Each process loads the same data and builds the same global batch; each device receives
its slice of it, and the gradients are averaged across all devices of all processes.

On CPU, the cross-process collectives are gloo's, and ``local_cpu_devices`` sets how many CPU
devices each process simulates.

When a process of the run stops (killed, crashed, out of reach), the others cannot go on: their
collectives would wait for it forever. JAX's coordination service notices the silence within
``heartbeat_timeout_s`` (at once when process 0, the coordinator, is the one that stopped) and
ends every other process itself (a fatal log line, then ``abort()``); sometimes a gloo collective
fails first, on the broken connection, with an error that :func:`is_lost_peer_error` recognises.
Either way the end is bounded. This module changes nothing process-wide to make that end
prettier: it installs no signal handler and no ``sys.excepthook`` and leaves the C and C++
streams alone. A program that wants one clear line instead watches its training from another
process, as the ``dualprop`` command does (:mod:`dualprop_jax.cli.launcher`). gloo prints a
"[Gloo] Rank 0 is connected to ..." line on stdout whenever it connects processes; the
command's launcher drops those lines, a Python program sees them.

A process that fails on its own should leave through :func:`exit_now`, so that the others learn
of it within the heartbeat timeout rather than after JAX's 300 s shutdown barrier.
"""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Mapping

import jax

from dualprop_jax.errors import DistributedError

HEARTBEAT_TIMEOUT_S = 30
"""Default bound on how long a process may be silent before the run is declared broken."""

CLI_FLAGS: Mapping[str, str] = {
    "coordinator_address": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
    "local_cpu_devices": "--local-cpu-devices",
    "heartbeat_timeout_s": "--heartbeat-timeout",
}
"""``flag_names`` for :func:`initialize` called by the ``dualprop`` command: its errors then
name these flags instead of the Python parameters."""

_joined: dict[str, int] = {}  # the run this process joined: {"process_id": i, "num_processes": n}


def _named(param: str, value: object, flag_names: Mapping[str, str] | None) -> str:
    """How the caller wrote ``param=value``: ``num_processes=0`` or ``--num-processes 0``."""
    flag = (flag_names or {}).get(param)
    if flag is None:
        return f"{param}={value!r}"
    return f"{flag} is missing" if value is None else f"{flag} {value}"


def _invalid(param: str, value: object, rule: str, flag_names: Mapping[str, str] | None):
    shown = _named(param, value, flag_names)
    sep = ":" if shown.endswith("missing") else " is invalid:"
    return ValueError(f"{shown}{sep} {rule}")


def _check_address(address: object, flag_names: Mapping[str, str] | None = None) -> str:
    if not isinstance(address, str) or ":" not in address:
        raise _invalid(
            "coordinator_address",
            address,
            "use 'host:port' of process 0, e.g. '127.0.0.1:12345' on one machine or "
            "'10.0.0.1:12345' across machines.",
            flag_names,
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _invalid(
            "coordinator_address",
            address,
            "it needs a host and a port in 1..65535, e.g. '127.0.0.1:12345'.",
            flag_names,
        )
    return address


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_arguments(
    coordinator_address: object,
    num_processes: object,
    process_id: object,
    local_cpu_devices: object = None,
    *,
    timeout_s: object = 300,
    heartbeat_timeout_s: object = HEARTBEAT_TIMEOUT_S,
    flag_names: Mapping[str, str] | None = None,
) -> None:
    """Raise a ValueError naming the argument (or its flag) and the fix if :func:`initialize`
    would refuse these arguments; it touches nothing."""
    _check_address(coordinator_address, flag_names)
    if not _is_int(num_processes) or num_processes < 1:
        raise _invalid("num_processes", num_processes, "it must be an integer >= 1.", flag_names)
    if not _is_int(process_id) or not 0 <= process_id < num_processes:
        n = _named("num_processes", num_processes, flag_names)
        raise _invalid(
            "process_id",
            process_id,
            f"it must be an integer in 0..{num_processes - 1} ({n}), distinct per process.",
            flag_names,
        )
    if local_cpu_devices is not None and (not _is_int(local_cpu_devices) or local_cpu_devices < 1):
        rule = "None or an integer >= 1." if flag_names is None else "an integer >= 1."
        raise _invalid("local_cpu_devices", local_cpu_devices, f"it must be {rule}", flag_names)
    for name, value in (("timeout_s", timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s)):
        if not _is_int(value) or value < 1:
            raise _invalid(name, value, "it must be an integer >= 1.", flag_names)


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    local_cpu_devices: int | None = None,
    *,
    timeout_s: int = 300,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    flag_names: Mapping[str, str] | None = None,
) -> None:
    """Join a run of ``num_processes`` processes as process ``process_id``.

    ``coordinator_address`` is ``"host:port"`` where process 0 listens; every process passes the
    same one. ``local_cpu_devices`` (CPU only) is the number of CPU devices this process
    simulates; None keeps JAX's default (``JAX_NUM_CPU_DEVICES``, else 1). ``timeout_s`` bounds
    the wait for the other processes: past it JAX itself aborts the process (a fatal
    ``DEADLINE_EXCEEDED`` log, not a Python exception), so a missing peer cannot hang a job.
    Must run before anything else touches JAX.

    Once joined, a process that stops ends the others within ``heartbeat_timeout_s`` seconds
    (at once if process 0 stopped): JAX's runtime aborts them, or a collective raises an error
    for which :func:`is_lost_peer_error` is true. Nothing process-wide is changed for that (see
    the module's description). ``flag_names`` maps parameter names to how the caller spells
    them (:data:`CLI_FLAGS`), so that errors name command-line flags.
    """
    check_arguments(
        coordinator_address, num_processes, process_id, local_cpu_devices,
        timeout_s=timeout_s, heartbeat_timeout_s=heartbeat_timeout_s, flag_names=flag_names,
    )  # fmt: skip
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
            heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        )
    except RuntimeError as err:
        how = _how_to_join(flag_names)
        raise DistributedError(
            f"process {process_id} of {num_processes} could not join the run at "
            f"{coordinator_address}: {err}. {how}; make sure process 0's host is reachable on "
            "that port."
        ) from err
    if num_processes > 1:
        _joined.update(process_id=int(process_id), num_processes=int(num_processes))


def _how_to_join(flag_names: Mapping[str, str] | None) -> str:
    if flag_names is None:
        return (
            "Call dualprop_jax.training.distributed.initialize once, before any other JAX call "
            "(even jax.devices()); start every process with the same coordinator address and "
            "num_processes and distinct process ids"
        )
    flag = {k: flag_names.get(k, k) for k in CLI_FLAGS}
    return (
        f"Start every process with the same {flag['coordinator_address']} and "
        f"{flag['num_processes']} and its own {flag['process_id']}"
    )


def is_lost_peer_error(err: BaseException) -> bool:
    """Whether ``err`` is a gloo collective failing because another process of the run is gone
    (its connection broke, or it never came to connect). JAX raises these as ``JaxRuntimeError``
    or, from ``block_until_ready``, as ``ValueError``; their message names Gloo."""
    return isinstance(err, RuntimeError | ValueError) and "Gloo" in str(err)


def exit_now(status: int) -> None:
    """In a multi-process run, end this process at once with exit ``status``; otherwise return.

    For an error in one process: a normal exit waits in JAX's shutdown barrier (up to 300 s)
    for the other processes, which are blocked in a collective waiting for this one, so every
    process would sit idle for 5 minutes. Exiting at once (``os._exit``, after flushing
    stdout and stderr) lets the others notice within ``heartbeat_timeout_s``.
    """
    if not _joined:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def shutdown() -> None:
    """Leave the run (``jax.distributed.shutdown``); a no-op when not initialised."""
    _joined.clear()
    jax.distributed.shutdown()
