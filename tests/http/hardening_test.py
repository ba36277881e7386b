"""What a hostile or overloaded client does to the HTTP API (issue 19), on the real binary over
loopback, standard library only. Each case reproduces a fault the server had:
  chunked   a 60 MB `Transfer-Encoding: chunked` body was read whole and tokenized before a 400
            (RSS grew by the body and more): now 413 while reading, RSS flat
  prompt    a prompt far longer than the context was tokenized in full before its 400: now refused
            before tokenizing, naming the field
  slowloris 64+ connections sending a byte a second stopped the whole HTTP API, /health too: now
            a whole-request read deadline (408) and a thread per connection up to a cap (503)
  queue     500 streams: 64 served, the rest waited inside the HTTP library, invisible, never a
            429: now a bounded waiting queue (429 + Retry-After) counted in glmserve_queue_depth
  media     a cross-origin text/plain POST (a CSRF "simple request") was executed: now 415
  framing   after a 400 for a malformed head the rest of the bytes were read as further requests,
            and of two different Content-Lengths the first won (request smuggling): now 400 and
            the connection closed
  headers   a head of 3 million header fields (45 MB) was taken whole (RSS +330 MB, never given
            back): now 431 past 100 fields or 64 KiB, the connection closed
  unary_disconnect
            a non-streaming request whose client closed the connection generated to the end,
            holding its serving slot and engine slot, and was logged OK: now cancelled
  http10    an HTTP/1.0 client's stream came with Transfer-Encoding: chunked (a 1.0 client reads the
            chunk sizes as data) and its answers advertised a keep-alive the server did not keep:
            now the stream ends with the connection, every answer says Connection: close
  body_budget
            every open connection could hold a body of --max-message-bytes at once (512 x 16 MiB
            for a model that takes images): now --http-body-budget-mb over all of them, past it
            429 + Retry-After and the connection closed
  uncounted a refused GET /health or /v1/models (bad framing) counted as an inference request in
            glmserve_requests_total: now only the API routes' refusals are
  drain     requests admitted but still waiting for a serving slot when SIGTERM came were answered
            503 "draining" (gRPC's queued ones ran): now they run too; only new ones get 503
Exit 77 = skipped (no model)."""
import argparse
import gzip
import json
import os
import socket
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_test_util import Server  # noqa: E402
from metrics import sample as metric, wait_sample  # noqa: E402  (tests/pyutil, on the path through http_test_util)
from ports import free_port  # noqa: E402

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_response(sock, timeout=10):
    """(status, headers dict lower-case, body bytes) of one HTTP/1.1 response read from sock."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if b"\r\n\r\n" not in data:
        return None, {}, data  # no complete head: closed or reset
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    try:
        while len(body) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except OSError:
        pass
    return status, headers, body


def is_openai_error(body, type_=None, code=None):
    try:
        e = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return {"message", "type", "param", "code"} <= set(e) and (type_ is None or e["type"] == type_) and \
        (code is None or e["code"] == code)


def test_chunked(server):
    """60 MB chunked: 413 while reading, the server's RSS stays flat."""
    pid = server.proc.pid
    base = rss_kb(pid)
    peak = base
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"a" * 65536
    first = b'{"model":"m","messages":[{"role":"user","content":"'
    s.sendall(b"%x\r\n%s\r\n" % (len(first), first))
    start = time.monotonic()
    sent = 0
    s.setblocking(False)
    got_answer = False
    while sent < 60 << 20:
        try:
            if s.recv(1, socket.MSG_PEEK):
                got_answer = True
                break
        except BlockingIOError:
            pass
        except OSError:
            break
        frame = b"%x\r\n%s\r\n" % (len(piece), piece)
        try:
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(frame)
            s.setblocking(False)
        except OSError:
            break
        sent += len(piece)
        if sent % (4 << 20) == 0:
            peak = max(peak, rss_kb(pid))
    s.setblocking(True)
    status, headers, body = read_response(s)
    elapsed = time.monotonic() - start
    s.close()
    peak = max(peak, rss_kb(pid))
    print(f"     chunked: {sent >> 20} MB sent before the answer ({got_answer}), status {status}, "
          f"{elapsed:.2f} s, RSS {base >> 10} -> peak {peak >> 10} MB")
    check(status == 413 and is_openai_error(body, "invalid_request_error", "payload_too_large"),
          f"chunked 60 MB body: 413 in OpenAI's shape (got {status} {body[:200]!r})")
    check(sent < 16 << 20, f"chunked: refused while reading ({sent >> 20} MB sent of 60)")
    check(peak - base < 64 << 10, f"chunked: RSS flat ({(peak - base) >> 10} MB growth < 64 MB)")
    # A Content-Length over the limit: refused before a byte of the body is read.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000000\r\n\r\n")
    status, headers, body = read_response(s)
    s.close()
    check(status == 413 and headers.get("connection") == "close" and "keep-alive" not in headers,
          f"Content-Length 100 MB: 413 before the body, Connection: close and no Keep-Alive (got {status} {headers})")
    # Trailer fields after a chunked body's last chunk: refused, and the message says why.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    small = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(small) + small + b"\r\n0\r\nX-Sum: 1\r\n\r\n")
    status, headers, body = read_response(s)
    s.close()
    check(status == 400 and b"trailer fields" in body and "keep-alive" not in headers,
          f"chunked body with a trailer field: 400 naming trailer fields, no Keep-Alive (got {status} {body[:160]!r})")
    st, _, _ = server.request("GET", "/health")
    check(st == 200, "health after the oversized bodies")


