/*
 * model.c - architecture descriptions built from config.json: hyper-parameters,
 * expected tensors, module tree, validation and footprints.
 *
 * One table per architecture (arch_table below and the layer tables it
 * points to) drives everything: the tree print, the JSON, validation, the
 * footprint and the forward passes read the same description.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) the libquant authors
 */
#include "internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the tables */

/* Dimensions a layer item refers to. */
enum dim { D_NONE, D_HIDDEN, D_QDIM, D_KVDIM, D_QKVDIM, D_INTER, D_INTER2 };
/* Where a Linear's bias flag comes from. */
enum biasmode { B_NONE, B_TRUE, B_ATTN, B_MLP };

struct layer_item {
	const char *path;  /* relative to the decoder layer: "self_attn.q_proj" */
	int kind;          /* enum lq_module_kind */
	const char *cls;   /* CONTAINER: suffix after the prefix ("Attention"); else NULL */
	int role;          /* weight role (LINEAR, RMSNORM), -1 */
	int bias_role;     /* LINEAR bias role, -1 */
	int din, dout;     /* LINEAR: in/out features */
	int bias;          /* enum biasmode */
};

#define ITEM_END {NULL, 0, NULL, -1, -1, D_NONE, D_NONE, B_NONE}

/* Llama / Mistral / Qwen2 / Gemma 2 attention and MLP, in registration order. */
#define ATTN_QKVO(bq, bo) \
	{"self_attn", LQ_MOD_CONTAINER, "Attention", -1, -1, D_NONE, D_NONE, B_NONE}, \
	{"self_attn.q_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_Q, LQ_ROLE_Q_BIAS, D_HIDDEN, D_QDIM, bq}, \
	{"self_attn.k_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_K, LQ_ROLE_K_BIAS, D_HIDDEN, D_KVDIM, bq}, \
	{"self_attn.v_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_V, LQ_ROLE_V_BIAS, D_HIDDEN, D_KVDIM, bq}, \
	{"self_attn.o_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_O, LQ_ROLE_O_BIAS, D_QDIM, D_HIDDEN, bo}
