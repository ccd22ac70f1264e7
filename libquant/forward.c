/*
 * forward.c - the CPU forward pass of Llama, Mistral, Qwen2, Phi-3 and
 * Gemma 2 over an LQ file (see lq_run.h), following transformers 5.x
 * computing in float32 with eager attention:
 *
 *   x = embed[tok] * embed_scale
 *   per layer:  h = norm(x); q,k,v = h W (+ bias); rope(q, k); a = attn(q, K, V)
 *               o = a Wo (+ bias)
 *     Gemma 2:  x += post_attn_norm(o); x += post_ffn_norm(mlp(pre_ffn_norm(x)))
 *     others:   x += o; x += mlp(post_attn_norm(x))
 *   logits = lm_head(final_norm(x)), soft-capped for Gemma 2
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "internal.h"
#include "lq_blocks.h" /* lq_act */

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct layer {
	struct lq_weight q, k, v, qkv, o, gate, up, gate_up, down;
	float *attn_norm, *post_attn_norm, *pre_ffn_norm, *post_ffn_norm;
	float *q_bias, *k_bias, *v_bias, *o_bias;
	float *gate_bias, *up_bias, *down_bias;
	float *kc, *vc;  /* KV cache [cap][kvdim] (keys after RoPE) */
	int64_t window;  /* sliding window, 0 = full */
};

struct lq_run {
	const struct lq_model *m;
	const struct lq_file *f;
	const struct lq_model_config *c;
	struct lq_pool *pool;
	struct lq_weight embed, lm_head;
	float *final_norm;
	struct layer *L;
	int64_t nl, H, KV, hd, hidden, inter, vocab, qdim, kvdim, rot;
	int64_t max_ctx, cap, pos;
	float embed_scale;
	float *inv_freq;  /* [rot / 2] */
	/* scratch for ncap tokens */
	size_t ncap;
	float *x, *h, *q, *k, *v, *att, *o, *g, *u, *fused;
	/* another backend (CUDA) doing the work, or NULL for this CPU runtime */
	const struct lq_backend *be;
	void *be_state;
	float *samp_lg; /* [vocab]: lq_run_forward_sample's row when the backend sends it back */
	char desc[64];
};

static float *falloc(uint64_t n)
{
	if (n > SIZE_MAX / sizeof(float))
		return NULL;
	return calloc(n ? (size_t)n : 1, sizeof(float));
}

static const struct lq_tensor *role_tensor(struct lq_run *r, int role, int layer)
{
	return lq_model_role_tensor(r->m, r->f, role, layer);
}

static int need_weight(struct lq_run *r, int role, int layer, uint64_t rows, uint64_t cols,
		       struct lq_weight *w, struct lq_error *err)
{
	const struct lq_tensor *t = role_tensor(r, role, layer);
	if (!t) {
		if (layer >= 0)
			return lq_fail(err, LQ_ERR_NOTFOUND, "the model file has no %s weight in layer %d",
				       lq_role_name(role), layer);
		return lq_fail(err, LQ_ERR_NOTFOUND, "the model file has no %s weight",
			       lq_role_name(role));
	}
	if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
		return lq_fail(err, LQ_ERR_SHAPE, "tensor '%s': shape does not match [%llu, %llu]",
			       t->name, (unsigned long long)rows, (unsigned long long)cols);
	return lq_weight_init(w, t, err);
}

/* A vector parameter as float32 (NULL and LQ_OK when absent and optional). */
static int get_vec(struct lq_run *r, int role, int layer, uint64_t n, int required,
		   float **out, struct lq_error *err)
{
	*out = NULL;
	const struct lq_tensor *t = role_tensor(r, role, layer);
	if (!t) {
		if (lq_model_find_role(r->m, role, layer) < 0 && !required)
			return LQ_OK;
		if (layer >= 0)
			return lq_fail(err, LQ_ERR_NOTFOUND, "the model file has no %s in layer %d",
				       lq_role_name(role), layer);
		return lq_fail(err, LQ_ERR_NOTFOUND, "the model file has no %s", lq_role_name(role));
	}
	if (t->nelem != n)
		return lq_fail(err, LQ_ERR_SHAPE, "tensor '%s': %llu elements, %llu expected", t->name,
			       (unsigned long long)t->nelem, (unsigned long long)n);
	float *v = falloc(n);
	if (!v)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	int rc = lq_tensor_to_f32(t, v, 1, err);
	if (rc) {
		free(v);
		return rc;
	}
	*out = v;
	return LQ_OK;
}

