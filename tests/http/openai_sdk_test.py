#!/usr/bin/env python3
"""The official `openai` Python SDK against `glmserve serve --http-port 0` on loopback.

Checks chat and completions (streaming and not, stop strings, usage, include_usage, seed,
penalties, repetition_penalty / min_tokens / ignore_eos, x-request-id), /v1/models, /health, and every error case of the error matrix (status,
type, param): invalid JSON, wrong types, unknown roles, missing fields, out-of-range values,
image parts, 413, 429 + Retry-After, 503 draining, 504 deadline; a client that disconnects
mid-stream frees its slot. Needs (pip): openai. Exit 77 = skipped.
"""
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyutil"))
from checks import check, report  # noqa: E402
from glmserve_process import server_test_args  # noqa: E402
from http_test_util import Server  # noqa: E402

try:
    import openai
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (pip install openai)")
    sys.exit(77)


def error_of(status_body):
    try:
        return json.loads(status_body)["error"]
    except Exception:  # noqa: BLE001
        return None


def expect_error(server, path, body, status, param, etype="invalid_request_error", headers=None, what=""):
    st, hdrs, data = server.post(path, body, headers)
    err = error_of(data)
    ok = (st == status and err is not None and err.get("type") == etype and err.get("param") == param
          and isinstance(err.get("message"), str) and "code" in err)
    check(ok, f"{what or path}: {st} {err and err.get('type')} param={err and err.get('param')!r} "
              f"(want {status} {etype} {param!r}) {err and err.get('message')!r}")
    return st, hdrs, err


