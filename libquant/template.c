/*
 * template.c - a Jinja subset interpreter for Hugging Face chat templates.
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * Pipeline: the source is normalized (newlines, trailing newline dropped,
 * as jinja2 does), lexed into a token array with jinja2's whitespace rules
 * (trim_blocks, lstrip_blocks, '-' and '+' markers), parsed into an AST held
 * in the template's arena, and evaluated over a small tagged-union value
 * type with Python semantics (str(), repr(), ==, slicing, truthiness).
 * Errors unwind with longjmp to the API entry; all memory of a rendering is
 * one arena, so nothing leaks on the error path.
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#define MAX_DEPTH 200               /* parser nesting and evaluation recursion */
#define MAX_STEPS 20000000u         /* evaluation steps per rendering */
#define MAX_MEMORY (256u << 20)     /* bytes allocated per rendering */
#define DEFAULT_MAX_OUTPUT (16u << 20)
#define MAX_RANGE 100000            /* as jinja2's sandbox */

/* ================================================================ values */

enum vtype { T_UNDEF, T_NONE, T_BOOL, T_INT, T_FLOAT, T_STR, T_LIST, T_DICT,
	     T_NS, T_LOOP, T_MACRO, T_FUNC };

struct dict {
	struct val **k, **v;
	size_t n, cap;
};

struct loopstate;
struct node;
struct scope;

/* T_LIST kinds: a list, or one of the lazy Python objects jinja2 filters and
 * dict methods return, which behave differently (no len(), not printable...) */
enum { VK_LIST, VK_GEN, VK_ITEMS, VK_KEYS, VK_VALUES };

struct val {
	enum vtype t;
	int tuple;                   /* T_LIST: a Python tuple */
	int kind;                    /* T_LIST: VK_* */
	size_t consumed;             /* VK_GEN: items already taken */
	union {
		int b;
		int64_t i;
		double f;
		struct { const char *s; size_t n; } s;
		struct { struct val **v; size_t n; } l;
		struct dict *d;      /* T_DICT, T_NS */
		struct loopstate *loop;
		struct { const struct node *def; struct scope *sc; } m;
		struct { int id; struct val *self; } fn;
	} u;
	const char *hint;            /* T_UNDEF: message when it is used;
					VK_GEN: error deferred to the first use */
};

struct loopstate {
	struct val **items;
	size_t n, i;
	int depth;
};

/* ================================================================ AST */

enum {
	/* statements */
	N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK,
	N_CONTINUE, N_BLOCK, N_WITH,
	/* expressions */
	E_LIT, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST,
	E_NEG, E_POS, E_NOT, E_BIN, E_AND, E_OR, E_COND, E_LIST, E_TUPLE,
	E_DICT, E_CMP
};

/* binary and comparison operators */
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW, OP_CAT,
       OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

struct nlist {
	struct node **v;
	size_t n, cap;
};

struct node {
	int kind, op, line, col, neg;
	const char *name;          /* NAME, ATTR, FILTER, TEST, MACRO, SET target */
	struct val *lit;           /* E_LIT */
	struct node *a, *b, *c;    /* operands / cond, iter, filter */
	struct nlist body, els;    /* statement bodies; E_LIST items; args */
	struct nlist kwv;          /* keyword argument values; dict values */
	const char **kwn;          /* keyword argument names (kwv.n of them) */
	const char **targets;      /* FOR / SET tuple targets */
	size_t ntargets;
	int fid;                   /* filter/test id */
};

struct lq_template {
	struct lq_arena arena;
	struct nlist root;
};

/* ================================================================ lexer */

enum { K_TEXT, K_VBEGIN, K_VEND, K_BBEGIN, K_BEND, K_NAME, K_STR, K_INT,
       K_FLOAT, K_OP, K_EOF };

struct tok {
	int kind, line, col;
	const char *s;             /* text, name, string value (decoded), op */
	size_t n;
	int64_t i;
	double f;
};

struct parser {
	struct lq_template *t;
	struct lq_arena *a;
	const char *src;
	size_t len;
	struct tok *toks;
	size_t ntok, captok, pos;
	size_t lc_off;
	int lc_line, lc_col;
	int depth;
	jmp_buf jb;
	struct lq_error *err;
	int code;
};

static void line_col(const char *src, size_t off, int *line, int *col)
{
	int l = 1, c = 1;
	for (size_t i = 0; i < off; i++) {
		if (src[i] == '\n') {
			l++;
			c = 1;
		} else if (((unsigned char)src[i] & 0xC0) != 0x80) {
			c++;
		}
	}
	*line = l;
	*col = c;
}

__attribute__((noreturn, format(printf, 4, 5)))
static void perr(struct parser *p, int code, size_t off, const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	int line, col;
	line_col(p->src, off > p->len ? p->len : off, &line, &col);
	lq_fail(p->err, code, "chat template line %d column %d: %s", line, col, msg);
	p->code = code;
	longjmp(p->jb, 1);
}

__attribute__((noreturn, format(printf, 3, 4)))
static void perr_tok(struct parser *p, const struct tok *k, const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	lq_fail(p->err, LQ_ERR_FORMAT, "chat template line %d column %d: %s", k->line, k->col, msg);
	p->code = LQ_ERR_FORMAT;
	longjmp(p->jb, 1);
}

static void *palloc(struct parser *p, size_t n)
{
	void *r = lq_arena_alloc(p->a, n);
	if (!r) {
		lq_fail(p->err, LQ_ERR_NOMEM, "chat template: out of memory");
		p->code = LQ_ERR_NOMEM;
		longjmp(p->jb, 1);
	}
	return r;
}

static struct tok *push_tok(struct parser *p, int kind, size_t off)
{
	if (p->ntok == p->captok) {
		size_t nc = p->captok ? p->captok * 2 : 256;
		struct tok *nt = realloc(p->toks, nc * sizeof *nt);
		if (!nt) {
			lq_fail(p->err, LQ_ERR_NOMEM, "chat template: out of memory");
			p->code = LQ_ERR_NOMEM;
			longjmp(p->jb, 1);
		}
		p->toks = nt;
		p->captok = nc;
	}
	struct tok *k = &p->toks[p->ntok++];
	memset(k, 0, sizeof *k);
	k->kind = kind;
	/* offsets only grow: advance the line/column counter from the last token */
	if (off < p->lc_off) {
		p->lc_off = 0;
		p->lc_line = 1;
		p->lc_col = 1;
	}
	for (; p->lc_off < off; p->lc_off++) {
		if (p->src[p->lc_off] == '\n') {
			p->lc_line++;
			p->lc_col = 1;
		} else if (((unsigned char)p->src[p->lc_off] & 0xC0) != 0x80) {
			p->lc_col++;
		}
	}
	k->line = p->lc_line;
	k->col = p->lc_col;
	return k;
}

/* Decode one UTF-8 code point (lenient: a bad byte is one code point). */
static size_t u8dec(const char *s, size_t n, int32_t *cp)
{
	utf8proc_int32_t c;
	utf8proc_ssize_t r = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &c);
	if (r <= 0) {
		*cp = (unsigned char)s[0];
		return 1;
	}
	*cp = c;
	return (size_t)r;
}

/* Python's str.isspace() */
static int py_space(int32_t c)
{
	return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
	       c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Length of the trailing run of whitespace code points in s[0..n). */
static size_t rspace_len(const char *s, size_t n)
{
	size_t e = n;
	while (e > 0) {
		size_t b = e - 1;
		while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80 && e - b < 4)
			b--;
		int32_t c;
		u8dec(s + b, e - b, &c);
		if (!py_space(c))
			break;
		e = b;
	}
	return n - e;
}

static size_t lspace_len(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		int32_t c;
		size_t k = u8dec(s + i, n - i, &c);
		if (!py_space(c))
			break;
		i += k;
	}
	return i;
}

