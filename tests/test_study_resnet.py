"""The residual-network study (experiments/studies/resnet.py): its quick slice writes well-formed
outputs, its accuracies are what the trained parameters give on the test set, evaluated here by
the NNX module itself, and a second run reads the finished runs back instead of retraining."""

import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

STUDIES = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "studies"
sys.path.insert(0, str(STUDIES))

import common  # noqa: E402
import resnet  # noqa: E402

from dualprop_jax import models  # noqa: E402
from dualprop_jax.data import load_dataset  # noqa: E402
from dualprop_jax.training import checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("resnet")
    resnet.main(["--quick", "--out", str(out)])
    return out, common.check_outputs(out, "resnet")


def test_quick_slice_has_one_cell_per_rule_and_seed(quick):
    _, doc = quick
    cells = doc["results"]["cells"]
    assert [(c["rule"], c["seed"]) for c in cells] == [
        (r, s) for s in resnet.QUICK.seeds for r in resnet.QUICK.rules
    ]
    assert doc["meta"]["quick"] and doc["meta"]["command"].endswith(
        "--quick --out " + str(quick[0])
    )


def test_accuracies_are_what_the_trained_parameters_give(quick):
    """Oracle: the final parameters of each run, put back into the ResNet-8 module and applied
    to the standardised test images, classify exactly the reported fraction correctly."""
    out, doc = quick
    ds = load_dataset("fashion_mnist", val_fraction=0.0, seed=0, max_train=300)
    x, y = ds.split("test")
    x = jnp.asarray(np.asarray(x[:], np.float32))
    for cell in doc["results"]["cells"]:
        _, state, meta = checkpoints.load_checkpoint(out / "partial" / f"{cell['rule']}-s0")
        assert meta["epoch"] == resnet.QUICK.epochs
        model = models.resnet8(input_shape=(28, 28, 1), rngs=nnx.Rngs(0))
        net, _ = models.split(model)
        module = models.merge(net, state["params"])
        predicted = np.concatenate(
            [np.argmax(np.asarray(module(x[i : i + 1000])), -1) for i in range(0, len(y), 1000)]
        )
        assert cell["test_accuracy"] == pytest.approx(np.mean(predicted == np.asarray(y)), abs=1e-6)


def test_table_reports_the_paired_difference_to_bp(quick):
    out, doc = quick
    acc = {c["rule"]: c["test_accuracy"] for c in doc["results"]["cells"]}
    md = (out / "resnet.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| dp_top |"))
    assert f"| {100 * (acc['dp_top'] - acc['bp']):.2f} |" in row


def test_a_second_run_reads_the_finished_runs_back(quick, capsys):
    out, doc = quick
    before = {p: p.stat().st_mtime_ns for p in (out / "partial").rglob("results.json")}
    resnet.main(["--quick", "--out", str(out)])
    assert "finished before, read from" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in (out / "partial").rglob("results.json")}
    assert before == after and len(before) == len(resnet.QUICK.rules)
    again = json.loads((out / "resnet.json").read_text())["results"]["cells"]
    assert [c["test_accuracy"] for c in again] == [
        c["test_accuracy"] for c in doc["results"]["cells"]
    ]
