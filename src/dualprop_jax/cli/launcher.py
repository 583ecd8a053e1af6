"""``dualprop train --num-processes N`` (N > 1): train in a child process and watch it.

A process of a multi-process run cannot go on once another one stops: JAX's distributed runtime
ends it (a fatal log line and ``abort()``, within ``--heartbeat-timeout`` seconds), or a gloo
collective fails on the broken connection. Rather than changing the training process to make
that end readable (signal handlers, ``sys.excepthook``, C++ streams), the command re-runs itself
as a child (``python -u -m dualprop_jax.cli`` with the same arguments) and this parent:

- relays the child's stdout and stderr line by line, leaving out gloo's connection lines
  ("[Gloo] Rank 0 is connected to 3 peer ranks. ...", printed by gloo with ``std::cout`` and no
  log level) unless ``DUALPROP_VERBOSE_DISTRIBUTED=1``;
- when the child ends because the run lost a process (SIGABRT: JAX's runtime ended it; SIGKILL;
  or status :data:`LOST_PROCESS_EXIT_CODE`, with which the child leaves after a gloo collective
  failed, having said so on one marked stderr line) prints one line: what stopped, where the
  last checkpoint is, and to restart every process with ``--resume``; exits with
  :data:`LOST_PROCESS_EXIT_CODE`. The C++ stack trace of JAX's fatal log is left out then;
- forwards SIGINT (Ctrl-C) and SIGTERM to the child, which stops as a one-process run does
  (Ctrl-C: "interrupted after epoch k", status 130), and exits with the child's status;
- gives the child the read end of a pipe it never writes to: the child reads it on a daemon
  thread (:func:`watch_parent`), and when the parent dies, even by SIGKILL, the pipe closes and
  the child leaves too, so that its peers notice and stop.

Documented mechanisms only: ``subprocess.Popen`` (``pass_fds``, ``process_group``), pipes,
``signal.signal`` in the parent's main thread while the child runs (restored afterwards),
``os.kill`` through ``Popen.send_signal``, ``os._exit``, daemon threads. Costs accepted:

- the child writes to pipes, not to the terminal: process 0 prints one line per epoch instead
  of a live progress bar;
- the child has its own process group, so that a terminal's Ctrl-C reaches it once (forwarded
  by the parent) and not twice; Ctrl-Z therefore stops only the parent, and the child trains on;
- a second Python process per rank (the parent: the interpreter, argparse and the imports of
  the command, no JAX backend);
- the line is chosen from the child's exit status: a SIGABRT with another cause (a failed
  check in XLA itself) is reported as a lost process too; the fatal log line above it, which
  is relayed, names the real cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

LOST_PROCESS_EXIT_CODE = 75
"""Exit status of a process ended because another process of its run stopped (EX_TEMPFAIL:
restarting every process with ``--resume`` continues the run)."""

VERBOSE_ENV = "DUALPROP_VERBOSE_DISTRIBUTED"
"""Set to 1 to keep gloo's connection lines and JAX's C++ stack trace in the output."""

CHILD_ENV = "DUALPROP_LAUNCHER_FD"
"""Set in the child's environment: the file descriptor of the pipe from its parent."""

LOST_MARKER = "dualprop: lost contact: "
"""Starts the stderr line with which the child reports the gloo error that stopped it."""

PARENT_GONE_EXIT_CODE = 1
"""Exit status of a child whose parent died (nobody reads it; its peers see it leave)."""

# gloo's threads print with std::cout, so two of its lines can interleave into fragments
# ("[Gloo] Rank [Gloo] Rank 1 is connected ...", then "0 is connected ..."): match either piece
_GLOO_CONNECTED = re.compile(r"\[Gloo\] Rank |\d+ is connected to \d+ peer ranks")
_STACK_TRACE = "*** Check failure stack trace: ***"
_STACK_FRAME = re.compile(r"\s+@\s")


@dataclasses.dataclass(frozen=True)
class Run:
    """What the parent knows of the run, for its line."""

    process_id: int
    num_processes: int
    coordinator: str
    heartbeat_timeout_s: int
    workdir: pathlib.Path


def verbose() -> bool:
    """Whether the environment asks to keep the distributed runtime's connection lines."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


# --- the child ---------------------------------------------------------------------------------


def watch_parent() -> bool:
    """In a child of :func:`supervise`: leave as soon as the parent is gone (its pipe closes).

    Returns whether this process is such a child; the marker is taken out of the environment,
    so that processes it starts do not take themselves for one.
    """
    fd = os.environ.pop(CHILD_ENV, None)
    if fd is None:
        return False

    def wait_for_eof() -> None:
        with contextlib.suppress(OSError):
            while os.read(int(fd), 64):
                pass
        os._exit(PARENT_GONE_EXIT_CODE)

    threading.Thread(target=wait_for_eof, name="dualprop-parent-watch", daemon=True).start()
    return True


def report_lost_peer(err: BaseException) -> None:
    """The child's marked stderr line for the error that showed a process of the run gone."""
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    print(f"{LOST_MARKER}{detail}", file=sys.stderr, flush=True)


# --- the parent --------------------------------------------------------------------------------


def launch(argv: Sequence[str], run: Run) -> int:
    """Run ``dualprop`` with ``argv`` as a watched child (:func:`supervise`); its exit status."""
    return supervise([sys.executable, "-u", "-m", "dualprop_jax.cli", *argv], run)


