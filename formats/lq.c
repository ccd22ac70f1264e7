/*
 * lq.c - reader and sequential writer of the LQ packed format
 * (formats/LQ-FORMAT.md is the specification; keep the two in step).
 */
#include "internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#define LQ_MAGIC "\x89LQF\r\n\x1a\n"
#define LQ_FMAGIC "\x89LQE\r\n\x1a\n"
#define LQ_HDR 64
#define LQ_FTR 64
#define LQ_ALIGN 256
#define LQ_MAX_TENSORS 1000000u
#define LQ_MAX_BLOBS 4096u
#define LQ_MAX_NAME 4096u

static uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

/* Expected sizes of the three parts for a tensor record (0 = invalid). */
static int expected_sizes(const struct lq_tensor *t, uint64_t *d, uint64_t *s, uint64_t *ns)
{
	if (t->qtype == LQ_QTYPE_NONE) {
		if (!lq_mul_u64(t->nelem, lq_dtype_size(t->src_dtype), d))
			return -1;
		*s = *ns = 0;
		return 0;
	}
	struct lq_qparams p;
	lq_tensor_qparams(t, &p);
	*d = lq_qdata_bytes(p.qtype, t->nelem);
	*s = lq_qscale_bytes(&p, t->nelem);
	*ns = lq_qnested_bytes(&p, t->nelem);
	return 0;
}

void lq_tensor_qparams(const struct lq_tensor *t, struct lq_qparams *p)
{
	p->qtype = t->qtype;
	p->block_size = t->block_size;
	p->double_quant = t->double_quant;
}

void lq_tensor_qbuf(const struct lq_tensor *t, struct lq_qbuf *b)
{
	b->data = (uint8_t *)t->data;
	b->scales = (void *)t->scales;
	b->nested = (float *)t->nested;
	b->offset = t->offset;
}

static uint64_t tensor_hash(const struct lq_tensor *t)
{
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, t->data, (size_t)t->data_size);
	XXH3_64bits_update(&st, t->scales, (size_t)t->scale_size);
	XXH3_64bits_update(&st, t->nested, (size_t)t->nested_size);
	return XXH3_64bits_digest(&st);
}

int lq_tensor_verify(const struct lq_tensor *t, struct lq_error *err)
{
	uint64_t h = tensor_hash(t);
	if (h != t->xxh3)
		return lq_fail(err, LQ_ERR_CHECKSUM, "tensor '%s': checksum %016llx, expected %016llx",
			       t->name, (unsigned long long)h, (unsigned long long)t->xxh3);
	return LQ_OK;
}

int lq_blob_verify(const struct lq_blob *b, struct lq_error *err)
{
	uint64_t h = XXH3_64bits(b->data, (size_t)b->size);
	if (h != b->xxh3)
		return lq_fail(err, LQ_ERR_CHECKSUM, "file '%s': checksum %016llx, expected %016llx",
			       b->name, (unsigned long long)h, (unsigned long long)b->xxh3);
	return LQ_OK;
}

int lq_tensor_to_f32(const struct lq_tensor *t, float *y, int nthreads, struct lq_error *err)
{
	if (t->qtype == LQ_QTYPE_NONE) {
		lq_to_f32(y, t->data, t->src_dtype, (size_t)t->nelem);
		return LQ_OK;
	}
	struct lq_qparams p;
	struct lq_qbuf b;
	lq_tensor_qparams(t, &p);
	lq_tensor_qbuf(t, &b);
	int rc = lq_dequantize(&p, &b, t->nelem, y, nthreads);
	if (rc)
		return lq_fail(err, rc, "tensor '%s': cannot dequantize", t->name);
	return LQ_OK;
}

/* ================================================================ reader */

