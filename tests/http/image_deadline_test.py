#!/usr/bin/env python3
"""Costly images against the real binary serving the tiny GLM-4.1V fixture on loopback: the work a
request's images cost stops with the request (its deadline, its client), and is bounded per
request (docs/operations.md#images: --max-request-image-pixels, decode slots first come first
served).

Each check compares server CPU (its /proc stat, not wall time: a loaded CI box stretches wall
time, not CPU) against a full decode of the same images measured in this test:

- gRPC, six costly PNGs with a 0.3 s deadline: DEADLINE_EXCEEDED naming the image it stopped at,
  and less than half the CPU of decoding all six (before the fix: all six decoded, then CANCELLED).
- HTTP, the same six posted with `timeout: 300ms`: 504 whose message names the image.
- HTTP, the same six posted by a client that hangs up at once: less than half that CPU, nothing
  reaches the engine (no `request accepted` line).
- Seven 49 M-pixel PNGs (381 KB each) in one request: 400 naming the image over
  --max-request-image-pixels, from the headers: no decode.
- A normal one-screenshot request while another client keeps sending costly images: 200.

Needs (pip): grpcio grpcio-tools. Exit 77 = skipped.
"""
import base64
import json
import os
import re
import socket
import struct
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from checks import check, report  # noqa: E402
from glmserve_process import inference_stubs, server_test_args  # noqa: E402
from http_test_util import Server  # noqa: E402

try:
    import grpc
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install grpcio grpcio-tools)")
    sys.exit(77)

C = "/v1/chat/completions"
COSTLY = 6  # images per costly request


def png_blank(width, height, color_type=6, bit_depth=16):
    """A PNG of zeros (compresses to almost nothing, decodes at full cost): 16-bit RGBA by default."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    bpp = {0: 1, 2: 3, 6: 4}[color_type] * bit_depth // 8
    comp = zlib.compressobj(9)
    line = b"\0" * (1 + width * bpp)
    rows = max(1, (1 << 22) // len(line))
    idat = b"".join(comp.compress(line * min(rows, height - y)) for y in range(0, height, rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def data_url(data):
    return "data:image/png;base64," + base64.b64encode(data).decode()


def chat(images, **extra):
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    body = {"model": "glm4v", "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": parts + [{"type": "text", "text": "What is on screen?"}]}]}
    body.update(extra)
    return body


class Cpu:
    """The server's CPU seconds (user + system)."""

    def __init__(self, pid):
        self.pid = pid

    def now(self):
        fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, limit_s=120):
        """Returns once the server has been (almost) idle for a second."""
        end = time.time() + limit_s
        time.sleep(0.3)
        while time.time() < end:
            before = self.now()
            time.sleep(1.0)
            if self.now() - before < 0.05:
                return


