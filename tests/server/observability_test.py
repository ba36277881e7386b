#!/usr/bin/env python3
"""Observability of the real `glmserve serve` binary on loopback:
- Prometheus: GET /metrics on --metrics-port lists every contracted name, and the counters and
  histograms move after requests;
- structured logs (--log-format json): one JSON object per line with time/level/request_id/event/
  msg/fields; accept, first token and finish logged per request; a too-long prompt warns with its
  request id; --log-format text keeps 'glmserve: serving on HOST:PORT';
- trace id: request_id, else x-request-id, else the W3C traceparent trace-id, returned in the
  trailing metadata (glmserve-request-id) and used in the logs;
- `glmserve doctor`: OK on the bundled model (GPU checks WARN here), FAIL (exit 1) on a broken dir.
Exit 77 = skipped."""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chaos"))
import harness  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402  (tests/pyutil, on the path harness set)
from harness import check  # noqa: E402
import grpc  # noqa: E402

NAMES = ["glmserve_requests_total", "glmserve_request_latency_seconds", "glmserve_time_to_first_token_seconds",
         "glmserve_time_per_output_token_seconds", "glmserve_prompt_tokens_total", "glmserve_requests_running",
         "glmserve_preemptions_total",
         "glmserve_queue_wait_seconds", "glmserve_queue_depth", "glmserve_batch_size", "glmserve_batch_limit",
         "glmserve_prefill_budget_tokens",
         "glmserve_oom_events_total", "glmserve_engine_restarts_total", "glmserve_kv_cache_usage_ratio",
         "glmserve_generated_tokens_total", "glmserve_prefix_cache_hit_tokens_total",
         "glmserve_prefix_cache_query_tokens_total", "glmserve_prefix_cache_usage_ratio", "glmserve_step_phase_seconds_total",
         "glmserve_device_seconds_total", "glmserve_build_info", "glmserve_serving", "glmserve_images_total",
         "glmserve_image_tokens_total", "glmserve_image_host_seconds"]


