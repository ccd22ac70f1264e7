/*
 * quant.c - blockwise NF4/FP4/INT8 quantization with bitsandbytes' double
 * quant of the scales: a plain scalar reference and a fast path (AVX2 when
 * the CPU has it, threads over ranges of blocks) that gives the same bytes.
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * NF4/FP4 are bit-exact with bitsandbytes' CUDA quantize_4bit (see
 * docs/bnb-format.md sections 1-2 and lq_blocks.h).  Per block b:
 *   absmax[b] = max |x_i| (float32; NaN ignored as CUDA's fmaxf does; the
 *               zero padding of a partial last block takes part)
 *   s_i = x_i * rcp(absmax[b]),  code_i = lq_nf4_encode(s_i) / lq_fp4_encode(s_i)
 *   w_i = table[code_i] * absmax[b]
 * rcp is bnb's fast-math reciprocal (MUFU.RCP, up to 1 ulp off IEEE):
 * lq_bnb_rcp reproduces it exactly for every absmax of a bf16/f16 tensor
 * (measured table, lq_blocks.h) and falls back to the IEEE reciprocal for
 * other float32 mantissas.  With the IEEE reciprocal alone, 25 of 262144
 * FP4 codes of the bf16 fixture differed (x/absmax lands exactly on FP4's
 * simple thresholds 5/24, 7/24, 5/6); with the table none do.  bnb's
 * arithmetic also flushes subnormals; we do not (irrelevant for weights).
 *
 * INT8 blockwise (libquant's own format, no bnb equivalent):
 *   absmax[b] = max |x_i| over block b, computed exactly as above;
 *   q_i = (int8) clamp(rintf(x_i * (127.0f / absmax[b])), -127, 127)
 *         (rintf rounds half to even; absmax 0 or a NaN input gives q_i = 0)
 *   w_i = (float)q_i * (absmax[b] * (1.0f / 127.0f))
 *   With double quant the absmax values are quantized exactly like the
 *   4-bit scales below.
 *
 * Double quant (bnb compress_statistics), for all three types:
 *   offset = (float)(sum_b (double)absmax[b]) * (1.0f / (float)nb)   (torch.mean)
 *   per run k of 256 scales: d_b = absmax[b] - offset (float32),
 *     nested[k] = max |d_b| (as absmax above), code[b] =
 *     lq_dyn8_encode(dynamic map, d_b * (1.0f / nested[k]))
 *   rebuilt scale: map[code[b]] * nested[b >> 8] + offset (two float32 roundings)
 */
#include "internal.h"
#include "lq_blocks.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* -DLQ_NO_SIMD builds the portable fast path only (how non-x86 builds run) */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(LQ_NO_SIMD)
#include <immintrin.h>
#define LQ_HAVE_X86 1
#endif

/* ---------------------------------------------------------------- tables */

static const union {
	uint32_t u[16];
	float f[16];
} nf4_tab = {LQ_NF4_BITS_INIT}, fp4_tab = {LQ_FP4_BITS_INIT};

static const union {
	uint32_t u[256];
	float f[256];
} dyn_map = {LQ_DYNMAP_BITS_INIT};

/* bnb's fast-math reciprocal (lq_blocks.h) */
static const uint32_t rcp_plus[32] = LQ_RCP_PLUS_INIT, rcp_minus[32] = LQ_RCP_MINUS_INIT;

static inline float bnb_rcp(float a) { return lq_bnb_rcp(a, rcp_plus, rcp_minus); }

const float *lq_nf4_table(void) { return nf4_tab.f; }
const float *lq_fp4_table(void) { return fp4_tab.f; }
const float *lq_dynamic_map(void) { return dyn_map.f; }

static const float *q4_table(int qtype) { return qtype == LQ_QTYPE_NF4 ? nf4_tab.f : fp4_tab.f; }

/* ---------------------------------------------------------------- sizes */

static int valid_block_size(int bs)
{
	return bs >= LQ_QBLOCK_MIN && bs <= LQ_QBLOCK_MAX && (bs & (bs - 1)) == 0;
}

static int valid_qtype(int q)
{
	return q == LQ_QTYPE_NF4 || q == LQ_QTYPE_FP4 || q == LQ_QTYPE_INT8;
}

uint64_t lq_qnblocks(uint64_t n, int block_size)
{
	return block_size > 0 ? lq_blocks_count(n, (uint64_t)block_size) : 0;
}

size_t lq_qdata_bytes(int qtype, uint64_t n)
{
	switch (qtype) {
	case LQ_QTYPE_NF4:
	case LQ_QTYPE_FP4: return (size_t)lq_blocks_q4_bytes(n);
	case LQ_QTYPE_INT8: return (size_t)n;
	}
	return 0;
}