static void layer_release(struct layer *l)
{
	struct lq_weight *ws[] = { &l->q, &l->k, &l->v, &l->qkv, &l->o, &l->gate, &l->up,
				   &l->gate_up, &l->down };
	for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
		lq_weight_release(ws[i]);
	float *vs[] = { l->attn_norm, l->post_attn_norm, l->pre_ffn_norm, l->post_ffn_norm,
			l->q_bias, l->k_bias, l->v_bias, l->o_bias, l->gate_bias, l->up_bias,
			l->down_bias, l->kc, l->vc };
	for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++)
		free(vs[i]);
}

static void scratch_free(struct lq_run *r)
{
	float **s[] = { &r->x, &r->h, &r->q, &r->k, &r->v, &r->att, &r->o, &r->g, &r->u,
			&r->fused };
	for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
		free(*s[i]);
		*s[i] = NULL;
	}
	r->ncap = 0;
}

void lq_run_free(struct lq_run *r)
{
	if (!r)
		return;
	if (r->L)
		for (int64_t i = 0; i < r->nl; i++)
			layer_release(&r->L[i]);
	free(r->L);
	if (r->be)
		r->be->free(r->be_state);
	free(r->samp_lg);
	lq_weight_release(&r->embed);
	lq_weight_release(&r->lm_head);
	free(r->final_norm);
	free(r->inv_freq);
	scratch_free(r);
	lq_pool_free(r->pool);
	free(r);
}

static int prepare_layer(struct lq_run *r, int64_t i, struct lq_error *err)
{
	const struct lq_model_config *c = r->c;
	struct layer *l = &r->L[i];
	int li = (int)i, rc;
	uint64_t Hd = (uint64_t)r->hidden, I = (uint64_t)r->inter;
	l->window = c->layer_window ? c->layer_window[i] : 0;
	if ((rc = get_vec(r, LQ_ROLE_ATTN_NORM, li, Hd, 1, &l->attn_norm, err)) ||
	    (rc = get_vec(r, LQ_ROLE_POST_ATTN_NORM, li, Hd, 1, &l->post_attn_norm, err)))
		return rc;
	if (c->sandwich_norms &&
	    ((rc = get_vec(r, LQ_ROLE_PRE_FFN_NORM, li, Hd, 1, &l->pre_ffn_norm, err)) ||
	     (rc = get_vec(r, LQ_ROLE_POST_FFN_NORM, li, Hd, 1, &l->post_ffn_norm, err))))
		return rc;
	if (c->fused_qkv) {
		rc = need_weight(r, LQ_ROLE_QKV, li, (uint64_t)(r->qdim + 2 * r->kvdim), Hd, &l->qkv, err);
	} else {
		if ((rc = need_weight(r, LQ_ROLE_Q, li, (uint64_t)r->qdim, Hd, &l->q, err)) ||
		    (rc = need_weight(r, LQ_ROLE_K, li, (uint64_t)r->kvdim, Hd, &l->k, err)))
			return rc;
		rc = need_weight(r, LQ_ROLE_V, li, (uint64_t)r->kvdim, Hd, &l->v, err);
	}
	if (rc || (rc = need_weight(r, LQ_ROLE_O, li, Hd, (uint64_t)r->qdim, &l->o, err)))
		return rc;
	if ((rc = get_vec(r, LQ_ROLE_Q_BIAS, li, (uint64_t)r->qdim, 0, &l->q_bias, err)) ||
	    (rc = get_vec(r, LQ_ROLE_K_BIAS, li, (uint64_t)r->kvdim, 0, &l->k_bias, err)) ||
	    (rc = get_vec(r, LQ_ROLE_V_BIAS, li, (uint64_t)r->kvdim, 0, &l->v_bias, err)) ||
	    (rc = get_vec(r, LQ_ROLE_O_BIAS, li, Hd, 0, &l->o_bias, err)))
		return rc;
	if (c->fused_gate_up) {
		rc = need_weight(r, LQ_ROLE_GATE_UP, li, 2 * I, Hd, &l->gate_up, err);
	} else {
		if ((rc = need_weight(r, LQ_ROLE_GATE, li, I, Hd, &l->gate, err)))
			return rc;
		rc = need_weight(r, LQ_ROLE_UP, li, I, Hd, &l->up, err);
	}
	if (rc || (rc = need_weight(r, LQ_ROLE_DOWN, li, Hd, I, &l->down, err)))
		return rc;
	if ((rc = get_vec(r, LQ_ROLE_GATE_BIAS, li, I, 0, &l->gate_bias, err)) ||
	    (rc = get_vec(r, LQ_ROLE_UP_BIAS, li, I, 0, &l->up_bias, err)) ||
	    (rc = get_vec(r, LQ_ROLE_DOWN_BIAS, li, Hd, 0, &l->down_bias, err)))
		return rc;
	return LQ_OK;
}

