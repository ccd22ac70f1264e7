/* inspect - show what is in an LQ file or a safetensors checkpoint. */
#include "libquant.h"
#include "toolutil.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>

static const char usage_text[] =
	"usage: inspect [--tensors | --verify | --json] FILE.lq|CHECKPOINT_DIR|FILE.safetensors\n"
	"       inspect --dequant NAME -o FILE.npy FILE.lq|CHECKPOINT\n"
	"       inspect --stats NAME [--source CHECKPOINT] FILE.lq|CHECKPOINT\n"
	"       inspect --tree [--json] FILE.lq|CHECKPOINT\n"
	"       inspect --estimate [-t TYPE] [-b N] [--no-double-quant] [--keep GLOB]...\n"
	"               [--quantize GLOB]... [--quantize-head] [--json] CHECKPOINT\n"
	"\n"
	"Without options, prints a summary: architecture, parameters, quantization,\n"
	"memory footprint and size on disk.\n"
	"\n"
	"      --tensors        one line per tensor: name, shape, storage, source dtype,\n"
	"                       bytes, XXH3-64 checksum\n"
	"      --verify         recompute every checksum; exit 1 on any mismatch\n"
	"      --json           the summary (with --tensors: and every tensor; with\n"
	"                       --tree: the module tree) as JSON\n"
	"      --tree           the module tree as print(model) shows it in transformers\n"
	"      --estimate       footprint and .lq size if CHECKPOINT were quantized with\n"
	"                       the options below (as quantize takes them), from the\n"
	"                       headers alone\n"
	"  -t, --type TYPE      nf4 (default), fp4, int8, none      (with --estimate)\n"
	"  -b, --block-size N   --no-double-quant  --keep GLOB  --quantize GLOB\n"
	"      --quantize-head  as quantize(1)                      (with --estimate)\n"
	"      --dequant NAME   write tensor NAME, dequantized to float32, as .npy (-o)\n"
	"  -o, --output FILE    output of --dequant ('-' for stdout)\n"
	"      --stats NAME     min/max/mean/std of tensor NAME and, with --source,\n"
	"                       its quantization error against the source checkpoint\n"
	"      --source CKPT    the checkpoint the LQ file was made from\n"
	"  -f, --force          overwrite the --dequant output\n"
	"  -j, --threads N      threads for dequantization (default: all cores)\n"
	"  -q, --quiet          no progress bar\n"
	"  -h, --help           this help\n"
	"  -V, --version        print the version\n";

static void usage(int status) { usage_exit(usage_text, status); }

/* One view over both kinds of input. */
struct tview {
	const char *name;
	int ndim;
	uint64_t shape[LQ_MAX_DIMS];
	uint64_t nelem;
	int qtype, dtype, block_size, double_quant;
	const char *dtype_name;
	uint64_t bytes;   /* stored bytes, all parts */
	uint64_t fp_bytes; /* what transformers counts for it */
	uint64_t xxh3;
	int has_xxh3;
	const struct lq_tensor *lq;
	const struct lq_st_tensor *st;
};

struct input {
	const char *path;
	struct lq_file *lq;
	struct lq_st *st;
	struct tview *t;
	size_t n;
	json_t *meta;   /* LQ metadata */
	json_t *config; /* config.json if known */
	uint64_t disk;  /* size on disk */
	struct lq_model *model; /* architecture description, when config.json is known */
	struct lq_error model_err;
};

