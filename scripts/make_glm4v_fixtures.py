#!/usr/bin/env python3
"""Writes the GLM-4.1V (Glm4vForConditionalGeneration, model_type "glm4v") fixture (committed),
with transformers as the reference: the architecture of AutoGLM-Phone-9B at a tiny size.

  python3 scripts/make_glm4v_fixtures.py

Outputs, under tests/fixtures/glm4v/ (kept apart from tests/fixtures/models/, which every text
parity test walks):
  tiny-safetensors-sharded/   config.json (glm4v: text + vision config, image token ids),
                              generation_config.json, preprocessor_config.json, two safetensors
                              shards + index in the released key layout (model.visual.*,
                              model.language_model.*, lm_head.*), fp32
  images/                     PNG and JPEG inputs of several sizes and aspect ratios (a tall
                              phone-shaped one, a wide one, one smaller than min_pixels, grayscale,
                              RGBA)
  expected.json               per case: the ids as the CLI takes them (one image_token_id per image
                              between image_start/end), the ids transformers' processor expands them
                              to, image_grid_thw, image token counts, pixel_values' shape with its
                              sum / sum of squares / first values, greedy output_ids and the
                              3-D rotary positions (get_rope_index, [3][len]) and the decode delta,
                              first step's logits (transformers generate with mm_token_type_ids as
                              the processor returns it, fp32, CPU)
                              text_cases: prompts without images (transformers then uses plain
                              1-D positions: the three mrope components are equal), greedy
                              output_ids and first logits, for the text-only path
  broken/three-problems/      the same model in fp16, single file, with a renamed vision key, a
                              missing merger key and a mis-shaped patch_embed: every one must be
                              listed at once (broken.json names what the report must contain)

Deterministic: fixed seeds; re-running rewrites identical files.
"""
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import Glm4vConfig, Glm4vForConditionalGeneration
from transformers.models.glm4v.image_processing_glm4v import Glm4vImageProcessor

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(REPO, "tests", "fixtures", "glm4v")
MODEL = os.path.join(OUT, "tiny-safetensors-sharded")
IMAGES = os.path.join(OUT, "images")

# Ids of the tiny vocabulary (GLM-4.1V's real ones are 151339-151344; only their roles matter).
IMAGE_START, IMAGE_END, IMAGE_TOKEN, VIDEO_START, VIDEO_END, VIDEO_TOKEN = 240, 241, 242, 243, 244, 245
EOS = [246, 247]
VOCAB = 256


def config():
    return Glm4vConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
            # GLM-4.1V-9B: head_dim 128, half of it rotary, mrope_section [8, 12, 12] (sums to 32 =
            # rotary dim / 2). Here head_dim 16, rotary dim 8: sections of 4 frequencies.
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                                 mrope_section=[2, 1, 1]),
            eos_token_id=EOS, pad_token_id=0),
        vision_config=dict(
            depth=2, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, image_size=56, in_channels=3, rms_norm_eps=1e-5),
        image_token_id=IMAGE_TOKEN, image_start_token_id=IMAGE_START, image_end_token_id=IMAGE_END,
        video_token_id=VIDEO_TOKEN, video_start_token_id=VIDEO_START, video_end_token_id=VIDEO_END,
        tie_word_embeddings=False)


