"""Hardening of a run and of the command: resume a user can live with, one-line messages for a
user's mistakes that lose nothing, true messages, the ``dualprop`` command, readable plots.

Real data: a Fashion-MNIST subset saved as an ``.npz`` (the ``--dataset file.npz`` route).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

import dualprop_jax as dp
from dualprop_jax import cli, rules
from dualprop_jax.training import checkpoints, plots, progress
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.progress import ConsoleProgress


def _args(npz, workdir, *extra):
    return ["train", "--dataset", str(npz), "--widths", "32", "--batch-size", "100",
            "--workdir", str(workdir), "--seed", "1", *extra]  # fmt: skip


def _run(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _files(workdir: pathlib.Path) -> dict[str, float]:
    """Every file under ``workdir`` with its modification time: what 'nothing lost' compares."""
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in workdir.rglob("*")}


# ------------------------------------------------------------------------------ 1. resume


def test_resume_on_another_machine_with_more_epochs_equals_a_straight_run(
    fmnist_npz, tmp_path, capsys
):
    """Settings that do not change the math may differ; --epochs may be raised. Oracle: with a
    constant learning rate, 1 epoch + resume to 3 equals 3 epochs straight, bit for bit."""
    first = tmp_path / "resumed"
    assert cli.main(_args(fmnist_npz, first, "--epochs", "1")) == 0
    more = ["--epochs", "3", "--devices", "1", "--eval-batch-size", "64", "--keep-checkpoints",
            "3", "--diagnostics-every", "5", "--data-dir", str(tmp_path)]  # fmt: skip
    code, out, err = _run([*_args(fmnist_npz, first, *more), "--resume"], capsys)
    assert code == 0, err
    assert "resuming after epoch 1" in out
    straight = tmp_path / "straight"
    assert cli.main(_args(fmnist_npz, straight, "--epochs", "3")) == 0
    _, a, _ = checkpoints.load_checkpoint(first)
    _, b, _ = checkpoints.load_checkpoint(straight)
    chex.assert_trees_all_equal(a["params"], b["params"])
    results = json.loads((first / "results.json").read_text())
    (ext,) = results["epoch_extensions"]
    assert ext["at_epoch"] == 1 and ext["from_epochs"] == 1 and ext["to_epochs"] == 3
    assert ext["lr_at_resume_before"] == ext["lr_at_resume_after"] == 1e-3  # constant rate
    assert checkpoints.saved_epochs(first) == [3, 2, 1]  # --keep-checkpoints 3 took effect


def test_resume_records_what_a_longer_cosine_schedule_does(fmnist_npz, tmp_path):
    """Oracle: the cosine formula η·½(1 + cos(π t / T)) at the resume step t, for the saved
    and for the raised number of epochs."""
    w = tmp_path / "cos"
    base = ["--lr-schedule", "cosine", "--lr", "0.002"]
    assert cli.main(_args(fmnist_npz, w, *base, "--epochs", "2")) == 0
    assert cli.main([*_args(fmnist_npz, w, *base, "--epochs", "4"), "--resume"]) == 0
    (ext,) = json.loads((w / "results.json").read_text())["epoch_extensions"]
    steps = 540 // 100  # 10% of 600 held out for validation
    t = 2 * steps
    assert ext["lr_at_resume_before"] == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi)))
    expected_after = 0.002 * 0.5 * (1 + math.cos(math.pi * t / (4 * steps)))
    assert ext["lr_at_resume_after"] == pytest.approx(expected_after, rel=1e-6)


def test_resume_that_changes_the_math_lists_each_field(fmnist_npz, tmp_path, capsys):
    w = tmp_path / "run"
    assert cli.main(_args(fmnist_npz, w, "--epochs", "1")) == 0
    before = _files(w)
    code, _, err = _run(
        [*_args(fmnist_npz, w, "--epochs", "1", "--lr", "0.1", "--beta", "0.5"), "--resume"],
        capsys,
    )
    assert code == 2
    assert "learning_rate: saved 0.001, given 0.1" in err
    assert "rule.beta: saved 0.01, given 0.5" in err
    assert _files(w) == before  # nothing was touched


def test_resume_needs_only_the_flags_it_changes(fmnist_npz, tmp_path, capsys):
    """A resume starts from the saved settings: ``--workdir W --resume --epochs 2`` continues
    a run made with a dataset, widths and seed it does not repeat. Oracle: a straight 2-epoch
    run with the same flags (constant rate: equal bit for bit). A flag that is given and
    differs from the saved value is still refused, by name."""
    w = tmp_path / "run"
    assert cli.main(_args(fmnist_npz, w, "--epochs", "1")) == 0
    code, _, err = _run(["train", "--workdir", str(w), "--seed", "2", "--resume"], capsys)
    assert code == 2 and "seed: saved 1, given 2" in err and "dataset" not in err
    code, out, err = _run(["train", "--workdir", str(w), "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    assert "resuming after epoch 1" in out
    saved = json.loads((w / "config.json").read_text())
    assert saved["dataset"] == str(fmnist_npz) and saved["widths"] == [32]
    straight = tmp_path / "straight"
    assert cli.main(_args(fmnist_npz, straight, "--epochs", "2")) == 0
    chex.assert_trees_all_equal(
        checkpoints.load_checkpoint(w)[1]["params"],
        checkpoints.load_checkpoint(straight)[1]["params"],
    )


def test_an_interrupted_run_resumes_to_any_total_above_the_epochs_done(
    fmnist_npz, tmp_path, capsys
):
    """A run planned for 3 epochs and stopped after epoch 1 (its later checkpoints absent, as
    after Ctrl-C) may resume with --epochs 2; --epochs 1 is refused with the smallest total
    that works. Oracle: a straight 2-epoch run (constant rate: equal bit for bit)."""
    w = tmp_path / "run"
    assert cli.main(_args(fmnist_npz, w, "--epochs", "3", "--keep-checkpoints", "3")) == 0
    for epoch in (2, 3):
        for f in sorted((w / "checkpoints" / str(epoch)).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (w / "checkpoints" / str(epoch)).rmdir()
    assert checkpoints.latest_epoch(w) == 1
    code, _, err = _run(["train", "--workdir", str(w), "--epochs", "1", "--resume"], capsys)
    assert code == 2
    assert "epochs: given 1, but the run has done 1 of its 3" in err and "--epochs 2" in err
    code, _, err = _run(["train", "--workdir", str(w), "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    (ext,) = json.loads((w / "results.json").read_text())["epoch_extensions"]
    assert ext["at_epoch"] == 1 and ext["from_epochs"] == 3 and ext["to_epochs"] == 2
    straight = tmp_path / "straight"
    assert cli.main(_args(fmnist_npz, straight, "--epochs", "2")) == 0
    chex.assert_trees_all_equal(
        checkpoints.load_checkpoint(w)[1]["params"],
        checkpoints.load_checkpoint(straight)[1]["params"],
    )


def test_resume_of_a_folder_without_a_run_is_an_error(fmnist_npz, tmp_path, capsys):
    missing = tmp_path / "mistyped"
    code, _, err = _run([*_args(fmnist_npz, missing, "--epochs", "1"), "--resume"], capsys)
    assert code == 2 and "holds no run" in err and "drop --resume" in err
    assert not missing.exists()  # a mistyped path does not start a new run


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(fmnist_npz, tmp_path, capsys):
    """Oracle: resuming from the good epoch 1 (constant rate) ends where a straight run ends."""
    w = tmp_path / "run"
    assert cli.main(_args(fmnist_npz, w, "--epochs", "2")) == 0
    for f in (w / "checkpoints" / "2").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")  # every file of the latest checkpoint emptied
    with pytest.warns(UserWarning, match=r"epoch 2 .*cannot be read.*resumes from epoch 1"):
        code, out, err = _run([*_args(fmnist_npz, w, "--epochs", "3"), "--resume"], capsys)
    assert code == 0, err
    assert "resuming after epoch 1" in out
    assert any((w / "damaged").iterdir())  # set aside, not deleted
    straight = tmp_path / "straight"
    assert cli.main(_args(fmnist_npz, straight, "--epochs", "3")) == 0
    chex.assert_trees_all_equal(
        checkpoints.load_checkpoint(w)[1]["params"],
        checkpoints.load_checkpoint(straight)[1]["params"],
    )


# ------------------------------------------------------------ 2. no traceback, nothing lost


def test_workdir_that_is_a_file_or_cannot_be_written(fmnist_npz, tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("my notes")
    code, _, err = _run(_args(fmnist_npz, afile, "--epochs", "1"), capsys)
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1
    assert afile.read_text() == "my notes"
    code, _, err = _run(_args(fmnist_npz, afile / "run", "--epochs", "1"), capsys)
    assert code == 2 and "cannot be written" in err and err.count("\n") == 1


def test_config_that_is_not_json(tmp_path, capsys):
    bad = tmp_path / "setup.json"
    bad.write_text("{'epochs': 3,}")
    code, _, err = _run(["train", "--config", str(bad)], capsys)
    assert code == 2 and str(bad) in err and "not valid JSON" in err and err.count("\n") == 1


def test_ctrl_c_stops_with_130_and_the_run_resumes(fmnist_npz, tmp_path):
    w = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = _args(fmnist_npz, w, "--epochs", "20")
    # Ctrl-C as a user's terminal delivers it: a parallel test runner (pytest-xdist) may run
    # this test with SIGINT ignored, which the child would inherit and keep ignoring.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dualprop_jax.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (checkpoints.latest_epoch(w) or 0) >= 1:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    epoch = checkpoints.latest_epoch(w)
    assert f"interrupted after epoch {epoch}; continue with --resume" in err
    assert "Traceback" not in err
    meta = checkpoints.load_checkpoint(w)[2]  # the last checkpoint is intact
    assert meta["epoch"] == epoch
    assert epoch < 20, "the run finished before it could be interrupted"
    assert cli.main([*args, "--resume"]) == 0
    assert checkpoints.load_checkpoint(w)[2]["epoch"] == 20


# --------------------------------------------------------------------- 3. true messages


def test_divergence_in_the_first_epoch_names_no_checkpoint(fmnist_npz, tmp_path, capsys):
    code, _, err = _run(_args(fmnist_npz, tmp_path / "r", "--epochs", "1", "--lr", "1e30",
                              "--optimizer", "sgd", "--momentum", "0"), capsys)  # fmt: skip
    assert code == 1
    assert "No checkpoint was written" in err and "epoch 0" not in err
    assert "--rule dp_top" not in err  # the run already uses DP⊤
    assert "lower --lr than 1e+30" in err


def test_no_validation_set_prints_no_val_and_says_which_params_were_tested(
    fmnist_npz, tmp_path, capsys
):
    code, out, err = _run(_args(fmnist_npz, tmp_path / "r", "--epochs", "2",
                                "--val-fraction", "0"), capsys)  # fmt: skip
    assert code == 0, err
    assert "nan" not in out and "val" not in out.split("test accuracy")[0].split("\n", 1)[1]
    assert "best val" not in out
    assert "parameters of the last epoch, 2 (no validation set)" in out
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["tested_epoch"] == 2 and results["best_val_accuracy"] is None


def test_one_step_per_epoch_finishes_with_a_summary(fmnist_npz, tmp_path, capsys):
    code, out, err = _run(_args(fmnist_npz, tmp_path / "r", "--epochs", "1",
                                "--batch-size", "540"), capsys)  # fmt: skip
    assert code == 0, err
    assert "test accuracy:" in out and "steps/s" not in out


def test_multi_process_flags_without_coordinator_name_the_flags(tmp_path, capsys):
    code, _, err = _run(["train", "--num-processes", "2", "--process-id", "0",
                         "--workdir", str(tmp_path)], capsys)  # fmt: skip
    assert code == 2
    assert "--num-processes, --process-id" in err and "--coordinator" in err
    assert "num_processes=" not in err


# ------------------------------------------------------------------------- 4. the command


def test_help_shows_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]
    defaults = TrainConfig()
    for flag, (field, _) in cli.FLAGS.items():
        value = getattr(defaults, field)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        assert f"(default: {shown})" in text.split(flag, 1)[1][:300], flag
    ep, chl = rules.equilibrium_prop(), rules.chl()
    assert f"--beta BETA nudging strength β > 0 (dp, dp_top: 0.01; ep: {ep.beta:g})" in text
    for flag, shown in [
        ("--free-steps", ep.free_steps),
        ("--nudged-steps", ep.nudged_steps),
        ("--clamped-steps", chl.clamped_steps),
        ("--nudging", ep.nudging),
        ("--sigma", ep.activation),
        ("--start", ep.start),
    ]:
        assert f"(default: {shown})" in text.split(flag, 1)[1][:200], flag


def test_algo_the_old_name_of_rule_is_gone(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--algo", "bp"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --algo bp" in capsys.readouterr().err


def test_config_file_of_the_old_flat_format_is_refused_naming_the_current_one(tmp_path, capsys):
    """A config with the rule settings at the top level (algo, alpha, ...: the format before
    the rule was one field) is not read; the message shows the file in the current format."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"algo": "dp", "alpha": 0.3, "beta": 0.05, "widths": [16]}))
    code, _, err = _run(["train", "--config", str(old), "--workdir", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"config file {old}: " in err and "the old flat format" in err
    assert '"rule": {"name": "dp", "alpha": 0.3, "beta": 0.05}' in err
    assert not (tmp_path / "r").exists()


def test_python_m_dualprop_jax_cli_is_the_dualprop_command():
    proc = subprocess.run(
        [sys.executable, "-m", "dualprop_jax.cli", "--version"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("dualprop ")


def test_version(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert importlib.metadata.version("dualprop-jax") in capsys.readouterr().out


def test_eval_of_a_saved_run_repeats_its_test_and_val_accuracy(fmnist_npz, tmp_path, capsys):
    """Oracle: the accuracies train_and_evaluate recorded for the best-validation parameters."""
    w = tmp_path / "run"
    assert cli.main(_args(fmnist_npz, w, "--epochs", "2")) == 0
    results = json.loads((w / "results.json").read_text())
    capsys.readouterr()
    code, out, _ = _run(["eval", "--workdir", str(w)], capsys)
    assert code == 0 and f"test accuracy: {100 * results['test_accuracy']:.2f}%" in out
    code, out, _ = _run(["eval", "--workdir", str(w), "--split", "val"], capsys)
    assert code == 0 and f"val accuracy: {100 * results['best_val_accuracy']:.2f}%" in out
    code, _, err = _run(["eval", "--workdir", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "holds no saved run" in err


def test_progress_shows_the_rule_as_configured():
    assert progress.describe_rule(rules.dual_prop(variant="dp", fast=True)) == (
        "dp+fast (α=0.5, β=0.01)"
    )
    assert (
        progress.describe_rule(rules.dual_prop(passes=3, schedule="bottom_up", dtype="bfloat16"))
        == "dp_top (α=0.5, β=0.01, 3 bottom_up passes, bfloat16)"
    )
    published = rules.dual_prop(passes=15, schedule="bottom_up", sweep=False)
    assert progress.describe_rule(published) == (
        "dp_top (α=0.5, β=0.01, 15 bottom_up passes, no top-down sweep)"
    )
    assert progress.describe_rule(rules.backprop()) == "bp"


def test_progress_to_a_pipe_is_one_line_per_epoch(fmnist_npz, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    args = _args(fmnist_npz, tmp_path / "r", "--epochs", "2", "--fast")
    proc = subprocess.run([sys.executable, "-m", "dualprop_jax.cli", *args], env=env,
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr and "it/s" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert "dp_top+fast (α=0.5, β=0.01)" in lines[0]  # the rule as configured
    assert [line.split()[:2] for line in lines if line.startswith("epoch")] == [
        ["epoch", "1"], ["epoch", "2"]
    ]  # fmt: skip


def test_train_and_evaluate_from_python_shows_progress_and_writes_plots(fmnist_npz, tmp_path):
    import io

    stream = io.StringIO()
    cfg = TrainConfig(dataset=str(fmnist_npz), widths=(32,), epochs=2, diagnostics_every=3)
    dp.train_and_evaluate(cfg, tmp_path / "r", hook=ConsoleProgress(stream))
    text = stream.getvalue()
    assert text.count("\nepoch ") == 2 and "test accuracy:" in text
    assert (tmp_path / "r" / "curves.png").stat().st_size > 0
    assert (tmp_path / "r" / "alignment.png").stat().st_size > 0


# ------------------------------------------------------------------------------ 5. plots


@pytest.fixture
def captured_figures(monkeypatch):
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    monkeypatch.undo()
    for fig in figures:
        plots.plt.close(fig)


def test_alignment_plot_shows_one_minus_cosine_on_a_log_scale(tmp_path, captured_figures):
    diagnostics = [
        {"step": s, "epoch": 1, "cosine": {"layers/0/kernel": c, "layers/1/kernel": 1.0}}
        for s, c in ((0, 0.9998), (10, 0.99999))
    ]
    plots.plot_alignment(diagnostics, tmp_path / "a.png")
    ((ax, *_),) = [fig.axes for fig in captured_figures]
    assert ax.get_yscale() == "log"
    first, second = ax.get_lines()
    np.testing.assert_allclose(first.get_ydata(), [2e-4, 1e-5], rtol=1e-6)
    np.testing.assert_allclose(second.get_ydata(), [plots.FLOOR, plots.FLOOR])


def test_alignment_floor_is_the_rounding_of_the_dtype_and_is_labelled(tmp_path, captured_figures):
    """Oracle: 1 − cos in closed form; the floor is the dtype's eps, so float32 rounding (1 − cos
    of 0 or 2**-24) is drawn at eps ≈ 1.2e-7 on a band saying so, not decades lower."""
    eps32, eps64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)
    assert plots.FLOOR == plots.rounding_floor() == plots.rounding_floor("float32") == eps32
    assert plots.rounding_floor(np.float64) == eps64
    cosine = np.array([1.0, 1 - 2**-24, 1 - 2**-23, 1 - 1e-5, 0.5, -1.0])
    gap = 1.0 - cosine  # 0, eps32/2, eps32, 1e-5, 0.5, 2 (exact in float64)
    np.testing.assert_array_equal(plots.floored_gap(cosine), [eps32, eps32, *gap[2:]])
    np.testing.assert_array_equal(plots.floored_gap(cosine, "float64"), [eps64, *gap[1:]])
    diagnostics = [
        {"step": s, "epoch": 1, "cosine": {"layers/0/kernel": c}}
        for s, c in ((0, 1.0), (10, 1 - 2**-24), (20, 0.999))
    ]
    plots.plot_alignment(diagnostics, tmp_path / "a.png")
    ((ax, *_),) = [fig.axes for fig in captured_figures]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [eps32, eps32, 1e-3])
    assert any("float32 rounding" in t.get_text() for t in ax.get_legend().get_texts())
    assert eps32 / 10 < ax.get_ylim()[0] < eps32  # the axis ends just below the floor


def test_curves_have_integer_epochs_no_empty_val_and_the_test_mark(tmp_path, captured_figures):
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5 + 0.1 * e,
         "val_loss": float("nan"), "val_accuracy": float("nan"), "epoch_time_s": 1.0}
        for e in (1, 2, 3)
    ]  # fmt: skip
    plots.plot_curves(history, tmp_path / "c.png", test_accuracy=0.7, tested_epoch=3)
    (fig,) = captured_figures
    ax_loss, ax_acc = fig.axes
    for ax in (ax_loss, ax_acc):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "val" not in labels
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
    test_line = [line for line in ax_acc.get_lines() if line.get_label() == "test"]
    assert test_line and list(test_line[0].get_xydata()[0]) == [3, 70.0]


def _segment_points(line, per_segment: int = 50) -> np.ndarray:
    """Points along a drawn line's segments, in display coordinates."""
    xy = line.get_xydata()
    t = np.linspace(0, 1, per_segment)[None, :, None]
    dense = (xy[:-1, None] + t * (xy[1:] - xy[:-1])[:, None]).reshape(-1, 2)
    return line.get_transform().transform(np.concatenate([xy, dense]))


def test_the_test_accuracy_text_covers_no_curve(tmp_path, captured_figures):
    """The mark of a run like a user's: the test accuracy at the best epoch, just above the
    validation curve. Its text is in the legend (placed off the data), and no text drawn on the
    accuracy panel covers any part of a curve."""
    val = (0.71, 0.76, 0.78, 0.80, 0.82, 0.81)
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.57 + 0.05 * e,
         "val_loss": 1.0 / e, "val_accuracy": v, "epoch_time_s": 1.0}
        for e, v in enumerate(val, 1)
    ]  # fmt: skip
    plots.plot_curves(history, tmp_path / "c.png", test_accuracy=0.825, tested_epoch=5)
    (fig,) = captured_figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax_acc = fig.axes[1]
    texts = [t.get_text() for t in ax_acc.get_legend().get_texts()]
    assert "test 82.50% (epoch 5 params)" in texts, texts
    boxes = [t.get_window_extent(renderer) for t in ax_acc.texts]
    boxes.append(ax_acc.get_legend().get_window_extent(renderer))
    for line in ax_acc.get_lines():
        for box in boxes:
            assert not box.count_contains(_segment_points(line)), (line.get_label(), box)


def test_plots_of_a_dataset_file_are_titled_with_its_name_not_its_path(tmp_path, captured_figures):
    from dualprop_jax.training import train

    w = tmp_path / "run"
    w.mkdir()
    config = TrainConfig(dataset="/some/long/path/to the/file.npz").to_dict()
    (w / "config.json").write_text(json.dumps(config))
    (w / "metrics.csv").write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy\n1,0.5,0.8,0.6,0.75\n"
    )
    cosine = {"layers/0/kernel": 0.99}
    (w / "alignment.json").write_text(json.dumps([{"step": 0, "epoch": 1, "cosine": cosine}]))
    train.write_plots(w)
    curves, alignment = captured_figures
    assert curves.get_suptitle() == "mlp / file.npz / dp_top"
    assert alignment.axes[0].get_title().startswith("mlp / file.npz / dp_top: alignment")
    for dataset, name in [
        ("fashion_mnist", "fashion_mnist"),
        ("rel/dir/file.npz", "file.npz"),
        ("/data/my_folder", "my_folder"),
        ("~/tensorflow_datasets/cifar10/3.0.2", "cifar10/3.0.2"),
        ("cifar10_corrupted/brightness_1", "cifar10_corrupted/brightness_1"),  # a TFDS name
    ]:
        assert plots.dataset_name(dataset) == name, dataset


# ------------------------------------------------------- 2./3. data that is not what it claims


def _saved_npz(path, fmnist_raw, **changes):
    xtr, ytr, xte, yte = fmnist_raw
    arrays = dict(x_train=xtr[:300], y_train=ytr[:300], x_test=xte[:100], y_test=yte[:100])
    np.savez(path, **{**arrays, **changes})
    return path


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_npz_that_is_not_a_readable_archive(damage, fmnist_raw, tmp_path, capsys):
    path = _saved_npz(tmp_path / "data.npz", fmnist_raw)
    raw = path.read_bytes()
    content = {"truncated": raw[: len(raw) // 2], "text": b"x_train,y_train\n1,2\n", "empty": b""}
    path.write_bytes(content[damage])
    code, _, err = _run(_args(path, tmp_path / "run", "--epochs", "1"), capsys)
    assert code == 2 and "is not a readable .npz archive" in err and "np.savez" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert path.read_bytes() == content[damage]  # the user's file is left as it was
    assert not (tmp_path / "run").exists()


def test_labels_that_do_not_fit_the_data_are_reported(fmnist_raw, tmp_path, capsys):
    y = fmnist_raw[1][:300].copy()
    y[7] = 999  # one stray label in a 10-class set: silently a 1000-way output before
    path = _saved_npz(tmp_path / "data.npz", fmnist_raw, y_train=y)
    code, _, err = _run(_args(path, tmp_path / "run", "--epochs", "1"), capsys)
    assert code == 2 and "do not fit a 1000-way output" in err and "11 distinct classes" in err
    assert "np.unique(y, return_inverse=True)" in err


@pytest.mark.parametrize(
    "shift, gap, outputs, missing",
    [(1, None, 11, "class(es) 0 never"), (0, 3, 10, "class(es) 3 never")],
    ids=["labels_1_to_10", "a_gap_at_3"],
)
def test_labels_with_a_gap_are_reported(fmnist_raw, tmp_path, capsys, shift, gap, outputs,
                                        missing):  # fmt: skip
    """Labels 1..10, or 0..9 without class 3, would build an output with a class no example
    has: refused with the class that is missing and the remap."""
    y = fmnist_raw[1][:300].astype(np.int64) + shift
    y_test = fmnist_raw[3][:100].astype(np.int64) + shift
    if gap is not None:
        y[y == gap], y_test[y_test == gap] = gap + 1, gap + 1
    path = _saved_npz(tmp_path / "data.npz", fmnist_raw, y_train=y, y_test=y_test)
    code, _, err = _run(_args(path, tmp_path / "run", "--epochs", "1"), capsys)
    assert code == 2 and f"do not fit a {outputs}-way output" in err and missing in err
    assert "np.unique(y, return_inverse=True)" in err and not (tmp_path / "run").exists()


def test_multi_process_errors_name_cli_flags(tmp_path, capsys):
    code, _, err = _run(["train", "--coordinator", "127.0.0.1:5000", "--num-processes", "2",
                         "--workdir", str(tmp_path)], capsys)  # fmt: skip
    assert code == 2 and "--process-id is missing" in err and "process_id=" not in err
