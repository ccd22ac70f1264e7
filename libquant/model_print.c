/*
 * model_print.c - the module tree as PyTorch's print(model) shows it, and as
 * JSON.  Uses only the public model API.
 *
 * The text follows torch.nn.Module.__repr__: "Class(" + extra_repr, or the
 * children as "(name): repr" indented by two spaces; nn.ModuleList collapses
 * runs of identical consecutive reprs as "(a-b): n x repr".
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) the libquant authors
 */
#include "internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------- string buffer */

struct sbuf {
	char *p;
	size_t len, cap;
	int oom;
};

static void sb_addn(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : 256;
		while (nc < b->len + n + 1) {
			if (nc > SIZE_MAX / 2) {
				b->oom = 1;
				return;
			}
			nc *= 2;
		}
		char *q = realloc(b->p, nc);
		if (!q) {
			b->oom = 1;
			return;
		}
		b->p = q;
		b->cap = nc;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void sb_add(struct sbuf *b, const char *s) { sb_addn(b, s, strlen(s)); }

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof tmp) {
		b->oom = 1;
		return;
	}
	sb_addn(b, tmp, (size_t)n);
}

/* Append s with every newline followed by `ind` spaces (torch's _addindent). */
static void sb_add_indented(struct sbuf *b, const char *s, int ind)
{
	const char *nl;
	while ((nl = strchr(s, '\n'))) {
		sb_addn(b, s, (size_t)(nl - s) + 1);
		for (int i = 0; i < ind; i++)
			sb_addn(b, " ", 1);
		s = nl + 1;
	}
	sb_add(b, s);
}

/* ---------------------------------------------------- Python float repr */

/* repr() of a Python float: shortest round-trip digits, fixed notation for
 * exponents -4..15, else "d.ddde-XX". */
static void py_float(char *out, size_t n, double x)
{
	if (isnan(x)) {
		snprintf(out, n, "nan");
		return;
	}
	if (isinf(x)) {
		snprintf(out, n, x < 0 ? "-inf" : "inf");
		return;
	}
	char tmp[64];
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
		if (strtod(tmp, NULL) == x)
			break;
	}
	/* tmp: [-]d[.ddd]e[+-]XX */
	char digits[32];
	size_t nd = 0;
	const char *p = tmp;
	int neg = 0;
	if (*p == '-') {
		neg = 1;
		p++;
	}
	for (; *p && *p != 'e'; p++)
		if (*p >= '0' && *p <= '9' && nd < sizeof digits - 1)
			digits[nd++] = *p;
	digits[nd] = 0;
	int exp = *p == 'e' ? atoi(p + 1) : 0;
	while (nd > 1 && digits[nd - 1] == '0')
		digits[--nd] = 0;
	size_t o = 0;
	char res[96];
	if (neg)
		res[o++] = '-';
	if (x == 0) {
		snprintf(res + o, sizeof res - o, "0.0");
	} else if (exp >= -4 && exp < 16) {
		if (exp >= 0) {
			for (int i = 0; i <= exp; i++)
				res[o++] = (size_t)i < nd ? digits[i] : '0';
			res[o++] = '.';
			if ((size_t)exp + 1 < nd)
				for (size_t i = (size_t)exp + 1; i < nd; i++)
					res[o++] = digits[i];
			else
				res[o++] = '0';
		} else {
			res[o++] = '0';
			res[o++] = '.';
			for (int i = 0; i < -exp - 1; i++)
				res[o++] = '0';
			for (size_t i = 0; i < nd; i++)
				res[o++] = digits[i];
		}
		res[o] = 0;
	} else {
		res[o++] = digits[0];
		if (nd > 1) {
			res[o++] = '.';
			for (size_t i = 1; i < nd; i++)
				res[o++] = digits[i];
		}
		snprintf(res + o, sizeof res - o, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
	}
	snprintf(out, n, "%s", res);
}

/* ------------------------------------------------------------ the repr */

