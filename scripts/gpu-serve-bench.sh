#!/usr/bin/env bash
# The server end to end on the GPU machine (issue 17's table), after scripts/gpu-build.sh built
# .gpu/build (it calls this script when GLMSERVE_GPU_SERVE=1, the default; it runs alone too):
#   1. decode_bench on the same config at the same batch sizes (the engine's ceiling);
#   2. `glmserve serve --device cuda --random-weights` (GLM-4-9B config, bf16) with gRPC, HTTP and
#      metrics ports on 127.0.0.1, ready by the gRPC health probe (or its "serving on" line);
#   3. glmload --stream through gRPC, 128-token prompts, 128 new tokens, a closed-loop sweep over
#      the levels, three mixes: eos_ignored (--ignore-eos true: min_new_tokens = max_new_tokens),
#      eos (--ignore-eos false), open_autoglm (the Open-AutoGLM client's settings: temperature 0,
#      top_p 0.85, frequency_penalty 0.2);
#   4. one level through the OpenAI HTTP API, streaming (glmload --http);
#   5. GET /metrics once with curl (the machine's curl, no prefix libraries: --metrics-port works);
#   6. SIGTERM, bounded wait for the drain;
#   7. $OUT/serve_table.md: mix, streams, tok/s, ratio to decode_bench at that batch, steady tok/s
#      and its ratio (ids that arrived between GLMSERVE_SERVE_WARMUP, 1s, into the level and the end
#      of sending: no start-up burst, no drain), TTFT and ITL p50/p99 (from glmload's --json-out),
#      errors.
# Before 2-7, each in a server of its own (so the sweep's server runs without them):
#   P. GLMSERVE_SERVE_PROFILE=1 (default; 0 skips): Kineto profile of GLMSERVE_PROFILE_STEPS (64) executor steps at
#      GLMSERVE_PROFILE_STREAMS (64) streams (eos ignored), after GLMSERVE_PROFILE_AFTER_STEPS (600) steps of that load, grouped
#      by step kind with bench/summarize_trace.py --by-step -> serve_profile.md (GLMSERVE_PROFILE_KERNELS=N: with
#      each kind's N costliest kernels by name);
#   C. GLMSERVE_SERVE_CAPS="64 128 256 512": --max-prefill-tokens-with-decodes at each value, 64
#      streams (eos ignored) -> serve_caps.md (the prefill budget's TTFT / ITL / tok/s trade-off);
#   K. GLMSERVE_SERVE_PREFIX=1 (0 by default): --prefix-caching false / true at 64 streams, prompts
#      of GLMSERVE_SERVE_PREFIX_SHARED (1024) shared tokens + 128 of their own -> serve_prefix.md;
#   O. GLMSERVE_SERVE_OOM=1 (default; 0 skips): OOM storm against real CUDA OOM (GLMSERVE_CUDA_MEMORY_HEADROOM_MB=
#      GLMSERVE_SERVE_OOM_HEADROOM_MB, 96: the device memory held after the warm-up step + that
#      much; the hook first fills the free space inside held segments with ballast, ~1.1 GiB on an
#      H200) through the running server: glmload sends 2,048 requests of 64 prompt tokens and 32
#      new ones at 256 streams to a server taking 256 at once: the first wave's step of 80 prompts
#      (their rows' activations and [151552] fp32 logits) outgrows the headroom, the batch limit
#      halves and climbs back, and a lone request's step (a few MiB) always fits. On an H100
#      (2026-12-06) headroom 64 and 128 gave that (1,024 of 1,024 ok, one OOM event each), 256 none.
#      The storm before it (64 streams of 512-token prompts, 16 MiB) depended on the start's memory
#      layout: a lone 512-token prompt needs ~100-128 MiB here, and once it fit, so did the rest.
#      Every request must succeed (sent = ok, lost 0) with glmserve_oom_events_total > 0 ->
#      serve_oom.md.
# Everything goes to $OUT (or .gpu/out): serve.log (server stderr), serve_<mix>.{json,md,log},
# serve_http.*, serve_decode_bench.md, serve_metrics.txt, serve_table.md.
# Switches: GLMSERVE_SERVE_LEVELS=1,8,32,64,128,256 GLMSERVE_SERVE_DURATION=15s (per level)
# GLMSERVE_SERVE_RATES="" (open-loop rates, requests/s, after the mixes: serve_open.md)
# GLMSERVE_SERVE_MIXES="eos_ignored eos open_autoglm" ("" for none: open-loop rates only) GLMSERVE_SERVE_HTTP=1
# GLMSERVE_SERVE_HTTP_CONCURRENCY=64 GLMSERVE_SERVE_MAX_BATCH=256 GLMSERVE_SERVE_DECODE_BENCH=1
# GLMSERVE_SERVE_START_TIMEOUT=300 (s, model load + graph capture) GLMSERVE_SERVE_FLAGS="" (more
# serve flags, e.g. "--max-batch-tokens 4096") GLMSERVE_SERVE_MODEL=bench/configs/glm-4-9b-chat-hf
# GLMSERVE_SERVE_DEVICE=cuda GLMSERVE_SERVE_DTYPE=bfloat16 GLMSERVE_HBM_GBPS (decode_bench's roofline; 4800 on an H200).
# At the defaults: ~5 min of load (6 levels x 3 mixes x 15 s, plus drains, warm-up and HTTP) and
# ~1-2 min for decode_bench and the server's start.
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
build="${GLMSERVE_BUILD_DIR:-.gpu/build}"
model="${GLMSERVE_SERVE_MODEL:-bench/configs/glm-4-9b-chat-hf}"
levels="${GLMSERVE_SERVE_LEVELS:-1,8,32,64,128,256}"
duration="${GLMSERVE_SERVE_DURATION:-15s}"
warmup="${GLMSERVE_SERVE_WARMUP:-1s}"
mixes="${GLMSERVE_SERVE_MIXES-eos_ignored eos open_autoglm}"
http_concurrency="${GLMSERVE_SERVE_HTTP_CONCURRENCY:-64}"
max_batch="${GLMSERVE_SERVE_MAX_BATCH:-256}"
start_timeout="${GLMSERVE_SERVE_START_TIMEOUT:-300}"
device="${GLMSERVE_SERVE_DEVICE:-cuda}"
dtype="${GLMSERVE_SERVE_DTYPE:-bfloat16}"
status=0

