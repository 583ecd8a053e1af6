"""Layered Flax NNX models and their pure view for the learning rule.

The learning rule sees a network as layer maps and one activation f:

    a_{k+1} = W_k(params_k, s_k),   s_{k+1} = f(a_{k+1}) (k < L-1),   s_L = a_L,   s_0 = x,

for maps k = 0..L-1. A map may be dense, convolutional, may start with a 2x2 max-pool and/or a
flatten of its input, and a conv map may end with a 2x2 max-pool. Any model built from maps of
this shape works with the learning rule unchanged.

Two layouts place a conv block's max-pool (:data:`LAYOUTS`); for a monotone f,
f(pool(z)) = pool(f(z)), so both compute the same network function conv → pool → f:
  ``"unpooled"`` (default): the pool sits at the *input* of the next map; a conv layer's state
    is the unpooled f(conv(s)), and the next map pools its presynaptic mean s̄.
  ``"pooled"`` (the official 2024 code): conv → pool is one map, a = pool(conv(s)); states are
    stored pooled (4x smaller), so multi-pass inference moves less data.
Forward pass, BP gradient and the β → 0 limit of the DP gradient are the same in both. At
finite β the dyad states differ: "unpooled" pools the mean, pool(α s⁺ + (1-α) s⁻), "pooled"
takes the mean of pooled states, α pool(s⁺) + (1-α) pool(s⁻); the two part where a pool
window's maximum is not the same element in s⁺ and s⁻ (near ties).

Why NNX: it is Flax's current recommendation, modules are ordinary Python objects a user can
build and inspect in a notebook, and ``nnx.split`` yields a pure parameter pytree plus a static
``GraphDef`` — exactly what pure jitted functions need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

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

LAYOUTS = ("unpooled", "pooled")
"""Where a conv block's 2x2 max-pool sits: at the next map's input, or ending the conv map."""

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

_HIDDEN_INIT = nnx.initializers.he_normal()
_OUTPUT_INIT = nnx.initializers.lecun_normal()


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


class Network(nnx.Module):
    """A layered network: ``layers`` are the maps W_0..W_{L-1}; f follows all but the last.

    ``input_shape`` is the shape of one input example (e.g. ``(28, 28, 1)``; ``(d_0,)`` for an
    MLP), or None where unknown. The builders (:func:`mlp`, :func:`conv_net`, :func:`cnn`,
    :func:`vgg`...) set it; what needs the spatial shape of each map's input (the damped rule's
    power iteration through conv maps) reads it from the :class:`LayeredNet` of :func:`split`.
    """

    def __init__(
        self,
        layers: Sequence[nnx.Module],
        activation: str = "relu",
        input_shape: Sequence[int] | None = None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is unknown; choose one of {tuple(ACTIVATIONS)}."
            )
        if not layers:
            raise ValueError("a Network needs at least one layer map.")
        self.layers = nnx.List(list(layers))
        self.activation = activation
        self.input_shape = _shape_or_none(input_shape)

    def __call__(self, x: jax.Array) -> jax.Array:
        f = ACTIVATIONS[self.activation]
        s = x
        for k, layer in enumerate(self.layers):
            a = layer(s)
            s = a if k == len(self.layers) - 1 else f(a)
        return s


def _shape_or_none(shape: Sequence[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be positive sizes of one example, got {shape}.")
    return shape


@dataclasses.dataclass(frozen=True)
class LayeredNet:
    """Static, hashable view of a :class:`Network` for pure jitted functions.

    ``params`` (a pure dict ``{"layers": {k: {...}}}``, from :func:`split`) is passed
    separately; ``apply_map(k, params_k, s)`` computes a_{k+1} = W_k(params_k, s).
    ``input_shape``: the shape of one input example, or None where the network was built
    without it (only the conv maps' power iteration needs it).
    """

    graphdefs: tuple
    activation: str
    input_shape: tuple[int, ...] | None = None

    @property
    def num_maps(self) -> int:
        """L, the number of layer maps (the output layer is layer L)."""
        return len(self.graphdefs)

    def f(self, a: jax.Array) -> jax.Array:
        """The hidden activation f."""
        return ACTIVATIONS[self.activation](a)

    @staticmethod
    def layer_params(params, k: int):
        """params_k, the parameters of map k."""
        return params["layers"][k]

    def apply_map(self, k: int, params_k, s: jax.Array, dtype=None) -> jax.Array:
        """a_{k+1} = W_k(params_k, s), computed in ``dtype`` when given."""
        if dtype is not None:
            params_k = jax.tree.map(lambda t: t.astype(dtype), params_k)
            s = s.astype(dtype)
        return nnx.merge(self.graphdefs[k], params_k)(s)

    def apply_core(self, k: int, params_k, s: jax.Array, dtype=None) -> jax.Array:
        """Map k without its max-pools, ``layer.core(s)`` (the map itself where the layer has
        no ``core`` method): an affine map, whose linear part bounds map k's Lipschitz
        constant (max-pooling is 1-Lipschitz). ``s`` is the core's input (pooled where the map
        pools its input)."""
        if dtype is not None:
            params_k = jax.tree.map(lambda t: t.astype(dtype), params_k)
            s = s.astype(dtype)
        layer = nnx.merge(self.graphdefs[k], params_k)
        return layer.core(s) if hasattr(layer, "core") else layer(s)

    def map_input_shapes(self, params) -> tuple[tuple[int, ...], ...]:
        """The per-example input shape of each map's core (:meth:`apply_core`), k = 0..L-1.

        A dense map's core reads ``(in_features,)`` (its flatten is an isometry); any other map
        reads layer k's state, 2x2-pooled where the map pools its input. The shapes follow
        ``input_shape`` through the maps (by ``jax.eval_shape``), so a conv map needs it:
        ``ValueError`` where it is None.
        """
        shapes: list[tuple[int, ...]] = []
        shape = self.input_shape  # of layer k's state, one example; None where unknown
        for k, graphdef in enumerate(self.graphdefs):
            params_k = self.layer_params(params, k)
            layer = nnx.merge(graphdef, params_k)
            if isinstance(layer, nnx.Linear):
                shapes.append((int(layer.in_features),))
            elif shape is None:
                raise ValueError(
                    f"map {k} ({type(layer).__name__}) needs the spatial shape of its input, but "
                    "the network's input_shape is unknown: build the model with the dualprop_jax "
                    "builders (mlp, conv_net, cnn, vgg...), or pass input_shape=(H, W, C) of one "
                    "example to Network(...) before split (or to LayeredNet(...))."
                )
            elif getattr(layer, "pool_input", False):
                h, w, *rest = shape
                shapes.append((h // 2, w // 2, *rest))
            else:
                shapes.append(shape)
            if shape is None:  # a dense map: its output is flat
                shape = (int(layer.out_features),)
            else:
                abstract = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype), params_k)
                s_k = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
                out = jax.eval_shape(lambda p, s, k=k: self.apply_map(k, p, s), abstract, s_k)
                shape = tuple(out.shape[1:])
        return tuple(shapes)

    def forward(self, params, x: jax.Array, dtype=None) -> jax.Array:
        """The network output ŷ = a_L."""
        s = x
        for k in range(self.num_maps):
            a = self.apply_map(k, self.layer_params(params, k), s, dtype)
            s = a if k == self.num_maps - 1 else self.f(a)
        return s


def split(model: Network) -> tuple[LayeredNet, dict]:
    """Split a :class:`Network` into its static view and a pure parameter dict."""
    if not isinstance(model, Network):
        raise TypeError(f"split expects a dualprop_jax Network, got {type(model).__name__}.")
    graphdefs = []
    for k, layer in enumerate(model.layers):
        _, _, *rest = nnx.split(layer, nnx.Param, ...)
        if any(len(jax.tree.leaves(r)) for r in rest):
            raise ValueError(
                f"layer {k} ({type(layer).__name__}) holds non-parameter state; the learning rule "
                "needs stateless layer maps (no BatchNorm statistics, no dropout RNG)."
            )
        graphdefs.append(nnx.split(layer, nnx.Param)[0])
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return LayeredNet(tuple(graphdefs), model.activation, model.input_shape), params


def merge(net: LayeredNet, params) -> Network:
    """Rebuild a :class:`Network` module holding ``params`` (e.g. after training)."""
    layers = [nnx.merge(g, LayeredNet.layer_params(params, k)) for k, g in enumerate(net.graphdefs)]
    return Network(layers, net.activation, net.input_shape)


def kernel_initializer(k: int, num_maps: int):
    """The builders' kernel initializer of map k: He normal for hidden maps (ReLU), LeCun
    normal for the output map k = L-1 (KP-DP draws its feedback weights B_k the same way)."""
    return _OUTPUT_INIT if k == num_maps - 1 else _HIDDEN_INIT


def mlp(
    widths: Sequence[int], *, activation: str = "relu", rngs: nnx.Rngs, param_dtype=jnp.float32
) -> Network:
    """MLP with layer widths ``widths`` = (d_0, d_1, ..., d_L); inputs are flattened."""
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(
            f"mlp widths must be >= 2 positive sizes (input ... output), got {widths}."
        )
    n = len(widths) - 1
    layers = [
        Dense(
            widths[k],
            widths[k + 1],
            flatten=(k == 0),
            rngs=rngs,
            param_dtype=param_dtype,
            kernel_init=kernel_initializer(k, n),
        )
        for k in range(n)
    ]
    return Network(layers, activation, input_shape=(widths[0],))


def conv_net(
    input_shape: Sequence[int],
    blocks: Sequence[int | str],
    dense: Sequence[int],
    num_classes: int,
    *,
    kernel_size: int = 3,
    activation: str = "relu",
    layout: str = "unpooled",
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
) -> Network:
    """Conv blocks then dense layers, defined by parameters (VGG-style).

    ``blocks`` lists conv output channels, with ``"M"`` for a 2x2 max-pool after the previous
    conv; ``dense`` lists the hidden dense widths before the ``num_classes`` output.
    ``layout`` (:data:`LAYOUTS`): ``"unpooled"`` pools at the next map's input, ``"pooled"``
    makes conv → pool one map (the official 2024 code); the module docstring compares them.
    Both give the same parameters for the same ``rngs``.
    """
    if len(input_shape) != 3:
        raise ValueError(
            f"conv_net needs an image input shape (H, W, C), got {tuple(input_shape)}."
        )
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; choose one of {LAYOUTS}.")
    pooled = layout == "pooled"
    h, w, c = (int(d) for d in input_shape)
    specs: list[int] = []  # conv widths
    pools: list[bool] = []  # pool after conv i
    for b in blocks:
        if b == "M":
            if not specs or pools[-1]:
                raise ValueError(f"'M' must follow a conv width in blocks={tuple(blocks)}.")
            pools[-1] = True
        elif isinstance(b, int) and b > 0:
            specs.append(b)
            pools.append(False)
        else:
            raise ValueError(f"blocks entries must be positive ints or 'M', got {b!r}.")
    widths = [*list(dense), num_classes]
    n = len(specs) + len(widths)
    layers: list[nnx.Module] = []
    pool_next = False
    for i, out in enumerate(specs):
        layers.append(
            Conv(
                c,
                out,
                kernel_size=kernel_size,
                pool_input=pool_next and not pooled,
                pool_output=pools[i] and pooled,
                rngs=rngs,
                param_dtype=param_dtype,
                kernel_init=kernel_initializer(i, n),
            )
        )
        if pool_next:
            h, w = h // 2, w // 2
        c, pool_next = out, pools[i]
    if pool_next:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"too many max-pools for input {tuple(input_shape)}: spatial size hits 0.")
    d_in = h * w * c
    for j, out in enumerate(widths):
        k = len(specs) + j
        layers.append(
            Dense(
                d_in,
                out,
                flatten=(j == 0 and bool(specs)),
                pool_input=(j == 0 and pool_next and not pooled),
                rngs=rngs,
                param_dtype=param_dtype,
                kernel_init=kernel_initializer(k, n),
            )
        )
        d_in = out
    return Network(layers, activation, input_shape=tuple(int(d) for d in input_shape))


def cnn(
    input_shape: Sequence[int] = (28, 28, 1),
    channels: Sequence[int] = (32, 64),
    pool: bool = True,
    dense: Sequence[int] = (512,),
    num_classes: int = 10,
    **kwargs,
) -> Network:
    """Small CNN: one conv (+ 2x2 max-pool when ``pool``) block per entry of ``channels``."""
    blocks: list[int | str] = []
    for ch in channels:
        blocks += [ch, "M"] if pool else [ch]
    return conv_net(input_shape, blocks, dense, num_classes, **kwargs)


def vgg(
    blocks: Sequence[int | str],
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    dense: Sequence[int] = (4096, 4096),
    **kwargs,
) -> Network:
    """VGG-style network (no BatchNorm) from a block spec such as :data:`VGG16`."""
    return conv_net(input_shape, blocks, dense, num_classes, **kwargs)


def vgg11(**kwargs) -> Network:
    """VGG11: 8 conv layers (64/128/256x2/512x2/512x2, pools after each stage), 4096-4096 dense."""
    return vgg(VGG11, **kwargs)


def vgg16(**kwargs) -> Network:
    """VGG16: 13 conv layers (64x2/128x2/256x3/512x3/512x3, a pool per stage), 4096-4096 dense."""
    return vgg(VGG16, **kwargs)
