#!/usr/bin/env python3
"""Writes the chat side of the GLM-4.1V fixture (committed), with transformers as the reference:
a tiny tokenizer plus GLM-4.1V-9B-Thinking's real chat template for the tiny glm4v model made by
scripts/make_glm4v_fixtures.py, and the reference renderings / ids / generations of a few chats.

  python3 scripts/make_glm4v_chat_fixtures.py      (after scripts/make_glm4v_fixtures.py: it
                                                    reads the model and images that script writes)

Outputs, under tests/fixtures/glm4v/:
  tiny-safetensors-sharded/tokenizer.json, tokenizer_config.json, chat_template.jinja
      A byte-level BPE small enough for the tiny model's 256 ids: GLM-4's pre-tokenizer (Split on
      GLM-4's regex, then ByteLevel without regex, as GLM-4-9B-chat-hf / GLM-4-0414), 228 BPE ids
      trained here on an English + a little Chinese corpus (only the bytes it uses are in the
      vocabulary; other bytes are dropped, as HF's BPE without unk does), then the added tokens:
        228..239  [MASK] [gMASK] [sMASK] <sop> <eop> <|system|> <|assistant|> <|observation|>
                  <think> </think> <answer> </answer>
        240..245  <|begin_of_image|> <|end_of_image|> <|image|> <|begin_of_video|>
                  <|end_of_video|> <|video|>   (config.json's image/video ids, as GLM-4.1V's
                  151339 151340 151343 151341 151342 151344)
        246, 247  <|endoftext|> <|user|>       (config.json's eos [246, 247]; GLM-4.1V's
                  generation_config eos list starts 151329 <|endoftext|>, 151336 <|user|>, then
                  151338 <|observation|>, which here is 235: the tiny config has two eos ids)
      No post-processor ids (tokenizer(text) adds nothing): the template itself starts with
      [gMASK]<sop>. The chat template is GLM-4.1V-9B-Thinking's (GLM4V_TEMPLATE below), saved as
      chat_template.jinja, so AutoProcessor / Glm4vProcessor loads from the directory (tokenizer +
      the existing preprocessor_config.json; video_preprocessor_config.json is written because
      Glm4vProcessor needs a video processor; preprocessor_config.json is not touched).
  chat_expected.json
      Per conversation: `messages` as an OpenAI client sends them (image parts as
      {"type": "image_url", "image_url": {"url": "images/<name>"}}, the path relative to
      tests/fixtures/glm4v/: a test sends the file, e.g. as a data: URL), the same messages as
      given to transformers (image_url -> {"type": "image", "path": ...}, which is what vLLM and
      SGLang normalize OpenAI image parts to before this template runs: the template itself only
      knows type "image"), `images` in prompt order, and from transformers:
        prompt            processor.apply_chat_template(..., tokenize=False, add_generation_prompt)
        input_ids         processor.tokenizer(prompt) ids: one <|image|> per image, pre-expansion
        expanded_input_ids, image_grid_thw, image_tokens   the processor's output (each <|image|>
                          expanded to t*h*w/merge^2 copies)
        output_ids, first_logits   greedy generate (max_new_tokens = min_new_tokens = 8) and the
                          first step's raw logits, Glm4vForConditionalGeneration fp32 on CPU, recorded
                          as make_glm4v_fixtures.py records them, but generate gets the processor's
                          whole output, mm_token_type_ids included: without it transformers 5.24
                          falls back to 1-D text positions for the image tokens (no M-RoPE).

Where the template comes from (no model hub access here): zai-org/GLM-4.1V-9B-Thinking's
chat_template, as vendored by SGLang's test/srt/test_jinja_template_utils.py
(sgl-project/sglang@65cf1ed0b8b1cec4c51690b3294f3d2367e09ef8, test_detect_msg_content_pattern)
and recorded, with one more blank line after `<|user|>{{ '\\n' }}`, as the hub's
"official_chat_template" at revision 3c1471e51dc811b589d4d12b1c1c7c1c941267c2 in a public
renderer-validation artifact. The two differ only in whitespace that `{%-` removes; they render
identically. GLM4V_TEMPLATE is the hub revision's text.

Deterministic: fixed training corpus, fixed weights; re-running rewrites identical files.
"""
import json
import os

import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers import AddedToken
from transformers import AutoProcessor, Glm4vForConditionalGeneration, PreTrainedTokenizerFast
from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(REPO, "tests", "fixtures", "glm4v")
MODEL = os.path.join(OUT, "tiny-safetensors-sharded")

