#!/usr/bin/env python3
"""The Open-AutoGLM phone agent's traffic against a running `glmserve serve` (OpenAI HTTP API).

Each step is what the agent's client sends: a streaming /v1/chat/completions request whose last
user message holds one full-resolution phone screenshot as a base64 data:image/png image_url part
plus text, with the text history of earlier steps (their screenshots dropped) and the client's
settings (temperature 0, top_p 0.85, frequency_penalty 0.2). Two measurements:

  single   one step: a WxH screenshot after about --history-chars of text history; TTFT and the
           time to the last of --max-tokens output tokens (ignore_eos, so random weights give the
           full count).
  agents   --agents concurrent agents, --steps steps each, a new screenshot every step: output
           tok/s over the run, step latency and TTFT p50/p99.

Standard library only (the GPU machine has no openai package); prints one JSON object per
measurement and a markdown row. The screenshots are synthetic PNGs (zlib), new bytes each step.

  python3 bench/autoglm_bench.py --url http://127.0.0.1:8000 [--agents 16 --steps 5]
"""
import argparse
import base64
import http.client
import json
import statistics
import struct
import sys
import threading
import time
import urllib.parse
import zlib


def png(width, height, seed):
    """A phone-screenshot-like RGB PNG: horizontal bands of UI colour with per-row variation."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    palette = [bytes(((seed * 37 + i * 53) % 256, (seed * 11 + i * 97) % 256, (seed * 71 + i * 29) % 256))
               for i in range(16)]
    raw = bytearray()
    for y in range(height):
        band = palette[(y // 48 + seed) % 16]
        row = bytearray(band * width)
        # Text-like strokes: a few dark runs whose place depends on the row and the seed.
        for k in range(4):
            x0 = ((y * 7 + k * 131 + seed * 17) % max(width - 40, 1))
            row[x0 * 3:(x0 + 24) * 3] = b"\x10\x10\x10" * 24
        raw += b"\x00" + row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(bytes(raw), 1)) + chunk(b"IEND", b""))


def history_text(chars, seed):
    words = ["tap", "swipe", "open", "settings", "wifi", "back", "home", "search", "message", "photo", "note",
             "launch", "scroll", "type", "confirm"]
    out, i = [], seed
    while sum(len(w) + 1 for w in out) < chars:
        out.append(words[i % len(words)])
        i = i * 1103515245 + 12345 & 0x7FFFFFFF
    return " ".join(out)


def step_body(args, history, screenshot):
    url = "data:image/png;base64," + base64.b64encode(screenshot).decode()
    messages = [{"role": "system", "content": "You are a phone agent. Reply with one action."}]
    messages += history
    messages.append({"role": "user", "content": [{"type": "text", "text": "Current screen. Next action?"},
                                                 {"type": "image_url", "image_url": {"url": url}}]})
    body = {"model": "glmserve", "messages": messages, "stream": True, "max_tokens": args.max_tokens,
            "temperature": 0, "top_p": 0.85, "frequency_penalty": 0.2, "ignore_eos": True,
            "stream_options": {"include_usage": True},
            # Every step's ids, also where they decode to no text (random weights over the tiny
            # tokenizer): the first token is timed when it is generated, not when text appears.
            "return_token_ids": True}
    if args.max_pixels:
        body["mm_processor_kwargs"] = {"max_pixels": args.max_pixels}
    return json.dumps(body).encode()


def run_step(args, history, screenshot):
    """One streaming request: (ttft_s, total_s, output_tokens, text, usage)."""
    target = urllib.parse.urlparse(args.url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=args.timeout)
    body = step_body(args, history, screenshot)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:400]!r}")
    ttft, chunks, text, usage = None, 0, [], None
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices", []):
            piece = (choice.get("delta") or {}).get("content")
            ids = choice.get("token_ids") or []
            if ids and ttft is None:
                ttft = time.perf_counter() - start
            chunks += len(ids)
            if piece:
                text.append(piece)
    total = time.perf_counter() - start
    conn.close()
    tokens = usage["completion_tokens"] if usage else chunks
    return ttft if ttft is not None else total, total, tokens, "".join(text), usage


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else 0.0


def single(args):
    history = [{"role": "user", "content": history_text(args.history_chars, 1)},
               {"role": "assistant", "content": "do(action=\"Tap\", element=[500, 800])"}]
    run_step(args, history, png(args.width, args.height, 0))  # warm-up: graphs, allocator
    results = []
    for r in range(args.repeats):
        ttft, total, tokens, _, usage = run_step(args, history, png(args.width, args.height, r + 1))
        results.append((ttft, total, tokens, usage))
    best = min(results, key=lambda x: x[1])
    out = {"measure": "single", "width": args.width, "height": args.height, "repeats": args.repeats,
           "ttft_ms_median": 1000 * statistics.median(r[0] for r in results),
           "total_s_median": statistics.median(r[1] for r in results),
           "output_tokens": best[2], "usage": best[3]}
    print(json.dumps(out))
    details = (best[3] or {}).get("prompt_tokens_details") or {}
    print(f"| single step {args.width}x{args.height} | prompt {(best[3] or {}).get('prompt_tokens')} "
          f"(image {details.get('image_tokens')}) | TTFT {out['ttft_ms_median']:.0f} ms | "
          f"{best[2]} tokens in {out['total_s_median']:.2f} s |")
    return out


def agents(args):
    ttfts, latencies, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def agent(a):
        history = [{"role": "user", "content": history_text(args.history_chars // 4, a)}]
        history.append({"role": "assistant", "content": "do(action=\"Launch\", app=\"Settings\")"})
        for s in range(args.steps):
            try:
                ttft, total, n, text, _ = run_step(args, history, png(args.width, args.height, 1000 * a + s))
            except Exception as e:  # noqa: BLE001 (reported, counted)
                with lock:
                    errors.append(f"agent {a} step {s}: {e}")
                return
            with lock:
                ttfts.append(ttft)
                latencies.append(total)
                tokens[0] += n
            # The agent keeps its text history; this step's screenshot is dropped from it.
            history.append({"role": "user", "content": f"Step {s}: screen shown."})
            history.append({"role": "assistant", "content": text[:200]})

    threads = [threading.Thread(target=agent, args=(a,)) for a in range(args.agents)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    out = {"measure": "agents", "agents": args.agents, "steps": args.steps, "answered": len(latencies),
           "errors": errors[:5], "wall_s": wall, "output_tok_s": tokens[0] / wall,
           "steps_per_s": len(latencies) / wall,
           "step_latency_s_p50": pct(latencies, 50), "step_latency_s_p99": pct(latencies, 99),
           "ttft_ms_p50": 1000 * pct(ttfts, 50), "ttft_ms_p99": 1000 * pct(ttfts, 99)}
    print(json.dumps(out))
    print(f"| {args.agents} agents x {args.steps} steps | answered {len(latencies)}/{args.agents * args.steps} | "
          f"{out['output_tok_s']:.0f} tok/s | step p50/p99 {out['step_latency_s_p50']:.2f} / "
          f"{out['step_latency_s_p99']:.2f} s | TTFT p50/p99 {out['ttft_ms_p50']:.0f} / {out['ttft_ms_p99']:.0f} ms |")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the server's HTTP address, e.g. http://127.0.0.1:8000")
    p.add_argument("--width", type=int, default=1080)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--history-chars", type=int, default=2000,
                   help="text history before the single step's screenshot (the bundled tiny tokenizer takes "
                        "about one token per character)")
    p.add_argument("--max-tokens", type=int, default=150)
    p.add_argument("--max-pixels", type=int, default=0, help="per-request mm_processor_kwargs.max_pixels (0: none)")
    p.add_argument("--repeats", type=int, default=3, help="single: measured steps after one warm-up")
    p.add_argument("--agents", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--only", choices=["single", "agents"], default=None)
    args = p.parse_args()
    results = []
    if args.only in (None, "single"):
        results.append(single(args))
    if args.only in (None, "agents"):
        results.append(agents(args))
    failed = any(r.get("errors") for r in results)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
