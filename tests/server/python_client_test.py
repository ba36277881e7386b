#!/usr/bin/env python3
"""A second client for `glmserve serve` that shares no code with the server.

Stubs are generated from proto/glmserve/v1/inference.proto at test time with grpcio-tools. Starts
the real binary on loopback (--port 0), then checks: reflection lists the services (no proto
needed), health SERVING, unary == stream == `glmserve generate --json`, invalid inputs answer
INVALID_ARGUMENT naming the field, deadline exceeded and cancel free the slot, SIGTERM drain.

Needs (pip): grpcio grpcio-tools grpcio-health-checking grpcio-reflection. Exit 77 = skipped.
"""
import concurrent.futures
import json
import math
import os
import signal
import subprocess
import sys
import time

try:
    import grpc
    from grpc_tools import protoc  # noqa: F401 (present, or the test is skipped)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection)")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from checks import FAILURES, check  # noqa: E402
from glmserve_process import GlmserveProcess, inference_stubs, server_test_args  # noqa: E402


class Server(GlmserveProcess):
    def __init__(self, binary, model, extra=()):
        super().__init__(binary, model, extra)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")


def generate(binary, model, ids, n):
    out = subprocess.run([binary, "generate", "--model", model, "--input-ids",
                          ",".join(map(str, ids)), "--max-new-tokens", str(n), "--json"],
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)["output_ids"]


