/*
 * forward_matmul.c - thread pool, stored weights and the dequantizing
 * matmuls of the CPU runtime (see lq_run.h).
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "internal.h"
#include "lq_blocks.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================ pool */

/*
 * Workers wait for a job by spinning a short while (POOL_SPIN pauses, tens
 * of microseconds) before sleeping on the condition variable: a decode step
 * runs about eight jobs per layer back to back, and waking a sleeping
 * thread for each costs more than the smaller jobs themselves.  Tasks are
 * taken with an atomic counter.  gen is published with release semantics
 * after the job's fields, and read with acquire semantics.
 */
#define POOL_SPIN 4000

struct lq_pool {
	int n;                 /* threads including the caller */
	pthread_t *th;
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	uint64_t gen;          /* job generation (atomic) */
	int quit;              /* (atomic) */
	void (*fn)(void *, int, int);
	void *ctx;
	int ntasks;
	int next;              /* next task index to take (atomic) */
	int running;           /* workers still in the current job (atomic) */
};

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void pool_work(struct lq_pool *p)
{
	for (;;) {
		int i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
		if (i >= p->ntasks)
			return;
		p->fn(p->ctx, i, p->ntasks);
	}
}

static void *pool_main(void *arg)
{
	struct lq_pool *p = arg;
	uint64_t seen = 0;
	for (;;) {
		int spins = 0;
		while (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen &&
		       !__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE) && spins < POOL_SPIN) {
			cpu_relax();
			spins++;
		}
		if (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen) {
			pthread_mutex_lock(&p->mu);
			while (!p->quit && __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen)
				pthread_cond_wait(&p->go, &p->mu);
			pthread_mutex_unlock(&p->mu);
		}
		if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE))
			return NULL;
		seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
		pool_work(p);
		if (__atomic_sub_fetch(&p->running, 1, __ATOMIC_ACQ_REL) == 0) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
}

int lq_pool_create(struct lq_pool **out, int nthreads, struct lq_error *err)
{
	*out = NULL;
	if (nthreads < 1)
		nthreads = 1;
	if (nthreads > 1024)
		return lq_fail(err, LQ_ERR_INVALID, "%d threads is too many", nthreads);
	struct lq_pool *p = calloc(1, sizeof *p);
	if (!p)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	p->n = 1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	if (nthreads > 1) {
		p->th = calloc((size_t)nthreads - 1, sizeof *p->th);
		if (!p->th) {
			lq_pool_free(p);
			return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		}
		for (int i = 0; i < nthreads - 1; i++) {
			int e = pthread_create(&p->th[i], NULL, pool_main, p);
			if (e) {
				lq_pool_free(p);
				return lq_fail_errno(err, e, "cannot start a thread");
			}
			p->n++;
		}
	}
	*out = p;
	return LQ_OK;
}

void lq_pool_free(struct lq_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	__atomic_store_n(&p->quit, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n - 1; i++)
		pthread_join(p->th[i], NULL);
	free(p->th);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	free(p);
}

int lq_pool_size(const struct lq_pool *p)
{
	return p ? p->n : 1;
}

/* lq_pool_memcpy: one task per thread, whole pages of at least POOL_COPY_MIN
 * bytes each */
#define POOL_COPY_MIN ((size_t)64 << 10)
struct pool_copy {
	unsigned char *d;
	const unsigned char *s;
	size_t n, per;
};

static void pool_copy_task(void *ctx, int i, int ntasks)
{
	(void)ntasks;
	const struct pool_copy *c = ctx;
	const size_t a = (size_t)i * c->per;
	if (a < c->n)
		memcpy(c->d + a, c->s + a, c->n - a < c->per ? c->n - a : c->per);
}

void lq_pool_memcpy(struct lq_pool *p, void *dst, const void *src, size_t n)
{
	size_t nt = (size_t)lq_pool_size(p);
	if (nt > n / POOL_COPY_MIN)
		nt = n / POOL_COPY_MIN;
	if (nt <= 1) {
		if (n)
			memcpy(dst, src, n);
		return;
	}
	struct pool_copy c = {dst, src, n, ((n + nt - 1) / nt + 4095) & ~(size_t)4095}; /* nt * per >= n */
	lq_pool_run(p, pool_copy_task, &c, (int)nt);
}

