/*
 * gen_tok - a small CLI over the tokenizer API, for tests and comparisons.
 *
 *   gen_tok [-b] [-5] TOKENIZER_JSON [TOKENIZER_CONFIG_JSON] < in.jsonl > out.jsonl
 *
 * Each input line is a JSON object:
 *   {"text": "..."}      encode (with and without special tokens) and decode
 *   {"hex": "6869ff"}    the same for raw bytes (may be invalid UTF-8)
 *   {"ids": [1, 2, 3]}   decode only
 * Each output line (JSON written as Python's json.dumps with
 * separators=(",", ":") and ensure_ascii=True) is
 *   {"ids":[...],"ids_nospecial":[...],"decoded":"...","decoded_skip":"..."}
 * for text (decoded = decode(ids), decoded_skip = decode(ids, skip special)),
 * or {"decoded":"...","decoded_skip":"..."} for ids.
 * -b round-trips the tokenizer through its binary blob before use; -5 loads
 * with LQ_TOKENIZER_TRANSFORMERS5 (transformers 5's LlamaTokenizer pipeline).
 * Exit status: 0 ok, 1 failure, 2 usage.
 */
#include "libquant.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 20, n = 0;
	char *p = malloc(cap);
	for (;;) {
		if (!p)
			break;
		size_t r = fread(p + n, 1, cap - n, f);
		n += r;
		if (n < cap)
			break;
		cap *= 2;
		char *q = realloc(p, cap);
		if (!q) {
			free(p);
			p = NULL;
			break;
		}
		p = q;
	}
	fclose(f);
	*len = n;
	return p;
}

static void put_str(FILE *o, const char *s, size_t n)
{
	fputc('"', o);
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		uint32_t cp;
		size_t l;
		if (c < 0x80) {
			cp = c;
			l = 1;
		} else if (c >= 0xF0 && i + 3 < n + 0) {
			cp = (uint32_t)(c & 7) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 |
			     (uint32_t)(s[i + 2] & 0x3F) << 6 | (uint32_t)(s[i + 3] & 0x3F);
			l = 4;
		} else if (c >= 0xE0 && i + 2 < n) {
			cp = (uint32_t)(c & 15) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (uint32_t)(s[i + 2] & 0x3F);
			l = 3;
		} else if (c >= 0xC0 && i + 1 < n) {
			cp = (uint32_t)(c & 31) << 6 | (uint32_t)(s[i + 1] & 0x3F);
			l = 2;
		} else {
			cp = 0xFFFD; /* not reached for valid UTF-8 */
			l = 1;
		}
		i += l;
		switch (cp) {
		case '"': fputs("\\\"", o); continue;
		case '\\': fputs("\\\\", o); continue;
		case '\n': fputs("\\n", o); continue;
		case '\r': fputs("\\r", o); continue;
		case '\t': fputs("\\t", o); continue;
		case '\b': fputs("\\b", o); continue;
		case '\f': fputs("\\f", o); continue;
		}
		if (cp < 0x20 || (cp >= 0x7F && cp < 0x10000))
			fprintf(o, "\\u%04x", cp);
		else if (cp >= 0x10000)
			fprintf(o, "\\u%04x\\u%04x", 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF));
		else
			fputc((int)cp, o);
	}
	fputc('"', o);
}

static void put_ids(FILE *o, const int32_t *ids, size_t n)
{
	fputc('[', o);
	for (size_t i = 0; i < n; i++)
		fprintf(o, i ? ",%d" : "%d", ids[i]);
	fputc(']', o);
}

static int decode_both(struct lq_tokenizer *t, const int32_t *ids, size_t n, FILE *o)
{
	struct lq_error err;
	char *a, *b;
	size_t al, bl;
	if (lq_tokenizer_decode(t, ids, n, 0, &a, &al, &err) ||
	    lq_tokenizer_decode(t, ids, n, LQ_DECODE_SKIP_SPECIAL, &b, &bl, &err)) {
		fprintf(stderr, "gen_tok: %s\n", err.msg);
		return 1;
	}
	fputs("\"decoded\":", o);
	put_str(o, a, al);
	fputs(",\"decoded_skip\":", o);
	put_str(o, b, bl);
	free(a);
	free(b);
	return 0;
}

