/*
 * lq_cuda.h - the CUDA side of libquant (built when nvcc is found).
 *
 * Kernels read the LQ block layout of libquant/lq_blocks.h (packed codes,
 * uint8 or fp32 scales, nested scales) as stored, except the tensor-core
 * GEMV, which reads 4-bit weights in the GPU tile layout that
 * formats/LQ-FORMAT.md specifies (lq_cuda_tile makes it on the device).
 * All pointers named d_* are device pointers.  Functions return 0 or a
 * cudaError_t value; lq_cuda_strerror names it.
 */
#ifndef LQ_CUDA_H
#define LQ_CUDA_H

#include "libquant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices (0 when there is no driver or no GPU). */
int lq_cuda_device_count(void);
const char *lq_cuda_strerror(int err);

/* A quantized weight on the device. */
struct lq_cuda_qweight {
	struct lq_qparams p;
	const uint8_t *d_data;  /* packed codes (4-bit) or int8 values */
	const void *d_scales;   /* float absmax[nb] or uint8 codes[nb] (double quant) */
	const float *d_nested;  /* float[ceil(nb/256)] with double quant */
	float offset;           /* double-quant offset */
	uint64_t n;             /* elements */
	int layout;             /* LQ_CUDA_ROWS (as stored) or LQ_CUDA_TILES; see below */
};
#define LQ_CUDA_ROWS 0
#define LQ_CUDA_TILES 1
/* Unquantized weights (p.qtype LQ_QTYPE_NONE, no scales): row-major bf16 or
 * fp16 values in d_data, taken only by the tensor-core GEMV in the 16-bit
 * mode of their type (LQ_GEMV_BF16 / LQ_GEMV_F16, lq_cuda_gemv_tc). */
#define LQ_CUDA_DENSE_BF16 2
#define LQ_CUDA_DENSE_F16 3
static inline int lq_cuda_dense(int layout)
{
	return layout == LQ_CUDA_DENSE_BF16 || layout == LQ_CUDA_DENSE_F16;
}

/*
 * The GPU tile layout (formats/LQ-FORMAT.md) of a 4-bit [N, K] weight.
 * lq_cuda_tiles_ok: 1 when the tensor-core GEMV takes such a weight on the
 * current device (NF4/FP4, block size >= 64, K % 128 == 0, K within its
 * shared memory), else 0.  lq_cuda_tiles_size: the bytes of the tiled codes
 * and scales (rows padded to a multiple of 16).  lq_cuda_tile: re-lay out
 * the row-major weight w (layout LQ_CUDA_ROWS) into d_data and d_scales
 * (device buffers of those sizes, not overlapping w's parts) on `stream`,
 * and describe the result in *out (layout LQ_CUDA_TILES; nested scales and
 * offset are w's).  cudaErrorInvalidValue when the weight does not qualify.
 */
int lq_cuda_tiles_ok(const struct lq_qparams *p, uint64_t N, uint64_t K);
/* 1 when the tensor-core GEMV (and so lq_cuda_gemv_fused) takes the weight w
 * of K columns as it is laid out, on the current device, in mode
 * (LQ_GEMV_BF16 or LQ_GEMV_F16): 4-bit weights in the tile layout, INT8
 * weights as stored (block size >= 64, K % 64 == 0), 16-bit ones
 * (LQ_CUDA_DENSE_*, K % 32 == 0) in the mode of their type, K within its
 * shared memory; else 0. */
int lq_cuda_gemv_tc(const struct lq_cuda_qweight *w, uint64_t K, int mode);
void lq_cuda_tiles_size(const struct lq_qparams *p, uint64_t N, uint64_t K, uint64_t *data_bytes,
			uint64_t *scale_bytes);
int lq_cuda_tile(const struct lq_cuda_qweight *w, uint64_t K, void *d_data, void *d_scales,
		 struct lq_cuda_qweight *out, void *stream);

/*
 * Dequantize (layout LQ_CUDA_ROWS) to float32: d_out[i] = table[code_i] * scale(block of i), with
 * the scale rebuilt as map[u8] * nested[b >> 8] + offset under double quant,
 * rounded exactly as lq_dequantize_ref (bit-identical results).
 */
