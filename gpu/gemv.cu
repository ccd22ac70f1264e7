/*
 * gemv.cu - fast batch-1 dequant-GEMV y[N] = W[N,K] x[K] over the LQ block
 * layout (NF4/FP4 with or without double quant, INT8), bf16 or fp32
 * activations, fp32 accumulation.
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * Layout of the work: a block of 128 threads owns R consecutive rows at a
 * time (a persistent grid walks the row groups).  Each thread takes 16-byte
 * chunks of the packed row (32 codes for 4-bit, 16 for INT8), strided by 128
 * chunks, so a warp reads 512 contiguous bytes per row per step; R rows (and
 * 8 / R steps) of loads are issued before any is used.  Because block sizes
 * are multiples of 32 and a chunk is aligned to its size, a chunk never spans
 * two quantization blocks: the scale is rebuilt once per chunk in registers
 * (u8 code -> dynamic map in shared memory, times the nested scale, plus the
 * offset, with the reference's two float32 roundings) and applied to the
 * chunk's partial dot product.  4-bit codes are decoded a byte (two codes)
 * at a time through a 256-entry shared-memory table of bf16 pairs, one copy
 * per bank so that the 32 lanes never conflict.  When there are too few row
 * groups to fill the GPU, K is split over gridDim.y and the slices add into
 * y with atomics (y is cleared first).
 *
 * Precision: the 4-bit code values are used rounded to bf16 (relative error
 * <= 2^-9 per weight before the fp32 scale; bitsandbytes' bf16 GEMV does the
 * same); INT8 codes are exact.  Products and sums are fp32.
 *
 * Which kernel runs: with activations holding bf16 or fp16 values the
 * tensor-core kernel further down (k_gemv_tc; tc_takes) takes 4-bit weights
 * in the GPU tile layout (lq_cuda_tile; the runtime makes it at
 * --compute-dtype bf16/fp16 for block sizes >= 64 and K % 128 == 0), INT8
 * as stored (block sizes >= 64, K % 64 == 0) and unquantized 16-bit
 * weights; everything else (row-major 4-bit weights, float32 activations of
 * any value, the exact fp32 path, INT8 with lq_cuda_gemv_ex's rows or
 * ksplit_max set) goes through k_gemv_fast here.
 *
 * Speed (H200, bench_gemv, BENCHMARKS.md): in k_gemv_fast INT8 reaches
 * 76-91% of the copy bandwidth on the large shapes, and NF4 stays near
 * 35-41% because its 4-bit path is bound by instruction issue (about nine
 * instructions per packed byte: byte extract, LUT address, LDS, two bf16
 * unpacks, two FFMA, plus amortized x/scale work); the tensor-core kernel
 * reaches 71-95% for NF4 + DQ and 89-109% for INT8 + DQ on the same shapes
 * (float activations, bench_gemv --x32, thirty-second session).
 */
#include "lq_cuda.h"
#include "lq_blocks.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <string.h>
#include <type_traits>

/* Programmatic dependent launch only where the kernel runs from sm_90
 * code (lq_cuda_sm90_code): otherwise it has no wait for the previous
 * kernel, so it must not be launched early.  The answer of the first call
 * is kept in *cache. */
static bool pdl_ok(const void *kern, int major, int *cache)
{
	if (major < 9)
		return false;
	if (*cache < 0)
		*cache = lq_cuda_sm90_code(kern);
	return *cache == 1;
}

#define GEMV_THREADS 128
#define GEMV_LOADS 8 /* 16-byte weight loads in flight per thread */
#ifndef GEMV_MINBLOCKS
#define GEMV_MINBLOCKS 6 /* blocks per SM: the 33 KB of shared memory allow 6 */
#endif
/* k_gemv_fast with two batches of loads (DB): the registers of the second
 * allow 4 blocks per SM (at 5 or 6 the buffers spill) */
#define GEMV_MINBLOCKS_DB 4
/* DB for row groups of at least this many batches of loads per block (long
 * rows): on the H200 INT8 + DQ 4096 x 14336 (7 batches) went from 65 to 80%
 * of copy, while 14336 x 4096 and 128256 x 4096 (2 batches) went from 78 / 92
 * to 67 / 84% (bench_gemv, BENCHMARKS.md) */
#ifndef GEMV_DB_MIN
#define GEMV_DB_MIN 4
#endif

/* The code tables in global memory, read through L1 (__ldg) when a block
 * builds its shared-memory tables: each warp reads them at several indices
 * at once, which the constant cache would serve one address at a time
 * (ncu, 4096 x 14336: 12% of the tensor-core GEMV's stall samples were those reads). */
static __device__ const uint32_t g_nf4[16] = LQ_NF4_BITS_INIT;
static __device__ const uint32_t g_fp4[16] = LQ_FP4_BITS_INIT;
static __device__ const uint32_t g_dyn[256] = LQ_DYNMAP_BITS_INIT;

__device__ __forceinline__ uint4 ld_stream(const uint8_t *p)
{
	uint4 v;
	asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
		     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
		     : "l"(p));
	return v;
}

/* A 16-byte streaming load that asks L2 to fetch 256 bytes around it. */
__device__ __forceinline__ uint4 ld_stream_tc(const uint8_t *p)
{
	uint4 v;
	asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
		     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
		     : "l"(p));
	return v;
}

/* EPC activations of chunk c as floats. */
template <int EPC>
__device__ __forceinline__ void load_x(const float *x, uint64_t c, float *xf)
{
	const float4 *p = (const float4 *)(x + c * EPC);
#pragma unroll
	for (int i = 0; i < EPC / 4; i++) {
		float4 v = __ldg(p + i);
		xf[4 * i] = v.x;
		xf[4 * i + 1] = v.y;
		xf[4 * i + 2] = v.z;
		xf[4 * i + 3] = v.w;
	}
}

template <int EPC>
__device__ __forceinline__ void load_x(const __nv_bfloat16 *x, uint64_t c, float *xf)
{
	const uint4 *p = (const uint4 *)(x + c * EPC);
#pragma unroll
	for (int i = 0; i < EPC / 8; i++) {
		uint4 v = __ldg(p + i);
		uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
		for (int j = 0; j < 4; j++) {
			xf[8 * i + 2 * j] = __uint_as_float(w[j] << 16);
			xf[8 * i + 2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
		}
	}
}

/* Dot product of one 16-byte weight chunk with its activations (unscaled).
 * EX: exact fp32 code values (lut_lane[code << 5] holds table[code]). */
template <int QT, bool EX>
__device__ __forceinline__ float chunk_dot(uint4 q, const float *xf, const uint32_t *lut_lane)
{
	uint32_t w[4] = {q.x, q.y, q.z, q.w};
	float p0 = 0.0f, p1 = 0.0f;
	if (QT == LQ_QTYPE_INT8) {
#pragma unroll
		for (int i = 0; i < 4; i++) {
			uint32_t u = w[i] ^ 0x80808080u; /* int8 + 128 */
#pragma unroll
			for (int j = 0; j < 4; j++) {
				/* 0x4B0000uu as float is 2^23 + uu */
				float v = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7440u | j)) - 8388736.0f;
				if (j & 1)
					p1 = fmaf(v, xf[4 * i + j], p1);
				else
					p0 = fmaf(v, xf[4 * i + j], p0);
			}
		}
	} else if (EX) {
#pragma unroll
		for (int i = 0; i < 4; i++) {
#pragma unroll
			for (int j = 0; j < 4; j++) {
				uint32_t b = (w[i] >> (8 * j)) & 0xffu;
				p0 = fmaf(__uint_as_float(lut_lane[(b >> 4) << 5]), xf[8 * i + 2 * j], p0);
				p1 = fmaf(__uint_as_float(lut_lane[(b & 15) << 5]), xf[8 * i + 2 * j + 1], p1);
			}
		}
	} else {
#pragma unroll
		for (int i = 0; i < 4; i++) {
#pragma unroll
			for (int j = 0; j < 4; j++) {
				uint32_t b = (w[i] >> (8 * j)) & 0xffu;
				uint32_t e = lut_lane[b << 5];
				p0 = fmaf(__uint_as_float(e & 0xffff0000u), xf[8 * i + 2 * j], p0);
				p1 = fmaf(__uint_as_float(e << 16), xf[8 * i + 2 * j + 1], p1);
			}
		}
	}
	return p0 + p1;
}

template <bool DQ>
__device__ __forceinline__ float gemv_scale(const void *scales, const float *nested, float offset,
					    const float *dmap, uint64_t b)
{
	if (!DQ)
		return __ldg((const float *)scales + b);
	return lq_dq_scale(dmap[__ldg((const uint8_t *)scales + b)], __ldg(nested + (b >> LQ_QNESTED_SHIFT)), offset);
}

/* Up to LQ_GEMV_PARTS weights with the same K and layout, run as one grid
 * over the concatenation of their row groups (e.g. q, k and v). */
struct gemv_part {
	const uint8_t *data;
	const void *scales;
	const float *nested;
	float offset;
	uint64_t N;   /* rows */
	float *y;
	uint64_t g0;  /* first row group of this part */
};
struct gemv_parts {
	gemv_part p[LQ_GEMV_PARTS];
	int n;
};

template <int QT, bool DQ, typename XT, int R, bool EX, bool DB>
__global__ void __launch_bounds__(GEMV_THREADS, DB ? GEMV_MINBLOCKS_DB : GEMV_MINBLOCKS) k_gemv_fast(const __grid_constant__ gemv_parts P,
							   int bshift, uint64_t K, const XT *__restrict__ x,
							   uint64_t ngroups)
{
	constexpr int EPC = QT == LQ_QTYPE_INT8 ? 16 : 32; /* elements per 16-byte chunk */
	constexpr int U = GEMV_LOADS / R;                  /* chunk steps per batch of loads */
	constexpr bool Q4 = QT != LQ_QTYPE_INT8;
	__shared__ uint32_t lut[Q4 ? (EX ? 16 * 32 : 256 * 32) : 1];
	__shared__ float dmap[DQ ? 256 : 1];
	__shared__ float red[GEMV_THREADS / 32][R];
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

	if (Q4 && EX) {
		const uint32_t *tab = QT == LQ_QTYPE_NF4 ? g_nf4 : g_fp4;
		for (int i = tid; i < 16 * 32; i += GEMV_THREADS)
			lut[i] = __ldg(tab + (i >> 5));
	} else if (Q4) {
		const uint32_t *tab = QT == LQ_QTYPE_NF4 ? g_nf4 : g_fp4;
		for (int i = tid; i < 256 * 32; i += GEMV_THREADS) {
			int byte = i >> 5;
			uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(__uint_as_float(__ldg(tab + (byte >> 4)))));
			uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(__uint_as_float(__ldg(tab + (byte & 15)))));
			lut[i] = hi << 16 | lo;
		}
	}
	if (DQ)
		for (int i = tid; i < 256; i += GEMV_THREADS)
			dmap[i] = __uint_as_float(__ldg(g_dyn + i));
	__syncthreads();
	const uint32_t *lut_lane = lut + lane;
	/* programmatic dependent launch: everything above overlaps the previous
	 * kernel; x is its output */
