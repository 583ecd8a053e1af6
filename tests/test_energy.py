"""Oracles for equilibrium propagation (EP) and contrastive Hebbian learning (CHL).

Every expectation is computed here, independently of :mod:`dualprop_jax.energy`: the gradient
of the loss at the free fixed point by autodiff through a relaxation written in this file
(explicit dense formulas for MLPs, ``jax.grad`` of a test-side Φ for conv nets), the bias orders
of one-sided and symmetric nudging, and the fixed points of a linear Hopfield net solved in
numpy. All in float64, on nets whose weights are scaled down so that the relaxation is a
contraction and every phase converges to rounding level.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules
from dualprop_jax.core import energy

T = 80
"""Steps of every phase in the converged-phase tests: the nets below contract by ≲ 0.5 a step
(checked: residual ≤ 1e-12 at T), so the phases sit at their fixed points to rounding."""


def _clip(a):
    return jnp.clip(a, 0.0, 1.0)


def _shrunk(params, scale: float, bias: float, num_maps: int):
    """Kernels times ``scale`` (a contractive relaxation); hidden biases set to ``bias`` so that
    hidden pre-activations sit mostly inside (0, 1), away from the clip's kinks."""
    return {
        "layers": {
            k: {
                "kernel": scale * p["kernel"],
                "bias": p["bias"] if k == num_maps - 1 else jnp.full_like(p["bias"], bias),
            }
            for k, p in params["layers"].items()
        }
    }


def _mlp_problem(widths=(6, 5, 4, 3), scale=0.5, bias=0.5, batch=5, seed=0):
    """A float64 MLP with shrunk weights, a batch of normal inputs and integer labels."""
    net, params = dp.split(dp.mlp(widths, rngs=nnx.Rngs(seed), param_dtype=jnp.float64))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, widths[0])))
    y = jnp.asarray(rng.integers(0, widths[-1], size=batch))
    return net, _shrunk(params, scale, bias, net.num_maps), x, y


def _cnn_problem(layout: str, scale=0.3, bias=0.3, batch=4, seed=0):
    """conv 1→2 (6x6) → 2x2 max-pool → dense 18→4 → dense 4→3, float64, shrunk weights.

    The dense map after the pool gets positive weights 0.1 |K_1|, so the feedback J_1ᵀ s_2 into
    the pooled layer is positive (s_2 ≥ 0 under the clip). With negative feedback through an
    unpooled max-pool, Φ pushes each window's maximum down until it ties with the runner-up:
    the relaxation then cycles between routings and no smooth fixed point exists (seen here
    with the He-initialised K_1: residual 0.1–0.3 after 240 steps at any weight scale).
    """
    model = dp.cnn(
        input_shape=(6, 6, 1),
        channels=(2,),
        pool=True,
        dense=(4,),
        num_classes=3,
        layout=layout,
        rngs=nnx.Rngs(seed),
        param_dtype=jnp.float64,
    )
    net, params = dp.split(model)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, 6, 6, 1)))
    y = jnp.asarray(rng.integers(0, 3, size=batch))
    k_1 = params["layers"][1]["kernel"]
    params = _shrunk(params, scale, bias, net.num_maps)
    params["layers"][1] = {"kernel": 0.1 * jnp.abs(k_1), "bias": jnp.zeros(k_1.shape[1])}
    return net, params, x, y


# --------------------------------------------------------------- the test-side relaxation


def _dense_drive(params, x, s):
    """∂Φ/∂s_k of an MLP written out: s_{k-1} K_{k-1} + b_{k-1} + s_{k+1} K_kᵀ (row vectors,
    flax's (in, out) kernels), without the second term at the output k = L."""
    full, L, out = (x, *s), len(s), []
    for k in range(1, L + 1):
        p = params["layers"][k - 1]
        a = full[k - 1] @ p["kernel"] + p["bias"]
        if k < L:
            a = a + full[k + 1] @ params["layers"][k]["kernel"].T
        out.append(a)
    return out


def _autodiff_drive(net):
    """∂Φ/∂s_k by ``jax.grad`` of a test-side Φ = Σ_k Σ ⟨s_{k+1}, W_k(s_k)⟩ (for conv nets)."""

    def drive(params, x, s):
        def phi(s):
            full = (x, *s)
            return sum(
                jnp.sum(full[k + 1] * net.apply_map(k, params["layers"][k], full[k]))
                for k in range(net.num_maps)
            )

        return list(jax.grad(phi)(tuple(s)))

    return drive


