"""Predictive coding (inference learning) on the network's own graph, and its fixed-prediction form.

Value nodes v_j (j = 1..N-1, one per hidden node, shaped like its pre-activation); the input
node's activity is x, a hidden node's is φ_j = f_j(v_j). Each node j = 1..N is predicted from its
parents' activities by the same edge maps the other rules use,

    μ_j(v) = Σ_{k=(i,j)} W_k(φ_i)        (``net.pre_activation``),

and the energy, per example, is

    F(v; θ) = Σ_{j<N} ½‖v_j − μ_j‖² + ℓ(μ_N, y),

the output's value node clamped to the target: for squared error ℓ = ½‖μ_N − t‖² is exactly
the clamped node's ½‖t − μ_N‖²; for softmax cross-entropy the loss takes its place.

* **Inference learning** (:func:`pc_grad`): v starts at the feedforward pass (every hidden
  error ε_j = v_j − μ_j is 0), takes T steps of gradient descent v ← v − γ ∂F/∂v on every
  example's energy, and the weight gradient is ∂F/∂θ at the last v, averaged over the batch:
  for a dense edge -ε_j φ_iᵀ / B (ε_N = -∂ℓ/∂μ_N at the output), a Hebbian product of the
  target's error and the source's activity, as for any map -∂_θ⟨ε_j, W_k(θ, φ_i)⟩ / B.
* **Fixed prediction** (:func:`fixed_prediction_grad`): the predictions and their Jacobians stay
  at the feedforward pass (μ̄, φ̄). The errors relax by
  ε_j ← ε_j + γ(−ε_j + f_j'(ā_j) ⊙ Σ_{k=(j,c)} J_k(φ̄_j)ᵀ ε_c), ε_N = −∂ℓ/∂μ_N fixed, and the
  gradient is −Σ_k ∂_θ⟨ε_c, W_k(θ, φ̄_j)⟩ / B. At γ = 1 the errors are BP's, −∂ℓ/∂a_j, after as
  many steps as the longest path from a hidden node to the output, and the gradient is then
  BP's exactly (Millidge, Tschantz & Buckley 2022; Song et al. 2020).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dualprop_jax.core.forward import forward
from dualprop_jax.core.states import Aux, batch_loss, check_batch, compute_dtype, wide
from dualprop_jax.losses import loss_gradient, per_example_loss, targets_as_array
from dualprop_jax.models.net import as_compute


def _activities(net, x, v: tuple) -> dict:
    """{0: x, j: f_j(v_j)}: what each node sends along its out-edges."""
    return {0: x, **{j: net.node_f(j)(v[j - 1]) for j in range(1, net.output_node)}}


def energy(net, params, x, t, v: tuple, config) -> jax.Array:
    """Σ_b F_b(v; θ), the energy summed over the batch (module docstring): hidden errors
    ½‖v_j − μ_j‖² plus ℓ(μ_N, t) (t: targets as an array of the output's shape)."""
    dtype = compute_dtype(config.dtype)
    phi = _activities(net, x, v)
    total = jnp.zeros((), wide(dtype))
    for j in range(1, net.output_node):
        mu = net.pre_activation(params, j, phi, dtype)
        total = total + 0.5 * jnp.sum((v[j - 1] - mu).astype(total.dtype) ** 2)
    mu_N = net.pre_activation(params, net.output_node, phi, dtype).astype(total.dtype)
    return total + jnp.sum(per_example_loss(config.loss, mu_N, t.astype(total.dtype)))


def _start(net, params, x, y, config):
    """The feedforward pass: its pre-activations (the initial value nodes), ŷ and t."""
    check_batch(net, x, y)
    dtype = compute_dtype(config.dtype)
    fw = forward(net, params, as_compute(x, dtype), dtype, keep_vjps=True)
    y_hat = fw.pre[net.output_node]
    t = targets_as_array(y_hat.astype(wide(dtype)), y)
    v = tuple(fw.pre[j].astype(wide(dtype)) for j in range(1, net.output_node))
    return fw, as_compute(x, dtype), y_hat, t, v


def _descent(net, params, x, t, config):
    """One inference step, ``v ↦ (v − γ ∂(Σ_b F_b)/∂v, Σ_b F_b(v))``: what :func:`relax` repeats
    and :func:`energies` records."""
    value_and_grad = jax.value_and_grad(lambda v_: energy(net, params, x, t, v_, config))

    def step(v):
        e, g = value_and_grad(v)
        return jax.tree.map(lambda a, b: a - config.step_size * b.astype(a.dtype), v, g), e

    return step


def relax(net, params, x, t, v: tuple, config) -> tuple:
    """``config.inference_steps`` steps of v ← v − γ ∂(Σ_b F_b)/∂v (``γ = config.step_size``)
    in a ``lax.fori_loop``; returns the last v."""
    step = _descent(net, params, x, t, config)
    return jax.lax.fori_loop(0, config.inference_steps, lambda _, v_: step(v_)[0], v)


def energies(net, params, x, y, config) -> jax.Array:
    """Σ_b F_b after 0, 1, ..., T inference steps, shape (T + 1,): the diagnostic of the
    relaxation (at a small enough γ each step lowers it)."""
    _, xc, _, t, v = _start(net, params, x, y, config)
    step = _descent(net, params, xc, t, config)
    v_last, trace = jax.lax.scan(lambda v_, _: step(v_), v, None, length=config.inference_steps)
    return jnp.concatenate([trace, energy(net, params, xc, t, v_last, config)[None]])


@functools.partial(jax.jit, static_argnames=("net",))
def pc_grad(net, params, x, y, config) -> tuple[object, Aux]:
    """Inference learning: ∂F/∂θ / B at the value nodes after T steps (module docstring), and
    :class:`Aux` of the feedforward prediction."""
    _, xc, y_hat, t, v = _start(net, params, x, y, config)
    v = jax.lax.stop_gradient(relax(net, params, xc, t, v, config))
    grads = jax.grad(lambda p: energy(net, p, xc, t, v, config))(params)
    scale = 1.0 / x.shape[0]
    grads = jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)
    return grads, Aux(batch_loss(config.loss, y_hat, t), y_hat)


