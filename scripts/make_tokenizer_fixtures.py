#!/usr/bin/env python3
"""Tokenizer fixtures for tests/tokenizer (deterministic; no model hub).

Writes tests/fixtures/tokenizer/:
  corpus.json            list of strings: ASCII, Chinese, emoji, mixed whitespace, numbers, code
  glm4-tiny/             -> reads models/glm4-tiny (tokenizer.json: ByteLevel(use_regex) pre-tokenizer)
  glm4-hf/               tokenizer.json with GLM-4-9B-chat-hf's structure: Split(GLM-4 regex,
                         Isolated) + ByteLevel(use_regex=false), post-processor [gMASK]<sop> $A
  glm4-tiktoken/         tokenizer.model in GLM-4-9B's tiktoken format (base64 token, rank), built
                         from the glm4-tiny ranks; special tokens numbered after the ranks
  chatglm3-sp/           sentencepiece tokenizer.model trained here (ChatGLM3-style specials)
  expected.json          reference ids / decodes / chat ids from HF tokenizers + transformers,
                         tiktoken, sentencepiece.
  long_runs.json         pieces thousands of bytes long and their BPE ids (HF tokenizers, tiktoken)
  chatglm3-sp-prefix/    chatglm3-sp's model with the dummy prefix on (as real ChatGLM2/3 models)
  sp_prefix.json         id sequences and their ChatGLM3 decodes with that model (specials kept / dropped);
                         `make_tokenizer_fixtures.py long_runs` writes these four alone.
"""
import base64, copy, json, os, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
TINY = os.path.join(ROOT, "models", "glm4-tiny")

GLM4_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>"]
CHATGLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                     "<|observation|>"]

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It's what we'll do; they're sure you've I'd I'm.",
    "IT'S LOUD AND WE'LL SHOUT",
    "你好，世界！",
    "我们今天去北京的天安门广场看升旗仪式。",
    "混合 mixed 文本 text 123 和 emoji 😀🎉",
    "👨‍👩‍👧‍👦 family, 🇨🇳 flag, ❤️ heart",
    "    leading spaces",
    "trailing spaces    ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four",
    "  \n  \n\n   x",
    "windows\r\nline\r\nendings",
    "numbers 1234567890 3.14159 -42 1e10 0x1F",
    "2024年10月1日 下午3点45分",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if __name__ == \"__main__\":\n\tmain()",
    "<html><body class=\"x\">&nbsp;</body></html>",
    "naïve café résumé Ångström",
    "Привет, мир! Γειά σου Κόσμε",
    "こんにちは世界 안녕하세요",
    "\u00a0non-breaking\u2003em-space\u3000ideographic",
    "a  b   c    d     e",
    "!!!???...,,,;;;:::",
    "<|user|>special tokens in text<|assistant|>[gMASK]<sop>",
    "",
    " ",
    "\n",
    "combining e\u0301 and \u0915\u094d\u0937 marks",
    "math ∑∫√∞ ≤≥≠ arrows →←↑↓",
    "JSON {\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "https://example.com/path?q=1&r=two#frag",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３",
]


def random_lines(n=200, seed=1234):
    """Random mixes of the characters the pre-tokenizer regexes treat differently (whitespace
    kinds and runs, newlines, contractions, letters, digit runs, CJK, emoji, marks, punctuation)."""
    import random
    rng = random.Random(seed)
    atoms = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2003", " \n ",
             "'s", "'T", "'re", "'ll", "'d", "'m", "'ve", "'", "a", "Zebra", "hello", "x", "ÄÖü", "naïve",
             "1", "12", "123", "1234567", "3.14", "-", "--", "!?", "...", "(", ")", "{}", "<>", "#",
             "中文", "的", "日本語", "한국어", "😀", "👍🏽", "🇯🇵", "e\u0301", "\u0915\u094d", "\u200d",
             "<|user|>", "[gMASK]", "sop", "ＡＢＣ", "١٢٣", "\u00bd", "_", "__init__", "/", "\\"]
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 12))) for _ in range(n)]


