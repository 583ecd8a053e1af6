"""``python -m dualprop_jax.cli``: the ``dualprop`` command without the installed script."""

import sys

from dualprop_jax.cli import main

sys.exit(main())
