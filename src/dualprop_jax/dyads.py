"""Dyadic inference and contrastive gradients: the pure core of dual propagation.

Notation (layers k = 0..L, s_0 = x; map k sends layer k to layer k+1):
  a_k      = W_{k-1}(s̄_{k-1})            bottom-up input of layer k
  s_plus   = s⁺_k, s_minus = s⁻_k        the dyad of layer k
  s_bar    = s̄_k = α s⁺_k + (1-α) s⁻_k   mean: the activity carried forward
  delta    = δ_k = s⁺_k - s⁻_k            difference: the error carried backward
  fb_k     = J_kᵀ δ_{k+1}                 feedback into layer k: ``jax.vjp`` of map k at s̄_k
  g        = ∇_ŷ ℓ(ŷ, y)                  output loss gradient at the prediction ŷ = a_L

Closed-form layer updates, with (c⁺, c⁻) = (α, 1-α) for DP and (1-α, α) for DP⊤:
  hidden k < L:  s⁺_k = f(a_k + c⁺ fb_k),   s⁻_k = f(a_k - c⁻ fb_k)
  output k = L:  s⁺_L = a_L - c⁺ β g,       s⁻_L = a_L + c⁻ β g      (so δ_L = -β g)

In extra passes, DP⊤ keeps g at the forward prediction ŷ (its Lagrangian is linearised there;
ALGORITHM.md and the official DP⊤ code), while DP takes g at the current output a_L (the 2023
convention). A hidden layer's feedback vjp is taken at its current mean s̄_k, where the map is
applied (the official code uses s⁺_k, the same for maps that are linear in s_k).

Weight update: with the dyads fixed, the gradient of the local objective
  J(θ) = (1/β) Σ_k ⟨-δ_k, W_{k-1}(s̄_{k-1})⟩ / B
i.e. ∇_{W_{k-1}} J = -(1/β) δ_k s̄_{k-1}ᵀ (a Hebbian outer product), which tends to the BP
gradient of the batch-mean loss as β → 0.

Precision: the layer maps compute in ``config.dtype``; losses, output gradients and the dyad
states s⁺, s⁻ are kept in at least float32 (δ = s⁺ - s⁻ is O(β) and would cancel in bfloat16);
parameters and their gradients keep the parameters' dtype.

Cost: one sweep costs what BP costs. The forward pass keeps each map's vjp, so the sweep reuses
it (no recomputed forward); f is evaluated once on the stacked pair (s⁺, s⁻); the Hebbian
gradient is a vjp whose primal is dead code for XLA. For dense and conv maps the compiled step
has exactly BP's matmuls and convolutions.

``config`` is a :class:`~dualprop_jax.rules.DualProp` rule (``DPConfig`` is its other name), or
a :class:`~dualprop_jax.rules.Backprop` rule where only the loss and dtype matter. Every public
function here is pure and jitted with ``net`` static; the rule is a pytree argument whose α and
β are traced, so calls with other values of α or β reuse the compiled program.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp

from dualprop_jax.losses import loss_gradient, per_example_loss, targets_as_array
from dualprop_jax.models import LayeredNet

if TYPE_CHECKING:
    from dualprop_jax.rules import DualProp as DPConfig

_static = functools.partial(jax.jit, static_argnames=("net",))


class Dyads(NamedTuple):
    """Dyad states of every layer k = 0..L (``s_plus[0] = s_minus[0] = x``)."""

    s_plus: tuple[jax.Array, ...]
    s_minus: tuple[jax.Array, ...]


class Aux(NamedTuple):
    """By-products of a gradient call: the batch-mean loss ℓ and the forward prediction ŷ."""

    loss: jax.Array
    logits: jax.Array


def s_bar(dyads: Dyads, alpha: float) -> tuple[jax.Array, ...]:
    """Activity of every layer: s̄_k = α s⁺_k + (1-α) s⁻_k (s⁺_k itself where s⁺_k is s⁻_k)."""
    return tuple(
        sp if sp is sm else alpha * sp + (1.0 - alpha) * sm for sp, sm in zip(*dyads, strict=True)
    )


def delta(dyads: Dyads) -> tuple[jax.Array, ...]:
    """Error of every layer: δ_k = s⁺_k - s⁻_k (zero at the input)."""
    return tuple(sp - sm for sp, sm in zip(*dyads, strict=True))


def _wide(dtype) -> jnp.dtype:
    """At least float32: the dtype of losses, output gradients and dyad states.

    δ = s⁺ - s⁻ is a difference of two nearby states (their gap is O(β)); in bfloat16 (8-bit
    mantissa) it would cancel to noise at β = 0.01, so dyads are solved in float32 even when
    the layer maps compute in bfloat16.
    """
    return jnp.promote_types(dtype, jnp.float32)


def _check_inputs(x: jax.Array, y: jax.Array) -> None:
    if x.ndim < 2:
        raise ValueError(f"x must be a batch with a leading batch axis, got shape {x.shape}.")
    if y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"targets y of shape {y.shape} do not match the batch of x of shape {x.shape}: "
            "the leading (batch) sizes must be equal."
        )


def _output_nudge(a_L, beta_g, config: DPConfig):
    """s⁺_L = a_L - c⁺ βg,  s⁻_L = a_L + c⁻ βg, in at least float32."""
    c_plus, c_minus = config.nudge_coefficients
    a = a_L.astype(_wide(a_L.dtype))
    return a - c_plus * beta_g, a + c_minus * beta_g


def _beta_g(a_L, t, config: DPConfig):
    """βg with g = ∇ℓ(a_L, t), in at least float32."""
    return config.beta * loss_gradient(config.loss, a_L.astype(_wide(a_L.dtype)), t)


def _hidden_update(net: LayeredNet, a, fb, config: DPConfig):
    """s⁺_k = f(a_k + c⁺ fb_k),  s⁻_k = f(a_k - c⁻ fb_k), in at least float32.

    f is applied once, to the two pre-activations stacked on a new leading axis. (With two
    separate f calls XLA's CPU backend recomputed δ_k in each of its consumers and stored a
    full-size broadcast of α for the max-pool of s̄; stacked, it does neither.)
    """
    c_plus, c_minus = config.nudge_coefficients
    wide = _wide(a.dtype)
    a, fb = a.astype(wide), fb.astype(wide)
    coef = jnp.asarray([c_plus, -c_minus], wide).reshape((2,) + (1,) * a.ndim)
    s_pm = net.f(a[None] + coef * fb[None])
    return s_pm[0], s_pm[1]


def feedback(net: LayeredNet, params, k: int, s_bar_k, delta_next, dtype=None):
    """fb_k = J_kᵀ δ_{k+1}: the vjp of map k (layer k → k+1) at s̄_k, applied to δ_{k+1}."""
    a, vjp = jax.vjp(lambda s: net.apply_map(k, net.layer_params(params, k), s, dtype), s_bar_k)
    return vjp(delta_next.astype(a.dtype))[0]


def _update_layer(
    net: LayeredNet, params, k: int, sp: list, sm: list, t, beta_g_hat, config: DPConfig, dtype
) -> None:
    """Re-solve layer k (1..L) in place from the current dyads of layers k-1 and k+1.

    The output layer's nudge βg is taken at the current a_L for DP (2023) and held at the
    forward prediction, βg(ŷ) = ``beta_g_hat``, for DP⊤ (its Lagrangian is linearised at ŷ).
    """
    alpha, L = config.alpha, net.num_maps
    s_bar_prev = alpha * sp[k - 1] + (1 - alpha) * sm[k - 1]
    a = net.apply_map(k - 1, net.layer_params(params, k - 1), s_bar_prev, dtype)
    if k == L:
        beta_g = _beta_g(a, t, config) if config.variant == "dp" else beta_g_hat
        sp[k], sm[k] = _output_nudge(a, beta_g, config)
    else:
        s_bar_k = alpha * sp[k] + (1 - alpha) * sm[k]
        fb = feedback(net, params, k, s_bar_k, sp[k + 1] - sm[k + 1], dtype)
        sp[k], sm[k] = _hidden_update(net, a, fb, config)


def _infer(net: LayeredNet, params, x, y, config: DPConfig):
    """Dyads of every layer, the forward prediction ŷ and the target array t."""
    _check_inputs(x, y)
    dtype = jnp.dtype(config.dtype)
    L = net.num_maps
    # Forward pass: s⁺ = s⁻ = feedforward activity; keep each map's vjp for the sweep.
    s, a, vjps = [x.astype(dtype)], [None], [None]
    for k in range(L):
        a_next, vjp = jax.vjp(
            lambda s_, k=k: net.apply_map(k, net.layer_params(params, k), s_, dtype), s[k]
        )
        a.append(a_next)
        vjps.append(vjp)
        s.append(a_next if k == L - 1 else net.f(a_next))
    y_hat = a[L]
    t = targets_as_array(y_hat.astype(_wide(dtype)), y)
    beta_g_hat = _beta_g(y_hat, t, config)
    sp, sm = list(s), list(s)
    sp[L], sm[L] = _output_nudge(y_hat, beta_g_hat, config)
    # One top-down sweep, linearised at the forward activities (s̄_k = s_k before layer k moves).
    for k in range(L - 1, 0, -1) if config.sweep else ():
        fb = vjps[k + 1]((sp[k + 1] - sm[k + 1]).astype(a[k + 1].dtype))[0]
        sp[k], sm[k] = _hidden_update(net, a[k], fb, config)

    if config.passes:
        if config.schedule == "alternating":
            order = [*range(1, L + 1), *range(L - 1, 0, -1)]
        else:  # bottom_up
            order = list(range(1, L + 1))

        def one_pass(_, carry):
            sp_, sm_ = list(carry[0]), list(carry[1])
            for k in order:
                _update_layer(net, params, k, sp_, sm_, t, beta_g_hat, config, dtype)
            return tuple(sp_), tuple(sm_)

        sp, sm = jax.lax.fori_loop(
            0, config.passes, one_pass, (tuple(sp), tuple(sm)), unroll=config.unroll_factor
        )
    return Dyads(tuple(sp), tuple(sm)), y_hat, t


@_static
def infer_dyads(net: LayeredNet, params, x: jax.Array, y: jax.Array, config: DPConfig) -> Dyads:
    """Solve the dyads (s⁺_k, s⁻_k), k = 0..L, for a batch: forward pass, output nudge, one
    top-down sweep (unless ``config.sweep`` is False), then ``config.passes`` extra passes of
    ``config.schedule``."""
    return _infer(net, params, x, y, config)[0]


def local_objective(net: LayeredNet, params, dyads: Dyads, config: DPConfig) -> jax.Array:
    """J(θ) = (1/β) Σ_{k=1..L} ⟨-δ_k, W_{k-1}(θ, s̄_{k-1})⟩ / B with the dyads held fixed."""
    dtype = jnp.dtype(config.dtype)
    dyads = jax.lax.stop_gradient(dyads)
    bar, d = s_bar(dyads, config.alpha), delta(dyads)
    batch = d[0].shape[0]
    J = 0.0
    for k in range(1, net.num_maps + 1):
        a_k = net.apply_map(k - 1, net.layer_params(params, k - 1), bar[k - 1], dtype)
        J = J + jnp.vdot(-d[k], a_k).astype(_wide(dtype))
    return J / (config.beta * batch)


def _hebbian_grads(net: LayeredNet, params, dyads: Dyads, config: DPConfig):
    """∇_θ J of :func:`local_objective`: one vjp of all maps at s̄, with cotangents δ_k.

    Equal to ``jax.grad(local_objective)``, with the structure of ``params``; the factor
    -1/(βB) is applied to the (small) parameter gradients rather than to every δ_k, which saves
    a pass over each activation. The primals W_{k-1}(s̄_{k-1}) that the vjp evaluates are
    unused, and jit removes them.
    """
    dtype = jnp.dtype(config.dtype)
    bar, d = jax.lax.stop_gradient((s_bar(dyads, config.alpha), delta(dyads)))
    scale = -1.0 / (config.beta * d[0].shape[0])

    def maps(p):
        return tuple(
            net.apply_map(k - 1, net.layer_params(p, k - 1), bar[k - 1], dtype)
            for k in range(1, net.num_maps + 1)
        )

    a, vjp = jax.vjp(maps, params)
    (grads,) = vjp(tuple(d_k.astype(a_k.dtype) for d_k, a_k in zip(d[1:], a, strict=True)))
    return jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)


def _batch_loss(y_hat, t, config: DPConfig) -> jax.Array:
    return jnp.mean(per_example_loss(config.loss, y_hat.astype(t.dtype), t))


def _contrastive_grad(net: LayeredNet, params, x, y, config: DPConfig) -> tuple[object, Aux]:
    dyads, y_hat, t = _infer(net, params, x, y, config)
    grads = _hebbian_grads(net, params, dyads, config)
    return grads, Aux(_batch_loss(y_hat, t, config), y_hat)


@_static
def contrastive_grad(
    net: LayeredNet, params, x: jax.Array, y: jax.Array, config: DPConfig
) -> tuple[object, Aux]:
    """The DP / DP⊤ weight gradient ∇_θ J (same tree as ``params``) and :class:`Aux`.

    ∇_{W_{k-1}} J = -(1/β) δ_k s̄_{k-1}ᵀ / B,  ∇_{b_{k-1}} J = -(1/β) Σ_batch δ_k / B.
    With ``config.fast`` it is the fast path (:func:`fast_grad`) instead.
    """
    if config.fast:
        return _fast_grad(net, params, x, y, config)
    return _contrastive_grad(net, params, x, y, config)


@_static
def bp_grad(net: LayeredNet, params, x: jax.Array, y: jax.Array, config) -> tuple[object, Aux]:
    """The back-propagation gradient ∇_θ mean_batch ℓ(ŷ(θ, x), y) of the same loss, and Aux.

    ``config`` is any rule with ``loss`` and ``dtype`` (a ``DualProp`` or ``Backprop`` rule).
    """
    return _bp_grad(net, params, x, y, config)


def _bp_grad(net: LayeredNet, params, x, y, config) -> tuple[object, Aux]:
    _check_inputs(x, y)
    dtype = jnp.dtype(config.dtype)

    def loss_fn(p):
        y_hat = net.forward(p, x, dtype)
        t = targets_as_array(y_hat.astype(_wide(dtype)), y)
        return _batch_loss(y_hat, t, config), y_hat

    (loss, y_hat), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, Aux(loss, y_hat)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def dual_activation(f, beta, a: jax.Array) -> jax.Array:
    """f(a) forward; backward rule c ↦ (f(a + β c/2) - f(a - β c/2)) / β (the DP fast path).

    β may be traced (no cotangent flows to it).
    """
    return f(a)


def _dual_fwd(f, beta, a):
    return f(a), (beta, a)


def _dual_bwd(f, res, c):
    beta, a = res
    # the finite difference cancels to noise in bfloat16: take it in at least float32
    wide = _wide(a.dtype)
    half = (0.5 * beta) * c.astype(wide)
    a_w = a.astype(wide)
    return jnp.zeros_like(beta), ((f(a_w + half) - f(a_w - half)) / beta).astype(a.dtype)


dual_activation.defvjp(_dual_fwd, _dual_bwd)


def _fast_grad(net: LayeredNet, params, x, y, config: DPConfig):
    _check_inputs(x, y)
    dtype = jnp.dtype(config.dtype)
    L, beta = net.num_maps, config.beta

    def summed_loss(p):
        s = x
        for k in range(L):
            a = net.apply_map(k, net.layer_params(p, k), s, dtype)
            s = a if k == L - 1 else dual_activation(net.f, beta, a)
        t = targets_as_array(s.astype(_wide(dtype)), y)
        # Sum, not mean: the dual activation's step must see per-example cotangents g.
        return jnp.sum(per_example_loss(config.loss, s.astype(t.dtype), t)), s

    (total, y_hat), grads = jax.value_and_grad(summed_loss, has_aux=True)(params)
    batch = x.shape[0]
    grads = jax.tree.map(lambda g: g / batch, grads)
    return grads, Aux(total / batch, y_hat)


@_static
def fast_grad(
    net: LayeredNet, params, x: jax.Array, y: jax.Array, config: DPConfig
) -> tuple[object, Aux]:
    """Fast path (2023): autodiff of the summed loss where each hidden f has the dual backward
    rule of :func:`dual_activation`; the presynaptic factor is the forward activity. Equals DP at
    α = ½ with one sweep up to O(β²). Gradients are divided by the batch size B."""
    return _fast_grad(net, params, x, y, config)


def _leaf_name(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def alignment(grads, reference) -> dict[str, dict[str, jax.Array]]:
    """Per-leaf cosine similarity and norm ratio ‖g‖/‖g_ref‖ between two gradient trees.

    Returns ``{"cosine": {name: c}, "norm_ratio": {name: r}}`` with names like
    ``"layers/0/kernel"``. Jittable.
    """
    flat_g = jax.tree_util.tree_flatten_with_path(grads)[0]
    flat_r = jax.tree_util.tree_flatten_with_path(reference)[0]
    if [p for p, _ in flat_g] != [p for p, _ in flat_r]:
        raise ValueError("alignment needs two gradient trees of the same structure.")
    cos, ratio = {}, {}
    for (path, g), (_, r) in zip(flat_g, flat_r, strict=True):
        g, r = g.ravel(), r.ravel()
        ng, nr = jnp.linalg.norm(g), jnp.linalg.norm(r)
        name = _leaf_name(path)
        cos[name] = jnp.vdot(g, r) / jnp.maximum(ng * nr, jnp.finfo(g.dtype).tiny)
        ratio[name] = ng / jnp.maximum(nr, jnp.finfo(g.dtype).tiny)
    return {"cosine": cos, "norm_ratio": ratio}
