"""Multi-process runs through JAX's own distributed runtime (``jax.distributed``).

Every process runs the same program. Call :func:`initialize` first, before any other JAX call;
afterwards ``jax.devices()`` lists the devices of all processes, and ``parallel.make_mesh`` spans
them. Each process loads the same data and builds the same global batch; each device receives
its slice of it, and the gradients are averaged across all devices of all processes.

On CPU, the cross-process collectives are gloo's, and ``local_cpu_devices`` sets how many CPU
devices each process simulates.

When a process of the run stops (killed, crashed, out of reach), the others cannot go on: their
collectives would wait for it forever. JAX's coordination service notices the silence within
``heartbeat_timeout_s`` (at once when process 0, the coordinator, is the one that stopped) and
aborts every other process. :func:`initialize` turns that abort (or a gloo collective failing
on the broken connection) into one clear line (what stopped, where the last checkpoint is, how
to resume) and exit status :data:`LOST_PROCESS_EXIT_CODE`, instead of a C++ stack trace. A
process that fails on its own should leave through :func:`exit_now`, so that the others learn
of it within the heartbeat timeout rather than after JAX's 300 s shutdown barrier.
"""

from __future__ import annotations

import ctypes
import numbers
import os
import pathlib
import signal
import socket
import sys
from collections.abc import Mapping

import jax

from dualprop_jax.errors import DistributedError

HEARTBEAT_TIMEOUT_S = 30
"""Default bound on how long a process may be silent before the run is declared broken."""

LOST_PROCESS_EXIT_CODE = 75
"""Exit status of a process ended because another process of its run stopped (EX_TEMPFAIL:
restarting every process with ``--resume`` continues the run)."""

VERBOSE_ENV = "DUALPROP_VERBOSE_DISTRIBUTED"
"""Set to 1 to keep gloo's connection lines (``[Gloo] Rank 0 is connected to 3 peer ranks...``)."""

CLI_FLAGS: Mapping[str, str] = {
    "coordinator_address": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
    "local_cpu_devices": "--local-cpu-devices",
    "resume": "--resume",
}
"""``flag_names`` for :func:`initialize` called by the ``dualprop`` command: its errors then
name these flags instead of the Python parameters."""


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


def _check_arguments(
    coordinator_address, num_processes, process_id, local_cpu_devices, timeouts, flag_names
) -> None:
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
    for name, value in timeouts.items():
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= 1.")


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    local_cpu_devices: int | None = None,
    *,
    timeout_s: int = 300,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    workdir: str | os.PathLike | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> None:
    """Join a run of ``num_processes`` processes as process ``process_id``.

    ``coordinator_address`` is ``"host:port"`` where process 0 listens; every process passes the
    same one. ``local_cpu_devices`` (CPU only) is the number of CPU devices this process
    simulates; None keeps JAX's default (``JAX_NUM_CPU_DEVICES``, else 1). ``timeout_s`` bounds
    the wait for the other processes: past it JAX itself aborts the process (a fatal
    ``DEADLINE_EXCEEDED`` log, not a Python exception), so a missing peer cannot hang a job.
    Must run before anything else touches JAX.

    Once joined (``num_processes > 1``), a process that stops ends the others instead of
    leaving them waiting: within ``heartbeat_timeout_s`` seconds (at once if process 0 stopped),
    each prints one line (what stopped, the last checkpoint in ``workdir/checkpoints`` when
    ``workdir`` is given, and to restart every process with resume) and exits with status
    :data:`LOST_PROCESS_EXIT_CODE`. For that it installs a SIGABRT handler and a
    ``sys.excepthook`` (both removed by :func:`shutdown`). gloo's connection lines on stdout
    are silenced unless ``DUALPROP_VERBOSE_DISTRIBUTED=1``. ``flag_names`` maps parameter names
    to how the caller spells them (:data:`CLI_FLAGS`), so that errors name command-line flags.
    """
    timeouts = {"timeout_s": timeout_s, "heartbeat_timeout_s": heartbeat_timeout_s}
    _check_arguments(
        coordinator_address, num_processes, process_id, local_cpu_devices, timeouts, flag_names
    )
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
        if flag_names is None:
            how = (
                "Call dualprop_jax.training.distributed.initialize once, before any other JAX "
                "call (even "
                "jax.devices()); start every process with the same coordinator address and "
                "num_processes and distinct process ids"
            )
        else:
            flag = {k: flag_names.get(k, k) for k in CLI_FLAGS}
            how = (
                f"Start every process with the same {flag['coordinator_address']} and "
                f"{flag['num_processes']} and its own {flag['process_id']}"
            )
        raise DistributedError(
            f"process {process_id} of {num_processes} could not join the run at "
            f"{coordinator_address}: {err}. {how}; make sure process 0's host is reachable on "
            "that port."
        ) from err
    if num_processes > 1:
        _run.update(
            process_id=int(process_id),
            num_processes=int(num_processes),
            coordinator=coordinator_address,
            heartbeat_timeout_s=int(heartbeat_timeout_s),
            workdir=None if workdir is None else pathlib.Path(workdir),
            resume=(flag_names or {}).get("resume"),
        )
        _install_abort_handler()
        _install_excepthook()
        if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("", "0", "false", "no"):
            _silence_cout()


