/*
 * tokenizer.c - Hugging Face tokenizers: lookup tables, encode, decode.
 *
 * The encode pipeline mirrors tokenizers' Tokenizer::encode:
 *   1. added tokens with normalized = false are split off the raw text
 *      (leftmost-longest, with their lstrip/rstrip/single_word flags);
 *   2. each remaining segment is normalized, then added tokens with
 *      normalized = true are split off the normalized text;
 *   3. the pre-tokenizers split each remaining segment into pieces;
 *   4. the BPE model turns each piece into ids (merges by rank through a
 *      binary heap, as tokenizers' Word::merge_all);
 *   5. the post-processor template adds BOS etc.
 * Decoding runs the decoder chain over the token strings (decode_chain).
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "tokenizer_impl.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ------------------------------------------------------------ buffers */

struct buf {
	char *p;
	size_t n, cap;
	int oom;
};

static int buf_reserve(struct buf *b, size_t extra)
{
	if (b->oom)
		return -1;
	if (extra <= b->cap - b->n)
		return 0;
	size_t need = b->n + extra;
	if (need < b->n) {
		b->oom = 1;
		return -1;
	}
	size_t cap = b->cap ? b->cap : 64;
	while (cap < need) {
		if (cap > SIZE_MAX / 2) {
			cap = need;
			break;
		}
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = 1;
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

static void buf_put(struct buf *b, const void *s, size_t n)
{
	if (n == 0 || buf_reserve(b, n))
		return;
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

static void buf_putc(struct buf *b, char c)
{
	if (buf_reserve(b, 1))
		return;
	b->p[b->n++] = c;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------ UTF-8 */

/* Length of the valid UTF-8 sequence at s (n > 0 bytes left), 0 if invalid;
 * *cp gets the code point.  With `maximal`, *bad is the length of the
 * maximal invalid subpart to replace (Unicode "substitution of maximal
 * subparts", as Rust's from_utf8_lossy and Python's errors="replace"). */
static size_t utf8_dec(const unsigned char *s, size_t n, uint32_t *cp, size_t *bad)
{
	unsigned c = s[0];
	*bad = 1;
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	size_t need;
	unsigned lo = 0x80, hi = 0xBF;
	uint32_t v;
	if (c >= 0xC2 && c <= 0xDF) {
		need = 1;
		v = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 2;
		v = c & 0x0F;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 3;
		v = c & 0x07;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else {
		return 0;
	}
	size_t i;
	for (i = 1; i <= need; i++) {
		if (i >= n)
			break;
		unsigned d = s[i];
		if (d < lo || d > hi)
			break;
		lo = 0x80;
		hi = 0xBF;
		v = v << 6 | (d & 0x3F);
	}
	if (i <= need) {
		*bad = i;
		return 0;
	}
	*cp = v;
	return need + 1;
}

int tk_utf8_valid(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if ((unsigned char)s[i] < 0x80) {
			i++;
			continue;
		}
		uint32_t cp;
		size_t bad, k = utf8_dec((const unsigned char *)s + i, n - i, &cp, &bad);
		if (!k)
			return 0;
		i += k;
	}
	return 1;
}

/* Append s with invalid sequences replaced by U+FFFD. */
static void utf8_lossy(struct buf *out, const char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t j = i;
		while (j < n && (unsigned char)s[j] < 0x80)
			j++;
		while (j < n) {
			uint32_t cp;
			size_t bad, k = utf8_dec((const unsigned char *)s + j, n - j, &cp, &bad);
			if (!k)
				break;
			j += k;
		}
		buf_put(out, s + i, j - i);
		if (j >= n)
			break;
		uint32_t cp;
		size_t bad;
		utf8_dec((const unsigned char *)s + j, n - j, &cp, &bad);
		buf_put(out, "\xEF\xBF\xBD", 3);
		i = j + bad;
	}
}

/* Length of the character at s (valid UTF-8 assumed; robust otherwise). */
static size_t utf8_len(const char *s, size_t n)
{
	unsigned c = (unsigned char)s[0];
	size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
	return k <= n ? k : n;
}

static uint32_t utf8_cp(const char *s, size_t n, size_t *len)
{
	uint32_t cp;
	size_t bad, k = utf8_dec((const unsigned char *)s, n, &cp, &bad);
	if (!k) {
		*len = 1;
		return 0xFFFD;
	}
	*len = k;
	return cp;
}

static size_t utf8_put(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | cp >> 12);
		o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | cp >> 18);
	o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Unicode White_Space (Rust's char::is_whitespace). */
static int is_ws(uint32_t c)
{
	return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
	       c == 0x205F || c == 0x3000;
}

/* A word character as the Rust regex \w that tokenizers uses for single_word
 * (letters, marks, decimal and letter numbers, connector punctuation, ZWJ/ZWNJ). */
static int is_word(uint32_t c)
{
	if (c < 0x80)
		return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z') || c == '_';
	if (c == 0x200C || c == 0x200D)
		return 1;
	utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
	return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
	       (k >= UTF8PROC_CATEGORY_MN && k <= UTF8PROC_CATEGORY_ME) ||
	       k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_PC;
}

/* ------------------------------------------------------------ byte level */

/* GPT-2 bytes_to_unicode: byte -> code point */
static uint32_t bl_cp(unsigned b)
{
	if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
		return b;
	/* the others in increasing order map to 256, 257, ... */
	unsigned n;
	if (b <= 0x20)
		n = b;
	else if (b <= 0xA0)
		n = 33 + (b - 0x7F);
	else
		n = 33 + 34; /* 0xAD */
	return 256 + n;
}

/* code point -> byte, -1 if not a byte-level character */
static int bl_byte(uint32_t cp)
{
	if (cp < 256) {
		unsigned b = cp;
		if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
			return (int)b;
		return -1;
	}
	if (cp < 256 + 33)
		return (int)(cp - 256);
	if (cp < 256 + 33 + 34)
		return (int)(0x7F + (cp - 256 - 33));
	if (cp == 256 + 67)
		return 0xAD;
	return -1;
}

/* ------------------------------------------------------------ hashing */

static uint64_t hash_str(const char *s, size_t n) { return lq_xxh3(s, n); }

static uint64_t hash_u64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	k *= 0xc4ceb9fe1a85ec53ULL;
	k ^= k >> 33;
	return k;
}

static uint32_t table_size(uint64_t n)
{
	uint64_t cap = 16;
	while (cap < 2 * n)
		cap *= 2;
	return (uint32_t)cap;
}

int32_t tk_vocab_find(const struct lq_tokenizer *t, const char *s, size_t n)
{
	if (!t->vh)
		return -1;
	uint32_t i = (uint32_t)hash_str(s, n) & t->vh_mask;
	for (;;) {
		uint32_t v = t->vh[i];
		if (!v)
			return -1;
		uint32_t id = v - 1;
		if (t->vlen[id] == n && memcmp(t->pool + t->voff[id], s, n) == 0)
			return (int32_t)id;
		i = (i + 1) & t->vh_mask;
	}
}

static int32_t added_find(const struct lq_tokenizer *t, const char *s, size_t n)
{
	if (!t->ah)
		return -1;
	uint32_t i = (uint32_t)hash_str(s, n) & t->ah_mask;
	for (;;) {
		uint32_t v = t->ah[i];
		if (!v)
			return -1;
		const struct tk_added *a = &t->added[v - 1];
		if (a->len == n && memcmp(a->content, s, n) == 0)
			return (int32_t)(v - 1);
		i = (i + 1) & t->ah_mask;
	}
}

static uint32_t merge_hash(uint32_t a, uint32_t b)
{
	return (uint32_t)((((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ULL) >> 29);
}

/* rank of the merge (a, b) or -1 */
static int64_t merge_find(const struct lq_tokenizer *t, uint32_t a, uint32_t b)
{
	if (!t->mh)
		return -1;
	uint32_t i = merge_hash(a, b) & t->mh_mask;
	for (;;) {
		const struct tk_mslot *m = &t->mh[i];
		if (!m->r1)
			return -1;
		if (m->a == a && m->b == b)
			return (int64_t)m->r1 - 1;
		i = (i + 1) & t->mh_mask;
	}
}

/* ------------------------------------------------------------ tries */

static void trie_free(struct tk_trie *tr)
{
	free(tr->term);
	free(tr->ekey);
	free(tr->eval);
	memset(tr, 0, sizeof *tr);
}

static int64_t trie_child(const struct tk_trie *tr, uint32_t node, unsigned char c)
{
	uint64_t key = ((uint64_t)node << 8 | c) + 1;
	uint32_t i = (uint32_t)hash_u64(key) & tr->emask;
	for (;;) {
		if (!tr->ekey[i])
			return -1;
		if (tr->ekey[i] == key)
			return tr->eval[i];
		i = (i + 1) & tr->emask;
	}
}

static int trie_build(struct tk_trie *tr, const struct lq_tokenizer *t, int normalized)
{
	uint64_t total = 1;
	for (uint32_t i = 0; i < t->n_added; i++)
		if (!!(t->added[i].flags & TK_A_NORMALIZED) == normalized)
			total += t->added[i].len;
	if (total > UINT32_MAX / 4)
		return -1;
	tr->cap_nodes = (uint32_t)total;
	tr->term = malloc(total * sizeof *tr->term);
	uint32_t ecap = table_size(total);
	tr->emask = ecap - 1;
	tr->ekey = calloc(ecap, sizeof *tr->ekey);
	tr->eval = calloc(ecap, sizeof *tr->eval);
	if (!tr->term || !tr->ekey || !tr->eval)
		return -1;
	tr->n_nodes = 1;
	tr->term[0] = -1;
	tr->empty = 1;
	for (uint32_t i = 0; i < t->n_added; i++) {
		const struct tk_added *a = &t->added[i];
		if (!!(a->flags & TK_A_NORMALIZED) != normalized || a->len == 0)
			continue;
		tr->empty = 0;
		uint32_t node = 0;
		for (uint32_t k = 0; k < a->len; k++) {
			unsigned char c = (unsigned char)a->content[k];
			int64_t ch = trie_child(tr, node, c);
			if (ch < 0) {
				uint32_t nn = tr->n_nodes++;
				tr->term[nn] = -1;
				uint64_t key = ((uint64_t)node << 8 | c) + 1;
				uint32_t j = (uint32_t)hash_u64(key) & tr->emask;
				while (tr->ekey[j])
					j = (j + 1) & tr->emask;
				tr->ekey[j] = key;
				tr->eval[j] = nn;
				tr->n_edges++;
				ch = nn;
			}
			node = (uint32_t)ch;
		}
		/* the first token with a content wins (contents are unique anyway) */
		if (tr->term[node] < 0)
			tr->term[node] = (int32_t)i;
		tr->first[(unsigned char)a->content[0] >> 3] |= (uint8_t)(1u << (a->content[0] & 7));
	}
	return 0;
}

/* Leftmost-longest match at or after `from`: returns added index or -1. */
static int32_t trie_find(const struct tk_trie *tr, const char *s, size_t n, size_t from,
			 size_t *ms, size_t *me)
{
	if (tr->empty)
		return -1;
	for (size_t q = from; q < n; q++) {
		unsigned char c0 = (unsigned char)s[q];
		if (!(tr->first[c0 >> 3] & (1u << (c0 & 7))))
			continue;
		uint32_t node = 0;
		int32_t best = -1;
		size_t best_end = 0;
		for (size_t k = q; k < n; k++) {
			int64_t ch = trie_child(tr, node, (unsigned char)s[k]);
			if (ch < 0)
				break;
			node = (uint32_t)ch;
			if (tr->term[node] >= 0) {
				best = tr->term[node];
				best_end = k + 1;
			}
		}
		if (best >= 0) {
			*ms = q;
			*me = best_end;
			return best;
		}
	}
	return -1;
}

/* ------------------------------------------------------------ setup */

struct lq_tokenizer *tk_new(void)
{
	struct lq_tokenizer *t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	t->model_unk = t->bos = t->eos = t->pad = t->unk = -1;
	return t;
}

static const char gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

int tk_compile(struct tk_op *op, int regex, const char *label, struct lq_error *err)
{
	if (!regex)
		return LQ_OK; /* literal patterns use memmem */
	int ec;
	PCRE2_SIZE eo;
	op->re = pcre2_compile((PCRE2_SPTR)op->s1, op->s1len, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
	if (!op->re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ec, msg, sizeof msg);
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "%s: regex '%.80s' at offset %zu: %s", label,
			       op->s1, (size_t)eo, (char *)msg);
	}
	pcre2_jit_compile(op->re, PCRE2_JIT_COMPLETE); /* best effort */
	return LQ_OK;
}

int tk_finish(struct lq_tokenizer *t, const char *label, struct lq_error *err)
{
	/* may be called again after more tables were filled in */
	free(t->vh);
	free(t->ah);
	free(t->mh);
	t->vh = t->ah = NULL;
	t->mh = NULL;
	trie_free(&t->trie[0]);
	trie_free(&t->trie[1]);
	/* validate strings (blobs are hostile; JSON strings are valid already) */
	uint64_t nv = 0;
	for (uint32_t id = 0; id < t->n_ids; id++) {
		t->added_of[id] = -1;
		if (t->voff[id] == TK_NONE)
			continue;
		if ((uint64_t)t->voff[id] + t->vlen[id] > t->pool_len)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: token %u out of bounds", label, id);
		if (!tk_utf8_valid(t->pool + t->voff[id], t->vlen[id]))
			return lq_fail(err, LQ_ERR_FORMAT, "%s: token %u is not UTF-8", label, id);
		nv++;
	}
	for (uint32_t i = 0; i < t->n_added; i++) {
		struct tk_added *a = &t->added[i];
		if (a->id >= t->n_ids)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: added token id %u out of range", label, a->id);
		if (!tk_utf8_valid(a->content, a->len) || a->len == 0)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: added token %u is empty or not UTF-8", label, a->id);
		if (t->added_of[a->id] < 0)
			t->added_of[a->id] = (int32_t)i;
	}
	for (int st = 0; st < 3; st++)
		for (uint32_t i = 0; i < t->n_ops[st]; i++) {
			const struct tk_op *op = &t->ops[st][i];
			if ((op->s1 && !tk_utf8_valid(op->s1, op->s1len)) ||
			    (op->s2 && !tk_utf8_valid(op->s2, op->s2len)))
				return lq_fail(err, LQ_ERR_FORMAT, "%s: pipeline string is not UTF-8", label);
		}

	/* vocabulary hash */
	uint32_t cap = table_size(nv);
	t->vh_mask = cap - 1;
	t->vh = calloc(cap, sizeof *t->vh);
	if (!t->vh)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	for (uint32_t id = 0; id < t->n_ids; id++) {
		if (t->voff[id] == TK_NONE)
			continue;
		const char *s = t->pool + t->voff[id];
		if (tk_vocab_find(t, s, t->vlen[id]) >= 0)
			continue; /* duplicate string: first id wins */
		uint32_t i = (uint32_t)hash_str(s, t->vlen[id]) & t->vh_mask;
		while (t->vh[i])
			i = (i + 1) & t->vh_mask;
		t->vh[i] = id + 1;
	}
	/* added hash */
	cap = table_size(t->n_added);
	t->ah_mask = cap - 1;
	t->ah = calloc(cap, sizeof *t->ah);
	if (!t->ah)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	for (uint32_t k = 0; k < t->n_added; k++) {
		const struct tk_added *a = &t->added[k];
		if (added_find(t, a->content, a->len) >= 0)
			continue;
		uint32_t i = (uint32_t)hash_str(a->content, a->len) & t->ah_mask;
		while (t->ah[i])
			i = (i + 1) & t->ah_mask;
		t->ah[i] = k + 1;
	}
	/* merges: a later duplicate pair replaces an earlier one (as a HashMap collect) */
	cap = table_size(t->n_merges);
	t->mh_mask = cap - 1;
	t->mh = calloc(cap, sizeof *t->mh);
	if (!t->mh)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	for (uint32_t r = 0; r < t->n_merges; r++) {
		uint32_t a = t->merges[3 * r], b = t->merges[3 * r + 1], c = t->merges[3 * r + 2];
		if (a >= t->n_ids || b >= t->n_ids || c >= t->n_ids)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: merge %u: id out of range", label, r);
		uint32_t i = merge_hash(a, b) & t->mh_mask;
		while (t->mh[i].r1 && !(t->mh[i].a == a && t->mh[i].b == b))
			i = (i + 1) & t->mh_mask;
		t->mh[i].a = a;
		t->mh[i].b = b;
		t->mh[i].r1 = r + 1;
	}
	/* ids of single characters */
	for (uint32_t cp = 0; cp < 2048; cp++) {
		char u[4];
		t->cid[cp] = tk_vocab_find(t, u, utf8_put(u, cp));
	}
	/* byte fallback ids */
	for (int b = 0; b < 256; b++) {
		char name[8];
		static const char hx[] = "0123456789ABCDEF";
		memcpy(name, "<0x", 3);
		name[3] = hx[b >> 4];
		name[4] = hx[b & 15];
		name[5] = '>';
		t->byte_id[b] = tk_vocab_find(t, name, 6);
	}
	if (t->model_unk >= (int32_t)t->n_ids)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: unk id out of range", label);
	/* special ids */
	int32_t *ids[4] = {&t->bos, &t->eos, &t->pad, &t->unk};
	for (int i = 0; i < 4; i++)
		if (*ids[i] < -1 || *ids[i] >= (int32_t)t->n_ids)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: special id out of range", label);
	for (uint32_t i = 0; i < t->n_prefix; i++)
		if (t->prefix[i] < 0 || t->prefix[i] >= (int32_t)t->n_ids)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: template id out of range", label);
	for (uint32_t i = 0; i < t->n_suffix; i++)
		if (t->suffix[i] < 0 || t->suffix[i] >= (int32_t)t->n_ids)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: template id out of range", label);
	/* operations: check parameters and compile patterns */
	for (int st = 0; st < 3; st++)
		for (uint32_t i = 0; i < t->n_ops[st]; i++) {
			struct tk_op *op = &t->ops[st][i];
			int ok = 1;
			switch (op->type) {
			case TK_N_NFC: case TK_N_NFD: case TK_N_NFKC: case TK_N_NFKD:
			case TK_N_LOWERCASE: case TK_N_STRIP:
				ok = st == TK_STAGE_NORM;
				break;
			case TK_N_PREPEND:
				ok = st == TK_STAGE_NORM && op->s1;
				break;
			case TK_N_REPLACE:
				ok = st == TK_STAGE_NORM && op->s1 && op->s2 && op->s1len > 0;
				if (ok && op->a && !op->re && tk_compile(op, 1, label, err))
					return err ? err->code : LQ_ERR_UNSUPPORTED;
				break;
			case TK_P_SPLIT:
				ok = st == TK_STAGE_PRE && op->s1 && op->b >= 0 && op->b <= 4;
				if (ok && op->a && !op->re && tk_compile(op, 1, label, err))
					return err ? err->code : LQ_ERR_UNSUPPORTED;
				break;
			case TK_P_BYTELEVEL:
				ok = st == TK_STAGE_PRE;
				break;
			case TK_P_METASPACE:
			case TK_D_METASPACE:
				ok = st == (op->type == TK_P_METASPACE ? TK_STAGE_PRE : TK_STAGE_DEC) &&
				     op->s1 && op->s1len > 0 && utf8_len(op->s1, op->s1len) == op->s1len &&
				     op->a >= 0 && op->a <= 2;
				break;
			case TK_D_BYTELEVEL: case TK_D_BYTEFALLBACK: case TK_D_FUSE:
				ok = st == TK_STAGE_DEC;
				break;
			case TK_D_STRIP:
				ok = st == TK_STAGE_DEC && op->s1 && op->s1len > 0 &&
				     utf8_len(op->s1, op->s1len) == op->s1len && op->a >= 0 && op->b >= 0;
				break;
			case TK_D_REPLACE:
				ok = st == TK_STAGE_DEC && op->s1 && op->s2 && op->s1len > 0;
				break;
			default:
				ok = 0;
			}
			if (!ok)
				return lq_fail(err, LQ_ERR_FORMAT, "%s: bad pipeline operation %u (stage %d)",
					       label, op->type, st);
		}
	for (uint32_t i = 0; i < t->n_ops[TK_STAGE_PRE]; i++)
		if (t->ops[TK_STAGE_PRE][i].type == TK_P_BYTELEVEL && t->ops[TK_STAGE_PRE][i].b && !t->gpt2_re) {
			int ec;
			PCRE2_SIZE eo;
			t->gpt2_re = pcre2_compile((PCRE2_SPTR)gpt2_pattern, PCRE2_ZERO_TERMINATED,
						   PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
			if (!t->gpt2_re)
				return lq_fail(err, LQ_ERR_NOMEM, "%s: cannot compile the byte-level regex", label);
			pcre2_jit_compile(t->gpt2_re, PCRE2_JIT_COMPLETE);
		}
	if (trie_build(&t->trie[0], t, 0) || trie_build(&t->trie[1], t, 1))
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	return LQ_OK;
}

void lq_tokenizer_free(struct lq_tokenizer *t)
{
	if (!t)
		return;
	for (int st = 0; st < 3; st++)
		for (uint32_t i = 0; t->ops[st] && i < t->n_ops[st]; i++)
			pcre2_code_free(t->ops[st][i].re);
	pcre2_code_free(t->gpt2_re);
	free(t->vh);
	free(t->ah);
	free(t->mh);
	trie_free(&t->trie[0]);
	trie_free(&t->trie[1]);
	lq_arena_free(&t->arena);
	free(t);
}

/* ------------------------------------------------------------ encode */

struct piece {
	size_t off, len;
	int start; /* begins at offset 0 of the original text */
};

struct plist {
	struct buf text;
	struct piece *v;
	size_t n, cap;
	int oom;
};

static void pl_add(struct plist *l, const char *s, size_t n, int start)
{
	if (n == 0)
		return;
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 16;
		struct piece *v = realloc(l->v, cap * sizeof *v);
		if (!v) {
			l->oom = 1;
			return;
		}
		l->v = v;
		l->cap = cap;
	}
	size_t off = l->text.n;
	buf_put(&l->text, s, n);
	l->v[l->n++] = (struct piece){off, n, start};
}

static void pl_clear(struct plist *l)
{
	l->n = 0;
	l->text.n = 0;
}

static void pl_free(struct plist *l)
{
	buf_free(&l->text);
	free(l->v);
}

struct sym {
	int32_t id;
	int32_t prev, next;
	uint32_t len;
};

struct mrg {
	uint32_t rank, pos;
	int32_t id;
};

struct enc {
	const struct lq_tokenizer *t;
	int32_t *ids;
	size_t n, cap;
	int oom;
	int rc;
	struct lq_error *err;
	pcre2_match_data *md;
	pcre2_match_context *mc;
	struct buf norm, tmp, tmp2;
	struct plist pl[2];
	struct sym *syms;
	size_t nsyms, capsyms;
	struct mrg *heap;
	size_t nheap, capheap;
	struct { size_t s, e; int m; } *spans;
	size_t nspans, capspans;
	int split_special;
};

static void emit(struct enc *e, int32_t id)
{
	if (e->n == e->cap) {
		size_t cap = e->cap ? 2 * e->cap : 64;
		int32_t *v = realloc(e->ids, cap * sizeof *v);
		if (!v) {
			e->oom = 1;
			return;
		}
		e->ids = v;
		e->cap = cap;
	}
	e->ids[e->n++] = id;
}

/* find the next match of op's pattern at or after `from` */
static int pat_find(struct enc *e, const struct tk_op *op, const char *s, size_t n, size_t from,
		    size_t *ms, size_t *me)
{
	if (!op->re) {
		if (op->s1len == 0 || from >= n)
			return 0;
		const char *p = memmem(s + from, n - from, op->s1, op->s1len);
		if (!p)
			return 0;
		*ms = (size_t)(p - s);
		*me = *ms + op->s1len;
		return 1;
	}
	return -2; /* caller uses re_find */
}

static int re_find(struct enc *e, const pcre2_code *re, const char *s, size_t n, size_t from,
		   size_t *ms, size_t *me)
{
	while (from <= n) {
		int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, e->md, e->mc);
		if (rc == PCRE2_ERROR_NOMATCH)
			return 0;
		if (rc < 0) {
			e->rc = lq_fail(e->err, LQ_ERR_UNSUPPORTED, "tokenizer: regex match failed (%d)", rc);
			return -1;
		}
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
		if (ov[1] > ov[0]) {
			*ms = ov[0];
			*me = ov[1];
			return 1;
		}
		/* empty match: retry one character later */
		if (ov[0] >= n)
			return 0;
		from = ov[0] + utf8_len(s + ov[0], n - ov[0]);
	}
	return 0;
}

static int op_find(struct enc *e, const struct tk_op *op, const char *s, size_t n, size_t from,
		   size_t *ms, size_t *me)
{
	if (op->re)
		return re_find(e, op->re, s, n, from, ms, me);
	return pat_find(e, op, s, n, from, ms, me);
}

static void span_add(struct enc *e, size_t s, size_t en, int m)
{
	if (e->nspans == e->capspans) {
		size_t cap = e->capspans ? 2 * e->capspans : 64;
		void *v = realloc(e->spans, cap * sizeof *e->spans);
		if (!v) {
			e->oom = 1;
			return;
		}
		e->spans = v;
		e->capspans = cap;
	}
	e->spans[e->nspans].s = s;
	e->spans[e->nspans].e = en;
	e->spans[e->nspans].m = m;
	e->nspans++;
}

/* split s into pieces as tokenizers' NormalizedString::split(pattern, behavior) */
static void split_by(struct enc *e, const struct tk_op *op, const pcre2_code *re, int behavior,
		     int invert, const char *s, size_t n, int start, struct plist *out)
{
	e->nspans = 0;
	if (n == 0)
		return;
	size_t prev = 0, from = 0, ms, me;
	for (;;) {
		int r = re ? re_find(e, re, s, n, from, &ms, &me) : op_find(e, op, s, n, from, &ms, &me);
		if (r < 0)
			return;
		if (r == 0)
			break;
		if (prev != ms)
			span_add(e, prev, ms, 0);
		span_add(e, ms, me, 1);
		prev = from = me;
	}
	if (prev != n)
		span_add(e, prev, n, 0);
	if (e->oom)
		return;
	size_t k = 0, ns = e->nspans;
	if (invert)
		for (size_t i = 0; i < ns; i++)
			e->spans[i].m = !e->spans[i].m;
	/* apply the behavior in place; m becomes "keep" */
	switch (behavior) {
	case TK_SPLIT_REMOVED:
		for (size_t i = 0; i < ns; i++)
			e->spans[i].m = !e->spans[i].m;
		k = ns;
		break;
	case TK_SPLIT_ISOLATED:
		for (size_t i = 0; i < ns; i++)
			e->spans[i].m = 1;
		k = ns;
		break;
	case TK_SPLIT_MERGED_PREV: {
		int prevm = 0;
		for (size_t i = 0; i < ns; i++) {
			int m = e->spans[i].m;
			if (m && !prevm && k > 0) {
				e->spans[k - 1].e = e->spans[i].e;
			} else {
				e->spans[k] = e->spans[i];
				e->spans[k].m = 1;
				k++;
			}
			prevm = m;
		}
		break;
	}
	case TK_SPLIT_MERGED_NEXT: {
		/* fold from the right, then the kept spans are in reverse order */
		int prevm = 0;
		size_t w = ns; /* write from the end */
		for (size_t i = ns; i-- > 0;) {
			int m = e->spans[i].m;
			if (m && !prevm && w < ns) {
				e->spans[w].s = e->spans[i].s;
			} else {
				w--;
				e->spans[w] = e->spans[i];
				e->spans[w].m = 1;
			}
			prevm = m;
		}
		k = ns - w;
		memmove(e->spans, e->spans + w, k * sizeof *e->spans);
		break;
	}
	case TK_SPLIT_CONTIGUOUS: {
		int prevm = 0;
		for (size_t i = 0; i < ns; i++) {
			int m = e->spans[i].m;
			if (m == prevm && k > 0) {
				e->spans[k - 1].e = e->spans[i].e;
			} else {
				e->spans[k] = e->spans[i];
				e->spans[k].m = 1;
				k++;
			}
			prevm = m;
		}
		break;
	}
	}
	for (size_t i = 0; i < k; i++)
		if (e->spans[i].m)
			pl_add(out, s + e->spans[i].s, e->spans[i].e - e->spans[i].s,
			       start && e->spans[i].s == 0);
}

static void bytelevel_map(struct buf *o, const char *s, size_t n)
{
	if (buf_reserve(o, 2 * n))
		return;
	for (size_t i = 0; i < n; i++) {
		uint32_t cp = bl_cp((unsigned char)s[i]);
		o->n += utf8_put(o->p + o->n, cp);
	}
}

/* replace all occurrences of pat with rep */
static void replace_all(struct buf *o, const char *s, size_t n, const char *pat, size_t pn,
			const char *rep, size_t rn)
{
	size_t i = 0;
	while (i < n) {
		const char *p = pn ? memmem(s + i, n - i, pat, pn) : NULL;
		if (!p) {
			buf_put(o, s + i, n - i);
			return;
		}
		buf_put(o, s + i, (size_t)(p - (s + i)));
		buf_put(o, rep, rn);
		i = (size_t)(p - s) + pn;
	}
}

static void pretokenize(struct enc *e, const char *s, size_t n, int start)
{
	const struct lq_tokenizer *t = e->t;
	struct plist *cur = &e->pl[0], *nxt = &e->pl[1];
	pl_clear(cur);
	pl_add(cur, s, n, start);
	for (uint32_t k = 0; k < t->n_ops[TK_STAGE_PRE]; k++) {
		const struct tk_op *op = &t->ops[TK_STAGE_PRE][k];
		pl_clear(nxt);
		for (size_t i = 0; i < cur->n && !e->rc; i++) {
			const char *ps = cur->text.p + cur->v[i].off;
			size_t pn = cur->v[i].len;
			int pst = cur->v[i].start;
			switch (op->type) {
			case TK_P_SPLIT:
				split_by(e, op, op->re, op->b, op->c, ps, pn, pst, nxt);
				break;
			case TK_P_BYTELEVEL: {
				e->tmp.n = 0;
				if (op->a && ps[0] != ' ')
					buf_putc(&e->tmp, ' ');
				buf_put(&e->tmp, ps, pn);
				if (e->tmp.oom)
					break;
				if (op->b) {
					/* isolate with the GPT-2 regex, mapping each piece */
					size_t from = 0, ms, me, prev = 0;
					const char *ts = e->tmp.p;
					size_t tn = e->tmp.n;
					for (;;) {
						int r = re_find(e, t->gpt2_re, ts, tn, from, &ms, &me);
						if (r <= 0)
							break;
						if (prev != ms) {
							e->tmp2.n = 0;
							bytelevel_map(&e->tmp2, ts + prev, ms - prev);
							pl_add(nxt, e->tmp2.p, e->tmp2.n, pst && prev == 0);
						}
						e->tmp2.n = 0;
						bytelevel_map(&e->tmp2, ts + ms, me - ms);
						pl_add(nxt, e->tmp2.p, e->tmp2.n, pst && ms == 0);
						prev = from = me;
					}
					if (prev != tn) {
						e->tmp2.n = 0;
						bytelevel_map(&e->tmp2, ts + prev, tn - prev);
						pl_add(nxt, e->tmp2.p, e->tmp2.n, pst && prev == 0);
					}
				} else {
					e->tmp2.n = 0;
					bytelevel_map(&e->tmp2, e->tmp.p, e->tmp.n);
					pl_add(nxt, e->tmp2.p, e->tmp2.n, pst);
				}
				break;
			}
			case TK_P_METASPACE: {
				e->tmp.n = 0;
				int pre = op->a == TK_PREPEND_ALWAYS || (op->a == TK_PREPEND_FIRST && pst);
				/* replace first, then check the start (as tokenizers) */
				e->tmp2.n = 0;
				replace_all(&e->tmp2, ps, pn, " ", 1, op->s1, op->s1len);
				if (pre && !(e->tmp2.n >= op->s1len && memcmp(e->tmp2.p, op->s1, op->s1len) == 0))
					buf_put(&e->tmp, op->s1, op->s1len);
				buf_put(&e->tmp, e->tmp2.p, e->tmp2.n);
				if (e->tmp.oom)
					break;
				if (op->b) {
					struct tk_op lit = {0};
					lit.s1 = op->s1;
					lit.s1len = op->s1len;
					split_by(e, &lit, NULL, TK_SPLIT_MERGED_NEXT, 0, e->tmp.p, e->tmp.n, pst, nxt);
				} else {
					pl_add(nxt, e->tmp.p, e->tmp.n, pst);
				}
				break;
			}
			}
		}
		struct plist *sw = cur;
		cur = nxt;
		nxt = sw;
		if (e->rc)
			return;
	}
	if (cur != &e->pl[0]) {
		/* keep the result in pl[0] */
		struct plist sw = e->pl[0];
		e->pl[0] = e->pl[1];
		e->pl[1] = sw;
	}
}

static int heap_less(const struct mrg *a, const struct mrg *b)
{
	return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct enc *e, struct mrg m)
{
	if (e->nheap == e->capheap) {
		size_t cap = e->capheap ? 2 * e->capheap : 64;
		struct mrg *v = realloc(e->heap, cap * sizeof *v);
		if (!v) {
			e->oom = 1;
			return;
		}
		e->heap = v;
		e->capheap = cap;
	}
	size_t i = e->nheap++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!heap_less(&m, &e->heap[p]))
			break;
		e->heap[i] = e->heap[p];
		i = p;
	}
	e->heap[i] = m;
}

