"""The library changes nothing process-wide: no signal handler, no ``sys.excepthook``, no C or
C++ stream, neither when imported nor when a process joins a multi-process run.

Two fresh processes join a run on localhost through ``distributed.initialize`` and run one
collective across both (gloo connects them then, and prints its line with C++'s ``std::cout``).
Each compares what it records before importing dualprop_jax with what it sees afterwards, and
writes to stdout from Python, through the file descriptor and from C; the test reads all of it
from their captured stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

_PROCESS = r"""
import ctypes, json, os, signal, sys
import jax
import numpy as np

def c_level_handlers():
    # proc(5): SigCgt is the mask of signals with a handler installed, at the C level
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)

def state():
    return {
        "SIGABRT handled in C": bool(c_level_handlers() >> (signal.SIGABRT - 1) & 1),
        "SIGABRT": signal.getsignal(signal.SIGABRT),
        "SIGINT": signal.getsignal(signal.SIGINT),
        "SIGTERM": signal.getsignal(signal.SIGTERM),
        "excepthook": sys.excepthook,
    }

before = state()
import dualprop_jax
import dualprop_jax.cli
from dualprop_jax.training import distributed

imported = state()
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), local_cpu_devices=1, timeout_s=60)
from jax.sharding import Mesh, NamedSharding, PartitionSpec

mesh = Mesh(np.array(jax.devices()), ("d",))
x = jax.make_array_from_callback(
    (2,), NamedSharding(mesh, PartitionSpec("d")), lambda index: np.ones(1, np.float32)
)
total = float(jax.jit(lambda v: v.sum())(x).addressable_data(0))  # gloo connects here
joined = state()
report = {
    name: {"import": imported[name] is before[name] or imported[name] == before[name],
           "initialize": joined[name] is before[name] or joined[name] == before[name]}
    for name in before
}
print("report", json.dumps({"total": total, "unchanged": report}), flush=True)
os.write(1, b"os.write reaches stdout\n")
libc = ctypes.CDLL(None)
libc.puts(b"C puts reaches stdout")
libc.fflush(None)
distributed.shutdown()
"""


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_joining_a_run_changes_no_handler_and_silences_no_stream():
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, "-c", _PROCESS, address]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    procs = [subprocess.Popen([*command, str(i)], **pipes) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, err[-3000:]
        lines = out.splitlines()
        (report,) = [json.loads(line[len("report ") :]) for line in lines if line[:7] == "report "]
        assert report["total"] == 2.0  # the collective summed across both processes
        changed = [
            f"{name} ({when})"
            for name, whens in report["unchanged"].items()
            for when, same in whens.items()
            if not same
        ]
        assert not changed, f"process {i} changed: {changed}"
        assert "os.write reaches stdout" in lines
        assert "C puts reaches stdout" in lines
        # C++ std::cout still writes: gloo's own line about the connection
        assert any(line.startswith(f"[Gloo] Rank {i} is connected to 1 peer") for line in lines), (
            out
        )