static void open_input(struct input *in, const char *path)
{
	struct lq_error e = {0};
	in->path = path;
	struct stat sb;
	if (stat(path, &sb) < 0)
		die("%s:", path);
	int is_lq = 0;
	if (S_ISREG(sb.st_mode)) {
		FILE *f = fopen(path, "rb");
		unsigned char m[4] = {0};
		if (!f)
			die("%s:", path);
		size_t k = fread(m, 1, 4, f), pl = strlen(path);
		/* LQ magic, or anything named .lq: then the LQ reader says what is wrong */
		is_lq = (k >= 1 && m[0] == 0x89) || (pl > 3 && strcmp(path + pl - 3, ".lq") == 0);
		fclose(f);
	}
	int rc;
	if (is_lq) {
		if ((rc = lq_file_open(&in->lq, path, &e)))
			die_lq(rc, &e);
		size_t ml;
		const char *mt = lq_file_metadata(in->lq, &ml);
		json_error_t je;
		in->meta = json_loadb(mt, ml, 0, &je);
		const struct lq_blob *cb = lq_file_find_blob(in->lq, "config.json");
		if (cb)
			in->config = json_loadb((const char *)cb->data, (size_t)cb->size, 0, &je);
		in->disk = lq_file_size(in->lq);
		in->n = lq_file_count(in->lq);
		in->t = calloc(in->n + 1, sizeof *in->t);
		if (!in->t)
			die("out of memory");
		for (size_t i = 0; i < in->n; i++) {
			const struct lq_tensor *t = lq_file_get(in->lq, i);
			struct tview *v = &in->t[i];
			v->name = t->name;
			v->ndim = t->ndim;
			memcpy(v->shape, t->shape, sizeof v->shape);
			v->nelem = t->nelem;
			v->qtype = t->qtype;
			v->dtype = t->src_dtype;
			v->dtype_name = lq_dtype_name(t->src_dtype);
			v->block_size = t->block_size;
			v->double_quant = t->double_quant;
			v->bytes = t->data_size + t->scale_size + t->nested_size;
			v->fp_bytes = t->data_size; /* 4-bit: packed weight only; int8: int8 weight */
			v->xxh3 = t->xxh3;
			v->has_xxh3 = 1;
			v->lq = t;
		}
		if (lq_model_from_lq(&in->model, in->lq, &in->model_err) == 0)
			for (size_t i = 0; i < lq_model_nwarnings(in->model); i++)
				warnx_("warning: %s: %s", path, lq_model_warning(in->model, i));
		return;
	}
	if ((rc = lq_st_open(&in->st, path, &e)))
		die_lq(rc, &e);
	for (size_t i = 0; i < lq_st_nfiles(in->st); i++)
		in->disk += lq_st_file_size(in->st, i);
	in->n = lq_st_count(in->st);
	in->t = calloc(in->n + 1, sizeof *in->t);
	if (!in->t)
		die("out of memory");
	for (size_t i = 0; i < in->n; i++) {
		const struct lq_st_tensor *t = lq_st_get(in->st, i);
		struct tview *v = &in->t[i];
		v->name = t->name;
		v->ndim = t->ndim;
		memcpy(v->shape, t->shape, sizeof v->shape);
		v->nelem = t->nelem;
		v->qtype = LQ_QTYPE_NONE;
		v->dtype = t->dtype;
		v->dtype_name = t->dtype_name;
		v->bytes = v->fp_bytes = t->nbytes;
		v->st = t;
	}
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/config.json", path);
	size_t size;
	char *map;
	in->model_err.code = LQ_ERR_NOTFOUND;
	snprintf(in->model_err.msg, sizeof in->model_err.msg, "%s: no config.json", path);
	if (S_ISDIR(sb.st_mode) && (map = slurp_file(p, &size))) {
		/* one read of config.json serves the summary and the model description */
		json_error_t je;
		in->config = json_loadb(map, size, JSON_DECODE_INT_AS_REAL, &je);
		if (lq_model_from_st(&in->model, map, (size_t)size, in->st, &in->model_err) == 0)
			for (size_t i = 0; i < lq_model_nwarnings(in->model); i++)
				warnx_("warning: %s: %s", path, lq_model_warning(in->model, i));
		free(map);
	}
}

static void close_input(struct input *in)
{
	lq_model_free(in->model);
	json_decref(in->meta);
	json_decref(in->config);
	free(in->t);
	lq_file_close(in->lq);
	lq_st_close(in->st);
}

static const char *shape_str(const struct tview *v, char *buf, size_t cap)
{
	size_t k = 0;
	buf[0] = 0;
	if (v->ndim == 0)
		snprintf(buf, cap, "scalar");
	for (int d = 0; d < v->ndim && k < cap; d++)
		k += (size_t)snprintf(buf + k, cap - k, "%s%llu", d ? "x" : "", (unsigned long long)v->shape[d]);
	return buf;
}

