"""Layer maps: the edges of a network (dense, conv, optional 2x2 max-pools, identity) and their
initializers, as Flax NNX modules; and the activations f a node may apply.

A map W_k(params_k, s) sends a node's state to a contribution to another node's pre-activation.
Dense: a = W flatten(s) + b; Conv: a = W ⋆ s + b ('SAME'); either may max-pool its input
(``pool_input``), and a conv may pool its output (``pool_output``). ``core`` is the map without
its max-pools, an affine map whose linear part bounds the map's Lipschitz constant.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "identity": lambda a: a,
}

HIDDEN_INIT = nnx.initializers.he_normal()
OUTPUT_INIT = nnx.initializers.lecun_normal()


def max_pool_2x2(s: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 over the spatial axes of an NHWC batch."""
    return jax.lax.reduce_window(s, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class Dense(nnx.Linear):
    """Dense map a = W s + b, optionally after a 2x2 max-pool and/or a flatten of s."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        flatten: bool = False,
        pool_input: bool = False,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        super().__init__(in_features, out_features, rngs=rngs, **kwargs)
        self.flatten = flatten
        self.pool_input = pool_input

    def __call__(self, s: jax.Array) -> jax.Array:
        return self.core(max_pool_2x2(s) if self.pool_input else s)

    def core(self, s: jax.Array) -> jax.Array:
        """The map without its max-pool: a = W flatten(s) + b (the flatten where set).

        Max-pooling is 1-Lipschitz, so the spectral norm of the core's linear part bounds the
        Lipschitz constant of the whole map (the damped rule's γ_k).
        """
        if self.flatten:
            s = s.reshape(s.shape[0], -1)
        return super().__call__(s)


class Conv(nnx.Conv):
    """Convolution map a = W ⋆ s + b ('SAME' padding), optionally after a 2x2 max-pool of s
    (``pool_input``) or followed by one, a = pool(W ⋆ s + b) (``pool_output``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 3,
        pool_input: bool = False,
        pool_output: bool = False,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        super().__init__(
            in_features,
            out_features,
            kernel_size=(kernel_size, kernel_size),
            padding="SAME",
            rngs=rngs,
            **kwargs,
        )
        self.pool_input = pool_input
        self.pool_output = pool_output

    def __call__(self, s: jax.Array) -> jax.Array:
        a = self.core(max_pool_2x2(s) if self.pool_input else s)
        return max_pool_2x2(a) if self.pool_output else a

    def core(self, s: jax.Array) -> jax.Array:
        """The map without its max-pools (``pool_input``, ``pool_output``): a = W ⋆ s + b.

        Its input is the (pooled, where ``pool_input``) state the convolution reads.
        """
        return super().__call__(s)


class Identity(nnx.Module):
    """The identity map a = s: a skip connection, with no parameters."""

    def __call__(self, s: jax.Array) -> jax.Array:
        return s



def kernel_initializer(k: int, num_maps: int):
    """The builders' kernel initializer of map k: He normal for hidden maps (ReLU), LeCun
    normal for the output map k = L-1 (KP-DP draws its feedback weights B_k the same way)."""
    return OUTPUT_INIT if k == num_maps - 1 else HIDDEN_INIT


def fixup_initializers(num_branches: int):
    """Fixup initialisation (Zhang, Dauphin & Ma, "Fixup Initialization: Residual Learning
    Without Normalization", ICLR 2019) for residual branches of m = 2 convolutions: the first
    He normal scaled by num_branches^(-1/(2m-2)) = num_branches^(-1/2), the last zero, so that
    every block starts as its skip connection and no normalisation layer is needed (Fixup's
    scalar biases and multipliers are left out: they are not layer maps). Returns
    ``(first_init, last_init)``."""
    scale = 2.0 / float(num_branches)  # He's variance 2/fan_in, times (num_branches^(-1/2))²
    first = nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
    return first, nnx.initializers.zeros_init()
