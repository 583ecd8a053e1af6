"""IDX files (Fashion-MNIST, MNIST): parse, find in the searched directories, or download.

Everything here raises :class:`~dualprop_jax.errors.DataError` with a message that names the
problem and how to fix it.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dualprop_jax.errors import DataError

KNOWN_IDX = ("fashion_mnist", "mnist")
"""The datasets read from IDX files (by name, with ``--dataset``)."""

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