#define MLP_GUD(b) \
	{"mlp", LQ_MOD_CONTAINER, "MLP", -1, -1, D_NONE, D_NONE, B_NONE}, \
	{"mlp.gate_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_GATE, LQ_ROLE_GATE_BIAS, D_HIDDEN, D_INTER, b}, \
	{"mlp.up_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_UP, LQ_ROLE_UP_BIAS, D_HIDDEN, D_INTER, b}, \
	{"mlp.down_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_DOWN, LQ_ROLE_DOWN_BIAS, D_INTER, D_HIDDEN, b}, \
	{"mlp.act_fn", LQ_MOD_ACT, NULL, -1, -1, D_NONE, D_NONE, B_NONE}
#define NORM(path, role) {path, LQ_MOD_RMSNORM, NULL, role, -1, D_NONE, D_NONE, B_NONE}

static const struct layer_item llama_layer[] = {
	ATTN_QKVO(B_ATTN, B_ATTN),
	MLP_GUD(B_MLP),
	NORM("input_layernorm", LQ_ROLE_ATTN_NORM),
	NORM("post_attention_layernorm", LQ_ROLE_POST_ATTN_NORM),
	ITEM_END
};

static const struct layer_item mistral_layer[] = {
	ATTN_QKVO(B_NONE, B_NONE),
	MLP_GUD(B_NONE),
	NORM("input_layernorm", LQ_ROLE_ATTN_NORM),
	NORM("post_attention_layernorm", LQ_ROLE_POST_ATTN_NORM),
	ITEM_END
};

static const struct layer_item qwen2_layer[] = {
	ATTN_QKVO(B_TRUE, B_NONE),
	MLP_GUD(B_NONE),
	NORM("input_layernorm", LQ_ROLE_ATTN_NORM),
	NORM("post_attention_layernorm", LQ_ROLE_POST_ATTN_NORM),
	ITEM_END
};

static const struct layer_item phi3_layer[] = {
	{"self_attn", LQ_MOD_CONTAINER, "Attention", -1, -1, D_NONE, D_NONE, B_NONE},
	{"self_attn.o_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_O, LQ_ROLE_O_BIAS, D_QDIM, D_HIDDEN, B_NONE},
	{"self_attn.qkv_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_QKV, -1, D_HIDDEN, D_QKVDIM, B_NONE},
	{"mlp", LQ_MOD_CONTAINER, "MLP", -1, -1, D_NONE, D_NONE, B_NONE},
	{"mlp.gate_up_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_GATE_UP, -1, D_HIDDEN, D_INTER2, B_NONE},
	{"mlp.down_proj", LQ_MOD_LINEAR, NULL, LQ_ROLE_DOWN, LQ_ROLE_DOWN_BIAS, D_INTER, D_HIDDEN, B_NONE},
	{"mlp.activation_fn", LQ_MOD_ACT, NULL, -1, -1, D_NONE, D_NONE, B_NONE},
	NORM("input_layernorm", LQ_ROLE_ATTN_NORM),
	NORM("post_attention_layernorm", LQ_ROLE_POST_ATTN_NORM),
	{"resid_attn_dropout", LQ_MOD_DROPOUT, NULL, -1, -1, D_NONE, D_NONE, B_NONE},
	{"resid_mlp_dropout", LQ_MOD_DROPOUT, NULL, -1, -1, D_NONE, D_NONE, B_NONE},
	ITEM_END
};

static const struct layer_item gemma2_layer[] = {
	ATTN_QKVO(B_ATTN, B_ATTN),
	MLP_GUD(B_NONE),
	NORM("input_layernorm", LQ_ROLE_ATTN_NORM),
	NORM("post_attention_layernorm", LQ_ROLE_POST_ATTN_NORM),
	NORM("pre_feedforward_layernorm", LQ_ROLE_PRE_FFN_NORM),
	NORM("post_feedforward_layernorm", LQ_ROLE_POST_FFN_NORM),
	ITEM_END
};

/* Sliding-window layout of the layers. */
enum swmode {
	SW_NONE,         /* Llama: no sliding window */
	SW_ALL,          /* Mistral, Phi-3: sliding_window (when set) on every layer */
	SW_QWEN2,        /* use_sliding_window and layer >= max_window_layers, or layer_types */
	SW_ALTERNATE     /* Gemma 2: even layers sliding, or layer_types */
};

/* Hyper-parameter defaults of transformers 5.x's config classes. */
struct arch_desc {
	int arch;
	const char *model_type;
	const char *prefix;          /* class name prefix: "Llama" */
	const struct layer_item *layer;
	const char *act_key;         /* "hidden_act" or "hidden_activation" */
	int64_t vocab, hidden, inter, layers, heads, kv_heads; /* kv_heads -1: = heads */
	int64_t head_dim;            /* -1: hidden / heads */
	int64_t max_pos;
	double eps;
	const char *act;
	int tie;
	int64_t pad, bos, eos;       /* -1 = None */
	int64_t sliding;             /* 0 = None */
	int swmode;
	int scaled_embed;            /* Gemma2TextScaledWordEmbedding, sqrt(hidden) */
	int gemma;                   /* (1 + w) norms, softcaps, query_pre_attn_scalar */
	int fused;                   /* Phi-3 fused projections */
	int attn_bias_key;           /* config attention_bias applies */
	int mlp_bias_key;            /* config mlp_bias applies */
	int qkv_bias;                /* q/k/v biases always (Qwen2) */
};

static const struct arch_desc arch_table[] = {
	{LQ_ARCH_LLAMA, "llama", "Llama", llama_layer, "hidden_act",
	 32000, 4096, 11008, 32, 32, -1, -1, 2048, 1e-6, "silu", 0, -1, 1, 2, 0, SW_NONE,
	 0, 0, 0, 1, 1, 0},
	{LQ_ARCH_MISTRAL, "mistral", "Mistral", mistral_layer, "hidden_act",
	 32000, 4096, 14336, 32, 32, 8, -1, 4096 * 32, 1e-6, "silu", 0, -1, 1, 2, 4096, SW_ALL,
	 0, 0, 0, 0, 0, 0},
	{LQ_ARCH_QWEN2, "qwen2", "Qwen2", qwen2_layer, "hidden_act",
	 151936, 4096, 22016, 32, 32, 32, -1, 32768, 1e-6, "silu", 0, -1, -1, -1, 4096, SW_QWEN2,
	 0, 0, 0, 0, 0, 1},
	{LQ_ARCH_PHI3, "phi3", "Phi3", phi3_layer, "hidden_act",
	 32064, 3072, 8192, 32, 32, -1, -1, 4096, 1e-5, "silu", 0, 32000, 1, 32000, 0, SW_ALL,
	 0, 0, 1, 0, 0, 0},
	{LQ_ARCH_GEMMA2, "gemma2", "Gemma2", gemma2_layer, "hidden_activation",
	 256000, 2304, 9216, 26, 8, 4, 256, 8192, 1e-6, "gelu_pytorch_tanh", 1, 0, 2, 1, 4096,
	 SW_ALTERNATE, 1, 1, 0, 1, 0, 0},
};

static const struct {
	const char *name;
	int act;
	const char *cls;
} act_table[] = {
	{"silu", LQ_ACT_SILU, "SiLUActivation"},
	{"swish", LQ_ACT_SILU, "SiLU"},
	{"gelu_pytorch_tanh", LQ_ACT_GELU_TANH, "GELUTanh"},
	{"gelu", LQ_ACT_GELU, "GELUActivation"},
	{"gelu_new", LQ_ACT_GELU_NEW, "NewGELUActivation"},
	{"relu", LQ_ACT_RELU, "ReLU"},
};

static const char *const role_names[LQ_ROLE_COUNT] = {
	"embed", "input_layernorm", "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj",
	"q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.bias",
	"post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
	"gate_proj", "up_proj", "gate_up_proj", "down_proj",
	"gate_proj.bias", "up_proj.bias", "down_proj.bias", "norm", "lm_head",
};

const char *lq_role_name(int role)
{
	return role >= 0 && role < LQ_ROLE_COUNT ? role_names[role] : "?";
}

const char *lq_arch_name(int arch)
{
	for (size_t i = 0; i < sizeof arch_table / sizeof arch_table[0]; i++)
		if (arch_table[i].arch == arch)
			return arch_table[i].model_type;
	return "?";
}

int lq_arch_of_class(const char *an)
{
	for (size_t i = 0; an && i < sizeof arch_table / sizeof arch_table[0]; i++) {
		size_t pl = strlen(arch_table[i].prefix);
		if (!strncmp(an, arch_table[i].prefix, pl) && !strcmp(an + pl, "ForCausalLM"))
			return arch_table[i].arch;
	}
	return -1;
}

/* ------------------------------------------------------------- the model */

struct extra_tensor {
	const char *name;
	int dtype;
	int ndim;
	uint64_t nelem;
};

struct lq_model {
	struct lq_arena arena;
	struct lq_model_config cfg;
	struct lq_model_param *params;
	size_t nparams, capparams;
	struct lq_module *mods;
	size_t nmods, capmods;
	struct lq_model_buffer bufs[3];
	size_t nbufs;
	/* last validation */
	char **warnings;
	size_t nwarnings, capwarnings;
	struct extra_tensor *extras;
	size_t nextras;
	struct lq_arena varena; /* strings of the last validation */
};

/* ------------------------------------------------------- config parsing */

static int bad_key(struct lq_error *err, const char *key, const char *want)
{
	return lq_fail(err, LQ_ERR_FORMAT, "config.json: '%s' must be %s", key, want);
}

/* Key present and not null. */
static json_t *getkey(json_t *o, const char *key)
{
	json_t *v = o ? json_object_get(o, key) : NULL;
	return v && !json_is_null(v) ? v : NULL;
}

static int get_int(json_t *o, const char *key, int64_t def, int64_t lo, int64_t hi,
		   int64_t *out, struct lq_error *err)
{
	json_t *v = getkey(o, key);
	if (!v) {
		*out = def;
		return LQ_OK;
	}
	int64_t x;
	if (json_is_integer(v)) {
		x = json_integer_value(v);
	} else if (json_is_real(v)) {
		double d = json_real_value(v);
		if (!(d == floor(d)) || d < -9e15 || d > 9e15)
			return bad_key(err, key, "an integer");
		x = (int64_t)d;
	} else {
		return bad_key(err, key, "an integer");
	}
	if (x < lo || x > hi)
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: '%s' = %lld is out of range [%lld, %lld]",
			       key, (long long)x, (long long)lo, (long long)hi);
	*out = x;
	return LQ_OK;
}

static int get_num(json_t *o, const char *key, double def, double *out, struct lq_error *err)
{
	json_t *v = getkey(o, key);
	if (!v) {
		*out = def;
		return LQ_OK;
	}
	if (!json_is_number(v))
		return bad_key(err, key, "a number");
	*out = json_number_value(v);
	if (!isfinite(*out))
		return bad_key(err, key, "a finite number");
	return LQ_OK;
}

static int get_bool(json_t *o, const char *key, int def, int *out, struct lq_error *err)
{
	json_t *v = getkey(o, key);
	if (!v) {
		*out = def;
		return LQ_OK;
	}
	if (!json_is_boolean(v))
		return bad_key(err, key, "true or false");
	*out = json_is_true(v);
	return LQ_OK;
}

/* Token id: absent -> def, null -> -1. */
static int get_token(json_t *o, const char *key, int64_t def, int64_t *out, struct lq_error *err)
{
	json_t *v = json_object_get(o, key);
	if (!v) {
		*out = def;
		return LQ_OK;
	}
	if (json_is_null(v)) {
		*out = -1;
		return LQ_OK;
	}
	return get_int(o, key, def, INT64_MIN / 2, INT64_MAX / 2, out, err);
}

static int parse_dtype_name(const char *s)
{
	if (!strcmp(s, "bfloat16")) return LQ_DTYPE_BF16;
	if (!strcmp(s, "float16") || !strcmp(s, "half")) return LQ_DTYPE_F16;
	if (!strcmp(s, "float32") || !strcmp(s, "float")) return LQ_DTYPE_F32;
	return -1;
}

static double *get_factors(struct lq_model *m, json_t *d, const char *key, int64_t n,
			   int *rc, struct lq_error *err)
{
	json_t *v = getkey(d, key);
	*rc = LQ_OK;
	if (!v)
		return NULL;
	if (!json_is_array(v) || (int64_t)json_array_size(v) != n) {
		*rc = lq_fail(err, LQ_ERR_FORMAT,
			      "config.json: rope '%s' must be a list of %lld numbers (rotary_dim / 2)",
			      key, (long long)n);
		return NULL;
	}
	double *f = lq_arena_alloc(&m->arena, (size_t)n * sizeof *f + 1);
	if (!f) {
		*rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		return NULL;
	}
	for (int64_t i = 0; i < n; i++) {
		json_t *x = json_array_get(v, (size_t)i);
		if (!json_is_number(x)) {
			*rc = lq_fail(err, LQ_ERR_FORMAT, "config.json: rope '%s'[%lld] is not a number",
				      key, (long long)i);
			return NULL;
		}
		f[i] = json_number_value(x);
	}
	return f;
}

static double yarn_mscale(double scale, double mscale)
{
	return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static int parse_rope(struct lq_model *m, const struct arch_desc *a, json_t *root,
		      struct lq_error *err)
{
	struct lq_model_config *c = &m->cfg;
	struct lq_rope *r = &c->rope;
	json_t *d = getkey(root, "rope_parameters");
	json_t *old = getkey(root, "rope_scaling");
	int rc;
	/* Phi-3 reads rope_scaling first; the others rope_parameters. */
	if (a->fused && old)
		d = old;
	else if (!d)
		d = old;
	if (d && !json_is_object(d))
		return bad_key(err, d == old ? "rope_scaling" : "rope_parameters", "an object");
	if (d && (json_object_get(d, "full_attention") || json_object_get(d, "sliding_attention")))
		return lq_fail(err, LQ_ERR_UNSUPPORTED,
			       "config.json: per-layer-type rope parameters are not supported");

	const char *type = "default";
	json_t *t = getkey(d, "rope_type");
	if (!t)
		t = getkey(d, "type");
	if (t) {
		if (!json_is_string(t))
			return bad_key(err, "rope_type", "a string");
		type = json_string_value(t);
	}
	if (!strcmp(type, "default")) r->type = LQ_ROPE_DEFAULT;
	else if (!strcmp(type, "linear")) r->type = LQ_ROPE_LINEAR;
	else if (!strcmp(type, "dynamic")) r->type = LQ_ROPE_DYNAMIC;
	else if (!strcmp(type, "yarn")) r->type = a->fused ? LQ_ROPE_LONGROPE : LQ_ROPE_YARN;
	else if (!strcmp(type, "longrope") || !strcmp(type, "su")) r->type = LQ_ROPE_LONGROPE;
	else if (!strcmp(type, "llama3")) r->type = LQ_ROPE_LLAMA3;
	else
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "config.json: rope type '%s' is not supported",
			       type);

	double theta;
	if ((rc = get_num(root, "rope_theta", 10000.0, &theta, err)))
		return rc;
	if ((rc = get_num(d, "rope_theta", theta, &r->theta, err)))
		return rc;
	double prf;
	if ((rc = get_num(root, "partial_rotary_factor", 1.0, &prf, err)))
		return rc;
	if ((rc = get_num(d, "partial_rotary_factor", prf, &r->partial_rotary_factor, err)))
		return rc;
	if (!(r->theta > 0) || !(r->partial_rotary_factor > 0 && r->partial_rotary_factor <= 1))
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: bad rope_theta or partial_rotary_factor");
	r->rotary_dim = (int64_t)((double)c->head_dim * r->partial_rotary_factor);
	r->rotary_dim -= r->rotary_dim % 2;
	if (r->rotary_dim < 2)
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: rotary dimension %lld is too small",
			       (long long)r->rotary_dim);

	if ((rc = get_num(d, "factor", 1.0, &r->factor, err)))
		return rc;
	if ((rc = get_num(d, "low_freq_factor", 1.0, &r->low_freq_factor, err)))
		return rc;
	if ((rc = get_num(d, "high_freq_factor", 4.0, &r->high_freq_factor, err)))
		return rc;
	if ((rc = get_num(d, "beta_fast", 32.0, &r->beta_fast, err)))
		return rc;
	if ((rc = get_num(d, "beta_slow", 1.0, &r->beta_slow, err)))
		return rc;
	if ((rc = get_num(d, "mscale", 0.0, &r->mscale, err)) ||
	    (rc = get_num(d, "mscale_all_dim", 0.0, &r->mscale_all_dim, err)) ||
	    (rc = get_bool(d, "truncate", 1, &r->truncate, err)))
		return rc;
	if (r->beta_fast == 0)
		r->beta_fast = 32; /* transformers: `or 32` */
	if (r->beta_slow == 0)
		r->beta_slow = 1;
	int64_t omax;
	/* Phi-3 keeps original_max_position_embeddings at the top level and it wins. */
	if ((rc = get_int(d, "original_max_position_embeddings", c->max_position_embeddings, 1,
			  INT32_MAX, &omax, err)))
		return rc;
	if (a->fused && (rc = get_int(root, "original_max_position_embeddings", omax, 1, INT32_MAX,
				      &omax, err)))
		return rc;
	r->original_max_position_embeddings = omax;

	if (r->type == LQ_ROPE_LLAMA3) {
		const char *need[] = {"factor", "low_freq_factor", "high_freq_factor",
				      "original_max_position_embeddings"};
		for (size_t i = 0; i < 4; i++)
			if (!getkey(d, need[i]))
				return lq_fail(err, LQ_ERR_FORMAT,
					       "config.json: llama3 rope scaling needs '%s'", need[i]);
		if (!(r->factor > 0) || !(r->high_freq_factor > r->low_freq_factor))
			return lq_fail(err, LQ_ERR_FORMAT, "config.json: bad llama3 rope factors");
	}
	if ((r->type == LQ_ROPE_LINEAR || r->type == LQ_ROPE_DYNAMIC) && !(r->factor > 0))
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: rope 'factor' must be positive");

	double af = 0;
	if ((rc = get_num(d, "attention_factor", 0.0, &af, err)))
		return rc;
	r->attention_factor = 1.0;
	if (r->type == LQ_ROPE_LONGROPE) {
		r->nfactors = r->rotary_dim / 2;
		r->short_factor = get_factors(m, d, "short_factor", r->nfactors, &rc, err);
		if (rc)
			return rc;
		r->long_factor = get_factors(m, d, "long_factor", r->nfactors, &rc, err);
		if (rc)
			return rc;
		if (!r->short_factor || !r->long_factor)
			return lq_fail(err, LQ_ERR_FORMAT,
				       "config.json: longrope needs 'short_factor' and 'long_factor'");
		if (!getkey(d, "factor"))
			r->factor = (double)c->max_position_embeddings / (double)omax;
		if (af > 0)
			r->attention_factor = af;
		else if (r->factor > 1)
			r->attention_factor = sqrt(1 + log(r->factor) / log((double)omax));
	} else if (r->type == LQ_ROPE_YARN) {
		if (!getkey(d, "factor"))
			r->factor = (double)c->max_position_embeddings / (double)omax;
		if (af > 0)
			r->attention_factor = af;
		else if (r->mscale != 0 && r->mscale_all_dim != 0)
			r->attention_factor = yarn_mscale(r->factor, r->mscale) /
					      yarn_mscale(r->factor, r->mscale_all_dim);
		else
			r->attention_factor = yarn_mscale(r->factor, 1);
	}
	return LQ_OK;
}

/* Round a double to the model dtype (as torch stores a scalar buffer). */
static double round_to_dtype(double x, int dtype)
{
	if (dtype == LQ_DTYPE_BF16)
		return lq_bf16_to_f32(lq_f32_to_bf16((float)x));
	if (dtype == LQ_DTYPE_F16)
		return lq_f16_to_f32(lq_f32_to_f16((float)x));
	return x;
}

static int parse_layer_windows(struct lq_model *m, const struct arch_desc *a, json_t *root,
			       struct lq_error *err)
{
	struct lq_model_config *c = &m->cfg;
	int64_t *w = lq_arena_alloc(&m->arena, (size_t)c->num_layers * sizeof *w);
	int rc;
	if (!w)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	c->layer_window = w;
	int64_t sw;
	if ((rc = get_int(root, "sliding_window", a->sliding, 0, INT64_MAX / 2, &sw, err)))
		return rc;
	if (json_object_get(root, "sliding_window") && json_is_null(json_object_get(root, "sliding_window")))
		sw = 0;
	if (a->swmode == SW_NONE)
		sw = 0;
	if (a->swmode == SW_QWEN2) {
		int use;
		if ((rc = get_bool(root, "use_sliding_window", 0, &use, err)))
			return rc;
		if (!use)
			sw = 0;
	}
	c->sliding_window = sw;
	json_t *lt = getkey(root, "layer_types");
	if (lt && (a->swmode == SW_QWEN2 || a->swmode == SW_ALTERNATE)) {
		if (!json_is_array(lt) || (int64_t)json_array_size(lt) != c->num_layers)
			return bad_key(err, "layer_types", "a list with one entry per layer");
		for (int64_t i = 0; i < c->num_layers; i++) {
			const char *s = json_string_value(json_array_get(lt, (size_t)i));
			if (!s)
				return bad_key(err, "layer_types", "a list of strings");
			if (!strcmp(s, "sliding_attention"))
				w[i] = sw;
			else if (!strcmp(s, "full_attention"))
				w[i] = 0;
			else
				return lq_fail(err, LQ_ERR_UNSUPPORTED,
					       "config.json: layer type '%s' is not supported", s);
		}
		return LQ_OK;
	}
	int64_t mwl = 0;
	if (a->swmode == SW_QWEN2 &&
	    (rc = get_int(root, "max_window_layers", 28, 0, INT32_MAX, &mwl, err)))
		return rc;
	for (int64_t i = 0; i < c->num_layers; i++) {
		switch (a->swmode) {
		case SW_ALL: w[i] = sw; break;
		case SW_QWEN2: w[i] = i >= mwl ? sw : 0; break;
		case SW_ALTERNATE: w[i] = (i + 1) % 2 ? sw : 0; break;
		default: w[i] = 0;
		}
	}
	return LQ_OK;
}

static int parse_config(struct lq_model *m, json_t *root, const struct arch_desc **ap,
			struct lq_error *err)
{
	struct lq_model_config *c = &m->cfg;
	const char *mt = json_string_value(getkey(root, "model_type"));
	const struct arch_desc *a = NULL;
	int rc;
	if (!mt) {
		/* older files: infer from architectures[0] */
		int arch = lq_arch_of_class(json_string_value(json_array_get(getkey(root, "architectures"), 0)));
		for (size_t i = 0; arch >= 0 && i < sizeof arch_table / sizeof arch_table[0]; i++)
			if (arch_table[i].arch == arch)
				a = &arch_table[i];
		if (!a)
			return lq_fail(err, LQ_ERR_FORMAT, "config.json: no 'model_type'");
	} else {
		for (size_t i = 0; i < sizeof arch_table / sizeof arch_table[0]; i++)
			if (!strcmp(mt, arch_table[i].model_type))
				a = &arch_table[i];
		if (!a)
			return lq_fail(err, LQ_ERR_UNSUPPORTED,
				       "config.json: architecture '%s' is not supported "
				       "(supported: llama, mistral, qwen2, phi3, gemma2)", mt);
	}
	*ap = a;
	c->arch = a->arch;
	c->model_type = a->model_type;
	char cls[64];
	snprintf(cls, sizeof cls, "%sForCausalLM", a->prefix);
	if (!(c->class_name = lq_arena_strdup(&m->arena, cls)))
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");

	const int64_t DMAX = (int64_t)1 << 24; /* dimensions; products stay < 2^63 */
	if ((rc = get_int(root, "vocab_size", a->vocab, 1, (int64_t)1 << 26, &c->vocab_size, err)) ||
	    (rc = get_int(root, "hidden_size", a->hidden, 1, DMAX, &c->hidden_size, err)) ||
	    (rc = get_int(root, "intermediate_size", a->inter, 1, DMAX, &c->intermediate_size, err)) ||
	    (rc = get_int(root, "num_hidden_layers", a->layers, 1, 4096, &c->num_layers, err)) ||
	    (rc = get_int(root, "num_attention_heads", a->heads, 1, 65536, &c->num_heads, err)) ||
	    (rc = get_int(root, "num_key_value_heads", a->kv_heads < 0 ? c->num_heads : a->kv_heads,
			  1, 65536, &c->num_kv_heads, err)) ||
	    (rc = get_int(root, "max_position_embeddings", a->max_pos, 1, INT32_MAX,
			  &c->max_position_embeddings, err)))
		return rc;
	if (c->num_heads % c->num_kv_heads)
		return lq_fail(err, LQ_ERR_FORMAT,
			       "config.json: num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
			       (long long)c->num_heads, (long long)c->num_kv_heads);
	int64_t hd_def = a->head_dim > 0 ? a->head_dim : c->hidden_size / c->num_heads;
	if ((rc = get_int(root, "head_dim", hd_def, 1, 65536, &c->head_dim, err)))
		return rc;
	if (c->head_dim < 1)
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: hidden_size %lld < num_attention_heads %lld",
			       (long long)c->hidden_size, (long long)c->num_heads);
	if (c->num_heads * c->head_dim > DMAX)
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: attention dimensions too large");
	if ((rc = get_num(root, "rms_norm_eps", a->eps, &c->rms_norm_eps, err)))
		return rc;
	if (!(c->rms_norm_eps >= 0))
		return bad_key(err, "rms_norm_eps", "a positive number");

	json_t *act = getkey(root, a->act_key);
	if (!act && strcmp(a->act_key, "hidden_act"))
		act = getkey(root, "hidden_act");
	const char *an = act ? json_string_value(act) : a->act;
	if (!an)
		return bad_key(err, a->act_key, "a string");
	c->act = -1;
	for (size_t i = 0; i < sizeof act_table / sizeof act_table[0]; i++)
		if (!strcmp(an, act_table[i].name)) {
			c->act = act_table[i].act;
			c->act_name = act_table[i].name;
		}
	if (c->act < 0)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "config.json: activation '%s' is not supported", an);

	int ab = 0, mb = 0;
	if (a->attn_bias_key && (rc = get_bool(root, "attention_bias", 0, &ab, err)))
		return rc;
	if (a->mlp_bias_key && (rc = get_bool(root, "mlp_bias", 0, &mb, err)))
		return rc;
	c->attention_bias = ab;
	c->mlp_bias = mb;
	c->qkv_bias = a->qkv_bias;
	c->fused_qkv = c->fused_gate_up = a->fused;
	if ((rc = get_bool(root, "tie_word_embeddings", a->tie, &c->tie_word_embeddings, err)))
		return rc;
	if ((rc = get_token(root, "pad_token_id", a->pad, &c->pad_token_id, err)) ||
	    (rc = get_token(root, "bos_token_id", a->bos, &c->bos_token_id, err)))
		return rc;
	/* torch normalises a negative padding_idx (an explicit -1 too) */
	json_t *pad = getkey(root, "pad_token_id");
	if (pad && c->pad_token_id < 0)
		c->pad_token_id += c->vocab_size;
	if (c->pad_token_id < -1 || c->pad_token_id >= c->vocab_size ||
	    (pad && c->pad_token_id < 0))
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: pad_token_id %lld is outside the vocabulary",
			       (long long)c->pad_token_id);
	json_t *eos = json_object_get(root, "eos_token_id");
	if (!eos) {
		if (a->eos >= 0)
			c->eos_token_ids[c->n_eos++] = a->eos;
	} else if (json_is_array(eos)) {
		size_t i;
		json_t *x;
		json_array_foreach(eos, i, x) {
			if (!json_is_integer(x))
				return bad_key(err, "eos_token_id", "an integer or a list of integers");
			if (c->n_eos < 8)
				c->eos_token_ids[c->n_eos++] = json_integer_value(x);
		}
	} else if (json_is_integer(eos)) {
		c->eos_token_ids[c->n_eos++] = json_integer_value(eos);
	} else if (!json_is_null(eos)) {
		return bad_key(err, "eos_token_id", "an integer or a list of integers");
	}

	c->dtype = LQ_DTYPE_BF16;
	json_t *dt = getkey(root, "dtype");
	if (!dt)
		dt = getkey(root, "torch_dtype");
	if (dt) {
		const char *s = json_string_value(dt);
		if (!s)
			return bad_key(err, "dtype", "a string");
		if (strcmp(s, "auto")) {
			c->dtype = parse_dtype_name(s);
			if (c->dtype < 0)
				return lq_fail(err, LQ_ERR_UNSUPPORTED, "config.json: dtype '%s' is not supported", s);
		}
	}

	if ((rc = parse_rope(m, a, root, err)))
		return rc;
	if ((rc = parse_layer_windows(m, a, root, err)))
		return rc;

	c->attn_scale = 1.0 / sqrt((double)c->head_dim);
	c->embed_scale = 1.0;
	if (a->gemma) {
		double qs, s1, s2;
		if ((rc = get_num(root, "query_pre_attn_scalar", 256, &qs, err)))
			return rc;
		if (!(qs > 0))
			return bad_key(err, "query_pre_attn_scalar", "positive");
		c->attn_scale = 1.0 / sqrt(qs);
		if ((rc = get_num(root, "attn_logit_softcapping", 50.0, &s1, err)) ||
		    (rc = get_num(root, "final_logit_softcapping", 30.0, &s2, err)))
			return rc;
		/* an explicit null disables the cap */
		if (json_is_null(json_object_get(root, "attn_logit_softcapping")))
			s1 = 0;
		if (json_is_null(json_object_get(root, "final_logit_softcapping")))
			s2 = 0;
		c->attn_logit_softcap = s1;
		c->final_logit_softcap = s2;
		c->norm_plus_one = 1;
		c->sandwich_norms = 1;
	}
	if (a->scaled_embed)
		c->embed_scale = round_to_dtype(sqrt((double)c->hidden_size), c->dtype);
	if (a->fused && (rc = get_num(root, "resid_pdrop", 0.0, &c->resid_pdrop, err)))
		return rc;
	return LQ_OK;
}

