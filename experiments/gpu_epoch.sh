#!/usr/bin/env bash
# VGG16 epoch timing only (float32 and bf16), 1 untimed + 5 timed interleaved epochs per rule.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
for dt in ${DTYPES:-float32 bfloat16}; do
  timeout 200 python -m dualprop_jax.cli bench --models '' --vgg-epoch --epoch-warmup 1 --epoch-repeats 5 --dtype $dt \
    --out "$OUT/epoch_gpu_$dt.json" 2>&1 | grep -v cuda_timer | tee "$OUT/epoch_gpu_$dt.txt"
done