def exit_now(status: int) -> None:
    """In a multi-process run, end this process at once with exit ``status``; otherwise return.

    For an error in one process: a normal exit waits in JAX's shutdown barrier (up to 300 s)
    for the other processes, which are blocked in a collective waiting for this one, so every
    process would sit idle for 5 minutes. Exiting at once (``os._exit``, after flushing
    stdout and stderr) lets the others notice within ``heartbeat_timeout_s`` and say so.
    """
    if not _run:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def shutdown() -> None:
    """Leave the run (``jax.distributed.shutdown``); a no-op when not initialised."""
    _uninstall_abort_handler()
    if getattr(sys.excepthook, "_dualprop_previous", None) is not None:
        sys.excepthook = sys.excepthook._dualprop_previous
    _run.clear()
    jax.distributed.shutdown()


# --- a process that stops --------------------------------------------------------------------
#
# In jax 0.10.2 the survivors of a dead process block in a gloo collective that waits for it
# (gloo has no timeout there). JAX's coordination service stops them: process 0's service marks
# a process that sent no heartbeat for ``heartbeat_timeout_s`` as dead and tells every other
# process, whose client then logs "Terminating process because the JAX distributed service
# detected fatal errors" and calls abort(); when process 0 itself dies, the others' clients
# abort at once (socket closed). The client's ``missed_heartbeat_callback`` cannot be a Python
# function (the status it passes has no Python conversion: std::bad_cast), so the SIGABRT that
# follows the log is caught instead, by a C-level handler that prints what happened and exits.
# Sometimes gloo notices the broken connection first and the collective raises a JaxRuntimeError
# ("Gloo all-reduce failed: ... Connection reset by peer"); uncaught, it would print a traceback
# and then wait in JAX's exit-time shutdown barrier until the heartbeat timeout, so a
# ``sys.excepthook`` turns it into the same line at once.

_run: dict = {}
_handler = None  # the ctypes callback; it must stay alive while installed
_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int)


def _libc():
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


def _install_abort_handler() -> None:
    global _handler
    if os.name != "posix" or _handler is not None:
        return
    try:
        handler = _HANDLER_TYPE(_on_abort)
        _libc().signal(signal.SIGABRT, ctypes.cast(handler, ctypes.c_void_p))
    except (OSError, AttributeError):  # no C library to call: JAX's own abort stays
        return
    _handler = handler


def _uninstall_abort_handler() -> None:
    global _handler
    if _handler is not None:
        _libc().signal(signal.SIGABRT, int(signal.SIG_DFL))
        _handler = None


def _on_abort(signum: int) -> None:
    """SIGABRT in a multi-process run: say why and how to go on, then exit (never returns)."""
    signal.alarm(10)  # should anything below hang, SIGALRM ends the process
    _exit_lost(None)


def _exit_lost(detail: str | None) -> None:
    try:
        message = lost_process_message(detail)
    except BaseException:  # pragma: no cover (best effort in a dying process)
        message = (
            "dualprop: this process lost contact with the other processes of its run. Restart "
            "all processes with --resume."
        )
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.write(2, f"\n{message}\n".encode())
    finally:
        os._exit(LOST_PROCESS_EXIT_CODE)


def _is_lost_peer_error(err: BaseException) -> bool:
    """A gloo transport failure: a peer's connection broke, or it never came to connect."""
    return isinstance(err, jax.errors.JaxRuntimeError) and "Gloo" in str(err)


