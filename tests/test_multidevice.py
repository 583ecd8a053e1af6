"""Data parallelism: several devices, and several processes, give what one device gives.

The multi-device runs happen in fresh worker processes (``_multiprocess_worker.py``) that set
their CPU device count before JAX starts; this pytest process computes the one-device oracle
with the same functions on ``make_mesh(1)``.
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
def _workers(out: pathlib.Path, commands: list[list[str]], envs: list[dict] | None = None):
    """Start one worker per argument list (with ``envs[i]`` added to its environment); on
    leaving, wait for them and fail (killing them all, so nothing hangs) on a timeout or an
    error."""
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
                        env=dict(_worker_env(), **(envs[i] if envs else {})),
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
    """Two processes with 2 CPU devices each, joined by jax.distributed on localhost; process 1
    keeps gloo's connection lines (DUALPROP_VERBOSE_DISTRIBUTED=1)."""
    out = tmp_path_factory.mktemp("two_processes")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--local-devices", "2", "--coordinator", address, "--num-processes", "2"]
    jobs = ["--job", "steps", "--cases", ",".join(TWO_PROCESS_CASES), "--job", "train"]
    envs = [{distributed.VERBOSE_ENV: ""}, {distributed.VERBOSE_ENV: "1"}]
    with _workers(out, [[*common, "--process-id", str(i), *jobs] for i in range(2)], envs):
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
    """DP⊤ (MLP, CNN and a ResNet graph), DP, BP, damped DP⊤, KP-DP (B_k included), EP and CHL:
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


def test_two_process_output_has_no_gloo_lines_unless_asked(two_processes):
    """gloo prints "[Gloo] Rank 0 is connected to 3 peer ranks. ..." on stdout whenever it
    connects processes; distributed.initialize silences it, DUALPROP_VERBOSE_DISTRIBUTED=1
    (process 1 here) keeps it."""
    quiet = (two_processes / "worker-0.log").read_text()
    assert "[Gloo]" not in quiet, quiet[-2000:]
    verbose = (two_processes / "worker-1.log").read_text()
    assert "[Gloo] Rank 2 is connected to 3 peer ranks" in verbose, verbose[-2000:]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(coordinator_address="localhost"), "--coordinator localhost is invalid: use 'host:"),
        (dict(num_processes=None), "--num-processes is missing: it must be an integer >= 1"),
        (dict(num_processes=0), "--num-processes 0 is invalid"),
        (dict(process_id=None), r"--process-id is missing: .* 0\.\.1 \(--num-processes 2\)"),
        (dict(process_id=2), r"--process-id 2 is invalid: .* 0\.\.1 \(--num-processes 2\)"),
        (dict(local_cpu_devices=0), "--local-cpu-devices 0 is invalid: it must be an integer"),
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


def test_lost_process_message_says_what_stopped_and_how_to_resume(tmp_path, monkeypatch):
    run = dict(
        process_id=1, num_processes=2, coordinator=f"127.0.0.1:{_free_port()}",
        heartbeat_timeout_s=30, workdir=tmp_path, resume="--resume",
    )  # fmt: skip
    monkeypatch.setattr(distributed, "_run", run)
    msg = distributed.lost_process_message()  # nothing listens on the coordinator's port
    assert msg.startswith("dualprop: process 1 of 2 lost contact with the run: process 0 (the")
    assert f"No checkpoint was written in {tmp_path} yet" in msg
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir()  # unfinished: not counted
    msg = distributed.lost_process_message()
    assert f"The last checkpoint (epoch 3) is in {tmp_path / 'checkpoints'}" in msg
    assert "restart all 2 processes with the same flags plus --resume" in msg
    monkeypatch.setitem(run, "process_id", 0)
    monkeypatch.setitem(run, "resume", None)  # the Python API
    msg = distributed.lost_process_message("Gloo all-reduce failed: Connection reset by peer")
    assert "process 0 of 2 lost contact with the run: another process stopped (Gloo" in msg
    assert "train_and_evaluate(..., resume=True)" in msg


_DYING = """
import os, pathlib, sys, jax
from dualprop_jax.training import distributed
distributed._run.update(
    process_id=0, num_processes=2, coordinator="127.0.0.1:1", heartbeat_timeout_s=30,
    workdir=pathlib.Path(sys.argv[2]), resume="--resume",
)
distributed._install_abort_handler()
distributed._install_excepthook()
print("training", flush=True)
if sys.argv[1] == "abort":
    os.abort()  # what JAX's client does when the coordination service reports a dead process
