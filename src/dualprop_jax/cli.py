"""The ``dualprop`` command: ``dualprop train [flags]`` and ``dualprop bench [flags]``.

Application layer over :func:`dualprop_jax.train.train_and_evaluate` and
:mod:`dualprop_jax.benchmark`: parses flags, shows a progress bar, prints tables, writes the
plots, and turns errors into one clear line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys

from dualprop_jax import rules
from dualprop_jax.train_config import MODELS, TrainConfig, fold_legacy_rule


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
        dict(type=int, help="steps between rule-vs-BP cosine checks (0 = off)"),
    ),
    "--devices": ("devices", dict(type=int, help="data-parallel devices (default: all local)")),
}

# flag -> (rule setting, argparse kwargs): they set TrainConfig.rule
_RULE_FLAGS: dict[str, tuple[str, dict]] = {
    "--alpha": ("alpha", dict(type=float, help="nudging asymmetry α in [0, 1] (dp, dp_top)")),
    "--beta": ("beta", dict(type=float, help="nudging strength β > 0 (dp, dp_top)")),
    "--passes": ("passes", dict(type=int, help="extra inference passes (dp, dp_top; 0: one)")),
    "--schedule": ("schedule", dict(choices=rules.SCHEDULES, help="of the extra passes")),
    "--loss": ("loss", dict(choices=rules.LOSSES)),
    "--dtype": ("dtype", dict(choices=rules.DTYPES, help="compute dtype (params stay float32)")),
}


def _train_parser(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train a network with a learning rule (DP, DP⊤ or BP)",
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
        help="output folder (default: runs/<dataset>-<model>-<rule>-<time>)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --workdir from its checkpoint"
    )
    for flag, (field, kwargs) in _FLAGS.items():
        train.add_argument(flag, dest=field, default=None, **kwargs)
    rule = train.add_argument_group("learning rule (TrainConfig.rule)")
    rule.add_argument(
        "--rule", "--algo", dest="rule_name", choices=rules.NAMES, help="default: dp_top"
    )
    for flag, (setting, kwargs) in _RULE_FLAGS.items():
        rule.add_argument(flag, dest=f"rule_{setting}", default=None, **kwargs)
    rule.add_argument(
        "--fast", dest="rule_fast", action="store_const", const=True, default=None,
        help="DP fast path (α = ½, one sweep)",
    )  # fmt: skip
    aug = train.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment", dest="augment", action="store_const", const=True, default=None,
        help="random crop + flip (default: on for CIFAR-like data)",
    )  # fmt: skip
    aug.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    dist = train.add_argument_group("multi-process (jax.distributed)")
    dist.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:12345")
    dist.add_argument("--num-processes", type=int)
    dist.add_argument("--process-id", type=int)
    dist.add_argument(
        "--local-cpu-devices", type=int, help="CPU devices per process (CPU-only runs)"
    )
    train.set_defaults(**{f.name: None for f in dataclasses.fields(TrainConfig)})


def _bench_parser(sub) -> None:
    from dualprop_jax import benchmark as b

    p = sub.add_parser(
        "bench",
        help="time the train step of BP, DP⊤, DP and the fast path on the same model",
        description="Time the jitted train step (gradient + optax update) of each rule on the "
        "same model and batch; print a table (and write JSON with --out).",
    )
    p.add_argument("--models", default="mlp,cnn,vgg16", help="comma-separated; '' for none")
    p.add_argument("--rules", default=",".join(b.RULES), help="rule labels, with bp")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--vgg-batch", type=int, help=f"default: --batch ({b.CPU_VGG_BATCH} on CPU)")
    p.add_argument("--steps", type=int, help=f"timed steps per rule (default {b.DEFAULT_STEPS})")
    p.add_argument("--vgg-steps", type=int, default=None, help="timed VGG16 steps per rule")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per rule")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--passes", type=int, default=0, help="extra inference passes for dp/dp_top")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--vgg-epoch", action="store_true", help="also time one VGG16 epoch")
    p.add_argument("--epoch-images", type=int, default=45_000, help="images in that epoch")
    p.add_argument("--epoch-batch", type=int, default=100)
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed epochs per rule (median)")
    p.add_argument("--epoch-warmup", type=int, default=1, help="untimed epochs per rule first")
    p.add_argument("--out", default=None, help="write the result JSON here")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualprop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _bench_parser(sub)
    return parser


def _rule_from_args(args: argparse.Namespace, given: dict | str | None) -> dict:
    """The rule dict: the config file's rule, then ``--rule`` and the rule flags over it.

    Switching ``--rule`` keeps only the file's settings the new rule takes; a flag the rule
    does not take is an error.
    """
    rule = {"name": given} if isinstance(given, str) else dict(given or {"name": "dp_top"})
    name = args.rule_name or rule.get("name", "dp_top")
    if name != rule.get("name"):
        rule = {k: v for k, v in rule.items() if k in rules.fields_of(name)}
    flags = {s: getattr(args, f"rule_{s}") for _, (s, _) in _RULE_FLAGS.items()}
    flags["fast"] = args.rule_fast
    flags = {s: v for s, v in flags.items() if v is not None}
    misplaced = [s for s in flags if s not in rules.fields_of(name)]
    if misplaced:
        shown = ", ".join(f"--{s}" for s in misplaced)
        raise ValueError(
            f"{shown} does not apply to --rule {name} (its settings: "
            f"{', '.join(rules.fields_of(name))}); drop it, or choose --rule dp_top or dp."
        )
    return {**rule, **flags, "name": name}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from an optional JSON file, overridden by the flags that were given."""
    values: dict = {}
    if args.config is not None:
        if not args.config.is_file():
            raise ValueError(f"config file {args.config} does not exist.")
        values = json.loads(args.config.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"config file {args.config} must hold a JSON object of fields.")
        values = fold_legacy_rule(values)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name != "rule":
            values[f.name] = v
    values["rule"] = _rule_from_args(args, values.get("rule"))
    return TrainConfig.from_dict(values)


