#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py: what it runs and measures). From the repository root:
#   bash benchmarks/gpu_check.sh          one CUDA device, under 8 minutes
#   bash benchmarks/gpu_check.sh --dry    the CPU stand-in with tiny shapes (the test suite runs it)
# Results: gpu_check.json, gpu_check.md, gpu_tests.log and gpu_check.log in $OUT when it is set
# (the device tool sets it), else runs/gpu_check. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The Python side keeps its own budget (420 s; dry 120 s) and rewrites its results after every
# section; this hard stop only ends a hang, leaving the sections finished so far on disk.
# gpu_machine --hide: the packages the GPU machine lacks cannot be imported here either.
timeout --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-470}" \
    "$python" -m benchmarks.gpu_machine --hide run benchmarks.gpu_check --out "$out" "$@" 2>&1 |
    tee "$out/gpu_check.log"
