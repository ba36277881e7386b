"""Model ids over HTTP, on the real binary over loopback with the official `openai` SDK:
without --served-model-name the model directory's name is listed, retrievable
(client.models.retrieve: GET /v1/models/{id} was a 404 "no route") and any `model` is taken; with
--served-model-name A,B both are listed and retrievable, a request naming either is answered and
echoes it, and one naming another id gets 404 model_not_found naming `model` (it was answered as
if the id were served). Exit 77 = skipped (no openai package / no model)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_test_util import Server  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    try:
        import openai
    except ImportError:
        print("no openai package; skipped")
        return 77
    if not os.path.isdir(args.model):
        print("no model; skipped")
        return 77
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            failures.append(what)

    directory = os.path.basename(os.path.normpath(args.model))
    server = Server(args.binary, args.model)
    try:
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
        check([m.id for m in client.models.list().data] == [directory], "the directory's name is listed")
        check(client.models.retrieve(directory).id == directory, "and retrieved (GET /v1/models/{id})")
        try:
            client.models.retrieve("other")
            check(False, "an id not listed is not retrieved")
        except openai.NotFoundError as e:
            check(e.body.get("code") == "model_not_found", f"an id not listed: 404 model_not_found ({e.body})")
        reply = client.completions.create(model="anything", prompt="hi", max_tokens=2)
        check(reply.model == "anything", "without --served-model-name any model id is taken")
    finally:
        server.stop()

    server = Server(args.binary, args.model, ["--served-model-name", "autoglm-phone-9b,glm-4"])
    try:
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
        check([m.id for m in client.models.list().data] == ["autoglm-phone-9b", "glm-4"], "both names listed")
        check(client.models.retrieve("glm-4").id == "glm-4", "a served name is retrieved")
        for name in ("autoglm-phone-9b", "glm-4"):
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=2)
            check(reply.model == name, f"a request naming {name} is answered and echoes it")
        try:
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            check(False, "a model not served is refused")
        except openai.NotFoundError as e:
            check(e.body.get("code") == "model_not_found" and e.body.get("param") == "model" and
                  "gpt-4" in e.body.get("message", "") and "autoglm-phone-9b, glm-4" in e.body.get("message", ""),
                  f"a model not served: 404 model_not_found naming model and the served ids ({e.body})")
        try:
            client.models.retrieve(directory)
            check(False, "the directory's name is not served once names are given")
        except openai.NotFoundError:
            check(True, "the directory's name is not served once names are given")
    finally:
        server.stop()
    if failures:
        print(f"served_models_test: {len(failures)} FAILED")
        return 1
    print("served_models_test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
