/*
 * pack.c - checkpoint -> LQ file: choose a storage type per tensor,
 * quantize in chunks on worker threads, store the model's JSON files, and
 * write everything through the sequential LQ writer.
 */
#include "internal.h"

#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_ELEMS (1u << 18) /* elements per work item: a multiple of every block size */

void lq_pack_opts_init(struct lq_pack_opts *o)
{
	memset(o, 0, sizeof *o);
	o->qtype = LQ_QTYPE_NF4;
	o->block_size = 64;
	o->double_quant = 1;
	o->compute = LQ_COMPUTE_BF16;
	o->nthreads = 1;
}

static int ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && strcmp(s + a - b, suf) == 0;
}

static int match_any(const char *const *globs, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (fnmatch(globs[i], name, 0) == 0)
			return 1;
	return 0;
}

static int is_head(const char *name)
{
	return strcmp(name, "lm_head.weight") == 0 || ends_with(name, ".lm_head.weight");
}

/* The one rule: globs first, then the role's default. */
static int choose(const struct lq_pack_opts *o, const char *name, int dtype, int quantize_by_default)
{
	if (dtype != LQ_DTYPE_F32 && dtype != LQ_DTYPE_F16 && dtype != LQ_DTYPE_BF16)
		return LQ_QTYPE_NONE;
	if (o->qtype == LQ_QTYPE_NONE || match_any(o->keep, o->nkeep, name))
		return LQ_QTYPE_NONE;
	if (match_any(o->quantize, o->nquantize, name))
		return o->qtype;
	return quantize_by_default ? o->qtype : LQ_QTYPE_NONE;
}

int lq_pack_choose(const struct lq_pack_opts *o, const char *name, int ndim, int dtype)
{
	/* without a model description: Linear weights by name */
	int linear = ndim == 2 && ends_with(name, ".weight") && !strstr(name, "embed") && !strstr(name, "norm") &&
		     !strstr(name, "wte") && !strstr(name, "wpe");
	return choose(o, name, dtype, linear && (!is_head(name) || o->quantize_head));
}

int lq_pack_plan(const struct lq_pack_opts *o, struct lq_model *m, struct lq_error *err)
{
	for (size_t i = 0; i < lq_model_nparams(m); i++) {
		const struct lq_model_param *p = lq_model_param(m, i);
		if (p->tied)
			continue;
		int head = p->role == LQ_ROLE_LM_HEAD;
		int q = choose(o, p->name, p->st.dtype, p->quantize_default || (head && o->quantize_head));
		struct lq_model_storage st = {p->st.dtype, q, q ? o->block_size : 0, q ? o->double_quant : 0};
		int rc = lq_model_set_storage(m, i, &st, err);
		if (rc)
			return rc;
	}
	return LQ_OK;
}

/* ------------------------------------------------------------ workers */

struct job {
	const struct lq_pack_opts *o;
	const struct lq_st_tensor *t;
	struct lq_qparams p; /* double_quant = 0: scales are fp32 absmax */
	uint8_t *data;
	float *absmax;
	uint64_t nchunks;
	atomic_uint_least64_t next;
	atomic_uint_least64_t done_elems;
	atomic_int_least64_t first_bad; /* lowest non-finite index, or INT64_MAX */
	atomic_int stop;
	atomic_int active; /* workers still running */
	int rc;
};

