/*
 * lq_run.h - the inference runtime (part of the public API, included by
 * libquant.h): the forward pass of the five architectures of lq_model.h
 * over the weights of an LQ file with a KV cache, on the CPU (described
 * below) or, through the same calls, on a CUDA GPU (gpu/backend.cu, see
 * struct lq_run_opts); the dequantizing matmuls the CPU runtime is built
 * from, and the sampler.
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * Weights stay as stored in the (mmap'ed) LQ file: NF4/FP4/INT8 blocks with
 * or without double quant, or unquantized F32/F16/BF16.  Matmuls dequantize
 * one row at a time into a small per-thread buffer and accumulate in float32,
 * split over a thread pool by output rows.  Activations, the KV cache and
 * the logits are float32.  The forward pass follows transformers 5.x
 * computing in float32 (eager attention).
 *
 * Ownership: a struct lq_run borrows the model description and the LQ file
 * (both must outlive it); everything else it allocates is released by
 * lq_run_free().
 */
#ifndef LQ_RUN_H
#define LQ_RUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lq_error;
struct lq_model;
struct lq_file;
struct lq_tensor;

/* ------------------------------------------------------------ thread pool */

/* A fixed set of worker threads (the caller's thread takes part too). */
struct lq_pool;

/* Start nthreads - 1 workers (nthreads <= 1: none).  Free with lq_pool_free. */
int lq_pool_create(struct lq_pool **out, int nthreads, struct lq_error *err);
void lq_pool_free(struct lq_pool *p);
/* Number of threads taking part (>= 1; 1 for a NULL pool). */
int lq_pool_size(const struct lq_pool *p);
/* Call fn(ctx, i, ntasks) for i in 0..ntasks-1 spread over the threads and
 * wait for all of them.  A NULL pool runs them in the caller. */
void lq_pool_run(struct lq_pool *p, void (*fn)(void *ctx, int i, int ntasks), void *ctx,
		 int ntasks);
/* memcpy(dst, src, n) split over the pool's threads (pieces of whole pages,
 * at least 64 KiB each; smaller copies and a NULL pool: the caller's).  For
 * sources whose pages fault in as they are read, such as a mapped file. */
void lq_pool_memcpy(struct lq_pool *p, void *dst, const void *src, size_t n);

/* ---------------------------------------------------------------- weights */

/* A 2-D weight [rows, cols] as stored (rows = out features). */
struct lq_weight {
	int qtype;            /* enum lq_qtype */
	int dtype;            /* enum lq_dtype of the data when qtype == NONE */
	int block_size;       /* quantized: elements per block of the row-major flattening */
	uint64_t rows, cols;
	const void *data;     /* borrowed (the LQ file's mapping) */
	float *scales;        /* quantized: fp32 scale of each block (double quant
			       * undone), malloc'ed, owned; NULL otherwise */
};

/*
 * View a stored tensor as a weight: a 2-D tensor, or a 1-D one as [1, n].
 * Rebuilds the per-block fp32 scales (the only allocation).  LQ_ERR_UNSUPPORTED
 * for row-wise INT8 (block size 0) or an unknown dtype.  Release with
 * lq_weight_release().
 */
int lq_weight_init(struct lq_weight *w, const struct lq_tensor *t, struct lq_error *err);
void lq_weight_release(struct lq_weight *w);
/* Dequantize/convert row r to cols floats (same values as lq_tensor_to_f32). */
void lq_weight_row(const struct lq_weight *w, uint64_t r, float *out);

/*
 * y[t][r] = sum_c x[t][c] * W[r][c] for t < n tokens: x is [n, cols], y is
 * [n, rows], both float32 row-major.  lq_matmul_ref is the plain scalar
 * reference (element by element, double accumulation); lq_matmul is the fast
 * path (row dequantized once per call, float32 accumulation in 8 lanes,
 * rows spread over the pool; pool may be NULL).
 */
void lq_matmul_ref(const struct lq_weight *w, const float *x, size_t n, float *y);
void lq_matmul(const struct lq_weight *w, const float *x, size_t n, float *y,
	       struct lq_pool *pool);

/* ------------------------------------------------------------ the runtime */