def main():
    args = server_test_args()
    if args is None:
        return 77
    try:
        pb, pb_grpc = inference_stubs(args.proto_root)
    except ImportError as e:
        print(f"SKIP: {e}")
        return 77
    # 4000x4000 16-bit RGBA: 16 M pixels, ~0.5 s of one core each; six fit the budget given here.
    costly = png_blank(4000, 4000)
    bomb = png_blank(7000, 7000)  # 49 M pixels in 381 KB
    screenshot = png_blank(108, 240, color_type=2, bit_depth=8)
    server = Server(args.binary, args.model, ["--max-request-image-pixels", str(COSTLY * 4000 * 4000),
                                              "--max-message-bytes", str(16 << 20)])
    try:
        cpu = Cpu(server.proc.pid)
        m = re.search(r"(?<!http )serving on 127\.0\.0\.1:(\d+)", server.log())
        stub = pb_grpc.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{m.group(1)}"))
        ids = [5] + [240, 242, 241] * COSTLY + [20]

        # What decoding all six costs here: one full request (no deadline), small resized size.
        cpu.settle()
        c0 = cpu.now()
        reply = stub.Infer(pb.InferRequest(input_ids=ids, max_new_tokens=1, max_pixels=6272,
                                           images=[pb.Image(data=costly)] * COSTLY), timeout=300)
        full = cpu.now() - c0
        check(len(reply.output_ids) == 1 and full > 0.5,
              f"{COSTLY} costly images decoded in full: {full:.2f} s of server CPU")

        # gRPC: a 0.3 s deadline stops the decoding.
        cpu.settle()
        c0 = cpu.now()
        try:
            stub.Infer(pb.InferRequest(input_ids=ids, max_new_tokens=1, max_pixels=6272,
                                       images=[pb.Image(data=costly)] * COSTLY), timeout=0.3)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        cpu.settle()
        spent = cpu.now() - c0
        check(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"gRPC with a 0.3 s deadline: {code}")
        check(spent < 0.5 * full, f"... cost {spent:.2f} s of server CPU (a full decode: {full:.2f} s; want < 50%)")
        check(re.search(r"images\[\d\]\.data: the request's deadline passed", server.log()) is not None,
              "... refused naming the image it stopped at")

        # HTTP: the same with a 300 ms timeout header.
        c0 = cpu.now()
        st, _, data = server.post(C, chat([costly] * COSTLY, mm_processor_kwargs={"max_pixels": 6272}),
                                  headers={"timeout": "300ms"}, timeout=300)
        err = json.loads(data).get("error", {}) if data else {}
        cpu.settle()
        spent = cpu.now() - c0
        check(st == 504 and "the request's deadline passed" in err.get("message", ""),
              f"HTTP with timeout 300ms: {st} {err.get('message', '')[:120]!r}")
        check(spent < 0.5 * full, f"... cost {spent:.2f} s of server CPU (want < 50% of {full:.2f} s)")

        # HTTP: a client that uploads and hangs up at once.
        body = json.dumps(chat([costly] * COSTLY, mm_processor_kwargs={"max_pixels": 6272})).encode()
        accepted_before = server.log().count("request accepted")
        c0 = cpu.now()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        sock.close()
        cpu.settle()
        spent = cpu.now() - c0
        check(spent < 0.5 * full, f"HTTP client gone at once: {spent:.2f} s of server CPU (want < 50% of {full:.2f} s)")
        check(server.log().count("request accepted") == accepted_before, "... and nothing reached the engine")
        check("http_status=499" in server.log(), "... logged as cancelled (499)")

        # Over the per-request budget: refused from the headers, naming the image, no decode.
        c0 = cpu.now()
        # (small max_pixels: their tokens alone would refuse the first, from its header too)
        st, _, data = server.post(C, chat([bomb] * 7, mm_processor_kwargs={"max_pixels": 6272}), timeout=60)
        err = json.loads(data).get("error", {}) if data else {}
        spent = cpu.now() - c0
        check(st == 400 and err.get("param") == "messages[0].content[1].image_url.url" and
              "--max-request-image-pixels" in err.get("message", ""),
              f"seven 49 M-pixel PNGs: {st} param={err.get('param')!r}")
        check(spent < 0.25 * full, f"... cost {spent:.2f} s of server CPU (one such image alone costs more)")

        # A normal request completes while another client keeps sending costly images.
        stop = threading.Event()
        attacks = []

        def attacker():
            while not stop.is_set():
                try:
                    attacks.append(server.post(C, chat([costly], mm_processor_kwargs={"max_pixels": 6272}),
                                               timeout=300)[0])
                except OSError:
                    pass
        threads = [threading.Thread(target=attacker, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        st, _, data = server.post(C, chat([screenshot]), timeout=120)
        stop.set()
        for t in threads:
            t.join(300)
        check(st == 200, f"a normal screenshot request under costly-image traffic: {st}")
        check(len(attacks) > 0 and all(s == 200 for s in attacks),
              f"... the costly requests were served too: {sorted(set(attacks))} x{len(attacks)}")
        st, _ = server.request("GET", "/health")[:2]
        check(st == 200, "server healthy afterwards")
    finally:
        server.stop()
    return report()


if __name__ == "__main__":
    sys.exit(main())
