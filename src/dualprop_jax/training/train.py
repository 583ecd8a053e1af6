"""``train_and_evaluate(config, workdir)``: a complete, resumable training run.

The story, one module per chapter: load the data (:mod:`~dualprop_jax.data`), build the model,
the rule's train step and the optimizer (:mod:`~dualprop_jax.training.steps`) on a device mesh
(:mod:`~dualprop_jax.training.parallel`), run epochs
(:mod:`~dualprop_jax.training.loop`), validate, checkpoint
(:mod:`~dualprop_jax.training.checkpoints`), and test the best-validation parameters.

No printing or plotting here: progress reaches the caller through ``hook(event, info)``. The
run leaves checkpoints, ``config.json``, ``metrics.csv``, ``alignment.json`` (diagnostics on)
and ``results.json`` in ``workdir``, and with ``config.tensorboard`` the same curves as
TensorBoard event files in ``workdir/tensorboard`` (:mod:`~dualprop_jax.training.tensorboard`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dualprop_jax import data as data_lib
from dualprop_jax import models, rules
from dualprop_jax.data import device as device_data
from dualprop_jax.data.pipeline import check_batch_size
from dualprop_jax.errors import DivergenceError, TrainingError, TrainingInterrupted
from dualprop_jax.losses import labels_per_example
from dualprop_jax.rules import DualProp
from dualprop_jax.training import checkpoints, tensorboard
from dualprop_jax.training import parallel as par
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.loop import EpochResult, train_epoch
from dualprop_jax.training.steps import (
    TrainState,
    TrainStep,
    alignment_fn,
    build_model,
    evaluate,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    rule_metrics_fn,
    rule_params,
)

Hook = Callable[[str, dict], None]
"""``hook(event, info)`` with event in {"start", "step", "epoch", "end"}: progress for a caller."""


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    hook: Hook | None = None,
    dataset: data_lib.Dataset | None = None,
    log_every: int = 20,
    plots: bool = True,
) -> dict:
    """Train ``config.model`` with ``config.rule`` and leave a complete run in ``workdir``.

    Returns the results dict (also written to ``results.json``); with ``plots``, also writes
    ``curves.png`` (and ``alignment.png`` with diagnostics). The best-validation parameters
    are tested. ``resume=True`` continues from the latest readable checkpoint exactly (same
    data order and augmentation keys); without it, a workdir holding checkpoints is refused,
    never overwritten. ``hook(event, info)`` receives progress (``ConsoleProgress`` prints
    it). A NaN/Inf training loss, or one more than 1000x max(1, the run's first loss) (see
    :data:`~dualprop_jax.training.loop.GROWTH_LIMIT`), raises :class:`DivergenceError`, Ctrl-C
    :class:`TrainingInterrupted`; both keep the last checkpoint.
    """
    emit = hook or (lambda event, info: None)
    saved_epoch = checkpoints.resume_epoch(config, pathlib.Path(workdir), resume)
    workdir = _usable_workdir(workdir)
    ds = dataset if dataset is not None else load_data(config)
    run = build_run(config, ds)
    _usable_workdir(workdir, create=True)
    state, best, meta = run.start(workdir, saved_epoch, ds)
    events = _training_events(config, workdir, meta)  # None unless config.tensorboard
    if run.feed == "device":
        device_data.resident(ds, run.mesh)  # copied once, before the first epoch's clock
    if jax.process_index() == 0:
        _write_json(workdir / "config.json", config.to_dict())
    mgr = checkpoints.manager(workdir, config.keep_checkpoints)
    emit("start", run.start_info(ds, state, meta))

    saved = meta["epoch"]  # the newest epoch on disk; meta runs ahead of it until the save
    try:
        for epoch in range(meta["epoch"] + 1, config.epochs + 1):
            state, best = _run_epoch(run, (state, best), meta, ds, epoch, emit, log_every, workdir)
            checkpoint = _checkpoint(state, best)
            try:
                checkpoints.save(mgr, epoch, checkpoint, meta)
            except KeyboardInterrupt:  # save() holds Ctrl-C back until the checkpoint is on disk
                saved = epoch
                raise
            saved = epoch
            _write_history(workdir, meta, events)
            emit("epoch", dict(meta["history"][-1], best_val_accuracy=meta["best_val_accuracy"]))
        test = run.evaluate(best, ds, "test")
    except KeyboardInterrupt:
        raise TrainingInterrupted(saved, str(workdir)) from None

    results = _results(config, meta, test, ds, run)
    if jax.process_index() == 0:
        _write_json(workdir / "results.json", results)
        if plots:
            write_plots(workdir, results)
    emit("end", results)
    return results


def _run_epoch(run, state_best, meta, ds, epoch, emit, log_every, workdir):
    """Train epoch ``epoch``, validate it and record it in ``meta``: ``(state, best params)``."""
    state, best = state_best
    config = run.config
    emit("epoch_start", {"epoch": epoch, "steps": len(ds.x_train) // config.batch_size})
    try:
        result = train_epoch(
            run.step, state, ds, batch_size=config.batch_size, epoch=epoch,
            seed=config.seed, mesh=run.mesh, log_every=log_every,
            diagnostics=run.diagnostics, on_progress=lambda info: emit("step", info),
            feed=run.feed, start_loss=meta.get("start_loss"),
        )  # fmt: skip
    except DivergenceError as e:
        raise DivergenceError(_divergence_advice(str(e), config, meta, workdir)) from None
    state = result.state
    if meta.get("start_loss") is None:  # the run's first loss, kept in checkpoints for resumes
        meta["start_loss"] = result.start_loss
    val = run.evaluate(state.params, ds, "val")
    val.update(run.rule_metrics(state))
    if _record_epoch(meta, epoch, result, val, has_val=len(ds.x_val) > 0):
        best = jax.tree.map(jnp.copy, state.params)  # the step donates its input state
    return state, best


def _usable_workdir(workdir: str | os.PathLike, create: bool = False) -> pathlib.Path:
    """``workdir`` as a Path if it is (or can become) a writable folder, else a
    :class:`TrainingError` saying why. With ``create``, it is created."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise TrainingError(
            f"--workdir {workdir} is a file, not a folder; choose another path (nothing was "
            "changed)."
        )
    existing = next(p for p in (workdir, *workdir.absolute().parents) if p.exists())
    why = None
    if not existing.is_dir():
        why = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"no permission to write in {existing}"
    if why is None and create:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = e.strerror or str(e)
    if why is not None:
        raise TrainingError(
            f"--workdir {workdir} cannot be written ({why}); choose a folder you can write to, "
            "or fix its permissions."
        )
    return workdir


