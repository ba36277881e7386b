#!/usr/bin/env python3
"""transformers' generate() on the same model config and batch sizes as bench/decode_bench.

  hf_decode_bench.py --config DIR [--device cuda] [--dtype bfloat16] [--batch-sizes 1,8,32,64]
                     [--prompt-tokens 128] [--new-tokens 128]
Random weights (the config only), greedy, exactly --new-tokens per sequence. Prints a markdown
row per batch size with decode_bench's meanings: tokens/s and ms per step of the decode steps
after the first token (generate's time less a one-token generate's, which is the prefill), and
the time to first token.
"""
import argparse
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(a.config)
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, a.dtype)).eval()
    vocab = config.vocab_size
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    print("| batch | tokens/s | ms/step | TTFT ms |\n|---:|---:|---:|---:|")
    for batch in [int(b) for b in a.batch_sizes.split(",")]:
        ids = torch.tensor([[(b * 131 + i * 7919 + 13) % vocab for i in range(a.prompt_tokens)] for b in range(batch)],
                           device=a.device)
        kwargs = dict(do_sample=False, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                      attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=None)
        first_kwargs = dict(kwargs, max_new_tokens=1, min_new_tokens=1)
        with torch.no_grad():
            model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
            sync()
            start = time.perf_counter()
            model.generate(ids, **first_kwargs)
            sync()
            ttft = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(ids, **kwargs)
            sync()
        elapsed = time.perf_counter() - start
        decode = max(elapsed - ttft, 1e-9)
        steps = max(a.new_tokens - 1, 1)
        print(f"| {batch} | {batch * steps / decode:.1f} | {decode * 1000 / steps:.2f} | {ttft * 1000:.1f} |", flush=True)


if __name__ == "__main__":
    main()
