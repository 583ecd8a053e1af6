"""The command line of ``dualprop``: its argparse parser, subcommands and flags (with defaults).

Training flags default to None, so that a ``--config`` file's value stands unless a flag is
given; their help texts show the value used when neither gives one.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from dualprop_jax import models, rules
from dualprop_jax.cli.short_errors import ShortErrorParser
from dualprop_jax.training.config import FEEDS, MODELS, TrainConfig
from dualprop_jax.training.distributed import HEARTBEAT_TIMEOUT_S


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


_DEFAULTS = TrainConfig()
_DEFAULT_RULE = rules.dual_prop()
_EP, _CHL, _PC = rules.equilibrium_prop(), rules.chl(), rules.predictive_coding()
_EP_PCN = rules.ep_pcn()

FLAGS: dict[str, tuple[str, dict]] = {
    "--dataset": (
        "dataset",
        dict(
            help="fashion_mnist, mnist, a TFDS name (cifar10, ...), the folder of a prepared "
            "TFDS dataset, a path to an .npz file, or fortunes (Debian's text, for the lm model)"
        ),
    ),
    "--data-dir": ("data_dir", dict(help="where to look first for dataset files")),
    "--val-fraction": ("val_fraction", dict(type=float, help="held out from train")),
    "--max-train": ("max_train", dict(type=int, help="use only this many training images")),
    "--max-eval": (
        "max_eval",
        dict(type=int, help="use only the first this many validation and test images"),
    ),
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
    "--tensorboard": (
        "tensorboard",
        dict(action="store_const", const=True, help="also write metrics.csv and alignment.json "
             "as TensorBoard event files, epoch by epoch, in --workdir/tensorboard/ (no TensorFlow "
             "needed; to view them: pip install tensorboard; tensorboard --logdir runs/)"),
    ),
}
"""flag -> (TrainConfig field, argparse kwargs)."""

RULE_FLAGS: dict[str, tuple[str, dict]] = {
    "--alpha": ("alpha", dict(type=float, help="nudging asymmetry α in [0, 1] (dp, dp_top)")),
    "--beta": (
        "beta",
        dict(
            type=float,
            help=f"nudging strength β > 0 (dp, dp_top: {_DEFAULT_RULE.beta:g}; ep: "
            f"{_EP.beta:g}), ep_pcn: {_EP_PCN.beta:g} (default: -)",
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
        dict(
            type=int,
            help="K, steps of each nudged phase (ep; ep_pcn: the number of layers) (default: "
            f"{_EP.nudged_steps})",
        ),
    ),
    "--clamped-steps": (
        "clamped_steps",
        dict(type=int, help=f"steps of the clamped phase (chl) (default: {_CHL.clamped_steps})"),
    ),
    "--inference-steps": (
        "inference_steps",
        dict(
            type=int,
            help=f"T, inference steps of predictive coding (pc) (default: {_PC.inference_steps})",
        ),
    ),
    "--step-size": (
        "step_size",
        dict(type=float, help=f"γ, its inference step size (pc) (default: {_PC.step_size})"),
    ),
    "--fixed-prediction": (
        "fixed_prediction",
        dict(
            action="store_const",
            const=True,
            help="predictive coding with the feedforward predictions held (pc) (default: -)",
        ),
    ),
    "--scheme": (
        "scheme",
        dict(
            choices=rules.SCHEMES,
            help=f"order of ep_pcn's nudged iterations (default: {_EP_PCN.scheme})",
        ),
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
"""flag -> (rule setting, argparse kwargs): they set TrainConfig.rule. A help text ending in
"(default: ...)" says the defaults itself (they differ between rules); "(default: -)" shows none.
"""

SWITCHES = ("fast", "sweep", "damped")
"""Rule settings set by a flag without a value (``--fast``, ``--no-sweep``, ``--damped``)."""


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
        "train and test a network with a learning rule (--rule)",
        "Train and evaluate; writes results.json, metrics.csv, curves.png and checkpoints to "
        "--workdir. Flags override a --config file, which overrides the defaults.",
    )
    _run_arguments(train)
    for flag, (field, kwargs) in FLAGS.items():
        default = getattr(_DEFAULTS, field)
        train.add_argument(flag, dest=field, default=None, **_with_default(kwargs, default))
    _rule_arguments(train.add_argument_group("learning rule (TrainConfig.rule)"))
    aug = train.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment", dest="augment", action="store_const", const=True, default=None,
        help="random crop + flip (default: on for CIFAR-like data)",
    )  # fmt: skip
    aug.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    _process_arguments(train.add_argument_group("multi-process (jax.distributed)"))
    train.set_defaults(**{f.name: None for f in dataclasses.fields(TrainConfig)})


def _run_arguments(train: argparse.ArgumentParser) -> None:
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


def _rule_arguments(rule) -> None:
    rule.add_argument(
        "--rule",
        dest="rule_name",
        choices=rules.NAMES,
        help="dp, dp_top: dual propagation; bp: back-propagation; ep: equilibrium "
        "propagation; chl: contrastive Hebbian learning; pc: predictive coding; ep_pcn: EP on "
        "the predictive-coding energy (default: dp_top)",
    )
    for flag, (setting, kwargs) in RULE_FLAGS.items():
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


def _process_arguments(dist) -> None:
    dist.add_argument("--coordinator", help="host:port of process 0, e.g. 127.0.0.1:12345")
    dist.add_argument(
        "--num-processes",
        type=int,
        help="processes of the run; above 1 the command trains in a child process that it "
        "watches, and ends with status 75 and one line if the run loses a process",
    )
    dist.add_argument("--process-id", type=int)
    dist.add_argument(
        "--local-cpu-devices", type=int, help="CPU devices per process (CPU-only runs)"
    )
    dist.add_argument(
        "--heartbeat-timeout",
        type=int,
        metavar="S",
        help="seconds a process may be silent before the others stop "
        f"(default: {HEARTBEAT_TIMEOUT_S})",
    )


class _BenchHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default: argparse's, unless the help says it itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def _per_model(table: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in table.items())


def _bench_models(text: str) -> str:
    """``--models``: comma-separated names of the benchmark's model table (or '' for none)."""
    from dualprop_jax.training import benchmark as b

    unknown = [m for m in (t.strip() for t in text.split(",")) if m and m not in b.MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown models {unknown}; choose from {', '.join(b.MODELS)}"
        )
    return text