def main():
    args = server_test_args()
    if args is None:
        return 77
    pb, pb_grpc = harness.stubs(args.proto_root)
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--metrics-port", str(mport), "--log-format", "json",
                                                      "--debug-step-latency-ms", "2"])
    try:
        before, text = harness.scrape(mport)
        for name in NAMES:
            check(f"# TYPE {name} " in text, f"/metrics has {name}")
        check(harness.metric(before, "glmserve_build_info") == 1, "glmserve_build_info is 1")
        check(harness.metric(before, "glmserve_serving") == 1, "glmserve_serving is 1 once health is SERVING")
        check(harness.metric(before, "glmserve_batch_limit") > 0, "glmserve_batch_limit is the AIMD limit (> 0)")
        # Connections held open (a Prometheus HA pair keeping theirs alive, idle sockets) do not
        # hold other scrapes back: with a 2-thread listener, two made every other scrape wait 5 s.
        held = []
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", mport, timeout=5)
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            held.append(conn)
        idle = [socket.create_connection(("127.0.0.1", mport), timeout=5) for _ in range(4)]
        t0 = time.monotonic()
        try:
            harness.scrape(mport)
            scraped = time.monotonic() - t0
        except Exception as e:  # noqa: BLE001  (a timeout or refusal is the failure reported)
            scraped = float("inf")
            print(f"scrape failed: {e!r}")
        check(scraped < 1.0, f"/metrics answered in {scraped:.2f} s beside 2 kept-alive and 4 idle connections")
        for c in held + idle:
            c.close()
        # 24 connections (every listener thread, and 8 more waiting for one) trickling a request head
        # a byte every 0.3 s: a scrape takes the thread of one longest at it (past 1 s), instead of
        # waiting them out. With 17 or more, one eviction a connection left the scrape queued
        # behind the tricklers that took the freed threads, and every scrape timed out.
        trickling = [socket.create_connection(("127.0.0.1", mport), timeout=5) for _ in range(24)]
        stop = threading.Event()

        def trickle(sock):
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                if stop.wait(0.3):
                    return
                try:
                    sock.send(bytes([b]))
                except OSError:
                    return

        threads = [threading.Thread(target=trickle, args=(c,), daemon=True) for c in trickling]
        for t in threads:
            t.start()
        time.sleep(1.5)
        for attempt in range(2):
            t0 = time.monotonic()
            try:
                harness.scrape(mport)
                scraped = time.monotonic() - t0
            except Exception as e:  # noqa: BLE001
                scraped = float("inf")
                print(f"scrape failed: {e!r}")
            check(scraped < 1.0, f"/metrics answered in {scraped:.2f} s beside 24 trickling connections ({attempt})")
        stop.set()
        for c in trickling:
            c.close()

        stub = pb_grpc.InferenceStub(harness.channel(server.port))
        r, call = stub.Infer.with_call(pb.InferRequest(input_ids=[1, 2, 3, 4], max_new_tokens=6, request_id="obs-1"),
                                       timeout=60)
        trailing = dict(call.trailing_metadata())
        check(trailing.get("glmserve-request-id") == "obs-1", "client request_id returned in trailing metadata")
        for _ in stub.InferStream(pb.InferRequest(input_ids=[5, 6, 7], max_new_tokens=5), timeout=60,
                                  metadata=[("x-request-id", "xrid-42")]):
            pass
        trace = "0af7651916cd43dd8448eb211c80319c"
        _, call = stub.Infer.with_call(pb.InferRequest(input_ids=[8, 9], max_new_tokens=3), timeout=60,
                                       metadata=[("traceparent", f"00-{trace}-b7ad6b7169203331-01")])
        check(dict(call.trailing_metadata()).get("glmserve-request-id") == trace,
              "W3C traceparent trace-id becomes the request id")
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        try:
            stub.Infer(pb.InferRequest(input_ids=[1] * (info.max_context + 5), max_new_tokens=1, request_id="too-long"),
                       timeout=30)
            check(False, "too-long prompt refused")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"too-long prompt refused ({e.code().name})")

        try:  # prompt text: the length is known after tokenization
            stub.Infer(pb.InferRequest(prompt="hello world " * 3000, max_new_tokens=1, request_id="too-long-text"),
                       timeout=30)
        except grpc.RpcError:
            pass

        after, _ = harness.scrape(mport)
        check(harness.metric(after, "glmserve_requests_total", code="OK") == 3, "requests_total{code=OK} == 3")
        check(harness.metric(after, "glmserve_requests_total", code="INVALID_ARGUMENT") == 2,
              "requests_total{code=INVALID_ARGUMENT} == 2")
        check(harness.metric(after, "glmserve_generated_tokens_total") == 6 + 5 + 3, "generated_tokens_total == 14")
        check(harness.metric(after, "glmserve_prompt_tokens_total") == 4 + 3 + 2, "prompt_tokens_total == 9")
        for h in ["glmserve_request_latency_seconds", "glmserve_time_to_first_token_seconds", "glmserve_queue_wait_seconds",
                  "glmserve_time_per_output_token_seconds"]:
            check(harness.metric(after, h + "_count") == 3, f"{h}_count == 3")
        # 6, 5 and 3 tokens, each step at least --debug-step-latency-ms (2 ms) apart: a mean gap of >= 2 ms
        tpot_mean = harness.metric(after, "glmserve_time_per_output_token_seconds_sum") / 3
        check(0.002 <= tpot_mean < 1.0, f"time_per_output_token mean {tpot_mean:.4f} s >= the 2 ms a step")
        check(harness.metric(after, "glmserve_batch_size_count") > harness.metric(before, "glmserve_batch_size_count"),
              "glmserve_batch_size observed per step")

        # The step phases reach /metrics by polling. Each step sleeps --debug-step-latency-ms (2 ms) in
        # the executor's place; on a CPU nothing is device time.
        phase = lambda samples, p: harness.metric(samples, "glmserve_step_phase_seconds_total", phase=p)
        steps = 6 + 5 + 3  # at least one step a generated token
        for _ in range(100):
            after, _ = harness.scrape(mport)
            if phase(after, "executor_host") >= steps * 0.002:
                break
            time.sleep(0.05)
        check(phase(after, "executor_host") >= steps * 0.002,
              f"step_phase_seconds_total{{phase=executor_host}} >= {steps} x 2 ms ({phase(after, 'executor_host')})")
        check(phase(after, "device_wait") == 0, "step_phase_seconds_total{phase=device_wait} == 0 on a CPU")
        for state in ("busy", "idle"):
            check(harness.metric(after, "glmserve_device_seconds_total", state=state) == 0,
                  f"device_seconds_total{{state={state}}} == 0 on a CPU (nothing times the steps there)")
        check(phase(after, "schedule") > 0 and phase(after, "commit") > 0, "schedule and commit phases counted")

        events = server.events()
        check(len(events) > 0 and all({"time", "level", "request_id", "event", "msg", "fields"} <= set(e) for e in events),
              f"every stderr line is a JSON object with the fields ({len(events)} lines)")
        non_json = [l for l in server.log().splitlines() if l.strip() and not l.startswith("{")]
        check(not non_json, f"no non-JSON stderr lines in json mode: {non_json[:3]}")
        for rid in ["obs-1", "xrid-42", trace]:
            evs = [e["event"] for e in events if e["request_id"] == rid]
            check(["request_accepted", "first_token", "request_finished"] == [x for x in evs if x in
                  ("request_accepted", "first_token", "request_finished")], f"{rid}: accept, first token, finish: {evs}")
        acc = [e for e in events if e["request_id"] == "obs-1" and e["event"] == "request_accepted"][0]
        fin = [e for e in events if e["request_id"] == "obs-1" and e["event"] == "request_finished"][0]
        check(0 <= acc["fields"].get("host_ms", -1) < 60000,
              f"request_accepted says the host's time before the engine queue (host_ms): {acc['fields']}")
        check(fin["fields"]["finish"] and "total_ms" in fin["fields"] and "ttft_ms" in fin["fields"],
              f"finish carries timings and finish reason: {fin['fields']}")
        warn = [e for e in events if e["request_id"] == "too-long" and e["event"] == "prompt_too_long"]
        check(len(warn) == 1 and warn[0]["level"] == "warn" and warn[0]["fields"]["above_max_position_embeddings"]
              and warn[0]["fields"]["prompt_tokens"] == info.max_context + 5,
              f"too-long prompt logs a warning with its request id: {warn}")
        warn = [e for e in events if e["request_id"] == "too-long-text" and e["event"] == "prompt_too_long"]
        check(len(warn) == 1 and warn[0]["fields"]["prompt_tokens"] > info.max_context,
              f"too-long prompt text (tokenized) logs the warning too: {warn}")
        print("sample log line: " + json.dumps(fin))
    finally:
        check(server.stop() == 0, "SIGTERM drains and exits 0")

    # A KV pool of 4 blocks of 16 tokens: three streams of 8 + 30 tokens (3 blocks each) cannot all
    # hold theirs, so the scheduler preempts and they finish by recomputing.
    mport = harness.free_port()
    small = harness.Server(args.binary, args.model, ["--metrics-port", str(mport), "--kv-blocks", "4",
                                                     "--kv-block-size", "16", "--log-level", "warn",
                                                     "--debug-step-latency-ms", "10"])
    try:
        stub = pb_grpc.InferenceStub(harness.channel(small.port))
        futures = [stub.Infer.future(pb.InferRequest(input_ids=list(range(10 + i, 18 + i)), max_new_tokens=30),
                                     timeout=120) for i in range(3)]
        running_seen = 0  # the gauge while they run (>= 90 steps of 10 ms; polled every 250 ms)
        while not all(f.done() for f in futures):
            samples, _ = harness.scrape(mport)
            running_seen = max(running_seen, harness.metric(samples, "glmserve_requests_running"))
            time.sleep(0.05)
        check(all(len(f.result().output_ids) == 30 for f in futures), "3 requests through a 4-block KV pool finish")
        check(1 <= running_seen <= 3, f"glmserve_requests_running seen at {running_seen} while they ran")
        for _ in range(100):  # the engine's counters reach /metrics by polling
            samples, _ = harness.scrape(mport)
            if (harness.metric(samples, "glmserve_preemptions_total") > 0
                    and harness.metric(samples, "glmserve_requests_running") == 0):
                break
            time.sleep(0.05)
        check(harness.metric(samples, "glmserve_preemptions_total") > 0,
              f"glmserve_preemptions_total counts them ({harness.metric(samples, 'glmserve_preemptions_total')})")
        check(harness.metric(samples, "glmserve_requests_running") == 0, "glmserve_requests_running 0 when idle")
    finally:
        check(small.stop() == 0, "the small-pool server drains and exits 0")

    # An InferStream client that never reads: its messages queue behind HTTP/2 flow control, the
    # engine finishes, the deadline passes before the status goes out. It is counted and logged as
    # what the client got (DEADLINE_EXCEEDED), not OK; a client that reads is counted OK at once.
    uport = harness.free_port()
    unread = harness.Server(args.binary, args.model, ["--metrics-port", str(uport), "--log-format", "json"])
    try:
        ustub = pb_grpc.InferenceStub(grpc.insecure_channel(f"127.0.0.1:{unread.port}",
                                                            options=[("grpc.http2.bdp_probe", 0)]))
        long_id = "unread-" + "x" * 120  # in every message: 1,200 of them pass the 64 KiB window
        pending = ustub.InferStream(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=1200, min_new_tokens=1200,
                                                    request_id=long_id), timeout=8)
        time.sleep(9)
        try:
            sum(1 for _ in pending)
            got = "OK"
        except grpc.RpcError as e:
            got = e.code().name
        check(got == "DEADLINE_EXCEEDED", f"the unread stream ended {got} for its client")
        for _ in ustub.InferStream(pb.InferRequest(input_ids=[1, 2, 3], max_new_tokens=4), timeout=60):
            pass
        counted = {}
        for _ in range(40):  # the unread call is counted when it ends, just after its client saw it
            counted, _ = harness.scrape(uport)
            if harness.metric(counted, "glmserve_requests_total", code="DEADLINE_EXCEEDED") >= 1:
                break
            time.sleep(0.05)
        check(harness.metric(counted, "glmserve_requests_total", code="DEADLINE_EXCEEDED") == 1 and
              harness.metric(counted, "glmserve_requests_total", code="OK") == 1,
              "the unread stream counted DEADLINE_EXCEEDED, the read one OK: "
              f"{[(k[0], dict(k[1]), v) for k, v in counted.items() if k[0] == 'glmserve_requests_total']}")
        fin = [e for e in unread.events() if e["request_id"] == long_id and e["event"] == "request_finished"]
        check(len(fin) == 1 and fin[0]["fields"]["status"] == "DEADLINE_EXCEEDED" and
              fin[0]["fields"]["finish"] == "deadline", f"its request_finished line says so: {fin}")
    finally:
        check(unread.stop() == 0, "the unread-stream server drains and exits 0")

    # While the model loads, /metrics already answers (the alert on `up` alone saw such a pod as
    # serving): glmserve_serving says 0 until health is SERVING, then 1.
    lport = harness.free_port()
    loading = harness.Server(args.binary, args.model, ["--metrics-port", str(lport), "--debug-load-delay-ms", "6000"],
                             wait=False)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                during, _ = harness.scrape(lport)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        check(harness.metric(during, "glmserve_serving") == 0, "glmserve_serving is 0 while the model loads")
        loading.wait_serving(120)
        after, _ = harness.scrape(lport)
        check(harness.metric(after, "glmserve_serving") == 1, "glmserve_serving is 1 once loaded")
    finally:
        check(loading.stop() == 0, "the slow-loading server drains and exits 0")

    text_server = harness.Server(args.binary, args.model, ["--log-format", "text", "--log-level", "warn"])
    check(text_server.port is not None, "--log-format text --log-level warn still logs 'serving on'")
    text_server.stop()

    out = subprocess.run([args.binary, "doctor", "--model", args.model, "--port", str(harness.free_port())],
                         capture_output=True, text=True, timeout=120)
    print(out.stdout)
    check(out.returncode == 0, f"doctor on the bundled model exits 0 (rc={out.returncode})")
    out = subprocess.run([args.binary, "doctor", "--model", args.model, "--json"], capture_output=True, text=True,
                         timeout=120)
    j = json.loads(out.stdout)
    check(any(c["name"] == "model" and c["status"] == "OK" for c in j["checks"]), "doctor --json: model OK")
    # The weights are the checkpoint's tensors: a 30 GB file of something else beside them (an
    # optimizer state) was counted, and the RAM check failed for it.
    extra = tempfile.mkdtemp(prefix="glmserve_doctor_")
    for name in os.listdir(args.model):
        if os.path.isfile(os.path.join(args.model, name)):
            shutil.copy(os.path.join(args.model, name), extra)
    with open(os.path.join(extra, "optimizer.bin"), "wb") as f:
        f.truncate(30 << 30)  # sparse
    out = subprocess.run([args.binary, "doctor", "--model", extra, "--json"], capture_output=True, text=True,
                         timeout=120)
    j = json.loads(out.stdout)
    model_line = next((c["detail"] for c in j["checks"] if c["name"] == "model"), "")
    ram = next((c["status"] for c in j["checks"] if c["name"] == "ram"), "")
    check("0.00 GiB of weights" in model_line and ram == "OK",
          f"doctor counts the checkpoint's tensors, not a 30 GB file beside them ({model_line!r}, ram {ram})")
    # A symlink loop beside the checkpoint (a file doctor checks for permissions) ended doctor with
    # an uncaught filesystem_error (abort, exit 134).
    os.remove(os.path.join(extra, "optimizer.bin"))
    os.symlink("README", os.path.join(extra, "README"))
    out = subprocess.run([args.binary, "doctor", "--model", extra, "--json"], capture_output=True, text=True,
                         timeout=120)
    check(out.returncode == 0 and out.stdout.startswith("{"),
          f"doctor with a symlink loop in the model dir: a report, exit 0 (rc={out.returncode}, {out.stderr[-200:]!r})")
    shutil.rmtree(extra, ignore_errors=True)
    broken = tempfile.mkdtemp(prefix="glmserve_doctor_")
    shutil.copy(os.path.join(args.model, "config.json"), broken)
    out = subprocess.run([args.binary, "doctor", "--model", broken, "--json"], capture_output=True, text=True, timeout=120)
    j = json.loads(out.stdout)
    check(out.returncode == 1 and any(c["name"] == "model" and c["status"] == "FAIL" for c in j["checks"]),
          f"doctor: a model dir without weights FAILs with exit 1 (rc={out.returncode})")
    shutil.rmtree(broken, ignore_errors=True)
    # Ports serve could not bind FAIL as serve would: a host that does not resolve, one port twice.
    p = harness.free_port()
    for extra, name in ((["--host", "no-such-host.invalid", "--port", str(p)], "port"),
                        (["--port", str(p), "--metrics-port", str(p)], "metrics_port"),
                        (["--port", str(p), "--http-port", str(p)], "http_port")):
        out = subprocess.run([args.binary, "doctor", "--json"] + extra, capture_output=True, text=True, timeout=120)
        j = json.loads(out.stdout)
        check(out.returncode == 1 and any(c["name"] == name and c["status"] == "FAIL" for c in j["checks"]),
              f"doctor {' '.join(extra)}: {name} FAILs, exit 1 (rc={out.returncode})")
    # The HTTP API's port is checked like the others: held by a socket here, free once closed.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        hport = held.getsockname()[1]
        out = subprocess.run([args.binary, "doctor", "--json", "--port", "0", "--http-port", str(hport)],
                             capture_output=True, text=True, timeout=120)
        j = json.loads(out.stdout)
        check(out.returncode == 1 and any(c["name"] == "http_port" and c["status"] == "FAIL" and
                                          "--http-port" in c["fix"] for c in j["checks"]),
              f"doctor --http-port {hport} held: http_port FAILs naming the flag (rc={out.returncode})")

    if harness.FAILURES:
        print(f"{len(harness.FAILURES)} check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