static void *worker(void *arg)
{
	struct job *j = arg;
	size_t esz = lq_dtype_size(j->t->dtype);
	for (;;) {
		if (atomic_load(&j->stop))
			break;
		uint64_t c = atomic_fetch_add(&j->next, 1);
		if (c >= j->nchunks)
			break;
		uint64_t beg = c * CHUNK_ELEMS, n = j->t->nelem - beg;
		if (n > CHUNK_ELEMS)
			n = CHUNK_ELEMS;
		const uint8_t *src = (const uint8_t *)j->t->data + beg * esz;
		if (!j->o->allow_nonfinite) {
			int64_t bad = lq_find_nonfinite(src, j->t->dtype, n);
			if (bad >= 0) {
				int64_t at = (int64_t)beg + bad, cur = atomic_load(&j->first_bad);
				while (at < cur && !atomic_compare_exchange_weak(&j->first_bad, &cur, at))
					;
				atomic_fetch_add(&j->done_elems, n);
				continue;
			}
		}
		if (j->data) {
			struct lq_qbuf qb = {
				.data = j->data + (j->p.qtype == LQ_QTYPE_INT8 ? beg : beg / 2),
				.scales = j->absmax + beg / (uint64_t)j->p.block_size,
			};
			lq_quantize_src(&j->p, src, j->t->dtype, n, &qb, NULL, 1);
		}
		atomic_fetch_add(&j->done_elems, n);
	}
	atomic_fetch_sub(&j->active, 1);
	return NULL;
}

/* Run the workers over tensor t (quantizing when data != NULL, else only
 * checking for non-finite values); this thread reports progress. */
static int run_job(struct job *j, uint64_t *done_bytes, uint64_t total, struct lq_error *err)
{
	const struct lq_pack_opts *o = j->o;
	j->nchunks = (j->t->nelem + CHUNK_ELEMS - 1) / CHUNK_ELEMS;
	int nth = o->nthreads < 1 ? 1 : o->nthreads > 256 ? 256 : o->nthreads;
	if ((uint64_t)nth > j->nchunks)
		nth = j->nchunks ? (int)j->nchunks : 1;
	atomic_init(&j->next, 0);
	atomic_init(&j->done_elems, 0);
	atomic_init(&j->first_bad, INT64_MAX);
	atomic_init(&j->stop, 0);
	atomic_init(&j->active, nth);
	j->rc = 0;
	pthread_t th[256];
	int started = 0;
	if (o->progress && j->nchunks > 1) {
		for (; started < nth; started++)
			if (pthread_create(&th[started], NULL, worker, j))
				break;
		atomic_fetch_sub(&j->active, nth - started);
		if (!started) {
			atomic_fetch_add(&j->active, 1);
			worker(j);
		}
		uint64_t esz = lq_dtype_size(j->t->dtype);
		while (atomic_load(&j->active) > 0) {
			uint64_t d = atomic_load(&j->done_elems);
			if (o->progress(o->ctx, *done_bytes + d * esz, total, j->t->name)) {
				atomic_store(&j->stop, 1);
				j->rc = LQ_ERR_INTERRUPTED;
			}
			usleep(20000);
		}
	} else {
		for (; started < nth - 1; started++)
			if (pthread_create(&th[started], NULL, worker, j))
				break;
		atomic_fetch_sub(&j->active, nth - 1 - started);
		worker(j);
	}
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	*done_bytes += j->t->nbytes;
	int64_t bad = atomic_load(&j->first_bad);
	if (j->rc == LQ_ERR_INTERRUPTED)
		return lq_fail(err, LQ_ERR_INTERRUPTED, "interrupted");
	if (bad != INT64_MAX) {
		char where[128] = "";
		if (j->t->ndim == 2 && j->t->shape[1])
			snprintf(where, sizeof where, " (row %llu, column %llu)",
				 (unsigned long long)((uint64_t)bad / j->t->shape[1]),
				 (unsigned long long)((uint64_t)bad % j->t->shape[1]));
		float v;
		lq_to_f32(&v, (const uint8_t *)j->t->data + (uint64_t)bad * lq_dtype_size(j->t->dtype), j->t->dtype, 1);
		return lq_fail(err, LQ_ERR_NONFINITE, "tensor '%s': %s at element %lld%s; use --allow-nonfinite to store it anyway",
			       j->t->name, v != v ? "NaN" : v > 0 ? "+Inf" : "-Inf", (long long)bad, where);
	}
	return LQ_OK;
}

/* ------------------------------------------------------------ metadata */

static const char *const stored_files[] = {
	"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
	"special_tokens_map.json", "chat_template.jinja", "chat_template.json",
};