static const char *storage_str(const struct tview *v, char *buf, size_t cap)
{
	if (v->qtype == LQ_QTYPE_NONE)
		snprintf(buf, cap, "%s", v->dtype_name);
	else
		snprintf(buf, cap, "%s%s/%d", lq_qtype_name(v->qtype), v->double_quant ? "-dq" : "", v->block_size);
	return buf;
}

static const char *human(uint64_t b, char *buf, size_t cap)
{
	if (b >= 1000000000ull)
		snprintf(buf, cap, "%.2f GB", (double)b / 1e9);
	else if (b >= 1000000ull)
		snprintf(buf, cap, "%.2f MB", (double)b / 1e6);
	else
		snprintf(buf, cap, "%.2f kB", (double)b / 1e3);
	return buf;
}

static const char *commas(uint64_t v, char *buf, size_t cap)
{
	char tmp[32];
	int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v), k = 0;
	for (int i = 0; i < n && (size_t)k + 2 < cap; i++) {
		if (i && (n - i) % 3 == 0)
			buf[k++] = ',';
		buf[k++] = tmp[i];
	}
	buf[k] = 0;
	return buf;
}

struct totals {
	uint64_t params, footprint, resident;
	size_t count[LQ_QTYPE_COUNT];
};

static void totals(const struct input *in, struct totals *s)
{
	memset(s, 0, sizeof *s);
	struct lq_footprint fp;
	struct lq_error e;
	int have_fp = in->model && lq_model_footprint(in->model, &fp, &e) == 0;
	for (size_t i = 0; i < in->n; i++) {
		const struct tview *v = &in->t[i];
		s->params += v->nelem;
		s->footprint += v->fp_bytes;
		/* resident: every part, plus the fp32 double-quant offset */
		s->resident += v->bytes + (v->double_quant ? 4 : 0);
		s->count[v->qtype]++;
	}
	if (have_fp) { /* buffers included, tied weights once: as transformers counts */
		s->params = fp.n_params;
		s->footprint = fp.hf_bytes;
		s->resident = fp.resident_bytes;
	}
}

static const char *jstr(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : NULL;
}

static const char *arch_of(const struct input *in)
{
	const char *a = in->meta ? jstr(in->meta, "architecture") : NULL;
	if (!a && in->config)
		a = json_string_value(json_array_get(json_object_get(in->config, "architectures"), 0));
	return a;
}

static void print_summary(const struct input *in)
{
	struct totals s;
	totals(in, &s);
	char b1[64], b2[64];
	const char *arch = arch_of(in);
	printf("file:          %s (%s, %s)\n", in->path, in->lq ? "LQ 1.0" : "safetensors", human(in->disk, b1, sizeof b1));
	printf("architecture:  %s\n", arch ? arch : "unknown (no config.json)");
	json_t *src = in->meta ? json_object_get(in->meta, "source") : NULL;
	if (src && jstr(src, "repo"))
		printf("source:        %s @ %s\n", jstr(src, "repo"), jstr(src, "revision") ? jstr(src, "revision") : "?");
	printf("parameters:    %s\n", commas(s.params, b1, sizeof b1));
	json_t *q = in->meta ? json_object_get(in->meta, "quantization") : NULL;
	if (q) {
		const char *ty = jstr(q, "type");
		if (ty && strcmp(ty, "none"))
			printf("quantization:  %s, block %lld, %s, compute %s\n", ty,
			       (long long)json_integer_value(json_object_get(q, "block_size")),
			       json_is_true(json_object_get(q, "double_quant")) ? "double quant" : "fp32 scales",
			       jstr(q, "compute_dtype") ? jstr(q, "compute_dtype") : "?");
		else
			printf("quantization:  none, compute %s\n", jstr(q, "compute_dtype") ? jstr(q, "compute_dtype") : "?");
	} else {
		printf("quantization:  none (source checkpoint)\n");
	}
	printf("tensors:       %zu", in->n);
	const char *sep = " (";
	for (int k = 1; k < LQ_QTYPE_COUNT; k++)
		if (s.count[k]) {
			printf("%s%zu %s", sep, s.count[k], lq_qtype_name(k));
			sep = ", ";
		}
	if (s.count[0])
		printf("%s%zu unquantized", sep, s.count[0]);
	printf("%s\n", strcmp(sep, " (") ? ")" : "");
	printf("footprint:     %s bytes (%s), parameters as get_memory_footprint() counts them\n",
	       commas(s.footprint, b1, sizeof b1), human(s.footprint, b2, sizeof b2));
	printf("resident:      %s bytes (%s), weights incl. quantization statistics\n",
	       commas(s.resident, b1, sizeof b1), human(s.resident, b2, sizeof b2));
	printf("size on disk:  %s bytes (%s)\n", commas(in->disk, b1, sizeof b1), human(in->disk, b2, sizeof b2));
	if (in->lq && lq_file_nblobs(in->lq)) {
		printf("stored files: ");
		for (size_t i = 0; i < lq_file_nblobs(in->lq); i++)
			printf("%s%s", i ? ", " : " ", lq_file_blob(in->lq, i)->name);
		printf("\n");
	}
}

