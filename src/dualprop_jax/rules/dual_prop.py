"""Dual propagation as a rule: DP and DP⊤, and their variants as combinations of the core's parts.

One dataclass, :class:`DualProp`, holds the settings; its :meth:`~DualProp.parts` picks the node
solver's feedback part (the transpose vjp, or Kolen–Pollack's B_k) and update part (plain, or
damped with the Lipschitz coefficients of its power-iteration state), so damped Kolen–Pollack
DP is ``dual_prop(damped=True, feedback="kolen_pollack")`` and no new branch.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dualprop_jax import core
from dualprop_jax.core import feedback as kp
from dualprop_jax.core.states import Aux, batch_loss
from dualprop_jax.rules.base import (
    DTYPES,
    LOSSES,
    Rule,
    bad,
    check_choice,
    check_count,
    check_flag,
    check_real,
    leaf,
    ruleclass,
)

VARIANTS = ("dp", "dp_top")
"""DP (Høier, Staudt & Zach 2023) and DP⊤ (Høier & Zach 2024): (c⁺, c⁻) = (α, 1−α) or (1−α, α)."""
FEEDBACKS = ("transpose", "kolen_pollack")
"""Where DP's feedback fb_k comes from: J_kᵀ of the map itself, or separate weights B_k (KP)."""
OUTPUTS = ("linearised", "exact")
"""The output dyad: nudged by βg (linearised loss), or the exact squared-error closed form."""
SCHEDULES = ("alternating", "bottom_up")
"""Orders of the extra inference passes: j = 1..N then N−1..1, or j = 1..N only."""
AUTO_UNROLL_PASSES = 16
"""With ``unroll=None``, pass loops of up to this many passes are unrolled fully."""
AUTO_UNROLL_FACTOR = 4
"""With ``unroll=None``, longer pass loops run this many passes per loop iteration."""


