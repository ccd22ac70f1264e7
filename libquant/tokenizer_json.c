/*
 * tokenizer_json.c - load a Hugging Face tokenizer.json (+ tokenizer_config.json).
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "tokenizer_impl.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_OPS 32

struct jctx {
	struct lq_tokenizer *t;
	struct lq_error *err;
	struct tk_op ops[3][MAX_OPS];
	uint32_t n[3];
};

static const char *LABEL = "tokenizer.json";

static int unsup(struct jctx *c, const char *what, const char *name)
{
	return lq_fail(c->err, LQ_ERR_UNSUPPORTED, "%s: %s '%s' is not supported", LABEL, what,
		       name ? name : "?");
}

static int bad(struct jctx *c, const char *what)
{
	return lq_fail(c->err, LQ_ERR_FORMAT, "%s: bad %s", LABEL, what);
}

static char *dupstr(struct lq_tokenizer *t, const char *s, size_t n)
{
	return lq_arena_strndup(&t->arena, s, n);
}

static int jbool(json_t *o, const char *k, int def)
{
	json_t *v = json_object_get(o, k);
	if (json_is_boolean(v))
		return json_is_true(v);
	return def;
}

static struct tk_op *new_op(struct jctx *c, int stage, uint32_t type)
{
	if (c->n[stage] >= MAX_OPS) {
		lq_fail(c->err, LQ_ERR_UNSUPPORTED, "%s: more than %d pipeline steps", LABEL, MAX_OPS);
		return NULL;
	}
	struct tk_op *op = &c->ops[stage][c->n[stage]++];
	memset(op, 0, sizeof *op);
	op->type = type;
	return op;
}

static int set_str(struct jctx *c, struct tk_op *op, int which, json_t *v)
{
	if (!json_is_string(v))
		return bad(c, "string in pipeline");
	size_t n = json_string_length(v);
	char *s = dupstr(c->t, json_string_value(v), n);
	if (!s)
		return lq_fail(c->err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
	if (which == 1) {
		op->s1 = s;
		op->s1len = (uint32_t)n;
	} else {
		op->s2 = s;
		op->s2len = (uint32_t)n;
	}
	return LQ_OK;
}

/* pattern: {"String": "..."} or {"Regex": "..."}; sets s1 and returns regex flag in *rx */
static int set_pattern(struct jctx *c, struct tk_op *op, json_t *pat, int *rx)
{
	json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
	if (json_is_string(s)) {
		*rx = 0;
		return set_str(c, op, 1, s);
	}
	if (json_is_string(r)) {
		*rx = 1;
		return set_str(c, op, 1, r);
	}
	return bad(c, "pattern");
}

static int prepend_scheme(struct jctx *c, json_t *o, int32_t *out)
{
	json_t *ps = json_object_get(o, "prepend_scheme");
	if (json_is_string(ps)) {
		const char *v = json_string_value(ps);
		if (!strcmp(v, "always"))
			*out = TK_PREPEND_ALWAYS;
		else if (!strcmp(v, "first"))
			*out = TK_PREPEND_FIRST;
		else if (!strcmp(v, "never"))
			*out = TK_PREPEND_NEVER;
		else
			return unsup(c, "prepend_scheme", v);
		return LQ_OK;
	}
	/* legacy add_prefix_space */
	*out = jbool(o, "add_prefix_space", 1) ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
	return LQ_OK;
}

static int load_normalizer(struct jctx *c, json_t *o, int depth)
{
	if (json_is_null(o) || !o)
		return LQ_OK;
	if (!json_is_object(o) || depth > 8)
		return bad(c, "normalizer");
	const char *type = json_string_value(json_object_get(o, "type"));
	if (!type)
		return bad(c, "normalizer type");
	struct tk_op *op;
	int rc, rx;
	if (!strcmp(type, "Sequence")) {
		json_t *a = json_object_get(o, "normalizers");
		size_t i;
		json_t *v;
		if (!json_is_array(a))
			return bad(c, "normalizer sequence");
		json_array_foreach(a, i, v) if ((rc = load_normalizer(c, v, depth + 1))) return rc;
		return LQ_OK;
	}
	static const struct { const char *name; uint32_t type; } simple[] = {
		{"NFC", TK_N_NFC}, {"NFD", TK_N_NFD}, {"NFKC", TK_N_NFKC}, {"NFKD", TK_N_NFKD},
		{"Lowercase", TK_N_LOWERCASE},
	};
	for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
		if (!strcmp(type, simple[i].name))
			return new_op(c, TK_STAGE_NORM, simple[i].type) ? LQ_OK : c->err ? c->err->code : LQ_ERR_UNSUPPORTED;
	if (!strcmp(type, "Prepend")) {
		if (!(op = new_op(c, TK_STAGE_NORM, TK_N_PREPEND)))
			return LQ_ERR_UNSUPPORTED;
		return set_str(c, op, 1, json_object_get(o, "prepend"));
	}
	if (!strcmp(type, "Replace")) {
		if (!(op = new_op(c, TK_STAGE_NORM, TK_N_REPLACE)))
			return LQ_ERR_UNSUPPORTED;
		if ((rc = set_pattern(c, op, json_object_get(o, "pattern"), &rx)))
			return rc;
		op->a = rx;
		if (op->s1len == 0)
			return bad(c, "empty Replace pattern");
		return set_str(c, op, 2, json_object_get(o, "content"));
	}
	if (!strcmp(type, "Strip")) {
		if (!(op = new_op(c, TK_STAGE_NORM, TK_N_STRIP)))
			return LQ_ERR_UNSUPPORTED;
		op->a = jbool(o, "strip_left", 1);
		op->b = jbool(o, "strip_right", 1);
		return LQ_OK;
	}
	return unsup(c, "normalizer", type);
}

