#!/usr/bin/env python3
"""--metrics-port on the real `glmserve serve` binary (Python stdlib only, loopback):
- a metrics port already in use: the server exits 2 before loading the model, with one
  error-level log line naming `--metrics-port`, the port and the reason (JSON and text formats);
- `--host ::` (every interface; Debian's civetweb, the exporter before, refused "[::]:P" on every
  port): GET /metrics answers on 127.0.0.1;
- `--host 0.0.0.0` and `--host '*'` likewise, and the HTTP API's /health (with '*' it was bound on
  [::1] only).
Exit 77 = skipped (no model)."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from ports import busy_port, free_port  # noqa: E402
from checks import FAILURES, check  # noqa: E402


def run_to_exit(cmd, timeout=60):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                           timeout=timeout)
        return p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:
        return None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")


def in_use(binary, model):
    sock, port = busy_port()
    try:
        rc, err = run_to_exit([binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                               "--metrics-port", str(port), "--log-format", "json"])
        check(rc == 2, f"metrics port {port} in use: exit 2, a configuration error (got {rc})")
        events = []
        for line in err.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        errors = [e for e in events if e.get("level") == "error" and f"--metrics-port {port}" in e.get("msg", "")]
        check(len(errors) == 1, f"one error-level line naming '--metrics-port {port}'")
        if errors:
            e = errors[0]
            check(e.get("event") == "metrics_bind_failed", "event metrics_bind_failed")
            check(e.get("fields", {}).get("port") == port and e.get("fields", {}).get("flag") == "--metrics-port",
                  "fields name the flag and the port")
            check("in use" in e["msg"].lower(), f"the reason is given: {e['msg']}")
        check(not any("serving on" in e.get("msg", "") for e in events), "exits before serving")
        check(not any("null context" in e.get("msg", "") and e.get("level") != "error" for e in events),
              "civetweb's exception is not logged at info")
        if FAILURES:
            print(err)

        rc, err = run_to_exit([binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                               "--metrics-port", str(port), "--log-format", "text"])
        check(rc == 2, f"text format: exit 2 (got {rc})")
        check(re.search(rf"^glmserve: --metrics-port {port}: cannot bind 127\.0\.0\.1:{port}: ", err, re.M) is not None,
              "text format: 'glmserve: --metrics-port P: cannot bind 127.0.0.1:P: ...'")
    finally:
        sock.close()


def wildcard(binary, model, host):
    mport, hport = free_port(), free_port()
    proc = subprocess.Popen([binary, "serve", "--model", model, "--host", host, "--port", "0",
                             "--metrics-port", str(mport), "--http-port", str(hport), "--log-format", "json"],
                            stderr=subprocess.PIPE, text=True, errors="replace")
    lines = []
    serving = False
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if '"event":"serving"' in line.replace(" ", ""):
                serving = True
                break
        check(serving, f"--host {host} --metrics-port {mport}: the server starts")
        if serving:
            text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
            check("glmserve_build_info" in text, f"--host {host}: GET http://127.0.0.1:{mport}/metrics answers")
            # The OpenAI API on every interface too: with "*" httplib once bound [::1] only.
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{hport}/health", timeout=10).status
            except OSError as e:
                health = repr(e)
            check(health == 200, f"--host {host}: GET http://127.0.0.1:{hport}/health answers ({health})")
        else:
            print("".join(lines))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(10)
            check(rc == 0, f"--host {host}: drains on SIGTERM (exit {rc})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.model, "config.json")):
        print(f"SKIP: no model at {args.model}")
        return 77
    in_use(args.binary, args.model)
    wildcard(args.binary, args.model, "::")
    wildcard(args.binary, args.model, "*")
    wildcard(args.binary, args.model, "0.0.0.0")
    print("FAILED: " + "; ".join(FAILURES) if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