static void print_tensors(const struct input *in)
{
	char sh[128], st[64];
	for (size_t i = 0; i < in->n; i++) {
		const struct tview *v = &in->t[i];
		printf("%-56s %-14s %-12s %-5s %12llu", v->name, shape_str(v, sh, sizeof sh),
		       storage_str(v, st, sizeof st), v->dtype_name, (unsigned long long)v->bytes);
		if (v->has_xxh3)
			printf(" %016llx\n", (unsigned long long)v->xxh3);
		else
			printf(" -\n");
	}
}

static json_t *tensor_json(const struct tview *v)
{
	json_t *t = json_object(), *sh = json_array();
	json_object_set_new(t, "name", json_string(v->name));
	for (int d = 0; d < v->ndim; d++)
		json_array_append_new(sh, json_integer((json_int_t)v->shape[d]));
	json_object_set_new(t, "shape", sh);
	json_object_set_new(t, "storage", json_string(lq_qtype_name(v->qtype)));
	json_object_set_new(t, "dtype", json_string(v->dtype_name));
	json_object_set_new(t, "block_size", json_integer(v->block_size));
	json_object_set_new(t, "double_quant", json_boolean(v->double_quant));
	json_object_set_new(t, "bytes", json_integer((json_int_t)v->bytes));
	if (v->has_xxh3) {
		char h[20];
		snprintf(h, sizeof h, "%016llx", (unsigned long long)v->xxh3);
		json_object_set_new(t, "xxh3", json_string(h));
	} else {
		json_object_set_new(t, "xxh3", json_null());
	}
	if (v->lq) { /* where the parts lie in the file: [offset, size] */
		json_t *parts = json_object();
		const struct lq_tensor *q = v->lq;
		uint64_t po[3][2] = {{q->data_off, q->data_size}, {q->scale_off, q->scale_size}, {q->nested_off, q->nested_size}};
		static const char *const pn[3] = {"data", "scales", "nested"};
		for (int k = 0; k < 3; k++)
			if (po[k][1])
				json_object_set_new(parts, pn[k], json_pack("[II]", (json_int_t)po[k][0], (json_int_t)po[k][1]));
		json_object_set_new(t, "parts", parts);
	}
	return t;
}

