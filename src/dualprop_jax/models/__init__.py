"""Networks as Flax NNX modules and their pure view for the learning rules.

- :mod:`~dualprop_jax.models.maps`: the layer maps (dense, conv, pools, identity) and activations;
- :mod:`~dualprop_jax.models.attention`: the transformer's maps (patch embedding, pre-LN
  attention and dense maps, the pooled head);
- :mod:`~dualprop_jax.models.graph`: a network's DAG structure and the forward walk over it;
- :mod:`~dualprop_jax.models.net`: the ``Network`` module, its static view ``LayeredNet``,
  ``split`` and ``merge``;
- :mod:`~dualprop_jax.models.zoo`: builders (MLP, CNN, VGG, ResNet, ViT).
"""

from dualprop_jax.models.attention import (
    MeanPoolHead,
    PatchEmbed,
    PreLNAttention,
    PreLNDense,
    TokenDense,
    TokenEmbed,
)
from dualprop_jax.models.graph import Graph, edge_sum, propagate
from dualprop_jax.models.maps import (
    ACTIVATIONS,
    Conv,
    Dense,
    Identity,
    fixup_initializers,
    kernel_initializer,
    max_pool_2x2,
)
from dualprop_jax.models.net import LayeredNet, Network, merge, split
from dualprop_jax.models.zoo import (
    LAYOUTS,
    RESNET_PRESETS,
    VGG11,
    VGG16,
    causal_lm,
    cnn,
    conv_net,
    mlp,
    resnet,
    resnet8,
    resnet18,
    resnet20,
    vgg,
    vgg11,
    vgg16,
    vit,
)

__all__ = [
    "ACTIVATIONS",
    "LAYOUTS",
    "RESNET_PRESETS",
    "VGG11",
    "VGG16",
    "Conv",
    "Dense",
    "Graph",
    "Identity",
    "LayeredNet",
    "MeanPoolHead",
    "Network",
    "PatchEmbed",
    "PreLNAttention",
    "PreLNDense",
    "TokenDense",
    "TokenEmbed",
    "causal_lm",
    "cnn",
    "conv_net",
    "edge_sum",
    "fixup_initializers",
    "kernel_initializer",
    "max_pool_2x2",
    "merge",
    "mlp",
    "propagate",
    "resnet",
    "resnet8",
    "resnet18",
    "resnet20",
    "split",
    "vgg",
    "vgg11",
    "vgg16",
    "vit",
]
