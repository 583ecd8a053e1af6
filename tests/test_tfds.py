"""TFDS for real: a small Fashion-MNIST TFDS dataset built from the Debian IDX files with a
``tfds.core.GeneratorBasedBuilder`` (``tfds.features.Tensor`` uint8 images, ``ClassLabel``
labels, ``file_format="array_record"``), prepared into a tmp data dir without TensorFlow, read
back by :mod:`dualprop_jax.data` and trained on through the CLI, by registered name and by the
path of the prepared directory.

The CLI runs in this process (``cli.main([...])``) so that the builder class registered here is
the one ``--dataset NAME`` finds. A fresh process, where nothing registers the builder, reads
the same name from the prepared files in ``--data-dir`` (TFDS falls back to them); that case is
checked too, with a subprocess that only loads the data.

Without tensorflow-datasets (and array_record) these tests fail with the install command:
they are part of the ``test`` extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dualprop_jax import cli, data
from dualprop_jax.data import DataError, StandardisedImages, load_dataset

N_TRAIN, N_TEST = 2000, 500
NAME = "dualprop_test_fmnist"  # the name TFDS registers the builder class below under
VERSION = "1.0.0"
INSTALL = "pip install -e '.[test]' (it installs tensorflow-datasets>=4.9 and array_record)"


def _tfds():
    """The tensorflow_datasets module; fail (never skip) when it or array_record is missing."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        pytest.fail(
            f"tensorflow-datasets is not installed ({e}); install the test extra: {INSTALL}"
        )
    try:
        import array_record  # noqa: F401
    except ImportError as e:
        pytest.fail(f"array_record is not installed ({e}); install the test extra: {INSTALL}")
    return tfds


_BUILDERS: dict[str, type] = {}


def _builder_class(tfds, x_train, y_train, x_test, y_test) -> type:
    """Define (once per process: TFDS registers a class name only once) the builder."""
    if NAME in _BUILDERS:
        return _BUILDERS[NAME]

    class DualpropTestFmnist(tfds.core.GeneratorBasedBuilder):
        """The first N_TRAIN train and N_TEST test images of Fashion-MNIST, in IDX order."""

        VERSION = tfds.core.Version(VERSION)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                        "label": tfds.features.ClassLabel(num_classes=10),
                    }
                ),
                supervised_keys=("image", "label"),
                disable_shuffling=True,  # records in key order: the IDX order
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(x_train, y_train),
                "test": self._generate_examples(x_test, y_test),
            }

        def _generate_examples(self, x, y):
            for i in range(len(x)):
                yield i, {"image": x[i], "label": int(y[i])}

    _BUILDERS[NAME] = DualpropTestFmnist
    return DualpropTestFmnist


@pytest.fixture(scope="module")
def subset(fmnist_raw):
    """The IDX arrays the TFDS dataset is built from (decoded by conftest, not the library)."""
    xtr, ytr, xte, yte = fmnist_raw
    return xtr[:N_TRAIN], ytr[:N_TRAIN], xte[:N_TEST], yte[:N_TEST]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, subset) -> tuple[Path, Path]:
    """``(data_dir, version_dir)`` of the prepared dataset."""
    tfds = _tfds()
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = _builder_class(tfds, *subset)(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    version_dir = data_dir / NAME / VERSION
    assert builder.info.name == NAME and Path(builder.data_dir) == version_dir
    return data_dir, version_dir


def test_prepared_as_array_record_and_read_back_equal_to_the_idx_arrays(prepared, subset):
    data_dir, version_dir = prepared
    files = sorted(p.name for p in version_dir.iterdir())
    assert "dataset_info.json" in files
    assert any(".array_record" in f and "train" in f for f in files), files
    xtr, ytr, xte, yte = subset
    for name, data_dir_arg in ((NAME, data_dir), (str(version_dir), None)):
        raw, source, display = data._load_tfds(name, data_dir=data_dir_arg)
        assert display == NAME and source.startswith("tfds:")
        assert raw["x_train"].dtype == np.uint8 and raw["x_train"].shape == (N_TRAIN, 28, 28, 1)
        np.testing.assert_array_equal(raw["x_train"], xtr)
        np.testing.assert_array_equal(raw["y_train"], ytr)
        np.testing.assert_array_equal(raw["x_test"], xte)
        np.testing.assert_array_equal(raw["y_test"], yte)

    # The Dataset keeps the pixels as uint8 and standardises batch by batch.
    ds = load_dataset(str(version_dir), val_fraction=0.0)
    assert ds.name == NAME and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    assert isinstance(ds.x_test, StandardisedImages) and ds.x_test.raw.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_test.raw, xte)
    np.testing.assert_array_equal(ds.y_test, yte)
    train = xtr.astype(np.float32) / np.float32(255.0)
    mean = train.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = train.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    expected = (xte.astype(np.float32) / np.float32(255.0) - mean) / std
    np.testing.assert_array_equal(ds.images("test", np.arange(N_TEST)), expected)


