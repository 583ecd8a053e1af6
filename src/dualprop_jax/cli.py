"""The ``dualprop`` command: ``dualprop train [flags]``.

Application layer over :func:`dualprop_jax.train.train_and_evaluate`: parses flags, shows a
progress bar, writes the plots, and turns errors into one clear line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys

from dualprop_jax.train import ALGOS, MODELS, TrainConfig

_DEFAULTS = TrainConfig()


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


# flag -> (TrainConfig field, argparse kwargs)
_FLAGS: dict[str, tuple[str, dict]] = {
    "--dataset": (
        "dataset",
        dict(help="fashion_mnist, mnist, a TFDS name (cifar10, ...) or a path to an .npz file"),
    ),
    "--data-dir": ("data_dir", dict(help="where to look first for dataset files")),
    "--val-fraction": ("val_fraction", dict(type=float, help="held out from train")),
    "--max-train": ("max_train", dict(type=int, help="use only this many training images")),
    "--model": ("model", dict(choices=MODELS)),
    "--widths": ("widths", dict(type=_ints, help="MLP hidden widths, e.g. 1000,1000")),
    "--channels": ("channels", dict(type=_ints, help="CNN conv channels, e.g. 32,64")),
    "--dense": ("dense", dict(type=_ints, help="CNN hidden dense widths, e.g. 512")),
    "--activation": ("activation", dict()),
    "--algo": ("algo", dict(choices=ALGOS, help="learning rule")),
    "--alpha": ("alpha", dict(type=float, help="nudging asymmetry α in [0, 1]")),
    "--beta": ("beta", dict(type=float, help="nudging strength β > 0")),
    "--loss": ("loss", dict(choices=("softmax_ce", "squared_error"))),
    "--passes": ("passes", dict(type=int, help="extra inference passes (0 = one sweep)")),
    "--schedule": ("schedule", dict(choices=("alternating", "bottom_up"))),
    "--dtype": (
        "dtype",
        dict(
            choices=("float32", "float64", "bfloat16"),
            help="compute dtype (parameters stay float32)",
        ),
    ),
    "--optimizer": ("optimizer", dict(choices=("adam", "sgd"))),
    "--lr": ("learning_rate", dict(type=float, help="(peak) learning rate")),
    "--momentum": ("momentum", dict(type=float)),
    "--weight-decay": ("weight_decay", dict(type=float, help="decoupled weight decay")),
    "--lr-schedule": ("lr_schedule", dict(choices=("constant", "cosine"))),
    "--warmup-epochs": ("warmup_epochs", dict(type=float)),
    "--batch-size": ("batch_size", dict(type=int, help="global batch size")),
    "--eval-batch-size": ("eval_batch_size", dict(type=int)),
    "--epochs": ("epochs", dict(type=int)),
    "--seed": ("seed", dict(type=int)),
    "--diagnostics-every": (
        "diagnostics_every",
        dict(type=int, help="steps between DP-vs-BP cosine checks (0 = off)"),
    ),
    "--devices": ("devices", dict(type=int, help="data-parallel devices (default: all local)")),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualprop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a network with DP, DP⊤ or BP",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train and evaluate; writes results.json, metrics.csv, curves.png and "
        "checkpoints to --workdir.",
    )
    train.add_argument(
        "--config",
        type=pathlib.Path,
        help="JSON file of TrainConfig fields (see experiments/configs/); "
        "flags given on the command line override it",
    )
    train.add_argument(
        "--workdir",
        type=pathlib.Path,
        help="output folder (default: runs/<dataset>-<model>-<algo>-<time>)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --workdir from its last checkpoint",
    )
    for flag, (field, kwargs) in _FLAGS.items():
        train.add_argument(flag, dest=field, default=None, **kwargs)
    train.add_argument(
        "--fast",
        dest="fast",
        action="store_const",
        const=True,
        default=None,
        help="DP fast path (α = ½, one sweep)",
    )
    aug = train.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment",
        dest="augment",
        action="store_const",
        const=True,
        default=None,
        help="random crop + flip (default: on for CIFAR-like data)",
    )
    aug.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    dist = train.add_argument_group("multi-process (jax.distributed)")
    dist.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:12345")
    dist.add_argument("--num-processes", type=int)
    dist.add_argument("--process-id", type=int)
    dist.add_argument(
        "--local-cpu-devices", type=int, help="CPU devices per process (CPU-only runs)"
    )
    train.set_defaults(**{f.name: None for f in dataclasses.fields(TrainConfig)})
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from an optional JSON file, overridden by the flags that were given."""
    values: dict = {}
    if args.config is not None:
        if not args.config.is_file():
            raise ValueError(f"config file {args.config} does not exist.")
        values = json.loads(args.config.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"config file {args.config} must hold a JSON object of fields.")
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return TrainConfig.from_dict(values)


