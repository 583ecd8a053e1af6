"""The math of dual propagation, each equation once, as pure functions over pytrees.

- :mod:`~.states`: dyads, s̄ = α s⁺ + (1-α) s⁻, δ = s⁺ - s⁻, batch checks;
- :mod:`~.forward`: the forward pass, with each map's vjp kept for the sweep;
- :mod:`~.nodes`: the node solver and its parts (transpose feedback, plain and damped updates);
- :mod:`~.inference`: the schedule (forward, nudge, sweep, passes);
- :mod:`~.hebbian`: the local objective J and its gradient, the Hebbian update;
- :mod:`~.fast`: the fast path (autodiff with the dual activation);
- :mod:`~.backprop`: the BP gradient;
- :mod:`~.damping`: damped DP's Lipschitz coefficients by power iteration;
- :mod:`~.feedback`: Kolen–Pollack feedback weights;
- :mod:`~.diagnostics`: alignment, pass residuals, spectral norms, KP angles;
- :mod:`~.energy`: the energy, relaxation and gradient estimates of EP and CHL.
- :mod:`~.predictive`: predictive coding's energy, relaxation and weight update.
"""

from dualprop_jax.core import energy, predictive
from dualprop_jax.core.backprop import bp_grad
from dualprop_jax.core.damping import DampingState, init_damping, lipschitz_damping
from dualprop_jax.core.diagnostics import (
    alignment,
    damping_norms,
    feedback_angles,
    pass_residuals,
    spectral_norm,
)
from dualprop_jax.core.fast import dual_activation, fast_grad
from dualprop_jax.core.feedback import init_feedback, kolen_pollack_feedback
from dualprop_jax.core.forward import Forward, forward
from dualprop_jax.core.hebbian import contrastive_grad, hebbian_grad, local_objective
from dualprop_jax.core.inference import Parts, infer, infer_dyads, infer_kept, mean_is_forward
from dualprop_jax.core.nodes import (
    DampedUpdate,
    node_feedback,
    plain_update,
    solve_node,
    transpose_feedback,
)
from dualprop_jax.core.states import Aux, Dyads, delta, s_bar

__all__ = [
    "Aux",
    "DampedUpdate",
    "DampingState",
    "Dyads",
    "Forward",
    "Parts",
    "alignment",
    "bp_grad",
    "contrastive_grad",
    "damping_norms",
    "delta",
    "dual_activation",
    "energy",
    "fast_grad",
    "feedback_angles",
    "forward",
    "hebbian_grad",
    "infer",
    "infer_dyads",
    "infer_kept",
    "init_damping",
    "init_feedback",
    "kolen_pollack_feedback",
    "lipschitz_damping",
    "local_objective",
    "mean_is_forward",
    "node_feedback",
    "pass_residuals",
    "plain_update",
    "predictive",
    "s_bar",
    "solve_node",
    "spectral_norm",
    "transpose_feedback",
]
