"""The rule family end to end: every rule trains through ``dualprop train`` on real
Fashion-MNIST, evaluates with its own prediction, resumes, and is named the same way in the
CLI, the config and the benchmark. (The rules' math is tested against oracles in
test_energy.py and test_variants.py.)"""

from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import cli, rules
from dualprop_jax.data import load_dataset
from dualprop_jax.losses import per_example_loss
from dualprop_jax.training import checkpoints, steps

COMMON = ["--max-train", "3000", "--widths", "64", "--epochs", "2", "--batch-size", "50"]

# label -> CLI flags; EP and CHL with short phases (T = 30, K = 10) to stay quick
FAMILY = {
    "dp_top+damped": ["--rule", "dp_top", "--damped", "--passes", "2"],
    "dp+kp": ["--rule", "dp", "--feedback", "kolen_pollack"],
    "dp+exact": ["--rule", "dp", "--output", "exact", "--loss", "squared_error", "--beta", "0.1"],
    "ep": ["--rule", "ep", "--free-steps", "30", "--nudged-steps", "10", "--lr", "0.002"],
    "chl": ["--rule", "chl", "--free-steps", "30", "--clamped-steps", "10", "--lr", "0.002"],
    # the 2024 scripts' 16 bottom-up passes (its label stays dp_top; rules.from_label: dp_top+fw16)
    "dp_top": ["--rule", "dp_top", "--schedule", "bottom_up", "--no-sweep", "--passes", "15"],
    "pc": ["--rule", "pc"],
    "ep_pcn": ["--rule", "ep_pcn"],
}


def _train(tmp_path, label: str, capsys, extra=()):
    workdir = tmp_path / label
    code = cli.main(["train", *COMMON, *FAMILY[label], *extra, "--workdir", str(workdir)])
    out = capsys.readouterr().out
    assert code == 0, out
    return workdir, json.loads((workdir / "results.json").read_text()), out


def _accuracy_by_hand(net, params, rule, x, y) -> float:
    """Accuracy of the rule's prediction, batch by batch, without the library's evaluate:
    the feedforward output for DP rules; for EP/CHL the free phase, relaxed here with the
    energy module's public ``free_phase``."""
    correct = 0
    for i in range(0, len(x), 500):
        xb = jnp.asarray(x[i : i + 500])
        if isinstance(rule, rules.EquilibriumProp | rules.ContrastiveHebbian):
            y_hat = dp.core.energy.free_phase(net, params, xb, rule)[-1]
        else:
            y_hat = net.forward(params, xb)
        correct += int(jnp.sum(jnp.argmax(y_hat, -1) == jnp.asarray(y[i : i + 500])))
    return correct / len(x)


@pytest.mark.parametrize("label", list(FAMILY))
def test_every_rule_trains_through_dualprop_train_and_tests_its_own_prediction(
    label, tmp_path, capsys
):
    """Two epochs of each new rule on 3000 Fashion-MNIST images: the run finishes, learns
    (test accuracy far above the 10% of chance), and the reported test accuracy is that of
    the rule's own prediction on the best parameters, recomputed here by hand (EP/CHL: the
    free phase's output, which differs from the feedforward pass a bug would use)."""
    workdir, results, out = _train(tmp_path, label, capsys)
    rule = rules.from_dict(results["rule"])
    assert rule.label == label
    assert results["test_accuracy"] > 0.5, results["test_accuracy"]
    net, state, _ = checkpoints.load_checkpoint(workdir)
    ds = load_dataset("fashion_mnist", max_train=3000, seed=0)
    x_test, y_test = ds.split("test")
    x_test = np.asarray(ds.images("test", np.arange(len(x_test))), np.float32)
    by_hand = _accuracy_by_hand(net, state["best_params"], rule, x_test, y_test)
    assert results["test_accuracy"] == pytest.approx(by_hand, abs=1e-4)
    assert rule.label.split("+")[0] in out  # progress names the rule


