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

Variants (fields of the rule):
  damped (Høier & Zach 2024): hidden updates s⁺_k = f((a_k + c⁺ fb_k + L_k s⁺_k)/(1 + L_k)),
    s⁻_k = f((a_k - c⁻ fb_k + L_k s⁻_k)/(1 + L_k)), with s±_k on the right the current state
    (the forward activity in the sweep) and L_k = max(0, (γ_k² - 1)/2), γ_k the spectral norm
    of map k (layer k → k+1: the map the state s_k feeds, as in the official 2024 code),
    estimated by power iteration on the linear part of the map's pool-free core. L_k = 0
    gives the plain update bit for bit; for ReLU the fixed points are the same for every L_k.
  Kolen–Pollack (Høier et al. 2023): fb_k is the vjp of map k with its kernel W_k replaced by
    separate weights B_k (``params["feedback"][k]["kernel"]``), at the same point s̄_k; B_k's
    gradient is W_k's kernel gradient, so an optimizer with weight decay drives B_k → W_k.
  exact output (squared error, 2023 MLP code): s⁺_L = (a_L + c⁺β t)/(1 + c⁺β),
    s⁻_L = (a_L - c⁻β t)/(1 - c⁻β), the minimiser of ½‖s - a_L‖² + c⁺β ½‖s - t‖² and the
    stationary point of ½‖s - a_L‖² - c⁻β ½‖s - t‖² (t the target), at the current a_L.

