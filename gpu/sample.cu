/*
 * sample.cu - lq_sample's first steps on the device, for
 * lq_run_forward_sample: the repetition penalty, and the top-k filter (ties
 * with the k-th value kept) after the temperature, so that only the kept
 * tokens travel back to the host, where lq_sample_kept finishes the draw.
 *
 * Exactness: each value is computed with the host's single-precision
 * operations (s * p or s / p for the penalty, l / T for the temperature,
 * round-to-nearest, no contraction), and the kept set is defined by float
 * comparisons against the k-th value as lq_sample's is, so the set and the
 * values are those of the host.
 *
 * The top-k filter is a radix select (four 8-bit passes over an orderable
 * key of each float): each block selects the tokens of its chunk that are
 * not below its chunk's k-th value (a superset of its share of the global
 * set: a token at or above the global k-th value has fewer than k tokens
 * above it in its chunk too), the last block to finish selects again over
 * the union.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "lq_cuda.h"
#include "lq_blocks.h"

#include <cuda_runtime.h>
#include <math.h>

#define TK_THREADS 512
#define TK_WARPS (TK_THREADS / 32)
#define TK_CHUNK 4096 /* logits per block, at most (in shared memory) */
#define TK_MAXB 256   /* blocks: n <= LQ_CUDA_TOPK_NMAX */
#define TK_CAP LQ_CUDA_TOPK_MAX

/* scratch: counter (16 bytes), per-block counts, then four arrays of
 * n + TK_MAXB entries: the blocks' candidates (values, ids; block b's at
 * b * chunk, room for its whole chunk: a chunk's ties never overflow) and
 * their union (values, ids) */
#define TK_OFF_CNT 16
#define TK_OFF_PART (TK_OFF_CNT + 4 * TK_MAXB)

__host__ __device__ static inline size_t tk_array(int64_t n)
{
	return ((size_t)n + TK_MAXB) * 4;
}

size_t lq_cuda_topk_scratch_size(int64_t n)
{
	return TK_OFF_PART + 4 * tk_array(n < 1 ? 1 : n);
}

