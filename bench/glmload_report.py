#!/usr/bin/env python3
"""Markdown from glmload's --json-out reports, for scripts/gpu-serve-bench.sh.

  glmload_report.py row JSON LABEL          one level: | LABEL | tok/s | TTFT p50 / p99 | ITL p50 / p99 |
  glmload_report.py open-row JSON RATE      an open-loop level (ok / dropped, steady tok/s, errors)
  glmload_report.py oom JSON METRICS RC     the OOM storm's table; exit 1 unless every request sent is ok and OOMs seen
  glmload_report.py table OUT               the end-to-end table of OUT/serve_{mix}.json beside
                                            OUT/serve_decode_bench.md (decode_bench's tok/s per batch)
  glmload_report.py phases METRICS          a scrape of glmserve's /metrics: ms a step attempt by
                                            phase (glmserve_step_phase_seconds_total over
                                            glmserve_batch_size_count), the host's share, and the
                                            GPU's own busy ms a step and idle share
                                            (glmserve_device_seconds_total)
"""
import json
import os
import re
import sys

MIXES = [("eos_ignored", "gRPC, --ignore-eos true"), ("eos", "gRPC, --ignore-eos false"),
         ("open_autoglm", "gRPC, Open-AutoGLM (T 0, top_p 0.85, freq 0.2)"), ("http", "HTTP SSE, --ignore-eos true")]


def errors(level):
    e = level.get("errors", 0)
    return sum(e.values()) if isinstance(e, dict) else e


def p50_p99(stats, digits):
    return f"{stats.get('p50', 0):.{digits}f} / {stats.get('p99', 0):.{digits}f}"


def first_level(path):
    return json.load(open(path))["levels"][0]


def row(path, label):
    lv = first_level(path)
    return (f"| {label} | {lv['generated_tokens_per_s']:,.1f} | {p50_p99(lv['ttft_ms'], 1)} | "
            f"{p50_p99(lv['inter_token_ms'], 2)} |")


def open_row(path, rate):
    lv = first_level(path)
    return (f"| gRPC open loop, {rate} requests/s | {lv['requests_ok']} / {lv['requests_dropped']} | "
            f"{lv['generated_tokens_per_s']:,.1f} | {lv['steady_generated_tokens_per_s']:,.1f} | "
            f"{p50_p99(lv['ttft_ms'], 1)} | {p50_p99(lv['inter_token_ms'], 2)} | {errors(lv)} |")


def metric(text, name, **labels):
    """The sum of `name`'s samples in a Prometheus text scrape whose labels include `labels`."""
    total = 0.0
    for sample_labels, value in re.findall(rf"^{re.escape(name)}(?:{{([^}}]*)}})? ([0-9.e+-]+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', sample_labels))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def oom(path, metrics_path, glmload_rc):
    lv = first_level(path)
    sent = json.load(open(path))["config"].get("requests", 0)  # 0: a timed run, nothing to count lost against
    text = open(metrics_path).read()
    ok, failed = lv.get("requests_ok", 0), errors(lv)
    ooms, restarts = metric(text, "glmserve_oom_events_total"), metric(text, "glmserve_engine_restarts_total")
    lines = ["| sent | ok | errors | lost | glmserve_oom_events_total | glmserve_engine_restarts_total | glmload exit |",
             "|---:|---:|---:|---:|---:|---:|---:|",
             f"| {sent} | {ok} | {failed} | {sent - ok - failed} | {ooms:.0f} | {restarts:.0f} | "
             f"{glmload_rc} |"]
    return lines, sent > 0 and ok == sent and ooms > 0


PHASES = ["schedule", "executor_host", "device_wait", "commit"]


def phases(metrics_path):
    text = open(metrics_path).read()
    steps = metric(text, "glmserve_batch_size_count")
    seconds = {p: metric(text, "glmserve_step_phase_seconds_total", phase=p) for p in PHASES}
    total = sum(seconds.values())
    # The GPU's own timing of the steps (glmserve_device_seconds_total): absent or 0 on a CPU.
    busy = metric(text, "glmserve_device_seconds_total", state="busy")
    idle = metric(text, "glmserve_device_seconds_total", state="idle")
    lines = ["| step attempts | " + " | ".join(f"{p} ms a step" for p in PHASES) +
             " | host share | device busy ms a step | device idle share |",
             "|---:|" + "---:|" * (len(PHASES) + 3)]
    if steps <= 0 or total <= 0:
        lines.append(f"| {steps:.0f} |" + " - |" * (len(PHASES) + 3))
        return lines
    host = total - seconds["device_wait"]
    device = (f"{1e3 * busy / steps:.3f} | {idle / (busy + idle):.1%}" if busy > 0 else "- | -")
    lines.append(f"| {steps:.0f} | " + " | ".join(f"{1e3 * seconds[p] / steps:.3f}" for p in PHASES) +
                 f" | {host / total:.1%} | {device} |")
    return lines


def server_split(level):
    """glmload --metrics-target's steady-window view: the engine thread's ms a step outside and
    inside the wait for the GPU ("-" when not scraped)."""
    step_ms = level.get("server_window", {}).get("step_ms", {})
    if not step_ms:
        return "-"
    device = step_ms.get("device_wait", 0.0)
    return f"{sum(step_ms.values()) - device:.3f} / {device:.3f}"


def decode_bench_rates(out):
    rates = {}
    path = os.path.join(out, "serve_decode_bench.md")
    if os.path.exists(path):
        for line in open(path):
            m = re.match(r"^\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|", line)
            if m:
                rates[int(m.group(1))] = float(m.group(2))
    return rates


def table(out):
    decode = decode_bench_rates(out)
    lines = ["| mix | streams | tok/s | decode_bench tok/s | ratio | steady tok/s | steady ratio | TTFT p50 / p99 ms | "
             "ITL p50 / p99 ms | ok / errors | server ms a step: host / device |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in MIXES:
        path = os.path.join(out, f"serve_{name}.json")
        if not os.path.exists(path):
            continue
        try:
            report = json.load(open(path))
        except ValueError:
            lines.append(f"| {label} | - | unreadable {path} | | | | | | | | |")
            continue
        for lv in report.get("levels", []):
            n = lv.get("concurrency", 0)
            tps = lv.get("generated_tokens_per_s", 0.0)
            ref = decode.get(n)
            steady = lv.get("steady_generated_tokens_per_s", 0.0) if lv.get("steady_window_s", 0.0) > 0 else None
            cells = [label, str(n), f"{tps:,.1f}", f"{ref:,.1f}" if ref else "-", f"{tps / ref:.0%}" if ref else "-",
                     f"{steady:,.1f}" if steady is not None else "-",
                     f"{steady / ref:.0%}" if ref and steady is not None else "-",
                     p50_p99(lv.get("ttft_ms", {}), 1), p50_p99(lv.get("inter_token_ms", {}), 2),
                     f"{lv.get('requests_ok', 0)} / {errors(lv)}", server_split(lv)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv):
    usage = __doc__.strip()
    if len(argv) < 2:
        print(usage, file=sys.stderr)
        return 2
    command, args = argv[1], argv[2:]
    if command == "row" and len(args) == 2:
        print(row(*args))
    elif command == "open-row" and len(args) == 2:
        print(open_row(*args))
    elif command == "oom" and len(args) == 3:
        lines, passed = oom(*args)
        print("\n".join(lines))
        return 0 if passed else 1
    elif command == "table" and len(args) == 1:
        print("\n".join(table(args[0])))
    elif command == "phases" and len(args) == 1:
        print("\n".join(phases(args[0])))
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
