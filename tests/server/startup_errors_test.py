#!/usr/bin/env python3
"""Start-up errors and malformed requests on the real `glmserve serve` binary (loopback only):
- a port in use on --port, --http-port or --metrics-port (held by a test socket, then by a first
  glmserve): exit 2, no segfault, one error-level line naming the flag and the port (shown at
  --log-level error), no shared listener (the first server keeps its port and answers);
- the same under --supervise: exit 2 once, no restart loop;
- an unreadable weights file (chmod 000; as root the server runs as nobody through setpriv, else
  that part is skipped): exit 2, one error-level line naming the file as unreadable, no
  "missing key" lines, at --log-level error; `glmserve inspect` likewise;
- a malformed protobuf on Infer, InferStream and GetModelInfo: INVALID_ARGUMENT with a message,
  and every stderr line still JSON;
- bad --device/--dtype values (serve, doctor, generate) and bad doctor flags: exit 2 naming the
  flag and the value, before any port is bound.
Exit 77 = skipped (no model, no grpcio)."""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from ports import busy_port, free_port  # noqa: E402
from checks import FAILURES, check  # noqa: E402
from glmserve_process import GlmserveProcess  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(os.path.dirname(HERE), "fixtures", "models", "glm4-gqa-safetensors")


def run_to_exit(cmd, timeout=90):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, "", err


def json_events(text):
    events, other = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            other.append(line)
    return events, other


FLAG_EVENT = {"--port": "grpc_listen_failed", "--http-port": "http_listen_failed",
              "--metrics-port": "metrics_bind_failed"}


def serve_cmd(binary, model, flag, port, extra=(), level="error"):
    ports = {"--port": "0"}
    ports[flag] = str(port)
    cmd = [binary, "serve", "--model", model, "--host", "127.0.0.1", "--log-format", "json", "--log-level", level]
    for f, p in ports.items():
        cmd += [f, p]
    return cmd + list(extra)


def check_port_refused(binary, model, flag, port, who):
    rc, _, err = run_to_exit(serve_cmd(binary, model, flag, port))
    what = f"{flag} {port} held by {who}"
    check(rc == 2, f"{what}: exit 2 (got {rc}; 139/-11 = the old segfault)")
    events, other = json_events(err)
    check(not other, f"{what}: every stderr line is JSON (other: {other[:3]})")
    errors = [e for e in events if e.get("level") == "error"]
    check(len(errors) == 1, f"{what}: one error line at --log-level error (got {len(errors)})")
    if errors:
        e = errors[0]
        check(e.get("event") == FLAG_EVENT[flag], f"{what}: event {FLAG_EVENT[flag]} (got {e.get('event')})")
        check(e.get("msg", "").startswith(f"{flag} {port}: "), f"{what}: the message starts '{flag} {port}: ': {e.get('msg')}")
        check("in use" in e.get("msg", "").lower(), f"{what}: the reason is given: {e.get('msg')}")
        fields = e.get("fields", {})
        check(fields.get("flag") == flag and fields.get("port") == port, f"{what}: fields name the flag and port")
    if FAILURES:
        print(err)


def port_conflicts(binary, model):
    # Held by a plain socket.
    for flag in ("--port", "--http-port", "--metrics-port"):
        sock, port = busy_port()
        try:
            check_port_refused(binary, model, flag, port, "a test socket")
        finally:
            sock.close()

    # Held by a first glmserve (which sets its own socket options: no SO_REUSEPORT sharing).
    mport = free_port()
    first = GlmserveProcess(binary, model, ["--http-port", "0", "--metrics-port", str(mport), "--log-format", "json"])
    try:
        m = None
        deadline = time.monotonic() + 60
        while m is None and time.monotonic() < deadline:
            m = re.search(r"http serving on 127\.0\.0\.1:(\d+)", first.log())
            time.sleep(0.05)
        check(m is not None, "first server: HTTP serving")
        if m is None:
            print(first.log())
            return
        hport = int(m.group(1))
        for flag, port in (("--port", first.port), ("--http-port", hport), ("--metrics-port", mport)):
            check_port_refused(binary, model, flag, port, "a first glmserve")
        for _ in range(8):  # were the port shared, some of these would reach a second process
            with urllib.request.urlopen(f"http://127.0.0.1:{hport}/health", timeout=10) as r:
                check(r.status == 200, "the first server still answers /health")
        check(first.proc.poll() is None, "the first server still runs")

        # Under --supervise: exit 2 once, not a crash loop.
        rc, _, err = run_to_exit(serve_cmd(binary, model, "--port", first.port,
                                           ["--supervise"], level="info"), timeout=120)
        check(rc == 2, f"--supervise, --port {first.port} in use: exit 2 (got {rc})")
        events, other = json_events(err)
        started = [e for e in events if e.get("event") == "child_started"]
        check(len(started) == 1, f"--supervise: the child started once (got {len(started)})")
        check(any(e.get("event") == "supervisor_config_error" and e.get("level") == "error" for e in events),
              "--supervise: the supervisor says it does not restart on exit 2")
        check(not any("signal" in str(e.get("fields", {}).get("status", "")) for e in events),
              "--supervise: no child died of a signal")
        if FAILURES:
            print(err)
    finally:
        first.stop()