void lq_pool_run(struct lq_pool *p, void (*fn)(void *ctx, int i, int ntasks), void *ctx,
		 int ntasks)
{
	if (ntasks <= 0)
		return;
	if (!p || p->n == 1 || ntasks == 1) {
		for (int i = 0; i < ntasks; i++)
			fn(ctx, i, ntasks);
		return;
	}
	/* every worker has finished the previous job (running was 0) */
	p->fn = fn;
	p->ctx = ctx;
	p->ntasks = ntasks;
	__atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&p->running, p->n - 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&p->mu);
	__atomic_store_n(&p->gen, p->gen + 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	pool_work(p);
	for (int spins = 0; spins < POOL_SPIN; spins++) {
		if (__atomic_load_n(&p->running, __ATOMIC_ACQUIRE) == 0)
			return;
		cpu_relax();
	}
	pthread_mutex_lock(&p->mu);
	while (__atomic_load_n(&p->running, __ATOMIC_ACQUIRE) > 0)
		pthread_cond_wait(&p->done, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

/* ================================================================ weights */

int lq_weight_init(struct lq_weight *w, const struct lq_tensor *t, struct lq_error *err)
{
	memset(w, 0, sizeof *w);
	if (t->ndim == 2) {
		w->rows = t->shape[0];
		w->cols = t->shape[1];
	} else if (t->ndim == 1) {
		w->rows = 1;
		w->cols = t->shape[0];
	} else {
		return lq_fail(err, LQ_ERR_SHAPE, "tensor '%s': %d dimensions, a matrix expected",
			       t->name, t->ndim);
	}
	w->qtype = t->qtype;
	w->dtype = t->src_dtype;
	w->data = t->data;
	if (t->qtype == LQ_QTYPE_NONE) {
		if (t->src_dtype != LQ_DTYPE_F32 && t->src_dtype != LQ_DTYPE_F16 &&
		    t->src_dtype != LQ_DTYPE_BF16)
			return lq_fail(err, LQ_ERR_UNSUPPORTED, "tensor '%s': dtype %s cannot be computed with",
				       t->name, lq_dtype_name(t->src_dtype));
		return LQ_OK;
	}
	if (t->qtype != LQ_QTYPE_NF4 && t->qtype != LQ_QTYPE_FP4 && t->qtype != LQ_QTYPE_INT8)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "tensor '%s': unknown storage type %d",
			       t->name, t->qtype);
	if (t->block_size < LQ_QBLOCK_MIN || t->block_size > LQ_QBLOCK_MAX ||
	    (t->block_size & (t->block_size - 1)))
		return lq_fail(err, LQ_ERR_UNSUPPORTED,
			       "tensor '%s': block size %d is not supported by the runtime "
			       "(row-wise int8 is not)", t->name, t->block_size);
	w->block_size = t->block_size;
	uint64_t nb = lq_qnblocks(t->nelem, t->block_size);
	if (nb > SIZE_MAX / sizeof(float))
		return lq_fail(err, LQ_ERR_NOMEM, "tensor '%s': too large", t->name);
	w->scales = malloc((size_t)(nb ? nb : 1) * sizeof(float));
	if (!w->scales)
		return lq_fail(err, LQ_ERR_NOMEM, "tensor '%s': out of memory for scales", t->name);
	struct lq_qparams p;
	struct lq_qbuf b;
	lq_tensor_qparams(t, &p);
	lq_tensor_qbuf(t, &b);
	lq_qscales_f32(&p, &b, t->nelem, w->scales);
	return LQ_OK;
}

void lq_weight_release(struct lq_weight *w)
{
	if (!w)
		return;
	free(w->scales);
	w->scales = NULL;
}

static const float *q4_tab(int qtype)
{
	return qtype == LQ_QTYPE_NF4 ? lq_nf4_table() : lq_fp4_table();
}

/* Element i of the flattened weight (reference decoding). */
static float weight_elem(const struct lq_weight *w, uint64_t i)
{
	switch (w->qtype) {
	case LQ_QTYPE_NONE:
		switch (w->dtype) {
		case LQ_DTYPE_F32: {
			float f;
			memcpy(&f, (const uint8_t *)w->data + 4 * i, 4);
			return f;
		}
		case LQ_DTYPE_F16:
			return lq_f16_to_f32(lq_rd16((const uint8_t *)w->data + 2 * i));
		default:
			return lq_bf16_to_f32(lq_rd16((const uint8_t *)w->data + 2 * i));
		}
	case LQ_QTYPE_INT8:
		return (float)((const int8_t *)w->data)[i] *
		       (w->scales[i / (uint64_t)w->block_size] * (1.0f / 127.0f));
	default: {
		uint8_t byte = ((const uint8_t *)w->data)[i / 2];
		int code = (i & 1) ? byte & 15 : byte >> 4;
		return q4_tab(w->qtype)[code] * w->scales[i / (uint64_t)w->block_size];
	}
	}
}

void lq_weight_row(const struct lq_weight *w, uint64_t r, float *out)
{
	uint64_t K = w->cols, i0 = r * K;
	switch (w->qtype) {
	case LQ_QTYPE_NONE:
		lq_to_f32(out, (const uint8_t *)w->data + i0 * lq_dtype_size(w->dtype), w->dtype,
			  (size_t)K);
		return;
	case LQ_QTYPE_INT8: {
		uint64_t bs = (uint64_t)w->block_size;
		const int8_t *q = (const int8_t *)w->data + i0;
		uint64_t c = 0;
		while (c < K) {
			uint64_t i = i0 + c, b = i / bs, end = (b + 1) * bs - i0;
			if (end > K)
				end = K;
			float s = w->scales[b] * (1.0f / 127.0f);
			for (uint64_t j = c; j < end; j++)
				out[j] = (float)q[j] * s;
			c = end;
		}
		return;
	}
	default: {
		const float *tab = q4_tab(w->qtype);
		uint64_t bs = (uint64_t)w->block_size;
		if ((i0 & 1) == 0 && (K & 1) == 0) {
			const uint8_t *d = (const uint8_t *)w->data + i0 / 2;
			uint64_t c = 0;
			while (c < K) {
				uint64_t i = i0 + c, b = i / bs, end = (b + 1) * bs - i0;
				if (end > K)
					end = K;
				float s = w->scales[b];
				for (uint64_t j = c; j < end; j += 2) {
					uint8_t byte = d[j / 2];
					out[j] = tab[byte >> 4] * s;
					out[j + 1] = tab[byte & 15] * s;
				}
				c = end;
			}
			return;
		}
		for (uint64_t j = 0; j < K; j++)
			out[j] = weight_elem(w, i0 + j);
		return;
	}
	}
}

void lq_matmul_ref(const struct lq_weight *w, const float *x, size_t n, float *y)
{
	uint64_t R = w->rows, K = w->cols;
	for (size_t t = 0; t < n; t++)
		for (uint64_t r = 0; r < R; r++) {
			double acc = 0;
			for (uint64_t c = 0; c < K; c++)
				acc += (double)weight_elem(w, r * K + c) * x[t * K + c];
			y[t * R + r] = (float)acc;
		}
}

float lq_dot_f32(const float *restrict a, const float *restrict b, size_t n)
{
	float acc[8] = {0};
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int l = 0; l < 8; l++)
			acc[l] += a[i + l] * b[i + l];
	for (; i < n; i++)
		acc[i & 7] += a[i] * b[i];
	return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* ------------------------------------------------------ AVX2 + FMA kernels */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(LQ_NO_SIMD)
#include <immintrin.h>
#define LQ_HAVE_AVX2 1

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

AVX2_TARGET static float hsum256(__m256 v)
{
	__m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
	lo = _mm_add_ps(lo, hi);
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
	return _mm_cvtss_f32(lo);
}

/* 8 codes (bytes 0..15) -> table values */
AVX2_TARGET static __m256 q4_lookup(__m128i codes8, __m256 tlo, __m256 thi)
{
	__m256i idx = _mm256_cvtepu8_epi32(codes8);
	__m256 a = _mm256_permutevar8x32_ps(tlo, idx), b = _mm256_permutevar8x32_ps(thi, idx);
	__m256 m = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)); /* bit 3 -> sign */
	return _mm256_blendv_ps(a, b, m);
}

