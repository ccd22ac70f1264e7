/* common.c - errors, type names, float conversions, arena, file mapping. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const char *lq_version(void) { return LQ_VERSION_STRING; }

const char *lq_strerror(int code)
{
	switch (code) {
	case LQ_OK: return "success";
	case LQ_ERR_IO: return "I/O error";
	case LQ_ERR_NOMEM: return "out of memory";
	case LQ_ERR_FORMAT: return "malformed file";
	case LQ_ERR_UNSUPPORTED: return "unsupported";
	case LQ_ERR_INVALID: return "invalid argument";
	case LQ_ERR_NONFINITE: return "non-finite value";
	case LQ_ERR_CHECKSUM: return "checksum mismatch";
	case LQ_ERR_NOTFOUND: return "not found";
	case LQ_ERR_NOSPACE: return "no space left on device";
	case LQ_ERR_NETWORK: return "network error";
	case LQ_ERR_AUTH: return "not authorized";
	case LQ_ERR_SHAPE: return "shape mismatch";
	case LQ_ERR_INTERRUPTED: return "interrupted";
	}
	return "unknown error";
}

int lq_fail(struct lq_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

int lq_fail_errno(struct lq_error *err, int errnum, const char *fmt, ...)
{
	int code = (errnum == ENOSPC || errnum == EDQUOT) ? LQ_ERR_NOSPACE :
		   errnum == ENOMEM ? LQ_ERR_NOMEM : LQ_ERR_IO;
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < sizeof err->msg)
			snprintf(err->msg + n, sizeof err->msg - (size_t)n, ": %s", strerror(errnum));
		err->code = code;
	}
	return code;
}

static const char *const dtype_names[] = {"F32", "F16", "BF16", "U8", "I8"};
static const size_t dtype_sizes[] = {4, 2, 2, 1, 1};

const char *lq_dtype_name(int d)
{
	return d >= 0 && d < LQ_DTYPE_COUNT ? dtype_names[d] : "?";
}

size_t lq_dtype_size(int d) { return d >= 0 && d < LQ_DTYPE_COUNT ? dtype_sizes[d] : 0; }

static const char *const qtype_names[] = {"none", "nf4", "fp4", "int8"};

const char *lq_qtype_name(int q) { return q >= 0 && q < LQ_QTYPE_COUNT ? qtype_names[q] : "?"; }

int lq_qtype_parse(const char *s)
{
	for (int i = 0; i < LQ_QTYPE_COUNT; i++)
		if (strcmp(s, qtype_names[i]) == 0)
			return i;
	return -1;
}

static const char *const compute_names[] = {"bf16", "fp16", "fp32"};

const char *lq_compute_name(int c) { return c >= 0 && c < 3 ? compute_names[c] : "?"; }

int lq_compute_parse(const char *s)
{
	for (int i = 0; i < 3; i++)
		if (strcmp(s, compute_names[i]) == 0)
			return i;
	if (strcmp(s, "bfloat16") == 0) return LQ_COMPUTE_BF16;
	if (strcmp(s, "float16") == 0 || strcmp(s, "f16") == 0) return LQ_COMPUTE_F16;
	if (strcmp(s, "float32") == 0 || strcmp(s, "f32") == 0) return LQ_COMPUTE_F32;
	return -1;
}

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float lq_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t lq_f32_to_bf16(float f)
{
	uint32_t u = f2u(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

float lq_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
	if (exp == 0x1f)
		return u2f(sign | 0x7f800000u | man << 13);
	if (exp == 0) {
		if (man == 0)
			return u2f(sign);
		float v = (float)man * 0x1p-24f; /* exact */
		return sign ? -v : v;
	}
	return u2f(sign | (exp + 112) << 23 | man << 13);
}

