/*
 * test_model.c - model descriptions: config parsing (old and new keys),
 * per-architecture hyper-parameters, validation errors and warnings,
 * footprints (the Llama-3.1-8B figures), the .lq size estimate, the tree
 * renderers, and hostile configs.
 *
 * SPDX-License-Identifier: MIT
 * Copyright (c) the libquant authors
 */
#include "test.h"

#include <jansson.h>
#include <math.h>

static struct lq_model *load(const char *json, struct lq_error *err)
{
	struct lq_model *m = NULL;
	int rc = lq_model_from_config(&m, json, strlen(json), err);
	CHECK(rc == 0, "config: %s", err->msg);
	return rc ? NULL : m;
}

static int fails_with(const char *json, int code, const char *needle)
{
	struct lq_error err = {0};
	struct lq_model *m = NULL;
	int rc = lq_model_from_config(&m, json, strlen(json), &err);
	int ok = rc == code && m == NULL && (!needle || strstr(err.msg, needle));
	if (!ok)
		fprintf(stderr, "  got %d '%s' for %s\n", rc, err.msg, json);
	lq_model_free(m);
	return ok;
}

/* Llama-3.1-8B as published (older keys). */
static const char *llama8b =
	"{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"bos_token_id\":128000,"
	"\"eos_token_id\":[128001,128008,128009],\"hidden_act\":\"silu\",\"hidden_size\":4096,"
	"\"intermediate_size\":14336,\"max_position_embeddings\":131072,\"mlp_bias\":false,"
	"\"model_type\":\"llama\",\"num_attention_heads\":32,\"num_hidden_layers\":32,"
	"\"num_key_value_heads\":8,\"rms_norm_eps\":1e-05,\"rope_scaling\":{\"factor\":8.0,"
	"\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
	"\"rope_type\":\"llama3\"},\"rope_theta\":500000.0,\"tie_word_embeddings\":false,"
	"\"torch_dtype\":\"bfloat16\",\"vocab_size\":128256}";

/* The same with transformers 5.x keys. */
static const char *llama8b_new =
	"{\"architectures\":[\"LlamaForCausalLM\"],\"bos_token_id\":128000,\"eos_token_id\":128009,"
	"\"hidden_size\":4096,\"intermediate_size\":14336,\"max_position_embeddings\":131072,"
	"\"model_type\":\"llama\",\"num_attention_heads\":32,\"num_hidden_layers\":32,"
	"\"num_key_value_heads\":8,\"rms_norm_eps\":1e-05,\"rope_parameters\":{\"factor\":8.0,"
	"\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
	"\"rope_type\":\"llama3\",\"rope_theta\":500000.0},\"dtype\":\"bfloat16\",\"vocab_size\":128256}";

