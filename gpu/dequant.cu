/* dequant.cu - dequantization and a batch-1 GEMV over the LQ block layout. */
#include "lq_cuda.h"
#include "lq_blocks.h"

#include <cuda_runtime.h>

__constant__ uint32_t c_nf4[16] = LQ_NF4_BITS_INIT;
__constant__ uint32_t c_fp4[16] = LQ_FP4_BITS_INIT;
__constant__ uint32_t c_dyn[256] = LQ_DYNMAP_BITS_INIT;

extern "C" int lq_cuda_device_count(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return n;
}

extern "C" const char *lq_cuda_strerror(int err) { return cudaGetErrorString((cudaError_t)err); }

/* The scale of block b, with the reference's float32 rounding (no FMA). */
__device__ __forceinline__ float block_scale(const void *scales, const float *nested, float offset, int dq,
					     uint64_t b)
{
	if (!dq)
		return ((const float *)scales)[b];
	return lq_dq_scale(__uint_as_float(c_dyn[((const uint8_t *)scales)[b]]), nested[b >> LQ_QNESTED_SHIFT], offset);
}

__device__ __forceinline__ float code_value(int qtype, int code)
{
	return __uint_as_float(qtype == LQ_QTYPE_NF4 ? c_nf4[code] : c_fp4[code]);
}

__global__ void k_dequant(int qtype, int dq, int bshift, const uint8_t *data, const void *scales,
			  const float *nested, float offset, uint64_t n, float *out)
{
	uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
	for (; i < n; i += stride) {
		float s = block_scale(scales, nested, offset, dq, i >> bshift);
		float v;
		if (qtype == LQ_QTYPE_INT8) {
			v = __fmul_rn((float)(int8_t)data[i], __fmul_rn(s, 1.0f / 127.0f));
		} else {
			uint8_t byte = data[i >> 1];
			v = __fmul_rn(code_value(qtype, (i & 1) ? (byte & 15) : (byte >> 4)), s);
		}
		out[i] = v;
	}
}

extern "C" int lq_cuda_dequant_f32(const struct lq_cuda_qweight *w, float *d_out, void *stream)
{
	if (w->layout != LQ_CUDA_ROWS)
		return (int)cudaErrorInvalidValue;
	k_dequant<<<lq_cuda_grid256(w->n), 256, 0, (cudaStream_t)stream>>>(w->p.qtype, w->p.double_quant, lq_cuda_bshift(w->p.block_size),
							   w->d_data, w->d_scales, w->d_nested, w->offset, w->n, d_out);
	return (int)cudaGetLastError();
}

/* One warp per output row; each lane walks the row's blocks in steps of 32
 * elements, float32 accumulation, shuffle reduction. */
__global__ void k_gemv(int qtype, int dq, int bshift, const uint8_t *data, const void *scales,
		       const float *nested, float offset, uint64_t N, uint64_t K, const float *x, float *y)
{
	uint64_t row = (uint64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	int lane = threadIdx.x & 31;
	if (row >= N)
		return;
	float acc = 0.0f;
	uint64_t base = row * K;
	for (uint64_t k = lane; k < K; k += 32) {
		uint64_t i = base + k;
		float s = block_scale(scales, nested, offset, dq, i >> bshift);
		float v;
		if (qtype == LQ_QTYPE_INT8) {
			v = (float)(int8_t)data[i] * (s * (1.0f / 127.0f));
		} else {
			uint8_t byte = data[i >> 1];
			v = code_value(qtype, (i & 1) ? (byte & 15) : (byte >> 4)) * s;
		}
		acc = fmaf(v, x[k], acc);
	}
	for (int o = 16; o; o >>= 1)
		acc += __shfl_down_sync(0xffffffffu, acc, o);
	if (lane == 0)
		y[row] = acc;
}

extern "C" int lq_cuda_gemv_f32(const struct lq_cuda_qweight *w, uint64_t N, uint64_t K, const float *d_x,
				float *d_y, void *stream)
{
	if (K % (uint64_t)w->p.block_size || N * K != w->n || w->layout != LQ_CUDA_ROWS)
		return (int)cudaErrorInvalidValue;
	unsigned grid = (unsigned)((N + 7) / 8);
	k_gemv<<<grid, 256, 0, (cudaStream_t)stream>>>(w->p.qtype, w->p.double_quant, lq_cuda_bshift(w->p.block_size),
							w->d_data, w->d_scales, w->d_nested, w->offset, N, K, d_x, d_y);
	return (int)cudaGetLastError();
}