def broken_tokenizer(binary, model):
    """Tokenizer files that do not load: serve exits 2 naming the file (it started ids-only and
    refused every prompt while health said SERVING)."""
    tmp = tempfile.mkdtemp(prefix="glmserve_tokenizer_")
    try:
        broken = os.path.join(tmp, "model")
        shutil.copytree(model, broken)
        with open(os.path.join(broken, "tokenizer.json"), "w") as f:
            f.write('{"model": {"type": "BPE", "vocab": {')
        rc, _, err = run_to_exit([binary, "serve", "--model", broken, "--host", "127.0.0.1", "--port", "0",
                                  "--log-format", "json"])
        check(rc == 2, f"broken tokenizer: exit 2 (got {rc})")
        events, _ = json_events(err)
        errors = [e for e in events if e.get("level") == "error"]
        check(len(errors) == 1 and errors[0].get("event") == "config_invalid"
              and "tokenizer.json: invalid JSON" in errors[0].get("msg", ""),
              f"broken tokenizer: one config_invalid error naming tokenizer.json ({errors})")
        # A chat template the built-in renderers do not know runs on the Jinja engine, quietly; one
        # that cannot render a plain user turn is one warning at start: messages get the family's
        # built-in format instead, and the warning says why.
        shutil.copy(os.path.join(model, "tokenizer.json"), os.path.join(broken, "tokenizer.json"))
        config_path = os.path.join(broken, "tokenizer_config.json")
        with open(config_path) as f:
            config = json.load(f)
        for template, want_warning in (("{% for m in messages %}{{ m.content }}{% endfor %}", False),
                                       ("{{ raise_exception('no plain turns') }}", True)):
            config["chat_template"] = template
            with open(config_path, "w") as f:
                json.dump(config, f)
            server = GlmserveProcess(binary, broken, ["--log-format", "json"])
            try:
                server.stop()
            finally:
                server.kill()
            events, _ = json_events(server.log())
            warned = [e for e in events if e.get("event") == "chat_template_unrecognized"]
            if want_warning:
                check(len(warned) == 1 and warned[0].get("level") == "warn" and "no plain turns" in warned[0]["msg"],
                      f"a chat template that fails a plain user turn is one warning at start ({warned})")
            else:
                engine = [e for e in events if "run by the Jinja engine" in e.get("msg", "")]
                check(not warned and len(engine) == 1,
                      f"another chat template runs on the Jinja engine without a warning ({warned}, {engine})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unreadable_weights(binary):
    if not os.path.isdir(FIXTURE):
        print(f"unreadable weights: SKIP (no fixture at {FIXTURE})")
        return
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            print("unreadable weights: SKIP (root reads a chmod 000 file, and no setpriv to drop to nobody)")
            return
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    tmp = tempfile.mkdtemp(prefix="glmserve_chmod_")
    try:
        model = os.path.join(tmp, "model")
        shutil.copytree(FIXTURE, model)
        os.chmod(tmp, 0o755)
        os.chmod(model, 0o755)
        for name in os.listdir(model):
            os.chmod(os.path.join(model, name), 0o644)
        weights = os.path.join(model, "model.safetensors")
        os.chmod(weights, 0)
        if prefix:
            probe = subprocess.run(prefix + [binary, "--help"], capture_output=True)
            if probe.returncode not in (0, 1, 2):
                print(f"unreadable weights: SKIP (nobody cannot run {binary}: rc {probe.returncode})")
                return

        rc, _, err = run_to_exit(prefix + [binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                                           "--log-format", "json", "--log-level", "error"])
        check(rc == 2, f"unreadable weights: exit 2 (got {rc})")
        events, other = json_events(err)
        check(not other, f"unreadable weights: every stderr line is JSON (other: {other[:3]})")
        errors = [e for e in events if e.get("level") == "error"]
        check(len(errors) == 1, f"unreadable weights: one error line at --log-level error (got {len(errors)})")
        if errors:
            msg = errors[0].get("msg", "")
            check(errors[0].get("event") == "model_load_failed", "unreadable weights: event model_load_failed")
            check("model.safetensors: unreadable: cannot open: Permission denied" in msg,
                  f"unreadable weights: the file is named as unreadable: {msg}")
            check(msg.count("model.safetensors:") == 1, "unreadable weights: reported once")
            check("missing key" not in msg, "unreadable weights: no 'missing key' lines that only follow from it")
        if FAILURES:
            print(err)

        rc, out, err = run_to_exit(prefix + [binary, "inspect", "--model", model])
        text = out + err
        check(rc == 2, f"inspect, unreadable weights: exit 2 (got {rc})")
        check("model.safetensors: unreadable: cannot open: Permission denied" in text,
              "inspect: the file is named as unreadable")
        check("missing key" not in text, "inspect: no 'missing key' lines")
        if FAILURES:
            print(text)

        # The whole directory unreadable: said so (it read as empty: "config.json missing", "no
        # weight files"), exit 2.
        os.chmod(weights, 0o644)
        os.chmod(model, 0)
        try:
            rc, out, err = run_to_exit(prefix + [binary, "inspect", "--model", model])
        finally:
            os.chmod(model, 0o755)
        check(rc == 2 and "cannot be read: Permission denied" in err and "config.json" not in err,
              f"inspect, unreadable directory: exit 2 naming it ({rc}: {err.strip()})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def malformed_protobuf(binary, model):
    try:
        import grpc
    except ImportError as e:
        print(f"malformed protobuf: SKIP ({e})")
        return
    server = GlmserveProcess(binary, model, ["--log-format", "json"])
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        payloads = {
            "truncated varint": b"\x08",
            "invalid UTF-8 in the prompt string": b"\x12\x02\xff\xfe",  # InferRequest only
            "wire type 7": b"\x0f\x00",
        }
        for method, kind in (("/glmserve.v1.Inference/Infer", "unary"),
                             ("/glmserve.v1.Inference/InferStream", "stream"),
                             ("/glmserve.v1.Inference/GetModelInfo", "unary")):
            for what, payload in payloads.items():
                if "UTF-8" in what and "GetModelInfo" in method:
                    continue  # GetModelInfoRequest has no fields: an unknown field 2 is valid
                try:
                    if kind == "unary":
                        channel.unary_unary(method, request_serializer=None, response_deserializer=None)(
                            payload, timeout=10)
                    else:
                        list(channel.unary_stream(method, request_serializer=None, response_deserializer=None)(
                            payload, timeout=10))
                    check(False, f"{method}, {what}: refused")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                          f"{method}, {what}: INVALID_ARGUMENT (got {e.code()})")
                    check("malformed request" in (e.details() or ""), f"{method}, {what}: a message ({e.details()!r})")
                    # Its request id in the trailers, as every call's (it had none).
                    ids = [v for k, v in (e.trailing_metadata() or ()) if k == "glmserve-request-id"]
                    check(len(ids) == 1 and ids[0], f"{method}, {what}: glmserve-request-id trailer ({ids})")
        # A call whose deadline passes before its request arrives (the client sends headers, never
        # the message) is no malformed request: DEADLINE_EXCEEDED, not INVALID_ARGUMENT.
        release = threading.Event()

        def never_sends():
            release.wait(5)
            return
            yield

        try:
            channel.stream_unary("/glmserve.v1.Inference/Infer", request_serializer=None,
                                 response_deserializer=None)(never_sends(), timeout=0.3)
            check(False, "Infer without its message: ends")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"Infer without its message: DEADLINE_EXCEEDED ({e.code()})")
        release.set()
        time.sleep(0.3)  # the server's own end of that call
        # A well-formed request on the same server still works.
        info = channel.unary_unary("/glmserve.v1.Inference/GetModelInfo", request_serializer=None,
                                   response_deserializer=None)(b"", timeout=10)
        check(isinstance(info, bytes) and len(info) > 0, "a well-formed GetModelInfo still answers")
        channel.close()
    finally:
        server.stop()
    events, other = json_events(server.log())
    check(not other, f"malformed protobuf: every stderr line is JSON (other: {other[:3]})")
    check(any(e.get("event") == "request_malformed" for e in events), "malformed protobuf: logged as request_malformed")
    malformed = sum(e.get("event") == "request_malformed" for e in events)
    check(malformed == 8, f"malformed protobuf: the 8 malformed calls logged, not the call without a message ({malformed})")
    if FAILURES:
        print(server.log())

    # With API keys on, a caller without a key learns nothing about its bytes: UNAUTHENTICATED.
    tmp = tempfile.mkdtemp(prefix="glmserve_keys_")
    key_file = os.path.join(tmp, "keys")
    with open(key_file, "w") as f:
        f.write("sk-startup-errors-test\n")
    server = GlmserveProcess(binary, model, ["--log-format", "json", "--api-key-file", key_file])
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        infer = channel.unary_unary("/glmserve.v1.Inference/Infer", request_serializer=None, response_deserializer=None)
        for metadata, want in ((None, grpc.StatusCode.UNAUTHENTICATED),
                               ((("authorization", "Bearer sk-startup-errors-test"),), grpc.StatusCode.INVALID_ARGUMENT)):
            try:
                infer(b"\x08", timeout=10, metadata=metadata)
                check(False, f"malformed Infer with keys on, metadata {bool(metadata)}: refused")
            except grpc.RpcError as e:
                check(e.code() == want, f"malformed Infer with keys on, key given: {bool(metadata)}: {want} (got {e.code()})")
        channel.close()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def bad_flag_values(binary, model):
    """Bad values of serve flags: exit 2 before anything is bound, one JSON error line
    (flags_invalid) naming flag and value (it was plain text and the whole usage, which a log
    pipeline reading JSON lines chokes on). Flags the engine cannot be built with (a KV cache that
    holds no block, or does not fit in memory) are configuration errors too: exit 2, not 1."""
    for flag, value in (("--max-prefill-tokens-with-decodes", "-1"), ("--max-prefill-tokens-with-decodes", "x"),
                        ("--reflection", "maybe"), ("--max-batch", "abc"), ("--frobnicate", "1")):
        rc, _, err = run_to_exit([binary, "serve", "--model", model, "--port", "0", flag, value], timeout=30)
        check(rc == 2, f"{flag} {value}: exit 2 (got {rc})")
        check(flag in err and (value in err or flag == "--frobnicate"),
              f"{flag} {value}: the message names the flag and the value: {err[:200]}")
        events, other = json_events(err)
        check(not other and [e.get("event") for e in events] == ["flags_invalid"] and events[0].get("level") == "error",
              f"{flag} {value}: one JSON error line, flags_invalid (events {[e.get('event') for e in events]}, "
              f"other lines {len(other)})")
    # A model directory that is not there, or a file: the flag's error, before any port is bound
    # (it was "no tokenizer ... send input_ids", then a load failure naming no flag, while the
    # gRPC port listened).
    for missing, says in ((os.path.join(model, "no-such-dir"), "no such directory"),
                          (os.path.join(model, "config.json"), "not a directory")):
        rc, _, err = run_to_exit([binary, "serve", "--model", missing, "--port", "0"], timeout=30)
        events, other = json_events(err)
        check(rc == 2 and [e.get("event") for e in events] == ["flags_invalid"]
              and f"--model {missing}: {says}" in events[0].get("msg", ""),
              f"--model {missing}: exit 2, one flags_invalid line saying '{says}' (got {rc}: {err[:300]})")
    for extra in (["--kv-block-size", "4096", "--kv-cpu-budget-mb", "1"], ["--kv-blocks", "2000000000"],
                  ["--kv-blocks", "2147483647"]):
        rc, _, err = run_to_exit([binary, "serve", "--model", model, "--port", "0", "--log-level", "error"] + extra,
                                 timeout=60)
        events, _ = json_events(err)
        check(rc == 2 and any(e.get("event") == "engine_start_failed" for e in events),
              f"{' '.join(extra)}: exit 2, engine_start_failed (got {rc}: {err[:300]})")