/* ---------------------------------------------------------- tree building */

static int grow(void **p, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return 0;
	size_t nc = *cap ? *cap * 2 : 64;
	void *q = realloc(*p, nc * elem);
	if (!q)
		return -1;
	*p = q;
	*cap = nc;
	return 0;
}

struct builder {
	struct lq_model *m;
	int **kids;      /* per module: growable list of children */
	int *nkids, *capkids;
	size_t capk;
	int oom;
};

static int add_module(struct builder *b, int parent, const char *name, const char *cls, int kind,
		      int layer)
{
	struct lq_model *m = b->m;
	if (b->oom || grow((void **)&m->mods, &m->capmods, m->nmods, sizeof *m->mods)) {
		b->oom = 1;
		return -1;
	}
	if (m->nmods >= b->capk) {
		size_t nc = b->capk ? b->capk * 2 : 64;
		int **k = realloc(b->kids, nc * sizeof *k);
		if (k)
			b->kids = k;
		int *nk = k ? realloc(b->nkids, nc * sizeof *nk) : NULL;
		if (nk)
			b->nkids = nk;
		int *ck = nk ? realloc(b->capkids, nc * sizeof *ck) : NULL;
		if (!ck) {
			b->oom = 1;
			return -1;
		}
		b->capkids = ck;
		b->capk = nc;
	}
	int idx = (int)m->nmods;
	struct lq_module *mod = &m->mods[m->nmods++];
	memset(mod, 0, sizeof *mod);
	b->kids[idx] = NULL;
	b->nkids[idx] = b->capkids[idx] = 0;
	mod->name = lq_arena_strdup(&m->arena, name);
	mod->cls = lq_arena_strdup(&m->arena, cls);
	mod->kind = kind;
	mod->parent = parent;
	mod->weight = mod->bias = -1;
	mod->layer = layer;
	mod->padding_idx = -1;
	if (parent >= 0 && m->mods[parent].path[0]) {
		size_t n = strlen(m->mods[parent].path) + strlen(name) + 2;
		char *p = lq_arena_alloc(&m->arena, n);
		if (p)
			snprintf(p, n, "%s.%s", m->mods[parent].path, name);
		mod->path = p;
	} else {
		mod->path = lq_arena_strdup(&m->arena, name);
	}
	if (!mod->name || !mod->cls || !mod->path) {
		b->oom = 1;
		return -1;
	}
	if (parent >= 0) {
		if (b->nkids[parent] >= b->capkids[parent]) {
			int nc = b->capkids[parent] ? b->capkids[parent] * 2 : 8;
			int *k = realloc(b->kids[parent], (size_t)nc * sizeof *k);
			if (!k) {
				b->oom = 1;
				return -1;
			}
			b->kids[parent] = k;
			b->capkids[parent] = nc;
		}
		b->kids[parent][b->nkids[parent]++] = idx;
	}
	return idx;
}

