/*
 * bench_sampler.c - time of one lq_sample call on the host over a row of
 * logits the size of Llama 3's vocabulary (128,256), temperature 0.8,
 * top-p 0.9, for top-k off, 50 and 1024: what `run` spends per token on the
 * CPU, and on the GPU when the row comes back (top-k off) (make bench).
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"
#include "sample_cases.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define VOCAB 128256
#define CALLS 20

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void)
{
	float *l = malloc(VOCAB * sizeof *l), *w = malloc(VOCAB * sizeof *w);
	if (!l || !w)
		return 1;
	lq_bench_logits(l, VOCAB);
	static const int ks[] = { 0, 50, 1024 };
	printf("lq_sample, %d logits, temperature 0.8, top-p 0.9, best of %d calls:", VOCAB, CALLS);
	for (int ki = 0; ki < 3; ki++) {
		struct lq_sample_opts o;
		lq_sample_opts_init(&o);
		o.temperature = 0.8;
		o.top_p = 0.9;
		o.top_k = ks[ki];
		struct lq_rng r;
		lq_rng_seed(&r, 1);
		double best = 1e30;
		for (int it = 0; it < CALLS; it++) {
			memcpy(w, l, VOCAB * sizeof *w);
			double t0 = now();
			if (lq_sample(w, VOCAB, &o, NULL, 0, &r) < 0)
				return 1;
			double d = now() - t0;
			best = d < best ? d : best;
		}
		printf("%s top-k %d %.2f ms", ki ? "," : "", ks[ki], best * 1e3);
	}
	printf("\n");
	free(l);
	free(w);
	return 0;
}
