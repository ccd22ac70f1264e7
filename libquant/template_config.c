/*
 * template_config.c - the chat template and special tokens of a
 * tokenizer_config.json.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static char *dup_n(const char *s, size_t n)
{
	char *r = malloc(n + 1);
	if (r) {
		memcpy(r, s, n);
		r[n] = 0;
	}
	return r;
}

/* Defaults of transformers' tokenizer classes for token keys absent from the
 * config (order: bos, eos, unk, sep, pad, cls, mask). */
static const struct {
	const char *cls;
	const char *tok[7];
} class_defaults[] = {
	{ "LlamaTokenizer", { "<s>", "</s>", "<unk>", NULL, NULL, NULL, NULL } },
	{ "GemmaTokenizer", { "<bos>", "<eos>", "<unk>", NULL, "<pad>", NULL, "<mask>" } },
	{ "Qwen2Tokenizer", { NULL, "<|endoftext|>", "<|endoftext|>", NULL, "<|endoftext|>", NULL, NULL } },
};

/* a special token: a string, or an AddedToken object {"content": ...} */
static int get_token(json_t *root, const char *key, const char *dflt, char **out, struct lq_error *err)
{
	json_t *v = json_object_get(root, key);
	*out = NULL;
	if (!v && dflt) {
		*out = dup_n(dflt, strlen(dflt));
		return *out ? LQ_OK : lq_fail(err, LQ_ERR_NOMEM, "tokenizer_config.json: out of memory");
	}
	if (!v || json_is_null(v))
		return LQ_OK;
	if (json_is_object(v))
		v = json_object_get(v, "content");
	if (!v || !json_is_string(v))
		return lq_fail(err, LQ_ERR_FORMAT, "tokenizer_config.json: '%s' is not a string or a token object", key);
	*out = dup_n(json_string_value(v), json_string_length(v));
	return *out ? LQ_OK : lq_fail(err, LQ_ERR_NOMEM, "tokenizer_config.json: out of memory");
}

int lq_chat_config_parse(struct lq_chat_config *cfg, const char *json, size_t len, int want_tools,
			 struct lq_error *err)
{
	memset(cfg, 0, sizeof *cfg);
	if (!json && len)
		return lq_fail(err, LQ_ERR_INVALID, "lq_chat_config_parse: NULL text");
	json_error_t je;
	json_t *root = json_loadb(json ? json : "", len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
	if (!root)
		return lq_fail(err, LQ_ERR_FORMAT, "tokenizer_config.json: invalid JSON at line %d column %d: %s",
			       je.line, je.column, je.text);
	int rc = LQ_OK;
	if (!json_is_object(root)) {
		rc = lq_fail(err, LQ_ERR_FORMAT, "tokenizer_config.json: not a JSON object");
		goto out;
	}
	static const char *const names[] = { "bos_token", "eos_token", "unk_token", "sep_token",
					      "pad_token", "cls_token", "mask_token" };
	char **fields[] = { &cfg->bos_token, &cfg->eos_token, &cfg->unk_token, &cfg->sep_token,
			    &cfg->pad_token, &cfg->cls_token, &cfg->mask_token };
	const char *const *dflt = NULL;
	json_t *cls = json_object_get(root, "tokenizer_class");
	if (json_is_string(cls)) {
		size_t cn = strlen(json_string_value(cls));
		for (size_t i = 0; i < sizeof class_defaults / sizeof *class_defaults; i++) {
			size_t dn = strlen(class_defaults[i].cls);
			if (!strncmp(json_string_value(cls), class_defaults[i].cls, dn) &&
			    (cn == dn || !strcmp(json_string_value(cls) + dn, "Fast")))
				dflt = class_defaults[i].tok;
		}
	}
	for (int i = 0; i < 7; i++)
		if ((rc = get_token(root, names[i], dflt ? dflt[i] : NULL, fields[i], err)))
			goto out;
	json_t *xt = json_object_get(root, "extra_special_tokens");
	if (json_is_object(xt) && json_object_size(xt)) {
		json_t *o = json_object();
		const char *k;
		json_t *x;
		json_object_foreach(xt, k, x) {
			if (json_is_object(x))
				x = json_object_get(x, "content");
			if (json_is_string(x))
				json_object_set(o, k, x);
		}
		cfg->extra_tokens_json = json_object_size(o) ? json_dumps(o, JSON_COMPACT) : NULL;
		json_decref(o);
	}
	json_t *ct = json_object_get(root, "chat_template");
	if (!ct || json_is_null(ct)) {
		rc = lq_fail(err, LQ_ERR_NOTFOUND,
			     "tokenizer_config.json has no chat_template: this model has no chat template "
			     "(a base model?); use plain text instead");
		goto out;
	}
	if (json_is_array(ct)) {
		/* a list of named templates: "default", or "tool_use" when tools are given */
		json_t *pick = NULL, *def = NULL, *tool = NULL;
		size_t i;
		json_t *e;
		json_array_foreach(ct, i, e) {
			json_t *nm = json_object_get(e, "name"), *tp = json_object_get(e, "template");
			if (!json_is_string(nm) || !json_is_string(tp)) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "tokenizer_config.json: chat_template[%zu] is not a "
					     "{\"name\", \"template\"} object", i);
				goto out;
			}
			if (!strcmp(json_string_value(nm), "default"))
				def = tp;
			if (!strcmp(json_string_value(nm), "tool_use"))
				tool = tp;
		}
		pick = want_tools && tool ? tool : def;
		if (!pick) {
			rc = lq_fail(err, LQ_ERR_NOTFOUND,
				     "tokenizer_config.json: several chat templates and none named 'default'");
			goto out;
		}
		ct = pick;
	}
	if (!json_is_string(ct)) {
		rc = lq_fail(err, LQ_ERR_FORMAT, "tokenizer_config.json: chat_template is not a string");
		goto out;
	}
	cfg->chat_template = dup_n(json_string_value(ct), json_string_length(ct));
	if (!cfg->chat_template)
		rc = lq_fail(err, LQ_ERR_NOMEM, "tokenizer_config.json: out of memory");