def _divergence_advice(what: str, config: TrainConfig, meta: dict, workdir) -> str:
    """The divergence message: where the last good state is, and changes worth trying."""
    kept = (
        f"The last good checkpoint (epoch {meta['epoch']}) is kept in {workdir / 'checkpoints'}."
        if meta["epoch"]
        else "No checkpoint was written: it diverged in its first epoch."
    )
    tips = [f"a lower --lr than {config.learning_rate:g}"]
    rule = config.rule
    if isinstance(rule, DualProp):
        tips.append(f"a smaller --beta than {rule.beta:g}")
        if rule.variant == "dp" and rule.alpha != 0.5:
            tips.append("--alpha 0.5 or --rule dp_top (DP with asymmetric α can be unstable)")
    if config.lr_schedule == "constant" or not config.warmup_epochs:
        tips.append("a learning-rate warm-up (--lr-schedule cosine --warmup-epochs 1)")
    return f"{what} {kept} Try {'; or '.join(tips)}."


def load_data(config: TrainConfig) -> data_lib.Dataset:
    """The dataset named by ``config`` (split and standardised; with ``max_eval`` only the
    first ``max_eval`` validation and test images are kept)."""
    ds = data_lib.load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        val_fraction=config.val_fraction,
        seed=config.seed,
        max_train=config.max_train,
    )
    n = config.max_eval
    if n is None:
        return ds
    return dataclasses.replace(
        ds, x_val=ds.x_val[:n], y_val=ds.y_val[:n], x_test=ds.x_test[:n], y_test=ds.y_test[:n]
    )


