"""The transformer studies (experiments/studies/vit.py and byte_lm.py): their quick slices write
well-formed outputs; the ViT's accuracies are what its trained parameters give on the test set,
evaluated here by the NNX module itself; the language model's runs start from the same weights
(equal step-0 validation bits per byte for every rule of a seed), its table's Δ is the paired
difference of its cells, and a second run reads the finished runs back."""

import json
import math
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

STUDIES = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "studies"
sys.path.insert(0, str(STUDIES))

import byte_lm  # noqa: E402
import common  # noqa: E402
import vit  # noqa: E402

from dualprop_jax import models  # noqa: E402
from dualprop_jax.data import load_dataset  # noqa: E402
from dualprop_jax.training import checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def vit_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit")
    vit.main(["--quick", "--out", str(out)])
    return out, common.check_outputs(out, "vit")


@pytest.fixture(scope="module")
def lm_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("byte_lm")
    byte_lm.main(["--quick", "--out", str(out)])
    return out, common.check_outputs(out, "byte_lm")


def test_vit_accuracies_are_what_the_trained_parameters_give(vit_quick):
    """Oracle: the final parameters of each run, put back into the ViT module and applied to
    the standardised test images, classify exactly the reported fraction correctly."""
    out, doc = vit_quick
    cells = doc["results"]["cells"]
    assert [(c["rule"], c["seed"]) for c in cells] == [("bp", 0), ("dp_top", 0)]
    ds = load_dataset("fashion_mnist", val_fraction=0.0, seed=0, max_train=300)
    x, y = ds.split("test")
    x = jnp.asarray(np.asarray(x[:], np.float32))
    for cell in cells:
        _, state, meta = checkpoints.load_checkpoint(out / "partial" / f"{cell['rule']}-s0")
        assert meta["epoch"] == vit.QUICK.epochs
        net, _ = models.split(models.vit((28, 28, 1), 10, patch=7, rngs=nnx.Rngs(0)))
        module = models.merge(net, state["params"])
        predicted = np.concatenate(
            [np.argmax(np.asarray(module(x[i : i + 1000])), -1) for i in range(0, len(y), 1000)]
        )
        assert cell["test_accuracy"] == pytest.approx(np.mean(predicted == np.asarray(y)), abs=1e-6)


def test_lm_rules_start_from_the_same_weights_and_the_table_pairs_them(lm_quick):
    out, doc = lm_quick
    cells = {c["rule"]: c for c in doc["results"]["cells"]}
    assert set(cells) == {"bp", "dp_top"}
    start = [c["curve"][0] for c in cells.values()]
    assert start[0]["bpb"] == start[1]["bpb"]  # same initial weights, same evaluation
    assert 5.0 < start[0]["bpb"] < 9.0  # near-uniform over 256 bytes at initialisation: 8 bits
    steps = [p["step"] for p in cells["bp"]["curve"]]
    assert steps == [0, 10, 20] and all(math.isfinite(p["bpb"]) for p in cells["bp"]["curve"])
    row = next(line for line in (out / "byte_lm.md").read_text().splitlines()
               if line.startswith("| dp_top |"))  # fmt: skip
    assert f"{cells['dp_top']['val_bpb'] - cells['bp']['val_bpb']:.3f}" in row


def test_lm_second_run_reads_the_finished_runs_back(lm_quick, capsys):
    out, doc = lm_quick
    before = {p: p.stat().st_mtime_ns for p in (out / "partial").glob("*.json")}
    byte_lm.main(["--quick", "--out", str(out)])
    assert "finished before, read from" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in (out / "partial").glob("*.json")}
    assert before == after and len(before) == 2
    again = json.loads((out / "byte_lm.json").read_text())["results"]["cells"]
    assert [c["val_bpb"] for c in again] == [c["val_bpb"] for c in doc["results"]["cells"]]