static char *join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);
	if (p) {
		memcpy(p, a, la);
		p[la] = '/';
		memcpy(p + la + 1, b, lb + 1);
	}
	return p;
}

static int is_hex64(const char *s)
{
	if (strlen(s) != 64)
		return 0;
	for (; *s; s++)
		if (!strchr("0123456789abcdef", *s))
			return 0;
	return 1;
}

/* repo and revision from a Hugging Face cache path .../models--a--b/snapshots/REV */
static void hf_source(const char *input, json_t *src)
{
	char *real = realpath(input, NULL), *repo = NULL;
	json_t *jrepo = json_null(), *jrev = json_null();
	if (real) {
		char *s = strstr(real, "/snapshots/");
		char *m = s ? s : NULL;
		while (m && m > real && m[-1] != '/')
			m--;
		if (s && m && (strncmp(m, "models--", 8) == 0 || strncmp(m, "datasets--", 10) == 0)) {
			char *name = strchr(m, '-') + 2; /* after "models--" */
			repo = strndup(name, (size_t)(s - name));
			for (char *p = repo ? strstr(repo, "--") : NULL; p; p = strstr(p, "--")) {
				*p = '/';
				memmove(p + 1, p + 2, strlen(p + 2) + 1);
			}
			char *rev = s + strlen("/snapshots/"), *sl = strchr(rev, '/');
			jrev = json_stringn(rev, sl ? (size_t)(sl - rev) : strlen(rev));
			if (repo)
				jrepo = json_string(repo);
		}
	}
	json_object_set_new(src, "repo", jrepo ? jrepo : json_null());
	json_object_set_new(src, "revision", jrev ? jrev : json_null());
	free(repo);
	free(real);
}

static json_t *file_entry(const char *path, uint64_t size)
{
	json_t *f = json_object();
	const char *base = strrchr(path, '/');
	json_object_set_new(f, "name", json_string(base ? base + 1 : path));
	json_object_set_new(f, "size", json_integer((json_int_t)size));
	char target[PATH_MAX];
	ssize_t k = readlink(path, target, sizeof target - 1);
	json_t *sha = json_null();
	if (k > 0) {
		target[k] = 0;
		const char *b = strrchr(target, '/');
		b = b ? b + 1 : target;
		if (is_hex64(b))
			sha = json_string(b); /* HF cache blobs of LFS files are named by SHA-256 */
	}
	json_object_set_new(f, "sha256", sha);
	return f;
}

static json_t *build_meta(const struct lq_pack_opts *o, const char *input, const struct lq_st *st,
			  const char *arch, int have_tok)
{
	json_t *m = json_object(), *q = json_object(), *src = json_object(), *files = json_array();
	json_object_set_new(m, "format", json_string("lq"));
	json_object_set_new(m, "format_version", json_string("1.0"));
	json_object_set_new(m, "producer", json_string("libquant " LQ_VERSION_STRING));
	json_object_set_new(m, "architecture", arch ? json_string(arch) : json_null());
	json_object_set_new(q, "type", json_string(lq_qtype_name(o->qtype)));
	json_object_set_new(q, "block_size", json_integer(o->qtype ? o->block_size : 0));
	json_object_set_new(q, "double_quant", json_boolean(o->qtype && o->double_quant));
	json_object_set_new(q, "nested_block_size", json_integer(o->qtype && o->double_quant ? LQ_NESTED_BLOCK : 0));
	json_object_set_new(q, "compute_dtype", json_string(lq_compute_name(o->compute)));
	json_object_set_new(q, "quantize_head", json_boolean(o->quantize_head));
	json_t *k = json_array(), *qq = json_array();
	for (size_t i = 0; i < o->nkeep; i++)
		json_array_append_new(k, json_string(o->keep[i]));
	for (size_t i = 0; i < o->nquantize; i++)
		json_array_append_new(qq, json_string(o->quantize[i]));
	json_object_set_new(q, "keep", k);
	json_object_set_new(q, "quantize", qq);
	json_object_set_new(m, "quantization", q);
	hf_source(input, src);
	for (size_t i = 0; i < lq_st_nfiles(st); i++)
		json_array_append_new(files, file_entry(lq_st_file_path(st, i), lq_st_file_size(st, i)));
	json_object_set_new(src, "files", files);
	json_object_set_new(m, "source", src);
	json_object_set_new(m, "tokenizer", json_boolean(have_tok));
	return m;
}

