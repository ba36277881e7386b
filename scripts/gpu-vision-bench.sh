#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh has built .gpu/build: `glmserve serve` with
# AutoGLM-Phone-9B's architecture (bench/configs/autoglm-phone-9b: GLM-4.1V-9B sizes, random bf16
# weights, the bundled tiny tokenizer) and --max-pixels 5000000, driven over the OpenAI HTTP API by
# bench/autoglm_bench.py: one agent step with a 1080x2400 screenshot (a 168x74 patch grid, 3,108
# image tokens) after ~2,000 tokens of text history (TTFT, 150 output tokens), then
# GLMSERVE_VISION_AGENTS (16) concurrent agents of GLMSERVE_VISION_STEPS (5) steps each. Logs and
# results go to $OUT (or .gpu/out).
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
build="${GLMSERVE_BUILD_DIR:-.gpu/build}"
model="${GLMSERVE_VISION_MODEL:-bench/configs/autoglm-phone-9b}"
agents="${GLMSERVE_VISION_AGENTS:-16}"
steps="${GLMSERVE_VISION_STEPS:-5}"
[ -x "$build/glmserve" ] || { echo "gpu-vision-bench: $build/glmserve not built"; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)" http_port="$(free_port)" metrics_port="$(free_port)"
log="$out/vision_serve.log"
# GLMSERVE_VISION_PROFILE=1: a device trace of the first measured step's prefill (after the warm-up
# step: ~155 engine steps), summarized by kind of step into vision_profile.md.
profile_env=()
if [ "${GLMSERVE_VISION_PROFILE:-0}" = 1 ]; then
  mkdir -p .gpu/trace && rm -f .gpu/trace/vision.json
  profile_env=(GLMSERVE_PROFILE_TRACE=.gpu/trace/vision.json GLMSERVE_PROFILE_AFTER_STEPS="${GLMSERVE_VISION_PROFILE_AFTER:-150}"
    GLMSERVE_PROFILE_STEPS="${GLMSERVE_VISION_PROFILE_STEPS:-12}")
fi
env "${profile_env[@]}" "$build/glmserve" serve --model "$model" --random-weights --device cuda --dtype bfloat16 --host 127.0.0.1 \
  --port "$port" --http-port "$http_port" --metrics-port "$metrics_port" --max-pixels 5000000 --max-batch 64 --log-format text \
  ${GLMSERVE_VISION_SERVE_FLAGS:-} 2>"$log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 600); do
  kill -0 "$pid" 2>/dev/null || { echo "the server exited while starting:"; tail -20 "$log"; exit 1; }
  grep -q "http serving on" "$log" && break
  sleep 0.5
done
grep -E "ready in|http serving on|KV pool" "$log" | head -5
status=0
timeout 900 python3 bench/autoglm_bench.py --url "http://127.0.0.1:$http_port" --agents "$agents" --steps "$steps" \
  | tee "$out/vision_bench.txt" || status=1
grep -E "error|Error" "$log" | tail -5
# The image metrics after the run: one image per request the engine took (the single step's
# warm-up and 3 repeats, agents x steps), its tokens and the host's decode + preprocessing per image.
echo "image metrics (expected images: $((4 + agents * steps))):"
python3 - "$metrics_port" <<'EOF2' | tee "$out/vision_metrics.txt" || status=1
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
lines = [line for line in text.splitlines() if line.startswith("glmserve_image") and "_bucket" not in line]
print("\n".join(lines) if lines else "no glmserve_image* metrics")
sys.exit(0 if lines else 1)
EOF2
# The single-step phase from the server's side (warm-up step first): where each request's time went
# before the engine (host_ms = JSON, template, tokens, image decode + preprocessing) and its TTFT.
echo "server side, first 4 requests: host_ms image_decode_ms image_preprocess_ms | ttft_ms"
paste -d'|' <(grep "request accepted" "$log" | head -4 | grep -oE "(host_ms|image_decode_ms|image_preprocess_ms)=[0-9.]+" \
  | paste -d' ' - - -) <(grep "first token" "$log" | head -4 | grep -oE "ttft_ms=[0-9.]+") | tee "$out/vision_server_side.txt"
if [ "${GLMSERVE_VISION_PROFILE:-0}" = 1 ] && [ -f .gpu/trace/vision.json ]; then
  python3 bench/summarize_trace.py .gpu/trace/vision.json --by-step | tee "$out/vision_profile.md" || status=1
fi
exit $status
