#!/usr/bin/env python3
"""transformers' generate() on the same model config and batch sizes as bench/decode_bench.

  hf_decode_bench.py --config DIR [--device cuda] [--dtype bfloat16] [--batch-sizes 1,8,32,64]
                     [--prompt-tokens 128] [--new-tokens 128]
Random weights (the config only), greedy, exactly --new-tokens per sequence. Prints a markdown
row per batch size: tokens/s (new tokens / generate time) and ms per step.
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
    print("| batch | tokens/s | ms/step |\n|---:|---:|---:|")
    for batch in [int(b) for b in a.batch_sizes.split(",")]:
        ids = torch.tensor([[(b * 131 + i * 7919 + 13) % vocab for i in range(a.prompt_tokens)] for b in range(batch)],
                           device=a.device)
        kwargs = dict(do_sample=False, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                      attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            model.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
            sync()
            start = time.perf_counter()
            model.generate(ids, **kwargs)
            sync()
        elapsed = time.perf_counter() - start
        print(f"| {batch} | {batch * a.new_tokens / elapsed:.1f} | {elapsed * 1000 / a.new_tokens:.2f} |", flush=True)


if __name__ == "__main__":
    main()