#define WS_CLASS "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define W_CLASS "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}"
#define P_CLASS "[\\p{P}!-/:-@\\[-`{-~]"

static int split_behavior(const char *b)
{
	static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
					    "MergedWithNext", "Contiguous"};
	for (int i = 0; i < 5 && b; i++)
		if (!strcmp(b, names[i]))
			return i;
	return -1;
}

static int add_split(struct jctx *c, const char *regex, int behavior, int invert)
{
	struct tk_op *op = new_op(c, TK_STAGE_PRE, TK_P_SPLIT);
	if (!op)
		return LQ_ERR_UNSUPPORTED;
	op->s1len = (uint32_t)strlen(regex);
	op->s1 = dupstr(c->t, regex, op->s1len);
	if (!op->s1)
		return lq_fail(c->err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
	op->a = 1;
	op->b = behavior;
	op->c = invert;
	return LQ_OK;
}

static int load_pretok(struct jctx *c, json_t *o, int depth)
{
	if (json_is_null(o) || !o)
		return LQ_OK;
	if (!json_is_object(o) || depth > 8)
		return bad(c, "pre_tokenizer");
	const char *type = json_string_value(json_object_get(o, "type"));
	if (!type)
		return bad(c, "pre_tokenizer type");
	struct tk_op *op;
	int rc, rx;
	if (!strcmp(type, "Sequence")) {
		json_t *a = json_object_get(o, "pretokenizers");
		size_t i;
		json_t *v;
		if (!json_is_array(a))
			return bad(c, "pre_tokenizer sequence");
		json_array_foreach(a, i, v) if ((rc = load_pretok(c, v, depth + 1))) return rc;
		return LQ_OK;
	}
	if (!strcmp(type, "Split")) {
		if (!(op = new_op(c, TK_STAGE_PRE, TK_P_SPLIT)))
			return LQ_ERR_UNSUPPORTED;
		if ((rc = set_pattern(c, op, json_object_get(o, "pattern"), &rx)))
			return rc;
		op->a = rx;
		const char *b = json_string_value(json_object_get(o, "behavior"));
		op->b = split_behavior(b);
		if (op->b < 0)
			return unsup(c, "Split behavior", b);
		op->c = jbool(o, "invert", 0);
		return LQ_OK;
	}
	if (!strcmp(type, "ByteLevel")) {
		if (!(op = new_op(c, TK_STAGE_PRE, TK_P_BYTELEVEL)))
			return LQ_ERR_UNSUPPORTED;
		op->a = jbool(o, "add_prefix_space", 1);
		op->b = jbool(o, "use_regex", 1);
		return LQ_OK;
	}
	if (!strcmp(type, "Metaspace")) {
		if (!(op = new_op(c, TK_STAGE_PRE, TK_P_METASPACE)))
			return LQ_ERR_UNSUPPORTED;
		if ((rc = set_str(c, op, 1, json_object_get(o, "replacement"))))
			return rc;
		op->b = jbool(o, "split", 1);
		return prepend_scheme(c, o, &op->a);
	}
	/* the character-class pre-tokenizers, as Split operations with the same
	 * classes as Rust's char::is_whitespace, regex \\w, char::is_numeric and
	 * tokenizers' is_punc (per-character matches, like tokenizers) */
	if (!strcmp(type, "WhitespaceSplit"))
		return add_split(c, "[" WS_CLASS "]", TK_SPLIT_REMOVED, 0);
	if (!strcmp(type, "Whitespace"))
		return add_split(c, "[" W_CLASS "]+|[^" W_CLASS WS_CLASS "]+", TK_SPLIT_REMOVED, 1);
	if (!strcmp(type, "Digits"))
		return add_split(c, jbool(o, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", TK_SPLIT_ISOLATED, 0);
	if (!strcmp(type, "Punctuation")) {
		const char *b = json_string_value(json_object_get(o, "behavior"));
		int beh = split_behavior(b ? b : "Isolated");
		if (beh < 0)
			return unsup(c, "Punctuation behavior", b);
		return add_split(c, P_CLASS, beh, 0);
	}
	if (!strcmp(type, "BertPreTokenizer")) {
		int rc2 = add_split(c, "[" WS_CLASS "]", TK_SPLIT_REMOVED, 0);
		return rc2 ? rc2 : add_split(c, P_CLASS, TK_SPLIT_ISOLATED, 0);
	}
	return unsup(c, "pre_tokenizer", type);
}

static int load_decoder(struct jctx *c, json_t *o, int depth)
{
	if (!json_is_object(o) || depth > 8)
		return bad(c, "decoder");
	const char *type = json_string_value(json_object_get(o, "type"));
	if (!type)
		return bad(c, "decoder type");
	struct tk_op *op;
	int rc, rx;
	if (!strcmp(type, "Sequence")) {
		json_t *a = json_object_get(o, "decoders");
		size_t i;
		json_t *v;
		if (!json_is_array(a))
			return bad(c, "decoder sequence");
		json_array_foreach(a, i, v) if ((rc = load_decoder(c, v, depth + 1))) return rc;
		return LQ_OK;
	}
	if (!strcmp(type, "ByteLevel"))
		return new_op(c, TK_STAGE_DEC, TK_D_BYTELEVEL) ? LQ_OK : LQ_ERR_UNSUPPORTED;
	if (!strcmp(type, "ByteFallback"))
		return new_op(c, TK_STAGE_DEC, TK_D_BYTEFALLBACK) ? LQ_OK : LQ_ERR_UNSUPPORTED;
	if (!strcmp(type, "Fuse"))
		return new_op(c, TK_STAGE_DEC, TK_D_FUSE) ? LQ_OK : LQ_ERR_UNSUPPORTED;
	if (!strcmp(type, "Strip")) {
		if (!(op = new_op(c, TK_STAGE_DEC, TK_D_STRIP)))
			return LQ_ERR_UNSUPPORTED;
		if ((rc = set_str(c, op, 1, json_object_get(o, "content"))))
			return rc;
		json_int_t a = json_integer_value(json_object_get(o, "start"));
		json_int_t b = json_integer_value(json_object_get(o, "stop"));
		if (a < 0 || b < 0 || a > 1000000 || b > 1000000)
			return bad(c, "Strip decoder");
		op->a = (int32_t)a;
		op->b = (int32_t)b;
		return LQ_OK;
	}
	if (!strcmp(type, "Replace")) {
		if (!(op = new_op(c, TK_STAGE_DEC, TK_D_REPLACE)))
			return LQ_ERR_UNSUPPORTED;
		if ((rc = set_pattern(c, op, json_object_get(o, "pattern"), &rx)))
			return rc;
		if (rx)
			return unsup(c, "decoder", "Replace with a regex");
		if (op->s1len == 0)
			return bad(c, "empty Replace pattern");
		return set_str(c, op, 2, json_object_get(o, "content"));
	}
	if (!strcmp(type, "Metaspace")) {
		if (!(op = new_op(c, TK_STAGE_DEC, TK_D_METASPACE)))
			return LQ_ERR_UNSUPPORTED;
		if ((rc = set_str(c, op, 1, json_object_get(o, "replacement"))))
			return rc;
		op->b = jbool(o, "split", 1);
		return prepend_scheme(c, o, &op->a);
	}
	return unsup(c, "decoder", type);
}

/* post-processor: collects the single-sequence template */
struct post {
	int32_t pre[64], suf[64];
	uint32_t npre, nsuf;
};

static int token_pair_id(struct jctx *c, json_t *pair, int32_t *id)
{
	/* ["<s>", 1] */
	json_t *v = json_array_get(pair, 1);
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= TK_MAX_IDS)
		return bad(c, "post_processor token");
	*id = (int32_t)json_integer_value(v);
	return LQ_OK;
}

static int load_post(struct jctx *c, json_t *o, struct post *p, int depth)
{
	if (json_is_null(o) || !o)
		return LQ_OK;
	if (!json_is_object(o) || depth > 8)
		return bad(c, "post_processor");
	const char *type = json_string_value(json_object_get(o, "type"));
	if (!type)
		return bad(c, "post_processor type");
	int rc;
	if (!strcmp(type, "Sequence")) {
		json_t *a = json_object_get(o, "processors");
		size_t i;
		json_t *v;
		if (!json_is_array(a))
			return bad(c, "post_processor sequence");
		json_array_foreach(a, i, v) if ((rc = load_post(c, v, p, depth + 1))) return rc;
		return LQ_OK;
	}
	if (!strcmp(type, "ByteLevel"))
		return LQ_OK; /* offsets only */
	if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
		int32_t cls, sep;
		if ((rc = token_pair_id(c, json_object_get(o, "cls"), &cls)) ||
		    (rc = token_pair_id(c, json_object_get(o, "sep"), &sep)))
			return rc;
		p->npre = p->nsuf = 0;
		p->pre[p->npre++] = cls;
		p->suf[p->nsuf++] = sep;
		return LQ_OK;
	}
	if (!strcmp(type, "TemplateProcessing")) {
		json_t *single = json_object_get(o, "single"), *sp = json_object_get(o, "special_tokens");
		size_t i;
		json_t *v;
		int seen_a = 0;
		if (!json_is_array(single))
			return bad(c, "TemplateProcessing");
		p->npre = p->nsuf = 0;
		json_array_foreach(single, i, v) {
			json_t *st = json_object_get(v, "SpecialToken"), *sq = json_object_get(v, "Sequence");
			if (sq) {
				if (seen_a)
					return unsup(c, "TemplateProcessing", "two sequences in single");
				seen_a = 1;
				continue;
			}
			const char *name = json_string_value(json_object_get(st, "id"));
			json_t *ids = json_object_get(json_object_get(sp, name ? name : ""), "ids");
			size_t k;
			json_t *idv;
			if (!name || !json_is_array(ids))
				return bad(c, "TemplateProcessing special token");
			json_array_foreach(ids, k, idv) {
				json_int_t x = json_integer_value(idv);
				if (!json_is_integer(idv) || x < 0 || x >= TK_MAX_IDS)
					return bad(c, "TemplateProcessing id");
				if (seen_a ? p->nsuf >= 64 : p->npre >= 64)
					return unsup(c, "TemplateProcessing", "too many tokens");
				if (seen_a)
					p->suf[p->nsuf++] = (int32_t)x;
				else
					p->pre[p->npre++] = (int32_t)x;
			}
		}
		return LQ_OK;
	}
	return unsup(c, "post_processor", type);
}

/* the content of a special token entry in tokenizer_config.json */
static const char *cfg_token(json_t *cfg, const char *key, size_t *len)
{
	json_t *v = json_object_get(cfg, key);
	if (json_is_object(v))
		v = json_object_get(v, "content");
	if (!json_is_string(v))
		return NULL;
	*len = json_string_length(v);
	return json_string_value(v);
}

/*
 * transformers registers the named special tokens of tokenizer_config.json
 * (and of the tokenizer class's defaults) with the backend as special added
 * tokens: an existing added token takes the new flags (special, not
 * normalized, no strip), a vocabulary entry becomes an added token, an
 * unknown string gets the next free id.  This matters for decoding with
 * skip_special_tokens and for matching them in text.
 */
struct cfg_tok {
	const char *s;
	size_t n;
	uint32_t flags;
};

static void cfg_collect(json_t *v, struct cfg_tok *out, size_t *n, size_t cap)
{
	if (*n >= cap)
		return;
	uint32_t flags = TK_A_SPECIAL;
	if (json_is_object(v)) {
		flags |= (jbool(v, "lstrip", 0) ? TK_A_LSTRIP : 0) | (jbool(v, "rstrip", 0) ? TK_A_RSTRIP : 0) |
			 (jbool(v, "single_word", 0) ? TK_A_SINGLE_WORD : 0) |
			 (jbool(v, "normalized", 0) ? TK_A_NORMALIZED : 0);
		v = json_object_get(v, "content");
	}
	if (!json_is_string(v) || json_string_length(v) == 0)
		return;
	out[*n].s = json_string_value(v);
	out[*n].n = json_string_length(v);
	out[*n].flags = flags;
	(*n)++;
}

static int cfg_specials(struct jctx *c, json_t *cfg)
{
	struct lq_tokenizer *t = c->t;
	static const char *const named[] = {"bos_token", "eos_token", "unk_token", "sep_token",
					    "pad_token", "cls_token", "mask_token"};
	size_t cap = 7 + json_array_size(json_object_get(cfg, "additional_special_tokens")) +
		     json_object_size(json_object_get(cfg, "extra_special_tokens")) +
		     json_array_size(json_object_get(cfg, "extra_special_tokens"));
	struct cfg_tok *v = calloc(cap, sizeof *v);
	if (!v)
		return lq_fail(c->err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
	size_t n = 0, i;
	const char *cls = json_string_value(json_object_get(cfg, "tokenizer_class"));
	int gemma = cls && (!strcmp(cls, "GemmaTokenizer") || !strcmp(cls, "GemmaTokenizerFast"));
	for (size_t k = 0; k < sizeof named / sizeof named[0]; k++) {
		json_t *x = json_object_get(cfg, named[k]);
		if (!x && gemma && !strcmp(named[k], "mask_token")) {
			/* the class default of transformers' GemmaTokenizer */
			v[n++] = (struct cfg_tok){"<mask>", 6, TK_A_SPECIAL};
			continue;
		}
		cfg_collect(x, v, &n, cap);
	}
	json_t *x, *a = json_object_get(cfg, "additional_special_tokens");
	json_array_foreach(a, i, x) cfg_collect(x, v, &n, cap);
	a = json_object_get(cfg, "extra_special_tokens");
	if (json_is_array(a)) {
		json_array_foreach(a, i, x) cfg_collect(x, v, &n, cap);
	} else if (json_is_object(a)) {
		const char *key;
		json_object_foreach(a, key, x) cfg_collect(x, v, &n, cap);
	}
	/* apply in order: an existing added token takes the new flags, others are appended */
	struct tk_added *na = lq_arena_alloc(&t->arena, (t->n_added + n) * sizeof *na + 1);
	if (!na) {
		free(v);
		return lq_fail(c->err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
	}
	memcpy(na, t->added, t->n_added * sizeof *na);
	uint32_t m = t->n_added, new_ids = 0;
	for (i = 0; i < n; i++) {
		uint32_t k;
		for (k = 0; k < m; k++)
			if (na[k].len == v[i].n && !memcmp(na[k].content, v[i].s, v[i].n))
				break;
		if (k < m) {
			na[k].flags = v[i].flags;
			continue;
		}
		int32_t id = tk_vocab_find(t, v[i].s, v[i].n);
		if (id < 0) {
			if (t->n_ids + new_ids >= TK_MAX_IDS) {
				free(v);
				return lq_fail(c->err, LQ_ERR_FORMAT, "%s: too many ids", LABEL);
			}
			id = (int32_t)(t->n_ids + new_ids++);
		}
		na[m].id = (uint32_t)id;
		na[m].flags = v[i].flags;
		na[m].len = (uint32_t)v[i].n;
		na[m].content = dupstr(t, v[i].s, v[i].n);
		if (!na[m].content) {
			free(v);
			return lq_fail(c->err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
		}
		m++;
	}
	free(v);
	t->added = na;
	t->n_added = m;
	if (new_ids) {
		/* grow the id space */
		uint32_t nn = t->n_ids + new_ids;
		uint32_t *voff = lq_arena_alloc(&t->arena, (size_t)nn * 4 + 4);
		uint32_t *vlen = lq_arena_alloc(&t->arena, (size_t)nn * 4 + 4);
		int32_t *aof = lq_arena_alloc(&t->arena, (size_t)nn * 4 + 4);
		if (!voff || !vlen || !aof)
			return lq_fail(c->err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
		memcpy(voff, t->voff, (size_t)t->n_ids * 4);
		memcpy(vlen, t->vlen, (size_t)t->n_ids * 4);
		for (uint32_t k = t->n_ids; k < nn; k++)
			voff[k] = TK_NONE;
		t->voff = voff;
		t->vlen = vlen;
		t->added_of = aof;
		t->n_ids = nn;
	}
	return LQ_OK;
}

static int load_model(struct jctx *c, json_t *m)
{
	struct lq_tokenizer *t = c->t;
	if (!json_is_object(m))
		return bad(c, "model");
	const char *type = json_string_value(json_object_get(m, "type"));
	if (type && strcmp(type, "BPE"))
		return unsup(c, "model", type);
	json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
	if (!json_is_object(vocab) || !json_is_array(merges))
		return bad(c, "BPE model (vocab/merges)");
	json_t *d = json_object_get(m, "dropout");
	if (d && !json_is_null(d) && !(json_is_number(d) && json_number_value(d) == 0))
		return unsup(c, "model option", "dropout");
	const char *pfx = json_string_value(json_object_get(m, "continuing_subword_prefix"));
	const char *sfx = json_string_value(json_object_get(m, "end_of_word_suffix"));
	if ((pfx && *pfx) || (sfx && *sfx))
		return unsup(c, "model option", pfx && *pfx ? "continuing_subword_prefix" : "end_of_word_suffix");
	t->byte_fallback = jbool(m, "byte_fallback", 0);
	t->fuse_unk = jbool(m, "fuse_unk", 0);
	t->ignore_merges = jbool(m, "ignore_merges", 0);
	return LQ_OK;
}

/*
 * transformers 5 builds LlamaTokenizer (Llama 2, Mistral, Phi-3 ...) from the
 * vocabulary and merges only, with its own pipeline: no normalizer, a
 * Metaspace pre-tokenizer (prepend "always", or "first" when legacy is false,
 * "never" without add_prefix_space; no split) and the decoders Replace,
 * ByteFallback, Fuse and Strip (when add_prefix_space).
 */
static int is_llama_class(json_t *cfg)
{
	const char *cls = json_string_value(json_object_get(cfg, "tokenizer_class"));
	return cls && (!strcmp(cls, "LlamaTokenizer") || !strcmp(cls, "LlamaTokenizerFast"));
}

static int v5_llama_pipeline(struct jctx *c, json_t *cfg)
{
	static const char meta[] = "\xE2\x96\x81";
	int aps = jbool(cfg, "add_prefix_space", 1), legacy = jbool(cfg, "legacy", 0);
	struct tk_op *op;
	c->n[TK_STAGE_NORM] = c->n[TK_STAGE_PRE] = c->n[TK_STAGE_DEC] = 0;
	if (!(op = new_op(c, TK_STAGE_PRE, TK_P_METASPACE)))
		return LQ_ERR_UNSUPPORTED;
	op->s1 = dupstr(c->t, meta, 3);
	op->s1len = 3;
	op->a = aps ? (legacy ? TK_PREPEND_ALWAYS : TK_PREPEND_FIRST) : TK_PREPEND_NEVER;
	op->b = 0;
	if (!(op = new_op(c, TK_STAGE_DEC, TK_D_REPLACE)))
		return LQ_ERR_UNSUPPORTED;
	op->s1 = dupstr(c->t, meta, 3);
	op->s1len = 3;
	op->s2 = dupstr(c->t, " ", 1);
	op->s2len = 1;
	if (!new_op(c, TK_STAGE_DEC, TK_D_BYTEFALLBACK) || !new_op(c, TK_STAGE_DEC, TK_D_FUSE))
		return LQ_ERR_UNSUPPORTED;
	if (aps) {
		if (!(op = new_op(c, TK_STAGE_DEC, TK_D_STRIP)))
			return LQ_ERR_UNSUPPORTED;
		op->s1 = dupstr(c->t, " ", 1);
		op->s1len = 1;
		op->a = 1;
		op->b = 0;
	}
	for (int st = 0; st < 3; st++)
		for (uint32_t i = 0; i < c->n[st]; i++)
			if ((c->ops[st][i].s1len && !c->ops[st][i].s1) || (c->ops[st][i].s2len && !c->ops[st][i].s2))
				return lq_fail(c->err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
	c->t->has_decoder = 1;
	return LQ_OK;
}

int lq_tokenizer_load_json(struct lq_tokenizer **out, const char *json, size_t json_len,
			   const char *config, size_t config_len, struct lq_error *err)
{
	return lq_tokenizer_load_json_ex(out, json, json_len, config, config_len, 0, err);
}

int lq_tokenizer_load_json_ex(struct lq_tokenizer **out, const char *json, size_t json_len,
			      const char *config, size_t config_len, int flags, struct lq_error *err)
{
	*out = NULL;
	if (!json)
		return lq_fail(err, LQ_ERR_INVALID, "%s: no text", LABEL);
	json_error_t je;
	json_t *root = json_loadb(json, json_len, JSON_ALLOW_NUL, &je), *cfg = NULL;
	if (!root || !json_is_object(root)) {
		json_decref(root);
		return lq_fail(err, LQ_ERR_FORMAT, "%s: line %d: %s", LABEL, je.line, je.text);
	}
	if (config) {
		cfg = json_loadb(config, config_len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
		if (!cfg || !json_is_object(cfg)) {
			json_decref(root);
			json_decref(cfg);
			return lq_fail(err, LQ_ERR_FORMAT, "tokenizer_config.json: line %d: %s", je.line, je.text);
		}
	}
	struct jctx *c = calloc(1, sizeof *c);
	struct lq_tokenizer *t = tk_new();
	int rc = LQ_OK;
	if (!c || !t) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
		goto fail;
	}
	c->t = t;
	c->err = err;
	json_t *m = json_object_get(root, "model");
	if ((rc = load_model(c, m)))
		goto fail;
	json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
	json_t *added = json_object_get(root, "added_tokens");
	if (added && !json_is_array(added) && !json_is_null(added)) {
		rc = bad(c, "added_tokens");
		goto fail;
	}

	/* id space and the vocabulary pool */
	uint64_t max_id = 0, pool = 0;
	const char *key;
	size_t klen;
	json_t *v;
	int any = 0;
	json_object_keylen_foreach(vocab, key, klen, v) {
		json_int_t id = json_integer_value(v);
		if (!json_is_integer(v) || id < 0 || id >= TK_MAX_IDS) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: vocab entry '%.60s' has a bad id", LABEL, key);
			goto fail;
		}
		if ((uint64_t)id > max_id)
			max_id = (uint64_t)id;
		pool += klen + 1;
		any = 1;
	}
	size_t i;
	json_array_foreach(added, i, v) {
		json_t *idv = json_object_get(v, "id");
		json_int_t id = json_integer_value(idv);
		if (!json_is_integer(idv) || id < 0 || id >= TK_MAX_IDS ||
		    !json_is_string(json_object_get(v, "content"))) {
			rc = bad(c, "added token");
			goto fail;
		}
		if ((uint64_t)id > max_id)
			max_id = (uint64_t)id;
		any = 1;
	}
	if (pool > UINT32_MAX) {
		rc = unsup(c, "vocabulary", "larger than 4 GiB");
		goto fail;
	}
	t->n_ids = any ? (uint32_t)max_id + 1 : 0;
	t->voff = lq_arena_alloc(&t->arena, (size_t)t->n_ids * 4 + 4);
	t->vlen = lq_arena_alloc(&t->arena, (size_t)t->n_ids * 4 + 4);
	t->added_of = lq_arena_alloc(&t->arena, (size_t)t->n_ids * 4 + 4);
	t->pool = lq_arena_alloc(&t->arena, pool + 1);
	if (!t->voff || !t->vlen || !t->added_of || !t->pool) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
		goto fail;
	}
	memset(t->voff, 0xFF, (size_t)t->n_ids * 4);
	uint64_t off = 0;
	json_object_keylen_foreach(vocab, key, klen, v) {
		uint32_t id = (uint32_t)json_integer_value(v);
		memcpy(t->pool + off, key, klen);
		t->pool[off + klen] = 0;
		if (t->voff[id] == TK_NONE) {
			t->voff[id] = (uint32_t)off;
			t->vlen[id] = (uint32_t)klen;
		}
		off += klen + 1;
	}
	t->pool_len = off;

	/* added tokens */
	t->n_added = (uint32_t)json_array_size(added);
	t->added = lq_arena_alloc(&t->arena, (size_t)t->n_added * sizeof *t->added + 1);
	if (!t->added) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
		goto fail;
	}
	json_array_foreach(added, i, v) {
		struct tk_added *a = &t->added[i];
		json_t *cs = json_object_get(v, "content");
		a->id = (uint32_t)json_integer_value(json_object_get(v, "id"));
		a->len = (uint32_t)json_string_length(cs);
		a->content = dupstr(t, json_string_value(cs), a->len);
		if (!a->content) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
			goto fail;
		}
		a->flags = (jbool(v, "special", 0) ? TK_A_SPECIAL : 0) |
			   (jbool(v, "lstrip", 0) ? TK_A_LSTRIP : 0) |
			   (jbool(v, "rstrip", 0) ? TK_A_RSTRIP : 0) |
			   (jbool(v, "single_word", 0) ? TK_A_SINGLE_WORD : 0) |
			   (jbool(v, "normalized", !jbool(v, "special", 0)) ? TK_A_NORMALIZED : 0);
	}

	/* pipeline */
	if ((rc = load_normalizer(c, json_object_get(root, "normalizer"), 0)) ||
	    (rc = load_pretok(c, json_object_get(root, "pre_tokenizer"), 0)))
		goto fail;
	json_t *dec = json_object_get(root, "decoder");
	if (dec && !json_is_null(dec)) {
		t->has_decoder = 1;
		if ((rc = load_decoder(c, dec, 0)))
			goto fail;
	}
	struct post post = {{0}, {0}, 0, 0};
	if ((rc = load_post(c, json_object_get(root, "post_processor"), &post, 0)))
		goto fail;
	int v5llama = (flags & LQ_TOKENIZER_TRANSFORMERS5) && cfg && is_llama_class(cfg);
	if (v5llama) {
		if ((rc = v5_llama_pipeline(c, cfg)))
			goto fail;
		post.npre = post.nsuf = 0;
	}
	for (int st = 0; st < 3; st++) {
		t->n_ops[st] = c->n[st];
		t->ops[st] = lq_arena_alloc(&t->arena, c->n[st] * sizeof(struct tk_op) + 1);
		if (!t->ops[st]) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
			goto fail;
		}
		memcpy(t->ops[st], c->ops[st], c->n[st] * sizeof(struct tk_op));
		c->n[st] = 0; /* the handle owns the compiled patterns now */
	}
	t->n_prefix = post.npre;
	t->n_suffix = post.nsuf;
	t->prefix = lq_arena_alloc(&t->arena, 4 * post.npre + 4);
	t->suffix = lq_arena_alloc(&t->arena, 4 * post.nsuf + 4);
	if (!t->prefix || !t->suffix) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
		goto fail;
	}
	memcpy(t->prefix, post.pre, 4 * post.npre);
	memcpy(t->suffix, post.suf, 4 * post.nsuf);

	/* the vocabulary hash is needed to resolve merges: build it via tk_finish
	 * after the merges, so resolve merges with a temporary finish first */
	t->n_merges = 0;
	t->merges = NULL;
	if ((rc = tk_finish(t, LABEL, err)))
		goto fail;
	size_t nm = json_array_size(merges);
	if (nm > UINT32_MAX / 4) {
		rc = bad(c, "merges");
		goto fail;
	}
	t->merges = lq_arena_alloc(&t->arena, nm * 12 + 12);
	if (!t->merges) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
		goto fail;
	}
	char *tmp = NULL;
	size_t tmpcap = 0;
	json_array_foreach(merges, i, v) {
		const char *a, *b;
		size_t an, bn;
		if (json_is_string(v)) {
			const char *s = json_string_value(v);
			size_t n = json_string_length(v);
			const char *sp = memchr(s, ' ', n);
			if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s))) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: merge %zu is not 'a b'", LABEL, i + 1);
				break;
			}
			a = s;
			an = (size_t)(sp - s);
			b = sp + 1;
			bn = n - an - 1;
		} else if (json_is_array(v) && json_array_size(v) == 2 &&
			   json_is_string(json_array_get(v, 0)) && json_is_string(json_array_get(v, 1))) {
			a = json_string_value(json_array_get(v, 0));
			an = json_string_length(json_array_get(v, 0));
			b = json_string_value(json_array_get(v, 1));
			bn = json_string_length(json_array_get(v, 1));
		} else {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: merge %zu is malformed", LABEL, i + 1);
			break;
		}
		int32_t ia = tk_vocab_find(t, a, an), ib = tk_vocab_find(t, b, bn);
		if (an + bn > tmpcap) {
			tmpcap = 2 * (an + bn) + 64;
			char *nt = realloc(tmp, tmpcap);
			if (!nt) {
				rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", LABEL);
				break;
			}
			tmp = nt;
		}
		memcpy(tmp, a, an);
		memcpy(tmp + an, b, bn);
		int32_t ic = tk_vocab_find(t, tmp, an + bn);
		if (ia < 0 || ib < 0 || ic < 0) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: merge %zu ('%.40s' '%.40s') is not in the vocabulary",
				     LABEL, i + 1, a, b);
			break;
		}
		t->merges[3 * i] = (uint32_t)ia;
		t->merges[3 * i + 1] = (uint32_t)ib;
		t->merges[3 * i + 2] = (uint32_t)ic;
	}
	free(tmp);
	if (rc)
		goto fail;
	t->n_merges = (uint32_t)nm;

	/* model unk token */
	const char *unk = json_string_value(json_object_get(m, "unk_token"));
	if (unk) {
		t->model_unk = tk_vocab_find(t, unk, strlen(unk));
		if (t->model_unk < 0) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: unk_token '%.60s' is not in the vocabulary", LABEL, unk);
			goto fail;
		}
	}
	/* named special tokens of tokenizer_config.json become special added tokens */
	if (cfg && (rc = cfg_specials(c, cfg)))
		goto fail;
	/* rebuild the tables with the merges and added tokens (second finish) */
	if ((rc = tk_finish(t, LABEL, err)))
		goto fail;
	/* special ids */
	if (cfg) {
		const char *keys[4] = {"bos_token", "eos_token", "pad_token", "unk_token"};
		int32_t *dst[4] = {&t->bos, &t->eos, &t->pad, &t->unk};
		for (int k = 0; k < 4; k++) {
			size_t n;
			const char *s = cfg_token(cfg, keys[k], &n);
			if (s)
				*dst[k] = lq_tokenizer_token_to_id(t, s, n);
		}
		t->cleanup = jbool(cfg, "clean_up_tokenization_spaces", 0);
	} else if (t->n_prefix) {
		t->bos = t->prefix[0];
	}
	if (t->unk < 0)
		t->unk = t->model_unk;
	/* transformers rebuilds the template from add_bos_token/add_eos_token when the
	 * config sets either (or, in transformers 5, when it built the pipeline) */
	if (cfg) {
		json_t *ab = json_object_get(cfg, "add_bos_token"), *ae = json_object_get(cfg, "add_eos_token");
		if (v5llama || json_is_boolean(ab) || json_is_boolean(ae)) {
			t->n_prefix = t->n_suffix = 0;
			if (json_is_true(ab) && t->bos >= 0)
				t->prefix[t->n_prefix++] = t->bos;
			if (json_is_true(ae) && t->eos >= 0)
				t->suffix[t->n_suffix++] = t->eos;
		}
	}
	json_decref(root);
	json_decref(cfg);
	free(c);
	*out = t;
	return LQ_OK;
