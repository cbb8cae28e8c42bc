/* kn_cuda_sample.cu: the sample op (kn.h) on the GPU, one block per row, so a
 * row's result never depends on the other rows of the batch.
 *
 * NOTE: the row is split into one contiguous segment per warp (a multiple of 32
 * tokens, so a step of the warp reads 32 consecutive logits and one mask word);
 * every sum is taken lane by lane in id order, then over the warp and the block in
 * a fixed tree, so a row's draw is the same on every run. The thresholds of top-k
 * and top-p (kn.h: the largest value with count, or mass, at or above it reaching
 * the target) come from a radix select on the order-preserving 32-bit image of the
 * logits, 4 bits a pass: each pass counts (and weighs) the tokens under the prefix
 * found so far in 16 cumulative bins held in registers, 8 passes for an exact
 * value. The draw is a prefix sum in id order: each warp's kept mass, then inside
 * the one warp whose segment holds the point u * kept, a warp scan per step. The
 * passes re-read the row (L2-resident at these sizes) instead of sorting it. */
#include <stdint.h>

#include "kernels/cuda/kn_cuda.h"
#include "kernels/kn_exp.h"

#define SB 512       // threads per row
#define NW (SB / 32) // warps per row

typedef struct smp_shared {
    uint32_t hc[NW][16]; // per-warp bins of a select pass
    float hw[NW][16];
    uint32_t gc[16]; // the block's bins
    float gw[16];
    float bv[NW]; // per-warp best (value, id)
    int bi[NW];
    float cw[NW]; // per-warp kept mass, in id order
    int ceq[NW];  // per-warp count of the top list's ties
    int n_gt;     // top list: entries above the threshold so far
    int pick;
    float raw;
    float tv[KN_MAX_TOP];
    int ti[KN_MAX_TOP];
} smp_shared;

/* The order-preserving image of a float (-0 as +0): key(a) >= key(b) iff a >= b,
 * for any two non-NaN floats; every float's key is above 0. */
static __device__ __forceinline__ uint32_t fkey(float f) {
    uint32_t u = __float_as_uint(f);
    if (u == 0x80000000u)
        u = 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* (value, index) a is ahead of b: larger, or equal and at a lower index. */
static __device__ __forceinline__ bool ahead(float va, int ia, float vb, int ib) {
    return va > vb || (va == vb && ia < ib);
}

/* The best (value, index) pair of the block, in every thread. */
static __device__ void block_best(float &v, int &i, smp_shared *sh) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ahead(ov, oi, v, i))
            v = ov, i = oi;
    }
    __syncthreads(); // sh->bv may still be read by a previous call
    if ((threadIdx.x & 31) == 0)
        sh->bv[threadIdx.x >> 5] = v, sh->bi[threadIdx.x >> 5] = i;
    __syncthreads();
    v = sh->bv[0], i = sh->bi[0];
    for (int w = 1; w < NW; w++)
        if (ahead(sh->bv[w], sh->bi[w], v, i))
            v = sh->bv[w], i = sh->bi[w];
}

static __device__ __forceinline__ uint32_t warp_sum_u(uint32_t v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Inclusive prefix sum over the warp's lanes. */
static __device__ __forceinline__ float warp_scan(float v) {
    const int lane = threadIdx.x & 31;
    for (int o = 1; o < 32; o <<= 1) {
        const float t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o)
            v += t;
    }
    return v;
}

/* The segment of this thread's warp: [lo, hi). */
struct seg_t {
    int64_t lo, hi;
};

static __device__ __forceinline__ seg_t warp_segment(int64_t n) {
    const int64_t seg = ((n + NW - 1) / NW + 31) / 32 * 32, lo = (threadIdx.x >> 5) * seg;
    return {lo < n ? lo : n, lo + seg < n ? lo + seg : n};
}

/* The mask word of the 32 tokens from b (a multiple of 32); every bit set when
 * mw is NULL. */
static __device__ __forceinline__ uint32_t mask_word(const uint32_t *mw, int64_t b) {
    return mw ? mw[b >> 5] : 0xffffffffu;
}

/* kn.h's thresholds as keys, over the tokens mw allows (NULL: all): key_k the
 * largest key v with count(key >= v) >= tk, key_p the largest with mass(key >= v)
 * >= fp * mass(all), mass w = kn_exp_neg((a - mx) * inv_t). Either is 0 (below
 * every float) when off: tk == 0 or tk >= the allowed count; fp >= 1. */
