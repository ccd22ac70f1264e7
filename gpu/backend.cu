/*
 * backend.cu - the CUDA backend of lq_run (struct lq_backend, lq_run.h): the
 * forward pass of the five architectures on one GPU, mirroring
 * libquant/forward.c (the reference it is tested against).
 *
 * Copyright (c) the libquant authors.  MIT license.
 *
 * Weights are uploaded once, as stored in the LQ file (packed codes, scales,
 * nested scales; unquantized tensors in their dtype), through two pinned
 * staging buffers with asynchronous copies.  Activations are float32
 * buffers; with bf16 or fp16 compute, the inputs of every product (the
 * normalized hidden states, q, the KV cache, the attention output, the gated
 * MLP activation) are rounded to the compute dtype, as the tensors a
 * bf16/fp16 forward multiplies, while the residual stream, biases, RoPE,
 * softmax and all sums stay float32 (as llama.cpp keeps them); the KV cache
 * holds its rounded values in the compute dtype (half the bytes of float32).
 * With fp32 the GPU computes what the CPU runtime does.
 *
 * Matmuls: one token (decode) uses the fused dequant-GEMV of gemv.cu (exact
 * code values at fp32, bf16-rounded codes otherwise) or a dense GEMV for
 * unquantized weights; several tokens (prefill, --logits) dequantize the
 * weight into a scratch matrix of the compute dtype and run a tensor-core
 * GEMM through cuBLAS, which is opened at run time (dlopen), so binaries do
 * not depend on it.  Attention is one kernel with an online softmax, split
 * over the key range for decode (k_attn; k_attn_long for caches of
 * ATT_LONG_MIN positions and more, several keys per round trip).  The
 * decode step (one token, logits of the last position) is captured in a
 * CUDA graph and replayed; positions and the token id are read from device
 * memory so that the graph stays valid until the KV cache is reallocated.
 */
#include "lq_cuda.h"
#include "lq_blocks.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cooperative_groups.h>
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <type_traits>
#include <stdio.h>
#include <utility>
#include <stdlib.h>
#include <string.h>

#define CHUNK 512        /* tokens per forward step (longer inputs are split) */
#ifndef ATT_WARPS
#define ATT_WARPS 4      /* warps per attention block */
#endif
#define ATT_MAXE 8       /* head_dim <= 32 * ATT_MAXE */
#ifndef ATT_KB
#define ATT_KB 2         /* k_attn: keys per warp and round trip (4: slower, 114 registers) */
#endif
#define ATT_MAXSPLIT 64  /* key-range splits of decode attention */
#ifndef ATT_CLCAP
#define ATT_CLCAP 2048   /* caches up to this size: at most ATT_CLUSTER splits */
#endif
#define ROPE_THREADS 64  /* threads per k_rope block */
#define ROPE_MAXV (32 * ATT_MAXE / ROPE_THREADS) /* v values per thread, head_dim <= 32 * ATT_MAXE */
#define STAGE_BYTES (64u << 20)
#define NORM_THREADS 1024

static __constant__ uint32_t b_nf4[16] = LQ_NF4_BITS_INIT;
static __constant__ uint32_t b_fp4[16] = LQ_FP4_BITS_INIT;
static __constant__ uint32_t b_dyn[256] = LQ_DYNMAP_BITS_INIT;

/* ------------------------------------------------------------- errors */

static int gfail(struct lq_error *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int gfail(struct lq_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		err->code = code;
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
	}
	return code;
}

static int cuda_fail(struct lq_error *err, cudaError_t e, const char *what)
{
	cudaGetLastError();
	if (e == cudaErrorMemoryAllocation) {
		size_t fr = 0, tot = 0;
		cudaMemGetInfo(&fr, &tot);
		return gfail(err, LQ_ERR_NOMEM, "out of GPU memory for %s (%.0f MiB free of %.0f MiB)", what,
			     fr / 1048576.0, tot / 1048576.0);
	}
	return gfail(err, LQ_ERR_IO, "CUDA error in %s: %s", what, cudaGetErrorString(e));
}

#define CK(call, what)                                             \
	do {                                                       \
		cudaError_t e_ = (call);                           \
		if (e_ != cudaSuccess)                             \
			return cuda_fail(err, e_, what);           \
	} while (0)

/* --------------------------------------------------------- cuBLAS (dlopen) */

struct cublas_fns {
	void *lib;
	int tried;
	cublasStatus_t (*create)(cublasHandle_t *);
	cublasStatus_t (*destroy)(cublasHandle_t);
	cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
	cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
			       const void *, const void *, cudaDataType, int, const void *, cudaDataType,
			       int, const void *, void *, cudaDataType, int, cublasComputeType_t,
			       cublasGemmAlgo_t);
};

static int cublas_open(struct cublas_fns *c)
{
	if (c->tried)
		return c->lib != NULL;
	c->tried = 1;
	const char *names[] = { "libcublas.so.13", "libcublas.so.12", "libcublas.so" };
	for (size_t i = 0; i < sizeof names / sizeof names[0] && !c->lib; i++)
		c->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
	if (!c->lib)
		return 0;
	*(void **)&c->create = dlsym(c->lib, "cublasCreate_v2");
	*(void **)&c->destroy = dlsym(c->lib, "cublasDestroy_v2");
	*(void **)&c->set_stream = dlsym(c->lib, "cublasSetStream_v2");
	*(void **)&c->gemm = dlsym(c->lib, "cublasGemmEx");
	if (!c->create || !c->destroy || !c->set_stream || !c->gemm) {
		dlclose(c->lib);
		c->lib = NULL;
	}
	return c->lib != NULL;
}

/* ------------------------------------------------------------ weights */

/* A weight as the kernels see it (passed by value). */
struct kweight {
	int qtype, dtype, dq, bshift;
	const uint8_t *data;
	const void *scales;
	const float *nested;
	float offset;
	uint32_t tspr;  /* 0: as stored; else the GPU tile layout with K = 128 * tspr */
	uint64_t rows;  /* rows of a tiled weight (its data holds ceil(rows / 16) * 16) */
};

struct dweight {
	struct kweight k;
	struct lq_cuda_qweight q; /* quantized: for lq_cuda_gemv */
	uint64_t rows, cols;
	int fast;                 /* lq_cuda_gemv applies */
};

__device__ __forceinline__ float rnd(float v, int cd)
{
	if (cd == LQ_COMPUTE_BF16)
		return __bfloat162float(__float2bfloat16_rn(v));
	if (cd == LQ_COMPUTE_F16)
		return __half2float(__float2half_rn(v));
	return v;
}

/* The scale of block b, with the reference's float32 roundings (no FMA). */
__device__ __forceinline__ float w_scale(const kweight &w, uint64_t b)
{
	if (w.dq)
		return lq_dq_scale(__uint_as_float(b_dyn[((const uint8_t *)w.scales)[b]]), w.nested[b >> LQ_QNESTED_SHIFT],
				   w.offset);
	return ((const float *)w.scales)[b];
}

/* Element i of a weight as float32, rounded exactly as lq_dequantize_ref
 * (a weight as stored: tspr == 0). */
__device__ __forceinline__ float w_get(const kweight &w, uint64_t i)
{
	if (w.qtype == LQ_QTYPE_NONE) {
		if (w.dtype == LQ_DTYPE_BF16)
			return __uint_as_float((uint32_t)((const uint16_t *)w.data)[i] << 16);
		if (w.dtype == LQ_DTYPE_F16)
			return __half2float(((const __half *)w.data)[i]);
		return ((const float *)w.data)[i];
	}
	float s = w_scale(w, i >> w.bshift);
	if (w.qtype == LQ_QTYPE_INT8)
		return __fmul_rn((float)(int8_t)w.data[i], __fmul_rn(s, 1.0f / 127.0f));
	uint8_t byte = w.data[i >> 1];
	int code = (i & 1) ? (byte & 15) : (byte >> 4);
	return __fmul_rn(__uint_as_float(w.qtype == LQ_QTYPE_NF4 ? b_nf4[code] : b_fp4[code]), s);
}

/* ------------------------------------------------------------- kernels */

/* Wait for the previous kernel of the stream to complete (programmatic
 * dependent launch; a no-op without it). */
__device__ __forceinline__ void pdl_wait()
{
#if __CUDA_ARCH__ >= 900
	cudaGridDependencySynchronize();
	/* and let the next kernel be scheduled: it waits the same way, and it
	 * is launched only once every block of this one has started */
	cudaTriggerProgrammaticLaunchCompletion();
#endif
}

__device__ __forceinline__ int64_t cur_pos(const int64_t *d_pos, int64_t pos) { return d_pos ? *d_pos : pos; }

/* Decode attention's split blockIdx.z of gridDim.z over the keys that the
 * query at position p sees (its window, or all): [*j0, *j1), maybe empty. */
__device__ __forceinline__ void split_keys(int64_t p, int64_t window, int64_t *j0, int64_t *j1)
{
	const int64_t lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0, S = gridDim.z;
	const int64_t per = (p - lo + S) / S; /* ceil(keys / S) */
	*j0 = lo + per * blockIdx.z;
	*j1 = min(p + 1, *j0 + per);
}

/* A float rounded to T (float, bf16, fp16), and such a value as a float:
 * the KV cache's entries (float at fp32 compute, else the compute dtype;
 * k_rope stores values rounded to it already, so nothing is lost) and the
 * dequantized weight matrices. */
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
__device__ __forceinline__ float kv_ld(const float *p) { return *p; }
__device__ __forceinline__ float kv_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ float kv_ld(const __half *p) { return __half2float(*p); }

/* RoPE's cos and sin of position p for frequency f, times ascale (the
 * double-precision cos / sin rounded to float): k_embed's per-step table and
 * k_rope without it. */
__device__ __forceinline__ void rope_cs(int64_t p, float f, float ascale, float *cs, float *sn)
{
	float fr = __fmul_rn((float)p, f);
	*cs = __fmul_rn((float)cos((double)fr), ascale);
	*sn = __fmul_rn((float)sin((double)fr), ascale);
}

__global__ void k_embed(kweight w, uint64_t cols, const int32_t *tok, float scale, float *x, int cd,
			const float *inv_freq, int64_t half, float ascale, const int64_t *d_pos, int64_t pos, float *rtab)
{
	pdl_wait();
	/* one token: the cos / sin of its position (times ascale) for every
	 * layer's k_rope, made once per step */
	if (rtab && blockIdx.x == 0) {
		const int64_t p = cur_pos(d_pos, pos);
		for (int64_t i = threadIdx.x; i < half; i += blockDim.x)
			rope_cs(p, inv_freq[i], ascale, &rtab[i], &rtab[half + i]);
	}
	uint64_t row = (uint64_t)tok[blockIdx.x];
	float *xt = x + (uint64_t)blockIdx.x * cols;
	for (uint64_t i = threadIdx.x; i < cols; i += blockDim.x) {
		float v = w_get(w, row * cols + i);
		xt[i] = scale != 1.0f ? v * scale : v;
	}
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024). */
__device__ float block_sum(float v)
{
	__shared__ float part[32];
	for (int o = 16; o; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
	__syncthreads();
	if ((threadIdx.x & 31) == 0)
		part[w] = v;
	__syncthreads();
	float s = 0;
	for (int i = 0; i < nw; i++)
		s += part[i];
	return s;
}

/* y = rnd(rmsnorm(x)) per row (a matmul input); with add != NULL,
 * add += rmsnorm(x) instead (Gemma 2's post-norms on the residual stream);
 * with res != NULL, x += res first (the residual add before the norm). */
__global__ void __launch_bounds__(1024) k_rmsnorm(float *x, const float *res, const float *w, float *y, float *add,
						  int64_t D, float eps, int plus1, int cd)
{
	pdl_wait();
	float *xt = x + (uint64_t)blockIdx.x * D;
	float ss = 0;
	if (res) {
		const float *rt = res + (uint64_t)blockIdx.x * D;
		for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
			float v = xt[i] + rt[i];
			xt[i] = v;
			ss = fmaf(v, v, ss);
		}
	} else {
		for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
			ss = fmaf(xt[i], xt[i], ss);
	}
	ss = block_sum(ss);
	float var = ss / (float)D;
	float inv = (float)(1.0 / sqrt((double)(var + eps)));
	for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
		float hv = xt[i] * inv, o;
		if (plus1)
			o = hv * (1.0f + w[i]);
		else
			o = w[i] * hv;
		uint64_t j = (uint64_t)blockIdx.x * D + i;
		if (add)
			add[j] += o; /* the residual stream stays float32 */
		else
			y[j] = rnd(o, cd);
	}
}

/* k_rmsnorm for rows of D % 4 == 0 floats, D <= 4096 * NV: every thread
 * keeps its NV float4s in registers (one read of x and res, one of w), so
 * the one-block-per-token kernel pays the memory latency twice, not 2 D /
 * blockDim.x times. */
/* The 16-bit copy of values of the compute dtype (bf16, or fp16 at
 * LQ_COMPUTE_F16) that a GEMM reads instead of converting them (see
 * conv16): element i of p. */
__device__ __forceinline__ void st16(void *p, uint64_t i, float v, int cd)
{
	if (cd == LQ_COMPUTE_F16)
		((__half *)p)[i] = __float2half_rn(v);
	else
		((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void st16x4(void *p, uint64_t i, float4 v, int cd)
{
	uint2 u;
	if (cd == LQ_COMPUTE_F16) {
		__half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
		u = make_uint2(*(uint32_t *)&a, *(uint32_t *)&b);
	} else {
		__nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
		u = make_uint2(*(uint32_t *)&a, *(uint32_t *)&b);
	}
	*(uint2 *)((uint16_t *)p + i) = u;
}

template <int NV>
__global__ void __launch_bounds__(1024) k_rmsnorm4(float *x, const float *res, const float *w, float *y, float *add,
						   int64_t D, float eps, int plus1, int cd, void *y16)
{
	pdl_wait();
	const int64_t D4 = D >> 2, row = (int64_t)blockIdx.x * D;
	float4 *xt = (float4 *)(x + row);
	float4 v[NV];
	float ss = 0.0f;
#pragma unroll
	for (int k = 0; k < NV; k++) {
		int64_t j = threadIdx.x + (int64_t)k * blockDim.x;
		if (j >= D4)
			continue;
		v[k] = xt[j];
		if (res) {
			float4 r = ((const float4 *)(res + row))[j];
			v[k].x += r.x;
			v[k].y += r.y;
			v[k].z += r.z;
			v[k].w += r.w;
			xt[j] = v[k];
		}
		ss = fmaf(v[k].x, v[k].x, ss);
		ss = fmaf(v[k].y, v[k].y, ss);
		ss = fmaf(v[k].z, v[k].z, ss);
		ss = fmaf(v[k].w, v[k].w, ss);
	}
	ss = block_sum(ss);
	float var = ss / (float)D;
	float inv = (float)(1.0 / sqrt((double)(var + eps)));
#pragma unroll
	for (int k = 0; k < NV; k++) {
		int64_t j = threadIdx.x + (int64_t)k * blockDim.x;
		if (j >= D4)
			continue;
		float4 wv = ((const float4 *)w)[j], o;
		float hv[4] = {v[k].x * inv, v[k].y * inv, v[k].z * inv, v[k].w * inv}, wk[4] = {wv.x, wv.y, wv.z, wv.w};
		float ov[4];
#pragma unroll
		for (int e = 0; e < 4; e++)
			ov[e] = plus1 ? hv[e] * (1.0f + wk[e]) : wk[e] * hv[e];
		if (add) {
			float4 a = ((float4 *)(add + row))[j];
			o = make_float4(a.x + ov[0], a.y + ov[1], a.z + ov[2], a.w + ov[3]);
			((float4 *)(add + row))[j] = o;
		} else {
			o = make_float4(rnd(ov[0], cd), rnd(ov[1], cd), rnd(ov[2], cd), rnd(ov[3], cd));
			((float4 *)(y + row))[j] = o;
			if (y16)
				st16x4(y16, (uint64_t)row + 4 * (uint64_t)j, o, cd);
		}
	}
}

/* y[t][i] += b[i] for a [n, d] block with row stride ld. */
__global__ void k_bias(float *y, int64_t ld, const float *b, int64_t n, int64_t d)
{
	pdl_wait();
	uint64_t tot = (uint64_t)n * d;
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < tot; j += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t t = j / d, i = j % d;
		float *p = y + t * ld + i;
		*p += b[i];
	}
}

#ifdef TC_TRACE
/* Diagnostic builds only (-DTC_TRACE): %globaltimer at points of the decode
 * kernels k_rope (kind 1) and k_attn (kind 2), per block, keyed by the
 * layer's K cache, with the block's number and (high 32 bits) %smid;
 * written to $LQ_KT_TRACE at exit (make GPU_TRACE=1; tests/gpu_trace.py
 * reads it with the GEMVs' trace). */
#define KT_N (1u << 20)
__device__ unsigned long long g_kt[KT_N][8];
__device__ unsigned g_kt_n;
#define KT_DECL unsigned long long kt_[5] = {lq_globaltimer(), 0, 0, 0, 0}
#define KT(i) (kt_[i] = lq_globaltimer())
#define KT_END(kind, key)                                                                                   \
	do {                                                                                                \
		if (threadIdx.x == 0) {                                                                     \
			unsigned s_ = atomicAdd(&g_kt_n, 1u) & (KT_N - 1);                                  \
			g_kt[s_][0] = (unsigned long long)(key);                                            \
			g_kt[s_][1] = (blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) |             \
				      (unsigned long long)lq_smid() << 32;                                   \
			for (int i_ = 0; i_ < 5; i_++)                                                      \
				g_kt[s_][2 + i_] = kt_[i_];                                                 \
			g_kt[s_][7] = (kind);                                                               \
		}                                                                                           \
	} while (0)
static void kt_dump(void)
{
	unsigned n = 0;
	void *d = NULL;
	if (cudaDeviceSynchronize() == cudaSuccess && cudaMemcpyFromSymbol(&n, g_kt_n, sizeof n) == cudaSuccess &&
	    cudaGetSymbolAddress(&d, g_kt) == cudaSuccess)
		lq_cuda_trace_write("LQ_KT_TRACE", &n, sizeof n, d, sizeof g_kt);
}
#else
#define KT_DECL do { } while (0)
#define KT(i) do { } while (0)
#define KT_END(kind, key) do { } while (0)
#endif

/* One rotated element of the pair (x1, x2) (first: x1 * cs - x2 * sn,
 * second: x2 * cs + x1 * sn), rounded to the compute dtype: the CPU's
 * arithmetic (no FMA contraction), in every kernel that rotates. */
__device__ __forceinline__ float rope_rot(float x1, float x2, float cs, float sn, bool second, int cd)
{
	return rnd(second ? __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn)) : __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)),
		   cd);
}

/* Element d (< hd) of one head after its bias and RoPE, rounded to the
 * compute dtype: vec is the head's raw values, bias its bias (or NULL),
 * rtab the cos [half] and sin [half] of the position (dims past rot pass
 * through).  The arithmetic of k_rope; the loads are unconditional (the
 * indices selected), so that they issue together. */
__device__ __forceinline__ float rope_at(const float *vec, const float *bias, int64_t d, int64_t half, int64_t rot,
					 const float *rtab, int cd)
{
	const int64_t i = d < half ? d : d < rot ? d - half : 0;
	const int64_t o = d >= rot ? d : d < half ? d + half : d - half; /* the other of the pair */
	const float a = vec[d], b = vec[o];
	const float ba = bias ? bias[d] : 0.0f, bb = bias ? bias[o] : 0.0f;
	const float cs = half ? rtab[i] : 1.0f, sn = half ? rtab[half + i] : 0.0f;
	const float x = bias ? a + ba : a, y = bias ? b + bb : b;
	return d >= rot ? rnd(x, cd) : d < half ? rope_rot(x, y, cs, sn, false, cd) : rope_rot(y, x, cs, sn, true, cd);
}

/*
 * The q / k / v biases (qb, kb, vb: NULL when the model has none), RoPE on
 * q and k (block = one head of one token; heads 0..H-1 are query heads,
 * H..H+KV-1 key heads) and the KV cache store of k and v.  rtab: the cos /
 * sin of the position that k_embed made for this step (one token);
 * without it they are computed here (double-precision cos and sin).
 */
template <typename CT>
__global__ void k_rope(float *q, int64_t qs, float *k, int64_t ks, const float *v, int64_t vs, int64_t H,
		       int64_t KV, int64_t hd, int64_t rot, const float *inv_freq, float ascale,
		       const int64_t *d_pos, int64_t pos, CT *kc, CT *vc, int64_t kvdim, int cd,
		       const float *qb, const float *kb, const float *vb, const float *rtab)
{
	KT_DECL;
	pdl_wait();
	KT(1);
	int64_t t = blockIdx.y, hh = blockIdx.x;
	int64_t p = cur_pos(d_pos, pos) + t;
	/* q heads: rotated and rounded in place; k heads: into the cache (the
	 * k rows of the input are not read again).  Each value is read once and
	 * kept in registers: bias, rotation, rounding, store. */
	const bool isq = hh < H;
	const int64_t kh = hh - H;
	float *vec = isq ? q + t * qs + hh * hd : k + t * ks + kh * hd;
	CT *kd = isq ? nullptr : kc + p * kvdim + kh * hd;
	auto put = [&](int64_t i, float x) {
		if (isq)
			vec[i] = x;
		else
			kd[i] = from_f<CT>(x);
	};
	const float *bias = isq ? (qb ? qb + hh * hd : nullptr) : (kb ? kb + kh * hd : nullptr);
	const int64_t half = rot / 2;
	/* k heads: v read now, with everything else, not after the k stores
	 * (which the compiler cannot move the loads across); from clamped
	 * addresses, so that the loads issue together */
	float vr[ROPE_MAXV];
	const float *vsrc = v + t * vs + (isq ? 0 : kh) * hd, *vbh = vb && !isq ? vb + kh * hd : nullptr;
	if (!isq) {
#pragma unroll
		for (int u = 0; u < ROPE_MAXV; u++) {
			int64_t i = threadIdx.x + (int64_t)u * ROPE_THREADS, ic = i < hd ? i : hd - 1;
			vr[u] = vsrc[ic];
			if (vbh)
				vr[u] += vbh[ic];
		}
	}
	for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
		float cs, sn;
		if (rtab) { /* one token: made by k_embed */
			cs = rtab[i];
			sn = rtab[half + i];
		} else {
			rope_cs(p, inv_freq[i], ascale, &cs, &sn);
		}
		float x1 = vec[i], x2 = vec[i + half];
		if (bias) {
			x1 += bias[i];
			x2 += bias[i + half];
		}
		put(i, rope_rot(x1, x2, cs, sn, false, cd));
		put(i + half, rope_rot(x1, x2, cs, sn, true, cd));
	}
	for (int64_t i = rot + threadIdx.x; i < hd; i += blockDim.x) /* past the rotary dims */
		put(i, rnd(bias ? vec[i] + bias[i] : vec[i], cd));
	if (!isq) {
		CT *vd = vc + p * kvdim + kh * hd;
#pragma unroll
		for (int u = 0; u < ROPE_MAXV; u++) {
			int64_t i = threadIdx.x + (int64_t)u * ROPE_THREADS;
			if (i < hd)
				vd[i] = from_f<CT>(rnd(vr[u], cd));
		}
	}
	KT(2);
	KT_END(1, kc);
}

/* Merge S softmax states of each of nh heads (S <= ATT_MAXSPLIT, nh <= NH):
 * ld(r, s, i) is entry i of head r's state s (unnormalized vector of hd,
 * max, sum).  One warp per head weighs the states by their maxima, then
 * every thread sums dims (in state order) and hands st(r, d, a, M, L) the
 * weighted sum a of dim d with the heads' common max M and total sum L.
 * Each of the block's threads must call it (two barriers). */
template <int NH, typename LD, typename ST>
__device__ void merge_states(LD ld, ST st, int nh, int hd, int S)
{
	__shared__ float wsh[NH][ATT_MAXSPLIT], msh[NH], lsh[NH];
	static_assert(ATT_MAXSPLIT <= 64, "two states per lane");
	const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
	for (int r = threadIdx.x >> 5; r < nh; r += nw) {
		/* the (max, sum) pairs of states lane and lane + 32, read once */
		float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
		if (lane < S) {
			m0 = ld(r, lane, hd);
			l0 = ld(r, lane, hd + 1);
		}
		if (lane + 32 < S) {
			m1 = ld(r, lane + 32, hd);
			l1 = ld(r, lane + 32, hd + 1);
		}
		float M = fmaxf(m0, m1);
		for (int o = 16; o; o >>= 1)
			M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
		float L = 0.0f;
		if (lane < S) {
			const float w = m0 == -INFINITY ? 0.0f : expf(m0 - M);
			wsh[r][lane] = w;
			L += l0 * w;
		}
		if (lane + 32 < S) {
			const float w = m1 == -INFINITY ? 0.0f : expf(m1 - M);
			wsh[r][lane + 32] = w;
			L += l1 * w;
		}
		for (int o = 16; o; o >>= 1)
			L += __shfl_xor_sync(0xffffffffu, L, o);
		if (lane == 0) {
			msh[r] = M;
			lsh[r] = L;
		}
	}
	__syncthreads();
	for (int i = threadIdx.x; i < nh * hd; i += blockDim.x) {
		const int r = NH == 1 ? 0 : i / hd, d = i - r * hd;
		float a = 0.0f;
#pragma unroll 16
		for (int s = 0; s < S; s++) /* 16 loads in flight, the sum in state order */
			a += ld(r, s, d) * wsh[r][s];
		st(r, d, a, msh[r], lsh[r]);
	}
	__syncthreads(); /* wsh, msh, lsh free for the next call */
}

