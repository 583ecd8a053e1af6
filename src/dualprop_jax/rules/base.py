"""The rule contract, the dataclass helper that makes rules immutable pytrees, and the registry.

A learning rule is a value with one signature for every rule, in the spirit of optax:

    state = rule.init(net, params)                          # () for rules without state
    grads, aux, state = rule.grad(net, params, state, x, y)
    y_hat = rule.predict(net, params, x)                    # what evaluation scores

``grads`` has exactly the tree structure of ``params`` (the update direction of a descent step,
as ``jax.grad`` of the batch-mean loss gives for BP); ``aux`` is
:class:`~dualprop_jax.core.states.Aux` (the batch-mean loss ℓ and the prediction ŷ). A rule
also names its ``loss`` and compute ``dtype`` and is saved as :meth:`Rule.to_dict`.

A rule is a frozen dataclass made a pytree by :func:`ruleclass`: fields declared with
:func:`leaf` (α, β) are traced pytree leaves, every other field is static and part of the
compiled program's identity. Passed as an argument of a jitted function, a rule is traced, so a
schedule or grid over α or β compiles once. A rule of your own::

    @rules.ruleclass
    class SignSGD(rules.Rule):
        name: ClassVar[str] = "sign_bp"
        loss: str = "softmax_ce"
        scale: float = rules.leaf(1.0)

        def grad(self, net, params, state, x, y):
            grads, aux = dp.bp_grad(net, params, x, y, self)
            return jax.tree.map(lambda g: self.scale * jnp.sign(g), grads), aux, state

:func:`ruleclass` registers the class under its ``name``, so a run's ``config.json`` and
checkpoints read it back (:func:`from_dict`); :func:`check_rule` tells what is missing.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import jax
import numpy as np

from dualprop_jax.core.states import check_input, compute_dtype

RULES: dict[str, type] = {}
"""Rule name -> rule class (``"dp"`` and ``"dp_top"`` are both :class:`DualProp`)."""

NAMES = ("dp", "dp_top", "bp", "ep", "chl", "pc", "ep_pcn")
"""The library's rule names, in the order the CLI lists them."""

DTYPES = ("float32", "float64", "bfloat16")
"""Compute dtypes a rule may take (parameters keep their own)."""
LOSSES = ("softmax_ce", "squared_error")
"""Losses ℓ a rule may train: softmax cross-entropy, or ½‖ŷ − t‖² on one-hot targets."""


def leaf(default: Any) -> Any:
    """A dataclass field that is a traced pytree leaf of the rule (α, β): a sweep or schedule
    over its values reuses the compiled program."""
    return dataclasses.field(default=default, metadata={"leaf": True})