static __device__ void select_keys(const float *row, seg_t s, const uint32_t *mw, uint32_t tk, float fp, float mx,
                                   float inv_t, uint32_t *key_k, uint32_t *key_p, smp_shared *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    bool on_k = tk > 0, on_p = fp < 1.0f;
    uint32_t pk = 0, pp = 0, above_k = 0;
    float above_p = 0.0f, target_p = 0.0f;
    for (int shift = 28; shift >= 0 && (on_k || on_p); shift -= 4) {
        uint32_t c[16];
        float w[16];
#pragma unroll
        for (int d = 0; d < 16; d++)
            c[d] = 0, w[d] = 0.0f;
        for (int64_t b = s.lo; b < s.hi; b += 32) {
            const int64_t i = b + lane;
            if (i >= s.hi || !(mask_word(mw, b) >> lane & 1))
                continue;
            const float a = row[i];
            const uint32_t key = fkey(a), top = shift == 28 ? 0 : key >> (shift + 4), d = (key >> shift) & 15u;
            if (on_k && top == pk) {
#pragma unroll
                for (uint32_t e = 0; e < 16; e++)
                    c[e] += d >= e;
            }
            if (on_p && top == pp) {
                const float m = kn_exp_neg((a - mx) * inv_t);
#pragma unroll
                for (uint32_t e = 0; e < 16; e++)
                    w[e] += d >= e ? m : 0.0f;
            }
        }
#pragma unroll
        for (int d = 0; d < 16; d++) {
            c[d] = warp_sum_u(c[d]);
            w[d] = warp_sum(w[d]);
        }
        if (lane == 0) {
#pragma unroll
            for (int d = 0; d < 16; d++)
                sh->hc[warp][d] = c[d], sh->hw[warp][d] = w[d];
        }
        __syncthreads();
        if (threadIdx.x < 16) {
            uint32_t t = 0;
            for (int v = 0; v < NW; v++)
                t += sh->hc[v][threadIdx.x];
            sh->gc[threadIdx.x] = t;
        } else if (threadIdx.x < 32) {
            float t = 0.0f;
            for (int v = 0; v < NW; v++)
                t += sh->hw[v][threadIdx.x - 16];
            sh->gw[threadIdx.x - 16] = t;
        }
        __syncthreads();
#pragma unroll
        for (int d = 0; d < 16; d++)
            c[d] = sh->gc[d], w[d] = sh->gw[d];
        if (shift == 28) {
            on_k = on_k && tk < c[0];
            target_p = fp * w[0];
        }
        // The highest bin whose tokens, with those above the prefix, reach the target.
        bool found_k = !on_k, found_p = !on_p;
        uint32_t dk = 0, dp = 0, next_k = above_k;
        float next_p = above_p;
#pragma unroll
        for (int d = 15; d >= 0; d--) {
            if (!found_k && above_k + c[d] >= tk) {
                found_k = true;
                dk = (uint32_t)d;
                next_k = above_k + (d < 15 ? c[d + 1] : 0u);
            }
            if (!found_p && w[d] > 0.0f && above_p + w[d] >= target_p) { // a bin with mass (top_p 0 too)
                found_p = true;
                dp = (uint32_t)d;
                next_p = above_p + (d < 15 ? w[d + 1] : 0.0f);
            }
        }
        if (!found_p) // rounding: the target is above the prefix's mass; take its lowest bin
            next_p = above_p + w[1];
        above_k = next_k, above_p = next_p;
        pk = pk << 4 | dk, pp = pp << 4 | dp;
    }
    *key_k = on_k ? pk : 0;
    *key_p = on_p ? pp : 0;
}

/* The k (1..KN_MAX_TOP) largest raw logits, ties to the lower id, into sh->tv/ti
 * sorted (thread 0 sorts). */
