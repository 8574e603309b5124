# Sourced by serve_comparison.sh and serve_rounds.sh: settings, readiness, the vLLM peer's launch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
N=${NUM_REQUESTS:-16}
TOKENS=${MAX_TOKENS:-128}
DTYPE=${DTYPE:-bfloat16}  # both servers' dtype (float32 is what `--dtype auto` picks on AVX2-only CPUs)
MODEL_DIR=$($PY -c 'from quietstar.default_model import default_model_dir; print(default_model_dir())')
mkdir -p "$OUT"

wait_healthy() {  # url
  for _ in $(seq 1 600); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
  echo "server at $1 did not come up" >&2; return 1
}

start_vllm() {  # log-file; the peer on port 8093 in the background (its best settings, peers.md)
  LD_PRELOAD=${VLLM_PRELOAD:-} HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2 \
    VLLM_CPU_NUM_OF_RESERVED_CPU=0 "$VLLM_PY" -m vllm.entrypoints.openai.api_server \
    --model "$MODEL_DIR" --served-model-name smollm2 --dtype "$DTYPE" --host 127.0.0.1 \
    --port 8093 --max-model-len 2048 >"$1" 2>&1 &
}
