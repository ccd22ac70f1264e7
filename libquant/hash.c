/* hash.c - XXH3-64 (libxxhash) behind the lq_ name. */
#include "libquant.h"

#include <xxhash.h>

uint64_t lq_xxh3(const void *p, size_t n) { return XXH3_64bits(p, n); }
