/*
 * safetensors.c - reader for safetensors checkpoints (single file or sharded
 * with model.safetensors.index.json).  Files are mmap'ed; everything parsed
 * lives in the handle's arena.
 *
 * The file is hostile: the header length is bounded, the JSON must be an
 * object of well-formed entries, offsets must lie inside the data section and
 * must not overlap, and shape x dtype size must equal the byte length, all
 * with overflow-checked arithmetic.
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u << 20) /* the reference implementation's bound */
#define ST_MAX_FILES 4096

struct st_file {
	const char *path;
	const void *map;
	uint64_t size;
	int owned; /* map came from lq_map_file */
};

struct lq_st {
	struct lq_arena arena;
	struct st_file *files;
	size_t nfiles, cap_files;
	struct lq_st_tensor *tensors;
	size_t ntensors, cap_tensors;
	struct lq_st_tensor **sorted; /* by name, for lq_st_find */
};

static const struct {
	const char *name;
	int size;
	int dtype;
} st_dtypes[] = {
	{"F32", 4, LQ_DTYPE_F32},  {"F16", 2, LQ_DTYPE_F16},   {"BF16", 2, LQ_DTYPE_BF16},
	{"U8", 1, LQ_DTYPE_U8},    {"I8", 1, LQ_DTYPE_I8},     {"F64", 8, -1},
	{"I64", 8, -1},            {"U64", 8, -1},             {"I32", 4, -1},
	{"U32", 4, -1},            {"I16", 2, -1},             {"U16", 2, -1},
	{"BOOL", 1, -1},           {"F8_E4M3", 1, -1},         {"F8_E5M2", 1, -1},
	{"F8_E8M0", 1, -1},        {"C64", 8, -1},
};

static int cmp_offset(const void *a, const void *b)
{
	const struct lq_st_tensor *x = *(struct lq_st_tensor *const *)a;
	const struct lq_st_tensor *y = *(struct lq_st_tensor *const *)b;
	uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
	if (px != py)
		return px < py ? -1 : 1;
	return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t n = *cap ? *cap * 2 : 16;
	while (n < need)
		n *= 2;
	void *q = realloc(*p, n * elem);
	if (!q)
		return -1;
	*p = q;
	*cap = n;
	return 0;
}

