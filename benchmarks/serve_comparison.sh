#!/usr/bin/env bash
# Side-by-side HTTP load run: quietstar serve and the vLLM CPU peer (../shared/docs/peers.md) on
# the same model folder, same client, prompts and token counts. Results: $OUT/*.json|md.
#   VLLM_PY=/tmp/peer-vllm/bin/python benchmarks/serve_comparison.sh
# VLLM_PRELOAD=/tmp/peer-vllm/lib/libiomp5.so preloads Intel OpenMP into the peer (its best setting).
# QS_COMPILED=1 also runs quietstar with --compile on --compile-sizes 1,8 (thoughts off;
# results quietstar-compiled-*).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench}
N=${NUM_REQUESTS:-16}
TOKENS=${MAX_TOKENS:-128}
THINK_N=${THINK_REQUESTS:-8}       # thoughts on costs L+2 steps per token: fewer, shorter requests
THINK_TOKENS=${THINK_TOKENS:-32}
MODEL_DIR=$($PY -c 'from quietstar.default_model import default_model_dir; print(default_model_dir())')
mkdir -p "$OUT"

wait_healthy() {  # url
  for _ in $(seq 1 300); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
  echo "server at $1 did not come up" >&2; return 1
}
bench() {  # base-url name extra-args... (later --num-requests / --max-tokens win)
  local url=$1 name=$2; shift 2
  $PY -m benchmarks serve --base-url "$url" --concurrency 1,8 --num-requests "$N" \
    --max-tokens "$TOKENS" --endpoint completions --out "$OUT/$name" "$@"
}

$PY -m server --model default --port 8090 --max-num-seqs 8 >"$OUT/quietstar-server.log" 2>&1 &
QS=$!
trap 'kill $QS 2>/dev/null || true' EXIT
wait_healthy http://127.0.0.1:8090/health
bench http://127.0.0.1:8090/v1 quietstar-thoughts-off --thoughts off
bench http://127.0.0.1:8090/v1 quietstar-thoughts-on --thoughts on --thought-tokens 8 \
  --num-requests "$THINK_N" --max-tokens "$THINK_TOKENS"
kill $QS; wait $QS 2>/dev/null || true

if [ -n "${QS_COMPILED:-}" ]; then
  $PY -m server --model default --port 8090 --max-num-seqs 8 --compile on --compile-sizes 1,8 \
    >"$OUT/quietstar-compiled-server.log" 2>&1 &
  QS=$!
  wait_healthy http://127.0.0.1:8090/health
  bench http://127.0.0.1:8090/v1 quietstar-compiled-thoughts-off --thoughts off
  kill $QS; wait $QS 2>/dev/null || true
fi

if [ -n "${VLLM_PY:-}" ]; then
  LD_PRELOAD=${VLLM_PRELOAD:-} HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_NUM_OF_RESERVED_CPU=0 \
    "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
    --served-model-name smollm2 --dtype bfloat16 --host 127.0.0.1 --port 8093 \
    --max-model-len 2048 >"$OUT/vllm-server.log" 2>&1 &
  VL=$!
  trap 'kill $VL 2>/dev/null || true' EXIT
  wait_healthy http://127.0.0.1:8093/health
  bench http://127.0.0.1:8093/v1 vllm-cpu
  kill $VL; wait $VL 2>/dev/null || true
fi
