/*
 * bench_gemv.cu - weight bytes per second of the fast GEMV (gpu/gemv.cu)
 * against a device-to-device cudaMemcpy measured in the same run
 * (make bench-gpu; issue 7, benchmark 1).
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * The Makefile's wildcard also compiles this file into libquant_cuda.a, so
 * everything is under LQ_BENCH_MAIN, which only the bench-gpu rule defines.
 *
 * Counting: GEMV bytes = the weight as stored (packed data + scales +
 * nested), per call.  The copy moves a buffer of the same size; it is
 * reported both as bytes read per second (size / time) and as bytes read +
 * written per second (2 x size / time, how ../shared/docs/perf.md counts its
 * 4.19 TB/s), taking the faster of a graph of cudaMemcpyAsync nodes and a
 * plain 16-byte copy kernel (named in the table); "% of copy" compares the GEMV's bytes read per second with the
 * copy's read + written figure, i.e. with the card's copy bandwidth.  Each
 * case rotates through enough copies of the weight (and of the copy buffers)
 * to touch at least 4 x 60 MB between two uses of one copy, so L2 never holds
 * the data (--l2: one copy, so L2 holds the shapes that fit in it: what the
 * kernel does when memory is not what limits it); each timing is a CUDA
 * graph of ITERS calls replayed REPS times after one warm-up replay, timed
 * with CUDA events; the best replay counts.
 * The weights are random codes generated on the GPU (speed does not depend
 * on the values).
 */
#ifdef LQ_BENCH_MAIN
#include "lq_cuda.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "bench_gemv: %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)
#define ITERS 100
#define REPS 5

__global__ void k_fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
		uint32_t h = (uint32_t)i * 2654435761u ^ seed;
		h ^= h >> 15;
		h *= 2246822519u;
		h ^= h >> 13;
		p[i] = (uint8_t)h;
	}
}

__global__ void k_fillf(float *p, size_t n, float v)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		p[i] = v * (1.0f + (float)(i % 7) * 0.01f);
}

/* A plain SM copy (16-byte loads and stores, grid-stride), the other copy
 * measured: graph memcpy nodes may run on the copy engines. */
__global__ void k_copy(uint4 *__restrict__ d, const uint4 *__restrict__ s, size_t n16)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x)
		d[i] = __ldcs(s + i);
}

struct copyw {
	uint8_t *data;
	void *scales;
	float *nested;
};

static double time_graph(cudaGraphExec_t ge, cudaStream_t st)
{
	cudaEvent_t a, b;
	CU(cudaEventCreate(&a));
	CU(cudaEventCreate(&b));
	CU(cudaGraphLaunch(ge, st)); /* warm-up */
	CU(cudaStreamSynchronize(st));
	double best = 1e30;
	for (int r = 0; r < REPS; r++) {
		CU(cudaEventRecord(a, st));
		CU(cudaGraphLaunch(ge, st));
		CU(cudaEventRecord(b, st));
		CU(cudaEventSynchronize(b));
		float ms;
		CU(cudaEventElapsedTime(&ms, a, b));
		if (ms < best)
			best = ms;
	}
	cudaEventDestroy(a);
	cudaEventDestroy(b);
	return best / 1e3 / ITERS; /* seconds per call */
}

static void free_copies(struct copyw *cw, int copies)
{
	for (int c = 0; c < copies; c++) {
		cudaFree(cw[c].data);
		cudaFree(cw[c].scales);
		cudaFree(cw[c].nested);
	}
	free(cw);
}