/* ------------------------------------------------------------ main */

/*
 * The tokenizer in the compact form run loads without parsing JSON
 * (LQ_TOKENIZER_BLOB, formats/TOKENIZER-BLOB.md), built as transformers 5
 * builds it.  A tokenizer the library cannot load is a warning: the JSON
 * files are stored all the same.
 */
static int compile_tokenizer(const char *dir, void **blob, size_t *len, struct lq_error *e)
{
	char *tj = join(dir, "tokenizer.json"), *tc = join(dir, "tokenizer_config.json");
	struct lq_tokenizer *tok = NULL;
	int rc = !tj || !tc ? lq_fail(e, LQ_ERR_NOMEM, "out of memory") :
		 lq_tokenizer_load_files(&tok, tj, tc, LQ_TOKENIZER_TRANSFORMERS5, e);
	if (!rc)
		rc = lq_tokenizer_serialize(tok, blob, len, e);
	lq_tokenizer_free(tok);
	free(tj);
	free(tc);
	return rc;
}

static int store_tokenizer(struct lq_writer *w, const char *dir, const struct lq_pack_opts *o,
			   struct lq_error *err)
{
	struct lq_error e2 = {0};
	void *blob = NULL;
	size_t len = 0;
	int rc = LQ_OK;
	if (compile_tokenizer(dir, &blob, &len, &e2)) {
		if (e2.code == LQ_ERR_NOMEM)
			rc = lq_fail(err, LQ_ERR_NOMEM, "%s", e2.msg);
		else if (o->warn) {
			char msg[1200];
			snprintf(msg, sizeof msg, "%s: tokenizer not precompiled (%s); run will parse tokenizer.json",
				 dir, e2.msg);
			o->warn(o->ctx, msg);
		}
	} else {
		rc = lq_writer_add_blob(w, LQ_TOKENIZER_BLOB, blob, len, err);
	}
	free(blob);
	return rc;
}

