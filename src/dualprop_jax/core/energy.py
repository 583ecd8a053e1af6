"""Equilibrium propagation (EP) and contrastive Hebbian learning (CHL): the energy-based baselines.

Notation (layers k = 0..L, s_0 = x; map k sends layer k to layer k+1, W_k with its bias, conv,
max-pool)::

  Φ(x, s; θ) = Σ_{k=0..L-1} ⟨s_{k+1}, W_k(s_k)⟩     the primitive function, summed over the batch
  ∂Φ/∂s_k    = W_{k-1}(s_{k-1}) + J_kᵀ s_{k+1}      (J_kᵀ s_{k+1}: ``jax.vjp`` of map k at s_k)
  ∂Φ/∂s_L    = W_{L-1}(s_{L-1})
  σ          = clip(·, 0, 1) ("clip", the hard sigmoid of the EP literature) or the identity
  ℓ, g       = the loss of the output s_L against the target t, and g = ∇_{s_L} ℓ

The network EP and CHL train is the recurrent (Hopfield-like) net defined by Φ, not the
feedforward net that DP and BP train: its state s is a fixed point of the relaxation, and its
prediction ŷ is the output s_L of the free phase (:func:`predict`), not ``net.forward``.

Relaxation (one step, all layers at once from the previous step's states: a Jacobi step, as in
the code of Laborieux et al. 2021; ``order="odd_even"`` updates the odd layers, then the even
ones from them, which settles where Jacobi steps of strongly coupled layers cycle)::

  hidden k = 1..L-1:  s_k ← σ(∂Φ/∂s_k)
  output k = L:       s_L ← W_{L-1}(s_{L-1})              free phase
                      s_L ← W_{L-1}(s_{L-1}) - β g(s_L)   nudged phase (EP; g at the current s_L)
                      s_L = t                             clamped phase (CHL; held fixed)

All ∂Φ/∂s_k of a step come from one ``jax.grad`` of Φ with respect to the states. Phases
(``lax.fori_loop``s with ``unroll=rule.unroll``): the free phase runs T = ``free_steps`` steps
from ``rule.start`` (every state 0, or the feedforward pass with σ) to s^0; a nudged (clamped)
phase runs K = ``nudged_steps`` (``clamped_steps``) steps from s^0.

Gradient estimators (update directions of a descent step, like ``jax.grad`` of the batch-mean
loss; B is the batch size)::

  EP, one-sided:  ∇θ ≈ -(1/β)  (∂Φ/∂θ(s^β) - ∂Φ/∂θ(s^0))  / B
  EP, symmetric:  ∇θ ≈ -(1/2β) (∂Φ/∂θ(s^β) - ∂Φ/∂θ(s^-β)) / B   (Laborieux et al. 2021)
  CHL:            ∇θ =  -(∂Φ/∂θ(s^clamped) - ∂Φ/∂θ(s^0)) / B       (Movellan 1991)

As β → 0 with converged phases, the EP estimate equals the gradient of ℓ at the free fixed point
(Scellier & Bengio 2017); the one-sided estimate's bias is O(β), the symmetric one's O(β²).
For a dense map, ∂Φ/∂W_k = s_{k+1} s_kᵀ: the estimates are differences of Hebbian correlations.

Literature defaults: T = 100, K = 20, β = 0.5 (Ernoult et al. 2019, a 784-512-512-10 MLP; the
defaults of :func:`~dualprop_jax.rules.equilibrium_prop`); Laborieux et al. 2021 used T = 250,
K = 30, β = 0.5, symmetric nudging and the clip σ for their conv nets.

Max-pool: use ``layout="pooled"`` (pool(conv(s)) as one map, Laborieux et al.'s form). There a
window's maximum enters Φ with the weight s_{k+1} ≥ 0 (under the clip σ), so the relaxation
favours one winner. In the unpooled layout Φ holds ⟨s_{k+1}, W(pool(s_k))⟩ = ⟨Wᵀ s_{k+1},
pool(s_k)⟩ for a linear W: a window's maximum is weighted by Wᵀ s_{k+1}, which can be negative.
Φ then pushes that maximum down until it ties with the runner-up, and the relaxation can cycle
between routings without reaching a fixed point (tests/test_energy.py shows it on a small net).

Precision: the layer maps compute in ``rule.dtype``; states, losses and output gradients are kept
in at least float32 (as the dyads of :mod:`~dualprop_jax.core.inference`); parameter gradients
keep the parameters' dtype.

Cost: s_0 = x never moves, so W_0(x) is computed once per phase; a step then costs one forward
and one input-side vjp of maps 1..L-1 (two of BP's three matmuls per dense layer). A gradient
call runs T + K (one-sided, CHL) or T + 2K (symmetric) steps, the two phases of symmetric
nudging in one ``vmap``, plus one parameter vjp per contrasted state: for 784-512-512-10 at the
defaults, about 50 BP steps. A Jacobi step moves the nudge one layer down, so K ≥ L steps are
needed before the first layer's states (and its gradient) feel the target at all.

``rule`` is a :class:`~dualprop_jax.rules.EquilibriumProp` or
:class:`~dualprop_jax.rules.ContrastiveHebbian` rule. Every public function here is pure and
jitted with ``net`` static; the rule is a pytree argument whose β is traced, so calls with
another β reuse the compiled program. States are tuples ``(s_1, ..., s_L)``; x is passed apart.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from dualprop_jax.core.forward import forward
from dualprop_jax.core.states import Aux, check_batch, compute_dtype, wide
from dualprop_jax.losses import loss_gradient, per_example_loss, targets_as_array
from dualprop_jax.models import LayeredNet

if TYPE_CHECKING:
    from dualprop_jax.rules import ContrastiveHebbian, EquilibriumProp

    EnergyRule = EquilibriumProp | ContrastiveHebbian

States = tuple[jax.Array, ...]
"""The states (s_1, ..., s_L) of layers 1..L (s_0 = x is not part of it)."""

Output = Callable[[jax.Array, jax.Array], jax.Array]
"""The output equation of a phase: (∂Φ/∂s_L = W_{L-1}(s_{L-1}), current s_L) ↦ new s_L."""

SIGMAS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "clip": lambda a: jnp.clip(a, 0.0, 1.0),
    "identity": lambda a: a,
}
"""σ of the hidden states, by ``rule.activation``."""


def _jit(*static: str):
    return functools.partial(jax.jit, static_argnames=("net", *static))


def fan_in_uniform(net: LayeredNet, params, key: jax.Array):
    """``params`` with every map's kernel and bias drawn from U(−1/√fan_in, 1/√fan_in), fan_in
    the kernel's inputs per output (a dense map's in-features, a conv's kh·kw·c_in): PyTorch's
    default for ``Linear`` and ``Conv2d``, on which the EP literature's code is built
    (Laborieux et al. 2021). Other leaves are kept."""
    del net
    layers = dict(params["layers"])
    for k, layer in sorted(layers.items()):
        if not isinstance(layer, dict) or "kernel" not in layer:
            continue
        fan_in = 1
        for d in layer["kernel"].shape[:-1]:
            fan_in *= int(d)
        bound = 1.0 / max(fan_in, 1) ** 0.5
        new = dict(layer)
        for name in ("kernel", "bias"):
            if name in layer:
                key, sub = jax.random.split(key)
                leaf = layer[name]
                new[name] = jax.random.uniform(sub, leaf.shape, leaf.dtype, -bound, bound)
        layers[k] = new
    return {**params, "layers": layers}


def setup_problems(net: LayeredNet, params, phase_steps: int) -> list[str]:
    """What makes a relaxation setup train no better than chance, each with its fix:

    - a second phase of K = ``phase_steps`` steps shorter than the L maps: a step moves the
      nudge one layer down, so the first layers' states (and their gradients) never feel it;
    - a conv map that max-pools its input (the ``"unpooled"`` layout): Φ then weights a pool
      window's maximum by Wᵀ s_{k+1}, which can be negative, and the relaxation can cycle
      between tied elements without settling.
    """
    net.require_chain("EP and CHL (a layered Hopfield energy)")
    problems = []
    if phase_steps < net.num_maps:
        problems.append(
            f"the second phase runs {phase_steps} steps, fewer than the network's "
            f"{net.num_maps} maps: the first layers get no error and train no better than "
            f"chance; use at least {net.num_maps} (nudged_steps or clamped_steps)."
        )
    pooled_inputs = [k for k in range(1, net.num_maps) if net.pools_input(params, k)]
    if pooled_inputs:
        problems.append(
            f"maps {pooled_inputs} max-pool their input (the 'unpooled' layout), where the "
            "relaxation can cycle between tied pool elements and not settle; build the model "
            "with layout='pooled' (--layout pooled)."
        )
    return problems


def _drive(net: LayeredNet, params, x: jax.Array, dtype) -> jax.Array:
    """W_0(x): the input's drive of layer 1, constant over every phase."""
    net.require_chain("EP and CHL (a layered Hopfield energy)")
    return net.apply_map(0, net.layer_params(params, 0), x, dtype)


