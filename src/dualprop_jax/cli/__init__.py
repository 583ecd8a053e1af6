"""The ``dualprop`` command: ``dualprop train [flags]`` and ``dualprop bench [flags]``.

Application layer over :func:`dualprop_jax.training.train.train_and_evaluate` and
:mod:`dualprop_jax.training.benchmark`:
parses flags, shows a progress bar, prints tables, writes the
plots, and turns errors into one clear line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys

from dualprop_jax import models, rules
from dualprop_jax.training.config import FEEDS, MODELS, TrainConfig, fold_legacy_rule


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


_DEFAULTS = TrainConfig()
_DEFAULT_RULE = rules.dual_prop()
_EP, _CHL = rules.equilibrium_prop(), rules.chl()

# flag -> (TrainConfig field, argparse kwargs)
_FLAGS: dict[str, tuple[str, dict]] = {
    "--dataset": (
        "dataset",
        dict(
            help="fashion_mnist, mnist, a TFDS name (cifar10, ...), the folder of a prepared "
            "TFDS dataset, or a path to an .npz file"
        ),
    ),
    "--data-dir": ("data_dir", dict(help="where to look first for dataset files")),
    "--val-fraction": ("val_fraction", dict(type=float, help="held out from train")),
    "--max-train": ("max_train", dict(type=int, help="use only this many training images")),
    "--model": ("model", dict(choices=MODELS)),
    "--layout": (
        "layout",
        dict(
            choices=models.LAYOUTS,
            help="conv models: unpooled (each max-pool at the next map's input) or pooled "
            "(conv → pool one map, states stored pooled, as the official 2024 code)",
        ),
    ),
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
    "--devices": ("devices", dict(type=int, help="data-parallel devices; None: all local")),
    "--keep-checkpoints": (
        "keep_checkpoints",
        dict(type=int, help="how many of the latest epochs' checkpoints to keep"),
    ),
    "--feed": (
        "feed",
        dict(
            choices=FEEDS,
            help="where training batches come from: device (the training set kept on the "
            "device, batches taken there), host (copied batch by batch), auto (device when the "
            "set takes at most 1/4 of a device's memory, 2 GiB on CPU)",
        ),
    ),
}

# flag -> (rule setting, argparse kwargs): they set TrainConfig.rule. A help text ending in
# "(default: ...)" says the defaults itself (they differ between rules).
_RULE_FLAGS: dict[str, tuple[str, dict]] = {
    "--alpha": ("alpha", dict(type=float, help="nudging asymmetry α in [0, 1] (dp, dp_top)")),
    "--beta": (
        "beta",
        dict(
            type=float,
            help=f"nudging strength β > 0 (dp, dp_top: {_DEFAULT_RULE.beta:g}; ep: "
            f"{_EP.beta:g}) (default: -)",
        ),
    ),
    "--passes": ("passes", dict(type=int, help="extra inference passes (dp, dp_top; 0: one)")),
    "--schedule": ("schedule", dict(choices=rules.SCHEDULES, help="of the extra passes")),
    "--unroll": (
        "unroll",
        dict(
            type=int,
            help="loop iterations unrolled: passes per iteration of the pass loop (dp, dp_top; "
            "1: rolled, None: automatic) or relaxation steps per iteration (ep, chl: 1) "
            "(default: -)",
        ),
    ),
    "--loss": (
        "loss",
        dict(
            choices=rules.LOSSES,
            help=f"(default: {_DEFAULT_RULE.loss}; ep, chl: {_EP.loss})",
        ),
    ),
    "--dtype": ("dtype", dict(choices=rules.DTYPES, help="compute dtype (params stay float32)")),
    "--power-iterations": (
        "power_iterations",
        dict(type=int, help="power-iteration steps per train step (dp, dp_top with --damped)"),
    ),
    "--feedback": (
        "feedback",
        dict(choices=rules.FEEDBACKS, help="kolen_pollack: KP-DP, separate feedback weights B_k"),
    ),
    "--output": (
        "output",
        dict(choices=rules.OUTPUTS, help="exact: the exact squared-error output dyad (2023)"),
    ),
    "--free-steps": (
        "free_steps",
        dict(
            type=int,
            help=f"T, relaxation steps of the free phase (ep, chl) (default: {_EP.free_steps})",
        ),
    ),
    "--nudged-steps": (
        "nudged_steps",
        dict(type=int, help=f"K, steps of each nudged phase (ep) (default: {_EP.nudged_steps})"),
    ),
    "--clamped-steps": (
        "clamped_steps",
        dict(type=int, help=f"steps of the clamped phase (chl) (default: {_CHL.clamped_steps})"),
    ),
    "--nudging": (
        "nudging",
        dict(choices=rules.NUDGINGS, help=f"EP's nudged phases: ±β or +β (default: {_EP.nudging})"),
    ),
    "--sigma": (
        "activation",
        dict(
            choices=rules.SIGMAS, help=f"state activation σ of ep, chl (default: {_EP.activation})"
        ),
    ),
    "--relax-order": (
        "order",
        dict(
            choices=rules.ORDERS,
            help="EP / CHL relaxation: every layer at once, or odd then even layers "
            f"(default: {_EP.order})",
        ),
    ),
    "--start": (
        "start",
        dict(
            choices=rules.STARTS,
            help=f"where the free phase starts (ep, chl) (default: {_EP.start})",
        ),
    ),
}


def _with_default(kwargs: dict, default: object) -> dict:
    """argparse kwargs whose help shows ``default`` (the value used when the flag is absent;
    the flag itself defaults to None so that a config file's value can stand)."""
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    text = kwargs.get("help", "")
    return {**kwargs, "help": f"{text}{' ' if text else ''}(default: {shown})"}


def _command(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=description)


def _train_parser(sub) -> None:
    train = _command(
        sub,
        "train",
        "train a network with a learning rule (DP, DP⊤, their variants, BP, EP or CHL)",
        "Train and evaluate; writes results.json, metrics.csv, curves.png and checkpoints to "
        "--workdir. Flags override a --config file, which overrides the defaults.",
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
        default = getattr(_DEFAULTS, field)
        train.add_argument(flag, dest=field, default=None, **_with_default(kwargs, default))
    rule = train.add_argument_group("learning rule (TrainConfig.rule)")
    rule.add_argument(
        "--rule",
        "--algo",
        dest="rule_name",
        choices=rules.NAMES,
        help="dp, dp_top: dual propagation; bp: back-propagation; ep: equilibrium "
        "propagation; chl: contrastive Hebbian learning (default: dp_top)",
    )
    for flag, (setting, kwargs) in _RULE_FLAGS.items():
        if "(default: -)" in kwargs["help"]:
            kwargs = {**kwargs, "help": kwargs["help"].replace(" (default: -)", "")}
        elif "(default:" not in kwargs["help"]:
            kwargs = _with_default(kwargs, getattr(_DEFAULT_RULE, setting))
        if "choices" not in kwargs:
            kwargs["metavar"] = setting.upper()
        rule.add_argument(flag, dest=f"rule_{setting}", default=None, **kwargs)
    rule.add_argument(
        "--fast", dest="rule_fast", action="store_const", const=True, default=None,
        help="DP fast path (α = ½, one sweep)",
    )  # fmt: skip
    rule.add_argument(
        "--no-sweep", dest="rule_sweep", action="store_const", const=False, default=None,
        help="no top-down sweep before the extra passes (bottom_up + --passes K-1 = the 2024 "
        "scripts' fwK with K passes)",
    )  # fmt: skip
    rule.add_argument(
        "--damped", dest="rule_damped", action="store_const", const=True, default=None,
        help="damped (Lipschitz) DP updates of the 2024 paper (dp, dp_top)",
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
    from dualprop_jax.training import benchmark as b

    p = _command(
        sub,
        "bench",
        "time the train step of BP, DP⊤, DP, its variants, EP and CHL on the same model",
        "Time the jitted train step (gradient + optax update) of each rule on the same model "
        "and batch; print a table (and write JSON with --out).",
    )
    p.add_argument(
        "--models",
        default="mlp,cnn,vgg16",
        help=f"comma-separated, of {', '.join(b.MODELS)}; '' for none",
    )
    p.add_argument("--rules", default=",".join(b.RULES), help="rule labels, with bp")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--vgg-batch",
        type=int,
        help=f"batch of vgg16 and resnet18 (default: --batch; {b.CPU_VGG_BATCH} on CPU)",
    )
    p.add_argument("--steps", type=int, help=f"timed steps per rule (default {b.DEFAULT_STEPS})")
    p.add_argument("--vgg-steps", type=int, default=None, help="timed VGG16 steps per rule")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per rule")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--passes", type=int, default=0, help="extra inference passes for dp/dp_top")
    p.add_argument("--free-steps", type=int, default=100, help="T of the ep and chl rows")
    p.add_argument(
        "--nudged-steps", type=int, default=20, help="K of the ep rows (chl: clamped steps)"
    )
    p.add_argument(
        "--energy-steps",
        type=int,
        help=f"timed steps of the ep/chl group (default {b.ENERGY_STEPS})",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument(
        "--multipass",
        type=int,
        default=0,
        metavar="K",
        help="also time the 2024 schedule (fwK: K bottom-up passes, e.g. 16) against one sweep "
        "and BP, on each conv layout",
    )
    p.add_argument(
        "--multipass-steps", type=int, help=f"timed steps per row (default {b.MULTIPASS_STEPS})"
    )
    p.add_argument("--vgg-epoch", action="store_true", help="also time one VGG16 epoch")
    p.add_argument(
        "--fmnist-epoch",
        action="store_true",
        help="also time one epoch of dualprop train's default model on Fashion-MNIST",
    )
    p.add_argument(
        "--epoch-feeds", default="host,device", help="feeds of the epoch rows (host, device)"
    )
    p.add_argument("--epoch-images", type=int, default=45_000, help="images in that epoch")
    p.add_argument("--epoch-batch", type=int, default=100)
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed epochs per rule (median)")
    p.add_argument("--epoch-warmup", type=int, default=1, help="untimed epochs per rule first")
    p.add_argument("--out", default=None, help="write the result JSON here")


def _eval_parser(sub) -> None:
    p = _command(
        sub,
        "eval",
        "evaluate a saved run without training",
        "Evaluate the parameters of a run in --workdir on one split of its data.",
    )
    p.add_argument("--workdir", type=pathlib.Path, required=True, help="the run's folder")
    p.add_argument("--split", choices=("test", "val"), default="test", help="(default: test)")
    p.add_argument(
        "--params",
        choices=("best", "last"),
        default="best",
        help="the best-validation epoch's parameters, or the last epoch's (default: best)",
    )
    p.add_argument("--data-dir", help="where the data lives now, if it moved")


def _version() -> str:
    import importlib.metadata

    try:
        version = importlib.metadata.version("dualprop-jax")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover (not installed)
        from dualprop_jax import __version__ as version
    return f"dualprop {version} (Python {sys.version.split()[0]})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualprop", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _eval_parser(sub)
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
    flags["sweep"] = args.rule_sweep
    flags["damped"] = args.rule_damped
    flags = {s: v for s, v in flags.items() if v is not None}
    misplaced = [s for s in flags if s not in rules.fields_of(name)]
    if misplaced:
        shown = ", ".join(f"--{s}" for s in misplaced)
        raise ValueError(
            f"{shown} does not apply to --rule {name} (its settings: "
            f"{', '.join(rules.fields_of(name))}); drop it, or choose a --rule that takes it."
        )
    return {**rule, **flags, "name": name}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from an optional JSON file, overridden by the flags that were given."""
    values: dict = {}
    if args.config is not None:
        if not args.config.is_file():
            raise ValueError(f"config file {args.config} does not exist.")
        try:
            values = json.loads(args.config.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"config file {args.config} is not valid JSON ({e.msg} at line {e.lineno}, "
                f"column {e.colno}); fix it, or see experiments/configs/ for examples."
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {args.config} cannot be read: {e}.") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {args.config} must hold a JSON object of fields.")
        values = fold_legacy_rule(values)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name != "rule":
            values[f.name] = v
    values["rule"] = _rule_from_args(args, values.get("rule"))
    return TrainConfig.from_dict(values)


def _start_processes(args: argparse.Namespace) -> None:
    given = [
        flag
        for flag, value in (
            ("--num-processes", args.num_processes),
            ("--process-id", args.process_id),
            ("--local-cpu-devices", args.local_cpu_devices),
        )
        if value is not None
    ]
    if given and not args.coordinator:
        raise ValueError(
            f"{', '.join(given)} start a multi-process run, which needs --coordinator HOST:PORT "
            "(process 0's address) and --num-processes and --process-id on every process; "
            "drop them for a one-process run."
        )
    if (args.num_processes or 1) > 1 and args.workdir is None:
        raise ValueError(
            "--workdir is required with --num-processes > 1: every process must write to "
            "the same directory, and the default name holds each process's own start time."
        )
    if args.coordinator:
        from dualprop_jax.training import distributed

        distributed.initialize(
            args.coordinator,
            args.num_processes,
            args.process_id,
            local_cpu_devices=args.local_cpu_devices,
            workdir=args.workdir,
            flag_names=distributed.CLI_FLAGS,
        )


def _failed(status: int) -> int:
    """``status`` of a failed run. In a multi-process run this process leaves at once
    (``distributed.exit_now``): a normal exit would wait up to 300 s in JAX's shutdown barrier
    for the other processes, which are blocked in a collective waiting for this one."""
    from dualprop_jax.training import distributed

    distributed.exit_now(status)
    return status


def cmd_train(args: argparse.Namespace) -> int:
    from dualprop_jax.errors import (
        DataError,
        DivergenceError,
        TrainingError,
        TrainingInterrupted,
    )
    from dualprop_jax.training.progress import ConsoleProgress
    from dualprop_jax.training.train import train_and_evaluate

    workdir = args.workdir
    try:
        config = config_from_args(args)
        _start_processes(args)
        import jax

        if workdir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            source = pathlib.Path(config.dataset)
            versioned = source.is_dir() and source.name[:1].isdigit()  # a TFDS <name>/<version>
            name = (source.parent.name if versioned else source.stem).replace("/", "_")
            workdir = pathlib.Path("runs") / f"{name}-{config.model}-{config.rule.label}-{stamp}"
        # one progress report: process 0 speaks for a multi-process run
        hook = ConsoleProgress() if jax.process_index() == 0 else None
        train_and_evaluate(config, workdir, resume=args.resume, hook=hook)
    except TrainingInterrupted as e:
        print(f"dualprop: {e}", file=sys.stderr)
        return _failed(130)
    except KeyboardInterrupt:
        print("dualprop: interrupted before training started; nothing was saved", file=sys.stderr)
        return _failed(130)
    except DivergenceError as e:
        print(f"dualprop: training diverged: {e}", file=sys.stderr)
        return _failed(1)
    except (DataError, TrainingError, ValueError) as e:
        print(f"dualprop: error: {e}", file=sys.stderr)
        return _failed(2)
    if jax.process_index() == 0:
        print(f"results in {workdir}/results.json, curves in {workdir}/curves.png")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved run's parameters on a split of its data, without training."""
    from dualprop_jax.errors import DataError, TrainingError
    from dualprop_jax.training import checkpoints, steps, train

    try:
        config = checkpoints.saved_config(args.workdir)
        if config is None or checkpoints.latest_epoch(args.workdir) is None:
            raise TrainingError(
                f"{args.workdir} holds no saved run (config.json and checkpoints/); check the "
                "--workdir path."
            )
        if args.data_dir is not None:
            config = config.replace(data_dir=args.data_dir)
        net, state, meta = checkpoints.load_checkpoint(args.workdir)
        params = state["best_params"] if args.params == "best" else state["params"]
        epoch = meta["best_epoch"] if args.params == "best" else meta["epoch"]
        ds = train.load_data(config)
        result = steps.evaluate(
            net, params, ds, split=args.split, batch_size=config.eval_batch_size, rule=config.rule
        )
    except (DataError, TrainingError, ValueError) as e:
        print(f"dualprop eval: error: {e}", file=sys.stderr)
        return 2
    which = "best-validation" if args.params == "best" else "last"
    print(
        f"{args.split} accuracy: {100 * result['accuracy']:.2f}%  loss {result['loss']:.4f}  "
        f"({which} parameters, epoch {epoch}, of {args.workdir})"
    )
    return 0


def format_table(result: dict) -> str:
    """A Markdown table of the benchmark rows (and of the epoch rows, when present)."""
    lines = [f"backend {result['backend']} ({result['device']}), jax {result['jax_version']}"]
    if result.get("rows"):
        lines += [
            "",
            "| model | rule | T, K | batch | step ms (median) | IQR ms | ratio to BP "
            "| compile s | peak MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in result.get("rows", []):
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "n/a"
        q1, q3 = r["step_ms_iqr"]
        relax = f"{r['T']}, {r['K']}" if "T" in r else "-"
        lines.append(
            f"| {r['model']} | {r['rule']} | {relax} | {r['batch']} | {r['step_ms_median']:.2f} "
            f"| {q1:.2f}-{q3:.2f} | {r['ratio_to_bp']:.3f} | {r['compile_s']:.1f} | {peak} |"
        )
    if result.get("multipass_rows"):
        lines += [
            "",
            "| model | rule | schedule | layout | batch | step ms (median) | ratio to BP "
            "| ratio to one sweep | compile s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["multipass_rows"]:
            lines.append(
                f"| {r['model']} | {r['rule']} | {r['schedule']} | {r['layout']} | {r['batch']} "
                f"| {r['step_ms_median']:.2f} | {r['ratio_to_bp']:.3f} | "
                f"{r['ratio_to_one_sweep']:.3f} | {r['compile_s']:.1f} |"
            )
    if result.get("epoch_rows"):
        lines += [
            "",
            "| model | rule | feed | images | batch | epoch s (median) | step ms (median) "
            "| epoch / (steps × step) | images/s | ratio to BP |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["epoch_rows"]:
            ratio = f"{r['ratio_to_bp']:.3f}" if r["ratio_to_bp"] else "n/a"
            lines.append(
                f"| {r['model']} | {r['rule']} | {r['feed']} | {r['images']} | {r['batch']} | "
                f"{r['epoch_s']:.2f} | {r['step_ms_median']:.2f} | {r['epoch_over_steps']:.3f} "
                f"| {r['images_per_s']:.0f} | {ratio} |"
            )
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _multipass_rows(benchmark, args: argparse.Namespace, result: dict) -> list[dict]:
    rows = []
    for name in _names(args.models):
        batch = args.batch
        if name in benchmark.LARGE_MODELS:
            cpu = result["backend"] == "cpu"
            batch = args.vgg_batch or (benchmark.CPU_VGG_BATCH if cpu else args.batch)
        steps = args.multipass_steps or benchmark.MULTIPASS_STEPS.get(name, 5)
        rows += benchmark.bench_multipass(
            name, benchmark.MODELS[name], batch=batch, steps=steps, passes=args.multipass,
            beta=args.beta, dtype=args.dtype,
        )  # fmt: skip
    return rows


def cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from dualprop_jax.training import benchmark

    result = benchmark.run_benchmark(
        _names(args.models), batch=args.batch, vgg_batch=args.vgg_batch, steps=args.steps,
        vgg_steps=args.vgg_steps, warmup=args.warmup, rule_labels=_names(args.rules),
        alpha=args.alpha, beta=args.beta, dtype=args.dtype, passes=args.passes,
        free_steps=args.free_steps, nudged_steps=args.nudged_steps,
        energy_steps=args.energy_steps,
    )  # fmt: skip
    if args.multipass:
        result["multipass_rows"] = _multipass_rows(benchmark, args, result)
    epoch = dict(
        beta=args.beta, dtype=args.dtype, repeats=args.epoch_repeats,
        warmup_epochs=args.epoch_warmup, feeds=_names(args.epoch_feeds),
    )  # fmt: skip
    if args.fmnist_epoch:
        from dualprop_jax.data import load_dataset

        fmnist = dict(dataset=load_dataset("fashion_mnist"), spec=benchmark.FMNIST_MLP)
        rows = benchmark.time_epoch(
            name="fmnist_mlp", batch=TrainConfig().batch_size, **fmnist, **epoch
        )
        result.setdefault("epoch_rows", []).extend(rows)
    if args.vgg_epoch:
        result.setdefault("epoch_rows", []).extend(
            benchmark.time_epoch(images=args.epoch_images, batch=args.epoch_batch, **epoch)
        )
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
    if args.command == "eval":
        return cmd_eval(args)
    return cmd_train(args)


if __name__ == "__main__":
    sys.exit(main())
