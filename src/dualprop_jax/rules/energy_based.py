"""The energy-based baselines as rules: equilibrium propagation and contrastive Hebbian learning.

Both train the recurrent (Hopfield-like) net of the layered energy of
:mod:`~dualprop_jax.core.energy` from two relaxed states; their prediction is the output of the
free phase. Defaults follow the EP literature (Ernoult et al. 2019; Laborieux et al. 2021).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

from dualprop_jax.core import energy
from dualprop_jax.rules.base import (
    DTYPES,
    LOSSES,
    Rule,
    check_choice,
    check_count,
    check_real,
    leaf,
    ruleclass,
)

NUDGINGS = ("one_sided", "symmetric")
"""EP's nudged phases: one at +β, or two at ±β (Laborieux et al. 2021)."""
SIGMAS = tuple(energy.SIGMAS)
"""EP / CHL state activation σ: clip(x, 0, 1) (the 'hard sigmoid' of the EP literature), or
identity (a linear Hopfield net, for closed forms)."""
ORDERS = ("synchronous", "odd_even")
"""EP / CHL relaxation order: all layers at once (Jacobi), or odd layers then even layers."""
STARTS = ("zero", "forward")
"""Where the free phase starts: every state at 0, or the feedforward pass."""
INITS = ("fan_in_uniform", "model")
"""EP / CHL initial weights: U(±1/√fan_in) (PyTorch's default, the EP literature's), or the
model's own (He for the library's ReLU nets)."""


@dataclasses.dataclass(frozen=True)
class Relaxation(Rule):
    """What EP and CHL share: the energy's relaxation and the loss of the free output.

    Attributes:
      free_steps: T, relaxation steps of the free phase (default 100).
      loss: ``"squared_error"`` (default, the EP literature's MSE on a linear output) or
        ``"softmax_ce"``.
      activation: σ of the hidden states (:data:`SIGMAS`): ``"clip"`` (default) or ``"identity"``.
      start: where the free phase starts (:data:`STARTS`): ``"zero"`` (default) or ``"forward"``.
      order: ``"synchronous"`` (default) or ``"odd_even"`` (:data:`ORDERS`).
      dtype: compute dtype of the layer maps.
      unroll: relaxation steps per iteration of the phase loops (``fori_loop(unroll=...)``).
      weight_init: the initial weights (:data:`INITS`): ``"fan_in_uniform"`` (default) redraws
        every kernel and bias from U(±1/√fan_in) (:func:`~dualprop_jax.core.energy.fan_in_uniform`);
        ``"model"`` keeps the model's. With the CNN's He initialisation 87% of the clipped
        states sit at 0 or 1 and the free phase has not settled after 100 steps (residual
        0.31); with U(±1/√fan_in), 46% and 2e-6 (`experiments/relaxation_check.py`).
    """

    on_graphs: ClassVar[bool] = False  # a layered Hopfield energy

    free_steps: int = 100
    loss: str = "squared_error"
    activation: str = "clip"
    start: str = "zero"
    order: str = "synchronous"
    dtype: str = "float32"
    unroll: int = 1
    weight_init: str = "fan_in_uniform"

    def _check_relaxation(self, who: str) -> None:
        check_count(who, "free_steps", self.free_steps, 1)
        check_count(who, "unroll", self.unroll, 1)
        for f, allowed in (("loss", LOSSES), ("activation", SIGMAS), ("start", STARTS),
                           ("order", ORDERS), ("dtype", DTYPES),
                           ("weight_init", INITS)):  # fmt: skip
            check_choice(who, f, getattr(self, f), allowed)

    def init(self, net, params):
        """``()``; warns (``UserWarning``) about a setup that would train no better than chance
        (:func:`~dualprop_jax.core.energy.setup_problems`)."""
        for problem in energy.setup_problems(net, params, self.phase_steps):
            warnings.warn(f"{self.label}: {problem}", UserWarning, stacklevel=2)
        return ()

    def init_params(self, net, params, key):
        """``params`` redrawn by :func:`~dualprop_jax.core.energy.fan_in_uniform` (``weight_init=
        "fan_in_uniform"``), or as they are (``"model"``)."""
        return params if self.weight_init == "model" else energy.fan_in_uniform(net, params, key)

    def predict(self, net, params, x):
        """The output of the free phase (:func:`~dualprop_jax.core.energy.predict`)."""
        return energy.predict(net, params, x, self)


