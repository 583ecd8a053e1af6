#!/usr/bin/env bash
# One prepared GPU session: benchmark (float32, the 2024 multi-pass schedule, bf16), VGG16 epoch
# timing on both feeds (host, device), and the core
# tests on the accelerator's JAX. Results go to $OUT (default ./gpu_out).
# `python -m dualprop_jax.cli bench` is `dualprop bench` without installing the package.
#   OUT=gpu_out bash experiments/gpu_check.sh
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' 2>&1 | tee "$OUT/env.txt"
import sys, jax, flax, optax, chex
print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "chex", chex.__version__, jax.devices())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.txt"
timeout 300 python -m dualprop_jax.cli bench --models mlp,cnn,vgg16 --steps 100 --vgg-steps 50 \
  --vgg-epoch --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
# the 2024 schedule (fwK, 16 passes) on both conv layouts, next to one sweep and BP
timeout 240 python -m dualprop_jax.cli bench --models mlp,cnn,vgg16 --rules bp,dp_top --steps 20 \
  --multipass 16 --multipass-steps 20 --out "$OUT/bench_gpu_multipass.json" 2>&1 \
  | tee "$OUT/bench_gpu_multipass.txt"
timeout 120 python -m dualprop_jax.cli bench --models mlp,cnn,vgg16 --dtype bfloat16 --rules bp,dp_top \
  --steps 100 --vgg-steps 50 --vgg-epoch --out "$OUT/bench_gpu_bf16.json" 2>&1 \
  | tee "$OUT/bench_gpu_bf16.txt"
if python -m pytest --version >/dev/null 2>&1; then
  timeout 120 python -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_fast_bf16.py \
    2>&1 | tail -30 | tee "$OUT/pytest_gpu.txt"
else
  echo "pytest not installed here; tests skipped" | tee "$OUT/pytest_gpu.txt"
fi
