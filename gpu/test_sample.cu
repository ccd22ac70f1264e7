/*
 * test_sample.cu - lq_cuda_topk, lq_cuda_pick, lq_cuda_sample_all and lq_cuda_penalty against
 * the host's arithmetic (make check-gpu): the kept set (ties with the k-th
 * value, -0 and +0, infinities, vocabularies of one to many blocks) and its
 * values bit for bit, -1 on NaN and on sets over LQ_CUDA_TOPK_MAX; the pick
 * after the top-k against lq_sample (the id and the generator state after
 * it, top-p and min-p on and off, a stop on a row with no set); the whole
 * row's pick (top-k off or over the set's cap: a radix descent, not a
 * sort) the same way, on grids of 1 to 128 blocks, with min-p
 * and top-p at their edges and many draws from rows with ties; the penalty
 * bit for bit.  Rows whose ties at the k-th value fill the first pass's bin
 * ("infs", "equal" with k 1024) must not lose them.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "lq_cuda.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int pass, fail;
#define CHECK(c, ...) do { if (c) pass++; else { fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)
#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return (uint32_t)(rs >> 32);
}
static float urand(void) { return (float)rnd() / 4294967296.0f; }

static int cmp_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

struct pair {
	int32_t id;
	float v;
};
static int cmp_id(const void *a, const void *b)
{
	const struct pair *x = (const struct pair *)a, *y = (const struct pair *)b;
	return (x->id > y->id) - (x->id < y->id);
}

enum { RANDOM, GRID, EQUAL, ZEROS, INFS, NAN1 };
static const char *kind_name[] = { "random", "grid", "equal", "zeros", "infs", "nan" };

static void fill(float *l, int64_t n, int kind)
{
	for (int64_t i = 0; i < n; i++) {
		switch (kind) {
		case RANDOM: l[i] = (urand() - 0.5f) * 40.0f; break;
		case GRID: l[i] = floorf(urand() * 16.0f) * 0.5f - 4.0f; break;
		case EQUAL: l[i] = 1.5f; break;
		case ZEROS: l[i] = (rnd() & 1) ? 0.0f : -0.0f; if (rnd() % 5 == 0) l[i] = urand() - 1.0f; break;
		case INFS: l[i] = rnd() % 3 == 0 ? -INFINITY : (urand() - 0.5f) * 8.0f; break;
		case NAN1: l[i] = urand(); break;
		}
	}
	if (kind == INFS && n > 3)
		l[n / 2] = INFINITY;
	if (kind == NAN1)
		l[rnd() % (uint64_t)n] = NAN;
}

struct pick_dev {
	uint64_t rng[4];
	int stop;
	int32_t id;
};

/* l[0..n) (kind) on the device, then launch() draws from it into d_pk,
 * against lq_sample with o on the host from the generator seeded with
 * seed: the same id and generator state after, unless stopped() (asked
 * after the launch) says the device could not make the set: then the stop
 * flag is set and nothing else changed.  Then, with the stop flag set,
 * launch() must change nothing.  Returns whether it stopped. */
template <typename L, typename S>
static int draw_case(const char *what, float *l, float *d_l, int64_t n, int kind, const struct lq_sample_opts *o,
		     uint64_t seed, struct pick_dev *d_pk, L launch, S stopped)
{
	struct pick_dev hd;
	struct lq_rng hr;
	lq_rng_seed(&hr, seed);
	memcpy(hd.rng, hr.s, sizeof hd.rng);
	hd.stop = 0;
	hd.id = -7;
	CU(cudaMemcpy(d_pk, &hd, sizeof hd, cudaMemcpyHostToDevice));
	CU(cudaMemcpy(d_l, l, n * 4, cudaMemcpyHostToDevice));
	CHECK(launch() == 0, "%s: launch", what);
	CU(cudaMemcpy(&hd, d_pk, sizeof hd, cudaMemcpyDeviceToHost));
	if (stopped()) {
		CHECK(hd.stop == 1 && hd.id == -7 && !memcmp(hd.rng, hr.s, sizeof hd.rng),
		      "%s n %lld %s k %d: no set: stop %d id %d", what, (long long)n, kind_name[kind], o->top_k, hd.stop, hd.id);
		return 1;
	}
	int32_t want_id = lq_sample(l, n, o, NULL, 0, &hr);
	CHECK(hd.stop == 0 && hd.id == want_id, "%s n %lld %s k %d T %g top-p %g min-p %g: picked %d, lq_sample %d", what,
	      (long long)n, kind_name[kind], o->top_k, o->temperature, o->top_p, o->min_p, hd.id, want_id);
	CHECK(!memcmp(hd.rng, hr.s, sizeof hd.rng), "%s n %lld %s k %d: generator state differs", what, (long long)n,
	      kind_name[kind], o->top_k);
	/* stopped: nothing changes */
	struct pick_dev before = hd;
	hd.stop = 1;
	CU(cudaMemcpy(d_pk, &hd, sizeof hd, cudaMemcpyHostToDevice));
	CHECK(launch() == 0, "%s: launch", what);
	CU(cudaMemcpy(&hd, d_pk, sizeof hd, cudaMemcpyDeviceToHost));
	CHECK(hd.id == before.id && !memcmp(hd.rng, before.rng, sizeof hd.rng), "%s: a stopped draw drew", what);
	return 0;
}

