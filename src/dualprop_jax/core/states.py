"""Dyad states and what every path of the core shares: s̄, δ, the wide dtype, checks of a batch.

Notation (nodes j = 0..N in topological order; a chain's layers k = 0..L, s_0 = x):
  s_plus   = s⁺_j, s_minus = s⁻_j        the dyad of node j
  s_bar    = s̄_j = α s⁺_j + (1-α) s⁻_j   mean: the activity carried forward
  delta    = δ_j = s⁺_j - s⁻_j            difference: the error carried backward
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dualprop_jax.losses import per_example_loss


class Dyads(NamedTuple):
    """Dyad states of every node j = 0..N (``s_plus[0] = s_minus[0] = x``)."""

    s_plus: tuple[jax.Array, ...]
    s_minus: tuple[jax.Array, ...]


class Aux(NamedTuple):
    """By-products of a gradient call: the batch-mean loss ℓ and the prediction ŷ."""

    loss: jax.Array
    logits: jax.Array


def s_bar(dyads: Dyads, alpha) -> tuple[jax.Array, ...]:
    """Activity of every node: s̄_j = α s⁺_j + (1-α) s⁻_j (s⁺_j itself where s⁺_j is s⁻_j),
    each by :func:`node_mean`."""
    return tuple(node_mean(sp, sm, alpha) for sp, sm in zip(*dyads, strict=True))


def node_mean(s_plus: jax.Array, s_minus: jax.Array, alpha) -> jax.Array:
    """s̄ = α s⁺ + (1-α) s⁻ of one node (``s_plus`` itself where ``s_plus`` is ``s_minus``),
    taken as the second row of the stacked mix (δ, s̄) = W (s⁺, s⁻), W = [[1, -1], [α, 1-α]].

    Written so, XLA:CPU computes s̄ in one loop fusion that a consumer library fusion
    (YNNPACK's max pool of the Hebbian vjp) reads as one buffer; the plain expression
    α s⁺ + (1-α) s⁻ is pulled into that fusion instead, which then reads s⁺ and s⁻ (each
    written by a fusion of its own) and two activation-sized broadcasts of α and 1-α.
    """
    if s_plus is s_minus:
        return s_plus
    dtype = s_plus.dtype
    shape = (2,) + (1,) * s_plus.ndim
    one = jnp.ones((), dtype)
    w_plus = jnp.stack([one, jnp.asarray(alpha, dtype)]).reshape(shape)
    w_minus = jnp.stack([-one, jnp.asarray(1.0 - alpha, dtype)]).reshape(shape)
    return (w_plus * s_plus[None] + w_minus * s_minus[None])[1]


def delta(dyads: Dyads) -> tuple[jax.Array, ...]:
    """Error of every node: δ_j = s⁺_j - s⁻_j (zero at the input)."""
    return tuple(sp - sm for sp, sm in zip(*dyads, strict=True))


def wide(dtype) -> jnp.dtype:
    """At least float32: the dtype of losses, output gradients and dyad states.

    δ = s⁺ - s⁻ is a difference of two nearby states (their gap is O(β)); in bfloat16 (8-bit
    mantissa) it would cancel to noise at β = 0.01, so dyads are solved in float32 even when
    the layer maps compute in bfloat16.
    """
    return jnp.promote_types(dtype, jnp.float32)


def compute_dtype(name) -> jnp.dtype:
    """The dtype the layer maps compute in, named by a rule's ``dtype``.

    ``"float64"`` needs JAX's 64-bit mode; without it JAX would compute in float32 while the
    rule, its config and the results say float64, so it is refused with the fix.
    """
    dtype = jnp.dtype(name)
    if dtype == jnp.float64 and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError(
            "dtype='float64' needs JAX's 64-bit mode, which is off: call "
            "jax.config.update('jax_enable_x64', True) at the start of the program (or run "
            "inside `with jax.enable_x64(True):`), or use dtype='float32'."
        )
    return dtype


def check_net(net) -> None:
    """``TypeError`` unless ``net`` is the static view of a network (what ``dp.split`` gives)."""
    if not hasattr(net, "apply_map"):
        kind = type(net).__name__
        raise TypeError(
            f"the learning rules take the static view of a network, got a {kind}: call "
            "net, params = dp.split(model) and pass net and params."
        )


def check_batch(net, x: jax.Array, y: jax.Array) -> None:
    """``ValueError`` naming the problem where ``x`` is not a batch of the network's inputs or
    ``y`` does not match it (the leading axis is the batch)."""
    check_input(net, x)
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"targets y of shape {y.shape} do not match the batch of x of shape {x.shape}: "
            "the leading (batch) sizes must be equal."
        )


def check_input(net, x) -> None:
    """``ValueError`` where ``x`` (anything with a ``shape``) is not a batch of the network's
    inputs: ``net.input_shape`` per example, or for a flat input any shape of that size."""
    check_net(net)
    shape = getattr(net, "input_shape", None)
    if len(x.shape) < 2:
        raise ValueError(f"x must be a batch with a leading batch axis, got shape {x.shape}.")
    if shape is not None:
        flat = len(shape) == 1 and math.prod(x.shape[1:]) == shape[0]
        if tuple(x.shape[1:]) != tuple(shape) and not flat:
            raise ValueError(
                f"x has per-example shape {tuple(x.shape[1:])} but the network takes "
                f"net.input_shape = {tuple(shape)}: pass x of shape (batch, *{tuple(shape)})."
            )


def batch_loss(loss: str, y_hat: jax.Array, t: jax.Array) -> jax.Array:
    """The batch-mean loss (1/B) Σ_b ℓ(ŷ_b, t_b), in the targets' (wide) dtype."""
    return jnp.mean(per_example_loss(loss, y_hat.astype(t.dtype), t))
