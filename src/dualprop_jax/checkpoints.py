"""Orbax checkpoints of a run: save every epoch, restore, resume, and load a finished run.

A checkpoint holds ``state = {"params", "opt_state", "best_params"[, "rule_state"]}`` and
``meta`` (the epoch, the history of ``metrics.csv``, the best validation accuracy, timings).
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
from flax import nnx

from dualprop_jax import models
from dualprop_jax.errors import TrainingError
from dualprop_jax.steps import build_model, make_optimizer
from dualprop_jax.train_config import TrainConfig

MAX_TO_KEEP = 2


def manager(workdir: pathlib.Path):
    """The Orbax ``CheckpointManager`` of ``workdir/checkpoints`` (keeps the last 2)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (pathlib.Path(workdir) / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=MAX_TO_KEEP, create=True),
    )


def save(mgr, epoch: int, state: dict, meta: dict) -> None:
    """Write the checkpoint of ``epoch`` and wait until it is on disk."""
    import orbax.checkpoint as ocp

    mgr.save(
        epoch,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    mgr.wait_until_finished()


def restore(mgr, epoch: int, target: dict) -> tuple[dict, dict]:
    """``(state, meta)`` of ``epoch``, with ``state`` shaped (and sharded) like ``target``."""
    import orbax.checkpoint as ocp

    out = mgr.restore(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        ),
    )
    return out["state"], out["meta"]


def latest_epoch(workdir: str | os.PathLike) -> int | None:
    """The latest saved epoch in ``workdir/checkpoints``, or None."""
    ckpt = pathlib.Path(workdir) / "checkpoints"
    if not ckpt.is_dir():
        return None
    steps = [int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def saved_config(workdir: pathlib.Path) -> TrainConfig | None:
    """The ``config.json`` of the run in ``workdir`` (None if there is none)."""
    path = pathlib.Path(workdir) / "config.json"
    return TrainConfig.from_dict(json.loads(path.read_text())) if path.exists() else None


def resume_epoch(config: TrainConfig, workdir: pathlib.Path, resume: bool) -> int | None:
    """The epoch to resume from (None: start afresh), or a :class:`TrainingError`.

    A workdir holding checkpoints is never overwritten: without ``resume`` it is refused, and
    with it the config must equal the saved one.
    """
    saved_epoch = latest_epoch(workdir)
    if saved_epoch is not None and not resume:
        raise TrainingError(
            f"workdir {workdir} already holds checkpoints of a run (up to epoch {saved_epoch}). "
            "Pass --resume (resume=True) to continue it, or choose another --workdir. "
            "Nothing was changed."
        )
    if saved_epoch is None:
        return None
    saved = saved_config(workdir)
    if saved is not None and saved.to_dict() != config.to_dict():
        new = config.to_dict()
        diff = sorted(k for k in new if saved.to_dict().get(k) != new[k])
        raise TrainingError(
            f"cannot resume {workdir}: the config differs from the saved run in {diff}. "
            "Resume with the same settings, or start a new --workdir."
        )
    return saved_epoch


def load_checkpoint(workdir: str | os.PathLike, epoch: int | None = None):
    """Restore a run: ``(net, state, meta)`` with ``state = {"params", "opt_state",
    "best_params"}`` from ``workdir`` (latest epoch unless ``epoch`` is given).

    ``models.merge(net, state["params"])`` gives back an NNX module.
    """
    import orbax.checkpoint as ocp

    workdir = pathlib.Path(workdir)
    latest = latest_epoch(workdir)
    config = saved_config(workdir)
    if latest is None or config is None:
        raise TrainingError(f"{workdir} holds no checkpointed run (checkpoints/, config.json).")
    epoch = latest if epoch is None else epoch
    mgr = manager(workdir)
    meta = mgr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    model = build_model(config, meta["input_shape"], meta["num_classes"], nnx.Rngs(config.seed))
    net, params = models.split(model)
    # the optimizer state's structure does not depend on the number of steps
    opt_state = make_optimizer(config, 1).init(params)
    target = {"params": params, "opt_state": opt_state, "best_params": params}
    rule_state = config.rule.init(net, params)
    if jax.tree.leaves(rule_state):
        target["rule_state"] = rule_state
    state, meta = restore(mgr, epoch, target)
    return net, state, meta
