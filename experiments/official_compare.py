"""Side by side with the official 2024 code: the same weights, the same batch, one process.

The official code (GitHub Rasmuskh/dualprop_icml_2024) is not part of this project and is not
copied into it: clone it anywhere and pass its folder. Only its ``src/models.py`` is imported
(it needs flax's linen API, which flax ships). Example, the command behind the multi-pass table in
BENCHMARKS.md:

    git clone https://github.com/Rasmuskh/dualprop_icml_2024 /tmp/dualprop_icml_2024
    python experiments/official_compare.py --official /tmp/dualprop_icml_2024 --out cmp.json

Two things are measured, on the MLP 784-1000-1000-1000-10 and on the CNN 32x32x3, conv 32/64/128
each followed by a 2x2 max-pool, dense 256 → 10 (``--models``):

1. **Agreement** (float64, α = ½, β = 0.1 unless given): the official DP⊤ (``dualprop-lagr-ff``)
   one-sweep dyads (its ``bwK`` sequence) and gradient against the project's ``dp_top`` rule with
   ``passes=0`` on the ``"pooled"`` layout (the official one) and on the default ``"unpooled"``
   layout. The official pooled map takes its feedback vjp at s⁺ where the project takes it at s̄
   (``dyads`` module docstring); in one sweep both are the forward activity, so they must agree.
2. **Cost** (float32, batch 128): the gradient of the official ``fwK`` schedule with K passes
   (``--passes``, 16 in the 2024 scripts) against the project's ``bottom_up`` schedule with the
   same number of passes, for each layout and loop form (``unroll``: automatic and 1 = a rolled
   loop). Each callable is jitted and warmed up, then all are timed round-robin (one call of
   each per round, the first rotating), each call ended by ``block_until_ready``; a row is the
   median over rounds, relative to the official one-sweep (``bwK``) gradient of the same net.
   The project's schedule runs one top-down sweep before its K bottom-up passes (so K + 1 sweeps
   of work against the official K); the ratio is reported as measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dualprop_jax import core, models, rules

NETS = {
    "mlp": dict(shape=(28, 28, 1), features=[], dense=[1000, 1000, 1000, 10]),
    "cnn": dict(shape=(32, 32, 3), features=[32, 64, 128], dense=[256, 10]),
}


def load_official(folder: pathlib.Path):
    path = folder / "src" / "models.py"
    if not path.exists():
        sys.exit(f"{path} not found: pass --official <a clone of Rasmuskh/dualprop_icml_2024>")
    spec = importlib.util.spec_from_file_location("official_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summed_ce(logits, onehot):
    return jnp.sum(optax.softmax_cross_entropy(logits, onehot))


def official_model(om, name: str, alpha: float, beta: float, sequence: str, passes: int, dtype):
    import flax.linen as nn

    spec = NETS[name]
    n = len(spec["features"])
    return om.cnn_dualprop_Lagr_ff(
        summed_ce,
        nn.Conv,
        nn.Dense,
        nn.relu,
        10,
        beta,
        alpha,
        dtype,
        dtype,
        kernels=[(3, 3)] * n,
        strides=[(1, 1)] * n,
        mp=[1] * n,
        features=spec["features"],
        dense_features=spec["dense"],
        inference_sequence=sequence,
        inference_passes_nudged=max(passes, 1),
    )


def project_net(name: str, layout: str, dtype):
    spec = NETS[name]
    rngs = nnx.Rngs(0)
    if name == "mlp":
        model = models.mlp((784, *spec["dense"]), rngs=rngs, param_dtype=dtype)
    else:
        model = models.cnn(
            spec["shape"],
            channels=spec["features"],
            dense=spec["dense"][:-1],
            num_classes=spec["dense"][-1],
            layout=layout,
            rngs=rngs,
            param_dtype=dtype,
        )
    return models.split(model)


def official_params(name: str, params) -> dict:
    """The project's parameters under the official module's names (c00/conv_mp, d00, ...)."""
    n = len(NETS[name]["features"])
    layers = params["layers"]
    out = {}
    for k in range(len(layers)):
        key = f"c{k:02d}" if k < n else f"d{k - n:02d}"
        p = {"kernel": layers[k]["kernel"], "bias": layers[k]["bias"]}
        out[key] = {"conv_mp": p} if k < n else p
    return {"params": out}


def official_grad_fn(model):
    """The official step's gradient: infer the dyads, then ∇ of get_J with the dyads fixed."""

    def grad(variables, x, onehot):
        sp, sm = model.apply(variables, x, onehot, None, method="infer_states_train")

        def J(p):
            return model.apply({"params": p}, sp, sm, method="get_J")

        return jax.grad(J)(variables["params"]), (sp, sm)

    return jax.jit(grad)


def batch(name: str, size: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, *NETS[name]["shape"])).astype(dtype)
    y = rng.integers(0, 10, size)
    return jnp.asarray(x), jnp.asarray(y)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def published(passes: int, **kw) -> rules.DualProp:
    """The project's rule for the official ``fwK`` schedule with K = ``passes``: no top-down
    sweep, K - 1 bottom-up passes (the official first pass only nudges the output)."""
    return rules.dual_prop(passes=passes - 1, schedule="bottom_up", sweep=False, **kw)


