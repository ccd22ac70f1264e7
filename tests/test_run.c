/*
 * test_run.c - the CPU runtime: fast matmul against the scalar reference
 * for every storage type, row dequantization against lq_dequantize, the
 * forward pass against committed transformers logits (tests/fixtures/run,
 * made by tests/run_reference.py: bf16 checkpoints of all five
 * architectures, transformers fp32 logits of the checkpoint and of the
 * checkpoint with our NF4-dequantized Linear weights), KV cache
 * consistency, errors, sampler.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "test.h"
#include "sample_cases.h"
#include "internal.h" /* lq_sample_kept */
#include "lq_blocks.h" /* the pick's fixed point */

#include <math.h>
#include <stdint.h>
#include <unistd.h>

static uint64_t rs = 88172645463325252ULL;
static float frand(void)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return (float)((double)(rs >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static double rel_err(const float *a, const float *b, size_t n)
{
	double d = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		s += (double)b[i] * b[i];
	}
	return sqrt(d) / (sqrt(s) + 1e-30);
}

/* Build a stored tensor [rows, cols] of the given storage from random data. */
struct owned {
	struct lq_tensor t;
	void *data, *scales;
	float *nested;
	float *src;
};

static int make_tensor(struct owned *o, uint64_t rows, uint64_t cols, int qtype, int dtype,
		       int bs, int dq)
{
	memset(o, 0, sizeof *o);
	uint64_t n = rows * cols;
	o->src = malloc(n * sizeof(float));
	for (uint64_t i = 0; i < n; i++)
		o->src[i] = frand() * (i % 7 == 0 ? 3.0f : 1.0f);
	struct lq_tensor *t = &o->t;
	t->name = "w";
	t->qtype = qtype;
	t->src_dtype = dtype;
	t->ndim = 2;
	t->shape[0] = rows;
	t->shape[1] = cols;
	t->nelem = n;
	if (qtype == LQ_QTYPE_NONE) {
		size_t es = lq_dtype_size(dtype);
		o->data = malloc(n * es);
		for (uint64_t i = 0; i < n; i++) {
			if (dtype == LQ_DTYPE_F32)
				memcpy((char *)o->data + 4 * i, &o->src[i], 4);
			else {
				uint16_t h = dtype == LQ_DTYPE_F16 ? lq_f32_to_f16(o->src[i]) : lq_f32_to_bf16(o->src[i]);
				memcpy((char *)o->data + 2 * i, &h, 2);
			}
		}
		t->data = o->data;
		return 0;
	}
	struct lq_qparams p = { qtype, bs, dq };
	o->data = malloc(lq_qdata_bytes(qtype, n));
	o->scales = malloc(lq_qscale_bytes(&p, n));
	o->nested = dq ? malloc(lq_qnested_bytes(&p, n) + 4) : NULL;
	float *work = malloc(lq_qnblocks(n, bs) * sizeof(float));
	struct lq_qbuf b = { o->data, o->scales, o->nested, 0 };
	int rc = lq_quantize(&p, o->src, n, &b, work, 1);
	free(work);
	t->block_size = bs;
	t->double_quant = dq;
	t->offset = b.offset;
	t->data = o->data;
	t->scales = o->scales;
	t->nested = o->nested;
	return rc;
}

static void free_tensor(struct owned *o)
{
	free(o->data);
	free(o->scales);
	free(o->nested);
	free(o->src);
}

static void test_matmul(void)
{
	struct lq_pool *pool = NULL;
	struct lq_error e = {0};
	CHECK_OK(lq_pool_create(&pool, 3, &e), &e);
	struct { int qtype, dtype, bs, dq; } st[] = {
		{ LQ_QTYPE_NONE, LQ_DTYPE_F32, 0, 0 }, { LQ_QTYPE_NONE, LQ_DTYPE_F16, 0, 0 },
		{ LQ_QTYPE_NONE, LQ_DTYPE_BF16, 0, 0 }, { LQ_QTYPE_NF4, LQ_DTYPE_BF16, 64, 1 },
		{ LQ_QTYPE_NF4, LQ_DTYPE_BF16, 64, 0 }, { LQ_QTYPE_FP4, LQ_DTYPE_BF16, 32, 0 },
		{ LQ_QTYPE_FP4, LQ_DTYPE_BF16, 128, 1 }, { LQ_QTYPE_INT8, LQ_DTYPE_BF16, 64, 0 },
		{ LQ_QTYPE_INT8, LQ_DTYPE_BF16, 256, 1 },
	};
	/* cols: multiple of the block, blocks across rows, odd (4-bit rows
	 * starting in a low nibble), longer than the stack row buffer, whole
	 * 128-column chunks of the AVX-512 decode kernels (256, 384), and a
	 * matrix of several 64 KiB decode tasks (300 x 1024) */
	uint64_t shapes[][2] = { { 37, 64 }, { 19, 96 }, { 11, 33 }, { 5, 1500 }, { 7, 256 }, { 3, 384 },
				 { 300, 1024 } };
	for (size_t s = 0; s < sizeof st / sizeof st[0]; s++)
		for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
			uint64_t R = shapes[k][0], K = shapes[k][1];
			struct owned o;
			CHECK(make_tensor(&o, R, K, st[s].qtype, st[s].dtype, st[s].bs, st[s].dq) == 0);
			struct lq_weight w;
			CHECK_OK(lq_weight_init(&w, &o.t, &e), &e);
			/* rows equal the library's dequantization, bit for bit */
			float *full = malloc(R * K * sizeof(float)), *row = malloc(K * sizeof(float));
			CHECK_OK(lq_tensor_to_f32(&o.t, full, 1, &e), &e);
			int same = 1;
			for (uint64_t r = 0; r < R; r++) {
				lq_weight_row(&w, r, row);
				if (memcmp(row, full + r * K, K * sizeof(float)))
					same = 0;
			}
			CHECK(same, "storage %zu shape %zu: rows differ from lq_tensor_to_f32", s, k);
			size_t n = 70; /* prefill path: a chunk of 64 (16 x 4) and 6 (4 + 2) */
			float *x = malloc(n * K * sizeof(float)), *y0 = malloc(n * R * sizeof(float)),
			      *y1 = malloc(n * R * sizeof(float)), *y2 = malloc(n * R * sizeof(float));
			for (uint64_t i = 0; i < n * K; i++)
				x[i] = frand();
			lq_matmul_ref(&w, x, n, y0);
			lq_matmul(&w, x, n, y1, pool);
			lq_matmul(&w, x, 1, y2, NULL);
			double e1 = rel_err(y1, y0, n * R), e2 = rel_err(y2, y0, R);
			CHECK(e1 < 1e-6 && e2 < 1e-6, "storage %zu shape %zu: fast vs ref %g %g", s, k, e1, e2);
			lq_matmul(&w, x, 3, y2, pool); /* the decode path (few tokens) */
			e2 = rel_err(y2, y0, 3 * R);
			CHECK(e2 < 1e-6, "storage %zu shape %zu: 3 tokens vs ref %g", s, k, e2);
			free(x); free(y0); free(y1); free(y2); free(full); free(row);
			lq_weight_release(&w);
			free_tensor(&o);
		}
	lq_pool_free(pool);
}

