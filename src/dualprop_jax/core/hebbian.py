"""The Hebbian weight update: the gradient of the local objective J at fixed dyads.

With the dyads held fixed (stop_gradient), over the edges k = (i, j) of the network,

    J(θ) = (1/β) Σ_k ⟨-δ_j, W_k(θ, s̄_i)⟩ / B,

so ∇_{W_k} J = -(1/β) δ_j s̄_iᵀ / B and ∇_{b_k} J = -(1/β) Σ_batch δ_j / B for a dense map (a
Hebbian outer product of the postsynaptic error and the presynaptic activity), and for any
differentiable map -(1/β) ∂_θ⟨δ_j, W_k(θ, s̄_i)⟩ / B: only the two ends of the edge enter. As
β → 0 it tends to the BP gradient of the batch-mean loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dualprop_jax.core import inference
from dualprop_jax.core.states import (
    Aux,
    Dyads,
    batch_loss,
    compute_dtype,
    delta,
    s_bar,
    wide,
)


def local_objective(net, params, dyads: Dyads, config) -> jax.Array:
    """J(θ) = (1/β) Σ_k ⟨-δ_j, W_k(θ, s̄_i)⟩ / B over the edges k = (i, j), dyads held fixed
    (``config``: its ``alpha``, ``beta`` and ``dtype``)."""
    dtype = compute_dtype(config.dtype)
    dyads = jax.lax.stop_gradient(dyads)
    bar, d = s_bar(dyads, config.alpha), delta(dyads)
    batch = d[0].shape[0]
    J = 0.0
    for k in range(net.num_maps):
        a_k = net.apply_map(k, net.layer_params(params, k), bar[net.source(k)], dtype)
        J = J + jnp.vdot(-d[net.target(k)], a_k).astype(wide(dtype))
    return J / (config.beta * batch)


def hebbian_grad(net, params, dyads: Dyads, config, kept: dict | None = None):
    """∇_θ J of :func:`local_objective`: one vjp of all maps at s̄, with cotangents δ_j.

    Equal to ``jax.grad(local_objective)``, with the structure of ``params``; the factor
    -1/(βB) is applied to the (small) parameter gradients rather than to every δ_j, which saves
    a pass over each activation. s̄ is computed once per node
    (:func:`~dualprop_jax.core.states.node_mean`), for a pooling map to read. The primals
    W_k(s̄_i) that the vjp evaluates are unused, and jit removes them.

    ``kept`` ({k: c ↦ ∂_θ⟨c, W_k(θ, s̄_i)⟩}, from
    :func:`~dualprop_jax.core.inference.infer_kept`): edges whose parameter vjp at s̄_i the
    forward pass already holds (s̄_i is the forward state there); they are left out of the vjp
    here and take that one instead,
    so a nonlinear map (attention, LayerNorm) is not evaluated a second time. (The result then
    equals ``jax.grad(local_objective)`` to float rounding: s̄_i there is the computed mix.)
    """
    dtype = compute_dtype(config.dtype)
    bar, d = jax.lax.stop_gradient((s_bar(dyads, config.alpha), delta(dyads)))
    scale = -1.0 / (config.beta * d[0].shape[0])
    kept = kept or {}
    edges = [k for k in range(net.num_maps) if k not in kept]

    def maps(p):
        return tuple(
            net.apply_map(k, net.layer_params(p, k), bar[net.source(k)], dtype) for k in edges
        )

    a, vjp = jax.vjp(maps, params)
    cotangents = zip(edges, a, strict=True)
    (grads,) = vjp(tuple(d[net.target(k)].astype(a_k.dtype) for k, a_k in cotangents))
    if kept:
        layers = dict(grads["layers"])
        for k, param_vjp in kept.items():
            layers[k] = param_vjp(jax.lax.stop_gradient(d[net.target(k)]))
        grads = {**grads, "layers": layers}
    return jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)


@functools.partial(jax.jit, static_argnames=("net",))
def contrastive_grad(net, params, x: jax.Array, y: jax.Array, config) -> tuple[object, Aux]:
    """The DP / DP⊤ weight gradient ∇_θ J (same tree as ``params``) and :class:`Aux`, at the
    dyads of :func:`~dualprop_jax.core.inference.infer_dyads` (transpose feedback, plain
    update):  ∇_{W_k} J = -(1/β) δ_j s̄_iᵀ / B,  ∇_{b_k} J = -(1/β) Σ_batch δ_j / B."""
    inference.require_parts(config, None, None, "contrastive_grad")
    dyads, y_hat, t = inference.infer(net, params, x, y, config)
    return hebbian_grad(net, params, dyads, config), Aux(batch_loss(config.loss, y_hat, t), y_hat)