static void test_llama(void)
{
	struct lq_error err = {0};
	for (int v = 0; v < 2; v++) {
		struct lq_model *m = load(v ? llama8b_new : llama8b, &err);
		if (!m)
			return;
		const struct lq_model_config *c = lq_model_config(m);
		CHECK(c->arch == LQ_ARCH_LLAMA && !strcmp(c->class_name, "LlamaForCausalLM"));
		CHECK(c->hidden_size == 4096 && c->intermediate_size == 14336 && c->num_layers == 32);
		CHECK(c->num_heads == 32 && c->num_kv_heads == 8 && c->head_dim == 128);
		CHECK(c->vocab_size == 128256 && c->max_position_embeddings == 131072);
		CHECK(c->rms_norm_eps == 1e-5 && c->act == LQ_ACT_SILU);
		CHECK(c->rope.type == LQ_ROPE_LLAMA3 && c->rope.theta == 500000.0);
		CHECK(c->rope.factor == 8.0 && c->rope.low_freq_factor == 1.0 && c->rope.high_freq_factor == 4.0);
		CHECK(c->rope.original_max_position_embeddings == 8192 && c->rope.rotary_dim == 128);
		CHECK(c->rope.attention_factor == 1.0);
		CHECK(c->bos_token_id == 128000 && c->pad_token_id == -1);
		CHECK(v ? (c->n_eos == 1 && c->eos_token_ids[0] == 128009)
			: (c->n_eos == 3 && c->eos_token_ids[2] == 128009));
		CHECK(c->dtype == LQ_DTYPE_BF16 && !c->tie_word_embeddings);
		CHECK(c->sliding_window == 0 && c->layer_window[31] == 0);
		CHECK(fabs(c->attn_scale - 1 / sqrt(128.0)) < 1e-15 && c->embed_scale == 1.0);
		/* 2 + 9 per layer + norm + lm_head */
		CHECK(lq_model_nparams(m) == 1 + 32 * 9 + 2, "%zu", lq_model_nparams(m));
		long q = lq_model_find_param(m, "model.layers.31.self_attn.k_proj.weight");
		CHECK(q >= 0);
		if (q >= 0) {
			const struct lq_model_param *p = lq_model_param(m, (size_t)q);
			CHECK(p->role == LQ_ROLE_K && p->layer == 31 && p->shape[0] == 1024 &&
			      p->shape[1] == 4096 && p->is_linear_weight && p->quantize_default);
			CHECK(!strcmp(lq_model_module(m, (size_t)p->module)->path,
				      "model.layers.31.self_attn.k_proj"));
		}
		CHECK(lq_model_find_param(m, "model.layers.32.self_attn.k_proj.weight") == -1);
		CHECK(lq_model_find_param(m, "model.layers.x.self_attn.k_proj.weight") == -1);
		CHECK(lq_model_find_param(m, "model.layers.0.self_attn.k_proj.bias") == -1);
		long h = lq_model_find_param(m, "lm_head.weight");
		CHECK(h >= 0 && !lq_model_param(m, (size_t)h)->quantize_default);
		CHECK(lq_model_find_role(m, LQ_ROLE_FINAL_NORM, -1) == lq_model_find_param(m, "model.norm.weight"));
		long pi, mi;
		CHECK(lq_model_map_name(m, "model.embed_tokens.weight", &pi, &mi) == LQ_OK && pi == 0 &&
		      !strcmp(lq_model_module(m, (size_t)mi)->cls, "Embedding"));
		CHECK(lq_model_map_name(m, "model.rotary_emb.inv_freq", &pi, &mi) == LQ_ERR_NOTFOUND &&
		      pi == -1 && mi == -1);

		/* footprints of issue 4 and bnb-format.md 5.3 */
		struct lq_footprint fp;
		CHECK_OK(lq_model_footprint(m, &fp, &err), &err);
		CHECK(fp.hf_bytes == 16060523008ull, "%llu", (unsigned long long)fp.hf_bytes);
		CHECK(fp.n_params == 8030261248ull && fp.buffer_bytes == 512);
		struct lq_qparams nf4 = {LQ_QTYPE_NF4, 64, 1};
		lq_model_plan(m, &nf4, LQ_DTYPE_BF16);
		CHECK_OK(lq_model_footprint(m, &fp, &err), &err);
		CHECK(fp.hf_bytes == 5591540224ull, "%llu", (unsigned long long)fp.hf_bytes);
		CHECK(fp.stats_bytes == 109051904ull + 1703936 + 224 * 4);
		CHECK(fp.resident_bytes == fp.hf_bytes + fp.stats_bytes);
		CHECK(fp.bnb_resident_bytes == 5702540672ull, "%llu", (unsigned long long)fp.bnb_resident_bytes);
		CHECK(fp.n_quantized == 6979321856ull);
		struct lq_qparams nodq = {LQ_QTYPE_NF4, 64, 0};
		lq_model_plan(m, &nodq, LQ_DTYPE_BF16);
		CHECK_OK(lq_model_footprint(m, &fp, &err), &err);
		CHECK(fp.hf_bytes == 5591540224ull && fp.stats_bytes == 436207616ull);
		CHECK(fp.resident_bytes == 6027747840ull, "%llu", (unsigned long long)fp.resident_bytes);
		/* bnb-format.md 5.3: + 224 fp32 quant_maps */
		CHECK(fp.bnb_resident_bytes == 6027762176ull);

		/* .lq estimate: by formula (parts aligned to 256) */
		lq_model_plan(m, &nf4, LQ_DTYPE_BF16);
		struct lq_estimate_blob blobs[2] = {{"config.json", 1000}, {"tokenizer.json", 9085657}};
		uint64_t est = 0;
		CHECK_OK(lq_model_estimate_lq(m, blobs, 2, 3000, &est, &err), &err);
		uint64_t data = 0, index = 0;
		for (size_t i = 0; i < lq_model_nparams(m); i++) {
			const struct lq_model_param *p = lq_model_param(m, i);
			uint64_t b, s;
			CHECK_OK(lq_model_param_bytes(p, &b, &s), NULL);
			data += (b + 255) / 256 * 256;
			if (p->st.qtype) {
				uint64_t nb = (p->nelem + 63) / 64;
				data += (nb + 255) / 256 * 256 + ((nb + 255) / 256 * 4 + 255) / 256 * 256;
			}
			index += 8 + (strlen(p->name) + 7) / 8 * 8 + 8 + 8 * (uint64_t)p->ndim + 64;
		}
		index += 8 + 16 + 24 + 8 + 16 + 24;
		uint64_t want = 256 + 1024 + 9085696 + data + 3000 + index + 64;
		/* the last part is followed by 8-alignment, not 256 */
		CHECK(est <= want && est + 256 > want, "%llu vs %llu", (unsigned long long)est,
		      (unsigned long long)want);
		CHECK(est > 5702000000ull && est < 5720000000ull, "%llu", (unsigned long long)est);
		lq_model_free(m);
	}
}

