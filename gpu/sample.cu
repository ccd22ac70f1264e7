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
 * The top-k filter takes two passes over the scaled logits, each over the
 * whole grid: the first counts them in 4096 bins of the top 12 bits of an
 * orderable key of each float (-0 counted as +0, which it equals), and its
 * last block finds the bin B holding the k-th largest; the second keeps
 * every token of a bin above B and collects those of bin B, among which its
 * last block finds the k-th value by a radix select (four 8-bit passes over
 * the whole key) and keeps those not below it.  Ties with the k-th value are
 * kept by float comparison, as lq_sample keeps them.
 *
 * Copyright (c) the libquant authors.  MIT license.
 */
#include "lq_cuda.h"
#include "lq_blocks.h"

#include <cuda_runtime.h>
#include <math.h>

#define TK_THREADS 512
#define TK_WARPS (TK_THREADS / 32)
#define TK_CHUNK 4096 /* logits per block, at most */
#define TK_CAP LQ_CUDA_TOPK_MAX
#define TK_BINS 4096  /* the first pass's bins: the key's top 12 bits */
#define TK_SHIFT 20

/* scratch: this header, then the candidates of bin B (values, ids; n each) */
struct tk_hdr {
	unsigned ctr1, ctr2, nan, all; /* the passes' last-block counters; a NaN seen; all tokens kept */
	unsigned B;                    /* the bin of the k-th largest */
	int need, nout, ncand;         /* k - tokens above bin B; tokens kept; candidates in bin B */
	unsigned hist[TK_BINS];
};

size_t lq_cuda_topk_scratch_size(int64_t n)
{
	return sizeof(struct tk_hdr) + 8 * (size_t)(n < 1 ? 1 : n);
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
	unsigned hist[256];
	unsigned digit, rest;
	int cnt, last;
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

/* The first pass's bin of a scaled logit (-0 in +0's). */
__device__ __forceinline__ unsigned tk_bin(float v)
{
	return fkey(v == 0.0f ? 0.0f : v) >> TK_SHIFT;
}

/* The first pass: the bins' counts; its last block finds bin B. */
__global__ void __launch_bounds__(TK_THREADS) k_topk_hist(const float *l, int n, float t, int k, int chunk,
							  struct tk_hdr *h)
{
	__shared__ unsigned hs[TK_BINS];
	__shared__ unsigned wsum[TK_WARPS];
	__shared__ unsigned sB;
	__shared__ int sneed, last;
	const int base = blockIdx.x * chunk, m = n - base < chunk ? n - base : chunk;
	for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x)
		hs[i] = 0;
	__syncthreads();
	int nan = 0;
	for (int j = threadIdx.x; j < m; j += blockDim.x) {
		const float v = __fdiv_rn(l[base + j], t); /* lq_sample: logits[i] /= (float)T */
		if (v != v)
			nan = 1;
		else
			atomicAdd(&hs[tk_bin(v)], 1u);
	}
	nan = __syncthreads_or(nan);
	for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x)
		if (hs[i])
			atomicAdd(&h->hist[i], hs[i]);
	if (threadIdx.x == 0 && nan)
		atomicOr(&h->nan, 1u);
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0)
		last = atomicAdd(&h->ctr1, 1u) == gridDim.x - 1;
	__syncthreads();
	if (!last)
		return;
	__threadfence();
	/* thread i holds bins 4095 - 8i down to 4088 - 8i (counts from the
	 * top), and clears them for the next call */
	unsigned c[8], sum = 0;
	for (int b = 0; b < 8; b++) {
		const int bin = TK_BINS - 1 - 8 * (int)threadIdx.x - b;
		c[b] = __ldcg(&h->hist[bin]);
		h->hist[bin] = 0;
		sum += c[b];
	}
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	unsigned incl = sum;
	for (int o = 1; o < 32; o <<= 1) {
		const unsigned x = __shfl_up_sync(0xffffffffu, incl, o);
		if (lane >= o)
			incl += x;
	}
	if (lane == 31)
		wsum[warp] = incl;
	if (threadIdx.x == 0) {
		sB = 0;
		sneed = -1;
	}
	__syncthreads();
	unsigned acc = incl - sum;
	for (int w = 0; w < warp; w++)
		acc += wsum[w];
	if (acc < (unsigned)k && (unsigned)k <= acc + sum)
		for (int b = 0; b < 8; b++) {
			if (acc + c[b] >= (unsigned)k) {
				sB = (unsigned)(TK_BINS - 1 - 8 * (int)threadIdx.x - b);
				sneed = k - (int)acc;
				break;
			}
			acc += c[b];
		}
	__syncthreads();
	if (threadIdx.x == 0) {
		h->all = sneed < 0; /* k or fewer tokens: all kept */
		h->B = sB;
		h->need = sneed;
		h->nout = 0;
		h->ncand = 0;
		h->ctr1 = 0;
	}
}

/* The second pass: the tokens of the bins above B kept, bin B's collected;
 * its last block keeps those of bin B not below the k-th value. */
