"""Output losses ℓ(ŷ, y) per example and their gradients g = ∇_ŷ ℓ, which nudge the output dyad.

Targets are integer labels of shape (B,) (one-hot encoded internally) or float targets of the
output's shape (B, C). A network whose output has positions, (B, T, C) as a language model's
next-token logits, takes labels (B, T) (or targets (B, T, C)); an example's loss is then the
sum over its positions, ℓ_b = Σ_t ℓ(ŷ_bt, y_bt), so that the batch mean (1/B) Σ_b ℓ_b that
back-propagation differentiates is the loss whose gradient the rules' Hebbian 1/B gives, and
the output nudge g_bt = ∇_ŷ_bt ℓ_b is each position's own.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def targets_as_array(y_hat: jax.Array, y: jax.Array) -> jax.Array:
    """Return targets t with the shape of ŷ: one-hot for integer labels, ``y`` itself otherwise.

    Raises ``ValueError`` when the targets do not fit the model output.
    """
    labels, num_out = tuple(y_hat.shape[:-1]), y_hat.shape[-1]
    axes = "(batch,)" if len(labels) == 1 else "(batch, *positions)"
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.shape != labels:
            raise ValueError(
                f"integer targets must be labels of shape {axes} = {labels}, got shape "
                f"{y.shape}; pass class indices, or float targets of shape {y_hat.shape}."
            )
        return jax.nn.one_hot(y, num_out, dtype=y_hat.dtype)
    if y.shape != y_hat.shape:
        raise ValueError(
            f"targets of shape {y.shape} do not fit the model output of shape {y_hat.shape}; "
            f"pass integer labels of shape {axes} = {labels} or float targets of shape "
            f"{y_hat.shape}."
        )
    return y.astype(y_hat.dtype)


def per_example_loss(loss: str, y_hat: jax.Array, t: jax.Array) -> jax.Array:
    """ℓ per example, shape (B,): softmax CE  logsumexp(ŷ) - ⟨t, ŷ⟩,  or squared error
    ½‖ŷ - t‖², summed over the positions of an output (B, T, C)."""
    if loss == "softmax_ce":
        each = jax.nn.logsumexp(y_hat, axis=-1) - jnp.sum(t * y_hat, axis=-1)
    elif loss == "squared_error":
        each = 0.5 * jnp.sum((y_hat - t) ** 2, axis=-1)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return jnp.sum(each, axis=tuple(range(1, each.ndim))) if each.ndim > 1 else each


def loss_gradient(loss: str, y_hat: jax.Array, t: jax.Array) -> jax.Array:
    """g = ∇_ŷ ℓ per example: softmax(ŷ) - t for softmax CE, ŷ - t for squared error."""
    if loss == "softmax_ce":
        return jax.nn.softmax(y_hat, axis=-1) - t
    if loss == "squared_error":
        return y_hat - t
    raise ValueError(f"unknown loss {loss!r}")


def target_labels(y: jax.Array) -> jax.Array:
    """The class index of each target: ``y`` itself for integer labels ((B,), or (B, T) per
    position), the argmax over the last axis for one-hot or soft targets (B, C) / (B, T, C)."""
    if jnp.issubdtype(y.dtype, jnp.integer):
        return y
    return jnp.argmax(y, axis=-1)


def labels_per_example(y) -> int:
    """How many predictions one example's targets score: 1 for a classifier's label (B,) or
    target (B, C); T for a sequence's labels (B, T) or targets (B, T, C). Accuracy is the
    number correct over (examples × this)."""
    axes = y.shape[1:] if jnp.issubdtype(y.dtype, jnp.integer) else y.shape[1:-1]
    return int(math.prod(axes))


def num_correct(y_hat: jax.Array, y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """How many predictions argmax ŷ equal the targets' classes (:func:`target_labels`), over
    every position of every example, counting only examples where ``mask`` (B,) is True."""
    hits = jnp.argmax(y_hat, axis=-1) == target_labels(y)
    if mask is not None:
        hits = hits & mask.reshape(mask.shape + (1,) * (hits.ndim - 1))
    return jnp.sum(hits)