#if __CUDA_ARCH__ >= 900
	cudaGridDependencySynchronize();
	cudaTriggerProgrammaticLaunchCompletion();
#endif

	const uint64_t cpr = K / EPC; /* chunks per row */
	const uint64_t c_begin = cpr * blockIdx.y / gridDim.y, c_end = cpr * (blockIdx.y + 1) / gridDim.y;
	const uint64_t row_bytes = Q4 ? K / 2 : K;
	const float iscale = QT == LQ_QTYPE_INT8 ? 1.0f / 127.0f : 1.0f;

	for (uint64_t gg = blockIdx.x; gg < ngroups; gg += gridDim.x) {
		int pi = 0;
#pragma unroll
		for (int i = 1; i < LQ_GEMV_PARTS; i++)
			if (i < P.n && gg >= P.p[i].g0)
				pi = i;
		const uint8_t *__restrict__ data = P.p[pi].data;
		const void *__restrict__ scales = P.p[pi].scales;
		const float *__restrict__ nested = P.p[pi].nested;
		const float offset = P.p[pi].offset;
		const uint64_t N = P.p[pi].N;
		float *__restrict__ y = P.p[pi].y;
		uint64_t row0 = (gg - P.p[pi].g0) * R;
		const uint8_t *rp[R];
		uint64_t rbase[R];
#pragma unroll
		for (int r = 0; r < R; r++) {
			uint64_t row = row0 + r < N ? row0 + r : N - 1;
			rp[r] = data + row * row_bytes;
			rbase[r] = row * K;
		}
		float acc[R];
#pragma unroll
		for (int r = 0; r < R; r++)
			acc[r] = 0.0f;

		/* GEMV_LOADS chunks per batch; with DB the next batch's loads are
		 * issued before this one's math (two buffers, ping-pong) */
		const uint64_t step = (uint64_t)GEMV_THREADS * U;
		auto issue = [&](uint64_t c0, uint4 (&q)[U][R]) {
#pragma unroll
			for (int u = 0; u < U; u++) {
				uint64_t c = c0 + (uint64_t)u * GEMV_THREADS;
#pragma unroll
				for (int r = 0; r < R; r++)
					if (c < c_end)
						q[u][r] = ld_stream(rp[r] + c * 16);
			}
		};
		auto math = [&](uint64_t c0, const uint4 (&q)[U][R]) {
#pragma unroll
			for (int u = 0; u < U; u++) {
				uint64_t c = c0 + (uint64_t)u * GEMV_THREADS;
				if (c >= c_end)
					break;
				float xf[EPC];
				load_x<EPC>(x, c, xf);
#pragma unroll
				for (int r = 0; r < R; r++) {
					float s = gemv_scale<DQ>(scales, nested, offset, dmap, (rbase[r] + c * EPC) >> bshift);
					if (QT == LQ_QTYPE_INT8)
						s = __fmul_rn(s, iscale);
					acc[r] = fmaf(s, chunk_dot<QT, EX>(q[u][r], xf, lut_lane), acc[r]);
				}
			}
		};
		if constexpr (DB) {
			uint4 qa[U][R], qb[U][R];
			uint64_t c0 = c_begin + tid;
			issue(c0, qa);
			for (; c0 < c_end; c0 += 2 * step) {
				issue(c0 + step, qb);
				math(c0, qa);
				if (c0 + step >= c_end)
					break;
				issue(c0 + 2 * step, qa);
				math(c0 + step, qb);
			}
		} else {
			for (uint64_t c0 = c_begin + tid; c0 < c_end; c0 += step) {
				uint4 q[U][R];
				issue(c0, q);
				math(c0, q);
			}
		}
#pragma unroll
		for (int r = 0; r < R; r++) {
			float v = acc[r];
#pragma unroll
			for (int o = 16; o; o >>= 1)
				v += __shfl_xor_sync(0xffffffffu, v, o);
			if (lane == 0)
				red[warp][r] = v;
		}
		__syncthreads();
		if (tid < R && row0 + tid < N) {
			float v = 0.0f;
#pragma unroll
			for (int w = 0; w < GEMV_THREADS / 32; w++)
				v += red[w][tid];
			if (gridDim.y > 1)
				atomicAdd(y + row0 + tid, v);
			else
				y[row0 + tid] = v;
		}
		__syncthreads();
	}
}

