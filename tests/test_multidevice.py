"""Data parallelism: several devices, and several processes, give what one device gives.

The multi-device runs happen in fresh worker processes (``_multiprocess_worker.py``) that set
their CPU device count before JAX starts; this pytest process computes the one-device oracle
with the same functions on ``make_mesh(1)``. The ``dualprop`` command's multi-process runs (a
process killed, resume; through its launcher) run the command itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import _multiprocess_worker as worker
import jax
import numpy as np
import pytest
from flax import nnx

from dualprop_jax import models
from dualprop_jax.cli import launcher
from dualprop_jax.training import checkpoints, distributed, parallel, train
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import build_model

WORKER = pathlib.Path(worker.__file__)
TIMEOUT_S = 240
TWO_PROCESS_CASES = ("mlp_dp_top", "mlp_dp", "mlp_bp")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)  # the worker's --local-devices decides
    flags = env.pop("XLA_FLAGS", "").split()
    kept = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    if kept:
        env["XLA_FLAGS"] = " ".join(kept)
    return env


@contextlib.contextmanager
def _workers(out: pathlib.Path, commands: list[list[str]]):
    """Start one worker per argument list; on leaving, wait for them and fail (killing them
    all, so nothing hangs) on a timeout or an error."""
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for i, args in enumerate(commands):
            with (out / f"worker-{i}.log").open("w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER), str(out), *args],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=_worker_env(),
                    )
                )
        deadline = time.monotonic() + TIMEOUT_S
        yield
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tails = "\n".join(
            f"--- worker {i} (exit {rc}):\n"
            + "\n".join((out / f"worker-{i}.log").read_text().splitlines()[-30:])
            for i, rc in failed
        )
        pytest.fail(f"worker(s) failed or timed out (limit {TIMEOUT_S} s):\n{tails}")


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory, request):
    """One process with 4 CPU devices: train steps, the short Fashion-MNIST run, the checks."""
    out = tmp_path_factory.mktemp("four_devices")
    jobs = ["--job", "steps", "--job", "train", "--job", "checks"]
    with _workers(out, [["--local-devices", "4", *jobs]]):
        request.getfixturevalue("oracle")  # meanwhile, on the other core
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Two processes with 2 CPU devices each, joined by jax.distributed on localhost."""
    out = tmp_path_factory.mktemp("two_processes")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--local-devices", "2", "--coordinator", address, "--num-processes", "2"]
    jobs = ["--job", "steps", "--cases", ",".join(TWO_PROCESS_CASES), "--job", "train"]
    with _workers(out, [[*common, "--process-id", str(i), *jobs] for i in range(2)]):
        pass
    return out


@pytest.fixture(scope="module")
def oracle():
    """The same train steps on one device, in this process."""
    mesh = parallel.make_mesh(1)
    out = {}
    for name in worker.CASES:
        out.update(worker.run_steps(name, mesh))
    return out


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """The short Fashion-MNIST run on one device, in this process: its workdir."""
    workdir = tmp_path_factory.mktemp("one_device") / "run"
    results = train.train_and_evaluate(
        worker.short_run_config(1), workdir, dataset=worker.short_run_data()
    )
    assert results["devices"] == 1
    return workdir


