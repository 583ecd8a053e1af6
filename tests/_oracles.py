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