static struct mrg heap_pop(struct enc *e)
{
	struct mrg top = e->heap[0];
	struct mrg last = e->heap[--e->nheap];
	size_t i = 0, n = e->nheap;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && heap_less(&e->heap[c + 1], &e->heap[c]))
			c++;
		if (!heap_less(&e->heap[c], &last))
			break;
		e->heap[i] = e->heap[c];
		i = c;
	}
	if (n)
		e->heap[i] = last;
	return top;
}

static void sym_add(struct enc *e, int32_t id, uint32_t len)
{
	if (e->nsyms == e->capsyms) {
		size_t cap = e->capsyms ? 2 * e->capsyms : 64;
		struct sym *v = realloc(e->syms, cap * sizeof *v);
		if (!v) {
			e->oom = 1;
			return;
		}
		e->syms = v;
		e->capsyms = cap;
	}
	size_t i = e->nsyms++;
	e->syms[i] = (struct sym){id, (int32_t)i - 1, (int32_t)i + 1, len};
}

static void try_merge(struct enc *e, size_t pos)
{
	const struct sym *a = &e->syms[pos];
	if (a->next < 0 || (size_t)a->next >= e->nsyms)
		return;
	int64_t r = merge_find(e->t, (uint32_t)a->id, (uint32_t)e->syms[a->next].id);
	if (r >= 0)
		heap_push(e, (struct mrg){(uint32_t)r, (uint32_t)pos, (int32_t)e->t->merges[3 * r + 2]});
}

