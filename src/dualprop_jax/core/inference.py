"""Dyad inference: the forward pass, the output nudge, one top-down sweep, and extra passes.

Schedule (Høier et al. 2023; Høier & Zach 2024), for the settings of a dual-propagation rule
(``config``: its ``variant``, ``alpha``, ``beta``, ``loss``, ``output``, ``sweep``, ``passes``,
``schedule``, ``unroll_factor`` and ``dtype``; a :class:`~dualprop_jax.rules.DualProp` rule is
one):

  1. forward pass: s⁺_j = s⁻_j = s_j, the feedforward activity, with each map's vjp kept;
  2. output nudge: s±_N by :func:`~dualprop_jax.core.nodes.output_dyad` at ŷ = a_N;
  3. one sweep over the hidden nodes in reverse topological order (unless ``config.sweep`` is
     False), linearised at the forward activities: a_j and the kept vjps of the forward pass;
  4. ``config.passes`` extra passes (``lax.fori_loop``) of ``config.schedule``: ``"bottom_up"``
     re-solves j = 1..N, ``"alternating"`` j = 1..N then N-1..1, each node from the current s̄
     of its parents and δ of its children.

In extra passes DP⊤ keeps g at the forward prediction ŷ (its Lagrangian is linearised there),
while DP takes g at the current output a_N (the 2023 convention); the exact output is solved at
the current a_N for both. A node's feedback vjp is taken at its current mean s̄_j (the official
code uses s⁺_j, the same for maps that are linear in s_j).

Every node update, in the sweep and in the passes, is :func:`~dualprop_jax.core.nodes.solve_node`
with the rule's ``feedback`` and ``update`` parts; only where a_j and fb_j are taken differs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax

from dualprop_jax.core import nodes
from dualprop_jax.core.forward import forward
from dualprop_jax.core.states import Dyads, check_batch, compute_dtype, node_mean, wide
from dualprop_jax.losses import targets_as_array
from dualprop_jax.models import ACTIVATIONS
from dualprop_jax.models.net import as_compute


class Parts(NamedTuple):
    """The pluggable parts of the node solver (:mod:`~dualprop_jax.core.nodes`)."""

    feedback: nodes.Feedback = nodes.transpose_feedback
    update: nodes.Update = nodes.plain_update


DEFAULT_PARTS = Parts()
"""The plain solver: transpose feedback and the plain update."""


class Start(NamedTuple):
    """Dyads after the sweep (before extra passes), the forward prediction ŷ, the target array
    t and βg(ŷ), the output nudge at ŷ; ``kept``: the forward pass's parameter vjps of the
    edges out of the nodes of :func:`mean_is_forward` (``{k: c ↦ ∂_θ⟨c, W_k(θ, s_i)⟩}``)."""

    dyads: Dyads
    y_hat: jax.Array
    t: jax.Array
    beta_g_hat: jax.Array
    kept: dict | None = None


def mean_is_forward(net, config, parts: Parts) -> tuple[int, ...]:
    """The hidden nodes i whose s̄_i after the schedule is their forward state s_i (exactly in
    exact arithmetic; the computed mix differs from s_i by float rounding).

    Under DP⊤, (c⁺, c⁻) = (1-α, α), a node with the identity activation and the plain update
    has s⁺ = a + (1-α) fb and s⁻ = a - α fb, so s̄ = α s⁺ + (1-α) s⁻ = a for every α and
    every feedback fb; after the default schedule (one sweep, no extra passes) a is the forward
    input, so s̄_i = s_i. (Under DP, s̄ = a + (2α-1) fb: equal to a at α = ½ only.) The
    residual stream nodes of a transformer are such nodes: the Hebbian gradient of their
    out-edges (attention, LayerNorm) is then the forward pass's own parameter vjp, with no
    second evaluation of the maps at s̄. Empty for any other rule or schedule."""
    if (
        config.variant != "dp_top" or not config.sweep or config.passes
        or parts.update is not nodes.plain_update
    ):  # fmt: skip
        return ()
    identity = ACTIVATIONS["identity"]
    return tuple(i for i in range(1, net.output_node) if net.node_f(i) is identity)


def _output(config, a_N, t, beta_g):
    c = nodes.coefficients(config.variant, config.alpha)
    exact = config.beta if config.output == "exact" else None
    return nodes.output_dyad(a_N, beta_g, c, exact_beta=exact, t=t)


def start(net, params, x, y, config, parts: Parts = DEFAULT_PARTS) -> Start:
    """Steps 1-3 of the schedule: forward pass, output nudge, and the sweep (where
    ``config.sweep``), linearised at the forward activities."""
    check_batch(net, x, y)
    dtype = compute_dtype(config.dtype)
    reuse = [
        k for i in mean_is_forward(net, config, parts) for k in net.out_edges(i)
        if jax.tree.leaves(net.layer_params(params, k))
    ]  # fmt: skip
    fw = forward(
        net, params, as_compute(x, dtype), dtype, keep_vjps=True, keep_param_vjps=bool(reuse)
    )
    s, a, N = fw.states, fw.pre, net.output_node
    y_hat = a[N]
    t = targets_as_array(y_hat.astype(wide(dtype)), y)
    beta_g_hat = nodes.nudge(config.loss, config.beta, y_hat, t)
    sp, sm = list(s), list(s)
    sp[N], sm[N] = _output(config, y_hat, t, beta_g_hat)
    c = nodes.coefficients(config.variant, config.alpha)
    for j in range(N - 1, 0, -1) if config.sweep else ():
        fb = nodes.node_feedback(
            net, params, j, s[j], lambda i: sp[i] - sm[i], parts.feedback, dtype, fw.vjps
        )
        sp[j], sm[j] = nodes.solve_node(net.node_f(j), a[j], fb, c, parts.update, j, s[j])
    kept = {k: fw.param_vjps[k] for k in reuse}
    return Start(Dyads(tuple(sp), tuple(sm)), y_hat, t, beta_g_hat, kept)


def resolve(net, params, j: int, sp: list, sm: list, t, beta_g_hat, config, parts: Parts):
    """Re-solve node j in place from the current s̄ of its parents (a_j = Σ W_k(s̄_i)) and δ of
    its children (fb_j at s̄_j); the output node from its current a_N."""
    alpha, dtype = config.alpha, compute_dtype(config.dtype)
    bar = {i: node_mean(sp[i], sm[i], alpha) for i in map(net.source, net.in_edges(j))}
    a = net.pre_activation(params, j, bar, dtype)
    if j == net.output_node:
        beta_g = nodes.nudge(config.loss, config.beta, a, t) if config.variant == "dp" else None
        sp[j], sm[j] = _output(config, a, t, beta_g_hat if beta_g is None else beta_g)
        return
    s_bar_j = node_mean(sp[j], sm[j], alpha)
    fb = nodes.node_feedback(net, params, j, s_bar_j, lambda i: sp[i] - sm[i], parts.feedback,
                             dtype)  # fmt: skip
    c = nodes.coefficients(config.variant, alpha)
    sp[j], sm[j] = nodes.solve_node(net.node_f(j), a, fb, c, parts.update, j, (sp[j], sm[j]))


def pass_fn(net, params, t, beta_g_hat, config, parts: Parts = DEFAULT_PARTS):
    """One extra pass of ``config.schedule``: ``(s⁺, s⁻) -> (s⁺, s⁻)``, tuples over nodes
    0..N. ``"alternating"`` re-solves j = 1..N then N-1..1, ``"bottom_up"`` j = 1..N."""
    N = net.output_node
    order = [*range(1, N + 1)]
    if config.schedule == "alternating":
        order += list(range(N - 1, 0, -1))

    def one_pass(carry):
        sp, sm = list(carry[0]), list(carry[1])
        for j in order:
            resolve(net, params, j, sp, sm, t, beta_g_hat, config, parts)
        return tuple(sp), tuple(sm)

    return one_pass


def infer(
    net, params, x, y, config, parts: Parts = DEFAULT_PARTS
) -> tuple[Dyads, jax.Array, jax.Array]:
    """The dyads of every node after the whole schedule, ŷ and t (:func:`start`, then
    ``config.passes`` passes of :func:`pass_fn` in a ``lax.fori_loop`` unrolled by
    ``config.unroll_factor``)."""
    return infer_kept(net, params, x, y, config, parts)[:3]


def infer_kept(
    net, params, x, y, config, parts: Parts = DEFAULT_PARTS
) -> tuple[Dyads, jax.Array, jax.Array, dict]:
    """:func:`infer`, and the forward pass's parameter vjps ``{k: c ↦ ∂_θ⟨c, W_k(θ, s̄_i)⟩}`` of
    the edges whose source's s̄ is its forward state (:func:`mean_is_forward`), for
    :func:`~dualprop_jax.core.hebbian.hebbian_grad` to reuse."""
    st = start(net, params, x, y, config, parts)
    carry = tuple(st.dyads)
    if config.passes:
        one_pass = pass_fn(net, params, st.t, st.beta_g_hat, config, parts)
        carry = jax.lax.fori_loop(
            0, config.passes, lambda _, c: one_pass(c), carry, unroll=config.unroll_factor
        )
    return Dyads(*carry), st.y_hat, st.t, st.kept or {}


def require_parts(config, feedback, lipschitz, who: str) -> None:
    """``ValueError`` where ``config`` asks for a part the caller did not give (a damped or
    Kolen–Pollack rule through a function that would silently run plain DP), or for the fast
    path in a function that solves dyads; the message names the call that does it right."""
    wants = []
    if getattr(config, "damped", False) and lipschitz is None:
        wants.append("damped updates (their L_k come from the rule's state)")
    if getattr(config, "feedback", "transpose") != "transpose" and feedback is None:
        wants.append(f"{config.feedback} feedback")
    if getattr(config, "fast", False):
        wants.append("the fast path (it solves no dyads: dp.fast_grad)")
    if wants:
        raise ValueError(
            f"{who} runs the plain node solver, but this rule asks for {' and '.join(wants)}: "
            "call rule.grad(net, params, state, x, y) or rule.infer(net, params, state, x, y), "
            "with state = rule.init(net, params)."
        )


@functools.partial(jax.jit, static_argnames=("net", "feedback"))
def infer_dyads(
    net, params, x: jax.Array, y: jax.Array, config, feedback=None, lipschitz=None
) -> Dyads:
    """Solve the dyads (s⁺_j, s⁻_j), j = 0..N, of a batch by the schedule of ``config``
    (module docstring). Parts: ``feedback`` (default :func:`~.nodes.transpose_feedback`), and
    the plain update, or the damped one where ``lipschitz`` ({j: L_j}) is given. A rule's own
    parts are applied by ``rule.infer(net, params, state, x, y)``; a rule whose parts are not
    given here is refused (:func:`require_parts`)."""
    require_parts(config, feedback, lipschitz, "infer_dyads")
    update = nodes.plain_update if lipschitz is None else nodes.DampedUpdate(lipschitz)
    parts = Parts(feedback or nodes.transpose_feedback, update)
    return infer(net, params, x, y, config, parts)[0]
