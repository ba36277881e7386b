#!/usr/bin/env python3
"""Chaos suite: the real `glmserve serve` on loopback with fault injection (test flags, off by
default). Each scenario prints a row: sent / ok / errors by code / lost (must be 0: every request
gets a result or an explicit error) / recovery seconds, and asserts its own invariants.

  chaos_test.py --binary B --model DIR --proto-root proto [--scenario NAME ...]

Scenarios: throw, throw_stop_strings, stall, oom, faults_first_engine, sigterm_during_rebuild,
supervise_kill, disconnect, latency, crash_loop. Exit 77 = skipped."""
import concurrent.futures
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402  (tests/pyutil, on the path harness set)
from harness import check, Tally  # noqa: E402
import grpc  # noqa: E402

PROMPT = [5, 17, 42, 99, 7, 3, 64, 12]
pb = pb_grpc = None


def req(i, n=12, rid=None, exact=False):
    return pb.InferRequest(input_ids=[(x + i) % 200 + 1 for x in PROMPT], max_new_tokens=n,
                           min_new_tokens=n if exact else 0, request_id=rid or "")


def unary(stub, i, n=12, timeout=60, exact=False):
    return lambda: stub.Infer(req(i, n, exact=exact), timeout=timeout)


def stream(stub, i, n=12, timeout=60, exact=False):
    def go():
        for _ in stub.InferStream(req(i, n, exact=exact), timeout=timeout):
            pass
    return go


def fire(calls, tally, workers, safety_s=90):
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda fn: harness.run_call(fn, tally, safety_s), calls))


def common_after(name, server, tally, metrics_port=None, want_restarts=None):
    """Invariants every scenario shares: nothing lost, the server still serves a request."""
    check(tally.lost == 0, f"{name}: no request lost ({tally.lost})")
    check(tally.sent == tally.ok + sum(tally.errors.values()) + tally.lost, f"{name}: every request accounted for")
    check(harness.wait_health(server.port, 1, 60), f"{name}: health SERVING again")
    ch = harness.channel(server.port)
    try:
        r = pb_grpc.InferenceStub(ch).Infer(req(0, 4), timeout=60)
        check(len(r.output_ids) == 4, f"{name}: a request after the chaos succeeds")
    except grpc.RpcError as e:
        check(False, f"{name}: a request after the chaos succeeds ({e.code().name}: {e.details()})")
    ch.close()
    if metrics_port and want_restarts is not None:
        s, _ = harness.scrape(metrics_port)
        got = harness.metric(s, "glmserve_engine_restarts_total")
        check(got >= want_restarts, f"{name}: glmserve_engine_restarts_total={got} >= {want_restarts}")


def scenario_throw(args):
    t = Tally("engine throws mid-batch")
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--debug-throw-on-step", "25",
                            "--debug-step-latency-ms", "5", "--max-batch", "8", "--metrics-port", str(mport),
                            "--restart-backoff-ms", "200"])
    try:
        hw = harness.HealthWatcher(server.port)
        ch = harness.channel(server.port, retry=True)
        stub = pb_grpc.InferenceStub(ch)
        calls = [unary(stub, i, 16) if i % 2 else stream(stub, i, 16) for i in range(32)]
        fire(calls, t, 16)
        time.sleep(0.3)
        hw.close()
        t.recovery_s = max(hw.recoveries) if hw.recoveries else None
        check(hw.saw_down and t.recovery_s is not None, "throw: health went NOT_SERVING and back")
        check(set(t.errors) <= {"UNAVAILABLE"} and t.errors["UNAVAILABLE"] <= 16,
              f"throw: only streams that already streamed fail (UNAVAILABLE); unary calls are requeued: {dict(t.errors)}")
        common_after("throw", server, t, mport, want_restarts=1)
        ev = [e for e in server.events() if e.get("event") == "engine_fault"]
        check(len(ev) >= 1 and "injected exception" in ev[0]["fields"]["reason"], "throw: engine_fault logged with the reason")
        ch.close()
    finally:
        server.stop()
    return t