/* ------------------------------------------------------------ fixtures */

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
			v = malloc(want * sizeof(float));
			if (fread(v, sizeof(float), want, fp) != want) {
				free(v);
				v = NULL;
			}
		}
	}
	fclose(fp);
	return v;
}

static const int32_t fix_ids[] = { 1, 5, 17, 33, 40, 2, 9, 60, 71, 3, 88, 12, 45, 6, 19, 27, 50, 8, 91, 30, 14, 66, 23, 4 };
#define NIDS (sizeof fix_ids / sizeof fix_ids[0])

static void check_forward_sample(struct lq_run *r, const char *arch);

static void test_fixture(const char *arch, int qtype)
{
	char dir[256], ref[256], tmp[] = "/tmp/test_run.XXXXXX";
	snprintf(dir, sizeof dir, "tests/fixtures/run/ckpt-%s", arch);
	snprintf(ref, sizeof ref, "tests/fixtures/run/%s%s.ref.npy", arch,
		 qtype == LQ_QTYPE_NF4 ? ".nf4" : "");
	if (access(dir, R_OK)) {
		printf("skipping %s: run from the repository root\n", dir);
		return;
	}
	struct lq_error e = {0};
	struct lq_pack_opts po;
	lq_pack_opts_init(&po);
	po.qtype = qtype;
	po.nthreads = 1;
	int fd = mkstemp(tmp);
	CHECK(fd >= 0);
	if (fd < 0)
		return;
	CHECK_OK(lq_pack(dir, fd, tmp, &po, &e), &e);
	close(fd);
	struct lq_file *f = NULL;
	struct lq_model *m = NULL;
	struct lq_run *r = NULL;
	CHECK_OK(lq_file_open(&f, tmp, &e), &e);
	unlink(tmp);
	if (!f)
		return;
	CHECK_OK(lq_model_from_lq(&m, f, &e), &e);
	struct lq_run_opts ro;
	lq_run_opts_init(&ro);
	ro.nthreads = 2;
	ro.max_ctx = 64;
	if (m)
		CHECK_OK(lq_run_create(&r, m, f, &ro, &e), &e);
	if (r) {
		int64_t V = lq_run_vocab(r);
		float *lg = malloc(NIDS * (size_t)V * sizeof(float));
		float *want = load_npy(ref, NIDS * (size_t)V);
		CHECK(want != NULL, "cannot read %s", ref);
		CHECK_OK(lq_run_forward(r, fix_ids, NIDS, 0, lg, 1, &e), &e);
		double worst = 0;
		for (size_t t = 0; want && t < NIDS; t++) {
			double er = rel_err(lg + t * (size_t)V, want + t * (size_t)V, (size_t)V);
			if (er > worst)
				worst = er;
		}
		CHECK(want && worst < 1e-4, "%s %s: worst row rel L2 %g", arch, lq_qtype_name(qtype), worst);
		/* token by token through the KV cache gives the same last rows (a
		 * prefill of 18: Phi-3's longrope switches to its long factors past
		 * 16 tokens, and keys cached before the switch keep the short ones,
		 * as in transformers) */
		float *one = malloc((size_t)V * sizeof(float));
		CHECK_OK(lq_run_forward(r, fix_ids, 18, 0, NULL, 0, &e), &e);
		double wk = 0;
		for (size_t t = 18; t < NIDS; t++) {
			CHECK_OK(lq_run_forward(r, fix_ids + t, 1, (int64_t)t, one, 0, &e), &e);
			double er = rel_err(one, lg + t * (size_t)V, (size_t)V);
			if (er > wk)
				wk = er;
		}
		CHECK(wk < 1e-5, "%s: cached decode differs by %g", arch, wk);
		CHECK(lq_run_pos(r) == (int64_t)NIDS);
		/* the greedy step: lq_sample's pick at temperature 0 from the same
		 * logits, prefill and decode (each compared with lq_run_forward over
		 * the same tokens: Phi-3's rope factors depend on the sequence length) */
		int32_t id = -1, want_id;
		struct lq_sample_opts greedy;
		lq_sample_opts_init(&greedy);
		greedy.temperature = 0;
		CHECK_OK(lq_run_forward(r, fix_ids, 12, 0, one, 0, &e), &e);
		want_id = lq_sample(one, V, &greedy, NULL, 0, NULL);
		CHECK_OK(lq_run_forward_argmax(r, fix_ids, 12, 0, &id, &e), &e);
		CHECK(id == want_id, "%s: argmax after 12 tokens %d, logits say %d", arch, id, want_id);
		CHECK(lq_run_pos(r) == 12);
		CHECK_OK(lq_run_forward(r, fix_ids + 12, 1, 12, one, 0, &e), &e);
		want_id = lq_sample(one, V, &greedy, NULL, 0, NULL);
		CHECK_OK(lq_run_forward_argmax(r, fix_ids + 12, 1, 12, &id, &e), &e);
		CHECK(id == want_id, "%s: argmax of a decode step %d, logits say %d", arch, id, want_id);
		CHECK(lq_run_forward_argmax(r, fix_ids, 0, 0, &id, &e) == LQ_ERR_INVALID);
		CHECK(lq_run_forward_argmax(r, fix_ids, 1, 14, &id, &e) == LQ_ERR_INVALID);
		CHECK(strstr(e.msg, "position") != NULL, "%s", e.msg);
		{
			/* several greedy steps in one call: the ids of step-by-step calls */
			int32_t step[6], chain[6], t = id;
			for (int i = 0; i < 6; i++) {
				CHECK_OK(lq_run_forward_argmax(r, &t, 1, 13 + i, &step[i], &e), &e);
				t = step[i];
			}
			CHECK_OK(lq_run_forward_argmax_n(r, id, 13, 6, chain, &e), &e);
			CHECK(!memcmp(step, chain, sizeof step), "%s: lq_run_forward_argmax_n differs from single steps", arch);
			CHECK(lq_run_pos(r) == 19, "pos %lld", (long long)lq_run_pos(r));
			CHECK(lq_run_forward_argmax_n(r, id, 13, 0, chain, &e) == LQ_ERR_INVALID);
			CHECK(lq_run_forward_argmax_n(r, (int32_t)V, 13, 2, chain, &e) == LQ_ERR_INVALID);
			CHECK(strstr(e.msg, "vocabulary") != NULL, "%s", e.msg);
			CHECK(lq_run_forward_argmax_n(r, id, 20, 2, chain, &e) == LQ_ERR_INVALID);
			CHECK(strstr(e.msg, "position") != NULL, "%s", e.msg);
			CHECK(lq_run_forward_argmax_n(r, id, 13, (size_t)lq_run_max_ctx(r), chain, &e) == LQ_ERR_INVALID);
			CHECK(strstr(e.msg, "context length") != NULL, "%s", e.msg);
		}
		check_forward_sample(r, arch);
		CHECK_OK(lq_run_forward(r, fix_ids, NIDS, 0, NULL, 0, &e), &e);
		/* errors */
		int32_t bad = (int32_t)V;
		CHECK(lq_run_forward(r, &bad, 1, 0, one, 0, &e) == LQ_ERR_INVALID);
		CHECK(strstr(e.msg, "vocabulary") != NULL, "%s", e.msg);
		CHECK(lq_run_forward(r, fix_ids, 1, 64, one, 0, &e) == LQ_ERR_INVALID);
		int32_t many[65] = {0};
		CHECK(lq_run_forward(r, many, 65, 0, one, 0, &e) == LQ_ERR_INVALID);
		CHECK(strstr(e.msg, "context length") != NULL, "%s", e.msg);
		free(one);
		free(lg);
		free(want);
	}
	lq_run_free(r);
	lq_model_free(m);
	lq_file_close(f);
}

