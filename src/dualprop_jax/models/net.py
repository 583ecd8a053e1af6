"""The Network module (Flax NNX) and its static view for the learning rules, LayeredNet.

The learning rule sees a network as layer maps and one activation f:

    a_{k+1} = W_k(params_k, s_k),   s_{k+1} = f(a_{k+1}) (k < L-1),   s_L = a_L,   s_0 = x,

for maps k = 0..L-1. A map may be dense, convolutional, may start with a 2x2 max-pool and/or a
flatten of its input, and a conv map may end with a 2x2 max-pool. Any model built from maps of
this shape works with the learning rule unchanged.

Two layouts place a conv block's max-pool (:data:`LAYOUTS`); for a monotone f,
f(pool(z)) = pool(f(z)), so both compute the same network function conv → pool → f::

  ``"unpooled"`` (default): the pool sits at the *input* of the next map; a conv layer's state
    is the unpooled f(conv(s)), and the next map pools its presynaptic mean s̄.
  ``"pooled"`` (the official 2024 code): conv → pool is one map, a = pool(conv(s)); states are
    stored pooled (4x smaller), so multi-pass inference moves less data.

Forward pass, BP gradient and the β → 0 limit of the DP gradient are the same in both. At
finite β the dyad states differ: "unpooled" pools the mean, pool(α s⁺ + (1-α) s⁻), "pooled"
takes the mean of pooled states, α pool(s⁺) + (1-α) pool(s⁻); the two part where a pool
window's maximum is not the same element in s⁺ and s⁻ (near ties).

Beyond chains (:class:`Graph`): nodes j = 0..N in topological order (0 the input, N the
output) carry states and an activation f_j (ReLU, or identity for a sum node); edges k = (i, j)
carry the layer maps. A node's pre-activation is the sum over its in-edges,

    a_j = Σ_{k=(i,j)} W_k(params_k, s_i),   s_j = f_j(a_j) (0 < j < N),   s_N = a_N,

so residual networks (:func:`resnet`) are graphs whose skip edges are identities or 1x1
projections. A chain is the graph with edges k = (k, k+1); ``graph=None`` means that chain.

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

from dualprop_jax.models.graph import Graph, edge_sum, propagate
from dualprop_jax.models.maps import ACTIVATIONS


class Network(nnx.Module):
    """A network of layer maps: a chain (``graph=None``: ``layers`` are the maps W_0..W_{L-1},
    f follows all but the last) or a DAG (``graph``: ``layers[k]`` is the map of edge
    ``graph.edges[k]``, node j applies ``graph.activations[j]``; see :class:`Graph`).

    ``input_shape`` is the shape of one input example (e.g. ``(28, 28, 1)``; ``(d_0,)`` for an
    MLP), or None where unknown. The builders (:func:`mlp`, :func:`conv_net`, :func:`cnn`,
    :func:`vgg`, :func:`resnet`...) set it; what needs the spatial shape of each map's input
    (the damped rule's power iteration through conv maps) reads it from the :class:`LayeredNet`
    of :func:`split`. A graph whose ``input_shape`` is known has its edge shapes checked here.
    """

    def __init__(
        self,
        layers: Sequence[nnx.Module],
        activation: str = "relu",
        input_shape: Sequence[int] | None = None,
        graph: Graph | None = None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is unknown; choose one of {tuple(ACTIVATIONS)}."
            )
        if not layers:
            raise ValueError("a Network needs at least one layer map.")
        if graph is not None and len(graph.edges) != len(layers):
            raise ValueError(
                f"the graph has {len(graph.edges)} edges but {len(layers)} layer maps were "
                "given: layers[k] is the map of graph.edges[k]."
            )
        self.layers = nnx.List(list(layers))
        self.activation = activation
        self.input_shape = _shape_or_none(input_shape)
        self.graph = graph
        if graph is not None and self.input_shape is not None:
            _check_graph_shapes(self.layers, graph, self.input_shape)

    def __call__(self, x: jax.Array) -> jax.Array:
        graph = self.graph or Graph.chain(len(self.layers), self.activation)
        states, _ = propagate(
            graph,
            x,
            lambda k, s: self.layers[k](s),
            lambda j, a: ACTIVATIONS[graph.activations[j]](a),
        )
        return states[-1]


def _check_graph_shapes(layers, graph: Graph, input_shape: tuple[int, ...]) -> None:
    """Each node's in-edges must give one shape: ``ValueError`` naming the node and edges. The
    input is probed as float32, or as int32 token ids where a map reading it says
    ``reads_tokens``."""
    tokens = any(getattr(layers[k], "reads_tokens", False) for k in graph.out_edges[0])
    shapes = [jax.ShapeDtypeStruct((1, *input_shape), jnp.int32 if tokens else jnp.float32)]
    for j in range(1, graph.output + 1):
        outs = {}
        for k in graph.in_edges[j]:
            i = graph.edges[k][0]
            try:
                outs[k] = jax.eval_shape(layers[k], shapes[i])
            except Exception as err:
                raise ValueError(
                    f"edge {k} ({graph.names[i]} -> {graph.names[j]}, "
                    f"{type(layers[k]).__name__}) cannot take node {graph.names[i]!r}'s state "
                    f"of per-example shape {shapes[i].shape[1:]}: {str(err)[:200]}"
                ) from None
        if len({o.shape for o in outs.values()}) > 1:
            detail = ", ".join(
                f"edge {k} from {graph.names[graph.edges[k][0]]!r}: {o.shape[1:]}"
                for k, o in outs.items()
            )
            raise ValueError(
                f"node {graph.names[j]!r} sums in-edges of different shapes ({detail}); a skip "
                "edge that changes the shape needs a projection (a 1x1 Conv, pooled where the "
                "branch pools)."
            )
        shapes.append(next(iter(outs.values())))


def _shape_or_none(shape: Sequence[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"input_shape must be positive sizes of one example, got {shape}.")
    return shape


def as_compute(s: jax.Array, dtype) -> jax.Array:
    """``s`` in the compute ``dtype``, except integer states (token ids), which stay as they
    are: an embedding map reads them as indices."""
    return s if jnp.issubdtype(s.dtype, jnp.integer) else s.astype(dtype)


@dataclasses.dataclass(frozen=True)
class LayeredNet:
    """Static, hashable view of a :class:`Network` for pure jitted functions.

    ``params`` (a pure dict ``{"layers": {k: {...}}}``, from :func:`split`; a map without
    parameters, an identity skip, has no entry) is passed separately;
    ``apply_map(k, params_k, s)`` computes map k's output W_k(params_k, s). ``graph``: the
    :class:`Graph` of a DAG network, or None for a chain; the learning rule reads the structure
    through :meth:`in_edges`, :meth:`out_edges`, :meth:`source`, :meth:`target`,
    :meth:`node_f` and :attr:`output_node`, which describe a chain too. ``input_shape``: the
    shape of one input example, or None where the network was built without it (only the conv
    maps' power iteration needs it).
    """

    graphdefs: tuple
    activation: str
    input_shape: tuple[int, ...] | None = None
    graph: Graph | None = None

    @property
    def structure(self) -> Graph:
        """The network's :class:`Graph`: its own, or a chain of :attr:`num_maps` maps."""
        return self.graph or Graph.chain(self.num_maps, self.activation)

    @property
    def num_maps(self) -> int:
        """The number of layer maps (edges); for a chain also L, the output layer."""
        return len(self.graphdefs)

    @property
    def is_chain(self) -> bool:
        """Whether the network is a chain (no :class:`Graph`)."""
        return self.graph is None

    @property
    def output_node(self) -> int:
        """N, the output node (layer L = :attr:`num_maps` for a chain)."""
        return self.num_maps if self.graph is None else self.graph.output

    def in_edges(self, j: int) -> tuple[int, ...]:
        """The maps k whose target is node j (chain: map j-1)."""
        return (j - 1,) if self.graph is None else self.graph.in_edges[j]

    def out_edges(self, i: int) -> tuple[int, ...]:
        """The maps k whose source is node i (chain: map i, none from the output)."""
        if self.graph is None:
            return (i,) if i < self.num_maps else ()
        return self.graph.out_edges[i]

    def source(self, k: int) -> int:
        """The node map k reads (chain: layer k)."""
        return k if self.graph is None else self.graph.edges[k][0]

    def target(self, k: int) -> int:
        """The node map k feeds (chain: layer k+1)."""
        return k + 1 if self.graph is None else self.graph.edges[k][1]

    def f(self, a: jax.Array) -> jax.Array:
        """The hidden activation f (of a chain; a graph's nodes have :meth:`node_f`)."""
        return ACTIVATIONS[self.activation](a)

    def node_f(self, j: int) -> Callable[[jax.Array], jax.Array]:
        """f_j, the activation of hidden node j (a chain's f for every hidden layer)."""
        return self.f if self.graph is None else ACTIVATIONS[self.graph.activations[j]]

    def require_chain(self, what: str) -> None:
        """``ValueError`` where the network is a graph: ``what`` is defined on chains only."""
        if self.graph is not None:
            raise ValueError(
                f"{what} is defined for layered chains only, and this network is a graph "
                "(residual/DAG). Use dual_prop (DP or DP⊤, plain or fast, any passes), "
                "backprop, predictive_coding or ep_pcn on it."
            )

    @staticmethod
    def layer_params(params, k: int):
        """params_k, the parameters of map k (``{}`` for a map without any, an identity)."""
        layers = params["layers"]
        return layers.get(k, {}) if hasattr(layers, "get") else layers[k]

    def apply_map(self, k: int, params_k, s: jax.Array, dtype=None) -> jax.Array:
        """a_{k+1} = W_k(params_k, s), computed in ``dtype`` when given (integer states, the
        tokens of an embedding's input node, stay integers)."""
        if dtype is not None:
            params_k = jax.tree.map(lambda t: t.astype(dtype), params_k)
            s = as_compute(s, dtype)
        return nnx.merge(self.graphdefs[k], params_k)(s)

    def pools_input(self, params, k: int) -> bool:
        """Whether map k starts with a 2x2 max-pool of its input (the ``"unpooled"`` layout)."""
        layer = nnx.merge(self.graphdefs[k], self.layer_params(params, k))
        return bool(getattr(layer, "pool_input", False))

    def apply_core(self, k: int, params_k, s: jax.Array, dtype=None) -> jax.Array:
        """Map k without its max-pools, ``layer.core(s)`` (the map itself where the layer has
        no ``core`` method): an affine map, whose linear part bounds map k's Lipschitz
        constant (max-pooling is 1-Lipschitz). ``s`` is the core's input (pooled where the map
        pools its input)."""
        if dtype is not None:
            params_k = jax.tree.map(lambda t: t.astype(dtype), params_k)
            s = as_compute(s, dtype)
        layer = nnx.merge(self.graphdefs[k], params_k)
        return layer.core(s) if hasattr(layer, "core") else layer(s)

    def map_input_shapes(self, params) -> tuple[tuple[int, ...], ...]:
        """The per-example input shape of each map's core (:meth:`apply_core`), k = 0..L-1.

        A dense map's core reads ``(in_features,)`` (its flatten is an isometry); any other map
        reads layer k's state, 2x2-pooled where the map pools its input. The shapes follow
        ``input_shape`` through the maps (by ``jax.eval_shape``), so a conv map needs it:
        ``ValueError`` where it is None, or where the network is a graph.
        """
        self.require_chain("map_input_shapes (the damped rule's power iteration)")
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

    def pre_activation(self, params, j: int, states, dtype=None) -> jax.Array:
        """a_j = Σ_{k into j} W_k(params_k, s_source(k)), from the node states ``states``."""
        return edge_sum([
            self.apply_map(k, self.layer_params(params, k), states[self.source(k)], dtype)
            for k in self.in_edges(j)
        ])  # fmt: skip

    def forward(self, params, x: jax.Array, dtype=None) -> jax.Array:
        """The network output ŷ = a_N (a chain's a_L), by :func:`~.graph.propagate`."""
        states, _ = propagate(
            self.structure,
            x,
            lambda k, s: self.apply_map(k, self.layer_params(params, k), s, dtype),
            lambda j, a: self.node_f(j)(a),
        )
        return states[-1]


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
    return LayeredNet(tuple(graphdefs), model.activation, model.input_shape, model.graph), params


def merge(net: LayeredNet, params) -> Network:
    """Rebuild a :class:`Network` module holding ``params`` (e.g. after training)."""
    layers = [nnx.merge(g, LayeredNet.layer_params(params, k)) for k, g in enumerate(net.graphdefs)]
    return Network(layers, net.activation, net.input_shape, net.graph)
