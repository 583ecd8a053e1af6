"""Plots of a finished or running training run (matplotlib, Agg backend).

Application layer: used by the ``dualprop`` command and the experiment scripts, not by the
core library.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: Sequence[dict], path: str | pathlib.Path, title: str = "") -> None:
    """Loss and accuracy against epoch, for train and validation, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "--s")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split, ms=3)
        ax_acc.plot(
            epochs, [100 * r[f"{split}_accuracy"] for r in history], style, label=split, ms=3
        )
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_alignment(diagnostics: Sequence[dict], path: str | pathlib.Path, title: str = "") -> None:
    """Heatmap of the cosine between the DP and BP gradients: parameter (row) by step (column)."""
    names = list(diagnostics[0]["cosine"])
    steps = [d["step"] for d in diagnostics]
    grid = np.array([[d["cosine"][n] for d in diagnostics] for n in names])
    fig, ax = plt.subplots(figsize=(min(14, 4 + 0.25 * len(steps)), 1.5 + 0.35 * len(names)))
    im = ax.imshow(
        grid,
        aspect="auto",
        cmap="viridis",
        vmin=min(0.9, float(grid.min())),
        vmax=1.0,
        interpolation="nearest",
    )
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 10)).astype(int)
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=8)
    ax.set(
        xlabel="training step",
        title=f"{title + ': ' if title else ''}cosine(DP grad, BP grad), min {grid.min():.5f}",
    )
    fig.colorbar(im, ax=ax, label="cosine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
