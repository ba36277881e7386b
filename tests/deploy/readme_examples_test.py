#!/usr/bin/env python3
"""Runs every command of README.md's "Two commands" examples against the real server, as a newcomer
would paste them into a shell at the repository root after `scripts/serve-demo.sh`.

The server is `glmserve serve --model models/glm4-tiny --host 127.0.0.1` like serve-demo.sh but on
a free port (--port 0), handed to scripts/glmserve-client.py through GLMSERVE_ADDR (the client's
default, 127.0.0.1:50051, is checked to be serve-demo.sh's default port). Each example line runs
through `bash -c` from the repository root and must exit 0 with sane output (JSON where JSON is
promised, the right number of tokens, SERVING, ...). Also checked: the section keeps its two
commands (scripts/serve-demo.sh, scripts/test.sh) and names no tool Debian 12 lacks (grpcurl).
The client's own errors: bad JSON (argument or stdin) for every method, a request that is no JSON
object, a missing TLS file, --tls-key or --tls-cert alone and --timeout <= 0 exit 2 with one line
naming the problem, never a traceback; a reader that stops early (`| head -1`) ends it quietly by
SIGPIPE; a full disk (/dev/full) exits 1; --help lists the methods, options, environment and exit
codes.

Needs grpcio + grpcio-tools (scripts/install-deps.sh). Exit 0 pass, 1 fail, 77 skipped."""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "pyutil"))
from checks import FAILURES, check  # noqa: E402
from glmserve_process import GlmserveProcess  # noqa: E402


def section():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^## Two commands\n(.*?)(?=^## )", text, re.M | re.S)
    if not m:
        return []
    return re.findall(r"```sh\n(.*?)```", m.group(1), re.S)


def json_lines(out):
    objs = []
    for line in out.splitlines():
        if line.strip():
            objs.append(json.loads(line))
    return objs


