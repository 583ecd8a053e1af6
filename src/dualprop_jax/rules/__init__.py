"""Learning rules as values, with one signature: ``init``, ``grad``, ``predict``.

    rule = rules.dual_prop("dp_top", alpha=0.5, beta=0.01)
    state = rule.init(net, params)
    grads, aux, state = rule.grad(net, params, state, x, y)

- :mod:`~.base`: the contract, :func:`ruleclass` (immutable rule pytrees), the registry;
- :mod:`~.dual_prop`: DP, DP⊤ and their variants (damped, Kolen–Pollack, exact output, fast);
- :mod:`~.backprop`: back-propagation;
- :mod:`~.energy_based`: equilibrium propagation and contrastive Hebbian learning;
- :mod:`~.predictive`: predictive coding (inference learning), its fixed-prediction form, and
  equilibrium propagation on the predictive-coding energy;
- :mod:`~.labels`: table labels (``"dp_top+damped"``) and the rule names.
"""

from dualprop_jax.rules.backprop import Backprop, backprop
from dualprop_jax.rules.base import (
    DTYPES,
    LOSSES,
    RULES,
    Rule,
    check_rule,
    fields_of,
    from_dict,
    leaf,
    ruleclass,
)
from dualprop_jax.rules.dual_prop import (
    AUTO_UNROLL_FACTOR,
    AUTO_UNROLL_PASSES,
    FEEDBACKS,
    OUTPUTS,
    SCHEDULES,
    VARIANTS,
    DualProp,
    damped_dual_prop,
    dual_prop,
    kolen_pollack,
)
from dualprop_jax.rules.energy_based import (
    INITS,
    NUDGINGS,
    ORDERS,
    SIGMAS,
    STARTS,
    ContrastiveHebbian,
    EquilibriumProp,
    chl,
    equilibrium_prop,
)
from dualprop_jax.rules.labels import LABEL_EXTRAS, NAMES, from_label
from dualprop_jax.rules.predictive import (
    SCHEMES,
    PCNEquilibriumProp,
    PredictiveCoding,
    ep_pcn,
    predictive_coding,
)

__all__ = [
    "AUTO_UNROLL_FACTOR",
    "AUTO_UNROLL_PASSES",
    "DTYPES",
    "FEEDBACKS",
    "INITS",
    "LABEL_EXTRAS",
    "LOSSES",
    "NAMES",
    "NUDGINGS",
    "ORDERS",
    "OUTPUTS",
    "RULES",
    "SCHEDULES",
    "SCHEMES",
    "SIGMAS",
    "STARTS",
    "VARIANTS",
    "Backprop",
    "ContrastiveHebbian",
    "DualProp",
    "EquilibriumProp",
    "PCNEquilibriumProp",
    "PredictiveCoding",
    "Rule",
    "backprop",
    "check_rule",
    "chl",
    "damped_dual_prop",
    "dual_prop",
    "ep_pcn",
    "equilibrium_prop",
    "fields_of",
    "from_dict",
    "from_label",
    "kolen_pollack",
    "leaf",
    "predictive_coding",
    "ruleclass",
]