def supervise(command: Sequence[str], run: Run, env: dict[str, str] | None = None) -> int:
    """Run ``command`` as the training child of process ``run.process_id``: relay its output,
    forward SIGINT and SIGTERM to it, and turn a lost process into one line and
    :data:`LOST_PROCESS_EXIT_CODE`. Returns the exit status for the command."""
    read_end, write_end = os.pipe()
    child_env = {**(os.environ if env is None else env), CHILD_ENV: str(read_end)}
    relay = _Relay(keep_all=verbose())
    child = _Child()
    try:
        with child.forwarding_signals():
            child.start(
                list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=child_env, pass_fds=(read_end,), process_group=0,
            )  # fmt: skip
            os.close(read_end)
            read_end = None
            returncode = relay.run(child.proc)
    finally:
        for fd in (read_end, write_end):
            if fd is not None:
                os.close(fd)
        child.kill()
    return _outcome(returncode, relay, run)


def _outcome(returncode: int, relay: _Relay, run: Run) -> int:
    how = {-signal.SIGABRT: "aborted", -signal.SIGKILL: "killed"}.get(returncode)
    if returncode == LOST_PROCESS_EXIT_CODE and relay.detail is not None:
        how = "gloo"
    if how is None:
        relay.release_held()
        return 128 - returncode if returncode < 0 else returncode
    if relay.keep_all:
        relay.release_held()
    print(lost_process_message(run, how, relay.detail), file=sys.stderr, flush=True)
    return LOST_PROCESS_EXIT_CODE


class _Child:
    """The child process, and the signals forwarded to it while it runs."""

    FORWARDED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pending: list[int] = []

    def start(self, command: list[str], **kwargs) -> None:
        self.proc = subprocess.Popen(command, **kwargs)
        for signum in self.pending:
            self.proc.send_signal(signum)

    def forward(self, signum: int, frame: object) -> None:
        if self.proc is None:
            self.pending.append(signum)
        else:
            self.proc.send_signal(signum)

    @contextlib.contextmanager
    def forwarding_signals(self):
        """Forward SIGINT and SIGTERM while inside, unless ignored (the child then inherits the
        ignoring, as a one-process run keeps it); only the main thread can set handlers."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.FORWARDED:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, self.forward)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def kill(self) -> None:
        """Kill the child if it still runs (the parent is leaving on an error of its own)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Relay:
    """Copies the child's output, line by line, to this process's stdout and stderr."""

    def __init__(self, keep_all: bool) -> None:
        self.keep_all = keep_all
        self.detail: str | None = None  # the child's LOST_MARKER line
        self.held: list[str] = []  # a C++ stack trace, shown unless a lost process explains it
        self._in_trace = False

    def run(self, proc: subprocess.Popen) -> int:
        """Relay until the child ends; its return code."""
        copies = [
            threading.Thread(target=self._copy, args=(proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._copy, args=(proc.stderr, "stderr"), daemon=True),
        ]
        for thread in copies:
            thread.start()
        returncode = proc.wait()
        for thread in copies:
            thread.join(timeout=10)  # a process the child started may hold the pipes open
        return returncode

    def _copy(self, pipe: IO[bytes], name: str) -> None:
        writable = True
        with pipe:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                if not self._keep(line, name) or not writable:
                    continue
                try:
                    stream = getattr(sys, name)
                    stream.write(line)
                    stream.flush()
                except (OSError, ValueError):  # our own output is gone: drain the child's
                    writable = False

    def _keep(self, line: str, name: str) -> bool:
        if name == "stdout":
            return self.keep_all or not _GLOO_CONNECTED.search(line)
        if line.startswith(LOST_MARKER):
            self.detail = line[len(LOST_MARKER) :].strip()
            return False
        if line.strip() == _STACK_TRACE:
            self._in_trace = True
        if self._in_trace and (line.strip() == _STACK_TRACE or _STACK_FRAME.match(line)):
            self.held.append(line)
            return False
        return True

    def release_held(self) -> None:
        sys.stderr.write("".join(self.held))
        sys.stderr.flush()
        self.held.clear()


# --- the line ----------------------------------------------------------------------------------


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


def lost_process_message(run: Run, how: str, detail: str | None = None) -> str:
    """The line for a child that ended because the run lost a process: ``how`` is "aborted"
    (JAX's runtime ended it), "gloo" (a collective failed: ``detail``) or "killed" (SIGKILL)."""
    me, n = run.process_id, run.num_processes
    if how == "killed":
        head = (
            f"dualprop: process {me} of {n} stopped: its training process was killed (SIGKILL: "
            "out of memory, or by hand), so the other processes stop too"
        )
    else:
        if me != 0 and not _answers(run.coordinator):
            cause = f"process 0 (the coordinator, {run.coordinator}) stopped"
        elif detail is None:
            cause = (
                "another process stopped (killed, crashed, or silent for "
                f"{run.heartbeat_timeout_s} s; JAX's log above names it)"
            )
        else:
            cause = f"another process stopped ({detail})"
        ended = (
            "so JAX's distributed runtime ended this process too"
            if how == "aborted"
            else "so this process stops too"
        )
        head = f"dualprop: process {me} of {n} lost contact with the run: {cause}, {ended}"
    epoch = _latest_checkpoint(run.workdir)
    if epoch is None:
        advice = (
            f"No checkpoint was written in {run.workdir} yet; start all {n} processes again "
            "to train from the start."
        )
    else:
        advice = (
            f"The last checkpoint (epoch {epoch}) is in {run.workdir / 'checkpoints'}; restart "
            f"all {n} processes with the same flags plus --resume to continue."
        )
    return f"{head}. {advice}"
