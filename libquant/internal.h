/* internal.h - helpers shared inside libquant and formats/ (not installed). */
#ifndef LQ_INTERNAL_H
#define LQ_INTERNAL_H

#include "libquant.h"
#include <stdarg.h>
#include <stdbool.h>

/* Fill err (if not NULL) with code and a printf-style message; returns code. */
int lq_fail(struct lq_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Same, appending ": strerror(errnum)". */
int lq_fail_errno(struct lq_error *err, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Overflow-checked arithmetic: return false on overflow. */
static inline bool lq_mul_u64(uint64_t a, uint64_t b, uint64_t *r)
{
	return !__builtin_mul_overflow(a, b, r);
}
static inline bool lq_add_u64(uint64_t a, uint64_t b, uint64_t *r)
{
	return !__builtin_add_overflow(a, b, r);
}

/* Little-endian loads/stores (the formats are little-endian). */
static inline uint16_t lq_rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t lq_rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t lq_rd64(const uint8_t *p) { return lq_rd32(p) | (uint64_t)lq_rd32(p + 4) << 32; }
static inline void lq_wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void lq_wr32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void lq_wr64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* A simple bump arena: everything parsed from one file, freed at once. */
struct lq_arena {
	struct lq_arena_chunk *head;
};
void *lq_arena_alloc(struct lq_arena *a, size_t size); /* zeroed, 16-aligned, NULL on OOM */
char *lq_arena_strdup(struct lq_arena *a, const char *s);
char *lq_arena_strndup(struct lq_arena *a, const char *s, size_t n);
void lq_arena_free(struct lq_arena *a);

/* Map a whole file read-only.  *size = 0 and *map = NULL for an empty file. */
int lq_map_file(const char *path, const void **map, uint64_t *size, struct lq_error *err);
void lq_unmap_file(const void *map, uint64_t size);

/* Dot product in 8 float32 lanes (vectorizable), lanes summed pairwise
 * (forward_matmul.c; also the CPU runtime's attention scores). */
float lq_dot_f32(const float *restrict a, const float *restrict b, size_t n);
/* The first index of the maximum of l[0..n) (n >= 1), as lq_sample's greedy
 * pick: l[i] replaces the best so far only when strictly greater. */
int32_t lq_argmax_f32(const float *l, int64_t n);
/* lq_sample from its top-k step on: vals / ids[0..n) are the kept tokens
 * (temperature-scaled logits and ids, in any order; distinct ids), exactly the
 * set lq_sample's top-k filter keeps, ties included.  Same pick and the
 * same draws from rng as lq_sample; -1 when n is 0.  The host's statement
 * of the device's draw from a top-k set (lq_cuda_pick, gpu/lq_cuda.h);
 * test_run checks lq_sample's selection against it. */
int32_t lq_sample_kept(const float *vals, const int32_t *ids, size_t n, const struct lq_sample_opts *o,
		       struct lq_rng *rng);
/* The distinct ids of seen[0..nseen) in [0, vocab), in order of first
 * sight, into out (room for nseen): their count, -1 when out of memory (the
 * ids the repetition penalty applies to). */
int64_t lq_distinct_ids(const int32_t *seen, size_t nseen, int64_t vocab, int32_t *out);

#endif