static void test_arch_params(void)
{
	struct lq_error err = {0};
	struct lq_model *m;

	/* Mistral: sliding window on every layer, explicit head_dim */
	m = load("{\"model_type\":\"mistral\",\"hidden_size\":64,\"intermediate_size\":128,"
		 "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
		 "\"head_dim\":24,\"vocab_size\":300,\"sliding_window\":32}", &err);
	if (m) {
		const struct lq_model_config *c = lq_model_config(m);
		CHECK(c->head_dim == 24 && c->sliding_window == 32 && c->layer_window[0] == 32 &&
		      c->layer_window[1] == 32);
		CHECK(c->rms_norm_eps == 1e-6 && c->rope.theta == 10000.0 && c->rope.type == LQ_ROPE_DEFAULT);
		CHECK(c->max_position_embeddings == 131072 && c->bos_token_id == 1 && c->eos_token_ids[0] == 2);
		long q = lq_model_find_param(m, "model.layers.1.self_attn.o_proj.weight");
		CHECK(q >= 0 && lq_model_param(m, (size_t)q)->shape[1] == 96);
		lq_model_free(m);
	}
	m = load("{\"model_type\":\"mistral\",\"sliding_window\":null,\"num_hidden_layers\":1}", &err);
	if (m) {
		CHECK(lq_model_config(m)->sliding_window == 0 && lq_model_config(m)->layer_window[0] == 0);
		lq_model_free(m);
	}

	/* Qwen2: q/k/v biases, tied, sliding window from max_window_layers */
	m = load("{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":176,"
		 "\"num_hidden_layers\":3,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
		 "\"vocab_size\":320,\"tie_word_embeddings\":true,\"use_sliding_window\":true,"
		 "\"sliding_window\":64,\"max_window_layers\":2}", &err);
	if (m) {
		const struct lq_model_config *c = lq_model_config(m);
		CHECK(c->qkv_bias && !c->attention_bias && c->tie_word_embeddings);
		CHECK(c->layer_window[0] == 0 && c->layer_window[1] == 0 && c->layer_window[2] == 64);
		CHECK(c->bos_token_id == -1 && c->n_eos == 0);
		CHECK(lq_model_find_param(m, "model.layers.2.self_attn.v_proj.bias") >= 0);
		CHECK(lq_model_find_param(m, "model.layers.2.self_attn.o_proj.bias") == -1);
		long h = lq_model_find_param(m, "lm_head.weight");
		CHECK(h >= 0 && lq_model_param(m, (size_t)h)->tied);
		lq_model_free(m);
	}

	/* Phi-3: fused projections, "su" = longrope, attention factor */
	m = load("{\"model_type\":\"phi3\",\"hidden_size\":64,\"intermediate_size\":96,"
		 "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
		 "\"vocab_size\":200,\"pad_token_id\":32,\"max_position_embeddings\":4096,"
		 "\"original_max_position_embeddings\":256,\"rope_scaling\":{\"type\":\"su\","
		 "\"short_factor\":[1,1,1,1,1,1,1,1],\"long_factor\":[1,2,3,4,5,6,7,8.5]},"
		 "\"resid_pdrop\":0.1,\"sliding_window\":255}", &err);
	if (m) {
		const struct lq_model_config *c = lq_model_config(m);
		CHECK(c->fused_qkv && c->fused_gate_up && c->rope.type == LQ_ROPE_LONGROPE);
		CHECK(c->rope.nfactors == 8 && c->rope.long_factor[7] == 8.5 && c->rope.short_factor[0] == 1);
		CHECK(c->rope.original_max_position_embeddings == 256 && c->rope.factor == 16.0);
		CHECK(fabs(c->rope.attention_factor - sqrt(1 + log(16.0) / log(256.0))) < 1e-12);
		CHECK(c->pad_token_id == 32 && c->bos_token_id == 1 && c->eos_token_ids[0] == 32000);
		long q = lq_model_find_param(m, "model.layers.0.self_attn.qkv_proj.weight");
		CHECK(q >= 0 && lq_model_param(m, (size_t)q)->shape[0] == 128);
		q = lq_model_find_param(m, "model.layers.0.mlp.gate_up_proj.weight");
		CHECK(q >= 0 && lq_model_param(m, (size_t)q)->shape[0] == 192);
		CHECK(c->layer_window[1] == 255 && c->resid_pdrop == 0.1);
		lq_model_free(m);
	}
	/* Phi-3 pad_token_id default 32000 is outside a 200-token vocabulary */
	CHECK(fails_with("{\"model_type\":\"phi3\",\"vocab_size\":200,\"hidden_size\":64,"
			 "\"num_attention_heads\":4}", LQ_ERR_FORMAT, "pad_token_id"));
	CHECK(fails_with("{\"model_type\":\"phi3\",\"hidden_size\":64,\"num_attention_heads\":4,"
			 "\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,2],"
			 "\"long_factor\":[1,2]}}", LQ_ERR_FORMAT, "short_factor"));

	/* Gemma 2: softcaps, alternating windows, scaled embedding, GELU-tanh */
	m = load("{\"model_type\":\"gemma2\",\"hidden_size\":3584,\"intermediate_size\":14336,"
		 "\"num_hidden_layers\":4,\"num_attention_heads\":16,\"num_key_value_heads\":8,"
		 "\"head_dim\":256,\"vocab_size\":1000,\"query_pre_attn_scalar\":224,"
		 "\"hidden_activation\":\"gelu_pytorch_tanh\",\"torch_dtype\":\"bfloat16\"}", &err);
	if (m) {
		const struct lq_model_config *c = lq_model_config(m);
		CHECK(c->act == LQ_ACT_GELU_TANH && c->norm_plus_one && c->sandwich_norms);
		CHECK(c->attn_logit_softcap == 50.0 && c->final_logit_softcap == 30.0);
		CHECK(fabs(c->attn_scale - 1 / sqrt(224.0)) < 1e-15);
		CHECK(c->layer_window[0] == 4096 && c->layer_window[1] == 0 && c->layer_window[2] == 4096);
		CHECK(c->embed_scale == 59.75, "%g", c->embed_scale); /* sqrt(3584) in bf16 */
		CHECK(c->tie_word_embeddings && c->pad_token_id == 0 && c->bos_token_id == 2);
		CHECK(lq_model_find_param(m, "model.layers.3.post_feedforward_layernorm.weight") >= 0);
		CHECK(lq_model_nbuffers(m) == 3 && lq_model_buffer(m, 0)->nelem == 1);
		lq_model_free(m);
	}
	m = load("{\"model_type\":\"gemma2\",\"num_hidden_layers\":2,\"attn_logit_softcapping\":null,"
		 "\"layer_types\":[\"full_attention\",\"sliding_attention\"],\"dtype\":\"float32\"}", &err);
	if (m) {
		const struct lq_model_config *c = lq_model_config(m);
		CHECK(c->attn_logit_softcap == 0 && c->layer_window[0] == 0 && c->layer_window[1] == 4096);
		CHECK(fabs(c->embed_scale - sqrt(2304.0)) < 1e-12 && c->dtype == LQ_DTYPE_F32);
		lq_model_free(m);
	}
	/* a negative pad_token_id counts from the end, as torch's padding_idx */
	m = load("{\"model_type\":\"llama\",\"num_hidden_layers\":1,\"vocab_size\":97,\"pad_token_id\":-1}", &err);
	if (m) {
		CHECK(lq_model_config(m)->pad_token_id == 96);
		lq_model_free(m);
	}
	m = load("{\"model_type\":\"llama\",\"num_hidden_layers\":1,\"pad_token_id\":null}", &err);
	if (m) {
		CHECK(lq_model_config(m)->pad_token_id == -1);
		lq_model_free(m);
	}
	CHECK(fails_with("{\"model_type\":\"llama\",\"vocab_size\":97,\"pad_token_id\":-98}",
			 LQ_ERR_FORMAT, "pad_token_id"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"vocab_size\":97,\"pad_token_id\":97}",
			 LQ_ERR_FORMAT, "pad_token_id"));
	/* architecture inferred from "architectures" without model_type */
	m = load("{\"architectures\":[\"Qwen2ForCausalLM\"],\"num_hidden_layers\":1}", &err);
	if (m) {
		CHECK(lq_model_config(m)->arch == LQ_ARCH_QWEN2);
		lq_model_free(m);
	}
}

