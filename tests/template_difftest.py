#!/usr/bin/env python3
"""Differential test of libquant's chat-template interpreter against jinja2 (as
transformers configures it): random expressions and statements are rendered by both
and compared.  Not part of make check (needs transformers; takes a minute).

    python3 tests/template_difftest.py BUILD/tests/gen_template [SEED] [N]

Prints the differing cases, grouped, and a summary.  Known, accepted differences
(reported as "known"): printing a generator object (jinja2 prints a memory address),
integers beyond 64 bits (unsupported), and slicing a constant that is not a sequence
(jinja2's constant folding gives '', while the same slice at run time raises).

Copyright (c) the libquant authors.  MIT license.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ARGS = sys.argv[1:]
sys.argv = sys.argv[:1]
import template_reference as tr  # noqa: E402

LIT = ["1", "0", "-3", "7", "2.5", "-0.5", "1e20", "1.0", "'a b'", "'  x  '", "'H\u00e9llo W\u00f6rld'", "''",
       "'abc,def'", "[1, 'a', none]", "[3, 1, 2]", "['b', 'A', 'c']", "{'k': 1, 'z': 'v'}", "none", "true", "false",
       "messages", "messages[0]", "messages[1].content", "messages[-1]", "messages|length", "'<|im_start|>'",
       "(1, 2)", "[]", "{}", "'\\n\\t x \\n'", "'\u00df'", "'\u4f60\u597d'", "messages[0].role", "x_undef"]
FIL = ["trim", "upper", "lower", "length", "first", "last", "join(',')", "join", "replace('a','b')", "default('d')",
       "tojson", "tojson(indent=2)", "string", "int", "float", "list", "items", "abs", "capitalize", "title",
       "reverse", "sort", "unique", "sum", "min", "max", "round", "e", "count", "default('d', true)",
       "selectattr('role')", "map('upper')", "select", "reject", "trim('x ')", "tojson(sort_keys=true)"]
TST = ["defined", "none", "string", "number", "mapping", "iterable", "sequence", "even", "odd", "integer", "float",
       "boolean", "true", "false", "undefined", "lower", "upper", "eq 1", "in 'abc'", "divisibleby 2"]
MET = [".strip()", ".split()", ".split(',')", ".upper()", ".startswith('a')", ".endswith(('c','d'))",
       ".replace('a','b')", ".title()", ".lower()", ".get('k')", ".get('role')", ".items()", ".keys()", ".values()",
       ".lstrip(' H')", ".rstrip()", ".capitalize()", ".count('a')", ".find('b')", ".rsplit(' ', 1)",
       ".splitlines()", ".isdigit()"]
OPS = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">=", "in", "not in", "and", "or"]
STMTS = [
    "{% for m in messages %}{{ loop.index }}{{ E }}{% endfor %}",
    "{% for m in E %}[{{ m }}]{% else %}empty{% endfor %}",
    "{% set ns = namespace(v=E) %}{% for i in range(3) %}{% set ns.v = ns.v ~ i %}{% endfor %}{{ ns.v }}",
    "{% if E %}yes{% elif E %}mid{% else %}no{% endif %}",
    "{% set x = E %}{{ x }}|{{ x is defined }}",
    "{% macro f(a, b=E) %}<{{ a }}|{{ b }}>{% endmacro %}{{ f(E) }}{{ f(1, b=2) }}",
    "{% for k, v in {'a': E, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for m in messages if E %}{{ m.role }}{{ loop.last }}{% endfor %}",
    "  {% if E -%}\n  a {{ E }}\n  {%- endif %}\n  b  \n",
    "{%- for m in messages %}\n  {{- m.role }}\n  {% if not loop.last %},{% endif %}\n{% endfor %}\n",
]


def expr(d):
    r = random.random()
    if d <= 0 or r < 0.25:
        return random.choice(LIT)
    if r < 0.45:
        return "(%s %s %s)" % (expr(d - 1), random.choice(OPS), expr(d - 1))
    if r < 0.6:
        return "(%s|%s)" % (expr(d - 1), random.choice(FIL))
    if r < 0.7:
        return "(%s is %s%s)" % (expr(d - 1), random.choice(["", "not "]), random.choice(TST))
    if r < 0.8:
        return "%s%s" % (random.choice(LIT), random.choice(MET))
    if r < 0.87:
        return random.choice(["%s[1:]", "%s[::-1]", "%s[-1]", "%s[0]", "%s[1:3]"]) % ("(" + expr(d - 1) + ")")
    if r < 0.93:
        return "(%s if %s else %s)" % (expr(d - 1), expr(d - 1), expr(d - 1))
    return "(not %s)" % expr(d - 1)


WS = ["", " ", "  ", "\n", "\n\n", "\t", " \n  ", "\n  \n", "x", "a b\n", "\r\n", "\u3000", "\xa0"]
TAGS = ["{%s if true %s}", "{%s if false %s}", "{%s endif %s}", "{%s for i in [1, 2] %s}", "{%s endfor %s}",
        "{{%s 'v' %s}}", "{#%s c %s#}", "{%s set z = 1 %s}", "{%s raw %s}r{%s endraw %s}"]


def whitespace():
    """random text and tags with -, + and plain markers around blocks"""
    out = []
    stack = []
    for _ in range(random.randint(1, 8)):
        out.append(random.choice(WS))
        k = random.random()
        l, r = random.choice(["", "-", "+"]), random.choice(["", "-", "+"])
        if k < 0.2:
            cond = random.choice(["true", "false"])
            out.append("{%" + l + " if " + cond + " " + r + "%}")
            stack.append("endif")
        elif k < 0.35:
            out.append("{%" + l + " for i in [1, 2] " + r + "%}")
            stack.append("endfor")
        elif k < 0.55 and stack:
            out.append("{%" + l + " " + stack.pop() + " " + r + "%}")
        elif k < 0.7:
            out.append("{{" + (l if l != "+" else "") + " 'v' " + (r if r != "+" else "") + "}}")
        elif k < 0.85:
            out.append("{#" + l + " c " + r + "#}")
        elif k < 0.93:
            out.append("{%" + l + " set z = 1 " + r + "%}")
        else:
            out.append("{%" + l + " raw " + r + "%}" + random.choice(WS) + "{{r}}" + random.choice(WS) + "{%" +
                       random.choice(["", "-", "+"]) + " endraw " + random.choice(["", "-", "+"]) + "%}")
        out.append(random.choice(WS))
    while stack:
        out.append(random.choice(WS) + "{% " + stack.pop() + " %}")
    out.append(random.choice(WS))
    return "".join(out)


def statement():
    st = random.choice(STMTS)
    out = []
    i = 0
    while i < len(st):  # replace each standalone E
        if st[i] == "E" and st[i - 1] in " (=" and i + 1 < len(st) and st[i + 1] in " ),":
            out.append(expr(2))
        else:
            out.append(st[i])
        i += 1
    return "".join(out)


KNOWN = ("cannot print a generator", "integer overflow", "not subscriptable", "unhashable type: 'slice'")


def main():
    if not ARGS:
        print(__doc__)
        return 2
    gen = ARGS[0]
    random.seed(int(ARGS[1]) if len(ARGS) > 1 else 1)
    n = int(ARGS[2]) if len(ARGS) > 2 else 3000
    cases = {}
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for i in range(n):
            src = ("{{ %s }}" % expr(3)) if i % 3 == 1 else statement() if i % 3 == 2 else whitespace()
            res = tr.one({"chat_template": src}, None, tr.FEATURE_MESSAGES, False, None, None)
            if " at 0x" in res.get("expected", ""):
                continue  # jinja2 printed an object address
            line = {"case": "d%d" % i, "template": src, "messages": tr.FEATURE_MESSAGES,
                    "add_generation_prompt": False, "tools": None, "extra": None}
            line.update(res)
            cases[line["case"]] = line
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        path = f.name
    r = subprocess.run([gen, "--check-features", path], capture_output=True, text=True)
    os.unlink(path)
    known = unknown = 0
    for l in r.stderr.splitlines():
        if not l.startswith("FAIL"):
            continue
        cid = l.split(" case ")[1].split(":")[0]
        c = cases[cid]
        if any(k in l for k in KNOWN):
            known += 1
            continue
        unknown += 1
        print("DIFF %s\n  template: %s\n  jinja2:   %r\n  libquant: %s" % (
            cid, c["template"], c.get("expected", "error " + c.get("error", "")), l.split(": ", 1)[1]))
    total = len(cases)
    print("%d cases: %d agree, %d known differences, %d unexpected" % (total, total - known - unknown, known, unknown))
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
