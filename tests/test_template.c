/*
 * test_template.c - the chat-template interpreter: language features (expected
 * outputs rendered by jinja2 through transformers, tests/template_reference.py),
 * error messages, hostile input and limits, and the tokenizer_config helper.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"
#include "test.h"

#include <jansson.h>

static const char *MSGS = "[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"hi\"}]";

/* render src with MSGS; returns rc, *out malloc'ed (or NULL) */
static int render(const char *src, const struct lq_template_vars *v, char **out, struct lq_error *err)
{
	struct lq_template *t = NULL;
	*out = NULL;
	int rc = lq_template_compile(&t, src, strlen(src), err);
	if (rc)
		return rc;
	size_t n;
	rc = lq_template_render(t, MSGS, strlen(MSGS), v, out, &n, err);
	if (rc == 0)
		CHECK(strlen(*out) == n || memchr(*out, 0, n), "length of '%s'", src);
	lq_template_free(t);
	return rc;
}

static void expect_out(const char *src, const char *want)
{
	struct lq_error err = { 0 };
	char *out;
	int rc = render(src, NULL, &out, &err);
	CHECK(rc == 0 && !strcmp(out, want), "template %s: want '%s', got '%s' (%s)", src, want,
	      out ? out : "(null)", rc ? err.msg : "");
	free(out);
}

/* expects failure with code and a message containing `frag` */
static void expect_err(const char *src, int code, const char *frag)
{
	struct lq_error err = { 0 };
	char *out;
	int rc = render(src, NULL, &out, &err);
	CHECK(rc == code && strstr(err.msg, frag), "template %.60s: want error %d containing '%s', got %d '%s'",
	      src, code, frag, rc, rc ? err.msg : out);
	free(out);
}

static void test_features_fixture(void)
{
	FILE *f = fopen("tests/fixtures/template_expected_features.jsonl", "r");
	CHECK(f != NULL, "cannot open tests/fixtures/template_expected_features.jsonl (run from the repo root)");
	if (!f)
		return;
	char *line = NULL;
	size_t cap = 0;
	int n = 0;
	while (getline(&line, &cap, f) > 0) {
		json_error_t je;
		json_t *c = json_loads(line, 0, &je);
		CHECK(c != NULL, "bad fixture line: %s", je.text);
		if (!c)
			continue;
		const char *id = json_string_value(json_object_get(c, "case"));
		json_t *src = json_object_get(c, "template");
		char *msgs = json_dumps(json_object_get(c, "messages"), JSON_COMPACT);
		json_t *extra = json_object_get(c, "extra");
		char *xj = json_is_object(extra) ? json_dumps(extra, JSON_COMPACT) : NULL;
		struct lq_template_vars v = { 0 };
		v.extra_json = xj;
		v.now = json_integer_value(json_object_get(c, "now"));
		struct lq_error err = { 0 };
		struct lq_template *t = NULL;
		char *out = NULL;
		size_t olen = 0;
		int rc = lq_template_compile(&t, json_string_value(src), json_string_length(src), &err);
		if (rc == 0)
			rc = lq_template_render(t, msgs, strlen(msgs), &v, &out, &olen, &err);
		json_t *exp = json_object_get(c, "expected");
		if (json_is_string(exp)) {
			CHECK(rc == 0 && olen == json_string_length(exp) && !memcmp(out, json_string_value(exp), olen),
			      "%s: %s\n  want: '%s'\n  got:  '%s' %s", id, json_string_value(src), json_string_value(exp),
			      out ? out : "", rc ? err.msg : "");
		} else {
			const char *want = json_string_value(json_object_get(c, "error"));
			CHECK(rc != 0 && (!want || strstr(err.msg, want)), "%s: %s: want an error, got '%s'", id,
			      json_string_value(src), rc ? err.msg : out);
			CHECK(rc != 0 && strlen(err.msg) > 20, "%s: error message too short: %s", id, err.msg);
		}
		n++;
		free(out);
		free(msgs);
		free(xj);
		lq_template_free(t);
		json_decref(c);
	}
	free(line);
	fclose(f);
	CHECK(n >= 50, "only %d feature cases", n);
}