Graphs (residual/DAG networks, :class:`~dualprop_jax.models.Graph`): node j's bottom-up input
is a sum over its in-edges, a_j = Σ_{k=(i,j)} W_k(s̄_i), its feedback a sum over its out-edges,
fb_j = Σ_{k=(j,c)} J_kᵀ δ_c (each term the vjp of edge k's map), and f_j is the node's own
activation (identity for a sum node). The sweep visits the hidden nodes in reverse topological
order and each pass in topological order; the weight update of edge k = (i, j) is
-(1/β) δ_j ⊗ s̄_i. A chain is the graph with edges (k, k+1), and computes exactly what it did
before graphs existed (every sum has one term). Damped and Kolen–Pollack DP are for chains.

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
from dualprop_jax.models import LayeredNet, edge_sum, kernel_initializer

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


def _output_dyad(a_L, t, beta_g, config: DPConfig):
    """The output dyad: the linearised nudge (:func:`_output_nudge`), or with
    ``config.output == "exact"`` the squared-error closed form at the current a_L,
    s⁺_L = (a_L + c⁺β t)/(1 + c⁺β),  s⁻_L = (a_L - c⁻β t)/(1 - c⁻β) (``beta_g`` unused)."""
    if config.output != "exact":
        return _output_nudge(a_L, beta_g, config)
    c_plus, c_minus = config.nudge_coefficients
    a = a_L.astype(_wide(a_L.dtype))
    t = t.astype(a.dtype)
    b_plus, b_minus = c_plus * config.beta, c_minus * config.beta
    return (a + b_plus * t) / (1.0 + b_plus), (a - b_minus * t) / (1.0 - b_minus)


def _beta_g(a_L, t, config: DPConfig):
    """βg with g = ∇ℓ(a_L, t), in at least float32."""
    return config.beta * loss_gradient(config.loss, a_L.astype(_wide(a_L.dtype)), t)


def _hidden_update(net: LayeredNet, j: int, a, fb, config: DPConfig, damping=None, s_now=None):
    """s⁺_j = f_j(a_j + c⁺ fb_j),  s⁻_j = f_j(a_j - c⁻ fb_j) for hidden node j, in at least
    float32.

    f is applied once, to the two pre-activations stacked on a new leading axis. (With two
    separate f calls XLA's CPU backend recomputed δ_k in each of its consumers and stored a
    full-size broadcast of α for the max-pool of s̄; stacked, it does neither.)

    Damped (``damping`` = L_k, a scalar): each pre-activation p± = a_k ± c± fb_k becomes
    (p± + L_k s±_now)/(1 + L_k), with ``s_now`` the current states stacked as (s⁺, s⁻) on a
    leading axis, or one state shared by both. Where L_k = 0 the plain p± is selected, so the
    result is bit-identical to the undamped update.
    """
    c_plus, c_minus = config.nudge_coefficients
    wide = _wide(a.dtype)
    a, fb = a.astype(wide), fb.astype(wide)
    coef = jnp.asarray([c_plus, -c_minus], wide).reshape((2,) + (1,) * a.ndim)
    p = a[None] + coef * fb[None]
    if damping is not None:
        s_now = s_now.astype(wide)
        if s_now.ndim == a.ndim:
            s_now = s_now[None]
        L_k = jnp.asarray(damping, wide)
        p = jnp.where(L_k > 0, (p + L_k * s_now) / (1.0 + L_k), p)
    s_pm = net.node_f(j)(p)
    return s_pm[0], s_pm[1]


def _map_vjp(net: LayeredNet, k: int, params_k, s_k, cotangent, dtype=None):
    """J_kᵀ c: the vjp of map k with parameters ``params_k`` at s_k, applied to c."""
    a, vjp = jax.vjp(lambda s: net.apply_map(k, params_k, s, dtype), s_k)
    return vjp(cotangent.astype(a.dtype))[0]


def feedback(net: LayeredNet, params, k: int, s_bar_k, delta_next, dtype=None):
    """fb_k = J_kᵀ δ_{k+1}: the vjp of map k (layer k → k+1) at s̄_k, applied to δ_{k+1}."""
    return _map_vjp(net, k, net.layer_params(params, k), s_bar_k, delta_next, dtype)


def _kolen_pollack(config) -> bool:
    return getattr(config, "feedback", "transpose") == "kolen_pollack"


def _feedback_params(net: LayeredNet, params, k: int, config: DPConfig):
    """The parameters of the map whose vjp gives fb_k: map k's own, or for Kolen–Pollack DP
    map k's with the kernel W_k replaced by B_k (the bias does not enter a vjp in s)."""
    params_k = net.layer_params(params, k)
    if _kolen_pollack(config):
        return {**params_k, "kernel": params["feedback"][k]["kernel"]}
    return params_k


def _update_layer(
    net: LayeredNet,
    params,
    j: int,
    sp: list,
    sm: list,
    t,
    beta_g_hat,
    config: DPConfig,
    dtype,
    damping=None,
) -> None:
    """Re-solve node j (1..N; a chain's layer k = 1..L) in place from the current dyads of its
    parents (a_j = Σ W_k(s̄_i) over its in-edges) and children (fb_j = Σ J_kᵀ δ_c at s̄_j).

    The output layer's nudge βg is taken at the current a_N for DP (2023) and held at the
    forward prediction, βg(ŷ) = ``beta_g_hat``, for DP⊤ (its Lagrangian is linearised at ŷ);
    the exact output is solved at the current a_N for both. ``damping``: the damped rule's
    L_k per hidden layer k (a dict), or None.
    """
    alpha = config.alpha
    bar = {i: alpha * sp[i] + (1 - alpha) * sm[i] for i in map(net.source, net.in_edges(j))}
    a = net.pre_activation(params, j, bar, dtype)
    if j == net.output_node:
        beta_g = _beta_g(a, t, config) if config.variant == "dp" else beta_g_hat
        sp[j], sm[j] = _output_dyad(a, t, beta_g, config)
    else:
        s_bar_j = alpha * sp[j] + (1 - alpha) * sm[j]
        fb = edge_sum([
            _map_vjp(net, k, _feedback_params(net, params, k, config), s_bar_j,
                     sp[net.target(k)] - sm[net.target(k)], dtype)
            for k in net.out_edges(j)
        ])  # fmt: skip
        if damping is None:
            sp[j], sm[j] = _hidden_update(net, j, a, fb, config)
        else:
            s_now = jnp.stack([sp[j], sm[j]])
            sp[j], sm[j] = _hidden_update(net, j, a, fb, config, damping[j], s_now)


def _infer(net: LayeredNet, params, x, y, config: DPConfig, damping=None):
    """Dyads of every node, the forward prediction ŷ and the target array t.

    ``damping``: the damped rule's L_k for each hidden layer k = 1..L-1 (a dict), or None.
    """
    _check_inputs(x, y)
    if _kolen_pollack(config):
        net.require_chain("Kolen–Pollack DP")
        _check_feedback(net, params)
    if damping is not None:
        net.require_chain("damped DP")
    dtype = jnp.dtype(config.dtype)
    N = net.output_node
    # Forward pass: s⁺ = s⁻ = feedforward activity; keep each map's vjp for the sweep.
    s, a, vjps = [x.astype(dtype)], [None], {}
    for j in range(1, N + 1):
        terms = []
        for k in net.in_edges(j):
            a_k, vjps[k] = jax.vjp(
                lambda s_, k=k: net.apply_map(k, net.layer_params(params, k), s_, dtype),
                s[net.source(k)],
            )
            terms.append(a_k)
        a.append(edge_sum(terms))
        s.append(a[j] if j == N else net.node_f(j)(a[j]))
    y_hat = a[N]
    t = targets_as_array(y_hat.astype(_wide(dtype)), y)
    beta_g_hat = _beta_g(y_hat, t, config)
    sp, sm = list(s), list(s)
    sp[N], sm[N] = _output_dyad(y_hat, t, beta_g_hat, config)
    # One sweep in reverse topological order, linearised at the forward activities (s̄_j = s_j
    # before node j moves; every child of j has moved).
    for j in range(N - 1, 0, -1) if config.sweep else ():
        terms = []
        for k in net.out_edges(j):
            c = net.target(k)
            d = sp[c] - sm[c]
            if _kolen_pollack(config):  # map k with B_k, at the same point s_j
                fb_params = _feedback_params(net, params, k, config)
                terms.append(_map_vjp(net, k, fb_params, s[j], d, dtype))
            else:
                terms.append(vjps[k](d.astype(a[c].dtype))[0])
        fb = edge_sum(terms)
        if damping is None:
            sp[j], sm[j] = _hidden_update(net, j, a[j], fb, config)
        else:  # both states are still the forward activity s_j
            sp[j], sm[j] = _hidden_update(net, j, a[j], fb, config, damping[j], s[j])

    if config.passes:
        one_pass = _pass_fn(net, params, t, beta_g_hat, config, damping)
        sp, sm = jax.lax.fori_loop(
            0,
            config.passes,
            lambda _, c: one_pass(c),
            (tuple(sp), tuple(sm)),
            unroll=config.unroll_factor,
        )
    return Dyads(tuple(sp), tuple(sm)), y_hat, t


def _pass_fn(net: LayeredNet, params, t, beta_g_hat, config: DPConfig, damping=None):
    """One extra inference pass of ``config.schedule``: ``(s⁺, s⁻) -> (s⁺, s⁻)``, tuples over
    nodes 0..N (a chain's layers 0..L). ``"alternating"`` re-solves j = 1..N then N-1..1,
    ``"bottom_up"`` j = 1..N: topological order, and its reverse."""
    L, dtype = net.output_node, jnp.dtype(config.dtype)
    if config.schedule == "alternating":
        order = [*range(1, L + 1), *range(L - 1, 0, -1)]
    else:  # bottom_up
        order = list(range(1, L + 1))

    def one_pass(carry):
        sp_, sm_ = list(carry[0]), list(carry[1])
        for k in order:
            _update_layer(net, params, k, sp_, sm_, t, beta_g_hat, config, dtype, damping)
        return tuple(sp_), tuple(sm_)

    return one_pass


@functools.partial(jax.jit, static_argnames=("net", "passes"))
def pass_residuals(
    net: LayeredNet, params, x: jax.Array, y: jax.Array, config: DPConfig, passes: int
) -> dict[str, jax.Array]:
    """How the fixed-point iteration of the dyads behaves: ``passes`` passes of
    ``config.schedule`` after the start ``config`` gives with no extra passes (forward pass,
    output nudge, and the top-down sweep unless ``config.sweep`` is False).

    With S_p the dyads (s⁺_k, s⁻_k), k = 1..L, after pass p (S_0 the start), returns
      ``"residual"``: r_p = ‖S_p - S_{p-1}‖, p = 1..passes (norm over layers, both states and
        the batch, divided by √B): the step of the iteration. A converging iteration shrinks it
        geometrically, r_{p+1} ≈ ρ r_p, with ρ < 1 the spectral radius of the pass's
        linearisation at the fixed point; ρ > 1 (or a non-finite r_p) means it diverges.
      ``"delta"``: ‖δ_p‖ = ‖(s⁺_k - s⁻_k)_k‖ / √B after each pass (the error the dyads carry;
        O(β) while the iteration is stable).
    ``config.passes`` is ignored; the damped rule is not supported here (no state).
    """
    if config.damped:
        raise ValueError("pass_residuals does not support damped rules (they carry state).")
    # With sweep=False the start is the forward state with only the output nudged.
    dyads_0, y_hat, t = _infer(net, params, x, y, _no_passes(config))
    beta_g_hat = _beta_g(y_hat, t, config)
    one_pass = _pass_fn(net, params, t, beta_g_hat, config)
    scale = jnp.sqrt(jnp.asarray(x.shape[0], jnp.float32))

    def norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.square(v.astype(jnp.float32))) for v in tree)) / scale

    def body(carry, _):
        new = one_pass(carry)
        now, before = new[0][1:] + new[1][1:], carry[0][1:] + carry[1][1:]
        step = [a - b for a, b in zip(now, before, strict=True)]
        delta = [p - m for p, m in zip(new[0][1:], new[1][1:], strict=True)]
        return new, (norm(step), norm(delta))

    _, (residual, delta) = jax.lax.scan(body, (dyads_0.s_plus, dyads_0.s_minus), None, passes)
    return {"residual": residual, "delta": delta}


