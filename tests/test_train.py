"""Training end to end on real Fashion-MNIST: accuracy, resume after a kill, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import cli, rules
from dualprop_jax.data import load_dataset
from dualprop_jax.errors import DivergenceError
from dualprop_jax.training import checkpoints, parallel, steps, train
from dualprop_jax.training.config import TrainConfig


@pytest.fixture(scope="module")
def fmnist_12k():
    return load_dataset("fashion_mnist", max_train=12000, seed=0)


def test_one_epoch_dp_top_mlp_reaches_80_percent_on_fashion_mnist(fmnist_12k, tmp_path):
    cfg = TrainConfig(
        rule=rules.dual_prop(variant="dp_top", alpha=0.5, beta=0.01),
        widths=(512,),
        epochs=1,
        max_train=12000,
        batch_size=100,
    )
    results = train.train_and_evaluate(cfg, tmp_path / "run", dataset=fmnist_12k)
    assert results["num_train"] >= 10000
    assert results["test_accuracy"] >= 0.80, results["test_accuracy"]
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in (
        "rule",
        "dataset",
        "model",
        "epochs",
        "seed",
        "best_val_accuracy",
        "test_accuracy",
        "train_time_s",
        "steps_per_s",
        "jax_version",
        "backend",
    ):
        assert key in on_disk, key
    assert on_disk["rule"]["name"] == "dp_top"
    assert on_disk["rule"]["alpha"] == 0.5 and on_disk["rule"]["beta"] == 0.01
    assert rules.from_dict(on_disk["rule"]) == cfg.rule
    assert 0.0 <= on_disk["best_val_accuracy"] <= 1.0
    assert on_disk["test_accuracy"] == results["test_accuracy"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch,")


def test_train_step_equals_optax_driven_by_hand():
    """The library's train step = contrastive_grad + optax update, done by hand."""
    net, params = dp.split(dp.mlp((12, 8, 3), rngs=nnx.Rngs(0)))
    cfg = TrainConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-3)
    opt = steps.make_optimizer(cfg, steps_per_epoch=10)
    x = jax.random.normal(jax.random.key(0), (6, 12))
    y = jax.numpy.array([0, 1, 2, 0, 1, 2])
    mesh = parallel.make_mesh(1)
    step = steps.make_train_step(net, cfg.rule, opt, mesh=mesh, donate=False)
    state1, m = step(steps.TrainState.create(net, params, cfg.rule, opt, mesh), x, y)
    p1 = state1.params
    # by hand: SGD momentum 0.9 on the DP gradient, plus decoupled weight decay λθ, times lr
    g, aux = dp.contrastive_grad(net, params, x, y, cfg.rule)
    expected = jax.tree.map(lambda p, gi: p - 0.1 * (gi + 1e-3 * p), params, g)
    chex.assert_trees_all_close(p1, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m["loss"], aux.loss, rtol=1e-6)
    # and the second step uses momentum: m2 = 0.9 g1 + g2
    p2 = step(state1, x, y)[0].params
    g2, _ = dp.contrastive_grad(net, p1, x, y, cfg.rule)
    expected2 = jax.tree.map(lambda p, a, b: p - 0.1 * (0.9 * a + b + 1e-3 * p), p1, g, g2)
    chex.assert_trees_all_close(p2, expected2, rtol=1e-5, atol=1e-6)
    assert isinstance(opt, optax.GradientTransformation)


def _cli_args(workdir, epochs):
    return [
        "train",
        "--max-train",
        "3000",
        "--widths",
        "64",
        "--epochs",
        str(epochs),
        "--batch-size",
        "50",
        "--workdir",
        str(workdir),
        "--seed",
        "3",
    ]


