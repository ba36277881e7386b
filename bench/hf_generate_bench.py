#!/usr/bin/env python3
"""transformers' side of bench/generate_bench: same prompt, same counts, same JSON lines.

  hf_generate_bench.py --model DIR [--device cuda --dtype bfloat16] [--prompt-tokens 128] [--new-tokens 128] [--runs 3]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).to(a.device).eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[(i * 7919 + 13) % vocab for i in range(a.prompt_tokens)]], device=a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    rates = []
    with torch.no_grad():
        for run in range(a.runs + 1):
            sync()
            start = time.perf_counter()
            cache = DynamicCache()
            out = model(prompt, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            sync()
            first = time.perf_counter()
            for _ in range(a.new_tokens - 1):
                out = model(token, past_key_values=out.past_key_values, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            sync()
            end = time.perf_counter()
            if run == 0:
                continue
            rate = (a.new_tokens - 1) / (end - first)
            rates.append(rate)
            print(json.dumps({"run": run, "prefill_ms": round((first - start) * 1e3, 2),
                              "decode_tokens_per_s": round(rate, 2)}))
    print(json.dumps({"median_decode_tokens_per_s": round(statistics.median(rates), 2),
                      "device": a.device, "dtype": a.dtype, "impl": "transformers"}))


if __name__ == "__main__":
    main()
