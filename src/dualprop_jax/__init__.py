"""dualprop-jax: dual propagation (DP, DP⊤) in JAX.

Pure functions compute the dyads (s⁺, s⁻) of a layered Flax NNX network and the contrastive
(Hebbian) gradient of the local objective J, ready for any optax optimizer.
"""

from dualprop_jax.config import DPConfig
from dualprop_jax.dyads import (
    Aux,
    Dyads,
    alignment,
    bp_grad,
    contrastive_grad,
    delta,
    dual_activation,
    fast_grad,
    feedback,
    infer_dyads,
    local_objective,
    s_bar,
)
from dualprop_jax.losses import loss_gradient, per_example_loss
from dualprop_jax.models import (
    VGG11,
    VGG16,
    Conv,
    Dense,
    LayeredNet,
    Network,
    cnn,
    conv_net,
    merge,
    mlp,
    split,
    vgg,
    vgg11,
    vgg16,
)

__version__ = "0.1.0"

__all__ = [
    "VGG11",
    "VGG16",
    "Aux",
    "Conv",
    "DPConfig",
    "Dense",
    "Dyads",
    "LayeredNet",
    "Network",
    "__version__",
    "alignment",
    "bp_grad",
    "cnn",
    "contrastive_grad",
    "conv_net",
    "delta",
    "dual_activation",
    "fast_grad",
    "feedback",
    "infer_dyads",
    "local_objective",
    "loss_gradient",
    "merge",
    "mlp",
    "per_example_loss",
    "s_bar",
    "split",
    "vgg",
    "vgg11",
    "vgg16",
]
