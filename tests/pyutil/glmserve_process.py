"""Shared by the Python tests (gRPC client, observability, chaos, HTTP): `glmserve serve` as a
child process on loopback (waits for the line announcing the port, keeps every stderr line), and
Python stubs generated from the proto at test time."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading

GRPC_READY = r"serving on 127\.0\.0\.1:(\d+)"
HTTP_READY = r"http serving on 127\.0\.0\.1:(\d+)"


def server_test_args(add_arguments=None, proto_root=True):
    """The arguments every server test takes (--binary, --model, --proto-root unless proto_root is
    False: the HTTP-only tests, and what add_arguments(parser) adds); None, after printing SKIP,
    when --model holds no config.json (the caller exits 77)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    if proto_root:
        ap.add_argument("--proto-root", required=True)
    if add_arguments is not None:
        add_arguments(ap)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.model, "config.json")):
        print(f"SKIP: no model at {args.model}")
        return None
    return args


_stubs = None


def inference_stubs(proto_root):
    """(inference_pb2, inference_pb2_grpc) for glmserve/v1/inference.proto, generated once."""
    global _stubs
    if _stubs is None:
        from grpc_tools import protoc
        out = tempfile.mkdtemp(prefix="glmserve_stubs_")
        rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}",
                          f"--grpc_python_out={out}", "glmserve/v1/inference.proto"])
        if rc != 0:
            raise RuntimeError("protoc failed on glmserve/v1/inference.proto")
        sys.path.insert(0, out)
        from glmserve.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
        _stubs = (inference_pb2, inference_pb2_grpc)
    return _stubs


class GlmserveProcess:
    def __init__(self, binary, model, extra=(), port=0, wait=True, ready_pattern=GRPC_READY, start_timeout=120,
                 new_session=False):
        self.cmd = [binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), *extra]
        # new_session: its own process group, which a test can signal as a terminal or systemd does.
        self.proc = subprocess.Popen(self.cmd, stderr=subprocess.PIPE, text=True, errors="replace",
                                     start_new_session=new_session)
        self.lines = []
        self.port = None
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self._ready_pattern = re.compile(ready_pattern)
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            self.wait_serving(start_timeout)

    def _read(self):
        for line in self.proc.stderr:
            with self.lock:
                self.lines.append(line)
            m = self._ready_pattern.search(line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self.ready.set()
        self.ready.set()

    def wait_serving(self, timeout):
        if not self.ready.wait(timeout) or self.port is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + self.log())

    def log(self):
        with self.lock:
            return "".join(self.lines)

    def events(self):
        """Parsed JSON log lines (others skipped)."""
        out = []
        with self.lock:
            lines = list(self.lines)
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
