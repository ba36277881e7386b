#!/usr/bin/env python3
"""Reference tokenizer throughput on the same corpus and files as bench/tokenizer_bench.cc.

HF tokenizers (tokenizer.json), tiktoken (GLM-4 tokenizer.model), sentencepiece (ChatGLM3
tokenizer.model); one line per call, single thread (RAYON_NUM_THREADS=1, encode not encode_batch).
    python3 bench/hf_tokenizer_bench.py [--repeat 200]
"""
import argparse, json, os, sys, time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    import make_tokenizer_fixtures as fx
    import sentencepiece as spm
    import tiktoken
    from tokenizers import Tokenizer
    lines = json.load(open(os.path.join(ROOT, "tests/fixtures/tokenizer/corpus.json"), encoding="utf-8"))
    fdir = os.path.join(ROOT, "tests/fixtures/tokenizer")
    cases = []
    for name, d in [("glm4-tiny", os.path.join(ROOT, "models/glm4-tiny")), ("glm4-hf", os.path.join(fdir, "glm4-hf"))]:
        t = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        cases.append((name, "tokenizers " + __import__("tokenizers").__version__,
                      lambda s, t=t: t.encode(s, add_special_tokens=False).ids,
                      lambda ids, t=t: t.decode(ids, skip_special_tokens=False)))
    ranks = {}
    import base64
    for line in open(os.path.join(fdir, "glm4-tiktoken/tokenizer.model")):
        b, r = line.split()
        ranks[base64.b64decode(b)] = int(r)
    enc = tiktoken.Encoding("glm4", pat_str=fx.GLM4_PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(fx.GLM4_SPECIALS)})
    cases.append(("glm4-tiktoken", "tiktoken " + tiktoken.__version__,
                  lambda s: enc.encode(s, allowed_special="all"), lambda ids: enc.decode(ids)))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(fdir, "chatglm3-sp/tokenizer.model"))
    cases.append(("chatglm3-sp", "sentencepiece " + spm.__version__, lambda s: sp.encode(s), lambda ids: sp.decode(ids)))
    print(f"corpus: {len(lines)} lines, x{args.repeat} repeats, one line per call, 1 thread")
    print(f"{'name':16} {'library':22} {'tokens':>10} {'encode tok/s':>14} {'decode tok/s':>14}")
    for name, lib, encode, decode in cases:
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            encoded = [encode(s) for s in lines]
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            for ids in encoded:
                decode(ids)
        dec_s = time.perf_counter() - t0
        total = sum(len(e) for e in encoded) * args.repeat
        print(f"{name:16} {lib:22} {total:>10} {total / enc_s:>14.0f} {total / dec_s:>14.0f}")


if __name__ == "__main__":
    main()
