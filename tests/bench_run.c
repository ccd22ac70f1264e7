/*
 * bench_run - tokens/s of the CPU runtime on a synthetic Llama checkpoint
 * (made with gen_checkpoint, next to this binary) stored as BF16, INT8 and
 * NF4, with the weight bytes read per second against the machine's
 * measured memory read bandwidth.
 *
 * usage: bench_run [--layers N] [--hidden N] [--intermediate N] [--vocab N]
 *                  [--prompt N] [--decode N] [--threads N] [--only bf16|int8|nf4]
 * (default: a ~0.2B model, 8 layers x 1024, vocab 32000; --hidden 2048
 * --intermediate 5632 --layers 22 gives a ~1.1B TinyLlama-shaped model)
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"

#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct bw_job {
	const float *a;
	size_t n;
	int prefetch;
	double sums[64];
};

/* Sum this task's share of the array; with prefetch, one software prefetch
 * 4 KiB ahead per 64-byte line (as the decode kernels do: without it this
 * VM streams only 60-80% of what it can). */
static void bw_task(void *ctx, int i, int nt)
{
	struct bw_job *j = ctx;
	size_t lo = j->n * (size_t)i / (size_t)nt, hi = j->n * (size_t)(i + 1) / (size_t)nt;
	float acc[16] = {0};
	if (j->prefetch) {
		for (size_t k = lo; k + 16 <= hi; k += 16) {
			__builtin_prefetch(j->a + k + 1024);
			for (int l = 0; l < 16; l++)
				acc[l] += j->a[k + l];
		}
	} else {
		for (size_t k = lo; k + 8 <= hi; k += 8)
			for (int l = 0; l < 8; l++)
				acc[l] += j->a[k + l];
	}
	double s = 0;
	for (int l = 0; l < 16; l++)
		s += acc[l];
	j->sums[i] = s;
}

/* Read bandwidth in GB/s: the pool sums a 512 MiB array, plainly and with
 * prefetches (best of 3 each; the better figure).  *plain: the plain
 * loop's best (this benchmark's figure before 2026-11-30). */
static double read_bandwidth(struct lq_pool *pool, double *plain)
{
	size_t n = (size_t)128 << 20;
	float *a = malloc(n * sizeof(float));
	*plain = 0;
	if (!a)
		return 0;
	for (size_t i = 0; i < n; i++)
		a[i] = (float)(i & 255);
	struct bw_job j = { a, n, 0, {0} };
	double best = 0;
	volatile double sink = 0;
	for (int pf = 0; pf < 2; pf++)
		for (int r = 0; r < 3; r++) {
			j.prefetch = pf;
			double t0 = now();
			lq_pool_run(pool, bw_task, &j, lq_pool_size(pool));
			double dt = now() - t0, gbs = (double)(n * sizeof(float)) / dt / 1e9;
			sink += j.sums[0];
			if (gbs > best)
				best = gbs;
			if (!pf && gbs > *plain)
				*plain = gbs;
		}
	(void)sink;
	free(a);
	return best;
}

static uint64_t weight_bytes(const struct lq_file *f)
{
	uint64_t b = 0;
	for (size_t i = 0; i < lq_file_count(f); i++) {
		const struct lq_tensor *t = lq_file_get(f, i);
		if (strstr(t->name, "embed_tokens"))
			continue; /* one row per token is read, not the table */
		b += t->data_size + t->scale_size + t->nested_size;
	}
	return b;
}

