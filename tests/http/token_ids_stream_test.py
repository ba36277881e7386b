"""A model directory without a tokenizer streams each engine step's ids over HTTP (the choice's
`token_ids`), so a streaming client sees every step as it happens rather than nothing until the
end. With a tokenizer, `return_token_ids: true` (vLLM's spelling) does the same beside the text,
including steps whose ids decode to no text (--model-with-tokenizer: the glm4v fixture, whose tiny
tokenizer has no text for ids 248-255; the ids must equal transformers' recording), and a unary
answer's choice carries them all. Real binary on loopback; standard library only."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_test_util import Server  # noqa: E402


def stream_ids(server, body):
    c = server.conn()
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200, (r.status, r.read())
        ids, finish, usage, done = [], None, None, False
        stream_ids.chunks_without_ids = 0
        for raw in r.read().decode().split("\n\n"):
            if not raw.startswith("data: "):
                continue
            payload = raw[len("data: "):]
            if payload == "[DONE]":
                done = True
                continue
            chunk = json.loads(payload)
            assert "error" not in chunk, chunk  # an error mid-stream, with its message
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                ids.extend(choice.get("token_ids", []))
                stream_ids.chunks_without_ids += "token_ids" not in choice
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        return ids, finish, usage, done
    finally:
        c.close()


def stop_showing_log_on_failure(server):
    # A failure's own assertion rarely says why; the server's log does (which request, which refusal).
    if sys.exc_info()[0] is not None:
        sys.stderr.write("server log:\n" + server.log() + "\n")
    server.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True, help="a model directory without tokenizer files")
    parser.add_argument("--model-with-tokenizer", help="tests/fixtures/glm4v/tiny-safetensors-sharded")
    args = parser.parse_args()
    vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
    server = Server(args.binary, args.model)
    try:
        body = {"model": "m", "prompt": [5, 9, 2, 7], "max_tokens": 6, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0}
        ids, finish, usage, done = stream_ids(server, body)
        assert done, "no [DONE]"
        assert finish == "length", finish
        assert len(ids) == 6, ids
        assert all(0 <= i < vocab for i in ids), ids
        assert usage and usage["completion_tokens"] == 6, usage
        again, _, _, _ = stream_ids(server, body)
        assert again == ids, (again, ids)  # greedy: the same ids every time
    finally:
        stop_showing_log_on_failure(server)
    if args.model_with_tokenizer:
        expected = json.load(open(os.path.join(args.model_with_tokenizer, "..", "expected.json")))
        case = expected["text_cases"][0]
        server = Server(args.binary, args.model_with_tokenizer)
        try:
            body = {"model": "m", "prompt": case["input_ids"], "max_tokens": len(case["output_ids"]),
                    "temperature": 0, "ignore_eos": True, "stream": True, "return_token_ids": True,
                    "stream_options": {"include_usage": True}}
            ids, finish, usage, done = stream_ids(server, body)
            assert done and finish == "length", (done, finish)
            assert ids == case["output_ids"], (ids, case["output_ids"])
            # Every chunk says its ids ([] for the finish and a held-back text's flush): a client
            # counting steps by chunk must not count those.
            assert stream_ids.chunks_without_ids == 0, stream_ids.chunks_without_ids
            assert usage["completion_tokens"] == len(ids), usage
            # Unary: the choice carries the same ids (return_token_ids was dropped without a stream).
            unary = dict(body, stream=False)
            del unary["stream_options"]
            status, _, data = server.request("POST", "/v1/completions", body=unary)
            assert status == 200, (status, data)
            assert json.loads(data)["choices"][0]["token_ids"] == case["output_ids"], data
        finally:
            stop_showing_log_on_failure(server)
    print("token_ids_stream_test: OK")


if __name__ == "__main__":
    main()
