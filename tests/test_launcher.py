"""The launcher of a multi-process ``dualprop train``: what a user sees when the training child
ends (a lost process, an error, Ctrl-C), gloo's lines, and a launcher killed under its child.

The children here are small Python scripts that end the way a training child ends (JAX's abort,
the gloo-error marker, SIGKILL, Ctrl-C); the real two-process runs are in test_multidevice.py.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from dualprop_jax import cli
from dualprop_jax.cli import launcher

GLOO_LINE = (
    "[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1"
)
FATAL = "F0000 client.h:80] Terminating process because the JAX distributed service detected"

_CHILD = f"""
import os, signal, sys, time
from dualprop_jax.cli import launcher
how = sys.argv[1]
is_child = launcher.watch_parent()
print("training", flush=True)
print({GLOO_LINE!r}, flush=True)
if how == "abort":  # what JAX's runtime does when the run lost a process
    print({FATAL!r}, file=sys.stderr, flush=True)
    print("*** Check failure stack trace: ***", file=sys.stderr, flush=True)
    print("    @     0x7f00  absl::log_internal::LogMessage::Flush()", file=sys.stderr, flush=True)
    os.abort()
if how == "gloo":  # what the command's child does when a collective fails on a lost peer
    err = ValueError("UNKNOWN: Gloo all-reduce failed: Connection reset by peer")
    launcher.report_lost_peer(err)
    sys.exit(launcher.LOST_PROCESS_EXIT_CODE)
if how == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
if how == "error":
    print("dualprop: error: something the user can fix", file=sys.stderr)
    sys.exit(2)
if how == "interrupt":
    try:  # before "ready": the test sends Ctrl-C once it reads that
        print("ready", flush=True)
        time.sleep(120)
    except KeyboardInterrupt:
        print("dualprop: interrupted after epoch 1; continue with --resume", file=sys.stderr)
        sys.exit(130)
if how == "orphan":
    print("pid", os.getpid(), is_child, flush=True)
    time.sleep(120)