/* Merge the S splits of k_attn for (token t, head h) into out.
 * ld(s, i): entry i of split s's (unnormalized vector, max, sum). */
template <typename LD>
__device__ void merge_splits(LD ld, float *out, int64_t H, int64_t hd, int S, int cd, int64_t t, int64_t h)
{
	float *o = out + t * (H * hd) + h * hd;
	merge_states<1>([=](int, int s, int i) { return ld(s, i); },
			[=](int, int d, float a, float, float L) { o[d] = rnd(a * (1.0f / L), cd); }, 1, (int)hd, S);
}

/* The splits in part (written by other blocks of the same grid: read
 * through L2). */
__device__ void attn_merge(const float *part, float *out, int64_t H, int64_t hd, int S, int cd, int64_t t, int64_t h)
{
	const float *pp = part + (t * H + h) * S * (hd + 2);
	merge_splits([=](int s, int64_t i) { return __ldcg(pp + s * (hd + 2) + i); }, out, H, hd, S, cd, t, h);
}

/* Dim d of a decode-attention block's merged state (weighted sum a, max M,
 * sum L): normalized into o[d] where the block is its head's only split,
 * else unnormalized into its split's row part + row (then max, sum). */
__device__ __forceinline__ void split_put(float *o, float *part, int64_t row, bool only, int64_t hd, int cd, int d,
					  float a, float M, float L)
{
	if (only) {
		o[d] = rnd(a * (1.0f / L), cd); /* as merge_splits */
	} else {
		float *ps = part + row;
		ps[d] = a;
		if (d == 0) {
			ps[hd] = M;
			ps[hd + 1] = L;
		}
	}
}

/* After every thread's stores of this block's split to part: true in the
 * last of the S splits counted in *c to get here, which resets the counter
 * for the next step and may then read the others' splits (attn_merge). */
__device__ bool attn_split_last(int *c, int S)
{
	__shared__ int last;
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0) {
		last = atomicAdd(c, 1) == S - 1;
		if (last)
			*c = 0;
	}
	__syncthreads();
	if (last)
		__threadfence();
	return last;
}

/*
 * The S splits of (token t, head h) as one thread-block cluster (sm_90,
 * cl set).  Every block arrives on the cluster barrier as it starts
 * (cl_arrive_start; rank 0 first sets up its mbarrier, cl_bar_init); once
 * its keys are done it waits for that phase (every peer is running), sends
 * its (unnormalized vector, max, sum) into split slot r of rank 0's shared
 * gather[S][hd + 2] (cl_put) and exits, so that its SM is free for the next
 * kernel.  Rank 0 waits for the slots' bytes on its mbarrier (lq_mbar_wait0)
 * and merges them as attn_merge does (merge_splits).  No partials in global
 * memory, no fence, counter or last-block wait.  Diagnostic builds with
 * -DATT_CL_BARRIER gather through a second barrier phase instead (cl_slot,
 * attn_merge_cluster: each peer's release arrive, a GPU-scope fence, cost
 * about 1% of the 8B decode step; BENCHMARKS.md).
 */
__device__ __forceinline__ void cl_arrive(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("barrier.cluster.arrive.release;" ::: "memory");
#endif
}

/* The first phase orders no memory (it only says that the block runs):
 * relaxed, without the GPU-scope fence that a release arrive costs (ncu,
 * k_attn at ~100 positions: 15% of the stall samples on those fences). */
__device__ __forceinline__ void cl_arrive_start(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#ifdef ATT_ARRIVE_RELEASE /* diagnostic: the release arrive at the start too */
	asm volatile("barrier.cluster.arrive.release;" ::: "memory");
#else
	asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
#endif
#endif
}

__device__ __forceinline__ void cl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
#endif
}

/* This block's slot in rank 0's gather, once every peer has started. */
__device__ float *cl_slot(float *gather, int64_t hd)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	namespace cg = cooperative_groups;
	cg::cluster_group cl = cg::this_cluster();
	cl_wait(); /* the first phase: every peer has started */
	return cl.map_shared_rank(gather, 0u) + cl.block_rank() * (hd + 2);
#else
	__trap(); /* launched as a cluster only on sm_90 */
	return gather;
#endif
}

/* After every thread's stores to its slot: rank 0 merges, the others leave. */
__device__ void attn_merge_cluster(const float *gather, float *out, int64_t H, int64_t hd, int S, int cd, int64_t t,
				   int64_t h)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	cl_arrive();
	if (cooperative_groups::this_cluster().block_rank() != 0)
		return;
	cl_wait(); /* every split's slot is written */
	merge_splits([=](int s, int64_t i) { return gather[s * (hd + 2) + i]; }, out, H, hd, S, cd, t, h);
#endif
}

/*
 * The gather without a second barrier phase (sm_90, cl set): rank 0's
 * thread 0 initializes an mbarrier before the first phase, expecting the
 * bytes of the S - 1 peer slots; a peer writes its slot with st.async,
 * which counts the bytes on that mbarrier, and leaves, with no release
 * fence (the second phase's release arrive was a GPU-scope MEMBAR that
 * waited for the peer's own global stores); rank 0 waits for the bytes.
 */
__device__ __forceinline__ void cl_bar_init(uint64_t *bar, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	if (threadIdx.x == 0 && cooperative_groups::this_cluster().block_rank() == 0) {
		const uint32_t b = (uint32_t)__cvta_generic_to_shared(bar);
		asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(b) : "memory");
		asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(bytes) : "memory");
		asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
	}
#endif
}

__device__ __forceinline__ unsigned cl_rank(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	return cooperative_groups::this_cluster().block_rank();
#else
	__trap(); /* launched as a cluster only from sm_90 code (att_cluster_max) */
	return 0;
#endif
}

/* The shared::cluster address of p's counterpart in rank 0. */
__device__ __forceinline__ uint32_t cl_map0(const void *p)
{
	uint32_t r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("mapa.shared::cluster.u32 %0, %1, 0;" : "=r"(r) : "r"((uint32_t)__cvta_generic_to_shared(p)));
#endif
	return r;
}

__device__ __forceinline__ void cl_put(uint32_t addr, float v, uint32_t bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(addr),
		     "r"(__float_as_uint(v)), "r"(bar)
		     : "memory");
#endif
}

/*
 * RoPE folded into decode attention (one token; no k_rope launch): the raw
 * k and v rows of the step (after the q / k / v GEMV), their biases, the
 * rotary dims and k_embed's cos / sin of the position.  Every block rotates
 * its query head itself; the blocks whose split holds the new position
 * make its key and value (rounded to the cache's type, as k_rope stores
 * them) in shared memory and use them from there, and of those the block
 * of the first query head of each KV group also stores them into the
 * cache, where later steps read them.
 */
struct att_rope {
	const float *k, *v;          /* raw rows of this token (NULL: q and the cache are ready) */
	const float *qb, *kb, *vb;   /* biases or NULL */
	const float *rtab;           /* cos [rot / 2], then sin [rot / 2] */
	int64_t rot;
};

/*
 * Attention of query token t (blockIdx.y), head h (blockIdx.x) over the keys
 * of its split (blockIdx.z of gridDim.z) of the visible range, online
 * softmax per warp, then the warps merged.  One split: the normalized output
 * goes to out.  Several, launched as one cluster (cl): merged through
 * distributed shared memory (cl_put, lq_mbar_wait0).  Several otherwise: (max,
 * sum, unnormalized vector) go to part, and the last block of the splits to
 * finish (counted in cnt[t * H + h], which it resets) merges them into out.
 * With rp.k set (one token), q is raw and RoPE is done here (att_rope).
 */
template <typename CT>
__global__ void __launch_bounds__(ATT_WARPS * 32) k_attn(const float *q, int64_t qs, CT *kc, CT *vc,
						      float *out, float *part, int *cnt, int64_t H, int64_t grp,
						      int64_t hd, int64_t kvdim, int64_t window, float scale,
						      float cap, const int64_t *d_pos, int64_t pos, int cd, int cl,
						      const __grid_constant__ att_rope rp)
{
	KT_DECL;
	__shared__ float sm[ATT_WARPS][32 * ATT_MAXE + 2];
	__shared__ float qsh[32 * ATT_MAXE], kcur[32 * ATT_MAXE], vcur[32 * ATT_MAXE]; /* rp.k: q, the new key, value */
	extern __shared__ float gather[]; /* cl: [S][hd + 2] (used in rank 0) */
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int64_t t = blockIdx.y, h = blockIdx.x, kvh = h / grp;
	const int64_t p = cur_pos(d_pos, pos) + t, S = gridDim.z;
	int64_t j0, j1;
	split_keys(p, window, &j0, &j1);
	/* rp.k: the block whose split holds the new position makes its key and
	 * value; the warp that takes it (its split's last key) reads them */
	const bool fr = rp.k != nullptr, cur = fr && j0 <= p && p < j1;
	const bool mine = cur && (p - j0) % ATT_WARPS == warp;
#ifndef ATT_CL_BARRIER
	__shared__ __align__(8) uint64_t clbar; /* cl: rank 0's mbarrier for the peers' slots */
#endif
	if (cl) {
#ifndef ATT_CL_BARRIER
		cl_bar_init(&clbar, (uint32_t)((S - 1) * (hd + 2) * sizeof(float)));
#endif
		cl_arrive_start(); /* the first phase: this block has started */
	}
	pdl_wait();
	KT(1);
	const float *qv = q + t * qs + h * hd;
	float qr[ATT_MAXE], acc[ATT_MAXE];
	if (fr) {
		/* one element of q (and of the new key and value) per thread, from
		 * the raw rows, through shared memory */
		const int64_t half = rp.rot / 2;
		const float *kr = rp.k + t * qs + kvh * hd, *vr = rp.v + t * qs + kvh * hd;
		const float *qb = rp.qb ? rp.qb + h * hd : nullptr, *kb = rp.kb ? rp.kb + kvh * hd : nullptr;
		const float *vb = rp.vb ? rp.vb + kvh * hd : nullptr;
		const bool store = cur && h % grp == 0; /* the first query head of the KV group */
		CT *kd = kc + p * kvdim + kvh * hd, *vd = vc + p * kvdim + kvh * hd;
		for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
			qsh[d] = rope_at(qv, qb, d, half, rp.rot, rp.rtab, cd);
			if (cur) {
				const CT kx = from_f<CT>(rope_at(kr, kb, d, half, rp.rot, rp.rtab, cd));
				const CT vx = from_f<CT>(rnd(vb ? vr[d] + vb[d] : vr[d], cd));
				kcur[d] = kv_ld(&kx);
				vcur[d] = kv_ld(&vx);
				if (store) {
					kd[d] = kx;
					vd[d] = vx;
				}
			}
		}
		__syncthreads();
	}
#pragma unroll
	for (int e = 0; e < ATT_MAXE; e++) {
		int64_t d = lane + 32 * e;
		qr[e] = d >= hd ? 0.0f : fr ? qsh[d] : qv[d];
		acc[e] = 0.0f;
	}
	float m = -INFINITY, l = 0.0f;
	/* one key (this lane's elements of it): its scaled score into the
	 * warp's online softmax */
	auto key = [&](const float *kf, const float *vf) {
		float s = 0.0f;
#pragma unroll
		for (int e = 0; e < ATT_MAXE; e++)
			if (lane + 32 * e < hd)
				s = fmaf(qr[e], kf[e], s);
		for (int o = 16; o; o >>= 1)
			s += __shfl_xor_sync(0xffffffffu, s, o);
		s *= scale;
		if (cap > 0.0f)
			s = tanhf(s / cap) * cap;
		float mn = fmaxf(m, s);
		float corr = expf(m - mn), pw = expf(s - mn);
		l = l * corr + pw;
#pragma unroll
		for (int e = 0; e < ATT_MAXE; e++)
			acc[e] = acc[e] * corr + pw * vf[e];
		m = mn;
	};
	const int64_t jend = cur ? p : j1; /* the cache holds the keys before p */
	/* the warp's keys j0 + warp, + ATT_WARPS, ... in that order, ATT_KB of
	 * them loaded per round trip */
	for (int64_t jb = j0 + warp; jb < jend; jb += ATT_WARPS * ATT_KB) {
		float kf[ATT_KB][ATT_MAXE], vf[ATT_KB][ATT_MAXE];
#pragma unroll
		for (int b = 0; b < ATT_KB; b++) {
			const int64_t j = min(jb + b * ATT_WARPS, jend - 1); /* past the end: a valid row, unused */
			const CT *kv = kc + j * kvdim + kvh * hd;
			const CT *vv = vc + j * kvdim + kvh * hd;
#pragma unroll
			for (int e = 0; e < ATT_MAXE; e++) {
				int64_t d = lane + 32 * e;
				vf[b][e] = d < hd ? kv_ld(vv + d) : 0.0f;
				kf[b][e] = d < hd ? kv_ld(kv + d) : 0.0f;
			}
		}
#pragma unroll
		for (int b = 0; b < ATT_KB; b++)
			if (jb + b * ATT_WARPS < jend)
				key(kf[b], vf[b]);
	}
	if (mine) {
		float kf[ATT_MAXE], vf[ATT_MAXE];
#pragma unroll
		for (int e = 0; e < ATT_MAXE; e++) {
			int64_t d = lane + 32 * e;
			kf[e] = d < hd ? kcur[d] : 0.0f;
			vf[e] = d < hd ? vcur[d] : 0.0f;
		}
		key(kf, vf);
	}
	KT(2);
#pragma unroll
	for (int e = 0; e < ATT_MAXE; e++)
		sm[warp][lane + 32 * e] = acc[e];
	if (lane == 0) {
		sm[warp][32 * ATT_MAXE] = m;
		sm[warp][32 * ATT_MAXE + 1] = l;
	}
	__syncthreads();
	float M = -INFINITY;
	for (int w = 0; w < ATT_WARPS; w++)
		M = fmaxf(M, sm[w][32 * ATT_MAXE]);
	float L = 0.0f, f[ATT_WARPS];
	for (int w = 0; w < ATT_WARPS; w++) {
		float mw = sm[w][32 * ATT_MAXE];
		f[w] = mw == -INFINITY ? 0.0f : expf(mw - M);
		L += sm[w][32 * ATT_MAXE + 1] * f[w];
	}
#ifdef ATT_CL_BARRIER /* diagnostic: the gather through a second barrier phase */
	float *slot = cl ? cl_slot(gather, hd) : nullptr;
	const bool peer = false;
	const uint32_t sa = 0, rb = 0;
#else
	/* cl: rank 0 writes its slot in place, the peers with st.async */
	float *slot = gather;
	bool peer = false;
	uint32_t sa = 0, rb = 0;
	if (cl) {
		cl_wait(); /* the first phase: rank 0's mbarrier is ready */
		const unsigned rk = cl_rank();
		if (rk != 0) {
			peer = true;
			sa = cl_map0(gather + rk * (hd + 2));
			rb = cl_map0(&clbar);
		}
	}
#endif
	for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) {
		float a = 0.0f;
		for (int w = 0; w < ATT_WARPS; w++)
			a += sm[w][d] * f[w];
		if (S == 1)
			out[t * (H * hd) + h * hd + d] = rnd(a * (1.0f / L), cd); /* as merge_splits */
		else if (peer)
			cl_put(sa + (uint32_t)d * 4u, a, rb);
		else if (cl)
			slot[d] = a;
		else
			part[((t * H + h) * S + blockIdx.z) * (hd + 2) + d] = a;
	}
	if (cl) {
		if (threadIdx.x == 0) {
			if (peer) {
				cl_put(sa + (uint32_t)hd * 4u, M, rb);
				cl_put(sa + (uint32_t)(hd + 1) * 4u, L, rb);
			} else {
				slot[hd] = M;
				slot[hd + 1] = L;
			}
		}
		KT(3);
#ifdef ATT_CL_BARRIER
		attn_merge_cluster(gather, out, H, hd, (int)S, cd, t, h);
#else
		if (!peer) {
			__syncthreads(); /* this block's own slot */
			lq_mbar_wait0(&clbar); /* every peer's slot has landed */
			merge_splits([=](int s, int64_t i) { return gather[s * (hd + 2) + i]; }, out, H, hd, (int)S, cd, t,
				     h);
		}
#endif
		KT(4);
		KT_END(2, kc);
		return;
	}
	if (S > 1 && threadIdx.x == 0) {
		float *pp = part + ((t * H + h) * S + blockIdx.z) * (hd + 2);
		pp[hd] = M;
		pp[hd + 1] = L;
	}
	if (S == 1) {
		KT_END(2, kc);
		return;
	}
	const bool last = attn_split_last(cnt + t * H + h, (int)S);
	KT(3);
	if (!last) {
		KT_END(2, kc);
		return;
	}
	attn_merge(part, out, H, hd, (int)S, cd, t, h);
	KT(4);
	KT_END(2, kc);
}

/*
 * Decode attention for long caches (one token; see att_long_of): as
 * k_attn, a block per query head and split, the splits merged through part
 * by the last block to finish, but a key is shared by G lanes (G = 4, 8,
 * 16 or 32), so that a warp takes 32 / G keys per round trip and each
 * lane group keeps its own online softmax: a score costs log2(G) shuffles
 * and no broadcast, and a value row is accumulated without waiting for the
 * other keys.  Lane c of a group holds DPL dims of q, of each key and value row
 * and of the output: dims j * G * VEC + c * VEC + [0, VEC) for j <
 * DPL / VEC, VEC elements being one 16-byte load, so that each load
 * instruction reads G * 16 contiguous bytes of every row in flight.  The
 * softmax rescales only when a group's maximum grows (a warp vote).  q is
 * rotated and this step's key and value are in the cache (k_rope ran
 * before).  The block's ATT_WARPS * 32 / G states meet in shared memory
 * (dynamic: att_long_smem).
 */
template <typename CT, int DPL>
__global__ void __launch_bounds__(ATT_WARPS * 32) k_attn_long(const float *q, const CT *kc, const CT *vc,
							   float *out, float *part, int *cnt, int64_t H, int64_t grp,
							   int64_t hd, int64_t kvdim, int64_t window, float scale,
							   float cap, const int64_t *d_pos, int64_t pos, int cd, int gsh)
{
	constexpr int VEC = 16 / (int)sizeof(CT), NJ = DPL / VEC;
	static_assert(DPL % VEC == 0, "whole 16-byte loads");
	extern __shared__ __align__(16) float lsm[]; /* [ns][hd + 4]: vector, max, sum */
	const int G = 1 << gsh, KB = 32 >> gsh, ns = ATT_WARPS * KB, sst = (int)hd + 4;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, u = lane >> gsh, c = lane & (G - 1);
	const int64_t h = blockIdx.x, kvh = h / grp, S = gridDim.z;
	pdl_wait();
	int64_t j0, j1;
	split_keys(cur_pos(d_pos, pos), window, &j0, &j1);
	const int js = G * VEC; /* elements between a lane's loads in a row */
	float qr[DPL], acc[DPL];
#pragma unroll
	for (int j = 0; j < NJ; j++)
#pragma unroll
		for (int e = 0; e < VEC; e++) {
			qr[j * VEC + e] = q[h * hd + j * js + c * VEC + e];
			acc[j * VEC + e] = 0.0f;
		}
	const CT *kb = kc + kvh * hd + c * VEC, *vb = vc + kvh * hd + c * VEC;
	float m = -INFINITY, l = 0.0f;
	for (int64_t jb = j0 + (int64_t)warp * KB; jb < j1; jb += (int64_t)ATT_WARPS * KB) {
		const int64_t jk = jb + u;
		const bool ok = jk < j1;
		const int64_t jr = ok ? jk : j1 - 1; /* past the split: its last key again, masked */
		uint4 kr[NJ], vr[NJ];
#pragma unroll
		for (int j = 0; j < NJ; j++) {
			kr[j] = __ldg((const uint4 *)(kb + jr * kvdim + j * js));
			vr[j] = __ldg((const uint4 *)(vb + jr * kvdim + j * js));
		}
		float s = 0.0f;
#pragma unroll
		for (int j = 0; j < NJ; j++) {
			const CT *kx = (const CT *)&kr[j];
#pragma unroll
			for (int e = 0; e < VEC; e++)
				s = fmaf(qr[j * VEC + e], kv_ld(kx + e), s);
		}
		for (int o = 1; o < G; o <<= 1)
			s += __shfl_xor_sync(0xffffffffu, s, o);
		s *= scale;
		if (cap > 0.0f)
			s = tanhf(s / cap) * cap;
		s = ok ? s : -INFINITY;
		if (__any_sync(0xffffffffu, s > m)) {
			const float mn = fmaxf(m, s), corr = m == mn ? 1.0f : expf(m - mn);
			l *= corr;
#pragma unroll
			for (int e = 0; e < DPL; e++)
				acc[e] *= corr;
			m = mn;
		}
		const float pw = ok ? expf(s - m) : 0.0f;
		l += pw;
#pragma unroll
		for (int j = 0; j < NJ; j++) {
			const CT *vx = (const CT *)&vr[j];
#pragma unroll
			for (int e = 0; e < VEC; e++)
				acc[j * VEC + e] = fmaf(pw, kv_ld(vx + e), acc[j * VEC + e]);
		}
	}
	float *st = lsm + (warp * KB + u) * sst;
#pragma unroll
	for (int j = 0; j < NJ; j++)
#pragma unroll
		for (int e = 0; e < VEC; e += 4)
			*(float4 *)(st + j * js + c * VEC + e) =
				make_float4(acc[j * VEC + e], acc[j * VEC + e + 1], acc[j * VEC + e + 2], acc[j * VEC + e + 3]);
	if (c == 0) {
		st[hd] = m;
		st[hd + 1] = l;
	}
	__syncthreads();
	float *pp = part + (h * S + blockIdx.z) * (hd + 2);
	merge_states<1>([=](int, int s, int i) { return lsm[s * sst + i]; },
			[=](int, int d, float a, float M, float L) { split_put(out + h * hd, pp, 0, S == 1, hd, cd, d, a, M, L); },
			1, (int)hd, ns);
	if (S == 1)
		return;
	if (attn_split_last(cnt + h, (int)S))
		attn_merge(part, out, H, hd, (int)S, cd, 0, h);
}

/* k_attn_long's dynamic shared memory for head size hd and 2^gsh lanes per
 * key (under 17 KB: G = 4 only up to head size 128). */
static size_t att_long_smem(int64_t hd, int gsh)
{
	const int64_t ns = ATT_WARPS * (32 >> gsh);
	return (size_t)(ns * (hd + 4)) * sizeof(float);
}
/*
 * Decode attention for long caches on the tensor cores, a block per KV head
 * and split (one token; bf16 / fp16 caches; head size 64 or 128; 2 to 8
 * query heads per KV head; see att_gqa_of).  Each key and value row is read
 * once for the whole group, where k_attn_long reads it once per query head.
 * A warp takes 16 keys per step:
 *  - S^T = Q K^T, two mma.m16n8k16 n-tiles of 8 keys: A = the group's q
 *    (rows: query heads, rows past the group zero), B = the key rows as they
 *    are in the cache.  The sum over dims is order-free, so lane (g, c)
 *    takes 16 contiguous bytes (8 dims) of key g per load, pieces 4t + c of
 *    the row; for k-step 2t + s its k slots 2c, 2c + 1 (2c + 8, 2c + 9) are
 *    dims 8 (4t + c) + 4s + {0, 1} ({2, 3}), and q is packed to match.
 *  - The online softmax per head (row g of the C fragment) in fp32, the
 *    probabilities rounded to the compute dtype for P V (as k_attn_tc).
 *  - O = P V: the C fragments of the two S tiles are the A fragment as they
 *    are (the k slots are keys 2c, 2c + 1, 2c + 8, 2c + 9); B needs those
 *    four keys at one dim, so lane (g, c) loads dims 8g + 64u + [0, 8) of
 *    the four rows and n-tile 8u + e's column n is dim 64u + 8n + e: one PRMT
 *    per B register.
 * The warps' states meet in shared memory (merge_states).  With S > 1
 * splits k_attn_merge then merges them, a block per query head: the last
 * split's block merging the group's splits alone measured slower (H200,
 * NF4, ms/token: Llama 3.1 8B 2.34 / 2.30 after 4000 tokens, 2.70 / 2.67
 * after 16000; Qwen2-7B 2.64 / 2.45 after 16000; BENCHMARKS.md).
 */
#define AG_WARPS 4
/* d[0..1] += rows 0..7 of A B (m16n8k16; A's rows 8..15 are zero here): the
 * C fragment's other half is a dead temporary, not 32 registers of zeros. */