static void test_sampler(void)
{
	float l[8] = { 0.1f, 2.0f, -1.0f, 1.9f, 0.0f, 0.5f, -3.0f, 1.0f };
	float c[8];
	struct lq_sample_opts o;
	struct lq_rng g;
	lq_rng_seed(&g, 1);
	lq_sample_opts_init(&o);
	o.temperature = 0;
	memcpy(c, l, sizeof c);
	CHECK(lq_sample(c, 8, &o, NULL, 0, &g) == 1);
	/* repetition penalty moves the argmax away from a seen token */
	int32_t seen[1] = { 1 };
	o.repetition_penalty = 1.2;
	memcpy(c, l, sizeof c);
	CHECK(lq_sample(c, 8, &o, seen, 1, &g) == 3);
	o.repetition_penalty = 1;
	o.temperature = 1;
	o.top_k = 1;
	memcpy(c, l, sizeof c);
	CHECK(lq_sample(c, 8, &o, NULL, 0, &g) == 1);
	/* top-p 0.5: only the two best can come out; same seed, same draws */
	o.top_k = 0;
	o.top_p = 0.5;
	int counts[8] = {0}, seq1[50], seq2[50];
	lq_rng_seed(&g, 7);
	for (int i = 0; i < 50; i++) {
		memcpy(c, l, sizeof c);
		seq1[i] = lq_sample(c, 8, &o, NULL, 0, &g);
		counts[seq1[i]]++;
	}
	lq_rng_seed(&g, 7);
	for (int i = 0; i < 50; i++) {
		memcpy(c, l, sizeof c);
		seq2[i] = lq_sample(c, 8, &o, NULL, 0, &g);
	}
	CHECK(counts[1] + counts[3] == 50 && counts[1] > 0 && counts[3] > 0);
	CHECK(!memcmp(seq1, seq2, sizeof seq1));
	/* plain sampling reaches every token */
	o.top_p = 1;
	memset(counts, 0, sizeof counts);
	for (int i = 0; i < 4000; i++) {
		memcpy(c, l, sizeof c);
		counts[lq_sample(c, 8, &o, NULL, 0, &g)]++;
	}
	int all = 1;
	for (int i = 0; i < 8; i++)
		all &= counts[i] > 0;
	CHECK(all && counts[1] > counts[0]);
}

