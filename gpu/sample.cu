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

#include <cub/cub.cuh>
#include <cuda_runtime.h>
#include <limits.h>
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

__device__ __forceinline__ float kfloat(uint32_t k)
{
	return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* The inclusive prefix sum of v over the warp's lanes (all 32 call it):
 * the top-k's bin counts and the pick's weights. */
template <typename T>
__device__ __forceinline__ T warp_incl_sum(T v)
{
	const int lane = threadIdx.x & 31;
	for (int o = 1; o < 32; o <<= 1) {
		const T t = __shfl_up_sync(0xffffffffu, v, o);
		if (lane >= o)
			v += t;
	}
	return v;
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
				uint32_t key = lq_fkey(get(j));
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
			const unsigned incl = warp_incl_sum(c);
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
	return lq_fkey(v) >> TK_SHIFT;
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
	const unsigned incl = warp_incl_sum(sum);
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
	for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
		l[ids[i]] = lq_penalize(l[ids[i]], p);
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
 * sorts them (scaled logit descending, then id ascending; by rank or a
 * bitonic sort),
 * then lq_blocks.h's fixed-point pick with a thread per token -- weights,
 * their prefix sums by a block scan (exact integers, so they equal the
 * host's sums in order), top-p's and min-p's first dropped token by atomic
 * minimum, and the draw -- from one output of the xoshiro256** state in
 * rng, advanced as lq_rng_uniform advances the host's.
 */
#define PK_THREADS 1024
#define PK_RANK 128 /* the most kept tokens k_pick sorts by rank */
static_assert(PK_THREADS >= TK_CAP, "k_pick: a thread per kept token");

__global__ void __launch_bounds__(PK_THREADS) k_pick(const struct lq_cuda_topk_out *tk, double top_p, double min_p,
						     uint64_t *rng, int *stop, int32_t *out)
{
	__shared__ unsigned long long key[TK_CAP]; /* sort keys: value descending, then id ascending */
	__shared__ float sv[TK_CAP];
	__shared__ int32_t si[TK_CAP];
	__shared__ uint64_t P[TK_CAP]; /* cumulative weights */
	__shared__ uint64_t wsum[PK_THREADS / 32];
	__shared__ uint64_t rt;
	__shared__ int kp, km;
	if (*(volatile int *)stop)
		return;
	const int c = tk->count, i = threadIdx.x, lane = i & 31, warp = i >> 5;
	if (c <= 0 || c > TK_CAP) {
		if (i == 0)
			*stop = 1; /* no set: the host takes this step */
		return;
	}
	/* the keys (the host's order: lq_fkey's, -0 as +0, inverted, above the
	 * id; all distinct) sorted: up to PK_RANK tokens by rank (each thread
	 * counts the keys below its own), more by a bitonic sort padded to a
	 * power of two with keys past every real one (H200, bench_sample: the
	 * pick at top-k 50 4.5 us by rank against 5.2 bitonic; at 1024 62
	 * against 12) */
	int np2 = 1;
	while (np2 < c)
		np2 <<= 1;
	if (i < np2)
		key[i] = i < c ? (unsigned long long)(~lq_fkey(tk->vals[i])) << 32 | (uint32_t)tk->ids[i] : ~0ull;
	if (i == 0) {
		kp = c;
		km = c;
	}
	__syncthreads();
	if (c <= PK_RANK) {
		if (i < c) {
			const unsigned long long a = key[i];
			int r = 0;
			for (int j = 0; j < c; j++)
				r += key[j] < a;
			sv[r] = kfloat(~(uint32_t)(a >> 32));
			si[r] = (int32_t)(uint32_t)a;
		}
		np2 = 0; /* sorted */
	}
	for (int k = 2; k <= np2; k <<= 1)
		for (int j = k >> 1; j > 0; j >>= 1) {
			const int o = i ^ j;
			if (i < np2 && o > i) {
				const unsigned long long a = key[i], b = key[o];
				if ((a > b) == ((i & k) == 0)) {
					key[i] = b;
					key[o] = a;
				}
			}
			__syncthreads();
		}
	if (np2 && i < c) {
		sv[i] = kfloat(~(uint32_t)(key[i] >> 32));
		si[i] = (int32_t)(uint32_t)key[i];
	}
	__syncthreads();
	/* token i's weight and the inclusive prefix sum cum of weights 0..i */
	double e = 0;
	uint64_t w = 0;
	if (i < c) {
		e = exp((double)sv[i] - (double)sv[0]);
		w = lq_pick_weight(e, lq_pick_shift(c));
	}
	uint64_t cum = warp_incl_sum(w);
	if (lane == 31)
		wsum[warp] = cum;
	__syncthreads();
	if (warp == 0) {
		const uint64_t t = warp_incl_sum(lane < PK_THREADS / 32 ? wsum[lane] : (uint64_t)0);
		if (lane < PK_THREADS / 32)
			wsum[lane] = t; /* inclusive over warps */
	}
	__syncthreads();
	if (warp)
		cum += wsum[warp - 1];
	if (i < c)
		P[i] = cum;
	__syncthreads();
	const uint64_t total = P[c - 1], before = i ? P[i - 1] : 0;
	if (i >= 1 && i < c) {
		if (top_p > 0 && top_p < 1.0 && total - before <= lq_pick_toplim(top_p, total))
			atomicMin(&kp, i); /* the tail from i is light enough: top-p drops it */
		if (min_p > 0 && !(e >= min_p))
			atomicMin(&km, i);
	}
	__syncthreads();
	const int k = min(kp, km);
	const uint64_t wk = P[k - 1];
	if (i == 0) {
		uint64_t st[4] = { rng[0], rng[1], rng[2], rng[3] };
		const uint64_t x = lq_xoshiro_next(st);
		for (int j = 0; j < 4; j++)
			rng[j] = st[j];
		if (!wk)
			*out = si[0];
		else
			rt = lq_pick_target(x, wk);
	}
	__syncthreads();
	/* the first token whose cumulative weight exceeds rt */
	if (wk && i < k && before <= rt && rt < cum)
		*out = si[i];
}

int lq_cuda_pick(const struct lq_cuda_topk_out *d_tk, double top_p, double min_p, uint64_t *d_rng, int *d_stop,
		 int32_t *d_id, void *stream)
{
	k_pick<<<1, PK_THREADS, 0, (cudaStream_t)stream>>>(d_tk, top_p, min_p, d_rng, d_stop, d_id);
	return (int)cudaGetLastError();
}

/*
 * lq_cuda_sample_all: lq_sample's whole pick on the device for options the
 * top-k set above cannot serve (top-k off, or over LQ_CUDA_TOPK_MAX): the
 * scaled logits' keys (lq_fkey, inverted) sorted with their ids by a stable
 * radix sort (CUB), which is the host's order (value descending, then id
 * ascending); top-k's count (ties with the k-th value kept) by a
 * block-wide search; the weights of lq_blocks.h's fixed point and min-p's first
 * dropped token (k_all_w); their prefix sums (CUB; exact integers, so the
 * host's sums in order); then one block finds top-p's cut and the drawn
 * token by block-wide searches of those sums (k_all_draw).
 */
struct sa_hdr {
	int nan, km;
};

struct sa_layout {
	size_t keys, keys2, ids, ids2, w, cum, tmp, tmp_bytes, total;
};

static size_t sa_up(size_t x)
{
	return (x + 255) & ~(size_t)255;
}

static int sa_plan(int64_t n, struct sa_layout *L)
{
	size_t sort_b = 0, scan_b = 0;
	cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, sort_b, (const uint32_t *)nullptr, (uint32_t *)nullptr,
							 (const int32_t *)nullptr, (int32_t *)nullptr, (int)n, 0, 32);
	if (e == cudaSuccess)
		e = cub::DeviceScan::InclusiveSum(nullptr, scan_b, (const unsigned long long *)nullptr,
						  (unsigned long long *)nullptr, (int)n);
	if (e != cudaSuccess)
		return (int)e;
	const size_t u4 = sa_up(4 * (size_t)n), u8 = sa_up(8 * (size_t)n);
	L->keys = sa_up(sizeof(struct sa_hdr));
	L->keys2 = L->keys + u4;
	L->ids = L->keys2 + u4;
	L->ids2 = L->ids + u4;
	L->w = L->ids2 + u4;
	L->cum = L->w + u8;
	L->tmp = L->cum + u8;
	L->tmp_bytes = sort_b > scan_b ? sort_b : scan_b;
	L->total = L->tmp + sa_up(L->tmp_bytes);
	return 0;
}

size_t lq_cuda_sample_all_scratch_size(int64_t n)
{
	struct sa_layout L;
	return n >= 1 && n <= LQ_CUDA_TOPK_NMAX && !sa_plan(n, &L) ? L.total : 0;
}

/* The first i in [lo, hi) where pred(i) holds (hi: none), pred false then
 * true over the range; every thread of the block calls it and gets the
 * answer: each round probes blockDim.x evenly spaced indices at once (two
 * rounds for 128K entries at 1024 threads, where one thread's binary search
 * takes 17 dependent loads). */
template <typename F>
__device__ int block_first(F pred, int lo, int hi)
{
	__shared__ int first;
	while (lo < hi) {
		const int step = (hi - lo + (int)blockDim.x - 1) / (int)blockDim.x;
		if (threadIdx.x == 0)
			first = INT_MAX;
		__syncthreads();
		const int p = lo + (int)threadIdx.x * step;
		if (p < hi && pred(p))
			atomicMin(&first, p);
		__syncthreads();
		const int f = first;
		__syncthreads(); /* all have read it before the next round resets it */
		if (step == 1)
			return f == INT_MAX ? hi : f;
		if (f == INT_MAX) {
			lo += ((hi - lo - 1) / step) * step + 1; /* past the last probe */
		} else {
			lo = max(lo, f - step + 1); /* the probe before f was false */
			hi = f;                     /* f holds: the answer is f or before */
			if (lo == hi)
				return f;
		}
	}
	return hi;
}

/* The count top-k keeps from the sorted keys (key order: value descending):
 * the tokens up to the last one equal to the k-th (block-wide). */
__device__ __forceinline__ int sa_keep(const uint32_t *keys, int n, int k)
{
	if (k <= 0 || k >= n)
		return n;
	const uint32_t kth = keys[k - 1];
	return block_first([&](int i) { return keys[i] > kth; }, k, n);
}

__global__ void k_all_keys(const float *l, int n, float t, uint32_t *keys, int32_t *ids, struct sa_hdr *h,
			   const int *stop)
{
	if (*(volatile const int *)stop)
		return;
	if (blockIdx.x == 0 && threadIdx.x == 0)
		h->km = n;
	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
		const float v = __fdiv_rn(l[i], t);
		if (v != v)
			h->nan = 1;
		keys[i] = ~lq_fkey(v);
		ids[i] = i;
	}
}

__global__ void k_all_w(const uint32_t *keys, int n, int top_k, double min_p, uint64_t *w, struct sa_hdr *h,
			const int *stop)
{
	if (*(volatile const int *)stop || h->nan)
		return;
	const int keep = sa_keep(keys, n, top_k);
	const int S = lq_pick_shift(keep);
	const double mx = kfloat(~keys[0]);
	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
		uint64_t wi = 0;
		if (i < keep) {
			const double e = exp((double)kfloat(~keys[i]) - mx);
			wi = lq_pick_weight(e, S);
			if (min_p > 0 && i >= 1 && !(e >= min_p))
				atomicMin(&h->km, i);
		}
		w[i] = wi;
	}
}