template <bool F16>
static __device__ __forceinline__ void ag_mma(float *d, uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1)
{
	float x, y;
	if (F16)
		asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
		    "{%0,%1,%10,%10};"
		    : "+f"(d[0]), "+f"(d[1]), "=f"(x), "=f"(y)
		    : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.0f));
	else
		asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
		    "{%0,%1,%10,%10};"
		    : "+f"(d[0]), "+f"(d[1]), "=f"(x), "=f"(y)
		    : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.0f));
	(void)x;
	(void)y;
}
template <bool F16, int HD>
__global__ void __launch_bounds__(AG_WARPS * 32, 2) k_attn_gqa(const float *q, const uint16_t *kc, const uint16_t *vc,
							 float *out, float *part, int64_t H, int grp,
							 int64_t kvdim, int64_t window, float scale, float cap,
							 const int64_t *d_pos, int64_t pos, int cd)
{
	constexpr int KS = HD / 16, KC = HD / 32, VC = HD / 64, NT = HD / 8;
	static_assert(HD % 64 == 0 && NT == 8 * VC, "k_attn_gqa's head sizes");
	__shared__ __align__(16) float so[AG_WARPS][8][HD + 4]; /* each warp's O per head, then max, sum */
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
	const int64_t kvh = blockIdx.x, S = gridDim.z, h0 = kvh * grp;
	pdl_wait();
	int64_t j0, j1;
	split_keys(cur_pos(d_pos, pos), window, &j0, &j1);
	/* A = Q: head g, k-steps 2t and 2t + 1 from dims 8 (4t + c) + [0, 8) */
	uint32_t qa[KS][2];
#pragma unroll
	for (int t = 0; t < KC; t++) {
		float4 v0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v1 = v0;
		if (g < grp) {
			const float *qp = q + (h0 + g) * HD + 8 * (4 * t + c);
			v0 = *(const float4 *)qp;
			v1 = *(const float4 *)(qp + 4);
		}
		qa[2 * t][0] = lq_pack16<F16>(v0.x, v0.y);
		qa[2 * t][1] = lq_pack16<F16>(v0.z, v0.w);
		qa[2 * t + 1][0] = lq_pack16<F16>(v1.x, v1.y);
		qa[2 * t + 1][1] = lq_pack16<F16>(v1.z, v1.w);
	}
	float o[NT][2]; /* head g, columns 2c and 2c + 1 of each n-tile */
#pragma unroll
	for (int n = 0; n < NT; n++)
		o[n][0] = o[n][1] = 0.0f;
	float m = -INFINITY, l = 0.0f; /* head g's running max; this lane's part of its sum */
	const uint16_t *kb = kc + kvh * HD, *vb = vc + kvh * HD;
	const int kvd = (int)kvdim; /* kvdim < 2^27 (att_gqa_takes): 16 rows' offsets fit in an int */
	/* keys jb + g, jb + 8 + g; values jb + 2c + {0, 1, 8, 9}; rows past the
	 * split: its last row again, masked; offsets from row jb in 32 bits */
	auto load = [&](int64_t jb, uint4(*kr)[KC], uint4(*vr)[VC]) {
		const int last = (int)min((int64_t)15, j1 - 1 - jb);
		const uint16_t *kj = kb + jb * kvdim, *vj = vb + jb * kvdim;
#pragma unroll
		for (int hh = 0; hh < 2; hh++) {
			const int o = min(8 * hh + g, last) * kvd + 8 * c;
#pragma unroll
			for (int t = 0; t < KC; t++)
				kr[hh][t] = __ldg((const uint4 *)(kj + o + 32 * t));
		}
#pragma unroll
		for (int rr = 0; rr < 4; rr++) {
			const int o = min(2 * c + (rr & 1) + 8 * (rr >> 1), last) * kvd + 8 * g;
#pragma unroll
			for (int u = 0; u < VC; u++)
				vr[rr][u] = __ldg((const uint4 *)(vj + o + 64 * u));
		}
	};
	/* software pipelined: the next step's rows are in flight while this
	 * step's are used (255 registers, 2 blocks per SM; without, 168 and 3:
	 * 2.47 against 2.56 ms/token after 8000 tokens) */
	uint4 kr[2][KC], vr[4][VC];
	if (j0 + warp * 16 < j1)
		load(j0 + warp * 16, kr, vr);
	for (int64_t jb = j0 + warp * 16; jb < j1; jb += AG_WARPS * 16) {
		uint4 kn[2][KC], vn[4][VC];
		if (jb + AG_WARPS * 16 < j1)
			load(jb + AG_WARPS * 16, kn, vn);
		float s[2][2];
#pragma unroll
		for (int hh = 0; hh < 2; hh++) {
			s[hh][0] = s[hh][1] = 0.0f;
#pragma unroll
			for (int t = 0; t < KC; t++) {
				ag_mma<F16>(s[hh], qa[2 * t][0], qa[2 * t][1], kr[hh][t].x, kr[hh][t].y);
				ag_mma<F16>(s[hh], qa[2 * t + 1][0], qa[2 * t + 1][1], kr[hh][t].z, kr[hh][t].w);
			}
		}
		/* s[hh][e]: head g, key jb + 8 hh + 2c + e */
		float mx = -INFINITY;
#pragma unroll
		for (int hh = 0; hh < 2; hh++)
#pragma unroll
			for (int e = 0; e < 2; e++) {
				float v = s[hh][e] * scale;
				if (cap > 0.0f)
					v = tanhf(v / cap) * cap;
				v = jb + 8 * hh + 2 * c + e < j1 ? v : -INFINITY;
				s[hh][e] = v;
				mx = fmaxf(mx, v);
			}
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2)); /* finite: key jb is in the split */
		if (__any_sync(0xffffffffu, mx > m)) {
			const float mn = fmaxf(m, mx), corr = m == mn ? 1.0f : expf(m - mn);
			l *= corr;
#pragma unroll
			for (int n = 0; n < NT; n++) {
				o[n][0] *= corr;
				o[n][1] *= corr;
			}
			m = mn;
		}
		float pw[2][2];
#pragma unroll
		for (int hh = 0; hh < 2; hh++)
#pragma unroll
			for (int e = 0; e < 2; e++) {
				pw[hh][e] = s[hh][e] == -INFINITY ? 0.0f : expf(s[hh][e] - m);
				l += pw[hh][e];
			}
		const uint32_t pa0 = lq_pack16<F16>(pw[0][0], pw[0][1]), pa2 = lq_pack16<F16>(pw[1][0], pw[1][1]);
#pragma unroll
		for (int u = 0; u < VC; u++)
#pragma unroll
			for (int e = 0; e < 8; e++) {
				const uint32_t sel = e & 1 ? 0x7632u : 0x5410u;
				const uint32_t *w0 = (const uint32_t *)&vr[0][u], *w1 = (const uint32_t *)&vr[1][u];
				const uint32_t *w2 = (const uint32_t *)&vr[2][u], *w3 = (const uint32_t *)&vr[3][u];
				const uint32_t b0 = __byte_perm(w0[e >> 1], w1[e >> 1], sel);
				const uint32_t b1 = __byte_perm(w2[e >> 1], w3[e >> 1], sel);
				ag_mma<F16>(o[8 * u + e], pa0, pa2, b0, b1);
			}
#pragma unroll
		for (int hh = 0; hh < 2; hh++)
#pragma unroll
			for (int t = 0; t < KC; t++)
				kr[hh][t] = kn[hh][t];
#pragma unroll
		for (int rr = 0; rr < 4; rr++)
#pragma unroll
			for (int u = 0; u < VC; u++)
				vr[rr][u] = vn[rr][u];
	}
	l += __shfl_xor_sync(0xffffffffu, l, 1);
	l += __shfl_xor_sync(0xffffffffu, l, 2);
	if (g < grp) {
		float *sw = so[warp][g];
		/* o[8u + e][0 / 1]: columns 2c and 2c + 1, dims 64u + 16c + e and + 8 */
#pragma unroll
		for (int u = 0; u < VC; u++)
#pragma unroll
			for (int e = 0; e < 8; e++) {
				sw[64 * u + 16 * c + e] = o[8 * u + e][0];
				sw[64 * u + 16 * c + 8 + e] = o[8 * u + e][1];
			}
		if (c == 0) {
			sw[HD] = m;
			sw[HD + 1] = l;
		}
	}
	__syncthreads();
	/* the warps' states, all heads at once */
	float *pp = part + h0 * S * (HD + 2);
	merge_states<8>([&](int r, int w, int i) { return so[w][r][i]; },
			[=](int r, int d, float a, float M, float L) {
				split_put(out + (h0 + r) * HD, pp, (r * S + blockIdx.z) * (HD + 2), S == 1, HD, cd, d, a, M, L);
			},
			grp, HD, AG_WARPS);
}

/* The S splits of each of the H heads in part merged into out, a block per
 * head (after k_attn_gqa with S > 1). */
__global__ void __launch_bounds__(ATT_WARPS * 32) k_attn_merge(const float *part, float *out, int64_t H, int64_t hd,
							      int S, int cd)
{
	pdl_wait();
	attn_merge(part, out, H, hd, S, cd, 0, blockIdx.x);
}

/*
 * Attention for a chunk of n > 1 query tokens, tiled: a block of FA_THREADS
 * takes FA_Q queries of one head and walks the visible keys of the cache in
 * tiles of FA_K (K and V staged in shared memory, rows padded so that the
 * 16-byte reads of a quarter warp hit distinct banks), with an online
 * softmax per query row.  Lane (rq, u) (rq = 0..15, u = 0..15) owns query
 * rows rq and rq + 16: it scores keys u and u + 16 of each tile for both
 * (2 x 2 dot products share their loads) and accumulates output dims u,
 * u + 16, ... for both, so each value read from shared memory feeds two or
 * more FMAs.  float32 throughout (the cache's entries widened), as k_attn;
 * causal, sliding window and soft-capping as there.
 */
#define FA_Q 32
#define FA_K 32
#define FA_THREADS 256
static size_t fa_smem(int64_t hd)
{
	return ((size_t)(FA_Q + 2 * FA_K) * (size_t)(hd + 4) + (size_t)FA_Q * (FA_K + 1)) * sizeof(float);
}
template <int EM, typename CT> /* head_dim <= 16 * EM */
__global__ void __launch_bounds__(FA_THREADS, 2) k_attn_tiled(const float *q, int64_t qs, const CT *kc,
							      const CT *vc, float *out, int64_t H, int64_t grp,
							      int64_t hd, int64_t kvdim, int64_t window, float scale,
							      float cap, int64_t pos, int64_t n, int cd)
{
	extern __shared__ __align__(16) float fa_sm[];
	pdl_wait();
	const int64_t h = blockIdx.x, kvh = h / grp, t0 = (int64_t)blockIdx.y * FA_Q;
	const int ld = (int)hd + 4, ihd = (int)hd;
	float *Qs = fa_sm, *Ks = Qs + FA_Q * ld, *Vs = Ks + FA_K * ld, *Ps = Vs + FA_K * ld; /* Ps: [FA_Q][FA_K + 1] */
	const int tid = threadIdx.x, rq = tid >> 4, u = tid & 15;
	const int nq = (int)min((int64_t)FA_Q, n - t0);
	for (int i = tid; i < FA_Q * ihd; i += FA_THREADS) {
		int qi = i / ihd, d = i - qi * ihd;
		Qs[qi * ld + d] = qi < nq ? q[(t0 + qi) * qs + h * hd + d] : 0.0f;
	}
	const int64_t p0 = pos + t0 + rq, p1 = p0 + 16; /* this lane's two query positions */
	const int64_t pmax = pos + t0 + nq - 1;         /* the last key any query of the tile sees */
	int64_t lo = 0;
	if (window > 0 && pos + t0 - window + 1 > 0)
		lo = pos + t0 - window + 1;
	const int E = (ihd + 15) / 16;
	float acc0[EM], acc1[EM];
#pragma unroll
	for (int e = 0; e < EM; e++)
		acc0[e] = acc1[e] = 0.0f;
	float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
	for (int64_t k0 = lo - lo % FA_K; k0 <= pmax; k0 += FA_K) {
		__syncthreads(); /* the previous tile is consumed */
		for (int i = tid; i < FA_K * ihd; i += FA_THREADS) {
			int kj = i / ihd, d = i - kj * ihd;
			int64_t j = k0 + kj;
			bool ok = j <= pmax;
			Ks[kj * ld + d] = ok ? kv_ld(kc + j * kvdim + kvh * hd + d) : 0.0f;
			Vs[kj * ld + d] = ok ? kv_ld(vc + j * kvdim + kvh * hd + d) : 0.0f;
		}
		__syncthreads();
		/* s[a][b]: query rq + 16 a, key u + 16 b */
		float s[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
		const float *q0 = Qs + rq * ld, *q1 = q0 + 16 * ld, *ka = Ks + u * ld, *kb = ka + 16 * ld;
		if ((ihd & 3) == 0) {
			for (int d = 0; d < ihd; d += 4) {
				float4 a0 = *(const float4 *)(q0 + d), a1 = *(const float4 *)(q1 + d);
				float4 b0 = *(const float4 *)(ka + d), b1 = *(const float4 *)(kb + d);
				s[0][0] = fmaf(a0.x, b0.x, fmaf(a0.y, b0.y, fmaf(a0.z, b0.z, fmaf(a0.w, b0.w, s[0][0]))));
				s[0][1] = fmaf(a0.x, b1.x, fmaf(a0.y, b1.y, fmaf(a0.z, b1.z, fmaf(a0.w, b1.w, s[0][1]))));
				s[1][0] = fmaf(a1.x, b0.x, fmaf(a1.y, b0.y, fmaf(a1.z, b0.z, fmaf(a1.w, b0.w, s[1][0]))));
				s[1][1] = fmaf(a1.x, b1.x, fmaf(a1.y, b1.y, fmaf(a1.z, b1.z, fmaf(a1.w, b1.w, s[1][1]))));
			}
		} else {
			for (int d = 0; d < ihd; d++) {
				s[0][0] = fmaf(q0[d], ka[d], s[0][0]);
				s[0][1] = fmaf(q0[d], kb[d], s[0][1]);
				s[1][0] = fmaf(q1[d], ka[d], s[1][0]);
				s[1][1] = fmaf(q1[d], kb[d], s[1][1]);
			}
		}
		float corr[2];
#pragma unroll
		for (int a = 0; a < 2; a++) {
			const int64_t pq = a ? p1 : p0;
			const bool live = rq + 16 * a < nq;
			float mx = -INFINITY;
#pragma unroll
			for (int b = 0; b < 2; b++) {
				int64_t j = k0 + u + 16 * b;
				float sv = s[a][b] * scale;
				if (cap > 0.0f)
					sv = tanhf(sv / cap) * cap;
				bool vis = live && j <= pq && j >= lo && (window <= 0 || j > pq - window);
				s[a][b] = vis ? sv : -INFINITY;
				mx = fmaxf(mx, s[a][b]);
			}
			for (int o = 1; o < 16; o <<= 1)
				mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
			float &m = a ? m1 : m0, &l = a ? l1 : l0;
			float mn = fmaxf(m, mx);
			corr[a] = mn == -INFINITY ? 1.0f : expf(m - mn);
			float ps = 0.0f;
#pragma unroll
			for (int b = 0; b < 2; b++) {
				float pw = mn == -INFINITY ? 0.0f : expf(s[a][b] - mn);
				Ps[(rq + 16 * a) * (FA_K + 1) + u + 16 * b] = pw;
				ps += pw;
			}
			for (int o = 1; o < 16; o <<= 1)
				ps += __shfl_xor_sync(0xffffffffu, ps, o);
			l = l * corr[a] + ps;
			m = mn;
		}
		__syncwarp();
#pragma unroll
		for (int e = 0; e < EM; e++) {
			acc0[e] *= corr[0];
			acc1[e] *= corr[1];
		}
		const float *pr0 = Ps + rq * (FA_K + 1), *pr1 = pr0 + 16 * (FA_K + 1);
		for (int kj = 0; kj < FA_K; kj++) {
			float w0 = pr0[kj], w1 = pr1[kj];
			const float *vr = Vs + kj * ld + u;
#pragma unroll
			for (int e = 0; e < EM; e++) {
				if (e < E && u + 16 * e < ihd) {
					float v = vr[16 * e];
					acc0[e] = fmaf(w0, v, acc0[e]);
					acc1[e] = fmaf(w1, v, acc1[e]);
				}
			}
		}
	}
#pragma unroll
	for (int a = 0; a < 2; a++) {
		if (rq + 16 * a >= nq)
			continue;
		float inv = 1.0f / (a ? l1 : l0);
#pragma unroll
		for (int e = 0; e < EM; e++) {
			int d = u + 16 * e;
			if (e < E && d < ihd)
				out[(t0 + rq + 16 * a) * (H * hd) + h * hd + d] = rnd((a ? acc1[e] : acc0[e]) * inv, cd);
		}
	}
}

/*
 * Attention for a chunk of n > 1 query tokens on the tensor cores (bf16 or
 * fp16 compute, head_dim a multiple of 16 up to 256): a block of 4 warps
 * takes TA_Q = 64 queries of one head, each warp 16 of them, and walks the
 * visible keys in tiles of TA_K = 64, flash-attention style.  K and V tiles
 * are copied into shared memory as they are in the cache (rows of the
 * compute dtype) by cp.async, the next tile's copy in flight while the
 * current one is used (two stages up to head size 128; one at 160-256, where
 * two would leave one block per SM); the operand fragments come from ldmatrix
 * (V's transposed, the B operand of P V).  Q holds values of that dtype
 * (k_rope rounds them) and the cache is in it, so S = Q K^T takes exact
 * products with fp32 accumulation (mma.m16n8k16).  The online softmax runs
 * in fp32 on the S fragment (scale, soft-capping, causal and sliding-window
 * masks as k_attn); the probabilities are rounded to the compute dtype for
 * P V (as eager attention in bf16 does), the row sums use them unrounded,
 * and O accumulates in fp32.  Keys past the chunk's last are zero-filled.
 */
#define TA_Q 64
#define TA_K 64
#define TA_THREADS 128
/* the instance for a head size: head_dim <= 8 * NT */
static int ta_nt(int64_t hd) { return hd <= 64 ? 8 : hd <= 128 ? 16 : 32; }
/* its stages of K and V */
__host__ __device__ constexpr int ta_stages(int nt) { return nt <= 16 ? 2 : 1; }
static size_t ta_smem(int64_t hd)
{
	return (size_t)(TA_Q + 2 * TA_K * ta_stages(ta_nt(hd))) * (size_t)(hd + 8) * 2;
}
static bool ta_ok(int64_t hd) { return hd % 16 == 0 && hd <= 256; }

__device__ __forceinline__ void ta_ldsm(uint32_t r[4], const uint16_t *p)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"((uint32_t)__cvta_generic_to_shared(p)));
}
__device__ __forceinline__ void ta_ldsm_t(uint32_t r[4], const uint16_t *p)
{
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
		     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
		     : "r"((uint32_t)__cvta_generic_to_shared(p)));
}
/* 16 bytes global -> shared, asynchronously; zeros where !ok */
__device__ __forceinline__ void ta_cp16(uint16_t *dst, const uint16_t *src, bool ok)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)),
		     "l"(src), "r"(ok ? 16 : 0)
		     : "memory");
}
__device__ __forceinline__ void ta_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void ta_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

template <bool F16, int NT> /* head_dim <= 8 * NT */
__global__ void __launch_bounds__(TA_THREADS) k_attn_tc(const float *q, int64_t qs, const uint16_t *kc, const uint16_t *vc,
							 float *out, int64_t H, int64_t grp, int64_t hd, int64_t kvdim,
							 int64_t window, float scale, float cap, int64_t pos, int64_t n,
							 int cd, void *out16)
{
	extern __shared__ __align__(16) uint16_t ta_sm[];
	constexpr int ST = ta_stages(NT);
	pdl_wait();
	const int ld = (int)hd + 8, h4 = (int)hd / 4, h8 = (int)hd / 8;
	uint16_t *Qs = ta_sm, *KV0 = Qs + TA_Q * ld; /* stage s: K rows at KV0 + 2 s TA_K ld, then V rows */
	const int64_t h = blockIdx.x, kvh = h / grp, t0 = (int64_t)blockIdx.y * TA_Q;
	const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
	const int nq = (int)min((int64_t)TA_Q, n - t0);
	const int r0 = warp * 16 + g; /* this lane's rows r0 and r0 + 8 of the tile */
	const int64_t pq0 = pos + t0 + r0, pq1 = pq0 + 8;
	const bool live0 = r0 < nq, live1 = r0 + 8 < nq;
	const int64_t pmax = pos + t0 + nq - 1, wlast = pos + t0 + warp * 16 + 15;
	int64_t lo = 0;
	if (window > 0 && pos + t0 - window + 1 > 0)
		lo = pos + t0 - window + 1;
	const int64_t kfirst = lo - lo % TA_K;
	const int ntiles = (int)((pmax - kfirst) / TA_K + 1);
	const uint16_t *kh = kc + kvh * hd, *vh = vc + kvh * hd;
	/* tile `it`'s keys into stage s, one commit group */
	auto issue = [&](int it, int s) {
		const int64_t k0 = kfirst + (int64_t)it * TA_K;
		uint16_t *Ks = KV0 + 2 * s * TA_K * ld, *Vs = Ks + TA_K * ld;
		for (int i = tid; i < TA_K * h8; i += TA_THREADS) {
			const int kj = i / h8, d = (i - kj * h8) * 8;
			const int64_t j = k0 + kj;
			const bool ok = j <= pmax;
			const int64_t off = (ok ? j : 0) * kvdim + d;
			ta_cp16(Ks + kj * ld + d, kh + off, ok);
			ta_cp16(Vs + kj * ld + d, vh + off, ok);
		}
		ta_commit();
	};
	issue(0, 0);
	for (int i = tid; i < TA_Q * h4; i += TA_THREADS) {
		int qi = i / h4, d = (i - qi * h4) * 4;
		float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
		if (qi < nq)
			v = *(const float4 *)(q + (t0 + qi) * qs + h * hd + d);
		*(uint2 *)(Qs + qi * ld + d) = make_uint2(lq_pack16<F16>(v.x, v.y), lq_pack16<F16>(v.z, v.w));
	}
	const int kt = (int)hd / 16, ntl = (int)hd / 8;
	/* ldmatrix lane addresses: matrix lane >> 3, its row lane & 7 */
	const int lm = lane >> 3, lr = lane & 7;
	const uint16_t *qrow = Qs + (warp * 16 + (lane & 15)) * ld + (lane >> 4) * 8;
	const int koff = ((lm >> 1) * 8 + lr) * ld + (lm & 1) * 8; /* K: keys +8 for matrices 2, 3; dims +8 for 1, 3 */
	const int voff = ((lm & 1) * 8 + lr) * ld + (lm >> 1) * 8; /* V: keys +8 for matrices 1, 3; dims +8 for 2, 3 */
	float o[NT][4];
#pragma unroll
	for (int d = 0; d < NT; d++)
		o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
	float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
	for (int it = 0; it < ntiles; it++) {
		const int64_t k0 = kfirst + (int64_t)it * TA_K;
		const int s = ST == 2 ? (it & 1) : 0;
		if (ST == 1 && it > 0)
			issue(it, 0);
		if (ST == 2 && it + 1 < ntiles) {
			issue(it + 1, s ^ 1);
			ta_wait<1>();
		} else {
			ta_wait<0>();
		}
		__syncthreads(); /* tile `it` (and Q) visible to every warp */
		const uint16_t *Ks = KV0 + 2 * s * TA_K * ld, *Vs = Ks + TA_K * ld;
		if (k0 <= wlast && warp * 16 < nq) { /* else no row of this warp sees a key of the tile */
			float sc[8][4];
#pragma unroll
			for (int t = 0; t < 8; t++)
				sc[t][0] = sc[t][1] = sc[t][2] = sc[t][3] = 0.0f;
			for (int kk = 0; kk < kt; kk++) {
				uint32_t a[4];
				ta_ldsm(a, qrow + kk * 16);
#pragma unroll
				for (int t = 0; t < 8; t += 2) {
					uint32_t b[4];
					ta_ldsm(b, Ks + t * 8 * ld + kk * 16 + koff);
					lq_mma16816<F16>(sc[t], a[0], a[1], a[2], a[3], b[0], b[1]);
					lq_mma16816<F16>(sc[t + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
				}
			}
			/* every key of the tile visible to all 16 rows of the warp: no masks */
			const bool full = k0 + TA_K - 1 <= pos + t0 + warp * 16 && warp * 16 + 16 <= nq && k0 >= lo &&
					  (window <= 0 || k0 > wlast - window);
			float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
			for (int t = 0; t < 8; t++)
#pragma unroll
				for (int e = 0; e < 4; e++) {
					float v = sc[t][e] * scale;
					if (cap > 0.0f)
						v = tanhf(v / cap) * cap;
					if (!full) {
						const int64_t j = k0 + t * 8 + 2 * c + (e & 1), pq = e < 2 ? pq0 : pq1;
						const bool vis = (e < 2 ? live0 : live1) && j <= pq && j >= lo &&
								 (window <= 0 || j > pq - window);
						v = vis ? v : -INFINITY;
					}
					sc[t][e] = v;
					if (e < 2)
						mx0 = fmaxf(mx0, sc[t][e]);
					else
						mx1 = fmaxf(mx1, sc[t][e]);
				}
			mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
			mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
			mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
			mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
			const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
			const float c0 = mn0 == -INFINITY ? 1.0f : expf(m0 - mn0), c1 = mn1 == -INFINITY ? 1.0f : expf(m1 - mn1);
			float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
			for (int t = 0; t < 8; t++)
#pragma unroll
				for (int e = 0; e < 4; e++) {
					const float mn = e < 2 ? mn0 : mn1;
					float pw = mn == -INFINITY ? 0.0f : expf(sc[t][e] - mn);
					sc[t][e] = pw;
					if (e < 2)
						ps0 += pw;
					else
						ps1 += pw;
				}
			l0 = l0 * c0 + ps0; /* this lane's part of the row sum (the quad adds up at the end) */
			l1 = l1 * c1 + ps1;
			m0 = mn0;
			m1 = mn1;
#pragma unroll
			for (int d = 0; d < NT; d++) {
				o[d][0] *= c0;
				o[d][1] *= c0;
				o[d][2] *= c1;
				o[d][3] *= c1;
			}
#pragma unroll
			for (int kk = 0; kk < TA_K / 16; kk++) {
				uint32_t a0 = lq_pack16<F16>(sc[2 * kk][0], sc[2 * kk][1]), a1 = lq_pack16<F16>(sc[2 * kk][2], sc[2 * kk][3]);
				uint32_t a2 = lq_pack16<F16>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
				uint32_t a3 = lq_pack16<F16>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
				for (int d = 0; d < NT; d += 2) {
					if (d < ntl) {
						uint32_t b[4];
						ta_ldsm_t(b, Vs + kk * 16 * ld + d * 8 + voff);
						lq_mma16816<F16>(o[d], a0, a1, a2, a3, b[0], b[1]);
						lq_mma16816<F16>(o[d + 1], a0, a1, a2, a3, b[2], b[3]);
					}
				}
			}
		}
		__syncthreads(); /* stage s is consumed before a later copy refills it */
	}
	l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
	l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
	l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
	l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
	const float i0 = 1.0f / l0, i1 = 1.0f / l1;
	const uint64_t e0 = (uint64_t)(t0 + r0) * (H * hd) + h * hd + 2 * c, e1 = e0 + 8 * (H * hd);
#pragma unroll
	for (int d = 0; d < NT; d++) {
		if (d < ntl) {
			if (live0) {
				float2 v = make_float2(rnd(o[d][0] * i0, cd), rnd(o[d][1] * i0, cd));
				*(float2 *)(out + e0 + d * 8) = v;
				if (out16)
					*(uint32_t *)((uint16_t *)out16 + e0 + d * 8) = lq_pack16<F16>(v.x, v.y);
			}
			if (live1) {
				float2 v = make_float2(rnd(o[d][2] * i1, cd), rnd(o[d][3] * i1, cd));
				*(float2 *)(out + e1 + d * 8) = v;
				if (out16)
					*(uint32_t *)((uint16_t *)out16 + e1 + d * 8) = lq_pack16<F16>(v.x, v.y);
			}
		}
	}
}

/* The prefill attention kernels for a head size (and compute dtype): the
 * instances prefill launches and whose shared memory prepare sets. */
template <typename CT>
static decltype(&k_attn_tiled<4, CT>) fa_kernel(int64_t hd)
{
	return hd <= 64 ? k_attn_tiled<4, CT> : hd <= 128 ? k_attn_tiled<8, CT> : k_attn_tiled<16, CT>;
}
/* f(ctype<CT>{}) with CT the KV cache's element type for compute dtype cd:
 * float at fp32, else the 16-bit type itself (the one place that choice is
 * written). */
template <typename T>
struct ctype {
	using type = T;
};
template <typename F>
static auto by_cache_type(int cd, F &&f)
{
	if (cd == LQ_COMPUTE_F32)
		return f(ctype<float>{});
	if (cd == LQ_COMPUTE_F16)
		return f(ctype<__half>{});
	return f(ctype<__nv_bfloat16>{});
}

/* The shared memory of the instance that compute dtype cd launches. */
static cudaError_t fa_prepare(int64_t hd, int cd)
{
	const void *f = by_cache_type(cd, [&](auto c) { return (const void *)fa_kernel<typename decltype(c)::type>(hd); });
	return cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)fa_smem(hd));
}