static void test_bad_configs(void)
{
	CHECK(fails_with("", LQ_ERR_FORMAT, "config.json"));
	CHECK(fails_with("{\"model_type\":\"llama\"", LQ_ERR_FORMAT, "config.json"));
	CHECK(fails_with("[]", LQ_ERR_FORMAT, "not a JSON object"));
	CHECK(fails_with("{}", LQ_ERR_FORMAT, "model_type"));
	CHECK(fails_with("{\"model_type\":\"gpt2\"}", LQ_ERR_UNSUPPORTED, "'gpt2'"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"hidden_size\":\"big\"}", LQ_ERR_FORMAT, "hidden_size"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"hidden_size\":-4}", LQ_ERR_FORMAT, "hidden_size"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"hidden_size\":4096.5}", LQ_ERR_FORMAT, "hidden_size"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"vocab_size\":1e300}", LQ_ERR_FORMAT, "vocab_size"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"num_hidden_layers\":100000}", LQ_ERR_FORMAT,
			 "num_hidden_layers"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"num_attention_heads\":32,\"num_key_value_heads\":5}",
			 LQ_ERR_FORMAT, "multiple"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"hidden_size\":16,\"num_attention_heads\":32}",
			 LQ_ERR_FORMAT, NULL));
	CHECK(fails_with("{\"model_type\":\"llama\",\"hidden_act\":\"swiglu9\"}", LQ_ERR_UNSUPPORTED,
			 "swiglu9"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"mrope\"}}",
			 LQ_ERR_UNSUPPORTED, "mrope"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"rope_scaling\":{\"rope_type\":\"llama3\","
			 "\"factor\":8}}", LQ_ERR_FORMAT, "low_freq_factor"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"rope_scaling\":[1]}", LQ_ERR_FORMAT, "rope_scaling"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"torch_dtype\":\"int4\"}", LQ_ERR_UNSUPPORTED, "int4"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"eos_token_id\":\"x\"}", LQ_ERR_FORMAT, "eos_token_id"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"tie_word_embeddings\":1}", LQ_ERR_FORMAT,
			 "tie_word_embeddings"));
	CHECK(fails_with("{\"model_type\":\"llama\",\"model_type\":\"llama\"}", LQ_ERR_FORMAT, NULL));
	CHECK(fails_with("{\"model_type\":\"qwen2\",\"num_hidden_layers\":2,\"layer_types\":[\"x\",\"y\"]}",
			 LQ_ERR_UNSUPPORTED, "'x'"));
	CHECK(fails_with("{\"model_type\":\"gemma2\",\"num_hidden_layers\":2,\"layer_types\":[]}",
			 LQ_ERR_FORMAT, "layer_types"));
	struct lq_model *m = (struct lq_model *)1;
	CHECK(lq_model_from_config(&m, NULL, 0, NULL) == LQ_ERR_INVALID && m == NULL);
	lq_model_free(NULL);
}

/* A small Llama with its tensor list. */
static const char *small =
	"{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":160,"
	"\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
	"\"vocab_size\":256,\"rms_norm_eps\":1e-05,\"pad_token_id\":0}";

static size_t small_tensors(struct lq_model *m, struct lq_model_tensor *t, int with_head)
{
	size_t n = 0;
	for (size_t i = 0; i < lq_model_nparams(m); i++) {
		const struct lq_model_param *p = lq_model_param(m, i);
		if (!with_head && p->role == LQ_ROLE_LM_HEAD)
			continue;
		memset(&t[n], 0, sizeof t[n]);
		t[n].name = p->name;
		t[n].ndim = p->ndim;
		t[n].shape[0] = p->shape[0];
		t[n].shape[1] = p->shape[1];
		t[n].dtype = LQ_DTYPE_BF16;
		n++;
	}
	return n;
}

