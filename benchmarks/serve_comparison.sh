#!/usr/bin/env bash
# Side-by-side HTTP load run: quietstar serve and the vLLM CPU peer (../shared/docs/peers.md) on
# the same model folder, same client, prompts and token counts. Results: $OUT/*.json|md.
#   VLLM_PY=/tmp/peer-vllm/bin/python benchmarks/serve_comparison.sh
# VLLM_PRELOAD=/tmp/peer-vllm/lib/libiomp5.so preloads Intel OpenMP into the peer (its best setting).
# DTYPE=float32 runs both servers in fp32 (default bfloat16).
# QS_COMPILED=1 also runs quietstar with --compile on --compile-sizes 1,8 (thoughts off;
# results quietstar-compiled-*).
OUT=${OUT:-runs/bench}
source "$(dirname "$0")/serve_common.sh"
THINK_N=${THINK_REQUESTS:-8}       # thoughts on costs L+2 steps per token: fewer, shorter requests
THINK_TOKENS=${THINK_TOKENS:-32}
bench() {  # base-url name extra-args... (later --num-requests / --max-tokens win)
  local url=$1 name=$2; shift 2
  $PY -m benchmarks serve --base-url "$url" --concurrency 1,8 --num-requests "$N" \
    --max-tokens "$TOKENS" --endpoint completions --out "$OUT/$name" "$@"
}

$PY -m server --model default --dtype "$DTYPE" --port 8090 --max-num-seqs 8 \
  >"$OUT/quietstar-server.log" 2>&1 &
QS=$!
trap 'kill $QS 2>/dev/null || true' EXIT
wait_healthy http://127.0.0.1:8090/health
bench http://127.0.0.1:8090/v1 quietstar-thoughts-off --thoughts off
bench http://127.0.0.1:8090/v1 quietstar-thoughts-on --thoughts on --thought-tokens 8 \
  --num-requests "$THINK_N" --max-tokens "$THINK_TOKENS"
kill $QS; wait $QS 2>/dev/null || true

if [ -n "${QS_COMPILED:-}" ]; then
  $PY -m server --model default --dtype "$DTYPE" --port 8090 --max-num-seqs 8 --compile on \
    --compile-sizes 1,8 >"$OUT/quietstar-compiled-server.log" 2>&1 &
  QS=$!
  wait_healthy http://127.0.0.1:8090/health
  bench http://127.0.0.1:8090/v1 quietstar-compiled-thoughts-off --thoughts off
  kill $QS; wait $QS 2>/dev/null || true
fi

if [ -n "${VLLM_PY:-}" ]; then
  start_vllm "$OUT/vllm-server.log"
  VL=$!
  trap 'kill $VL 2>/dev/null || true' EXIT
  wait_healthy http://127.0.0.1:8093/health
  bench http://127.0.0.1:8093/v1 vllm-cpu
  kill $VL; wait $VL 2>/dev/null || true
fi
