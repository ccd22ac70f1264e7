/*
 * lq_blocks.h - block layout constants and code tables of libquant's
 * blockwise quantization, and the arithmetic the CPU and GPU runtimes must
 * share (the MLP activation, the sampler's draw), defined once for C and
 * CUDA.
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * Layout of a quantized tensor of n elements, block size bs (a power of two,
 * LQ_QBLOCK_MIN..LQ_QBLOCK_MAX), nb = ceil(n / bs) blocks, all little-endian:
 *   data    NF4/FP4: ceil(n/2) bytes, byte j = code[2j] << 4 | code[2j+1]
 *           (high nibble first); an odd n pads the last low nibble with the
 *           code of 0.0 (LQ_NF4_PAD_CODE / LQ_FP4_PAD_CODE).
 *           INT8: n signed bytes.
 *   scales  float32 absmax[nb], or with double quant uint8 code[nb]
 *   nested  double quant only: float32 nested_absmax[ceil(nb / 256)]
 *   offset  double quant only: one float32 (mean of the absmax values)
 * Blocks are runs of bs consecutive elements of the row-major flattening; the
 * last block may be partial.  Because bs is even, a byte never holds codes of
 * two blocks.
 *
 * Encoders (bit-exact with bitsandbytes' CUDA kernels, see
 * docs/bnb-format.md sections 1.3 and 2.3): s = x * (1.0f / absmax), then
 * lq_nf4_encode(s) / lq_fp4_encode(s); the scales' 8-bit codes come from
 * lq_dyn8_encode() over the signed dynamic map.  Decoding is
 * table[code] * absmax in float32; with double quant the scale is first
 * rebuilt as (map[code8[b]] * nested[b >> 8]) + offset, two float32
 * roundings (no FMA).  INT8: q = lq_int8_encode(x * (127.0f / absmax)),
 * w = (float)q * (absmax * (1.0f / 127.0f)).  (bnb's CUDA build computes
 * 1.0f / absmax with an approximate reciprocal; see quant.c.)
 *
 * The tables are given as initializer lists of float32 bit patterns
 * (LQ_*_BITS_INIT) so that C code can make a const array and CUDA code a
 * __constant__ or shared-memory one from the same text.
 * Functions are marked LQ_HD (__host__ __device__ under nvcc).
 */
#ifndef LQ_BLOCKS_H
#define LQ_BLOCKS_H

#include "lq_model.h" /* LQ_ACT_* */

#include <stdint.h>
#include <string.h>
#ifndef __CUDACC__
#include <math.h>
#endif

#ifdef __CUDACC__
#define LQ_HD __host__ __device__
#else
#define LQ_HD
#endif

#ifdef __cplusplus
#define LQ_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define LQ_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* ------------------------------------------------------------ layout */

#define LQ_QBLOCK_MIN 32       /* smallest block size */
#define LQ_QBLOCK_MAX 4096     /* largest block size */
#define LQ_QBLOCK_DEFAULT 64   /* bnb and transformers default */
#define LQ_QNESTED_BLOCK 256   /* double-quant block of the scales (fixed) */
#define LQ_QNESTED_SHIFT 8     /* block b's nested scale is nested[b >> 8] */
#define LQ_NF4_PAD_CODE 7      /* NF4 code of 0.0 */
#define LQ_FP4_PAD_CODE 0      /* FP4 code of 0.0 */
#define LQ_INT8_QMAX 127       /* INT8 codes are -127..127 */

LQ_STATIC_ASSERT((LQ_QBLOCK_MIN & (LQ_QBLOCK_MIN - 1)) == 0, "block min not a power of two");
LQ_STATIC_ASSERT((LQ_QBLOCK_MAX & (LQ_QBLOCK_MAX - 1)) == 0, "block max not a power of two");
LQ_STATIC_ASSERT(LQ_QBLOCK_MIN % 32 == 0, "fast paths process 32 elements at a time");
LQ_STATIC_ASSERT(LQ_QBLOCK_DEFAULT >= LQ_QBLOCK_MIN && LQ_QBLOCK_DEFAULT <= LQ_QBLOCK_MAX,
		 "default block size out of range");