/* Parse one file image and append its tensors. */
static int st_parse_file(struct lq_st *st, int fi, const uint8_t *buf, uint64_t size,
			 const char *label, struct lq_error *err)
{
	if (size < 8)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: file too short for a safetensors header (%llu bytes)",
			       label, (unsigned long long)size);
	uint64_t hlen = lq_rd64(buf);
	if (hlen > ST_MAX_HEADER)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: header length %llu exceeds the 100 MiB limit",
			       label, (unsigned long long)hlen);
	if (hlen > size - 8)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%llu bytes); truncated?",
			       label, (unsigned long long)hlen, (unsigned long long)size);
	if (hlen < 2 || buf[8] != '{')
		return lq_fail(err, LQ_ERR_FORMAT, "%s: header is not a JSON object (not a safetensors file?)", label);
	json_error_t je;
	json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: header JSON invalid at byte %d: %s", label, je.position, je.text);
	if (!json_is_object(root)) {
		json_decref(root);
		return lq_fail(err, LQ_ERR_FORMAT, "%s: header is not a JSON object", label);
	}
	const uint8_t *data = buf + 8 + hlen;
	uint64_t dsize = size - 8 - hlen;
	size_t first = st->ntensors;
	int rc = LQ_OK;
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v) {
		if (strcmp(key, "__metadata__") == 0) {
			if (!json_is_object(v)) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: __metadata__ is not an object", label);
				break;
			}
			continue;
		}
		if (!json_is_object(v)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': entry is not an object", label, key);
			break;
		}
		json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
		       *jo = json_object_get(v, "data_offsets");
		if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': needs dtype, shape and data_offsets[2]", label, key);
			break;
		}
		const char *dn = json_string_value(jd);
		int esize = 0, dtype = -1;
		for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
			if (strcmp(dn, st_dtypes[i].name) == 0) {
				esize = st_dtypes[i].size;
				dtype = st_dtypes[i].dtype;
			}
		if (!esize) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%.32s'", label, key, dn);
			break;
		}
		size_t nd = json_array_size(js);
		if (nd > LQ_MAX_DIMS) {
			rc = lq_fail(err, LQ_ERR_UNSUPPORTED, "%s: tensor '%s': %zu dimensions (at most %d)", label, key, nd, LQ_MAX_DIMS);
			break;
		}
		if (grow((void **)&st->tensors, &st->cap_tensors, st->ntensors + 1, sizeof *st->tensors)) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
			break;
		}
		struct lq_st_tensor *t = &st->tensors[st->ntensors];
		memset(t, 0, sizeof *t);
		uint64_t n = 1;
		for (size_t i = 0; i < nd && rc == LQ_OK; i++) {
			json_t *d = json_array_get(js, i);
			if (!json_is_integer(d) || json_integer_value(d) < 0)
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", label, key, i);
			else if (!lq_mul_u64(n, (uint64_t)json_integer_value(d), &n))
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': shape overflows", label, key);
			else
				t->shape[i] = (uint64_t)json_integer_value(d);
		}
		if (rc)
			break;
		json_t *b0 = json_array_get(jo, 0), *b1 = json_array_get(jo, 1);
		if (!json_is_integer(b0) || !json_is_integer(b1) || json_integer_value(b0) < 0 ||
		    json_integer_value(b1) < json_integer_value(b0)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end", label, key);
			break;
		}
		uint64_t beg = (uint64_t)json_integer_value(b0), end = (uint64_t)json_integer_value(b1);
		if (end > dsize) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': data [%llu, %llu) runs past the end of the data (%llu bytes); truncated?",
				     label, key, (unsigned long long)beg, (unsigned long long)end, (unsigned long long)dsize);
			break;
		}
		uint64_t nbytes;
		if (!lq_mul_u64(n, (uint64_t)esize, &nbytes) || nbytes != end - beg) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': %llu bytes of data for %llu elements of %s",
				     label, key, (unsigned long long)(end - beg), (unsigned long long)n, dn);
			break;
		}
		t->name = lq_arena_strdup(&st->arena, key);
		t->dtype_name = lq_arena_strdup(&st->arena, dn);
		if (!t->name || !t->dtype_name) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
			break;
		}
		t->dtype = dtype;
		t->ndim = (int)nd;
		t->nelem = n;
		t->nbytes = nbytes;
		t->data = data + beg;
		t->file = fi;
		st->ntensors++;
	}
	json_decref(root);
	if (rc)
		return rc;
	/* no two tensors of this file may overlap */
	size_t cnt = st->ntensors - first;
	struct lq_st_tensor **v2 = malloc((cnt ? cnt : 1) * sizeof *v2);
	if (!v2)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	for (size_t i = 0; i < cnt; i++)
		v2[i] = &st->tensors[first + i];
	qsort(v2, cnt, sizeof *v2, cmp_offset);
	for (size_t i = 1; i < cnt && rc == LQ_OK; i++) {
		const uint8_t *pe = (const uint8_t *)v2[i - 1]->data + v2[i - 1]->nbytes;
		if (v2[i]->nbytes && (const uint8_t *)v2[i]->data < pe)
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", label, v2[i - 1]->name, v2[i]->name);
	}
	free(v2);
	return rc;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp((*(struct lq_st_tensor *const *)a)->name, (*(struct lq_st_tensor *const *)b)->name);
}

static int cmp_file_offset(const void *a, const void *b)
{
	const struct lq_st_tensor *x = a, *y = b;
	if (x->file != y->file)
		return x->file < y->file ? -1 : 1;
	if (x->data != y->data)
		return (uintptr_t)x->data < (uintptr_t)y->data ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* Sort tensors by (file, offset) and build the name index; reject duplicates. */
static int st_finish(struct lq_st *st, struct lq_error *err)
{
	if (st->ntensors)
		qsort(st->tensors, st->ntensors, sizeof *st->tensors, cmp_file_offset);
	st->sorted = lq_arena_alloc(&st->arena, (st->ntensors + 1) * sizeof *st->sorted);
	if (!st->sorted)
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < st->ntensors; i++)
		st->sorted[i] = &st->tensors[i];
	qsort(st->sorted, st->ntensors, sizeof *st->sorted, cmp_name);
	for (size_t i = 1; i < st->ntensors; i++)
		if (strcmp(st->sorted[i - 1]->name, st->sorted[i]->name) == 0)
			return lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s' appears in more than one shard",
				       st->files[st->sorted[i]->file].path, st->sorted[i]->name);
	return LQ_OK;
}

