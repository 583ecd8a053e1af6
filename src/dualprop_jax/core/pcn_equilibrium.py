"""Equilibrium propagation on a predictive-coding energy (after Kerjan, Høier & Scellier 2026).

That work trains predictive-coding networks (PCNs) with the centered variant of EP and an
equilibration scheme of its own, with about as many nudge iterations as the net has layers and
β as small as 2e-4. What is here follows those ingredients on the network's own graph. The
equations are written out below and numbered (1)-(5) in this module's own numbering, not the
paper's: the equilibration schemes here (backward and synchronous) are derived from the
energy's stationarity conditions, not transcribed from the paper.

**Energy.** Every node j = 1..N, the output too, is a value node v_j shaped like its
pre-activation; φ_0 = x, φ_j = f_j(v_j) (f_N = identity), and node j is predicted from its
parents by the edge maps every rule uses, μ_j(v) = Σ_{k=(i,j)} W_k(φ_i):

    E(v; θ) = Σ_{j=1}^{N} ½‖v_j − μ_j(v)‖²,      F_β(v; θ) = E(v; θ) + β ℓ(v_N, y).     (1)

**Free phase.** E ≥ 0, and E = 0 where v_j = μ_j for every j: the feedforward pass is the free
equilibrium, reached exactly in one forward sweep.

**Nudged phase.** With the errors ε_j = v_j − μ_j(v), ∂F_β/∂v = 0 reads

    ε_N = −β ∇ℓ(v_N),      ε_j = f_j'(v_j) ⊙ Σ_{k=(j,c)} J_k(φ_j)ᵀ ε_c   (j < N).       (2)

The state is carried as its errors ε, the values rebuilt by the forward sweep
v_j = μ_j(v) + ε_j (:func:`nudged_state`), so v − μ(v) = ε holds at every iteration. One
iteration evaluates the right-hand sides of (2) at v(ε) (:func:`iterate_errors`):

* ``"backward"``: from the output down, each node reads its children's new errors (a
  Gauss–Seidel sweep); the nudge reaches every node in one iteration;
* ``"synchronous"``: every node reads the previous iteration's errors (Jacobi); the nudge
  moves one edge per iteration, so it reaches a node d edges from the output at iteration
  d + 1.

Each iteration costs one forward sweep and one transposed sweep. The default number of
iterations K is the number of layers (edges on the longest input-output path), which is what
the synchronous scheme needs to reach every node (:func:`layers`).

**Gradient.** At a state v(ε), ∂F_β/∂θ = −Σ_k ∂_θ⟨ε_c, W_k(θ, φ_j)⟩ (ℓ does not depend on θ;
:func:`energy_param_grad`), a Hebbian product of a node's error and its source's activity.
EP's estimates of ∇_θ L, L = (1/B) Σ_b ℓ(ŷ_b, y_b) of the feedforward net, are

    centered ("symmetric"):  g = [∂_θF(v^{+β}) − ∂_θF(v^{−β})] / (2βB),                   (3)
    one-sided:               g = ∂_θF(v^{+β}) / (βB)        (∂_θF = 0 at the free state).    (4)

To first order in β the errors of (2) at the free state are ε_j = −β δ_j, δ_j = ∂ℓ/∂a_j BP's
error, once the nudge has reached node j; so

    g = ∇_θ L + O(β²) (centered),    g = ∇_θ L + O(β) (one-sided),                           (5)

for any K ≥ 1 under the backward scheme and K ≥ (longest path from a hidden node) + 1 under
the synchronous one. Only (2)'s errors are carried, never a difference of two states, so a
small β loses no precision in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dualprop_jax.core.forward import Forward, forward
from dualprop_jax.core.states import Aux, batch_loss, check_batch, compute_dtype, wide
from dualprop_jax.losses import loss_gradient, per_example_loss, targets_as_array
from dualprop_jax.models.net import as_compute

SCHEMES = ("backward", "synchronous")
"""Orders in which an iteration of the nudged phase updates the nodes' errors."""


def layers(net) -> int:
    """The number of edges on the longest path from the input to the output."""
    depth = {0: 0}
    for j in range(1, net.output_node + 1):
        depth[j] = 1 + max(depth[net.source(k)] for k in net.in_edges(j))
    return depth[net.output_node]


def energy(net, params, x, t, v: tuple, beta, loss: str) -> jax.Array:
    """F_β(v; θ) of (1) summed over the batch: v = (v_1, ..., v_N) (the output's value node
    last), t the targets as an array of the output's shape."""
    phi = {0: x, **{j: net.node_f(j)(v[j - 1]) for j in range(1, net.output_node)}}
    total = sum(
        0.5 * jnp.sum((v[j - 1] - net.pre_activation(params, j, phi)) ** 2)
        for j in range(1, net.output_node + 1)
    )
    return total + beta * jnp.sum(per_example_loss(loss, v[-1], t))