struct lq_file {
	struct lq_arena arena;
	const uint8_t *map;
	uint64_t size;
	int owned;
	int version_minor;
	char *meta;
	size_t meta_len;
	struct lq_tensor *tensors;
	size_t ntensors;
	struct lq_tensor **sorted;
	struct lq_blob *blobs;
	size_t nblobs;
};

struct span {
	uint64_t off, size;
	const char *what;
};

static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

static int cmp_tname(const void *a, const void *b)
{
	return strcmp((*(struct lq_tensor *const *)a)->name, (*(struct lq_tensor *const *)b)->name);
}

/* Cursor over the index. */
struct cur {
	const uint8_t *p;
	uint64_t pos, end;
};

static int take(struct cur *c, uint64_t n, const uint8_t **out)
{
	if (n > c->end - c->pos)
		return -1;
	*out = c->p + c->pos;
	c->pos += n;
	return 0;
}

static int read_name(struct lq_file *f, struct cur *c, const char **name, const char *label,
		     const char *kind, size_t i, struct lq_error *err)
{
	const uint8_t *q;
	if (take(c, 8, &q))
		return lq_fail(err, LQ_ERR_FORMAT, "%s: index ends inside %s record %zu", label, kind, i);
	uint32_t len = lq_rd32(q);
	if (len == 0 || len > LQ_MAX_NAME)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: %s record %zu: bad name length %u", label, kind, i, len);
	if (take(c, pad8(len), &q))
		return lq_fail(err, LQ_ERR_FORMAT, "%s: index ends inside %s record %zu", label, kind, i);
	if (memchr(q, 0, len))
		return lq_fail(err, LQ_ERR_FORMAT, "%s: %s record %zu: NUL byte in name", label, kind, i);
	*name = lq_arena_strndup(&f->arena, (const char *)q, len);
	if (!*name)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	return 0;
}

