"""Dataset sources: IDX (Fashion-MNIST, MNIST), ``.npz`` files and TFDS, split and standardised.

Batching and augmentation (how data is fed) live in :mod:`dualprop_jax.data.pipeline`.

Everything here raises :class:`DataError` (a ``ValueError``) with a message that names the
problem and how to fix it. Nothing is downloaded or read at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.client
import math
import os
import struct
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
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
    "StandardisedImages",
    "cache_dir",
    "load_dataset",
    "read_idx",
    "standardise",
]


#: Examples standardised at a time when a whole split is materialised (bounds the temporaries).
_CHUNK = 8192

SPLITS = ("train", "val", "test")


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

    __slots__ = ("mean", "raw", "std")

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
        return self.raw.shape

    @property
    def ndim(self) -> int:
        return self.raw.ndim

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def size(self) -> int:
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

        The one place batches are taken: the training loop, :func:`~dualprop_jax.data.pipeline.
        batches` and evaluation all call it (or index the split the same way), so uint8 data
        is converted batch by batch and never held in float32 as a whole.
        """
        return self.split(split)[0][index]

    def split(self, name: str) -> tuple[np.ndarray | StandardisedImages, np.ndarray]:
        """``(x, y)`` of split ``name`` ("train", "val" or "test"), ``x`` as stored: float32, or
        uint8 :class:`StandardisedImages` that standardise the rows they are indexed with."""
        if name not in SPLITS:
            raise DataError(f"split={name!r} is unknown; choose one of {SPLITS}.")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


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
    ``x_train``, ``y_train``, ``x_test``, ``y_test``), a TFDS dataset name such as
    ``"cifar10"`` (looked up in ``data_dir``), or the directory of a prepared TFDS dataset
    version (the folder with ``dataset_info.json``, e.g. ``~/tensorflow_datasets/cifar10/3.0.2``).
    TFDS data must be prepared already, in the ``array_record`` file format, and is read as
    numpy without TensorFlow; its held-out split is ``test``, else ``validation``.

    IDX files are searched in ``data_dir`` (and ``data_dir/<name>``; a missing ``data_dir`` is an
    error), ``$DUALPROP_DATA/<name>`` and ``$DUALPROP_DATA``, :data:`SYSTEM_DATA_DIRS`, then
    :func:`cache_dir`; if still missing and ``download`` is true they are downloaded into the
    cache from :data:`IDX_URLS`.

    A fraction ``val_fraction`` of the training set is held out as validation with a permutation
    from ``np.random.default_rng(seed)``; the remaining training examples keep that shuffled
    order, so ``max_train`` keeps a seeded random subset of them. Images are standardised with
    the statistics of the returned training set (per channel, or one scalar for flat vectors):
    uint8 images stay uint8 in :class:`StandardisedImages` and are standardised batch by batch
    (:meth:`Dataset.images`); float images are standardised once, as float32 arrays.
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
        raw, source, display_name = _load_tfds(name, data_dir=data_dir)
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
    fix = "save it again with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic[:2] != b"PK":
        raise DataError(
            f"{path} is not a readable .npz archive (an .npz is a zip file of arrays; this one "
            f"starts with {magic!r}); {fix}"
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
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(
            f"{path} is not a readable .npz archive: it is damaged or truncated ({e}); {fix}"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read npz file {path}: {e}; save plain numeric arrays with np.savez "
            "(object arrays are not supported)"
        ) from None
    return arrays, str(path)


# --------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------


#: Held-out splits tried, in order, for a TFDS dataset's test set (imagenet_resized has no
#: "test"; its "validation" split is the held-out one).
_TFDS_HELD_OUT = ("test", "validation")

#: Records read and decoded per batched data-source call (bounds the list of decoded records).
_TFDS_READ_CHUNK = 4096


def _records_to_arrays(
    records: Iterable[Mapping[str, Any]], *, first: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``{"image", "label"}`` records into ``(images, labels)`` numpy arrays.

    Images keep their dtype; 2-D (H, W) images get a trailing channel axis. Labels are int64.
    The records are stacked at once; only when that fails are they checked one by one, to name
    the bad record (numbered from ``first``).
    """
    records = records if isinstance(records, Sequence) else list(records)
    if not records:
        raise DataError("no records to convert: the split is empty; pick a non-empty split")
    try:
        images = [record["image"] for record in records]
        labels = [record["label"] for record in records]
        x = np.stack(images)
    except (KeyError, TypeError, ValueError):
        x = None
    y = None if x is None else np.asarray(labels)
    if (
        x is None
        or x.ndim not in (3, 4)
        or y.shape != (len(records),)
        or not np.issubdtype(y.dtype, np.integer)
    ):
        _check_records(records, first)
        raise DataError(f"records {first}..{first + len(records) - 1} cannot be stacked")
    if x.ndim == 3:
        x = x[..., None]
    return x, y.astype(np.int64)


def _check_records(records: Sequence[Mapping[str, Any]], first: int) -> None:
    """Raise DataError naming the first record that is not a fixed-shape image with one
    integer label."""
    shape: tuple[int, ...] | None = None
    for i, record in enumerate(records, start=first):
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


def _read_tfds_split(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """All ``(images, labels)`` of a TFDS data source, read in batches.

    Each batch is one ``source.__getitems__(keys)`` call (array_record reads the records
    together; TFDS decodes them) and one :func:`_records_to_arrays` stack, written into a
    preallocated array: no per-record reads and no second copy of the split.
    """
    n = len(source)
    if n == 0:
        raise DataError("no records to convert: the split is empty; pick a non-empty split")
    get_many = getattr(source, "__getitems__", None)
    x: np.ndarray | None = None
    y = np.empty(n, np.int64)
    for start in range(0, n, _TFDS_READ_CHUNK):
        keys = range(start, min(n, start + _TFDS_READ_CHUNK))
        records = get_many(keys) if get_many is not None else [source[i] for i in keys]
        xb, yb = _records_to_arrays(records, first=start)
        if x is None:
            x = np.empty((n, *xb.shape[1:]), xb.dtype)
        elif xb.shape[1:] != x.shape[1:] or xb.dtype != x.dtype:
            raise DataError(
                f"records from {start} on: images {xb.dtype} {xb.shape[1:]} differ from the "
                f"first records' {x.dtype} {x.shape[1:]}; use a fixed-size variant (e.g. "
                "imagenet_resized/32x32)"
            )
        x[start : start + len(xb)], y[start : start + len(yb)] = xb, yb
    assert x is not None
    return x, y


def _import_tfds(name: str) -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"{name!r} is not a built-in dataset ({_name_help()}). TFDS datasets need "
            "tensorflow_datasets: pip install 'dualprop-jax[tfds]'"
        ) from e
    return tfds


def _tfds_directory(name: str) -> Path | None:
    """The prepared TFDS dataset directory that ``name`` names, or None for a TFDS name.

    A path is a directory holding ``dataset_info.json``, or anything written as a path
    (absolute, or starting with ``~``, ``./`` or ``../``) so that a wrong path gets a clear
    error instead of a TFDS name lookup.
    """
    path = Path(name).expanduser()
    explicit = path.is_absolute() or name.startswith(("~", "./", "../", ".\\", "..\\"))
    if explicit or name in (".", "..") or (path / "dataset_info.json").is_file():
        return path
    return None


_PREPARE_HINT = (
    "prepare it with random-access files on a machine with internet: `tfds build {name} "
    "--file_format=array_record` (or, in Python, builder.download_and_prepare() on a builder "
    'made with file_format="array_record")'
)


def _tfds_builder_from_directory(tfds: Any, path: Path) -> Any:
    """``tfds.builder_from_directory(path)``, with a DataError when ``path`` is not a prepared
    TFDS dataset (the version folder that holds ``dataset_info.json``)."""
    if not path.is_dir():
        raise DataError(
            f"{str(path)!r} does not exist (or is not a directory); pass the folder of a "
            "prepared TFDS dataset version (the one holding dataset_info.json, e.g. "
            "~/tensorflow_datasets/cifar10/3.0.2), a TFDS name, or a built-in dataset"
        )
    if not (path / "dataset_info.json").is_file():
        inside = sorted(
            str(info.parent.relative_to(path))
            for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")
            for info in path.glob(pattern)
        )
        hint = (
            f"; it holds prepared version(s) {', '.join(inside)}: pass e.g. {path / inside[-1]}"
            if inside
            else "; " + _PREPARE_HINT.format(name="<name>")
        )
        raise DataError(
            f"{path} is not a prepared TFDS dataset directory: it has no dataset_info.json{hint}"
        )
    try:
        return tfds.builder_from_directory(str(path))
    except Exception as e:
        raise DataError(
            f"cannot read the prepared TFDS dataset in {path}: {type(e).__name__}: {e}; "
            "prepare it again"
        ) from e


def _load_tfds(
    name: str, *, data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, np.ndarray], str, str]:
    """Read the train and held-out splits of a prepared TFDS dataset without TensorFlow.

    ``name`` is a TFDS name (looked up in ``data_dir``, default TFDS's own) or the directory
    of a prepared dataset version. Returns the arrays, the source and the display name.
    """
    tfds = _import_tfds(name)
    directory = _tfds_directory(name)
    if directory is not None:
        builder = _tfds_builder_from_directory(tfds, directory)
        what, source = f"TFDS dataset in {directory}", f"tfds:{directory}"
        display_name = str(builder.info.name)
    else:
        data_dir_str = None if data_dir is None else str(Path(data_dir).expanduser())
        where = data_dir_str or "the default TFDS data dir (~/tensorflow_datasets)"
        try:
            builder = tfds.builder(name, data_dir=data_dir_str)
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"unknown dataset {name!r} ({reason}): TFDS has no builder of that name and "
                f"no prepared copy in {where}; {_name_help()}"
            ) from e
        if not builder.is_prepared():
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {where}: "
                + _PREPARE_HINT.format(name=name)
                + f", then copy the prepared directory into {where} (pass data_dir / "
                "--data-dir if it lives elsewhere)"
            )
        what = f"TFDS dataset {name!r} in {where}"
        source = f"tfds:{name}" if data_dir_str is None else f"tfds:{name} ({data_dir_str})"
        display_name = name

    splits = list(builder.info.splits.keys())
    held_out = next((s for s in _TFDS_HELD_OUT if s in splits), None)
    if "train" not in splits or held_out is None:
        raise DataError(
            f"{what} has splits {splits}; a 'train' split and a 'test' (or 'validation') "
            "split are needed"
        )
    arrays: dict[str, np.ndarray] = {}
    for split, key in (("train", "train"), (held_out, "test")):
        try:
            data_source = builder.as_data_source(split=split)
        except Exception as e:
            raise DataError(
                f"cannot open split {split!r} of the {what} for random access "
                f"({type(e).__name__}: {e}); it must be stored as array_record: "
                + _PREPARE_HINT.format(name=builder.info.name)
            ) from e
        try:
            arrays[f"x_{key}"], arrays[f"y_{key}"] = _read_tfds_split(data_source)
        except DataError as e:
            raise DataError(f"{what}, split {split!r}: {e}") from e
    return arrays, source, display_name


def _name_help() -> str:
    return (
        f"use one of the built-in IDX datasets ({', '.join(KNOWN_IDX)}), a path to an existing "
        ".npz file with x_train/y_train/x_test/y_test, or a TFDS dataset name such as "
        "cifar10 or the directory of a prepared TFDS dataset (needs pip install "
        "'dualprop-jax[tfds]' and a dataset prepared as array_record)"
    )


# --------------------------------------------------------------------------------------------
# Validation, split, normalisation
# --------------------------------------------------------------------------------------------


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
    """The number of classes C = max label + 1, once the labels are seen to be 0..C-1."""
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y_train))
    if unseen.size:
        raise DataError(
            f"{name}: test labels contain class(es) {unseen.tolist()} that never occur in "
            f"y_train; labels must be 0..C-1 with every class present in the training set"
        )
    present = np.unique(y_train)
    if 2 * present.size < num_classes:
        raise DataError(
            f"{name}: the labels do not fit a {num_classes}-way output: they reach "
            f"{num_classes - 1}, but only {present.size} distinct classes occur in y_train "
            f"({_few(present)}). Labels must be 0..C-1; remap them, e.g. "
            "classes, y = np.unique(y, return_inverse=True)"
        )
    return num_classes


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

    num_classes = _check_labels(name, y_train, y_test)

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