for bin in "$build/glmserve" "$build/bench/glmload"; do
  [ -x "$bin" ] || { echo "gpu-serve-bench: $bin not built (scripts/gpu-build.sh builds it)"; exit 1; }
done
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)" http_port="$(free_port)" metrics_port="$(free_port)"
vocab="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$model/config.json")"

# 1. The engine's ceiling at the same batch sizes (before the server takes the GPU's memory).
if [ "${GLMSERVE_SERVE_DECODE_BENCH:-1}" = 1 ]; then
  gbps="${GLMSERVE_HBM_GBPS:-3350}"
  [ -z "${GLMSERVE_HBM_GBPS:-}" ] && grep -q H200 "$out/gpu.txt" 2>/dev/null && gbps=4800
  echo "== decode_bench at $levels (the engine alone)"
  timeout 600 "$build/bench/decode_bench" --model "$model" --random-weights --device "$device" --dtype "$dtype" \
    --hbm-gbps "$gbps" --batch-sizes "$levels" --prompt-tokens 128 --new-tokens 128 \
    >"$out/serve_decode_bench.md" 2>"$out/serve_decode_bench.log" || { echo "decode_bench failed"; status=1; }
  cat "$out/serve_decode_bench.md"
fi

# 2. The server. 256 streams: HTTP/2 streams per connection and HTTP threads above the load.
# shellcheck disable=SC2206  # one word per flag
extra=(${GLMSERVE_SERVE_FLAGS:-})
server_pid=""
probe="$build/tests/deploy/glmserve_health_probe"
# Until the card's memory is given back (at most 30 s): a process that just exited (decode_bench,
# the server before) may still hold it, and a server sizing its KV pool from the free memory would
# start with less than it will have.
wait_gpu_released() {
  for _ in $(seq 1 60); do
    local used
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
    [ -z "$used" ] || [ "$used" -lt 1024 ] && return 0
    sleep 0.5
  done
  echo "the card still holds ${used} MiB 30 s after the last process ended"
}

