#!/usr/bin/env python3
"""An Open-AutoGLM-style phone agent against `glmserve serve --http-port 0` serving a GLM-4.1V
(glm4v) model: the official `openai` SDK, streaming, each step's last user message holding one new
phone screenshot (PNG, made here with PIL, phone-shaped and of several sizes) as a base64
data:image/png image_url part plus the screen info text; the client's settings (temperature 0,
top_p 0.85, frequency_penalty 0.2; max_tokens small here), and, as Open-AutoGLM does, the previous
step's image dropped from the history and the assistant's reply appended. Five steps; every step
must be answered with non-empty content, and its usage must report the image tokens: the count
transformers' Glm4vImageProcessor gives for that screenshot (when transformers is installed) and
the resized size (glmserve's usage.images).

The model directory needs a tokenizer whose chat template renders image parts (the tiny fixture,
tests/fixtures/glm4v/tiny-safetensors-sharded, has one); without it the test exits 77 (skipped).
The replies of the tiny random model are noise: what is checked is the API path, not the words.
Needs (pip): openai Pillow.
"""
import argparse
import base64
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from checks import check, report  # noqa: E402
from http_test_util import Server  # noqa: E402

try:
    import openai
    from PIL import Image, ImageDraw
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install openai Pillow)")
    sys.exit(77)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
# Screenshot sizes (width, height): phone-shaped, none a multiple of 28.
SIZES = [(108, 240), (120, 266), (90, 200), (144, 320), (100, 222)]
SYSTEM = ("You are a phone agent. Look at the screenshot and answer with one action: "
          "do(action=\"Tap\", element=[x,y]) or finish(message=\"...\").")


def screenshot(width, height, step):
    """A phone screen: status bar, an app bar, a list of rows, a button; different every step."""
    img = Image.new("RGB", (width, height), (245, 245, 245))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, width, height // 20], fill=(20, 20, 20))
    d.rectangle([0, height // 20, width, height // 8], fill=(30 + 40 * step, 90, 200))
    for row in range(5):
        top = height // 8 + 4 + row * (height // 8)
        d.rectangle([4, top, width - 4, top + height // 10], outline=(180, 180, 180), fill=(255, 255, 255))
        d.text((8, top + 2), f"item {step}.{row}", fill=(0, 0, 0))
    d.ellipse([width - 30, height - 40, width - 6, height - 16], fill=(220, 60 + 30 * step, 60))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def reference_tokens(model_dir, png_bytes):
    """transformers' image token count and resized (height, width) for one screenshot, or None."""
    try:
        from transformers import AutoImageProcessor
    except ImportError:
        return None
    processor = AutoImageProcessor.from_pretrained(model_dir)
    out = processor(images=[Image.open(io.BytesIO(png_bytes))], return_tensors="np")
    t, h, w = (int(x) for x in out["image_grid_thw"][0])
    merge = processor.merge_size
    return t * h * w // (merge * merge), h * processor.patch_size, w * processor.patch_size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True, help="a glm4v model directory with a tokenizer")
    args = ap.parse_args()
    if not any(os.path.exists(os.path.join(args.model, f)) for f in TOKENIZER_FILES):
        print(f"SKIP: {args.model} has no tokenizer (the chat template renders the image parts)")
        return 77
    config = json.load(open(os.path.join(args.model, "config.json")))
    if config.get("model_type") != "glm4v":
        print(f"SKIP: {args.model} is not a glm4v model")
        return 77

    server = Server(args.binary, args.model)
    try:
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="EMPTY", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        messages = [{"role": "system", "content": SYSTEM}]
        task = "Open the settings app and turn on Wi-Fi."
        for step, (width, height) in enumerate(SIZES):
            png = screenshot(width, height, step)
            screen_info = json.dumps({"current_app": "Settings" if step else "Home"}, ensure_ascii=False)
            text = f"{task}\n\n** Screen Info **\n\n{screen_info}" if step == 0 else f"** Screen Info **\n\n{screen_info}"
            messages.append({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                {"type": "text", "text": text}]})
            stream = client.chat.completions.create(
                model=model, messages=messages, max_tokens=12, temperature=0.0, top_p=0.85, frequency_penalty=0.2,
                stream=True, stream_options={"include_usage": True})
            parts, usage, finish = [], None, None
            for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for c in chunk.choices:
                    if c.delta.content:
                        parts.append(c.delta.content)
                    finish = c.finish_reason or finish
            content = "".join(parts)
            check(content != "" and finish in ("stop", "length"), f"step {step + 1} ({width}x{height}): {content!r}")
            details = usage and usage.prompt_tokens_details
            image_tokens = details and details.image_tokens
            images = (usage.model_extra or {}).get("images") if usage else None
            check(bool(image_tokens) and images and len(images) == 1 and images[0]["tokens"] == image_tokens
                  and usage.prompt_tokens > image_tokens,
                  f"step {step + 1}: usage reports {image_tokens} image tokens, images {images}")
            ref = reference_tokens(args.model, png)
            if ref is not None and images:
                check((image_tokens, images[0]["height"], images[0]["width"]) == ref,
                      f"step {step + 1}: image tokens and resized size {(image_tokens, images[0]['height'], images[0]['width'])}"
                      f" == transformers' {ref}")
            # Open-AutoGLM: the screenshot leaves the history once answered; the reply stays.
            messages[-1]["content"] = [p for p in messages[-1]["content"] if p["type"] == "text"]
            messages.append({"role": "assistant", "content": content})
    finally:
        server.stop()

    return report()


if __name__ == "__main__":
    sys.exit(main())
