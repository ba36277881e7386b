#!/usr/bin/env bash
# Single request vs dynamic batching on the bundled model: starts `glmserve serve` on loopback
# (--port 0) with batching off (--max-batch 1) and with batching on (the default --max-batch),
# sweeps each with glmload, and prints the side-by-side markdown table (latency and QPS).
# Builds glmserve and glmload first if needed. Bounded: every server and glmload run has a timeout.
#
# usage: bench/compare-batching.sh [--sweep 1,2,4,8,16] [--duration 5s] [--prompt-len 32]
#          [--max-new-tokens 32] [--out DIR] [--model DIR] [-- extra glmserve serve flags]
# Env: GLMSERVE_BUILD_DIR (default build/); GLMSERVE_BIN and GLMLOAD_BIN (both set: no build).
# Writes DIR/{single,batching}.json, DIR/*.log,
# DIR/compare-batching.md and DIR/compare-batching.png (DIR default: a fresh temp dir).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${GLMSERVE_BUILD_DIR:-$repo_root/build}"
model="$repo_root/models/glm4-tiny"
sweep="1,2,4,8,16"
duration="5s"
prompt_len="32"
max_new="32"
out_dir=""
serve_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sweep) sweep="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --prompt-len) prompt_len="$2"; shift 2 ;;
    --max-new-tokens) max_new="$2"; shift 2 ;;
    --out) out_dir="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --) shift; serve_extra=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare-batching: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$out_dir" ] || out_dir="$(mktemp -d -t compare-batching.XXXXXX)"
mkdir -p "$out_dir"

# Build if needed (incremental: a no-op when up to date), unless both binaries are given.
glmserve="${GLMSERVE_BIN:-$build_dir/glmserve}"
glmload="${GLMLOAD_BIN:-$build_dir/bench/glmload}"
if [ -z "${GLMSERVE_BIN:-}" ] || [ -z "${GLMLOAD_BIN:-}" ]; then
  if [ ! -f "$build_dir/build.ninja" ]; then
    cmake -S "$repo_root" -B "$build_dir" -G Ninja >/dev/null
  fi
  ninja -C "$build_dir" glmserve glmload >&2
fi

levels=$(tr ',' '\n' <<<"$sweep" | grep -c .)
# Per glmload run: every level's duration plus a deadline's worth of drain each, plus slack.
load_limit=$(awk -v d="$duration" -v n="$levels" 'BEGIN {
  s = d + 0; if (d ~ /ms$/) s /= 1000; else if (d ~ /m$/) s *= 60;
  printf "%d", n * (s + 60) + 30 }')

server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# run_one LABEL [serve flags...]: one server, one glmload sweep, JSON to $out_dir/LABEL.json.
run_one() {
  local label="$1"; shift
  local log="$out_dir/$label.serve.log"
  timeout -s KILL $((load_limit + 180)) "$glmserve" serve --model "$model" --host 127.0.0.1 --port 0 \
    "$@" ${serve_extra[@]+"${serve_extra[@]}"} 2>"$log" &
  server_pid=$!
  local port=""
  for _ in $(seq 1 600); do  # up to 120 s for load + warm-up
    port=$(grep -oE 'serving on 127\.0\.0\.1:[0-9]+' "$log" | head -1 | sed 's/.*://' || true)
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || { echo "compare-batching: glmserve exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  [ -n "$port" ] || { echo "compare-batching: glmserve not serving after 120 s" >&2; cat "$log" >&2; exit 1; }
  echo "compare-batching: $label: glmserve $* on 127.0.0.1:$port" >&2
  local rc=0
  timeout -s KILL "$load_limit" "$glmload" --target "127.0.0.1:$port" --sweep "$sweep" \
    --duration "$duration" --prompt-len "$prompt_len" --max-new-tokens "$max_new" --stream \
    --deadline-ms 60000 --json-out "$out_dir/$label.json" >"$out_dir/$label.table.txt" || rc=$?
  cat "$out_dir/$label.table.txt" >&2
  kill -TERM "$server_pid" 2>/dev/null || true
  timeout 40 tail --pid="$server_pid" -f /dev/null || kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then echo "compare-batching: glmload failed ($rc)" >&2; exit 1; fi
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
run_one single --max-batch 1
run_one batching
max_batch=$(grep -oE '"max_batch": [0-9]+' "$out_dir/batching.json" | grep -oE '[0-9]+' || echo "?")

{
  echo "Single request (--max-batch 1) vs dynamic batching (default --max-batch $max_batch), $(basename "$model"),"
  echo "closed loop, InferStream, prompt $prompt_len tokens, $max_new new tokens, $duration per level;"
  echo "$(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), load average" \
    "before the runs: $load_before (other work on the machine shares the cores)."
  echo
  "$glmload" --from-json "$out_dir/single.json,$out_dir/batching.json" \
    --labels "single,batching" --plot "$out_dir/compare-batching.png"
} | tee "$out_dir/compare-batching.md"
echo "compare-batching: results in $out_dir (compare-batching.md, compare-batching.png)" >&2