start_server() {  # start_server LOG [FLAGS...]: a server on the ports above, ready or exit 1
  local log=$1; shift
  wait_gpu_released
  local cmd=("$build/glmserve" serve --model "$model" --random-weights --device "$device" --dtype "$dtype"
    --host 127.0.0.1 --port "$port" --http-port "$http_port" --metrics-port "$metrics_port"
    --max-batch "$max_batch" --max-concurrent-streams 1024 --http-threads $((http_concurrency + 32))
    --log-requests false --log-format text "${extra[@]}" "$@")
  echo "== ${cmd[*]}"
  "${cmd[@]}" 2>"$log" &
  server_pid=$!
  local ready=0
  for _ in $(seq 1 $((start_timeout * 2))); do
    if ! kill -0 "$server_pid" 2>/dev/null; then echo "the server exited while starting:"; tail -20 "$log"; exit 1; fi
    if grep -q "serving on" "$log"; then
      if [ ! -x "$probe" ] || "$probe" -addr "127.0.0.1:$port" -timeout-ms 2000 >/dev/null 2>&1; then ready=1; break; fi
    fi
    sleep 0.5
  done
  if [ "$ready" != 1 ]; then echo "the server was not ready within ${start_timeout} s:"; tail -20 "$log"; exit 1; fi
  grep -E "ready in|metrics on|http serving on|serving on|HEADROOM" "$log"
}
stop_server() {
  [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null || return 0
  kill -TERM "$server_pid"
  for _ in $(seq 1 120); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$server_pid" 2>/dev/null; then
    echo "server still running 60 s after SIGTERM: SIGKILL"; kill -KILL "$server_pid"; status=1
  fi
  wait "$server_pid"; local rc=$?
  echo "server exited $rc after SIGTERM (0 = drained)"; [ "$rc" = 0 ] || status=1
  server_pid=""
}
trap stop_server EXIT
# Every level also records the server's steps and ms a step by phase over its steady window (server_window).
glmload_grpc() {
  "$build/bench/glmload" --target "127.0.0.1:$port" --metrics-target "127.0.0.1:$metrics_port" --stream \
    --deadline-ms 300000 --no-progress "$@"
}
# Every load draws its prompts from a seed of its own: prefix caching is on by default, and a load
# repeating an earlier one's prompts would find them cached and skip their prefill.
warm_up() { glmload_grpc --seed 100 --concurrency 64 --requests 128 --prompt-len 128 --max-new-tokens 16 >/dev/null 2>&1; }
level_row() { python3 bench/glmload_report.py row "$1" "$2"; }  # level_row JSON LABEL: one level's markdown row

# P. Where a step's time goes under real traffic (64 streams unless told, steady state).
if [ "${GLMSERVE_SERVE_PROFILE:-1}" = 1 ]; then
  mkdir -p .gpu/trace
  rm -f .gpu/trace/serve.json
  GLMSERVE_PROFILE_TRACE=.gpu/trace/serve.json GLMSERVE_PROFILE_AFTER_STEPS="${GLMSERVE_PROFILE_AFTER_STEPS:-600}" \
    GLMSERVE_PROFILE_STEPS="${GLMSERVE_PROFILE_STEPS:-64}" start_server "$out/serve_profile.log"
  glmload_grpc --concurrency "${GLMSERVE_PROFILE_STREAMS:-64}" --duration 12s --prompt-len 128 --max-new-tokens 128 \
    --ignore-eos true >"$out/serve_profile_load.md" 2>&1
  stop_server
  grep "executor steps written" "$out/serve_profile.log"
  python3 bench/summarize_trace.py .gpu/trace/serve.json --by-step --kernels "${GLMSERVE_PROFILE_KERNELS:-0}" \
    | tee "$out/serve_profile.md" || status=1
fi

# C. The prefill budget while others decode: TTFT against ITL and throughput, 64 streams.
if [ -n "${GLMSERVE_SERVE_CAPS:-}" ]; then
  echo "| --max-prefill-tokens-with-decodes | tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |" >"$out/serve_caps.md"
  echo "|---:|---:|---:|---:|" >>"$out/serve_caps.md"
  for cap in $GLMSERVE_SERVE_CAPS; do
    start_server "$out/serve_cap_$cap.log" --max-prefill-tokens-with-decodes "$cap"
    warm_up
    glmload_grpc --concurrency 64 --duration "$duration" --prompt-len 128 --max-new-tokens 128 --ignore-eos true --json-out "$out/serve_cap_$cap.json" \
      >"$out/serve_cap_$cap.md" 2>&1 || status=1
    stop_server
    level_row "$out/serve_cap_$cap.json" "$cap" >>"$out/serve_caps.md"
  done
  cat "$out/serve_caps.md"
fi

# K. Prefix caching (GLMSERVE_SERVE_PREFIX=1; off by default): servers of their own with
#    --prefix-caching false / true, 64 streams, prompts of GLMSERVE_SERVE_PREFIX_SHARED (1024)
#    shared tokens (one system prompt) + 128 of their own, 128 new tokens -> serve_prefix.md.
if [ "${GLMSERVE_SERVE_PREFIX:-0}" = 1 ]; then
  shared="${GLMSERVE_SERVE_PREFIX_SHARED:-1024}"
  echo "| --prefix-caching | tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |" >"$out/serve_prefix.md"
  echo "|---|---:|---:|---:|" >>"$out/serve_prefix.md"
  for caching in false true; do
    start_server "$out/serve_prefix_$caching.log" --prefix-caching "$caching"
    warm_up
    glmload_grpc --concurrency 64 --duration "$duration" --prompt-len $((shared + 128)) --shared-prefix-len "$shared" \
      --max-new-tokens 128 --ignore-eos true --json-out "$out/serve_prefix_$caching.json" \
      >"$out/serve_prefix_$caching.md" 2>&1 || status=1
    env -u LD_LIBRARY_PATH curl -sf --max-time 10 "http://127.0.0.1:$metrics_port/metrics" | grep "^glmserve_prefix_cache"
    stop_server
    level_row "$out/serve_prefix_$caching.json" "$caching" >>"$out/serve_prefix.md"
  done
  cat "$out/serve_prefix.md"
fi

# O. Real CUDA out-of-memory through the running server: no request lost.
if [ "${GLMSERVE_SERVE_OOM:-1}" = 1 ]; then
  GLMSERVE_CUDA_MEMORY_HEADROOM_MB="${GLMSERVE_SERVE_OOM_HEADROOM_MB:-96}" start_server "$out/serve_oom.log" \
    --max-batch 256 --max-batch-tokens 16384
  glmload_grpc --concurrency 256 --requests 2048 --prompt-len 64 --max-new-tokens 32 --json-out "$out/serve_oom.json" \
    >"$out/serve_oom_load.md" 2>&1
  oom_rc=$?
  env -u LD_LIBRARY_PATH curl -sf --max-time 10 "http://127.0.0.1:$metrics_port/metrics" >"$out/serve_oom_metrics.txt"
  stop_server
  python3 bench/glmload_report.py oom "$out/serve_oom.json" "$out/serve_oom_metrics.txt" "$oom_rc" | tee "$out/serve_oom.md" \
    || status=1
fi

if [ -z "$levels" ] || [ "${GLMSERVE_SERVE_SWEEP:-1}" != 1 ]; then trap - EXIT; exit $status; fi
start_server "$out/serve.log"

load() {  # load NAME SEED FLAGS...: glmload through gRPC, streaming, the sweep
  local name=$1 seed=$2; shift 2
  echo "== glmload $name: $*"
  glmload_grpc --sweep "$levels" --duration "$duration" --warmup "$warmup" --prompt-len 128 --max-new-tokens 128 --seed "$seed" \
    --json-out "$out/serve_$name.json" "$@" >"$out/serve_$name.md" 2>"$out/serve_$name.log" \
    || { echo "glmload $name: exit $? (errors or failed; $out/serve_$name.log)"; status=1; }
  cat "$out/serve_$name.md"
}
# Warm-up (not recorded): two waves of short requests at the full batch.
"$build/bench/glmload" --target "127.0.0.1:$port" --stream --concurrency "$max_batch" --requests $((2 * max_batch)) \
  --seed 101 --prompt-len 128 --max-new-tokens 16 --deadline-ms 300000 --no-progress >"$out/serve_warmup.md" 2>&1 || true
for mix in $mixes; do
  case "$mix" in
    eos_ignored) load eos_ignored 1 --ignore-eos true ;;
    eos) load eos 2 --ignore-eos false ;;
    open_autoglm) load open_autoglm 3 --ignore-eos false --temperature 0 --top-p 0.85 --frequency-penalty 0.2 ;;
    *) echo "unknown mix '$mix' (eos_ignored eos open_autoglm)"; status=1 ;;
  esac