def _no_passes(config: DPConfig) -> DPConfig:
    """``config`` with no extra passes (validation bypassed: sweep=False needs passes ≥ 1
    as a rule, but here the passes are run by the caller)."""
    leaves, treedef = jax.tree.flatten(config)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    object.__setattr__(rebuilt, "passes", 0)
    return rebuilt


@_static
def infer_dyads(
    net: LayeredNet, params, x: jax.Array, y: jax.Array, config: DPConfig, state=None
) -> Dyads:
    """Solve the dyads (s⁺_k, s⁻_k), k = 0..L, for a batch: forward pass, output nudge, one
    top-down sweep (unless ``config.sweep`` is False), then ``config.passes`` extra passes of
    ``config.schedule``. A damped rule needs its ``state`` (:func:`init_damping`); its L_k come
    from ``config.power_iterations`` further power iterations from there."""
    damping = None
    if config.damped:
        damping, _ = _damping(net, params, config, _require_state(state))
    return _infer(net, params, x, y, config, damping)[0]


def local_objective(net: LayeredNet, params, dyads: Dyads, config: DPConfig) -> jax.Array:
    """J(θ) = (1/β) Σ_k ⟨-δ_{k+1}, W_k(θ, s̄_k)⟩ / B with the dyads held fixed: a sum over
    the maps, for a graph over its edges k = (i, j), ⟨-δ_j, W_k(θ, s̄_i)⟩."""
    dtype = jnp.dtype(config.dtype)
    dyads = jax.lax.stop_gradient(dyads)
    bar, d = s_bar(dyads, config.alpha), delta(dyads)
    batch = d[0].shape[0]
    J = 0.0
    for k in range(net.num_maps):
        a_k = net.apply_map(k, net.layer_params(params, k), bar[net.source(k)], dtype)
        J = J + jnp.vdot(-d[net.target(k)], a_k).astype(_wide(dtype))
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
            net.apply_map(k, net.layer_params(p, k), bar[net.source(k)], dtype)
            for k in range(net.num_maps)
        )

    a, vjp = jax.vjp(maps, params)
    (grads,) = vjp(tuple(d[net.target(k)].astype(a_k.dtype) for k, a_k in enumerate(a)))
    grads = jax.tree.map(lambda g: (scale * g).astype(g.dtype), grads)
    if _kolen_pollack(config):  # B_k learns by W_k's Hebbian gradient (the KP idea)
        layers = grads["layers"]
        grads = {
            **grads,
            "feedback": {k: {"kernel": layers[k]["kernel"]} for k in grads["feedback"]},
        }
    return grads


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
    if config.damped:
        raise ValueError(
            "a damped rule carries its power-iteration state: use rule.grad(net, params, x, y, "
            "state) or damped_grad(net, params, x, y, rule, state), with "
            "state = rule.init(net, params)."
        )
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
    N, beta = net.output_node, config.beta

    def summed_loss(p):
        states = [x]
        for j in range(1, N + 1):
            a = net.pre_activation(p, j, states, dtype)
            states.append(a if j == N else dual_activation(net.node_f(j), beta, a))
        s = states[-1]
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


