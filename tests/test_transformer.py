"""Transformer maps as edges: the ViT and a causal-attention graph against BP as β → 0, and one
attention edge against the dyad equations written out with raw ``jax.vjp``.

Oracles: the BP gradient of the batch-mean loss (float64), with the order of convergence the
math gives: O(β) at α ∈ {0, 1}, O(β²) at α = ½; and for one attention edge the closed form
s±_N = a_N ∓ c± βg, fb_h = J_attn(s_h)ᵀ δ_N at the forward state, s±_h = f(a_h ± c± fb_h),
∇_θ = -(1/(βB)) vjp_θ[W_θ(s̄_h)](δ_N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualprop_jax import models, rules
from dualprop_jax.models import attention


def _relative_errors(got, want) -> float:
    """The largest per-leaf ‖got − want‖, relative to the whole ‖want‖ (a leaf whose BP
    gradient is 0, such as the attention's key bias, which softmax ignores, is then judged
    against the gradient's scale, not its own)."""
    total = float(jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree.leaves(want))))
    leaves = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return max(float(jnp.linalg.norm(g - w)) for g, w in leaves) / total


def _causal_lm_graph(rngs: nnx.Rngs, tokens: int, width: int, vocab: int, classes: int):
    """Two pre-LN blocks with causal attention, LayerNorm and GELU dyads, on tokens × width
    states; a token + positional embedding of integer ids (the input node), and a mean-pooled
    head."""
    edges = [("input", "embed")]
    maps: list[nnx.Module] = [attention.TokenEmbed(vocab, tokens, width, rngs=rngs)]
    acts = {"embed": "identity"}
    node = "embed"
    for b in range(2):
        mid, hid, out = f"b{b}.attn", f"b{b}.h", f"b{b}"
        edges += [(node, mid), (node, mid), (mid, hid), (mid, out), (hid, out)]
        maps += [
            models.Identity(),
            attention.PreLNAttention(width, 2, causal=True, rngs=rngs),
            attention.PreLNDense(width, 2 * width, rngs=rngs),
            models.Identity(),
            attention.TokenDense(2 * width, width, rngs=rngs),
        ]
        acts |= {mid: "identity", hid: "gelu", out: "identity"}
        node = out
    edges.append((node, "output"))
    maps.append(attention.MeanPoolHead(width, classes, rngs=rngs))
    graph = models.Graph.from_edges(edges, acts)
    return models.Network(maps, "gelu", input_shape=(tokens,), graph=graph)


def _problem(kind: str):
    """``(net, params, x, y)``: the ViT on 8x8 images; the causal language model on 5 token ids
    with next-token labels at every position (B, T); or the causal graph with a mean-pooled
    head and one label per sequence."""
    rngs = nnx.Rngs(0)
    if kind == "vit":
        module = models.vit((8, 8, 1), 3, patch=4, width=8, depth=2, heads=2, rngs=rngs)
        x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
    elif kind == "lm":
        module = models.causal_lm(5, 11, width=8, depth=2, heads=2, mlp_ratio=2, rngs=rngs)
        ids = jax.random.randint(jax.random.key(1), (6, 6), 0, 11)
        return *models.split(module), ids[:, :-1], ids[:, 1:]
    else:
        module = _causal_lm_graph(rngs, tokens=5, width=8, vocab=11, classes=3)
        x = jax.random.randint(jax.random.key(1), (6, 5), 0, 11)  # token ids
    net, params = models.split(module)
    return net, params, x, jnp.arange(6) % 3