out:
	json_decref(root);
	return rc;
}

void lq_chat_config_release(struct lq_chat_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->chat_template);
	free(cfg->bos_token);
	free(cfg->eos_token);
	free(cfg->unk_token);
	free(cfg->sep_token);
	free(cfg->pad_token);
	free(cfg->cls_token);
	free(cfg->mask_token);
	free(cfg->extra_tokens_json);
	memset(cfg, 0, sizeof *cfg);
}

void lq_chat_config_vars(const struct lq_chat_config *cfg, struct lq_template_vars *vars)
{
	vars->bos_token = cfg->bos_token;
	vars->eos_token = cfg->eos_token;
	vars->unk_token = cfg->unk_token;
	vars->sep_token = cfg->sep_token;
	vars->pad_token = cfg->pad_token;
	vars->cls_token = cfg->cls_token;
	vars->mask_token = cfg->mask_token;
	vars->tokens_json = cfg->extra_tokens_json;
}

int lq_chat_template_apply(const char *config_json, size_t config_len, const char *template_override,
			   const char *messages_json, size_t messages_len, int add_generation_prompt,
			   const char *tools_json, const char *extra_json, char **out, size_t *out_len,
			   struct lq_error *err)
{
	struct lq_chat_config cfg;
	*out = NULL;
	if (out_len)
		*out_len = 0;
	int rc = lq_chat_config_parse(&cfg, config_json, config_len, tools_json != NULL, err);
	if (rc && !(rc == LQ_ERR_NOTFOUND && template_override)) {
		lq_chat_config_release(&cfg);
		return rc;
	}
	const char *src = template_override ? template_override : cfg.chat_template;
	struct lq_template *t = NULL;
	rc = lq_template_compile(&t, src, strlen(src), err);
	if (rc == LQ_OK) {
		struct lq_template_vars v;
		memset(&v, 0, sizeof v);
		lq_chat_config_vars(&cfg, &v);
		v.add_generation_prompt = add_generation_prompt;
		v.tools_json = tools_json;
		v.extra_json = extra_json;
		rc = lq_template_render(t, messages_json, messages_len, &v, out, out_len, err);
	}
	lq_template_free(t);
	lq_chat_config_release(&cfg);
	return rc;
}