int main(int argc, char **argv)
{
	int layers = 8, hidden = 1024, inter = 2816, vocab = 32000, prompt = 64, decode = 32;
	int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	const char *only = NULL;
	static const struct option lo[] = {
		{"layers", 1, 0, 'l'}, {"hidden", 1, 0, 'H'}, {"intermediate", 1, 0, 'I'},
		{"vocab", 1, 0, 'v'},  {"prompt", 1, 0, 'p'}, {"decode", 1, 0, 'd'},
		{"threads", 1, 0, 'j'}, {"only", 1, 0, 'o'}, {0, 0, 0, 0}};
	int o;
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		int v = atoi(optarg);
		switch (o) {
		case 'l': layers = v; break;
		case 'H': hidden = v; break;
		case 'I': inter = v; break;
		case 'v': vocab = v; break;
		case 'p': prompt = v; break;
		case 'd': decode = v; break;
		case 'j': threads = v; break;
		case 'o': only = optarg; break;
		default: fprintf(stderr, "usage: bench_run [--layers N] [--hidden N] [--intermediate N] [--vocab N] [--prompt N] [--decode N] [--threads N] [--only bf16|int8|nf4]\n"); return 2;
		}
	}
	if (threads < 1)
		threads = 1;
	if (only && strcmp(only, "bf16") && strcmp(only, "int8") && strcmp(only, "nf4")) {
		fprintf(stderr, "bench_run: --only takes bf16, int8 or nf4\n");
		return 2;
	}
	char dir[] = "/tmp/bench_run.XXXXXX";
	if (!mkdtemp(dir)) {
		perror("bench_run: mkdtemp");
		return 1;
	}
	static char gen[4096], cmd[16384], ck[4200], lqp[4200];
	if (snprintf(gen, sizeof gen, "%s", argv[0]) >= (int)sizeof gen) {
		fprintf(stderr, "bench_run: path too long\n");
		return 1;
	}
	char *slash = strrchr(gen, '/');
	if (slash)
		slash[1] = 0;
	else
		gen[0] = 0;
	if (snprintf(ck, sizeof ck, "%s/ckpt", dir) >= (int)sizeof ck ||
	    snprintf(lqp, sizeof lqp, "%s/m.lq", dir) >= (int)sizeof lqp)
		return 1;
	int heads = hidden / 64, kv = heads >= 4 ? heads / 4 : heads;
	if (snprintf(cmd, sizeof cmd,
		 "%sgen_checkpoint --layers %d --hidden %d --intermediate %d --heads %d --kv-heads %d --vocab %d %s >/dev/null",
		 gen, layers, hidden, inter, heads, kv, vocab, ck) >= (int)sizeof cmd ||
	    system(cmd) != 0) {
		fprintf(stderr, "bench_run: %s failed\n", cmd);
		return 1;
	}
	struct lq_error e = {0};
	struct lq_pool *pool = NULL;
	lq_pool_create(&pool, threads, &e);
	printf("model: Llama %d layers, hidden %d, intermediate %d, heads %d/%d, vocab %d; %d threads\n",
	       layers, hidden, inter, heads, kv, vocab, threads);
	printf("bandwidth: %d threads summing 512 MiB (best of a plain and a prefetching loop; the plain\n"
	       "loop's figure in brackets), measured right before each decode run\n", threads);
	const int qt[] = { LQ_QTYPE_NONE, LQ_QTYPE_INT8, LQ_QTYPE_NF4 };
	const char *qn[] = { "bf16", "int8", "nf4+dq" };
	int rc = 0;
	for (int q = 0; q < 3; q++) {
		if (only && strncmp(qn[q], only, strlen(only)))
			continue;
		struct lq_pack_opts po;
		lq_pack_opts_init(&po);
		po.qtype = qt[q];
		po.nthreads = threads;
		int fd = open(lqp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || lq_pack(ck, fd, lqp, &po, &e)) {
			fprintf(stderr, "bench_run: pack: %s\n", e.msg);
			rc = 1;
			break;
		}
		close(fd);
		struct lq_file *f = NULL;
		struct lq_model *m = NULL;
		struct lq_run *r = NULL;
		struct lq_run_opts ro;
		lq_run_opts_init(&ro);
		ro.nthreads = threads;
		ro.max_ctx = prompt + decode + 8;
		if (lq_file_open(&f, lqp, &e) || lq_model_from_lq(&m, f, &e) ||
		    lq_run_create(&r, m, f, &ro, &e)) {
			fprintf(stderr, "bench_run: %s\n", e.msg);
			rc = 1;
		} else {
			int64_t V = lq_run_vocab(r);
			float *lg = malloc((size_t)V * sizeof(float));
			int32_t *ids = malloc((size_t)(prompt + decode) * sizeof *ids);
			for (int i = 0; i < prompt + decode; i++)
				ids[i] = (int32_t)((i * 7919 + 13) % V);
			/* warm the page cache and the code */
			lq_run_forward(r, ids, 1, 0, lg, 0, &e);
			double plain = 0, bw = read_bandwidth(pool, &plain);
			double t0 = now();
			lq_run_forward(r, ids, (size_t)prompt, 0, lg, 0, &e);
			double tp = now() - t0;
			t0 = now();
			for (int i = 0; i < decode; i++)
				lq_run_forward(r, ids + prompt + i, 1, prompt + i, lg, 0, &e);
			double td = now() - t0;
			uint64_t wb = weight_bytes(f);
			double tps = decode / td, gbs = (double)wb * tps / 1e9;
			printf("%-7s weights %7.1f MB  prefill %4d tok %8.1f tok/s  decode %7.2f tok/s  %6.2f GB/s of weights (%3.0f%% of %.2f GB/s) [%3.0f%% of %.2f]\n",
			       qn[q], (double)wb / 1e6, prompt, prompt / tp, tps, gbs, bw > 0 ? 100 * gbs / bw : 0, bw,
			       plain > 0 ? 100 * gbs / plain : 0, plain);
			fflush(stdout);
			free(lg);
			free(ids);
		}
		lq_run_free(r);
		lq_model_free(m);
		lq_file_close(f);
		unlink(lqp);
	}
	lq_pool_free(pool);
	if (snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir) >= (int)sizeof cmd || system(cmd) != 0)
		rc = 1;
	return rc;
}
