"""Cost counting: the compiled program's dot/conv flops against closed forms, and each rule's
sweeps per step from its settings against the flops its compiled step gains per added map.

Oracles: 2·m·k·n flops for an (m, k) x (k, n) dot, a loop body counted trip-count times, and
2·(output elements)·(kernel height · width · input channels) for a convolution; BP's step on an
MLP (forward, backward without the input's gradient, weight gradients) in closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.training.cost import compiled_flops, sweeps, sweeps_per_map
from dualprop_jax.training.steps import TrainState, make_train_step, rule_params

B = 16


def _flops(fn, *args) -> float:
    return compiled_flops(jax.jit(fn).lower(*args).compile().as_text())


def test_dot_and_loop_flops_are_the_closed_forms():
    a, b = jnp.ones((8, 32)), jnp.ones((32, 32))
    assert _flops(lambda a, b: a @ b, a, b) == 2 * 8 * 32 * 32
    def looped(a, b):
        return jax.lax.fori_loop(0, 7, lambda _, s: jnp.tanh(s @ b), a)

    assert _flops(looped, a, b) == 7 * 2 * 8 * 32 * 32


def test_convolution_flops_are_the_closed_form():
    x, k = jnp.ones((4, 10, 10, 3)), jnp.ones((3, 3, 3, 5))

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip

    assert _flops(conv, x, k) == 2 * (4 * 10 * 10 * 5) * (3 * 3 * 3)


def _step_flops(label: str, settings: dict, hidden: int) -> float:
    net, params = models.split(models.mlp((20, *(16,) * hidden, 10), rngs=nnx.Rngs(0)))
    rule = rules.from_label(label, **settings)
    params = rule_params(rule, net, params, 0)
    optimizer = optax.sgd(0.1)
    state = TrainState.create(net, params, rule, optimizer)
    x, y = jnp.ones((B, 20)), jnp.zeros((B,), jnp.int32)
    compiled = make_train_step(net, rule, optimizer).lower(state, x, y).compile()
    return compiled_flops(compiled.as_text())


def test_bp_step_flops_are_forward_backward_and_weight_gradients():
    """The closed form on a 20-16-16-10 MLP: every map forward and weight gradient, every map
    but the first transposed (the input needs no gradient)."""
    sizes = [(20, 16), (16, 16), (16, 10)]
    per_map = [2 * B * i * o for i, o in sizes]
    assert _step_flops("bp", {}, 2) == 3 * sum(per_map) - per_map[0]


ENERGY = dict(free_steps=6, nudged_steps=4, clamped_steps=4)
CASES = [
    ("bp", {}), ("dp_top", {}), ("dp", dict(alpha=0.3)), ("dp_top+fw16", {}),
    ("dp_top+damped", {}), ("dp+kp", {}), ("ep", ENERGY), ("ep+one_sided", ENERGY),
    ("chl", ENERGY), ("pc", dict(inference_steps=5)), ("pc+fixed", dict(inference_steps=5)),
    ("ep_pcn", dict(nudged_steps=3)), ("ep_pcn+one_sided", dict(nudged_steps=3)),
]  # fmt: skip


@pytest.mark.parametrize(("label", "settings"), CASES, ids=[c[0] for c in CASES])
def test_sweeps_from_settings_match_the_compiled_step(label, settings):
    """The flops a compiled step gains when the MLP gains a 16x16 map, over that map's
    2·B·16·16, equal the sweeps counted from the rule's settings (plus damped DP's two
    matrix-vector products, 2/B of a sweep)."""
    rule = rules.from_label(label, **settings)
    net = models.split(models.mlp((20, 16, 16, 10), rngs=nnx.Rngs(0)))[0]
    counted = sweeps(rule, net)
    want = counted["total"] + counted.get("matvec", 0) / B
    seen = sweeps_per_map(lambda h: _step_flops(label, settings, h), 2 * B * 16 * 16)
    assert seen == pytest.approx(want, abs=1e-9)
