/*
 * test_quant.c - blockwise quantization: bit-exactness with bitsandbytes'
 * CUDA kernels (shared fixture and the spec's test vectors), the fast path
 * against the scalar reference, and round-trip error bounds.
 *
 * Error bounds checked (a = block absmax, H = largest half gap of the code
 * table: NF4 (1 - 0.6961928)/2, FP4 (1 - 2/3)/2, INT8 1/254):
 *   no double quant:   |w - x| <= a * H * (1 + 1e-4)
 *   double quant:      the rebuilt scale a' = map[c] * N + offset obeys
 *                      |a' - a| <= N * G + 2^-21 * (a + |offset| + N)
 *                      (N = nested absmax of the scale's run, G = largest half
 *                      gap of the dynamic map, 0.0140625/2), and then
 *                      |w - x| <= a * H * (1 + 1e-4) + |a' - a|
 *                      (codes are chosen with the exact a, so the scale error
 *                      adds at most |table[c]| <= 1 times itself).
 */
#include "libquant.h"
#include "lq_blocks.h"
#include "test.h"

#include <unistd.h>

#include <float.h>
#include <math.h>
#include <stdint.h>

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}
static double urand(void) { return (double)(rnd() >> 11) * 0x1p-53; }
static float nrand(void)
{
	double u = urand() + 1e-300, v = urand();
	return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* A quantized tensor with its own buffers. */
struct qt {
	struct lq_qparams p;
	struct lq_qbuf b;
	float *work;
	uint64_t n;
};

static void qt_init(struct qt *t, int qtype, int bs, int dq, uint64_t n)
{
	memset(t, 0, sizeof *t);
	t->p = (struct lq_qparams){qtype, bs, dq};
	t->n = n;
	uint64_t nb = lq_qnblocks(n, bs);
	/* +1 so that n = 0 still gets distinct non-NULL buffers */
	t->b.data = calloc(1, lq_qdata_bytes(qtype, n) + 1);
	t->b.scales = calloc(1, lq_qscale_bytes(&t->p, n) + 1);
	t->b.nested = dq ? calloc(1, lq_qnested_bytes(&t->p, n) + 4) : NULL;
	t->work = calloc(nb + 1, sizeof(float));
}

static void qt_free(struct qt *t)
{
	free(t->b.data);
	free(t->b.scales);
	free(t->b.nested);
	free(t->work);
}

static int qt_equal(const struct qt *a, const struct qt *b)
{
	uint64_t n = a->n;
	if (memcmp(a->b.data, b->b.data, lq_qdata_bytes(a->p.qtype, n)))
		return 0;
	if (memcmp(a->b.scales, b->b.scales, lq_qscale_bytes(&a->p, n)))
		return 0;
	if (a->p.double_quant) {
		if (memcmp(a->b.nested, b->b.nested, lq_qnested_bytes(&a->p, n)))
			return 0;
		if (f2u(a->b.offset) != f2u(b->b.offset))
			return 0;
	}
	return 1;
}

static int nibble(const uint8_t *data, uint64_t i)
{
	return (i & 1) ? data[i / 2] & 15 : data[i / 2] >> 4;
}

/* ---------------------------------------------------------------- tables */

static const uint32_t spec_nf4[16] = {
	0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
	0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};
static const uint32_t spec_fp4[16] = {
	0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000,
	0x80000000, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000};
/* the CUDA thresholds: the float32 midpoints except j = 0, 8, 12, 14 */
static const uint32_t spec_nf4_thr[15] = {
	0xbf591cd9, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871, 0x3d22faff,
	0x3df64863, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d03, 0x3f248daf, 0x3f5c89d9};

static void test_tables(void)
{
	const float *nf4 = lq_nf4_table(), *fp4 = lq_fp4_table(), *dyn = lq_dynamic_map();
	for (int i = 0; i < 16; i++) {
		CHECK(f2u(nf4[i]) == spec_nf4[i], "nf4[%d] = %08x", i, f2u(nf4[i]));
		CHECK(f2u(fp4[i]) == spec_fp4[i], "fp4[%d] = %08x", i, f2u(fp4[i]));
	}
	static const uint32_t thr[15] = LQ_NF4_THRESHOLD_BITS_INIT;
	const float tmac[15] = {LQ_NF4_T0, LQ_NF4_T1, LQ_NF4_T2, LQ_NF4_T3, LQ_NF4_T4,
				LQ_NF4_T5, LQ_NF4_T6, LQ_NF4_T7, LQ_NF4_T8, LQ_NF4_T9,
				LQ_NF4_T10, LQ_NF4_T11, LQ_NF4_T12, LQ_NF4_T13, LQ_NF4_T14};
	/* the decimal literals of kernels.cu, rounded once by this compiler */
	const float tdec[15] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
				-0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
				-0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
				0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
				0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
	int off = 0;
	for (int j = 0; j < 15; j++) {
		CHECK(thr[j] == spec_nf4_thr[j] && f2u(tmac[j]) == spec_nf4_thr[j] &&
		      f2u(tdec[j]) == spec_nf4_thr[j], "threshold %d", j);
		float mid = (nf4[j] + nf4[j + 1]) * 0.5f;
		off += f2u(mid) != thr[j];
		CHECK(nf4[j] < tmac[j] && tmac[j] < nf4[j + 1], "threshold %d between codes", j);
	}
	CHECK(off == 4, "%d thresholds off the float32 midpoints (expected 4)", off);
	/* dynamic map: sorted, 0 at 127, 1 at 255, the spec's spot checks */
	int sorted = 1;
	for (int i = 1; i < 256; i++)
		sorted &= dyn[i - 1] < dyn[i];
	CHECK(sorted, "dynamic map not ascending");
	CHECK(f2u(dyn[127]) == 0 && dyn[255] == 1.0f, "dynamic map ends");
	CHECK(f2u(dyn[0]) == 0xbf7e3333 && f2u(dyn[64]) == 0xbdc9eb85 && f2u(dyn[128]) == 0x3513a3b7,
	      "dynamic map rows 0/64/128");
	CHECK((double)dyn[128] == 5.500000384017767e-07 && dyn[192] == 0.12109375f &&
	      (double)dyn[254] == 0.992968738079071, "dynamic map spot checks");
	for (int i = 0; i < 127; i++)
		CHECK(dyn[i] == -dyn[254 - i], "dynamic map symmetric at %d", i);
}

/* ---------------------------------------------------------------- spec vectors */

/* Quantize with ref and fast (1 and 2 threads); check they agree; result in *r. */
static void quant_both(struct qt *r, const float *x, uint64_t n, int qtype, int bs, int dq)
{
	qt_init(r, qtype, bs, dq, n);
	CHECK_OK(lq_quantize_ref(&r->p, x, n, &r->b, r->work), (struct lq_error *)NULL);
	for (int th = 1; th <= 2; th++) {
		struct qt f;
		qt_init(&f, qtype, bs, dq, n);
		CHECK_OK(lq_quantize(&f.p, x, n, &f.b, f.work, th), (struct lq_error *)NULL);
		CHECK(qt_equal(r, &f), "fast != ref: qtype %d bs %d dq %d n %llu threads %d", qtype,
		      bs, dq, (unsigned long long)n, th);
		qt_free(&f);
	}
}

static void test_spec_vectors(void)
{
	const float *nf4 = lq_nf4_table();
	float x[64];
	static const int want[3][15] = {
		{1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 13, 15},    /* exact midpoints */
		{1, 2, 3, 4, 5, 6, 7, 8, 8, 10, 11, 12, 13, 14, 15},   /* one ulp up */
		{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}};   /* one ulp down */
	for (int v = 0; v < 3; v++) {
		memset(x, 0, sizeof x);
		x[0] = 1.0f;
		for (int j = 0; j < 15; j++) {
			float mid = (nf4[j] + nf4[j + 1]) * 0.5f;
			x[1 + j] = v == 0 ? mid : nextafterf(mid, v == 1 ? INFINITY : -INFINITY);
		}
		struct qt r;
		quant_both(&r, x, 64, LQ_QTYPE_NF4, 64, 0);
		CHECK(nibble(r.b.data, 0) == 15, "code of 1.0");
		for (int j = 0; j < 15; j++)
			CHECK(nibble(r.b.data, 1 + (uint64_t)j) == want[v][j],
			      "variant %d midpoint %d: code %d, want %d", v, j,
			      nibble(r.b.data, 1 + (uint64_t)j), want[v][j]);
		CHECK(nibble(r.b.data, 20) == 7, "code of 0.0");
		qt_free(&r);
	}

	/* n = 197, bs 64: 99 bytes, 4 scales, the last over 5 elements; pad code */
	float y[197];
	for (int i = 0; i < 197; i++)
		y[i] = nrand();
	y[196] = 3.0f; /* the lone last-block max */
	CHECK(lq_qdata_bytes(LQ_QTYPE_NF4, 197) == 99 && lq_qnblocks(197, 64) == 4, "n=197 sizes");
	for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_FP4; q++) {
		struct qt r;
		quant_both(&r, y, 197, q, 64, 0);
		const float *am = r.b.scales;
		CHECK(am[3] == 3.0f, "last block absmax %g", am[3]);
		CHECK((r.b.data[98] & 15) == (q == LQ_QTYPE_NF4 ? 7 : 0), "pad nibble %d",
		      r.b.data[98] & 15);
		CHECK(nibble(r.b.data, 196) == (q == LQ_QTYPE_NF4 ? 15 : 3), "code of the last");
		qt_free(&r);
	}

	/* all-zero block: absmax 0, NaN scaled values, code 0; a NaN input: code 0;
	 * a block with NaN keeps the max of the others */
	float z[128] = {0};
	z[64] = NAN;
	z[65] = 2.0f;
	z[66] = -0.0f;
	for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_INT8; q++) {
		struct qt r;
		quant_both(&r, z, 128, q, 64, 0);
		const float *am = r.b.scales;
		CHECK(am[0] == 0.0f && am[1] == 2.0f, "zero/NaN block absmax %g %g", am[0], am[1]);
		if (q == LQ_QTYPE_INT8) {
			const int8_t *c = (const int8_t *)r.b.data;
			CHECK(c[0] == 0 && c[63] == 0 && c[64] == 0 && c[65] == 127 && c[66] == 0,
			      "int8 zero/NaN codes");
		} else {
			int zc = q == LQ_QTYPE_NF4 ? 7 : 0;
			CHECK(r.b.data[0] == 0 && r.b.data[31] == 0, "all-zero block codes %02x",
			      r.b.data[0]);
			CHECK(nibble(r.b.data, 64) == 0, "NaN code");
			CHECK(nibble(r.b.data, 65) == (q == LQ_QTYPE_NF4 ? 15 : 3), "max code");
			CHECK(nibble(r.b.data, 66) == zc && nibble(r.b.data, 67) == zc, "zero codes");
		}
		float w[128];
		CHECK_OK(lq_dequantize_ref(&r.p, &r.b, 128, w), (struct lq_error *)NULL);
		CHECK(w[0] == 0.0f && w[65] == 2.0f, "dequant of zero block %g, max %g", w[0], w[65]);
		qt_free(&r);
	}

	/* FP4 decision tree at its literals and one ulp around them */
	static const float fth[7] = {LQ_FP4_T_0_1, LQ_FP4_T_1_6, LQ_FP4_T_6_7, LQ_FP4_T_7_4,
				     LQ_FP4_T_4_5, LQ_FP4_T_5_2, LQ_FP4_T_2_3};
	static const int below[7] = {0, 1, 6, 7, 4, 5, 2}, above[7] = {1, 6, 7, 4, 5, 2, 3};
	for (int j = 0; j < 7; j++) {
		CHECK(lq_fp4_encode(fth[j]) == below[j] && lq_fp4_encode(nextafterf(fth[j], 2)) == above[j],
		      "fp4 threshold %d", j);
		CHECK(lq_fp4_encode(-fth[j]) == below[j] + 8 &&
		      lq_fp4_encode(-nextafterf(fth[j], 2)) == above[j] + 8, "fp4 threshold -%d", j);
	}
	CHECK(lq_fp4_encode(-0.0f) == 0 && lq_fp4_encode(NAN) == 0 && lq_nf4_encode(NAN) == 0,
	      "fp4/nf4 of -0 and NaN");
	CHECK(lq_int8_encode(0.5f) == 0 && lq_int8_encode(1.5f) == 2 && lq_int8_encode(-2.5f) == -2 &&
	      lq_int8_encode(127.6f) == 127 && lq_int8_encode(-1e9f) == -127 && lq_int8_encode(NAN) == 0,
	      "int8 rounding");
}