def agreement(om, name: str, alpha: float, beta: float, passes: int) -> dict:
    """Max relative difference of dyads and gradients, float64, per layout and schedule:
    one sweep (official ``bwK``) and the published schedule (official ``fwK`` K = passes)."""
    x, y = batch(name, 16, np.float64, seed=1)
    onehot = jax.nn.one_hot(y, 10, dtype=jnp.float64)
    out = {}
    cases = [("pooled", "one sweep"), ("pooled", f"fwK {passes}")]
    if name == "cnn":
        cases += [("unpooled", "one sweep"), ("unpooled", f"fwK {passes}")]
    for layout, schedule in cases:
        net, params = project_net(name, layout, jnp.float64)
        if schedule == "one sweep":
            rule = rules.dual_prop("dp_top", alpha, beta, dtype="float64")
            model = official_model(om, name, alpha, beta, "bwK", 1, jnp.float64)
        else:
            rule = published(passes, variant="dp_top", alpha=alpha, beta=beta, dtype="float64")
            model = official_model(om, name, alpha, beta, "fwK", passes, jnp.float64)
        d = core.infer_dyads(net, params, x, y, rule)
        g, _, _ = rule.grad(net, params, (), x, y)
        g_off, (sp, sm) = official_grad_fn(model)(official_params(name, params), x, onehot)
        g_off_layers = official_params(name, g)["params"]
        states = []
        for k in range(1, len(sp)):
            if d.s_plus[k].shape == sp[k].shape:
                states.append(max(_rel(d.s_plus[k], sp[k]), _rel(d.s_minus[k], sm[k])))
        grads = [
            _rel(a, b)
            for a, b in zip(jax.tree.leaves(g_off_layers), jax.tree.leaves(g_off), strict=True)
        ]
        out[f"{layout}, {schedule}"] = {
            "states_compared": len(states),
            "states_max_rel": max(states) if states else None,
            "grads_max_rel": max(grads),
        }
    return out


def timings(om, name: str, passes: int, size: int, rounds: int, warmup: int) -> list[dict]:
    x, y = batch(name, size, np.float32)
    onehot = jax.nn.one_hot(y, 10)
    calls, compile_s = {}, {}
    for seq, k in (("bwK", 1), ("fwK", passes)):
        model = official_model(om, name, 0.5, 0.01, seq, k, jnp.float32)
        _, params = project_net(name, "pooled", jnp.float32)
        fn, v = official_grad_fn(model), official_params(name, params)
        calls[f"official {seq}" + (f" K={k}" if seq == "fwK" else "")] = lambda fn=fn, v=v: fn(
            v, x, onehot
        )[0]
    layouts = ("unpooled", "pooled") if name == "cnn" else ("unpooled",)
    for layout in layouts:
        net, params = project_net(name, layout, jnp.float32)
        for unroll in (None, 1):
            rule = rules.dual_prop(
                "dp_top", 0.5, 0.01, passes=passes, schedule="bottom_up", unroll=unroll
            )
            fn = jax.jit(lambda p, x, y, rule=rule, net=net: rule.grad(net, p, (), x, y)[0])
            label = f"project sweep + {passes} bottom_up ({layout}, unroll={rule.unroll_factor})"
            calls[label] = lambda fn=fn, p=params: fn(p, x, y)
        rule = published(passes, variant="dp_top", alpha=0.5, beta=0.01)
        fn = jax.jit(lambda p, x, y, rule=rule, net=net: rule.grad(net, p, (), x, y)[0])
        label = f"project fwK {passes} = sweep=False + {passes - 1} bottom_up ({layout})"
        calls[label] = lambda fn=fn, p=params: fn(p, x, y)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for label, call in calls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        compile_s[label] = time.perf_counter() - t0
        for _ in range(warmup):
            jax.block_until_ready(call())
    labels = list(calls)
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            t0 = time.perf_counter()
            jax.block_until_ready(calls[label]())
            times[label].append(time.perf_counter() - t0)
    base = statistics.median(times["official bwK"])
    fwk = statistics.median(times[f"official fwK K={passes}"])
    return [
        {
            "net": name,
            "callable": label,
            "ms_median": 1e3 * statistics.median(t),
            "relative_to_official_one_sweep": statistics.median(t) / base,
            "relative_to_official_fwK": statistics.median(t) / fwk,
            "first_call_s": compile_s[label],
        }
        for label, t in times.items()
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=pathlib.Path, required=True, help="a clone of the 2024 code")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--passes", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--out", type=pathlib.Path)
    args = p.parse_args(argv)
    om = load_official(args.official)
    names = args.models.split(",")
    jax.config.update("jax_enable_x64", True)
    agree = {n: agreement(om, n, args.alpha, args.beta, args.passes) for n in names}
    print(json.dumps({"agreement (float64, max relative difference)": agree}, indent=1))
    rows = []
    for n in names:
        rows += timings(om, n, args.passes, args.batch, args.rounds, args.warmup)
    print("| net | gradient | ms (median) | / official one sweep | / official fwK | first call s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['net']} | {r['callable']} | {r['ms_median']:.1f} | "
            f"{r['relative_to_official_one_sweep']:.2f} | {r['relative_to_official_fwK']:.2f} | "
            f"{r['first_call_s']:.1f} |"
        )
    if args.out:
        meta = dict(jax_version=jax.__version__, backend=jax.default_backend(), argv=sys.argv)
        args.out.write_text(json.dumps(dict(meta, agreement=agree, rows=rows), indent=1))


if __name__ == "__main__":
    main()
