/* kn_cuda: the CUDA backend behind kn.h.
 *
 * Design note. This is the first, correctness-first slice: every op of the
 * interface, on one stream, with the same dequantizers as the CPU backends
 * (kernels/kn_dequant.h compiled as device code) and the same activation
 * formulas, so tests/unit/test_kn_ops.c can hold it to the scalar reference.
 * The units: this one (memory, the small ops, the ops table), kn_cuda_mm.cu
 * (matmul, get_rows) and kn_cuda_attn.cu (kv_store, attention); kn_cuda.h is
 * what they share.
 *
 * Every CUDA call is checked; a failure is a bug or a dead device, so
 * it is logged with its place and the worker aborts (the gateway respawns it). */
#include <math.h>
#include <string.h>

#include "kernels/cuda/kn_cuda.h"
#include "kernels/kn_act.h"

/* ---------------------------------------------------------------- memory */

static void *cu_alloc(kn_backend *be, size_t bytes) {
    void *p = NULL;
    KN_CUDA_CHECK(cudaSetDevice(cu(be)->device));
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        (void)cudaGetLastError(); // an out-of-memory is the caller's to handle, not sticky
        return NULL;
    }
    return p;
}

static void cu_free(kn_backend *be, void *p) {
    if (p)
        KN_CUDA_CHECK(cudaFree(p));
}

static void cu_drain(kn_cuda *c) {
    KN_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    c->stage_used = 0;
}

/* Through the staging buffer (kn_cuda.h), so the caller's buffer is free on return
 * and the copy is queued behind the ops before it, without a wait. */
static void cu_upload(kn_backend *be, void *dst, const void *src, size_t bytes) {
    kn_cuda *c = cu(be);
    while (bytes > 0) {
        if (c->stage_used == c->stage_bytes)
            cu_drain(c);
        const size_t n = bytes < c->stage_bytes - c->stage_used ? bytes : c->stage_bytes - c->stage_used;
        memcpy(c->stage + c->stage_used, src, n);
        KN_CUDA_CHECK(cudaMemcpyAsync(dst, c->stage + c->stage_used, n, cudaMemcpyHostToDevice, c->stream));
        c->stage_used += n;
        dst = (uint8_t *)dst + n;
        src = (const uint8_t *)src + n;
        bytes -= n;
    }
}

static void cu_download(kn_backend *be, void *dst, const void *src, size_t bytes) {
    KN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu(be)->stream));
    cu_drain(cu(be));
}

static void cu_zero(kn_backend *be, void *p, size_t bytes) {
    KN_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cu(be)->stream));
}

static void cu_sync(kn_backend *be) {
    cu_drain(cu(be));
}

static void cu_destroy(kn_backend *be) {
    kn_cuda *c = cu(be);
    KN_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    KN_CUDA_CHECK(cudaFreeHost(c->stage));
    KN_CUDA_CHECK(cudaFree(c->work));
    KN_CUDA_CHECK(cudaStreamDestroy(c->stream));
    free(c);
}

/* ---------------------------------------------------------------- norms, elementwise */

static __global__ void k_rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y) {
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *yr = y + (int64_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        ss += xr[i] * xr[i];
    const float inv = rsqrtf(block_sum(ss) / (float)n + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = xr[i] * inv * (w ? w[i] : 1.0f);
}

static void cu_rmsnorm(kn_backend *be, const float *x, const float *w, int64_t n_row, int64_t n, float eps,
                       float *y) {
    if (n_row <= 0)
        return;
    k_rmsnorm<<<(unsigned)n_row, 256, 0, cu(be)->stream>>>(x, w, n, eps, y);
    KN_LAUNCHED();
}

/* One block per row, each thread through the same strided elements in the three
 * passes (so a thread reads back only what it wrote): k_rmsnorm's sums and
 * products, the post-normed r never stored, the add rounded on its own (no
 * contraction into an FMA), as a k_rmsnorm into memory and an add would give. */
static __global__ void k_add_norm(float *x, const float *r, const float *r_w, const float *w, int64_t n, float eps,
                                  float *y) {
    float *xr = x + (int64_t)blockIdx.x * n;
    const float *rr = r + (int64_t)blockIdx.x * n;
    float inv_r = 1.0f;
    if (r_w) {
        float ss = 0.0f;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            ss += rr[i] * rr[i];
        inv_r = rsqrtf(block_sum(ss) / (float)n + eps);
    }
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = __fadd_rn(xr[i], r_w ? rr[i] * inv_r * r_w[i] : rr[i]);
        xr[i] = v;
        ss += v * v;
    }
    if (!y)
        return;
    const float inv = rsqrtf(block_sum(ss) / (float)n + eps);
    float *yr = y + (int64_t)blockIdx.x * n;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = xr[i] * inv * (w ? w[i] : 1.0f);
}

static void cu_add_norm(kn_backend *be, float *x, const float *r, const float *r_w, const float *w, int64_t n_row,
                        int64_t n, float eps, float *y) {
    if (n_row <= 0)
        return;
    k_add_norm<<<(unsigned)n_row, 256, 0, cu(be)->stream>>>(x, r, r_w, w, n, eps, y);
    KN_LAUNCHED();
}

/* One warp per (token, head), q's heads then k's: the head's RMS norm when it has
 * a weight (a warp sum; the normed values stored, then read back across lanes
 * after __syncwarp), then its pairs, lane i taking pairs i, i + 32, ...; theta and
 * its sine and cosine in double, as the reference computes them. */
static __global__ void k_rope(const kn_rope_args a) {
    const int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31, heads = a.n_head + a.n_kv_head, hd = a.head_dim;
    if (wid >= a.n_tok * heads) // the whole warp
        return;
    const int64_t t = wid / heads;
    const int h = (int)(wid % heads);
    float *v = h < a.n_head ? a.q + (t * a.n_head + h) * hd : a.k + (t * a.n_kv_head + h - a.n_head) * hd;
    const float *w = h < a.n_head ? a.q_norm : a.k_norm;
    if (w) {
        float ss = 0.0f;
        for (int i = lane; i < hd; i += 32)
            ss += v[i] * v[i];
        const float inv = rsqrtf(warp_sum(ss) / (float)hd + a.eps);
        for (int i = lane; i < hd; i += 32)
            v[i] = v[i] * inv * w[i];
        __syncwarp(); // a pair's other half may be another lane's
    }
    const int half = a.n_rot / 2;
    for (int i = lane; i < half; i += 32) {
        double theta = (double)a.pos[t] * a.freq_scale * pow((double)a.base, -2.0 * i / a.n_rot);
        if (a.freq_factors)
            theta /= a.freq_factors[i];
        double s, c;
        sincos(theta, &s, &c);
        const int p0 = a.mode == KN_ROPE_NEOX ? i : 2 * i, p1 = a.mode == KN_ROPE_NEOX ? i + half : 2 * i + 1;
        const double x0 = v[p0], x1 = v[p1];
        v[p0] = (float)(x0 * c - x1 * s);
        v[p1] = (float)(x0 * s + x1 * c);
    }
}

static void cu_rope(kn_backend *be, const kn_rope_args *a) {
    const int64_t warps = a->n_tok * (a->n_head + a->n_kv_head);
    if (warps <= 0)
        return;
    k_rope<<<(unsigned)((warps + 3) / 4), 128, 0, cu(be)->stream>>>(*a);
    KN_LAUNCHED();
}

static __global__ void k_glu(const float *g, const float *u, int64_t n, int act, float *y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = (act == 0 ? kn_silu(g[i]) : kn_gelu(g[i])) * u[i];
}

static void cu_glu(kn_backend *be, const float *g, const float *u, int64_t n, int act, float *y) {
    if (n <= 0)
        return;
    k_glu<<<(unsigned)((n + 255) / 256), 256, 0, cu(be)->stream>>>(g, u, n, act, y);
    KN_LAUNCHED();
}


static __global__ void k_softcap(float *x, int64_t n, float cap) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = cap * tanhf(x[i] / cap);
}