int main(void)
{
	if (lq_cuda_device_count() == 0) {
		printf("skipping: no CUDA device\n0 passed, 0 failed\n");
		return 0;
	}
	static const int64_t sizes[] = { 1, 7, 50, 1000, 2048, 2049, 4097, 32000, 128256, 151936, 256000, LQ_CUDA_TOPK_NMAX };
	static const int kvals[] = { 1, 2, 50, 333, LQ_CUDA_TOPK_MAX };
	static const float temps[] = { 1.0f, 0.7f, 1.3f };
	const int64_t nmax = LQ_CUDA_TOPK_NMAX;
	float *l = (float *)malloc(nmax * 4), *sc = (float *)malloc(nmax * 4), *srt = (float *)malloc(nmax * 4);
	struct pair *want = (struct pair *)malloc(nmax * sizeof *want), *got = (struct pair *)malloc(LQ_CUDA_TOPK_MAX * sizeof *got);
	struct lq_cuda_topk_out *h = (struct lq_cuda_topk_out *)malloc(sizeof *h);
	float *d_l;
	void *d_scr;
	struct lq_cuda_topk_out *d_out;
	CU(cudaMalloc(&d_l, nmax * 4));
	CU(cudaMalloc(&d_scr, lq_cuda_topk_scratch_size(nmax)));
	CU(cudaMemset(d_scr, 0, lq_cuda_topk_scratch_size(nmax)));
	CU(cudaMalloc(&d_out, sizeof *d_out));
	int cases = 0;
	for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
		for (int kind = RANDOM; kind <= NAN1; kind++)
			for (size_t ki = 0; ki < sizeof kvals / sizeof kvals[0]; ki++) {
				int64_t n = sizes[si];
				int k = kvals[ki];
				float t = temps[cases++ % 3];
				fill(l, n, kind);
				CU(cudaMemcpy(d_l, l, n * 4, cudaMemcpyHostToDevice));
				CHECK(lq_cuda_topk(d_l, n, t, k, d_scr, d_out, 0) == 0, "launch");
				CU(cudaMemcpy(h, d_out, sizeof *h, cudaMemcpyDeviceToHost));
				/* the host: lq_sample's temperature and top-k */
				int nan = 0;
				for (int64_t i = 0; i < n; i++) {
					sc[i] = l[i] / t;
					nan |= sc[i] != sc[i];
				}
				int64_t nw = 0;
				if (!nan) {
					memcpy(srt, sc, n * 4);
					qsort(srt, (size_t)n, 4, cmp_desc);
					float kth = k < n ? srt[k - 1] : -INFINITY;
					for (int64_t i = 0; i < n; i++)
						if (sc[i] >= kth) {
							want[nw].id = (int32_t)i;
							want[nw++].v = sc[i];
						}
				}
				int64_t expect = nan || nw > LQ_CUDA_TOPK_MAX ? -1 : nw;
				CHECK(h->count == expect, "n %lld %s k %d T %g: count %d, want %lld", (long long)n, kind_name[kind],
				      k, t, h->count, (long long)expect);
				if (h->count != expect || expect < 0)
					continue;
				for (int i = 0; i < h->count; i++) {
					got[i].id = h->ids[i];
					got[i].v = h->vals[i];
				}
				qsort(got, (size_t)h->count, sizeof *got, cmp_id);
				int same = 1;
				for (int i = 0; i < h->count; i++)
					same &= got[i].id == want[i].id && !memcmp(&got[i].v, &want[i].v, 4);
				CHECK(same, "n %lld %s k %d T %g: the kept set differs", (long long)n, kind_name[kind], k, t);
			}
	/* lq_cuda_pick after lq_cuda_topk (a chained sampling step's end)
	 * against lq_sample on the host: the same id and the same generator
	 * state after, for rows with ties, top-p and min-p on and off; a row
	 * with a NaN sets the stop flag and changes nothing else; a set stop
	 * flag makes the pick do nothing */
	{
		static const int64_t pn[] = { 1, 7, 1000, 32000, 128256 };
		static const int pk[] = { 1, 5, 40, 50, 1024 };
		static const double pp[] = { 1.0, 0.9, 0.5, 1.0, 0.95 }, pm[] = { 0.0, 0.0, 0.05, 0.2, 0.0 };
		struct pick_dev *d_pk;
		CU(cudaMalloc(&d_pk, sizeof *d_pk));
		int pc = 0;
		for (size_t si = 0; si < sizeof pn / sizeof pn[0]; si++)
			for (int kind = RANDOM; kind <= NAN1; kind++)
				for (size_t ki = 0; ki < sizeof pk / sizeof pk[0]; ki++, pc++) {
					const int64_t n = pn[si];
					struct lq_sample_opts o;
					lq_sample_opts_init(&o);
					o.temperature = temps[pc % 3];
					o.top_k = pk[ki];
					o.top_p = pp[pc % 5];
					o.min_p = pm[(pc / 5) % 5];
					fill(l, n, kind);
					if (kind == GRID)
						for (int64_t i = 0; i < n; i++)
							l[i] *= 0.25f; /* close values: every pick likely */
					bool first = true;
					draw_case(
						"pick", l, d_l, n, kind, &o, 77 + (uint64_t)pc, d_pk,
						[&]() {
							/* the set once; the second launch (stopped) only picks */
							if (first && lq_cuda_topk(d_l, n, (float)o.temperature, o.top_k, d_scr, d_out, 0))
								return 1;
							first = false;
							return lq_cuda_pick(d_out, o.top_p, o.min_p, d_pk->rng, &d_pk->stop, &d_pk->id, 0);
						},
						[&]() {
							CU(cudaMemcpy(&h->count, &d_out->count, 4, cudaMemcpyDeviceToHost));
							return h->count < 0;
						});
				}
		cudaFree(d_pk);
	}
	/* lq_cuda_sample_all (top-k off or past LQ_CUDA_TOPK_MAX) against
	 * lq_sample on the host: the same id and generator state; a NaN row
	 * sets the stop flag and changes nothing else; a set stop flag makes
	 * it do nothing; one scratch for every size, reused.  The sizes take
	 * one block, several and (H200) up to 128 blocks of 2, 4, 8 and 16
	 * tokens a thread; top-p and min-p
	 * include values that keep one token (1e-12, 1.5) and a min-p below
	 * every nonzero weight (1e-30) */
	{
		static const int64_t an[] = { 1, 2, 7, 1000, 4097, 32000, 128256, 151936, 256000, 400000, LQ_CUDA_TOPK_NMAX };
		static const int ak[] = { 0, 0, 1, 3, 1025, 5000 };
		static const double ap[] = { 1.0, 0.9, 0.5, 1.0, 0.95, 0.999, 1e-12 },
				    am[] = { 0.0, 0.0, 0.05, 0.2, 0.0, 1e-30, 1.5 };
		struct pick_dev hd, *d_pk;
		CU(cudaMalloc(&d_pk, sizeof *d_pk));
		const size_t sab = lq_cuda_sample_all_scratch_size(LQ_CUDA_TOPK_NMAX);
		CHECK(sab > 0 && lq_cuda_sample_all_scratch_size(0) == 0 &&
		      lq_cuda_sample_all_scratch_size(LQ_CUDA_TOPK_NMAX + 1) == 0, "scratch sizes");
		void *d_sa;
		CU(cudaMalloc(&d_sa, sab));
		CU(cudaMemset(d_sa, 0, sab));
		int ac = 0, nstop = 0;
		for (size_t si = 0; si < sizeof an / sizeof an[0]; si++)
			for (int kind = RANDOM; kind <= NAN1; kind++)
				for (size_t ki = 0; ki < sizeof ak / sizeof ak[0]; ki++, ac++) {
					const int64_t n = an[si];
					struct lq_sample_opts o;
					lq_sample_opts_init(&o);
					o.temperature = temps[ac % 3];
					o.top_k = ak[ki] == 5000 ? (int)n : ak[ki]; /* k = n: no top-k */
					o.top_p = ap[ac % 7];
					o.min_p = am[(ac / 7) % 7];
					fill(l, n, kind);
					if (kind == GRID)
						for (int64_t i = 0; i < n; i++)
							l[i] *= 0.25f;
					nstop += draw_case(
						"sample_all", l, d_l, n, kind, &o, 300 + (uint64_t)ac, d_pk,
						[&]() {
							return lq_cuda_sample_all(d_l, n, (float)o.temperature, o.top_k, o.top_p, o.min_p,
										  d_pk->rng, &d_pk->stop, &d_pk->id, d_sa, 0);
						},
						[&]() { return kind == NAN1; });
				}
		CHECK(nstop > 0, "no NaN rows");
		/* many draws from one row: the same ids as the host's, and more
		 * than one distinct id (the draw is not stuck); rows of distinct
		 * values and of ties (a grid of 16 values: every draw lands in a
		 * tie, ranked by id across blocks), top-k off and past the cap */
		for (int dc = 0; dc < 4; dc++) {
			const int64_t n = dc & 1 ? 151936 : 128256;
			const int kind = dc < 2 ? RANDOM : GRID;
			fill(l, n, kind);
			for (int64_t i = 0; i < n; i++)
				l[i] *= kind == RANDOM ? 0.05f : 0.25f;
			struct lq_sample_opts o;
			lq_sample_opts_init(&o);
			o.top_k = dc == 3 ? 30000 : 0;
			o.top_p = dc == 1 ? 1.0 : 0.9;
			o.min_p = dc == 2 ? 0.5 : 0.0;
			struct lq_rng hr;
			lq_rng_seed(&hr, 5 + (uint64_t)dc);
			memcpy(hd.rng, hr.s, sizeof hd.rng);
			hd.stop = 0;
			CU(cudaMemcpy(d_pk, &hd, sizeof hd, cudaMemcpyHostToDevice));
			CU(cudaMemcpy(d_l, l, n * 4, cudaMemcpyHostToDevice));
			int same = 1, distinct = 0, prev = -1;
			for (int r = 0; r < 60; r++) {
				CHECK(lq_cuda_sample_all(d_l, n, 1.0f, o.top_k, o.top_p, o.min_p, d_pk->rng, &d_pk->stop, &d_pk->id,
							 d_sa, 0) == 0,
				      "sample_all launch");
				CU(cudaMemcpy(&hd, d_pk, sizeof hd, cudaMemcpyDeviceToHost));
				memcpy(sc, l, n * 4);
				const int32_t want_id = lq_sample(sc, n, &o, NULL, 0, &hr);
				same &= hd.id == want_id;
				distinct += hd.id != prev;
				prev = hd.id;
			}
			CHECK(same && distinct > 30, "60 draws (%s, top-k %d): same %d, %d changes", kind_name[kind], o.top_k,
			      same, distinct);
		}
		CHECK(lq_cuda_sample_all(d_l, 100, 0.0f, 0, 1.0, 0.0, d_pk->rng, &d_pk->stop, &d_pk->id, d_sa, 0) != 0,
		      "sample_all: temperature 0 accepted");
		CHECK(lq_cuda_sample_all(d_l, 0, 1.0f, 0, 1.0, 0.0, d_pk->rng, &d_pk->stop, &d_pk->id, d_sa, 0) != 0,
		      "sample_all: n 0 accepted");
		cudaFree(d_sa);
		cudaFree(d_pk);
	}
	/* bad arguments */
	CHECK(lq_cuda_topk(d_l, 100, 1.0f, 0, d_scr, d_out, 0) != 0, "k 0 accepted");
	CHECK(lq_cuda_topk(d_l, 100, 1.0f, LQ_CUDA_TOPK_MAX + 1, d_scr, d_out, 0) != 0, "k over the limit accepted");
	CHECK(lq_cuda_topk(d_l, 100, 0.0f, 5, d_scr, d_out, 0) != 0, "temperature 0 accepted");
	CHECK(lq_cuda_topk(d_l, LQ_CUDA_TOPK_NMAX + 1, 1.0f, 5, d_scr, d_out, 0) != 0, "n over the limit accepted");
	/* the repetition penalty */
	for (int pi = 0; pi < 2; pi++) {
		int64_t n = 128256, np = 3000;
		float p = pi ? 0.7f : 1.3f;
		fill(l, n, RANDOM);
		int32_t *ids = (int32_t *)malloc(np * 4), *d_ids;
		for (int64_t i = 0; i < np; i++)
			ids[i] = (int32_t)(i * 41 % n); /* distinct */
		CU(cudaMalloc(&d_ids, np * 4));
		CU(cudaMemcpy(d_ids, ids, np * 4, cudaMemcpyHostToDevice));
		CU(cudaMemcpy(d_l, l, n * 4, cudaMemcpyHostToDevice));
		CHECK(lq_cuda_penalty(d_l, d_ids, np, p, 0) == 0, "penalty launch");
		CU(cudaMemcpy(sc, d_l, n * 4, cudaMemcpyDeviceToHost));
		for (int64_t i = 0; i < np; i++) {
			float s = l[ids[i]];
			l[ids[i]] = s < 0 ? s * p : s / p;
		}
		CHECK(!memcmp(sc, l, n * 4), "penalty %g differs from the host's", p);
		cudaFree(d_ids);
		free(ids);
	}
	cudaFree(d_l);
	cudaFree(d_scr);
	cudaFree(d_out);
	free(l);
	free(sc);
	free(srt);
	free(want);
	free(got);
	free(h);
	printf("%d passed, %d failed\n", pass, fail);
	return fail != 0;
}
