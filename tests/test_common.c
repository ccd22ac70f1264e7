/* test_common.c - float conversions and the non-finite scan against plain references. */
#include "libquant.h"
#include "test.h"

#include <math.h>

static int64_t ref_scan(const void *p, int dtype, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		float v;
		lq_to_f32(&v, (const char *)p + i * lq_dtype_size(dtype), dtype, 1);
		if (!isfinite(v))
			return (int64_t)i;
	}
	return -1;
}

int main(void)
{
	static const int dtypes[] = {LQ_DTYPE_F32, LQ_DTYPE_BF16, LQ_DTYPE_F16};
	static const uint64_t sizes[] = {0, 1, 7, 63, 64, 65, 127, 4095, 4096, 4097, 10000};
	unsigned seed = 1;
	for (size_t d = 0; d < 3; d++)
		for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
			uint64_t n = sizes[s];
			size_t es = lq_dtype_size(dtypes[d]);
			unsigned char *buf = calloc(n + 1, es);
			for (int trial = 0; trial < 8; trial++) {
				for (uint64_t i = 0; i < n; i++) { /* finite values, some large */
					seed = seed * 1103515245u + 12345u;
					float v = ((float)(seed >> 8) / 16777216.0f - 0.5f) * (trial & 1 ? 60000.0f : 2.0f);
					if (dtypes[d] == LQ_DTYPE_F32)
						memcpy(buf + i * 4, &v, 4);
					else {
						uint16_t h = dtypes[d] == LQ_DTYPE_BF16 ? lq_f32_to_bf16(v) : lq_f32_to_f16(v);
						memcpy(buf + i * 2, &h, 2);
					}
				}
				if (n && trial) { /* plant one or two non-finite values */
					uint64_t at = (seed >> 3) % n;
					float bad = trial % 3 == 0 ? NAN : trial % 3 == 1 ? INFINITY : -INFINITY;
					if (dtypes[d] == LQ_DTYPE_F32)
						memcpy(buf + at * 4, &bad, 4);
					else {
						uint16_t h = dtypes[d] == LQ_DTYPE_BF16 ? lq_f32_to_bf16(bad) : lq_f32_to_f16(bad);
						memcpy(buf + at * 2, &h, 2);
					}
				}
				CHECK(lq_find_nonfinite(buf, dtypes[d], n) == ref_scan(buf, dtypes[d], n),
				      "dtype %d n %llu trial %d", dtypes[d], (unsigned long long)n, trial);
			}
			free(buf);
		}
	/* conversions: round trips and rounding */
	CHECK(lq_bf16_to_f32(lq_f32_to_bf16(1.0f)) == 1.0f);
	CHECK(lq_f32_to_bf16(1.00390625f) == 0x3f80, "tie to even"); /* 1 + 2^-8: halfway, even down */
	CHECK(lq_f32_to_bf16(1.01171875f) == 0x3f82, "tie to even up");
	CHECK(lq_f16_to_f32(lq_f32_to_f16(65504.0f)) == 65504.0f && lq_f32_to_f16(65520.0f) == 0x7c00);
	CHECK(lq_f16_to_f32(0x0001) == 0x1p-24f, "f16 subnormal");
	CHECK(isnan(lq_bf16_to_f32(lq_f32_to_bf16(NAN))) && isnan(lq_f16_to_f32(lq_f32_to_f16(NAN))));
	for (uint32_t h = 0; h < 0x7c00; h++) /* every finite positive f16 round-trips */
		if (lq_f32_to_f16(lq_f16_to_f32((uint16_t)h)) != h) {
			CHECK(0, "f16 %#x does not round-trip", h);
			break;
		}
	CHECK(strcmp(lq_strerror(LQ_ERR_CHECKSUM), "checksum mismatch") == 0 && lq_qtype_parse("int8") == LQ_QTYPE_INT8);
	return test_summary();
}