template <int QT, bool DQ, typename XT, int R, bool EX = false>
static int launch_t(const struct lq_cuda_qweight *const *ws, float *const *ys, int nw, uint64_t K, const XT *x,
		    cudaStream_t st, int grid_max, int ksplit_max)
{
	const void *kern = (const void *)k_gemv_fast<QT, DQ, XT, R, EX, false>;
	bool db = false; /* the double-buffered kernel */
	int dev = 0, sms = 0, major = 0;
	uint64_t resident = 0;
	/* the blocks of kern resident at once, at most grid_max */
	auto set_resident = [&]() {
		int per_sm = 0;
		cudaError_t r = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, GEMV_THREADS, 0);
		resident = (uint64_t)sms * (per_sm > 0 ? per_sm : 1);
		if (grid_max > 0 && (uint64_t)grid_max < resident)
			resident = (uint64_t)grid_max;
		return r;
	};
	cudaError_t e;
	if ((e = cudaGetDevice(&dev)) != cudaSuccess ||
	    (e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
	    (e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess ||
	    (e = set_resident()) != cudaSuccess)
		return (int)e;
	gemv_parts P;
	memset(&P, 0, sizeof P);
	P.n = nw;
	uint64_t groups = 0;
	for (int i = 0; i < nw; i++) {
		const struct lq_cuda_qweight *w = ws[i];
		P.p[i].data = w->d_data;
		P.p[i].scales = w->d_scales;
		P.p[i].nested = w->d_nested;
		P.p[i].offset = w->offset;
		P.p[i].N = w->n / K;
		P.p[i].y = ys[i];
		P.p[i].g0 = groups;
		groups += (P.p[i].N + R - 1) / R;
	}
	/* split K over blocks when the row groups leave most of the GPU idle */
	const uint64_t epc = QT == LQ_QTYPE_INT8 ? 16 : 32, cpr = K / epc;
	uint64_t ks = 1;
	if (groups * 2 <= resident) {
		ks = resident / groups;
		uint64_t kmax = cpr / GEMV_THREADS; /* at least a chunk per thread */
		if (ks > kmax)
			ks = kmax;
		if (ksplit_max > 0 && ks > (uint64_t)ksplit_max)
			ks = (uint64_t)ksplit_max;
		if (ks > 65535)
			ks = 65535;
		if (ks < 1)
			ks = 1;
	}
	/* long rows, one block each: the double-buffered kernel (GEMV_DB_MIN) */
	if constexpr (R == 8 && !EX) {
		const uint64_t batches = cpr / ((uint64_t)GEMV_THREADS * (GEMV_LOADS / R));
		if (ks == 1 && batches >= GEMV_DB_MIN) {
			kern = (const void *)k_gemv_fast<QT, DQ, XT, R, EX, true>;
			db = true;
			if ((e = set_resident()) != cudaSuccess)
				return (int)e;
		}
	}
	uint64_t gx = groups < resident ? groups : resident;
	for (int i = 0; ks > 1 && i < nw; i++)
		if ((e = cudaMemsetAsync(P.p[i].y, 0, P.p[i].N * sizeof(float), st)) != cudaSuccess)
			return (int)e;
	cudaLaunchConfig_t cfg = {};
	cfg.gridDim = dim3((unsigned)gx, (unsigned)ks);
	cfg.blockDim = dim3(GEMV_THREADS);
	cfg.stream = st;
	cudaLaunchAttribute attr[1];
	attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	attr[0].val.programmaticStreamSerializationAllowed = 1;
	static int code90[2] = {-1, -1}; /* per kernel: single, double buffer */
	if (ks == 1 && pdl_ok(kern, major, &code90[db])) {
		cfg.attrs = attr;
		cfg.numAttrs = 1;
	}
	int bshift = lq_cuda_bshift(ws[0]->p.block_size);
	void *args[] = {(void *)&P, (void *)&bshift, (void *)&K, (void *)&x, (void *)&groups};
	e = cudaLaunchKernelExC(&cfg, kern, args);
	return e != cudaSuccess ? (int)e : (int)cudaGetLastError();
}

template <int QT, bool DQ, typename XT>
static int launch_r(const struct lq_cuda_qweight *const *w, float *const *y, int nw, uint64_t K, const XT *x,
		    cudaStream_t st, int rows, int grid_max, int ksplit_max)
{
	if (rows == 0) {
		rows = 8; /* fastest on every large H200 shape measured (bench_gemv --sweep) */
	}
	switch (rows) {
	case 1: return launch_t<QT, DQ, XT, 1>(w, y, nw, K, x, st, grid_max, ksplit_max);
	case 2: return launch_t<QT, DQ, XT, 2>(w, y, nw, K, x, st, grid_max, ksplit_max);
	case 4: return launch_t<QT, DQ, XT, 4>(w, y, nw, K, x, st, grid_max, ksplit_max);
	case 8: return launch_t<QT, DQ, XT, 8>(w, y, nw, K, x, st, grid_max, ksplit_max);
	}
	return (int)cudaErrorInvalidValue;
}

template <typename XT>
static int launch_q(const struct lq_cuda_qweight *const *w, float *const *y, int nw, uint64_t K, const XT *x,
		    cudaStream_t st, int rows, int grid_max, int ksplit_max)
{
	int dq = w[0]->p.double_quant != 0;
	switch (w[0]->p.qtype) {
	case LQ_QTYPE_NF4:
		return dq ? launch_r<LQ_QTYPE_NF4, true, XT>(w, y, nw, K, x, st, rows, grid_max, ksplit_max)
			  : launch_r<LQ_QTYPE_NF4, false, XT>(w, y, nw, K, x, st, rows, grid_max, ksplit_max);
	case LQ_QTYPE_FP4:
		return dq ? launch_r<LQ_QTYPE_FP4, true, XT>(w, y, nw, K, x, st, rows, grid_max, ksplit_max)
			  : launch_r<LQ_QTYPE_FP4, false, XT>(w, y, nw, K, x, st, rows, grid_max, ksplit_max);
	case LQ_QTYPE_INT8:
		return dq ? launch_r<LQ_QTYPE_INT8, true, XT>(w, y, nw, K, x, st, rows, grid_max, ksplit_max)
			  : launch_r<LQ_QTYPE_INT8, false, XT>(w, y, nw, K, x, st, rows, grid_max, ksplit_max);
	}
	return (int)cudaErrorInvalidValue;
}

/* ------------------------------------------------------------------------
 * Tensor-core 4-bit and INT8 GEMV (activations holding bf16 or fp16 values).
 *
 * Weights are in the GPU tile layout (formats/LQ-FORMAT.md, made by
 * lq_cuda_tile at load time): a warp owns a tile of 16 rows and walks K in
 * spans of 128 elements, one 1024-byte record per tile and span (16 rows x
 * 64 packed bytes); lane (g, c) (g = lane / 4, c = lane % 4) loads the
 * 16-byte chunk c of rows g and g + 8 -- bytes 16 * lane and 512 + 16 * lane
 * of the record, so each load instruction of the warp covers 512 contiguous
 * bytes -- and the scale codes of its 16 rows lie in one 16-byte group per
 * block.  It decodes its chunk a byte (two codes) at a
 * time into the bf16 (fp16) pair that an mma.m16n8k16 A register holds --
 * one PRMT builds the shared-memory address (code in byte 1, lane in byte
 * 0: a 256-entry table with one copy per bank), one LDS fetches the pair.
 * The dot product is permutation-invariant in k, so each lane feeds its own
 * chunk's bytes into its own k slots; B column 0 carries the activations of
 * chunks 0 and 1, column 1 those of chunks 2 and 3 (lanes (0, 0), (0, 1),
 * (1, 2), (1, 3) supply them, every other B entry is zero), so D's columns 0
 * and 1 are the partial sums of the span's two 64-element halves.  A half
 * never spans two quantization blocks (block size >= 64), so after the span
 * lane (g, 0) applies one fp32 block scale per row and half (the four scale
 * codes are loaded by lanes (g, 0..3); the double-quant map has one copy per
 * lane in the code table's unused half) and accumulates in fp32.  The
 * products are exact in fp32 and the tensor core accumulates in fp32.
 *
 * INT8 weights stay as stored (row-major): spans of 64 elements, lane (g, c)
 * loads 16 bytes of rows g and g + 8 (a row's four lanes read its 64
 * contiguous bytes), and its scales from the row-major scale part.  A
 * weight v becomes an exact fp16 integer without a table -- v xor 0x80 into
 * the low byte of 0x64uu (1024 + uu) by one PRMT per pair, minus 1152 by
 * one HSUB2 -- so the mma is fp16 and x is staged as fp16: as is at fp16
 * compute, and at bf16 scaled by a power of two (see xmul below).
 *
 * One block of 16 warps per SM (persistent); a work item is 16 / WK tiles,
 * each split over WK warps along K (WK: 4, 8 or 16, whichever launch_tc's
 * model of the items' rounds and their setup and flush says is fastest);
 * the warps' partial sums meet in shared memory, and every TC_CH items the
 * block adds them up in a fixed order and stores y: two barriers per TC_CH
 * items, no atomics, deterministic.
 * The math takes two spans at a time in straight-line code (independent
 * mma chains); weight loads run 2 * TC_DEPTH spans ahead of it, across item
 * boundaries; the first ones are issued around the table build (half
 * before, half after) and before waiting for the previous kernel
 * (programmatic dependent launch).
 * TC_DEPTH and TC_CH are tuning knobs (-D...); on the H200 the defaults
 * were best or within 2%, as were interleaved K slices and other L2
 * prefetch sizes (BENCHMARKS.md).  -DTC_NOMATH (diagnostic only, wrong
 * results) leaves out the decode and the mma: the loads and bookkeeping
 * alone reach 94-104% of the copy bandwidth on the large shapes, so the
 * math, not the memory access pattern, is what bounds the kernel.  Measured
 * and not kept (BENCHMARKS.md, twenty-fourth session): the 4-bit codes
 * decoded from registers (PRMT lookups of the codebook's bytes, 21 ALU
 * instructions per 8 codes) for any share of a span's words -- the ALU
 * binds the loop as much as the table does -- and the GEMVs of a layer
 * chained in one launch with grid barriers, which cost more per boundary
 * than programmatic dependent launch; (BENCHMARKS.md, thirty-first
 * session) the weights staged by the bulk-copy engine in a shared-
 * memory ring on mbarriers: 20-25% slower, since lane 0's refills cost
 * instructions and instruction fetch, and 1-2 KB copies feed the loop
 * more slowly than the register loads even without the math.
 * ---------------------------------------------------------------------- */
#define TC_THREADS 512
#define TC_WARPS (TC_THREADS / 32)
#ifndef TC_DEPTH
#define TC_DEPTH 2
#endif
#define TC_LUT_BYTES 65536 /* 256 codes x 256 bytes (32 lanes x 4 bytes used) */
#define TC_SPAN 128        /* elements of K per warp step */
#define TC_CH 8            /* work items between two reductions of their partial sums */
#ifndef TC_WKL_MIN
#define TC_WKL_MIN 2 /* launch_tc: the fewest warps along K, as a log2 (4-bit, 16-bit) */
#endif
#ifndef TC_WKL_MIN8
#define TC_WKL_MIN8 3 /* the same for INT8 */
#endif
#ifndef TC_ROUNDS_MIN
#define TC_ROUNDS_MIN 3 /* launch_tc: the fewest rounds of items for fewer warps along K than a row allows */
#endif
#ifndef TC_ITEM_COST2
#define TC_ITEM_COST2 2 /* launch_tc: an item's setup and flush, in half spans per warp */
#endif
#ifndef TC_NORM_REG
#define TC_NORM_REG 4 /* float4s of x per thread held across the fused norm's barrier */
#endif

#ifndef TC_XREG
/* float4s of plain (not normalized) float32 x per thread read in one round
 * trip before any is stored (0: a loop, which the compiler unrolled into
 * several round trips for the down GEMV's K of 14336; 8: 0.01 ms per 8B
 * decode step faster, BENCHMARKS.md) */
#define TC_XREG 8
#endif

/* Thread tid's float4s i = tid + j * TC_THREADS < n4 (j < R) in one round
 * trip: ld(j, i) issues each load into the caller's registers, then use(j,
 * i) consumes them, so that no use waits before every load is in flight. */
template <int R, typename LD, typename USE>
static __device__ __forceinline__ void tc_held(uint32_t tid, uint32_t n4, LD ld, USE use)
{
#pragma unroll
	for (int j = 0; j < R; j++)
		if (tid + j * TC_THREADS < n4)
			ld(j, tid + j * TC_THREADS);
#pragma unroll
	for (int j = 0; j < R; j++)
		if (tid + j * TC_THREADS < n4)
			use(j, tid + j * TC_THREADS);
}

/*
 * Shared memory: the table must start at a multiple of 64 KiB of the shared
 * window.  The rest (the double-quant map of INT8 weights, partial sums, x:
 * tc_rest bytes; 4-bit weights keep their map in the table) goes below
 * it when the room that the alignment leaves there holds it, else above it.
 * Dynamic shared memory starts after the `reserved` bytes the system keeps at
 * the window's start (1 KB on sm_90), so the request is what that layout
 * needs and no more: a smaller request measured faster (BENCHMARKS.md).
 */
/* Whether the rest holds the 1 KB double-quant map: 4-bit weights keep a copy
 * per lane in the code table's unused half instead (k_gemv_tc's DML). */
__host__ __device__ constexpr bool tc_map(int qt, bool dq)
{
	return dq && qt != LQ_QTYPE_NF4 && qt != LQ_QTYPE_FP4;
}

__host__ __device__ static inline uint32_t tc_rest(uint64_t K, bool map)
{
	return (map ? 256 * 4 : 0) + TC_CH * TC_WARPS * 16 * 4 + (uint32_t)K * 2;
}

static size_t tc_smem(uint64_t K, bool map, int reserved)
{
	const size_t front = (TC_LUT_BYTES - (size_t)reserved % TC_LUT_BYTES) % TC_LUT_BYTES, rest = tc_rest(K, map);
	return front >= rest ? front + TC_LUT_BYTES : front + TC_LUT_BYTES + rest;
}

/* The pair for byte k of word w from this lane's copy of the table: lut4 is
 * the table's shared-window address (a multiple of 64 KiB) plus lane * 4,
 * so one PRMT (the code into byte 1) makes the address. */
__device__ __forceinline__ uint32_t tc_lut(uint32_t w, uint32_t lut4, int k)
{
	uint32_t v, a = __byte_perm(w, lut4, 0x7604u | (uint32_t)k << 4);
	asm("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a));
	return v;
}

/* Bytes 2h, 2h + 1 of u (int8 weights xor 0x80: v + 128) as the fp16 pair
 * (v0, v1): 0x64uu is 1024 + uu, exact, and 1152 = 1024 + 128 comes off. */
__device__ __forceinline__ uint32_t tc_i8_pair(uint32_t u, int h)
{
	const uint32_t v = __byte_perm(u, 0x64646464u, h ? 0x4342u : 0x4140u);
	__half2 x = *(const __half2 *)&v;
	x = __hsub2(x, __half2(__float2half_rn(1152.0f), __float2half_rn(1152.0f)));
	return *(const uint32_t *)&x;
}

struct tc_slot {
	uint4 a, b;   /* chunk c of rows g and g + 8 */
	uint32_t s;   /* this lane's scale: u8 code (double quant) or float bits */
	float n;      /* its nested scale */
	float off;    /* the part's double-quant offset */
};

/* The parts of a launch, in tiles of 16 rows (32-bit: checked at launch). */
struct tc_part {
	const uint8_t *data;  /* tile layout */
	const void *scales;   /* tile layout */
	const float *nested;
	float *y;
	float offset;
	uint32_t N;  /* rows */
	uint32_t t0; /* first tile; UINT32_MAX for an unused part */
};
struct tc_parts {
	tc_part p[LQ_GEMV_PARTS];
	uint32_t seq; /* launch number (TC_TRACE builds only) */
	const float *pre_add, *pre_w; /* PRE: lq_gemv_fuse's */
	float *x_out;
};

#ifdef TC_TRACE
/* Diagnostic builds only (-DTC_TRACE): thread 0 of every block records
 * %globaltimer at entry, after issuing the first half of the first weight
 * loads (and the table's reads), after the table build and the other half
 * (before the wait for the previous kernel), after the wait,
 * after staging x and at exit, and then the block's multiprocessor (%smid),
 * per launch (the seq-th launch_tc
 * call, modulo TC_TR_SEQ; graph replays overwrite their slots); the table
 * is written to $LQ_TC_TRACE at exit (make GPU_TRACE=1; tests/gpu_trace.py
 * reads it). */
#define TC_TR_SEQ 1024
#define TC_TR_BLK 256
#define TC_TR_EV 7 /* six stamps, then %smid */
__device__ unsigned long long g_tc_trace[TC_TR_SEQ * TC_TR_BLK * TC_TR_EV];
#define TC_TR_PUT(ev, v)                                                                               \
	do {                                                                                           \
		if (threadIdx.x == 0 && blockIdx.x < TC_TR_BLK)                                        \
			g_tc_trace[((P.seq % TC_TR_SEQ) * TC_TR_BLK + blockIdx.x) * TC_TR_EV + (ev)] = (v); \
	} while (0)
#define TC_TR(ev) TC_TR_PUT(ev, lq_globaltimer())
#define TC_TR_SM() TC_TR_PUT(6, lq_smid())
#else
#define TC_TR(ev) do { } while (0)
#define TC_TR_SM() do { } while (0)
#endif

__device__ __forceinline__ int tc_part_of(const tc_parts &P, uint32_t tile)
{
	int pi = 0;
#pragma unroll
	for (int i = 1; i < LQ_GEMV_PARTS; i++)
		pi += tile >= P.p[i].t0;
	return pi;
}

/* The code table's reads before the block's first weight loads: 0 never,
 * 1 for float x (the decode step's launches), 2 always.  Float x: the 8B
 * decode step 1% faster, the loop as fast (bench_gemv --x32).  bf16 x: the
 * loop as ptxas then schedules it lost 11 points of the copy figure on
 * 128256 x 4096 (BENCHMARKS.md, twenty-ninth session). */
#ifndef TC_TABFIRST
#define TC_TABFIRST 1
#endif

#ifndef TC_PRE_REG
#define TC_PRE_REG 2 /* PRE: float4s per thread of each of x, pre_add and the two norms' weights held (K <= 4096; 3 spills) */
#endif

template <int QT, bool DQ, bool F16, typename XT, bool PRE = false>
__global__ void __launch_bounds__(TC_THREADS, 1) k_gemv_tc(const __grid_constant__ tc_parts P, int bshift,
							   uint32_t K, const XT *__restrict__ x, uint32_t ntiles,
							   int wkl, const float *__restrict__ nw, float eps, int fl,
							   float *act_y, int act)
{
	extern __shared__ __align__(16) uint8_t tc_sm[];
	const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(tc_sm);
	const uint32_t lut_s = (sbase + TC_LUT_BYTES - 1) & ~(uint32_t)(TC_LUT_BYTES - 1);
	uint8_t *lut = tc_sm + (lut_s - sbase);
	constexpr bool MAP = tc_map(QT, DQ);
	const uint32_t rest = tc_rest(K, MAP);
	float *dmap = (float *)(lut_s - sbase >= rest ? tc_sm : lut + TC_LUT_BYTES); /* tc_smem's layout */
	{
		uint32_t dsz;
		asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dsz));
		if ((uint32_t)((uint8_t *)dmap - tc_sm) + rest > dsz || lut_s + TC_LUT_BYTES > sbase + dsz)
			__trap(); /* the window does not start where launch_tc assumed */
	}
	float *red = dmap + (MAP ? 256 : 0); /* [TC_CH][TC_WARPS][16] */
	uint32_t *xs = (uint32_t *)(red + TC_CH * TC_WARPS * 16);

	TC_TR(0);
	TC_TR_SM();
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int g = lane >> 2, c = lane & 3;
	const uint32_t lut4 = lut_s | (uint32_t)lane << 2;
	const int WK = 1 << wkl, WT = TC_WARPS >> wkl;
	const int wt = warp >> wkl, wk = warp & (WK - 1);
	/* INT8 (I8): weights row-major as stored, spans of 64 (1 KB per tile);
	 * unquantized 16-bit values (D16: bf16, fp16 at F16) row-major, spans of
	 * 32; 4-bit: the tile layout, spans of 128 */
	constexpr bool I8 = QT == LQ_QTYPE_INT8, D16 = QT == LQ_QTYPE_NONE, RM = I8 || D16;
	constexpr uint32_t SPAN = D16 ? 32 : I8 ? 64 : TC_SPAN, ES = D16 ? 2 : 1; /* ES: bytes per element (RM) */
	constexpr bool DML = DQ && !MAP; /* the double-quant map in the code table's gaps */
	const uint32_t spr = K / SPAN;
	/* warp wk owns spans [s_lo, s_lo + m) of each row of its tile (m >= 1: WK <= spr) */
	const uint32_t s_lo = (spr * (uint32_t)wk) >> wkl;
	const uint32_t m = ((spr * (uint32_t)(wk + 1)) >> wkl) - s_lo;
	const uint32_t nitems = (ntiles + (uint32_t)WT - 1) / (uint32_t)WT;
	const uint32_t ni = (nitems - blockIdx.x + gridDim.x - 1) / gridDim.x;
	const uint32_t Q = ni * m;
	const uint32_t nbr = K >> bshift; /* blocks per row */
	const uint32_t lrow = (uint32_t)g + ((uint32_t)c >> 1) * 8; /* the row of this lane's scale */

	/* load side: pointers of the next span to fetch */
	uint32_t l_item = 0, l_left = m;
	const uint8_t *pa;      /* this lane's chunk of row g; row g + 8 is boff bytes on */
	uint64_t boff = 512;
	const uint8_t *scl;     /* scale entry of this lane's row, block 0 (tile layout) */
	const float *nst;
	float l_off;
	uint32_t rowblk;        /* row * nbr: the row-major block number of block 0 (32-bit: checked at launch) */
	uint32_t l_e = 0;       /* column of this lane's scale block */
	/* act_y: gate (part 0) and up (part 1) in pairs of tiles, tile wt / 2 of
	 * the item's pairs from part wt % 2 */
	const uint32_t T0 = P.p[1].t0;
	auto setup = [&](uint32_t item) {
		uint32_t tile = (blockIdx.x + item * gridDim.x) * (uint32_t)WT + (uint32_t)wt;
		tile = min(tile, ntiles - 1); /* a partial last item: read valid rows, store nothing */
		if (act_y)
			tile = ((uint32_t)wt & 1) * T0 +
			       min((blockIdx.x + item * gridDim.x) * (uint32_t)(WT / 2) + ((uint32_t)wt >> 1), T0 - 1);
		const tc_part &pp = P.p[tc_part_of(P, tile)];
		const uint32_t lt = tile - pp.t0;
		if (RM) {
			rowblk = min(lt * 16 + lrow, pp.N - 1) * nbr; /* padding rows: any valid index */
			/* rows g and g + 8 of the tile (padding rows: the last row), the
			 * scale of row lrow, as stored */
			const uint32_t rg = min(lt * 16 + (uint32_t)g, pp.N - 1), rb = min(lt * 16 + 8 + (uint32_t)g, pp.N - 1);
			pa = pp.data + ((uint64_t)rg * K + s_lo * SPAN) * ES + (uint32_t)c * 16;
			boff = (uint64_t)(rb - rg) * K * ES;
			scl = (const uint8_t *)pp.scales + (uint64_t)rowblk * (DQ ? 1 : 4);
			l_e = s_lo * SPAN;
		} else {
			pa = pp.data + ((uint64_t)lt * spr + s_lo) * 1024 + (uint32_t)lane * 16;
			scl = (const uint8_t *)pp.scales + ((uint64_t)lt * nbr * 16 + lrow) * (DQ ? 1 : 4);
			rowblk = min(lt * 16 + lrow, pp.N - 1) * nbr; /* padding rows: any valid index */
			l_e = s_lo * TC_SPAN + (c & 1) * 64;
		}
		nst = pp.nested;
		l_off = pp.offset;
	};
	constexpr uint32_t LSTEP = RM ? SPAN * ES : 1024; /* bytes between a lane's chunks of consecutive spans */
	/* span j (0 or 1) past the load side's position, without advancing it */
	auto load_at = [&](tc_slot &s, int j) {
		s.a = ld_stream_tc(pa + j * LSTEP);
		s.b = ld_stream_tc(pa + boff + j * LSTEP);
		uint32_t kb = (l_e + j * SPAN) >> bshift;
		constexpr uint32_t sst = I8 ? 1 : 16; /* scale entries between blocks */
		if (D16) {
			s.s = 0; /* no scales */
			s.n = 0.0f;
		} else if (DQ) {
			s.s = __ldg(scl + kb * sst);
			s.n = __ldg(nst + ((rowblk + kb) >> LQ_QNESTED_SHIFT));
		} else {
			s.s = __float_as_uint(__ldg((const float *)scl + kb * sst));
		}
		s.off = l_off;
	};
	/* the load side's position n (1 or 2, within the item) spans on */
	auto advance = [&](uint32_t n) {
		l_left -= n;
		if (l_left) {
			pa += n * LSTEP;
			l_e += n * SPAN;
		} else {
			l_left = m;
			if (++l_item < ni)
				setup(l_item);
		}
	};
	auto load = [&](tc_slot &s) {
		load_at(s, 0);
		advance(1);
	};

	tc_slot buf[2 * TC_DEPTH];
	uint32_t lq = 0;
	setup(0);
	/* slots d0..d1-1 of the first 2 * TC_DEPTH loads */
	auto issue = [&](int d0, int d1) {
#pragma unroll
		for (int d = 0; d < 2 * TC_DEPTH; d++) {
			if (d < d0 || d >= d1)
				continue;
			buf[d].s = 0;
			buf[d].n = 0.0f;
			if (lq < Q) {
				load(buf[d]);
				lq++;
			}
		}
	};
	/* The prologue: half the first weight loads, the table, the other
	 * half.  The table build is on the critical path of every launch;
	 * issuing all the loads first (2.14 ms per 8B decode step) or the
	 * whole table first (2.13) was slower than splitting them (2.10).
	 * TC_TABFIRST: the table's reads go out before the weight loads, so
	 * that they do not queue behind them, and the stores follow them. */
	{
		/* four codes per warp and step, each lane storing four lanes' copies
		 * (one 16-byte store where there were four 4-byte ones); the steps
		 * unrolled, so that their table reads share one round trip */
		const uint32_t *tab = QT == LQ_QTYPE_NF4 ? g_nf4 : g_fp4;
		static_assert(256 % (TC_WARPS * 4) == 0, "the table build's steps");
		static_assert(TC_THREADS >= 256, "INT8's double-quant map: one entry per thread");
		constexpr int NIT = RM ? 0 : 256 / (TC_WARPS * 4); /* INT8, 16-bit: no table */
		uint32_t thi[NIT > 0 ? NIT : 1], tlo[NIT > 0 ? NIT : 1], tm[NIT > 0 ? NIT : 1];
		auto tab_ld = [&]() {
#pragma unroll
			for (int it = 0; it < NIT; it++) {
				const int e = it * TC_WARPS * 4 + warp * 4 + (lane >> 3);
				thi[it] = __ldg(tab + (e >> 4));
				tlo[it] = __ldg(tab + (e & 15));
				if (DML)
					tm[it] = __ldg(g_dyn + e);
			}
			if (MAP && tid < 256)
				tm[0] = __ldg(g_dyn + tid);
		};
		constexpr bool TF = TC_TABFIRST == 2 || (TC_TABFIRST == 1 && sizeof(XT) == 4);
		if (TF) {
			tab_ld();
			issue(0, TC_DEPTH);
		} else {
			issue(0, TC_DEPTH);
			tab_ld();
		}
		TC_TR(1);
#pragma unroll
		for (int it = 0; it < NIT; it++) {
			const int e = it * TC_WARPS * 4 + warp * 4 + (lane >> 3);
			const uint32_t v = lq_pack16<F16>(__uint_as_float(thi[it]), __uint_as_float(tlo[it]));
			*(uint4 *)(lut + e * 256 + (lane & 7) * 16) = make_uint4(v, v, v, v);
			/* DML: the double-quant map, one copy per lane in the row's
			 * unused upper 128 bytes: lane l reads entry e at e * 256 +
			 * 128 + 4 * l, so a warp's 32 lookups take one wavefront (a
			 * single 256-entry map took several: bank conflicts) */
			if (DML)
				*(uint4 *)(lut + e * 256 + 128 + (lane & 7) * 16) = make_uint4(tm[it], tm[it], tm[it], tm[it]);
		}
		if (MAP && tid < 256)
			dmap[tid] = __uint_as_float(tm[0]);
	}
	issue(TC_DEPTH, 2 * TC_DEPTH);
	TC_TR(2);
#if __CUDA_ARCH__ >= 900
	cudaGridDependencySynchronize();
	cudaTriggerProgrammaticLaunchCompletion();
#endif
	TC_TR(3);
	/* the fused norms' pieces: h * w, or h * (1 + w) (Gemma); a float4's
	 * sum of squares; the block's sum of ss as 1 / rms, through red[slot *
	 * TC_WARPS ..] (red is free until the first flush, after the barrier
	 * below); the normalized float4 i, rounded to the compute dtype, into xs */
	const bool plus1 = fl & LQ_GEMV_NORM_PLUS_ONE;
	auto nmul = [&](float h, float w) { return plus1 ? h * (1.0f + w) : w * h; };
	auto sq = [](float4 v, float &ss) {
		ss = fmaf(v.x, v.x, ss);
		ss = fmaf(v.y, v.y, ss);
		ss = fmaf(v.z, v.z, ss);
		ss = fmaf(v.w, v.w, ss);
	};
	auto bsum = [&](float ss, int slot) {
		for (int o = 16; o; o >>= 1)
			ss += __shfl_xor_sync(0xffffffffu, ss, o);
		if (lane == 0)
			red[slot * TC_WARPS + warp] = ss;
		__syncthreads();
		float tot = 0.0f;
		for (int w = 0; w < TC_WARPS; w++)
			tot += red[slot * TC_WARPS + w];
		return (float)(1.0 / sqrt((double)(tot / (float)K + eps)));
	};
	auto put = [&](uint32_t i, float4 v, float4 wv, float inv) {
		const float a = nmul(v.x * inv, wv.x), b = nmul(v.y * inv, wv.y), c2 = nmul(v.z * inv, wv.z),
			    d = nmul(v.w * inv, wv.w);
		((uint2 *)xs)[i] = make_uint2(lq_pack16<F16>(a, b), lq_pack16<F16>(c2, d));
	};
	if (sizeof(XT) == 2) {
		const uint4 *xv = (const uint4 *)x;
		for (uint32_t i = tid; i < K / 8; i += TC_THREADS)
			((uint4 *)xs)[i] = __ldg(xv + i);
	} else if (PRE) {
		/* Gemma 2's sandwich norm of the previous sublayer first: x' = x +
		 * RMSNorm(pre_add) * pre_w, as k_rmsnorm4 adds it to the residual
		 * stream (block 0 stores x' to x_out), then the input RMSNorm(x')
		 * * nw; up to 4 * TC_PRE_REG * TC_THREADS elements the four
		 * vectors are read in one round trip and held, longer rows are
		 * read again for each pass */
		const float4 *xv = (const float4 *)x, *ov = (const float4 *)P.pre_add, *pv = (const float4 *)P.pre_w;
		const float4 *wv4 = (const float4 *)nw;
		float4 *xo = (float4 *)P.x_out;
		const uint32_t n4 = K / 4;
		const bool st = blockIdx.x == 0;
		auto resid = [&](float4 xr, float4 o, float4 p, float inv) {
			return make_float4(xr.x + nmul(o.x * inv, p.x), xr.y + nmul(o.y * inv, p.y), xr.z + nmul(o.z * inv, p.z),
					   xr.w + nmul(o.w * inv, p.w));
		};
		float ss = 0.0f, ss2 = 0.0f;
		if (n4 <= TC_PRE_REG * TC_THREADS) {
			float4 ho[TC_PRE_REG], hx[TC_PRE_REG], hp[TC_PRE_REG], hw[TC_PRE_REG];
			tc_held<TC_PRE_REG>(
				tid, n4,
				[&](int j, uint32_t i) {
					ho[j] = __ldg(ov + i);
					hx[j] = __ldg(xv + i);
					hp[j] = __ldg(pv + i);
					hw[j] = __ldg(wv4 + i);
				},
				[&](int j, uint32_t) { sq(ho[j], ss); });
			const float inv_o = bsum(ss, 0);
#pragma unroll
			for (int j = 0; j < TC_PRE_REG; j++)
				if (tid + j * TC_THREADS < n4) {
					hx[j] = resid(hx[j], ho[j], hp[j], inv_o);
					sq(hx[j], ss2);
					if (st)
						xo[tid + j * TC_THREADS] = hx[j];
				}
			const float inv = bsum(ss2, 1);
#pragma unroll
			for (int j = 0; j < TC_PRE_REG; j++)
				if (tid + j * TC_THREADS < n4)
					put(tid + j * TC_THREADS, hx[j], hw[j], inv);
		} else {
			for (uint32_t i = tid; i < n4; i += TC_THREADS)
				sq(__ldg(ov + i), ss);
			const float inv_o = bsum(ss, 0);
			for (uint32_t i = tid; i < n4; i += TC_THREADS) {
				const float4 v = resid(__ldg(xv + i), __ldg(ov + i), __ldg(pv + i), inv_o);
				sq(v, ss2);
				if (st)
					xo[i] = v;
			}
			const float inv = bsum(ss2, 1);
			for (uint32_t i = tid; i < n4; i += TC_THREADS)
				put(i, resid(__ldg(xv + i), __ldg(ov + i), __ldg(pv + i), inv_o), __ldg(wv4 + i), inv);
		}
	} else if (nw) {
		/* the input is RMSNorm(x), as k_rmsnorm4 computes it (the sum of
		 * squares in another order), rounded to the compute dtype; up to
		 * 4 * TC_NORM_REG * TC_THREADS elements, x and the norm weights
		 * are read in one round trip and held in registers across the
		 * barrier, longer rows are read twice */
		const float4 *xv = (const float4 *)x, *wv4 = (const float4 *)nw;
		const uint32_t n4 = K / 4;
		const bool held = n4 <= TC_NORM_REG * TC_THREADS;
		float4 hv[TC_NORM_REG], hw[TC_NORM_REG];
		float ss = 0.0f;
		if (held) {
			tc_held<TC_NORM_REG>(
				tid, n4,
				[&](int j, uint32_t i) {
					hv[j] = __ldg(xv + i);
					hw[j] = __ldg(wv4 + i);
				},
				[&](int j, uint32_t) { sq(hv[j], ss); });
		} else {
			for (uint32_t i = tid; i < n4; i += TC_THREADS)
				sq(__ldg(xv + i), ss);
		}
		const float inv = bsum(ss, 0);
		if (held) {
#pragma unroll
			for (int j = 0; j < TC_NORM_REG; j++)
				if (tid + j * TC_THREADS < n4)
					put(tid + j * TC_THREADS, hv[j], hw[j], inv);
		} else {
			for (uint32_t i = tid; i < n4; i += TC_THREADS)
				put(i, __ldg(xv + i), __ldg(wv4 + i), inv);
		}
	} else {
		const float4 *xv = (const float4 *)x;
		const uint32_t n4 = K / 4;
		auto put_x = [&](uint32_t i, float4 v) {
			((uint2 *)xs)[i] = make_uint2(lq_pack16<F16>(v.x, v.y), lq_pack16<F16>(v.z, v.w));
		};
		if (TC_XREG > 0 && n4 <= (uint32_t)TC_XREG * TC_THREADS) {
			/* all of this thread's x in one round trip, then the stores */
			float4 hv[TC_XREG > 0 ? TC_XREG : 1];
			tc_held<TC_XREG>(
				tid, n4, [&](int j, uint32_t i) { hv[j] = __ldg(xv + i); },
				[&](int j, uint32_t i) { put_x(i, hv[j]); });
		} else {
			for (uint32_t i = tid; i < n4; i += TC_THREADS)
				put_x(i, __ldg(xv + i));
		}
	}
	__syncthreads();
	/* INT8: the weights are exact fp16 integers, so the mma takes fp16 x.
	 * At bf16 compute x (bf16 values in xs) is rescaled by a power of two
	 * 2^-e so that its largest magnitude lies in [2^14, 2^15): exact in
	 * fp16 down to 2^-32 of the largest (bf16's 8 bits above fp16's
	 * subnormal step, 2^-24); smaller ones are rounded to that step, an
	 * error under 2^-39 of the largest per element.  xmul undoes the
	 * scale and applies INT8's 1 / 127 at the store. */
	float xmul = 1.0f;
	if (I8) {
		xmul = 1.0f / 127.0f;
		if (!F16) {
			float mx = 0.0f;
			for (uint32_t i = tid; i < K / 2; i += TC_THREADS) {
				const uint32_t v = xs[i];
				mx = fmaxf(mx, fmaxf(fabsf(__uint_as_float(v << 16)), fabsf(__uint_as_float(v & 0xffff0000u))));
			}
			for (int o = 16; o; o >>= 1)
				mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
			if (lane == 0)
				red[2 * TC_WARPS + warp] = mx; /* past the fused norms' two slots */
			__syncthreads();
			for (int w = 0; w < TC_WARPS; w++)
				mx = fmaxf(mx, red[2 * TC_WARPS + w]);
			const int e = mx > 0.0f && mx <= 3.0e38f ? ilogbf(mx) - 14 : 0; /* 2^e <= mx / 2^14 */
			const float down = ldexpf(1.0f, -e);
			xmul = ldexpf(1.0f / 127.0f, e);
			for (uint32_t i = tid; i < K / 2; i += TC_THREADS) {
				const uint32_t v = xs[i];
				xs[i] = lq_pack16<true>(__uint_as_float(v << 16) * down, __uint_as_float(v & 0xffff0000u) * down);
			}
			__syncthreads();
		}
	}

	TC_TR(4);
	/* math side: two spans at a time, in straight-line code */
	uint32_t c_item = 0, c_left = m;
	float acc_g = 0.0f, acc_g8 = 0.0f;
	/* B fragments: lanes g != c hold zeros (B's off-diagonal) for the whole
	 * loop, lanes g == c load chunk c's activations into them; zeroing them
	 * per mma instead cost 8 CS2R per span and 2-3% of the GEMV's throughput
	 * (bench_gemv, BENCHMARKS.md) */
	uint4 xz[4];
#pragma unroll
	for (int j = 0; j < 4; j++)
		xz[j] = make_uint4(0u, 0u, 0u, 0u);
	/*
	 * Which lanes load x (xl), and who gets the sums.  INT8 and 16-bit: lane
	 * (c, c) puts chunk c in B column c, and lane (g, c < 2) gets rows g and
	 * g + 8 of columns 2c, 2c + 1 (one block); its row g + 8 scale comes from
	 * lane c + 2.  4-bit: B's columns 0 and 1 only -- lanes (0, 0), (0, 1) put
	 * chunks 0 and 1 in column 0, lanes (1, 2), (1, 3) chunks 2 and 3 in
	 * column 1 -- so that the four loading lanes lie in one 8-lane phase of a
	 * 16-byte shared load, and lane (g, 0) gets the sums of both blocks
	 * (chunks 0-1, 2-3) of rows g and g + 8, whose scales lanes (g, 1..3)
	 * hold.  With the per-lane double-quant map (DML), 1.0-1.3% faster 8B
	 * decode than the diagonal form (BENCHMARKS.md, twenty-fifth session).
	 * The four pieces (chunk-major, 64 bytes apart) still meet in pairs on
	 * the same banks (ncu: ~4 conflicts per KiB); x staged interleaved to
	 * remove that measured 3-5 points slower (branch wip-xperm).
	 */
	const bool xl = RM ? g == c : g == (c >> 1);
	auto span = [&](const tc_slot &s, uint32_t xsp, float &pg, float &pg8) {
		float mapped = 0.0f;
		if (DML)
			asm("ld.shared.f32 %0, [%1 + 128];" : "=f"(mapped) : "r"(lut4 | s.s << 8));
		else if (DQ)
			mapped = dmap[s.s];
		float sc = D16 ? 1.0f : DQ ? lq_dq_scale(mapped, s.n, s.off) : __uint_as_float(s.s);
		float so = sc;
		if constexpr (RM)
			so = __shfl_down_sync(0xffffffffu, sc, 2);
#ifdef TC_NOMATH /* diagnostic: the loads and the bookkeeping without the decode and the mma */
		pg = sc * __uint_as_float((s.a.x ^ s.a.y ^ s.a.z ^ s.a.w) & 0x007fffffu);
		pg8 = so * __uint_as_float((s.b.x ^ s.b.y ^ s.b.z ^ s.b.w) & 0x007fffffu);
		return;
#endif
		const uint32_t wa[4] = {s.a.x, s.a.y, s.a.z, s.a.w}, wb[4] = {s.b.x, s.b.y, s.b.z, s.b.w};
		if (D16) {
			/* 8 values of rows g and g + 8 per lane, already mma operands
			 * (pairs, the lower element in the low half); lane (c, c) holds
			 * B column c: chunk c's 8 activations, 16 bytes */
			uint4 &xv = xz[0];
			if (xl)
				xv = *(const uint4 *)(xs + xsp * (SPAN / 2) + c * 4);
			float d0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
			lq_mma16816<F16>(d0, wa[0], wb[0], wa[1], wb[1], xv.x, xv.y);
			lq_mma16816<F16>(d1, wa[2], wb[2], wa[3], wb[3], xv.z, xv.w);
			pg = (d0[0] + d0[1]) + (d1[0] + d1[1]);
			pg8 = (d0[2] + d0[3]) + (d1[2] + d1[3]);
			return;
		}
		if (I8) {
			/* 16 weights of rows g and g + 8 per lane; lane (c, c) holds B
			 * column c: chunk c's 16 activations (fp16), 2 x 16 bytes; an
			 * mma takes 4 weights of each row, one word */
			const uint4 *xp = (const uint4 *)(xs + xsp * (SPAN / 2) + c * 8);
			float d0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
			for (int j2 = 0; j2 < 2; j2++) {
				uint4 &xv = xz[j2];
				if (xl)
					xv = xp[j2];
				const uint32_t a0 = wa[2 * j2] ^ 0x80808080u, b0 = wb[2 * j2] ^ 0x80808080u;
				const uint32_t a1 = wa[2 * j2 + 1] ^ 0x80808080u, b1 = wb[2 * j2 + 1] ^ 0x80808080u;
				lq_mma16816<true>(d0, tc_i8_pair(a0, 0), tc_i8_pair(b0, 0), tc_i8_pair(a0, 1), tc_i8_pair(b0, 1),
						  xv.x, xv.y);
				lq_mma16816<true>(d1, tc_i8_pair(a1, 0), tc_i8_pair(b1, 0), tc_i8_pair(a1, 1), tc_i8_pair(b1, 1),
						  xv.z, xv.w);
			}
			pg = sc * ((d0[0] + d0[1]) + (d1[0] + d1[1]));
			pg8 = so * ((d0[2] + d0[3]) + (d1[2] + d1[3]));
			return;
		}
		/* lanes (c / 2, c) hold chunk c's 32 activations, 4 x 16 bytes, in B
		 * column c / 2 */
		const uint4 *xp = (const uint4 *)(xs + xsp * (TC_SPAN / 2) + c * 16);
		float d0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, d1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
		for (int j2 = 0; j2 < 4; j2++) {
			uint4 &xv = xz[j2];
			if (xl)
				xv = xp[j2];
			lq_mma16816<F16>(d0, tc_lut(wa[j2], lut4, 0), tc_lut(wb[j2], lut4, 0), tc_lut(wa[j2], lut4, 1),
				    tc_lut(wb[j2], lut4, 1), xv.x, xv.y);
			lq_mma16816<F16>(d1, tc_lut(wa[j2], lut4, 2), tc_lut(wb[j2], lut4, 2), tc_lut(wa[j2], lut4, 3),
				    tc_lut(wb[j2], lut4, 3), xv.z, xv.w);
		}
		/* lane (g, 0): block 0 in column 0, block 1 in column 1 */
		const float s1 = __shfl_down_sync(0xffffffffu, sc, 1), s2 = __shfl_down_sync(0xffffffffu, sc, 2);
		const float s3 = __shfl_down_sync(0xffffffffu, sc, 3);
		pg = fmaf(s1, d0[1] + d1[1], sc * (d0[0] + d1[0]));
		pg8 = fmaf(s3, d0[3] + d1[3], s2 * (d0[2] + d1[2]));
	};
	/*
	 * End of this warp's share of an item: its 16 row sums go to shared
	 * memory; every TC_CH items (and after the last) the block adds them up
	 * in a fixed order and stores y.
	 */
	auto flush = [&]() {
		float vg = acc_g, vg8 = acc_g8; /* 4-bit: lane (g, 0) holds both blocks' sums */
		if constexpr (RM) {
			vg += __shfl_xor_sync(0xffffffffu, acc_g, 1);
			vg8 += __shfl_xor_sync(0xffffffffu, acc_g8, 1);
		}
		float *rw = red + ((c_item % TC_CH) * TC_WARPS + warp) * 16;
		if (c == 0) {
			rw[g] = vg;
			rw[g + 8] = vg8;
		}
		if ((c_item % TC_CH == TC_CH - 1 || c_item == ni - 1) && act_y) {
			__syncthreads();
			const uint32_t i0 = c_item - c_item % TC_CH, per = (uint32_t)WT * 8; /* pairs x 16 rows */
			const uint32_t nout = (c_item - i0 + 1) * per;
			for (uint32_t o = (uint32_t)tid; o < nout; o += TC_THREADS) {
				uint32_t it = i0 + o / per, q = (o % per) >> 4, r = o & 15;
				uint32_t pt = (blockIdx.x + it * gridDim.x) * (uint32_t)(WT / 2) + q, row = pt * 16 + r;
				if (pt >= T0 || row >= P.p[0].N)
					continue;
				const float *rg = red + ((it % TC_CH) * TC_WARPS + 2 * q * (uint32_t)WK) * 16 + r;
				const float *ru = rg + WK * 16;
				float vg = 0.0f, vu = 0.0f;
				for (int w = 0; w < WK; w++) {
					vg += rg[w * 16];
					vu += ru[w * 16];
				}
				if (I8) {
					vg *= xmul;
					vu *= xmul;
				}
				float v = lq_act(act, vg) * vu;
				act_y[row] = F16 ? __half2float(__float2half_rn(v)) : __bfloat162float(__float2bfloat16_rn(v));
			}
			__syncthreads();
		} else if (c_item % TC_CH == TC_CH - 1 || c_item == ni - 1) {
			__syncthreads();
			const uint32_t i0 = c_item - c_item % TC_CH, per = (uint32_t)WT * 16;
			const uint32_t nout = (c_item - i0 + 1) * per;
			for (uint32_t o = (uint32_t)tid; o < nout; o += TC_THREADS) {
				uint32_t it = i0 + o / per, t = (o % per) >> 4, r = o & 15;
				uint32_t tile = (blockIdx.x + it * gridDim.x) * (uint32_t)WT + t;
				if (tile >= ntiles)
					continue;
				const tc_part &pp = P.p[tc_part_of(P, tile)];
				uint32_t row = (tile - pp.t0) * 16 + r;
				if (row >= pp.N)
					continue;
				const float *rr = red + ((it % TC_CH) * TC_WARPS + t * (uint32_t)WK) * 16 + r;
				float v = 0.0f;
				for (int w = 0; w < WK; w++)
					v += rr[w * 16];
				if (I8)
					v *= xmul;
				pp.y[row] = fl & LQ_GEMV_ADD_OUT ? pp.y[row] + v : v; /* one writer per row */
			}
			__syncthreads();
		}
		acc_g = acc_g8 = 0.0f;
		c_left = m;
		c_item++;
	};
	for (uint32_t q0 = 0; q0 < Q; q0 += 2 * TC_DEPTH) {
#pragma unroll
		for (int d = 0; d < TC_DEPTH; d++) {
			const uint32_t q = q0 + 2 * d;
			if (q >= Q)
				break;
			tc_slot &A = buf[2 * d], &B = buf[2 * d + 1];
			float ag, ag8, bg, bg8;
			/* the spans' indices in the row: A is the item's (m - c_left)-th,
			 * B the next one, or the next item's first */
			const uint32_t xa = s_lo + m - c_left, xb = c_left == 1 ? s_lo : xa + 1;
			/* The refills: when both spans lie in the load side's item, one
			 * step of bookkeeping for the two (6-9% fewer instructions, NF4
			 * bench_gemv +0-2.5 points, BENCHMARKS.md, thirty-second
			 * session); else one span at a time, across the item boundary.
			 * INT8 issues A's refill before B's math (4096 x 14336 +2
			 * points there; 4-bit weights gained nothing from it) */
			span(A, xa, ag, ag8);
			/* the other types test for a pair after B's math, where the
			 * code as measured tests it */
			bool pair = false;
			if constexpr (I8) {
				pair = lq + 1 < Q && l_left >= 2;
				if (pair)
					load_at(A, 0);
			}
			span(B, xb, bg, bg8); /* past the end when q + 1 == Q: computed, not used */
			if (I8 ? pair : lq + 1 < Q && l_left >= 2) {
				if (!I8)
					load_at(A, 0);
				load_at(B, 1);
				lq += 2;
				advance(2);
			} else {
				if (lq < Q) {
					load(A);
					lq++;
				}
				if (lq < Q) {
					load(B);
					lq++;
				}
			}
			acc_g += ag;
			acc_g8 += ag8;
			if (!--c_left)
				flush();
			if (q + 1 < Q) {
				acc_g += bg;
				acc_g8 += bg8;
				if (!--c_left)
					flush();
			}
		}
	}
	TC_TR(5);
}