void lq_run_opts_init(struct lq_run_opts *o)
{
	memset(o, 0, sizeof *o);
	o->nthreads = 1;
	o->backend = LQ_BACKEND_CPU;
	o->compute = -1;
}

/* The compute dtype recorded in the file's metadata (bf16 when absent). */
static int file_compute(const struct lq_file *f)
{
	size_t len = 0;
	const char *meta = lq_file_metadata(f, &len);
	int c = LQ_COMPUTE_BF16;
	json_t *root = meta ? json_loadb(meta, len, 0, NULL) : NULL;
	json_t *q = json_object_get(root, "quantization");
	const char *name = json_string_value(json_object_get(q, "compute_dtype"));
	if (name && lq_compute_parse(name) >= 0)
		c = lq_compute_parse(name);
	json_decref(root);
	return c;
}

/* Hand the model to the CUDA backend when o asks for it (and, for AUTO, a
 * device is there).  *used says whether it did. */
static int use_gpu(struct lq_run *r, const struct lq_run_opts *o, int *used, struct lq_error *err)
{
	const struct lq_backend *be = lq_backend_cuda();
	int ndev = be ? lq_gpu_count() : 0;
	*used = 0;
	if (o->backend == LQ_BACKEND_AUTO && ndev == 0)
		return LQ_OK;
	if (!be)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "this libquant was built without CUDA");
	if (o->device < 0 || o->device >= ndev)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "no CUDA device %d (%d usable device%s)",
			       o->device, ndev, ndev == 1 ? "" : "s");
	struct lq_run_opts go = *o;
	if (go.compute < 0 || go.compute > LQ_COMPUTE_F32)
		go.compute = file_compute(r->f);
	go.max_ctx = r->max_ctx;
	int rc = be->prepare(&r->be_state, r->m, r->f, &go, err);
	if (rc)
		return rc;
	r->be = be;
	*used = 1;
	return LQ_OK;
}

int lq_run_create(struct lq_run **out, const struct lq_model *m, const struct lq_file *f,
		  const struct lq_run_opts *o, struct lq_error *err)
{
	*out = NULL;
	struct lq_run *r = calloc(1, sizeof *r);
	if (!r)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	r->m = m;
	r->f = f;
	r->c = lq_model_config(m);
	const struct lq_model_config *c = r->c;
	r->nl = c->num_layers;
	r->H = c->num_heads;
	r->KV = c->num_kv_heads;
	r->hd = c->head_dim;
	r->hidden = c->hidden_size;
	r->inter = c->intermediate_size;
	r->vocab = c->vocab_size;
	r->qdim = r->H * r->hd;
	r->kvdim = r->KV * r->hd;
	r->rot = c->rope.rotary_dim;
	int rc = lq_model_runtime_check(c, err);
	if (rc)
		goto fail;
	r->max_ctx = c->max_position_embeddings > 0 ? c->max_position_embeddings : 4096;
	if (o && o->max_ctx > 0)
		r->max_ctx = o->max_ctx;
	/* Gemma 2's normalizer sqrt(hidden) as a float32 scalar: the runtime
	 * computes in float32, as transformers does with dtype=float32. */
	r->embed_scale = c->embed_scale != 1.0 ? (float)sqrt((double)r->hidden) : 1.0f;
	if (o && o->backend != LQ_BACKEND_CPU) {
		int use = 0;
		rc = use_gpu(r, o, &use, err);
		if (rc || use) {
			if (rc)
				goto fail;
			*out = r;
			return LQ_OK;
		}
	}
	snprintf(r->desc, sizeof r->desc, "cpu, %d thread%s", o && o->nthreads > 1 ? o->nthreads : 1,
		 o && o->nthreads > 1 ? "s" : "");
	if ((rc = lq_pool_create(&r->pool, o ? o->nthreads : 1, err)))
		goto fail;
	r->inv_freq = falloc((uint64_t)(r->rot / 2));
	r->L = calloc((size_t)r->nl, sizeof *r->L);
	if (!r->inv_freq || !r->L) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		goto fail;
	}
	if ((rc = need_weight(r, LQ_ROLE_EMBED, -1, (uint64_t)r->vocab, (uint64_t)r->hidden,
			      &r->embed, err)) ||
	    (rc = need_weight(r, LQ_ROLE_LM_HEAD, -1, (uint64_t)r->vocab, (uint64_t)r->hidden,
			      &r->lm_head, err)) ||
	    (rc = get_vec(r, LQ_ROLE_FINAL_NORM, -1, (uint64_t)r->hidden, 1, &r->final_norm, err)))
		goto fail;
	for (int64_t i = 0; i < r->nl; i++)
		if ((rc = prepare_layer(r, i, err)))
			goto fail;
	*out = r;
	return LQ_OK;