static int parse_index(struct lq_file *f, uint64_t ioff, uint64_t isize, uint32_t nt, uint32_t nbl,
		       uint64_t data_end, uint32_t align, const char *label, struct lq_error *err)
{
	struct cur c = {f->map + ioff, 0, isize};
	const uint8_t *q;
	int rc;
	f->blobs = lq_arena_alloc(&f->arena, (nbl + 1) * sizeof *f->blobs);
	f->tensors = lq_arena_alloc(&f->arena, ((size_t)nt + 1) * sizeof *f->tensors);
	size_t nspan_max = (size_t)nbl + 3 * (size_t)nt;
	struct span *spans = malloc((nspan_max + 1) * sizeof *spans);
	if (!f->blobs || !f->tensors || !spans) {
		free(spans);
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	}
	size_t ns = 0;
	for (uint32_t i = 0; i < nbl; i++) {
		struct lq_blob *b = &f->blobs[i];
		if ((rc = read_name(f, &c, &b->name, label, "blob", i, err)))
			goto out;
		if (take(&c, 24, &q)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: index ends inside blob '%s'", label, b->name);
			goto out;
		}
		b->off = lq_rd64(q);
		b->size = lq_rd64(q + 8);
		b->xxh3 = lq_rd64(q + 16);
		spans[ns++] = (struct span){b->off, b->size, b->name};
		f->nblobs++;
	}
	for (uint32_t i = 0; i < nt; i++) {
		struct lq_tensor *t = &f->tensors[i];
		if ((rc = read_name(f, &c, &t->name, label, "tensor", i, err)))
			goto out;
		if (take(&c, 8, &q)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: index ends inside tensor '%s'", label, t->name);
			goto out;
		}
		t->qtype = q[0];
		t->src_dtype = q[1];
		t->ndim = q[2];
		uint8_t flags = q[3];
		t->block_size = (int)lq_rd32(q + 4);
		t->double_quant = flags & 1;
		if (t->qtype >= LQ_QTYPE_COUNT || t->src_dtype >= LQ_DTYPE_COUNT || t->ndim > LQ_MAX_DIMS || (flags & ~1u)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': unknown qtype %d, dtype %d, ndim %d or flags %#x",
				     label, t->name, t->qtype, t->src_dtype, t->ndim, flags);
			goto out;
		}
		if (take(&c, 8 * (uint64_t)t->ndim + 64, &q)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: index ends inside tensor '%s'", label, t->name);
			goto out;
		}
		uint64_t n = 1;
		for (int d = 0; d < t->ndim; d++) {
			t->shape[d] = lq_rd64(q + 8 * d);
			if (!lq_mul_u64(n, t->shape[d], &n)) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': shape overflows", label, t->name);
				goto out;
			}
		}
		t->nelem = n;
		q += 8 * t->ndim;
		uint32_t obits = lq_rd32(q);
		memcpy(&t->offset, &obits, 4);
		uint32_t nested_block = lq_rd32(q + 4);
		t->data_off = lq_rd64(q + 8);
		t->data_size = lq_rd64(q + 16);
		t->scale_off = lq_rd64(q + 24);
		t->scale_size = lq_rd64(q + 32);
		t->nested_off = lq_rd64(q + 40);
		t->nested_size = lq_rd64(q + 48);
		t->xxh3 = lq_rd64(q + 56);
		if (t->qtype == LQ_QTYPE_NONE) {
			if (t->block_size || t->double_quant || nested_block) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': unquantized tensor with quantization fields", label, t->name);
				goto out;
			}
		} else {
			struct lq_qparams p;
			lq_tensor_qparams(t, &p);
			struct lq_error e2;
			if (lq_qparams_check(&p, &e2)) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': %s", label, t->name, e2.msg);
				goto out;
			}
			if (nested_block != (t->double_quant ? LQ_NESTED_BLOCK : 0u)) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': nested block %u", label, t->name, nested_block);
				goto out;
			}
			if (n > ((uint64_t)1 << 56)) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': %llu elements is too many", label, t->name, (unsigned long long)n);
				goto out;
			}
		}
		uint64_t d, s, nsz;
		if (expected_sizes(t, &d, &s, &nsz) || d != t->data_size || s != t->scale_size || nsz != t->nested_size) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': part sizes %llu/%llu/%llu do not fit %s of %llu elements",
				     label, t->name, (unsigned long long)t->data_size, (unsigned long long)t->scale_size,
				     (unsigned long long)t->nested_size, lq_qtype_name(t->qtype), (unsigned long long)n);
			goto out;
		}
		if ((t->scale_size == 0 && t->scale_off) || (t->nested_size == 0 && t->nested_off) ||
		    (t->data_size == 0 && t->data_off)) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s': absent part with an offset", label, t->name);
			goto out;
		}
		spans[ns++] = (struct span){t->data_off, t->data_size, t->name};
		if (t->scale_size)
			spans[ns++] = (struct span){t->scale_off, t->scale_size, t->name};
		if (t->nested_size)
			spans[ns++] = (struct span){t->nested_off, t->nested_size, t->name};
		f->ntensors++;
	}
	if (c.pos != c.end) {
		rc = lq_fail(err, LQ_ERR_FORMAT, "%s: %llu stray bytes at the end of the index", label,
			     (unsigned long long)(c.end - c.pos));
		goto out;
	}
	/* every part aligned, inside [64, data_end), no overlap */
	for (size_t i = 0; i < ns; i++) {
		uint64_t e;
		if (spans[i].size == 0)
			continue;
		if (spans[i].off % align || spans[i].off < LQ_HDR || !lq_add_u64(spans[i].off, spans[i].size, &e) ||
		    e > data_end) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: '%s': part at %llu (+%llu bytes) misaligned or outside the data region",
				     label, spans[i].what, (unsigned long long)spans[i].off, (unsigned long long)spans[i].size);
			goto out;
		}
	}
	qsort(spans, ns, sizeof *spans, cmp_span);
	uint64_t prev_end = 0;
	const char *prev = NULL;
	for (size_t i = 0; i < ns; i++) {
		if (!spans[i].size)
			continue;
		if (spans[i].off < prev_end) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: parts of '%s' and '%s' overlap", label, prev, spans[i].what);
			goto out;
		}
		prev_end = spans[i].off + spans[i].size;
		prev = spans[i].what;
	}
	/* pointers, name index, uniqueness */
	for (size_t i = 0; i < f->nblobs; i++)
		f->blobs[i].data = f->map + f->blobs[i].off;
	for (size_t i = 0; i < f->nblobs; i++)
		for (size_t j = 0; j < i; j++)
			if (strcmp(f->blobs[i].name, f->blobs[j].name) == 0) {
				rc = lq_fail(err, LQ_ERR_FORMAT, "%s: file '%s' stored twice", label, f->blobs[i].name);
				goto out;
			}
	f->sorted = lq_arena_alloc(&f->arena, (f->ntensors + 1) * sizeof *f->sorted);
	if (!f->sorted) {
		rc = lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
		goto out;
	}
	for (size_t i = 0; i < f->ntensors; i++) {
		struct lq_tensor *t = &f->tensors[i];
		t->data = t->data_size ? f->map + t->data_off : f->map;
		t->scales = t->scale_size ? f->map + t->scale_off : NULL;
		t->nested = t->nested_size ? (const float *)(f->map + t->nested_off) : NULL;
		f->sorted[i] = t;
	}
	qsort(f->sorted, f->ntensors, sizeof *f->sorted, cmp_tname);
	for (size_t i = 1; i < f->ntensors; i++)
		if (strcmp(f->sorted[i - 1]->name, f->sorted[i]->name) == 0) {
			rc = lq_fail(err, LQ_ERR_FORMAT, "%s: tensor '%s' stored twice", label, f->sorted[i]->name);
			goto out;
		}
	rc = LQ_OK;