#ifdef TC_TRACE
#include <stdio.h>
#include <stdlib.h>
void lq_cuda_trace_write(const char *env, const void *hdr, size_t hb, const void *d_table, size_t bytes)
{
	const char *path = getenv(env);
	void *h = path ? malloc(bytes) : NULL;
	FILE *f = h ? fopen(path, "wb") : NULL;
	if (f && cudaDeviceSynchronize() == cudaSuccess && cudaMemcpy(h, d_table, bytes, cudaMemcpyDeviceToHost) == cudaSuccess) {
		fwrite(hdr, 1, hb, f);
		fwrite(h, 1, bytes, f);
	}
	if (f)
		fclose(f);
	free(h);
}

static uint32_t g_tc_seq;
static void tc_trace_dump(void)
{
	void *d = NULL;
	uint32_t hd[4] = {TC_TR_SEQ, TC_TR_BLK, TC_TR_EV, g_tc_seq};
	if (cudaGetSymbolAddress(&d, g_tc_trace) == cudaSuccess)
		lq_cuda_trace_write("LQ_TC_TRACE", hd, sizeof hd, d, sizeof g_tc_trace);
}
#endif

static cudaError_t tc_device(int *sms, int *major, int *optin, int *reserved)
{
	int dev = 0;
	cudaError_t e;
	if ((e = cudaGetDevice(&dev)) != cudaSuccess ||
	    (e = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
	    (e = cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev)) != cudaSuccess ||
	    (e = cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess ||
	    (e = cudaDeviceGetAttribute(reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev)) != cudaSuccess)
		return e;
	return cudaSuccess;
}

/* Launch the tensor-core kernel; cudaErrorNotSupported when the shape or
 * the device does not suit it. */
template <int QT, bool DQ, bool F16, typename XT, bool PRE>
static int launch_tc(const struct lq_cuda_qweight *const *ws, float *const *ys, int nw, uint64_t K, const XT *x,
		     cudaStream_t st, int grid_max, const struct lq_gemv_fuse *fu)
{
	auto kern = k_gemv_tc<QT, DQ, F16, XT, PRE>;
	int sms = 0, major = 0, optin = 0, reserved = 0, per_sm = 0;
	cudaError_t e;
	if ((e = tc_device(&sms, &major, &optin, &reserved)) != cudaSuccess)
		return (int)e;
	const size_t smem = tc_smem(K, tc_map(QT, DQ), reserved);
	if (major < 8 || smem > (size_t)optin)
		return (int)cudaErrorNotSupported;
	if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)) != cudaSuccess ||
	    (e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, TC_THREADS, smem)) != cudaSuccess)
		return (int)e;
	if (per_sm < 1)
		return (int)cudaErrorNotSupported;
	tc_parts P;
	memset(&P, 0, sizeof P);
