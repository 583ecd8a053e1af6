"""Raw arrays to a Dataset: check images and labels, hold out validation data, standardise.

The standardisation statistics are those of the returned training set; uint8 images stay uint8
(:class:`~dualprop_jax.data.dataset.StandardisedImages`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from dualprop_jax.data.dataset import Dataset, StandardisedImages
from dualprop_jax.errors import DataError


def _as_images(name: str, key: str, x: np.ndarray) -> np.ndarray:
    """Check an image array's rank and dtype; return uint8 as is (standardised per batch
    later), anything else as float32."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim not in (2, 4):
        raise DataError(
            f"{name}: {key} images must be NHWC (rank 4), NHW (rank 3) or flat (N, D) "
            f"(rank 2), got rank {x.ndim} with shape {x.shape}; reshape them before saving"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(
            f"{name}: {key} must be numeric, got dtype {x.dtype}; store images as uint8 or float"
        )
    if x.dtype == np.uint8:
        return x
    out = x.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise DataError(f"{name}: {key} contains NaN or infinite values; clean the data")
    return out


def _as_labels(name: str, key: str, y: np.ndarray) -> np.ndarray:
    """Check labels are whole non-negative numbers and return them as int64."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"{name}: {key} must be a 1-D array of class indices, got shape {y.shape}; "
            "convert one-hot labels with argmax"
        )
    whole_floats = (
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    )
    if not (np.issubdtype(y.dtype, np.integer) or whole_floats):
        raise DataError(
            f"{name}: {key} must be integer class indices 0..C-1, got dtype {y.dtype}"
            f"{' with non-integer values' if np.issubdtype(y.dtype, np.floating) else ''}; "
            "store labels as integers"
        )
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(
            f"{name}: {key} contains negative label {int(y.min())}; labels must be in 0..C-1"
        )
    return y


def _few(values: np.ndarray, k: int = 6) -> str:
    shown = ", ".join(str(int(v)) for v in values[:k])
    return shown + (f", ... {int(values[-1])}" if len(values) > k else "")


def _check_labels(name: str, y_train: np.ndarray, y_test: np.ndarray) -> int:
    """The number of classes C = max label + 1, once the labels are seen to be 0..C-1, each
    occurring in ``y_train`` (a gap would train an output that no example asks for)."""
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y_train))
    if unseen.size:
        raise DataError(
            f"{name}: test labels contain class(es) {unseen.tolist()} that never occur in "
            f"y_train; labels must be 0..C-1 with every class present in the training set"
        )
    present = np.unique(y_train)
    if present.size < num_classes:  # a gap: labels 1..10, or 0..9 with 999 among them
        missing = np.setdiff1d(np.arange(num_classes), present)
        raise DataError(
            f"{name}: the labels do not fit a {num_classes}-way output: they reach "
            f"{num_classes - 1}, but only {present.size} distinct classes occur in y_train "
            f"({_few(present)}); class(es) {_few(missing)} never occur. Labels must be "
            "0..C-1 with every class present; remap them, e.g. "
            "classes, y = np.unique(y, return_inverse=True)"
        )
    return num_classes


def _check_split_sizes(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> None:
    """Each split non-empty with one label per example, and the same example shape in both."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise DataError(
                f"{name}: x_{split} has {len(x)} examples but y_{split} has {len(y)} labels; "
                "they must have the same length"
            )
        if len(x) == 0:
            raise DataError(f"{name}: the {split} split is empty; provide at least one example")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: per-example shapes differ: x_train {x_train.shape[1:]} vs x_test "
            f"{x_test.shape[1:]}; resize them to match"
        )