static void test_syntax_errors(void)
{
	/* syntax errors name line and column */
	expect_err("{{ 'a' }}\n{% if x %}", LQ_ERR_FORMAT, "line 2 column 4: unexpected end of template: the 'if' block");
	expect_err("abc {{ x", LQ_ERR_FORMAT, "line 1 column 5: unterminated {{ tag");
	expect_err("abc\n  {% if x", LQ_ERR_FORMAT, "line 2 column 3: unterminated {% tag");
	expect_err("{# never closed", LQ_ERR_FORMAT, "missing end of comment tag");
	expect_err("{{ 'abc }}", LQ_ERR_FORMAT, "unterminated string literal");
	expect_err("{% raw %}abc", LQ_ERR_FORMAT, "missing end of raw directive");
	expect_err("{% endif %}", LQ_ERR_FORMAT, "unexpected 'endif'");
	expect_err("{% for x in y %}{% endif %}", LQ_ERR_FORMAT, "unexpected 'endif'");
	expect_err("{{ (1 }}", LQ_ERR_FORMAT, "unexpected '}', expected ')'");
	expect_err("{{ (1 ", LQ_ERR_FORMAT, "unterminated {{ tag");
	expect_err("{{ 1 ) }}", LQ_ERR_FORMAT, "unexpected ')'");
	expect_err("{{ [1, 2) }}", LQ_ERR_FORMAT, "unexpected ')', expected ']'");
	expect_err("{{ }}", LQ_ERR_FORMAT, "unexpected 'end of print statement'");
	expect_err("{{ 1 2 }}", LQ_ERR_FORMAT, "expected end of print statement");
	expect_err("{% set %}", LQ_ERR_FORMAT, "expected a name");
	expect_err("{{ a ? b }}", LQ_ERR_FORMAT, "unexpected character '?'");
	expect_err("{{ 'x' is }}", LQ_ERR_FORMAT, "expected a test name");
	expect_err("{{ '\\u12' }}", LQ_ERR_FORMAT, "truncated \\u escape");
	/* unknown constructs are refused, never rendered wrong */
	expect_err("ok\n{% include 'x.j2' %}", LQ_ERR_UNSUPPORTED, "line 2 column 4: encountered unknown or unsupported tag 'include'");
	expect_err("{% extends 'base' %}", LQ_ERR_UNSUPPORTED, "unsupported tag 'extends'");
	expect_err("{% filter upper %}x{% endfilter %}", LQ_ERR_UNSUPPORTED, "unsupported tag 'filter'");
	expect_err("{% call m() %}x{% endcall %}", LQ_ERR_UNSUPPORTED, "unsupported tag 'call'");
	expect_err("{{ x|frobnicate }}", LQ_ERR_UNSUPPORTED, "no filter named 'frobnicate'");
	expect_err("{{ x is frobnicated }}", LQ_ERR_UNSUPPORTED, "no test named 'frobnicated'");
	expect_err("{{ f(*args) }}", LQ_ERR_FORMAT, "*args and **kwargs");
	expect_err("{% for x in y recursive %}{% endfor %}", LQ_ERR_FORMAT, "recursive for loops");
	expect_err("{{ 99999999999999999999999 }}", LQ_ERR_UNSUPPORTED, "integer literal too large");
}