#ifdef TC_TRACE
	if (g_tc_seq == 0)
		atexit(tc_trace_dump);
	P.seq = g_tc_seq++;
#endif
	if (PRE) {
		P.pre_add = fu->pre_add;
		P.pre_w = fu->pre_w;
		P.x_out = fu->x_out;
	}
	uint64_t tiles = 0;
	for (int i = 0; i < LQ_GEMV_PARTS; i++) {
		P.p[i].t0 = UINT32_MAX;
		if (i >= nw)
			continue;
		const struct lq_cuda_qweight *w = ws[i];
		uint64_t N = w->n / K;
		if (N > UINT32_MAX / 2 || tiles > UINT32_MAX / 4 || (N + 15) * (K / 64) > UINT32_MAX)
			return (int)cudaErrorNotSupported; /* 32-bit tile and block numbers in the kernel */
		P.p[i].data = w->d_data;
		P.p[i].scales = w->d_scales;
		P.p[i].nested = w->d_nested;
		P.p[i].offset = w->offset;
		P.p[i].N = (uint32_t)N;
		P.p[i].y = ys[i];
		P.p[i].t0 = (uint32_t)tiles;
		tiles += (N + 15) / 16;
	}
	if (tiles > UINT32_MAX / 4 || K > UINT32_MAX / 2)
		return (int)cudaErrorNotSupported;
	uint64_t spr = K / (QT == LQ_QTYPE_INT8 ? 64 : QT == LQ_QTYPE_NONE ? 32 : TC_SPAN);
	int wkl = 0;
	while (wkl < 4 && (2ull << wkl) <= spr)
		wkl++;
	if (fu && fu->act_out && wkl > 3)
		wkl = 3; /* at least two tiles (a gate / up pair) per item */
	uint64_t grid = (uint64_t)sms * (uint64_t)per_sm;
	if (grid_max > 0 && (uint64_t)grid_max < grid)
		grid = (uint64_t)grid_max;
	/* The split with the shortest modelled time: a block takes ceil(items /
	 * grid) rounds of items, and a warp's share of an item is its spans (the
	 * most any warp along K gets) plus the item's setup and flush, about
	 * TC_ITEM_COST2 / 2 span.  Fewer warps along K than a row allows (longer
	 * items, less setup and flush per byte) only down to TC_WKL_MIN and where
	 * blocks still get TC_ROUNDS_MIN rounds; ties keep more warps along K.
	 * Fitted on the H200 (BENCHMARKS.md, twenty-seventh session): 4 warps
	 * gain where items are short (Qwen2 and Gemma 2 shapes' gate / up, the
	 * lm_head) but lost on 14336 x 4096 alone at 2 rounds, and on INT8's
	 * 128256 x 4096. */
	{
		constexpr int wmin = QT == LQ_QTYPE_INT8 ? TC_WKL_MIN8 : TC_WKL_MIN;
		uint64_t best = UINT64_MAX;
		int bw = wkl;
		for (int w = wkl; w == wkl || w >= wmin; w--) {
			const uint64_t wt1 = TC_WARPS >> w, it = (tiles + wt1 - 1) / wt1;
			const uint64_t rounds = (it + grid - 1) / grid, share = (spr + (1ull << w) - 1) >> w;
			if (w < wkl && rounds < TC_ROUNDS_MIN)
				continue;
			const uint64_t cost = rounds * (2 * share + TC_ITEM_COST2);
			if (cost < best) {
				best = cost;
				bw = w;
			}
		}
		wkl = bw;
	}
	uint64_t wt = TC_WARPS >> wkl, items = (tiles + wt - 1) / wt;
	if (items < grid)
		grid = items;
	cudaLaunchConfig_t cfg = {};
	cfg.gridDim = dim3((unsigned)grid);
	cfg.blockDim = dim3(TC_THREADS);
	cfg.dynamicSmemBytes = smem;
	cfg.stream = st;
	cudaLaunchAttribute attr[1];
	attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	attr[0].val.programmaticStreamSerializationAllowed = 1;
	static int code90 = -1;
	if (pdl_ok((const void *)kern, major, &code90)) {
		cfg.attrs = attr;
		cfg.numAttrs = 1;
	}
	int bshift = QT == LQ_QTYPE_NONE ? 31 : lq_cuda_bshift(ws[0]->p.block_size); /* 16-bit: no blocks */
	const float *nrm = fu ? fu->norm_w : nullptr;
	int fl = fu ? (fu->plus_one ? LQ_GEMV_NORM_PLUS_ONE : 0) | (fu->add_out ? LQ_GEMV_ADD_OUT : 0) : 0;
	e = cudaLaunchKernelEx(&cfg, kern, P, bshift, (uint32_t)K, x, (uint32_t)tiles, wkl, nrm, fu ? fu->eps : 0.0f, fl,
			       fu ? fu->act_out : nullptr, fu ? fu->act : 0);
	return e != cudaSuccess ? (int)e : (int)cudaGetLastError();
}