size_t lq_qscale_bytes(const struct lq_qparams *p, uint64_t n)
{
	if (!p || !valid_block_size(p->block_size))
		return 0;
	uint64_t nb = lq_qnblocks(n, p->block_size);
	return (size_t)(p->double_quant ? nb : nb * 4);
}

size_t lq_qnested_bytes(const struct lq_qparams *p, uint64_t n)
{
	if (!p || !p->double_quant || !valid_block_size(p->block_size))
		return 0;
	return (size_t)(lq_blocks_count(lq_qnblocks(n, p->block_size), LQ_QNESTED_BLOCK) * 4);
}

int lq_qparams_check(const struct lq_qparams *p, struct lq_error *err)
{
	if (!p)
		return lq_fail(err, LQ_ERR_INVALID, "quantization parameters missing");
	if (!valid_qtype(p->qtype))
		return lq_fail(err, LQ_ERR_INVALID, "quantization type %d is not nf4, fp4 or int8",
			       p->qtype);
	if (!valid_block_size(p->block_size))
		return lq_fail(err, LQ_ERR_INVALID,
			       "block size %d is not a power of two in %d..%d", p->block_size,
			       LQ_QBLOCK_MIN, LQ_QBLOCK_MAX);
	return LQ_OK;
}

static int check_quant_args(const struct lq_qparams *p, const void *x, uint64_t n,
			    const struct lq_qbuf *b, const float *work)
{
	if (lq_qparams_check(p, NULL) != LQ_OK || !b)
		return LQ_ERR_INVALID;
	if (n == 0)
		return LQ_OK;
	if (!x || !b->data || !b->scales)
		return LQ_ERR_INVALID;
	if (p->double_quant && (!b->nested || !work))
		return LQ_ERR_INVALID;
	/* every part must be addressable */
	if (n > SIZE_MAX / 4)
		return LQ_ERR_INVALID;
	return LQ_OK;
}

/* ---------------------------------------------------------------- double quant */

/* max |x| as CUDA's fmaxf reduction from -FLT_MAX; a partial block's zero
 * padding takes part. */
static float absmax_ref(const float *x, size_t len, int partial)
{
	float m = -FLT_MAX;
	for (size_t i = 0; i < len; i++)
		m = fmaxf(m, fabsf(x[i]));
	if (partial)
		m = fmaxf(m, 0.0f);
	return m;
}

/*
 * Mean of the scales as torch.mean computes it on CUDA: a float32 sum times
 * the float32 factor 1.0f / (float)nb.  We sum in double and round the sum
 * once (torch's float32 tree sum is order dependent; an exact sum is the best
 * stand-in).  Rounding sum / nb once instead is 1 ulp off bnb's offset for
 * the 33-block fixture tensor.
 */
static float dq_offset(const float *absmax, uint64_t nb)
{
	double sum = 0.0;
	for (uint64_t b = 0; b < nb; b++)
		sum += (double)absmax[b];
	return nb ? (float)sum * (1.0f / (float)nb) : 0.0f;
}

#ifdef LQ_HAVE_X86
static int have_avx2(void);
static void dyn8_encode_avx2(const float *d, size_t len, float inv, uint8_t *codes);
static float sub_absmax_avx2(const float *a, float offset, size_t len, float *d);
#endif

/* Quantize the nested runs k0..k1 of the scales (offset already known);
 * simd selects the AVX2 encoder (same codes). */
static void dq_runs_simd(const float *absmax, uint64_t nb, float offset, uint64_t k0, uint64_t k1,
			 uint8_t *codes, float *nested, int simd)
{
	for (uint64_t k = k0; k < k1; k++) {
		uint64_t b0 = k * LQ_QNESTED_BLOCK;
		size_t len = nb - b0 < LQ_QNESTED_BLOCK ? (size_t)(nb - b0) : LQ_QNESTED_BLOCK;
		float d[LQ_QNESTED_BLOCK], m;
#ifdef LQ_HAVE_X86
		if (simd && len == LQ_QNESTED_BLOCK) {
			m = sub_absmax_avx2(absmax + b0, offset, len, d);
			nested[k] = m;
			dyn8_encode_avx2(d, len, bnb_rcp(m), codes + b0);
			continue;
		}
#endif
		(void)simd;
		for (size_t i = 0; i < len; i++)
			d[i] = absmax[b0 + i] - offset;
		m = absmax_ref(d, len, len < LQ_QNESTED_BLOCK);
		float inv = bnb_rcp(m);
		nested[k] = m;
		for (size_t i = 0; i < len; i++)
			codes[b0 + i] = (uint8_t)lq_dyn8_encode(dyn_map.f, d[i] * inv);
	}
}