LQ_STATIC_ASSERT(LQ_QNESTED_BLOCK == 1 << LQ_QNESTED_SHIFT, "nested shift");
LQ_STATIC_ASSERT(sizeof(float) == 4 && sizeof(uint32_t) == 4, "float32 required");
#ifdef LQ_NESTED_BLOCK
LQ_STATIC_ASSERT(LQ_NESTED_BLOCK == LQ_QNESTED_BLOCK, "libquant.h and lq_blocks.h disagree");
#endif

/* Number of blocks of n elements (bs > 0). */
LQ_HD static inline uint64_t lq_blocks_count(uint64_t n, uint64_t bs)
{
	return n / bs + (n % bs != 0);
}

/* Bytes of packed 4-bit data for n elements. */
LQ_HD static inline uint64_t lq_blocks_q4_bytes(uint64_t n) { return n / 2 + (n & 1); }

/* ------------------------------------------------------------ tables */

/* NF4 values by code (bnb get_4bit_type("nf4")), float32 bits, ascending. */
#define LQ_NF4_BITS_INIT { \
	0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, \
	0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u, \
	0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, \
	0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u }

/*
 * FP4 values by code as decoded by bnb's CUDA kernels (sign bit 3, magnitude
 * LUT 0, 0.0625/12, 8/12, 1, 4/12, 6/12, 2/12, 3/12).  Code 8 is -0.0 as in
 * the CUDA LUT (get_4bit_type stores +0.0 there; the values compare equal).
 */
#define LQ_FP4_BITS_INIT { \
	0x00000000u, 0x3baaaaabu, 0x3f2aaaabu, 0x3f800000u, \
	0x3eaaaaabu, 0x3f000000u, 0x3e2aaaabu, 0x3e800000u, \
	0x80000000u, 0xbbaaaaabu, 0xbf2aaaabu, 0xbf800000u, \
	0xbeaaaaabu, 0xbf000000u, 0xbe2aaaabu, 0xbe800000u }

/*
 * The 15 NF4 decision thresholds of dQuantizeNF4 as float32 (the CUDA decimal
 * literals rounded once to float32; 4 of them are 1 ulp off the float32
 * midpoints of adjacent codes, on purpose).  code = #{ j : s > T[j] }.
 */
#define LQ_NF4_T0  (-0x1.b239b2p-1f)  /* 0xbf591cd9 -0.8480964004993439 */
#define LQ_NF4_T1  (-0x1.38a4e0p-1f)  /* 0xbf1c5270 -0.6106329262256622 */
#define LQ_NF4_T2  (-0x1.d70900p-2f)  /* 0xbeeb8480 -0.4599952697753906 */
#define LQ_NF4_T3  (-0x1.5bd4ecp-2f)  /* 0xbeadea76 -0.33967943489551544 */
#define LQ_NF4_T4  (-0x1.e079d8p-3f)  /* 0xbe703cec -0.23460740596055984 */
#define LQ_NF4_T5  (-0x1.1a7178p-3f)  /* 0xbe0d38bc -0.13791173323988914 */
#define LQ_NF4_T6  (-0x1.74f0e2p-5f)  /* 0xbd3a7871 -0.045525018125772476 */
#define LQ_NF4_T7  (0x1.45f5fep-5f)   /* 0x3d22faff 0.03979014977812767 */
#define LQ_NF4_T8  (0x1.ec90c6p-4f)   /* 0x3df64863 0.1202552504837513 */
#define LQ_NF4_T9  (0x1.a0cfc0p-3f)   /* 0x3e5067e0 0.2035212516784668 */
#define LQ_NF4_T10 (0x1.2b05a8p-2f)   /* 0x3e9582d4 0.2920137718319893 */
#define LQ_NF4_T11 (0x1.8ea7f2p-2f)   /* 0x3ec753f9 0.3893125355243683 */
#define LQ_NF4_T12 (0x1.00da06p-1f)   /* 0x3f006d03 0.5016634166240692 */
#define LQ_NF4_T13 (0x1.491b5ep-1f)   /* 0x3f248daf 0.6427869200706482 */
#define LQ_NF4_T14 (0x1.b913b2p-1f)   /* 0x3f5c89d9 0.8614784181118011 */