static json_t *summary_json(const struct input *in, int with_tensors)
{
	struct totals s;
	totals(in, &s);
	json_t *j = json_object();
	json_object_set_new(j, "file", json_string(in->path));
	json_object_set_new(j, "kind", json_string(in->lq ? "lq" : "safetensors"));
	json_object_set_new(j, "size", json_integer((json_int_t)in->disk));
	const char *arch = arch_of(in);
	json_object_set_new(j, "architecture", arch ? json_string(arch) : json_null());
	json_object_set_new(j, "parameters", json_integer((json_int_t)s.params));
	json_t *q = in->meta ? json_object_get(in->meta, "quantization") : NULL;
	json_object_set(j, "quantization", q ? q : json_null());
	json_t *src = in->meta ? json_object_get(in->meta, "source") : NULL;
	json_object_set(j, "source", src ? src : json_null());
	json_t *fp = json_object();
	json_object_set_new(fp, "transformers", json_integer((json_int_t)s.footprint));
	json_object_set_new(fp, "resident", json_integer((json_int_t)s.resident));
	json_object_set_new(j, "footprint", fp);
	json_object_set_new(j, "tensor_count", json_integer((json_int_t)in->n));
	json_t *files = json_array();
	if (in->lq)
		for (size_t i = 0; i < lq_file_nblobs(in->lq); i++) {
			const struct lq_blob *b = lq_file_blob(in->lq, i);
			json_t *f = json_object();
			char h[20];
			snprintf(h, sizeof h, "%016llx", (unsigned long long)b->xxh3);
			json_object_set_new(f, "name", json_string(b->name));
			json_object_set_new(f, "size", json_integer((json_int_t)b->size));
			json_object_set_new(f, "xxh3", json_string(h));
			json_array_append_new(files, f);
		}
	json_object_set_new(j, "files", files);
	if (with_tensors) {
		json_t *ts = json_array();
		for (size_t i = 0; i < in->n; i++)
			json_array_append_new(ts, tensor_json(&in->t[i]));
		json_object_set_new(j, "tensors", ts);
	}
	return j;
}

static int verify(const struct input *in, int quiet, json_t *jout)
{
	if (!in->lq) {
		warnx_("%s: not an LQ file; safetensors files carry no checksums (their headers were validated)", in->path);
		return 1;
	}
	struct progress bar;
	progress_init(&bar, quiet || jout);
	uint64_t total = 0, done = 0;
	for (size_t i = 0; i < in->n; i++)
		total += in->t[i].bytes;
	int bad = 0;
	json_t *badl = json_array();
	struct lq_error e;
	for (size_t i = 0; i < lq_file_nblobs(in->lq); i++)
		if (lq_blob_verify(lq_file_blob(in->lq, i), &e)) {
			progress_end(&bar);
			if (!jout)
				printf("%s: FAILED (%s)\n", lq_file_blob(in->lq, i)->name, e.msg);
			json_array_append_new(badl, json_string(lq_file_blob(in->lq, i)->name));
			bad++;
		}
	for (size_t i = 0; i < in->n; i++) {
		progress_draw(&bar, done, total, in->t[i].name, 0);
		if (lq_tensor_verify(in->t[i].lq, &e)) {
			progress_end(&bar);
			if (!jout)
				printf("%s: FAILED (%s)\n", in->t[i].name, e.msg);
			json_array_append_new(badl, json_string(in->t[i].name));
			bad++;
		}
		done += in->t[i].bytes;
	}
	progress_end(&bar);
	if (jout) {
		json_t *v = json_object();
		json_object_set_new(v, "ok", json_boolean(!bad));
		json_object_set_new(v, "checked", json_integer((json_int_t)(in->n + lq_file_nblobs(in->lq))));
		json_object_set_new(v, "failed", badl);
		json_object_set_new(jout, "verify", v);
	} else {
		json_decref(badl);
		printf("%s: %zu tensors and %zu files checked, %d failed\n", in->path, in->n,
		       lq_file_nblobs(in->lq), bad);
	}
	return bad ? 1 : 0;
}

static const struct tview *find(const struct input *in, const char *name)
{
	for (size_t i = 0; i < in->n; i++)
		if (strcmp(in->t[i].name, name) == 0)
			return &in->t[i];
	die("%s: no tensor '%s'", in->path, name);
}

static float *to_f32(const struct input *in, const struct tview *v, int nthreads)
{
	if (v->dtype < 0)
		die("%s: tensor '%s' has dtype %s, which cannot be converted", in->path, v->name, v->dtype_name);
	if (v->nelem > (uint64_t)SIZE_MAX / 4)
		die("%s: tensor '%s' is too large", in->path, v->name);
	float *y = malloc((size_t)(v->nelem ? v->nelem : 1) * 4);
	if (!y)
		die("%s: tensor '%s': out of memory (%llu elements)", in->path, v->name, (unsigned long long)v->nelem);
	struct lq_error e = {0};
	if (v->lq) {
		int rc = lq_tensor_to_f32(v->lq, y, nthreads, &e);
		if (rc)
			die_lq(rc, &e);
	} else {
		lq_to_f32(y, v->st->data, v->dtype, (size_t)v->nelem);
	}
	return y;
}