@dataclasses.dataclass
class Run:
    """What a run is built from: the config, mesh, network, optimizer and jitted steps."""

    config: TrainConfig
    mesh: Any
    net: models.LayeredNet
    params: Any
    optimizer: Any
    step: TrainStep
    diagnostics: tuple[Callable, int] | None
    feed: str = "host"  # "device" or "host", resolved from config.feed

    def evaluate(self, params, ds: data_lib.Dataset, split: str) -> dict[str, float]:
        """The loss and accuracy of ``params`` on one split, with the run's feed and devices."""
        return evaluate(
            self.net, params, ds, self.config.rule, split=split,
            batch_size=self.config.eval_batch_size, mesh=self.mesh, feed=self.config.feed,
        )  # fmt: skip

    def rule_metrics(self, state: TrainState) -> dict[str, float]:
        """``{"rule/<name>": value}`` of ``rule.metrics`` (empty for rules without any), e.g.
        KP-DP's angle between B_k and W_k: a column of ``metrics.csv`` per epoch."""
        if not hasattr(self, "_metrics_fn"):  # built (and compiled) once per run
            rule = self.config.rule
            self._metrics_fn = rule_metrics_fn(self.net, rule, state.params, state.rule_state)
        if self._metrics_fn is None:
            return {}
        values = jax.device_get(self._metrics_fn(state.params, state.rule_state))
        return {f"rule/{k}": float(v) for k, v in values.items()}

    def start(self, workdir: pathlib.Path, saved_epoch: int | None, ds: data_lib.Dataset):
        """``(state, best_params, meta)``: fresh, or restored from the newest readable
        checkpoint (``saved_epoch`` or, if that one is damaged, an earlier one)."""
        rule, mesh = self.config.rule, self.mesh
        state = TrainState.create(self.net, self.params, rule, self.optimizer, mesh)
        if saved_epoch is None:
            meta = _fresh_meta(ds)
            if initial := self.rule_metrics(state):
                meta["rule_metrics_start"] = initial
            return state, jax.tree.map(jnp.copy, state.params), meta
        _, saved, meta = checkpoints.restore_latest(workdir, _checkpoint(state, state.params))
        saved = par.put_replicated(saved, self.mesh)
        _record_extension(meta, checkpoints.saved_config(workdir), self.config, ds)
        rule_state = saved.get("rule_state", state.rule_state)
        state = TrainState(saved["params"], saved["opt_state"], rule_state)
        return state, saved["best_params"], meta

    def start_info(self, ds: data_lib.Dataset, state: TrainState, meta: dict) -> dict:
        """The payload of the ``"start"`` event: config, dataset, steps per epoch, devices, resumed
        epoch, parameter count, feed and the bytes of training data stored."""
        return {
            "config": self.config,
            "dataset": ds,
            "steps_per_epoch": len(ds.x_train) // self.config.batch_size,
            "devices": par.num_devices(self.mesh),
            "resumed_from_epoch": meta["epoch"] or None,
            "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
            "feed": self.feed,
            "data_bytes": device_data.stored_bytes(ds),
        }