CORPUS = CORPUS + random_lines()

CONVERSATIONS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "你是一个乐于助人的助手。"},
     {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "2+2 equals 4."},
     {"role": "user", "content": "And in Chinese? 用中文回答 😀"}],
    [{"role": "system", "content": "Answer briefly.\nUse code when asked."},
     {"role": "user", "content": "Write a loop."},
     {"role": "assistant", "content": "for i in range(3):\n    print(i)"},
     {"role": "user", "content": "Now in C."},
     {"role": "assistant", "content": "for (int i = 0; i < 3; ++i) printf(\"%d\\n\", i);"},
     {"role": "user", "content": "  spaces  and\ttabs  "}],
]


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def hf_reference(dirpath):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    tok = Tokenizer.from_file(os.path.join(dirpath, "tokenizer.json"))
    enc = [tok.encode(s).ids for s in CORPUS]
    dec = [tok.decode(ids, skip_special_tokens=False) for ids in enc]
    at = AutoTokenizer.from_pretrained(dirpath)
    chats = []
    for conv in CONVERSATIONS:
        ids = at.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        chats.append(list(ids))
    return {"encode": enc, "decode": dec, "chat": chats}


def make_glm4_hf():
    d = os.path.join(OUT, "glm4-hf")
    os.makedirs(d, exist_ok=True)
    t = json.load(open(os.path.join(TINY, "tokenizer.json"), encoding="utf-8"))
    t = copy.deepcopy(t)
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": GLM4_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    t["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "[gMASK]", "type_id": 0}},
                                      {"SpecialToken": {"id": "<sop>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "[gMASK]", "type_id": 0}},
                                    {"SpecialToken": {"id": "<sop>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"[gMASK]": {"id": "[gMASK]", "ids": [1002], "tokens": ["[gMASK]"]},
                                              "<sop>": {"id": "<sop>", "ids": [1004], "tokens": ["<sop>"]}}}
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False)
    cfg = json.load(open(os.path.join(TINY, "tokenizer_config.json"), encoding="utf-8"))
    write_json(os.path.join(d, "tokenizer_config.json"), cfg)
    return d


def make_tiktoken():
    import jinja2, tiktoken
    d = os.path.join(OUT, "glm4-tiktoken")
    os.makedirs(d, exist_ok=True)
    t = json.load(open(os.path.join(TINY, "tokenizer.json"), encoding="utf-8"))
    bd = byte_decoder()
    ranks = {}
    for tokstr, rank in t["model"]["vocab"].items():
        ranks[bytes(bd[c] for c in tokstr)] = rank
    with open(os.path.join(d, "tokenizer.model"), "w") as f:
        for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(b).decode() + " " + str(r) + "\n")
    specials = {s: len(ranks) + i for i, s in enumerate(GLM4_SPECIALS)}
    template = json.load(open(os.path.join(TINY, "tokenizer_config.json")))["chat_template"]
    write_json(os.path.join(d, "tokenizer_config.json"),
               {"tokenizer_class": "ChatGLM4Tokenizer", "eos_token": "<|endoftext|>", "chat_template": template})
    enc = tiktoken.Encoding("glm4-fixture", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    # GLM-4-9B's tokenizer registers the specials as added tokens (parsed from text) and
    # tokenizer(text) prefixes [gMASK] <sop> (build_inputs_with_special_tokens).
    prefix = [specials["[gMASK]"], specials["<sop>"]]
    ids = [prefix + enc.encode(s, allowed_special="all") for s in CORPUS]
    dec = [enc.decode(x) for x in ids]
    tmpl = jinja2.Environment().from_string(template)
    chats = [enc.encode(tmpl.render(messages=c, add_generation_prompt=True), allowed_special="all")
             for c in CONVERSATIONS]
    return {"encode": ids, "decode": dec, "chat": chats}


def chatglm3_decode(sp, specials, ids):
    """ChatGLM3's decode: sentencepiece over each run of its ids, the special tokens as their text."""
    out, run = "", []
    inv = {v: k for k, v in specials.items()}
    for i in ids + [None]:
        if i is None or i in inv:
            out += sp.decode(run)
            run = []
            if i is not None:
                out += inv[i]
        else:
            run.append(i)
    return out


def make_sentencepiece():
    import sentencepiece as spm
    d = os.path.join(OUT, "chatglm3-sp")
    os.makedirs(d, exist_ok=True)
    sys.path.insert(0, ROOT)
    lines = []
    import inspect, textwrap
    for mod in ["json", "os", "re", "collections", "functools", "itertools", "string", "textwrap"]:
        m = __import__(mod)
        lines += [l for l in (inspect.getdoc(m) or "").splitlines() if l.strip()]
    lines += CORPUS * 3 + ["中文句子用于训练分词器。我们在这里写一些常见的汉字：的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处府南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"] * 5
    # A fixed path: the model proto records the trainer's input and prefix paths.
    tmp = os.path.join(tempfile.gettempdir(), "glmserve_sp_fixture")
    os.makedirs(tmp, exist_ok=True)
    if True:
        corpus = os.path.join(tmp, "train.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(l.replace("\n", " ") for l in lines if l))
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "sp"), vocab_size=1200, model_type="bpe",
            character_coverage=0.98, byte_fallback=True, normalization_rule_name="identity",
            add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
            allow_whitespace_only_pieces=True, user_defined_symbols=["\n", "\t", "\r"],
            num_threads=1, seed_sentencepiece_size=100000,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
        with open(os.path.join(tmp, "sp.model"), "rb") as f:
            model = f.read()
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    specials = {s: n + i for i, s in enumerate(CHATGLM3_SPECIALS)}
    write_json(os.path.join(d, "tokenizer_config.json"), {"tokenizer_class": "ChatGLMTokenizer",
                                                          "eos_token": "</s>"})
    # ChatGLM3's tokenizer (encode_special_tokens=False): text is plain sentencepiece, special
    # strings included; chat turns get their special ids from build_chat_input.
    # tokenizer(text) adds the prefix [gMASK] sop (ChatGLMTokenizer.build_inputs_with_special_tokens).
    enc = [[specials["[gMASK]"], specials["sop"]] + sp.encode(s) for s in CORPUS]

    decs = [chatglm3_decode(sp, specials, x) for x in enc]
    chats = []
    for conv in CONVERSATIONS:  # ChatGLM3's build_chat_input
        ids = [specials["[gMASK]"], specials["sop"]]
        for m in conv:
            ids += [specials["<|" + m["role"] + "|>"]] + sp.encode("\n") + sp.encode(m["content"])
        ids.append(specials["<|assistant|>"])
        chats.append(ids)
    return {"encode": enc, "decode": decs, "chat": chats, "sp_vocab_size": n}


# Generated replies as ChatGLM3 starts them ("▁" "\n" ...: the dummy prefix before a newline) and
# others, for a sentencepiece model whose normaliser adds the dummy prefix (real ChatGLM2/3 do).
PREFIX_TEXTS = ["\nHello world", "hello world", " two  spaces", "\n\n你好，世界", "x", "  ", "😀 emoji"]


def make_sentencepiece_prefix():
    """chatglm3-sp-prefix/: the chatglm3-sp model with add_dummy_prefix on, and sp_prefix.json: id
    sequences (the texts' encodings, a special id inside, leading "▁" pieces alone) and what the
    ChatGLM3 decode gives for them (sentencepiece per run, specials as text; with specials
    dropped, one run)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    d = os.path.join(OUT, "chatglm3-sp-prefix")
    os.makedirs(d, exist_ok=True)
    m = pb.ModelProto()
    with open(os.path.join(OUT, "chatglm3-sp", "tokenizer.model"), "rb") as f:
        m.ParseFromString(f.read())
    m.normalizer_spec.add_dummy_prefix = True
    model = m.SerializeToString()
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        f.write(model)
    write_json(os.path.join(d, "tokenizer_config.json"), {"tokenizer_class": "ChatGLMTokenizer", "eos_token": "</s>"})
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    specials = {s: n + i for i, s in enumerate(CHATGLM3_SPECIALS)}
    space = sp.piece_to_id("\u2581")
    seqs = [sp.encode(t) for t in PREFIX_TEXTS]
    seqs += [[space] + sp.encode("hi"), [space, space] + sp.encode("hi"),
             sp.encode("hi") + [specials["<|user|>"]] + sp.encode("there"),
             [specials["<|assistant|>"]] + sp.encode("\nok")]

    write_json(os.path.join(OUT, "sp_prefix.json"),
               {"ids": seqs, "decode": [chatglm3_decode(sp, specials, x) for x in seqs],
                "decode_skip_special": [sp.decode([i for i in x if i < n]) for x in seqs]})


# Single pre-tokenizer pieces thousands of bytes long (runs of one class the regexes never split):
# the BPE merge loop's cost on them, and its ties between equal pairs all along a run.
LONG_RUNS = ["=" * 4000, " " * 4000 + "x", "ab" * 2000, "中文" * 1000, "!?" * 2000, "a" * 3000 + " " + "=" * 1000,
             "\n" * 3000, "😀" * 500, "-" * 3999 + ">"]


def make_long_runs():
    """long_runs.json: the texts and their ids from HF tokenizers (glm4-tiny, glm4-hf) and tiktoken."""
    import tiktoken
    from tokenizers import Tokenizer
    out = {"texts": LONG_RUNS}
    for name, d in [("glm4-tiny", TINY), ("glm4-hf", os.path.join(OUT, "glm4-hf"))]:
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        out[name] = [tok.encode(s).ids for s in LONG_RUNS]
    ranks = {}
    with open(os.path.join(OUT, "glm4-tiktoken", "tokenizer.model")) as f:
        for line in f:
            b64, rank = line.split()
            ranks[base64.b64decode(b64)] = int(rank)
    specials = {s: len(ranks) + i for i, s in enumerate(GLM4_SPECIALS)}
    enc = tiktoken.Encoding("glm4-fixture", pat_str=GLM4_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    prefix = [specials["[gMASK]"], specials["<sop>"]]
    out["glm4-tiktoken"] = [prefix + enc.encode(s) for s in LONG_RUNS]
    with open(os.path.join(OUT, "long_runs.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    if sys.argv[1:] == ["long_runs"]:  # the four below the docstring's expected.json, from those before
        make_long_runs()
        make_sentencepiece_prefix()
        return
    os.makedirs(OUT, exist_ok=True)
    write_json(os.path.join(OUT, "corpus.json"), CORPUS)
    write_json(os.path.join(OUT, "conversations.json"), CONVERSATIONS)
    import tokenizers, tiktoken, sentencepiece, transformers
    expected = {
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__,
                     "tiktoken": tiktoken.__version__, "sentencepiece": sentencepiece.__version__},
        "glm4-tiny": hf_reference(TINY),
        "glm4-hf": hf_reference(make_glm4_hf()),
        "glm4-tiktoken": make_tiktoken(),
        "chatglm3-sp": make_sentencepiece(),
    }
    for k in ["glm4-tiny", "glm4-hf", "glm4-tiktoken", "chatglm3-sp"]:
        rt = sum(1 for s, d in zip(CORPUS, expected[k]["decode"]) if s == d)
        print(f"{k}: {len(CORPUS)} lines, python round trip {rt}/{len(CORPUS)}, "
              f"{sum(len(x) for x in expected[k]['encode'])} tokens")
    write_json(os.path.join(OUT, "expected.json"), expected)
    make_long_runs()
    make_sentencepiece_prefix()


if __name__ == "__main__":
    main()