static int stats(const struct input *in, const char *name, const char *source, int nthreads)
{
	const struct tview *v = find(in, name);
	float *y = to_f32(in, v, nthreads);
	double mn = INFINITY, mx = -INFINITY, sum = 0, sq = 0;
	for (uint64_t i = 0; i < v->nelem; i++) {
		double x = y[i];
		mn = x < mn ? x : mn;
		mx = x > mx ? x : mx;
		sum += x;
		sq += x * x;
	}
	double n = v->nelem ? (double)v->nelem : 1, mean = sum / n, var = sq / n - mean * mean;
	char sh[128], st[64];
	printf("tensor:  %s %s %s\n", v->name, shape_str(v, sh, sizeof sh), storage_str(v, st, sizeof st));
	printf("min:     %.9g\nmax:     %.9g\nmean:    %.9g\nstd:     %.9g\n", mn, mx, mean, sqrt(var > 0 ? var : 0));
	if (source) {
		struct input src = {0};
		open_input(&src, source);
		const struct tview *w = find(&src, name);
		if (w->nelem != v->nelem)
			die("%s: tensor '%s' has %llu elements, the LQ file %llu", source, name,
			    (unsigned long long)w->nelem, (unsigned long long)v->nelem);
		float *x = to_f32(&src, w, nthreads);
		double maxe = 0, se = 0, sx = 0;
		for (uint64_t i = 0; i < v->nelem; i++) {
			double d = (double)y[i] - (double)x[i];
			maxe = fabs(d) > maxe ? fabs(d) : maxe;
			se += d * d;
			sx += (double)x[i] * x[i];
		}
		double rmse = sqrt(se / n), rms = sqrt(sx / n);
		printf("max abs error:  %.9g\nrmse:           %.9g\nrelative rmse:  %.6g\nsnr:            %.2f dB\n",
		       maxe, rmse, rms > 0 ? rmse / rms : 0, se > 0 ? 10 * log10(sx / se) : INFINITY);
		free(x);
		close_input(&src);
	}
	free(y);
	return 0;
}

static int dequant(const struct input *in, const char *name, const char *out, int force, int nthreads)
{
	const struct tview *v = find(in, name);
	float *y = to_f32(in, v, nthreads);
	int fd = out_open(out, force);
	struct lq_error e = {0};
	int rc = lq_npy_write_f32(fd, y, v->ndim, v->shape, strcmp(out, "-") ? out : "stdout", &e);
	free(y);
	if (rc)
		die_lq(rc, &e);
	out_commit(fd, out, force, 0);
	return 0;
}

static struct lq_model *need_model(const struct input *in)
{
	if (!in->model)
		die("%s", in->model_err.msg[0] ? in->model_err.msg : "no model description");
	return in->model;
}

static int print_tree(const struct input *in, int json)
{
	struct lq_model *m = need_model(in);
	struct lq_error e = {0};
	char *s = NULL;
	int rc = json ? lq_model_tree_json(m, 2, &s, &e) : lq_model_tree_text(m, &s, NULL, &e);
	if (rc)
		die_lq(rc, &e);
	fputs(s, stdout);
	if (json)
		fputc('\n', stdout);
	free(s);
	return 0;
}

