"""One sample of the server's /metrics, for the tests that start the real binary."""
import time
import urllib.request


def sample(port, series):
    """The value of the line whose series is exactly `series` (e.g. 'glmserve_requests_running' or
    'glmserve_requests_total{code="CANCELLED"}'); 0.0 when the server has no such line yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.split(" ", 1)[0] == series:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_sample(port, series, done, timeout_s):
    """Samples `series` every 0.1 s until `done(value)` holds or `timeout_s` passes; the last value."""
    end = time.monotonic() + timeout_s
    value = sample(port, series)
    while not done(value) and time.monotonic() < end:
        time.sleep(0.1)
        value = sample(port, series)
    return value