def nudged_state(net, params, x, eps: tuple, dtype, **keep) -> Forward:
    """The forward sweep v_j = μ_j(v) + ε_j, φ_j = f_j(v_j): ``pre[j]`` is μ_j, ``states[j]``
    φ_j (ε = 0 gives the feedforward pass). ``keep`` goes to :func:`~.forward.forward`."""

    def node(j, mu):
        return net.node_f(j)((mu.astype(eps[j - 1].dtype) + eps[j - 1]).astype(mu.dtype))

    return forward(net, params, x, dtype, node=node, **keep)


def iterate_errors(net, fw: Forward, eps: tuple, beta, t, loss: str, scheme: str) -> tuple:
    """One iteration of (2) at the state ``fw`` = v(ε) (kept vjps): the new (ε_1, ..., ε_N)."""
    N = net.output_node
    v = {j: fw.pre[j].astype(eps[j - 1].dtype) + eps[j - 1] for j in range(1, N + 1)}
    new = {N: (-beta * loss_gradient(loss, v[N], t)).astype(eps[N - 1].dtype)}
    read = new if scheme == "backward" else {j: eps[j - 1] for j in range(1, N + 1)}
    for j in range(N - 1, 0, -1):  # children first: nodes are numbered in topological order
        fb = sum(fw.vjps[k](read[net.target(k)]) for k in net.out_edges(j))
        a_j = v[j].astype(fw.pre[j].dtype)
        f_vjp = jax.vjp(net.node_f(j), a_j)[1]
        new[j] = f_vjp(fb.astype(a_j.dtype))[0].astype(eps[j - 1].dtype)
    return tuple(new[j] for j in range(1, N + 1))


def nudged_errors(net, params, x, t, beta, config, steps: int) -> tuple:
    """(ε_1, ..., ε_N) after ``steps`` iterations of (2) from the free state (ε = 0), in a
    ``lax.fori_loop``."""
    dtype = compute_dtype(config.dtype)
    shapes = jax.eval_shape(lambda: forward(net, params, x, dtype).pre)
    eps = tuple(jnp.zeros(s.shape, wide(dtype)) for s in shapes[1:])

    def body(_, e):
        fw = nudged_state(net, params, x, e, dtype, keep_vjps=True)
        return iterate_errors(net, fw, e, beta, t, config.loss, config.scheme)

    return jax.lax.fori_loop(0, steps, body, eps)


def energy_param_grad(net, params, x, eps: tuple, dtype):
    """∂F_β/∂θ at the state v(ε): −Σ_k ∂_θ⟨ε_c, W_k(θ, φ_j)⟩, one vjp of all maps at φ(ε),
    summed over the batch (the same tree as ``params``)."""
    phi = jax.lax.stop_gradient(nudged_state(net, params, x, eps, dtype).states)

    def maps(p):
        return tuple(
            net.apply_map(k, net.layer_params(p, k), phi[net.source(k)], dtype)
            for k in range(net.num_maps)
        )

    a, vjp = jax.vjp(maps, params)
    (g,) = vjp(tuple(eps[net.target(k) - 1].astype(a_k.dtype) for k, a_k in enumerate(a)))
    return jax.tree.map(jnp.negative, g)


@functools.partial(jax.jit, static_argnames=("net", "steps"))
def pcn_ep_grad(net, params, x, y, config, steps: int) -> tuple[object, Aux]:
    """EP's estimate (3) (``config.nudging == "symmetric"``) or (4) of ∇_θ L after ``steps``
    iterations of the nudged phase, and :class:`Aux` of the free state (the forward pass)."""
    check_batch(net, x, y)
    dtype = compute_dtype(config.dtype)
    xc = as_compute(x, dtype)
    y_hat = forward(net, params, xc, dtype).pre[net.output_node]
    t = targets_as_array(y_hat.astype(wide(dtype)), y)

    def phase_grad(beta):
        eps = nudged_errors(net, params, xc, t, beta, config, steps)
        return energy_param_grad(net, params, xc, jax.lax.stop_gradient(eps), dtype)

    plus = phase_grad(config.beta)
    if config.nudging == "symmetric":
        minus = phase_grad(-config.beta)
        diff, scale = jax.tree.map(jnp.subtract, plus, minus), 0.5 / config.beta
    else:
        diff, scale = plus, 1.0 / config.beta
    scale = scale / x.shape[0]
    grads = jax.tree.map(lambda g: (scale * g).astype(g.dtype), diff)
    return grads, Aux(batch_loss(config.loss, y_hat, t), y_hat)


__all__ = [
    "SCHEMES",
    "energy",
    "energy_param_grad",
    "iterate_errors",
    "layers",
    "nudged_errors",
    "nudged_state",
    "pcn_ep_grad",
]