if sys.argv[1] == "exit_now":
    distributed.exit_now(3)  # an error in this process alone: leave without the exit barrier
    print("still here")
raise jax.errors.JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: Connection reset by peer")
"""


@pytest.mark.parametrize("how", ["abort", "gloo_error"])
def test_a_process_ended_by_a_lost_peer_prints_one_line_and_exits_75(tmp_path, how):
    """The two ways a survivor learns that a process stopped: JAX's abort (SIGABRT) and a gloo
    collective that fails in Python. Either way: the lost-contact line, no traceback, status 75."""
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-c", _DYING, how, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=_worker_env(),
    )  # fmt: skip
    assert proc.returncode == distributed.LOST_PROCESS_EXIT_CODE, proc.stderr
    assert proc.stdout == "training\n"
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dualprop: process 0 of 2 lost contact with the run: another"), last
    if how == "gloo_error":
        assert "(UNKNOWN: Gloo all-reduce failed: Connection reset by peer)" in last, last
    assert f"The last checkpoint (epoch 2) is in {tmp_path / 'checkpoints'}" in last, last


def test_exit_now_ends_only_a_multi_process_run(tmp_path):
    assert distributed.exit_now(3) is None  # no run: returns
    proc = subprocess.run(
        [sys.executable, "-c", _DYING, "exit_now", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=_worker_env(),
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "training\n", "")


KILL_HEARTBEAT_S = 10
# --feed host: the host feed across processes (the short runs above take the device feed)
KILL_RUN = ["--max-train", "3000", "--widths", "128", "--epochs", "3", "--batch-size", "100",
            "--feed", "host"]  # fmt: skip


def _start_cli_pair(out: pathlib.Path, workdir: pathlib.Path, tag: str, *extra: str):
    """Two processes of ``dualprop train`` (through the worker, which joins the run as the
    command does) on localhost; their combined stdout+stderr go to ``out/<tag>-<i>.log``.
    They share a persistent compilation cache in ``out``: a second pair compiles nothing."""
    address = f"127.0.0.1:{_free_port()}"
    cache = dict(JAX_COMPILATION_CACHE_DIR=str(out / "jax-cache"))
    env = dict(_worker_env(), **cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    procs = []
    for i in range(2):
        args = [
            "--local-devices", "2", "--coordinator", address, "--num-processes", "2",
            "--process-id", str(i), "--heartbeat-timeout", str(KILL_HEARTBEAT_S), "--job", "cli",
            "--", "train", "--workdir", str(workdir), *KILL_RUN, *extra,
        ]  # fmt: skip
        with (out / f"{tag}-{i}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(out / f"{tag}-{i}"), *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
    return procs


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_killed_process_ends_the_other_clearly_and_resume_finishes(tmp_path):
    """SIGKILL one of two processes in epoch 2 of 3: the survivor exits with status 75 within
    the heartbeat timeout (10 s here, 30 s by default; JAX alone: a C++ abort and stack trace
    after ~50 s), its last line names the last checkpoint and --resume, and both processes
    restarted with --resume finish the run from that checkpoint."""
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
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log0.read_text()
    last = text.strip().splitlines()[-1]
    assert status == distributed.LOST_PROCESS_EXIT_CODE, text[-3000:]
    assert took <= KILL_HEARTBEAT_S + 15, took  # ~0.7-1x the heartbeat timeout, plus load
    saved = checkpoints.latest_epoch(workdir)
    assert saved is not None and saved < 3, saved
    assert last.startswith("dualprop: process 0 of 2 lost contact with the run: another"), last
    assert f"The last checkpoint (epoch {saved}) is in {workdir / 'checkpoints'}" in last, last
    assert "restart all 2 processes with the same flags plus --resume" in last, last
    assert "[Gloo]" not in text, "gloo's connection lines"

    procs = _start_cli_pair(tmp_path, workdir, "resumed", "--resume")
    try:
        statuses = [proc.wait(timeout=150) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    resumed = (tmp_path / "resumed-0.log").read_text()
    assert statuses == [0, 0], resumed[-3000:] + (tmp_path / "resumed-1.log").read_text()[-3000:]
    assert f"resuming after epoch {saved}" in resumed
    assert "data: fed from the host" in resumed
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