#define LQ_NF4_THRESHOLD_BITS_INIT { \
	0xbf591cd9u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, \
	0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu, 0x3df64863u, 0x3e5067e0u, \
	0x3e9582d4u, 0x3ec753f9u, 0x3f006d03u, 0x3f248dafu, 0x3f5c89d9u }

/* FP4 decision thresholds of dQuantizeFP4 on |s| (the CUDA literals). */
#define LQ_FP4_T_0_1   0.00260417f  /* 0x3b2aaab9: codes 0|1 */
#define LQ_FP4_T_1_6   0.0859375f   /* 0x3db00000: 1|6 */
#define LQ_FP4_T_6_7   0.20833333f  /* 0x3e555555: 6|7 */
#define LQ_FP4_T_7_4   0.29166667f  /* 0x3e955555: 7|4 */
#define LQ_FP4_T_4_5   0.4166667f   /* 0x3ed55556: 4|5 */
#define LQ_FP4_T_5_2   0.583333f    /* 0x3f155550: 5|2 */
#define LQ_FP4_T_2_3   0.8333333f   /* 0x3f555555: 2|3 */

/*
 * The signed 8-bit dynamic map (bnb create_dynamic_map(signed=True)), 256
 * float32 bit patterns in ascending order; index 127 is 0.0, 255 is 1.0.
 */
#define LQ_DYNMAP_BITS_INIT { \
	0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u, \
	0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u, 0xbf4bcccdu, 0xbf483333u, \
	0xbf44999au, 0xbf410000u, 0xbf3d6666u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6666u, \
	0xbf27cccdu, 0xbf243334u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au, \
	0xbf0b0000u, 0xbf076666u, 0xbf03ccccu, 0xbf003333u, 0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au, \
	0xbedc6666u, 0xbed53333u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u, \
	0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u, 0xbe6f3333u, 0xbe60cccdu, \
	0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u, \
	0xbdc9eb85u, 0xbdc428f7u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c2au, 0xbda1999au, \
	0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147bu, 0xbd728f5du, 0xbd670a3du, \
	0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u, \
	0xbcfeb852u, 0xbce7ae15u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u, \
	0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u, \
	0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du, \
	0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu, \
	0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u, 0xb513a3b7u, 0x00000000u, \
	0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu, \
	0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du, \
	0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u, \
	0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u, \
	0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u, \
	0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du, \
	0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du, 0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au, \
	0x3da75c2au, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u, \
	0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e35999au, 0x3e440000u, 0x3e526666u, 0x3e60cccdu, \
	0x3e6f3333u, 0x3e7d9999u, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u, \
	0x3eb13333u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au, \
	0x3eeaccccu, 0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au, \
	0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243334u, 0x3f27cccdu, 0x3f2b6666u, \
	0x3f2f0000u, 0x3f32999au, 0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, 0x3f44999au, 0x3f483333u, \
	0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u, 0x3f5dcccdu, 0x3f616666u, 0x3f650000u, \
	0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u, 0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u }

