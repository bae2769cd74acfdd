#!/usr/bin/env bash
# The prepared GPU check: one call on a CUDA machine (< 8 minutes) that trains the
# research log's #5 UNet at 64x64 in bf16 on real face images, samples with DDIM-50,
# and prints training images/s, sampling images/s and peak GPU memory, plain and with
# torch.compile + channels_last. Record what it prints in docs/benchmarks.md.
#
# Faces travel with the call and are never committed: copy them into .faces/
# (git-ignored) and name .faces in the device tool's `carry`:
#     mkdir -p .faces && cp ../shared/data/faces-a/*.jpg .faces/
#     device run: bash scripts/gpu_check.sh .faces      (carry: [".faces"])
# The device image has torch, lightning, numpy, pandas, pyarrow, pillow, pyyaml,
# typer, tqdm and safetensors; this check needs nothing else (no dvclive).
set -euo pipefail
faces=${1:-.faces}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)  date: $(date -u +%F)"
timeout 450 python3 scripts/gpu_bench.py "$faces" --train-steps "${TRAIN_STEPS:-300}" \
    --batch "${BATCH:-128}" --sample-n "${SAMPLE_N:-512}"
