"""``dualprop eval``: evaluate a saved run's parameters on a split of its data, without training."""

from __future__ import annotations

import argparse
import sys


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved run's parameters on a split of its data, without training."""
    from dualprop_jax.cli.config import use_dtype
    from dualprop_jax.errors import DataError, TrainingError
    from dualprop_jax.training import checkpoints, steps, train

    try:
        config = checkpoints.saved_config(args.workdir)
        if config is None or checkpoints.latest_epoch(args.workdir) is None:
            raise TrainingError(
                f"{args.workdir} holds no saved run (config.json and checkpoints/); check the "
                "--workdir path."
            )
        if args.data_dir is not None:
            config = config.replace(data_dir=args.data_dir)
        use_dtype(config)
        net, state, meta = checkpoints.load_checkpoint(args.workdir)
        params = state["best_params"] if args.params == "best" else state["params"]
        epoch = meta["best_epoch"] if args.params == "best" else meta["epoch"]
        ds = train.load_data(config)
        result = steps.evaluate(
            net, params, ds, split=args.split, batch_size=config.eval_batch_size, rule=config.rule
        )
    except (DataError, TrainingError, ValueError) as e:
        print(f"dualprop eval: error: {e}", file=sys.stderr)
        return 2
    which = "best-validation" if args.params == "best" else "last"
    print(
        f"{args.split} accuracy: {100 * result['accuracy']:.2f}%  loss {result['loss']:.4f}  "
        f"({which} parameters, epoch {epoch}, of {args.workdir})"
    )
    return 0