/* Whether the tensor-core path takes weights of these parameters, N x K,
 * in this layout, with fp16 (f16) or bf16 mma operands: 4-bit in the tile
 * layout (block size >= 64, K a multiple of 128), INT8 as stored (block
 * size >= 64, K a multiple of 64), 16-bit values of the operands' type (K a
 * multiple of 32), and K small enough for the shared-memory copy of x. */
static bool tc_takes(const struct lq_qparams *p, int layout, uint64_t N, uint64_t K, bool f16)
{
	const bool i8 = p->qtype == LQ_QTYPE_INT8, d16 = lq_cuda_dense(layout);
	if (d16 ? p->qtype != LQ_QTYPE_NONE || K % 32 || (layout == LQ_CUDA_DENSE_F16) != f16
		: (i8 ? layout != LQ_CUDA_ROWS : layout != LQ_CUDA_TILES) || p->block_size < 64 || K % (i8 ? 64 : TC_SPAN))
		return false;
	if (N == 0 || K == 0 || N > UINT32_MAX / 2 || K > UINT32_MAX / 2 || (N + 15) / 16 > UINT32_MAX / 4)
		return false;
	int sms = 0, major = 0, optin = 0, reserved = 0;
	if (tc_device(&sms, &major, &optin, &reserved) != cudaSuccess) {
		cudaGetLastError();
		return false;
	}
	return major >= 8 && tc_smem(K, tc_map(p->qtype, p->double_quant), reserved) <= (size_t)optin;
}

