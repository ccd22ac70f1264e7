/*
 * bench_tokenizer.c - load time and encode throughput of the tokenizer (not a test).
 *
 *   bench_tokenizer [TOKENIZER_JSON[.gz] [TEXT_FILE]]
 *
 * Defaults: the Llama 3.1 tokenizer of tests/fixtures (run from the repo
 * root) and 8 MiB of deterministic English-like text (common words in
 * sentences and paragraphs, some numbers).  Prints the best of several runs:
 *   load from tokenizer.json, serialize, load from the blob (and its size),
 *   encode MB/s and tokens/s, decode MB/s.  Times are process CPU time
 *   (single-threaded), which is steadier than wall time on a busy machine.
 */
#include "libquant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: the machine may be shared */
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int append(char **buf, size_t *n, size_t *cap, FILE *f)
{
	for (;;) {
		if (*cap - *n < 65536) {
			size_t nc = *cap ? 2 * *cap : 1 << 20;
			char *p = realloc(*buf, nc);
			if (!p)
				return -1;
			*buf = p;
			*cap = nc;
		}
		size_t r = fread(*buf + *n, 1, *cap - *n, f);
		*n += r;
		if (r == 0)
			return ferror(f) ? -1 : 0;
	}
}

static char *slurp(const char *path, size_t *n)
{
	char *buf = NULL;
	size_t cap = 0;
	*n = 0;
	size_t pl = strlen(path);
	FILE *f;
	int piped = pl > 3 && !strcmp(path + pl - 3, ".gz");
	if (piped) {
		char cmd[4200];
		snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
		f = popen(cmd, "r");
	} else {
		f = fopen(path, "rb");
	}
	if (!f)
		return NULL;
	int rc = append(&buf, n, &cap, f);
	int st = piped ? pclose(f) : fclose(f);
	if (rc || st) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* Deterministic English-like text: common words, sentences, paragraphs, numbers. */
static char *english(size_t want, size_t *n)
{
	static const char *const w[] = {
		"the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
		"are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or",
		"had", "by", "not", "word", "but", "what", "some", "we", "can", "out", "other", "were",
		"all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which",
		"do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write",
		"would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two",
		"has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no",
		"most", "people", "my", "over", "know", "water", "than", "call", "first", "who", "may",
		"down", "side", "been", "now", "find", "any", "new", "work", "part", "take", "get",
		"place", "made", "live", "where", "after", "back", "little", "only", "round", "man",
		"year", "came", "show", "every", "good", "me", "give", "our", "under", "name", "very",
		"through", "just", "form", "sentence", "great", "think", "say", "help", "low", "line",
		"differ", "turn", "cause", "much", "mean", "before", "move", "right", "boy", "old",
		"too", "same", "tell", "does", "set", "three", "want", "air", "well", "also", "play",
		"small", "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even",
		"land", "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men",
		"change", "went", "light", "kind", "off", "need", "house", "picture", "try", "us",
		"again", "animal", "point", "mother", "world", "near", "build", "self", "earth",
		"father", "tokenizer", "quantization", "weights", "model", "language", "don't", "it's",
		"we'll", "they're", "I'm", "Hugging", "Face", "Llama", "London", "Monday", "October",
	};
	char *buf = malloc(want + 64);
	if (!buf)
		return NULL;
	uint64_t s = 0x9E3779B97F4A7C15ULL;
	size_t o = 0;
	int sent = 0;
	while (o < want) {
		int len = 5;
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		len += (int)(s % 16);
		for (int i = 0; i < len && o < want; i++) {
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			char tmp[48];
			int k;
			if (s % 40 == 0)
				k = snprintf(tmp, sizeof tmp, "%u", (unsigned)(s >> 20) % 100000);
			else
				k = snprintf(tmp, sizeof tmp, "%s", w[(s >> 8) % (sizeof w / sizeof w[0])]);
			if (i == 0 && tmp[0] >= 'a' && tmp[0] <= 'z')
				tmp[0] = (char)(tmp[0] - 32);
			const char *sep = i == len - 1 ? (s % 7 == 0 ? "? " : ". ") : (s % 11 == 0 ? ", " : " ");
			size_t l = (size_t)k + strlen(sep);
			if (o + l > want)
				break;
			memcpy(buf + o, tmp, (size_t)k);
			memcpy(buf + o + k, sep, strlen(sep));
			o += l;
		}
		if (++sent % 6 == 0 && o < want) {
			buf[o - 1] = '\n';
			if (o < want)
				buf[o++] = '\n';
		}
		if (o + 8 >= want)
			break;
	}
	*n = o;
	return buf;
}

int main(int argc, char **argv)
{
	const char *tj = argc > 1 ? argv[1] : "tests/fixtures/tokenizers/llama3_1/tokenizer.json.gz";
	size_t jl, tl;
	char *js = slurp(tj, &jl);
	if (!js) {
		fprintf(stderr, "bench_tokenizer: cannot read '%s' (run from the repo root)\n", tj);
		return 1;
	}
	char *text = argc > 2 ? slurp(argv[2], &tl) : english((size_t)8 << 20, &tl);
	if (!text) {
		fprintf(stderr, "bench_tokenizer: no text\n");
		return 1;
	}
	struct lq_error err;
	struct lq_tokenizer *t = NULL;
	double best = 1e9;
	for (int r = 0; r < 3; r++) {
		lq_tokenizer_free(t);
		double t0 = now();
		if (lq_tokenizer_load_json(&t, js, jl, NULL, 0, &err)) {
			fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
			return 1;
		}
		double d = now() - t0;
		best = d < best ? d : best;
	}
	printf("%-36s %9.1f ms  (%zu bytes of JSON, %zu ids)\n", "load tokenizer.json", best * 1e3, jl,
	       lq_tokenizer_vocab_size(t));
	void *blob;
	size_t bl;
	double t0 = now();
	if (lq_tokenizer_serialize(t, &blob, &bl, &err)) {
		fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
		return 1;
	}
	printf("%-36s %9.1f ms  (%zu bytes)\n", "serialize to blob", (now() - t0) * 1e3, bl);
	best = 1e9;
	for (int r = 0; r < 10; r++) {
		struct lq_tokenizer *t2;
		t0 = now();
		if (lq_tokenizer_load_blob(&t2, blob, bl, &err)) {
			fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
			return 1;
		}
		double d = now() - t0;
		best = d < best ? d : best;
		lq_tokenizer_free(t2);
	}
	printf("%-36s %9.1f ms\n", "load from blob", best * 1e3);

	int32_t *ids = NULL;
	size_t n = 0;
	best = 1e9;
	for (int r = 0; r < 3; r++) {
		free(ids);
		t0 = now();
		if (lq_tokenizer_encode(t, text, tl, 0, &ids, &n, &err)) {
			fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
			return 1;
		}
		double d = now() - t0;
		best = d < best ? d : best;
	}
	printf("%-36s %9.2f MB/s  (%zu bytes -> %zu tokens, %.2f Mtok/s)\n", "encode (one 8 MiB text)",
	       (double)tl / best * 1e-6, tl, n, (double)n / best * 1e-6);
	/* line by line, as a server would see requests */
	best = 1e9;
	for (int r = 0; r < 3; r++) {
		t0 = now();
		size_t i = 0;
		while (i < tl) {
			const char *e = memchr(text + i, '\n', tl - i);
			size_t l = e ? (size_t)(e - (text + i)) + 1 : tl - i;
			int32_t *li;
			size_t ln;
			if (lq_tokenizer_encode(t, text + i, l, LQ_ENCODE_ADD_SPECIAL, &li, &ln, &err)) {
				fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
				return 1;
			}
			free(li);
			i += l;
		}
		double d = now() - t0;
		best = d < best ? d : best;
	}
	printf("%-36s %9.2f MB/s\n", "encode (line by line)", (double)tl / best * 1e-6);
	char *out;
	size_t ol;
	best = 1e9;
	for (int r = 0; r < 3; r++) {
		t0 = now();
		if (lq_tokenizer_decode(t, ids, n, 0, &out, &ol, &err)) {
			fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
			return 1;
		}
		double d = now() - t0;
		best = d < best ? d : best;
		if (r < 2)
			free(out);
	}
	printf("%-36s %9.2f MB/s  (round trip %s)\n", "decode", (double)ol / best * 1e-6,
	       ol == tl && !memcmp(out, text, tl) ? "exact" : "DIFFERS");
	free(out);
	free(ids);
	free(blob);
	free(js);
	free(text);
	lq_tokenizer_free(t);
	return 0;
}