int lq_pack_stored(const char *dir, const struct lq_pack_opts *o, const struct lq_st *st,
		   struct lq_estimate_blob *blobs, size_t cap, size_t *n, uint64_t *metadata_bytes,
		   struct lq_error *err)
{
	size_t k = 0;
	int have_tok = 0;
	char *arch = NULL;
	for (size_t i = 0; i < sizeof stored_files / sizeof stored_files[0]; i++) {
		char *p = join(dir, stored_files[i]);
		struct stat sb;
		if (p && stat(p, &sb) == 0 && k < cap) {
			blobs[k++] = (struct lq_estimate_blob){stored_files[i], (uint64_t)sb.st_size};
			have_tok |= i == 2;
			if (i == 0) {
				json_error_t je;
				json_t *c = json_load_file(p, JSON_DECODE_INT_AS_REAL, &je);
				json_t *a = json_array_get(json_object_get(c, "architectures"), 0);
				if (json_is_string(a))
					arch = strdup(json_string_value(a));
				json_decref(c);
			}
		}
		free(p);
	}
	void *blob = NULL;
	size_t len = 0;
	struct lq_error e2;
	if (have_tok && k < cap && compile_tokenizer(dir, &blob, &len, &e2) == 0)
		blobs[k++] = (struct lq_estimate_blob){LQ_TOKENIZER_BLOB, len};
	free(blob);
	json_t *meta = build_meta(o, dir, st, arch, have_tok);
	char *text = meta ? json_dumps(meta, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
	free(arch);
	json_decref(meta);
	if (!text)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	*metadata_bytes = strlen(text);
	free(text);
	*n = k;
	return LQ_OK;
}

static int store_files(struct lq_writer *w, const char *dir, const struct lq_pack_opts *o, char **arch,
		       char **config, size_t *config_len, int *have_tok, struct lq_error *err)
{
	int rc0;
	for (size_t i = 0; i < sizeof stored_files / sizeof stored_files[0]; i++) {
		char *p = join(dir, stored_files[i]);
		if (!p)
			return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		const void *map = NULL;
		uint64_t size = 0;
		struct stat sb;
		int present = stat(p, &sb) == 0;
		int rc = LQ_OK;
		if (!present && i == 0)
			rc = lq_fail(err, LQ_ERR_NOTFOUND, "%s: missing config.json (a checkpoint directory needs one)", dir);
		else if (present)
			rc = lq_map_file(p, &map, &size, err);
		if (!rc && present && ends_with(stored_files[i], ".json")) {
			json_error_t je;
			json_t *j = json_loadb(map ? map : "", (size_t)size, JSON_DECODE_INT_AS_REAL, &je) /* Python ints may exceed 64 bits */;
			if (!json_is_object(j) && !(i == 6 && j))
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: invalid JSON at line %d: %s", p, je.line,
					     j ? "not an object" : je.text);
			if (!rc && i == 0) {
				json_t *a = json_array_get(json_object_get(j, "architectures"), 0);
				if (!json_is_string(a))
					rc = lq_fail(err, LQ_ERR_FORMAT, "%s: no \"architectures\" list", p);
				else {
					if (lq_arch_of_class(json_string_value(a)) < 0)
						rc = lq_fail(err, LQ_ERR_UNSUPPORTED,
							     "%s: unknown architecture '%s' (supported: Llama, Mistral, Qwen2, Phi-3, Gemma 2)",
							     p, json_string_value(a));
					else
						*arch = strdup(json_string_value(a));
				}
				if (!rc && (*config = malloc((size_t)size + 1))) {
					memcpy(*config, map, (size_t)size);
					(*config)[size] = 0;
					*config_len = (size_t)size;
				}
			}
			json_decref(j);
		}
		if (!rc && present)
			rc = lq_writer_add_blob(w, stored_files[i], map, (size_t)size, err);
		if (present && i == 2)
			*have_tok = 1;
		lq_unmap_file(map, size);
		free(p);
		if (rc)
			return rc;
	}
	if (*have_tok && (rc0 = store_tokenizer(w, dir, o, err)))
		return rc0;
	if (!*have_tok && o->warn) {
		char msg[512];
		snprintf(msg, sizeof msg, "%s: no tokenizer.json; run will accept only token ids", dir);
		o->warn(o->ctx, msg);
	}
	return LQ_OK;
}

/*
 * The writer stage: a thread that double-quantizes the scales, checksums and
 * writes tensor i while the workers quantize tensor i + 1.  One job in
 * flight; the first error stops it and is reported at the next hand-over.
 */
struct wjob {
	struct lq_tensor d;
	const void *data;           /* the data part (owned when own_data) */
	uint8_t *own_data;
	float *absmax;              /* fp32 scales (owned), NULL for a kept tensor */
	uint64_t nb;
	const struct lq_st_tensor *t;
};

struct wstage {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct wjob job;
	int has_job, quit, rc;
	struct lq_error err;
	struct lq_writer *w;
	const struct lq_st *st;
};

static void wjob_free(struct wjob *j)
{
	free(j->own_data);
	free(j->absmax);
	memset(j, 0, sizeof *j);
}

static int wjob_write(struct wstage *ws, struct wjob *j)
{
	int rc;
	if (!j->absmax) {
		rc = lq_writer_add_tensor(ws->w, &j->d, j->data, NULL, NULL, &ws->err);
	} else if (!j->d.double_quant) {
		rc = lq_writer_add_tensor(ws->w, &j->d, j->data, j->absmax, NULL, &ws->err);
	} else {
		uint8_t *codes = malloc((size_t)(j->nb ? j->nb : 1));
		float *nested = malloc((size_t)((j->nb + LQ_NESTED_BLOCK - 1) / LQ_NESTED_BLOCK + 1) * sizeof(float));
		if (!codes || !nested)
			rc = lq_fail(&ws->err, LQ_ERR_NOMEM, "tensor '%s': out of memory", j->d.name);
		else {
			lq_qscales_compress(j->absmax, j->nb, codes, nested, &j->d.offset);
			rc = lq_writer_add_tensor(ws->w, &j->d, j->data, codes, nested, &ws->err);
		}
		free(codes);
		free(nested);
	}
	lq_st_release(ws->st, j->t);
	return rc;
}

