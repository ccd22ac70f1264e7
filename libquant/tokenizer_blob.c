/*
 * tokenizer_blob.c - the compact binary form of a loaded tokenizer
 * (layout in formats/TOKENIZER-BLOB.md).  Loading treats the blob as
 * hostile: every count, length and id is checked before use.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "tokenizer_impl.h"

#include <stdlib.h>
#include <string.h>

#define BLOB_MAGIC "LQTK"
#define BLOB_VERSION 1
#define BLOB_HEADER 80
#define BLOB_MAX_OPS 96
#define BLOB_MAX_POST 64

#define F_BYTE_FALLBACK 1u
#define F_FUSE_UNK 2u
#define F_IGNORE_MERGES 4u
#define F_HAS_DECODER 8u
#define F_CLEANUP 16u
#define F_ALL 31u

struct wbuf {
	uint8_t *p;
	size_t n, cap;
	int oom;
};

static uint8_t *w_take(struct wbuf *w, size_t n)
{
	if (w->oom)
		return NULL;
	if (n > w->cap - w->n) {
		size_t cap = w->cap ? w->cap : 4096;
		while (cap - w->n < n) {
			if (cap > SIZE_MAX / 2) {
				w->oom = 1;
				return NULL;
			}
			cap *= 2;
		}
		uint8_t *p = realloc(w->p, cap);
		if (!p) {
			w->oom = 1;
			return NULL;
		}
		w->p = p;
		w->cap = cap;
	}
	uint8_t *r = w->p + w->n;
	w->n += n;
	return r;
}

static void w32(struct wbuf *w, uint32_t v)
{
	uint8_t *p = w_take(w, 4);
	if (p)
		lq_wr32(p, v);
}

static void wbytes(struct wbuf *w, const void *s, size_t n)
{
	uint8_t *p = w_take(w, n);
	if (p && n)
		memcpy(p, s, n);
}

int lq_tokenizer_serialize(const struct lq_tokenizer *t, void **buf, size_t *len,
			   struct lq_error *err)
{
	*buf = NULL;
	*len = 0;
	if (!t)
		return lq_fail(err, LQ_ERR_INVALID, "tokenizer: no tokenizer to serialize");
	struct wbuf w = {0};
	uint64_t pool = 0;
	for (uint32_t id = 0; id < t->n_ids; id++)
		if (t->voff[id] != TK_NONE)
			pool += t->vlen[id];
	if (pool > UINT32_MAX)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "tokenizer: vocabulary too large for a blob");
	uint32_t nops = t->n_ops[0] + t->n_ops[1] + t->n_ops[2];
	uint8_t *h = w_take(&w, BLOB_HEADER);
	if (h) {
		memset(h, 0, BLOB_HEADER);
		memcpy(h, BLOB_MAGIC, 4);
		lq_wr32(h + 4, BLOB_VERSION);
		lq_wr32(h + 8, BLOB_HEADER);
		lq_wr32(h + 12, 0);
		/* 16: total length, filled in below */
		lq_wr32(h + 24, t->n_ids);
		lq_wr32(h + 28, t->n_added);
		lq_wr32(h + 32, t->n_merges);
		lq_wr32(h + 36, nops);
		lq_wr32(h + 40, t->n_prefix);
		lq_wr32(h + 44, t->n_suffix);
		lq_wr32(h + 48, (t->byte_fallback ? F_BYTE_FALLBACK : 0) | (t->fuse_unk ? F_FUSE_UNK : 0) |
					(t->ignore_merges ? F_IGNORE_MERGES : 0) |
					(t->has_decoder ? F_HAS_DECODER : 0) | (t->cleanup ? F_CLEANUP : 0));
		lq_wr32(h + 52, (uint32_t)t->model_unk);
		lq_wr32(h + 56, (uint32_t)t->bos);
		lq_wr32(h + 60, (uint32_t)t->eos);
		lq_wr32(h + 64, (uint32_t)t->pad);
		lq_wr32(h + 68, (uint32_t)t->unk);
		lq_wr32(h + 72, (uint32_t)pool);
		lq_wr32(h + 76, 0);
	}
	for (uint32_t id = 0; id < t->n_ids; id++)
		w32(&w, t->voff[id] == TK_NONE ? TK_NONE : t->vlen[id]);
	for (uint32_t id = 0; id < t->n_ids; id++)
		if (t->voff[id] != TK_NONE)
			wbytes(&w, t->pool + t->voff[id], t->vlen[id]);
	for (uint64_t i = 0; i < 3ull * t->n_merges; i++)
		w32(&w, t->merges[i]);
	for (uint32_t i = 0; i < t->n_prefix; i++)
		w32(&w, (uint32_t)t->prefix[i]);
	for (uint32_t i = 0; i < t->n_suffix; i++)
		w32(&w, (uint32_t)t->suffix[i]);
	for (uint32_t i = 0; i < t->n_added; i++) {
		w32(&w, t->added[i].id);
		w32(&w, t->added[i].flags);
		w32(&w, t->added[i].len);
		wbytes(&w, t->added[i].content, t->added[i].len);
	}
	for (int st = 0; st < 3; st++)
		for (uint32_t i = 0; i < t->n_ops[st]; i++) {
			const struct tk_op *op = &t->ops[st][i];
			uint8_t *p = w_take(&w, 16);
			if (p) {
				p[0] = (uint8_t)st;
				p[1] = 0;
				lq_wr16(p + 2, (uint16_t)op->type);
				lq_wr32(p + 4, (uint32_t)op->a);
				lq_wr32(p + 8, (uint32_t)op->b);
				lq_wr32(p + 12, (uint32_t)op->c);
			}
			w32(&w, op->s1 ? op->s1len : TK_NONE);
			wbytes(&w, op->s1, op->s1 ? op->s1len : 0);
			w32(&w, op->s2 ? op->s2len : TK_NONE);
			wbytes(&w, op->s2, op->s2 ? op->s2len : 0);
		}
	uint8_t *tail = w_take(&w, 8);
	if (w.oom || !tail) {
		free(w.p);
		return lq_fail(err, LQ_ERR_NOMEM, "tokenizer: out of memory");
	}
	lq_wr64(w.p + 16, w.n);
	lq_wr64(tail, lq_xxh3(w.p, w.n - 8));
	*buf = w.p;
	*len = w.n;
	return LQ_OK;
}