static void test_validate(void)
{
	struct lq_error err = {0};
	struct lq_model *m = load(small, &err);
	struct lq_model_tensor t[64];
	if (!m)
		return;
	size_t n = small_tensors(m, t, 1);
	CHECK(n == 1 + 2 * 9 + 2);
	CHECK_OK(lq_model_validate(m, t, n, &err), &err);
	CHECK(lq_model_nwarnings(m) == 0);
	CHECK(lq_model_param(m, 3)->present && lq_model_param(m, 3)->src_index == 3);

	/* unexpected tensor: a warning */
	t[n] = t[0];
	t[n].name = "model.layers.0.self_attn.rotary_emb.inv_freq";
	t[n].ndim = 1;
	t[n].shape[0] = 8;
	t[n].dtype = LQ_DTYPE_F32;
	CHECK_OK(lq_model_validate(m, t, n + 1, &err), &err);
	CHECK(lq_model_nwarnings(m) == 1 &&
	      strstr(lq_model_warning(m, 0), "unexpected tensor 'model.layers.0.self_attn.rotary_emb.inv_freq' [8]"),
	      "%s", lq_model_warning(m, 0));
	CHECK(lq_model_warning(m, 1) == NULL);
	uint64_t e1 = 0, e2 = 0;
	CHECK_OK(lq_model_estimate_lq(m, NULL, 0, 0, &e1, &err), &err);
	CHECK_OK(lq_model_validate(m, t, n, &err), &err);
	CHECK_OK(lq_model_estimate_lq(m, NULL, 0, 0, &e2, &err), &err);
	CHECK(e1 > e2 + 136 && e1 <= e2 + 136 + 256 + 32, "%llu %llu", (unsigned long long)e1,
	      (unsigned long long)e2);

	/* wrong shape */
	CHECK(!strcmp(t[2].name, "model.layers.0.self_attn.k_proj.weight"));
	uint64_t keep = t[2].shape[0];
	t[2].shape[0] = keep + 1;
	int rc = lq_model_validate(m, t, n, &err);
	CHECK(rc == LQ_ERR_SHAPE && strstr(err.msg, t[2].name) && strstr(err.msg, "[33, 64]") &&
	      strstr(err.msg, "expected [32, 64]"), "%d %s", rc, err.msg);
	t[2].shape[0] = keep;
	t[2].ndim = 1;
	rc = lq_model_validate(m, t, n, &err);
	CHECK(rc == LQ_ERR_SHAPE && strstr(err.msg, "shape [32] does not"), "%s", err.msg);
	t[2].ndim = 2;

	/* missing tensor */
	struct lq_model_tensor save = t[7];
	t[7] = t[n - 1];
	rc = lq_model_validate(m, t, n - 1, &err);
	CHECK(rc == LQ_ERR_NOTFOUND && strstr(err.msg, save.name) && strstr(err.msg, "is missing"),
	      "%s", err.msg);
	t[7] = save;

	/* duplicate */
	t[n] = t[2];
	rc = lq_model_validate(m, t, n + 1, &err);
	CHECK(rc == LQ_ERR_FORMAT && strstr(err.msg, "twice"), "%s", err.msg);

	/* bad dtype */
	t[4].dtype = -1;
	CHECK(lq_model_validate(m, t, n, &err) == LQ_ERR_UNSUPPORTED);
	t[4].dtype = LQ_DTYPE_BF16;

	/* lm_head absent with untied embeddings: tied, with a warning */
	n = small_tensors(m, t, 0);
	CHECK_OK(lq_model_validate(m, t, n, &err), &err);
	CHECK(lq_model_nwarnings(m) == 1 && strstr(lq_model_warning(m, 0), "lm_head.weight"));
	struct lq_footprint fp;
	CHECK_OK(lq_model_footprint(m, &fp, &err), &err);
	/* embed 256x64, 2 x (4096+2048+2048+4096 + 3*10240 + 128), norm 64; no lm_head */
	uint64_t np = 256 * 64 + 2 * (4096 + 2048 + 2048 + 4096 + 3 * 10240 + 128) + 64;
	CHECK(fp.n_params == np && fp.hf_bytes == np * 2 + 2 * 8 * 4, "%llu", (unsigned long long)fp.n_params);

	/* storage from the list (an LQ file's tensors): NF4 and INT8 print and count */
	n = small_tensors(m, t, 1);
	for (size_t i = 0; i < n; i++) {
		long p = lq_model_find_param(m, t[i].name);
		if (p >= 0 && lq_model_param(m, (size_t)p)->quantize_default) {
			t[i].qtype = i % 2 ? LQ_QTYPE_NF4 : LQ_QTYPE_INT8;
			t[i].block_size = 0; /* = 64 */
			t[i].double_quant = 1;
		}
	}
	CHECK_OK(lq_model_validate(m, t, n, &err), &err);
	CHECK(lq_model_nwarnings(m) == 0); /* lm_head is back: untied again */
	char *txt = NULL;
	size_t len = 0;
	CHECK_OK(lq_model_tree_text(m, &txt, &len, &err), &err);
	CHECK(txt && strlen(txt) == len && txt[len - 1] == '\n');
	CHECK(txt && strstr(txt, "Linear4bit(in_features=64, out_features=64, bias=False)"));
	CHECK(txt && strstr(txt, "Linear8bitLt(in_features=64, out_features=32, bias=False)"));
	CHECK(txt && strstr(txt, "(lm_head): Linear(in_features=64, out_features=256, bias=False)"));
	CHECK(txt && strstr(txt, "(embed_tokens): Embedding(256, 64, padding_idx=0)"));
	CHECK(txt && strstr(txt, "LlamaRMSNorm((64,), eps=1e-05)"));
	CHECK(txt && strstr(txt, "(rotary_emb): LlamaRotaryEmbedding()"));
	CHECK(txt && strstr(txt, "(act_fn): SiLUActivation()"));
	/* layers 0 and 1 are stored the same (qtype alternates by list position,
	 * and each layer has 7 Linears + 2 norms = 9 entries: odd, so they differ) */
	CHECK(txt && strstr(txt, "(0): LlamaDecoderLayer(") && strstr(txt, "(1): LlamaDecoderLayer("));
	char small_buf[32];
	size_t need = lq_model_tree_snprint(m, small_buf, sizeof small_buf);
	CHECK(need == len && strlen(small_buf) == sizeof small_buf - 1 &&
	      !strncmp(small_buf, txt, sizeof small_buf - 1));
	free(txt);
	CHECK(lq_model_tree_snprint(m, NULL, 0) == len);

	/* set_storage and plan */
	struct lq_model_storage s = {LQ_DTYPE_BF16, LQ_QTYPE_NF4, 48, 1};
	CHECK(lq_model_set_storage(m, 2, &s, &err) == LQ_ERR_INVALID && strstr(err.msg, "block size"));
	s.block_size = 128;
	CHECK_OK(lq_model_set_storage(m, 2, &s, &err), &err);
	CHECK(lq_model_set_storage(m, 100000, &s, &err) == LQ_ERR_INVALID);
	s.qtype = 9;
	CHECK(lq_model_set_storage(m, 2, &s, &err) == LQ_ERR_INVALID);
	lq_model_plan(m, NULL, LQ_DTYPE_BF16);
	CHECK_OK(lq_model_tree_text(m, &txt, NULL, &err), &err);
	CHECK(txt && strstr(txt, "(0-1): 2 x LlamaDecoderLayer(") && !strstr(txt, "Linear4bit"));
	free(txt);

	char *js = NULL;
	CHECK_OK(lq_model_tree_json(m, 0, &js, &err), &err);
	CHECK(js && strstr(js, "\"class\":\"LlamaForCausalLM\"") &&
	      strstr(js, "\"tensor\":\"model.layers.1.mlp.down_proj.weight\"") &&
	      strstr(js, "\"shape\":[64,160]") && strstr(js, "\"inv_freq\""), "%.300s", js ? js : "");
	free(js);
	lq_model_free(m);
}

