"""Byte-level text for a language model: a corpus cut into documents, split, and windowed.

The corpus this module knows by name is Debian's ``fortunes`` package (``apt-get install
fortunes``): about 2.5 MB of English quotations, jokes and definitions in plain-text files
under ``/usr/share/games/fortunes/``, each file a list of fortunes separated by lines holding
only ``%``. Any other text works through :func:`text_dataset` with your own documents.

The task is next-byte prediction. The bytes of a split form one stream (documents joined by
``\\n%\\n``, as the files hold them); the stream is cut into windows of ``length + 1``
bytes that start every ``length`` bytes (consecutive windows share one byte), so every byte
but the stream's first (and a tail too short for a window) is a target exactly once:
x = w[:-1], y = w[1:], both int32 of shape (N, ``length``). A model's mean cross-entropy per
predicted byte in nats, over ln 2, is its **bits per byte**.

Documents, not bytes, are split: document i goes to the test split when i ≡ 9 (mod 10), to
validation when i ≡ 8, to training otherwise, so no fortune is cut across two splits.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from dualprop_jax.data.dataset import Dataset
from dualprop_jax.errors import DataError

FORTUNES_DIR = pathlib.Path("/usr/share/games/fortunes")
"""Where Debian's ``fortunes`` package puts its text files."""

SEPARATOR = b"\n%\n"
"""What joins two documents in a split's byte stream (the fortune files' own separator)."""


def fortune_documents(directory: str | os.PathLike = FORTUNES_DIR) -> list[bytes]:
    """Every fortune in ``directory``'s text files, as bytes, in file-name order.

    Reads the regular files that are not ``.dat`` indices (the ``.u8`` names are links to the
    same files and are skipped); splits each at lines holding only ``%``; drops empty pieces.
    Raises :class:`~dualprop_jax.errors.DataError` naming the fix when there are none.
    """
    directory = pathlib.Path(directory)
    found = directory.iterdir() if directory.is_dir() else ()
    files = sorted(p for p in found if p.is_file() and not p.is_symlink() and p.suffix != ".dat")
    docs = []
    for path in files:
        text = path.read_bytes().replace(b"\r\n", b"\n")
        pieces = text.split(b"\n%\n")
        if pieces and pieces[0].startswith(b"%\n"):
            pieces[0] = pieces[0][2:]
        docs += [p.strip(b"\n") for p in pieces if p.strip()]
    if not docs:
        raise DataError(
            f"no fortunes found in {directory}: install Debian's corpus with "
            "`apt-get install fortunes`, or pass the directory that holds the text files."
        )
    return docs


def split_documents(
    docs: Sequence[bytes], every: int = 10
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """``(train, val, test)``: document i to test when i ≡ every-1 (mod ``every``), to
    validation when i ≡ every-2, to training otherwise (80/10/10 for ``every=10``)."""
    if every < 3:
        raise ValueError(f"every={every} leaves no training documents; use every >= 3.")
    test = [d for i, d in enumerate(docs) if i % every == every - 1]
    val = [d for i, d in enumerate(docs) if i % every == every - 2]
    train = [d for i, d in enumerate(docs) if i % every < every - 2]
    return train, val, test


def byte_stream(docs: Sequence[bytes]) -> np.ndarray:
    """The documents joined by :data:`SEPARATOR`, as a uint8 array."""
    return np.frombuffer(SEPARATOR.join(docs), dtype=np.uint8)


def windows(stream: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` int32 of shape (N, ``length``): x = stream[k·L : k·L + L], y the same shifted
    by one byte, for k = 0 .. N-1 with N = ⌊(len - 1) / L⌋ (the tail that fills no window is
    dropped; a stream shorter than L + 1 bytes gives N = 0)."""
    if length < 1:
        raise ValueError(f"length={length} must be at least 1.")
    n = max((len(stream) - 1) // length, 0)
    if n == 0:
        return np.zeros((0, length), np.int32), np.zeros((0, length), np.int32)
    s = np.asarray(stream[: n * length + 1], np.int32)
    return s[:-1].reshape(n, length), s[1:].reshape(n, length)


def text_dataset(
    docs: Sequence[bytes], length: int, *, name: str = "text", source: str = "", every: int = 10
) -> Dataset:
    """A next-byte :class:`~dualprop_jax.data.Dataset` of ``docs``: the documents split by
    :func:`split_documents`, each split's :func:`byte_stream` cut into :func:`windows` of
    ``length``. x and y are int32 byte ids (N, ``length``); ``num_classes`` is 256."""
    splits = [windows(byte_stream(part), length) for part in split_documents(docs, every)]
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits
    if len(x_tr) == 0:
        raise DataError(
            f"the training documents hold no window of {length} + 1 bytes; use a shorter "
            "length or more text."
        )
    return Dataset(
        name=name, x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=x_te, y_test=y_te,
        num_classes=256, augment=False, source=source,
    )  # fmt: skip


def fortunes(length: int = 64, directory: str | os.PathLike = FORTUNES_DIR) -> Dataset:
    """Debian's fortunes as a next-byte dataset of windows of ``length`` (see the module
    docstring): about 2.0 / 0.25 / 0.25 MB of train / validation / test bytes."""
    docs = fortune_documents(directory)
    return text_dataset(docs, length, name="fortunes", source=str(directory))


def fortunes_subset(
    directory: str | os.PathLike | None = None, *, max_train: int | None = None, seed: int = 0,
    length: int = 64,
) -> Dataset:  # fmt: skip
    """:func:`fortunes` as ``load_dataset("fortunes")`` gives it: ``max_train`` training windows
    (a seeded random subset, in that random order; None: all). The files are looked for in
    ``directory/fortunes`` and ``directory`` (a folder holding fortune files and their ``.dat``
    indices), then in :data:`FORTUNES_DIR`. The validation and test splits are the corpus's
    own (by document), whatever ``val_fraction`` says."""
    tried = [] if directory is None else [pathlib.Path(directory) / "fortunes", directory]
    found = [pathlib.Path(d) for d in tried if any(pathlib.Path(d).glob("*.dat"))]
    ds = fortunes(length, found[0] if found else FORTUNES_DIR)
    if max_train is None or max_train >= len(ds.x_train):
        return ds
    keep = np.random.default_rng(seed).permutation(len(ds.x_train))[:max_train]
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])


def bits_per_byte(mean_loss_per_window: float, length: int) -> float:
    """Bits per byte from a mean loss per window (nats summed over its ``length`` positions,
    the library's per-example loss for (N, T) labels): loss / (T ln 2)."""
    return mean_loss_per_window / (length * math.log(2))


__all__ = [
    "FORTUNES_DIR",
    "SEPARATOR",
    "bits_per_byte",
    "byte_stream",
    "fortune_documents",
    "fortunes",
    "fortunes_subset",
    "split_documents",
    "text_dataset",
    "windows",
]
