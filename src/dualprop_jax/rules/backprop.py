"""Back-propagation as a rule: the gradient every other rule is compared with."""

from __future__ import annotations

from typing import ClassVar

from dualprop_jax import core
from dualprop_jax.rules.base import DTYPES, LOSSES, Rule, check_choice, ruleclass


@ruleclass
class Backprop(Rule):
    """Back-propagation: ∇_θ of the batch-mean loss ℓ(ŷ(θ, x), y) (:func:`~.core.bp_grad`).

    Attributes:
      loss: ``"softmax_ce"`` or ``"squared_error"``, as for :class:`~.dual_prop.DualProp`.
      dtype: compute dtype of the layer maps.
    """

    loss: str = "softmax_ce"
    dtype: str = "float32"

    name: ClassVar[str] = "bp"

    def __post_init__(self) -> None:
        check_choice("backprop", "loss", self.loss, LOSSES)
        check_choice("backprop", "dtype", self.dtype, DTYPES)

    def grad(self, net, params, state, x, y):
        return (*core.bp_grad(net, params, x, y, self), state)


def backprop(*args, **settings) -> Backprop:
    """The back-propagation rule (:class:`Backprop`, same arguments), validated."""
    return Backprop(*args, **settings)
