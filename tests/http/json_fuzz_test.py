#!/usr/bin/env python3
"""JSON fuzzing of the HTTP API: malformed bodies (every truncation, byte flips, random bytes),
deep nesting, huge strings, invalid UTF-8 and lone surrogates, and a wrong type at every field
of a valid chat and completions body. Asserts: never a 5xx, every 4xx is an OpenAI error object,
and the server still serves (/health 200, a real request works). Deterministic (seeded) and
bounded by --budget-s. Exit 77 = skipped.
"""
import copy
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from glmserve_process import server_test_args  # noqa: E402
from http_test_util import Server  # noqa: E402

FAILURES = []
WRONG = [None, True, False, 0, -1, 1.5, -1e308, 1e308, 2 ** 64, -(2 ** 63) - 1, "", "x", "\u0000",
         [], [1], ["a"], [[]], {}, {"a": 1}]

CHAT = {"model": "m", "messages": [
    {"role": "system", "content": "s"},
    {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    "max_tokens": 2, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 3, "n": 1,
    "frequency_penalty": 0.1, "presence_penalty": 0.1, "stream": False, "user": "u"}
COMP = {"model": "m", "prompt": "hello", "max_tokens": 2, "temperature": 0, "stop": "x", "seed": 1,
        "stream": False, "echo": False, "best_of": 1, "logprobs": None, "repetition_penalty": 1.1,
        "min_tokens": 1, "ignore_eos": False}


def paths(value, prefix=()):
    """Every path into a JSON value (dict keys and list indexes)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def replaced(value, path, new):
    out = copy.deepcopy(value)
    if not path:
        return new
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = new
    return out


def main():
    args = server_test_args(lambda ap: ap.add_argument("--budget-s", type=float, default=150), proto_root=False)
    if args is None:
        return 77
    rng = random.Random(1234)
    bodies = []  # (path, name, bytes)
    for base, path in ((CHAT, "/v1/chat/completions"), (COMP, "/v1/completions")):
        valid = json.dumps(base).encode()
        for n in range(len(valid)):
            bodies.append((path, f"truncated at {n}", valid[:n]))
        for i in range(150):
            b = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            bodies.append((path, f"byte flips #{i}", bytes(b)))
        for p in paths(base):
            for w in WRONG:
                bodies.append((path, f"{list(p)} = {w!r}", json.dumps(replaced(base, p, w)).encode()))
        for p in paths(base):
            if p:
                bodies.append((path, f"{list(p)} = deep", json.dumps(replaced(base, p, 0)).encode()
                               .replace(b"0", b"[" * 50 + b"0" + b"]" * 50, 1)))
    bodies += [
        ("/v1/chat/completions", "random bytes", bytes(rng.randrange(256) for _ in range(2000))),
        ("/v1/chat/completions", "empty body", b""),
        ("/v1/chat/completions", "deep arrays", b"[" * 200000 + b"]" * 200000),
        ("/v1/chat/completions", "deep objects", b'{"a":' * 100000 + b"1" + b"}" * 100000),
        ("/v1/chat/completions", "unclosed deep", b"[" * 500000),
        ("/v1/chat/completions", "invalid UTF-8 in content",
         b'{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"\xff\xfe\xc3"}]}'),
        ("/v1/chat/completions", "invalid UTF-8 in a key", b'{"\xc0\xaf":1,"model":"m"}'),
        ("/v1/chat/completions", "lone surrogate",
         b'{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"\\ud800"}]}'),
        ("/v1/chat/completions", "NUL inside content",
         b'{"model":"m","max_tokens":2,"messages":[{"role":"user","content":"a\\u0000b"}]}'),
        ("/v1/chat/completions", "huge role string",
         json.dumps({"model": "m", "messages": [{"role": "u" * (3 << 20), "content": "x"}]}).encode()),
        ("/v1/completions", "huge prompt", json.dumps({"model": "m", "prompt": "ab " * (1 << 20), "max_tokens": 1}).encode()),
        ("/v1/completions", "huge token list", json.dumps({"model": "m", "prompt": [1] * 300000}).encode()),
        ("/v1/completions", "huge stop", json.dumps({"model": "m", "prompt": "a", "stop": "s" * 100000}).encode()),
        ("/v1/completions", "many stops", json.dumps({"model": "m", "prompt": "a", "stop": ["s"] * 10000}).encode()),
        ("/v1/completions", "NaN", b'{"model":"m","prompt":"a","temperature":NaN}'),
        ("/v1/completions", "huge number", b'{"model":"m","prompt":"a","max_tokens":1' + b"0" * 5000 + b"}"),
        ("/v1/completions", "duplicate keys", b'{"model":"m","prompt":"a","prompt":5}'),
        ("/v1/completions", "trailing garbage", b'{"model":"m","prompt":"a"} x'),
    ]
    print(f"{len(bodies)} bodies", flush=True)

    server = Server(args.binary, args.model)
    start = time.monotonic()
    sent = 0
    try:
        for i, (path, name, body) in enumerate(bodies):
            if time.monotonic() - start > args.budget_s:
                print(f"budget of {args.budget_s}s reached after {sent} bodies", flush=True)
                break
            try:
                st, hdrs, data = server.post(path, body, timeout=60)
            except Exception as e:  # noqa: BLE001
                FAILURES.append(f"{path} {name}: no response ({e})")
                print(f"FAIL {path} {name}: no response ({e})", flush=True)
                if server.proc.poll() is not None:
                    break
                continue
            sent += 1
            if st >= 500:
                FAILURES.append(f"{path} {name}: {st} {data[:200]!r}")
                print(f"FAIL {path} {name}: {st} {data[:200]!r}", flush=True)
            elif st >= 400:
                try:
                    err = json.loads(data)["error"]
                    assert isinstance(err["message"], str) and err["type"] and "param" in err and "code" in err
                except Exception:  # noqa: BLE001
                    FAILURES.append(f"{path} {name}: {st} not an OpenAI error: {data[:200]!r}")
            elif st != 200:
                FAILURES.append(f"{path} {name}: unexpected status {st}")
            if i % 100 == 0:
                hs, _, _ = server.request("GET", "/health")
                if hs != 200:
                    FAILURES.append(f"/health {hs} after {name}")
        hs, _, _ = server.request("GET", "/health")
        st, _, data = server.post("/v1/chat/completions", {"model": "m", "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        ok = hs == 200 and st == 200 and server.proc.poll() is None
        print(("ok   " if ok else "FAIL ") + f"still serving after {sent} bodies (/health {hs}, chat {st})")
        if not ok:
            FAILURES.append("not serving after the fuzz")
    finally:
        server.kill()
    print(f"{sent} bodies in {time.monotonic() - start:.1f}s, no 5xx" if not FAILURES else "")
    if FAILURES:
        print(f"{len(FAILURES)} FAILED:\n  " + "\n  ".join(FAILURES[:50]))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