def test_batched_read_equals_the_record_loop(prepared, subset):
    """The batched ``__getitems__`` read gives what a ``source[i]`` loop gives."""
    tfds = _tfds()
    data_dir, _ = prepared
    source = tfds.data_source(NAME, split="train", data_dir=str(data_dir), download=False)
    t0 = time.perf_counter()
    x_loop, y_loop = data._records_to_arrays([source[i] for i in range(len(source))])
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, y = data._read_tfds_split(source)
    t_batched = time.perf_counter() - t0
    np.testing.assert_array_equal(x, x_loop)
    np.testing.assert_array_equal(y, y_loop)
    np.testing.assert_array_equal(x, subset[0])
    print(f"TFDS read of {len(source)} records: loop {t_loop:.3f} s, batched {t_batched:.3f} s")


def _train(tmp_path: Path, *flags: str) -> dict:
    workdir = tmp_path / "run"
    argv = ["train", *flags, "--workdir", str(workdir), "--epochs", "1", "--widths", "256"]
    assert cli.main(argv) == 0
    return json.loads((workdir / "results.json").read_text())


def test_cli_trains_on_the_registered_name(prepared, tmp_path):
    data_dir, _ = prepared
    results = _train(tmp_path, "--dataset", NAME, "--data-dir", str(data_dir))
    assert results["num_train"] == N_TRAIN - N_TRAIN // 10
    assert results["dataset_source"] == f"tfds:{NAME} ({data_dir})"
    assert results["test_accuracy"] > 0.5, results  # chance is 0.1


def test_cli_trains_on_the_prepared_directory(prepared, tmp_path):
    _, version_dir = prepared
    results = _train(tmp_path, "--dataset", str(version_dir))
    assert results["num_train"] == N_TRAIN - N_TRAIN // 10
    assert results["dataset_source"] == f"tfds:{version_dir}"
    assert results["test_accuracy"] > 0.5, results


def test_a_fresh_process_finds_the_name_in_the_data_dir_without_the_builder(prepared, subset):
    """No builder class is registered in a new process: TFDS reads the prepared files."""
    data_dir, _ = prepared
    code = (
        "import sys; from dualprop_jax.data import load_dataset\n"
        "ds = load_dataset(sys.argv[1], data_dir=sys.argv[2], val_fraction=0.0)\n"
        "print(ds.name, len(ds.y_train), len(ds.y_test), int(ds.y_test.sum()), ds.source)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, NAME, str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    expected = f"{NAME} {N_TRAIN} {N_TEST} {int(subset[3].sum())} tfds:{NAME} ({data_dir})"
    assert out.stdout.strip().splitlines()[-1] == expected


def test_directory_errors(prepared, tmp_path):
    _tfds()
    _, version_dir = prepared
    with pytest.raises(DataError, match="does not exist") as exc:
        load_dataset(str(tmp_path / "nowhere"))
    assert "dataset_info.json" in str(exc.value)
    # The dataset folder above the version folder: names the version to pass.
    with pytest.raises(DataError, match="not a prepared TFDS dataset directory") as exc:
        load_dataset(str(version_dir.parent))
    assert str(version_dir) in str(exc.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no dataset_info\.json.*array_record"):
        load_dataset(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset_info.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read the prepared TFDS dataset"):
        load_dataset(str(broken))


def test_name_errors(prepared, tmp_path):
    _tfds()
    with pytest.raises(DataError, match=f"TFDS dataset '{NAME}' is not prepared") as exc:
        load_dataset(NAME, data_dir=tmp_path)  # registered, but nothing prepared there
    assert "--file_format=array_record" in str(exc.value)
    with pytest.raises(DataError, match="unknown dataset 'no_such_dataset_xyz'") as exc:
        load_dataset("no_such_dataset_xyz", data_dir=tmp_path)
    assert len(str(exc.value)) < 1000  # not TFDS's list of every dataset