/* Dot of row r with x; the row starts on a block boundary and K is a
 * multiple of the block size (quantized) or of 8 (unquantized). */
AVX2_TARGET static float dot_row_avx2(const struct lq_weight *w, uint64_t r, const float *x)
{
	uint64_t K = w->cols, i0 = r * K;
	__m256 acc = _mm256_setzero_ps();
	switch (w->qtype) {
	case LQ_QTYPE_NONE:
		if (w->dtype == LQ_DTYPE_F32) {
			const float *d = (const float *)w->data + i0;
			for (uint64_t c = 0; c < K; c += 8)
				acc = _mm256_fmadd_ps(_mm256_loadu_ps(d + c), _mm256_loadu_ps(x + c), acc);
		} else if (w->dtype == LQ_DTYPE_BF16) {
			const uint16_t *d = (const uint16_t *)w->data + i0;
			for (uint64_t c = 0; c < K; c += 8) {
				__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(d + c)));
				__m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
				acc = _mm256_fmadd_ps(f, _mm256_loadu_ps(x + c), acc);
			}
		} else {
			const uint16_t *d = (const uint16_t *)w->data + i0;
			for (uint64_t c = 0; c < K; c += 8) {
				__m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + c)));
				acc = _mm256_fmadd_ps(f, _mm256_loadu_ps(x + c), acc);
			}
		}
		return hsum256(acc);
	case LQ_QTYPE_INT8: {
		uint64_t bs = (uint64_t)w->block_size;
		const int8_t *q = (const int8_t *)w->data + i0;
		const float *sc = w->scales + i0 / bs;
		for (uint64_t c = 0, b = 0; c < K; c += bs, b++) {
			__m256 ba = _mm256_setzero_ps();
			for (uint64_t j = c; j < c + bs; j += 8) {
				__m128i v8 = _mm_loadl_epi64((const __m128i *)(q + j));
				__m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v8));
				ba = _mm256_fmadd_ps(f, _mm256_loadu_ps(x + j), ba);
			}
			acc = _mm256_fmadd_ps(ba, _mm256_set1_ps(sc[b] * (1.0f / 127.0f)), acc);
		}
		return hsum256(acc);
	}
	default: {
		uint64_t bs = (uint64_t)w->block_size;
		const float *tab = q4_tab(w->qtype);
		__m256 tlo = _mm256_loadu_ps(tab), thi = _mm256_loadu_ps(tab + 8);
		const uint8_t *d = (const uint8_t *)w->data + i0 / 2;
		const float *sc = w->scales + i0 / bs;
		const __m128i m4 = _mm_set1_epi8(15);
		for (uint64_t c = 0, b = 0; c < K; c += bs, b++) {
			__m256 ba = _mm256_setzero_ps();
			for (uint64_t j = c; j < c + bs; j += 32) {
				__m128i bytes = _mm_loadu_si128((const __m128i *)(d + j / 2));
				__m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m4);
				__m128i lo = _mm_and_si128(bytes, m4);
				__m128i c0 = _mm_unpacklo_epi8(hi, lo), c1 = _mm_unpackhi_epi8(hi, lo);
				ba = _mm256_fmadd_ps(q4_lookup(c0, tlo, thi), _mm256_loadu_ps(x + j), ba);
				ba = _mm256_fmadd_ps(q4_lookup(_mm_srli_si128(c0, 8), tlo, thi),
						     _mm256_loadu_ps(x + j + 8), ba);
				ba = _mm256_fmadd_ps(q4_lookup(c1, tlo, thi), _mm256_loadu_ps(x + j + 16), ba);
				ba = _mm256_fmadd_ps(q4_lookup(_mm_srli_si128(c1, 8), tlo, thi),
						     _mm256_loadu_ps(x + j + 24), ba);
			}
			acc = _mm256_fmadd_ps(ba, _mm256_set1_ps(sc[b]), acc);
		}
		return hsum256(acc);
	}
	}
}

