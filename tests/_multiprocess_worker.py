"""Worker for tests/test_multidevice.py: runs in a fresh process, so it can choose its devices.

    python _multiprocess_worker.py OUTDIR --local-devices K [--job steps] [--job train]
        [--job checks] [--cases mlp_dp_top,...]
        [--coordinator HOST:PORT --num-processes N --process-id I]

Jobs, each over all (global) devices:
  steps   :data:`STEPS` data-parallel train steps of each case of :data:`CASES`; parameters and
          metrics after every step go to ``OUTDIR/steps-<process>.npz``.
  train   ``train_and_evaluate`` on Fashion-MNIST (:func:`short_run_config`) in ``OUTDIR/train``.
  checks  the messages of the clear errors (batch not divisible, too many devices), whether
          the compiled step all-reduces across devices, and the bound on queued steps, to
          ``OUTDIR/checks.json``.
With ``--coordinator`` the process first joins a ``jax.distributed`` run (the library's
``distributed.initialize``, as a Python program would). The test imports the same functions to
compute the one-device oracle in its own process. The ``dualprop`` command's own multi-process
runs (its launcher) are started by the tests directly.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np
from flax import nnx

from dualprop_jax import data, models, rules
from dualprop_jax.training import distributed, parallel, train
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import TrainState, make_optimizer, make_train_step, rule_params

CASES = {  # name: (model, rule)
    "mlp_dp_top": ("mlp", "dp_top"),
    "cnn_dp_top": ("cnn", "dp_top"),
    "resnet_dp_top": ("resnet8", "dp_top"),  # a graph (a small one): both kinds of skip
    "vit_dp_top": ("vit", "dp_top"),  # attention, LayerNorm and GELU edges on token states
    "mlp_dp": ("mlp", "dp"),
    "mlp_dp_top_fw16": ("mlp", "dp_top+fw16"),  # the 2024 scripts' 16 bottom-up passes
    "mlp_bp": ("mlp", "bp"),
    "mlp_dp_top_damped": ("mlp", "dp_top+damped"),
    "mlp_dp_kp": ("mlp", "dp+kp"),
    "mlp_ep": ("mlp", "ep"),
    "mlp_chl": ("mlp", "chl"),
    "mlp_pc": ("mlp", "pc"),
    "mlp_pc_fixed": ("mlp", "pc+fixed"),
    "mlp_ep_pcn": ("mlp", "ep_pcn"),
}
STEPS = 3
GLOBAL_BATCH = 16
SHORT_RUN_TRAIN = 3000


def batches(model: str, steps: int = STEPS, batch: int = GLOBAL_BATCH):
    """Fixed global batches ``(steps, batch, ...)``: every process builds the same ones."""
    rng = np.random.default_rng(1234)
    shape = {"cnn": (28, 28, 1), "resnet8": (8, 8, 1), "vit": (8, 8, 1)}.get(model, (20,))
    x = rng.standard_normal((steps, batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, (steps, batch)).astype(np.int32)
    return x, y


def build(model: str):
    rngs = nnx.Rngs(0)
    if model == "cnn":
        return models.split(models.cnn((28, 28, 1), channels=(4, 8), dense=(16,), rngs=rngs))
    if model == "resnet8":
        return models.split(
            models.resnet(widths=(4, 8), blocks=(1, 1), input_shape=(8, 8, 1), rngs=rngs)
        )
    if model == "vit":
        return models.split(models.vit((8, 8, 1), patch=4, width=8, depth=1, heads=2, rngs=rngs))
    return models.split(models.mlp((20, 32, 24, 10), rngs=rngs))


def local_value(x: jax.Array) -> np.ndarray:
    """The value of a replicated (possibly multi-process) array, read from a local device."""
    return np.asarray(x.addressable_data(0))


def run_steps(name: str, mesh, steps: int = STEPS) -> dict[str, np.ndarray]:
    """Parameters and metrics after each of ``steps`` train steps of case ``name`` on ``mesh``.

    SGD with momentum on the rule's gradient (linear in it, so a gradient summed instead of
    averaged over devices would show; Adam would hide it); the global batch is split over
    ``mesh``. DP and DP⊤ use α = 0.3, where they differ; EP and CHL run T = 30, K = 10.
    KP-DP's feedback weights are parameters (compared too); the damped rule's power-iteration
    state is replicated.
    """
    model, rule_name = CASES[name]
    # settings a rule does not take are dropped (alpha for bp, ep, chl; the steps for dp)
    rule = rules.from_label(rule_name, alpha=0.3, free_steps=30, nudged_steps=10, clamped_steps=10)
    cfg = TrainConfig(model=model, rule=rule, optimizer="sgd", learning_rate=0.1)
    net, params = build(model)
    params = rule_params(rule, net, params, seed=0)
    optimizer = make_optimizer(cfg, steps_per_epoch=steps)
    batch = parallel.batch_sharding(mesh)
    state = TrainState.create(net, params, cfg.rule, optimizer, mesh)
    step = make_train_step(net, cfg.rule, optimizer, mesh=mesh, donate=True)
    xs, ys = batches(model, steps)
    out: dict[str, np.ndarray] = {}
    for i in range(steps):
        x, y = parallel.global_array(xs[i], batch), parallel.global_array(ys[i], batch)
        state, metrics = step(state, x, y)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
            out[f"{name}/{i}/params{jax.tree_util.keystr(path)}"] = local_value(leaf)
        for k, v in metrics.items():
            out[f"{name}/{i}/{k}"] = local_value(v)
    return out


def short_run_config(devices: int | None) -> TrainConfig:
    """One epoch of DP⊤ with a small MLP on a Fashion-MNIST subset."""
    return TrainConfig(
        model="mlp",
        widths=(128,),
        rule=rules.dual_prop(variant="dp_top"),
        epochs=1,
        batch_size=100,
        eval_batch_size=500,
        max_train=SHORT_RUN_TRAIN,
        devices=devices,
    )


def short_run_data() -> data.Dataset:
    return data.load_dataset("fashion_mnist", max_train=SHORT_RUN_TRAIN, seed=0)


def _error_message(fn) -> str | None:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return None


def checks(workdir: pathlib.Path) -> dict[str, object]:
    """What a user sees for a batch not divisible by the devices and for too many devices, and
    whether the compiled MLP train step holds an all-reduce (gradients averaged across devices).
    """
    n = len(jax.devices())
    mesh = parallel.make_mesh(n)
    cfg = TrainConfig(model="mlp", rule=rules.dual_prop(variant="dp_top"))
    net, params = build("mlp")
    opt = make_optimizer(cfg, 1)
    step = make_train_step(net, cfg.rule, opt, mesh=mesh, donate=False)
    xs, ys = batches("mlp", steps=1)
    state = TrainState.create(net, params, cfg.rule, opt)
    hlo = step.lower(state, xs[0], ys[0]).compile().as_text()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)).astype(np.float32), np.arange(40, dtype=np.int32) % 3
    ds = data.Dataset("tiny", x, y, x[:0], y[:0], x[:8], y[:8], 3, False, "synthetic")
    batch = parallel.batch_sharding(mesh)
    odd = n + 1 if n > 1 else 1  # not a multiple of n (for n > 1)
    return {
        "devices": n,
        "all_reduce": "all-reduce" in hlo,
        "steps_in_flight": parallel.steps_in_flight(mesh),
        "train_batch": _error_message(
            lambda: train.train_and_evaluate(
                TrainConfig(batch_size=odd, widths=(4,)), workdir / "odd", dataset=ds
            )
        ),
        "global_array": _error_message(lambda: parallel.global_array(x[:odd], batch)),
        "train_devices": _error_message(
            lambda: train.train_and_evaluate(
                TrainConfig(devices=n + 1, widths=(4,), batch_size=8),
                workdir / "many",
                dataset=ds,
            )
        ),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--job", action="append", choices=("steps", "train", "checks"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--local-devices", type=int, default=None)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)
    if args.coordinator is not None:
        distributed.initialize(
            args.coordinator,
            args.num_processes,
            args.process_id,
            local_cpu_devices=args.local_devices,
            timeout_s=60,
        )
    elif args.local_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.local_devices)
    args.out.mkdir(parents=True, exist_ok=True)
    for job in args.job or ():
        if job == "steps":
            mesh = parallel.make_mesh()
            out = {"devices": np.asarray(mesh.devices.size)}
            out["processes"] = np.asarray(jax.process_count())
            for name in args.cases.split(","):
                out.update(run_steps(name, mesh))
            np.savez(args.out / f"steps-{jax.process_index()}.npz", **out)
        elif job == "train":
            train.train_and_evaluate(
                short_run_config(None), args.out / "train", dataset=short_run_data()
            )
        else:
            (args.out / "checks.json").write_text(json.dumps(checks(args.out)))
    if args.coordinator is not None:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