done

# 3b. Open loop (GLMSERVE_SERVE_RATES="36 60", none by default): Poisson arrivals at each rate
#     (requests/s), eos ignored, latency from the scheduled arrival -> serve_open.md (a closed
#     loop's streams finish and return in step; these arrivals do not).
if [ -n "${GLMSERVE_SERVE_RATES:-}" ]; then
  echo "| load | requests ok / dropped | tok/s | steady tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | errors |" >"$out/serve_open.md"
  echo "|---|---:|---:|---:|---:|---:|---:|" >>"$out/serve_open.md"
  for rate in $GLMSERVE_SERVE_RATES; do
    glmload_grpc --rate "$rate" --duration "$duration" --warmup "$warmup" --max-in-flight 1024 --prompt-len 128 \
      --max-new-tokens 128 --ignore-eos true --seed 5 --json-out "$out/serve_rate_$rate.json" \
      >"$out/serve_rate_$rate.md" 2>&1 || { echo "glmload --rate $rate: exit $?"; status=1; }
    python3 bench/glmload_report.py open-row "$out/serve_rate_$rate.json" "$rate" >>"$out/serve_open.md"
  done
  cat "$out/serve_open.md"
fi

# 4. One level through the OpenAI HTTP API (SSE streaming).
if [ "${GLMSERVE_SERVE_HTTP:-1}" = 1 ]; then
  echo "== glmload http: --concurrency $http_concurrency through /v1/completions, streaming"
  "$build/bench/glmload" --http --target "127.0.0.1:$http_port" --stream --concurrency "$http_concurrency" \
    --duration "$duration" --warmup "$warmup" --prompt-len 128 --max-new-tokens 128 --ignore-eos true --vocab-size "$vocab" --seed 4 \
    --deadline-ms 300000 --no-progress --json-out "$out/serve_http.json" >"$out/serve_http.md" 2>"$out/serve_http.log" \
    || { echo "glmload http: exit $? ($out/serve_http.log)"; status=1; }
  cat "$out/serve_http.md"
fi

# 5. /metrics with the machine's curl: no prefix libraries in its environment.
echo "== GET http://127.0.0.1:$metrics_port/metrics"
if env -u LD_LIBRARY_PATH curl -sf --max-time 10 "http://127.0.0.1:$metrics_port/metrics" >"$out/serve_metrics.txt" \
   && grep -q "^glmserve_build_info" "$out/serve_metrics.txt"; then
  grep -E "^glmserve_(generated_tokens_total|requests_total|batch_limit|oom_events_total|prefix_cache_[a-z_]*|step_phase_seconds_total|device_seconds_total|batch_size_count)" \
    "$out/serve_metrics.txt"
  # Where the engine thread's time went a step, over the whole run (the GPU may idle in all but device_wait).
  python3 bench/glmload_report.py phases "$out/serve_metrics.txt" | tee "$out/serve_phases.md"
else
  echo "metrics scrape failed (curl exit or no glmserve_build_info)"; status=1
fi

# 6. Drain.
trap - EXIT
stop_server

# 7. The table.
python3 bench/glmload_report.py table "$out" | tee "$out/serve_table.md"
exit $status
