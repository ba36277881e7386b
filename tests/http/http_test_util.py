"""Shared by the HTTP API tests: start `glmserve serve --http-port 0` and send raw requests."""
import http.client
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from glmserve_process import HTTP_READY, GlmserveProcess  # noqa: E402


class Server(GlmserveProcess):
    """The real binary with --http-port 0; ready once 'glmserve: http serving on HOST:PORT' is logged."""

    def __init__(self, binary, model, extra=(), start_timeout=120):
        super().__init__(binary, model, ["--http-port", "0", "--log-format", "text", *extra],
                         ready_pattern=HTTP_READY, start_timeout=start_timeout)

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


