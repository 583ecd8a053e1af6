"""TensorBoard event files written without TensorFlow, read back by TensorBoard's own reader.

Oracles: TensorBoard's ``EventAccumulator`` and raw record loader (they check both CRCs of every
record), its protocol-buffer classes, its own CRC-32C, the CRC-32C check value, and the run's
``metrics.csv`` (read with ``csv``), ``alignment.json`` and ``results.json``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as tb_stub

from dualprop_jax import cli
from dualprop_jax.training import checkpoints, train
from dualprop_jax.training import tensorboard as tb
from dualprop_jax.training.config import TrainConfig

# --------------------------------------------------------------------------- 1. the format


def test_crc32c_check_value_and_tensorboards_own_crc():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tb.crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 100, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tb.crc32c(data) == tb_stub.crc32c(data)
        assert tb.masked_crc32c(data) == tb_stub.masked_crc32c(data)
    crc = 0xE3069283
    assert tb.masked_crc32c(b"123456789") == (
        (((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8
    ) % 2**32


def test_a_record_is_framed_as_tfrecord():
    data = b"\x00\x01event bytes"
    record = tb.tfrecord(data)
    length, length_crc = struct.unpack("<QI", record[:12])
    assert length == len(data) and length_crc == tb_stub.masked_crc32c(record[:8])
    assert record[12:-4] == data
    assert struct.unpack("<I", record[-4:])[0] == tb_stub.masked_crc32c(data)


def _events(path: pathlib.Path) -> list[event_pb2.Event]:
    """Every record of one file, parsed by TensorBoard's protocol-buffer class."""
    loader = event_file_loader.RawEventFileLoader(str(path))
    return [event_pb2.Event.FromString(raw) for raw in loader.Load()]


def test_a_file_starts_with_its_version_then_a_session_start(tmp_path):
    tb.TrainingEvents(tmp_path, [{"epoch": 1, "train_loss": 2.5, "val_accuracy": 0.25}])
    for run, tag, value in (("train", "loss", 2.5), ("validation", "accuracy", 0.25)):
        (path,) = (tmp_path / run).iterdir()
        stamp, host = path.name.removeprefix("events.out.tfevents.").split(".", 1)
        assert host == socket.gethostname() and stamp.isdigit()
        version, start, scalars = _events(path)
        assert version.file_version == "brain.Event:2" and version.step == 0
        assert abs(version.wall_time - int(stamp)) < 60
        assert start.session_log.status == event_pb2.SessionLog.START and start.step == 0
        ((read,),) = [scalars.summary.value]
        assert (scalars.step, read.tag, read.simple_value) == (1, tag, value)


def test_values_are_written_as_they_are(tmp_path):
    """NaN and ±inf stay, a finite value beyond float32 becomes inf, None is left out; the
    steps are the epochs, and large int64 steps (alignment's training steps) survive."""
    history = [
        {"epoch": 1, "train_loss": math.nan, "val_loss": None, "rule/x": 1e300},
        {"epoch": 2, "train_loss": math.inf, "val_loss": -math.inf, "rule/x": -1e300},
    ]
    diagnostics = [{"step": 2**40, "epoch": 2, "cosine": {"layers/0/kernel": 0.5}}]
    tb.TrainingEvents(tmp_path, history, diagnostics)
    train, val = _scalars(tmp_path / "train"), _scalars(tmp_path / "validation")
    assert math.isnan(train["loss"][0][1]) and train["loss"][1] == (2, math.inf)
    assert val["loss"] == [(2, -math.inf)]
    assert train["rule/x"] == [(1, math.inf), (2, -math.inf)]
    assert train["alignment/cosine/layers/0/kernel"] == [(2**40, 0.5)]


def test_two_files_started_in_the_same_second_do_not_clash(tmp_path):
    first, second = tb.EventFile(tmp_path), tb.EventFile(tmp_path)
    assert first.path != second.path and second.path.name.startswith(first.path.name)
    first.write([(1, {"a": 1.0})])
    second.write([(2, {"a": 2.0})])
    assert [len(_events(p)) for p in (first.path, second.path)] == [2, 2]


