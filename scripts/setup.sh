#!/usr/bin/env bash
# Set up a checkout on Debian: the Fashion-MNIST package, the fortunes text corpus (the
# language model's data) and python3-venv (apt-get, with sudo only when not root), then .venv
# with dualprop-jax installed in editable mode.
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh test     # the package and the test extra (what .ci/run uses)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -f /usr/share/games/fortunes/fortunes ] || need+=(fortunes)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extra:+[$extra]}"
echo "set up: .venv (run .venv/bin/dualprop train)"