static void test_runtime_errors(void)
{
	expect_err("{{ raise_exception('Only user and assistant roles are supported!') }}", LQ_ERR_INVALID,
		   "chat template error (line 1): Only user and assistant roles are supported!");
	expect_err("a\nb\n{{ 1 + 'a' }}", LQ_ERR_INVALID, "line 3: unsupported operand type(s) for +: 'int' and 'str'");
	expect_err("{{ 'a' + 1 }}", LQ_ERR_INVALID, "can only concatenate str (not \"int\") to str");
	expect_err("{{ nope.attr }}", LQ_ERR_INVALID, "'nope' is undefined");
	expect_err("{{ messages[0].nope.deeper }}", LQ_ERR_INVALID, "'dict object' has no attribute 'nope'");
	expect_err("{{ nope() }}", LQ_ERR_INVALID, "'nope' is undefined");
	expect_err("{{ 'abc'() }}", LQ_ERR_INVALID, "'str' object is not callable");
	expect_err("{{ 1 / 0 }}", LQ_ERR_INVALID, "division by zero");
	expect_err("{{ 1 // 0 }}", LQ_ERR_INVALID, "division or modulo by zero");
	expect_err("{% for x in 5 %}{% endfor %}", LQ_ERR_INVALID, "'int' object is not iterable");
	expect_err("{% set x = 1 %}{% set x.y = 2 %}", LQ_ERR_INVALID, "non-namespace object 'x'");
	expect_err("{% set a, b = [1, 2, 3] %}", LQ_ERR_INVALID, "too many values to unpack");
	expect_err("{% break %}", LQ_ERR_INVALID, "'break' outside of a loop");
	expect_err("{{ [1]|tojson }}{{ {'a': nope}|tojson }}", LQ_ERR_INVALID, "not JSON serializable");
	expect_err("{{ 'a' < 1 }}", LQ_ERR_INVALID, "'<' not supported between instances of 'str' and 'int'");
	expect_err("{{ 'abc'[::0] }}", LQ_ERR_INVALID, "slice step cannot be zero");
	expect_err("{{ {'a': 1}|items|first|tojson }}{{ 5|items|list }}", LQ_ERR_INVALID, "Can only get item pairs");
	expect_err("{{ x|frobnicate if true }}", LQ_ERR_UNSUPPORTED, "no filter named 'frobnicate'");
	expect_out("{% if false %}{{ x|frobnicate }}{% endif %}{{ 'ok' if true else x|frob }}{{ [1,2]|select|first }}{{ {'a':1}.items() }}", "ok1dict_items([('a', 1)])");
	expect_err("{{ [1]|select }}", LQ_ERR_UNSUPPORTED, "cannot print a generator");
	expect_err("{{ [1]|select|length }}", LQ_ERR_INVALID, "has no len()");
	expect_err("{{ '%*d' % (1, 2) }}", LQ_ERR_UNSUPPORTED, "'*' width");
	expect_err("{{ '%s %s' % (1,) }}", LQ_ERR_INVALID, "not enough arguments for format string");
	expect_err("{{ '%q' % 1 }}", LQ_ERR_INVALID, "unsupported format character 'q'");
	expect_err("{{ 9223372036854775807 + 1 }}", LQ_ERR_UNSUPPORTED, "integer overflow");
	expect_err("{{ {[1]: 2} }}", LQ_ERR_INVALID, "unhashable type");
	expect_err("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", LQ_ERR_INVALID, "takes not more than 1 argument");
	expect_err("{{ undefined_value + 1 }}", LQ_ERR_INVALID, "'undefined_value' is undefined");

	/* bad inputs to the API */
	struct lq_template *t = NULL;
	struct lq_error err = { 0 };
	char *out = NULL;
	size_t n;
	CHECK_OK(lq_template_compile(&t, "{{ messages|length }}", 21, &err), &err);
	CHECK(lq_template_render(t, "[]", 2, NULL, &out, &n, &err) == LQ_ERR_INVALID &&
	      strstr(err.msg, "empty conversation"), "%s", err.msg);
	CHECK(lq_template_render(t, "{\"role\":1}", 10, NULL, &out, &n, &err) == LQ_ERR_INVALID &&
	      strstr(err.msg, "JSON array"), "%s", err.msg);
	CHECK(lq_template_render(t, "[1]", 3, NULL, &out, &n, &err) == LQ_ERR_INVALID &&
	      strstr(err.msg, "messages[0] is not an object"), "%s", err.msg);
	CHECK(lq_template_render(t, "[{\"role\":", 9, NULL, &out, &n, &err) == LQ_ERR_INVALID &&
	      strstr(err.msg, "invalid JSON"), "%s", err.msg);
	struct lq_template_vars v = { 0 };
	v.extra_json = "{\"messages\": 1}";
	CHECK(lq_template_render(t, MSGS, strlen(MSGS), &v, &out, &n, &err) == LQ_ERR_INVALID &&
	      strstr(err.msg, "reserved"), "%s", err.msg);
	v.extra_json = "[1]";
	CHECK(lq_template_render(t, MSGS, strlen(MSGS), &v, &out, &n, &err) == LQ_ERR_INVALID, "%s", err.msg);
	v.extra_json = NULL;
	v.tools_json = "[{\"type\": \"function\"}]";
	CHECK_OK(lq_template_render(t, MSGS, strlen(MSGS), &v, &out, &n, &err), &err);
	CHECK(out && !strcmp(out, "2"), "%s", out);
	free(out);
	lq_template_free(t);
	lq_template_free(NULL);
}

