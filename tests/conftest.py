"""Shared fixtures. Real data: Fashion-MNIST from Debian's dataset-fashion-mnist package."""

import gzip
import os
import pathlib

import numpy as np
import pytest

# DUALPROP_TEST_FMNIST_DIR points the tests at a copy elsewhere (e.g. on a machine without apt).
FMNIST_DIR = pathlib.Path(
    os.environ.get("DUALPROP_TEST_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
)


def _read_idx(path: pathlib.Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=offset)


@pytest.fixture(scope="session")
def fmnist_raw():
    """Raw uint8 (x_train, y_train, x_test, y_test), decoded independently of the library."""
    if not FMNIST_DIR.exists():
        pytest.fail(
            f"{FMNIST_DIR} is missing: install it with `apt-get install dataset-fashion-mnist` "
            "(.ci/run does this)."
        )
    xtr = _read_idx(FMNIST_DIR / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)
    ytr = _read_idx(FMNIST_DIR / "train-labels-idx1-ubyte.gz", 8).astype(np.int32)
    xte = _read_idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)
    yte = _read_idx(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int32)
    return xtr, ytr, xte, yte
