"""Validated, frozen configuration of the dual-propagation learning rule.

Every field is checked when the config is built, so a bad value fails at once with a
``ValueError`` that names the field, the value given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

VARIANTS = ("dp", "dp_top")
LOSSES = ("softmax_ce", "squared_error")
SCHEDULES = ("alternating", "bottom_up")
DTYPES = ("float32", "float64", "bfloat16")


def _bad(field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"DPConfig.{field}={value!r} is invalid: {field} must be {allowed}.")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """Hyperparameters of dual propagation.

    Attributes:
      variant: ``"dp"`` (Høier et al. 2023; RAOVR in the 2024 code) or ``"dp_top"``
        (DP⊤, the Lagrangian/adjoint form of Høier & Zach 2024).
      alpha: nudging asymmetry α ∈ [0, 1]; the mean is s̄ = α s⁺ + (1-α) s⁻.
      beta: nudging strength β > 0 (finite).
      loss: ``"softmax_ce"`` (softmax cross-entropy) or ``"squared_error"`` (½‖ŷ-y‖²).
      schedule: what each extra inference pass does: ``"alternating"`` (a bottom-up sweep
        k = 1..L, then a top-down sweep k = L-1..1; the 2023 MLP code) or ``"bottom_up"``
        (one bottom-up sweep k = 1..L; the 2024 scripts).
      passes: number of extra passes after the default forward pass + output nudge + one
        top-down sweep (0 = the default, BP-cost schedule). Run in a ``lax.fori_loop``.
      dtype: compute dtype (``"float32"``, ``"float64"`` or ``"bfloat16"``). Parameters keep
        their own dtype; they are cast to this dtype inside the layer maps.
      fast: use the fast path (autodiff with the finite-difference dual activation, presynaptic
        factor from the forward pass). Only defined for α = ½ and ``passes == 0``.
    """

    variant: str = "dp_top"
    alpha: float = 0.5
    beta: float = 0.01
    loss: str = "softmax_ce"
    schedule: str = "alternating"
    passes: int = 0
    dtype: str = "float32"
    fast: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise _bad("variant", self.variant, f"one of {VARIANTS}")
        if not _is_real(self.alpha) or not (0.0 <= float(self.alpha) <= 1.0):
            raise _bad("alpha", self.alpha, "a real number in [0, 1]")
        if not _is_real(self.beta) or not math.isfinite(self.beta) or self.beta <= 0:
            raise _bad("beta", self.beta, "a finite real number > 0")
        if self.loss not in LOSSES:
            raise _bad("loss", self.loss, f"one of {LOSSES}")
        if self.schedule not in SCHEDULES:
            raise _bad("schedule", self.schedule, f"one of {SCHEDULES}")
        if not isinstance(self.passes, numbers.Integral) or isinstance(self.passes, bool):
            raise _bad("passes", self.passes, "a non-negative integer")
        if self.passes < 0:
            raise _bad("passes", self.passes, "a non-negative integer (0 = one top-down sweep)")
        if self.dtype not in DTYPES:
            raise _bad("dtype", self.dtype, f"one of {DTYPES}")
        if not isinstance(self.fast, bool):
            raise _bad("fast", self.fast, "True or False")
        if self.fast and (self.alpha != 0.5 or self.passes != 0):
            raise _bad(
                "fast",
                self.fast,
                "False unless alpha == 0.5 and passes == 0 (fast path = one-sweep DP at α = ½)",
            )
        # Normalise numeric types so equal configs hash equally (they are static jit args).
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "passes", int(self.passes))

    @property
    def nudge_coefficients(self) -> tuple[float, float]:
        """(c⁺, c⁻): s⁺ = f(a + c⁺ fb), s⁻ = f(a - c⁻ fb); output s± = a ∓ c± β g.

        DP: (α, 1-α).  DP⊤: (1-α, α).
        """
        if self.variant == "dp":
            return self.alpha, 1.0 - self.alpha
        return 1.0 - self.alpha, self.alpha

    def replace(self, **changes) -> DPConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