@ruleclass
class EquilibriumProp(Relaxation):
    """Equilibrium propagation (Scellier & Bengio 2017) on the layered net's energy.

    The net EP trains is the recurrent (Hopfield-like) net of the primitive function
    Φ(x, s; θ) = Σ_{k=0..L-1} ⟨s_{k+1}, W_k(s_k)⟩ (s_0 = x; W_k with its bias, conv, pool), with
    the relaxation s_k ← σ(∂Φ/∂s_k) = σ(W_{k-1}(s_{k-1}) + J_kᵀ s_{k+1}) of all layers at once
    (J_kᵀ s_{k+1}: the vjp of map k at s_k), and a linear output layer s_L ← W_{L-1}(s_{L-1}).
    Its prediction (:meth:`predict`) is the output of the free phase, not the feedforward pass.

    Phases (``lax.fori_loop``s): a free phase of ``free_steps`` (T) steps from ``start``, then
    ``nudged_steps`` (K) steps from the free state with the output pulled by -β ∂ℓ/∂s_L
    (one-sided), or two such phases at +β and -β (``nudging="symmetric"``, Laborieux et al.
    2021). Gradient (the update direction of a descent step, like BP's)::

      one-sided:  ∇θ ≈ -(1/β) (∂Φ/∂θ(s^β) - ∂Φ/∂θ(s^0)) / B
      symmetric:  ∇θ ≈ -(1/(2β)) (∂Φ/∂θ(s^β) - ∂Φ/∂θ(s^-β)) / B

    It tends to the gradient of ℓ at the free fixed point as β → 0 with converged phases;
    the symmetric form's bias is O(β²) instead of O(β).

    Attributes:
      beta: nudging strength β > 0 (a traced leaf). Default 0.5 (Ernoult et al. 2019,
        784-512-512-10; Laborieux et al. 2021, conv nets).
      free_steps: T, relaxation steps of the free phase. Default 100 (Ernoult et al. 2019 for
        two hidden layers; Laborieux et al. 2021 used 250 for their conv nets).
      nudged_steps: K, steps of each nudged phase. Default 20 (Ernoult et al. 2019; 30 for
        Laborieux et al.'s conv nets).
      nudging: ``"symmetric"`` (default; ±β, Laborieux et al. 2021) or ``"one_sided"``.
      loss: ``"squared_error"`` (default, the EP literature's MSE on a linear output) or
        ``"softmax_ce"``.
      activation: σ of the hidden states: ``"clip"`` (clip(x, 0, 1), the 'hard sigmoid' of
        Laborieux et al. 2021; default) or ``"identity"`` (a linear net, for closed forms).
        The model's own activation f is not used.
      start: where the free phase starts: ``"zero"`` (every state 0; default) or
        ``"forward"`` (the feedforward pass with σ).
      order: ``"synchronous"`` (default: every layer from the previous step's states, as in
        Laborieux et al. 2021's code) or ``"odd_even"`` (odd layers, then even layers from
        them: exact block updates of the energy, which settle where synchronous updates of
        strongly coupled layers, e.g. He-initialised conv nets, cycle with period 2).
      dtype: compute dtype of the layer maps.
      unroll: relaxation steps per iteration of the phase loops (``fori_loop(unroll=...)``).
    """

    beta: Any = leaf(0.5)
    nudged_steps: int = 20
    nudging: str = "symmetric"

    name: ClassVar[str] = "ep"

    def __post_init__(self) -> None:
        who = "equilibrium_prop"
        check_real(who, "beta", self.beta, lambda b: b > 0, "a finite real number > 0")
        check_count(who, "nudged_steps", self.nudged_steps, 1)
        check_choice(who, "nudging", self.nudging, NUDGINGS)
        self._check_relaxation(who)

    @property
    def label(self) -> str:
        """``ep``, plus ``+one_sided`` and ``+odd_even`` for those settings."""
        tags = [t for t, on in (("one_sided", self.nudging == "one_sided"),
                                ("odd_even", self.order == "odd_even")) if on]  # fmt: skip
        return "+".join([self.name, *tags])

    @property
    def phase_steps(self) -> int:
        """K, the steps of each nudged phase."""
        return self.nudged_steps

    @property
    def relaxation_steps(self) -> int:
        """Relaxation steps per gradient: T + K (one-sided) or T + 2K (symmetric)."""
        return self.free_steps + (2 if self.nudging == "symmetric" else 1) * self.nudged_steps

    def grad(self, net, params, state, x, y):
        return (*energy.ep_grad(net, params, x, y, self), state)


@ruleclass
class ContrastiveHebbian(Relaxation):
    """Contrastive Hebbian learning (Movellan 1991) on the same energy and relaxation as
    :class:`EquilibriumProp`: a free phase, then a phase of ``clamped_steps`` from the free
    state with the output clamped to the target, s_L = y. Gradient::

      ∇θ = -(∂Φ/∂θ(s^clamped) - ∂Φ/∂θ(s^free)) / B

    (anti-Hebbian at the free state, Hebbian at the clamped one). Targets must be labels
    (one-hot) or arrays of the output's shape; with ``loss="softmax_ce"`` only the reported
    loss changes.

    Attributes: as for :class:`EquilibriumProp`, without β and nudging; ``clamped_steps``
    (default 20) replaces ``nudged_steps``.
    """

    clamped_steps: int = 20

    name: ClassVar[str] = "chl"

    def __post_init__(self) -> None:
        check_count("chl", "clamped_steps", self.clamped_steps, 1)
        self._check_relaxation("chl")

    @property
    def label(self) -> str:
        """``chl``, plus ``+odd_even`` for that relaxation order."""
        return f"{self.name}+odd_even" if self.order == "odd_even" else self.name

    @property
    def phase_steps(self) -> int:
        """K, the steps of the clamped phase."""
        return self.clamped_steps

    @property
    def relaxation_steps(self) -> int:
        """Relaxation steps per gradient: T + K."""
        return self.free_steps + self.clamped_steps

    def grad(self, net, params, state, x, y):
        return (*energy.chl_grad(net, params, x, y, self), state)


def equilibrium_prop(**settings) -> EquilibriumProp:
    """Equilibrium propagation (see :class:`EquilibriumProp`), validated."""
    return EquilibriumProp(**settings)


def chl(**settings) -> ContrastiveHebbian:
    """Contrastive Hebbian learning (see :class:`ContrastiveHebbian`), validated."""
    return ContrastiveHebbian(**settings)
