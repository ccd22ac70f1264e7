/*
 * bench_quant.c - throughput of the quantization kernels (not a test).
 *
 *   bench_quant [n_elements] [reps]
 *
 * Prints one line per kernel: million elements per second and the matching
 * GB/s of bf16 input (2 bytes per element), best of reps runs.
 */
#include "libquant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void report(const char *what, uint64_t n, double sec)
{
	printf("%-44s %8.1f Melem/s  %6.2f GB/s bf16-in\n", what, (double)n / sec * 1e-6,
	       (double)n * 2 / sec * 1e-9);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : (uint64_t)16 << 20;
	int reps = argc > 2 ? atoi(argv[2]) : 3;
	if (n == 0 || reps < 1) {
		fprintf(stderr, "usage: bench_quant [n_elements] [reps]\n");
		return 2;
	}
	float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
	uint16_t *h = malloc(n * sizeof *h);
	uint8_t *data = malloc(n), *codes = malloc(n / 32 + 1);
	float *scales = malloc((n / 32 + 1) * sizeof(float)), *work = malloc((n / 32 + 1) * sizeof(float));
	float *nested = malloc((n / 32 / 256 + 2) * sizeof(float));
	if (!x || !y || !h || !data || !codes || !scales || !work || !nested) {
		fprintf(stderr, "bench_quant: out of memory\n");
		return 1;
	}
	uint64_t s = 88172645463325252u;
	for (uint64_t i = 0; i < n; i++) {
		s ^= s << 13, s ^= s >> 7, s ^= s << 17;
		double u = (double)(s >> 11) * 0x1p-53;
		x[i] = (float)((u - 0.5) * 0.04 * (1 + (double)(i % 7)));
		h[i] = lq_f32_to_bf16(x[i]);
		x[i] = lq_bf16_to_f32(h[i]);
	}
	printf("n = %llu elements, best of %d\n", (unsigned long long)n, reps);

	static const int qtypes[3] = {LQ_QTYPE_NF4, LQ_QTYPE_FP4, LQ_QTYPE_INT8};
	char what[128];
	for (int qi = 0; qi < 3; qi++) {
		for (int dq = 0; dq < 2; dq++) {
			struct lq_qparams p = {qtypes[qi], 64, dq};
			struct lq_qbuf b = {data, dq ? (void *)codes : (void *)scales, nested, 0};
			for (int th = 1; th <= 2; th++) {
				double best = 1e30;
				for (int r = 0; r < reps; r++) {
					double t0 = now();
					lq_quantize(&p, x, n, &b, work, th);
					double t = now() - t0;
					best = t < best ? t : best;
				}
				snprintf(what, sizeof what, "quantize %s bs64 dq%d f32 threads %d",
					 lq_qtype_name(p.qtype), dq, th);
				report(what, n, best);
			}
			if (qi == 0) {
				for (int th = 1; th <= 2; th++) {
					double best = 1e30;
					for (int r = 0; r < reps; r++) {
						double t0 = now();
						lq_quantize_src(&p, h, LQ_DTYPE_BF16, n, &b, work, th);
						double t = now() - t0;
						best = t < best ? t : best;
					}
					snprintf(what, sizeof what, "quantize_src nf4 dq%d bf16 threads %d", dq, th);
					report(what, n, best);
				}
				/* bf16 source converted by lq_to_f32 first (one thread) */
				double best = 1e30;
				for (int r = 0; r < reps; r++) {
					double t0 = now();
					lq_to_f32(y, h, LQ_DTYPE_BF16, n);
					lq_quantize(&p, y, n, &b, work, 1);
					double t = now() - t0;
					best = t < best ? t : best;
				}
				snprintf(what, sizeof what, "to_f32 + quantize nf4 dq%d bf16 threads 1", dq);
				report(what, n, best);
				best = 1e30;
				for (int r = 0; r < reps && n <= (1u << 26); r++) {
					double t0 = now();
					lq_quantize_ref(&p, x, n, &b, work);
					double t = now() - t0;
					best = t < best ? t : best;
				}
				snprintf(what, sizeof what, "quantize_ref nf4 dq%d f32", dq);
				report(what, n, best);
			}
			for (int th = 1; th <= 2; th++) {
				double best = 1e30;
				for (int r = 0; r < reps; r++) {
					double t0 = now();
					lq_dequantize(&p, &b, n, y, th);
					double t = now() - t0;
					best = t < best ? t : best;
				}
				snprintf(what, sizeof what, "dequantize %s bs64 dq%d threads %d",
					 lq_qtype_name(p.qtype), dq, th);
				report(what, n, best);
			}
		}
	}
	/* double quant of n/64 scales alone */
	{
		uint64_t nb = n / 64;
		for (uint64_t b = 0; b < nb; b++)
			work[b] = 0.01f + fabsf(x[b * 64]);
		double best = 1e30;
		float off;
		for (int r = 0; r < reps; r++) {
			double t0 = now();
			lq_qscales_compress(work, nb, codes, nested, &off);
			double t = now() - t0;
			best = t < best ? t : best;
		}
		printf("%-44s %8.1f Mscales/s\n", "qscales_compress (double quant of scales)",
		       (double)nb / best * 1e-6);
	}
	double best = 1e30;
	for (int r = 0; r < reps; r++) {
		double t0 = now();
		lq_to_f32(y, h, LQ_DTYPE_BF16, n);
		double t = now() - t0;
		best = t < best ? t : best;
	}
	report("lq_to_f32 bf16 (reference point)", n, best);
	best = 1e30;
	for (int r = 0; r < reps; r++) {
		double t0 = now();
		volatile int64_t bad = lq_find_nonfinite(h, LQ_DTYPE_BF16, n);
		(void)bad;
		double t = now() - t0;
		best = t < best ? t : best;
	}
	report("lq_find_nonfinite bf16 (reference point)", n, best);
	free(x);
	free(y);
	free(h);
	free(data);
	free(codes);
	free(scales);
	free(work);
	free(nested);
	return 0;
}