static int add_param(struct builder *b, int module, const char *attr, int role, int layer,
		     int ndim, uint64_t d0, uint64_t d1, int linear_weight)
{
	struct lq_model *m = b->m;
	if (b->oom || module < 0 ||
	    grow((void **)&m->params, &m->capparams, m->nparams, sizeof *m->params)) {
		b->oom = 1;
		return -1;
	}
	int idx = (int)m->nparams;
	struct lq_model_param *p = &m->params[m->nparams++];
	memset(p, 0, sizeof *p);
	const char *path = m->mods[module].path;
	size_t n = strlen(path) + strlen(attr) + 2;
	char *name = lq_arena_alloc(&m->arena, n);
	if (!name) {
		b->oom = 1;
		return -1;
	}
	snprintf(name, n, "%s.%s", path, attr);
	p->name = name;
	p->attr = !strcmp(attr, "weight") ? "weight" : "bias";
	p->role = role;
	p->layer = layer;
	p->module = module;
	p->ndim = ndim;
	p->shape[0] = d0;
	p->shape[1] = ndim > 1 ? d1 : 0;
	p->nelem = ndim > 1 ? d0 * d1 : d0;
	p->is_linear_weight = linear_weight;
	p->quantize_default = linear_weight && role != LQ_ROLE_LM_HEAD;
	p->src_index = -1;
	if (!strcmp(attr, "weight"))
		m->mods[module].weight = idx;
	else
		m->mods[module].bias = idx;
	return idx;
}