static struct lq_st *st_new(void)
{
	return calloc(1, sizeof(struct lq_st));
}

static int st_add_file(struct lq_st *st, const char *path, const void *map, uint64_t size, int owned,
		       struct lq_error *err)
{
	if (grow((void **)&st->files, &st->cap_files, st->nfiles + 1, sizeof *st->files)) {
		if (owned)
			lq_unmap_file(map, size);
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", path);
	}
	struct st_file *f = &st->files[st->nfiles++];
	f->path = lq_arena_strdup(&st->arena, path);
	f->map = map;
	f->size = size;
	f->owned = owned;
	if (!f->path)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", path);
	return st_parse_file(st, (int)st->nfiles - 1, map, size, path, err);
}

int lq_st_parse(struct lq_st **out, const void *buf, size_t size, const char *label, struct lq_error *err)
{
	*out = NULL;
	struct lq_st *st = st_new();
	if (!st)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	int rc = st_add_file(st, label, buf, size, 0, err);
	if (!rc)
		rc = st_finish(st, err);
	if (rc) {
		lq_st_close(st);
		return rc;
	}
	*out = st;
	return LQ_OK;
}

static int open_one(struct lq_st *st, const char *path, struct lq_error *err)
{
	const void *map;
	uint64_t size;
	int rc = lq_map_file(path, &map, &size, err);
	if (rc)
		return rc;
	return st_add_file(st, path, map, size, 1, err);
}

static char *path_join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);
	if (p) {
		memcpy(p, dir, a);
		p[a] = '/';
		memcpy(p + a + 1, name, b + 1);
	}
	return p;
}

static int open_index(struct lq_st *st, const char *dir, const char *index_path, struct lq_error *err)
{
	json_error_t je;
	json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: invalid JSON at line %d: %s", index_path, je.line, je.text);
	json_t *wm = json_object_get(root, "weight_map");
	int rc = LQ_OK;
	if (!json_is_object(wm)) {
		json_decref(root);
		return lq_fail(err, LQ_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
	}
	/* open every shard once, in sorted order (deterministic) */
	size_t n = json_object_size(wm), nshard = 0;
	const char **shards = calloc(n + 1, sizeof *shards);
	if (!shards) {
		json_decref(root);
		return lq_fail(err, LQ_ERR_NOMEM, "out of memory");
	}
	const char *key;
	json_t *v;
	json_object_foreach(wm, key, v) {
		if (!json_is_string(v)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: weight_map['%s'] is not a string", index_path, key);
			break;
		}
		const char *f = json_string_value(v);
		if (!*f || strchr(f, '/') || strcmp(f, "..") == 0 || strcmp(f, ".") == 0) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: shard name '%.64s' is not a plain file name", index_path, f);
			break;
		}
		size_t i;
		for (i = 0; i < nshard && strcmp(shards[i], f); i++)
			;
		if (i == nshard)
			shards[nshard++] = f;
	}
	if (!rc && nshard > ST_MAX_FILES)
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: %zu shards (at most %d)", index_path, nshard, ST_MAX_FILES);
	for (size_t i = 1; i < nshard; i++) /* insertion sort by name */
		for (size_t j = i; j > 0 && strcmp(shards[j - 1], shards[j]) > 0; j--) {
			const char *t = shards[j];
			shards[j] = shards[j - 1];
			shards[j - 1] = t;
		}
	for (size_t i = 0; i < nshard && !rc; i++) {
		char *p = path_join(dir, shards[i]);
		if (!p) {
			rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
			break;
		}
		rc = open_one(st, p, err);
		free(p);
	}
	free(shards);
	if (!rc)
		rc = st_finish(st, err);
	/* every tensor the index names must be in the shard it names */
	json_object_foreach(wm, key, v) {
		if (rc)
			break;
		const struct lq_st_tensor *t = lq_st_find(st, key);
		const char *fn = json_string_value(v);
		if (!t) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s' is listed but not in shard %s", index_path, key, fn);
			break;
		}
		const char *p = st->files[t->file].path;
		size_t lp = strlen(p), lf = strlen(fn);
		if (lp < lf + 1 || strcmp(p + lp - lf, fn) || p[lp - lf - 1] != '/')
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s' is listed in %s but found in %s", index_path, key, fn, p);
	}
	if (!rc && json_object_size(wm) != st->ntensors)
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: shards hold %zu tensors but the index lists %zu", index_path,
			     st->ntensors, json_object_size(wm));
	json_decref(root);
	return rc;
}