/* Where lq_run_create runs the model. */
enum lq_backend_kind {
	LQ_BACKEND_CPU = 0,  /* the CPU runtime (default of a zeroed lq_run_opts) */
	LQ_BACKEND_CUDA = 1, /* a CUDA GPU (error when there is none) */
	LQ_BACKEND_AUTO = 2  /* CUDA when a device is usable, else the CPU */
};

/* Options of lq_run_create (lq_run_opts_init, or zero-initialize, then set). */
struct lq_run_opts {
	int nthreads;     /* CPU threads; <= 0: 1 (CUDA: up to 8 copy the weights at start-up) */
	int64_t max_ctx;  /* context limit in tokens; <= 0: max_position_embeddings */
	int backend;      /* enum lq_backend_kind */
	int device;       /* CUDA device index (backend CUDA or AUTO) */
	int compute;      /* GPU activation dtype: enum lq_compute, or -1 for the
			   * one recorded in the file (the CPU always uses fp32) */
};
/* Defaults: 1 thread, model's context, CPU backend, device 0, file's compute dtype. */
void lq_run_opts_init(struct lq_run_opts *o);

/* Usable CUDA devices (0 when libquant was built without CUDA, or there is
 * no driver or no GPU). */
int lq_gpu_count(void);

struct lq_run;

/*
 * Backend interface, shared by the CPU runtime and a GPU one: prepare a
 * model from an LQ file, run tokens through it at a position (the KV cache
 * holds positions 0..pos-1 from earlier calls), free.
 */
struct lq_sample_opts;
struct lq_rng;

struct lq_backend {
	const char *name;  /* "cpu", "cuda" */
	/* o->compute (never -1) and o->max_ctx (> 0) are resolved when
	 * lq_run_create calls it */
	int (*prepare)(void **state, const struct lq_model *m, const struct lq_file *f,
		       const struct lq_run_opts *o, struct lq_error *err);
	/* tokens are validated (ids in range, pos + n within the context) */
	int (*forward)(void *state, const int32_t *tokens, size_t n, int64_t pos,
		       float *logits, int all_logits, struct lq_error *err);
	void (*free)(void *state);
	/* one line naming the device, e.g. "cuda:0 NVIDIA H200, bf16"; owned by state */
	const char *(*describe)(void *state);
	/* optional (NULL: forward + argmax on the host): as forward, but only
	 * the argmax of the last logits row (lowest id on ties) comes back */
	int (*argmax)(void *state, const int32_t *tokens, size_t n, int64_t pos, int32_t *id,
		      struct lq_error *err);
	/* optional (NULL: forward, then lq_sample on the host): as forward,
	 * then lq_sample on the last logits row, on the device: the
	 * repetition penalty over pen[0..npen) (distinct ids in range; none
	 * when o's penalty is off), then the argmax (temperature <= 0; rng
	 * NULL) or the filters and one draw from the xoshiro256** state
	 * rng[4] (struct lq_rng's, advanced once, as lq_sample advances it).
	 * *made receives 1 with the pick in *id; or 0 when the device could
	 * not make it (a NaN logit, more ties at top-k's k-th value than 1024,
	 * a vocabulary over the device sampler's limit): then rng is
	 * untouched and logits[vocab] receives the row after the penalty, for
	 * the host to sample from. */
	int (*sample)(void *state, const int32_t *tokens, size_t n, int64_t pos, const struct lq_sample_opts *o,
		      const int32_t *pen, size_t npen, uint64_t rng[4], int32_t *id, int *made, float *logits,
		      struct lq_error *err);
	/* optional (NULL: argmax step by step): greedy decoding's n >= 1
	 * steps at once, token at pos, then each step's argmax as the next
	 * step's token at the next position, ids[i] the argmax of step i,
	 * without the host waiting between the steps (token in range, pos +
	 * n within the context: validated) */
	int (*argmax_n)(void *state, int32_t token, int64_t pos, size_t n, int32_t *ids, struct lq_error *err);
	/* optional (NULL: sampling step by step): lq_sample's n >= 1 steps at
	 * once, as argmax_n's, for any o: each step's pick is lq_sample's
	 * (repetition penalty over seen[0..nseen) and the steps' picks so far;
	 * token is seen's last), drawn from the xoshiro256** state rng[4]
	 * (struct lq_rng's, advanced once per step; NULL and untouched with
	 * temperature <= 0).  *done receives the steps made: fewer than n when
	 * the device could not make a step's kept set (a NaN logit, more ties at
	 * top-k's k-th value than 1024, a vocabulary over the device sampler's
	 * limit); then ids[0..*done) are valid, rng is advanced *done times, the
	 * cache holds positions up to pos + *done - 1 and step *done is the
	 * caller's to run. */
	int (*sample_n)(void *state, int32_t token, int64_t pos, size_t n, const struct lq_sample_opts *o,
			const int32_t *seen, size_t nseen, uint64_t rng[4], int32_t *ids, size_t *done,
			struct lq_error *err);
};
/* The CPU backend (static, never freed). */
const struct lq_backend *lq_backend_cpu(void);
/* The CUDA backend (gpu/), or NULL when libquant was built without CUDA. */
const struct lq_backend *lq_backend_cuda(void);

