#!/usr/bin/env bash
# The release as a user gets it: build the sdist and the wheel, check them (twine check --strict,
# and what each archive holds), install the wheel into a fresh virtual environment and run
# README.md's first ```python block with it, from a folder outside the source tree, so that
# `import dualprop_jax` can only find the installed package.
#   bash scripts/check_wheel.sh       # build and twine from .venv (the test extra)
#   PYTHON=python3 bash scripts/check_wheel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-$repo/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/dualprop-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "check_wheel: building the sdist and the wheel"
if ! "$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  exit 1
fi
"$python" -m twine check --strict "$work"/dist/*

# What each archive holds: the sdist the package, pyproject.toml and the release files; the
# wheel the package and its metadata only.
"$python" - "$work/dist" <<'EOF'
import pathlib, sys, tarfile, tomllib, zipfile

dist = pathlib.Path(sys.argv[1])
version = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]["version"]
package = {str(p) for p in pathlib.Path("src").rglob("*.py") if "__pycache__" not in p.parts}
with tarfile.open(dist / f"dualprop_jax-{version}.tar.gz") as tar:
    sdist = {n.removeprefix(f"dualprop_jax-{version}/") for n in tar.getnames()}
release = {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "CITATION.cff", "PKG-INFO"}
missing = sorted((release | package) - sdist)
junk = ("tests/", "experiments/", "docs/", "notebooks/", "benchmarks/", "runs/", "scripts/")
stray = sorted(n for n in sdist if n.startswith(junk) or "__pycache__" in n or n.endswith(".pyc"))
with zipfile.ZipFile(dist / f"dualprop_jax-{version}-py3-none-any.whl") as whl:
    wheel = set(whl.namelist())
info = f"dualprop_jax-{version}.dist-info/"
missing += sorted({p.removeprefix("src/") for p in package} - wheel)
missing += sorted({info + "licenses/LICENSE", info + "METADATA"} - wheel)
stray += sorted(
    n for n in wheel
    if not n.startswith(("dualprop_jax/", info)) or "__pycache__" in n or n.endswith(".pyc")
)
if missing or stray:
    sys.exit(f"check_wheel: missing {missing}, not wanted {stray}")
print(f"check_wheel: sdist {len(sdist)} entries, wheel {len(wheel)} files, version {version}")
EOF

echo "check_wheel: installing the wheel into a fresh virtual environment"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$work"/dist/*.whl
mkdir "$work/run"
cd "$work/run"
"$work/venv/bin/python" -c "import dualprop_jax, sys; assert 'site-packages' in dualprop_jax.__file__"
"$work/venv/bin/python" -c "import dualprop_jax as d; print('dualprop_jax', d.__version__, d.__file__)"
"$work/venv/bin/dualprop" --version
"$work/venv/bin/python" - "$repo/README.md" >readme_example.py <<'EOF'
import re, sys

blocks = re.findall(r"^```python\n(.*?)^```", open(sys.argv[1]).read(), flags=re.S | re.M)
if not blocks:
    sys.exit("check_wheel: README.md has no ```python block")
print(blocks[0], end="")
EOF
echo "check_wheel: README.md's first python block, with the installed wheel"
JAX_PLATFORMS=cpu MPLBACKEND=Agg "$work/venv/bin/python" readme_example.py
echo "check_wheel: ok"
