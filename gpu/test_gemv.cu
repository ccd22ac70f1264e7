/*
 * test_gemv.cu - the fast GEMV (gpu/gemv.cu) against a double-precision CPU
 * product of lq_dequantize_ref's weights (make check-gpu).
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * Every qtype x double quant x block size 64/128/256 x shape (odd N, N = 1,
 * split-K shapes, more row groups than resident blocks) x activation dtype
 * (fp32, bf16) x rows per block (auto, 1, 2, 4, 8).  Tolerances, with
 * a = sum_k |w_k x_k| of the row (x as given to the GPU, i.e. bf16-rounded
 * for bf16): NF4/FP4 |y - ref| <= 3e-3 a (the code values are used as bf16,
 * relative error <= 2^-9 = 1.95e-3 per weight, plus fp32 rounding);
 * INT8 |y - ref| <= 1e-5 a (exact codes, fp32 rounding only).  The old naive
 * kernel (lq_cuda_gemv_f32) is checked on the same data at 1e-5 a.
 * Rows of 8 with K not split and a grid of 2 take the double-buffered
 * CUDA-core kernel where the rows are long (3 x 14336 INT8, 19 x 16384).
 * The tensor-core path (weights re-laid out by lq_cuda_tile, whose bytes
 * are checked against the layout of formats/LQ-FORMAT.md built here on the
 * host; bf16 activations, or lq_cuda_gemv_multi with LQ_GEMV_BF16 /
 * LQ_GEMV_F16 on float32 arrays holding such values) runs on the cases the
 * tile layout takes (4-bit, block size >= 64, K % 128 == 0), alone, with a
 * grid of 2 blocks (several work items per block; 4, 8 and 16 warps along
 * K) and as a multi-part launch; fp16 codes are held to 1e-3 a (2^-11 per
 * weight).  Row-major weights in those modes take the CUDA-core kernel (3e-3
 * a).
 */
#include "lq_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int pass, fail;
#define CHECK(c, ...) do { if (c) pass++; else { fail++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)
#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)

static float frand(unsigned *s)
{
	*s = *s * 1664525u + 1013904223u;
	return ((float)(*s >> 8) / 16777216.0f - 0.5f) * 0.1f;
}

