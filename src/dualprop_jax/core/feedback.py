"""Kolen–Pollack feedback (Høier et al. 2023): the error travels back through separate weights B_k.

fb_k is the vjp of map k with its kernel W_k replaced by B_k (``params["feedback"][k]["kernel"]``),
at the same point as the transpose feedback. B_k receives W_k's Hebbian gradient
(:func:`feedback_grads`), so an optimizer with weight decay drives B_k → W_k and no weight
transport is needed. Defined for chains (map k = 1..L-1; map 0 would feed back into the input).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dualprop_jax.core.nodes import map_vjp
from dualprop_jax.core.states import check_net
from dualprop_jax.models import kernel_initializer


def kolen_pollack_feedback(net, params, k: int, s_j, delta_c, dtype=None, vjp=None) -> jax.Array:
    """B_kᵀ δ_c: the vjp at s_j of map k with its kernel W_k replaced by B_k (the bias does not
    enter a vjp in s). The forward pass's kept ``vjp`` (of W_k) is not used."""
    del vjp
    params_k = {**net.layer_params(params, k), "kernel": params["feedback"][k]["kernel"]}
    return map_vjp(net, k, params_k, s_j, delta_c, dtype)


def init_feedback(net, params, key: jax.Array):
    """``params`` plus the feedback weights ``params["feedback"] = {k: {"kernel": B_k}}`` for the
    maps k = 1..L-1, each of W_k's shape and dtype, drawn from ``key`` (folded with k)
    independently of W_k by the builders' initializer (He normal for hidden maps, LeCun normal
    for the output map)."""
    check_net(net)
    net.require_chain("Kolen–Pollack DP")
    L = net.num_maps
    feedback = {}
    for k in range(1, L):
        W = net.layer_params(params, k)["kernel"]
        init = kernel_initializer(k, L)
        feedback[k] = {"kernel": init(jax.random.fold_in(key, k), W.shape, W.dtype)}
    return {**params, "feedback": feedback}


def check_feedback(net, params) -> None:
    """``ValueError`` naming the maps whose B_k is missing or misshapen, and the fix."""
    net.require_chain("Kolen–Pollack DP")
    fb = params.get("feedback") if isinstance(params, dict) else None
    missing = [
        k
        for k in range(1, net.num_maps)
        if fb is None
        or k not in fb
        or jnp.shape(fb[k].get("kernel")) != jnp.shape(net.layer_params(params, k)["kernel"])
    ]
    if missing:
        raise ValueError(
            f"Kolen–Pollack DP needs feedback weights B_k of W_k's shape in params['feedback'] "
            f"for maps {list(range(1, net.num_maps))}; missing or misshapen for {missing}: call "
            "params = rule.init_params(net, params, key) first."
        )


def feedback_grads(grads):
    """``grads`` with each B_k given W_k's kernel gradient (the Kolen–Pollack idea)."""
    layers = grads["layers"]
    return {**grads, "feedback": {k: {"kernel": layers[k]["kernel"]} for k in grads["feedback"]}}
