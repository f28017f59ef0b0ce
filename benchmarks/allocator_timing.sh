#!/usr/bin/env bash
# What a fixed glibc mmap threshold costs, side by side: LoRA, full fine-tuning and LST on
# MiniLM at 32 x 128, 8 steps each, alternating the default allocator and
# MALLOC_MMAP_THRESHOLD_=$THRESHOLD (4 MiB unless set) for ROUNDS rounds, one thread. Prints
# method, allocator, round, seconds per step and the peak above the runtime (metrics.json).
#   bash benchmarks/allocator_timing.sh [ROUNDS]   (after python benchmarks/plan_check.py,
#   whose --root holds long-train.csv and long-eval.csv)
#   METHODS="lst" THRESHOLD=131072 bash benchmarks/allocator_timing.sh 3
set -euo pipefail
ROUNDS=${1:-2}
ROOT=${ROOT:-runs/plan_check}
OUT=${OUT:-runs/allocator_timing}
BIN=${BIN:-.venv/bin}
THRESHOLD=${THRESHOLD:-4194304}
METHODS=${METHODS:-lora full lst}
mkdir -p "$OUT"
# 256 training examples: the 64 long texts four times over, 8 steps of 32
{ head -1 "$ROOT/long-train.csv"; for _ in 1 2 3 4; do tail -n +2 "$ROOT/long-train.csv"; done; } \
  > "$OUT/long-train-256.csv"
for round in $(seq "$ROUNDS"); do
  for alloc in default fixed; do
    for method in $METHODS; do
      run="$OUT/$method-$alloc-$round"
      if [ "$alloc" = fixed ]; then export MALLOC_MMAP_THRESHOLD_=$THRESHOLD; else unset MALLOC_MMAP_THRESHOLD_; fi
      OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$BIN/laddertune" train --model minilm \
        --train "$OUT/long-train-256.csv" --eval "$ROOT/long-eval.csv" --method "$method" \
        --batch-size 32 --max-length 128 --epochs 1 --device cpu --no-progress \
        --output "$run" --overwrite > /dev/null 2>&1
      "$BIN/python" -c "import json; j = json.load(open('$run/metrics.json')); \
print('$method $alloc $round', round(j['step_seconds'], 2), j['steps'], round(j['peak_above_runtime_mb']))"
    done
  done
done