static void *writer_main(void *arg)
{
	struct wstage *ws = arg;
	pthread_mutex_lock(&ws->mu);
	for (;;) {
		while (!ws->has_job && !ws->quit)
			pthread_cond_wait(&ws->cv, &ws->mu);
		if (!ws->has_job)
			break;
		struct wjob j = ws->job;
		pthread_mutex_unlock(&ws->mu);
		int rc = ws->rc ? ws->rc : wjob_write(ws, &j);
		wjob_free(&j);
		pthread_mutex_lock(&ws->mu);
		if (!ws->rc)
			ws->rc = rc;
		ws->has_job = 0;
		pthread_cond_broadcast(&ws->cv);
	}
	pthread_mutex_unlock(&ws->mu);
	return NULL;
}

/* Hand a job to the writer (waiting for the previous one); takes ownership. */
static int wstage_submit(struct wstage *ws, struct wjob *j, struct lq_error *err)
{
	pthread_mutex_lock(&ws->mu);
	while (ws->has_job)
		pthread_cond_wait(&ws->cv, &ws->mu);
	int rc = ws->rc;
	if (!rc) {
		ws->job = *j;
		ws->has_job = 1;
		pthread_cond_broadcast(&ws->cv);
	}
	pthread_mutex_unlock(&ws->mu);
	if (rc) {
		wjob_free(j);
		if (err)
			*err = ws->err;
	}
	return rc;
}

/* Wait for the writer to finish everything and stop it. */
static int wstage_finish(struct wstage *ws, struct lq_error *err)
{
	pthread_mutex_lock(&ws->mu);
	ws->quit = 1;
	pthread_cond_broadcast(&ws->cv);
	pthread_mutex_unlock(&ws->mu);
	pthread_join(ws->th, NULL);
	pthread_mutex_destroy(&ws->mu);
	pthread_cond_destroy(&ws->cv);
	if (ws->rc && err)
		*err = ws->err;
	return ws->rc;
}

static int pack_tensor(struct wstage *ws, const struct lq_pack_opts *o, const struct lq_st *st,
		       const struct lq_model *m, const struct lq_st_tensor *t, uint64_t *done, uint64_t total,
		       struct lq_error *err)
{
	if (t->dtype < 0)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (supported: F32, BF16, F16, U8, I8)",
			       lq_st_file_path(st, (size_t)t->file), t->name, t->dtype_name);
	struct wjob wj = {.t = t, .data = t->data};
	struct lq_tensor *d = &wj.d;
	d->name = t->name;
	d->src_dtype = t->dtype;
	d->ndim = t->ndim;
	memcpy(d->shape, t->shape, sizeof d->shape);
	long pi = m ? lq_model_find_param(m, t->name) : -1;
	/* the model's plan for its parameters; tensors outside the model by name */
	d->qtype = pi >= 0 ? lq_model_param(m, (size_t)pi)->st.qtype : lq_pack_choose(o, t->name, t->ndim, t->dtype);
	struct job j = {.o = o, .t = t};
	lq_st_prefetch(st, t);
	int rc;
	if (d->qtype == LQ_QTYPE_NONE) {
		if (t->dtype == LQ_DTYPE_U8 || t->dtype == LQ_DTYPE_I8 || o->allow_nonfinite) {
			*done += t->nbytes;
			if (o->progress && o->progress(o->ctx, *done, total, t->name))
				return lq_fail(err, LQ_ERR_INTERRUPTED, "interrupted");
		} else if ((rc = run_job(&j, done, total, err))) {
			return rc;
		}
		return wstage_submit(ws, &wj, err);
	}
	d->block_size = o->block_size;
	d->double_quant = o->double_quant;
	j.p = (struct lq_qparams){d->qtype, o->block_size, 0};
	wj.nb = lq_qnblocks(t->nelem, o->block_size);
	size_t dbytes = lq_qdata_bytes(d->qtype, t->nelem);
	wj.own_data = j.data = malloc(dbytes ? dbytes : 1);
	wj.absmax = j.absmax = malloc((size_t)(wj.nb ? wj.nb : 1) * sizeof(float));
	wj.data = wj.own_data;
	if (!j.data || !j.absmax) {
		wjob_free(&wj);
		return lq_fail(err, LQ_ERR_NOMEM, "tensor '%s': out of memory", t->name);
	}
	if ((rc = run_job(&j, done, total, err))) {
		wjob_free(&wj);
		return rc;
	}
	return wstage_submit(ws, &wj, err);
}

