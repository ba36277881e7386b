#!/usr/bin/env python3
"""Images against the real binary serving the tiny GLM-4.1V fixture (tests/fixtures/glm4v/
tiny-safetensors-sharded) on loopback, HTTP and gRPC.

- Every bad image over /v1/chat/completions: 400 invalid_request_error whose `param` is the JSON
  path of the image (truncated PNG, a 40000x40000 header, not an image, wrong base64, a GIF media
  type, aspect ratio > 200, http(s) URLs (unless --allow-media-fetch: then fetched from the listed
  hosts only, a 404 named), file:// outside --allowed-local-media-path, too many
  images, max_pixels above the server's, an image in an assistant message), and none of them
  reaches the engine (no request_accepted line; a streaming request running meanwhile gives the
  same ids as alone).
- gRPC: the same refusals name proto fields; input_ids with one placeholder per image and the
  images (the fixture's cases, made with transformers: expected.json) are expanded as transformers
  expands them (usage.prompt_tokens, image_tokens, each image's resized size) and the request log
  says images=N image_tokens=M resized=HxW (and host_ms, image_decode_ms, image_preprocess_ms).
- --check-output-ids (on in ctest): the greedy output ids equal transformers' (expected.json), so
  the images went through the vision tower as transformers' processor prepares them.
- Start-up: --allowed-local-media-path that is not a directory and --max-pixels below the smallest
  image exit 2 naming the flag.

A chat request whose images are all good is answered 200 (or, on a copy of the fixture without
tokenizer files, refused afterwards naming messages for the missing tokenizer). Needs (pip):
grpcio grpcio-tools Pillow. Exit 77 = skipped.
"""
import argparse
import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from checks import check, report  # noqa: E402
from glmserve_process import inference_stubs  # noqa: E402
from http_test_util import Server  # noqa: E402
from metrics import sample  # noqa: E402
from ports import free_port  # noqa: E402

try:
    import grpc
    from PIL import Image
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install grpcio grpcio-tools Pillow)")
    sys.exit(77)