"""


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_info(workdir: pathlib.Path, process_id: int = 0) -> launcher.Run:
    return launcher.Run(
        process_id=process_id, num_processes=2, coordinator=f"127.0.0.1:{_free_port()}",
        heartbeat_timeout_s=30, workdir=workdir,
    )  # fmt: skip


def _supervise(how: str, workdir: pathlib.Path, capsys, monkeypatch, verbose: str = ""):
    monkeypatch.setenv(launcher.VERBOSE_ENV, verbose)
    status = launcher.supervise([sys.executable, "-c", _CHILD, how], _run_info(workdir))
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("how", ["abort", "gloo"])
def test_a_child_ended_by_a_lost_peer_gives_one_line_and_status_75(
    how, tmp_path, capsys, monkeypatch
):
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    status, out, err = _supervise(how, tmp_path, capsys, monkeypatch)
    assert status == launcher.LOST_PROCESS_EXIT_CODE == 75, err
    assert out == "training\n"  # gloo's connection line is left out
    assert "Traceback" not in err and "@ " not in err and "stack trace" not in err, err
    assert launcher.LOST_MARKER not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dualprop: process 0 of 2 lost contact with the run: another"), last
    assert f"The last checkpoint (epoch 2) is in {tmp_path / 'checkpoints'}" in last, last
    assert "restart all 2 processes with the same flags plus --resume" in last, last
    if how == "gloo":
        assert "(UNKNOWN: Gloo all-reduce failed: Connection reset by peer)" in last, last
        assert "so this process stops too" in last
    else:
        assert FATAL in err  # JAX's own line, which names what happened, stays
        assert "so JAX's distributed runtime ended this process too" in last


def test_verbose_keeps_gloo_lines_and_the_stack_trace(tmp_path, capsys, monkeypatch):
    status, out, err = _supervise("abort", tmp_path, capsys, monkeypatch, verbose="1")
    assert status == 75
    assert out == f"training\n{GLOO_LINE}\n"
    assert "*** Check failure stack trace: ***" in err and "LogMessage::Flush" in err
    assert f"No checkpoint was written in {tmp_path} yet" in err.strip().splitlines()[-1]


def test_a_killed_child_says_so(tmp_path, capsys, monkeypatch):
    status, _, err = _supervise("killed", tmp_path, capsys, monkeypatch)
    assert status == 75
    last = err.strip().splitlines()[-1]
    assert last.startswith("dualprop: process 0 of 2 stopped: its training process was killed")
    assert f"No checkpoint was written in {tmp_path} yet; start all 2 processes again" in last


def test_a_child_error_keeps_its_status_and_message(tmp_path, capsys, monkeypatch):
    status, out, err = _supervise("error", tmp_path, capsys, monkeypatch)
    assert (status, out, err) == (2, "training\n", "dualprop: error: something the user can fix\n")


_PARENT = """
import pathlib, signal, sys
from dualprop_jax.cli import launcher
# Ctrl-C as a terminal delivers it: a parallel test runner may start this with SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
run = launcher.Run(0, 2, "127.0.0.1:1", 30, pathlib.Path(sys.argv[2]))
sys.exit(launcher.supervise([sys.executable, "-c", sys.argv[1], sys.argv[3]], run))
"""


def _parent(how: str, tmp_path: pathlib.Path) -> subprocess.Popen:
    """A launcher in its own process, running the child script ``how``."""
    return subprocess.Popen(
        [sys.executable, "-c", _PARENT, _CHILD, str(tmp_path), how],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_ctrl_c_reaches_the_child_and_gives_its_130_and_message(tmp_path):
    proc = _parent("interrupt", tmp_path)
    try:
        assert proc.stdout.readline() == "training\n"
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err == "dualprop: interrupted after epoch 1; continue with --resume\n"
    assert out == ""


def _gone(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie: ended, not reaped yet by its new parent


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_launcher_killed_by_sigkill_takes_its_child_along(tmp_path):
    """Killing a rank's launcher must stop its training too, or the run's other processes
    would go on with it and never learn that this one is gone."""
    proc = _parent("orphan", tmp_path)
    pid = None
    try:
        assert proc.stdout.readline() == "training\n"
        word, pid, is_child = proc.stdout.readline().split()
        assert (word, is_child) == ("pid", "True")
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while not _gone(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(int(pid)), "the child outlived its launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
        if pid is not None and not _gone(int(pid)):
            os.kill(int(pid), signal.SIGKILL)


def test_lost_process_message_says_what_stopped_and_how_to_resume(tmp_path):
    run = _run_info(tmp_path, process_id=1)  # nothing listens on the coordinator's port
    msg = launcher.lost_process_message(run, "aborted")
    assert msg.startswith("dualprop: process 1 of 2 lost contact with the run: process 0 (the")
    assert f"No checkpoint was written in {tmp_path} yet" in msg
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir()  # unfinished: not counted
    msg = launcher.lost_process_message(run, "aborted")
    assert f"The last checkpoint (epoch 3) is in {tmp_path / 'checkpoints'}" in msg
    assert "restart all 2 processes with the same flags plus --resume" in msg
    detail = "Gloo all-reduce failed: Connection reset by peer"
    msg = launcher.lost_process_message(_run_info(tmp_path, process_id=0), "gloo", detail)
    assert "process 0 of 2 lost contact with the run: another process stopped (Gloo" in msg


def test_the_command_child_reports_a_gloo_error_as_a_lost_peer(tmp_path, capsys, monkeypatch):
    """In the child, a collective that fails on a broken connection becomes the marked line
    and status 75 (at once: ``distributed.exit_now`` in a joined run), not a traceback."""
    from dualprop_jax.training import train

    def fail(*args, **kwargs):
        raise ValueError("UNKNOWN: Gloo all-reduce failed: [pair.cc:538] Connection reset by peer")

    monkeypatch.setattr(train, "train_and_evaluate", fail)
    code = cli.main(["train", "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == launcher.LOST_PROCESS_EXIT_CODE
    assert err == f"{launcher.LOST_MARKER}UNKNOWN: Gloo all-reduce failed: [pair.cc:538] " + (
        "Connection reset by peer\n"
    )


def test_interleaved_gloo_lines_are_recognised_in_pieces():
    """gloo's threads write with std::cout, so two connection lines can interleave (seen in a
    killed-process run): both fragments are gloo's, and a training line is not."""
    first = "[Gloo] Rank [Gloo] Rank 1 is connected to 3 peer ranks. Expected number of co"
    second = "0 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3"
    for line in (GLOO_LINE, first, second):
        assert launcher._GLOO_CONNECTED.search(line), line
    assert not launcher._GLOO_CONNECTED.search("epoch   1  train loss 0.98 acc 64.93%")