# ------------------------------------------------------------------ damped DP (Høier & Zach 2024)

INIT_POWER_ITERATIONS = 50
"""Power iterations :func:`init_damping` runs from its random start, so that the first γ_k are
already close (each grad call then runs ``power_iterations`` more, warm-started)."""
DAMPING_SEED = 0
"""The fixed PRNG seed of the power-iteration start vectors."""


class DampingState(NamedTuple):
    """The damped rule's state: the power-iteration vector of each hidden map k = 1..L-1
    (``vectors[k]``: unit norm, the shape (1, *core input) of :meth:`LayeredNet.map_input_shapes`),
    an estimate of the top right-singular vector of map k's linear part."""

    vectors: dict[int, jax.Array]


def linear_part(net: LayeredNet, params, k: int, input_shape, dtype=jnp.float32):
    """v ↦ J_k v, the linear part of map k's core (:meth:`LayeredNet.apply_core`: the map
    without its max-pools), on one example of per-example shape ``input_shape``.

    The core is affine, so its linearisation at 0 (``jax.linearize``) is the map with the bias
    dropped; the transpose comes from ``jax.linear_transpose``, so dense, conv, strided and
    flattening maps need no hand-written matrices. Max-pooling is 1-Lipschitz, hence
    ‖J_k‖₂ bounds the Lipschitz constant of the whole map k.
    """
    params_k = net.layer_params(params, k)
    zero = jnp.zeros((1, *input_shape), dtype)
    _, jvp = jax.linearize(lambda s: net.apply_core(k, params_k, s, dtype), zero)
    return jvp


