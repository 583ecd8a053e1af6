"""Dataset sources: IDX (Fashion-MNIST, MNIST), ``.npz`` files and TFDS, split and standardised.

Batching and augmentation (how data is fed) live in :mod:`dualprop_jax.input_pipeline`.

Everything here raises :class:`DataError` (a ``ValueError``) with a message that names the
problem and how to fix it. Nothing is downloaded or read at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.client
import os
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dualprop_jax.errors import DataError

__all__ = [
    "IDX_FILES",
    "IDX_URLS",
    "KNOWN_IDX",
    "SYSTEM_DATA_DIRS",
    "DataError",
    "Dataset",
    "cache_dir",
    "load_dataset",
    "read_idx",
]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A normalised dataset with train/validation/test splits.

    Images are float32 NHWC (or ``(N, D)`` for flat npz data), labels int32 in
    ``0..num_classes-1``. ``augment`` is the default augmentation choice for this data.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    augment: bool
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])


KNOWN_IDX = ("fashion_mnist", "mnist")

#: Base names of the four IDX files, keyed by role; each may also be stored with ``.gz``.
IDX_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

#: Where the official ``.gz`` files are downloaded from (base URL + file name + ``.gz``).
IDX_URLS: dict[str, str] = {
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}

#: System-wide locations (e.g. Debian's ``dataset-fashion-mnist`` package) searched per dataset.
SYSTEM_DATA_DIRS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}

_APT_HINT = {"fashion_mnist": "apt-get install dataset-fashion-mnist"}

#: Seconds before a download attempt gives up.
DOWNLOAD_TIMEOUT = 10.0

# TFDS datasets whose held-out split is not called "test".
_TFDS_TEST_SPLIT = {"imagenet_resized": "validation"}

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
    max_train: int | None = None,
) -> Dataset:
    """Load, split and normalise a dataset.

    ``name`` is ``"fashion_mnist"`` or ``"mnist"`` (IDX files), a path ending in ``.npz`` (keys
    ``x_train``, ``y_train``, ``x_test``, ``y_test``), or a TFDS dataset name such as
    ``"cifar10"`` (read with ``tfds.data_source`` from ``data_dir``; must be prepared already).

    IDX files are searched in ``data_dir`` (and ``data_dir/<name>``; a missing ``data_dir`` is an
    error), ``$DUALPROP_DATA/<name>`` and ``$DUALPROP_DATA``, :data:`SYSTEM_DATA_DIRS`, then
    :func:`cache_dir`; if still missing and ``download`` is true they are downloaded into the
    cache from :data:`IDX_URLS`.

    A fraction ``val_fraction`` of the training set is held out as validation with a permutation
    from ``np.random.default_rng(seed)``; the remaining training examples keep that shuffled
    order, so ``max_train`` keeps a seeded random subset of them. Images are standardised with
    the statistics of the returned training set (per channel, or one scalar for flat vectors).
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"dataset name must be a non-empty string, got {name!r}; {_name_help()}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(
            f"val_fraction must be in [0, 1), got {val_fraction!r}; "
            "use e.g. 0.1 to hold out 10% of the training set, or 0 for no validation set"
        )
    if max_train is not None and max_train < 1:
        raise DataError(
            f"max_train must be >= 1 or None, got {max_train!r}; "
            "pass None to use the whole training set"
        )

    idx_name = name.strip().lower().replace("-", "_")
    if idx_name in KNOWN_IDX:
        raw, source = _load_idx(idx_name, data_dir=data_dir, download=download)
        display_name = idx_name
    elif name.endswith(".npz"):
        raw, source = _load_npz(name)
        display_name = Path(name).stem
    else:
        raw, source = _load_tfds(name, data_dir=data_dir)
        display_name = name
    return _finalize(
        display_name, raw, source, val_fraction=val_fraction, seed=seed, max_train=max_train
    )


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a native-endian numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read IDX file {path}: {e}; delete the file and fetch it again"
        ) from e

    def corrupt(why: str) -> DataError:
        return DataError(f"IDX file {path} is corrupt: {why}; delete the file and fetch it again")

    if len(raw) < 4:
        raise corrupt(f"only {len(raw)} bytes, too short for the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise corrupt(f"bad magic number 0x{raw[:4].hex()}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise corrupt(f"header declares {ndim} dimensions but the file has {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[raw[2]]
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        raise corrupt(f"dims {dims} need {expected} bytes but the file has {len(raw)}")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def cache_dir(name: str) -> Path:
    """User cache directory for a dataset: ``$XDG_CACHE_HOME/dualprop_jax/<name>``.

    Falls back to ``~/.cache`` when ``XDG_CACHE_HOME`` is unset or empty.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "dualprop_jax" / name


def _subdir_names(name: str) -> list[str]:
    return list(dict.fromkeys([name, name.replace("_", "-")]))


def _idx_search_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    """Directories to search for the IDX files of ``name``, in priority order."""
    dirs: list[tuple[str, Path]] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data dir {str(root)!r} does not exist (or is not a directory); "
                "create it and put the IDX files there, or pass a different data_dir / "
                "--data-dir"
            )
        dirs += [("data_dir", root / sub) for sub in _subdir_names(name)]
        dirs.append(("data_dir", root))
    env = os.environ.get("DUALPROP_DATA")
    if env:
        root = Path(env).expanduser()
        dirs += [("$DUALPROP_DATA", root / sub) for sub in _subdir_names(name)]
        dirs.append(("$DUALPROP_DATA", root))
    dirs += [("system package", Path(p)) for p in SYSTEM_DATA_DIRS.get(name, ())]
    dirs.append(("user cache", cache_dir(name)))
    return dirs


def _find_idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Return the IDX files found in ``directory`` (role -> path) and the missing base names."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, base in IDX_FILES.items():
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(f"{base}[.gz]")
    return found, missing


def _download_idx(name: str, dest: Path) -> None:
    """Download the four ``.gz`` IDX files into ``dest`` atomically (temp file, then rename)."""
    dest.mkdir(parents=True, exist_ok=True)
    for base in IDX_FILES.values():
        target = dest / f"{base}.gz"
        if target.is_file():
            continue
        url = IDX_URLS[name] + f"{base}.gz"
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{base}.", suffix=".part")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError | http.client.HTTPException | ValueError):
                raise _DownloadFailed(f"{url}: {type(e).__name__}: {e}") from e
            raise


class _DownloadFailed(Exception):
    pass


def _load_idx(
    name: str, *, data_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[dict[str, np.ndarray], str]:
    """Locate (and if allowed download) the IDX files of ``name`` and read them."""
    tried: list[str] = []
    files: dict[str, Path] | None = None
    where = ""
    for label, directory in _idx_search_dirs(name, data_dir):
        if not directory.is_dir():
            tried.append(f"{directory} ({label}): does not exist")
            continue
        found, missing = _find_idx_files(directory)
        if missing:
            tried.append(f"{directory} ({label}): missing {', '.join(missing)}")
            continue
        files, where = found, str(directory)
        break

    if files is None:
        cache = cache_dir(name)
        if download:
            try:
                _download_idx(name, cache)
            except _DownloadFailed as e:
                tried.append(f"download from {IDX_URLS[name]} into {cache}: failed ({e})")
            except OSError as e:
                tried.append(f"download into {cache}: cannot write there ({e})")
            else:
                files, _ = _find_idx_files(cache)
                where = str(cache)
        else:
            tried.append(f"download from {IDX_URLS[name]}: skipped (download=False)")

    if files is None or len(files) != len(IDX_FILES):
        raise DataError(_idx_not_found_message(name, tried))

    arrays = {role: read_idx(path) for role, path in files.items()}
    _validate_idx(name, arrays, files)
    return arrays, where


def _idx_not_found_message(name: str, tried: list[str]) -> str:
    files = ", ".join(f"{b}.gz" for b in IDX_FILES.values())
    fixes = []
    if name in _APT_HINT:
        fixes.append(f"install the Debian package ({_APT_HINT[name]})")
    fixes += [
        f"put the four IDX files ({files}, or uncompressed) in a directory and pass "
        "data_dir=... / --data-dir DIR, or set DUALPROP_DATA=DIR (also searched: DIR/"
        f"{name}/)",
        f"or allow download=True on a machine with internet access (files go to {cache_dir(name)})",
    ]
    lines = "\n".join(f"  - {t}" for t in tried)
    return (
        f"could not find the {name} IDX files. Places tried, in order:\n{lines}\n"
        f"To fix: {'; '.join(fixes)}."
    )


def _validate_idx(name: str, arrays: dict[str, np.ndarray], files: Mapping[str, Path]) -> None:
    """Check that the IDX arrays form a consistent image-classification dataset."""
    fix = "delete the file and fetch it again"
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        xf, yf = files[f"x_{split}"], files[f"y_{split}"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(
                f"IDX file {xf} should hold uint8 images of shape (N, H, W), "
                f"got {x.dtype} with shape {x.shape}; {fix}"
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"IDX file {yf} should hold integer labels of shape (N,), "
                f"got {y.dtype} with shape {y.shape}; {fix}"
            )
        if len(x) != len(y):
            raise DataError(
                f"{name}: {xf} has {len(x)} images but {yf} has {len(y)} labels; "
                "the files come from different datasets or one is truncated; " + fix
            )
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(
                f"IDX file {yf} has labels in [{y.min()}, {y.max()}], expected 0..9; {fix}"
            )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{name}: train images {arrays['x_train'].shape[1:]} and test images "
            f"{arrays['x_test'].shape[1:]} differ in size; the files come from different "
            "datasets, replace them with a matching set"
        )


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def _load_npz(path_str: str) -> tuple[dict[str, np.ndarray], str]:
    """Read the four arrays of a ``.npz`` dataset file."""
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise DataError(
            f"npz file {str(path)!r} does not exist; check the path, or use a built-in "
            f"dataset ({', '.join(KNOWN_IDX)}) or a TFDS name"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"npz file {path} is missing key(s) {', '.join(missing)} "
                    f"(it has {', '.join(npz.files) or 'no arrays'}); save it with "
                    "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
                )
            arrays = {k: npz[k] for k in _NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, zlib.error, EOFError) as e:
        raise DataError(
            f"cannot read npz file {path}: {e}; save plain numeric arrays with np.savez "
            "(object arrays are not supported)"
        ) from e
    return arrays, str(path)


# --------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------


def _records_to_arrays(records: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``{"image", "label"}`` records into ``(images, labels)`` numpy arrays.

    Images keep their dtype; 2-D (H, W) images get a trailing channel axis. Labels are int64.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    shape: tuple[int, ...] | None = None
    for i, record in enumerate(records):
        try:
            image = np.asarray(record["image"])
            label = record["label"]
        except (KeyError, TypeError) as e:
            raise DataError(
                f"record {i} has no 'image'/'label' entry ({e!r}); only supervised "
                "image-classification datasets with 'image' and 'label' features are supported"
            ) from e
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise DataError(
                f"record {i}: images must be (H, W, C) or (H, W), got shape {image.shape}; "
                "use an image-classification dataset"
            )
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise DataError(
                f"record {i}: image shape {image.shape} differs from the first image's "
                f"{shape}; use a fixed-size variant (e.g. imagenet_resized/32x32)"
            )
        label_arr = np.asarray(label)
        if label_arr.size != 1 or not np.issubdtype(label_arr.dtype, np.integer):
            raise DataError(
                f"record {i}: label must be one integer, got {label!r}; use a dataset "
                "whose 'label' feature is a class label"
            )
        images.append(image)
        labels.append(int(label_arr.reshape(())))
    if not images:
        raise DataError("no records to convert: the split is empty; pick a non-empty split")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _load_tfds(
    name: str, *, data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, np.ndarray], str]:
    """Read the train and test splits of a prepared TFDS dataset without TensorFlow."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"{name!r} is not a built-in dataset ({_name_help()}). TFDS datasets need "
            "tensorflow_datasets: pip install 'dualprop-jax[tfds]'"
        ) from e

    builder_name = name.split("/")[0].split(":")[0]
    try:
        known = set(tfds.list_builders())
    except Exception:  # listing only improves the error message; never fatal
        known = None
    if known is not None and builder_name not in known:
        raise DataError(f"unknown dataset {name!r}; {_name_help()}")

    data_dir_str = None if data_dir is None else str(Path(data_dir).expanduser())
    test_split = _TFDS_TEST_SPLIT.get(builder_name, "test")
    arrays: dict[str, np.ndarray] = {}
    for split, key in (("train", "train"), (test_split, "test")):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir_str)
        except Exception as e:
            where = data_dir_str or "the default TFDS data dir (~/tensorflow_datasets)"
            raise DataError(
                f"cannot read TFDS dataset {name!r} split {split!r} from {where}: {e}. "
                f"Prepare it first on a machine with TensorFlow and internet: `tfds build "
                f'{name}` or `python -c "import tensorflow_datasets as tfds; '
                f"tfds.load('{name}')\"`, then copy the prepared directory into {where} "
                "(pass data_dir / --data-dir if it lives elsewhere)"
            ) from e
        x, y = _records_to_arrays(source[i] for i in range(len(source)))
        arrays[f"x_{key}"], arrays[f"y_{key}"] = x, y
    return arrays, f"tfds:{name}" if data_dir_str is None else f"tfds:{name} ({data_dir_str})"


