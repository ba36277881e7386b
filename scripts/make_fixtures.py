#!/usr/bin/env python3
"""Writes glmserve's model fixtures (committed) with transformers as the reference.

  python3 scripts/make_fixtures.py            # everything
  python3 scripts/make_fixtures.py --only models|broken|demo|check

Outputs (see tests/fixtures/README.md):
  tests/fixtures/models/<variant>/   tiny random GLM / GLM-4 / ChatGLM checkpoints + expected.json
  tests/fixtures/broken/<kind>/      damaged checkpoints + broken.json (what the report must name)
  models/glm4-tiny/                  bundled demo model with a small byte-level BPE tokenizer

Deterministic: fixed seeds everywhere; re-running rewrites byte-identical files.
Expected outputs come from tests/reference/hf_reference.py (one implementation for the fixtures
and the live CI check), i.e. transformers generate() in float32 on CPU.
"""
import argparse
import ast
import json
import os
import random
import shutil
import struct
import sys

import torch
from safetensors.torch import save_file

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
import hf_reference  # noqa: E402

MODELS = os.path.join(REPO, "tests", "fixtures", "models")
BROKEN = os.path.join(REPO, "tests", "fixtures", "broken")
DEMO = os.path.join(REPO, "models", "glm4-tiny")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# ----------------------------------------------------------------------------------------------
# helpers


def fresh(d):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def write_json(path, obj, indent=2):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def scaled_init(model, seed):
    """std-0.2 weights, 1+0.1*randn norm weights, 0.1*randn biases (default 0.02 init gives
    near-uniform logits and greedy repeats one token)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def round_to(model, dtype):
    """Rounds the fp32 model's parameters through `dtype` in place (so the fp32 model equals the
    stored weights upcast) and returns the stored state dict (tied lm_head omitted)."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    stored = {}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if tied and k == "lm_head.weight":
                continue
            stored[k] = v.detach().to(dtype).clone().contiguous()
        for name, p in model.named_parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    return stored


def param_count(model):
    return sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights


def nbytes(t):
    return t.numel() * t.element_size()


def save_weights(sd, d, fmt, shards=1):
    """fmt: safetensors | safetensors-sharded | pytorch-bin | pytorch-bin-sharded."""
    sd = {k: v.clone().contiguous() for k, v in sd.items()}
    if fmt == "safetensors":
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        return
    if fmt == "pytorch-bin":
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
        return
    assert shards >= 2
    keys = list(sd.keys())
    total = sum(nbytes(sd[k]) for k in keys)
    groups, cur, acc = [], [], 0
    for k in keys:  # contiguous split by bytes, in state-dict order
        cur.append(k)
        acc += nbytes(sd[k])
        if acc >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    assert len(groups) == shards and all(groups), [len(g) for g in groups]
    weight_map = {}
    for i, g in enumerate(groups):
        if fmt == "safetensors-sharded":
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: sd[k] for k in g}, os.path.join(d, fname), metadata={"format": "pt"})
        else:
            fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            torch.save({k: sd[k] for k in g}, os.path.join(d, fname))
        for k in g:
            weight_map[k] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    name = "model.safetensors.index.json" if fmt == "safetensors-sharded" else "pytorch_model.bin.index.json"
    write_json(os.path.join(d, name), index)


@torch.no_grad()
def greedy_plain(model, ids, n):
    """Greedy continuation with no stop ids (full recompute each step)."""
    ids = list(ids)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids])).logits[0, -1]
        t = int(torch.argmax(logits))
        ids.append(t)
        out.append(t)
    return out


