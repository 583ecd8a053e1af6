#!/usr/bin/env bash
# The lowest supported versions: install the package (not editable) into a fresh virtual
# environment with jax and jaxlib, flax, optax, chex and orbax-checkpoint pinned to the lower
# bounds pyproject.toml declares, and run the core tests against it from the repository's
# tests/. The newest versions pip resolves are the ones in .venv, which the whole suite runs on.
#   bash scripts/check_jax_versions.sh                 # the lower bounds of pyproject.toml
#   JAX_VERSION=0.10.1 bash scripts/check_jax_versions.sh   # another jax (the rest as pip says)
#   bash scripts/check_jax_versions.sh tests/test_variants.py   # other tests than the core set
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-$repo/.venv/bin/python}
mapfile -t pins < <("$python" - "${JAX_VERSION:-}" <<'EOF'
import pathlib, re, sys, tomllib

deps = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]["dependencies"]
low = {m[1]: m[2] for d in deps if (m := re.match(r"([\w-]+)\s*>=\s*([\d.]+)", d))}
if sys.argv[1]:  # one jax release, everything else as pip resolves it next to it
    low = {"jax": sys.argv[1]}
low["jaxlib"] = low["jax"]
for name in ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint"):
    if name in low:
        print(f"{name}=={low[name]}")
EOF
)
core=(tests/test_core.py tests/test_rules.py tests/test_rule_contract.py tests/test_oracles.py
  tests/test_float64.py)
[ $# -gt 0 ] && core=("$@")
work=$(mktemp -d "${TMPDIR:-/tmp}/dualprop-jax-versions.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "check_jax_versions: ${pins[*]} in a fresh virtual environment"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$repo" "${pins[@]}" "pytest>=8"
"$work/venv/bin/python" -m pip list 2>/dev/null |
  grep -E '^(jax|jaxlib|flax|optax|chex|orbax-checkpoint|numpy) '
# From the repository root, as pytest runs: the installed package, not src/ (not on sys.path).
"$work/venv/bin/python" -c "import dualprop_jax, sys; assert 'site-packages' in dualprop_jax.__file__"
JAX_PLATFORMS=cpu "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${core[@]}"
echo "check_jax_versions: ok (${pins[*]})"