/* The 8-bit search at the dynamic map's midpoints: the literal scalar encoder
 * and lq_qscales_compress (vectorized where the CPU allows) must agree; exact
 * float32 midpoints go to the even index (spec 2.3). */
static void test_dyn8_ties(void)
{
	const float *c = lq_dynamic_map();
	int even = 0, lower = 0, upper = 0;
	for (int j = 0; j < 255; j++) {
		float mid = (c[j] + c[j + 1]) * 0.5f;
		int k = lq_dyn8_encode(c, mid);
		even += (k & 1) == 0 && (k == j || k == j + 1);
		lower += k == j;
		upper += k == j + 1;
		CHECK(lq_dyn8_encode(c, c[j]) == j, "map value %d", j);
	}
	CHECK(even == 255 && lower == 128 && upper == 127, "ties: %d even, %d lower, %d upper", even,
	      lower, upper);
	CHECK(lq_dyn8_encode(c, NAN) == 0 && lq_dyn8_encode(c, 2.0f) == 255 &&
	      lq_dyn8_encode(c, -2.0f) == 0, "NaN and out-of-range");

	/* runs of 256 scales: +-1 then +-v pairs, so the offset is exactly 0, the
	 * nested absmax 1, and the scaled values are the v themselves */
	enum { RUNS = 8 };
	float am[RUNS * 256];
	uint8_t codes[RUNS * 256];
	float nested[RUNS], off = -1;
	int m = 0;
	for (int k = 0; k < RUNS; k++) {
		am[k * 256] = 1.0f;
		am[k * 256 + 1] = -1.0f;
		for (int i = 2; i < 256; i += 2, m++) {
			int j = m % 255, var = (m / 255) % 3;
			float v = (c[j] + c[j + 1]) * 0.5f;
			if (var)
				v = nextafterf(v, var == 1 ? 2.0f : -2.0f);
			am[k * 256 + i] = v;
			am[k * 256 + i + 1] = -v;
		}
	}
	lq_qscales_compress(am, RUNS * 256, codes, nested, &off);
	CHECK(off == 0.0f && nested[0] == 1.0f, "offset %g nested %g", off, nested[0]);
	int bad = 0;
	for (int i = 0; i < RUNS * 256; i++)
		bad += codes[i] != lq_dyn8_encode(c, am[i]);
	CHECK(bad == 0, "%d codes of lq_qscales_compress differ from the scalar encoder", bad);
}