int lq_cuda_dequant_f32(const struct lq_cuda_qweight *w, float *d_out, void *stream);

/*
 * y[N] = W[N,K] x[K] for a row-major quantized W (batch-1 GEMV), float32
 * activations, float32 accumulation.  Requires K % block_size == 0 (blocks
 * do not span rows).
 */
int lq_cuda_gemv_f32(const struct lq_cuda_qweight *w, uint64_t N, uint64_t K,
		     const float *d_x, float *d_y, void *stream);

/*
 * Fast batch-1 dequant-GEMV (gpu/gemv.cu): y[N] = W[N,K] x[K] for a
 * row-major quantized W in the LQ layout (NF4/FP4, with or without double
 * quant, or INT8), activations d_x of x_dtype LQ_DTYPE_BF16 or LQ_DTYPE_F32,
 * fp32 accumulation, fp32 output d_y[N] (caller-owned device memory).
 * Requirements, else cudaErrorInvalidValue and nothing is launched:
 * K % block_size == 0 (a quantization block never spans two rows; such
 * tensors must use lq_cuda_gemv_f32 or be re-blocked), N * K == w->n,
 * d_data and d_x 16-byte aligned (cudaMalloc memory is).  4-bit code values
 * are used rounded to bf16 (relative error <= 2^-9 per weight before the
 * fp32 block scale); INT8 codes are exact.  May clear d_y with
 * cudaMemsetAsync on `stream` (split-K); safe under CUDA graph capture.
 * Weights in the tile layout go through the tensor-core kernel (bf16
 * activations, or LQ_GEMV_BF16 / LQ_GEMV_F16 below), and so do INT8 weights
 * as stored (lq_cuda_gemv_tc); other row-major weights through the
 * CUDA-core kernel.
 */
int lq_cuda_gemv(const struct lq_cuda_qweight *w, uint64_t N, uint64_t K, const void *d_x,
		 int x_dtype, float *d_y, void *stream);
/*
 * Several GEMVs over the same activations in one launch (q, k and v; gate
 * and up): y_i = W_i x for n <= LQ_GEMV_PARTS weights of the same K, qtype,
 * block size and double quant (else cudaErrorInvalidValue).  mode says what
 * the float32 activations hold and how the codes are used:
 *   LQ_GEMV_F32    any float32 values; 4-bit codes as bf16 (lq_cuda_gemv)
 *   LQ_GEMV_EXACT  float32 values and the exact float32 code values (the
 *                  CPU runtime's numbers up to the order of the sums):
 *                  --compute-dtype fp32
 *   LQ_GEMV_BF16   values representable in bf16 (--compute-dtype bf16):
 *                  4-bit weights in the tile layout go through the tensor
 *                  cores as bf16 (row-major ones as LQ_GEMV_F32); INT8
 *                  weights (exact fp16 integers) with x as fp16 scaled by
 *                  a power of two (exact for bf16 values down to 2^-32 of
 *                  the largest; under 2^-39 of it off for smaller ones)
 *   LQ_GEMV_F16    values representable in fp16: the same with fp16 codes
 *                  (relative error <= 2^-11 per weight)
 * Tiled weights take only LQ_GEMV_BF16 / LQ_GEMV_F16 (or bf16 x), all
 * parts the same layout (else cudaErrorInvalidValue).
 * A value that is not representable is rounded to nearest.  x_dtype
 * LQ_DTYPE_BF16 (activations stored as bf16) implies LQ_GEMV_BF16.
 * Launched with programmatic dependent launch on sm_90, so that the
 * kernel's set-up overlaps the previous kernel.
 */
#define LQ_GEMV_PARTS 3
#define LQ_GEMV_F32 0
#define LQ_GEMV_EXACT 1
#define LQ_GEMV_BF16 2
#define LQ_GEMV_F16 3
int lq_cuda_gemv_multi(const struct lq_cuda_qweight *const *ws, float *const *ys, int n, uint64_t K,
		       const void *d_x, int x_dtype, int mode, void *stream);