/* BPE on one pre-token (as tokenizers' BPE::tokenize / merge_word) */
static void bpe(struct enc *e, const char *s, size_t n)
{
	const struct lq_tokenizer *t = e->t;
	if (n == 0)
		return;
	if (t->ignore_merges) {
		int32_t id = tk_vocab_find(t, s, n);
		if (id >= 0) {
			emit(e, id);
			return;
		}
	}
	e->nsyms = 0;
	int32_t unk = -1;
	uint32_t unk_len = 0;
	int have_unk = 0;
	for (size_t i = 0; i < n;) {
		size_t cl = utf8_len(s + i, n - i);
		int32_t id;
		unsigned char c0 = (unsigned char)s[i];
		if (c0 < 0x80)
			id = t->cid[c0];
		else if (cl == 2 && c0 >= 0xC2 && ((unsigned char)s[i + 1] & 0xC0) == 0x80)
			id = t->cid[(c0 & 0x1F) << 6 | ((unsigned char)s[i + 1] & 0x3F)];
		else
			id = tk_vocab_find(t, s + i, cl);
		if (id >= 0) {
			if (have_unk) {
				sym_add(e, unk, unk_len);
				have_unk = 0;
			}
			sym_add(e, id, (uint32_t)cl);
		} else {
			int done = 0;
			if (t->byte_fallback) {
				size_t k;
				for (k = 0; k < cl; k++)
					if (t->byte_id[(unsigned char)s[i + k]] < 0)
						break;
				if (k == cl) {
					for (k = 0; k < cl; k++)
						sym_add(e, t->byte_id[(unsigned char)s[i + k]], 1);
					done = 1;
				}
			}
			if (!done && t->model_unk >= 0) {
				if (have_unk && t->fuse_unk) {
					unk_len += (uint32_t)cl;
				} else {
					if (have_unk)
						sym_add(e, unk, unk_len);
					unk = t->model_unk;
					unk_len = (uint32_t)cl;
					have_unk = 1;
				}
			}
		}
		i += cl;
	}
	if (have_unk)
		sym_add(e, unk, unk_len);
	if (e->oom || e->nsyms == 0)
		return;
	e->syms[e->nsyms - 1].next = -1;
	/* merge by rank, lowest first, leftmost on ties */
	e->nheap = 0;
	for (size_t i = 0; i + 1 < e->nsyms; i++)
		try_merge(e, i);
	while (e->nheap && !e->oom) {
		struct mrg top = heap_pop(e);
		struct sym *cur = &e->syms[top.pos];
		if (cur->len == 0 || cur->next < 0)
			continue;
		size_t nx = (size_t)cur->next;
		struct sym right = e->syms[nx];
		/* stale entry? (the rank names one pair, the last one listed) */
		if (t->merges[3 * top.rank] != (uint32_t)cur->id ||
		    t->merges[3 * top.rank + 1] != (uint32_t)right.id)
			continue;
		cur->id = top.id;
		cur->len += right.len;
		cur->next = right.next;
		e->syms[nx].len = 0;
		if (right.next >= 0 && (size_t)right.next < e->nsyms)
			e->syms[right.next].prev = (int32_t)top.pos;
		if (cur->prev >= 0)
			try_merge(e, (size_t)cur->prev);
		try_merge(e, top.pos);
	}
	for (size_t i = 0; i < e->nsyms; i++)
		if (e->syms[i].len)
			emit(e, e->syms[i].id);
}