def _bench_parser(sub) -> None:
    from dualprop_jax.training import benchmark as b

    p = sub.add_parser(
        "bench",
        help="time the train step of several rules on the same model",
        description="Time the jitted train step (gradient + optax update) of each rule on the "
        "same model and batch; print a table (and write JSON with --out).",
        formatter_class=_BenchHelpFormatter,
    )
    _bench_step_arguments(p, b)
    _bench_rule_arguments(p)
    _bench_epoch_arguments(p, b)
    p.add_argument("--out", default=None, help="write the result JSON here (default: none)")


def _bench_step_arguments(p: argparse.ArgumentParser, b) -> None:
    p.add_argument(
        "--models",
        type=_bench_models,
        default="mlp,cnn,vgg16",
        help=f"comma-separated, of {', '.join(b.MODELS)}; '' for none",
    )
    p.add_argument(
        "--rules",
        default=",".join(b.DEFAULT_RULES),
        help=f"rule labels, with bp, of {', '.join(b.RULES)}; the slow ep and chl run only "
        "when named here",
    )
    p.add_argument("--batch", type=int, default=128, help="batch of the rows (see --vgg-batch)")
    large = ", ".join(b.LARGE_MODELS)
    p.add_argument(
        "--vgg-batch",
        type=int,
        help=f"batch of {large} (default: --batch; {b.CPU_VGG_BATCH} on CPU)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help=f"timed steps per rule (default: {_per_model(b.DEFAULT_STEPS)})",
    )
    p.add_argument(
        "--vgg-steps", type=int, help=f"timed steps per rule of {large} (default: --steps)"
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per rule")
    p.add_argument(
        "--energy-steps",
        type=int,
        help="timed steps of the ep/chl group (default: "
        f"{_per_model(b.ENERGY_STEPS)}, other models 3; at most --steps)",
    )
    p.add_argument(
        "--multipass",
        type=int,
        default=0,
        metavar="K",
        help="also time the 2024 schedule (fwK: K bottom-up passes, e.g. 16) against one sweep "
        "and BP, on each conv layout (0: off)",
    )
    p.add_argument(
        "--multipass-steps",
        type=int,
        help=f"timed steps per row (default: {_per_model(b.MULTIPASS_STEPS)}, other models 5)",
    )


def _bench_rule_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.5, help="nudging asymmetry α (dp, dp_top)")
    p.add_argument(
        "--beta", type=float, default=0.01, help="nudging strength β (dp, dp_top; ep keeps 0.5)"
    )
    p.add_argument("--passes", type=int, default=0, help="extra inference passes for dp/dp_top")
    p.add_argument("--free-steps", type=int, default=100, help="T of the ep and chl rows")
    p.add_argument(
        "--nudged-steps", type=int, default=20, help="K of the ep rows (chl: clamped steps)"
    )
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype"
    )


def _bench_epoch_arguments(p: argparse.ArgumentParser, b) -> None:
    p.add_argument("--vgg-epoch", action="store_true", help="also time one VGG16 epoch")
    p.add_argument(
        "--fmnist-epoch",
        action="store_true",
        help="also time one epoch of dualprop train's default model on Fashion-MNIST",
    )
    p.add_argument(
        "--epoch-models",
        type=_bench_models,
        default="",
        help="also time one epoch of each of these models on random data of its input shape "
        "(--epoch-images, or a few seconds of steps per model; vgg11, vgg16 and resnet18 at "
        "--vgg-batch); '' for none",
    )
    p.add_argument(
        "--epoch-feeds",
        default="host,device",
        help="feeds of the epoch rows, of host, device, auto (auto: the feed training picks)",
    )
    p.add_argument(
        "--epoch-images",
        type=int,
        default=None,
        help="images in an epoch (default: 45000 for --vgg-epoch; per model for --epoch-models)",
    )
    p.add_argument("--epoch-batch", type=int, default=100, help="batch of the epoch rows")
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed epochs per rule (median)")
    p.add_argument("--epoch-warmup", type=int, default=1, help="untimed epochs per rule first")


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
    from dualprop_jax import __version__

    return f"dualprop {__version__} (Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    """The ``dualprop`` parser with its subcommands train, eval and bench."""
    parser = ShortErrorParser(
        prog="dualprop",
        description="Dual propagation in JAX: train, evaluate and benchmark learning rules.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    _train_parser(sub)
    _eval_parser(sub)
    _bench_parser(sub)
    return parser
