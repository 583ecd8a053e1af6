"""Data-parallel train steps per second with 1, 2 and 4 CPU devices (informational).

Example (the command behind the BENCHMARKS.md row):

    python experiments/multidevice_throughput.py --setup fmnist_mlp --algo dp_top --devices 1,2,4

Each device count runs in a fresh process with ``jax_num_cpu_devices`` set to it, so every run
sees exactly that many CPU devices. A run times the training loop of ``train_and_evaluate``
(host batch -> global array split over the devices -> jitted step, at most
``train.steps_in_flight`` steps queued) on Fashion-MNIST batches of the setup's global batch
size, after a warm-up that compiles the step; it reports the median over ``--repeats`` timings
of ``--steps`` steps. Simulated CPU devices share the machine's cores, so more devices need
not mean more speed.
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
import time

HERE = pathlib.Path(__file__).resolve().parent


def measure(devices: int, setup: str, algo: str, steps: int, repeats: int) -> dict:
    """Steps per second on ``devices`` CPU devices; call in a process where JAX has not started."""
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from dualprop_jax import data, models, train

    cfg = train.TrainConfig.from_dict(
        {**json.loads((HERE / "configs" / f"{setup}.json").read_text()), "algo": algo}
    )
    ds = data.load_dataset(cfg.dataset, max_train=20 * cfg.batch_size, seed=0)
    mesh = train.make_mesh(devices)
    train.check_divisible(cfg.batch_size, mesh)
    net, params = models.split(
        train.build_model(cfg, ds.input_shape, ds.num_classes, nnx.Rngs(cfg.seed))
    )
    optimizer = train.make_optimizer(cfg, steps_per_epoch=steps)
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = jax.device_put(params, replicated)
    opt_state = jax.device_put(optimizer.init(params), replicated)
    step = train.make_train_step(net, cfg.dp_config(), cfg.algo, optimizer, mesh)
    order = data.epoch_batches(len(ds.x_train), cfg.batch_size, np.random.default_rng(0))
    key = jax.random.key(0)

    throttle = train.StepThrottle(mesh)  # as train_and_evaluate does

    def run(n: int) -> float:
        nonlocal params, opt_state
        t0 = time.perf_counter()
        for i in range(n):
            idx = order[i % len(order)]
            x = train.global_array(ds.x_train[idx], batch)
            y = train.global_array(ds.y_train[idx], batch)
            params, opt_state, m = step(params, opt_state, x, y, key)
            throttle(m["loss"])
        jax.block_until_ready(params)
        return time.perf_counter() - t0

    run(3)  # compile and warm up
    times = [run(steps) for _ in range(repeats)]
    return {
        "devices": devices,
        "steps_per_s": steps / statistics.median(times),
        "setup": setup,
        "algo": algo,
        "model": cfg.model,
        "global_batch": cfg.batch_size,
        "steps": steps,
        "repeats": repeats,
        "jax_version": jax.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="fmnist_mlp", help="a config in experiments/configs")
    parser.add_argument("--algo", default="dp_top", choices=("dp", "dp_top", "bp"))
    parser.add_argument("--devices", default="1,2,4", help="comma-separated CPU device counts")
    parser.add_argument("--steps", type=int, default=50, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings per device count")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.setup, args.algo, args.steps, args.repeats)))
        return

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    results = []
    for n in (int(d) for d in args.devices.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--setup", args.setup]
        cmd += ["--algo", args.algo, "--steps", str(args.steps), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{n} CPU device(s): {results[-1]['steps_per_s']:.1f} steps/s", flush=True)
    r0 = results[0]
    cells = " | ".join(f"{r['devices']} dev: {r['steps_per_s']:.1f}" for r in results)
    print(
        f"\n| {r0['setup']} {r0['algo']}, global batch {r0['global_batch']}, train steps/s "
        f"on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}) "
        f"| {cells} |"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