def bad_device_values(binary, model):
    """--device and --dtype are parsed once, with the other flags, before anything is bound: with
    --port, --http-port and --metrics-port all held busy, a bad value is what the server reports
    (exit 2, naming the flag and the value), not a port in use; no 'serving on' line. `cuda:x`
    used to become cuda:0 and `cudafoo` was taken for CUDA, found out only after binding."""
    held = [busy_port() for _ in range(3)]
    try:
        ports = [str(port) for _, port in held]
        for flag, value in (("--device", "cudafoo"), ("--device", "cuda:x"), ("--device", "cuda:-1"),
                            ("--device", "gpu"), ("--dtype", "int8")):
            what = f"serve {flag} {value}"
            rc, out, err = run_to_exit([binary, "serve", "--model", model, "--host", "127.0.0.1",
                                        "--port", ports[0], "--http-port", ports[1], "--metrics-port", ports[2],
                                        "--log-format", "json", flag, value], timeout=30)
            check(rc == 2, f"{what}: exit 2 (got {rc})")
            check(f"{flag}: '{value}'" in err, f"{what}: the message names the flag and the value: {err[:200]}")
            check("in use" not in err.lower() and "listen_failed" not in err and "bind_failed" not in err,
                  f"{what}: refused before any port is bound: {err[:200]}")
            # (the usage printed after the error mentions 'serving on HOST:PORT': look for a real one)
            check(not re.search(r"serving on \S+:\d+", out + err), f"{what}: no 'serving on' line")
            # The same value under --supervise: the supervisor refuses it too, and starts no child.
            if flag == "--device" and value == "cudafoo":
                rc, out, err = run_to_exit([binary, "serve", "--model", model, "--port", ports[0], "--supervise",
                                            "--log-format", "json", flag, value], timeout=30)
                check(rc == 2, f"{what} --supervise: exit 2 (got {rc})")
                check("child_started" not in err, f"{what} --supervise: no child started")
    finally:
        for sock, _ in held:
            sock.close()
    # The other commands that take --device refuse the same values the same way.
    for cmd in (["doctor"], ["generate", "--model", model, "--input-ids", "1,2", "--max-new-tokens", "2"]):
        for value in ("cudafoo", "cuda:x"):
            rc, out, err = run_to_exit([binary] + cmd + ["--device", value], timeout=60)
            check(rc == 2, f"{cmd[0]} --device {value}: exit 2 (got {rc})")
            check(f"--device: '{value}'" in err, f"{cmd[0]} --device {value}: names the flag and the value: {err[:200]}")
    for flag, value in (("--port", "abc"), ("--metrics-port", "70000"), ("--bogus", "1")):
        rc, out, err = run_to_exit([binary, "doctor", flag, value], timeout=60)
        check(rc == 2, f"doctor {flag} {value}: exit 2 (got {rc})")
        check(flag in err, f"doctor {flag} {value}: names the flag: {err[:200]}")
        check(not out, f"doctor {flag} {value}: no checks run")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--only", choices=["ports", "unreadable", "malformed"])
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.model, "config.json")):
        print(f"SKIP: no model at {args.model}")
        return 77
    if args.only in (None, "ports"):
        bad_flag_values(args.binary, args.model)
        bad_device_values(args.binary, args.model)
        port_conflicts(args.binary, args.model)
    if args.only in (None, "unreadable"):
        unreadable_weights(args.binary)
        broken_tokenizer(args.binary, args.model)
    if args.only in (None, "malformed"):
        malformed_protobuf(args.binary, args.model)
    print("FAILED: " + "; ".join(FAILURES) if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