/* The plain version (reference). */
static void dq_runs(const float *absmax, uint64_t nb, float offset, uint64_t k0, uint64_t k1,
		    uint8_t *codes, float *nested)
{
	for (uint64_t k = k0; k < k1; k++) {
		uint64_t b0 = k * LQ_QNESTED_BLOCK;
		size_t len = nb - b0 < LQ_QNESTED_BLOCK ? (size_t)(nb - b0) : LQ_QNESTED_BLOCK;
		float d[LQ_QNESTED_BLOCK];
		for (size_t i = 0; i < len; i++)
			d[i] = absmax[b0 + i] - offset;
		float m = absmax_ref(d, len, len < LQ_QNESTED_BLOCK);
		float inv = bnb_rcp(m);
		nested[k] = m;
		for (size_t i = 0; i < len; i++)
			codes[b0 + i] = (uint8_t)lq_dyn8_encode(dyn_map.f, d[i] * inv);
	}
}

void lq_qscales_compress(const float *absmax, uint64_t nb, uint8_t *codes, float *nested,
			 float *offset)
{
	if (!absmax || !codes || !nested || !offset)
		return;
	*offset = dq_offset(absmax, nb);
#ifdef LQ_HAVE_X86
	int simd = have_avx2();
#else
	int simd = 0;
#endif
	dq_runs_simd(absmax, nb, *offset, 0, lq_blocks_count(nb, LQ_QNESTED_BLOCK), codes, nested, simd);
}

/* Scale of block b; loads by memcpy since the parts may point into a mapped
 * file at any alignment. */
static float rebuilt_scale(const struct lq_qparams *p, const struct lq_qbuf *in, uint64_t b)
{
	float a, nested;
	if (!p->double_quant) {
		memcpy(&a, (const uint8_t *)in->scales + 4 * b, 4);
		return a;
	}
	memcpy(&nested, (const uint8_t *)in->nested + 4 * (b >> LQ_QNESTED_SHIFT), 4);
	float t = dyn_map.f[((const uint8_t *)in->scales)[b]] * nested;
	return t + in->offset;
}

void lq_qscales_f32(const struct lq_qparams *p, const struct lq_qbuf *in, uint64_t n,
		    float *absmax)
{
	if (!p || !in || !absmax || !valid_block_size(p->block_size))
		return;
	uint64_t nb = lq_qnblocks(n, p->block_size);
	for (uint64_t b = 0; b < nb; b++)
		absmax[b] = rebuilt_scale(p, in, b);
}

/* ---------------------------------------------------------------- reference */

int lq_quantize_ref(const struct lq_qparams *p, const float *x, uint64_t n,
		    struct lq_qbuf *out, float *work)
{
	int rc = check_quant_args(p, x, n, out, work);
	if (rc != LQ_OK)
		return rc;
	out->offset = 0.0f;
	if (n == 0)
		return LQ_OK;
	uint64_t bs = (uint64_t)p->block_size, nb = lq_qnblocks(n, p->block_size);
	float *absmax = p->double_quant ? work : out->scales;

	for (uint64_t b = 0; b < nb; b++) {
		uint64_t i0 = b * bs, len = n - i0 < bs ? n - i0 : bs;
		absmax[b] = absmax_ref(x + i0, (size_t)len, len < bs);
	}

	if (p->qtype == LQ_QTYPE_INT8) {
		int8_t *q = (int8_t *)out->data;
		for (uint64_t i = 0; i < n; i++)
			q[i] = (int8_t)lq_int8_encode(x[i] * (127.0f / absmax[i / bs]));
	} else {
		int nf4 = p->qtype == LQ_QTYPE_NF4;
		for (uint64_t i = 0; i < n; i += 2) {
			float s0 = x[i] * bnb_rcp(absmax[i / bs]);
			int c0 = nf4 ? lq_nf4_encode(s0) : lq_fp4_encode(s0);
			int c1 = nf4 ? LQ_NF4_PAD_CODE : LQ_FP4_PAD_CODE;
			if (i + 1 < n) {
				float s1 = x[i + 1] * bnb_rcp(absmax[(i + 1) / bs]);
				c1 = nf4 ? lq_nf4_encode(s1) : lq_fp4_encode(s1);
			}
			out->data[i / 2] = (uint8_t)(c0 << 4 | c1);
		}
	}

	if (p->double_quant) {
		out->offset = dq_offset(absmax, nb);
		dq_runs(absmax, nb, out->offset, 0, lq_blocks_count(nb, LQ_QNESTED_BLOCK),
			out->scales, out->nested);
	}
	return LQ_OK;
}