def _coupling(net: LayeredNet, params, a_1: jax.Array, states: States, dtype) -> jax.Array:
    """Φ with its input term given: ⟨s_1, a_1⟩ + Σ_{k=1..L-1} ⟨s_{k+1}, W_k(s_k)⟩."""

    def dot(s, a):  # ⟨s, a⟩ over the batch, in the states' (wide) dtype
        return jnp.vdot(s, a.astype(s.dtype))

    phi = dot(states[0], a_1)
    for k in range(1, net.num_maps):
        a = net.apply_map(k, net.layer_params(params, k), states[k - 1], dtype)
        phi = phi + dot(states[k], a)
    return phi


def primitive(net: LayeredNet, params, x: jax.Array, states: States, dtype=None) -> jax.Array:
    """The primitive function Φ(x, s; θ) = Σ_{k=0..L-1} ⟨s_{k+1}, W_k(s_k)⟩, s_0 = x, a scalar
    summed over the batch; maps compute in ``dtype``. ∂Φ/∂s drives the relaxation, ∂Φ/∂θ the
    weight updates."""
    return _coupling(net, params, _drive(net, params, x, dtype), tuple(states), dtype)


def _step(net: LayeredNet, params, a_1, states: States, dtype, sigma, output: Output) -> States:
    """One Jacobi step: s_k ← σ(∂Φ/∂s_k) for k < L and s_L ← output(∂Φ/∂s_L, s_L)."""
    d = jax.grad(lambda s: _coupling(net, params, a_1, s, dtype))(states)
    return (*(sigma(d_k) for d_k in d[:-1]), output(d[-1], states[-1]))