/* ---------------------------------------------------------------- fixture */

static const struct lq_st_tensor *need(const struct lq_st *st, const char *name, int dtype,
				       uint64_t nelem)
{
	const struct lq_st_tensor *t = lq_st_find(st, name);
	CHECK(t != NULL, "fixture tensor %s missing", name);
	if (t) {
		CHECK(t->dtype == dtype && t->nelem == nelem, "fixture tensor %s: dtype %d n %llu",
		      name, t->dtype, (unsigned long long)t->nelem);
		if (t->dtype != dtype || t->nelem != nelem)
			return NULL;
	}
	return t;
}

static void check_fixture_case(const struct lq_st *st, const char *tn, const float *x,
			       const void *src, int src_dtype, uint64_t n, int qtype, int dq)
{
	char name[128];
	const char *qn = qtype == LQ_QTYPE_NF4 ? "nf4" : "fp4";
	uint64_t nb = lq_qnblocks(n, 64);
#define T(suffix, dt, cnt) (snprintf(name, sizeof name, "%s.%s.dq%d.%s", tn, qn, dq, suffix), \
			    need(st, name, dt, cnt))
	const struct lq_st_tensor *packed = T("packed", LQ_DTYPE_U8, (n + 1) / 2);
	const struct lq_st_tensor *absmax = T("absmax", dq ? LQ_DTYPE_U8 : LQ_DTYPE_F32, nb);
	const struct lq_st_tensor *code = T("code", LQ_DTYPE_F32, 16);
	const struct lq_st_tensor *deq = T("dequant", LQ_DTYPE_F32, n);
	const struct lq_st_tensor *offset = dq ? T("offset", LQ_DTYPE_F32, 1) : NULL;
	const struct lq_st_tensor *nested = dq ? T("nested_absmax", LQ_DTYPE_F32, (nb + 255) / 256) : NULL;
	const struct lq_st_tensor *ncode = dq ? T("nested_code", LQ_DTYPE_F32, 256) : NULL;
