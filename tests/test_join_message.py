"""A process of a multi-process run whose peers never start says, at once, what it waits for and
where (before JAX blocks in its join for up to 300 s), through the launcher's relayed output."""

import os
import selectors
import signal
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_lone_process_says_what_it_waits_for_and_where(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    args = ["train", "--num-processes", "2", "--process-id", "0", "--coordinator", address,
            "--local-cpu-devices", "1", "--workdir", str(tmp_path / "run")]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "dualprop_jax.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    seen, deadline = [], time.monotonic() + 60
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline and not any("waits up to" in s for s in seen):
                if sel.select(timeout=1.0):
                    line = proc.stderr.readline()
                    if not line:
                        break
                    seen.append(line)
        assert proc.poll() is None, "the process should still be waiting for its peer"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    text = "".join(seen)
    assert "process 0 of 2 joins the run at " + address in text, text[-2000:]
    assert "waits up to 300 s for all 2 processes" in text
    assert f"--coordinator {address} --num-processes 2 and its own --process-id" in text