def _zeros(net, params, x):
    shapes, s = [], x
    for k in range(net.num_maps):
        s = net.apply_map(k, params["layers"][k], s)
        shapes.append(s.shape)
    return tuple(jnp.zeros(shape, x.dtype) for shape in shapes)


def _feedforward(params, x, sigma):
    """The MLP's feedforward pass with σ on the hidden layers: the "forward" start."""
    s, out = x, []
    for k, p in params["layers"].items():
        a = s @ p["kernel"] + p["bias"]
        s = a if k == len(params["layers"]) - 1 else sigma(a)
        out.append(s)
    return tuple(out)


def _relaxed(drive, params, x, s, steps, sigma=_clip, output=lambda a, s_L: a):
    """``steps`` simultaneous updates s_k ← σ(∂Φ/∂s_k) (k < L), s_L ← output(∂Φ/∂s_L, s_L), in
    a ``lax.scan`` so that ``jax.grad`` can differentiate through it."""

    def step(s, _):
        d = drive(params, x, s)
        return (*(sigma(d_k) for d_k in d[:-1]), output(d[-1], s[-1])), None

    return jax.lax.scan(step, tuple(s), None, length=steps)[0]


def _residual(drive, params, x, s, sigma=_clip) -> float:
    """max |s - (one more step)|: how far ``s`` is from the free fixed point."""
    nxt = _relaxed(drive, params, x, s, 1, sigma)
    return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(nxt, s, strict=True))


def _loss(loss, s_L, t):
    if loss == "squared_error":
        return 0.5 * jnp.sum((s_L - t) ** 2, axis=-1)
    return jax.nn.logsumexp(s_L, axis=-1) - jnp.sum(t * s_L, axis=-1)


def _true_grad(drive, net, params, x, y, loss, steps=2 * T):
    """∇θ of the batch-mean loss at the free fixed point: autodiff through ``steps`` steps of the
    test-side relaxation from zero (the unrolled derivative converges with the states)."""
    t = jax.nn.one_hot(y, 3, dtype=x.dtype)
    zeros = _zeros(net, params, x)

    def mean_loss(p):
        s = _relaxed(drive, p, x, zeros, steps)
        return jnp.mean(_loss(loss, s[-1], t)), s

    grads, s = jax.jit(jax.grad(mean_loss, has_aux=True))(params)
    assert _residual(drive, params, x, s) < 1e-12  # the free phase has converged
    return grads, s


def _grad_fn(net):
    return jax.jit(lambda rule, p, x, y: rule.grad(net, p, (), x, y)[:2])


def _flat(tree):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def _cosines(g, ref):
    return [
        float(np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref), strict=True)
    ]


def _rel_err(g, ref) -> float:
    return float(np.linalg.norm(_flat(g) - _flat(ref)) / np.linalg.norm(_flat(ref)))


def _interior(s) -> float:
    """The fraction of hidden units strictly inside (0, 1) (not at the clip's kinks)."""
    hidden = np.concatenate([np.ravel(h) for h in s[:-1]])
    return float(np.mean((hidden > 1e-9) & (hidden < 1 - 1e-9)))


# ------------------------------------------------------------------------ the oracle tests


