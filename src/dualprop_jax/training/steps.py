"""Train and evaluation steps for any learning rule, on one device or data-parallel on a mesh.

    state = TrainState.create(net, params, rule, optimizer)
    step = make_train_step(net, rule, optimizer)           # jitted
    state, metrics = step(state, x, y)                     # metrics: batch-mean loss, # correct
    state, metrics = step(state, x, y, rule=rule.replace(beta=0.1))   # no recompilation
    evaluate(net, state.params, dataset, rule)             # {"loss": ..., "accuracy": ...}

The rule is an argument of the compiled step (its α and β are traced leaves), so a schedule of
β or α, or a grid of them (:mod:`~dualprop_jax.training.sweep`, which vmaps the same
:func:`train_step`), compiles once per static structure. With a ``mesh``
(:mod:`dualprop_jax.training.parallel`) the batch is split over its devices and the state is
replicated; the rule's gradients are batch means, so XLA averages them across devices.
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
from dualprop_jax.core import alignment
from dualprop_jax.core.states import check_input, check_net, compute_dtype
from dualprop_jax.data import Dataset
from dualprop_jax.data.pipeline import augment_batch, padded_batches
from dualprop_jax.losses import (
    labels_per_example,
    num_correct,
    per_example_loss,
    targets_as_array,
)
from dualprop_jax.rules import Backprop, Rule, check_rule
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
        check_net(net)
        state = cls(params, optimizer.init(params), check_rule(rule).init(net, params))
        return par.put_replicated(state, mesh)


def train_step(net, optimizer: optax.GradientTransformation, augment: bool = False) -> Callable:
    """The pure step ``(rule, state, x, y, key) -> (state, metrics)``:

        grads, aux, rule_state = rule.grad(net, θ, rule_state, x, y)
        θ ← θ + optax update of grads

    ``metrics``: the batch-mean ``loss`` and the number of ``correct`` predictions (targets may
    be labels, one-hot or soft). With ``augment`` the batch is randomly cropped and flipped
    first (:func:`~dualprop_jax.data.pipeline.augment_batch`, from ``key``).
    :func:`make_train_step` jits it; the sweep vmaps it over a grid of rules.
    """

    def step(rule: Rule, state: TrainState, x, y, key):
        if augment:
            x = augment_batch(key, x)
        grads, aux, rule_state = rule.grad(net, state.params, state.rule_state, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": aux.loss, "correct": num_correct(aux.logits, y)}
        return TrainState(params, opt_state, rule_state), metrics

    return step


def num_outputs(net, params, x) -> int:
    """The size of the network's output for inputs like ``x`` (shapes only, nothing runs); a
    wrong input shape is reported by name first (:func:`~dualprop_jax.core.states.check_input`)."""
    check_input(net, x)
    abstract = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype), params)
    # token ids (integers) stay integers; anything else is probed as float32
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.integer) else jnp.float32
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), dtype)
    return int(jax.eval_shape(net.forward, abstract, one).shape[-1])


def check_labels(y, outputs: int) -> None:
    """``ValueError`` naming the integer labels in ``y`` (host data) outside 0..outputs-1: they
    would train silently against an all-zero one-hot target."""
    y = np.asarray(y)
    if y.ndim < 1 or not np.issubdtype(y.dtype, np.integer):
        return  # one-hot or soft targets, or a shape the step itself reports
    bad = np.argwhere((y < 0) | (y >= outputs))  # (example,) or (example, position) indices
    if len(bad):
        where = [tuple(int(i) for i in b) for b in bad[:5]]
        shown = ", ".join(f"{int(y[w])} at index {w[0] if len(w) == 1 else w}" for w in where)
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"labels must be in 0..{outputs - 1} (the network has {outputs} outputs); got "
            f"{shown}{more}. Remap them, or build the network with more outputs."
        )


class TrainStep:
    """A jitted train step: ``step(state, x, y, key=None, *, rule=None) -> (state, metrics)``.

    ``rule`` (default: the rule the step was made with) is an argument of the compiled program:
    another α or β reuses it. ``key`` is needed only when the step augments its batch.

    Integer labels outside the network's outputs raise ``ValueError`` (given ``net``): numpy
    labels at every call; concrete jax arrays at the first call only, so a loop over device
    data pays no host sync per step; traced labels never.
    """

    def __init__(self, jitted: Callable, rule: Rule, augment: bool, donate: bool = False, net=None):
        self.jitted = jitted
        self.rule = rule
        self.augment = augment
        self.donate = donate  # whether ``jitted`` donates (deletes) its input state
        self.net = net  # for the label check; None: no check
        self._outputs: int | None = None  # the network's output size, found at the first call
        self._checked_device = False  # whether a jax-array batch of labels was checked

    def _check_labels(self, state: TrainState, x, y) -> None:
        if self.net is None or not hasattr(x, "shape") or len(x.shape) < 2:
            return
        if isinstance(y, jax.Array):
            if self._checked_device or isinstance(y, jax.core.Tracer):
                return
            self._checked_device = True  # the first call only: one sync, not one per step
            if not y.is_fully_addressable:
                return
        elif not isinstance(y, np.ndarray):
            return
        if not np.issubdtype(y.dtype, np.integer) or y.ndim < 1:
            return
        if self._outputs is None:
            self._outputs = num_outputs(self.net, state.params, x)
        check_labels(y, self._outputs)

    def _args(self, state, x, y, key, rule):
        if self.augment and key is None:
            raise ValueError(
                "this train step augments its batch (augment=True): pass a key, e.g. "
                "step(state, x, y, jax.random.fold_in(jax.random.key(seed), step_number))."
            )
        rule = self.rule if rule is None else check_rule(rule)
        return rule, state, x, y, key if self.augment else None

    def __call__(self, state: TrainState, x, y, key=None, *, rule: Rule | None = None):
        self._check_labels(state, x, y)
        return self.jitted(*self._args(state, x, y, key, rule))

    def lower(self, state: TrainState, x, y, key=None, *, rule: Rule | None = None):
        """``jax.jit(...).lower``: compile ahead of time (``.compile()``) or inspect the HLO."""
        return self.jitted.lower(*self._args(state, x, y, key, rule))


def make_train_step(
    net: models.LayeredNet,
    rule: Rule,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    donate: bool = False,
    augment: bool = False,
) -> TrainStep:
    """The jitted :func:`train_step` of ``rule`` and ``optimizer``.

    Args:
      rule: the step's default rule; ``step(..., rule=other)`` trains with another rule of the
        same static structure (a β schedule) without recompiling.
      mesh: split the batch over this mesh's devices (``parallel.make_mesh``); None: one device.
      donate: let XLA reuse the memory of the input ``state`` for the output. Saves one copy
        of parameters and optimizer state, but the caller's input arrays are deleted by the
        call: use only ``state = step(state, ...)[0]``, never the old state again.
      augment: random crop + flip of each batch inside the step; the step then takes a ``key``.
    """
    check_net(net)
    step = train_step(net, optimizer, augment)
    shardings = {}
    if mesh is not None:
        rep, batch = par.replicated(mesh), par.batch_sharding(mesh)
        shardings = dict(in_shardings=(rep, rep, batch, batch, rep), out_shardings=(rep, rep))
    jitted = jax.jit(step, donate_argnums=(1,) if donate else (), **shardings)
    return TrainStep(jitted, check_rule(rule), augment, donate, net=net)


@functools.lru_cache(maxsize=32)
def eval_score(net: models.LayeredNet) -> Callable:
    """``(rule, params, x, y, mask) -> (Σ loss, # correct)`` over the unmasked examples (not
    jitted; one function per network, so the programs built on it are cached).

    The prediction is ``rule.predict`` (the feedforward output; the free phase's output for EP
    and CHL), the loss the rule's; targets may be labels, one-hot or soft.
    """

    def eval_step(rule, params, x, y, mask):
        compute = compute_dtype(rule.dtype)
        y_hat = rule.predict(net, params, x).astype(jnp.promote_types(compute, jnp.float32))
        losses = per_example_loss(rule.loss, y_hat, targets_as_array(y_hat, y))
        return jnp.sum(jnp.where(mask, losses, 0.0)), num_correct(y_hat, y, mask)

    return eval_step


@functools.lru_cache(maxsize=32)
def make_eval_step(net: models.LayeredNet, mesh: Mesh | None) -> Callable:
    """Jitted :func:`eval_score`: ``(rule, params, x, y, mask) -> (Σ loss, # correct)``.
    Cached per network and mesh; the rule is an argument."""
    eval_step = eval_score(net)
    if mesh is None:
        return jax.jit(eval_step)
    rep, batch = par.replicated(mesh), par.batch_sharding(mesh)
    shardings = dict(in_shardings=(rep, rep, batch, batch, batch), out_shardings=(rep, rep))
    return jax.jit(eval_step, **shardings)


def evaluate(
    net: models.LayeredNet,
    params,
    data: Dataset | tuple[np.ndarray, np.ndarray],
    rule: Rule,
    *,
    batch_size: int = 1000,
    split: str = "test",
    mesh: Mesh | None = None,
    feed: str = "auto",
) -> dict[str, float]:
    """``{"loss": mean ℓ, "accuracy": fraction correct}`` of what ``rule`` predicts over ``data``
    (ℓ summed over an example's positions, accuracy per position, for sequence labels (N, T)).

    ``data`` is a :class:`Dataset` (its ``split``) or a pair ``(x, y)`` with labels, one-hot or
    soft targets. The prediction is ``rule.predict`` (the feedforward output; EP's and CHL's
    free phase), the loss and compute dtype the rule's. Batches of ``batch_size``, at most the
    split, rounded up to a multiple of the mesh's devices. ``feed``: ``"device"`` copies the
    split to the device(s) once (a Dataset's split is kept there for later calls), sums its
    full batches in one jitted scan and runs the last one padded only as far as the devices
    need (:mod:`~dualprop_jax.training.evaluation`); ``"host"`` copies batch by batch, the
    last one padded to the batch (one compiled program); ``"auto"`` is the device where the
    split fits the device feed's budget. Both give the same sums to float32 rounding. An empty
    split gives NaN for both; integer labels outside the network's outputs raise ``ValueError``.
    """
    check_net(net)
    check_rule(rule)
    x, y = data.split(split) if isinstance(data, Dataset) else data
    if len(x) == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    check_input(net, first := np.asarray(x[:1]))
    check_labels(y, num_outputs(net, params, first))
    if _eval_feed(feed, x, y, mesh) == "device":
        from dualprop_jax.data import device as device_data
        from dualprop_jax.training import evaluation

        on_device = (
            device_data.resident(data, mesh, split)
            if isinstance(data, Dataset)
            else device_data.put(x, y, mesh)
        )
        params = jax.device_put(params, par.replicated(mesh))
        loss, correct = evaluation.device_sums(
            eval_score(net), rule, params, on_device, batch_size, mesh
        )
        return {"loss": loss / len(x), "accuracy": correct / (len(x) * labels_per_example(y))}
    return _host_evaluate(net, params, x, np.asarray(y), rule, batch_size, mesh)


def _eval_feed(feed: str, x, y, mesh: Mesh | None) -> str:
    """``"device"`` or ``"host"`` for evaluating ``(x, y)``: ``"auto"`` is the device where the
    split as stored takes at most the device feed's budget."""
    from dualprop_jax.data import device as device_data

    if feed not in ("auto", "device", "host"):
        raise ValueError(f"feed={feed!r} is invalid: feed must be 'auto', 'device' or 'host'.")
    if feed != "auto":
        return feed
    fits = device_data.split_bytes(x, y) <= device_data.default_budget(mesh)
    return "device" if fits else "host"


def _host_evaluate(net, params, x, y, rule, batch_size, mesh) -> dict[str, float]:
    """The host path of :func:`evaluate`: batches gathered (and standardised) on the host."""
    from dualprop_jax.training.evaluation import eval_plan

    batch_size = eval_plan(len(x), batch_size, par.num_devices(mesh))[0]
    eval_step = make_eval_step(net, mesh)
    sharding = par.batch_sharding(mesh)
    total_loss, total_correct = 0.0, 0
    # x stays as stored: uint8 StandardisedImages are standardised batch by batch
    for xb, yb, mask in padded_batches(x, y, batch_size):
        arrays = (par.global_array(a, sharding) for a in (xb, yb, mask))
        loss, correct = eval_step(rule, params, *arrays)
        total_loss += float(loss)
        total_correct += int(correct)
    scored = len(x) * labels_per_example(y)
    return {"loss": total_loss / len(x), "accuracy": total_correct / scored}


def alignment_fn(net: models.LayeredNet, rule: Rule) -> Callable:
    """Jitted ``(params, x, y) -> {leaf: cosine(rule gradient, BP gradient)}`` (diagnostics),
    over the network's own parameters ``params["layers"]`` (not a rule's extra weights, such
    as KP's feedback weights, which BP has no gradient for)."""
    reference = Backprop(loss=rule.loss, dtype=rule.dtype)

    @jax.jit
    def fn(params, x, y):
        g_rule = rule.grad(net, params, rule.init(net, params), x, y)[0]
        g_bp = reference.grad(net, params, (), x, y)[0]
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
    """The network named by ``config.model`` for inputs of ``input_shape`` (one example);
    ``config.activation`` applies to the chains and ResNets (the ViT's MLPs use GELU)."""
    input_shape = tuple(input_shape)
    if config.model == "lm":  # token ids in, next-token logits at every position out
        if len(input_shape) != 1:
            raise ValueError(
                f"model 'lm' reads sequences of token ids; the data has per-example shape "
                f"{input_shape}. Use --dataset fortunes (or windows of ids of your own)."
            )
        return models.causal_lm(input_shape[0], num_classes, rngs=rngs)
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
    if config.model == "vit":  # GELU in its MLPs; 7x7 patches of 28x28 images, else 4x4
        patch = 7 if input_shape[0] % 7 == 0 and input_shape[1] % 7 == 0 else 4
        return models.vit(input_shape, num_classes, patch=patch, rngs=rngs)
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