/*
 * Normalize s into out.  *zlen tracks how many leading bytes of the result
 * tokenizers would align with offset 0 of the original text (it matters for
 * the Metaspace "first" prepend scheme): a replacement takes the alignment of
 * the last character it replaces, a prepended text that of the first one.
 */
static void normalize(struct enc *e, const char *s, size_t n, struct buf *out, size_t *zlen)
{
	const struct lq_tokenizer *t = e->t;
	size_t z = *zlen;
	out->n = 0;
	buf_put(out, s, n);
	for (uint32_t k = 0; k < t->n_ops[TK_STAGE_NORM] && !out->oom; k++) {
		const struct tk_op *op = &t->ops[TK_STAGE_NORM][k];
		struct buf *o = &e->tmp;
		o->n = 0;
		switch (op->type) {
		case TK_N_NFC: case TK_N_NFD: case TK_N_NFKC: case TK_N_NFKD: {
			size_t i = 0;
			while (i < out->n && (unsigned char)out->p[i] < 0x80)
				i++;
			if (i == out->n)
				continue; /* ASCII is invariant */
			int zfirst = z > 0;
			int opt = UTF8PROC_STABLE;
			opt |= op->type == TK_N_NFC || op->type == TK_N_NFKC ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE;
			if (op->type == TK_N_NFKC || op->type == TK_N_NFKD)
				opt |= UTF8PROC_COMPAT;
			utf8proc_uint8_t *d = NULL;
			utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)out->p,
							  (utf8proc_ssize_t)out->n, &d, (utf8proc_option_t)opt);
			if (r < 0) {
				free(d);
				if (r == UTF8PROC_ERROR_NOMEM)
					e->oom = 1;
				else
					e->rc = lq_fail(e->err, LQ_ERR_INVALID, "tokenizer: normalization failed");
				return;
			}
			buf_put(o, d, (size_t)r);
			free(d);
			z = zfirst && o->n ? utf8_len(o->p, o->n) : 0;
			break;
		}
		case TK_N_PREPEND:
			if (out->n == 0)
				continue;
			buf_put(o, op->s1, op->s1len);
			buf_put(o, out->p, out->n);
			if (z)
				z += op->s1len;
			break;
		case TK_N_REPLACE: {
			size_t from = 0, ms, me, nz = 0;
			int inz = 1; /* still in the prefix aligned with offset 0 */
			for (;;) {
				int r = op_find(e, op, out->p, out->n, from, &ms, &me);
				if (r < 0)
					return;
				if (r == 0)
					break;
				buf_put(o, out->p + from, ms - from);
				if (inz) {
					if (ms <= z) {
						nz += ms - from;
					} else {
						nz += z > from ? z - from : 0;
						inz = 0;
					}
				}
				buf_put(o, op->s2, op->s2len);
				if (inz) {
					/* start of the last replaced character */
					size_t lc = me - 1;
					while (lc > ms && ((unsigned char)out->p[lc] & 0xC0) == 0x80)
						lc--;
					if (lc < z)
						nz += op->s2len;
					else
						inz = 0;
				}
				from = me;
			}
			buf_put(o, out->p + from, out->n - from);
			if (inz)
				nz += z > from ? z - from : 0;
			z = nz;
			break;
		}
		case TK_N_LOWERCASE: {
			size_t nz = 0;
			for (size_t i = 0; i < out->n;) {
				size_t l;
				uint32_t cp = utf8_cp(out->p + i, out->n - i, &l);
				char tmp[8];
				size_t kl;
				if (cp == 0x130) { /* the one multi-character lowercase mapping */
					memcpy(tmp, "i\xCC\x87", 3);
					kl = 3;
				} else {
					cp = (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
					kl = utf8_put(tmp, cp);
				}
				buf_put(o, tmp, kl);
				if (i < z)
					nz += kl;
				i += l;
			}
			z = nz;
			break;
		}
		case TK_N_STRIP: {
			size_t a = 0, b = out->n;
			while (op->a && a < b) {
				size_t l;
				uint32_t cp = utf8_cp(out->p + a, b - a, &l);
				if (!is_ws(cp))
					break;
				a += l;
			}
			while (op->b && b > a) {
				size_t j = b - 1;
				while (j > a && ((unsigned char)out->p[j] & 0xC0) == 0x80)
					j--;
				size_t l;
				uint32_t cp = utf8_cp(out->p + j, b - j, &l);
				if (!is_ws(cp))
					break;
				b = j;
			}
			buf_put(o, out->p + a, b - a);
			z = z > a ? (z < b ? z : b) - a : 0;
			break;
		}
		}
		if (e->rc)
			return;
		/* swap out <-> tmp */
		struct buf sw = *out;
		*out = *o;
		*o = sw;
	}
	if (out->oom)
		e->oom = 1;
	*zlen = z;
}

