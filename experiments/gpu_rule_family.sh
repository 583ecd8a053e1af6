#!/usr/bin/env bash
# One prepared GPU session for the rule family. Stages (STAGES, comma-separated):
#   bench  the benchmark's row for every rule (BP, DP⊤, DP, fast path, damped DP⊤, KP-DP, EP,
#          CHL) on MLP, CNN and VGG16
#   mlp    experiments/rule_family.py's Fashion-MNIST MLP table on the GPU (EPOCHS epochs)
#   relax  whether EP's free phase settles on the CNN, per relaxation order
#   cnn    the same for the CNN rows (setup fmnist_cnn_pooled; CNN_RULES below)
#   tests  the rule family's oracle tests on the accelerator's JAX
# The GPU machine has no Debian dataset package: copy the Fashion-MNIST IDX files to
# .gpu_data/fashion-mnist/ (git-ignored) and carry that folder. Results go to $OUT.
#   OUT=gpu_out STAGES=bench,mlp EPOCHS=4 bash experiments/gpu_rule_family.sh
set -u
OUT=${OUT:-gpu_out}
EPOCHS=${EPOCHS:-4}
STAGES=${STAGES:-bench,mlp}
CNN_RULES=${CNN_RULES:-bp,dp_top,dp_top+damped,dp+kp,ep,chl}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export DUALPROP_TEST_FMNIST_DIR="$PWD/.gpu_data/fashion-mnist"
data='data_dir=".gpu_data/fashion-mnist"'
python - <<'PY' 2>&1 | tee "$OUT/env.txt"
import sys, jax, flax, optax, chex
print(sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "chex", chex.__version__, jax.devices())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.txt"
case ",$STAGES," in *,bench,*)
  timeout 200 python -m dualprop_jax.cli bench --models mlp,cnn,vgg16 --steps 30 --vgg-steps 10 \
    --out "$OUT/bench_gpu_family.json" 2>&1 | tee "$OUT/bench_gpu_family.txt" ;;
esac
case ",$STAGES," in *,mlp,*)
  timeout 330 python experiments/rule_family.py --epochs "$EPOCHS" --seeds 0,1,2 \
    --runs /tmp/rule_family_gpu --out "$OUT/RULE_FAMILY_GPU.md" --override "$data" 2>&1 | tail -20 ;;
esac
case ",$STAGES," in *,relax,*)
  timeout 120 python experiments/relaxation_check.py --setup fmnist_cnn_pooled \
    --data-dir .gpu_data/fashion-mnist 2>&1 | tee "$OUT/relaxation_cnn.txt" ;;
esac
case ",$STAGES," in *,cnn,*)
  timeout 450 python experiments/rule_family.py --setup fmnist_cnn_pooled --epochs "$EPOCHS" \
    --rules "$CNN_RULES" --seeds 0,1,2 --runs /tmp/rule_family_cnn_gpu \
    --out "$OUT/${CNN_OUT:-RULE_FAMILY_CNN_GPU}.md" --override "$data" 2>&1 | tail -20 ;;
esac
case ",$STAGES," in *,tests,*)
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_energy.py tests/test_variants.py \
    2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt" ;;
esac
