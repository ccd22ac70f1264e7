#!/usr/bin/env python3
"""Render many conversations with transformers' own chat-template code and write
the expected outputs as fixtures for tests/cli_template.sh.

    python3 tests/template_reference.py            # writes tests/fixtures/template_expected_*.jsonl
    python3 tests/template_reference.py --check    # only compare with the committed fixtures

Needs: pip install transformers jinja2 (no torch).  Templates and special tokens come
from tests/fixtures/templates/<name>.json (tokenizer_config.json subsets).  For the
templates whose full tokenizer files are in ../shared/fixtures/tokenizers/<name>/, the
script also renders through AutoTokenizer(...).apply_chat_template and checks that
both ways agree, and that the special tokens match the tokenizer's special_tokens_map.

Each output line: {"case", "messages", "add_generation_prompt", "tools", "extra",
"expected"} or, when transformers raises, "error" (the exception text when the template
raised it with raise_exception(), else "").

Copyright (c) the libquant authors.  MIT license.
"""
import copy
import gzip
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TDIR = os.path.join(ROOT, "tests", "fixtures", "templates")
OUT = os.path.join(ROOT, "tests", "fixtures")
SHARED = os.environ.get("LQ_SHARED", os.path.join(ROOT, "..", "shared"))
TOKEN_KEYS = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
NOW = 1721952000  # 2024-07-26, for strftime_now (unused by these templates)

try:
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template
    from transformers.tokenization_utils_base import _normalize_chat_messages
except ImportError as e:
    print("skipping template reference: python package missing (%s)" % e, file=sys.stderr)
    sys.exit(77)

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["location"]}}},
    {"type": "function", "function": {
        "name": "search",
        "description": "Search the web \u2014 \"quoted\" & <tagged>",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}}}},
]

U = lambda s: {"role": "user", "content": s}
A = lambda s: {"role": "assistant", "content": s}
S = lambda s: {"role": "system", "content": s}

SPECIAL = "Quotes ' \" and \\backslash\\, braces {{ x }} {% if %} {# c #}, tabs\tand\nnewlines\r\n end"
UNICODE = "caf\u00e9 na\u00efve \u4f60\u597d\u4e16\u754c \U0001F600\U0001F680 \u0645\u0631\u062d\u0628\u0627 e\u0301 \u2028sep\u2029 \u00a0nbsp\u00a0 \x7f\x01"

