#!/usr/bin/env python3
"""Reference data for the libquant tokenizer, from the Python `tokenizers` library.

  tok_reference.py corpus > tests/fixtures/tok_input.jsonl
      the fixed test corpus (one JSON object per line: {"text"}, {"hex"} or {"ids"})
  tok_reference.py random SEED COUNT [SPECIALS...] > random.jsonl
      a randomized corpus (mixed scripts, whitespace, special tokens, random ids)
  tok_reference.py expected TOKENIZER_JSON [TOKENIZER_CONFIG_JSON] < in.jsonl > expected.jsonl
      the expected output of tests/gen_tok for every input line; with a config, its
      named special tokens are registered as transformers does (see named_specials)
  tok_reference.py synth OUTDIR
      write the two small synthetic tokenizers tok_synth_a.json (SentencePiece style:
      byte fallback, Metaspace "first" with split, NFKC, added tokens with
      lstrip/rstrip/single_word/normalized), tok_synth_b.json (byte level with
      Lowercase/Strip/NFD normalizers, every Split behavior, RobertaProcessing) and
      tok_synth_c.json (Whitespace, WhitespaceSplit, Punctuation, Digits and
      BertPreTokenizer, no decoder, BertProcessing, unk without fuse)
  tok_reference.py expected-transformers DIR < in.jsonl > expected.jsonl
      the same from transformers' AutoTokenizer.from_pretrained(DIR) (tokenizer(text),
      decode(ids), decode(ids, skip_special_tokens=True)); compare with gen_tok -5
      when transformers >= 5 is installed, plain gen_tok otherwise
  tok_reference.py compare-transformers DIR < in.jsonl
      report where transformers' AutoTokenizer(DIR) disagrees with `tokenizers`

Expected lines are {"ids","ids_nospecial","decoded","decoded_skip"} for texts
(ids = encode(text).ids with special tokens, decoded = decode(ids) with and
without skip_special_tokens) and {"decoded","decoded_skip"} for id lists,
written with json.dumps(separators=(",", ":")) (ensure_ascii).  Bytes given as
"hex" are decoded with errors="replace" first, as a Python caller would.

Copyright (c) the libquant authors.  MIT license.
"""
import json
import random
import sys


def dumps(o):
    return json.dumps(o, separators=(",", ":"), ensure_ascii=True)


