"""The passes study (experiments/studies/passes.py): its quick slice writes well-formed outputs,
and its numbers agree with computations that bypass the vmapped sweep and the library's BP rule."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

STUDIES = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "studies"
sys.path.insert(0, str(STUDIES))

import common  # noqa: E402
import passes  # noqa: E402

from dualprop_jax.training.steps import TrainState, make_train_step  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("passes")
    passes.main(["--quick", "--out", str(out)])
    return common.check_outputs(out, "passes")["results"]


def _row(results, rule, schedule, p):
    (row,) = [
        r
        for r in results["rows"]
        if r["rule"] == rule and r["schedule"] == schedule and r["passes"] == p
    ]
    return row


def test_quick_covers_every_rule_schedule_and_pass_count(quick):
    s = passes.QUICK
    # BP, then per rule: passes = 0 once ("both" schedules), every other count per schedule
    assert len(quick["rows"]) == 1 + len(s.rules) * (1 + 2 * (len(s.passes) - 1))
    for row in quick["rows"]:
        assert len(row["acc"]) == len(s.seeds)
        assert np.all(np.asarray(row["first_nonfinite"]) == -1)  # nothing diverges here


def _cos_init_spread(quick, rule: str) -> float:
    rows = [r for r in quick["rows"] if r["rule"] == rule]
    assert {r["passes"] for r in rows} == set(passes.QUICK.passes)
    ref = np.asarray(rows[0]["cos_init_layers"])
    return max(float(np.abs(np.asarray(r["cos_init_layers"]) - ref).max()) for r in rows[1:])


def _loss_spread(quick, rule: str) -> float:
    rows = [r for r in quick["rows"] if r["rule"] == rule]
    ref = np.asarray(rows[0]["final_loss"])
    return max(float(np.abs(np.asarray(r["final_loss"]) / ref - 1).max()) for r in rows[1:])


def test_passes_change_nothing_for_dp_top_at_alpha_one(quick):
    """DP⊤ at α = 1: s̄ = s⁺ = f(a) is the forward activity whatever the feedback, so the dyads
    are at their fixed point after the top-down sweep, and extra passes of either schedule leave
    the gradient unchanged: its cosine to BP at initialisation agrees to float32 rounding (α is
    a traced leaf, so a pass recomputes each pre-activation from s̄ = 1·s⁺ + 0·s⁻ in a fusion of
    its own, which may round the last bit differently). At α = ½ the passes move the dyads, and
    the final training loss moves by 2e-4 (relative), four times the bound at α = 1: the check has
    power. (Trained parameters are not compared: Adam turns last-bit differences of near-zero
    gradients into steps of the learning rate.)"""
    assert _cos_init_spread(quick, "DP⊤ α=1") < 2e-6
    assert _loss_spread(quick, "DP⊤ α=1") < 5e-5  # measured 3e-6: rounding through training
    assert _loss_spread(quick, "DP⊤ α=½") > 1e-4  # measured 2e-4: the passes move α = ½


def test_step_time_ratios_are_the_ms_columns_over_bps(quick):
    bp = _row(quick, "BP", "—", 0)
    assert bp["step_ratio"] == 1.0
    for row in quick["rows"]:
        assert row["step_ms"] > 0
        np.testing.assert_allclose(row["step_ratio"], row["step_ms"] / bp["step_ms"], rtol=1e-9)


def test_cosine_at_init_matches_raw_autodiff_and_the_order_in_beta(quick):
    """At passes = 0 the rule's gradient is within O(β²) of BP's at α = ½ and O(β) at α = 1
    (docs/method.md): the study's cosine equals one computed against ``jax.grad`` of the loss,
    is near 1, and the symmetric rule is the closer one, on average and in its worst layer.
    (Not in every layer: DP⊤'s top layer at α = 1 is exact, as s̄ = s⁺ is the forward activity.)"""
    s = passes.QUICK
    *_, (x_cos, y_cos) = passes.load_data(s)
    net, params = passes.init_params(s.widths, s.seeds[0])

    def loss(p):
        logits = net.forward(p, x_cos, jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_cos).mean()

    g_bp = jax.jit(jax.grad(loss))(params)
    for label, variant, alpha in passes.rules_of(s):
        rule = passes.make_rule(variant, alpha, "alternating", 0)
        g = jax.jit(lambda p, rule=rule: rule.grad(net, p, (), x_cos, y_cos)[0])(params)
        cos = []
        for k in sorted(g["layers"]):
            a = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g["layers"][k])])
            b = np.concatenate([np.ravel(v) for v in jax.tree.leaves(g_bp["layers"][k])])
            cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        reported = _row(quick, label, "both", 0)["cos_init_layers"][0]
        np.testing.assert_allclose(reported, cos, atol=2e-5)
    sym = np.asarray(_row(quick, "DP⊤ α=½", "both", 0)["cos_init_layers"][0])
    asym = np.asarray(_row(quick, "DP⊤ α=1", "both", 0)["cos_init_layers"][0])
    assert sym.min() > 0.999
    assert sym.mean() > asym.mean() and sym.min() > asym.min()


def test_accuracy_equals_a_single_model_trained_with_the_library_step(quick):
    """One cell of the vmapped grid (DP⊤ α=1, 2 bottom-up passes, seed 0) retrained alone with
    ``make_train_step`` on the same batches, evaluated by a plain argmax."""
    s = passes.QUICK
    x, y, x_test, y_test, perm, _ = passes.load_data(s)
    net, params = passes.init_params(s.widths, s.seeds[0])
    rule = passes.make_rule("dp_top", 1.0, "bottom_up", 2)
    opt = optax.adam(s.lr)
    step = make_train_step(net, rule, opt)
    state = TrainState.create(net, params, rule, opt)
    perm = np.asarray(perm)
    for i in range(len(perm) // s.batch_size):
        idx = perm[i * s.batch_size : (i + 1) * s.batch_size]
        state, _ = step(state, x[idx], y[idx])
    pred = np.argmax(np.asarray(net.forward(state.params, x_test, jnp.float32)), -1)
    acc = np.mean(pred == np.asarray(y_test))
    reported = _row(quick, "DP⊤ α=1", "bottom_up", 2)["acc"][0]
    assert abs(reported - acc) <= 3e-4  # ≤ 3 of 10 000 images: float order of vmap vs one model