class _Progress:
    """tqdm bar per epoch, and one summary line per epoch."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: str, info: dict) -> None:
        from tqdm import tqdm

        if event == "start":
            cfg, ds = info["config"], info["dataset"]
            rule = cfg.algo if cfg.algo == "bp" else f"{cfg.algo} (α={cfg.alpha}, β={cfg.beta})"
            resumed = info["resumed_from_epoch"]
            print(
                f"{cfg.model} on {ds.name} ({len(ds.x_train)} train / {len(ds.x_val)} val / "
                f"{len(ds.x_test)} test, from {ds.source}), {info['num_params']:,} parameters, "
                f"{rule}, {info['devices']} device(s)"
                + (f", resuming after epoch {resumed}" if resumed else ""),
                flush=True,
            )
        elif event == "step":
            if self.bar is None:
                self.bar = tqdm(
                    total=info["steps"],
                    desc=f"epoch {info['epoch']}",
                    leave=False,
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
            self.bar.update(info["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{info['loss']:.4f}", acc=f"{100 * info['accuracy']:.2f}%")
        elif event == "epoch":
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            print(
                f"epoch {info['epoch']:3d}  train loss {info['train_loss']:.4f} "
                f"acc {100 * info['train_accuracy']:.2f}%  val loss {info['val_loss']:.4f} "
                f"acc {100 * info['val_accuracy']:.2f}%  ({info['epoch_time_s']:.1f} s)",
                flush=True,
            )


def _write_plots(workdir: pathlib.Path, title: str) -> None:
    from dualprop_jax import plots

    history_file, align_file = workdir / "metrics.csv", workdir / "alignment.json"
    if history_file.exists():
        import csv

        with history_file.open() as fh:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        plots.plot_curves(history, workdir / "curves.png", title)
    if align_file.exists():
        plots.plot_alignment(json.loads(align_file.read_text()), workdir / "alignment.png", title)


def cmd_train(args: argparse.Namespace) -> int:
    from dualprop_jax.data import DataError
    from dualprop_jax.train import DivergenceError, TrainingError, train_and_evaluate

    try:
        config = config_from_args(args)
        if (args.num_processes or 1) > 1 and args.workdir is None:
            raise ValueError(
                "--workdir is required with --num-processes > 1: every process must write to "
                "the same directory, and the default name holds each process's own start time."
            )
        if args.coordinator or args.num_processes:
            from dualprop_jax.distributed import initialize

            initialize(
                args.coordinator,
                args.num_processes,
                args.process_id,
                local_cpu_devices=args.local_cpu_devices,
            )
        import jax

        workdir = args.workdir
        if workdir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            name = pathlib.Path(config.dataset).stem.replace("/", "_")
            workdir = pathlib.Path("runs") / f"{name}-{config.model}-{config.algo}-{stamp}"
        # one progress bar: process 0 speaks for a multi-process run
        hook = _Progress() if jax.process_index() == 0 else None
        results = train_and_evaluate(config, workdir, resume=args.resume, hook=hook)
    except DivergenceError as e:
        print(f"dualprop: training diverged: {e}", file=sys.stderr)
        return 1
    except (DataError, TrainingError, ValueError) as e:
        print(f"dualprop: error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        title = f"{config.model} / {config.dataset} / {config.algo}"
        _write_plots(pathlib.Path(workdir), title)
        print(
            f"test accuracy: {100 * results['test_accuracy']:.2f}%  (best val "
            f"{100 * (results['best_val_accuracy'] or 0):.2f}% at epoch "
            f"{results['best_epoch']}; {results['train_time_s']:.1f} s training, "
            f"{results['steps_per_s']:.1f} steps/s)"
        )
        print(f"results in {workdir}/results.json, curves in {workdir}/curves.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args)
    return 2  # pragma: no cover (argparse requires a command)


if __name__ == "__main__":
    sys.exit(main())