/* Split off added tokens from trie k (tokenizers' AddedVocabulary::find_matches),
 * calling seg() for text and emitting ids for matches. */
typedef void (*seg_fn)(struct enc *e, const char *s, size_t n, int start);

static void split_added(struct enc *e, int k, const char *s, size_t n, size_t zlen, seg_fn seg)
{
	const struct lq_tokenizer *t = e->t;
	const struct tk_trie *tr = &t->trie[k];
	size_t from = 0, start_off = 0, ms, me;
	while (!e->rc && !e->oom) {
		int32_t ai = trie_find(tr, s, n, from, &ms, &me);
		if (ai < 0)
			break;
		from = me;
		const struct tk_added *a = &t->added[ai];
		if (e->split_special && (a->flags & TK_A_SPECIAL))
			continue;
		size_t st = ms, sp = me, l;
		if (a->flags & TK_A_SINGLE_WORD) {
			int before = 0, after = 0;
			if (st > 0) {
				size_t j = st - 1;
				while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80)
					j--;
				before = is_word(utf8_cp(s + j, st - j, &l));
			}
			if (sp < n)
				after = is_word(utf8_cp(s + sp, n - sp, &l));
			if (before || after)
				continue;
		}
		if (a->flags & TK_A_LSTRIP) {
			size_t ns = st;
			while (ns > 0) {
				size_t j = ns - 1;
				while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80)
					j--;
				if (!is_ws(utf8_cp(s + j, ns - j, &l)))
					break;
				ns = j;
			}
			st = ns > start_off ? ns : start_off;
		}
		if (a->flags & TK_A_RSTRIP) {
			while (sp < n) {
				uint32_t cp = utf8_cp(s + sp, n - sp, &l);
				if (!is_ws(cp))
					break;
				sp += l;
			}
		}
		if (start_off < st)
			seg(e, s + start_off, st - start_off, start_off < zlen);
		emit(e, (int32_t)a->id);
		start_off = sp;
	}
	if (start_off < n && !e->rc)
		seg(e, s + start_off, n - start_off, start_off < zlen);
}

