"""Predictive coding (inference learning) as a rule, and its fixed-prediction form.

The energy, the relaxation and both gradients are :mod:`dualprop_jax.core.predictive`; the
prediction is the feedforward pass, as for BP and DP.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dualprop_jax.core import predictive
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