@pytest.mark.parametrize("loss", ["squared_error", "softmax_ce"])
def test_one_sided_ep_tends_to_the_gradient_at_the_free_fixed_point(loss):
    """Scellier & Bengio 2017: as β → 0 with converged phases, the one-sided EP estimate equals
    ∇θ ℓ(s*_L(θ)), the gradient of the loss at the free fixed point.

    Oracle: autodiff through a long relaxation written here with explicit dense formulas. At
    β = 1e-4 the estimate's bias is O(β) ≈ 1e-4 relative (measured: 1 - cosine ≤ 2e-10 per
    leaf, relative error 1.0e-4 for squared error and 4.5e-5 for softmax CE). Catches: a
    flipped nudge sign or gradient sign (cosine -1), a missing 1/B (norm off), σ dropped from a
    hidden layer, the feedback term J_kᵀ s_{k+1} missing from the relaxation.
    """
    with jax.enable_x64(True):
        net, params, x, y = _mlp_problem()
        g_true, s_star = _true_grad(_dense_drive, net, params, x, y, loss)
        assert _interior(s_star) > 0.4  # the clip is not saturated everywhere
        rule = rules.equilibrium_prop(
            beta=1e-4, free_steps=T, nudged_steps=T, nudging="one_sided", loss=loss,
            dtype="float64",
        )  # fmt: skip
        g, aux = _grad_fn(net)(rule, params, x, y)
        t = jax.nn.one_hot(y, 3, dtype=x.dtype)
        want_loss = jnp.mean(_loss(loss, s_star[-1], t))
    assert jax.tree.structure(g) == jax.tree.structure(params)
    assert min(_cosines(g, g_true)) > 0.9999
    assert _rel_err(g, g_true) < 3e-4
    # Aux: the batch-mean loss of the free output s*_L, and s*_L itself
    np.testing.assert_allclose(aux.logits, s_star[-1], atol=1e-12)
    np.testing.assert_allclose(aux.loss, want_loss, rtol=1e-12)


@pytest.mark.parametrize("layout", ["unpooled", "pooled"])
def test_ep_on_a_conv_pool_net_tends_to_the_gradient_at_the_free_fixed_point(layout):
    """The same limit through conv, 2x2 max-pool and flatten (both pool layouts), with the
    symmetric nudging of Laborieux et al. 2021 at β = 1e-3.

    Oracle: autodiff through a relaxation driven by ``jax.grad`` of a Φ written here over the
    model's maps. Hidden biases 0.3 keep most hidden states inside (0, 1) (no kinks, no
    max-pool ties at a clipped value; measured 1 - cosine ≤ 1e-12, relative error 1.3e-6).
    Catches: the feedback's max-pool routing taken at a wrong state (e.g. the maps linearised
    at s = 0: only the unpooled layout, whose relaxing conv layer feeds a pool, sees it), the
    one-sided formula or 1/β instead of 1/(2β) for symmetric nudging, and the MLP test's bugs
    in conv form.
    """
    with jax.enable_x64(True):
        net, params, x, y = _cnn_problem(layout)
        drive = _autodiff_drive(net)
        g_true, s_star = _true_grad(drive, net, params, x, y, "squared_error")
        assert _interior(s_star) > 0.6
        rule = rules.equilibrium_prop(beta=1e-3, free_steps=T, nudged_steps=T, dtype="float64")
        g, _ = _grad_fn(net)(rule, params, x, y)
    assert min(_cosines(g, g_true)) > 0.9999
    assert _rel_err(g, g_true) < 1e-5  # symmetric: O(β²) = 1e-6 relative bias


def test_symmetric_nudging_has_second_order_bias():
    """Laborieux et al. 2021: the one-sided estimate's error is O(β), the symmetric one's O(β²).

    Oracle: the gradient at the free fixed point (autodiff, as above); halving β from 0.1 to
    0.05 must halve the one-sided error and quarter the symmetric one. The error is
    c₁β + c₂β² + … (one-sided) or c₂β² + c₄β⁴ + … (symmetric), so the ratios are 2(1 + O(β)) and
    4(1 + O(β²)): ±10% and ±5% leave room for the next order (measured: 1.91 from errors
    0.093 and 0.049, and 4.03 from 0.011 and 0.0026). Catches: the one-sided formula used for
    symmetric nudging (ratio 2, not 4); 1/β instead of 1/(2β) (error → 1).
    """
    with jax.enable_x64(True):
        net, params, x, y = _mlp_problem()
        g_true, _ = _true_grad(_dense_drive, net, params, x, y, "squared_error")
        grad_fn = _grad_fn(net)
        err = {}
        for nudging in ("one_sided", "symmetric"):
            rule = rules.equilibrium_prop(
                free_steps=T, nudged_steps=T, nudging=nudging, dtype="float64"
            )
            for beta in (0.1, 0.05):
                err[nudging, beta] = _rel_err(
                    grad_fn(rule.replace(beta=beta), params, x, y)[0], g_true
                )
    one_sided = err["one_sided", 0.1] / err["one_sided", 0.05]
    symmetric = err["symmetric", 0.1] / err["symmetric", 0.05]
    assert 1.8 < one_sided < 2.2, err
    assert 3.8 < symmetric < 4.2, err
    assert err["symmetric", 0.1] < 0.2 * err["one_sided", 0.1], err


