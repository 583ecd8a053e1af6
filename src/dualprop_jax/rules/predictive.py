"""Rules on the predictive-coding energy: predictive coding (inference learning) with its
fixed-prediction form, and equilibrium propagation on that energy.

The energies, relaxations and gradients are :mod:`dualprop_jax.core.predictive` and
:mod:`dualprop_jax.core.pcn_equilibrium`; the prediction of both rules is the feedforward
pass (the free equilibrium of the PC energy), as for BP and DP.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dualprop_jax.core import pcn_equilibrium, predictive
from dualprop_jax.rules.base import (
    DTYPES,
    LOSSES,
    Rule,
    check_choice,
    check_count,
    check_flag,
    check_real,
    leaf,
    ruleclass,
)
from dualprop_jax.rules.energy_based import NUDGINGS

SCHEMES = pcn_equilibrium.SCHEMES
"""Orders of EP-on-PC's nudged iterations: ``"backward"`` (Gauss–Seidel), ``"synchronous"``."""


@ruleclass
class PredictiveCoding(Rule):
    """Predictive coding: value nodes relaxed on F = Σ_{j<N} ½‖v_j − μ_j‖² + ℓ(μ_N, y) with the
    output clamped to the target, then a Hebbian weight update ∂F/∂θ / B at the relaxed nodes
    (:func:`~dualprop_jax.core.predictive.pc_grad`). With ``fixed_prediction=True`` the
    predictions stay at the feedforward pass while the errors relax
    (:func:`~dualprop_jax.core.predictive.fixed_prediction_grad`): at ``step_size`` 1 and at
    least as many steps as the longest path to the output, the update is BP's gradient.

    Attributes:
      inference_steps: T, relaxation steps per gradient (default 20).
      step_size: γ of v ← v − γ ∂F/∂v (a traced leaf; default 0.1). The energy cannot rise
        at a step when γ < 2/L, L a Lipschitz constant of ∂F/∂v (the descent lemma).
      fixed_prediction: relax the errors with the feedforward predictions held (default False).
      loss: ``"softmax_ce"`` (default) or ``"squared_error"`` (exactly a clamped output node).
      dtype: compute dtype of the layer maps.
    """

    inference_steps: int = 20
    step_size: Any = leaf(0.1)
    fixed_prediction: bool = False
    loss: str = "softmax_ce"
    dtype: str = "float32"

    name: ClassVar[str] = "pc"

    def __post_init__(self) -> None:
        who = "predictive_coding"
        check_count(who, "inference_steps", self.inference_steps, 1)
        check_real(who, "step_size", self.step_size, lambda g: g > 0, "a finite real number > 0")
        check_flag(who, "fixed_prediction", self.fixed_prediction)
        check_choice(who, "loss", self.loss, LOSSES)
        check_choice(who, "dtype", self.dtype, DTYPES)

    @property
    def label(self) -> str:
        """``pc``, or ``pc+fixed`` under the fixed-prediction assumption."""
        return f"{self.name}+fixed" if self.fixed_prediction else self.name

    def grad(self, net, params, state, x, y):
        fn = predictive.fixed_prediction_grad if self.fixed_prediction else predictive.pc_grad
        return (*fn(net, params, x, y, self), state)


def predictive_coding(**settings) -> PredictiveCoding:
    """Predictive coding (see :class:`PredictiveCoding`), validated."""
    return PredictiveCoding(**settings)


@ruleclass
class PCNEquilibriumProp(Rule):
    """Equilibrium propagation on the predictive-coding energy
    F_β = Σ_{j=1}^{N} ½‖v_j − μ_j‖² + β ℓ(v_N, y) (Kerjan, Høier & Scellier 2026;
    :mod:`~dualprop_jax.core.pcn_equilibrium`, equations (1)-(5) there).

    The free equilibrium is the feedforward pass (no relaxation); each nudged phase runs K
    iterations of the stationarity equations (2) from it, and the update is the centered (3)
    or one-sided (4) difference of the Hebbian ∂F/∂θ, which tends to BP's gradient as β → 0
    (at O(β²) centered, O(β) one-sided).

    Attributes:
      beta: nudging strength β > 0 (a traced leaf; default 2e-4, as small as that work's
        smallest: only the errors are carried, so a small β costs no float32 precision).
      nudging: ``"symmetric"`` (default: two phases at ±β, centered EP) or ``"one_sided"``.
      scheme: ``"backward"`` (default: errors from the output down, each node reading its
        children's new ones) or ``"synchronous"`` (every node reads the last iteration's).
      nudged_steps: K, iterations of each nudged phase; ``None`` (default) takes the number
        of layers (:func:`~dualprop_jax.core.pcn_equilibrium.layers`), which the synchronous
        scheme needs for the nudge to reach the input's first layer.
      loss: ``"softmax_ce"`` (default) or ``"squared_error"``, the cost ℓ(v_N, y).
      dtype: compute dtype of the layer maps.
    """

    beta: Any = leaf(2e-4)
    nudging: str = "symmetric"
    scheme: str = "backward"
    nudged_steps: int | None = None
    loss: str = "softmax_ce"
    dtype: str = "float32"

    name: ClassVar[str] = "ep_pcn"

    def __post_init__(self) -> None:
        who = "ep_pcn"
        check_real(who, "beta", self.beta, lambda b: b > 0, "a finite real number > 0")
        check_choice(who, "nudging", self.nudging, NUDGINGS)
        check_choice(who, "scheme", self.scheme, SCHEMES)
        if self.nudged_steps is not None:
            check_count(who, "nudged_steps", self.nudged_steps, 1)
        check_choice(who, "loss", self.loss, LOSSES)
        check_choice(who, "dtype", self.dtype, DTYPES)

    @property
    def label(self) -> str:
        """``ep_pcn``, plus ``+one_sided`` and ``+synchronous`` where set."""
        tags = [t for t, on in (("one_sided", self.nudging == "one_sided"),
                                ("synchronous", self.scheme == "synchronous")) if on]  # fmt: skip
        return "+".join([self.name, *tags])

    def steps(self, net) -> int:
        """K for ``net``: ``nudged_steps``, or the number of layers."""
        return self.nudged_steps or pcn_equilibrium.layers(net)

    def grad(self, net, params, state, x, y):
        grads, aux = pcn_equilibrium.pcn_ep_grad(net, params, x, y, self, self.steps(net))
        return grads, aux, state


def ep_pcn(**settings) -> PCNEquilibriumProp:
    """Equilibrium propagation on the predictive-coding energy (see
    :class:`PCNEquilibriumProp`), validated."""
    return PCNEquilibriumProp(**settings)
