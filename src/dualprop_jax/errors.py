"""The exceptions a user may catch. Each message names the problem and how to fix it."""

from __future__ import annotations


class DataError(ValueError):
    """Bad dataset name, missing or corrupt data, or an unusable data option."""


class TrainingError(RuntimeError):
    """A run cannot start or go on (bad workdir, divergence, ...). The message says what to do."""


class DivergenceError(TrainingError):
    """The loss became NaN/Inf. The last good checkpoint is kept."""


class DistributedError(TrainingError):
    """``jax.distributed`` cannot be set up as asked. The message says what to do."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. A ``KeyboardInterrupt``, so it stops a notebook cell as usual;
    ``epoch`` is the last epoch with a checkpoint in ``workdir`` (0: none yet)."""

    def __init__(self, epoch: int, workdir: str) -> None:
        self.epoch, self.workdir = epoch, workdir
        where = (
            f"after epoch {epoch}; continue with --resume (--workdir {workdir})"
            if epoch
            else "in the first epoch, before any checkpoint; start again to train"
        )
        super().__init__(f"interrupted {where}")
