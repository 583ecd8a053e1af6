"""Damped DP's Lipschitz coefficients (Høier & Zach 2024), by power iteration on the maps.

For hidden node k of a chain, L_k = max(0, (γ_k² - 1)/2), with γ_k the spectral norm of map k
(node k → k+1: the map the state s_k feeds, as in the official 2024 code), estimated by power
iteration on the linear part of the map's pool-free core. The iteration vectors are the damped
rule's state; each gradient call runs a few more iterations, warm-started from it. L_k enters
the node solver through :class:`~dualprop_jax.core.nodes.DampedUpdate`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dualprop_jax.core.states import check_net, wide

INIT_POWER_ITERATIONS = 50
"""Power iterations :func:`init_damping` runs from its random start, so that the first γ_k are
already close (each grad call then runs ``power_iterations`` more, warm-started)."""
DAMPING_SEED = 0
"""The fixed PRNG seed of the power-iteration start vectors."""


class DampingState(NamedTuple):
    """The power-iteration vector of each hidden map k = 1..L-1 (``vectors[k]``: unit norm, of
    shape ``(1, *core_input)``, :meth:`~dualprop_jax.models.LayeredNet.map_input_shapes`), an
    estimate of the top right-singular vector of map k's linear part."""

    vectors: dict[int, jax.Array]


def linear_part(net, params, k: int, input_shape, dtype=jnp.float32):
    """v ↦ J_k v, the linear part of map k's core (``net.apply_core``: the map without its
    max-pools), on one example of per-example shape ``input_shape``.

    The core is affine, so its linearisation at 0 (``jax.linearize``) is the map with the bias
    dropped. Max-pooling is 1-Lipschitz, hence ‖J_k‖₂ bounds the Lipschitz constant of map k.
    """
    params_k = net.layer_params(params, k)
    zero = jnp.zeros((1, *input_shape), dtype)
    _, jvp = jax.linearize(lambda s: net.apply_core(k, params_k, s, dtype), zero)
    return jvp


def power_iteration(linear, v, iterations: int):
    """``iterations`` power-iteration steps for the spectral norm of a linear map A.

    From a unit vector v: w = Aᵀ A v, γ = √‖w‖, v ← w/‖w‖. γ = √‖AᵀA v‖ ≥ ‖A v‖ is a lower
    bound on σ_max(A) that converges to it (relative error ~ (σ₂/σ₁)^(2n) after n steps); the
    transpose comes from ``jax.linear_transpose``. Returns ``(gamma, v)``; a zero map leaves v
    unchanged and gives γ = 0.
    """
    transpose = jax.linear_transpose(linear, v)

    def step(_, carry):
        v_, _ = carry
        w = transpose(linear(v_))[0]
        n = jnp.sqrt(jnp.vdot(w, w).real)
        v_ = jnp.where(n > 0, w / jnp.where(n > 0, n, 1), v_)
        return v_, jnp.sqrt(n)

    v, gamma = jax.lax.fori_loop(0, iterations, step, (v, jnp.zeros((), v.dtype)))
    return gamma, v


def start_vector(k: int, shape, dtype) -> jax.Array:
    """The fixed random unit start vector of map k (key :data:`DAMPING_SEED` folded with k)."""
    v = jax.random.normal(jax.random.fold_in(jax.random.key(DAMPING_SEED), k), (1, *shape), dtype)
    return v / jnp.linalg.norm(v)


def hidden_maps(net) -> range:
    """The maps k = 1..L-1 whose γ_k damps hidden layer k (map 0 reads the input)."""
    return range(1, net.num_maps)


@functools.partial(jax.jit, static_argnames=("net", "dtype"))
def init_damping(net, params, dtype="float32") -> DampingState:
    """The initial state: for each hidden map k = 1..L-1 the unit vector of
    :func:`start_vector` after :data:`INIT_POWER_ITERATIONS` power iterations (in at least
    float32). ``ValueError`` where the network is a graph, or a conv map's input shape is
    unknown (a ``Network`` built by hand without ``input_shape``)."""
    check_net(net)
    net.require_chain("damped DP")
    dtype = wide(jnp.dtype(dtype))
    shapes = net.map_input_shapes(params)
    vectors = {}
    for k in hidden_maps(net):
        linear = linear_part(net, params, k, shapes[k], dtype)
        v = start_vector(k, shapes[k], dtype)
        vectors[k] = power_iteration(linear, v, INIT_POWER_ITERATIONS)[1]
    return DampingState(vectors)


def check_state(state) -> DampingState:
    """``state`` if it is a :class:`DampingState`, else a ``ValueError`` saying how to make one."""
    if not isinstance(state, DampingState):
        raise ValueError(
            f"the damped rule needs its DampingState (state = rule.init(net, params)), got "
            f"{type(state).__name__}."
        )
    return state


def lipschitz_damping(net, params, state: DampingState, iterations: int):
    """``({k: L_k}, new state)``: L_k = max(0, (γ_k² - 1)/2) per hidden layer k, with γ_k of map
    k after ``iterations`` power iterations warm-started from ``state`` (no gradient flows
    through it)."""
    net.require_chain("damped DP")
    state = check_state(state)
    shapes = net.map_input_shapes(params)
    lipschitz, vectors = {}, {}
    params = jax.lax.stop_gradient(params)
    for k in hidden_maps(net):
        v = state.vectors[k]
        linear = linear_part(net, params, k, shapes[k], v.dtype)
        gamma, vectors[k] = power_iteration(linear, v, iterations)
        lipschitz[k] = jnp.maximum(0.0, 0.5 * (gamma * gamma - 1.0))
    return lipschitz, DampingState(vectors)
