#!/usr/bin/env python3
"""bench/summarize_trace.py --gaps over a hand-written trace: two steps of a kernel, a host-to-device
copy and a second kernel, with idle time between them that the expected cells add up by hand."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SUMMARIZE = os.path.join(ROOT, "bench", "summarize_trace.py")


def op(cat, name, ts, dur):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


# Per step (100 us): GemvKernel 0-40, idle 5, Memcpy HtoD 45-47, idle 13, a|b kernel 60-90, idle 10
# before the next step's GemvKernel. A CPU op and a host-side range in between count for nothing.
EVENTS = []
for base in (0, 100):
    EVENTS += [op("kernel", "GemvKernel", base, 40), op("gpu_memcpy", "Memcpy HtoD", base + 45, 2),
               op("kernel", "a|b", base + 60, 30), op("cpu_op", "aten::copy_", base + 41, 50)]
# A kernel on another stream inside the second step's a|b kernel: no idle, and it does not end
# the span (the a|b kernel ends later).
EVENTS.append(op("kernel", "SideKernel", 165, 5))


def run(*args):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        with open(path, "w") as f:
            json.dump({"traceEvents": EVENTS}, f)
        done = subprocess.run([sys.executable, SUMMARIZE, path, *args], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


class SummarizeTraceGapsTest(unittest.TestCase):
    def test_idle_time_by_the_operations_around_it(self):
        rc, out, err = run("--steps", "2", "--gaps", "5")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        # 5 + 13 in each step, 10 once between them: 46 us over 2 steps; span 0-190 us.
        self.assertEqual(lines[0], "GPU idle between its operations: 23.0 us per step of 0.10 ms (4 operations per step)")
        rows = [line for line in lines if line.startswith("| `")]
        self.assertEqual(rows, [
            "| `Memcpy HtoD` | `a\\|b` | 13.0 | 1.0 | 13.0 |",
            "| `GemvKernel` | `Memcpy HtoD` | 5.0 | 1.0 | 5.0 |",
            "| `a\\|b` | `GemvKernel` | 5.0 | 0.5 | 10.0 |",
        ])

    def test_kernels_fall_in_their_families(self):
        sys.path.insert(0, os.path.dirname(SUMMARIZE))
        import summarize_trace
        for name, label in [("TmaGemmKernel<64, 128>", "skinny gemm (glmserve)"),
                            ("ZeroCountersKernel", "skinny gemm (glmserve)"),
                            ("nvjet_sm90_tst_64x64_64x13_4x1_v_bz_TNT", "gemm (cuBLAS/cutlass)"),
                            ("PagedAttentionDecodeKernel<bf16>", "paged attention"),
                            ("SomethingNew", "other")]:
            self.assertEqual(summarize_trace.family(name), label, name)

    def test_gaps_needs_the_step_count(self):
        rc, _, err = run("--gaps", "5")
        self.assertEqual(rc, 2)
        self.assertIn("--steps is required with --gaps", err)


if __name__ == "__main__":
    unittest.main()
