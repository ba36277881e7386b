#!/usr/bin/env python3
"""Prefix caching through the real `glmserve serve` binary on loopback (on by default): requests
that repeat a 48-token system prompt, one after another and several at once, get the same ids as
from a server with `--prefix-caching false` (greedy and seeded sampling), and the server's
/metrics count the prompt positions taken from the cache. Exit 77 = skipped."""
import concurrent.futures
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chaos"))
import harness  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402  (tests/pyutil, on the path harness set)
from harness import check  # noqa: E402
from checks import report  # noqa: E402  (tests/pyutil, on the path harness set)

SYSTEM = [(i * 37 + 11) % 500 + 3 for i in range(48)]
SUFFIXES = [[(i * 13 + k * 7) % 400 + 5 for i in range(3 + k % 5)] for k in range(8)]


def requests(pb):
    out = []
    for k, suffix in enumerate(SUFFIXES):
        r = pb.InferRequest(input_ids=SYSTEM + suffix, max_new_tokens=6, request_id=f"p{k}")
        if k % 3 == 2:
            r.temperature = 0.8
            r.seed = 100 + k
        out.append(r)
    return out


def run(server, pb, pb_grpc):
    """Each request's ids and its Usage.cached_prompt_tokens, by request id."""
    stub = pb_grpc.InferenceStub(harness.channel(server.port))
    reqs = requests(pb)
    ids, cached = {}, {}
    for r in reqs[:2]:  # one after another: the second finds the first's blocks
        resp = stub.Infer(r, timeout=60)
        ids[r.request_id], cached[r.request_id] = list(resp.output_ids), resp.usage.cached_prompt_tokens
    with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:  # the rest at once
        for r, resp in zip(reqs[2:], pool.map(lambda r: stub.Infer(r, timeout=60), reqs[2:])):
            ids[r.request_id], cached[r.request_id] = list(resp.output_ids), resp.usage.cached_prompt_tokens
    return ids, cached


def main():
    args = server_test_args()
    if args is None:
        return 77
    pb, pb_grpc = harness.stubs(args.proto_root)
    plain = harness.Server(args.binary, args.model, ["--kv-block-size", "8", "--prefix-caching", "false"])
    try:
        want, none_cached = run(plain, pb, pb_grpc)
        check(set(none_cached.values()) == {0}, f"without the cache no usage counts cached tokens: {none_cached}")
    finally:
        check(plain.stop() == 0, "server without the cache drains and exits 0")
    mport = harness.free_port()
    # No flag: serve's default is on.
    cached = harness.Server(args.binary, args.model, ["--kv-block-size", "8", "--metrics-port", str(mport)])
    try:
        got, cached_tokens = run(cached, pb, pb_grpc)
        # The first request computes all; every later one reuses the system prompt's 6 blocks of 8.
        check(cached_tokens["p0"] == 0 and all(cached_tokens[f"p{k}"] == 48 for k in range(1, len(SUFFIXES))),
              f"Usage.cached_prompt_tokens: {cached_tokens}")
        for rid in want:
            check(got[rid] == want[rid], f"{rid}: same ids with the prefix cache ({got[rid]} vs {want[rid]})")
        want_hits = 48 * (len(SUFFIXES) - 1)
        hits = queries = 0
        for _ in range(100):  # the engine's counters reach /metrics by polling
            metrics, _ = harness.scrape(mport)
            hits = harness.metric(metrics, "glmserve_prefix_cache_hit_tokens_total")
            queries = harness.metric(metrics, "glmserve_prefix_cache_query_tokens_total")
            if hits >= want_hits:
                break
            time.sleep(0.1)
        # Every request after the first shares the system prompt's 6 full blocks of 8.
        check(hits >= want_hits, f"prefix cache hits {hits} >= {want_hits}")
        check(queries >= sum(len(SYSTEM) + len(s) for s in SUFFIXES), f"queried positions {queries}")
        # The system prompt's blocks stay registered after the requests end.
        usage = harness.metric(metrics, "glmserve_prefix_cache_usage_ratio")
        check(usage > 0, f"glmserve_prefix_cache_usage_ratio {usage} > 0 after the requests")
    finally:
        check(cached.stop() == 0, "server with the cache drains and exits 0")
    return report()


if __name__ == "__main__":
    sys.exit(main())
