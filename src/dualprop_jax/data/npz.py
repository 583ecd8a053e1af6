"""``.npz`` dataset files: read the four arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from dualprop_jax.data.idx import KNOWN_IDX
from dualprop_jax.errors import DataError

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


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
