"""Transformer layer maps: patch and token embeddings, pre-LN attention and dense maps, a head.

Each is an edge map W_θ(s) of one node's state s, as the dense and conv maps are, so the
learning rules treat it alike: the feedback into the source node is the vjp of the whole map at
the source state, fb_i = J_θ(s_i)ᵀ δ_j, and the Hebbian gradient is -(1/β) ∂_θ⟨δ_j, W_θ(s̄_i)⟩,
which reads only the two ends of the edge. Everything a map computes between its source and its
target (LayerNorm, the attention's queries, keys, values and softmax, a mean over tokens) is
"inside the edge": it has no dyad of its own. The dyads are the nodes, tokens × width states:
in a pre-LN transformer block the residual stream nodes are identity sum nodes and the MLP's
hidden layer is a dyadic node with GELU (:func:`~dualprop_jax.models.zoo.vit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class PatchEmbed(nnx.Module):
    """a = W · patches(x) + b + P: the image cut into non-overlapping p x p patches, each
    flattened and mapped to ``width`` features, plus a learned positional embedding P (one
    vector per patch). Input (B, H, W, C) → output (B, (H/p)(W/p), width). All of it is inside
    the edge from the input node."""

    def __init__(
        self, input_shape: Sequence[int], patch: int, width: int, *, rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):  # fmt: skip
        h, w, c = (int(d) for d in input_shape)
        if h % patch or w % patch:
            raise ValueError(
                f"patch={patch} does not divide the input's {h}x{w} pixels; choose a divisor."
            )
        self.patch = int(patch)
        self.tokens = (h // patch) * (w // patch)
        self.proj = nnx.Linear(patch * patch * c, width, rngs=rngs, param_dtype=param_dtype)
        init = nnx.initializers.normal(0.02)
        self.position = nnx.Param(init(rngs.params(), (self.tokens, width), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        p = self.patch
        patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, self.tokens, p * p * c)
        return self.proj(patches) + self.position[...].astype(patches.dtype)


class TokenEmbed(nnx.Module):
    """a = E[x] + P: each integer token id of a sequence looked up in a ``vocab`` × ``width``
    table, plus a learned positional embedding P (one vector per position, ``length`` of them).
    Input (B, T) int → output (B, T, width). The input node holds the integer ids; the lookup
    is inside the edge (its vjp reaches the table, not the ids)."""

    reads_tokens = True  # the network's shape check probes its input as int32 ids

    def __init__(
        self, vocab: int, length: int, width: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32
    ):
        init = nnx.initializers.normal(0.02)
        self.table = nnx.Param(init(rngs.params(), (int(vocab), width), param_dtype))
        self.position = nnx.Param(init(rngs.params(), (int(length), width), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"TokenEmbed reads integer token ids, got {x.dtype} inputs.")
        table = self.table[...]  # in the compute dtype the rule gave the parameters
        return jnp.take(table, x, axis=0) + self.position[: x.shape[-1]].astype(table.dtype)


def attend(query, key, value, mask=None, *, dropout_rate: float = 0.0, **unused) -> jax.Array:
    """Multi-head scaled dot-product attention, o_qh = Σ_k softmax_k(⟨q_qh, k_kh⟩ / √d) v_kh,
    the logits of masked-out pairs (``mask`` False) at a large negative number. Inputs
    (batch, tokens, heads, d); the attention function of :class:`PreLNAttention`.

    ``jax.nn.dot_product_attention`` (what nnx calls by default) computes the softmax in
    float32 whatever its inputs; that is kept for float32 and narrower inputs. Float64 inputs
    get the same operations with the softmax in float64, so a float64 gradient check has no
    float32 floor under it.
    """
    if dropout_rate:
        raise ValueError("attend has no attention dropout; use dropout_rate=0.")
    mask = None if mask is None else mask.astype(bool)
    if jnp.promote_types(query.dtype, jnp.float32) == jnp.float32:
        return jax.nn.dot_product_attention(query, key, value, mask=mask)
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key) * query.shape[-1] ** -0.5
    if mask is not None:
        logits = jnp.where(mask, logits, -0.7 * float(jnp.finfo(logits.dtype).max))
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("...hqk,...khd->...qhd", probs, value)


class PreLNAttention(nnx.Module):
    """a = MHA(LN(s)): multi-head self-attention of the LayerNorm of a tokens × width state,
    optionally causal (token t attends to tokens ≤ t). LayerNorm, queries, keys, values, the
    softmax and the output projection are all inside the edge; the target is a residual
    stream node, whose other in-edge is the identity."""

    def __init__(
        self, width: int, heads: int, *, causal: bool = False, rngs: nnx.Rngs,
        param_dtype=jnp.float32,
    ):  # fmt: skip
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}.")
        self.causal = bool(causal)
        self.norm = nnx.LayerNorm(width, rngs=rngs, param_dtype=param_dtype)
        self.attention = nnx.MultiHeadAttention(
            heads, width, qkv_features=width, out_features=width, decode=False, rngs=rngs,
            param_dtype=param_dtype, attention_fn=attend,
        )  # fmt: skip

    def __call__(self, s: jax.Array) -> jax.Array:
        h = self.norm(s)
        mask = nnx.make_causal_mask(jnp.ones(s.shape[:-1])) if self.causal else None
        return self.attention(h, mask=mask)


class PreLNDense(nnx.Module):
    """a = W LN(s) + b, token by token: the first map of a pre-LN MLP (its target the MLP's
    hidden node, a dyad with GELU). The LayerNorm is inside the edge."""

    def __init__(
        self, in_features: int, out_features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32
    ):
        self.norm = nnx.LayerNorm(in_features, rngs=rngs, param_dtype=param_dtype)
        self.dense = nnx.Linear(in_features, out_features, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, s: jax.Array) -> jax.Array:
        return self.dense(self.norm(s))


class TokenDense(nnx.Module):
    """a = W s + b applied to each token of a tokens × width state: the MLP's second map, from
    its hidden node back to the residual stream."""

    def __init__(
        self, in_features: int, out_features: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32
    ):
        self.dense = nnx.Linear(in_features, out_features, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, s: jax.Array) -> jax.Array:
        return self.dense(s)


class MeanPoolHead(nnx.Module):
    """a = W mean_t LN(s)_t + b: the classifier of a ViT, the LayerNorm and the mean over tokens
    inside the edge into the output node."""

    def __init__(self, width: int, num_classes: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.norm = nnx.LayerNorm(width, rngs=rngs, param_dtype=param_dtype)
        self.dense = nnx.Linear(width, num_classes, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, s: jax.Array) -> jax.Array:
        return self.dense(jnp.mean(self.norm(s), axis=-2))


__all__ = [
    "MeanPoolHead",
    "PatchEmbed",
    "PreLNAttention",
    "PreLNDense",
    "TokenDense",
    "TokenEmbed",
    "attend",
]