static int check_dequant_args(const struct lq_qparams *p, const struct lq_qbuf *in, uint64_t n,
			      const float *y)
{
	if (lq_qparams_check(p, NULL) != LQ_OK || !in)
		return LQ_ERR_INVALID;
	if (n == 0)
		return LQ_OK;
	if (!y || !in->data || !in->scales || (p->double_quant && !in->nested))
		return LQ_ERR_INVALID;
	if (n > SIZE_MAX / 4)
		return LQ_ERR_INVALID;
	return LQ_OK;
}

int lq_dequantize_ref(const struct lq_qparams *p, const struct lq_qbuf *in, uint64_t n,
		      float *y)
{
	int rc = check_dequant_args(p, in, n, y);
	if (rc != LQ_OK || n == 0)
		return rc;
	uint64_t bs = (uint64_t)p->block_size;
	const float *tab = q4_table(p->qtype);
	for (uint64_t i = 0; i < n; i++) {
		float a = rebuilt_scale(p, in, i / bs);
		if (p->qtype == LQ_QTYPE_INT8) {
			y[i] = (float)((const int8_t *)in->data)[i] * (a * (1.0f / 127.0f));
		} else {
			uint8_t byte = in->data[i / 2];
			int code = (i & 1) ? byte & 15 : byte >> 4;
			y[i] = tab[code] * a;
		}
	}
	return LQ_OK;
}

/* ---------------------------------------------------------------- fast path: scalar blocks */

/* Quantize one block of len elements (len <= bs; len < bs only for the last
 * block), writing its bytes at data (the block's first byte) and returning
 * its absmax. */
static float block_quant_scalar(int qtype, const float *x, size_t len, size_t bs, uint8_t *data)
{
	float m = absmax_ref(x, len, len < bs);
	if (qtype == LQ_QTYPE_INT8) {
		float scale = 127.0f / m;
		for (size_t i = 0; i < len; i++)
			((int8_t *)data)[i] = (int8_t)lq_int8_encode(x[i] * scale);
		return m;
	}
	float inv = bnb_rcp(m);
	int nf4 = qtype == LQ_QTYPE_NF4;
	for (size_t i = 0; i < len; i += 2) {
		int c0 = nf4 ? lq_nf4_encode(x[i] * inv) : lq_fp4_encode(x[i] * inv);
		int c1 = nf4 ? LQ_NF4_PAD_CODE : LQ_FP4_PAD_CODE;
		if (i + 1 < len)
			c1 = nf4 ? lq_nf4_encode(x[i + 1] * inv) : lq_fp4_encode(x[i + 1] * inv);
		data[i / 2] = (uint8_t)(c0 << 4 | c1);
	}
	return m;
}

static void block_dequant_scalar(int qtype, const uint8_t *data, size_t len, float a, float *y)
{
	if (qtype == LQ_QTYPE_INT8) {
		float d = a * (1.0f / 127.0f);
		for (size_t i = 0; i < len; i++)
			y[i] = (float)((const int8_t *)data)[i] * d;
		return;
	}
	const float *tab = q4_table(qtype);
	for (size_t i = 0; i < len; i++) {
		uint8_t byte = data[i / 2];
		y[i] = tab[(i & 1) ? byte & 15 : byte >> 4] * a;
	}
}

/* ---------------------------------------------------------------- fast path: AVX2 */

#ifdef LQ_HAVE_X86
#define LQ_AVX2 __attribute__((target("avx2,fma,f16c")))

static int have_avx2(void)
{
	/* every AVX2 CPU also has F16C, which clang 14 cannot test for */
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

LQ_AVX2 static inline float hmax256(__m256 v)
{
	__m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	m = _mm_max_ps(m, _mm_movehl_ps(m, m));
	m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
	return _mm_cvtss_f32(m);
}

/* absmax of a full block (len a multiple of 32); max_ps(a, m) keeps m when a
 * is NaN, like fmaxf(m, a). */
LQ_AVX2 static float absmax_avx2(const float *x, size_t len)
{
	const __m256 sign = _mm256_set1_ps(-0.0f);
	__m256 m0 = _mm256_set1_ps(-FLT_MAX), m1 = m0, m2 = m0, m3 = m0;
	for (size_t i = 0; i < len; i += 32) {
		m0 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m0);
		m1 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i + 8)), m1);
		m2 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i + 16)), m2);
		m3 = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i + 24)), m3);
	}
	return hmax256(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
}

/* 32 int32 codes (0..15, four vectors in element order) -> 16 packed bytes. */
LQ_AVX2 static inline void pack_nibbles(__m256i c0, __m256i c1, __m256i c2, __m256i c3, uint8_t *dst)
{
	__m256i b = _mm256_packus_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
	b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
	/* 16-bit lane j = code[2j] | code[2j+1] << 8 -> code[2j] << 4 | code[2j+1] */
	__m256i nib = _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi16(b, 4), _mm256_set1_epi16(0xf0)),
				      _mm256_srli_epi16(b, 8));
	__m128i r = _mm_packus_epi16(_mm256_castsi256_si128(nib), _mm256_extracti128_si256(nib, 1));
	_mm_storeu_si128((__m128i *)dst, r);
}