static void seg_model(struct enc *e, const char *s, size_t n, int start)
{
	pretokenize(e, s, n, start);
	if (e->pl[0].oom || e->pl[0].text.oom || e->tmp.oom || e->tmp2.oom)
		e->oom = 1;
	for (size_t i = 0; i < e->pl[0].n && !e->rc && !e->oom; i++)
		bpe(e, e->pl[0].text.p + e->pl[0].v[i].off, e->pl[0].v[i].len);
}

static void seg_raw(struct enc *e, const char *s, size_t n, int start)
{
	size_t zlen = start ? utf8_len(s, n) : 0;
	normalize(e, s, n, &e->norm, &zlen);
	if (e->rc || e->oom)
		return;
	/* the normalized text must outlive the pieces: move it aside */
	struct buf nb = e->norm;
	memset(&e->norm, 0, sizeof e->norm);
	split_added(e, 1, nb.p, nb.n, zlen, seg_model);
	buf_free(&nb);
}

int lq_tokenizer_encode(const struct lq_tokenizer *t, const char *text, size_t len, int flags,
			int32_t **ids, size_t *n, struct lq_error *err)
{
	*ids = NULL;
	*n = 0;
	if (!t || (!text && len))
		return lq_fail(err, LQ_ERR_INVALID, "tokenizer: no tokenizer or text");
	struct enc e;
	memset(&e, 0, sizeof e);
	e.t = t;
	e.err = err;
	e.split_special = !!(flags & LQ_ENCODE_SPLIT_SPECIAL);
	e.md = pcre2_match_data_create(4, NULL);
	e.mc = pcre2_match_context_create(NULL);
	struct buf clean = {0};
	if (!e.md || !e.mc) {
		e.oom = 1;
		goto out;
	}
	pcre2_set_match_limit(e.mc, 10000000);
	if (!tk_utf8_valid(text, len)) {
		utf8_lossy(&clean, text, len);
		if (clean.oom) {
			e.oom = 1;
			goto out;
		}
		text = clean.p;
		len = clean.n;
	}
	if (flags & LQ_ENCODE_ADD_SPECIAL)
		for (uint32_t i = 0; i < t->n_prefix; i++)
			emit(&e, t->prefix[i]);
	split_added(&e, 0, text ? text : "", len, 1, seg_raw);
	if (flags & LQ_ENCODE_ADD_SPECIAL)
		for (uint32_t i = 0; i < t->n_suffix; i++)
			emit(&e, t->suffix[i]);
out:
	if (e.oom && !e.rc)
		e.rc = lq_fail(err, LQ_ERR_NOMEM, "tokenizer: out of memory");
	buf_free(&clean);
	buf_free(&e.norm);
	buf_free(&e.tmp);
	buf_free(&e.tmp2);
	pl_free(&e.pl[0]);
	pl_free(&e.pl[1]);
	free(e.syms);
	free(e.heap);
	free(e.spans);
	pcre2_match_data_free(e.md);
	pcre2_match_context_free(e.mc);
	if (e.rc) {
		free(e.ids);
		return e.rc;
	}
	if (!e.ids) {
		e.ids = malloc(sizeof(int32_t));
		if (!e.ids)
			return lq_fail(err, LQ_ERR_NOMEM, "tokenizer: out of memory");
	}
	*ids = e.ids;
	*n = e.n;
	return LQ_OK;
}

