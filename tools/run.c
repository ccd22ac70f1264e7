/*
 * run - text generation, perplexity, raw logits, tokenization and chat
 * templates from an LQ file, on the CPU.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "libquant.h"
#include "toolutil.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>

/* decoding: steps per lq_run_forward_sample_n call on the GPU (the host
 * waits once per RUN_CHAIN tokens; 30 ms of text at 500 tok/s) */
#define RUN_CHAIN 16

static const char usage_text[] =
	"usage: run [options] MODEL.lq                 generate (stdin is the user message)\n"
	"       run --ids 1,2,3 --logits OUT.npy MODEL.lq\n"
	"       run --ppl FILE [--ctx N] MODEL.lq\n"
	"       run --jsonl MODEL.lq < requests.jsonl\n"
	"       run --tokenize|--detokenize|--template [--jsonl] MODEL\n"
	"\n"
	"  -s, --system TEXT        system message\n"
	"  -p, --prompt TEXT        user message (default: stdin)\n"
	"      --messages FILE      a conversation: JSON list of {role, content}\n"
	"      --raw                use the prompt as is (no chat template)\n"
	"  -n, --max-new-tokens N   tokens to generate (default: generation_config or 256)\n"
	"      --temp T             temperature; 0 = greedy\n"
	"      --top-k N            keep the N most likely tokens (0 = off)\n"
	"      --top-p P            nucleus sampling (1 = off)\n"
	"      --min-p P            min-p filter (0 = off)\n"
	"      --repetition-penalty R\n"
	"      --seed N             random seed (default 0)\n"
	"      --stop STRING        stop when the output contains STRING (repeatable)\n"
	"      --ignore-eos         do not stop at EOS tokens (benchmarks)\n"
	"      --ids LIST           token ids (comma separated) instead of a text prompt\n"
	"      --output-ids         print the generated ids instead of text\n"
	"      --logits FILE        with --ids: write float32 logits [n, vocab] as .npy\n"
	"      --ppl FILE           perplexity of FILE's tokens\n"
	"      --ctx N              context length in tokens (default: the model's; --ppl: 512)\n"
	"      --stride N           --ppl window stride (default: ctx / 2)\n"
	"      --jsonl              one request per stdin line, one JSON result per line\n"
	"      --chat               multi-turn chat, one user message per stdin line\n"
	"      --tokenize           print the token ids of stdin\n"
	"      --detokenize         print the text of the ids on stdin\n"
	"      --template           print the rendered chat prompt\n"
	"      --no-special         --tokenize without BOS/EOS (add_special_tokens=False)\n"
	"      --skip-special       --detokenize without special tokens\n"
	"      --no-generation-prompt  render without the assistant prompt\n"
	"      --cpu                run on the CPU even when there is a GPU\n"
	"      --device N           run on CUDA device N (default: 0 when there is a GPU)\n"
	"      --compute-dtype T    GPU activations: bf16, fp16 or fp32 (default: the file's)\n"
	"  -j, --threads N          CPU threads (default: all cores; on a GPU, up to 8\n"
	"                           of them copy the weights at start-up)\n"
	"  -f, --force              overwrite the --logits output\n"
	"  -v, --verbose            statistics on stderr\n"
	"  -h, --help               this help\n"
	"  -V, --version            print the version\n";


/* ------------------------------------------------------------ the model */

struct model {
	const char *path;
	struct lq_file *f;         /* NULL for a checkpoint directory */
	struct lq_model *m;
	struct lq_run *run;
	int backend, device, compute; /* lq_run_opts */
	int verbose;
	struct lq_tokenizer *tok;
	struct lq_template *tpl;
	struct lq_chat_config chat;
	int have_chat;
	char *owned[8];            /* directory input: file contents read */
	int nowned;
	int64_t eos[16];
	int neos;
};


/* Contents of a stored file (LQ blob or file in the directory), or NULL. */
static const char *model_blob(struct model *md, const char *name, size_t *len)
{
	if (md->f) {
		const struct lq_blob *b = lq_file_find_blob(md->f, name);
		if (!b)
			return NULL;
		*len = (size_t)b->size;
		return (const char *)b->data;
	}
	char p[PATH_MAX];
	if (snprintf(p, sizeof p, "%s/%s", md->path, name) >= (int)sizeof p)
		return NULL;
	char *s = slurp_file(p, len);
	if (s && md->nowned < 8)
		md->owned[md->nowned++] = s; /* freed by model_close */
	return s;
}

static void model_open(struct model *md, const char *path)
{
	struct stat sb;
	struct lq_error e = {0};
	md->path = path;
	if (stat(path, &sb) < 0)
		die("%s: cannot open:", path);
	if (!S_ISDIR(sb.st_mode)) {
		int rc = lq_file_open(&md->f, path, &e);
		if (rc)
			die_lq(rc, &e);
	}
}

static void need_tokenizer(struct model *md)
{
	if (md->tok)
		return;
	size_t jl = 0, cl = 0, bl = 0;
	/* the precompiled form quantize stores: no JSON parsing */
	const char *blob = model_blob(md, LQ_TOKENIZER_BLOB, &bl);
	if (blob && lq_tokenizer_load_blob(&md->tok, blob, bl, NULL) == 0)
		return;
	const char *j = model_blob(md, "tokenizer.json", &jl);
	if (!j)
		die("%s: the model has no tokenizer.json; use --ids", md->path);
	const char *c = model_blob(md, "tokenizer_config.json", &cl);
	struct lq_error e = {0};
	int rc = lq_tokenizer_load_json_ex(&md->tok, j, jl, c, c ? cl : 0, LQ_TOKENIZER_TRANSFORMERS5, &e);
	if (rc)
		die_lq(rc, &e);
}