def main():
    args = server_test_args()
    if args is None:
        return 77
    pb, pb_grpc = inference_stubs(args.proto_root)

    server = Server(args.binary, args.model, ["--debug-step-latency-ms", "5"])
    try:
        stub = pb_grpc.InferenceStub(server.channel)
        # Reflection: what grpcurl's "list" does.
        refl = reflection_pb2_grpc.ServerReflectionStub(server.channel)
        reply = next(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in reply.list_services_response.service}
        check({"glmserve.v1.Inference", "grpc.health.v1.Health"} <= names,
              f"reflection lists the services: {sorted(names)}")
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="glmserve.v1.Inference")]), timeout=10))
        check(len(reply.file_descriptor_response.file_descriptor_proto) > 0,
              "reflection serves the proto descriptor")
        # The health service it lists is described too (grpcurl describe / calls through reflection).
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.health.v1.Health")]), timeout=10))
        check(len(reply.file_descriptor_response.file_descriptor_proto) > 0,
              f"reflection describes grpc.health.v1.Health ({reply.error_response.error_message or 'ok'})")

        health = health_pb2_grpc.HealthStub(server.channel)
        for svc in ("", "glmserve.v1.Inference"):
            st = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status
            check(st == health_pb2.HealthCheckResponse.SERVING, f"health '{svc}' SERVING")

        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        check(info.vocab_size > 0 and info.max_context > 0, f"ModelInfo {info.architecture} "
              f"vocab={info.vocab_size} ctx={info.max_context}")

        prompt = [1, 2, 3]
        expected = generate(args.binary, args.model, prompt, 12)
        u = stub.Infer(pb.InferRequest(input_ids=prompt, max_new_tokens=12, request_id="py-1"),
                       timeout=30)
        check(list(u.output_ids) == expected, f"unary == generate ({list(u.output_ids)})")
        check(u.request_id == "py-1", "request_id echoed")
        check(u.usage.prompt_tokens == 3 and u.usage.completion_tokens == len(expected), "usage")
        msgs = list(stub.InferStream(pb.InferRequest(input_ids=prompt, max_new_tokens=12,
                                                      request_id="py-2"), timeout=30))
        ids = [i for m in msgs for i in m.output_ids]
        check(ids == expected, "stream concatenated == generate")
        check(all(m.request_id == "py-2" for m in msgs), "request_id on every stream message")
        check(msgs[-1].finish_reason == u.finish_reason != pb.UNSPECIFIED,
              "final stream message carries finish_reason")

        # Text in, text out (the bundled tokenizer): chat messages give the ids transformers'
        # apply_chat_template gives; the text is HF's decode without special tokens.
        conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好 😀 hello"}]
        chat = stub.Infer(pb.InferRequest(messages=[pb.Message(**m) for m in conv], max_new_tokens=12),
                          timeout=120)
        chat_stream = list(stub.InferStream(pb.InferRequest(messages=[pb.Message(**m) for m in conv],
                                                            max_new_tokens=12), timeout=120))
        check("".join(m.text for m in chat_stream) == chat.text, "stream text deltas == unary text")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            AutoTokenizer = None
        if AutoTokenizer is not None:
            hf = AutoTokenizer.from_pretrained(args.model)
            want = hf.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False)
            want = list(want["input_ids"] if hasattr(want, "keys") else want)
            check(chat.usage.prompt_tokens == len(want), "chat prompt tokens == apply_chat_template")
            check(list(chat.output_ids) == generate(args.binary, args.model, want, 12),
                  "chat output == generate(apply_chat_template ids)")
            check(chat.text == hf.decode(list(chat.output_ids), skip_special_tokens=True),
                  "text == HF decode(skip_special_tokens=True)")

        bad = [
            (dict(input_ids=[]), "input_ids"),
            (dict(input_ids=[], messages=[pb.Message(role="bot", content="hi")]), "messages[0].role"),
            (dict(stop=[""]), "stop[0]"),
            (dict(input_ids=[1, 99999]), "input_ids[1]"),
            (dict(max_new_tokens=-1), "max_new_tokens"),
            (dict(max_new_tokens=10**7), "max_new_tokens"),
            (dict(min_new_tokens=50, max_new_tokens=5), "min_new_tokens"),
            (dict(temperature=math.nan), "temperature"),
            (dict(temperature=-1.0), "temperature"),
            (dict(top_p=2.0), "top_p"),
            (dict(top_k=-1), "top_k"),
            (dict(stop_token_ids=[99999]), "stop_token_ids[0]"),
            (dict(input_ids=[1] * 2040, max_new_tokens=100), "max context"),
        ]
        for fields, field in bad:
            req = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=4)
            for k, v in fields.items():
                if isinstance(v, list):
                    del getattr(req, k)[:]
                    getattr(req, k).extend(v)
                else:
                    setattr(req, k, v)
            try:
                stub.Infer(req, timeout=10)
                check(False, f"{field}: INVALID_ARGUMENT expected")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.details(),
                      f"{field}: {e.code().name} {e.details()}")

        long_req = pb.InferRequest(input_ids=prompt, max_new_tokens=1500, min_new_tokens=1500)
        try:
            stub.Infer(long_req, timeout=0.3)
            check(False, "deadline: DEADLINE_EXCEEDED expected")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline: {e.code().name}")
        call = stub.InferStream(long_req, timeout=60)
        next(call)
        call.cancel()
        t0 = time.monotonic()
        stub.Infer(pb.InferRequest(input_ids=prompt, max_new_tokens=4), timeout=10)
        check(time.monotonic() - t0 < 3, "after deadline + cancel a request still runs quickly")

        # 64 concurrent clients.
        with concurrent.futures.ThreadPoolExecutor(64) as ex:
            outs = list(ex.map(lambda i: list(stub.Infer(
                pb.InferRequest(input_ids=prompt, max_new_tokens=12), timeout=120).output_ids),
                range(64)))
        check(all(o == expected for o in outs), "64 concurrent clients all correct")

        # SIGTERM with requests in flight.
        drain_req = pb.InferRequest(input_ids=prompt, max_new_tokens=100, min_new_tokens=100)
        # A load balancer's health Watch stays open through the drain: it must not hold the exit
        # for --shutdown-grace-ms (5 s) once the calls are done.
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        check(next(watch).status == health_pb2.HealthCheckResponse.SERVING, "health Watch: SERVING")
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(lambda: list(stub.Infer(drain_req, timeout=60).output_ids))
                    for _ in range(4)]
            time.sleep(0.2)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            st = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            check(st == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING while draining")
            try:
                stub.Infer(pb.InferRequest(input_ids=prompt, max_new_tokens=2), timeout=5)
                check(False, "draining: UNAVAILABLE expected")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAVAILABLE, f"draining: {e.code().name}")
            results = [f.result(timeout=60) for f in futs]
        check(all(len(r) == 100 for r in results), "in-flight requests completed during drain")
        t0 = time.monotonic()
        check(server.proc.wait(30) == 0, "exit 0 after drain")
        check(time.monotonic() - t0 < 3, f"exit within 3 s of the drain with a health Watch open "
              f"({time.monotonic() - t0:.2f} s)")
        watch.cancel()
    finally:
        server.kill()

    # --reflection false (production): the reflection service is gone, the API still answers.
    quiet = Server(args.binary, args.model, ["--reflection", "false"])
    try:
        refl = reflection_pb2_grpc.ServerReflectionStub(quiet.channel)
        try:
            next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                           timeout=10))
            check(False, "--reflection false: reflection still answers")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNIMPLEMENTED, f"--reflection false: {e.code().name}")
        stub = pb_grpc.InferenceStub(quiet.channel)
        check(len(stub.Infer(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2), timeout=30).output_ids) > 0,
              "--reflection false: Infer answers")
    finally:
        quiet.kill()

    # A KV pool smaller than the model's positions (--kv-blocks 20: 320 tokens, the tiny model
    # allows 2048) is what one request can hold: advertised as max_context, and the default
    # max_new_tokens (256) shrinks to it. Before, 2048 was advertised and a 200-token prompt without
    # max_new_tokens was refused naming a field the client never sent.
    small = Server(args.binary, args.model, ["--kv-blocks", "20"])
    try:
        stub = pb_grpc.InferenceStub(small.channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        check(info.max_context == 320, f"--kv-blocks 20: max_context is the KV pool's 320 ({info.max_context})")
        r = stub.Infer(pb.InferRequest(input_ids=[5] * 200, min_new_tokens=0), timeout=60)
        check(r.usage.completion_tokens <= 120 and r.usage.prompt_tokens == 200,
              f"the default max_new_tokens shrinks to the pool ({r.usage.completion_tokens} new)")
        try:
            stub.Infer(pb.InferRequest(input_ids=[5] * 200, max_new_tokens=200), timeout=30)
            check(False, "an explicit max_new_tokens past the pool is refused")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens" in e.details()
                  and "KV cache" in e.details(), f"past the pool: {e.code().name} {e.details()!r}")
    finally:
        small.kill()
    if FAILURES:
        print("".join(server.lines[-40:]))
        print(f"{len(FAILURES)} checks failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
