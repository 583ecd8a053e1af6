"""What a benchmark row runs: the model table, the rule's train config, a fresh jitted step and
state, the fixed random batch, and the interleaved order of the timed runs.

Shared by the step-time rows (:mod:`dualprop_jax.training.benchmark`) and the whole-epoch
timing (:mod:`dualprop_jax.training.epoch_timing`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import TrainState, make_optimizer, make_train_step, rule_params

ENERGY_RULES = ("ep", "chl")
"""Rules that relax to equilibrium (T + K steps per train step): timed in their own group."""
OWN_SETTINGS = ("pc", "ep_pcn")
"""Rules a benchmark row runs at their own defaults (only the dtype is shared)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: a builder ``(rngs) -> Network`` and the per-example input shape.

    ``layouts`` are the conv layouts (:data:`dualprop_jax.models.LAYOUTS`) the builder takes
    as ``build(rngs, layout=...)``; empty for models without max-pooling. ``graph``: a
    residual/DAG network, on which the chain-only rules (:func:`chain_only`) get no row.
    ``tokens``: the input is ``input_shape`` integer ids in 0..``num_classes``-1 and the labels
    are ids at every position (a language model).
    """

    build: Callable[..., models.Network]
    input_shape: tuple[int, ...]
    description: str
    num_classes: int = 10
    layouts: tuple[str, ...] = ()
    graph: bool = False
    tokens: bool = False


def _vgg(build, description: str) -> ModelSpec:
    """A VGG row: 32x32x3 inputs, 10 classes, both layouts."""
    return ModelSpec(
        lambda rngs, layout="unpooled": build(
            input_shape=(32, 32, 3), num_classes=10, layout=layout, rngs=rngs
        ),
        (32, 32, 3),
        description,
        layouts=models.LAYOUTS,
    )


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        lambda rngs: models.mlp((784, 1000, 1000, 1000, 10), rngs=rngs),
        (784,),
        "MLP 784-1000-1000-1000-10",
    ),
    "cnn": ModelSpec(
        lambda rngs, layout="unpooled": models.cnn(
            (28, 28, 1), channels=(32, 64), dense=(512,), layout=layout, rngs=rngs
        ),
        (28, 28, 1),
        "CNN 28x28x1: conv32-pool-conv64-pool-512-10",
        layouts=models.LAYOUTS,
    ),
    "vgg11": _vgg(models.vgg11, "VGG11 32x32x3 (8 conv, 4096-4096-10, no BatchNorm)"),
    "vgg16": _vgg(models.vgg16, "VGG16 32x32x3 (13 conv, 4096-4096-10, no BatchNorm)"),
}
"""The benchmark's models: every model of ``dualprop train --model``
(:data:`dualprop_jax.training.config.MODELS`), at the input shape it is usually trained on,
and the byte-level language model (:func:`dualprop_jax.models.causal_lm`)."""

MODELS |= {
    "resnet8": ModelSpec(
        lambda rngs: models.resnet8(input_shape=(28, 28, 1), rngs=rngs),
        (28, 28, 1),
        "ResNet-8 28x28x1: stem 16, blocks 16/32/64 (identity and 1x1 skips), no BatchNorm",
        graph=True,
    ),
    "resnet20": ModelSpec(
        lambda rngs: models.resnet20(input_shape=(32, 32, 3), rngs=rngs),
        (32, 32, 3),
        "ResNet-20 32x32x3: stem 16, 3 blocks each of 16/32/64 (identity and 1x1 skips), "
        "no BatchNorm",
        graph=True,
    ),
    "resnet18": ModelSpec(
        lambda rngs: models.resnet18(input_shape=(32, 32, 3), rngs=rngs),
        (32, 32, 3),
        "ResNet-18 32x32x3: stem 64, 2 blocks each of 64/128/256/512, no BatchNorm",
        graph=True,
    ),
    "vit": ModelSpec(
        lambda rngs: models.vit((28, 28, 1), patch=7, rngs=rngs),
        (28, 28, 1),
        "ViT 28x28x1: 7x7 patches (16 tokens), width 64, 2 pre-LN blocks of 4 heads, GELU MLP "
        "128, mean-pooled head",
        graph=True,
    ),
    "lm": ModelSpec(
        lambda rngs: models.causal_lm(64, 256, rngs=rngs),
        (64,),
        "causal byte LM: 64 tokens, width 64, 2 pre-LN blocks of 4 causal heads, GELU MLP "
        "256, next-byte logits at every position",
        num_classes=256,
        graph=True,
        tokens=True,
    ),
}


def chain_only(label: str) -> bool:
    """Whether the rule of ``label`` is defined on layered chains only (EP, CHL, damped DP,
    Kolen–Pollack DP): a graph model gets no row for it."""
    name, *extras = label.split("+")
    return name in ENERGY_RULES or bool({"damped", "kp"} & set(extras))


def train_config(
    label: str, alpha: float, beta: float, dtype: str, passes: int,
    free_steps: int = 100, nudged_steps: int = 20,
) -> TrainConfig:  # fmt: skip
    """The training config of one benchmark row: its rule and the shared optimizer.

    Every rule uses the paper's VGG optimizer, SGD with momentum 0.9, decoupled weight decay
    5e-4 and a constant learning rate of 0.01 (:func:`dualprop_jax.make_optimizer`).
    ``dp+fast`` is the 2023 rule on the fast path (α = ½ there, one sweep). α, β and passes
    are DP's; EP keeps its own β (0.5) and takes T = ``free_steps``, K = ``nudged_steps``
    (CHL: K clamped steps). Predictive coding and EP on its energy keep their own settings.
    """
    if label.split("+")[0] in ENERGY_RULES:
        rule = rules.from_label(
            label,
            dtype=dtype,
            free_steps=free_steps,
            nudged_steps=nudged_steps,
            clamped_steps=nudged_steps,
        )
    elif label.split("+")[0] in OWN_SETTINGS:
        rule = rules.from_label(label, dtype=dtype)
    else:
        rule = rules.from_label(label, alpha=alpha, beta=beta, dtype=dtype, passes=passes)
    return TrainConfig(
        rule=rule, optimizer="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4
    )


def _init(spec: ModelSpec, config: TrainConfig, seed: int, *, augment: bool = False, layout=None):
    """``(step, state)`` of one row: the jitted, donating train step and a fresh state (with
    the rule's own weights and state: KP's B_k, the damped rule's power iteration)."""
    kw = {} if layout is None else {"layout": layout}
    net, params = models.split(spec.build(nnx.Rngs(seed), **kw))
    params = rule_params(config.rule, net, params, seed)
    optimizer = make_optimizer(config, steps_per_epoch=1)  # constant rate: no schedule
    step = make_train_step(net, config.rule, optimizer, donate=True, augment=augment)
    return step, TrainState.create(net, params, config.rule, optimizer)


def random_batch(spec: ModelSpec, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed host batch: standard-normal inputs and uniform integer labels; for a language
    model, uniform ids and labels at every position."""
    rng = np.random.default_rng(seed)
    if spec.tokens:
        ids = rng.integers(0, spec.num_classes, size=(size, spec.input_shape[0] + 1))
        return ids[:, :-1].astype(np.int32), ids[:, 1:].astype(np.int32)
    x = rng.standard_normal((size, *spec.input_shape), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, size=size).astype(np.int32)
    return x, y


def _interleaved(labels: Sequence[str], rounds: int, run: Callable[[str, int], None]) -> None:
    """``run(label, round)`` for every label, ``rounds`` times, the first label rotating per
    round so that no rule always follows the same other rule."""
    for r in range(rounds):
        shift = r % len(labels)
        for label in [*labels[shift:], *labels[:shift]]:
            run(label, r)
