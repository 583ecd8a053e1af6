"""``TrainConfig``: everything a training run depends on, validated at construction and frozen.

The learning rule is one field, ``rule`` (a :mod:`dualprop_jax.rules` value); in JSON it is
``{"name": "dp_top", "alpha": 0.5, "beta": 0.01, ...}``, and a bare name takes the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any

from dualprop_jax import models, rules

MODELS = ("mlp", "cnn", "vgg11", "vgg16", "resnet8", "resnet20", "resnet18", "vit", "lm")
"""Chains (MLP, CNN, VGG), residual networks (graphs; :func:`dualprop_jax.models.resnet`), a
small vision transformer (a graph; :func:`dualprop_jax.models.vit`) and a causal language model
of token ids (a graph; :func:`dualprop_jax.models.causal_lm`, for ``dataset="fortunes"``)."""
GRAPH_MODELS = ("resnet8", "resnet20", "resnet18", "vit", "lm")
"""The models that are graphs, on which chain-only rules are refused."""
OPTIMIZERS = ("adam", "sgd")
"""The optimizers a :class:`TrainConfig` names (optax's Adam, or SGD with momentum)."""
LR_SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules: constant, or a cosine decay to 0 over the run."""
FEEDS = ("auto", "device", "host")
"""Where batches come from (:func:`dualprop_jax.data.device.choose_feed`)."""

FREE_ON_RESUME = (
    "data_dir",
    "eval_batch_size",
    "diagnostics_every",
    "devices",
    "keep_checkpoints",
    "feed",
    "tensorboard",
)
"""Fields that may differ when a run is resumed: they change where and how a run goes, not the
numbers it computes (``epochs`` may be raised too: ``checkpoints.check_resumable``)."""

# Rule settings that a config of the old flat format held at the top level (refused; see
# check_fields).
_FLAT_RULE_KEYS = ("algo", "alpha", "beta", "loss", "passes", "schedule", "dtype", "fast")


def _bad(field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"TrainConfig.{field}={value!r} is invalid: {field} must be {allowed}.")


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _finite(value: object, low: float) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value) and value >= low


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Validated at construction; frozen."""

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    max_train: int | None = None
    max_eval: int | None = None  # use only the first N validation and N test images
    model: str = "mlp"
    widths: tuple[int, ...] = (1000, 1000)  # MLP hidden widths
    channels: tuple[int, ...] = (32, 64)  # CNN conv widths (each followed by a 2x2 max-pool)
    dense: tuple[int, ...] = (512,)  # CNN hidden dense widths
    layout: str = "unpooled"  # conv models: where max-pools sit (models.LAYOUTS)
    activation: str = "relu"
    rule: rules.Rule = dataclasses.field(default_factory=rules.dual_prop)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    batch_size: int = 100
    eval_batch_size: int = 1000
    epochs: int = 10
    seed: int = 0
    augment: bool | None = None  # None: the dataset's default (on for CIFAR-like data)
    diagnostics_every: int = 0  # steps between rule-vs-BP alignment checks; 0 = off
    devices: int | None = None  # None: all local devices
    keep_checkpoints: int = 2  # checkpoints kept in workdir/checkpoints (the latest epochs)
    feed: str = "auto"  # training batches from a copy on the device, or from the host
    tensorboard: bool = False  # also write TensorBoard event files (training.tensorboard)

    def __post_init__(self) -> None:
        for name in ("widths", "channels", "dense"):
            value = getattr(self, name)
            if isinstance(value, int | str) or not all(_positive_int(v) for v in value):
                raise _bad(name, value, "a sequence of positive integers")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if isinstance(self.rule, str | dict):
            object.__setattr__(self, "rule", rules.from_dict(self.rule))
        rules.check_rule(self.rule)
        self._check_choices()
        self._check_numbers()

    def _check_choices(self) -> None:
        for name, allowed in (
            ("model", MODELS),
            ("optimizer", OPTIMIZERS),
            ("lr_schedule", LR_SCHEDULES),
            ("activation", tuple(models.ACTIVATIONS)),
            ("feed", FEEDS),
            ("layout", models.LAYOUTS),
        ):
            if getattr(self, name) not in allowed:
                raise _bad(name, getattr(self, name), f"one of {allowed}")
        if self.model in GRAPH_MODELS and not self.rule.on_graphs:
            raise ValueError(
                f"rule {self.rule.label!r} is defined for layered chains only, and model "
                f"{self.model!r} is a graph; train it with dp, dp_top (plain, fast, any "
                "passes), bp, pc or ep_pcn, or choose a chain model (mlp, cnn, vgg11, vgg16)."
            )

    def _check_numbers(self) -> None:
        for name in ("batch_size", "eval_batch_size", "epochs", "keep_checkpoints"):
            if not _positive_int(getattr(self, name)):
                raise _bad(name, getattr(self, name), "a positive integer")
        if not _finite(self.learning_rate, 0) or self.learning_rate <= 0:
            raise _bad("learning_rate", self.learning_rate, "a finite number > 0")
        for name in ("momentum", "weight_decay", "warmup_epochs"):
            if not _finite(getattr(self, name), 0):
                raise _bad(name, getattr(self, name), "a finite number >= 0")
        if self.momentum >= 1:
            raise _bad("momentum", self.momentum, "in [0, 1)")
        if self.warmup_epochs > self.epochs:
            raise _bad("warmup_epochs", self.warmup_epochs, f"at most epochs={self.epochs}")
        if not isinstance(self.val_fraction, numbers.Real) or not 0 <= self.val_fraction < 1:
            raise _bad("val_fraction", self.val_fraction, "in [0, 1)")
        for name in ("max_train", "max_eval"):
            if getattr(self, name) is not None and not _positive_int(getattr(self, name)):
                raise _bad(name, getattr(self, name), "None or a positive integer")
        if not isinstance(self.diagnostics_every, numbers.Integral) or self.diagnostics_every < 0:
            raise _bad("diagnostics_every", self.diagnostics_every, "an integer >= 0 (0 = off)")
        if self.devices is not None and not _positive_int(self.devices):
            raise _bad("devices", self.devices, "None (all local devices) or a positive integer")
        if not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise _bad("seed", self.seed, "a non-negative integer")
        if not isinstance(self.tensorboard, bool):
            raise _bad("tensorboard", self.tensorboard, "True or False")

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; the rule as ``{"name": ..., its settings}``."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                v.to_dict() if f.name == "rule" else list(v) if isinstance(v, tuple) else v
            )
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; refuses unknown fields (:func:`check_fields`)."""
        check_fields(d)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def check_fields(d: dict[str, Any]) -> None:
    """Raise a ValueError if ``d`` holds a key that is no TrainConfig field; for the rule
    settings of the old flat format (``algo``, ``alpha``, ... at the top level), one that
    shows the current format, where the rule is one field."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    flat = sorted(k for k in d if k in _FLAT_RULE_KEYS)
    if flat:
        name = d.get("algo", "dp_top")
        takes = rules.fields_of(name) if name in rules.NAMES else ()
        settings = {k: d[k] for k in flat if k in takes}
        example = json.dumps({"rule": {"name": name, **settings}})
        raise ValueError(
            f"config holds the rule settings {flat} at the top level, the old flat format, "
            f"which is no longer read. The rule is one field now: {example[1:-1]} (a bare name, "
            '"rule": "dp_top", takes the defaults; see experiments/configs/).'
        )
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(fields)}")
