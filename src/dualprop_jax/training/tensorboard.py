"""TensorBoard event files of a training run, written without TensorFlow.

With ``TrainConfig.tensorboard`` (``dualprop train --tensorboard``) a run also writes what
``metrics.csv`` and ``alignment.json`` hold as TensorBoard scalars, epoch by epoch, so that
``tensorboard --logdir runs/`` shows the curves while the run goes on (TensorBoard is needed
only to view them: ``pip install tensorboard``). Under ``<workdir>/tensorboard/``:

* ``train/``: ``loss`` and ``accuracy`` (the columns ``train_loss``, ``train_accuracy``),
  ``epoch_time_s``, the rule metrics ``rule/<name>`` (e.g. KP-DP's ``rule/kp_angle/...``) and
  any other column under its own name, at step = epoch; the rule metrics before training at
  step 0; the alignment diagnostics of ``alignment.json`` as ``alignment/cosine/<leaf>`` at
  step = the training step of the check (its ``"step"``);
* ``validation/``: ``loss`` and ``accuracy`` (``val_loss``, ``val_accuracy``) at step = epoch.

The two folders are two TensorBoard runs, so the ``loss`` and ``accuracy`` charts each show the
training and the validation curve together. Values are written as they are: NaN and ±inf stay
(TensorBoard shows them as such), a finite value beyond float32's range becomes ±inf, and an
empty (None) value is left out.

A resume does not rewrite a file: each start of a run, fresh or resumed, adds a new file to
each folder that begins with a SessionLog START at step 0 and then repeats the history so far
(the checkpoint's). TensorBoard drops the earlier files' points at steps >= 0 on a START, and
its fast loader drops a series' points from a step on when that step comes again, so each
epoch is shown once, also when the last epoch's points were not written before an interruption
or a damaged checkpoint made the run resume from an earlier epoch.

The format. An event file (``events.out.tfevents.<int time>.<hostname>``, ``.<n>`` appended
on a clash) is a sequence of TFRecords, all integers little-endian::

    uint64 length | uint32 masked_crc32c(length's 8 bytes) | data | uint32 masked_crc32c(data)

where ``masked_crc32c(b) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32`` with ``c`` the
CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of ``b``. Each ``data`` is a serialized
``Event`` protocol buffer, encoded here field by field: a key varint ``field << 3 | wire type``,
then a varint (wire type 0), 8 bytes (1: a double), a varint length and the bytes (2: a string
or a message) or 4 bytes (5: a float)::

    Event      {double wall_time = 1; int64 step = 2; string file_version = 3;
                Summary summary = 5; SessionLog session_log = 7}
    Summary    {repeated Value value = 1}
    Value      {string tag = 1; float simple_value = 2}
    SessionLog {enum status = 1}  (START = 1)

The first record of a file holds ``file_version = "brain.Event:2"``.
"""

from __future__ import annotations

import math
import os
import pathlib
import socket
import struct
import time
from collections.abc import Iterable, Mapping

FILE_VERSION = "brain.Event:2"
"""The ``file_version`` of the first record: events of format 2 (restarts marked by START)."""

RUNS = ("train", "validation")
"""The folders under ``<workdir>/tensorboard/``: one TensorBoard run each."""