/*
 * lq_cuda_gemv_multi for tiled weights (LQ_GEMV_BF16 / LQ_GEMV_F16, float32
 * d_x) with what the runtime's decode step fuses into it:
 *   norm_w != NULL  the input is RMSNorm(x): x / sqrt(mean(x^2) + eps)
 *                   times norm_w (times 1 + norm_w with plus_one), rounded
 *                   to the mode's dtype -- every block computes it from x
 *                   (norm_w 16-byte aligned, K elements)
 *   add_out         y_i += W_i x (the residual add; y_i is read and written
 *                   by one thread per row) instead of y_i = W_i x
 *   act_out != NULL two parts of the same rows, gate and up (ys unused):
 *                   act_out[r] = act(gate_r) * up_r rounded to the mode's
 *                   dtype (the gated MLP activation, LQ_ACT_* act); a block
 *                   takes tile t of both, so the pair meets in its shared
 *                   memory (not with add_out)
 *   pre_add != NULL with norm_w: Gemma 2's sandwich norm of the previous
 *                   sublayer folded in.  x is first replaced by
 *                   x' = x + RMSNorm(pre_add) times pre_w (the same eps and
 *                   plus_one; float32, not rounded, as k_rmsnorm adds it to
 *                   the residual stream), and the input is RMSNorm(x') with
 *                   norm_w; one block stores x' to x_out (K floats, not x
 *                   or pre_add), the new residual stream
 * cudaErrorInvalidValue for weights lq_cuda_gemv_tc does not take, or a
 * NULL f.
 */
struct lq_gemv_fuse {
	const float *norm_w;
	float eps;
	int plus_one;
	int add_out;
	float *act_out; /* see below */
	int act;        /* LQ_ACT_* */
	const float *pre_add, *pre_w; /* see above; these two and x_out 16-byte aligned */
	float *x_out;
};
#define LQ_GEMV_NORM_PLUS_ONE 1
#define LQ_GEMV_ADD_OUT 2
int lq_cuda_gemv_fused(const struct lq_cuda_qweight *const *ws, float *const *ys, int n, uint64_t K,
		       const float *d_x, int mode, const struct lq_gemv_fuse *f, void *stream);
/*
 * lq_cuda_gemv with tuning knobs for benchmarks: rows per block (0 = auto,
 * else 1, 2, 4 or 8), grid_max (0 = all resident blocks) and ksplit_max
 * (0 = auto) cap the grid.  rows and ksplit_max apply to the CUDA-core
 * kernel (row-major weights) and must be 0 for tiled ones.
 */
int lq_cuda_gemv_ex(const struct lq_cuda_qweight *w, uint64_t N, uint64_t K, const void *d_x,
		    int x_dtype, float *d_y, void *stream, int rows, int grid_max, int ksplit_max);

/*
 * lq_sample's first steps on the device (gpu/sample.cu).
 * lq_cuda_penalty: the repetition penalty on d_logits[d_ids[i]] for
 * i < nids (distinct ids): s < 0 ? s * penalty : s / penalty.
 * lq_cuda_topk: the tokens lq_sample's top-k filter keeps from
 * d_logits[0..n) / temperature (k in 1..LQ_CUDA_TOPK_MAX, temperature > 0,
 * n <= LQ_CUDA_TOPK_NMAX; else cudaErrorInvalidValue):
 * every token whose scaled logit is >= the k-th largest (all of them when
 * k >= n), its scaled logit in vals, its id in ids, in no particular order;
 * count -1 when there are more than LQ_CUDA_TOPK_MAX or a scaled logit is
 * NaN.  d_scratch: lq_cuda_topk_scratch_size(n) bytes (or more), zeroed before
 * the first call (calls leave it so); one call at a time per scratch.
 */
#define LQ_CUDA_TOPK_MAX LQ_RUN_TOPK_MAX /* lq_run.h */
#define LQ_CUDA_TOPK_NMAX (1 << 20)
struct lq_cuda_topk_out {
	int32_t count;
	int32_t pad[3];
	float vals[LQ_CUDA_TOPK_MAX];
	int32_t ids[LQ_CUDA_TOPK_MAX];
};
/*
 * lq_cuda_pick: lq_sample_kept's draw from d_tk's set, on the device (one
 * block): the kept tokens sorted as the host sorts them, their
 * probabilities, top_p and min_p as lq_sample's, one draw from the
 * xoshiro256** state d_rng[4] (advanced as lq_rng_uniform advances struct
 * lq_rng's), the id into *d_id.  Nothing happens when *d_stop is set; a set
 * the top-k filter could not make (count -1) sets *d_stop and leaves d_rng
 * and *d_id as they were.
 */