/* A checkpoint saved by transformers with bitsandbytes 4-bit layers. */
static void test_bnb_checkpoint(void)
{
	struct lq_error err = {0};
	struct lq_model *m = load(small, &err);
	if (!m)
		return;
	static struct lq_model_tensor t[512];
	static char names[512][128];
	for (int v = 0; v < 2; v++) {
		int dq = v == 0, bs = v == 0 ? 64 : 128;
		const char *qs = v == 0 ? "nf4" : "fp4";
		size_t n = 0;
		lq_model_plan(m, NULL, LQ_DTYPE_BF16);
		for (size_t i = 0; i < lq_model_nparams(m); i++) {
			const struct lq_model_param *p = lq_model_param(m, i);
			struct lq_model_tensor *x = &t[n++];
			memset(x, 0, sizeof *x);
			x->name = p->name;
			x->ndim = p->ndim;
			x->shape[0] = p->shape[0];
			x->shape[1] = p->shape[1];
			x->dtype = LQ_DTYPE_BF16;
			if (!p->quantize_default)
				continue;
			x->dtype = LQ_DTYPE_U8;
			x->shape[0] = (p->nelem + 1) / 2;
			x->shape[1] = 1;
			uint64_t nb = (p->nelem + (uint64_t)bs - 1) / (uint64_t)bs;
			const char *suf[5] = {"absmax", "quant_map", "quant_state.bitsandbytes__",
					      "nested_absmax", "nested_quant_map"};
			uint64_t shp[5] = {nb, 16, 100, (nb + 255) / 256, 256};
			for (int k = 0; k < (dq ? 5 : 3); k++) {
				x = &t[n];
				memset(x, 0, sizeof *x);
				snprintf(names[n], sizeof names[n], "%s.%s%s", p->name, suf[k], k == 2 ? qs : "");
				x->name = names[n];
				x->ndim = 1;
				x->shape[0] = shp[k];
				x->dtype = k == 0 && dq ? LQ_DTYPE_U8 : k == 2 ? LQ_DTYPE_U8 : LQ_DTYPE_F32;
				n++;
			}
		}
		CHECK_OK(lq_model_validate(m, t, n, &err), &err);
		CHECK(lq_model_nwarnings(m) == 0, "%s", lq_model_warning(m, 0));
		long q = lq_model_find_param(m, "model.layers.1.mlp.down_proj.weight");
		const struct lq_model_param *p = lq_model_param(m, (size_t)q);
		CHECK(p->st.qtype == (v ? LQ_QTYPE_FP4 : LQ_QTYPE_NF4) && p->st.block_size == bs &&
		      p->st.double_quant == dq && p->st.dtype == LQ_DTYPE_BF16);
		struct lq_footprint a, b;
		CHECK_OK(lq_model_footprint(m, &a, &err), &err);
		struct lq_qparams qp = {v ? LQ_QTYPE_FP4 : LQ_QTYPE_NF4, bs, dq};
		lq_model_plan(m, &qp, LQ_DTYPE_BF16);
		CHECK_OK(lq_model_footprint(m, &b, &err), &err);
		CHECK(a.hf_bytes == b.hf_bytes && a.resident_bytes == b.resident_bytes && a.n_params == b.n_params);
	}
	/* LLM.int8: int8 weights with SCB and weight_format */
	{
		size_t n = 0;
		for (size_t i = 0; i < lq_model_nparams(m); i++) {
			const struct lq_model_param *p = lq_model_param(m, i);
			struct lq_model_tensor *x = &t[n++];
			memset(x, 0, sizeof *x);
			x->name = p->name;
			x->ndim = p->ndim;
			x->shape[0] = p->shape[0];
			x->shape[1] = p->shape[1];
			x->dtype = p->quantize_default ? LQ_DTYPE_I8 : LQ_DTYPE_BF16;
			if (!p->quantize_default)
				continue;
			for (int k = 0; k < 2; k++) {
				x = &t[n];
				memset(x, 0, sizeof *x);
				snprintf(names[n], sizeof names[n], "%.*s%s", (int)(strlen(p->name) - 7), p->name,
					 k ? ".weight_format" : ".SCB");
				x->name = names[n];
				x->ndim = 1 - k;
				x->shape[0] = p->shape[0];
				x->dtype = k ? LQ_DTYPE_U8 : LQ_DTYPE_F32;
				n++;
			}
		}
		CHECK_OK(lq_model_validate(m, t, n, &err), &err);
		CHECK(lq_model_nwarnings(m) == 0, "%s", lq_model_warning(m, 0));
		struct lq_footprint fp;
		CHECK_OK(lq_model_footprint(m, &fp, &err), &err);
		/* per layer: int8 q,k,v,o,gate,up,down + bf16 norms; SCB 4 x rows */
		uint64_t lin = 4096 + 2048 + 2048 + 4096 + 3 * 10240, rows = 64 + 32 + 32 + 64 + 160 + 160 + 64;
		CHECK(fp.hf_bytes == 2 * (lin + 256) + 2 * 256 * 64 * 2 + 64 * 2 + 64, "%llu",
		      (unsigned long long)fp.hf_bytes);
		CHECK(fp.stats_bytes == 2 * 4 * rows, "%llu", (unsigned long long)fp.stats_bytes);
		char *txt = NULL;
		CHECK_OK(lq_model_tree_text(m, &txt, NULL, &err), &err);
		CHECK(txt && strstr(txt, "(down_proj): Linear8bitLt(in_features=160, out_features=64, bias=False)"));
		free(txt);
		/* an int8 weight without SCB is just an int8 tensor */
		size_t k = 0;
		for (size_t i = 0; i < n; i++)
			if (lq_model_find_param(m, t[i].name) >= 0)
				t[k++] = t[i];
		CHECK_OK(lq_model_validate(m, t, k, &err), &err);
		long d = lq_model_find_param(m, "model.layers.0.mlp.down_proj.weight");
		CHECK(lq_model_param(m, (size_t)d)->st.qtype == LQ_QTYPE_NONE &&
		      lq_model_param(m, (size_t)d)->st.dtype == LQ_DTYPE_I8);
	}
	/* statistics without a packed weight */
	t[0].name = "model.layers.0.self_attn.q_proj.weight.absmax";
	t[0].shape[0] = 64;
	t[0].ndim = 1;
	size_t n = small_tensors(m, t + 1, 1) + 1;
	CHECK(lq_model_validate(m, t, n, &err) == LQ_ERR_FORMAT && strstr(err.msg, "bitsandbytes"), "%s", err.msg);
	lq_model_free(m);
}

