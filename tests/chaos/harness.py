"""Shared pieces of the chaos and observability tests: stubs generated from the proto at test
time, a `glmserve serve` process on loopback, a health watcher, a Prometheus text parser, and the
per-scenario tally (sent / ok / errors by code / lost / recovery seconds)."""
import collections
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.request

try:
    import grpc
    from grpc_tools import protoc  # noqa: F401 (present, or the test is skipped)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install grpcio grpcio-tools grpcio-health-checking)")
    sys.exit(77)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "pyutil"))
from glmserve_process import GlmserveProcess as Server, inference_stubs  # noqa: E402,F401
from checks import FAILURES, check  # noqa: E402,F401

SERVICE_CONFIG = os.path.join(REPO, "deploy", "grpc-service-config.json")


def stubs(proto_root):
    return inference_stubs(proto_root)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def channel(port, retry=False):
    options = []
    if retry:
        with open(SERVICE_CONFIG) as f:
            options.append(("grpc.service_config", json.dumps(json.load(f))))
        options.append(("grpc.enable_retries", 1))
    else:
        options.append(("grpc.enable_retries", 0))
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=options)


class HealthWatcher:
    """Polls grpc.health.v1 every 50 ms; records NOT_SERVING/unreachable -> SERVING recoveries."""

    def __init__(self, port):
        self.port = port
        self.stop_flag = False
        self.down_at = None
        self.recoveries = []
        self.saw_down = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        stub = health_pb2_grpc.HealthStub(ch)
        while not self.stop_flag:
            try:
                serving = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5).status == 1
            except grpc.RpcError:
                serving = False
            now = time.monotonic()
            if not serving and self.down_at is None:
                self.down_at = now
                self.saw_down = True
            elif serving and self.down_at is not None:
                self.recoveries.append(now - self.down_at)
                self.down_at = None
            time.sleep(0.05)
        ch.close()

    def close(self):
        self.stop_flag = True
        self.thread.join(5)


def health(port, timeout=2):
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        return health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout).status
    except grpc.RpcError:
        return -1
    finally:
        ch.close()


def wait_health(port, want, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if health(port) == want:
            return True
        time.sleep(0.05)
    return False


def scrape(port):
    """Prometheus text format -> {(name, frozenset(labels)): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out, text


def metric(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


class Tally:
    """sent / ok / errors by code / lost for one scenario. `lost`: a call that ended with no status
    from anyone (hung past the safety timeout or raised something other than an RpcError)."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.sent = 0
        self.ok = 0
        self.errors = collections.Counter()
        self.lost = 0
        self.recovery_s = None

    def record(self, outcome):
        with self.lock:
            self.sent += 1
            if outcome == "OK":
                self.ok += 1
            elif outcome == "LOST":
                self.lost += 1
            else:
                self.errors[outcome] += 1

    def row(self):
        errs = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "-"
        rec = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}"
        return f"| {self.name} | {self.sent} | {self.ok} | {errs} | {self.lost} | {rec} |"


def run_call(fn, tally, safety_s):
    """Runs one client call with a watchdog thread: LOST if it neither returns nor raises."""
    result = {}

    def target():
        try:
            fn()
            result["o"] = "OK"
        except grpc.RpcError as e:
            result["o"] = e.code().name
        except Exception as e:  # noqa: BLE001
            result["o"] = "LOST"
            result["e"] = repr(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(safety_s)
    outcome = result.get("o", "LOST")
    tally.record(outcome)
    return outcome