def scaled_init(model, seed):
    """std-0.2 weights, 1+0.1*randn norm weights, 0.1*randn biases: the default 0.02 init gives
    near-uniform logits, where greedy repeats one token and ids say nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name and p.dim() == 1:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def make_images():
    """(name, PIL image as saved, path). Smooth gradients plus noise: resampling is exercised
    without every pixel being noise."""
    rng = np.random.default_rng(7)
    specs = [("wide", 84, 56, "RGB", "png"), ("phone", 60, 134, "RGB", "png"), ("small", 30, 20, "RGB", "png"),
             ("gray", 70, 70, "L", "png"), ("rgba", 64, 48, "RGBA", "png"), ("photo", 96, 72, "RGB", "jpg")]
    out = []
    for name, w, h, mode, ext in specs:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255.0 / w, y * 255.0 / h, (x + y) * 127.0 / (w + h)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        if mode == "L":
            image = image.convert("L")
        elif mode == "RGBA":
            alpha = np.clip(rng.normal(200, 40, (h, w)), 0, 255).astype(np.uint8)
            image = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
        path = os.path.join(IMAGES, f"{name}.{ext}")
        image.save(path, quality=90) if ext == "jpg" else image.save(path)
        out.append((name, Image.open(path), path))
    return out


def shard(state):
    """Two shards plus the index, as released checkpoints are laid out."""
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        filename = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, os.path.join(MODEL, filename), metadata={"format": "pt"})
        weight_map.update({k: filename for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(MODEL, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
        f.write("\n")


# Prompts without images, generated by the text-only path (one case includes image ids as plain
# tokens: without pixel_values transformers embeds them like any other id).
TEXT_CASES = [("text_short", [5, 6, 7, 20, 21]),
              ("text_long", [(i * 37 + 11) % 200 + 1 for i in range(40)]),
              ("text_image_ids_no_pixels", [5, IMAGE_START, IMAGE_TOKEN, IMAGE_END, 20, 21])]


def text_cases(model):
    out = []
    for name, ids in TEXT_CASES:
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            gen = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=8,
                                 min_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
        out.append({"name": name, "input_ids": ids, "max_new_tokens": 8, "min_new_tokens": 8,
                    "output_ids": gen.sequences[0, input_ids.shape[1]:].tolist(),
                    "first_logits": [round(float(v), 5) for v in gen.logits[0][0].tolist()]})
    return out


def write_broken(state):
    """One checkpoint with three independent problems, so the report must list all of them."""
    broken = os.path.join(OUT, "broken", "three-problems")
    os.makedirs(broken)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(os.path.join(MODEL, name), broken)
    tensors = {k: v.to(torch.float16) for k, v in state.items()}
    tensors["model.visual.blocks.1.attn.qkv_proj.weight"] = tensors.pop("model.visual.blocks.1.attn.qkv.weight")
    del tensors["model.visual.merger.gate_proj.weight"]
    proj = tensors["model.visual.patch_embed.proj.weight"]  # [32, 3, 2, 14, 14]
    tensors["model.visual.patch_embed.proj.weight"] = proj[:, :, :1].contiguous()
    save_file(tensors, os.path.join(broken, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(broken, "broken.json"), "w") as f:
        json.dump({"kind": "three-problems",
                   "description": "fp16; model.visual.blocks.1.attn.qkv.weight renamed qkv_proj, "
                                  "model.visual.merger.gate_proj.weight absent, "
                                  "model.visual.patch_embed.proj.weight stored as [32, 3, 1, 14, 14]",
                   "expect_in_message": [
                       "unexpected key 'model.visual.blocks.1.attn.qkv_proj.weight'",
                       "missing key 'model.visual.blocks.1.attn.qkv.weight'",
                       "missing key 'model.visual.merger.gate_proj.weight'",
                       "shape mismatch: key 'model.visual.patch_embed.proj.weight'",
                       "expected [32, 3, 2, 14, 14], found [32, 3, 1, 14, 14]"]}, f, indent=1)
        f.write("\n")


def main():
    # Only what this script writes: the tokenizer and chat files beside them come from
    # scripts/make_glm4v_chat_fixtures.py.
    for path in (IMAGES, os.path.join(OUT, "broken")):
        shutil.rmtree(path, ignore_errors=True)
    if os.path.isdir(MODEL):
        for name in os.listdir(MODEL):
            if name.startswith("model") and (name.endswith(".safetensors") or name.endswith(".json")):
                os.remove(os.path.join(MODEL, name))
    os.makedirs(MODEL, exist_ok=True)
    os.makedirs(IMAGES)
    torch.manual_seed(0)
    cfg = config()
    model = Glm4vForConditionalGeneration(cfg).eval()
    scaled_init(model, seed=1234)
    cfg.architectures = ["Glm4vForConditionalGeneration"]
    cfg.save_pretrained(MODEL)
    with open(os.path.join(MODEL, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": EOS, "pad_token_id": 0, "do_sample": False}, f, indent=2)
        f.write("\n")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shard(state)
    write_broken(state)

    processor = Glm4vImageProcessor()
    processor.save_pretrained(MODEL)
    merge = cfg.vision_config.spatial_merge_size
    images = make_images()
    # Cases: one image each; two images in one prompt; the phone screenshot after text, as the
    # Open-AutoGLM client sends it.
    cases = [(f"one_{name}", [name]) for name, _, _ in images]
    cases += [("two_images", ["wide", "phone"]), ("text_then_phone", ["phone"])]
    by_name = {name: (image, path) for name, image, path in images}
    expected = {"image_processor": type(processor).__name__, "transformers_model": "Glm4vForConditionalGeneration",
                "image_token_id": IMAGE_TOKEN, "image_start_token_id": IMAGE_START,
                "image_end_token_id": IMAGE_END, "max_new_tokens": 8, "cases": []}
    for case, names in cases:
        pil = [by_name[n][0].convert("RGB") for n in names]
        feats = processor(images=pil, return_tensors="pt")
        grid = feats["image_grid_thw"]
        counts = [int(t * h * w) // (merge * merge) for t, h, w in grid.tolist()]
        prefix = [5, 6, 7] if case == "text_then_phone" else [5]
        ids, expanded = list(prefix), list(prefix)
        for i, count in enumerate(counts):
            ids += [IMAGE_START, IMAGE_TOKEN, IMAGE_END, 10 + i]
            expanded += [IMAGE_START] + [IMAGE_TOKEN] * count + [IMAGE_END, 10 + i]
        ids += [20, 21]
        expanded += [20, 21]
        input_ids = torch.tensor([expanded])
        # What Glm4vProcessor returns beside input_ids: 1 at image tokens. Without it transformers
        # falls back to 1-D positions for the image tokens (not what a served request gets).
        mm_token_type_ids = (input_ids == IMAGE_TOKEN).int()
        with torch.no_grad():
            positions, rope_deltas = model.model.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids,
                                                                image_grid_thw=grid)
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 mm_token_type_ids=mm_token_type_ids, pixel_values=feats["pixel_values"],
                                 image_grid_thw=grid, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        pv = feats["pixel_values"].to(torch.float64)
        expected["cases"].append({
            "name": case,
            "images": [os.path.relpath(by_name[n][1], OUT) for n in names],
            "input_ids": ids,
            "expanded_input_ids": expanded,
            "image_grid_thw": grid.tolist(),
            "image_tokens": counts,
            "pixel_values_shape": list(feats["pixel_values"].shape),
            "pixel_values_sum": float(pv.sum()),
            "pixel_values_sum_squares": float((pv * pv).sum()),
            "pixel_values_first": [round(float(v), 6) for v in feats["pixel_values"].flatten()[:16]],
            "rope_positions": positions[:, 0].tolist(),
            "rope_delta": int(rope_deltas[0, 0]),
            "output_ids": out.sequences[0, input_ids.shape[1]:].tolist(),
            "first_logits": [round(float(v), 5) for v in out.logits[0][0].tolist()],
        })
    expected["text_cases"] = text_cases(model)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(expected['cases'])} image cases, {len(expected['text_cases'])} text cases")


if __name__ == "__main__":
    main()