static __device__ void top_list(const float *row, seg_t s, int k, smp_shared *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t kt, unused;
    select_keys(row, s, NULL, (uint32_t)k, 1.0f, 0.0f, 1.0f, &kt, &unused, sh);
    if (threadIdx.x == 0)
        sh->n_gt = 0;
    __syncthreads();
    int n_eq = 0;
    for (int64_t b = s.lo; b < s.hi; b += 32) {
        const int64_t i = b + lane;
        const uint32_t key = i < s.hi ? fkey(row[i]) : 0;
        if (i < s.hi && key > kt) {
            const int slot = atomicAdd(&sh->n_gt, 1);
            sh->tv[slot] = row[i];
            sh->ti[slot] = (int)i;
        }
        n_eq += __popc(__ballot_sync(0xffffffffu, i < s.hi && key == kt));
    }
    if (lane == 0)
        sh->ceq[warp] = n_eq;
    __syncthreads();
    const int n_gt = sh->n_gt, need = k - n_gt;
    int base = 0;
    for (int v = 0; v < warp; v++)
        base += sh->ceq[v];
    for (int64_t b = s.lo; b < s.hi && base < need; b += 32) { // the ties, lowest ids first
        const int64_t i = b + lane;
        const bool eq = i < s.hi && fkey(row[i]) == kt;
        const uint32_t bal = __ballot_sync(0xffffffffu, eq);
        const int rank = base + __popc(bal & ((1u << lane) - 1u));
        if (eq && rank < need) {
            sh->tv[n_gt + rank] = row[i];
            sh->ti[n_gt + rank] = (int)i;
        }
        base += __popc(bal);
    }
    __syncthreads();
    if (threadIdx.x == 0)
        for (int a = 1; a < k; a++) // insertion sort: value descending, id ascending
            for (int b = a; b > 0 && ahead(sh->tv[b], sh->ti[b], sh->tv[b - 1], sh->ti[b - 1]); b--) {
                const float tv = sh->tv[b];
                const int ti = sh->ti[b];
                sh->tv[b] = sh->tv[b - 1], sh->ti[b] = sh->ti[b - 1];
                sh->tv[b - 1] = tv, sh->ti[b - 1] = ti;
            }
    __syncthreads();
}

/* The draw of kn.h at temperature 1 / inv_t, best = (mx, best_id) the greedy
 * choice. */
static __device__ int draw(const float *row, seg_t s, const uint32_t *mw, const kn_sample_params &p, float mx,
                           int best_id, smp_shared *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float inv_t = 1.0f / p.temperature;
    uint32_t key_k, key_p;
    select_keys(row, s, mw, p.top_k > 0 ? (uint32_t)p.top_k : 0u, p.top_p, mx, inv_t, &key_k, &key_p, sh);
    const uint32_t tau = key_k > key_p ? key_k : key_p;
    // w of token i if kept, else 0; the last kept id with w > 0 on the way.
    int last = -1;
    auto kept_w = [&](int64_t b) -> float {
        const int64_t i = b + lane;
        if (i >= s.hi || !(mask_word(mw, b) >> lane & 1))
            return 0.0f;
        const float a = row[i];
        const float w = kn_exp_neg((a - mx) * inv_t);
        if (fkey(a) < tau || !(w >= p.min_p))
            return 0.0f;
        if (w > 0.0f)
            last = (int)i;
        return w;
    };
    float carry = 0.0f;
    for (int64_t b = s.lo; b < s.hi; b += 32)
        carry += __shfl_sync(0xffffffffu, warp_scan(kept_w(b)), 31);
    if (lane == 0)
        sh->cw[warp] = carry;
    if (threadIdx.x == 0)
        sh->pick = -1;
    __syncthreads();
    float kept = 0.0f;
    for (int v = 0; v < NW; v++)
        kept += sh->cw[v];
    const float r = p.u * kept;
    float before = 0.0f; // kept mass of the warps below
    int star = -1;
    for (int v = 0; v < NW && star < 0; v++) {
        if (before + sh->cw[v] > r)
            star = v;
        else
            before += sh->cw[v];
    }
    if (warp == star) { // the same sums again, up to the point
        carry = 0.0f;
        for (int64_t b = s.lo; b < s.hi; b += 32) {
            const float w = kept_w(b), incl = warp_scan(w);
            const uint32_t bal = __ballot_sync(0xffffffffu, before + (carry + incl) > r);
            const uint32_t pos = __ballot_sync(0xffffffffu, w > 0.0f);
            if (bal) {
                // The scan's sums are grouped differently lane by lane, so they need not
                // grow with the lane: the first lane past r can be a token of weight 0
                // one rounding step up. The draw is the last lane of weight > 0 at or
                // before it (there is one: lanes of weight 0 ahead of every other add
                // exactly 0 and cannot pass r).
                const int first = __ffs((int)bal) - 1;
                const uint32_t upto = pos & (0xffffffffu >> (31 - first));
                if (lane == 0)
                    sh->pick = (int)b + 31 - __clz((int)upto);
                break;
            }
            carry += __shfl_sync(0xffffffffu, incl, 31);
        }
    }
    __syncthreads();
    if (sh->pick >= 0)
        return sh->pick;
    // Rounding left no point: the last kept id with w > 0, else the greedy choice.
    float lv = last >= 0 ? 0.0f : -1.0f;
    int li = last >= 0 ? -last : 0;
    block_best(lv, li, sh); // ahead: the largest id first
    return lv >= 0.0f ? -li : best_id;
}

