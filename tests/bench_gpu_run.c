/*
 * bench_gpu_run.c - steady-state speed of the GPU runtime on an LQ file
 * (tests/run-bench-gpu runs it on the 8B-shaped benchmark model; without a
 * GPU it says so and exits 0).
 *
 *   bench_gpu_run FILE.lq [--compute bf16|fp16|fp32] [--prompt N] [--new N] [--prefill N]
 *
 * Prints: load time (weights uploaded, kernels ready); decode: N new tokens
 * after an N-token prompt, greedy, best of 3, four ways: each step = forward
 * of one token + copy of the logits + argmax on the CPU, and
 * lq_run_forward_argmax (the argmax on the device, the host waiting for
 * each step), and lq_run_forward_sample with
 * transformers' default sampling (temperature 1, top-k 50: the top-k on the
 * device, what `run` does when it samples), and lq_run_forward_argmax_n
 * with BENCH_CHAIN steps per call (the steps chained on the device, what
 * `run` does for greedy decoding), and lq_run_forward_sample_n with the
 * same sampling, BENCH_CHAIN steps per call (what `run` does when it
 * samples without a repetition penalty); prefill: N tokens with the logits of the
 * last, best of 3 after a warm-up; the first token: the prompt and the pick
 * from its last logits (lq_run_forward_argmax, and lq_run_forward_sample
 * with top-k off and top-p 0.9, whose pick is over the whole row), best of 3;
 * cold: lq_run_create's time and the first token of the first prompt right
 * after it (what `run` pays once per process), before any warm-up.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_CHAIN 16 /* steps per lq_run_forward_argmax_n / _sample_n call, as run takes them */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The greedy pick, as run makes it: lq_sample at temperature 0. */
static int32_t greedy_pick(float *v, int64_t n)
{
	struct lq_sample_opts so;
	lq_sample_opts_init(&so);
	so.temperature = 0;
	return lq_sample(v, n, &so, NULL, 0, NULL);
}

