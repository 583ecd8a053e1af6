"""Shared fixtures. Real data: Fashion-MNIST from Debian's dataset-fashion-mnist package."""

import gzip
import os
import pathlib
import tempfile

# One compilation cache for the whole test run, shared by the xdist workers and every process a
# test starts (CLI runs, multi-process workers, notebooks, the README script): the same
# programs, and Flax's op-by-op parameter initialisation (seconds per process), are compiled
# once instead of once per process. XLA keys each entry by the program, the compile options
# and the jax/jaxlib versions, so a hit runs what a fresh compilation would.
_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": str(pathlib.Path(tempfile.gettempdir()) / "dualprop-jax-tests"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
for _name, _value in _CACHE.items():
    os.environ.setdefault(_name, _value)

import jax  # noqa: E402 (after the cache settings, which jax reads at import)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dualprop_jax.data import Dataset  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)

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


@pytest.fixture(scope="session")
def fmnist_small(fmnist_raw):
    """600 training, 200 validation and 500 test images of real Fashion-MNIST, standardised
    with the training statistics."""
    xtr, ytr, xte, yte = fmnist_raw
    x = xtr[:800].astype(np.float32) / 255
    mean, std = x[:600].mean(), x[:600].std()
    x, x_test = (x - mean) / std, (xte[:500].astype(np.float32) / 255 - mean) / std
    return Dataset(
        "fashion_mnist", x[:600], ytr[:600], x[600:], ytr[600:800], x_test, yte[:500],
        10, False, "fashion-mnist subset",
    )  # fmt: skip


@pytest.fixture(scope="session")
def fmnist_npz(fmnist_raw, tmp_path_factory):
    """600 training and 200 test images of Fashion-MNIST as an npz file."""
    xtr, ytr, xte, yte = fmnist_raw
    path = tmp_path_factory.mktemp("data") / "fmnist_small.npz"
    np.savez(path, x_train=xtr[:600], y_train=ytr[:600], x_test=xte[:200], y_test=yte[:200])
    return path