static void need_template(struct model *md)
{
	if (md->tpl)
		return;
	size_t cl = 0, tl = 0;
	const char *c = model_blob(md, "tokenizer_config.json", &cl);
	struct lq_error e = {0};
	int rc = LQ_ERR_NOTFOUND;
	if (c) {
		char *tmp = malloc(cl + 1);
		if (!tmp)
			die("out of memory");
		memcpy(tmp, c, cl);
		tmp[cl] = 0;
		rc = lq_chat_config_parse(&md->chat, tmp, cl, 0, &e);
		free(tmp);
		md->have_chat = 1;
	}
	const char *src = NULL;
	if (md->have_chat && md->chat.chat_template) {
		src = md->chat.chat_template;
		tl = strlen(src);
	} else {
		src = model_blob(md, "chat_template.jinja", &tl);
	}
	if (!src) {
		if (rc && e.msg[0])
			die("%s", e.msg);
		die("%s: the model has no chat template; use --raw or --ids", md->path);
	}
	rc = lq_template_compile(&md->tpl, src, tl, &e);
	if (rc)
		die_lq(rc, &e);
}

static void need_runtime(struct model *md, int nthreads, int64_t ctx)
{
	if (md->run)
		return;
	if (!md->f)
		die("%s: a directory can only be used with --tokenize, --detokenize or --template",
		    md->path);
	struct lq_error e = {0};
	int rc = lq_model_from_lq(&md->m, md->f, &e);
	if (rc)
		die_lq(rc, &e);
	struct lq_run_opts o;
	lq_run_opts_init(&o);
	o.nthreads = nthreads;
	o.max_ctx = ctx;
	o.backend = md->backend;
	o.device = md->device;
	o.compute = md->compute;
	double t0 = now_s();
	rc = lq_run_create(&md->run, md->m, md->f, &o, &e);
	if (rc == LQ_ERR_NOMEM && md->backend == LQ_BACKEND_AUTO)
		die("%s: %s (--cpu runs on the CPU)", md->path, e.msg);
	if (rc)
		die_lq(rc, &e);
	if (md->verbose)
		fprintf(stderr, "run: %s on %s, ready in %.2f s\n", md->path, lq_run_device(md->run),
			now_s() - t0);
	const struct lq_model_config *c = lq_model_config(md->m);
	for (int i = 0; i < c->n_eos && md->neos < 16; i++)
		md->eos[md->neos++] = c->eos_token_ids[i];
}

static void model_close(struct model *md)
{
	lq_run_free(md->run);
	lq_model_free(md->m);
	lq_tokenizer_free(md->tok);
	lq_template_free(md->tpl);
	lq_chat_config_release(&md->chat);
	lq_file_close(md->f);
	for (int i = 0; i < md->nowned; i++)
		free(md->owned[i]);
}

/* ------------------------------------------------------------ options */

struct opts {
	const char *system, *prompt, *messages_file, *ids, *logits, *ppl;
	int raw, output_ids, jsonl, tokenize, detokenize, template_only, no_special;
	int skip_special, no_gen_prompt, force, verbose, nthreads, chat;
	int cpu, device, compute; /* device = -1: not given; compute = -1: the file's */
	int ignore_eos;
	long max_new;         /* -1: default */
	int64_t ctx, stride;
	struct lq_sample_opts s;
	int set_temp, set_topk, set_topp, set_rep;
	uint64_t seed;
	const char *stop[16];
	int nstop;
};

/* Defaults from generation_config.json (when the user did not say). */
static void gen_defaults(struct model *md, struct opts *o)
{
	size_t len = 0;
	const char *g = model_blob(md, "generation_config.json", &len);
	int do_sample = 0;
	if (g) {
		json_t *j = json_loadb(g, len, 0, NULL);
		if (j) {
			json_t *v;
			do_sample = json_is_true(json_object_get(j, "do_sample"));
			if (!o->set_temp && (v = json_object_get(j, "temperature")) && json_is_number(v))
				o->s.temperature = json_number_value(v);
			if (!o->set_topk && (v = json_object_get(j, "top_k")) && json_is_integer(v))
				o->s.top_k = (int)json_integer_value(v);
			if (!o->set_topp && (v = json_object_get(j, "top_p")) && json_is_number(v))
				o->s.top_p = json_number_value(v);
			if (!o->set_rep && (v = json_object_get(j, "repetition_penalty")) && json_is_number(v))
				o->s.repetition_penalty = json_number_value(v);
			if (o->max_new < 0 && (v = json_object_get(j, "max_new_tokens")) && json_is_integer(v))
				o->max_new = (long)json_integer_value(v);
			v = json_object_get(j, "eos_token_id");
			if (json_is_integer(v) && md->neos < 16) {
				md->eos[md->neos++] = json_integer_value(v);
			} else if (json_is_array(v)) {
				size_t i;
				json_t *x;
				json_array_foreach(v, i, x)
					if (json_is_integer(x) && md->neos < 16)
						md->eos[md->neos++] = json_integer_value(x);
			}
			json_decref(j);
		}
	}
	/* generate() samples only with do_sample; greedy otherwise */
	if (!do_sample && !o->set_temp)
		o->s.temperature = 0;
	if (o->max_new < 0)
		o->max_new = 256;
	if (md->tok && md->neos == 0) {
		int32_t e = lq_tokenizer_eos_id(md->tok);
		if (e >= 0)
			md->eos[md->neos++] = e;
	}
}

static int is_eos(const struct model *md, int32_t id)
{
	for (int i = 0; i < md->neos; i++)
		if (md->eos[i] == id)
			return 1;
	return 0;
}

/* ------------------------------------------------------------ helpers */

static int32_t *parse_ids(const char *s, size_t *n)
{
	size_t cap = 16;
	int32_t *v = malloc(cap * sizeof *v);
	if (!v)
		die("out of memory");
	*n = 0;
	const char *p = s;
	while (*p) {
		while (*p == ',' || *p == ' ' || *p == '\n' || *p == '\t' || *p == '[' || *p == ']')
			p++;
		if (!*p)
			break;
		char *end;
		errno = 0;
		long x = strtol(p, &end, 10);
		if (end == p || errno || x < 0 || x > INT32_MAX) {
			free(v);
			return NULL;
		}
		if (*n == cap) {
			cap *= 2;
			int32_t *nv = realloc(v, cap * sizeof *v);
			if (!nv)
				die("out of memory");
			v = nv;
		}
		v[(*n)++] = (int32_t)x;
		p = end;
		if (*p && *p != ',' && *p != ' ' && *p != '\n' && *p != '\t' && *p != ']') {
			free(v);
			return NULL;
		}
	}
	return v;
}