static int is_name_start(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_name_char(int c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

static int hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static size_t u8enc(char *o, uint32_t c)
{
	if (c < 0x80) { o[0] = (char)c; return 1; }
	if (c < 0x800) { o[0] = (char)(0xC0 | c >> 6); o[1] = (char)(0x80 | (c & 63)); return 2; }
	if (c < 0x10000) {
		o[0] = (char)(0xE0 | c >> 12); o[1] = (char)(0x80 | (c >> 6 & 63));
		o[2] = (char)(0x80 | (c & 63)); return 3;
	}
	o[0] = (char)(0xF0 | c >> 18); o[1] = (char)(0x80 | (c >> 12 & 63));
	o[2] = (char)(0x80 | (c >> 6 & 63)); o[3] = (char)(0x80 | (c & 63)); return 4;
}

/* Lex a string literal at src[i] (a quote); Python unicode-escape rules. */
static size_t lex_string(struct parser *p, size_t i, struct tok *k)
{
	char q = p->src[i];
	size_t j = i + 1;
	while (j < p->len && p->src[j] != q) {
		if (p->src[j] == '\\' && j + 1 < p->len)
			j++;
		j++;
	}
	if (j >= p->len)
		perr(p, LQ_ERR_FORMAT, i, "unterminated string literal");
	char *o = palloc(p, (j - i) * 2 + 1);
	size_t n = 0;
	for (size_t x = i + 1; x < j; x++) {
		char c = p->src[x];
		if (c != '\\') {
			o[n++] = c;
			continue;
		}
		char e = p->src[++x];
		switch (e) {
		case '\n': break;
		case '\\': o[n++] = '\\'; break;
		case '\'': o[n++] = '\''; break;
		case '"': o[n++] = '"'; break;
		case 'a': o[n++] = '\a'; break;
		case 'b': o[n++] = '\b'; break;
		case 'f': o[n++] = '\f'; break;
		case 'n': o[n++] = '\n'; break;
		case 'r': o[n++] = '\r'; break;
		case 't': o[n++] = '\t'; break;
		case 'v': o[n++] = '\v'; break;
		case 'x': case 'u': case 'U': {
			int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
			uint32_t cp = 0;
			for (int d = 0; d < nd; d++) {
				int h = x + 1 + (size_t)d < j ? hexval(p->src[x + 1 + d]) : -1;
				if (h < 0)
					perr(p, LQ_ERR_FORMAT, x, "truncated \\%c escape in string literal", e);
				cp = cp * 16 + (uint32_t)h;
			}
			if (cp > 0x10FFFF)
				perr(p, LQ_ERR_FORMAT, x, "illegal Unicode character in string literal");
			x += (size_t)nd;
			n += u8enc(o + n, cp);
			break;
		}
		default:
			if (e >= '0' && e <= '7') {
				uint32_t cp = 0;
				int d = 0;
				while (d < 3 && x < j && p->src[x] >= '0' && p->src[x] <= '7') {
					cp = cp * 8 + (uint32_t)(p->src[x] - '0');
					x++;
					d++;
				}
				x--;
				n += u8enc(o + n, cp);
			} else {
				o[n++] = '\\';
				o[n++] = e;
			}
		}
	}
	k->s = o;
	k->n = n;
	return j + 1;
}

static const char *const ops3[] = { "//", "**", "==", "!=", ">=", "<=", NULL };

/* Lex the inside of a {{ }} or {% %} starting at i; returns the offset after the end tag. */
static size_t lex_tag(struct parser *p, size_t i, int block, size_t tag_off, int *line_starting)
{
	char bal[MAX_DEPTH];
	int nbal = 0;
	const char *src = p->src;
	size_t len = p->len;
	for (;;) {
		/* whitespace */
		i += lspace_len(src + i, len - i);
		if (i >= len)
			perr(p, LQ_ERR_FORMAT, tag_off, "unterminated %s tag (missing '%s')",
			     block ? "{%" : "{{", block ? "%}" : "}}");
		/* end of tag */
		if (nbal == 0) {
			const char *end = block ? "%}" : "}}";
			if (src[i] == '-' && i + 2 < len + 0 && strncmp(src + i + 1, end, 2) == 0) {
				struct tok *k = push_tok(p, block ? K_BEND : K_VEND, i);
				(void)k;
				i += 3;
				size_t ws = lspace_len(src + i, len - i);
				*line_starting = ws > 0 && src[i + ws - 1] == '\n';
				return i + ws;
			}
			if (block && src[i] == '+' && i + 2 < len && strncmp(src + i + 1, end, 2) == 0) {
				push_tok(p, K_BEND, i);
				*line_starting = 0;
				return i + 3;
			}
			if (i + 1 < len && strncmp(src + i, end, 2) == 0) {
				push_tok(p, block ? K_BEND : K_VEND, i);
				i += 2;
				*line_starting = 0;
				if (block && i < len && src[i] == '\n') {
					i++;
					*line_starting = 1;
				}
				return i;
			}
		}
		char c = src[i];
		if (c == '\'' || c == '"') {
			struct tok *k = push_tok(p, K_STR, i);
			i = lex_string(p, i, k);
			continue;
		}
		if (c >= '0' && c <= '9') {
			size_t j = i;
			int isf = 0;
			while (j < len && ((src[j] >= '0' && src[j] <= '9') || src[j] == '_'))
				j++;
			if (j + 1 < len && src[j] == '.' && src[j + 1] >= '0' && src[j + 1] <= '9') {
				isf = 1;
				j++;
				while (j < len && ((src[j] >= '0' && src[j] <= '9') || src[j] == '_'))
					j++;
			}
			if (j < len && (src[j] == 'e' || src[j] == 'E')) {
				size_t e = j + 1;
				if (e < len && (src[e] == '+' || src[e] == '-'))
					e++;
				if (e < len && src[e] >= '0' && src[e] <= '9') {
					isf = 1;
					j = e;
					while (j < len && src[j] >= '0' && src[j] <= '9')
						j++;
				}
			}
			char buf[128];
			size_t bn = 0;
			for (size_t x = i; x < j && bn < sizeof buf - 1; x++)
				if (src[x] != '_')
					buf[bn++] = src[x];
			buf[bn] = 0;
			struct tok *k = push_tok(p, isf ? K_FLOAT : K_INT, i);
			if (isf) {
				k->f = strtod(buf, NULL);
			} else {
				errno = 0;
				char *endp;
				long long v = strtoll(buf, &endp, 10);
				if (errno || j - i > 60)
					perr(p, LQ_ERR_UNSUPPORTED, i, "integer literal too large");
				k->i = v;
			}
			i = j;
			continue;
		}
		if (is_name_start((unsigned char)c)) {
			size_t j = i;
			while (j < len && is_name_char((unsigned char)src[j]))
				j++;
			struct tok *k = push_tok(p, K_NAME, i);
			k->s = lq_arena_strndup(p->a, src + i, j - i);
			if (!k->s)
				perr(p, LQ_ERR_NOMEM, i, "out of memory");
			k->n = j - i;
			i = j;
			continue;
		}
		/* operators */
		size_t on = 0;
		for (int x = 0; ops3[x]; x++)
			if (i + 1 < len && strncmp(src + i, ops3[x], 2) == 0)
				on = 2;
		if (!on && strchr("+-/*%~[](){}><=.:|,;!", c) && c != '!')
			on = 1;
		if (!on)
			perr(p, LQ_ERR_FORMAT, i, "unexpected character '%c'", c);
		if (on == 1 && (c == '(' || c == '[' || c == '{')) {
			if (nbal >= MAX_DEPTH)
				perr(p, LQ_ERR_FORMAT, i, "brackets nested too deeply");
			bal[nbal++] = c == '(' ? ')' : c == '[' ? ']' : '}';
		} else if (on == 1 && (c == ')' || c == ']' || c == '}')) {
			if (nbal == 0)
				perr(p, LQ_ERR_FORMAT, i, "unexpected '%c'", c);
			if (bal[nbal - 1] != c)
				perr(p, LQ_ERR_FORMAT, i, "unexpected '%c', expected '%c'", c, bal[nbal - 1]);
			nbal--;
		}
		struct tok *k = push_tok(p, K_OP, i);
		k->s = lq_arena_strndup(p->a, src + i, on);
		if (!k->s)
			perr(p, LQ_ERR_NOMEM, i, "out of memory");
		k->n = on;
		i += on;
	}
}

static void push_text(struct parser *p, size_t off, const char *s, size_t n)
{
	if (!n)
		return;
	struct tok *k = push_tok(p, K_TEXT, off);
	k->s = s;
	k->n = n;
}

static void lex(struct parser *p)
{
	const char *src = p->src;
	size_t len = p->len, pos = 0;
	int line_starting = 1;
	for (;;) {
		/* find the next tag start */
		size_t t = pos;
		int kind = 0;
		while (t + 1 < len) {
			if (src[t] == '{' && (src[t + 1] == '{' || src[t + 1] == '%' || src[t + 1] == '#')) {
				kind = src[t + 1];
				break;
			}
			t++;
		}
		if (!kind) {
			push_text(p, pos, src + pos, len - pos);
			break;
		}
		char sign = t + 2 < len && (src[t + 2] == '-' || src[t + 2] == '+') ? src[t + 2] : 0;
		if (kind == '{' && sign == '+')
			sign = 0; /* '{{+' is not a marker: '+' is a unary plus */
		size_t tn = t - pos;
		const char *text = src + pos;
		if (sign == '-') {
			tn -= rspace_len(text, tn);
		} else if (sign != '+' && kind != '{') {
			size_t lp = tn;
			while (lp > 0 && text[lp - 1] != '\n')
				lp--;
			if ((lp > 0 || line_starting) && tn > lp && lspace_len(text + lp, tn - lp) == tn - lp)
				tn = lp;
		}
		size_t after = t + 2 + (sign ? 1 : 0);
		/* raw blocks */
		if (kind == '%') {
			size_t q = after + lspace_len(src + after, len - after);
			if (q + 3 <= len && strncmp(src + q, "raw", 3) == 0 &&
			    (q + 3 == len || !is_name_char((unsigned char)src[q + 3]))) {
				q += 3;
				q += lspace_len(src + q, len - q);
				int strip_after = 0;
				if (q < len && src[q] == '-') {
					strip_after = 1;
					q++;
				}
				if (q + 1 >= len || strncmp(src + q, "%}", 2) != 0)
					perr(p, LQ_ERR_FORMAT, t, "missing end of raw directive");
				q += 2;
				int raw_ls = 0;
				if (strip_after) {
					size_t ws = lspace_len(src + q, len - q);
					raw_ls = ws > 0 && src[q + ws - 1] == '\n';
					q += ws;
				}
				push_text(p, pos, text, tn);
				/* find {% endraw %} */
				size_t r = q;
				for (;;) {
					while (r + 1 < len && !(src[r] == '{' && src[r + 1] == '%'))
						r++;
					if (r + 1 >= len)
						perr(p, LQ_ERR_FORMAT, t, "missing end of raw directive");
					size_t e = r + 2;
					char s2 = e < len && (src[e] == '-' || src[e] == '+') ? src[e] : 0;
					if (s2)
						e++;
					e += lspace_len(src + e, len - e);
					if (e + 6 <= len && strncmp(src + e, "endraw", 6) == 0) {
						/* the raw text gets the same stripping as text before a tag */
						size_t rn = r - q;
						if (s2 == '-') {
							rn -= rspace_len(src + q, rn);
						} else if (s2 != '+') {
							size_t lp = rn;
							while (lp > 0 && src[q + lp - 1] != '\n')
								lp--;
							if ((lp > 0 || raw_ls) && rn > lp &&
							    lspace_len(src + q + lp, rn - lp) == rn - lp)
								rn = lp;
						}
						push_text(p, q, src + q, rn);
						e += 6;
						e += lspace_len(src + e, len - e);
						if (e + 2 < len && src[e] == '-' && strncmp(src + e + 1, "%}", 2) == 0) {
							e += 3;
							size_t ws = lspace_len(src + e, len - e);
							line_starting = ws > 0 && src[e + ws - 1] == '\n';
							e += ws;
						} else if (e + 2 < len && src[e] == '+' && strncmp(src + e + 1, "%}", 2) == 0) {
							e += 3;
							line_starting = 0;
						} else if (e + 1 < len && strncmp(src + e, "%}", 2) == 0) {
							e += 2;
							line_starting = 0;
							if (e < len && src[e] == '\n') {
								e++;
								line_starting = 1;
							}
						} else {
							perr(p, LQ_ERR_FORMAT, r, "missing end of raw directive");
						}
						pos = e;
						break;
					}
					r += 2;
				}
				continue;
			}
		}
		push_text(p, pos, text, tn);
		if (kind == '#') {
			size_t q = after;
			while (q + 1 < len && !(src[q] == '#' && src[q + 1] == '}'))
				q++;
			if (q + 1 >= len)
				perr(p, LQ_ERR_FORMAT, t, "missing end of comment tag");
			if (q > after && src[q - 1] == '-') {
				q += 2;
				size_t ws = lspace_len(src + q, len - q);
				line_starting = ws > 0 && src[q + ws - 1] == '\n';
				q += ws;
			} else if (q > after && src[q - 1] == '+') {
				q += 2;
				line_starting = 0;
			} else {
				q += 2;
				line_starting = 0;
				if (q < len && src[q] == '\n') {
					q++;
					line_starting = 1;
				}
			}
			pos = q;
			continue;
		}
		push_tok(p, kind == '{' ? K_VBEGIN : K_BBEGIN, t);
		pos = lex_tag(p, after, kind == '%', t, &line_starting);
	}
	push_tok(p, K_EOF, len);
}

/* ================================================================ parser */

static struct tok *cur(struct parser *p) { return &p->toks[p->pos]; }
static struct tok *nexttok(struct parser *p) { return &p->toks[p->pos < p->ntok - 1 ? p->pos++ : p->pos]; }

static int is_op(const struct tok *k, const char *op) { return k->kind == K_OP && strcmp(k->s, op) == 0; }
static int is_name(const struct tok *k, const char *nm) { return k->kind == K_NAME && strcmp(k->s, nm) == 0; }

static const char *tokdesc(const struct tok *k)
{
	switch (k->kind) {
	case K_TEXT: return "template data";
	case K_VBEGIN: return "'{{'";
	case K_VEND: return "end of print statement";
	case K_BBEGIN: return "'{%'";
	case K_BEND: return "end of statement block";
	case K_NAME: return k->s;
	case K_STR: return "string";
	case K_INT: return "integer";
	case K_FLOAT: return "float";
	case K_OP: return k->s;
	default: return "end of template";
	}
}

static void expect_op(struct parser *p, const char *op)
{
	struct tok *k = cur(p);
	if (!is_op(k, op))
		perr_tok(p, k, "expected '%s', got '%s'", op, tokdesc(k));
	nexttok(p);
}

static const char *expect_name(struct parser *p)
{
	struct tok *k = cur(p);
	if (k->kind != K_NAME)
		perr_tok(p, k, "expected a name, got '%s'", tokdesc(k));
	nexttok(p);
	return k->s;
}

static struct node *mknode(struct parser *p, int kind)
{
	struct node *n = palloc(p, sizeof *n);
	n->kind = kind;
	n->line = cur(p)->line;
	return n;
}

static void nl_push(struct parser *p, struct nlist *l, struct node *n)
{
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 4;
		struct node **nv = palloc(p, nc * sizeof *nv);
		if (l->n)
			memcpy(nv, l->v, l->n * sizeof *nv);
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n++] = n;
}

static struct val *mkval_p(struct parser *p, enum vtype t)
{
	struct val *v = palloc(p, sizeof *v);
	v->t = t;
	return v;
}

/* filters and tests known at compile time */
enum {
	F_ABS, F_ATTR, F_CAPITALIZE, F_COUNT, F_DEFAULT, F_DICTSORT, F_ESCAPE, F_FIRST,
	F_FLOAT, F_INDENT, F_INT, F_ITEMS, F_JOIN, F_LAST, F_LENGTH, F_LIST, F_LOWER, F_MAP,
	F_MAX, F_MIN, F_REJECT, F_REJECTATTR, F_REPLACE, F_REVERSE, F_ROUND, F_SAFE,
	F_SELECT, F_SELECTATTR, F_SORT, F_STRING, F_SUM, F_TITLE, F_TOJSON, F_TRIM,
	F_UNIQUE, F_UPPER, F_WORDCOUNT, F_BATCH, F_CENTER, F_FORMAT
};
static const struct { const char *name; int id; } filter_names[] = {
	{ "abs", F_ABS }, { "attr", F_ATTR }, { "capitalize", F_CAPITALIZE },
	{ "count", F_COUNT }, { "default", F_DEFAULT }, { "d", F_DEFAULT },
	{ "dictsort", F_DICTSORT }, { "escape", F_ESCAPE }, { "e", F_ESCAPE },
	{ "first", F_FIRST }, { "float", F_FLOAT }, { "indent", F_INDENT }, { "int", F_INT },
	{ "items", F_ITEMS }, { "join", F_JOIN }, { "last", F_LAST }, { "length", F_LENGTH },
	{ "list", F_LIST }, { "lower", F_LOWER }, { "map", F_MAP }, { "max", F_MAX },
	{ "min", F_MIN }, { "reject", F_REJECT }, { "rejectattr", F_REJECTATTR },
	{ "replace", F_REPLACE }, { "reverse", F_REVERSE }, { "round", F_ROUND },
	{ "safe", F_SAFE }, { "select", F_SELECT }, { "selectattr", F_SELECTATTR },
	{ "sort", F_SORT }, { "string", F_STRING }, { "sum", F_SUM }, { "title", F_TITLE },
	{ "tojson", F_TOJSON }, { "trim", F_TRIM }, { "unique", F_UNIQUE }, { "upper", F_UPPER },
	{ "wordcount", F_WORDCOUNT }, { "batch", F_BATCH }, { "center", F_CENTER }, { "format", F_FORMAT },
	{ NULL, 0 }
};

enum {
	X_DEFINED, X_UNDEFINED, X_NONE, X_BOOLEAN, X_TRUE, X_FALSE, X_INTEGER, X_FLOAT,
	X_NUMBER, X_STRING, X_MAPPING, X_ITERABLE, X_SEQUENCE, X_CALLABLE, X_SAMEAS,
	X_EQ, X_NE, X_LT, X_LE, X_GT, X_GE, X_IN, X_ODD, X_EVEN, X_DIVISIBLEBY,
	X_LOWER, X_UPPER, X_ESCAPED
};
static const struct { const char *name; int id; } test_names[] = {
	{ "defined", X_DEFINED }, { "undefined", X_UNDEFINED }, { "none", X_NONE },
	{ "boolean", X_BOOLEAN }, { "true", X_TRUE }, { "false", X_FALSE },
	{ "integer", X_INTEGER }, { "float", X_FLOAT }, { "number", X_NUMBER },
	{ "string", X_STRING }, { "mapping", X_MAPPING }, { "iterable", X_ITERABLE },
	{ "sequence", X_SEQUENCE }, { "callable", X_CALLABLE }, { "sameas", X_SAMEAS },
	{ "eq", X_EQ }, { "equalto", X_EQ }, { "==", X_EQ }, { "ne", X_NE }, { "!=", X_NE },
	{ "lt", X_LT }, { "lessthan", X_LT }, { "<", X_LT }, { "le", X_LE }, { "<=", X_LE },
	{ "gt", X_GT }, { "greaterthan", X_GT }, { ">", X_GT }, { "ge", X_GE }, { ">=", X_GE },
	{ "in", X_IN }, { "odd", X_ODD }, { "even", X_EVEN }, { "divisibleby", X_DIVISIBLEBY },
	{ "lower", X_LOWER }, { "upper", X_UPPER }, { "escaped", X_ESCAPED },
	{ NULL, 0 }
};

static int find_test(const char *name)
{
	for (int i = 0; test_names[i].name; i++)
		if (strcmp(test_names[i].name, name) == 0)
			return test_names[i].id;
	return -1;
}

static struct node *parse_expr(struct parser *p, int with_cond);
static struct node *parse_primary(struct parser *p);

static void enter(struct parser *p)
{
	if (++p->depth > MAX_DEPTH)
		perr_tok(p, cur(p), "template nested too deeply (more than %d levels)", MAX_DEPTH);
}

/* argument list after '(' : positional and keyword arguments */
static void parse_args(struct parser *p, struct node *n)
{
	expect_op(p, "(");
	size_t nkw = 0, capkw = 0;
	while (!is_op(cur(p), ")")) {
		if (n->body.n || nkw)
			expect_op(p, ",");
		if (is_op(cur(p), ")"))
			break;
		if (is_op(cur(p), "*") || is_op(cur(p), "**"))
			perr_tok(p, cur(p), "*args and **kwargs in calls are not supported");
		if (cur(p)->kind == K_NAME && p->pos + 1 < p->ntok && is_op(&p->toks[p->pos + 1], "=")) {
			const char *nm = cur(p)->s;
			nexttok(p);
			nexttok(p);
			struct node *v = parse_expr(p, 1);
			if (nkw == capkw) {
				size_t nc = capkw ? capkw * 2 : 4;
				const char **nn = palloc(p, nc * sizeof *nn);
				if (nkw)
					memcpy(nn, n->kwn, nkw * sizeof *nn);
				n->kwn = nn;
				capkw = nc;
			}
			n->kwn[nkw++] = nm;
			nl_push(p, &n->kwv, v);
		} else {
			if (nkw)
				perr_tok(p, cur(p), "positional argument after keyword argument");
			nl_push(p, &n->body, parse_expr(p, 1));
		}
	}
	expect_op(p, ")");
}

static struct node *parse_postfix(struct parser *p, struct node *n)
{
	for (;;) {
		struct tok *k = cur(p);
		if (is_op(k, ".")) {
			nexttok(p);
			struct tok *a = cur(p);
			struct node *m = mknode(p, E_ATTR);
			m->a = n;
			if (a->kind == K_NAME) {
				m->name = a->s;
			} else if (a->kind == K_INT) {
				m->kind = E_ITEM;
				m->b = mknode(p, E_LIT);
				m->b->lit = mkval_p(p, T_INT);
				m->b->lit->u.i = a->i;
			} else {
				perr_tok(p, a, "expected an attribute name after '.', got '%s'", tokdesc(a));
			}
			nexttok(p);
			n = m;
		} else if (is_op(k, "[")) {
			nexttok(p);
			struct node *parts[3] = { NULL, NULL, NULL };
			int colons = 0;
			enter(p);
			for (;;) {
				if (is_op(cur(p), ":")) {
					if (colons == 2)
						perr_tok(p, cur(p), "invalid slice");
					colons++;
					nexttok(p);
					continue;
				}
				if (is_op(cur(p), "]"))
					break;
				if (parts[colons])
					perr_tok(p, cur(p), "expected ']' or ':', got '%s'", tokdesc(cur(p)));
				parts[colons] = parse_expr(p, 1);
			}
			p->depth--;
			expect_op(p, "]");
			struct node *m = mknode(p, colons ? E_SLICE : E_ITEM);
			m->a = n;
			if (colons) {
				m->b = parts[0];
				m->c = parts[1];
				if (parts[2])
					nl_push(p, &m->body, parts[2]);
			} else {
				if (!parts[0])
					perr_tok(p, k, "empty subscript");
				m->b = parts[0];
			}
			n = m;
		} else if (is_op(k, "(")) {
			struct node *m = mknode(p, E_CALL);
			m->a = n;
			enter(p);
			parse_args(p, m);
			p->depth--;
			n = m;
		} else {
			return n;
		}
	}
}

static struct node *parse_filters(struct parser *p, struct node *n)
{
	for (;;) {
		struct tok *k = cur(p);
		if (is_op(k, "|")) {
			nexttok(p);
			struct tok *nt = cur(p);
			const char *name = expect_name(p);
			while (is_op(cur(p), ".")) { /* jinja2 allows dotted filter names */
				nexttok(p);
				const char *part = expect_name(p);
				size_t l1 = strlen(name), l2 = strlen(part);
				char *nn = palloc(p, l1 + l2 + 2);
				memcpy(nn, name, l1);
				nn[l1] = '.';
				memcpy(nn + l1 + 1, part, l2 + 1);
				name = nn;
			}
			int id = -1;
			for (int i = 0; filter_names[i].name; i++)
				if (strcmp(filter_names[i].name, name) == 0)
					id = filter_names[i].id;
			struct node *m = mknode(p, E_FILTER);
			m->line = nt->line;
			m->col = nt->col;
			m->name = name;
			m->fid = id;
			m->a = n;
			if (is_op(cur(p), "(")) {
				enter(p);
				parse_args(p, m);
				p->depth--;
			}
			n = m;
		} else if (is_name(k, "is")) {
			nexttok(p);
			struct node *m = mknode(p, E_TEST);
			m->a = n;
			if (is_name(cur(p), "not")) {
				m->neg = 1;
				nexttok(p);
			}
			struct tok *nt = cur(p);
			const char *name;
			if (nt->kind == K_NAME) {
				name = nt->s;
				nexttok(p);
			} else {
				perr_tok(p, nt, "expected a test name after 'is', got '%s'", tokdesc(nt));
			}
			int id = find_test(name);
			m->line = nt->line;
			m->col = nt->col;
			m->name = name;
			m->fid = id;
			struct tok *a = cur(p);
			if (is_op(a, "(")) {
				enter(p);
				parse_args(p, m);
				p->depth--;
			} else if ((a->kind == K_NAME || a->kind == K_STR || a->kind == K_INT ||
				    a->kind == K_FLOAT || is_op(a, "[") || is_op(a, "{")) &&
				   !is_name(a, "else") && !is_name(a, "or") && !is_name(a, "and")) {
				if (is_name(a, "is"))
					perr_tok(p, a, "you cannot chain multiple tests with 'is'");
				struct node *arg = parse_postfix(p, parse_primary(p));
				nl_push(p, &m->body, arg);
			}
			n = m;
		} else if (is_op(k, "(")) {
			n = parse_postfix(p, n);
		} else {
			return n;
		}
	}
}

static struct node *parse_unary(struct parser *p, int with_filter)
{
	enter(p);
	struct tok *k = cur(p);
	struct node *n;
	if (is_op(k, "-") || is_op(k, "+")) {
		nexttok(p);
		n = mknode(p, is_op(k, "-") ? E_NEG : E_POS);
		n->a = parse_unary(p, 0);
	} else {
		n = parse_primary(p);
	}
	n = parse_postfix(p, n);
	if (with_filter)
		n = parse_filters(p, n);
	p->depth--;
	return n;
}

static struct node *parse_primary(struct parser *p)
{
	enter(p);
	struct tok *k = cur(p);
	struct node *n;
	if (k->kind == K_NAME) {
		nexttok(p);
		if (!strcmp(k->s, "true") || !strcmp(k->s, "True") || !strcmp(k->s, "false") ||
		    !strcmp(k->s, "False")) {
			n = mknode(p, E_LIT);
			n->lit = mkval_p(p, T_BOOL);
			n->lit->u.b = k->s[0] == 't' || k->s[0] == 'T';
		} else if (!strcmp(k->s, "none") || !strcmp(k->s, "None")) {
			n = mknode(p, E_LIT);
			n->lit = mkval_p(p, T_NONE);
		} else {
			n = mknode(p, E_NAME);
			n->name = k->s;
		}
	} else if (k->kind == K_STR) {
		/* adjacent string literals concatenate */
		size_t total = 0, j = p->pos;
		while (p->toks[j].kind == K_STR)
			total += p->toks[j++].n;
		char *s = palloc(p, total + 1);
		size_t o = 0;
		while (cur(p)->kind == K_STR) {
			memcpy(s + o, cur(p)->s, cur(p)->n);
			o += cur(p)->n;
			nexttok(p);
		}
		n = mknode(p, E_LIT);
		n->lit = mkval_p(p, T_STR);
		n->lit->u.s.s = s;
		n->lit->u.s.n = total;
	} else if (k->kind == K_INT || k->kind == K_FLOAT) {
		nexttok(p);
		n = mknode(p, E_LIT);
		n->lit = mkval_p(p, k->kind == K_INT ? T_INT : T_FLOAT);
		if (k->kind == K_INT)
			n->lit->u.i = k->i;
		else
			n->lit->u.f = k->f;
	} else if (is_op(k, "(")) {
		nexttok(p);
		if (is_op(cur(p), ")")) {
			nexttok(p);
			n = mknode(p, E_TUPLE);
		} else {
			struct node *e = parse_expr(p, 1);
			if (is_op(cur(p), ",")) {
				n = mknode(p, E_TUPLE);
				nl_push(p, &n->body, e);
				while (is_op(cur(p), ",")) {
					nexttok(p);
					if (is_op(cur(p), ")"))
						break;
					nl_push(p, &n->body, parse_expr(p, 1));
				}
			} else {
				n = e;
			}
			expect_op(p, ")");
		}
	} else if (is_op(k, "[")) {
		nexttok(p);
		n = mknode(p, E_LIST);
		while (!is_op(cur(p), "]")) {
			if (n->body.n)
				expect_op(p, ",");
			if (is_op(cur(p), "]"))
				break;
			nl_push(p, &n->body, parse_expr(p, 1));
		}
		expect_op(p, "]");
	} else if (is_op(k, "{")) {
		nexttok(p);
		n = mknode(p, E_DICT);
		while (!is_op(cur(p), "}")) {
			if (n->body.n)
				expect_op(p, ",");
			if (is_op(cur(p), "}"))
				break;
			nl_push(p, &n->body, parse_expr(p, 1));
			expect_op(p, ":");
			nl_push(p, &n->kwv, parse_expr(p, 1));
		}
		expect_op(p, "}");
	} else {
		perr_tok(p, k, "unexpected '%s'", tokdesc(k));
	}
	p->depth--;
	return n;
}

static struct node *binop(struct parser *p, int kind, int op, struct node *a, struct node *b)
{
	struct node *n = mknode(p, kind);
	n->op = op;
	n->a = a;
	n->b = b;
	return n;
}

static struct node *parse_pow(struct parser *p)
{
	struct node *n = parse_unary(p, 1);
	while (is_op(cur(p), "**")) {
		nexttok(p);
		n = binop(p, E_BIN, OP_POW, n, parse_unary(p, 1));
	}
	return n;
}

static struct node *parse_math2(struct parser *p)
{
	struct node *n = parse_pow(p);
	for (;;) {
		struct tok *k = cur(p);
		int op = is_op(k, "*") ? OP_MUL : is_op(k, "/") ? OP_DIV : is_op(k, "//") ? OP_FDIV :
			 is_op(k, "%") ? OP_MOD : -1;
		if (op < 0)
			return n;
		nexttok(p);
		n = binop(p, E_BIN, op, n, parse_pow(p));
	}
}

static struct node *parse_concat(struct parser *p)
{
	struct node *n = parse_math2(p);
	while (is_op(cur(p), "~")) {
		nexttok(p);
		n = binop(p, E_BIN, OP_CAT, n, parse_math2(p));
	}
	return n;
}

static struct node *parse_math1(struct parser *p)
{
	struct node *n = parse_concat(p);
	for (;;) {
		struct tok *k = cur(p);
		int op = is_op(k, "+") ? OP_ADD : is_op(k, "-") ? OP_SUB : -1;
		if (op < 0)
			return n;
		nexttok(p);
		n = binop(p, E_BIN, op, n, parse_concat(p));
	}
}

static struct node *parse_compare(struct parser *p)
{
	struct node *n = parse_math1(p), *chain = NULL, *last = n;
	for (;;) {
		struct tok *k = cur(p);
		int op = is_op(k, "==") ? OP_EQ : is_op(k, "!=") ? OP_NE : is_op(k, "<") ? OP_LT :
			 is_op(k, "<=") ? OP_LE : is_op(k, ">") ? OP_GT : is_op(k, ">=") ? OP_GE :
			 is_name(k, "in") ? OP_IN : -1;
		if (op < 0 && is_name(k, "not") && p->pos + 1 < p->ntok && is_name(&p->toks[p->pos + 1], "in")) {
			nexttok(p);
			op = OP_NOTIN;
		}
		if (op < 0)
			return chain ? chain : n;
		nexttok(p);
		/* chained comparisons a < b < c are and-ed as in Python */
		struct node *rhs = parse_math1(p);
		struct node *c = binop(p, E_CMP, op, last, rhs);
		chain = chain ? binop(p, E_AND, 0, chain, c) : c;
		last = rhs;
	}
}

static struct node *parse_not(struct parser *p)
{
	if (is_name(cur(p), "not")) {
		nexttok(p);
		enter(p);
		struct node *n = mknode(p, E_NOT);
		n->a = parse_not(p);
		p->depth--;
		return n;
	}
	return parse_compare(p);
}

static struct node *parse_and(struct parser *p)
{
	struct node *n = parse_not(p);
	while (is_name(cur(p), "and")) {
		nexttok(p);
		n = binop(p, E_AND, 0, n, parse_not(p));
	}
	return n;
}

static struct node *parse_or(struct parser *p)
{
	struct node *n = parse_and(p);
	while (is_name(cur(p), "or")) {
		nexttok(p);
		n = binop(p, E_OR, 0, n, parse_and(p));
	}
	return n;
}

static struct node *parse_expr(struct parser *p, int with_cond)
{
	enter(p);
	struct node *n = parse_or(p);
	if (with_cond) {
		while (is_name(cur(p), "if")) {
			nexttok(p);
			struct node *c = mknode(p, E_COND);
			c->a = parse_or(p);   /* condition */
			c->b = n;             /* value if true (parsed before: see below) */
			if (is_name(cur(p), "else")) {
				nexttok(p);
				c->c = parse_expr(p, 1);
			}
			n = c;
		}
	}
	p->depth--;
	return n;
}

/* expression, or a bare tuple "a, b" */
static struct node *parse_tuple(struct parser *p, int with_cond)
{
	struct node *e = parse_expr(p, with_cond);
	if (!is_op(cur(p), ","))
		return e;
	struct node *t = mknode(p, E_TUPLE);
	nl_push(p, &t->body, e);
	while (is_op(cur(p), ",")) {
		nexttok(p);
		if (cur(p)->kind == K_BEND || cur(p)->kind == K_VEND || is_op(cur(p), "=") ||
		    is_name(cur(p), "in"))
			break;
		nl_push(p, &t->body, parse_expr(p, with_cond));
	}
	return t;
}

static void expect_bend(struct parser *p)
{
	struct tok *k = cur(p);
	if (k->kind != K_BEND)
		perr_tok(p, k, "expected end of statement block, got '%s'", tokdesc(k));
	nexttok(p);
}

/* parse statements until one of the end tags; returns the end tag name consumed */
static const char *parse_body(struct parser *p, struct nlist *body, const char *const *ends,
			      const char *opener, const struct tok *open_tok);

static void parse_targets(struct parser *p, struct node *n, int allow_attr)
{
	const char *names[64];
	size_t nn = 0;
	int paren = 0;
	if (is_op(cur(p), "(")) {
		paren = 1;
		nexttok(p);
	}
	for (;;) {
		names[nn++] = expect_name(p);
		if (allow_attr && nn == 1 && !paren && is_op(cur(p), ".")) {
			nexttok(p);
			n->name = expect_name(p); /* attribute: targets[0] is the namespace */
			break;
		}
		if (!is_op(cur(p), ","))
			break;
		nexttok(p);
		if (paren && is_op(cur(p), ")"))
			break;
		if (nn == 64)
			perr_tok(p, cur(p), "too many assignment targets");
	}
	if (paren)
		expect_op(p, ")");
	n->targets = palloc(p, nn * sizeof *n->targets);
	memcpy(n->targets, names, nn * sizeof *names);
	n->ntargets = nn;
	if (nn > 1)
		n->neg = 1; /* tuple target (even with one name) */
}

static struct node *parse_stmt(struct parser *p)
{
	struct tok *open = cur(p); /* the name after '{%' */
	if (open->kind != K_NAME)
		perr_tok(p, open, "expected a statement name, got '%s'", tokdesc(open));
	const char *w = open->s;
	nexttok(p);
	struct node *n;
	if (!strcmp(w, "if")) {
		n = mknode(p, N_IF);
		n->line = open->line;
		n->a = parse_tuple(p, 1);
		expect_bend(p);
		static const char *const ends[] = { "elif", "else", "endif", NULL };
		const char *e = parse_body(p, &n->body, ends, "if", open);
		struct node *tail = n;
		while (!strcmp(e, "elif")) {
			struct node *m = mknode(p, N_IF);
			m->a = parse_tuple(p, 1);
			expect_bend(p);
			e = parse_body(p, &m->body, ends, "if", open);
			nl_push(p, &tail->els, m);
			tail = m;
		}
		if (!strcmp(e, "else")) {
			expect_bend(p);
			static const char *const ends2[] = { "endif", NULL };
			parse_body(p, &tail->els, ends2, "if", open);
		}
		expect_bend(p);
		return n;
	}
	if (!strcmp(w, "for")) {
		n = mknode(p, N_FOR);
		n->line = open->line;
		parse_targets(p, n, 0);
		if (!is_name(cur(p), "in"))
			perr_tok(p, cur(p), "expected 'in' in for loop, got '%s'", tokdesc(cur(p)));
		nexttok(p);
		n->a = parse_tuple(p, 0);
		if (is_name(cur(p), "if")) {
			nexttok(p);
			n->b = parse_expr(p, 1);
		}
		if (is_name(cur(p), "recursive"))
			perr_tok(p, cur(p), "recursive for loops are not supported");
		expect_bend(p);
		static const char *const ends[] = { "endfor", "else", NULL };
		const char *e = parse_body(p, &n->body, ends, "for", open);
		if (!strcmp(e, "else")) {
			expect_bend(p);
			static const char *const ends2[] = { "endfor", NULL };
			parse_body(p, &n->els, ends2, "for", open);
		}
		expect_bend(p);
		return n;
	}
	if (!strcmp(w, "set")) {
		n = mknode(p, N_SET);
		n->line = open->line;
		parse_targets(p, n, 1);
		if (is_op(cur(p), "=")) {
			nexttok(p);
			n->a = parse_tuple(p, 1);
			expect_bend(p);
			return n;
		}
		if (n->ntargets != 1 || n->name)
			perr_tok(p, cur(p), "expected '=' in set statement");
		n->kind = N_SETBLOCK;
		if (is_op(cur(p), "|"))
			perr_tok(p, cur(p), "filtered set blocks are not supported");
		expect_bend(p);
		static const char *const ends[] = { "endset", NULL };
		parse_body(p, &n->body, ends, "set", open);
		expect_bend(p);
		return n;
	}
	if (!strcmp(w, "macro")) {
		n = mknode(p, N_MACRO);
		n->line = open->line;
		n->name = expect_name(p);
		/* parameters: names in targets, defaults in kwv (NULL when none) */
		expect_op(p, "(");
		const char *names[64];
		size_t nn = 0;
		while (!is_op(cur(p), ")")) {
			if (nn)
				expect_op(p, ",");
			if (is_op(cur(p), ")"))
				break;
			if (nn == 64)
				perr_tok(p, cur(p), "too many macro parameters");
			names[nn++] = expect_name(p);
			if (is_op(cur(p), "=")) {
				nexttok(p);
				nl_push(p, &n->kwv, parse_expr(p, 1));
			} else {
				if (n->kwv.n && n->kwv.v[n->kwv.n - 1])
					perr_tok(p, cur(p), "non-default argument follows default argument");
				nl_push(p, &n->kwv, NULL);
			}
		}
		expect_op(p, ")");
		n->targets = palloc(p, (nn ? nn : 1) * sizeof *n->targets);
		memcpy(n->targets, names, nn * sizeof *names);
		n->ntargets = nn;
		expect_bend(p);
		static const char *const ends[] = { "endmacro", NULL };
		parse_body(p, &n->body, ends, "macro", open);
		if (cur(p)->kind == K_NAME)
			nexttok(p); /* {% endmacro name %} */
		expect_bend(p);
		return n;
	}
	if (!strcmp(w, "break") || !strcmp(w, "continue")) {
		n = mknode(p, w[0] == 'b' ? N_BREAK : N_CONTINUE);
		n->line = open->line;
		expect_bend(p);
		return n;
	}
	if (!strcmp(w, "with")) {
		/* {% with a = 1, b = x %}...{% endwith %}: names in targets, values in kwv */
		n = mknode(p, N_WITH);
		n->line = open->line;
		const char *names[64];
		size_t nn = 0;
		while (cur(p)->kind != K_BEND) {
			if (nn)
				expect_op(p, ",");
			if (nn == 64)
				perr_tok(p, cur(p), "too many names in with");
			names[nn++] = expect_name(p);
			expect_op(p, "=");
			nl_push(p, &n->kwv, parse_expr(p, 1));
		}
		n->targets = palloc(p, (nn ? nn : 1) * sizeof *n->targets);
		memcpy(n->targets, names, nn * sizeof *names);
		n->ntargets = nn;
		expect_bend(p);
		static const char *const ends[] = { "endwith", NULL };
		parse_body(p, &n->body, ends, "with", open);
		expect_bend(p);
		return n;
	}
	if (!strcmp(w, "generation")) {
		/* transformers' assistant-mask marker: renders its body unchanged */
		n = mknode(p, N_BLOCK);
		expect_bend(p);
		static const char *const ends[] = { "endgeneration", NULL };
		parse_body(p, &n->body, ends, "generation", open);
		expect_bend(p);
		return n;
	}
	if (!strcmp(w, "elif") || !strcmp(w, "else") || !strncmp(w, "end", 3))
		perr_tok(p, open, "unexpected '%s' (no open block to close)", w);
	lq_fail(p->err, LQ_ERR_UNSUPPORTED,
		"chat template line %d column %d: encountered unknown or unsupported tag '%s'",
		open->line, open->col, w);
	p->code = LQ_ERR_UNSUPPORTED;
	longjmp(p->jb, 1);
}

static const char *parse_body(struct parser *p, struct nlist *body, const char *const *ends,
			      const char *opener, const struct tok *open_tok)
{
	enter(p);
	for (;;) {
		struct tok *k = cur(p);
		if (k->kind == K_EOF) {
			if (!ends)
				break;
			perr_tok(p, open_tok, "unexpected end of template: the '%s' block opened here is never closed",
				 opener);
		}
		if (k->kind == K_TEXT) {
			struct node *n = mknode(p, N_TEXT);
			n->lit = mkval_p(p, T_STR);
			n->lit->u.s.s = k->s;
			n->lit->u.s.n = k->n;
			nl_push(p, body, n);
			nexttok(p);
		} else if (k->kind == K_VBEGIN) {
			nexttok(p);
			struct node *n = mknode(p, N_OUT);
			n->line = k->line;
			n->a = parse_tuple(p, 1);
			struct tok *e = cur(p);
			if (e->kind != K_VEND)
				perr_tok(p, e, "expected end of print statement, got '%s'", tokdesc(e));
			nexttok(p);
			nl_push(p, body, n);
		} else if (k->kind == K_BBEGIN) {
			nexttok(p);
			struct tok *w = cur(p);
			if (ends && w->kind == K_NAME)
				for (int i = 0; ends[i]; i++)
					if (!strcmp(w->s, ends[i])) {
						nexttok(p);
						p->depth--;
						return ends[i];
					}
			nl_push(p, body, parse_stmt(p));
		} else {
			perr_tok(p, k, "unexpected '%s'", tokdesc(k));
		}
	}
	p->depth--;
	return NULL;
}

/* Unknown filters and tests: jinja2 refuses them at compile time, except inside
 * an if statement or an inline if ("soft frames"), where they fail only when
 * evaluated.  Loops, macros and set blocks open a hard frame again. */
static void check_unknown(struct parser *p, const struct node *n, int soft, int depth);

static void check_list(struct parser *p, const struct nlist *l, int soft, int depth)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->v[i])
			check_unknown(p, l->v[i], soft, depth + 1);
}