def build_run(config: TrainConfig, ds: data_lib.Dataset) -> Run:
    """Check the data against the config, then build the mesh, model, optimizer and steps, and
    choose the feed (:func:`~dualprop_jax.data.device.choose_feed`)."""
    check_batch_size(config.batch_size, len(ds.x_train))
    mesh = par.make_mesh(config.devices)
    par.check_divisible(config.batch_size, mesh)
    augment = ds.augment if config.augment is None else config.augment
    if augment and len(ds.input_shape) != 3:
        raise ValueError(f"augmentation needs images (H, W, C); data has shape {ds.input_shape}.")
    model = build_model(config, ds.input_shape, ds.num_classes, nnx.Rngs(config.seed))
    net, params = models.split(model)
    params = rule_params(config.rule, net, params, config.seed)
    optimizer = make_optimizer(config, len(ds.x_train) // config.batch_size)
    step = make_train_step(net, config.rule, optimizer, mesh=mesh, donate=True, augment=augment)
    diagnostics = None
    if config.diagnostics_every:
        diagnostics = (alignment_fn(net, config.rule), config.diagnostics_every)
    feed = device_data.choose_feed(config.feed, ds, mesh)
    return Run(config, mesh, net, params, optimizer, step, diagnostics, feed)


def _record_extension(meta: dict, saved: TrainConfig | None, config: TrainConfig, ds) -> None:
    """Note in ``meta`` (and so in ``results.json``, under ``"epoch_extensions"``) a resume that
    changed ``epochs``, to any total above the epochs done.

    The learning-rate schedule is rebuilt for the new number of epochs: a constant rate stays
    as it was; a cosine decay (and its warm-up) is recomputed to end at the new last step, so
    from the resume step on the rate follows the new cosine: it jumps up at that step for more
    epochs, down for fewer. The rates just before and after are recorded.
    """
    if saved is None or config.epochs == saved.epochs:
        return
    steps = len(ds.x_train) // config.batch_size
    step = meta["epoch"] * steps

    def rate(c: TrainConfig) -> float:
        schedule = learning_rate_schedule(c, steps)
        return float(schedule(step)) if callable(schedule) else float(schedule)

    meta.setdefault("extensions", []).append(
        {
            "at_epoch": meta["epoch"],
            "from_epochs": saved.epochs,
            "to_epochs": config.epochs,
            "lr_schedule": config.lr_schedule,
            "lr_at_resume_before": rate(saved),
            "lr_at_resume_after": rate(config),
        }
    )


def _fresh_meta(ds: data_lib.Dataset) -> dict:
    return {
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


def _checkpoint(state: TrainState, best_params) -> dict:
    out = {"params": state.params, "opt_state": state.opt_state, "best_params": best_params}
    if jax.tree.leaves(state.rule_state):
        out["rule_state"] = state.rule_state
    return out


def _record_epoch(meta: dict, epoch: int, result: EpochResult, val: dict, has_val: bool) -> bool:
    """Add epoch ``epoch`` to ``meta``; True when its parameters are the best so far."""
    meta["train_time_s"] += result.time_s
    meta["timed_steps"] += result.timed_steps
    meta["timed_s"] += result.timed_s
    meta["diagnostics"] += result.diagnostics
    best = meta["best_val_accuracy"]
    improved = not has_val or best is None or val["accuracy"] > best
    if improved:
        meta["best_val_accuracy"] = _finite(val["accuracy"])
        meta["best_epoch"] = epoch
    meta["history"].append(
        {
            "epoch": epoch,
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "epoch_time_s": result.time_s,
            **{k: v for k, v in val.items() if k.startswith("rule/")},
        }
    )
    meta["epoch"] = epoch
    return improved


def _results(config: TrainConfig, meta: dict, test: dict, ds: data_lib.Dataset, run: Run) -> dict:
    positions = labels_per_example(ds.y_test[:1]) if len(ds.y_test) else 1
    per_position = {}
    if positions > 1 and config.rule.loss == "softmax_ce":  # sequences: bits per position
        per_position = {"test_bits_per_position": test["loss"] / (positions * math.log(2))}
    return {
        "rule": config.rule.to_dict(),
        "dataset": config.dataset,
        "model": config.model,
        "epochs": config.epochs,
        "seed": config.seed,
        "best_val_accuracy": meta["best_val_accuracy"],
        "best_epoch": meta["best_epoch"],
        "tested_epoch": meta["best_epoch"],
        "tested_params": "best validation epoch" if len(ds.x_val) else "last epoch (no val set)",
        "epoch_extensions": meta.get("extensions", []),
        "rule_metrics_start": meta.get("rule_metrics_start", {}),
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        **per_position,
        "train_time_s": meta["train_time_s"],
        "steps_per_s": (meta["timed_steps"] / meta["timed_s"]) if meta["timed_s"] else None,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": par.num_devices(run.mesh),
        "feed": run.feed,
        "processes": jax.process_count(),
        "num_train": len(ds.x_train),
        "num_val": len(ds.x_val),
        "num_test": len(ds.x_test),
        "dataset_source": ds.source,
        "config": config.to_dict(),
    }


def write_plots(workdir: str | os.PathLike, results: dict | None = None) -> None:
    """``curves.png`` from ``metrics.csv`` (the test accuracy marked when ``results`` are
    given) and ``alignment.png`` from ``alignment.json``, where those files exist."""
    from dualprop_jax.training import plots

    workdir = pathlib.Path(workdir)
    title = _plot_title(workdir)
    history_file, align_file = workdir / "metrics.csv", workdir / "alignment.json"
    if history_file.exists():
        with history_file.open() as fh:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        for row in history:
            row["epoch"] = int(row["epoch"])
        results = results or {}
        plots.plot_curves(
            history, workdir / "curves.png", title,
            test_accuracy=results.get("test_accuracy"), tested_epoch=results.get("tested_epoch"),
        )  # fmt: skip
    if align_file.exists():
        plots.plot_alignment(json.loads(align_file.read_text()), workdir / "alignment.png", title)


def _plot_title(workdir: pathlib.Path) -> str:
    """``model / dataset / rule label`` of the run's ``config.json`` (the rule's name where its
    class is not registered in this process, e.g. a user's rule read by another program; a
    dataset file by its name, not its path)."""
    from dualprop_jax.training import plots

    path = workdir / "config.json"
    if not path.exists():
        return ""
    config = json.loads(path.read_text())
    rule = config.get("rule", {})
    try:
        label = rules.from_dict(rule).label
    except (ValueError, TypeError):
        label = rule.get("name", "?") if isinstance(rule, dict) else str(rule)
    dataset = plots.dataset_name(str(config.get("dataset", "?")))
    return f"{config.get('model', '?')} / {dataset} / {label}"


def _training_events(
    config: TrainConfig, workdir: pathlib.Path, meta: dict
) -> tensorboard.TrainingEvents | None:
    """With ``config.tensorboard`` (process 0): the run's new TensorBoard event files under
    ``workdir/tensorboard``, holding the history so far (:mod:`.tensorboard`); else None."""
    if not config.tensorboard or jax.process_index() != 0:
        return None
    return tensorboard.TrainingEvents(
        workdir / "tensorboard",
        meta["history"],
        meta["diagnostics"],
        meta.get("rule_metrics_start"),
    )


def _write_history(
    workdir: pathlib.Path, meta: dict, events: tensorboard.TrainingEvents | None = None
) -> None:
    """``metrics.csv`` and ``alignment.json`` of ``meta``, and its last epoch to ``events``."""
    if jax.process_index() != 0:
        return
    _write_metrics_csv(workdir / "metrics.csv", meta["history"])
    if meta["diagnostics"]:
        _write_json(workdir / "alignment.json", meta["diagnostics"])
    if events is not None:
        row = meta["history"][-1]
        events.add_epochs([row], [d for d in meta["diagnostics"] if d["epoch"] == row["epoch"]])


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
