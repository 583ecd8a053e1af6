"""Networks as graphs of layer maps: the diamond in closed form, the BP limit on a residual net,
chains as the special case, and clear errors for graphs that are not networks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _oracles import assert_each_leaf_near
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import core, models, rules

# ------------------------------------------------------------------ the diamond, in closed form

# x → u; u → v and u → w (u feeds two children); v → z and w → z (they join again); z → out.
# z is a sum node (identity f); u is ReLU, v and w tanh: every node kind, smooth where it counts.
DIAMOND = [("input", "u"), ("u", "v"), ("u", "w"), ("v", "z"), ("w", "z"), ("z", "output")]
ACTS = {"u": "relu", "v": "tanh", "w": "tanh", "z": "identity"}
WIDTHS = {"input": 5, "u": 6, "v": 4, "w": 3, "z": 4, "output": 3}
F = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh, "identity": lambda a: a}


def _diamond(dtype=jnp.float64):
    rngs = nnx.Rngs(3)
    maps = [
        models.Dense(WIDTHS[i], WIDTHS[j], rngs=rngs, param_dtype=dtype,
                     bias_init=nnx.initializers.normal(0.5))
        for i, j in DIAMOND
    ]  # fmt: skip
    graph = models.Graph.from_edges(DIAMOND, ACTS)
    return models.Network(maps, input_shape=(5,), graph=graph)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _diamond_by_hand(W, b, x, y, variant, alpha, beta):
    """The dyads and gradients of the diamond, one sweep, written out with numpy.

    Forward: a_u = x W₀ + b₀; a_v = s_u W₁ + b₁; a_w = s_u W₂ + b₂; a_z = s_v W₃ + b₃ + s_w W₄
    + b₄ (the join); ŷ = s_z W₅ + b₅. Output: δ_out = -βg, g = softmax(ŷ) - onehot(y).
    Sweep in reverse topological order z, w, v, u with fb_z = δ_out W₅ᵀ, fb_v = δ_z W₃ᵀ,
    fb_w = δ_z W₄ᵀ, fb_u = δ_v W₁ᵀ + δ_w W₂ᵀ (u's two children), s±_j = f_j(a_j ± c± fb_j).
    Gradients: -(1/(βB)) s̄_iᵀ δ_j for edge (i, j), and -(1/(βB)) Σ_batch δ_j for its bias.
    """
    cp, cm = (alpha, 1 - alpha) if variant == "dp" else (1 - alpha, alpha)
    s, a = {"input": x}, {}
    a["u"] = x @ W[0] + b[0]
    s["u"] = F["relu"](a["u"])
    a["v"] = s["u"] @ W[1] + b[1]
    s["v"] = np.tanh(a["v"])
    a["w"] = s["u"] @ W[2] + b[2]
    s["w"] = np.tanh(a["w"])
    a["z"] = s["v"] @ W[3] + b[3] + s["w"] @ W[4] + b[4]
    s["z"] = a["z"]
    y_hat = s["z"] @ W[5] + b[5]
    g = _softmax(y_hat) - np.eye(3)[y]
    sp, sm = dict(s), dict(s)
    sp["output"], sm["output"] = y_hat - cp * beta * g, y_hat + cm * beta * g
    d = {"output": -beta * g}
    fb = {"z": d["output"] @ W[5].T}
    for j, children in (("z", None), ("w", [("z", 4)]), ("v", [("z", 3)]),
                        ("u", [("v", 1), ("w", 2)])):  # fmt: skip
        if children:
            fb[j] = sum(d[c] @ W[k].T for c, k in children)
        f = F[ACTS[j]]
        sp[j], sm[j] = f(a[j] + cp * fb[j]), f(a[j] - cm * fb[j])
        d[j] = sp[j] - sm[j]
    bar = {j: alpha * sp[j] + (1 - alpha) * sm[j] for j in sp}
    bar["input"] = x
    scale = -1.0 / (beta * x.shape[0])
    grads = [(scale * bar[i].T @ d[j], scale * d[j].sum(0)) for i, j in DIAMOND]
    return sp, sm, grads


@pytest.mark.parametrize(("variant", "alpha"), [("dp", 0.3), ("dp_top", 0.3), ("dp_top", 1.0)])
def test_diamond_dyads_and_gradients_are_the_closed_form(variant, alpha):
    """Bugs this catches (each checked to fail it): a node's feedback from only one of its
    children (u), a sweep in the wrong order (u before v and w: their δ still 0), swapped
    c⁺/c⁻."""
    beta = 0.2  # large, so every mistake moves the dyads by far more than rounding
    with jax.enable_x64(True):
        model = _diamond()
        net, params = dp.split(model)
        x = jax.random.normal(jax.random.key(0), (7, 5), jnp.float64)
        y = jnp.asarray([0, 1, 2, 0, 1, 2, 1])
        rule = rules.dual_prop(variant, alpha=alpha, beta=beta, dtype="float64")
        got = core.infer_dyads(net, params, x, y, rule)
        grads, aux, _ = rule.grad(net, params, (), x, y)
        W = [np.asarray(params["layers"][k]["kernel"]) for k in range(len(DIAMOND))]
        b = [np.asarray(params["layers"][k]["bias"]) for k in range(len(DIAMOND))]
        sp, sm, want = _diamond_by_hand(W, b, np.asarray(x), np.asarray(y), variant, alpha, beta)
        for j, name in enumerate(net.graph.names):
            np.testing.assert_allclose(got.s_plus[j], sp[name], rtol=1e-12, atol=1e-12,
                                       err_msg=f"s+ of {name}")  # fmt: skip
            np.testing.assert_allclose(got.s_minus[j], sm[name], rtol=1e-12, atol=1e-12,
                                       err_msg=f"s- of {name}")  # fmt: skip
        for k, (gw, gb) in enumerate(want):
            np.testing.assert_allclose(grads["layers"][k]["kernel"], gw, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(grads["layers"][k]["bias"], gb, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(aux.logits, model(x), rtol=1e-12)


def test_diamond_is_numbered_in_topological_order_and_refuses_non_networks():
    g = models.Graph.from_edges(DIAMOND, ACTS)
    assert g.names[0] == "input" and g.names[-1] == "output"
    pos = {v: j for j, v in enumerate(g.names)}
    assert all(pos[i] < pos[j] for i, j in DIAMOND)
    assert g.in_edges[pos["z"]] == (3, 4) and g.out_edges[pos["u"]] == (1, 2)
    with pytest.raises(ValueError, match="cycle"):
        models.Graph.from_edges([*DIAMOND, ("z", "u")], ACTS)
    with pytest.raises(ValueError, match=r"without an out-edge: \['w'\]"):
        models.Graph.from_edges([e for e in DIAMOND if e != ("w", "z")], ACTS)
    with pytest.raises(ValueError, match="activation for each hidden node"):
        models.Graph.from_edges(DIAMOND, {"u": "relu"})
    with pytest.raises(ValueError, match="sums in-edges of different shapes"):
        maps = [models.Dense(WIDTHS[i], WIDTHS[j], rngs=nnx.Rngs(0)) for i, j in DIAMOND]
        maps[4] = models.Dense(3, 2, rngs=nnx.Rngs(0))  # w → z gives 2 features, v → z 4
        models.Network(maps, input_shape=(5,), graph=g)


# ------------------------------------------------------------------ the BP limit on a ResNet


def _small_resnet(downsample="pool_conv"):
    """Stem, then stage 0 (identity skip) and stage 1 (a pooled conv edge, and a 1x1
    projection skip of the pooled input): two skip connections of both kinds. ``downsample``
    puts stage 1's pool at its conv's input (default) or output."""
    model = models.resnet(widths=(3, 4), blocks=(1, 1), input_shape=(8, 8, 2), num_classes=5,
                          downsample=downsample, rngs=nnx.Rngs(0),
                          param_dtype=jnp.float64)  # fmt: skip
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds.count("Identity") == 1
    assert any(getattr(m, "kernel_size", None) == (1, 1) and m.pool_input for m in model.layers)
    pooled = [m for m in model.layers if getattr(m, "kernel_size", None) == (3, 3)
              and (m.pool_input or m.pool_output)]  # fmt: skip
    assert len(pooled) == 1 and pooled[0].pool_output == (downsample == "conv_pool")
    return model


def _randomised(params, key):
    """Fixup starts every residual branch at zero (no gradient reaches its first conv): the
    limit is checked at random weights of the same shapes instead, He-scaled kernels
    (std √(2/fan_in)) and small biases (std 0.1), as the chain test's initialisation."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    drawn = [
        jax.random.normal(k, v.shape, v.dtype)
        * (np.sqrt(2.0 / np.prod(v.shape[:-1])) if v.ndim > 1 else 0.1)
        for k, v in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, drawn)


