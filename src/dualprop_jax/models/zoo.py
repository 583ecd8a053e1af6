"""The model zoo: builders of MLPs, VGG-style conv nets and residual networks (no BatchNorm).

Every builder returns a :class:`~dualprop_jax.models.net.Network` with its ``input_shape`` set.
Architecture variants are parameters (widths, block specs, layouts), not copied classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from dualprop_jax.models.attention import (
    MeanPoolHead,
    PatchEmbed,
    PreLNAttention,
    PreLNDense,
    TokenDense,
    TokenEmbed,
)
from dualprop_jax.models.graph import Graph
from dualprop_jax.models.maps import (
    HIDDEN_INIT,
    OUTPUT_INIT,
    Conv,
    Dense,
    Identity,
    fixup_initializers,
    kernel_initializer,
)
from dualprop_jax.models.net import Network

LAYOUTS = ("unpooled", "pooled")
"""Where a conv block's 2x2 max-pool sits: at the next map's input, or ending the conv map."""

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
"""VGG11's conv blocks (Simonyan & Zisserman 2015): output channels, ``"M"`` a 2x2 max-pool."""
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
"""VGG16's conv blocks, as :data:`VGG11`; the 2024 paper's CIFAR and ImageNet 32x32 model."""


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
    specs, pools = _parse_blocks(blocks)
    widths = [*list(dense), num_classes]
    n = len(specs) + len(widths)
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    pooled = layout == "pooled"
    h, w, c = (int(d) for d in input_shape)
    layers: list[nnx.Module] = []
    pool_next = False
    for i, out in enumerate(specs):
        pool_in, pool_out = pool_next and not pooled, pools[i] and pooled
        init = kernel_initializer(i, n)
        layers.append(Conv(c, out, kernel_size=kernel_size, pool_input=pool_in,
                           pool_output=pool_out, kernel_init=init, **kw))  # fmt: skip
        if pool_next:
            h, w = h // 2, w // 2
        c, pool_next = out, pools[i]
    if pool_next:
        h, w = h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"too many max-pools for input {tuple(input_shape)}: spatial size hits 0.")
    d_in = h * w * c
    for j, out in enumerate(widths):
        first = j == 0
        layers.append(Dense(d_in, out, flatten=first and bool(specs),
                            pool_input=first and pool_next and not pooled,
                            kernel_init=kernel_initializer(len(specs) + j, n), **kw))  # fmt: skip
        d_in = out
    return Network(layers, activation, input_shape=tuple(int(d) for d in input_shape))


def _parse_blocks(blocks) -> tuple[list[int], list[bool]]:
    """``(conv widths, pool after conv i)`` of a block spec such as :data:`VGG16`."""
    specs: list[int] = []
    pools: list[bool] = []
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
    return specs, pools


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


# ------------------------------------------------------------------ residual networks (DAGs)

RESNET_PRESETS: dict[str, dict] = {
    "resnet8": dict(widths=(16, 32, 64), blocks=(1, 1, 1)),
    "resnet20": dict(widths=(16, 32, 64), blocks=(3, 3, 3)),
    "resnet18": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),
}
"""The residual builders' stages: ResNet-8/20 are the CIFAR ResNets of He et al. (2016, §4.2:
6n + 2 layers, n = 1, 3, with 16/32/64 channels); ResNet-18 their ImageNet stages (64-512
channels, two blocks each) with a 3x3 stem, as usually trained on CIFAR."""