def choose_cases(model, vocab, seed, avoid=()):
    """Picks prompt A (no stop hit), prompt B (stop id e1 emitted at position p in [2, 7]),
    the stop ids [e1, e2] and a pad id."""
    rng = random.Random(seed)
    prompt_a = [rng.randrange(vocab) for _ in range(5)]
    out_a = greedy_plain(model, prompt_a, 10)
    for _ in range(2000):
        prompt_b = [rng.randrange(vocab) for _ in range(rng.randrange(3, 8))]
        seq = greedy_plain(model, prompt_b, 12)
        for p in range(2, 8):
            t = seq[p]
            if t in out_a or t in seq[:p] or t in avoid:
                continue
            banned = set(out_a) | set(seq) | set(prompt_a) | set(prompt_b) | set(avoid)
            free = [i for i in range(vocab) if i not in banned]
            e2 = free[rng.randrange(len(free))]
            free.remove(e2)
            pad = free[rng.randrange(len(free))]
            return dict(prompt_a=prompt_a, out_a=out_a, prompt_b=prompt_b, seq_b=seq, p=p,
                        eos=[t, e2], pad=pad)
    raise RuntimeError("no prompt found that emits a usable stop id")


def run_cases(model, eos, pad, pick):
    ref = hf_reference.generate
    a = ref(model, pick["prompt_a"], 10, 0, sorted(eos), pad)
    assert a["finish_reason"] == "length" and a["output_ids"] == pick["out_a"], (a, pick)
    b = ref(model, pick["prompt_b"], 10, 0, sorted(eos), pad)
    p = pick["p"]
    assert b["finish_reason"] == "stop" and b["output_ids"] == pick["seq_b"][:p + 1], (b, pick)
    min_new = p + 2
    c = ref(model, pick["prompt_b"], 12, min_new, sorted(eos), pad)
    assert len(c["output_ids"]) >= min_new and c["output_ids"][:p] == pick["seq_b"][:p]
    assert c["output_ids"][p] not in eos
    cases = []
    for prompt, mx, mn, r in ((pick["prompt_a"], 10, 0, a), (pick["prompt_b"], 10, 0, b),
                              (pick["prompt_b"], 12, min_new, c)):
        cases.append({"input_ids": prompt, "max_new_tokens": mx, "min_new_tokens": mn,
                      "output_ids": r["output_ids"], "finish_reason": r["finish_reason"],
                      "first_logits": r["first_logits"]})
    return cases


# ----------------------------------------------------------------------------------------------
# model fixtures

BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            vocab_size=160, max_position_embeddings=64)


def hf_config(arch, *, kv, head_dim=8, attention_bias=True, tied=False, rope=None,
              legacy_rope=None, dtype="float32", dtype_key="dtype", eps=1e-5):
    cfg = {"architectures": ["Glm4ForCausalLM" if arch == "glm4" else "GlmForCausalLM"],
           "model_type": arch, **BASE, "num_key_value_heads": kv, "head_dim": head_dim,
           "hidden_act": "silu", "rms_norm_eps": eps, "attention_bias": attention_bias,
           "attention_dropout": 0.0, "initializer_range": 0.02,
           "tie_word_embeddings": tied, "use_cache": True}
    if legacy_rope is not None:  # pre-5.x style: top-level keys, no rope_parameters
        cfg.update(legacy_rope)
    else:
        cfg["rope_parameters"] = rope or {"rope_type": "default", "rope_theta": 10000.0,
                                          "partial_rotary_factor": 0.5}
    cfg[dtype_key] = dtype
    cfg["eos_token_id"] = None
    cfg["pad_token_id"] = None
    return cfg


