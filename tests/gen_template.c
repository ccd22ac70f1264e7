/*
 * gen_template.c - render chat templates with libquant (test helper).
 *
 *   gen_template CONFIG MESSAGES.json [--no-generation-prompt] [--tools T.json] [--extra JSON]
 *       render one conversation; CONFIG is a tokenizer_config.json; prints the text
 *   gen_template --check CONFIG CASES.jsonl
 *       render every case of a template_expected_*.jsonl file and compare byte for
 *       byte with the expected text (or expected error); prints "N passed, N failed"
 *   gen_template --check-features CASES.jsonl
 *       the same for cases that carry their own "template" (template_expected_features.jsonl)
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
	if (!f)
		return NULL;
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap);
	for (;;) {
		if (n == cap) {
			cap *= 2;
			b = realloc(b, cap);
		}
		size_t k = fread(b + n, 1, cap - n, f);
		if (!k)
			break;
		n += k;
	}
	if (f != stdin)
		fclose(f);
	b = realloc(b, n + 1);
	b[n] = 0;
	*len = n;
	return b;
}

static int load(const char *cfg_path, struct lq_chat_config *cfg, struct lq_template **t)
{
	struct lq_error err = { 0 };
	memset(cfg, 0, sizeof *cfg);
	size_t n;
	char *text = read_file(cfg_path, &n);
	if (!text) {
		fprintf(stderr, "gen_template: cannot read '%s'\n", cfg_path);
		return 1;
	}
	int rc = lq_chat_config_parse(cfg, text, n, 0, &err);
	free(text);
	if (rc) {
		fprintf(stderr, "gen_template: %s\n", err.msg);
		return 1;
	}
	if (lq_template_compile(t, cfg->chat_template, strlen(cfg->chat_template), &err)) {
		fprintf(stderr, "gen_template: %s\n", err.msg);
		return 1;
	}
	return 0;
}

static void show_diff(const char *want, const char *got)
{
	size_t i = 0;
	while (want[i] && want[i] == got[i])
		i++;
	size_t from = i > 40 ? i - 40 : 0;
	fprintf(stderr, "  first difference at byte %zu\n  want: ...", i);
	for (size_t k = from; want[k] && k < i + 40; k++)
		fputc(want[k] == '\n' ? '|' : want[k], stderr);
	fprintf(stderr, "\n  got:  ...");
	for (size_t k = from; got[k] && k < i + 40; k++)
		fputc(got[k] == '\n' ? '|' : got[k], stderr);
	fputc('\n', stderr);
}

static int check(const char *cfg_path, const char *cases_path)
{
	struct lq_chat_config cfg;
	struct lq_template *t = NULL;
	memset(&cfg, 0, sizeof cfg);
	if (cfg_path && load(cfg_path, &cfg, &t)) {
		lq_chat_config_release(&cfg);
		return 1;
	}
	size_t n;
	char *text = read_file(cases_path, &n);
	if (!text) {
		fprintf(stderr, "gen_template: cannot read '%s'\n", cases_path);
		return 1;
	}
	int pass = 0, fail = 0;
	char *save = NULL;
	int own = t == NULL; /* cases carry their own "template" (features file) */
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		json_error_t je;
		json_t *c = json_loads(line, 0, &je);
		if (!c) {
			fprintf(stderr, "gen_template: %s: bad line: %s\n", cases_path, je.text);
			fail++;
			continue;
		}
		const char *id = json_string_value(json_object_get(c, "case"));
		if (own) {
			json_t *src = json_object_get(c, "template");
			struct lq_error cerr = { 0 };
			lq_template_free(t);
			t = NULL;
			if (lq_template_compile(&t, json_string_value(src), json_string_length(src), &cerr)) {
				if (json_is_string(json_object_get(c, "error"))) {
					pass++;
				} else {
					fail++;
					fprintf(stderr, "FAIL %s case %s: %s\n", cases_path, id ? id : "?", cerr.msg);
				}
				json_decref(c);
				continue;
			}
		}
		struct lq_template_vars v = { 0 };
		lq_chat_config_vars(&cfg, &v);
		v.add_generation_prompt = json_is_true(json_object_get(c, "add_generation_prompt"));
		char *msgs = json_dumps(json_object_get(c, "messages"), JSON_COMPACT | JSON_ENCODE_ANY);
		json_t *tools = json_object_get(c, "tools"), *extra = json_object_get(c, "extra");
		char *tj = tools && !json_is_null(tools) ? json_dumps(tools, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
		char *xj = extra && !json_is_null(extra) ? json_dumps(extra, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
		v.tools_json = tj;
		v.extra_json = xj;
		json_t *now = json_object_get(c, "now");
		if (json_is_integer(now))
			v.now = json_integer_value(now);
		struct lq_error err = { 0 };
		char *out = NULL;
		size_t olen = 0;
		int rc = lq_template_render(t, msgs, strlen(msgs), &v, &out, &olen, &err);
		json_t *exp = json_object_get(c, "expected");
		json_t *experr = json_object_get(c, "error");
		if (json_is_string(exp)) {
			const char *want = json_string_value(exp);
			size_t wlen = json_string_length(exp);
			if (rc == 0 && olen == wlen && memcmp(out, want, wlen) == 0) {
				pass++;
			} else {
				fail++;
				fprintf(stderr, "FAIL %s case %s: ", cases_path, id ? id : "?");
				if (rc)
					fprintf(stderr, "error: %s\n", err.msg);
				else {
					fprintf(stderr, "output differs (%zu bytes, want %zu)\n", olen, wlen);
					show_diff(want, out);
				}
			}
		} else if (json_is_string(experr)) {
			/* the reference raised: we must fail too, with the same exception text when
			   the template raised it through raise_exception() */
			const char *want = json_string_value(experr);
			if (rc != 0 && (!*want || strstr(err.msg, want))) {
				pass++;
			} else {
				fail++;
				fprintf(stderr, "FAIL %s case %s: expected an error containing '%s', got %s\n",
					cases_path, id ? id : "?", want, rc ? err.msg : "success");
			}
		} else {
			fprintf(stderr, "gen_template: %s case %s: no expected output\n", cases_path, id ? id : "?");
			fail++;
		}
		free(out);
		free(msgs);
		free(tj);
		free(xj);
		json_decref(c);
	}
	free(text);
	lq_template_free(t);
	lq_chat_config_release(&cfg);
	printf("%d passed, %d failed\n", pass, fail);
	return fail ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "--check"))
		return check(argv[2], argv[3]);
	if (argc == 3 && !strcmp(argv[1], "--check-features"))
		return check(NULL, argv[2]);
	if (argc < 3) {
		fprintf(stderr, "usage: gen_template CONFIG MESSAGES.json [--no-generation-prompt] "
				"[--tools FILE] [--extra JSON]\n"
				"       gen_template --check CONFIG CASES.jsonl\n");
		return 2;
	}
	struct lq_chat_config cfg;
	struct lq_template *t = NULL;
	int rc = 1;
	char *tools = NULL;
	if (load(argv[1], &cfg, &t))
		goto out;
	struct lq_template_vars v = { 0 };
	lq_chat_config_vars(&cfg, &v);
	v.add_generation_prompt = 1;
	for (int i = 3; i < argc; i++) {
		size_t tn;
		if (!strcmp(argv[i], "--no-generation-prompt")) {
			v.add_generation_prompt = 0;
		} else if (!strcmp(argv[i], "--tools") && i + 1 < argc) {
			tools = read_file(argv[++i], &tn);
			v.tools_json = tools;
		} else if (!strcmp(argv[i], "--extra") && i + 1 < argc) {
			v.extra_json = argv[++i];
		} else {
			fprintf(stderr, "gen_template: unknown option '%s'\n", argv[i]);
			rc = 2;
			goto out;
		}
	}
	size_t mn;
	char *msgs = read_file(argv[2], &mn);
	if (!msgs) {
		fprintf(stderr, "gen_template: cannot read '%s'\n", argv[2]);
		goto out;
	}
	struct lq_error err = { 0 };
	char *text = NULL;
	size_t len = 0;
	if (lq_template_render(t, msgs, mn, &v, &text, &len, &err)) {
		fprintf(stderr, "gen_template: %s\n", err.msg);
	} else {
		fwrite(text, 1, len, stdout);
		rc = fflush(stdout) ? 1 : 0;
	}
	free(text);
	free(msgs);
out:
	free(tools);
	lq_template_free(t);
	lq_chat_config_release(&cfg);
	return rc;
}