int lq_cuda_pick(const struct lq_cuda_topk_out *d_tk, double top_p, double min_p, uint64_t *d_rng, int *d_stop,
		 int32_t *d_id, void *stream);
/*
 * What the decode runtime (gpu/backend.cu) uses on the current device, for
 * the GPU tests: lq_cuda_attn_cluster, the most splits of decode attention
 * that merge as one thread-block cluster at compute dtype `compute`
 * (LQ_COMPUTE_*; 0: none, the global merge); lq_cuda_pdl, 1 when kernels
 * are launched with programmatic dependent launch.  Both need a device that
 * runs the build's sm_90 code.
 */
int lq_cuda_attn_cluster(int compute);
/* log2 of k_attn_long's lanes per key for a cache of cap positions, 0
 * where decode attention runs k_attn */
int lq_cuda_attn_long(int compute, int64_t head_dim, int64_t cap);
/* 1 where that decode attention is k_attn_gqa (a block per KV head on the
 * tensor cores, then k_attn_merge) on the current device, for kv KV heads
 * of group query heads each */
int lq_cuda_attn_gqa(int compute, int64_t head_dim, int64_t group, int64_t kv, int64_t cap);
int lq_cuda_pdl(void);
#ifndef ATT_CLUSTER
#define ATT_CLUSTER 16 /* sm_90: up to this many splits are one thread-block cluster (0: never) */
#endif
/* Decode attention over a cache of at least ATT_LONG_MIN positions runs
 * k_attn_long (several keys per warp and round trip), with
 * ATT_LONG_KEYS positions per split; the GPU tests decode in such a cache. */
#ifndef ATT_LONG_MIN
#define ATT_LONG_MIN 1024
#endif
#ifndef ATT_LONG_KEYS
#define ATT_LONG_KEYS 64
#endif
/* From a cache of ATT_GQA_MIN positions, decode attention of 16-bit caches
 * with 2 to 8 query heads per KV head (head size 64 or 128) runs k_attn_gqa
 * instead: each row is read once per KV head, but the splits are fewer and
 * each block's chain is longer.  H200, 8B NF4, ms/token (BENCHMARKS.md):
 * behind k_attn_long after 1500 tokens (2.41 against 2.13), even at 2000
 * and 3000, ahead after 4000 (2.34 against 2.38) and 16000 (2.71 against
 * 3.14).  The cache grows in powers of two, so run takes it past 2048
 * positions; the GPU tests decode in a cache of this size.  Only where its
 * grid fills the device (enough KV heads: the H200 needs 5 at head size
 * 128, 7 at 64) or a layer's K and V reach ATT_GQA_BYTES (att_gqa_pays). */
#ifndef ATT_GQA_MIN
#define ATT_GQA_MIN 3072
#endif
#ifndef ATT_GQA_BYTES
#define ATT_GQA_BYTES ((int64_t)12 << 20) /* between the H200's 7.9 and 15.7 MiB (att_gqa_pays) */
#endif

/*
 * lq_cuda_sample_all: the whole of lq_sample after the penalty on the device
 * for any top_k (0: off; ties with the k-th value kept), for the options
 * lq_cuda_topk cannot serve: the pick of lq_blocks.h's fixed point over the
 * row d_logits[0..n) / temperature in the host's order, found by radix
 * descents over the values without sorting the row (one cooperative
 * launch; gpu/sample.cu), one draw from d_rng (advanced), the id into
 * *d_id.  Nothing happens when *d_stop is set; a NaN scaled logit sets
 * *d_stop (the host takes the step) and leaves d_rng and *d_id.
 * d_scratch: lq_cuda_sample_all_scratch_size(n) bytes (0: n out of range,
 * no device, or a device that cannot hold the launch's grid at once),
 * zeroed before the first call; one call at a time per scratch.
 * n <= LQ_CUDA_TOPK_NMAX, temperature > 0.
 */
