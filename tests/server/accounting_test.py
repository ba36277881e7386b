#!/usr/bin/env python3
"""Request accounting against what the client got, with the real `glmserve serve` binary on
loopback (--debug-step-latency-ms makes every engine step take a known time):
- a client that leaves while its request's last step runs is counted as it ended (gRPC: its
  deadline, DEADLINE_EXCEEDED; HTTP: it closed the connection, CANCELLED), with no latency sample:
  the engine's OK for that step never reached it;
- a request the engine refuses (its queue full) gets its request_refused line and no
  request_accepted line;
- an HTTP request that waited for a serving slot: request_accepted's host_ms leaves the wait out
  (it is queueing, not host work), the first_token line's ttft_ms has it as request_finished's
  does, and one whose deadline passes in that wait is a queue-wait sample.
Exit 77 = skipped."""
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chaos"))
import harness  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402  (tests/pyutil, on the path harness set)
from harness import check  # noqa: E402
import grpc  # noqa: E402

STEP_MS = 300  # every engine step's added latency: the windows below are whole steps wide


def counts(mport):
    samples, _ = harness.scrape(mport)
    return ({code: harness.metric(samples, "glmserve_requests_total", code=code)
             for code in ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")},
            harness.metric(samples, "glmserve_request_latency_seconds_count"),
            harness.metric(samples, "glmserve_queue_wait_seconds_count"),
            harness.metric(samples, "glmserve_queue_wait_seconds_sum"))


def wait_idle(mport, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        samples, _ = harness.scrape(mport)
        if harness.metric(samples, "glmserve_requests_running") == 0 and \
                harness.metric(samples, "glmserve_queue_depth") == 0:
            return
        time.sleep(0.05)


def events_of(server, request_id):
    return [e for e in server.events() if e.get("request_id") == request_id]


def wait_finished(server, request_id, timeout=10):
    """Until request_id's request_finished line (logged as it is counted)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(e.get("event") == "request_finished" for e in events_of(server, request_id)):
            return
        time.sleep(0.05)


def completion_body(max_tokens):
    # An id no model here ends on: every request runs its max_tokens steps.
    return json.dumps({"model": "m", "prompt": "hi", "max_tokens": max_tokens, "stop_token_ids": [1023],
                       "ignore_eos": True}).encode()


def http_completion(port, max_tokens, request_id, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=completion_body(max_tokens),
                                 headers={"Content-Type": "application/json", "x-request-id": request_id,
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def left_during_last_step(pb, pb_grpc, server, mport, http_port):
    """Two steps of STEP_MS each: the client leaves 1.5 steps in, during the last one."""
    wait_idle(mport)
    before, latency_before, _, _ = counts(mport)
    stub = pb_grpc.InferenceStub(harness.channel(server.port))
    try:
        stub.Infer(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=2, min_new_tokens=2, request_id="acct-dl"),
                   timeout=1.5 * STEP_MS / 1000)
        got = "OK"
    except grpc.RpcError as e:
        got = e.code().name
    check(got == "DEADLINE_EXCEEDED", f"gRPC: the client's deadline passed during the last step ({got})")
    wait_finished(server, "acct-dl")  # its last step ends after the client left (--max-batch 1)
    # HTTP: the client closes its connection 1.5 steps in; the server notices within 100 ms.
    sock = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    body = completion_body(2)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"x-request-id: acct-gone\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(1.5 * STEP_MS / 1000)
    sock.close()
    wait_finished(server, "acct-gone")
    after, latency_after, _, _ = counts(mport)
    delta = {code: after[code] - before[code] for code in after}
    check(delta["DEADLINE_EXCEEDED"] == 1 and delta["CANCELLED"] == 1 and delta["OK"] == 0,
          f"counted as the clients ended, not the engine's OK: {delta}")
    check(latency_after == latency_before, f"no latency sample for answers nobody got "
          f"({latency_before:.0f} -> {latency_after:.0f})")
    for request_id, code in (("acct-dl", "DEADLINE_EXCEEDED"), ("acct-gone", "CANCELLED")):
        finished = [e for e in events_of(server, request_id) if e.get("event") == "request_finished"]
        check(len(finished) == 1 and finished[0]["fields"].get("status") == code,
              f"{request_id}: request_finished says {code} ({[e.get('fields') for e in finished]})")


def refused_is_not_accepted(pb, pb_grpc, server, mport):
    """--max-batch 1 --max-queue 1: one runs, one waits, the third is refused."""
    wait_idle(mport)
    stub = pb_grpc.InferenceStub(harness.channel(server.port))
    results = {}

    def call(request_id):
        try:
            stub.Infer(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=3, min_new_tokens=3,
                                       request_id=request_id), timeout=30)
            results[request_id] = "OK"
        except grpc.RpcError as e:
            results[request_id] = e.code().name

    threads = []
    for i in range(3):
        t = threading.Thread(target=call, args=(f"acct-q{i}",))
        t.start()
        threads.append(t)
        time.sleep(0.1)
    for t in threads:
        t.join(60)
    check(results.get("acct-q2") == "RESOURCE_EXHAUSTED", f"the third is refused, the queue full ({results})")
    kinds = [e.get("event") for e in events_of(server, "acct-q2")]
    check("request_refused" in kinds and "request_accepted" not in kinds,
          f"a refused request is logged refused, not accepted ({kinds})")
    kinds = [e.get("event") for e in events_of(server, "acct-q0")]
    check(kinds[:1] == ["request_accepted"] and "request_finished" in kinds,
          f"an accepted one: request_accepted first, then its other lines ({kinds})")


def slot_wait(server, mport, http_port):
    """--http-threads 2: two long requests hold both serving slots while others wait for one."""
    wait_idle(mport)
    _, _, waits_before, wait_sum_before = counts(mport)
    holders = [threading.Thread(target=http_completion, args=(http_port, 4, f"acct-holder{i}")) for i in range(2)]
    for holder in holders:
        holder.start()
    time.sleep(0.2)
    waiter_status = []
    waiter = threading.Thread(target=lambda: waiter_status.append(http_completion(http_port, 1, "acct-waiter")))
    waiter.start()
    time.sleep(0.2)
    late = http_completion(http_port, 1, "acct-late", {"timeout": "300ms"})
    check(late == 504, f"a request whose deadline passes waiting for the slot: 504 ({late})")
    for holder in holders:
        holder.join(30)
    waiter.join(30)
    check(waiter_status == [200], f"the waiter is answered once the slot frees ({waiter_status})")
    wait_idle(mport)
    time.sleep(0.3)
    _, _, waits_after, wait_sum_after = counts(mport)
    # The holders (no wait), the waiter (its slot wait, ~1.2 s) and the late one (300 ms, then
    # refused): four samples.
    check(waits_after - waits_before == 4 and wait_sum_after - wait_sum_before >= 1.2,
          f"queue-wait samples for all four, the refused one's wait too "
          f"(+{waits_after - waits_before:.0f}, +{wait_sum_after - wait_sum_before:.2f} s)")
    by_event = {e.get("event"): e.get("fields", {}) for e in events_of(server, "acct-waiter")}
    accepted = by_event.get("request_accepted", {})
    first = by_event.get("first_token", {})
    finished = by_event.get("request_finished", {})
    check(accepted.get("host_ms", 1e9) < 500,
          f"host_ms leaves the slot wait out ({accepted.get('host_ms')} ms; queue_ms {finished.get('queue_ms')})")
    check(finished.get("queue_ms", 0) >= 500 and abs(first.get("ttft_ms", 0) - finished.get("ttft_ms", -1e9)) < 50,
          f"first_token's ttft_ms has the slot wait as request_finished's does "
          f"({first.get('ttft_ms')} / {finished.get('ttft_ms')} ms, queue_ms {finished.get('queue_ms')})")


def main():
    args = server_test_args()
    if args is None:
        return 77
    pb, pb_grpc = harness.stubs(args.proto_root)
    mport, http_port = harness.free_port(), harness.free_port()
    common = ["--metrics-port", str(mport), "--http-port", str(http_port), "--log-format", "json",
              "--debug-step-latency-ms", str(STEP_MS), "--log-refused-per-second", "0",
              "--max-requests-per-client", "0"]
    server = harness.Server(args.binary, args.model, common + ["--max-batch", "1", "--max-queue", "1"])
    try:
        left_during_last_step(pb, pb_grpc, server, mport, http_port)
        refused_is_not_accepted(pb, pb_grpc, server, mport)
    finally:
        server.stop()
    if harness.FAILURES:
        print(server.log()[-6000:])
    failed = len(harness.FAILURES)
    # Both HTTP serving slots held by requests the engine runs side by side.
    server = harness.Server(args.binary, args.model, common + ["--max-batch", "2", "--http-threads", "2"])
    try:
        slot_wait(server, mport, http_port)
    finally:
        server.stop()
    if len(harness.FAILURES) > failed:
        print(server.log()[-6000:])
    print(f"accounting_test: {len(harness.FAILURES)} FAILED" if harness.FAILURES else "accounting_test: OK")
    return 1 if harness.FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
