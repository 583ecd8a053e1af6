"""Predictive coding as a rule: the fixed-prediction form against BP, the relaxation against its
energy, and the rule's contract.

Oracles: BP's gradient of the batch-mean loss (float64), which predictive coding under the
fixed-prediction assumption reaches exactly at step size 1 after as many steps as the longest
path to the output (Millidge, Tschantz & Buckley 2022; Song et al. 2020); gradient descent on
the energy, which cannot raise it at a step size below 2/L (L: a Lipschitz constant of
∂F/∂v); the minimiser of the energy of a linear net, written out as a linear solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.core import predictive
from dualprop_jax.training.steps import TrainState, make_train_step


def _rel(got, want) -> float:
    total = float(jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree.leaves(want))))
    leaves = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return max(float(jnp.linalg.norm(g - w)) for g, w in leaves) / total


def _problem(kind: str):
    rngs = nnx.Rngs(0)
    if kind == "mlp":
        module = models.mlp((10, 16, 12, 5), activation="tanh", rngs=rngs)
        x = jax.random.normal(jax.random.key(1), (8, 10))
    else:  # a graph: identity and projection skips
        module = models.resnet(widths=(4, 8), blocks=(1, 1), input_shape=(8, 8, 1),
                               num_classes=5, rngs=rngs)  # fmt: skip
        x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
    net, params = models.split(module)
    if kind == "resnet":  # Fixup starts each residual branch at 0: make every path carry error
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(7), len(leaves))
        noise = [0.3 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)]
        params = jax.tree.unflatten(tree, [a + n for a, n in zip(leaves, noise, strict=True)])
    # the longest path, in edges, from a hidden node to the output
    to_out = {net.output_node: 0}
    for j in range(net.output_node - 1, 0, -1):
        to_out[j] = 1 + max(to_out[net.target(k)] for k in net.out_edges(j))
    return net, params, x, jnp.arange(8) % 5, max(to_out[j] for j in range(1, net.output_node))


@pytest.mark.parametrize("kind", ["mlp", "resnet"])
def test_fixed_prediction_update_is_bp_gradient(kind):
    """float64: at step size 1 and as many steps as the longest path, the fixed-prediction
    update equals BP's gradient to 1e-12 of its norm; one step short it is far off (0.4 on the
    MLP), and at step size ½ it approaches BP geometrically (≤ 1e-4 after 30 steps)."""
    net, params, x, y, depth = _problem(kind)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x64 = x.astype(jnp.float64)
        bp = rules.backprop(dtype="float64").grad(net, p64, (), x64, y)[0]

        def err(steps, size):
            rule = rules.predictive_coding(fixed_prediction=True, inference_steps=steps,
                                           step_size=size, dtype="float64")  # fmt: skip
            return _rel(rule.grad(net, p64, (), x64, y)[0], bp)

        assert err(depth, 1.0) <= 1e-12
        assert err(depth - 1, 1.0) > 1e-3
        assert err(30, 0.5) <= 1e-4


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_inference_lowers_the_energy_at_every_step(activation):
    """float64, the rule's default γ = 0.1, T = 20: F after each step is no larger than before
    (monotone descent), and the relaxation moves it (the output error is not 0)."""
    net, params = models.split(models.mlp((10, 16, 12, 5), activation=activation,
                                          rngs=nnx.Rngs(2)))  # fmt: skip
    x, y = jax.random.normal(jax.random.key(3), (8, 10)), jnp.arange(8) % 5
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        rule = rules.predictive_coding(dtype="float64")
        e = np.asarray(predictive.energies(net, p64, x.astype(jnp.float64), y, rule))
    assert e.shape == (rule.inference_steps + 1,)
    assert np.all(np.diff(e) <= 1e-12 * e[0]) and e[-1] < e[0] * (1 - 1e-3)


def test_linear_net_relaxes_to_the_energy_minimiser():
    """A linear net 3-4-2 with squared error: F(v) = ½‖v − W₁x − b₁‖² + ½‖W₂v + b₂ − t‖² is
    minimised by (I + W₂ᵀW₂) v = W₁x + b₁ + W₂ᵀ(t − b₂); 400 steps at γ = 0.2 reach it (1e-9),
    and the update is then ∂F/∂θ / B written out: ∂W₂ = (W₂v + b₂ − t) vᵀ / B, ∂W₁ = −(v − W₁x
    − b₁) xᵀ / B."""
    net, params = models.split(models.mlp((3, 4, 2), activation="identity", rngs=nnx.Rngs(4)))
    x = jax.random.normal(jax.random.key(5), (6, 3))
    t = jax.random.normal(jax.random.key(6), (6, 2))
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        (W1, b1), (W2, b2) = [(p["layers"][k]["kernel"], p["layers"][k]["bias"]) for k in (0, 1)]
        x64, t64 = np.asarray(x, np.float64), np.asarray(t, np.float64)
        rhs = x64 @ W1 + b1 + (t64 - b2) @ W2.T
        v = np.linalg.solve(np.eye(4) + W2 @ W2.T, rhs.T).T
        rule = rules.predictive_coding(loss="squared_error", inference_steps=400, step_size=0.2,
                                       dtype="float64")  # fmt: skip
        p_j, x_j, t_j = jax.tree.map(jnp.asarray, (p, x64, t64))
        got = rule.grad(net, p_j, (), x_j, t_j)[0]
        out_err, hid_err = v @ W2 + b2 - t64, v - x64 @ W1 - b1
        np.testing.assert_allclose(got["layers"][1]["kernel"], v.T @ out_err / 6, atol=1e-9)
        np.testing.assert_allclose(got["layers"][0]["kernel"], -x64.T @ hid_err / 6, atol=1e-9)
        np.testing.assert_allclose(got["layers"][0]["bias"], -hid_err.mean(0), atol=1e-9)


def test_rule_contract_labels_and_errors():
    rule = rules.predictive_coding(fixed_prediction=True, inference_steps=5)
    assert rule.label == "pc+fixed" and rules.from_label("pc+fixed") == rules.predictive_coding(
        fixed_prediction=True
    )
    assert rules.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError, match="step_size"):
        rules.predictive_coding(step_size=0.0)
    with pytest.raises(ValueError, match="inference_steps"):
        rules.predictive_coding(inference_steps=0)


def test_a_train_step_with_pc_lowers_the_loss():
    """Oracle: optax's SGD on the rule's update; 30 steps on a fixed batch lower its loss."""
    net, params, x, y, _ = _problem("mlp")
    rule, optimizer = rules.predictive_coding(), optax.sgd(0.2)
    step = make_train_step(net, rule, optimizer)
    state = TrainState.create(net, params, rule, optimizer)
    losses = []
    for _ in range(30):
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0]