/* ------------------------------------------------------------ decode */

/* a list of strings in one buffer: string i = b.p[off[i] .. off[i+1]) */
struct slist {
	struct buf b;
	size_t *off;
	size_t n, cap;
	int oom;
};

static void sl_begin(struct slist *l)
{
	if (l->n + 2 > l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		size_t *v = realloc(l->off, cap * sizeof *v);
		if (!v) {
			l->oom = 1;
			return;
		}
		l->off = v;
		l->cap = cap;
	}
	if (l->n == 0)
		l->off[0] = l->b.n;
}

/* close the current string (everything appended to b since the last end) */
static void sl_end(struct slist *l)
{
	if (l->oom)
		return;
	l->n++;
	l->off[l->n] = l->b.n;
}

static void sl_add(struct slist *l, const char *s, size_t n)
{
	sl_begin(l);
	if (l->oom)
		return;
	buf_put(&l->b, s, n);
	sl_end(l);
}

static void sl_clear(struct slist *l)
{
	l->n = 0;
	l->b.n = 0;
}

static void sl_free(struct slist *l)
{
	buf_free(&l->b);
	free(l->off);
}

#define SL_STR(l, i) ((l)->b.p ? (l)->b.p + (l)->off[i] : "")
#define SL_LEN(l, i) ((l)->off[(i) + 1] - (l)->off[i])

static int bytefallback_byte(const char *s, size_t n)
{
	if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	/* Rust u8::from_str_radix(s[3..5], 16): optional '+', hex digits */
	int v = 0, nd = 0;
	for (int i = 3; i < 5; i++) {
		char c = s[i];
		int d;
		if (i == 3 && c == '+')
			continue;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = v * 16 + d;
		nd++;
	}
	return nd ? v : -1;
}

static void bytelevel_unmap(struct buf *o, const char *s, size_t n)
{
	/* all characters byte-level: their bytes; else the raw token */
	size_t start = o->n;
	for (size_t i = 0; i < n;) {
		size_t l;
		uint32_t cp = utf8_cp(s + i, n - i, &l);
		int b = bl_byte(cp);
		if (b < 0) {
			o->n = start;
			buf_put(o, s, n);
			return;
		}
		buf_putc(o, (char)b);
		i += l;
	}
}

static void dec_op(const struct tk_op *op, struct slist *in, struct slist *out)
{
	switch (op->type) {
	case TK_D_REPLACE:
		for (size_t i = 0; i < in->n; i++) {
			sl_begin(out);
			replace_all(&out->b, SL_STR(in, i), SL_LEN(in, i), op->s1, op->s1len, op->s2, op->s2len);
			sl_end(out);
		}
		break;
	case TK_D_BYTEFALLBACK: {
		struct buf bytes = {0};
		for (size_t i = 0; i <= in->n; i++) {
			int b = i < in->n ? bytefallback_byte(SL_STR(in, i), SL_LEN(in, i)) : -1;
			if (b >= 0) {
				buf_putc(&bytes, (char)b);
				continue;
			}
			if (bytes.n) {
				if (tk_utf8_valid(bytes.p, bytes.n))
					sl_add(out, bytes.p, bytes.n);
				else
					for (size_t k = 0; k < bytes.n; k++)
						sl_add(out, "\xEF\xBF\xBD", 3);
				bytes.n = 0;
			}
			if (i < in->n)
				sl_add(out, SL_STR(in, i), SL_LEN(in, i));
		}
		if (bytes.oom)
			out->oom = 1;
		buf_free(&bytes);
		break;
	}
	case TK_D_FUSE:
		sl_begin(out);
		for (size_t i = 0; i < in->n; i++)
			buf_put(&out->b, SL_STR(in, i), SL_LEN(in, i));
		sl_end(out);
		break;
	case TK_D_STRIP: {
		size_t cl = op->s1len;
		for (size_t i = 0; i < in->n; i++) {
			const char *s = SL_STR(in, i);
			size_t a = 0, b = SL_LEN(in, i);
			for (int32_t k = 0; k < op->a && b - a >= cl && memcmp(s + a, op->s1, cl) == 0; k++)
				a += cl;
			for (int32_t k = 0; k < op->b && b - a >= cl && memcmp(s + b - cl, op->s1, cl) == 0; k++)
				b -= cl;
			sl_add(out, s + a, b - a);
		}
		break;
	}
	case TK_D_METASPACE:
		for (size_t i = 0; i < in->n; i++) {
			const char *s = SL_STR(in, i);
			size_t n = SL_LEN(in, i);
			sl_begin(out);
			for (size_t j = 0; j < n;) {
				if (n - j >= op->s1len && memcmp(s + j, op->s1, op->s1len) == 0) {
					if (!(i == 0 && op->a != TK_PREPEND_NEVER))
						buf_putc(&out->b, ' ');
					j += op->s1len;
				} else {
					size_t l = utf8_len(s + j, n - j);
					buf_put(&out->b, s + j, l);
					j += l;
				}
			}
			sl_end(out);
		}
		break;
	case TK_D_BYTELEVEL: {
		struct buf bytes = {0};
		for (size_t i = 0; i < in->n; i++)
			bytelevel_unmap(&bytes, SL_STR(in, i), SL_LEN(in, i));
		sl_begin(out);
		utf8_lossy(&out->b, bytes.p ? bytes.p : "", bytes.n);
		sl_end(out);
		if (bytes.oom)
			out->oom = 1;
		buf_free(&bytes);
		break;
	}
	}
}