/* RoPE frequencies against transformers (tests/fixtures/model/rope.json). */
static void test_rope(void)
{
	const char *root = getenv("LQ_ROOT");
	char path[4096];
	snprintf(path, sizeof path, "%s/tests/fixtures/model/rope.json", root && *root ? root : ".");
	json_error_t je;
	json_t *cases = json_load_file(path, 0, &je);
	if (!cases) {
		printf("skipping rope checks: cannot read %s\n", path);
		return;
	}
	size_t i, nchecked = 0;
	json_t *c;
	json_array_foreach(cases, i, c) {
		const char *name = json_string_value(json_object_get(c, "name"));
		char *text = json_dumps(json_object_get(c, "config"), 0);
		struct lq_error err = {0};
		struct lq_model *m = NULL;
		int rc = text ? lq_model_from_config(&m, text, strlen(text), &err) : -1;
		free(text);
		CHECK(rc == 0, "%s: %s", name, err.msg);
		if (rc)
			continue;
		const struct lq_model_config *cfg = lq_model_config(m);
		size_t j;
		json_t *v;
		json_array_foreach(json_object_get(c, "values"), j, v) {
			json_t *want = json_object_get(v, "inv_freq");
			size_t n = json_array_size(want);
			float got[512];
			double scale = 0, wscale = json_number_value(json_object_get(v, "attention_scaling"));
			CHECK(n == (size_t)cfg->rope.rotary_dim / 2 && n <= 512, "%s: %zu", name, n);
			if (n != (size_t)cfg->rope.rotary_dim / 2 || n > 512)
				continue;
			lq_rope_inv_freq(cfg, json_integer_value(json_object_get(v, "seq_len")), got, &scale);
			double worst = 0;
			for (size_t k = 0; k < n; k++) {
				double w = json_number_value(json_array_get(want, k));
				double e = fabs(got[k] - w) / fabs(w);
				if (e > worst)
					worst = e;
			}
			CHECK(worst < 5e-7, "%s seq %lld: inv_freq relative error %g", name,
			      (long long)json_integer_value(json_object_get(v, "seq_len")), worst);
			CHECK(fabs(scale - wscale) < 1e-12, "%s: attention scale %.17g vs %.17g", name, scale, wscale);
			nchecked++;
		}
		lq_model_free(m);
	}
	CHECK(nchecked >= 20, "%zu", nchecked);
	json_decref(cases);
}

/* Every prefix of a valid config must fail cleanly or succeed (no crash). */
static void test_truncated(void)
{
	size_t n = strlen(llama8b);
	int crashes = 0;
	for (size_t i = 0; i < n; i += 7) {
		struct lq_model *m = NULL;
		struct lq_error err = {0};
		int rc = lq_model_from_config(&m, llama8b, i, &err);
		if (rc == 0 && !m)
			crashes++;
		if (rc && (m || !err.msg[0]))
			crashes++;
		lq_model_free(m);
	}
	CHECK(crashes == 0);
}