/* The tensor-core path (tc_takes); cudaErrorNotSupported where it does not
 * take the weights. */
template <bool F16, typename XT>
static int try_tc(const struct lq_cuda_qweight *const *ws, float *const *ys, int nw, uint64_t K, const XT *x,
		  cudaStream_t st, int grid_max, const struct lq_gemv_fuse *fu)
{
	const struct lq_qparams *p = &ws[0]->p;
	if (!tc_takes(p, ws[0]->layout, ws[0]->n / K, K, F16))
		return (int)cudaErrorNotSupported;
	const int dq = p->double_quant != 0, qt = p->qtype;
	auto pick = [&](auto pre) {
		constexpr bool PRE = decltype(pre)::value;
		if (qt == LQ_QTYPE_NONE)
			return launch_tc<LQ_QTYPE_NONE, false, F16, XT, PRE>(ws, ys, nw, K, x, st, grid_max, fu);
		if (qt == LQ_QTYPE_NF4)
			return dq ? launch_tc<LQ_QTYPE_NF4, true, F16, XT, PRE>(ws, ys, nw, K, x, st, grid_max, fu)
				  : launch_tc<LQ_QTYPE_NF4, false, F16, XT, PRE>(ws, ys, nw, K, x, st, grid_max, fu);
		if (qt == LQ_QTYPE_INT8)
			return dq ? launch_tc<LQ_QTYPE_INT8, true, F16, XT, PRE>(ws, ys, nw, K, x, st, grid_max, fu)
				  : launch_tc<LQ_QTYPE_INT8, false, F16, XT, PRE>(ws, ys, nw, K, x, st, grid_max, fu);
		return dq ? launch_tc<LQ_QTYPE_FP4, true, F16, XT, PRE>(ws, ys, nw, K, x, st, grid_max, fu)
			  : launch_tc<LQ_QTYPE_FP4, false, F16, XT, PRE>(ws, ys, nw, K, x, st, grid_max, fu);
	};
	if (!(fu && fu->pre_add))
		return pick(std::false_type());
	if constexpr (sizeof(XT) == 4)
		return pick(std::true_type()); /* the sandwich norm only on a float32 x */
	return (int)cudaErrorNotSupported;
}

static int gemv_check(const struct lq_cuda_qweight *w, uint64_t N, uint64_t K, const void *d_x)
{
	int bs = w->p.block_size;
	if (lq_cuda_dense(w->layout))
		return w->p.qtype == LQ_QTYPE_NONE && N && K && N <= UINT64_MAX / K && N * K == w->n && w->d_data &&
		       !((uintptr_t)w->d_data & 15) && !((uintptr_t)d_x & 15);
	return !(N == 0 || (w->layout != LQ_CUDA_ROWS && w->layout != LQ_CUDA_TILES) || K == 0 || bs < LQ_QBLOCK_MIN || bs > LQ_QBLOCK_MAX || (bs & (bs - 1)) ||
		 K % (uint64_t)bs || N > UINT64_MAX / K || N * K != w->n || !w->d_data || !w->d_scales ||
		 (w->p.double_quant && !w->d_nested) || ((uintptr_t)w->d_data & 15) || ((uintptr_t)d_x & 15));
}