fail:
	lq_run_free(r);
	return rc;
}

const char *lq_run_backend(const struct lq_run *r) { return r->be ? r->be->name : "cpu"; }
const char *lq_run_device(const struct lq_run *r)
{
	return r->be ? r->be->describe(r->be_state) : r->desc;
}
int64_t lq_run_pos(const struct lq_run *r) { return r->pos; }
int64_t lq_run_max_ctx(const struct lq_run *r) { return r->max_ctx; }
int64_t lq_run_vocab(const struct lq_run *r) { return r->vocab; }

/* ---------------------------------------------------------------- buffers */

static int ensure_scratch(struct lq_run *r, size_t n, struct lq_error *err)
{
	if (n <= r->ncap)
		return LQ_OK;
	scratch_free(r);
	uint64_t N = n, fused = (uint64_t)(r->qdim + 2 * r->kvdim);
	if (fused < 2 * (uint64_t)r->inter)
		fused = 2 * (uint64_t)r->inter;
	r->x = falloc(N * (uint64_t)r->hidden);
	r->h = falloc(N * (uint64_t)r->hidden);
	r->o = falloc(N * (uint64_t)r->hidden);
	r->q = falloc(N * (uint64_t)r->qdim);
	r->att = falloc(N * (uint64_t)r->qdim);
	r->k = falloc(N * (uint64_t)r->kvdim);
	r->v = falloc(N * (uint64_t)r->kvdim);
	r->g = falloc(N * (uint64_t)r->inter);
	r->u = falloc(N * (uint64_t)r->inter);
	r->fused = falloc(N * fused);
	if (!r->x || !r->h || !r->o || !r->q || !r->att || !r->k || !r->v || !r->g || !r->u ||
	    !r->fused) {
		scratch_free(r);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory for %zu tokens of activations", n);
	}
	r->ncap = n;
	return LQ_OK;
}

static int ensure_cache(struct lq_run *r, int64_t need, struct lq_error *err)
{
	if (need <= r->cap)
		return LQ_OK;
	int64_t cap = r->cap ? r->cap : 64;
	while (cap < need)
		cap *= 2;
	if (cap > r->max_ctx)
		cap = r->max_ctx;
	for (int64_t i = 0; i < r->nl; i++) {
		struct layer *l = &r->L[i];
		size_t bytes = (size_t)cap * (size_t)r->kvdim * sizeof(float);
		float *k = realloc(l->kc, bytes), *v;
		if (!k)
			return lq_fail(err, LQ_ERR_NOMEM, "out of memory for the KV cache");
		l->kc = k;
		v = realloc(l->vc, bytes);
		if (!v)
			return lq_fail(err, LQ_ERR_NOMEM, "out of memory for the KV cache");
		l->vc = v;
	}
	r->cap = cap;
	return LQ_OK;
}

/* ------------------------------------------------------------ operations */

/* RMSNorm of n rows: y = x / sqrt(mean(x^2) + eps) * w (Gemma: * (1 + w)). */
static void rmsnorm(const struct lq_run *r, float *y, const float *x, const float *w, size_t n)
{
	int64_t D = r->hidden;
	int plus1 = r->c->norm_plus_one;
	float eps = (float)r->c->rms_norm_eps;
	for (size_t t = 0; t < n; t++) {
		const float *xt = x + t * (size_t)D;
		float *yt = y + t * (size_t)D;
		double ss = 0;
		for (int64_t i = 0; i < D; i++)
			ss += (double)xt[i] * xt[i];
		float var = (float)(ss / (double)D);
		float inv = (float)(1.0 / sqrt((double)(var + eps)));
		for (int64_t i = 0; i < D; i++) {
			float hv = xt[i] * inv;
			yt[i] = plus1 ? hv * (1.0f + w[i]) : w[i] * hv;
		}
	}
}

static void add_bias(float *y, const float *b, size_t n, int64_t d)
{
	if (!b)
		return;
	for (size_t t = 0; t < n; t++)
		for (int64_t i = 0; i < d; i++)
			y[t * (size_t)d + (size_t)i] += b[i];
}

/* Rotate one head vector (rotate_half layout; the first rot dims) by the
 * cos/sin of its position. */
static void rope_apply(const struct lq_run *r, float *v, const float *cs, const float *sn)
{
	int64_t half = r->rot / 2;
	for (int64_t i = 0; i < half; i++) {
		float x1 = v[i], x2 = v[i + half];
		v[i] = x1 * cs[i] - x2 * sn[i];
		v[i + half] = x2 * cs[i] + x1 * sn[i];
	}
}

