#!/usr/bin/env bash
# Benchmarks reject bad flag values with exit 2 and an error naming the flag and the value.
#   bench_flags_test.sh DECODE_BENCH MODEL_DIR [GEMM_BENCH]
set -u
decode_bench="$1" model="$2" gemm_bench="${3:-}"
failures=0
expect() {  # expect "MESSAGE" COMMAND...: exit status 2 and MESSAGE on stderr
  local want="$1"; shift
  local err status
  err="$("$@" 2>&1 >/dev/null)"; status=$?
  if [ "$status" -ne 2 ] || [[ "$err" != *"$want"* ]]; then
    echo "FAIL: $* -> exit $status, stderr: $err (expected exit 2 and: $want)"
    failures=$((failures + 1))
  fi
}
expect "--batch-sizes: '0' is not an integer in [1, " "$decode_bench" --model "$model" --batch-sizes 8,0
expect "--batch-sizes: 'x' is not an integer" "$decode_bench" --model "$model" --batch-sizes x
if [ -n "$gemm_bench" ]; then
  expect "--rows: '65' is not an integer in [1, 64]" "$gemm_bench" --rows 8,65
  expect "--rows: '' is not an integer" "$gemm_bench" --rows 8,
  expect "--iterations: 0 is not a positive integer" "$gemm_bench" --iterations 0
  expect "--bogus" "$gemm_bench" --bogus 1
fi
[ "$failures" -eq 0 ] && echo "bench flag errors: ok"
exit "$failures"
