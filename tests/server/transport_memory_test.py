#!/usr/bin/env python3
"""A client that opens many Infer calls, sends all but the last byte of a large message on each and
then only answers pings, against the real `glmserve serve` on loopback with `--grpc-memory-mb 48`:
the server's memory stops growing near the bound (the transport stops reading), and the server
serves again once the client leaves. Unbounded (gRPC's default), each such call pinned ~7.6 MB
before any handler, API key or queue bound ran: 40 calls grew the server by ~300 MB, and any
number of connections could take it to the OOM killer. A raw HTTP/2 client (the `h2` package):
grpcio sends whole messages only. Exit 77 = skipped (a Python package missing)."""
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chaos"))
import harness  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402  (tests/pyutil, on the path harness set)
from harness import check  # noqa: E402
from checks import report  # noqa: E402

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
except ImportError:
    h2 = None

STREAMS = 40
DECLARED = 8_000_000  # bytes each call's message says it has; all but one are sent
BOUND_MB = 48
SEND_BUDGET_S = 20  # the sender gives up once the server has stopped reading this long


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class HalfSentCalls:
    """One HTTP/2 connection: STREAMS Infer calls, each DECLARED bytes long and one byte short."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.lock = threading.Lock()
        self.closed = False
        with self.lock:
            self.sock.sendall(self.conn.data_to_send())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):  # window updates and pings answered, so the connection looks alive
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                try:  # a GOAWAY ("buffers full") closes the connection: then nothing is left to answer
                    self.conn.receive_data(data)
                    self.sock.sendall(self.conn.data_to_send())
                except (OSError, h2.exceptions.ProtocolError):
                    return

    def send(self):
        """Sends as much as the server's windows let through within SEND_BUDGET_S; bytes sent."""
        sent = 0
        payload = struct.pack(">BI", 0, DECLARED) + b"\0" * (DECLARED - 1)
        last_progress = time.monotonic()
        for _ in range(STREAMS):
            if self.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
                return sent  # the server closed the connection ("buffers full"): the bound holds
            with self.lock:
                sid = self.conn.get_next_available_stream_id()
                self.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                             (":path", "/glmserve.v1.Inference/Infer"), (":authority", "x"),
                                             ("content-type", "application/grpc"), ("te", "trailers")])
                self.sock.sendall(self.conn.data_to_send())
            offset = 0
            while offset < len(payload):
                with self.lock:
                    n = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size,
                            len(payload) - offset)
                    if n > 0:
                        try:
                            self.conn.send_data(sid, payload[offset:offset + n])
                            self.sock.sendall(self.conn.data_to_send())
                        except (OSError, h2.exceptions.ProtocolError):
                            return sent  # closed by the server: the bound holds
                if n > 0:
                    offset += n
                    sent += n
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > SEND_BUDGET_S / 4:
                    return sent  # the server stopped reading: the bound holds
                else:
                    time.sleep(0.01)
        return sent

    def close(self):
        self.closed = True
        self.sock.close()


def main():
    args = server_test_args()
    if args is None:
        return 77
    if h2 is None:
        print("no h2 package; skipped")
        return 77
    pb, pb_grpc = harness.stubs(args.proto_root)
    server = harness.Server(args.binary, args.model, ["--grpc-memory-mb", str(BOUND_MB)])
    try:
        stub = pb_grpc.InferenceStub(harness.channel(server.port))
        request = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2)
        check(len(stub.Infer(request, timeout=30).output_ids) == 2, "served before")
        before = rss_mb(server.proc.pid)
        client = HalfSentCalls(server.port)
        sent = client.send()
        time.sleep(1)
        grown = rss_mb(server.proc.pid) - before
        print(f"sent {sent / 1e6:.0f} MB of {STREAMS * DECLARED / 1e6:.0f} MB declared; the server grew {grown:.0f} MB")
        check(sent < STREAMS * DECLARED / 2, f"the server stopped reading well before every byte ({sent / 1e6:.0f} MB)")
        check(grown < BOUND_MB + 64, f"the server grew near --grpc-memory-mb {BOUND_MB}, not by the bytes sent "
              f"({grown:.0f} MB)")
        client.close()
        deadline = time.monotonic() + 30
        served = False
        while not served and time.monotonic() < deadline:
            try:
                served = len(stub.Infer(request, timeout=5).output_ids) == 2
            except Exception:  # noqa: BLE001 (the transport may still be freeing the client's bytes)
                time.sleep(0.5)
        check(served, "served again once the client left")
    finally:
        check(server.stop() == 0, "the server drains and exits 0")
    return report()


if __name__ == "__main__":
    sys.exit(main())