static int add_linear(struct builder *b, int parent, const char *name, int role, int bias_role,
		      int layer, uint64_t in, uint64_t out, int bias)
{
	int mi = add_module(b, parent, name, "Linear", LQ_MOD_LINEAR, layer);
	if (mi < 0)
		return -1;
	b->m->mods[mi].in_features = in;
	b->m->mods[mi].out_features = out;
	add_param(b, mi, "weight", role, layer, 2, out, in, 1);
	if (bias)
		add_param(b, mi, "bias", bias_role, layer, 1, out, 0, 0);
	return mi;
}

static int add_norm(struct builder *b, int parent, const char *name, const char *prefix,
		    int role, int layer)
{
	char cls[64];
	snprintf(cls, sizeof cls, "%sRMSNorm", prefix);
	int mi = add_module(b, parent, name, cls, LQ_MOD_RMSNORM, layer);
	if (mi < 0)
		return -1;
	b->m->mods[mi].norm_dim = (uint64_t)b->m->cfg.hidden_size;
	b->m->mods[mi].eps = b->m->cfg.rms_norm_eps;
	add_param(b, mi, "weight", role, layer, 1, (uint64_t)b->m->cfg.hidden_size, 0, 0);
	return mi;
}

static uint64_t dim_value(const struct lq_model_config *c, int d)
{
	switch (d) {
	case D_HIDDEN: return (uint64_t)c->hidden_size;
	case D_QDIM: return (uint64_t)(c->num_heads * c->head_dim);
	case D_KVDIM: return (uint64_t)(c->num_kv_heads * c->head_dim);
	case D_QKVDIM: return (uint64_t)((c->num_heads + 2 * c->num_kv_heads) * c->head_dim);
	case D_INTER: return (uint64_t)c->intermediate_size;
	case D_INTER2: return 2 * (uint64_t)c->intermediate_size;
	}
	return 0;
}

static const char *act_class(const struct lq_model_config *c)
{
	for (size_t i = 0; i < sizeof act_table / sizeof act_table[0]; i++)
		if (!strcmp(c->act_name, act_table[i].name))
			return act_table[i].cls;
	return "Module";
}

static void build_layer(struct builder *b, const struct arch_desc *a, int list, int layer)
{
	const struct lq_model_config *c = &b->m->cfg;
	char name[32], cls[64];
	snprintf(name, sizeof name, "%d", layer);
	snprintf(cls, sizeof cls, "%sDecoderLayer", a->prefix);
	int lm = add_module(b, list, name, cls, LQ_MOD_CONTAINER, layer);
	int itmod[32]; /* module index of each item */
	for (int i = 0; a->layer[i].path && i < 32; i++) {
		const struct layer_item *it = &a->layer[i];
		/* parent: the item whose path is our prefix */
		const char *dot = strrchr(it->path, '.');
		int parent = lm;
		const char *leaf = it->path;
		if (dot) {
			size_t pl = (size_t)(dot - it->path);
			for (int j = 0; j < i; j++)
				if (strlen(a->layer[j].path) == pl && !strncmp(a->layer[j].path, it->path, pl))
					parent = itmod[j];
			leaf = dot + 1;
		}
		int bias = it->bias == B_TRUE || (it->bias == B_ATTN && c->attention_bias) ||
			   (it->bias == B_MLP && c->mlp_bias);
		switch (it->kind) {
		case LQ_MOD_CONTAINER:
			snprintf(cls, sizeof cls, "%s%s", a->prefix, it->cls);
			itmod[i] = add_module(b, parent, leaf, cls, LQ_MOD_CONTAINER, layer);
			break;
		case LQ_MOD_LINEAR:
			itmod[i] = add_linear(b, parent, leaf, it->role, it->bias_role, layer,
					      dim_value(c, it->din), dim_value(c, it->dout), bias);
			break;
		case LQ_MOD_RMSNORM:
			itmod[i] = add_norm(b, parent, leaf, a->prefix, it->role, layer);
			break;
		case LQ_MOD_ACT:
			itmod[i] = add_module(b, parent, leaf, act_class(c), LQ_MOD_ACT, layer);
			break;
		case LQ_MOD_DROPOUT:
			itmod[i] = add_module(b, parent, leaf, "Dropout", LQ_MOD_DROPOUT, layer);
			if (itmod[i] >= 0)
				b->m->mods[itmod[i]].dropout_p = c->resid_pdrop;
			break;
		default:
			itmod[i] = -1;
		}
	}
}

static int build_tree(struct lq_model *m, const struct arch_desc *a, struct lq_error *err)
{
	struct builder b = {.m = m};
	const struct lq_model_config *c = &m->cfg;
	char cls[64];
	uint64_t V = (uint64_t)c->vocab_size, H = (uint64_t)c->hidden_size;

	int root = add_module(&b, -1, "", c->class_name, LQ_MOD_CONTAINER, -1);
	snprintf(cls, sizeof cls, "%sModel", a->prefix);
	int model = add_module(&b, root, "model", cls, LQ_MOD_CONTAINER, -1);
	if (a->scaled_embed)
		snprintf(cls, sizeof cls, "%sTextScaledWordEmbedding", a->prefix);
	else
		snprintf(cls, sizeof cls, "Embedding");
	int emb = add_module(&b, model, "embed_tokens", cls, LQ_MOD_EMBEDDING, -1);
	if (emb >= 0) {
		m->mods[emb].num_embeddings = V;
		m->mods[emb].embedding_dim = H;
		m->mods[emb].padding_idx = c->pad_token_id;
	}
	add_param(&b, emb, "weight", LQ_ROLE_EMBED, -1, 2, V, H, 0);
	int list = add_module(&b, model, "layers", "ModuleList", LQ_MOD_LIST, -1);
	for (int64_t l = 0; l < c->num_layers && !b.oom; l++)
		build_layer(&b, a, list, (int)l);
	add_norm(&b, model, "norm", a->prefix, LQ_ROLE_FINAL_NORM, -1);
	snprintf(cls, sizeof cls, "%sRotaryEmbedding", a->prefix);
	int rot = add_module(&b, model, "rotary_emb", cls, LQ_MOD_ROTARY, -1);
	int head = add_linear(&b, root, "lm_head", LQ_ROLE_LM_HEAD, -1, -1, H, V, 0);
	if (head >= 0 && c->tie_word_embeddings)
		m->params[m->mods[head].weight].tied = 1;

	/* buffers */
	if (!b.oom) {
		static const char *const rn[2] = {"model.rotary_emb.inv_freq",
						  "model.rotary_emb.original_inv_freq"};
		if (a->scaled_embed) {
			struct lq_model_buffer *bf = &m->bufs[m->nbufs++];
			bf->name = "model.embed_tokens.embed_scale";
			bf->module = emb;
			bf->dtype = c->dtype;
			bf->ndim = 0;
			bf->nelem = 1;
		}
		for (int i = 0; i < 2; i++) {
			struct lq_model_buffer *bf = &m->bufs[m->nbufs++];
			bf->name = rn[i];
			bf->module = rot;
			bf->dtype = LQ_DTYPE_F32;
			bf->ndim = 1;
			bf->shape[0] = bf->nelem = (uint64_t)c->rope.rotary_dim / 2;
		}
	}

	/* freeze the child lists into the arena */
	for (size_t i = 0; i < m->nmods && !b.oom; i++) {
		int n = b.nkids[i];
		m->mods[i].nchildren = n;
		if (n) {
			int *k = lq_arena_alloc(&m->arena, (size_t)n * sizeof *k);
			if (!k)
				b.oom = 1;
			else
				memcpy(k, b.kids[i], (size_t)n * sizeof *k);
			m->mods[i].children = k;
		}
	}
	for (size_t i = 0; i < b.capk && i < m->nmods; i++)
		free(b.kids[i]);
	free(b.kids);
	free(b.nkids);
	free(b.capkids);
	if (b.oom)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory building the model description");
	return LQ_OK;
}

