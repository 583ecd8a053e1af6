"""The α × β study's quick mode: it runs, writes well-formed outputs, and its numbers obey
identities that hold whatever the training does.

Oracles:
- with one sweep at α = ½, DP and DP⊤ are the same rule (docs/method.md), so every seed of the
  two cells must reach the same accuracy and loss: a swapped coefficient or a cell trained
  with another cell's rule or seed breaks it;
- the study's fixed-point diagnostic at initialisation equals ``core.pass_residuals`` called
  directly on the seed-0 weights and the same images (the study's plumbing: right weights,
  rule and data).
"""

import importlib.util
import pathlib

import numpy as np
import pytest
from flax import nnx

from dualprop_jax import core, models, rules

STUDIES = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "studies"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory, fmnist_raw):
    del fmnist_raw  # the data must be installed (the fixture fails with the fix otherwise)
    out = tmp_path_factory.mktemp("alpha_beta")
    study = _load("alpha_beta")
    assert study.main(["--quick", "--out", str(out)]) == 0
    common = _load("common")
    return study, common.check_outputs(out, "alpha_beta"), out


def test_quick_mode_writes_every_output_with_its_provenance(quick):
    _, doc, out = quick
    assert doc["meta"]["quick"] is True
    assert doc["meta"]["command"].endswith(f"--quick --out {out}")
    settings = doc["results"]["settings"]
    groups = doc["results"]["groups"]
    cells = len(settings["alphas"]) * len(settings["betas"]) * len(settings["seeds"])
    assert len(groups) == len(settings["depths"]) * len(settings["schedules"]) * 2
    assert all(len(g["runs"]) == cells for g in groups)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for g in groups for r in g["runs"])
    assert "Quick mode" in (out / "alpha_beta.md").read_text()


def test_dp_and_dp_top_coincide_at_symmetric_nudging_with_one_sweep(quick):
    _, doc, _ = quick
    by = {(g["depth"], g["schedule"], g["variant"]): g for g in doc["results"]["groups"]}
    for depth in doc["results"]["settings"]["depths"]:
        dp, top = by[(depth, "sweep", "dp")], by[(depth, "sweep", "dp_top")]
        half = [
            (a, b)
            for a, b in zip(dp["runs"], top["runs"], strict=True)
            if a["alpha"] == 0.5 and b["alpha"] == 0.5
        ]
        assert half
        for a, b in half:
            assert (a["beta"], a["seed"]) == (b["beta"], b["seed"])
            assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-4)
            assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-5)


def test_the_diagnostic_is_the_library_pass_residual_at_the_seed_zero_weights(quick):
    study, doc, _ = quick
    import sys

    common = sys.modules["common"]
    settings = doc["results"]["settings"]
    depth, widths = next(iter(settings["depths"].items()))
    schedule = next(s for s in settings["schedules"] if s != "sweep")
    group = next(
        g
        for g in doc["results"]["groups"]
        if (g["depth"], g["schedule"], g["variant"]) == (depth, schedule, "dp")
    )
    entry = next(e for e in group["diagnostic"] if e["alpha"] == 1.0)
    x, y, _, _ = common.load_fashion_mnist(settings["train_images"])
    n = study.QUICK["diag_images"]
    net, params = models.split(models.mlp(widths, rngs=nnx.Rngs(settings["seeds"][0])))
    rule = rules.dual_prop("dp", alpha=1.0, beta=entry["beta"], **settings["schedules"][schedule])
    want = core.pass_residuals(net, params, x[:n], y[:n], rule, study.DIAG_PASSES)
    np.testing.assert_allclose(entry["init"]["residual"], np.asarray(want["residual"]), rtol=1e-4)
