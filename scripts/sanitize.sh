#!/usr/bin/env bash
# Builds glmserve and its tests with sanitizers into build-<kind>/ and runs ctest under them:
#   scripts/sanitize.sh                      # AddressSanitizer + UndefinedBehaviorSanitizer, all tests
#   scripts/sanitize.sh thread -R 'engine_test|watchdog_test|request_session_test'
# The first argument (address,undefined = default, or thread) picks the sanitizers; the rest go to
# ctest. Reports go to build-<kind>/sanitizer-logs/ (log_path: the servers that the Python tests
# start write there too, and a test can pass while its server reported). Not part of CI: the full
# ASan build takes 40+ minutes on 2 cores. LibTorch, gRPC and protobuf are not instrumented, so
# ThreadSanitizer reports whose two stacks lie inside them are noise.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind="${1:-address,undefined}"
[ "$#" -gt 0 ] && shift
case "$kind" in
  address,undefined | address | undefined) dir="$repo_root/build-asan" ;;
  thread) dir="$repo_root/build-tsan" ;;
  *) echo "sanitize.sh: unknown sanitizers '$kind' (address,undefined or thread)" >&2; exit 2 ;;
esac
"$repo_root/scripts/install-deps.sh"
if [ ! -f "$dir/build.ninja" ]; then
  cmake -S "$repo_root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGLMSERVE_SANITIZE="$kind" >/dev/null
fi
cmake --build "$dir"
logs="$dir/sanitizer-logs"
rm -rf "$logs" && mkdir -p "$logs"
# allocator_may_return_null: tests that ask for an impossible allocation expect the error, not
# ASan's abort.
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
export TSAN_OPTIONS="second_deadlock_stack=1:log_path=$logs/tsan"
status=0
ctest --test-dir "$dir" --output-on-failure -j "${GLMSERVE_TEST_JOBS:-2}" --timeout 1800 "$@" || status=$?
if compgen -G "$logs/*" >/dev/null; then
  echo "sanitize.sh: reports in $logs:"
  grep -l -E "ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:" "$logs"/* || true
  status=1
fi
exit $status