def test_killed_run_resumes_to_the_same_final_parameters(tmp_path):
    epochs = 12
    killed = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualprop_jax.cli", *_cli_args(killed, epochs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if checkpoints.latest_epoch(killed) and checkpoints.latest_epoch(killed) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = checkpoints.latest_epoch(killed)
    assert stopped_at is not None and stopped_at < epochs
    assert not (killed / "results.json").exists()

    assert cli.main([*_cli_args(killed, epochs), "--resume"]) == 0
    straight = tmp_path / "straight"
    assert cli.main(_cli_args(straight, epochs)) == 0

    _, resumed_state, resumed_meta = checkpoints.load_checkpoint(killed)
    _, straight_state, straight_meta = checkpoints.load_checkpoint(straight)
    assert resumed_meta["epoch"] == straight_meta["epoch"] == epochs
    chex.assert_trees_all_equal(resumed_state["params"], straight_state["params"])
    chex.assert_trees_all_equal(resumed_state["opt_state"], straight_state["opt_state"])
    r1 = json.loads((killed / "results.json").read_text())
    r2 = json.loads((straight / "results.json").read_text())
    assert r1["test_accuracy"] == r2["test_accuracy"]


# ------------------------------------------------ bad input: clear error, nothing lost


def _run_cli(args, capsys):
    code = cli.main(args)
    return code, capsys.readouterr().err


def test_workdir_with_another_runs_checkpoints_is_not_overwritten(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--max-train",
                "500",
                "--widths",
                "16",
                "--epochs",
                "1",
                "--workdir",
                str(workdir),
            ]
        )
        == 0
    )
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    code, err = _run_cli(
        [
            "train",
            "--max-train",
            "500",
            "--widths",
            "32",
            "--epochs",
            "1",
            "--workdir",
            str(workdir),
        ],
        capsys,
    )
    assert code == 2
    assert "already holds checkpoints" in err and "--resume" in err
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_resume_with_a_different_config_is_refused(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--max-train",
                "500",
                "--widths",
                "16",
                "--epochs",
                "1",
                "--workdir",
                str(workdir),
            ]
        )
        == 0
    )
    code, err = _run_cli(
        [
            "train",
            "--max-train",
            "500",
            "--widths",
            "32",
            "--epochs",
            "1",
            "--workdir",
            str(workdir),
            "--resume",
        ],
        capsys,
    )
    assert code == 2 and "widths: saved [16], given [32]" in err


def test_batch_size_larger_than_training_set(tmp_path, capsys):
    code, err = _run_cli(
        ["train", "--max-train", "200", "--batch-size", "500", "--workdir", str(tmp_path / "w")],
        capsys,
    )
    assert code == 2 and "500" in err and "200" in err and "batch" in err
    assert not (tmp_path / "w").exists()


def test_unknown_dataset_name(tmp_path, capsys):
    code, err = _run_cli(
        ["train", "--dataset", "fashion_mnistt", "--workdir", str(tmp_path / "w")], capsys
    )
    assert code == 2 and "fashion_mnistt" in err and "fashion_mnist" in err
    assert not (tmp_path / "w").exists()


def test_data_dir_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, err = _run_cli(
        ["train", "--data-dir", str(missing), "--workdir", str(tmp_path / "w")], capsys
    )
    assert code == 2 and str(missing) in err and "does not exist" in err


def test_rule_flag_that_does_not_apply_to_the_rule(tmp_path, capsys):
    workdir = tmp_path / "w"
    args = ["train", "--rule", "bp", "--alpha", "0.3", "--max-train", "500", "--widths", "16"]
    code, err = _run_cli([*args, "--epochs", "1", "--workdir", str(workdir)], capsys)
    assert code == 2 and "--alpha" in err and "bp" in err
    assert not workdir.exists()


def test_multi_process_run_without_workdir_is_refused_before_jax_distributed_starts(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, err = _run_cli(
        ["train", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"],
        capsys,
    )
    assert code == 2 and "--workdir is required" in err
    assert not (tmp_path / "runs").exists()


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 255, (100, 8, 8, 1), dtype=np.uint8),
        y_train=rng.integers(0, 3, 100),
        x_test=rng.integers(0, 255, (20, 8, 8, 1), dtype=np.uint8),
        y_test=rng.integers(0, 3, 20),
    )
    arrays.update(overrides)
    np.savez(path, **arrays)
    return str(path)


