"""The fast path (Høier et al. 2023): one-sweep DP at α = ½ as autodiff with a dual activation.

Each hidden f_j gets the backward rule c ↦ (f(a + βc/2) - f(a - βc/2))/β (:func:`dual_activation`),
the finite difference the dyad s⁺ - s⁻ takes at α = ½, and the presynaptic factor is the forward
activity instead of s̄ (the two differ at O(β²)). Cheap, and a cross-check of the dyad solver.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dualprop_jax.core.forward import forward
from dualprop_jax.core.states import Aux, check_batch, compute_dtype, wide
from dualprop_jax.losses import per_example_loss, targets_as_array


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dual_activation(f, beta, a: jax.Array) -> jax.Array:
    """f(a) forward; backward rule c ↦ (f(a + β c/2) - f(a - β c/2)) / β (the DP fast path).

    β may be traced (no cotangent flows to it).
    """
    return f(a)


def _dual_fwd(f, beta, a):
    return f(a), (beta, a)


def _dual_bwd(f, res, c):
    beta, a = res
    # the finite difference cancels to noise in bfloat16: take it in at least float32
    dtype = wide(a.dtype)
    half = (0.5 * beta) * c.astype(dtype)
    a_w = a.astype(dtype)
    return jnp.zeros_like(beta), ((f(a_w + half) - f(a_w - half)) / beta).astype(a.dtype)


dual_activation.defvjp(_dual_fwd, _dual_bwd)


@functools.partial(jax.jit, static_argnames=("net",))
def fast_grad(net, params, x: jax.Array, y: jax.Array, config) -> tuple[object, Aux]:
    """Autodiff of the summed loss through the forward pass with each hidden f_j replaced by
    :func:`dual_activation` (``config``: its ``beta``, ``loss``, ``dtype``); gradients divided
    by the batch size B. Equals DP at α = ½ with one sweep up to O(β²)."""
    check_batch(net, x, y)
    dtype = compute_dtype(config.dtype)

    def summed_loss(p):
        node = lambda j, a: dual_activation(net.node_f(j), config.beta, a)  # noqa: E731
        s = forward(net, p, x, dtype, node=node).states[-1]
        t = targets_as_array(s.astype(wide(dtype)), y)
        # Sum, not mean: the dual activation's step must see per-example cotangents g.
        return jnp.sum(per_example_loss(config.loss, s.astype(t.dtype), t)), s

    (total, y_hat), grads = jax.value_and_grad(summed_loss, has_aux=True)(params)
    batch = x.shape[0]
    grads = jax.tree.map(lambda g: g / batch, grads)
    return grads, Aux(total / batch, y_hat)