# The chain test's bounds (tests/test_core.py), for the same reasons: α = ½ is second order in
# β (rounding is what is left for ReLU), α ∈ {0, 1} first order.
_LIMIT_BOUNDS = [(0.5, 1e-3, 1e-14, 1e-10), (0.0, 1e-6, 1e-10, 1e-4), (1.0, 1e-6, 1e-10, 1e-4)]
_LIMIT_CASES = [
    (downsample, variant, passes, schedule, *bounds)
    for variant in ("dp", "dp_top")
    for passes, schedule in ((0, "alternating"), (2, "alternating"), (2, "bottom_up"))
    for bounds in _LIMIT_BOUNDS
    for downsample in ("pool_conv", "conv_pool")
    if downsample == "pool_conv" or (passes, schedule) == (2, "alternating")
]


@pytest.mark.parametrize(
    ("downsample", "variant", "passes", "schedule", "alpha", "beta", "max_cos_err",
     "max_ratio_err"),
    _LIMIT_CASES,
)  # fmt: skip
def test_residual_gradient_tends_to_bp(
    downsample, variant, passes, schedule, alpha, beta, max_cos_err, max_ratio_err
):
    with jax.enable_x64(True):
        model = _small_resnet(downsample)
        net, params = dp.split(model)
        params = _randomised(params, jax.random.key(4))
        x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2), jnp.float64)
        y = jax.random.randint(jax.random.key(2), (6,), 0, 5)
        rule = rules.dual_prop(variant, alpha=alpha, beta=beta, passes=passes,
                               schedule=schedule, dtype="float64")  # fmt: skip
        g_dp, _, _ = rule.grad(net, params, (), x, y)
        g_bp, _, _ = rules.backprop(dtype="float64").grad(net, params, (), x, y)
        if alpha == 0.5 and variant == "dp" and (passes == 0 or downsample == "conv_pool"):
            # oracle for the BP side: raw jax.grad through the NNX module itself
            graphdef, _ = nnx.split(model)
            state = nnx.state(model)
            nnx.replace_by_pure_dict(state, params)

            def raw_loss(st):
                y_hat = nnx.merge(graphdef, st)(x)
                return jnp.mean(jax.nn.logsumexp(y_hat, -1) - y_hat[jnp.arange(6), y])

            g_raw = nnx.to_pure_dict(jax.grad(raw_loss)(state))
            chex.assert_trees_all_close(g_bp, g_raw, rtol=1e-10, atol=1e-12)
        assert len(jax.tree.leaves(g_dp)) == 2 * (net.num_maps - 1)  # all edges but the skip
        assert_each_leaf_near(g_dp, g_bp, max_cos_err, max_ratio_err)