static void test_vars(void)
{
	struct lq_template_vars v = { 0 };
	struct lq_error err = { 0 };
	char *out;
	v.bos_token = "<s>";
	v.add_generation_prompt = 1;
	v.tools_json = "[{\"name\": \"f\", \"x\": [1, 2.5, null]}]";
	v.extra_json = "{\"enable_thinking\": false, \"n\": 3}";
	v.tokens_json = "{\"image_token\": \"<img>\"}";
	v.now = 1721952000; /* 2024-07-26 00:00 UTC */
	int rc = render("{{ bos_token }}{{ eos_token is defined }}{{ add_generation_prompt }}{{ tools|tojson }}"
			"{{ enable_thinking }}{{ n * 2 }}{{ image_token }}{{ strftime_now('%Y')|length }}",
			&v, &out, &err);
	CHECK(rc == 0 && !strcmp(out, "<s>FalseTrue[{\"name\": \"f\", \"x\": [1, 2.5, null]}]False6<img>4"),
	      "%s", rc ? err.msg : out);
	free(out);
	/* reasoning fields are aliased as transformers does */
	struct lq_template *t = NULL;
	const char *m = "[{\"role\":\"assistant\",\"content\":\"a\",\"reasoning\":\"r\",\"x\":null}]";
	CHECK_OK(lq_template_compile(&t, "{{ messages[0]|tojson }}", 24, &err), &err);
	size_t n;
	CHECK_OK(lq_template_render(t, m, strlen(m), NULL, &out, &n, &err), &err);
	CHECK(out && !strcmp(out, "{\"thinking\": \"r\", \"role\": \"assistant\", \"content\": \"a\", "
				  "\"reasoning\": \"r\", \"reasoning_content\": \"r\"}"), "%s", out);
	free(out);
	lq_template_free(t);
}