out:
	free(spans);
	return rc;
}

static int file_parse(struct lq_file *f, const char *label, struct lq_error *err)
{
	const uint8_t *m = f->map;
	uint64_t size = f->size;
	if (size < LQ_HDR + LQ_FTR || memcmp(m, LQ_MAGIC, 8))
		return lq_fail(err, LQ_ERR_FORMAT, "%s: not an LQ file (bad magic or too short)", label);
	uint32_t major = lq_rd32(m + 8), align = lq_rd32(m + 16);
	if (major != 1)
		return lq_fail(err, LQ_ERR_UNSUPPORTED, "%s: LQ format version %u is not supported (this is 1)", label, major);
	f->version_minor = (int)lq_rd32(m + 12);
	if (align < 64 || align > 65536 || (align & (align - 1)))
		return lq_fail(err, LQ_ERR_FORMAT, "%s: bad alignment %u", label, align);
	const uint8_t *ft = m + size - LQ_FTR;
	if (memcmp(ft + 56, LQ_FMAGIC, 8))
		return lq_fail(err, LQ_ERR_FORMAT, "%s: footer missing; the file is truncated or was not finished", label);
	uint64_t moff = lq_rd64(ft), msz = lq_rd64(ft + 8), ioff = lq_rd64(ft + 16), isz = lq_rd64(ft + 24);
	uint32_t nt = lq_rd32(ft + 32), nbl = lq_rd32(ft + 36);
	uint64_t fend = size - LQ_FTR, e1, e2;
	if (moff < LQ_HDR || moff % 8 || ioff % 8 || !lq_add_u64(moff, msz, &e1) || e1 > ioff ||
	    !lq_add_u64(ioff, isz, &e2) || e2 != fend)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: footer offsets out of range; the file is corrupt", label);
	if (nt > LQ_MAX_TENSORS || nbl > LQ_MAX_BLOBS)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: %u tensors / %u files is beyond the format's limits", label, nt, nbl);
	XXH3_state_t hs;
	XXH3_64bits_reset(&hs);
	XXH3_64bits_update(&hs, m, LQ_HDR);
	XXH3_64bits_update(&hs, m + moff, (size_t)msz);
	XXH3_64bits_update(&hs, m + ioff, (size_t)isz);
	XXH3_64bits_update(&hs, ft, 40);
	if (XXH3_64bits_digest(&hs) != lq_rd64(ft + 40))
		return lq_fail(err, LQ_ERR_CHECKSUM, "%s: header/index checksum mismatch; the file is corrupt", label);
	f->meta = lq_arena_strndup(&f->arena, (const char *)m + moff, (size_t)msz);
	if (!f->meta)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	f->meta_len = (size_t)msz;
	json_error_t je;
	json_t *root = json_loadb(f->meta, f->meta_len, 0, &je);
	int is_obj = json_is_object(root);
	json_decref(root);
	if (!is_obj)
		return lq_fail(err, LQ_ERR_FORMAT, "%s: metadata is not a JSON object", label);
	return parse_index(f, ioff, isz, nt, nbl, moff, align, label, err);
}

