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


def server_steps():
    """A server's trace: two decode-only steps and one mixed step (64 decodes, 64 prompt tokens),
    each a host range with kernel launches inside it; a kernel belongs to the step that launched it
    (the launch's correlation id), whenever it runs."""
    events, correlation = [], 0
    steps = [(0, 64, 0, [("gemm_a", 10), ("gemm_a", 12), ("attn", 5)]),
             (100, 64, 0, [("gemm_a", 10), ("gemm_a", 12), ("attn", 5)]),
             (200, 64, 64, [("gemm_a", 15), ("gemm_a", 17), ("attn", 9)])]
    for start, decode, prefill, kernels in steps:
        events.append({"ph": "X", "cat": "user_annotation", "name": f"glmserve step decode={decode} prefill={prefill}",
                       "ts": start, "dur": 50, "tid": 1})
        gpu_ts = start + 5
        for i, (name, dur) in enumerate(kernels):
            correlation += 1
            events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": start + 1 + i,
                           "dur": 1, "tid": 1, "args": {"correlation": correlation}})
            events.append({"ph": "X", "cat": "kernel", "name": name, "ts": gpu_ts, "dur": dur,
                           "args": {"correlation": correlation}})
            gpu_ts += dur
    return events


def run(*args, events=None):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        with open(path, "w") as f:
            json.dump({"traceEvents": EVENTS if events is None else events}, f)
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

    def test_by_step_lists_each_kernel_per_step_kind(self):
        rc, out, err = run("--by-step", "--kernels", "2", events=server_steps())
        self.assertEqual(rc, 0, err)
        rows = [line for line in out.splitlines() if line.count("|") == 6 and "`" in line]
        # gemm_a: 22 us in each decode-only step (2 calls, 11 a call), 32 in the mixed one (16 a call).
        self.assertEqual(rows, [
            "| decode only | `gemm_a` | 2.0 | 22.0 | 11.00 |",
            "| decode only | `attn` | 1.0 | 5.0 | 5.00 |",
            "| mixed, prefill <= 64 | `gemm_a` | 2.0 | 32.0 | 16.00 |",
            "| mixed, prefill <= 64 | `attn` | 1.0 | 9.0 | 9.00 |",
        ])
        rc, out, err = run("--by-step", events=server_steps())
        self.assertEqual(rc, 0, err)
        self.assertNotIn("| kernel | calls/step |", out)

    def test_gaps_needs_the_step_count(self):
        rc, _, err = run("--gaps", "5")
        self.assertEqual(rc, 2)
        self.assertIn("--steps is required with --gaps", err)


if __name__ == "__main__":
    unittest.main()
