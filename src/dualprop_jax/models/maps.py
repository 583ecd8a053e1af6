"""Layer maps: the edges of a network (dense, conv, optional 2x2 max-pools, identity) and their
initializers, as Flax NNX modules; and the activations f a node may apply.

A map W_k(params_k, s) sends a node's state to a contribution to another node's pre-activation.
Dense: a = W flatten(s) + b; Conv: a = W ⋆ s + b ('SAME'); either may max-pool its input
(``pool_input``), and a conv may pool its output (``pool_output``). ``core`` is the map without
its max-pools, an affine map whose linear part bounds the map's Lipschitz constant.

On CPU a conv map's call runs :func:`conv_same`, whose gradients are convolutions in XLA:CPU's
canonical form. XLA:CPU rewrites other convolutions (JAX's input and weight gradients) into that
form only in a program's entry computation, so inside a ``lax`` loop (the device feed's chunk of
steps, a relaxation) they would run on its naive loop nest, 6-40x slower.
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
    "gelu": jax.nn.gelu,
    "identity": lambda a: a,
}
"""The hidden nodes' activations f_j, by name (a net's ``activation`` and a graph's nodes)."""

HIDDEN_INIT = nnx.initializers.he_normal()
"""The kernel initialiser of maps into hidden nodes: He normal (for ReLU)."""
OUTPUT_INIT = nnx.initializers.lecun_normal()
"""The kernel initialiser of the map into the output: LeCun normal."""


def max_pool_2x2(s: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2 over the spatial axes of an NHWC batch."""
    return jax.lax.reduce_window(s, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


CANONICAL = ("NHWC", "HWIO", "NHWC")
"""The dimension numbers XLA:CPU runs on its fast (Eigen) convolution: input NHWC, kernel HWIO,
output NHWC."""


def _conv_same(x: jax.Array, w: jax.Array, p: int | None = None) -> jax.Array:
    """y = w ⋆ x, stride 1, NHWC/HWIO, padded by p on each side (default (k-1)/2 for a
    k x k kernel: 'SAME' for odd k)."""
    p = (w.shape[0] - 1) // 2 if p is None else p
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=CANONICAL)


@jax.custom_vjp
def canonical_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """y = w ⋆ x (stride 1, 'SAME', odd square kernel, x NHWC, w HWIO) whose vjp runs only
    canonical convolutions (:data:`CANONICAL`), with the transposes written out:

    * ∂x = rot180(w)ᵀ ⋆ ḡ: ḡ (N,H,W,O) convolved with w reversed in space and its I/O axes
      swapped, (k,k,O,I);
    * ∂w[i,j,c,o] = Σ_{n,h,w} x_pad[n,h+i,w+j,c] ḡ[n,h,w,o]: x as (C,H,W,N), a batch of C
      images with N features, convolved with ḡ as an (H,W,N,O) kernel, giving (C,k,k,O),
      transposed to (k,k,C,O).

    The same numbers as JAX's own transpose rules (which XLA:CPU canonicalises the same way
    outside loops); forward-mode (jvp) is not defined, so :meth:`Conv.core` keeps ``lax``.
    """
    return _conv_same(x, w)


def _canonical_fwd(x, w):
    return _conv_same(x, w), (x, w)


def _canonical_bwd(residuals, g):
    x, w = residuals
    w_flipped = jnp.transpose(jax.lax.rev(w, (0, 1)), (0, 1, 3, 2))
    dx = _conv_same(g, w_flipped).astype(x.dtype)
    p = (w.shape[0] - 1) // 2
    dw = _conv_same(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), p)
    return dx, jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


canonical_conv.defvjp(_canonical_fwd, _canonical_bwd)


def conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """y = w ⋆ x, stride 1, 'SAME' padding, odd square kernel, NHWC/HWIO: on CPU
    :func:`canonical_conv`, elsewhere ``lax.conv_general_dilated`` (GPU and TPU compilers
    place convolution layouts themselves, loops included)."""
    if jax.default_backend() == "cpu":
        return canonical_conv(x, w)
    return _conv_same(x, w)


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


_GENERAL_CONV = {
    "strides",
    "input_dilation",
    "kernel_dilation",
    "feature_group_count",
    "mask",
    "precision",
    "preferred_element_type",
}
"""nnx.Conv options under which a :class:`Conv` call keeps nnx.Conv's own ``lax`` call."""


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
        # stride 1, no dilation, no groups, no mask: the call may run conv_same
        self.same = kernel_size % 2 == 1 and not set(kwargs) & _GENERAL_CONV

    def __call__(self, s: jax.Array) -> jax.Array:
        s = max_pool_2x2(s) if self.pool_input else s
        a = self._affine(s) if self.same else self.core(s)
        return max_pool_2x2(a) if self.pool_output else a

    def _affine(self, s: jax.Array) -> jax.Array:
        """a = W ⋆ s + b through :func:`conv_same`: nnx.Conv's call for a 4-D ``s``."""
        if s.ndim != 4:
            return self.core(s)
        bias = self.bias[...] if self.bias is not None else None
        s, kernel, bias = self.promote_dtype((s, self.kernel[...], bias), dtype=self.dtype)
        a = conv_same(s, kernel)
        return a if bias is None else a + bias

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