uint16_t lq_f32_to_f16(float f)
{
	uint32_t u = f2u(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	uint32_t a = u & 0x7fffffffu;
	if (a > 0x7f800000u)
		return sign | 0x7e00;
	if (a >= 0x477ff000u) /* rounds to >= 65520 -> inf */
		return sign | 0x7c00;
	if (a < 0x38800000u) { /* subnormal or zero in f16 */
		float v = u2f(a) * 0x1p24f; /* exact scaling, rint = RNE */
		return sign | (uint16_t)lrintf(v);
	}
	uint32_t r = a + 0xfffu + ((a >> 13) & 1);
	return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

void lq_to_f32(float *dst, const void *src, int dtype, size_t n)
{
	const uint16_t *h = src;
	switch (dtype) {
	case LQ_DTYPE_F32:
		memcpy(dst, src, n * 4);
		break;
	case LQ_DTYPE_BF16:
		for (size_t i = 0; i < n; i++)
			dst[i] = u2f((uint32_t)h[i] << 16);
		break;
	case LQ_DTYPE_F16:
		for (size_t i = 0; i < n; i++)
			dst[i] = lq_f16_to_f32(h[i]);
		break;
	case LQ_DTYPE_U8:
		for (size_t i = 0; i < n; i++)
			dst[i] = ((const uint8_t *)src)[i];
		break;
	case LQ_DTYPE_I8:
		for (size_t i = 0; i < n; i++)
			dst[i] = ((const int8_t *)src)[i];
		break;
	}
}

/* Whether any of n 16-bit floats has an all-ones exponent (mask). */
static int any_exp16(const uint16_t *h, size_t n, uint16_t mask)
{
	unsigned bad = 0;
	for (size_t i = 0; i < n; i++)
		bad |= (h[i] & mask) == mask;
	return bad != 0;
}

static int any_exp32(const uint32_t *w, size_t n)
{
	unsigned bad = 0;
	for (size_t i = 0; i < n; i++)
		bad |= (w[i] & 0x7f800000u) == 0x7f800000u;
	return bad != 0;
}

#if defined(__x86_64__) && !defined(LQ_NO_SIMD)
#include <immintrin.h>
/* The same over 16-bit (bits = 16) or 32-bit lanes, 128 bytes per step. */
__attribute__((target("avx2"))) static int any_exp_avx2(const void *p, size_t nbytes, uint32_t mask, int bits)
{
	const unsigned char *b = p;
	__m256i vm = bits == 16 ? _mm256_set1_epi16((short)mask) : _mm256_set1_epi32((int)mask);
	__m256i acc = _mm256_setzero_si256();
	size_t i = 0;
	for (; i + 128 <= nbytes; i += 128)
		for (int k = 0; k < 4; k++) {
			__m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(b + i + 32 * k)), vm);
			acc = _mm256_or_si256(acc, bits == 16 ? _mm256_cmpeq_epi16(v, vm) : _mm256_cmpeq_epi32(v, vm));
		}
	if (!_mm256_testz_si256(acc, acc))
		return 1;
	size_t rest = (nbytes - i) / (size_t)(bits / 8);
	return bits == 16 ? any_exp16((const uint16_t *)(b + i), rest, (uint16_t)mask) :
			    any_exp32((const uint32_t *)(b + i), rest);
}
static int have_avx2(void) { return __builtin_cpu_supports("avx2"); }
#else
static int any_exp_avx2(const void *p, size_t nbytes, uint32_t mask, int bits)
{
	return bits == 16 ? any_exp16(p, nbytes / 2, (uint16_t)mask) : any_exp32(p, nbytes / 4);
}
static int have_avx2(void) { return 1; }
#endif

int64_t lq_find_nonfinite(const void *src, int dtype, uint64_t n)
{
	const uint16_t *h = src;
	const uint32_t *w = src;
	const uint64_t step = 4096;
	int simd = have_avx2();
	for (uint64_t b = 0; b < n; b += step) {
		size_t m = (size_t)(n - b < step ? n - b : step);
		int hit;
		if (simd)
			hit = dtype == LQ_DTYPE_F32 ? any_exp_avx2(w + b, m * 4, 0x7f800000u, 32) :
			      dtype == LQ_DTYPE_BF16 ? any_exp_avx2(h + b, m * 2, 0x7f80u, 16) :
			      dtype == LQ_DTYPE_F16 ? any_exp_avx2(h + b, m * 2, 0x7c00u, 16) : 0;
		else
			hit = dtype == LQ_DTYPE_F32 ? any_exp32(w + b, m) :
			      dtype == LQ_DTYPE_BF16 ? any_exp16(h + b, m, 0x7f80u) :
			      dtype == LQ_DTYPE_F16 ? any_exp16(h + b, m, 0x7c00u) : 0;
		if (!hit)
			continue;
		for (uint64_t i = b; i < b + m; i++) /* find it */
			if (dtype == LQ_DTYPE_F32 ? (w[i] & 0x7f800000u) == 0x7f800000u :
			    dtype == LQ_DTYPE_BF16 ? (h[i] & 0x7f80u) == 0x7f80u : (h[i] & 0x7c00u) == 0x7c00u)
				return (int64_t)i;
	}
	return -1;
}

/* ---------------------------------------------------------------- arena */

struct lq_arena_chunk {
	struct lq_arena_chunk *next;
	size_t used, cap;
	_Alignas(16) unsigned char mem[];
};

void *lq_arena_alloc(struct lq_arena *a, size_t size)
{
	size = (size + 15) & ~(size_t)15;
	struct lq_arena_chunk *c = a->head;
	if (!c || c->cap - c->used < size) {
		size_t cap = size > 65536 ? size : 65536;
		c = malloc(sizeof *c + cap);
		if (!c)
			return NULL;
		c->used = 0;
		c->cap = cap;
		c->next = a->head;
		a->head = c;
	}
	void *p = c->mem + c->used;
	c->used += size;
	memset(p, 0, size);
	return p;
}

char *lq_arena_strndup(struct lq_arena *a, const char *s, size_t n)
{
	char *p = lq_arena_alloc(a, n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

char *lq_arena_strdup(struct lq_arena *a, const char *s) { return lq_arena_strndup(a, s, strlen(s)); }

void lq_arena_free(struct lq_arena *a)
{
	while (a->head) {
		struct lq_arena_chunk *n = a->head->next;
		free(a->head);
		a->head = n;
	}
}

/* ---------------------------------------------------------------- files */

int lq_map_file(const char *path, const void **map, uint64_t *size, struct lq_error *err)
{
	*map = NULL;
	*size = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lq_fail_errno(err, errno, "%s", path);
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return lq_fail_errno(err, e, "%s", path);
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return lq_fail(err, LQ_ERR_IO, "%s: not a regular file", path);
	}
	if (st.st_size > 0) {
		void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			int e = errno;
			close(fd);
			return lq_fail_errno(err, e, "%s: mmap", path);
		}
		*map = m;
		*size = (uint64_t)st.st_size;
	}
	close(fd);
	return LQ_OK;
}

void lq_unmap_file(const void *map, uint64_t size)
{
	if (map && size)
		munmap((void *)map, (size_t)size);
}
