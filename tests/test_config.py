"""Invalid configs and inputs fail early with errors that name the field, the value and the fix."""

import re

import jax.numpy as jnp
import pytest
from flax import nnx

import dualprop_jax as dp


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha=.*must be a real number in \[0, 1\]"):
        dp.rules.dual_prop(alpha=alpha)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan")])
def test_beta_not_positive_or_not_finite(beta):
    with pytest.raises(ValueError, match=r"beta=.*finite real number > 0"):
        dp.rules.dual_prop(beta=beta)


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"variant='dpx'.*one of \('dp', 'dp_top'\)"):
        dp.rules.dual_prop(variant="dpx")


def test_unknown_schedule():
    with pytest.raises(ValueError, match=r"schedule='zigzag'.*'alternating', 'bottom_up'"):
        dp.rules.dual_prop(schedule="zigzag")


def test_unknown_loss():
    with pytest.raises(ValueError, match=r"loss='hinge'.*'softmax_ce', 'squared_error'"):
        dp.rules.dual_prop(loss="hinge")


def test_negative_passes():
    with pytest.raises(ValueError, match=r"passes=-1.*non-negative integer"):
        dp.rules.dual_prop(passes=-1)


def test_non_integer_passes():
    with pytest.raises(ValueError, match=r"passes=1.5.*non-negative integer"):
        dp.rules.dual_prop(passes=1.5)


def test_unknown_dtype():
    with pytest.raises(ValueError, match=r"dtype='float16'.*'float32'"):
        dp.rules.dual_prop(dtype="float16")


def test_fast_path_needs_symmetric_alpha():
    with pytest.raises(ValueError, match=r"fast=True.*alpha == 0.5"):
        dp.rules.dual_prop(fast=True, alpha=0.3)


def test_config_is_frozen_and_replace_revalidates():
    cfg = dp.rules.dual_prop()
    with pytest.raises(AttributeError):
        cfg.beta = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="beta"):
        cfg.replace(beta=-1.0)


@pytest.fixture(scope="module")
def small_net():
    return dp.split(dp.mlp((6, 5, 4), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("fn", [dp.contrastive_grad, dp.bp_grad])
def test_targets_with_wrong_class_count(small_net, fn):
    net, params = small_net
    x = jnp.ones((3, 6))
    y = jnp.zeros((3, 7))
    with pytest.raises(
        ValueError,
        match=r"targets of shape \(3, 7\) do not fit the model output "
        r"of shape \(3, 4\)",
    ):
        fn(net, params, x, y, dp.rules.dual_prop())


def test_integer_targets_with_wrong_shape(small_net):
    net, params = small_net
    with pytest.raises(
        ValueError, match=r"labels of shape \(batch,\) = \(3,\), got shape \(3, 1\)"
    ):
        dp.contrastive_grad(
            net, params, jnp.ones((3, 6)), jnp.zeros((3, 1), jnp.int32), dp.rules.dual_prop()
        )


def test_targets_with_wrong_batch(small_net):
    net, params = small_net
    with pytest.raises(ValueError, match=r"leading \(batch\) sizes must be equal"):
        rule = dp.rules.dual_prop()
        dp.infer_dyads(net, params, jnp.ones((3, 6)), jnp.zeros((2,), jnp.int32), rule)


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation='swishy' is unknown"):
        dp.mlp((3, 2), activation="swishy", rngs=nnx.Rngs(0))


def test_train_config_of_the_old_flat_format_is_refused_with_the_current_one():
    """Configs written before the rule was one field held algo, alpha, beta, ... at the top
    level; they are no longer read, and the message shows the same config in the current
    format (only the settings the rule takes)."""
    from dualprop_jax.training.config import TrainConfig

    old = {"algo": "bp", "alpha": 0.5, "beta": 0.01, "loss": "softmax_ce", "widths": [16]}
    with pytest.raises(ValueError, match="the old flat format") as err:
        TrainConfig.from_dict(old)
    message = str(err.value)
    assert "['algo', 'alpha', 'beta', 'loss']" in message
    assert '"rule": {"name": "bp", "loss": "softmax_ce"}' in message
    with pytest.raises(ValueError, match=r'"rule": \{"name": "dp_top", "beta": 0.02\}'):
        TrainConfig.from_dict({"beta": 0.02})  # no algo: the flat default was DP⊤
    current = TrainConfig.from_dict({"rule": {"name": "bp"}, "widths": [16]})
    assert current.rule.name == "bp" and current.widths == (16,)
    assert TrainConfig.from_dict(current.to_dict()) == current


@pytest.mark.parametrize(
    "rule",
    [
        dp.rules.equilibrium_prop(),
        dp.rules.chl(),
        dp.rules.damped_dual_prop(),
        dp.rules.kolen_pollack(),
    ],
)
def test_a_chain_only_rule_on_a_residual_model_is_refused_before_any_data(rule):
    from dualprop_jax.training.config import TrainConfig

    message = re.escape(f"rule '{rule.label}' is defined for layered chains only")
    for graph_model in ("resnet8", "vit"):
        with pytest.raises(ValueError, match=message):
            TrainConfig(model=graph_model, rule=rule)
    assert TrainConfig(model="mlp", rule=rule).rule == rule  # chains take it


def test_the_cli_refuses_ep_on_resnet8_and_leaves_no_workdir(tmp_path, capsys):
    """The check runs when the config is built, before the data loads or the workdir exists."""
    from dualprop_jax import cli

    workdir = tmp_path / "run"
    code = cli.main(["train", "--rule", "ep", "--model", "resnet8", "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert code == 2 and "defined for layered chains only" in err and "resnet8" in err
    assert not workdir.exists()