def _name_help() -> str:
    return (
        f"use one of the built-in IDX datasets ({', '.join(KNOWN_IDX)}), a path to an existing "
        ".npz file with x_train/y_train/x_test/y_test, or a TFDS dataset name such as "
        "cifar10 (needs pip install 'dualprop-jax[tfds]' and a prepared dataset)"
    )


# --------------------------------------------------------------------------------------------
# Validation, split, normalisation
# --------------------------------------------------------------------------------------------


def _as_images(name: str, key: str, x: np.ndarray) -> np.ndarray:
    """Check an image array's rank and dtype, and return float32 (uint8 scaled by 1/255)."""
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
        return x.astype(np.float32) / np.float32(255.0)
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

    num_classes = int(max(y_train.max(), y_test.max())) + 1
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y_train))
    if unseen.size:
        raise DataError(
            f"{name}: test labels contain class(es) {unseen.tolist()} that never occur in "
            f"y_train; labels must be 0..C-1 with every class present in the training set"
        )

    n = len(x_train)
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
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]

    mean, std = _train_stats(x_train)
    for x in (x_train, x_val, x_test):
        x -= mean
        x /= std

    augment = x_train.ndim == 4 and x_train.shape[3] == 3 and min(x_train.shape[1:3]) >= 32
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train.astype(np.int32),
        x_val=x_val,
        y_val=y_val.astype(np.int32),
        x_test=x_test,
        y_test=y_test.astype(np.int32),
        num_classes=num_classes,
        augment=bool(augment),
        source=source,
    )


def _train_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (NHWC) or scalar (flat) mean and std; a zero std is replaced by 1."""
    axes = tuple(range(x.ndim - 1)) if x.ndim == 4 else None
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)
