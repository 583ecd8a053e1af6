"""Dataset sources: IDX (Fashion-MNIST, MNIST), ``.npz`` files and TFDS, split and standardised.

The package, one module per job:

* :mod:`~dualprop_jax.data.load`: :func:`load_dataset`, a dataset name to its reader, then to
  a :class:`Dataset`;
* :mod:`~dualprop_jax.data.idx`, :mod:`~dualprop_jax.data.npz`,
  :mod:`~dualprop_jax.data.tfds`: the readers, where the arrays come from;
* :mod:`~dualprop_jax.data.prepare`: raw arrays to a :class:`Dataset` (checks, validation
  split, standardisation with the train statistics);
* :mod:`~dualprop_jax.data.dataset`: the :class:`Dataset` container and
  :class:`StandardisedImages`.

Batching and augmentation (how data is fed) live in :mod:`dualprop_jax.data.pipeline`.

Everything here raises :class:`DataError` (a ``ValueError``) with a message that names the
problem and how to fix it. Nothing is downloaded or read at import time.
"""

from __future__ import annotations

from dualprop_jax.data.dataset import SPLITS as SPLITS
from dualprop_jax.data.dataset import Dataset, StandardisedImages, standardise
from dualprop_jax.data.idx import DOWNLOAD_TIMEOUT as DOWNLOAD_TIMEOUT
from dualprop_jax.data.idx import (
    IDX_FILES,
    IDX_URLS,
    KNOWN_IDX,
    SYSTEM_DATA_DIRS,
    cache_dir,
    read_idx,
)
from dualprop_jax.data.load import load_dataset

# private readers the tests call as data._name
from dualprop_jax.data.tfds import _load_tfds as _load_tfds
from dualprop_jax.data.tfds import _read_tfds_split as _read_tfds_split
from dualprop_jax.data.tfds import _records_to_arrays as _records_to_arrays
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
