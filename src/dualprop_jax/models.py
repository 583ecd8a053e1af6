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


class Identity(nnx.Module):
    """The identity map a = s: a skip connection, with no parameters."""

    def __call__(self, s: jax.Array) -> jax.Array:
        return s


@dataclasses.dataclass(frozen=True)
class Graph:
    """The static structure of a DAG network: nodes 0..N in topological order, edges k = (i, j).

    ``edges[k] = (i, j)``, with i < j, is the source and target of map k; ``activations[j]``
    names f_j (a key of :data:`ACTIVATIONS`; nodes 0 and N have none, and read
    ``"identity"``); ``names[j]`` is node j's name, for messages. Build one with
    :meth:`from_edges` (named nodes in any order; the topological order is found once, there)
    or :meth:`chain`. Hashable: part of the static :class:`LayeredNet`.
    """

    edges: tuple[tuple[int, int], ...]
    activations: tuple[str, ...]
    names: tuple[str, ...]
    in_edges: tuple[tuple[int, ...], ...] = dataclasses.field(init=False, repr=False)
    out_edges: tuple[tuple[int, ...], ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.activations)
        if n < 2 or len(self.names) != n:
            raise ValueError(
                f"a Graph needs >= 2 nodes with one name and one activation each, got "
                f"{n} activations and {len(self.names)} names."
            )
        for k, (i, j) in enumerate(self.edges):
            if not 0 <= i < j < n:
                raise ValueError(
                    f"edge {k} = ({i}, {j}) does not go forward in the topological order of "
                    f"nodes 0..{n - 1}; build the graph with Graph.from_edges, which orders it."
                )
        for j, f in enumerate(self.activations):
            if f not in ACTIVATIONS:
                raise ValueError(
                    f"node {self.names[j]!r} has activation {f!r}; choose one of "
                    f"{tuple(ACTIVATIONS)}."
                )
        _check_connected(range(n), self.edges, 0, n - 1, self.names)
        ins = tuple(tuple(k for k, e in enumerate(self.edges) if e[1] == j) for j in range(n))
        outs = tuple(tuple(k for k, e in enumerate(self.edges) if e[0] == j) for j in range(n))
        object.__setattr__(self, "in_edges", ins)
        object.__setattr__(self, "out_edges", outs)

    @property
    def output(self) -> int:
        """N, the output node."""
        return len(self.activations) - 1

    @classmethod
    def chain(cls, num_maps: int, activation: str = "relu") -> Graph:
        """The chain 0 → 1 → ... → L with map k = (k, k+1) and f on the hidden layers."""
        acts = ("identity", *(activation,) * (num_maps - 1), "identity")
        return cls(tuple((k, k + 1) for k in range(num_maps)), acts,
                   tuple(str(j) for j in range(num_maps + 1)))  # fmt: skip

    @classmethod
    def from_edges(
        cls,
        edges: Sequence[tuple[str, str]],
        activations: dict[str, str],
        input: str = "input",
        output: str = "output",
    ) -> Graph:
        """A graph from named edges ``(source, target)`` (map k is ``edges[k]``) and the
        activation of each hidden node (``activations[name]``). The nodes are numbered in a
        topological order (Kahn's algorithm, ties broken by first appearance), once, here.

        ``ValueError`` names the problem: an unknown node, a cycle, an input with in-edges, an
        output with out-edges, a node that is unreachable or leads nowhere.
        """
        names = [input]
        for e in edges:
            if len(e) != 2:
                raise ValueError(f"an edge is a pair (source, target) of node names, got {e!r}.")
            names += [v for v in e if v not in names]
        if output not in names:
            raise ValueError(f"no edge reaches the output node {output!r}.")
        hidden = [v for v in names if v not in (input, output)]
        missing = [v for v in hidden if v not in activations]
        extra = [v for v in activations if v not in hidden]
        if missing or extra:
            raise ValueError(
                f"give an activation for each hidden node: missing for {missing}; "
                f"{extra} are not hidden nodes of the edges."
            )
        if any(t == input for _, t in edges) or any(s_ == output for s_, _ in edges):
            raise ValueError(
                f"the input node {input!r} takes no in-edges and the output node {output!r} "
                "gives no out-edges."
            )
        _check_connected(names, edges, input, output)
        order, indegree = [], {v: sum(t == v for _, t in edges) for v in names}
        ready = [v for v in names if indegree[v] == 0]
        while ready:
            v = ready.pop(0)
            order.append(v)
            for s_, t in edges:
                if s_ == v:
                    indegree[t] -= 1
                    if indegree[t] == 0:
                        ready.append(t)
        if len(order) < len(names):
            raise ValueError(
                f"the edges contain a cycle through {[v for v in names if v not in order]}; "
                "a network graph must be acyclic."
            )
        index = {v: j for j, v in enumerate(order)}
        acts = tuple("identity" if v in (input, output) else activations[v] for v in order)
        return cls(tuple((index[s_], index[t]) for s_, t in edges), acts, tuple(order))


