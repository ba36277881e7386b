#!/usr/bin/env python3
"""API keys, TLS, mutual TLS and the per-client cap, end to end: the real `glmserve serve` on
loopback (gRPC and --http-port), real clients (grpcio; the `openai` SDK through an httpx client
that trusts the test's CA), certificates made with the openssl CLI in a temporary directory.

Checks: UNAUTHENTICATED / 401 (OpenAI shape, WWW-Authenticate) without or with a wrong key, OK with
a key from --api-key-file or GLMSERVE_API_KEY; gRPC health, HTTP /health and /metrics open; no key
in the logs; compressed requests refused (a gzip bomb cost 1 GB before the key check); --max-requests-per-client counted per key across gRPC and HTTP (RESOURCE_EXHAUSTED /
429 + Retry-After) while another key is served; TLS and mTLS with grpcio and the openai SDK
(plaintext and certificate-less clients refused); bad TLS / key flags exit 2 naming the flag before
any port is bound; over HTTPS the read deadline and the connection cap of plaintext (slow TLS clients
cut off: silent, trickled ClientHello, trickled head, trickled record; 503 over TLS). Needs (pip): grpcio grpcio-tools grpcio-health-checking openai. Exit 77 = skipped.
"""
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "pyutil"))
from metrics import sample as metric, wait_sample  # noqa: E402
from ports import free_port  # noqa: E402
from checks import FAILURES, check  # noqa: E402
from glmserve_process import GlmserveProcess, inference_stubs, server_test_args  # noqa: E402

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


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


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
    # Who is refused or served is in its lines, by key name (or the peer address without a valid
    # key): the runbook's "one caller at its cap" is found from the server's side.
    lines = log.splitlines()
    capped = [line for line in lines if "request refused" in line and "per-client" in line]
    check(len(capped) >= 2 and all("client=key#" in line for line in capped),
          f"the per-client cap's refusals name the key ({capped[:2]})")
    unauthenticated = [line for line in lines if "request refused" in line and "UNAUTHENTICATED" in line]
    check(unauthenticated and all("client=127.0.0.1" in line for line in unauthenticated),
          f"an unauthenticated refusal names the peer ({unauthenticated[:2]})")
    served = [line for line in lines if "request accepted" in line or "request finished" in line]
    check(served and all("client=key#" in line for line in served),
          f"accepted and finished lines name the key ({[line for line in served if 'client=key#' not in line][:2]})")


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


def compressed_requests(args, pb, pb_grpc):
    """gRPC 1.51 inflates a compressed message whole before checking the receive limit: a 64 KB gzip
    request that inflates to 64 MB of input_ids made the server allocate (and keep) it, before the
    API key was looked at. Compressed requests are refused UNIMPLEMENTED; uncompressed ones serve."""
    server = Server(args.binary, args.model, env={"GLMSERVE_API_KEY": KEYS[0]})
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        n = 64 << 20
        length = b""
        rest = n
        while True:  # the field's varint length
            byte, rest = rest & 0x7F, rest >> 7
            length += bytes([byte | (0x80 if rest else 0)])
            if not rest:
                break
        bomb = b"\x0a" + length + b"\x01" * n + b"\x18\x01"  # input_ids = [1] * n, max_new_tokens 1
        raw_infer = ch.unary_unary("/glmserve.v1.Inference/Infer", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        before = rss_kb(server.proc.pid)
        for algorithm in (grpc.Compression.Gzip, grpc.Compression.Deflate):
            code, msg = code_of(lambda: raw_infer(bomb, timeout=60, compression=algorithm))
            check(code == grpc.StatusCode.UNIMPLEMENTED and "disabled" in msg,
                  f"a {algorithm.name} request is refused: {code} {msg!r}")
        grown = rss_kb(server.proc.pid) - before
        check(grown < 32 * 1024, f"two 64 MB compression bombs left the server's memory as it was (+{grown} KB)")
        stub = pb_grpc.InferenceStub(ch)
        code, msg = code_of(lambda: stub.Infer(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2), timeout=30,
                                               metadata=(("authorization", f"Bearer {KEYS[0]}"),)))
        check(code == grpc.StatusCode.OK, f"an uncompressed request after them: {code} {msg!r}")
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


