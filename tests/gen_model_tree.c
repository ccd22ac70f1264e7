/*
 * gen_model_tree - render a model description from a config.json and an
 * optional tensor list, for tests/cli_model.sh (compared byte for byte with
 * the transformers fixtures of tests/model_reference.py).
 *
 * usage: gen_model_tree [options] CONFIG.json
 *   -l, --tensors FILE   tensor list: "name DTYPE d0 d1 ..." per line; the
 *                        model is validated against it (warnings on stderr)
 *   -s, --checkpoint P   validate against a safetensors checkpoint (file or
 *                        directory) through lq_model_from_st (headers only)
 *   -w, --write-sparse F write F: a safetensors file with the model's tensors
 *                        (bf16, lm_head omitted when tied) whose data is a hole
 *                        (a sparse file: a real header, no disk used), then exit
 *   -t, --qtype Q        storage plan: none (default), nf4, fp4, int8
 *   -b, --block-size N   (default 64)
 *   -n, --no-double-quant
 *   -k, --keep GLOB      keep tensors whose name matches GLOB unquantized
 *   -j, --json           print the JSON tree instead of the text
 *   -f, --footprint      print "n_params hf_bytes resident_bytes stats_bytes
 *                        bnb_resident_bytes lq_bytes" instead of the tree
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) the libquant authors
 */
#include "libquant.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <getopt.h>
#include <stdio.h>
#include <unistd.h>
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

/* A safetensors header for every (untied) parameter, data left as a hole. */
static int write_sparse(const struct lq_model *m, const char *path)
{
	size_t cap = 1 << 20, o = 0;
	char *h = malloc(cap);
	uint64_t off = 0;
	if (!h)
		return 1;
	o += (size_t)snprintf(h + o, cap - o, "{");
	for (size_t i = 0; i < lq_model_nparams(m); i++) {
		const struct lq_model_param *p = lq_model_param(m, i);
		if (p->tied)
			continue;
		if (cap - o < 512) {
			char *q = realloc(h, cap *= 2);
			if (!q) {
				free(h);
				return 1;
			}
			h = q;
		}
		uint64_t nb = p->nelem * 2;
		o += (size_t)snprintf(h + o, cap - o, "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu", o > 1 ? "," : "",
				      p->name, (unsigned long long)p->shape[0]);
		if (p->ndim == 2)
			o += (size_t)snprintf(h + o, cap - o, ",%llu", (unsigned long long)p->shape[1]);
		o += (size_t)snprintf(h + o, cap - o, "],\"data_offsets\":[%llu,%llu]}",
				      (unsigned long long)off, (unsigned long long)(off + nb));
		off += nb;
	}
	o += (size_t)snprintf(h + o, cap - o, "}");
	while (o % 8)
		h[o++] = ' ';
	unsigned char len[8];
	for (int i = 0; i < 8; i++)
		len[i] = (unsigned char)((uint64_t)o >> (8 * i));
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int bad = fd < 0 || write(fd, len, 8) != 8 || write(fd, h, o) != (ssize_t)o ||
		  ftruncate(fd, (off_t)(8 + o + off)) != 0;
	if (fd >= 0 && close(fd))
		bad = 1;
	free(h);
	if (bad)
		fprintf(stderr, "gen_model_tree: cannot write '%s'\n", path);
	return bad;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"tensors", required_argument, 0, 'l'}, {"qtype", required_argument, 0, 't'},
		{"checkpoint", required_argument, 0, 's'}, {"keep", required_argument, 0, 'k'}, {"write-sparse", required_argument, 0, 'w'},
		{"block-size", required_argument, 0, 'b'}, {"no-double-quant", no_argument, 0, 'n'},
		{"json", no_argument, 0, 'j'}, {"footprint", no_argument, 0, 'f'}, {0, 0, 0, 0}};
	const char *tensors = NULL, *ckpt = NULL, *sparse = NULL, *keep = NULL;
	struct lq_qparams q = {LQ_QTYPE_NONE, 64, 1};
	int json = 0, foot = 0, c;
	while ((c = getopt_long(argc, argv, "l:t:b:njfs:w:k:", opts, NULL)) != -1) {
		switch (c) {
		case 'l': tensors = optarg; break;
		case 's': ckpt = optarg; break;
		case 'k': keep = optarg; break;
		case 'w': sparse = optarg; break;
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
	int rc;
	if (ckpt) {
		struct lq_st *st = NULL;
		rc = lq_st_open(&st, ckpt, &err);
		if (!rc)
			rc = lq_model_from_st(&m, text, len, st, &err);
		lq_st_close(st);
		if (!rc)
			for (size_t i = 0; i < lq_model_nwarnings(m); i++)
				fprintf(stderr, "gen_model_tree: warning: %s\n", lq_model_warning(m, i));
	} else {
		rc = lq_model_from_config(&m, text, len, &err);
	}
	free(text);
	if (rc) {
		fprintf(stderr, "gen_model_tree: %s\n", err.msg);
		return 1;
	}
	const struct lq_model_config *cfg = lq_model_config(m);
	if (sparse) {
		rc = write_sparse(m, sparse);
		lq_model_free(m);
		return rc;
	}
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
		if (lq_qparams_check(&q, &err)) {
			fprintf(stderr, "gen_model_tree: %s\n", err.msg);
			lq_model_free(m);
			return 2;
		}
		lq_model_plan_quant(m, &q, 0);
	}
	for (size_t i = 0; keep && i < lq_model_nparams(m); i++) {
		const struct lq_model_param *p = lq_model_param(m, i);
		struct lq_model_storage s = {p->st.dtype, LQ_QTYPE_NONE, 0, 0};
		if (!fnmatch(keep, p->name, 0))
			lq_model_set_storage(m, i, &s, NULL);
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