__global__ void __launch_bounds__(TK_THREADS) k_topk_keep(const float *l, int n, float t, int chunk, struct tk_hdr *h,
							  struct lq_cuda_topk_out *out)
{
	__shared__ tk_smem s;
	float *cv = (float *)(h + 1);
	int32_t *ci = (int32_t *)(cv + n);
	const unsigned B = h->B, all = h->all, nan = h->nan;
	const int base = blockIdx.x * chunk, m = n - base < chunk ? n - base : chunk;
	const int lane = threadIdx.x & 31;
	if (!nan)
		for (int j0 = 0; j0 < m; j0 += blockDim.x) {
			const int j = j0 + threadIdx.x;
			float v = 0;
			unsigned bin = 0;
			if (j < m) {
				v = __fdiv_rn(l[base + j], t);
				bin = tk_bin(v);
			}
			const bool keep = j < m && (all || bin > B), cand = j < m && !all && bin == B;
			const unsigned bk = __ballot_sync(0xffffffffu, keep), bc = __ballot_sync(0xffffffffu, cand);
			int pk = 0, pc = 0;
			if (lane == 0) {
				if (bk)
					pk = atomicAdd(&h->nout, __popc(bk));
				if (bc)
					pc = atomicAdd(&h->ncand, __popc(bc));
			}
			pk = __shfl_sync(0xffffffffu, pk, 0) + __popc(bk & ((1u << lane) - 1u));
			pc = __shfl_sync(0xffffffffu, pc, 0) + __popc(bc & ((1u << lane) - 1u));
			if (keep && pk < TK_CAP) {
				out->vals[pk] = v;
				out->ids[pk] = base + j;
			}
			if (cand) {
				cv[pc] = v;
				ci[pc] = base + j;
			}
		}
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0)
		s.last = atomicAdd(&h->ctr2, 1u) == gridDim.x - 1;
	__syncthreads();
	if (!s.last)
		return;
	__threadfence();
	const int nout = __ldcg(&h->nout), mc = __ldcg(&h->ncand);
	if (nan || nout > TK_CAP) {
		if (threadIdx.x == 0) {
			out->count = -1;
			h->ctr2 = 0;
			h->nan = 0;
		}
		return;
	}
	if (threadIdx.x == 0)
		s.cnt = nout;
	__syncthreads();
	if (!all) {
		/* 1 <= need <= mc: bin B holds the k-th largest */
		const float kth = kfloat(kth_key([cv](int j) { return __ldcg(cv + j); }, mc, h->need, &s));
		keep_from([cv](int j) { return __ldcg(cv + j); }, [ci](int j) { return __ldcg(ci + j); }, mc, kth, out->vals,
			  out->ids, TK_CAP, &s);
		__syncthreads();
	}
	if (threadIdx.x == 0) {
		out->count = s.cnt > TK_CAP ? -1 : s.cnt;
		h->ctr2 = 0;
		h->nan = 0;
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
	struct tk_hdr *h = (struct tk_hdr *)d_scratch;
	k_topk_hist<<<(unsigned)nb, TK_THREADS, 0, (cudaStream_t)stream>>>(d_logits, (int)n, temperature, k, (int)chunk, h);
	k_topk_keep<<<(unsigned)nb, TK_THREADS, 0, (cudaStream_t)stream>>>(d_logits, (int)n, temperature, (int)chunk, h,
									    d_out);
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
 * their exp() and the normalization in parallel, the host's own code for
 * the sums, top-p, min-p and the draw (lq_blocks.h: sums in index order, in
 * one thread), one draw from the xoshiro256** state in rng, advanced as
 * lq_rng_uniform advances the host's.
 */
#define PK_THREADS 1024

__global__ void __launch_bounds__(PK_THREADS) k_pick(const struct lq_cuda_topk_out *tk, double top_p, double min_p,
						     uint64_t *rng, int *stop, int32_t *out)
{
	__shared__ float2 in[TK_CAP]; /* (value, id bits) */
	__shared__ float sv[TK_CAP];
	__shared__ int32_t si[TK_CAP];
	__shared__ double p[TK_CAP];
	__shared__ double sum;
	if (*(volatile int *)stop)
		return;
	const int c = tk->count;
	if (c <= 0 || c > TK_CAP) {
		if (threadIdx.x == 0)
			*stop = 1; /* no set: the host takes this step */
		return;
	}
	for (int i = threadIdx.x; i < c; i += blockDim.x)
		in[i] = make_float2(tk->vals[i], __int_as_float(tk->ids[i]));
	__syncthreads();
	for (int i = threadIdx.x; i < c; i += blockDim.x) {
		const float v = in[i].x;
		const int32_t d = __float_as_int(in[i].y);
		int r = 0;
		for (int j = 0; j < c; j++) {
			const float2 o = in[j];
			r += o.x > v || (o.x == v && __float_as_int(o.y) < d);
		}
		sv[r] = v;
		si[r] = d;
	}
	__syncthreads();
	const double mx = sv[0];
	for (int i = threadIdx.x; i < c; i += blockDim.x)
		p[i] = exp((double)sv[i] - mx);
	__syncthreads();
	if (threadIdx.x == 0)
		sum = lq_pick_sum(p, c);
	__syncthreads();
	for (int i = threadIdx.x; i < c; i += blockDim.x)
		p[i] /= sum;
	__syncthreads();
	if (threadIdx.x == 0) {
		uint64_t s[4] = { rng[0], rng[1], rng[2], rng[3] };
		const double u = lq_uniform53(lq_xoshiro_next(s));
		*out = si[lq_pick_normed(p, c, top_p, min_p, u)];
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