def _rule_text(rule: rules.Rule) -> str:
    if isinstance(rule, rules.DualProp):
        return f"{rule.label} (α={rule.alpha}, β={rule.beta})"
    return rule.label


class _Progress:
    """tqdm bar per epoch, and one summary line per epoch."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            self._start(info)
        elif event == "step":
            self._step(info)
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

    @staticmethod
    def _start(info: dict) -> None:
        cfg, ds = info["config"], info["dataset"]
        resumed = info["resumed_from_epoch"]
        print(
            f"{cfg.model} on {ds.name} ({len(ds.x_train)} train / {len(ds.x_val)} val / "
            f"{len(ds.x_test)} test, from {ds.source}), {info['num_params']:,} parameters, "
            f"{_rule_text(cfg.rule)}, {info['devices']} device(s)"
            + (f", resuming after epoch {resumed}" if resumed else ""),
            flush=True,
        )

    def _step(self, info: dict) -> None:
        from tqdm import tqdm

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


def _start_processes(args: argparse.Namespace) -> None:
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


def _summary(results: dict) -> str:
    best = results["best_val_accuracy"]
    speed = results["steps_per_s"]
    return (
        f"test accuracy: {100 * results['test_accuracy']:.2f}%  (best val "
        f"{100 * (best or 0):.2f}% at epoch {results['best_epoch']}; "
        f"{results['train_time_s']:.1f} s training" + (f", {speed:.1f} steps/s)" if speed else ")")
    )


def cmd_train(args: argparse.Namespace) -> int:
    from dualprop_jax.errors import DataError, DivergenceError, TrainingError
    from dualprop_jax.train import train_and_evaluate

    try:
        config = config_from_args(args)
        _start_processes(args)
        import jax

        workdir = args.workdir
        if workdir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            name = pathlib.Path(config.dataset).stem.replace("/", "_")
            workdir = pathlib.Path("runs") / f"{name}-{config.model}-{config.rule.label}-{stamp}"
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
        _write_plots(
            pathlib.Path(workdir), f"{config.model} / {config.dataset} / {config.rule.label}"
        )
        print(_summary(results))
        print(f"results in {workdir}/results.json, curves in {workdir}/curves.png")
    return 0


def format_table(result: dict) -> str:
    """A Markdown table of the benchmark rows (and of the epoch rows, when present)."""
    lines = [f"backend {result['backend']} ({result['device']}), jax {result['jax_version']}"]
    if result.get("rows"):
        lines += [
            "",
            "| model | rule | batch | step ms (median) | IQR ms | ratio to BP | compile s "
            "| peak MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in result.get("rows", []):
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "n/a"
        q1, q3 = r["step_ms_iqr"]
        lines.append(
            f"| {r['model']} | {r['rule']} | {r['batch']} | {r['step_ms_median']:.2f} | "
            f"{q1:.2f}-{q3:.2f} | {r['ratio_to_bp']:.3f} | {r['compile_s']:.1f} | {peak} |"
        )
    if result.get("epoch_rows"):
        lines += [
            "",
            "| model | rule | images | batch | epoch s (median) | images/s | ratio to BP |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["epoch_rows"]:
            ratio = f"{r['ratio_to_bp']:.3f}" if r["ratio_to_bp"] else "n/a"
            lines.append(
                f"| {r['model']} | {r['rule']} | {r['images']} | {r['batch']} | "
                f"{r['epoch_s']:.2f} | {r['images_per_s']:.0f} | {ratio} |"
            )
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from dualprop_jax import benchmark

    result = benchmark.run_benchmark(
        _names(args.models), batch=args.batch, vgg_batch=args.vgg_batch, steps=args.steps,
        vgg_steps=args.vgg_steps, warmup=args.warmup, rule_labels=_names(args.rules),
        alpha=args.alpha, beta=args.beta, dtype=args.dtype, passes=args.passes,
    )  # fmt: skip
    if args.vgg_epoch:
        result["epoch_rows"] = benchmark.time_epoch(
            images=args.epoch_images, batch=args.epoch_batch, beta=args.beta, dtype=args.dtype,
            repeats=args.epoch_repeats, warmup_epochs=args.epoch_warmup,
        )  # fmt: skip
    result["command"] = " ".join(["dualprop", *argv])
    print(format_table(result))
    if args.out:
        path = pathlib.Path(args.out)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "bench":
        try:
            return cmd_bench(args, argv)
        except ValueError as e:
            print(f"dualprop bench: error: {e}", file=sys.stderr)
            return 2
    return cmd_train(args)


if __name__ == "__main__":
    sys.exit(main())
