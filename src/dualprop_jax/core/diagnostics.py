"""Diagnostics of the core: gradient alignment, pass residuals, spectral norms, KP angles.

None of these is on the training path; each is jitted with the network static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dualprop_jax.core import damping, inference, nodes
from dualprop_jax.core.feedback import check_feedback
from dualprop_jax.core.states import wide


def _leaf_name(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def alignment(grads, reference) -> dict[str, dict[str, jax.Array]]:
    """Per-leaf cosine similarity and norm ratio ‖g‖/‖g_ref‖ between two gradient trees.

    Returns ``{"cosine": {name: c}, "norm_ratio": {name: r}}`` with names like
    ``"layers/0/kernel"``. Jittable.
    """
    flat_g = jax.tree_util.tree_flatten_with_path(grads)[0]
    flat_r = jax.tree_util.tree_flatten_with_path(reference)[0]
    if [p for p, _ in flat_g] != [p for p, _ in flat_r]:
        raise ValueError("alignment needs two gradient trees of the same structure.")
    cos, ratio = {}, {}
    for (path, g), (_, r) in zip(flat_g, flat_r, strict=True):
        g, r = g.ravel(), r.ravel()
        ng, nr = jnp.linalg.norm(g), jnp.linalg.norm(r)
        name = _leaf_name(path)
        cos[name] = jnp.vdot(g, r) / jnp.maximum(ng * nr, jnp.finfo(g.dtype).tiny)
        ratio[name] = ng / jnp.maximum(nr, jnp.finfo(g.dtype).tiny)
    return {"cosine": cos, "norm_ratio": ratio}


@functools.partial(jax.jit, static_argnames=("net", "passes", "feedback"))
def pass_residuals(
    net, params, x: jax.Array, y: jax.Array, config, passes: int, feedback=None, lipschitz=None
) -> dict[str, jax.Array]:
    """How the fixed-point iteration of the dyads behaves: ``passes`` passes of
    ``config.schedule`` after the start of :func:`~dualprop_jax.core.inference.start` (forward
    pass, output nudge, and the sweep unless ``config.sweep`` is False).

    With S_p the dyads (s⁺_j, s⁻_j), j = 1..N, after pass p (S_0 the start), returns a dict:

    ``"residual"``
        r_p = ‖S_p - S_{p-1}‖, p = 1..passes (norm over nodes, both states and the batch,
        divided by √B): the step of the iteration. A converging iteration shrinks it
        geometrically, r_{p+1} ≈ ρ r_p, with ρ < 1 the spectral radius of the pass's
        linearisation at the fixed point; ρ > 1 (or a non-finite r_p) means it diverges.
    ``"delta"``
        ‖δ_p‖ = ‖(s⁺_j - s⁻_j)_j‖ / √B after each pass (the error the dyads carry; O(β) while
        the iteration is stable).

    ``config.passes`` is not used. Parts as for :func:`~dualprop_jax.core.inference.infer_dyads`.
    """
    inference.require_parts(config, feedback, lipschitz, "pass_residuals")
    update = nodes.plain_update
    if lipschitz is not None:
        update = nodes.DampedUpdate(lipschitz)
    parts = inference.Parts(feedback or nodes.transpose_feedback, update)
    st = inference.start(net, params, x, y, config, parts)
    one_pass = inference.pass_fn(net, params, st.t, st.beta_g_hat, config, parts)
    scale = jnp.sqrt(jnp.asarray(x.shape[0], jnp.float32))

    def norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in tree)) / scale

    def body(carry, _):
        new = one_pass(carry)
        now, before = new[0][1:] + new[1][1:], carry[0][1:] + carry[1][1:]
        step = [a - b for a, b in zip(now, before, strict=True)]
        d = [p - m for p, m in zip(new[0][1:], new[1][1:], strict=True)]
        return new, (norm(step), norm(d))

    _, (residual, d) = jax.lax.scan(body, tuple(st.dyads), None, passes)
    return {"residual": residual, "delta": d}


@functools.partial(jax.jit, static_argnames=("net", "k", "iterations", "dtype"))
def spectral_norm(
    net, params, k: int, iterations: int = damping.INIT_POWER_ITERATIONS, dtype=jnp.float32
) -> jax.Array:
    """γ_k: the spectral norm of map k's linear part (:func:`~.damping.linear_part`), by
    ``iterations`` power iterations from the same fixed start as the damped rule's state."""
    shape = net.map_input_shapes(params)[k]
    v = damping.start_vector(k, shape, dtype)
    linear = damping.linear_part(net, params, k, shape, dtype)
    return damping.power_iteration(linear, v, iterations)[0]


@functools.partial(jax.jit, static_argnames=("net",))
def damping_norms(net, params, state: damping.DampingState) -> dict[str, jax.Array]:
    """``{"gamma/k": γ_k}`` for the hidden maps k = 1..L-1: one power iteration from the state's
    vectors, on the current ``params`` (a jvp and a vjp per map)."""
    shapes = net.map_input_shapes(params)
    out = {}
    for k in damping.hidden_maps(net):
        v = damping.check_state(state).vectors[k]
        linear = damping.linear_part(net, params, k, shapes[k], v.dtype)
        out[f"gamma/{k}"] = damping.power_iteration(linear, v, 1)[0]
    return out


@functools.partial(jax.jit, static_argnames=("net",))
def feedback_angles(net, params) -> dict[str, jax.Array]:
    """``{"kp_angle/k": θ_k}``: the angle in degrees between B_k and W_k (as flat vectors; the
    same as between B_kᵀ and W_kᵀ), for k = 1..L-1. 0° once Kolen–Pollack has aligned them.

    θ = 2 atan2(‖Ŵ - B̂‖, ‖Ŵ + B̂‖) (unit vectors Ŵ, B̂): exact also near 0°, where arccos of
    the cosine loses half the digits.
    """
    check_feedback(net, params)
    out = {}
    for k in range(1, net.num_maps):
        W = net.layer_params(params, k)["kernel"].ravel()
        B = params["feedback"][k]["kernel"].ravel()
        dtype = wide(W.dtype)
        W, B = W.astype(dtype), B.astype(dtype)
        W, B = W / jnp.linalg.norm(W), B / jnp.linalg.norm(B)
        angle = 2.0 * jnp.arctan2(jnp.linalg.norm(W - B), jnp.linalg.norm(W + B))
        out[f"kp_angle/{k}"] = jnp.degrees(angle)
    return out
