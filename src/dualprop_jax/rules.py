"""Learning rules as values: one interface for DP, DP⊤ and BP (and the rules still to come).

A rule is an immutable pytree, in the spirit of optax's ``GradientTransformation``:

    rule = rules.dual_prop(variant="dp_top", alpha=0.5, beta=0.01)
    state = rule.init(net, params)                       # () for rules without state
    grads, aux = rule.grad(net, params, x, y)            # stateless rules
    grads, aux, state = rule.grad(net, params, x, y, state)

``grads`` has exactly the tree structure of ``params`` (any optax optimizer consumes it) and
``aux`` is :class:`~dualprop_jax.dyads.Aux` (the batch-mean loss ℓ and the prediction ŷ).

What changes the compiled program is static pytree metadata (the variant, passes, schedule,
loss, dtype, fast path); the hyperparameters α and β are pytree *leaves*. Passed as an argument
of a jitted function, a rule is traced, so a sweep over α or β compiles once:

    grad_fn = jax.jit(lambda rule, params, x, y: rule.grad(net, params, x, y))
    for beta in (1.0, 0.1, 0.01):
        grads, aux = grad_fn(rule.replace(beta=beta), params, x, y)   # one compilation

Closed over instead (a constant), α and β are folded into the program as numbers.

Names (``rule.name``) are the one vocabulary of the library, the CLI (``--rule``), the training
config, ``results.json`` and the benchmark: ``"dp"`` (Høier et al. 2023), ``"dp_top"`` (DP⊤,
Høier & Zach 2024) and ``"bp"`` (back-propagation). A new rule is one more class with ``name``,
``init`` and ``_grad`` (or ``grad``), made a pytree by :func:`register` and named in
:data:`RULES`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import jax
import numpy as np

from dualprop_jax import dyads, energy

VARIANTS = ("dp", "dp_top")
LOSSES = ("softmax_ce", "squared_error")
FEEDBACKS = ("transpose", "kolen_pollack")
"""Where DP's feedback fb_k comes from: J_kᵀ of the map itself, or separate weights B_k (KP)."""
OUTPUTS = ("linearised", "exact")
"""The output dyad: nudged by βg (linearised loss), or the exact squared-error closed form."""
NUDGINGS = ("one_sided", "symmetric")
"""EP's nudged phases: one at +β, or two at ±β (Laborieux et al. 2021)."""
SIGMAS = ("clip", "identity")
"""EP / CHL state activation σ: clip(x, 0, 1) (the 'hard sigmoid' of the EP literature), or
identity (a linear Hopfield net, for closed forms)."""
ORDERS = ("synchronous", "odd_even")
"""EP / CHL relaxation order: all layers at once (Jacobi), or odd layers then even layers."""
STARTS = ("zero", "forward")
"""Where the free phase of EP / CHL starts: every state at 0, or the feedforward pass."""
SCHEDULES = ("alternating", "bottom_up")
DTYPES = ("float32", "float64", "bfloat16")
AUTO_UNROLL_PASSES = 16
"""With ``unroll=None``, pass loops of up to this many passes are unrolled fully."""
AUTO_UNROLL_FACTOR = 4
"""With ``unroll=None``, longer pass loops run this many passes per loop iteration."""