def _check_connected(nodes, edges, input, output, names=None) -> None:
    """``ValueError`` naming every node but ``output`` without an out-edge and every node but
    ``input`` without an in-edge (``names[v]`` in the message where given)."""
    label = (lambda v: names[v]) if names is not None else (lambda v: v)
    dead = [label(v) for v in nodes if v != output and not any(s == v for s, _ in edges)]
    unfed = [label(v) for v in nodes if v != input and not any(t == v for _, t in edges)]
    if dead or unfed:
        raise ValueError(
            "every node but the output needs an out-edge and every node but the input an "
            f"in-edge; without an out-edge: {dead}, without an in-edge: {unfed}."
        )


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
        s = [x]
        for j in range(1, graph.output + 1):
            a = edge_sum([self.layers[k](s[graph.edges[k][0]]) for k in graph.in_edges[j]])
            s.append(a if j == graph.output else ACTIVATIONS[graph.activations[j]](a))
        return s[-1]


def edge_sum(terms: Sequence[jax.Array]) -> jax.Array:
    """Σ of a node's in-edge terms, left to right; a single term is returned as it is (so a
    chain computes exactly what it computed before graphs existed)."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _check_graph_shapes(layers, graph: Graph, input_shape: tuple[int, ...]) -> None:
    """Each node's in-edges must give one shape: ``ValueError`` naming the node and edges."""
    shapes = [jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)]
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
                "(residual/DAG). Use dual_prop (DP or DP⊤, plain or fast, any passes) or "
                "backprop on it."
            )

    @staticmethod
    def layer_params(params, k: int):
        """params_k, the parameters of map k (``{}`` for a map without any, an identity)."""
        layers = params["layers"]
        return layers.get(k, {}) if hasattr(layers, "get") else layers[k]

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
        """The network output ŷ = a_N (a chain's a_L)."""
        s = [x]
        for j in range(1, self.output_node + 1):
            a = self.pre_activation(params, j, s, dtype)
            s.append(a if j == self.output_node else self.node_f(j)(a))
        return s[-1]


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


# ------------------------------------------------------------------ residual networks (DAGs)

RESNET_PRESETS: dict[str, dict] = {
    "resnet8": dict(widths=(16, 32, 64), blocks=(1, 1, 1)),
    "resnet20": dict(widths=(16, 32, 64), blocks=(3, 3, 3)),
    "resnet18": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),
}
"""The residual builders' stages: ResNet-8/20 are the CIFAR ResNets of He et al. (2016, §4.2:
6n + 2 layers, n = 1, 3, with 16/32/64 channels); ResNet-18 their ImageNet stages (64-512
channels, two blocks each) with a 3x3 stem, as usually trained on CIFAR."""


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
    if len(input_shape) != 3:
        raise ValueError(f"resnet needs an image input shape (H, W, C), got {tuple(input_shape)}.")
    widths, blocks = tuple(int(w) for w in widths), tuple(int(b) for b in blocks)
    if not widths or len(widths) != len(blocks) or min(widths) < 1 or min(blocks) < 1:
        raise ValueError(
            f"resnet needs one positive width and block count per stage, got widths={widths}, "
            f"blocks={blocks}."
        )
    h, w, c = (int(d) for d in input_shape)
    if h >> (len(widths) - 1) < 1 or w >> (len(widths) - 1) < 1:
        raise ValueError(
            f"input {tuple(input_shape)} is too small for {len(widths)} stages (each after the "
            "first halves it)."
        )
    if downsample not in ("pool_conv", "conv_pool"):
        raise ValueError(
            f"downsample={downsample!r} is unknown; choose 'pool_conv' or 'conv_pool'."
        )
    first_init, last_init = fixup_initializers(sum(blocks))
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    stem = widths[0] if stem is None else int(stem)
    edges: list[tuple[str, str]] = [("input", "stem")]
    maps: list[nnx.Module] = [Conv(c, stem, kernel_init=_HIDDEN_INIT, **kw)]
    node, c = "stem", stem
    for s, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for b in range(count):
            down = s > 0 and b == 0
            name = f"s{s}b{b}"
            edges += [(node, f"{name}.h"), (f"{name}.h", name), (node, name)]
            maps += [
                Conv(
                    c,
                    width,
                    pool_input=down and downsample == "pool_conv",
                    pool_output=down and downsample == "conv_pool",
                    kernel_init=first_init,
                    **kw,
                ),
                Conv(width, width, kernel_init=last_init, **kw),
                Conv(c, width, kernel_size=1, pool_input=down, kernel_init=_OUTPUT_INIT, **kw)
                if down or c != width
                else Identity(),
            ]
            if down:
                h, w = h // 2, w // 2
            node, c = name, width
    edges.append((node, "output"))
    maps.append(Dense(h * w * c, num_classes, flatten=True, kernel_init=_OUTPUT_INIT, **kw))
    hidden = {v for e in edges for v in e} - {"input", "output"}
    graph = Graph.from_edges(edges, {v: activation for v in hidden})
    return Network(maps, activation, input_shape=tuple(int(d) for d in input_shape), graph=graph)


def resnet8(**kwargs) -> Network:
    """ResNet-8 (He et al. 2016's CIFAR family, n = 1): 16/32/64 channels, one block each."""
    return resnet(**RESNET_PRESETS["resnet8"], **kwargs)


def resnet20(**kwargs) -> Network:
    """ResNet-20 (He et al. 2016's CIFAR family, n = 3): 16/32/64 channels, three blocks each."""
    return resnet(**RESNET_PRESETS["resnet20"], **kwargs)


def resnet18(**kwargs) -> Network:
    """ResNet-18-style: 64/128/256/512 channels, two basic blocks each, 3x3 stem."""
    return resnet(**RESNET_PRESETS["resnet18"], **kwargs)