static decltype(&k_attn_tc<false, 8>) ta_kernel(int64_t hd, int cd)
{
	const int nt = ta_nt(hd);
	if (cd == LQ_COMPUTE_F16)
		return nt == 8 ? k_attn_tc<true, 8> : nt == 16 ? k_attn_tc<true, 16> : k_attn_tc<true, 32>;
	return nt == 8 ? k_attn_tc<false, 8> : nt == 16 ? k_attn_tc<false, 16> : k_attn_tc<false, 32>;
}

/* out[t][i] = rnd(act(g) * u) for gate/up rows of stride ld. */
__global__ void k_act(const float *g, const float *u, int64_t ld, float *out, int64_t n, int64_t I, int act, int cd,
		      void *out16)
{
	pdl_wait();
	uint64_t tot = (uint64_t)n * I;
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < tot; j += (uint64_t)gridDim.x * blockDim.x) {
		uint64_t t = j / I, i = j % I;
		float v = rnd(lq_act(act, g[t * ld + i]) * u[t * ld + i], cd);
		out[j] = v;
		if (out16)
			st16(out16, j, v, cd);
	}
}

/* (ov, oi) beats (best, bi): a larger value, or the same at a lower index;
 * oi < 0 is none, NaN never wins. */
__device__ __forceinline__ void am_take(float &best, int64_t &bi, float ov, int64_t oi)
{
	if (oi >= 0 && (bi < 0 || ov > best || (ov == best && oi < bi))) {
		best = ov;
		bi = oi;
	}
}

/*
 * The first index of the maximum of l[0..n) (NaN never wins; 0 when l[0]
 * is NaN or nothing beats it), as lq_argmax_f32 on the host.  Each block
 * takes a contiguous slice; with several blocks the last one to finish
 * (counted in *cnt, which it resets) combines their results (pv, pi).
 */
#define ARGMAX_BLOCKS 48
__global__ void __launch_bounds__(1024) k_argmax(const float *l, int64_t n, int32_t *out, float *pv, int64_t *pi,
						 int *cnt)
{
	pdl_wait();
	__shared__ float sv[32];
	__shared__ int64_t si[32];
	const int64_t per = (n + gridDim.x - 1) / gridDim.x, lo = per * blockIdx.x, hi = min(n, lo + per);
	float best = -INFINITY;
	int64_t bi = -1; /* none yet */
	for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
		float v = l[i];
		if (v > best || (bi < 0 && v == best)) { /* indices rise: the first maximum stays */
			best = v;
			bi = i;
		}
	}
	for (int o = 16; o; o >>= 1) {
		float ov = __shfl_xor_sync(0xffffffffu, best, o);
		int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
		am_take(best, bi, ov, oi);
	}
	int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
	if (lane == 0) {
		sv[w] = best;
		si[w] = bi;
	}
	__syncthreads();
	if (threadIdx.x != 0)
		return;
	for (int k = 1; k < (int)(blockDim.x >> 5); k++)
		am_take(best, bi, sv[k], si[k]);
	if (gridDim.x > 1) {
		pv[blockIdx.x] = best;
		pi[blockIdx.x] = bi;
		__threadfence();
		if (atomicAdd(cnt, 1) != (int)gridDim.x - 1)
			return;
		__threadfence();
		*cnt = 0; /* ready for the next launch */
		best = -INFINITY;
		bi = -1;
		for (unsigned b = 0; b < gridDim.x; b++)
			am_take(best, bi, __ldcg(pv + b), __ldcg(pi + b));
	}
	*out = (bi < 0 || isnan(l[0])) ? 0 : (int32_t)bi;
}

/* A chain of decode steps on the device (g_argmax_n, g_sample_n): the
 * steps done, sampling's generator state, and its stop flag (a step whose
 * kept set the device could not make; the steps after it change nothing). */
#define CHAIN_MAX 256 /* steps per wait */
struct chain_st {
	uint64_t rng[4];
	int done, stop, pad[2];
};

/* A chained step's end: its pick (the argmax, or sampling's draw) into
 * ids[done], the next step's position; seen (the repetition penalty's map
 * of the ids seen, or NULL) gains the pick. */
__global__ void k_chain_next(const int32_t *id, int32_t *ids, struct chain_st *cs, int64_t *pos, uint8_t *seen)
{
	pdl_wait();
	if (cs->stop)
		return;
	ids[cs->done] = *id;
	cs->done += 1;
	*pos += 1;
	if (seen)
		seen[*id] = 1;
}

/* The repetition penalty's map: seen[ids[i]] = 1 (ids out of range left out,
 * as lq_sample leaves them). */
__global__ void k_seen_set(uint8_t *seen, const int32_t *ids, uint64_t n, int64_t vocab)
{
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (uint64_t)gridDim.x * blockDim.x)
		if (ids[j] >= 0 && ids[j] < vocab)
			seen[ids[j]] = 1;
}

/* lq_sample's repetition penalty on every id of the map, each once (as
 * lq_cuda_penalty on the distinct ids). */
__global__ void k_penalty_map(float *l, const uint8_t *seen, int64_t vocab, float p)
{
	pdl_wait();
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < vocab; i += (int64_t)gridDim.x * blockDim.x)
		if (seen[i]) {
			l[i] = lq_penalize(l[i], p);
		}
}

__global__ void k_softcap(float *y, uint64_t n, float cap)
{
	pdl_wait();
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (uint64_t)gridDim.x * blockDim.x)
		y[j] = tanhf(y[j] / cap) * cap;
}

/* Weight -> dense matrix of T (exact float32 values, then rounded to T). */
template <typename T>
__global__ void k_weight_to(kweight w, uint64_t n, T *out)
{
	pdl_wait();
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (uint64_t)gridDim.x * blockDim.x)
		out[j] = from_f<T>(w_get(w, j));
}

/* The 4-bit code table and the double-quant map into shared memory (a
 * barrier follows): indexing constant memory with per-lane values
 * serializes the warp. */
__device__ __forceinline__ void dq_tables(int qtype, float *tab, float *dmap)
{
	if (threadIdx.x < 16)
		tab[threadIdx.x] = __uint_as_float((qtype == LQ_QTYPE_NF4 ? b_nf4 : b_fp4)[threadIdx.x]);
	for (int i = threadIdx.x; i < 256; i += blockDim.x)
		dmap[i] = __uint_as_float(b_dyn[i]);
	__syncthreads();
}

/*
 * Weight as stored -> dense matrix of T, one 16-byte chunk of codes per thread and step
 * (32 4-bit or 16 INT8 elements, all in one quantization block, so the scale
 * is rebuilt once), with the code table and the scale map in shared memory:
 * indexing constant memory with per-lane values serializes the warp.  The
 * values are those of k_weight_to (exact float32 products, then rounded).
 */
template <typename T>
__global__ void __launch_bounds__(256) k_weight_to16b(kweight w, uint64_t nchunks, T *out)
{
	__shared__ float tab[16], dmap[256];
	pdl_wait();
	dq_tables(w.qtype, tab, dmap);
	const bool i8 = w.qtype == LQ_QTYPE_INT8;
	const uint64_t epc = i8 ? 16 : 32;
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < nchunks; j += (uint64_t)gridDim.x * blockDim.x) {
		uint4 q4 = __ldg((const uint4 *)(w.data + j * 16));
		const uint32_t q[4] = {q4.x, q4.y, q4.z, q4.w};
		uint64_t i0 = j * epc, b = i0 >> w.bshift;
		float s = w.dq ? lq_dq_scale(dmap[__ldg((const uint8_t *)w.scales + b)],
					     __ldg(w.nested + (b >> LQ_QNESTED_SHIFT)), w.offset)
			       : __ldg((const float *)w.scales + b);
		T *dst = out + i0;
		if (i8) {
			float si = __fmul_rn(s, 1.0f / 127.0f);
			T o[16];
#pragma unroll
			for (int k = 0; k < 16; k++)
				o[k] = from_f<T>(__fmul_rn((float)(int8_t)(q[k >> 2] >> (8 * (k & 3))), si));
#pragma unroll
			for (int k = 0; k < (int)(16 * sizeof(T) / 16); k++)
				((uint4 *)dst)[k] = ((const uint4 *)o)[k];
		} else {
#pragma unroll
			for (int h = 0; h < 2; h++) { /* 16 elements (8 bytes) at a time */
				T o[16];
#pragma unroll
				for (int k = 0; k < 8; k++) {
					uint32_t byte = (q[2 * h + (k >> 2)] >> (8 * (k & 3))) & 0xffu;
					o[2 * k] = from_f<T>(__fmul_rn(tab[byte >> 4], s));
					o[2 * k + 1] = from_f<T>(__fmul_rn(tab[byte & 15], s));
				}
#pragma unroll
				for (int k = 0; k < (int)(16 * sizeof(T) / 16); k++)
					((uint4 *)(dst + 16 * h))[k] = ((const uint4 *)o)[k];
			}
		}
	}
}

/*
 * A tiled 4-bit weight (the GPU tile layout) -> dense row-major matrix of a
 * 16-bit T.  A warp takes half a record (8 rows x 64 packed bytes) per
 * step: each lane loads its 16-byte chunk, then the 4 lanes of a row swap
 * 32-bit words so that lane c holds bytes 4c..4c+3 of all four chunks and
 * its 16-byte stores land next to its neighbours' (each store instruction
 * of the warp writes 8 whole 64-byte segments).  Values as k_weight_to16b.
 */
template <typename T>
__global__ void __launch_bounds__(256) k_tiles_to16(kweight w, uint32_t nhalf, T *out)
{
	__shared__ float tab[16], dmap[256];
	pdl_wait();
	dq_tables(w.qtype, tab, dmap);
	const uint32_t lane = threadIdx.x & 31, c = lane & 3, K = w.tspr * 128, nbr = K >> w.bshift;
	const uint32_t nwarps = (gridDim.x * blockDim.x) >> 5;
	for (uint32_t hr = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; hr < nhalf; hr += nwarps) {
		const uint32_t rec = hr >> 1, t = rec / w.tspr, sp = rec - t * w.tspr;
		const uint32_t r = (hr & 1) * 8 + (lane >> 2);
		const uint64_t row = (uint64_t)t * 16 + r;
		uint4 q4 = __ldg((const uint4 *)(w.data + (uint64_t)hr * 512 + lane * 16));
		/* word c of each chunk k of the row (chunk k is lane k of the quad) */
		uint32_t rm[4], wd[4]; /* rm[m]: word c of chunk c ^ m */
#pragma unroll
		for (int m = 0; m < 4; m++) {
			const uint32_t i = c ^ (uint32_t)m; /* the word the partner lane c ^ m wants */
			uint32_t v = i == 0 ? q4.x : i == 1 ? q4.y : i == 2 ? q4.z : q4.w;
			rm[m] = m ? __shfl_xor_sync(0xffffffffu, v, m) : v;
		}
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const uint32_t m = c ^ (uint32_t)k;
			wd[k] = m == 0 ? rm[0] : m == 1 ? rm[1] : m == 2 ? rm[2] : rm[3];
		}
		if (row >= w.rows)
			continue; /* padding */
		/* chunks 0-1 and 2-3 each lie in one block (block size >= 64) */
		float sc[2];
#pragma unroll
		for (int hf = 0; hf < 2; hf++) {
			const uint32_t kb = (sp * 128 + hf * 64) >> w.bshift;
			const uint64_t sb = ((uint64_t)t * nbr + kb) * 16 + r, b = row * nbr + kb;
			sc[hf] = w.dq ? lq_dq_scale(dmap[__ldg((const uint8_t *)w.scales + sb)],
						    __ldg(w.nested + (b >> LQ_QNESTED_SHIFT)), w.offset)
				      : __ldg((const float *)w.scales + sb);
		}
		T *dst = out + row * K + sp * 128 + c * 8;
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const float s = sc[k >> 1];
			T o[8];
#pragma unroll
			for (int b = 0; b < 4; b++) {
				uint32_t byte = (wd[k] >> (8 * b)) & 0xffu;
				o[2 * b] = from_f<T>(__fmul_rn(tab[byte >> 4], s));
				o[2 * b + 1] = from_f<T>(__fmul_rn(tab[byte & 15], s));
			}
			*(uint4 *)(dst + k * 32) = *(const uint4 *)o;
		}
	}
}

template <typename T>
__global__ void k_f32_to(const float *x, uint64_t n, T *out)
{
	pdl_wait();
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (uint64_t)gridDim.x * blockDim.x)
		out[j] = from_f<T>(x[j]);
}

/* Weights into the compute dtype at upload (put_as16): rounded to nearest;
 * into fp16, magnitudes past its largest finite value (65504) saturate to
 * it instead of becoming infinite (NaN stays NaN). */
template <typename TI, typename TO>
__global__ void k_to16(const TI *x, uint64_t n, TO *out)
{
	pdl_wait();
	for (uint64_t j = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (uint64_t)gridDim.x * blockDim.x) {
		float v = kv_ld(x + j);
		if constexpr (std::is_same_v<TO, __half>)
			if (!isnan(v))
				v = fminf(fmaxf(v, -65504.0f), 65504.0f);
		out[j] = from_f<TO>(v);
	}
}

/*
 * Dense GEMV y[N] = W[N,K] x[K], one warp per row, 16-byte weight loads
 * when K and the row starts allow (vec), fp32 accumulation.
 */