GLM4V_TEMPLATE = (
    "[gMASK]<sop>\n"
    "{%- for msg in messages %}\n"
    "    {%- if msg.role == 'system' %}\n"
    "<|system|>\n"
    "{{ msg.content }}\n"
    "    {%- elif msg.role == 'user' %}\n"
    "<|user|>{{ '\\n' }}\n"
    "\n"
    "        {%- if msg.content is string %}\n"
    "{{ msg.content }}\n"
    "        {%- else %}\n"
    "            {%- for item in msg.content %}\n"
    "                {%- if item.type == 'video' or 'video' in item %}\n"
    "<|begin_of_video|><|video|><|end_of_video|>\n"
    "                {%- elif item.type == 'image' or 'image' in item %}\n"
    "<|begin_of_image|><|image|><|end_of_image|>\n"
    "                {%- elif item.type == 'text' %}\n"
    "{{ item.text }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "    {%- elif msg.role == 'assistant' %}\n"
    "        {%- if msg.metadata %}\n"
    "<|assistant|>{{ msg.metadata }}\n"
    "{{ msg.content }}\n"
    "        {%- else %}\n"
    "<|assistant|>\n"
    "{{ msg.content }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{% if add_generation_prompt %}<|assistant|>\n"
    "{% endif %}")

GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_SIZE = 228
ADDED = [("[MASK]", True), ("[gMASK]", True), ("[sMASK]", True), ("<sop>", True), ("<eop>", True),
         ("<|system|>", True), ("<|assistant|>", True), ("<|observation|>", True), ("<think>", False),
         ("</think>", False), ("<answer>", False), ("</answer>", False),
         ("<|begin_of_image|>", True), ("<|end_of_image|>", True), ("<|image|>", True),
         ("<|begin_of_video|>", True), ("<|end_of_video|>", True), ("<|video|>", True),
         ("<|endoftext|>", True), ("<|user|>", True)]
EXPECTED_IDS = {"<|begin_of_image|>": 240, "<|end_of_image|>": 241, "<|image|>": 242, "<|begin_of_video|>": 243,
                "<|end_of_video|>": 244, "<|video|>": 245, "<|endoftext|>": 246, "<|user|>": 247}

PHONE_SYSTEM = ("You are a phone agent. Look at the screen and the task, think step by step inside <think> "
                "</think>, then give exactly one action inside <answer></answer>: do(action=\"Tap\", "
                "element=[x,y]), do(action=\"Type\", text=\"...\"), do(action=\"Swipe\", start=[x,y], "
                "end=[x,y]), do(action=\"Back\") or finish(message=\"...\").")
PHONE_STEPS = [
    ("Open the settings app.", "The home screen shows the settings icon at the bottom right.",
     "do(action=\"Tap\", element=[820,910])"),
    ("** Screen Info ** Settings opened.", "Wi-Fi is the second row; tap it to see networks.",
     "do(action=\"Tap\", element=[500,212])"),
    ("** Screen Info ** Wi-Fi page.", "The switch is off; turn it on first.",
     "do(action=\"Tap\", element=[900,140])"),
    ("** Screen Info ** Wi-Fi is on, networks listed.", "The list is long; swipe up to find Office-5G.",
     "do(action=\"Swipe\", start=[500,800], end=[500,300])"),
    ("** Screen Info ** Office-5G visible.", "Tap Office-5G, then type the password.",
     "do(action=\"Type\", text=\"pass 1234\")"),
]

CORPUS = [PHONE_SYSTEM, "You are a helpful assistant.", "Describe this image in one sentence.",
          "What is on the screen? Answer briefly.", "Compare the two pictures.",
          "Hello! What can you do? I can answer questions, read screens and describe images.",
          "打开设置，然后连接无线网络。你好，世界！", "The quick brown fox jumps over the lazy dog. 0123456789",
          "".join(chr(c) for c in range(32, 127)) + "\t\n"]  # every printable ASCII byte is in the vocabulary
for task, think, action in PHONE_STEPS:
    CORPUS += [task, f"<think>{think}</think><answer>{action}</answer>"]


def conversations():
    """(name, OpenAI-style messages). Image parts: image_url with a path under tests/fixtures/glm4v."""
    def image(name):
        return {"type": "image_url", "image_url": {"url": f"images/{name}"}}

    def text(t):
        return {"type": "text", "text": t}

    history = [{"role": "system", "content": PHONE_SYSTEM}]
    for i, (task, think, action) in enumerate(PHONE_STEPS):
        # The agent keeps only the latest screenshot: earlier user turns are text only.
        history.append({"role": "user", "content": [text(task)]})
        history.append({"role": "assistant", "content": f"<think>{think}</think><answer>{action}</answer>"})
    history.append({"role": "user", "content": [text("** Screen Info ** Password field focused."),
                                                image("phone.png")]})
    return [
        ("text_only", [{"role": "system", "content": "You are a helpful assistant."},
                       {"role": "user", "content": "Hello! What can you do?"}]),
        ("text_history", [{"role": "user", "content": "打开设置"},
                          {"role": "assistant", "content": "<think>Settings first.</think><answer>OK</answer>"},
                          {"role": "user", "content": [text("And then?")]}]),
        ("one_image_url", [{"role": "user", "content": [image("photo.jpg"), text("Describe this image.")]}]),
        ("phone_tall_text_first", [{"role": "system", "content": "You are a helpful assistant."},
                                   {"role": "user", "content": [text("What is on the screen?"),
                                                                image("phone.png")]}]),
        ("two_images", [{"role": "user", "content": [text("Compare"), image("wide.png"), text("with"),
                                                     image("small.png"), text(".")]}]),
        ("phone_agent_5_steps", history),
    ]