static int print_estimate(const struct input *in, const struct lq_pack_opts *po, int json)
{
	struct lq_model *m = need_model(in);
	if (!in->st)
		die("%s: --estimate reads a checkpoint, not an LQ file", in->path);
	struct lq_error e = {0};
	int rc = lq_pack_plan(po, m, &e);
	struct lq_footprint fp;
	if (!rc)
		rc = lq_model_footprint(m, &fp, &e);
	/* the files and metadata quantize would store beside the tensors */
	struct lq_estimate_blob blobs[16];
	size_t nb = 0;
	uint64_t meta_bytes = 0;
	if (!rc)
		rc = lq_pack_stored(in->path, po, in->st, blobs, 16, &nb, &meta_bytes, &e);
	uint64_t size = 0;
	if (!rc)
		rc = lq_model_estimate_lq(m, blobs, nb, meta_bytes, &size, &e);
	if (rc)
		die_lq(rc, &e);
	char b1[64], b2[64];
	if (json) {
		json_t *j = json_object(), *q = json_object(), *f = json_object();
		json_object_set_new(q, "type", json_string(lq_qtype_name(po->qtype)));
		json_object_set_new(q, "block_size", json_integer(po->qtype ? po->block_size : 0));
		json_object_set_new(q, "double_quant", json_boolean(po->qtype && po->double_quant));
		json_object_set_new(q, "quantize_head", json_boolean(po->quantize_head));
		json_object_set_new(j, "file", json_string(in->path));
		json_object_set_new(j, "quantization", q);
		json_object_set_new(j, "parameters", json_integer((json_int_t)fp.n_params));
		json_object_set_new(f, "transformers", json_integer((json_int_t)fp.hf_bytes));
		json_object_set_new(f, "resident", json_integer((json_int_t)fp.resident_bytes));
		json_object_set_new(j, "footprint", f);
		json_object_set_new(j, "lq_size", json_integer((json_int_t)size));
		char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		if (!s)
			die("out of memory");
		puts(s);
		free(s);
		json_decref(j);
		return 0;
	}
	printf("checkpoint:    %s (%s on disk)\n", in->path, human(in->disk, b1, sizeof b1));
	if (po->qtype)
		printf("if quantized:  %s, block %d, %s%s\n", lq_qtype_name(po->qtype), po->block_size,
		       po->double_quant ? "double quant" : "fp32 scales", po->quantize_head ? ", lm_head too" : "");
	else
		printf("if quantized:  none (stored as is)\n");
	printf("parameters:    %s\n", commas(fp.n_params, b1, sizeof b1));
	printf("footprint:     %s bytes (%s), as get_memory_footprint() would report\n",
	       commas(fp.hf_bytes, b1, sizeof b1), human(fp.hf_bytes, b2, sizeof b2));
	printf("resident:      %s bytes (%s), weights incl. quantization statistics\n",
	       commas(fp.resident_bytes, b1, sizeof b1), human(fp.resident_bytes, b2, sizeof b2));
	printf("lq file:       %s bytes (%s)\n", commas(size, b1, sizeof b1), human(size, b2, sizeof b2));
	return 0;
}