def resnet(
    widths: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (1, 1, 1),
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    *,
    stem: int | None = None,
    downsample: str = "pool_conv",
    activation: str = "relu",
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
) -> Network:
    """A residual network without BatchNorm, as a :class:`Graph` of layer maps.

    A 3x3 conv stem (``stem`` channels, default ``widths[0]``), then for each stage s the
    ``blocks[s]`` basic blocks of He et al. (2016), out = f(W₂ ⋆ f(W₁ ⋆ u) + skip(u)), with
    ``widths[s]`` channels; every stage after the first halves the spatial size in its first
    block: the skip is a 1x1 projection of the 2x2-max-pooled input, and W₁ with
    ``downsample="pool_conv"`` (default) a 3x3 conv of the pooled input, which runs at the lower
    resolution as the stride-2 conv of the original does; with ``"conv_pool"`` a conv at the
    input's resolution followed by the pool (4x its cost, and its Hebbian update needs the
    pool's argmax at s̄, one more conv than BP). Where the channels change without a pool the
    skip is a 1x1 projection alone; otherwise it is an identity edge. The head is a dense map
    of the flattened last state to ``num_classes``.
    Nodes: ``stem``, ``s{s}b{b}.h`` (after W₁) and ``s{s}b{b}`` (the block's output), all with
    f; the pre-activation of a block's output is the sum of its two in-edges.

    Initialisation is Fixup's (:func:`fixup_initializers`): zero W₂, scaled He W₁, so each
    block starts as its skip path; stem, projections and head as the chain builders
    (:func:`kernel_initializer`).
    """
    widths, blocks = _check_resnet(widths, blocks, input_shape, downsample)
    h, w, c = (int(d) for d in input_shape)
    first_init, last_init = fixup_initializers(sum(blocks))
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    stem = widths[0] if stem is None else int(stem)
    edges: list[tuple[str, str]] = [("input", "stem")]
    maps: list[nnx.Module] = [Conv(c, stem, kernel_init=HIDDEN_INIT, **kw)]
    node, c = "stem", stem
    for s, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for b in range(count):
            down = s > 0 and b == 0
            name = f"s{s}b{b}"
            edges += [(node, f"{name}.h"), (f"{name}.h", name), (node, name)]
            maps += _basic_block(c, width, down, downsample, (first_init, last_init), kw)
            if down:
                h, w = h // 2, w // 2
            node, c = name, width
    edges.append((node, "output"))
    maps.append(Dense(h * w * c, num_classes, flatten=True, kernel_init=OUTPUT_INIT, **kw))
    hidden = {v for e in edges for v in e} - {"input", "output"}
    graph = Graph.from_edges(edges, {v: activation for v in hidden})
    return Network(maps, activation, input_shape=tuple(int(d) for d in input_shape), graph=graph)