static void test_limits(void)
{
	struct lq_error err = { 0 };
	char *out;
	/* deep nesting of expressions and blocks is refused, not a stack overflow */
	size_t depth = 5000;
	char *src = malloc(depth * 2 + 16);
	size_t k = 0;
	k += (size_t)sprintf(src + k, "{{ ");
	for (size_t i = 0; i < depth; i++)
		src[k++] = '(';
	src[k++] = '1';
	for (size_t i = 0; i < depth; i++)
		src[k++] = ')';
	k += (size_t)sprintf(src + k, " }}");
	src[k] = 0;
	int rc = render(src, NULL, &out, &err);
	CHECK(rc == LQ_ERR_FORMAT && strstr(err.msg, "nested too deeply"), "deep parens: %d %s", rc, err.msg);
	free(src);
	src = malloc(depth * 24 + 16);
	k = 0;
	for (size_t i = 0; i < depth; i++)
		k += (size_t)sprintf(src + k, "{%% if 1 %%}");
	for (size_t i = 0; i < depth; i++)
		k += (size_t)sprintf(src + k, "{%% endif %%}");
	rc = render(src, NULL, &out, &err);
	CHECK(rc == LQ_ERR_FORMAT && strstr(err.msg, "nested too deeply"), "deep ifs: %d %s", rc, err.msg);
	free(src);
	src = malloc(depth * 4 + 16);
	k = 0;
	k += (size_t)sprintf(src + k, "{{ ");
	for (size_t i = 0; i < depth; i++)
		k += (size_t)sprintf(src + k, "not ");
	k += (size_t)sprintf(src + k, "1 }}");
	rc = render(src, NULL, &out, &err);
	CHECK(rc == LQ_ERR_FORMAT && strstr(err.msg, "nested too deeply"), "deep not: %d %s", rc, err.msg);
	free(src);
	/* a moderately nested template still works */
	expect_out("{% if 1 %}{% if 1 %}{% for i in [1] %}{% if 1 %}{{ ((((1)))) }}{% endif %}{% endfor %}{% endif %}{% endif %}", "1");
	/* huge loops, ranges and outputs are bounded */
	expect_err("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
		   LQ_ERR_INVALID, "rendering");
	expect_err("{{ range(1000000)|length }}", LQ_ERR_INVALID, "range too big");
	expect_err("{{ 'x' * 100000000000 }}", LQ_ERR_INVALID, "output limit");
	expect_err("{% set ns = namespace(s='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') %}"
		   "{% for i in range(100000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", LQ_ERR_INVALID, "limit");
	expect_err("{% for i in range(100000) %}{% for j in range(1000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
		   LQ_ERR_INVALID, "limit");
	expect_err("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", LQ_ERR_INVALID, "nested too deeply");
	expect_err("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns|tojson }}", LQ_ERR_INVALID, "not JSON serializable");
	expect_err("{% set ns = namespace(l=[]) %}{% for i in range(300) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
		   LQ_ERR_INVALID, "nested too deeply");
	struct lq_template_vars v = { 0 };
	v.max_output = 10;
	rc = render("{{ 'x' * 11 }}", &v, &out, &err);
	CHECK(rc == LQ_ERR_INVALID && strstr(err.msg, "output limit"), "max_output: %s", err.msg);
	rc = render("{{ 'x' * 10 }}", &v, &out, &err);
	CHECK(rc == 0 && strlen(out) == 10, "max_output exact: %s", rc ? err.msg : out);
	free(out);
	/* deep JSON input */
	struct lq_template *t = NULL;
	CHECK_OK(lq_template_compile(&t, "x", 1, &err), &err);
	size_t d = 1000;
	char *m = malloc(d * 2 + 64);
	k = (size_t)sprintf(m, "[{\"role\":\"user\",\"content\":");
	for (size_t i = 0; i < d; i++)
		m[k++] = '[';
	for (size_t i = 0; i < d; i++)
		m[k++] = ']';
	k += (size_t)sprintf(m + k, "}]");
	size_t n;
	rc = lq_template_render(t, m, k, NULL, &out, &n, &err);
	CHECK(rc == LQ_ERR_INVALID && strstr(err.msg, "nested too deeply"), "deep JSON: %d %s", rc, err.msg);
	free(m);
	lq_template_free(t);
	/* random garbage never crashes */
	unsigned s = 12345;
	const char alphabet[] = "{}%#-+()[]'\"|.,:~=<>!*/ abcxyzifendforsetin0123\n\\";
	for (int iter = 0; iter < 2000; iter++) {
		char g[64];
		int len = 1 + (int)((s = s * 1103515245 + 12345) >> 16) % 63;
		for (int i = 0; i < len; i++)
			g[i] = alphabet[((s = s * 1103515245 + 12345) >> 16) % (sizeof alphabet - 1)];
		g[len] = 0;
		rc = render(g, NULL, &out, &err);
		free(out);
		CHECK(rc == 0 || err.msg[0], "garbage %s: no message", g);
	}
}

