"""The node solver: the dyad update of one node, given its input and its feedback, and its parts.

Closed-form updates, with (c⁺, c⁻) = (α, 1-α) for DP and (1-α, α) for DP⊤
(:func:`coefficients`), in :func:`solve_node` and :func:`output_dyad`::

  hidden node j:  s⁺_j = f_j(a_j + c⁺ fb_j),   s⁻_j = f_j(a_j - c⁻ fb_j)
  output node N:  s⁺_N = a_N - c⁺ βg,          s⁻_N = a_N + c⁻ βg

with a_j = Σ_{k=(i,j)} W_k(s̄_i) the node's input, fb_j = Σ_{k=(j,c)} J_kᵀ δ_c its feedback
(:func:`node_feedback`) and g = ∇ℓ(ŷ, t) the loss gradient at the output (so δ_N = -βg).

Two parts plug into the solver, chosen by the rule (so that e.g. damped Kolen–Pollack DP is a
combination of parts, not a branch):

feedback
    ``(net, params, k, s_j, δ_c, dtype, vjp) -> J_kᵀ δ_c``: :func:`transpose_feedback` (the vjp
    of map k itself at s_j) or ``kolen_pollack_feedback`` (:mod:`~dualprop_jax.core.feedback`:
    map k with its kernel W_k replaced by B_k);
update
    ``(j, f_j, p, s_now) -> (s⁺_j, s⁻_j)`` on the stacked pre-activations
    p = (a_j + c⁺ fb_j, a_j - c⁻ fb_j): :func:`plain_update`, f_j(p), or :class:`DampedUpdate`
    (Høier & Zach 2024), f_j((p + L_j s_now)/(1 + L_j)).

Exact output (squared error, the 2023 MLP code): s⁺_N = (a_N + c⁺β t)/(1 + c⁺β),
s⁻_N = (a_N - c⁻β t)/(1 - c⁻β), the minimiser of ½‖s - a_N‖² + c⁺β ½‖s - t‖² and the
stationary point of ½‖s - a_N‖² - c⁻β ½‖s - t‖² (t the target).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dualprop_jax.core.states import wide
from dualprop_jax.losses import loss_gradient
from dualprop_jax.models import edge_sum

Feedback = Callable[..., jax.Array]
"""``feedback(net, params, k, s_j, delta_c, dtype, vjp=None) -> J_kᵀ δ_c``."""
Update = Callable[..., jax.Array]
"""``update(j, f_j, p, s_now) -> f_j(...)`` of the stacked pre-activations p (leading axis 2)."""


def coefficients(variant: str, alpha) -> tuple:
    """(c⁺, c⁻): DP (``"dp"``, Høier et al. 2023): (α, 1-α); DP⊤ (``"dp_top"``, Høier & Zach
    2024): (1-α, α). At α = ½ the two coincide."""
    if variant == "dp":
        return alpha, 1.0 - alpha
    return 1.0 - alpha, alpha


def nudge(loss: str, beta, a_N: jax.Array, t: jax.Array) -> jax.Array:
    """βg with g = ∇_ŷ ℓ(a_N, t), in at least float32."""
    return beta * loss_gradient(loss, a_N.astype(wide(a_N.dtype)), t)


def output_dyad(a_N, beta_g, c: tuple, *, exact_beta=None, t=None) -> tuple[jax.Array, jax.Array]:
    """The output dyad: s⁺_N = a_N - c⁺ βg, s⁻_N = a_N + c⁻ βg (in at least float32); with
    ``exact_beta`` = β the exact squared-error closed form at a_N,
    s⁺_N = (a_N + c⁺β t)/(1 + c⁺β), s⁻_N = (a_N - c⁻β t)/(1 - c⁻β) (``beta_g`` unused)."""
    c_plus, c_minus = c
    a = a_N.astype(wide(a_N.dtype))
    if exact_beta is None:
        return a - c_plus * beta_g, a + c_minus * beta_g
    t = t.astype(a.dtype)
    b_plus, b_minus = c_plus * exact_beta, c_minus * exact_beta
    return (a + b_plus * t) / (1.0 + b_plus), (a - b_minus * t) / (1.0 - b_minus)


def plain_update(j: int, f, p: jax.Array, s_now=None) -> jax.Array:
    """The plain update f_j(p) of the stacked pre-activations p = (a + c⁺ fb, a - c⁻ fb)."""
    del j, s_now
    return f(p)


class DampedUpdate(NamedTuple):
    """The damped (Lipschitz) update of Høier & Zach 2024: for hidden node j with
    L_j = ``lipschitz[j]`` (:func:`~dualprop_jax.core.damping.lipschitz_damping`),

        s±_j = f_j((p± + L_j s±_now)/(1 + L_j)),

    s±_now the current states (the forward activity in the sweep). Where L_j = 0 the plain p±
    is selected, so the result is bit-identical to :func:`plain_update`; for ReLU the fixed
    points are the same for every L_j."""

    lipschitz: dict

    def __call__(self, j: int, f, p: jax.Array, s_now) -> jax.Array:
        if isinstance(s_now, tuple):  # (s⁺, s⁻) of the node
            s_now = jnp.stack(s_now)
        s_now = s_now.astype(p.dtype)
        if s_now.ndim == p.ndim - 1:
            s_now = s_now[None]
        L_j = jnp.asarray(self.lipschitz[j], p.dtype)
        return f(jnp.where(L_j > 0, (p + L_j * s_now) / (1.0 + L_j), p))


def solve_node(
    f, a: jax.Array, fb: jax.Array, c: tuple, update: Update = plain_update, j: int = 0,
    s_now=None,
) -> tuple[jax.Array, jax.Array]:
    """s⁺_j = f_j(a_j + c⁺ fb_j), s⁻_j = f_j(a_j - c⁻ fb_j) for hidden node j, in at least
    float32, through ``update`` (which applies f_j once, to both pre-activations stacked on a
    new leading axis: with two f calls XLA's CPU backend recomputed δ in each consumer).

    ``s_now``: the node's current states, a pair (s⁺, s⁻) or one shared state (only the damped
    update reads them)."""
    c_plus, c_minus = c
    dtype = wide(a.dtype)
    a, fb = a.astype(dtype), fb.astype(dtype)
    coef = jnp.asarray([c_plus, -c_minus], dtype).reshape((2,) + (1,) * a.ndim)
    s_pm = update(j, f, a[None] + coef * fb[None], s_now)
    return s_pm[0], s_pm[1]


def map_vjp(net, k: int, params_k, s: jax.Array, cotangent: jax.Array, dtype=None) -> jax.Array:
    """J_kᵀ c: the vjp of map k with parameters ``params_k`` at s, applied to c."""
    a, vjp = jax.vjp(lambda s_: net.apply_map(k, params_k, s_, dtype), s)
    return vjp(cotangent.astype(a.dtype))[0]


def transpose_feedback(net, params, k: int, s_j, delta_c, dtype=None, vjp=None) -> jax.Array:
    """J_kᵀ δ_c: the vjp of map k = (j, c) at s_j (the forward pass's kept ``vjp`` where given,
    which was taken at the same point)."""
    if vjp is not None:
        return vjp(delta_c)
    return map_vjp(net, k, net.layer_params(params, k), s_j, delta_c, dtype)


def node_feedback(
    net, params, j: int, s_j, deltas, feedback: Feedback = transpose_feedback, dtype=None,
    vjps=None,
) -> jax.Array:
    """fb_j = Σ_{k=(j,c)} J_kᵀ δ_c over node j's out-edges, each term by ``feedback`` at s_j
    (``deltas[c]``: δ_c; ``vjps``: the forward pass's kept vjps, or None)."""
    return edge_sum([
        feedback(net, params, k, s_j, deltas(net.target(k)), dtype,
                 None if vjps is None else vjps.get(k))
        for k in net.out_edges(j)
    ])  # fmt: skip