def ruleclass(cls: type) -> type:
    """Make ``cls`` a frozen dataclass, a pytree (:func:`leaf` fields are the children, the
    other fields static metadata) and a registered rule (its ``names``, default ``(name,)``).

    Unflattening rebuilds the rule without ``__init__``: JAX rebuilds pytrees with tracers and
    placeholders, which validation must not see; a rule made by a call is always validated.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    children = tuple(f.name for f in fields if f.metadata.get("leaf"))
    static = tuple(f.name for f in fields if not f.metadata.get("leaf"))

    def flatten_with_keys(rule):
        keyed = [(jax.tree_util.GetAttrKey(f), getattr(rule, f)) for f in children]
        return keyed, tuple(getattr(rule, f) for f in static)

    def unflatten(aux, leaves):
        rule = object.__new__(cls)
        for name, value in (*zip(static, aux, strict=True), *zip(children, leaves, strict=True)):
            object.__setattr__(rule, name, value)
        return rule

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten)
    cls.leaves = children
    for name in getattr(cls, "names", None) or (cls.name,):
        RULES[name] = cls
    return cls


class Rule:
    """Base class of learning rules: defaults for everything but :meth:`grad` and ``name``."""

    name: ClassVar[str]
    leaves: ClassVar[tuple[str, ...]] = ()
    loss: ClassVar[str] = "softmax_ce"
    dtype: ClassVar[str] = "float32"
    on_graphs: ClassVar[bool] = True
    """Whether the rule runs on residual/DAG networks (``False``: layered chains only)."""

    def init(self, net, params) -> Any:
        """The rule's state for ``params`` (``()``: this rule carries none)."""
        del net, params
        return ()

    def grad(self, net, params, state, x, y):
        """``(grads, aux, state)``: the update direction, :class:`Aux`, the new state."""
        raise NotImplementedError(f"{type(self).__name__} must define grad")

    def init_params(self, net, params, key) -> Any:
        """``params`` with the rule's own trainable weights added (default: ``params`` as is);
        Kolen–Pollack DP adds its feedback weights B_k."""
        del net, key
        return params

    def predict(self, net, params, x) -> jax.Array:
        """The prediction ŷ for a batch ``x``: the feedforward output (EP and CHL: the output of
        their free phase)."""
        check_input(net, x)
        return net.forward(params, x, compute_dtype(self.dtype))

    def metrics(self, net, params, state) -> dict[str, jax.Array]:
        """Scalar diagnostics of the rule's own quantities, logged during training."""
        del net, params, state
        return {}

    @property
    def label(self) -> str:
        """A short name for tables and file names (``name``, plus ``+tags`` of options)."""
        return self.name

    def replace(self, **changes) -> Rule:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The fields that :func:`from_dict` takes besides the name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., field: value, ...}``: JSON-ready; :func:`from_dict` reads it back."""
        out: dict[str, Any] = {"name": self.name}
        for f, value in self.settings().items():
            out[f] = float(value) if f in self.leaves else value
        return out

    @classmethod
    def from_settings(cls, name: str, **settings) -> Rule:
        """The rule called ``name`` with ``settings`` (the inverse of :meth:`to_dict`)."""
        del name
        return cls(**settings)


def check_rule(rule: object) -> Rule:
    """``rule`` if it meets the contract of the module docstring, else a ``TypeError`` that
    names what is missing and the fix."""
    methods = ("init", "grad", "predict", "to_dict")
    missing = [m for m in methods if not callable(getattr(rule, m, None))]
    missing += [a for a in ("name", "loss", "dtype") if not isinstance(getattr(rule, a, None), str)]
    if missing:
        raise TypeError(
            f"{type(rule).__name__} is not a learning rule: it lacks {missing}. Subclass "
            "dualprop_jax.rules.Rule (which gives init, predict, loss, dtype and to_dict) and "
            "define name and grad(net, params, state, x, y) -> (grads, aux, state)."
        )
    leaves = jax.tree.leaves(rule)
    if len(leaves) == 1 and leaves[0] is rule:
        raise TypeError(
            f"{type(rule).__name__} is not a pytree, so it cannot travel into a jitted step: "
            "decorate the class with @dualprop_jax.rules.ruleclass."
        )
    return rule


def from_dict(d: dict[str, Any] | str) -> Rule:
    """A rule from ``{"name": ..., field: value}`` (missing fields take their defaults) or a name.

    ``ValueError`` names the rule and the fields it takes when a field does not belong.
    """
    if isinstance(d, str):
        d = {"name": d}
    if not isinstance(d, dict) or "name" not in d:
        raise ValueError(
            f"a rule must be a name or a dict with a 'name' key (one of {known_names()}), "
            f"got {d!r}."
        )
    settings = dict(d)
    name = settings.pop("name")
    allowed = fields_of(name)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(
            f"rule {name!r} has no setting(s) {unknown}; its settings are {list(allowed)}."
        )
    return RULES[name].from_settings(name, **settings)


def known_names() -> tuple[str, ...]:
    """Every registered rule name: the library's (:data:`NAMES`) first, then the users'."""
    return (*NAMES, *sorted(set(RULES) - set(NAMES)))


def fields_of(name: str) -> tuple[str, ...]:
    """The settings rule ``name`` takes (besides its name)."""
    if name not in RULES:
        raise ValueError(
            f"rule name {name!r} is unknown; choose one of {known_names()}, or register your "
            "rule class with @dualprop_jax.rules.ruleclass before reading it back."
        )
    return tuple(f.name for f in dataclasses.fields(RULES[name]) if f.name != "variant")


# ------------------------------------------------------------------ validation helpers


def bad(rule: str, field: str, value: object, allowed: str) -> ValueError:
    """The error for ``rule.field = value``: what it must be instead."""
    return ValueError(f"{rule}.{field}={value!r} is invalid: {field} must be {allowed}.")


def is_traced(value: object) -> bool:
    """Whether ``value`` is an abstract array (inside ``jit``/``vmap``), with no value to check."""
    return isinstance(value, jax.core.Tracer)


def check_choice(rule: str, field: str, value: object, allowed: tuple) -> None:
    """Raise a :class:`ValueError` naming the rule, field and value unless ``value in allowed``."""
    if value not in allowed:
        raise bad(rule, field, value, f"one of {allowed}")


def check_count(rule: str, field: str, value: object, least: int) -> None:
    """Raise a :class:`ValueError` unless ``value`` is an integer (not a bool) ≥ ``least``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
        allowed = "a non-negative integer" if least == 0 else f"an integer >= {least}"
        raise bad(rule, field, value, allowed)


def check_flag(rule: str, field: str, value: object) -> None:
    """Raise a :class:`ValueError` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise bad(rule, field, value, "True or False")


def check_real(rule: str, field: str, value: object, ok, allowed: str) -> float | None:
    """A real scalar leaf: its value where concrete (``ok(value)`` must hold), None where
    traced (accepted as it is)."""
    if is_traced(value):
        return None
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        is_real = np.ndim(value) == 0 and np.issubdtype(value.dtype, np.floating)
    if not is_real or not (math.isfinite(float(value)) and ok(float(value))):
        raise bad(rule, field, value, allowed)
    return float(value)