def _odd_even_step(
    net: LayeredNet, params, a_1, states: States, dtype, sigma, output: Output
) -> States:
    """One odd-even step: the odd layers k = 1, 3, ... from the current states, then the even
    layers k = 2, 4, ... from the updated ones (each by the rule of :func:`_step`).

    Φ couples only neighbouring layers, so each half-step is an exact block update: with the
    other parity fixed, s_k = σ(∂Φ/∂s_k) maximises Φ - ½‖s_k‖² over the box of the clip σ
    (for maps linear in s_k). The energy then rises at every half-step, and the relaxation
    settles where synchronous (Jacobi) updates of strongly coupled layers can cycle with
    period 2, as classic Hopfield nets do. A step costs what a Jacobi step costs: each
    half-step needs each map once, forward or transposed.
    """
    last = len(states) - 1
    for parity in (0, 1):  # states[i] is layer i + 1: parity 0 = odd layers
        idx = tuple(i for i in range(len(states)) if i % 2 == parity)

        def phi(sub, states=states, idx=idx):
            full = list(states)
            for i, v in zip(idx, sub, strict=True):
                full[i] = v
            return _coupling(net, params, a_1, tuple(full), dtype)

        d = jax.grad(phi)(tuple(states[i] for i in idx))
        new = list(states)
        for i, d_i in zip(idx, d, strict=True):
            new[i] = output(d_i, states[i]) if i == last else sigma(d_i)
        states = tuple(new)
    return states


STEPS = {"synchronous": _step, "odd_even": _odd_even_step}
"""One relaxation step, by ``rule.order``."""