def _linear_hopfield_fixed_points(params, x, t):
    """Free and clamped fixed points of the linear net (σ = identity), solved in numpy.

    Stationarity (column vectors, W_k = K_kᵀ for flax's (in, out) kernel K_k):
      s_k = K_{k-1}ᵀ s_{k-1} + b_{k-1} + K_k s_{k+1}   (k < L),   s_L = K_{L-1}ᵀ s_{L-1} + b_{L-1}
    i.e. (I - M) z = c for z = (s_1, ..., s_L); clamped, s_L = t moves into c. M is also the
    Jacobi iteration matrix, so the relaxation converges iff its spectral radius is < 1.
    """
    K = [np.asarray(p["kernel"]) for p in params["layers"].values()]
    b = [np.asarray(p["bias"]) for p in params["layers"].values()]
    L, x, t = len(K), np.asarray(x), np.asarray(t)
    sizes = [k.shape[1] for k in K]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    n = offs[-1]
    M = np.zeros((n, n))
    c = np.zeros((n, x.shape[0]))
    for k in range(1, L + 1):  # rows of layer k
        rows = slice(offs[k - 1], offs[k])
        c[rows] = b[k - 1][:, None]
        if k == 1:
            c[rows] += K[0].T @ x.T
        else:
            M[rows, offs[k - 2] : offs[k - 1]] = K[k - 1].T
        if k < L:
            M[rows, offs[k] : offs[k + 1]] = K[k]
    rho = max(abs(np.linalg.eigvals(M)))
    z = np.linalg.solve(np.eye(n) - M, c)
    free = [z[offs[k] : offs[k + 1]].T for k in range(L)]
    m = offs[L - 1]  # clamped: unknowns s_1..s_{L-1}
    c_cl = c[:m].copy()
    c_cl[offs[L - 2] : m] += K[L - 1] @ t.T
    z_cl = np.linalg.solve(np.eye(m) - M[:m, :m], c_cl)
    clamped = [*(z_cl[offs[k] : offs[k + 1]].T for k in range(L - 1)), t]
    return free, clamped, rho


def test_chl_of_a_linear_net_is_the_closed_form_hebbian_difference():
    """Movellan 1991 on a linear Hopfield net: CHL's gradient is
      ∇K_k = -(s^c_kᵀ s^c_{k+1} - s^0_kᵀ s^0_{k+1}) / B,
      ∇b_k = -Σ_batch (s^c_{k+1} - s^0_{k+1}) / B
    at the free and clamped fixed points, which numpy solves as linear systems.

    Oracle: ``np.linalg.solve`` of the stationarity equations (no iteration; measured max
    error 1e-16 on entries ≈ 0.1). Catches: a wrong sign or a missing 1/B, a clamped phase that
    lets s_L move, σ = clip applied although ``activation="identity"``, and a missing feedback
    term J_kᵀ s_{k+1} (another fixed point).
    """
    with jax.enable_x64(True):
        net, params, x, y = _mlp_problem(scale=0.25, bias=0.1, batch=4)
        t = jax.nn.one_hot(y, 3, dtype=jnp.float64)
        free, clamped, rho = _linear_hopfield_fixed_points(params, x, t)
        assert rho < 0.6  # converges by 1e-12 well within T steps
        rule = rules.chl(free_steps=T, clamped_steps=T, activation="identity", dtype="float64")
        g, aux = _grad_fn(net)(rule, params, x, y)
    B = x.shape[0]
    s_c, s_0 = [np.asarray(x), *clamped], [np.asarray(x), *free]
    for k in range(net.num_maps):
        want_K = -(s_c[k].T @ s_c[k + 1] - s_0[k].T @ s_0[k + 1]) / B
        want_b = -(s_c[k + 1] - s_0[k + 1]).sum(0) / B
        np.testing.assert_allclose(g["layers"][k]["kernel"], want_K, atol=1e-10, rtol=1e-8)
        np.testing.assert_allclose(g["layers"][k]["bias"], want_b, atol=1e-10, rtol=1e-8)
    np.testing.assert_allclose(aux.logits, free[-1], atol=1e-10)
    np.testing.assert_allclose(aux.loss, 0.5 * np.mean(np.sum((free[-1] - t) ** 2, -1)))