/* ------------------------------------------------------ AVX-512 kernels
 *
 * Decode (few tokens) streams every weight once per token, so these kernels
 * decode as few instructions per weight as possible and prefetch the
 * weights PF_AHEAD bytes ahead (the hardware prefetcher alone keeps too few
 * lines in flight behind a decode loop: measured 2x slower than a plain
 * sum).  The activations are first permuted (perm_q4, perm_pair) into the
 * order in which a 512-bit load of weights yields its elements, zero-padded
 * to whole chunks, so no weight needs a shuffle to line up with its
 * activation. */

#define AVX512_TARGET __attribute__((target("avx512f,avx2,fma")))
#ifndef PF_AHEAD
#define PF_AHEAD 4096
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T0
#endif

/* 4-bit chunks of 128 elements = 64 code bytes: dword lane j holds bytes
 * 4j..4j+3, i.e. elements 8j..8j+7, and the nibble at bit 4k of lane j
 * (vpermps reads the low 4 bits of each lane after a shift by 4k) is
 * element 8j + (k ^ 1), high nibble first. */
static uint64_t q4_padded(uint64_t K)
{
	return (K + 127) & ~(uint64_t)127;
}

static void perm_q4(const float *x, float *xp, uint64_t K)
{
	uint64_t c = 0;
	for (; c + 128 <= K; c += 128)
		for (unsigned l = 0; l < 16; l++)
			for (unsigned k = 0; k < 8; k++)
				xp[c + 16 * k + l] = x[c + 8 * l + (k ^ 1)];
	for (unsigned k = 0; c < K && k < 8; k++)
		for (unsigned l = 0; l < 16; l++) {
			uint64_t e = c + 8 * l + (k ^ 1);
			xp[c + 16 * k + l] = e < K ? x[e] : 0.0f;
		}
}