/*
 * NF4 code = #{ j : s > T[j] } as a 4-level binary search: each level picks
 * the next threshold by the code bits found so far (t[0] = T7, t[1] = T3|T11,
 * t[2] = T1|T5|T9|T13, t[3] = T0|T2|...|T14).  NaN compares false everywhere
 * and gets code 0, as in the scalar encoder.
 */
LQ_AVX2 static inline __m256i nf4_codes8(__m256 s, const __m256 *t)
{
	__m256i g = _mm256_castps_si256(_mm256_cmp_ps(s, t[0], _CMP_GT_OQ));
	__m256i c = _mm256_and_si256(g, _mm256_set1_epi32(8));
	__m256 th = _mm256_permutevar8x32_ps(t[1], _mm256_srli_epi32(c, 3));
	g = _mm256_castps_si256(_mm256_cmp_ps(s, th, _CMP_GT_OQ));
	c = _mm256_or_si256(c, _mm256_and_si256(g, _mm256_set1_epi32(4)));
	th = _mm256_permutevar8x32_ps(t[2], _mm256_srli_epi32(c, 2));
	g = _mm256_castps_si256(_mm256_cmp_ps(s, th, _CMP_GT_OQ));
	c = _mm256_or_si256(c, _mm256_and_si256(g, _mm256_set1_epi32(2)));
	th = _mm256_permutevar8x32_ps(t[3], _mm256_srli_epi32(c, 1));
	g = _mm256_castps_si256(_mm256_cmp_ps(s, th, _CMP_GT_OQ));
	return _mm256_or_si256(c, _mm256_and_si256(g, _mm256_set1_epi32(1)));
}

/* FP4: rank r = #{thresholds below |s|} in 0..7 maps to the magnitude code
 * 0,1,6,7,4,5,2,3 = r ^ ((r & 2) << 1); sign 8 when s < 0. */
LQ_AVX2 static inline __m256i fp4_codes8(__m256 s, const __m256 *t)
{
	__m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), s);
	__m256i r = _mm256_setzero_si256();
	for (int j = 0; j < 7; j++)
		r = _mm256_sub_epi32(r, _mm256_castps_si256(_mm256_cmp_ps(a, t[j], _CMP_GT_OQ)));
	r = _mm256_xor_si256(r, _mm256_slli_epi32(_mm256_and_si256(r, _mm256_set1_epi32(2)), 1));
	__m256i neg = _mm256_castps_si256(_mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_LT_OQ));
	return _mm256_or_si256(r, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
}

LQ_AVX2 static inline __m256i int8_codes8(__m256 v)
{
	__m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_and_ps(r, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0 */
	r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
	return _mm256_cvttps_epi32(r);
}

/* Quantize one full block (bs a multiple of 32); returns its absmax. */
LQ_AVX2 static float block_quant_avx2(int qtype, const float *x, size_t bs, uint8_t *data)
{
	float m = absmax_avx2(x, bs);
	if (qtype == LQ_QTYPE_INT8) {
		__m256 scale = _mm256_set1_ps(127.0f / m);
		for (size_t i = 0; i < bs; i += 32) {
			__m256i c0 = int8_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale));
			__m256i c1 = int8_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), scale));
			__m256i c2 = int8_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), scale));
			__m256i c3 = int8_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), scale));
			__m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
			b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
			_mm256_storeu_si256((__m256i *)(data + i), b);
		}
		return m;
	}
	__m256 inv = _mm256_set1_ps(bnb_rcp(m));
	__m256 t[15];
	if (qtype == LQ_QTYPE_NF4) {
		static const float th[15] = {LQ_NF4_T0, LQ_NF4_T1, LQ_NF4_T2, LQ_NF4_T3, LQ_NF4_T4,
					     LQ_NF4_T5, LQ_NF4_T6, LQ_NF4_T7, LQ_NF4_T8, LQ_NF4_T9,
					     LQ_NF4_T10, LQ_NF4_T11, LQ_NF4_T12, LQ_NF4_T13, LQ_NF4_T14};
		t[0] = _mm256_set1_ps(th[7]);
		t[1] = _mm256_setr_ps(th[3], th[11], 0, 0, 0, 0, 0, 0);
		t[2] = _mm256_setr_ps(th[1], th[5], th[9], th[13], 0, 0, 0, 0);
		t[3] = _mm256_setr_ps(th[0], th[2], th[4], th[6], th[8], th[10], th[12], th[14]);
		for (size_t i = 0; i < bs; i += 32) {
			__m256i c0 = nf4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv), t);
			__m256i c1 = nf4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), inv), t);
			__m256i c2 = nf4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), inv), t);
			__m256i c3 = nf4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), inv), t);
			pack_nibbles(c0, c1, c2, c3, data + i / 2);
		}
	} else {
		static const float th[7] = {LQ_FP4_T_0_1, LQ_FP4_T_1_6, LQ_FP4_T_6_7, LQ_FP4_T_7_4,
					    LQ_FP4_T_4_5, LQ_FP4_T_5_2, LQ_FP4_T_2_3};
		for (int j = 0; j < 7; j++)
			t[j] = _mm256_set1_ps(th[j]);
		for (size_t i = 0; i < bs; i += 32) {
			__m256i c0 = fp4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv), t);
			__m256i c1 = fp4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), inv), t);
			__m256i c2 = fp4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), inv), t);
			__m256i c3 = fp4_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), inv), t);
			pack_nibbles(c0, c1, c2, c3, data + i / 2);
		}
	}
	return m;
}