/* The pick's fixed point (lq_blocks.h): the shift, the 128-bit draw
 * target against the compiler's 128-bit product, and lq_sample's draws on
 * a small row against the probabilities and top-p / min-p sets computed
 * here in double: every drawn token in the set, the frequencies within 5
 * standard deviations. */
static void test_pick_fixed(void)
{
	CHECK(lq_pick_shift(1) == 62 && lq_pick_shift(2) == 61 && lq_pick_shift(3) == 60 && lq_pick_shift(4) == 60 &&
	      lq_pick_shift(128256) == 45);
	CHECK(lq_pick_weight(1.0, 45) == (uint64_t)1 << 45 && lq_pick_weight(0.5, 45) == (uint64_t)1 << 44 &&
	      lq_pick_weight(NAN, 45) == 0 && lq_pick_weight(0x1.0p-46, 45) == 0 && lq_pick_weight(-0.0, 45) == 0);
	int bad = 0;
	uint64_t x = 0x243F6A8885A308D3ull;
	for (int i = 0; i < 100000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint64_t y = x * 0x9E3779B97F4A7C15ull;
		uint64_t w = (i % 3 == 0) ? ((uint64_t)1 << 62) - 1 - (y & 0xffff) : (y >> (2 + i % 60)) + 1;
		uint64_t xx = i % 7 == 0 ? ~(uint64_t)0 : x;
		uint64_t want = (uint64_t)(((unsigned __int128)(xx >> 11) * w) >> 53);
		bad += lq_pick_target(xx, w) != want || want >= w;
	}
	CHECK(bad == 0, "lq_pick_target: %d of 100000 wrong", bad);
	static const float l[8] = { 2.0f, 1.5f, 1.4f, 0.3f, -0.2f, -1.0f, -2.5f, 0.9f };
	static const struct { double tp, mp; } cases[] = { { 1.0, 0.0 }, { 0.8, 0.0 }, { 0.95, 0.0 }, { 1.0, 0.3 }, { 0.9, 0.2 } };
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		/* the reference, sorted descending (ids sorted by value here) */
		int ord[8] = { 0, 1, 2, 7, 3, 4, 5, 6 };
		double p[8], sum = 0;
		for (int i = 0; i < 8; i++)
			sum += p[i] = exp((double)l[ord[i]] - 2.0);
		for (int i = 0; i < 8; i++)
			p[i] /= sum;
		int k = 8;
		if (cases[c].tp < 1) { /* drop tails with cumulative probability <= 1 - top_p */
			double tail = 0;
			for (int i = 7; i >= 1; i--) {
				tail += p[i];
				if (tail > 1 - cases[c].tp)
					break;
				k = i;
			}
		}
		for (int i = 1; i < k; i++)
			if (p[i] < cases[c].mp * p[0]) {
				k = i;
				break;
			}
		double ks = 0;
		for (int i = 0; i < k; i++)
			ks += p[i];
		struct lq_sample_opts o;
		lq_sample_opts_init(&o);
		o.temperature = 1;
		o.top_k = 0;
		o.top_p = cases[c].tp;
		o.min_p = cases[c].mp;
		struct lq_rng g;
		lq_rng_seed(&g, 11 + c);
		int cnt[8] = {0}, outside = 0;
		const int N = 40000;
		for (int d = 0; d < N; d++) {
			float row[8];
			memcpy(row, l, sizeof row);
			int32_t id = lq_sample(row, 8, &o, NULL, 0, &g);
			int r = -1;
			for (int i = 0; i < 8; i++)
				if (ord[i] == id)
					r = i;
			if (r < 0 || r >= k)
				outside++;
			else
				cnt[r]++;
		}
		int off = 0;
		for (int i = 0; i < k; i++) {
			const double q = p[i] / ks, sd = sqrt(N * q * (1 - q));
			off += fabs(cnt[i] - N * q) > 5 * sd + 1;
		}
		CHECK(outside == 0 && off == 0, "top-p %g min-p %g: %d draws outside the %d kept, %d counts off", cases[c].tp,
		      cases[c].mp, outside, k, off);
	}
}