/* bf16 chunks of 32 elements: dword lane j holds elements 2j (low half)
 * and 2j + 1 (high half). */
static uint64_t pair_padded(uint64_t K)
{
	return (K + 31) & ~(uint64_t)31;
}

static void perm_pair(const float *x, float *xp, uint64_t K)
{
	for (uint64_t c = 0; c < K; c += 32)
		for (unsigned l = 0; l < 16; l++) {
			uint64_t e = c + 2 * l;
			xp[c + l] = e < K ? x[e] : 0.0f;
			xp[c + 16 + l] = e + 1 < K ? x[e + 1] : 0.0f;
		}
}

/* 8 table lookups of the nibbles of q against 128 permuted activations. */
AVX512_TARGET static inline __m512 q4_chunk(__m512i q, __m512 tab, const float *xc)
{
	__m512 a = _mm512_mul_ps(_mm512_permutexvar_ps(q, tab), _mm512_loadu_ps(xc));
	__m512 b = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), tab),
				 _mm512_loadu_ps(xc + 16));
	a = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 8), tab),
			    _mm512_loadu_ps(xc + 32), a);
	b = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 12), tab),
			    _mm512_loadu_ps(xc + 48), b);
	a = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 16), tab),
			    _mm512_loadu_ps(xc + 64), a);
	b = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 20), tab),
			    _mm512_loadu_ps(xc + 80), b);
	a = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 24), tab),
			    _mm512_loadu_ps(xc + 96), a);
	b = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 28), tab),
			    _mm512_loadu_ps(xc + 112), b);
	return _mm512_add_ps(a, b);
}

/* NF4/FP4 row dot with AVX-512 against perm_q4 activations: one 64-byte
 * load, 7 shifts and 8 permutes per 128 weights.  The row starts on a block
 * boundary; the block size is a power of two >= 32 dividing K. */
AVX512_TARGET static float dot_row_q4_avx512(const struct lq_weight *w, uint64_t r,
					     const float *xp)
{
	uint64_t K = w->cols, i0 = r * K, bs = (uint64_t)w->block_size;
	unsigned lb = (unsigned)__builtin_ctzll(bs); /* bs is a power of two */
	const __m512 tab = _mm512_loadu_ps(q4_tab(w->qtype));
	const uint8_t *d = (const uint8_t *)w->data + i0 / 2;
	const float *sc = w->scales + (i0 >> lb);
	/* lane j of a chunk (elements 8j..8j+7) takes the scale of block 8j / bs:
	 * blocks of 32 or 64 elements, 4 or 2 scales per chunk */
	const __m512i sidx = _mm512_srli_epi32(
		_mm512_set_epi32(120, 112, 104, 96, 88, 80, 72, 64, 56, 48, 40, 32, 24, 16, 8, 0),
		lb < 7 ? lb : 7);
	const __mmask16 sall = bs < 128 ? (__mmask16)((1u << (128 >> lb)) - 1) : 1;
	__m512 acc = _mm512_setzero_ps();
	uint64_t c = 0;
	if (bs < 128) {
		const uint64_t per = 128 >> lb; /* scales per chunk */
		for (; c + 128 <= K; c += 128, sc += per) {
			_mm_prefetch((const char *)(d + c / 2) + PF_AHEAD, PF_HINT);
			__m512i q = _mm512_loadu_si512(d + c / 2);
			__m512 s = _mm512_permutexvar_ps(sidx, _mm512_maskz_loadu_ps(sall, sc));
			acc = _mm512_fmadd_ps(q4_chunk(q, tab, xp + c), s, acc);
		}
	} else {
		for (; c + 128 <= K; c += 128) { /* K is a multiple of bs >= 128 */
			_mm_prefetch((const char *)(d + c / 2) + PF_AHEAD, PF_HINT);
			__m512i q = _mm512_loadu_si512(d + c / 2);
			acc = _mm512_fmadd_ps(q4_chunk(q, tab, xp + c), _mm512_set1_ps(sc[c >> lb]), acc);
		}
	}
	if (c < K) {
		/* the last, partial chunk (bs <= 64 here: K is a multiple of bs):
		 * lanes past K load zero codes, which meet the zero padding of xp;
		 * only the row's own scales are read */
		uint64_t left = K - c;
		__mmask16 m = (__mmask16)((1u << (left / 8)) - 1);
		__mmask16 ms = (__mmask16)((1u << (left >> lb)) - 1);
		__m512i q = _mm512_maskz_loadu_epi32(m, d + c / 2);
		__m512 s = _mm512_permutexvar_ps(sidx, _mm512_maskz_loadu_ps(ms, sc));
		acc = _mm512_fmadd_ps(q4_chunk(q, tab, xp + c), s, acc);
	}
	return _mm512_reduce_add_ps(acc);
}