def _check_resnet(widths, blocks, input_shape, downsample) -> tuple[tuple, tuple]:
    """``(widths, blocks)`` as int tuples, or a ``ValueError`` naming what does not fit."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet needs an image input shape (H, W, C), got {tuple(input_shape)}.")
    widths, blocks = tuple(int(w) for w in widths), tuple(int(b) for b in blocks)
    if not widths or len(widths) != len(blocks) or min(widths) < 1 or min(blocks) < 1:
        raise ValueError(
            f"resnet needs one positive width and block count per stage, got widths={widths}, "
            f"blocks={blocks}."
        )
    h, w = (int(d) for d in input_shape[:2])
    if h >> (len(widths) - 1) < 1 or w >> (len(widths) - 1) < 1:
        raise ValueError(
            f"input {tuple(input_shape)} is too small for {len(widths)} stages (each after the "
            "first halves it)."
        )
    if downsample not in ("pool_conv", "conv_pool"):
        raise ValueError(
            f"downsample={downsample!r} is unknown; choose 'pool_conv' or 'conv_pool'."
        )
    return widths, blocks


def _basic_block(c: int, width: int, down: bool, downsample: str, inits, kw) -> list[nnx.Module]:
    """The three maps of a basic block (W₁, W₂, skip), built in that order: W₁ pools its input
    (``pool_conv``) or output (``conv_pool``) when the block downsamples; the skip is a 1x1
    projection (of the pooled input) where the shape changes, else the identity."""
    first_init, last_init = inits
    pool_conv, conv_pool = down and downsample == "pool_conv", down and downsample == "conv_pool"
    return [
        Conv(c, width, pool_input=pool_conv, pool_output=conv_pool, kernel_init=first_init, **kw),
        Conv(width, width, kernel_init=last_init, **kw),
        Conv(c, width, kernel_size=1, pool_input=down, kernel_init=OUTPUT_INIT, **kw)
        if down or c != width
        else Identity(),
    ]


def resnet8(**kwargs) -> Network:
    """ResNet-8 (He et al. 2016's CIFAR family, n = 1): 16/32/64 channels, one block each."""
    return resnet(**RESNET_PRESETS["resnet8"], **kwargs)


def resnet20(**kwargs) -> Network:
    """ResNet-20 (He et al. 2016's CIFAR family, n = 3): 16/32/64 channels, three blocks each."""
    return resnet(**RESNET_PRESETS["resnet20"], **kwargs)


def resnet18(**kwargs) -> Network:
    """ResNet-18-style: 64/128/256/512 channels, two basic blocks each, 3x3 stem."""
    return resnet(**RESNET_PRESETS["resnet18"], **kwargs)


# ------------------------------------------------------------------ vision transformer (a DAG)


def vit(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    *,
    patch: int = 7,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 2,
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
) -> Network:
    """A small vision transformer (pre-LN, no BatchNorm, no class token) as a :class:`Graph`.

    Nodes and edges (:mod:`~dualprop_jax.models.attention` says what is inside each edge):
    ``embed`` = PatchEmbed(x) (patches plus learned positions; tokens × ``width``); for each
    block b, ``b{b}.attn`` = u + MHA(LN(u)) with u the previous stream node,
    ``b{b}.h`` = GELU(W₁ LN(``b{b}.attn``) + b₁) (``mlp_ratio`` × ``width`` per token) and
    ``b{b}`` = ``b{b}.attn`` + W₂ ``b{b}.h`` + b₂; the output is W mean_t LN(s)_t + b of the last
    stream node. The stream nodes are identity sum nodes, the MLP hidden nodes dyads with GELU.
    """
    if len(input_shape) != 3:
        raise ValueError(f"vit needs an image input shape (H, W, C), got {tuple(input_shape)}.")
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    edges: list[tuple[str, str]] = [("input", "embed")]
    maps: list[nnx.Module] = [PatchEmbed(input_shape, patch, width, **kw)]
    activations = {"embed": "identity"}
    node = _pre_ln_blocks(edges, maps, activations, depth, width, heads, mlp_ratio, False, kw)
    edges.append((node, "output"))
    maps.append(MeanPoolHead(width, num_classes, **kw))
    graph = Graph.from_edges(edges, activations)
    return Network(maps, "gelu", input_shape=tuple(int(d) for d in input_shape), graph=graph)


def _pre_ln_blocks(edges, maps, activations, depth, width, heads, mlp_ratio, causal, kw) -> str:
    """Append ``depth`` pre-LN blocks after node ``embed`` to ``edges``, ``maps`` and
    ``activations``; return the last stream node. Block b: ``b{b}.attn`` = u + MHA(LN(u)),
    ``b{b}.h`` = GELU(W₁ LN(``b{b}.attn``) + b₁), ``b{b}`` = ``b{b}.attn`` + W₂ ``b{b}.h`` + b₂."""
    node = "embed"
    for b in range(int(depth)):
        mid, hidden, out = f"b{b}.attn", f"b{b}.h", f"b{b}"
        edges += [(node, mid), (node, mid), (mid, hidden), (mid, out), (hidden, out)]
        maps += [
            Identity(),
            PreLNAttention(width, heads, causal=causal, **kw),
            PreLNDense(width, mlp_ratio * width, **kw),
            Identity(),
            TokenDense(mlp_ratio * width, width, **kw),
        ]
        activations |= {mid: "identity", hidden: "gelu", out: "identity"}
        node = out
    return node


def causal_lm(
    length: int = 64,
    vocab: int = 256,
    *,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 4,
    rngs: nnx.Rngs,
    param_dtype=jnp.float32,
) -> Network:
    """A small causal transformer language model (pre-LN, GPT-style) as a :class:`Graph`: it
    reads ``length`` token ids (integers in 0..``vocab``-1; bytes by default) and gives the
    next-token logits at every position, output (B, ``length``, ``vocab``).

    Nodes and edges: the input node holds the ids; ``embed`` = E[x] + P (token table plus
    learned positions, :class:`~dualprop_jax.models.attention.TokenEmbed`); the blocks as in
    :func:`vit` but with causal attention (token t attends to tokens ≤ t); the output is
    W LN(s)_t + b of the last stream node at each position. Train it with labels (B, T), the
    ids shifted by one: each example's loss is the sum of its positions' cross-entropies
    (:mod:`dualprop_jax.losses`).
    """
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    edges: list[tuple[str, str]] = [("input", "embed")]
    maps: list[nnx.Module] = [TokenEmbed(vocab, length, width, **kw)]
    activations = {"embed": "identity"}
    node = _pre_ln_blocks(edges, maps, activations, depth, width, heads, mlp_ratio, True, kw)
    edges.append((node, "output"))
    maps.append(PreLNDense(width, vocab, **kw))
    graph = Graph.from_edges(edges, activations)
    return Network(maps, "gelu", input_shape=(int(length),), graph=graph)
