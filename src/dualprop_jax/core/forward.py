"""The forward pass of the core, with each map's vjp kept for the top-down sweep to reuse.

For nodes j = 1..N: a_j = Σ_{k=(i,j)} W_k(s_i), s_j = f_j(a_j), s_N = a_N (the walk of
:func:`~dualprop_jax.models.graph.propagate`). With ``keep_vjps`` the maps run under
``jax.vjp``, and ``vjps[k]`` maps a cotangent of map k's output to J_kᵀ c at s_i: the sweep's
feedback then costs one transposed map and no recomputed forward. With ``keep_param_vjps``
the vjp is taken with respect to the map's parameters too, and ``param_vjps[k]`` maps c to
∂_θ⟨c, W_k(θ, s_i)⟩: the Hebbian gradient of an edge whose source's s̄ is its forward state
(:func:`~dualprop_jax.core.inference.mean_is_forward`) reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

from dualprop_jax.models import propagate


class Forward(NamedTuple):
    """States s_0..s_N (s_N = a_N), pre-activations a_0..a_N (``pre[0]`` is None), and the kept
    vjps ``{k: c ↦ J_kᵀ c}`` and ``{k: c ↦ ∂_θ⟨c, W_k(θ, s_i)⟩}`` (empty unless asked for)."""

    states: list[jax.Array]
    pre: list[jax.Array | None]
    vjps: dict[int, Callable[[jax.Array], jax.Array]]
    param_vjps: dict[int, Callable[[jax.Array], object]]


def forward(
    net,
    params,
    x: jax.Array,
    dtype=None,
    *,
    node: Callable[[int, jax.Array], jax.Array] | None = None,
    edge: Callable[[int, jax.Array], jax.Array] | None = None,
    keep_vjps: bool = False,
    keep_param_vjps: bool = False,
) -> Forward:
    """The forward pass of ``net`` at ``params``, maps computed in ``dtype``.

    ``node(j, a)`` is f_j (default: the network's own activation of node j); ``edge(k, s)``
    map k (default: ``net.apply_map`` with params_k). With ``keep_vjps`` the vjp of every map
    at its input is kept (the cotangent is cast to the map's output dtype first); with
    ``keep_param_vjps`` (default maps only) the vjp with respect to params_k too.
    """
    if keep_param_vjps and (edge is not None or not keep_vjps):
        raise ValueError("keep_param_vjps needs keep_vjps and the network's own maps (no edge).")
    node = node or (lambda j, a: net.node_f(j)(a))
    edge = edge or (lambda k, s: net.apply_map(k, net.layer_params(params, k), s, dtype))
    vjps, param_vjps = {}, {}

    def kept(k, s):
        a, vjp = jax.vjp(lambda s_: edge(k, s_), s)
        vjps[k] = lambda c, vjp=vjp, dt=a.dtype: vjp(c.astype(dt))[0]
        return a

    def kept_both(k, s):
        p_k = net.layer_params(params, k)
        a, vjp = jax.vjp(lambda p_, s_: net.apply_map(k, p_, s_, dtype), p_k, s)
        vjps[k] = lambda c, vjp=vjp, dt=a.dtype: vjp(c.astype(dt))[1]
        param_vjps[k] = lambda c, vjp=vjp, dt=a.dtype: vjp(c.astype(dt))[0]
        return a

    walk = kept_both if keep_param_vjps else kept if keep_vjps else edge
    states, pre = propagate(net.structure, x, walk, node)
    return Forward(states, pre, vjps, param_vjps)