int lq_model_from_config(struct lq_model **out, const char *text, size_t len,
			 struct lq_error *err)
{
	*out = NULL;
	if (!text)
		return lq_fail(err, LQ_ERR_INVALID, "config.json: no text");
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: line %d: %s", je.line, je.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return lq_fail(err, LQ_ERR_FORMAT, "config.json: not a JSON object");
	}
	struct lq_model *m = calloc(1, sizeof *m);
	if (!m) {
		json_decref(root);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	}
	const struct arch_desc *a = NULL;
	int rc = parse_config(m, root, &a, err);
	json_decref(root);
	if (!rc)
		rc = build_tree(m, a, err);
	if (rc) {
		lq_model_free(m);
		return rc;
	}
	lq_model_plan(m, NULL, m->cfg.dtype);
	*out = m;
	return LQ_OK;
}

static void clear_validation(struct lq_model *m)
{
	free(m->warnings);
	m->warnings = NULL;
	m->nwarnings = m->capwarnings = 0;
	free(m->extras);
	m->extras = NULL;
	m->nextras = 0;
	lq_arena_free(&m->varena);
}

void lq_model_free(struct lq_model *m)
{
	if (!m)
		return;
	clear_validation(m);
	free(m->params);
	free(m->mods);
	lq_arena_free(&m->arena);
	free(m);
}

/* ------------------------------------------------------------ accessors */

const struct lq_model_config *lq_model_config(const struct lq_model *m) { return &m->cfg; }
size_t lq_model_nparams(const struct lq_model *m) { return m->nparams; }
size_t lq_model_nmodules(const struct lq_model *m) { return m->nmods; }
size_t lq_model_nbuffers(const struct lq_model *m) { return m->nbufs; }

const struct lq_model_param *lq_model_param(const struct lq_model *m, size_t i)
{
	return i < m->nparams ? &m->params[i] : NULL;
}

const struct lq_module *lq_model_module(const struct lq_model *m, size_t i)
{
	return i < m->nmods ? &m->mods[i] : NULL;
}

const struct lq_model_buffer *lq_model_buffer(const struct lq_model *m, size_t i)
{
	return i < m->nbufs ? &m->bufs[i] : NULL;
}

long lq_model_find_param(const struct lq_model *m, const char *name)
{
	/* Names have a fixed shape: parse the layer index to jump close. */
	if (!name)
		return -1;
	size_t start = 0;
	const char *pre = "model.layers.";
	if (!strncmp(name, pre, strlen(pre))) {
		const char *s = name + strlen(pre);
		char *end;
		long l = strtol(s, &end, 10);
		if (end == s || *end != '.' || l < 0 || l >= m->cfg.num_layers)
			return -1;
		/* binary search the first parameter of layer l (params are in layer order) */
		size_t lo = 0, hi = m->nparams;
		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			int pl = m->params[mid].layer;
			if (pl < 0 && mid > 0 && m->params[mid].role != LQ_ROLE_EMBED)
				pl = INT32_MAX; /* after the layers */
			if (pl < l)
				lo = mid + 1;
			else
				hi = mid;
		}
		start = lo;
		for (size_t i = start; i < m->nparams && m->params[i].layer == l; i++)
			if (!strcmp(m->params[i].name, name))
				return (long)i;
		return -1;
	}
	for (size_t i = 0; i < m->nparams; i++)
		if (m->params[i].layer < 0 && !strcmp(m->params[i].name, name))
			return (long)i;
	return -1;
}

long lq_model_find_role(const struct lq_model *m, int role, int layer)
{
	for (size_t i = 0; i < m->nparams; i++)
		if (m->params[i].role == role && m->params[i].layer == layer)
			return (long)i;
	return -1;
}

int lq_model_runtime_check(const struct lq_model_config *c, struct lq_error *err)
{
	int64_t rot = c->rope.rotary_dim;
	if (c->num_layers <= 0 || c->num_heads <= 0 || c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads ||
	    c->head_dim <= 0 || c->head_dim % 2 || rot < 0 || rot > c->head_dim || rot % 2 || c->vocab_size <= 0 ||
	    c->hidden_size <= 0)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "model hyper-parameters out of range for the runtime");
	return LQ_OK;
}

const struct lq_tensor *lq_model_role_tensor(const struct lq_model *m, const struct lq_file *f, int role,
					     int layer)
{
	long i = lq_model_find_role(m, role, layer);
	if (i < 0)
		return NULL;
	const struct lq_model_param *p = &m->params[i];
	if (p->tied) {
		long e = lq_model_find_role(m, LQ_ROLE_EMBED, -1);
		if (e < 0)
			return NULL;
		p = &m->params[e];
	}
	return lq_file_find(f, p->name);
}

int lq_model_map_name(const struct lq_model *m, const char *name, long *param, long *module)
{
	long p = lq_model_find_param(m, name);
	if (param)
		*param = p;
	if (module)
		*module = p >= 0 ? m->params[p].module : -1;
	return p >= 0 ? LQ_OK : LQ_ERR_NOTFOUND;
}

/* --------------------------------------------------------------- storage */

void lq_model_plan(struct lq_model *m, const struct lq_qparams *q, int dtype)
{
	for (size_t i = 0; i < m->nparams; i++) {
		struct lq_model_param *p = &m->params[i];
		p->st.dtype = dtype;
		p->st.qtype = LQ_QTYPE_NONE;
		p->st.block_size = 0;
		p->st.double_quant = 0;
		if (q && q->qtype != LQ_QTYPE_NONE && p->quantize_default) {
			p->st.qtype = q->qtype;
			p->st.block_size = q->block_size;
			p->st.double_quant = q->double_quant;
		}
	}
}

static int storage_check(const struct lq_model_storage *s, const char *name, struct lq_error *err)
{
	if (s->dtype < 0 || s->dtype >= LQ_DTYPE_COUNT)
		return lq_fail(err, LQ_ERR_INVALID, "tensor '%s': bad dtype %d", name, s->dtype);
	if (s->qtype < 0 || s->qtype >= LQ_QTYPE_COUNT)
		return lq_fail(err, LQ_ERR_INVALID, "tensor '%s': bad qtype %d", name, s->qtype);
	if (s->qtype != LQ_QTYPE_NONE) {
		int bs = s->block_size;
		if (bs < 32 || bs > 4096 || (bs & (bs - 1)))
			return lq_fail(err, LQ_ERR_INVALID, "tensor '%s': bad block size %d", name, bs);
	}
	return LQ_OK;
}

int lq_model_set_storage(struct lq_model *m, size_t i, const struct lq_model_storage *s,
			 struct lq_error *err)
{
	if (i >= m->nparams || !s)
		return lq_fail(err, LQ_ERR_INVALID, "parameter index %zu out of range", i);
	int rc = storage_check(s, m->params[i].name, err);
	if (rc)
		return rc;
	m->params[i].st = *s;
	if (s->qtype == LQ_QTYPE_NONE) {
		m->params[i].st.block_size = 0;
		m->params[i].st.double_quant = 0;
	}
	return LQ_OK;
}

/* ------------------------------------------------------------ validation */

static void fmt_shape(char *buf, size_t n, int ndim, const uint64_t *shape)
{
	size_t o = 0;
	o += (size_t)snprintf(buf + o, n - o, "[");
	for (int i = 0; i < ndim && o < n; i++)
		o += (size_t)snprintf(buf + o, n - o, "%s%llu", i ? ", " : "",
				      (unsigned long long)shape[i]);
	if (o < n)
		snprintf(buf + o, n - o, "]");
}

