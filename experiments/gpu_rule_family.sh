#!/usr/bin/env bash
# One prepared GPU session for the rule family (issue 12): the benchmark's row for every rule
# (BP, DP⊤, DP, the fast path, damped DP⊤, KP-DP, EP, CHL) on MLP, CNN and VGG16, then the
# Fashion-MNIST rule-family table of experiments/rule_family.py on the GPU. Results go to $OUT.
# The GPU machine has no Debian dataset package: copy the Fashion-MNIST IDX files to
# .gpu_data/fashion-mnist/ (git-ignored) and carry that folder.
#   OUT=gpu_out EPOCHS=4 bash experiments/gpu_rule_family.sh
set -u
OUT=${OUT:-gpu_out}
EPOCHS=${EPOCHS:-4}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python - <<'PY' 2>&1 | tee "$OUT/env.txt"
import sys, jax, flax, optax, chex
print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "chex", chex.__version__, jax.devices())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.txt"
timeout 200 python -m dualprop_jax.cli bench --models mlp,cnn,vgg16 --steps 30 --vgg-steps 10 \
  --out "$OUT/bench_gpu_family.json" 2>&1 | tee "$OUT/bench_gpu_family.txt"
timeout 330 python experiments/rule_family.py --epochs "$EPOCHS" --seeds 0,1,2 \
  --runs /tmp/rule_family_gpu --out "$OUT/RULE_FAMILY_GPU.md" \
  --override 'data_dir=".gpu_data/fashion-mnist"' 2>&1 | tail -40