static char *slurp_gz(const char *path)
{
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "gzip -dc '%s' 2>/dev/null", path);
	FILE *p = popen(cmd, "r");
	if (!p)
		return NULL;
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap);
	size_t k;
	while ((k = fread(b + n, 1, cap - n, p)) > 0) {
		n += k;
		if (n == cap)
			b = realloc(b, cap *= 2);
	}
	b[n] = 0;
	if (pclose(p) != 0 || n == 0) {
		free(b);
		return NULL;
	}
	return b;
}

static void check_tokens(const char *name, const struct lq_chat_config *cfg, json_t *want)
{
	const char *keys[] = { "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token" };
	char *const vals[] = { cfg->bos_token, cfg->eos_token, cfg->unk_token, cfg->sep_token, cfg->pad_token,
			       cfg->cls_token, cfg->mask_token };
	size_t nstd = 0;
	for (int i = 0; i < 7; i++) {
		json_t *w = json_object_get(want, keys[i]);
		CHECK((!w && !vals[i]) || (w && vals[i] && !strcmp(json_string_value(w), vals[i])),
		      "%s: %s: want %s, got %s", name, keys[i], w ? json_string_value(w) : "none",
		      vals[i] ? vals[i] : "none");
		nstd += w != NULL;
	}
	json_t *x = cfg->extra_tokens_json ? json_loads(cfg->extra_tokens_json, 0, NULL) : NULL;
	CHECK(json_object_size(want) == nstd + json_object_size(x), "%s: extra special tokens differ", name);
	const char *k;
	json_t *v;
	json_object_foreach(x, k, v) {
		json_t *w = json_object_get(want, k);
		CHECK(w && json_equal(w, v), "%s: extra token %s", name, k);
	}
	json_decref(x);
}

