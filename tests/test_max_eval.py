"""``--max-eval`` (``TrainConfig.max_eval``) caps the validation and test splits, as
``--max-train`` caps the training split: a short check run no longer evaluates every held-out
image. Oracle: the counts of the npz written here, and the test accuracy recomputed by
``evaluate`` on the first N test images."""

import json

import numpy as np
import pytest

from dualprop_jax import cli
from dualprop_jax.training import checkpoints
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import evaluate
from dualprop_jax.training.train import load_data


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_max_eval_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"max_eval=.*None or a positive integer"):
        TrainConfig(max_eval=bad)


def test_max_eval_caps_validation_and_test(fmnist_npz, tmp_path):
    npz = fmnist_npz
    full = load_data(TrainConfig(dataset=str(npz)))
    assert (len(full.x_val), len(full.x_test)) == (60, 200)  # 10% of 600 held out
    small = load_data(TrainConfig(dataset=str(npz), max_eval=40))
    assert (len(small.x_train), len(small.x_val), len(small.x_test)) == (540, 40, 40)
    np.testing.assert_array_equal(small.y_test, full.y_test[:40])
    np.testing.assert_array_equal(small.images("test"), full.images("test", slice(0, 40)))

    workdir = tmp_path / "run"
    args = ["train", "--dataset", str(npz), "--widths", "16", "--epochs", "1",
            "--max-eval", "40", "--workdir", str(workdir)]  # fmt: skip
    assert cli.main(args) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert (results["num_val"], results["num_test"]) == (40, 40)
    net, state, _ = checkpoints.load_checkpoint(workdir)
    config = checkpoints.saved_config(workdir)
    want = evaluate(net, state["best_params"], (full.x_test[:40], full.y_test[:40]), config.rule)
    assert results["test_accuracy"] == pytest.approx(want["accuracy"])