def png(width, height, color=(30, 120, 200)):
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width, height):
    """A PNG whose header claims width x height, with a tiny IDAT: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def data_url(data, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat(parts, **extra):
    body = {"model": "glm4v", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": "You are a phone agent."},
                         {"role": "user", "content": parts + [{"type": "text", "text": "What is on screen?"}]}]}
    body.update(extra)
    return body


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def error_of(data):
    try:
        return json.loads(data)["error"]
    except Exception:  # noqa: BLE001
        return None


def accepted_count(server):
    """Chat requests the engine was given (the gRPC stream running beside them is not counted)."""
    return sum(1 for ln in server.log().splitlines() if "request accepted" in ln and "rpc=/v1/chat/completions" in ln)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True, help="tests/fixtures/glm4v/tiny-safetensors-sharded")
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--check-output-ids", action="store_true",
                    help="also compare greedy output ids with transformers' (needs the model side)")
    args = ap.parse_args()
    fixture = os.path.dirname(os.path.abspath(args.model))
    expected = json.load(open(os.path.join(fixture, "expected.json")))
    try:
        pb, pb_grpc = inference_stubs(args.proto_root)
    except ImportError as e:
        print(f"SKIP: {e}")
        return 77

    # Start-up refusals: exit 2 naming the flag, before serving.
    out = subprocess.run([args.binary, "serve", "--model", args.model, "--port", "0",
                          "--allowed-local-media-path", "/nonexistent/glmserve-media"],
                         capture_output=True, text=True, timeout=60)
    check(out.returncode == 2 and "--allowed-local-media-path: '/nonexistent/glmserve-media' is not an existing "
          "directory" in out.stderr, f"--allowed-local-media-path not a directory: exit {out.returncode}")
    out = subprocess.run([args.binary, "serve", "--model", args.model, "--port", "0", "--max-pixels", "100"],
                         capture_output=True, text=True, timeout=120)
    check(out.returncode == 2 and "--max-pixels: 100 is below the smallest image" in out.stderr,
          f"--max-pixels 100: exit {out.returncode} {out.stderr.strip().splitlines()[-1:]}")

    media = tempfile.mkdtemp(prefix="glmserve_media_")
    outside = tempfile.mkdtemp(prefix="glmserve_outside_")
    with open(os.path.join(media, "screen.png"), "wb") as f:
        f.write(png(108, 240))
    with open(os.path.join(outside, "secret.png"), "wb") as f:
        f.write(png(56, 56))
    os.symlink(os.path.join(outside, "secret.png"), os.path.join(media, "link.png"))

    server = Server(args.binary, args.model, ["--allowed-local-media-path", media, "--limit-images-per-prompt", "3",
                                              "--debug-step-latency-ms", "5"])
    try:
        m = re.search(r"(?<!http )serving on 127\.0\.0\.1:(\d+)", server.log())
        channel = grpc.insecure_channel(f"127.0.0.1:{m.group(1)}")
        stub = pb_grpc.InferenceStub(channel)
        C = "/v1/chat/completions"
        URL = "messages[1].content[0].image_url.url"

        # A streaming text request runs through the bad images below; its ids must equal a run alone.
        text_req = pb.InferRequest(input_ids=[5, 10, 20, 21], max_new_tokens=48, min_new_tokens=48)
        alone = list(stub.Infer(text_req, timeout=120).output_ids)
        beside = {}

        def run_beside():
            ids = []
            for msg in stub.InferStream(text_req, timeout=120):
                ids.extend(msg.output_ids)
            beside["ids"] = ids
        t = threading.Thread(target=run_beside)
        t.start()

        before = accepted_count(server)
        truncated = png(64, 64)[:60]
        cases = [
            ("truncated PNG", image_part(data_url(truncated)), URL, "PNG"),
            ("40000x40000 header", image_part(data_url(png_header_only(40000, 40000))), URL, "1600000000 pixels"),
            ("not an image", image_part(data_url(b"just some text, not a picture")), URL, "not a PNG or JPEG"),
            ("wrong base64", image_part("data:image/png;base64,@@not base64@@"), URL, "not valid base64"),
            ("GIF media type", image_part(data_url(b"GIF89a....", "image/gif")), URL, "image/gif"),
            ("aspect ratio 250 (1x250)", image_part(data_url(png(1, 250))), URL, "aspect ratio must be smaller than 200"),
            ("http URL", image_part("http://example.com/screen.png"), URL, "fetching image URLs is not enabled"),
            ("https URL (vLLM shorthand)", {"type": "image_url", "image_url": "https://example.com/s.png"},
             "messages[1].content[0].image_url", "fetching image URLs is not enabled"),
            ("file:// outside the allowed directory", image_part("file://" + os.path.join(outside, "secret.png")),
             URL, "allowed local media directory"),
            ("file:// with ..", image_part(f"file://{media}/../{os.path.basename(outside)}/secret.png"), URL,
             "allowed local media directory"),
            ("file:// symlink pointing out", image_part(f"file://{media}/link.png"), URL,
             "allowed local media directory"),
        ]
        for what, part, param, says in cases:
            st, _, data = server.post(C, chat([part]))
            err = error_of(data)
            check(st == 400 and err and err["type"] == "invalid_request_error" and err["param"] == param
                  and says in err["message"],
                  f"{what}: {st} param={err and err['param']!r} {err and err['message'][:160]!r}")
        good = image_part(data_url(png(108, 240)))
        st, _, data = server.post(C, chat([good, good, good, good]))
        err = error_of(data)
        check(st == 400 and err and err["param"] == "messages[1].content[3]" and "at most 3" in err["message"],
              f"4 images over --limit-images-per-prompt 3: {st} {err and err['param']!r}")
        st, _, data = server.post(C, chat([good], mm_processor_kwargs={"max_pixels": 11760001}))
        err = error_of(data)
        check(st == 400 and err and err["param"] == "mm_processor_kwargs.max_pixels"
              and "outside [1568, 11760000]" in err["message"],
              f"max_pixels above the server's: {st} {err and err['message']!r}")
        body = chat([good])
        body["messages"].insert(1, {"role": "assistant", "content": [good]})
        st, _, data = server.post(C, body)
        err = error_of(data)
        check(st == 400 and err and err["param"] == "messages[1].content[0]" and "user messages only" in err["message"],
              f"image in an assistant message: {st} {err and err['param']!r}")
        # A body over 4 MiB: a model that takes images reads up to 16 MiB by default (a screenshot as
        # base64 is 1-4 MB), so this one is read whole and refused for its prompt, not as too large.
        st, _, data = server.post(C, {"model": "m", "max_tokens": 1,
                                      "messages": [{"role": "user", "content": "a" * (5 << 20)}]})
        err = error_of(data)
        check(st == 400 and err and err.get("code") == "context_length_exceeded",
              f"5 MiB body to a model that takes images: read, refused for its length (got {st} {err})")
        # An image whose tokens alone pass the prompt's bound is refused from its header, before a
        # decode (a header-only PNG: decoded, it would fail as "not enough image data" instead).
        st, _, data = server.post(C, chat([image_part(data_url(png_header_only(4000, 4000)))]))
        err = error_of(data)
        check(st == 400 and err and err.get("code") == "context_length_exceeded" and
              err["param"].endswith("content[0].image_url.url") and
              "brings the prompt's images to" in err["message"],
              f"image tokens over the prompt bound: refused from the header ({st} {err})")
        check(accepted_count(server) == before, "no refused image reached the engine (no request accepted)")

        # Good images pass the image stage (and are answered; without a tokenizer the prompt would be
        # refused afterwards, naming messages).
        for what, part in [("base64 PNG", good), ("file:// under the allowed directory",
                                                  image_part(f"file://{media}/screen.png")),
                           ("JPEG", image_part(data_url(open(os.path.join(fixture, "images/photo.jpg"), "rb").read(),
                                                        "image/jpeg")))]:
            st, _, data = server.post(C, chat([part], mm_processor_kwargs={"max_pixels": 6272}))
            err = error_of(data)
            check(st == 200 or (st == 400 and err["param"] == "messages" and "tokenizer" in err["message"]),
                  f"{what}: the image is accepted ({st} {err and err['param']!r})")

        t.join(120)
        check(beside.get("ids") == alone and len(alone) == 48,
              f"a streaming request beside the refused images: same {len(alone)} ids as alone")

        # gRPC: proto field names.
        def grpc_refusal(req):
            try:
                stub.Infer(req, timeout=60)
                return None, ""
            except grpc.RpcError as e:
                return e.code(), e.details()
        code, details = grpc_refusal(pb.InferRequest(max_new_tokens=4, messages=[pb.Message(role="user", parts=[
            pb.ContentPart(text="look"), pb.ContentPart(image=pb.Image(data=truncated, mime_type="image/png"))])]))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("messages[0].parts[1].image.data: PNG"),
              f"gRPC truncated PNG in parts: {code} {details[:120]!r}")
        code, details = grpc_refusal(pb.InferRequest(input_ids=[5, 240, 242, 241, 20], max_new_tokens=4,
                                                     images=[pb.Image(data=png(56, 56), mime_type="image/gif")]))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("images[0].mime_type:"),
              f"gRPC GIF mime_type: {code} {details[:120]!r}")
        code, details = grpc_refusal(pb.InferRequest(input_ids=[5, 240, 242, 241, 20], max_new_tokens=4,
                                                     images=[pb.Image(data=png(56, 56))], max_pixels=10**9))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("max_pixels: 1000000000 is outside"),
              f"gRPC max_pixels above the server's: {code} {details[:120]!r}")
        code, details = grpc_refusal(pb.InferRequest(input_ids=[5, 240, 242, 241, 20], max_new_tokens=4))
        check(code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("input_ids: image placeholders"),
              f"gRPC placeholder without an image: {code} {details[:120]!r}")

        # gRPC input_ids + images: expanded as transformers does (expected.json).
        for case in expected["cases"]:
            images = [pb.Image(data=open(os.path.join(fixture, p), "rb").read()) for p in case["images"]]
            req = pb.InferRequest(input_ids=case["input_ids"], images=images,
                                  max_new_tokens=expected["max_new_tokens"], request_id=f"img-{case['name']}")
            r = stub.Infer(req, timeout=120)
            u = r.usage
            sizes = [(14 * g[1], 14 * g[2], n) for g, n in zip(case["image_grid_thw"], case["image_tokens"])]
            check(u.prompt_tokens == len(case["expanded_input_ids"]) and u.image_tokens == sum(case["image_tokens"])
                  and [(i.height, i.width, i.tokens) for i in u.images] == sizes
                  and len(r.output_ids) == expected["max_new_tokens"],
                  f"gRPC {case['name']}: prompt_tokens {u.prompt_tokens}, image_tokens {u.image_tokens}, "
                  f"images {[(i.height, i.width, i.tokens) for i in u.images]} (transformers: {sizes})")
            if args.check_output_ids:
                check(list(r.output_ids) == case["output_ids"],
                      f"gRPC {case['name']}: output ids {list(r.output_ids)} == transformers' {case['output_ids']}")
            streamed = [mm for mm in stub.InferStream(req, timeout=120)]
            last = streamed[-1].usage
            check(last.image_tokens == u.image_tokens and list(last.images) == list(u.images),
                  f"gRPC {case['name']}: the stream's final usage has the images too")
        log = server.log()
        line = [ln for ln in log.splitlines() if "request_id=img-one_wide" in ln and "request accepted" in ln]
        check(bool(line) and "images=1" in line[0] and "image_tokens=12" in line[0] and "resized=84x112" in line[0],
              f"request log: {line[0] if line else log[-400:]}")
        # Where the host's time went: the image's decode and preprocessing are part of host_ms.
        times = {k: float(v) for k, v in re.findall(r"(host_ms|image_decode_ms|image_preprocess_ms)=([0-9.]+)",
                                                     line[0] if line else "")}
        check(len(times) == 3 and times["image_decode_ms"] + times["image_preprocess_ms"] <= times["host_ms"] + 0.2,
              f"request_accepted times the host part: {times}")
        line = [ln for ln in log.splitlines() if "request_id=img-two_images" in ln and "request finished" in ln]
        check(bool(line) and "images=2" in line[0] and "image_tokens=22" in line[0]
              and "resized=84x112,140x56" in line[0], f"request log (finished): {line[0] if line else ''}")
    finally:
        server.stop()

    # --allow-media-fetch: http(s) image URLs fetched from the listed hosts, within the limits; a
    # loopback HTTP server holds the image.
    import functools
    import http.server
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=media))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    base = f"127.0.0.1:{files.server_address[1]}"
    server = Server(args.binary, args.model, ["--allow-media-fetch", "true", "--allowed-media-domains", "127.0.0.1",
                                              "--media-fetch-timeout-ms", "5000"])
    try:
        C = "/v1/chat/completions"
        URL = "messages[1].content[0].image_url.url"
        fetched = server.post(C, chat([image_part(f"http://{base}/screen.png")], max_tokens=2))
        with open(os.path.join(media, "screen.png"), "rb") as f:
            inline = server.post(C, chat([image_part(data_url(f.read()))], max_tokens=2))
        usages = [json.loads(data).get("usage", {}) if st == 200 else error_of(data) for st, _, data in (fetched, inline)]
        # The second request finds the first's text blocks in the prefix cache: compare all but that.
        for u in usages:
            u.get("prompt_tokens_details", {}).pop("cached_tokens", None)
        check(fetched[0] == 200 and len(usages[0].get("images", [])) == 1 and usages[0] == usages[1],
              f"an http:// image on an allowed host is fetched and answered as the same bytes inline: {usages}")
        for what, url, says in [("a missing file", f"http://{base}/missing.png", "HTTP 404"),
                                ("a host not listed", f"http://localhost:{files.server_address[1]}/screen.png",
                                 "not in this server's --allowed-media-domains")]:
            st, _, data = server.post(C, chat([image_part(url)]))
            err = error_of(data)
            check(st == 400 and err and err["param"] == URL and says in err["message"],
                  f"fetch of {what}: {st} {err and err['message'][:160]!r}")
    finally:
        server.stop()
        files.shutdown()

    image_metrics(args)
    return report()


def image_metrics(args):
    """glmserve_images_total, glmserve_image_tokens_total and glmserve_image_host_seconds count the images of the
    requests the engine took, not those of a refused request."""
    metrics_port = free_port()
    names = ["glmserve_images_total", "glmserve_image_tokens_total", "glmserve_image_host_seconds_count",
             "glmserve_image_host_seconds_sum"]

    def scrape():
        return {name: sample(metrics_port, name) for name in names}

    server = Server(args.binary, args.model, ["--metrics-port", str(metrics_port)])
    try:
        before = scrape()
        check(before.get("glmserve_images_total") == 0 and before.get("glmserve_image_host_seconds_count") == 0,
              f"image metrics start at 0: {before}")
        st, _, data = server.post("/v1/chat/completions", chat([image_part(data_url(png(64, 64)[:60]))]))
        check(st == 400, f"a truncated PNG is refused ({st})")
        st, _, data = server.post("/v1/chat/completions",
                                  chat([image_part(data_url(png(56, 56))), image_part(data_url(png(84, 112)))]))
        usage = json.loads(data).get("usage", {}) if st == 200 else {}
        tokens = sum(i["tokens"] for i in usage.get("images", []))
        check(st == 200 and len(usage.get("images", [])) == 2 and tokens > 0, f"two images answered: {st} {usage}")
        after = scrape()
        check(after.get("glmserve_images_total") == 2, f"glmserve_images_total 2: {after}")
        check(after.get("glmserve_image_tokens_total") == tokens, f"glmserve_image_tokens_total {tokens}: {after}")
        check(after.get("glmserve_image_host_seconds_count") == 2 and after.get("glmserve_image_host_seconds_sum", 0) > 0,
              f"glmserve_image_host_seconds has both images' host time: {after}")
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