/*
 * Prepare the runtime on the backend o->backend selects.  CPU: resolve every
 * parameter of the model description in the LQ file, convert norms and
 * biases to float32, rebuild block scales.  CUDA: upload the weights as
 * stored to the device.  m must come from the same file (lq_model_from_lq).
 * Errors: LQ_ERR_NOTFOUND (tensor missing), LQ_ERR_SHAPE, LQ_ERR_UNSUPPORTED
 * (also: CUDA asked for and not available), LQ_ERR_NOMEM (the message says
 * how much GPU memory was needed and how much is free), LQ_ERR_IO (a CUDA
 * error).  *out is freed with lq_run_free().
 */
int lq_run_create(struct lq_run **out, const struct lq_model *m, const struct lq_file *f,
		  const struct lq_run_opts *o, struct lq_error *err);
void lq_run_free(struct lq_run *r);

/*
 * Run n tokens at positions pos..pos+n-1.  The KV cache must hold positions
 * 0..pos-1 (pos <= lq_run_pos(r)); later entries are discarded, so pos = 0
 * starts a new sequence.  logits (caller-owned) receives float32
 * [n, vocab] when all_logits, else [vocab] for the last token; it may be NULL
 * to only fill the cache.  LQ_ERR_INVALID for a token id outside the
 * vocabulary or pos + n beyond the context limit (message says so).
 */
int lq_run_forward(struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos,
		   float *logits, int all_logits, struct lq_error *err);
/*
 * Greedy decoding's step: run the tokens as lq_run_forward does and store in
 * *id the argmax of the last token's logits (the first, i.e. lowest, id
 * among equal maxima; id 0 when logit 0 is NaN), which is what lq_sample
 * picks with temperature <= 0 and no repetition penalty.  On the GPU the
 * argmax is taken on the device and only the id is copied back.
 */
int lq_run_forward_argmax(struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos, int32_t *id,
			  struct lq_error *err);
/*
 * n steps of greedy decoding in one call: token at pos, then each step's
 * argmax run at the next position; ids[i] receives step i's argmax, the
 * ids that n calls of lq_run_forward_argmax(r, &t, 1, pos + i, &ids[i]),
 * t the previous id, would give.  On the GPU the steps are queued back to
 * back, each taking its token from the previous one's argmax on the device,
 * and the host waits once.  The cache then holds positions 0..pos+n-1; a
 * caller that stops early (an end-of-sequence id) runs its next tokens from
 * where it stopped, over the entries past it.  LQ_ERR_INVALID for n == 0, a
 * token outside the vocabulary, pos past the cache or pos + n past the
 * context.
 */
int lq_run_forward_argmax_n(struct lq_run *r, int32_t token, int64_t pos, size_t n, int32_t *ids,
			    struct lq_error *err);
/*
 * A sampling step: run the tokens as lq_run_forward does, then pick the next
 * token from the last token's logits as lq_sample(logits, vocab, o, seen,
 * nseen, rng) would: the same id and the same draws from rng.  On the GPU
 * the whole pick (penalty, temperature, filters, draw, or the argmax when
 * greedy) runs on the device and only the id and the generator's state come
 * back, unless the logits hold a NaN (or more ties at top-k's k-th value
 * than 1024): then the row comes back and the host samples from it.  rng
 * may be NULL when greedy.
 */