def _results(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def _assert_same_final_params(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    """Per leaf, the final parameters differ from the reference's by < 1% of how far training
    moved them (Adam amplifies float rounding in near-zero gradients, so not bit-for-bit)."""
    _, got, meta = checkpoints.load_checkpoint(workdir)
    _, ref, _ = checkpoints.load_checkpoint(reference)
    cfg = worker.short_run_config(None)
    model = build_model(cfg, meta["input_shape"], meta["num_classes"], nnx.Rngs(cfg.seed))
    init = models.split(model)[1]
    leaves = (jax.tree.leaves(t) for t in (got["params"], ref["params"], init))
    for g, r, i in zip(*leaves, strict=True):
        moved = np.linalg.norm(np.asarray(r) - np.asarray(i))
        assert np.linalg.norm(np.asarray(g) - np.asarray(r)) <= 1e-2 * moved


def _assert_steps_match(got, oracle, name: str, atol: float = 1e-5) -> None:
    for i in range(worker.STEPS):
        keys = [k for k in oracle if k.startswith(f"{name}/{i}/")]
        assert keys and all(k in got for k in keys), name
        for k in keys:
            np.testing.assert_allclose(got[k], oracle[k], rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("name", list(worker.CASES))
def test_four_device_steps_equal_one_device_steps(four_devices, oracle, name):
    """DP⊤ (MLP, CNN, a ResNet graph, a ViT), DP, BP, damped DP⊤, KP-DP (B_k included), EP, CHL:
    each of 3 data-parallel steps on a global batch of 16, split 4 ways, gives the
    single-device step's parameters, loss and correct count within 1e-5 (float32). A rule
    whose gradient were a per-device sum (not a mean) would be 4x off."""
    got = np.load(four_devices / "steps-0.npz")
    assert int(got["devices"]) == 4
    _assert_steps_match(got, oracle, name)


def test_four_device_step_averages_gradients_with_an_all_reduce(four_devices):
    checks = json.loads((four_devices / "checks.json").read_text())
    assert checks["devices"] == 4
    assert checks["all_reduce"], "the compiled 4-device step holds no all-reduce"


def test_queued_steps_are_bounded_only_on_several_cpu_devices(four_devices):
    """XLA's CPU all-reduce can deadlock with dozens of queued steps: the loop waits then."""
    assert json.loads((four_devices / "checks.json").read_text())["steps_in_flight"] == 2
    assert parallel.steps_in_flight(parallel.make_mesh(1)) is None
    assert parallel.steps_in_flight(None) is None  # mesh=None: one device


def test_short_run_on_four_devices_matches_one_device(four_devices, one_device_run):
    """One epoch of DP⊤ on 3000 Fashion-MNIST images: same test accuracy within 0.5 points,
    and the same final parameters up to float rounding."""
    four, one = _results(four_devices / "train"), _results(one_device_run)
    assert four["devices"] == 4 and four["processes"] == 1
    assert four["feed"] == one["feed"] == "device"  # "auto" for 3000 images
    assert one["test_accuracy"] >= 0.7, one["test_accuracy"]
    assert abs(four["test_accuracy"] - one["test_accuracy"]) <= 0.005
    _assert_same_final_params(four_devices / "train", one_device_run)


def test_two_processes_end_with_identical_parameters_equal_to_one_process(two_processes, oracle):
    p0 = np.load(two_processes / "steps-0.npz")
    p1 = np.load(two_processes / "steps-1.npz")
    assert int(p0["processes"]) == 2 and int(p0["devices"]) == 4
    assert sorted(p0.files) == sorted(p1.files)
    for k in p0.files:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    for name in TWO_PROCESS_CASES:
        _assert_steps_match(p0, oracle, name)


def test_two_process_training_run_matches_one_device(two_processes, one_device_run):
    """train_and_evaluate across two processes sharing one workdir: the same test accuracy and
    final parameters (from the Orbax checkpoint both wrote) as one device."""
    two, one = _results(two_processes / "train"), _results(one_device_run)
    assert two["processes"] == 2 and two["devices"] == 4
    assert two["feed"] == one["feed"] == "device"  # "auto" for 3000 images
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 0.005
    assert checkpoints.latest_epoch(two_processes / "train") == 1
    _assert_same_final_params(two_processes / "train", one_device_run)


def test_non_divisible_batch_and_too_many_devices_are_clear_errors(four_devices):
    checks = json.loads((four_devices / "checks.json").read_text())
    for key in ("train_batch", "global_array"):
        assert "batch size 5 is not divisible by the 4 devices" in checks[key], checks[key]
        assert "multiple of 4" in checks[key]
    assert "5 devices requested but only 4 are available" in checks["train_devices"]
    assert "JAX_NUM_CPU_DEVICES" in checks["train_devices"]


def test_too_many_devices_in_this_process(tmp_path):
    n = len(jax.devices())
    with pytest.raises(ValueError, match=f"{n + 1} devices requested but only {n} are"):
        parallel.make_mesh(n + 1)
    with pytest.raises(ValueError, match="invalid"):
        parallel.make_mesh(0)
    cfg = TrainConfig(devices=n + 1)
    with pytest.raises(ValueError, match="devices requested"):
        train.train_and_evaluate(cfg, tmp_path / "run", dataset=_tiny_dataset())
    assert not (tmp_path / "run").exists()


def _tiny_dataset():
    from dualprop_jax.data import Dataset

    x = np.zeros((200, 4), np.float32)
    y = np.zeros((200,), np.int32)
    return Dataset("tiny", x, y, x[:0], y[:0], x[:10], y[:10], 2, False, "synthetic")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(coordinator_address="localhost", num_processes=2, process_id=0), "host:port"),
        (dict(coordinator_address="127.0.0.1:0", num_processes=2, process_id=0), "1..65535"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0), ">= 1"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), "0..1"),
        (
            dict(
                coordinator_address="127.0.0.1:1234",
                num_processes=2,
                process_id=0,
                local_cpu_devices=0,
            ),
            "local_cpu_devices",
        ),
    ],
)
def test_distributed_initialize_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)