def corpus():
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 20
    items = [
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        "\t",
        "Hello world",
        "Hello, world!",
        " Hello world",
        "   leading spaces",
        "trailing spaces   ",
        "Tell a light-hearted joke",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure it's fine, isn't it? We'll see. They're here. I've been. He'd go. YOU'RE LOUD. IT'S",
        "don't DON'T Don't",
        "multiple   spaces    between     words",
        "tabs\tand\t\tmore\ttabs",
        "line one\nline two\r\nline three\rline four",
        "  \n  indented\n    more indented\n",
        "a\n\n\n\nb",
        "    ",
        "x" * 300,
        long_word,
        "1234567890",
        "3.14159265358979 and 2,718,281 and -42 and 1e10 and 0x1F",
        "Numbers: 1 12 123 1234 12345 123456 1234567",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }  // dot product",
        "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }",
        "<html><body><div class=\"x\">Hi &amp; bye</div></body></html>",
        '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
        "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
        "emoji: 😀 🤗 👍🏽 🇫🇷 👨‍👩‍👧‍👦 ❤️",
        "🤗🤗🤗",
        "日本語のテキストです。東京は大きい。",
        "中文文本，包括标点符号。你好，世界！",
        "한국어 텍스트입니다. 안녕하세요!",
        "Ελληνικά και Русский текст и українська",
        "مرحبا بالعالم، كيف حالك؟",
        "עברית: שלום עולם",
        "हिन्दी पाठ: नमस्ते दुनिया",
        "ภาษาไทย สวัสดีชาวโลก",
        "café naïve résumé Zürich Ångström façade",
        "cafe\u0301 nai\u0308ve e\u0301\u0301 a\u030a",
        "precomposed \u00e9 vs decomposed e\u0301",
        "ligatures ﬁ ﬂ and fullwidth ＡＢＣ１２３ and ① ㎏ ™",
        "Zalgo: Z̴̡̧a̷̛̬l̵̰̈g̶̣̊o̸̜̕",
        "unicode spaces: a\u00a0b\u2003c\u3000d\u2009e\u200bf\u202fg\u205fh",
        "line sep\u2028para sep\u2029nel\u0085end",
        "control \u0001\u0002\u001b[0m chars \u007f",
        "nul \u0000 byte",
        "mixed English and 日本語 and العربية and 🤗 in one line",
        "¡Hola! ¿Qué tal? Ça va. Grüße. Øre. Æble.",
        "math: ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷ ∂ ∇ π θ",
        "currency: $100 €50 £30 ¥1000 ₹500 ₿",
        "quotes: “smart” ‘single’ «guillemets» „low“",
        "dashes: - – — ‒ ― and ellipsis …",
        "<|begin_of_text|>Hello<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
        "text <|eot_id|> more text",
        " <|eot_id|> ",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
        "<|endoftext|>",
        "<think>\nreasoning\n</think>\n\nanswer",
        "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
        "<bos><eos><pad><unk>",
        "<s>[INST] Hello [/INST] Hi</s>",
        "<s> x </s>",
        "<s>",
        "a<s>b</s>c",
        "<unk>",
        "<|eot_id",
        "<<|eot_id|>>",
        "<0x41> literal byte token text",
        "▁ already has metaspace ▁▁",
        "Ġ already has byte-level char",
        "The year 2024 was 366 days; 1/2 = 0.5",
        "snake_case_identifier camelCaseIdentifier PascalCase SCREAMING_CASE",
        "https://huggingface.co/meta-llama/Llama-3.1-8B?x=1&y=2#frag",
        "email: someone@example.com, phone: +1 (555) 123-4567",
        "'s 't 're 've 'm 'll 'd",
        "'S 'T 'RE 'VE 'M 'LL 'D",
        "word's words' 'quoted'",
        "a" + " " * 40 + "b",
        "\n \n \n",
        " \n",
        "\n ",
        "x\n\n  y",
        "!!!???...,,,;;;:::",
        "((([[[{{{}}}]]])))",
        "    def indented():\n        pass\n",
        "😀" * 30,
        "日" * 100,
        "Ǆ ǅ ǆ İ ı ß ẞ ﬀ",
        # added-token flags of the synthetic tokenizers
        "<tool>", "a <tool> b", "a   <tool>   b", "<tool><tool>", " \n<tool>\n ",
        "[word]", "a [word] b", "x[word]y", "a[word] b", "é[word]", "1[word]", "[word][word]",
        "hello world", "say hello world now", "HELLO WORLD", "hello  world", "the brown fox brown",
        "1234567 and 12 and ``quoted``", "  Hello, World-wide; test:case 123 <mask>  x <mask>",
        "a-b--c,,d;;e::f", "UPPER Ünïcödé 12-34",
    ]
    # whitespace and format characters where regex engines may disagree
    for c in ["\u0085", "\u180e", "\u200b", "\ufeff", "\u1680", "\u2007", "\u000b", "\u001c"]:
        items += ["a%sb" % c, "a %s b" % c, "%s\n%s" % (c, c), "x%s%s " % (c, c)]
    out = [{"text": s} for s in items]
    # raw bytes, some invalid UTF-8
    for h in ["6869ff6869", "c328", "e28228", "f0288cbc", "80", "c0af", "eda080", "f4908080",
              "48656c6c6fe2", "41f09f98", "fffe", "e0a0", "20c2a020"]:
        out.append({"hex": h})
    # decode-only id lists
    out += [{"ids": []}, {"ids": [0]}, {"ids": [1, 2, 3]}, {"ids": [100, 200, 300, 400]},
            {"ids": [-1, 5, 99999999]}]
    return out


SCRIPTS = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF),
    (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
    (0x1100, 0x11FF), (0x2000, 0x206F), (0x2100, 0x21FF), (0x3000, 0x303F), (0x3040, 0x30FF),
    (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F),
    (0x1F900, 0x1F9FF),
]
WS = [" ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", " \n "]
WORDS = ["the", "The", " of", "and", "Hello", "world", "tokenizer", "it's", "we'll", "HTML",
         "http://x.y/z", "42", "3.14", "1234567", "def", "return", "(x)", "{}", "[]", "::",
         "é", "e\u0301", "ﬁ", "１２", "日本", "😀", "👍🏽", "ab" * 10]