def to_transformers(messages):
    """OpenAI image_url parts -> {"type": "image", "path": ...} (what vLLM/SGLang hand this template)."""
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append(dict(m))
            continue
        parts = []
        for p in m["content"]:
            if p["type"] == "image_url":
                parts.append({"type": "image", "path": os.path.join(OUT, p["image_url"]["url"])})
            else:
                parts.append(dict(p))
        out.append({"role": m["role"], "content": parts})
    return out


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_SIZE, show_progress=False, special_tokens=[], min_frequency=1)
    # The added tokens are not BPE text: train on the corpus with them removed.
    plain = []
    for line in CORPUS:
        for t, _ in ADDED:
            line = line.replace(t, " ")
        plain.append(line)
    tok.train_from_iterator(plain * 4, trainer=trainer)
    assert tok.get_vocab_size() == BPE_SIZE, tok.get_vocab_size()
    for t, special in ADDED:
        added = AddedToken(t, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    for t, want in EXPECTED_IDS.items():
        assert tok.token_to_id(t) == want, (t, tok.token_to_id(t), want)
    assert tok.get_vocab_size() == 248
    return tok


def write_tokenizer(tok):
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False, model_max_length=1024, padding_side="left")
    fast.chat_template = GLM4V_TEMPLATE
    fast.save_pretrained(MODEL)
    # Glm4vProcessor also needs a video processor; its config goes beside preprocessor_config.json.
    Glm4vVideoProcessor().to_json_file(os.path.join(MODEL, "video_preprocessor_config.json"))
    with open(os.path.join(MODEL, "chat_template.jinja"), "w") as f:
        f.write(GLM4V_TEMPLATE)
    # Keep the files stable across transformers versions' incidental fields.
    for name in ("special_tokens_map.json",):
        p = os.path.join(MODEL, name)
        if os.path.exists(p):
            os.remove(p)


def main():
    tok = make_tokenizer()
    write_tokenizer(tok)
    processor = AutoProcessor.from_pretrained(MODEL)
    assert type(processor).__name__ == "Glm4vProcessor", type(processor).__name__
    assert processor.chat_template == GLM4V_TEMPLATE
    model = Glm4vForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
    merge = processor.image_processor.merge_size
    out = {"template_source": "zai-org/GLM-4.1V-9B-Thinking chat_template (see scripts/make_glm4v_chat_fixtures.py)",
           "processor": type(processor).__name__, "transformers_model": "Glm4vForConditionalGeneration",
           "add_generation_prompt": True, "max_new_tokens": 8, "min_new_tokens": 8,
           "generate_inputs": "the processor's output as is: input_ids (expanded), attention_mask, "
                              "mm_token_type_ids (so transformers computes the 3-D M-RoPE positions), "
                              "pixel_values, image_grid_thw",
           "conversations": []}
    for name, messages in conversations():
        tf_messages = to_transformers(messages)
        prompt = processor.apply_chat_template(tf_messages, tokenize=False, add_generation_prompt=True)
        ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert processor.tokenizer(prompt)["input_ids"] == ids  # no post-processor ids
        assert processor.tokenizer.decode(ids) == prompt  # no byte of the prompt is outside the vocabulary
        inputs = processor.apply_chat_template(tf_messages, tokenize=True, add_generation_prompt=True,
                                               return_dict=True, return_tensors="pt")
        images = [p["image_url"]["url"] for m in messages if not isinstance(m["content"], str)
                  for p in m["content"] if p["type"] == "image_url"]
        # Same images through the processor directly: the chat path must not change them.
        if images:
            pil = [Image.open(os.path.join(OUT, p)).convert("RGB") for p in images]
            direct = processor(text=[prompt], images=pil, return_tensors="pt")
            assert torch.equal(direct["input_ids"], inputs["input_ids"])
            assert torch.equal(direct["pixel_values"], inputs["pixel_values"])
        # The processor's output as is: transformers 5.24 computes the 3-D (M-RoPE) positions only
        # when mm_token_type_ids is given; without it generate silently uses 1-D text positions.
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        expanded = inputs["input_ids"][0].tolist()
        grid = inputs["image_grid_thw"].tolist() if "image_grid_thw" in inputs else []
        out["conversations"].append({
            "name": name,
            "messages": messages,
            "transformers_messages": [
                {**m, "content": [{**p, "path": os.path.relpath(p["path"], OUT)} if "path" in p else p
                                  for p in m["content"]]} if not isinstance(m["content"], str) else m
                for m in tf_messages],
            "images": images,
            "prompt": prompt,
            "input_ids": ids,
            "expanded_input_ids": expanded,
            "image_grid_thw": grid,
            "image_tokens": [t * h * w // (merge * merge) for t, h, w in grid],
            "output_ids": gen.sequences[0, len(expanded):].tolist(),
            "first_logits": [round(float(v), 5) for v in gen.logits[0][0].tolist()],
        })
    with open(os.path.join(OUT, "chat_expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {MODEL}/tokenizer.json etc. and {OUT}/chat_expected.json: {len(out['conversations'])} chats")


if __name__ == "__main__":
    main()