MODEL_VARIANTS = [
    dict(name="glm4-gqa-safetensors", seed=101, arch="glm4", fmt="safetensors", dtype="float32",
         cfg=dict(kv=2),
         variant="Glm4ForCausalLM, GQA 4 heads / 2 kv heads, attention bias, untied, single fp32 "
                 "model.safetensors, rope_parameters theta 10000 partial 0.5"),
    dict(name="glm4-tied-mqa-safetensors", seed=102, arch="glm4", fmt="safetensors", dtype="float32",
         cfg=dict(kv=1, tied=True),
         variant="Glm4ForCausalLM, MQA (1 kv head), tie_word_embeddings true (no lm_head.weight "
                 "stored), single fp32 model.safetensors"),
    dict(name="glm4-tied-stored-lm-head-safetensors", seed=110, arch="glm4", fmt="safetensors",
         dtype="float32", cfg=dict(kv=2, tied=True), stored_lm_head=True,
         variant="Glm4ForCausalLM, tie_word_embeddings true yet an lm_head.weight with other values "
                 "stored (transformers then leaves the two untied), single fp32 model.safetensors"),
    dict(name="glm4-headdim12-fp16-bin-sharded", seed=103, arch="glm4", fmt="pytorch-bin-sharded",
         shards=2, dtype="float16",
         cfg=dict(kv=2, head_dim=12, rope={"rope_type": "default", "rope_theta": 500000.0,
                                           "partial_rotary_factor": 0.5}),
         variant="Glm4ForCausalLM, head_dim 12 != hidden/heads (q_proj 48x32), rope_parameters "
                 "theta 500000 partial 0.5 (rotary dim 6), fp16, 2 .bin shards + "
                 "pytorch_model.bin.index.json"),
    dict(name="glm-mha-safetensors-sharded", seed=104, arch="glm", fmt="safetensors-sharded",
         shards=3, dtype="float32", cfg=dict(kv=4, dtype_key="torch_dtype"),
         variant="GlmForCausalLM, MHA (4 kv heads), fp32, 3 safetensors shards + "
                 "model.safetensors.index.json"),
    dict(name="glm-nobias-legacy-rope-bf16-bin", seed=105, arch="glm", fmt="pytorch-bin",
         dtype="bfloat16",
         cfg=dict(kv=2, attention_bias=False, dtype_key="torch_dtype",
                  legacy_rope={"rope_theta": 20000, "partial_rotary_factor": 1.0}),
         variant="GlmForCausalLM, attention_bias false, legacy top-level rope_theta 20000 and "
                 "partial_rotary_factor 1.0 (full rotary), bf16, single pytorch_model.bin (zip)"),
    dict(name="glm-prefix-base-model-safetensors", seed=106, arch="glm", fmt="safetensors",
         dtype="float32", prefix="base_model.model.", cfg=dict(kv=2),
         variant="GlmForCausalLM, every key prefixed 'base_model.model.' (PEFT-style wrapper), "
                 "single fp32 model.safetensors"),
    dict(name="glm-prefix-module-bin", seed=107, arch="glm", fmt="pytorch-bin", dtype="float32",
         prefix="module.", cfg=dict(kv=2, dtype_key="torch_dtype"),
         variant="GlmForCausalLM, every key prefixed 'module.' (DataParallel wrapper), single fp32 "
                 "pytorch_model.bin"),
    dict(name="chatglm3-fp16-bin-sharded", seed=108, arch="chatglm", fmt="pytorch-bin-sharded",
         shards=2, dtype="float16", rope_ratio=1, eos_list=False,
         variant="original remote-code ChatGLM3-style (ChatGLMModel): fused query_key_value, "
                 "rope_ratio 1, 2 kv groups, fp16, 2 pytorch_model-0000N-of-00002.bin shards + index, "
                 "includes rotary_pos_emb.inv_freq"),
    dict(name="chatglm-glm4-9b-bf16-safetensors-sharded", seed=109, arch="chatglm",
         fmt="safetensors-sharded", shards=2, dtype="bfloat16", rope_ratio=500, eos_list=True,
         variant="original remote-code GLM-4-9B-chat-style (ChatGLMModel): rope_ratio 500 (base "
                 "5e6), 2 kv groups, bf16, 2 model-0000N-of-00002.safetensors shards + index, "
                 "eos_token_id list in config.json"),
]


def chatglm_config(spec, eos, pad):
    return {
        "_name_or_path": "glmserve-fixture",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True,
        "ffn_hidden_size": BASE["intermediate_size"],
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": BASE["hidden_size"],
        "kv_channels": BASE["hidden_size"] // BASE["num_attention_heads"],
        "layernorm_epsilon": 1e-05,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "num_attention_heads": BASE["num_attention_heads"],
        "num_layers": BASE["num_hidden_layers"],
        "original_rope": True,
        "padded_vocab_size": BASE["vocab_size"],
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": spec["rope_ratio"],
        "seq_length": BASE["max_position_embeddings"],
        "use_cache": True,
        "torch_dtype": spec["dtype"],
        "tie_word_embeddings": False,
        "eos_token_id": list(eos) if spec["eos_list"] else eos[0],
        "pad_token_id": pad,
    }