static void check_unknown(struct parser *p, const struct node *n, int soft, int depth)
{
	if (!n || depth > 4 * MAX_DEPTH)
		return;
	if ((n->kind == E_FILTER || n->kind == E_TEST) && n->fid < 0 && !soft) {
		lq_fail(p->err, LQ_ERR_UNSUPPORTED, "chat template line %d column %d: no %s named '%s' (not supported)",
			n->line, n->col, n->kind == E_FILTER ? "filter" : "test", n->name);
		p->code = LQ_ERR_UNSUPPORTED;
		longjmp(p->jb, 1);
	}
	switch (n->kind) {
	case N_IF:
		soft = 1;
		break;
	case E_COND:
		soft = 1;
		break;
	case N_FOR:
		check_unknown(p, n->a, soft, depth + 1);
		check_unknown(p, n->b, 0, depth + 1);
		check_list(p, &n->body, 0, depth);
		check_list(p, &n->els, 0, depth);
		return;
	case N_MACRO:
	case N_SETBLOCK:
	case N_BLOCK:
	case N_WITH:
		soft = 0;
		break;
	default:
		break;
	}
	check_unknown(p, n->a, soft, depth + 1);
	check_unknown(p, n->b, soft, depth + 1);
	check_unknown(p, n->c, soft, depth + 1);
	check_list(p, &n->body, soft, depth);
	check_list(p, &n->els, soft, depth);
	check_list(p, &n->kwv, soft, depth);
}

int lq_template_compile(struct lq_template **out, const char *src, size_t len, struct lq_error *err)
{
	*out = NULL;
	if (!src && len)
		return lq_fail(err, LQ_ERR_INVALID, "chat template: NULL source");
	struct lq_template *t = calloc(1, sizeof *t);
	if (!t)
		return lq_fail(err, LQ_ERR_NOMEM, "chat template: out of memory");
	struct parser *p = calloc(1, sizeof *p);
	if (!p) {
		free(t);
		return lq_fail(err, LQ_ERR_NOMEM, "chat template: out of memory");
	}
	p->t = t;
	p->a = &t->arena;
	p->err = err;
	if (setjmp(p->jb)) {
		int code = p->code;
		free(p->toks);
		free(p);
		lq_template_free(t);
		return code;
	}
	/* normalize newlines (\r\n, \r -> \n) and drop one trailing newline */
	char *s = palloc(p, len + 1);
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (src[i] == '\r') {
			s[n++] = '\n';
			if (i + 1 < len && src[i + 1] == '\n')
				i++;
		} else {
			s[n++] = src[i];
		}
	}
	if (n && s[n - 1] == '\n')
		n--;
	s[n] = 0;
	p->src = s;
	p->len = n;
	p->lc_line = p->lc_col = 1;
	lex(p);
	parse_body(p, &t->root, NULL, NULL, NULL);
	check_list(p, &t->root, 0, 0);
	free(p->toks);
	free(p);
	*out = t;
	return LQ_OK;
}

void lq_template_free(struct lq_template *t)
{
	if (!t)
		return;
	lq_arena_free(&t->arena);
	free(t);
}

/* ================================================================ evaluation */

struct var {
	const char *name;
	struct val *v;
	struct var *next;
};

struct scope {
	struct var *vars;
	struct scope *parent;
};

struct sb {
	char *p;
	size_t n, cap;
};

struct ctx {
	struct lq_arena a;
	jmp_buf jb;
	struct lq_error *err;
	int code;
	size_t max_out;
	uint64_t steps;
	size_t mem;
	int depth;
	int edepth;
	int macro_depth;
	int line;
	int brk;                /* 1: break, 2: continue pending */
	time_t now;
	struct scope *globals;
	json_t *held;           /* parsed input being converted (freed on error) */
};

/* builtin functions and methods */
enum {
	G_NAMESPACE, G_RAISE, G_STRFTIME, G_RANGE, G_DICT,
	M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_STARTSWITH, M_ENDSWITH, M_UPPER,
	M_LOWER, M_TITLE, M_CAPITALIZE, M_REPLACE, M_FIND, M_RFIND, M_COUNT, M_JOIN,
	M_SPLITLINES, M_ISDIGIT, M_ISALPHA, M_ISSPACE, M_ISUPPER, M_ISLOWER, M_ISALNUM,
	M_GET, M_ITEMS, M_KEYS, M_VALUES, M_CYCLE, M_LCOUNT, M_LINDEX
};
static const struct { const char *name; int id; } str_methods[] = {
	{ "strip", M_STRIP }, { "lstrip", M_LSTRIP }, { "rstrip", M_RSTRIP }, { "split", M_SPLIT },
	{ "rsplit", M_RSPLIT }, { "startswith", M_STARTSWITH }, { "endswith", M_ENDSWITH },
	{ "upper", M_UPPER }, { "lower", M_LOWER }, { "title", M_TITLE },
	{ "capitalize", M_CAPITALIZE }, { "replace", M_REPLACE }, { "find", M_FIND },
	{ "rfind", M_RFIND }, { "count", M_COUNT }, { "join", M_JOIN },
	{ "splitlines", M_SPLITLINES }, { "isdigit", M_ISDIGIT }, { "isalpha", M_ISALPHA },
	{ "isspace", M_ISSPACE }, { "isupper", M_ISUPPER }, { "islower", M_ISLOWER },
	{ "isalnum", M_ISALNUM }, { NULL, 0 }
};

__attribute__((noreturn, format(printf, 3, 4)))
static void rerr(struct ctx *c, int code, const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c->line > 0)
		lq_fail(c->err, code, "chat template line %d: %s", c->line, msg);
	else
		lq_fail(c->err, code, "chat template: %s", msg);
	c->code = code;
	longjmp(c->jb, 1);
}

static void *ralloc(struct ctx *c, size_t n)
{
	if (n > MAX_MEMORY || c->mem + n > MAX_MEMORY)
		rerr(c, LQ_ERR_INVALID, "rendering needs more than %u MiB of memory", MAX_MEMORY >> 20);
	c->mem += n;
	void *r = lq_arena_alloc(&c->a, n ? n : 1);
	if (!r)
		rerr(c, LQ_ERR_NOMEM, "out of memory");
	return r;
}

static void step(struct ctx *c)
{
	if (++c->steps > MAX_STEPS)
		rerr(c, LQ_ERR_INVALID, "rendering takes more than %u steps (runaway loop?)", MAX_STEPS);
}