def test_npz_with_mismatched_lengths(tmp_path, capsys):
    path = _npz(tmp_path / "d.npz", y_train=np.zeros(90, np.int64))
    code, err = _run_cli(["train", "--dataset", path, "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and "100" in err and "90" in err


def test_npz_with_labels_out_of_range(tmp_path, capsys):
    path = _npz(tmp_path / "d.npz", y_train=np.full(100, -1))
    code, err = _run_cli(["train", "--dataset", path, "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and "-1" in err and "label" in err


def test_images_of_the_wrong_rank(tmp_path, capsys):
    path = _npz(tmp_path / "d.npz", x_train=np.zeros((100, 2, 8, 8, 1), np.uint8))
    code, err = _run_cli(["train", "--dataset", path, "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and "rank" in err and "5" in err


def test_image_model_on_flat_vectors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = _npz(
        tmp_path / "flat.npz",
        x_train=rng.normal(size=(100, 20)).astype(np.float32),
        x_test=rng.normal(size=(20, 20)).astype(np.float32),
    )
    code, err = _run_cli(
        [
            "train",
            "--dataset",
            path,
            "--model",
            "cnn",
            "--batch-size",
            "10",
            "--workdir",
            str(tmp_path / "w"),
        ],
        capsys,
    )
    assert code == 2 and "--model mlp" in err


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    """A NaN image that epoch 1 skips (the remainder is dropped) but epoch 2 uses."""
    import dataclasses

    from dualprop_jax.data.pipeline import epoch_batches

    ds = load_dataset("fashion_mnist", max_train=530, seed=0)
    cfg = TrainConfig(widths=(16,), epochs=3, batch_size=100, seed=0)
    used = [set(epoch_batches(530, 100, np.random.default_rng([0, e])).ravel()) for e in (1, 2)]
    poisoned = sorted(used[1] - used[0])[0]
    x = ds.x_train.copy()
    x[poisoned] = np.nan
    ds = dataclasses.replace(ds, x_train=x)
    with pytest.raises(DivergenceError, match=r"became nan at epoch 2.*epoch 1\) is kept"):
        train.train_and_evaluate(cfg, tmp_path / "run", dataset=ds)
    assert checkpoints.latest_epoch(tmp_path / "run") == 1
    assert not (tmp_path / "run" / "results.json").exists()
    _, state, meta = checkpoints.load_checkpoint(tmp_path / "run")
    assert meta["epoch"] == 1
    assert all(bool(np.isfinite(leaf).all()) for leaf in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("when", ["before_the_save", "during_the_save"])
def test_ctrl_c_names_the_epoch_whose_checkpoint_is_on_disk(when, tmp_path, monkeypatch):
    """The interrupt message must name the newest checkpoint on disk, wherever Ctrl-C lands
    around epoch 2's save: after epoch 2 is in the history but before its save starts (seen in
    CI: the message named epoch 2, the disk held epoch 1), or during the save, which
    ``checkpoints.save`` holds back until the checkpoint is written."""
    from dualprop_jax.errors import TrainingInterrupted

    ds = load_dataset("fashion_mnist", max_train=300, seed=0)
    cfg = TrainConfig(widths=(16,), epochs=4, batch_size=100, seed=0)
    real_checkpoint, real_save = train._checkpoint, checkpoints.save

    def checkpoint(state, best):
        if when == "before_the_save" and len(checkpoints.saved_epochs(tmp_path / "run")) == 1:
            raise KeyboardInterrupt
        return real_checkpoint(state, best)

    def save(mgr, epoch, state, meta):
        real_save(mgr, epoch, state, meta)
        if when == "during_the_save" and epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "_checkpoint", checkpoint)
    monkeypatch.setattr(checkpoints, "save", save)
    with pytest.raises(TrainingInterrupted) as info:
        train.train_and_evaluate(cfg, tmp_path / "run", dataset=ds, plots=False)
    on_disk = {"before_the_save": 1, "during_the_save": 2}[when]
    assert checkpoints.latest_epoch(tmp_path / "run") == on_disk
    assert info.value.epoch == on_disk
    assert f"after epoch {on_disk}; continue with --resume" in str(info.value)
    monkeypatch.setattr(train, "_checkpoint", real_checkpoint)
    monkeypatch.setattr(checkpoints, "save", real_save)
    results = train.train_and_evaluate(cfg, tmp_path / "run", dataset=ds, resume=True,
                                       plots=False)  # fmt: skip
    assert checkpoints.load_checkpoint(tmp_path / "run")[2]["epoch"] == 4
    assert np.isfinite(results["test_accuracy"])