static int add_warning(struct lq_model *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int add_warning(struct lq_model *m, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (grow((void **)&m->warnings, &m->capwarnings, m->nwarnings, sizeof *m->warnings))
		return -1;
	char *s = lq_arena_strdup(&m->varena, buf);
	if (!s)
		return -1;
	m->warnings[m->nwarnings++] = s;
	return 0;
}

/*
 * Statistics tensors of a checkpoint saved by transformers with bitsandbytes
 * 4-bit layers (bnb-format.md 3.1): NAME.weight.absmax, ... belong to the
 * Linear whose weight is NAME.weight.
 */
enum { BNB_PACKED = 1, BNB_ABSMAX = 2, BNB_NESTED = 4, BNB_NF4 = 8, BNB_FP4 = 16, BNB_SCB = 32,
       BNB_INT8 = 64 };
static const struct {
	const char *suffix;
	int flag;
	int module_level;  /* NAME.SCB for the weight NAME.weight */
} bnb_suffixes[] = {
	{".absmax", BNB_ABSMAX, 0},
	{".nested_absmax", BNB_NESTED, 0},
	{".quant_map", 0, 0},
	{".nested_quant_map", 0, 0},
	{".quant_state.bitsandbytes__nf4", BNB_NF4, 0},
	{".quant_state.bitsandbytes__fp4", BNB_FP4, 0},
	{".SCB", BNB_SCB, 1},            /* LLM.int8: fp32 row scales */
	{".weight_format", 0, 1},
};

/* The Linear weight parameter a bnb statistics tensor belongs to, or -1. */
static long bnb_owner(const struct lq_model *m, const char *name, int *flag)
{
	size_t n = strlen(name);
	for (size_t k = 0; k < sizeof bnb_suffixes / sizeof bnb_suffixes[0]; k++) {
		size_t sl = strlen(bnb_suffixes[k].suffix);
		if (n <= sl || strcmp(name + n - sl, bnb_suffixes[k].suffix) || n - sl >= 512)
			continue;
		char base[520];
		memcpy(base, name, n - sl);
		base[n - sl] = 0;
		if (bnb_suffixes[k].module_level)
			memcpy(base + n - sl, ".weight", 8);
		long p = lq_model_find_param(m, base);
		if (p >= 0 && m->params[p].is_linear_weight) {
			*flag = bnb_suffixes[k].flag;
			return p;
		}
	}
	return -1;
}

static int validate_list(struct lq_model *m, const struct lq_model_tensor *t, size_t n,
			 unsigned char *bnb, uint64_t *absmax_n, struct lq_error *err)
{
	char a[160], b[160];
	for (size_t i = 0; i < n; i++) {
		const struct lq_model_tensor *x = &t[i];
		if (!x->name || x->ndim < 0 || x->ndim > LQ_MAX_DIMS)
			return lq_fail(err, LQ_ERR_INVALID, "tensor %zu: bad name or rank", i);
		uint64_t ne = 1;
		for (int d = 0; d < x->ndim; d++)
			if (!lq_mul_u64(ne, x->shape[d], &ne))
				return lq_fail(err, LQ_ERR_SHAPE, "tensor '%s': shape overflows", x->name);
		long p = lq_model_find_param(m, x->name);
		if (p < 0) {
			int flag = 0;
			long o = bnb_owner(m, x->name, &flag);
			if (o >= 0) {
				bnb[o] |= (unsigned char)flag;
				if (flag == BNB_ABSMAX)
					absmax_n[o] = ne;
				continue;
			}
			struct extra_tensor *e = &m->extras[m->nextras++];
			e->name = lq_arena_strdup(&m->varena, x->name);
			e->dtype = x->dtype;
			e->ndim = x->ndim;
			e->nelem = ne;
			if (!e->name)
				return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			fmt_shape(a, sizeof a, x->ndim, x->shape);
			if (add_warning(m, "unexpected tensor '%s' %s (not part of %s)", x->name, a,
					m->cfg.class_name))
				return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			continue;
		}
		struct lq_model_param *q = &m->params[p];
		if (q->present)
			return lq_fail(err, LQ_ERR_FORMAT, "tensor '%s' is listed twice", x->name);
		int same = x->ndim == q->ndim;
		for (int d = 0; same && d < q->ndim; d++)
			same = x->shape[d] == q->shape[d];
		/* a bitsandbytes 4-bit weight: uint8 [ceil(n/2), 1] */
		int packed = !same && q->is_linear_weight && x->qtype == LQ_QTYPE_NONE &&
			     x->dtype == LQ_DTYPE_U8 && x->ndim == 2 && x->shape[1] == 1 &&
			     x->shape[0] == (q->nelem + 1) / 2;
		if (!same && !packed) {
			fmt_shape(a, sizeof a, x->ndim, x->shape);
			fmt_shape(b, sizeof b, q->ndim, q->shape);
			return lq_fail(err, LQ_ERR_SHAPE,
				       "tensor '%s': shape %s does not match the expected %s",
				       x->name, a, b);
		}
		if (x->dtype < 0 || x->dtype >= LQ_DTYPE_COUNT)
			return lq_fail(err, LQ_ERR_UNSUPPORTED, "tensor '%s': unsupported dtype", x->name);
		struct lq_model_storage s = {x->dtype, x->qtype, x->block_size ? x->block_size : 64,
					     x->double_quant};
		if (same && q->is_linear_weight && x->qtype == LQ_QTYPE_NONE && x->dtype == LQ_DTYPE_I8)
			bnb[p] |= BNB_INT8; /* LLM.int8 when its SCB is there (checked below) */
		if (packed) {
			bnb[p] |= BNB_PACKED;
			s.dtype = m->cfg.dtype;
			s.qtype = LQ_QTYPE_NF4; /* settled below from the quant_state name */
		}
		int rc = storage_check(&s, x->name, err);
		if (rc)
			return rc;
		if (s.qtype == LQ_QTYPE_NONE)
			s.block_size = s.double_quant = 0;
		q->st = s;
		q->present = 1;
		q->src_index = (long)i;
	}
	for (size_t i = 0; i < m->nparams; i++) {
		struct lq_model_param *q = &m->params[i];
		if (bnb[i] & BNB_PACKED) {
			q->st.qtype = bnb[i] & BNB_FP4 ? LQ_QTYPE_FP4 : LQ_QTYPE_NF4;
			q->st.double_quant = !!(bnb[i] & BNB_NESTED);
			/* block size from the number of absmax values */
			for (int bs = 32; absmax_n[i] && bs <= 4096; bs *= 2)
				if ((q->nelem + (uint64_t)bs - 1) / (uint64_t)bs == absmax_n[i]) {
					q->st.block_size = bs;
					break;
				}
		} else if ((bnb[i] & (BNB_INT8 | BNB_SCB)) == (BNB_INT8 | BNB_SCB) &&
			   !(bnb[i] & ~(BNB_INT8 | BNB_SCB))) {
			/* bitsandbytes LLM.int8: int8 [N, K] with one fp32 scale per row */
			q->st.qtype = LQ_QTYPE_INT8;
			q->st.block_size = 0;
			q->st.double_quant = 0;
			q->st.dtype = m->cfg.dtype;
		} else if (bnb[i] & ~BNB_INT8) {
			return lq_fail(err, LQ_ERR_FORMAT,
				       "tensor '%s' has bitsandbytes statistics but is not stored as bitsandbytes does",
				       q->name);
		}
		if (q->present)
			continue;
		if (q->role == LQ_ROLE_LM_HEAD) {
			long e = lq_model_find_role(m, LQ_ROLE_EMBED, -1);
			if (!q->tied && add_warning(m, "'%s' is missing: using the tied embedding "
						    "'model.embed_tokens.weight'", q->name))
				return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			q->tied = 1;
			if (e >= 0)
				q->st = m->params[e].st;
			continue;
		}
		fmt_shape(b, sizeof b, q->ndim, q->shape);
		return lq_fail(err, LQ_ERR_NOTFOUND, "tensor '%s' is missing (expected %s)", q->name, b);
	}
	/* An lm_head present in the file with tie_word_embeddings: transformers
	 * ties it anyway (the stored copy is ignored). */
	long h = lq_model_find_role(m, LQ_ROLE_LM_HEAD, -1);
	if (h >= 0 && m->params[h].present && m->params[h].tied &&
	    add_warning(m, "'%s' is stored but tie_word_embeddings is set: it is ignored",
			m->params[h].name))
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	return LQ_OK;
}

int lq_model_validate(struct lq_model *m, const struct lq_model_tensor *t, size_t n,
		      struct lq_error *err)
{
	clear_validation(m);
	if (n && !t)
		return lq_fail(err, LQ_ERR_INVALID, "no tensor list");
	for (size_t i = 0; i < m->nparams; i++) {
		struct lq_model_param *q = &m->params[i];
		q->present = 0;
		q->src_index = -1;
		q->tied = q->role == LQ_ROLE_LM_HEAD && m->cfg.tie_word_embeddings;
	}
	unsigned char *bnb = calloc(m->nparams + 1, 1);
	uint64_t *absmax_n = calloc(m->nparams + 1, sizeof *absmax_n);
	m->extras = calloc(n + 1, sizeof *m->extras);
	int rc = bnb && absmax_n && m->extras ? validate_list(m, t, n, bnb, absmax_n, err)
					      : lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	free(bnb);
	free(absmax_n);
	return rc;
}

size_t lq_model_nwarnings(const struct lq_model *m) { return m->nwarnings; }

const char *lq_model_warning(const struct lq_model *m, size_t i)
{
	return i < m->nwarnings ? m->warnings[i] : NULL;
}

/* ------------------------------------------------------------ footprint */

static int param_bytes(const struct lq_model_param *p, uint64_t *hf, uint64_t *stats,
		       uint64_t *bnb_extra)
{
	uint64_t dummy;
	if (!bnb_extra)
		bnb_extra = &dummy;
	const struct lq_model_storage *s = &p->st;
	*hf = *stats = *bnb_extra = 0;
	if (s->qtype == LQ_QTYPE_NONE) {
		return lq_mul_u64(p->nelem, lq_dtype_size(s->dtype), hf) ? 0 : -1;
	}
	if (s->qtype == LQ_QTYPE_INT8 && s->block_size == 0) {
		/* bitsandbytes LLM.int8 (row-wise): int8 weight + fp32 SCB per row */
		*hf = p->nelem;
		*stats = 4 * p->shape[0];
		return 0;
	}
	struct lq_qparams q = {s->qtype, s->block_size, s->double_quant};
	*hf = lq_qdata_bytes(s->qtype, p->nelem);
	*stats = (uint64_t)lq_qscale_bytes(&q, p->nelem) + lq_qnested_bytes(&q, p->nelem) +
		 (s->double_quant ? 4 : 0);
	if (s->qtype == LQ_QTYPE_NF4 || s->qtype == LQ_QTYPE_FP4)
		*bnb_extra = 16 * 4 + (s->double_quant ? 256 * 4 : 0);
	return 0;
}

int lq_model_param_bytes(const struct lq_model_param *p, uint64_t *bytes, uint64_t *stats_bytes)
{
	uint64_t b, s;
	if (param_bytes(p, &b, &s, NULL))
		return LQ_ERR_SHAPE;
	if (bytes)
		*bytes = b;
	if (stats_bytes)
		*stats_bytes = s;
	return LQ_OK;
}

int lq_model_footprint(const struct lq_model *m, struct lq_footprint *fp, struct lq_error *err)
{
	memset(fp, 0, sizeof *fp);
	uint64_t extra = 0;
	for (size_t i = 0; i < m->nparams; i++) {
		const struct lq_model_param *p = &m->params[i];
		if (p->tied)
			continue;
		uint64_t hf, st, bx;
		if (param_bytes(p, &hf, &st, &bx))
			return lq_fail(err, LQ_ERR_SHAPE, "tensor '%s': size overflows", p->name);
		fp->n_params += p->nelem;
		if (p->st.qtype != LQ_QTYPE_NONE)
			fp->n_quantized += p->nelem;
		fp->hf_bytes += hf;
		fp->stats_bytes += st;
		extra += bx;
	}
	long e = lq_model_find_role(m, LQ_ROLE_EMBED, -1);
	for (size_t i = 0; i < m->nbufs; i++) {
		const struct lq_model_buffer *bf = &m->bufs[i];
		int dt = bf->dtype;
		/* a scalar buffer created in the model dtype follows the embedding's */
		if (bf->ndim == 0 && e >= 0)
			dt = m->params[e].st.dtype;
		fp->buffer_bytes += bf->nelem * lq_dtype_size(dt);
	}
	fp->hf_bytes += fp->buffer_bytes;
	fp->resident_bytes = fp->hf_bytes + fp->stats_bytes;
	fp->bnb_resident_bytes = fp->resident_bytes + extra;
	return LQ_OK;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static uint64_t tensor_record_bytes(const char *name, int ndim)
{
	return 8 + align_up(strlen(name), 8) + 8 + 8 * (uint64_t)ndim + 8 + 48 + 8;
}

int lq_model_estimate_lq(const struct lq_model *m, const struct lq_estimate_blob *blobs,
			 size_t nblobs, uint64_t metadata_bytes, uint64_t *size,
			 struct lq_error *err)
{
	const uint64_t A = LQ_ESTIMATE_ALIGN;
	uint64_t off = 64, index = 0;
	*size = 0;
	for (size_t i = 0; i < nblobs; i++) {
		if (!blobs[i].name)
			return lq_fail(err, LQ_ERR_INVALID, "blob %zu has no name", i);
		off = align_up(off, A) + blobs[i].size;
		index += 8 + align_up(strlen(blobs[i].name), 8) + 24;
	}
	for (size_t i = 0; i < m->nparams; i++) {
		const struct lq_model_param *p = &m->params[i];
		if (p->tied && !p->present)
			continue;
		uint64_t hf, st, bx;
		if (param_bytes(p, &hf, &st, &bx))
			return lq_fail(err, LQ_ERR_SHAPE, "tensor '%s': size overflows", p->name);
		off = align_up(off, A) + hf;
		if (p->st.qtype != LQ_QTYPE_NONE) {
			struct lq_qparams q = {p->st.qtype, p->st.block_size, p->st.double_quant};
			off = align_up(off, A) + lq_qscale_bytes(&q, p->nelem);
			size_t ns = lq_qnested_bytes(&q, p->nelem);
			if (ns)
				off = align_up(off, A) + ns;
		}
		index += tensor_record_bytes(p->name, p->ndim);
	}
	for (size_t i = 0; i < m->nextras; i++) {
		const struct extra_tensor *e = &m->extras[i];
		off = align_up(off, A) + e->nelem * (lq_dtype_size(e->dtype) ? lq_dtype_size(e->dtype) : 4);
		index += tensor_record_bytes(e->name, e->ndim);
	}
	off = align_up(off, 8) + (metadata_bytes ? metadata_bytes : LQ_ESTIMATE_METADATA_BYTES);
	off = align_up(off, 8) + index + 64;
	*size = off;
	return LQ_OK;
}

/* ------------------------------------------------------------------ RoPE */

void lq_rope_inv_freq(const struct lq_model_config *c, int64_t seq_len, float *inv_freq,
		      double *attention_scale)
{
	const struct lq_rope *r = &c->rope;
	int64_t dim = r->rotary_dim, half = dim / 2;
	double base = r->theta, scale = 1.0;
	const double pi = 3.14159265358979323846;
	if (r->type == LQ_ROPE_DYNAMIC) {
		double L = (double)c->max_position_embeddings;
		double s = seq_len > c->max_position_embeddings ? (double)seq_len : L;
		base = base * pow(r->factor * s / L - (r->factor - 1), (double)dim / (double)(dim - 2));
	}
	for (int64_t i = 0; i < half; i++) {
		/* transformers: base ** (float32(2i) / dim) in float32 */
		float e = (float)(2 * i) / (float)dim;
		double f = 1.0 / (double)(float)pow(base, (double)e);
		switch (r->type) {
		case LQ_ROPE_LINEAR:
			f /= r->factor;
			break;
		case LQ_ROPE_LLAMA3: {
			double old = (double)r->original_max_position_embeddings;
			double lw = old / r->low_freq_factor, hw = old / r->high_freq_factor;
			double wl = 2 * pi / f;
			double fl = wl > lw ? f / r->factor : f;
			if (!(wl < hw) && !(wl > lw)) {
				double sm = (old / wl - r->low_freq_factor) /
					    (r->high_freq_factor - r->low_freq_factor);
				fl = (1 - sm) * fl / r->factor + sm * fl;
			}
			f = fl;
			break;
		}
		case LQ_ROPE_LONGROPE: {
			const double *ext = seq_len > r->original_max_position_embeddings ? r->long_factor
											  : r->short_factor;
			f = 1.0 / ((double)(float)ext[i] * (double)(float)pow(base, (double)e));
			break;
		}
		case LQ_ROPE_YARN: {
			double omax = (double)r->original_max_position_embeddings;
			double lo = (double)dim * log(omax / (r->beta_fast * 2 * pi)) / (2 * log(base));
			double hi = (double)dim * log(omax / (r->beta_slow * 2 * pi)) / (2 * log(base));
			if (r->truncate) {
				lo = floor(lo);
				hi = ceil(hi);
			}
			if (lo < 0)
				lo = 0;
			if (hi > (double)(dim - 1))
				hi = (double)(dim - 1);
			if (lo == hi)
				hi += 0.001;
			double ramp = ((double)i - lo) / (hi - lo);
			ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
			double extra = 1 - ramp;
			f = (f / r->factor) * (1 - extra) + f * extra;
			break;
		}
		default:
			break;
		}
		inv_freq[i] = (float)f;
	}
	if (r->type == LQ_ROPE_LONGROPE || r->type == LQ_ROPE_YARN)
		scale = r->attention_factor;
	if (attention_scale)
		*attention_scale = scale;
}