def test_prompt_bound(server):
    """A 3 MB prompt (under the 4 MB body limit) for a 2048-token context: refused before tokenizing."""
    big = "a" * (3 << 20)
    t = time.monotonic()
    st, _, body = server.post("/v1/completions", {"model": "m", "prompt": big, "max_tokens": 1})
    dt = time.monotonic() - t
    e = json.loads(body).get("error", {}) if body else {}
    check(st == 400 and e.get("param") == "prompt" and e.get("code") == "context_length_exceeded"
          and "before tokenizing" in e.get("message", ""),
          f"3 MB prompt: 400 context_length_exceeded naming 'prompt' before tokenizing ({dt:.2f} s; {body[:160]!r})")
    st, _, body = server.post("/v1/chat/completions", {"model": "m", "messages": [
        {"role": "system", "content": "short"}, {"role": "user", "content": big}]})
    e = json.loads(body).get("error", {}) if body else {}
    check(st == 400 and e.get("param") == "messages[1].content",
          f"3 MB chat message: 400 naming messages[1].content (got {st} {e.get('param')})")
    st, _, body = server.post("/v1/completions", {"model": "m", "prompt": "hello", "max_tokens": 2})
    check(st == 200, f"a short prompt still answers 200 (got {st})")


def test_media_type(server):
    body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1})
    for ctype, origin in [("text/plain", "http://evil.example"), ("application/x-www-form-urlencoded", None),
                          ("multipart/form-data; boundary=x", None), ("", None)]:
        headers = {"Content-Type": ctype} if ctype else {}
        if origin:
            headers["Origin"] = origin
        c = server.conn(10)
        c.putrequest("POST", "/v1/completions")
        for k, v in headers.items():
            c.putheader(k, v)
        c.putheader("Content-Length", str(len(body)))
        c.endheaders(body.encode())
        r = c.getresponse()
        data = r.read()
        c.close()
        check(r.status == 415 and is_openai_error(data, "invalid_request_error", "unsupported_media_type"),
              f"POST Content-Type '{ctype}'{' from ' + origin if origin else ''}: 415 (got {r.status})")
    st, _, _ = server.post("/v1/completions", body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    check(st == 200, f"application/json with a charset: 200 (got {st})")
    # A compressed body: gzip is decoded; a coding the server does not take is 415 naming the header
    # (it was read as plain text: "invalid JSON" for a zstd body, the body itself for a made-up name).
    st, _, _ = server.post("/v1/completions", gzip.compress(body.encode()), headers={"Content-Encoding": "gzip"})
    check(st == 200, f"a gzip body: 200 (got {st})")
    for coding in ("zstd", "x-made-up", "GZIP"):
        st, _, data = server.post("/v1/completions", body, headers={"Content-Encoding": coding})
        check(st == 415 and is_openai_error(data, "invalid_request_error", "unsupported_media_type")
              and b"Content-Encoding" in data, f"Content-Encoding {coding}: 415 naming the header ({st} {data[:160]!r})")


def responses_until_close(raw, port, timeout=10, bodies=None):
    """The status codes of every response one connection gets for `raw` before the server closes it
    (None at the end when it did not close within `timeout`); their bodies appended to `bodies`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(raw)
    data = b""
    closed = False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except OSError:
        pass
    s.close()
    codes = []
    while b"\r\n\r\n" in data:  # responses back to back, each framed by its Content-Length
        head, data = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        codes.append(int(lines[0].split()[1]))
        length = [int(v) for k, _, v in (line.partition(b":") for line in lines[1:]) if k.lower() == b"content-length"]
        if bodies is not None:
            bodies.append(data[:length[0] if length else 0])
        data = data[length[0] if length else 0:]
    return codes + ([] if closed else [None])


def test_framing(server):
    """A head httplib cannot parse, or a body length the head does not give unambiguously: one
    answer, then the connection closes; the bytes after it are never served as requests."""
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1}).encode()
    post = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    inner = post + b"Content-Length: %d\r\n\r\n" % len(body) + body
    # (what, bytes, statuses, the header the answer must name: None where httplib answers itself)
    cases = [
        ("bad HTTP version", b"GET /health HTTP/9.9\r\n\r\n" + smuggled, [400], None),
        ("garbage request line", b"BLAH\r\n\r\n" + smuggled, [400], None),
        ("two different Content-Lengths",
         post + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body) + len(smuggled)) + body +
         smuggled, [400], b"Content-Length"),
        ("Content-Length '1x'", post + b"Content-Length: 1x\r\n\r\n" + smuggled, [400], b"Content-Length"),
        ("Content-Length -1 on GET", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n" + smuggled, [400],
         b"Content-Length"),
        ("Content-Length and Transfer-Encoding",
         post + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(body) + body + smuggled, [400],
         b"Transfer-Encoding"),
        ("Transfer-Encoding gzip", post + b"Transfer-Encoding: gzip\r\n\r\n" + body, [400], b"Transfer-Encoding"),
        # httplib reads no body for these methods: the body was served as a second request.
        ("a body on GET", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner,
         [400], b"GET request with a body"),
        ("a body on HEAD", b"HEAD /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner,
         [400], None),
        ("a body on OPTIONS",
         b"OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner, [400],
         b"OPTIONS request with a body"),
        ("a chunked body on GET",
         b"GET /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(inner) + inner +
         b"\r\n0\r\n\r\n", [400], b"GET request with a body"),
        # No length at all: RFC 9112 6.3 says no body; it was read until the read deadline (408).
        ("a POST without a length", post + b"\r\n" + body, [411], b"without Content-Length"),
    ]
    for name, raw, want, names in cases:
        bodies = []
        codes = responses_until_close(raw, server.port, bodies=bodies)
        check(codes == want, f"framing, {name}: {want} then closed (got {codes})")
        if names is not None:
            check(bool(bodies) and names in bodies[0] and is_openai_error(bodies[0], "invalid_request_error"),
                  f"framing, {name}: the error names {names.decode()} ({bodies[:1]!r})")
    # A well-framed request refused for its content keeps the connection: the next one is served.
    twice = post + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body)) + body
    bad_json = post + b"Content-Length: 1\r\n\r\n{"
    codes = responses_until_close(twice + bad_json + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                  server.port)
    check(codes == [200, 400, 200], f"equal Content-Lengths served, a 400 for the body keeps the connection ({codes})")
    # A bodiless GET (or one saying Content-Length: 0) is served and keeps the connection.
    codes = responses_until_close(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                                  b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", server.port)
    check(codes == [200, 200], f"GET with Content-Length 0: served, the connection kept ({codes})")
    # A head that refuses the request answers an Expect: 100-continue with the refusal, no 100
    # first (the client would upload the whole body for nothing); a good one gets its 100.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(post + b"Expect: 100-continue\r\nContent-Length: 50000000\r\n\r\n")
    status, refusal_headers, refusal = read_response(s)
    s.close()
    check(refusal_headers.get("content-length") == str(len(refusal)),
          f"Expect: 100-continue refusal framed by its Content-Length ({refusal_headers})")
    check(status == 413 and is_openai_error(refusal, "invalid_request_error", "payload_too_large"),
          f"Expect: 100-continue over the body limit: 413 at once, no 100 ({status} {refusal[:160]!r})")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(post + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    status, _, _ = read_response(s)
    if status == 100:
        s.sendall(body)
        status, _, _ = read_response(s)
    s.close()
    check(status == 200, f"Expect: 100-continue on a good request: 100, then 200 ({status})")


def test_headers(server):
    """Past 100 header fields or 64 KiB of head: 431 and closed; RSS flat under a 45 MB head."""
    pid = server.proc.pid
    base = rss_kb(pid)
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n"
    codes = responses_until_close(many, server.port)
    check(codes == [431], f"101 header fields: 431, closed (got {codes})")
    fits = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(98)) + \
        b"Connection: close\r\n\r\n"
    check(responses_until_close(fits, server.port) == [200], "100 header fields: served")
    long_lines = b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(9)) + b"\r\n"
    codes = responses_until_close(long_lines, server.port)
    check(codes == [431], f"72 KB of header lines: 431, closed (got {codes})")
    # 3 million fields streamed: answered at the limit, long before the client is done.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    chunk = b"".join(b"X-%07d: v\r\n" % i for i in range(10000))
    sent = 0
    for _ in range(300):
        try:
            s.setblocking(False)
            if s.recv(1, socket.MSG_PEEK):
                break  # the answer is there
        except BlockingIOError:
            pass
        except OSError:
            break
        try:
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(chunk)
        except OSError:
            break
        sent += len(chunk)
    s.setblocking(True)
    status, headers, body = read_response(s, timeout=5)
    s.close()
    growth = rss_kb(pid) - base
    check(status == 431 and is_openai_error(body, "invalid_request_error", "request_header_fields_too_large"),
          f"a 45 MB head: 431 request_header_fields_too_large (got {status}, {sent >> 20} MB sent)")
    check(sent < 4 << 20, f"a 45 MB head: answered while sending ({sent >> 10} KB of 45 MB sent)")
    check(growth < 16 << 10, f"a 45 MB head: RSS flat ({growth >> 10} MB growth < 16 MB)")
    st, _, _ = server.request("GET", "/health")
    check(st == 200, f"health after the large heads (got {st})")


def test_unary_disconnect(binary, model):
    """Two non-streaming 2,000-token requests (40 s at 20 ms a step) whose clients close after they
    start: both cancelled (CANCELLED in the metrics), their slots free within seconds, and the next
    request served at once on the two serving slots."""
    mport = free_port()
    server = Server(binary, model, ["--http-threads", "2", "--http-max-waiting", "0", "--debug-step-latency-ms", "20",
                                    "--metrics-port", str(mport)])
    try:
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 2000, "ignore_eos": True}).encode()
        socks = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            socks.append(s)
        running = wait_sample(mport, "glmserve_requests_running", lambda v: v >= 2, 20)
        check(running == 2, f"two long unary requests running (saw {running})")
        for s in socks:
            s.close()
        t = time.monotonic()
        running = wait_sample(mport, "glmserve_requests_running", lambda v: v == 0, 10)
        freed = time.monotonic() - t
        check(running == 0, f"clients gone: both requests ended in {freed:.1f} s, not at their 40 s end")
        cancelled = metric(mport, 'glmserve_requests_total{code="CANCELLED"}')
        ok = metric(mport, 'glmserve_requests_total{code="OK"}')
        check(cancelled == 2 and ok == 0, f"counted CANCELLED, not OK (CANCELLED {cancelled}, OK {ok})")
        st, _, _ = server.post("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2}, timeout=30)
        check(st == 200, f"a new request gets a serving slot (got {st}, not 429)")
    finally:
        server.stop()


def test_slowloris(binary, model):
    """80 connections each sending a byte every 0.5 s: /health keeps answering; they are cut off
    at the read deadline (408); over the connection cap a connection gets 503 at once."""
    slow_mport = free_port()
    server = Server(binary, model, ["--http-read-timeout-ms", "2000", "--http-max-connections", "100",
                                    "--metrics-port", str(slow_mport)])
    try:
        pid = server.proc.pid
        base = rss_kb(pid)
        slow = []
        head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for _ in range(80):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.send(head[:1])  # the request's first byte: its read deadline starts
            slow.append(s)
        stop = threading.Event()
        cut = [0]

        def trickle(s, limit=len(head)):
            for b in head[1:limit]:
                if stop.is_set():
                    return
                try:
                    s.send(bytes([b]))
                except OSError:
                    cut[0] += 1
                    return
                time.sleep(0.5)

        # The first five stop after three bytes and wait for their answer: 408 at the deadline.
        threads = [threading.Thread(target=trickle, args=(s, 3 if i < 5 else len(head)), daemon=True)
                   for i, s in enumerate(slow)]
        for t in threads:
            t.start()
        worst = 0.0
        ok = 0
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end:
            t = time.monotonic()
            try:
                with urllib.request.urlopen(server.url("/health"), timeout=5) as r:
                    ok += r.status == 200
            except OSError:
                pass
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.2)
        check(ok >= 15 and worst < 1.0, f"slowloris x80: /health answered {ok} times, slowest {worst:.3f} s")
        st, _, _ = server.post("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2})
        check(st == 200, f"slowloris x80: the API answers (got {st})")
        # The slow ones were answered 408 and closed at the deadline (2 s): five that stopped
        # sending, two still trickling their head when it passed (httplib's own answer was 400).
        statuses = []
        for s in slow[:7]:
            try:
                st, _, body = read_response(s, timeout=5)
            except OSError as e:
                st = repr(e)
            statuses.append(st)
        check(all(st == 408 for st in statuses), f"slow connections cut off with 408 at the deadline ({statuses})")
        if not all(st == 408 for st in statuses):
            print(server.log()[-3000:])
        # A client too slow to send its request is its own doing: counted CANCELLED, as one that
        # leaves mid-body. As DEADLINE_EXCEEDED it fed GlmserveHighErrorRatio, the server-side alert.
        deadline = metric(slow_mport, 'glmserve_requests_total{code="DEADLINE_EXCEEDED"}') or 0
        cancelled = metric(slow_mport, 'glmserve_requests_total{code="CANCELLED"}') or 0
        check(deadline == 0 and cancelled >= 7, f"408s counted CANCELLED, not DEADLINE_EXCEEDED "
              f"({cancelled:.0f} / {deadline:.0f})")
        # A half-sent head that is no API request (a slow health probe) is answered 408 but not
        # counted: a complete GET /health never is.
        probes = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        for s in probes:
            s.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        probe_statuses = [read_response(s, timeout=5)[0] for s in probes]
        for s in probes:
            s.close()
        after = metric(slow_mport, 'glmserve_requests_total{code="CANCELLED"}') or 0
        check(probe_statuses == [408, 408] and after == cancelled,
              f"half-sent GET /health: 408 ({probe_statuses}), not counted (CANCELLED {cancelled:.0f} -> {after:.0f})")
        stop.set()
        for s in slow:
            s.close()
        check(rss_kb(pid) - base < 64 << 10, f"slowloris: RSS flat ({(rss_kb(pid) - base) >> 10} MB growth)")
    finally:
        server.stop()
    # The connection cap: at 8 open connections the 9th is answered 503 at once.
    mport = free_port()
    server = Server(binary, model, ["--http-max-connections", "8", "--http-read-timeout-ms", "3000",
                                    "--metrics-port", str(mport)])
    try:
        unavailable_before = metric(mport, 'glmserve_requests_total{code="UNAVAILABLE"}') or 0
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(8)]
        for s in idle:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # an unfinished head holds the connection
        time.sleep(0.3)
        s9 = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        t = time.monotonic()
        st, headers, body = read_response(s9, timeout=5)
        check(st == 503 and is_openai_error(body, "service_unavailable_error", "too_many_connections")
              and headers.get("retry-after") == "1" and time.monotonic() - t < 1,
              f"connection over --http-max-connections 8: 503 too_many_connections at once (got {st})")
        s9.close()
        unavailable = (metric(mport, 'glmserve_requests_total{code="UNAVAILABLE"}') or 0) - unavailable_before
        check(unavailable == 1, f"the 503 over the cap is counted as UNAVAILABLE in glmserve_requests_total ({unavailable})")
        refused = [line for line in server.log().splitlines()
                   if "request refused" in line and "--http-max-connections 8" in line]
        check(len(refused) == 1 and "status=UNAVAILABLE" in refused[0] and "http_status=503" in refused[0]
              and "peer=127.0.0.1:" in refused[0],
              f"the 503 over the cap is logged once as a refusal, naming the flag, status and peer ({refused})")
        # Past a second between requests the oldest unfinished head gives way: a slowloris that
        # holds every connection cannot keep a client that sends its request at once out.
        time.sleep(1.0)
        t = time.monotonic()
        st, _, _ = server.request("GET", "/health")
        check(st == 200 and time.monotonic() - t < 1,
              f"at the cap, the connection longest in an unfinished head closed for a new request (got {st})")
        gone = 0
        for s in idle:
            try:
                s.settimeout(2)
                gone += s.recv(64) == b""
            except OSError:
                gone += 1
        check(gone == 1, f"exactly one unfinished head was closed for it ({gone})")
        for s in idle:
            s.close()
        time.sleep(0.5)
        st, _, _ = server.request("GET", "/health")
        check(st == 200, f"health once the connections closed (got {st})")
    finally:
        server.stop()


def test_queue(binary, model):
    """threads 2, waiting 3: of 10 concurrent streams 2 run, 3 wait (in glmserve_queue_depth), 5 get
    429 + Retry-After at once; every accepted one completes."""
    mport = free_port()
    server = Server(binary, model, ["--http-threads", "2", "--http-max-waiting", "3", "--debug-step-latency-ms", "40",
                                    "--metrics-port", str(mport)])
    try:
        queue_wait_before = metric(mport, "glmserve_queue_wait_seconds_sum") or 0
        results = [None] * 10
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 12, "ignore_eos": True, "stream": True})

        def one(i):
            t = time.monotonic()
            c = server.conn(60)
            try:
                c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read()
                results[i] = (r.status, r.getheader("Retry-After"), data, time.monotonic() - t)
            finally:
                c.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        depth = 0
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("glmserve_queue_depth"):
                        depth = max(depth, float(line.split()[-1]))
            if depth >= 3:
                break
            time.sleep(0.1)
        st, _, _ = server.request("GET", "/health", timeout=5)
        check(st == 200, "health answers while every serving slot streams")
        for t in threads:
            t.join(120)
        statuses = sorted(r[0] for r in results)
        r429 = [r for r in results if r[0] == 429]
        check(statuses.count(200) == 5 and len(r429) == 5, f"10 streams, 2 slots + 3 waiting: 5 x 200, 5 x 429 ({statuses})")
        check(all(r[1] == "1" and is_openai_error(r[2], "rate_limit_error") and r[3] < 1.0 for r in r429),
              "429s: Retry-After 1, OpenAI rate_limit_error, at once (< 1 s)")
        check(all(b"data: [DONE]" in r[2] for r in results if r[0] == 200), "every admitted stream ends with [DONE]")
        check(depth >= 3, f"glmserve_queue_depth counted the waiting HTTP requests (max seen {depth})")
        # The 3 that waited for a slot waited a stream's time (12 steps of 40 ms) or two: their wait
        # for a serving slot is queue wait too (it was left out, the engine timing from its submit).
        queue_wait = (metric(mport, "glmserve_queue_wait_seconds_sum") or 0) - queue_wait_before
        check(queue_wait >= 1.0, f"glmserve_queue_wait_seconds counts the wait for a serving slot ({queue_wait:.2f} s)")
    finally:
        server.stop()


def test_uncounted_routes(binary, model):
    """A refused health or models request (bad framing) is answered 400 and closed, but not counted
    in glmserve_requests_total (inference requests only; it counted INVALID_ARGUMENT); the same on
    an API route is counted."""
    mport = free_port()
    server = Server(binary, model, ["--metrics-port", str(mport)])
    try:
        series = 'glmserve_requests_total{code="INVALID_ARGUMENT"}'
        before = metric(mport, series) or 0
        for path, method in (("/health", "GET"), ("/v1/models", "GET")):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".encode())
                st, _, _ = read_response(s)
            check(st == 400, f"{method} {path} with Transfer-Encoding: gzip answered 400 ({st})")
        check((metric(mport, series) or 0) == before, "a health or models request is not counted as an inference request")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
            st, _, _ = read_response(s)
        check(st == 400 and (metric(mport, series) or 0) == before + 1, f"the same on /v1/completions is counted ({st})")
        # A client that leaves mid-body is CANCELLED, not bad input (it fed the bad-input alert).
        cancelled = 'glmserve_requests_total{code="CANCELLED"}'
        before_cancelled, before_bad = metric(mport, cancelled) or 0, metric(mport, series) or 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"model\":")
            time.sleep(0.2)
            s.shutdown(socket.SHUT_WR)
            read_response(s)
        counted = wait_sample(mport, cancelled, lambda v: v == before_cancelled + 1, 5)
        check(counted == before_cancelled + 1 and (metric(mport, series) or 0) == before_bad,
              f"a client gone mid-body is counted CANCELLED ({counted - before_cancelled:.0f}), not INVALID_ARGUMENT")
    finally:
        server.stop()


def test_drain(binary, model):
    """threads 2: of 6 concurrent requests 2 run and 4 wait for a slot; SIGTERM then. All 6 are
    answered 200 (admitted before the drain), a request sent after it gets 503, the exit is 0."""
    mport = free_port()
    server = Server(binary, model, ["--http-threads", "2", "--http-max-waiting", "8", "--debug-step-latency-ms", "20",
                                    "--metrics-port", str(mport), "--drain-timeout-ms", "30000"])
    try:
        results = [None] * 6
        body = {"model": "m", "prompt": "hi", "max_tokens": 30, "ignore_eos": True}

        def one(i):
            results[i] = server.post("/v1/completions", body, timeout=120)[0]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        waiting = wait_sample(mport, "glmserve_queue_depth", lambda v: v is not None and v >= 4, 20)
        check(waiting is not None and waiting >= 4, f"4 requests wait for a serving slot before the signal ({waiting})")
        server.terminate()
        time.sleep(0.3)
        try:
            late = server.post("/v1/completions", body, timeout=10)[0]
        except OSError:
            late = "refused"  # the listener may already be closed: refused is as good
        for t in threads:
            t.join(120)
        check(results == [200] * 6, f"every request admitted before SIGTERM answered, waiting ones too ({results})")
        check(late in (503, "refused"), f"a request sent after SIGTERM is refused ({late})")
        rc = server.proc.wait(60)
        check(rc == 0, f"the drain ends with exit 0 ({rc})")
    finally:
        server.stop()


def test_http10(server):
    """HTTP/1.0: a stream is the events alone, ended by the connection's close; no keep-alive."""
    for stream in (True, False):
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 3, "stream": stream}).encode()
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        head = head.decode("latin-1").lower()
        check(" 200 " in head.split("\r\n")[0] and "connection: close" in head and "keep-alive" not in head and
              "transfer-encoding" not in head,
              f"HTTP/1.0 {'stream' if stream else 'unary'}: 200, Connection: close, no keep-alive or chunked coding")
        if stream:
            check(payload.startswith(b"data: ") and payload.endswith(b"data: [DONE]\n\n"),
                  f"HTTP/1.0 stream: the events alone, to the close ({payload[:40]!r} ... {payload[-20:]!r})")


