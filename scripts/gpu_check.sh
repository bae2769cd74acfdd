#!/usr/bin/env bash
# The GPU check of issue 14: one call, at most 9 minutes on one H100/H200-class card,
# prints one markdown table (record it in docs/benchmarks.md with card, date, commit):
#   - training img/s, peak memory, measured train FLOPs/image and MFU of the research
#     log's #5 UNet at 64 px in bf16 through the train stage's Lightning loop: plain, with
#     torch.compile + channels_last, and diffusers' UNet2DModel laid out the same
#     (scripts/diffusers_peer.py) trained the same way; the loader alone, per worker count;
#   - the generate stage: 50,000 DDIM-50 samples at 64 px (bf16, compiled), img/s and wall;
#   - the fid_ref stage on the faces and the FID of the 50,000 (ddpm.evaluation), wall;
#   - with several GPUs, the training under DDP and the generation split across them.
# Each part runs in its own process under a time cap (scripts/gpu_bench.py): a slow part
# is cut off with a line in the table instead of eating the others' time.
#
#   bash scripts/gpu_check.sh [FACES]            on the GPU machine (FACES default .faces)
#   bash scripts/gpu_check.sh --smoke [FACES]    tiny sizes on the CPU, < 1 minute
#                                                (tests/test_gpu_check.py; FACES default demo)
# Sizes: TRAIN_STEPS (150), BATCH (128), SAMPLE_N (50000), SAMPLE_COMPILE (default),
# PEER (plain | compile: how the diffusers peer trains; its ratio is against the ddpm row
# trained the same way), FID_WEIGHTS, WORK (a temp dir).
#
# What travels with the device tool's call: this checkout (run the tool from a checkout
# of this branch), plus two git-ignored folders named in its carry list:
#   .faces  the face images, never committed:
#             mkdir -p .faces && cp ../shared/data/faces-a/*.jpg .faces/      (26 MB)
#   .whl    what the device image (Python 3.12, torch, lightning, torchmetrics) lacks:
#           pytorch-fid (FID) and diffusers with importlib_metadata (the peer; its other
#           needs are there), all pure Python:
#             python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#               --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
#               pytorch-fid==0.3.0 diffusers==0.42.1 importlib_metadata==8.7.0   (6.2 MB)
# Then:  device run  command: bash scripts/gpu_check.sh .faces
#                    carry: [".faces", ".whl"]   timeout_s: 600
# Inception weights: the official file (96 MB) is over the 64 MiB a call carries and the
# device has no network, so unless FID_WEIGHTS names a file (or torch hub's cache holds
# one) the check calibrates stand-in weights there; the table then says STAND-IN.
set -euo pipefail
smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
faces=${1:-$( ((smoke)) && echo demo || echo .faces)}
work=${WORK:-$(mktemp -d)}
hub_weights="${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth"
weights=${FID_WEIGHTS:-$( [[ -f "$hub_weights" ]] && echo "$hub_weights" || true)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if ((smoke)); then
    # One process for all parts (an import of torch and Lightning per part would cost
    # more than the parts), compiled with aot_eager (inductor takes minutes on a CPU;
    # ddpm/compiling.py).
    export DDPM_COMPILE_BACKEND=${DDPM_COMPILE_BACKEND:-aot_eager}
    exec python3 scripts/gpu_bench.py check "$faces" "$work" --smoke --inline \
        --fid-weights "$weights"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)  date: $(date -u +%F)"
python3 scripts/gpu_bench.py check "$faces" "$work" --train-steps "${TRAIN_STEPS:-0}" \
    --batch "${BATCH:-0}" --sample-n "${SAMPLE_N:-0}" --sample-compile "${SAMPLE_COMPILE:-}" \
    --peer "${PEER:-}" --fid-weights "$weights"