static void test_config(void)
{
	struct lq_chat_config cfg;
	struct lq_error err = { 0 };
	/* string and list forms, AddedToken objects, missing template */
	const char *a = "{\"chat_template\": \"{{ bos_token }}x\", \"bos_token\": {\"content\": \"<s>\", \"__type\": \"AddedToken\"},"
			" \"eos_token\": \"</s>\", \"unk_token\": null, \"model_max_length\": 1000000000000000019884624838656}";
	CHECK_OK(lq_chat_config_parse(&cfg, a, strlen(a), 0, &err), &err);
	CHECK(cfg.chat_template && !strcmp(cfg.chat_template, "{{ bos_token }}x"), "template");
	CHECK(cfg.bos_token && !strcmp(cfg.bos_token, "<s>") && !strcmp(cfg.eos_token, "</s>") && !cfg.unk_token, "tokens");
	lq_chat_config_release(&cfg);
	const char *b = "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": \"default\", \"template\": \"D\"}]}";
	CHECK_OK(lq_chat_config_parse(&cfg, b, strlen(b), 0, &err), &err);
	CHECK(cfg.chat_template && !strcmp(cfg.chat_template, "D"), "default template");
	lq_chat_config_release(&cfg);
	CHECK_OK(lq_chat_config_parse(&cfg, b, strlen(b), 1, &err), &err);
	CHECK(cfg.chat_template && !strcmp(cfg.chat_template, "T"), "tool_use template");
	lq_chat_config_release(&cfg);
	const char *c = "{\"chat_template\": [{\"name\": \"rag\", \"template\": \"R\"}]}";
	CHECK(lq_chat_config_parse(&cfg, c, strlen(c), 0, &err) == LQ_ERR_NOTFOUND && strstr(err.msg, "default"), "%s", err.msg);
	lq_chat_config_release(&cfg);
	const char *d = "{\"bos_token\": \"<s>\"}";
	CHECK(lq_chat_config_parse(&cfg, d, strlen(d), 0, &err) == LQ_ERR_NOTFOUND && strstr(err.msg, "no chat template"),
	      "%s", err.msg);
	CHECK(cfg.bos_token && !strcmp(cfg.bos_token, "<s>"), "tokens filled without a template");
	lq_chat_config_release(&cfg);
	CHECK(lq_chat_config_parse(&cfg, "[1", 2, 0, &err) == LQ_ERR_FORMAT, "%s", err.msg);
	lq_chat_config_release(&cfg);
	CHECK(lq_chat_config_parse(&cfg, "{\"chat_template\": 5}", 20, 0, &err) == LQ_ERR_FORMAT, "%s", err.msg);
	lq_chat_config_release(&cfg);
	CHECK(lq_chat_config_parse(&cfg, "{\"eos_token\": 5, \"chat_template\": \"x\"}", 38, 0, &err) == LQ_ERR_FORMAT, "%s", err.msg);
	lq_chat_config_release(&cfg);
	lq_chat_config_release(NULL);

	/* all in one */
	const char *e = "{\"chat_template\": \"{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
			"{% if add_generation_prompt %}<assistant>{% endif %}{{ x }}\", \"bos_token\": \"<s>\"}";
	char *out = NULL;
	size_t olen;
	CHECK_OK(lq_chat_template_apply(e, strlen(e), NULL, MSGS, strlen(MSGS), 1, NULL, "{\"x\": 7}", &out, &olen, &err), &err);
	CHECK(out && !strcmp(out, "<s><system>sys<user>hi<assistant>7"), "%s", out);
	free(out);
	CHECK_OK(lq_chat_template_apply(d, strlen(d), "[{{ messages|length }}]", MSGS, strlen(MSGS), 0, NULL, NULL, &out, &olen, &err), &err);
	CHECK(out && !strcmp(out, "[2]"), "override: %s", out);
	free(out);
	CHECK(lq_chat_template_apply(d, strlen(d), NULL, MSGS, strlen(MSGS), 0, NULL, NULL, &out, &olen, &err) == LQ_ERR_NOTFOUND &&
	      !out, "%s", err.msg);

	/* the special tokens transformers computes for the real tokenizers */
	json_t *tokens = json_load_file("tests/fixtures/template_expected_tokens.json", 0, NULL);
	CHECK(tokens != NULL, "tests/fixtures/template_expected_tokens.json");
	const char *name;
	json_t *want;
	json_object_foreach(tokens, name, want) {
		char path[1024];
		/* the committed subset */
		snprintf(path, sizeof path, "tests/fixtures/templates/%s.json", name);
		json_t *sub = json_load_file(path, 0, NULL);
		char *text = sub ? json_dumps(sub, 0) : NULL;
		CHECK(text != NULL, "%s", path);
		if (text) {
			int rc = lq_chat_config_parse(&cfg, text, strlen(text), 0, &err);
			CHECK(rc == 0 || (rc == LQ_ERR_NOTFOUND && !strcmp(name, "llama2")), "%s: %s", path, err.msg);
			check_tokens(path, &cfg, want);
			lq_chat_config_release(&cfg);
		}
		free(text);
		json_decref(sub);
		/* the full file, when the shared fixtures are there */
		snprintf(path, sizeof path, "tests/fixtures/tokenizers/%s/tokenizer_config.json.gz", name);
		char *full = slurp_gz(path);
		if (!full) {
			snprintf(path, sizeof path, "%s/fixtures/tokenizers/%s/tokenizer_config.json.gz", test_shared_dir(), name);
			full = slurp_gz(path);
		}
		if (!full) {
			printf("skipping %s: shared fixture not found\n", path);
			continue;
		}
		int rc = lq_chat_config_parse(&cfg, full, strlen(full), 0, &err);
		if (!strcmp(name, "llama2"))
			CHECK(rc == LQ_ERR_NOTFOUND && strstr(err.msg, "no chat template"), "llama2: %s", err.msg);
		else
			CHECK(rc == 0, "%s: %s", path, err.msg);
		check_tokens(path, &cfg, want);
		lq_chat_config_release(&cfg);
		free(full);
	}
	json_decref(tokens);
}

int main(void)
{
	test_features_fixture();
	test_syntax_errors();
	test_runtime_errors();
	test_vars();
	test_limits();
	test_config();
	return test_summary();
}