# (id, messages, extra-kwargs, tools?)
BASE = [
    ("user", [U("Hello!")]),
    ("system_user", [S("You are a helpful assistant."), U("Tell me a joke.")]),
    ("multi", [U("Hi"), A("Hello! How can I help?"), U("What is 2+2?")]),
    ("system_multi", [S("Be terse."), U("Hi"), A("Hello."), U("Name a color."), A("Blue."), U("Another?")]),
    ("assistant_last", [U("Say yes."), A("Yes.")]),
    ("system_assistant_last", [S("sys"), U("q"), A("a")]),
    ("special_chars", [S(SPECIAL), U(SPECIAL), A(SPECIAL), U("  padded with spaces  \n\n")]),
    ("unicode", [U(UNICODE), A(UNICODE), U("\u65e5\u672c\u8a9e\u3067\u7b54\u3048\u3066")]),
    ("empty_content", [U(""), A(""), U("")]),
    ("empty_system", [S(""), U("hi")]),
    ("special_tokens_in_text", [U("<|im_end|><|eot_id|></s><s>[INST]<end_of_turn><|end|><|endoftext|>"), A("<think>x</think>"), U("<bos>")]),
    ("long", [U("word " * 2000), A("ok " * 500), U("x" * 3000)]),
    ("system_only", [S("Only a system prompt.")]),
    ("whitespace", [U("\n\n  leading and trailing  \n\t"), A("  answer  "), U(" \u3000ideographic space\u3000 ")]),
    ("extra_keys", [{"role": "user", "content": "hi", "name": "bob", "weight": 1.5}, {"role": "assistant", "content": "hey", "meta": {"a": [1, 2]}}, U("again")]),
    ("null_key", [{"role": "user", "content": "hi", "name": None}]),
    ("not_alternating", [U("one"), U("two")]),
    ("assistant_first", [A("I start."), U("ok")]),
    ("two_systems", [S("first"), S("second"), U("q")]),
    ("unknown_role", [{"role": "narrator", "content": "Once upon a time"}, U("go on")]),
    ("number_content", [{"role": "user", "content": 42}]),
    ("parts_content", [S([{"type": "text", "text": "System in parts."}]),
                       {"role": "user", "content": [{"type": "text", "text": "  What is in this image?  "}, {"type": "image"}]}]),
    ("parts_content_user", [{"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}]),
    ("think", [U("Think first."), A("<think>\nI should say hi.\n</think>\n\nHi!"), U("Again?")]),
    ("think_last", [U("Think first."), A("<think>\nreasoning here\n</think>\n\nAnswer.")]),
    ("reasoning_field", [U("q1"), {"role": "assistant", "content": "a1", "reasoning_content": "because"}, U("q2"),
                         {"role": "assistant", "content": "a2", "reasoning_content": "so"}]),
    ("tool_call_flow", [S("You can call tools."), U("Weather in Paris?"),
                        {"role": "assistant", "content": "", "tool_calls": [
                            {"id": "abcDEF123", "type": "function",
                             "function": {"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}}]},
                        {"role": "tool", "tool_call_id": "abcDEF123", "name": "get_weather", "content": "{\"temperature\": 21}"},
                        A("It is 21 \u00b0C in Paris.")]),
    ("tool_call_string_args", [U("Search cats"),
                               {"role": "assistant", "content": None, "tool_calls": [
                                   {"id": "xyz789ABC", "type": "function",
                                    "function": {"name": "search", "arguments": "{\"q\": \"cats\", \"n\": 3}"}}]},
                               {"role": "tool", "tool_call_id": "xyz789ABC", "content": "Cats are great."},
                               {"role": "tool", "tool_call_id": "xyz789ABC", "content": "More cats."}]),
    ("tool_response_user", [U("<tool_response>\nresult\n</tool_response>"), A("ok")]),
]

# (id suffix, tools, extra)
VARIANTS = [
    ("", None, None),
    ("+tools", TOOLS, None),
]
EXTRA_CASES = [
    ("qwen3_no_thinking", [U("Quick answer please.")], None, {"enable_thinking": False}),
    ("qwen3_thinking_true", [U("Think.")], None, {"enable_thinking": True}),
    ("date_string", [U("What day is it?")], None, {"date_string": "26 Jul 2024"}),
    ("tools_only_system", [S("Use tools wisely."), U("Weather?")], TOOLS, None),
]


def render_transformers(cfg, tok, messages, add_gen, tools, extra):
    """apply_chat_template's path: normalize messages, special tokens + kwargs, render."""
    if tok is not None:
        kwargs = dict(tok.special_tokens_map)
    else:
        kwargs = {k: cfg[k] for k in TOKEN_KEYS if isinstance(cfg.get(k), str)}
        kwargs.update(cfg.get("extra_special_tokens") or {})
    kwargs.update(extra or {})
    conv = _normalize_chat_messages(copy.deepcopy(messages))
    out, _ = render_jinja_template(conversations=[conv], tools=copy.deepcopy(tools), chat_template=cfg["chat_template"],
                                   add_generation_prompt=add_gen, **kwargs)
    return out[0]


def load_tokenizer(name):
    src = os.path.join(SHARED, "fixtures", "tokenizers", name)
    if not os.path.isfile(os.path.join(src, "tokenizer.json.gz")):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    tmp = tempfile.mkdtemp(prefix="lqtmpl")
    for fn in ["tokenizer.json", "tokenizer_config.json"]:
        with gzip.open(os.path.join(src, fn + ".gz"), "rb") as f, open(os.path.join(tmp, fn), "wb") as g:
            shutil.copyfileobj(f, g)
    try:
        return AutoTokenizer.from_pretrained(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def one(cfg, tok, messages, add_gen, tools, extra):
    try:
        text = render_transformers(cfg, tok, messages, add_gen, tools, extra)
        res = {"expected": text}
    except jinja2.exceptions.TemplateError as e:
        # raise_exception() raises a bare TemplateError; other jinja errors are subclasses
        res = {"error": str(e) if type(e) is jinja2.exceptions.TemplateError else ""}
    except Exception:
        res = {"error": ""}
    if tok is not None:
        try:
            t2 = tok.apply_chat_template(copy.deepcopy(messages), tools=copy.deepcopy(tools), tokenize=False,
                                         add_generation_prompt=add_gen, **(extra or {}))
            ok = res.get("expected") == t2
        except Exception:
            ok = "error" in res
        if not ok:
            raise SystemExit("transformers' two rendering paths disagree for %s" % json.dumps(messages)[:200])
    return res


def main():
    check = "--check" in sys.argv
    names = sorted(f[:-5] for f in os.listdir(TDIR) if f.endswith(".json"))
    bad = 0
    tokens = {}
    for name in names:
        cfg = json.load(open(os.path.join(TDIR, name + ".json")))
        if not isinstance(cfg.get("chat_template"), str):
            continue  # llama2: no template (tested in test_template.c)
        tok = load_tokenizer(name)
        if tok is not None:
            tokens[name] = tok.special_tokens_map
        lines = []
        cases = [(cid + sfx, msgs, tools, extra) for cid, msgs in BASE for sfx, tools, extra in VARIANTS
                 if not (sfx and "tool" not in cfg["chat_template"])]
        cases += [(cid, msgs, tools, extra) for cid, msgs, tools, extra in EXTRA_CASES]
        for cid, msgs, tools, extra in cases:
            for add_gen in (True, False):
                res = one(cfg, tok, msgs, add_gen, tools, extra)
                line = {"case": "%s/%s" % (cid, "gen" if add_gen else "nogen"), "messages": msgs,
                        "add_generation_prompt": add_gen, "tools": tools, "extra": extra, "now": NOW}
                line.update(res)
                lines.append(json.dumps(line, ensure_ascii=False))
        path = os.path.join(OUT, "template_expected_%s.jsonl" % name)
        text = "\n".join(lines) + "\n"
        if check:
            old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
            if old != text:
                print("%s: differs from the committed fixture" % path)
                bad += 1
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            nerr = sum('"error"' in l for l in lines)
            print("%s: %d cases (%d errors)%s" % (os.path.relpath(path, ROOT), len(lines), nerr,
                                                  " [cross-checked with AutoTokenizer]" if tok else ""))
    # the special tokens transformers passes to the template, per tokenizer (checked by
    # test_template.c against lq_chat_config_parse of the same tokenizer_config.json)
    for name in names:
        if name not in tokens and name == "llama2":
            tok = load_tokenizer(name)
            if tok is not None:
                tokens[name] = tok.special_tokens_map
    path = os.path.join(OUT, "template_expected_tokens.json")
    text = json.dumps(tokens, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    if check:
        if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
            print("%s: differs from the committed fixture" % path)
            bad += 1
    elif tokens:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
