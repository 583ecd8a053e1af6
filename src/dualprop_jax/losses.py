"""Output losses ℓ(ŷ, y) per example and their gradients g = ∇_ŷ ℓ, which nudge the output dyad.

Targets are integer labels of shape (B,) (one-hot encoded internally) or float targets of the
output's shape (B, C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def targets_as_array(y_hat: jax.Array, y: jax.Array) -> jax.Array:
    """Return targets t with the shape of ŷ: one-hot for integer labels, ``y`` itself otherwise.

    Raises ``ValueError`` when the targets do not fit the model output.
    """
    batch, num_out = y_hat.shape[0], y_hat.shape[-1]
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.shape != (batch,):
            raise ValueError(
                f"integer targets must be labels of shape (batch,) = ({batch},), got shape "
                f"{y.shape}; pass class indices, or float targets of shape {y_hat.shape}."
            )
        return jax.nn.one_hot(y, num_out, dtype=y_hat.dtype)
    if y.shape != y_hat.shape:
        raise ValueError(
            f"targets of shape {y.shape} do not fit the model output of shape {y_hat.shape}; "
            f"pass integer labels of shape ({batch},) or float targets of shape {y_hat.shape}."
        )
    return y.astype(y_hat.dtype)


def per_example_loss(loss: str, y_hat: jax.Array, t: jax.Array) -> jax.Array:
    """ℓ per example: softmax CE  logsumexp(ŷ) - ⟨t, ŷ⟩,  or squared error  ½‖ŷ - t‖²."""
    if loss == "softmax_ce":
        return jax.nn.logsumexp(y_hat, axis=-1) - jnp.sum(t * y_hat, axis=-1)
    if loss == "squared_error":
        return 0.5 * jnp.sum((y_hat - t) ** 2, axis=-1)
    raise ValueError(f"unknown loss {loss!r}")


def loss_gradient(loss: str, y_hat: jax.Array, t: jax.Array) -> jax.Array:
    """g = ∇_ŷ ℓ per example: softmax(ŷ) - t for softmax CE, ŷ - t for squared error."""
    if loss == "softmax_ce":
        return jax.nn.softmax(y_hat, axis=-1) - t
    if loss == "squared_error":
        return y_hat - t
    raise ValueError(f"unknown loss {loss!r}")


def target_labels(y: jax.Array) -> jax.Array:
    """The class index of each target: ``y`` itself for integer labels of shape (B,), the
    argmax over the last axis for one-hot or soft targets of shape (B, C)."""
    if jnp.issubdtype(y.dtype, jnp.integer) and y.ndim == 1:
        return y
    return jnp.argmax(y, axis=-1)


def num_correct(y_hat: jax.Array, y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """How many predictions argmax ŷ equal the targets' classes (:func:`target_labels`),
    counting only where ``mask`` is True."""
    hits = jnp.argmax(y_hat, axis=-1) == target_labels(y)
    return jnp.sum(hits if mask is None else hits & mask)