/* reading cursor */
struct rd {
	const uint8_t *p;
	size_t n, i;
	int bad;
};

static const uint8_t *r_take(struct rd *r, uint64_t n)
{
	if (r->bad || n > r->n - r->i) {
		r->bad = 1;
		return NULL;
	}
	const uint8_t *p = r->p + r->i;
	r->i += (size_t)n;
	return p;
}

static uint32_t r32(struct rd *r)
{
	const uint8_t *p = r_take(r, 4);
	return p ? lq_rd32(p) : 0;
}

static const char *LABEL = "tokenizer blob";

static char *r_str(struct rd *r, struct lq_tokenizer *t, uint32_t *len, int *present)
{
	uint32_t n = r32(r);
	*present = 0;
	*len = 0;
	if (r->bad || n == TK_NONE)
		return NULL;
	const uint8_t *p = r_take(r, n);
	if (!p)
		return NULL;
	*present = 1;
	*len = n;
	return lq_arena_strndup(&t->arena, (const char *)p, n);
}

int lq_tokenizer_load_blob(struct lq_tokenizer **out, const void *blob, size_t len,
			   struct lq_error *err)
{
	*out = NULL;
	const uint8_t *b = blob;
	if (!b || len < BLOB_HEADER + 8)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: too short (%zu bytes)", LABEL, len);
	if (memcmp(b, BLOB_MAGIC, 4) != 0)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: bad magic", LABEL);
	if (lq_rd32(b + 4) != BLOB_VERSION)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "%s: version %u (this library reads %d)", LABEL,
			       lq_rd32(b + 4), BLOB_VERSION);
	if (lq_rd32(b + 8) != BLOB_HEADER || lq_rd32(b + 12) != 0 || lq_rd32(b + 76) != 0)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: bad header", LABEL);
	if (lq_rd64(b + 16) != len)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: length %llu recorded, %zu given", LABEL,
			       (unsigned long long)lq_rd64(b + 16), len);
	if (lq_rd64(b + len - 8) != lq_xxh3(b, len - 8))
		return lq_fail(err, LQ_ERR_CHECKSUM, "%s: checksum mismatch", LABEL);
	uint32_t n_ids = lq_rd32(b + 24), n_added = lq_rd32(b + 28), n_merges = lq_rd32(b + 32);
	uint32_t nops = lq_rd32(b + 36), npre = lq_rd32(b + 40), nsuf = lq_rd32(b + 44);
	uint32_t flags = lq_rd32(b + 48), pool = lq_rd32(b + 72);
	if (n_ids > TK_MAX_IDS || nops > BLOB_MAX_OPS || npre > BLOB_MAX_POST || nsuf > BLOB_MAX_POST ||
	    (flags & ~F_ALL))
		return lq_fail(err, LQ_ERR_FORMAT, "%s: counts out of range", LABEL);
	/* cheap size checks before allocating */
	uint64_t min = BLOB_HEADER + 8 + 4ull * n_ids + pool + 12ull * n_merges + 4ull * (npre + nsuf) +
		       12ull * n_added + 24ull * nops;
	if (min > len)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: truncated", LABEL);

	struct lq_tokenizer *t = tk_new();
	if (!t)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
	int rc = LQ_OK;
	struct rd r = {b, len - 8, BLOB_HEADER, 0};
	t->n_ids = n_ids;
	t->byte_fallback = !!(flags & F_BYTE_FALLBACK);
	t->fuse_unk = !!(flags & F_FUSE_UNK);
	t->ignore_merges = !!(flags & F_IGNORE_MERGES);
	t->has_decoder = !!(flags & F_HAS_DECODER);
	t->cleanup = !!(flags & F_CLEANUP);
	t->model_unk = (int32_t)lq_rd32(b + 52);
	t->bos = (int32_t)lq_rd32(b + 56);
	t->eos = (int32_t)lq_rd32(b + 60);
	t->pad = (int32_t)lq_rd32(b + 64);
	t->unk = (int32_t)lq_rd32(b + 68);
	if (t->model_unk < -1) {
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: bad unk id", LABEL);
		goto fail;
	}

	/* vocabulary */
	t->voff = lq_arena_alloc(&t->arena, (size_t)n_ids * 4 + 4);
	t->vlen = lq_arena_alloc(&t->arena, (size_t)n_ids * 4 + 4);
	t->added_of = lq_arena_alloc(&t->arena, (size_t)n_ids * 4 + 4);
	t->pool = lq_arena_alloc(&t->arena, (size_t)pool + n_ids + 1);
	if (!t->voff || !t->vlen || !t->added_of || !t->pool)
		goto nomem;
	const uint8_t *lens = r_take(&r, 4ull * n_ids);
	const uint8_t *strs = r_take(&r, pool);
	if (r.bad)
		goto trunc;
	uint64_t so = 0, po = 0;
	for (uint32_t id = 0; id < n_ids; id++) {
		uint32_t l = lq_rd32(lens + 4ull * id);
		if (l == TK_NONE) {
			t->voff[id] = TK_NONE;
			t->vlen[id] = 0;
			continue;
		}
		if (l > pool - so) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: token %u overruns the strings", LABEL, id);
			goto fail;
		}
		memcpy(t->pool + po, strs + so, l);
		t->pool[po + l] = 0;
		t->voff[id] = (uint32_t)po;
		t->vlen[id] = l;
		so += l;
		po += l + 1;
	}
	if (so != pool) {
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: string area size mismatch", LABEL);
		goto fail;
	}
	t->pool_len = po;

	/* merges, post-processor */
	t->n_merges = n_merges;
	t->merges = lq_arena_alloc(&t->arena, 12ull * n_merges + 12);
	t->n_prefix = npre;
	t->n_suffix = nsuf;
	t->prefix = lq_arena_alloc(&t->arena, 4ull * npre + 4);
	t->suffix = lq_arena_alloc(&t->arena, 4ull * nsuf + 4);
	if (!t->merges || !t->prefix || !t->suffix)
		goto nomem;
	const uint8_t *mp = r_take(&r, 12ull * n_merges);
	if (r.bad)
		goto trunc;
	for (uint64_t i = 0; i < 3ull * n_merges; i++)
		t->merges[i] = lq_rd32(mp + 4 * i);
	for (uint32_t i = 0; i < npre; i++)
		t->prefix[i] = (int32_t)r32(&r);
	for (uint32_t i = 0; i < nsuf; i++)
		t->suffix[i] = (int32_t)r32(&r);

	/* added tokens */
	t->n_added = n_added;
	t->added = lq_arena_alloc(&t->arena, (size_t)n_added * sizeof *t->added + 1);
	if (!t->added)
		goto nomem;
	for (uint32_t i = 0; i < n_added; i++) {
		struct tk_added *a = &t->added[i];
		a->id = r32(&r);
		a->flags = r32(&r);
		int present;
		a->content = r_str(&r, t, &a->len, &present);
		if (r.bad)
			goto trunc;
		if (!present || (a->flags & ~TK_A_ALL)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: bad added token %u", LABEL, i);
			goto fail;
		}
		if (!a->content)
			goto nomem;
	}

	/* pipeline */
	uint32_t cnt[3] = {0, 0, 0};
	struct tk_op *ops = lq_arena_alloc(&t->arena, (size_t)nops * sizeof *ops + 1);
	if (!ops)
		goto nomem;
	int last_stage = 0;
	for (uint32_t i = 0; i < nops; i++) {
		struct tk_op *op = &ops[i];
		const uint8_t *p = r_take(&r, 16);
		if (!p)
			goto trunc;
		int st = p[0];
		if (st > 2 || p[1] != 0 || st < last_stage) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: bad pipeline stage", LABEL);
			goto fail;
		}
		last_stage = st;
		cnt[st]++;
		op->type = lq_rd16(p + 2);
		op->a = (int32_t)lq_rd32(p + 4);
		op->b = (int32_t)lq_rd32(p + 8);
		op->c = (int32_t)lq_rd32(p + 12);
		int present;
		op->s1 = r_str(&r, t, &op->s1len, &present);
		if (present && !op->s1)
			goto nomem;
		op->s2 = r_str(&r, t, &op->s2len, &present);
		if (present && !op->s2)
			goto nomem;
		if (r.bad)
			goto trunc;
		/* regex flags live in a; literal patterns need no compiling */
		op->re = NULL;
	}
	if (r.i != r.n) {
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: %zu trailing bytes", LABEL, r.n - r.i);
		goto fail;
	}
	t->ops[0] = ops;
	t->ops[1] = ops + cnt[0];
	t->ops[2] = ops + cnt[0] + cnt[1];
	t->n_ops[0] = cnt[0];
	t->n_ops[1] = cnt[1];
	t->n_ops[2] = cnt[2];
	if ((rc = tk_finish(t, LABEL, err)))
		goto fail;
	*out = t;
	return LQ_OK;
trunc:
	rc = lq_fail(err, LQ_ERR_FORMAT, "%s: truncated", LABEL);
	goto fail;
nomem:
	rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
fail:
	lq_tokenizer_free(t);
	return rc;
}
