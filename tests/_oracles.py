"""Checks that more than one test file uses."""

import jax
import numpy as np


def assert_each_leaf_near(grads, reference, max_cos_err: float, max_ratio_err: float) -> None:
    """Per leaf: 1 - cos(g, g_ref) ≤ ``max_cos_err`` and |‖g‖/‖g_ref‖ - 1| ≤ ``max_ratio_err``;
    also that the ratio bound would see a 0.1% error in the norm."""
    leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, g), r in zip(leaves, jax.tree.leaves(reference), strict=True):
        g, r = np.asarray(g).ravel(), np.asarray(r).ravel()
        cos = g @ r / (np.linalg.norm(g) * np.linalg.norm(r))
        ratio = np.linalg.norm(g) / np.linalg.norm(r)
        name = jax.tree_util.keystr(path)
        assert 1 - cos <= max_cos_err, (name, 1 - cos)
        assert abs(ratio - 1) <= max_ratio_err, (name, ratio - 1)
        assert abs(1.001 * ratio - 1) > max_ratio_err  # the bound sees a 0.1% error


def np_dense_dyads(Ws, bs, x, t, variant, alpha, beta, f, passes=0, schedule="alternating"):
    """The dyad table of docs/method.md written out in numpy for a dense network with softmax
    CE: forward pass, output nudge, top-down sweep, then ``passes`` passes of ``schedule``.
    Returns the lists (s⁺_k, s⁻_k), k = 0..L."""
    L = len(Ws)
    s, a = [x], [None]
    for k in range(L):
        a.append(s[k] @ Ws[k] + bs[k])
        s.append(a[-1] if k == L - 1 else f(a[-1]))

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    g_hat = softmax(a[L]) - t  # g at the forward prediction ŷ = a_L

    def out(a_L):
        # DP (2023) nudges by g at the current output; DP⊤ by g(ŷ), fixed during the passes
        g = softmax(a_L) - t if variant == "dp" else g_hat
        if variant == "dp":
            return a_L - alpha * beta * g, a_L + (1 - alpha) * beta * g
        return a_L - (1 - alpha) * beta * g, a_L + alpha * beta * g

    def hidden(a_k, fb):
        if variant == "dp":
            return f(a_k + alpha * fb), f(a_k - (1 - alpha) * fb)
        return f(a_k + (1 - alpha) * fb), f(a_k - alpha * fb)

    sp, sm = list(s), list(s)
    sp[L], sm[L] = out(a[L])
    for k in range(L - 1, 0, -1):
        sp[k], sm[k] = hidden(a[k], (sp[k + 1] - sm[k + 1]) @ Ws[k].T)

    def solve(k):
        bar = alpha * sp[k - 1] + (1 - alpha) * sm[k - 1]
        a_k = bar @ Ws[k - 1] + bs[k - 1]
        if k == L:
            sp[k], sm[k] = out(a_k)
        else:
            sp[k], sm[k] = hidden(a_k, (sp[k + 1] - sm[k + 1]) @ Ws[k].T)

    for _ in range(passes):
        for k in range(1, L + 1):
            solve(k)
        if schedule == "alternating":
            for k in range(L - 1, 0, -1):
                solve(k)
    return sp, sm


def np_hebbian_grads(Ws, sp, sm, alpha, beta):
    """The Hebbian gradient of docs/method.md from numpy dyads: per dense map k,
    ∇W_k = -(1/(βB)) s̄_kᵀ δ_{k+1}, ∇b_k = -(1/(βB)) Σ_batch δ_{k+1}."""
    B = sp[0].shape[0]
    out = {}
    for k in range(len(Ws)):
        bar = alpha * sp[k] + (1 - alpha) * sm[k]
        d = sp[k + 1] - sm[k + 1]
        out[k] = {"kernel": -(bar.T @ d) / (beta * B), "bias": -d.sum(0) / (beta * B)}
    return out