def tls_bio(port, ctx, client_hello_only=False):
    """A raw socket and a client TLS object over memory BIOs, so the test decides which bytes go out
    and when. client_hello_only: the ClientHello is made but not sent, and the handshake not run;
    else the handshake is done. (sock, tls object, incoming BIO, outgoing BIO, connect time)."""
    t0 = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if client_hello_only:
                return sock, obj, inc, out, t0
            data = out.read()
            if data:
                sock.sendall(data)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            inc.write(chunk)
    data = out.read()
    if data:
        sock.sendall(data)
    return sock, obj, inc, out, t0


SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"


def slow_tls_client(port, ctx, mode, step=0.2, limit=10.0):
    """One slow client over TLS; (outcome, seconds from connect): outcome 408 (the server's answer,
    read over TLS), "closed" (EOF, reset or a TLS alert), "open" (still open after `limit` s).
    modes: silent = connect, never send a ClientHello; hello = the ClientHello a byte every `step`;
    head = handshake, then the request head one byte every `step` (a TLS record per byte);
    record = handshake, then one TLS record holding the whole head, a byte every `step`, never its
    last byte."""
    sock, obj, inc, out, t0 = tls_bio(port, ctx, client_hello_only=mode in ("silent", "hello"))
    if mode == "silent":
        pieces = []
    elif mode == "hello":
        hello = out.read()
        pieces = [hello[i:i + 1] for i in range(len(hello) - 1)]
    elif mode == "head":
        pieces = []
        for i in range(len(SLOW_HEAD)):
            obj.write(SLOW_HEAD[i:i + 1])
            pieces.append(out.read())
    else:
        obj.write(SLOW_HEAD)
        rec = out.read()
        pieces = [rec[i:i + 1] for i in range(len(rec) - 1)]
    got = b""
    try:
        while time.monotonic() - t0 < limit:
            if pieces:
                try:
                    sock.sendall(pieces.pop(0))
                except OSError:
                    return "closed", time.monotonic() - t0
            readable, _, _ = select.select([sock], [], [], step)
            if not readable:
                continue
            try:
                chunk = sock.recv(65536)
            except OSError:
                return "closed", time.monotonic() - t0
            if not chunk:
                return ("408" if b"HTTP/1.1 408" in got else "closed"), time.monotonic() - t0
            inc.write(chunk)
            try:
                while True:
                    data = obj.read(65536)
                    if not data:  # the server's close_notify
                        break
                    got += data
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            except ssl.SSLError:
                return "closed", time.monotonic() - t0
            if b"HTTP/1.1 408" in got and b"request_timeout" in got:
                return "408", time.monotonic() - t0
        return "open", time.monotonic() - t0
    finally:
        sock.close()


