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
#define TK_SMC 2048   /* bin B's candidates the last block reads into shared memory at most */

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
 * the block (all of which call it), whose keys all have the bits of mask
 * that prefix has: 8-bit digits from bit shift + 7 down (the last one at bit
 * 0, over bits known already where shift is not a multiple of 8).  Lanes
 * with the same bin add once. */
template <typename G>
__device__ uint32_t kth_key(G get, int m, int k, tk_smem *s, uint32_t prefix, uint32_t mask, int shift)
{
	const int lane = threadIdx.x & 31;
	for (; shift >= 0; shift = shift >= 8 ? shift - 8 : shift > 0 ? 0 : -1) {
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
	__shared__ float cs_v[TK_SMC]; /* bin B's candidates, when few */
	__shared__ int32_t cs_i[TK_SMC];
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
		/* 1 <= need <= mc: bin B holds the k-th largest; its candidates'
		 * keys share their top TK_SHIFT bits, B.  Few candidates are read
		 * into shared memory once; more are read where they are, each pass. */
		auto select = [&](auto val, auto id) {
			const float kth =
				kfloat(kth_key(val, mc, h->need, &s, B << TK_SHIFT, ~0u << TK_SHIFT, TK_SHIFT - 8));
			keep_from(val, id, mc, kth, out->vals, out->ids, TK_CAP, &s);
		};
		if (mc <= TK_SMC) {
			for (int j = threadIdx.x; j < mc; j += blockDim.x) {
				cs_v[j] = __ldcg(cv + j);
				cs_i[j] = __ldcg(ci + j);
			}
			__syncthreads();
			select([](int j) { return cs_v[j]; }, [](int j) { return cs_i[j]; });
		} else {
			select([cv](int j) { return __ldcg(cv + j); }, [ci](int j) { return __ldcg(ci + j); });
		}
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
 * lq_cuda_sample_all: lq_sample's whole pick on the device for the options
 * the top-k set above cannot serve (top-k off, or over LQ_CUDA_TOPK_MAX),
 * without sorting the row.  In the host's order (scaled logit descending,
 * then id ascending) lq_blocks.h's weights never increase and equal values
 * weigh the same, so every position the pick needs is found by a radix
 * descent over the keys (lq_fkey) with the weights' and the counts' sums
 * per digit: the first token whose cumulative weight passes a threshold
 * lies in the first bin (from the top) where the bins' running sum passes
 * it; three digits (11, 11 and 10 bits) give its value, the weight of the
 * tokens before it and their count, and the ties of that value are ranked
 * by id.  One cooperative launch does it, its blocks meeting at grid-wide
 * barriers between the passes:
 *   1. the scaled logits' keys (held in registers), their largest, a NaN
 *      flag; with top-k, the keys' counts per top digit;
 *   2. with 0 < top-k < n, the k-th largest key by a descent over counts
 *      (two more passes): the tokens below it drop out;
 *   3. the weights' and counts' sums per top digit, and min-p's kept count
 *      and weight (its kept tokens are those with exp(l - l_0) >= min-p, a
 *      prefix of the order);
 *   4. top-p's cut: the first token whose cumulative weight reaches total -
 *      lq_pick_toplim (two passes);
 *   5. the draw: the first token whose cumulative weight exceeds the target
 *      (two passes; one more when its value has ties).
 * Every block reads each pass's sums and finds the same bin, so only the
 * barriers pass results between blocks.  The sums are exact integers, so
 * the result is the host's pick (sample.c).
 */
#define SA_T 512                /* threads per block */
#define SA_NB 2048              /* bins of a digit, at most */
#define SA_GMAX 128             /* blocks, at most */
#define SA_NH 5                 /* weighted sums: top digit, top-p's two, the draw's two */

struct sa_glob {
	unsigned bar_count, bar_gen;    /* the grid barrier (count back at 0 after each) */
	unsigned maxkey, nan;           /* pass 1's; reset after the second barrier */
	unsigned kc0[SA_NB];            /* pass 1's counts per top digit (top-k); reset then too */
	/* zeroed by each call before its first barrier: */
	unsigned long long minw;        /* min-p's kept weight */
	unsigned mincnt, pad;           /* and count */
	unsigned kc[2][SA_NB];          /* top-k's descent: the lower digits' counts */
	unsigned long long hw[SA_NH][SA_NB];
	unsigned hc[SA_NH][SA_NB];
	unsigned tie[SA_GMAX];          /* per block: the drawn value's ties */
};

#ifndef SA_MAXG
#define SA_MAXG 128 /* the grid sa_config prefers, at most (H200, 128,256 logits: 126 blocks of 2 tokens a thread against 63 of 4, 40.8 -> 39.8 us) */
#endif

/* A barrier of the whole (co-resident) grid; the scratch's writes before it
 * are visible after it (read them with __ldcg: they are made at L2).  One
 * thread a block arrives with an acq_rel add, the last resets the count and
 * releases the generation, the others poll it with acquire loads (H200:
 * 1.3 us a pick less than __threadfence around plain atomics). */
__device__ void sa_barrier(sa_glob *g)
{
	__syncthreads();
	if (threadIdx.x == 0) {
		unsigned g0, old, v;
		asm volatile("ld.relaxed.gpu.u32 %0, [%1];" : "=r"(g0) : "l"(&g->bar_gen) : "memory");
		asm volatile("atom.acq_rel.gpu.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(&g->bar_count) : "memory");
		if (old == gridDim.x - 1) {
			asm volatile("st.relaxed.gpu.u32 [%0], 0;" ::"l"(&g->bar_count) : "memory");
			asm volatile("red.release.gpu.add.u32 [%0], 1;" ::"l"(&g->bar_gen) : "memory");
		} else {
			do
				asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(&g->bar_gen) : "memory");
			while (v == g0);
		}
	}
	__syncthreads();
}

struct sa_smem {
	unsigned wlo[SA_NB], whi[SA_NB]; /* a bin's weight in 32-bit halves (64-bit shared atomics are CAS loops: 43.1 -> 40.8 us a pick) */
	unsigned c[SA_NB];
	union {
		cub::BlockScan<unsigned long long, SA_T>::TempStorage w;
		cub::BlockScan<unsigned, SA_T>::TempStorage c;
	} scan;
	int bin;
	unsigned long long wabove;
	unsigned cabove, ccnt;
	unsigned long long cw;
};

/* A digit's position in a descent: the value's bits fixed so far (pfx, the
 * top 32 - sh bits), the weight and the count of the tokens above it. */
struct sa_pos {
	uint32_t pfx;
	int sh;
	unsigned long long wabove;
	unsigned cabove;
	unsigned ccnt;           /* the tokens in the bin found */
	unsigned long long cw;   /* and their weight */
};

__device__ __forceinline__ int sa_bits(int sh)
{
	return sh == 21 ? 11 : sh == 10 ? 11 : 10; /* digits at bits 21.., 10.., 0.. */
}

/* Zero the block's part of the smem histogram (nb bins). */
__device__ __forceinline__ void sa_clear(sa_smem *s, int nb)
{
	for (int i = threadIdx.x; i < nb; i += SA_T) {
		s->wlo[i] = 0;
		s->whi[i] = 0;
		s->c[i] = 0;
	}
	__syncthreads();
}

/* Add a token to the smem histogram: lanes of one bin count once; each adds
 * its weight (summing the peers' weights first, by __reduce_add_sync in
 * pieces, made the whole pick 3x slower on the H200). */
__device__ __forceinline__ void sa_add(sa_smem *s, bool ok, unsigned bin, unsigned long long w, bool wt)
{
	const int lane = threadIdx.x & 31;
	const unsigned peers = __match_any_sync(0xffffffffu, ok ? bin : 0x80000000u | (unsigned)lane);
	if (!ok)
		return;
	if (__ffs(peers) - 1 == lane)
		atomicAdd(&s->c[bin], (unsigned)__popc(peers));
	if (wt && w) {
		const unsigned lo = (unsigned)w, old = atomicAdd(&s->wlo[bin], lo);
		atomicAdd(&s->whi[bin], (unsigned)(w >> 32) + (old + lo < old));
	}
}

/* Add the smem histogram's nonzero bins to the global one (gw: none for
 * counts only). */
__device__ __forceinline__ void sa_flush(sa_smem *s, int nb, unsigned *gc, unsigned long long *gw)
{
	__syncthreads();
	for (int i = threadIdx.x; i < nb; i += SA_T)
		if (s->c[i]) {
			atomicAdd(gc + i, s->c[i]);
			const unsigned long long w = (unsigned long long)s->whi[i] << 32 | s->wlo[i];
			if (gw && w)
				atomicAdd(gw + i, w);
		}
}

/* After the barrier: the bin (from the top) of a global histogram of nb bins
 * where the running weight first exceeds t (wt; t relative to the digit's
 * start) or the running count first reaches t (counts only).  Every thread
 * gets the same answer in p: the bin's bits join pfx, the bins above join
 * wabove / cabove.  The bin exists: the caller's t is below the digit's
 * total. */
__device__ void sa_find(sa_smem *s, int nb, const unsigned *gc, const unsigned long long *gw, unsigned long long t,
			bool wt, sa_pos &p)
{
	const int per = nb / SA_T; /* 4 or 2 */
	unsigned c[4];
	unsigned long long w[4];
	unsigned cs = 0;
	unsigned long long ws = 0;
	for (int j = 0; j < per; j++) {
		const int bin = nb - 1 - (threadIdx.x * per + j); /* from the top */
		c[j] = __ldcg(gc + bin);
		w[j] = wt ? __ldcg(gw + bin) : 0;
		cs += c[j];
		ws += w[j];
	}
	unsigned cex;
	unsigned long long wex;
	cub::BlockScan<unsigned, SA_T>(s->scan.c).ExclusiveSum(cs, cex);
	__syncthreads();
	cub::BlockScan<unsigned long long, SA_T>(s->scan.w).ExclusiveSum(ws, wex);
	for (int j = 0; j < per; j++) {
		const bool hit = wt ? (wex <= t && t < wex + w[j]) : (cex < t && t <= cex + c[j]);
		if (hit) {
			s->bin = nb - 1 - (threadIdx.x * per + j);
			s->wabove = wex;
			s->cabove = cex;
			s->ccnt = c[j];
			s->cw = w[j];
		}
		cex += c[j];
		wex += w[j];
	}
	__syncthreads();
	p.pfx = p.pfx << sa_bits(p.sh) | (uint32_t)s->bin;
	p.wabove += s->wabove;
	p.cabove += s->cabove;
	p.ccnt = s->ccnt;
	p.cw = s->cw;
	__syncthreads();
}

__device__ __forceinline__ unsigned long long sa_weight(uint32_t key, double mx, int S)
{
	return lq_pick_weight(exp((double)kfloat(key) - mx), S);
}

/* A descent's global sums per digit (top, middle, low): counts, and weights
 * (NULL: counts only). */
struct sa_hist {
	unsigned *c[3];
	unsigned long long *w[3];
};

/*
 * A descent over the keys: the top digit from its sums (h's first, added
 * before the caller's last barrier), then the two lower digits, each a pass
 * over the tokens in the bin found, a barrier (bar) and a search.  The
 * result holds the whole key (pfx) with the weight and count above it and
 * its bin's.  wt: weights (t absolute: the first token whose cumulative
 * weight exceeds t), else counts (t: the position, from 1).
 */
template <int R, typename BAR>
__device__ sa_pos sa_descend(const uint32_t (&key)[R], sa_smem *s, BAR bar, unsigned long long t, bool wt, double mx,
			     int S, const sa_hist &h)
{
	sa_pos p = { 0, 21, 0, 0, 0, 0 };
	sa_find(s, SA_NB, h.c[0], h.w[0], t, wt, p);
	for (int lev = 1; lev < 3; lev++) {
		const int sh = lev == 2 ? 0 : 10, nb = lev == 2 ? 1024 : 2048;
		sa_clear(s, nb);
#pragma unroll
		for (int j = 0; j < R; j++) {
			const bool ok = key[j] && key[j] >> (sh + sa_bits(sh)) == p.pfx;
			const unsigned long long w = ok && wt ? sa_weight(key[j], mx, S) : 0;
			sa_add(s, ok, (key[j] >> sh) & (uint32_t)(nb - 1), w, wt);
		}
		/* not h.c[lev]: indexed at run time, h went to local memory (ptxas:
		 * 96-192 bytes of stack against 48) */
		unsigned *gc = lev == 2 ? h.c[2] : h.c[1];
		unsigned long long *gw = lev == 2 ? h.w[2] : h.w[1];
		sa_flush(s, nb, gc, wt ? gw : nullptr);
		bar();
		p.sh = sh;
		sa_find(s, nb, gc, gw, wt ? t - p.wabove : t - p.cabove, wt, p);
	}
	return p;
}

/* A block's sum of v in every thread. */
template <typename T>
__device__ __forceinline__ T sa_bsum(T v, T *red)
{
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	for (int o = 16; o; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	__syncthreads();
	if (lane == 0)
		red[warp] = v;
	__syncthreads();
	T tot = 0;
	for (int w = 0; w < SA_T / 32; w++)
		tot += red[w];
	return tot;
}

template <int R>
__global__ void __launch_bounds__(SA_T) k_sample_all(const float *l, int n, float temp, int top_k, double top_p,
						      double min_p, uint64_t *rng, int *stop, int32_t *out, sa_glob *g)
{
	__shared__ sa_smem s;
	__shared__ unsigned long long red[SA_T / 32];
	if (*(volatile const int *)stop)
		return;
	const int tid = threadIdx.x;
	const int base = blockIdx.x * SA_T * R;
	const bool topk = top_k > 0 && top_k < n;
	/* 0. zero the accumulators this call adds to after its first barrier */
	{
		uint32_t *z = (uint32_t *)&g->minw;
		const int nz = (int)((uint32_t *)(g + 1) - z);
		for (int i = blockIdx.x * SA_T + tid; i < nz; i += gridDim.x * SA_T)
			z[i] = 0;
	}
	uint64_t rs[4] = { rng[0], rng[1], rng[2], rng[3] }; /* read by all before the first barrier */
	/* 1. the keys (0: no token; no float's key is 0), the largest, a NaN;
	 * with top-k, the counts per top digit */
	uint32_t key[R];
	int nan = 0;
	sa_clear(&s, SA_NB);
#pragma unroll
	for (int j = 0; j < R; j++) {
		const int i = base + j * SA_T + tid;
		key[j] = 0;
		if (i < n) {
			const float v = __fdiv_rn(l[i], temp); /* lq_sample: logits[i] /= (float)T */
			if (v != v)
				nan = 1;
			else
				key[j] = lq_fkey(v);
		}
		if (topk)
			sa_add(&s, key[j] != 0, key[j] >> 21, 0, false);
	}
	nan = __syncthreads_or(nan);
	{
		unsigned m = 0;
#pragma unroll
		for (int j = 0; j < R; j++)
			m = max(m, key[j]);
		for (int o = 16; o; o >>= 1)
			m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
		if ((tid & 31) == 0 && m)
			atomicMax(&g->maxkey, m);
	}
	if (tid == 0 && nan)
		atomicOr(&g->nan, 1u);
	if (topk)
		sa_flush(&s, SA_NB, g->kc0, nullptr);
	int nbar = 0;
	/* pass 1's state is reset after the second barrier, when every block
	 * has read it; the generator's state is stored advanced then too */
	bool isnan = false;
	auto bar = [&]() {
		sa_barrier(g);
		if (++nbar == 2) {
			for (int i = blockIdx.x * SA_T + tid; i < SA_NB; i += gridDim.x * SA_T)
				g->kc0[i] = 0;
			if (blockIdx.x == 0 && tid == 0) {
				g->maxkey = 0;
				g->nan = 0;
				if (isnan) {
					*stop = 1; /* a NaN: the host sorts such rows its own way */
				} else {
					uint64_t a[4] = { rs[0], rs[1], rs[2], rs[3] };
					lq_xoshiro_next(a);
					for (int j = 0; j < 4; j++)
						rng[j] = a[j];
				}
			}
		}
	};
	bar();
	const uint32_t maxkey = __ldcg(&g->maxkey);
	isnan = __ldcg(&g->nan) != 0;
	if (isnan) {
		bar();
		return;
	}
	/* 2. top-k: the k-th largest key; the tokens below it drop out */
	int keep = n;
	if (topk) {
		const sa_hist h = { { g->kc0, g->kc[0], g->kc[1] }, { nullptr, nullptr, nullptr } };
		const sa_pos p = sa_descend<R>(key, &s, bar, (unsigned long long)top_k, false, 0.0, 0, h);
		keep = (int)(p.cabove + p.ccnt); /* ties with the k-th value kept */
#pragma unroll
		for (int j = 0; j < R; j++)
			if (key[j] < p.pfx)
				key[j] = 0;
	}
	/* 3. the weights' sums per top digit; min-p's kept count and weight */
	const int S = lq_pick_shift(keep);
	const double mx = (double)kfloat(maxkey);
	const unsigned long long w0 = sa_weight(maxkey, mx, S); /* the first token's: 2^S, or 0 for an infinite l_0 */
	{
		unsigned long long mw = 0, mc = 0;
		sa_clear(&s, SA_NB);
#pragma unroll
		for (int j = 0; j < R; j++) {
			unsigned long long w = 0;
			if (key[j]) {
				const double e = exp((double)kfloat(key[j]) - mx);
				w = lq_pick_weight(e, S);
				if (min_p > 0 && e >= min_p) {
					mw += w;
					mc++;
				}
			}
			sa_add(&s, key[j] != 0, key[j] >> 21, w, true);
		}
		sa_flush(&s, SA_NB, g->hc[0], g->hw[0]);
		if (min_p > 0) {
			mw = sa_bsum(mw, red);
			mc = sa_bsum(mc, red);
			if (tid == 0 && mc) {
				atomicAdd(&g->minw, mw);
				atomicAdd(&g->mincnt, (unsigned)mc);
			}
		}
	}
	bar();
	/* 4. the cut: k tokens kept, of weight W (the first k's) */
	unsigned long long total = 0;
	{
		unsigned long long tw = 0;
		for (int i = tid; i < SA_NB; i += SA_T)
			tw += __ldcg(&g->hw[0][i]);
		total = sa_bsum(tw, red);
	}
	long long k = keep;
	unsigned long long W = total;
	if (top_p > 0 && top_p < 1.0) {
		/* the first i >= 1 with P(i) >= total - lim, P(i) the first i's weight */
		const unsigned long long need = total - lq_pick_toplim(top_p, total);
		if (need <= w0) {
			k = 1;
			W = w0;
		} else {
			/* token j the first whose cumulative weight exceeds need - 1: k = j + 1 */
			const unsigned long long t = need - 1;
			const sa_hist h = { { g->hc[0], g->hc[1], g->hc[2] }, { g->hw[0], g->hw[1], g->hw[2] } };
			const sa_pos p = sa_descend<R>(key, &s, bar, t, true, mx, S, h);
			const unsigned long long wk = p.cw / p.ccnt, tt = (t - p.wabove) / wk;
			k = (long long)(p.cabove + tt) + 1;
			W = p.wabove + (tt + 1) * wk;
		}
	}
	if (min_p > 0) {
		const unsigned mc = __ldcg(&g->mincnt);
		const long long km = mc ? (long long)mc : 1;
		if (km < k) {
			k = km;
			W = mc ? __ldcg(&g->minw) : w0;
		}
	}
	/* 5. the draw: the first token whose cumulative weight exceeds r (W 0:
	 * the first token, the smallest id of the largest value) */
	uint64_t xs[4] = { rs[0], rs[1], rs[2], rs[3] };
	const uint64_t x = lq_xoshiro_next(xs);
	uint32_t kd = maxkey;
	unsigned long long td = 0, cnt = 0; /* the rank among kd's ties; their count (0: unknown) */
	if (W) {
		const unsigned long long r = lq_pick_target(x, W);
		const sa_hist h = { { g->hc[0], g->hc[3], g->hc[4] }, { g->hw[0], g->hw[3], g->hw[4] } };
		const sa_pos p = sa_descend<R>(key, &s, bar, r, true, mx, S, h);
		const unsigned long long wk = p.cw / p.ccnt;
		kd = p.pfx;
		td = (r - p.wabove) / wk;
		cnt = p.ccnt;
	}
	if (cnt == 1) {
#pragma unroll
		for (int j = 0; j < R; j++)
			if (key[j] == kd)
				*out = base + j * SA_T + tid;
		return;
	}
	/* ties: the td-th smallest id of value kd; blocks hold ascending ids */
	unsigned long long mine = 0;
#pragma unroll
	for (int j = 0; j < R; j++)
		mine += key[j] == kd;
	mine = sa_bsum(mine, red);
	if (tid == 0)
		g->tie[blockIdx.x] = (unsigned)mine;
	bar();
	unsigned long long before = 0;
	for (int b = tid; b < (int)blockIdx.x; b += SA_T)
		before += __ldcg(&g->tie[b]);
	before = sa_bsum(before, red);
	if (td < before || td >= before + mine)
		return;
	long long want = (long long)(td - before);
	const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
	for (int j = 0; j < R; j++) {
		const bool f = key[j] == kd;
		const unsigned bal = __ballot_sync(0xffffffffu, f);
		__syncthreads();
		if (lane == 0)
			red[warp] = __popc(bal);
		__syncthreads();
		unsigned long long pre = 0, tot = 0;
		for (int w = 0; w < SA_T / 32; w++) {
			pre += w < warp ? red[w] : 0;
			tot += red[w];
		}
		if (f && (long long)(pre + __popc(bal & ((1u << lane) - 1u))) == want)
			*out = base + j * SA_T + tid;
		want -= (long long)tot;
	}
}

/* The launch's kernels, by tokens a thread. */
#define SA_NK 5
typedef void (*sa_kernel)(const float *, int, float, int, double, double, uint64_t *, int *, int32_t *, sa_glob *);
static const struct {
	int r;
	sa_kernel k;
} sa_kern[] = { { 2, k_sample_all<2> }, { 4, k_sample_all<4> }, { 8, k_sample_all<8> }, { 16, k_sample_all<16> },
		{ 32, k_sample_all<32> } };
static_assert(sizeof sa_kern / sizeof sa_kern[0] == SA_NK, "sa_kern's entries");

/* The blocks of sa_kern[i] the device holds at once (at most SA_GMAX; 0:
 * no cooperative launch), per device, asked once (the first time outside a
 * graph's capture: lq_cuda_sample_all_scratch_size). */
static int sa_fit_of(int dev, int i)
{
	static int fit[64][SA_NK], known[64];
	if (dev < 0 || dev >= 64)
		return 0;
	if (!known[dev]) {
		int sms = 0, coop = 0;
		if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
		    cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess)
			return 0;
		for (int j = 0; j < SA_NK; j++) {
			int per = 0;
			if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, sa_kern[j].k, SA_T, 0) != cudaSuccess)
				return 0;
			fit[dev][j] = coop ? (int)min((int64_t)per * sms, (int64_t)SA_GMAX) : 0;
		}
		known[dev] = 1;
	}
	return fit[dev][i];
}

