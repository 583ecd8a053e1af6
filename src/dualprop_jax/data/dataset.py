"""The Dataset container: train/val/test splits, and uint8 images standardised batch by batch.

How a Dataset is built from raw arrays (checks, validation split, train statistics) is
:mod:`dualprop_jax.data.prepare`; where the arrays come from is
:func:`dualprop_jax.data.load_dataset`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dualprop_jax.errors import DataError

#: Examples standardised at a time when a whole split is materialised (bounds the temporaries).
_CHUNK = 8192

SPLITS = ("train", "val", "test")
"""The splits a :class:`Dataset` holds."""


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x / 255 - mean) / std`` as a new float32 array, for uint8 pixels ``x``.

    The operations, their order and their float32 dtype are those the whole-split
    standardisation of earlier versions used, so a batch is bit-identical to the same rows of
    the old float32 arrays. Float ``x`` (already scaled) skips the ``/ 255``.
    """
    x = np.asarray(x)
    out = x.astype(np.float32)  # always a copy: the in-place steps below are safe
    if x.dtype == np.uint8:
        out /= np.float32(255.0)
    out -= mean
    out /= std
    return out


class StandardisedImages:
    """Raw uint8 images that read as standardised float32 images, one batch at a time.

    Indexing (``images[idx]`` with an index array, a slice or an int) returns
    :func:`standardise` of the selected raw rows, a new float32 array; only those rows are
    converted. ``shape``, ``ndim``, ``dtype`` (float32) and ``len`` describe the standardised
    array, so code written for a float32 split keeps working. ``np.asarray(images)`` and
    :meth:`copy` materialise the whole split in float32 (4x the uint8 memory): fine for
    Fashion-MNIST, to be avoided for ImageNet-sized data. ``raw``, ``mean`` and ``std`` are the
    stored uint8 pixels (N, ...) and the float32 statistics (per channel, or a scalar).
    """

    __slots__ = {
        "mean": "The float32 mean subtracted after scaling to [0, 1] (per channel, or a scalar).",
        "raw": "The stored uint8 pixels, (N, ...).",
        "std": "The float32 standard deviation divided by (per channel, or a scalar).",
    }

    def __init__(self, raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        raw = np.asarray(raw)
        if raw.dtype != np.uint8 or raw.ndim < 1:
            raise DataError(
                f"StandardisedImages holds uint8 images (N, ...), got {raw.dtype} with shape "
                f"{raw.shape}; pass float images as a plain float32 array"
            )
        self.raw = raw
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the split, (N, ...)."""
        return self.raw.shape

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return self.raw.ndim

    @property
    def dtype(self) -> np.dtype:
        """float32: the dtype that indexing returns."""
        return np.dtype(np.float32)

    @property
    def size(self) -> int:
        """The number of pixel values."""
        return self.raw.size

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple) and index:
            head, rest = index[0], index[1:]
            if head is None or head is Ellipsis:  # indexes the pixel axes first: convert all
                return np.asarray(self)[index]
            rows = self[head]  # standardise whole examples, then pick within them
            if isinstance(head, int | np.integer):
                return rows[rest]
            return rows[(slice(None), *rest)]
        return standardise(self.raw[index], self.mean, self.std)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("standardised images are computed on access; a copy is needed")
        out = np.empty(self.shape, np.float32)
        for start in range(0, len(self), _CHUNK):
            out[start : start + _CHUNK] = self[start : start + _CHUNK]
        return out if dtype is None else out.astype(dtype, copy=False)

    def copy(self) -> np.ndarray:
        """The whole split as a standardised float32 array (materialised)."""
        return np.asarray(self)

    def astype(self, dtype: Any) -> np.ndarray:
        """The whole split, standardised, as ``dtype`` (materialised)."""
        return np.asarray(self, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"StandardisedImages(shape={self.shape}, raw=uint8, mean={self.mean.tolist()}, "
            f"std={self.std.tolist()})"
        )


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset with train/validation/test splits, standardised with the train statistics.

    ``x_train``, ``x_val`` and ``x_test`` read as float32 NHWC images (or ``(N, D)`` for flat
    npz data): either plain float32 arrays, already standardised, or, for uint8 sources (IDX,
    TFDS, uint8 npz), :class:`StandardisedImages` that keep the uint8 pixels and standardise
    each batch when it is taken. Take batches with :meth:`images`. Labels are int32 in
    ``0..num_classes-1``. ``augment`` is the default augmentation choice for this data.
    """

    name: str
    x_train: np.ndarray | StandardisedImages
    y_train: np.ndarray
    x_val: np.ndarray | StandardisedImages
    y_val: np.ndarray
    x_test: np.ndarray | StandardisedImages
    y_test: np.ndarray
    num_classes: int
    augment: bool
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def images(self, split: str, index: Any = slice(None)) -> np.ndarray:
        """Standardised float32 images of ``split`` ("train", "val" or "test") at ``index``
        (an index array, a slice or an int; default: the whole split).

        The one place batches are taken: the training loop,
        :func:`~dualprop_jax.data.pipeline.batches` and evaluation all call it (or index the
        split the same way), so uint8 data is converted batch by batch and never held in
        float32 as a whole.
        """
        return self.split(split)[0][index]

    def split(self, name: str) -> tuple[np.ndarray | StandardisedImages, np.ndarray]:
        """``(x, y)`` of split ``name`` ("train", "val" or "test"), ``x`` as stored: float32, or
        uint8 :class:`StandardisedImages` that standardise the rows they are indexed with."""
        if name not in SPLITS:
            raise DataError(f"split={name!r} is unknown; choose one of {SPLITS}.")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
