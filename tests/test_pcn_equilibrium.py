"""Equilibrium propagation on the predictive-coding energy: its BP limit, its nudged equilibrium
against the energy's stationary point, a linear net in closed form, and the rule's contract.

Oracles: BP's gradient of the batch-mean loss in float64, which the centered estimate reaches
at O(β²) and the one-sided at O(β) (dividing β by 10 divides the error by 100 and by 10); the
gradient of the energy F_β with respect to the value nodes (raw ``jax.grad``), which is 0 at
the nudged equilibrium; for a linear net, that equilibrium written out as a linear solve and
the update as the matrix products of ∂F/∂θ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.core import pcn_equilibrium
from dualprop_jax.losses import targets_as_array
from dualprop_jax.training.steps import TrainState, make_train_step


def _rel(got, want) -> float:
    total = float(jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree.leaves(want))))
    leaves = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return max(float(jnp.linalg.norm(g - w)) for g, w in leaves) / total


def _problem(kind: str):
    """float64 parameters and inputs of a tanh MLP or a ResNet graph (Fixup's zero residual
    branches perturbed, so that every path carries error)."""
    if kind == "mlp":
        module = models.mlp((10, 16, 12, 5), activation="tanh", rngs=nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(1), (8, 10))
    else:
        module = models.resnet(widths=(4, 8), blocks=(1, 1), input_shape=(8, 8, 1),
                               num_classes=5, rngs=nnx.Rngs(0))  # fmt: skip
        x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
    net, params = models.split(module)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    scale = 0.0 if kind == "mlp" else 0.3
    leaves = [a + scale * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), jax.tree.unflatten(tree, leaves))
        return net, params, x.astype(jnp.float64), jnp.arange(8) % 5


@pytest.mark.parametrize(
    ("nudging", "scheme", "ratio"),
    [("symmetric", "backward", 100), ("symmetric", "synchronous", 100),
     ("one_sided", "backward", 10), ("one_sided", "synchronous", 10)],
)  # fmt: skip
def test_gradient_tends_to_bp_at_the_nudging_order(nudging, scheme, ratio):
    """float64, tanh MLP, default K (the number of layers): the error to BP's gradient falls
    by about 100 (centered) or 10 (one-sided) from β = 1e-2 to 1e-3, and is small at 1e-3."""
    net, params, x, y = _problem("mlp")
    with jax.enable_x64(True):
        bp = rules.backprop(dtype="float64").grad(net, params, (), x, y)[0]
        errs = []
        for b in (1e-2, 1e-3):
            rule = rules.ep_pcn(beta=b, nudging=nudging, scheme=scheme, dtype="float64")
            errs.append(_rel(rule.grad(net, params, (), x, y)[0], bp))
    assert 0.8 * ratio < errs[0] / errs[1] < 1.25 * ratio
    assert errs[1] < (1e-5 if nudging == "symmetric" else 1e-2)


@pytest.mark.parametrize("scheme", pcn_equilibrium.SCHEMES)
def test_gradient_on_a_graph_is_bp_at_small_beta(scheme):
    """float64, a ResNet graph (identity and projection skips, ReLU), default K (6 layers):
    at β = 1e-4 the update is BP's gradient to 1e-8. (With ReLU the estimate is exact while no
    unit crosses its kink, so the error does not shrink as a power of β: it is 2e-16 up to
    β = 1e-3 here and a few % from 3e-3, where units flip.)"""
    net, params, x, y = _problem("resnet")
    with jax.enable_x64(True):
        bp = rules.backprop(dtype="float64").grad(net, params, (), x, y)[0]
        rule = rules.ep_pcn(beta=1e-4, scheme=scheme, dtype="float64")
        assert _rel(rule.grad(net, params, (), x, y)[0], bp) < 1e-8


def test_synchronous_scheme_needs_as_many_iterations_as_layers():
    """Under the synchronous scheme the nudge moves one edge per iteration: with one
    iteration fewer than the MLP's 3 layers, the first layer's update is not BP's (error
    0.4 of the norm at any β); with 3 it is (below 1e-5 at β = 1e-3)."""
    net, params, x, y = _problem("mlp")
    assert pcn_equilibrium.layers(net) == 3
    with jax.enable_x64(True):
        bp = rules.backprop(dtype="float64").grad(net, params, (), x, y)[0]

        def err(steps):
            rule = rules.ep_pcn(beta=1e-3, scheme="synchronous", nudged_steps=steps,
                                dtype="float64")  # fmt: skip
            return _rel(rule.grad(net, params, (), x, y)[0], bp)

        assert err(2) > 0.1 and err(3) < 1e-5


@pytest.mark.parametrize("scheme", pcn_equilibrium.SCHEMES)
def test_nudged_state_is_a_stationary_point_of_the_energy(scheme):
    """float64, tanh MLP, β = 0.05, 60 iterations: ∂F_β/∂v (raw jax.grad of the energy) at the
    state v(ε) is below 1e-10 of ∂F_β/∂v_N at the free state, so the iteration's fixed point is
    the nudged equilibrium of the energy it claims."""
    net, params, x, y = _problem("mlp")
    with jax.enable_x64(True):
        rule = rules.ep_pcn(beta=0.05, scheme=scheme, nudged_steps=60, dtype="float64")
        t = targets_as_array(net.forward(params, x), y)
        eps = pcn_equilibrium.nudged_errors(net, params, x, t, rule.beta, rule, 60)
        fw = pcn_equilibrium.nudged_state(net, params, x, eps, jnp.float64)
        v = tuple(fw.pre[j] + eps[j - 1] for j in range(1, net.output_node + 1))
        free = tuple(fw.pre[j] for j in range(1, net.output_node + 1))

        def dF(v_):
            return jax.grad(pcn_equilibrium.energy, argnums=4)(net, params, x, t, v_, rule.beta,
                                                               rule.loss)  # fmt: skip

        scale = float(jnp.max(jnp.abs(dF(free)[-1])))
        assert scale > 1e-3
        assert max(float(jnp.max(jnp.abs(g))) for g in dF(v)) < 1e-10 * scale / 1e-3


def _linear_solution(W1, b1, W2, b2, x, t, beta):
    """The stationary point of F_β = ½‖v₁ − W₁ᵀx − b₁‖² + ½‖v₂ − W₂ᵀv₁ − b₂‖² + β½‖v₂ − t‖²
    (row vectors, kernels (in, out)): a 6x6 linear system per example."""
    A = np.block([[np.eye(4) + W2 @ W2.T, -W2], [-W2.T, (1 + beta) * np.eye(2)]])
    rhs = np.concatenate([x @ W1 + b1 - b2 @ W2.T, b2 + beta * t], axis=1)
    z = np.linalg.solve(A, rhs.T).T
    return z[:, :4], z[:, 4:]


@pytest.mark.parametrize("scheme", pcn_equilibrium.SCHEMES)
def test_linear_net_in_closed_form(scheme):
    """Linear 3-4-2, squared error, β = 0.1, 50 iterations: the errors equal those of the
    solved equilibrium at ±β (1e-12), and the update is (3) written out with them:
    ∂F/∂W₂ = −v₁ᵀε₂, ∂F/∂W₁ = −xᵀε₁, ∂F/∂b = −Σ_b ε (1e-10)."""
    net, params = models.split(models.mlp((3, 4, 2), activation="identity", rngs=nnx.Rngs(4)))
    x = np.asarray(jax.random.normal(jax.random.key(5), (6, 3)), np.float64)
    t = np.asarray(jax.random.normal(jax.random.key(6), (6, 2)), np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    (W1, b1), (W2, b2) = [(p["layers"][k]["kernel"], p["layers"][k]["bias"]) for k in (0, 1)]
    beta = 0.1
    rule = rules.ep_pcn(beta=beta, loss="squared_error", scheme=scheme, nudged_steps=50,
                        dtype="float64")  # fmt: skip
    grads = {}
    with jax.enable_x64(True):
        p_j, x_j, t_j = jax.tree.map(jnp.asarray, (p, x, t))
        for sign in (1, -1):
            v1, v2 = _linear_solution(W1, b1, W2, b2, x, t, sign * beta)
            e1, e2 = v1 - x @ W1 - b1, v2 - v1 @ W2 - b2
            got = pcn_equilibrium.nudged_errors(net, p_j, x_j, t_j, sign * beta, rule, 50)
            np.testing.assert_allclose(got[0], e1, atol=1e-12)
            np.testing.assert_allclose(got[1], e2, atol=1e-12)
            grads[sign] = (-x.T @ e1, -e1.sum(0), -v1.T @ e2, -e2.sum(0))
        update = rule.grad(net, p_j, (), x_j, t_j)[0]["layers"]
    want = [(a - b) / (2 * beta * 6) for a, b in zip(grads[1], grads[-1], strict=True)]
    got = [update[0]["kernel"], update[0]["bias"], update[1]["kernel"], update[1]["bias"]]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-10)


def test_rule_contract_labels_and_errors():
    rule = rules.ep_pcn(nudging="one_sided", scheme="synchronous")
    assert rule.label == "ep_pcn+one_sided+synchronous"
    assert rules.from_label(rule.label) == rule
    assert rules.from_dict(rule.to_dict()) == rule
    assert rules.from_label("ep_pcn").label == "ep_pcn"
    with pytest.raises(ValueError, match="beta"):
        rules.ep_pcn(beta=0.0)
    with pytest.raises(ValueError, match="scheme"):
        rules.ep_pcn(scheme="random")
    with pytest.raises(ValueError, match="nudged_steps"):
        rules.ep_pcn(nudged_steps=0)


def test_a_train_step_with_ep_pcn_is_an_sgd_step_on_bp_gradient():
    """Oracle: optax's SGD driven directly with BP's gradient. One step of the train step with
    ep_pcn (float64, β = 1e-4) lands on the same parameters to 1e-8."""
    net, params, x, y = _problem("mlp")
    with jax.enable_x64(True):
        rule, optimizer = rules.ep_pcn(beta=1e-4, dtype="float64"), optax.sgd(0.5)
        state = TrainState.create(net, params, rule, optimizer)
        state, _ = make_train_step(net, rule, optimizer)(state, x, y)
        bp = rules.backprop(dtype="float64").grad(net, params, (), x, y)[0]
        updates, _ = optimizer.update(bp, optimizer.init(params), params)
        want = optax.apply_updates(params, updates)
        assert _rel(state.params, want) < 1e-8