int lq_file_parse(struct lq_file **out, const void *buf, size_t size, const char *label, struct lq_error *err)
{
	*out = NULL;
	struct lq_file *f = calloc(1, sizeof *f);
	if (!f)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	f->map = buf;
	f->size = size;
	int rc = file_parse(f, label, err);
	if (rc) {
		lq_file_close(f);
		return rc;
	}
	*out = f;
	return LQ_OK;
}

int lq_file_open(struct lq_file **out, const char *path, struct lq_error *err)
{
	*out = NULL;
	const void *map;
	uint64_t size;
	int rc = lq_map_file(path, &map, &size, err);
	if (rc)
		return rc;
	struct lq_file *f = calloc(1, sizeof *f);
	if (!f) {
		lq_unmap_file(map, size);
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", path);
	}
	f->map = map;
	f->size = size;
	f->owned = 1;
	rc = file_parse(f, path, err);
	if (rc) {
		lq_file_close(f);
		return rc;
	}
	*out = f;
	return LQ_OK;
}

void lq_file_close(struct lq_file *f)
{
	if (!f)
		return;
	if (f->owned)
		lq_unmap_file(f->map, f->size);
	lq_arena_free(&f->arena);
	free(f);
}

uint64_t lq_file_size(const struct lq_file *f) { return f->size; }
int lq_file_version(const struct lq_file *f) { return 1000 + f->version_minor; }
size_t lq_file_count(const struct lq_file *f) { return f->ntensors; }
const struct lq_tensor *lq_file_get(const struct lq_file *f, size_t i) { return i < f->ntensors ? &f->tensors[i] : NULL; }
size_t lq_file_nblobs(const struct lq_file *f) { return f->nblobs; }
const struct lq_blob *lq_file_blob(const struct lq_file *f, size_t i) { return i < f->nblobs ? &f->blobs[i] : NULL; }