def scenario_throw_stop_strings(args):
    # Unary calls with stop strings decode their text step by step (to stop early): rerun after the
    # fault on the new engine, their text must start over, so each answer equals the same request
    # run again once the server is healthy (greedy, no fault), ids and text alike.
    t = Tally("engine throws under unary calls with stop strings")
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--debug-throw-on-step", "20",
                            "--debug-step-latency-ms", "5", "--max-batch", "8", "--metrics-port", str(mport),
                            "--restart-backoff-ms", "200"])

    def with_stop(i):
        r = req(i, 24, exact=True)
        r.stop.append("\x01never")  # never in the tiny model's text: the length ends each one
        return r

    try:
        ch = harness.channel(server.port, retry=True)
        stub = pb_grpc.InferenceStub(ch)
        answers = {}

        def call(i):
            def go():
                answers[i] = stub.Infer(with_stop(i), timeout=60)
            return go

        fire([call(i) for i in range(12)], t, 12)
        check(t.ok == t.sent == 12, f"throw_stop_strings: every unary call with stop strings was rerun and "
              f"answered ({t.ok}/{t.sent}, {dict(t.errors)})")
        common_after("throw_stop_strings", server, t, mport, want_restarts=1)
        for i, got in sorted(answers.items()):
            again = stub.Infer(with_stop(i), timeout=60)
            check(list(got.output_ids) == list(again.output_ids) and got.text == again.text,
                  f"throw_stop_strings: request {i} after the rerun equals a run without a fault "
                  f"({len(got.text)} / {len(again.text)} characters)")
        ch.close()
    finally:
        server.stop()
    return t


def scenario_stall(args):
    t = Tally("engine stalls past the watchdog")
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--debug-stall-on-step", "20", "--debug-stall-ms", "5000",
                            "--stall-timeout-ms", "1000", "--debug-step-latency-ms", "5", "--max-batch", "8",
                            "--metrics-port", str(mport), "--restart-backoff-ms", "200"])
    try:
        hw = harness.HealthWatcher(server.port)
        ch = harness.channel(server.port, retry=True)
        stub = pb_grpc.InferenceStub(ch)
        calls = [unary(stub, i, 16) if i % 2 else stream(stub, i, 16) for i in range(24)]
        fire(calls, t, 12)
        time.sleep(0.3)
        hw.close()
        t.recovery_s = max(hw.recoveries) if hw.recoveries else None
        check(hw.saw_down and t.recovery_s is not None, "stall: health went NOT_SERVING and back")
        check(set(t.errors) <= {"UNAVAILABLE"}, f"stall: only UNAVAILABLE errors: {dict(t.errors)}")
        common_after("stall", server, t, mport, want_restarts=1)
        ev = [e for e in server.events() if e.get("event") == "engine_fault"]
        check(len(ev) >= 1 and "stalled" in ev[0]["fields"]["reason"], "stall: engine_fault names the stall")
        ch.close()
    finally:
        server.stop()
    return t


def scenario_oom(args):
    t = Tally("OOM storm")
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--debug-inject-oom-above", "2", "--max-batch", "16",
                            "--debug-step-latency-ms", "2", "--metrics-port", str(mport)])
    try:
        ch = harness.channel(server.port, retry=True)
        stub = pb_grpc.InferenceStub(ch)
        fire([unary(stub, i, 10) for i in range(48)], t, 48)
        s, _ = harness.scrape(mport)
        ooms = harness.metric(s, "glmserve_oom_events_total")
        check(ooms > 0, f"oom: glmserve_oom_events_total={ooms} > 0")
        check(harness.metric(s, "glmserve_batch_limit") <= 4, "oom: batch limit shrank (AIMD)")
        check(harness.metric(s, "glmserve_engine_restarts_total") == 0, "oom: an OOM is not an engine fault (no restart)")
        check(t.ok == t.sent, f"oom: every request succeeded despite the storm ({t.ok}/{t.sent})")
        common_after("oom", server, t)
        ch.close()
    finally:
        server.stop()
    return t


