"""Shared by the HTTP API tests: start `glmserve serve --http-port 0` and send raw requests."""
import http.client
import json
import re
import signal
import subprocess
import threading


class Server:
    """The real binary on loopback; parses 'glmserve: http serving on HOST:PORT' from stderr."""

    def __init__(self, binary, model, extra=(), start_timeout=120):
        self.proc = subprocess.Popen(
            [binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
             "--http-port", "0", "--log-format", "text", *extra],
            stderr=subprocess.PIPE, text=True, errors="replace")
        self.log = []
        self.port = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"http serving on 127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(start_timeout) or self.port is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers dict lower-case, body bytes) on a fresh connection."""
        c = self.conn(timeout)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def post(self, path, body, headers=None, timeout=60):
        return self.request("POST", path, body, headers, timeout)

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