const struct lq_tensor *lq_file_find(const struct lq_file *f, const char *name)
{
	size_t lo = 0, hi = f->ntensors;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(f->sorted[mid]->name, name);
		if (!c)
			return f->sorted[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const struct lq_blob *lq_file_find_blob(const struct lq_file *f, const char *name)
{
	for (size_t i = 0; i < f->nblobs; i++)
		if (strcmp(f->blobs[i].name, name) == 0)
			return &f->blobs[i];
	return NULL;
}

const char *lq_file_metadata(const struct lq_file *f, size_t *len)
{
	if (len)
		*len = f->meta_len;
	return f->meta;
}

/* ================================================================ writer */

struct wrec {
	int is_blob;
	struct lq_tensor t; /* name owned by the arena; for blobs: name, data_off/size, xxh3 */
};

struct lq_writer {
	int fd;
	const char *label;
	uint64_t pos;
	struct lq_arena arena;
	struct wrec *recs;
	size_t nrec, cap;
	size_t ntensors, nblobs;
	int failed;
	XXH3_state_t *hs;
};

static int w_bytes(struct lq_writer *w, const void *p, size_t n, struct lq_error *err)
{
	const uint8_t *b = p;
	while (n) {
		size_t chunk = n > (1u << 30) ? (1u << 30) : n;
		ssize_t k = write(w->fd, b, chunk);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			w->failed = 1;
			return lq_fail_errno(err, errno, "%s: write", w->label);
		}
		if (k == 0) {
			w->failed = 1;
			return lq_fail(err, LQ_ERR_IO, "%s: write returned 0", w->label);
		}
		b += k;
		n -= (size_t)k;
		w->pos += (uint64_t)k;
	}
	return LQ_OK;
}

static int w_pad(struct lq_writer *w, uint64_t align, struct lq_error *err)
{
	static const uint8_t zero[LQ_ALIGN];
	uint64_t r = w->pos % align;
	return r ? w_bytes(w, zero, (size_t)(align - r), err) : LQ_OK;
}

int lq_writer_create(struct lq_writer **out, int fd, const char *label, struct lq_error *err)
{
	*out = NULL;
	struct lq_writer *w = calloc(1, sizeof *w);
	if (!w)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	w->fd = fd;
	w->label = lq_arena_strdup(&w->arena, label ? label : "output");
	w->hs = XXH3_createState();
	if (!w->label || !w->hs) {
		lq_writer_free(w);
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", label);
	}
	uint8_t h[LQ_HDR] = {0};
	memcpy(h, LQ_MAGIC, 8);
	lq_wr32(h + 8, 1);
	lq_wr32(h + 12, 0);
	lq_wr32(h + 16, LQ_ALIGN);
	int rc = w_bytes(w, h, sizeof h, err);
	if (rc) {
		lq_writer_free(w);
		return rc;
	}
	*out = w;
	return LQ_OK;
}

static struct wrec *w_rec(struct lq_writer *w, const char *name, struct lq_error *err)
{
	if (!name || !*name || strlen(name) > LQ_MAX_NAME) {
		lq_fail(err, LQ_ERR_INVALID, "%s: bad name", w->label);
		return NULL;
	}
	for (size_t i = 0; i < w->nrec; i++) /* O(n^2) over a few hundred names: fine */
		if (strcmp(w->recs[i].t.name, name) == 0) {
			lq_fail(err, LQ_ERR_INVALID, "%s: '%s' added twice", w->label, name);
			return NULL;
		}
	if (w->nrec == w->cap) {
		size_t n = w->cap ? 2 * w->cap : 64;
		struct wrec *r = realloc(w->recs, n * sizeof *r);
		if (!r) {
			lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", w->label);
			return NULL;
		}
		w->recs = r;
		w->cap = n;
	}
	struct wrec *r = &w->recs[w->nrec];
	memset(r, 0, sizeof *r);
	r->t.name = lq_arena_strdup(&w->arena, name);
	if (!r->t.name) {
		lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", w->label);
		return NULL;
	}
	return r;
}

int lq_writer_add_blob(struct lq_writer *w, const char *name, const void *data, size_t size, struct lq_error *err)
{
	if (w->failed)
		return lq_fail(err, LQ_ERR_INVALID, "%s: writer already failed", w->label);
	struct wrec *r = w_rec(w, name, err);
	if (!r)
		return err ? err->code : LQ_ERR_INVALID;
	int rc = w_pad(w, LQ_ALIGN, err);
	if (rc)
		return rc;
	r->is_blob = 1;
	r->t.data_off = size ? w->pos : 0;
	r->t.data_size = size;
	r->t.xxh3 = XXH3_64bits(data, size);
	if ((rc = w_bytes(w, data, size, err)))
		return rc;
	w->nrec++;
	w->nblobs++;
	return LQ_OK;
}

int lq_writer_add_tensor(struct lq_writer *w, const struct lq_tensor *desc, const void *data,
			 const void *scales, const float *nested, struct lq_error *err)
{
	if (w->failed)
		return lq_fail(err, LQ_ERR_INVALID, "%s: writer already failed", w->label);
	if (desc->qtype < 0 || desc->qtype >= LQ_QTYPE_COUNT || desc->src_dtype < 0 ||
	    desc->src_dtype >= LQ_DTYPE_COUNT || desc->ndim < 0 || desc->ndim > LQ_MAX_DIMS)
		return lq_fail(err, LQ_ERR_INVALID, "%s: tensor '%s': bad type or rank", w->label, desc->name);
	struct lq_tensor t = *desc;
	t.double_quant = desc->qtype != LQ_QTYPE_NONE && desc->double_quant;
	uint64_t n = 1;
	for (int d = 0; d < t.ndim; d++)
		if (!lq_mul_u64(n, t.shape[d], &n))
			return lq_fail(err, LQ_ERR_INVALID, "%s: tensor '%s': shape overflows", w->label, t.name);
	t.nelem = n;
	if (t.qtype != LQ_QTYPE_NONE) {
		struct lq_qparams p;
		lq_tensor_qparams(&t, &p);
		int rc = lq_qparams_check(&p, err);
		if (rc)
			return rc;
	} else {
		t.block_size = 0;
		t.offset = 0;
	}
	if (!t.double_quant)
		t.offset = 0;
	uint64_t ds, ss, ns;
	if (expected_sizes(&t, &ds, &ss, &ns))
		return lq_fail(err, LQ_ERR_INVALID, "%s: tensor '%s': size overflows", w->label, t.name);
	struct wrec *r = w_rec(w, t.name, err);
	if (!r)
		return err ? err->code : LQ_ERR_INVALID;
	const char *name = r->t.name;
	XXH3_64bits_reset(w->hs);
	const void *parts[3] = {data, scales, nested};
	uint64_t sizes[3] = {ds, ss, ns}, offs[3] = {0, 0, 0};
	for (int i = 0; i < 3; i++) {
		if (!sizes[i])
			continue;
		int rc = w_pad(w, LQ_ALIGN, err);
		if (rc)
			return rc;
		offs[i] = w->pos;
		XXH3_64bits_update(w->hs, parts[i], (size_t)sizes[i]);
		if ((rc = w_bytes(w, parts[i], (size_t)sizes[i], err)))
			return rc;
	}
	t.name = name;
	t.data_off = offs[0];
	t.data_size = ds;
	t.scale_off = offs[1];
	t.scale_size = ss;
	t.nested_off = offs[2];
	t.nested_size = ns;
	t.xxh3 = XXH3_64bits_digest(w->hs);
	t.data = NULL;
	t.scales = NULL;
	t.nested = NULL;
	r->t = t;
	w->nrec++;
	w->ntensors++;
	return LQ_OK;
}

uint64_t lq_writer_offset(const struct lq_writer *w) { return w->pos; }

/* Serialize the index: blobs first, then tensors, in the order added. */
static uint8_t *build_index(struct lq_writer *w, size_t *len)
{
	size_t cap = 0;
	for (size_t i = 0; i < w->nrec; i++)
		cap += 8 + pad8(strlen(w->recs[i].t.name)) + 64 + 8 * LQ_MAX_DIMS + 8;
	uint8_t *b = calloc(1, cap + 8), *p = b;
	if (!b)
		return NULL;
	for (int pass = 1; pass >= 0; pass--)
		for (size_t i = 0; i < w->nrec; i++) {
			const struct lq_tensor *t = &w->recs[i].t;
			if (w->recs[i].is_blob != pass)
				continue;
			size_t nl = strlen(t->name);
			lq_wr32(p, (uint32_t)nl);
			memcpy(p + 8, t->name, nl);
			p += 8 + pad8(nl);
			if (pass) {
				lq_wr64(p, t->data_off);
				lq_wr64(p + 8, t->data_size);
				lq_wr64(p + 16, t->xxh3);
				p += 24;
				continue;
			}
			p[0] = (uint8_t)t->qtype;
			p[1] = (uint8_t)t->src_dtype;
			p[2] = (uint8_t)t->ndim;
			p[3] = (uint8_t)(t->double_quant ? 1 : 0);
			lq_wr32(p + 4, (uint32_t)t->block_size);
			p += 8;
			for (int d = 0; d < t->ndim; d++, p += 8)
				lq_wr64(p, t->shape[d]);
			uint32_t ob;
			memcpy(&ob, &t->offset, 4);
			lq_wr32(p, ob);
			lq_wr32(p + 4, t->double_quant ? LQ_NESTED_BLOCK : 0);
			lq_wr64(p + 8, t->data_off);
			lq_wr64(p + 16, t->data_size);
			lq_wr64(p + 24, t->scale_off);
			lq_wr64(p + 32, t->scale_size);
			lq_wr64(p + 40, t->nested_off);
			lq_wr64(p + 48, t->nested_size);
			lq_wr64(p + 56, t->xxh3);
			p += 64;
		}
	*len = (size_t)(p - b);
	return b;
}

int lq_writer_finish(struct lq_writer *w, const char *metadata_json, struct lq_error *err)
{
	if (w->failed)
		return lq_fail(err, LQ_ERR_INVALID, "%s: writer already failed", w->label);
	json_error_t je;
	json_t *root = json_loads(metadata_json, 0, &je);
	int ok = json_is_object(root);
	json_decref(root);
	if (!ok)
		return lq_fail(err, LQ_ERR_INVALID, "%s: metadata is not a JSON object", w->label);
	int rc = w_pad(w, 8, err);
	if (rc)
		return rc;
	uint8_t hdr[LQ_HDR] = {0};
	memcpy(hdr, LQ_MAGIC, 8);
	lq_wr32(hdr + 8, 1);
	lq_wr32(hdr + 16, LQ_ALIGN);
	size_t mlen = strlen(metadata_json), ilen;
	uint64_t moff = w->pos;
	if ((rc = w_bytes(w, metadata_json, mlen, err)) || (rc = w_pad(w, 8, err)))
		return rc;
	uint64_t ioff = w->pos;
	uint8_t *idx = build_index(w, &ilen);
	if (!idx)
		return lq_fail(err, LQ_ERR_NOMEM, "%s: out of memory", w->label);
	if ((rc = w_bytes(w, idx, ilen, err))) {
		free(idx);
		return rc;
	}
	uint8_t ft[LQ_FTR] = {0};
	lq_wr64(ft, moff);
	lq_wr64(ft + 8, mlen);
	lq_wr64(ft + 16, ioff);
	lq_wr64(ft + 24, ilen);
	lq_wr32(ft + 32, (uint32_t)w->ntensors);
	lq_wr32(ft + 36, (uint32_t)w->nblobs);
	XXH3_64bits_reset(w->hs);
	XXH3_64bits_update(w->hs, hdr, LQ_HDR);
	XXH3_64bits_update(w->hs, metadata_json, mlen);
	XXH3_64bits_update(w->hs, idx, ilen);
	XXH3_64bits_update(w->hs, ft, 40);
	lq_wr64(ft + 40, XXH3_64bits_digest(w->hs));
	memcpy(ft + 56, LQ_FMAGIC, 8);
	free(idx);
	return w_bytes(w, ft, sizeof ft, err);
}

void lq_writer_free(struct lq_writer *w)
{
	if (!w)
		return;
	free(w->recs);
	if (w->hs)
		XXH3_freeState(w->hs);
	lq_arena_free(&w->arena);
	free(w);
}