def test_kp_logs_the_angle_between_b_and_w_which_shrinks_and_resumes(tmp_path, capsys):
    """KP-DP: B_k and W_k receive the same updates (and each its own weight decay), so W_k
    grows along the updates and the angle between B_k and W_k shrinks from the ~90° of two
    independent random draws. The angle is logged at the start (results.json) and after
    every epoch (metrics.csv); a resumed run restores B_k (a restore without them would fail
    or restart the angle near 90°)."""
    workdir, results, _ = _train(tmp_path, "dp+kp", capsys, ["--weight-decay", "1e-3"])
    start = results["rule_metrics_start"]
    with (workdir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for k in ("rule/kp_angle/1",):
        assert 80 < start[k] < 100, start  # independent random draws: nearly orthogonal
        angles = [float(r[k]) for r in rows]
        assert angles[-1] < start[k] - 5, (start[k], angles)
    _, state, _ = checkpoints.load_checkpoint(workdir)
    b, w = (np.asarray(state["params"][g][1]["kernel"]) for g in ("feedback", "layers"))
    cos = np.sum(b * w) / np.linalg.norm(b) / np.linalg.norm(w)
    assert np.degrees(np.arccos(cos)) == pytest.approx(float(rows[-1]["rule/kp_angle/1"]), 1e-3)
    more = ["--epochs", "3", "--batch-size", "50", "--weight-decay", "1e-3", "--resume"]
    code = cli.main(["train", *COMMON[:-4], *more, *FAMILY["dp+kp"], "--workdir", str(workdir)])
    assert code == 0
    with (workdir / "metrics.csv").open() as fh:
        resumed = [float(r["rule/kp_angle/1"]) for r in csv.DictReader(fh)]
    assert len(resumed) == 3 and resumed[:2] == pytest.approx(angles)
    assert resumed[2] < angles[0]


def test_evaluate_uses_the_rules_prediction_and_loss():
    """``evaluate`` with an EP rule scores the free phase with EP's loss (squared error):
    oracle = relaxation and loss computed here with the public functions; the feedforward
    output (what ``evaluate`` gives for BP) scores differently on the same parameters."""
    net, params = dp.split(dp.mlp((784, 32, 10), rngs=nnx.Rngs(0)))
    ds = load_dataset("fashion_mnist", max_train=600, seed=0)
    x, y = ds.split("test")
    x, y = np.asarray(ds.images("test", np.arange(400)), np.float32), np.asarray(y[:400])
    rule = rules.equilibrium_prop(free_steps=20, nudged_steps=5)
    got = steps.evaluate(net, params, (x, y), rule=rule, batch_size=128)
    s_L = dp.core.energy.free_phase(net, params, jnp.asarray(x), rule)[-1]
    t = jax.nn.one_hot(y, 10)
    want_loss = float(jnp.mean(per_example_loss("squared_error", s_L, t)))
    want_acc = int(jnp.sum(jnp.argmax(s_L, -1) == y)) / len(y)
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert got["accuracy"] == pytest.approx(want_acc, abs=1e-9)
    bp = steps.evaluate(net, params, (x, y), rule=rules.backprop(), batch_size=128)
    assert bp["loss"] != pytest.approx(got["loss"], rel=1e-3)


def test_labels_name_every_rule_and_bad_tags_say_which_exist():
    assert rules.from_label("dp_top+damped") == rules.dual_prop("dp_top", damped=True)
    assert rules.from_label("dp+kp") == rules.kolen_pollack("dp")
    assert rules.from_label("ep+one_sided") == rules.equilibrium_prop(nudging="one_sided")
    assert rules.from_label("chl") == rules.chl()
    for rule in (
        rules.dual_prop("dp_top", damped=True),
        rules.kolen_pollack("dp"),
        rules.dual_prop("dp", output="exact", loss="squared_error", beta=0.1),
        rules.equilibrium_prop(nudging="one_sided", free_steps=7),
        rules.chl(clamped_steps=3),
    ):
        assert rules.from_label(rule.label, **rules.from_dict(rule.to_dict()).to_dict()) == rule
        assert rules.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(ValueError, match="takes the tags"):
        rules.from_label("ep+kp")
    with pytest.raises(ValueError, match="takes no"):
        rules.from_label("bp+damped")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(variant="dp", alpha=0.0, beta=1.0, loss="squared_error", output="exact"), r"-α\)β <"),
        (dict(variant="dp_top", alpha=1.0, beta=2.0, loss="squared_error", output="exact"), "αβ"),
        (dict(output="exact"), "squared_error"),
        (dict(fast=True, damped=True), "fast"),
        (dict(feedback="kp"), "feedback"),
        (dict(damped=True, power_iterations=0), "power_iterations"),
    ],
)
def test_bad_variant_settings_are_clear_errors(settings, match):
    with pytest.raises(ValueError, match=match):
        rules.dual_prop(**settings)


def test_energy_flags_on_a_dp_rule_are_refused_by_name(tmp_path, capsys):
    code = cli.main(
        ["train", "--rule", "dp_top", "--free-steps", "5", "--workdir", str(tmp_path / "w")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--free_steps" in err.replace("-free-steps", "-free_steps")
    assert not (tmp_path / "w").exists()