def scenario_faults_first_engine(args):
    # Test faults hit the first engine only (--debug-faults-persist off): the executor's injected
    # OOM too. Once the injected throw has rebuilt the engine, batches above the OOM threshold run.
    t = Tally("injected OOM and throw, first engine only")
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--debug-inject-oom-above", "2", "--debug-throw-on-step", "30",
                            "--debug-step-latency-ms", "2", "--max-batch", "8", "--metrics-port", str(mport),
                            "--restart-backoff-ms", "200"])
    try:
        ch = harness.channel(server.port, retry=True)
        stub = pb_grpc.InferenceStub(ch)
        fire([unary(stub, i, 12) for i in range(24)], t, 8)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            s, _ = harness.scrape(mport)
            if harness.metric(s, "glmserve_engine_restarts_total") >= 1:
                break
            time.sleep(0.2)
        check(harness.metric(s, "glmserve_engine_restarts_total") >= 1, "faults_first_engine: the throw rebuilt it")
        check(harness.wait_health(server.port, 1, 60), "faults_first_engine: SERVING after the rebuild")
        ooms_before = harness.metric(s, "glmserve_oom_events_total")
        check(ooms_before > 0, f"faults_first_engine: the first engine ran out of memory ({ooms_before})")
        fire([unary(stub, 100 + i, 24) for i in range(16)], t, 8)
        s, _ = harness.scrape(mport)
        check(harness.metric(s, "glmserve_oom_events_total") == ooms_before,
              f"faults_first_engine: no injected OOM on the rebuilt engine "
              f"({harness.metric(s, 'glmserve_oom_events_total')} events, {ooms_before} before)")
        check(harness.metric(s, "glmserve_batch_limit") == 8, "faults_first_engine: the rebuilt engine's limit is whole")
        check(t.ok == t.sent, f"faults_first_engine: every request succeeded ({t.ok}/{t.sent}, {dict(t.errors)})")
        common_after("faults_first_engine", server, t)
        ch.close()
    finally:
        server.stop()
    return t


def scenario_sigterm_during_rebuild(args):
    # SIGTERM while the engine's model loads again after a fault (8 s a load here): the request it
    # owes is answered UNAVAILABLE and the process exits within the drain timeout plus its grace,
    # not after the load (minutes for a real checkpoint, past Kubernetes' grace period).
    t = Tally("SIGTERM during an engine rebuild")
    server = harness.Server(args.binary, args.model, ["--debug-throw-on-step", "6", "--debug-load-delay-ms", "8000",
                            "--restart-backoff-ms", "100", "--debug-step-latency-ms", "20",
                            "--drain-timeout-ms", "1000", "--shutdown-grace-ms", "1000"], start_timeout=60)
    try:
        ch = harness.channel(server.port)
        stub = pb_grpc.InferenceStub(ch)
        result = {}

        def owed():
            try:
                stub.Infer(req(1, 40, exact=True), timeout=60)
                result["code"] = "OK"
            except grpc.RpcError as e:
                result["code"], result["details"] = e.code().name, e.details()
            result["at"] = time.monotonic()

        caller = threading.Thread(target=owed)
        caller.start()
        check(harness.wait_health(server.port, 2, 20), "sigterm_during_rebuild: the fault took health down")
        time.sleep(0.5)  # the rebuild's load has begun
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            rc = server.proc.wait(30)
        except Exception:
            rc = None
        exited = time.monotonic() - signalled
        caller.join(30)
        answered = result.get("at", float("inf")) - signalled
        t.record(result.get("code", "LOST"))
        check(result.get("code") == "UNAVAILABLE" and "engine restart" in result.get("details", ""),
              f"sigterm_during_rebuild: the owed request is answered UNAVAILABLE naming the restart ({result})")
        check(answered < 4, f"sigterm_during_rebuild: answered {answered:.1f} s after SIGTERM (drain 1 s; the load had ~7 s left)")
        check(rc == 0 and exited < 5, f"sigterm_during_rebuild: exit {rc} {exited:.1f} s after SIGTERM, not after the load")
        check("exiting without waiting for it" in server.log(), "sigterm_during_rebuild: the log says the load was left")
        ch.close()
    finally:
        server.stop()
    return t


