"""Worker for tests/test_oracles.py: augmentation on 4 CPU devices, as the train step does it.

    python _augment_worker.py OUT.npz SEED

Runs in a fresh process so that it can set its CPU device count before JAX starts (importing
this module, as the test does for :func:`problem`, changes nothing). On a global
batch whose 4 device shards hold the SAME images (:func:`problem`), it saves:

  x                  the input batch (host copy)
  sharded            ``augment_batch(key(SEED), x)`` jitted with the batch sharded over the
                     mesh (``in_shardings``/``out_shardings`` of the train step)
  shard/<i>          what device i holds of ``sharded``
  sharded_again      the same call once more (same key)
  other_key          the same call with ``key(SEED + 1)``
  one_device         ``augment_batch(key(SEED), x)`` on device 0 alone, no sharding
  step/<leaf>        parameters after one ``make_train_step(..., mesh=make_mesh(4),
                     augment=True)`` step with ``key(SEED)``
  step_again/<leaf>  the same step once more, from the same initial state

The pytest process compares these with its own one-device computations.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax
from flax import nnx

import dualprop_jax as dp
from dualprop_jax.data.pipeline import augment_batch
from dualprop_jax.training import parallel
from dualprop_jax.training.parallel import make_mesh
from dualprop_jax.training.steps import TrainState

DEVICES = 4
PER_DEVICE = 2


def problem():
    """A small MLP on 8x8x3 images, DP⊤, SGD, and a batch of 4 identical shards."""
    model = dp.mlp((8 * 8 * 3, 8, 3), rngs=nnx.Rngs(0))
    net, params = dp.split(model)
    rule = dp.rules.dual_prop(variant="dp_top", alpha=0.5, beta=0.05)
    optimizer = optax.sgd(0.1)
    rng = np.random.default_rng(11)
    images = rng.standard_normal((PER_DEVICE, 8, 8, 3)).astype(np.float32)
    labels = np.arange(PER_DEVICE, dtype=np.int32) % 3
    x = np.tile(images, (DEVICES, 1, 1, 1))  # shard i = examples [2i, 2i + 1] = images
    y = np.tile(labels, DEVICES)
    return net, params, rule, optimizer, x, y


def main() -> None:
    out_path, seed = sys.argv[1], int(sys.argv[2])
    assert jax.device_count() == DEVICES, jax.devices()
    net, params, rule, optimizer, x, y = problem()
    mesh = make_mesh(DEVICES)
    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    xg = parallel.global_array(x, batch)
    yg = parallel.global_array(y, batch)
    key, other = jax.random.key(seed), jax.random.key(seed + 1)

    # the train step's shardings: key replicated, batch split over the devices
    augment = jax.jit(augment_batch, in_shardings=(rep, batch), out_shardings=batch)
    sharded = augment(key, xg)
    assert sharded.sharding.is_equivalent_to(batch, 4), sharded.sharding
    out = {
        "x": x,
        "sharded": np.asarray(sharded),
        "sharded_again": np.asarray(augment(key, xg)),
        "other_key": np.asarray(augment(other, xg)),
        "one_device": np.asarray(
            jax.jit(augment_batch)(key, jax.device_put(x, jax.devices()[0]))
        ),
    }
    for shard in sharded.addressable_shards:
        out[f"shard/{mesh.devices.tolist().index(shard.device)}"] = np.asarray(shard.data)

    step = dp.make_train_step(net, rule, optimizer, mesh=mesh, augment=True)
    for name in ("step", "step_again"):
        state = TrainState.create(net, params, rule, optimizer, mesh)
        new_state, _ = step(state, xg, yg, key)
        for path, leaf in jax.tree_util.tree_flatten_with_path(new_state.params)[0]:
            out[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    np.savez(out_path, **out)


if __name__ == "__main__":
    jax.config.update("jax_num_cpu_devices", DEVICES)  # before JAX starts its backends
    main()
