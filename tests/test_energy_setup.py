"""EP and CHL setups that train no better than chance are named when the rule meets the network
(``rule.init``), with their fix: a second phase shorter than the number of maps, and a conv net
in the unpooled layout. Oracle: the conditions themselves, counted from the model."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules


def _caught(rule, net, params) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert rule.init(net, params) == ()
    return [str(w.message) for w in seen if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize(
    "make", [lambda k: rules.equilibrium_prop(nudged_steps=k), lambda k: rules.chl(clamped_steps=k)]
)
def test_a_second_phase_shorter_than_the_maps_is_named(make):
    net, params = dp.split(dp.mlp((6, 8, 8, 8, 3), rngs=nnx.Rngs(0)))  # 4 maps
    (message,) = _caught(make(3), net, params)
    assert "runs 3 steps, fewer than the network's 4 maps" in message
    assert "use at least 4" in message
    assert _caught(make(4), net, params) == []


def test_the_unpooled_layout_is_named_for_ep_and_not_the_pooled_one():
    kw = dict(channels=(4, 4), dense=(8,), num_classes=3, rngs=nnx.Rngs(0))
    rule = rules.equilibrium_prop(nudged_steps=30)
    net, params = dp.split(dp.cnn((8, 8, 1), **kw))  # maps 1 and 2 pool their input
    (message,) = _caught(rule, net, params)
    assert "maps [1, 2] max-pool their input" in message and "layout='pooled'" in message
    net, params = dp.split(dp.cnn((8, 8, 1), layout="pooled", **kw))
    assert _caught(rule, net, params) == []


def test_dual_propagation_has_no_such_warning():
    net, params = dp.split(dp.cnn((8, 8, 1), channels=(4,), dense=(8,), num_classes=3,
                                  rngs=nnx.Rngs(0)))  # fmt: skip
    assert _caught(rules.dual_prop(), net, params) == []


def test_ep_draws_the_fan_in_uniform_weights_and_model_keeps_the_models():
    """U(±1/√fan_in) per map (fan_in: a dense map's inputs, a conv's kh·kw·c_in): every kernel
    and bias inside the bound, the kernels' std within 10% of bound/√3; ``weight_init="model"``
    returns the model's own parameters."""
    net, params = dp.split(dp.cnn((28, 28, 1), channels=(8, 16), dense=(32,), layout="pooled",
                                  rngs=nnx.Rngs(0)))  # fmt: skip
    key = jax.random.key(3)
    drawn = rules.equilibrium_prop().init_params(net, params, key)
    for k, layer in drawn["layers"].items():
        bound = 1.0 / np.sqrt(np.prod(layer["kernel"].shape[:-1]))
        for leaf in (layer["kernel"], layer["bias"]):
            assert float(np.max(np.abs(leaf))) <= bound
        assert np.std(layer["kernel"]) == pytest.approx(bound / np.sqrt(3), rel=0.1), k
    assert rules.chl(weight_init="model").init_params(net, params, key) is params
    with pytest.raises(ValueError, match="weight_init"):
        rules.equilibrium_prop(weight_init="he")


def test_the_cnns_free_phase_settles_from_the_fan_in_uniform_weights():
    """The diagnosis of EP's CNN at chance, on 20 Fashion-MNIST images: from the model's He
    weights the synchronous free phase still moves after 100 steps (residual > 0.1, measured
    0.28); from U(±1/√fan_in) it has nearly settled (measured 4e-3, under a 20th of it)."""
    from dualprop_jax.core import energy

    ds = dp.load_dataset("fashion_mnist", max_train=100)
    x = jnp.asarray(ds.images("train", np.arange(20)))
    net, params = dp.split(dp.cnn((28, 28, 1), channels=(32, 64), dense=(512,), layout="pooled",
                                  rngs=nnx.Rngs(0)))  # fmt: skip
    rule = rules.equilibrium_prop()
    residual = {}
    for name, p in (("he", params), ("uniform", rule.init_params(net, params, jax.random.key(1)))):
        s = energy.relax(net, p, x, energy.start_states(net, p, x, rule), rule, 100)
        nxt = energy.relax(net, p, x, s, rule, 1)
        residual[name] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(s, nxt, strict=True))
    assert residual["he"] > 0.1 and residual["uniform"] < residual["he"] / 20, residual