def test_distributed_initialize_after_jax_started_says_so():
    jax.devices()  # JAX has started in this process
    with pytest.raises(distributed.DistributedError, match="before any other JAX call"):
        distributed.initialize("127.0.0.1:1234", 2, 0, local_cpu_devices=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(coordinator_address="localhost"), "--coordinator localhost is invalid: use 'host:"),
        (dict(num_processes=None), "--num-processes is missing: it must be an integer >= 1"),
        (dict(num_processes=0), "--num-processes 0 is invalid"),
        (dict(process_id=None), r"--process-id is missing: .* 0\.\.1 \(--num-processes 2\)"),
        (dict(process_id=2), r"--process-id 2 is invalid: .* 0\.\.1 \(--num-processes 2\)"),
        (dict(local_cpu_devices=0), "--local-cpu-devices 0 is invalid: it must be an integer"),
        (dict(heartbeat_timeout_s=0), "--heartbeat-timeout 0 is invalid: it must be an integer"),
    ],
)
def test_distributed_initialize_names_cli_flags(kwargs, match):
    """With flag_names=CLI_FLAGS (the dualprop command) the errors name the flags."""
    args = dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=match) as err:
        distributed.initialize(**{**args, **kwargs}, flag_names=distributed.CLI_FLAGS)
    assert "=" not in str(err.value).split(":")[0], "names a Python parameter"


def test_distributed_initialize_failure_names_cli_flags():
    jax.devices()  # JAX has started in this process: joining fails
    with pytest.raises(distributed.DistributedError) as err:
        distributed.initialize(
            "127.0.0.1:1234", 2, 0, local_cpu_devices=2, flag_names=distributed.CLI_FLAGS
        )
    assert "same --coordinator and --num-processes and its own --process-id" in str(err.value)


_EXIT_NOW = """
from dualprop_jax.training import distributed
distributed._joined.update(process_id=0, num_processes=2)  # as initialize leaves it
print("training", flush=True)
distributed.exit_now(3)  # an error in this process alone: leave without the exit barrier
print("still here")
"""


def test_exit_now_ends_only_a_multi_process_run():
    assert distributed.exit_now(3) is None  # no run: returns
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_NOW],
        capture_output=True, text=True, timeout=120, env=_worker_env(),
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "training\n", "")


KILL_HEARTBEAT_S = 10
# --feed host: the host feed across processes (the short runs above take the device feed)
KILL_RUN = ["--max-train", "3000", "--widths", "128", "--epochs", "3", "--batch-size", "100",
            "--feed", "host"]  # fmt: skip


