/*
 * test_forward.cu - the CUDA backend (gpu/backend.cu) against the CPU
 * runtime and transformers' logits (make check-gpu; skips without a GPU).
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * For the six fixture models of tests/fixtures/run (all five architectures)
 * stored unquantized, NF4 + double quant, NF4, FP4 + double quant and INT8
 * (+ double quant):
 *  - fp32 compute: every logits row of a 24-token prefill within 1e-4
 *    relative L2 of the CPU runtime and of transformers' reference (where a
 *    reference exists: unquantized and NF4); the same rows decoded one token
 *    at a time through the KV cache (the CUDA-graph path) within 1e-4;
 *    greedy continuations of 24 tokens identical to the CPU's, also with
 *    the argmax taken on the device (lq_run_forward_argmax); sampled
 *    continuations (lq_run_forward_sample: penalty, temperature, filters
 *    and draw on the device) identical to lq_sample's on the same runtime's logits,
 *    at every compute dtype;
 *  - bf16 and fp16 compute: the logits within 2e-2 relative L2 of the
 *    CPU's fp32 logits (all rows together; every row within 3e-2).
 * Then a larger synthetic Llama (tests/gen_checkpoint: hidden 512, GQA,
 * 130 prompt tokens, so that the fast GEMV, split-K, split attention, the
 * chunked prefill and the KV-cache growth run) the same way, float32 and
 * fp16 checkpoints (their weights uploaded in the compute dtype), the other four
 * architectures at that size, then all five at the real models' head sizes
 * (96, 128, 256; 160 and 192 and other group sizes for decode attention;
 * tests/gen_arch_checkpoint.py, skipped with a message without python3,
 * numpy and safetensors), decoding in long caches too, and the errors a user can
 * provoke (token out of range, context exceeded, no such device).  On
 * sm_90 it first checks that the decode step's fast paths are on:
 * programmatic dependent launch and the attention's split clusters.
 */
#include "libquant.h"
#include "lq_cuda.h"
#include "../tests/sample_cases.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int pass, fail;
#define CHECK(c, ...)                                                          \
	do {                                                                   \
		if (c)                                                         \
			pass++;                                                \
		else {                                                         \
			fail++;                                                \
			printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #c);    \
			printf(__VA_ARGS__);                                   \
			printf("\n");                                          \
		}                                                              \
	} while (0)
#define CHECK_OK(x, e) CHECK((x) == 0, "%s", (e)->msg)

