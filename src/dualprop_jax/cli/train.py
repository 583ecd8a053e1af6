"""``dualprop train``: run :func:`~dualprop_jax.training.train.train_and_evaluate` from the flags.

A one-process run trains here. A run of several processes (``--num-processes N > 1``) trains in
a child process that :mod:`dualprop_jax.cli.launcher` starts and watches; the child is this same
command, which then joins the run itself.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
from collections.abc import Sequence

from dualprop_jax.cli import launcher
from dualprop_jax.cli.config import config_from_args, use_dtype
from dualprop_jax.errors import DataError, DivergenceError, TrainingError, TrainingInterrupted
from dualprop_jax.training import distributed
from dualprop_jax.training.config import TrainConfig


def check_process_flags(args: argparse.Namespace) -> None:
    """Raise a ValueError naming the flags when the multi-process flags do not fit together."""
    given = [
        flag
        for flag, value in (
            ("--num-processes", args.num_processes),
            ("--process-id", args.process_id),
            ("--local-cpu-devices", args.local_cpu_devices),
            ("--heartbeat-timeout", args.heartbeat_timeout),
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
        distributed.check_arguments(
            args.coordinator, args.num_processes, args.process_id, args.local_cpu_devices,
            heartbeat_timeout_s=_heartbeat_timeout(args), flag_names=distributed.CLI_FLAGS,
        )  # fmt: skip


JOIN_TIMEOUT_S = 300
"""How long a process of a multi-process run waits for all the others to join."""


def _heartbeat_timeout(args: argparse.Namespace) -> int:
    given = args.heartbeat_timeout
    return distributed.HEARTBEAT_TIMEOUT_S if given is None else given


def _join(args: argparse.Namespace) -> None:
    if args.coordinator:
        # say what it waits for, and where, before JAX blocks until every process has joined
        print(
            f"dualprop: process {args.process_id} of {args.num_processes} joins the run at "
            f"{args.coordinator} and waits up to {JOIN_TIMEOUT_S} s for all {args.num_processes} "
            f"processes; start each with --coordinator {args.coordinator} --num-processes "
            f"{args.num_processes} and its own --process-id",
            file=sys.stderr,
            flush=True,
        )
        distributed.initialize(
            args.coordinator,
            args.num_processes,
            args.process_id,
            local_cpu_devices=args.local_cpu_devices,
            timeout_s=JOIN_TIMEOUT_S,
            heartbeat_timeout_s=_heartbeat_timeout(args),
            flag_names=distributed.CLI_FLAGS,
        )


def _default_workdir(config: TrainConfig) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    source = pathlib.Path(config.dataset)
    versioned = source.is_dir() and source.name[:1].isdigit()  # a TFDS <name>/<version>
    name = (source.parent.name if versioned else source.stem).replace("/", "_")
    return pathlib.Path("runs") / f"{name}-{config.model}-{config.rule.label}-{stamp}"


def _failed(status: int) -> int:
    """``status`` of a failed run. In a multi-process run this process leaves at once
    (``distributed.exit_now``): a normal exit would wait up to 300 s in JAX's shutdown barrier
    for the other processes, which are blocked in a collective waiting for this one."""
    distributed.exit_now(status)
    return status


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``dualprop train``: here, or in a watched child for a run of several processes."""
    try:
        config = config_from_args(args)
        check_process_flags(args)
        use_dtype(config)
    except ValueError as e:
        print(f"dualprop: error: {e}", file=sys.stderr)
        return 2
    is_child = launcher.watch_parent()
    if (args.num_processes or 1) > 1 and not is_child:
        run = launcher.Run(
            process_id=args.process_id, num_processes=args.num_processes,
            coordinator=args.coordinator, heartbeat_timeout_s=_heartbeat_timeout(args),
            workdir=args.workdir,
        )  # fmt: skip
        return launcher.launch(argv, run)
    return _train_here(args, config)


def _train_here(args: argparse.Namespace, config: TrainConfig) -> int:
    from dualprop_jax.training.progress import ConsoleProgress
    from dualprop_jax.training.train import train_and_evaluate

    workdir = args.workdir or _default_workdir(config)
    try:
        _join(args)
        import jax

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
    except (DataError, TrainingError, ValueError, RuntimeError) as e:
        if distributed.is_lost_peer_error(e):
            launcher.report_lost_peer(e)
            return _failed(launcher.LOST_PROCESS_EXIT_CODE)
        if not isinstance(e, DataError | TrainingError | ValueError):
            raise
        print(f"dualprop: error: {e}", file=sys.stderr)
        return _failed(2)
    if jax.process_index() == 0:
        print(f"results in {workdir}/results.json, curves in {workdir}/curves.png")
    return 0
