#!/usr/bin/env python3
"""API keys, TLS, mutual TLS and the per-client cap, end to end: the real `glmserve serve` on
loopback (gRPC and --http-port), real clients (grpcio; the `openai` SDK through an httpx client
that trusts the test's CA), certificates made with the openssl CLI in a temporary directory.

Checks: UNAUTHENTICATED / 401 (OpenAI shape, WWW-Authenticate) without or with a wrong key, OK with
a key from --api-key-file or GLMSERVE_API_KEY; gRPC health, HTTP /health and /metrics open; no key
in the logs; --max-requests-per-client counted per key across gRPC and HTTP (RESOURCE_EXHAUSTED /
429 + Retry-After) while another key is served; TLS and mTLS with grpcio and the openai SDK
(plaintext and certificate-less clients refused); bad TLS / key flags exit 2 naming the flag before
any port is bound. Needs (pip): grpcio grpcio-tools grpcio-health-checking openai. Exit 77 = skipped.
"""
import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "pyutil"))
from ports import free_port  # noqa: E402
from checks import FAILURES, check  # noqa: E402
from glmserve_process import GlmserveProcess, inference_stubs  # noqa: E402

try:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    import openai
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install grpcio grpcio-tools grpcio-health-checking openai)")
    sys.exit(77)

GRPC_LINE = r"glmserve: serving on 127\.0\.0\.1:(\d+)"
KEYS = ["sk-test-alpha-0123456789", "sk-test-bravo-9876543210"]
ENV_KEY = "sk-test-env-key-555"