def _start_cli_pair(out: pathlib.Path, workdir: pathlib.Path, tag: str, *extra: str, verbose=1):
    """Two processes of ``dualprop train`` on localhost, each the command's launcher with its
    training child; their combined stdout+stderr go to ``out/<tag>-<i>.log``. Process
    ``verbose`` keeps gloo's connection lines (DUALPROP_VERBOSE_DISTRIBUTED=1). They share a
    persistent compilation cache in ``out``: a second pair compiles nothing."""
    address = f"127.0.0.1:{_free_port()}"
    cache = dict(JAX_COMPILATION_CACHE_DIR=str(out / "jax-cache"))
    env = dict(_worker_env(), **cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    procs = []
    for i in range(2):
        args = [
            "train", "--coordinator", address, "--num-processes", "2", "--process-id", str(i),
            "--local-cpu-devices", "2", "--heartbeat-timeout", str(KILL_HEARTBEAT_S),
            "--workdir", str(workdir), *KILL_RUN, *extra,
        ]  # fmt: skip
        loud = {launcher.VERBOSE_ENV: "1" if i == verbose else ""}
        with (out / f"{tag}-{i}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dualprop_jax.cli", *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env, **loud),
                )
            )
    return procs


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _finish(procs, timeout_s: float) -> list[int]:
    try:
        return [proc.wait(timeout=timeout_s) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_killed_process_ends_the_other_clearly_and_resume_finishes(tmp_path):
    """SIGKILL one of two ``dualprop train`` processes (its launcher; the launcher's training
    child follows it) in epoch 2 of 3: the survivor exits with status 75 within the heartbeat
    timeout (10 s here, 30 s by default; JAX alone: a C++ abort and stack trace after ~50 s),
    its last line names the last checkpoint and --resume, and both processes restarted with
    --resume finish the run from that checkpoint. gloo's connection lines show only where
    DUALPROP_VERBOSE_DISTRIBUTED=1."""
    workdir = tmp_path / "run"
    procs = _start_cli_pair(tmp_path, workdir, "killed")
    log0 = tmp_path / "killed-0.log"
    try:
        _wait_for(lambda: "epoch   1 " in log0.read_text(), 150, "process 0's epoch 1 line")
        assert procs[1].poll() is None
        time.sleep(0.5)  # into epoch 2
        procs[1].kill()
        killed = time.monotonic()
        procs[1].wait()
        try:
            status = procs[0].wait(timeout=KILL_HEARTBEAT_S + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the survivor still runs 40 s after the kill:\n{log0.read_text()}")
        took = time.monotonic() - killed
    finally:
        _finish(procs, 0.1)
    text = log0.read_text()
    last = text.strip().splitlines()[-1]
    assert status == launcher.LOST_PROCESS_EXIT_CODE, text[-3000:]
    assert took <= KILL_HEARTBEAT_S + 15, took  # ~0.7-1x the heartbeat timeout, plus load
    saved = checkpoints.latest_epoch(workdir)
    assert saved is not None and saved < 3, saved
    assert last.startswith("dualprop: process 0 of 2 lost contact with the run: another"), last
    assert f"The last checkpoint (epoch {saved}) is in {workdir / 'checkpoints'}" in last, last
    assert "restart all 2 processes with the same flags plus --resume" in last, last
    assert "[Gloo]" not in text, "gloo's connection lines"
    assert "Traceback" not in text and "Check failure stack trace" not in text, text[-3000:]

    statuses = _finish(_start_cli_pair(tmp_path, workdir, "resumed", "--resume"), 150)
    resumed = (tmp_path / "resumed-0.log").read_text()
    verbose = (tmp_path / "resumed-1.log").read_text()
    assert statuses == [0, 0], resumed[-3000:] + verbose[-3000:]
    assert f"resuming after epoch {saved}" in resumed
    assert "data: fed from the host" in resumed
    assert "[Gloo]" not in resumed, resumed[-3000:]
    assert "[Gloo] Rank 2 is connected to 3 peer ranks" in verbose, verbose[-3000:]
    results = _results(workdir)
    assert results["processes"] == 2 and results["epochs"] == 3
    assert checkpoints.latest_epoch(workdir) == 3
    assert len((workdir / "metrics.csv").read_text().strip().splitlines()) == 1 + 3


def test_pyproject_license_is_an_spdx_expression():
    """A license table is deprecated by setuptools (PEP 639); the SPDX string needs >= 77."""
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    requires = meta["build-system"]["requires"]
    assert "setuptools>=77" in requires, requires