def _relax(net: LayeredNet, params, x, states: States, rule, steps: int, output: Output) -> States:
    """``steps`` Jacobi steps of the phase with the given output equation, from ``states``."""
    dtype = compute_dtype(rule.dtype)
    sigma = SIGMAS[rule.activation]
    a_1 = _drive(net, params, x, dtype)
    dt = wide(dtype)
    states = tuple(s.astype(dt) for s in states)
    step = STEPS[rule.order]
    body = lambda _, s: step(net, params, a_1, s, dtype, sigma, output)  # noqa: E731
    return jax.lax.fori_loop(0, steps, body, states, unroll=min(rule.unroll, steps))


def _free(a_L, s_L):
    """Free phase: s_L ← W_{L-1}(s_{L-1})."""
    del s_L
    return a_L


def _nudged(loss: str, beta, t) -> Output:
    """Nudged phase: s_L ← W_{L-1}(s_{L-1}) - β g(s_L), g = ∇ℓ(s_L, t) at the current s_L."""
    return lambda a_L, s_L: a_L - beta * loss_gradient(loss, s_L, t)


def _clamped(t) -> Output:
    """Clamped phase: s_L = t."""
    return lambda a_L, s_L: t.astype(s_L.dtype)


def _forward_states(net: LayeredNet, params, x, dtype, sigma) -> States:
    """The feedforward pass with σ: s_k = σ(W_{k-1}(s_{k-1})) (k < L), s_L = W_{L-1}(s_{L-1})."""
    net.require_chain("EP and CHL (a layered Hopfield energy)")
    dt = wide(dtype)
    edge = lambda k, s: net.apply_map(k, net.layer_params(params, k), s, dtype).astype(dt)  # noqa: E731
    return tuple(forward(net, params, x, dtype, node=lambda j, a: sigma(a), edge=edge).states[1:])


def _start_states(net: LayeredNet, params, x, rule) -> States:
    dtype, sigma = compute_dtype(rule.dtype), SIGMAS[rule.activation]
    forward = functools.partial(_forward_states, net, dtype=dtype, sigma=sigma)
    if rule.start == "forward":
        return forward(params, x)
    return tuple(jnp.zeros(s.shape, s.dtype) for s in jax.eval_shape(forward, params, x))


def _free_phase(net: LayeredNet, params, x, rule) -> States:
    start = _start_states(net, params, x, rule)
    return _relax(net, params, x, start, rule, rule.free_steps, _free)


def _contrast(net: LayeredNet, params, x, s_a: States, s_b: States, dtype):
    """∂Φ/∂θ(s_a) - ∂Φ/∂θ(s_b), the states held fixed: one ``jax.grad`` of Φ(s_a) - Φ(s_b)."""
    s_a, s_b = jax.lax.stop_gradient((s_a, s_b))

    def difference(p):
        return primitive(net, p, x, s_a, dtype) - primitive(net, p, x, s_b, dtype)

    return jax.grad(difference)(params)


def _scaled(grads, scale):
    return jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)


def _targets_and_loss(s_L, y, rule):
    t = targets_as_array(s_L, y)
    return t, jnp.mean(per_example_loss(rule.loss, s_L, t))


def _ep_grad(net: LayeredNet, params, x, y, rule: EquilibriumProp) -> tuple[object, Aux]:
    check_batch(net, x, y)
    dtype = compute_dtype(rule.dtype)
    s_free = _free_phase(net, params, x, rule)
    t, loss = _targets_and_loss(s_free[-1], y, rule)
    beta = jnp.asarray(rule.beta, t.dtype)

    def nudged_phase(b):
        return _relax(net, params, x, s_free, rule, rule.nudged_steps, _nudged(rule.loss, b, t))

    if rule.nudging == "one_sided":
        s_a, s_b, scale = nudged_phase(beta), s_free, -1.0 / (beta * x.shape[0])
    else:  # symmetric: the phases at +β and -β run side by side
        s_pm = jax.vmap(nudged_phase)(jnp.stack([beta, -beta]))
        s_a, s_b = (tuple(s[i] for s in s_pm) for i in (0, 1))
        scale = -1.0 / (2.0 * beta * x.shape[0])
    grads = _scaled(_contrast(net, params, x, s_a, s_b, dtype), scale)
    return grads, Aux(loss, s_free[-1])