def test_fast_path_on_a_residual_net_is_bp_to_second_order():
    """The fast path's finite-difference activation: |g - g_bp| = O(β²), and for ReLU only
    rounding (~ε/β) away from the kinks: the α = ½ bounds of the chain test."""
    with jax.enable_x64(True):
        net, params = dp.split(_small_resnet())
        params = _randomised(params, jax.random.key(4))
        x = jax.random.normal(jax.random.key(1), (6, 8, 8, 2), jnp.float64)
        y = jax.random.randint(jax.random.key(2), (6,), 0, 5)
        fast = rules.dual_prop("dp_top", fast=True, beta=1e-3, dtype="float64")
        g_fast, _, _ = fast.grad(net, params, (), x, y)
        g_bp, _, _ = rules.backprop(dtype="float64").grad(net, params, (), x, y)
        assert_each_leaf_near(g_fast, g_bp, 1e-14, 1e-10)


# ------------------------------------------------------------------ chains as the special case


def test_a_chain_written_as_a_graph_is_bit_identical_to_the_chain():
    """The same maps, once as a chain and once as the graph 0 → 1 → ... → L: the graph code
    path must give exactly the chain's dyads and gradients (every sum has one term)."""
    chain = models.cnn((8, 8, 1), channels=(3, 4), dense=(6,), num_classes=5, rngs=nnx.Rngs(0))
    edges = [("input", "h1"), ("h1", "h2"), ("h2", "h3"), ("h3", "output")]
    graph = models.Graph.from_edges(edges, {"h1": "relu", "h2": "relu", "h3": "relu"})
    as_graph = models.Network(list(chain.layers), input_shape=(8, 8, 1), graph=graph)
    net_c, params = dp.split(chain)
    net_g, params_g = dp.split(as_graph)
    assert not net_g.is_chain and net_c.is_chain
    chex.assert_trees_all_equal(params, params_g)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    y = jnp.asarray([0, 1, 2, 3])
    for rule in (rules.dual_prop("dp_top"), rules.dual_prop("dp", passes=2, alpha=0.3),
                 rules.dual_prop("dp_top", fast=True), rules.backprop()):  # fmt: skip
        chain_out, graph_out = (rule.grad(n, params, (), x, y) for n in (net_c, net_g))
        chex.assert_trees_all_equal(chain_out, graph_out)
    chex.assert_trees_all_equal(chain(x), as_graph(x))


def test_rules_defined_for_chains_only_say_so_on_a_graph():
    net, params = dp.split(_diamond(jnp.float32))
    x, y = jnp.ones((2, 5)), jnp.asarray([0, 1])
    for rule in (rules.damped_dual_prop(), rules.kolen_pollack(), rules.equilibrium_prop(),
                 rules.chl()):  # fmt: skip
        with pytest.raises(ValueError, match="defined for layered chains only"):
            rule.init(net, rule.init_params(net, params, jax.random.key(0)))
            rule.grad(net, params, rule.init(net, params), x, y)


def test_graph_steps_compile_once():
    """The topological order is static: a jitted step on a graph traces once for many calls."""
    net, params = dp.split(_diamond(jnp.float32))
    rule = rules.dual_prop("dp_top")
    traces = []

    @jax.jit
    def step(p, x, y):
        traces.append(1)
        return rule.grad(net, p, (), x, y)[0]

    for i in range(3):
        x = jax.random.normal(jax.random.key(i), (4, 5))
        params = jax.tree.map(lambda a, g: a - 0.1 * g, params, step(params, x, jnp.arange(4) % 3))
    assert len(traces) == 1