def test_predict_is_the_free_phase_output_and_both_starts_reach_the_same_fixed_point():
    """predict = s_L after T simultaneous (Jacobi) steps from the start; the two starts agree
    once converged.

    Oracle: the explicit dense relaxation of this file, after only 3 steps (not converged, so
    the step itself is compared: a Gauss–Seidel sweep, σ dropped from a layer or put on the
    output, a forward start without σ, or an off-by-one step count each change s_L), then at T
    steps from zero and from the feedforward pass with σ, which reach the same fixed point of a
    contractive net.
    """
    with jax.enable_x64(True):
        net, params, x, _ = _mlp_problem()
        zeros = _zeros(net, params, x)
        forward = _feedforward(params, x, _clip)
        for start, s in (("zero", zeros), ("forward", forward)):
            rule = rules.equilibrium_prop(free_steps=3, start=start, dtype="float64")
            want = _relaxed(_dense_drive, params, x, s, 3)
            np.testing.assert_allclose(energy.predict(net, params, x, rule), want[-1], atol=1e-13)
            got = energy.free_phase(net, params, x, rule)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-13)
        star = _relaxed(_dense_drive, params, x, zeros, T)
        assert _residual(_dense_drive, params, x, star) < 1e-12
        for start in ("zero", "forward"):
            rule = rules.chl(free_steps=T, start=start, dtype="float64")
            np.testing.assert_allclose(rule.predict(net, params, x), star[-1], atol=1e-12)


def test_relax_runs_the_nudged_and_clamped_phases_written_out():
    """``energy.relax``: nudged, s_L ← W_{L-1}(s_{L-1}) - β (s_L - t); clamped, s_L = t; hidden
    layers as in the free phase. ``energy.start_states`` is the feedforward pass with σ.

    Oracle: the explicit dense relaxation of this file, 3 steps from the feedforward start.
    Catches: a nudge with the wrong sign, a clamped output that enters the first step
    unclamped, a start without σ.
    """
    with jax.enable_x64(True):
        net, params, x, y = _mlp_problem()
        t = jax.nn.one_hot(y, 3, dtype=x.dtype)
        rule = rules.equilibrium_prop(start="forward", dtype="float64")
        s = energy.start_states(net, params, x, rule)
        for a, b in zip(s, _feedforward(params, x, _clip), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-14)
        nudged = energy.relax(net, params, x, s, rule, 3, y=y, beta=0.3)
        want = _relaxed(_dense_drive, params, x, s, 3, output=lambda a, s_L: a - 0.3 * (s_L - t))
        clamped = energy.relax(net, params, x, s, rule, 3, y=y)
        want_c = _relaxed(_dense_drive, params, x, (*s[:-1], t), 3, output=lambda a, s_L: t)
    for a, b in zip((*nudged, *clamped), (*want, *want_c), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-13)


def test_energy_rules_validate_their_settings():
    """β must be a finite number > 0 and nudging one of the two forms; errors name the field."""
    with pytest.raises(ValueError, match=r"equilibrium_prop\.beta=0"):
        rules.equilibrium_prop(beta=0)
    with pytest.raises(ValueError, match=r"equilibrium_prop\.nudging='both'.*one_sided"):
        rules.equilibrium_prop(nudging="both")
    with pytest.raises(ValueError, match=r"chl\.clamped_steps=0"):
        rules.chl(clamped_steps=0)


def test_beta_is_traced_one_compilation_serves_every_beta():
    """A β sweep through one jitted function traces once and matches eager calls.

    Oracle for the values: the same rule run eagerly (no outer jit), and the public jitted
    ``energy.ep_grad``. A β made static retraces (count 2); a β baked into the compiled
    program without a retrace would return the first β's gradient for the second.
    """
    with jax.enable_x64(True):
        net, params, x, y = _mlp_problem()
        traces = collections.Counter()

        @jax.jit
        def grad_fn(rule, p, x, y):
            traces["ep"] += 1
            return rule.grad(net, p, (), x, y)[:2]

        rule = rules.equilibrium_prop(free_steps=20, nudged_steps=5, dtype="float64")
        for beta in (0.5, 0.1):
            g, aux = grad_fn(rule.replace(beta=beta), params, x, y)
            g_public, aux_public = energy.ep_grad(net, params, x, y, rule.replace(beta=beta))
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_public), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(aux.loss, aux_public.loss, rtol=1e-12)
        # eagerly (no outer jit), at the second β: the one a stale compiled β would get wrong
        g_eager, _, _ = rule.replace(beta=0.1).grad(net, params, (), x, y)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_eager), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert traces == {"ep": 1}


