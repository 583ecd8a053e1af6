"""Run a test worker script in a fresh CPU-only process (it chooses its own device count)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def run_cpu_worker(script: str, out: pathlib.Path, *args: str, timeout: int = 240) -> dict:
    """``python tests/<script> OUT *args`` with JAX on the CPU and no inherited device count;
    fails the test with the worker's stderr if it fails; returns the arrays it saved to OUT."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / script), str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))
