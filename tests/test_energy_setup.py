"""EP and CHL setups that train no better than chance are named when the rule meets the network
(``rule.init``), with their fix: a second phase shorter than the number of maps, and a conv net
in the unpooled layout. Oracle: the conditions themselves, counted from the model."""

import warnings

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