def power_iteration(linear, v, iterations: int):
    """``iterations`` power-iteration steps for the spectral norm of a linear map A.

    From a unit vector v: w = Aᵀ A v, γ = √‖w‖, v ← w/‖w‖. γ = √‖AᵀA v‖ ≥ ‖A v‖ is a lower
    bound on σ_max(A) that converges to it (relative error ~ (σ₂/σ₁)^(2n) after n steps).
    Returns ``(gamma, v)``; a zero map leaves v unchanged and gives γ = 0.
    """
    transpose = jax.linear_transpose(linear, v)

    def step(_, carry):
        v_, _ = carry
        w = transpose(linear(v_))[0]
        n = jnp.sqrt(jnp.vdot(w, w).real)
        v_ = jnp.where(n > 0, w / jnp.where(n > 0, n, 1), v_)
        return v_, jnp.sqrt(n)

    v, gamma = jax.lax.fori_loop(0, iterations, step, (v, jnp.zeros((), v.dtype)))
    return gamma, v


def _start_vector(k: int, shape, dtype):
    v = jax.random.normal(jax.random.fold_in(jax.random.key(DAMPING_SEED), k), (1, *shape), dtype)
    return v / jnp.linalg.norm(v)


@functools.partial(jax.jit, static_argnames=("net", "k", "iterations", "dtype"))
def spectral_norm(
    net: LayeredNet,
    params,
    k: int,
    iterations: int = INIT_POWER_ITERATIONS,
    dtype=jnp.float32,
) -> jax.Array:
    """γ_k: the spectral norm of map k's linear part (:func:`linear_part`), by ``iterations``
    power iterations from the same fixed start as :func:`init_damping`."""
    shape = net.map_input_shapes(params)[k]
    v = _start_vector(k, shape, dtype)
    return power_iteration(linear_part(net, params, k, shape, dtype), v, iterations)[0]