static uint16_t f2bf(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

static float bf2f(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* ref[r] = sum_k wd[r, k] x[k] and a[r] = sum_k |wd[r, k] x[k]|, in double. */
static void host_gemv(const float *wd, const float *x, uint64_t N, uint64_t K, double *ref, double *a)
{
	for (uint64_t r = 0; r < N; r++) {
		double s = 0, sa = 0;
		for (uint64_t k = 0; k < K; k++) {
			s += (double)wd[r * K + k] * x[k];
			sa += fabs((double)wd[r * K + k] * x[k]);
		}
		ref[r] = s;
		a[r] = sa;
	}
}

/* max over rows of |y - ref| / a */
static double worst(const float *y, const double *ref, const double *a, uint64_t N)
{
	double m = 0;
	for (uint64_t r = 0; r < N; r++) {
		double e = fabs((double)y[r] - ref[r]) / (a[r] > 0 ? a[r] : 1);
		if (!(e <= m))
			m = e; /* NaN sticks */
	}
	return m;
}

/* One random quantized weight on the device with its float32 dequantization
 * (q as stored; tq in the tile layout when tiled is set). */
struct tw {
	struct lq_cuda_qweight q, tq;
	int tiled, dense; /* dense: q holds bf16 values (LQ_CUDA_DENSE_BF16), tq fp16 ones */
	float *wd, *wd16; /* the values of q (and of tq when dense) */
	void *dbuf[5];
};

/* The tile layout of formats/LQ-FORMAT.md, built on the host from the
 * stored parts, against what lq_cuda_tile wrote. */
static int tiles_match(const struct lq_qparams *p, uint64_t N, uint64_t K, const uint8_t *data,
		       const uint8_t *scales, const void *d_tdata, const void *d_tscales)
{
	uint64_t T = (N + 15) / 16, S = K / 128, B = K / (uint64_t)p->block_size, es = p->double_quant ? 1 : 4;
	uint64_t db = T * 16 * K / 2, sb = T * 16 * B * es, xdb = 0, xsb = 0;
	lq_cuda_tiles_size(p, N, K, &xdb, &xsb);
	if (xdb != db || xsb != sb)
		return 0;
	uint8_t *ed = (uint8_t *)calloc(db, 1), *es_ = (uint8_t *)calloc(sb, 1);
	uint8_t *gd = (uint8_t *)malloc(db), *gs = (uint8_t *)malloc(sb);
	for (uint64_t t = 0; t < T; t++)
		for (uint64_t sp = 0; sp < S; sp++)
			for (uint64_t r = 0; r < 16 && t * 16 + r < N; r++)
				memcpy(ed + (t * S + sp) * 1024 + r * 64, data + (t * 16 + r) * (K / 2) + sp * 64, 64);
	for (uint64_t t = 0; t < T; t++)
		for (uint64_t b = 0; b < B; b++)
			for (uint64_t r = 0; r < 16 && t * 16 + r < N; r++)
				memcpy(es_ + ((t * B + b) * 16 + r) * es, scales + ((t * 16 + r) * B + b) * es, es);
	CU(cudaMemcpy(gd, d_tdata, db, cudaMemcpyDeviceToHost));
	CU(cudaMemcpy(gs, d_tscales, sb, cudaMemcpyDeviceToHost));
	int ok = memcmp(ed, gd, db) == 0 && memcmp(es_, gs, sb) == 0;
	free(ed); free(es_); free(gd); free(gs);
	return ok;
}

static void tw_make(struct tw *t, int qtype, int bs, int dq, uint64_t N, uint64_t K, unsigned seed)
{
	uint64_t n = N * K;
	memset(t, 0, sizeof *t);
	if (qtype == LQ_QTYPE_NONE) {
		/* unquantized: the same values rounded to bf16 (q) and to fp16 (tq) */
		uint16_t *hb = (uint16_t *)malloc(n * 2), *hh = (uint16_t *)malloc(n * 2);
		t->wd = (float *)malloc(n * 4);
		t->wd16 = (float *)malloc(n * 4);
		for (uint64_t i = 0; i < n; i++) {
			const float v = frand(&seed) * (1.0f + (float)(i % 89) * 0.1f);
			hb[i] = f2bf(v);
			t->wd[i] = bf2f(hb[i]);
			const __half h = __float2half(v);
			memcpy(&hh[i], &h, 2);
			t->wd16[i] = __half2float(h);
		}
		CU(cudaMalloc(&t->dbuf[0], n * 2));
		CU(cudaMalloc(&t->dbuf[1], n * 2));
		CU(cudaMemcpy(t->dbuf[0], hb, n * 2, cudaMemcpyHostToDevice));
		CU(cudaMemcpy(t->dbuf[1], hh, n * 2, cudaMemcpyHostToDevice));
		struct lq_cuda_qweight q = {{LQ_QTYPE_NONE, 0, 0}, (const uint8_t *)t->dbuf[0], NULL, NULL, 0, n,
					    LQ_CUDA_DENSE_BF16};
		t->q = q;
		t->tq = q;
		t->tq.d_data = (const uint8_t *)t->dbuf[1];
		t->tq.layout = LQ_CUDA_DENSE_F16;
		t->dense = 1;
		free(hb);
		free(hh);
		return;
	}
	struct lq_qparams p = {qtype, bs, dq};
	float *w = (float *)malloc(n * 4);
	t->wd = (float *)malloc(n * 4);
	for (uint64_t i = 0; i < n; i++)
		w[i] = frand(&seed) * (1.0f + (float)(i % 89) * 0.1f);
	size_t db = lq_qdata_bytes(qtype, n), sb = lq_qscale_bytes(&p, n), nb = lq_qnested_bytes(&p, n);
	uint8_t *data = (uint8_t *)malloc(db);
	void *scales = malloc(sb);
	float *nested = (float *)malloc(nb + 4), *work = (float *)malloc(lq_qnblocks(n, bs) * 4);
	struct lq_qbuf qb = {data, scales, nested, 0};
	lq_quantize(&p, w, n, &qb, work, 2);
	lq_dequantize_ref(&p, &qb, n, t->wd);
	memset(t->dbuf, 0, sizeof t->dbuf);
	CU(cudaMalloc(&t->dbuf[0], db));
	CU(cudaMalloc(&t->dbuf[1], sb));
	CU(cudaMemcpy(t->dbuf[0], data, db, cudaMemcpyHostToDevice));
	CU(cudaMemcpy(t->dbuf[1], scales, sb, cudaMemcpyHostToDevice));
	if (nb) {
		CU(cudaMalloc(&t->dbuf[2], nb));
		CU(cudaMemcpy(t->dbuf[2], nested, nb, cudaMemcpyHostToDevice));
	}
	struct lq_cuda_qweight q = {p, (const uint8_t *)t->dbuf[0], t->dbuf[1], (const float *)t->dbuf[2], qb.offset, n,
				    LQ_CUDA_ROWS};
	t->q = q;
	t->tiled = lq_cuda_tiles_ok(&p, N, K);
	if (t->tiled) {
		uint64_t tdb, tsb;
		lq_cuda_tiles_size(&p, N, K, &tdb, &tsb);
		CU(cudaMalloc(&t->dbuf[3], tdb));
		CU(cudaMalloc(&t->dbuf[4], tsb));
		CU(cudaMemset(t->dbuf[3], 0x5a, tdb)); /* padding must be written */
		CU(cudaMemset(t->dbuf[4], 0x5a, tsb));
		int rc = lq_cuda_tile(&t->q, K, t->dbuf[3], t->dbuf[4], &t->tq, 0);
		CU(cudaDeviceSynchronize());
		CHECK(rc == 0 && t->tq.layout == LQ_CUDA_TILES && t->tq.d_nested == t->q.d_nested &&
		      tiles_match(&p, N, K, data, (const uint8_t *)scales, t->dbuf[3], t->dbuf[4]),
		      "tile layout q=%d bs=%d dq=%d %llux%llu: rc %d", qtype, bs, dq, (unsigned long long)N,
		      (unsigned long long)K, rc);
	} else {
		struct lq_cuda_qweight tq;
		CHECK(lq_cuda_tile(&t->q, K, t->dbuf[0], t->dbuf[1], &tq, 0) == (int)cudaErrorInvalidValue,
		      "lq_cuda_tile refuses q=%d bs=%d %llux%llu", qtype, bs, (unsigned long long)N, (unsigned long long)K);
	}
	free(w); free(data); free(scales); free(nested); free(work);
}

static void tw_free(struct tw *t)
{
	for (int i = 0; i < 5; i++)
		cudaFree(t->dbuf[i]);
	free(t->wd);
	free(t->wd16);
}

/* A device copy of n floats. */
static float *to_dev(const float *h, uint64_t n)
{
	float *d;
	CU(cudaMalloc(&d, n * 4));
	CU(cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice));
	return d;
}

/* The weight a 16-bit mode runs (tiled 4-bit, INT8 as stored, unquantized
 * in the mode's type), and its values. */
static const struct lq_cuda_qweight *tw_w(const struct tw *t, int mode)
{
	return t->dense ? (mode == LQ_GEMV_F16 ? &t->tq : &t->q) : t->tiled ? &t->tq : &t->q;
}
static const float *tw_ref(const struct tw *t, int mode)
{
	return t->dense && mode == LQ_GEMV_F16 ? t->wd16 : t->wd;
}

/* q, k and v style: three weights of different row counts in one launch. */
static void test_multi(int qtype, int dq, int mode, uint64_t K, uint64_t N1)
{
	const uint64_t Ns[3] = {33, N1, 7};
	struct tw t[3];
	const struct lq_cuda_qweight *ws[3];
	float *d_y[3], *d_x, *x = (float *)malloc(K * 4);
	unsigned seed = 99u + (unsigned)K;
	for (uint64_t k = 0; k < K; k++) {
		float v = frand(&seed) * 10;
		x[k] = mode == LQ_GEMV_F16 ? __half2float(__float2half(v)) : bf2f(f2bf(v));
	}
	CU(cudaMalloc(&d_x, K * 4));
	CU(cudaMemcpy(d_x, x, K * 4, cudaMemcpyHostToDevice));
	for (int i = 0; i < 3; i++) {
		tw_make(&t[i], qtype, 64, dq, Ns[i], K, 7u * (unsigned)i + 1);
		ws[i] = mode >= LQ_GEMV_BF16 ? tw_w(&t[i], mode) : &t[i].q;
		CU(cudaMalloc(&d_y[i], Ns[i] * 4));
		CU(cudaMemset(d_y[i], 0xff, Ns[i] * 4));
	}
	int rc = lq_cuda_gemv_multi(ws, d_y, 3, K, d_x, LQ_DTYPE_F32, mode, 0);
	CU(cudaDeviceSynchronize());
	double tol = qtype == LQ_QTYPE_INT8 || qtype == LQ_QTYPE_NONE ? 1e-5 : mode == LQ_GEMV_F16 && t[0].tiled ? 1e-3 : 3e-3;
	for (int i = 0; i < 3; i++) {
		uint64_t N = Ns[i];
		float *y = (float *)malloc(N * 4);
		double *ref = (double *)malloc(N * 8), *a = (double *)malloc(N * 8);
		CU(cudaMemcpy(y, d_y[i], N * 4, cudaMemcpyDeviceToHost));
		host_gemv(tw_ref(&t[i], mode), x, N, K, ref, a);
		double e = worst(y, ref, a, N);
		CHECK(rc == 0 && e <= tol, "multi part %d q=%d dq=%d mode=%d K=%llu: rc %d err %g (tol %g)", i, qtype, dq,
		      mode, (unsigned long long)K, rc, e, tol);
		free(y); free(ref); free(a);
		cudaFree(d_y[i]);
		tw_free(&t[i]);
	}
	cudaFree(d_x);
	free(x);
}

/* lq_cuda_gemv_fused: RMSNorm of x as the input (plus_one or not) and
 * y += W x, on two tiled parts, against the host's norm and product. */
static void test_fused(int qtype, int mode, uint64_t K)
{
	const uint64_t Ns[2] = {37, 500};
	struct tw t[2];
	const struct lq_cuda_qweight *ws[2], *rows_w[2];
	float *x = (float *)malloc(K * 4), *nw = (float *)malloc(K * 4), *xn = (float *)malloc(K * 4);
	unsigned seed = 4242u + (unsigned)K;
	for (uint64_t k = 0; k < K; k++) {
		x[k] = frand(&seed) * 30;
		nw[k] = 1.0f + frand(&seed) * 8;
	}
	float *d_x, *d_nw, *d_y[2];
	CU(cudaMalloc(&d_x, K * 4));
	CU(cudaMalloc(&d_nw, K * 4));
	CU(cudaMemcpy(d_x, x, K * 4, cudaMemcpyHostToDevice));
	CU(cudaMemcpy(d_nw, nw, K * 4, cudaMemcpyHostToDevice));
	for (int i = 0; i < 2; i++) {
		tw_make(&t[i], qtype, 64, 1, Ns[i], K, 31u * (unsigned)i + 5);
		ws[i] = tw_w(&t[i], mode); /* INT8, 16-bit: as stored */
		rows_w[i] = &t[i].q;
		CU(cudaMalloc(&d_y[i], Ns[i] * 4));
	}
	const float eps = 1e-5f;
	double ss = 0;
	for (uint64_t k = 0; k < K; k++)
		ss += (double)x[k] * x[k];
	const float inv = (float)(1.0 / sqrt((double)((float)ss / (float)K + eps)));
	for (int plus1 = 0; plus1 <= 1; plus1++)
		for (int add = 0; add <= 1; add++) {
			for (uint64_t k = 0; k < K; k++) {
				float h = x[k] * inv, o = plus1 ? h * (1.0f + nw[k]) : nw[k] * h;
				xn[k] = mode == LQ_GEMV_F16 ? __half2float(__float2half(o)) : bf2f(f2bf(o));
			}
			float *y0[2];
			for (int i = 0; i < 2; i++) {
				y0[i] = (float *)malloc(Ns[i] * 4);
				for (uint64_t r = 0; r < Ns[i]; r++)
					y0[i][r] = add ? frand(&seed) * 5 : 0.0f;
				if (add)
					CU(cudaMemcpy(d_y[i], y0[i], Ns[i] * 4, cudaMemcpyHostToDevice));
				else
					CU(cudaMemset(d_y[i], 0xff, Ns[i] * 4));
			}
			struct lq_gemv_fuse f = {d_nw, eps, plus1, add, NULL, 0};
			int rc = lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0);
			CU(cudaDeviceSynchronize());
			for (int i = 0; i < 2; i++) {
				uint64_t N = Ns[i];
				float *y = (float *)malloc(N * 4);
				double *ref = (double *)malloc(N * 8), *a = (double *)malloc(N * 8);
				CU(cudaMemcpy(y, d_y[i], N * 4, cudaMemcpyDeviceToHost));
				host_gemv(tw_ref(&t[i], mode), xn, N, K, ref, a);
				for (uint64_t r = 0; r < N; r++) {
					ref[r] += y0[i][r];
					a[r] += fabs(y0[i][r]);
				}
				double e = worst(y, ref, a, N), tol = mode == LQ_GEMV_F16 ? 1e-3 : 3e-3;
				CHECK(rc == 0 && e <= tol, "fused part %d q=%d mode=%d K=%llu plus1=%d add=%d: rc %d err %g", i, qtype,
				      mode, (unsigned long long)K, plus1, add, rc, e);
				free(y); free(ref); free(a);
				free(y0[i]);
			}
		}
	struct lq_gemv_fuse f = {d_nw, eps, 0, 0, NULL, 0};
	CHECK((qtype == LQ_QTYPE_INT8 || qtype == LQ_QTYPE_NONE || lq_cuda_gemv_fused(rows_w, d_y, 2, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue) &&
		      lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, NULL, 0) == (int)cudaErrorInvalidValue &&
		      lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, LQ_GEMV_EXACT, &f, 0) == (int)cudaErrorInvalidValue,
	      "fused refuses row-major weights, no fusion, fp32 modes");
	for (int i = 0; i < 2; i++) {
		cudaFree(d_y[i]);
		tw_free(&t[i]);
	}
	cudaFree(d_x); cudaFree(d_nw);
	free(x); free(nw); free(xn);
}

