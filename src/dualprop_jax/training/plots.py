"""Plots of a finished or running training run (matplotlib, Agg backend).

Application layer: used by ``train_and_evaluate`` (``plots=True``), the ``dualprop`` command and
the experiment scripts, never by the core library.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator


def rounding_floor(dtype: str | np.dtype = "float32") -> float:
    """Smallest 1 − cosine drawn for cosines computed in ``dtype``: its machine epsilon
    (float32: 2**-23 ≈ 1.19e-7; float64: ≈ 2.2e-16).

    A cosine rounded to ``dtype`` can only be 1 or a step of eps/2 below it, and the sums
    behind it round at eps too, so 1 − cos below eps is rounding, not a closer agreement: drawn
    as it is, on a log axis, a gap of 6e-8 or 0 would look like a fall by orders of magnitude.
    """
    return float(np.finfo(dtype).eps)


FLOOR = rounding_floor("float32")
"""The floor of :func:`plot_alignment`'s default, for the float32 gradients of the parameters
(which stay float32 whatever the rule's compute dtype)."""


def floored_gap(cosine: np.ndarray, dtype: str | np.dtype = "float32") -> np.ndarray:
    """1 − ``cosine`` (float64), raised to :func:`rounding_floor` of ``dtype`` where below it."""
    return np.maximum(1.0 - np.asarray(cosine, np.float64), rounding_floor(dtype))


def dataset_name(dataset: str) -> str:
    """How a plot's title names ``TrainConfig.dataset``: a file or folder by its own name, not
    its whole path (``/data/user/file.npz``: ``file.npz``; a prepared TFDS version
    ``~/tensorflow_datasets/cifar10/3.0.2``: ``cifar10/3.0.2``), a dataset's name as it is."""
    path = pathlib.PurePath(dataset)
    if path.name[:1].isdigit() and path.parent.name:  # a TFDS folder <name>/<version>
        return f"{path.parent.name}/{path.name}"
    if dataset.endswith(".npz") or path.is_absolute() or dataset.startswith(("~", ".")):
        return path.name or dataset
    return dataset


def _has_values(history: Sequence[dict], key: str) -> bool:
    return any(r.get(key) is not None and math.isfinite(r[key]) for r in history)


def plot_curves(
    history: Sequence[dict],
    path: str | pathlib.Path,
    title: str = "",
    *,
    test_accuracy: float | None = None,
    tested_epoch: int | None = None,
) -> None:
    """Loss and accuracy against epoch, for train and (when there is one) validation.

    ``test_accuracy`` (a fraction) is marked on the accuracy panel at ``tested_epoch``, the
    epoch whose parameters were tested; its value is written in the legend, which matplotlib
    places off the curves (a text next to the mark would cover the validation curve).
    """
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "--s")):
        if not _has_values(history, f"{split}_loss"):
            continue  # no validation set: no empty "val" line or legend entry
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split, ms=3)
        accuracy = [100 * r[f"{split}_accuracy"] for r in history]
        ax_acc.plot(epochs, accuracy, style, label=split, ms=3)
    test_text = "test"
    if test_accuracy is not None and math.isfinite(test_accuracy):
        x = tested_epoch if tested_epoch is not None else epochs[-1]
        ax_acc.plot([x], [100 * test_accuracy], "r*", ms=12, label="test", zorder=5)
        test_text = f"test {100 * test_accuracy:.2f}% (epoch {x} params)"
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend()
    handles, labels = ax_acc.get_legend_handles_labels()
    ax_acc.legend(handles, [test_text if label == "test" else label for label in labels])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def alignment_grid(
    diagnostics: Sequence[dict], dtype: str | np.dtype = "float32"
) -> tuple[list[str], list[int], np.ndarray]:
    """``(leaf names, steps, 1 − cosine)`` of the diagnostics records, by :func:`floored_gap`."""
    names = list(diagnostics[0]["cosine"])
    steps = [d["step"] for d in diagnostics]
    cosine = np.array([[d["cosine"][n] for d in diagnostics] for n in names], np.float64)
    return names, steps, floored_gap(cosine, dtype)


def plot_alignment(
    diagnostics: Sequence[dict],
    path: str | pathlib.Path,
    title: str = "",
    dtype: str | np.dtype = "float32",
) -> None:
    """1 − cosine(rule gradient, BP gradient) per parameter leaf against the training step.

    A log scale shows what a colour map of the cosine itself hides: 0.9998 and 0.99999 are
    1 − cos = 2e-4 and 1e-5, a factor of 20 apart. Values below the rounding of ``dtype`` (the
    gradients' dtype) are drawn at :func:`rounding_floor`, on a grey band labelled as rounding.
    """
    names, steps, gap = alignment_grid(diagnostics, dtype)
    floor = rounding_floor(dtype)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, row in zip(names, gap, strict=True):
        ax.semilogy(steps, row, "-o", ms=2, lw=1, label=name)
    label = f"{np.dtype(dtype).name} rounding (1 − cos ≤ {floor:.1e})"
    ax.axhspan(floor / 4, floor, color="0.6", alpha=0.25, lw=0, label=label, zorder=0)
    ax.set_ylim(bottom=floor / 4)
    ax.set(
        xlabel="training step",
        ylabel="1 − cosine(rule gradient, BP gradient)",
        title=f"{title + ': ' if title else ''}alignment with BP (worst cosine "
        f"{1 - gap.max():.6f})",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