def sane(cmd, out):
    """A description of what is wrong with stdout `out` of example `cmd`, or None."""
    if not out.strip():
        return "no output"
    client = "glmserve-client.py" in cmd
    if client or "--json" in cmd:
        try:
            objs = json_lines(out)
        except ValueError as e:
            return f"not one JSON object per line: {e}"
    if client:
        method = cmd.split("glmserve-client.py", 1)[1].split()[0]
        req = re.search(r"'(\{.*\})'", cmd)
        req = json.loads(req.group(1)) if req else {}
        if method == "Infer":
            r = objs[0]
            want = req.get("max_new_tokens")
            if len(objs) != 1 or len(r.get("output_ids", [])) != want or r.get("finish_reason") != "LENGTH" \
                    or r["usage"]["completion_tokens"] != want:
                return f"Infer: want {want} ids, LENGTH, usage: {r}"
        elif method == "InferStream":
            last = objs[-1]
            ids = [i for o in objs for i in o.get("output_ids", [])]
            if last.get("finish_reason") not in ("LENGTH", "STOP") or \
                    last["usage"]["completion_tokens"] != len(ids) or not 0 < len(ids) <= req["max_new_tokens"] or \
                    len({o["request_id"] for o in objs}) != 1:
                return f"InferStream: {len(objs)} messages, {len(ids)} ids, last {last}"
        elif method == "GetModelInfo":
            r = objs[0]
            if r.get("architecture") != "glm4" or not r.get("vocab_size") or not r.get("max_context"):
                return f"GetModelInfo: {r}"
        elif method == "Health":
            if objs != [{"status": "SERVING"}]:
                return f"Health: {objs}"
        else:
            return f"unknown client method {method}"
    elif " tokenize " in cmd:
        if not objs[0].get("ids") or objs[0].get("decoded") != re.search(r'--text "([^"]*)"', cmd).group(1):
            return f"tokenize: {objs[0]}"
    elif " generate " in cmd:
        n = int(re.search(r"--max-new-tokens (\d+)", cmd).group(1))
        if not 0 < len(objs[0].get("output_ids", [])) <= n or "finish_reason" not in objs[0]:
            return f"generate: {str(objs[0])[:300]}"
    elif " inspect " in cmd:
        if "architecture:" not in out or "glm4" not in out:
            return f"inspect: {out[:300]}"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "glm4-tiny"))
    args = ap.parse_args()
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        print(f"SKIP: {e} (scripts/install-deps.sh installs grpcio and grpcio-tools)")
        return 77
    if not (os.path.exists(args.binary) and os.path.exists(os.path.join(args.model, "config.json"))):
        print(f"SKIP: no binary {args.binary} or model {args.model}")
        return 77

    blocks = section()
    check(len(blocks) >= 2, f"README.md '## Two commands' has the setup block and the examples block ({len(blocks)})")
    if len(blocks) < 2:
        return 1
    setup = [l.split("#")[0].strip() for l in blocks[0].splitlines() if l.strip()]
    check(setup == ["scripts/serve-demo.sh", "scripts/test.sh"], f"the two commands: {setup}")
    for s in setup:
        check(os.access(os.path.join(ROOT, s), os.X_OK), f"{s} exists and is executable")
    examples = [l.strip() for l in blocks[1].splitlines() if l.strip() and not l.strip().startswith("#")]
    check(len(examples) >= 4, f"{len(examples)} example commands")
    check(not any(re.search(r"\bgrpcurl\b", e) for e in examples), "no example needs grpcurl (not in Debian 12)")
    with open(os.path.join(ROOT, "scripts", "serve-demo.sh")) as f:
        demo = f.read()
    with open(os.path.join(ROOT, "scripts", "glmserve-client.py")) as f:
        client = f.read()
    check('--host 127.0.0.1 --port "${PORT:-50051}"' in demo and '"127.0.0.1:50051"' in client,
          "the client's default address is serve-demo.sh's (127.0.0.1:50051)")

    # The demo server, as serve-demo.sh starts it, on a free port.
    server = GlmserveProcess(args.binary, args.model)
    env = dict(os.environ, GLMSERVE_ADDR=f"127.0.0.1:{server.port}")
    binary = os.path.abspath(args.binary)
    try:
        for cmd in examples:
            run = cmd
            if cmd.startswith("build/glmserve ") and os.path.abspath(os.path.join(ROOT, "build", "glmserve")) != binary:
                run = binary + cmd[len("build/glmserve"):]
            out = subprocess.run(["bash", "-c", run], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
            problem = None if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()[-500:]}"
            problem = problem or sane(cmd, out.stdout)
            check(problem is None, f"{cmd[:110]}{'...' if len(cmd) > 110 else ''}" + (f" -> {problem}" if problem else ""))
        client_errors(env)
    finally:
        check(server.stop() == 0, "server drains and exits 0")
    client_security(args.binary, args.model)
    print(f"{len(FAILURES)} failed" if FAILURES else "all passed")
    return 1 if FAILURES else 0


