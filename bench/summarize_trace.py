#!/usr/bin/env python3
"""Sums the GPU kernels of a Chrome trace written by `decode_bench --profile-trace` (LibTorch's
Kineto profiler): time per kernel family and per kernel, per decode step, as a markdown table.

    python3 bench/summarize_trace.py TRACE.json --steps 8 [--top 20]
    python3 bench/summarize_trace.py TRACE.json --by-step [--kernels 12]
    python3 bench/summarize_trace.py TRACE.json --steps 8 --gaps 12

--gaps N lists where the GPU waits between its own operations (kernels, copies, memsets in
stream order): the N largest sums of idle time by the pair of operations around it, per step.

--by-step reads a trace of a running server (GLMSERVE_PROFILE_TRACE, docs/operations.md): each
executor step is a range "glmserve step decode=D prefill=P"; kernels are assigned to the step
that launched them, and steps are grouped by kind (decode only, mixed by prefill tokens, prefill
only): wall time, GPU busy time, the host's time between steps, kernel families. A second table
says where the host spends a step of each kind: its outermost ATen ops (the ones no other op on
the engine thread encloses) and its CUDA API calls (launches, graph replays, copies, syncs), by
name. The profiler's own bookkeeping inflates both (every op is recorded), so read them as shares.
--kernels N adds each step kind's N costliest kernels by name, so one kernel can be compared
across kinds of step (a projection's GEMM beside decodes alone and beside prompt rows).
"""
import argparse
import bisect
import collections
import json
import re

