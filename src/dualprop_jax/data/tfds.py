"""Prepared TFDS datasets (``array_record``): read the train and held-out splits as numpy,
without TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualprop_jax.data.idx import KNOWN_IDX
from dualprop_jax.errors import DataError

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