/* Convert len (a multiple of 32) bf16/f16 elements to float. */
LQ_AVX2 static void to_f32_avx2(float *dst, const void *src, int dtype, size_t len)
{
	const uint16_t *h = src;
	if (dtype == LQ_DTYPE_BF16) {
		for (size_t i = 0; i < len; i += 16) {
			__m256i v = _mm256_loadu_si256((const __m256i *)(h + i));
			__m256i lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16);
			__m256i hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16);
			_mm256_storeu_ps(dst + i, _mm256_castsi256_ps(lo));
			_mm256_storeu_ps(dst + i + 8, _mm256_castsi256_ps(hi));
		}
	} else {
		for (size_t i = 0; i < len; i += 8)
			_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
	}
}

/* Dequantize one full block (bs a multiple of 32) with scale a. */
LQ_AVX2 static void block_dequant_avx2(int qtype, const uint8_t *data, size_t bs, float a, float *y)
{
	__m256 va = _mm256_set1_ps(a);
	if (qtype == LQ_QTYPE_INT8) {
		__m256 d = _mm256_set1_ps(a * (1.0f / 127.0f));
		for (size_t i = 0; i < bs; i += 8) {
			__m128i q = _mm_loadl_epi64((const __m128i *)(data + i));
			__m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
			_mm256_storeu_ps(y + i, _mm256_mul_ps(f, d));
		}
		return;
	}
	const float *tab = q4_table(qtype);
	__m256 tlo = _mm256_loadu_ps(tab), thi = _mm256_loadu_ps(tab + 8);
	const __m128i low4 = _mm_set1_epi8(0x0f);
	for (size_t i = 0; i < bs; i += 32) {
		__m128i b = _mm_loadu_si128((const __m128i *)(data + i / 2));
		__m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4), lo = _mm_and_si128(b, low4);
		__m128i e[2] = {_mm_unpacklo_epi8(hi, lo), _mm_unpackhi_epi8(hi, lo)};
		for (int k = 0; k < 4; k++) {
			__m128i src = (k & 1) ? _mm_srli_si128(e[k >> 1], 8) : e[k >> 1];
			__m256i idx = _mm256_cvtepu8_epi32(src);
			__m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idx),
						    _mm256_permutevar8x32_ps(thi, idx),
						    _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
			_mm256_storeu_ps(y + i + 8 * k, _mm256_mul_ps(v, va));
		}
	}
}
/*
 * lq_dyn8_encode of d[i] * inv for len values (a multiple of 32), with gathers:
 * the same 7 steps and float32 midpoint tests, as selects instead of branches.
 */
/* d[i] = a[i] - offset for len (a multiple of 32) values; returns max |d|
 * (as absmax_avx2). */
LQ_AVX2 static float sub_absmax_avx2(const float *a, float offset, size_t len, float *d)
{
	const __m256 off = _mm256_set1_ps(offset);
	for (size_t i = 0; i < len; i += 8)
		_mm256_storeu_ps(d + i, _mm256_sub_ps(_mm256_loadu_ps(a + i), off));
	return absmax_avx2(d, len);
}

