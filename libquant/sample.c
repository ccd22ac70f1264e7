/*
 * sample.c - next-token selection as transformers' generate() does it:
 * repetition penalty, temperature, top-k, top-p, min-p, then a draw from
 * the softmax (or argmax when greedy).  See lq_run.h.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void lq_sample_opts_init(struct lq_sample_opts *o)
{
	memset(o, 0, sizeof *o);
	o->temperature = 1.0;
	o->top_k = 50;
	o->top_p = 1.0;
	o->min_p = 0.0;
	o->repetition_penalty = 1.0;
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

void lq_rng_seed(struct lq_rng *r, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix(&seed);
}

static uint64_t rng_next(struct lq_rng *r)
{
	uint64_t *s = r->s;
	uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

double lq_rng_uniform(struct lq_rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

struct idx_val {
	float v;
	int32_t i;
};

static int cmp_desc(const void *a, const void *b)
{
	const struct idx_val *x = a, *y = b;
	if (x->v != y->v)
		return x->v < y->v ? 1 : -1;
	return x->i < y->i ? -1 : x->i > y->i;
}

int32_t lq_argmax_f32(const float *l, int64_t n)
{
	int64_t best = 0;
	for (int64_t i = 1; i < n; i++)
		if (l[i] > l[best])
			best = i;
	return (int32_t)best;
}

/* From iv[0..keep) (sorted by cmp_desc, keep >= 1: the tokens top-k kept),
 * the rest of lq_sample: probabilities, top-p, min-p, the draw. */
static int32_t pick(const struct idx_val *iv, int64_t keep, const struct lq_sample_opts *o, struct lq_rng *rng)
{
	/* probabilities of the kept tokens */
	double mx = iv[0].v, sum = 0;
	double *p = malloc((size_t)keep * sizeof *p);
	if (!p)
		return iv[0].i;
	for (int64_t i = 0; i < keep; i++) {
		p[i] = exp((double)iv[i].v - mx);
		sum += p[i];
	}
	for (int64_t i = 0; i < keep; i++)
		p[i] /= sum;
	if (o->top_p > 0 && o->top_p < 1.0) {
		/* transformers: sort ascending, drop tokens whose cumulative
		 * probability is <= 1 - top_p; the most likely one always stays */
		double cum = 0, lim = 1.0 - o->top_p;
		int64_t drop = 0;
		for (int64_t i = keep - 1; i >= 1; i--) {
			cum += p[i];
			if (cum <= lim)
				drop++;
			else
				break;
		}
		keep -= drop;
	}
	if (o->min_p > 0) {
		double thr = o->min_p * p[0];
		int64_t k = 1;
		while (k < keep && p[k] >= thr)
			k++;
		keep = k;
	}
	sum = 0;
	for (int64_t i = 0; i < keep; i++)
		sum += p[i];
	double u = lq_rng_uniform(rng) * sum, acc = 0;
	int32_t id = iv[keep - 1].i;
	for (int64_t i = 0; i < keep; i++) {
		acc += p[i];
		if (u < acc) {
			id = iv[i].i;
			break;
		}
	}
	free(p);
	return id;
}

int64_t lq_distinct_ids(const int32_t *seen, size_t nseen, int64_t vocab, int32_t *out)
{
	unsigned char *mark = calloc(vocab > 0 ? (size_t)vocab : 1, 1);
	if (!mark)
		return -1;
	int64_t n = 0;
	for (size_t i = 0; i < nseen; i++) {
		int32_t id = seen[i];
		if (id >= 0 && id < vocab && !mark[id]) {
			mark[id] = 1;
			out[n++] = id;
		}
	}
	free(mark);
	return n;
}

int lq_sample_penalized(const struct lq_sample_opts *o)
{
	return o->repetition_penalty > 0 && o->repetition_penalty != 1.0;
}

int lq_sample_is_argmax(const struct lq_sample_opts *o)
{
	return o->temperature <= 0 && !lq_sample_penalized(o);
}

/* o's repetition penalty, each distinct id of seen once (torch gathers then
 * scatters); out of memory: each occurrence. */
static void penalize(float *logits, int64_t vocab, const struct lq_sample_opts *o, const int32_t *seen, size_t nseen)
{
	const double pen = o->repetition_penalty;
	if (!lq_sample_penalized(o) || !nseen)
		return;
	int32_t *ids = malloc(nseen * sizeof *ids);
	int64_t n = ids ? lq_distinct_ids(seen, nseen, vocab, ids) : -1;
	const int32_t *use = n < 0 ? seen : ids;
	for (int64_t i = 0; i < (n < 0 ? (int64_t)nseen : n); i++) {
		int32_t id = use[i];
		if (id < 0 || id >= vocab)
			continue;
		float s = logits[id];
		logits[id] = s < 0 ? s * (float)pen : s / (float)pen;
	}
	free(ids);
}

int32_t lq_sample(float *logits, int64_t vocab, const struct lq_sample_opts *o,
		  const int32_t *seen, size_t nseen, struct lq_rng *rng)
{
	if (vocab <= 0)
		return -1;
	penalize(logits, vocab, o, seen, nseen);
	if (o->temperature <= 0)
		return lq_argmax_f32(logits, vocab);
	float invt = (float)o->temperature;
	for (int64_t i = 0; i < vocab; i++)
		logits[i] /= invt;
	struct idx_val *iv = malloc((size_t)vocab * sizeof *iv);
	if (!iv)
		return lq_argmax_f32(logits, vocab);
	for (int64_t i = 0; i < vocab; i++) {
		iv[i].v = logits[i];
		iv[i].i = (int32_t)i;
	}
	qsort(iv, (size_t)vocab, sizeof *iv, cmp_desc);
	int64_t keep = vocab;
	if (o->top_k > 0 && o->top_k < keep) {
		/* ties with the k-th value are kept, as torch's "< kth" test does */
		float kth = iv[o->top_k - 1].v;
		keep = o->top_k;
		while (keep < vocab && iv[keep].v >= kth)
			keep++;
	}
	int32_t id = pick(iv, keep, o, rng);
	free(iv);
	return id;
}

int32_t lq_sample_kept(const float *vals, const int32_t *ids, size_t n, const struct lq_sample_opts *o,
		       struct lq_rng *rng)
{
	if (n == 0)
		return -1;
	struct idx_val *iv = malloc(n * sizeof *iv);
	if (!iv) {
		size_t best = 0;
		for (size_t i = 1; i < n; i++)
			if (vals[i] > vals[best] || (vals[i] == vals[best] && ids[i] < ids[best]))
				best = i;
		return ids[best];
	}
	for (size_t i = 0; i < n; i++) {
		iv[i].v = vals[i];
		iv[i].i = ids[i];
	}
	qsort(iv, n, sizeof *iv, cmp_desc);
	int32_t id = pick(iv, (int64_t)n, o, rng);
	free(iv);
	return id;
}
