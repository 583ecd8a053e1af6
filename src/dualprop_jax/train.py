"""Training: optimizers, data-parallel train steps for DP, DP⊤ and BP, and ``train_and_evaluate``.

One code path for any number of devices: the step is ``jit``-compiled over a 1-D ``Mesh`` with
axis ``"data"``; the batch is sharded along it, parameters and optimizer state are replicated.
The gradients are batch means, so XLA averages them across devices. One device is the
one-device case of the same function.

This module does no printing or plotting: progress reaches the caller through ``hooks``.
It writes what a run must leave behind (checkpoints, ``results.json``, ``metrics.csv``).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import numbers
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dualprop_jax import data as data_lib
from dualprop_jax import models
from dualprop_jax.config import DPConfig
from dualprop_jax.dyads import alignment, bp_grad, contrastive_grad

ALGOS = ("dp", "dp_top", "bp")
MODELS = ("mlp", "cnn", "vgg11", "vgg16")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")


class TrainingError(RuntimeError):
    """A run cannot start or go on (bad workdir, divergence, ...). The message says what to do."""


class DivergenceError(TrainingError):
    """The loss became NaN/Inf. The last good checkpoint is kept."""


def _bad(field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"TrainConfig.{field}={value!r} is invalid: {field} must be {allowed}.")


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Validated at construction; frozen."""

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    max_train: int | None = None
    model: str = "mlp"
    widths: tuple[int, ...] = (1000, 1000)  # MLP hidden widths
    channels: tuple[int, ...] = (32, 64)  # CNN conv widths (each followed by a 2x2 max-pool)
    dense: tuple[int, ...] = (512,)  # CNN hidden dense widths
    activation: str = "relu"
    algo: str = "dp_top"
    alpha: float = 0.5
    beta: float = 0.01
    loss: str = "softmax_ce"
    passes: int = 0
    schedule: str = "alternating"
    dtype: str = "float32"
    fast: bool = False
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
    diagnostics_every: int = 0  # steps between DP-vs-BP alignment checks; 0 = off
    devices: int | None = None  # None: all local devices

    def __post_init__(self) -> None:
        for name in ("widths", "channels", "dense"):
            value = getattr(self, name)
            if isinstance(value, int | str) or not all(_positive_int(v) for v in value):
                raise _bad(name, value, "a sequence of positive integers")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.model not in MODELS:
            raise _bad("model", self.model, f"one of {MODELS}")
        if self.algo not in ALGOS:
            raise _bad("algo", self.algo, f"one of {ALGOS}")
        if self.optimizer not in OPTIMIZERS:
            raise _bad("optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise _bad("lr_schedule", self.lr_schedule, f"one of {LR_SCHEDULES}")
        for name in ("batch_size", "eval_batch_size", "epochs"):
            if not _positive_int(getattr(self, name)):
                raise _bad(name, getattr(self, name), "a positive integer")
        for name in ("learning_rate",):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
                raise _bad(name, v, "a finite number > 0")
        for name in ("momentum", "weight_decay", "warmup_epochs"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise _bad(name, v, "a finite number >= 0")
        if self.momentum >= 1:
            raise _bad("momentum", self.momentum, "in [0, 1)")
        if self.warmup_epochs > self.epochs:
            raise _bad("warmup_epochs", self.warmup_epochs, f"at most epochs={self.epochs}")
        if not isinstance(self.val_fraction, numbers.Real) or not 0 <= self.val_fraction < 1:
            raise _bad("val_fraction", self.val_fraction, "in [0, 1)")
        if self.max_train is not None and not _positive_int(self.max_train):
            raise _bad("max_train", self.max_train, "None or a positive integer")
        if not isinstance(self.diagnostics_every, numbers.Integral) or self.diagnostics_every < 0:
            raise _bad("diagnostics_every", self.diagnostics_every, "an integer >= 0 (0 = off)")
        if self.devices is not None and not _positive_int(self.devices):
            raise _bad("devices", self.devices, "None (all local devices) or a positive integer")
        if not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise _bad("seed", self.seed, "a non-negative integer")
        if self.activation not in models.ACTIVATIONS:
            raise _bad("activation", self.activation, f"one of {tuple(models.ACTIVATIONS)}")
        self.dp_config()  # validates alpha, beta, loss, passes, schedule, dtype, fast

    def dp_config(self) -> DPConfig:
        """The learning-rule config (for ``bp`` only loss and dtype matter)."""
        variant = "dp" if self.algo == "dp" else "dp_top"
        return DPConfig(
            variant=variant,
            alpha=self.alpha,
            beta=self.beta,
            loss=self.loss,
            schedule=self.schedule,
            passes=self.passes,
            dtype=self.dtype,
            fast=self.fast,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(
                f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(fields)}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ----------------------------------------------------------------------------- building blocks


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
        input_shape=input_shape, num_classes=num_classes, activation=config.activation, rngs=rngs
    )
    if config.model == "cnn":
        return models.cnn(channels=config.channels, dense=config.dense, **kw)
    return models.vgg(models.VGG11 if config.model == "vgg11" else models.VGG16, **kw)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam(W), or SGD with momentum and decoupled weight decay; optional warm-up + cosine.

    Decoupled weight decay: u = -η_t (m_t + λ θ), momentum m_t over the gradients only.
    Cosine follows optax semantics: ``decay_steps`` counts the warm-up steps too.
    """
    total = config.epochs * steps_per_epoch
    lr: float | optax.Schedule = config.learning_rate
    if config.lr_schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.learning_rate,
            warmup_steps=int(config.warmup_epochs * steps_per_epoch),
            decay_steps=total,
        )
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


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D data-parallel mesh (axis ``"data"``) over ``devices`` devices (default: all).

    In a multi-process run (``jax.distributed``) the mesh spans every process's devices.
    """
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not _positive_int(n):
        raise ValueError(f"devices={devices!r} is invalid: use None (all) or an integer >= 1.")
    if n > len(available):
        raise ValueError(
            f"{n} devices requested but only {len(available)} are available "
            f"({available[0].platform}); pass --devices {len(available)} or fewer. On CPU, set "
            f"JAX_NUM_CPU_DEVICES={n} before JAX starts to simulate more."
        )
    if jax.process_count() > 1 and n != len(available):
        raise ValueError(
            f"{n} devices requested, but a multi-process run uses every device of every process "
            f"({len(available)} over {jax.process_count()} processes); omit --devices, or "
            "change the number of processes or of devices per process."
        )
    return Mesh(np.asarray(available[:n]), ("data",))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """The global batch must split evenly over the data-parallel devices."""
    n = mesh.devices.size
    if batch_size % n:
        lo = batch_size - batch_size % n
        raise ValueError(
            f"the global {what} {batch_size} is not divisible by the {n} devices; use a "
            f"multiple of {n} such as {lo or n} or {lo + n}, or pass --devices."
        )


def steps_in_flight(mesh: Mesh) -> int | None:
    """How many train steps a loop may queue before waiting for the oldest; None: no limit.

    2 on several CPU devices: with dozens of multi-device steps queued, XLA's CPU runtime can
    deadlock in the cross-device all-reduce (seen with jax 0.10.2 at 50 queued steps, never at
    20; the process aborts after 40 s in ``rendezvous.cc``). Two keep host and devices busy.
    """
    return 2 if mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu" else None


class StepThrottle:
    """Keeps at most :func:`steps_in_flight` dispatched train steps queued on ``mesh``.

    Call ``throttle(metrics)`` after dispatching each step: where the mesh needs a bound it
    waits for the oldest queued step's output; elsewhere it does nothing.
    """

    def __init__(self, mesh: Mesh) -> None:
        self.limit = steps_in_flight(mesh)
        self._queued: collections.deque = collections.deque()

    def __call__(self, step_output) -> None:
        if self.limit:
            self._queued.append(step_output)
            if len(self._queued) >= self.limit:
                jax.block_until_ready(self._queued.popleft())


def make_train_step(
    net: models.LayeredNet,
    dp_config: DPConfig,
    algo: str,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    augment: bool = False,
    donate: bool = True,
) -> Callable:
    """``step(params, opt_state, x, y, key) -> (params, opt_state, metrics)``, jitted.

    The batch (x, y) is sharded over ``mesh``; params and optimizer state are replicated.
    ``metrics`` holds the batch-mean ``loss`` and the number of ``correct`` predictions.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo={algo!r} is unknown; choose one of {ALGOS}.")
    grad_fn = bp_grad if algo == "bp" else contrastive_grad
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def step(params, opt_state, x, y, key):
        if augment:
            x = data_lib.augment_batch(key, x)
        grads, aux = grad_fn(net, params, x, y, dp_config)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        correct = jnp.sum(jnp.argmax(aux.logits, -1) == y)
        return params, opt_state, {"loss": aux.loss, "correct": correct}

    return jax.jit(
        step,
        in_shardings=(replicated, replicated, batch, batch, replicated),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1) if donate else (),
    )


def make_eval_step(net: models.LayeredNet, dp_config: DPConfig, mesh: Mesh) -> Callable:
    """``evaluate(params, x, y, mask) -> (sum of losses, number correct)`` over a masked batch."""
    from dualprop_jax.losses import per_example_loss, targets_as_array

    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    dtype = jnp.dtype(dp_config.dtype)

    def evaluate(params, x, y, mask):
        y_hat = net.forward(params, x, dtype).astype(jnp.promote_types(dtype, jnp.float32))
        losses = per_example_loss(dp_config.loss, y_hat, targets_as_array(y_hat, y))
        correct = (jnp.argmax(y_hat, -1) == y) & mask
        return jnp.sum(jnp.where(mask, losses, 0.0)), jnp.sum(correct)

    return jax.jit(
        evaluate,
        in_shardings=(replicated, batch, batch, batch),
        out_shardings=(replicated, replicated),
    )


def global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from host data every process holds in full (single or multi-process).

    Each process copies only the slices its own devices hold.
    """
    x = np.asarray(x)
    if sharding.spec and sharding.spec[0] is not None:
        check_divisible(len(x), sharding.mesh, "batch size")
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def evaluate(
    eval_step: Callable, params, x: np.ndarray, y: np.ndarray, batch_size: int, mesh: Mesh
) -> tuple[float, float]:
    """Mean loss and accuracy over (x, y), in padded batches of ``batch_size``."""
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    check_divisible(batch_size, mesh, "eval batch size")
    batch = NamedSharding(mesh, P("data"))
    total_loss, total_correct = 0.0, 0
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        pad = batch_size - len(xb)
        mask = np.arange(batch_size) < len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
        loss, correct = eval_step(
            params, global_array(xb, batch), global_array(yb, batch), global_array(mask, batch)
        )
        total_loss += float(loss)
        total_correct += int(correct)
    return total_loss / n, total_correct / n


def alignment_fn(net: models.LayeredNet, dp_config: DPConfig) -> Callable:
    """Jitted ``(params, x, y) -> per-leaf cosine(DP grad, BP grad)`` (diagnostics)."""

    @jax.jit
    def fn(params, x, y):
        g_dp, _ = contrastive_grad(net, params, x, y, dp_config)
        g_bp, _ = bp_grad(net, params, x, y, dp_config)
        return alignment(g_dp, g_bp)["cosine"]

    return fn


# ----------------------------------------------------------------------------- the run

Hook = Callable[[str, dict], None]
"""``hook(event, info)`` with event in {"start", "step", "epoch", "end"}: progress for a caller."""


def _ckpt_manager(workdir: pathlib.Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )


def _save(mgr, epoch: int, state: dict, meta: dict) -> None:
    import orbax.checkpoint as ocp

    mgr.save(
        epoch,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    mgr.wait_until_finished()


def _restore(mgr, epoch: int, target: dict) -> tuple[dict, dict]:
    import orbax.checkpoint as ocp

    out = mgr.restore(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        ),
    )
    return out["state"], out["meta"]


def existing_checkpoint_epoch(workdir: str | os.PathLike) -> int | None:
    """The latest saved epoch in ``workdir/checkpoints``, or None."""
    ckpt = pathlib.Path(workdir) / "checkpoints"
    if not ckpt.is_dir():
        return None
    steps = [int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def _write_metrics_csv(path: pathlib.Path, history: list[dict]) -> None:
    if not history:
        return
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def _write_json(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    hook: Hook | None = None,
    dataset: data_lib.Dataset | None = None,
    log_every: int = 20,
) -> dict:
    """Train ``config.model`` with ``config.algo`` and leave a complete run in ``workdir``.

    Writes Orbax checkpoints every epoch (``workdir/checkpoints``), ``metrics.csv`` (a row per
    epoch), ``alignment.json`` (when diagnostics are on) and ``results.json``; returns the
    results dict. The best-validation parameters are evaluated on the test split.

    ``resume=True`` continues from the latest checkpoint exactly (same data order and
    augmentation keys); without it, a workdir that holds checkpoints is refused, never
    overwritten. A NaN/Inf loss raises :class:`DivergenceError` and keeps the last good checkpoint.
    """
    emit = hook or (lambda event, info: None)
    workdir = pathlib.Path(workdir)
    saved_epoch = existing_checkpoint_epoch(workdir)
    if saved_epoch is not None and not resume:
        raise TrainingError(
            f"workdir {workdir} already holds checkpoints of a run (up to epoch {saved_epoch}). "
            "Pass --resume (resume=True) to continue it, or choose another --workdir. "
            "Nothing was changed."
        )
    if resume and saved_epoch is not None:
        saved_cfg = (
            json.loads((workdir / "config.json").read_text())
            if (workdir / "config.json").exists()
            else None
        )
        if saved_cfg is not None and saved_cfg != config.to_dict():
            diff = sorted(
                k
                for k in set(saved_cfg) | set(config.to_dict())
                if saved_cfg.get(k) != config.to_dict().get(k)
            )
            raise TrainingError(
                f"cannot resume {workdir}: the config differs from the saved run in {diff}. "
                "Resume with the same settings, or start a new --workdir."
            )

    ds = (
        dataset
        if dataset is not None
        else data_lib.load_dataset(
            config.dataset,
            data_dir=config.data_dir,
            val_fraction=config.val_fraction,
            seed=config.seed,
            max_train=config.max_train,
        )
    )
    data_lib.check_batch_size(config.batch_size, len(ds.x_train))
    mesh = make_mesh(config.devices)
    check_divisible(config.batch_size, mesh)
    eval_bs = config.eval_batch_size
    eval_bs += (-eval_bs) % mesh.devices.size  # round up to a multiple of the device count
    augment = ds.augment if config.augment is None else config.augment
    if augment and len(ds.input_shape) != 3:
        raise ValueError(f"augmentation needs images (H, W, C); data has shape {ds.input_shape}.")

    model = build_model(config, ds.input_shape, ds.num_classes, nnx.Rngs(config.seed))
    net, params = models.split(model)
    dp_config = config.dp_config()
    steps_per_epoch = len(ds.x_train) // config.batch_size
    optimizer = make_optimizer(config, steps_per_epoch)
    opt_state = optimizer.init(params)
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(opt_state, replicated)
    state = {
        "params": params,
        "opt_state": opt_state,
        "best_params": jax.tree.map(jnp.copy, params),
    }

    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        _write_json(workdir / "config.json", config.to_dict())
    mgr = _ckpt_manager(workdir)
    meta = {
        "epoch": 0,
        "best_val_accuracy": None,
        "best_epoch": 0,
        "history": [],
        "diagnostics": [],
        "train_time_s": 0.0,
        "timed_steps": 0,
        "timed_s": 0.0,
        "input_shape": list(ds.input_shape),
        "num_classes": ds.num_classes,
    }
    if resume and saved_epoch is not None:
        state, meta = _restore(mgr, saved_epoch, state)
        state = jax.device_put(state, replicated)

    train_step = make_train_step(net, dp_config, config.algo, optimizer, mesh, augment=augment)
    eval_step = make_eval_step(net, dp_config, mesh)
    diag = alignment_fn(net, dp_config) if config.diagnostics_every else None
    base_key = jax.random.key(config.seed)
    throttle = StepThrottle(mesh)
    emit(
        "start",
        {
            "config": config,
            "dataset": ds,
            "steps_per_epoch": steps_per_epoch,
            "devices": mesh.devices.size,
            "resumed_from_epoch": meta["epoch"] or None,
            "num_params": sum(x.size for x in jax.tree.leaves(state["params"])),
        },
    )

    for epoch in range(meta["epoch"] + 1, config.epochs + 1):
        order = data_lib.epoch_batches(
            len(ds.x_train), config.batch_size, np.random.default_rng([config.seed, epoch])
        )
        params, opt_state = state["params"], state["opt_state"]
        loss_sum, correct_sum, seen = jnp.zeros(()), jnp.zeros((), jnp.int32), 0
        t0 = time.perf_counter()
        t_first = None
        for i, idx in enumerate(order):
            global_step = (epoch - 1) * steps_per_epoch + i
            xb, yb = ds.x_train[idx], ds.y_train[idx]
            x, y = global_array(xb, batch_sharding), global_array(yb, batch_sharding)
            key = jax.random.fold_in(base_key, global_step)
            params, opt_state, m = train_step(params, opt_state, x, y, key)
            loss_sum, correct_sum = loss_sum + m["loss"], correct_sum + m["correct"]
            throttle(m["loss"])
            seen += len(idx)
            if i == 0:
                jax.block_until_ready(params)
                t_first = time.perf_counter()
            if diag is not None and global_step % config.diagnostics_every == 0:
                cos = jax.device_get(diag(params, x, y))
                meta["diagnostics"].append(
                    {
                        "step": global_step,
                        "epoch": epoch,
                        "cosine": {k: float(v) for k, v in cos.items()},
                    }
                )
            if (i + 1) % log_every == 0 or i + 1 == len(order):
                mean_loss = float(loss_sum) / (i + 1)
                if not math.isfinite(mean_loss):
                    raise DivergenceError(
                        f"the training loss became {mean_loss} at epoch {epoch}, step {i + 1}. "
                        f"The last good checkpoint (epoch {meta['epoch']}) is kept in "
                        f"{workdir / 'checkpoints'}. Lower --lr or --beta, or try --algo dp_top "
                        "(DP with asymmetric α can be unstable)."
                    )
                emit(
                    "step",
                    {
                        "epoch": epoch,
                        "step": i + 1,
                        "steps": len(order),
                        "loss": mean_loss,
                        "accuracy": int(correct_sum) / seen,
                    },
                )
        jax.block_until_ready(params)
        t1 = time.perf_counter()
        train_loss, train_acc = float(loss_sum) / len(order), int(correct_sum) / seen
        val_loss, val_acc = evaluate(eval_step, params, ds.x_val, ds.y_val, eval_bs, mesh)
        epoch_time = t1 - t0
        meta["train_time_s"] += epoch_time
        if len(order) > 1:
            meta["timed_steps"] += len(order) - 1
            meta["timed_s"] += t1 - t_first
        best = meta["best_val_accuracy"]
        improved = len(ds.x_val) == 0 or best is None or val_acc > best
        if improved:
            meta["best_val_accuracy"] = _finite(val_acc)
            meta["best_epoch"] = epoch
            state["best_params"] = jax.tree.map(jnp.copy, params)  # params get donated
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "epoch_time_s": epoch_time,
        }
        meta["history"].append(row)
        meta["epoch"] = epoch
        state["params"], state["opt_state"] = params, opt_state
        _save(mgr, epoch, state, meta)
        if is_main:
            _write_metrics_csv(workdir / "metrics.csv", meta["history"])
            if meta["diagnostics"]:
                _write_json(workdir / "alignment.json", meta["diagnostics"])
        emit("epoch", dict(row, best_val_accuracy=meta["best_val_accuracy"]))

    test_loss, test_acc = evaluate(
        eval_step, state["best_params"], ds.x_test, ds.y_test, eval_bs, mesh
    )
    results = {
        "algo": config.algo,
        "variant": None if config.algo == "bp" else dp_config.variant,
        "alpha": config.alpha,
        "beta": config.beta,
        "dataset": config.dataset,
        "model": config.model,
        "epochs": config.epochs,
        "seed": config.seed,
        "best_val_accuracy": meta["best_val_accuracy"],
        "best_epoch": meta["best_epoch"],
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "train_time_s": meta["train_time_s"],
        "steps_per_s": (meta["timed_steps"] / meta["timed_s"]) if meta["timed_s"] else None,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": int(mesh.devices.size),
        "processes": jax.process_count(),
        "num_train": len(ds.x_train),
        "dataset_source": ds.source,
        "config": config.to_dict(),
    }
    if is_main:
        _write_json(workdir / "results.json", results)
    emit("end", results)
    return results


def load_checkpoint(workdir: str | os.PathLike, epoch: int | None = None):
    """Restore a run: ``(net, state, meta)`` with ``state = {"params", "opt_state",
    "best_params"}`` from ``workdir`` (latest epoch unless ``epoch`` is given).

    ``models.merge(net, state["params"])`` gives back an NNX module.
    """
    import orbax.checkpoint as ocp

    workdir = pathlib.Path(workdir)
    latest = existing_checkpoint_epoch(workdir)
    if latest is None or not (workdir / "config.json").exists():
        raise TrainingError(f"{workdir} holds no checkpointed run (checkpoints/, config.json).")
    config = TrainConfig.from_dict(json.loads((workdir / "config.json").read_text()))
    epoch = latest if epoch is None else epoch
    mgr = _ckpt_manager(workdir)
    meta = mgr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    model = build_model(config, meta["input_shape"], meta["num_classes"], nnx.Rngs(config.seed))
    net, params = models.split(model)
    # the optimizer state's structure does not depend on the number of steps
    opt_state = make_optimizer(config, 1).init(params)
    target = {"params": params, "opt_state": opt_state, "best_params": params}
    state, meta = _restore(mgr, epoch, target)
    return net, state, meta