static void cu_softcap(kn_backend *be, float *x, int64_t n, float cap) {
    if (n <= 0)
        return;
    k_softcap<<<(unsigned)((n + 255) / 256), 256, 0, cu(be)->stream>>>(x, n, cap);
    KN_LAUNCHED();
}

/* ---------------------------------------------------------------- backend */

static void cu_mem_info(kn_backend *be, size_t *free_bytes, size_t *total_bytes) {
    KN_CUDA_CHECK(cudaSetDevice(cu(be)->device));
    KN_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

/* ---------------------------------------------------------------- graphs */

/* Thread-local capture: only this thread's CUDA calls are checked against the
 * capture (the worker drives its GPU from one thread). */
static void cu_capture_begin(kn_backend *be) {
    KN_CUDA_CHECK(cudaStreamBeginCapture(cu(be)->stream, cudaStreamCaptureModeThreadLocal));
}

static void *cu_capture_end(kn_backend *be) {
    cudaGraph_t g = NULL;
    cudaGraphExec_t exec = NULL;
    if (cudaStreamEndCapture(cu(be)->stream, &g) != cudaSuccess || !g) {
        (void)cudaGetLastError();
        return NULL;
    }
    const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    KN_CUDA_CHECK(cudaGraphDestroy(g));
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return exec;
}

static void cu_graph_launch(kn_backend *be, void *graph) {
    KN_CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)graph, cu(be)->stream));
}

static void cu_graph_free(kn_backend *be, void *graph) {
    if (graph)
        KN_CUDA_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)graph));
}

static const kn_backend_ops cuda_ops = {
    "cuda",           cu_destroy,     cu_alloc,        cu_free,       cu_upload,  cu_download,
    cu_zero,          cu_sync,        cu_matmul,       cu_get_rows,   cu_rmsnorm, cu_rope,
    cu_glu,           cu_add_norm,    cu_softcap,      cu_kv_store,   cu_attention, cu_sample,
    cu_mem_info,      cu_capture_begin, cu_capture_end, cu_graph_launch, cu_graph_free,
};

extern "C" int kn_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" kn_backend *kn_cuda_create(int device) {
    if (device < 0 || device >= kn_cuda_device_count())
        return NULL;
    kn_cuda *c = (kn_cuda *)calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->device = device;
    if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess) {
        (void)cudaGetLastError();
        free(c);
        return NULL;
    }
    const size_t ticket_bytes = KN_CUDA_TICKETS * sizeof(unsigned);
    if (cudaMalloc(&c->work, KN_CUDA_WORK_BYTES + ticket_bytes) != cudaSuccess ||
        cudaMemsetAsync((char *)c->work + KN_CUDA_WORK_BYTES, 0, ticket_bytes, c->stream) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(c->work);
        cudaStreamDestroy(c->stream);
        free(c);
        return NULL;
    }
    c->work_bytes = KN_CUDA_WORK_BYTES;
    c->ticket = (unsigned *)((char *)c->work + KN_CUDA_WORK_BYTES);
    if (cudaMallocHost(&c->stage, KN_CUDA_STAGE_BYTES) != cudaSuccess) {
        (void)cudaGetLastError();
        cudaFree(c->work);
        cudaStreamDestroy(c->stream);
        free(c);
        return NULL;
    }
    c->stage_bytes = KN_CUDA_STAGE_BYTES;
    c->base.ops = &cuda_ops;
    c->base.n_threads = 1;
    return &c->base;
}