static __global__ void __launch_bounds__(SB)
    k_sample(float *x, int64_t n, const kn_sample_params *pp, const int32_t *adj_off, const int32_t *adj_id,
             float *adj_val, const uint32_t *mask, kn_sample_out *out) {
    __shared__ smp_shared sh;
    float *row = x + (int64_t)blockIdx.x * n;
    const kn_sample_params p = pp[blockIdx.x];
    kn_sample_out *o = out + blockIdx.x;
    const seg_t s = warp_segment(n);
    const int lane = threadIdx.x & 31;

    double lse = 0.0;
    if (p.n_top >= 0) { // the raw row's log-softmax and its top list
        float mxr = -INFINITY;
        for (int64_t i = s.lo + lane; i < s.hi; i += 32)
            mxr = fmaxf(mxr, row[i]);
        __shared__ float red[NW];
        mxr = warp_max(mxr);
        if (lane == 0)
            red[threadIdx.x >> 5] = mxr;
        __syncthreads();
        mxr = red[0];
        for (int v = 1; v < NW; v++)
            mxr = fmaxf(mxr, red[v]);
        float se = 0.0f;
        for (int64_t i = s.lo + lane; i < s.hi; i += 32)
            se += kn_exp_neg((row[i] - mxr) * 1.0f);
        se = block_sum(se);
        lse = (double)mxr + log((double)se);
        int k = p.n_top < KN_MAX_TOP ? p.n_top : KN_MAX_TOP;
        k = (int64_t)k < n ? k : (int)n;
        if (k > 0) {
            top_list(row, s, k, &sh);
            if (threadIdx.x < k) {
                o->top_id[threadIdx.x] = sh.ti[threadIdx.x];
                o->top_lp[threadIdx.x] = (float)((double)sh.tv[threadIdx.x] - lse);
            }
        }
        __syncthreads();
    }

    const int32_t a0 = adj_off ? adj_off[blockIdx.x] : 0, na = adj_off ? adj_off[blockIdx.x + 1] - a0 : 0;
    for (int32_t j = threadIdx.x; j < na; j += SB) { // distinct ids: no two threads meet
        const int32_t t = adj_id[a0 + j];
        const float raw = row[t];
        row[t] = raw + adj_val[a0 + j];
        adj_val[a0 + j] = raw;
    }
    __syncthreads();

    const uint32_t *mw = p.mask >= 0 ? mask + (size_t)p.mask * (size_t)((n + 31) / 32) : NULL;
    float bv = -INFINITY;
    int bi = INT32_MAX;
    for (int64_t b = s.lo; b < s.hi; b += 32) {
        const int64_t i = b + lane;
        if (i < s.hi && (mask_word(mw, b) >> lane & 1) && (bi == INT32_MAX || row[i] > bv))
            bv = row[i], bi = (int)i;
    }
    block_best(bv, bi, &sh);
    int id = bi == INT32_MAX ? -1 : bi;
    if (id >= 0 && p.temperature > 0.0f && p.top_k != 1)
        id = draw(row, s, mw, p, bv, bi, &sh);

    if (p.n_top >= 0 && id >= 0) { // the raw logit of id: saved in adj_val if adjusted
        if (threadIdx.x == 0)
            sh.raw = row[id];
        __syncthreads();
        for (int32_t j = threadIdx.x; j < na; j += SB)
            if (adj_id[a0 + j] == id)
                sh.raw = adj_val[a0 + j];
        __syncthreads();
        if (threadIdx.x == 0)
            o->logprob = (float)((double)sh.raw - lse);
    }
    if (threadIdx.x == 0)
        o->id = id;
}

void cu_sample(kn_backend *be, float *x, int64_t n_row, int64_t n, const kn_sample_params *p, const int32_t *adj_off,
               const int32_t *adj_id, float *adj_val, const uint32_t *mask, kn_sample_out *out) {
    if (n_row <= 0 || n <= 0)
        return;
    k_sample<<<(unsigned)n_row, SB, 0, cu(be)->stream>>>(x, n, p, adj_off, adj_id, adj_val, mask, out);
    KN_LAUNCHED();
}