@ruleclass
class DualProp(Rule):
    """Dual propagation: DP (``variant="dp"``) or DP⊤ (``variant="dp_top"``).

    Attributes:
      variant: ``"dp"`` (Høier et al. 2023; RAOVR in the 2024 code) or ``"dp_top"`` (DP⊤, the
        Lagrangian/adjoint form of Høier & Zach 2024). Also the rule's ``name``.
      alpha: nudging asymmetry α ∈ [0, 1]; the mean is s̄ = α s⁺ + (1-α) s⁻. A traced leaf.
      beta: nudging strength β > 0 (finite). A traced leaf.
      loss: ``"softmax_ce"`` (softmax cross-entropy) or ``"squared_error"`` (½‖ŷ-y‖²).
      schedule: what each extra pass does: ``"alternating"`` (j = 1..N, then N-1..1; the 2023
        MLP code) or ``"bottom_up"`` (j = 1..N; the 2024 scripts).
      passes: extra passes after the forward pass, output nudge and top-down sweep (0 = the
        BP-cost schedule), in a ``lax.fori_loop``.
      sweep: run the top-down sweep (default). False starts the passes from the forward state
        with only the output nudged: with ``schedule="bottom_up"`` and ``passes=K-1`` that is
        the 2024 scripts' ``fwK`` schedule. Needs ``passes >= 1``.
      unroll: passes per iteration of the pass loop; None (default) unrolls fully up to
        :data:`AUTO_UNROLL_PASSES` passes, else :data:`AUTO_UNROLL_FACTOR` (:attr:`unroll_factor`).
      dtype: compute dtype of the layer maps (``"float32"``, ``"float64"``, ``"bfloat16"``).
      fast: the fast path (:mod:`~dualprop_jax.core.fast`); only for α = ½ and no passes.
      damped: the damped updates of Høier & Zach 2024 (:class:`~.core.nodes.DampedUpdate`),
        γ_k by power iteration; the iteration vectors are the rule's state (:meth:`init`).
      power_iterations: power-iteration steps per gradient call (warm-started from the state).
      feedback: ``"transpose"`` (fb = J_kᵀ δ, the map's own vjp) or ``"kolen_pollack"``
        (:mod:`~dualprop_jax.core.feedback`: separate weights B_k in ``params["feedback"]``,
        made by :meth:`init_params`, learning by W_k's Hebbian gradient).
      output: ``"linearised"`` (s± = a ∓ c± βg) or ``"exact"``: the squared-error closed form
        s⁺ = (a + c⁺β y)/(1 + c⁺β), s⁻ = (a - c⁻β y)/(1 - c⁻β); needs ``loss="squared_error"``
        and c⁻β < 1.

    The gradient is ∇_θ J of the local objective (:mod:`~dualprop_jax.core.hebbian`) at the
    dyads of :mod:`~dualprop_jax.core.inference`: -(1/β) δ_j s̄_iᵀ / B per dense edge (i, j).
    """

    variant: str = "dp_top"
    alpha: Any = leaf(0.5)
    beta: Any = leaf(0.01)
    passes: int = 0
    schedule: str = "alternating"
    loss: str = "softmax_ce"
    dtype: str = "float32"
    fast: bool = False
    sweep: bool = True
    unroll: int | None = None
    damped: bool = False
    power_iterations: int = 1
    feedback: str = "transpose"
    output: str = "linearised"

    names: ClassVar[tuple[str, ...]] = VARIANTS

    def __post_init__(self) -> None:
        who = "dual_prop"
        check_choice(who, "variant", self.variant, VARIANTS)
        unit = "a real number in [0, 1]"
        alpha = check_real(who, "alpha", self.alpha, lambda a: 0 <= a <= 1, unit)
        beta = check_real(who, "beta", self.beta, lambda b: b > 0, "a finite real number > 0")
        for f, allowed in (("loss", LOSSES), ("schedule", SCHEDULES), ("dtype", DTYPES),
                           ("feedback", FEEDBACKS), ("output", OUTPUTS)):  # fmt: skip
            check_choice(who, f, getattr(self, f), allowed)
        check_count(who, "passes", self.passes, 0)
        check_count(who, "power_iterations", self.power_iterations, 1)
        for f in ("fast", "sweep", "damped"):
            check_flag(who, f, getattr(self, f))
        if self.unroll is not None:
            check_count(who, "unroll", self.unroll, 1)
        if not self.sweep and (self.passes < 1 or self.fast):
            raise bad(who, "sweep", self.sweep, "True unless passes >= 1 and not fast (without "
                      "the sweep and extra passes the hidden layers get no error)")  # fmt: skip
        self._check_fast(who, alpha)
        self._check_exact(who, alpha, beta)

    def _check_fast(self, who: str, alpha: float | None) -> None:
        if not self.fast:
            return
        if (alpha is not None and alpha != 0.5) or self.passes != 0:
            raise bad(who, "fast", self.fast, "False unless alpha == 0.5 and passes == 0 (fast "
                      "path = one-sweep DP at α = ½)")  # fmt: skip
        if self.damped or self.feedback != "transpose" or self.output != "linearised":
            raise bad(who, "fast", self.fast, "False with damped=True, feedback='kolen_pollack' "
                      "or output='exact' (the fast path is plain one-sweep DP)")  # fmt: skip

    def _check_exact(self, who: str, alpha: float | None, beta: float | None) -> None:
        if self.output != "exact":
            return
        if self.loss != "squared_error":
            raise bad(who, "output", self.output, "'linearised' unless loss='squared_error' (the "
                      "exact output dyad is the closed form of squared error)")  # fmt: skip
        if alpha is None or beta is None:
            return
        c_minus = (1.0 - alpha) if self.variant == "dp" else alpha
        if c_minus * beta >= 1:
            which = "(1-α)β" if self.variant == "dp" else "αβ"
            raise ValueError(
                f"dual_prop(output='exact') needs {which} < 1, got {which} = {c_minus * beta:g} "
                f"(alpha={alpha:g}, beta={beta:g}): the exact output state "
                "s⁻ = (a - c⁻β y)/(1 - c⁻β) blows up at c⁻β = 1. Use a smaller beta, or "
                "output='linearised'."
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        """The rule's name: its variant, ``"dp"`` or ``"dp_top"``."""
        return self.variant

    @property
    def label(self) -> str:
        """``variant``, plus ``+fast``, ``+damped``, ``+kp`` and ``+exact`` for the options set."""
        kp, exact = self.feedback == "kolen_pollack", self.output == "exact"
        tags = (("fast", self.fast), ("damped", self.damped), ("kp", kp), ("exact", exact))
        return "+".join([self.variant, *(tag for tag, on in tags if on)])

    @property
    def on_graphs(self) -> bool:  # type: ignore[override]
        """Damped and Kolen–Pollack DP are defined for layered chains only."""
        return not (self.damped or self.feedback == "kolen_pollack")

    @property
    def unroll_factor(self) -> int:
        """Passes per iteration of the pass loop: ``unroll``, or all ``passes`` up to
        :data:`AUTO_UNROLL_PASSES` (a straight-line program XLA fuses across passes), else
        :data:`AUTO_UNROLL_FACTOR` (compile time stays bounded for long schedules)."""
        if self.unroll is not None:
            return max(1, min(self.unroll, max(self.passes, 1)))
        if self.passes <= AUTO_UNROLL_PASSES:
            return max(self.passes, 1)
        return AUTO_UNROLL_FACTOR

    @property
    def nudge_coefficients(self) -> tuple[Any, Any]:
        """(c⁺, c⁻): DP (α, 1-α), DP⊤ (1-α, α) (:func:`~dualprop_jax.core.nodes.coefficients`)."""
        return core.nodes.coefficients(self.variant, self.alpha)

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        del out["variant"]  # it is the name
        return out

    @classmethod
    def from_settings(cls, name: str, **settings) -> DualProp:
        return cls(variant=name, **settings)

    def init(self, net, params):
        """``()``, or for the damped rule its power-iteration state
        (:func:`~dualprop_jax.core.damping.init_damping`)."""
        return core.init_damping(net, params, self.dtype) if self.damped else ()

    def init_params(self, net, params, key):
        """``params``, plus the feedback weights B_k under ``params["feedback"]`` for KP-DP."""
        if self.feedback == "kolen_pollack":
            return kp.init_feedback(net, params, key)
        return params

    def parts(self, net, params, state) -> tuple[core.Parts, Any]:
        """The node solver's parts for this rule, and the rule's next state."""
        feedback = core.transpose_feedback
        if self.feedback == "kolen_pollack":
            kp.check_feedback(net, params)
            feedback = kp.kolen_pollack_feedback
        update = core.plain_update
        if self.damped:
            lipschitz, state = core.lipschitz_damping(net, params, state, self.power_iterations)
            update = core.DampedUpdate(lipschitz)
        return core.Parts(feedback, update), state

    def infer(self, net, params, state, x, y) -> core.Dyads:
        """The dyads of a batch with this rule's parts (:func:`~dualprop_jax.core.infer`)."""
        parts, _ = self.parts(net, params, state)
        return core.infer(net, params, x, y, self, parts)[0]

    def grad(self, net, params, state, x, y):
        """``(grads, aux, state)``: ∇_θ J at the inferred dyads (the fast path with ``fast``)."""
        if self.fast:
            grads, aux = core.fast_grad(net, params, x, y, self)
            return grads, aux, state
        parts, state = self.parts(net, params, state)
        dyads, y_hat, t, kept = core.infer_kept(net, params, x, y, self, parts)
        grads = core.hebbian_grad(net, params, dyads, self, kept)
        if self.feedback == "kolen_pollack":
            grads = kp.feedback_grads(grads)
        return grads, Aux(batch_loss(self.loss, y_hat, t), y_hat), state

    def metrics(self, net, params, state):
        """KP-DP: the angle (degrees) between B_k and W_k per map; damped: γ_k per map."""
        out = {}
        if self.feedback == "kolen_pollack":
            out.update(core.feedback_angles(net, params))
        if self.damped:
            out.update(core.damping_norms(net, params, state))
        return out


def dual_prop(*args, **settings) -> DualProp:
    """The dual-propagation rule (:class:`DualProp`, same arguments), validated:
    ``dual_prop("dp", alpha=1.0)``."""
    return DualProp(*args, **settings)


def damped_dual_prop(variant: str = "dp_top", **settings) -> DualProp:
    """Damped (Lipschitz) DP / DP⊤ of Høier & Zach 2024: ``dual_prop(damped=True, ...)``."""
    return DualProp(variant, damped=True, **settings)


def kolen_pollack(variant: str = "dp", **settings) -> DualProp:
    """Kolen–Pollack DP (Høier et al. 2023): ``dual_prop(feedback="kolen_pollack", ...)``."""
    return DualProp(variant, feedback="kolen_pollack", **settings)