size_t lq_cuda_sample_all_scratch_size(int64_t n);
int lq_cuda_sample_all(const float *d_logits, int64_t n, float temperature, int top_k, double top_p, double min_p,
		       uint64_t *d_rng, int *d_stop, int32_t *d_id, void *d_scratch, void *stream);
size_t lq_cuda_topk_scratch_size(int64_t n);
int lq_cuda_topk(const float *d_logits, int64_t n, float temperature, int k, void *d_scratch,
		 struct lq_cuda_topk_out *d_out, void *stream);
int lq_cuda_penalty(float *d_logits, const int32_t *d_ids, int64_t nids, float penalty, void *stream);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>

/* log2 of a block size (a power of two): element i lies in block i >> it. */
static inline int lq_cuda_bshift(int bs)
{
	int s = 0;
	while ((1 << s) < bs)
		s++;
	return s;
}

/* 1 when the device runs kernel `kern` from sm_90 code, the only code that
 * has the clusters' and programmatic dependent launch's instructions: an
 * sm_90 device runs the sm_90a image (binary version 90); a newer GPU
 * JIT-compiles the portable compute_80 PTX, which has neither. */
static inline int lq_cuda_sm90_code(const void *kern)
{
	cudaFuncAttributes a;
	int ok = cudaFuncGetAttributes(&a, kern) == cudaSuccess && (a.ptxVersion >= 90 || a.binaryVersion == 90);
	cudaGetLastError();
	return ok;
}

/* Blocks of 256 threads for a grid-stride loop over n items: one item per
 * thread, at most 65535 * 8 blocks, at least one. */
static inline unsigned lq_cuda_grid256(uint64_t n)
{
	uint64_t b = (n + 255) / 256;
	return b > 65535 * 8 ? 65535 * 8 : b ? (unsigned)b : 1u;
}

/* Two floats as the bf16 (fp16 with F16) pair of an mma operand register,
 * rounded to nearest even; lo in the low half. */
template <bool F16>
static __device__ __forceinline__ uint32_t lq_pack16(float lo, float hi)
{
	if (F16) {
		__half2 v = __floats2half2_rn(lo, hi);
		return *(uint32_t *)&v;
	}
	__nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
	return *(uint32_t *)&v;
}

/* d += A B for one m16n8k16 tile, bf16 (fp16) operands, fp32 accumulation
 * (sm_80 and later). */
template <bool F16>
static __device__ __forceinline__ void lq_mma16816(float *d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
						   uint32_t b0, uint32_t b1)
{
	if (F16)
		asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
		    "{%0,%1,%2,%3};"
		    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		    : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
	else
		asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
		    "{%0,%1,%2,%3};"
		    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
		    : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* A double-quant block scale from the dynamic-map value of its u8 code, its
 * nested scale and the offset, with lq_dequantize_ref's two float32
 * roundings (no FMA).  Every kernel that rebuilds scales uses this. */
static __device__ __forceinline__ float lq_dq_scale(float mapped, float nested, float offset)
{
	return __fadd_rn(__fmul_rn(mapped, nested), offset);
}

/* Until phase 0 of the shared-memory mbarrier at bar has completed (sm_90;
 * nothing before): k_attn's cluster gather. */
static __device__ __forceinline__ void lq_mbar_wait0(uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
	const uint32_t b = (uint32_t)__cvta_generic_to_shared(bar);
	uint32_t done = 0;
	while (!done)
		asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n\t"
			     "selp.u32 %0, 1, 0, p;\n\t}"
			     : "=r"(done)
			     : "r"(b)
			     : "memory");
#endif
}

#ifdef TC_TRACE
/* Diagnostic builds only (make GPU_TRACE=1): the %globaltimer and %smid the
 * decode kernels record, and the writer of a recorded table (gemv.cu): at exit,
 * hb header bytes then the bytes of d_table to the file named by $env
 * (nothing without it).  tests/gpu_trace.py reads the files. */
static __device__ __forceinline__ unsigned long long lq_globaltimer(void)
{
	unsigned long long t;
	asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
	return t;
}
/* the multiprocessor the calling thread runs on */
static __device__ __forceinline__ unsigned lq_smid(void)
{
	unsigned s;
	asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
	return s;
}
void lq_cuda_trace_write(const char *env, const void *hdr, size_t hb, const void *d_table, size_t bytes);
#endif
#endif

#endif