#define SA_DRAW_THREADS 1024

__global__ void __launch_bounds__(SA_DRAW_THREADS) k_all_draw(const uint32_t *keys, const int32_t *ids,
							      const uint64_t *cum, int n, int top_k, double top_p,
							      uint64_t *rng, int *stop, int32_t *out, struct sa_hdr *h)
{
	__shared__ uint64_t r;
	if (*(volatile int *)stop)
		return;
	__syncthreads(); /* every thread has read the flag */
	if (h->nan) {
		__syncthreads();
		if (threadIdx.x == 0) {
			h->nan = 0;
			*stop = 1; /* a NaN: the host sorts such rows its own way */
		}
		return;
	}
	const int keep = sa_keep(keys, n, top_k);
	const uint64_t total = cum[keep - 1];
	int k = keep;
	if (top_p > 0 && top_p < 1.0) {
		/* the first i >= 1 whose tail total - cum[i - 1] is within the limit */
		const uint64_t lim = lq_pick_toplim(top_p, total);
		k = block_first([&](int i) { return total - cum[i - 1] <= lim; }, 1, keep);
	}
	k = min(k, h->km);
	const uint64_t wk = cum[k - 1];
	if (threadIdx.x == 0) {
		uint64_t s[4] = { rng[0], rng[1], rng[2], rng[3] };
		const uint64_t x = lq_xoshiro_next(s);
		for (int j = 0; j < 4; j++)
			rng[j] = s[j];
		r = wk ? lq_pick_target(x, wk) : 0;
	}
	__syncthreads();
	/* the first token whose cumulative weight exceeds r */
	const uint64_t rr = r;
	const int at = wk ? block_first([&](int i) { return cum[i] > rr; }, 0, k - 1) : 0;
	if (threadIdx.x == 0)
		*out = ids[at];
}

