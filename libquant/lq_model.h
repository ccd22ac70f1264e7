/*
 * lq_model.h - part of the public API, included by libquant.h.
 *
 * The one description of each supported architecture (Llama, Mistral, Qwen2,
 * Phi-3, Gemma 2), built from the text of config.json: hyper-parameters for
 * the forward pass, the expected tensors (name, shape, role, layer), the
 * module tree as transformers 5.x builds it, validation of a checkpoint's
 * tensor list, print(model) text, a JSON tree, and memory/file footprints
 * computed from shapes alone.
 *
 * Ownership: everything returned by a const accessor belongs to the model
 * and lives until lq_model_free().  The rendering functions that return
 * `char *` allocate with malloc(); the caller frees with free().
 */
#ifndef LQ_MODEL_H
#define LQ_MODEL_H

#include <stddef.h>
#include <stdint.h>

struct lq_error;
struct lq_qparams;

#ifdef __cplusplus
extern "C" {
#endif

/* Architectures.  Values are pinned. */
enum lq_arch {
	LQ_ARCH_LLAMA = 0,
	LQ_ARCH_MISTRAL = 1,
	LQ_ARCH_QWEN2 = 2,
	LQ_ARCH_PHI3 = 3,
	LQ_ARCH_GEMMA2 = 4,
	LQ_ARCH_COUNT
};

/* MLP activations (config hidden_act / hidden_activation). */
enum lq_act {
	LQ_ACT_SILU = 0,      /* "silu" (SiLUActivation), "swish" (nn.SiLU) */
	LQ_ACT_GELU_TANH = 1, /* "gelu_pytorch_tanh" (GELUTanh) */
	LQ_ACT_GELU = 2,      /* "gelu" exact erf GELU (GELUActivation) */
	LQ_ACT_GELU_NEW = 3,  /* "gelu_new" tanh approximation (NewGELUActivation) */
	LQ_ACT_RELU = 4       /* "relu" (ReLU) */
};

/* RoPE variants (rope_type). */
enum lq_rope_type {
	LQ_ROPE_DEFAULT = 0,
	LQ_ROPE_LINEAR = 1,   /* positions / factor */
	LQ_ROPE_DYNAMIC = 2,  /* dynamic NTK */
	LQ_ROPE_YARN = 3,
	LQ_ROPE_LONGROPE = 4, /* Phi-3 "longrope" (also written "su") */
	LQ_ROPE_LLAMA3 = 5    /* Llama 3.1 frequency-band scaling */
};

/* Rotary embedding parameters, normalised from rope_parameters (transformers
 * 5.x) or rope_scaling + rope_theta (older configs). */
struct lq_rope {
	int type;                 /* enum lq_rope_type */
	double theta;             /* base, default 10000 */
	double partial_rotary_factor; /* 1.0 unless the config says otherwise */
	int64_t rotary_dim;       /* head_dim * partial_rotary_factor (even) */
	double factor;            /* linear/dynamic/yarn/llama3/longrope scale; 1 if none */
	double low_freq_factor;   /* llama3 */
	double high_freq_factor;  /* llama3 */
	int64_t original_max_position_embeddings; /* llama3/yarn/longrope */
	/* Multiplier of cos/sin: 1 for default/llama3; longrope: given, or
	 * sqrt(1 + ln(factor) / ln(original_max)) when factor > 1; yarn: given,
	 * or 0.1 ln(factor) + 1. */
	double attention_factor;
	double beta_fast, beta_slow;  /* yarn (32, 1 by default) */
	double mscale, mscale_all_dim; /* yarn (0 = not given) */
	int truncate;                 /* yarn: round the correction range (default 1) */
	int64_t nfactors;             /* longrope: rotary_dim / 2, else 0 */
	const double *short_factor;   /* longrope [nfactors] */
	const double *long_factor;    /* longrope [nfactors] */
};

struct lq_model_config;
/*
 * RoPE inverse frequencies as transformers computes them: inv_freq receives
 * rotary_dim / 2 floats, *attention_scale (optional) the multiplier of cos
 * and sin.  seq_len is the context length in use: longrope switches to its
 * long factors above original_max_position_embeddings, dynamic NTK rescales
 * above max_position_embeddings; seq_len <= 0 gives the values transformers
 * registers at load time (the `inv_freq` buffer).
 */
void lq_rope_inv_freq(const struct lq_model_config *c, int64_t seq_len, float *inv_freq,
		      double *attention_scale);

/* Hyper-parameters of a model, everything the forward pass needs. */
struct lq_model_config {
	int arch;                     /* enum lq_arch */
	const char *model_type;       /* "llama", "mistral", "qwen2", "phi3", "gemma2" */
	const char *class_name;       /* "LlamaForCausalLM", ... */
	int64_t vocab_size;
	int64_t hidden_size;
	int64_t intermediate_size;
	int64_t num_layers;
	int64_t num_heads;
	int64_t num_kv_heads;
	int64_t head_dim;
	int64_t max_position_embeddings;
	double rms_norm_eps;
	int act;                      /* enum lq_act */
	const char *act_name;         /* as written in the config, e.g. "silu" */
	int attention_bias;           /* q, k, v and o projections have biases */
	int qkv_bias;                 /* q, k, v (not o) have biases (Qwen2) */
	int mlp_bias;                 /* gate/up/down have biases (Llama mlp_bias) */
	int fused_qkv;                /* Phi-3 qkv_proj: rows [q | k | v] */
	int fused_gate_up;            /* Phi-3 gate_up_proj: rows [gate | up] */
	int tie_word_embeddings;
	int64_t pad_token_id;         /* -1 when none */
	int64_t bos_token_id;         /* -1 when none */
	int n_eos;                    /* number of eos ids (0..8) */
	int64_t eos_token_ids[8];
	int dtype;                    /* enum lq_dtype of dtype/torch_dtype (BF16 if absent) */
	struct lq_rope rope;
	double attn_logit_softcap;    /* Gemma 2: tanh soft-cap of scores; 0 = none */
	double final_logit_softcap;   /* Gemma 2: soft-cap of the logits; 0 = none */
	double attn_scale;            /* scores = q.k * attn_scale: head_dim^-0.5, Gemma 2
				       * query_pre_attn_scalar^-0.5 */
	double embed_scale;           /* embeddings are multiplied by this (Gemma 2:
				       * sqrt(hidden_size) rounded to the model dtype as
				       * transformers does; else 1) */
	int norm_plus_one;            /* RMSNorm scales by (1 + w) (Gemma) instead of w */
	int sandwich_norms;           /* Gemma 2: post_attention_layernorm is applied to the
				       * attention output, pre/post_feedforward_layernorm
				       * around the MLP; otherwise post_attention_layernorm
				       * is the pre-MLP norm */
	int64_t sliding_window;       /* config value, 0 when none */
	const int64_t *layer_window;  /* [num_layers]: sliding window of each layer, 0 = full */
	double resid_pdrop;           /* Phi-3 residual dropout (printed only) */
};

/* Roles of tensors. */
enum lq_role {
	LQ_ROLE_EMBED = 0,            /* model.embed_tokens.weight [vocab, hidden] */
	LQ_ROLE_ATTN_NORM,            /* input_layernorm [hidden] */
	LQ_ROLE_Q, LQ_ROLE_K, LQ_ROLE_V, /* [heads*hd | kv*hd, hidden] */
	LQ_ROLE_QKV,                  /* Phi-3 fused [(heads + 2 kv) * hd, hidden] */
	LQ_ROLE_O,                    /* [hidden, heads*hd] */
	LQ_ROLE_Q_BIAS, LQ_ROLE_K_BIAS, LQ_ROLE_V_BIAS, LQ_ROLE_O_BIAS,
	LQ_ROLE_POST_ATTN_NORM,       /* post_attention_layernorm [hidden] (see sandwich_norms) */
	LQ_ROLE_PRE_FFN_NORM,         /* Gemma 2 pre_feedforward_layernorm */
	LQ_ROLE_POST_FFN_NORM,        /* Gemma 2 post_feedforward_layernorm */
	LQ_ROLE_GATE, LQ_ROLE_UP,     /* [inter, hidden] */
	LQ_ROLE_GATE_UP,              /* Phi-3 fused [2 inter, hidden] */
	LQ_ROLE_DOWN,                 /* [hidden, inter] */
	LQ_ROLE_GATE_BIAS, LQ_ROLE_UP_BIAS, LQ_ROLE_DOWN_BIAS,
	LQ_ROLE_FINAL_NORM,           /* model.norm [hidden] */
	LQ_ROLE_LM_HEAD,              /* lm_head.weight [vocab, hidden] */
	LQ_ROLE_COUNT
};

/* Name of a role ("q_proj", "embed", ...).  Never NULL. */
const char *lq_role_name(int role);
/* Name of an architecture's model_type ("llama", ...), "?" if unknown. */
const char *lq_arch_name(int arch);
/* The architecture (enum lq_arch) of a transformers class name as config.json's
 * "architectures" lists it ("LlamaForCausalLM", ...), or -1 when it is not a
 * supported causal-LM class. */
int lq_arch_of_class(const char *class_name);

/* How one tensor is (or will be) stored. */
struct lq_model_storage {
	int dtype;        /* enum lq_dtype: source dtype (the stored one when qtype is NONE) */
	int qtype;        /* enum lq_qtype */
	int block_size;   /* when qtype != NONE */
	int double_quant; /* when qtype != NONE */
};

/* One expected tensor (a parameter of the module tree). */
struct lq_model_param {
	const char *name;       /* checkpoint name, e.g. "model.layers.3.self_attn.q_proj.weight" */
	const char *attr;       /* attribute in its module: "weight" or "bias" */
	int role;               /* enum lq_role */
	int layer;              /* decoder layer index, -1 outside the layers */
	int module;             /* index of the owning module (lq_model_module) */
	int ndim;               /* 1 or 2 */
	uint64_t shape[2];      /* [out, in] for Linear weights, as in the checkpoint */
	uint64_t nelem;
	int is_linear_weight;   /* weight of an nn.Linear */
	int quantize_default;   /* Linear weight quantized by default (all but lm_head,
				 * as transformers' bitsandbytes integration does) */
	int tied;               /* lm_head.weight shared with the embedding: not in
				 * the checkpoint, not counted twice */
	struct lq_model_storage st; /* current storage (see lq_model_plan, _validate) */
	int present;            /* set by lq_model_validate: found in the tensor list */
	long src_index;         /* set by lq_model_validate: index in that list, or -1 */
};

/* Module kinds. */
enum lq_module_kind {
	LQ_MOD_CONTAINER = 0, /* a module with children and no repr arguments */
	LQ_MOD_LIST,          /* nn.ModuleList */
	LQ_MOD_LINEAR,        /* nn.Linear (printed Linear4bit/Linear8bitLt when quantized) */
	LQ_MOD_EMBEDDING,     /* nn.Embedding or a subclass */
	LQ_MOD_RMSNORM,
	LQ_MOD_ACT,           /* activation module, printed "Class()" */
	LQ_MOD_ROTARY,        /* rotary embedding (holds buffers) */
	LQ_MOD_DROPOUT
};

/* One module of the tree.  Module 0 is the root (the *ForCausalLM). */
struct lq_module {
	const char *name;       /* attribute in the parent ("self_attn", "3"); "" for the root */
	const char *path;       /* dotted path ("model.layers.3.self_attn"); "" for the root */
	const char *cls;        /* Python class name ("LlamaAttention", "Linear", ...) */
	int kind;               /* enum lq_module_kind */
	int parent;             /* -1 for the root */
	int nchildren;
	const int *children;    /* [nchildren] module indices, in registration order */
	int weight, bias;       /* parameter indices, -1 if none */
	int layer;              /* decoder layer index, -1 outside the layers */
	uint64_t in_features, out_features;     /* LINEAR */
	uint64_t num_embeddings, embedding_dim; /* EMBEDDING */
	int64_t padding_idx;                    /* EMBEDDING, -1 = none */
	uint64_t norm_dim;                      /* RMSNORM */
	double eps;                             /* RMSNORM */
	double dropout_p;                       /* DROPOUT */
};

/* Non-persistent buffers transformers registers (counted by
 * get_memory_footprint): rotary inv_freq and original_inv_freq (float32,
 * rotary_dim/2 each), Gemma 2's embed_scale (a scalar in the model dtype). */
struct lq_model_buffer {
	const char *name;       /* "model.rotary_emb.inv_freq" */
	int module;
	int dtype;              /* enum lq_dtype (a scalar buffer is counted in the
				 * embedding's storage dtype, as torch creates it in the
				 * model dtype) */
	int ndim;
	uint64_t shape[1];
	uint64_t nelem;
};

struct lq_model;

/*
 * Build the model description from the text of config.json (len bytes, need
 * not be NUL-terminated).  Errors: LQ_ERR_FORMAT (not JSON, wrong key types,
 * inconsistent sizes), LQ_ERR_UNSUPPORTED (unknown model_type or rope_type).
 * The storage of every tensor starts as lq_model_plan(m, NULL, config dtype).
 * The model is freed with lq_model_free().
 */
int lq_model_from_config(struct lq_model **out, const char *json, size_t len,
			 struct lq_error *err);
void lq_model_free(struct lq_model *m);

const struct lq_model_config *lq_model_config(const struct lq_model *m);

size_t lq_model_nparams(const struct lq_model *m);
const struct lq_model_param *lq_model_param(const struct lq_model *m, size_t i);
/* Index of the parameter with this checkpoint name, or -1. */
long lq_model_find_param(const struct lq_model *m, const char *name);
/* Parameter of a role in a layer (layer -1 for the non-layer roles), or -1. */
long lq_model_find_role(const struct lq_model *m, int role, int layer);
/* Check the hyper-parameters both runtimes rely on (positive sizes, heads
 * a multiple of the KV heads, even head_dim, rotary_dim even and <=
 * head_dim): LQ_OK or LQ_ERR_UNSUPPORTED with a message. */
int lq_model_runtime_check(const struct lq_model_config *c, struct lq_error *err);
/* The tensor of a role stored in LQ file f (a tied lm_head is the embedding),
 * or NULL when the model has no such parameter or f does not store it.
 * Borrowed from f. */
const struct lq_tensor *lq_model_role_tensor(const struct lq_model *m, const struct lq_file *f, int role,
					     int layer);

size_t lq_model_nmodules(const struct lq_model *m);
const struct lq_module *lq_model_module(const struct lq_model *m, size_t i);

size_t lq_model_nbuffers(const struct lq_model *m);
const struct lq_model_buffer *lq_model_buffer(const struct lq_model *m, size_t i);

/*
 * Map a checkpoint tensor name to its parameter and module.  Returns LQ_OK,
 * or LQ_ERR_NOTFOUND when the name is not part of the model (both outputs -1).
 */
int lq_model_map_name(const struct lq_model *m, const char *name, long *param,
		      long *module);

/*
 * Storage plan as transformers' bitsandbytes integration would load the
 * model: every Linear weight except lm_head gets q (qtype, block size,
 * double quant); everything else, and every tensor when q is NULL or
 * q->qtype is LQ_QTYPE_NONE, is kept in `dtype`.
 */
void lq_model_plan(struct lq_model *m, const struct lq_qparams *q, int dtype);
/*
 * Like lq_model_plan, but keeps each tensor's current dtype (e.g. the source
 * dtypes after lq_model_validate / lq_model_from_st): the default Linear
 * weights, plus lm_head when quantize_head (and it is not tied), get q; all
 * other tensors become unquantized.  q NULL or NONE: nothing quantized.
 */
void lq_model_plan_quant(struct lq_model *m, const struct lq_qparams *q, int quantize_head);
/* Override the storage of parameter i (e.g. for --keep / --quantize globs). */
int lq_model_set_storage(struct lq_model *m, size_t i,
			 const struct lq_model_storage *s, struct lq_error *err);

/* One tensor of a checkpoint or LQ file, as the caller lists it. */
struct lq_model_tensor {
	const char *name;
	int ndim;
	uint64_t shape[8];   /* the logical (unquantized) shape */
	int dtype;           /* enum lq_dtype of the source, -1 when unsupported */
	int qtype;           /* enum lq_qtype as stored (NONE for a safetensors checkpoint) */
	int block_size;      /* when qtype != NONE; 0 = 64 */
	int double_quant;    /* when qtype != NONE */
};

/*
 * Check a checkpoint's tensor list against the description: every expected
 * tensor must be present with the expected shape.  Errors (first one wins):
 * LQ_ERR_NOTFOUND "tensor 'X' is missing (expected [a, b])", LQ_ERR_SHAPE
 * "tensor 'X': shape [..] does not match the expected [..]".  A missing
 * lm_head.weight with untied embeddings is accepted as tied (with a warning),
 * as transformers does when tie_word_embeddings is set.  Tensors that belong
 * to no module (e.g. rotary inv_freq in old checkpoints) are warnings.
 * On success the storage of each parameter is taken from the list.  A
 * checkpoint saved by transformers with bitsandbytes 4-bit layers is
 * recognised: a Linear weight stored as uint8 [ceil(n/2), 1] with its
 * NAME.absmax / .nested_absmax / .quant_map / .nested_quant_map /
 * .quant_state.bitsandbytes__nf4|fp4 companions is NF4/FP4 (block size from
 * the absmax count, double quant when nested_absmax is there); an int8
 * [N, K] weight with NAME.SCB (and NAME.weight_format) is LLM.int8, stored
 * as qtype INT8 with block_size 0 (row-wise: 4 N bytes of fp32 scales).  The strings
 * are copied; the list need not outlive the call.  On error the storage and
 * presence flags may be partly updated (validate again before using them).
 */
int lq_model_validate(struct lq_model *m, const struct lq_model_tensor *t, size_t n,
		      struct lq_error *err);
struct lq_st;
struct lq_file;
/*
 * Conveniences for the tools (inspect --tree/--json/--estimate, run):
 * lq_model_from_st: config.json text + an opened safetensors checkpoint,
 * validated against its headers (no tensor data is read); storage = the
 * source dtypes, unquantized (use lq_model_plan_quant for an estimate).
 * lq_model_from_lq: the config.json stored in an LQ file, validated against
 * its tensor index; storage as stored.  LQ_ERR_NOTFOUND when the LQ file has
 * no config.json.  The model does not keep pointers into st or f.
 */
int lq_model_from_st(struct lq_model **out, const char *config, size_t len,
		     const struct lq_st *st, struct lq_error *err);
int lq_model_from_lq(struct lq_model **out, const struct lq_file *f, struct lq_error *err);

/* Warnings of the last lq_model_validate (one line each, owned by the model). */
size_t lq_model_nwarnings(const struct lq_model *m);
const char *lq_model_warning(const struct lq_model *m, size_t i);

/* Memory figures of the model with its current storage. */
struct lq_footprint {
	uint64_t n_params;       /* parameters as transformers' num_parameters() (tied once) */
	uint64_t n_quantized;    /* elements stored quantized */
	uint64_t hf_bytes;       /* transformers' get_memory_footprint(): parameters as
				  * stored (4-bit: ceil(n/2) packed bytes, int8: n,
				  * else n x dtype size) plus buffers */
	uint64_t buffer_bytes;   /* the buffers part of hf_bytes */
	uint64_t stats_bytes;    /* quantization statistics: scales (fp32, or u8 codes
				  * with double quant), nested fp32 scales, 4-byte offsets */
	uint64_t resident_bytes; /* hf_bytes + stats_bytes: what the runtime holds */
	uint64_t bnb_resident_bytes; /* resident_bytes + bitsandbytes' per-layer code
				  * tables (fp32 quant_map 64 B, nested map 1024 B) */
};
/*
 * Bytes of one parameter with its storage: *bytes as get_memory_footprint()
 * counts it (4-bit: ceil(n/2), int8: n, else n x dtype size; a tied
 * parameter is counted here all the same), *stats_bytes its quantization
 * statistics (0 when unquantized).  Either output may be NULL.
 */
int lq_model_param_bytes(const struct lq_model_param *p, uint64_t *bytes,
			 uint64_t *stats_bytes);
int lq_model_footprint(const struct lq_model *m, struct lq_footprint *fp,
		       struct lq_error *err);

/* A file stored in the LQ file (for the size estimate). */
struct lq_estimate_blob {
	const char *name;  /* "tokenizer.json" */
	uint64_t size;
};
#define LQ_ESTIMATE_ALIGN 256          /* the writer's part alignment */
#define LQ_ESTIMATE_METADATA_BYTES 2048 /* default guess of the metadata JSON size */

/*
 * Size of the .lq file quantize would write with the current storage, from
 * shapes alone: 64-byte header, every blob and tensor part aligned to 256,
 * metadata (metadata_bytes, 0 = LQ_ESTIMATE_METADATA_BYTES), the index
 * records as LQ-FORMAT.md lays them out and the 64-byte footer.  Tensors of
 * the last validated list that belong to no module are counted as stored
 * unchanged.  Exact except for the metadata size.
 */
int lq_model_estimate_lq(const struct lq_model *m, const struct lq_estimate_blob *blobs,
			 size_t nblobs, uint64_t metadata_bytes, uint64_t *size,
			 struct lq_error *err);

/*
 * print(model) as PyTorch prints the transformers 5.x model, with quantized
 * Linears shown as bitsandbytes' Linear4bit (NF4/FP4) or Linear8bitLt (INT8).
 * Identical consecutive layers collapse as "(0-31): 32 x ...".  The text
 * ends with a newline.
 *
 * lq_model_tree_text: *out is a malloc'ed NUL-terminated string (caller
 * frees), *len (optional) its length.
 * lq_model_tree_snprint: like snprintf into buf (always NUL-terminated when
 * size > 0); returns the full length, so a result >= size means truncated.
 */
int lq_model_tree_text(const struct lq_model *m, char **out, size_t *len,
		       struct lq_error *err);
size_t lq_model_tree_snprint(const struct lq_model *m, char *buf, size_t size);

/*
 * The module tree as JSON text (malloc'ed, caller frees): every module as
 * {"name", "path", "class", "repr" (its own line, e.g. "Linear4bit(in_features=..)"
 * or "LlamaAttention"), "parameters": [{"name", "tensor", "shape", "dtype",
 * "storage", "bytes", "stats_bytes"}], "buffers": [...], "children": [...]}.
 * Compact when indent is 0, else pretty-printed with that indent.
 */
int lq_model_tree_json(const struct lq_model *m, int indent, char **out,
		       struct lq_error *err);

#ifdef __cplusplus
}
#endif

#endif /* LQ_MODEL_H */