def _hidden_maps(net: LayeredNet) -> range:
    """The maps k = 1..L-1 whose γ_k damps hidden layer k (map 0 reads the input)."""
    return range(1, net.num_maps)


@_static
def init_damping(net: LayeredNet, params, config: DPConfig) -> DampingState:
    """The damped rule's initial state: for each hidden map k = 1..L-1 a unit vector from the
    fixed key of :data:`DAMPING_SEED`, after :data:`INIT_POWER_ITERATIONS` power iterations.

    Raises ``ValueError`` where a conv map's input shape is unknown (a ``Network`` built by
    hand without ``input_shape``).
    """
    net.require_chain("damped DP")
    dtype = _wide(jnp.dtype(config.dtype))
    shapes = net.map_input_shapes(params)
    vectors = {}
    for k in _hidden_maps(net):
        linear = linear_part(net, params, k, shapes[k], dtype)
        vectors[k] = power_iteration(
            linear, _start_vector(k, shapes[k], dtype), INIT_POWER_ITERATIONS
        )[1]
    return DampingState(vectors)


def _require_state(state) -> DampingState:
    if not isinstance(state, DampingState):
        raise ValueError(
            f"the damped rule needs its DampingState (state = rule.init(net, params)), got "
            f"{type(state).__name__}."
        )
    return state


def _damping(net: LayeredNet, params, config: DPConfig, state: DampingState):
    """L_k = max(0, (γ_k² - 1)/2) per hidden layer k (γ_k of map k after
    ``config.power_iterations`` warm-started iterations; no gradient flows through it), and the
    new state."""
    shapes = net.map_input_shapes(params)
    damping, vectors = {}, {}
    params = jax.lax.stop_gradient(params)
    for k in _hidden_maps(net):
        v = state.vectors[k]
        linear = linear_part(net, params, k, shapes[k], v.dtype)
        gamma, vectors[k] = power_iteration(linear, v, config.power_iterations)
        damping[k] = jnp.maximum(0.0, 0.5 * (gamma * gamma - 1.0))
    return damping, DampingState(vectors)


def _damped_grad(net: LayeredNet, params, x, y, config: DPConfig, state):
    """The damped rule's gradient, :class:`Aux` and new state (see :func:`damped_grad`)."""
    damping, state = _damping(net, params, config, _require_state(state))
    dyads, y_hat, t = _infer(net, params, x, y, config, damping)
    grads = _hebbian_grads(net, params, dyads, config)
    return grads, Aux(_batch_loss(y_hat, t, config), y_hat), state


