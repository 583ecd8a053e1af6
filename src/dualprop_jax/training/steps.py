"""Train and evaluation steps for any learning rule, on one device or data-parallel on a mesh.

    state = TrainState.create(net, params, rule, optimizer)
    step = make_train_step(net, rule, optimizer)           # jitted
    state, metrics = step(state, x, y)                     # metrics: batch-mean loss, # correct
    evaluate(net, state.params, dataset)                   # {"loss": ..., "accuracy": ...}

With a ``mesh`` (see :mod:`dualprop_jax.training.parallel`)
the batch is split over its devices and the
state is replicated; the rule's gradients are batch means, so XLA averages them across devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from dualprop_jax import models
from dualprop_jax.data import Dataset
from dualprop_jax.data.pipeline import augment_batch, padded_batches
from dualprop_jax.dyads import alignment
from dualprop_jax.losses import per_example_loss, targets_as_array
from dualprop_jax.rules import Backprop, Rule, backprop
from dualprop_jax.training import parallel as par

if TYPE_CHECKING:
    from dualprop_jax.training.config import TrainConfig


class TrainState(NamedTuple):
    """What a train step updates: parameters, optimizer state and the rule's own state."""

    params: Any
    opt_state: Any
    rule_state: Any = ()

    @classmethod
    def create(
        cls, net, params, rule: Rule, optimizer: optax.GradientTransformation, mesh=None
    ) -> TrainState:
        """The initial state: ``optimizer.init(params)`` and ``rule.init(net, params)``,
        replicated over ``mesh`` when one is given."""
        state = cls(params, optimizer.init(params), rule.init(net, params))
        return par.put_replicated(state, mesh)


class TrainStep:
    """A jitted train step: ``step(state, x, y, key=None) -> (state, metrics)``.

    ``metrics`` holds the batch-mean ``loss`` and the number of ``correct`` predictions.
    ``key`` is needed only when the step augments its batch.
    """

    def __init__(self, jitted: Callable, augment: bool, donate: bool = False) -> None:
        self.jitted = jitted
        self.augment = augment
        self.donate = donate  # whether ``jitted`` donates (deletes) its input state

    def _key(self, key):
        if self.augment and key is None:
            raise ValueError(
                "this train step augments its batch (augment=True): pass a key, e.g. "
                "step(state, x, y, jax.random.fold_in(jax.random.key(seed), step_number))."
            )
        return key if self.augment else None

    def __call__(self, state: TrainState, x, y, key=None):
        return self.jitted(state, x, y, self._key(key))

    def lower(self, state: TrainState, x, y, key=None):
        """``jax.jit(...).lower``: compile ahead of time (``.compile()``) or inspect the HLO."""
        return self.jitted.lower(state, x, y, self._key(key))


def make_train_step(
    net: models.LayeredNet,
    rule: Rule,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    donate: bool = False,
    augment: bool = False,
) -> TrainStep:
    """A jitted step: the rule's gradient, then ``optimizer.update`` and ``apply_updates``.

    θ ← θ + optax update of ``rule.grad(net, θ, x, y)``. The rule is closed over: its α and β
    are constants of the compiled step (build a new step for new values).

    Args:
      mesh: split the batch over this mesh's devices (``parallel.make_mesh``); None: one device.
      donate: let XLA reuse the memory of the input ``state`` for the output. Saves one copy
        of parameters and optimizer state, but the caller's input arrays are deleted by the
        call: use only ``state = step(state, ...)[0]``, never the old state again.
      augment: random crop + flip of each batch inside the step (:func:`augment_batch`);
        the step then takes a ``key``.
    """

    def step(state: TrainState, x, y, key):
        if augment:
            x = augment_batch(key, x)
        grads, aux, rule_state = rule.grad(net, state.params, x, y, state.rule_state)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = jnp.sum(jnp.argmax(aux.logits, -1) == y)
        return TrainState(params, opt_state, rule_state), {"loss": aux.loss, "correct": correct}

    shardings = {}
    if mesh is not None:
        rep, batch = par.replicated(mesh), par.batch_sharding(mesh)
        shardings = dict(in_shardings=(rep, batch, batch, rep), out_shardings=(rep, rep))
    jitted = jax.jit(step, donate_argnums=(0,) if donate else (), **shardings)
    return TrainStep(jitted, augment, donate)


@functools.lru_cache(maxsize=32)
def make_eval_step(net: models.LayeredNet, rule: Rule, mesh: Mesh | None) -> Callable:
    """Jitted ``(params, x, y, mask) -> (Σ loss, # correct)`` over the unmasked examples.

    The prediction is ``rule.predict`` (the feedforward output; the free phase's output for EP
    and CHL), the loss the rule's. Cached: repeated evaluations with the same network, rule and
    mesh compile once.
    """
    compute = jnp.dtype(rule.dtype)

    def eval_step(params, x, y, mask):
        y_hat = rule.predict(net, params, x).astype(jnp.promote_types(compute, jnp.float32))
        losses = per_example_loss(rule.loss, y_hat, targets_as_array(y_hat, y))
        correct = (jnp.argmax(y_hat, -1) == y) & mask
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)

    if mesh is None:
        return jax.jit(eval_step)
    rep, batch = par.replicated(mesh), par.batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(rep, batch, batch, batch), out_shardings=(rep, rep))


