/*
 * bench_template.c - chat template compile and render times for the real
 * templates in tests/fixtures/templates (run from the repo root; make bench).
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef NMSG
#define NMSG 200
#endif

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long sz = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)sz + 1);
	*n = fread(b, 1, (size_t)sz, f);
	b[*n] = 0;
	fclose(f);
	return b;
}

int main(void)
{
	static const char *names[] = { "llama3_1_instruct", "qwen3", "gemma3", "mistral_v0_3", NULL };
	/* a 200-message conversation, about 100 kB of text */
	size_t cap = 1 << 21, n = 0;
	char *msgs = malloc(cap);
	n += (size_t)snprintf(msgs + n, cap - n, "[{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"}");
	for (int i = 0; i < NMSG; i++)
		n += (size_t)snprintf(msgs + n, cap - n,
				      ",{\"role\":\"%s\",\"content\":\"Message %d: the quick brown fox jumps over "
				      "the lazy dog, again and again, until the sentence is about half a kilobyte long. "
				      "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
				      "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis "
				      "nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. "
				      "Duis aute irure dolor in reprehenderit in voluptate velit esse cillum.\"}",
				      i % 2 ? "assistant" : "user", i);
	n += (size_t)snprintf(msgs + n, cap - n, "]");
	printf("%-20s %12s %14s %12s\n", "template", "compile us", "render ms", "output kB");
	for (int k = 0; names[k]; k++) {
		char path[256];
		snprintf(path, sizeof path, "tests/fixtures/templates/%s.json", names[k]);
		size_t len;
		char *text = slurp(path, &len);
		if (!text) {
			printf("%-20s (fixture not found: run from the repo root)\n", names[k]);
			continue;
		}
		struct lq_chat_config cfg;
		struct lq_error err = { 0 };
		if (lq_chat_config_parse(&cfg, text, len, 0, &err)) {
			printf("%-20s %s\n", names[k], err.msg);
			free(text);
			lq_chat_config_release(&cfg);
			continue;
		}
		struct lq_template *t = NULL;
		int reps = 200;
		double t0 = now();
		for (int r = 0; r < reps; r++) {
			lq_template_free(t);
			t = NULL;
			if (lq_template_compile(&t, cfg.chat_template, strlen(cfg.chat_template), &err))
				break;
		}
		double tc = (now() - t0) / reps;
		struct lq_template_vars v = { 0 };
		lq_chat_config_vars(&cfg, &v);
		v.add_generation_prompt = 1;
		char *out = NULL;
		size_t olen = 0;
		int rr = 20, rc = 0;
		t0 = now();
		for (int r = 0; r < rr && rc == 0; r++) {
			free(out);
			out = NULL;
			rc = lq_template_render(t, msgs, n, &v, &out, &olen, &err);
		}
		double tr = (now() - t0) / rr;
		if (rc)
			printf("%-20s %s\n", names[k], err.msg);
		else
			printf("%-20s %12.1f %14.3f %12.1f\n", names[k], tc * 1e6, tr * 1e3, (double)olen / 1e3);
		free(out);
		lq_template_free(t);
		lq_chat_config_release(&cfg);
		free(text);
	}
	free(msgs);
	return 0;
}