static int cmp_f_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* lq_sample_kept on the set lq_sample's top-k keeps (found here by brute
 * force, shuffled) picks what lq_sample picks, with the same draws: the
 * contract the device's draw from a top-k set (lq_cuda_pick) follows, and a check of
 * lq_sample's own selection and sorts (radix select and sort) against
 * lq_sample_kept's comparison sort, top-k off included.  Logits on a
 * coarse grid, so that the k-th value has ties. */
static void test_sample_kept(void)
{
	static const double temps[] = { 0.6, 1.0, 1.7 };
	static const int ks[] = { 1, 2, 5, 40, 50, 0 };
	static const double tps[] = { 1.0, 0.9, 0.5 };
	static const double mps[] = { 0.0, 0.05 };
	int fails = 0, trials = 0, tied = 0;
	for (int trial = 0; trial < 400; trial++) {
		int64_t V = 60 + (int64_t)(rs % 3000);
		float *l = malloc((size_t)V * sizeof *l), *c = malloc((size_t)V * sizeof *c),
		      *sorted = malloc((size_t)V * sizeof *sorted), *vals = malloc((size_t)V * sizeof *vals);
		int32_t *ids = malloc((size_t)V * sizeof *ids);
		if (!l || !c || !sorted || !vals || !ids)
			return;
		for (int64_t i = 0; i < V; i++)
			l[i] = roundf(frand() * 24.0f) * 0.25f;
		if (trial % 7 == 0)
			l[rs % (uint64_t)V] = -0.0f;
		struct lq_sample_opts o;
		lq_sample_opts_init(&o);
		o.temperature = temps[trial % 3];
		o.top_k = ks[(trial / 3) % 6];
		o.top_p = tps[(trial / 15) % 3];
		o.min_p = mps[(trial / 45) % 2];
		float t = (float)o.temperature;
		for (int64_t i = 0; i < V; i++)
			sorted[i] = l[i] / t;
		qsort(sorted, (size_t)V, sizeof *sorted, cmp_f_desc);
		float kth = o.top_k ? sorted[o.top_k - 1] : -INFINITY;
		size_t n = 0;
		for (int64_t i = 0; i < V; i++)
			if (l[i] / t >= kth) {
				vals[n] = l[i] / t;
				ids[n++] = (int32_t)i;
			}
		tied += o.top_k && n > (size_t)o.top_k;
		for (size_t i = n; i > 1; i--) { /* shuffle */
			size_t j = (size_t)(rs % i);
			frand();
			float tv = vals[i - 1];
			int32_t ti = ids[i - 1];
			vals[i - 1] = vals[j];
			ids[i - 1] = ids[j];
			vals[j] = tv;
			ids[j] = ti;
		}
		for (uint64_t seed = 1; seed <= 5; seed++) {
			struct lq_rng a, b;
			lq_rng_seed(&a, seed);
			lq_rng_seed(&b, seed);
			memcpy(c, l, (size_t)V * sizeof *c);
			int32_t want = lq_sample(c, V, &o, NULL, 0, &a);
			int32_t got = lq_sample_kept(vals, ids, n, &o, &b);
			trials++;
			if (want != got || memcmp(&a, &b, sizeof a))
				fails++;
		}
		free(l);
		free(c);
		free(sorted);
		free(vals);
		free(ids);
	}
	/* the most likely tokens all zero, +0 and -0 mixed (equal: their order
	 * is their ids'), top-k on and off */
	for (int k = 0; k <= 3; k += 3) {
		float z[64], zs[64], vals[64];
		int32_t ids[64];
		for (int i = 0; i < 64; i++) {
			z[i] = i % 5 == 4 ? -1.0f - (float)i : ((i * 7) % 3 ? -0.0f : 0.0f);
			vals[i] = z[i];
			ids[i] = i;
		}
		struct lq_sample_opts o;
		lq_sample_opts_init(&o);
		o.top_k = k;
		size_t n = 64;
		if (k) { /* the kept set: every zero */
			n = 0;
			for (int i = 0; i < 64; i++)
				if (z[i] == 0.0f) {
					vals[n] = z[i];
					ids[n++] = i;
				}
		}
		for (uint64_t seed = 1; seed <= 40; seed++) {
			struct lq_rng a, b;
			lq_rng_seed(&a, seed);
			lq_rng_seed(&b, seed);
			memcpy(zs, z, sizeof zs);
			int32_t want = lq_sample(zs, 64, &o, NULL, 0, &a);
			int32_t got = lq_sample_kept(vals, ids, n, &o, &b);
			trials++;
			if (want != got)
				fails++;
		}
	}
	CHECK(fails == 0, "lq_sample_kept differs from lq_sample in %d of %d draws", fails, trials);
	CHECK(tied > 50, "only %d sets had ties at the k-th value", tied);
	struct lq_sample_opts o;
	lq_sample_opts_init(&o);
	CHECK(lq_sample_kept(NULL, NULL, 0, &o, NULL) == -1);
}

