#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh: the engine rebuilt after a fault on CUDA. A
# server on the tiny model (GLMSERVE_REBUILD_DEVICE, cuda) whose first engine throws on its step
# GLMSERVE_REBUILD_STEP (40) is driven by glmload with unary requests (requeued on the rebuilt
# engine, which loads and captures its graphs on the watchdog's build thread); every request must
# end OK, the log must show engine_fault then engine_restarted ("engine rebuilt and serving again"), and the server must drain and
# exit 0. Prints one summary line; exit 0 when all of that holds.
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1
build="${GLMSERVE_GPU_BUILD_DIR:-.gpu/build}"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
log="$out/rebuild_serve.log"
"$build/glmserve" serve --model models/glm4-tiny --device "${GLMSERVE_REBUILD_DEVICE:-cuda}" --port 0 \
  --debug-throw-on-step "${GLMSERVE_REBUILD_STEP:-40}" --log-format text >"$log" 2>&1 &
server=$!
port=""
for _ in $(seq 600); do
  port=$(sed -n 's/.*serving on 127\.0\.0\.1:\([0-9]*\).*/\1/p; s/.*serving on 0\.0\.0\.0:\([0-9]*\).*/\1/p' "$log" | head -1)
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$port" ]; then
  echo "rebuild check: the server did not serve"
  tail -20 "$log"
  kill "$server" 2>/dev/null
  exit 1
fi
timeout 300 "$build/bench/glmload" --target "127.0.0.1:$port" --concurrency 8 --requests 64 --prompt-len 16 \
  --max-new-tokens 24 --deadline-ms 120000 --no-progress >"$out/rebuild_load.md" 2>&1
load_rc=$?
kill -TERM "$server"
wait "$server"
server_rc=$?
faults=$(grep -c "engine fault" "$log")
restarts=$(grep -c "engine rebuilt and serving again" "$log")
ok=$(awk '$1 == 8 {print $2}' "$out/rebuild_load.md" | head -1)
echo "rebuild check: glmload rc=$load_rc ok=${ok:-?}/64, engine faults $faults, restarts $restarts, server exit $server_rc"
[ "$load_rc" = 0 ] && [ "${ok:-0}" = 64 ] && [ "$faults" -ge 1 ] && [ "$restarts" -ge 1 ] && [ "$server_rc" = 0 ]