# Kernel families by name, first match wins; what is left is reported as "other".
FAMILIES = [
    ("gemv (glmserve)", r"GemvKernel"),
    # The lm_head's stream-K GEMM (TmaGemmKernel) and its counters' reset: ~0.4 ms of an H100's 64-row
    # step, "other" until the thirtieth session.
    ("skinny gemm (glmserve)", r"SkinnyGemmKernel|TmaGemmKernel|ZeroCountersKernel"),
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


STEP_RANGE = re.compile(r"glmserve step decode=(\d+) prefill=(\d+)")


def step_kind(decode, prefill):
    if prefill == 0:
        return "decode only"
    if decode == 0:
        return "prefill only"
    for limit in (64, 128, 256, 512):
        if prefill <= limit:
            return f"mixed, prefill <= {limit}"
    return "mixed, prefill > 512"


def host_time(step, events_by_tid):
    """The step's outermost ATen ops and its CUDA API calls on the engine thread: Counters of
    microseconds by name (ops, API calls) and of API calls by name."""
    ops, api, api_calls = collections.Counter(), collections.Counter(), collections.Counter()
    begin, end = step["ts"], step["ts"] + step["dur"]
    events = events_by_tid.get(step.get("tid"), [])
    outer_end = begin
    for e in events[bisect.bisect_left(events, (begin,)):]:
        ts, _, name, cat, dur = e
        if ts > end:
            break
        if cat == "cpu_op":
            if ts >= outer_end:  # not inside the previous outermost op
                ops[name] += dur
                outer_end = ts + dur
        else:
            api[name] += dur
            api_calls[name] += 1
    return ops, api, api_calls


def by_step(events, top_families, top_kernels=0):
    # Kineto writes each range twice: on the CPU thread (cat user_annotation) and on the GPU
    # stream over the kernels it launched (cat gpu_user_annotation).
    def ranges(cat):
        return sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == cat
                       and STEP_RANGE.fullmatch(e.get("name", ""))), key=lambda e: e["ts"])
    steps = ranges("user_annotation")
    gpu_ranges = ranges("gpu_user_annotation")
    gpu_span = {}  # step index -> (first kernel start, last kernel end) from the GPU ranges
    if len(gpu_ranges) == len(steps):
        for i, e in enumerate(gpu_ranges):
            gpu_span[i] = (e["ts"], e["ts"] + e["dur"])
    if not steps:
        print("no 'glmserve step' ranges: was the trace written with GLMSERVE_PROFILE_TRACE?")
        return 1
    events_by_tid = collections.defaultdict(list)  # host events, (ts, seq, name, cat, dur) sorted
    for seq, e in enumerate(events):
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "cuda_runtime", "cuda_driver"):
            events_by_tid[e.get("tid")].append((e["ts"], seq, e.get("name", ""), e["cat"], e.get("dur", 0)))
    for host_events in events_by_tid.values():
        host_events.sort()
    launch_ts = {}
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            launch_ts[e["args"]["correlation"]] = e["ts"]
    starts = [e["ts"] for e in steps]
    per_step = [[] for _ in steps]
    for e in events:
        if e.get("cat") not in ("kernel", "Kernel") or e.get("ph") != "X":
            continue
        ts = launch_ts.get(e.get("args", {}).get("correlation"))
        if ts is None:
            continue
        i = bisect.bisect_right(starts, ts) - 1
        if i >= 0 and ts <= steps[i]["ts"] + steps[i]["dur"]:
            per_step[i].append(e)
    groups = collections.OrderedDict()
    for i, step in enumerate(steps):
        decode, prefill = map(int, STEP_RANGE.fullmatch(step["name"]).groups())
        kernels = per_step[i]
        gap = steps[i + 1]["ts"] - (step["ts"] + step["dur"]) if i + 1 < len(steps) else None
        if kernels and i not in gpu_span:
            gpu_span[i] = (min(k["ts"] for k in kernels), max(k["ts"] + k["dur"] for k in kernels))
        # The GPU's idle time from this step's last kernel to the next step's first one: the
        # host's share of the step cycle (scheduling, building the batch, launching).
        gpu_gap = gpu_span[i + 1][0] - gpu_span[i][1] if i in gpu_span and i + 1 in gpu_span else None
        g = groups.setdefault(step_kind(decode, prefill), {
            "n": 0, "decode": 0, "prefill": 0, "wall": 0.0, "busy": 0.0, "span": 0.0, "kernels": 0,
            "gaps": [], "gpu_gaps": [], "families": collections.Counter(),
            "kernel_us": collections.Counter(), "kernel_calls": collections.Counter(),
            "host_ops": collections.Counter(), "host_api": collections.Counter(),
            "host_api_calls": collections.Counter()})
        g["n"] += 1
        g["decode"] += decode
        g["prefill"] += prefill
        g["wall"] += step["dur"]
        g["busy"] += sum(k["dur"] for k in kernels)
        g["kernels"] += len(kernels)
        if i in gpu_span:
            g["span"] += gpu_span[i][1] - gpu_span[i][0]
        if gap is not None:
            g["gaps"].append(gap)
        if gpu_gap is not None:
            g["gpu_gaps"].append(gpu_gap)
        for k in kernels:
            g["families"][family(k["name"])] += k["dur"]
            g["kernel_us"][k["name"]] += k["dur"]
            g["kernel_calls"][k["name"]] += 1
        ops, api, api_calls = host_time(step, events_by_tid)
        g["host_ops"].update(ops)
        g["host_api"].update(api)
        g["host_api_calls"].update(api_calls)
    total_wall = steps[-1]["ts"] + steps[-1]["dur"] - steps[0]["ts"]
    print(f"{len(steps)} steps over {total_wall / 1000:.1f} ms "
          f"({sum(g['decode'] for g in groups.values())} decode rows, "
          f"{sum(g['prefill'] for g in groups.values())} prefill tokens)\n")
    print("| step kind | steps | decode rows | prefill tokens | host ms (step call) | GPU span ms | GPU busy ms "
          "| GPU idle after ms | engine between steps ms | kernels | top kernel families (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind, g in groups.items():
        n = g["n"]
        gaps = g["gaps"]
        fams = ", ".join(f"{label} {us / n / 1000:.2f}" for label, us in g["families"].most_common(top_families))
        between = f"{sum(gaps) / len(gaps) / 1000:.2f}" if gaps else "-"
        gpu_gaps = g["gpu_gaps"]
        idle = f"{sum(gpu_gaps) / len(gpu_gaps) / 1000:.2f}" if gpu_gaps else "-"
        print(f"| {kind} | {n} | {g['decode'] / n:.1f} | {g['prefill'] / n:.1f} | {g['wall'] / n / 1000:.2f} "
              f"| {g['span'] / n / 1000:.2f} | {g['busy'] / n / 1000:.2f} | {idle} | {between} | {g['kernels'] / n:.0f} | {fams} |")
    print("\n| step kind | host ms (step call) | outermost ATen ops ms | top ATen ops (ms per step) "
          "| CUDA API ms | top CUDA API calls (ms per step, calls) |")
    print("|---|---:|---:|---|---:|---|")
    for kind, g in groups.items():
        n = g["n"]

        def top(counter):
            return ", ".join(f"`{name}` {us / n / 1000:.2f}" for name, us in counter.most_common(top_families)) or "-"
        api_calls = ", ".join(f"`{name}` {us / n / 1000:.2f} ({g['host_api_calls'][name] / n:.0f})"
                              for name, us in g["host_api"].most_common(top_families))
        print(f"| {kind} | {g['wall'] / n / 1000:.2f} | {sum(g['host_ops'].values()) / n / 1000:.2f} "
              f"| {top(g['host_ops'])} | {sum(g['host_api'].values()) / n / 1000:.2f} | {api_calls or '-'} |")
    if top_kernels > 0:
        # The same kernel's time in steps of each kind (e.g. a projection's GEMM at 64 decode rows
        # against 64 decodes + 64 prompt tokens) is what a family's total hides.
        print("\n| step kind | kernel | calls/step | us/step | us/call |\n|---|---|---:|---:|---:|")
        for kind, g in groups.items():
            n = g["n"]
            for name, us in g["kernel_us"].most_common(top_kernels):
                calls = g["kernel_calls"][name]
                print(f"| {kind} | `{short_name(name, 90)}` | {calls / n:.1f} | {us / n:.1f} | {us / calls:.2f} |")
    return 0


def short_name(name, width=60):
    name = name.replace("|", "\\|")
    return name if len(name) <= width else name[:width - 3] + "..."


def gaps(events, steps, top):
    """Idle time between consecutive GPU operations (any stream, in start order), summed by the
    (before, after) pair of operation names: which launches the GPU waits for."""
    ops = sorted((e for e in events if e.get("ph") == "X"
                  and e.get("cat") in ("kernel", "Kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    if len(ops) < 2:
        print("no GPU operations in the trace")
        return 1
    idle = collections.Counter()
    count = collections.Counter()
    end = ops[0]["ts"] + ops[0]["dur"]
    before = ops[0]["name"]
    for e in ops[1:]:
        gap = e["ts"] - end
        if gap > 0:
            key = (short_name(before), short_name(e["name"]))
            idle[key] += gap
            count[key] += 1
        if e["ts"] + e["dur"] >= end:
            end = e["ts"] + e["dur"]
            before = e["name"]
    total = sum(idle.values())
    span = end - ops[0]["ts"]
    print(f"GPU idle between its operations: {total / steps:.1f} us per step of {span / steps / 1000:.2f} ms "
          f"({len(ops) / steps:.0f} operations per step)\n")
    print("| idle after | before | us/step | gaps/step | us/gap |\n|---|---|---:|---:|---:|")
    for (a, b), us in idle.most_common(top):
        print(f"| `{a}` | `{b}` | {us / steps:.1f} | {count[(a, b)] / steps:.1f} | {us / count[(a, b)]:.1f} |")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--steps", type=int, help="decode steps the trace covers")
    parser.add_argument("--by-step", action="store_true", help="group by executor step (a server's trace)")
    parser.add_argument("--top", type=int,
                        help="kernels listed (default 15); with --by-step, kernel families per step kind (default 5)")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="with --by-step, the N kernels taking most time per step kind, by name")
    parser.add_argument("--gaps", type=int, metavar="N",
                        help="the N largest sums of GPU idle time between two operations, by their names")
    args = parser.parse_args()
    with open(args.trace) as f:
        events = json.load(f)["traceEvents"]
    if args.gaps is not None:
        if args.steps is None:
            parser.error("--steps is required with --gaps")
        return gaps(events, args.steps, args.gaps)
    if args.by_step:
        return by_step(events, args.top or 5, args.kernels)
    if args.steps is None:
        parser.error("--steps is required without --by-step")
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
    for name, us in by_name.most_common(args.top or 15):
        short = name if len(name) <= 90 else name[:87] + "..."
        short = short.replace("|", "\\|")
        print(f"| `{short}` | {calls[name] / steps:.0f} | {us / steps:.0f} | {us / calls[name]:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