def _chl_grad(net: LayeredNet, params, x, y, rule: ContrastiveHebbian) -> tuple[object, Aux]:
    check_batch(net, x, y)
    dtype = compute_dtype(rule.dtype)
    s_free = _free_phase(net, params, x, rule)
    t, loss = _targets_and_loss(s_free[-1], y, rule)
    start = (*s_free[:-1], t)
    s_clamped = _relax(net, params, x, start, rule, rule.clamped_steps, _clamped(t))
    grads = _scaled(_contrast(net, params, x, s_clamped, s_free, dtype), -1.0 / x.shape[0])
    return grads, Aux(loss, s_free[-1])


def _predict(net: LayeredNet, params, x, rule) -> jax.Array:
    return _free_phase(net, params, x, rule)[-1]


@_jit()
def start_states(net: LayeredNet, params, x: jax.Array, rule: EnergyRule) -> States:
    """Where the free phase starts: s_k = 0 for all k (``rule.start == "zero"``), or the
    feedforward pass s_k = σ(W_{k-1}(s_{k-1})), s_L = W_{L-1}(s_{L-1}) (``"forward"``)."""
    return _start_states(net, params, x, rule)


@_jit("steps")
def relax(
    net: LayeredNet,
    params,
    x: jax.Array,
    states: States,
    rule: EnergyRule,
    steps: int,
    y: jax.Array | None = None,
    beta=None,
) -> States:
    """``steps`` Jacobi steps s_k ← σ(∂Φ/∂s_k) (k < L) from ``states``, with the output equation
    of the phase chosen by the arguments::

      free (``y`` None):                  s_L ← W_{L-1}(s_{L-1})
      nudged (``y`` and ``beta`` given):  s_L ← W_{L-1}(s_{L-1}) - β ∇ℓ(s_L, t)
      clamped (``y`` given, ``beta`` None): s_L = t

    with t the targets ``y`` as an array (one-hot for labels) and ℓ = ``rule.loss``."""
    states = tuple(states)
    if y is None:
        return _relax(net, params, x, states, rule, steps, _free)
    t = targets_as_array(states[-1].astype(wide(compute_dtype(rule.dtype))), y)
    if beta is None:
        states = (*states[:-1], t)
        return _relax(net, params, x, states, rule, steps, _clamped(t))
    return _relax(net, params, x, states, rule, steps, _nudged(rule.loss, beta, t))


@_jit()
def free_phase(net: LayeredNet, params, x: jax.Array, rule: EnergyRule) -> States:
    """The free state s^0: ``rule.free_steps`` free Jacobi steps from :func:`start_states`."""
    return _free_phase(net, params, x, rule)


@_jit()
def predict(net: LayeredNet, params, x: jax.Array, rule: EnergyRule) -> jax.Array:
    """The prediction ŷ = s^0_L of the recurrent net: the output of the free phase."""
    return _predict(net, params, x, rule)


@_jit()
def ep_grad(
    net: LayeredNet, params, x: jax.Array, y: jax.Array, rule: EquilibriumProp
) -> tuple[object, Aux]:
    """The EP gradient estimate (same tree as ``params``) and :class:`~dualprop_jax.core.states.Aux`
    (the batch-mean loss ℓ(s^0_L, y) and the free output s^0_L)::

      one-sided:  -(1/β)  (∂Φ/∂θ(s^β) - ∂Φ/∂θ(s^0))  / B
      symmetric:  -(1/2β) (∂Φ/∂θ(s^β) - ∂Φ/∂θ(s^-β)) / B

    with s^{±β} the nudged phases of ``rule.nudged_steps`` steps from the free state s^0."""
    return _ep_grad(net, params, x, y, rule)


@_jit()
def chl_grad(
    net: LayeredNet, params, x: jax.Array, y: jax.Array, rule: ContrastiveHebbian
) -> tuple[object, Aux]:
    """The CHL gradient -(∂Φ/∂θ(s^clamped) - ∂Φ/∂θ(s^0)) / B (same tree as ``params``) and
    :class:`~dualprop_jax.core.states.Aux`; s^clamped runs ``rule.clamped_steps`` steps from s^0
    with s_L = t. For a dense map: -(s^c_{k+1} (s^c_k)ᵀ - s^0_{k+1} (s^0_k)ᵀ) / B."""
    return _chl_grad(net, params, x, y, rule)
