/* tokenizer_impl.h - internals shared by tokenizer*.c (not installed). */
#ifndef LQ_TOKENIZER_IMPL_H
#define LQ_TOKENIZER_IMPL_H

#include "internal.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* Pipeline operation types.  Values are pinned: they are stored in blobs
 * (formats/TOKENIZER-BLOB.md). */
enum tk_op_type {
	/* normalizers */
	TK_N_NFC = 1,
	TK_N_NFD = 2,
	TK_N_NFKC = 3,
	TK_N_NFKD = 4,
	TK_N_PREPEND = 5,   /* s1 = text */
	TK_N_REPLACE = 6,   /* a = pattern is a regex, s1 = pattern, s2 = content */
	TK_N_LOWERCASE = 7,
	TK_N_STRIP = 8,     /* a = left, b = right */
	/* pre-tokenizers */
	TK_P_SPLIT = 20,    /* a = regex, b = behavior, c = invert, s1 = pattern */
	TK_P_BYTELEVEL = 21,/* a = add_prefix_space, b = use_regex */
	TK_P_METASPACE = 22,/* s1 = replacement, a = prepend scheme, b = split */
	/* decoders */
	TK_D_BYTELEVEL = 40,
	TK_D_BYTEFALLBACK = 41,
	TK_D_FUSE = 42,
	TK_D_STRIP = 43,    /* s1 = content (one character), a = start, b = stop */
	TK_D_REPLACE = 44,  /* s1 = pattern (a string), s2 = content */
	TK_D_METASPACE = 45 /* s1 = replacement, a = prepend scheme, b = split */
};

/* Split behaviors (pinned). */
enum { TK_SPLIT_REMOVED = 0, TK_SPLIT_ISOLATED = 1, TK_SPLIT_MERGED_PREV = 2,
       TK_SPLIT_MERGED_NEXT = 3, TK_SPLIT_CONTIGUOUS = 4 };
/* Metaspace prepend schemes (pinned). */
enum { TK_PREPEND_ALWAYS = 0, TK_PREPEND_FIRST = 1, TK_PREPEND_NEVER = 2 };

/* Pipeline stages (pinned). */
enum { TK_STAGE_NORM = 0, TK_STAGE_PRE = 1, TK_STAGE_DEC = 2 };

struct tk_op {
	uint32_t type;
	int32_t a, b, c;
	char *s1, *s2;          /* NUL-terminated copies (arena) */
	uint32_t s1len, s2len;
	pcre2_code *re;         /* compiled pattern for regex ops */
};

/* added token flags (pinned, stored in blobs) */
#define TK_A_SPECIAL 1u
#define TK_A_LSTRIP 2u
#define TK_A_RSTRIP 4u
#define TK_A_SINGLE_WORD 8u
#define TK_A_NORMALIZED 16u
#define TK_A_ALL 31u

struct tk_added {
	uint32_t id;
	uint32_t flags;
	char *content;  /* NUL-terminated (arena) */
	uint32_t len;
};

/* trie over added token contents (leftmost-longest matching) */
struct tk_trie {
	uint32_t n_nodes, cap_nodes;
	int32_t *term;          /* per node: added index or -1 */
	uint32_t emask;         /* edge hash: key (node << 8 | byte) -> child */
	uint64_t *ekey;         /* 0 = empty; stored as key + 1 */
	uint32_t *eval;
	uint32_t n_edges;
	uint8_t first[32];      /* bitmap of first bytes */
	int empty;              /* no tokens */
};

#define TK_MAX_IDS (1u << 24)
#define TK_NONE UINT32_MAX

struct lq_tokenizer {
	struct lq_arena arena;
	uint32_t n_ids;
	/* model vocabulary: id -> string (pool offset, length); voff = TK_NONE if absent */
	char *pool;
	uint64_t pool_len;
	uint32_t *voff, *vlen;
	/* added tokens, and per id the index into added[] or -1 */
	uint32_t n_added;
	struct tk_added *added;
	int32_t *added_of;
	/* merges in rank order: a, b, result */
	uint32_t n_merges;
	uint32_t *merges;
	/* hash tables */
	uint32_t vh_mask, *vh;           /* vocab: slot = id + 1 */
	uint32_t ah_mask, *ah;           /* added content: slot = index + 1 */
	uint32_t mh_mask;                /* merges: pair -> rank + 1 (0 = empty) */
	struct tk_mslot { uint32_t a, b, r1; } *mh;
	int32_t cid[2048];               /* vocab id of each code point < 2048, or -1 */
	/* model options */
	int byte_fallback, fuse_unk, ignore_merges;
	int32_t model_unk;               /* model unk_token id or -1 */
	int32_t byte_id[256];            /* ids of <0xNN> tokens or -1 */
	/* pipeline */
	uint32_t n_ops[3];
	struct tk_op *ops[3];
	int has_decoder;
	/* post-processor (single sequence template) */
	uint32_t n_prefix, n_suffix;
	int32_t *prefix, *suffix;
	/* tokenizer_config.json */
	int32_t bos, eos, pad, unk;
	int cleanup;
	/* added token matchers: [0] raw (normalized = false), [1] normalized */
	struct tk_trie trie[2];
	/* GPT-2 regex for ByteLevel use_regex */
	pcre2_code *gpt2_re;
};

/* Build hash tables, tries, regexes, byte table after the loaders filled
 * n_ids, pool/voff/vlen, added, merges (ids), ops, post, config ids. */
int tk_finish(struct lq_tokenizer *t, const char *label, struct lq_error *err);
/* Allocate a zeroed handle. */
struct lq_tokenizer *tk_new(void);
/* Model vocabulary lookup (-1 if absent). */
int32_t tk_vocab_find(const struct lq_tokenizer *t, const char *s, size_t n);
/* Compile one pattern op (regex or literal) into op->re. */
int tk_compile(struct tk_op *op, int regex, const char *label, struct lq_error *err);
/* Whether s[0..n) is valid UTF-8. */
int tk_utf8_valid(const char *s, size_t n);

#endif