def client_errors(env):
    """glmserve-client.py's usage and setup errors (exit 2, one line on stderr, no traceback), its
    end on a closed or full stdout, and its --help, against the demo server at env's GLMSERVE_ADDR."""
    import shlex
    import tempfile
    client = [sys.executable, os.path.join(ROOT, "scripts", "glmserve-client.py"), "--timeout", "60"]

    def run(args, stdin=None):
        return subprocess.run(client + args, input=stdin, capture_output=True, text=True, timeout=120, env=env)

    def refused(what, out, *words):
        err = out.stderr.strip()
        check(out.returncode == 2 and not out.stdout and "Traceback" not in err and len(err.splitlines()) == 1
              and err.startswith("glmserve-client: ") and all(w in err for w in words),
              f"glmserve-client.py {what}: exit {out.returncode} (want 2), one line naming {words}: {err[-300:]!r}")

    for method in ("Infer", "InferStream", "GetModelInfo", "Health"):
        refused(f"{method} '{{bad'", run([method, "{bad"]), "request", "not JSON")
        refused(f"{method} - <<< '{{bad'", run([method, "-"], "{bad"), "request on stdin", "not JSON")
    for method, request, kind in [("Infer", "[]", "array"), ("InferStream", "null", "null"),
                                  ("GetModelInfo", "3", "number"), ("Health", '"x"', "string")]:
        refused(f"{method} '{request}'", run([method, request]), "must be a JSON object", kind)
    refused("Infer with a request field of the wrong type", run(["Infer", '{"input_ids": "1"}']),
            "glmserve.v1.InferRequest", "input_ids")
    with tempfile.TemporaryDirectory() as d:
        missing = os.path.join(d, "missing.pem")
        pem = os.path.join(d, "some.pem")
        with open(pem, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        refused("--tls-ca MISSING", run(["--tls-ca", missing, "Health"]), "--tls-ca", missing, "No such file")
        refused("--tls-cert MISSING --tls-key FILE", run(["--tls-cert", missing, "--tls-key", pem, "Health"]),
                "--tls-cert", missing)
        refused("--tls-cert FILE --tls-key MISSING", run(["--tls-cert", pem, "--tls-key", missing, "Health"]),
                "--tls-key", missing)
        # Alone, the key went unused over plaintext: refused as the lone certificate is.
        refused("--tls-key alone", run(["--tls-key", pem, "Health"]), "--tls-key", "--tls-cert")
        refused("--tls-cert alone", run(["--tls-cert", pem, "Health"]), "--tls-cert", "--tls-key")
    # A port past 65535 was dialled modulo 65536; a key with a newline or non-ASCII failed inside
    # gRPC with its trace (exit 1), one not UTF-8 with a Python traceback.
    for flag, value, words in (("--addr", "127.0.0.1:99999", ("--addr", "99999", "1..65535")),
                               ("--api-key", "a\nb", ("--api-key", "printable ASCII")),
                               ("--api-key", "cl\u00e9", ("--api-key", "printable ASCII"))):
        out = run([flag, value, "Health"])
        err = out.stderr.strip()
        check(out.returncode == 2 and not out.stdout and "Traceback" not in err and all(w in err for w in words),
              f"glmserve-client.py {flag} {value!r}: exit {out.returncode} (want 2) naming {words}: {err[-200:]!r}")
    for t in ("0", "-5"):
        out = run(["--timeout", t, "Health"])
        check(out.returncode == 2 and "--timeout" in out.stderr and "> 0" in out.stderr and not out.stdout
              and "Traceback" not in out.stderr,
              f"glmserve-client.py --timeout {t}: exit {out.returncode} (want 2), {out.stderr.strip()[-160:]!r}")

    # 1500 messages (~100 kB) outgrow the pipe's buffer, so the client is still writing when head exits.
    stream = shlex.join(client + ["InferStream", '{"input_ids": [1, 2], "max_new_tokens": 1500, "min_new_tokens": 1500}'])
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {stream} | head -1"], capture_output=True, text=True,
                         timeout=120, env=env)
    lines = out.stdout.splitlines()
    check(out.returncode == 128 + 13 and not out.stderr and len(lines) == 1 and '"output_ids"' in lines[0],
          f"glmserve-client.py InferStream | head -1: ends by SIGPIPE (141) with no message: exit "
          f"{out.returncode}, {len(lines)} lines, stderr {out.stderr.strip()[-300:]!r}")
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            out = subprocess.run(client + ["Health"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                                 env=env)
        check(out.returncode == 1 and "cannot write the reply to stdout" in out.stderr and "Traceback" not in out.stderr
              and len(out.stderr.strip().splitlines()) == 1,
              f"glmserve-client.py Health > /dev/full: exit {out.returncode} (want 1), {out.stderr.strip()[-300:]!r}")

    out = run(["--help"])
    missing = [w for w in ("Infer", "InferStream", "GetModelInfo", "Health", "--addr", "--timeout", "--api-key",
                           "--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name", "--emit-defaults", "--proto-root", "GLMSERVE_ADDR",
                           "GLMSERVE_API_KEY", "Exit: 0 OK", "1 the RPC failed", "2 usage or setup error")
               if w not in out.stdout]
    # Every option says what it does, on its line or (a long option) the next, not just its name.
    lines = out.stdout.splitlines()
    bare = [l.strip() for i, l in enumerate(lines) if re.fullmatch(r"\s+--[a-z-]+( [A-Z:]+)?", l)
            and not (i + 1 < len(lines) and re.match(r"\s{6,}[^\s-]", lines[i + 1]))]
    check(out.returncode == 0 and not missing and not bare,
          f"glmserve-client.py --help: exit {out.returncode}, lacks {missing}, options without help {bare}")


def client_security(binary, model):
    """glmserve-client.py's --api-key / GLMSERVE_API_KEY and --tls-ca/--tls-cert/--tls-key (documented
    in deploy/README.md) against a server with --api-key-file and mutual TLS, when it has the flags."""
    import shutil
    import tempfile
    helptext = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
    if not all(f in helptext.stdout + helptext.stderr for f in ("--tls-cert", "--api-key-file")) \
            or not shutil.which("openssl"):
        print("skip the client's --api-key/--tls checks: this glmserve lacks the flags (or no openssl)")
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from deploy_test import make_certs
    with tempfile.TemporaryDirectory() as d:
        make_certs(d)
        c = lambda n: os.path.join(d, n)  # noqa: E731
        with open(c("keys"), "w") as f:
            f.write("# test keys\nreadme-test-key-1\n")
        server = GlmserveProcess(binary, model, ["--api-key-file", c("keys"), "--tls-cert", c("server.crt"),
                                                 "--tls-key", c("server.key"), "--tls-client-ca", c("ca.crt")])
        base = [sys.executable, os.path.join(ROOT, "scripts", "glmserve-client.py"), "--addr",
                f"127.0.0.1:{server.port}", "--timeout", "20"]
        mtls = ["--tls-ca", c("ca.crt"), "--tls-cert", c("client.crt"), "--tls-key", c("client.key")]
        req = ["Infer", '{"input_ids": [1, 2, 3], "max_new_tokens": 4}']
        env = {k: v for k, v in os.environ.items() if k != "GLMSERVE_API_KEY"}
        try:
            for what, extra, key_env, want, text in [
                    ("--api-key + mutual TLS", ["--api-key", "readme-test-key-1"] + mtls, None, 0, '"output_ids"'),
                    ("GLMSERVE_API_KEY + mutual TLS", mtls, "readme-test-key-1", 0, '"output_ids"'),
                    ("no key", mtls, None, 1, "UNAUTHENTICATED"),
                    ("a wrong key", ["--api-key", "nope"] + mtls, None, 1, "UNAUTHENTICATED"),
                    ("plaintext", ["--api-key", "readme-test-key-1"], None, 1, "UNAVAILABLE"),
                    # The certificate's DNS name checked over 127.0.0.1 (a port-forward), and a name it lacks.
                    ("--tls-server-name glmserve.test", ["--api-key", "readme-test-key-1", "--tls-server-name",
                                                         "glmserve.test"] + mtls, None, 0, '"output_ids"'),
                    ("--tls-server-name another.name", ["--api-key", "readme-test-key-1", "--tls-server-name",
                                                        "another.name"] + mtls, None, 1, "UNAVAILABLE")]:
                e = dict(env, GLMSERVE_API_KEY=key_env) if key_env else env
                out = subprocess.run(base + extra + req, capture_output=True, text=True, timeout=60, env=e)
                check(out.returncode == want and text in out.stdout + out.stderr,
                      f"glmserve-client.py with {what}: exit {out.returncode} (want {want}), "
                      f"{(out.stdout + out.stderr).strip()[:160]}")
        finally:
            check(server.stop() == 0, "TLS + API key server drains and exits 0")


if __name__ == "__main__":
    sys.exit(main())
