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
NOW = 1741953600  # 2025-03-14 12:00 UTC: strftime_now's date is the same in any time zone within 11 h of UTC

try:
    import jinja2
    import transformers.utils.chat_template_utils as ctu
    from transformers.utils.chat_template_utils import render_jinja_template
    from transformers.tokenization_utils_base import _normalize_chat_messages
except ImportError as e:
    print("skipping template reference: python package missing (%s)" % e, file=sys.stderr)
    sys.exit(77)


class _FixedNow(ctu.datetime):
    """strftime_now() at a fixed time (NOW), so that the fixtures are reproducible"""
    @classmethod
    def now(cls, tz=None):
        return ctu.datetime.fromtimestamp(NOW, tz)


ctu.datetime = _FixedNow

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
    ("tools_in_system", [S("Use tools wisely."), U("Weather?")], TOOLS, {"tools_in_user_message": False}),
    ("builtin_tools", [S("sys"), U("Search the web."),
                       {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                           "name": "brave_search", "arguments": {"query": "weather"}}}]},
                       {"role": "ipython", "content": {"result": "sunny"}}],
     None, {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]}),
    ("tool_content_list", [U("q"), {"role": "tool", "content": [1, "two", {"three": 3}]}], None, None),
    ("custom_tools", [U("Weather?")], None, {"custom_tools": TOOLS}),
]

# Language-feature cases for test_template.c: (template, extra variables).  Rendered
# with messages = FEATURE_MESSAGES and transformers' jinja environment.
FEATURE_MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi there"},
                    {"role": "assistant", "content": " ok "}]
