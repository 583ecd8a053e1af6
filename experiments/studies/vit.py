"""Does DP⊤ keep back-propagation's accuracy on a vision transformer?

A ViT is a graph whose edges carry LayerNorm, multi-head self-attention and patch embedding
(:func:`dualprop_jax.models.vit`: 7x7 patches of a 28x28 image, so 16 tokens of width 64,
2 pre-LN blocks of 4-head attention and a GELU MLP of width 128, a mean-pooled head; no
BatchNorm). The dyads are the nodes: the residual stream's identity sum nodes and each MLP's
GELU hidden node; everything between two nodes is inside an edge, its feedback a ``jax.vjp``
at the source's s̄ and its Hebbian gradient -(1/β) ∂_θ⟨δ_j, W_θ(s̄_i)⟩. This study trains it
with DP⊤ (α = ½, β = 0.01, one sweep) and with BP, from the same initial weights, on the same
batches, with the same optimizer.

    python experiments/studies/vit.py            # the study (about 40 min on 2 CPU cores)
    python experiments/studies/vit.py --quick    # a tiny slice (CI)

Training: Fashion-MNIST (28x28x1), Adam (lr 1e-3), batch 100, ``--epochs`` (default 30) over
all 60 000 training images (no validation split), seeds 0, 1, 2: seed k gives both rules the
same initial weights and the same batch order (``dualprop_jax.training.train`` with
``TrainConfig(model="vit", seed=k)``). Each (rule, seed) run keeps its checkpoints in
``<out>/partial/<rule>-s<seed>/``, so an interrupted study resumes where it stopped.

Columns: test accuracy on the 10 000 test images after the last epoch, per seed and as mean ±
std over seeds; Δ vs BP: the rule's accuracy minus BP's on the same seed (a paired
difference), mean ± std over seeds; train s: the run's training time.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import resnet

STUDY = "vit"
TITLE = "DP⊤ and BP on a vision transformer (ViT, Fashion-MNIST)"

DEFAULTS = resnet.Settings(model="vit", epochs=30)
QUICK = dataclasses.replace(DEFAULTS, seeds=(0,), epochs=1, train_images=300)


def main(argv=None) -> int:
    return resnet.study_main(STUDY, TITLE, __doc__, DEFAULTS, QUICK, argv)


if __name__ == "__main__":
    raise SystemExit(main())