/* y += a * x (restrict: vectorized without an overlap check). */
static void axpy(float *restrict y, float a, const float *restrict x, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int l = 0; l < 8; l++)
			y[i + l] += a * x[i + l];
	for (; i < n; i++)
		y[i] += a * x[i];
}

struct attn_job {
	struct lq_run *r;
	struct layer *l;
	size_t n;
	int64_t pos;
};

/* One task per (token, head): scores over the visible keys, softmax, sum. */
static void attn_task(void *ctx, int idx, int ntasks)
{
	(void)ntasks;
	struct attn_job *j = ctx;
	struct lq_run *r = j->r;
	struct layer *l = j->l;
	int64_t H = r->H, hd = r->hd, grp = r->H / r->KV;
	size_t t = (size_t)idx / (size_t)H;
	int64_t h = idx % H, kvh = h / grp;
	int64_t p = j->pos + (int64_t)t;
	int64_t lo = 0;
	if (l->window > 0 && p - l->window + 1 > 0)
		lo = p - l->window + 1;
	const float *q = r->q + t * (size_t)r->qdim + (size_t)(h * hd);
	float *out = r->att + t * (size_t)r->qdim + (size_t)(h * hd);
	float sbuf[256];
	int64_t ns = p - lo + 1;
	float *s = ns <= 256 ? sbuf : malloc((size_t)ns * sizeof(float));
	if (!s) { /* cannot happen in practice; leave zeros */
		memset(out, 0, (size_t)hd * sizeof(float));
		return;
	}
	float scale = (float)r->c->attn_scale, cap = (float)r->c->attn_logit_softcap;
	float mx = -INFINITY;
	for (int64_t jx = lo; jx <= p; jx++) {
		const float *k = l->kc + (size_t)jx * (size_t)r->kvdim + (size_t)(kvh * hd);
		float d = lq_dot_f32(q, k, (size_t)hd) * scale;
		if (cap > 0)
			d = tanhf(d / cap) * cap;
		s[jx - lo] = d;
		if (d > mx)
			mx = d;
	}
	double sum = 0;
	for (int64_t i = 0; i < ns; i++) {
		s[i] = expf(s[i] - mx);
		sum += s[i];
	}
	float inv = (float)(1.0 / sum);
	memset(out, 0, (size_t)hd * sizeof(float));
	for (int64_t jx = lo; jx <= p; jx++) {
		const float *v = l->vc + (size_t)jx * (size_t)r->kvdim + (size_t)(kvh * hd);
		axpy(out, s[jx - lo] * inv, v, hd);
	}
	if (s != sbuf)
		free(s);
}

