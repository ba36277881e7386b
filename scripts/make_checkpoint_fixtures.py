#!/usr/bin/env python3
"""Writes the small checkpoint fixtures under tests/fixtures/checkpoint/ (committed).

Each fixture directory also gets expected.json: {"tensors": {name: {"dtype", "shape", "values"}}}
with the values computed here by torch (not by glmserve), so the C++ tests compare against an
independent source. Run from anywhere: python3 scripts/make_checkpoint_fixtures.py
"""
import collections
import json
import os
import shutil

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "checkpoint")

DTYPE_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.float64: "F64", torch.int8: "I8", torch.int64: "I64"}


def fresh(name):
    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def write_expected(d, tensors):
    out = {}
    for k, t in tensors.items():
        out[k] = {"dtype": DTYPE_NAME[t.dtype], "shape": list(t.shape),
                  "values": [float(v) for v in t.detach().double().flatten().tolist()]}
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"tensors": out}, f, indent=1, sort_keys=True)


def base_tensors():
    # Values chosen to be exact in every dtype (small multiples of 1/4 for fp16/bf16).
    return collections.OrderedDict([
        ("model.embed.weight", torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5.5),
        ("model.norm.weight", (torch.arange(4, dtype=torch.float32) * 0.25 + 1.0).to(torch.float16)),
        ("model.layers.0.mlp.weight", (torch.arange(6, dtype=torch.float32) * -0.5 + 2.0).reshape(2, 3).to(torch.bfloat16)),
        ("model.scalar", torch.tensor(3.5, dtype=torch.float32)),
    ])


def safetensors_single():
    d = fresh("st_single")
    t = base_tensors()
    save_file(dict(t), os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    write_expected(d, t)


def safetensors_any_name():
    # A single safetensors file that is not called model.safetensors, with unsupported dtypes too.
    d = fresh("st_any_name")
    t = collections.OrderedDict([
        ("w", torch.arange(4, dtype=torch.float32)),
        ("i8", torch.arange(3, dtype=torch.int8)),
        ("f64", torch.arange(2, dtype=torch.float64)),
    ])
    save_file(dict(t), os.path.join(d, "weights.safetensors"))
    write_expected(d, t)


def write_index(d, index_name, weight_map):
    with open(os.path.join(d, index_name), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=1, sort_keys=True)


def safetensors_sharded():
    d = fresh("st_sharded")
    t = base_tensors()
    names = list(t)
    shard1 = {k: t[k] for k in names[:2]}
    shard2 = {k: t[k] for k in names[2:]}
    save_file(shard1, os.path.join(d, "model-00001-of-00002.safetensors"))
    save_file(shard2, os.path.join(d, "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in shard1}
    wm.update({k: "model-00002-of-00002.safetensors" for k in shard2})
    write_index(d, "model.safetensors.index.json", wm)
    write_expected(d, t)


def safetensors_bad_index():
    # Several problems at once: an absent shard, an index key missing from its shard, a shard key
    # the index does not name, and the same key in two shards.
    d = fresh("st_bad_index")
    save_file({"a": torch.zeros(2), "dup": torch.ones(2), "extra": torch.ones(1)},
              os.path.join(d, "model-00001-of-00003.safetensors"))
    save_file({"b": torch.zeros(2), "dup": torch.ones(2)}, os.path.join(d, "model-00002-of-00003.safetensors"))
    wm = {"a": "model-00001-of-00003.safetensors",
          "dup": "model-00001-of-00003.safetensors",
          "b": "model-00002-of-00003.safetensors",
          "ghost": "model-00002-of-00003.safetensors",
          "c": "model-00003-of-00003.safetensors"}
    write_index(d, "model.safetensors.index.json", wm)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.lm_head = torch.nn.Linear(4, 5, bias=False)
        self.lm_head.weight = self.embed.weight  # tied weights: one storage, two keys


def bin_single():
    # torch.save(model.state_dict()): an OrderedDict with _metadata, tied weights sharing a
    # storage, fp16/bf16 tensors and a view with a storage offset.
    d = fresh("bin_single")
    m = Tiny()
    with torch.no_grad():
        m.embed.weight.copy_(torch.arange(20, dtype=torch.float32).reshape(5, 4) * 0.5)
        m.norm.weight.copy_(torch.arange(4, dtype=torch.float32) + 1)
        m.norm.bias.copy_(torch.arange(4, dtype=torch.float32) - 2)
    sd = m.state_dict()
    base = torch.arange(10, dtype=torch.float32).to(torch.float16)
    sd["half"] = base
    sd["half_view"] = base[2:8].view(2, 3)  # shares the storage of "half", offset 2
    sd["bf16"] = (torch.arange(6, dtype=torch.float32) * 0.25 - 1).reshape(3, 2).to(torch.bfloat16)
    sd["transposed"] = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # non-contiguous
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    write_expected(d, sd)
    # Truncated copy of the same archive.
    dt = fresh("bin_truncated")
    with open(os.path.join(d, "pytorch_model.bin"), "rb") as f:
        data = f.read()
    with open(os.path.join(dt, "pytorch_model.bin"), "wb") as f:
        f.write(data[: len(data) // 2])
    # Legacy (pre-1.6, non-zip) torch.save format.
    dl = fresh("bin_legacy")
    torch.save({"w": torch.arange(3, dtype=torch.float32)}, os.path.join(dl, "pytorch_model.bin"),
               _use_new_zipfile_serialization=False)


def bin_sharded():
    # The layout save_pretrained(safe_serialization=False) wrote: plain dict shards + index.
    d = fresh("bin_sharded")
    t = base_tensors()
    names = list(t)
    shard1 = {k: t[k] for k in names[:3]}
    shard2 = {k: t[k] for k in names[3:]}
    torch.save(shard1, os.path.join(d, "pytorch_model-00001-of-00002.bin"))
    torch.save(shard2, os.path.join(d, "pytorch_model-00002-of-00002.bin"))
    wm = {k: "pytorch_model-00001-of-00002.bin" for k in shard1}
    wm.update({k: "pytorch_model-00002-of-00002.bin" for k in shard2})
    write_index(d, "pytorch_model.bin.index.json", wm)
    write_expected(d, t)


def main():
    torch.manual_seed(0)
    os.makedirs(ROOT, exist_ok=True)
    safetensors_single()
    safetensors_any_name()
    safetensors_sharded()
    safetensors_bad_index()
    bin_single()
    bin_sharded()


if __name__ == "__main__":
    main()
