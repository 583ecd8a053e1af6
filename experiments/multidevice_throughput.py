"""Data-parallel train steps per second with 1, 2 and 4 CPU devices (informational).

Example (the command behind the BENCHMARKS.md row):

    python experiments/multidevice_throughput.py --setup fmnist_mlp --rule dp_top --devices 1,2,4

Each device count runs in a fresh process with ``jax_num_cpu_devices`` set to it, so every run
sees exactly that many CPU devices. A run builds what ``train_and_evaluate`` builds
(``train.build_run``: mesh, model, optimizer, donated train step) and times its training loop,
:func:`dualprop_jax.training.loop.train_epoch` (with ``feed="auto"``, which keeps this small set on
the devices: each step's batch is gathered there and split over them), on Fashion-MNIST
batches of the setup's global batch size. After a warm-up epoch that compiles the programs
and copies the set, each timing is one epoch of ``--steps`` steps (the subset's images
repeated); it reports the median over ``--repeats`` timings. Simulated CPU devices share the
machine's cores, so more devices need not mean more speed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def setup_config(setup: str, rule: str, devices: int):
    """The setup's TrainConfig with rule ``rule`` (keeping the setup's settings it takes)."""
    from dualprop_jax import rules
    from dualprop_jax.training.config import TrainConfig

    values = json.loads((HERE / "configs" / f"{setup}.json").read_text())
    given = values.pop("rule", {})
    settings = {} if isinstance(given, str) else {k: v for k, v in given.items() if k != "name"}
    chosen = rules.from_label(rule, **settings)
    return TrainConfig.from_dict({**values, "rule": chosen.to_dict(), "devices": devices})


def measure(devices: int, setup: str, rule: str, steps: int, repeats: int) -> dict:
    """Steps per second on ``devices`` CPU devices; call in a process where JAX has not started."""
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    import dataclasses

    import numpy as np

    from dualprop_jax import data
    from dualprop_jax.training import train
    from dualprop_jax.training.loop import train_epoch
    from dualprop_jax.training.steps import TrainState

    cfg = setup_config(setup, rule, devices)
    ds = data.load_dataset(cfg.dataset, max_train=20 * cfg.batch_size, seed=0)
    run = train.build_run(cfg, ds)  # the mesh, model, optimizer and step of train_and_evaluate

    def epoch_of(n: int) -> data.Dataset:
        """``ds`` with a training split of exactly ``n`` batches (its images repeated)."""
        idx = np.arange(n * cfg.batch_size) % len(ds.x_train)
        return dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])

    state = TrainState.create(run.net, run.params, cfg.rule, run.optimizer, run.mesh)

    def timed_epoch(dataset: data.Dataset, epoch: int) -> float:
        nonlocal state
        result = train_epoch(
            run.step, state, dataset, batch_size=cfg.batch_size, epoch=epoch, seed=cfg.seed,
            mesh=run.mesh, log_every=steps,
        )  # fmt: skip
        state = result.state
        return result.time_s

    timed = epoch_of(steps)  # one dataset: the device feed copies it once, in the warm-up
    timed_epoch(timed, 1)  # compile and warm up
    times = [timed_epoch(timed, 2 + r) for r in range(repeats)]
    return {
        "devices": devices,
        "steps_per_s": steps / statistics.median(times),
        "setup": setup,
        "rule": rule,
        "model": cfg.model,
        "global_batch": cfg.batch_size,
        "steps": steps,
        "repeats": repeats,
        "jax_version": jax.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--setup", default="fmnist_mlp", help="a config in experiments/configs")
    parser.add_argument("--rule", default="dp_top", choices=("dp_top", "dp", "bp", "dp+fast"))
    parser.add_argument("--devices", default="1,2,4", help="comma-separated CPU device counts")
    parser.add_argument("--steps", type=int, default=50, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per device count")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.setup, args.rule, args.steps, args.repeats)))
        return

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    results = []
    for n in (int(d) for d in args.devices.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--setup", args.setup]
        cmd += ["--rule", args.rule, "--steps", str(args.steps), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{n} CPU device(s): {results[-1]['steps_per_s']:.1f} steps/s", flush=True)
    r0 = results[0]
    cells = " | ".join(f"{r['devices']} dev: {r['steps_per_s']:.1f}" for r in results)
    print(
        f"\n| {r0['setup']} {r0['rule']}, global batch {r0['global_batch']}, train steps/s "
        f"on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}) "
        f"| {cells} |"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