def random_text(rng, specials):
    parts = []
    for _ in range(rng.randint(0, 12)):
        r = rng.random()
        if r < 0.35:
            parts.append(rng.choice(WORDS))
        elif r < 0.55:
            parts.append(rng.choice(WS))
        elif r < 0.65 and specials:
            parts.append(rng.choice(specials))
        else:
            lo, hi = rng.choice(SCRIPTS)
            parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6))))
    s = "".join(parts)
    return "".join(c for c in s if not 0xD800 <= ord(c) <= 0xDFFF)


def random_corpus(seed, count, specials):
    rng = random.Random(seed)
    out = []
    for i in range(count):
        r = rng.random()
        if r < 0.8:
            out.append({"text": random_text(rng, specials)})
        elif r < 0.9:
            out.append({"hex": bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 12))).hex()})
        else:
            out.append({"ids": [rng.randint(0, 262200) if rng.random() < 0.3 else rng.randint(0, 400)
                                for _ in range(rng.randint(0, 10))]})
    return out


def named_specials(cfg):
    """The special tokens transformers registers with the backend tokenizer: the
    named ones of tokenizer_config.json (or the tokenizer class's defaults),
    additional_special_tokens and extra_special_tokens, as special, not
    normalized added tokens (replacing the flags of an existing added token)."""
    from tokenizers import AddedToken
    out = []

    def add(v):
        if isinstance(v, dict):
            out.append(AddedToken(v["content"], single_word=v.get("single_word", False),
                                  lstrip=v.get("lstrip", False), rstrip=v.get("rstrip", False),
                                  normalized=v.get("normalized", False), special=True))
        elif isinstance(v, str) and v:
            out.append(AddedToken(v, special=True, normalized=False))

    gemma = cfg.get("tokenizer_class") in ("GemmaTokenizer", "GemmaTokenizerFast")
    for k in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]:
        if k not in cfg and gemma and k == "mask_token":
            add("<mask>")
        else:
            add(cfg.get(k))
    for v in cfg.get("additional_special_tokens") or []:
        add(v)
    e = cfg.get("extra_special_tokens")
    for v in (e.values() if isinstance(e, dict) else e or []):
        add(v)
    return out


def expected(path, config=None):
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(path)
    if config:
        with open(config, encoding="utf-8") as f:
            specials = named_specials(json.load(f))
        if specials:
            tk.add_special_tokens(specials)
        with open(config, encoding="utf-8") as f:
            cfg = json.load(f)
        if isinstance(cfg.get("add_bos_token"), bool) or isinstance(cfg.get("add_eos_token"), bool):
            # transformers rebuilds the template from these (update_post_processor)
            from tokenizers import processors
            sp = []
            single = "$A:0"
            bos, eos = cfg.get("bos_token"), cfg.get("eos_token")
            bos = bos.get("content") if isinstance(bos, dict) else bos
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if cfg.get("add_bos_token") is True and bos is not None:
                single = bos + ":0 " + single
                sp.append((bos, tk.token_to_id(bos)))
            if cfg.get("add_eos_token") is True and eos is not None:
                single = single + " " + eos + ":0"
                sp.append((eos, tk.token_to_id(eos)))
            tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=sp)
    for line in sys.stdin:
        o = json.loads(line)
        if "ids" in o:
            ids = [i for i in o["ids"] if i >= 0]  # tokenizers takes u32; negatives never exist
            print(dumps({"decoded": tk.decode(ids, skip_special_tokens=False),
                         "decoded_skip": tk.decode(ids, skip_special_tokens=True)}))
            continue
        text = o["text"] if "text" in o else bytes.fromhex(o["hex"]).decode("utf-8", "replace")
        ids = tk.encode(text, add_special_tokens=True).ids
        ids2 = tk.encode(text, add_special_tokens=False).ids
        print(dumps({"ids": ids, "ids_nospecial": ids2,
                     "decoded": tk.decode(ids, skip_special_tokens=False),
                     "decoded_skip": tk.decode(ids, skip_special_tokens=True)}))


SYNTH_TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Hello world, hello tokenizer! Numbers 12345 and 3.14-2.71.",
    "caf\u00e9 na\u00efve Z\u00fcrich, don't stop; it's fine, they're here.",
    "def f(x):\n    return x * 2  # comment\n",
]