def _hold_out(
    name: str, n: int, *, val_fraction: float, seed: int, max_train: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(val_idx, train_idx)`` of ``n`` training examples: the first ``int(n * val_fraction)``
    of a ``np.random.default_rng(seed)`` permutation are held out, the rest (at most
    ``max_train`` of them, in that shuffled order) are trained on."""
    n_val = int(n * val_fraction)
    if n - n_val < 1:
        raise DataError(
            f"{name}: val_fraction={val_fraction} leaves no training examples out of {n}; "
            "use a smaller val_fraction"
        )
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if max_train is not None:
        train_idx = train_idx[:max_train]
    return val_idx, train_idx


def _standardise_splits(
    x_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray
) -> tuple[np.ndarray | StandardisedImages, ...]:
    """The three splits standardised with the statistics of ``x_train``: uint8 images as
    :class:`StandardisedImages`, float32 images in place."""
    splits: tuple[np.ndarray | StandardisedImages, ...]
    if x_train.dtype == np.uint8:
        # Pixels stay uint8 (a quarter of float32); batches are standardised when taken.
        mean, std = _uint8_train_stats(x_train)
        splits = tuple(StandardisedImages(x, mean, std) for x in (x_train, x_val, x_test))
    else:
        mean, std = _train_stats(x_train)
        for x in (x_train, x_val, x_test):
            x -= mean
            x /= std
        splits = (x_train, x_val, x_test)
    return splits


def _finalize(
    name: str,
    raw: Mapping[str, np.ndarray],
    source: str,
    *,
    val_fraction: float,
    seed: int,
    max_train: int | None,
) -> Dataset:
    """Validate raw arrays, hold out validation data, truncate, and standardise."""
    x_train = _as_images(name, "x_train", raw["x_train"])
    x_test = _as_images(name, "x_test", raw["x_test"])
    y_train = _as_labels(name, "y_train", raw["y_train"])
    y_test = _as_labels(name, "y_test", raw["y_test"])
    _check_split_sizes(name, x_train, y_train, x_test, y_test)
    num_classes = _check_labels(name, y_train, y_test)

    val_idx, train_idx = _hold_out(
        name, len(x_train), val_fraction=val_fraction, seed=seed, max_train=max_train
    )
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]
    splits = _standardise_splits(x_train, x_val, x_test)

    augment = x_train.ndim == 4 and x_train.shape[3] == 3 and min(x_train.shape[1:3]) >= 32
    return Dataset(
        name=name,
        x_train=splits[0],
        y_train=y_train.astype(np.int32),
        x_val=splits[1],
        y_val=y_val.astype(np.int32),
        x_test=splits[2],
        y_test=y_test.astype(np.int32),
        num_classes=num_classes,
        augment=bool(augment),
        source=source,
    )


def _train_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (NHWC) or scalar (flat) mean and std of float images; a zero std is
    replaced by 1."""
    axes = tuple(range(x.ndim - 1)) if x.ndim == 4 else None
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _uint8_train_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`_train_stats` gives for the float32 images ``x / 255``, computed from a
    histogram of the uint8 pixels, without a float copy of the split.

    Each channel takes only the 256 float32 values ``k / 255``, so the float64 mean and
    variance are exact-product sums over the histogram (``math.fsum``), as accurate as or more
    accurate than numpy's pairwise sums over every pixel; both round to the same float32
    statistics (checked on Fashion-MNIST in tests/test_data.py).
    """
    channels = x.shape[3] if x.ndim == 4 else 1
    counts = np.zeros((channels, 256), np.int64)
    rows = max(1, (1 << 22) // max(1, x[0].size))  # about 4M pixels per bincount
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows].reshape(-1, channels)
        for c in range(channels):
            counts[c] += np.bincount(chunk[:, c], minlength=256)
    values = (np.arange(256, dtype=np.uint8).astype(np.float32) / np.float32(255.0)).astype(
        np.float64
    )
    mean = np.empty(channels)
    std = np.empty(channels)
    for c in range(channels):
        n = int(counts[c].sum())
        mean[c] = math.fsum(counts[c] * values) / n
        std[c] = math.sqrt(math.fsum(counts[c] * (values - mean[c]) ** 2) / n)
    std = np.where(std > 1e-12, std, 1.0)
    if x.ndim != 4:  # flat vectors: one scalar statistic, as _train_stats
        return mean[0].astype(np.float32), std[0].astype(np.float32)
    return mean.astype(np.float32), std.astype(np.float32)