FEATURES = [
    ("{{ 'a' ~ 1 ~ none ~ true ~ 2.5 }}", None),
    ("{{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 2 ** -1 }} {{ +3 }}", None),
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 7 % -3 }}", None),
    ("{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 1/3 }} {{ 10/4 }} {{ 3.0 }} {{ 1e16 }} {{ 123456789.125 }} {{ 0.0001 }} {{ -0.0 }} {{ 1e15 }} {{ 2.5e-5 }}", None),
    ("{{ 'abc'[1] }}{{ 'h\u00e9llo'[1:3] }}{{ 'abc'[::-1] }}{{ 'abcdef'[-2:] }}{{ 'abcdef'[::2] }}{{ 'abcdef'[5:1:-2] }}{{ 'abc'[-1] }}{{ 'abc'[10:] }}|{{ '\u4f60\u597d\u4e16\u754c'[1:-1] }}", None),
    ("{{ [1,2,3][-1] }}{{ [1,2,3][:2] }}{{ [1,2,3][::-1] }}{{ (1,2) }}{{ (1,) }}{{ () }}{{ [] }}{{ {} }}{{ [1,2,3][1:][0] }}{{ [1, [2, [3]]] }}", None),
    ("{{ {'a': 1, 'b': [1, 'x'], 'c': none, 'd': true, 'e': 1.5, 2: 'two'} }}", None),
    ("{{ [\"it's\", 'say \"hi\"', \"both ' \\\"\", 'nl\\n', 'tab\\t', '\\x01', '\u00e9', '\\\\', '\\u2028', '\\x7f'] }}", None),
    ("{{ 'a' in 'cat' }}{{ 1 in [1,2] }}{{ 'k' in {'k':1} }}{{ 'z' not in 'cat' }}{{ '' in 'x' }}{{ 3 not in [1] }}", None),
    ("{{ 1 < 2 }}{{ 'a' < 'b' }}{{ [1,2] < [1,3] }}{{ 1 == 1.0 }}{{ true == 1 }}{{ none == none }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 5 }}{{ 'a' != 'b' }}{{ [1] == [1] }}{{ {'a':1} == {'a':1} }}{{ (1,2) == [1,2] }}{{ 2 >= 2 }}{{ 1 <= 0 }}", None),
    ("{{ 0 or 'x' }}{{ 'a' and 'b' }}[{{ '' and 'b' }}]{{ none or none }}{{ not 0 }}{{ not [] }}{{ 1 and 0 }}", None),
    ("{{ 'y' if true else 'n' }}{{ 'y' if false else 'n' }}[{{ 'y' if false }}]{{ 'a' if 0 else 'b' if 1 else 'c' }}", None),
    ("{% set x = 1 %}{% for i in [1,2,3] %}{{ x }}{% set x = x + i %}{{ x }},{% endfor %}{{ x }}", None),
    ("{% if true %}{% set y = 5 %}{% endif %}{{ y }}{% for i in [1,2] %}{% if i == 1 %}{% set z = 7 %}{% endif %}[{{ z }}]{% endfor %}", None),
    ("{% set ns = namespace(n=0, s='') %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}", None),
    ("{% set ns = namespace() %}{% set ns.found = false %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}", None),
    ("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}", None),
    ("{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1,2,3,4] if x is even %}{{ x }}{{ loop.last }}{{ loop.length }}{% endfor %}{% for x in none_var %}no{% endfor %}", None),
    ("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in {'x': 'y'}|items %}{{ k }}{{ v }}{% endfor %}{% set a, b = [1, 2] %}{{ a }}{{ b }}{% for (p, q) in [[1, 2], [3, 4]] %}{{ p + q }}{% endfor %}", None),
    ("{% for i in [1,2] %}{% for j in 'ab' %}{{ loop.index }}{{ j }}{% endfor %}{{ loop.index }}{% endfor %}", None),
    ("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", None),
    ("{% for i in [1,2,3] %}{{ loop.cycle('a','b') }}{% if loop.previtem is defined %}{{ loop.previtem }}{% endif %}{% if loop.nextitem is defined %}{{ loop.nextitem }}{% endif %};{% endfor %}", None),
    ("a\n  {% if true %}\n  x\n  {% endif %}\n  {#c#}\nb\n", None),
    ("{%- if true -%}  x  {%- endif -%}|  {{- 'a' -}}  \n b|{%+ if true %}x{% endif +%}\ny| {{ 'x' }} \n", None),
    ("line1\n    {% for i in [1, 2] %}\n    item {{ i }}\n    {% endfor %}\nend\n\n", None),
    ("\t{% if true %}tab{% endif %}\n  {%- if true %} dash{% endif %}\n{% if true -%}\n   after\n{%- endif %}", None),
    ("{% raw %}{{ not evaluated }} {% if %}{% endraw %}|{%- raw -%}  spaced  {%- endraw -%}  |", None),
    ("a{# comment {{ x }} #}b {#- trim -#}  c\n{# line #}\nd", None),
    ("{{ '  hi  '|trim }}|{{ 'xxhixx'|trim('x') }}|{{ 'Hello'|upper }}{{ 'Hello'|lower }}{{ 'hello WORLD'|capitalize }}|{{ 'hello big-world(x) [y]'|title }}|{{ 'abc'|length }}{{ [1,2]|length }}{{ {'a':1}|length }}{{ '\u00e9\u4f60'|length }}|{{ [3,1,2]|first }}{{ [3,1,2]|last }}{{ 'xyz'|first }}|{{ [1,2,3]|join('-') }}{{ [1,2]|join }}|{{ 'aXbX'|replace('X','y') }}{{ 'aXbX'|replace('X','y', 1) }}{{ 'ab'|replace('', '.') }}", None),
    ("{{ undefined_var|default('dflt') }}{{ ''|default('e', true) }}{{ 'v'|d('no') }}{{ none|default('n') }}|{{ 'ab'|list }}{{ '42'|int + 1 }}{{ '4.5'|int }}{{ 'x'|int }}{{ 'x'|int(7) }}{{ '2.5'|float }}{{ 3.7|int }}{{ 42|string ~ '!' }}{{ true|int }}{{ ' 12 '|int }}{{ '1_000'|int }}", None),
    ("{{ {'a': 1, 'b': [1, 2.5, '\u00e9', none, true], 'c': {}}|tojson }}|{{ {'b': 1, 'a': [1, {'x': 'y'}]}|tojson(indent=2) }}|{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}|{{ 'q\"\\\\\\n\\t\\x01\\x7f'|tojson }}|{{ [1,2]|tojson(separators=(',', ':')) }}|{{ '\u00e9\U0001F600'|tojson(ensure_ascii=true) }}|{{ [] |tojson(indent=2)}}{{ {} |tojson(indent=2)}}|{{ [1,[2]]|tojson(indent='\t') }}|{{ 1.0|tojson }}{{ 10000000000000000.0|tojson }}", None),
    ("{% set ms = [{'r':'u','c':'1'},{'r':'a','c':'2'},{'r':'u','c':'3'}] %}{{ ms|selectattr('r','equalto','u')|map(attribute='c')|join(',') }}|{{ ms|rejectattr('r','==','u')|list|length }}|{{ [1,2,3,4]|select('odd')|list }}|{{ [1,2,3,4]|reject('odd')|list }}|{{ ['a','b']|map('upper')|list }}|{{ [3,1,2]|sort }}|{{ [3,1,2]|sort(reverse=true) }}|{{ ['b','A','c']|sort }}|{{ [1,2,2,1]|unique|list }}|{{ [1,2,3]|sum }}|{{ [1,5,3]|max }}{{ [4,2,8]|min }}|{{ [1,2]|reverse|list }}{{ 'abc'|reverse }}|{{ -3|abs }}|{{ ms|selectattr('x')|list }}|{{ ms|map(attribute='zz', default='-')|join }}", None),
    ("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ 1 is integer }}{{ true is integer }}{{ 1.0 is float }}{{ true is boolean }}{{ {} is mapping }}{{ [] is mapping }}{{ [] is iterable }}{{ 'a' is iterable }}{{ 1 is iterable }}{{ [] is sequence }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 1 is not none }}{{ 'a' is in 'abc' }}{{ 2 is eq 2 }}{{ true is true }}{{ 0 is false }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ x is undefined }}{{ 3 is gt 2 }}{{ 2 is lt(1) }}{{ namespace is callable }}", None),
    ("{{ '  a b  '.strip() }}|{{ 'xxa'.lstrip('x') }}|{{ 'axx'.rstrip('x') }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ '  a b c  '.rsplit(None, 1) }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x','c')) }}|{{ 'hello world'.title() }}|{{ \"they're bill's\".title() }}|{{ 'ab'.upper() }}{{ 'AB'.lower() }}|{{ 'aaa'.replace('a','b',2) }}|{{ 'abcabc'.find('c') }}{{ 'abc'.find('z') }}{{ 'abcabc'.rfind('c') }}{{ 'abcabc'.count('bc') }}|{{ '-'.join(['a','b']) }}|{{ 'l1\\nl2\\r\\nl3'.splitlines() }}|{{ 'x y'.capitalize() }}|{{ '12'.isdigit() }}{{ 'ab'.isalpha() }}{{ ' '.isspace() }}", None),
    ("{% set d = {'a': 1, 'b': 2} %}{{ d.get('a') }}{{ d.get('z') }}{{ d.get('z', 9) }}{{ d.keys()|list }}{{ d.values()|list }}{{ d['a'] }}{{ d.a }}{% for k in d %}{{ k }}{% endfor %}{{ d.items()|list }}", None),
    ("{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }} {{ greet(name='Cy') }}{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %} {{ rec(3) }}", None),
    ("{% set x %}inner {{ 1 + 1 }}{% endset %}[{{ x }}]{{ x|length }}", None),
    ("{{ 'a' 'b' \"c\" }}{{ 'tab\\tq\\'\\u00e9\\x41\\101\\n' }}{{ \"\\d\" }}", None),
    ("{% for m in messages %}{{ m.role }}:{{ m['content'] }};{% endfor %}{{ messages|length }}{{ messages[-1].content|trim }}{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role }}{% endfor %}", None),
    ("[{{ nope }}][{{ messages[5] }}][{{ messages[0].nope }}]{{ messages[0].x is defined }}{{ messages[0].content is defined }}{{ nope is defined }}", None),
    ("{{ dict(a=1, b='x') }}{{ range(3)|list }}{{ range(1, 10, 3)|list }}{{ range(5, 0, -2)|list }}{{ range(0)|list }}", None),
    ("{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'x\\n\\ny'|indent('--', blank=true) }}|{{ 'a\\n'|indent }}", None),
    ("{{ '<a href=\"x\">&\\'</a>'|e }}{{ 2.5|round }}{{ 3.14159|round(2) }}{{ 2.7|round(0, 'floor') }}{{ 3|round }}", None),
    ("{% generation %}gen {{ 1 }}{% endgeneration %}", None),
    ("{{ enable_thinking }}{{ date_string }}{% if tools is none %}no tools{% endif %}{{ add_generation_prompt }}{{ documents }}", {"enable_thinking": False, "date_string": "26 Jul 2024"}),
    ("{{ bos_token }}|{{ eos_token is defined }}|{{ cfg.a.b[1] }}{{ cfg['a']['b'][-1] }}{{ cfg.n + 1 }}{{ cfg.f }}{{ cfg.t }}{{ cfg.nul }}{{ cfg.s|length }}", {"bos_token": "<s>", "cfg": {"a": {"b": [1, 2, 3]}, "n": 41, "f": 0.5, "t": True, "nul": None, "s": "\u00e9\u00e9"}}),
    ("{{ 'x' * 3 }}{{ 3 * 'ab' }}{{ [1] * 2 }}{{ [1] + [2] }}{{ 'a' + 'b' }}{{ (1,) + (2,) }}", None),
    ("{%- set loop_messages = messages[1:] %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('alternate!') }}{% endif %}{{ message['role'][0]|upper }}{% endfor %}", None),
    ("{{ messages[0]|tojson }}{{ messages|map(attribute='role')|join(',') }}{{ messages|selectattr('role', 'in', ['user', 'system'])|list|length }}", None),
    ("{{ 'abc' ~ ('d' if messages else 'e') }}{{ (messages|last).role }}{{ (messages|first)['content'] }}{{ messages[1:]|length }}", None),
    ("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %A %B %j') }}", None),
    ("{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}{%- endif %}Today Date: {{ date_string }}", None),
    ("  {% raw -%}\n {{ r }}  \n  {% endraw -%}  x\n\t{%+ raw %}\n{% endraw +%}\n|{% raw %}a{%- endraw %}", None),
    ("{% for i in [1, 2] -%}\n  {{ i }}\n{%- endfor %}\n{#- c -#}\n  {%+ if true %}k{% endif %}  \n{{- 'v' -}}\n\u3000 \xa0{% if true %}\n\xa0 x{% endif %}", None),
    ("{{ [1, 2]|select|first }}{{ ([1, 2]|select) is sequence }}{{ (none|map('upper')|list) }}{% if [] | select %}gen-truthy{% endif %}{{ [3, 1]|reverse|list }}{{ {'a': 1}.items() }}{{ {'a': 1}.keys()|list }}{{ ({'a': 1}|items|list)[0][1] }}", None),
    ("{% set g = [1, 2, 3]|select %}{% for x in g %}{{ x }}{% endfor %}|{% for x in g %}{{ x }}{% else %}consumed{% endfor %}", None),
    ("{{ 'ßtraße ﬁne'|upper }}|{{ 'ßtraße'|title }}|{{ 'ßa'.capitalize() }}|{{ 'straße'.upper() }}|{{ 'İ'|lower|length }}", None),
    ("{% if false %}{{ x|no_such_filter }}{{ y is no_such_test }}{% endif %}{{ 'a' if true else b|no_such_filter }}ok", None),
    ("{{ 3.0 is divisibleby 1.5 }}{{ 2.5 is even }}{{ 5 is lower }}{{ [1, 2, 1].count(1) }}{{ [1, 2].index(2) }}{{ (1, 2) * 2 }}", None),
    ("{% set a = 1 %}{% with a = a + 1, b = 'x' %}{{ a }}{{ b }}{% set a = 5 %}{{ a }}{% endwith %}{{ a }}[{{ b }}]", None),
    ("{% set x = 1 %}{% for i in [1,2] %}{% if true %}{% for j in [1] %}{% set x = x + 10 %}{{ x }}{% endfor %}{% set x = x + 1 %}{% endif %}{{ x }}{% endfor %}{{ x }}", None),
    ("{% macro m() %}{{ later }}{% endmacro %}{% set later = 'L' %}{{ m() }}", None),
    ("{% set i = 'outer' %}{% for i in [1, 2] %}{{ i }}{% endfor %}{{ i }}", None),
    ("{% set ns = namespace(a=[]) %}{% for i in range(3) %}{% set ns.a = ns.a + [i] %}{% endfor %}{{ ns.a }}", None),
    ("{% for i in [1,2] %}{% for j in [3,4] %}{{ loop.index }}{{ loop.revindex }}{% endfor %}{{ loop.index }}{% else %}E{% endfor %}", None),
    ("{% macro m(a) %}{% set b = a * 2 %}{{ b }}{% endmacro %}{{ m(2) }}[{{ b }}]", None),
    ("{% set y = [1,2] %}{% for x in y %}{% set y = 5 %}{{ y }}{% endfor %}{{ y }}", None),
    ("{% for m in messages %}{% if m.role == 'user' %}{% set last = m.content %}{% endif %}{% endfor %}[{{ last }}]", None),
    ("{% set ns = namespace(last='') %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = m.content %}{% endif %}{% endfor %}[{{ ns.last }}]", None),
    ("{% if true %}{% set a = 1 %}{% if true %}{% set a = a + 1 %}{% endif %}{% endif %}{{ a }}", None),
    ("{% for i in range(3) %}{% if loop.first %}F{% elif loop.last %}L{% else %}M{% endif %}{% endfor %}", None),
    ("{% set x = 5 %}{% macro m(x) %}{{ x }}{% endmacro %}{{ m(1) }}{{ x }}", None),
    ("{% for a, b in [[1, 2], [3, 4]] %}{% set c = a + b %}{{ c }}{% endfor %}[{{ c }}]", None),
    ("{% set t = (1, 2) %}{% set a, b = t %}{{ a }}{{ b }}{% set a = 9 %}{{ t }}", None),
    ("{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{% for j in [1, 2] %}{% if j == 2 %}{% break %}{% endif %}{{ i }}{{ j }}{% endfor %}{% endfor %}", None),
    ("{% for i in [1, 2, 3] if i > 1 %}{{ loop.index }}/{{ loop.length }}{% if loop.last %}!{% endif %}{% endfor %}", None),
    ("{% set d = {'a': {'b': [1, {'c': 'deep'}]}} %}{{ d.a.b[1].c }}{{ d['a']['b'][-1]['c']|upper }}", None),
    ("{% set s %}{% for i in range(3) %}{{ i }}{% endfor %}{% endset %}{{ s|length }}{{ s }}", None),
    ("{% macro outer() %}{% macro inner() %}in{% endmacro %}{{ inner() }}out{% endmacro %}{{ outer() }}", None),
    ("{% for m in messages %}{{ loop.previtem.role if loop.previtem is defined else '-' }}{{ loop.nextitem.role if loop.nextitem is defined else '-' }};{% endfor %}", None),
    ("{% set x = namespace(v=1) %}{% macro inc() %}{% set x.v = x.v + 1 %}{% endmacro %}{{ inc() }}{{ inc() }}{{ x.v }}", None),
    ("{% for i in [1] %}{% set loop_var = loop %}{% endfor %}{{ loop_var is defined }}", None),
    ("{{ messages[1:]|map(attribute='role')|list }}{{ messages|map(attribute='role')|select('equalto', 'user')|list|length }}", None),
    ("{% set msgs = messages %}{% set msgs = msgs[1:] %}{{ msgs|length }}{{ messages|length }}", None),
    ("{% for message in messages %}{% set message = 'x' %}{{ message }}{% endfor %}", None),
    ("{%- for m in messages -%}\n  {%- if m.role == 'system' -%}\n    <<SYS>>{{ m.content }}<</SYS>>\n  {%- else -%}\n    [{{ m.role }}]\n  {%- endif -%}\n{%- endfor -%}\n", None),
    ("{{ '%s and %d' % ('a', 3) }}|{{ '%5.2f|%-6s|%03d|%x|%X|%o|%#x|%#o|%e|%g|%r|%%|%c' % (3.14159, 'ab', 7, 255, 255, 8, 255, 8, 12345.678, 0.0001, 'q', 'A') }}|{{ '%(a)s-%(b)s' % {'a': 1, 'b': 'x'} }}|{{ 'x' % [] }}|{{ '%s'|format('v') }}|{{ '%s=%s'|format(1, none) }}|{{ '%(k)s'|format(k='kw') }}|{{ '%.2s' % 'h\u00e9llo' }}|{{ '%5s|' % '\u00e9' }}|{{ '%d' % 2.7 }}|{{ '%d' % true }}|{{ '%+d % d' % (5, 5) }}|{{ '%x' % -255 }}|{{ '%s' % [1, 'a'] }}|{{ '%s' % ((1, 2),) }}|{{ '%-5d|' % 3 }}|{{ '%.3g|%10.4e' % (2.5, 1234.5) }}", None),
    ("{{ raise_exception('Custom failure: ' ~ messages[0].role) }}", None),
    ("{{ 1 + 'a' }}", None),
    ("{{ nope.attr }}", None),
    ("{{ messages[0].nope.deeper }}", None),
    ("{{ 1 / 0 }}", None),
    ("{% for x in 5 %}{% endfor %}", None),
    ("{{ range(200000)|length }}", None),
    ("{{ 'a'.nomethod() }}", None),
    ("{% set ns = namespace(a=1) %}{% set ns._x = 2 %}", None),
    ("{{ {'a': undefined_thing}|tojson }}", None),
    ("{{ messages[0][1:] }}", None),
    ("{{ [1]|select|length }}", None),
    ("{{ x_undef|int }}", None),
    ("{{ [1] in {'a': 1} }}", None),
    ("{{ '%s %s' % (1,) }}", None),
    ("{{ '%d' % 'a' }}", None),
    ("{{ 'abc' % 5 }}", None),
    ("{{ '%s' % (1, 2) }}", None),
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
    # the repo's copy of the tokenizer files, else the shared one
    src = os.path.join(ROOT, "tests", "fixtures", "tokenizers", name)
    if not os.path.isdir(src):
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
    # language features
    lines = []
    for i, (src, extra) in enumerate(FEATURES):
        cfg = {"chat_template": src}
        res = one(cfg, None, FEATURE_MESSAGES, False, None, extra)
        line = {"case": "feature%d" % i, "template": src, "messages": FEATURE_MESSAGES, "add_generation_prompt": False,
                "tools": None, "extra": extra, "now": NOW}
        line.update(res)
        lines.append(json.dumps(line, ensure_ascii=False))
    path = os.path.join(OUT, "template_expected_features.jsonl")
    text = "\n".join(lines) + "\n"
    if check:
        if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
            print("%s: differs from the committed fixture" % path)
            bad += 1
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print("%s: %d cases" % (os.path.relpath(path, ROOT), len(lines)))
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
