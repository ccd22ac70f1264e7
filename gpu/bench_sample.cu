/*
 * bench_sample.cu - time per call of the device sampler's steps
 * (gpu/sample.cu): lq_cuda_topk (temperature and the top-k filter),
 * lq_cuda_pick (the draw from the kept set) and both, on one row of logits
 * the size of Llama 3's vocabulary, for top-k 1, 50 and 1024, and
 * lq_cuda_sample_all (the whole row's pick by a radix descent: top-k off,
 * with and without top-p, with min-p, and top-k 2000) (make bench-gpu;
 * issue 7).
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * The Makefile's wildcard also compiles this file into libquant_cuda.a, so
 * everything is under LQ_BENCH_MAIN, which only the bench-gpu rule defines.
 *
 * The logits are tests/sample_cases.h's lq_bench_logits (bell-shaped, spread
 * like a model's, those tests/bench_sampler.c times on the host); temperature 0.8,
 * top-p 0.9.  Each timing is a CUDA graph of ITERS calls (what a chained
 * decode step launches), replayed REPS times after one warm-up replay,
 * timed with CUDA events; the best replay counts.
 */
#ifdef LQ_BENCH_MAIN
#include "lq_cuda.h"
#include "../tests/sample_cases.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CU(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "bench_sample: %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(1); } } while (0)
#define ITERS 200
#define REPS 5
#define VOCAB 128256

struct pick_state {
	uint64_t rng[4];
	int stop;
	int32_t id;
};

/* us per call of body (one call's launches on st) in a graph of ITERS
 * calls: the best of REPS replays after a warm-up one */
template <typename F>
static float time_graph(cudaStream_t st, cudaEvent_t e0, cudaEvent_t e1, F body)
{
	cudaGraph_t g;
	cudaGraphExec_t ge;
	CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
	for (int r = 0; r < ITERS; r++)
		body();
	CU(cudaStreamEndCapture(st, &g));
	CU(cudaGraphInstantiate(&ge, g, 0));
	CU(cudaGraphLaunch(ge, st));
	CU(cudaStreamSynchronize(st));
	float best = 1e30f;
	for (int rep = 0; rep < REPS; rep++) {
		CU(cudaEventRecord(e0, st));
		CU(cudaGraphLaunch(ge, st));
		CU(cudaEventRecord(e1, st));
		CU(cudaEventSynchronize(e1));
		float ms;
		CU(cudaEventElapsedTime(&ms, e0, e1));
		best = ms < best ? ms : best;
	}
	CU(cudaGraphExecDestroy(ge));
	CU(cudaGraphDestroy(g));
	return best * 1e3f / ITERS;
}

int main(void)
{
	if (lq_cuda_device_count() == 0) {
		printf("bench_sample: no CUDA device, skipped\n");
		return 0;
	}
	float *l = (float *)malloc(VOCAB * sizeof(float));
	if (!l)
		return 1;
	lq_bench_logits(l, VOCAB);
	float *d_l;
	void *scr, *sa;
	struct lq_cuda_topk_out *d_out;
	struct pick_state *d_pk;
	const size_t sab = lq_cuda_sample_all_scratch_size(VOCAB);
	CU(cudaMalloc(&d_l, VOCAB * sizeof(float)));
	CU(cudaMalloc(&scr, lq_cuda_topk_scratch_size(VOCAB)));
	CU(cudaMemset(scr, 0, lq_cuda_topk_scratch_size(VOCAB)));
	CU(cudaMalloc(&sa, sab));
	CU(cudaMemset(sa, 0, sab));
	CU(cudaMalloc(&d_out, sizeof *d_out));
	CU(cudaMalloc(&d_pk, sizeof *d_pk));
	CU(cudaMemset(d_pk, 0, sizeof *d_pk));
	CU(cudaMemcpy(d_l, l, VOCAB * sizeof(float), cudaMemcpyHostToDevice));
	cudaStream_t st;
	CU(cudaStreamCreate(&st));
	cudaEvent_t e0, e1;
	CU(cudaEventCreate(&e0));
	CU(cudaEventCreate(&e1));
	static const int ks[] = { 1, 50, 1024 };
	static const char *what[] = { "top-k", "pick", "top-k + pick" };
	printf("bench_sample: %d logits, temperature 0.8, top-p 0.9, us per call (graph of %d calls, best of %d)\n", VOCAB,
	       ITERS, REPS);
	for (int ki = 0; ki < 3; ki++) {
		printf("  top-k %4d:", ks[ki]);
		for (int mode = 0; mode < 3; mode++) {
			/* the set the pick draws from */
			CU((cudaError_t)lq_cuda_topk(d_l, VOCAB, 0.8f, ks[ki], scr, d_out, st));
			CU(cudaStreamSynchronize(st));
			const float us = time_graph(st, e0, e1, [&]() {
				if (mode != 1)
					CU((cudaError_t)lq_cuda_topk(d_l, VOCAB, 0.8f, ks[ki], scr, d_out, st));
				if (mode != 0)
					CU((cudaError_t)lq_cuda_pick(d_out, 0.9, 0.0, d_pk->rng, &d_pk->stop, &d_pk->id, st));
			});
			printf("%s %s %.2f", mode ? "," : "", what[mode], us);
		}
		int32_t count = 0;
		CU(cudaMemcpy(&count, &d_out->count, sizeof count, cudaMemcpyDeviceToHost));
		printf(" (%d kept)\n", count);
	}
	/* the whole row's pick (lq_cuda_sample_all) */
	static const struct {
		const char *name;
		int k;
		double p, m;
	} sa_cases[] = { { "top-k off, top-p 0.9", 0, 0.9, 0.0 },
			 { "top-k off, top-p 1", 0, 1.0, 0.0 },
			 { "top-k off, min-p 0.05", 0, 1.0, 0.05 },
			 { "top-k 2000, top-p 0.9", 2000, 0.9, 0.0 } };
	for (const auto &c : sa_cases) {
		const float us = time_graph(st, e0, e1, [&]() {
			CU((cudaError_t)lq_cuda_sample_all(d_l, VOCAB, 0.8f, c.k, c.p, c.m, d_pk->rng, &d_pk->stop, &d_pk->id, sa,
							   st));
		});
		printf("  whole row, %s: %.2f\n", c.name, us);
	}
	cudaFree(d_l);
	cudaFree(scr);
	cudaFree(sa);
	cudaFree(d_out);
	cudaFree(d_pk);
	free(l);
	return 0;
}
#endif
