"""Does the EP / CHL free phase settle on this model? Residual and saturation per order.

For a setup of ``experiments/configs`` (its model at initialisation, a Fashion-MNIST batch),
relax the free phase for T steps from each initialisation EP can use (``weight_init``) in each
relaxation order and print the residual
max |s - (one more step)| and the fraction of hidden states at the clip's bounds 0 or 1. A
residual that does not fall with T means the relaxation cycles: EP's and CHL's gradients then
contrast states that are not fixed points.

    python experiments/relaxation_check.py --setup fmnist_cnn_pooled
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import dualprop_jax as dp
from dualprop_jax import rules
from dualprop_jax.core import energy
from dualprop_jax.training.config import TrainConfig
from dualprop_jax.training.steps import build_model

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--setup", default="fmnist_mlp512")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", default="25,50,100,200")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    values = json.loads((HERE / "configs" / f"{args.setup}.json").read_text())
    values.pop("rule", None)
    config = TrainConfig.from_dict({**values, "data_dir": args.data_dir, "max_train": 1000})
    ds = dp.load_dataset(config.dataset, data_dir=config.data_dir, max_train=1000)
    model = build_model(config, ds.input_shape, ds.num_classes, nnx.Rngs(0))
    net, params = dp.split(model)
    x = jnp.asarray(ds.images("train", np.arange(args.batch)))
    for init, order in itertools.product(rules.INITS, rules.ORDERS):
        rule = rules.equilibrium_prop(order=order, weight_init=init)
        p = rule.init_params(net, params, jax.random.fold_in(jax.random.key(0), 1))
        start = energy.start_states(net, p, x, rule)
        for steps in (int(s) for s in args.steps.split(",")):
            s = energy.relax(net, p, x, start, rule, steps)
            nxt = energy.relax(net, p, x, s, rule, 1)
            residual = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(s, nxt, strict=True))
            hidden = np.concatenate([np.ravel(np.asarray(h)) for h in s[:-1]])
            saturated = float(np.mean((hidden <= 0) | (hidden >= 1)))
            print(
                f"{args.setup} {init:>14} {order:>11} T={steps:4d}: residual {residual:.3g}, "
                f"hidden states at 0 or 1: {100 * saturated:.1f}%",
                flush=True,
            )


if __name__ == "__main__":
    main()