def build_model(spec):
    from transformers import AutoConfig, AutoModelForCausalLM, GlmForCausalLM

    torch.manual_seed(spec["seed"])
    if spec["arch"] == "chatglm":
        cc = chatglm_config(spec, [0, 1], 2)
        model = GlmForCausalLM(hf_reference.chatglm_to_glm_config(cc))
        cfg = None
    else:
        cfg = hf_config(spec["arch"], dtype=spec["dtype"], **spec["cfg"])
        hfc = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
        model = AutoModelForCausalLM.from_config(hfc, dtype=torch.float32)
    model = model.to(torch.float32).eval()
    scaled_init(model, spec["seed"])
    stored = round_to(model, DTYPES[spec["dtype"]])
    if spec.get("stored_lm_head"):
        # An lm_head of its own beside tie_word_embeddings: the in-memory model unties it as
        # transformers does when loading such a checkpoint.
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        head = (0.2 * torch.randn(model.lm_head.weight.shape, generator=g)).to(DTYPES[spec["dtype"]])
        model.lm_head.weight = torch.nn.Parameter(head.to(torch.float32))
        stored["lm_head.weight"] = head.clone().contiguous()
    return model, cfg, stored


def make_model_fixture(spec):
    d = fresh(os.path.join(MODELS, spec["name"]))
    model, cfg, stored = build_model(spec)
    pick = choose_cases(model, BASE["vocab_size"], spec["seed"])
    eos, pad = pick["eos"], pick["pad"]
    if spec["arch"] == "chatglm":
        cc = chatglm_config(spec, eos, pad)
        write_json(os.path.join(d, "config.json"), cc)
        hfcfg = hf_reference.chatglm_to_glm_config(cc)
        sd = hf_reference.glm_to_chatglm_state_dict(stored, hfcfg)
        sd = {k: v.to(DTYPES[spec["dtype"]]) for k, v in sd.items()}
    else:
        cfg["eos_token_id"] = eos[0]
        cfg["pad_token_id"] = pad
        write_json(os.path.join(d, "config.json"), cfg)
        prefix = spec.get("prefix", "")
        sd = {prefix + k: v for k, v in stored.items()}
    write_json(os.path.join(d, "generation_config.json"),
               {"do_sample": False, "eos_token_id": list(eos), "pad_token_id": pad})
    save_weights(sd, d, spec["fmt"], spec.get("shards", 1))

    # The reference: reload from disk exactly as the live check does.
    ref_model, ref_eos, ref_pad = hf_reference.load_model(d)
    assert ref_eos == sorted(eos) and ref_pad == pad
    cases = run_cases(ref_model, eos, pad, pick)
    # Cross-check the on-disk model against the in-memory one.
    x = torch.tensor([pick["prompt_b"]])
    with torch.no_grad():
        diff = (ref_model(x).logits - model(x).logits).abs().max().item()
    assert diff < 1e-5, (spec["name"], diff)
    expected = {
        "architecture": spec["arch"],
        "format": spec["fmt"],
        "stored_dtype": spec["dtype"],
        "parameter_count": param_count(model),
        "variant": spec["variant"],
        "eos_token_ids": sorted(eos),
        "cases": cases,
    }
    write_json(os.path.join(d, "expected.json"), expected)
    distinct = len(set(cases[0]["output_ids"]))
    print(f"  {spec['name']}: params={expected['parameter_count']} eos={eos} pad={pad} "
          f"a={cases[0]['output_ids']} ({distinct} distinct) b={cases[1]['output_ids']} "
          f"c={cases[2]['output_ids']} {cases[2]['finish_reason']}")


# ----------------------------------------------------------------------------------------------
# broken fixtures


