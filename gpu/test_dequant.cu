/* test_dequant.cu - GPU dequant and GEMV against the CPU reference (make check-gpu). */
#include "lq_cuda.h"

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

int main(void)
{
	if (lq_cuda_device_count() == 0) {
		printf("skipping: no CUDA device\n0 passed, 0 failed\n");
		return 0;
	}
	const uint64_t shapes[][2] = {{64, 256}, {33, 4096}, {1000, 512}, {4096, 4096}};
	for (int q = LQ_QTYPE_NF4; q <= LQ_QTYPE_INT8; q++)
		for (int dq = 0; dq <= 1; dq++)
			for (int bs = 64; bs <= 256; bs *= 4)
				for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
					uint64_t N = shapes[si][0], K = shapes[si][1], n = N * K;
					struct lq_qparams p = {q, bs, dq};
					unsigned seed = (unsigned)(n + q * 7 + dq + bs);
					float *x = (float *)malloc(n * 4), *yref = (float *)malloc(n * 4), *ygpu = (float *)malloc(n * 4);
					for (uint64_t i = 0; i < n; i++)
						x[i] = frand(&seed);
					size_t db = lq_qdata_bytes(q, n), sb = lq_qscale_bytes(&p, n), nb = lq_qnested_bytes(&p, n);
					uint8_t *data = (uint8_t *)malloc(db);
					void *scales = malloc(sb);
					float *nested = (float *)malloc(nb + 4), *work = (float *)malloc(lq_qnblocks(n, bs) * 4);
					struct lq_qbuf qb = {data, scales, nested, 0};
					lq_quantize(&p, x, n, &qb, work, 4);
					lq_dequantize_ref(&p, &qb, n, yref);
					uint8_t *d_data; void *d_scales; float *d_nested = NULL, *d_out, *d_x, *d_y;
					CU(cudaMalloc(&d_data, db)); CU(cudaMalloc(&d_scales, sb)); CU(cudaMalloc(&d_out, n * 4));
					if (nb) { CU(cudaMalloc(&d_nested, nb)); CU(cudaMemcpy(d_nested, nested, nb, cudaMemcpyHostToDevice)); }
					CU(cudaMemcpy(d_data, data, db, cudaMemcpyHostToDevice));
					CU(cudaMemcpy(d_scales, scales, sb, cudaMemcpyHostToDevice));
					struct lq_cuda_qweight w = {p, d_data, d_scales, d_nested, qb.offset, n};
					CHECK(lq_cuda_dequant_f32(&w, d_out, 0) == 0, "dequant launch");
					CU(cudaMemcpy(ygpu, d_out, n * 4, cudaMemcpyDeviceToHost));
					CHECK(memcmp(ygpu, yref, n * 4) == 0, "dequant bit-exact q=%d dq=%d bs=%d %llux%llu", q, dq, bs,
					      (unsigned long long)N, (unsigned long long)K);
					/* GEMV against a double-precision CPU product of the same dequantized W */
					float *v = (float *)malloc(K * 4), *yg = (float *)malloc(N * 4);
					for (uint64_t k = 0; k < K; k++) v[k] = frand(&seed) * 10;
					CU(cudaMalloc(&d_x, K * 4)); CU(cudaMalloc(&d_y, N * 4));
					CU(cudaMemcpy(d_x, v, K * 4, cudaMemcpyHostToDevice));
					CHECK(lq_cuda_gemv_f32(&w, N, K, d_x, d_y, 0) == 0, "gemv launch");
					CU(cudaMemcpy(yg, d_y, N * 4, cudaMemcpyDeviceToHost));
					double maxrel = 0;
					for (uint64_t r = 0; r < N; r++) {
						double s = 0, a = 0;
						for (uint64_t k = 0; k < K; k++) { s += (double)yref[r * K + k] * v[k]; a += fabs((double)yref[r * K + k] * v[k]); }
						double rel = fabs(yg[r] - s) / (a > 0 ? a : 1);
						maxrel = rel > maxrel ? rel : maxrel;
					}
					CHECK(maxrel < 1e-5, "gemv q=%d dq=%d bs=%d %llux%llu: rel err %g", q, dq, bs,
					      (unsigned long long)N, (unsigned long long)K, maxrel);
					cudaFree(d_data); cudaFree(d_scales); cudaFree(d_nested); cudaFree(d_out); cudaFree(d_x); cudaFree(d_y);
					free(x); free(yref); free(ygpu); free(data); free(scales); free(nested); free(work); free(v); free(yg);
				}
	printf("%d passed, %d failed\n", pass, fail);
	return fail != 0;
}
