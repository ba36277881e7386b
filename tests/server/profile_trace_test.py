#!/usr/bin/env python3
"""GLMSERVE_PROFILE_TRACE on the real `glmserve serve` binary (loopback, CPU): after
GLMSERVE_PROFILE_AFTER_STEPS executor steps, the next GLMSERVE_PROFILE_STEPS are written as a
Chrome trace whose step ranges name each step's decode rows and prefill tokens, and
bench/summarize_trace.py --by-step groups them by kind. A prompt of 5 ids with 6 new tokens is one
prefill step and 5 decode steps after the
server's one-step warm-up; skipping two steps leaves 4 decode-only steps.
Exit 77 = skipped."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chaos"))
import harness  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402  (tests/pyutil, on the path harness set)
from harness import check  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    args = server_test_args()
    if args is None:
        return 77
    pb, pb_grpc = harness.stubs(args.proto_root)
    trace = os.path.join(tempfile.mkdtemp(prefix="glmserve_profile_"), "server.json")
    os.environ.update(GLMSERVE_PROFILE_TRACE=trace, GLMSERVE_PROFILE_AFTER_STEPS="2", GLMSERVE_PROFILE_STEPS="4")
    server = harness.Server(args.binary, args.model, [])
    try:
        stub = pb_grpc.InferenceStub(harness.channel(server.port))
        reply = stub.Infer(pb.InferRequest(input_ids=[1, 2, 3, 4, 5], max_new_tokens=6, min_new_tokens=6), timeout=60)
        check(len(reply.output_ids) == 6, f"6 tokens generated (got {len(reply.output_ids)})")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "executor steps written to" not in server.log():
            time.sleep(0.05)
        check(f"profile of 4 executor steps written to {trace}" in server.log(), "the server logs the trace's path")
        with open(trace) as f:
            names = [e.get("name", "") for e in json.load(f)["traceEvents"]]
        steps = [n for n in names if n.startswith("glmserve step ")]
        check(steps == ["glmserve step decode=1 prefill=0"] * 4,
              f"4 decode-only step ranges after the prefill step (got {steps})")
        summary = subprocess.run([sys.executable, os.path.join(REPO, "bench", "summarize_trace.py"), trace,
                                  "--by-step"], capture_output=True, text=True, timeout=60)
        check(summary.returncode == 0, f"summarize_trace --by-step exits 0 ({summary.stderr.strip()})")
        check(re.search(r"^\| decode only \| 4 \| 1\.0 \| 0\.0 \|", summary.stdout, re.M) is not None,
              f"summary has one row for the 4 decode-only steps:\n{summary.stdout}")
        # Where the host spends those steps: on the CPU every op is an ATen op on the engine thread.
        check(re.search(r"^\| decode only \| [0-9.]+ \| [0-9.]+ \| `aten::", summary.stdout, re.M) is not None,
              f"summary names the decode steps' outermost host ops:\n{summary.stdout}")
    finally:
        server.stop()
    # A bad value is named and the default kept (no profile before the default's 2000 steps).
    os.environ.update(GLMSERVE_PROFILE_STEPS="abc")
    bad = harness.Server(args.binary, args.model, [])
    try:
        check("GLMSERVE_PROFILE_STEPS: 'abc' is not an integer in [1, " in bad.log(),
              f"a bad GLMSERVE_PROFILE_STEPS is named:\n{bad.log()}")
    finally:
        bad.stop()
    return 1 if harness.FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
