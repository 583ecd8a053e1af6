"""``DPConfig``: the earlier name of the dual-propagation rule :class:`~.rules.DualProp`.

Kept so that code written against the core functions (``contrastive_grad(net, params, x, y,
DPConfig(...))``) runs unchanged. New code builds rules with :func:`dualprop_jax.rules.dual_prop`.
"""

from dualprop_jax.rules import DTYPES, LOSSES, SCHEDULES, VARIANTS
from dualprop_jax.rules import DualProp as DPConfig

__all__ = ["DTYPES", "LOSSES", "SCHEDULES", "VARIANTS", "DPConfig"]