#undef T
	if (!packed || !absmax || !code || !deq || (dq && (!offset || !nested || !ncode)))
		return;

	const float *tab = qtype == LQ_QTYPE_NF4 ? lq_nf4_table() : lq_fp4_table();
	int tab_ok = 1;
	for (int i = 0; i < 16; i++) {
		float c;
		memcpy(&c, (const uint8_t *)code->data + 4 * i, 4);
		/* bnb's get_4bit_type FP4 has +0.0 at code 8, the CUDA LUT -0.0 */
		tab_ok &= qtype == LQ_QTYPE_FP4 && i == 8 ? c == tab[i] : f2u(c) == f2u(tab[i]);
	}
	CHECK(tab_ok, "%s %s code table differs from bnb's", tn, qn);
	if (dq)
		CHECK(memcmp(ncode->data, lq_dynamic_map(), 1024) == 0, "%s dynamic map differs", tn);

	struct qt r;
	qt_init(&r, qtype, 64, dq, n);
	CHECK_OK(lq_quantize_ref(&r.p, x, n, &r.b, r.work), (struct lq_error *)NULL);
	/*
	 * bnb is built with --use_fast_math: 1.0f/absmax is MUFU.RCP, up to 1 ulp
	 * off IEEE.  With bf16 inputs, x/absmax often lands exactly on the simple
	 * FP4 thresholds (5/24, 7/24, 5/6), where that ulp decides.  lq_bnb_rcp
	 * reproduces it for bf16/f16 absmax values, so the bf16 tensor t0 must
	 * match exactly; for the fp32 tensor t1 a differing code is accepted only
	 * when a reciprocal 1 or 2 ulp away gives bnb's code.
	 */
	uint64_t bad = 0, rcp = 0, first = 0;
	for (uint64_t i = 0; i < n; i++) {
		int want = nibble(packed->data, i), got = nibble(r.b.data, i);
		if (want == got)
			continue;
		float a = ((const float *)(dq ? r.work : r.b.scales))[i / 64];
		uint32_t inv = f2u(1.0f / a);
		int explained = 0;
		for (int d = -2; d <= 2; d++) {
			float s = x[i] * u2f(inv + (uint32_t)d);
			explained |= (qtype == LQ_QTYPE_NF4 ? lq_nf4_encode(s) : lq_fp4_encode(s)) == want;
		}
		if (explained)
			rcp++;
		else if (!bad++)
			first = i;
	}
	CHECK(bad == 0, "%s %s dq%d: %llu codes differ from bnb, first at %llu", tn, qn, dq,
	      (unsigned long long)bad, (unsigned long long)first);
	CHECK(strcmp(tn, "t0") || rcp == 0, "%s %s dq%d: %llu codes differ from bnb's (bf16 must be exact)",
	      tn, qn, dq, (unsigned long long)rcp);
	if (rcp)
		printf("note: %s %s dq%d: %llu of %llu codes differ from bnb only by its approximate "
		       "reciprocal\n", tn, qn, dq, (unsigned long long)rcp, (unsigned long long)n);
	CHECK(memcmp(r.b.scales, absmax->data, lq_qscale_bytes(&r.p, n)) == 0,
	      "%s %s dq%d: absmax differs from bnb", tn, qn, dq);
	if (dq) {
		float off;
		memcpy(&off, offset->data, 4);
		CHECK(f2u(off) == f2u(r.b.offset), "%s %s: offset %.9g vs bnb %.9g", tn, qn,
		      r.b.offset, off);
		CHECK(memcmp(r.b.nested, nested->data, nested->nbytes) == 0,
		      "%s %s: nested absmax differs from bnb", tn, qn);
	}

	/* the fast path, from the source dtype, 2 threads */
	struct qt f;
	qt_init(&f, qtype, 64, dq, n);
	CHECK_OK(lq_quantize(&f.p, x, n, &f.b, f.work, 2), (struct lq_error *)NULL);
	CHECK(qt_equal(&r, &f), "%s %s dq%d: fast path differs", tn, qn, dq);
	qt_free(&f);
	qt_init(&f, qtype, 64, dq, n);
	CHECK_OK(lq_quantize_src(&f.p, src, src_dtype, n, &f.b, f.work, 2), (struct lq_error *)NULL);
	CHECK(qt_equal(&r, &f), "%s %s dq%d: fast path from the source dtype differs", tn, qn, dq);
	qt_free(&f);

	/* dequantize from bnb's own parts; bnb casts to the input dtype */
	/* (aligned copies: the fixture's tensors are not 4-byte aligned) */
	float *sc = malloc(absmax->nbytes + 4), *ne = malloc(dq ? nested->nbytes : 4);
	memcpy(sc, absmax->data, absmax->nbytes);
	if (dq)
		memcpy(ne, nested->data, nested->nbytes);
	struct lq_qbuf in = {(uint8_t *)packed->data, sc, dq ? ne : NULL, 0.0f};
	if (dq)
		memcpy(&in.offset, offset->data, 4);
	float *y = malloc(n * sizeof *y), *y2 = malloc(n * sizeof *y2);
	CHECK_OK(lq_dequantize_ref(&r.p, &in, n, y), (struct lq_error *)NULL);
	CHECK_OK(lq_dequantize(&r.p, &in, n, y2, 2), (struct lq_error *)NULL);
	CHECK(memcmp(y, y2, n * 4) == 0, "%s %s dq%d: fast dequant differs", tn, qn, dq);
	bad = 0;
	for (uint64_t i = 0; i < n; i++) {
		uint32_t want;
		memcpy(&want, (const uint8_t *)deq->data + 4 * i, 4);
		uint32_t got = src_dtype == LQ_DTYPE_BF16 ? (uint32_t)lq_f32_to_bf16(y[i]) << 16 : f2u(y[i]);
		if (got != want && !bad++)
			first = i;
	}
	CHECK(bad == 0, "%s %s dq%d: %llu dequantized values differ from bnb, first at %llu", tn, qn,
	      dq, (unsigned long long)bad, (unsigned long long)first);
	free(y);
	free(y2);
	free(sc);
	free(ne);
	qt_free(&r);
}