def make_broken():
    fresh(BROKEN)
    spec = dict(MODEL_VARIANTS[0], name="broken-base", seed=201)
    model, cfg, stored = build_model(spec)
    cfg["eos_token_id"] = 1
    cfg["pad_token_id"] = 0
    gen = {"do_sample": False, "eos_token_id": [1, 2], "pad_token_id": 0}

    def make(name, description, expect, stage, sd=None, fmt="safetensors", config=None, shards=1):
        d = fresh(os.path.join(BROKEN, name))
        if config is not False:
            c = config if config is not None else cfg
            if isinstance(c, str):
                with open(os.path.join(d, "config.json"), "w") as f:
                    f.write(c)
            else:
                write_json(os.path.join(d, "config.json"), c)
            write_json(os.path.join(d, "generation_config.json"), gen)
        if sd is not None:
            save_weights(sd, d, fmt, shards)
        write_json(os.path.join(d, "broken.json"),
                   {"kind": name, "stage": stage, "description": description,
                    "expect_in_message": expect})
        return d

    def st_bytes(d, fname="model.safetensors"):
        with open(os.path.join(d, fname), "rb") as f:
            return f.read()

    def put(d, fname, data):
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)

    good = dict(stored)

    sd = dict(good)
    del sd["model.layers.1.mlp.down_proj.weight"]
    make("missing-key", "model.layers.1.mlp.down_proj.weight removed",
         ["model.layers.1.mlp.down_proj.weight"], "model", sd)

    sd = dict(good)
    sd["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 32)
    make("unexpected-key", "extra tensor model.layers.0.mlp.extra_proj.weight [4, 32]",
         ["model.layers.0.mlp.extra_proj.weight"], "model", sd)

    sd = dict(good)
    sd["model.layers.0.self_attn.k_proj.weight"] = good["model.layers.0.self_attn.k_proj.weight"][:8].clone()
    make("shape-mismatch", "model.layers.0.self_attn.k_proj.weight stored as [8, 32], expected [16, 32]",
         ["model.layers.0.self_attn.k_proj.weight", "16", "8"], "model", sd)

    sd = dict(good)
    sd["model.layers.0.mlp.down_proj.weight"] = good["model.layers.0.mlp.down_proj.weight"].to(torch.float64)
    make("unsupported-dtype", "model.layers.0.mlp.down_proj.weight stored as F64 "
         "(only F32/F16/BF16 supported)",
         ["model.layers.0.mlp.down_proj.weight", "F64"], "model", sd)

    d = make("truncated-safetensors", "model.safetensors cut in the middle of the data section "
             "(header intact)", ["model.safetensors", "truncated"], "checkpoint", good)
    b = st_bytes(d)
    hlen = struct.unpack("<Q", b[:8])[0]
    put(d, "model.safetensors", b[:8 + hlen + (len(b) - 8 - hlen) // 2])

    d = make("corrupt-header-length", "model.safetensors header-length field (first 8 bytes) "
             "claims 2^40 bytes, far more than the file holds", ["model.safetensors", "header"],
             "checkpoint", good)
    b = st_bytes(d)
    put(d, "model.safetensors", struct.pack("<Q", 1 << 40) + b[8:])

    d = make("corrupt-header-json", "model.safetensors header is not valid JSON (bytes "
             "overwritten inside the header; length field intact)", ["model.safetensors", "header"],
             "checkpoint", good)
    b = bytearray(st_bytes(d))
    b[8:8 + 12] = b"{not json!!!"
    put(d, "model.safetensors", bytes(b))

    d = make("index-missing-shard", "model.safetensors.index.json names "
             "model-00002-of-00002.safetensors, which is absent",
             ["model-00002-of-00002.safetensors"], "checkpoint", good, fmt="safetensors-sharded",
             shards=2)
    os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))

    d = make("truncated-bin", "pytorch_model.bin (torch.save zip) cut to half its length",
             ["pytorch_model.bin"], "checkpoint", good, fmt="pytorch-bin")
    b = st_bytes(d, "pytorch_model.bin")
    put(d, "pytorch_model.bin", b[:len(b) // 2])

    c = dict(cfg, num_hidden_layers=3)
    make("config-layer-mismatch", "config.json num_hidden_layers 3, checkpoint holds layers 0-1 "
         "(every model.layers.2.* key is missing)", ["model.layers.2."], "model", good, config=c)

    c = dict(cfg, vocab_size=192)
    make("config-vocab-mismatch", "config.json vocab_size 192, model.embed_tokens.weight and "
         "lm_head.weight have 160 rows", ["model.embed_tokens.weight", "192", "160"], "model",
         good, config=c)

    make("invalid-config-json", "config.json is not valid JSON (trailing garbage, unquoted key)",
         ["config.json"], "config", good,
         config='{"model_type": "glm4", "hidden_size": 32, num_hidden_layers: 2,\n')

    make("no-weights", "config.json and generation_config.json only, no weight files",
         ["weight"], "checkpoint", None)

    sd = dict(good)
    del sd["model.layers.1.self_attn.o_proj.weight"]
    sd["model.layers.0.self_attn.extra.weight"] = torch.zeros(2, 2)
    sd["model.norm.weight"] = good["model.norm.weight"][:16].clone()
    make("many-problems", "three problems at once: model.layers.1.self_attn.o_proj.weight missing, "
         "model.layers.0.self_attn.extra.weight unexpected, model.norm.weight shape [16] "
         "(expected [32]); the report must list all three",
         ["model.layers.1.self_attn.o_proj.weight", "model.layers.0.self_attn.extra.weight",
          "model.norm.weight"], "model", sd)
    print("  broken:", ", ".join(sorted(os.listdir(BROKEN))))


# ----------------------------------------------------------------------------------------------
# demo model

GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>",
                 "<|user|>", "<|assistant|>", "<|observation|>", "<|begin_of_image|>",
                 "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"]

CHAT_TEMPLATE = ("[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
                 "{{ message['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

CORPUS_FILES = ["argparse.py", "collections/__init__.py", "json/__init__.py", "json/decoder.py",
                "json/encoder.py", "os.py", "pathlib.py", "random.py", "re/__init__.py",
                "shutil.py", "string.py", "subprocess.py", "textwrap.py", "threading.py",
                "functools.py", "heapq.py", "logging/__init__.py",
                "datetime.py", "fractions.py", "statistics.py",
                "tempfile.py", "typing.py", "unittest/case.py", "csv.py", "difflib.py",
                "email/message.py", "http/client.py", "urllib/parse.py", "zipfile.py",
                "tarfile.py", "pprint.py", "inspect.py", "dataclasses.py", "enum.py"]


def corpus():
    import sysconfig
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = []
    for rel in CORPUS_FILES:
        with open(os.path.join(stdlib, rel), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return texts


def make_demo():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer,
                              PreTrainedTokenizerFast)

    d = fresh(DEMO)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.get_vocab_size() == 1000, tok.get_vocab_size()
    tok.add_special_tokens(GLM4_SPECIALS)
    ids = {s: tok.token_to_id(s) for s in GLM4_SPECIALS}
    assert [ids[s] for s in GLM4_SPECIALS] == list(range(1000, 1000 + len(GLM4_SPECIALS))), ids
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", clean_up_tokenization_spaces=False,
                                   model_max_length=2048, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(d)
    # transformers 5 writes tokenizer_class "TokenizersBackend" and moves the template into
    # chat_template.jinja; also keep the portable spelling and the template in the config.
    tc_path = os.path.join(d, "tokenizer_config.json")
    tc = hf_reference.read_json(tc_path)
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["chat_template"] = CHAT_TEMPLATE
    tc["additional_special_tokens"] = GLM4_SPECIALS[1:]
    write_json(tc_path, dict(sorted(tc.items())))

    n_tok = len(fast)
    vocab = (n_tok + 63) // 64 * 64
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    cfg = {"architectures": ["Glm4ForCausalLM"], "model_type": "glm4", "vocab_size": vocab,
           "hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
           "max_position_embeddings": 2048, "hidden_act": "silu", "rms_norm_eps": 1.5625e-07,
           "attention_bias": True, "attention_dropout": 0.0, "initializer_range": 0.02,
           "tie_word_embeddings": False, "use_cache": True,
           "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                               "partial_rotary_factor": 0.5},
           "dtype": "float32", "eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"]}
    torch.manual_seed(0)
    hfc = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "architectures"})
    model = AutoModelForCausalLM.from_config(hfc, dtype=torch.float32).eval()
    scaled_init(model, 0)
    stored = round_to(model, torch.float32)
    write_json(os.path.join(d, "config.json"), cfg)
    write_json(os.path.join(d, "generation_config.json"),
               {"do_sample": False, "eos_token_id": eos, "pad_token_id": ids["<|endoftext|>"]})
    save_weights(stored, d, "safetensors")

    # Verify: loads with the Auto classes, template renders, generation runs.
    t2 = AutoTokenizer.from_pretrained(d)
    assert len(t2) == n_tok and t2.convert_tokens_to_ids("<|user|>") == ids["<|user|>"]
    assert t2.eos_token_id == ids["<|endoftext|>"] and t2.pad_token_id == ids["<|endoftext|>"]
    m2 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]
    text = t2.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "[gMASK]<sop><|system|>\nYou are terse.<|user|>\nHello there<|assistant|>", text
    enc = t2(text, add_special_tokens=False)["input_ids"]
    assert enc[:2] == [ids["[gMASK]"], ids["<sop>"]] and enc[-1] == ids["<|assistant|>"], enc
    assert t2.decode(t2("Return the value.")["input_ids"]) == "Return the value."
    out = m2.generate(torch.tensor([enc]), max_new_tokens=8, do_sample=False,
                      attention_mask=torch.ones(1, len(enc), dtype=torch.long))
    print(f"  glm4-tiny: tokens={n_tok} vocab_size={vocab} params={param_count(m2)} "
          f"eos={eos} prompt={len(enc)} ids -> {out[0, len(enc):].tolist()}")