static void cleanup_spaces(struct buf *b)
{
	static const char *const pairs[][2] = {
		{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
		{" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
	};
	for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
		struct buf o = {0};
		replace_all(&o, b->p ? b->p : "", b->n, pairs[k][0], strlen(pairs[k][0]), pairs[k][1],
			    strlen(pairs[k][1]));
		if (o.oom) {
			buf_free(&o);
			b->oom = 1;
			return;
		}
		buf_free(b);
		*b = o;
	}
}

static int special_token_str(const struct lq_tokenizer *t, const char *s, size_t n)
{
	int32_t a = added_find(t, s, n);
	return a >= 0 && (t->added[a].flags & TK_A_SPECIAL);
}

int lq_tokenizer_decode(const struct lq_tokenizer *t, const int32_t *ids, size_t n, int flags,
			char **text, size_t *len, struct lq_error *err)
{
	*text = NULL;
	if (len)
		*len = 0;
	if (!t || (!ids && n))
		return lq_fail(err, LQ_ERR_INVALID, "tokenizer: no tokenizer or ids");
	struct slist a = {0}, b = {0};
	for (size_t i = 0; i < n; i++) {
		size_t l;
		const char *s = lq_tokenizer_id_to_token(t, ids[i], &l);
		if (!s)
			continue;
		if ((flags & LQ_DECODE_SKIP_SPECIAL) && special_token_str(t, s, l))
			continue;
		sl_add(&a, s, l);
	}
	struct buf res = {0};
	if (!t->has_decoder) {
		for (size_t i = 0; i < a.n; i++) {
			if (i)
				buf_putc(&res, ' ');
			buf_put(&res, SL_STR(&a, i), SL_LEN(&a, i));
		}
	} else {
		for (uint32_t k = 0; k < t->n_ops[TK_STAGE_DEC]; k++) {
			sl_clear(&b);
			dec_op(&t->ops[TK_STAGE_DEC][k], &a, &b);
			struct slist sw = a;
			a = b;
			b = sw;
			if (a.oom || a.b.oom)
				break;
		}
		for (size_t i = 0; i < a.n; i++)
			buf_put(&res, SL_STR(&a, i), SL_LEN(&a, i));
	}
	int oom = a.oom || a.b.oom || b.oom || b.b.oom;
	sl_free(&a);
	sl_free(&b);
	if (!oom && (flags & LQ_DECODE_CLEANUP))
		cleanup_spaces(&res);
	buf_putc(&res, 0);
	if (oom || res.oom) {
		buf_free(&res);
		return lq_fail(err, LQ_ERR_NOMEM, "tokenizer: out of memory");
	}
	*text = res.p;
	if (len)
		*len = res.n - 1;
	return LQ_OK;
}

int lq_tokenizer_token_bytes(const struct lq_tokenizer *t, int32_t id, int first, char *buf,
			     size_t cap, size_t *len)
{
	size_t l;
	*len = 0;
	const char *s = lq_tokenizer_id_to_token(t, id, &l);
	if (!s)
		return LQ_ERR_NOTFOUND;
	struct slist a = {0}, b = {0};
	int rc = LQ_OK;
	if (!t->has_decoder) {
		/* no decoder: tokens are joined with spaces */
		if (!first)
			sl_add(&a, " ", 1);
		sl_add(&a, s, l);
		goto done;
	}
	sl_add(&a, s, l);
	for (uint32_t k = 0; k < t->n_ops[TK_STAGE_DEC]; k++) {
		const struct tk_op *op = &t->ops[TK_STAGE_DEC][k];
		if (a.n != 1)
			break;
		const char *ts = SL_STR(&a, 0);
		size_t tn = SL_LEN(&a, 0);
		sl_clear(&b);
		switch (op->type) {
		case TK_D_BYTEFALLBACK: {
			int v = bytefallback_byte(ts, tn);
			if (v < 0)
				continue;
			char c = (char)v;
			sl_add(&b, &c, 1);
			break;
		}
		case TK_D_BYTELEVEL:
			sl_begin(&b);
			bytelevel_unmap(&b.b, ts, tn);
			sl_end(&b);
			break;
		case TK_D_STRIP:
		case TK_D_METASPACE:
			if (!first && op->type == TK_D_STRIP)
				continue;
			if (!first) {
				struct tk_op o2 = *op;
				o2.a = TK_PREPEND_NEVER;
				dec_op(&o2, &a, &b);
			} else {
				struct tk_op o2 = *op;
				if (op->type == TK_D_STRIP)
					o2.b = 0;
				dec_op(&o2, &a, &b);
			}
			break;
		default:
			dec_op(op, &a, &b);
		}
		struct slist sw = a;
		a = b;
		b = sw;
		if (a.oom || a.b.oom) {
			rc = LQ_ERR_NOMEM;
			goto out;
		}
	}
done:
	for (size_t i = 0; i < a.n; i++)
		*len += SL_LEN(&a, i);
	if (buf && *len <= cap) {
		size_t o = 0;
		for (size_t i = 0; i < a.n; i++) {
			memcpy(buf + o, SL_STR(&a, i), SL_LEN(&a, i));
			o += SL_LEN(&a, i);
		}
	}
out:
	sl_free(&a);
	sl_free(&b);
	return rc;
}

/* ------------------------------------------------------------ queries */

size_t lq_tokenizer_vocab_size(const struct lq_tokenizer *t) { return t ? t->n_ids : 0; }

int32_t lq_tokenizer_token_to_id(const struct lq_tokenizer *t, const char *s, size_t n)
{
	if (!t || (!s && n))
		return -1;
	int32_t a = added_find(t, s ? s : "", n);
	if (a >= 0)
		return (int32_t)t->added[a].id;
	return tk_vocab_find(t, s ? s : "", n);
}

const char *lq_tokenizer_id_to_token(const struct lq_tokenizer *t, int32_t id, size_t *len)
{
	if (!t || id < 0 || (uint32_t)id >= t->n_ids)
		return NULL;
	int32_t a = t->added_of[id];
	if (a >= 0) {
		if (len)
			*len = t->added[a].len;
		return t->added[a].content;
	}
	if (t->voff[id] == TK_NONE)
		return NULL;
	if (len)
		*len = t->vlen[id];
	return t->pool + t->voff[id];
}

int lq_tokenizer_is_special(const struct lq_tokenizer *t, int32_t id)
{
	size_t l;
	const char *s = lq_tokenizer_id_to_token(t, id, &l);
	return s && special_token_str(t, s, l);
}

int32_t lq_tokenizer_bos_id(const struct lq_tokenizer *t) { return t ? t->bos : -1; }
int32_t lq_tokenizer_eos_id(const struct lq_tokenizer *t) { return t ? t->eos : -1; }
int32_t lq_tokenizer_pad_id(const struct lq_tokenizer *t) { return t ? t->pad : -1; }
int32_t lq_tokenizer_unk_id(const struct lq_tokenizer *t) { return t ? t->unk : -1; }
int lq_tokenizer_cleanup_config(const struct lq_tokenizer *t) { return t ? t->cleanup : 0; }
