#!/usr/bin/env python3
"""An InferStream client that reads nothing (it advertises an HTTP/2 window of 0, so the server's
first write never completes), through the real `glmserve serve` on loopback: the engine stops
generating for it once a write has waited 10 s, the call is counted CANCELLED, what it held is
dropped, and a reading client is served meanwhile. Before, the engine generated every token for
it and the steps piled up in the server (~1 KB a token) until the call's deadline, 10 minutes by
default. A raw HTTP/2 client (the `h2` package), since grpcio reads and acknowledges on its own.
Exit 77 = skipped (a Python package missing)."""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chaos"))
import harness  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402  (tests/pyutil, on the path harness set)
from harness import check  # noqa: E402
from checks import report  # noqa: E402
from metrics import sample, wait_sample  # noqa: E402
import grpc  # noqa: E402

try:
    import h2.config
    import h2.connection
    import h2.settings
except ImportError:
    h2 = None

STREAMS = 3
NEW_TOKENS = 2000  # the tiny model's context is 2048; at 20 ms a step they take 40 s unless cancelled


def open_unread_streams(port, pb):
    """A connection whose window is 0, with STREAMS InferStream calls that will never be read."""
    sock = socket.create_connection(("127.0.0.1", port))
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config)
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0, h2.settings.SettingCodes.ENABLE_PUSH: 0})
    conn.initiate_connection()
    for i in range(STREAMS):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/glmserve.v1.Inference/InferStream"),
                                (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")])
        body = pb.InferRequest(input_ids=[1, 2, 3, 5 + i], max_new_tokens=NEW_TOKENS,
                               min_new_tokens=NEW_TOKENS).SerializeToString()
        conn.send_data(sid, b"\x00" + struct.pack(">I", len(body)) + body, end_stream=True)
    sock.sendall(conn.data_to_send())
    return sock


def finished_unread_stream_frees_its_slot(args, pb, pb_grpc):
    """A stream that finishes generating while its client reads nothing still holds its call until
    the client reads or the deadline passes; its --max-requests-per-client slot frees when the
    engine is done with it (it was held to the deadline, refusing the client's next calls)."""
    server = harness.Server(args.binary, args.model, ["--max-requests-per-client", "1",
                                                      "--debug-step-latency-ms", "5"])
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config)
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0, h2.settings.SettingCodes.ENABLE_PUSH: 0})
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/glmserve.v1.Inference/InferStream"),
                                (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")])
        body = pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=40, min_new_tokens=40).SerializeToString()
        conn.send_data(sid, b"\x00" + struct.pack(">I", len(body)) + body, end_stream=True)
        sock.sendall(conn.data_to_send())
        stub = pb_grpc.InferenceStub(harness.channel(server.port))
        served, last = False, None
        deadline = time.monotonic() + 8  # 40 steps at 5 ms: generated well within this
        while time.monotonic() < deadline and not served:
            try:
                served = len(stub.Infer(pb.InferRequest(input_ids=[7, 8], max_new_tokens=2), timeout=10).output_ids) == 2
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
                time.sleep(0.2)
        check(served, f"the client's next call is admitted once its unread stream finished generating ({last})")
        sock.close()
    finally:
        check(server.stop() == 0, "the server drains and exits 0")


def main():
    args = server_test_args()
    if args is None:
        return 77
    if h2 is None:
        print("no h2 package; skipped")
        return 77
    pb, pb_grpc = harness.stubs(args.proto_root)
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--metrics-port", str(mport), "--debug-step-latency-ms", "20"])
    try:
        start = time.monotonic()
        sock = open_unread_streams(server.port, pb)
        running = wait_sample(mport, "glmserve_requests_running", lambda v: v == STREAMS, 30)
        check(running == STREAMS, f"{STREAMS} unread streams are running ({running})")
        # A reading client is served while they run.
        stub = pb_grpc.InferenceStub(harness.channel(server.port))
        ids = list(stub.Infer(pb.InferRequest(input_ids=[7, 8, 9], max_new_tokens=4), timeout=30).output_ids)
        check(len(ids) == 4, f"a reading client is served beside them ({ids})")
        cancelled = wait_sample(mport, 'glmserve_requests_total{code="CANCELLED"}', lambda v: v >= STREAMS, 60)
        took = time.monotonic() - start
        check(cancelled == STREAMS and 10 <= took < 50,
              f"the unread streams are cancelled after their write waited 10 s ({cancelled} in {took:.1f} s)")
        running = wait_sample(mport, "glmserve_requests_running", lambda v: v == 0, 10)
        check(running == 0, f"nothing runs for them afterwards ({running})")
        generated = sample(mport, "glmserve_generated_tokens_total")
        check(generated < STREAMS * NEW_TOKENS, f"their generation stopped short ({generated:.0f} tokens)")
        lines = [line for line in server.lines if "stream_unread" in line]
        check(len(lines) == STREAMS and "read no response for 10 s" in lines[0],
              f"each is logged as a stream nobody read ({len(lines)}: {lines[:1]})")
        sock.close()
        ids = list(stub.Infer(pb.InferRequest(input_ids=[7, 8, 9], max_new_tokens=4), timeout=30).output_ids)
        check(len(ids) == 4, "served after the unread client left")
    finally:
        check(server.stop() == 0, "the server drains and exits 0")
    finished_unread_stream_frees_its_slot(args, pb, pb_grpc)
    return report()


if __name__ == "__main__":
    sys.exit(main())