static void test_fixture(void)
{
	char path[4096];
	/* the repo's copy (tests run from the repo root), else the shared one */
	snprintf(path, sizeof path, "tests/fixtures/bnb_4bit_ref.safetensors");
	if (access(path, R_OK) != 0)
		snprintf(path, sizeof path, "%s/fixtures/bnb_4bit_ref.safetensors", test_shared_dir());
	struct lq_error e = {0};
	struct lq_st *st = NULL;
	if (lq_st_open(&st, path, &e) != LQ_OK) {
		printf("skipping the bnb fixture tests: %s\n", e.msg);
		return;
	}
	static const char *const names[2] = {"t0", "t1"};
	for (int t = 0; t < 2; t++) {
		snprintf(path, sizeof path, "%s.input", names[t]);
		const struct lq_st_tensor *in = lq_st_find(st, path);
		CHECK(in && (in->dtype == LQ_DTYPE_BF16 || in->dtype == LQ_DTYPE_F32), "%s", path);
		if (!in)
			continue;
		float *x = malloc(in->nelem * sizeof *x);
		lq_to_f32(x, in->data, in->dtype, in->nelem);
		for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_FP4; q++)
			for (int dq = 0; dq < 2; dq++)
				check_fixture_case(st, names[t], x, in->data, in->dtype, in->nelem, q, dq);
		free(x);
	}
	lq_st_close(st);
}

