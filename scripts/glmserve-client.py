#!/usr/bin/env python3
"""glmserve-client: a small gRPC client for `glmserve serve`, JSON in and JSON out (grpcurl is not in
Debian 12). Needs python3 with grpcio and grpcio-tools (scripts/install-deps.sh installs both, and
grpcio-health-checking for Health); stubs are generated at start from
proto/glmserve/v1/inference.proto into a temporary directory.

  glmserve-client.py [OPTIONS] METHOD [JSON | -]

METHOD: Infer, InferStream, GetModelInfo (also spelled glmserve.v1.Inference/Infer ...) or Health
(grpc.health.v1 Check; JSON {"service": "..."} optional). JSON is the request, a JSON object in
proto3 JSON (snake_case or camelCase field names); `-` reads it from stdin; omitted = {}. Output:
the reply as one JSON object per line with the proto's field names (InferStream: one line per
message); fields at their default value (0, "", UNSPECIFIED) are left out unless --emit-defaults.

Options: --addr HOST:PORT, --timeout SECONDS, --api-key KEY, --tls, --tls-ca FILE,
--tls-cert FILE --tls-key FILE (mutual TLS; one needs the other), --tls-server-name NAME (the name
the server's certificate is checked against, for an --addr it does not carry: a port-forward's
127.0.0.1), --emit-defaults, --proto-root DIR.

Environment: GLMSERVE_ADDR (the default of --addr, else 127.0.0.1:50051, scripts/serve-demo.sh's
port); GLMSERVE_API_KEY (the default of --api-key: keeps the key out of `ps` and shell history).
grpcio reads its own too (GRPC_TRACE, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, grpc_proxy/https_proxy with
no_proxy, ...).

Exit: 0 OK; 1 the RPC failed (its status code and message on stderr) or the reply could not be
written to stdout; 2 usage or setup error (a bad option, a request that is not a JSON object of
the method's request type, an unreadable TLS file, grpcio missing). A reader that stops early
(`| head -1`) ends the client quietly as it ends cat, by SIGPIPE (141 in the shell); Ctrl-C by
SIGINT (130).
"""
import argparse
import json
import math
import os
import signal
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"Infer": "unary", "InferStream": "stream", "GetModelInfo": "unary", "Health": "health"}
DEFAULT_ADDR = "127.0.0.1:50051"


def die(msg, code=2):
    print(f"glmserve-client: {msg}", file=sys.stderr)
    sys.exit(code)


def die_by(sig):
    # Python ignores SIGPIPE and turns SIGINT into an exception; ending by the signal itself, as
    # cat does, lets the shell and `set -o pipefail` see what they see for any other tool, with no
    # traceback and no second flush of a dead stdout at exit.
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def emit(line):
    # Flushed line by line so that a stream shows as it comes and a write error is caught here
    # rather than in the interpreter's last flush (an "Exception ignored" and exit 120).
    try:
        print(line, flush=True)
    except BrokenPipeError:
        die_by(signal.SIGPIPE)
    except OSError as e:
        # The unwritten line stays buffered: point stdout at /dev/null so that the exit's flush
        # does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        die(f"cannot write the reply to stdout: {e.strerror or e}", code=1)


def address(text):
    # gRPC takes a port past 65535 modulo 65536 (99999 dialled 34463) and says nothing.
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} of {text!r} is outside 1..65535")
    return text


def api_key(text):
    # A header value is visible ASCII and spaces; anything else failed inside gRPC with its trace,
    # or (not UTF-8) in Python with a traceback.
    if not all(0x20 <= ord(c) < 0x7F for c in text):
        raise argparse.ArgumentTypeError("must be printable ASCII (no newlines or other characters)")
    return text


def seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    # A deadline of 0 or less has passed before the call starts (DEADLINE_EXCEEDED, or a race with
    # a fast reply) and nan or inf is no deadline at all: a typo, refused rather than sent.
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def stubs(proto_root):
    try:
        from grpc_tools import protoc
    except ImportError:
        die("needs grpcio-tools (scripts/install-deps.sh, or: pip install grpcio grpcio-tools)")
    proto = os.path.join(proto_root, "glmserve", "v1", "inference.proto")
    if not os.path.isfile(proto):
        die(f"no {proto} (--proto-root DIR: the folder holding glmserve/v1/inference.proto)")
    out = tempfile.mkdtemp(prefix="glmserve_client_")
    # grpc_tools' own include dir holds the well-known types.
    import grpc_tools
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "glmserve/v1/inference.proto"])
    if rc != 0:
        die(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    from glmserve.v1 import inference_pb2, inference_pb2_grpc
    return inference_pb2, inference_pb2_grpc


def tls_files(args):
    """The PEM bytes of --tls-ca, --tls-key and --tls-cert (None where not given), read before any
    connection: grpcio takes a missing or non-PEM file for a failed handshake (UNAVAILABLE, exit 1)."""
    # Without the pair check a lone --tls-key fell through to plaintext, silently.
    if args.tls_key and not args.tls_cert:
        die("--tls-key needs --tls-cert (the client certificate that the key belongs to)")
    if args.tls_cert and not args.tls_key:
        die("--tls-cert needs --tls-key (the private key of the client certificate)")

    def read(flag, path):
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            die(f"{flag} {path}: {e.strerror or e}")
        if b"-----BEGIN " not in data:
            die(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
        return data
    ca, cert = read("--tls-ca", args.tls_ca), read("--tls-cert", args.tls_cert)
    return ca, read("--tls-key", args.tls_key), cert  # grpc.ssl_channel_credentials' order


def channel(grpc, args, pem):
    if not (args.tls or args.tls_server_name or any(pem)):
        return grpc.insecure_channel(args.addr)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.addr, grpc.ssl_channel_credentials(*pem), options=options)


def parse(json_format, text, msg, where):
    # json_format.Parse takes a JSON array or string for a request with every field unset (`[]`
    # went out as {}) and words a number or null as a Python TypeError: the shape is checked first,
    # and for Health as for the other methods.
    name = msg.DESCRIPTOR.full_name
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        die(f"{where} is not JSON: {e}")
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
        die(f"{where} must be a JSON object ({{...}}, a {name}), not {kind}")
    try:
        return json_format.Parse(text, msg)
    except json_format.ParseError as e:
        die(f"{where} is not a {name} in JSON: {e}")


def to_json(msg, defaults=False):
    from google.protobuf import json_format
    kw = {"preserving_proto_field_name": True}
    if defaults:  # protobuf >= 5.26 renamed the option
        try:
            text = json_format.MessageToJson(msg, always_print_fields_with_no_presence=True, **kw)
        except TypeError:
            text = json_format.MessageToJson(msg, including_default_value_fields=True, **kw)
    else:
        text = json_format.MessageToJson(msg, **kw)
    return json.dumps(json.loads(text), ensure_ascii=False)


def arguments():
    # --help shows the whole docstring but its options summary: each option says it below.
    paragraphs = __doc__.strip().split("\n\n")
    ap = argparse.ArgumentParser(
        prog="glmserve-client.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(p for p in paragraphs if not p.startswith(("Options:", "Environment:", "Exit:"))),
        epilog="\n\n".join(p for p in paragraphs if p.startswith(("Environment:", "Exit:"))))
    ap.add_argument("method", metavar="METHOD", help=f"one of {', '.join(METHODS)}")
    ap.add_argument("request", metavar="JSON", nargs="?", default="{}",
                    help="the request, a JSON object; - reads it from stdin (default: {})")
    # An empty GLMSERVE_ADDR (`GLMSERVE_ADDR= cmd`) means unset, not the address "".
    ap.add_argument("--addr", metavar="HOST:PORT", type=address,
                    default=os.environ.get("GLMSERVE_ADDR") or DEFAULT_ADDR,
                    help=f"the server (default: $GLMSERVE_ADDR, else {DEFAULT_ADDR})")
    ap.add_argument("--timeout", metavar="SECONDS", type=seconds, default=120.0,
                    help="deadline of the call, > 0; a stream's whole length counts (default: 120)")
    # The key itself is never shown as the default: --help is pasted into tickets.
    ap.add_argument("--api-key", metavar="KEY", type=api_key, default=os.environ.get("GLMSERVE_API_KEY"),
                    help="sent as `authorization: Bearer KEY` (default: $GLMSERVE_API_KEY, else none; "
                         "the variable keeps the key out of ps and shell history)")
    ap.add_argument("--tls", action="store_true",
                    help="TLS trusting the system roots (implied by --tls-ca and --tls-cert; default: plaintext)")
    ap.add_argument("--tls-ca", metavar="FILE", help="TLS trusting the PEM CA certificate(s) in FILE")
    ap.add_argument("--tls-cert", metavar="FILE",
                    help="client certificate (PEM) for mutual TLS; needs --tls-key")
    ap.add_argument("--tls-key", metavar="FILE", help="private key (PEM) of --tls-cert; needs --tls-cert")
    ap.add_argument("--tls-server-name", metavar="NAME",
                    help="check the server's certificate against NAME instead of --addr's host (implies --tls)")
    ap.add_argument("--emit-defaults", action="store_true",
                    help="print fields at their default value (0, \"\", UNSPECIFIED) too (default: left out)")
    ap.add_argument("--proto-root", metavar="DIR", default=os.path.join(ROOT, "proto"),
                    help="the folder holding glmserve/v1/inference.proto (default: %(default)s)")
    return ap.parse_args()


def main():
    args = arguments()
    method = args.method.rsplit("/", 1)[-1]
    if method not in METHODS:
        die(f"unknown method {args.method!r}: one of {', '.join(METHODS)}")
    # Usage errors first, before stdin is waited for or anything is imported.
    pem = tls_files(args)
    if args.request == "-":
        where = "the request on stdin"
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as e:
            die(f"{where} is not UTF-8: {e}")
    else:
        where, text = "the request", args.request
    try:
        import grpc
    except ImportError:
        die("needs grpcio (scripts/install-deps.sh, or: pip install grpcio grpcio-tools)")
    from google.protobuf import json_format

    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None
    if METHODS[method] == "health":
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError:
            die("Health needs grpcio-health-checking (scripts/install-deps.sh, or: pip install grpcio-health-checking)")
        req = parse(json_format, text, health_pb2.HealthCheckRequest(), where)
    else:
        pb, pb_grpc = stubs(args.proto_root)
        req = parse(json_format, text, (pb.GetModelInfoRequest if method == "GetModelInfo" else pb.InferRequest)(),
                    where)
    ch = channel(grpc, args, pem)
    try:
        if METHODS[method] == "health":
            emit(to_json(health_pb2_grpc.HealthStub(ch).Check(req, timeout=args.timeout, metadata=metadata),
                         args.emit_defaults))
            return 0
        call = getattr(pb_grpc.InferenceStub(ch), method)
        if METHODS[method] == "stream":
            for msg in call(req, timeout=args.timeout, metadata=metadata):
                emit(to_json(msg, args.emit_defaults))
        else:
            emit(to_json(call(req, timeout=args.timeout, metadata=metadata), args.emit_defaults))
        return 0
    except grpc.RpcError as e:
        print(f"glmserve-client: {method}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        ch.close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while waiting for stdin or a reply: the channel is closed by now
        die_by(signal.SIGINT)