fail:
	if (c)
		for (int st = 0; st < 3; st++)
			for (uint32_t k = 0; k < c->n[st]; k++)
				pcre2_code_free(c->ops[st][k].re);
	json_decref(root);
	json_decref(cfg);
	free(c);
	lq_tokenizer_free(t);
	return rc;
}

int lq_tokenizer_load_files(struct lq_tokenizer **out, const char *json_path,
			    const char *config_path, int flags, struct lq_error *err)
{
	*out = NULL;
	if (!json_path)
		return lq_fail(err, LQ_ERR_INVALID, "tokenizer: no tokenizer.json path");
	if (access(json_path, F_OK) != 0)
		return lq_fail(err, LQ_ERR_NOTFOUND, "%s: not found", json_path);
	const void *jm = NULL, *cm = NULL;
	uint64_t jn = 0, cn = 0;
	int have_cfg = config_path && access(config_path, F_OK) == 0;
	int rc = lq_map_file(json_path, &jm, &jn, err);
	if (rc)
		return rc;
	if (have_cfg && (rc = lq_map_file(config_path, &cm, &cn, err))) {
		lq_unmap_file(jm, jn);
		return rc;
	}
	const char *cfg = cm ? cm : have_cfg ? "" : NULL; /* an empty config is malformed */
	rc = lq_tokenizer_load_json_ex(out, jm ? jm : "", (size_t)jn, cfg, (size_t)cn, flags, err);
	if (rc && err) {
		char msg[sizeof err->msg];
		snprintf(msg, sizeof msg, "%.300s: %.700s", json_path, err->msg);
		memcpy(err->msg, msg, sizeof msg);
	}
	lq_unmap_file(jm, jn);
	if (cm)
		lq_unmap_file(cm, cn);
	return rc;
}
