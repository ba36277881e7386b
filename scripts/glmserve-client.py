#!/usr/bin/env python3
"""glmserve-client: a small gRPC client for `glmserve serve`, JSON in and JSON out (grpcurl is not in
Debian 12). Needs python3 with grpcio and grpcio-tools (scripts/install-deps.sh installs both);
stubs are generated at start from proto/glmserve/v1/inference.proto into a temporary directory.

  glmserve-client.py [--addr HOST:PORT] METHOD [JSON | -]

METHOD: Infer, InferStream, GetModelInfo (also spelled glmserve.v1.Inference/Infer ...) or Health
(grpc.health.v1 Check; JSON {"service": "..."} optional). JSON is the request in proto3 JSON
(snake_case or camelCase field names); `-` reads it from stdin; omitted = {}. Output: the reply as
one JSON object per line with the proto's field names (InferStream: one line per message);
fields at their default value (0, "", UNSPECIFIED) are left out unless --emit-defaults.

Options: --addr (default 127.0.0.1:50051, or $GLMSERVE_ADDR), --timeout SECONDS (default 120),
--api-key KEY (default $GLMSERVE_API_KEY; sent as `authorization: Bearer KEY`),
--tls-ca FILE (TLS, trusting FILE; --tls with no CA trusts the system roots),
--tls-cert FILE --tls-key FILE (client certificate for mutual TLS), --emit-defaults,
--proto-root DIR.

Exit: 0 OK; 1 the RPC failed (the status code and message on stderr); 2 usage or setup error.
"""
import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {"Infer": "unary", "InferStream": "stream", "GetModelInfo": "unary", "Health": "health"}


def die(msg, code=2):
    print(f"glmserve-client: {msg}", file=sys.stderr)
    sys.exit(code)


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


def channel(grpc, args):
    if not (args.tls or args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.addr)

    def read(path):
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()
    if bool(args.tls_cert) != bool(args.tls_key):
        die("--tls-cert and --tls-key go together")
    creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    return grpc.secure_channel(args.addr, creds)


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


def main():
    ap = argparse.ArgumentParser(prog="glmserve-client.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method")
    ap.add_argument("request", nargs="?", default="{}")
    ap.add_argument("--addr", default=os.environ.get("GLMSERVE_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--api-key", default=os.environ.get("GLMSERVE_API_KEY"))
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--emit-defaults", action="store_true")
    ap.add_argument("--proto-root", default=os.path.join(ROOT, "proto"))
    args = ap.parse_args()

    method = args.method.rsplit("/", 1)[-1]
    if method not in METHODS:
        die(f"unknown method {args.method!r}: one of {', '.join(METHODS)}")
    text = sys.stdin.read() if args.request == "-" else args.request
    try:
        import grpc
    except ImportError:
        die("needs grpcio (scripts/install-deps.sh, or: pip install grpcio grpcio-tools)")
    from google.protobuf import json_format

    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else None
    ch = channel(grpc, args)
    try:
        if METHODS[method] == "health":
            from grpc_health.v1 import health_pb2, health_pb2_grpc
            req = json_format.Parse(text, health_pb2.HealthCheckRequest())
            print(to_json(health_pb2_grpc.HealthStub(ch).Check(req, timeout=args.timeout, metadata=metadata),
                          args.emit_defaults))
            return 0
        pb, pb_grpc = stubs(args.proto_root)
        req_type = pb.GetModelInfoRequest if method == "GetModelInfo" else pb.InferRequest
        try:
            req = json_format.Parse(text, req_type())
        except json_format.ParseError as e:
            die(f"request is not a {req_type.DESCRIPTOR.full_name} in JSON: {e}")
        call = getattr(pb_grpc.InferenceStub(ch), method)
        if METHODS[method] == "stream":
            for msg in call(req, timeout=args.timeout, metadata=metadata):
                print(to_json(msg, args.emit_defaults), flush=True)
        else:
            print(to_json(call(req, timeout=args.timeout, metadata=metadata), args.emit_defaults))
        return 0
    except grpc.RpcError as e:
        print(f"glmserve-client: {method}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        ch.close()


if __name__ == "__main__":
    sys.exit(main())