#ifndef __cplusplus
LQ_STATIC_ASSERT(sizeof((const uint32_t[])LQ_NF4_BITS_INIT) == 16 * 4, "NF4 table size");
LQ_STATIC_ASSERT(sizeof((const uint32_t[])LQ_FP4_BITS_INIT) == 16 * 4, "FP4 table size");
LQ_STATIC_ASSERT(sizeof((const uint32_t[])LQ_NF4_THRESHOLD_BITS_INIT) == 15 * 4, "NF4 thresholds");
LQ_STATIC_ASSERT(sizeof((const uint32_t[])LQ_DYNMAP_BITS_INIT) == 256 * 4, "dynamic map size");
#endif

/* ------------------------------------------------------------ encoders */

/* NF4 code of a scaled value s (bnb dQuantizeNF4): strict '>', NaN -> 0. */
LQ_HD static inline int lq_nf4_encode(float s)
{
	return (s > LQ_NF4_T0) + (s > LQ_NF4_T1) + (s > LQ_NF4_T2) + (s > LQ_NF4_T3) +
	       (s > LQ_NF4_T4) + (s > LQ_NF4_T5) + (s > LQ_NF4_T6) + (s > LQ_NF4_T7) +
	       (s > LQ_NF4_T8) + (s > LQ_NF4_T9) + (s > LQ_NF4_T10) + (s > LQ_NF4_T11) +
	       (s > LQ_NF4_T12) + (s > LQ_NF4_T13) + (s > LQ_NF4_T14);
}

/* FP4 code of a scaled value s (bnb dQuantizeFP4 decision tree). */
LQ_HD static inline int lq_fp4_encode(float s)
{
	int sign = s < 0.0f ? 8 : 0; /* -0.0 and NaN get sign 0 */
	float a = s < 0.0f ? -s : s; /* fabsf except NaN, which compares false */
	int code;
	if (a > LQ_FP4_T_7_4) {
		if (a > LQ_FP4_T_5_2)
			code = a > LQ_FP4_T_2_3 ? 3 : 2;
		else
			code = a > LQ_FP4_T_4_5 ? 5 : 4;
	} else if (a > LQ_FP4_T_1_6) {
		code = a > LQ_FP4_T_6_7 ? 7 : 6;
	} else {
		code = a > LQ_FP4_T_0_1 ? 1 : 0;
	}
	return code + sign;
}

/*
 * 8-bit code of a scaled value s over the sorted 256-entry map c (bnb
 * dQuantize<0>): a fixed 7-step binary search, then a float32 midpoint test.
 * Reproduced literally so that ties and NaN behave as in CUDA.
 */
LQ_HD static inline int lq_dyn8_encode(const float *c, float s)
{
	int pivot = 127, lo_p = 0, hi_p = 255;
	float lo = -1.0f, hi = 1.0f, val = c[127];
	for (int step = 64; step > 0; step >>= 1) {
		if (s > val) {
			lo_p = pivot;
			lo = val;
			pivot += step;
		} else {
			hi_p = pivot;
			hi = val;
			pivot -= step;
		}
		val = c[pivot];
	}
	if (hi_p == 255)
		hi = c[255];
	if (lo_p == 0)
		lo = c[0];
	if (s > val)
		return (s > (hi + val) * 0.5f) ? hi_p : pivot;
	return (s < (lo + val) * 0.5f) ? lo_p : pivot;
}

/*
 * INT8 code of v = x * (127.0f / absmax): round half to even, clamp to
 * -127..127; NaN (absmax 0, NaN input) -> 0.
 */
LQ_HD static inline int lq_int8_encode(float v)
{
	if (!(v == v))
		return 0;
	float r = rintf(v);
	if (r > 127.0f)
		r = 127.0f;
	if (r < -127.0f)
		r = -127.0f;
	return (int)r;
}


/* ------------------------------------------------ bnb's fast-math reciprocal */