/* messages JSON from -s/-p */
static char *messages_from(const char *system, const char *user)
{
	json_t *a = json_array();
	if (system) {
		json_t *m = json_object();
		json_object_set_new(m, "role", json_string("system"));
		json_object_set_new(m, "content", json_string(system));
		json_array_append_new(a, m);
	}
	json_t *m = json_object();
	json_object_set_new(m, "role", json_string("user"));
	json_object_set_new(m, "content", json_string(user ? user : ""));
	json_array_append_new(a, m);
	char *s = json_dumps(a, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(a);
	if (!s)
		die("cannot encode the messages (invalid UTF-8?)");
	return s;
}

static char *render(struct model *md, const char *messages, int gen_prompt)
{
	need_template(md);
	struct lq_template_vars v;
	memset(&v, 0, sizeof v);
	lq_chat_config_vars(&md->chat, &v);
	v.add_generation_prompt = gen_prompt;
	char *out = NULL;
	size_t len = 0;
	struct lq_error e = {0};
	int rc = lq_template_render(md->tpl, messages, strlen(messages), &v, &out, &len, &e);
	if (rc)
		die_lq(rc, &e);
	return out;
}

/* Token ids of a rendered chat prompt: the template already holds the BOS. */
static int32_t *encode(struct model *md, const char *text, int flags, size_t *n)
{
	need_tokenizer(md);
	int32_t *ids = NULL;
	struct lq_error e = {0};
	int rc = lq_tokenizer_encode(md->tok, text, strlen(text), flags, &ids, n, &e);
	if (rc)
		die_lq(rc, &e);
	return ids;
}

/* Length of the longest prefix of buf[0..n) that is complete UTF-8. */
static size_t utf8_complete(const unsigned char *b, size_t n)
{
	size_t i = n, back = 0;
	while (i > 0 && back < 4) {
		unsigned char c = b[i - 1];
		if ((c & 0xC0) != 0x80) {
			size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 :
				      (c & 0xF8) == 0xF0 ? 4 : 1;
			return (back + 1 >= need) ? n : i - 1;
		}
		i--;
		back++;
	}
	return n;
}

/* ------------------------------------------------------------ generation */

struct gen_result {
	char *text;         /* decoded output (malloc'ed) */
	size_t text_len;
	int32_t *ids;
	size_t nids;
	size_t prompt_tokens;
	const char *finish; /* "eos", "stop", "length" */
	double prefill_s, decode_s;
	double first_s;     /* process start to the first generated token */
};

static double t_start; /* process start (now_s) */

/* Generate from prompt ids; stream text (or ids) to out when not NULL. */
/* Generate from prompt ids; stream text (or ids) to out when not NULL.
 * The first `reuse` prompt tokens are already in the KV cache. */
static void generate_from(struct model *md, struct opts *o, const int32_t *prompt, size_t np,
			  size_t reuse, FILE *out, struct gen_result *res)
{
	struct lq_error e = {0};
	memset(res, 0, sizeof *res);
	res->prompt_tokens = np;
	res->finish = "length";
	int64_t maxctx = lq_run_max_ctx(md->run);
	if (np == 0)
		die("the prompt is empty");
	if ((int64_t)np > maxctx)
		die("the prompt has %zu tokens, more than the context length of %lld tokens",
		    np, (long long)maxctx);
	size_t cap = np + (size_t)o->max_new + 1;
	int32_t *seen = malloc(cap * sizeof *seen);
	size_t tcap = 256, tlen = 0;
	char *text = malloc(tcap);
	if (!seen || !text)
		die("out of memory");
	memcpy(seen, prompt, np * sizeof *seen);
	size_t nseen = np;
	struct lq_rng rng;
	lq_rng_seed(&rng, o->seed);
	double t0 = now_s();
	if (reuse >= np)
		reuse = np - 1;
	/* the runtime picks each token (on the GPU, the penalty, temperature and
	 * top-k or the argmax run there; only the kept tokens come back) */
	int32_t next = 0;
	int rc = lq_run_forward_sample(md->run, prompt + reuse, np - reuse, (int64_t)reuse, &o->s, seen, nseen, &rng,
				       &next, &e);
	if (rc)
		die_lq(rc, &e);
	res->prefill_s = now_s() - t0;
	t0 = now_s();
	/* decoding: on the GPU the next RUN_CHAIN ids at a time, the steps
	 * chained on the device (lq_run_forward_sample_n; the ids past a stop
	 * are dropped, and the generator's draws for them do not matter: it is
	 * this call's), on the CPU one at a time (there the steps past a stop
	 * would only cost time) */
	const size_t chain = strcmp(lq_run_backend(md->run), "cpu") ? RUN_CHAIN : 1;
	int32_t ahead[RUN_CHAIN];
	size_t nahead = 0, iahead = 0;
	size_t printed = 0; /* bytes of text already written to out */
	for (long k = 0; k < o->max_new; k++) {
		int32_t id = next;
		if (k == 0)
			res->first_s = now_s() - t_start;
		if (!o->ignore_eos && is_eos(md, id)) {
			res->finish = "eos";
			break;
		}
		seen[nseen++] = id;
		if (md->tok) {
			char buf[256];
			size_t bl = 0;
			if (lq_tokenizer_token_bytes(md->tok, id, nseen == np + 1, buf, sizeof buf, &bl) == LQ_OK &&
			    bl <= sizeof buf) {
				while (tlen + bl + 1 > tcap) {
					tcap *= 2;
					char *nt = realloc(text, tcap);
					if (!nt)
						die("out of memory");
					text = nt;
				}
				memcpy(text + tlen, buf, bl);
				tlen += bl;
				text[tlen] = 0;
			}
		}
		int stopped = 0;
		for (int s = 0; s < o->nstop; s++) {
			char *hit = strstr(text, o->stop[s]);
			if (hit) {
				tlen = (size_t)(hit - text);
				text[tlen] = 0;
				stopped = 1;
			}
		}
		if (out && o->output_ids) {
			fprintf(out, k ? " %ld" : "%ld", (long)id);
			fflush(out);
		} else if (out) {
			/* hold back what could be the start of a stop string */
			size_t safe = tlen;
			if (!stopped)
				for (int s = 0; s < o->nstop; s++) {
					size_t sl = strlen(o->stop[s]);
					for (size_t l = sl - 1; l > 0; l--)
						if (tlen >= l && memcmp(text + tlen - l, o->stop[s], l) == 0) {
							if (tlen - l < safe)
								safe = tlen - l;
							break;
						}
				}
			safe = utf8_complete((const unsigned char *)text, safe);
			if (safe > printed) {
				fwrite(text + printed, 1, safe - printed, out);
				fflush(out);
				printed = safe;
			}
		}
		if (stopped) {
			res->finish = "stop";
			break;
		}
		if (k + 1 == o->max_new)
			break;
		if ((int64_t)nseen >= maxctx) {
			warnx_("stopped at the context length of %lld tokens", (long long)maxctx);
			break;
		}
		if (iahead < nahead) {
			next = ahead[iahead++];
			continue;
		}
		size_t c = chain, left = (size_t)(o->max_new - k - 1), room = (size_t)maxctx - (nseen - 1);
		c = c < left ? c : left;
		c = c < room ? c : room;
		rc = lq_run_forward_sample_n(md->run, id, (int64_t)nseen - 1, c, &o->s, seen, nseen, &rng, ahead, &e);
		nahead = c;
		iahead = 1;
		next = ahead[0];
		if (rc)
			die_lq(rc, &e);
	}
	if (out && !o->output_ids && tlen > printed)
		fwrite(text + printed, 1, tlen - printed, out);
	res->decode_s = now_s() - t0;
	res->ids = malloc((nseen - np + 1) * sizeof *res->ids);
	if (!res->ids)
		die("out of memory");
	res->nids = nseen - np;
	memcpy(res->ids, seen + np, res->nids * sizeof *res->ids);
	/* the final text is the tokenizer's decode (exact, stop string cut) */
	if (md->tok) {
		char *dec = NULL;
		size_t dl = 0;
		if (lq_tokenizer_decode(md->tok, res->ids, res->nids, 0, &dec, &dl, &e) == LQ_OK) {
			if (!strcmp(res->finish, "stop")) {
				for (int s = 0; s < o->nstop; s++) {
					char *hit = strstr(dec, o->stop[s]);
					if (hit) {
						*hit = 0;
						dl = (size_t)(hit - dec);
					}
				}
			}
			free(text);
			text = dec;
			tlen = dl;
		}
	}
	res->text = text;
	res->text_len = tlen;
	free(seen);
}

static void generate(struct model *md, struct opts *o, const int32_t *prompt, size_t np,
		     FILE *out, struct gen_result *res)
{
	generate_from(md, o, prompt, np, 0, out, res);
}

static void print_stats(const struct gen_result *r)
{
	fprintf(stderr, "run: prompt %zu tokens in %.3f s (%.1f tok/s), generated %zu tokens in %.3f s (%.2f tok/s), finish %s, first token at %.3f s\n",
		r->prompt_tokens, r->prefill_s, r->prefill_s > 0 ? (double)r->prompt_tokens / r->prefill_s : 0,
		r->nids, r->decode_s, r->decode_s > 0 ? (double)r->nids / r->decode_s : 0, r->finish,
		r->first_s);
}

/* Prompt ids from the options: --ids, --raw text, or the chat template. */
static int32_t *prompt_ids(struct model *md, struct opts *o, const char *messages_json,
			   const char *user, size_t *n)
{
	if (o->ids) {
		int32_t *v = parse_ids(o->ids, n);
		if (!v)
			usage_error("--ids: not a list of token ids: '%s'", o->ids);
		return v;
	}
	if (o->raw)
		return encode(md, user ? user : "", LQ_ENCODE_ADD_SPECIAL, n);
	char *own = NULL;
	if (!messages_json)
		messages_json = own = messages_from(o->system, user);
	char *p = render(md, messages_json, !o->no_gen_prompt);
	/* the rendered text carries its special tokens (BOS included) */
	int32_t *ids = encode(md, p, 0, n);
	free(p);
	free(own);
	return ids;
}

/* ------------------------------------------------------------ modes */

static int do_logits(struct model *md, struct opts *o)
{
	size_t n;
	int32_t *ids = parse_ids(o->ids, &n);
	if (!ids || n == 0)
		usage_error("--ids: not a list of token ids: '%s'", o->ids);
	need_runtime(md, o->nthreads, o->ctx);
	int64_t vocab = lq_run_vocab(md->run);
	float *lg = malloc(n * (size_t)vocab * sizeof(float));
	if (!lg)
		die("out of memory for %zu x %lld logits", n, (long long)vocab);
	struct lq_error e = {0};
	double t0 = now_s();
	int rc = lq_run_forward(md->run, ids, n, 0, lg, 1, &e);
	if (rc)
		die_lq(rc, &e);
	if (o->verbose)
		fprintf(stderr, "run: %zu tokens in %.3f s\n", n, now_s() - t0);
	int fd = out_open(o->logits, o->force);
	uint64_t shape[2] = { n, (uint64_t)vocab };
	rc = lq_npy_write_f32(fd, lg, 2, shape, strcmp(o->logits, "-") ? o->logits : "stdout", &e);
	if (rc)
		die_lq(rc, &e);
	out_commit(fd, o->logits, o->force, 1);
	free(lg);
	free(ids);
	return 0;
}

static int do_tokenize(struct model *md, struct opts *o)
{
	need_tokenizer(md);
	int flags = o->no_special ? 0 : LQ_ENCODE_ADD_SPECIAL;
	if (o->jsonl) {
		char *line = NULL;
		size_t cap = 0;
		ssize_t k;
		while ((k = getline(&line, &cap, stdin)) > 0) {
			json_error_t je;
			json_t *j = json_loadb(line, (size_t)k, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
			if (!j || !json_is_string(j))
				die("stdin: each line must be a JSON string");
			int32_t *ids = NULL;
			size_t n = 0;
			struct lq_error e = {0};
			int rc = lq_tokenizer_encode(md->tok, json_string_value(j), json_string_length(j),
						     flags, &ids, &n, &e);
			if (rc)
				die_lq(rc, &e);
			putchar('[');
			for (size_t i = 0; i < n; i++)
				printf(i ? ", %ld" : "%ld", (long)ids[i]);
			puts("]");
			free(ids);
			json_decref(j);
		}
		free(line);
		return 0;
	}
	size_t len = 0;
	char *text = o->prompt ? strdup(o->prompt) : read_stream(stdin, &len, "stdin");
	if (!text)
		die("out of memory");
	size_t n;
	int32_t *ids = encode(md, text, flags, &n);
	for (size_t i = 0; i < n; i++)
		printf(i ? " %ld" : "%ld", (long)ids[i]);
	putchar('\n');
	free(ids);
	free(text);
	return 0;
}

static void print_decoded(struct model *md, struct opts *o, const int32_t *ids, size_t n, int json)
{
	char *text = NULL;
	size_t len = 0;
	struct lq_error e = {0};
	int rc = lq_tokenizer_decode(md->tok, ids, n, o->skip_special ? LQ_DECODE_SKIP_SPECIAL : 0,
				     &text, &len, &e);
	if (rc)
		die_lq(rc, &e);
	if (json) {
		json_t *s = json_stringn(text, len);
		char *d = s ? json_dumps(s, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
		if (!d)
			die("cannot encode the decoded text as JSON");
		puts(d);
		free(d);
		json_decref(s);
	} else {
		fwrite(text, 1, len, stdout);
		putchar('\n');
	}
	free(text);
}

static int do_detokenize(struct model *md, struct opts *o)
{
	need_tokenizer(md);
	if (o->jsonl) {
		char *line = NULL;
		size_t cap = 0;
		ssize_t k;
		while ((k = getline(&line, &cap, stdin)) > 0) {
			size_t n;
			int32_t *ids = parse_ids(line, &n);
			if (!ids)
				die("stdin: each line must be a JSON array of ids");
			print_decoded(md, o, ids, n, 1);
			free(ids);
		}
		free(line);
		return 0;
	}
	size_t len, n;
	char *in = read_stream(stdin, &len, "stdin");
	int32_t *ids = parse_ids(in, &n);
	if (!ids)
		die("stdin: not a list of token ids");
	print_decoded(md, o, ids, n, 0);
	free(ids);
	free(in);
	return 0;
}

static char *load_messages(const char *path)
{
	size_t len;
	char *s = strcmp(path, "-") ? slurp_file(path, &len) : read_stream(stdin, &len, "stdin");
	if (!s)
		die("%s: cannot read:", path);
	json_error_t je;
	json_t *j = json_loadb(s, len, 0, &je);
	if (!j || !json_is_array(j))
		die("%s: not a JSON list of messages (line %d: %s)", path, je.line, je.text);
	json_decref(j);
	return s;
}

static int do_template(struct model *md, struct opts *o)
{
	char *msgs;
	if (o->messages_file) {
		msgs = load_messages(o->messages_file);
	} else {
		size_t len = 0;
		char *user = o->prompt ? strdup(o->prompt) : read_stream(stdin, &len, "stdin");
		if (!user)
			die("out of memory");
		while (!o->prompt && len && user[len - 1] == '\n')
			user[--len] = 0;
		msgs = messages_from(o->system, user);
		free(user);
	}
	char *p = render(md, msgs, !o->no_gen_prompt);
	fputs(p, stdout);
	free(p);
	free(msgs);
	return 0;
}

static int do_generate(struct model *md, struct opts *o)
{
	need_runtime(md, o->nthreads, o->ctx);
	if (!o->ids)
		need_tokenizer(md);
	else if (!o->output_ids)
		need_tokenizer(md);
	gen_defaults(md, o);
	char *msgs = NULL, *user = NULL;
	if (!o->ids) {
		if (o->messages_file)
			msgs = load_messages(o->messages_file);
		else if (o->prompt)
			user = strdup(o->prompt);
		else {
			size_t len;
			if (isatty(0))
				fprintf(stderr, "run: reading the user message from stdin (end with Ctrl-D)\n");
			user = read_stream(stdin, &len, "stdin");
			while (len && user[len - 1] == '\n')
				user[--len] = 0;
		}
	}
	size_t np;
	int32_t *ids = prompt_ids(md, o, msgs, user, &np);
	struct gen_result r;
	generate(md, o, ids, np, stdout, &r);
	putchar('\n');
	if (o->verbose)
		print_stats(&r);
	free(r.text);
	free(r.ids);
	free(ids);
	free(msgs);
	free(user);
	return 0;
}

/* Interactive multi-turn chat: one user message per line; the KV cache is
 * reused for the part of the conversation that tokenizes the same. */
static int do_chat(struct model *md, struct opts *o)
{
	need_runtime(md, o->nthreads, o->ctx);
	need_tokenizer(md);
	need_template(md);
	gen_defaults(md, o);
	json_t *conv = json_array();
	if (o->system) {
		json_t *m = json_object();
		json_object_set_new(m, "role", json_string("system"));
		json_object_set_new(m, "content", json_string(o->system));
		json_array_append_new(conv, m);
	}
	int32_t *cached = NULL; /* ids whose keys are in the cache */
	size_t ncached = 0;
	char *line = NULL;
	size_t cap = 0;
	ssize_t k;
	int tty = isatty(0);
	for (;;) {
		if (tty)
			fprintf(stderr, "> ");
		if ((k = getline(&line, &cap, stdin)) <= 0)
			break;
		while (k > 0 && (line[k - 1] == '\n' || line[k - 1] == '\r'))
			line[--k] = 0;
		if (k == 0)
			continue;
		json_t *m = json_object();
		json_object_set_new(m, "role", json_string("user"));
		json_object_set_new(m, "content", json_string(line));
		json_array_append_new(conv, m);
		char *ms = json_dumps(conv, JSON_COMPACT);
		if (!ms)
			die("cannot encode the conversation (invalid UTF-8?)");
		size_t np;
		int32_t *ids = prompt_ids(md, o, ms, NULL, &np);
		free(ms);
		size_t reuse = 0;
		while (reuse < ncached && reuse < np && cached[reuse] == ids[reuse])
			reuse++;
		struct gen_result r;
		generate_from(md, o, ids, np, reuse, stdout, &r);
		putchar('\n');
		fflush(stdout);
		if (o->verbose)
			print_stats(&r);
		size_t pos = (size_t)lq_run_pos(md->run);
		if (pos > np + r.nids)
			pos = np + r.nids; /* greedy steps run ahead of a stop */
		free(cached);
		cached = malloc((pos + 1) * sizeof *cached);
		if (!cached)
			die("out of memory");
		ncached = pos;
		for (size_t i = 0; i < pos; i++)
			cached[i] = i < np ? ids[i] : r.ids[i - np];
		m = json_object();
		json_object_set_new(m, "role", json_string("assistant"));
		json_object_set_new(m, "content", json_stringn(r.text, r.text_len));
		json_array_append_new(conv, m);
		free(r.text);
		free(r.ids);
		free(ids);
	}
	free(line);
	free(cached);
	json_decref(conv);
	return 0;
}

static int do_jsonl(struct model *md, struct opts *base)
{
	need_runtime(md, base->nthreads, base->ctx);
	need_tokenizer(md);
	gen_defaults(md, base);
	char *line = NULL;
	size_t cap = 0;
	ssize_t k;
	long lineno = 0;
	while ((k = getline(&line, &cap, stdin)) > 0) {
		lineno++;
		if (k == 1 && line[0] == '\n')
			continue;
		json_error_t je;
		json_t *j = json_loadb(line, (size_t)k, 0, &je);
		if (!j || !json_is_object(j))
			die("stdin line %ld: not a JSON object (%s)", lineno, je.text);
		struct opts o = *base;
		json_t *v;
		if ((v = json_object_get(j, "temperature")) && json_is_number(v))
			o.s.temperature = json_number_value(v);
		if ((v = json_object_get(j, "top_k")) && json_is_integer(v))
			o.s.top_k = (int)json_integer_value(v);
		if ((v = json_object_get(j, "top_p")) && json_is_number(v))
			o.s.top_p = json_number_value(v);
		if ((v = json_object_get(j, "min_p")) && json_is_number(v))
			o.s.min_p = json_number_value(v);
		if ((v = json_object_get(j, "repetition_penalty")) && json_is_number(v))
			o.s.repetition_penalty = json_number_value(v);
		if ((v = json_object_get(j, "max_new_tokens")) && json_is_integer(v))
			o.max_new = (long)json_integer_value(v);
		if ((v = json_object_get(j, "seed")) && json_is_integer(v))
			o.seed = (uint64_t)json_integer_value(v);
		if ((v = json_object_get(j, "stop"))) {
			if (json_is_string(v) && json_string_length(v)) {
				o.stop[0] = json_string_value(v);
				o.nstop = 1;
			} else if (json_is_array(v)) {
				size_t i;
				json_t *x;
				o.nstop = 0;
				json_array_foreach(v, i, x)
					if (json_is_string(x) && json_string_length(x) && o.nstop < 16)
						o.stop[o.nstop++] = json_string_value(x);
			}
		}
		json_t *msgs = json_object_get(j, "messages"), *prompt = json_object_get(j, "prompt");
		size_t np;
		int32_t *ids;
		if (json_is_array(msgs)) {
			char *ms = json_dumps(msgs, JSON_COMPACT);
			if (!ms)
				die("stdin line %ld: cannot encode messages", lineno);
			ids = prompt_ids(md, &o, ms, NULL, &np);
			free(ms);
		} else if (json_is_string(prompt)) {
			ids = prompt_ids(md, &o, NULL, json_string_value(prompt), &np);
		} else {
			die("stdin line %ld: needs \"messages\" (a list) or \"prompt\" (a string)", lineno);
		}
		struct gen_result r;
		generate(md, &o, ids, np, NULL, &r);
		json_t *res = json_object();
		json_object_set_new(res, "text", json_stringn(r.text, r.text_len));
		json_object_set_new(res, "prompt_tokens", json_integer((json_int_t)r.prompt_tokens));
		json_object_set_new(res, "completion_tokens", json_integer((json_int_t)r.nids));
		json_object_set_new(res, "finish_reason", json_string(r.finish));
		if (o.output_ids) {
			json_t *a = json_array();
			for (size_t i = 0; i < r.nids; i++)
				json_array_append_new(a, json_integer(r.ids[i]));
			json_object_set_new(res, "ids", a);
		}
		char *d = json_dumps(res, JSON_COMPACT);
		if (!d)
			die("cannot encode the result (invalid UTF-8 in the output)");
		puts(d);
		fflush(stdout);
		if (o.verbose)
			print_stats(&r);
		free(d);
		json_decref(res);
		json_decref(j);
		free(r.text);
		free(r.ids);
		free(ids);
	}
	free(line);
	return 0;
}

static int do_ppl(struct model *md, struct opts *o)
{
	size_t len;
	char *text = slurp_file(o->ppl, &len);
	if (!text && !strcmp(o->ppl, "-"))
		text = read_stream(stdin, &len, "stdin");
	if (!text)
		die("%s: cannot read:", o->ppl);
	int64_t ctx = o->ctx > 0 ? o->ctx : 512;
	need_runtime(md, o->nthreads, ctx);
	size_t n;
	int32_t *ids = encode(md, text, LQ_ENCODE_ADD_SPECIAL, &n);
	if (n < 2)
		die("%s: fewer than 2 tokens", o->ppl);
	int64_t stride = o->stride > 0 ? o->stride : ctx / 2;
	if (stride < 1)
		stride = 1;
	if (stride > ctx)
		stride = ctx;
	int64_t vocab = lq_run_vocab(md->run);
	float *lg = malloc((size_t)ctx * (size_t)vocab * sizeof(float));
	if (!lg)
		die("out of memory");
	/* the strided perplexity of transformers' documentation: each window
	 * scores only the tokens the previous one did not; the result is
	 * exp(sum of the token NLLs / their number) */
	double nll = 0;
	size_t counted = 0;
	int64_t prev_end = 0;
	struct lq_error e = {0};
	double t0 = now_s();
	for (int64_t begin = 0;; begin += stride) {
		int64_t end = begin + ctx;
		if (end > (int64_t)n)
			end = (int64_t)n;
		int64_t wn = end - begin, trg = end - prev_end;
		int rc = lq_run_forward(md->run, ids + begin, (size_t)wn, 0, lg, 1, &e);
		if (rc)
			die_lq(rc, &e);
		/* labels at window positions wn - trg .. wn - 1 (never position 0),
		 * each predicted by the logits of the position before it */
		for (int64_t t = wn - trg > 1 ? wn - trg : 1; t < wn; t++) {
			const float *row = lg + (size_t)(t - 1) * (size_t)vocab;
			double mx = row[0], s = 0;
			for (int64_t i = 1; i < vocab; i++)
				if (row[i] > mx)
					mx = row[i];
			for (int64_t i = 0; i < vocab; i++)
				s += exp((double)row[i] - mx);
			int32_t target = ids[begin + t];
			nll += (log(s) + mx) - (double)row[target];
			counted++;
		}
		prev_end = end;
		if (counted && o->verbose && !isatty(2))
			fprintf(stderr, "run: window %lld..%lld: ppl %.4f\n", (long long)begin,
				(long long)end, exp(nll / (double)counted));
		else if (counted && isatty(2))
			fprintf(stderr, "\rrun: [%lld/%zu tokens] ppl %.4f", (long long)end, n,
				exp(nll / (double)counted));
		if (end >= (int64_t)n)
			break;
	}
	if (isatty(2))
		fprintf(stderr, "\n");
	printf("%.6f\n", exp(nll / (double)(counted ? counted : 1)));
	if (o->verbose)
		fprintf(stderr, "run: %zu tokens scored in %.2f s\n", counted, now_s() - t0);
	free(lg);
	free(ids);
	free(text);
	return 0;
}

/* ------------------------------------------------------------ main */

enum {
	O_MESSAGES = 256, O_RAW, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_REP, O_SEED, O_STOP, O_IDS,
	O_OUTIDS, O_LOGITS, O_PPL, O_CTX, O_STRIDE, O_JSONL, O_TOK, O_DETOK, O_TPL, O_NOSPECIAL,
	O_SKIPSPECIAL, O_NOGEN, O_CHAT, O_CPU, O_DEVICE, O_COMPUTE, O_IGNORE_EOS
};

static double parse_double(const char *opt, const char *s, double lo, double hi)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi))
		usage_error("%s: bad value '%s'", opt, s);
	return v;
}