static int gemv_run(const struct lq_cuda_qweight *const *ws, float *const *ys, int n, uint64_t K, const void *d_x,
		    int x_dtype, int mode, void *stream, int rows, int grid_max, int ksplit_max,
		    const struct lq_gemv_fuse *fu = nullptr)
{
	if (n < 1 || n > LQ_GEMV_PARTS || (rows != 0 && rows != 1 && rows != 2 && rows != 4 && rows != 8) ||
	    mode < LQ_GEMV_F32 || mode > LQ_GEMV_F16)
		return (int)cudaErrorInvalidValue;
	for (int i = 0; i < n; i++)
		if (!ws[i] || !ys[i] || !gemv_check(ws[i], ws[i]->n / (K ? K : 1), K, d_x) ||
		    ws[i]->p.qtype != ws[0]->p.qtype || ws[i]->p.double_quant != ws[0]->p.double_quant ||
		    ws[i]->p.block_size != ws[0]->p.block_size || ws[i]->layout != ws[0]->layout)
			return (int)cudaErrorInvalidValue;
	if (x_dtype != LQ_DTYPE_F32 && !(x_dtype == LQ_DTYPE_BF16 && (mode == LQ_GEMV_F32 || mode == LQ_GEMV_BF16)))
		return (int)cudaErrorInvalidValue;
	cudaStream_t st = (cudaStream_t)stream;
	if (mode == LQ_GEMV_EXACT && ws[0]->p.qtype != LQ_QTYPE_INT8 && ws[0]->layout == LQ_CUDA_ROWS) {
		const float *x = (const float *)d_x;
		int dq = ws[0]->p.double_quant != 0;
		if (ws[0]->p.qtype == LQ_QTYPE_NF4)
			return dq ? launch_t<LQ_QTYPE_NF4, true, float, 8, true>(ws, ys, n, K, x, st, grid_max, ksplit_max)
				  : launch_t<LQ_QTYPE_NF4, false, float, 8, true>(ws, ys, n, K, x, st, grid_max, ksplit_max);
		return dq ? launch_t<LQ_QTYPE_FP4, true, float, 8, true>(ws, ys, n, K, x, st, grid_max, ksplit_max)
			  : launch_t<LQ_QTYPE_FP4, false, float, 8, true>(ws, ys, n, K, x, st, grid_max, ksplit_max);
	}
	/* bf16 activations in memory hold bf16 values by definition */
	if (x_dtype == LQ_DTYPE_BF16)
		mode = LQ_GEMV_BF16;
	/* INT8 as stored: the tensor-core kernel in the 16-bit modes, with the
	 * default launch (no knobs) */
	const bool i8tc = ws[0]->p.qtype == LQ_QTYPE_INT8 && ws[0]->layout == LQ_CUDA_ROWS && rows == 0 &&
			  ksplit_max == 0 && (mode == LQ_GEMV_BF16 || mode == LQ_GEMV_F16);
	/* unquantized 16-bit weights: the tensor-core kernel only */
	const bool d16 = lq_cuda_dense(ws[0]->layout);
	if (fu && ((ws[0]->layout != LQ_CUDA_TILES && !i8tc && !d16) || x_dtype != LQ_DTYPE_F32 ||
		   (fu->norm_w && ((uintptr_t)fu->norm_w & 15)) ||
		   (fu->act_out && (n != 2 || ws[0]->n != ws[1]->n || fu->add_out)) ||
		   (fu->pre_add && (!fu->norm_w || !fu->pre_w || !fu->x_out || (((uintptr_t)fu->pre_add | (uintptr_t)fu->pre_w |
										(uintptr_t)fu->x_out) & 15) ||
				    fu->x_out == d_x || fu->x_out == fu->pre_add))))
		return (int)cudaErrorInvalidValue;
	if (ws[0]->layout == LQ_CUDA_TILES || i8tc || d16) {
		if (rows != 0 || ksplit_max != 0 || (mode != LQ_GEMV_BF16 && mode != LQ_GEMV_F16))
			return (int)cudaErrorInvalidValue;
		int e;
		if (x_dtype == LQ_DTYPE_BF16)
			e = try_tc<false, __nv_bfloat16>(ws, ys, n, K, (const __nv_bfloat16 *)d_x, st, grid_max, fu);
		else if (mode == LQ_GEMV_F16)
			e = try_tc<true, float>(ws, ys, n, K, (const float *)d_x, st, grid_max, fu);
		else
			e = try_tc<false, float>(ws, ys, n, K, (const float *)d_x, st, grid_max, fu);
		if (e != (int)cudaErrorNotSupported)
			return e;
		if (!i8tc || fu)
			return (int)cudaErrorInvalidValue;
		/* INT8 the tensor-core kernel does not take: the CUDA-core one */
	}
	if (x_dtype == LQ_DTYPE_BF16)
		return launch_q<__nv_bfloat16>(ws, ys, n, K, (const __nv_bfloat16 *)d_x, st, rows, grid_max, ksplit_max);
	return launch_q<float>(ws, ys, n, K, (const float *)d_x, st, rows, grid_max, ksplit_max);
}

extern "C" int lq_cuda_gemv_ex(const struct lq_cuda_qweight *w, uint64_t N, uint64_t K, const void *d_x,
			       int x_dtype, float *d_y, void *stream, int rows, int grid_max, int ksplit_max)
{
	if (!gemv_check(w, N, K, d_x))
		return (int)cudaErrorInvalidValue;
	return gemv_run(&w, &d_y, 1, K, d_x, x_dtype, LQ_GEMV_F32, stream, rows, grid_max, ksplit_max);
}

extern "C" int lq_cuda_gemv(const struct lq_cuda_qweight *w, uint64_t N, uint64_t K, const void *d_x,
			    int x_dtype, float *d_y, void *stream)
{
	return lq_cuda_gemv_ex(w, N, K, d_x, x_dtype, d_y, stream, 0, 0, 0);
}

extern "C" int lq_cuda_gemv_multi(const struct lq_cuda_qweight *const *ws, float *const *ys, int n, uint64_t K,
				  const void *d_x, int x_dtype, int mode, void *stream)
{
	return gemv_run(ws, ys, n, K, d_x, x_dtype, mode, stream, 0, 0, 0);
}

extern "C" int lq_cuda_gemv_fused(const struct lq_cuda_qweight *const *ws, float *const *ys, int n, uint64_t K,
				  const float *d_x, int mode, const struct lq_gemv_fuse *f, void *stream)
{
	if (!f)
		return (int)cudaErrorInvalidValue;
	return gemv_run(ws, ys, n, K, d_x, LQ_DTYPE_F32, mode, stream, 0, 0, 0, f);
}

/* ------------------------------------------------------------------------
 * The GPU tile layout (formats/LQ-FORMAT.md): made once at load time.
 * ---------------------------------------------------------------------- */

extern "C" int lq_cuda_gemv_tc(const struct lq_cuda_qweight *w, uint64_t K, int mode)
{
	return w && K && w->n % K == 0 && (mode == LQ_GEMV_BF16 || mode == LQ_GEMV_F16) &&
	       tc_takes(&w->p, w->layout, w->n / K, K, mode == LQ_GEMV_F16);
}

extern "C" int lq_cuda_tiles_ok(const struct lq_qparams *p, uint64_t N, uint64_t K)
{
	return p && (p->qtype == LQ_QTYPE_NF4 || p->qtype == LQ_QTYPE_FP4) && p->block_size <= LQ_QBLOCK_MAX &&
	       !(p->block_size & (p->block_size - 1)) && tc_takes(p, LQ_CUDA_TILES, N, K, false);
}

extern "C" void lq_cuda_tiles_size(const struct lq_qparams *p, uint64_t N, uint64_t K, uint64_t *data_bytes,
				   uint64_t *scale_bytes)
{
	uint64_t rows = (N + 15) / 16 * 16;
	*data_bytes = rows * (K / 2);
	*scale_bytes = rows * (K / (uint64_t)p->block_size) * (p->double_quant ? 1 : 4);
}

/* 16 bytes of a code record per thread and step (padding rows: zeros). */
__global__ void k_tile_codes(const uint8_t *__restrict__ src, uint4 *__restrict__ dst, uint64_t N, uint64_t K,
			     uint64_t units)
{
	const uint64_t spr = K / TC_SPAN;
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < units;
	     j += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t rec = j >> 6, t = rec / spr, sp = rec % spr, row = t * 16 + ((j >> 2) & 15);
		uint4 v = make_uint4(0u, 0u, 0u, 0u);
		if (row < N)
			v = *(const uint4 *)(src + row * (K / 2) + sp * 64 + (j & 3) * 16);
		dst[j] = v;
	}
}

/* One scale entry (ES bytes) per thread and step (padding rows: zeros). */
template <typename ES>
__global__ void k_tile_scales(const ES *__restrict__ src, ES *__restrict__ dst, uint64_t N, uint64_t nbr,
			      uint64_t total)
{
	for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
	     i += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t grp = i >> 4, t = grp / nbr, b = grp % nbr, row = t * 16 + (i & 15);
		dst[i] = row < N ? src[row * nbr + b] : (ES)0;
	}
}

extern "C" int lq_cuda_tile(const struct lq_cuda_qweight *w, uint64_t K, void *d_data, void *d_scales,
			    struct lq_cuda_qweight *out, void *stream)
{
	if (!w || !out || !d_data || !d_scales || w->layout != LQ_CUDA_ROWS || K == 0 || w->n % K ||
	    !lq_cuda_tiles_ok(&w->p, w->n / K, K) || !w->d_data || !w->d_scales ||
	    (w->p.double_quant && !w->d_nested) || ((uintptr_t)w->d_data & 15) || ((uintptr_t)d_data & 15) ||
	    ((uintptr_t)d_scales & 3))
		return (int)cudaErrorInvalidValue;
	uint64_t N = w->n / K, db, sb, nbr = K / (uint64_t)w->p.block_size;
	lq_cuda_tiles_size(&w->p, N, K, &db, &sb);
	cudaStream_t st = (cudaStream_t)stream;
	k_tile_codes<<<lq_cuda_grid256(db / 16), 256, 0, st>>>(w->d_data, (uint4 *)d_data, N, K, db / 16);
	uint64_t ns = (N + 15) / 16 * 16 * nbr;
	if (w->p.double_quant)
		k_tile_scales<uint8_t><<<lq_cuda_grid256(ns), 256, 0, st>>>((const uint8_t *)w->d_scales, (uint8_t *)d_scales,
								      N, nbr, ns);
	else
		k_tile_scales<float><<<lq_cuda_grid256(ns), 256, 0, st>>>((const float *)w->d_scales, (float *)d_scales, N,
								    nbr, ns);
	cudaError_t e = cudaGetLastError();
	if (e != cudaSuccess)
		return (int)e;
	*out = *w;
	out->d_data = (const uint8_t *)d_data;
	out->d_scales = d_scales;
	out->layout = LQ_CUDA_TILES;
	return 0;
}