int lq_pack(const char *input, int fd, const char *out_label, const struct lq_pack_opts *o, struct lq_error *err)
{
	if (o->qtype != LQ_QTYPE_NONE) {
		struct lq_qparams p = {o->qtype, o->block_size, o->double_quant};
		int rc = lq_qparams_check(&p, err);
		if (rc)
			return rc;
		if (CHUNK_ELEMS % (unsigned)o->block_size)
			return lq_fail(err, LQ_ERR_INVALID, "block size %d too large", o->block_size);
	}
	struct stat sb;
	if (stat(input, &sb) < 0)
		return lq_fail_errno(err, errno, "%s", input);
	struct lq_st *st = NULL;
	struct lq_writer *w = NULL;
	char *arch = NULL, *config = NULL;
	size_t config_len = 0;
	struct lq_model *model = NULL;
	int have_tok = 0;
	json_t *meta = NULL;
	char *mtext = NULL;
	int rc = lq_st_open(&st, input, err);
	if (rc)
		goto out;
	if ((rc = lq_writer_create(&w, fd, out_label, err)))
		goto out;
	if (S_ISDIR(sb.st_mode) && (rc = store_files(w, input, o, &arch, &config, &config_len, &have_tok, err)))
		goto out;
	if (config) {
		/* the architecture's description: shapes checked, storage planned */
		struct lq_error e2 = {0};
		if ((rc = lq_model_from_st(&model, config, config_len, st, &e2))) {
			rc = lq_fail(err, rc, "%s: %s", input, e2.msg);
			goto out;
		}
		for (size_t i = 0; o->warn && i < lq_model_nwarnings(model); i++) {
			char msg[1024];
			snprintf(msg, sizeof msg, "%s: %s", input, lq_model_warning(model, i));
			o->warn(o->ctx, msg);
		}
		if ((rc = lq_pack_plan(o, model, err)))
			goto out;
	}
	uint64_t total = lq_st_total_bytes(st), done = 0;
	struct wstage ws = {.w = w, .st = st};
	pthread_mutex_init(&ws.mu, NULL);
	pthread_cond_init(&ws.cv, NULL);
	if (pthread_create(&ws.th, NULL, writer_main, &ws)) {
		pthread_mutex_destroy(&ws.mu);
		pthread_cond_destroy(&ws.cv);
		rc = lq_fail(err, LQ_ERR_NOMEM, "cannot start the writer thread");
		goto out;
	}
	for (size_t i = 0; i < lq_st_count(st) && !rc; i++)
		rc = pack_tensor(&ws, o, st, model, lq_st_get(st, i), &done, total, err);
	int wrc = wstage_finish(&ws, rc ? NULL : err);
	if (!rc)
		rc = wrc;
	if (rc)
		goto out;
	meta = build_meta(o, input, st, arch, have_tok);
	mtext = meta ? json_dumps(meta, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
	if (!mtext) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	rc = lq_writer_finish(w, mtext, err);
out:
	free(mtext);
	json_decref(meta);
	free(arch);
	free(config);
	lq_model_free(model);
	lq_writer_free(w);
	lq_st_close(st);
	return rc;
}
