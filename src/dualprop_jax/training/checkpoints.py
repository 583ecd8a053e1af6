"""Orbax checkpoints of a run: save every epoch, restore, resume, and load a finished run.

A checkpoint holds ``state = {"params", "opt_state", "best_params"[, "rule_state"]}`` and
``meta`` (the epoch, the history of ``metrics.csv``, the best validation accuracy, timings).
The latest ``keep`` epochs are kept (``TrainConfig.keep_checkpoints``, default 2). A checkpoint
that cannot be read (damaged, empty, cut off mid-write) is moved to ``workdir/damaged/`` and
the run resumes from the newest one that can, with a warning that names both.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import threading
import time
import warnings

import jax
from flax import nnx

from dualprop_jax import models
from dualprop_jax.errors import TrainingError
from dualprop_jax.training.config import FREE_ON_RESUME, TrainConfig
from dualprop_jax.training.steps import build_model, make_optimizer, rule_params

MAX_TO_KEEP = 2
"""Default number of checkpoints kept (``TrainConfig.keep_checkpoints``)."""


def manager(workdir: pathlib.Path, keep: int = MAX_TO_KEEP):
    """The Orbax ``CheckpointManager`` of ``workdir/checkpoints``; it keeps the last ``keep``."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (pathlib.Path(workdir) / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )


def save(mgr, epoch: int, state: dict, meta: dict) -> None:
    """Write the checkpoint of ``epoch`` and wait until it is on disk.

    Ctrl-C during the save is held back until the checkpoint is complete, and then raised: an
    interrupted run always names a checkpoint that is on disk.
    """
    import orbax.checkpoint as ocp

    with _sigint_deferred():
        mgr.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        mgr.wait_until_finished()


@contextlib.contextmanager
def _sigint_deferred():
    """Hold SIGINT back inside the block (main thread only); raise KeyboardInterrupt after it
    when one arrived."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if arrived:
        raise KeyboardInterrupt


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


def saved_epochs(workdir: str | os.PathLike) -> list[int]:
    """The epochs with a checkpoint folder in ``workdir/checkpoints``, newest first."""
    ckpt = pathlib.Path(workdir) / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted((int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()),
                  reverse=True)  # fmt: skip


def latest_epoch(workdir: str | os.PathLike) -> int | None:
    """The latest saved epoch in ``workdir/checkpoints``, or None."""
    epochs = saved_epochs(workdir)
    return epochs[0] if epochs else None


def restore_latest(workdir: pathlib.Path, target: dict) -> tuple[int, dict, dict]:
    """``(epoch, state, meta)`` of the newest checkpoint that can be read.

    Each newer one that cannot is moved to ``workdir/damaged/<epoch>-<time>`` (kept, not
    deleted) with a warning naming it and the epoch used instead.
    """
    epochs = saved_epochs(workdir)
    for i, epoch in enumerate(epochs):
        try:
            state, meta = restore(manager(workdir), epoch, target)
        except Exception as err:  # any failure to read it means it is damaged
            moved = _set_aside(workdir, epoch)
            fallback = f"epoch {epochs[i + 1]}" if i + 1 < len(epochs) else "nothing"
            warnings.warn(
                f"the checkpoint of epoch {epoch} in {workdir / 'checkpoints'} cannot be read "
                f"({type(err).__name__}: {str(err)[:200]}); it was moved to {moved}, and the "
                f"run resumes from {fallback} instead.",
                stacklevel=2,
            )
            continue
        return epoch, state, meta
    raise TrainingError(
        f"no checkpoint in {workdir / 'checkpoints'} can be read (tried epochs {epochs}; "
        f"they were moved to {workdir / 'damaged'}). Start a new run in another --workdir."
    )


def _set_aside(workdir: pathlib.Path, epoch: int) -> pathlib.Path:
    dest = workdir / "damaged" / f"{epoch}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(workdir / "checkpoints" / str(epoch)), dest)
    return dest


def saved_config(workdir: pathlib.Path) -> TrainConfig | None:
    """The ``config.json`` of the run in ``workdir`` (None if there is none)."""
    path = pathlib.Path(workdir) / "config.json"
    return TrainConfig.from_dict(json.loads(path.read_text())) if path.exists() else None


def resume_epoch(config: TrainConfig, workdir: pathlib.Path, resume: bool) -> int | None:
    """The last saved epoch to resume from (None: start afresh), or a :class:`TrainingError`.

    A workdir holding checkpoints is never overwritten: without ``resume`` it is refused. With
    ``resume`` the workdir must hold a run, and the config may differ from the saved one only
    in :data:`~dualprop_jax.training.config.FREE_ON_RESUME` settings and in ``epochs``: any
    total above the epochs done (the learning-rate schedule is rebuilt for it; see
    ``train._record_extension``).
    """
    saved_epoch = latest_epoch(workdir)
    if not resume:
        if saved_epoch is not None:
            raise TrainingError(
                f"workdir {workdir} already holds checkpoints of a run (up to epoch "
                f"{saved_epoch}). Pass --resume (resume=True) to continue it, or choose another "
                "--workdir. Nothing was changed."
            )
        return None
    if saved_epoch is None:
        what = "a config.json but no checkpoint yet" if saved_config(workdir) else "no run"
        raise TrainingError(
            f"--resume: {workdir} holds {what} (no {workdir / 'checkpoints'}/<epoch>), so there "
            "is nothing to continue. Check the --workdir path, or drop --resume to start a new "
            "run there."
        )
    saved = saved_config(workdir)
    if saved is not None:
        check_resumable(saved, config, saved_epoch, workdir)
    return saved_epoch


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resumable(saved: TrainConfig, given: TrainConfig, done: int, workdir) -> None:
    """Refuse a resume whose config changes the math, listing each field saved vs given."""
    old, new = _flat(saved.to_dict()), _flat(given.to_dict())
    free = {*FREE_ON_RESUME, "epochs"}
    changed = [k for k in sorted(set(old) | set(new)) if k not in free and old.get(k) != new.get(k)]
    problems = [f"{k}: saved {old.get(k)!r}, given {new.get(k)!r}" for k in changed]
    if given.epochs <= done:
        problems.append(
            f"epochs: given {given.epochs}, but the run has done {done} of its {saved.epochs} "
            f"(a resumed run goes on to any total above the {done} epochs done: pass --epochs "
            f"{done + 1} or more)"
        )
    if problems:
        raise TrainingError(
            f"cannot resume {workdir}: these settings differ from the saved run and would change "
            "what it computes:\n  " + "\n  ".join(problems) + "\nResume with the saved values, "
            f"or start a new --workdir. Free to change on resume: {', '.join(sorted(free))}."
        )


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
    mgr = manager(workdir, config.keep_checkpoints)
    meta = mgr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    model = build_model(config, meta["input_shape"], meta["num_classes"], nnx.Rngs(config.seed))
    net, params = models.split(model)
    params = rule_params(config.rule, net, params, config.seed)
    # the optimizer state's structure does not depend on the number of steps
    opt_state = make_optimizer(config, 1).init(params)
    target = {"params": params, "opt_state": opt_state, "best_params": params}
    rule_state = config.rule.init(net, params)
    if jax.tree.leaves(rule_state):
        target["rule_state"] = rule_state
    state, meta = restore(mgr, epoch, target)
    return net, state, meta