def evaluate(
    net: models.LayeredNet,
    params,
    data: Dataset | tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int = 1000,
    split: str = "test",
    rule: Rule | None = None,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """``{"loss": mean ℓ, "accuracy": fraction correct}`` of the forward pass over ``data``.

    ``data`` is a :class:`Dataset` (its ``split``) or a pair ``(x, y)``. The prediction
    (``rule.predict``), loss and compute dtype are the ``rule``'s (default: BP's feedforward
    output, softmax cross-entropy, float32). Batches are padded to
    ``batch_size`` (rounded up to a multiple of the mesh's devices), so every batch runs one
    compiled program. An empty split gives NaN for both.
    """
    x, y = data.split(split) if isinstance(data, Dataset) else data
    if len(x) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    rule = rule or backprop()
    batch_size += (-batch_size) % par.num_devices(mesh)
    eval_step = make_eval_step(net, rule, mesh)
    sharding = par.batch_sharding(mesh)
    total_loss, total_correct = 0.0, 0
    # x stays as stored: uint8 StandardisedImages are standardised batch by batch
    for xb, yb, mask in padded_batches(x, np.asarray(y), batch_size):
        loss, correct = eval_step(params, *(par.global_array(a, sharding) for a in (xb, yb, mask)))
        total_loss += float(loss)
        total_correct += int(correct)
    return {"loss": total_loss / len(x), "accuracy": total_correct / len(x)}


def alignment_fn(net: models.LayeredNet, rule: Rule) -> Callable:
    """Jitted ``(params, x, y) -> {leaf: cosine(rule gradient, BP gradient)}`` (diagnostics),
    over the network's own parameters ``params["layers"]`` (not a rule's extra weights, such
    as KP's feedback weights, which BP has no gradient for)."""
    reference = Backprop(loss=rule.loss, dtype=rule.dtype)

    @jax.jit
    def fn(params, x, y):
        g_rule = rule.grad(net, params, x, y, rule.init(net, params))[0]
        g_bp, _ = reference.grad(net, params, x, y)
        return alignment({"layers": g_rule["layers"]}, {"layers": g_bp["layers"]})["cosine"]

    return fn


def rule_params(rule: Rule, net: models.LayeredNet, params, seed: int):
    """``rule.init_params`` with the run's key for the rule's own weights (KP's B_k):
    ``fold_in(key(seed), 1)``, so a run and its checkpoints rebuild the same tree."""
    return rule.init_params(net, params, jax.random.fold_in(jax.random.key(seed), 1))


def rule_metrics_fn(net: models.LayeredNet, rule: Rule, params, rule_state) -> Callable | None:
    """Jitted ``(params, rule_state) -> {name: scalar}`` of ``rule.metrics``, or None for a rule
    that has none (e.g. KP-DP's angles between B_k and W_k, damped DP's γ_k)."""

    def fn(params, rule_state):
        return rule.metrics(net, params, rule_state)

    if not jax.eval_shape(fn, params, rule_state):
        return None
    return jax.jit(fn)


def build_model(
    config: TrainConfig, input_shape: Sequence[int], num_classes: int, rngs: nnx.Rngs
) -> models.Network:
    """The network named by ``config.model`` for inputs of ``input_shape`` (one example)."""
    input_shape = tuple(input_shape)
    if config.model == "mlp":
        d_in = int(np.prod(input_shape))
        return models.mlp(
            (d_in, *config.widths, num_classes), activation=config.activation, rngs=rngs
        )
    if len(input_shape) != 3:
        raise ValueError(
            f"model {config.model!r} needs image inputs (H, W, C); the data has per-example shape "
            f"{input_shape}. Use --model mlp for flat vectors."
        )
    kw = dict(
        input_shape=input_shape,
        num_classes=num_classes,
        activation=config.activation,
        rngs=rngs,
    )
    if config.model in models.RESNET_PRESETS:
        return models.resnet(**models.RESNET_PRESETS[config.model], **kw)
    kw["layout"] = config.layout
    if config.model == "cnn":
        return models.cnn(channels=config.channels, dense=config.dense, **kw)
    return models.vgg(models.VGG11 if config.model == "vgg11" else models.VGG16, **kw)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(W), or SGD with momentum and decoupled weight decay; optional warm-up + cosine.

    Decoupled weight decay: u = -η_t (m_t + λ θ), momentum m_t over the gradients only.
    Cosine follows optax semantics: ``decay_steps`` counts the warm-up steps too.
    """
    lr = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        return (
            optax.adamw(lr, weight_decay=config.weight_decay)
            if config.weight_decay
            else optax.adam(lr)
        )
    return optax.chain(
        optax.trace(decay=config.momentum),
        optax.add_decayed_weights(config.weight_decay),
        optax.scale_by_learning_rate(lr),
    )


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> float | optax.Schedule:
    """η_t: ``config.learning_rate``, or with ``lr_schedule="cosine"`` a linear warm-up from 0
    over W = ``warmup_epochs``·steps steps, then η_peak · ½(1 + cos(π (t - W) / (T - W))) down
    to 0 at T = ``epochs``·steps (optax's ``warmup_cosine_decay_schedule``)."""
    if config.lr_schedule != "cosine":
        return config.learning_rate
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        decay_steps=config.epochs * steps_per_epoch,
    )