@_static
def damped_grad(
    net: LayeredNet, params, x: jax.Array, y: jax.Array, config: DPConfig, state: DampingState
) -> tuple[object, Aux, DampingState]:
    """Damped DP / DP⊤ (Høier & Zach 2024): ``(grads, aux, state)``.

    ``config.power_iterations`` power iterations per hidden map k, warm-started from
    ``state``, give γ_k and L_k = max(0, (γ_k² - 1)/2); the dyads are then solved as by
    :func:`contrastive_grad`, with the hidden updates s± = f((a ± c± fb + L_k s±)/(1 + L_k))
    (s± on the right the current state), and ∇_θ J taken at them.
    """
    return _damped_grad(net, params, x, y, config, state)


@_static
def damping_norms(net: LayeredNet, params, state: DampingState) -> dict[str, jax.Array]:
    """``{"gamma/k": γ_k}`` for the hidden maps k = 1..L-1: one power iteration from the state's
    vectors, on the current ``params`` (a jvp and a vjp per map)."""
    shapes = net.map_input_shapes(params)
    out = {}
    for k in _hidden_maps(net):
        v = _require_state(state).vectors[k]
        out[f"gamma/{k}"] = power_iteration(linear_part(net, params, k, shapes[k], v.dtype), v, 1)[
            0
        ]
    return out


# ------------------------------------------------------------------ Kolen–Pollack DP (2023)


def init_feedback(net: LayeredNet, params, key: jax.Array):
    """``params`` plus KP-DP's feedback weights: ``params["feedback"] = {k: {"kernel": B_k}}``
    for the maps k = 1..L-1 (map 0's feedback would go into the input layer, never updated).

    B_k has W_k's shape and dtype and is drawn from ``key`` (folded with k), independently of
    W_k, by the builders' initializer family (:func:`~dualprop_jax.models.kernel_initializer`:
    He normal for hidden maps, LeCun normal for the output map).
    """
    net.require_chain("Kolen–Pollack DP")
    L = net.num_maps
    feedback_ = {}
    for k in range(1, L):
        W = net.layer_params(params, k)["kernel"]
        init = kernel_initializer(k, L)
        feedback_[k] = {"kernel": init(jax.random.fold_in(key, k), W.shape, W.dtype)}
    return {**params, "feedback": feedback_}


def _check_feedback(net: LayeredNet, params) -> None:
    fb = params.get("feedback") if isinstance(params, dict) else None
    missing = [
        k
        for k in range(1, net.num_maps)
        if fb is None
        or k not in fb
        or jnp.shape(fb[k].get("kernel")) != jnp.shape(net.layer_params(params, k)["kernel"])
    ]
    if missing:
        raise ValueError(
            f"Kolen–Pollack DP needs feedback weights B_k of W_k's shape in params['feedback'] "
            f"for maps {list(range(1, net.num_maps))}; missing or misshapen for {missing}: call "
            "params = rule.init_params(net, params, key) first."
        )


@_static
def feedback_angles(net: LayeredNet, params) -> dict[str, jax.Array]:
    """``{"kp_angle/k": θ_k}``: the angle in degrees between B_k and W_k (as flat vectors; the
    same as between B_kᵀ and W_kᵀ), for k = 1..L-1. 0° once KP has aligned them.

    θ = 2 atan2(‖Ŵ - B̂‖, ‖Ŵ + B̂‖) (unit vectors Ŵ, B̂): exact also near 0°, where arccos of
    the cosine loses half the digits.
    """
    _check_feedback(net, params)
    out = {}
    for k in range(1, net.num_maps):
        W = net.layer_params(params, k)["kernel"].ravel()
        B = params["feedback"][k]["kernel"].ravel()
        dtype = _wide(W.dtype)
        W, B = W.astype(dtype), B.astype(dtype)
        W, B = W / jnp.linalg.norm(W), B / jnp.linalg.norm(B)
        angle = 2.0 * jnp.arctan2(jnp.linalg.norm(W - B), jnp.linalg.norm(W + B))
        out[f"kp_angle/{k}"] = jnp.degrees(angle)
    return out


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
