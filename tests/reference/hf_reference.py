#!/usr/bin/env python3
"""Reference generation with transformers (fp32 on CPU) for glmserve checkpoints.

Usage:
  python3 tests/reference/hf_reference.py --model DIR --input-ids 1,2,3 --max-new-tokens N \
      [--min-new-tokens M]

Prints exactly one JSON line:
  {"output_ids": [...], "first_logits": [...], "finish_reason": "length"|"stop"}

Handles
  * HF-format directories (model_type "glm" / "glm4"): loaded with from_pretrained(dtype=float32);
  * HF-format directories whose keys carry a wrapper prefix ("base_model.model.", "module."):
    the prefix is stripped and the state dict loaded strictly into the HF model;
  * original remote-code ChatGLM directories (model_type "chatglm"): converted in memory to an
    HF GlmForCausalLM (identical math: partial_rotary_factor 0.5, rope_theta 10000*rope_ratio).

Stop ids are the union of config.json and generation_config.json eos_token_id (what glmserve
uses). make_fixtures.py imports this module so there is one implementation.
"""
import argparse
import json
import os
import sys

import torch

WRAPPER_PREFIXES = ("base_model.model.", "module.")


def _as_list(x):
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [int(v) for v in x]
    return [int(x)]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_state_dict(model_dir):
    """Reads every tensor of a checkpoint dir (any of the four formats) into a dict."""
    from safetensors.torch import load_file

    names = os.listdir(model_dir)
    sd = {}
    if "model.safetensors.index.json" in names:
        idx = read_json(os.path.join(model_dir, "model.safetensors.index.json"))
        for shard in sorted(set(idx["weight_map"].values())):
            sd.update(load_file(os.path.join(model_dir, shard)))
    elif "model.safetensors" in names:
        sd.update(load_file(os.path.join(model_dir, "model.safetensors")))
    elif "pytorch_model.bin.index.json" in names:
        idx = read_json(os.path.join(model_dir, "pytorch_model.bin.index.json"))
        for shard in sorted(set(idx["weight_map"].values())):
            sd.update(torch.load(os.path.join(model_dir, shard), map_location="cpu", weights_only=True))
    elif "pytorch_model.bin" in names:
        sd.update(torch.load(os.path.join(model_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True))
    else:
        raise FileNotFoundError(f"{model_dir}: no weight files")
    return sd


def chatglm_to_glm_config(cc):
    """GlmConfig for an original remote-code ChatGLM config dict."""
    from transformers import GlmConfig

    heads = cc["num_attention_heads"]
    kv = cc["multi_query_group_num"] if cc.get("multi_query_attention", False) else heads
    head_dim = cc.get("kv_channels") or cc["hidden_size"] // heads
    return GlmConfig(
        vocab_size=cc["padded_vocab_size"],
        hidden_size=cc["hidden_size"],
        intermediate_size=cc["ffn_hidden_size"],
        num_hidden_layers=cc["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=cc["seq_length"],
        rms_norm_eps=cc["layernorm_epsilon"],
        attention_bias=cc.get("add_qkv_bias", True),
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * float(cc.get("rope_ratio", 1.0)),
            "partial_rotary_factor": 0.5,
        },
        eos_token_id=cc.get("eos_token_id"),
        pad_token_id=cc.get("pad_token_id"),
    )


def chatglm_to_glm_state_dict(sd, cfg):
    """Original ChatGLM keys -> HF GlmForCausalLM keys (drops the derived inv_freq buffer)."""
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    out = {
        "model.embed_tokens.weight": sd["transformer.embedding.word_embeddings.weight"],
        "model.norm.weight": sd["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": sd["transformer.output_layer.weight"],
    }
    for i in range(cfg.num_hidden_layers):
        s = f"transformer.encoder.layers.{i}."
        d = f"model.layers.{i}."
        out[d + "input_layernorm.weight"] = sd[s + "input_layernorm.weight"]
        out[d + "post_attention_layernorm.weight"] = sd[s + "post_attention_layernorm.weight"]
        qkv_w = sd[s + "self_attention.query_key_value.weight"]
        q, k, v = torch.split(qkv_w, [q_dim, kv_dim, kv_dim], dim=0)
        out[d + "self_attn.q_proj.weight"], out[d + "self_attn.k_proj.weight"], out[d + "self_attn.v_proj.weight"] = q, k, v
        if cfg.attention_bias:
            qb, kb, vb = torch.split(sd[s + "self_attention.query_key_value.bias"], [q_dim, kv_dim, kv_dim], dim=0)
            out[d + "self_attn.q_proj.bias"], out[d + "self_attn.k_proj.bias"], out[d + "self_attn.v_proj.bias"] = qb, kb, vb
        out[d + "self_attn.o_proj.weight"] = sd[s + "self_attention.dense.weight"]
        out[d + "mlp.gate_up_proj.weight"] = sd[s + "mlp.dense_h_to_4h.weight"]
        out[d + "mlp.down_proj.weight"] = sd[s + "mlp.dense_4h_to_h.weight"]
    return out


def glm_to_chatglm_state_dict(sd, cfg):
    """HF GlmForCausalLM keys -> original ChatGLM keys (adds transformer.rotary_pos_emb.inv_freq)."""
    out = {"transformer.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"]}
    rot = cfg.head_dim // 2  # RotaryEmbedding(kv_channels // 2) in the original code
    base = float(cfg.rope_parameters["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    out["transformer.rotary_pos_emb.inv_freq"] = inv_freq
    for i in range(cfg.num_hidden_layers):
        s = f"model.layers.{i}."
        d = f"transformer.encoder.layers.{i}."
        out[d + "input_layernorm.weight"] = sd[s + "input_layernorm.weight"]
        out[d + "self_attention.query_key_value.weight"] = torch.cat(
            [sd[s + "self_attn.q_proj.weight"], sd[s + "self_attn.k_proj.weight"], sd[s + "self_attn.v_proj.weight"]], 0)
        if cfg.attention_bias:
            out[d + "self_attention.query_key_value.bias"] = torch.cat(
                [sd[s + "self_attn.q_proj.bias"], sd[s + "self_attn.k_proj.bias"], sd[s + "self_attn.v_proj.bias"]], 0)
        out[d + "self_attention.dense.weight"] = sd[s + "self_attn.o_proj.weight"]
        out[d + "post_attention_layernorm.weight"] = sd[s + "post_attention_layernorm.weight"]
        out[d + "mlp.dense_h_to_4h.weight"] = sd[s + "mlp.gate_up_proj.weight"]
        out[d + "mlp.dense_4h_to_h.weight"] = sd[s + "mlp.down_proj.weight"]
    out["transformer.encoder.final_layernorm.weight"] = sd["model.norm.weight"]
    out["transformer.output_layer.weight"] = sd["lm_head.weight"]
    return out


def _load_strict(model, sd):
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    if tied:
        model.tie_weights()


def load_model(model_dir):
    """Returns (fp32 eval model, stop ids (sorted union), pad id)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GlmForCausalLM

    cfg_json = read_json(os.path.join(model_dir, "config.json"))
    gen_path = os.path.join(model_dir, "generation_config.json")
    gen_json = read_json(gen_path) if os.path.exists(gen_path) else {}
    eos = sorted(set(_as_list(cfg_json.get("eos_token_id")) + _as_list(gen_json.get("eos_token_id"))))
    pad = gen_json.get("pad_token_id", cfg_json.get("pad_token_id"))

    if cfg_json.get("model_type") == "chatglm":
        cfg = chatglm_to_glm_config(cfg_json)
        model = GlmForCausalLM(cfg).to(torch.float32)
        _load_strict(model, chatglm_to_glm_state_dict(read_state_dict(model_dir), cfg))
    else:
        sd_keys = list(read_state_dict(model_dir).keys())
        prefix = next((p for p in WRAPPER_PREFIXES if sd_keys and all(k.startswith(p) for k in sd_keys)), None)
        if prefix is None:
            model, info = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch.float32, output_loading_info=True)
            bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
            if bad:
                raise RuntimeError(f"{model_dir}: transformers loading problems: {bad}")
        else:
            cfg = AutoConfig.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            sd = {k[len(prefix):]: v for k, v in read_state_dict(model_dir).items()}
            _load_strict(model, sd)
    model.eval()
    return model, eos, pad


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, min_new_tokens, eos, pad):
    """Greedy generation as transformers does it; returns the JSON-able result dict."""
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=model.device)
    kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, output_logits=True,
                  return_dict_in_generate=True, eos_token_id=list(eos) if eos else None,
                  pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
                  attention_mask=torch.ones_like(ids), temperature=None, top_p=None, top_k=None)
    if min_new_tokens:
        kwargs["min_new_tokens"] = min_new_tokens
    out = model.generate(ids, **kwargs)
    new = [int(t) for t in out.sequences[0, ids.shape[1]:].tolist()]
    first = out.logits[0][0].to(torch.float32).tolist()
    finish = "stop" if (new and new[-1] in eos and len(new) >= max(1, min_new_tokens or 0)) else "length"
    # transformers stops exactly when a stop id is produced, so a stop id can only be last.
    return {"output_ids": new, "first_logits": first, "finish_reason": finish}


def reference(model_dir, input_ids, max_new_tokens, min_new_tokens=0):
    model, eos, pad = load_model(model_dir)
    return generate(model, input_ids, max_new_tokens, min_new_tokens, eos, pad)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--input-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--min-new-tokens", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    ids = [int(x) for x in a.input_ids.split(",") if x.strip()]
    res = reference(a.model, ids, a.max_new_tokens, a.min_new_tokens)
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