int lq_st_open(struct lq_st **out, const char *path, struct lq_error *err)
{
	*out = NULL;
	struct stat sb;
	if (stat(path, &sb) < 0)
		return lq_fail_errno(err, errno, "%s", path);
	struct lq_st *st = st_new();
	if (!st)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", path);
	int rc;
	if (S_ISDIR(sb.st_mode)) {
		char *idx = path_join(path, "model.safetensors.index.json");
		char *one = path_join(path, "model.safetensors");
		if (!idx || !one)
			rc = lq_fail(err, LQ_ERR_NOMEM, "out of memory");
		else if (access(idx, F_OK) == 0)
			rc = open_index(st, path, idx, err);
		else if (access(one, F_OK) == 0) {
			rc = open_one(st, one, err);
			if (!rc)
				rc = st_finish(st, err);
		} else
			rc = lq_fail(err, LQ_ERR_NOTFOUND, "%s: no model.safetensors or model.safetensors.index.json", path);
		free(idx);
		free(one);
	} else {
		rc = open_one(st, path, err);
		if (!rc)
			rc = st_finish(st, err);
	}
	if (rc) {
		lq_st_close(st);
		return rc;
	}
	*out = st;
	return LQ_OK;
}

void lq_st_close(struct lq_st *st)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->nfiles; i++)
		if (st->files[i].owned)
			lq_unmap_file(st->files[i].map, st->files[i].size);
	free(st->files);
	free(st->tensors);
	lq_arena_free(&st->arena);
	free(st);
}

size_t lq_st_count(const struct lq_st *st) { return st->ntensors; }

const struct lq_st_tensor *lq_st_get(const struct lq_st *st, size_t i)
{
	return i < st->ntensors ? &st->tensors[i] : NULL;
}

const struct lq_st_tensor *lq_st_find(const struct lq_st *st, const char *name)
{
	size_t lo = 0, hi = st->ntensors;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(st->sorted[mid]->name, name);
		if (c == 0)
			return st->sorted[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

size_t lq_st_nfiles(const struct lq_st *st) { return st->nfiles; }
const char *lq_st_file_path(const struct lq_st *st, size_t i) { return i < st->nfiles ? st->files[i].path : NULL; }
uint64_t lq_st_file_size(const struct lq_st *st, size_t i) { return i < st->nfiles ? st->files[i].size : 0; }

uint64_t lq_st_total_bytes(const struct lq_st *st)
{
	uint64_t s = 0;
	for (size_t i = 0; i < st->ntensors; i++)
		s += st->tensors[i].nbytes;
	return s;
}

void lq_st_prefetch(const struct lq_st *st, const struct lq_st_tensor *t)
{
	if (!st->files[t->file].owned || !t->nbytes)
		return;
	long pg = sysconf(_SC_PAGESIZE);
	uintptr_t b = (uintptr_t)t->data & ~((uintptr_t)pg - 1), e = (uintptr_t)t->data + t->nbytes;
	madvise((void *)b, e - b, MADV_SEQUENTIAL);
	madvise((void *)b, e - b, MADV_WILLNEED); /* asynchronous read-ahead */
}

void lq_st_release(const struct lq_st *st, const struct lq_st_tensor *t)
{
	if (!st->files[t->file].owned || !t->nbytes)
		return;
	long pg = sysconf(_SC_PAGESIZE);
	uintptr_t b = (uintptr_t)t->data, e = b + t->nbytes;
	b = (b + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1); /* only whole pages of this tensor */
	e &= ~((uintptr_t)pg - 1);
	if (e > b)
		madvise((void *)b, e - b, MADV_DONTNEED);
}
