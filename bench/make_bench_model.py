#!/usr/bin/env python3
"""Writes a random GLM-4 model with GLM-4-9B's layer shapes (fewer layers) for speed benchmarks.

  make_bench_model.py OUT_DIR [--layers 4] [--dtype bfloat16]
  Smaller shapes for CPU runs: --hidden 1024 --intermediate 2816 --heads 16 --kv-heads 2
  --head-dim 64 --vocab 32000 (defaults are GLM-4-9B's).
"""
import argparse

import torch
from transformers import Glm4Config, Glm4ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=13696)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=151552)
    a = ap.parse_args()
    eos = [151329, 151336, 151338] if a.vocab > 151338 else [a.vocab - 3, a.vocab - 2, a.vocab - 1]
    torch.manual_seed(0)
    config = Glm4Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                        head_dim=a.head_dim, max_position_embeddings=8192, attention_bias=True,
                        eos_token_id=eos, pad_token_id=eos[0])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Glm4ForCausalLM(config).to(getattr(torch, a.dtype))
    model.save_pretrained(a.out)
    print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