static void layer_forward(struct lq_run *r, struct layer *l, size_t n, int64_t pos,
			  const float *cs, const float *sn)
{
	const struct lq_model_config *c = r->c;
	int64_t D = r->hidden, I = r->inter, hd = r->hd;
	rmsnorm(r, r->h, r->x, l->attn_norm, n);
	if (c->fused_qkv) {
		int64_t F = r->qdim + 2 * r->kvdim;
		lq_matmul(&l->qkv, r->h, n, r->fused, r->pool);
		for (size_t t = 0; t < n; t++) {
			const float *ft = r->fused + t * (size_t)F;
			memcpy(r->q + t * (size_t)r->qdim, ft, (size_t)r->qdim * sizeof(float));
			memcpy(r->k + t * (size_t)r->kvdim, ft + r->qdim, (size_t)r->kvdim * sizeof(float));
			memcpy(r->v + t * (size_t)r->kvdim, ft + r->qdim + r->kvdim,
			       (size_t)r->kvdim * sizeof(float));
		}
	} else {
		lq_matmul(&l->q, r->h, n, r->q, r->pool);
		lq_matmul(&l->k, r->h, n, r->k, r->pool);
		lq_matmul(&l->v, r->h, n, r->v, r->pool);
	}
	add_bias(r->q, l->q_bias, n, r->qdim);
	add_bias(r->k, l->k_bias, n, r->kvdim);
	add_bias(r->v, l->v_bias, n, r->kvdim);
	int64_t half = r->rot / 2;
	for (size_t t = 0; t < n; t++) {
		const float *ct = cs + t * (size_t)half, *st = sn + t * (size_t)half;
		for (int64_t h = 0; h < r->H; h++)
			rope_apply(r, r->q + t * (size_t)r->qdim + (size_t)(h * hd), ct, st);
		for (int64_t h = 0; h < r->KV; h++)
			rope_apply(r, r->k + t * (size_t)r->kvdim + (size_t)(h * hd), ct, st);
		memcpy(l->kc + (size_t)(pos + (int64_t)t) * (size_t)r->kvdim, r->k + t * (size_t)r->kvdim,
		       (size_t)r->kvdim * sizeof(float));
		memcpy(l->vc + (size_t)(pos + (int64_t)t) * (size_t)r->kvdim, r->v + t * (size_t)r->kvdim,
		       (size_t)r->kvdim * sizeof(float));
	}
	struct attn_job aj = { r, l, n, pos };
	lq_pool_run(r->pool, attn_task, &aj, (int)((int64_t)n * r->H));
	lq_matmul(&l->o, r->att, n, r->o, r->pool);
	add_bias(r->o, l->o_bias, n, D);
	size_t nd = n * (size_t)D;
	if (c->sandwich_norms) {
		rmsnorm(r, r->h, r->o, l->post_attn_norm, n);
		for (size_t i = 0; i < nd; i++)
			r->x[i] += r->h[i];
		rmsnorm(r, r->h, r->x, l->pre_ffn_norm, n);
	} else {
		for (size_t i = 0; i < nd; i++)
			r->x[i] += r->o[i];
		rmsnorm(r, r->h, r->x, l->post_attn_norm, n);
	}
	if (c->fused_gate_up) {
		lq_matmul(&l->gate_up, r->h, n, r->fused, r->pool);
		for (size_t t = 0; t < n; t++) {
			const float *ft = r->fused + t * (size_t)(2 * I);
			memcpy(r->g + t * (size_t)I, ft, (size_t)I * sizeof(float));
			memcpy(r->u + t * (size_t)I, ft + I, (size_t)I * sizeof(float));
		}
	} else {
		lq_matmul(&l->gate, r->h, n, r->g, r->pool);
		lq_matmul(&l->up, r->h, n, r->u, r->pool);
	}
	add_bias(r->g, l->gate_bias, n, I);
	add_bias(r->u, l->up_bias, n, I);
	size_t ni = n * (size_t)I;
	for (size_t i = 0; i < ni; i++)
		r->g[i] = lq_act(c->act, r->g[i]) * r->u[i];
	lq_matmul(&l->down, r->g, n, r->o, r->pool);
	add_bias(r->o, l->down_bias, n, D);
	if (c->sandwich_norms) {
		rmsnorm(r, r->h, r->o, l->post_ffn_norm, n);
		for (size_t i = 0; i < nd; i++)
			r->x[i] += r->h[i];
	} else {
		for (size_t i = 0; i < nd; i++)
			r->x[i] += r->o[i];
	}
}

/* The checks of lq_run_forward's arguments (n > 0). */
static int check_tokens(const struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos,
			struct lq_error *err)
{
	if ((uint64_t)n > (uint64_t)(r->max_ctx - pos))
		return lq_fail(err, LQ_ERR_INVALID,
			       "%lld tokens exceed the context length of %lld tokens",
			       (long long)(pos + (int64_t)n), (long long)r->max_ctx);
	for (size_t t = 0; t < n; t++)
		if (tokens[t] < 0 || tokens[t] >= r->vocab)
			return lq_fail(err, LQ_ERR_INVALID, "token id %ld is outside the vocabulary (0..%lld)",
				       (long)tokens[t], (long long)r->vocab - 1);
	return LQ_OK;
}

/* A step that must produce a token: pos within the cache, at least one
 * token, every token in the vocabulary and within the context. */
static int check_step(struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos, struct lq_error *err)
{
	if (pos < 0 || pos > r->pos)
		return lq_fail(err, LQ_ERR_INVALID, "position %lld is past the %lld cached tokens",
			       (long long)pos, (long long)r->pos);
	if (n == 0)
		return lq_fail(err, LQ_ERR_INVALID, "no tokens to run");
	return check_tokens(r, tokens, n, pos, err);
}

int lq_run_forward_argmax(struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos, int32_t *id,
			  struct lq_error *err)
{
	int rc = check_step(r, tokens, n, pos, err);
	if (rc)
		return rc;
	if (r->be && r->be->argmax) {
		rc = r->be->argmax(r->be_state, tokens, n, pos, id, err);
		r->pos = rc ? (pos < r->pos ? pos : r->pos) : pos + (int64_t)n;
		return rc;
	}
	float *lg = malloc((size_t)r->vocab * sizeof *lg);
	if (!lg)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	rc = lq_run_forward(r, tokens, n, pos, lg, 0, err);
	if (!rc)
		*id = lq_argmax_f32(lg, r->vocab);
	free(lg);
	return rc;
}