def _bad(rule: str, field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{rule}.{field}={value!r} is invalid: {field} must be {allowed}.")


def _is_array(value: object) -> bool:
    return isinstance(value, jax.Array | np.ndarray | np.generic)


def _concrete(value: object) -> float | None:
    """The value of a scalar array, or None where it is traced (inside ``jit``/``vmap``)."""
    try:
        return float(value)
    except TypeError:  # jax.errors.ConcretizationTypeError and its kin are TypeErrors
        return None


def _real(value: object) -> float | None:
    """``value`` as a Python float when it is a real number; NaN for a traced real scalar
    (it has no value to check, and is accepted as it is); None for anything else."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if _is_array(value) and np.ndim(value) == 0 and np.issubdtype(value.dtype, np.floating):
        v = _concrete(value)
        return math.nan if v is None else v
    return None


def _is_traced(value: object) -> bool:
    return isinstance(value, jax.Array) and _concrete(value) is None


class Rule:
    """Base class of learning rules: a frozen dataclass registered as a pytree.

    Subclasses declare ``name`` and ``leaves`` (the field names that are traced pytree leaves;
    every other field is static metadata) and implement :meth:`grad`.
    """

    name: ClassVar[str]
    leaves: ClassVar[tuple[str, ...]] = ()

    @property
    def stateful(self) -> bool:
        """Whether :meth:`grad` needs the ``state`` that :meth:`init` makes."""
        return False

    def init(self, net, params) -> Any:
        """The rule's state for ``params`` (``()``: this rule carries none)."""
        del net, params
        return ()

    def init_params(self, net, params, key) -> Any:
        """``params`` with the rule's own trainable weights added (default: ``params`` as is).

        Kolen–Pollack DP adds its feedback weights B_k under ``params["feedback"]``: the
        optimizer then updates them with W_k, by the same Hebbian gradient and weight decay.
        """
        del net, key
        return params

    def predict(self, net, params, x) -> jax.Array:
        """The network's prediction ŷ for a batch ``x``: the feedforward output a_L.

        EP and CHL train a recurrent (Hopfield-like) net, whose prediction is the output of
        its free phase instead.
        """
        return net.forward(params, x, jax.numpy.dtype(getattr(self, "dtype", "float32")))

    def metrics(self, net, params, state) -> dict[str, jax.Array]:
        """Scalar diagnostics of the rule's own quantities, logged during training
        (e.g. the angle between KP's B_k and W_kᵀ, the damped rule's spectral norms γ_k)."""
        del net, params, state
        return {}

    def _grad(self, net, params, x, y):
        raise NotImplementedError

    def grad(self, net, params, x, y, state=None):
        """``(grads, aux)``, or ``(grads, aux, state)`` when a ``state`` is passed.

        ``grads`` has the structure of ``params``: the update direction of a gradient-descent
        step, as ``jax.grad`` of the batch-mean loss would give for BP.
        """
        if state is None:
            if self.stateful:
                raise ValueError(
                    f"rule {self.name!r} carries state: call rule.grad(net, params, x, y, state) "
                    "with state = rule.init(net, params)."
                )
            return self._grad(net, params, x, y)
        return self._grad_with_state(net, params, x, y, state)

    def _grad_with_state(self, net, params, x, y, state):
        """``(grads, aux, state)``; stateful rules override it (the state passes through)."""
        grads, aux = self._grad(net, params, x, y)
        return grads, aux, state

    def __eq__(self, other: object) -> bool:
        """Field by field; array leaves (traced α, β) compare by identity."""
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f), getattr(other, f)) for f in self.field_names())

    def __hash__(self) -> int:
        return hash(tuple(_hashable(getattr(self, f)) for f in self.field_names()))

    @property
    def label(self) -> str:
        """A short name for tables and file names: ``name``, plus ``+fast`` on the fast path."""
        return self.name

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> Rule:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., field: value, ...}``: JSON-ready, and :func:`from_dict` reads it back."""
        out: dict[str, Any] = {"name": self.name}
        for f in self.field_names():
            value = getattr(self, f)
            out[f] = float(value) if f in self.leaves else value
        return out


def register(cls):
    """Class decorator: register a frozen rule dataclass as a pytree.

    ``cls.leaves`` (e.g. ``("alpha", "beta")``) are the traced children; every other field is
    static metadata, part of the compiled program's identity.

    Unflattening bypasses ``__init__`` (JAX rebuilds pytrees with tracers and placeholders,
    which validation must not see).
    """
    static = tuple(f for f in cls.field_names() if f not in cls.leaves)

    def flatten_with_keys(rule):
        children = [(jax.tree_util.GetAttrKey(f), getattr(rule, f)) for f in cls.leaves]
        return children, tuple(getattr(rule, f) for f in static)

    def unflatten(aux, children):
        rule = object.__new__(cls)
        for f, v in zip(static, aux, strict=True):
            object.__setattr__(rule, f, v)
        for f, v in zip(cls.leaves, children, strict=True):
            object.__setattr__(rule, f, v)
        return rule

    jax.tree_util.register_pytree_with_keys(
        cls,
        flatten_with_keys,
        unflatten,
        flatten_func=lambda r: (
            [getattr(r, f) for f in cls.leaves],
            tuple(getattr(r, f) for f in static),
        ),
    )
    return cls


RULES: dict[str, type[Rule]] = {}
"""Rule name -> rule class (``"dp"`` and ``"dp_top"`` are both :class:`DualProp`)."""


def _check_choice(rule: str, field: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise _bad(rule, field, value, f"one of {allowed}")


def _check_count(rule: str, field: str, value: object, least: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
        raise _bad(rule, field, value, f"an integer >= {least}")


@register
@dataclasses.dataclass(frozen=True, eq=False)
class DualProp(Rule):
    """Dual propagation: DP (``variant="dp"``) or DP⊤ (``variant="dp_top"``).

    Attributes:
      variant: ``"dp"`` (Høier et al. 2023; RAOVR in the 2024 code) or ``"dp_top"``
        (DP⊤, the Lagrangian/adjoint form of Høier & Zach 2024). Also the rule's ``name``.
      alpha: nudging asymmetry α ∈ [0, 1]; the mean is s̄ = α s⁺ + (1-α) s⁻. A traced leaf.
      beta: nudging strength β > 0 (finite). A traced leaf.
      loss: ``"softmax_ce"`` (softmax cross-entropy) or ``"squared_error"`` (½‖ŷ-y‖²).
      schedule: what each extra inference pass does: ``"alternating"`` (a bottom-up sweep
        k = 1..L, then a top-down sweep k = L-1..1; the 2023 MLP code) or ``"bottom_up"``
        (one bottom-up sweep k = 1..L; the 2024 scripts).
      passes: number of extra passes after the default forward pass + output nudge + one
        top-down sweep (0 = the default, BP-cost schedule). Run in a ``lax.fori_loop``.
      sweep: run the top-down sweep k = L-1..1 after the output nudge (default). False starts
        the passes from the forward state with only the output nudged: with
        ``schedule="bottom_up"`` and ``passes=K-1`` that is the 2024 scripts' ``fwK`` schedule
        with K passes exactly (their first pass only nudges the output, as every hidden error
        is still zero). Needs ``passes >= 1``.
      unroll: how many passes one iteration of that loop runs (``lax.fori_loop(...,
        unroll=...)``): 1 keeps the loop rolled, ``passes`` unrolls it fully. None (default)
        chooses: fully unrolled up to :data:`AUTO_UNROLL_PASSES` passes, else
        :data:`AUTO_UNROLL_FACTOR` passes per iteration (see :attr:`unroll_factor`).
      dtype: compute dtype (``"float32"``, ``"float64"`` or ``"bfloat16"``). Parameters keep
        their own dtype; they are cast to this dtype inside the layer maps.
      fast: use the fast path (autodiff with the finite-difference dual activation, presynaptic
        factor from the forward pass). Only defined for α = ½ and ``passes == 0``.
      damped: the damped (Lipschitz) hidden updates of Høier & Zach 2024,
        s± = f((a ± c± fb + L_k s±)/(1 + L_k)) with s± on the right the current state and
        L_k = max(0, (γ_k² - 1)/2), γ_k the spectral norm of map k (layer k → k+1), estimated
        by power iteration through the map's own jvp/vjp. The power-iteration vectors are the
        rule's state (:meth:`init`); each step runs ``power_iterations`` more iterations.
      power_iterations: power-iteration steps per gradient call (warm-started from the state).
      feedback: ``"transpose"`` (fb_k = J_kᵀ δ_{k+1}, the map's own vjp) or
        ``"kolen_pollack"`` (KP-DP, Høier et al. 2023): fb_k through separate weights B_k
        (a kernel of W_k's shape, used through the map's transpose), kept in
        ``params["feedback"]`` (:meth:`init_params`). B_k gets W_k's Hebbian gradient, so the
        optimizer gives both the same update and weight decay and no weight transport is needed.
      output: ``"linearised"`` (s± = a ∓ c± βg) or ``"exact"``: the exact closed form for
        squared error of the 2023 MLP code, s⁺ = (a + c⁺β y)/(1 + c⁺β),
        s⁻ = (a - c⁻β y)/(1 - c⁻β); needs ``loss="squared_error"`` and c⁻β < 1 (DP: (1-α)β,
        DP⊤: αβ), as s⁻ blows up at c⁻β = 1.

    The gradient is ∇_θ J of the local objective J = (1/β) Σ_k ⟨-δ_k, W_{k-1}(s̄_{k-1})⟩ / B at
    the dyads of :func:`~dualprop_jax.dyads.infer_dyads`, i.e. -(1/β) δ_k s̄_{k-1}ᵀ / B per
    dense layer; it tends to the BP gradient as β → 0.
    """

    variant: str = "dp_top"
    alpha: Any = 0.5
    beta: Any = 0.01
    loss: str = "softmax_ce"
    schedule: str = "alternating"
    passes: int = 0
    dtype: str = "float32"
    fast: bool = False
    sweep: bool = True
    unroll: int | None = None
    damped: bool = False
    power_iterations: int = 1
    feedback: str = "transpose"
    output: str = "linearised"

    leaves: ClassVar[tuple[str, ...]] = ("alpha", "beta")

    def __post_init__(self) -> None:
        who = "dual_prop"
        _check_choice(who, "variant", self.variant, VARIANTS)
        alpha, beta = _real(self.alpha), _real(self.beta)
        if alpha is None or not (0.0 <= alpha <= 1.0 or _is_traced(self.alpha)):
            raise _bad(who, "alpha", self.alpha, "a real number in [0, 1]")
        if beta is None or not ((math.isfinite(beta) and beta > 0) or _is_traced(self.beta)):
            raise _bad(who, "beta", self.beta, "a finite real number > 0")
        _check_choice(who, "loss", self.loss, LOSSES)
        _check_choice(who, "schedule", self.schedule, SCHEDULES)
        if not isinstance(self.passes, numbers.Integral) or isinstance(self.passes, bool):
            raise _bad(who, "passes", self.passes, "a non-negative integer")
        if self.passes < 0:
            raise _bad(
                who, "passes", self.passes, "a non-negative integer (0 = one top-down sweep)"
            )
        _check_choice(who, "dtype", self.dtype, DTYPES)
        if self.unroll is not None and (
            not isinstance(self.unroll, numbers.Integral)
            or isinstance(self.unroll, bool)
            or self.unroll < 1
        ):
            raise _bad(
                who, "unroll", self.unroll, "None (automatic) or an integer >= 1 (1 = rolled loop)"
            )
        if not isinstance(self.fast, bool):
            raise _bad(who, "fast", self.fast, "True or False")
        if not isinstance(self.sweep, bool):
            raise _bad(who, "sweep", self.sweep, "True or False")
        if not self.sweep and (self.passes < 1 or self.fast):
            raise _bad(
                who,
                "sweep",
                self.sweep,
                "True unless passes >= 1 and not fast (without the sweep and extra passes the "
                "hidden layers get no error)",
            )
        if self.fast and ((alpha != 0.5 and not _is_traced(self.alpha)) or self.passes != 0):
            raise _bad(
                who,
                "fast",
                self.fast,
                "False unless alpha == 0.5 and passes == 0 (fast path = one-sweep DP at α = ½)",
            )
        if not isinstance(self.damped, bool):
            raise _bad(who, "damped", self.damped, "True or False")
        _check_count(who, "power_iterations", self.power_iterations, 1)
        _check_choice(who, "feedback", self.feedback, FEEDBACKS)
        _check_choice(who, "output", self.output, OUTPUTS)
        if self.fast and (
            self.damped or self.feedback != "transpose" or self.output != "linearised"
        ):
            raise _bad(
                who,
                "fast",
                self.fast,
                "False with damped=True, feedback='kolen_pollack' or output='exact' (the fast "
                "path is plain one-sweep DP)",
            )
        if self.output == "exact":
            if self.loss != "squared_error":
                raise _bad(
                    who,
                    "output",
                    self.output,
                    "'linearised' unless loss='squared_error' (the exact output dyad is the "
                    "closed form of squared error)",
                )
            c_minus = (1.0 - alpha) if self.variant == "dp" else alpha
            if not _is_traced(self.alpha) and not _is_traced(self.beta) and c_minus * beta >= 1:
                which = "(1-α)β" if self.variant == "dp" else "αβ"
                raise ValueError(
                    f"dual_prop(output='exact') needs {which} < 1, got {which} = "
                    f"{c_minus * beta:g} (alpha={alpha:g}, beta={beta:g}): the exact output "
                    f"state s⁻ = (a - c⁻β y)/(1 - c⁻β) blows up at c⁻β = 1. Use a smaller beta, "
                    "or output='linearised'."
                )
        # Python numbers are normalised to float, so equal rules compare equal.
        for f in self.leaves:
            if not _is_array(getattr(self, f)):
                object.__setattr__(self, f, float(getattr(self, f)))
        object.__setattr__(self, "passes", int(self.passes))
        object.__setattr__(self, "power_iterations", int(self.power_iterations))
        if self.unroll is not None:
            object.__setattr__(self, "unroll", int(self.unroll))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.variant

    @property
    def label(self) -> str:
        """``variant``, plus ``+fast``, ``+damped``, ``+kp`` and ``+exact`` for the options set."""
        extras = [
            tag
            for tag, on in (
                ("fast", self.fast),
                ("damped", self.damped),
                ("kp", self.feedback == "kolen_pollack"),
                ("exact", self.output == "exact"),
            )
            if on
        ]
        return "+".join([self.variant, *extras])

    @property
    def stateful(self) -> bool:
        return self.damped

    def init(self, net, params):
        """``()``, or for the damped rule its power-iteration state
        (:func:`~dualprop_jax.dyads.init_damping`)."""
        if self.damped:
            return dyads.init_damping(net, params, self)
        return ()

    def init_params(self, net, params, key):
        """``params``, plus the feedback weights B_k under ``params["feedback"]`` for KP-DP
        (:func:`~dualprop_jax.dyads.init_feedback`: drawn like W_k, independently of it)."""
        if self.feedback == "kolen_pollack":
            return dyads.init_feedback(net, params, key)
        return params

    def _grad_with_state(self, net, params, x, y, state):
        if self.damped:
            return dyads._damped_grad(net, params, x, y, self, state)
        return super()._grad_with_state(net, params, x, y, state)

    def metrics(self, net, params, state):
        """KP-DP: the angle (degrees) between B_k and W_k per map; damped: γ_k per map."""
        out = {}
        if self.feedback == "kolen_pollack":
            out.update(dyads.feedback_angles(net, params))
        if self.damped:
            out.update(dyads.damping_norms(net, params, state))
        return out

    @property
    def unroll_factor(self) -> int:
        """Passes per iteration of the pass loop: ``unroll``, or the automatic choice.

        Automatic: all ``passes`` (a straight-line program, which XLA fuses across passes and
        layers) up to :data:`AUTO_UNROLL_PASSES`; beyond that :data:`AUTO_UNROLL_FACTOR`, so
        that compile time stays bounded for long schedules.
        """
        if self.unroll is not None:
            return max(1, min(self.unroll, max(self.passes, 1)))
        if self.passes <= AUTO_UNROLL_PASSES:
            return max(self.passes, 1)
        return AUTO_UNROLL_FACTOR

    @property
    def nudge_coefficients(self) -> tuple[Any, Any]:
        """(c⁺, c⁻): s⁺ = f(a + c⁺ fb), s⁻ = f(a - c⁻ fb); output s± = a ∓ c± β g.

        DP: (α, 1-α).  DP⊤: (1-α, α).
        """
        if self.variant == "dp":
            return self.alpha, 1.0 - self.alpha
        return 1.0 - self.alpha, self.alpha

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        del out["variant"]  # it is the name
        return out

    def _grad(self, net, params, x, y):
        if self.fast:
            return dyads._fast_grad(net, params, x, y, self)
        return dyads._contrastive_grad(net, params, x, y, self)


RULES["dp"] = RULES["dp_top"] = DualProp


@register
@dataclasses.dataclass(frozen=True)
class Backprop(Rule):
    """Back-propagation: ∇_θ of the batch-mean loss ℓ(ŷ(θ, x), y), by ``jax.value_and_grad``.

    Attributes:
      loss: ``"softmax_ce"`` or ``"squared_error"``, as for :class:`DualProp`.
      dtype: compute dtype of the layer maps.
    """

    loss: str = "softmax_ce"
    dtype: str = "float32"

    name: ClassVar[str] = "bp"

    def __post_init__(self) -> None:
        _check_choice("backprop", "loss", self.loss, LOSSES)
        _check_choice("backprop", "dtype", self.dtype, DTYPES)

    def _grad(self, net, params, x, y):
        return dyads._bp_grad(net, params, x, y, self)


RULES["bp"] = Backprop


def _check_energy_common(who: str, rule) -> None:
    _check_count(who, "free_steps", rule.free_steps, 1)
    _check_choice(who, "loss", rule.loss, LOSSES)
    _check_choice(who, "activation", rule.activation, SIGMAS)
    _check_choice(who, "start", rule.start, STARTS)
    _check_choice(who, "order", rule.order, ORDERS)
    _check_choice(who, "dtype", rule.dtype, DTYPES)
    _check_count(who, "unroll", rule.unroll, 1)
    for f in ("free_steps", "unroll"):
        object.__setattr__(rule, f, int(getattr(rule, f)))


@register
@dataclasses.dataclass(frozen=True, eq=False)
class EquilibriumProp(Rule):
    """Equilibrium propagation (Scellier & Bengio 2017) on the layered net's energy.

    The net EP trains is the recurrent (Hopfield-like) net of the primitive function
    Φ(x, s; θ) = Σ_{k=0..L-1} ⟨s_{k+1}, W_k(s_k)⟩ (s_0 = x; W_k with its bias, conv, pool), with
    the relaxation s_k ← σ(∂Φ/∂s_k) = σ(W_{k-1}(s_{k-1}) + J_kᵀ s_{k+1}) of all layers at once
    (J_kᵀ s_{k+1}: the vjp of map k at s_k), and a linear output layer s_L ← W_{L-1}(s_{L-1}).
    Its prediction (:meth:`predict`) is the output of the free phase, not the feedforward pass.

    Phases (``lax.fori_loop``s): a free phase of ``free_steps`` (T) steps from ``start``, then
    ``nudged_steps`` (K) steps from the free state with the output pulled by -β ∂ℓ/∂s_L
    (one-sided), or two such phases at +β and -β (``nudging="symmetric"``, Laborieux et al.
    2021). Gradient (the update direction of a descent step, like BP's):
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

    beta: Any = 0.5
    free_steps: int = 100
    nudged_steps: int = 20
    nudging: str = "symmetric"
    loss: str = "squared_error"
    activation: str = "clip"
    start: str = "zero"
    order: str = "synchronous"
    dtype: str = "float32"
    unroll: int = 1

    name: ClassVar[str] = "ep"
    leaves: ClassVar[tuple[str, ...]] = ("beta",)

    def __post_init__(self) -> None:
        who = "equilibrium_prop"
        beta = _real(self.beta)
        if beta is None or not ((math.isfinite(beta) and beta > 0) or _is_traced(self.beta)):
            raise _bad(who, "beta", self.beta, "a finite real number > 0")
        _check_count(who, "nudged_steps", self.nudged_steps, 1)
        _check_choice(who, "nudging", self.nudging, NUDGINGS)
        _check_energy_common(who, self)
        object.__setattr__(self, "nudged_steps", int(self.nudged_steps))
        if not _is_array(self.beta):
            object.__setattr__(self, "beta", float(self.beta))

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

    def _grad(self, net, params, x, y):
        return energy._ep_grad(net, params, x, y, self)

    def predict(self, net, params, x):
        return energy._predict(net, params, x, self)


RULES["ep"] = EquilibriumProp


@register
@dataclasses.dataclass(frozen=True, eq=False)
class ContrastiveHebbian(Rule):
    """Contrastive Hebbian learning (Movellan 1991) on the same energy and relaxation as
    :class:`EquilibriumProp`: a free phase, then a phase of ``clamped_steps`` from the free
    state with the output clamped to the target, s_L = y. Gradient:
      ∇θ = -(∂Φ/∂θ(s^clamped) - ∂Φ/∂θ(s^free)) / B
    (anti-Hebbian at the free state, Hebbian at the clamped one). Targets must be labels
    (one-hot) or arrays of the output's shape; with ``loss="softmax_ce"`` only the reported
    loss changes.

    Attributes: as for :class:`EquilibriumProp`, without β and nudging; ``clamped_steps``
    (default 20) replaces ``nudged_steps``.
    """

    free_steps: int = 100
    clamped_steps: int = 20
    loss: str = "squared_error"
    activation: str = "clip"
    start: str = "zero"
    order: str = "synchronous"
    dtype: str = "float32"
    unroll: int = 1

    name: ClassVar[str] = "chl"

    def __post_init__(self) -> None:
        who = "chl"
        _check_count(who, "clamped_steps", self.clamped_steps, 1)
        _check_energy_common(who, self)
        object.__setattr__(self, "clamped_steps", int(self.clamped_steps))

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

    def _grad(self, net, params, x, y):
        return energy._chl_grad(net, params, x, y, self)

    def predict(self, net, params, x):
        return energy._predict(net, params, x, self)


RULES["chl"] = ContrastiveHebbian


def _same(a: object, b: object) -> bool:
    if _is_array(a) or _is_array(b):
        return a is b
    return a == b


def _hashable(v: object) -> object:
    return id(v) if _is_array(v) else v


def dual_prop(
    variant: str = "dp_top",
    alpha: float = 0.5,
    beta: float = 0.01,
    passes: int = 0,
    schedule: str = "alternating",
    loss: str = "softmax_ce",
    dtype: str = "float32",
    fast: bool = False,
    sweep: bool = True,
    unroll: int | None = None,
    damped: bool = False,
    power_iterations: int = 1,
    feedback: str = "transpose",
    output: str = "linearised",
) -> DualProp:
    """The dual-propagation rule (see :class:`DualProp`); validated here, with clear errors."""
    return DualProp(
        variant=variant,
        alpha=alpha,
        beta=beta,
        loss=loss,
        schedule=schedule,
        passes=passes,
        dtype=dtype,
        fast=fast,
        sweep=sweep,
        unroll=unroll,
        damped=damped,
        power_iterations=power_iterations,
        feedback=feedback,
        output=output,
    )


def damped_dual_prop(variant: str = "dp_top", **settings) -> DualProp:
    """Damped (Lipschitz) DP / DP⊤ of Høier & Zach 2024: ``dual_prop(damped=True, ...)``."""
    return dual_prop(variant, damped=True, **settings)


def kolen_pollack(variant: str = "dp", **settings) -> DualProp:
    """Kolen–Pollack DP (Høier et al. 2023): ``dual_prop(feedback="kolen_pollack", ...)``."""
    return dual_prop(variant, feedback="kolen_pollack", **settings)


def backprop(loss: str = "softmax_ce", dtype: str = "float32") -> Backprop:
    """The back-propagation rule (see :class:`Backprop`)."""
    return Backprop(loss=loss, dtype=dtype)


def equilibrium_prop(
    beta: float = 0.5,
    free_steps: int = 100,
    nudged_steps: int = 20,
    nudging: str = "symmetric",
    loss: str = "squared_error",
    activation: str = "clip",
    start: str = "zero",
    dtype: str = "float32",
    unroll: int = 1,
    order: str = "synchronous",
) -> EquilibriumProp:
    """Equilibrium propagation (see :class:`EquilibriumProp`)."""
    return EquilibriumProp(
        beta=beta,
        free_steps=free_steps,
        nudged_steps=nudged_steps,
        nudging=nudging,
        loss=loss,
        activation=activation,
        start=start,
        dtype=dtype,
        unroll=unroll,
        order=order,
    )


def chl(
    free_steps: int = 100,
    clamped_steps: int = 20,
    loss: str = "squared_error",
    activation: str = "clip",
    start: str = "zero",
    dtype: str = "float32",
    unroll: int = 1,
    order: str = "synchronous",
) -> ContrastiveHebbian:
    """Contrastive Hebbian learning (see :class:`ContrastiveHebbian`)."""
    return ContrastiveHebbian(
        free_steps=free_steps,
        clamped_steps=clamped_steps,
        loss=loss,
        activation=activation,
        start=start,
        dtype=dtype,
        unroll=unroll,
        order=order,
    )


NAMES = ("dp", "dp_top", "bp", "ep", "chl")
"""Every rule name, in the order the CLI lists them."""


def fields_of(name: str) -> tuple[str, ...]:
    """The settings rule ``name`` takes (besides its name)."""
    cls = _rule_class(name)
    return tuple(f for f in cls.field_names() if f != "variant")


def _rule_class(name: object) -> type[Rule]:
    if name not in RULES:
        raise ValueError(f"rule name {name!r} is unknown; choose one of {NAMES}.")
    return RULES[name]


def from_dict(d: dict[str, Any] | str) -> Rule:
    """A rule from ``{"name": ..., field: value}`` (missing fields take their defaults) or a name.

    Raises ``ValueError`` naming the rule and the fields it takes when a field does not belong.
    """
    if isinstance(d, str):
        d = {"name": d}
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError(
            f"a rule must be a name or a dict with a 'name' key (one of {NAMES}), got {d!r}."
        )
    d = dict(d)
    name = d.pop("name")
    cls = _rule_class(name)
    allowed = fields_of(name)
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(
            f"rule {name!r} has no setting(s) {unknown}; its settings are {list(allowed)}."
        )
    if cls is DualProp:
        return dual_prop(variant=name, **d)
    return cls(**d)


LABEL_EXTRAS: dict[str, dict[str, Any]] = {
    "fast": dict(fast=True, alpha=0.5, passes=0, sweep=True),
    "damped": dict(damped=True),
    "kp": dict(feedback="kolen_pollack"),
    "exact": dict(output="exact", loss="squared_error"),
    "one_sided": dict(nudging="one_sided"),
    "odd_even": dict(order="odd_even"),
}
"""What each ``+tag`` of a rule label sets: ``"dp_top+damped"``, ``"dp+kp"``, ``"ep+one_sided"``."""


def from_label(label: str, **settings) -> Rule:
    """A rule from a table label (``"dp_top"``, ``"bp"``, ``"dp+fast"``, ``"dp_top+damped"``,
    ``"dp+kp"``, ``"ep+one_sided"``) and shared settings.

    Settings the rule does not take are dropped (e.g. ``alpha`` for ``bp``); each ``+tag`` sets
    the fields of :data:`LABEL_EXTRAS` (``+fast`` sets ``fast=True`` and α = ½).
    """
    name, *extras = label.split("+")
    if name not in RULES:
        raise ValueError(f"rule label {label!r} is unknown: {name!r} is not one of {NAMES}.")
    allowed = fields_of(name)
    kept = {k: v for k, v in settings.items() if k in allowed}
    for tag in extras:
        fields = LABEL_EXTRAS.get(tag)
        if fields is None or not set(fields) <= set(allowed):
            usable = [t for t, f in LABEL_EXTRAS.items() if set(f) <= set(allowed)]
            raise ValueError(
                f"rule label {label!r} is unknown: {name!r} takes the tags {usable} "
                f"(e.g. {name}+{usable[0]!s}), not {tag!r}."
                if usable
                else f"rule label {label!r} is unknown: {name!r} takes no '+' tags."
            )
        kept.update(fields)
    return from_dict({"name": name, **kept})
