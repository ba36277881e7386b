#!/usr/bin/env python3
"""The same refusal counts under the same `code` label of glmserve_requests_total on both front ends
(issue 18: gRPC named codes with abseil's names, HTTP with a switch of its own, and a malformed
protobuf was not counted at all). The real binary on loopback, gRPC (grpcio) and HTTP side by side;
each case is sent once per front end and the label deltas compared. Exit 77 = skipped."""
import http.client
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "pyutil"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "chaos"))
from glmserve_process import GlmserveProcess, HTTP_READY, inference_stubs, server_test_args  # noqa: E402
from ports import free_port  # noqa: E402

FAILURES = []
KEY = "sk-code-label-test"


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def scrape(port):
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    codes = {}
    for line in text.splitlines():
        if line.startswith("glmserve_requests_total{"):
            label = line.split('code="', 1)[1].split('"', 1)[0]
            codes[label] = float(line.rsplit(" ", 1)[1])
    return codes


def delta(before, after):
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def http_post(port, path, body, key=KEY):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        c.request("POST", path, body=body if isinstance(body, str) else json.dumps(body), headers=headers)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def main():
    args = server_test_args()
    if args is None:
        return 77
    try:
        import grpc
        pb, pb_grpc = inference_stubs(args.proto_root)
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: grpcio / grpc_tools unavailable ({e})")
        return 77
    tmp = tempfile.mkdtemp()
    key_file = os.path.join(tmp, "keys")
    with open(key_file, "w") as f:
        f.write(KEY + "\n")
    grpc_port, metrics_port = free_port(), free_port()
    server = GlmserveProcess(args.binary, args.model,
                             ["--http-port", "0", "--metrics-port", str(metrics_port), "--api-key-file", key_file,
                              "--log-format", "text"],
                             port=grpc_port, ready_pattern=HTTP_READY)
    try:
        http_port = server.port
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = pb_grpc.InferenceStub(channel)
        auth = [("authorization", f"Bearer {KEY}")]
        end = time.monotonic() + 120
        while time.monotonic() < end:  # serving once the model is loaded
            try:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5, metadata=auth)
                break
            except grpc.RpcError:
                time.sleep(0.2)
        max_context = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5, metadata=auth).max_context
        long_prompt = [1] * (max_context + 5)

        def grpc_call(request, metadata=auth):
            try:
                stub.Infer(request, timeout=60, metadata=metadata)
            except grpc.RpcError:
                pass

        def grpc_raw(payload):
            try:
                channel.unary_unary("/glmserve.v1.Inference/Infer", request_serializer=None,
                                    response_deserializer=None)(payload, timeout=10, metadata=auth)
            except grpc.RpcError:
                pass

        cases = [
            ("OK", lambda: grpc_call(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2)),
             lambda: http_post(http_port, "/v1/completions", {"model": "m", "prompt": [1, 2, 3], "max_tokens": 2})),
            ("no API key", lambda: grpc_call(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2), metadata=[]),
             lambda: http_post(http_port, "/v1/completions", {"model": "m", "prompt": [1, 2, 3]}, key=None)),
            ("max new tokens over the cap", lambda: grpc_call(pb.InferRequest(input_ids=[1, 2], max_new_tokens=100000)),
             lambda: http_post(http_port, "/v1/completions", {"model": "m", "prompt": [1, 2], "max_tokens": 100000})),
            ("prompt longer than the context", lambda: grpc_call(pb.InferRequest(input_ids=long_prompt, max_new_tokens=1)),
             lambda: http_post(http_port, "/v1/completions", {"model": "m", "prompt": long_prompt, "max_tokens": 1})),
            ("id outside the vocabulary", lambda: grpc_call(pb.InferRequest(input_ids=[10 ** 9], max_new_tokens=1)),
             lambda: http_post(http_port, "/v1/completions", {"model": "m", "prompt": [10 ** 9], "max_tokens": 1})),
            ("malformed body", lambda: grpc_raw(b"\x08"),
             lambda: http_post(http_port, "/v1/completions", "{")),
        ]
        for name, via_grpc, via_http in cases:
            before = scrape(metrics_port)
            via_grpc()
            middle = scrape(metrics_port)
            via_http()
            after = scrape(metrics_port)
            g, h = delta(before, middle), delta(middle, after)
            check(sum(g.values()) == 1, f"{name}: gRPC counted once ({g})")
            check(g == h, f"{name}: the same code label on gRPC {g} and HTTP {h}")
    finally:
        server.terminate()
    if FAILURES:
        print(server.log()[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
