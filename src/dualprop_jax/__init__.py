"""dualprop-jax: dual propagation (DP, DP⊤) in JAX.

``import dualprop_jax as dp`` gives the math: learning rules (:mod:`~dualprop_jax.rules`), the
core functions (:mod:`~dualprop_jax.core`), the models (:mod:`~dualprop_jax.models`) and the
losses. Every rule has one signature, ready for any optax optimizer:

    rule = dp.rules.dual_prop("dp_top", alpha=0.5, beta=0.01)
    state = rule.init(net, params)
    grads, aux, state = rule.grad(net, params, state, x, y)

The training harness lives in :mod:`dualprop_jax.training` (configs, loops, checkpoints,
devices, progress, plots, benchmarks) and the data in :mod:`dualprop_jax.data`; the notebook
entry points ``dp.load_dataset``, ``dp.batches``, ``dp.make_train_step``, ``dp.evaluate`` and
``dp.train_and_evaluate`` are one attribute away (imported on first use).
"""

from importlib import import_module

from dualprop_jax import core, models, rules
from dualprop_jax.core import (
    Aux,
    Dyads,
    alignment,
    bp_grad,
    contrastive_grad,
    delta,
    dual_activation,
    fast_grad,
    infer_dyads,
    local_objective,
    pass_residuals,
    s_bar,
)
from dualprop_jax.losses import loss_gradient, per_example_loss
from dualprop_jax.models import (
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


def _distribution_version() -> str:
    """The version of the installed distribution, written in one place: pyproject.toml.

    A source tree on ``sys.path`` that was never installed reads its own pyproject.toml; a
    package found neither way says ``0+unknown``.
    """
    from importlib import metadata

    try:
        return metadata.version("dualprop-jax")
    except metadata.PackageNotFoundError:
        import pathlib
        import tomllib

        pyproject = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
        if pyproject.is_file():
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        return "0+unknown"


__version__ = _distribution_version()

_HARNESS = {
    "load_dataset": "dualprop_jax.data",
    "batches": "dualprop_jax.data.pipeline",
    "make_train_step": "dualprop_jax.training.steps",
    "evaluate": "dualprop_jax.training.steps",
    "train_and_evaluate": "dualprop_jax.training.train",
}
"""The notebook entry points of the harness: name -> module (imported on first use, so that
``import dualprop_jax`` loads no data, checkpoint or plotting library)."""


def __getattr__(name: str):
    if name in _HARNESS:
        return getattr(import_module(_HARNESS[name]), name)
    raise AttributeError(f"module 'dualprop_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HARNESS])


__all__ = [
    "Aux",
    "Backprop",
    "Conv",
    "Dense",
    "DualProp",
    "Dyads",
    "Graph",
    "Identity",
    "LayeredNet",
    "Network",
    "Rule",
    "__version__",
    "alignment",
    "batches",
    "bp_grad",
    "cnn",
    "contrastive_grad",
    "conv_net",
    "core",
    "delta",
    "dual_activation",
    "evaluate",
    "fast_grad",
    "infer_dyads",
    "load_dataset",
    "local_objective",
    "loss_gradient",
    "make_train_step",
    "merge",
    "mlp",
    "models",
    "pass_residuals",
    "per_example_loss",
    "resnet",
    "resnet8",
    "resnet18",
    "resnet20",
    "rules",
    "s_bar",
    "split",
    "train_and_evaluate",
    "vgg",
    "vgg11",
    "vgg16",
]
