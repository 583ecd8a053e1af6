"""``dtype="float64"`` is real or refused: the library refuses it while JAX's 64-bit mode is
off (JAX would compute in float32 under a float64 label), and ``dualprop train --dtype
float64`` switches the mode on in its own process. Oracles: the dtype JAX computes in, and the
gradient against one computed in float64 by hand."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import dualprop_jax as dp


def _problem():
    net, params = dp.split(dp.mlp((5, 7, 3), rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    return net, params, rng.normal(size=(4, 5)).astype(np.float32), np.array([0, 1, 2, 1])


@pytest.mark.parametrize(
    "rule",
    [dp.rules.dual_prop(dtype="float64"), dp.rules.backprop(dtype="float64"),
     dp.rules.dual_prop(dtype="float64", fast=True),
     dp.rules.equilibrium_prop(dtype="float64", free_steps=3, nudged_steps=2)],
    ids=lambda r: r.label,
)  # fmt: skip
def test_float64_without_64_bit_jax_is_refused_with_the_fix(rule):
    net, params, x, y = _problem()
    with pytest.raises(ValueError, match=r"float64.*jax_enable_x64"):
        rule.grad(net, params, (), x, y)
    with pytest.raises(ValueError, match=r"float64.*jax_enable_x64"):
        rule.predict(net, params, x)
    with jax.enable_x64(True):  # the fix works, and the maps then compute in float64
        _, aux, _ = rule.grad(net, params, (), x, y)
        assert aux.logits.dtype == np.float64


def test_float64_computes_in_float64():
    """BP's loss and prediction in float64 equal numpy's float64 forward pass to 1e-12; float32
    would miss by about 1e-7. (Gradients keep the parameters' dtype, float32 here.)"""
    net, params, x, y = _problem()
    with jax.enable_x64(True):
        _, aux, _ = dp.rules.backprop(dtype="float64").grad(net, params, (), x, y)
    W0, b0 = (np.asarray(params["layers"][0][k], np.float64) for k in ("kernel", "bias"))
    W1, b1 = (np.asarray(params["layers"][1][k], np.float64) for k in ("kernel", "bias"))
    z = np.maximum(x.astype(np.float64) @ W0 + b0, 0) @ W1 + b1
    loss = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y])
    np.testing.assert_allclose(aux.logits, z, rtol=1e-12)
    np.testing.assert_allclose(aux.loss, loss, rtol=1e-12)


def test_the_cli_trains_in_float64_when_asked(fmnist_raw, tmp_path):
    """In a process of its own (the mode is process-wide): ``--dtype float64`` trains, with no
    JAX warning of a float64 request truncated to float32, and says float64 in results.json."""
    xtr, ytr, xte, yte = fmnist_raw
    npz = tmp_path / "small.npz"
    np.savez(npz, x_train=xtr[:300], y_train=ytr[:300], x_test=xte[:100], y_test=yte[:100])
    args = ["train", "--dataset", str(npz), "--widths", "16", "--batch-size", "100",
            "--epochs", "1", "--dtype", "float64", "--workdir", str(tmp_path / "run")]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "dualprop_jax.cli", *args], env=env,
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "truncated to dtype float32" not in proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["rule"]["dtype"] == "float64"