/*
 * bitsandbytes is built with --use_fast_math, so its CUDA kernels compute
 * 1.0f / absmax with the approximate reciprocal (MUFU.RCP), which differs from
 * the correctly rounded reciprocal by one ulp for about 13 percent of
 * mantissas.  It was measured on an H200 for all 2^23 mantissas
 * (tests/rcp/gen_rcp.cu; the difference depends on the mantissa only: it was
 * identical for the three exponents checked).  These bitmaps hold the
 * difference (+1 / -1 ulp) for every mantissa with at most 10 significant
 * bits, i.e. every absmax of a bf16 or f16 tensor (index = top 10 mantissa
 * bits).  Other mantissas use the correctly rounded reciprocal, which may
 * differ from bnb's by one ulp.
 */
#define LQ_RCP_PLUS_INIT { \
	0x00160800u, 0x00010000u, 0x08000000u, 0x00020306u, 0x02180400u, 0x00000000u, \
	0x00021800u, 0x10000006u, 0x00000010u, 0x00030500u, 0x04000000u, 0x00080000u, \
	0x03081804u, 0x00800202u, 0x00080462u, 0x0a040102u, 0x80090380u, 0x00180008u, \
	0x00000000u, 0x00080000u, 0x08000d80u, 0x30008018u, 0x01100000u, 0x00000000u, \
	0x002e0000u, 0x008020a0u, 0x00000000u, 0x20005500u, 0x09000000u, 0x00010001u, \
	0x18000100u, 0x00000020u, \
}
#define LQ_RCP_MINUS_INIT { \
	0x00004040u, 0x40004001u, 0x01c02040u, 0xc0000000u, 0x00000080u, 0x00090001u, \
	0x28400000u, 0x00000000u, 0x80040000u, 0x00000000u, 0x20000020u, 0x00000000u, \
	0x80020000u, 0x28000000u, 0x06000000u, 0x00000000u, 0x00000000u, 0x00004000u, \
	0x00000000u, 0x00000040u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00008000u, \
	0x00008000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u, 0x34400000u, \
	0x00000020u, 0x01040000u, \
}

/* 1.0f / a as bitsandbytes' CUDA kernels compute it (see above); plus and
 * minus are arrays made from LQ_RCP_PLUS_INIT / LQ_RCP_MINUS_INIT. */
LQ_HD static inline float lq_bnb_rcp(float a, const uint32_t *plus, const uint32_t *minus)
{
	float r = 1.0f / a;
	uint32_t u, ur;
	memcpy(&u, &a, 4);
	uint32_t e = (u >> 23) & 0xff;
	if ((u & 0x1fffu) || e == 0 || e >= 253) /* > 10 mantissa bits, subnormal, huge, inf/nan */
		return r;
	uint32_t idx = (u >> 13) & 1023u;
	memcpy(&ur, &r, 4);
	if (plus[idx >> 5] >> (idx & 31) & 1u)
		ur += 1;
	else if (minus[idx >> 5] >> (idx & 31) & 1u)
		ur -= 1;
	memcpy(&r, &ur, 4);
	return r;
}

/* ------------------------------------------------------------ runtimes */

/* The MLP activation a (LQ_ACT_*) of x, as both runtimes compute it. */
LQ_HD static inline float lq_act(int a, float x)
{
	switch (a) {
	case LQ_ACT_GELU_TANH:
	case LQ_ACT_GELU_NEW:
		return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
	case LQ_ACT_GELU:
		return (float)(0.5 * x * (1.0 + erf(x / 1.4142135623730951)));
	case LQ_ACT_RELU:
		return x > 0 ? x : 0;
	default:
		return x / (1.0f + expf(-x));
	}
}


/* The repetition penalty on one logit (transformers': s < 0 ? s * p : s /
 * p), rounded to nearest in float on the host and the device alike. */
LQ_HD static inline float lq_penalize(float s, float p)
{
#ifdef __CUDA_ARCH__
	return s < 0 ? __fmul_rn(s, p) : __fdiv_rn(s, p);
#else
	return s < 0 ? s * p : s / p;
#endif
}