#define DYN8_W 4 /* independent searches in flight (gather latency) */
_Static_assert(LQ_QNESTED_BLOCK % (8 * DYN8_W) == 0, "full nested runs are whole iterations");
LQ_AVX2 static void dyn8_encode_avx2(const float *d, size_t len, float inv, uint8_t *codes)
{
	const float *c = dyn_map.f;
	const __m256 vinv = _mm256_set1_ps(inv), half = _mm256_set1_ps(0.5f);
	size_t i = 0;
	for (; i + 8 * DYN8_W <= len; i += 8 * DYN8_W) {
		__m256 s[DYN8_W], lo[DYN8_W], hi[DYN8_W], val[DYN8_W];
		__m256i pivot[DYN8_W], lo_p[DYN8_W], hi_p[DYN8_W];
		for (int v = 0; v < DYN8_W; v++) {
			s[v] = _mm256_mul_ps(_mm256_loadu_ps(d + i + 8 * v), vinv);
			pivot[v] = _mm256_set1_epi32(127);
			lo_p[v] = _mm256_setzero_si256();
			hi_p[v] = _mm256_set1_epi32(255);
			lo[v] = _mm256_set1_ps(-1.0f);
			hi[v] = _mm256_set1_ps(1.0f);
			val[v] = _mm256_set1_ps(c[127]);
		}
		for (int step = 64; step > 0; step >>= 1) {
			__m256i st = _mm256_set1_epi32(step), nst = _mm256_set1_epi32(-step);
			for (int v = 0; v < DYN8_W; v++) {
				__m256 gt = _mm256_cmp_ps(s[v], val[v], _CMP_GT_OQ);
				__m256i gti = _mm256_castps_si256(gt);
				lo_p[v] = _mm256_blendv_epi8(lo_p[v], pivot[v], gti);
				lo[v] = _mm256_blendv_ps(lo[v], val[v], gt);
				hi_p[v] = _mm256_blendv_epi8(pivot[v], hi_p[v], gti);
				hi[v] = _mm256_blendv_ps(val[v], hi[v], gt);
				/* pivot += gt ? step : -step */
				pivot[v] = _mm256_add_epi32(pivot[v], _mm256_blendv_epi8(nst, st, gti));
				val[v] = _mm256_i32gather_ps(c, pivot[v], 4);
			}
		}
		for (int v = 0; v < DYN8_W; v++) {
			__m256 h = _mm256_blendv_ps(hi[v], _mm256_set1_ps(c[255]),
						    _mm256_castsi256_ps(_mm256_cmpeq_epi32(hi_p[v], _mm256_set1_epi32(255))));
			__m256 l = _mm256_blendv_ps(lo[v], _mm256_set1_ps(c[0]),
						    _mm256_castsi256_ps(_mm256_cmpeq_epi32(lo_p[v], _mm256_setzero_si256())));
			__m256 gt = _mm256_cmp_ps(s[v], val[v], _CMP_GT_OQ);
			__m256 up = _mm256_cmp_ps(s[v], _mm256_mul_ps(_mm256_add_ps(h, val[v]), half), _CMP_GT_OQ);
			__m256 down = _mm256_cmp_ps(s[v], _mm256_mul_ps(_mm256_add_ps(l, val[v]), half), _CMP_LT_OQ);
			__m256i r_hi = _mm256_blendv_epi8(pivot[v], hi_p[v], _mm256_castps_si256(up));
			__m256i r_lo = _mm256_blendv_epi8(pivot[v], lo_p[v], _mm256_castps_si256(down));
			__m256i r = _mm256_blendv_epi8(r_lo, r_hi, _mm256_castps_si256(gt));
			__m128i r16 = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
			_mm_storel_epi64((__m128i *)(codes + i + 8 * v), _mm_packus_epi16(r16, r16));
		}
	}
}
#else
static int have_avx2(void) { return 0; }
#endif

/* ---------------------------------------------------------------- fast path: tasks */

#define MAX_THREADS 64
#define MIN_TASK_ELEMS ((uint64_t)1 << 16)

struct qtask {
	const struct lq_qparams *p;
	const void *src;
	int dtype;
	uint64_t n;
	uint64_t b0, b1; /* block range (quant/dequant) or nested-run range (dq) */
	const struct lq_qbuf *in;
	struct lq_qbuf *out;
	float *absmax;
	float *y;
	int simd;
};

static void *quant_task(void *arg)
{
	struct qtask *t = arg;
	int qtype = t->p->qtype;
	size_t bs = (size_t)t->p->block_size;
	size_t esz = lq_dtype_size(t->dtype);
	float buf[LQ_QBLOCK_MAX];
	for (uint64_t b = t->b0; b < t->b1; b++) {
		uint64_t i0 = b * bs;
		size_t len = t->n - i0 < bs ? (size_t)(t->n - i0) : bs;
		const void *src = (const uint8_t *)t->src + i0 * esz;
		uint8_t *data = t->out->data + (qtype == LQ_QTYPE_INT8 ? i0 : i0 / 2);
		const float *x = src;
		if (t->dtype != LQ_DTYPE_F32) {
#ifdef LQ_HAVE_X86
			if (t->simd && len == bs)
				to_f32_avx2(buf, src, t->dtype, len);
			else
#endif
				lq_to_f32(buf, src, t->dtype, len);
			x = buf;
		}
#ifdef LQ_HAVE_X86
		if (t->simd && len == bs) {
			t->absmax[b] = block_quant_avx2(qtype, x, bs, data);
			continue;
		}
#endif
		t->absmax[b] = block_quant_scalar(qtype, x, len, bs, data);
	}
	return NULL;
}

