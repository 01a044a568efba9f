#!/usr/bin/env bash
# Stage 1 at full shapes on a GPU, no download: random-weight GLM-ASR-Nano encoder + Qwen3-0.6B,
# bf16, the course's batch of 4 clips. Prints the table (with the projected course stage-1 time,
# 50,000 steps x 16 samples) and writes the same JSON as the CPU benchmark.
#   scripts/benchmark_gpu.sh                       # both padding modes, 20 timed steps
#   STEPS=50 BATCH=8 scripts/benchmark_gpu.sh training.gradient_checkpointing=true
set -euo pipefail
FIXTURES=${FIXTURES:-.fixtures/full}
OUT=${OUT:-outputs/benchmark_gpu.json}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: run this on a GPU machine')"
[ -f "$FIXTURES/glm-asr/config.json" ] || ta fixtures build "$FIXTURES" --shape full
ta benchmark --fixtures "$FIXTURES" --padding "${PADDING:-both}" --batch-size "${BATCH:-4}" \
  --steps "${STEPS:-20}" --warmup 3 --out "$OUT" \
  +experiments=mlp model.dtype=bfloat16 training.bf16=true "$@"
