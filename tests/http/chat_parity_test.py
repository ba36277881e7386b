#!/usr/bin/env python3
"""GLM-4.1V chat through the real binary's APIs against transformers (tests/fixtures/glm4v/
chat_expected.json, written by scripts/make_glm4v_chat_fixtures.py with transformers'
Glm4vProcessor and Glm4vForConditionalGeneration on the tiny glm4v fixture).

Each conversation (text only, images as content parts, a five-step phone agent) goes through
/v1/chat/completions with its images as base64 data: URLs and through gRPC with Message.parts
(image bytes), greedy with the fixture's max_new_tokens / min_new_tokens:
- always: usage.prompt_tokens equals the length of transformers' expanded prompt, the image
  tokens and each image's resized size (from image_grid_thw) equal transformers';
- --check-output-ids: gRPC's output_ids equal transformers' greedy ids;
- --check-http-text: the HTTP content equals transformers' tokenizer decoding of them
  (skip_special_tokens=True): the added tokens that are not special (<think>, <answer>, ...) stay
  in the text, as transformers keeps them (the phone agent reads its action out of <answer>).

Skipped (77) without chat_expected.json or a tokenizer in the fixture.
Needs (pip): openai grpcio grpcio-tools.
"""
import argparse
import base64
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from checks import check, report  # noqa: E402
from glmserve_process import inference_stubs  # noqa: E402
from http_test_util import Server  # noqa: E402

try:
    import grpc
    import openai
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install openai grpcio grpcio-tools)")
    sys.exit(77)


def mime_of(path):
    return "image/jpeg" if path.lower().endswith((".jpg", ".jpeg")) else "image/png"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True, help="tests/fixtures/glm4v/tiny-safetensors-sharded")
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--check-output-ids", action="store_true")
    ap.add_argument("--check-http-text", action="store_true")
    args = ap.parse_args()
    fixture = os.path.dirname(os.path.abspath(args.model))
    path = os.path.join(fixture, "chat_expected.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(args.model, "tokenizer.json")):
        print(f"SKIP: no {path} or no tokenizer in {args.model} (waits on the GLM-4.1V chat template fixtures)")
        return 77
    expected = json.load(open(path))
    pb, pb_grpc = inference_stubs(args.proto_root)
    decode = None
    if args.check_http_text:
        try:
            from transformers import AutoTokenizer
            decode = AutoTokenizer.from_pretrained(args.model).decode
        except Exception as e:  # noqa: BLE001
            print(f"note: no transformers tokenizer ({e}); HTTP text not compared")

    def image_bytes(url):
        with open(os.path.join(fixture, url), "rb") as f:
            return f.read()

    server = Server(args.binary, args.model, ["--max-message-bytes", str(16 << 20)])
    try:
        port = re.search(r"(?<!http )serving on 127\.0\.0\.1:(\d+)", server.log()).group(1)
        stub = pb_grpc.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="EMPTY", max_retries=0, timeout=120)
        for conv in expected["conversations"]:
            name = conv["name"]
            http_messages, grpc_messages = [], []
            for m in conv["messages"]:
                if isinstance(m["content"], str):
                    http_messages.append(m)
                    grpc_messages.append(pb.Message(role=m["role"], content=m["content"]))
                    continue
                parts, proto_parts = [], []
                for p in m["content"]:
                    if p["type"] == "image_url":
                        data = image_bytes(p["image_url"]["url"])
                        mime = mime_of(p["image_url"]["url"])
                        parts.append({"type": "image_url", "image_url": {
                            "url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}})
                        proto_parts.append(pb.ContentPart(image=pb.Image(data=data, mime_type=mime)))
                    else:
                        parts.append(p)
                        proto_parts.append(pb.ContentPart(text=p["text"]))
                http_messages.append({"role": m["role"], "content": parts})
                grpc_messages.append(pb.Message(role=m["role"], parts=proto_parts))
            want_prompt = len(conv["expanded_input_ids"])
            want_images = [{"height": 14 * g[1], "width": 14 * g[2], "tokens": n}
                           for g, n in zip(conv["image_grid_thw"], conv["image_tokens"])]
            r = client.chat.completions.create(
                model="m", messages=http_messages, max_tokens=expected["max_new_tokens"], temperature=0,
                extra_body={"min_tokens": expected["min_new_tokens"]})
            u = r.usage
            images = (u.model_extra or {}).get("images", [])
            image_tokens = u.prompt_tokens_details.image_tokens if u.prompt_tokens_details else 0
            check(u.prompt_tokens == want_prompt and images == want_images
                  and (image_tokens or 0) == sum(conv["image_tokens"]),
                  f"HTTP {name}: prompt_tokens {u.prompt_tokens} (transformers {want_prompt}), images {images}")
            g = stub.Infer(pb.InferRequest(messages=grpc_messages, max_new_tokens=expected["max_new_tokens"],
                                           min_new_tokens=expected["min_new_tokens"]), timeout=120)
            check(g.usage.prompt_tokens == want_prompt and g.usage.image_tokens == sum(conv["image_tokens"]),
                  f"gRPC {name}: prompt_tokens {g.usage.prompt_tokens} (transformers {want_prompt})")
            if args.check_output_ids:
                check(list(g.output_ids) == conv["output_ids"],
                      f"gRPC {name}: output ids {list(g.output_ids)} == transformers' {conv['output_ids']}")
            if args.check_http_text:
                if decode is not None:
                    want_text = decode(conv["output_ids"], skip_special_tokens=True)
                    check(r.choices[0].message.content == want_text,
                          f"HTTP {name}: content {r.choices[0].message.content!r} == transformers' {want_text!r}")
        # A vision token typed into a text part is refused naming that part, in param too.
        st, _, data = server.post("/v1/chat/completions", {"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look <|begin_of_image|> here"}]}]})
        err = (json.loads(data).get("error") or {}) if st == 400 else {}
        check(err.get("param") == "messages[0].content[0]" and "<|begin_of_image|>" in err.get("message", ""),
              f"vision token in a text part: {st} param={err.get('param')!r} {err.get('message', '')[:120]!r}")
    finally:
        server.stop()

    return report()


if __name__ == "__main__":
    sys.exit(main())
