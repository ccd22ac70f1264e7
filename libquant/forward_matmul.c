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

struct lq_pool {
	int n;                 /* threads including the caller */
	pthread_t *th;
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	uint64_t gen;          /* job generation */
	int quit;
	void (*fn)(void *, int, int);
	void *ctx;
	int ntasks;
	int next;              /* next task index to take */
	int running;           /* workers still in the current job */
};

static void pool_work(struct lq_pool *p)
{
	for (;;) {
		pthread_mutex_lock(&p->mu);
		int i = p->next < p->ntasks ? p->next++ : -1;
		pthread_mutex_unlock(&p->mu);
		if (i < 0)
			return;
		p->fn(p->ctx, i, p->ntasks);
	}
}

static void *pool_main(void *arg)
{
	struct lq_pool *p = arg;
	uint64_t seen = 0;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (!p->quit && p->gen == seen)
			pthread_cond_wait(&p->go, &p->mu);
		if (p->quit) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		seen = p->gen;
		pthread_mutex_unlock(&p->mu);
		pool_work(p);
		pthread_mutex_lock(&p->mu);
		if (--p->running == 0)
			pthread_cond_signal(&p->done);
		pthread_mutex_unlock(&p->mu);
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
	p->quit = 1;
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
	pthread_mutex_lock(&p->mu);
	p->fn = fn;
	p->ctx = ctx;
	p->ntasks = ntasks;
	p->next = 0;
	p->running = p->n - 1;
	p->gen++;
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	pool_work(p);
	pthread_mutex_lock(&p->mu);
	while (p->running > 0)
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

/* Dot product in 8 float32 lanes (vectorizable), lanes summed pairwise. */
static float dot_f32(const float *restrict a, const float *restrict b, size_t n)
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

/* NF4/FP4 row dot with AVX-512: one permute decodes 16 codes. */
__attribute__((target("avx512f,avx2,fma"))) static float dot_row_q4_avx512(const struct lq_weight *w,
									 uint64_t r, const float *x)
{
	uint64_t K = w->cols, i0 = r * K, bs = (uint64_t)w->block_size;
	__m512 tab = _mm512_loadu_ps(q4_tab(w->qtype));
	const uint8_t *d = (const uint8_t *)w->data + i0 / 2;
	const float *sc = w->scales + i0 / bs;
	const __m128i m4 = _mm_set1_epi8(15);
	__m512 acc = _mm512_setzero_ps();
	for (uint64_t c = 0, b = 0; c < K; c += bs, b++) {
		__m512 ba = _mm512_setzero_ps();
		for (uint64_t j = c; j < c + bs; j += 32) {
			__m128i bytes = _mm_loadu_si128((const __m128i *)(d + j / 2));
			__m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), m4);
			__m128i lo = _mm_and_si128(bytes, m4);
			__m512 v0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo)), tab);
			__m512 v1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo)), tab);
			ba = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x + j), ba);
			ba = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x + j + 16), ba);
		}
		acc = _mm512_fmadd_ps(ba, _mm512_set1_ps(sc[b]), acc);
	}
	return _mm512_reduce_add_ps(acc);
}

/* INT8 row dot with AVX-512 (16 codes per step). */
__attribute__((target("avx512f,avx2,fma"))) static float dot_row_i8_avx512(const struct lq_weight *w,
									 uint64_t r, const float *x)
{
	uint64_t K = w->cols, i0 = r * K, bs = (uint64_t)w->block_size;
	const int8_t *q = (const int8_t *)w->data + i0;
	const float *sc = w->scales + i0 / bs;
	__m512 acc = _mm512_setzero_ps();
	for (uint64_t c = 0, b = 0; c < K; c += bs, b++) {
		__m512 ba = _mm512_setzero_ps();
		for (uint64_t j = c; j < c + bs; j += 16) {
			__m128i v = _mm_loadu_si128((const __m128i *)(q + j));
			__m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
			ba = _mm512_fmadd_ps(f, _mm512_loadu_ps(x + j), ba);
		}
		acc = _mm512_fmadd_ps(ba, _mm512_set1_ps(sc[b] * (1.0f / 127.0f)), acc);
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
	int avx512; /* quantized fused dots with AVX-512 */
};

#define MM_CHUNK 16 /* rows per task */

static void mm_task(void *ctx, int i, int ntasks)
{
	(void)ntasks;
	struct mm_job *j = ctx;
	uint64_t R = j->w->rows, K = j->w->cols;
	uint64_t r0 = (uint64_t)i * MM_CHUNK, r1 = r0 + MM_CHUNK;
	if (r1 > R)
		r1 = R;
#if LQ_HAVE_AVX2
	if (j->fused && j->avx512) {
		int i8 = j->w->qtype == LQ_QTYPE_INT8;
		for (uint64_t r = r0; r < r1; r++)
			for (size_t t = 0; t < j->n; t++)
				j->y[t * R + r] = i8 ? dot_row_i8_avx512(j->w, r, j->x + t * K)
						     : dot_row_q4_avx512(j->w, r, j->x + t * K);
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
			j->y[t * R + r] = dot_f32(row, j->x + t * K, (size_t)K);
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
	struct mm_job j = { w, x, n, y, 0, 0, 0 };
#if LQ_HAVE_AVX2
	j.fused = n <= 4 && avx2_ok(w);
	j.avx2 = have_avx2();
	j.avx512 = j.fused && w->qtype != LQ_QTYPE_NONE && __builtin_cpu_supports("avx512f");
#endif

	uint64_t ntasks = (w->rows + MM_CHUNK - 1) / MM_CHUNK;
	if (ntasks > INT32_MAX)
		ntasks = INT32_MAX; /* not reachable for sane shapes */
	lq_pool_run(pool, mm_task, &j, (int)ntasks);
}