int main(int argc, char **argv)
{
	int sweep = 0, once = 0, l2 = 0, x32 = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--sweep"))
			sweep = 1;
		else if (!strcmp(argv[i], "--once")) /* one plain launch per shape and qtype, nothing timed (for a profiler) */
			once = 1;
		else if (!strcmp(argv[i], "--l2")) /* one copy of each weight, so L2 holds the shapes that fit in it */
			l2 = 1;
		else if (!strcmp(argv[i], "--x32")) /* float activations, as the decode step's GEMVs take them */
			x32 = 1;
		else {
			fprintf(stderr, "usage: bench_gemv [--sweep | --once | --l2] [--x32]\n");
			return 2;
		}
	}
	const int xdt = x32 ? LQ_DTYPE_F32 : LQ_DTYPE_BF16;
	const size_t xes = x32 ? 4 : 2;
	if (lq_cuda_device_count() == 0) {
		printf("bench_gemv: no CUDA device, nothing measured\n");
		return 0;
	}
	cudaDeviceProp prop;
	CU(cudaGetDeviceProperties(&prop, 0));
	time_t now = time(NULL);
	char date[64];
	strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
	printf("GEMV batch 1, %s activations, fp32 accumulation, block size 64, double quant; %s, %s\n\n",
	       x32 ? "float" : "bf16", prop.name, date);
	printf("| shape N x K | qtype | weight MB | copies | GEMV us | GEMV TB/s | copy TB/s read | copy TB/s read+written | %% of copy |\n");
	printf("|---|---|---|---|---|---|---|---|---|\n");
	const uint64_t shapes[][2] = {{4096, 4096}, {4096, 14336}, {14336, 4096}, {128256, 4096}};
	const int qtypes[] = {LQ_QTYPE_NF4, LQ_QTYPE_INT8};
	cudaStream_t st;
	CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
	for (int qi = 0; qi < 2; qi++)
		for (int si = 0; si < 4; si++) {
			uint64_t N = shapes[si][0], K = shapes[si][1], n = N * K;
			struct lq_qparams p = {qtypes[qi], 64, 1};
			size_t db = lq_qdata_bytes(p.qtype, n), sb = lq_qscale_bytes(&p, n), nb = lq_qnested_bytes(&p, n);
			size_t bytes = db + sb + nb;
			int copies = (int)((4 * 60e6) / (double)bytes) + 1;
			if (copies < 2)
				copies = 2;
			if (l2)
				copies = 1;
			struct copyw *cw = (struct copyw *)calloc((size_t)copies, sizeof *cw);
			for (int c = 0; c < copies; c++) {
				CU(cudaMalloc(&cw[c].data, db));
				CU(cudaMalloc(&cw[c].scales, sb));
				CU(cudaMalloc(&cw[c].nested, nb));
				k_fill<<<1024, 256, 0, st>>>(cw[c].data, db, 1234u + c);
				k_fill<<<1024, 256, 0, st>>>((uint8_t *)cw[c].scales, sb, 99u + c);
				k_fillf<<<64, 256, 0, st>>>(cw[c].nested, nb / 4, 0.05f);
			}
			/* 4-bit weights in the GPU tile layout, as the runtime holds them */
			int tiled = lq_cuda_tiles_ok(&p, N, K);
			struct lq_cuda_qweight *wq = (struct lq_cuda_qweight *)calloc((size_t)copies, sizeof *wq);
			for (int c = 0; c < copies; c++) {
				struct lq_cuda_qweight w = {p, cw[c].data, cw[c].scales, cw[c].nested, 0.01f, n, LQ_CUDA_ROWS};
				wq[c] = w;
				if (!tiled)
					continue;
				uint64_t tdb, tsb;
				void *td, *ts;
				lq_cuda_tiles_size(&p, N, K, &tdb, &tsb);
				CU(cudaMalloc(&td, tdb));
				CU(cudaMalloc(&ts, tsb));
				int rc = lq_cuda_tile(&w, K, td, ts, &wq[c], st);
				CU(cudaStreamSynchronize(st));
				if (rc || tdb != db || tsb != sb) {
					fprintf(stderr, "bench_gemv: lq_cuda_tile: %s\n", rc ? lq_cuda_strerror(rc) : "size differs");
					return 1;
				}
				cudaFree(cw[c].data);
				cudaFree(cw[c].scales);
				cw[c].data = (uint8_t *)td;
				cw[c].scales = ts;
			}
			void *d_x;
			float *d_y;
			CU(cudaMalloc(&d_x, K * xes));
			CU(cudaMalloc(&d_y, N * 4));
			{
				/* finite activations of magnitude 2^-7 to 2^-1, alternating
				 * signs: bf16 values (the same values as floats at --x32) */
				uint16_t *hx = (uint16_t *)malloc(K * 2);
				float *fx = (float *)malloc(K * 4);
				for (uint64_t k = 0; k < K; k++) {
					hx[k] = (uint16_t)(0x3c00u + (k * 37u) % 0x300u) ^ (k & 1 ? 0x8000u : 0);
					uint32_t b = (uint32_t)hx[k] << 16;
					memcpy(&fx[k], &b, 4);
				}
				CU(cudaMemcpy(d_x, x32 ? (void *)fx : (void *)hx, K * xes, cudaMemcpyHostToDevice));
				free(hx);
				free(fx);
			}
			if (once) {
				const struct lq_cuda_qweight *wp = &wq[0];
				int rc = x32 ? lq_cuda_gemv_multi(&wp, &d_y, 1, K, d_x, xdt, LQ_GEMV_BF16, st)
					     : lq_cuda_gemv_ex(wp, N, K, d_x, xdt, d_y, st, 0, 0, 0);
				CU(cudaStreamSynchronize(st));
				printf("once %llu x %llu qtype %d: rc %d\n", (unsigned long long)N, (unsigned long long)K, p.qtype, rc);
				free_copies(cw, copies);
				free(wq);
				cudaFree(d_x);
				cudaFree(d_y);
				continue;
			}
			int rows_list[] = {0, 2, 4, 8};
			int nvar = sweep && !tiled && !x32 ? 4 : 1; /* rows apply to the CUDA-core kernel */
			double t_gemv[4];
			for (int v = 0; v < nvar; v++) {
				cudaGraph_t g;
				cudaGraphExec_t ge;
				CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
				for (int i = 0; i < ITERS; i++) {
					/* float x: the decode step's entry (bf16 mode: x rounded to bf16 where staged) */
					const struct lq_cuda_qweight *wp = &wq[i % copies];
					int rc = x32 ? lq_cuda_gemv_multi(&wp, &d_y, 1, K, d_x, xdt, LQ_GEMV_BF16, st)
						     : lq_cuda_gemv_ex(wp, N, K, d_x, xdt, d_y, st, rows_list[v], 0, 0);
					if (rc) {
						fprintf(stderr, "bench_gemv: gemv: %s\n", lq_cuda_strerror(rc));
						return 1;
					}
				}
				CU(cudaStreamEndCapture(st, &g));
				CU(cudaGraphInstantiate(&ge, g, 0));
				t_gemv[v] = time_graph(ge, st);
				cudaGraphExecDestroy(ge);
				cudaGraphDestroy(g);
			}
			/* the copy: same size, rotated buffers */
			int ccopies = (int)((4 * 60e6) / (2.0 * (double)bytes)) + 1;
			if (ccopies < 2)
				ccopies = 2;
			uint8_t **src = (uint8_t **)calloc((size_t)ccopies, sizeof *src), **dst = (uint8_t **)calloc((size_t)ccopies, sizeof *dst);
			for (int c = 0; c < ccopies; c++) {
				CU(cudaMalloc(&src[c], bytes));
				CU(cudaMalloc(&dst[c], bytes));
				k_fill<<<1024, 256, 0, st>>>(src[c], bytes, 5u + c);
			}
			double t_copy, t_kcopy;
			for (int m = 0; m < 2; m++) {
				cudaGraph_t g;
				cudaGraphExec_t ge;
				CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
				for (int i = 0; i < ITERS; i++) {
					if (m == 0)
						CU(cudaMemcpyAsync(dst[i % ccopies], src[i % ccopies], bytes, cudaMemcpyDeviceToDevice, st));
					else
						k_copy<<<prop.multiProcessorCount * 8, 512, 0, st>>>((uint4 *)dst[i % ccopies],
							(const uint4 *)src[i % ccopies], bytes / 16);
				}
				CU(cudaStreamEndCapture(st, &g));
				CU(cudaGraphInstantiate(&ge, g, 0));
				*(m ? &t_kcopy : &t_copy) = time_graph(ge, st);
				cudaGraphExecDestroy(ge);
				cudaGraphDestroy(g);
			}
			const char *cm = "memcpy";
			if (t_kcopy < t_copy) {
				t_copy = t_kcopy;
				cm = "kernel";
			}
			double cr = bytes / t_copy / 1e12, crw = 2 * cr;
			const char *qn = p.qtype == LQ_QTYPE_NF4 ? "NF4+DQ" : "INT8+DQ";
			for (int v = 0; v < nvar; v++) {
				double gb = bytes / t_gemv[v] / 1e12;
				char label[48];
				if (sweep)
					snprintf(label, sizeof label, "%s rows=%d", qn, rows_list[v]);
				else
					snprintf(label, sizeof label, "%s", qn);
				printf("| %llu x %llu | %s | %.1f | %d | %.2f | %.2f | %.2f | %.2f (%s) | %.1f%% |\n",
				       (unsigned long long)N, (unsigned long long)K, label, bytes / 1e6, copies,
				       t_gemv[v] * 1e6, gb, cr, crw, cm, 100.0 * gb / crw);
			}
			fflush(stdout);
			for (int c = 0; c < ccopies; c++) {
				cudaFree(src[c]);
				cudaFree(dst[c]);
			}
			free(src);
			free(dst);
			free_copies(cw, copies);
			free(wq);
			cudaFree(d_x);
			cudaFree(d_y);
		}
	return 0;
}
#endif
