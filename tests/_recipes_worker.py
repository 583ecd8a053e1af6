"""Worker for tests/test_rules.py: the hand-written data-parallel recipes on N CPU devices.

    python _recipes_worker.py OUT.npz N

Runs in a fresh process so that it can set its CPU device count before JAX starts. Saves,
for the batch of :func:`problem`, the DP⊤ gradient by ``jax.pmap`` + ``lax.pmean``, by
``shard_map`` with the parameters cast to varying + ``lax.pmean`` (the recipe), and by
``shard_map`` on replicated parameters + ``lax.pmean`` (the pitfall).
"""

from __future__ import annotations

import sys

import jax
import numpy as np

N = int(sys.argv[2])
jax.config.update("jax_num_cpu_devices", N)

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import dualprop_jax as dp  # noqa: E402
from dualprop_jax.training import parallel  # noqa: E402
from dualprop_jax.training.parallel import make_mesh  # noqa: E402


def problem():
    """A small MLP, a batch of 32 and DP⊤ at α = 0.3 (both nudges matter there)."""
    net, params = dp.split(dp.mlp((12, 16, 16, 5), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 12)).astype(np.float32)
    y = (np.arange(32) % 5).astype(np.int32)
    return net, params, x, y, dp.rules.dual_prop(alpha=0.3, beta=0.05)


def main() -> None:
    net, params, x, y, rule = problem()
    assert jax.device_count() == N, jax.devices()

    def per_device(p, xs, ys):
        grads, _, _ = rule.grad(net, p, (), xs, ys)
        return jax.lax.pmean(grads, "i")

    xs, ys = x.reshape(N, -1, *x.shape[1:]), y.reshape(N, -1)
    g_pmap = jax.pmap(per_device, axis_name="i", in_axes=(None, 0, 0))(params, xs, ys)
    g_pmap = jax.tree.map(lambda g: g[0], g_pmap)

    mesh = make_mesh(N)
    specs = dict(mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())

    def varying(p, xb, yb):
        grads, _, _ = rule.grad(net, parallel.as_varying(p, "data"), (), xb, yb)
        return jax.lax.pmean(grads, "data")

    def replicated(p, xb, yb):
        grads, _, _ = rule.grad(net, p, (), xb, yb)
        return jax.lax.pmean(grads, "data")

    out = {}
    for name, g in (
        ("pmap", g_pmap),
        ("shard_map", jax.jit(jax.shard_map(varying, **specs))(params, x, y)),
        ("pitfall", jax.jit(jax.shard_map(replicated, **specs))(params, x, y)),
    ):
        for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
            out[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    np.savez(sys.argv[1], **out)
    print(jnp.zeros(()).devices())


if __name__ == "__main__":
    main()
