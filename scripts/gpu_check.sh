#!/usr/bin/env bash
# The GPU check of issues 14 and 22: one call of the device tool on one H100/H200-class
# card. It measures, in the order of their value (scripts/gpu_check/plan.py):
#   - the card and its bf16 matmul rate; the prepare and fid_ref stages on the faces;
#   - training img/s, peak memory, measured train FLOPs/image and MFU of the research
#     log's #5 UNet at 64 px in bf16 through the train stage's Lightning loop, plain;
#   - the generate stage: 50,000 DDIM-50 samples at 64 px (bf16, compiled), and their
#     FID through ddpm.evaluation.score (or the FID of the shards a cut generation kept);
#   - diffusers' UNet2DModel laid out the same (scripts/diffusers_peer.py) trained the
#     same way; the loader alone, per worker count; the training with torch.compile +
#     channels_last; with several GPUs, DDP training and generation split across them.
# Each part runs in its own process under a cap cut to what is left of the budget
# (--budget-s, default 520 s, counted from this script's start, pip included), and
# its row goes to $OUT the moment it ends (results.jsonl, table.md, failed.log), so a
# call cut short still returns every finished row.
#
#   bash scripts/gpu_check.sh --pack [FACES]   here, first: copies the faces (default
#       ../shared/data/faces-a) into .faces/, downloads into .whl/ the wheels the device
#       image lacks, and prints the exact call: command, carry list, time-out
#   bash scripts/gpu_check.sh [--budget-s S] [FACES]   on the device (FACES default .faces)
#   bash scripts/gpu_check.sh --smoke [FACES]   the same path on tiny sizes on the CPU
#       (tests/test_gpu_check.py; FACES default demo)
# Environment: OUT (the results folder; default WORK/results), WORK (a temp dir),
# COMMIT (for the table; --pack puts it in the command), TRAIN_STEPS (150), BATCH (128),
# SAMPLE_N (50000), SAMPLE_COMPILE (default), PEER (plain | compile: how the diffusers
# peer trains; its ratio is against the ddpm row trained the same way), FID_WEIGHTS.
# Inception weights: the official file (96 MB) is over the 64 MiB a call carries and the
# device has no network, so unless FID_WEIGHTS names a file (or torch hub's cache holds
# one) the check calibrates stand-in weights in the run; the table then says STAND-IN.
started=$(date +%s.%N)  # first: the budget counts the pip install too
set -euo pipefail
mode=gpu budget=520 faces=""
while (($#)); do
    case "$1" in
        --smoke) mode=smoke ;;
        --pack) mode=pack ;;
        --budget-s) budget=${2:?--budget-s needs a number of seconds}; shift ;;
        -*) echo "gpu_check.sh: unknown option $1 (--pack, --smoke, --budget-s S)" >&2; exit 2 ;;
        *) faces=$1 ;;
    esac
    shift
done
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if [[ $mode == pack ]]; then
    exec python3 scripts/gpu_bench.py pack ${faces:+"$faces"}
fi
faces=${faces:-$([[ $mode == smoke ]] && echo demo || echo .faces)}
work=${WORK:-$(mktemp -d)}
hub_weights="${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth"
weights=${FID_WEIGHTS:-$( [[ -f "$hub_weights" ]] && echo "$hub_weights" || true)}
fail() {  # one line on stderr and, since only $OUT comes back from the device, in $OUT
    echo "gpu_check.sh: $1" >&2
    if [[ -n ${OUT:-} ]]; then mkdir -p "$OUT" && echo "gpu_check.sh: $1" >>"$OUT/failed.log"; fi
    exit 2
}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || fail "pip could not install the carried .whl/*.whl"
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# Every part imports these; without them each would fail the same way, one by one.
if ! missing=$(python3 -c "import pytorch_fid, diffusers" 2>&1); then
    fail "${missing##*$'\n'}: run 'bash scripts/gpu_check.sh --pack' here and carry .whl"
fi
if [[ $mode == smoke ]]; then
    # inductor takes minutes on a CPU; aot_eager traces the same graphs (ddpm/models/compiling.py)
    export DDPM_COMPILE_BACKEND=${DDPM_COMPILE_BACKEND:-aot_eager}
else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "commit: $commit  date: $(date -u +%F)  budget: $budget s  results: ${OUT:-$work/results}"
smoke_flag=$([[ $mode == smoke ]] && echo --smoke || true)
python3 scripts/gpu_bench.py check "$faces" "$work" $smoke_flag --results "${OUT:-}" \
    --started "$started" --budget-s "$budget" --commit "$commit" \
    --train-steps "${TRAIN_STEPS:-0}" --batch "${BATCH:-0}" --sample-n "${SAMPLE_N:-0}" \
    --sample-compile "${SAMPLE_COMPILE:-}" --peer "${PEER:-}" --fid-weights "$weights"
