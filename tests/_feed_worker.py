"""Cases for tests/test_feed.py, and its worker for 4 CPU devices (a fresh process, so that it
can set its device count before JAX starts; importing this module changes nothing).

    python _feed_worker.py OUT.npz

For each case of :data:`CASES`, trains :data:`EPOCHS` epochs with ``loop.train_epoch`` on a
4-device mesh with the host feed and with the device feed, and saves the final parameters as
``<case>/4-<feed>/<leaf>``, the epochs' losses as ``<case>/4-<feed>/loss``, and
``<case>/batch_split``: whether the device feed's batch is split over the 4 devices.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import numpy as np
from flax import nnx

from dualprop_jax import data, models, rules
from dualprop_jax.data import device as device_data
from dualprop_jax.training import parallel
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.loop import train_epoch
from dualprop_jax.training.steps import TrainState, make_optimizer, make_train_step

EPOCHS = 2
LOG_EVERY = 4  # chunks of 1, 3, 4, 4, ... steps: several lengths in one epoch
CASES = ("mlp", "cnn_augment")
BATCH = {"mlp": 40, "cnn_augment": 24}  # divisible by 4 devices


@functools.lru_cache(maxsize=1)
def fmnist(n: int = 600) -> data.Dataset:
    """The first ``n`` training images of Fashion-MNIST (uint8, standardised when taken)."""
    return data.load_dataset(
        "fashion_mnist", data_dir=os.environ.get("DUALPROP_TEST_FMNIST_DIR"), max_train=n
    )


def images(n: int = 192, seed: int = 3) -> data.Dataset:
    """Generated uint8 NHWC images 12x12x3 whose label is the brightest third of the image,
    kept as :class:`~dualprop_jax.data.StandardisedImages` like a TFDS or IDX dataset."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
    y = np.argmax(raw.reshape(n, 3, 48, 3).astype(np.int64).sum((2, 3)), 1).astype(np.int32)
    scaled = raw / 255.0
    mean = scaled.mean((0, 1, 2)).astype(np.float32)
    std = scaled.std((0, 1, 2)).astype(np.float32)
    x = data.StandardisedImages(raw, mean, std)
    return data.Dataset("generated", x, y, x[:0], y[:0], x[:0], y[:0], 3, True, "generated")


def problem(case: str):
    """``(dataset, net, params, rule, optimizer, augment)`` of a case: DP⊤ with SGD + momentum
    (linear in the gradient, so differences are not hidden as Adam's normalisation would)."""
    rngs = nnx.Rngs(0)
    if case == "mlp":
        ds, augment = fmnist(), False
        model = models.mlp((784, 32, 10), rngs=rngs)
    else:
        ds, augment = images(), True
        model = models.cnn((12, 12, 3), channels=(4,), dense=(16,), num_classes=3, rngs=rngs)
    net, params = models.split(model)
    cfg = TrainConfig(rule=rules.dual_prop(variant="dp_top"), optimizer="sgd", learning_rate=0.05)
    optimizer = make_optimizer(cfg, steps_per_epoch=1)
    return ds, net, params, cfg.rule, optimizer, augment


def train(case: str, mesh, feed: str, epochs: int = EPOCHS, **kwargs):
    """``(params, losses, step)`` after ``epochs`` epochs of ``case`` on ``mesh``, fed by
    ``feed``; ``kwargs`` go to ``train_epoch``."""
    ds, net, params, rule, optimizer, augment = problem(case)
    step = make_train_step(net, rule, optimizer, mesh=mesh, donate=True, augment=augment)
    state = TrainState.create(net, params, rule, optimizer, mesh)
    losses = []
    for epoch in range(1, epochs + 1):
        result = train_epoch(
            step, state, ds, batch_size=BATCH[case], epoch=epoch, seed=5, mesh=mesh,
            log_every=LOG_EVERY, feed=feed, **kwargs,
        )  # fmt: skip
        assert result.feed == feed
        state = result.state
        losses.append(result.loss)
    params = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), state.params)
    return params, np.asarray(losses), step


def main(out_path: str) -> None:
    assert jax.device_count() == 4, jax.devices()
    four = parallel.make_mesh(4)
    out = {}
    for case in CASES:
        for name, mesh, feed in (("4-host", four, "host"), ("4-device", four, "device")):
            params, losses, _ = train(case, mesh, feed)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
                out[f"{case}/{name}/{jax.tree_util.keystr(path)}"] = leaf
            out[f"{case}/{name}/loss"] = losses
        ds = problem(case)[0]
        idx = jax.device_put(np.arange(BATCH[case], dtype=np.int32), parallel.replicated(four))
        x, _ = jax.jit(device_data.take_batch, static_argnums=2)(
            device_data.resident(ds, four), idx, four
        )
        out[f"{case}/batch_split"] = np.asarray(
            x.sharding.is_equivalent_to(parallel.batch_sharding(four), x.ndim)
            and x.addressable_shards[0].data.shape[0] == BATCH[case] // 4
        )
    np.savez(out_path, **out)


if __name__ == "__main__":
    jax.config.update("jax_num_cpu_devices", 4)  # before JAX starts its backends
    main(sys.argv[1])