@pytest.mark.parametrize("kind", ["vit", "lm"])
def test_transformer_gradient_tends_to_bp_at_the_order_the_math_gives(kind):
    """float64. At α = ½ the error is O(β²): β = 0.1 → 0.01 divides it by ≥ 10 (measured 99
    on the language model) and it is ≤ 1e-4 at β = 0.1 (measured 3.5e-7 on the ViT, 8.7e-5 on
    the language model, whose loss sums 5 positions). At α ∈ {0, 1} it is O(β): β = 1e-4 →
    1e-5 divides it by 10 ± 2, and it is ≤ 0.05 at 1e-5 (DP's first-order constant on the
    language model is about 110: its error is 0.011 at 1e-4 and 0.0011 at 1e-5).
    Checked to fail: the feedback vjp at a wrong state (1.05 s); LayerNorm parameters left
    out of the Hebbian gradient. (A causal mask dropped from the vjp alone passes here, since
    BP differentiates the same map: the causality test below catches it.)
    """
    net, params, x, y = _problem(kind)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        x64 = x.astype(jnp.float64) if kind == "vit" else x  # token ids stay integers
        bp = rules.backprop(dtype="float64").grad(net, p64, (), x64, y)[0]

        def error(variant, alpha, beta):
            r = rules.dual_prop(variant=variant, alpha=alpha, beta=beta, dtype="float64")
            return _relative_errors(r.grad(net, p64, r.init(net, p64), x64, y)[0], bp)

        for variant in ("dp_top", "dp"):
            coarse, fine = error(variant, 0.5, 0.1), error(variant, 0.5, 0.01)
            assert coarse <= 1e-4 and fine <= coarse / 10, (variant, coarse, fine)
            for alpha in (0.0, 1.0):
                coarse, fine = error(variant, alpha, 1e-4), error(variant, alpha, 1e-5)
                assert fine <= 0.05 and 8 <= coarse / fine <= 12, (variant, alpha, coarse, fine)