/* bf16 row dot with AVX-512 against perm_pair activations: the low halves
 * shifted up and the high halves masked are the float32 values. */
AVX512_TARGET static float dot_row_bf16_avx512(const struct lq_weight *w, uint64_t r,
					       const float *xp)
{
	uint64_t K = w->cols;
	const uint16_t *d = (const uint16_t *)w->data + r * K;
	const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
	__m512 a = _mm512_setzero_ps(), b = a;
	uint64_t c = 0;
	for (; c + 32 <= K; c += 32) {
		_mm_prefetch((const char *)(d + c) + PF_AHEAD, PF_HINT);
		__m512i v = _mm512_loadu_si512(d + c);
		a = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)),
				    _mm512_loadu_ps(xp + c), a);
		b = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi)),
				    _mm512_loadu_ps(xp + c + 16), b);
	}
	if (c < K) { /* K is even here */
		__m512i v = _mm512_maskz_loadu_epi32((__mmask16)((1u << ((K - c) / 2)) - 1), d + c);
		a = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)),
				    _mm512_loadu_ps(xp + c), a);
		b = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi)),
				    _mm512_loadu_ps(xp + c + 16), b);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(a, b));
}

/* INT8 row dot with AVX-512 (16 codes per step, natural activation order). */
AVX512_TARGET static float dot_row_i8_avx512(const struct lq_weight *w, uint64_t r, const float *x)
{
	uint64_t K = w->cols, i0 = r * K, bs = (uint64_t)w->block_size;
	const int8_t *q = (const int8_t *)w->data + i0;
	const float *sc = w->scales + i0 / bs;
	__m512 acc = _mm512_setzero_ps();
	for (uint64_t c = 0, b = 0; c < K; c += bs, b++) {
		__m512 ba = _mm512_setzero_ps(), bb = ba;
		for (uint64_t j = c; j < c + bs; j += 32) {
			_mm_prefetch((const char *)(q + j) + PF_AHEAD, PF_HINT);
			__m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + j))));
			__m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + j + 16))));
			ba = _mm512_fmadd_ps(f0, _mm512_loadu_ps(x + j), ba);
			bb = _mm512_fmadd_ps(f1, _mm512_loadu_ps(x + j + 16), bb);
		}
		acc = _mm512_fmadd_ps(_mm512_add_ps(ba, bb), _mm512_set1_ps(sc[b] * (1.0f / 127.0f)), acc);
	}
	return _mm512_reduce_add_ps(acc);
}

/* Dot of 4 token rows with one dequantized weight row (prefill). */
AVX2_TARGET static void dot4_avx2(const float *row, const float *x, size_t K, size_t ntok,
				  float *out)
{
	size_t t = 0;
	for (; t + 4 <= ntok; t += 4) {
		const float *x0 = x + t * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		size_t c = 0;
		for (; c + 8 <= K; c += 8) {
			__m256 wv = _mm256_loadu_ps(row + c);
			a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + c), a0);
			a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + c), a1);
			a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + c), a2);
			a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + c), a3);
		}
		float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
		for (; c < K; c++) {
			s0 += row[c] * x0[c];
			s1 += row[c] * x1[c];
			s2 += row[c] * x2[c];
			s3 += row[c] * x3[c];
		}
		out[t] = s0;
		out[t + 1] = s1;
		out[t + 2] = s2;
		out[t + 3] = s3;
	}
	for (; t < ntok; t++) {
		const float *xt = x + t * K;
		__m256 a = _mm256_setzero_ps();
		size_t c = 0;
		for (; c + 8 <= K; c += 8)
			a = _mm256_fmadd_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(xt + c), a);
		float s = hsum256(a);
		for (; c < K; c++)
			s += row[c] * xt[c];
		out[t] = s;
	}
}

/* Two dequantized rows against ntok token rows, 4 tokens at a time
 * (8 accumulators: each x load feeds two FMAs). */