/* ---------------------------------------------------------------- random: ref == fast */

/* Fill x with a mix chosen by kind. */
static void fill(float *x, uint64_t n, int kind, int bs)
{
	const float *nf4 = lq_nf4_table();
	for (uint64_t i = 0; i < n; i++) {
		float v = nrand();
		switch (kind) {
		case 0: break;
		case 1: v *= 1e30f; break;
		case 2: v *= 1e-30f; break;
		case 3: v *= 1e-41f; break; /* subnormal */
		case 4: /* thresholds with absmax 1 */
			if (i % (uint64_t)bs == 0) {
				v = 1.0f;
			} else {
				uint64_t r = rnd();
				int j = (int)(r % 15);
				float m = (nf4[j] + nf4[j + 1]) * 0.5f;
				int k = (int)((r >> 8) % 3);
				v = k == 0 ? m : nextafterf(m, k == 1 ? 2.0f : -2.0f);
				if ((r >> 16) & 1) { /* FP4 thresholds */
					static const float f[7] = {LQ_FP4_T_0_1, LQ_FP4_T_1_6, LQ_FP4_T_6_7,
								   LQ_FP4_T_7_4, LQ_FP4_T_4_5, LQ_FP4_T_5_2,
								   LQ_FP4_T_2_3};
					v = f[(r >> 20) % 7] * ((r >> 24) & 1 ? -1.0f : 1.0f);
					if ((r >> 25) & 1)
						v = nextafterf(v, (r >> 26) & 1 ? 2.0f : -2.0f);
				}
				if ((r >> 27) % 5 == 0) /* int8 half points */
					v = ((float)(int)((r >> 32) % 255) - 127.0f + 0.5f) / 127.0f;
			}
			break;
		case 5: /* sparse: many zero blocks, zeros, NaN and Inf */
			if ((i / (uint64_t)bs) % 3 == 0)
				v = 0.0f;
			else if (rnd() % 50 == 0)
				v = (rnd() & 1) ? NAN : -0.0f;
			else if (rnd() % 997 == 0)
				v = (rnd() & 1) ? INFINITY : -INFINITY;
			break;
		case 6: /* all blocks of equal absmax: nested absmax 0 */
			v = (i % (uint64_t)bs == 0) ? 1.0f : v * 0.1f;
			break;
		}
		x[i] = v;
	}
}

static void test_ref_vs_fast(void)
{
	static const int bss[8] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
	int cases = 0, bad = 0, bad_dq = 0;
	for (int iter = 0; iter < 400; iter++) {
		int bs = bss[rnd() % 8];
		int qtype = LQ_QTYPE_NF4 + (int)(rnd() % 3);
		int dq = (int)(rnd() & 1);
		int kind = (int)(rnd() % 7);
		uint64_t n;
		switch (rnd() % 4) {
		case 0: n = 1 + rnd() % 200; break;
		case 1: n = (uint64_t)bs * (1 + rnd() % 8); break;
		case 2: n = 1 + rnd() % 70000; break;
		default:
			n = (uint64_t)bs * (256 + rnd() % 300);
			n += rnd() % (uint64_t)bs;
			break;
		}
		if (n > 300000)
			n = 300000 + (n & 1);
		int threads = 1 + (int)(rnd() % 4);
		float *x = malloc(n * sizeof *x);
		fill(x, n, kind, bs);
		struct qt r, f;
		qt_init(&r, qtype, bs, dq, n);
		qt_init(&f, qtype, bs, dq, n);
		CHECK_OK(lq_quantize_ref(&r.p, x, n, &r.b, r.work), (struct lq_error *)NULL);
		CHECK_OK(lq_quantize(&f.p, x, n, &f.b, f.work, threads), (struct lq_error *)NULL);
		cases++;
		if (!qt_equal(&r, &f)) {
			bad++;
			fprintf(stderr, "ref != fast: qtype %d bs %d dq %d n %llu kind %d threads %d\n",
				qtype, bs, dq, (unsigned long long)n, kind, threads);
		}
		/* the packed data does not depend on double quant */
		if (dq) {
			struct qt nd;
			qt_init(&nd, qtype, bs, 0, n);
			CHECK_OK(lq_quantize(&nd.p, x, n, &nd.b, NULL, threads), (struct lq_error *)NULL);
			uint64_t nb = lq_qnblocks(n, bs);
			bad_dq += memcmp(nd.b.data, r.b.data, lq_qdata_bytes(qtype, n)) != 0 ||
				  memcmp(nd.b.scales, r.work, nb * 4) != 0;
			/* chunked use: double quant of the fp32 scales afterwards */
			uint8_t *codes = malloc(nb + 1);
			float *nested = malloc(lq_qnested_bytes(&r.p, n) + 4), off = 0;
			lq_qscales_compress(nd.b.scales, nb, codes, nested, &off);
			bad_dq += memcmp(codes, r.b.scales, nb) != 0 ||
				  memcmp(nested, r.b.nested, lq_qnested_bytes(&r.p, n)) != 0 ||
				  f2u(off) != f2u(r.b.offset);
			free(codes);
			free(nested);
			qt_free(&nd);
		}
		/* from bf16/f16 sources: the same bytes as from their floats */
		{
			int dt = (iter & 1) ? LQ_DTYPE_BF16 : LQ_DTYPE_F16;
			uint16_t *h = malloc(n * 2 + 2);
			float *xc = malloc(n * sizeof *xc + 4);
			for (uint64_t i = 0; i < n; i++)
				h[i] = dt == LQ_DTYPE_BF16 ? lq_f32_to_bf16(x[i]) : lq_f32_to_f16(x[i]);
			lq_to_f32(xc, h, dt, n);
			struct qt a, c;
			qt_init(&a, qtype, bs, dq, n);
			qt_init(&c, qtype, bs, dq, n);
			CHECK_OK(lq_quantize_ref(&a.p, xc, n, &a.b, a.work), (struct lq_error *)NULL);
			CHECK_OK(lq_quantize_src(&c.p, h, dt, n, &c.b, c.work, threads), (struct lq_error *)NULL);
			CHECK(qt_equal(&a, &c), "quantize_src %s: qtype %d bs %d dq %d n %llu", lq_dtype_name(dt),
			      qtype, bs, dq, (unsigned long long)n);
			qt_free(&a);
			qt_free(&c);
			free(h);
			free(xc);
		}
		float *y1 = malloc(n * sizeof *y1 + 4), *y2 = malloc(n * sizeof *y2 + 4);
		CHECK_OK(lq_dequantize_ref(&r.p, &r.b, n, y1), (struct lq_error *)NULL);
		CHECK_OK(lq_dequantize(&r.p, &r.b, n, y2, threads), (struct lq_error *)NULL);
		CHECK(memcmp(y1, y2, n * 4) == 0, "dequant ref != fast: qtype %d bs %d dq %d n %llu",
		      qtype, bs, dq, (unsigned long long)n);
		free(y1);
		free(y2);
		free(x);
		qt_free(&r);
		qt_free(&f);
	}
	CHECK(bad == 0, "%d of %d random cases: fast path differs from the reference", bad, cases);
	CHECK(bad_dq == 0, "%d cases: data or absmax changed with double quant", bad_dq);
}

