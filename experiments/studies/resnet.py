"""Does DP⊤ keep back-propagation's accuracy on a residual network?

Both papers train chains (MLPs, VGG). This study trains a residual network, a graph whose skip
edges are identities or 1x1 projections (:func:`dualprop_jax.models.resnet`: ResNet-8 of He
et al. 2016's CIFAR family, no BatchNorm, Fixup initialisation), with DP⊤ (α = ½, β = 0.01,
the default one-sweep schedule: each node's feedback is the sum of its children's vjps) and with
BP, from the same initial weights, on the same batches, with the same optimizer.

    python experiments/studies/resnet.py            # the study (about an hour on 2 CPU cores)
    python experiments/studies/resnet.py --quick    # a tiny slice (CI)

Training: Fashion-MNIST (28x28x1), Adam (lr 1e-3), batch 100, ``--epochs`` over the
``--train-images`` (default: all 60 000, no validation split), seeds 0, 1, 2: seed k gives both
rules the same initial weights and the same batch order (``dualprop_jax.training.train`` with
``TrainConfig(model="resnet8", seed=k)``). Each (rule, seed) run keeps its checkpoints in
``<out>/partial/<rule>-s<seed>/``, so an interrupted study resumes where it stopped (a finished
run is read back, not retrained; one that finished with fewer epochs is extended).

Columns: test accuracy on the 10 000 test images after the last epoch, per seed and as mean ±
std over seeds; Δ vs BP: the rule's accuracy minus BP's on the same seed (a paired
difference), mean ± std over seeds; train s: the run's training time.
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common

STUDY = "resnet"
TITLE = "DP⊤ and BP on a residual network (ResNet-8, Fashion-MNIST)"


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str = "resnet8"
    rules: tuple[str, ...] = ("bp", "dp_top")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    train_images: int | None = None  # None: all 60 000
    batch_size: int = 100
    learning_rate: float = 1e-3
    feed: str = "auto"  # the device feed where the split fits (dualprop_jax.data.device)


QUICK = Settings(seeds=(0,), epochs=1, train_images=300)


def _config(s: Settings, rule: str, seed: int):
    from dualprop_jax import rules
    from dualprop_jax.training.config import TrainConfig

    rule_value = rules.backprop() if rule == "bp" else rules.dual_prop(rule, alpha=0.5, beta=0.01)
    return TrainConfig(
        dataset="fashion_mnist",
        model=s.model,
        rule=rule_value,
        optimizer="adam",
        learning_rate=s.learning_rate,
        batch_size=s.batch_size,
        epochs=s.epochs,
        seed=seed,
        val_fraction=0.0,
        max_train=s.train_images,
        feed=s.feed,
    )


def _run(s: Settings, rule: str, seed: int, workdir: pathlib.Path, dataset) -> dict:
    """Train one (rule, seed), or read it back when it finished before; resume a partial run."""
    import json

    from dualprop_jax.training import checkpoints, train

    done = workdir / "results.json"
    if done.is_file() and json.loads(done.read_text())["epochs"] == s.epochs:
        common.progress(f"{rule} seed {seed}: finished before, read from {done}")
        return json.loads(done.read_text())
    resume = checkpoints.latest_epoch(workdir) is not None  # partial, or fewer epochs: extend
    common.progress(f"{rule} seed {seed}: training{' (resumed)' if resume else ''}")

    def hook(event: str, info: dict) -> None:
        if event == "step" and info["step"] % 100 == 0:
            common.progress(
                f"  {rule} seed {seed} epoch {info['epoch']} step {info['step']}/{info['steps']}: "
                f"loss {info['loss']:.4f}, accuracy {100 * info['accuracy']:.1f}%"
            )
        if event == "epoch":
            common.progress(
                f"  {rule} seed {seed} epoch {info['epoch']}: train loss "
                f"{info['train_loss']:.4f}, {info['epoch_time_s']:.0f} s"
            )

    return train.train_and_evaluate(
        _config(s, rule, seed), workdir, resume=resume, hook=hook, dataset=dataset, plots=False
    )


def run(s: Settings, out: pathlib.Path) -> dict:
    from dualprop_jax.data import load_dataset

    dataset = load_dataset("fashion_mnist", val_fraction=0.0, seed=0, max_train=s.train_images)
    cells = []
    for seed in s.seeds:
        for rule in s.rules:
            r = _run(s, rule, seed, out / "partial" / f"{rule}-s{seed}", dataset)
            cells.append(
                {
                    "rule": rule,
                    "seed": seed,
                    "test_accuracy": r["test_accuracy"],
                    "train_time_s": r.get("train_time_s"),
                    "test_loss": r["test_loss"],
                }
            )
    return {"settings": dataclasses.asdict(s), "cells": cells}


def _mean_std(values) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(results: dict) -> str:
    s = results["settings"]
    acc = {(c["rule"], c["seed"]): c["test_accuracy"] for c in results["cells"]}
    secs = {(c["rule"], c["seed"]): c["train_time_s"] for c in results["cells"]}
    seeds, rows = s["seeds"], []
    for rule in s["rules"]:
        per_seed = [acc[rule, k] for k in seeds]
        deltas = [acc[rule, k] - acc["bp", k] for k in seeds]
        times = [secs[rule, k] for k in seeds if secs[rule, k] is not None]
        rows.append(
            [
                rule,
                " / ".join(f"{100 * a:.2f}" for a in per_seed),
                _mean_std(per_seed),
                "—" if rule == "bp" else _mean_std(deltas),
                f"{statistics.mean(times):.0f}" if times else "—",
            ]
        )
    images = s["train_images"] or 60000
    intro = (
        f"{s['model']} on Fashion-MNIST: {s['epochs']} epoch(s) over {images} training images, "
        f"Adam (lr {s['learning_rate']}), batch {s['batch_size']}, seeds {seeds}; DP⊤ at "
        "α = ½, β = 0.01, one sweep. Test accuracy in % on the 10 000 test images.\n\n"
    )
    cols = ["rule", "test acc per seed", "mean ± std", "Δ vs BP (paired)", "train s (mean)"]
    return intro + common.md_table(cols, rows)


def figure(results: dict):
    import matplotlib.pyplot as plt

    s = results["settings"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, rule in enumerate(s["rules"]):
        accs = [100 * c["test_accuracy"] for c in results["cells"] if c["rule"] == rule]
        ax.scatter([i] * len(accs), accs, label=rule, zorder=3)
        ax.hlines(statistics.mean(accs), i - 0.2, i + 0.2, color="k", zorder=2)
    ax.set_xticks(range(len(s["rules"])), s["rules"])
    ax.set_xlim(-0.6, len(s["rules"]) - 0.4)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{s['model']}, Fashion-MNIST, {s['epochs']} epoch(s): per seed, and mean")
    ax.grid(axis="y", alpha=0.3)
    return fig


def main(argv=None) -> int:
    return study_main(STUDY, TITLE, __doc__, Settings(), QUICK, argv)


def study_main(
    study: str, title: str, doc: str, defaults: Settings, quick: Settings, argv=None
) -> int:
    """The command line of a (model, rules, seeds) accuracy study: this one, or another model's
    (``experiments/studies/vit.py``) with its own ``defaults`` and ``quick`` slice."""
    p = common.parser(study, doc)
    p.add_argument(
        "--epochs", type=int, default=None, help=f"epochs per run (default {defaults.epochs})"
    )
    p.add_argument(
        "--train-images", type=int, default=None, help="training images (default: all 60 000)"
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    args = p.parse_args(argv)
    s = quick if args.quick else defaults
    if args.epochs is not None:
        s = dataclasses.replace(s, epochs=args.epochs)
    if args.train_images is not None:
        s = dataclasses.replace(s, train_images=args.train_images or None)
    if args.seeds is not None:
        s = dataclasses.replace(s, seeds=tuple(int(v) for v in args.seeds.split(",")))
    out = common.out_dir(study, args)
    prov = common.Provenance(study, args.quick, argv)
    results = run(s, out)
    meta = prov.finish()
    common.write_outputs(out, study, title, table(results), results, figure(results), meta)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
