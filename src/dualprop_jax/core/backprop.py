"""The back-propagation gradient of the batch-mean loss: the reference every rule is held to."""

from __future__ import annotations

import functools

import jax

from dualprop_jax.core.states import Aux, batch_loss, check_batch, compute_dtype, wide
from dualprop_jax.losses import targets_as_array


@functools.partial(jax.jit, static_argnames=("net",))
def bp_grad(net, params, x: jax.Array, y: jax.Array, config) -> tuple[object, Aux]:
    """∇_θ (1/B) Σ_b ℓ(ŷ_b(θ), y_b) by ``jax.value_and_grad`` of the forward pass, and
    :class:`Aux`. ``config``: anything with ``loss`` and ``dtype`` (any rule of the library)."""
    check_batch(net, x, y)
    dtype = compute_dtype(config.dtype)

    def loss_fn(p):
        y_hat = net.forward(p, x, dtype)
        t = targets_as_array(y_hat.astype(wide(dtype)), y)
        return batch_loss(config.loss, y_hat, t), y_hat

    (loss, y_hat), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, Aux(loss, y_hat)