/* A key whose unsigned order is the float order (-0 just below +0). */
__device__ __forceinline__ uint32_t fkey(float v)
{
	uint32_t u = __float_as_uint(v);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float kfloat(uint32_t k)
{
	return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

struct tk_smem {
	float v[TK_CHUNK];     /* this block's scaled logits */
	unsigned hist[256];
	int off[TK_MAXB + 1];  /* the last block: where each block's candidates go */
	unsigned digit, rest;
	int cnt, flag, last;
};

/* The key of the k-th largest of get(0..m) (1 <= k <= m), in every thread of
 * the block (all of which call it).  Lanes with the same bin add once. */
template <typename G>
__device__ uint32_t kth_key(G get, int m, int k, tk_smem *s)
{
	const int lane = threadIdx.x & 31;
	uint32_t prefix = 0, mask = 0;
	for (int shift = 24; shift >= 0; shift -= 8) {
		for (int i = threadIdx.x; i < 256; i += blockDim.x)
			s->hist[i] = 0;
		__syncthreads();
		for (int j0 = 0; j0 < m; j0 += blockDim.x) {
			const int j = j0 + threadIdx.x;
			uint32_t bin = 0;
			bool ok = false;
			if (j < m) {
				uint32_t key = fkey(get(j));
				ok = (key & mask) == prefix;
				bin = (key >> shift) & 255u;
			}
			const unsigned peers = __match_any_sync(0xffffffffu, ok ? bin : 256u + (unsigned)lane);
			if (ok && __ffs(peers) - 1 == lane)
				atomicAdd(&s->hist[bin], (unsigned)__popc(peers));
		}
		__syncthreads();
		if (threadIdx.x < 32) {
			/* lane l holds bins 255 - 8l down to 248 - 8l; counts from the top */
			unsigned c = 0;
			for (int b = 0; b < 8; b++)
				c += s->hist[255 - 8 * lane - b];
			unsigned incl = c;
			for (int o = 1; o < 32; o <<= 1) {
				unsigned t = __shfl_up_sync(0xffffffffu, incl, o);
				if (lane >= o)
					incl += t;
			}
			unsigned acc = incl - c;
			if (acc < (unsigned)k && (unsigned)k <= incl)
				for (int b = 0; b < 8; b++) {
					int bin = 255 - 8 * lane - b;
					unsigned h = s->hist[bin];
					if (acc + h >= (unsigned)k) {
						s->digit = (unsigned)bin;
						s->rest = (unsigned)k - acc;
						break;
					}
					acc += h;
				}
		}
		__syncthreads();
		prefix |= s->digit << shift;
		mask |= 255u << shift;
		k = (int)s->rest;
		__syncthreads();
	}
	return prefix;
}

/* Append get(j) for j < m with get(j) >= kth (NaN never) to vals / ids at
 * s->cnt (which counts them all; only the first cap are stored). */
template <typename G, typename I>
__device__ void keep_from(G get, I id, int m, float kth, float *vals, int32_t *ids, int cap, tk_smem *s)
{
	const int lane = threadIdx.x & 31;
	for (int j0 = 0; j0 < m; j0 += blockDim.x) {
		const int j = j0 + threadIdx.x;
		float v = j < m ? get(j) : 0.0f;
		const bool ok = j < m && v >= kth;
		const unsigned bal = __ballot_sync(0xffffffffu, ok);
		int base = 0;
		if (lane == 0 && bal)
			base = atomicAdd(&s->cnt, __popc(bal));
		base = __shfl_sync(0xffffffffu, base, 0);
		if (ok) {
			int p = base + __popc(bal & ((1u << lane) - 1u));
			if (p < cap) {
				vals[p] = v;
				ids[p] = id(j);
			}
		}
	}
}

__global__ void __launch_bounds__(TK_THREADS) k_topk(const float *l, int n, float t, int k, int chunk,
						     uint8_t *scr, struct lq_cuda_topk_out *out)
{
	__shared__ tk_smem s;
	unsigned *ctr = (unsigned *)scr;
	int *cnt = (int *)(scr + TK_OFF_CNT);
	const size_t ab = tk_array(n);
	float *pv = (float *)(scr + TK_OFF_PART);
	int32_t *pi = (int32_t *)(scr + TK_OFF_PART + ab);
	float *uv = (float *)(scr + TK_OFF_PART + 2 * ab);
	int32_t *ui = (int32_t *)(scr + TK_OFF_PART + 3 * ab);
	const int b = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int base = b * chunk;
	const int m = n - base < chunk ? n - base : chunk;
	if (threadIdx.x == 0) {
		s.cnt = 0;
		s.flag = 0;
	}
	int nan = 0;
	for (int j = threadIdx.x; j < m; j += blockDim.x) {
		float v = __fdiv_rn(l[base + j], t); /* lq_sample: logits[i] /= (float)T */
		nan |= v != v;
		s.v[j] = v;
	}
	if (__syncthreads_or(nan)) {
		if (threadIdx.x == 0)
			s.flag = 1;
	} else {
		float kth = -INFINITY; /* a chunk of at most k keeps all */
		if (m > k)
			kth = kfloat(kth_key([&](int j) { return s.v[j]; }, m, k, &s));
		keep_from([&](int j) { return s.v[j]; }, [base](int j) { return base + j; }, m, kth, pv + base, pi + base,
			  chunk, &s);
	}
	__syncthreads();
	if (threadIdx.x == 0) {
		cnt[b] = s.flag ? -1 : s.cnt;
		__threadfence();
		s.last = atomicAdd(ctr, 1u) == gridDim.x - 1;
	}
	__syncthreads();
	if (!s.last)
		return;
	/* the last block: the union of the blocks' candidates */
	__threadfence();
	const int nb = gridDim.x;
	for (int i = threadIdx.x; i < nb; i += blockDim.x)
		s.off[i + 1] = __ldcg(cnt + i);
	__syncthreads();
	if (threadIdx.x < 32) {
		/* prefix sums, 8 blocks a lane (nb <= 256); -1 anywhere: no set */
		int c[8], sum = 0, bad = 0;
		for (int e = 0; e < 8; e++) {
			int i = lane * 8 + e;
			c[e] = i < nb ? s.off[i + 1] : 0;
			bad |= c[e] < 0;
			sum += c[e];
		}
		int incl = sum;
		for (int o = 1; o < 32; o <<= 1) {
			int v = __shfl_up_sync(0xffffffffu, incl, o);
			if (lane >= o)
				incl += v;
		}
		bad = __any_sync(0xffffffffu, bad);
		int acc = incl - sum;
		for (int e = 0; e < 8; e++) {
			int i = lane * 8 + e;
			if (i < nb)
				s.off[i] = acc;
			acc += c[e];
		}
		if (lane == 31) {
			s.off[nb] = bad ? -1 : incl;
			s.cnt = 0;
		}
	}
	__syncthreads();
	const int tot = s.off[nb];
	if (tot < 0) {
		if (threadIdx.x == 0) {
			out->count = -1;
			*ctr = 0;
		}
		return;
	}
	for (int i = warp; i < nb; i += TK_WARPS) {
		const int o = s.off[i], c = (i + 1 < nb ? s.off[i + 1] : tot) - o, ib = i * chunk;
		for (int j = lane; j < c; j += 32) {
			uv[o + j] = __ldcg(pv + ib + j);
			ui[o + j] = __ldcg(pi + ib + j);
		}
	}
	__syncthreads();
	float kth = -INFINITY;
	if (tot > k)
		kth = kfloat(kth_key([uv](int j) { return uv[j]; }, tot, k, &s));
	keep_from([uv](int j) { return uv[j]; }, [ui](int j) { return ui[j]; }, tot, kth, out->vals, out->ids, TK_CAP,
		  &s);
	__syncthreads();
	if (threadIdx.x == 0) {
		out->count = s.cnt > TK_CAP ? -1 : s.cnt;
		*ctr = 0;
	}
}

int lq_cuda_topk(const float *d_logits, int64_t n, float temperature, int k, void *d_scratch,
		 struct lq_cuda_topk_out *d_out, void *stream)
{
	if (n < 1 || n > LQ_CUDA_TOPK_NMAX || k < 1 || k > TK_CAP || !(temperature > 0))
		return (int)cudaErrorInvalidValue;
	int64_t nb = (n + TK_CHUNK - 1) / TK_CHUNK;
	int64_t chunk = (n + nb - 1) / nb;
	nb = (n + chunk - 1) / chunk;
	k_topk<<<(unsigned)nb, TK_THREADS, 0, (cudaStream_t)stream>>>(d_logits, (int)n, temperature, k, (int)chunk,
								       (uint8_t *)d_scratch, d_out);
	return (int)cudaGetLastError();
}

__global__ void k_penalty(float *l, const int32_t *ids, int64_t n, float p)
{
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
		float s = l[ids[i]];
		l[ids[i]] = s < 0 ? __fmul_rn(s, p) : __fdiv_rn(s, p);
	}
}

int lq_cuda_penalty(float *d_logits, const int32_t *d_ids, int64_t nids, float penalty, void *stream)
{
	if (nids <= 0)
		return 0;
	k_penalty<<<lq_cuda_grid256((uint64_t)nids), 256, 0, (cudaStream_t)stream>>>(d_logits, d_ids, nids, penalty);
	return (int)cudaGetLastError();
}

/*
 * lq_sample_kept's draw on the device (the end of a sampling step chained
 * on the device, lq_backend's sample_n): the kept tokens sorted as the host
 * sorts them (scaled logit descending, then id ascending; a rank per token),
 * their exp() in parallel, then (one thread) the host's own code for the
 * rest (lq_blocks.h: the sums in index order) and one draw from the
 * xoshiro256** state in rng, advanced as lq_rng_uniform advances the host's.
 */
#define PK_THREADS 256

__global__ void __launch_bounds__(PK_THREADS) k_pick(const struct lq_cuda_topk_out *tk, double top_p, double min_p,
						     uint64_t *rng, int *stop, int32_t *out)
{
	__shared__ float v0[TK_CAP], sv[TK_CAP];
	__shared__ int32_t i0[TK_CAP], si[TK_CAP];
	__shared__ double p[TK_CAP];
	if (*(volatile int *)stop)
		return;
	const int c = tk->count;
	if (c <= 0 || c > TK_CAP) {
		if (threadIdx.x == 0)
			*stop = 1; /* no set: the host takes this step */
		return;
	}
	for (int i = threadIdx.x; i < c; i += blockDim.x) {
		v0[i] = tk->vals[i];
		i0[i] = tk->ids[i];
	}
	__syncthreads();
	for (int i = threadIdx.x; i < c; i += blockDim.x) {
		const float v = v0[i];
		const int32_t d = i0[i];
		int r = 0;
		for (int j = 0; j < c; j++)
			r += v0[j] > v || (v0[j] == v && i0[j] < d);
		sv[r] = v;
		si[r] = d;
	}
	__syncthreads();
	const double mx = sv[0];
	for (int i = threadIdx.x; i < c; i += blockDim.x)
		p[i] = exp((double)sv[i] - mx);
	__syncthreads();
	if (threadIdx.x == 0) {
		uint64_t s[4] = { rng[0], rng[1], rng[2], rng[3] };
		const double u = lq_uniform53(lq_xoshiro_next(s));
		*out = si[lq_pick_index(p, c, top_p, min_p, u)];
		for (int i = 0; i < 4; i++)
			rng[i] = s[i];
	}
}

int lq_cuda_pick(const struct lq_cuda_topk_out *d_tk, double top_p, double min_p, uint64_t *d_rng, int *d_stop,
		 int32_t *d_id, void *stream)
{
	k_pick<<<1, PK_THREADS, 0, (cudaStream_t)stream>>>(d_tk, top_p, min_p, d_rng, d_stop, d_id);
	return (int)cudaGetLastError();
}
