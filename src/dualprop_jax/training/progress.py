"""Progress of a training run on the console: a hook for ``train_and_evaluate``.

    dp.train_and_evaluate(config, workdir, hook=dp.ConsoleProgress())

On a terminal it draws a live bar per epoch; when the output is a file or a pipe it writes one
line per epoch and no bar frames. Application layer: the library itself prints nothing.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO

from dualprop_jax import rules
from dualprop_jax.data.device import describe_bytes


def describe_rule(rule: rules.Rule) -> str:
    """The rule as configured, e.g. ``dp+fast (α=0.5, β=0.01)``, ``dp_top (α=0.5, β=0.01,
    3 bottom_up passes, bfloat16)`` or ``ep (β=0.5, T=100, K=20, symmetric, squared_error)``."""
    extra = []
    if isinstance(rule, rules.DualProp):
        extra = [f"α={rule.alpha:g}", f"β={rule.beta:g}"]
        if rule.passes:
            extra.append(f"{rule.passes} {rule.schedule} pass{'es' if rule.passes > 1 else ''}")
        if not rule.sweep:
            extra.append("no top-down sweep")
    elif isinstance(rule, rules.EquilibriumProp):
        extra = [f"β={rule.beta:g}", f"T={rule.free_steps}", f"K={rule.nudged_steps}"]
        extra.append(f"{rule.nudging} nudging")
    elif isinstance(rule, rules.ContrastiveHebbian):
        extra = [f"T={rule.free_steps}", f"clamped {rule.clamped_steps}"]
    if isinstance(rule, rules.EquilibriumProp | rules.ContrastiveHebbian):
        extra.append(f"σ={rule.activation}, from {rule.start}")
        if rule.order != "synchronous":
            extra.append(f"{rule.order} updates")
    if rule.dtype != "float32":
        extra.append(rule.dtype)
    if rule.loss != "softmax_ce":
        extra.append(rule.loss)
    return rule.label + (f" ({', '.join(extra)})" if extra else "")


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


class ConsoleProgress:
    """``hook(event, info)`` printing a run's progress to ``stream`` (default: stdout, bars on
    stderr). ``bar=None`` draws live bars only when stderr is a terminal."""

    def __init__(self, stream: TextIO | None = None, bar: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __call__(self, event: str, info: dict) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(info)

    def _on_start(self, info: dict) -> None:
        cfg, ds = info["config"], info["dataset"]
        resumed = info["resumed_from_epoch"]
        self._print(
            f"{cfg.model} on {ds.name} ({len(ds.x_train)} train / {len(ds.x_val)} val / "
            f"{len(ds.x_test)} test, from {ds.source}), {info['num_params']:,} parameters, "
            f"{describe_rule(cfg.rule)}, {info['devices']} device(s)"
            + (f", resuming after epoch {resumed}" if resumed else "")
        )
        if "feed" in info:
            size = describe_bytes(info["data_bytes"])
            where = "device-resident" if info["feed"] == "device" else "fed from the host"
            self._print(f"data: {where} ({size} of training data as stored)")

    def _on_epoch_start(self, info: dict) -> None:
        if not self.use_bar:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=info["steps"], desc=f"epoch {info['epoch']}", leave=False, dynamic_ncols=True,
            file=sys.stderr, mininterval=0.5,
        )  # fmt: skip

    def _on_step(self, info: dict) -> None:
        if self.bar is not None:
            self.bar.update(info["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{info['loss']:.4f}", acc=_pct(info["accuracy"]))

    def _on_epoch(self, info: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        val = ""
        if info["val_loss"] is not None and math.isfinite(info["val_loss"]):
            val = f"  val loss {info['val_loss']:.4f} acc {_pct(info['val_accuracy'])}"
        self._print(
            f"epoch {info['epoch']:3d}  train loss {info['train_loss']:.4f} "
            f"acc {_pct(info['train_accuracy'])}{val}  ({info['epoch_time_s']:.1f} s)"
        )

    def _on_end(self, results: dict) -> None:
        self._print(summary(results))


def summary(results: dict) -> str:
    """The closing line: the test accuracy, which parameters it tested, and the time taken."""
    if results["best_val_accuracy"] is not None:
        tested = (
            f"parameters of epoch {results['tested_epoch']}, the best on validation "
            f"({_pct(results['best_val_accuracy'])})"
        )
    else:
        tested = f"parameters of the last epoch, {results['tested_epoch']} (no validation set)"
    speed = results.get("steps_per_s")
    timing = f"{results['train_time_s']:.1f} s training" + (
        f", {speed:.1f} steps/s" if speed else ""
    )
    bits = results.get("test_bits_per_position")
    per_position = f", {bits:.3f} bits per position" if bits is not None else ""
    return f"test accuracy: {_pct(results['test_accuracy'])}{per_position}  ({tested}; {timing})"
