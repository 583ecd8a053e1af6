"""The conv map's canonical convolution (``models.maps.canonical_conv``) against JAX's own.

Oracles: JAX's transpose rules of ``lax.conv_general_dilated`` (the vjp the custom rule
replaces, same sums in the same order, so equal to float32 rounding); and XLA:CPU's compiled
program, whose convolutions must all be in the canonical NHWC/HWIO form inside the device
feed's loop (XLA:CPU rewrites other forms only in the entry computation, and runs them there
on a loop nest 6-40x slower).
"""

from __future__ import annotations

import re

import _feed_worker as cases
import jax
import numpy as np
import pytest
from flax import nnx

from dualprop_jax import models
from dualprop_jax.data import device as device_data
from dualprop_jax.models import maps
from dualprop_jax.training.steps import TrainState, make_train_step

CANONICAL_LABELS = "dim_labels=b01f_01io->b01f"


def _lax_conv(x, w):
    p = (w.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("k", [1, 3, 5])
def test_canonical_conv_value_and_vjp_equal_lax(k):
    """y and (∂x, ∂w) of a non-square input with unequal channels equal lax's. The sums are
    the same products in an order XLA picks, so they agree to float32 rounding of sums of
    at most k²·C = 75 terms of size ~1: 1e-5 absolute. A swapped transpose, an unflipped
    kernel or a padding taken from the wrong operand fails by O(1) (or by shape)."""
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, 7, 5, 4))
    w = jax.random.normal(keys[1], (k, k, 4, 6))
    g = jax.random.normal(keys[2], (3, 7, 5, 6))
    y, vjp = jax.vjp(maps.canonical_conv, x, w)
    y_ref, vjp_ref = jax.vjp(_lax_conv, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_conv_map_call_equals_nnx_conv_and_keeps_jvp_on_its_core():
    """The map's call (through conv_same) equals nnx.Conv's own call (its ``core``), and the
    core, which the damped rule linearises, still has a jvp."""
    layer = maps.Conv(3, 4, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 3))
    np.testing.assert_allclose(layer(x), layer.core(x), rtol=0, atol=1e-6)
    # the core is linear in its input up to the bias: J x = core(x) - core(0)
    _, tangent = jax.jvp(layer.core, (x,), (x,))
    np.testing.assert_allclose(tangent, layer.core(x) - layer.core(0 * x), rtol=0, atol=1e-5)


def _convolutions(hlo: str) -> list[str]:
    return [line for line in hlo.splitlines() if re.search(r"\bconvolution\(", line)]


def test_device_feed_chunk_runs_only_canonical_convolutions():
    """Every convolution XLA:CPU compiles into the device feed's chunk program (a while loop
    of DP⊤ train steps on a CNN) is canonical. With JAX's own conv vjp, the weight gradient
    (dim_labels f01b_i01o->01bf) and the feedback convolution stay non-canonical in the loop
    body: this test fails on them."""
    ds, _, _, rule, optimizer, augment = cases.problem("cnn_augment")
    # two convs: the second one's feedback to the first is a convolution too
    model = models.cnn((12, 12, 3), channels=(4, 4), dense=(8,), num_classes=3, rngs=nnx.Rngs(0))
    net, params = models.split(model)
    step = make_train_step(net, rule, optimizer, donate=True, augment=augment)
    state = TrainState.create(net, params, rule, optimizer, None)
    run = device_data.Runner(step, None)
    data = device_data.resident(ds, None)
    order = np.arange(24, dtype=np.int32).reshape(2, 12)
    plan, carry = device_data.start_epoch(run, state, data, order, [1, 2], 0, 0, None)
    hlo = run.chunk.lower(carry, data, plan, run.rule).compile().as_text()
    convs = _convolutions(hlo)
    # 2 forward, 1 feedback (map 1 to node 1), 2 weight gradients
    assert len(convs) >= 5, f"expected forward, feedback and weight-gradient convs: {convs}"
    odd = [c.strip()[:160] for c in convs if CANONICAL_LABELS not in c]
    assert not odd, f"non-canonical convolutions in the chunk: {odd}"