/* ---------------------------------------------------------------- error bounds */

static double half_gap(const float *t, int count)
{
	float s[256];
	memcpy(s, t, (size_t)count * 4);
	for (int i = 1; i < count; i++) /* insertion sort (FP4 is not sorted) */
		for (int j = i; j > 0 && s[j] < s[j - 1]; j--) {
			float tmp = s[j];
			s[j] = s[j - 1];
			s[j - 1] = tmp;
		}
	double g = 0;
	for (int i = 1; i < count; i++)
		if ((double)s[i] - s[i - 1] > g)
			g = (double)s[i] - s[i - 1];
	return g / 2;
}

static void test_error_bounds(void)
{
	static const int bss[4] = {32, 64, 256, 4096};
	double hq[4] = {0, half_gap(lq_nf4_table(), 16), half_gap(lq_fp4_table(), 16), 1.0 / 254};
	double g = half_gap(lq_dynamic_map(), 256);
	CHECK(fabs(hq[1] - (1 - 0.6961928009986877) / 2) < 1e-7, "nf4 half gap %g", hq[1]);
	CHECK(fabs(hq[2] - 1.0 / 6) < 1e-7, "fp4 half gap %g", hq[2]);
	CHECK(fabs(g - 0.0140625 / 2) < 1e-6, "dynamic map half gap %g", g);
	uint64_t n = 70001;
	float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
	float *sc = malloc(n * sizeof *sc);
	for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_INT8; q++)
		for (int k = 0; k < 4; k++)
			for (int dq = 0; dq < 2; dq++) {
				int bs = bss[k];
				static const float dec[5] = {0.01f, 0.1f, 1.0f, 10.0f, 100.0f};
				for (uint64_t i = 0; i < n; i++) /* scales spread over 4 decades */
					x[i] = nrand() * 0.02f * dec[(i / (uint64_t)bs) % 5];
				struct qt r;
				qt_init(&r, q, bs, dq, n);
				CHECK_OK(lq_quantize(&r.p, x, n, &r.b, r.work, 2), (struct lq_error *)NULL);
				CHECK_OK(lq_dequantize(&r.p, &r.b, n, y, 2), (struct lq_error *)NULL);
				lq_qscales_f32(&r.p, &r.b, n, sc);
				const float *a = dq ? r.work : r.b.scales;
				uint64_t nb = lq_qnblocks(n, bs);
				int sbad = 0, ebad = 0;
				double worst = 0;
				for (uint64_t b = 0; b < nb; b++) {
					double da = 0;
					if (dq) {
						double N = r.b.nested[b >> 8];
						double lim = N * g + 0x1p-21 * (a[b] + fabs(r.b.offset) + N);
						da = fabs((double)sc[b] - a[b]);
						sbad += da > lim;
					} else {
						sbad += f2u(sc[b]) != f2u(a[b]);
					}
					uint64_t i1 = (b + 1) * bs < n ? (b + 1) * bs : n;
					for (uint64_t i = b * bs; i < i1; i++) {
						double e = fabs((double)y[i] - x[i]);
						double lim = a[b] * hq[q] * (1 + 1e-4) + da;
						ebad += e > lim;
						if (e / a[b] > worst)
							worst = e / a[b];
					}
				}
				CHECK(sbad == 0, "qtype %d bs %d dq %d: %d scales out of bounds", q, bs, dq, sbad);
				CHECK(ebad == 0, "qtype %d bs %d dq %d: %d elements out of bounds (worst %g of absmax)",
				      q, bs, dq, ebad, worst);
				qt_free(&r);
			}
	free(x);
	free(y);
	free(sc);
}