AVX2_TARGET static void dot2x4_avx2(const float *ra, const float *rb, const float *x, size_t K,
				    size_t ntok, float *oa, float *ob)
{
	size_t t = 0;
	for (; t + 4 <= ntok; t += 4) {
		const float *x0 = x + t * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
		__m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
		size_t c = 0;
		for (; c + 8 <= K; c += 8) {
			__m256 wa = _mm256_loadu_ps(ra + c), wb = _mm256_loadu_ps(rb + c), xv;
			xv = _mm256_loadu_ps(x0 + c);
			a0 = _mm256_fmadd_ps(wa, xv, a0);
			b0 = _mm256_fmadd_ps(wb, xv, b0);
			xv = _mm256_loadu_ps(x1 + c);
			a1 = _mm256_fmadd_ps(wa, xv, a1);
			b1 = _mm256_fmadd_ps(wb, xv, b1);
			xv = _mm256_loadu_ps(x2 + c);
			a2 = _mm256_fmadd_ps(wa, xv, a2);
			b2 = _mm256_fmadd_ps(wb, xv, b2);
			xv = _mm256_loadu_ps(x3 + c);
			a3 = _mm256_fmadd_ps(wa, xv, a3);
			b3 = _mm256_fmadd_ps(wb, xv, b3);
		}
		float sa[4] = { hsum256(a0), hsum256(a1), hsum256(a2), hsum256(a3) };
		float sb[4] = { hsum256(b0), hsum256(b1), hsum256(b2), hsum256(b3) };
		for (; c < K; c++)
			for (int i = 0; i < 4; i++) {
				sa[i] += ra[c] * x0[(size_t)i * K + c];
				sb[i] += rb[c] * x0[(size_t)i * K + c];
			}
		for (int i = 0; i < 4; i++) {
			oa[t + (size_t)i] = sa[i];
			ob[t + (size_t)i] = sb[i];
		}
	}
	if (t < ntok) {
		dot4_avx2(ra, x + t * K, K, ntok - t, oa + t);
		dot4_avx2(rb, x + t * K, K, ntok - t, ob + t);
	}
}

