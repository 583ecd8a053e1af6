"""dualprop-jax: dual propagation (DP, DP⊤) in JAX.

Pure functions compute the dyads (s⁺, s⁻) of a layered Flax NNX network and the contrastive
(Hebbian) gradient of the local objective J; learning rules are values
(:mod:`dualprop_jax.rules`) with one interface, ready for any optax optimizer:

    import dualprop_jax as dp
    rule = dp.rules.dual_prop(variant="dp_top", alpha=0.5, beta=0.01)
    grads, aux = rule.grad(net, params, x, y)

The same interface holds the DP variants (damped DP, Kolen–Pollack DP, the exact squared-error
output), back-propagation, and the baselines the papers compare against: equilibrium
propagation and contrastive Hebbian learning (:mod:`dualprop_jax.energy`).
"""

from dualprop_jax import energy, rules
from dualprop_jax.data import Dataset, load_dataset
from dualprop_jax.data.pipeline import augment_batch, batches
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
from dualprop_jax.errors import DataError, DivergenceError, TrainingError, TrainingInterrupted
from dualprop_jax.losses import loss_gradient, per_example_loss
from dualprop_jax.models import (
    VGG11,
    VGG16,
    Conv,
    Dense,
    Graph,
    Identity,
    LayeredNet,
    Network,
    cnn,
    conv_net,
    merge,
    mlp,
    resnet,
    resnet8,
    resnet18,
    resnet20,
    split,
    vgg,
    vgg11,
    vgg16,
)
from dualprop_jax.rules import Backprop, DualProp, Rule
from dualprop_jax.training.checkpoints import load_checkpoint
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.loop import train_epoch
from dualprop_jax.training.parallel import make_mesh
from dualprop_jax.training.progress import ConsoleProgress
from dualprop_jax.training.steps import TrainState, evaluate, make_optimizer, make_train_step
from dualprop_jax.training.train import train_and_evaluate, write_plots

__version__ = "0.1.0"

__all__ = [
    "VGG11",
    "VGG16",
    "Aux",
    "Backprop",
    "ConsoleProgress",
    "Conv",
    "DataError",
    "Dataset",
    "Dense",
    "DivergenceError",
    "DualProp",
    "Dyads",
    "Graph",
    "Identity",
    "LayeredNet",
    "Network",
    "Rule",
    "TrainConfig",
    "TrainState",
    "TrainingError",
    "TrainingInterrupted",
    "__version__",
    "alignment",
    "augment_batch",
    "batches",
    "bp_grad",
    "cnn",
    "contrastive_grad",
    "conv_net",
    "delta",
    "dual_activation",
    "energy",
    "evaluate",
    "fast_grad",
    "feedback",
    "infer_dyads",
    "load_checkpoint",
    "load_dataset",
    "local_objective",
    "loss_gradient",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "merge",
    "mlp",
    "per_example_loss",
    "resnet",
    "resnet8",
    "resnet18",
    "resnet20",
    "rules",
    "s_bar",
    "split",
    "train_and_evaluate",
    "train_epoch",
    "vgg",
    "vgg11",
    "vgg16",
    "write_plots",
]
