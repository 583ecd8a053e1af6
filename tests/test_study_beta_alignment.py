"""The β → 0 alignment study (``experiments/studies/beta_alignment.py --quick``).

The expectations come from a Taylor expansion of the dyads in β, not from the study's output:
for a smooth f (tanh) the relative error ‖g − g_BP‖/‖g_BP‖ is O(β²) at α = ½ and O(β) at
α ∈ {0, 1}, with a first-order term odd in (2α − 1); DP and DP⊤ have equal coefficients at
α = ½; in float32 round-off (∝ ε₃₂/β) takes over at small β.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

STUDIES = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "studies"


def _load(name: str):
    if str(STUDIES) not in sys.path:
        sys.path.insert(0, str(STUDIES))
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    study, common = _load("beta_alignment"), _load("common")
    out = tmp_path_factory.mktemp("beta_alignment")
    assert study.main(["--quick", "--out", str(out)]) == 0
    doc = common.check_outputs(out, "beta_alignment")
    assert doc["meta"]["quick"] is True
    return doc["results"]


def _slope(runs, act, dtype, rule):
    return runs["runs"][act]["init"][rule][dtype]["fit"]["slope"]


@pytest.mark.parametrize("rule", ["DP α=½", "DP⊤ α=½", "fast α=½"])
def test_symmetric_nudging_is_second_order(runs, rule):
    assert 1.7 <= _slope(runs, "tanh", "float64", rule) <= 2.3


@pytest.mark.parametrize("rule", ["DP α=0", "DP α=1", "DP⊤ α=0", "DP⊤ α=1"])
def test_one_sided_nudging_is_first_order(runs, rule):
    assert 0.8 <= _slope(runs, "tanh", "float64", rule) <= 1.2


@pytest.mark.parametrize("variant", ["DP", "DP⊤"])
def test_first_order_error_is_odd_in_alpha(runs, variant):
    """The O(β) terms at α = 0 and α = 1 cancel: their mean is O(β²)."""
    fit = runs["runs"]["tanh"]["init"]["mean_of_ends"][variant]["fit"]
    assert 1.7 <= fit["slope"] <= 2.3


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_dp_and_dp_top_coincide_only_at_half(runs, act):
    diff = runs["runs"][act]["init"]["dp_minus_dp_top"]
    assert max(diff["α=½"]) < 1e-12
    # at α ∈ {0, 1} the two variants nudge different sides: they differ at O(β)
    assert diff["α=0"][-1] > 1e-3 and diff["α=1"][-1] > 1e-3


def test_float32_round_off_takes_over_at_small_beta(runs):
    betas = np.asarray(runs["setup"]["betas"])
    run = runs["runs"]["tanh"]["init"]["DP α=½"]
    err32, err64 = np.asarray(run["float32"]["rel_error"]), np.asarray(run["float64"]["rel_error"])
    i_small, i_mid = 0, int(np.argmin(np.abs(np.log10(betas) + 2)))
    assert err32[i_small] > 100 * err64[i_small]
    assert err32[i_small] > err32[i_mid]  # the float32 error grows again as β falls
    assert np.allclose(err32[-1], err64[-1], rtol=1e-2)  # at β = 1 truncation dominates both
    assert run["float32"]["fit"]["roundoff_below_beta"] >= 1e-3


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_cosine_tends_to_one(runs, act):
    run = runs["runs"][act]["init"]
    for rule in ("DP α=0", "DP α=½", "DP α=1", "DP⊤ α=0", "DP⊤ α=1", "fast α=½"):
        one_minus_cos = np.asarray(run[rule]["float64"]["one_minus_cos"])
        assert one_minus_cos[0] < 1e-4 and one_minus_cos[0] < 1e-2 * one_minus_cos[-1]
        for layer in run[rule]["float64"]["per_layer"].values():
            assert layer["cosine"][0] > 0.999


def test_relu_kink_crossings_grow_with_beta(runs):
    for fraction in runs["runs"]["relu"]["init"]["kink_fraction"].values():
        assert fraction[-1] > fraction[len(fraction) // 2] >= fraction[0]
        assert fraction[-1] > 0.01


def test_output_layer_sees_the_mean_each_rule_uses(runs):
    """δ_L = −βg is exact, so the output kernel's error is that of its presynaptic factor s̄_{L−1}:
    the forward state for DP⊤ at α ∈ {0, 1} (s̄ = s⁻ = f(a) or s̄ = s⁺ = f(a)) and on the fast
    path, hence exact; shifted by (2α − 1) f′ fb = O(β) for DP at α ∈ {0, 1}."""
    betas = np.asarray(runs["setup"]["betas"])
    run = runs["runs"]["tanh"]["init"]
    out = sorted(n for n in run["DP α=0"]["float64"]["per_layer"] if n.endswith("kernel"))[-1]
    i_mid = int(np.argmin(np.abs(np.log10(betas) + 2)))
    for rule in ("DP⊤ α=0", "DP⊤ α=1", "fast α=½"):
        assert max(run[rule]["float64"]["per_layer"][out]["rel_error"]) < 1e-10
    for rule in ("DP α=0", "DP α=1"):
        err = np.asarray(run[rule]["float64"]["per_layer"][out]["rel_error"])
        assert err[-1] > 1e-3
        assert 30 < err[-1] / err[i_mid] < 300  # O(β): two decades of β, two of error