static int have_avx2(void)
{
	/* every AVX2 CPU also has F16C, which clang 14 cannot test for */
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static int avx2_ok(const struct lq_weight *w)
{
	if (!have_avx2())
		return 0;
	if (w->qtype == LQ_QTYPE_NONE)
		return w->cols % 8 == 0;
	return w->block_size % 32 == 0 && w->cols % (uint64_t)w->block_size == 0;
}
#else
#define LQ_HAVE_AVX2 0
#endif

struct mm_job {
	const struct lq_weight *w;
	const float *x;
	size_t n;
	float *y;
	int fused;  /* AVX2 dot per row and token, no row buffer */
	int avx2;   /* AVX2 dots against the row buffer */
	int avx512; /* fused dots with AVX-512: INT8 on x, NF4/FP4/bf16 on xp */
	const float *xp; /* permuted activations (perm_q4 / perm_pair), or NULL */
	uint64_t kp;     /* their row stride */
	uint64_t chunk;  /* rows per task */
};

#define MM_CHUNK 16 /* rows per task, at least */
#ifndef MM_TASK_BYTES
/* fused (decode) tasks: at least this many weight bytes, so that each task
 * streams a long contiguous run that the prefetches keep ahead of */
#define MM_TASK_BYTES 65536
#endif

static void mm_task(void *ctx, int i, int ntasks)
{
	(void)ntasks;
	struct mm_job *j = ctx;
	uint64_t R = j->w->rows, K = j->w->cols;
	uint64_t r0 = (uint64_t)i * j->chunk, r1 = r0 + j->chunk;
	if (r1 > R)
		r1 = R;
#if LQ_HAVE_AVX2
	if (j->fused && j->avx512) {
		const struct lq_weight *w = j->w;
		for (uint64_t r = r0; r < r1; r++)
			for (size_t t = 0; t < j->n; t++)
				j->y[t * R + r] =
					w->qtype == LQ_QTYPE_INT8 ? dot_row_i8_avx512(w, r, j->x + t * K)
					: w->qtype == LQ_QTYPE_NONE ? dot_row_bf16_avx512(w, r, j->xp + t * j->kp)
								    : dot_row_q4_avx512(w, r, j->xp + t * j->kp);
		return;
	}
	if (j->fused) {
		for (uint64_t r = r0; r < r1; r++)
			for (size_t t = 0; t < j->n; t++)
				j->y[t * R + r] = dot_row_avx2(j->w, r, j->x + t * K);
		return;
	}
#endif
	float stackbuf[1024];
	float *row = K <= 1024 ? stackbuf : malloc((size_t)K * sizeof(float));
	if (!row) {
		/* out of memory for a row buffer: fall back to the reference */
		for (size_t t = 0; t < j->n; t++)
			for (uint64_t r = r0; r < r1; r++) {
				double acc = 0;
				for (uint64_t c = 0; c < K; c++)
					acc += (double)weight_elem(j->w, r * K + c) * j->x[t * K + c];
				j->y[t * R + r] = (float)acc;
			}
		return;
	}
#if LQ_HAVE_AVX2
	if (j->avx2) {
		float oa[64], ob[64];
		float *pair = row;
		if (r1 - r0 >= 2 && 2 * K > 1024) {
			pair = malloc(2 * (size_t)K * sizeof(float));
			if (!pair)
				pair = row; /* rows one at a time below */
		}
		uint64_t r = r0;
		if (pair != row || 2 * K <= 1024) {
			for (; r + 2 <= r1; r += 2) {
				lq_weight_row(j->w, r, pair);
				lq_weight_row(j->w, r + 1, pair + K);
				for (size_t t0 = 0; t0 < j->n; t0 += 64) {
					size_t nt = j->n - t0 < 64 ? j->n - t0 : 64;
					dot2x4_avx2(pair, pair + K, j->x + t0 * K, (size_t)K, nt, oa, ob);
					for (size_t t = 0; t < nt; t++) {
						j->y[(t0 + t) * R + r] = oa[t];
						j->y[(t0 + t) * R + r + 1] = ob[t];
					}
				}
			}
		}
		if (pair != row)
			free(pair);
		for (; r < r1; r++) {
			lq_weight_row(j->w, r, row);
			for (size_t t0 = 0; t0 < j->n; t0 += 64) {
				size_t nt = j->n - t0 < 64 ? j->n - t0 : 64;
				dot4_avx2(row, j->x + t0 * K, (size_t)K, nt, oa);
				for (size_t t = 0; t < nt; t++)
					j->y[(t0 + t) * R + r] = oa[t];
			}
		}
		if (row != stackbuf)
			free(row);
		return;
	}
#endif
	for (uint64_t r = r0; r < r1; r++) {
		lq_weight_row(j->w, r, row);
		for (size_t t = 0; t < j->n; t++)
			j->y[t * R + r] = lq_dot_f32(row, j->x + t * K, (size_t)K);
	}
	if (row != stackbuf)
		free(row);
}

void lq_matmul(const struct lq_weight *w, const float *x, size_t n, float *y,
	       struct lq_pool *pool)
{
	if (w->rows == 0 || n == 0)
		return;
	/* few tokens: fused dequantize-dot (the row is decoded once per token);
	 * more: decode the row once into a buffer and reuse it */
	struct mm_job j = { w, x, n, y, 0, 0, 0, NULL, 0, MM_CHUNK };
	float *xp = NULL;
#if LQ_HAVE_AVX2
	j.fused = n <= 4 && avx2_ok(w);
	j.avx2 = have_avx2();
	if (j.fused && __builtin_cpu_supports("avx512f")) {
		int q4 = w->qtype == LQ_QTYPE_NF4 || w->qtype == LQ_QTYPE_FP4;
		int bf16 = w->qtype == LQ_QTYPE_NONE && w->dtype == LQ_DTYPE_BF16;
		if (q4 || bf16) {
			/* permuted activations; out of memory: the AVX2 kernels */
			uint64_t kp = q4 ? q4_padded(w->cols) : pair_padded(w->cols);
			if (kp <= SIZE_MAX / sizeof(float) / n)
				xp = malloc(n * (size_t)kp * sizeof(float));
			if (xp) {
				for (size_t t = 0; t < n; t++)
					(q4 ? perm_q4 : perm_pair)(x + t * w->cols, xp + t * kp, w->cols);
				j.xp = xp;
				j.kp = kp;
				j.avx512 = 1;
			}
		} else if (w->qtype == LQ_QTYPE_INT8) {
			j.avx512 = 1;
		}
	}
#endif

	j.chunk = MM_CHUNK;
	if (j.fused) {
		uint64_t rb = w->cols; /* bytes per row */
		if (w->qtype == LQ_QTYPE_NF4 || w->qtype == LQ_QTYPE_FP4)
			rb = w->cols / 2;
		else if (w->qtype == LQ_QTYPE_NONE)
			rb = w->cols * lq_dtype_size(w->dtype);
		if (rb && MM_TASK_BYTES / rb > MM_CHUNK)
			j.chunk = MM_TASK_BYTES / rb;
		/* but at least two tasks per thread */
		uint64_t per = w->rows / (2 * (uint64_t)lq_pool_size(pool));
		if (per < j.chunk)
			j.chunk = per > MM_CHUNK ? per : MM_CHUNK;
	}
	uint64_t ntasks = (w->rows + j.chunk - 1) / j.chunk;
	if (ntasks > INT32_MAX)
		ntasks = INT32_MAX; /* not reachable for sane shapes */
	lq_pool_run(pool, mm_task, &j, (int)ntasks);
	free(xp);
}