/* ---------------------------------------------------------------- sampler
 * The end of lq_sample's pick, shared by the host (sample.c) and the device
 * (gpu/sample.cu's lq_cuda_pick), so that both draw the same token from the
 * same kept set and generator state. */

/* A key whose unsigned order is the float order of non-NaN v, -0 taken as
 * +0 (which it equals), so that equal floats have equal keys: the top-k's
 * radix selects and sort, host and device. */
LQ_HD static inline uint32_t lq_fkey(float v)
{
	uint32_t u;
	if (v == 0.0f)
		v = 0.0f;
	memcpy(&u, &v, 4);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

LQ_HD static inline uint64_t lq_rotl64(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256**: the next output, s advanced. */
LQ_HD static inline uint64_t lq_xoshiro_next(uint64_t s[4])
{
	const uint64_t res = lq_rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = lq_rotl64(s[3], 45);
	return res;
}

/* A uniform double in [0, 1) from an output: its top 53 bits. */
LQ_HD static inline double lq_uniform53(uint64_t x)
{
	return (double)(x >> 11) * 0x1.0p-53;
}

/*
 * The pick's arithmetic, in fixed point.  A kept token i (sorted: value
 * descending, then id ascending; l_0 the largest) weighs
 * exp(l_i - l_0) * 2^S, truncated to an integer, with S = lq_pick_shift(n)
 * for n kept tokens, so that every sum of weights is exact and below 2^62:
 * the host adds them in order, the device in parallel, and both get the
 * same sums, hence the same filters and the same draw.  A token whose
 * exp(l_i - l_0) is below 2^-S (2^-45 for 128,256 tokens) weighs 0 and is
 * never drawn; NaN weighs 0.
 *
 * Then, as transformers orders them: top-p keeps the first k_p tokens, k_p
 * the smallest i >= 1 whose tail weight (tokens i..n-1) is at most
 * lq_pick_toplim(top_p, total) (none: n); min-p keeps the tokens before
 * the first i >= 1 with exp(l_i - l_0) < min_p; the kept k = min of the
 * two.  The draw: r = lq_pick_target(x, W), W the first k tokens' weight
 * and x one generator output; the token drawn is the first i whose
 * cumulative weight (tokens 0..i) exceeds r (W = 0: token 0).
 */
LQ_HD static inline int lq_pick_shift(int64_t n)
{
	int b = 0;
	while (b < 62 && ((int64_t)1 << b) < n)
		b++;
	return 62 - b;
}

/* e = exp(l_i - l_0) as a weight (0 for NaN and e <= 0, 2^S for e >= 1). */
LQ_HD static inline uint64_t lq_pick_weight(double e, int S)
{
	if (!(e > 0))
		return 0;
	if (e >= 1)
		return (uint64_t)1 << S;
	return (uint64_t)(e * ldexp(1.0, S)); /* exact scaling, truncated */
}

/* Tails of at most this weight are dropped by top-p (0 < top_p < 1):
 * transformers drops the tokens whose cumulative probability from the
 * least likely is <= 1 - top_p. */
LQ_HD static inline uint64_t lq_pick_toplim(double top_p, uint64_t total)
{
	return (uint64_t)((1.0 - top_p) * (double)total);
}

/* floor(x53 * w / 2^53), x53 the top 53 bits of the output x (w < 2^62):
 * a weight position uniform in [0, w), by a 128-bit product in 32-bit
 * pieces (the same on the host and the device). */
LQ_HD static inline uint64_t lq_pick_target(uint64_t x, uint64_t w)
{
	const uint64_t a = x >> 11;
	const uint64_t al = a & 0xffffffffu, ah = a >> 32, bl = w & 0xffffffffu, bh = w >> 32;
	const uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
	const uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
	const uint64_t lo = (ll & 0xffffffffu) | (mid << 32);
	const uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
	return (hi << 11) | (lo >> 53);
}

#endif /* LQ_BLOCKS_H */