/* A safetensors image of the small model (zeros), without lm_head when !head. */
static char *st_image(struct lq_model *m, int head, size_t *size)
{
	char *hdr = malloc(65536);
	size_t o = 0;
	uint64_t off = 0;
	o += (size_t)snprintf(hdr + o, 65536 - o, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (size_t i = 0; i < lq_model_nparams(m); i++) {
		const struct lq_model_param *p = lq_model_param(m, i);
		if (!head && p->role == LQ_ROLE_LM_HEAD)
			continue;
		uint64_t nb = p->nelem * 2;
		o += (size_t)snprintf(hdr + o, 65536 - o, ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu", p->name,
				      (unsigned long long)p->shape[0]);
		if (p->ndim == 2)
			o += (size_t)snprintf(hdr + o, 65536 - o, ",%llu", (unsigned long long)p->shape[1]);
		o += (size_t)snprintf(hdr + o, 65536 - o, "],\"data_offsets\":[%llu,%llu]}",
				      (unsigned long long)off, (unsigned long long)(off + nb));
		off += nb;
	}
	o += (size_t)snprintf(hdr + o, 65536 - o, "}");
	while (o % 8)
		hdr[o++] = ' ';
	*size = 8 + o + off;
	char *img = calloc(1, *size);
	for (int i = 0; i < 8; i++)
		img[i] = (char)((uint64_t)o >> (8 * i));
	memcpy(img + 8, hdr, o);
	free(hdr);
	return img;
}

static void test_io(void)
{
	struct lq_error err = {0};
	struct lq_model *m = load(small, &err), *ms = NULL, *ml = NULL;
	if (!m)
		return;
	size_t size;
	char *img = st_image(m, 0, &size);
	struct lq_st *st = NULL;
	CHECK_OK(lq_st_parse(&st, img, size, "small.safetensors", &err), &err);
	if (st) {
		CHECK_OK(lq_model_from_st(&ms, small, strlen(small), st, &err), &err);
		CHECK(ms && lq_model_nwarnings(ms) == 1); /* lm_head tied */
		lq_st_close(st);
	}
	free(img);
	if (!ms) {
		lq_model_free(m);
		return;
	}
	struct lq_qparams q = {LQ_QTYPE_NF4, 64, 1};
	lq_model_plan_quant(ms, &q, 0);
	long h = lq_model_find_param(ms, "lm_head.weight");
	CHECK(h >= 0 && lq_model_param(ms, (size_t)h)->st.qtype == LQ_QTYPE_NONE);

	/* write the LQ file quantize would write (zeros), then read it back */
	FILE *f = tmpfile();
	struct lq_writer *w = NULL;
	CHECK(f != NULL);
	if (!f)
		goto out;
	CHECK_OK(lq_writer_create(&w, fileno(f), "small.lq", &err), &err);
	CHECK_OK(lq_writer_add_blob(w, "config.json", small, strlen(small), &err), &err);
	static uint8_t zeros[1 << 20];
	for (size_t i = 0; w && i < lq_model_nparams(ms); i++) {
		const struct lq_model_param *p = lq_model_param(ms, i);
		if (p->tied)
			continue;
		struct lq_tensor d = {0};
		d.name = p->name;
		d.qtype = p->st.qtype;
		d.src_dtype = p->st.dtype;
		d.block_size = p->st.block_size;
		d.double_quant = p->st.double_quant;
		d.ndim = p->ndim;
		d.shape[0] = p->shape[0];
		d.shape[1] = p->shape[1];
		CHECK_OK(lq_writer_add_tensor(w, &d, zeros, zeros, (const float *)zeros, &err), &err);
	}
	const char *meta = "{\"format\":\"lq\"}";
	CHECK_OK(lq_writer_finish(w, meta, &err), &err);
	lq_writer_free(w);
	fflush(f);
	long fsz = ftell(f);
	char *buf = malloc((size_t)fsz);
	rewind(f);
	CHECK(fread(buf, 1, (size_t)fsz, f) == (size_t)fsz);
	fclose(f);
	struct lq_file *lf = NULL;
	CHECK_OK(lq_file_parse(&lf, buf, (size_t)fsz, "small.lq", &err), &err);
	if (lf) {
		CHECK_OK(lq_model_from_lq(&ml, lf, &err), &err);
		lq_file_close(lf);
	}
	if (ml) {
		char *a = NULL, *b = NULL;
		CHECK_OK(lq_model_tree_text(ms, &a, NULL, &err), &err);
		CHECK_OK(lq_model_tree_text(ml, &b, NULL, &err), &err);
		CHECK(a && b && !strcmp(a, b) && strstr(a, "Linear4bit"));
		free(a);
		free(b);
		struct lq_footprint f1, f2;
		CHECK_OK(lq_model_footprint(ms, &f1, &err), &err);
		CHECK_OK(lq_model_footprint(ml, &f2, &err), &err);
		CHECK(f1.hf_bytes == f2.hf_bytes && f1.resident_bytes == f2.resident_bytes);
		/* the estimate is exact when told the metadata size */
		struct lq_estimate_blob blob = {"config.json", strlen(small)};
		uint64_t est = 0;
		CHECK_OK(lq_model_estimate_lq(ms, &blob, 1, strlen(meta), &est, &err), &err);
		CHECK(est == (uint64_t)fsz, "estimate %llu, file %ld", (unsigned long long)est, fsz);
		CHECK_OK(lq_model_estimate_lq(ml, &blob, 1, strlen(meta), &est, &err), &err);
		CHECK(est == (uint64_t)fsz, "estimate %llu, file %ld", (unsigned long long)est, fsz);
	}
	free(buf);
out:
	lq_model_free(ml);
	lq_model_free(ms);
	lq_model_free(m);
}

int main(void)
{
	test_io();
	test_bnb_checkpoint();
	test_rope();
	test_llama();
	test_arch_params();
	test_bad_configs();
	test_validate();
	test_truncated();
	CHECK(!strcmp(lq_role_name(LQ_ROLE_GATE_UP), "gate_up_proj") && !strcmp(lq_role_name(-1), "?"));
	CHECK(!strcmp(lq_arch_name(LQ_ARCH_GEMMA2), "gemma2") && !strcmp(lq_arch_name(99), "?"));
	return test_summary();
}