static int hexval(int c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int main(int argc, char **argv)
{
	int blob = 0, ai = 1, lflags = 0;
	for (; ai < argc; ai++) {
		if (!strcmp(argv[ai], "-b"))
			blob = 1;
		else if (!strcmp(argv[ai], "-5"))
			lflags |= LQ_TOKENIZER_TRANSFORMERS5;
		else
			break;
	}
	if (argc - ai < 1 || argc - ai > 2) {
		fprintf(stderr, "usage: gen_tok [-b] [-5] TOKENIZER_JSON [TOKENIZER_CONFIG_JSON] < in.jsonl\n");
		return 2;
	}
	size_t jl, cl = 0;
	char *js = read_file(argv[ai], &jl), *cs = NULL;
	if (!js) {
		fprintf(stderr, "gen_tok: cannot read '%s'\n", argv[ai]);
		return 1;
	}
	if (argc - ai == 2 && !(cs = read_file(argv[ai + 1], &cl))) {
		fprintf(stderr, "gen_tok: cannot read '%s'\n", argv[ai + 1]);
		return 1;
	}
	struct lq_error err;
	struct lq_tokenizer *t;
	if (lq_tokenizer_load_json_ex(&t, js, jl, cs, cl, lflags, &err)) {
		fprintf(stderr, "gen_tok: %s\n", err.msg);
		return 1;
	}
	free(js);
	free(cs);
	if (blob) {
		void *b;
		size_t bl;
		if (lq_tokenizer_serialize(t, &b, &bl, &err)) {
			fprintf(stderr, "gen_tok: %s\n", err.msg);
			return 1;
		}
		lq_tokenizer_free(t);
		if (lq_tokenizer_load_blob(&t, b, bl, &err)) {
			fprintf(stderr, "gen_tok: %s\n", err.msg);
			return 1;
		}
		free(b);
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc = 0;
	long lineno = 0;
	while (!rc && (n = getline(&line, &cap, stdin)) > 0) {
		lineno++;
		json_error_t je;
		json_t *o = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &je);
		if (!json_is_object(o)) {
			fprintf(stderr, "gen_tok: line %ld: bad JSON: %s\n", lineno, je.text);
			rc = 1;
			json_decref(o);
			break;
		}
		json_t *txt = json_object_get(o, "text"), *hex = json_object_get(o, "hex");
		json_t *idv = json_object_get(o, "ids");
		if (json_is_string(txt) || json_is_string(hex)) {
			char *bytes = NULL;
			const char *s;
			size_t sl;
			if (json_is_string(txt)) {
				s = json_string_value(txt);
				sl = json_string_length(txt);
			} else {
				const char *h = json_string_value(hex);
				size_t hl = json_string_length(hex);
				bytes = malloc(hl / 2 + 1);
				for (size_t i = 0; bytes && i + 1 < hl + 0; i += 2)
					bytes[i / 2] = (char)(hexval(h[i]) << 4 | hexval(h[i + 1]));
				s = bytes ? bytes : "";
				sl = bytes ? hl / 2 : 0;
			}
			int32_t *a = NULL, *b = NULL;
			size_t na, nb;
			if (lq_tokenizer_encode(t, s, sl, LQ_ENCODE_ADD_SPECIAL, &a, &na, &err) ||
			    lq_tokenizer_encode(t, s, sl, 0, &b, &nb, &err)) {
				fprintf(stderr, "gen_tok: line %ld: %s\n", lineno, err.msg);
				rc = 1;
			} else {
				fputs("{\"ids\":", stdout);
				put_ids(stdout, a, na);
				fputs(",\"ids_nospecial\":", stdout);
				put_ids(stdout, b, nb);
				fputc(',', stdout);
				rc = decode_both(t, a, na, stdout);
				fputs("}\n", stdout);
			}
			free(a);
			free(b);
			free(bytes);
		} else if (json_is_array(idv)) {
			size_t k, cnt = json_array_size(idv);
			int32_t *ids = malloc((cnt + 1) * sizeof *ids);
			json_t *x;
			json_array_foreach(idv, k, x) ids[k] = (int32_t)json_integer_value(x);
			fputc('{', stdout);
			rc = decode_both(t, ids, cnt, stdout);
			fputs("}\n", stdout);
			free(ids);
		} else {
			fprintf(stderr, "gen_tok: line %ld: no text, hex or ids\n", lineno);
			rc = 1;
		}
		json_decref(o);
	}
	free(line);
	lq_tokenizer_free(t);
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "gen_tok: write error\n");
		return 1;
	}
	return rc;
}