/* The gated activation fused into a gate / up launch (act_out): against
 * act(gate) * up on the host from the same launch without it (the sums
 * differ only in order: a K split of 8 warps instead of 16). */
static float host_act(int a, float x)
{
	if (a == LQ_ACT_GELU_TANH)
		return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
	return x / (1.0f + expf(-x));
}

static void test_fused_act(int qtype, int mode, uint64_t K, uint64_t N, int act)
{
	struct tw t[2];
	const struct lq_cuda_qweight *ws[2];
	float *x = (float *)malloc(K * 4), *nw = (float *)malloc(K * 4);
	unsigned seed = 777u + (unsigned)(K + N);
	for (uint64_t k = 0; k < K; k++) {
		x[k] = frand(&seed) * 30;
		nw[k] = 1.0f + frand(&seed) * 8;
	}
	float *d_x, *d_nw, *d_y[2], *d_a;
	CU(cudaMalloc(&d_x, K * 4));
	CU(cudaMalloc(&d_nw, K * 4));
	CU(cudaMalloc(&d_a, N * 4));
	CU(cudaMemcpy(d_x, x, K * 4, cudaMemcpyHostToDevice));
	CU(cudaMemcpy(d_nw, nw, K * 4, cudaMemcpyHostToDevice));
	for (int i = 0; i < 2; i++) {
		tw_make(&t[i], qtype, 64, 1, N, K, 91u * (unsigned)i + 3);
		ws[i] = tw_w(&t[i], mode);
		CU(cudaMalloc(&d_y[i], N * 4));
	}
	struct lq_gemv_fuse f = {d_nw, 1e-5f, 0, 0, NULL, act};
	int rc1 = lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0);
	CU(cudaMemset(d_a, 0xff, N * 4));
	f.act_out = d_a;
	int rc2 = lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0);
	CU(cudaDeviceSynchronize());
	float *yg = (float *)malloc(N * 4), *yu = (float *)malloc(N * 4), *ya = (float *)malloc(N * 4);
	CU(cudaMemcpy(yg, d_y[0], N * 4, cudaMemcpyDeviceToHost));
	CU(cudaMemcpy(yu, d_y[1], N * 4, cudaMemcpyDeviceToHost));
	CU(cudaMemcpy(ya, d_a, N * 4, cudaMemcpyDeviceToHost));
	double mean = 0, worst_e = 0;
	float *h = (float *)malloc(N * 4);
	for (uint64_t r = 0; r < N; r++) {
		float v = host_act(act, yg[r]) * yu[r];
		h[r] = mode == LQ_GEMV_F16 ? __half2float(__float2half(v)) : bf2f(f2bf(v));
		mean += fabs(h[r]) / (double)N;
	}
	for (uint64_t r = 0; r < N; r++) {
		double e = fabs((double)ya[r] - h[r]) / (fabs(h[r]) / 128.0 + 1e-3 * mean);
		if (!(e <= worst_e))
			worst_e = e; /* NaN sticks */
	}
	CHECK(rc1 == 0 && rc2 == 0 && worst_e <= 1.0, "fused act q=%d mode=%d K=%llu N=%llu act=%d: rc %d %d, err %g", qtype,
	      mode, (unsigned long long)K, (unsigned long long)N, act, rc1, rc2, worst_e);
	/* pairs need two parts of the same rows and no residual add */
	f.add_out = 1;
	CHECK(lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue &&
		      (f.add_out = 0, lq_cuda_gemv_fused(ws, d_y, 1, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue),
	      "fused act refuses add_out and one part");
	for (int i = 0; i < 2; i++) {
		cudaFree(d_y[i]);
		tw_free(&t[i]);
	}
	cudaFree(d_x); cudaFree(d_nw); cudaFree(d_a);
	free(x); free(nw); free(yg); free(yu); free(ya); free(h);
}