/* The checks of n steps from token at pos (lq_run_forward_*_n). */
static int check_steps(struct lq_run *r, int32_t token, int64_t pos, size_t n, struct lq_error *err)
{
	int rc = check_step(r, &token, n ? 1 : 0, pos, err);
	if (!rc && (uint64_t)n > (uint64_t)(r->max_ctx - pos))
		rc = lq_fail(err, LQ_ERR_INVALID, "%lld tokens exceed the context length of %lld tokens",
			     (long long)pos + (long long)n, (long long)r->max_ctx);
	return rc;
}

int lq_run_forward_argmax_n(struct lq_run *r, int32_t token, int64_t pos, size_t n, int32_t *ids,
			    struct lq_error *err)
{
	int rc = check_steps(r, token, pos, n, err);
	if (rc)
		return rc;
	if (r->be && r->be->argmax_n) {
		rc = r->be->argmax_n(r->be_state, token, pos, n, ids, err);
		r->pos = rc ? (pos < r->pos ? pos : r->pos) : pos + (int64_t)n;
		return rc;
	}
	for (size_t i = 0; i < n; i++) {
		if ((rc = lq_run_forward_argmax(r, &token, 1, pos + (int64_t)i, &ids[i], err)))
			return rc;
		token = ids[i];
	}
	return LQ_OK;
}

int lq_run_forward_sample(struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos,
			  const struct lq_sample_opts *o, const int32_t *seen, size_t nseen, struct lq_rng *rng,
			  int32_t *id, struct lq_error *err)
{
	const int penal = lq_sample_penalized(o);
	if (lq_sample_is_argmax(o))
		return lq_run_forward_argmax(r, tokens, n, pos, id, err);
	if (o->temperature > 0 && !rng)
		return lq_fail(err, LQ_ERR_INVALID, "sampling needs a random generator");
	int rc = check_step(r, tokens, n, pos, err);
	if (rc)
		return rc;
	if (!r->samp_lg && !(r->samp_lg = malloc((size_t)r->vocab * sizeof *r->samp_lg)))
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	float *lg = r->samp_lg;
	if (!r->be || !r->be->sample) {
		if (!(rc = lq_run_forward(r, tokens, n, pos, lg, 0, err)))
			*id = lq_sample(lg, r->vocab, o, seen, nseen, rng);
		return rc;
	}
	/* the distinct ids the penalty applies to */
	int32_t *pl = NULL;
	size_t npl = 0;
	if (penal && nseen) {
		pl = malloc(nseen * sizeof *pl);
		int64_t k = pl ? lq_distinct_ids(seen, nseen, r->vocab, pl) : -1;
		if (k < 0) {
			free(pl);
			return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		}
		npl = (size_t)k;
	}
	int made = 0;
	rc = r->be->sample(r->be_state, tokens, n, pos, o, pl, npl, o->temperature > 0 ? rng->s : NULL, id, &made, lg,
			   err);
	r->pos = rc ? (pos < r->pos ? pos : r->pos) : pos + (int64_t)n;
	if (!rc && !made) {
		/* the row came back with the penalty applied */
		struct lq_sample_opts o2 = *o;
		o2.repetition_penalty = 1.0;
		*id = lq_sample(lg, r->vocab, &o2, NULL, 0, rng);
	}
	free(pl);
	return rc;
}

int lq_run_forward_sample_n(struct lq_run *r, int32_t token, int64_t pos, size_t n,
			    const struct lq_sample_opts *o, const int32_t *seen, size_t nseen, struct lq_rng *rng,
			    int32_t *ids, struct lq_error *err)
{
	if (lq_sample_is_argmax(o))
		return lq_run_forward_argmax_n(r, token, pos, n, ids, err);
	if (o->temperature > 0 && !rng)
		return lq_fail(err, LQ_ERR_INVALID, "sampling needs a random generator");
	int rc = check_steps(r, token, pos, n, err);
	if (rc)
		return rc;
	const int penal = lq_sample_penalized(o);
	const int dev = r->be && r->be->sample_n;
	/* the penalty's ids: seen, then each pick */
	int32_t *sn = NULL;
	if (penal) {
		if (!(sn = malloc((nseen + n) * sizeof *sn)))
			return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		if (nseen)
			memcpy(sn, seen, nseen * sizeof *sn);
	}
	for (size_t i = 0; i < n && !rc;) {
		int32_t t = i ? ids[i - 1] : token;
		if (dev) {
			size_t done = 0;
			rc = r->be->sample_n(r->be_state, t, pos + (int64_t)i, n - i, o, penal ? sn : seen,
					     penal ? nseen + i : nseen, rng ? rng->s : NULL, ids + i, &done, err);
			if (rc) {
				r->pos = pos < r->pos ? pos : r->pos;
				break;
			}
			r->pos = pos + (int64_t)(i + done);
			if (penal)
				memcpy(sn + nseen + i, ids + i, done * sizeof *sn);
			if ((i += done) == n)
				break;
			t = i ? ids[i - 1] : token;
			/* the device could not make this step's set: the host does */
		}
		rc = lq_run_forward_sample(r, &t, 1, pos + (int64_t)i, o, penal ? sn : seen, penal ? nseen + i : nseen,
					   rng, &ids[i], err);
		if (!rc && penal)
			sn[nseen + i] = ids[i];
		i++;
	}
	free(sn);
	return rc;
}

