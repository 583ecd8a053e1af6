"""``python -m dualprop_jax.bench [flags]``: the same as ``dualprop bench [flags]``."""

import sys

if __name__ == "__main__":
    from dualprop_jax.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