int main(int argc, char **argv)
{
	argv0 = "run";
	t_start = now_s();
	(void)progress_init; /* toolutil.h helpers this tool does not use */
	(void)progress_draw;
	(void)progress_end;
	struct opts o;
	memset(&o, 0, sizeof o);
	lq_sample_opts_init(&o.s);
	o.max_new = -1;
	o.nthreads = ncpus();
	o.device = -1;
	o.compute = -1;
	static const struct option lo[] = {
		{"system", required_argument, 0, 's'},    {"prompt", required_argument, 0, 'p'},
		{"messages", required_argument, 0, O_MESSAGES}, {"raw", no_argument, 0, O_RAW},
		{"max-new-tokens", required_argument, 0, 'n'}, {"temp", required_argument, 0, O_TEMP},
		{"temperature", required_argument, 0, O_TEMP}, {"top-k", required_argument, 0, O_TOPK},
		{"top-p", required_argument, 0, O_TOPP},  {"min-p", required_argument, 0, O_MINP},
		{"repetition-penalty", required_argument, 0, O_REP},
		{"seed", required_argument, 0, O_SEED},   {"stop", required_argument, 0, O_STOP},
		{"ids", required_argument, 0, O_IDS},     {"output-ids", no_argument, 0, O_OUTIDS},
		{"logits", required_argument, 0, O_LOGITS}, {"ppl", required_argument, 0, O_PPL},
		{"ctx", required_argument, 0, O_CTX},     {"stride", required_argument, 0, O_STRIDE},
		{"jsonl", no_argument, 0, O_JSONL},       {"tokenize", no_argument, 0, O_TOK},
		{"detokenize", no_argument, 0, O_DETOK},  {"template", no_argument, 0, O_TPL},
		{"no-special", no_argument, 0, O_NOSPECIAL}, {"skip-special", no_argument, 0, O_SKIPSPECIAL},
		{"no-generation-prompt", no_argument, 0, O_NOGEN}, {"chat", no_argument, 0, O_CHAT},
		{"cpu", no_argument, 0, O_CPU},           {"device", required_argument, 0, O_DEVICE},
		{"compute-dtype", required_argument, 0, O_COMPUTE},
		{"ignore-eos", no_argument, 0, O_IGNORE_EOS},
		{"threads", required_argument, 0, 'j'},   {"force", no_argument, 0, 'f'},
		{"verbose", no_argument, 0, 'v'},         {"help", no_argument, 0, 'h'},
		{"version", no_argument, 0, 'V'},         {0, 0, 0, 0}
	};
	int c;
	long v;
	while ((c = getopt_long(argc, argv, "s:p:n:j:fvhV", lo, NULL)) != -1) {
		switch (c) {
		case 's': o.system = optarg; break;
		case 'p': o.prompt = optarg; break;
		case O_MESSAGES: o.messages_file = optarg; break;
		case O_RAW: o.raw = 1; break;
		case 'n':
			if (parse_int(optarg, 0, 1L << 30, &v))
				usage_error("-n: bad number '%s'", optarg);
			o.max_new = v;
			break;
		case O_TEMP: o.s.temperature = parse_double("--temp", optarg, 0, 1e6); o.set_temp = 1; break;
		case O_TOPK:
			if (parse_int(optarg, 0, INT32_MAX, &v))
				usage_error("--top-k: bad number '%s'", optarg);
			o.s.top_k = (int)v;
			o.set_topk = 1;
			break;
		case O_TOPP: o.s.top_p = parse_double("--top-p", optarg, 0, 1); o.set_topp = 1; break;
		case O_MINP: o.s.min_p = parse_double("--min-p", optarg, 0, 1); break;
		case O_REP: o.s.repetition_penalty = parse_double("--repetition-penalty", optarg, 1e-6, 1e6); o.set_rep = 1; break;
		case O_SEED: {
			char *end;
			errno = 0;
			o.seed = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end)
				usage_error("--seed: bad number '%s'", optarg);
			break;
		}
		case O_STOP:
			if (o.nstop == 16)
				usage_error("at most 16 --stop strings");
			if (!*optarg)
				usage_error("--stop: empty string");
			o.stop[o.nstop++] = optarg;
			break;
		case O_IDS: o.ids = optarg; break;
		case O_OUTIDS: o.output_ids = 1; break;
		case O_LOGITS: o.logits = optarg; break;
		case O_PPL: o.ppl = optarg; break;
		case O_CTX:
			if (parse_int(optarg, 1, 1L << 30, &v))
				usage_error("--ctx: bad number '%s'", optarg);
			o.ctx = v;
			break;
		case O_STRIDE:
			if (parse_int(optarg, 1, 1L << 30, &v))
				usage_error("--stride: bad number '%s'", optarg);
			o.stride = v;
			break;
		case O_JSONL: o.jsonl = 1; break;
		case O_TOK: o.tokenize = 1; break;
		case O_DETOK: o.detokenize = 1; break;
		case O_TPL: o.template_only = 1; break;
		case O_NOSPECIAL: o.no_special = 1; break;
		case O_SKIPSPECIAL: o.skip_special = 1; break;
		case O_NOGEN: o.no_gen_prompt = 1; break;
		case O_CHAT: o.chat = 1; break;
		case O_CPU: o.cpu = 1; break;
		case O_IGNORE_EOS: o.ignore_eos = 1; break;
		case O_DEVICE:
			if (parse_int(optarg, 0, 1023, &v))
				usage_error("--device: bad number '%s'", optarg);
			o.device = (int)v;
			break;
		case O_COMPUTE:
			o.compute = lq_compute_parse(optarg);
			if (o.compute < 0)
				usage_error("--compute-dtype: '%s' is not bf16, fp16 or fp32", optarg);
			break;
		case 'j':
			if (parse_int(optarg, 1, 1024, &v))
				usage_error("-j: bad number '%s'", optarg);
			o.nthreads = (int)v;
			break;
		case 'f': o.force = 1; break;
		case 'v': o.verbose = 1; break;
		case 'h': fputs(usage_text, stdout); return finish_stdout();
		case 'V': printf("run (libquant) %s\n", lq_version()); return finish_stdout();
		default: fprintf(stderr, "try 'run --help'\n"); return 2;
		}
	}
	if (optind != argc - 1)
		usage_error(optind < argc ? "one MODEL expected" : "missing MODEL");
	int modes = !!o.tokenize + !!o.detokenize + !!o.template_only + !!o.ppl + !!o.logits;
	if (modes > 1)
		usage_error("--tokenize, --detokenize, --template, --ppl and --logits exclude each other");
	if (o.logits && !o.ids)
		usage_error("--logits needs --ids");
	if (o.ids && (o.prompt || o.system || o.messages_file))
		usage_error("--ids replaces -s, -p and --messages");
	if (o.messages_file && (o.prompt || o.system))
		usage_error("--messages replaces -s and -p");
	if (o.chat && (o.ids || o.prompt || o.messages_file || o.jsonl || modes))
		usage_error("--chat takes only -s and sampling options");
	if (o.cpu && o.device >= 0)
		usage_error("--cpu and --device exclude each other");
	struct model md;
	memset(&md, 0, sizeof md);
	md.backend = o.cpu ? LQ_BACKEND_CPU : o.device >= 0 ? LQ_BACKEND_CUDA : LQ_BACKEND_AUTO;
	md.device = o.device >= 0 ? o.device : 0;
	md.compute = o.compute;
	md.verbose = o.verbose;
	model_open(&md, argv[optind]);
	int rc;
	if (o.tokenize)
		rc = do_tokenize(&md, &o);
	else if (o.detokenize)
		rc = do_detokenize(&md, &o);
	else if (o.template_only)
		rc = do_template(&md, &o);
	else if (o.logits)
		rc = do_logits(&md, &o);
	else if (o.ppl)
		rc = do_ppl(&md, &o);
	else if (o.jsonl)
		rc = do_jsonl(&md, &o);
	else if (o.chat)
		rc = do_chat(&md, &o);
	else
		rc = do_generate(&md, &o);
	model_close(&md);
	if (finish_stdout())
		return 1;
	return rc;
}