/*
 * lq_cuda_gemv_fused with pre_add (Gemma 2's sandwich norm folded in): x' =
 * x + RMSNorm(o) * pre_w (plus_one or not) stored to x_out, the input
 * RMSNorm(x') * norm_w, on two tiled parts, against the host; then the same
 * launch with the gated activation (act_out) against act(gate) * up from
 * the first launch's outputs.
 */
static void test_fused_pre(int qtype, int mode, uint64_t K)
{
	const uint64_t N = 300;
	struct tw t[2];
	const struct lq_cuda_qweight *ws[2];
	float *x = (float *)malloc(K * 4), *o = (float *)malloc(K * 4), *pw = (float *)malloc(K * 4);
	float *nw = (float *)malloc(K * 4), *xp = (float *)malloc(K * 4), *xn = (float *)malloc(K * 4);
	float *got = (float *)malloc(K * 4);
	unsigned seed = 9191u + (unsigned)K;
	for (uint64_t k = 0; k < K; k++) {
		x[k] = frand(&seed) * 40;
		o[k] = frand(&seed) * 300;
		pw[k] = frand(&seed) * 6;
		nw[k] = frand(&seed) * 6;
	}
	float *d_x = to_dev(x, K), *d_o = to_dev(o, K), *d_pw = to_dev(pw, K), *d_nw = to_dev(nw, K), *d_xo, *d_y[2], *d_a;
	CU(cudaMalloc(&d_xo, K * 4));
	CU(cudaMalloc(&d_a, N * 4));
	for (int i = 0; i < 2; i++) {
		tw_make(&t[i], qtype, 64, 1, N, K, 17u * (unsigned)i + 11);
		ws[i] = tw_w(&t[i], mode);
		CU(cudaMalloc(&d_y[i], N * 4));
	}
	const float eps = 1e-6f;
	/* the host's RMSNorm scale of v (the sum in double, as test_fused) */
	auto inv_of = [&](const float *v) {
		double ss = 0;
		for (uint64_t k = 0; k < K; k++)
			ss += (double)v[k] * v[k];
		return (float)(1.0 / sqrt((double)((float)ss / (float)K + eps)));
	};
	for (int plus1 = 0; plus1 <= 1; plus1++) {
		auto nm = [&](float h, float w) { return plus1 ? h * (1.0f + w) : w * h; };
		const float io = inv_of(o);
		double xmax = 0;
		for (uint64_t k = 0; k < K; k++) {
			xp[k] = x[k] + nm(o[k] * io, pw[k]);
			xmax = fmax(xmax, fabs(xp[k]));
		}
		const float ix = inv_of(xp);
		for (uint64_t k = 0; k < K; k++) {
			float v = nm(xp[k] * ix, nw[k]);
			xn[k] = mode == LQ_GEMV_F16 ? __half2float(__float2half(v)) : bf2f(f2bf(v));
		}
		CU(cudaMemset(d_xo, 0xff, K * 4));
		struct lq_gemv_fuse f = {d_nw, eps, plus1, 0, NULL, LQ_ACT_SILU, d_o, d_pw, d_xo};
		int rc = lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0);
		CU(cudaDeviceSynchronize());
		CU(cudaMemcpy(got, d_xo, K * 4, cudaMemcpyDeviceToHost));
		double ex = 0;
		for (uint64_t k = 0; k < K; k++) {
			double e = fabs((double)got[k] - xp[k]) / xmax;
			if (!(e <= ex))
				ex = e; /* NaN sticks */
		}
		CHECK(rc == 0 && ex <= 1e-6, "fused pre q=%d mode=%d K=%llu plus1=%d: rc %d, x_out err %g", qtype, mode,
		      (unsigned long long)K, plus1, rc, ex);
		float *yv[2];
		for (int i = 0; i < 2; i++) {
			yv[i] = (float *)malloc(N * 4);
			double *ref = (double *)malloc(N * 8), *a = (double *)malloc(N * 8);
			CU(cudaMemcpy(yv[i], d_y[i], N * 4, cudaMemcpyDeviceToHost));
			host_gemv(tw_ref(&t[i], mode), xn, N, K, ref, a);
			double e = worst(yv[i], ref, a, N), tol = mode == LQ_GEMV_F16 ? 1e-3 : 3e-3;
			CHECK(rc == 0 && e <= tol, "fused pre part %d q=%d mode=%d K=%llu plus1=%d: err %g", i, qtype, mode,
			      (unsigned long long)K, plus1, e);
			free(ref); free(a);
		}
		/* with the gated activation: x_out again, act(gate) * up */
		CU(cudaMemset(d_xo, 0xff, K * 4));
		CU(cudaMemset(d_a, 0xff, N * 4));
		f.act_out = d_a;
		rc = lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0);
		CU(cudaDeviceSynchronize());
		CU(cudaMemcpy(got, d_xo, K * 4, cudaMemcpyDeviceToHost));
		int same = 1;
		for (uint64_t k = 0; k < K; k++)
			same &= fabs((double)got[k] - xp[k]) <= 1e-6 * xmax;
		float *ya = (float *)malloc(N * 4);
		CU(cudaMemcpy(ya, d_a, N * 4, cudaMemcpyDeviceToHost));
		double mean = 0, we = 0;
		for (uint64_t r = 0; r < N; r++)
			mean += fabs(host_act(LQ_ACT_SILU, yv[0][r]) * yv[1][r]) / (double)N;
		for (uint64_t r = 0; r < N; r++) {
			float v = host_act(LQ_ACT_SILU, yv[0][r]) * yv[1][r];
			v = mode == LQ_GEMV_F16 ? __half2float(__float2half(v)) : bf2f(f2bf(v));
			double e = fabs((double)ya[r] - v) / (fabs(v) / 128.0 + 1e-3 * mean);
			if (!(e <= we))
				we = e;
		}
		CHECK(rc == 0 && same && we <= 1.0, "fused pre + act q=%d mode=%d K=%llu plus1=%d: rc %d, x_out %s, err %g",
		      qtype, mode, (unsigned long long)K, plus1, rc, same ? "equal" : "differs", we);
		free(ya); free(yv[0]); free(yv[1]);
	}
	/* refused: no norm, x_out on x or on pre_add, misaligned pre_w, no x_out */
	struct lq_gemv_fuse f = {NULL, eps, 1, 0, NULL, 0, d_o, d_pw, d_xo};
	int bad = lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue;
	f.norm_w = d_nw;
	f.x_out = d_x;
	bad &= lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue;
	f.x_out = d_o;
	bad &= lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue;
	f.x_out = d_xo;
	f.pre_w = d_pw + 1;
	bad &= lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue;
	f.pre_w = d_pw;
	f.x_out = NULL;
	bad &= lq_cuda_gemv_fused(ws, d_y, 2, K, d_x, mode, &f, 0) == (int)cudaErrorInvalidValue;
	CHECK(bad, "fused pre refuses a missing norm, x_out on an input, misaligned pre_w, no x_out");
	for (int i = 0; i < 2; i++) {
		cudaFree(d_y[i]);
		tw_free(&t[i]);
	}
	cudaFree(d_x); cudaFree(d_o); cudaFree(d_pw); cudaFree(d_nw); cudaFree(d_xo); cudaFree(d_a);
	free(x); free(o); free(pw); free(nw); free(xp); free(xn); free(got);
}

