/*
 * sample_cases.h - the sampling option sets the tests run through
 * lq_run_forward_sample against lq_sample: tests/test_run.c on the CPU
 * runtime, gpu/test_forward.cu on the device's sampler.  One list, so both
 * runtimes are held to the same cases.  Also the row of logits the
 * sampler benchmarks time (tests/bench_sampler.c on the host,
 * gpu/bench_sample.cu on the device), so both time the same data.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#ifndef LQ_SAMPLE_CASES_H
#define LQ_SAMPLE_CASES_H

#include "libquant.h"

#define LQ_SAMPLE_CASES 8

static inline void lq_sample_cases(struct lq_sample_opts os[LQ_SAMPLE_CASES])
{
	for (int i = 0; i < LQ_SAMPLE_CASES; i++)
		lq_sample_opts_init(&os[i]);
	os[0].temperature = 0.8; /* top-k 50 (on the device) */
	os[1].top_k = 0;         /* top-k off (the whole row's pick on the device) */
	os[1].top_p = 0.9;
	os[2].temperature = 0; /* argmax after the penalty */
	os[2].repetition_penalty = 1.3;
	os[3].temperature = 1.2;
	os[3].top_k = 5;
	os[3].min_p = 0.1;
	os[3].repetition_penalty = 0.7;
	os[4].top_k = 1;
	os[5].temperature = 2.0; /* the cap of the device's candidates */
	os[5].top_k = 1024;
	os[5].top_p = 0.95;
	os[6].temperature = 0.9; /* the penalty, then the whole row's pick */
	os[6].top_k = 0;
	os[6].top_p = 0.95;
	os[6].repetition_penalty = 1.2;
	os[7].temperature = 1.5; /* top-k past the device set's cap */
	os[7].top_k = 1500;
	os[7].min_p = 0.02;
}

/* n bell-shaped logits, the same on every call: a sum of four uniforms
 * (a fixed xorshift sequence), standard deviation about 2.5. */
static inline void lq_bench_logits(float *l, int64_t n)
{
	uint64_t s = 88172645463325252ull;
	for (int64_t i = 0; i < n; i++) {
		double a = 0;
		for (int j = 0; j < 4; j++) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			a += (double)(s >> 11) * 0x1.0p-53;
		}
		l[i] = (float)((a - 2.0) * 4.3);
	}
}

#endif