def scenario_supervise_kill(args):
    # The new child loads for 1.5 s, listening and refusing meanwhile: the calls queued while no
    # child listened reach it when the channel reconnects (~1 s) and must be retried by the retry
    # policy (trailers-only refusals, the server's retry pushback), not failed.
    t = Tally("SIGKILL child under --supervise (1.5 s load), 32 clients with retry policy")
    port = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--supervise", "--restart-backoff-ms", "200",
                            "--debug-step-latency-ms", "5", "--debug-load-delay-ms", "1500",
                            "--log-format", "json"], port=port)
    try:
        child = [e for e in server.events() if e.get("event") == "child_started"][-1]["fields"]["child_pid"]
        hw = harness.HealthWatcher(port)
        stop_at = time.monotonic() + 6
        ch = harness.channel(port, retry=True)
        stub = pb_grpc.InferenceStub(ch)

        def client(i):
            n = 0
            while time.monotonic() < stop_at:
                fn = unary(stub, i * 100 + n, 8, timeout=30) if (i + n) % 2 else stream(stub, i * 100 + n, 8, timeout=30)
                harness.run_call(fn, t, 60)
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for th in threads:
            th.start()
        time.sleep(1.5)
        os.kill(child, signal.SIGKILL)
        for th in threads:
            th.join(90)
        hw.close()
        t.recovery_s = max(hw.recoveries) if hw.recoveries else None
        check(hw.saw_down and t.recovery_s is not None, "supervise_kill: health went down and back")
        starts = [e for e in server.events() if e.get("event") == "child_started"]
        check(len(starts) == 2, f"supervise_kill: the supervisor restarted the child once ({len(starts)} starts)")
        check(t.errors.get("UNAVAILABLE", 0) <= 32, f"supervise_kill: at most the in-flight streams failed: {dict(t.errors)}")
        common_after("supervise_kill", server, t)
        ch.close()
        rc = server.stop(30)
        check(rc == 0, f"supervise_kill: SIGTERM to the supervisor drains the child and exits 0 (rc={rc})")
    finally:
        server.kill()
    return t


def scenario_supervise_group_signal(args):
    # Ctrl-C and systemd's control-group kill signal the supervisor and its child together, and the
    # supervisor forwards its copy: the child gets the signal twice within milliseconds. Before, it
    # took the copy as a second request and exited at once, failing every in-flight call. Also the
    # spelling `--supervise true`, which the child once received as a stray `true`.
    t = Tally("--supervise true, SIGTERM / SIGINT to the process group with 12 streams in flight")
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = harness.Server(args.binary, args.model, ["--supervise", "true", "--debug-step-latency-ms", "10",
                                "--log-format", "json"], port=harness.free_port(), new_session=True)
        try:
            ch = harness.channel(server.port)
            stub = pb_grpc.InferenceStub(ch)
            calls = [stream(stub, i, 60, timeout=60, exact=True) for i in range(12)]
            with concurrent.futures.ThreadPoolExecutor(12) as ex:
                futures = [ex.submit(harness.run_call, fn, t, 90) for fn in calls]
                time.sleep(0.3)  # all twelve are generating (60 steps x 10 ms)
                os.killpg(server.proc.pid, sig)
                # The kernel merges a copy that arrives while the first is still pending, so the
                # supervisor's forward is not always a second delivery: once the child has taken the
                # first (it logs that it drains), one more copy of the signal to it, within 1 s.
                end = time.monotonic() + 0.8
                child = None
                while time.monotonic() < end:
                    events = server.events()
                    started = [e for e in events if e.get("event") == "child_started"]
                    if started and any("draining (send again" in e.get("msg", "") for e in events):
                        child = started[-1].get("fields", {}).get("child_pid")
                        break
                    time.sleep(0.01)
                check(child is not None, "supervise_group_signal: the child logged that it drains within 0.8 s")
                if child is not None:
                    os.kill(int(child), sig)
                for f in futures:
                    f.result()
            rc = server.proc.wait(30)
            check(rc == 0, f"supervise_group_signal: signal {int(sig)} to the group drains and exits 0 (rc={rc})")
            copies = [e for e in server.events() if "taken as the same request" in e.get("msg", "")]
            check(len(copies) >= 1, f"supervise_group_signal: the child took the forwarded copy as the same request")
            ch.close()
        finally:
            server.kill()
    check(t.ok == t.sent == 24, f"supervise_group_signal: every in-flight stream finished ({t.ok} of {t.sent}, "
          f"errors {dict(t.errors)})")
    check(t.lost == 0, f"supervise_group_signal: no request lost ({t.lost})")
    return t