static double rel_err(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];
		num += d * d;
		den += (double)b[i] * b[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

static float *load_npy(const char *path, size_t want)
{
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return NULL;
	unsigned char h[10];
	float *v = NULL;
	if (fread(h, 1, 10, fp) == 10 && !memcmp(h, "\x93NUMPY", 6) && h[6] == 1) {
		size_t hl = h[8] | (size_t)h[9] << 8;
		if (fseek(fp, (long)(10 + hl), SEEK_SET) == 0) {
			v = (float *)malloc(want * sizeof(float));
			if (fread(v, sizeof(float), want, fp) != want) {
				free(v);
				v = NULL;
			}
		}
	}
	fclose(fp);
	return v;
}

struct model {
	struct lq_file *f;
	struct lq_model *m;
};

static int allow_nonfinite; /* open_packed's: NaN / Inf weights accepted */

static int open_packed(const char *dir, int qtype, int dq, struct model *md)
{
	struct lq_error e = {0};
	struct lq_pack_opts po;
	lq_pack_opts_init(&po);
	po.qtype = qtype;
	po.double_quant = dq;
	po.nthreads = 4;
	po.allow_nonfinite = allow_nonfinite;
	char tmp[] = "/tmp/test_forward.XXXXXX";
	int fd = mkstemp(tmp);
	if (fd < 0)
		return -1;
	int rc = lq_pack(dir, fd, tmp, &po, &e);
	close(fd);
	if (!rc)
		rc = lq_file_open(&md->f, tmp, &e);
	unlink(tmp);
	if (!rc)
		rc = lq_model_from_lq(&md->m, md->f, &e);
	CHECK(rc == 0, "%s: %s", dir, e.msg);
	return rc;
}

static void close_model(struct model *md)
{
	lq_model_free(md->m);
	lq_file_close(md->f);
}

static struct lq_run *make_run(struct model *md, int backend, int compute, int64_t ctx)
{
	struct lq_run_opts o;
	lq_run_opts_init(&o);
	o.nthreads = 4;
	o.max_ctx = ctx;
	o.backend = backend;
	o.compute = compute;
	struct lq_error e = {0};
	struct lq_run *r = NULL;
	int rc = lq_run_create(&r, md->m, md->f, &o, &e);
	CHECK(rc == 0, "lq_run_create(%s): %s", backend == LQ_BACKEND_CUDA ? "cuda" : "cpu", e.msg);
	return rc ? NULL : r;
}

/* The greedy pick, as run makes it: lq_sample at temperature 0. */
static int32_t greedy_pick(float *v, int64_t n)
{
	struct lq_sample_opts so;
	lq_sample_opts_init(&so);
	so.temperature = 0;
	return lq_sample(v, n, &so, NULL, 0, NULL);
}

/* Greedy continuation of ids[0..np) for ngen tokens. */
static void greedy(struct lq_run *r, const int32_t *ids, size_t np, int ngen, int32_t *out)
{
	struct lq_error e = {0};
	int64_t V = lq_run_vocab(r);
	float *lg = (float *)malloc((size_t)V * sizeof(float));
	CHECK_OK(lq_run_forward(r, ids, np, 0, lg, 0, &e), &e);
	int64_t pos = (int64_t)np;
	for (int i = 0; i < ngen; i++) {
		out[i] = greedy_pick(lg, V);
		CHECK_OK(lq_run_forward(r, &out[i], 1, pos++, lg, 0, &e), &e);
	}
	free(lg);
}

/* A sampled continuation of ids[0..np) for ngen tokens with options o and a
 * seed: with dev, lq_run_forward_sample (the whole pick, or the argmax, on
 * the device); else lq_run_forward and lq_sample on the host. */
static void sampled(struct lq_run *r, const int32_t *ids, size_t np, int ngen, const struct lq_sample_opts *o,
		    uint64_t seed, int dev, int32_t *out)
{
	struct lq_error e = {0};
	int64_t V = lq_run_vocab(r);
	float *lg = (float *)malloc((size_t)V * sizeof(float));
	int32_t *seen = (int32_t *)malloc((np + (size_t)ngen) * sizeof(int32_t));
	struct lq_rng g;
	lq_rng_seed(&g, seed);
	memcpy(seen, ids, np * sizeof *seen);
	size_t ns = np;
	for (int i = 0; i < ngen; i++) {
		const int32_t *feed = i ? &seen[ns - 1] : seen;
		size_t nf = i ? 1 : np;
		int64_t pos = i ? (int64_t)ns - 1 : 0;
		int32_t id = -1;
		if (dev) {
			CHECK_OK(lq_run_forward_sample(r, feed, nf, pos, o, seen, ns, &g, &id, &e), &e);
		} else {
			CHECK_OK(lq_run_forward(r, feed, nf, pos, lg, 0, &e), &e);
			id = lq_sample(lg, V, o, seen, ns, &g);
		}
		out[i] = id;
		seen[ns++] = id;
	}
	free(lg);
	free(seen);
}

/* sampled()'s device continuation with the steps after the prompt's in one
 * lq_run_forward_sample_n call (chained on the device where it can be). */
static void sampled_n(struct lq_run *r, const int32_t *ids, size_t np, int ngen, const struct lq_sample_opts *o,
		      uint64_t seed, int32_t *out)
{
	struct lq_error e = {0};
	int32_t *seen = (int32_t *)malloc((np + 1) * sizeof(int32_t));
	struct lq_rng g;
	lq_rng_seed(&g, seed);
	memcpy(seen, ids, np * sizeof *seen);
	CHECK_OK(lq_run_forward_sample(r, seen, np, 0, o, seen, np, &g, &out[0], &e), &e);
	seen[np] = out[0];
	CHECK_OK(lq_run_forward_sample_n(r, out[0], (int64_t)np, (size_t)ngen - 1, o, seen, np + 1, &g, out + 1, &e), &e);
	CHECK(lq_run_pos(r) == (int64_t)np + ngen - 1, "pos %lld", (long long)lq_run_pos(r));
	free(seen);
}

/* Sampled continuations picked on the device equal lq_sample's on the same
 * runtime's logits, for the sampling options run offers, step by step and
 * chained. */
static void check_sampling(const char *what, struct lq_run *r, const int32_t *ids, size_t np)
{
	struct lq_sample_opts os[LQ_SAMPLE_CASES];
	lq_sample_cases(os);
	for (int i = 0; i < LQ_SAMPLE_CASES; i++) {
		int32_t a[24], b[24];
		sampled(r, ids, np, 24, &os[i], 1000 + (uint64_t)i, 1, a);
		sampled(r, ids, np, 24, &os[i], 1000 + (uint64_t)i, 0, b);
		CHECK(!memcmp(a, b, sizeof a), "%s: sampled continuation %d differs from lq_sample's", what, i);
		sampled_n(r, ids, np, 24, &os[i], 1000 + (uint64_t)i, b);
		CHECK(!memcmp(a, b, sizeof a), "%s: sampled continuation %d in one call differs from single steps", what, i);
	}
}

/* An np-token prompt, then decode steps np..n-1, on the CPU run and on each
 * of the ng GPU runs: w[i] = GPU run i's worst rel L2 against the CPU's
 * logits, over the prompt's last row and every step. */
static void decode_worst(struct lq_run *cpu, struct lq_run *const *gpu, int ng, const int32_t *ids, int np, int n,
			 double *w)
{
	struct lq_error e = {0};
	int64_t V = lq_run_vocab(cpu);
	float *a1 = (float *)malloc((size_t)V * 4), *a2 = (float *)malloc((size_t)V * 4);
	for (int t = np - 1; t < n; t++) {
		const int32_t *in = t < np ? ids : ids + t;
		size_t k = t < np ? (size_t)np : 1;
		int64_t pos = t < np ? 0 : t;
		CHECK_OK(lq_run_forward(cpu, in, k, pos, a1, 0, &e), &e);
		for (int i = 0; i < ng; i++) {
			CHECK_OK(lq_run_forward(gpu[i], in, k, pos, a2, 0, &e), &e);
			double x = rel_err(a2, a1, (size_t)V);
			if (t == np - 1 || x > w[i])
				w[i] = x;
		}
	}
	free(a1);
	free(a2);
}

/* The comparisons for one packed model; ids[n], ref = transformers' logits or NULL. */
static void compare(const char *what, struct model *md, const int32_t *ids, size_t n, size_t split,
		    const float *ref, int64_t ctx)
{
	struct lq_error e = {0};
	struct lq_run *cpu = make_run(md, LQ_BACKEND_CPU, -1, ctx);
	struct lq_run *gpu = make_run(md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, ctx);
	if (!cpu || !gpu) {
		lq_run_free(cpu);
		lq_run_free(gpu);
		return;
	}
	CHECK(!strcmp(lq_run_backend(gpu), "cuda"), "%s", lq_run_backend(gpu));
	int64_t V = lq_run_vocab(cpu);
	float *lc = (float *)malloc(n * (size_t)V * sizeof(float));
	float *lgp = (float *)malloc(n * (size_t)V * sizeof(float));
	float *one = (float *)malloc((size_t)V * sizeof(float));
	CHECK_OK(lq_run_forward(cpu, ids, n, 0, lc, 1, &e), &e);
	CHECK_OK(lq_run_forward(gpu, ids, n, 0, lgp, 1, &e), &e);
	double w_cpu = 0, w_ref = 0, w_dec = 0;
	for (size_t t = 0; t < n; t++) {
		double a = rel_err(lgp + t * V, lc + t * V, (size_t)V);
		w_cpu = a > w_cpu ? a : w_cpu;
		if (ref) {
			double b = rel_err(lgp + t * V, ref + t * V, (size_t)V);
			w_ref = b > w_ref ? b : w_ref;
		}
	}
	CHECK(w_cpu < 1e-4, "%s fp32: GPU vs CPU worst row rel L2 %g", what, w_cpu);
	CHECK(w_ref < 1e-4, "%s fp32: GPU vs transformers worst row rel L2 %g", what, w_ref);
	/* decode through the KV cache (graph replays) */
	CHECK_OK(lq_run_forward(gpu, ids, split, 0, NULL, 0, &e), &e);
	for (size_t t = split; t < n; t++) {
		CHECK_OK(lq_run_forward(gpu, ids + t, 1, (int64_t)t, one, 0, &e), &e);
		double a = rel_err(one, lc + t * V, (size_t)V);
		w_dec = a > w_dec ? a : w_dec;
	}
	CHECK(w_dec < 1e-4, "%s fp32: GPU decode vs CPU worst row rel L2 %g", what, w_dec);
	CHECK(lq_run_pos(gpu) == (int64_t)n, "pos %lld", (long long)lq_run_pos(gpu));
	/* greedy continuations */
	int32_t gc[24], gg[24];
	size_t np = split < 8 ? split : 8;
	greedy(cpu, ids, np, 24, gc);
	greedy(gpu, ids, np, 24, gg);
	CHECK(!memcmp(gc, gg, sizeof gc), "%s fp32: greedy continuation differs", what);
	/* the same with the argmax taken on the device (what run does for greedy) */
	{
		int32_t ga[24], id = -1;
		int64_t pos = (int64_t)np;
		CHECK_OK(lq_run_forward_argmax(gpu, ids, np, 0, &id, &e), &e);
		for (int i = 0; i < 24; i++) {
			ga[i] = id;
			CHECK_OK(lq_run_forward_argmax(gpu, &ga[i], 1, pos++, &id, &e), &e);
		}
		CHECK(!memcmp(gc, ga, sizeof gc), "%s fp32: greedy continuation with the device argmax differs", what);
		/* the same steps chained on the device (lq_run_forward_argmax_n) */
		int32_t gn[24];
		CHECK_OK(lq_run_forward_argmax(gpu, ids, np, 0, &id, &e), &e);
		gn[0] = id;
		CHECK_OK(lq_run_forward_argmax_n(gpu, id, (int64_t)np, 23, gn + 1, &e), &e);
		CHECK(!memcmp(gc, gn, sizeof gc), "%s fp32: greedy continuation chained on the device differs", what);
		CHECK(lq_run_pos(gpu) == (int64_t)np + 23, "pos %lld", (long long)lq_run_pos(gpu));
	}
	check_sampling(what, gpu, ids, np);
	/* bf16 / fp16 */
	for (int cdt = LQ_COMPUTE_BF16; cdt <= LQ_COMPUTE_F16; cdt++) {
		struct lq_run *gh = make_run(md, LQ_BACKEND_CUDA, cdt, ctx);
		if (!gh)
			continue;
		CHECK_OK(lq_run_forward(gh, ids, n, 0, lgp, 1, &e), &e);
		double w = 0, all = rel_err(lgp, lc, n * (size_t)V);
		for (size_t t = 0; t < n; t++) {
			double a = rel_err(lgp + t * V, lc + t * V, (size_t)V);
			w = a > w ? a : w;
		}
		CHECK(all < 2e-2, "%s %s: GPU vs CPU fp32 logits rel L2 %g", what, lq_compute_name(cdt), all);
		CHECK(w < 3e-2, "%s %s: GPU vs CPU fp32 worst row rel L2 %g", what, lq_compute_name(cdt), w);
		CHECK_OK(lq_run_forward(gh, ids, split, 0, NULL, 0, &e), &e);
		double wd = 0;
		for (size_t t = split; t < n; t++) {
			CHECK_OK(lq_run_forward(gh, ids + t, 1, (int64_t)t, one, 0, &e), &e);
			double a = rel_err(one, lc + t * V, (size_t)V);
			wd = a > wd ? a : wd;
		}
		CHECK(wd < 3e-2, "%s %s: GPU decode vs CPU fp32 worst row rel L2 %g", what, lq_compute_name(cdt), wd);
		check_sampling(what, gh, ids, np);
		{
			/* chained greedy steps: the ids of single steps on this runtime */
			int32_t a[24], c2[24], id = -1;
			CHECK_OK(lq_run_forward_argmax(gh, ids, np, 0, &id, &e), &e);
			a[0] = c2[0] = id;
			for (int i = 1; i < 24; i++)
				CHECK_OK(lq_run_forward_argmax(gh, &a[i - 1], 1, (int64_t)np + i - 1, &a[i], &e), &e);
			CHECK_OK(lq_run_forward_argmax(gh, ids, np, 0, &id, &e), &e);
			CHECK_OK(lq_run_forward_argmax_n(gh, id, (int64_t)np, 23, c2 + 1, &e), &e);
			CHECK(!memcmp(a, c2, sizeof a), "%s %s: chained greedy steps differ from single steps", what,
			      lq_compute_name(cdt));
		}
		printf("  %-22s %s: all %.2e, worst row: prefill %.2e decode %.2e\n", what, lq_compute_name(cdt), all, w, wd);
		lq_run_free(gh);
	}
	printf("  %-22s fp32: vs CPU %.2e, vs transformers %s%.2e, decode %.2e\n", what, w_cpu,
	       ref ? "" : "(none) ", w_ref, w_dec);
	/* errors */
	int32_t bad = (int32_t)V;
	CHECK(lq_run_forward(gpu, &bad, 1, 0, one, 0, &e) == LQ_ERR_INVALID, "bad token accepted");
	free(lc);
	free(lgp);
	free(one);
	lq_run_free(cpu);
	lq_run_free(gpu);
}

static const int32_t fix_ids[] = { 1, 5, 17, 33, 40, 2, 9, 60, 71, 3, 88, 12, 45, 6, 19, 27, 50, 8, 91, 30, 14, 66, 23, 4 };
#define NIDS (sizeof fix_ids / sizeof fix_ids[0])

int main(void)
{
	if (lq_gpu_count() == 0) {
		printf("skipping test_forward: no CUDA device\n0 passed, 0 failed\n");
		return 0;
	}
	if (access("tests/fixtures/run/ckpt-llama", R_OK)) {
		printf("test_forward: run from the repository root\n");
		return 1;
	}
	/* the generated models go under a directory of this run's own: two
	 * test_forward runs at once (two builds on one machine) once shared
	 * fixed names under /tmp and read each other's half-written files */
	static char work[] = "/tmp/test_forward.XXXXXX";
	if (!mkdtemp(work)) {
		printf("test_forward: cannot create a directory under /tmp\n");
		return 1;
	}
	{
		/* on sm_90 the decode step uses its fast paths: programmatic
		 * dependent launch and the decode attention's clusters of 16
		 * splits (a silent fallback would only show as speed) */
		int dev = 0, major = 0;
		if (cudaGetDevice(&dev) == cudaSuccess &&
		    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major == 9) {
			CHECK(lq_cuda_pdl() == 1, "programmatic dependent launch off on sm_90");
			const int cds[] = { LQ_COMPUTE_BF16, LQ_COMPUTE_F16, LQ_COMPUTE_F32 };
			for (int i = 0; i < 3; i++)
				CHECK(lq_cuda_attn_cluster(cds[i]) == ATT_CLUSTER,
				      "compute %s: decode attention clusters of %d splits, not %d", lq_compute_name(cds[i]),
				      lq_cuda_attn_cluster(cds[i]), ATT_CLUSTER);
		}
	}
	const char *archs[] = { "llama", "llama-bias", "mistral", "qwen2", "phi3", "gemma2" };
	struct {
		int qtype, dq;
		const char *name;
	} qs[] = { { LQ_QTYPE_NONE, 0, "bf16" }, { LQ_QTYPE_NF4, 1, "nf4+dq" }, { LQ_QTYPE_NF4, 0, "nf4" },
		   { LQ_QTYPE_FP4, 1, "fp4+dq" }, { LQ_QTYPE_INT8, 1, "int8+dq" }, { LQ_QTYPE_INT8, 0, "int8" } };
	for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
		for (size_t q = 0; q < sizeof qs / sizeof qs[0]; q++) {
			char dir[256], ref[256], what[64];
			snprintf(dir, sizeof dir, "tests/fixtures/run/ckpt-%s", archs[a]);
			snprintf(what, sizeof what, "%s %s", archs[a], qs[q].name);
			struct model md = { NULL, NULL };
			if (open_packed(dir, qs[q].qtype, qs[q].dq, &md)) {
				close_model(&md);
				continue;
			}
			float *want = NULL;
			if (qs[q].qtype == LQ_QTYPE_NONE || (qs[q].qtype == LQ_QTYPE_NF4 && qs[q].dq)) {
				snprintf(ref, sizeof ref, "tests/fixtures/run/%s%s.ref.npy", archs[a],
					 qs[q].qtype == LQ_QTYPE_NF4 ? ".nf4" : "");
				want = load_npy(ref, NIDS * (size_t)lq_model_config(md.m)->vocab_size);
				CHECK(want != NULL, "cannot read %s", ref);
			}
			compare(what, &md, fix_ids, NIDS, 18, want, 64);
			free(want);
			close_model(&md);
		}
	}
	/* a larger model: fast GEMV paths, split attention, chunks, cache growth */
	const char *b = getenv("LQ_BUILD");
	char cmd[1024];
	snprintf(cmd, sizeof cmd,
		 "%s/tests/gen_checkpoint --layers 2 --hidden 512 --intermediate 1408 --heads 8 --kv-heads 2 "
		 "--vocab 1000 %s/big >/dev/null",
		 b && *b ? b : "build", work);
	char bigdir[64];
	snprintf(bigdir, sizeof bigdir, "%s/big", work);
	if (system(cmd) != 0) {
		CHECK(0, "cannot run %s", cmd);
	} else {
		static int32_t ids[2080];
		for (int i = 0; i < 2080; i++)
			ids[i] = (int32_t)((i * 7919u + 13) % 1000);
		for (size_t q = 0; q < 3; q++) {
			struct model md = { NULL, NULL };
			int qt = q == 0 ? LQ_QTYPE_NF4 : q == 1 ? LQ_QTYPE_INT8 : LQ_QTYPE_NONE;
			char what[64];
			snprintf(what, sizeof what, "synthetic %s", lq_qtype_name(qt));
			if (!open_packed(bigdir, qt, 1, &md)) {
				compare(what, &md, ids, 130, 100, NULL, 1024);
				/* a prompt over the 512-token chunk, then decode past the first cache size */
				struct lq_error e = {0};
				struct lq_run *cpu = make_run(&md, LQ_BACKEND_CPU, -1, 1024);
				struct lq_run *gpu = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, 1024);
				/* a cache of 720: 45 decode splits (the GPU's decode
				 * attention clamps them to one cluster's 16 on sm_90), not
				 * the power of two of every other case */
				struct lq_run *gpu2 = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, 720);
				if (cpu && gpu && gpu2) {
					struct lq_run *const gs[2] = { gpu, gpu2 };
					double w[2];
					decode_worst(cpu, gs, 2, ids, 600, 700, w);
					CHECK(w[0] < 1e-4, "%s: 600-token prefill + 100 decode steps: %g", what, w[0]);
					CHECK(w[1] < 1e-4, "%s: the same in a 720-token context: %g", what, w[1]);
					printf("  %-22s 600+100 tokens: %.2e (context 720: %.2e)\n", what, w[0], w[1]);
					/* 300 greedy steps chained on the device (two waits,
					 * the cache growing from 256 to 512 positions) against
					 * single steps on the GPU, at fp32 */
					{
						static int32_t want[300], got[300];
						int32_t t = ids[129];
						struct lq_run *gs3 = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, 1024);
						struct lq_run *gc3 = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, 1024);
						if (gs3) {
							CHECK_OK(lq_run_forward(gs3, ids, 129, 0, NULL, 0, &e), &e);
							for (int i = 0; i < 300; i++) {
								CHECK_OK(lq_run_forward_argmax(gs3, &t, 1, 129 + i, &want[i], &e), &e);
								t = want[i];
							}
							lq_run_free(gs3);
						}
						if (gc3) {
							CHECK_OK(lq_run_forward(gc3, ids, 129, 0, NULL, 0, &e), &e);
							CHECK_OK(lq_run_forward_argmax_n(gc3, ids[129], 129, 300, got, &e), &e);
							CHECK(!memcmp(want, got, sizeof want), "%s: 300 chained greedy steps differ from single steps",
							      what);
							CHECK(lq_run_forward_argmax_n(gc3, 0, 429, 1024 - 429 + 1, got, &e) == LQ_ERR_INVALID,
							      "past the context");
						}
						/* the same with sampling (top-k 40, top-p 0.95) */
						struct lq_sample_opts so;
						lq_sample_opts_init(&so);
						so.temperature = 0.9;
						so.top_k = 40;
						so.top_p = 0.95;
						struct lq_rng ra, rb;
						lq_rng_seed(&ra, 5);
						lq_rng_seed(&rb, 5);
						struct lq_run *gs4 = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, 1024);
						if (gs4 && gc3) {
							t = ids[129];
							CHECK_OK(lq_run_forward(gs4, ids, 129, 0, NULL, 0, &e), &e);
							for (int i = 0; i < 300; i++) {
								CHECK_OK(lq_run_forward_sample(gs4, &t, 1, 129 + i, &so, NULL, 0, &ra, &want[i], &e),
									 &e);
								t = want[i];
							}
							CHECK_OK(lq_run_forward(gc3, ids, 129, 0, NULL, 0, &e), &e);
							CHECK_OK(lq_run_forward_sample_n(gc3, ids[129], 129, 300, &so, NULL, 0, &rb, got, &e), &e);
							CHECK(!memcmp(want, got, sizeof want), "%s: 300 chained sampled steps differ from single steps",
							      what);
							CHECK(!memcmp(&ra, &rb, sizeof ra), "%s: the generators drifted apart", what);
						}
						lq_run_free(gs4);
						lq_run_free(gc3);
					}
					int32_t many[1025] = { 0 };
					float *a2 = (float *)malloc((size_t)lq_run_vocab(gpu) * 4);
					CHECK(lq_run_forward(gpu, many, 1025, 0, a2, 0, &e) == LQ_ERR_INVALID, "context");
					CHECK(strstr(e.msg, "context length") != NULL, "%s", e.msg);
					free(a2);
				}
				lq_run_free(cpu);
				lq_run_free(gpu);
				lq_run_free(gpu2);
				if (q == 0) {
					/* past 2048 positions (a cache of 2080: k_attn_long's 32
					 * splits merged through global memory): a 2060-token
					 * prompt, 20 steps */
					cpu = make_run(&md, LQ_BACKEND_CPU, -1, 2080);
					gpu = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, 2080);
					if (cpu && gpu) {
						double w;
						decode_worst(cpu, &gpu, 1, ids, 2060, 2080, &w);
						CHECK(w < 1e-4, "%s: 2060-token prefill + 20 decode steps: %g", what, w);
						printf("  %-22s 2060+20 tokens: %.2e\n", what, w);
					} else {
						CHECK(0, "%s: cannot open the 2080-token runs", what);
					}
					lq_run_free(cpu);
					lq_run_free(gpu);
				}
			}
			close_model(&md);
		}
		snprintf(cmd, sizeof cmd, "rm -rf %s", bigdir);
		system(cmd);
	}
	/* float32 and fp16 checkpoints (Gemma 2's are published in float32):
	 * at bf16 / fp16 compute their unquantized weights go to the device in
	 * the compute dtype, in pieces of 64 MiB of the source (the tied
	 * 40000 x 512 float32 embedding takes two), and stay as stored at fp32
	 * compute; stored as is and in NF4.  The bf16 checkpoints above take
	 * the same conversion at fp16 compute. */
	for (int src = 0; src < 2; src++) {
		const char *dt = src == 0 ? "f32" : "f16";
		snprintf(cmd, sizeof cmd,
			 "%s/tests/gen_checkpoint --dtype %s --tied --layers 2 --hidden 512 --intermediate 1408 "
			 "--heads 8 --kv-heads 2 --vocab 40000 %s/%s >/dev/null",
			 b && *b ? b : "build", dt, work, dt);
		snprintf(bigdir, sizeof bigdir, "%s/%s", work, dt);
		if (system(cmd) != 0) {
			CHECK(0, "cannot run %s", cmd);
			continue;
		}
		static int32_t ids[48];
		for (int i = 0; i < 48; i++)
			ids[i] = (int32_t)((i * 7919u + 13) % 40000);
		for (int q = 0; q < 2; q++) {
			struct model md = { NULL, NULL };
			int qt = q == 0 ? LQ_QTYPE_NONE : LQ_QTYPE_NF4;
			char what[64];
			snprintf(what, sizeof what, "%s source, %s", src == 0 ? "float32" : "fp16", lq_qtype_name(qt));
			if (!open_packed(bigdir, qt, 1, &md))
				compare(what, &md, ids, 48, 40, NULL, 64);
			close_model(&md);
		}
		snprintf(cmd, sizeof cmd, "rm -rf %s", bigdir);
		system(cmd);
	}
	/* the other four architectures at the same size (tests/gen_arch_checkpoint.py):
	 * fused q/k/v and gate/up (Phi-3, longrope), sandwich norms and soft-caps
	 * (Gemma 2), q/k/v biases (Qwen2), sliding windows, through the tile
	 * layout and the fused decode GEMVs at bf16 / fp16; then all five at the
	 * head sizes of the real models (Llama 3.1, Mistral, Qwen2-7B: 128;
	 * Phi-3: 96; Gemma 2: 256), which the attention kernels instantiate
	 * separately (dims per lane, tensor-core tiles) */
	{
		static const struct {
			const char *arch;
			int hd;        /* 0: the script's default, 64 */
			int heads, kv; /* 0: the script's default, 8 / 2 (4 / 2 with hd) */
		} archs[] = {{"phi3", 0, 0, 0},     {"gemma2", 0, 0, 0},  {"qwen2", 0, 0, 0},   {"mistral", 0, 0, 0},
			     {"llama", 128, 0, 0},  {"mistral", 128, 0, 0}, {"qwen2", 128, 0, 0}, {"phi3", 96, 0, 0},
			     {"gemma2", 256, 0, 0}, {"qwen2", 192, 0, 0}, {"llama", 128, 8, 2}, {"llama", 128, 6, 2},
			     {"llama", 160, 0, 0},  {"mistral", 64, 10, 2}, {"qwen2", 128, 12, 2}, {"qwen2", 64, 14, 2},
			     {"llama", 128, 16, 2}, {"llama", 128, 32, 8}, {"mistral", 128, 30, 5}, {"mistral", 64, 16, 8},
			     {"llama", 64, 32, 8}, {"llama", 64, 64, 8}};
		/* long: a prompt of the cache's size less 25 and 20 decode steps
		 * (the prompt grows the cache to that size), then a restart from
		 * position 0, at every compute dtype in a cache of ATT_LONG_MIN
		 * positions (k_attn_long: 4, 8 and 16 lanes per key, 16, 24 and 32
		 * dims per lane, groups of 2 to 8 query heads per KV head: 12/2 at
		 * head size 128 and 14/2 at 64 are Qwen2-1.5B's and -0.5B's
		 * attention, 16/2 a group of 8 as Llama-3.1-70B's);
		 * at head size 160, which it does not take, k_attn in a cache of
		 * 2080 (64 splits merged through global memory, past the
		 * cluster's 16); and at bf16 / fp16 in a cache of ATT_GQA_MIN
		 * where k_attn_gqa takes the shape, which needs enough KV heads
		 * to fill the device: 32/8 (Llama 3.1 8B's attention, a group of
		 * 4), 30/5 (6) at head size 128, 16/8 (2), 32/8 (4, Llama 3.2
		 * 1B's) and 64/8 (8) at 64 */
		enum { LONG_CTX = ATT_GQA_MIN > 2080 ? ATT_GQA_MIN : 2080 };
		static int32_t ids[LONG_CTX];
		for (int i = 0; i < LONG_CTX; i++)
			ids[i] = (int32_t)((i * 7919u + 13) % 1000);
		for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
			char dir[128], hd[32] = "";
			if (archs[a].heads)
				snprintf(hd, sizeof hd, " %d %d/%d", archs[a].hd, archs[a].heads, archs[a].kv);
			else if (archs[a].hd)
				snprintf(hd, sizeof hd, " %d", archs[a].hd);
			snprintf(dir, sizeof dir, "%s/%s%d.%d", work, archs[a].arch, archs[a].hd, archs[a].heads);
			snprintf(cmd, sizeof cmd, "python3 tests/gen_arch_checkpoint.py %s %s%s", archs[a].arch, dir, hd);
			if (system(cmd) != 0) {
				printf("  skipping the synthetic %s model: tests/gen_arch_checkpoint.py needs python3 with numpy "
				       "and safetensors\n", archs[a].arch);
				continue;
			}
			struct model md = { NULL, NULL };
			if (!open_packed(dir, LQ_QTYPE_NF4, 1, &md)) {
				char what[64];
				snprintf(what, sizeof what, "synthetic %s%s nf4", archs[a].arch, archs[a].hd ? hd : "");
				compare(what, &md, ids, 130, 100, NULL, 1024);
				const int64_t hdim = archs[a].hd ? archs[a].hd : 64;
				const bool lng = hdim != 160;
				const int64_t cap = lng ? ATT_LONG_MIN : 2080;
				const int64_t kv = archs[a].heads ? archs[a].kv : 2;
				const int64_t grp = archs[a].heads ? archs[a].heads / kv : archs[a].hd ? 2 : 4;
				/* the tensor-core kernel: 16-bit caches of ATT_GQA_MIN positions,
				 * head size 64 or 128, groups of 2 to 8, where the KV heads fill
				 * the device (8 of them: 512 blocks, past the H200's 264 or 396
				 * slots; the check keeps this test from losing k_attn_gqa
				 * silently) */
				const bool gshape = lng && (hdim == 64 || hdim == 128) && grp >= 2 && grp <= 8;
				const bool gqs = gshape && lq_cuda_attn_gqa(LQ_COMPUTE_BF16, hdim, grp, kv, ATT_GQA_MIN);
				CHECK(!gshape || kv < 8 || gqs, "%s: the grouped decode attention not taken with 8 KV heads",
				      what);
				for (int cdt = LQ_COMPUTE_BF16; cdt <= LQ_COMPUTE_F32; cdt++) {
					CHECK((lq_cuda_attn_long(cdt, hdim, cap) != 0) == lng,
					      "%s %s: head size %d %s the long-cache decode attention", what,
					      lq_compute_name(cdt), (int)hdim, lng ? "does not take" : "takes");
					const int gq = gqs && cdt != LQ_COMPUTE_F32;
					CHECK(lq_cuda_attn_gqa(cdt, hdim, grp, kv, ATT_GQA_MIN) == gq,
					      "%s %s: the grouped decode attention %s", what, lq_compute_name(cdt),
					      gq ? "not taken" : "taken");
					/* with any number of KV heads once a layer's K and V
					 * reach ATT_GQA_BYTES */
					const int64_t big = ATT_GQA_BYTES / (kv * hdim * 4) + ATT_GQA_MIN;
					CHECK(lq_cuda_attn_gqa(cdt, hdim, grp, kv, big) == (gshape && cdt != LQ_COMPUTE_F32),
					      "%s %s: the grouped decode attention %s at a cache of %lld", what,
					      lq_compute_name(cdt), gshape && cdt != LQ_COMPUTE_F32 ? "not taken" : "taken",
					      (long long)big);
					CHECK(ATT_GQA_MIN == ATT_LONG_MIN || !lq_cuda_attn_gqa(cdt, hdim, grp, kv, cap),
					      "%s %s: the grouped decode attention taken below ATT_GQA_MIN", what,
					      lq_compute_name(cdt));
				}
				/* each shape in k_attn_long's (k_attn's) cache, then the grouped
				 * ones in k_attn_gqa's; the prompt takes the cache to that size */
				struct lq_run *cpu = make_run(&md, LQ_BACKEND_CPU, -1, LONG_CTX);
				for (int ph = 0; cpu && ph < (gqs ? 2 : 1); ph++) {
					const int64_t pc = ph ? ATT_GQA_MIN : cap;
					const int np = (int)pc - 25, n = (int)pc - 5, ng = ph ? 2 : 3;
					struct lq_run *gh[3] = { NULL, NULL, NULL };
					int ok = 1;
					for (int i = 0; i < ng; i++)
						ok &= (gh[i] = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_BF16 + i, pc)) != NULL;
					double w[3] = { 0, 0, 0 }, w2[3] = { 0, 0, 0 };
					if (ok) {
						decode_worst(cpu, gh, ng, ids, np, n, w);
						/* a new conversation in the same (still large) cache: most
						 * splits have no keys */
						decode_worst(cpu, gh, ng, ids, 5, 15, w2);
					}
					for (int i = 0; ok && i < ng; i++) {
						const int cdt = LQ_COMPUTE_BF16 + i;
						const double tol = cdt == LQ_COMPUTE_F32 ? 1e-4 : 3e-2;
						CHECK(w[i] < tol, "%s %s: %d-token prefill + %d decode steps, cache %d: %g", what,
						      lq_compute_name(cdt), np, n - np, (int)pc, w[i]);
						CHECK(w2[i] < tol, "%s %s: again from position 0, 5+10 tokens, cache %d: %g", what,
						      lq_compute_name(cdt), (int)pc, w2[i]);
						printf("  %-22s %s: %d+%d tokens, cache %d: %.2e (again from 0: %.2e)\n", what,
						       lq_compute_name(cdt), np, n - np, (int)pc, w[i], w2[i]);
					}
					for (int i = 0; i < ng; i++)
						lq_run_free(gh[i]);
				}
				lq_run_free(cpu);
			} else {
				CHECK(0, "cannot pack %s", dir);
			}
			close_model(&md);
			snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
			system(cmd);
		}
	}
	/* a NaN in the lm_head (token 0's logit NaN at every step): the device
	 * cannot make a top-k set, so every step of a chained sampling call
	 * stops on the device and is redone on the host, and the ids and draws
	 * must still be those of single steps (and of the CPU at fp32) */
	{
		char dir[128];
		snprintf(dir, sizeof dir, "%s/nan", work);
		snprintf(cmd, sizeof cmd,
			 "%s/tests/gen_checkpoint --layers 2 --hidden 256 --intermediate 688 --heads 4 --kv-heads 2 "
			 "--vocab 2000 --poison lm_head.weight %s >/dev/null",
			 b && *b ? b : "build", dir);
		struct model md = { NULL, NULL };
		allow_nonfinite = 1;
		if (system(cmd) != 0) {
			CHECK(0, "cannot run %s", cmd);
		} else if (!open_packed(dir, LQ_QTYPE_NF4, 1, &md)) {
			struct lq_run *cpu = make_run(&md, LQ_BACKEND_CPU, -1, 64);
			struct lq_run *gpu = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F32, 64);
			struct lq_sample_opts so;
			lq_sample_opts_init(&so);
			so.temperature = 0.9;
			static const int32_t prompt[6] = { 3, 141, 59, 265, 358, 979 };
			if (cpu && gpu) {
				struct lq_error e = {0};
				float *lg = (float *)malloc((size_t)lq_run_vocab(gpu) * 4);
				CHECK_OK(lq_run_forward(gpu, prompt, 6, 0, lg, 0, &e), &e);
				CHECK(isnan(lg[0]), "the poisoned logit is %g, not NaN", lg[0]);
				free(lg);
				int32_t one[20], chain[20], ref[20];
				sampled(gpu, prompt, 6, 20, &so, 9, 1, one);
				sampled_n(gpu, prompt, 6, 20, &so, 9, chain);
				sampled(cpu, prompt, 6, 20, &so, 9, 0, ref);
				CHECK(!memcmp(one, chain, sizeof one), "NaN logits: chained sampling differs from single steps");
				CHECK(!memcmp(one, ref, sizeof one), "NaN logits: GPU sampling differs from the CPU's");
			}
			lq_run_free(cpu);
			lq_run_free(gpu);
		}
		allow_nonfinite = 0;
		close_model(&md);
		snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
		system(cmd);
	}
	/* float32 weights past fp16's range at fp16 compute: the upload's
	 * conversion (k_to16) saturates them to 65504, so a model with 1e6 in a
	 * weight gives the logits of the same model with 65504 there (finite),
	 * where an infinite weight would make them NaN */
	{
		float *lg[2] = { NULL, NULL };
		int64_t nv = 0;
		static const char *const val[2] = { "1e6", "65504" };
		for (int i = 0; i < 2; i++) {
			char dir[128];
			snprintf(dir, sizeof dir, "%s/sat%d", work, i);
			snprintf(cmd, sizeof cmd,
				 "%s/tests/gen_checkpoint --layers 2 --hidden 256 --intermediate 688 --heads 4 --kv-heads 2 "
				 "--vocab 2000 --dtype f32 --poison model.layers.0.mlp.down_proj.weight:%s %s >/dev/null",
				 b && *b ? b : "build", val[i], dir);
			struct model md = { NULL, NULL };
			if (system(cmd) != 0) {
				CHECK(0, "cannot run %s", cmd);
			} else if (!open_packed(dir, LQ_QTYPE_NONE, 0, &md)) {
				struct lq_run *gpu = make_run(&md, LQ_BACKEND_CUDA, LQ_COMPUTE_F16, 64);
				if (gpu) {
					static const int32_t prompt[6] = { 3, 141, 59, 265, 358, 979 };
					struct lq_error e = {0};
					nv = lq_run_vocab(gpu);
					lg[i] = (float *)malloc((size_t)nv * 4);
					CHECK_OK(lq_run_forward(gpu, prompt, 6, 0, lg[i], 0, &e), &e);
				}
				lq_run_free(gpu);
			}
			close_model(&md);
			snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
			system(cmd);
		}
		if (lg[0] && lg[1]) {
			int finite = 1;
			for (int64_t j = 0; j < nv; j++)
				finite &= isfinite(lg[0][j]) != 0;
			CHECK(finite, "fp16 compute, a float32 weight of 1e6: logits not finite");
			CHECK(!memcmp(lg[0], lg[1], (size_t)nv * 4),
			      "fp16 compute: a float32 weight of 1e6 does not act as 65504 (rel err %g)",
			      rel_err(lg[0], lg[1], (size_t)nv));
		}
		free(lg[0]);
		free(lg[1]);
	}
	/* no such device */
	{
		struct model md = { NULL, NULL };
		if (!open_packed("tests/fixtures/run/ckpt-llama", LQ_QTYPE_NF4, 1, &md)) {
			struct lq_run_opts o;
			lq_run_opts_init(&o);
			o.backend = LQ_BACKEND_CUDA;
			o.device = lq_gpu_count();
			struct lq_error e = {0};
			struct lq_run *r = NULL;
			CHECK(lq_run_create(&r, md.m, md.f, &o, &e) == LQ_ERR_UNSUPPORTED, "device %d", o.device);
			CHECK(strstr(e.msg, "no CUDA device") != NULL, "%s", e.msg);
			lq_run_free(r);
		}
		close_model(&md);
	}
	{
		char rm[64];
		snprintf(rm, sizeof rm, "rm -rf %s", work);
		system(rm);
	}
	printf("%d passed, %d failed\n", pass, fail);
	return fail ? 1 : 0;
}