def test_writing_events_needs_neither_tensorflow_nor_tensorboard(tmp_path):
    code = (
        "import sys\n"
        "from dualprop_jax.training import tensorboard, train\n"
        f"tensorboard.TrainingEvents({str(tmp_path)!r}, [{{'epoch': 1, 'train_loss': 1.0}}])\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "assert not loaded & {'tensorflow', 'tensorboard'}, loaded & {'tensorflow', 'tensorboard'}"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "train").iterdir())) == 1


# ------------------------------------------------------------------- 2. a real training run


def _scalars(folder: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of one TensorBoard run, as TensorBoard loads it (all
    files of the folder, in order, restarts honoured)."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(s.step, s.value) for s in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _tag(column: str) -> tuple[str, str]:
    """Where a ``metrics.csv`` column goes: train_x -> (train, x), val_x -> (validation, x),
    any other column -> (train, column)."""
    if column.startswith("train_"):
        return "train", column[len("train_") :]
    if column.startswith("val_"):
        return "validation", column[len("val_") :]
    return "train", column


def _expected(workdir: pathlib.Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """The series the run's files say TensorBoard must show, ``{(run, tag): points}``: every
    column of metrics.csv at step = epoch, the rule metrics before training at step 0, and
    each cosine of alignment.json at its training step; values rounded to float32."""
    with (workdir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    start = json.loads((workdir / "results.json").read_text())["rule_metrics_start"]
    out = {}
    for column in rows[0]:
        if column == "epoch":
            continue
        points = [(0, start[column])] if column in start else []
        points += [(int(r["epoch"]), float(r[column])) for r in rows if r[column] != ""]
        out[_tag(column)] = points
    for record in json.loads((workdir / "alignment.json").read_text()):
        for leaf, cosine in record["cosine"].items():
            out.setdefault(("train", f"alignment/cosine/{leaf}"), []).append(
                (record["step"], cosine)
            )
    return {k: [(s, float(np.float32(v))) for s, v in p] for k, p in out.items()}


def _assert_tensorboard_shows(workdir: pathlib.Path) -> None:
    expected = _expected(workdir)
    shown = {
        (run, tag): points
        for run in ("train", "validation")
        for tag, points in _scalars(workdir / "tensorboard" / run).items()
    }
    assert sorted(shown) == sorted(expected)
    for key, points in expected.items():
        steps, values = zip(*points, strict=True)
        got_steps, got_values = zip(*shown[key], strict=True)
        assert got_steps == steps, key
        np.testing.assert_array_equal(got_values, values, err_msg=str(key))


def _kp_run(workdir: pathlib.Path, *extra: str) -> int:
    return cli.main(
        ["train", "--dataset", "fashion_mnist", "--max-train", "2000", "--max-eval", "500",
         "--widths", "32,16", "--rule", "dp", "--feedback", "kolen_pollack", "--epochs", "3",
         "--keep-checkpoints", "3", "--diagnostics-every", "10", "--tensorboard",
         "--workdir", str(workdir), *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-epoch KP-DP run on 2000 Fashion-MNIST images with ``dualprop train --tensorboard``,
    and a copy of it that lost its checkpoints of epochs 2 and 3 (its events of those epochs
    kept) and was resumed from epoch 1 to 3 by ``train_and_evaluate``; with the validation
    steps TensorBoard showed at the resume's start and after each of its epochs."""
    base = tmp_path_factory.mktemp("tensorboard")
    first, resumed = base / "first", base / "resumed"
    assert _kp_run(first) == 0
    shutil.copytree(first, resumed)
    for epoch in (2, 3):
        shutil.rmtree(resumed / "checkpoints" / str(epoch))
    assert checkpoints.latest_epoch(resumed) == 1
    config = TrainConfig.from_dict(json.loads((resumed / "config.json").read_text()))
    seen = []

    def hook(event, info):
        if event in ("start", "epoch"):
            validation = _scalars(resumed / "tensorboard" / "validation")
            seen.append([step for step, _ in validation["accuracy"]])

    train.train_and_evaluate(config, resumed, resume=True, hook=hook, plots=False)
    return first, resumed, seen


def test_tensorboard_shows_every_column_of_metrics_csv_and_alignment_json(runs):
    first, _, _ = runs
    assert json.loads((first / "config.json").read_text())["tensorboard"] is True
    with (first / "metrics.csv").open(newline="") as fh:
        columns = next(csv.reader(fh))
    assert {"train_loss", "val_accuracy", "epoch_time_s", "rule/kp_angle/1"} <= set(columns)
    assert ("train", "alignment/cosine/layers/0/kernel") in _expected(first)
    for run in ("train", "validation"):
        assert len(os.listdir(first / "tensorboard" / run)) == 1
    _assert_tensorboard_shows(first)


def test_a_resume_shows_each_epoch_once_with_the_resumed_values(runs):
    """The epoch times of the resumed epochs 2 and 3 differ from the first run's, which are
    still in its events file: TensorBoard must show the resumed ones, each step once, and
    each epoch as soon as it is done."""
    first, resumed, seen = runs
    assert seen == [[1], [1, 2], [1, 2, 3]]
    for run in ("train", "validation"):
        old, new = sorted((resumed / "tensorboard" / run).iterdir())
        assert (old.name, old.read_bytes()) == (
            next((first / "tensorboard" / run).iterdir()).name,
            next((first / "tensorboard" / run).iterdir()).read_bytes(),
        )
        assert _events(new)[1].session_log.status == event_pb2.SessionLog.START
    _assert_tensorboard_shows(resumed)
    times = _scalars(resumed / "tensorboard" / "train")["epoch_time_s"]
    assert [s for s, _ in times] == [1, 2, 3]
    assert times[1:] != _scalars(first / "tensorboard" / "train")["epoch_time_s"][1:]


def test_tensorboard_is_a_checked_setting_free_to_turn_on_for_a_resume():
    with pytest.raises(ValueError, match="tensorboard"):
        TrainConfig(tensorboard="yes")
    saved = TrainConfig(epochs=2)
    checkpoints.check_resumable(saved, saved.replace(tensorboard=True), 1, "w")  # no error