def scenario_disconnect(args):
    t = Tally("100 streams, every tenth disconnects mid-stream")
    mport = harness.free_port()
    server = harness.Server(args.binary, args.model, ["--debug-step-latency-ms", "10", "--max-batch", "32",
                            "--metrics-port", str(mport)])
    try:
        def client(i):
            ch = harness.channel(server.port)
            stub = pb_grpc.InferenceStub(ch)
            if i % 10 == 0:
                # Disconnects after the first streamed message: an explicit cancel, or the client
                # going away (channel closed). Recorded as CANCELLED once the call is torn down.
                try:
                    call = stub.InferStream(req(i, 48), timeout=60)
                    next(call)
                    if i % 20 == 0:
                        call.cancel()
                    else:
                        ch.close()
                    t.record("CANCELLED")
                except grpc.RpcError as e:
                    t.record(e.code().name)
            else:
                harness.run_call(stream(stub, i, 24), t, 90)
            ch.close()

        with concurrent.futures.ThreadPoolExecutor(100) as ex:
            list(ex.map(client, range(100)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s, _ = harness.scrape(mport)
            if harness.metric(s, "glmserve_kv_cache_usage_ratio") == 0 and harness.metric(s, "glmserve_queue_depth") == 0:
                break
            time.sleep(0.3)
        check(harness.metric(s, "glmserve_kv_cache_usage_ratio") == 0, "disconnect: every KV block freed")
        check(harness.metric(s, "glmserve_queue_depth") == 0, "disconnect: nothing left queued")
        check(t.ok == 90 and t.errors.get("CANCELLED", 0) == 10, f"disconnect: 90 ok, 10 cancelled: ok={t.ok} {dict(t.errors)}")
        common_after("disconnect", server, t)
    finally:
        server.stop()
    return t


def scenario_latency(args):
    t = Tally("step latency 150 ms with deadlines")
    server = harness.Server(args.binary, args.model, ["--debug-step-latency-ms", "150", "--max-batch", "16"])
    try:
        ch = harness.channel(server.port)
        stub = pb_grpc.InferenceStub(ch)
        # ~150 ms per token: 4 tokens fit 2.5 s, 30 tokens do not fit 1.5 s.
        calls = []
        for i in range(16):
            if i % 2:
                calls.append(unary(stub, i, 4, timeout=3.0))
            else:
                calls.append(stream(stub, i, 30, timeout=1.5, exact=True) if i % 4
                             else unary(stub, i, 30, timeout=1.5, exact=True))
        fire(calls, t, 16, safety_s=30)
        check(t.ok == 8 and t.errors.get("DEADLINE_EXCEEDED", 0) == 8,
              f"latency: short requests finish, long ones end DEADLINE_EXCEEDED: ok={t.ok} {dict(t.errors)}")
        common_after("latency", server, t)
        ch.close()
    finally:
        server.stop()
    return t


def scenario_crash_loop(args):
    t = Tally("crash loop: every engine throws, --max-restarts 3")
    mport, hport = harness.free_port(), harness.free_port()
    server = harness.Server(args.binary, args.model, ["--debug-throw-on-step", "3", "--debug-faults-persist", "true",
                            "--max-restarts", "3", "--restart-backoff-ms", "50", "--metrics-port", str(mport),
                            "--http-port", str(hport)])
    try:
        ch = harness.channel(server.port)
        stub = pb_grpc.InferenceStub(ch)
        end = time.monotonic() + 20
        gave_up = False
        while time.monotonic() < end and not gave_up:
            harness.run_call(unary(stub, t.sent, 8, timeout=10), t, 30)
            gave_up = any(e.get("event") == "engine_crash_loop" for e in server.events())
            time.sleep(0.05)
        check(gave_up, "crash_loop: engine_crash_loop logged after 3 faults")
        time.sleep(0.3)
        check(harness.health(server.port) == 2, "crash_loop: health stays NOT_SERVING")
        try:
            stub.Infer(req(0, 4), timeout=10)
            check(False, "crash_loop: requests refused")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAVAILABLE and "crash loop" in e.details(),
                  f"crash_loop: UNAVAILABLE saying why: {e.details()}")
        # The HTTP API says the same (it said "model is loading or restarting").
        body = json.dumps({"model": "m", "prompt": [1, 2], "max_tokens": 2}).encode()
        http_req = urllib.request.Request(f"http://127.0.0.1:{hport}/v1/completions", data=body,
                                          headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(http_req, timeout=10)
            check(False, "crash_loop: HTTP requests refused")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            check(e.code == 503 and "crash loop" in text, f"crash_loop: HTTP 503 saying why: {e.code} {text[:200]}")
        s, _ = harness.scrape(mport)
        check(harness.metric(s, "glmserve_engine_restarts_total") == 2, "crash_loop: 2 rebuilds, then no more")
        check(t.lost == 0, f"crash_loop: no request lost ({t.lost})")
        ch.close()
    finally:
        server.stop()
    return t


def scenario_supervise_crash_loop(args):
    # Under --supervise an engine crash loop exits the child 1, so the supervisor tries a fresh
    # process (before: the child stayed up NOT_SERVING and the supervisor never acted). Every engine
    # of every child throws on its first real step: each child gives up after 2 faults, the
    # supervisor restarts it once and then gives up itself (--max-restarts 2 serves both).
    t = Tally("--supervise, every engine throws: the child's crash loop restarts the process")
    server = harness.Server(args.binary, args.model, ["--supervise", "--debug-throw-on-step", "3",
                            "--debug-faults-persist", "true", "--max-restarts", "2", "--restart-backoff-ms", "100",
                            "--log-format", "json"], port=harness.free_port())
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and server.proc.poll() is None:
            ch = harness.channel(server.port)
            harness.run_call(unary(pb_grpc.InferenceStub(ch), t.sent, 8, timeout=5), t, 30)
            ch.close()
            time.sleep(0.1)
        rc = server.proc.wait(30)
        events = server.events()
        children = [e for e in events if e.get("event") == "child_started"]
        exits = [e for e in events if e.get("event") == "child_exited"]
        check(len(children) == 2, f"supervise_crash_loop: the supervisor started a second child ({len(children)})")
        check(len(exits) == 2 and all(e.get("level") == "warn" and "exit code 1" in e.get("msg", "") for e in exits),
              f"supervise_crash_loop: each child exited 1 after its crash loop, logged at warn "
              f"({[(e.get('level'), e.get('msg')) for e in exits]})")
        check(any(e.get("event") == "supervisor_crash_loop" for e in events),
              "supervise_crash_loop: the supervisor gave up after --max-restarts")
        check(rc == 1, f"supervise_crash_loop: the supervisor exits 1 (rc={rc})")
        check(t.lost == 0 and t.ok == 0, f"supervise_crash_loop: every call answered, none served ({t.ok} ok, "
              f"{dict(t.errors)}, {t.lost} lost)")
    finally:
        server.kill()
    return t


SCENARIOS = {
    "throw": scenario_throw,
    "throw_stop_strings": scenario_throw_stop_strings,
    "stall": scenario_stall,
    "oom": scenario_oom,
    "faults_first_engine": scenario_faults_first_engine,
    "sigterm_during_rebuild": scenario_sigterm_during_rebuild,
    "supervise_kill": scenario_supervise_kill,
    "supervise_group_signal": scenario_supervise_group_signal,
    "disconnect": scenario_disconnect,
    "latency": scenario_latency,
    "crash_loop": scenario_crash_loop,
    "supervise_crash_loop": scenario_supervise_crash_loop,
}


def main():
    global pb, pb_grpc
    args = server_test_args(lambda ap: ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS)))
    if args is None:
        return 77
    pb, pb_grpc = harness.stubs(args.proto_root)
    rows = []
    for name in args.scenario or list(SCENARIOS):
        start = time.monotonic()
        tally = SCENARIOS[name](args)
        print(f"-- {name}: {time.monotonic() - start:.1f} s", flush=True)
        rows.append(tally.row())
    print("\n| scenario | sent | ok | errors by code | lost | recovery s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    if harness.FAILURES:
        print(f"\n{len(harness.FAILURES)} check(s) failed:\n  " + "\n  ".join(harness.FAILURES))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