/* The cooperative grid for n logits on the current device: the kernel
 * (*ki, into sa_kern) of the fewest tokens a thread whose grid is at most
 * SA_MAXG blocks (few blocks at each barrier), else of the fewest whose
 * grid the device holds at once; returns the blocks, 0: none. */
static int sa_config(int64_t n, int *ki)
{
	int dev;
	if (cudaGetDevice(&dev) != cudaSuccess)
		return 0;
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < SA_NK; i++) {
			const int64_t per = (int64_t)SA_T * sa_kern[i].r, G = (n + per - 1) / per;
			if (G <= sa_fit_of(dev, i) && (pass || G <= SA_MAXG)) {
				*ki = i;
				return (int)G;
			}
		}
	return 0;
}

size_t lq_cuda_sample_all_scratch_size(int64_t n)
{
	int ki;
	if (n < 1 || n > LQ_CUDA_TOPK_NMAX || !sa_config(n, &ki))
		return 0;
	return sizeof(struct sa_glob);
}

int lq_cuda_sample_all(const float *d_logits, int64_t n, float temperature, int top_k, double top_p, double min_p,
		       uint64_t *d_rng, int *d_stop, int32_t *d_id, void *d_scratch, void *stream)
{
	if (n < 1 || n > LQ_CUDA_TOPK_NMAX || !(temperature > 0))
		return (int)cudaErrorInvalidValue;
	int ki;
	const int G = sa_config(n, &ki);
	if (!G)
		return (int)cudaErrorCooperativeLaunchTooLarge;
	cudaLaunchConfig_t cfg = {};
	cudaLaunchAttribute at[1];
	at[0].id = cudaLaunchAttributeCooperative;
	at[0].val.cooperative = 1;
	cfg.gridDim = dim3((unsigned)G);
	cfg.blockDim = dim3(SA_T);
	cfg.stream = (cudaStream_t)stream;
	cfg.attrs = at;
	cfg.numAttrs = 1;
	const cudaError_t e = cudaLaunchKernelEx(&cfg, sa_kern[ki].k, d_logits, (int)n, temperature, top_k, top_p, min_p,
						 d_rng, d_stop, d_id, (sa_glob *)d_scratch);
	return (int)(e != cudaSuccess ? e : cudaGetLastError());
}
