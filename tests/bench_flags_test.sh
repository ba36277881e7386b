#!/usr/bin/env bash
# Benchmarks reject bad flag values with exit 2 and an error naming the flag and the value.
#   bench_flags_test.sh DECODE_BENCH MODEL_DIR [GEMM_BENCH]
#   bench_flags_test.sh --glmload GLMLOAD      (glmload's flags only; tests/load/CMakeLists.txt)
#   bench_flags_test.sh --scheduling SCHEDULE_SIM ENGINE_HOST_BENCH   (serve's scheduling flags in
#                                              the benches that share them, and their own)
set -u
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
if [ "${1:-}" = "--glmload" ]; then
  # Checked before any connection: nothing listens on the target.
  glmload="$2" t=(--target 127.0.0.1:1 --requests 1 --no-progress)
  expect "--top-p: '0' is not a number in (0, 1]" "$glmload" "${t[@]}" --top-p 0
  expect "--top-p: '1.5' is not a number in (0, 1]" "$glmload" "${t[@]}" --top-p 1.5
  expect "--top-p: 'x' is not a number in (0, 1]" "$glmload" "${t[@]}" --top-p=x
  expect "--frequency-penalty: '2.5' is not a number in [-2, 2]" "$glmload" "${t[@]}" --frequency-penalty 2.5
  expect "--frequency-penalty: 'nan' is not a number in [-2, 2]" "$glmload" "${t[@]}" --frequency-penalty nan
  expect "--presence-penalty: '-3' is not a number in [-2, 2]" "$glmload" "${t[@]}" --presence-penalty -3
  expect "--repetition-penalty: '0' is not a number in (0, 10]" "$glmload" "${t[@]}" --repetition-penalty 0
  expect "--repetition-penalty: '11' is not a number in (0, 10]" "$glmload" "${t[@]}" --repetition-penalty 11
  expect "--repetition-penalty: '-1' is not a number in (0, 10]" "$glmload" "${t[@]}" --repetition-penalty=-1
  expect "--repetition-penalty: needs a value" "$glmload" "${t[@]}" --repetition-penalty
  expect "--http: the HTTP API does not report the vocabulary size; set --vocab-size" "$glmload" "${t[@]}" --http
  expect "--vocab-size: '0' is not an integer" "$glmload" "${t[@]}" --http --vocab-size 0
  expect "--duration: '5x' is not a duration" "$glmload" "${t[@]}" --duration 5x
  expect "--warmup: 5s leaves no steady-state window in a --duration of 2s" "$glmload" "${t[@]}" --duration 2s --warmup 5s
  expect "--warmup: '-1s' is not a duration" "$glmload" "${t[@]}" --warmup=-1s
  expect "--concurrency: '0' is not an integer in [1, 100000]" "$glmload" "${t[@]}" --concurrency 0
  expect "--error-backoff-ms: '-1' is not an integer in [0, 600000]" "$glmload" "${t[@]}" --error-backoff-ms=-1
  expect "--ignore-eos: 'maybe' is not true|false" "$glmload" "${t[@]}" --ignore-eos maybe
  expect "--metrics-target: 'localhost' is not HOST:PORT" "$glmload" "${t[@]}" --metrics-target localhost
  expect "--metrics-target: '127.0.0.1:70000' is not HOST:PORT" "$glmload" "${t[@]}" --metrics-target 127.0.0.1:70000
  expect "--prompt-len: 'uniform:9:3' is not N, fixed:N or uniform:A:B" "$glmload" "${t[@]}" --prompt-len uniform:9:3
  expect "unknown flag '--bogus'" "$glmload" "${t[@]}" --bogus 1
  # --help lists the new flags.
  help="$("$glmload" --help)"
  for flag in --top-p --frequency-penalty --presence-penalty --repetition-penalty --http --warmup; do
    if [[ "$help" != *"$flag"* ]]; then echo "FAIL: --help does not list $flag"; failures=$((failures + 1)); fi
  done
  [ "$failures" -eq 0 ] && echo "glmload flag errors: ok"
  exit "$failures"
fi
if [ "${1:-}" = "--scheduling" ]; then
  for bench in "$2" "$3"; do
    # serve's checks across flags (server/commands/scheduling_flags.cc), as serve words them.
    expect "--thin-prefill-tokens 8 and --thin-prefill-auto both choose the thin budget: give one" \
      "$bench" --thin-prefill-auto true --thin-prefill-tokens 8
    expect "--max-batch-tokens: 16 must be >= --max-batch 32" "$bench" --max-batch 32 --max-batch-tokens 16
    expect "--mixed-step-rows: '-1' is not an integer" "$bench" --mixed-step-rows=-1
  done
  expect "--step-us: '-5' is not an integer" "$3" --step-us=-5
  [ "$failures" -eq 0 ] && echo "scheduling flag errors: ok"
  exit "$failures"
fi
decode_bench="$1" model="$2" gemm_bench="${3:-}"
expect "--batch-sizes: '0' is not an integer in [1, " "$decode_bench" --model "$model" --batch-sizes 8,0
expect "--batch-sizes: 'x' is not an integer" "$decode_bench" --model "$model" --batch-sizes x
# --device and --dtype are checked with the flags, before the model is loaded.
expect "--device: 'cudafoo' is not cpu, cuda or cuda:N" "$decode_bench" --model "$model" --device cudafoo
expect "--device: 'cuda:x' is not cpu, cuda or cuda:N" "$decode_bench" --model "$model" --device cuda:x
expect "--dtype: 'fp8' is not float32|bfloat16|float16" "$decode_bench" --model "$model" --dtype fp8
expect "--model: required" "$decode_bench" --device cpu
if [ -n "$gemm_bench" ]; then
  expect "--rows: '65' is not an integer in [1, 64]" "$gemm_bench" --rows 8,65
  expect "--rows: '' is not an integer" "$gemm_bench" --rows 8,
  expect "--iterations: 0 is not a positive integer" "$gemm_bench" --iterations 0
  expect "--bogus" "$gemm_bench" --bogus 1
fi
[ "$failures" -eq 0 ] && echo "bench flag errors: ok"
exit "$failures"