def test_one_attention_edge_equals_the_dyad_equations():
    """Graph x →(dense)→ h (GELU dyad, tokens × width) →(pre-LN causal attention, then the
    mean-pooled head, as one map)→ output. Written out here with raw jax.vjp: the output nudge
    s±_N = a_N ∓ c± βg, g = softmax(a_N) − onehot(y) per example; fb_h = J(s_h)ᵀ δ_N with
    the vjp at the forward state s_h; s±_h = GELU(a_h + c⁺ fb_h), GELU(a_h − c⁻ fb_h); and
    every parameter's gradient −(1/(βB)) vjp_θ[W_θ(s̄)](δ) of its edge. α = 0.3, β = 0.05:
    no limit is taken, so the match is to float32 rounding (1e-5 relative to each leaf's
    scale)."""

    class AttentionHead(nnx.Module):
        def __init__(self, rngs):
            self.attn = attention.PreLNAttention(6, 2, causal=True, rngs=rngs)
            self.head = attention.MeanPoolHead(6, 3, rngs=rngs)

        def __call__(self, s):
            return self.head(self.attn(s))

    rngs = nnx.Rngs(2)
    graph = models.Graph.from_edges([("input", "h"), ("h", "output")], {"h": "gelu"})
    module = models.Network(
        [attention.TokenDense(4, 6, rngs=rngs), AttentionHead(rngs)], "gelu",
        input_shape=(5, 4), graph=graph,
    )  # fmt: skip
    net, params = models.split(module)
    x = jax.random.normal(jax.random.key(3), (4, 5, 4))
    y = jnp.array([0, 2, 1, 2])
    alpha, beta = 0.3, 0.05
    rule = rules.dual_prop(variant="dp_top", alpha=alpha, beta=beta)
    sp, sm = rule.infer(net, params, rule.init(net, params), x, y)
    grads = rule.grad(net, params, rule.init(net, params), x, y)[0]

    c_plus, c_minus = 1 - alpha, alpha  # DP⊤
    w0 = lambda p, s: net.apply_map(0, p, s)  # noqa: E731
    w1 = lambda p, s: net.apply_map(1, p, s)  # noqa: E731
    p0, p1 = net.layer_params(params, 0), net.layer_params(params, 1)
    a_h = w0(p0, x)
    s_h = jax.nn.gelu(a_h)
    a_n, vjp_s = jax.vjp(lambda s: w1(p1, s), s_h)
    g = jax.nn.softmax(a_n) - jax.nn.one_hot(y, 3)  # ∇ℓ per example (the 1/B is in ∇_θ)
    sp_n, sm_n = a_n - c_plus * beta * g, a_n + c_minus * beta * g
    delta_n = sp_n - sm_n
    (fb_h,) = vjp_s(delta_n)
    sp_h, sm_h = jax.nn.gelu(a_h + c_plus * fb_h), jax.nn.gelu(a_h - c_minus * fb_h)
    bar_h, delta_h = alpha * sp_h + (1 - alpha) * sm_h, sp_h - sm_h
    scale = -1.0 / (beta * len(y))
    want0 = jax.vjp(lambda p: w0(p, x), p0)[1](delta_h)[0]
    want1 = jax.vjp(lambda p: w1(p, bar_h), p1)[1](delta_n)[0]
    for got, want in ((sp[1], sp_h), (sm[1], sm_h), (sp[2], sp_n), (sm[2], sm_n)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in ((grads["layers"][0], want0), (grads["layers"][1], want1)):
        for gl, wl in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            tol = 1e-5 * float(jnp.max(jnp.abs(scale * wl))) + 1e-7
            np.testing.assert_allclose(gl, scale * wl, rtol=0, atol=tol)


@pytest.mark.parametrize("shape, tokens", [((28, 28, 1), 16), ((32, 32, 3), 64)])
def test_vit_of_the_config_cuts_its_inputs_into_patches(shape, tokens):
    """``dualprop train --model vit`` builds models.vit with 7x7 patches of 28x28 images and
    4x4 of 32x32: (H/p)(W/p) tokens, a stream of tokens × 64 and one logit per class."""
    from dualprop_jax.training.config import TrainConfig
    from dualprop_jax.training.steps import build_model

    module = build_model(TrainConfig(model="vit"), shape, 10, nnx.Rngs(0))
    net, params = models.split(module)
    assert module.layers[0].tokens == tokens
    assert net.graph.names[1:3] == ("embed", "b0.attn") and net.graph.activations[3] == "gelu"
    x = jnp.zeros((2, *shape))
    assert net.forward(params, x).shape == (2, 10)
    with pytest.raises(ValueError, match="does not divide"):
        models.vit((30, 30, 1), patch=7, rngs=nnx.Rngs(0))


def test_causal_attention_feedback_reaches_no_later_token():
    """Oracle: causality. The feedback J(s)ᵀ c of a causal attention map with the cotangent c
    on token 0 only is exactly 0 on tokens 1..T-1 (token 0 attends to itself alone), and the
    map's value at token 0 ignores them; the non-causal map's feedback reaches them. A mask
    kept in the value but dropped from the vjp fails the first assertion."""
    s = jax.random.normal(jax.random.key(4), (2, 5, 8))
    c = jnp.zeros((2, 5, 8)).at[:, 0].set(1.0)
    for causal in (True, False):
        layer = attention.PreLNAttention(8, 2, causal=causal, rngs=nnx.Rngs(5))
        out, vjp = jax.vjp(layer, s)
        (fb,) = vjp(c)
        later = float(jnp.max(jnp.abs(fb[:, 1:])))
        if causal:
            assert later == 0.0
            moved = layer(s.at[:, 1:].set(0.0))
            np.testing.assert_array_equal(moved[:, 0], out[:, 0])
        else:
            assert later > 1e-3


def test_a_train_step_takes_token_ids_and_checks_their_labels():
    """A jitted train step on the causal graph reads integer token ids (the label check
    probes the network with ids, not floats), moves the parameters, and refuses a label
    beyond the 3 outputs by name."""
    import optax

    from dualprop_jax.training.steps import TrainState, make_train_step

    net, params, x, y = _problem("causal")
    rule, optimizer = rules.dual_prop(variant="dp_top"), optax.sgd(0.1)
    step = make_train_step(net, rule, optimizer)
    state = TrainState.create(net, params, rule, optimizer)
    new, metrics = step(state, x, np.asarray(y))
    assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), new.params, params))
    assert max(float(m) for m in moved) > 0
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.2"):
        step(new, x, np.where(np.arange(len(y)) == 0, 7, np.asarray(y)))