# ----------------------------------------------------------------------------------------------
# checks


def check():
    """Reloads every model fixture with transformers and confirms expected.json reproduces;
    re-converts the chatglm fixtures (-> HF Glm -> chatglm) and compares logits."""
    for name in sorted(os.listdir(MODELS)):
        d = os.path.join(MODELS, name)
        exp = hf_reference.read_json(os.path.join(d, "expected.json"))
        for case in exp["cases"]:
            r = hf_reference.reference(d, case["input_ids"], case["max_new_tokens"],
                                       case["min_new_tokens"])
            assert r["output_ids"] == case["output_ids"], (name, r["output_ids"], case)
            assert r["finish_reason"] == case["finish_reason"], name
            assert r["first_logits"] == case["first_logits"], name
        model, _, _ = hf_reference.load_model(d)
        assert param_count(model) == exp["parameter_count"], name
        if exp["architecture"] == "chatglm":
            from transformers import GlmForCausalLM
            cc = hf_reference.read_json(os.path.join(d, "config.json"))
            cfg = hf_reference.chatglm_to_glm_config(cc)
            raw = hf_reference.read_state_dict(d)
            back = hf_reference.glm_to_chatglm_state_dict(
                hf_reference.chatglm_to_glm_state_dict(raw, cfg), cfg)
            assert sorted(back) == sorted(raw), name
            for k in raw:
                tol = 0 if k != "transformer.rotary_pos_emb.inv_freq" else 1e-2
                assert torch.allclose(back[k].float(), raw[k].float(), atol=tol, rtol=tol), (name, k)
            m2 = GlmForCausalLM(cfg).eval()
            hf_reference._load_strict(m2, hf_reference.chatglm_to_glm_state_dict(back, cfg))
            x = torch.tensor([exp["cases"][1]["input_ids"]])
            with torch.no_grad():
                assert torch.equal(m2(x).logits, model(x).logits), name
        print(f"  ok {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["models", "broken", "demo", "check"])
    ap.add_argument("--model", help="with --only models: make this one model fixture, leave the others")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if a.only in (None, "models"):
        print("models:")
        if a.model is None:
            fresh(MODELS)
        for spec in MODEL_VARIANTS:
            if a.model is None or spec["name"] == a.model:
                make_model_fixture(spec)
    if a.only in (None, "broken"):
        print("broken:")
        make_broken()
    if a.only in (None, "demo"):
        print("demo:")
        make_demo()
    if a.only in (None, "check"):
        print("check:")
        check()


if __name__ == "__main__":
    main()