int lq_cuda_sample_all(const float *d_logits, int64_t n, float temperature, int top_k, double top_p, double min_p,
		       uint64_t *d_rng, int *d_stop, int32_t *d_id, void *d_scratch, void *stream)
{
	struct sa_layout L;
	if (n < 1 || n > LQ_CUDA_TOPK_NMAX || !(temperature > 0))
		return (int)cudaErrorInvalidValue;
	int rc = sa_plan(n, &L);
	if (rc)
		return rc;
	cudaStream_t st = (cudaStream_t)stream;
	uint8_t *b = (uint8_t *)d_scratch;
	struct sa_hdr *h = (struct sa_hdr *)b;
	uint32_t *keys = (uint32_t *)(b + L.keys), *keys2 = (uint32_t *)(b + L.keys2);
	int32_t *ids = (int32_t *)(b + L.ids), *ids2 = (int32_t *)(b + L.ids2);
	uint64_t *w = (uint64_t *)(b + L.w), *cum = (uint64_t *)(b + L.cum);
	const unsigned grid = (unsigned)((n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024);
	k_all_keys<<<grid, 256, 0, st>>>(d_logits, (int)n, temperature, keys, ids, h, d_stop);
	size_t tb = L.tmp_bytes;
	cudaError_t e = cub::DeviceRadixSort::SortPairs(b + L.tmp, tb, keys, keys2, ids, ids2, (int)n, 0, 32, st);
	if (e != cudaSuccess)
		return (int)e;
	k_all_w<<<grid, 256, 0, st>>>(keys2, (int)n, top_k, min_p, w, h, d_stop);
	tb = L.tmp_bytes;
	e = cub::DeviceScan::InclusiveSum(b + L.tmp, tb, (const unsigned long long *)w, (unsigned long long *)cum, (int)n,
					  st);
	if (e != cudaSuccess)
		return (int)e;
	k_all_draw<<<1, SA_DRAW_THREADS, 0, st>>>(keys2, ids2, cum, (int)n, top_k, top_p, d_rng, d_stop, d_id, h);
	return (int)cudaGetLastError();
}