_CRC_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``: reflected polynomial 0x82F63B78, initial value and
    final XOR 0xFFFFFFFF (``crc32c(b"123456789") == 0xE3069283``)."""
    crc = _U32
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def masked_crc32c(data: bytes) -> int:
    """The CRC of a TFRecord: ``((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32``,
    ``c = crc32c(data)``."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _CRC_MASK_DELTA) & _U32


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as a TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 as its two's complement, 10 bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    """``value`` as a little-endian float32; a finite value beyond its range becomes ±inf."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def summary(scalars: Mapping[str, float]) -> bytes:
    """A serialized ``Summary`` of one ``Value{tag, simple_value}`` per item of ``scalars``."""
    values = (
        _length_delimited(1, tag.encode()) + _key(2, 5) + _float32(float(value))
        for tag, value in scalars.items()
    )
    return b"".join(_length_delimited(1, value) for value in values)


def event(
    wall_time: float,
    step: int,
    *,
    file_version: str | None = None,
    scalars: Mapping[str, float] | None = None,
    session_start: bool = False,
) -> bytes:
    """A serialized ``Event`` at ``wall_time`` (seconds since the epoch) and ``step``, holding
    ``file_version``, a ``Summary`` of ``scalars`` or a ``SessionLog{status: START}``."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars is not None:
        out += _length_delimited(5, summary(scalars))
    if session_start:
        out += _length_delimited(7, _key(1, 0) + _varint(1))
    return out


class EventFile:
    """A new event file in ``folder`` (created), its first record the file version.

    Each write opens the file, appends its records and closes it, so what is written is on disk
    at once and nothing is left to close."""

    def __init__(self, folder: str | os.PathLike):
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        stem = f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
        self.path = folder / stem
        clash = 0
        while True:
            try:
                with self.path.open("xb") as fh:  # never another file's records
                    fh.write(tfrecord(event(now, 0, file_version=FILE_VERSION)))
                break
            except FileExistsError:
                clash += 1
                self.path = folder / f"{stem}.{clash}"

    def write(self, items: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Append one event of scalars per ``(step, {tag: value})``; None values left out."""
        now, records = time.time(), []
        for step, scalars in items:
            kept = {tag: value for tag, value in scalars.items() if value is not None}
            if kept:
                records.append(tfrecord(event(now, step, scalars=kept)))
        self._append(records)

    def start_session(self, step: int) -> None:
        """Append a SessionLog START at ``step``: readers drop the points at steps >= ``step``
        read before it."""
        self._append([tfrecord(event(time.time(), step, session_start=True))])

    def _append(self, records: list[bytes]) -> None:
        if records:
            with self.path.open("ab") as fh:
                fh.write(b"".join(records))


def epoch_scalars(row: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{run: {tag: value}}`` of one ``metrics.csv`` row: ``train_<x>`` is tag ``<x>`` of
    ``train``, ``val_<x>`` tag ``<x>`` of ``validation``, any other column but ``epoch`` (the
    step) a tag of its own name in ``train``."""
    out = {run: {} for run in RUNS}
    for column, value in row.items():
        if column == "epoch":
            continue
        if column.startswith("train_"):
            out["train"][column.removeprefix("train_")] = value
        elif column.startswith("val_"):
            out["validation"][column.removeprefix("val_")] = value
        else:
            out["train"][column] = value
    return out


def alignment_scalars(record: Mapping) -> dict[str, float]:
    """``{"alignment/cosine/<leaf>": cosine}`` of one record of ``alignment.json``."""
    return {f"alignment/cosine/{leaf}": c for leaf, c in record["cosine"].items()}


class TrainingEvents:
    """The event files of one start of a training run: a new file in each folder of
    :data:`RUNS` under ``folder`` (``<workdir>/tensorboard``), beginning with a SessionLog
    START at step 0 and the history so far: the rule metrics before training
    (``initial_rule_metrics``, step 0), the rows of ``metrics.csv`` (``history``) and the
    records of ``alignment.json`` (``diagnostics``)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        history: Iterable[Mapping[str, float]] = (),
        diagnostics: Iterable[Mapping] = (),
        initial_rule_metrics: Mapping[str, float] | None = None,
    ):
        self.files = {run: EventFile(pathlib.Path(folder) / run) for run in RUNS}
        for file in self.files.values():
            file.start_session(0)
        if initial_rule_metrics:
            self.files["train"].write([(0, initial_rule_metrics)])
        self.add_epochs(history, diagnostics)

    def add_epochs(
        self, rows: Iterable[Mapping[str, float]], diagnostics: Iterable[Mapping] = ()
    ) -> None:
        """Append rows of ``metrics.csv`` (step = their ``epoch``) and alignment records (step =
        their ``step``)."""
        per_run = {run: [] for run in RUNS}
        for row in rows:
            for run, scalars in epoch_scalars(row).items():
                per_run[run].append((int(row["epoch"]), scalars))
        per_run["train"] += [(int(r["step"]), alignment_scalars(r)) for r in diagnostics]
        for run, items in per_run.items():
            self.files[run].write(items)