template <typename WT>
__global__ void k_gemv_dense(const WT *W, uint64_t N, uint64_t K, const float *x, float *y, int vec)
{
	pdl_wait();
	constexpr int E = 16 / sizeof(WT);
	uint64_t row = (uint64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
	int lane = threadIdx.x & 31;
	if (row >= N)
		return;
	const WT *wr = W + row * K;
	float acc = 0.0f;
	if (vec) {
		const uint4 *w4 = (const uint4 *)wr;
		uint64_t nv = K / E;
#pragma unroll 4
		for (uint64_t c = lane; c < nv; c += 32) {
			uint4 u = __ldg(w4 + c);
			const WT *e = (const WT *)&u;
			const float *xc = x + c * E;
#pragma unroll
			for (int i = 0; i < E; i++) {
				float wv;
				if constexpr (sizeof(WT) == 4)
					wv = (float)e[i];
				else
					wv = __half2float(*(const __half *)&e[i]);
				acc = fmaf(wv, __ldg(xc + i), acc);
			}
		}
	} else {
		for (uint64_t c = lane; c < K; c += 32) {
			float wv;
			if constexpr (sizeof(WT) == 4)
				wv = (float)wr[c];
			else
				wv = __half2float(*(const __half *)&wr[c]);
			acc = fmaf(wv, x[c], acc);
		}
	}
	for (int o = 16; o; o >>= 1)
		acc += __shfl_xor_sync(0xffffffffu, acc, o);
	if (lane == 0)
		y[row] = acc;
}

/* GEMV over any weight layout, element by element (quantized tensors whose
 * blocks span rows, which the fast GEMV does not take): a warp per row. */
__global__ void k_gemv_any(kweight w, uint64_t N, uint64_t K, const float *x, float *y)
{
	pdl_wait();
	uint64_t row = (uint64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
	int lane = threadIdx.x & 31;
	if (row >= N)
		return;
	float acc = 0.0f;
	for (uint64_t c = lane; c < K; c += 32)
		acc = fmaf(w_get(w, row * K + c), x[c], acc);
	for (int o = 16; o; o >>= 1)
		acc += __shfl_xor_sync(0xffffffffu, acc, o);
	if (lane == 0)
		y[row] = acc;
}

/* bf16 as a 2-byte type the template above reads through its own path. */
struct bf16raw {
	uint16_t v;
};

template <>
__global__ void k_gemv_dense<bf16raw>(const bf16raw *W, uint64_t N, uint64_t K, const float *x, float *y, int vec)
{
	pdl_wait();
	uint64_t row = (uint64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
	int lane = threadIdx.x & 31;
	if (row >= N)
		return;
	const uint16_t *wr = (const uint16_t *)W + row * K;
	float acc0 = 0.0f, acc1 = 0.0f;
	if (vec) {
		const uint4 *w4 = (const uint4 *)wr;
		uint64_t nv = K / 8;
#pragma unroll 4
		for (uint64_t c = lane; c < nv; c += 32) {
			uint4 u = __ldg(w4 + c);
			const float4 *xc = (const float4 *)(x + c * 8);
			float4 xa = __ldg(xc), xb = __ldg(xc + 1);
			acc0 = fmaf(__uint_as_float(u.x << 16), xa.x, acc0);
			acc1 = fmaf(__uint_as_float(u.x & 0xffff0000u), xa.y, acc1);
			acc0 = fmaf(__uint_as_float(u.y << 16), xa.z, acc0);
			acc1 = fmaf(__uint_as_float(u.y & 0xffff0000u), xa.w, acc1);
			acc0 = fmaf(__uint_as_float(u.z << 16), xb.x, acc0);
			acc1 = fmaf(__uint_as_float(u.z & 0xffff0000u), xb.y, acc1);
			acc0 = fmaf(__uint_as_float(u.w << 16), xb.z, acc0);
			acc1 = fmaf(__uint_as_float(u.w & 0xffff0000u), xb.w, acc1);
		}
	} else {
		for (uint64_t c = lane; c < K; c += 32)
			acc0 = fmaf(__uint_as_float((uint32_t)wr[c] << 16), x[c], acc0);
	}
	float acc = acc0 + acc1;
	for (int o = 16; o; o >>= 1)
		acc += __shfl_xor_sync(0xffffffffu, acc, o);
	if (lane == 0)
		y[row] = acc;
}

/* ------------------------------------------------------------ the state */

struct glayer {
	dweight q, k, v, qkv, o, gate, up, gate_up, down;
	int gu_views; /* gate and up are views of the tiled gate_up's halves (split_gate_up) */
	float *attn_norm, *post_attn_norm, *pre_ffn_norm, *post_ffn_norm;
	float *q_bias, *k_bias, *v_bias, *o_bias, *gate_bias, *up_bias, *down_bias;
	int64_t window;
};

struct gstate {
	const struct lq_model *m;
	const struct lq_file *f;
	const struct lq_model_config *c;
	int dev, cd;
	char desc[320];
	cudaStream_t st;
	struct cublas_fns cb;
	cublasHandle_t cbh;
	int cbh_ok;
	pthread_t warm_th; /* cuBLAS's warm-up during the upload (warm_start) */
	int warm_on, warm_stop;
	int pdl; /* launch with programmatic dependent launch (sm_90) */
	int att_cl; /* decode attention: at most this many splits merge as one cluster (0: none) */
	int att_long_slots; /* k_attn_long's blocks that the device runs at once (att_long_prepare) */
	int att_gqa_slots;  /* k_attn_gqa's */
	int fuse; /* decode: RMSNorm and residual adds inside the GEMVs (see fusable) */
	const float *xconv;    /* the activations xbuf holds converted (NULL: none) */
	size_t xconv_n;
	int64_t nl, H, KV, hd, hidden, inter, vocab, qdim, kvdim, rot, max_ctx;
	float embed_scale;
	dweight embed, lm_head;
	float *final_norm;
	glayer *L;
	/* device memory */
	uint8_t *arena;        /* weights */
	uint64_t arena_size, arena_used;
	uint8_t *tscratch;     /* while uploading: a weight as stored, before lq_cuda_tile */
	uint64_t tscratch_need;
	float *inv_freq;       /* [rot / 2] */
	float *rtab;           /* [rot]: cos, sin of the decoded token's position (k_embed -> k_rope) */
	float *h_inv;          /* [0, rot / 2): host copy of what is on the device; then update_rope's and rope_same's scratch */
	int64_t inv_len;       /* sequence length inv_freq was computed for (-1: none) */
	float ascale;
	void *kv;              /* [nl][2][cap][kvdim] of kv_es(g) bytes: the compute dtype (float at fp32) */
	int64_t cap;
	float *x, *h, *o, *qkv, *att, *gu, *g, *part, *logits;
	float *x2;             /* [hidden]: decode with sandwich norms fused, the residual stream's other buffer */
	int *acnt;             /* [H] split counters of decode attention, then k_argmax's */
	float *am_v;           /* [ARGMAX_BLOCKS] k_argmax's per-block results */
	int64_t *am_i;
	void *xbuf, *wbuf;
	uint64_t wbuf_bytes;
	int32_t *tok;
	int64_t *pos;
	/* pinned host memory */
	int32_t *h_tok;
	int64_t *h_pos;
	float *h_logits;
	/* the decode graphs: [0] copies the logits back, [1] only their argmax,
	 * [2] leaves the logits on the device (sampling), [3] a step of
	 * g_argmax_n (its token from d_id, its argmax into d_ids, the
	 * position advanced on the device), [4] a step of g_sample_n (the
	 * same with top-k and the draw, for graph_so's options) */
#define NGRAPH 5
	cudaGraphExec_t graph[NGRAPH];
	int64_t graph_cap[NGRAPH];
	float graph_ascale[NGRAPH];
	int graph_split[NGRAPH];
	struct lq_sample_opts so, graph_so; /* g_sample_n's options; graph [4]'s */
	int32_t *d_id, *h_id;  /* the argmax, on the device and pinned on the host */
	int32_t *d_ids, *h_ids; /* [CHAIN_MAX] a chain's picks (device, pinned host) */
	struct chain_st *d_cs, *h_cs; /* a chain's state (device, pinned host) */
	/* sampling: lq_cuda_topk's scratch and result, the penalized ids
	 * (device, pinned host, pen_cap of each) */
	uint8_t *tk_scr;
	struct lq_cuda_topk_out *d_tk;
	uint8_t *sa_scr; /* lq_cuda_sample_all's scratch, made when first needed */
	uint8_t *d_seen; /* g_sample_n's repetition penalty: 1 for each id seen (vocab bytes, made when first needed) */
	int32_t *d_pen, *h_pen;
	size_t pen_cap;
};

/*
 * Launch a kernel of this file on the runtime's stream.  On sm_90 it is a
 * programmatic dependent launch: its blocks may be scheduled while the
 * previous kernel drains, and every kernel here starts with pdl_wait(),
 * which returns once the previous kernel has completed and its writes are
 * visible (so nothing is read or written early).  Errors are recorded as
 * the last CUDA error, which the callers check.
 */
/* The launch attribute that makes blocks (x, y, z .. z + clz - 1) one
 * thread-block cluster. */
static cudaLaunchAttribute cluster_z(unsigned clz)
{
	cudaLaunchAttribute a = {};
	a.id = cudaLaunchAttributeClusterDimension;
	a.val.clusterDim.x = 1;
	a.val.clusterDim.y = 1;
	a.val.clusterDim.z = clz;
	return a;
}

/* clz > 0: launched in clusters of clz blocks along z (cluster_z). */
template <typename... P, typename... A>
static cudaError_t launch_cl(gstate *g, void (*k)(P...), dim3 grid, dim3 block, size_t smem, unsigned clz,
			     A &&...args)
{
	cudaLaunchConfig_t cfg = {};
	cfg.gridDim = grid;
	cfg.blockDim = block;
	cfg.dynamicSmemBytes = smem;
	cfg.stream = g->st;
	cudaLaunchAttribute at[2];
	unsigned na = 0;
	if (g->pdl) {
		at[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
		at[na++].val.programmaticStreamSerializationAllowed = 1;
	}
	if (clz)
		at[na++] = cluster_z(clz);
	cfg.attrs = na ? at : NULL;
	cfg.numAttrs = na;
	return cudaLaunchKernelEx(&cfg, k, std::forward<A>(args)...);
}

template <typename... P, typename... A>
static cudaError_t launch_ks(gstate *g, void (*k)(P...), dim3 grid, dim3 block, size_t smem, A &&...args)
{
	return launch_cl(g, k, grid, block, smem, 0, std::forward<A>(args)...);
}

template <typename... P, typename... A>
static cudaError_t launch_k(gstate *g, void (*k)(P...), dim3 grid, dim3 block, A &&...args)
{
	return launch_ks(g, k, grid, block, 0, std::forward<A>(args)...);
}

/* Bytes of a KV cache entry: the compute dtype's (float at fp32). */
static size_t kv_es(const gstate *g) { return g->cd == LQ_COMPUTE_F32 ? sizeof(float) : 2; }
static void *layer_kc(gstate *g, int64_t l) { return (uint8_t *)g->kv + (uint64_t)l * 2 * g->cap * g->kvdim * kv_es(g); }
static void *layer_vc(gstate *g, int64_t l) { return (uint8_t *)layer_kc(g, l) + (uint64_t)g->cap * g->kvdim * kv_es(g); }

/* ------------------------------------------------------------- loading */

static const struct lq_tensor *role_tensor(gstate *g, int role, int layer)
{
	return lq_model_role_tensor(g->m, g->f, role, layer);
}

struct upload {
	gstate *g;
	uint8_t *stage[2];
	cudaEvent_t ev[2];
	int cur;
	size_t fill;
	uint8_t *dst;  /* device address of the staged bytes */
	int counting;  /* first pass: only add up the sizes */
	struct lq_pool *pool; /* threads that fill the staging buffers (NULL: the caller's) */
};

static int flush_stage(struct upload *u, struct lq_error *err)
{
	if (!u->fill)
		return LQ_OK;
	CK(cudaMemcpyAsync(u->dst, u->stage[u->cur], u->fill, cudaMemcpyHostToDevice, u->g->st), "weight upload");
	CK(cudaEventRecord(u->ev[u->cur], u->g->st), "weight upload");
	u->cur ^= 1;
	CK(cudaEventSynchronize(u->ev[u->cur]), "weight upload");
	u->fill = 0;
	return LQ_OK;
}

/* Reserve size bytes of the weight arena (a 256-byte boundary); *dev
 * receives the address (NULL while counting). */
static int reserve(struct upload *u, uint64_t size, void **dev, struct lq_error *err)
{
	gstate *g = u->g;
	uint64_t off = (g->arena_used + 255) & ~(uint64_t)255;
	g->arena_used = off + size;
	*dev = NULL;
	if (u->counting)
		return LQ_OK;
	if (g->arena_used > g->arena_size)
		return gfail(err, LQ_ERR_INVALID, "internal: weight arena overflow");
	*dev = g->arena + off;
	return LQ_OK;
}

/*
 * The staging buffers are filled on up to UPLOAD_THREADS threads (u->pool,
 * lq_pool_memcpy): the source is mostly the mapped model file, whose pages
 * fault in on first touch, and one thread filled them at about 4 GB/s on
 * the H200 machine, so that copy and not the bus bounded the upload
 * (BENCHMARKS.md).
 */
#define UPLOAD_THREADS 8 /* at most: 8 measured on a 16-core host */

/* Copy size bytes from src to the device address dst (asynchronously,
 * through the pinned staging buffers). */
static int stage_to(struct upload *u, const void *src, uint64_t size, uint8_t *dst, struct lq_error *err)
{
	const uint8_t *s = (const uint8_t *)src;
	while (size) {
		if (u->fill && u->dst + u->fill != dst) {
			int rc = flush_stage(u, err);
			if (rc)
				return rc;
		}
		if (!u->fill)
			u->dst = dst;
		size_t take = STAGE_BYTES - u->fill;
		if (take > size)
			take = (size_t)size;
		lq_pool_memcpy(u->pool, u->stage[u->cur] + u->fill, s, take);
		u->fill += take;
		s += take;
		dst += take;
		size -= take;
		if (u->fill == STAGE_BYTES) {
			int rc = flush_stage(u, err);
			if (rc)
				return rc;
		}
	}
	return LQ_OK;
}

/* Reserve size bytes of the weight arena and copy src there; *dev receives
 * the address. */
static int put(struct upload *u, const void *src, uint64_t size, void **dev, struct lq_error *err)
{
	int rc = reserve(u, size, dev, err);
	if (rc || u->counting)
		return rc;
	return stage_to(u, src, size, (uint8_t *)*dev, err);
}

/* Unquantized values of dtype dt uploaded as 16-bit values of the compute
 * dtype (bf16 or fp16; see load_weight), converted on the device a piece
 * at a time (CONV_PIECE bytes of the source) through the upload scratch
 * (tscratch), so that the scratch stays small; *dev receives the address
 * (NULL while counting). */
#define CONV_PIECE ((uint64_t)STAGE_BYTES)
static unsigned grid_for(uint64_t n, unsigned threads);
static int put_as16(struct upload *u, const void *src, int dt, uint64_t n, void **dev, struct lq_error *err)
{
	gstate *g = u->g;
	const uint64_t es = lq_dtype_size(dt), per = CONV_PIECE / es, piece = n < per ? n : per;
	int rc = reserve(u, n * 2, dev, err);
	if (piece * es > g->tscratch_need)
		g->tscratch_need = piece * es;
	if (rc || u->counting)
		return rc;
	for (uint64_t i = 0; i < n; i += piece) {
		const uint64_t k = n - i < piece ? n - i : piece;
		/* the scratch's last conversion precedes this copy on g->st */
		if ((rc = stage_to(u, (const uint8_t *)src + i * es, k * es, g->tscratch, err)) ||
		    (rc = flush_stage(u, err)))
			return rc;
		const dim3 gr(grid_for(k, 256)), bl(256);
		const void *in = g->tscratch;
		if (g->cd == LQ_COMPUTE_F16) {
			__half *o = (__half *)*dev + i;
			if (dt == LQ_DTYPE_F32)
				launch_k(g, k_to16<float, __half>, gr, bl, (const float *)in, k, o);
			else
				launch_k(g, k_to16<__nv_bfloat16, __half>, gr, bl, (const __nv_bfloat16 *)in, k, o);
		} else {
			__nv_bfloat16 *o = (__nv_bfloat16 *)*dev + i;
			if (dt == LQ_DTYPE_F32)
				launch_k(g, k_to16<float, __nv_bfloat16>, gr, bl, (const float *)in, k, o);
			else
				launch_k(g, k_to16<__half, __nv_bfloat16>, gr, bl, (const __half *)in, k, o);
		}
		CK(cudaGetLastError(), "converting a weight to the compute dtype");
	}
	return LQ_OK;
}

static int load_weight(struct upload *u, int role, int layer, uint64_t rows, uint64_t cols, dweight *w,
		       struct lq_error *err)
{
	gstate *g = u->g;
	const struct lq_tensor *t = role_tensor(g, role, layer);
	if (!t) {
		if (layer >= 0)
			return gfail(err, LQ_ERR_NOTFOUND, "the model file has no %s weight in layer %d",
				     lq_role_name(role), layer);
		return gfail(err, LQ_ERR_NOTFOUND, "the model file has no %s weight", lq_role_name(role));
	}
	if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
		return gfail(err, LQ_ERR_SHAPE, "tensor '%s': shape does not match [%llu, %llu]", t->name,
			     (unsigned long long)rows, (unsigned long long)cols);
	memset(w, 0, sizeof *w);
	w->rows = rows;
	w->cols = cols;
	w->k.qtype = t->qtype;
	w->k.dtype = t->src_dtype;
	if (t->qtype == LQ_QTYPE_NONE) {
		if (t->src_dtype != LQ_DTYPE_F32 && t->src_dtype != LQ_DTYPE_F16 && t->src_dtype != LQ_DTYPE_BF16)
			return gfail(err, LQ_ERR_UNSUPPORTED, "tensor '%s': dtype %s is not supported by the GPU runtime",
				     t->name, lq_dtype_name(t->src_dtype));
		void *d;
		int rc;
		const int cdt = g->cd == LQ_COMPUTE_F16 ? LQ_DTYPE_F16 : LQ_DTYPE_BF16;
		if (g->cd != LQ_COMPUTE_F32 && t->src_dtype != cdt) {
			/* at bf16 / fp16 compute, values of another dtype in the
			 * compute dtype, as transformers' torch_dtype converts them
			 * (float32: Gemma 2's checkpoints, --keep on a float32
			 * source; bf16 at fp16 compute, fp16 at bf16): float32 ones
			 * take half the bytes per decode step, and the tensor-core
			 * GEMV and the fused decode step take them all (k_to16) */
			if ((rc = put_as16(u, t->data, t->src_dtype, t->nelem, &d, err)))
				return rc;
			w->k.dtype = cdt;
		} else if ((rc = put(u, t->data, t->data_size, &d, err))) {
			return rc;
		}
		w->k.data = (const uint8_t *)d;
		/* bf16 / fp16 values: also for the tensor-core GEMV (in the mode
		 * of their type; fusable) */
		if (w->k.dtype != LQ_DTYPE_F32) {
			w->q.p.qtype = LQ_QTYPE_NONE;
			w->q.d_data = (const uint8_t *)d;
			w->q.n = t->nelem;
			w->q.layout = w->k.dtype == LQ_DTYPE_BF16 ? LQ_CUDA_DENSE_BF16 : LQ_CUDA_DENSE_F16;
		}
		return rc;
	}
	if (t->block_size <= 0)
		return gfail(err, LQ_ERR_UNSUPPORTED, "tensor '%s': row-wise int8 is not supported by the runtime", t->name);
	void *d = NULL, *s = NULL, *nst = NULL;
	int rc;
	uint64_t epc = t->qtype == LQ_QTYPE_INT8 ? 16 : 32;
	w->fast = cols % (uint64_t)t->block_size == 0 && cols % epc == 0;
	struct lq_qparams qp = {t->qtype, t->block_size, t->double_quant};
	/* 4-bit weights for the tensor-core GEMV: the GPU tile layout
	 * (formats/LQ-FORMAT.md), made on the device from a copy as stored */
	int tile = g->cd != LQ_COMPUTE_F32 && role != LQ_ROLE_EMBED && w->fast && lq_cuda_tiles_ok(&qp, rows, cols);
	/* the scratch copy as stored: codes, then scales at a 256-byte boundary */
	const uint64_t sdata = (t->data_size + 255) & ~(uint64_t)255;
	if (tile) {
		uint64_t db, sb;
		lq_cuda_tiles_size(&qp, rows, cols, &db, &sb);
		if (sdata + t->scale_size > g->tscratch_need)
			g->tscratch_need = sdata + t->scale_size;
		if ((rc = reserve(u, db, &d, err)) || (rc = reserve(u, sb, &s, err)))
			return rc;
	} else if ((rc = put(u, t->data, t->data_size, &d, err)) || (rc = put(u, t->scales, t->scale_size, &s, err)))
		return rc;
	if (t->double_quant && (rc = put(u, t->nested, t->nested_size, &nst, err)))
		return rc;
	w->k.dq = t->double_quant;
	w->k.bshift = lq_cuda_bshift(t->block_size);
	w->k.data = (const uint8_t *)d;
	w->k.scales = s;
	w->k.nested = (const float *)nst;
	w->k.offset = t->offset;
	w->q.p.qtype = t->qtype;
	w->q.p.block_size = t->block_size;
	w->q.p.double_quant = t->double_quant;
	w->q.d_data = (const uint8_t *)d;
	w->q.d_scales = s;
	w->q.d_nested = (const float *)nst;
	w->q.offset = t->offset;
	w->q.n = t->nelem;
	w->q.layout = LQ_CUDA_ROWS;
	if (tile) {
		w->k.tspr = (uint32_t)(cols / 128);
		w->k.rows = rows;
		if (u->counting)
			return LQ_OK;
		struct lq_cuda_qweight rq = w->q;
		uint8_t *sd = g->tscratch, *ss = sd + sdata;
		rq.d_data = sd;
		rq.d_scales = ss;
		if ((rc = stage_to(u, t->data, t->data_size, sd, err)) ||
		    (rc = stage_to(u, t->scales, t->scale_size, ss, err)) || (rc = flush_stage(u, err)))
			return rc;
		int e = lq_cuda_tile(&rq, cols, d, s, &w->q, g->st);
		if (e)
			return cuda_fail(err, (cudaError_t)e, "re-laying out a weight");
	}
	return LQ_OK;
}

static int load_vec(struct upload *u, int role, int layer, uint64_t n, int required, float **out,
		    struct lq_error *err)
{
	gstate *g = u->g;
	*out = NULL;
	const struct lq_tensor *t = role_tensor(g, role, layer);
	if (!t) {
		if (lq_model_find_role(g->m, role, layer) < 0 && !required)
			return LQ_OK;
		return gfail(err, LQ_ERR_NOTFOUND, "the model file has no %s%s", lq_role_name(role),
			     layer >= 0 ? " in a layer" : "");
	}
	if (t->nelem != n)
		return gfail(err, LQ_ERR_SHAPE, "tensor '%s': %llu elements, %llu expected", t->name,
			     (unsigned long long)t->nelem, (unsigned long long)n);
	if (u->counting) {
		void *d;
		return put(u, NULL, n * sizeof(float), &d, err);
	}
	float *v = (float *)malloc((size_t)n * sizeof(float));
	if (!v)
		return gfail(err, LQ_ERR_NOMEM, "out of memory");
	int rc = lq_tensor_to_f32(t, v, 1, err);
	void *d = NULL;
	if (!rc)
		rc = put(u, v, n * sizeof(float), &d, err); /* copies v into the staging buffer */
	free(v);
	*out = (float *)d;
	return rc;
}

static int load_layer(struct upload *u, int64_t i, struct lq_error *err)
{
	gstate *g = u->g;
	const struct lq_model_config *c = g->c;
	glayer *l = &g->L[i];
	int li = (int)i, rc;
	uint64_t D = (uint64_t)g->hidden, I = (uint64_t)g->inter;
	l->window = c->layer_window ? c->layer_window[i] : 0;
	if ((rc = load_vec(u, LQ_ROLE_ATTN_NORM, li, D, 1, &l->attn_norm, err)) ||
	    (rc = load_vec(u, LQ_ROLE_POST_ATTN_NORM, li, D, 1, &l->post_attn_norm, err)))
		return rc;
	if (c->sandwich_norms && ((rc = load_vec(u, LQ_ROLE_PRE_FFN_NORM, li, D, 1, &l->pre_ffn_norm, err)) ||
				  (rc = load_vec(u, LQ_ROLE_POST_FFN_NORM, li, D, 1, &l->post_ffn_norm, err))))
		return rc;
	if (c->fused_qkv) {
		rc = load_weight(u, LQ_ROLE_QKV, li, (uint64_t)(g->qdim + 2 * g->kvdim), D, &l->qkv, err);
	} else if (!(rc = load_weight(u, LQ_ROLE_Q, li, (uint64_t)g->qdim, D, &l->q, err)) &&
		   !(rc = load_weight(u, LQ_ROLE_K, li, (uint64_t)g->kvdim, D, &l->k, err))) {
		rc = load_weight(u, LQ_ROLE_V, li, (uint64_t)g->kvdim, D, &l->v, err);
	}
	if (rc || (rc = load_weight(u, LQ_ROLE_O, li, D, (uint64_t)g->qdim, &l->o, err)))
		return rc;
	if ((rc = load_vec(u, LQ_ROLE_Q_BIAS, li, (uint64_t)g->qdim, 0, &l->q_bias, err)) ||
	    (rc = load_vec(u, LQ_ROLE_K_BIAS, li, (uint64_t)g->kvdim, 0, &l->k_bias, err)) ||
	    (rc = load_vec(u, LQ_ROLE_V_BIAS, li, (uint64_t)g->kvdim, 0, &l->v_bias, err)) ||
	    (rc = load_vec(u, LQ_ROLE_O_BIAS, li, D, 0, &l->o_bias, err)))
		return rc;
	if (c->fused_gate_up) {
		rc = load_weight(u, LQ_ROLE_GATE_UP, li, 2 * I, D, &l->gate_up, err);
	} else if (!(rc = load_weight(u, LQ_ROLE_GATE, li, I, D, &l->gate, err))) {
		rc = load_weight(u, LQ_ROLE_UP, li, I, D, &l->up, err);
	}
	if (rc || (rc = load_weight(u, LQ_ROLE_DOWN, li, D, I, &l->down, err)))
		return rc;
	if ((rc = load_vec(u, LQ_ROLE_GATE_BIAS, li, I, 0, &l->gate_bias, err)) ||
	    (rc = load_vec(u, LQ_ROLE_UP_BIAS, li, I, 0, &l->up_bias, err)) ||
	    (rc = load_vec(u, LQ_ROLE_DOWN_BIAS, li, D, 0, &l->down_bias, err)))
		return rc;
	return LQ_OK;
}

/* One pass over every parameter (counting sizes, or uploading). */
static int load_all(struct upload *u, struct lq_error *err)
{
	gstate *g = u->g;
	int rc;
	g->arena_used = 0;
	const struct lq_tensor *te = role_tensor(g, LQ_ROLE_EMBED, -1);
	const struct lq_tensor *th = role_tensor(g, LQ_ROLE_LM_HEAD, -1);
	if ((rc = load_weight(u, LQ_ROLE_EMBED, -1, (uint64_t)g->vocab, (uint64_t)g->hidden, &g->embed, err)))
		return rc;
	if (th && th == te)
		g->lm_head = g->embed;
	else if ((rc = load_weight(u, LQ_ROLE_LM_HEAD, -1, (uint64_t)g->vocab, (uint64_t)g->hidden, &g->lm_head, err)))
		return rc;
	if ((rc = load_vec(u, LQ_ROLE_FINAL_NORM, -1, (uint64_t)g->hidden, 1, &g->final_norm, err)))
		return rc;
	for (int64_t i = 0; i < g->nl; i++)
		if ((rc = load_layer(u, i, err)))
			return rc;
	return flush_stage(u, err);
}

/* ------------------------------------------------------------- buffers */

static void gfree(void *p)
{
	if (p)
		cudaFree(p);
}

static void warm_join(gstate *g);

static void g_free(void *state)
{
	gstate *g = (gstate *)state;
	if (!g)
		return;
	warm_join(g); /* before the arena and the handle go */
	for (int i = 0; i < NGRAPH; i++)
		if (g->graph[i])
			cudaGraphExecDestroy(g->graph[i]);
	if (g->cbh_ok)
		g->cb.destroy(g->cbh);
	void *d[] = { g->arena, g->tscratch, g->inv_freq, g->rtab, g->kv, g->x, g->x2, g->h, g->o, g->qkv, g->att, g->gu, g->g, g->part, g->acnt, g->am_v, g->am_i,
		      g->logits, g->xbuf, g->wbuf, g->tok, g->pos, g->d_id, g->tk_scr, g->d_tk, g->sa_scr, g->d_seen, g->d_pen, g->d_ids, g->d_cs };
	for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
		gfree(d[i]);
	if (g->h_tok)
		cudaFreeHost(g->h_tok);
	if (g->h_pos)
		cudaFreeHost(g->h_pos);
	if (g->h_logits)
		cudaFreeHost(g->h_logits);
	void *h[] = { g->h_id, g->h_pen, g->h_ids, g->h_cs };
	for (size_t i = 0; i < sizeof h / sizeof h[0]; i++)
		if (h[i])
			cudaFreeHost(h[i]);
	if (g->st)
		cudaStreamDestroy(g->st);
	if (g->cb.lib)
		dlclose(g->cb.lib);
	free(g->h_inv);
	free(g->L);
	free(g);
}

static int dmalloc(void **p, uint64_t bytes, const char *what, struct lq_error *err)
{
	cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
	if (e == cudaSuccess)
		return LQ_OK;
	cudaGetLastError();
	*p = NULL;
	size_t fr = 0, tot = 0;
	cudaMemGetInfo(&fr, &tot);
	if (e == cudaErrorMemoryAllocation)
		return gfail(err, LQ_ERR_NOMEM, "the GPU runtime needs %.0f MiB more for %s; %.0f MiB of %.0f MiB are free",
			     bytes / 1048576.0, what, fr / 1048576.0, tot / 1048576.0);
	return cuda_fail(err, e, what);
}

/* Make the KV cache hold at least need positions (keeps the contents). */
static int ensure_cache(gstate *g, int64_t need, struct lq_error *err)
{
	if (need <= g->cap)
		return LQ_OK;
	int64_t cap = g->cap ? g->cap : 256;
	while (cap < need)
		cap *= 2;
	if (cap > g->max_ctx)
		cap = g->max_ctx;
	void *nk;
	const uint64_t row = (uint64_t)g->kvdim * kv_es(g);
	int rc = dmalloc(&nk, (uint64_t)g->nl * 2 * cap * row, "the KV cache", err);
	if (rc)
		return rc;
	if (g->kv) {
		for (int64_t l = 0; l < g->nl * 2; l++)
			CK(cudaMemcpyAsync((uint8_t *)nk + (uint64_t)l * cap * row, (uint8_t *)g->kv + (uint64_t)l * g->cap * row,
					   (uint64_t)g->cap * row, cudaMemcpyDeviceToDevice, g->st),
			   "the KV cache");
		CK(cudaStreamSynchronize(g->st), "the KV cache");
		cudaFree(g->kv);
	}
	g->kv = nk;
	g->cap = cap;
	for (int i = 0; i < NGRAPH; i++)
		if (g->graph[i]) {
			cudaGraphExecDestroy(g->graph[i]);
			g->graph[i] = NULL;
		}
	return LQ_OK;
}

static int ensure_wbuf(gstate *g, uint64_t bytes, struct lq_error *err)
{
	if (bytes <= g->wbuf_bytes)
		return LQ_OK;
	gfree(g->wbuf);
	g->wbuf = NULL;
	g->wbuf_bytes = 0;
	int rc = dmalloc(&g->wbuf, bytes, "a dequantized weight", err);
	if (!rc)
		g->wbuf_bytes = bytes;
	return rc;
}

/* ------------------------------------------------------------- matmul */

static unsigned grid_for(uint64_t n, unsigned threads)
{
	uint64_t b = (n + threads - 1) / threads;
	return (unsigned)(b < 1 ? 1 : b > 65535 * 16 ? 65535 * 16 : b);
}

static int dense_gemv(gstate *g, int dtype, const void *W, uint64_t N, uint64_t K, const float *x, float *y,
		      struct lq_error *err)
{
	unsigned grid = (unsigned)((N + 7) / 8);
	int vec = (K * lq_dtype_size(dtype)) % 16 == 0 && ((uintptr_t)W & 15) == 0 && ((uintptr_t)x & 15) == 0;
	if (dtype == LQ_DTYPE_BF16)
		launch_k(g, k_gemv_dense<bf16raw>, dim3(grid), dim3(256), (const bf16raw *)W, N, K, x, y, vec);
	else if (dtype == LQ_DTYPE_F16)
		launch_k(g, k_gemv_dense<__half>, dim3(grid), dim3(256), (const __half *)W, N, K, x, y, vec);
	else
		launch_k(g, k_gemv_dense<float>, dim3(grid), dim3(256), (const float *)W, N, K, x, y, vec);
	CK(cudaGetLastError(), "a GEMV");
	return LQ_OK;
}

static cudaDataType cd_type(int cd)
{
	return cd == LQ_COMPUTE_F32 ? CUDA_R_32F : cd == LQ_COMPUTE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* The fast GEMV's mode for a compute dtype: activations are float32 arrays
 * holding values of the compute dtype (rnd). */
static int gemv_mode(int cd)
{
	return cd == LQ_COMPUTE_F32 ? LQ_GEMV_EXACT : cd == LQ_COMPUTE_F16 ? LQ_GEMV_F16 : LQ_GEMV_BF16;
}

/* y[n, ldy] (first rows columns) = x[n, K] W^T. */
static int matmul(gstate *g, const dweight *w, const float *x, size_t n, float *y, struct lq_error *err)
{
	uint64_t N = w->rows, K = w->cols;
	int rc;
	/* one token: the fast GEMV for quantized weights it takes, and for
	 * 16-bit values in the compute dtype where the tensor-core kernel takes
	 * them (the lm_head, layers when not fused); other unquantized weights
	 * through the dense GEMV */
	const int q = w->k.qtype != LQ_QTYPE_NONE;
	if (n == 1 && (q ? w->fast : w->k.dtype != LQ_DTYPE_F32 && lq_cuda_gemv_tc(&w->q, K, gemv_mode(g->cd)))) {
		const struct lq_cuda_qweight *qw = &w->q;
		int e = lq_cuda_gemv_multi(&qw, &y, 1, K, x, LQ_DTYPE_F32, gemv_mode(g->cd), g->st);
		if (e)
			return cuda_fail(err, (cudaError_t)e, "the dequant-GEMV");
		return LQ_OK;
	}
	if (n == 1 && !q)
		return dense_gemv(g, w->k.dtype, w->k.data, N, K, x, y, err);
	if (n == 1) {
		launch_k(g, k_gemv_any, dim3((unsigned)((N + 7) / 8)), dim3(256), w->k, N, K, x, y);
		CK(cudaGetLastError(), "a GEMV");
		return LQ_OK;
	}
	int T = g->cd == LQ_COMPUTE_F32 ? LQ_DTYPE_F32 : g->cd == LQ_COMPUTE_F16 ? LQ_DTYPE_F16 : LQ_DTYPE_BF16;
	int use_blas = n > 1 && cublas_open(&g->cb);
	if (!use_blas)
		T = LQ_DTYPE_F32; /* per-token dense GEMVs over an f32 copy */
	const void *A = w->k.data;
	if (w->k.qtype != LQ_QTYPE_NONE || w->k.dtype != T) {
		uint64_t ne = N * K;
		if ((rc = ensure_wbuf(g, ne * lq_dtype_size(T), err)))
			return rc;
		uint64_t epc = w->k.qtype == LQ_QTYPE_INT8 ? 16 : 32;
		if (w->k.qtype != LQ_QTYPE_NONE && ne % epc == 0) {
			uint64_t nc = ne / epc;
			if (w->k.tspr) { /* tiled: never at fp32 compute */
				uint32_t nh = (uint32_t)((N + 15) / 16 * w->k.tspr * 2);
				if (T == LQ_DTYPE_F16)
					launch_k(g, k_tiles_to16<__half>, dim3(grid_for((uint64_t)nh * 32, 256)), dim3(256), w->k, nh,
						 (__half *)g->wbuf);
				else
					launch_k(g, k_tiles_to16<__nv_bfloat16>, dim3(grid_for((uint64_t)nh * 32, 256)), dim3(256), w->k,
						 nh, (__nv_bfloat16 *)g->wbuf);
			} else if (T == LQ_DTYPE_F32)
				launch_k(g, k_weight_to16b<float>, dim3(grid_for(nc, 256)), dim3(256), w->k, nc, (float *)g->wbuf);
			else if (T == LQ_DTYPE_F16)
				launch_k(g, k_weight_to16b<__half>, dim3(grid_for(nc, 256)), dim3(256), w->k, nc, (__half *)g->wbuf);
			else
				launch_k(g, k_weight_to16b<__nv_bfloat16>, dim3(grid_for(nc, 256)), dim3(256), w->k, nc,
					 (__nv_bfloat16 *)g->wbuf);
		} else if (T == LQ_DTYPE_F32)
			launch_k(g, k_weight_to<float>, dim3(grid_for(ne, 256)), dim3(256), w->k, ne, (float *)g->wbuf);
		else if (T == LQ_DTYPE_F16)
			launch_k(g, k_weight_to<__half>, dim3(grid_for(ne, 256)), dim3(256), w->k, ne, (__half *)g->wbuf);
		else
			launch_k(g, k_weight_to<__nv_bfloat16>, dim3(grid_for(ne, 256)), dim3(256), w->k, ne, (__nv_bfloat16 *)g->wbuf);
		CK(cudaGetLastError(), "dequantizing a weight");
		A = g->wbuf;
	}
	if (!use_blas) {
		for (size_t t = 0; t < n; t++)
			if ((rc = dense_gemv(g, LQ_DTYPE_F32, A, N, K, x + t * K, y + t * N, err)))
				return rc;
		return LQ_OK;
	}
	if (!g->cbh_ok) {
		if (g->cb.create(&g->cbh) != CUBLAS_STATUS_SUCCESS)
			return gfail(err, LQ_ERR_IO, "cuBLAS initialization failed");
		g->cbh_ok = 1;
		g->cb.set_stream(g->cbh, g->st);
	}
	const void *B = x;
	if (T != LQ_DTYPE_F32 && g->xconv == x && g->xconv_n == n) {
		B = g->xbuf; /* q, k and v (gate and up) share their converted input */
	} else if (T != LQ_DTYPE_F32) {
		g->xconv = x;
		g->xconv_n = n;
		uint64_t ne = (uint64_t)n * K;
		if (T == LQ_DTYPE_F16)
			launch_k(g, k_f32_to<__half>, dim3(grid_for(ne, 256)), dim3(256), x, ne, (__half *)g->xbuf);
		else
			launch_k(g, k_f32_to<__nv_bfloat16>, dim3(grid_for(ne, 256)), dim3(256), x, ne, (__nv_bfloat16 *)g->xbuf);
		CK(cudaGetLastError(), "converting activations");
		B = g->xbuf;
	}
	float one = 1.0f, zero = 0.0f;
	cublasStatus_t s = g->cb.gemm(g->cbh, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)n, (int)K, &one, A, cd_type(g->cd),
				      (int)K, B, cd_type(g->cd), (int)K, &zero, y, CUDA_R_32F, (int)N,
				      g->cd == LQ_COMPUTE_F32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F,
				      CUBLAS_GEMM_DEFAULT);
	if (s != CUBLAS_STATUS_SUCCESS)
		return gfail(err, LQ_ERR_IO, "cuBLAS GEMM failed (status %d) on a [%llu, %llu] weight", (int)s,
			     (unsigned long long)N, (unsigned long long)K);
	return LQ_OK;
}

/*
 * cuBLAS's first GEMM in a process costs 55-70 ms on the H200 (its
 * initialization), and each kernel it picks for a new shape and row count
 * about 2 ms more (loaded at first use): without a warm-up the 8B's first
 * 32-token prompt took 59-96 ms against 12-13 ms once warm.  warm_start runs
 * the prefill's GEMMs (matmul's cuBLAS path: the model's weight shapes, a
 * ladder of row counts) on a thread of its own while the weights upload,
 * where the GPU's compute and the handle are idle.  It reads the weight
 * arena as the matrix, whatever part of it is uploaded yet (the products are
 * thrown away), and writes only its own buffers.  Best effort: any failure
 * ends it quietly.  warm_join stops it (between two GEMMs) and waits.
 */
static const int warm_rows[] = { 32, CHUNK, 128, 8 };

static void *warm_main(void *arg)
{
	gstate *g = (gstate *)arg;
	const uint64_t D = (uint64_t)g->hidden, I = (uint64_t)g->inter, Q = (uint64_t)g->qdim, KV = (uint64_t)g->kvdim;
	const int fq = g->c->fused_qkv, fgu = g->c->fused_gate_up;
	const uint64_t shapes[][2] = { { fq ? Q + 2 * KV : Q, D }, { fq ? 0 : KV, D }, { D, Q }, { fgu ? 2 * I : I, D }, { D, I } };
	const int f32 = g->cd == LQ_COMPUTE_F32;
	const size_t es = f32 ? 4 : 2;
	uint64_t maxn = 0, maxk = 0;
	for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
		maxn = shapes[i][0] > maxn ? shapes[i][0] : maxn;
		maxk = shapes[i][1] > maxk ? shapes[i][1] : maxk;
	}
	cudaStream_t st = NULL;
	void *b = NULL, *y = NULL;
	if (cudaSetDevice(g->dev) != cudaSuccess || cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess ||
	    cudaMalloc(&b, CHUNK * maxk * es) != cudaSuccess || cudaMalloc(&y, CHUNK * maxn * 4) != cudaSuccess ||
	    cudaMemsetAsync(b, 0, CHUNK * maxk * es, st) != cudaSuccess ||
	    g->cb.set_stream(g->cbh, st) != CUBLAS_STATUS_SUCCESS)
		goto done;
	for (size_t r = 0; r < sizeof warm_rows / sizeof warm_rows[0]; r++)
		for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
			const uint64_t N = shapes[i][0], K = shapes[i][1];
			if (__atomic_load_n(&g->warm_stop, __ATOMIC_ACQUIRE))
				goto done;
			if (!N || N * K * es > g->arena_size)
				continue;
			float one = 1.0f, zero = 0.0f;
			if (g->cb.gemm(g->cbh, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, warm_rows[r], (int)K, &one, g->arena,
				       cd_type(g->cd), (int)K, b, cd_type(g->cd), (int)K, &zero, y, CUDA_R_32F, (int)N,
				       f32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F,
				       CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS ||
			    cudaStreamSynchronize(st) != cudaSuccess)
				goto done;
		}
done:
	if (st) {
		cudaStreamSynchronize(st);
		g->cb.set_stream(g->cbh, g->st);
		cudaStreamDestroy(st);
	}
	if (b)
		cudaFree(b);
	if (y)
		cudaFree(y);
	cudaGetLastError(); /* this thread's */
	return NULL;
}

static void warm_start(gstate *g)
{
	if (g->cbh_ok && !g->warm_on)
		g->warm_on = pthread_create(&g->warm_th, NULL, warm_main, g) == 0;
}

static void warm_join(gstate *g)
{
	if (!g->warm_on)
		return;
	__atomic_store_n(&g->warm_stop, 1, __ATOMIC_RELEASE);
	pthread_join(g->warm_th, NULL);
	g->warm_on = 0;
}

/*
 * Where a kernel producing n > 1 rows of GEMM input also stores them as
 * 16-bit values of the compute dtype, so that matmul skips its conversion
 * (NULL when matmul would not use them: fp32 compute, one row, no cuBLAS);
 * conv16_done records which activations xbuf now holds.
 */
static void *conv16(gstate *g, size_t n)
{
	return n > 1 && g->cd != LQ_COMPUTE_F32 && g->cbh_ok ? g->xbuf : nullptr;
}
static void conv16_done(gstate *g, const float *x, size_t n)
{
	if (conv16(g, n)) {
		g->xconv = x;
		g->xconv_n = n;
	}
}

/* RMSNorm of n rows (see k_rmsnorm): the register kernel where it fits. */
static void rmsnorm(gstate *g, size_t n, float *x, const float *res, const float *w, float *y, float *add)
{
	g->xconv = NULL; /* a matmul input changes */
	const struct lq_model_config *c = g->c;
	int64_t D = g->hidden, D4 = D / 4;
	float eps = (float)c->rms_norm_eps;
	if (D % 4 == 0 && D4 <= 4 * 1024) {
		int nv = D4 <= 1024 ? 1 : D4 <= 2048 ? 2 : 4;
		unsigned th = (unsigned)((D4 + nv - 1) / nv + 31) / 32 * 32;
		void *y16 = add ? nullptr : conv16(g, n);
		if (nv == 1)
			launch_k(g, k_rmsnorm4<1>, dim3((unsigned)n), dim3(th), x, res, w, y, add, D, eps, c->norm_plus_one, g->cd, y16);
		else if (nv == 2)
			launch_k(g, k_rmsnorm4<2>, dim3((unsigned)n), dim3(th), x, res, w, y, add, D, eps, c->norm_plus_one, g->cd, y16);
		else
			launch_k(g, k_rmsnorm4<4>, dim3((unsigned)n), dim3(th), x, res, w, y, add, D, eps, c->norm_plus_one, g->cd, y16);
		if (y16)
			conv16_done(g, y, n);
		return;
	}
	launch_k(g, k_rmsnorm, dim3((unsigned)n), dim3(NORM_THREADS), x, res, w, y, add, D, eps, c->norm_plus_one, g->cd);
}

/* One token through several weights of the same input (q, k, v; gate, up):
 * one launch when they share a fast layout, else one matmul each. */
static int matvec_multi(gstate *g, const dweight *const *ws, int nw, const float *x, float *const *ys,
			struct lq_error *err)
{
	int same = nw <= LQ_GEMV_PARTS;
	const struct lq_cuda_qweight *qs[LQ_GEMV_PARTS];
	for (int i = 0; same && i < nw; i++) {
		same = ws[i]->k.qtype != LQ_QTYPE_NONE && ws[i]->fast && ws[i]->cols == ws[0]->cols &&
		       ws[i]->q.layout == ws[0]->q.layout &&
		       ws[i]->k.qtype == ws[0]->k.qtype && ws[i]->k.dq == ws[0]->k.dq &&
		       ws[i]->k.bshift == ws[0]->k.bshift;
		qs[i] = &ws[i]->q;
	}
	if (same) {
		int e = lq_cuda_gemv_multi(qs, ys, nw, ws[0]->cols, x, LQ_DTYPE_F32, gemv_mode(g->cd), g->st);
		if (e)
			return cuda_fail(err, (cudaError_t)e, "the dequant-GEMV");
		return LQ_OK;
	}
	for (int i = 0; i < nw; i++) {
		int rc = matmul(g, ws[i], x, 1, ys[i], err);
		if (rc)
			return rc;
	}
	return LQ_OK;
}

/*
 * A fused gate_up weight [2I, K] in the tile layout, or INT8 or 16-bit as
 * stored, as two weights (views of its halves, nothing copied), so that the decode GEMV
 * can pair their tiles and apply the activation (Phi-3): the up half must
 * start on a tile (I % 16 == 0) and, with double quant, on a nested-scale
 * group (I * K / block_size % 256 == 0).
 */
static int split_gate_up(const dweight *gu, uint64_t I, dweight *gate, dweight *up)
{
	const struct lq_cuda_qweight *q = &gu->q;
	const bool d16 = lq_cuda_dense(q->layout), i8 = q->layout == LQ_CUDA_ROWS && q->p.qtype == LQ_QTYPE_INT8;
	if ((q->layout != LQ_CUDA_TILES && !i8 && !d16) || I % 16 || gu->rows != 2 * I)
		return 0;
	const uint64_t K = gu->cols, nbr = d16 ? 0 : K / (uint64_t)q->p.block_size;
	if (q->p.double_quant && (I * nbr) % LQ_QNESTED_BLOCK)
		return 0;
	*gate = *up = *gu;
	gate->rows = up->rows = I;
	gate->q.n = up->q.n = I * K;
	/* the up half: I rows on as stored, I / 16 tiles on in the tile layout,
	 * whose scales start at the same entry as stored (16-bit: none) */
	up->q.d_data = q->d_data + (d16 ? I * K * 2 : i8 ? I * K : I / 16 * (K / 128) * 1024);
	if (!d16)
		up->q.d_scales = (const uint8_t *)q->d_scales + I * nbr * (q->p.double_quant ? 1 : 4);
	if (q->p.double_quant)
		up->q.d_nested = q->d_nested + I * nbr / LQ_QNESTED_BLOCK;
	gate->k.rows = up->k.rows = I;
	up->k.data = up->q.d_data;
	up->k.scales = up->q.d_scales;
	up->k.nested = up->q.d_nested;
	return 1;
}

/*
 * Whether the decode step can fuse each RMSNorm into the GEMVs that read it
 * and each residual add into the GEMV that produces it (lq_cuda_gemv_fused):
 * bf16/fp16 compute, every linear weight of every layer taken by the
 * tensor-core GEMV in the compute dtype's mode (4-bit tiled, INT8, or
 * unquantized in that dtype; lq_cuda_gemv_tc), no o / down bias.  With
 * sandwich norms (Gemma 2) the o and down outputs go to g->o, and the next
 * GEMV that normalizes its input adds them (struct resid).
 */
static int fusable(gstate *g)
{
	const struct lq_model_config *c = g->c;
	if (g->cd == LQ_COMPUTE_F32 || g->hidden % 4)
		return 0;
	for (int64_t i = 0; i < g->nl; i++) {
		const glayer *l = &g->L[i];
		const dweight *ws[7] = {&l->o, &l->down, nullptr, nullptr, nullptr, nullptr, nullptr};
		int n = 2;
		if (c->fused_qkv)
			ws[n++] = &l->qkv;
		else {
			ws[n++] = &l->q;
			ws[n++] = &l->k;
			ws[n++] = &l->v;
		}
		if (c->fused_gate_up)
			ws[n++] = &l->gate_up;
		else {
			ws[n++] = &l->gate;
			ws[n++] = &l->up;
		}
		for (int j = 0; j < n; j++)
			if (!lq_cuda_gemv_tc(&ws[j]->q, ws[j]->cols, gemv_mode(g->cd)))
				return 0;
		if (l->o_bias || l->down_bias)
			return 0;
	}
	return 1;
}

/*
 * Decode with g->fuse: where the residual stream is.  x holds it, except,
 * with sandwich norms (Gemma 2), the last sublayer's output (in g->o) when
 * wait is set: that output is still to be added through the norm of
 * weights wait.  The next GEMV that normalizes its input adds it first
 * (lq_gemv_fuse's pre_add) and stores the sum to the other buffer (g->x or
 * g->x2), which x then becomes.
 */
struct resid {
	float *x;
	const float *wait;
};

/* Decode with g->fuse: ys_i = W_i RMSNorm(x) (norm_w; with r, x is r->x and
 * r->wait's add comes first) or ys_i += W_i x (add); with act_out (gate and
 * up): act_out = act(gate) * up instead of ys. */
static int gemv_fuse(gstate *g, const dweight *const *ws, int nw, const float *x, float *const *ys, const float *norm_w,
		     int add, float *act_out, struct lq_error *err, struct resid *r = nullptr)
{
	const struct lq_cuda_qweight *qs[LQ_GEMV_PARTS];
	for (int i = 0; i < nw; i++)
		qs[i] = &ws[i]->q;
	struct lq_gemv_fuse f = {norm_w, (float)g->c->rms_norm_eps, g->c->norm_plus_one, add, act_out, g->c->act,
				 nullptr, nullptr, nullptr};
	float *other = nullptr;
	if (r && r->wait) {
		other = r->x == g->x ? g->x2 : g->x;
		f.pre_add = g->o;
		f.pre_w = r->wait;
		f.x_out = other;
	}
	int e = lq_cuda_gemv_fused(qs, ys, nw, ws[0]->cols, x, gemv_mode(g->cd), &f, g->st);
	if (e)
		return cuda_fail(err, (cudaError_t)e, "the dequant-GEMV");
	if (other) {
		r->x = other;
		r->wait = nullptr;
	}
	return LQ_OK;
}

/* -------------------------------------------------------------- forward */

/* Decode with g->fuse, a sublayer's output into the residual: x += W in,
 * the add inside the GEMV; with sandwich norms (Gemma 2) x += norm(W in)
 * (out_norm): W in goes to g->o, and the next GEMV's prologue adds it
 * (r->wait), or the final norm's k_rmsnorm (resid_settle). */
static int fused_residual(gstate *g, const dweight *w, const float *in, const float *out_norm, struct resid *r,
			  struct lq_error *err)
{
	const int sw = g->c->sandwich_norms;
	float *y = sw ? g->o : r->x;
	int rc = gemv_fuse(g, &w, 1, in, &y, nullptr, !sw, nullptr, err);
	if (!rc && sw)
		r->wait = out_norm;
	return rc;
}

/* The residual stream complete in r->x: a waiting sublayer output added. */
static void resid_settle(gstate *g, struct resid *r)
{
	if (r->wait)
		rmsnorm(g, 1, g->o, nullptr, r->wait, nullptr, r->x);
	r->wait = nullptr;
}

/* y[t][i] += b[i] for n rows of d (row stride ld); nothing without a bias. */
static int add_bias(gstate *g, float *y, int64_t ld, const float *b, size_t n, int64_t d, struct lq_error *err)
{
	if (!b)
		return LQ_OK;
	launch_k(g, k_bias, dim3(grid_for((uint64_t)n * d, 256)), dim3(256), y, ld, b, (int64_t)n, d);
	CK(cudaGetLastError(), "a bias");
	return LQ_OK;
}

/* Programmatic dependent launch (device of compute capability `major`):
 * only from sm_90 code (lq_cuda_sm90_code; every kernel of the build is
 * compiled for the same targets). */
static int pdl_image(int major)
{
	return major >= 9 && lq_cuda_sm90_code((const void *)k_softcap);
}

/* The most decode-attention splits that can run as one cluster: ATT_CLUSTER
 * when the device can place such a cluster (above 8 is non-portable), else
 * 8, else none (also when anything fails: the global merge works anywhere). */
template <typename CT>
static int att_cluster_max(void)
{
	int want = ATT_CLUSTER;
	if (want < 2)
		return 0;
	/* without sm_90 code the cluster code is compiled out, and the global
	 * merge works there */
	if (!lq_cuda_sm90_code((const void *)k_attn<CT>))
		return 0;
	if (want > 8 && cudaFuncSetAttribute(k_attn<CT>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
		want = 8;
	for (; want >= 2; want = want > 8 ? 8 : 0) {
		cudaLaunchConfig_t cfg = {};
		cudaLaunchAttribute at = cluster_z((unsigned)want);
		cfg.gridDim = dim3(1, 1, (unsigned)want);
		cfg.blockDim = dim3(ATT_WARPS * 32);
		cfg.attrs = &at;
		cfg.numAttrs = 1;
		int n = 0;
		if (cudaOccupancyMaxActiveClusters(&n, k_attn<CT>, &cfg) == cudaSuccess && n > 0)
			return want;
	}
	cudaGetLastError();
	return 0;
}

/* What g_prepare sets att_cl to on a device of compute capability major. */
static int att_cluster(int major, int cd)
{
	if (major < 9)
		return 0;
	return by_cache_type(cd, [](auto c) { return att_cluster_max<typename decltype(c)::type>(); });
}

#ifndef ATT_GQA_KEYS
/* k_attn_gqa: cache positions per split (at most ATT_MAXSPLIT splits); 32
 * was as fast from 4000 tokens on and slower after 1000 (2.27 against 2.19
 * ms/token, 8B NF4) */
#define ATT_GQA_KEYS 64
#endif
#ifndef ATT_LONG_MAXSPLIT
/* at most this many splits for k_attn_long: 32 was as fast as 64 or faster
 * at 1000-8000 positions (H200, 8B NF4; BENCHMARKS.md) */
#define ATT_LONG_MAXSPLIT 32
#endif

/* log2 of k_attn_long's lanes per key (2 to 5) for this cache (one token),
 * its dims per lane in *dpl; 0 where k_attn runs: caches under
 * ATT_LONG_MIN positions, head sizes that 16, 24 or 32 dims per lane (at
 * most 24 at fp32: registers) do not divide into 4, 8, 16 or 32 lanes. */
static int att_long_of(int cd, int64_t cap, int64_t hd, int *dpl)
{
	if (cap < ATT_LONG_MIN)
		return 0;
	for (int d = cd == LQ_COMPUTE_F32 ? 24 : 32; d >= 16; d -= 8) {
		const int64_t gl = hd % d ? 0 : hd / d;
		if (gl == 4 || gl == 8 || gl == 16 || gl == 32) {
			if (dpl)
				*dpl = d;
			return gl == 4 ? 2 : gl == 8 ? 3 : gl == 16 ? 4 : 5;
		}
	}
	return 0;
}
static int att_long(const gstate *g, int *dpl) { return att_long_of(g->cd, g->cap, g->hd, dpl); }

/* The k_attn_long instance for dpl dims per lane. */
template <typename CT>
static decltype(&k_attn_long<CT, 16>) att_long_kern(int dpl)
{
	if (dpl == 16)
		return k_attn_long<CT, 16>;
	if constexpr (sizeof(CT) == 2) /* float caches take at most 24 dims per lane */
		if (dpl == 32)
			return k_attn_long<CT, 32>;
	return k_attn_long<CT, 24>;
}

/* k_attn_gqa runs for this cache (one token) instead of k_attn_long: a
 * 16-bit cache of at least ATT_GQA_MIN positions, head size 64 or 128, 2 to
 * 8 query heads per KV head. */
static bool att_gqa_of(int cd, int64_t cap, int64_t hd, int64_t grp)
{
#ifdef ATT_NO_GQA /* A/B: k_attn_long for these too */
	return false;
#endif
	return cd != LQ_COMPUTE_F32 && cap >= ATT_GQA_MIN && (hd == 64 || hd == 128) && grp >= 2 && grp <= 8;
}
/* k_attn_gqa runs for kv KV heads of a layer's kvbytes of K and V where its
 * grid of kv x up to ATT_MAXSPLIT splits fills the device's slots (the
 * blocks it runs at once), or from ATT_GQA_BYTES (lq_cuda.h) on.  With few
 * KV heads SMs sit idle, while k_attn_long has a block per query head but
 * reads a KV head's keys once per query head of its group.  H200, NF4,
 * ms/token, k_attn_long against k_attn_gqa (BENCHMARKS.md; bench_gpu_run's
 * cache is the prompt + 80 positions):
 *  - Qwen2-7B (4 KV heads of 128): 2.22 / 2.26 at 4080 positions (7.97 MiB),
 *    2.41 / 2.33 at 8080 (15.8 MiB), 2.76 / 2.45 at 16080;
 *  - Qwen2-1.5B (2): 1.10 / 1.20 at 4080 (3.98 MiB), 1.21 / 1.24 at 8080
 *    (7.89 MiB), 1.42 / 1.32 at 16080 (15.7 MiB);
 *  - Qwen2-0.5B (2 of 64): 1.28 / 0.99 at 32080 (15.7 MiB);
 *  - Llama 3.1 8B (8, past the 264 slots at head size 128), k_attn_gqa
 *    before k_attn_merge: 2.38 / 2.34 at 4080, 3.15 / 2.70 at 16080. */
static bool att_gqa_pays(int64_t kv, int slots, int64_t kvbytes)
{
#ifdef ATT_GQA_ANY_KV /* A/B: k_attn_gqa with any number of KV heads */
	return true;
#endif
	return kv * ATT_MAXSPLIT >= slots || kvbytes >= ATT_GQA_BYTES;
}
/* k_attn_gqa runs for kv KV heads of hd with groups of grp in a cache of cap
 * positions, on a device with slots of it (the runtime and the test hook
 * decide here): the shape, 16 rows' offsets in an int, and it pays. */
static bool att_gqa_takes(int cd, int64_t cap, int64_t hd, int64_t grp, int64_t kv, int slots)
{
	const int64_t kvdim = kv * hd;
	return att_gqa_of(cd, cap, hd, grp) && kvdim < ((int64_t)1 << 27) &&
	       att_gqa_pays(kv, slots, cap * kvdim * 2 * 2 /* K and V, 16-bit */);
}
static bool att_gqa(const gstate *g)
{
	return att_gqa_takes(g->cd, g->cap, g->hd, g->H / g->KV, g->KV, g->att_gqa_slots);
}

/* The k_attn_gqa instance for head size hd and compute dtype cd. */
static decltype(&k_attn_gqa<false, 64>) att_gqa_kern(int64_t hd, int cd)
{
	if (cd == LQ_COMPUTE_F16)
		return hd == 64 ? k_attn_gqa<true, 64> : k_attn_gqa<true, 128>;
	return hd == 64 ? k_attn_gqa<false, 64> : k_attn_gqa<false, 128>;
}

/* The decode-attention kernel for one token in g's cache: k_attn (short
 * caches and the head sizes k_attn_long does not take), k_attn_long, or
 * k_attn_gqa where it takes the shape and fills the device.  attend() and
 * attn_splits() ask this one function. */
enum dec_kern { DEC_ATTN, DEC_LONG, DEC_GQA };
static dec_kern dec_attn(const gstate *g)
{
	if (!att_long(g, NULL))
		return DEC_ATTN;
	return att_gqa(g) ? DEC_GQA : DEC_LONG;
}

/* In *slots: the k_attn_gqa blocks (head size hd, compute dtype cd) that
 * the device's nsm SMs run at once. */
static cudaError_t att_gqa_slots_of(int64_t hd, int cd, int nsm, int *slots)
{
	int nb = 0;
	const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, att_gqa_kern(hd, cd), AG_WARPS * 32, 0);
	*slots = nb * nsm;
	return e;
}

/* In g->att_long_slots (g->att_gqa_slots): the k_attn_long (k_attn_gqa)
 * blocks of this model that the device runs at once (0 where it does not
 * take the kernel). */
static cudaError_t att_long_prepare(gstate *g, int nsm)
{
	int dpl = 0, nb = 0;
	const int gsh = att_long_of(g->cd, ATT_LONG_MIN, g->hd, &dpl);
	g->att_long_slots = g->att_gqa_slots = 0;
	if (att_gqa_of(g->cd, ATT_GQA_MIN, g->hd, g->H / g->KV))
		if (const cudaError_t e = att_gqa_slots_of(g->hd, g->cd, nsm, &g->att_gqa_slots); e != cudaSuccess)
			return e;
	if (!gsh)
		return cudaSuccess;
	return by_cache_type(g->cd, [&](auto c) {
		using CT = typename decltype(c)::type;
		const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
			&nb, att_long_kern<CT>(dpl), ATT_WARPS * 32, att_long_smem(g->hd, gsh));
		g->att_long_slots = nb * nsm;
		return e;
	});
}

static int attn_splits(gstate *g, size_t n)
{
	if (n > 1)
		return 1;
	if (const dec_kern k = dec_attn(g); k != DEC_ATTN) {
		/* k_attn_gqa: a block per KV head, so more and shorter splits */
		const bool gq = k == DEC_GQA;
		const int64_t keys = gq ? ATT_GQA_KEYS : ATT_LONG_KEYS, mx = gq ? ATT_MAXSPLIT : ATT_LONG_MAXSPLIT;
		int64_t s = (g->cap + keys - 1) / keys;
		s = s > mx ? mx : s;
#ifndef ATT_LONG_NOWAVE
		/* whole waves: a few blocks past the device's slots would run as
		 * a second wave of their own (1000 positions, 8B: 0.08 ms a step) */
		const int64_t w = gq ? g->att_gqa_slots / g->KV : g->att_long_slots / g->H;
		if (w > 0 && s > w)
			s = s / w * w;
#endif
		return (int)s;
	}
	int64_t s = g->cap / 16;
	if (g->att_cl > 1 && g->cap <= ATT_CLCAP && s > g->att_cl)
		s = g->att_cl; /* one cluster: fewer, longer splits without the global merge */
	return (int)(s < 1 ? 1 : s > ATT_MAXSPLIT ? ATT_MAXSPLIT : s);
}

/* Layer li's RoPE (q rotated in place, k and v into the KV cache; for one
 * token inside k_attn instead, up to head size 128 and where k_attn_long
 * does not run) and attention into g->att; CT: the cache's element type
 * (kv_es(g) bytes). */
template <typename CT>
static int attend(gstate *g, const glayer *l, int64_t li, size_t n, float *q, float *k, float *v, int64_t ld,
		  int64_t pos, const int64_t *d_pos, const float *rtab, struct lq_error *err)
{
	const struct lq_model_config *c = g->c;
	const int cd = g->cd;
	CT *kc = (CT *)layer_kc(g, li), *vc = (CT *)layer_vc(g, li);
	att_rope rp = {};
	const dec_kern dk = dec_attn(g); /* for n == 1 */
	/* One token: RoPE inside the attention kernel, for head sizes up to
	 * 128.  At 256 (Gemma 2) k_rope's launch measured faster (H200, the
	 * Gemma-2-2B shape: 1.42 against 1.46 ms/token; Llama 3.1 8B, Phi-3,
	 * Qwen2 shapes gained 1-2%; BENCHMARKS.md). */
#ifdef ATT_NO_ROPE_FUSE /* diagnostic: k_rope for one token too */
	const bool fuse = false;
#else
	const bool fuse = n == 1 && rtab && g->hd <= 128 && dk == DEC_ATTN;
#endif
	if (fuse) {
		rp = { k, v, (const float *)l->q_bias, (const float *)l->k_bias, (const float *)l->v_bias, rtab, g->rot };
	} else {
		dim3 rg((unsigned)(g->H + g->KV), (unsigned)n);
		launch_k(g, k_rope<CT>, dim3(rg), dim3(ROPE_THREADS), q, ld, k, ld, v, ld, g->H, g->KV, g->hd, g->rot,
			 g->inv_freq, g->ascale, d_pos, pos, kc, vc, g->kvdim, cd, (const float *)l->q_bias,
			 (const float *)l->k_bias, (const float *)l->v_bias, rtab);
		CK(cudaGetLastError(), "RoPE");
	}
	g->xconv = NULL;
	if (n > 1 && cd != LQ_COMPUTE_F32 && ta_ok(g->hd)) {
		if constexpr (sizeof(CT) == 2) { /* the tensor-core kernel reads 16-bit caches */
			dim3 tg((unsigned)g->H, (unsigned)((n + TA_Q - 1) / TA_Q));
			launch_ks(g, ta_kernel(g->hd, cd), tg, dim3(TA_THREADS), ta_smem(g->hd), q, ld, (const uint16_t *)kc,
				  (const uint16_t *)vc, g->att, g->H, g->H / g->KV, g->hd, g->kvdim, l->window,
				  (float)c->attn_scale, (float)c->attn_logit_softcap, pos, (int64_t)n, cd, conv16(g, n));
			conv16_done(g, g->att, n);
		}
	} else if (n > 1) {
		dim3 fg((unsigned)g->H, (unsigned)((n + FA_Q - 1) / FA_Q));
		launch_ks(g, fa_kernel<CT>(g->hd), fg, dim3(FA_THREADS), fa_smem(g->hd), q, ld, (const CT *)kc, (const CT *)vc,
			  g->att, g->H, g->H / g->KV, g->hd, g->kvdim, l->window, (float)c->attn_scale,
			  (float)c->attn_logit_softcap, pos, (int64_t)n, cd);
	} else if (dk == DEC_GQA) {
		if constexpr (sizeof(CT) == 2) {
			const int S = attn_splits(g, n);
			launch_k(g, att_gqa_kern(g->hd, cd), dim3((unsigned)g->KV, 1u, (unsigned)S), dim3(AG_WARPS * 32),
				 (const float *)q, (const uint16_t *)kc, (const uint16_t *)vc, g->att, g->part, g->H,
				 (int)(g->H / g->KV), g->kvdim, l->window, (float)c->attn_scale,
				 (float)c->attn_logit_softcap, d_pos, pos, cd);
			if (S > 1)
				launch_k(g, k_attn_merge, dim3((unsigned)g->H), dim3(ATT_WARPS * 32), (const float *)g->part,
					 g->att, g->H, g->hd, S, cd);
		}
	} else if (dk == DEC_LONG) {
		int dpl = 0;
		const int gsh = att_long(g, &dpl);
		dim3 ag((unsigned)g->H, 1u, (unsigned)attn_splits(g, n));
		launch_ks(g, att_long_kern<CT>(dpl), ag, dim3(ATT_WARPS * 32), att_long_smem(g->hd, gsh),
			  (const float *)q, (const CT *)kc, (const CT *)vc, g->att, g->part, g->acnt, g->H, g->H / g->KV,
			  g->hd, g->kvdim, l->window, (float)c->attn_scale, (float)c->attn_logit_softcap, d_pos, pos, cd,
			  gsh);
	} else {
		int S = attn_splits(g, n), cl = S > 1 && S <= g->att_cl;
		dim3 ag((unsigned)g->H, (unsigned)n, (unsigned)S);
		launch_cl(g, k_attn<CT>, dim3(ag), dim3(ATT_WARPS * 32), cl ? (size_t)S * (g->hd + 2) * sizeof(float) : 0,
			  cl ? (unsigned)S : 0u, q, ld, kc, vc, g->att, g->part, g->acnt, g->H, g->H / g->KV, g->hd,
			  g->kvdim, l->window, (float)c->attn_scale, (float)c->attn_logit_softcap, d_pos, pos, cd, cl, rp);
	}
	CK(cudaGetLastError(), "attention");
	return LQ_OK;
}

/* Layers and head for n tokens at pos (d_pos when set, for the graph). */
static int run_tokens(gstate *g, size_t n, int64_t pos, const int64_t *d_pos, int want_logits, int all_logits,
		      struct lq_error *err)
{
#ifdef TC_TRACE
	static int kt_reg;
	if (!kt_reg++)
		atexit(kt_dump);
#endif
	const struct lq_model_config *c = g->c;
	int cd = g->cd, rc;
	int64_t D = g->hidden, I = g->inter, F = g->qdim + 2 * g->kvdim;
	float eps = (float)c->rms_norm_eps;
	float escale = g->embed_scale;
	g->xconv = NULL;
	float *rtab = n == 1 ? g->rtab : nullptr; /* RoPE's cos / sin, made once per step */
	launch_k(g, k_embed, dim3((unsigned)n), dim3(256), g->embed.k, (uint64_t)D, g->tok, escale, g->x, cd,
		 (const float *)g->inv_freq, g->rot / 2, g->ascale, d_pos, pos, rtab);
	CK(cudaGetLastError(), "the embedding");
	const float *pend = NULL; /* MLP output not yet added to x (fused into the next norm) */
	const int fz = n == 1 && g->fuse; /* norms and residual adds inside the GEMVs */
	struct resid rs = {g->x, nullptr}; /* fz: the residual stream */
	for (int64_t li = 0; li < g->nl; li++) {
		glayer *l = &g->L[li];
		if (!fz)
			rmsnorm(g, n, g->x, pend, l->attn_norm, g->h, nullptr);
		float *q, *k, *v;
		int64_t ld;
		if (c->fused_qkv) {
			const dweight *wq = &l->qkv;
			if ((rc = fz ? gemv_fuse(g, &wq, 1, rs.x, &g->qkv, l->attn_norm, 0, nullptr, err, &rs)
				     : matmul(g, &l->qkv, g->h, n, g->qkv, err)))
				return rc;
			ld = F;
			q = g->qkv;
			k = q + g->qdim;
			v = k + g->kvdim;
		} else {
			/* q, k, v side by side in rows of F: separate GEMVs */
			ld = F;
			q = g->qkv;
			k = q + g->qdim;
			v = k + g->kvdim;
			if (n == 1) {
				const dweight *ws[3] = { &l->q, &l->k, &l->v };
				float *ys[3] = { q, k, v };
				if ((rc = fz ? gemv_fuse(g, ws, 3, rs.x, ys, l->attn_norm, 0, nullptr, err, &rs)
					     : matvec_multi(g, ws, 3, g->h, ys, err)))
					return rc;
			} else {
				/* GEMM outputs are dense [n, rows]: use att/o/g as scratch */
				float *tq = g->att, *tk = g->o, *tv = g->gu;
				if ((rc = matmul(g, &l->q, g->h, n, tq, err)) || (rc = matmul(g, &l->k, g->h, n, tk, err)) ||
				    (rc = matmul(g, &l->v, g->h, n, tv, err)))
					return rc;
				CK(cudaMemcpy2DAsync(q, F * 4, tq, g->qdim * 4, g->qdim * 4, n, cudaMemcpyDeviceToDevice, g->st), "q");
				CK(cudaMemcpy2DAsync(k, F * 4, tk, g->kvdim * 4, g->kvdim * 4, n, cudaMemcpyDeviceToDevice, g->st), "k");
				CK(cudaMemcpy2DAsync(v, F * 4, tv, g->kvdim * 4, g->kvdim * 4, n, cudaMemcpyDeviceToDevice, g->st), "v");
			}
			/* the q / k / v biases: added by k_rope */
		}
		if ((rc = by_cache_type(g->cd, [&](auto c) {
			     return attend<typename decltype(c)::type>(g, l, li, n, q, k, v, ld, pos, d_pos, rtab, err);
		     })))
			return rc;
		if (fz) {
			if ((rc = fused_residual(g, &l->o, g->att, l->post_attn_norm, &rs, err)))
				return rc;
		} else if ((rc = matmul(g, &l->o, g->att, n, g->o, err)) || (rc = add_bias(g, g->o, D, l->o_bias, n, D, err)))
			return rc;
		/* the MLP's input norm: applied by the gate / up GEMV when fused */
		const float *mlp_norm = c->sandwich_norms ? l->pre_ffn_norm : l->post_attn_norm;
		if (!fz && c->sandwich_norms) {
			rmsnorm(g, n, g->o, nullptr, l->post_attn_norm, nullptr, g->x);
			rmsnorm(g, n, g->x, nullptr, l->pre_ffn_norm, g->h, nullptr);
		} else if (!fz) {
			rmsnorm(g, n, g->x, g->o, l->post_attn_norm, g->h, nullptr);
		}
		CK(cudaGetLastError(), "a norm");
		float *gt, *ut;
		int64_t gl;
		int act_done = 0;
		if (c->fused_gate_up && !(fz && l->gu_views)) {
			const dweight *wgu = &l->gate_up;
			if ((rc = fz ? gemv_fuse(g, &wgu, 1, rs.x, &g->gu, mlp_norm, 0, nullptr, err, &rs)
				     : matmul(g, &l->gate_up, g->h, n, g->gu, err)))
				return rc;
			gt = g->gu;
			ut = g->gu + I;
			gl = 2 * I;
		} else {
			gt = g->gu;
			ut = g->gu + (uint64_t)n * I;
			gl = I;
			const dweight *ws[2] = { &l->gate, &l->up };
			float *ys[2] = { gt, ut };
			/* the activation inside the GEMV too, without gate / up biases */
			act_done = fz && !l->gate_bias && !l->up_bias;
			if (fz)
				rc = gemv_fuse(g, ws, 2, rs.x, ys, mlp_norm, 0, act_done ? g->g : nullptr, err, &rs);
			else if (n == 1)
				rc = matvec_multi(g, ws, 2, g->h, ys, err);
			else if (!(rc = matmul(g, &l->gate, g->h, n, gt, err)))
				rc = matmul(g, &l->up, g->h, n, ut, err);
			if (rc || (rc = add_bias(g, gt, I, l->gate_bias, n, I, err)) ||
			    (rc = add_bias(g, ut, I, l->up_bias, n, I, err)))
				return rc;
		}
		g->xconv = NULL;
		if (!act_done) {
			launch_k(g, k_act, dim3(grid_for((uint64_t)n * I, 256)), dim3(256), gt, ut, gl, g->g, (int64_t)n, I, c->act,
				 cd, conv16(g, n));
			conv16_done(g, g->g, n);
			CK(cudaGetLastError(), "the MLP activation");
		}
		if (fz) {
			if ((rc = fused_residual(g, &l->down, g->g, l->post_ffn_norm, &rs, err)))
				return rc;
			continue; /* the residual is in x */
		}
		if ((rc = matmul(g, &l->down, g->g, n, g->o, err)) || (rc = add_bias(g, g->o, D, l->down_bias, n, D, err)))
			return rc;
		if (c->sandwich_norms)
			rmsnorm(g, n, g->o, nullptr, l->post_ffn_norm, nullptr, g->x);
		else
			pend = g->o;
		CK(cudaGetLastError(), "a residual add");
	}
	size_t first = all_logits ? 0 : n - 1, nl = n - first;
	if (fz && want_logits && lq_cuda_gemv_tc(&g->lm_head.q, (uint64_t)D, gemv_mode(cd))) {
		/* one token: the final norm (after a waiting sandwich-norm
		 * output, resid_settle's add) inside the lm_head's GEMV */
		const dweight *lm = &g->lm_head;
		if ((rc = gemv_fuse(g, &lm, 1, rs.x, &g->logits, g->final_norm, 0, nullptr, err, &rs)))
			return rc;
	} else {
		if (fz)
			resid_settle(g, &rs);
		if (!want_logits)
			return LQ_OK;
		rmsnorm(g, nl, rs.x + first * D, pend ? pend + first * D : nullptr, g->final_norm, g->h, nullptr);
		CK(cudaGetLastError(), "the final norm");
		if ((rc = matmul(g, &g->lm_head, g->h, nl, g->logits, err)))
			return rc;
	}
	if (c->final_logit_softcap > 0) {
		uint64_t tot = (uint64_t)nl * g->vocab;
		launch_k(g, k_softcap, dim3(grid_for(tot, 256)), dim3(256), g->logits, tot, (float)c->final_logit_softcap);
		CK(cudaGetLastError(), "the logit soft-cap");
	}
	return LQ_OK;
}

/* Upload inv_freq for a sequence of seq_len tokens when it changes
 * (Phi-3's longrope switches factors past the original context). */
static int update_rope(gstate *g, int64_t seq_len, struct lq_error *err)
{
	int64_t half = g->rot / 2;
	if (!half)
		return LQ_OK;
	float *tmp = g->h_inv + half;
	double as = 1.0;
	lq_rope_inv_freq(g->c, seq_len, tmp, &as);
	g->ascale = (float)as;
	if (g->inv_len >= 0 && !memcmp(tmp, g->h_inv, (size_t)half * sizeof(float)))
		return LQ_OK;
	memcpy(g->h_inv, tmp, (size_t)half * sizeof(float));
	CK(cudaMemcpyAsync(g->inv_freq, g->h_inv, (size_t)half * sizeof(float), cudaMemcpyHostToDevice, g->st), "RoPE");
	CK(cudaStreamSynchronize(g->st), "RoPE");
	g->inv_len = seq_len;
	return LQ_OK;
}

/* The argmax of one logits row (k_argmax): as lq_sample's greedy
 * pick, the first index of the maximum, NaN never picked, 0 when l[0] is NaN. */
static int launch_argmax(gstate *g, struct lq_error *err)
{
	/* at least 256 logits per block: the tests run several blocks on a 1000-token vocabulary */
	unsigned nb = (unsigned)((g->vocab + 255) / 256 < ARGMAX_BLOCKS ? (g->vocab + 255) / 256 : ARGMAX_BLOCKS);
	launch_k(g, k_argmax, dim3(nb), dim3(1024), (const float *)g->logits, (int64_t)g->vocab, g->d_id, g->am_v, g->am_i,
		 g->acnt + g->H);
	CK(cudaGetLastError(), "the argmax");
	return LQ_OK;
}

/* The argmax of the logits row into h_id (queued, not waited for). */
static int argmax_to_host(gstate *g, struct lq_error *err)
{
	int rc = launch_argmax(g, err);
	if (rc)
		return rc;
	CK(cudaMemcpyAsync(g->h_id, g->d_id, sizeof(int32_t), cudaMemcpyDeviceToHost, g->st), "the argmax");
	return LQ_OK;
}

/* Whether sampling with o takes lq_cuda_topk's set (top-k 1..LQ_CUDA_TOPK_MAX)
 * rather than lq_cuda_sample_all's pick over the whole row. */
static bool topk_set(const struct lq_sample_opts *o)
{
	return o->top_k > 0 && o->top_k <= LQ_CUDA_TOPK_MAX;
}

/* The draw from the logits row with o (temperature > 0), the generator's
 * state and stop flag in d_cs, into d_id: the top-k set and its pick where
 * top-k keeps few, else the whole row's pick (sa_scr made). */
static cudaError_t launch_draw(gstate *g, const struct lq_sample_opts *o)
{
	if (!topk_set(o))
		return (cudaError_t)lq_cuda_sample_all(g->logits, g->vocab, (float)o->temperature, o->top_k, o->top_p,
						       o->min_p, g->d_cs->rng, &g->d_cs->stop, g->d_id, g->sa_scr, g->st);
	cudaError_t e =
		(cudaError_t)lq_cuda_topk(g->logits, g->vocab, (float)o->temperature, o->top_k, g->tk_scr, g->d_tk, g->st);
	if (e == cudaSuccess)
		e = (cudaError_t)lq_cuda_pick(g->d_tk, o->top_p, o->min_p, g->d_cs->rng, &g->d_cs->stop, g->d_id, g->st);
	return e;
}

static int decode_graph(gstate *g, int am, struct lq_error *err)
{
	int S = attn_splits(g, 1);
	if (g->graph[am] && g->graph_cap[am] == g->cap && g->graph_ascale[am] == g->ascale && g->graph_split[am] == S &&
	    (am != 4 || (g->graph_so.temperature == g->so.temperature && g->graph_so.top_k == g->so.top_k &&
			 g->graph_so.top_p == g->so.top_p && g->graph_so.min_p == g->so.min_p &&
			 g->graph_so.repetition_penalty == g->so.repetition_penalty)))
		return LQ_OK;
	if (g->graph[am]) {
		cudaGraphExecDestroy(g->graph[am]);
		g->graph[am] = NULL;
	}
	cudaGraph_t gr;
	CK(cudaStreamBeginCapture(g->st, cudaStreamCaptureModeThreadLocal), "capturing the decode graph");
	cudaError_t e;
	if (am >= 3) {
		e = cudaMemcpyAsync(g->tok, g->d_id, sizeof(int32_t), cudaMemcpyDeviceToDevice, g->st);
	} else {
		e = cudaMemcpyAsync(g->tok, g->h_tok, sizeof(int32_t), cudaMemcpyHostToDevice, g->st);
		if (e == cudaSuccess)
			e = cudaMemcpyAsync(g->pos, g->h_pos, sizeof(int64_t), cudaMemcpyHostToDevice, g->st);
	}
	int rc = e == cudaSuccess ? run_tokens(g, 1, 0, g->pos, 1, 0, err) : cuda_fail(err, e, "the decode graph");
	if (!rc && (am == 1 || am == 3))
		rc = launch_argmax(g, err);
	const bool pen = am == 4 && lq_sample_penalized(&g->so);
	if (!rc && pen) {
		launch_k(g, k_penalty_map, dim3(grid_for((uint64_t)g->vocab, 256)), dim3(256), g->logits, (const uint8_t *)g->d_seen,
			 (int64_t)g->vocab, (float)g->so.repetition_penalty);
		if ((e = cudaGetLastError()) != cudaSuccess)
			rc = cuda_fail(err, e, "the decode graph");
	}
	if (!rc && am == 4 && !(g->so.temperature > 0)) {
		rc = launch_argmax(g, err); /* greedy after the penalty */
	} else if (!rc && am == 4) {
		e = launch_draw(g, &g->so);
		if (e != cudaSuccess)
			rc = cuda_fail(err, e, "the decode graph");
	}
	if (!rc && am >= 3) {
		launch_k(g, k_chain_next, dim3(1), dim3(1), (const int32_t *)g->d_id, g->d_ids, g->d_cs, g->pos,
			 pen ? g->d_seen : (uint8_t *)NULL);
		if ((e = cudaGetLastError()) != cudaSuccess)
			rc = cuda_fail(err, e, "the decode graph");
	}
	if (!rc && am < 2) {
		e = am ? cudaMemcpyAsync(g->h_id, g->d_id, sizeof(int32_t), cudaMemcpyDeviceToHost, g->st)
		       : cudaMemcpyAsync(g->h_logits, g->logits, (size_t)g->vocab * sizeof(float), cudaMemcpyDeviceToHost,
					 g->st);
		if (e)
			rc = cuda_fail(err, e, "the decode graph");
	}
	e = cudaStreamEndCapture(g->st, &gr);
	if (rc) {
		if (e == cudaSuccess)
			cudaGraphDestroy(gr);
		cudaGetLastError();
		return rc;
	}
	CK(e, "capturing the decode graph");
	e = cudaGraphInstantiate(&g->graph[am], gr, 0);
	cudaGraphDestroy(gr);
	CK(e, "instantiating the decode graph");
	g->graph_cap[am] = g->cap;
	g->graph_ascale[am] = g->ascale;
	g->graph_split[am] = S;
	if (am == 4)
		g->graph_so = g->so;
	return LQ_OK;
}

static int g_forward(void *state, const int32_t *tokens, size_t n, int64_t pos, float *logits, int all_logits,
		     struct lq_error *err)
{
	gstate *g = (gstate *)state;
	int rc;
	if (n == 0)
		return LQ_OK;
	if ((rc = ensure_cache(g, pos + (int64_t)n, err)) || (rc = update_rope(g, pos + (int64_t)n, err)))
		return rc;
	if (n == 1 && logits) {
		/* decode: replay the graph */
		if ((rc = decode_graph(g, 0, err)))
			return rc;
		*g->h_tok = tokens[0];
		*g->h_pos = pos;
		CK(cudaGraphLaunch(g->graph[0], g->st), "the decode step");
		CK(cudaStreamSynchronize(g->st), "the decode step");
		memcpy(logits, g->h_logits, (size_t)g->vocab * sizeof(float));
		return LQ_OK;
	}
	for (size_t done = 0; done < n;) {
		size_t m = n - done < CHUNK ? n - done : CHUNK;
		int last = done + m == n;
		int want = logits && (all_logits || last);
		CK(cudaMemcpyAsync(g->tok, tokens + done, m * sizeof(int32_t), cudaMemcpyHostToDevice, g->st), "the tokens");
		if ((rc = run_tokens(g, m, pos + (int64_t)done, NULL, want, all_logits, err)))
			return rc;
		if (want) {
			size_t rows = all_logits ? m : 1;
			float *dst = all_logits ? logits + done * (size_t)g->vocab : logits;
			CK(cudaMemcpyAsync(dst, g->logits, rows * (size_t)g->vocab * sizeof(float), cudaMemcpyDeviceToHost,
					   g->st),
			   "the logits");
		}
		CK(cudaStreamSynchronize(g->st), "the forward pass");
		done += m;
	}
	return LQ_OK;
}

/* Run the tokens, leaving the last row's logits on the device; with am,
 * also their argmax, copied to h_id.  Queued on the stream, not waited for. */
static int forward_dev(gstate *g, const int32_t *tokens, size_t n, int64_t pos, int am, struct lq_error *err)
{
	int rc;
	if ((rc = ensure_cache(g, pos + (int64_t)n, err)) || (rc = update_rope(g, pos + (int64_t)n, err)))
		return rc;
	if (n == 1) {
		int mode = am ? 1 : 2;
		if ((rc = decode_graph(g, mode, err)))
			return rc;
		*g->h_tok = tokens[0];
		*g->h_pos = pos;
		CK(cudaGraphLaunch(g->graph[mode], g->st), "the decode step");
		return LQ_OK;
	}
	for (size_t done = 0; done < n;) {
		size_t m = n - done < CHUNK ? n - done : CHUNK;
		int last = done + m == n;
		CK(cudaMemcpyAsync(g->tok, tokens + done, m * sizeof(int32_t), cudaMemcpyHostToDevice, g->st), "the tokens");
		if ((rc = run_tokens(g, m, pos + (int64_t)done, NULL, last, 0, err)))
			return rc;
		if (!last)
			CK(cudaStreamSynchronize(g->st), "the forward pass");
		done += m;
	}
	return am ? argmax_to_host(g, err) : LQ_OK;
}

/* forward, keeping only the argmax of the last logits row (greedy decoding):
 * 4 bytes come back instead of the vocabulary's logits. */
static int g_argmax(void *state, const int32_t *tokens, size_t n, int64_t pos, int32_t *id, struct lq_error *err)
{
	gstate *g = (gstate *)state;
	int rc = forward_dev(g, tokens, n, pos, 1, err);
	if (rc)
		return rc;
	CK(cudaStreamSynchronize(g->st), "the decode step");
	*id = *g->h_id;
	return LQ_OK;
}

/* Whether RoPE is the same (inverse frequencies and attention scale, which
 * long-context scalings switch) for sequence lengths a and b. */
static int rope_same(gstate *g, int64_t a, int64_t b)
{
	const int64_t half = g->rot / 2;
	if (!half)
		return 1;
	float *fa = g->h_inv + 2 * half; /* 2 * half floats of scratch past update_rope's */
	double sa = 1.0, sb = 1.0;
	lq_rope_inv_freq(g->c, a, fa, &sa);
	lq_rope_inv_freq(g->c, b, fa + half, &sb);
	return sa == sb && !memcmp(fa, fa + half, (size_t)half * sizeof(float));
}

/* Decode steps chained on the device with graph [am] (3: greedy, 4:
 * sampling with g->so): up to CHAIN_MAX replays per wait, each taking the
 * previous step's pick as its token; one step at a time where RoPE changes
 * between the first and the last position of a run (each step must see the
 * RoPE of its own sequence length, as single steps do).  rng (sampling):
 * the generator state, sent with each run of steps and brought back.
 * *done: the steps made (fewer than n where a step's kept set could not be
 * made on the device). */
static int chain_steps(gstate *g, int am, int32_t token, int64_t pos, size_t n, uint64_t *rng, int32_t *ids,
		       size_t *done, struct lq_error *err)
{
	int rc;
	*done = 0;
	while (n > 0) {
		size_t m = n < CHAIN_MAX ? n : CHAIN_MAX;
		if (m > 1 && !rope_same(g, pos + 1, pos + (int64_t)m))
			m = 1;
		if ((rc = ensure_cache(g, pos + (int64_t)m, err)) || (rc = update_rope(g, pos + (int64_t)m, err)) ||
		    (rc = decode_graph(g, am, err)))
			return rc;
		*g->h_tok = token;
		*g->h_pos = pos;
		memset(g->h_cs, 0, sizeof *g->h_cs);
		if (rng)
			memcpy(g->h_cs->rng, rng, sizeof g->h_cs->rng);
		CK(cudaMemcpyAsync(g->d_id, g->h_tok, sizeof(int32_t), cudaMemcpyHostToDevice, g->st), "the decode steps");
		CK(cudaMemcpyAsync(g->pos, g->h_pos, sizeof(int64_t), cudaMemcpyHostToDevice, g->st), "the decode steps");
		CK(cudaMemcpyAsync(g->d_cs, g->h_cs, sizeof *g->h_cs, cudaMemcpyHostToDevice, g->st), "the decode steps");
		for (size_t i = 0; i < m; i++)
			CK(cudaGraphLaunch(g->graph[am], g->st), "the decode steps");
		CK(cudaMemcpyAsync(g->h_ids, g->d_ids, m * sizeof(int32_t), cudaMemcpyDeviceToHost, g->st), "the decode steps");
		CK(cudaMemcpyAsync(g->h_cs, g->d_cs, sizeof *g->h_cs, cudaMemcpyDeviceToHost, g->st), "the decode steps");
		CK(cudaStreamSynchronize(g->st), "the decode steps");
		const size_t k = (size_t)g->h_cs->done;
		if (k > m)
			return gfail(err, LQ_ERR_IO, "the decode steps: %zu steps done of %zu", k, m);
		memcpy(ids, g->h_ids, k * sizeof(int32_t));
		if (rng)
			memcpy(rng, g->h_cs->rng, sizeof g->h_cs->rng);
		*done += k;
		if (k < m)
			return LQ_OK;
		token = ids[m - 1];
		pos += (int64_t)m;
		ids += m;
		n -= m;
	}
	return LQ_OK;
}

/* Greedy steps chained on the device (lq_backend's argmax_n). */
static int g_argmax_n(void *state, int32_t token, int64_t pos, size_t n, int32_t *ids, struct lq_error *err)
{
	size_t done = 0;
	int rc = chain_steps((gstate *)state, 3, token, pos, n, NULL, ids, &done, err);
	if (!rc && done != n)
		rc = gfail(err, LQ_ERR_IO, "the decode steps: %zu steps done of %zu", done, n);
	return rc;
}

/* lq_cuda_sample_all's scratch, made when first needed; *ok 0 where the
 * device cannot hold its grid at once (vocab <= LQ_CUDA_TOPK_NMAX). */
static int ensure_sample_all(gstate *g, bool *ok, struct lq_error *err)
{
	*ok = true;
	if (g->sa_scr)
		return LQ_OK;
	const size_t b = lq_cuda_sample_all_scratch_size(g->vocab);
	if (!b) {
		*ok = false;
		return LQ_OK;
	}
	int rc = dmalloc((void **)&g->sa_scr, b, "sampling", err);
	if (rc)
		return rc;
	CK(cudaMemset(g->sa_scr, 0, b), "clearing the sampler's scratch");
	return LQ_OK;
}

/* Sampling steps chained on the device (lq_backend's sample_n): graph [4]
 * takes the repetition penalty (on a map of the ids seen, which each step's
 * pick joins), then the argmax (temperature <= 0), the top-k and the draw
 * (lq_cuda_pick), or the whole row's pick (lq_cuda_sample_all). */
static int ensure_pen(gstate *g, size_t npen, struct lq_error *err);
static int g_sample_n(void *state, int32_t token, int64_t pos, size_t n, const struct lq_sample_opts *o,
		      const int32_t *seen, size_t nseen, uint64_t rng[4], int32_t *ids, size_t *done,
		      struct lq_error *err)
{
	gstate *g = (gstate *)state;
	int rc;
	*done = 0;
	if (g->vocab > LQ_CUDA_TOPK_NMAX)
		return LQ_OK; /* none done: the host takes the steps */
	if (o->temperature > 0 && !topk_set(o)) {
		bool dev;
		if ((rc = ensure_sample_all(g, &dev, err)))
			return rc;
		if (!dev)
			return LQ_OK; /* the device cannot hold the whole row's grid at once: the host takes the steps */
	}
	if (lq_sample_penalized(o)) {
		if (!g->d_seen && (rc = dmalloc((void **)&g->d_seen, (uint64_t)g->vocab, "the repetition penalty", err)))
			return rc;
		if ((rc = ensure_pen(g, nseen, err)))
			return rc;
		/* the previous call has completed: h_pen is free */
		CK(cudaMemsetAsync(g->d_seen, 0, (size_t)g->vocab, g->st), "the repetition penalty");
		if (nseen) {
			memcpy(g->h_pen, seen, nseen * sizeof(int32_t));
			CK(cudaMemcpyAsync(g->d_pen, g->h_pen, nseen * sizeof(int32_t), cudaMemcpyHostToDevice, g->st),
			   "the repetition penalty");
			k_seen_set<<<grid_for(nseen, 256), 256, 0, g->st>>>(g->d_seen, g->d_pen, nseen, (int64_t)g->vocab);
			CK(cudaGetLastError(), "the repetition penalty");
		}
	}
	g->so = *o;
	return chain_steps(g, 4, token, pos, n, o->temperature > 0 ? rng : NULL, ids, done, err);
}

/* Room for npen penalized ids (device and pinned host). */
static int ensure_pen(gstate *g, size_t npen, struct lq_error *err)
{
	if (npen <= g->pen_cap)
		return LQ_OK;
	size_t c = g->pen_cap ? g->pen_cap : 1024;
	while (c < npen)
		c *= 2;
	gfree(g->d_pen);
	if (g->h_pen)
		cudaFreeHost(g->h_pen);
	g->d_pen = g->h_pen = NULL;
	g->pen_cap = 0;
	int rc = dmalloc((void **)&g->d_pen, c * sizeof(int32_t), "the repetition penalty", err);
	if (rc)
		return rc;
	CK(cudaHostAlloc((void **)&g->h_pen, c * sizeof(int32_t), cudaHostAllocDefault), "pinned host memory");
	g->pen_cap = c;
	return LQ_OK;
}

/* forward, then lq_sample's whole pick on the device (struct lq_backend's
 * sample): the penalty, then the argmax, or the top-k set and its draw
 * (lq_cuda_pick), or the whole row's draw (lq_cuda_sample_all); the id and
 * the generator's state come back, or the row where the device stopped. */
static int g_sample(void *state, const int32_t *tokens, size_t n, int64_t pos, const struct lq_sample_opts *o,
		    const int32_t *pen, size_t npen, uint64_t rng[4], int32_t *id, int *made, float *logits,
		    struct lq_error *err)
{
	gstate *g = (gstate *)state;
	int rc;
	*made = 0;
	bool dev = o->temperature <= 0 || (rng && g->vocab <= LQ_CUDA_TOPK_NMAX);
	if (dev && o->temperature > 0 && !topk_set(o) && (rc = ensure_sample_all(g, &dev, err)))
		return rc;
	if ((rc = ensure_pen(g, npen, err)) || (rc = forward_dev(g, tokens, n, pos, 0, err)))
		return rc;
	if (npen) {
		/* the previous step has completed: h_pen is free */
		memcpy(g->h_pen, pen, npen * sizeof(int32_t));
		CK(cudaMemcpyAsync(g->d_pen, g->h_pen, npen * sizeof(int32_t), cudaMemcpyHostToDevice, g->st),
		   "the repetition penalty");
		CK((cudaError_t)lq_cuda_penalty(g->logits, g->d_pen, (int64_t)npen, (float)o->repetition_penalty, g->st),
		   "the repetition penalty");
	}
	if (o->temperature <= 0) {
		if ((rc = argmax_to_host(g, err)))
			return rc;
		CK(cudaStreamSynchronize(g->st), "the sampling step");
		*id = *g->h_id;
		*made = 1;
		return LQ_OK;
	}
	if (dev) {
		/* the draw from a copy of the generator's state (the previous step
		 * has completed: h_cs is free) */
		memset(g->h_cs, 0, sizeof *g->h_cs);
		memcpy(g->h_cs->rng, rng, sizeof g->h_cs->rng);
		CK(cudaMemcpyAsync(g->d_cs, g->h_cs, sizeof *g->h_cs, cudaMemcpyHostToDevice, g->st), "the sampling step");
		CK(launch_draw(g, o), "the sampling step");
		CK(cudaMemcpyAsync(g->h_id, g->d_id, sizeof(int32_t), cudaMemcpyDeviceToHost, g->st), "the sampling step");
		CK(cudaMemcpyAsync(g->h_cs, g->d_cs, sizeof *g->h_cs, cudaMemcpyDeviceToHost, g->st), "the sampling step");
		CK(cudaStreamSynchronize(g->st), "the sampling step");
		if (!g->h_cs->stop) {
			*id = *g->h_id;
			memcpy(rng, g->h_cs->rng, sizeof g->h_cs->rng);
			*made = 1;
			return LQ_OK;
		}
	}
	/* the whole row (after the penalty) for the host */
	CK(cudaMemcpyAsync(g->h_logits, g->logits, (size_t)g->vocab * sizeof(float), cudaMemcpyDeviceToHost, g->st),
	   "the logits");
	CK(cudaStreamSynchronize(g->st), "the sampling step");
	memcpy(logits, g->h_logits, (size_t)g->vocab * sizeof(float));
	return LQ_OK;
}

static int g_prepare(void **state, const struct lq_model *m, const struct lq_file *f, const struct lq_run_opts *o,
		     struct lq_error *err)
{
	*state = NULL;
	gstate *g = (gstate *)calloc(1, sizeof *g);
	if (!g)
		return gfail(err, LQ_ERR_NOMEM, "out of memory");
	g->m = m;
	g->f = f;
	g->c = lq_model_config(m);
	const struct lq_model_config *c = g->c;
	g->nl = c->num_layers;
	g->H = c->num_heads;
	g->KV = c->num_kv_heads;
	g->hd = c->head_dim;
	g->hidden = c->hidden_size;
	g->inter = c->intermediate_size;
	g->vocab = c->vocab_size;
	g->qdim = g->H * g->hd;
	g->kvdim = g->KV * g->hd;
	g->rot = c->rope.rotary_dim;
	g->max_ctx = o->max_ctx; /* resolved by lq_run_create */
	g->cd = o->compute;
	g->dev = o->device;
	g->inv_len = -1;
	int rc = LQ_OK;
	struct upload u;
	memset(&u, 0, sizeof u);
	u.g = g;
	cudaDeviceProp prop;
	if ((rc = lq_model_runtime_check(c, err)))
		goto fail;
	if (g->hd > 32 * ATT_MAXE || g->inter <= 0 || g->vocab > INT32_MAX || g->inter > INT32_MAX / 2) {
		rc = gfail(err, LQ_ERR_UNSUPPORTED, "model hyper-parameters out of range for the GPU runtime");
		goto fail;
	}
	g->embed_scale = c->embed_scale != 1.0 ? (g->cd == LQ_COMPUTE_F32 ? (float)sqrt((double)g->hidden)
									 : (float)c->embed_scale)
					       : 1.0f;
	{
		cudaError_t e;
		if ((e = cudaSetDevice(g->dev)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, g->dev)) != cudaSuccess ||
		    (e = cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking)) != cudaSuccess ||
		    (e = fa_prepare(g->hd, g->cd)) != cudaSuccess ||
		    (ta_ok(g->hd) && (e = cudaFuncSetAttribute(ta_kernel(g->hd, g->cd), cudaFuncAttributeMaxDynamicSharedMemorySize,
								(int)ta_smem(g->hd))) != cudaSuccess)) {
			rc = cuda_fail(err, e, "opening the GPU");
			goto fail;
		}
	}
	snprintf(g->desc, sizeof g->desc, "cuda:%d %s, %s", g->dev, prop.name, lq_compute_name(g->cd));
	g->pdl = pdl_image(prop.major);
	g->att_cl = att_cluster(prop.major, g->cd);
	if (cudaError_t e = att_long_prepare(g, prop.multiProcessorCount); e != cudaSuccess) {
		rc = cuda_fail(err, e, "opening the GPU");
		goto fail;
	}
	g->L = (glayer *)calloc((size_t)g->nl, sizeof *g->L);
	g->h_inv = (float *)calloc((size_t)(2 * g->rot + 2), sizeof(float));
	if (!g->L || !g->h_inv) {
		rc = gfail(err, LQ_ERR_NOMEM, "out of memory");
		goto fail;
	}
	/* cuBLAS (prefill) is opened and initialized now: it takes a while */
	if (cublas_open(&g->cb)) {
		if (g->cb.create(&g->cbh) != CUBLAS_STATUS_SUCCESS) {
			rc = gfail(err, LQ_ERR_IO, "cuBLAS initialization failed");
			goto fail;
		}
		g->cbh_ok = 1;
		g->cb.set_stream(g->cbh, g->st);
	}
	/* pass 1: sizes and checks; then one allocation; pass 2: upload */
	u.counting = 1;
	if ((rc = load_all(&u, err)))
		goto fail;
	{
		size_t fr = 0, tot = 0;
		cudaMemGetInfo(&fr, &tot);
		g->arena_size = g->arena_used;
		if (g->arena_size + g->tscratch_need > fr) {
			rc = gfail(err, LQ_ERR_NOMEM,
				   "the model needs %.0f MiB of GPU memory for its weights (%.0f MiB more while uploading them); "
				   "%.0f MiB of %.0f MiB are free on %s",
				   g->arena_size / 1048576.0, g->tscratch_need / 1048576.0, fr / 1048576.0, tot / 1048576.0, g->desc);
			goto fail;
		}
		if ((rc = dmalloc((void **)&g->arena, g->arena_size, "the weights", err)) ||
		    (g->tscratch_need && (rc = dmalloc((void **)&g->tscratch, g->tscratch_need, "re-laying out the weights", err))))
			goto fail;
	}
	u.counting = 0;
	warm_start(g);
	{
		/* without helper threads (none could start) the copy is the caller's */
		struct lq_error perr;
		if (lq_pool_create(&u.pool, o->nthreads < UPLOAD_THREADS ? o->nthreads : UPLOAD_THREADS, &perr))
			u.pool = NULL;
	}
	for (int i = 0; i < 2; i++) {
		cudaError_t e = cudaHostAlloc((void **)&u.stage[i], STAGE_BYTES, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaEventCreateWithFlags(&u.ev[i], cudaEventDisableTiming);
		if (e == cudaSuccess)
			e = cudaEventRecord(u.ev[i], g->st);
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "the upload buffers");
			goto fail;
		}
	}
	if ((rc = load_all(&u, err)))
		goto fail;
	{
		cudaError_t e = cudaStreamSynchronize(g->st);
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "the weight upload");
			goto fail;
		}
		gfree(g->tscratch);
		g->tscratch = NULL;
	}
	warm_join(g);
	g->fuse = fusable(g);
	for (int64_t i = 0; g->fuse && g->c->fused_gate_up && i < g->nl; i++) {
		glayer *l = &g->L[i];
		l->gu_views = split_gate_up(&l->gate_up, (uint64_t)g->inter, &l->gate, &l->up);
	}
	{
		uint64_t N = CHUNK, F = (uint64_t)(g->qdim + 2 * g->kvdim), D = (uint64_t)g->hidden,
			 I = (uint64_t)g->inter, wide = F > 2 * I ? F : 2 * I;
		uint64_t xb = wide > D ? wide : D;
		if (xb < (uint64_t)g->qdim)
			xb = (uint64_t)g->qdim;
		if ((rc = dmalloc((void **)&g->x, N * D * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->x2, D * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->h, N * D * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->o, N * (D > (uint64_t)g->kvdim ? D : (uint64_t)g->kvdim) * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->qkv, N * F * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->att, N * (uint64_t)g->qdim * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->gu, N * wide * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->g, N * I * 4, "activations", err)) ||
		    (rc = dmalloc((void **)&g->part, (uint64_t)g->H * ATT_MAXSPLIT * (g->hd + 2) * 4, "attention", err)) ||
		    (rc = dmalloc((void **)&g->acnt, (uint64_t)(g->H + 1) * 4, "attention", err)) ||
		    (rc = dmalloc((void **)&g->am_v, ARGMAX_BLOCKS * 4, "the argmax", err)) ||
		    (rc = dmalloc((void **)&g->am_i, ARGMAX_BLOCKS * 8, "the argmax", err)) ||
		    (rc = dmalloc((void **)&g->logits, N * (uint64_t)g->vocab * 4, "the logits", err)) ||
		    (rc = dmalloc((void **)&g->xbuf, N * xb * 2, "activations", err)) ||
		    (rc = dmalloc((void **)&g->inv_freq, (uint64_t)(g->rot / 2 + 1) * 4, "RoPE", err)) ||
		    (rc = dmalloc((void **)&g->rtab, (uint64_t)(g->rot + 2) * 4, "RoPE", err)) ||
		    (rc = dmalloc((void **)&g->tok, N * 4, "the tokens", err)) ||
		    (rc = dmalloc((void **)&g->pos, 8, "the position", err)) ||
		    (rc = dmalloc((void **)&g->d_id, 4, "the argmax", err)) ||
		    (rc = dmalloc((void **)&g->d_ids, CHAIN_MAX * 4, "the argmax", err)) ||
		    (rc = dmalloc((void **)&g->d_cs, sizeof *g->d_cs, "the argmax", err)) ||
		    (rc = dmalloc((void **)&g->tk_scr, lq_cuda_topk_scratch_size(g->vocab), "sampling", err)) ||
		    (rc = dmalloc((void **)&g->d_tk, sizeof *g->d_tk, "sampling", err)))
			goto fail;
		cudaError_t e = cudaMemset(g->acnt, 0, (size_t)(g->H + 1) * 4);
		if (e == cudaSuccess)
			e = cudaMemset(g->tk_scr, 0, lq_cuda_topk_scratch_size(g->vocab));
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "clearing the attention and sampling counters");
			goto fail;
		}
		e = cudaHostAlloc((void **)&g->h_tok, 4, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&g->h_pos, 8, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&g->h_logits, (size_t)g->vocab * 4, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&g->h_id, 4, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&g->h_ids, CHAIN_MAX * 4, cudaHostAllocDefault);
		if (e == cudaSuccess)
			e = cudaHostAlloc((void **)&g->h_cs, sizeof *g->h_cs, cudaHostAllocDefault);
		if (e != cudaSuccess) {
			rc = cuda_fail(err, e, "pinned host memory");
			goto fail;
		}
	}
	for (int i = 0; i < 2; i++) {
		cudaFreeHost(u.stage[i]);
		cudaEventDestroy(u.ev[i]);
	}
	lq_pool_free(u.pool);
	*state = g;
	return LQ_OK;