def tls_slow_clients(args, p):
    """Issue 19 over HTTPS: the plaintext loop's read deadline, idle timeout and connection cap hold
    for TLS too. A client that never sends a ClientHello, trickles it, trickles the request head
    after the handshake or trickles one TLS record is cut off by --http-read-timeout-ms (408 when a
    TLS channel exists, else closed) while well-behaved HTTPS requests are answered; 64 of them do
    not stop a 65th; over --http-max-connections a TLS client gets the 503 over TLS."""
    read_timeout = 2.0
    margin = 1.5
    ctx = ssl.create_default_context(cafile=p("ca.crt"))
    server = Server(args.binary, args.model, ["--tls-cert", p("server.crt"), "--tls-key", p("server.key"),
                                              "--http-read-timeout-ms", str(int(read_timeout * 1000)),
                                              "--http-max-connections", "100"])
    try:
        url = f"https://localhost:{server.http_port}"
        expected = {"silent": "closed", "hello": "closed", "head": "408", "record": "408"}
        for mode in ("silent", "hello", "head", "record"):
            result = {}
            t = threading.Thread(target=lambda: result.update(r=slow_tls_client(server.http_port, ctx, mode)))
            t.start()
            time.sleep(0.5)
            t1 = time.monotonic()
            s, _, data = http("GET", url + "/health", context=ctx, timeout=10)
            fast = time.monotonic() - t1
            t.join(15)
            outcome, dt = result.get("r", ("none", 0.0))
            print(f"     TLS slow client '{mode}': {outcome} after {dt:.2f} s (deadline {read_timeout} s)")
            check(outcome == expected[mode] and read_timeout - 0.3 <= dt < read_timeout + margin,
                  f"TLS slow client '{mode}': {expected[mode]} at the read deadline (got {outcome} after {dt:.2f} s)")
            check(s == 200 and fast < 1.0, f"TLS '{mode}': another HTTPS request answered meanwhile ({s}, {fast:.3f} s)")

        # A refused body over TLS (Content-Length over the limit): 413, then close_notify and the
        # linger, as in plaintext.
        sock, obj, inc, out, _ = tls_bio(server.http_port, ctx)
        obj.write(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000000\r\n\r\n" + b"a" * 4096)
        sock.sendall(out.read())
        got = b""
        sock.settimeout(5)
        try:
            while b"payload_too_large" not in got:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                inc.write(chunk)
                try:
                    while data := obj.read(65536):
                        got += data
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
        except OSError:
            pass
        sock.close()
        check(got.startswith(b"HTTP/1.1 413") and b"payload_too_large" in got and b"Connection: close" in got,
              f"TLS: Content-Length 100 MB answered 413 over TLS, connection closed ({got[:60]!r})")

        # 64 slow TLS connections (16 of each kind) and, meanwhile, a 65th client that behaves.
        base_rss = rss_kb(server.proc.pid)
        results = []
        lock = threading.Lock()

        def one(mode):
            r = slow_tls_client(server.http_port, ctx, mode)
            with lock:
                results.append((mode, *r))

        threads = [threading.Thread(target=one, args=(m,), daemon=True)
                   for m in ("silent", "hello", "head", "record") for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        ok = 0
        worst = 0.0
        t_end = time.monotonic() + 1.2
        while time.monotonic() < t_end:
            t1 = time.monotonic()
            s, _, _ = http("GET", url + "/health", context=ctx, timeout=10)
            ok += s == 200
            worst = max(worst, time.monotonic() - t1)
            time.sleep(0.1)
        check(ok >= 5 and worst < 1.0, f"64 slow TLS clients: HTTPS /health answered {ok} times, slowest {worst:.3f} s")
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30,
                               http_client=openai.DefaultHttpxClient(verify=ctx))
        r = client.chat.completions.create(model="glm4-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        check(r.usage.completion_tokens > 0, "64 slow TLS clients: a 65th (openai SDK over HTTPS) is served")
        for t in threads:
            t.join(20)
        for mode in ("silent", "hello", "head", "record"):
            mine = [(o, dt) for m, o, dt in results if m == mode]
            worst_dt = max((dt for _, dt in mine), default=0.0)
            print(f"     x16 '{mode}': outcomes {sorted(set(o for o, _ in mine))}, cut off after at most {worst_dt:.2f} s")
            check(len(mine) == 16 and all(o == expected[mode] for o, _ in mine) and worst_dt < read_timeout + margin,
                  f"16 slow TLS clients '{mode}': all {expected[mode]} within {read_timeout + margin} s")
        grown = (rss_kb(server.proc.pid) - base_rss) >> 10
        check(grown < 64, f"64 slow TLS clients: RSS flat ({grown} MB growth)")
        s, _, _ = http("GET", url + "/health", context=ctx, timeout=10)
        check(s == 200, f"HTTPS /health after the slow clients ({s})")
    finally:
        server.stop()
    log = server.log()
    check("TLS handshake not completed within --http-read-timeout-ms" in log and "http_status=408" in log,
          "the cut-off TLS clients are logged (handshake timeout; request refused 408)")

    # The connection cap over TLS: 8 connections hold the cap (handshake done, inside a request
    # whose body has not all arrived: not between requests, so never closed for a new connection);
    # a 9th HTTPS client is answered 503 too_many_connections over TLS at once. With the 16 refusal
    # threads busy (16 silent connections, each given at most 1 s to handshake) one more is closed
    # unanswered at once; a second later 503 again.
    server = Server(args.binary, args.model, ["--tls-cert", p("server.crt"), "--tls-key", p("server.key"),
                                              "--http-max-connections", "8", "--http-read-timeout-ms", "5000"])
    try:
        url = f"https://localhost:{server.http_port}"
        holders = []
        for _ in range(8):
            sock, obj, inc, out, _ = tls_bio(server.http_port, ctx)
            obj.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")
            sock.sendall(out.read())
            holders.append(sock)
        time.sleep(0.3)
        t1 = time.monotonic()
        try:
            s, h, data = http("GET", url + "/health", context=ctx, timeout=10)
            err = json.loads(data).get("error", {}) if data else {}
        except (OSError, ValueError) as e:  # not an HTTP answer (e.g. plaintext bytes before the handshake)
            s, h, err = repr(e), {}, {}
        dt = time.monotonic() - t1
        check(s == 503 and err.get("code") == "too_many_connections" and err.get("type") == "service_unavailable_error"
              and h.get("retry-after") == "1" and dt < 1.0,
              f"TLS connection over --http-max-connections 8: 503 too_many_connections over TLS ({s} {err}, {dt:.3f} s)")
        # The 503 above ran on a refusal thread, which may still be ending on a loaded machine: then
        # one of the 16 silent connections below finds every thread taken and is closed at once,
        # leaving a thread free for the extra one. Let it end, and replace any silent connection
        # closed anyway, so that all 16 threads are busy when the extra one arrives.
        time.sleep(0.5)
        silent = []
        for _ in range(2):
            silent += [socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
                       for _ in range(16 - len(silent))]
            time.sleep(0.2)
            closed = [sock for sock in silent if not still_open(sock)]
            if not closed:
                break
            for sock in closed:
                sock.close()
                silent.remove(sock)
        t1 = time.monotonic()
        extra = socket.create_connection(("127.0.0.1", server.http_port), timeout=5)
        try:
            closed = extra.recv(1) == b""
        except OSError:
            closed = True
        dt = time.monotonic() - t1
        extra.close()
        check(closed and dt < 0.5, f"TLS over the cap with the 16 refusal threads busy: closed at once ({dt:.3f} s)")
        time.sleep(1.2)
        s, _, _ = http("GET", url + "/health", context=ctx, timeout=10)
        check(s == 503, f"TLS over the cap once the refusal threads are free: 503 again ({s})")
        for sock in silent + holders:
            sock.close()
        time.sleep(0.5)
        s, _, _ = http("GET", url + "/health", context=ctx, timeout=10)
        check(s == 200, f"HTTPS /health once the connections closed ({s})")
    finally:
        server.stop()


def still_open(sock):
    """True when the peer has neither closed `sock` nor sent anything on it (a non-blocking peek)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: answered
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
        sock.settimeout(10)


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


def tls_unary_disconnect(args, p):
    """A non-streaming HTTPS request whose client goes away is cancelled, whether the client sends
    its close_notify first or just closes (a TLS close_notify is bytes to read, which the plaintext
    check took for a pipelined request): 2,000 tokens at 20 ms a step would run 40 s."""
    ctx = ssl.create_default_context(cafile=p("ca.crt"))
    server = Server(args.binary, args.model, ["--tls-cert", p("server.crt"), "--tls-key", p("server.key"),
                                              "--debug-step-latency-ms", "20"])
    try:
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2000, "ignore_eos": True}).encode()
        for n, how in enumerate(("close_notify", "plain close"), start=1):
            raw = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
            tls_sock = ctx.wrap_socket(raw, server_hostname="localhost")
            tls_sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
            running = wait_sample(server.metrics_port, "glmserve_requests_running", lambda v: v >= 1, 20)
            check(running == 1, f"TLS unary ({how}): running (saw {running})")
            if how == "close_notify":
                try:  # sends close_notify, then waits for the server's, which the answer may precede
                    tls_sock.unwrap()
                except (ssl.SSLError, OSError):
                    pass
            tls_sock.close()
            raw.close()
            running = wait_sample(server.metrics_port, "glmserve_requests_running", lambda v: v == 0, 10)
            cancelled = metric(server.metrics_port, 'glmserve_requests_total{code="CANCELLED"}')
            check(running == 0 and cancelled == n,
                  f"TLS unary ({how}): cancelled once the client left (running {running}, CANCELLED {cancelled})")
    finally:
        server.stop()


def refusal_flood(args, pb, pb_grpc, tmp):
    """A client without a key is answered 401 from the request's head (before its media type or
    size is judged, its body unread, also behind Expect: 100-continue), and a flood of refusals
    logs at most --log-refused-per-second lines a second per code and API: the lines written, the
    refusals_not_logged they carry and the shutdown's request_refusals_not_logged summaries
    account for every refusal exactly once; the metric counts each."""
    key_file = os.path.join(tmp, "flood-keys")
    with open(key_file, "w") as f:
        f.write(KEYS[0] + "\n")
    server = Server(args.binary, args.model, ["--api-key-file", key_file, "--log-refused-per-second", "5"])
    sent = 0
    flood_s = 0.0
    try:
        # Head order: no key and a form body -> 401, not 415; no key and a 1 GB upload announced
        # behind Expect: 100-continue -> 401 before a byte of it is sent.
        for headers, what in (({"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "2"},
                               "a form body"),
                              ({"Content-Type": "application/json", "Content-Length": str(1 << 30),
                                "Expect": "100-continue"}, "a 1 GB body behind Expect: 100-continue")):
            with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
                reply = sock.recv(4096).decode(errors="replace")
            sent += 1
            check(reply.startswith("HTTP/1.1 401") and "WWW-Authenticate: Bearer" in reply,
                  f"no key and {what}: 401 from the head ({reply.splitlines()[0] if reply else 'nothing'})")
        stub = pb_grpc.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        req = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2)
        t0 = time.monotonic()
        for _ in range(150):
            s, _, _ = http("POST", f"http://127.0.0.1:{server.http_port}/v1/chat/completions", chat_body())
            code, _ = code_of(lambda: stub.Infer(req, timeout=30))
            sent += 2
            if s != 401 or code != grpc.StatusCode.UNAUTHENTICATED:
                check(False, f"flood: {s} / {code}")
                break
        flood_s = time.monotonic() - t0
        time.sleep(1.1)  # a new second: the next refusal's line says how many were left out
        s, _, _ = http("POST", f"http://127.0.0.1:{server.http_port}/v1/chat/completions", chat_body())
        sent += 1
        counted = wait_sample(server.metrics_port, 'glmserve_requests_total{code="UNAUTHENTICATED"}',
                              lambda v: v >= sent, 10)
        check(counted == sent, f"glmserve_requests_total{{code=UNAUTHENTICATED}} {counted} of {sent}")
    finally:
        rc = server.stop()
    check(rc == 0, f"server exit code {rc}")
    lines = accounted = 0
    late_line_counts = False
    for line in server.log().splitlines():
        if not re.search(r"\bstatus=UNAUTHENTICATED\b", line):
            continue
        if line.startswith("glmserve: request refused "):
            m = re.search(r"\brefusals_not_logged=(\d+)", line)
            lines += 1
            accounted += 1 + (int(m.group(1)) if m else 0)
            late_line_counts = late_line_counts or bool(m and "/v1/" in line)
        elif "not logged one by one" in line:
            accounted += int(re.search(r"\bcount=(\d+)", line).group(1))
    windows = int(flood_s) + 3  # the seconds the flood spanned, the late refusal's, a margin
    check(accounted == sent, f"every refusal accounted for once in the log: {accounted} of {sent} ({lines} lines)")
    check(late_line_counts, "the late HTTP refusal's line says how many were left out before it")
    check(lines <= 2 * 5 * windows and lines < sent / 4,
          f"the flood logged {lines} lines for {sent} refusals over {flood_s:.1f} s")

def main():
    args = server_test_args()
    if args is None:
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
        compressed_requests(args, pb, pb_grpc)
        refusal_flood(args, pb, pb_grpc, tmp)
        tls(args, pb, pb_grpc, p, mutual=False)
        tls(args, pb, pb_grpc, p, mutual=True)
        tls_slow_clients(args, p)
        tls_unary_disconnect(args, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