def chat_body(**kw):
    body = {"model": "glm4-tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    body.update(kw)
    return body


def main():
    args = server_test_args(proto_root=False)
    if args is None:
        return 77
    print(f"openai SDK {openai.__version__}", flush=True)

    server = Server(args.binary, args.model, ["--debug-step-latency-ms", "2"])
    try:
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=60)
        models = client.models.list()
        check([m.id for m in models.data] == ["glm4-tiny"], f"/v1/models lists {[m.id for m in models.data]}")
        time.sleep(1.1)  # `created` is when the model came up, not each call's time
        again = client.models.retrieve("glm4-tiny")
        check(again.created == models.data[0].created and again.created <= time.time(),
              f"created is the same on every call ({models.data[0].created}, {again.created})")
        st, _, data = server.request("GET", "/health")
        check(st == 200 and json.loads(data)["status"] == "SERVING", f"/health 200 ({st})")
        for path in ("/v1/models", "/health"):  # every route echoes x-request-id, not only the API's
            st, headers, _ = server.request("GET", path, headers={"x-request-id": "get-req-1"})
            check(st == 200 and headers.get("x-request-id") == "get-req-1",
                  f"{path} echoes x-request-id ({st}, {headers.get('x-request-id')})")
        # httplib's own answers too: no route (404), a route asked with another method (405).
        for method, path, want in (("GET", "/v1/nope", 404), ("GET", "/v1/chat/completions", 405),
                                   ("POST", "/v1/models", 405)):
            st, headers, _ = server.request(method, path, body=b"" if method == "POST" else None,
                                            headers={"x-request-id": "err-req-1"})
            check(st == want and headers.get("x-request-id") == "err-req-1",
                  f"{method} {path}: {want} echoes x-request-id ({st}, {headers.get('x-request-id')})")
        # A route asked with a method it does not take: 405 + Allow (it was 404 "no route").
        for method, path, allow in (("GET", "/v1/chat/completions", "POST"), ("DELETE", "/v1/models", "GET")):
            st, headers, data = server.request(method, path)
            check(st == 405 and headers.get("allow") == allow and json.loads(data)["error"]["code"] == "method_not_allowed",
                  f"{method} {path}: 405, Allow {allow} ({st}, {headers.get('allow')})")
        st, _, _ = server.request("GET", "/v1/nothing")
        check(st == 404, f"a path no route has: 404 ({st})")

        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]
        chat = client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=16, temperature=0)
        text = chat.choices[0].message.content
        u = chat.usage
        check(isinstance(text, str) and chat.choices[0].finish_reason in ("stop", "length"),
              f"chat: {text!r} finish={chat.choices[0].finish_reason}")
        check(u.prompt_tokens > 0 and 0 < u.completion_tokens <= 16 and u.total_tokens == u.prompt_tokens + u.completion_tokens,
              f"chat usage {u}")
        check(chat.object == "chat.completion" and chat.choices[0].message.role == "assistant", "chat object/role")

        stream = client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=16, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        parts, finish, usage = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    parts.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
        check("".join(parts) == text, f"chat stream text == non-stream ({''.join(parts)!r})")
        check(finish == chat.choices[0].finish_reason, f"chat stream finish_reason {finish}")
        check(usage is not None and usage.completion_tokens == u.completion_tokens and usage.prompt_tokens == u.prompt_tokens,
              f"stream_options.include_usage: final chunk usage {usage}")
        # vLLM's continuous_usage_stats: every chunk carries the usage so far (it was refused).
        stream = client.chat.completions.create(
            model="glm4-tiny", messages=messages, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True})
        counts = [(c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) if c.usage else None
                  for c in stream]
        check(all(c is not None for c in counts) and all(p == u.prompt_tokens and t == p + n for p, n, t in counts) and
              [n for _, n, _ in counts] == sorted(n for _, n, _ in counts) and counts[-1][1] == u.completion_tokens and
              counts[0][1] == 0,
              f"continuous_usage_stats: usage in every chunk, completion tokens rising to the total ({counts})")

        # Prefix caching (on by default): the same long prompt again reuses its full KV blocks, and
        # usage.prompt_tokens_details.cached_tokens says how many positions, streaming included.
        long_messages = [{"role": "system", "content": "You are a careful assistant. " * 12},
                         {"role": "user", "content": "Name three colours."}]
        first = client.chat.completions.create(model="glm4-tiny", messages=long_messages, max_tokens=4, temperature=0)
        again = client.chat.completions.create(model="glm4-tiny", messages=long_messages, max_tokens=4, temperature=0,
                                               stream=True, stream_options={"include_usage": True})
        again_usage = None
        for chunk in again:
            if chunk.usage is not None:
                again_usage = chunk.usage
        first_cached = first.usage.prompt_tokens_details.cached_tokens
        again_cached = again_usage.prompt_tokens_details.cached_tokens if again_usage else None
        check(first_cached == 0 and again_cached is not None and 16 <= again_cached < again_usage.prompt_tokens,
              f"prompt_tokens_details.cached_tokens: first {first_cached}, again {again_cached} "
              f"of {again_usage.prompt_tokens if again_usage else None}")

        # Content as a list of text parts is the same prompt as the joined string.
        parts_chat = client.chat.completions.create(
            model="glm4-tiny", max_tokens=16, temperature=0,
            messages=[messages[0], {"role": "user", "content": [{"type": "text", "text": "Tell me a story"}]}])
        check(parts_chat.choices[0].message.content == text, "content as text parts == string content")

        # Completions: prompt text and token ids, stream and not.
        comp = client.completions.create(model="glm4-tiny", prompt="The weather today", max_tokens=12, temperature=0)
        ctext = comp.choices[0].text
        check(comp.object == "text_completion" and comp.usage.completion_tokens > 0, f"completion: {ctext!r}")
        s_parts, s_finish = [], None
        for chunk in client.completions.create(model="glm4-tiny", prompt="The weather today", max_tokens=12,
                                               temperature=0, stream=True):
            for c in chunk.choices:
                s_parts.append(c.text)
                s_finish = c.finish_reason or s_finish
        check("".join(s_parts) == ctext and s_finish == comp.choices[0].finish_reason,
              "completion stream == non-stream")
        ids = client.completions.create(model="glm4-tiny", prompt=[1, 2, 3], max_tokens=12, temperature=0)
        check(ids.usage.prompt_tokens == 3 and ids.choices[0].finish_reason in ("stop", "length"),
              f"completion with token ids: usage {ids.usage}")
        st, hdrs, data = server.post("/v1/completions", {"model": "m", "prompt": [1, 2, 3], "max_tokens": 5,
                                                         "stream": True})
        check(st == 200 and hdrs.get("content-type", "").startswith("text/event-stream")
              and data.rstrip().endswith(b"data: [DONE]"), "raw SSE ends with data: [DONE]")

        # Stop strings: a string and a list; the text ends before the first occurrence.
        long = client.completions.create(model="glm4-tiny", prompt="Once upon a time", max_tokens=40, temperature=0)
        full = long.choices[0].text
        check(len(full) >= 4, f"a long enough text for the stop test ({full!r})")
        if len(full) >= 4:
            stop = full[2:4]
            cut = full[:full.find(stop)]
            s1 = client.completions.create(model="glm4-tiny", prompt="Once upon a time", max_tokens=40,
                                           temperature=0, stop=stop)
            check(s1.choices[0].text == cut and s1.choices[0].finish_reason == "stop",
                  f"stop {stop!r}: {s1.choices[0].text!r} finish={s1.choices[0].finish_reason}")
            s2 = "".join(c.choices[0].text for c in client.completions.create(
                model="glm4-tiny", prompt="Once upon a time", max_tokens=40, temperature=0,
                stop=["\u2603never", stop], stream=True) if c.choices)
            check(s2 == cut, f"stop list, streamed: {s2!r}")
            check(s1.usage.completion_tokens <= long.usage.completion_tokens, "stop: fewer completion tokens")

        # Sampling: same seed, same text; penalties accepted and change nothing at 0.
        a = client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=12, temperature=0.9,
                                           top_p=0.9, seed=7)
        b = client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=12, temperature=0.9,
                                           top_p=0.9, seed=7)
        check(a.choices[0].message.content == b.choices[0].message.content, "same seed, same text")
        # Without a seed each request draws its own (OpenAI, vLLM): a fixed default gave every
        # unseeded request the same sample.
        unseeded = {client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=12,
                                                   temperature=1.0).choices[0].message.content for _ in range(4)}
        check(len(unseeded) >= 2, f"unseeded samples differ: {len(unseeded)} distinct of 4")
        zero = [client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=12, temperature=1.0,
                                               seed=0).choices[0].message.content for _ in range(2)]
        check(zero[0] == zero[1], "seed 0 set is a seed: same text")
        z = client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=16, temperature=0,
                                           frequency_penalty=0, presence_penalty=0)
        check(z.choices[0].message.content == text, "zero penalties == none")
        p = client.chat.completions.create(model="glm4-tiny", messages=messages, max_tokens=16, temperature=0,
                                           frequency_penalty=2.0, presence_penalty=1.5)
        check(isinstance(p.choices[0].message.content, str), f"penalties accepted: {p.choices[0].message.content!r}")

        # A frequency penalty changes greedy text once a token repeats (the prefix before stays).
        penalized = client.completions.create(model="glm4-tiny", prompt="Once upon a time", max_tokens=40,
                                              temperature=0, frequency_penalty=2.0).choices[0].text
        if len(full) >= 4:
            check(penalized != full and penalized[:8] == full[:8],
                  f"frequency_penalty=2 changes the text after a repeat: {penalized!r}")

        # vLLM's extra fields: repetition_penalty (1 = off: the same greedy text), min_tokens and
        # ignore_eos (exactly max_tokens new tokens).
        r1 = client.completions.create(model="glm4-tiny", prompt="Once upon a time", max_tokens=40,
                                       temperature=0, extra_body={"repetition_penalty": 1.0}).choices[0].text
        check(r1 == full, f"repetition_penalty=1 == none: {r1!r}")
        r2 = client.completions.create(model="glm4-tiny", prompt="Once upon a time", max_tokens=40,
                                       temperature=0, extra_body={"repetition_penalty": 1.8})
        check(isinstance(r2.choices[0].text, str) and r2.usage.completion_tokens > 0,
              f"repetition_penalty=1.8 accepted: {r2.choices[0].text!r}")
        for extra in ({"min_tokens": 24}, {"ignore_eos": True}):
            m = client.completions.create(model="glm4-tiny", prompt=[1, 2, 3], max_tokens=24, temperature=0,
                                          stop=None, extra_body=extra)
            check(m.usage.completion_tokens == 24 and m.choices[0].finish_reason == "length",
                  f"{extra}: exactly max_tokens new tokens ({m.usage.completion_tokens}, {m.choices[0].finish_reason})")

        raw = client.chat.completions.with_raw_response.create(
            model="glm4-tiny", messages=messages, max_tokens=2, extra_headers={"x-request-id": "sdk-req-1"})
        check(raw.headers.get("x-request-id") == "sdk-req-1", "x-request-id echoed in a response header")
        check(any("sdk-req-1" in line and "request_finished" in line for line in server.lines) or
              any("sdk-req-1" in line for line in server.lines), "x-request-id in the logs")
        raw = client.chat.completions.with_raw_response.create(model="glm4-tiny", messages=messages, max_tokens=2)
        check(bool(raw.headers.get("x-request-id")), "a request id is generated when none is sent")

        # The SDK raises the typed errors with type/param/code from the body.
        try:
            client.chat.completions.create(model="glm4-tiny", max_tokens=2,
                                           messages=[{"role": "wizard", "content": "x"}])
            check(False, "SDK: unknown role raises")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.param == "messages[0].role" and e.type == "invalid_request_error",
                  f"SDK BadRequestError param={e.param} type={e.type}")

        # ---- error matrix (raw bodies: the SDK would refuse to send most of them) ----
        C, P = "/v1/chat/completions", "/v1/completions"
        _, _, err = expect_error(server, C, '{"model": "m", "messages": [', 400, None, what="invalid JSON")
        check(err is not None and "byte" in err["message"], f"invalid JSON names the position: {err and err['message']}")
        expect_error(server, C, "[1, 2]", 400, None, what="body not an object")
        expect_error(server, C, chat_body(max_tokens="8"), 400, "max_tokens", what="wrong type max_tokens")
        expect_error(server, C, chat_body(temperature="hot"), 400, "temperature", what="wrong type temperature")
        expect_error(server, C, chat_body(stream="yes"), 400, "stream", what="wrong type stream")
        expect_error(server, C, chat_body(messages={"role": "user"}), 400, "messages", what="wrong type messages")
        expect_error(server, C, chat_body(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content",
                     what="wrong type content")
        # An empty parts array rendered an empty turn; OpenAI refuses it (minItems 1).
        expect_error(server, C, chat_body(messages=[{"role": "user", "content": []}]), 400, "messages[0].content",
                     what="empty content parts")
        expect_error(server, C, chat_body(stop=5), 400, "stop", what="wrong type stop")
        expect_error(server, C, chat_body(stop=["a", 3]), 400, "stop[1]", what="wrong type stop[1]")
        expect_error(server, C, chat_body(messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]),
                     400, "messages[1].role", what="unknown role")
        expect_error(server, C, chat_body(messages=[{"role": "system", "content": "a"}, {"role": "user", "content": "b"},
                                                    {"role": "user"}]), 400, "messages[2].content", what="missing content")
        expect_error(server, C, chat_body(messages=[{"content": "b"}]), 400, "messages[0].role", what="missing role")
        expect_error(server, C, {"model": "m"}, 400, "messages", what="missing messages")
        expect_error(server, C, {"messages": [{"role": "user", "content": "x"}]}, 400, "model", what="missing model")
        expect_error(server, P, {"model": "m"}, 400, "prompt", what="missing prompt")
        expect_error(server, C, chat_body(temperature=3), 400, "temperature", what="temperature out of range")
        expect_error(server, C, chat_body(top_p=1.5), 400, "top_p", what="top_p out of range")
        expect_error(server, C, chat_body(max_tokens=0), 400, "max_tokens", what="max_tokens 0")
        expect_error(server, C, chat_body(max_tokens=100000), 400, "max_tokens", what="max_tokens above the cap")
        expect_error(server, C, chat_body(n=2), 400, "n", what="n = 2")
        expect_error(server, C, chat_body(frequency_penalty=5), 400, "frequency_penalty", what="frequency_penalty range")
        expect_error(server, C, chat_body(presence_penalty=-3), 400, "presence_penalty", what="presence_penalty range")
        for bad in (0, -1, 10.5):
            _, _, err = expect_error(server, P, {"model": "m", "prompt": [1, 2], "repetition_penalty": bad}, 400,
                                     "repetition_penalty", what=f"repetition_penalty {bad}")
            check(err is not None and "repetition_penalty" in err["message"] and "(0, 10]" in err["message"],
                  f"repetition_penalty {bad}: the message names the field and the range: {err and err['message']!r}")
        expect_error(server, C, chat_body(repetition_penalty="high"), 400, "repetition_penalty",
                     what="wrong type repetition_penalty")
        expect_error(server, P, {"model": "m", "prompt": [1], "min_tokens": -1}, 400, "min_tokens", what="min_tokens -1")
        _, _, err = expect_error(server, P, {"model": "m", "prompt": [1], "max_tokens": 4, "min_tokens": 5}, 400,
                                 "min_tokens", what="min_tokens > max_tokens")
        check(err is not None and "max_tokens" in err["message"] and "min_new_tokens" not in err["message"],
              f"min_tokens > max_tokens: the JSON names: {err and err['message']!r}")
        expect_error(server, P, {"model": "m", "prompt": [1], "ignore_eos": "yes"}, 400, "ignore_eos",
                     what="wrong type ignore_eos")
        expect_error(server, C, chat_body(stream=True, return_token_ids=1), 400, "return_token_ids",
                     what="wrong type return_token_ids")
        expect_error(server, C, chat_body(stream_options={"include_usage": True}), 400, "stream_options",
                     what="stream_options without stream")
        _, _, err = expect_error(server, C, chat_body(messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
            400, "messages[0].content[1]", what="image part")
        check(err is not None and "vision" in err["message"], "image part: says the model has no vision input")
        expect_error(server, P, {"model": "m", "prompt": [1, 99999]}, 400, "prompt[1]", what="token id outside the vocab")
        expect_error(server, P, {"model": "m", "prompt": [1, "a"]}, 400, "prompt[1]", what="token id wrong type")
        _, _, err = expect_error(server, P, {"model": "m", "prompt": "hello " * 3000, "max_tokens": 1}, 400, "prompt",
                                 what="prompt too long")
        check(err is not None and err["code"] == "context_length_exceeded", "prompt too long: context_length_exceeded")
        expect_error(server, C + "?timeout=abc", chat_body(), 400, "timeout", what="timeout not a number")
        st, hdrs, data = server.post(C, json.dumps(chat_body(messages=[{"role": "user", "content": "x" * (5 << 20)}])))
        err = error_of(data)
        check(st == 413 and err is not None and err["type"] == "invalid_request_error", f"body too large: {st} {err}")
        st, _, data = server.request("GET", "/v1/nothing")
        check(st == 404 and error_of(data) is not None, f"unknown route: {st}")
        expect_error(server, C, chat_body(model=""), 400, "model", what="empty model")
        expect_error(server, P, {"model": "", "prompt": "hi"}, 400, "model", what="empty model (completions)")
        # logprobs 0 still asks for the sampled tokens' logprobs: refused, not answered null.
        expect_error(server, P, {"model": "m", "prompt": "hi", "max_tokens": 2, "logprobs": 0}, 400, "logprobs",
                     what="completions logprobs 0")
        expect_error(server, C, chat_body(reasoning_effort="low"), 400, "reasoning_effort", what="reasoning_effort set")
        expect_error(server, C, chat_body(modalities=["text", "audio"]), 400, "modalities", what="audio modality")
        expect_error(server, C, chat_body(safety_identifier=5), 400, "safety_identifier", what="safety_identifier type")
        st, _, _ = server.request("GET", "/health")
        check(st == 200, "still serving after the error matrix")

        # OpenAI's fields that ask for nothing here are taken (they were "unknown field").
        quiet = chat_body(temperature=0, safety_identifier="u1", prompt_cache_key="c1", modalities=["text"], audio=None,
                          prediction=None, web_search_options=None, reasoning_effort=None, verbosity=None)
        st, _, data = server.post(C, quiet)
        check(st == 200, f"OpenAI's no-op fields accepted ({st} {data[:200]!r})")
        st, _, data = server.post(C, dict(quiet, stream=True, stream_options={"include_usage": True,
                                                                             "include_obfuscation": False}))
        check(st == 200 and data.rstrip().endswith(b"data: [DONE]"), f"stream_options.include_obfuscation ({st})")
        # developer is OpenAI's newer name for the system message: the same prompt as system.
        as_system = server.post(C, chat_body(temperature=0, messages=[{"role": "system", "content": "Be brief."},
                                                                      {"role": "user", "content": "hello"}]))
        as_developer = server.post(C, chat_body(temperature=0, messages=[{"role": "developer", "content": "Be brief."},
                                                                         {"role": "user", "content": "hello"}]))
        usage = [json.loads(r[2])["usage"]["prompt_tokens"] if r[0] == 200 else None for r in (as_system, as_developer)]
        texts = [json.loads(r[2])["choices"][0]["message"]["content"] if r[0] == 200 else None
                 for r in (as_system, as_developer)]
        check(as_developer[0] == 200 and usage[0] == usage[1] and texts[0] == texts[1],
              f"developer role rendered as system ({as_developer[0]}, prompt tokens {usage}, texts equal "
              f"{texts[0] == texts[1]})")

        # Sampling left out: OpenAI's default temperature 1 (this model's generation_config.json sets
        # none), not greedy. Seeded, that is exactly temperature 1; unseeded draws differ.
        def completion(**kw):
            st, _, data = server.post(P, dict({"model": "m", "prompt": "hello", "max_tokens": 8, "ignore_eos": True},
                                              **kw))
            return json.loads(data)["choices"][0]["text"] if st == 200 else f"status {st}"

        seeded = completion(seed=11)
        check(completion(seed=11, top_k=-1) == seeded, "top_k -1 (vLLM's off) is top_k 0")
        check(seeded == completion(seed=11, temperature=1.0) and seeded != completion(temperature=0),
              f"no temperature: OpenAI's default 1, not greedy ({seeded!r})")
        # ignore_eos as vLLM means it: the end ids neither stop nor are masked (the prompt [236]'s
        # greedy first token is the end id 1009, kept; ids as transformers' greedy loop gives them);
        # stop_token_ids and stop strings still stop (ignore_eos was min_tokens = max_tokens here,
        # which masked them: [5..9] with stop id 387 ran to the length).
        def ids_of(**kw):
            st, _, data = server.post(P, dict({"model": "m", "temperature": 0, "return_token_ids": True}, **kw))
            choice = json.loads(data)["choices"][0] if st == 200 else {}
            return choice.get("token_ids"), choice.get("finish_reason"), choice.get("text")

        check(ids_of(prompt=[236], max_tokens=5, ignore_eos=True)[:2] == ([1009, 139, 738, 575, 792], "length"),
              f"ignore_eos keeps the end id and goes on: {ids_of(prompt=[236], max_tokens=5, ignore_eos=True)[:2]}")
        check(ids_of(prompt=[5, 6, 7, 8, 9], max_tokens=10, ignore_eos=True, stop_token_ids=[387])[:2] ==
              ([491, 446, 790, 387], "stop"), "ignore_eos: stop_token_ids still stop")
        full = ids_of(prompt=[5, 6, 7, 8, 9], max_tokens=8, ignore_eos=True)[2] or ""
        stopped = ids_of(prompt=[5, 6, 7, 8, 9], max_tokens=8, ignore_eos=True, stop=[full[3:6]])
        check(len(full) > 6 and stopped[1] == "stop" and stopped[2] == full[:3],
              f"ignore_eos: stop strings still stop ({full!r} -> {stopped[1:]!r})")
        draws = {completion() for _ in range(4)}
        check(len(draws) > 1, f"no temperature, no seed: draws differ ({len(draws)} distinct of 4)")
    finally:
        server.kill()

    # The checkpoint's generation_config.json sets the defaults (as vLLM takes them): temperature 0
    # there makes requests without one greedy; its top_p and top_k apply likewise.
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        shutil.copytree(args.model, model)
        gen_path = os.path.join(model, "generation_config.json")
        gen = json.load(open(gen_path))
        gen.update({"temperature": 0.7, "top_p": 0.5, "top_k": 3})
        json.dump(gen, open(gen_path, "w"))
        tuned = Server(args.binary, model)
        try:
            def tuned_text(**kw):
                st, _, data = tuned.post("/v1/completions", dict({"model": "m", "prompt": "hello", "max_tokens": 8,
                                                                  "ignore_eos": True, "seed": 5}, **kw))
                return json.loads(data)["choices"][0]["text"] if st == 200 else f"status {st}"

            default = tuned_text()
            check(default == tuned_text(temperature=0.7, top_p=0.5, top_k=3) and
                  default != tuned_text(temperature=1.0, top_p=1.0, top_k=0),
                  f"generation_config.json's temperature / top_p / top_k are the defaults ({default!r})")
            check(any("temperature 0.7" in line and "generation_config.json" in line for line in tuned.lines),
                  "the defaults are logged at start")
        finally:
            tuned.kill()

    # ---- overload, deadline, disconnect, drain: one sequence at a time, a slow engine ----
    # The long requests ignore EOS: without a temperature an HTTP request samples (OpenAI's default,
    # temperature 1, unseeded), and a drawn stop id ended a "long" request early now and then: the
    # overload's holders freed their slots (a third request got 200), a deadline never came.
    slow = Server(args.binary, args.model, ["--debug-step-latency-ms", "40", "--max-batch", "1", "--max-queue", "1"])
    try:
        C = "/v1/chat/completions"
        # A stream's first chunk (the role's) goes out with the first token's, after at least one
        # 40 ms step, as vLLM sends it: Open-AutoGLM times its first token from the first chunk, and
        # the role's came at once, so it read a few ms whatever the prefill took.
        conn = slow.conn(timeout=30)
        began = time.monotonic()
        conn.request("POST", C, body=json.dumps(chat_body(max_tokens=2, stream=True, ignore_eos=True)),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        first_event, waited = b"", None
        for line in resp:
            if line.startswith(b"data: "):
                first_event, waited = line, time.monotonic() - began
                break
        resp.read()
        conn.close()
        check(resp.status == 200 and b'"role":"assistant"' in first_event and waited is not None and waited >= 0.04,
              f"the role's chunk comes after the first step ({resp.status}, {waited}, {first_event[:120]!r})")
        # Deadline: query and header, 504 timeout_error.
        expect_error(slow, C + "?timeout=0.2", chat_body(max_tokens=500, ignore_eos=True), 504, "timeout", etype="timeout_error",
                     what="deadline (?timeout=0.2)")
        expect_error(slow, C, chat_body(max_tokens=500, ignore_eos=True), 504, "timeout", etype="timeout_error",
                     headers={"timeout": "200ms"}, what="deadline (timeout header)")

        # A stream cut by its deadline after it started: the error event, then data: [DONE] as every
        # stream ends (vLLM's order; it ended at the error event, and raw SSE clients waited on).
        st, _, data = slow.post(C + "?timeout=0.5", chat_body(max_tokens=500, stream=True, ignore_eos=True), timeout=30)
        events = [e for e in data.decode().split("\n\n") if e.startswith("data: ")]
        check(st == 200 and len(events) >= 3 and '"error"' in events[-2] and events[-1] == "data: [DONE]",
              f"a stream's deadline: the error event, then [DONE] ({st}, last {events[-2:]!r})")

        # Disconnect mid-stream frees the slot: the next request runs at once, not after 1000 steps.
        c = slow.conn(30)
        c.request("POST", C, body=json.dumps(chat_body(max_tokens=1000, stream=True, ignore_eos=True)),
                  headers={"Content-Type": "application/json", "x-request-id": "gone-1"})
        r = c.getresponse()
        first = r.readline()
        check(r.status == 200 and first.startswith(b"data: "), "stream started")
        c.sock.close()
        c.close()
        # The server learns of the disconnect at its next write (a step, 40 ms) and the earlier
        # deadline requests' cancellations land within a step too: until then this client may still
        # be at its quota (429). Held for the stream's 1000 steps it would be 40 s.
        t0 = time.monotonic()
        while True:
            st, _, data = slow.post(C, chat_body(max_tokens=3), timeout=30)
            if st != 429 or time.monotonic() - t0 > 10:
                break
            time.sleep(0.05)
        took = time.monotonic() - t0
        check(st == 200 and took < 10, f"after a disconnect the slot is free: {st} in {took:.1f}s")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("gone-1" in l and "CANCELLED" in l for l in slow.lines):
            time.sleep(0.1)
        check(any("gone-1" in l and "CANCELLED" in l for l in slow.lines), "disconnected stream logged CANCELLED")

        # Overload: one running, one queued, the third is 429 with Retry-After.
        holders = []
        for i in range(2):
            h = slow.conn(30)
            h.request("POST", C, body=json.dumps(chat_body(max_tokens=1000, stream=True, ignore_eos=True)),
                      headers={"Content-Type": "application/json", "x-request-id": f"holder-{i}"})
            holders.append(h)
            # Accepted (running, then queued) before the next: on a loaded machine a fixed pause let
            # the third request arrive first and be served.
            end = time.monotonic() + 10
            while time.monotonic() < end and not any(f"request_id=holder-{i}" in l and "accepted" in l
                                                     for l in slow.lines):
                time.sleep(0.05)
        st, hdrs, err = expect_error(slow, C, chat_body(max_tokens=2), 429, None, etype="rate_limit_error",
                                     what="overload")
        check(int(hdrs.get("retry-after", "0")) >= 1, f"429 carries Retry-After: {hdrs.get('retry-after')}")
        for h in holders:
            h.sock.close()
            h.close()

        # Drain: SIGTERM while a request runs; new requests 503, /health 503, the running one finishes.
        result = {}

        def long_request():
            result["r"] = slow.post(C, chat_body(max_tokens=60, ignore_eos=True), timeout=60)

        time.sleep(1.0)  # the holders' cancels reach the engine
        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(0.5)
        slow.terminate()
        time.sleep(0.5)
        st, hdrs, err = expect_error(slow, C, chat_body(), 503, None, etype="service_unavailable_error",
                                     what="draining")
        check(err is not None and err["code"] == "draining" and hdrs.get("retry-after") is not None,
              f"draining: code {err and err['code']}, Retry-After {hdrs.get('retry-after')}")
        st, _, _ = slow.request("GET", "/health")
        check(st == 503, f"/health while draining: {st}")
        t.join(60)
        check(result.get("r", (0,))[0] == 200, f"in-flight request finished during the drain: {result.get('r', (0,))[0]}")
        rc = slow.proc.wait(60)
        check(rc == 0, f"drained and exited 0 ({rc})")
    finally:
        slow.kill()

    return report()


if __name__ == "__main__":
    sys.exit(main())