def make_certs(d):
    """ca.crt/key; server.crt/key (localhost, 127.0.0.1) and client.crt/key signed by the CA."""
    def run(*cmd):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = lambda n: os.path.join(d, n)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=glmserve-test-ca",
        "-keyout", p("ca.key"), "-out", p("ca.crt"),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage, san in (("server", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
                             ("client", "clientAuth", "")):
        with open(p(name + ".ext"), "w") as f:
            f.write(san + f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage={usage}\n")
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={'localhost' if name == 'server' else 'client'}",
            "-keyout", p(name + ".key"), "-out", p(name + ".csr"))
        run("openssl", "x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
            "-CAcreateserial", "-days", "1", "-out", p(name + ".crt"), "-extfile", p(name + ".ext"))
    return p


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Server(GlmserveProcess):
    def __init__(self, binary, model, extra=(), env=None):
        self.http_port = free_port()
        self.metrics_port = free_port()
        old = os.environ.copy()
        if env:
            os.environ.update(env)
        try:
            super().__init__(binary, model, ["--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port),
                                             "--log-format", "text", *extra], ready_pattern=GRPC_LINE)
        finally:
            os.environ.clear()
            os.environ.update(old)


def http(method, url, body=None, headers=None, context=None, timeout=30):
    """(status, headers lower-case, body bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def chat_body(max_tokens=4, **kw):
    return {"model": "glm4-tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, **kw}


def code_of(fn):
    try:
        fn()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def auth_and_quota(args, pb, pb_grpc, tmp):
    key_file = os.path.join(tmp, "keys")
    with open(key_file, "w") as f:
        f.write("# test keys\n" + "\n".join(KEYS) + "\n")
    server = Server(args.binary, args.model, ["--api-key-file", key_file, "--max-requests-per-client", "2",
                                              "--debug-step-latency-ms", "20", "--max-batch", "8"],
                    env={"GLMSERVE_API_KEY": ENV_KEY})
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.InferenceStub(ch)
        req = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2)
        md = lambda k: (("authorization", f"Bearer {k}"),)  # noqa: E731

        code, msg = code_of(lambda: stub.Infer(req, timeout=30))
        check(code == grpc.StatusCode.UNAUTHENTICATED, f"gRPC without a key: {code} {msg!r}")
        code, msg = code_of(lambda: stub.Infer(req, timeout=30, metadata=md("sk-wrong")))
        check(code == grpc.StatusCode.UNAUTHENTICATED and "sk-wrong" not in msg, f"gRPC wrong key: {code} {msg!r}")
        code, _ = code_of(lambda: list(stub.InferStream(req, timeout=30)))
        check(code == grpc.StatusCode.UNAUTHENTICATED, f"gRPC stream without a key: {code}")
        code, _ = code_of(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30))
        check(code == grpc.StatusCode.UNAUTHENTICATED, f"GetModelInfo without a key: {code}")
        for k in (KEYS[1], ENV_KEY):
            code, msg = code_of(lambda: stub.Infer(req, timeout=30, metadata=md(k)))
            check(code == grpc.StatusCode.OK, f"gRPC with a valid key: {code} {msg!r}")
        code, _ = code_of(lambda: stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30, metadata=md(KEYS[0])))
        check(code == grpc.StatusCode.OK, f"GetModelInfo with a key: {code}")
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        check(st == health_pb2.HealthCheckResponse.SERVING, "gRPC health open without a key")

        base = f"http://127.0.0.1:{server.http_port}"
        for hdrs, what in (({}, "no key"), ({"Authorization": "Bearer sk-wrong"}, "wrong key"),
                           ({"Authorization": KEYS[0]}, "no Bearer scheme")):
            s, h, data = http("POST", base + "/v1/chat/completions", chat_body(), hdrs)
            err = json.loads(data).get("error", {}) if data else {}
            check(s == 401 and err.get("type") == "invalid_request_error" and err.get("code") == "invalid_api_key"
                  and "param" in err and h.get("www-authenticate") == "Bearer",
                  f"HTTP {what}: {s} {err}")
        s, _, _ = http("GET", base + "/v1/models")
        check(s == 401, f"/v1/models without a key: {s}")
        s, _, _ = http("GET", base + "/v1/models", headers={"Authorization": f"Bearer {KEYS[0]}"})
        check(s == 200, f"/v1/models with a key: {s}")
        s, _, _ = http("GET", base + "/health")
        check(s == 200, f"/health open: {s}")
        s, _, data = http("GET", f"http://127.0.0.1:{server.metrics_port}/metrics")
        check(s == 200 and b"glmserve_" in data, f"/metrics open: {s}")

        bad = openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
        try:
            bad.chat.completions.create(model="glm4-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            check(False, "openai SDK with a wrong key raised nothing")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, f"openai SDK wrong key: AuthenticationError {e.status_code}")
        good = openai.OpenAI(base_url=base + "/v1", api_key=ENV_KEY, max_retries=0, timeout=30)
        r = good.chat.completions.create(model="glm4-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        check(r.usage.completion_tokens > 0, "openai SDK with the GLMSERVE_API_KEY key")

        # Per-client cap: two long streams of key 0 (gRPC) hold its two places; a third call of
        # key 0 (gRPC or HTTP) is refused at once, key 1 is served meanwhile.
        long_req = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2000, min_new_tokens=2000)
        holders = [stub.InferStream(long_req, timeout=120, metadata=md(KEYS[0])) for _ in range(2)]
        for h in holders:
            next(h)  # running
        t0 = time.monotonic()
        code, msg = code_of(lambda: stub.Infer(req, timeout=30, metadata=md(KEYS[0])))
        check(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "per-client" in msg and time.monotonic() - t0 < 5,
              f"gRPC over the per-client cap: {code} {msg!r}")
        s, h, data = http("POST", base + "/v1/chat/completions", chat_body(), {"Authorization": f"Bearer {KEYS[0]}"})
        err = json.loads(data).get("error", {}) if data else {}
        check(s == 429 and err.get("type") == "rate_limit_error" and int(h.get("retry-after", "0")) >= 1,
              f"HTTP over the per-client cap (shared with gRPC): {s} {err} retry-after={h.get('retry-after')}")
        code, msg = code_of(lambda: stub.Infer(req, timeout=30, metadata=md(KEYS[1])))
        check(code == grpc.StatusCode.OK, f"another key is served meanwhile: {code} {msg!r}")
        s, _, _ = http("POST", base + "/v1/chat/completions", chat_body(), {"Authorization": f"Bearer {KEYS[1]}"})
        check(s == 200, f"another key over HTTP meanwhile: {s}")
        for h in holders:
            h.cancel()
        ok = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not ok:
            ok = code_of(lambda: stub.Infer(req, timeout=30, metadata=md(KEYS[0])))[0] == grpc.StatusCode.OK
            time.sleep(0.2)
        check(ok, "the places are given back when the streams end")
        ch.close()
    finally:
        server.stop()
    log = server.log()
    for k in KEYS + [ENV_KEY]:
        check(k not in log, f"key {k[:8]}... absent from the logs")
    check("authentication on" in log, "start-up log says authentication is on")


def per_peer_cap(args, pb, pb_grpc):
    """Without keys the client is the peer address: HTTP streams fill it, gRPC from the same host is refused."""
    server = Server(args.binary, args.model, ["--max-requests-per-client", "1", "--debug-step-latency-ms", "20"])
    try:
        stub = pb_grpc.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        long_req = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2000, min_new_tokens=2000)
        holder = stub.InferStream(long_req, timeout=120)
        next(holder)
        code, msg = code_of(lambda: stub.Infer(pb.InferRequest(input_ids=[1, 2], max_new_tokens=2), timeout=30))
        check(code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"per-peer cap (no keys): {code} {msg!r}")
        s, _, _ = http("POST", f"http://127.0.0.1:{server.http_port}/v1/chat/completions", chat_body())
        check(s == 429, f"per-peer cap over HTTP: {s}")
        holder.cancel()
    finally:
        server.stop()


def tls(args, pb, pb_grpc, p, mutual):
    what = "mTLS" if mutual else "TLS"
    extra = ["--tls-cert", p("server.crt"), "--tls-key", p("server.key")]
    if mutual:
        extra += ["--tls-client-ca", p("ca.crt")]
    server = Server(args.binary, args.model, extra)
    try:
        target = f"127.0.0.1:{server.port}"
        req = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2)
        client_pair = (read(p("client.key")), read(p("client.crt"))) if mutual else (None, None)
        creds = grpc.ssl_channel_credentials(root_certificates=read(p("ca.crt")), private_key=client_pair[0],
                                             certificate_chain=client_pair[1])
        ch = grpc.secure_channel(target, creds)
        code, msg = code_of(lambda: pb_grpc.InferenceStub(ch).Infer(req, timeout=30))
        check(code == grpc.StatusCode.OK, f"{what}: grpcio with the CA: {code} {msg!r}")
        st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        check(st == health_pb2.HealthCheckResponse.SERVING, f"{what}: health over TLS")
        ch.close()
        code, _ = code_of(lambda: pb_grpc.InferenceStub(grpc.insecure_channel(target)).Infer(req, timeout=5))
        check(code != grpc.StatusCode.OK, f"{what}: plaintext gRPC refused: {code}")
        if mutual:
            nocert = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=read(p("ca.crt"))))
            code, _ = code_of(lambda: pb_grpc.InferenceStub(nocert).Infer(req, timeout=5))
            check(code != grpc.StatusCode.OK, f"{what}: gRPC without a client certificate refused: {code}")

        ctx = ssl.create_default_context(cafile=p("ca.crt"))
        if mutual:
            ctx.load_cert_chain(p("client.crt"), p("client.key"))
        base = f"https://localhost:{server.http_port}/v1"
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30,
                               http_client=openai.DefaultHttpxClient(verify=ctx))
        r = client.chat.completions.create(model="glm4-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        check(r.usage.completion_tokens > 0, f"{what}: openai SDK over HTTPS trusting the CA")
        chunks = list(client.chat.completions.create(model="glm4-tiny", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=3, stream=True))
        check(len(chunks) >= 2 and chunks[-1].choices[0].finish_reason is not None, f"{what}: SSE over HTTPS")
        untrusting = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=10)
        try:
            untrusting.models.list()
            check(False, f"{what}: a client without the CA connected")
        except openai.APIConnectionError:
            check(True, f"{what}: a client that does not trust the CA is refused")
        if mutual:
            ctx2 = ssl.create_default_context(cafile=p("ca.crt"))
            nocert = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=10,
                                   http_client=openai.DefaultHttpxClient(verify=ctx2))
            try:
                nocert.models.list()
                check(False, f"{what}: HTTPS without a client certificate served")
            except openai.APIConnectionError:
                check(True, f"{what}: HTTPS without a client certificate refused")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/health", timeout=5).read()
            check(False, f"{what}: plaintext HTTP served")
        except Exception:  # noqa: BLE001
            check(True, f"{what}: plaintext HTTP refused")
    finally:
        server.stop()


def bad_flags(args, p, tmp):
    junk = os.path.join(tmp, "junk.pem")
    with open(junk, "w") as f:
        f.write("not a certificate\n")
    empty_keys = os.path.join(tmp, "empty-keys")
    with open(empty_keys, "w") as f:
        f.write("# nothing\n")
    port = free_port()
    cases = [
        (["--tls-cert", p("server.crt")], "--tls-cert"),
        (["--tls-key", p("server.key")], "--tls-key"),
        (["--tls-client-ca", p("ca.crt")], "--tls-client-ca"),
        (["--tls-cert", junk, "--tls-key", p("server.key")], "--tls-cert"),
        (["--tls-cert", p("server.crt"), "--tls-key", junk], "--tls-key"),
        (["--tls-cert", p("server.crt"), "--tls-key", p("client.key")], "--tls-key"),
        (["--tls-cert", p("server.crt"), "--tls-key", os.path.join(tmp, "missing.key")], "--tls-key"),
        (["--tls-cert", p("server.crt"), "--tls-key", p("server.key"), "--tls-client-ca", junk], "--tls-client-ca"),
        (["--api-key-file", os.path.join(tmp, "missing-keys")], "--api-key-file"),
        (["--api-key-file", empty_keys], "--api-key-file"),
    ]
    for extra, flag in cases:
        r = subprocess.run([args.binary, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
                            "--log-level", "error", *extra], capture_output=True, text=True, timeout=60)
        check(r.returncode == 2 and flag in r.stderr and "listening on" not in r.stderr,
              f"{' '.join(os.path.basename(x) for x in extra)}: exit {r.returncode}, names {flag}: {r.stderr.strip()[:160]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--proto-root", required=True)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.model, "config.json")):
        print(f"SKIP: no model at {args.model}")
        return 77
    if shutil.which("openssl") is None:
        print("SKIP: no openssl CLI")
        return 77
    pb, pb_grpc = inference_stubs(args.proto_root)
    tmp = tempfile.mkdtemp(prefix="glmserve_security_")
    try:
        p = make_certs(tmp)
        bad_flags(args, p, tmp)
        auth_and_quota(args, pb, pb_grpc, tmp)
        per_peer_cap(args, pb, pb_grpc)
        tls(args, pb, pb_grpc, p, mutual=False)
        tls(args, pb, pb_grpc, p, mutual=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