static void sb_put(struct ctx *c, struct sb *b, const char *s, size_t n)
{
	if (!n)
		return;
	if (n > c->max_out || b->n + n > c->max_out)
		rerr(c, LQ_ERR_INVALID, "output larger than the limit of %zu bytes", c->max_out);
	if (b->n + n > b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 64;
		while (nc < b->n + n)
			nc *= 2;
		char *np = ralloc(c, nc);
		if (b->n)
			memcpy(np, b->p, b->n);
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

static void sb_puts(struct ctx *c, struct sb *b, const char *s) { sb_put(c, b, s, strlen(s)); }

static void sb_printf(struct ctx *c, struct sb *b, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sb_printf(struct ctx *c, struct sb *b, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (k > 0)
		sb_put(c, b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* ------------------------------------------------------------ constructors */

static struct val V_NONE_ = { .t = T_NONE };
static struct val V_TRUE_ = { .t = T_BOOL, .u.b = 1 };
static struct val V_FALSE_ = { .t = T_BOOL, .u.b = 0 };
#define VNONE (&V_NONE_)
#define VBOOL(x) ((x) ? &V_TRUE_ : &V_FALSE_)

static struct val *mkv(struct ctx *c, enum vtype t)
{
	struct val *v = ralloc(c, sizeof *v);
	v->t = t;
	return v;
}

static struct val *mkundef(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static struct val *mkundef(struct ctx *c, const char *fmt, ...)
{
	char tmp[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	struct val *v = mkv(c, T_UNDEF);
	size_t n = strlen(tmp);
	char *h = ralloc(c, n + 1);
	memcpy(h, tmp, n + 1);
	v->hint = h;
	return v;
}

static struct val *mkint(struct ctx *c, int64_t i)
{
	struct val *v = mkv(c, T_INT);
	v->u.i = i;
	return v;
}

static struct val *mkfloat(struct ctx *c, double f)
{
	struct val *v = mkv(c, T_FLOAT);
	v->u.f = f;
	return v;
}

/* string referencing s (not copied: s must live as long as the rendering) */
static struct val *mkstr_ref(struct ctx *c, const char *s, size_t n)
{
	struct val *v = mkv(c, T_STR);
	v->u.s.s = s;
	v->u.s.n = n;
	return v;
}

static struct val *mkstr(struct ctx *c, const char *s, size_t n)
{
	char *p = ralloc(c, n + 1);
	if (n)
		memcpy(p, s, n);
	p[n] = 0;
	return mkstr_ref(c, p, n);
}

static struct val *sb_val(struct ctx *c, struct sb *b) { return mkstr_ref(c, b->p ? b->p : "", b->n); }

static struct val *mklist(struct ctx *c, size_t n)
{
	struct val *v = mkv(c, T_LIST);
	v->u.l.v = ralloc(c, (n ? n : 1) * sizeof *v->u.l.v);
	v->u.l.n = n;
	return v;
}

static struct val *mkdict(struct ctx *c, enum vtype t)
{
	struct val *v = mkv(c, t);
	v->u.d = ralloc(c, sizeof *v->u.d);
	return v;
}

static struct val *mkfunc(struct ctx *c, int id, struct val *self)
{
	struct val *v = mkv(c, T_FUNC);
	v->u.fn.id = id;
	v->u.fn.self = self;
	return v;
}

/* list builder */
struct vb {
	struct val **v;
	size_t n, cap;
};

static void vb_push(struct ctx *c, struct vb *b, struct val *x)
{
	if (b->n == b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 8;
		struct val **nv = ralloc(c, nc * sizeof *nv);
		if (b->n)
			memcpy(nv, b->v, b->n * sizeof *nv);
		b->v = nv;
		b->cap = nc;
	}
	b->v[b->n++] = x;
}

static struct val *vb_list(struct ctx *c, struct vb *b)
{
	struct val *v = mkv(c, T_LIST);
	v->u.l.v = b->v;
	v->u.l.n = b->n;
	return v;
}

static int streq(const struct val *v, const char *s)
{
	size_t n = strlen(s);
	return v->t == T_STR && v->u.s.n == n && memcmp(v->u.s.s, s, n) == 0;
}

/* ------------------------------------------------------------ equality */

static int val_eq(struct ctx *c, const struct val *a, const struct val *b, int depth);

static int is_num(const struct val *v) { return v->t == T_BOOL || v->t == T_INT || v->t == T_FLOAT; }
static double numf(const struct val *v) { return v->t == T_FLOAT ? v->u.f : v->t == T_INT ? (double)v->u.i : v->u.b; }
static int64_t numi(const struct val *v) { return v->t == T_INT ? v->u.i : v->u.b; }

static struct val *dict_get(struct ctx *c, const struct dict *d, const struct val *k)
{
	for (size_t i = 0; i < d->n; i++) {
		const struct val *x = d->k[i];
		if (k->t == T_STR && x->t == T_STR) {
			if (x->u.s.n == k->u.s.n && memcmp(x->u.s.s, k->u.s.s, k->u.s.n) == 0)
				return d->v[i];
		} else if (val_eq(c, x, k, 0)) {
			return d->v[i];
		}
	}
	return NULL;
}

static struct val *dict_gets(struct ctx *c, const struct dict *d, const char *s)
{
	struct val k = { .t = T_STR };
	k.u.s.s = s;
	k.u.s.n = strlen(s);
	return dict_get(c, d, &k);
}

static void dict_set(struct ctx *c, struct dict *d, struct val *k, struct val *v)
{
	for (size_t i = 0; i < d->n; i++)
		if (val_eq(c, d->k[i], k, 0)) {
			d->v[i] = v;
			return;
		}
	if (d->n == d->cap) {
		size_t nc = d->cap ? d->cap * 2 : 8;
		struct val **nk = ralloc(c, nc * sizeof *nk), **nv = ralloc(c, nc * sizeof *nv);
		if (d->n) {
			memcpy(nk, d->k, d->n * sizeof *nk);
			memcpy(nv, d->v, d->n * sizeof *nv);
		}
		d->k = nk;
		d->v = nv;
		d->cap = nc;
	}
	d->k[d->n] = k;
	d->v[d->n] = v;
	d->n++;
}

static int val_eq(struct ctx *c, const struct val *a, const struct val *b, int depth)
{
	if (depth > MAX_DEPTH)
		rerr(c, LQ_ERR_INVALID, "values nested too deeply to compare");
	if (is_num(a) && is_num(b)) {
		if (a->t == T_FLOAT || b->t == T_FLOAT)
			return numf(a) == numf(b);
		return numi(a) == numi(b);
	}
	if (a->t != b->t)
		return 0;
	switch (a->t) {
	case T_UNDEF: case T_NONE: return 1;
	case T_STR: return a->u.s.n == b->u.s.n && memcmp(a->u.s.s, b->u.s.s, a->u.s.n) == 0;
	case T_LIST:
		if (a->kind != b->kind || (a->kind == VK_GEN && a != b))
			return 0;
		if (a->tuple != b->tuple || a->u.l.n != b->u.l.n)
			return 0;
		for (size_t i = 0; i < a->u.l.n; i++)
			if (!val_eq(c, a->u.l.v[i], b->u.l.v[i], depth + 1))
				return 0;
		return 1;
	case T_DICT:
		if (a->u.d->n != b->u.d->n)
			return 0;
		for (size_t i = 0; i < a->u.d->n; i++) {
			struct val *o = dict_get(c, b->u.d, a->u.d->k[i]);
			if (!o || !val_eq(c, a->u.d->v[i], o, depth + 1))
				return 0;
		}
		return 1;
	case T_NS: return a->u.d == b->u.d;
	case T_LOOP: return a->u.loop == b->u.loop;
	case T_MACRO: return a->u.m.def == b->u.m.def;
	case T_FUNC: return a->u.fn.id == b->u.fn.id && a->u.fn.self == b->u.fn.self;
	default: return 0;
	}
}

static const char *type_name(const struct val *v)
{
	switch (v->t) {
	case T_UNDEF: return "Undefined";
	case T_NONE: return "NoneType";
	case T_BOOL: return "bool";
	case T_INT: return "int";
	case T_FLOAT: return "float";
	case T_STR: return "str";
	case T_LIST:
		switch (v->kind) {
		case VK_GEN: return "generator";
		case VK_ITEMS: return "dict_items";
		case VK_KEYS: return "dict_keys";
		case VK_VALUES: return "dict_values";
		default: return v->tuple ? "tuple" : "list";
		}
	case T_DICT: return "dict";
	case T_NS: return "Namespace";
	case T_LOOP: return "LoopContext";
	case T_MACRO: return "Macro";
	default: return "builtin_function_or_method";
	}
}

static int truthy(const struct val *v)
{
	switch (v->t) {
	case T_UNDEF: case T_NONE: return 0;
	case T_BOOL: return v->u.b;
	case T_INT: return v->u.i != 0;
	case T_FLOAT: return v->u.f != 0;
	case T_STR: return v->u.s.n != 0;
	case T_LIST: return v->kind == VK_GEN || v->u.l.n != 0;
	case T_DICT: return v->u.d->n != 0;
	default: return 1;
	}
}

/* ------------------------------------------------------------ str() and repr() */

/* Python's repr() of a float */
static void fmt_float(double x, char *out, size_t cap)
{
	if (isnan(x)) { snprintf(out, cap, "nan"); return; }
	if (isinf(x)) { snprintf(out, cap, x < 0 ? "-inf" : "inf"); return; }
	char buf[64];
	int prec;
	for (prec = 1; prec <= 17; prec++) {
		snprintf(buf, sizeof buf, "%.*e", prec - 1, x);
		if (strtod(buf, NULL) == x)
			break;
	}
	/* buf = [-]d[.ddd]e[+-]XX */
	const char *s = buf;
	int neg = 0;
	if (*s == '-') { neg = 1; s++; }
	char digits[32];
	int nd = 0;
	for (; *s && *s != 'e'; s++)
		if (*s >= '0' && *s <= '9')
			digits[nd++] = *s;
	int e = atoi(s + 1);
	while (nd > 1 && digits[nd - 1] == '0')
		nd--;
	char *o = out;
	size_t left = cap;
#define PUTC(ch) do { if (left > 1) { *o++ = (ch); left--; } } while (0)
	if (neg) PUTC('-');
	if (e < -4 || e >= 16) {
		PUTC(digits[0]);
		if (nd > 1) {
			PUTC('.');
			for (int i = 1; i < nd; i++) PUTC(digits[i]);
		}
		char eb[16];
		snprintf(eb, sizeof eb, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
		for (char *q = eb; *q; q++) PUTC(*q);
	} else if (e < 0) {
		PUTC('0'); PUTC('.');
		for (int i = 0; i < -e - 1; i++) PUTC('0');
		for (int i = 0; i < nd; i++) PUTC(digits[i]);
	} else {
		for (int i = 0; i <= e; i++) PUTC(i < nd ? digits[i] : '0');
		PUTC('.');
		if (nd > e + 1)
			for (int i = e + 1; i < nd; i++) PUTC(digits[i]);
		else
			PUTC('0');
	}
	*o = 0;
#undef PUTC
}

static int py_printable(int32_t cp)
{
	if (cp == ' ')
		return 1;
	if (cp < 0x20 || cp == 0x7f)
		return 0;
	if (cp < 0x7f)
		return 1;
	utf8proc_category_t cat = utf8proc_category(cp);
	switch (cat) {
	case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS:
	case UTF8PROC_CATEGORY_CO: case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZL:
	case UTF8PROC_CATEGORY_ZP: case UTF8PROC_CATEGORY_ZS:
		return 0;
	default:
		return 1;
	}
}

static void repr_str(struct ctx *c, struct sb *b, const char *s, size_t n)
{
	int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
	char q = sq && !dq ? '"' : '\'';
	sb_put(c, b, &q, 1);
	size_t i = 0;
	while (i < n) {
		int32_t cp;
		size_t k = u8dec(s + i, n - i, &cp);
		if (cp == q || cp == '\\') {
			char e[2] = { '\\', (char)cp };
			sb_put(c, b, e, 2);
		} else if (cp == '\n') {
			sb_puts(c, b, "\\n");
		} else if (cp == '\r') {
			sb_puts(c, b, "\\r");
		} else if (cp == '\t') {
			sb_puts(c, b, "\\t");
		} else if (!py_printable(cp)) {
			if (cp < 0x100)
				sb_printf(c, b, "\\x%02x", (unsigned)cp);
			else if (cp < 0x10000)
				sb_printf(c, b, "\\u%04x", (unsigned)cp);
			else
				sb_printf(c, b, "\\U%08x", (unsigned)cp);
		} else {
			sb_put(c, b, s + i, k);
		}
		i += k;
	}
	sb_put(c, b, &q, 1);
}

static void to_str(struct ctx *c, struct sb *b, const struct val *v, int depth);

static void repr(struct ctx *c, struct sb *b, const struct val *v, int depth)
{
	if (depth > MAX_DEPTH)
		rerr(c, LQ_ERR_INVALID, "values nested too deeply to print");
	switch (v->t) {
	case T_STR:
		repr_str(c, b, v->u.s.s, v->u.s.n);
		break;
	case T_UNDEF:
		sb_puts(c, b, "Undefined");
		break;
	case T_LIST:
		if (v->kind == VK_GEN)
			rerr(c, LQ_ERR_UNSUPPORTED, "cannot print a generator object (jinja2 prints its memory address); add |list");
		if (v->kind != VK_LIST)
			sb_puts(c, b, v->kind == VK_ITEMS ? "dict_items(" : v->kind == VK_KEYS ? "dict_keys(" : "dict_values(");
		sb_puts(c, b, v->tuple ? "(" : "[");
		for (size_t i = 0; i < v->u.l.n; i++) {
			if (i)
				sb_puts(c, b, ", ");
			repr(c, b, v->u.l.v[i], depth + 1);
		}
		if (v->tuple && v->u.l.n == 1)
			sb_puts(c, b, ",");
		sb_puts(c, b, v->tuple ? ")" : "]");
		if (v->kind != VK_LIST)
			sb_puts(c, b, ")");
		break;
	case T_DICT:
	case T_NS:
		if (v->t == T_NS)
			sb_puts(c, b, "<Namespace ");
		sb_puts(c, b, "{");
		for (size_t i = 0; i < v->u.d->n; i++) {
			if (i)
				sb_puts(c, b, ", ");
			repr(c, b, v->u.d->k[i], depth + 1);
			sb_puts(c, b, ": ");
			repr(c, b, v->u.d->v[i], depth + 1);
		}
		sb_puts(c, b, "}");
		if (v->t == T_NS)
			sb_puts(c, b, ">");
		break;
	default:
		to_str(c, b, v, depth);
	}
}

static void to_str(struct ctx *c, struct sb *b, const struct val *v, int depth)
{
	char tmp[64];
	switch (v->t) {
	case T_UNDEF: break;
	case T_NONE: sb_puts(c, b, "None"); break;
	case T_BOOL: sb_puts(c, b, v->u.b ? "True" : "False"); break;
	case T_INT: sb_printf(c, b, "%lld", (long long)v->u.i); break;
	case T_FLOAT: fmt_float(v->u.f, tmp, sizeof tmp); sb_puts(c, b, tmp); break;
	case T_STR: sb_put(c, b, v->u.s.s, v->u.s.n); break;
	case T_LOOP: sb_puts(c, b, "<LoopContext>"); break;
	case T_MACRO: sb_puts(c, b, "<Macro>"); break;
	case T_FUNC: sb_puts(c, b, "<built-in function>"); break;
	default: repr(c, b, v, depth); break;
	}
}

/* str(v) as a value (strings returned as is) */
static struct val *str_of(struct ctx *c, struct val *v)
{
	if (v->t == T_STR)
		return v;
	struct sb b = { 0 };
	to_str(c, &b, v, 0);
	return sb_val(c, &b);
}

/* ------------------------------------------------------------ JSON */

static void json_str(struct ctx *c, struct sb *b, const char *s, size_t n, int ascii)
{
	sb_puts(c, b, "\"");
	size_t i = 0;
	while (i < n) {
		int32_t cp;
		size_t k = u8dec(s + i, n - i, &cp);
		switch (cp) {
		case '"': sb_puts(c, b, "\\\""); break;
		case '\\': sb_puts(c, b, "\\\\"); break;
		case '\n': sb_puts(c, b, "\\n"); break;
		case '\r': sb_puts(c, b, "\\r"); break;
		case '\t': sb_puts(c, b, "\\t"); break;
		case '\b': sb_puts(c, b, "\\b"); break;
		case '\f': sb_puts(c, b, "\\f"); break;
		default:
			if (cp < 0x20) {
				sb_printf(c, b, "\\u%04x", (unsigned)cp);
			} else if (ascii && cp > 0x7e) {
				if (cp >= 0x10000) {
					uint32_t x = (uint32_t)cp - 0x10000;
					sb_printf(c, b, "\\u%04x\\u%04x", 0xD800 + (x >> 10), 0xDC00 + (x & 0x3FF));
				} else {
					sb_printf(c, b, "\\u%04x", (unsigned)cp);
				}
			} else {
				sb_put(c, b, s + i, k);
			}
		}
		i += k;
	}
	sb_puts(c, b, "\"");
}

struct jopts {
	int ascii, sort;
	const char *indent;   /* NULL: no indent */
	size_t indent_n;
	const char *isep, *ksep;
	size_t isep_n, ksep_n;
};

static void json_nl(struct ctx *c, struct sb *b, const struct jopts *o, int level)
{
	sb_puts(c, b, "\n");
	for (int i = 0; i < level; i++)
		sb_put(c, b, o->indent, o->indent_n);
}

static int key_cmp(const struct val *a, const struct val *b)
{
	size_t n = a->u.s.n < b->u.s.n ? a->u.s.n : b->u.s.n;
	int r = memcmp(a->u.s.s, b->u.s.s, n);
	return r ? r : (a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n);
}

static void to_json(struct ctx *c, struct sb *b, const struct val *v, const struct jopts *o, int level)
{
	char tmp[64];
	if (level > MAX_DEPTH)
		rerr(c, LQ_ERR_INVALID, "tojson: value nested too deeply");
	switch (v->t) {
	case T_NONE: sb_puts(c, b, "null"); break;
	case T_BOOL: sb_puts(c, b, v->u.b ? "true" : "false"); break;
	case T_INT: sb_printf(c, b, "%lld", (long long)v->u.i); break;
	case T_FLOAT:
		if (isnan(v->u.f))
			sb_puts(c, b, "NaN");
		else if (isinf(v->u.f))
			sb_puts(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
		else {
			fmt_float(v->u.f, tmp, sizeof tmp);
			sb_puts(c, b, tmp);
		}
		break;
	case T_STR: json_str(c, b, v->u.s.s, v->u.s.n, o->ascii); break;
	case T_LIST:
		if (v->kind != VK_LIST)
			rerr(c, LQ_ERR_INVALID, "tojson: object of type %s is not JSON serializable", type_name(v));
		if (!v->u.l.n) {
			sb_puts(c, b, "[]");
			break;
		}
		sb_puts(c, b, "[");
		for (size_t i = 0; i < v->u.l.n; i++) {
			if (i)
				sb_put(c, b, o->isep, o->isep_n);
			if (o->indent)
				json_nl(c, b, o, level + 1);
			to_json(c, b, v->u.l.v[i], o, level + 1);
		}
		if (o->indent)
			json_nl(c, b, o, level);
		sb_puts(c, b, "]");
		break;
	case T_DICT: {
		size_t n = v->u.d->n;
		if (!n) {
			sb_puts(c, b, "{}");
			break;
		}
		size_t *ord = ralloc(c, n * sizeof *ord);
		for (size_t i = 0; i < n; i++)
			ord[i] = i;
		/* keys as strings (Python converts int/float/bool/None keys) */
		struct val **ks = ralloc(c, n * sizeof *ks);
		for (size_t i = 0; i < n; i++) {
			struct val *k = v->u.d->k[i];
			if (k->t == T_STR) {
				ks[i] = k;
			} else if (k->t == T_NONE || k->t == T_BOOL || k->t == T_INT || k->t == T_FLOAT) {
				struct sb kb = { 0 };
				to_json(c, &kb, k, o, level + 1);
				ks[i] = sb_val(c, &kb);
			} else {
				rerr(c, LQ_ERR_INVALID, "tojson: keys must be str, int, float, bool or None, not %s",
				     type_name(k));
			}
		}
		if (o->sort) /* insertion sort: stable, dicts are small */
			for (size_t i = 1; i < n; i++)
				for (size_t j = i; j > 0 && key_cmp(ks[ord[j - 1]], ks[ord[j]]) > 0; j--) {
					size_t t = ord[j];
					ord[j] = ord[j - 1];
					ord[j - 1] = t;
				}
		sb_puts(c, b, "{");
		for (size_t x = 0; x < n; x++) {
			size_t i = ord[x];
			if (x)
				sb_put(c, b, o->isep, o->isep_n);
			if (o->indent)
				json_nl(c, b, o, level + 1);
			json_str(c, b, ks[i]->u.s.s, ks[i]->u.s.n, o->ascii);
			sb_put(c, b, o->ksep, o->ksep_n);
			to_json(c, b, v->u.d->v[i], o, level + 1);
		}
		if (o->indent)
			json_nl(c, b, o, level);
		sb_puts(c, b, "}");
		break;
	}
	default:
		rerr(c, LQ_ERR_INVALID, "tojson: object of type %s is not JSON serializable", type_name(v));
	}
}

static struct val *from_json(struct ctx *c, json_t *j, int depth)
{
	if (depth > MAX_DEPTH)
		rerr(c, LQ_ERR_INVALID, "input JSON nested too deeply");
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		struct val *d = mkdict(c, T_DICT);
		const char *k;
		json_t *x;
		json_object_foreach(j, k, x) {
			dict_set(c, d->u.d, mkstr(c, k, strlen(k)), from_json(c, x, depth + 1));
		}
		return d;
	}
	case JSON_ARRAY: {
		size_t n = json_array_size(j);
		struct val *l = mklist(c, n);
		for (size_t i = 0; i < n; i++)
			l->u.l.v[i] = from_json(c, json_array_get(j, i), depth + 1);
		return l;
	}
	case JSON_STRING: return mkstr(c, json_string_value(j), json_string_length(j));
	case JSON_INTEGER: return mkint(c, (int64_t)json_integer_value(j));
	case JSON_REAL: return mkfloat(c, json_real_value(j));
	case JSON_TRUE: return VBOOL(1);
	case JSON_FALSE: return VBOOL(0);
	default: return VNONE;
	}
}

static json_t *parse_json(struct ctx *c, const char *text, size_t len, const char *what)
{
	json_error_t je;
	json_t *j = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
	if (!j)
		rerr(c, LQ_ERR_INVALID, "%s: invalid JSON at line %d column %d: %s", what, je.line,
		     je.column, je.text);
	c->held = j;
	return j;
}

/* ------------------------------------------------------------ strings */

static size_t cp_count(const char *s, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < n;) {
		int32_t cp;
		i += u8dec(s + i, n - i, &cp);
		k++;
	}
	return k;
}

/* byte offsets of each code point, plus the end: count + 1 entries */
static size_t *cp_offsets(struct ctx *c, const char *s, size_t n, size_t *count)
{
	size_t k = cp_count(s, n);
	size_t *o = ralloc(c, (k + 1) * sizeof *o);
	size_t i = 0, j = 0;
	while (i < n) {
		o[j++] = i;
		int32_t cp;
		i += u8dec(s + i, n - i, &cp);
	}
	o[j] = n;
	*count = k;
	return o;
}

__attribute__((noreturn))
static void undef_fail(struct ctx *c, const struct val *u, const char *fallback)
{
	rerr(c, LQ_ERR_INVALID, "%s", u->hint ? u->hint : fallback ? fallback : "value is undefined");
}

static const char *obj_desc(const struct val *v)
{
	switch (v->t) {
	case T_NONE: return "None";
	case T_DICT: return "'dict object'";
	case T_LIST: return v->tuple ? "'tuple object'" : "'list object'";
	case T_STR: return "'str object'";
	case T_INT: return "'int object'";
	case T_FLOAT: return "'float object'";
	case T_BOOL: return "'bool object'";
	case T_NS: return "'Namespace object'";
	default: return "'object'";
	}
}

static struct val *items_of(struct ctx *c, const struct val *v, size_t *n);

static struct val *loop_attr(struct ctx *c, struct val *lv, const char *name)
{
	struct loopstate *L = lv->u.loop;
	int64_t i = (int64_t)L->i, n = (int64_t)L->n;
	if (!strcmp(name, "index")) return mkint(c, i + 1);
	if (!strcmp(name, "index0")) return mkint(c, i);
	if (!strcmp(name, "revindex")) return mkint(c, n - i);
	if (!strcmp(name, "revindex0")) return mkint(c, n - i - 1);
	if (!strcmp(name, "first")) return VBOOL(i == 0);
	if (!strcmp(name, "last")) return VBOOL(i == n - 1);
	if (!strcmp(name, "length")) return mkint(c, n);
	if (!strcmp(name, "depth")) return mkint(c, L->depth);
	if (!strcmp(name, "depth0")) return mkint(c, L->depth - 1);
	if (!strcmp(name, "previtem"))
		return i > 0 ? L->items[i - 1] : mkundef(c, "there is no previous item");
	if (!strcmp(name, "nextitem"))
		return i + 1 < n ? L->items[i + 1] : mkundef(c, "there is no next item");
	if (!strcmp(name, "cycle")) return mkfunc(c, M_CYCLE, lv);
	return mkundef(c, "'LoopContext object' has no attribute '%s'", name);
}

static struct val *get_attr(struct ctx *c, struct val *o, const char *name)
{
	switch (o->t) {
	case T_UNDEF:
		undef_fail(c, o, NULL);
	case T_DICT: {
		static const char *const dm[] = { "get", "items", "keys", "values" };
		static const int ids[] = { M_GET, M_ITEMS, M_KEYS, M_VALUES };
		for (int i = 0; i < 4; i++)
			if (!strcmp(name, dm[i]))
				return mkfunc(c, ids[i], o);
		struct val *r = dict_gets(c, o->u.d, name);
		return r ? r : mkundef(c, "'dict object' has no attribute '%s'", name);
	}
	case T_NS: {
		struct val *r = dict_gets(c, o->u.d, name);
		return r ? r : mkundef(c, "'Namespace object' has no attribute '%s'", name);
	}
	case T_STR:
		for (int i = 0; str_methods[i].name; i++)
			if (!strcmp(name, str_methods[i].name))
				return mkfunc(c, str_methods[i].id, o);
		if (!strcmp(name, "format") || !strcmp(name, "format_map") || !strcmp(name, "zfill") ||
		    !strcmp(name, "center") || !strcmp(name, "ljust") || !strcmp(name, "rjust") ||
		    !strcmp(name, "partition") || !strcmp(name, "rpartition") || !strcmp(name, "index") ||
		    !strcmp(name, "rindex") || !strcmp(name, "removeprefix") || !strcmp(name, "removesuffix") ||
		    !strcmp(name, "expandtabs") || !strcmp(name, "swapcase") || !strcmp(name, "casefold"))
			return mkundef(c, "the string method '%s' is not supported by this chat template engine", name);
		break;
	case T_LOOP:
		return loop_attr(c, o, name);
	case T_LIST:
		if (o->kind == VK_LIST && !strcmp(name, "count"))
			return mkfunc(c, M_LCOUNT, o);
		if (o->kind == VK_LIST && !strcmp(name, "index"))
			return mkfunc(c, M_LINDEX, o);
		break;
	default:
		break;
	}
	return mkundef(c, "%s has no attribute '%s'", obj_desc(o), name);
}

static struct val *get_item(struct ctx *c, struct val *o, struct val *k)
{
	char kb[64];
	switch (o->t) {
	case T_UNDEF:
		undef_fail(c, o, NULL);
	case T_DICT: {
		struct val *r = dict_get(c, o->u.d, k);
		if (r)
			return r;
		if (k->t == T_STR) {
			char *nm = ralloc(c, k->u.s.n + 1);
			memcpy(nm, k->u.s.s, k->u.s.n);
			return get_attr(c, o, nm);
		}
		break;
	}
	case T_LIST:
	case T_STR:
		if (o->t == T_LIST && o->kind == VK_GEN)
			return mkundef(c, "'generator' object is not subscriptable");
		if (o->t == T_LIST && o->kind != VK_LIST)
			rerr(c, LQ_ERR_INVALID, "'%s' object is not subscriptable", type_name(o));
		if (k->t == T_INT || k->t == T_BOOL) {
			int64_t i = numi(k);
			if (o->t == T_LIST) {
				int64_t n = (int64_t)o->u.l.n;
				if (i < 0)
					i += n;
				if (i >= 0 && i < n)
					return o->u.l.v[i];
			} else {
				size_t cnt;
				size_t *off = cp_offsets(c, o->u.s.s, o->u.s.n, &cnt);
				int64_t n = (int64_t)cnt;
				if (i < 0)
					i += n;
				if (i >= 0 && i < n)
					return mkstr_ref(c, o->u.s.s + off[i], off[i + 1] - off[i]);
			}
			return mkundef(c, "%s has no element %lld", obj_desc(o), (long long)numi(k));
		}
		/* fall through: a string key is an attribute (e.g. a method) */
		/* fallthrough */
	default:
		if (k->t == T_STR && (o->t == T_STR || o->t == T_LIST || o->t == T_NS || o->t == T_LOOP)) {
			char *nm = ralloc(c, k->u.s.n + 1);
			memcpy(nm, k->u.s.s, k->u.s.n);
			return get_attr(c, o, nm);
		}
		break;
	}
	struct sb b = { 0 };
	repr(c, &b, k, 0);
	snprintf(kb, sizeof kb, "%.*s", (int)(b.n < 60 ? b.n : 60), b.p ? b.p : "");
	return mkundef(c, "%s has no element %s", obj_desc(o), kb);
}

/* The items of an iterable as an array (no copy for lists). */
static struct val **iter_items(struct ctx *c, struct val *v, size_t *n)
{
	switch (v->t) {
	case T_UNDEF:
		*n = 0;
		return NULL;
	case T_LIST:
		if (v->kind == VK_GEN) {
			/* a generator: a deferred error fires now; items are taken once */
			if (v->hint)
				rerr(c, LQ_ERR_INVALID, "%s", v->hint);
			size_t from = v->consumed;
			v->consumed = v->u.l.n;
			*n = v->u.l.n - from;
			return *n ? v->u.l.v + from : NULL;
		}
		*n = v->u.l.n;
		return v->u.l.v;
	case T_DICT:
		*n = v->u.d->n;
		return v->u.d->k;
	case T_STR: {
		size_t cnt;
		size_t *off = cp_offsets(c, v->u.s.s, v->u.s.n, &cnt);
		struct val **r = ralloc(c, (cnt ? cnt : 1) * sizeof *r);
		for (size_t i = 0; i < cnt; i++)
			r[i] = mkstr_ref(c, v->u.s.s + off[i], off[i + 1] - off[i]);
		*n = cnt;
		return r;
	}
	default:
		rerr(c, LQ_ERR_INVALID, "'%s' object is not iterable", type_name(v));
	}
}

static struct val *make_tuple2(struct ctx *c, struct val *a, struct val *b)
{
	struct val *t = mklist(c, 2);
	t->tuple = 1;
	t->u.l.v[0] = a;
	t->u.l.v[1] = b;
	return t;
}

/* dict items as a list of (key, value) tuples */
static struct val *items_of(struct ctx *c, const struct val *v, size_t *n)
{
	struct val *l = mklist(c, v->u.d->n);
	for (size_t i = 0; i < v->u.d->n; i++)
		l->u.l.v[i] = make_tuple2(c, v->u.d->k[i], v->u.d->v[i]);
	if (n)
		*n = v->u.d->n;
	return l;
}

/* Python slice indices */
static void slice_idx(struct ctx *c, int64_t len, struct val *sv, struct val *ev, struct val *stv,
		      int64_t *start, int64_t *stop, int64_t *stepv)
{
	int64_t st = 1;
	if (stv && stv->t != T_NONE) {
		if (stv->t != T_INT && stv->t != T_BOOL)
			rerr(c, LQ_ERR_INVALID, "slice indices must be integers or None");
		st = numi(stv);
	}
	if (st == 0)
		rerr(c, LQ_ERR_INVALID, "slice step cannot be zero");
	int64_t a, b;
	if (!sv || sv->t == T_NONE) {
		a = st < 0 ? len - 1 : 0;
	} else {
		if (sv->t != T_INT && sv->t != T_BOOL)
			rerr(c, LQ_ERR_INVALID, "slice indices must be integers or None");
		a = numi(sv);
		if (a < 0) {
			a += len;
			if (a < 0)
				a = st < 0 ? -1 : 0;
		} else if (a >= len) {
			a = st < 0 ? len - 1 : len;
		}
	}
	if (!ev || ev->t == T_NONE) {
		b = st < 0 ? -1 : len;
	} else {
		if (ev->t != T_INT && ev->t != T_BOOL)
			rerr(c, LQ_ERR_INVALID, "slice indices must be integers or None");
		b = numi(ev);
		if (b < 0) {
			b += len;
			if (b < 0)
				b = st < 0 ? -1 : 0;
		} else if (b >= len) {
			b = st < 0 ? len - 1 : len;
		}
	}
	*start = a;
	*stop = b;
	*stepv = st;
}

static struct val *do_slice(struct ctx *c, struct val *o, struct val *sv, struct val *ev, struct val *stv)
{
	if (o->t == T_UNDEF)
		undef_fail(c, o, NULL);
	int64_t a, b, st;
	if (o->t == T_LIST && o->kind != VK_LIST)
		rerr(c, LQ_ERR_INVALID, "'%s' object is not subscriptable", type_name(o));
	if (o->t == T_LIST) {
		slice_idx(c, (int64_t)o->u.l.n, sv, ev, stv, &a, &b, &st);
		struct vb r = { 0 };
		for (int64_t i = a; st > 0 ? i < b : i > b; i += st)
			vb_push(c, &r, o->u.l.v[i]);
		struct val *l = vb_list(c, &r);
		l->tuple = o->tuple;
		return l;
	}
	if (o->t == T_STR) {
		size_t cnt;
		size_t *off = cp_offsets(c, o->u.s.s, o->u.s.n, &cnt);
		slice_idx(c, (int64_t)cnt, sv, ev, stv, &a, &b, &st);
		if (st == 1)
			return mkstr_ref(c, o->u.s.s + off[a], a < b ? off[b] - off[a] : 0);
		struct sb r = { 0 };
		for (int64_t i = a; st > 0 ? i < b : i > b; i += st)
			sb_put(c, &r, o->u.s.s + off[i], off[i + 1] - off[i]);
		return sb_val(c, &r);
	}
	/* jinja2 compiles slices to a plain Python subscript: no undefined fallback */
	if (o->t == T_DICT || o->t == T_NS)
		rerr(c, LQ_ERR_INVALID, "unhashable type: 'slice'");
	rerr(c, LQ_ERR_INVALID, "'%s' object is not subscriptable", type_name(o));
}

/* ------------------------------------------------------------ arithmetic */


/* Python's printf-style formatting: fmt % args (args: a tuple, a mapping for
 * %(name)s, or a single value) */
static struct val *py_format(struct ctx *c, struct val *fmtv, struct val *args)
{
	const char *f = fmtv->u.s.s;
	size_t n = fmtv->u.s.n, ai = 0;
	struct val **av = &args;
	size_t an = 1;
	int tuple = args->t == T_LIST && args->tuple && args->kind == VK_LIST;
	int mapping = args->t == T_DICT;
	if (tuple) {
		av = args->u.l.v;
		an = args->u.l.n;
	}
	int used_map = 0;
	struct sb r = { 0 };
	for (size_t i = 0; i < n; i++) {
		if (f[i] != '%') {
			sb_put(c, &r, f + i, 1);
			continue;
		}
		if (++i >= n)
			rerr(c, LQ_ERR_INVALID, "incomplete format");
		struct val *x = NULL;
		if (f[i] == '(') {
			size_t e = i + 1;
			int depth = 1;
			while (e < n && depth) {
				depth += f[e] == '(' ? 1 : f[e] == ')' ? -1 : 0;
				e++;
			}
			if (depth)
				rerr(c, LQ_ERR_INVALID, "incomplete format key");
			if (!mapping)
				rerr(c, LQ_ERR_INVALID, "format requires a mapping");
			struct val *k = mkstr(c, f + i + 1, e - i - 2);
			x = dict_get(c, args->u.d, k);
			if (!x)
				rerr(c, LQ_ERR_INVALID, "KeyError: '%.*s'", (int)k->u.s.n, k->u.s.s);
			used_map = 1;
			i = e;
		}
		char flags[8];
		int nf = 0;
		while (i < n && strchr("-+ 0#", f[i]) && nf < 7)
			flags[nf++] = f[i++];
		flags[nf] = 0;
		long width = -1, prec = -1;
		if (i < n && f[i] == '*')
			rerr(c, LQ_ERR_UNSUPPORTED, "'*' width in %% formatting is not supported");
		if (i < n && f[i] >= '0' && f[i] <= '9') {
			width = 0;
			while (i < n && f[i] >= '0' && f[i] <= '9' && width < 100000)
				width = width * 10 + (f[i++] - '0');
		}
		if (i < n && f[i] == '.') {
			i++;
			prec = 0;
			while (i < n && f[i] >= '0' && f[i] <= '9' && prec < 100000)
				prec = prec * 10 + (f[i++] - '0');
		}
		while (i < n && (f[i] == 'l' || f[i] == 'h' || f[i] == 'L'))
			i++;
		if (i >= n)
			rerr(c, LQ_ERR_INVALID, "incomplete format");
		char conv = f[i];
		if (conv == '%') {
			sb_puts(c, &r, "%");
			continue;
		}
		if (width > 4096 || prec > 4096)
			rerr(c, LQ_ERR_INVALID, "format width or precision too large");
		if (!x) {
			if (ai >= an || (mapping && !tuple && used_map))
				rerr(c, LQ_ERR_INVALID, "not enough arguments for format string");
			x = av[ai++];
		}
		struct sb piece = { 0 };
		char spec[48], buf[4200];
		int left = strchr(flags, '-') != NULL;
		switch (conv) {
		case 's':
		case 'r':
		case 'a': {
			if (conv == 's')
				to_str(c, &piece, x, 0);
			else
				repr(c, &piece, x, 0);
			size_t len = piece.n, cps = cp_count(piece.p ? piece.p : "", len);
			if (prec >= 0 && (size_t)prec < cps) {
				size_t cnt;
				size_t *off = cp_offsets(c, piece.p, len, &cnt);
				len = off[prec];
				cps = (size_t)prec;
			}
			if (!left)
				for (long k = (long)cps; k < width; k++)
					sb_puts(c, &r, " ");
			sb_put(c, &r, piece.p ? piece.p : "", len);
			if (left)
				for (long k = (long)cps; k < width; k++)
					sb_puts(c, &r, " ");
			continue;
		}
		case 'd': case 'i': case 'u': case 'x': case 'X': case 'o': {
			if (!is_num(x))
				rerr(c, LQ_ERR_INVALID, "%%%c format: a real number is required, not %s", conv, type_name(x));
			if (x->t == T_FLOAT && (conv == 'x' || conv == 'X' || conv == 'o'))
				rerr(c, LQ_ERR_INVALID, "%%%c format: an integer is required, not float", conv);
			long long v;
			if (x->t == T_FLOAT) {
				if (!isfinite(x->u.f) || fabs(x->u.f) >= 9.2e18)
					rerr(c, LQ_ERR_UNSUPPORTED, "integer overflow (values beyond 64 bits are not supported)");
				v = (long long)x->u.f;
			} else {
				v = (long long)numi(x);
			}
			char cc = conv == 'i' || conv == 'u' ? 'd' : conv;
			if (cc == 'd' || v >= 0) {
				if (prec >= 0)
					snprintf(spec, sizeof spec, "%%%s%ld.%ldll%c", flags, width < 0 ? 0 : width, prec, cc);
				else
					snprintf(spec, sizeof spec, "%%%s%ldll%c", flags, width < 0 ? 0 : width, cc);
				snprintf(buf, sizeof buf, spec, v);
			} else { /* Python prints negative hex/octal with a sign */
				snprintf(spec, sizeof spec, "-%%%sll%c", strchr(flags, '#') ? "#" : "", cc);
				char t2[128];
				snprintf(t2, sizeof t2, spec, (unsigned long long)(-(v + 1)) + 1u);
				snprintf(buf, sizeof buf, left ? "%-*s" : "%*s", (int)(width < 0 ? 0 : width), t2);
			}
			if (cc == 'o' && strchr(flags, '#')) { /* Python: 0o17, C: 017 */
				char *z = strchr(buf, '0');
				if (z && z[1] != 'o') {
					memmove(z + 2, z + 1, strlen(z + 1) + 1);
					z[1] = 'o';
				}
			}
			sb_puts(c, &r, buf);
			continue;
		}
		case 'f': case 'F': case 'e': case 'E': case 'g': case 'G': {
			if (!is_num(x))
				rerr(c, LQ_ERR_INVALID, "must be real number, not %s", type_name(x));
			snprintf(spec, sizeof spec, "%%%s%ld.%ld%c", flags, width < 0 ? 0 : width, prec < 0 ? 6 : prec, conv);
			snprintf(buf, sizeof buf, spec, numf(x));
			sb_puts(c, &r, buf);
			continue;
		}
		case 'c':
			if (x->t == T_STR && cp_count(x->u.s.s, x->u.s.n) == 1) {
				sb_put(c, &r, x->u.s.s, x->u.s.n);
			} else if (x->t == T_INT && x->u.i >= 0 && x->u.i <= 0x10FFFF) {
				char e[4];
				sb_put(c, &r, e, u8enc(e, (uint32_t)x->u.i));
			} else {
				rerr(c, LQ_ERR_INVALID, "%%c requires int or char");
			}
			continue;
		default:
			rerr(c, LQ_ERR_INVALID, "unsupported format character '%c'", conv);
		}
	}
	if (tuple && ai < an)
		rerr(c, LQ_ERR_INVALID, "not all arguments converted during string formatting");
	if (!tuple && !used_map && ai == 0 && !(args->t == T_LIST || args->t == T_DICT))
		rerr(c, LQ_ERR_INVALID, "not all arguments converted during string formatting");
	return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
}

static struct val *arith(struct ctx *c, int op, struct val *a, struct val *b)
{
	static const char *const opname[] = { "+", "-", "*", "/", "//", "%", "**" };
	if (op == OP_CAT) {
		struct sb r = { 0 };
		to_str(c, &r, a, 0);
		to_str(c, &r, b, 0);
		return sb_val(c, &r);
	}
	if (a->t == T_UNDEF)
		undef_fail(c, a, NULL);
	if (b->t == T_UNDEF)
		undef_fail(c, b, NULL);
	if (is_num(a) && is_num(b)) {
		if (a->t != T_FLOAT && b->t != T_FLOAT && op != OP_DIV) {
			int64_t x = numi(a), y = numi(b), r;
			switch (op) {
			case OP_ADD: if (__builtin_add_overflow(x, y, &r)) goto ovf; return mkint(c, r);
			case OP_SUB: if (__builtin_sub_overflow(x, y, &r)) goto ovf; return mkint(c, r);
			case OP_MUL: if (__builtin_mul_overflow(x, y, &r)) goto ovf; return mkint(c, r);
			case OP_FDIV:
			case OP_MOD: {
				if (y == 0)
					rerr(c, LQ_ERR_INVALID, "integer division or modulo by zero");
				if (x == INT64_MIN && y == -1)
					goto ovf;
				int64_t q = x / y, m = x % y;
				if (m != 0 && ((m < 0) != (y < 0))) {
					q--;
					m += y;
				}
				return mkint(c, op == OP_FDIV ? q : m);
			}
			case OP_POW: {
				if (y < 0)
					return mkfloat(c, pow((double)x, (double)y));
				int64_t acc = 1;
				for (int64_t i = 0; i < y; i++) {
					if (__builtin_mul_overflow(acc, x, &acc))
						goto ovf;
					if (acc == 0 || acc == 1)
						break;
					step(c);
				}
				if (acc == 1 && x == -1 && (y & 1))
					acc = -1;
				return mkint(c, acc);
			}
			}
		}
		double x = numf(a), y = numf(b);
		switch (op) {
		case OP_ADD: return mkfloat(c, x + y);
		case OP_SUB: return mkfloat(c, x - y);
		case OP_MUL: return mkfloat(c, x * y);
		case OP_DIV:
			if (y == 0)
				rerr(c, LQ_ERR_INVALID, "division by zero");
			return mkfloat(c, x / y);
		case OP_FDIV:
		case OP_MOD: {
			if (y == 0)
				rerr(c, LQ_ERR_INVALID, "float division or modulo by zero");
			/* CPython's float_divmod */
			double m = fmod(x, y), d = (x - m) / y, fd;
			if (m != 0) {
				if ((y < 0) != (m < 0)) {
					m += y;
					d -= 1.0;
				}
			} else {
				m = copysign(0.0, y);
			}
			if (d != 0) {
				fd = floor(d);
				if (d - fd > 0.5)
					fd += 1.0;
			} else {
				fd = copysign(0.0, x / y);
			}
			return mkfloat(c, op == OP_MOD ? m : fd);
		}
		case OP_POW: return mkfloat(c, pow(x, y));
		}
	}
	if (op == OP_ADD && a->t == T_STR && b->t == T_STR) {
		if (a->u.s.n + b->u.s.n > c->max_out)
			rerr(c, LQ_ERR_INVALID, "string larger than the output limit");
		char *p = ralloc(c, a->u.s.n + b->u.s.n + 1);
		memcpy(p, a->u.s.s, a->u.s.n);
		memcpy(p + a->u.s.n, b->u.s.s, b->u.s.n);
		p[a->u.s.n + b->u.s.n] = 0;
		return mkstr_ref(c, p, a->u.s.n + b->u.s.n);
	}
	if (op == OP_ADD && a->t == T_LIST && b->t == T_LIST && a->tuple == b->tuple && a->kind == VK_LIST &&
	    b->kind == VK_LIST) {
		struct val *l = mklist(c, a->u.l.n + b->u.l.n);
		l->tuple = a->tuple;
		if (a->u.l.n)
			memcpy(l->u.l.v, a->u.l.v, a->u.l.n * sizeof *l->u.l.v);
		if (b->u.l.n)
			memcpy(l->u.l.v + a->u.l.n, b->u.l.v, b->u.l.n * sizeof *l->u.l.v);
		return l;
	}
	if (op == OP_MUL && ((a->t == T_STR || (a->t == T_LIST && a->kind == VK_LIST)) && (b->t == T_INT || b->t == T_BOOL))) {
		int64_t k = numi(b);
		if (k < 0)
			k = 0;
		if (a->t == T_STR) {
			if (a->u.s.n && (uint64_t)k > c->max_out / a->u.s.n)
				rerr(c, LQ_ERR_INVALID, "string larger than the output limit");
			struct sb r = { 0 };
			for (int64_t i = 0; i < k; i++)
				sb_put(c, &r, a->u.s.s, a->u.s.n);
			return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
		}
		if (a->u.l.n && (uint64_t)k > (MAX_MEMORY / sizeof(void *)) / a->u.l.n)
			rerr(c, LQ_ERR_INVALID, "list too large");
		struct val *l = mklist(c, a->u.l.n * (size_t)k);
		l->tuple = a->tuple;
		for (int64_t i = 0; i < k; i++)
			memcpy(l->u.l.v + (size_t)i * a->u.l.n, a->u.l.v, a->u.l.n * sizeof *l->u.l.v);
		return l;
	}
	if (op == OP_MUL && (b->t == T_STR || (b->t == T_LIST && b->kind == VK_LIST)) && (a->t == T_INT || a->t == T_BOOL))
		return arith(c, op, b, a);
	if (op == OP_ADD && (a->t == T_STR || a->t == T_LIST))
		rerr(c, LQ_ERR_INVALID, "can only concatenate %s (not \"%s\") to %s", type_name(a),
		     type_name(b), type_name(a));
	if (op == OP_MOD && a->t == T_STR)
		return py_format(c, a, b);
	rerr(c, LQ_ERR_INVALID, "unsupported operand type(s) for %s: '%s' and '%s'", opname[op],
	     type_name(a), type_name(b));
ovf:
	rerr(c, LQ_ERR_UNSUPPORTED, "integer overflow (values beyond 64 bits are not supported)");
}

static int val_cmp(struct ctx *c, int op, struct val *a, struct val *b, int depth);

static int contains(struct ctx *c, struct val *hay, struct val *x)
{
	switch (hay->t) {
	case T_STR:
		if (x->t != T_STR)
			rerr(c, LQ_ERR_INVALID, "'in <string>' requires string as left operand, not %s", type_name(x));
		if (!x->u.s.n)
			return 1;
		if (x->u.s.n > hay->u.s.n)
			return 0;
		return memmem(hay->u.s.s, hay->u.s.n, x->u.s.s, x->u.s.n) != NULL;
	case T_LIST: {
		size_t n;
		struct val **it = iter_items(c, hay, &n);
		for (size_t i = 0; i < n; i++)
			if (val_eq(c, it[i], x, 0))
				return 1;
		return 0;
	}
	case T_DICT:
	case T_NS:
		if ((x->t == T_LIST && !x->tuple) || x->t == T_DICT || x->t == T_NS)
			rerr(c, LQ_ERR_INVALID, "unhashable type: '%s'", type_name(x));
		return dict_get(c, hay->u.d, x) != NULL;
	case T_UNDEF:
		return 0;
	default:
		rerr(c, LQ_ERR_INVALID, "argument of type '%s' is not iterable", type_name(hay));
	}
}

/* ordering comparisons; returns the boolean result */
static int val_cmp(struct ctx *c, int op, struct val *a, struct val *b, int depth)
{
	static const char *const nm[] = { [OP_LT] = "<", [OP_LE] = "<=", [OP_GT] = ">", [OP_GE] = ">=" };
	int r;
	if (depth > MAX_DEPTH)
		rerr(c, LQ_ERR_INVALID, "values nested too deeply to compare");
	if (is_num(a) && is_num(b)) {
		if (a->t == T_FLOAT || b->t == T_FLOAT) {
			double x = numf(a), y = numf(b);
			switch (op) {
			case OP_LT: return x < y;
			case OP_LE: return x <= y;
			case OP_GT: return x > y;
			default: return x >= y;
			}
		}
		int64_t x = numi(a), y = numi(b);
		r = x < y ? -1 : x > y;
	} else if (a->t == T_STR && b->t == T_STR) {
		r = key_cmp(a, b);
	} else if (a->t == T_LIST && b->t == T_LIST && a->tuple == b->tuple && a->kind == VK_LIST && b->kind == VK_LIST) {
		size_t i = 0;
		while (i < a->u.l.n && i < b->u.l.n && val_eq(c, a->u.l.v[i], b->u.l.v[i], depth + 1))
			i++;
		if (i < a->u.l.n && i < b->u.l.n)
			return val_cmp(c, op, a->u.l.v[i], b->u.l.v[i], depth + 1);
		r = a->u.l.n < b->u.l.n ? -1 : a->u.l.n > b->u.l.n;
	} else {
		if (a->t == T_UNDEF)
			undef_fail(c, a, NULL);
		if (b->t == T_UNDEF)
			undef_fail(c, b, NULL);
		rerr(c, LQ_ERR_INVALID, "'%s' not supported between instances of '%s' and '%s'", nm[op],
		     type_name(a), type_name(b));
	}
	switch (op) {
	case OP_LT: return r < 0;
	case OP_LE: return r <= 0;
	case OP_GT: return r > 0;
	default: return r >= 0;
	}
}

/* ------------------------------------------------------------ scopes */

static struct scope *new_scope(struct ctx *c, struct scope *parent)
{
	struct scope *s = ralloc(c, sizeof *s);
	s->parent = parent;
	return s;
}

static struct val *lookup(struct scope *s, const char *name)
{
	for (; s; s = s->parent)
		for (struct var *v = s->vars; v; v = v->next)
			if (!strcmp(v->name, name))
				return v->v;
	return NULL;
}

static void set_var(struct ctx *c, struct scope *s, const char *name, struct val *val)
{
	for (struct var *v = s->vars; v; v = v->next)
		if (!strcmp(v->name, name)) {
			v->v = val;
			return;
		}
	struct var *v = ralloc(c, sizeof *v);
	v->name = name;
	v->v = val;
	v->next = s->vars;
	s->vars = v;
}

/* ------------------------------------------------------------ arguments */

struct args {
	struct val **pos;
	size_t npos;
	const char **kwn;
	struct val **kwv;
	size_t nkw;
	const char *what;   /* filter/function name for messages */
};

static struct val *arg(struct ctx *c, const struct args *a, size_t i, const char *name, struct val *dflt)
{
	if (i < a->npos)
		return a->pos[i];
	for (size_t k = 0; k < a->nkw; k++)
		if (name && !strcmp(a->kwn[k], name))
			return a->kwv[k];
	(void)c;
	return dflt;
}

static const char *arg_str(struct ctx *c, const struct args *a, size_t i, const char *name, size_t *n)
{
	struct val *v = arg(c, a, i, name, NULL);
	if (!v || v->t == T_NONE)
		return NULL;
	if (v->t != T_STR)
		rerr(c, LQ_ERR_INVALID, "%s: argument '%s' must be a string, not %s", a->what, name, type_name(v));
	*n = v->u.s.n;
	return v->u.s.s;
}

/* ------------------------------------------------------------ string ops */

/* Python's full case mappings that expand to several characters (the
 * common ones from SpecialCasing.txt); NULL when the simple mapping applies */
static const char *special_case(int32_t cp, int upper)
{
	if (!upper)
		return cp == 0x130 ? "i\xcc\x87" : NULL;
	switch (cp) {
	case 0xDF: return "SS";
	case 0x149: return "\xca\xbcN";
	case 0xFB00: return "FF";
	case 0xFB01: return "FI";
	case 0xFB02: return "FL";
	case 0xFB03: return "FFI";
	case 0xFB04: return "FFL";
	case 0xFB05: case 0xFB06: return "ST";
	case 0x587: return "\xd4\xb5\xd5\x92";
	default: return NULL;
	}
}

static struct val *str_case(struct ctx *c, struct val *v, int mode) /* 0 lower 1 upper 2 capitalize 3 py title 4 jinja title */
{
	struct sb r = { 0 };
	const char *s = v->u.s.s;
	size_t n = v->u.s.n, i = 0;
	int first = 1, prev_cased = 0;
	while (i < n) {
		int32_t cp;
		size_t k = u8dec(s + i, n - i, &cp);
		int want; /* 0 lower, 1 upper, 2 title, 3 unchanged */
		switch (mode) {
		case 0: want = 0; break;
		case 1: want = 1; break;
		case 2: want = first ? 2 : 0; break;
		case 3: {
			int cased = utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp || cp == 0xDF;
			want = prev_cased ? 0 : 2;
			prev_cased = cased;
			break;
		}
		default: {
			/* jinja2's title: item[0].upper() + item[1:].lower() per word */
			int sep = py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
			want = sep ? 3 : prev_cased ? 0 : 1;
			prev_cased = !sep;
			break;
		}
		}
		first = 0;
		i += k;
		if (want == 3) {
			sb_put(c, &r, s + i - k, k);
			continue;
		}
		/* full mappings of SpecialCasing.txt: "ß".upper() is "SS", title "Ss" */
		const char *sp = special_case(cp, want != 0);
		if (sp) {
			char tb[16];
			size_t tn = strlen(sp);
			memcpy(tb, sp, tn + 1);
			if (want == 2)
				for (size_t x = 1; x < tn; x++)
					if (tb[x] >= 'A' && tb[x] <= 'Z')
						tb[x] = (char)(tb[x] + 32);
			sb_put(c, &r, tb, tn);
			continue;
		}
		int32_t o = want == 0 ? utf8proc_tolower(cp) : want == 1 ? utf8proc_toupper(cp) : utf8proc_totitle(cp);
		char e[4];
		if (o == cp)
			sb_put(c, &r, s + i - k, k);
		else
			sb_put(c, &r, e, u8enc(e, (uint32_t)o));
	}
	return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
}

static int in_chars(int32_t cp, const char *chars, size_t cn)
{
	for (size_t i = 0; i < cn;) {
		int32_t x;
		i += u8dec(chars + i, cn - i, &x);
		if (x == cp)
			return 1;
	}
	return 0;
}

/* strip: which 1 left, 2 right, 3 both; chars NULL = whitespace */
static struct val *str_strip(struct ctx *c, struct val *v, int which, const char *chars, size_t cn)
{
	const char *s = v->u.s.s;
	size_t a = 0, b = v->u.s.n;
	if (which & 1)
		while (a < b) {
			int32_t cp;
			size_t k = u8dec(s + a, b - a, &cp);
			if (chars ? !in_chars(cp, chars, cn) : !py_space(cp))
				break;
			a += k;
		}
	if (which & 2)
		while (b > a) {
			size_t x = b - 1;
			while (x > a && ((unsigned char)s[x] & 0xC0) == 0x80 && b - x < 4)
				x--;
			int32_t cp;
			u8dec(s + x, b - x, &cp);
			if (chars ? !in_chars(cp, chars, cn) : !py_space(cp))
				break;
			b = x;
		}
	return mkstr_ref(c, s + a, b - a);
}

static struct val *str_split(struct ctx *c, struct val *v, const char *sep, size_t sn, int64_t maxsplit, int right)
{
	struct vb r = { 0 };
	const char *s = v->u.s.s;
	size_t n = v->u.s.n;
	if (sep && sn == 0)
		rerr(c, LQ_ERR_INVALID, "empty separator");
	if (right && maxsplit >= 0) {
		/* rsplit with a limit: split from the right */
		struct vb rev = { 0 };
		size_t end = n;
		int64_t done = 0;
		if (!sep) {
			while (end > 0) {
				size_t e = end - rspace_len(s, end);
				if (e == 0) {
					end = 0;
					break;
				}
				end = e;
				if (done == maxsplit) {
					vb_push(c, &rev, mkstr_ref(c, s, end));
					end = 0;
					break;
				}
				size_t b = end;
				while (b > 0) {
					size_t x = b - 1;
					while (x > 0 && ((unsigned char)s[x] & 0xC0) == 0x80 && b - x < 4)
						x--;
					int32_t cp;
					u8dec(s + x, b - x, &cp);
					if (py_space(cp))
						break;
					b = x;
				}
				vb_push(c, &rev, mkstr_ref(c, s + b, end - b));
				done++;
				end = b;
			}
		} else {
			for (;;) {
				const char *hit = NULL;
				if (done < maxsplit)
					for (size_t x = end; x >= sn; x--)
						if (memcmp(s + x - sn, sep, sn) == 0) {
							hit = s + x - sn;
							break;
						}
				if (!hit) {
					vb_push(c, &rev, mkstr_ref(c, s, end));
					break;
				}
				vb_push(c, &rev, mkstr_ref(c, hit + sn, (size_t)(s + end - hit - (ptrdiff_t)sn)));
				end = (size_t)(hit - s);
				done++;
			}
		}
		for (size_t i = 0; i < rev.n; i++)
			vb_push(c, &r, rev.v[rev.n - 1 - i]);
		return vb_list(c, &r);
	}
	int64_t done = 0;
	if (!sep) {
		size_t i = 0;
		for (;;) {
			i += lspace_len(s + i, n - i);
			if (i >= n)
				break;
			if (maxsplit >= 0 && done == maxsplit) {
				size_t e = n - rspace_len(s + i, n - i);
				vb_push(c, &r, mkstr_ref(c, s + i, e - i));
				break;
			}
			size_t j = i;
			while (j < n) {
				int32_t cp;
				size_t k = u8dec(s + j, n - j, &cp);
				if (py_space(cp))
					break;
				j += k;
			}
			vb_push(c, &r, mkstr_ref(c, s + i, j - i));
			done++;
			i = j;
		}
		return vb_list(c, &r);
	}
	size_t i = 0;
	for (;;) {
		const char *hit = (maxsplit < 0 || done < maxsplit) && n - i >= sn ? memmem(s + i, n - i, sep, sn) : NULL;
		if (!hit) {
			vb_push(c, &r, mkstr_ref(c, s + i, n - i));
			break;
		}
		vb_push(c, &r, mkstr_ref(c, s + i, (size_t)(hit - (s + i))));
		i = (size_t)(hit - s) + sn;
		done++;
		step(c);
	}
	return vb_list(c, &r);
}

static struct val *str_replace(struct ctx *c, struct val *v, struct val *old, struct val *new_, int64_t count)
{
	const char *s = v->u.s.s;
	size_t n = v->u.s.n, on = old->u.s.n;
	struct sb r = { 0 };
	int64_t done = 0;
	if (on == 0) {
		/* Python inserts new between every character (and at both ends) */
		size_t i = 0;
		for (;;) {
			if (count < 0 || done < count) {
				sb_put(c, &r, new_->u.s.s, new_->u.s.n);
				done++;
			}
			if (i >= n)
				break;
			int32_t cp;
			size_t k = u8dec(s + i, n - i, &cp);
			sb_put(c, &r, s + i, k);
			i += k;
			step(c);
		}
		return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
	}
	size_t i = 0;
	for (;;) {
		const char *hit = (count < 0 || done < count) && n - i >= on ? memmem(s + i, n - i, old->u.s.s, on) : NULL;
		if (!hit) {
			sb_put(c, &r, s + i, n - i);
			break;
		}
		sb_put(c, &r, s + i, (size_t)(hit - (s + i)));
		sb_put(c, &r, new_->u.s.s, new_->u.s.n);
		i = (size_t)(hit - s) + on;
		done++;
		step(c);
	}
	return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
}

static int affix(struct ctx *c, struct val *v, struct val *x, int end)
{
	if (x->t == T_LIST && x->tuple) {
		for (size_t i = 0; i < x->u.l.n; i++)
			if (affix(c, v, x->u.l.v[i], end))
				return 1;
		return 0;
	}
	if (x->t != T_STR)
		rerr(c, LQ_ERR_INVALID, "%s first arg must be str or a tuple of str, not %s",
		     end ? "endswith" : "startswith", type_name(x));
	if (x->u.s.n > v->u.s.n)
		return 0;
	return memcmp(v->u.s.s + (end ? v->u.s.n - x->u.s.n : 0), x->u.s.s, x->u.s.n) == 0;
}

/* ------------------------------------------------------------ int / float parsing */

static int parse_int_str(const char *s, size_t n, int64_t *out)
{
	char buf[80];
	size_t a = lspace_len(s, n), b = n - rspace_len(s, n);
	if (b <= a)
		return 0;
	size_t k = 0;
	for (size_t i = a; i < b; i++) {
		if (s[i] == '_' && i > a && i + 1 < b && s[i - 1] >= '0' && s[i - 1] <= '9')
			continue;
		if (k >= sizeof buf - 1)
			return 0;
		buf[k++] = s[i];
	}
	buf[k] = 0;
	size_t i = 0;
	if (buf[i] == '+' || buf[i] == '-')
		i++;
	if (!buf[i])
		return 0;
	for (; buf[i]; i++)
		if (buf[i] < '0' || buf[i] > '9')
			return 0;
	errno = 0;
	long long v = strtoll(buf, NULL, 10);
	if (errno)
		return 0;
	*out = v;
	return 1;
}

static int parse_float_str(const char *s, size_t n, double *out)
{
	char buf[80];
	size_t a = lspace_len(s, n), b = n - rspace_len(s, n);
	if (b <= a || b - a >= sizeof buf)
		return 0;
	memcpy(buf, s + a, b - a);
	buf[b - a] = 0;
	for (size_t i = 0; buf[i]; i++)
		if (!strchr("0123456789+-.eEinfatyINFATY", buf[i]))
			return 0;
	char *end;
	double v = strtod(buf, &end);
	if (*end || end == buf)
		return 0;
	*out = v;
	return 1;
}

/* ------------------------------------------------------------ tests */

static struct val *eval(struct ctx *c, struct scope *sc, const struct node *n);

static int run_test(struct ctx *c, int id, struct val *v, const struct args *a)
{
	struct val *x = a->npos ? a->pos[0] : NULL;
	switch (id) {
	case X_DEFINED: return v->t != T_UNDEF;
	case X_UNDEFINED: return v->t == T_UNDEF;
	case X_NONE: return v->t == T_NONE;
	case X_BOOLEAN: return v->t == T_BOOL;
	case X_TRUE: return v->t == T_BOOL && v->u.b;
	case X_FALSE: return v->t == T_BOOL && !v->u.b;
	case X_INTEGER: return v->t == T_INT;
	case X_FLOAT: return v->t == T_FLOAT;
	case X_NUMBER: return is_num(v);
	case X_STRING: return v->t == T_STR;
	case X_MAPPING: return v->t == T_DICT;
	case X_ITERABLE: return v->t == T_STR || v->t == T_LIST || v->t == T_DICT || v->t == T_UNDEF || v->t == T_LOOP;
	case X_SEQUENCE: return v->t == T_STR || (v->t == T_LIST && v->kind == VK_LIST) || v->t == T_DICT || v->t == T_UNDEF;
	case X_CALLABLE: return v->t == T_MACRO || v->t == T_FUNC;
	case X_ESCAPED: return 0;
	case X_LOWER:
	case X_UPPER: {
		v = str_of(c, v); /* jinja2: str(value).islower() */
		struct val *o = str_case(c, v, id == X_LOWER ? 0 : 1);
		int cased = 0;
		for (size_t i = 0; i < v->u.s.n;) {
			int32_t cp;
			i += u8dec(v->u.s.s + i, v->u.s.n - i, &cp);
			if (utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp)
				cased = 1;
		}
		return cased && val_eq(c, o, v, 0);
	}
	default:
		break;
	}
	if (!x)
		rerr(c, LQ_ERR_INVALID, "test '%s' needs an argument", a->what);
	switch (id) {
	case X_SAMEAS:
		if (v->t != x->t)
			return 0;
		if (v->t == T_NONE || v->t == T_UNDEF)
			return 1;
		if (v->t == T_BOOL)
			return v->u.b == x->u.b;
		return v == x;
	case X_EQ: return val_eq(c, v, x, 0);
	case X_NE: return !val_eq(c, v, x, 0);
	case X_LT: return val_cmp(c, OP_LT, v, x, 0);
	case X_LE: return val_cmp(c, OP_LE, v, x, 0);
	case X_GT: return val_cmp(c, OP_GT, v, x, 0);
	case X_GE: return val_cmp(c, OP_GE, v, x, 0);
	case X_IN: return contains(c, x, v);
	default: break;
	}
	return 0;
}

static int run_test_odd(struct ctx *c, int id, struct val *v, const struct args *a)
{
	if (id == X_ODD || id == X_EVEN || id == X_DIVISIBLEBY) {
		/* jinja2: value % 2 == 1, value % 2 == 0, value % num == 0 */
		struct val two = { .t = T_INT }, zero = { .t = T_INT }, one = { .t = T_INT };
		two.u.i = 2;
		one.u.i = 1;
		struct val *d = &two;
		if (id == X_DIVISIBLEBY) {
			d = a->npos ? a->pos[0] : NULL;
			if (!d)
				rerr(c, LQ_ERR_INVALID, "test 'divisibleby' needs an argument");
		}
		struct val *m = arith(c, OP_MOD, v, d);
		return val_eq(c, m, id == X_ODD ? &one : &zero, 0);
	}
	return run_test(c, id, v, a);
}

/* attribute getter of selectattr/map/sort: "a.b.0" */
static struct val *attr_path(struct ctx *c, struct val *v, struct val *path)
{
	if (path->t == T_INT)
		return get_item(c, v, path);
	if (path->t != T_STR)
		rerr(c, LQ_ERR_INVALID, "attribute name must be a string");
	const char *s = path->u.s.s;
	size_t n = path->u.s.n, i = 0;
	while (i <= n) {
		size_t j = i;
		while (j < n && s[j] != '.')
			j++;
		struct val *k = mkstr(c, s + i, j - i);
		int64_t iv;
		if (j > i && parse_int_str(s + i, j - i, &iv) && s[i] >= '0' && s[i] <= '9')
			k = mkint(c, iv);
		if (v->t == T_UNDEF)
			return v;
		v = get_item(c, v, k);
		i = j + 1;
	}
	return v;
}

/* ------------------------------------------------------------ filters */

static struct val *apply_filter(struct ctx *c, int id, struct val *v, const struct args *a);

static int find_filter(const struct val *name)
{
	for (int i = 0; filter_names[i].name; i++)
		if (streq(name, filter_names[i].name))
			return filter_names[i].id;
	return -1;
}

static int iterable(const struct val *v)
{
	return v->t == T_UNDEF || v->t == T_LIST || v->t == T_DICT || v->t == T_STR;
}

/* mark a list as a Python generator (jinja2's select, map, unique, items...);
   err: the TypeError its first use raises */
static struct val *as_gen(struct ctx *c, struct val *l, const char *err)
{
	l->kind = VK_GEN;
	if (err) {
		size_t n = strlen(err);
		char *h = ralloc(c, n + 1);
		memcpy(h, err, n + 1);
		l->hint = h;
	}
	return l;
}

static struct val *not_iterable_gen(struct ctx *c, struct val *v)
{
	if (v->t == T_LIST && v->kind == VK_GEN && v->hint)
		return as_gen(c, mklist(c, 0), v->hint); /* still lazy: the error waits for a use */
	char msg[96];
	snprintf(msg, sizeof msg, "'%s' object is not iterable", type_name(v));
	return as_gen(c, mklist(c, 0), msg);
}

static struct val *select_like(struct ctx *c, struct val *v, const struct args *a, int attr, int reject)
{
	size_t n;
	if (!truthy(v)) /* jinja2: "if value:" before iterating */
		return as_gen(c, mklist(c, 0), NULL);
	if (!iterable(v) || (v->t == T_LIST && v->hint))
		return not_iterable_gen(c, v);
	struct val **items = iter_items(c, v, &n);
	struct val *path = NULL;
	size_t ti = 0;
	if (attr) {
		path = arg(c, a, 0, NULL, NULL);
		if (!path)
			rerr(c, LQ_ERR_INVALID, "%s needs an attribute name", a->what);
		ti = 1;
	}
	struct val *tname = ti < a->npos ? a->pos[ti] : NULL;
	int tid = -1;
	if (tname) {
		if (tname->t != T_STR)
			rerr(c, LQ_ERR_INVALID, "%s: test name must be a string", a->what);
		char nm[64];
		snprintf(nm, sizeof nm, "%.*s", (int)(tname->u.s.n < 63 ? tname->u.s.n : 63), tname->u.s.s);
		tid = find_test(nm);
		if (tid < 0)
			rerr(c, LQ_ERR_UNSUPPORTED, "%s: no test named '%s'", a->what, nm);
	}
	struct args ta = { 0 };
	ta.what = a->what;
	if (tname) {
		ta.pos = a->pos + ti + 1;
		ta.npos = a->npos - ti - 1;
	}
	struct vb r = { 0 };
	for (size_t i = 0; i < n; i++) {
		step(c);
		struct val *x = attr ? attr_path(c, items[i], path) : items[i];
		int ok = tid >= 0 ? run_test_odd(c, tid, x, &ta) : truthy(x);
		if (ok != reject)
			vb_push(c, &r, items[i]);
	}
	return as_gen(c, vb_list(c, &r), NULL);
}

static struct val *lower_if_str(struct ctx *c, struct val *v, int cs)
{
	return !cs && v->t == T_STR ? str_case(c, v, 0) : v;
}

static struct val *apply_filter(struct ctx *c, int id, struct val *v, const struct args *a)
{
	size_t n, sn;
	const char *s;
	switch (id) {
	case F_SAFE:
		return v;
	case F_STRING:
		return str_of(c, v);
	case F_TRIM:
		s = arg_str(c, a, 0, "chars", &sn);
		return str_strip(c, str_of(c, v), 3, s, s ? sn : 0);
	case F_UPPER: return str_case(c, str_of(c, v), 1);
	case F_LOWER: return str_case(c, str_of(c, v), 0);
	case F_CAPITALIZE: return str_case(c, str_of(c, v), 2);
	case F_TITLE: return str_case(c, str_of(c, v), 4);
	case F_LENGTH:
	case F_COUNT:
		switch (v->t) {
		case T_STR: return mkint(c, (int64_t)cp_count(v->u.s.s, v->u.s.n));
		case T_LIST:
			if (v->kind == VK_GEN)
				rerr(c, LQ_ERR_INVALID, "object of type 'generator' has no len()");
			return mkint(c, (int64_t)v->u.l.n);
		case T_DICT: case T_NS: return mkint(c, (int64_t)v->u.d->n);
		case T_UNDEF: return mkint(c, 0);
		case T_LOOP: return mkint(c, (int64_t)v->u.loop->n);
		default: rerr(c, LQ_ERR_INVALID, "object of type '%s' has no len()", type_name(v));
		}
	case F_DEFAULT: {
		struct val *d = arg(c, a, 0, "default_value", NULL);
		struct val *b = arg(c, a, 1, "boolean", VBOOL(0));
		if (v->t == T_UNDEF || (truthy(b) && !truthy(v)))
			return d ? d : mkstr(c, "", 0);
		return v;
	}
	case F_FIRST:
	case F_LAST: {
		if (v->t == T_LIST && v->kind == VK_GEN) {
			if (id == F_LAST)
				rerr(c, LQ_ERR_INVALID, "'generator' object is not reversible");
			if (v->hint)
				rerr(c, LQ_ERR_INVALID, "%s", v->hint);
			if (v->consumed >= v->u.l.n)
				return mkundef(c, "No first item, sequence was empty.");
			return v->u.l.v[v->consumed++];
		}
		struct val **it = iter_items(c, v, &n);
		if (!n)
			return mkundef(c, "No %s item, sequence was empty.", id == F_FIRST ? "first" : "last");
		return it[id == F_FIRST ? 0 : n - 1];
	}
	case F_JOIN: {
		struct val *d = arg(c, a, 0, "d", NULL);
		struct val *at = arg(c, a, 1, "attribute", NULL);
		struct val **it = iter_items(c, v, &n);
		struct sb r = { 0 };
		for (size_t i = 0; i < n; i++) {
			if (i && d)
				to_str(c, &r, d, 0);
			to_str(c, &r, at && at->t != T_NONE ? attr_path(c, it[i], at) : it[i], 0);
		}
		return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
	}
	case F_REPLACE: {
		struct val *o = arg(c, a, 0, "old", NULL), *nw = arg(c, a, 1, "new", NULL);
		struct val *cnt = arg(c, a, 2, "count", VNONE);
		if (!o || !nw)
			rerr(c, LQ_ERR_INVALID, "replace needs two arguments");
		return str_replace(c, str_of(c, v), str_of(c, o), str_of(c, nw),
				   cnt->t == T_NONE ? -1 : numi(cnt));
	}
	case F_ITEMS:
		if (v->t == T_UNDEF)
			return as_gen(c, mklist(c, 0), NULL);
		if (v->t != T_DICT)
			return as_gen(c, mklist(c, 0), "Can only get item pairs from a mapping.");
		return as_gen(c, items_of(c, v, NULL), NULL);
	case F_LIST: {
		struct val **it = iter_items(c, v, &n);
		struct val *l = mklist(c, n);
		if (n)
			memcpy(l->u.l.v, it, n * sizeof *it);
		return l;
	}
	case F_REVERSE: {
		if (v->t == T_STR) {
			struct val *st = mkint(c, -1);
			return do_slice(c, v, NULL, NULL, st);
		}
		/* reversed() of a list or dict is an iterator; a generator is not
		   reversible, so jinja2 makes a reversed list of it */
		int gen = v->t == T_LIST && v->kind == VK_GEN;
		struct val **it = iter_items(c, v, &n);
		struct val *l = mklist(c, n);
		for (size_t i = 0; i < n; i++)
			l->u.l.v[i] = it[n - 1 - i];
		return !gen && (v->t == T_LIST || v->t == T_DICT || v->t == T_UNDEF) ? as_gen(c, l, NULL) : l;
	}
	case F_TOJSON: {
		struct jopts o = { 0 };
		o.ascii = truthy(arg(c, a, 0, "ensure_ascii", VBOOL(0)));
		struct val *ind = arg(c, a, 1, "indent", VNONE);
		struct val *seps = arg(c, a, 2, "separators", VNONE);
		o.sort = truthy(arg(c, a, 3, "sort_keys", VBOOL(0)));
		char *spaces = NULL;
		if (ind->t == T_INT || ind->t == T_BOOL) {
			int64_t k = numi(ind);
			if (k < 0)
				k = 0;
			if (k > 1024)
				rerr(c, LQ_ERR_INVALID, "tojson: indent too large");
			spaces = ralloc(c, (size_t)k + 1);
			memset(spaces, ' ', (size_t)k);
			o.indent = spaces;
			o.indent_n = (size_t)k;
		} else if (ind->t == T_STR) {
			o.indent = ind->u.s.s;
			o.indent_n = ind->u.s.n;
		} else if (ind->t != T_NONE) {
			rerr(c, LQ_ERR_INVALID, "tojson: indent must be an integer or a string");
		}
		o.isep = o.indent ? "," : ", ";
		o.isep_n = strlen(o.isep);
		o.ksep = ": ";
		o.ksep_n = 2;
		if (seps->t != T_NONE) {
			if (seps->t != T_LIST || seps->u.l.n != 2 || seps->u.l.v[0]->t != T_STR ||
			    seps->u.l.v[1]->t != T_STR)
				rerr(c, LQ_ERR_INVALID, "tojson: separators must be a pair of strings");
			o.isep = seps->u.l.v[0]->u.s.s;
			o.isep_n = seps->u.l.v[0]->u.s.n;
			o.ksep = seps->u.l.v[1]->u.s.s;
			o.ksep_n = seps->u.l.v[1]->u.s.n;
		}
		struct sb r = { 0 };
		to_json(c, &r, v, &o, 0);
		return sb_val(c, &r);
	}
	case F_INT: {
		struct val *d = arg(c, a, 0, "default", NULL);
		if (v->t == T_UNDEF) /* int(Undefined) raises UndefinedError */
			undef_fail(c, v, NULL);
		int64_t iv;
		double fv;
		switch (v->t) {
		case T_INT: return v;
		case T_BOOL: return mkint(c, v->u.b);
		case T_FLOAT:
			if (isfinite(v->u.f) && fabs(v->u.f) < 9.2e18)
				return mkint(c, (int64_t)v->u.f);
			if (isfinite(v->u.f))
				rerr(c, LQ_ERR_UNSUPPORTED, "integer overflow (values beyond 64 bits are not supported)");
			break;
		case T_STR:
			if (parse_int_str(v->u.s.s, v->u.s.n, &iv))
				return mkint(c, iv);
			if (parse_float_str(v->u.s.s, v->u.s.n, &fv) && isfinite(fv) && fabs(fv) < 9.2e18)
				return mkint(c, (int64_t)fv);
			if (parse_float_str(v->u.s.s, v->u.s.n, &fv) && isfinite(fv))
				rerr(c, LQ_ERR_UNSUPPORTED, "integer overflow (values beyond 64 bits are not supported)");
			break;
		default: break;
		}
		return d ? d : mkint(c, 0);
	}
	case F_FLOAT: {
		struct val *d = arg(c, a, 0, "default", NULL);
		if (v->t == T_UNDEF)
			undef_fail(c, v, NULL);
		double fv;
		if (is_num(v))
			return mkfloat(c, numf(v));
		if (v->t == T_STR && parse_float_str(v->u.s.s, v->u.s.n, &fv))
			return mkfloat(c, fv);
		return d ? d : mkfloat(c, 0);
	}
	case F_ABS:
		if (v->t == T_INT)
			return mkint(c, v->u.i < 0 ? -v->u.i : v->u.i);
		if (v->t == T_BOOL)
			return mkint(c, v->u.b);
		if (v->t == T_FLOAT)
			return mkfloat(c, fabs(v->u.f));
		rerr(c, LQ_ERR_INVALID, "bad operand type for abs(): '%s'", type_name(v));
	case F_ROUND: {
		struct val *pr = arg(c, a, 0, "precision", NULL);
		struct val *m = arg(c, a, 1, "method", NULL);
		int64_t p = pr ? numi(pr) : 0;
		if (!is_num(v))
			rerr(c, LQ_ERR_INVALID, "round needs a number");
		double x = numf(v), f = pow(10, (double)p), r;
		if (m && streq(m, "floor"))
			r = floor(x * f) / f;
		else if (m && streq(m, "ceil"))
			r = ceil(x * f) / f;
		else
			r = nearbyint(x * f) / f;
		if (v->t != T_FLOAT && !m && !pr)
			return mkint(c, (int64_t)r);
		return mkfloat(c, r);
	}
	case F_ESCAPE: {
		struct val *sv = str_of(c, v);
		struct sb r = { 0 };
		for (size_t i = 0; i < sv->u.s.n; i++) {
			char ch = sv->u.s.s[i];
			switch (ch) {
			case '&': sb_puts(c, &r, "&amp;"); break;
			case '<': sb_puts(c, &r, "&lt;"); break;
			case '>': sb_puts(c, &r, "&gt;"); break;
			case '"': sb_puts(c, &r, "&#34;"); break;
			case '\'': sb_puts(c, &r, "&#39;"); break;
			default: sb_put(c, &r, &ch, 1);
			}
		}
		return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
	}
	case F_INDENT: {
		struct val *w = arg(c, a, 0, "width", mkint(c, 4));
		int first = truthy(arg(c, a, 1, "first", VBOOL(0)));
		int blank = truthy(arg(c, a, 2, "blank", VBOOL(0)));
		struct val *ind;
		if (w->t == T_STR) {
			ind = w;
		} else {
			int64_t k = numi(w);
			if (k < 0)
				k = 0;
			if (k > 1024)
				rerr(c, LQ_ERR_INVALID, "indent: width too large");
			char *sp = ralloc(c, (size_t)k + 1);
			memset(sp, ' ', (size_t)k);
			ind = mkstr_ref(c, sp, (size_t)k);
		}
		/* jinja2: lines = (s + "\n").splitlines(); the first line is not indented,
		   empty lines only with blank=True */
		struct val *sv = str_of(c, v);
		struct sb r = { 0 };
		if (first)
			sb_put(c, &r, ind->u.s.s, ind->u.s.n);
		const char *p = sv->u.s.s;
		size_t len = sv->u.s.n, i = 0;
		for (size_t line = 0;; line++) {
			size_t j = i;
			while (j < len && p[j] != '\n' && p[j] != '\r')
				j++;
			if (line > 0) {
				sb_puts(c, &r, "\n");
				if (blank || j > i)
					sb_put(c, &r, ind->u.s.s, ind->u.s.n);
			}
			sb_put(c, &r, p + i, j - i);
			if (j >= len)
				break;
			i = j + (p[j] == '\r' && j + 1 < len && p[j + 1] == '\n' ? 2 : 1);
			step(c);
		}
		return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
	}
	case F_ATTR: {
		struct val *nm = arg(c, a, 0, "name", NULL);
		if (!nm || nm->t != T_STR)
			rerr(c, LQ_ERR_INVALID, "attr needs a name");
		char *z = ralloc(c, nm->u.s.n + 1);
		memcpy(z, nm->u.s.s, nm->u.s.n);
		return get_attr(c, v, z);
	}
	case F_SELECT: return select_like(c, v, a, 0, 0);
	case F_REJECT: return select_like(c, v, a, 0, 1);
	case F_SELECTATTR: return select_like(c, v, a, 1, 0);
	case F_REJECTATTR: return select_like(c, v, a, 1, 1);
	case F_MAP: {
		if (!truthy(v))
			return as_gen(c, mklist(c, 0), NULL);
		if (!iterable(v) || (v->t == T_LIST && v->hint))
			return not_iterable_gen(c, v);
		struct val **it = iter_items(c, v, &n);
		struct val *at = arg(c, a, 1000, "attribute", NULL);
		struct vb r = { 0 };
		if (at) {
			struct val *d = arg(c, a, 1000, "default", NULL);
			for (size_t i = 0; i < n; i++) {
				struct val *x = attr_path(c, it[i], at);
				vb_push(c, &r, x->t == T_UNDEF && d ? d : x);
			}
			return as_gen(c, vb_list(c, &r), NULL);
		}
		if (!a->npos || a->pos[0]->t != T_STR)
			rerr(c, LQ_ERR_INVALID, "map needs a filter name or attribute=");
		int fid = find_filter(a->pos[0]);
		if (fid < 0)
			rerr(c, LQ_ERR_UNSUPPORTED, "map: no filter named '%.*s'", (int)a->pos[0]->u.s.n,
			     a->pos[0]->u.s.s);
		struct args fa = *a;
		fa.pos = a->pos + 1;
		fa.npos = a->npos - 1;
		for (size_t i = 0; i < n; i++) {
			step(c);
			vb_push(c, &r, apply_filter(c, fid, it[i], &fa));
		}
		return as_gen(c, vb_list(c, &r), NULL);
	}
	case F_UNIQUE: {
		if (!iterable(v) || (v->t == T_LIST && v->hint))
			return not_iterable_gen(c, v);
		int cs = truthy(arg(c, a, 0, "case_sensitive", VBOOL(0)));
		struct val *at = arg(c, a, 1, "attribute", NULL);
		struct val **it = iter_items(c, v, &n);
		struct vb r = { 0 }, seen = { 0 };
		for (size_t i = 0; i < n; i++) {
			struct val *k = lower_if_str(c, at ? attr_path(c, it[i], at) : it[i], cs);
			int dup = 0;
			for (size_t j = 0; j < seen.n && !dup; j++) {
				step(c);
				dup = val_eq(c, seen.v[j], k, 0);
			}
			if (!dup) {
				vb_push(c, &seen, k);
				vb_push(c, &r, it[i]);
			}
		}
		return as_gen(c, vb_list(c, &r), NULL);
	}
	case F_SORT:
	case F_MIN:
	case F_MAX: {
		int rev = id == F_SORT ? truthy(arg(c, a, 0, "reverse", VBOOL(0))) : 0;
		int cs = truthy(arg(c, a, id == F_SORT ? 1 : 0, "case_sensitive", VBOOL(0)));
		struct val *at = arg(c, a, id == F_SORT ? 2 : 1, "attribute", NULL);
		struct val **it = iter_items(c, v, &n);
		struct val **keys = ralloc(c, (n ? n : 1) * sizeof *keys);
		struct val **out = ralloc(c, (n ? n : 1) * sizeof *out);
		for (size_t i = 0; i < n; i++) {
			keys[i] = lower_if_str(c, at ? attr_path(c, it[i], at) : it[i], cs);
			out[i] = it[i];
		}
		if (id != F_SORT) {
			if (!n)
				return mkundef(c, "No aggregated item, sequence was empty.");
			size_t best = 0;
			for (size_t i = 1; i < n; i++)
				if (val_cmp(c, id == F_MIN ? OP_LT : OP_GT, keys[i], keys[best], 0))
					best = i;
			return out[best];
		}
		for (size_t i = 1; i < n; i++) /* stable insertion sort */
			for (size_t j = i; j > 0; j--) {
				step(c);
				int gt = rev ? val_cmp(c, OP_LT, keys[j - 1], keys[j], 0)
					     : val_cmp(c, OP_GT, keys[j - 1], keys[j], 0);
				if (!gt)
					break;
				struct val *t = keys[j]; keys[j] = keys[j - 1]; keys[j - 1] = t;
				t = out[j]; out[j] = out[j - 1]; out[j - 1] = t;
			}
		struct val *l = mkv(c, T_LIST);
		l->u.l.v = out;
		l->u.l.n = n;
		return l;
	}
	case F_FORMAT: {
		/* jinja2: soft_str(value) % (kwargs or args) */
		if (a->npos && a->nkw)
			rerr(c, LQ_ERR_INVALID, "can't handle positional and keyword arguments at the same time");
		struct val *x;
		if (a->nkw) {
			x = mkdict(c, T_DICT);
			for (size_t k = 0; k < a->nkw; k++)
				dict_set(c, x->u.d, mkstr(c, a->kwn[k], strlen(a->kwn[k])), a->kwv[k]);
		} else {
			x = mklist(c, a->npos);
			x->tuple = 1;
			for (size_t k = 0; k < a->npos; k++)
				x->u.l.v[k] = a->pos[k];
		}
		return py_format(c, str_of(c, v), x);
	}
	case F_SUM: {
		struct val *at = arg(c, a, 0, "attribute", NULL);
		struct val *acc = arg(c, a, 1, "start", mkint(c, 0));
		struct val **it = iter_items(c, v, &n);
		for (size_t i = 0; i < n; i++)
			acc = arith(c, OP_ADD, acc, at ? attr_path(c, it[i], at) : it[i]);
		return acc;
	}
	default:
		rerr(c, LQ_ERR_UNSUPPORTED, "filter '%s' is not supported", a->what);
	}
}

/* ------------------------------------------------------------ calls */

static void exec_list(struct ctx *c, struct scope *sc, const struct nlist *l, struct sb *out);

static struct val *call_macro(struct ctx *c, struct val *m, const struct args *a)
{
	const struct node *def = m->u.m.def;
	if (++c->macro_depth > 64)
		rerr(c, LQ_ERR_INVALID, "macro calls nested too deeply (recursion?)");
	struct scope *sc = new_scope(c, m->u.m.sc);
	if (a->npos > def->ntargets)
		rerr(c, LQ_ERR_INVALID, "macro '%s' takes not more than %zu argument(s)", def->name, def->ntargets);
	for (size_t i = 0; i < def->ntargets; i++) {
		struct val *v = i < a->npos ? a->pos[i] : NULL;
		for (size_t k = 0; k < a->nkw && !v; k++)
			if (!strcmp(a->kwn[k], def->targets[i]))
				v = a->kwv[k];
		if (!v) {
			const struct node *d = def->kwv.v[i];
			v = d ? eval(c, sc, d) : mkundef(c, "parameter '%s' was not provided", def->targets[i]);
		}
		set_var(c, sc, def->targets[i], v);
	}
	for (size_t k = 0; k < a->nkw; k++) {
		size_t i;
		for (i = 0; i < def->ntargets; i++)
			if (!strcmp(a->kwn[k], def->targets[i]))
				break;
		if (i == def->ntargets)
			rerr(c, LQ_ERR_INVALID, "macro '%s' takes no keyword argument '%s'", def->name, a->kwn[k]);
	}
	struct sb out = { 0 };
	int saved_line = c->line;
	exec_list(c, sc, &def->body, &out);
	c->line = saved_line;
	c->brk = 0;
	c->macro_depth--;
	return out.n ? sb_val(c, &out) : mkstr(c, "", 0);
}

static struct val *call_func(struct ctx *c, struct val *f, const struct args *a)
{
	struct val *self = f->u.fn.self;
	size_t sn;
	const char *s;
	switch (f->u.fn.id) {
	case G_NAMESPACE:
	case G_DICT: {
		struct val *d = mkdict(c, f->u.fn.id == G_NAMESPACE ? T_NS : T_DICT);
		for (size_t i = 0; i < a->npos; i++) {
			struct val *x = a->pos[i];
			if (x->t == T_DICT || x->t == T_NS) {
				for (size_t k = 0; k < x->u.d->n; k++)
					dict_set(c, d->u.d, x->u.d->k[k], x->u.d->v[k]);
			} else {
				rerr(c, LQ_ERR_INVALID, "%s() positional arguments must be mappings", a->what);
			}
		}
		for (size_t k = 0; k < a->nkw; k++)
			dict_set(c, d->u.d, mkstr(c, a->kwn[k], strlen(a->kwn[k])), a->kwv[k]);
		if (d->t == T_NS)
			for (size_t k = 0; k < d->u.d->n; k++)
				if (d->u.d->k[k]->t == T_STR && d->u.d->k[k]->u.s.n && d->u.d->k[k]->u.s.s[0] == '_')
					rerr(c, LQ_ERR_INVALID, "chat templates cannot store underscore-prefixed attributes on a namespace");
		return d;
	}
	case G_RAISE: {
		struct val *m = arg(c, a, 0, "message", mkstr(c, "", 0));
		struct val *ms = str_of(c, m);
		lq_fail(c->err, LQ_ERR_INVALID, "chat template error (line %d): %.*s", c->line,
			(int)(ms->u.s.n > 900 ? 900 : ms->u.s.n), ms->u.s.s);
		c->code = LQ_ERR_INVALID;
		longjmp(c->jb, 1);
	}
	case G_STRFTIME: {
		s = arg_str(c, a, 0, "format", &sn);
		if (!s)
			rerr(c, LQ_ERR_INVALID, "strftime_now needs a format string");
		char fmt[256], buf[512];
		if (sn >= sizeof fmt || memchr(s, 0, sn))
			rerr(c, LQ_ERR_INVALID, "strftime_now: format too long");
		memcpy(fmt, s, sn);
		fmt[sn] = 0;
		struct tm tm;
		time_t now = c->now;
		localtime_r(&now, &tm);
		size_t k = strftime(buf, sizeof buf, fmt, &tm);
		return mkstr(c, buf, k);
	}
	case G_RANGE: {
		int64_t lo = 0, hi, st = 1;
		for (size_t i = 0; i < a->npos; i++)
			if (a->pos[i]->t != T_INT && a->pos[i]->t != T_BOOL)
				rerr(c, LQ_ERR_INVALID, "range() arguments must be integers, not %s", type_name(a->pos[i]));
		if (a->npos == 1) {
			hi = numi(a->pos[0]);
		} else if (a->npos == 2 || a->npos == 3) {
			lo = numi(a->pos[0]);
			hi = numi(a->pos[1]);
			if (a->npos == 3)
				st = numi(a->pos[2]);
		} else {
			rerr(c, LQ_ERR_INVALID, "range expected 1 to 3 arguments");
		}
		if (st == 0)
			rerr(c, LQ_ERR_INVALID, "range() arg 3 must not be zero");
		double cnt = st > 0 ? ceil(((double)hi - (double)lo) / (double)st) : ceil(((double)lo - (double)hi) / (double)-st);
		if (cnt < 0)
			cnt = 0;
		if (cnt > MAX_RANGE)
			rerr(c, LQ_ERR_INVALID, "range too big: the sandbox blocks ranges larger than %d", MAX_RANGE);
		struct val *l = mklist(c, (size_t)cnt);
		for (size_t i = 0; i < (size_t)cnt; i++)
			l->u.l.v[i] = mkint(c, lo + (int64_t)i * st);
		return l;
	}
	case M_CYCLE: {
		if (!a->npos)
			rerr(c, LQ_ERR_INVALID, "no items for cycling given");
		return a->pos[self->u.loop->i % a->npos];
	}
	case M_GET: {
		struct val *k = arg(c, a, 0, "key", NULL);
		if (!k)
			rerr(c, LQ_ERR_INVALID, "get expected at least 1 argument");
		struct val *r = dict_get(c, self->u.d, k);
		return r ? r : arg(c, a, 1, "default", VNONE);
	}
	case M_ITEMS: {
		struct val *l = items_of(c, self, NULL);
		l->kind = VK_ITEMS;
		return l;
	}
	case M_KEYS: {
		struct val *l = mklist(c, self->u.d->n);
		if (self->u.d->n)
			memcpy(l->u.l.v, self->u.d->k, self->u.d->n * sizeof *l->u.l.v);
		l->kind = VK_KEYS;
		return l;
	}
	case M_VALUES: {
		struct val *l = mklist(c, self->u.d->n);
		if (self->u.d->n)
			memcpy(l->u.l.v, self->u.d->v, self->u.d->n * sizeof *l->u.l.v);
		l->kind = VK_VALUES;
		return l;
	}
	case M_LCOUNT:
	case M_LINDEX: {
		struct val *x = arg(c, a, 0, "value", NULL);
		if (!x)
			rerr(c, LQ_ERR_INVALID, "%s() takes exactly one argument", a->what);
		int64_t k = 0;
		for (size_t i = 0; i < self->u.l.n; i++)
			if (val_eq(c, self->u.l.v[i], x, 0)) {
				if (f->u.fn.id == M_LINDEX)
					return mkint(c, (int64_t)i);
				k++;
			}
		if (f->u.fn.id == M_LINDEX)
			rerr(c, LQ_ERR_INVALID, "value is not in list");
		return mkint(c, k);
	}
	case M_STRIP:
	case M_LSTRIP:
	case M_RSTRIP:
		s = arg_str(c, a, 0, "chars", &sn);
		return str_strip(c, self, f->u.fn.id == M_STRIP ? 3 : f->u.fn.id == M_LSTRIP ? 1 : 2, s, s ? sn : 0);
	case M_SPLIT:
	case M_RSPLIT: {
		s = arg_str(c, a, 0, "sep", &sn);
		struct val *mx = arg(c, a, 1, "maxsplit", mkint(c, -1));
		return str_split(c, self, s, s ? sn : 0, numi(mx), f->u.fn.id == M_RSPLIT);
	}
	case M_SPLITLINES: {
		struct vb r = { 0 };
		const char *p = self->u.s.s;
		size_t len = self->u.s.n, i = 0;
		while (i < len) {
			size_t j = i;
			while (j < len && p[j] != '\n' && p[j] != '\r')
				j++;
			vb_push(c, &r, mkstr_ref(c, p + i, j - i));
			if (j >= len)
				break;
			i = j + (p[j] == '\r' && j + 1 < len && p[j + 1] == '\n' ? 2 : 1);
		}
		return vb_list(c, &r);
	}
	case M_STARTSWITH:
	case M_ENDSWITH: {
		struct val *x = arg(c, a, 0, "prefix", NULL);
		if (!x)
			rerr(c, LQ_ERR_INVALID, "%s takes at least 1 argument", a->what);
		return VBOOL(affix(c, self, x, f->u.fn.id == M_ENDSWITH));
	}
	case M_UPPER: return str_case(c, self, 1);
	case M_LOWER: return str_case(c, self, 0);
	case M_TITLE: return str_case(c, self, 3);
	case M_CAPITALIZE: return str_case(c, self, 2);
	case M_REPLACE: {
		struct val *o = arg(c, a, 0, "old", NULL), *nw = arg(c, a, 1, "new", NULL);
		struct val *cnt = arg(c, a, 2, "count", mkint(c, -1));
		if (!o || !nw || o->t != T_STR || nw->t != T_STR)
			rerr(c, LQ_ERR_INVALID, "replace() needs two string arguments");
		return str_replace(c, self, o, nw, numi(cnt));
	}
	case M_FIND:
	case M_RFIND:
	case M_COUNT: {
		struct val *x = arg(c, a, 0, "sub", NULL);
		if (!x || x->t != T_STR)
			rerr(c, LQ_ERR_INVALID, "%s() needs a string argument", a->what);
		const char *h = self->u.s.s;
		size_t hn = self->u.s.n, xn = x->u.s.n;
		if (f->u.fn.id == M_COUNT) {
			if (!xn)
				return mkint(c, (int64_t)cp_count(h, hn) + 1);
			int64_t k = 0;
			for (size_t i = 0; i + xn <= hn;) {
				const char *q = memmem(h + i, hn - i, x->u.s.s, xn);
				if (!q)
					break;
				k++;
				i = (size_t)(q - h) + xn;
			}
			return mkint(c, k);
		}
		int64_t pos = -1;
		for (size_t i = 0; i + xn <= hn; i++)
			if (memcmp(h + i, x->u.s.s, xn) == 0) {
				pos = (int64_t)i;
				if (f->u.fn.id == M_FIND)
					break;
			}
		return mkint(c, pos < 0 ? -1 : (int64_t)cp_count(h, (size_t)pos));
	}
	case M_JOIN: {
		struct val *x = arg(c, a, 0, "iterable", NULL);
		if (!x)
			rerr(c, LQ_ERR_INVALID, "join() takes exactly one argument");
		size_t n;
		struct val **it = iter_items(c, x, &n);
		struct sb r = { 0 };
		for (size_t i = 0; i < n; i++) {
			if (it[i]->t != T_STR)
				rerr(c, LQ_ERR_INVALID, "sequence item %zu: expected str instance, %s found", i, type_name(it[i]));
			if (i)
				sb_put(c, &r, self->u.s.s, self->u.s.n);
			sb_put(c, &r, it[i]->u.s.s, it[i]->u.s.n);
		}
		return r.n ? sb_val(c, &r) : mkstr(c, "", 0);
	}
	case M_ISDIGIT:
	case M_ISALPHA:
	case M_ISSPACE:
	case M_ISALNUM:
	case M_ISUPPER:
	case M_ISLOWER: {
		int id = f->u.fn.id;
		if (id == M_ISUPPER || id == M_ISLOWER) {
			struct args ta = { 0 };
			ta.what = a->what;
			return VBOOL(run_test(c, id == M_ISUPPER ? X_UPPER : X_LOWER, self, &ta));
		}
		if (!self->u.s.n)
			return VBOOL(0);
		for (size_t i = 0; i < self->u.s.n;) {
			int32_t cp;
			i += u8dec(self->u.s.s + i, self->u.s.n - i, &cp);
			utf8proc_category_t cat = utf8proc_category(cp);
			int isdig = cat == UTF8PROC_CATEGORY_ND;
			int isal = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
			int ok = id == M_ISDIGIT ? isdig : id == M_ISALPHA ? isal : id == M_ISSPACE ? py_space(cp) : (isdig || isal || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO);
			if (!ok)
				return VBOOL(0);
		}
		return VBOOL(1);
	}
	default:
		rerr(c, LQ_ERR_UNSUPPORTED, "function is not supported");
	}
}

/* evaluate call arguments of node n (positional in body, keyword in kwv/kwn) */
static void eval_args(struct ctx *c, struct scope *sc, const struct node *n, struct args *a, struct val *first)
{
	size_t np = n->body.n + (first ? 1 : 0);
	a->pos = ralloc(c, (np ? np : 1) * sizeof *a->pos);
	a->npos = 0;
	if (first)
		a->pos[a->npos++] = first;
	for (size_t i = 0; i < n->body.n; i++)
		a->pos[a->npos++] = eval(c, sc, n->body.v[i]);
	a->nkw = n->kwv.n;
	a->kwn = n->kwn;
	a->kwv = ralloc(c, (a->nkw ? a->nkw : 1) * sizeof *a->kwv);
	for (size_t i = 0; i < a->nkw; i++)
		a->kwv[i] = eval(c, sc, n->kwv.v[i]);
}

/* ------------------------------------------------------------ eval */

static struct val *eval_node(struct ctx *c, struct scope *sc, const struct node *n);

/* bounds the C stack: expressions nest, and macros calls nest them further */
static struct val *eval(struct ctx *c, struct scope *sc, const struct node *n)
{
	if (++c->edepth > 2000)
		rerr(c, LQ_ERR_INVALID, "expressions nested too deeply");
	struct val *v = eval_node(c, sc, n);
	c->edepth--;
	return v;
}

static struct val *eval_node(struct ctx *c, struct scope *sc, const struct node *n)
{
	step(c);
	c->line = n->line;
	switch (n->kind) {
	case E_LIT:
		return n->lit;
	case E_NAME: {
		struct val *v = lookup(sc, n->name);
		return v ? v : mkundef(c, "'%s' is undefined", n->name);
	}
	case E_ATTR:
		return get_attr(c, eval(c, sc, n->a), n->name);
	case E_ITEM: {
		struct val *o = eval(c, sc, n->a);
		return get_item(c, o, eval(c, sc, n->b));
	}
	case E_SLICE: {
		struct val *o = eval(c, sc, n->a);
		struct val *a = n->b ? eval(c, sc, n->b) : NULL;
		struct val *b = n->c ? eval(c, sc, n->c) : NULL;
		struct val *st = n->body.n ? eval(c, sc, n->body.v[0]) : NULL;
		return do_slice(c, o, a, b, st);
	}
	case E_CALL: {
		struct val *f = eval(c, sc, n->a);
		struct args a = { 0 };
		a.what = n->a->kind == E_ATTR || n->a->kind == E_NAME ? n->a->name : "function";
		eval_args(c, sc, n, &a, NULL);
		c->line = n->line;
		if (f->t == T_FUNC)
			return call_func(c, f, &a);
		if (f->t == T_MACRO)
			return call_macro(c, f, &a);
		if (f->t == T_UNDEF)
			undef_fail(c, f, NULL);
		rerr(c, LQ_ERR_INVALID, "'%s' object is not callable", type_name(f));
	}
	case E_FILTER: {
		struct val *v = eval(c, sc, n->a);
		struct args a = { 0 };
		a.what = n->name;
		eval_args(c, sc, n, &a, NULL);
		c->line = n->line;
		if (n->fid < 0)
			rerr(c, LQ_ERR_UNSUPPORTED, "no filter named '%s' (not supported)", n->name);
		return apply_filter(c, n->fid, v, &a);
	}
	case E_TEST: {
		struct val *v = eval(c, sc, n->a);
		struct args a = { 0 };
		a.what = n->name;
		eval_args(c, sc, n, &a, NULL);
		c->line = n->line;
		if (n->fid < 0)
			rerr(c, LQ_ERR_UNSUPPORTED, "no test named '%s' (not supported)", n->name);
		int r = run_test_odd(c, n->fid, v, &a);
		return VBOOL(n->neg ? !r : r);
	}
	case E_NEG:
	case E_POS: {
		struct val *v = eval(c, sc, n->a);
		if (v->t == T_UNDEF)
			undef_fail(c, v, NULL);
		if (!is_num(v))
			rerr(c, LQ_ERR_INVALID, "bad operand type for unary %c: '%s'", n->kind == E_NEG ? '-' : '+', type_name(v));
		if (n->kind == E_POS)
			return v->t == T_BOOL ? mkint(c, v->u.b) : v;
		if (v->t == T_FLOAT)
			return mkfloat(c, -v->u.f);
		if (numi(v) == INT64_MIN)
			rerr(c, LQ_ERR_UNSUPPORTED, "integer overflow");
		return mkint(c, -numi(v));
	}
	case E_NOT:
		return VBOOL(!truthy(eval(c, sc, n->a)));
	case E_BIN: {
		struct val *a = eval(c, sc, n->a);
		struct val *b = eval(c, sc, n->b);
		c->line = n->line;
		return arith(c, n->op, a, b);
	}
	case E_AND: {
		struct val *a = eval(c, sc, n->a);
		return truthy(a) ? eval(c, sc, n->b) : a;
	}
	case E_OR: {
		struct val *a = eval(c, sc, n->a);
		return truthy(a) ? a : eval(c, sc, n->b);
	}
	case E_COND:
		if (truthy(eval(c, sc, n->a)))
			return eval(c, sc, n->b);
		if (n->c)
			return eval(c, sc, n->c);
		return mkundef(c, "the inline if-expression on line %d evaluated to false and no else section was defined.", n->line);
	case E_LIST:
	case E_TUPLE: {
		struct val *l = mklist(c, n->body.n);
		l->tuple = n->kind == E_TUPLE;
		for (size_t i = 0; i < n->body.n; i++)
			l->u.l.v[i] = eval(c, sc, n->body.v[i]);
		return l;
	}
	case E_DICT: {
		struct val *d = mkdict(c, T_DICT);
		for (size_t i = 0; i < n->body.n; i++) {
			struct val *k = eval(c, sc, n->body.v[i]);
			if (k->t == T_LIST && !k->tuple)
				rerr(c, LQ_ERR_INVALID, "unhashable type: 'list'");
			if (k->t == T_DICT)
				rerr(c, LQ_ERR_INVALID, "unhashable type: 'dict'");
			dict_set(c, d->u.d, k, eval(c, sc, n->kwv.v[i]));
		}
		return d;
	}
	case E_CMP: {
		struct val *a = eval(c, sc, n->a);
		struct val *b = eval(c, sc, n->b);
		c->line = n->line;
		switch (n->op) {
		case OP_EQ: return VBOOL(val_eq(c, a, b, 0));
		case OP_NE: return VBOOL(!val_eq(c, a, b, 0));
		case OP_IN: return VBOOL(contains(c, b, a));
		case OP_NOTIN: return VBOOL(!contains(c, b, a));
		default: return VBOOL(val_cmp(c, n->op, a, b, 0));
		}
	}
	default:
		rerr(c, LQ_ERR_UNSUPPORTED, "unsupported expression");
	}
}

/* ------------------------------------------------------------ statements */

static void assign(struct ctx *c, struct scope *sc, const struct node *n, struct val *v)
{
	if (n->name) { /* ns.attr = v */
		struct val *ns = lookup(sc, n->targets[0]);
		if (!ns || ns->t != T_NS)
			rerr(c, LQ_ERR_INVALID, "cannot assign attribute on non-namespace object '%s'", n->targets[0]);
		if (n->name[0] == '_')
			rerr(c, LQ_ERR_INVALID, "chat templates cannot store underscore-prefixed attributes on a namespace");
		dict_set(c, ns->u.d, mkstr(c, n->name, strlen(n->name)), v);
		return;
	}
	if (!n->neg) {
		set_var(c, sc, n->targets[0], v);
		return;
	}
	size_t cnt;
	struct val **it = iter_items(c, v, &cnt);
	if (cnt != n->ntargets)
		rerr(c, LQ_ERR_INVALID, cnt > n->ntargets ? "too many values to unpack (expected %zu)"
					     : "not enough values to unpack (expected %zu)", n->ntargets);
	for (size_t i = 0; i < cnt; i++)
		set_var(c, sc, n->targets[i], it[i]);
}

static void exec_node(struct ctx *c, struct scope *sc, const struct node *n, struct sb *out)
{
	step(c);
	c->line = n->line;
	switch (n->kind) {
	case N_TEXT:
		sb_put(c, out, n->lit->u.s.s, n->lit->u.s.n);
		break;
	case N_OUT:
		to_str(c, out, eval(c, sc, n->a), 0);
		break;
	case N_IF:
		if (truthy(eval(c, sc, n->a)))
			exec_list(c, sc, &n->body, out);
		else
			exec_list(c, sc, &n->els, out);
		break;
	case N_FOR: {
		struct val *it = eval(c, sc, n->a);
		size_t cnt;
		struct val **items = iter_items(c, it, &cnt);
		if (n->b) { /* "for x in y if cond": filter first, loop.* counts the kept items */
			struct vb kept = { 0 };
			for (size_t i = 0; i < cnt; i++) {
				struct scope *fs = new_scope(c, sc);
				assign(c, fs, n, items[i]);
				if (truthy(eval(c, fs, n->b)))
					vb_push(c, &kept, items[i]);
			}
			items = kept.v;
			cnt = kept.n;
		}
		if (!cnt) {
			exec_list(c, sc, &n->els, out);
			break;
		}
		struct loopstate *L = ralloc(c, sizeof *L);
		L->items = items;
		L->n = cnt;
		L->depth = 1;
		struct val *lv = mkv(c, T_LOOP);
		lv->u.loop = L;
		for (size_t i = 0; i < cnt; i++) {
			L->i = i;
			struct scope *is = new_scope(c, sc);
			set_var(c, is, "loop", lv);
			assign(c, is, n, items[i]);
			exec_list(c, is, &n->body, out);
			if (c->brk == 1) {
				c->brk = 0;
				break;
			}
			c->brk = 0;
		}
		break;
	}
	case N_SET:
		assign(c, sc, n, eval(c, sc, n->a));
		break;
	case N_SETBLOCK: {
		struct sb cap = { 0 };
		exec_list(c, sc, &n->body, &cap);
		assign(c, sc, n, cap.n ? sb_val(c, &cap) : mkstr(c, "", 0));
		break;
	}
	case N_MACRO: {
		struct val *m = mkv(c, T_MACRO);
		m->u.m.def = n;
		m->u.m.sc = sc;
		set_var(c, sc, n->name, m);
		break;
	}
	case N_BREAK:
	case N_CONTINUE:
		if (!lookup(sc, "loop") || lookup(sc, "loop")->t != T_LOOP)
			rerr(c, LQ_ERR_INVALID, "'%s' outside of a loop", n->kind == N_BREAK ? "break" : "continue");
		c->brk = n->kind == N_BREAK ? 1 : 2;
		break;
	case N_BLOCK:
		exec_list(c, sc, &n->body, out);
		break;
	case N_WITH: {
		/* the values are evaluated in the outer scope, then bound in a new one */
		struct val **vals = ralloc(c, (n->ntargets ? n->ntargets : 1) * sizeof *vals);
		for (size_t i = 0; i < n->ntargets; i++)
			vals[i] = eval(c, sc, n->kwv.v[i]);
		struct scope *ws = new_scope(c, sc);
		for (size_t i = 0; i < n->ntargets; i++)
			set_var(c, ws, n->targets[i], vals[i]);
		exec_list(c, ws, &n->body, out);
		break;
	}
	default:
		rerr(c, LQ_ERR_UNSUPPORTED, "unsupported statement");
	}
}

static void exec_list(struct ctx *c, struct scope *sc, const struct nlist *l, struct sb *out)
{
	if (++c->depth > MAX_DEPTH)
		rerr(c, LQ_ERR_INVALID, "template nested too deeply");
	for (size_t i = 0; i < l->n && !c->brk; i++)
		exec_node(c, sc, l->v[i], out);
	c->depth--;
}

/* ------------------------------------------------------------ entry */

static struct val *json_arg(struct ctx *c, const char *text, const char *what)
{
	json_t *j = parse_json(c, text, strlen(text), what);
	struct val *v = from_json(c, j, 0);
	json_decref(j);
	c->held = NULL;
	return v;
}

static void render_body(struct ctx *c, const struct lq_template *t, const char *messages_json,
			size_t messages_len, const struct lq_template_vars *vars, struct sb *o)
{
	struct scope *g = new_scope(c, NULL);
	c->globals = g;
	set_var(c, g, "namespace", mkfunc(c, G_NAMESPACE, NULL));
	set_var(c, g, "dict", mkfunc(c, G_DICT, NULL));
	set_var(c, g, "raise_exception", mkfunc(c, G_RAISE, NULL));
	set_var(c, g, "strftime_now", mkfunc(c, G_STRFTIME, NULL));
	set_var(c, g, "range", mkfunc(c, G_RANGE, NULL));
	/* messages: drop null-valued keys, alias reasoning fields (as transformers) */
	json_t *jm = parse_json(c, messages_json ? messages_json : "", messages_len, "messages");
	if (!json_is_array(jm))
		rerr(c, LQ_ERR_INVALID, "messages must be a JSON array of message objects");
	if (json_array_size(jm) == 0)
		rerr(c, LQ_ERR_INVALID, "cannot apply a chat template to an empty conversation");
	struct val *msgs = mklist(c, json_array_size(jm));
	for (size_t i = 0; i < json_array_size(jm); i++) {
		json_t *m = json_array_get(jm, i);
		if (!json_is_object(m))
			rerr(c, LQ_ERR_INVALID, "messages[%zu] is not an object", i);
		struct val *d = mkdict(c, T_DICT);
		const char *k;
		json_t *x;
		json_object_foreach(m, k, x) {
			if (!json_is_null(x))
				dict_set(c, d->u.d, mkstr(c, k, strlen(k)), from_json(c, x, 1));
		}
		static const char *const rf[] = { "reasoning_content", "thinking", "reasoning" };
		struct val *rv = NULL;
		for (int r = 0; r < 3 && !rv; r++)
			rv = dict_gets(c, d->u.d, rf[r]);
		if (rv) {
			struct val *d2 = mkdict(c, T_DICT);
			dict_set(c, d2->u.d, mkstr(c, "thinking", 8), rv);
			for (size_t e = 0; e < d->u.d->n; e++)
				dict_set(c, d2->u.d, d->u.d->k[e], d->u.d->v[e]);
			dict_set(c, d2->u.d, mkstr(c, "reasoning_content", 17), rv);
			d = d2;
		}
		msgs->u.l.v[i] = d;
	}
	json_decref(jm);
	c->held = NULL;
	set_var(c, g, "messages", msgs);
	set_var(c, g, "tools", vars->tools_json ? json_arg(c, vars->tools_json, "tools") : VNONE);
	set_var(c, g, "documents", vars->documents_json ? json_arg(c, vars->documents_json, "documents") : VNONE);
	set_var(c, g, "add_generation_prompt", VBOOL(vars->add_generation_prompt));
	const char *tn[] = { "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token" };
	const char *tv[] = { vars->bos_token, vars->eos_token, vars->unk_token, vars->sep_token,
			     vars->pad_token, vars->cls_token, vars->mask_token };
	for (int i = 0; i < 7; i++)
		if (tv[i])
			set_var(c, g, tn[i], mkstr(c, tv[i], strlen(tv[i])));
	if (vars->tokens_json) {
		struct val *x = json_arg(c, vars->tokens_json, "special tokens");
		if (x->t != T_DICT)
			rerr(c, LQ_ERR_INVALID, "special tokens must be a JSON object");
		for (size_t i = 0; i < x->u.d->n; i++) {
			struct val *k = x->u.d->k[i];
			char *name = ralloc(c, k->u.s.n + 1);
			memcpy(name, k->u.s.s, k->u.s.n);
			if (!strcmp(name, "messages") || !strcmp(name, "tools") || !strcmp(name, "documents") ||
			    !strcmp(name, "add_generation_prompt"))
				rerr(c, LQ_ERR_INVALID, "special token '%s' would replace a reserved variable", name);
			set_var(c, g, name, x->u.d->v[i]);
		}
	}
	if (vars->extra_json) {
		struct val *x = json_arg(c, vars->extra_json, "extra variables");
		if (x->t != T_DICT)
			rerr(c, LQ_ERR_INVALID, "extra variables must be a JSON object");
		for (size_t i = 0; i < x->u.d->n; i++) {
			struct val *k = x->u.d->k[i];
			char *name = ralloc(c, k->u.s.n + 1);
			memcpy(name, k->u.s.s, k->u.s.n);
			if (!strcmp(name, "messages") || !strcmp(name, "tools") || !strcmp(name, "documents") ||
			    !strcmp(name, "add_generation_prompt"))
				rerr(c, LQ_ERR_INVALID, "extra variable '%s' would replace a reserved one", name);
			set_var(c, g, name, x->u.d->v[i]);
		}
	}
	struct scope *top = new_scope(c, g);
	exec_list(c, top, &t->root, o);
}

/* runs the rendering; errors come back here through longjmp */
static int guarded(struct ctx *c, const struct lq_template *t, const char *messages_json,
		   size_t messages_len, const struct lq_template_vars *vars, struct sb *o)
{
	if (setjmp(c->jb))
		return c->code ? c->code : LQ_ERR_INVALID;
	render_body(c, t, messages_json, messages_len, vars, o);
	return LQ_OK;
}

int lq_template_render(const struct lq_template *t, const char *messages_json, size_t messages_len,
		       const struct lq_template_vars *vars, char **out, size_t *out_len, struct lq_error *err)
{
	static const struct lq_template_vars novars;
	if (out)
		*out = NULL;
	if (out_len)
		*out_len = 0;
	if (!t || !out || (!messages_json && messages_len))
		return lq_fail(err, LQ_ERR_INVALID, "lq_template_render: bad arguments");
	const struct lq_template_vars *vv = vars ? vars : &novars;
	struct ctx *c = calloc(1, sizeof *c);
	if (!c)
		return lq_fail(err, LQ_ERR_NOMEM, "chat template: out of memory");
	c->err = err;
	c->max_out = vv->max_output ? vv->max_output : DEFAULT_MAX_OUTPUT;
	c->now = vv->now ? (time_t)vv->now : time(NULL);
	struct sb *o = calloc(1, sizeof *o);
	if (!o) {
		free(c);
		return lq_fail(err, LQ_ERR_NOMEM, "chat template: out of memory");
	}
	int code = guarded(c, t, messages_json, messages_len, vv, o);
	if (code) {
		if (c->held)
			json_decref(c->held);
		lq_arena_free(&c->a);
		free(c);
		free(o);
		return code;
	}
	char *r = malloc(o->n + 1);
	if (!r) {
		lq_arena_free(&c->a);
		free(c);
		free(o);
		return lq_fail(err, LQ_ERR_NOMEM, "chat template: out of memory");
	}
	if (o->n)
		memcpy(r, o->p, o->n);
	r[o->n] = 0;
	*out = r;
	if (out_len)
		*out_len = o->n;
	lq_arena_free(&c->a);
	free(c);
	free(o);
	return LQ_OK;
}