/* lq_run_forward_sample picks what lq_run_forward + lq_sample pick, step
 * by step through the cache, with every sampling option, and leaves the
 * position where lq_run_forward does. */
static void check_forward_sample(struct lq_run *r, const char *arch)
{
	int64_t V = lq_run_vocab(r);
	float *lg = malloc((size_t)V * sizeof *lg);
	if (!lg)
		return;
	struct lq_sample_opts os[LQ_SAMPLE_CASES];
	lq_sample_cases(os);
	for (int oi = 0; oi < LQ_SAMPLE_CASES; oi++) {
		struct lq_rng a, b;
		lq_rng_seed(&a, 42 + (uint64_t)oi);
		lq_rng_seed(&b, 42 + (uint64_t)oi);
		int32_t seen[NIDS + 8], got = -1, want = -1;
		memcpy(seen, fix_ids, 10 * sizeof *seen);
		size_t ns = 10;
		struct lq_error e = {0};
		CHECK_OK(lq_run_forward_sample(r, seen, ns, 0, &os[oi], seen, ns, &b, &got, &e), &e);
		CHECK_OK(lq_run_forward(r, seen, ns, 0, lg, 0, &e), &e);
		want = lq_sample(lg, V, &os[oi], seen, ns, &a);
		CHECK(got == want, "%s options %d: prompt step picked %d, lq_sample %d", arch, oi, got, want);
		for (int step = 0; step < 6; step++) {
			seen[ns] = want;
			ns++;
			CHECK_OK(lq_run_forward_sample(r, &seen[ns - 1], 1, (int64_t)ns - 1, &os[oi], seen, ns, &b, &got, &e),
				 &e);
			CHECK(lq_run_pos(r) == (int64_t)ns);
			CHECK_OK(lq_run_forward(r, &seen[ns - 1], 1, (int64_t)ns - 1, lg, 0, &e), &e);
			want = lq_sample(lg, V, &os[oi], seen, ns, &a);
			CHECK(got == want, "%s options %d step %d: picked %d, lq_sample %d", arch, oi, step, got, want);
		}
		CHECK(!memcmp(&a, &b, sizeof a), "%s options %d: the generators drifted apart", arch, oi);
	}
	/* several steps in one call: the ids and draws of single steps (each
	 * pick appended to seen for the penalty) */
	for (int oi = 0; oi < LQ_SAMPLE_CASES; oi++) {
		struct lq_rng a, b;
		lq_rng_seed(&a, 7 + (uint64_t)oi);
		lq_rng_seed(&b, 7 + (uint64_t)oi);
		int32_t seen[NIDS + 8], want[6], got[6], first = -1;
		struct lq_error e = {0};
		memcpy(seen, fix_ids, 10 * sizeof *seen);
		CHECK_OK(lq_run_forward_sample(r, seen, 10, 0, &os[oi], seen, 10, &a, &first, &e), &e);
		seen[10] = first;
		for (int i = 0; i < 6; i++) {
			CHECK_OK(lq_run_forward_sample(r, &seen[10 + i], 1, 10 + i, &os[oi], seen, 11 + (size_t)i, &a, &want[i], &e),
				 &e);
			seen[11 + i] = want[i];
		}
		CHECK_OK(lq_run_forward_sample(r, fix_ids, 10, 0, &os[oi], fix_ids, 10, &b, &first, &e), &e);
		memcpy(seen, fix_ids, 10 * sizeof *seen);
		seen[10] = first;
		CHECK_OK(lq_run_forward_sample_n(r, first, 10, 6, &os[oi], seen, 11, &b, got, &e), &e);
		CHECK(!memcmp(want, got, sizeof want), "%s options %d: lq_run_forward_sample_n differs from single steps", arch,
		      oi);
		CHECK(!memcmp(&a, &b, sizeof a), "%s options %d: lq_run_forward_sample_n drew differently", arch, oi);
		CHECK(lq_run_pos(r) == 16, "pos %lld", (long long)lq_run_pos(r));
		CHECK(lq_run_forward_sample_n(r, first, 10, 0, &os[oi], seen, 11, &b, got, &e) == LQ_ERR_INVALID);
		CHECK(lq_run_forward_sample_n(r, first, 17, 1, &os[oi], seen, 11, &b, got, &e) == LQ_ERR_INVALID);
		CHECK(strstr(e.msg, "position") != NULL, "%s", e.msg);
		CHECK(lq_run_forward_sample_n(r, first, 10, (size_t)lq_run_max_ctx(r), &os[oi], seen, 11, &b, got, &e) ==
		      LQ_ERR_INVALID);
		CHECK(strstr(e.msg, "context length") != NULL, "%s", e.msg);
		if (os[oi].temperature > 0)
			CHECK(lq_run_forward_sample_n(r, first, 10, 2, &os[oi], seen, 11, NULL, got, &e) == LQ_ERR_INVALID);
	}
	struct lq_error e = {0};
	int32_t id;
	CHECK(lq_run_forward_sample(r, fix_ids, 1, 0, &os[0], NULL, 0, NULL, &id, &e) == LQ_ERR_INVALID);
	struct lq_rng g;
	lq_rng_seed(&g, 1);
	CHECK(lq_run_forward_sample(r, fix_ids, 0, 0, &os[0], NULL, 0, &g, &id, &e) == LQ_ERR_INVALID);
	CHECK(lq_run_forward_sample(r, fix_ids, 1, 999, &os[0], NULL, 0, &g, &id, &e) == LQ_ERR_INVALID);
	free(lg);
}