static const char *linear_class(const struct lq_model *m, const struct lq_module *mod)
{
	const struct lq_model_param *w = mod->weight >= 0 ? lq_model_param(m, (size_t)mod->weight) : NULL;
	if (w && !w->tied) {
		if (w->st.qtype == LQ_QTYPE_NF4 || w->st.qtype == LQ_QTYPE_FP4)
			return "Linear4bit";
		if (w->st.qtype == LQ_QTYPE_INT8)
			return "Linear8bitLt";
	}
	return mod->cls;
}

/* The one-line form of a leaf module, or "Class" for a container. */
static void leaf_repr(const struct lq_model *m, const struct lq_module *mod, struct sbuf *b)
{
	char f[64];
	switch (mod->kind) {
	case LQ_MOD_LINEAR:
		sb_printf(b, "%s(in_features=%llu, out_features=%llu, bias=%s)", linear_class(m, mod),
			  (unsigned long long)mod->in_features, (unsigned long long)mod->out_features,
			  mod->bias >= 0 ? "True" : "False");
		return;
	case LQ_MOD_EMBEDDING:
		sb_printf(b, "%s(%llu, %llu", mod->cls, (unsigned long long)mod->num_embeddings,
			  (unsigned long long)mod->embedding_dim);
		if (mod->padding_idx >= 0)
			sb_printf(b, ", padding_idx=%lld", (long long)mod->padding_idx);
		sb_add(b, ")");
		return;
	case LQ_MOD_RMSNORM:
		py_float(f, sizeof f, mod->eps);
		sb_printf(b, "%s((%llu,), eps=%s)", mod->cls, (unsigned long long)mod->norm_dim, f);
		return;
	case LQ_MOD_DROPOUT:
		py_float(f, sizeof f, mod->dropout_p);
		sb_printf(b, "%s(p=%s, inplace=False)", mod->cls, f);
		return;
	case LQ_MOD_ACT:
	case LQ_MOD_ROTARY:
		sb_printf(b, "%s()", mod->cls);
		return;
	default:
		sb_add(b, mod->cls);
	}
}

static char *repr(const struct lq_model *m, int idx);

static int is_leaf(const struct lq_module *mod)
{
	return mod->kind != LQ_MOD_CONTAINER && mod->kind != LQ_MOD_LIST;
}

