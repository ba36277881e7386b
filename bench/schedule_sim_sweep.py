#!/usr/bin/env python3
"""Scheduling settings compared in simulated time: schedule_sim (bench/README.md) at one closed-loop
concurrency for each set of serve flags, over several level lengths (where a level's drain falls
moves its figure by a point or two; the mean over lengths evens that out), as % of a decode_bench
figure. Best first.

  bench/schedule_sim_sweep.py --sim build/bench/schedule_sim --decode-bench 8087 \\
      --sim-args "--card h100" --concurrency 64 --durations 14,14.5,15,15.5,16 \\
      "" "--thin-prefill-tokens 64" "--mixed-step-rows 128 --max-prefill-tokens-with-decodes 64"

Prints a markdown table: flags, tok/s over the level and steady tok/s (each as % of --decode-bench),
TTFT p99 and ITL p50 / p99 (ms), means over the durations. "" is the defaults. A flag set that is one
--flag=value word goes after `--` (argparse would take it for an option of this script), and so does
every set after it; --sim-args takes such a word as --sim-args=--card=h100. Closed loop only (--rates
in --sim-args is refused). Exit 1 when schedule_sim fails (its message on stderr), 2 on a usage error.
"""
import argparse
import shlex
import statistics
import subprocess
import sys


def parse_row(line):
    """schedule_sim's closed-loop level row: | N streams | tok/s | steady tok/s | TTFT p50 / p99 | ITL p50 / p99 |
    requests | steps |"""
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 7 or not cells[0].endswith(" streams"):
        raise ValueError(f"not a schedule_sim closed-loop level row: {line!r}")
    ttft = [float(x) for x in cells[3].split("/")]
    itl = [float(x) for x in cells[4].split("/")]
    return {"tok_s": float(cells[1]), "steady_tok_s": float(cells[2]), "ttft_p99": ttft[1], "itl_p50": itl[0],
            "itl_p99": itl[1]}


def simulate(sim, sim_args, concurrency, duration, flags):
    cmd = [sim, *shlex.split(sim_args), "--concurrency", str(concurrency), "--duration", f"{duration}s",
           *shlex.split(flags)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return parse_row(done.stdout.strip().splitlines()[-1])


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", required=True, help="the schedule_sim binary")
    parser.add_argument("--decode-bench", type=float, required=True,
                        help="decode_bench's tok/s at this batch (the 100%% mark)")
    parser.add_argument("--sim-args", default="", help="passed to every run (e.g. --card h100)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--durations", default="14,14.5,15,15.5,16", help="level lengths, s")
    parser.add_argument("flags", nargs="+", help='serve flag sets ("" = the defaults)')
    args = parser.parse_args(argv[1:])
    try:
        durations = [float(d) for d in args.durations.split(",")]
    except ValueError:
        parser.error(f"--durations: {args.durations!r} is not a list of seconds")
    if not (args.decode_bench > 0) or args.concurrency < 1 or not durations or min(durations) <= 1:
        parser.error("--decode-bench must be > 0, --concurrency >= 1, every duration > 1 s (the warm-up)")
    if "--rates" in args.sim_args:
        parser.error("--sim-args: --rates (open loop) is not compared here; run schedule_sim --rates itself")
    rows = []
    for flags in args.flags:
        try:
            runs = [simulate(args.sim, args.sim_args, args.concurrency, d, flags) for d in durations]
        except (RuntimeError, ValueError, OSError) as e:
            print(f"schedule_sim_sweep: {e}", file=sys.stderr)
            return 1
        mean = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        rows.append((flags or "defaults", mean))
    rows.sort(key=lambda row: -row[1]["tok_s"])
    print(f"| flags ({args.concurrency} streams) | tok/s | steady tok/s | TTFT p99 ms | ITL p50 / p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, m in rows:
        print(f"| {name} | {m['tok_s']:.1f} ({100 * m['tok_s'] / args.decode_bench:.1f}%) | "
              f"{m['steady_tok_s']:.1f} ({100 * m['steady_tok_s'] / args.decode_bench:.1f}%) | "
              f"{m['ttft_p99']:.0f} | {m['itl_p50']:.2f} / {m['itl_p99']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