/* lq_pool_memcpy against memcpy: sizes around the 64 KiB pieces and the
 * page rounding, odd alignments, the bytes around the destination untouched. */
static void test_pool_memcpy(void)
{
	static const int threads[] = {1, 2, 3, 8};
	static const size_t sizes[] = {0, 1, 4095, 65536, 131071, 131072, 131073, 200003, (1u << 20) + 17,
				       (5u << 20) + 3};
	const size_t max = (5u << 20) + 3, pad = 64;
	unsigned char *src = malloc(max + pad), *dst = malloc(max + 2 * pad);
	for (size_t i = 0; i < max + pad; i++)
		src[i] = (unsigned char)(i * 2654435761u >> 13);
	struct lq_error e;
	for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
		struct lq_pool *pool = NULL;
		CHECK_OK(lq_pool_create(&pool, threads[t], &e), &e);
		for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
			for (size_t off = 0; off < 2; off++) {
				const size_t n = sizes[k];
				memset(dst, 0xa5, max + 2 * pad);
				lq_pool_memcpy(pool, dst + pad + off, src + 3 * off, n);
				int ok = memcmp(dst + pad + off, src + 3 * off, n) == 0;
				for (size_t i = 0; i < pad + off; i++)
					ok &= dst[i] == 0xa5;
				for (size_t i = pad + off + n; i < max + 2 * pad; i++)
					ok &= dst[i] == 0xa5;
				CHECK(ok, "lq_pool_memcpy: %d threads, %zu bytes, offset %zu", threads[t], n, off);
			}
		lq_pool_free(pool);
	}
	lq_pool_memcpy(NULL, dst, src, 1000); /* no pool: the caller's memcpy */
	CHECK(memcmp(dst, src, 1000) == 0, "lq_pool_memcpy without a pool");
	free(src);
	free(dst);
}

int main(void)
{
	test_pool_memcpy();
	test_matmul();
	static const char *const archs[] = { "llama", "llama-bias", "mistral", "qwen2", "phi3", "gemma2" };
	for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
		test_fixture(archs[i], LQ_QTYPE_NONE);
		test_fixture(archs[i], LQ_QTYPE_NF4);
	}
	test_sampler();
	test_pick_fixed();
	test_sample_kept();
	return test_summary();
}