@functools.partial(jax.jit, static_argnames=("net",))
def fixed_prediction_grad(net, params, x, y, config) -> tuple[object, Aux]:
    """Predictive coding under the fixed-prediction assumption (module docstring): the errors
    relax for T steps with the predictions and Jacobians of the feedforward pass, then
    −Σ_k ∂_θ⟨ε_c, W_k(θ, φ̄_j)⟩ / B."""
    fw, _, y_hat, t, _ = _start(net, params, x, y, config)
    dtype, N = compute_dtype(config.dtype), net.output_node
    eps_N = -loss_gradient(config.loss, y_hat.astype(t.dtype), t)
    f_vjps = {j: jax.vjp(net.node_f(j), fw.pre[j])[1] for j in range(1, N)}

    def step(_, eps):
        errors = {**{j: eps[j - 1] for j in range(1, N)}, N: eps_N}
        new = []
        for j in range(1, N):
            fb = sum(fw.vjps[k](errors[net.target(k)]) for k in net.out_edges(j))
            drive = f_vjps[j](fb.astype(fw.pre[j].dtype))[0].astype(eps[j - 1].dtype)
            new.append(eps[j - 1] + config.step_size * (drive - eps[j - 1]))
        return tuple(new)

    zeros = tuple(jnp.zeros(fw.pre[j].shape, wide(dtype)) for j in range(1, N))
    eps = jax.lax.fori_loop(0, config.inference_steps, step, zeros)
    errors = {**{j: eps[j - 1] for j in range(1, N)}, N: eps_N}
    phi = fw.states

    def maps(p):
        return tuple(
            net.apply_map(k, net.layer_params(p, k), phi[net.source(k)], dtype)
            for k in range(net.num_maps)
        )

    a, vjp = jax.vjp(maps, params)
    cotangents = tuple(errors[net.target(k)].astype(a_k.dtype) for k, a_k in enumerate(a))
    (grads,) = vjp(cotangents)
    scale = -1.0 / x.shape[0]
    grads = jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)
    return jax.lax.stop_gradient(grads), Aux(batch_loss(config.loss, y_hat, t), y_hat)


__all__ = ["energies", "energy", "fixed_prediction_grad", "pc_grad", "relax"]
