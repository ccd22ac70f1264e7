/*
 * lq_cuda.h - the CUDA side of libquant (built when nvcc is found).
 *
 * Kernels read the LQ block layout of libquant/lq_blocks.h directly (packed
 * codes, uint8 or fp32 scales, nested scales): no re-layout at load time.
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
};

/*
 * Dequantize to float32: d_out[i] = table[code_i] * scale(block of i), with
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

#ifdef __cplusplus
}
#endif

#endif
