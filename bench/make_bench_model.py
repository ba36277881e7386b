#!/usr/bin/env python3
"""Writes a random GLM-4 model with GLM-4-9B's layer shapes (fewer layers) for speed benchmarks.

  make_bench_model.py OUT_DIR [--layers 4] [--dtype bfloat16]
"""
import argparse

import torch
from transformers import Glm4Config, Glm4ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    torch.manual_seed(0)
    config = Glm4Config(vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=a.layers,
                        num_attention_heads=32, num_key_value_heads=2, head_dim=128, max_position_embeddings=8192,
                        attention_bias=True, eos_token_id=[151329, 151336, 151338], pad_token_id=151329)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Glm4ForCausalLM(config).to(getattr(torch, a.dtype))
    model.save_pretrained(a.out)
    print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