def synth(outdir):
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)
    # A: SentencePiece-like BPE with byte fallback
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("``", '"'),
                                          normalizers.Replace(Regex("[0-9]{4,}"), "#")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    tk.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="first", split=True),
                                    decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.train_from_iterator(SYNTH_TEXT, trainers.BpeTrainer(vocab_size=220, special_tokens=["<unk>", "<s>", "</s>"]))
    j = json.loads(tk.to_str())
    vocab = j["model"]["vocab"]
    for b in range(256):
        vocab.setdefault("<0x%02X>" % b, len(vocab))
    tk = Tokenizer.from_str(json.dumps(j))
    tk.add_special_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, special=True, normalized=False)])
    tk.add_tokens([AddedToken("[word]", single_word=True, normalized=False),
                   AddedToken("hello world", normalized=True, special=False),
                   AddedToken("▁brown", normalized=True)])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
                                                      special_tokens=[("<s>", 1), ("</s>", 2)])
    tk.save(outdir + "/tok_synth_a.json")
    # B: byte level with every Split behavior
    tk = Tokenizer(models.BPE(ignore_merges=False))
    tk.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.NFD(), normalizers.Lowercase(),
                                          normalizers.Prepend("^")])
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex("[0-9]"), behavior="isolated"),
        pre_tokenizers.Split(pattern=",", behavior="removed"),
        pre_tokenizers.Split(pattern="-", behavior="merged_with_previous"),
        pre_tokenizers.Split(pattern=Regex("[;:]"), behavior="merged_with_next"),
        pre_tokenizers.Split(pattern=Regex("[a-z]"), behavior="contiguous", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(SYNTH_TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.RobertaProcessing(("</s>", 1), ("<s>", 0))
    tk.add_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tk.save(outdir + "/tok_synth_b.json")
    # C: the character-class pre-tokenizers, no decoder (tokens joined by spaces)
    pres = [pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("merged_with_previous"),
                                     pre_tokenizers.Digits(individual_digits=True)]),
            pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=False),
                                     pre_tokenizers.Punctuation("contiguous")]),
            pre_tokenizers.BertPreTokenizer()]
    tk = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=False))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence(pres)
    tk.train_from_iterator(SYNTH_TEXT, trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    tk.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    tk.save(outdir + "/tok_synth_c.json")


def expected_transformers(d):
    from transformers import AutoTokenizer
    at = AutoTokenizer.from_pretrained(d)
    for line in sys.stdin:
        o = json.loads(line)
        if "ids" in o:
            ids = [i for i in o["ids"] if i >= 0]
            print(dumps({"decoded": at.decode(ids), "decoded_skip": at.decode(ids, skip_special_tokens=True)}))
            continue
        text = o["text"] if "text" in o else bytes.fromhex(o["hex"]).decode("utf-8", "replace")
        ids = at(text)["input_ids"]
        ids2 = at(text, add_special_tokens=False)["input_ids"]
        print(dumps({"ids": ids, "ids_nospecial": ids2, "decoded": at.decode(ids),
                     "decoded_skip": at.decode(ids, skip_special_tokens=True)}))


def compare_transformers(d):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    tk = Tokenizer.from_file(d + "/tokenizer.json")
    at = AutoTokenizer.from_pretrained(d)
    n = bad = 0
    for line in sys.stdin:
        o = json.loads(line)
        if "ids" in o:
            continue
        text = o["text"] if "text" in o else bytes.fromhex(o["hex"]).decode("utf-8", "replace")
        n += 1
        a = tk.encode(text).ids
        b = at(text)["input_ids"]
        da, db = tk.decode(a, skip_special_tokens=False), at.decode(a)
        da2, db2 = tk.decode(a, skip_special_tokens=True), at.decode(a, skip_special_tokens=True)
        if a != b or da != db or da2 != db2:
            bad += 1
            print("differs: %r\n  tokenizers:   %s %r\n  transformers: %s %r" % (text, a, da, b, db))
    print("%d of %d texts differ" % (bad, n))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "corpus":
        for o in corpus():
            print(dumps(o))
    elif len(sys.argv) >= 4 and sys.argv[1] == "random":
        for o in random_corpus(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]):
            print(dumps(o))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "expected":
        expected(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "synth":
        synth(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "expected-transformers":
        expected_transformers(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "compare-transformers":
        compare_transformers(sys.argv[2])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