/* ---------------------------------------------------------------- API */

static void test_api(void)
{
	struct lq_error e = {0};
	struct lq_qparams p = {LQ_QTYPE_NF4, 64, 1};
	CHECK_OK(lq_qparams_check(&p, &e), &e);
	p.block_size = 48;
	CHECK(lq_qparams_check(&p, &e) == LQ_ERR_INVALID && strstr(e.msg, "48"), "bs 48: %s", e.msg);
	p.block_size = 8192;
	CHECK(lq_qparams_check(&p, &e) == LQ_ERR_INVALID, "bs 8192");
	p.block_size = 16;
	CHECK(lq_qparams_check(&p, &e) == LQ_ERR_INVALID, "bs 16");
	p = (struct lq_qparams){LQ_QTYPE_NONE, 64, 0};
	CHECK(lq_qparams_check(&p, &e) == LQ_ERR_INVALID, "qtype none");
	CHECK(lq_qparams_check(NULL, &e) == LQ_ERR_INVALID, "NULL params");

	p = (struct lq_qparams){LQ_QTYPE_NF4, 64, 1};
	uint64_t n = 4096 * 4096;
	CHECK(lq_qdata_bytes(LQ_QTYPE_NF4, n) == n / 2 && lq_qdata_bytes(LQ_QTYPE_INT8, n) == n &&
	      lq_qdata_bytes(LQ_QTYPE_FP4, 3) == 2, "data bytes");
	CHECK(lq_qscale_bytes(&p, n) == 262144 && lq_qnested_bytes(&p, n) == 1024 * 4, "dq sizes");
	p.double_quant = 0;
	CHECK(lq_qscale_bytes(&p, n) == 262144 * 4 && lq_qnested_bytes(&p, n) == 0, "sizes");
	CHECK(lq_qnblocks(197, 64) == 4 && lq_qnblocks(0, 64) == 0 && lq_qnblocks(5, 0) == 0, "nblocks");
	CHECK(lq_qdata_bytes(LQ_QTYPE_NF4, UINT64_MAX) == (size_t)(UINT64_MAX / 2 + 1), "no overflow");

	/* bad arguments are refused, n = 0 is fine */
	float x[64] = {1};
	uint8_t d[32];
	float s[1];
	struct lq_qbuf b = {d, s, NULL, 0};
	p = (struct lq_qparams){LQ_QTYPE_NF4, 64, 1};
	CHECK(lq_quantize(&p, x, 64, &b, NULL, 1) == LQ_ERR_INVALID, "dq without nested/work");
	CHECK(lq_quantize_ref(&p, x, 64, &b, NULL) == LQ_ERR_INVALID, "ref dq without nested/work");
	p.double_quant = 0;
	CHECK(lq_quantize(&p, NULL, 64, &b, NULL, 1) == LQ_ERR_INVALID, "NULL input");
	CHECK(lq_quantize(&p, x, 0, &b, NULL, 1) == LQ_OK, "n = 0");
	CHECK(lq_dequantize(&p, &b, 0, NULL, 1) == LQ_OK, "dequant n = 0");
	CHECK(lq_quantize(&p, x, 64, &b, NULL, 0) == LQ_OK && s[0] == 1.0f && d[0] == 0xf7,
	      "nthreads 0 runs on the caller: %02x", d[0]);
	CHECK(lq_quantize(&p, x, 64, &b, NULL, 1000) == LQ_OK, "nthreads 1000");
	CHECK(lq_quantize_src(&p, x, LQ_DTYPE_I8, 64, &b, NULL, 1) == LQ_ERR_INVALID, "src dtype I8");
}

int main(void)
{
	test_tables();
	test_api();
	test_spec_vectors();
	test_dyn8_ties();
	test_fixture();
	test_ref_vs_fast();
	test_error_bounds();
	return test_summary();
}
