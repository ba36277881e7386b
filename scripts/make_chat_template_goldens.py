#!/usr/bin/env python3
"""Records what transformers renders for each chat template in tests/fixtures/chat_templates
(apply_chat_template(messages, tokenize=False, add_generation_prompt=...), the glm4-tiny tokenizer's
special tokens) over a fixed set of conversations, and for GLM-Z1's template the ids of the text
with the glm4-tiny tokenizer (add_special_tokens=False, as apply_chat_template tokenizes). A template that raises for
a conversation is recorded as an error. Also Python's json.dumps of a few values, for the engine's
`tojson`. runtime/tokenizer's jinja_chat_test compares glmserve's renderings with these.

    python3 scripts/make_chat_template_goldens.py   # writes tests/fixtures/chat_templates/goldens.json
"""
import glob
import json
import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import AutoTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "chat_templates")

# The template whose cases also carry ids (the tokenizer-level test serves it from a model dir).
IDS_FOR = "GLM-Z1-9B-0414.jinja"

CONVERSATIONS = [
    ([("user", "Hello")], True),
    ([("system", "You are helpful."), ("user", "Hi")], True),
    ([("user", "Q1"), ("assistant", "A1"), ("user", "Q2")], True),
    ([("system", ""), ("user", "x")], True),
    ([("user", "<think>inner</think>visible"), ("assistant", "<think>reasoning</think>answer"), ("user", "next")],
     True),
    ([("user", "{{ x }} {% if y %} literal {# c #}")], True),
    ([("user", "  leading and trailing  \n")], True),
    ([("user", "\u4f60\u597d\uff0c\u4e16\u754c \U0001F600")], True),
    ([("user", "a"), ("assistant", "b")], False),
    ([("system", "s1"), ("user", "u"), ("system", "s2"), ("user", "u2")], True),
    ([("user", "q"), ("observation", "{\"temperature\": 21}"), ("user", "q2")], True),
    ([("assistant", "only an assistant turn")], True),
    ([("user", "line1\nline2\n\n")], True),
    ([("user", "\u3000wide space\u3000"), ("assistant", "\u00a0nbsp\u00a0")], True),
]

DUMPS = [
    ({"name": "now", "parameters": {"type": "object", "properties": {}, "required": []}}, dict(indent=4)),
    ({"city": "\u4e0a\u6d77", "days": 1, "ok": True, "none": None, "x": 0.5}, dict(ensure_ascii=False)),
    ({"city": "\u4e0a\u6d77 \U0001F600", "list": [1, [2, []]]}, dict()),
    ({"b": 1, "a": [1, 2]}, dict(indent=2, sort_keys=True)),
    (["tab\t", "quote\"", "ctl\u0001"], dict(separators=(",", ":"))),
]


def main():
    tok = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "glm4-tiny"))
    cases = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.jinja"))):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for turns, add_generation_prompt in CONVERSATIONS:
            messages = [{"role": r, "content": c} for r, c in turns]
            case = {"template": os.path.basename(path), "messages": messages,
                    "add_generation_prompt": add_generation_prompt}
            try:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                               chat_template=source)
                case["text"] = text
                if os.path.basename(path) == IDS_FOR:
                    case["ids"] = tok.encode(text, add_special_tokens=False)
            except Exception as e:  # the template's raise_exception, or Jinja's own error
                case["error"] = f"{type(e).__name__}: {e}"
            cases.append(case)
    dumps = [{"value": v, "kwargs": kw, "text": json.dumps(v, **kw)} for v, kw in DUMPS]
    for d in dumps:
        if "separators" in d["kwargs"]:
            d["kwargs"]["separators"] = list(d["kwargs"]["separators"])
    out = os.path.join(FIXTURES, "goldens.json")
    with open(out, "w", encoding="utf-8") as f:  # one case a line: small, and diffs read well
        f.write('{"cases": [\n' + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + '\n],\n')
        f.write('"dumps": [\n' + ",\n".join(json.dumps(d, ensure_ascii=False) for d in dumps) + '\n]}\n')
    print(f"{out}: {len(cases)} cases ({sum('error' in c for c in cases)} raise), {len(dumps)} dumps")


if __name__ == "__main__":
    main()