fail:
	cudaStreamSynchronize(g->st);
	for (int i = 0; i < 2; i++) {
		if (u.stage[i])
			cudaFreeHost(u.stage[i]);
		if (u.ev[i])
			cudaEventDestroy(u.ev[i]);
	}
	lq_pool_free(u.pool);
	g_free(g);
	return rc;
}

static const char *g_describe(void *state)
{
	return ((gstate *)state)->desc;
}

static const struct lq_backend cuda_backend = { "cuda",   g_prepare, g_forward, g_free,
						 g_describe, g_argmax,  g_sample,  g_argmax_n, g_sample_n };

/* The current device's compute capability major (0 on failure). */
static int cur_major(void)
{
	int dev = 0, major = 0;
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return major;
}

extern "C" int lq_cuda_attn_cluster(int compute) { return att_cluster(cur_major(), compute); }
extern "C" int lq_cuda_attn_long(int compute, int64_t head_dim, int64_t cap)
{
	return att_long_of(compute, cap, head_dim, NULL);
}

extern "C" int lq_cuda_attn_gqa(int compute, int64_t head_dim, int64_t group, int64_t kv, int64_t cap)
{
	int dev = 0, nsm = 0, slots = 0;
	if (!att_gqa_of(compute, cap, head_dim, group))
		return 0;
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
	    att_gqa_slots_of(head_dim, compute, nsm, &slots) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return att_gqa_takes(compute, cap, head_dim, group, kv, slots);
}

extern "C" int lq_cuda_pdl(void) { return pdl_image(cur_major()); }

extern "C" const struct lq_backend *lq_backend_cuda(void)
{
	return &cuda_backend;
}

extern "C" int lq_gpu_count(void)
{
	return lq_cuda_device_count();
}