# ------------------------------------------------------------ the odd-even relaxation order


def _odd_even_relaxed(params, x, s, steps, output=lambda a, s_L: a):
    """``steps`` odd-even steps written out: layers 1, 3, ... from the current states, then
    layers 2, 4, ... from the updated ones (states[i] is layer i + 1)."""
    s = list(s)
    for _ in range(steps):
        for parity in (0, 1):
            d = _dense_drive(params, x, s)
            for i in range(parity, len(s), 2):
                s[i] = output(d[i], s[i]) if i == len(s) - 1 else _clip(d[i])
    return tuple(s)


def test_odd_even_steps_are_the_written_out_red_black_updates():
    """``order="odd_even"``: three steps from zero, free and nudged, against the updates written
    out here (not converged, so the order shows). Catches: a Jacobi step in its place (layer 2
    would see layer 1's old state), the parities swapped, the output updated in the wrong
    half-step, the nudge dropped from the odd-even phase."""
    with jax.enable_x64(True):
        net, params, x, y = _mlp_problem(widths=(6, 5, 4, 4, 3))
        rule = rules.equilibrium_prop(beta=0.3, dtype="float64", order="odd_even")
        zeros = _zeros(net, params, x)
        got = energy.relax(net, params, x, zeros, rule, 3)
        want = _odd_even_relaxed(params, x, zeros, 3)
        jacobi = _relaxed(_dense_drive, params, x, zeros, 3)
        t = jax.nn.one_hot(y, 3, dtype=x.dtype)
        nudged = energy.relax(net, params, x, zeros, rule, 3, y=y, beta=0.3)
        want_nudged = _odd_even_relaxed(params, x, zeros, 3, lambda a, s_L: a - 0.3 * (s_L - t))
    for g, w in zip(got + nudged, want + want_nudged, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-13)
    pairs = zip(got, jacobi, strict=True)
    gap = max(float(np.max(np.abs(np.asarray(g) - np.asarray(j)))) for g, j in pairs)
    assert gap > 1e-3  # the order shows after three steps


def test_odd_even_ep_has_the_same_limit_as_synchronous_ep():
    """The two orders share their fixed points (s_k = σ(∂Φ/∂s_k) for every k), so odd-even EP
    tends to the same gradient at the free fixed point as β → 0. Oracle: autodiff through the
    test-side (synchronous) relaxation of a contractive net, as in the first test."""
    with jax.enable_x64(True):
        net, params, x, y = _mlp_problem()
        g_true, _ = _true_grad(_dense_drive, net, params, x, y, "squared_error")
        rule = rules.equilibrium_prop(
            beta=1e-4, free_steps=T, nudged_steps=T, nudging="one_sided", dtype="float64",
            order="odd_even",
        )  # fmt: skip
        g, _ = _grad_fn(net)(rule, params, x, y)
    assert min(_cosines(g, g_true)) > 0.9999
    assert _rel_err(g, g_true) < 3e-4


def test_odd_even_settles_where_synchronous_updates_cycle():
    """Strongly coupled layers (kernels at 0.8x He, hidden biases ½): synchronous updates cycle
    with period 2 (classic for synchronous Hopfield dynamics; measured: states flip between 0
    and 1, residual 1.0 after 300 steps), while odd-even updates, exact block ascent steps of
    the energy Φ - ½‖s‖² over the clip's box, settle at a fixed point (residual 0). The
    residual is the test-side one: how far one more written-out step moves the states. Catches
    an odd-even order that silently falls back to Jacobi steps."""
    with jax.enable_x64(True):
        net, params, x, _ = _mlp_problem(widths=(6, 16, 16, 3), scale=0.8, batch=8)
        residual = {}
        for order in ("synchronous", "odd_even"):
            rule = rules.equilibrium_prop(free_steps=300, dtype="float64", order=order)
            residual[order] = _residual(
                _dense_drive, params, x, energy.free_phase(net, params, x, rule)
            )
    assert residual["synchronous"] > 0.5, residual
    assert residual["odd_even"] < 1e-12, residual
