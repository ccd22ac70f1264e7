/*
 * lq_template.h - chat templates (a Jinja subset), part of the public API,
 * included by libquant.h.
 *
 * A chat template is the Jinja source stored as "chat_template" in a model's
 * tokenizer_config.json.  lq_template_render() renders it the way
 * transformers' tokenizer.apply_chat_template(messages, tokenize=False,
 * add_generation_prompt=...) does: jinja2 with trim_blocks and lstrip_blocks,
 * the raise_exception and strftime_now globals, the namespace() and dict()
 * globals, transformers' tojson filter (ensure_ascii=False, indent,
 * separators, sort_keys), the loop controls {% break %} / {% continue %},
 * and the variables messages, tools, documents, add_generation_prompt, the
 * special tokens and any extra variables.
 *
 * Supported: {{ }}, {% %}, {# #} with '-' and '+' whitespace control, raw;
 * if/elif/else, for (loop.*, else, "if" filters, tuple unpacking, break and
 * continue), set (namespaces, attributes, tuples, blocks), macro, with,
 * generation; Python semantics for values (str()/repr() output, ==, slicing,
 * truthiness, jinja2's lazy select/map/items generators and dict views); the
 * usual filters and tests, and str/dict/list methods.
 *
 * Constructs outside the subset fail with an error naming the template line,
 * never a silently wrong rendering: unknown tags and syntax errors at compile
 * time; unknown filters/tests at compile time too, except inside an if (as
 * jinja2, they fail only when evaluated there); printing a generator object
 * (jinja2 would print its memory address), str.format, '*' widths in
 * %-formatting and integers beyond 64 bits at render time.  Rendering is
 * bounded: output size, evaluation steps, memory and nesting depth all have
 * limits.
 */
#ifndef LQ_TEMPLATE_H
#define LQ_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lq_error;

/* A compiled chat template.  Rendering does not modify it: it may be
 * rendered many times, also from several threads at once. */
struct lq_template;

/*
 * Compile a template from source text (len bytes, need not be
 * NUL-terminated).  Syntax errors give LQ_ERR_FORMAT with "line L column C:
 * ..." in err; unknown tags, filters and tests (outside an if) give
 * LQ_ERR_UNSUPPORTED.  On success *out owns everything; free it with
 * lq_template_free().
 */
int lq_template_compile(struct lq_template **out, const char *src, size_t len,
			struct lq_error *err);

/* Release a compiled template (NULL allowed). */
void lq_template_free(struct lq_template *t);

/*
 * Variables passed to a rendering besides the messages.  Special-token
 * strings that are NULL are left undefined in the template (as transformers
 * does for tokens the tokenizer does not have).  Zero-initialize and fill
 * what you need.
 */
struct lq_template_vars {
	int add_generation_prompt;
	const char *bos_token, *eos_token, *unk_token, *sep_token;
	const char *pad_token, *cls_token, *mask_token;
	const char *tokens_json;    /* JSON object of more named special tokens
				       ({"image_token": "..."}), NULL: none */
	const char *tools_json;     /* JSON array of tool schemas; NULL: tools = None */
	const char *documents_json; /* JSON array; NULL: documents = None */
	const char *extra_json;     /* JSON object of more variables (e.g.
				       {"enable_thinking": false}); NULL: none */
	int64_t now;                /* time for strftime_now() in seconds since
				       the epoch (local time zone); 0: the clock */
	size_t max_output;          /* output limit in bytes; 0: 16 MiB */
};

/*
 * Render the template for a conversation.  messages_json is the text of a
 * JSON array of message objects ({"role": ..., "content": ...}, content may
 * also be a list of parts; other keys such as tool_calls are passed
 * through; keys whose value is null are dropped, as transformers does).
 * On success *out is a malloc'ed NUL-terminated string of *out_len bytes
 * that the caller frees.  A template that calls raise_exception() gives
 * LQ_ERR_INVALID with "chat template error: <its message>" in err; runtime
 * errors name the template line.
 */
int lq_template_render(const struct lq_template *t, const char *messages_json,
		       size_t messages_len, const struct lq_template_vars *vars,
		       char **out, size_t *out_len, struct lq_error *err);

/*
 * The chat-related content of a tokenizer_config.json: the template source
 * and the special-token strings (NULL when absent or null).  Everything is
 * malloc'ed and owned by the struct; release it with
 * lq_chat_config_release().
 */
struct lq_chat_config {
	char *chat_template;
	char *bos_token, *eos_token, *unk_token, *sep_token;
	char *pad_token, *cls_token, *mask_token;
	char *extra_tokens_json;    /* JSON object of named extra special tokens, or NULL */
};

/*
 * Parse the text of a tokenizer_config.json.  "chat_template" may be a
 * string or a list of {"name", "template"} objects, in which case the one
 * named "default" is taken (or "tool_use" when want_tools is set and it
 * exists).  Special tokens may be strings or AddedToken objects
 * ({"content": ...}).  As transformers does, a token key that is absent (not
 * null) takes the default of the tokenizer class named in "tokenizer_class"
 * (Llama, Gemma and Qwen2 tokenizers), and the named tokens of an
 * "extra_special_tokens" object are passed to the template too
 * (extra_tokens_json).  A config without a template gives LQ_ERR_NOTFOUND
 * with a message saying the model has no chat template; the token fields
 * are still filled.  The struct is always initialized (release it even on
 * failure).
 */
int lq_chat_config_parse(struct lq_chat_config *cfg, const char *json, size_t len,
			 int want_tools, struct lq_error *err);

/* Free the strings of a chat config and zero it (NULL allowed). */
void lq_chat_config_release(struct lq_chat_config *cfg);

/* Fill the special-token fields of vars from a parsed config (pointers
 * into cfg; cfg must outlive the rendering). */
void lq_chat_config_vars(const struct lq_chat_config *cfg, struct lq_template_vars *vars);

/*
 * All in one, as tokenizer.apply_chat_template(messages, tokenize=False,
 * add_generation_prompt=..., **extra) does: parse the tokenizer_config.json
 * text, compile its template (template_override, when not NULL, replaces it:
 * the content of a chat_template.jinja file), and render messages_json.
 * tools_json and extra_json may be NULL.  *out is malloc'ed (caller frees).
 */
int lq_chat_template_apply(const char *config_json, size_t config_len,
			   const char *template_override, const char *messages_json,
			   size_t messages_len, int add_generation_prompt,
			   const char *tools_json, const char *extra_json,
			   char **out, size_t *out_len, struct lq_error *err);

#ifdef __cplusplus
}
#endif

#endif