static char *repr_list(const struct lq_model *m, const struct lq_module *mod)
{
	struct sbuf b = {0};
	if (!mod->nchildren) {
		sb_printf(&b, "%s()", mod->cls);
		return b.oom ? (free(b.p), NULL) : b.p;
	}
	char **r = calloc((size_t)mod->nchildren, sizeof *r);
	if (!r)
		return NULL;
	int ok = 1;
	for (int i = 0; i < mod->nchildren && ok; i++)
		ok = (r[i] = repr(m, mod->children[i])) != NULL;
	sb_printf(&b, "%s(", mod->cls);
	for (int i = 0; ok && i < mod->nchildren;) {
		int j = i;
		while (j + 1 < mod->nchildren && !strcmp(r[j + 1], r[i]))
			j++;
		const struct lq_module *c0 = lq_model_module(m, (size_t)mod->children[i]);
		const struct lq_module *c1 = lq_model_module(m, (size_t)mod->children[j]);
		sb_add(&b, "\n  ");
		struct sbuf l = {0};
		if (i == j)
			sb_printf(&l, "(%s): ", c0->name);
		else
			sb_printf(&l, "(%s-%s): %d x ", c0->name, c1->name, j - i + 1);
		sb_add(&l, r[i]);
		if (l.oom)
			ok = 0;
		else
			sb_add_indented(&b, l.p, 2);
		free(l.p);
		i = j + 1;
	}
	sb_add(&b, "\n)");
	for (int i = 0; i < mod->nchildren; i++)
		free(r[i]);
	free(r);
	if (!ok || b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

static char *repr(const struct lq_model *m, int idx)
{
	const struct lq_module *mod = lq_model_module(m, (size_t)idx);
	struct sbuf b = {0};
	if (!mod)
		return NULL;
	if (mod->kind == LQ_MOD_LIST)
		return repr_list(m, mod);
	if (is_leaf(mod) || !mod->nchildren) {
		leaf_repr(m, mod, &b);
		if (!is_leaf(mod))
			sb_add(&b, "()");
	} else {
		sb_printf(&b, "%s(", mod->cls);
		for (int i = 0; i < mod->nchildren; i++) {
			const struct lq_module *c = lq_model_module(m, (size_t)mod->children[i]);
			char *s = repr(m, mod->children[i]);
			if (!s) {
				free(b.p);
				return NULL;
			}
			sb_printf(&b, "\n  (%s): ", c->name);
			sb_add_indented(&b, s, 2);
			free(s);
		}
		sb_add(&b, "\n)");
	}
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

int lq_model_tree_text(const struct lq_model *m, char **out, size_t *len, struct lq_error *err)
{
	*out = NULL;
	char *s = repr(m, 0);
	if (!s)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory rendering the module tree");
	size_t n = strlen(s);
	char *t = realloc(s, n + 2);
	if (!t) {
		free(s);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory rendering the module tree");
	}
	t[n] = '\n';
	t[n + 1] = 0;
	*out = t;
	if (len)
		*len = n + 1;
	return LQ_OK;
}

size_t lq_model_tree_snprint(const struct lq_model *m, char *buf, size_t size)
{
	char *s = NULL;
	size_t n = 0;
	if (lq_model_tree_text(m, &s, &n, NULL)) {
		if (size)
			buf[0] = 0;
		return 0;
	}
	if (size) {
		size_t c = n < size ? n : size - 1;
		memcpy(buf, s, c);
		buf[c] = 0;
	}
	free(s);
	return n;
}

/* ------------------------------------------------------------------ JSON */

static const char *storage_name(const struct lq_model_param *p)
{
	if (p->st.qtype != LQ_QTYPE_NONE)
		return lq_qtype_name(p->st.qtype);
	switch (p->st.dtype) {
	case LQ_DTYPE_F32: return "fp32";
	case LQ_DTYPE_F16: return "fp16";
	case LQ_DTYPE_BF16: return "bf16";
	case LQ_DTYPE_U8: return "u8";
	case LQ_DTYPE_I8: return "i8";
	}
	return "?";
}

static int set_new(json_t *o, const char *k, json_t *v)
{
	return v ? json_object_set_new(o, k, v) : -1;
}

static json_t *param_json(const struct lq_model_param *p)
{
	json_t *o = json_object();
	json_t *shape = json_array();
	uint64_t bytes = 0, stats = 0;
	int bad = !o || !shape;
	for (int d = 0; !bad && d < p->ndim; d++)
		bad = json_array_append_new(shape, json_integer((json_int_t)p->shape[d])) != 0;
	lq_model_param_bytes(p, &bytes, &stats);
	bad = bad || set_new(o, "name", json_string(p->attr)) ||
	      set_new(o, "tensor", json_string(p->name)) || json_object_set_new(o, "shape", shape);
	shape = NULL;
	bad = bad || set_new(o, "dtype", json_string(lq_dtype_name(p->st.dtype))) ||
	      set_new(o, "storage", json_string(storage_name(p))) ||
	      set_new(o, "bytes", json_integer(p->tied ? 0 : (json_int_t)bytes)) ||
	      set_new(o, "stats_bytes", json_integer(p->tied ? 0 : (json_int_t)stats));
	if (!bad && p->st.qtype != LQ_QTYPE_NONE)
		bad = set_new(o, "block_size", json_integer(p->st.block_size)) ||
		      set_new(o, "double_quant", json_boolean(p->st.double_quant));
	if (!bad && p->tied)
		bad = set_new(o, "tied", json_true());
	json_decref(shape);
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *module_json(const struct lq_model *m, int idx, int depth)
{
	const struct lq_module *mod = lq_model_module(m, (size_t)idx);
	if (!mod || depth > 64)
		return NULL;
	json_t *o = json_object(), *params = json_array(), *bufs = json_array(), *kids = json_array();
	struct sbuf r = {0};
	leaf_repr(m, mod, &r);
	const char *cls = mod->kind == LQ_MOD_LINEAR ? linear_class(m, mod) : mod->cls;
	int bad = !o || !params || !bufs || !kids || r.oom ||
		  set_new(o, "name", json_string(mod->name)) ||
		  set_new(o, "path", json_string(mod->path)) ||
		  set_new(o, "class", json_string(cls)) ||
		  set_new(o, "repr", json_string(r.p ? r.p : ""));
	free(r.p);
	if (!bad && mod->layer >= 0 && mod->parent >= 0 &&
	    lq_model_module(m, (size_t)mod->parent)->kind == LQ_MOD_LIST)
		bad = set_new(o, "layer", json_integer(mod->layer));
	int pidx[2] = {mod->weight, mod->bias};
	for (int i = 0; i < 2 && !bad; i++)
		if (pidx[i] >= 0)
			bad = json_array_append_new(
				      params, param_json(lq_model_param(m, (size_t)pidx[i]))) != 0;
	for (size_t i = 0; i < lq_model_nbuffers(m) && !bad; i++) {
		const struct lq_model_buffer *bf = lq_model_buffer(m, i);
		if (bf->module != idx)
			continue;
		json_t *bo = json_object(), *sh = json_array();
		const char *bn = strrchr(bf->name, '.');
		/* a scalar buffer is created in the model dtype: the embedding's (as the footprint) */
		long e = lq_model_find_role(m, LQ_ROLE_EMBED, -1);
		int bdt = bf->ndim == 0 && e >= 0 ? lq_model_param(m, (size_t)e)->st.dtype : bf->dtype;
		bad = !bo || !sh || (bf->ndim && json_array_append_new(sh, json_integer((json_int_t)bf->shape[0]))) ||
		      set_new(bo, "name", json_string(bn ? bn + 1 : bf->name)) ||
		      set_new(bo, "tensor", json_string(bf->name)) || json_object_set_new(bo, "shape", sh) ||
		      set_new(bo, "dtype", json_string(lq_dtype_name(bdt))) ||
		      set_new(bo, "bytes", json_integer((json_int_t)(bf->nelem * lq_dtype_size(bdt)))) ||
		      json_array_append_new(bufs, bo);
	}
	for (int i = 0; i < mod->nchildren && !bad; i++)
		bad = json_array_append_new(kids, module_json(m, mod->children[i], depth + 1)) != 0;
	bad = bad || json_object_set_new(o, "parameters", params);
	params = NULL;
	bad = bad || json_object_set_new(o, "buffers", bufs);
	bufs = NULL;
	bad = bad || json_object_set_new(o, "children", kids);
	kids = NULL;
	if (bad) {
		json_decref(o);
		json_decref(params);
		json_decref(bufs);
		json_decref(kids);
		return NULL;
	}
	return o;
}

int lq_model_tree_json(const struct lq_model *m, int indent, char **out, struct lq_error *err)
{
	*out = NULL;
	json_t *root = module_json(m, 0, 0);
	if (!root)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory building the JSON tree");
	size_t flags = indent > 0 ? JSON_INDENT(indent > 31 ? 31 : indent) : JSON_COMPACT;
	char *s = json_dumps(root, flags | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (!s)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory writing the JSON tree");
	/* json_dumps allocates with jansson's allocator (malloc by default);
	 * copy so that the caller's free() is always right. */
	char *t = strdup(s);
	free(s);
	if (!t)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	*out = t;
	return LQ_OK;
}
