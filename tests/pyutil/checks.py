"""The Python tests' named checks: each prints ok/FAIL with what it checked, failures are
collected in FAILURES for the test's exit status, and the test goes on to its next check."""

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def report(limit=50):
    """The test's exit status: 1 listing the failures (at most `limit`), else 0."""
    if FAILURES:
        print(f"{len(FAILURES)} FAILED:\n  " + "\n  ".join(FAILURES[:limit]))
        return 1
    print("all passed")
    return 0