int lq_run_forward_sample(struct lq_run *r, const int32_t *tokens, size_t n, int64_t pos,
			  const struct lq_sample_opts *o, const int32_t *seen, size_t nseen, struct lq_rng *rng,
			  int32_t *id, struct lq_error *err);
/*
 * n steps of sampling in one call: token at pos (the last of seen[0..nseen),
 * the ids so far), then each step's pick run at the next position; ids[i]
 * receives step i's pick: the ids, and the draws from rng, that n calls of
 * lq_run_forward_sample would give, each step's pick appended to seen.
 * Greedy without a penalty: lq_run_forward_argmax_n.  On the GPU the steps
 * are chained on the device (the penalty, the filters and the draw too,
 * from a copy of rng that comes back), and the host waits once per 256
 * steps; a step the device cannot make (a NaN logit) is the host's.  Errors as
 * lq_run_forward_argmax_n's; LQ_ERR_INVALID also when sampling without rng.
 */
int lq_run_forward_sample_n(struct lq_run *r, int32_t token, int64_t pos, size_t n,
			    const struct lq_sample_opts *o, const int32_t *seen, size_t nseen, struct lq_rng *rng,
			    int32_t *ids, struct lq_error *err);
/* The largest top-k whose set the GPU's sampler selects with its top-k
 * filter before the draw; larger ones, or top-k off, are drawn from the
 * whole row on the device instead. */
#define LQ_RUN_TOPK_MAX 1024
/* The backend in use ("cpu" or "cuda") and a one-line description of the
 * device (owned by r). */
const char *lq_run_backend(const struct lq_run *r);
const char *lq_run_device(const struct lq_run *r);
/* Positions currently in the KV cache. */
int64_t lq_run_pos(const struct lq_run *r);
/* Context limit (tokens). */
int64_t lq_run_max_ctx(const struct lq_run *r);
/* Vocabulary size (length of one logits row). */
int64_t lq_run_vocab(const struct lq_run *r);

/* ---------------------------------------------------------------- sampler */

/* Sampling parameters as transformers' generate() takes them. */
struct lq_sample_opts {
	double temperature;        /* <= 0: greedy (argmax) */
	int top_k;                 /* 0: off */
	double top_p;              /* >= 1: off */
	double min_p;              /* 0: off */
	double repetition_penalty; /* 1: off (CTRL penalty over earlier ids) */
};
/* Defaults of transformers' GenerationConfig: temperature 1, top_k 50,
 * top_p 1, repetition_penalty 1 (do_sample as the caller decides). */
void lq_sample_opts_init(struct lq_sample_opts *o);
/* 1 when o's repetition penalty is on (> 0 and not 1). */
int lq_sample_penalized(const struct lq_sample_opts *o);
/* 1 when lq_sample with o picks the argmax (the lowest id of the maximum)
 * of the logits as given: temperature <= 0 and no penalty. */
int lq_sample_is_argmax(const struct lq_sample_opts *o);
/* A random generator (xoshiro256**), seeded; plain value, no allocation. */
struct lq_rng {
	uint64_t s[4];
};
void lq_rng_seed(struct lq_rng *r, uint64_t seed);
/* Uniform double in [0, 1). */
double lq_rng_uniform(struct lq_rng *r);

/*
 * Pick the next token from logits[vocab] (modified in place: penalty,
 * temperature, filtering), given the ids seen so far (prompt and generated,
 * for the repetition penalty).  The order of the processors is
 * transformers': repetition penalty, temperature, top-k, top-p, min-p.
 * The probabilities are exp(l_i - l_max) in a fixed point whose sums are
 * exact (lq_blocks.h), so that the GPU's parallel pick draws the same
 * token.  Greedy with temperature <= 0.  Returns the id, or -1 when vocab
 * is 0.
 */
int32_t lq_sample(float *logits, int64_t vocab, const struct lq_sample_opts *o,
		  const int32_t *seen, size_t nseen, struct lq_rng *rng);

#ifdef __cplusplus
}
#endif

#endif /* LQ_RUN_H */
