#!/usr/bin/env python3
"""Sums the GPU kernels of a Chrome trace written by `decode_bench --profile-trace` (LibTorch's
Kineto profiler): time per kernel family and per kernel, per decode step, as a markdown table.

    python3 bench/summarize_trace.py TRACE.json --steps 8 [--top 20]
"""
import argparse
import collections
import json
import re

# Kernel families by name, first match wins; what is left is reported as "other".
FAMILIES = [
    ("gemv (glmserve)", r"GemvKernel"),
    ("skinny gemm (glmserve)", r"SkinnyGemmKernel"),
    ("gemm (cuBLAS/cutlass)", r"gemm|gemv|cutlass|xmma|sm90_|cublas|splitKreduce"),
    ("paged attention", r"PagedAttention"),
    ("add+rmsnorm", r"RmsNorm"),
    ("rotary+kv write", r"RotaryKvWrite"),
    ("swiglu", r"SwiGlu"),
    ("sampling / argmax", r"Sample|argmax|ArgMax|reduce_kernel"),
    ("copies", r"[Cc]opy|memcpy|Memcpy|memset|Memset"),
    ("index / embedding", r"index|Index|gather|scatter"),
    ("elementwise (ATen)", r"elementwise|vectorized|unrolled"),
]


def family(name):
    for label, pattern in FAMILIES:
        if re.search(pattern, name):
            return label
    return "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, required=True, help="decode steps the trace covers")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with open(args.trace) as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "Kernel") and e.get("ph") == "X"]
    if not kernels:
        print(f"{args.trace}: no GPU kernel events")
        return
    by_family = collections.Counter()
    by_name = collections.Counter()
    calls = collections.Counter()
    for e in kernels:
        by_family[family(e["name"])] += e["dur"]
        by_name[e["name"]] += e["dur"]
        calls[e["name"]] += 1
    busy = sum(by_family.values())
    span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    steps = args.steps
    print(f"{args.trace}: {len(kernels) / steps:.0f} kernels per step, GPU busy {busy / steps / 1000:.2f} ms "
          f"of {span / steps / 1000:.2f} ms per step (first to last kernel)\n")
    print("| kernel family | ms/step | share of busy |\n|---|---:|---:|")
    for label, us in by_family.most_common():
        print(f"| {label} | {us / steps / 1000:.3f} | {100 * us / busy:.1f}% |")
    print(f"\n| top kernels | calls/step | us/step | us/call |\n|---|---:|---:|---:|")
    for name, us in by_name.most_common(args.top):
        short = name if len(name) <= 90 else name[:87] + "..."
        short = short.replace("|", "\\|")
        print(f"| `{short}` | {calls[name] / steps:.0f} | {us / steps:.0f} | {us / calls[name]:.1f} |")


if __name__ == "__main__":
    main()
