"""The static structure of a network as a DAG of layer maps, and the one forward walk over it.

Nodes j = 0..N in topological order (0 the input, N the output) carry states and an activation
f_j; edges k = (i, j) carry the layer maps. A node's pre-activation is the sum over its
in-edges, a_j = Σ_{k=(i,j)} W_k(s_i), s_j = f_j(a_j) (0 < j < N), s_N = a_N. A chain is the
graph with edges k = (k, k+1). :func:`propagate` is the forward pass every path of the library
runs (the module's call, the rules' forward pass with kept vjps, the fast path, EP's start).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax

from dualprop_jax.models.maps import ACTIVATIONS


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


def edge_sum(terms: Sequence[jax.Array]) -> jax.Array:
    """Σ of a node's in-edge terms, left to right; a single term is returned as it is (so a
    chain computes exactly what it computed before graphs existed)."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def propagate(
    graph: Graph,
    x: jax.Array,
    edge: Callable[[int, jax.Array], jax.Array],
    node: Callable[[int, jax.Array], jax.Array],
) -> tuple[list[jax.Array], list[jax.Array | None]]:
    """The forward pass over ``graph``: ``(states, pre)`` with s_0 = x and, for j = 1..N,

        a_j = Σ_{k=(i,j)} edge(k, s_i),   s_j = node(j, a_j) (j < N),   s_N = a_N,

    in topological order (``pre[0]`` is None). ``edge`` applies map k (and may record its vjp),
    ``node`` applies f_j (ReLU, the fast path's dual activation, EP's σ, ...).
    """
    states, pre = [x], [None]
    for j in range(1, graph.output + 1):
        a = edge_sum([edge(k, states[graph.edges[k][0]]) for k in graph.in_edges[j]])
        pre.append(a)
        states.append(a if j == graph.output else node(j, a))
    return states, pre
