/*
 * sample.c - next-token selection as transformers' generate() does it:
 * repetition penalty, temperature, top-k, top-p, min-p, then a draw from
 * the softmax (or argmax when greedy).  See lq_run.h.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "internal.h"
#include "lq_blocks.h"

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

double lq_rng_uniform(struct lq_rng *r)
{
	return lq_uniform53(lq_xoshiro_next(r->s));
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
 * the rest of lq_sample: weights, top-p, min-p and the draw, in the fixed
 * point of lq_blocks.h (the device's pick computes the same sums in
 * parallel). */
static int32_t pick(const struct idx_val *iv, int64_t keep, const struct lq_sample_opts *o, struct lq_rng *rng)
{
	const double mx = iv[0].v;
	uint64_t *w = malloc((size_t)keep * sizeof *w);
	if (!w)
		return iv[0].i;
	const int S = lq_pick_shift(keep);
	uint64_t total = 0;
	int64_t km = keep; /* min-p: the first token it drops */
	for (int64_t i = 0; i < keep; i++) {
		const double e = exp((double)iv[i].v - mx);
		w[i] = lq_pick_weight(e, S);
		total += w[i];
		if (o->min_p > 0 && i >= 1 && km == keep && !(e >= o->min_p))
			km = i;
	}
	int64_t k = keep;
	if (o->top_p > 0 && o->top_p < 1.0) {
		const uint64_t lim = lq_pick_toplim(o->top_p, total);
		uint64_t tail = 0;
		for (int64_t i = keep - 1; i >= 1; i--) {
			tail += w[i];
			if (tail > lim)
				break;
			k = i;
		}
	}
	if (km < k)
		k = km;
	uint64_t wk = 0;
	for (int64_t i = 0; i < k; i++)
		wk += w[i];
	const uint64_t x = lq_xoshiro_next(rng->s);
	int64_t at = 0;
	if (wk) {
		const uint64_t r = lq_pick_target(x, wk);
		uint64_t cum = 0;
		for (at = 0; at < k - 1; at++) {
			cum += w[at];
			if (cum > r)
				break;
		}
	}
	free(w);
	return iv[at].i;
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
		logits[id] = lq_penalize(logits[id], (float)pen);
	}
	free(ids);
}

/* The k-th largest (1 <= k <= n) of v[0..n) (no NaN): a radix select over
 * the keys, four 8-bit digits from the top. */
static float kth_largest(const float *v, int64_t n, int64_t k)
{
	uint32_t prefix = 0, mask = 0;
	for (int shift = 24; shift >= 0; shift -= 8) {
		int64_t hist[256] = {0};
		for (int64_t i = 0; i < n; i++) {
			uint32_t key = lq_fkey(v[i]);
			if ((key & mask) == prefix)
				hist[(key >> shift) & 255u]++;
		}
		int d = 255;
		while (hist[d] < k) /* the digits from the top hold k or more */
			k -= hist[d--];
		prefix |= (uint32_t)d << shift;
		mask |= 255u << shift;
	}
	for (int64_t i = 0; i < n; i++)
		if (lq_fkey(v[i]) == prefix)
			return v[i];
	return v[0]; /* not reached */
}

/* iv[0..n) in cmp_desc's order (value descending, then id ascending; no
 * NaN): a stable radix sort of the keys, 11 bits a pass, from ids in
 * ascending order; tmp holds n entries.  Returns the buffer that holds the
 * sorted entries (tmp: three passes). */
static struct idx_val *sort_desc(struct idx_val *iv, struct idx_val *tmp, int64_t n)
{
	for (int shift = 0; shift < 32; shift += 11) {
		int64_t cnt[2048] = {0};
		for (int64_t i = 0; i < n; i++)
			cnt[(~lq_fkey(iv[i].v) >> shift) & 2047u]++;
		int64_t at = 0;
		for (int d = 0; d < 2048; d++) {
			int64_t c = cnt[d];
			cnt[d] = at;
			at += c;
		}
		for (int64_t i = 0; i < n; i++)
			tmp[cnt[(~lq_fkey(iv[i].v) >> shift) & 2047u]++] = iv[i];
		struct idx_val *t = iv;
		iv = tmp;
		tmp = t;
	}
	return iv;
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
	int nan = 0;
	for (int64_t i = 0; i < vocab; i++) {
		logits[i] /= invt;
		nan |= logits[i] != logits[i];
	}
	struct idx_val *iv = malloc((size_t)vocab * 2 * sizeof *iv);
	if (!iv)
		return lq_argmax_f32(logits, vocab);
	int64_t keep = vocab, n = vocab;
	const struct idx_val *sorted = iv;
	if (!nan && o->top_k > 0 && o->top_k < vocab) {
		/* the tokens top-k keeps (ties with the k-th value are kept, as
		 * torch's "< kth" test does), then only those sorted */
		const float kth = kth_largest(logits, vocab, o->top_k);
		n = 0;
		for (int64_t i = 0; i < vocab; i++)
			if (logits[i] >= kth) {
				iv[n].v = logits[i];
				iv[n++].i = (int32_t)i;
			}
		qsort(iv, (size_t)n, sizeof *iv, cmp_desc);
		keep = n;
	} else {
		for (int64_t i = 0; i < vocab; i++) {
			iv[i].v = logits[i];
			iv[i].i = (int32_t)i;
		}
		if (nan) {
			/* NaN: the comparison sort, as it always was */
			qsort(iv, (size_t)vocab, sizeof *iv, cmp_desc);
			if (o->top_k > 0 && o->top_k < keep) {
				float kth = iv[o->top_k - 1].v;
				keep = o->top_k;
				while (keep < vocab && iv[keep].v >= kth)
					keep++;
			}
		} else {
			sorted = sort_desc(iv, iv + vocab, vocab);
		}
	}
	int32_t id = pick(sorted, keep, o, rng);
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
