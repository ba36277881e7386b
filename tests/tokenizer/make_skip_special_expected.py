#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/skip_special_expected.json: transformers' decode with and without
skip_special_tokens on the tokenizer.json fixtures, for tests/tokenizer/skip_special_test.cc.

Which ids decode(skip_special_tokens=True) drops decides the server's response text (HTTP/gRPC
text, `generate`'s text, the streamed deltas). transformers (TokenizersBackend, i.e. HF tokenizers)
drops the added tokens marked "special" and keeps the others: GLM-4.1V's <think>, </think>,
<answer>, </answer> are added but not special, and the Open-AutoGLM agent reads its action out of
<answer>...</answer> in the text.

Cases:
  tokenizers  glm4v (tests/fixtures/glm4v/tiny-safetensors-sharded), glm4-tiny (models/glm4-tiny),
              glm4-hf (tests/fixtures/tokenizer/glm4-hf): every id's skip flag (an id is skipped
              when decode([id]) is text and decode([id], skip_special_tokens=True) is empty), and
              id sequences (the glm4v chat fixture's greedy outputs, all added tokens between
              text, seeded random mixes) with both decodes.
  config_variants  the glm4v tokenizer.json with a changed tokenizer_config.json (what else makes a
              token special in transformers: added_tokens_decoder "special": true, "*_token" keys,
              an extra_special_tokens object; what does not: "special": false over a special
              token, additional_special_tokens / extra_special_tokens lists); the test writes the
              same files to a scratch directory and compares.

The tiktoken and sentencepiece fixtures are not here: transformers loads those formats only with
the checkpoints' remote code (ChatGLM4Tokenizer, ChatGLMTokenizer), which is not in the fixtures.

Run from anywhere: python3 tests/tokenizer/make_skip_special_expected.py
"""
import json
import os
import random
import shutil
import tempfile
import warnings

warnings.filterwarnings("ignore")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "skip_special_expected.json")
GLM4V = os.path.join(ROOT, "tests", "fixtures", "glm4v", "tiny-safetensors-sharded")
DIRS = {
    "glm4v": GLM4V,
    "glm4-tiny": os.path.join(ROOT, "models", "glm4-tiny"),
    "glm4-hf": os.path.join(ROOT, "tests", "fixtures", "tokenizer", "glm4-hf"),
}


def entry(token_id, content, special):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


# name -> keys merged into the glm4v fixture's tokenizer_config.json. Ids: 40 'I' (a vocab token),
# 236-239 <think> </think> <answer> </answer> (added, not special), 247 <|user|> (added, special).
CONFIG_VARIANTS = {
    "added_tokens_decoder_special_true": {"added_tokens_decoder": {"238": entry(238, "<answer>", True)}},
    "added_tokens_decoder_special_false": {"added_tokens_decoder": {"247": entry(247, "<|user|>", False)}},
    "added_tokens_decoder_vocab_id": {"added_tokens_decoder": {"40": entry(40, "I", True)}},
    "added_tokens_decoder_other_content": {"added_tokens_decoder": {"238": entry(238, "<zzz>", True)}},
    "added_tokens_decoder_no_special_key": {"added_tokens_decoder": {"238": {"content": "<answer>"}}},
    "eos_token_non_special_added": {"eos_token": "<think>"},
    "eos_token_added_token_object": {"eos_token": {"__type": "AddedToken", "content": "<think>", "special": True}},
    "pad_token_vocab_token": {"pad_token": "I"},
    "named_tokens": {"bos_token": "</think>", "unk_token": "</answer>", "mask_token": "<answer>"},
    "model_specific_token": {"image_token": "<answer>"},
    "extra_special_tokens_object": {"extra_special_tokens": {"foo_token": "</answer>"}},
    "additional_special_tokens_list": {"additional_special_tokens": ["<answer>", "</answer>"]},
    "extra_special_tokens_list": {"extra_special_tokens": ["<think>"]},
    "token_not_in_vocab": {"eos_token": "<notthere>"},
}


def sequences(tok, vocab_size, added_ids, extra=()):
    """Id sequences to decode: `extra`, every added token between text, seeded random mixes."""
    seqs = [list(s) for s in extra]
    text_ids = tok("Hi there!", add_special_tokens=False)["input_ids"]
    seqs.append([i for a in added_ids for i in [a] + text_ids])
    rng = random.Random(1234)
    for _ in range(40):
        n = rng.randint(1, 16)
        seqs.append([rng.choice(added_ids) if rng.random() < 0.35 else rng.randrange(vocab_size) for _ in range(n)])
    return seqs


def describe(tok, seqs):
    ids = sorted(set(tok.get_vocab().values()))
    skipped = [i for i in ids if tok.decode([i]) != "" and tok.decode([i], skip_special_tokens=True) == ""]
    return {
        "skipped_ids": skipped,
        "vocab_size": max(ids) + 1,
        "sequences": [{"ids": s, "decode": tok.decode(s), "decode_skip_special": tok.decode(s, skip_special_tokens=True)}
                      for s in seqs],
    }


def main():
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    chat = json.load(open(os.path.join(ROOT, "tests", "fixtures", "glm4v", "chat_expected.json")))
    outputs = [c["output_ids"] for c in chat["conversations"]]
    out = {"versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
           "tokenizers": {}, "config_variants": {}}
    for name, d in DIRS.items():
        tok = AutoTokenizer.from_pretrained(d)
        added = sorted(tok.added_tokens_decoder.keys())
        vocab_size = max(tok.get_vocab().values()) + 1
        out["tokenizers"][name] = describe(tok, sequences(tok, vocab_size, added, outputs if name == "glm4v" else ()))
        print(name, "skipped ids", out["tokenizers"][name]["skipped_ids"])

    base_cfg = json.load(open(os.path.join(GLM4V, "tokenizer_config.json")))
    tok = AutoTokenizer.from_pretrained(GLM4V)
    added = sorted(tok.added_tokens_decoder.keys())
    seqs = [[40, 41] + added]
    base_vocab_size = max(tok.get_vocab().values()) + 1
    with tempfile.TemporaryDirectory() as tmp:
        for name, update in CONFIG_VARIANTS.items():
            d = os.path.join(tmp, name)
            os.makedirs(d)
            shutil.copy(os.path.join(GLM4V, "tokenizer.json"), d)
            cfg = dict(base_cfg, **update)
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump(cfg, f)
            v = describe(AutoTokenizer.from_pretrained(d), seqs)
            # Only the ids of the base vocabulary: a token string that is nowhere in it becomes a new
            # id past it in transformers, which the model cannot produce.
            v["skipped_ids"] = [i for i in v["skipped_ids"] if i < base_vocab_size]
            v["vocab_size"] = base_vocab_size
            out["config_variants"][name] = {"tokenizer_config": cfg, **v}
            print(name, "skipped ids", v["skipped_ids"])
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
