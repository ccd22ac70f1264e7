/*
 * gen_rcp.cu - dump where CUDA's fast-math reciprocal (what bitsandbytes,
 * built with --use_fast_math, computes for 1.0f/absmax) differs from the
 * correctly rounded one, for every float32 mantissa.  Not part of the build;
 * run on a GPU machine:  nvcc -O2 --use_fast_math -o gen_rcp gen_rcp.cu && ./gen_rcp > rcp_diff.txt
 * Output: one line "mantissa delta" (hex mantissa, approx bits - exact bits)
 * per differing mantissa, for x in [1, 2) and for x in [2, 4) (exponent check),
 * then a summary line.
 */
#include <cstdio>
#include <cstdint>

__global__ void k(uint32_t expbits, int32_t *delta)
{
	uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (1u << 23))
		return;
	float x = __uint_as_float(expbits | i);
	volatile float one = 1.0f;
	float a = one / x;          /* fast math: rcp.approx */
	float e = __frcp_rn(x);     /* correctly rounded */
	delta[i] = (int32_t)(__float_as_uint(a) - __float_as_uint(e));
}

int main()
{
	int32_t *d, *h = new int32_t[1u << 23], *h0 = new int32_t[1u << 23];
	long same_as_first[3] = {0, 0, 0};
	cudaMalloc(&d, sizeof(int32_t) << 23);
	uint32_t exps[] = {0x3f800000u, 0x40000000u, 0x3c000000u};
	long counts[3] = {0, 0, 0};
	for (int e = 0; e < 3; e++) {
		k<<<(1u << 23) / 256, 256>>>(exps[e], d);
		cudaMemcpy(h, d, sizeof(int32_t) << 23, cudaMemcpyDeviceToHost);
		for (uint32_t i = 0; i < (1u << 23); i++) {
			if (e == 0)
				h0[i] = h[i];
			same_as_first[e] += h[i] == h0[i];
		}
		for (uint32_t i = 0; i < (1u << 23); i++)
			if (h[i]) {
				counts[e]++;
				if (e == 0)
					printf("%06x %d\n", i, h[i]);
			}
	}
	fprintf(stderr, "differences: [1,2) %ld, [2,4) %ld, [2^-7,2^-6) %ld of %u; identical to [1,2): %ld %ld\n",
		counts[0], counts[1], counts[2], 1u << 23, same_as_first[1], same_as_first[2]);
	printf("# differences: [1,2) %ld, [2,4) %ld, [2^-7,2^-6) %ld of %u\n", counts[0], counts[1], counts[2], 1u << 23);
	return 0;
}
