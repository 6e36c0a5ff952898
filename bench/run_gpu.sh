#!/usr/bin/env bash
# The GPU benchmark suite in one command: baseline, then each optimisation alone, so every
# before/after pair is measured on the same machine in the same session.
#
#   bench/run_gpu.sh                      # everything (about 35-45 min on an H100)
#   bench/run_gpu.sh --quick              # SD-Turbo + SDXL-Turbo, batch 1/4, no compile (~10 min)
#   bench/run_gpu.sh --wheels /path/dir   # first install pennello's deps offline from a wheel dir
#   API_SET="engine.max_batch=4" API_TAG=max-batch-4 bench/run_gpu.sh --quick
#                                         # daemon settings (section.key=value) for the API bench
#
# Results: bench/results/pipelines-gpu-<tag>.json, one file per option, and api-gpu-$API_TAG.json
# (the same models through the daemon's HTTP API, the 20-Einstein demo end to end); then
# bench/report.py refreshes the tables in docs/benchmarks.md and README.md. Needs a CUDA build of torch; no network is used.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
QUICK=0
WHEELS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -n "$WHEELS" ]]; then
    "$PYTHON" -m pip install --no-index --find-links "$WHEELS" -e .
fi
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv || true

if [[ $QUICK == 1 ]]; then
    COMMON=(--archs sd-turbo sdxl-turbo --batches 1 4 --runs 3 --warmup 1 --no-demo)
    API=(--archs sd-turbo sdxl-turbo-1024 --runs 5 --warmup 1)   # the overhead goal's model and the demo's
else
    COMMON=()
    API=()
fi
for setting in ${API_SET:-}; do API+=(--set "$setting"); done
API+=(--tag "${API_TAG:-baseline}")
bench() { echo "== bench_pipelines.py $*" >&2; "$PYTHON" bench/bench_pipelines.py "${COMMON[@]}" "$@"; }

bench --tag baseline                                       # bf16, SDPA picks its kernel
bench --tag fp16 --dtype fp16 --no-cold-start --no-png --no-demo
bench --tag sdpa-math --sdpa math --no-cold-start --no-png --no-demo      # unfused attention: what SDPA saves
bench --tag channels-last --channels-last --no-cold-start --no-png --no-demo
bench --tag vae-tiling --vae-tiling --no-cold-start --no-png --no-demo
if [[ $QUICK == 0 ]]; then
    # compile: minutes of warm-up per shape, so the 1-step models and batch 1 only
    bench --tag compile --compile --archs sd-turbo sdxl-turbo flux-schnell --batches 1 \
          --no-cold-start --no-png --no-demo
fi
echo "== bench_api.py ${API[*]}" >&2
"$PYTHON" bench/bench_api.py "${API[@]}"               # through the daemon: overhead, demo, cold start
"$PYTHON" bench/report.py