static void *dq_task(void *arg)
{
	struct qtask *t = arg;
	uint64_t nb = lq_qnblocks(t->n, t->p->block_size);
	dq_runs_simd(t->absmax, nb, t->out->offset, t->b0, t->b1, t->out->scales, t->out->nested,
		     t->simd);
	return NULL;
}

static void *dequant_task(void *arg)
{
	struct qtask *t = arg;
	int qtype = t->p->qtype;
	size_t bs = (size_t)t->p->block_size;
	for (uint64_t b = t->b0; b < t->b1; b++) {
		uint64_t i0 = b * bs;
		size_t len = t->n - i0 < bs ? (size_t)(t->n - i0) : bs;
		const uint8_t *data = t->in->data + (qtype == LQ_QTYPE_INT8 ? i0 : i0 / 2);
		float a = rebuilt_scale(t->p, t->in, b);
#ifdef LQ_HAVE_X86
		if (t->simd && len == bs) {
			block_dequant_avx2(qtype, data, bs, a, t->y + i0);
			continue;
		}
#endif
		block_dequant_scalar(qtype, data, len, a, t->y + i0);
	}
	return NULL;
}

/* Split units 0..count over up to nthreads tasks of at least min_units each
 * and run them (the calling thread runs the first; a thread that cannot be
 * created runs inline). */
static void run_split(struct qtask *proto, uint64_t count, uint64_t min_units, int nthreads,
		      void *(*fn)(void *))
{
	if (nthreads > MAX_THREADS)
		nthreads = MAX_THREADS;
	if (min_units < 1)
		min_units = 1;
	uint64_t maxt = count / min_units;
	int nt = nthreads < 1 ? 1 : nthreads;
	if ((uint64_t)nt > maxt)
		nt = maxt ? (int)maxt : 1;
	struct qtask tasks[MAX_THREADS];
	pthread_t th[MAX_THREADS];
	int started[MAX_THREADS] = {0};
	for (int i = 0; i < nt; i++) {
		tasks[i] = *proto;
		tasks[i].b0 = count * (uint64_t)i / (uint64_t)nt;
		tasks[i].b1 = count * (uint64_t)(i + 1) / (uint64_t)nt;
	}
	for (int i = 1; i < nt; i++)
		started[i] = pthread_create(&th[i], NULL, fn, &tasks[i]) == 0;
	fn(&tasks[0]);
	for (int i = 1; i < nt; i++) {
		if (started[i])
			pthread_join(th[i], NULL);
		else
			fn(&tasks[i]);
	}
}

int lq_quantize_src(const struct lq_qparams *p, const void *src, int dtype, uint64_t n,
		    struct lq_qbuf *out, float *work, int nthreads)
{
	int rc = check_quant_args(p, src, n, out, work);
	if (rc != LQ_OK)
		return rc;
	if (dtype != LQ_DTYPE_F32 && dtype != LQ_DTYPE_F16 && dtype != LQ_DTYPE_BF16)
		return LQ_ERR_INVALID;
	out->offset = 0.0f;
	if (n == 0)
		return LQ_OK;
	uint64_t nb = lq_qnblocks(n, p->block_size);
	struct qtask t = {.p = p, .src = src, .dtype = dtype, .n = n, .out = out,
			  .absmax = p->double_quant ? work : out->scales, .simd = have_avx2()};
	run_split(&t, nb, MIN_TASK_ELEMS / (uint64_t)p->block_size, nthreads, quant_task);
	if (p->double_quant) {
		out->offset = dq_offset(t.absmax, nb);
		run_split(&t, lq_blocks_count(nb, LQ_QNESTED_BLOCK), 64, nthreads, dq_task);
	}
	return LQ_OK;
}

int lq_quantize(const struct lq_qparams *p, const float *x, uint64_t n, struct lq_qbuf *out,
		float *work, int nthreads)
{
	return lq_quantize_src(p, x, LQ_DTYPE_F32, n, out, work, nthreads);
}

int lq_dequantize(const struct lq_qparams *p, const struct lq_qbuf *in, uint64_t n, float *y,
		  int nthreads)
{
	int rc = check_dequant_args(p, in, n, y);
	if (rc != LQ_OK || n == 0)
		return rc;
	struct qtask t = {.p = p, .n = n, .in = in, .y = y, .simd = have_avx2()};
	run_split(&t, lq_qnblocks(n, p->block_size), MIN_TASK_ELEMS / (uint64_t)p->block_size,
		  nthreads, dequant_task);
	return LQ_OK;
}