def _install_excepthook() -> None:
    """A collective whose peer died may fail in Python (gloo: "Connection reset by peer")
    instead of waiting for JAX's abort. Uncaught, that error would print a traceback and then
    wait in JAX's shutdown barrier for the dead process until the heartbeat timeout; this hook
    prints the lost-contact line and exits at once instead."""
    previous = sys.excepthook
    if getattr(previous, "_dualprop_previous", None) is not None:
        return

    def hook(kind, value, tb):
        if _run and _is_lost_peer_error(value):
            _exit_lost(str(value).splitlines()[0][:300])
        previous(kind, value, tb)

    hook._dualprop_previous = previous
    sys.excepthook = hook


def _latest_checkpoint(workdir: pathlib.Path) -> int | None:
    """The latest epoch in ``workdir/checkpoints`` (complete ones: Orbax writes to temporary
    names and renames them to the epoch number when done)."""
    try:
        epochs = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    except OSError:
        return None
    return max(epochs, default=None)


def _answers(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def lost_process_message(detail: str | None = None) -> str:
    """The line a process prints when another process of its run stopped; ``detail`` is the
    error that showed it (None: JAX's distributed runtime aborted this process)."""
    me, n = _run["process_id"], _run["num_processes"]
    if me != 0 and not _answers(_run["coordinator"]):
        cause = f"process 0 (the coordinator, {_run['coordinator']}) stopped"
    elif detail is None:
        cause = (
            "another process stopped (killed, crashed, or silent for "
            f"{_run['heartbeat_timeout_s']} s; JAX's log above names it)"
        )
    else:
        cause = f"another process stopped ({detail})"
    workdir, resume = _run["workdir"], _run["resume"]
    if resume:
        start = f"restart all {n} processes with the same flags"
        again = f"{start} plus {resume}"
    else:
        start = f"start all {n} processes again"
        again = f"call train_and_evaluate(..., resume=True) again in all {n} processes"
    epoch = None if workdir is None else _latest_checkpoint(workdir)
    if workdir is None:
        advice = f"To continue from the last checkpoint, {again}."
    elif epoch is None:
        advice = f"No checkpoint was written in {workdir} yet; {start} to train from the start."
    else:
        where = workdir / "checkpoints"
        advice = f"The last checkpoint (epoch {epoch}) is in {where}; {again} to continue."
    if detail is None:
        ended = "so JAX's distributed runtime ended this process too"
    else:
        ended = "so this process stops too"
    return f"dualprop: process {me} of {n} lost contact with the run: {cause}, {ended}. {advice}"


# --- gloo's connection lines -------------------------------------------------------------------
#
# Each time gloo connects a group of processes (the first collective over a new set of
# devices), it prints "[Gloo] Rank 0 is connected to 3 peer ranks. Expected number of connected
# peer ranks is : 3" with std::cout, unconditionally: no log level (TF_CPP_MIN_LOG_LEVEL,
# GLOG_minloglevel, GLOO_LOG_LEVEL, a jax config) reaches it. Putting std::cout in its bad state
# drops those lines; Python's own stdout is untouched (it does not go through std::cout), and
# JAX and XLA log to stderr.

_STD_COUT = "_ZSt4cout"
_IOS_CLEAR = "_ZNSt9basic_iosIcSt11char_traitsIcEE5clearESt12_Ios_Iostate"
_BADBIT = 1  # libstdc++'s std::ios_base::badbit


def _silence_cout() -> bool:
    """Set ``std::ios::badbit`` on libstdc++'s ``std::cout``; False where that is impossible."""
    try:
        lib = ctypes.CDLL("libstdc++.so.6")
        cout = ctypes.addressof(ctypes.c_char.in_dll(lib, _STD_COUT))
        vtable = ctypes.c_void_p.from_address(cout).value
        if not vtable:  # not constructed yet
            return False
        # std::ostream's basic_ios is a virtual base: its offset sits 3 words before the
        # vtable's address point (Itanium C++ ABI).
        offset = ctypes.c_ssize_t.from_address(vtable - 3 * ctypes.sizeof(ctypes.c_void_p))
        clear = lib[_IOS_CLEAR]
    except (OSError, ValueError, AttributeError):  # not libstdc++ (macOS' libc++, Windows)
        return False
    clear.argtypes, clear.restype = [ctypes.c_void_p, ctypes.c_int], None
    clear(cout + offset.value, _BADBIT)
    return True