def post_head(port, length=None, path="/v1/completions"):
    """A socket that has sent a POST head (Content-Length `length`, else chunked) and no body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    framing = b"Content-Length: %d" % length if length is not None else b"Transfer-Encoding: chunked"
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s\r\n\r\n" %
              (path.encode(), framing))
    return s


def padded_body(length):
    """A completion request of exactly `length` bytes (its prompt pads it)."""
    frame = json.dumps({"model": "m", "prompt": "", "max_tokens": 1})
    return frame.replace('"prompt": ""', '"prompt": "' + "a" * (length - len(frame)) + '"').encode()


def test_body_budget(binary, model):
    """--http-body-budget-mb 1: a body still arriving holds its declared 900,000 bytes, so a second
    of 200,000 bytes gets 429 + Retry-After unread, and a chunked one is cut off once it passes the
    room left; once the first connection goes, the same second body is read and answered; a body
    over the whole budget passes alone."""
    server = Server(binary, model, ["--http-body-budget-mb", "1"])
    try:
        holder = post_head(server.port, 900_000)
        holder.sendall(b'{"model":')  # the rest never comes while the others are tried
        time.sleep(0.3)
        second = padded_body(200_000)
        s = post_head(server.port, len(second))
        status, headers, body = read_response(s)
        s.close()
        check(status == 429 and headers.get("retry-after") == "1" and headers.get("connection") == "close" and
              is_openai_error(body, "rate_limit_error") and b"request body (200000 bytes) does not fit --http-body-budget-mb (1 MiB)" in body,
              f"a declared body past the budget: 429, Retry-After 1, closed, naming the flag ({status} {body[:160]})")

        s = post_head(server.port, None)
        sent = 0
        refused_early = False
        piece = b"a" * 32768
        try:
            s.sendall(b"%x\r\n%s\r\n" % (len(b'{"prompt":"'), b'{"prompt":"'))
            while sent < 400_000:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except OSError:
            refused_early = True
        status, headers, body = read_response(s)
        s.close()
        check(status == 429 and is_openai_error(body, "rate_limit_error"),
              f"a chunked body is cut off once it passes the room left: 429 ({status}, {sent} bytes sent, "
              f"send failed {refused_early})")

        holder.close()
        time.sleep(0.3)
        status, _, body = server.request("POST", "/v1/completions", body=second,
                                         headers={"Content-Type": "application/json"}, timeout=30)
        check(status is not None and status != 429, f"with the first body gone the second is read ({status})")
        alone = padded_body(1_500_000)
        status, _, body = server.request("POST", "/v1/completions", body=alone,
                                         headers={"Content-Type": "application/json"}, timeout=30)
        check(status is not None and status != 429, f"a body over the whole budget passes alone ({status})")
        st, _, _ = server.request("GET", "/health")
        check(st == 200, "health after the budget's refusals")
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    if not os.path.isdir(args.model):
        print("no model; skipped")
        return 77
    only = set(filter(None, args.only.split(",")))
    if not only or only & {"chunked", "prompt", "media", "framing", "headers", "http10"}:
        server = Server(args.binary, args.model)
        try:
            if not only or "media" in only:
                test_media_type(server)
            if not only or "framing" in only:
                test_framing(server)
            if not only or "headers" in only:
                test_headers(server)
            if not only or "prompt" in only:
                test_prompt_bound(server)
            if not only or "chunked" in only:
                test_chunked(server)
            if not only or "http10" in only:
                test_http10(server)
        finally:
            server.stop()
    if not only or "slowloris" in only:
        test_slowloris(args.binary, args.model)
    if not only or "queue" in only:
        test_queue(args.binary, args.model)
    if not only or "unary_disconnect" in only:
        test_unary_disconnect(args.binary, args.model)
    if not only or "body_budget" in only:
        test_body_budget(args.binary, args.model)
    if not only or "drain" in only:
        test_drain(args.binary, args.model)
    if not only or "uncounted" in only:
        test_uncounted_routes(args.binary, args.model)
    if FAILURES:
        print(f"hardening_test: {len(FAILURES)} FAILED")
        return 1
    print("hardening_test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