int main(int argc, char **argv)
{
	if (lq_gpu_count() == 0) {
		printf("bench_gpu_run: no CUDA device, skipped\n");
		return 0;
	}
	if (argc < 2) {
		fprintf(stderr, "usage: bench_gpu_run FILE.lq [--compute T] [--prompt N] [--new N] [--prefill N]\n");
		return 2;
	}
	int compute = -1, np = 32, nnew = 128, npre = 512;
	for (int i = 2; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--compute"))
			compute = lq_compute_parse(argv[i + 1]);
		else if (!strcmp(argv[i], "--prompt"))
			np = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--new"))
			nnew = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--prefill"))
			npre = atoi(argv[i + 1]);
	}
	if (np < 1 || nnew < 1 || npre < 1) {
		fprintf(stderr, "bench_gpu_run: bad sizes\n");
		return 2;
	}
	struct lq_error e = {0};
	struct lq_file *f = NULL;
	struct lq_model *m = NULL;
	struct lq_run *r = NULL;
	double t0 = now();
	if (lq_file_open(&f, argv[1], &e) || lq_model_from_lq(&m, f, &e)) {
		fprintf(stderr, "bench_gpu_run: %s\n", e.msg);
		return 1;
	}
	struct lq_run_opts o;
	lq_run_opts_init(&o);
	o.backend = LQ_BACKEND_CUDA;
	o.compute = compute;
	o.max_ctx = (np + nnew > npre ? np + nnew : npre) + 16;
	if (lq_run_create(&r, m, f, &o, &e)) {
		fprintf(stderr, "bench_gpu_run: %s\n", e.msg);
		return 1;
	}
	int64_t V = lq_run_vocab(r);
	float *lg = malloc((size_t)V * sizeof(float));
	int n = npre > np ? npre : np;
	int32_t *ids = malloc((size_t)(n + nnew) * sizeof(int32_t));
	if (!lg || !ids)
		return 1;
	uint32_t s = 12345;
	for (int i = 0; i < n; i++) {
		s = s * 1103515245u + 12345u;
		ids[i] = (int32_t)((s >> 8) % (uint32_t)V);
	}
	/* cold: the first token of the first prompt, as run's first one */
	double ready = now() - t0;
	int32_t ctok;
	if (lq_run_forward_argmax(r, ids, (size_t)np, 0, &ctok, &e)) {
		fprintf(stderr, "bench_gpu_run: %s\n", e.msg);
		return 1;
	}
	double cold = now() - t0 - ready;
	/* warm-up: every kernel and cuBLAS path once */
	if (lq_run_forward(r, ids, (size_t)npre, 0, lg, 0, &e) || lq_run_forward(r, ids, 2, 0, lg, 0, &e) ||
	    lq_run_forward(r, ids + 2, 1, 2, lg, 0, &e)) {
		fprintf(stderr, "bench_gpu_run: %s\n", e.msg);
		return 1;
	}
	double load = now() - t0;
	double best_dec = 1e30, best_pre = 1e30, best_am = 1e30, best_s = 1e30, best_ch = 1e30, best_sc = 1e30;
	double best_fa = 1e30, best_fs = 1e30;
	int32_t chain[BENCH_CHAIN];
	struct lq_sample_opts so;
	lq_sample_opts_init(&so);
	struct lq_sample_opts so0 = so; /* top-k off, top-p 0.9 */
	so0.top_k = 0;
	so0.top_p = 0.9;
	struct lq_rng rng;
	lq_rng_seed(&rng, 1);
	for (int rep = 0; rep < 3; rep++) {
		if (lq_run_forward(r, ids, (size_t)np, 0, lg, 0, &e))
			break;
		double t1 = now();
		int32_t tok = greedy_pick(lg, V);
		for (int k = 0; k < nnew; k++) {
			if (lq_run_forward(r, &tok, 1, np + k, lg, 0, &e))
				break;
			tok = greedy_pick(lg, V);
		}
		double d = now() - t1;
		best_dec = d < best_dec ? d : best_dec;
		/* greedy as run does it: the argmax on the device */
		if (lq_run_forward_argmax(r, ids, (size_t)np, 0, &tok, &e))
			break;
		t1 = now();
		for (int k = 0; k < nnew; k++)
			if (lq_run_forward_argmax(r, &tok, 1, np + k, &tok, &e))
				break;
		d = now() - t1;
		best_am = d < best_am ? d : best_am;
		/* the same steps BENCH_CHAIN at a time, chained on the device (run's greedy decoding) */
		if (lq_run_forward_argmax(r, ids, (size_t)np, 0, &tok, &e))
			break;
		t1 = now();
		for (int k = 0; k < nnew; k += BENCH_CHAIN) {
			const int c = nnew - k < BENCH_CHAIN ? nnew - k : BENCH_CHAIN;
			if (lq_run_forward_argmax_n(r, tok, np + k, (size_t)c, chain, &e))
				break;
			tok = chain[c - 1];
		}
		d = now() - t1;
		best_ch = d < best_ch ? d : best_ch;
		/* sampling, the top-k on the device */
		if (lq_run_forward_sample(r, ids, (size_t)np, 0, &so, ids, (size_t)np, &rng, &tok, &e))
			break;
		t1 = now();
		for (int k = 0; k < nnew; k++)
			if (lq_run_forward_sample(r, &tok, 1, np + k, &so, NULL, 0, &rng, &tok, &e))
				break;
		d = now() - t1;
		best_s = d < best_s ? d : best_s;
		/* the same sampling BENCH_CHAIN steps at a time, chained on the device */
		if (lq_run_forward_sample(r, ids, (size_t)np, 0, &so, ids, (size_t)np, &rng, &tok, &e))
			break;
		t1 = now();
		for (int k = 0; k < nnew; k += BENCH_CHAIN) {
			const int c = nnew - k < BENCH_CHAIN ? nnew - k : BENCH_CHAIN;
			if (lq_run_forward_sample_n(r, tok, np + k, (size_t)c, &so, NULL, 0, &rng, chain, &e))
				break;
			tok = chain[c - 1];
		}
		d = now() - t1;
		best_sc = d < best_sc ? d : best_sc;
		t1 = now();
		if (lq_run_forward(r, ids, (size_t)npre, 0, lg, 0, &e))
			break;
		d = now() - t1;
		best_pre = d < best_pre ? d : best_pre;
		/* the first token: the prompt, then its pick */
		t1 = now();
		if (lq_run_forward_argmax(r, ids, (size_t)np, 0, &tok, &e))
			break;
		d = now() - t1;
		best_fa = d < best_fa ? d : best_fa;
		t1 = now();
		if (lq_run_forward_sample(r, ids, (size_t)np, 0, &so0, ids, (size_t)np, &rng, &tok, &e))
			break;
		d = now() - t1;
		best_fs = d < best_fs ? d : best_fs;
	}
	if (e.msg[0]) {
		fprintf(stderr, "bench_gpu_run: %s\n", e.msg);
		return 1;
	}
	printf("%s on %s: load + warm-up %.2f s; decode %d new tokens after %d: %.2f ms/token, %.1f tok/s "
	       "(logits to the host), %.2f ms/token, %.1f tok/s (argmax on the device), %.2f ms/token, %.1f tok/s "
	       "(sampling, top-k 50 on the device); prefill %d tokens: %.1f ms, %.0f tok/s; "
	       "%.2f ms/token, %.1f tok/s (argmax on the device, %d steps per wait); "
	       "%.2f ms/token, %.1f tok/s (sampling on the device, %d steps per wait); "
	       "first token after %d: %.2f ms (argmax), %.2f ms (top-k off, top-p 0.9); "
	       "cold: ready after %.2f s, its first token after %d %.1f ms\n",
	       argv[1], lq_run_device(r), load, nnew, np, best_dec * 1e3 / nnew, nnew / best_dec,
	       best_am * 1e3 / nnew, nnew / best_am, best_s * 1e3 / nnew, nnew / best_s, npre, best_pre * 1e3,
	       npre / best_pre, best_ch * 1e3 / nnew, nnew / best_ch, BENCH_CHAIN, best_sc * 1e3 / nnew, nnew / best_sc,
	       BENCH_CHAIN, np, best_fa * 1e3, best_fs * 1e3, ready, np, cold * 1e3);
	free(lg);
	free(ids);
	lq_run_free(r);
	lq_model_free(m);
	lq_file_close(f);
	return 0;
}
