"""The one entry point, :func:`load_dataset`: a dataset name to its reader, then to a Dataset."""

from __future__ import annotations

import os
from pathlib import Path

from dualprop_jax.data import text
from dualprop_jax.data.dataset import Dataset
from dualprop_jax.data.idx import KNOWN_IDX, _load_idx
from dualprop_jax.data.npz import _load_npz
from dualprop_jax.data.prepare import _finalize
from dualprop_jax.data.tfds import _load_tfds, _name_help
from dualprop_jax.errors import DataError


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
    ``"fortunes"`` is Debian's fortunes text as next-byte windows of 64 byte ids
    (:func:`dualprop_jax.data.text.fortunes_subset`; ``data_dir``: where its files are, default
    ``/usr/share/games/fortunes``): its validation and test splits are its own, by document.

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
    if idx_name == "fortunes":  # text: split by document, windows of next-byte targets
        return text.fortunes_subset(data_dir, max_train=max_train, seed=seed)  # first data_dir
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