int lq_run_forward(struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos,
		   float *logits, int all_logits, struct lq_error *err)
{
	if (pos < 0 || pos > r->pos)
		return lq_fail(err, LQ_ERR_INVALID, "position %lld is past the %lld cached tokens",
			       (long long)pos, (long long)r->pos);
	if (n == 0)
		return LQ_OK;
	int rc = check_tokens(r, tokens, n, pos, err);
	if (rc)
		return rc;
	if (r->be) {
		rc = r->be->forward(r->be_state, tokens, n, pos, logits, all_logits, err);
		r->pos = rc ? (pos < r->pos ? pos : r->pos) : pos + (int64_t)n;
		return rc;
	}
	if ((rc = ensure_scratch(r, n, err)) || (rc = ensure_cache(r, pos + (int64_t)n, err)))
		return rc;
	r->pos = pos; /* entries past pos are overwritten */
	int64_t half = r->rot / 2;
	double ascale = 1.0;
	lq_rope_inv_freq(r->c, pos + (int64_t)n, r->inv_freq, &ascale);
	float *cs = falloc((uint64_t)n * (uint64_t)(half ? half : 1));
	float *sn = falloc((uint64_t)n * (uint64_t)(half ? half : 1));
	if (!cs || !sn) {
		free(cs);
		free(sn);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	}
	for (size_t t = 0; t < n; t++)
		for (int64_t i = 0; i < half; i++) {
			float fr = (float)(pos + (int64_t)t) * r->inv_freq[i];
			cs[t * (size_t)half + (size_t)i] = (float)cos((double)fr) * (float)ascale;
			sn[t * (size_t)half + (size_t)i] = (float)sin((double)fr) * (float)ascale;
		}
	for (size_t t = 0; t < n; t++) {
		float *xt = r->x + t * (size_t)r->hidden;
		lq_weight_row(&r->embed, (uint64_t)tokens[t], xt);
		if (r->embed_scale != 1.0f)
			for (int64_t i = 0; i < r->hidden; i++)
				xt[i] *= r->embed_scale;
	}
	for (int64_t i = 0; i < r->nl; i++)
		layer_forward(r, &r->L[i], n, pos, cs, sn);
	free(cs);
	free(sn);
	r->pos = pos + (int64_t)n;
	if (!logits)
		return LQ_OK;
	size_t first = all_logits ? 0 : n - 1, nl = n - first;
	rmsnorm(r, r->h, r->x + first * (size_t)r->hidden, r->final_norm, nl);
	lq_matmul(&r->lm_head, r->h, nl, logits, r->pool);
	double cap = r->c->final_logit_softcap;
	if (cap > 0) {
		float fc = (float)cap;
		size_t tot = nl * (size_t)r->vocab;
		for (size_t i = 0; i < tot; i++)
			logits[i] = tanhf(logits[i] / fc) * fc;
	}
	return LQ_OK;
}

/* ----------------------------------------------------------- backend */

static int cpu_prepare(void **state, const struct lq_model *m, const struct lq_file *f,
		       const struct lq_run_opts *o, struct lq_error *err)
{
	struct lq_run *r;
	struct lq_run_opts co;
	lq_run_opts_init(&co);
	if (o)
		co = *o;
	co.backend = LQ_BACKEND_CPU;
	int rc = lq_run_create(&r, m, f, &co, err);
	*state = rc ? NULL : r;
	return rc;
}

static int cpu_forward(void *state, const int32_t *tokens, size_t n, int64_t pos,
		       float *logits, int all_logits, struct lq_error *err)
{
	return lq_run_forward(state, tokens, n, pos, logits, all_logits, err);
}

static void cpu_free(void *state)
{
	lq_run_free(state);
}

static const char *cpu_describe(void *state)
{
	return lq_run_device(state);
}

static const struct lq_backend cpu_backend = { "cpu", cpu_prepare, cpu_forward, cpu_free,
					       cpu_describe, NULL, NULL, NULL, NULL };

const struct lq_backend *lq_backend_cpu(void)
{
	return &cpu_backend;
}
