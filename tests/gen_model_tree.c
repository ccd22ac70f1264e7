/*
 * gen_model_tree - render a model description from a config.json and an
 * optional tensor list, for tests/cli_model.sh (compared byte for byte with
 * the transformers fixtures of tests/model_reference.py).
 *
 * usage: gen_model_tree [options] CONFIG.json
 *   -l, --tensors FILE   tensor list: "name DTYPE d0 d1 ..." per line; the
 *                        model is validated against it (warnings on stderr)
 *   -t, --qtype Q        storage plan: none (default), nf4, fp4, int8
 *   -b, --block-size N   (default 64)
 *   -n, --no-double-quant
 *   -j, --json           print the JSON tree instead of the text
 *   -f, --footprint      print "n_params hf_bytes resident_bytes stats_bytes
 *                        bnb_resident_bytes lq_bytes" instead of the tree
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) the libquant authors
 */
#include "libquant.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	char *p = malloc(cap);
	for (;;) {
		if (!p)
			break;
		if (n == cap) {
			char *q = realloc(p, cap *= 2);
			if (!q) {
				free(p);
				p = NULL;
				break;
			}
			p = q;
		}
		size_t r = fread(p + n, 1, cap - n, f);
		if (!r)
			break;
		n += r;
	}
	fclose(f);
	*len = n;
	return p;
}

static int parse_dtype(const char *s)
{
	for (int d = 0; d < LQ_DTYPE_COUNT; d++)
		if (!strcmp(s, lq_dtype_name(d)))
			return d;
	return -1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"tensors", required_argument, 0, 'l'}, {"qtype", required_argument, 0, 't'},
		{"block-size", required_argument, 0, 'b'}, {"no-double-quant", no_argument, 0, 'n'},
		{"json", no_argument, 0, 'j'}, {"footprint", no_argument, 0, 'f'}, {0, 0, 0, 0}};
	const char *tensors = NULL;
	struct lq_qparams q = {LQ_QTYPE_NONE, 64, 1};
	int json = 0, foot = 0, c;
	while ((c = getopt_long(argc, argv, "l:t:b:njf", opts, NULL)) != -1) {
		switch (c) {
		case 'l': tensors = optarg; break;
		case 't':
			q.qtype = lq_qtype_parse(optarg);
			if (q.qtype < 0) {
				fprintf(stderr, "gen_model_tree: unknown qtype '%s'\n", optarg);
				return 2;
			}
			break;
		case 'b': q.block_size = atoi(optarg); break;
		case 'n': q.double_quant = 0; break;
		case 'j': json = 1; break;
		case 'f': foot = 1; break;
		default: return 2;
		}
	}
	if (optind + 1 != argc) {
		fprintf(stderr, "usage: gen_model_tree [-l TENSORS] [-t QTYPE] [-j|-f] CONFIG.json\n");
		return 2;
	}
	size_t len;
	char *text = slurp(argv[optind], &len);
	if (!text) {
		fprintf(stderr, "gen_model_tree: cannot read '%s'\n", argv[optind]);
		return 1;
	}
	struct lq_error err = {0};
	struct lq_model *m;
	int rc = lq_model_from_config(&m, text, len, &err);
	free(text);
	if (rc) {
		fprintf(stderr, "gen_model_tree: %s\n", err.msg);
		return 1;
	}
	const struct lq_model_config *cfg = lq_model_config(m);
	if (tensors) {
		FILE *f = fopen(tensors, "r");
		if (!f) {
			fprintf(stderr, "gen_model_tree: cannot read '%s'\n", tensors);
			lq_model_free(m);
			return 1;
		}
		struct lq_model_tensor *t = NULL;
		char **names = NULL;
		size_t n = 0, cap = 0;
		char line[1024];
		while (fgets(line, sizeof line, f)) {
			char *tok = strtok(line, " \t\n");
			if (!tok)
				continue;
			if (n == cap) {
				cap = cap ? cap * 2 : 256;
				t = realloc(t, cap * sizeof *t);
				names = realloc(names, cap * sizeof *names);
				if (!t || !names)
					return 1;
			}
			memset(&t[n], 0, sizeof t[n]);
			names[n] = strdup(tok);
			t[n].name = names[n];
			tok = strtok(NULL, " \t\n");
			t[n].dtype = tok ? parse_dtype(tok) : -1;
			while ((tok = strtok(NULL, " \t\n")) && t[n].ndim < 8)
				t[n].shape[t[n].ndim++] = strtoull(tok, NULL, 10);
			n++;
		}
		fclose(f);
		rc = lq_model_validate(m, t, n, &err);
		for (size_t i = 0; i < n; i++)
			free(names[i]);
		free(names);
		free(t);
		if (rc) {
			fprintf(stderr, "gen_model_tree: %s\n", err.msg);
			lq_model_free(m);
			return 1;
		}
		for (size_t i = 0; i < lq_model_nwarnings(m); i++)
			fprintf(stderr, "gen_model_tree: warning: %s\n", lq_model_warning(m, i));
	}
	/* storage plan over the validated dtypes */
	if (q.qtype != LQ_QTYPE_NONE) {
		for (size_t i = 0; i < lq_model_nparams(m); i++) {
			const struct lq_model_param *p = lq_model_param(m, i);
			if (!p->quantize_default)
				continue;
			struct lq_model_storage s = {p->st.dtype, q.qtype, q.block_size, q.double_quant};
			if (lq_model_set_storage(m, i, &s, &err)) {
				fprintf(stderr, "gen_model_tree: %s\n", err.msg);
				lq_model_free(m);
				return 1;
			}
		}
	}
	(void)cfg;
	char *out = NULL;
	if (foot) {
		struct lq_footprint fp;
		uint64_t lq = 0;
		if ((rc = lq_model_footprint(m, &fp, &err)) ||
		    (rc = lq_model_estimate_lq(m, NULL, 0, 0, &lq, &err))) {
			fprintf(stderr, "gen_model_tree: %s\n", err.msg);
			lq_model_free(m);
			return 1;
		}
		printf("%llu %llu %llu %llu %llu %llu\n", (unsigned long long)fp.n_params,
		       (unsigned long long)fp.hf_bytes, (unsigned long long)fp.resident_bytes,
		       (unsigned long long)fp.stats_bytes, (unsigned long long)fp.bnb_resident_bytes,
		       (unsigned long long)lq);
	} else {
		rc = json ? lq_model_tree_json(m, 2, &out, &err) : lq_model_tree_text(m, &out, NULL, &err);
		if (rc) {
			fprintf(stderr, "gen_model_tree: %s\n", err.msg);
			lq_model_free(m);
			return 1;
		}
		fputs(out, stdout);
		if (json)
			fputc('\n', stdout);
		free(out);
	}
	lq_model_free(m);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "gen_model_tree: write error\n");
		return 1;
	}
	return 0;
}