int main(void)
{
	if (lq_cuda_device_count() == 0) {
		printf("skipping: no CUDA device\n0 passed, 0 failed\n");
		return 0;
	}
	const uint64_t shapes[][2] = {{1, 256}, {7, 768}, {33, 4096}, {1000, 512}, {4099, 256}, {3, 14336},
				      {50, 128}, {5, 192}, {300, 2304}, {19, 16384},
				      {200, 4096}}; /* 4-bit at a grid of 2: 8 warps along K here, 4 on 300 x 2304, 16 on 33 x 4096 */
	const int rows_opts[] = {0, 1, 2, 4, 8};
	for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_INT8; q++)
		for (int dq = 0; dq <= 1; dq++)
			for (int bs = 64; bs <= 256; bs *= 2)
				for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
					uint64_t N = shapes[si][0], K = shapes[si][1], n = N * K;
					if (K % (uint64_t)bs)
						continue;
					unsigned seed = (unsigned)(n * 3 + q * 7 + dq + bs);
					struct tw t;
					tw_make(&t, q, bs, dq, N, K, seed);
					const float *wd = t.wd;
					seed = seed * 2654435761u + 1u; /* the activations: another stream */
					float *xf = (float *)malloc(K * 4), *xb = (float *)malloc(K * 4), *x16 = (float *)malloc(K * 4);
					uint16_t *xh = (uint16_t *)malloc(K * 2);
					for (uint64_t k = 0; k < K; k++) {
						xf[k] = frand(&seed) * 10;
						xh[k] = f2bf(xf[k]);
						xb[k] = bf2f(xh[k]);
						x16[k] = __half2float(__float2half(xf[k]));
					}
					double *rf = (double *)malloc(N * 8), *af = (double *)malloc(N * 8);
					double *rb = (double *)malloc(N * 8), *ab = (double *)malloc(N * 8);
					double *rh = (double *)malloc(N * 8), *ah = (double *)malloc(N * 8);
					for (uint64_t r = 0; r < N; r++) {
						double s1 = 0, a1 = 0, s2 = 0, a2 = 0, s3 = 0, a3 = 0;
						for (uint64_t k = 0; k < K; k++) {
							double wv = wd[r * K + k];
							s1 += wv * xf[k]; a1 += fabs(wv * xf[k]);
							s2 += wv * xb[k]; a2 += fabs(wv * xb[k]);
							s3 += wv * x16[k]; a3 += fabs(wv * x16[k]);
						}
						rf[r] = s1; af[r] = a1; rb[r] = s2; ab[r] = a2; rh[r] = s3; ah[r] = a3;
					}
					void *d_xf, *d_xh, *d_xb, *d_x16;
					float *d_y;
					CU(cudaMalloc(&d_xf, K * 4)); CU(cudaMalloc(&d_xh, K * 2)); CU(cudaMalloc(&d_y, N * 4));
					CU(cudaMemcpy(d_xf, xf, K * 4, cudaMemcpyHostToDevice));
					CU(cudaMemcpy(d_xh, xh, K * 2, cudaMemcpyHostToDevice));
					CU(cudaMalloc(&d_xb, K * 4)); CU(cudaMalloc(&d_x16, K * 4));
					CU(cudaMemcpy(d_xb, xb, K * 4, cudaMemcpyHostToDevice));
					CU(cudaMemcpy(d_x16, x16, K * 4, cudaMemcpyHostToDevice));
					struct lq_cuda_qweight qw = t.q;
					float *y = (float *)malloc(N * 4);
					double tol = q == LQ_QTYPE_INT8 ? 1e-5 : 3e-3;
					/* the naive reference kernel */
					CU(cudaMemset(d_y, 0xff, N * 4));
					CHECK(lq_cuda_gemv_f32(&qw, N, K, (const float *)d_xf, d_y, 0) == 0, "naive launch");
					CU(cudaMemcpy(y, d_y, N * 4, cudaMemcpyDeviceToHost));
					double e0 = worst(y, rf, af, N);
					CHECK(e0 <= 1e-5, "naive q=%d dq=%d bs=%d %llux%llu: err %g", q, dq, bs,
					      (unsigned long long)N, (unsigned long long)K, e0);
					for (int xt = 0; xt < 2; xt++)
						for (size_t ri = 0; ri < sizeof rows_opts / sizeof rows_opts[0]; ri++) {
							CU(cudaMemset(d_y, 0xff, N * 4)); /* NaN: every row must be written */
							int rc = lq_cuda_gemv_ex(&qw, N, K, xt ? d_xh : d_xf, xt ? LQ_DTYPE_BF16 : LQ_DTYPE_F32,
										 d_y, 0, rows_opts[ri], 0, 0);
							CU(cudaDeviceSynchronize());
							CU(cudaMemcpy(y, d_y, N * 4, cudaMemcpyDeviceToHost));
							double e = xt ? worst(y, rb, ab, N) : worst(y, rf, af, N);
							CHECK(rc == 0 && e <= tol, "gemv q=%d dq=%d bs=%d %llux%llu x=%s rows=%d: rc %d err %g (tol %g)",
							      q, dq, bs, (unsigned long long)N, (unsigned long long)K, xt ? "bf16" : "f32",
							      rows_opts[ri], rc, e, tol);
						}
					/* forced split-K on the bf16 path */
					CU(cudaMemset(d_y, 0xff, N * 4));
					CHECK(lq_cuda_gemv_ex(&qw, N, K, d_xh, LQ_DTYPE_BF16, d_y, 0, 4, 2, 0) == 0, "small grid launch");
					CU(cudaMemcpy(y, d_y, N * 4, cudaMemcpyDeviceToHost));
					double e2 = worst(y, rb, ab, N);
					CHECK(e2 <= tol, "gemv grid_max=2 q=%d dq=%d bs=%d %llux%llu: err %g", q, dq, bs,
					      (unsigned long long)N, (unsigned long long)K, e2);
					/* rows of 8, K not split, a grid of 2 looping over the row
					 * groups: on long rows (INT8 K >= 8192, 4-bit K >= 16384)
					 * the double-buffered kernel (GEMV_DB_MIN) */
					for (int xt = 0; xt < 2; xt++) {
						CU(cudaMemset(d_y, 0xff, N * 4));
						int rc = lq_cuda_gemv_ex(&qw, N, K, xt ? d_xh : d_xf, xt ? LQ_DTYPE_BF16 : LQ_DTYPE_F32, d_y, 0,
									 8, 2, 1);
						CU(cudaDeviceSynchronize());
						CU(cudaMemcpy(y, d_y, N * 4, cudaMemcpyDeviceToHost));
						double e = xt ? worst(y, rb, ab, N) : worst(y, rf, af, N);
						CHECK(rc == 0 && e <= tol, "gemv rows=8 grid_max=2 unsplit q=%d dq=%d bs=%d %llux%llu x=%s: rc %d err %g",
						      q, dq, bs, (unsigned long long)N, (unsigned long long)K, xt ? "bf16" : "f32", rc, e);
					}
					/* float32 arrays of bf16 / fp16 values, grid of 2: the tensor-core
					 * path on the tiled weight, the CUDA-core one on the row-major one */
					for (int lay = 0; lay <= t.tiled; lay++)
						for (int mode = LQ_GEMV_BF16; mode <= LQ_GEMV_F16; mode++)
							for (int gm = 0; gm <= 2; gm += 2) {
								const struct lq_cuda_qweight *wl[1] = {lay ? &t.tq : &qw};
								CU(cudaMemset(d_y, 0xff, N * 4));
								int rc = gm ? lq_cuda_gemv_ex(wl[0], N, K, d_xh, LQ_DTYPE_BF16, d_y, 0, 0, gm, 0)
									    : lq_cuda_gemv_multi(wl, &d_y, 1, K, mode == LQ_GEMV_BF16 ? d_xb : d_x16,
												 LQ_DTYPE_F32, mode, 0);
								CU(cudaDeviceSynchronize());
								CU(cudaMemcpy(y, d_y, N * 4, cudaMemcpyDeviceToHost));
								int h = mode == LQ_GEMV_F16 && !gm;
								double e3 = h ? worst(y, rh, ah, N) : worst(y, rb, ab, N);
								double t3 = q == LQ_QTYPE_INT8 ? tol : h && lay ? 1e-3 : 3e-3;
								CHECK(rc == 0 && e3 <= t3, "gemv layout=%d mode=%d grid_max=%d q=%d dq=%d bs=%d %llux%llu: rc %d err %g (tol %g)",
								      lay, mode, gm, q, dq, bs, (unsigned long long)N, (unsigned long long)K, rc, e3, t3);
							}
					if (t.tiled) { /* what a tiled weight refuses */
						const struct lq_cuda_qweight *wl[1] = {&t.tq};
						CHECK(lq_cuda_gemv_multi(wl, &d_y, 1, K, d_xf, LQ_DTYPE_F32, LQ_GEMV_F32, 0) ==
							      (int)cudaErrorInvalidValue &&
							      lq_cuda_gemv_multi(wl, &d_y, 1, K, d_xf, LQ_DTYPE_F32, LQ_GEMV_EXACT, 0) ==
								      (int)cudaErrorInvalidValue &&
							      lq_cuda_gemv_ex(&t.tq, N, K, d_xh, LQ_DTYPE_BF16, d_y, 0, 2, 0, 0) ==
								      (int)cudaErrorInvalidValue &&
							      lq_cuda_gemv_f32(&t.tq, N, K, (const float *)d_xf, d_y, 0) ==
								      (int)cudaErrorInvalidValue &&
							      lq_cuda_dequant_f32(&t.tq, d_y, 0) == (int)cudaErrorInvalidValue,
						      "tiled weight refuses f32 modes, rows, the naive kernels");
						const struct lq_cuda_qweight *mixed[2] = {&t.tq, &qw};
						float *ys2[2] = {d_y, d_y};
						CHECK(lq_cuda_gemv_multi(mixed, ys2, 2, K, d_xb, LQ_DTYPE_F32, LQ_GEMV_BF16, 0) ==
							      (int)cudaErrorInvalidValue,
						      "mixed layouts refused");
					}
					cudaFree(d_xf); cudaFree(d_xh); cudaFree(d_y); cudaFree(d_xb); cudaFree(d_x16);
					tw_free(&t);
					free(xf); free(xb); free(xh); free(x16); free(rf); free(af); free(rb); free(ab); free(rh); free(ah);
					free(y);
				}
	for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_INT8; q++)
		for (int mode = LQ_GEMV_F32; mode <= LQ_GEMV_F16; mode++) {
			test_multi(q, 1, mode, 512, 1000);
			test_multi(q, 0, mode, 4096, 1000);
			/* several work items per block, across the parts and a partial tile */
			if (q != LQ_QTYPE_INT8 && mode >= LQ_GEMV_BF16)
				test_multi(q, 1, mode, 512, 40001);
			/* a K whose shared-memory staging no longer fits below the table */
			if (q == LQ_QTYPE_NF4 && mode == LQ_GEMV_BF16)
				test_multi(q, 1, mode, 32768, 100);
		}
	/* unquantized bf16 / fp16 weights (LQ_CUDA_DENSE_*): the tensor-core
	 * kernel in their own mode; one part of several work items per block */
	for (int mode = LQ_GEMV_BF16; mode <= LQ_GEMV_F16; mode++) {
		test_multi(LQ_QTYPE_NONE, 0, mode, 512, 1000);
		test_multi(LQ_QTYPE_NONE, 0, mode, 4096, 40001);
		test_multi(LQ_QTYPE_NONE, 0, mode, 14336, 300);
	}
	{
		/* bf16 x; what 16-bit weights refuse: the other mode, the fp32
		 * modes, the CUDA-core knobs, a K not a multiple of 32 */
		const uint64_t N = 77, K = 2304;
		struct tw t;
		tw_make(&t, LQ_QTYPE_NONE, 0, 0, N, K, 4711u);
		unsigned seed = 5u;
		uint16_t *xh = (uint16_t *)malloc(K * 2);
		float *xb = (float *)malloc(K * 4), *y = (float *)malloc(N * 4);
		double *ref = (double *)malloc(N * 8), *a = (double *)malloc(N * 8);
		for (uint64_t k = 0; k < K; k++) {
			xh[k] = f2bf(frand(&seed) * 10);
			xb[k] = bf2f(xh[k]);
		}
		void *d_xh, *d_xb;
		float *d_y;
		CU(cudaMalloc(&d_xh, K * 2)); CU(cudaMalloc(&d_xb, K * 4)); CU(cudaMalloc(&d_y, N * 4));
		CU(cudaMemcpy(d_xh, xh, K * 2, cudaMemcpyHostToDevice));
		CU(cudaMemcpy(d_xb, xb, K * 4, cudaMemcpyHostToDevice));
		CU(cudaMemset(d_y, 0xff, N * 4));
		int rc = lq_cuda_gemv(&t.q, N, K, d_xh, LQ_DTYPE_BF16, d_y, 0);
		CU(cudaDeviceSynchronize());
		CU(cudaMemcpy(y, d_y, N * 4, cudaMemcpyDeviceToHost));
		host_gemv(t.wd, xb, N, K, ref, a);
		double e = worst(y, ref, a, N);
		CHECK(rc == 0 && e <= 1e-5, "16-bit weights, bf16 x: rc %d err %g", rc, e);
		const struct lq_cuda_qweight *wb[1] = {&t.q}, *wh[1] = {&t.tq};
		struct lq_cuda_qweight odd = t.q;
		odd.n = N * (K - 16);
		CHECK(lq_cuda_gemv_multi(wb, &d_y, 1, K, d_xb, LQ_DTYPE_F32, LQ_GEMV_F16, 0) == (int)cudaErrorInvalidValue &&
			      lq_cuda_gemv_multi(wh, &d_y, 1, K, d_xb, LQ_DTYPE_F32, LQ_GEMV_BF16, 0) == (int)cudaErrorInvalidValue &&
			      lq_cuda_gemv_multi(wb, &d_y, 1, K, d_xb, LQ_DTYPE_F32, LQ_GEMV_F32, 0) == (int)cudaErrorInvalidValue &&
			      lq_cuda_gemv_multi(wb, &d_y, 1, K, d_xb, LQ_DTYPE_F32, LQ_GEMV_EXACT, 0) == (int)cudaErrorInvalidValue &&
			      lq_cuda_gemv_ex(&t.q, N, K, d_xh, LQ_DTYPE_BF16, d_y, 0, 2, 0, 0) == (int)cudaErrorInvalidValue &&
			      lq_cuda_gemv(&odd, N, K - 16, d_xh, LQ_DTYPE_BF16, d_y, 0) == (int)cudaErrorInvalidValue &&
			      lq_cuda_gemv_tc(&t.q, K, LQ_GEMV_BF16) && !lq_cuda_gemv_tc(&t.q, K, LQ_GEMV_F16) &&
			      lq_cuda_gemv_tc(&t.tq, K, LQ_GEMV_F16) && !lq_cuda_gemv_tc(&t.q, K, LQ_GEMV_F32) &&
			      !lq_cuda_gemv_tc(&odd, K - 16, LQ_GEMV_BF16),
		      "16-bit weights refuse the other mode, fp32 modes, knobs, K %% 32");
		cudaFree(d_xh); cudaFree(d_xb); cudaFree(d_y);
		free(xh); free(xb); free(y); free(ref); free(a);
		tw_free(&t);
	}
	/* the fused launches: 4-bit in the tile layout, INT8 as stored, and
	 * unquantized 16-bit weights (LQ_QTYPE_NONE, before NF4) */
	for (int q = LQ_QTYPE_NONE; q <= LQ_QTYPE_INT8; q++)
		for (int mode = LQ_GEMV_BF16; mode <= LQ_GEMV_F16; mode++) {
			test_fused(q, mode, 512);
			test_fused(q, mode, 4096);
			test_fused(q, mode, 12288); /* x too long to hold across the norm's barrier */
			test_fused_act(q, mode, 4096, 300, LQ_ACT_SILU);
			test_fused_act(q, mode, 256, 1000, LQ_ACT_GELU_TANH);
			test_fused_act(q, mode, 512, 20001, LQ_ACT_SILU); /* several pairs of tiles per block */
			test_fused_pre(q, mode, 2304); /* Gemma-2-2B's hidden size, held in registers */
			test_fused_pre(q, mode, 4096); /* the most held */
			test_fused_pre(q, mode, 4608); /* Gemma-2-27B's: read again for each pass */
		}
	/* errors: K not a multiple of the block size, bad dtype, misaligned x */
	{
		struct lq_qparams p = {LQ_QTYPE_NF4, 64, 0};
		uint8_t *d_data; float *d_s, *d_x, *d_y;
		CU(cudaMalloc(&d_data, 256)); CU(cudaMalloc(&d_s, 64)); CU(cudaMalloc(&d_x, 1024)); CU(cudaMalloc(&d_y, 64));
		struct lq_cuda_qweight qw = {p, d_data, d_s, NULL, 0, 2 * 96};
		CHECK(lq_cuda_gemv(&qw, 2, 96, d_x, LQ_DTYPE_F32, d_y, 0) == (int)cudaErrorInvalidValue, "K %% bs rejected");
		qw.n = 2 * 128;
		CHECK(lq_cuda_gemv(&qw, 2, 128, d_x, LQ_DTYPE_F16, d_y, 0) == (int)cudaErrorInvalidValue, "f16 x rejected");
		CHECK(lq_cuda_gemv(&qw, 2, 128, d_x + 1, LQ_DTYPE_F32, d_y, 0) == (int)cudaErrorInvalidValue, "misaligned x rejected");
		CHECK(lq_cuda_gemv(&qw, 3, 128, d_x, LQ_DTYPE_F32, d_y, 0) == (int)cudaErrorInvalidValue, "N*K != n rejected");
		CHECK(lq_cuda_gemv(&qw, 2, 128, d_x, LQ_DTYPE_F32, d_y, 0) == 0, "valid call accepted");
		CU(cudaDeviceSynchronize());
		cudaFree(d_data); cudaFree(d_s); cudaFree(d_x); cudaFree(d_y);
	}
	printf("%d passed, %d failed\n", pass, fail);
	return fail != 0;
}