def test_attention_keeps_float64_and_float32_is_jax_own():
    """Oracle: numpy float64 softmax attention written out, o = softmax(q kᵀ/√d + mask) v per
    head. Float64 inputs match it to 1e-13 (jax.nn.dot_product_attention, nnx's default, is
    off by ~1e-8: its softmax is float32); float32 inputs give exactly that function's output."""
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 3, 4)) for i in range(3))
    mask = jnp.tril(jnp.ones((5, 5), bool))[None, None]
    logits = np.einsum("bqhd,bkhd->bhqk", *(np.asarray(a, np.float64) for a in (q, k))) / 2.0
    logits = np.where(np.asarray(mask), logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("bhqk,bkhd->bqhd", probs / probs.sum(-1, keepdims=True), np.asarray(v))
    with jax.enable_x64(True):
        got = attention.attend(*(a.astype(jnp.float64) for a in (q, k, v)), mask=mask)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(
        attention.attend(q, k, v, mask=mask), jax.nn.dot_product_attention(q, k, v, mask=mask)
    )


def test_dp_top_takes_the_stream_nodes_hebbian_gradient_from_the_forward_pass():
    """Under DP⊤ an identity node's s̄ = α s⁺ + (1-α) s⁻ = a, its forward state, for every α:
    the stream nodes' out-edges then reuse the forward pass's parameter vjp. Oracles, float64:
    s̄ of those nodes equals the forward states (1e-12), and the gradient equals the one that
    evaluates every map again at the computed s̄ (1e-10 relative), at α = 0.3 and ½. DP, damped
    DP⊤ and DP⊤ with extra passes have no such nodes (DP's s̄ = a + (2α-1) fb). The compiled
    DP⊤ step of the CLI's ViT then costs BP's flops within 5% (XLA's cost analysis: measured
    1.019; 1.34 when the maps are evaluated again at s̄)."""
    import optax

    from dualprop_jax import core
    from dualprop_jax.training.steps import TrainState, make_train_step

    net, params, x, y = _problem("lm")
    stream = tuple(j for j, name in enumerate(net.graph.names) if name in ("embed", "b0.attn",
                                                                         "b0", "b1.attn", "b1"))
    plain, damped = core.Parts(), core.Parts(update=core.DampedUpdate({}))
    assert core.mean_is_forward(net, rules.dual_prop(variant="dp_top"), plain) == stream
    assert core.mean_is_forward(net, rules.dual_prop(variant="dp"), plain) == ()
    assert core.mean_is_forward(net, rules.dual_prop(variant="dp_top", passes=1), plain) == ()
    assert core.mean_is_forward(net, rules.dual_prop(variant="dp_top"), damped) == ()
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        forward = core.forward(net, p64, x, jnp.float64).states
        for alpha in (0.3, 0.5):
            rule = rules.dual_prop(variant="dp_top", alpha=alpha, beta=0.01, dtype="float64")
            dyads = rule.infer(net, p64, rule.init(net, p64), x, y)
            bar = core.s_bar(dyads, alpha)
            for j in stream:
                np.testing.assert_allclose(bar[j], forward[j], rtol=0, atol=1e-12)
            got = rule.grad(net, p64, rule.init(net, p64), x, y)[0]
            again = core.hebbian_grad(net, p64, dyads, rule)
            assert _relative_errors(got, again) <= 1e-10
    net, params = models.split(models.vit((28, 28, 1), 10, patch=7, rngs=nnx.Rngs(0)))
    x, y, flops = jnp.zeros((8, 28, 28, 1)), jnp.arange(8), {}
    for name, rule in (("bp", rules.backprop()), ("dp_top", rules.dual_prop(variant="dp_top"))):
        optimizer = optax.sgd(0.1)
        step = make_train_step(net, rule, optimizer)
        state = TrainState.create(net, params, rule, optimizer)
        compiled = step.jitted.lower(rule, state, x, y, None).compile()
        cost = compiled.cost_analysis()
        flops[name] = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert flops["dp_top"] <= 1.05 * flops["bp"], flops