int main(int argc, char **argv)
{
	argv0 = "inspect";
	enum { O_TENSORS = 255, O_VERIFY = 256, O_JSON, O_DEQUANT, O_STATS, O_SOURCE, O_TREE, O_ESTIMATE, O_NODQ, O_KEEP,
	       O_QUANT, O_HEAD };
	static const struct option lopts[] = {
		{"tensors", no_argument, 0, O_TENSORS},      {"verify", no_argument, 0, O_VERIFY},
		{"json", no_argument, 0, O_JSON},      {"dequant", required_argument, 0, O_DEQUANT},
		{"output", required_argument, 0, 'o'}, {"stats", required_argument, 0, O_STATS},
		{"source", required_argument, 0, O_SOURCE}, {"force", no_argument, 0, 'f'},
		{"threads", required_argument, 0, 'j'}, {"quiet", no_argument, 0, 'q'},
		{"help", no_argument, 0, 'h'},          {"version", no_argument, 0, 'V'},
		{"tree", no_argument, 0, O_TREE},       {"estimate", no_argument, 0, O_ESTIMATE},
		{"type", required_argument, 0, 't'},    {"block-size", required_argument, 0, 'b'},
		{"no-double-quant", no_argument, 0, O_NODQ}, {"keep", required_argument, 0, O_KEEP},
		{"quantize", required_argument, 0, O_QUANT}, {"quantize-head", no_argument, 0, O_HEAD},
		{0, 0, 0, 0},
	};
	struct lq_pack_opts po;
	lq_pack_opts_init(&po);
	const char **keep = calloc((size_t)argc, sizeof *keep), **quant = calloc((size_t)argc, sizeof *quant);
	if (!keep || !quant)
		die("out of memory");
	po.keep = keep;
	po.quantize = quant;
	int tree = 0, estimate = 0, qopts = 0;
	int tensors = 0, do_verify = 0, json = 0, force = 0, quiet = 0, nthreads = ncpus();
	const char *dq = NULL, *out = NULL, *st = NULL, *source = NULL;
	int c;
	long v;
	while ((c = getopt_long(argc, argv, "o:fj:qhVt:b:", lopts, NULL)) != -1) {
		switch (c) {
		case O_TREE: tree = 1; break;
		case O_ESTIMATE: estimate = 1; break;
		case 't':
			qopts = 1;
			if ((po.qtype = lq_qtype_parse(optarg)) < 0) {
				warnx_("unknown type '%s' (nf4, fp4, int8, none)", optarg);
				usage(2);
			}
			break;
		case 'b':
			qopts = 1;
			if (parse_int(optarg, 32, 4096, &v) || (v & (v - 1))) {
				warnx_("block size must be a power of two from 32 to 4096, not '%s'", optarg);
				usage(2);
			}
			po.block_size = (int)v;
			break;
		case O_NODQ: qopts = 1; po.double_quant = 0; break;
		case O_KEEP: qopts = 1; keep[po.nkeep++] = optarg; break;
		case O_QUANT: qopts = 1; quant[po.nquantize++] = optarg; break;
		case O_HEAD: qopts = 1; po.quantize_head = 1; break;
		case O_TENSORS: tensors = 1; break;
		case O_VERIFY: do_verify = 1; break;
		case O_JSON: json = 1; break;
		case O_DEQUANT: dq = optarg; break;
		case 'o': out = optarg; break;
		case O_STATS: st = optarg; break;
		case O_SOURCE: source = optarg; break;
		case 'f': force = 1; break;
		case 'j':
			if (parse_int(optarg, 1, 256, &v)) {
				warnx_("threads must be 1..256, not '%s'", optarg);
				usage(2);
			}
			nthreads = (int)v;
			break;
		case 'q': quiet = 1; break;
		case 'h': usage(0); break;
		case 'V': printf("inspect (libquant) %s\n", lq_version()); return finish_stdout();
		default: usage(2);
		}
	}
	if (optind + 1 != argc) {
		warnx_(optind == argc ? "no file given" : "more than one file given");
		usage(2);
	}
	if (dq && !out) {
		warnx_("--dequant needs -o FILE.npy (or -o - for stdout)");
		usage(2);
	}
	if ((dq != NULL) + (st != NULL) + (tensors || do_verify || json) > 1) {
		warnx_("--dequant, --stats and the listing options cannot be combined");
		usage(2);
	}
	if (qopts && !estimate) {
		warnx_("-t, -b, --no-double-quant, --keep, --quantize and --quantize-head go with --estimate");
		usage(2);
	}
	if ((tree || estimate) && (dq || st || tensors || do_verify || (tree && estimate))) {
		warnx_("--tree and --estimate combine only with --json");
		usage(2);
	}
	if (source && !st) {
		warnx_("--source goes with --stats");
		usage(2);
	}
	struct input in = {0};
	open_input(&in, argv[optind]);
	int rc = 0;
	if (tree)
		rc = print_tree(&in, json);
	else if (estimate)
		rc = print_estimate(&in, &po, json);
	else if (dq)
		rc = dequant(&in, dq, out, force, nthreads);
	else if (st)
		rc = stats(&in, st, source, nthreads);
	else if (json) {
		json_t *j = summary_json(&in, tensors);
		if (do_verify)
			rc = verify(&in, quiet, j);
		char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		if (!s)
			die("out of memory");
		puts(s);
		free(s);
		json_decref(j);
	} else if (do_verify) {
		if (tensors)
			print_tensors(&in);
		rc = verify(&in, quiet, NULL);
	} else if (tensors) {
		print_tensors(&in);
	} else {
		print_summary(&in);
	}
	close_input(&in);
	free(keep);
	free(quant);
	int so = finish_stdout();
	return rc ? rc : so;
}
