/* gpu_bench: the GPU's two ceilings, the CUDA backend's matmul, decode attention and
 * sampling.
 *
 *   gpu_bench [--json FILE] [--seqs N] [--copy-mib M] [--gemm N] [--reps R]
 *             [--kv-budget-gib G] [--seq-len L]
 *
 * Measures, on device 0 (issue 6, "The GPU worker"; numbers go to bench/RESULTS.md):
 *   copy       cudaMemcpyAsync device to device of a --copy-mib buffer (1 GiB).
 *              Convention: bytes read + bytes written per second (2 x size / time),
 *              the total DRAM traffic, comparable to the HBM spec sheet figure.
 *   read       cublasSasum over the same buffer: bytes read per second of a
 *              read-only kernel (a second, read-only ceiling; informational).
 *   gemm       cublasGemmEx N x N x N (8192), BF16 in and out, CUBLAS_COMPUTE_32F:
 *              2 N^3 / time in TFLOP/s. The backend itself does not use cuBLAS; this
 *              is the compute ceiling only.
 *   matmul     the backend's matmul of one Llama-3.1-8B FFN projection (14336 x 4096)
 *              in BF16, E4M3 (--quantization fp8: a scale per row) and Q4_K (the
 *              GGUF default) over 1, 8, 64, 256 and 1024
 *              tokens of f32 activations, host-timed like attention, against
 *              cublasGemmEx of the same shape (BF16 weights and activations, f32
 *              out, CUDA events) in the same run: weight bytes read once / time and
 *              its fraction of copy (the decode roofline), TFLOP/s and cuBLAS's
 *              time over ours (> 1: ours is faster; ours carries each value as two
 *              bf16 and is batch-invariant, cuBLAS rounds activations to bf16).
 *   attention  the kn backend's kv_store then attention for one layer of a
 *              Llama-3.1-8B shape (32 heads over 8 KV heads of 128, block size 16),
 *              --seqs sequences (16) of one decode token each, at contexts 1024,
 *              8192 and 32768, KV in BF16 and E4M3. Bandwidth = the KV bytes the
 *              call must read (every position of every sequence's K and V once:
 *              seqs x ctx x 8 x 2 x head bytes, the E4M3 record's f32 scale
 *              included) / time; its fraction is of the copy bandwidth above
 *              (read+written convention). The block tables are a shuffled
 *              permutation of the pool, as a long-running paged cache ends up.
 *   sample     the backend's sample op over 1, 64 and 256 rows of a 262144-token
 *              vocabulary (Gemma 3): greedy, temperature 1, and temperature 1 with
 *              top_p 0.9, top_k 40, min_p 0.01. Bandwidth = the rows' logits bytes
 *              once / time (host-timed like attention); its fraction is of copy.
 *   capacity   sequences of --seq-len (2048) tokens that fit a --kv-budget-gib
 *              (40 GiB) KV pool of an 8B shape (32 layers, 8 KV heads of 128) in BF16
 *              and E4M3, in whole blocks of 16, and their ratio: arithmetic on the
 *              pool's per-token bytes (wk_kv_head_bytes' formula), no device needed.
 *
 * Timing: copy, read and gemm use CUDA events on this program's stream, after
 * warm-ups, the median of --reps (10) single calls. The backend's ops run on its
 * own stream, which kn.h does not expose, so attention and sample are timed on the host: a
 * sample is a sync, r back-to-back calls, a sync (r so a sample takes >= 20 ms);
 * the median of up to 7 samples divided by r (launches are queued while the GPU is
 * busy, so this is the GPU time per call for calls of more than a few us).
 *
 * Prints one line per measurement and, with --json, the same as JSON. With no CUDA
 * device: prints the capacity, says so and exits 2 (the JSON then has "error"). */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kn.h"
#include "kernels/kn_fp8.h"
#include "kernels/kn_half.h"

#define CK(call)                                                                                               \
    do {                                                                                                       \
        cudaError_t e_ = (call);                                                                               \
        if (e_ != cudaSuccess) {                                                                               \
            fprintf(stderr, "gpu_bench: %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                           \
        }                                                                                                      \
    } while (0)

#define CKB(call)                                                                                              \
    do {                                                                                                       \
        cublasStatus_t s_ = (call);                                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                     \
            fprintf(stderr, "gpu_bench: %s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, (int)s_);  \
            exit(1);                                                                                           \
        }                                                                                                      \
    } while (0)

// The attention shape: one layer of Llama-3.1-8B.
enum { N_HEAD = 32, N_KV = 8, HEAD_DIM = 128, BLOCK = 16, N_CTX = 3 };
static const int CTXS[N_CTX] = {1024, 8192, 32768};
// The capacity shape: the KV of an 8B model (Llama-3.1-8B: 32 layers).
enum { CAP_LAYERS = 32 };
// The sample shape: Gemma 3's vocabulary, decode batches of 1, 64 and 256 rows.
enum { SMP_VOCAB = 262144, N_SMP_ROWS = 3, N_SMP_MODES = 3 };
static const int SMP_ROWS[N_SMP_ROWS] = {1, 64, 256};
static const char *const SMP_MODES[N_SMP_MODES] = {"greedy", "t1", "t1 p.9 k40"};
// The matmul shape: Llama-3.1-8B's gate (or up) projection, at decode and prefill batches.
enum { MM_IN = 4096, MM_OUT = 14336, N_MM_TOK = 5, N_MM_TYPE = 3 };
static const int MM_TOKS[N_MM_TOK] = {1, 8, 64, 256, 1024};
static const kn_type MM_TYPES[N_MM_TYPE] = {KN_BF16, KN_E4M3, KN_Q4_K};

typedef struct opts {
    const char *json;
    int seqs, gemm_n, reps, seq_len;
    size_t copy_bytes;
    double kv_budget_gib;
} opts;

typedef struct attn_result {
    kn_type type;
    int ctx;
    double ms, gbps, frac; // per call (kv_store + attention); KV bytes read / s; of copy GB/s
    double bytes;
    int finite; // every output element finite
} attn_result;

typedef struct smp_result {
    int mode, rows;
    double ms, gbps, frac; // per call; logits bytes once / s; of copy GB/s
    int valid;             // every token in the vocabulary
} smp_result;

typedef struct mm_result {
    kn_type type;
    int tok;
    double ms, wgbps, wfrac, tflops, vs_cublas; // per call; weight bytes / s; of copy; cuBLAS ms / ours
    int finite;
} mm_result;

typedef struct results {
    char device[256];
    int sm_count, cc_major, cc_minor;
    double mem_gib;
    double copy_ms, copy_gbps, read_ms, read_gbps, gemm_ms, gemm_tflops;
    double mm_cublas_ms[N_MM_TOK];
    mm_result mm[N_MM_TYPE * N_MM_TOK];
    int n_mm;
    attn_result attn[2 * N_CTX];
    int n_attn;
    smp_result smp[N_SMP_MODES * N_SMP_ROWS];
    int n_smp;
    // capacity
    double cap_tok_bytes[2];
    long cap_seqs[2];
    double cap_ratio;
} results;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A deterministic pseudo-random stream (xorshift64*), the same on every run. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_u64(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static float rng_unit(void) { // in [-1, 1)
    return (float)((double)(rng_u64() >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* ---------------------------------------------------------------- options */

static void usage(void) {
    fprintf(stderr, "usage: gpu_bench [--json FILE] [--seqs N (16)] [--copy-mib M (1024)] [--gemm N (8192)]\n"
                    "                 [--reps R (10)] [--kv-budget-gib G (40)] [--seq-len L (2048)]\n");
}

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, opts *o) {
    *o = (opts){.seqs = 16, .gemm_n = 8192, .reps = 10, .seq_len = 2048, .copy_bytes = (size_t)1 << 30,
                .kv_budget_gib = 40.0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            exit(0);
        }
        static const char *known[] = {"--json", "--seqs", "--copy-mib", "--gemm", "--reps", "--seq-len",
                                      "--kv-budget-gib"};
        int is_known = 0;
        for (size_t k = 0; k < sizeof known / sizeof *known; k++)
            is_known |= !strcmp(a, known[k]);
        if (!is_known) {
            fprintf(stderr, "gpu_bench: unknown option %s\n", a);
            usage();
            return -1;
        }
        if (!v) {
            fprintf(stderr, "gpu_bench: %s needs a value\n", a);
            return -1;
        }
        i++;
        int bad = 0;
        if (!strcmp(a, "--json"))
            o->json = v;
        else if (!strcmp(a, "--seqs"))
            bad = parse_long(v, 1, 1024, &n), o->seqs = (int)n;
        else if (!strcmp(a, "--copy-mib"))
            bad = parse_long(v, 1, 1 << 17, &n), o->copy_bytes = (size_t)n << 20;
        else if (!strcmp(a, "--gemm"))
            bad = parse_long(v, 256, 32768, &n), o->gemm_n = (int)n;
        else if (!strcmp(a, "--reps"))
            bad = parse_long(v, 1, 1000, &n), o->reps = (int)n;
        else if (!strcmp(a, "--seq-len"))
            bad = parse_long(v, 1, 1 << 24, &n), o->seq_len = (int)n;
        else if (!strcmp(a, "--kv-budget-gib")) {
            char *end;
            o->kv_budget_gib = strtod(v, &end);
            bad = end == v || *end || !(o->kv_budget_gib > 0 && o->kv_budget_gib < 1e6);
        }
        if (bad) {
            fprintf(stderr, "gpu_bench: bad value for %s: %s\n", a, v);
            return -1;
        }
    }
    // cublasSasum takes an int count of floats.
    if (o->copy_bytes / sizeof(float) > 0x7fffffff) {
        fprintf(stderr, "gpu_bench: --copy-mib too large for cublasSasum's int count\n");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- capacity */

/* Bytes of one token's K and V in every layer (wk_kv_head_bytes per head). */
static double kv_token_bytes(kn_type t, int n_layer, int n_kv, int head_dim) {
    const double head = t == KN_E4M3 ? (double)kn_e4m3_rec_bytes(head_dim) : 2.0 * head_dim;
    return 2.0 * n_layer * n_kv * head;
}

static void capacity(const opts *o, results *r) {
    static const kn_type types[2] = {KN_BF16, KN_E4M3};
    const long blocks_per_seq = ((long)o->seq_len + BLOCK - 1) / BLOCK;
    const double budget = o->kv_budget_gib * (double)(1u << 30);
    for (int i = 0; i < 2; i++) {
        r->cap_tok_bytes[i] = kv_token_bytes(types[i], CAP_LAYERS, N_KV, HEAD_DIM);
        const double per_seq = (double)blocks_per_seq * BLOCK * r->cap_tok_bytes[i];
        r->cap_seqs[i] = (long)floor(budget / per_seq);
        printf("capacity %-5s %.0f bytes/token, %ld sequences of %d tokens in %.0f GiB\n", kn_type_name(types[i]),
               r->cap_tok_bytes[i], r->cap_seqs[i], o->seq_len, o->kv_budget_gib);
    }
    r->cap_ratio = r->cap_seqs[0] ? (double)r->cap_seqs[1] / (double)r->cap_seqs[0] : 0.0;
    printf("capacity e4m3/bf16 %.3fx (8B shape: %d layers, %d KV heads of %d, blocks of %d)\n", r->cap_ratio,
           CAP_LAYERS, N_KV, HEAD_DIM, BLOCK);
}

/* ---------------------------------------------------------------- ceilings (CUDA events) */

static void *host_alloc(size_t bytes) {
    void *p = malloc(bytes);
    if (!p) {
        fprintf(stderr, "gpu_bench: out of memory\n");
        exit(1);
    }
    return p;
}

/* Median ms of reps timed calls of what (after 3 warm-ups), each between events. */
typedef void (*timed_fn)(void *ctx, cudaStream_t s);

static double time_events(timed_fn what, void *ctx, cudaStream_t s, int reps) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++)
        what(ctx, s);
    CK(cudaStreamSynchronize(s));
    double *ms = host_alloc(sizeof(double) * (size_t)reps);
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(e0, s));
        what(ctx, s);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float f = 0;
        CK(cudaEventElapsedTime(&f, e0, e1));
        ms[i] = f;
    }
    const double m = median(ms, reps);
    free(ms);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return m;
}

typedef struct copy_ctx {
    void *dst, *src;
    size_t bytes;
    cublasHandle_t h;
    float *asum; // device result of cublasSasum
} copy_ctx;

static void do_copy(void *p, cudaStream_t s) {
    copy_ctx *c = p;
    CK(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, s));
}

static void do_asum(void *p, cudaStream_t s) {
    copy_ctx *c = p;
    CKB(cublasSasum(c->h, (int)(c->bytes / sizeof(float)), c->src, 1, c->asum));
}

typedef struct gemm_ctx {
    cublasHandle_t h;
    void *a, *b, *c;
    int n;
} gemm_ctx;

static void do_gemm(void *p, cudaStream_t s) {
    gemm_ctx *g = p;
    const float alpha = 1.0f, beta = 0.0f;
    CKB(cublasGemmEx(g->h, CUBLAS_OP_N, CUBLAS_OP_N, g->n, g->n, g->n, &alpha, g->a, CUDA_R_16BF, g->n, g->b,
                     CUDA_R_16BF, g->n, &beta, g->c, CUDA_R_16BF, g->n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* y = W x at the matmul shape: W [MM_OUT, MM_IN] row-major is the column-major
 * MM_IN x MM_OUT matrix, transposed; x [n, MM_IN] and y [n, MM_OUT] are column-major
 * MM_IN x n and MM_OUT x n. */
typedef struct proj_ctx {
    cublasHandle_t h;
    void *w, *x;
    float *y;
    int n;
} proj_ctx;

static void do_proj(void *p, cudaStream_t s) {
    proj_ctx *g = p;
    const float alpha = 1.0f, beta = 0.0f;
    CKB(cublasGemmEx(g->h, CUBLAS_OP_T, CUBLAS_OP_N, MM_OUT, g->n, MM_IN, &alpha, g->w, CUDA_R_16BF, MM_IN, g->x,
                     CUDA_R_16BF, MM_IN, &beta, g->y, CUDA_R_32F, MM_OUT, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* bf16 buffer of n random values in [-1, 1) on the device. */
static void *random_bf16(size_t n) {
    uint16_t *host = host_alloc(n * sizeof(uint16_t));
    void *d = NULL;
    for (size_t i = 0; i < n; i++)
        host[i] = kn_f32_to_bf16(rng_unit());
    CK(cudaMalloc(&d, n * sizeof(uint16_t)));
    CK(cudaMemcpy(d, host, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
    free(host);
    return d;
}

/* The peer of the matmul bench: cuBLAS at the same shape and token counts. */
static void cublas_proj(const opts *o, results *r, cudaStream_t s, cublasHandle_t h) {
    const int max_tok = MM_TOKS[N_MM_TOK - 1];
    proj_ctx g = {.h = h, .w = random_bf16((size_t)MM_OUT * MM_IN), .x = random_bf16((size_t)max_tok * MM_IN)};
    CK(cudaMalloc((void **)&g.y, sizeof(float) * (size_t)max_tok * MM_OUT));
    for (int k = 0; k < N_MM_TOK; k++) {
        g.n = MM_TOKS[k];
        r->mm_cublas_ms[k] = time_events(do_proj, &g, s, o->reps);
        printf("cublas    %d x %d BF16 x %4d tokens: %.4f ms, %.1f TFLOP/s\n", MM_OUT, MM_IN, g.n,
               r->mm_cublas_ms[k], 2.0 * MM_OUT * MM_IN * g.n / (r->mm_cublas_ms[k] * 1e-3) / 1e12);
    }
    CK(cudaFree(g.w));
    CK(cudaFree(g.x));
    CK(cudaFree(g.y));
}

static void ceilings(const opts *o, results *r, cudaStream_t s, cublasHandle_t h) {
    copy_ctx c = {.bytes = o->copy_bytes, .h = h};
    CK(cudaMalloc(&c.src, c.bytes));
    CK(cudaMalloc(&c.dst, c.bytes));
    CK(cudaMalloc((void **)&c.asum, sizeof(float)));
    // Touch both buffers so that the first copy does not pay for mapping pages.
    CK(cudaMemsetAsync(c.src, 0, c.bytes, s));
    CK(cudaMemsetAsync(c.dst, 0, c.bytes, s));
    r->copy_ms = time_events(do_copy, &c, s, o->reps);
    r->copy_gbps = 2.0 * (double)c.bytes / (r->copy_ms * 1e-3) / 1e9;
    printf("copy      %.0f MiB D2D: %.3f ms, %.0f GB/s read+written (%.0f GB/s each way)\n",
           (double)c.bytes / (1 << 20), r->copy_ms, r->copy_gbps, r->copy_gbps / 2);
    CKB(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE)); // no host sync per call
    r->read_ms = time_events(do_asum, &c, s, o->reps);
    r->read_gbps = (double)c.bytes / (r->read_ms * 1e-3) / 1e9;
    printf("read      %.0f MiB cublasSasum: %.3f ms, %.0f GB/s read\n", (double)c.bytes / (1 << 20), r->read_ms,
           r->read_gbps);
    CKB(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
    CK(cudaFree(c.src));
    CK(cudaFree(c.dst));
    CK(cudaFree(c.asum));

    // Random values (zeros would run at a lower power draw, so a higher clock).
    const size_t elems = (size_t)o->gemm_n * (size_t)o->gemm_n;
    gemm_ctx g = {.h = h, .n = o->gemm_n, .a = random_bf16(elems), .b = random_bf16(elems)};
    CK(cudaMalloc(&g.c, elems * sizeof(uint16_t)));
    r->gemm_ms = time_events(do_gemm, &g, s, o->reps);
    r->gemm_tflops = 2.0 * (double)g.n * g.n * g.n / (r->gemm_ms * 1e-3) / 1e12;
    printf("gemm      %d^3 BF16, f32 compute (cublasGemmEx): %.3f ms, %.0f TFLOP/s\n", g.n, r->gemm_ms,
           r->gemm_tflops);
    CK(cudaFree(g.a));
    CK(cudaFree(g.b));
    CK(cudaFree(g.c));
    cublas_proj(o, r, s, h);
}

/* ---------------------------------------------------------------- decode attention (kn backend) */

static void *be_alloc(kn_backend *be, size_t bytes) {
    void *p = be->ops->alloc(be, bytes);
    if (!p) {
        fprintf(stderr, "gpu_bench: cannot allocate %.1f MiB on the device\n", (double)bytes / (1 << 20));
        exit(1);
    }
    return p;
}

/* Seconds per call of call(ctx) (backend ops): host-timed samples of r calls
 * between syncs, the median of up to 7. */
static double time_host(kn_backend *be, void (*call)(void *), void *ctx) {
    const kn_backend_ops *op = be->ops;
    double t0 = 0;
    // Two warm-ups (the first launch of a kernel loads its module), then an estimate
    // of one call from three.
    for (int i = 0; i < 5; i++) {
        if (i == 2) {
            op->sync(be);
            t0 = now_s();
        }
        call(ctx);
    }
    op->sync(be);
    const double est = (now_s() - t0) / 3;
    int r = (int)(0.02 / (est > 1e-6 ? est : 1e-6)) + 1;
    r = r > 1000 ? 1000 : r;
    int n = (int)(3.0 / (est * r)); // about 3 s at most per configuration
    n = n < 3 ? 3 : n > 7 ? 7 : n;
    double samples[7];
    for (int s = 0; s < n; s++) {
        op->sync(be);
        t0 = now_s();
        for (int i = 0; i < r; i++)
            call(ctx);
        op->sync(be);
        samples[s] = (now_s() - t0) / r;
    }
    return median(samples, n);
}

/* One decode step of the attention bench: kv_store of the decode tokens, then
 * attention. */
typedef struct decode_call {
    kn_backend *be;
    const kn_attn_args *a;
    void *kc, *vc;
    const float *k_new, *v_new;
    const int32_t *slots;
} decode_call;

static void run_decode(void *vctx) {
    const decode_call *d = vctx;
    d->be->ops->kv_store(d->be, d->kc, d->vc, d->a->kv_type, d->k_new, d->v_new, d->slots, d->a->n_tok,
                         N_KV * HEAD_DIM, HEAD_DIM);
    d->be->ops->attention(d->be, d->a);
}

/* One KV type: a cache for seqs x max ctx positions, filled once through kv_store,
 * then the decode step at each context (a query at position ctx - 1). */
static void attention_type(const opts *o, results *r, kn_backend *be, kn_type type) {
    const kn_backend_ops *op = be->ops;
    const int S = o->seqs, max_ctx = CTXS[N_CTX - 1], max_blocks = max_ctx / BLOCK;
    const int64_t row = N_KV * HEAD_DIM, n_pos = (int64_t)S * max_ctx;
    const size_t head_bytes = type == KN_E4M3 ? kn_e4m3_rec_bytes(HEAD_DIM) : 2 * (size_t)HEAD_DIM;
    const size_t cache_bytes = (size_t)n_pos * N_KV * head_bytes;
    void *kc = be_alloc(be, cache_bytes), *vc = be_alloc(be, cache_bytes);

    // Block tables: a shuffled permutation of the pool (Fisher-Yates).
    const int n_blocks = S * max_blocks;
    int32_t *bt = host_alloc(sizeof(int32_t) * (size_t)n_blocks);
    for (int i = 0; i < n_blocks; i++)
        bt[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        const int j = (int)(rng_u64() % (uint64_t)(i + 1));
        const int32_t t = bt[i];
        bt[i] = bt[j], bt[j] = t;
    }

    // Fill: chunks of CH positions from one random K and V source (the values only
    // need to be plausible; the bytes read are what is measured).
    enum { CH = 4096 };
    float *hsrc = host_alloc(sizeof(float) * CH * (size_t)row);
    for (size_t i = 0; i < (size_t)CH * (size_t)row; i++)
        hsrc[i] = rng_unit();
    float *k_src = be_alloc(be, sizeof(float) * CH * (size_t)row), *v_src = be_alloc(be, sizeof(float) * CH * (size_t)row);
    op->upload(be, k_src, hsrc, sizeof(float) * CH * (size_t)row);
    for (size_t i = 0; i < (size_t)CH * (size_t)row; i++)
        hsrc[i] = rng_unit();
    op->upload(be, v_src, hsrc, sizeof(float) * CH * (size_t)row);
    int32_t *hslots = host_alloc(sizeof(int32_t) * CH);
    int32_t *slots = be_alloc(be, sizeof(int32_t) * CH);
    for (int64_t p0 = 0; p0 < n_pos; p0 += CH) {
        const int64_t n = n_pos - p0 < CH ? n_pos - p0 : CH;
        for (int64_t i = 0; i < n; i++) { // global position p = seq * max_ctx + pos
            const int64_t p = p0 + i, seq = p / max_ctx, pos = p % max_ctx;
            hslots[i] = bt[seq * max_blocks + pos / BLOCK] * BLOCK + (int32_t)(pos % BLOCK);
        }
        op->upload(be, slots, hslots, sizeof(int32_t) * (size_t)n);
        op->kv_store(be, kc, vc, type, k_src, v_src, slots, n, row, HEAD_DIM);
    }
    op->sync(be);

    // The decode batch: one token per sequence.
    const size_t q_elems = (size_t)S * N_HEAD * HEAD_DIM;
    float *hq = host_alloc(sizeof(float) * q_elems);
    for (size_t i = 0; i < q_elems; i++)
        hq[i] = rng_unit();
    float *q = be_alloc(be, sizeof(float) * q_elems), *out = be_alloc(be, sizeof(float) * q_elems);
    op->upload(be, q, hq, sizeof(float) * q_elems);
    int32_t *hseq = host_alloc(sizeof(int32_t) * (size_t)S), *hpos = host_alloc(sizeof(int32_t) * (size_t)S);
    int32_t *tok_seq = be_alloc(be, sizeof(int32_t) * (size_t)S), *tok_pos = be_alloc(be, sizeof(int32_t) * (size_t)S);
    int32_t *d_bt = be_alloc(be, sizeof(int32_t) * (size_t)n_blocks);
    op->upload(be, d_bt, bt, sizeof(int32_t) * (size_t)n_blocks);
    for (int i = 0; i < S; i++)
        hseq[i] = i;
    op->upload(be, tok_seq, hseq, sizeof(int32_t) * (size_t)S);

    for (int c = 0; c < N_CTX; c++) {
        const int ctx = CTXS[c];
        for (int i = 0; i < S; i++) {
            hpos[i] = ctx - 1;
            hslots[i] = bt[i * max_blocks + (ctx - 1) / BLOCK] * BLOCK + (ctx - 1) % BLOCK;
        }
        op->upload(be, tok_pos, hpos, sizeof(int32_t) * (size_t)S);
        op->upload(be, slots, hslots, sizeof(int32_t) * (size_t)S);
        kn_attn_args a = {.n_tok = S, .n_head = N_HEAD, .n_kv_head = N_KV, .head_dim = HEAD_DIM,
                          .scale = 1.0f / sqrtf((float)HEAD_DIM), .q = q, .out = out, .k_cache = kc, .v_cache = vc,
                          .kv_type = type, .block_size = BLOCK, .tok_seq = tok_seq, .tok_pos = tok_pos,
                          .block_tables = d_bt, .max_blocks = max_blocks};
        // The new tokens' K and V: the first S rows of the fill sources.
        decode_call dc = {be, &a, kc, vc, k_src, v_src, slots};
        const double sec = time_host(be, run_decode, &dc);
        op->download(be, hq, out, sizeof(float) * q_elems);
        int finite = 1;
        for (size_t i = 0; i < q_elems; i++)
            finite &= isfinite(hq[i]) != 0;
        attn_result *ar = &r->attn[r->n_attn++];
        ar->type = type;
        ar->ctx = ctx;
        ar->ms = sec * 1e3;
        ar->bytes = (double)S * ctx * N_KV * 2.0 * (double)head_bytes;
        ar->gbps = ar->bytes / sec / 1e9;
        ar->frac = r->copy_gbps > 0 ? ar->gbps / r->copy_gbps : 0.0;
        ar->finite = finite;
        printf("attention %-5s ctx %5d x %d seqs: %.3f ms, %.1f MB read, %.0f GB/s, %.1f%% of copy%s\n",
               kn_type_name(type), ctx, S, ar->ms, ar->bytes / 1e6, ar->gbps, 100 * ar->frac,
               finite ? "" : " (NON-FINITE OUTPUT)");
        fflush(stdout);
    }
    void *dev[] = {kc, vc, k_src, v_src, slots, q, out, tok_seq, tok_pos, d_bt};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
        op->free(be, dev[i]);
    free(bt);
    free(hsrc);
    free(hslots);
    free(hq);
    free(hseq);
    free(hpos);
}

/* ---------------------------------------------------------------- sample */

/* The sample op over rows of a Gemma-sized vocabulary: greedy, temperature 1
 * alone, and temperature 1 with top_p 0.9, top_k 40 and min_p 0.01 (the radix
 * selects). Bandwidth = the logits' bytes once / time, as a fraction of copy. */
/* ---------------------------------------------------------------- matmul (kn backend) */

typedef struct mm_call {
    kn_backend *be;
    const kn_weight *w;
    const float *x;
    float *y;
    int n;
} mm_call;

static void run_mm(void *vctx) {
    const mm_call *c = vctx;
    float *y = c->y;
    c->be->ops->matmul(c->be, &c->w, 1, c->x, c->n, &y);
}

/* A weight of the matmul shape: random values (E4M3: quantized a row at a time, as
 * the loader does), or for a K-quant random bytes under random f16 scales (d, then
 * dmin, at the start of each 144-byte Q4_K block). */
static void *mm_weight(kn_backend *be, kn_type t, size_t *bytes) {
    *bytes = kn_row_bytes(t, MM_IN) * MM_OUT;
    uint8_t *h = host_alloc(*bytes);
    if (t == KN_BF16) {
        for (size_t i = 0; i < *bytes / 2; i++)
            ((uint16_t *)h)[i] = kn_f32_to_bf16(rng_unit());
    } else if (t == KN_E4M3) {
        float row[MM_IN];
        for (size_t o = 0; o < MM_OUT; o++) {
            for (int i = 0; i < MM_IN; i++)
                row[i] = rng_unit();
            kn_e4m3_rec_put(h, o, row, MM_IN);
        }
    } else {
        for (size_t i = 0; i < *bytes; i++)
            h[i] = (uint8_t)rng_u64();
        for (size_t b = 0; b < *bytes / kn_type_block_bytes(t); b++)
            for (int k = 0; k < 2; k++) {
                const uint16_t d = kn_f32_to_f16(0.01f * (k ? 0.5f * (rng_unit() + 1.0f) : rng_unit()));
                memcpy(h + b * kn_type_block_bytes(t) + 2 * k, &d, 2);
            }
    }
    void *d = be_alloc(be, *bytes);
    be->ops->upload(be, d, h, *bytes);
    be->ops->sync(be);
    free(h);
    return d;
}

static void mm_bench(results *r, kn_backend *be) {
    const kn_backend_ops *op = be->ops;
    const int max_tok = MM_TOKS[N_MM_TOK - 1];
    float *hx = host_alloc(sizeof(float) * (size_t)max_tok * MM_IN);
    for (size_t i = 0; i < (size_t)max_tok * MM_IN; i++)
        hx[i] = rng_unit();
    float *x = be_alloc(be, sizeof(float) * (size_t)max_tok * MM_IN);
    float *y = be_alloc(be, sizeof(float) * (size_t)max_tok * MM_OUT);
    float *hy = host_alloc(sizeof(float) * (size_t)max_tok * MM_OUT);
    op->upload(be, x, hx, sizeof(float) * (size_t)max_tok * MM_IN);
    for (int t = 0; t < N_MM_TYPE; t++) {
        size_t wbytes;
        void *wd = mm_weight(be, MM_TYPES[t], &wbytes);
        const kn_weight w = {MM_TYPES[t], MM_IN, MM_OUT, wd, NULL};
        for (int k = 0; k < N_MM_TOK; k++) {
            mm_call c = {be, &w, x, y, MM_TOKS[k]};
            const double sec = time_host(be, run_mm, &c);
            op->download(be, hy, y, sizeof(float) * (size_t)c.n * MM_OUT);
            int finite = 1;
            for (size_t i = 0; i < (size_t)c.n * MM_OUT; i++)
                finite &= isfinite(hy[i]);
            mm_result *m = &r->mm[r->n_mm++];
            m->type = MM_TYPES[t];
            m->tok = c.n;
            m->ms = sec * 1e3;
            m->wgbps = (double)wbytes / sec / 1e9;
            m->wfrac = r->copy_gbps > 0 ? m->wgbps / r->copy_gbps : 0.0;
            m->tflops = 2.0 * MM_OUT * MM_IN * c.n / sec / 1e12;
            m->vs_cublas = r->mm_cublas_ms[k] / m->ms;
            m->finite = finite;
            printf("matmul    %d x %d %-4s x %4d tokens: %.4f ms, %.0f GB/s of weights (%.1f%% of copy), "
                   "%.1f TFLOP/s, cuBLAS BF16 time / ours %.2f%s\n",
                   MM_OUT, MM_IN, kn_type_name(m->type), c.n, m->ms, m->wgbps, 100 * m->wfrac, m->tflops,
                   m->vs_cublas, finite ? "" : " (NON-FINITE OUTPUT)");
        }
        op->free(be, wd);
    }
    op->free(be, x);
    op->free(be, y);
    free(hx);
    free(hy);
}

typedef struct sample_call {
    kn_backend *be;
    float *x;
    int rows;
    const kn_sample_params *p;
    kn_sample_out *out;
} sample_call;

static void run_sample(void *vctx) {
    const sample_call *c = vctx;
    c->be->ops->sample(c->be, c->x, c->rows, SMP_VOCAB, c->p, NULL, NULL, NULL, NULL, c->out);
}

static void sample_bench(results *r, kn_backend *be) {
    const kn_backend_ops *op = be->ops;
    const int max_rows = SMP_ROWS[N_SMP_ROWS - 1];
    const size_t n = (size_t)max_rows * SMP_VOCAB;
    float *hx = host_alloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) // logits in [-12, 12), a few far above the rest
        hx[i] = 12.0f * rng_unit() + (rng_u64() % 4096 == 0 ? 12.0f : 0.0f);
    float *x = be_alloc(be, sizeof(float) * n);
    op->upload(be, x, hx, sizeof(float) * n);
    kn_sample_params *hp = host_alloc(sizeof(kn_sample_params) * (size_t)max_rows);
    kn_sample_params *p = be_alloc(be, sizeof(kn_sample_params) * (size_t)max_rows);
    kn_sample_out *hout = host_alloc(sizeof(kn_sample_out) * (size_t)max_rows);
    kn_sample_out *out = be_alloc(be, sizeof(kn_sample_out) * (size_t)max_rows);
    for (int m = 0; m < N_SMP_MODES; m++) {
        for (int i = 0; i < max_rows; i++)
            hp[i] = m == 0   ? (kn_sample_params){0.0f, 1.0f, 0.0f, 0, 0.0f, -1, -1}
                    : m == 1 ? (kn_sample_params){1.0f, 1.0f, 0.0f, 0, 0.5f * (rng_unit() + 1.0f), -1, -1}
                             : (kn_sample_params){1.0f, 0.9f, 0.01f, 40, 0.5f * (rng_unit() + 1.0f), -1, -1};
        op->upload(be, p, hp, sizeof(kn_sample_params) * (size_t)max_rows);
        for (int k = 0; k < N_SMP_ROWS; k++) {
            sample_call c = {be, x, SMP_ROWS[k], p, out};
            const double sec = time_host(be, run_sample, &c);
            op->download(be, hout, out, sizeof(kn_sample_out) * (size_t)c.rows);
            int valid = 1;
            for (int i = 0; i < c.rows; i++)
                valid &= hout[i].id >= 0 && hout[i].id < SMP_VOCAB;
            smp_result *sr = &r->smp[r->n_smp++];
            sr->mode = m;
            sr->rows = c.rows;
            sr->ms = sec * 1e3;
            sr->gbps = (double)c.rows * SMP_VOCAB * sizeof(float) / sec / 1e9;
            sr->frac = r->copy_gbps > 0 ? sr->gbps / r->copy_gbps : 0.0;
            sr->valid = valid;
            printf("sample    %-12s x %3d rows of %d: %.3f ms, %.0f GB/s of logits, %.1f%% of copy%s\n",
                   SMP_MODES[m], c.rows, SMP_VOCAB, sr->ms, sr->gbps, 100 * sr->frac,
                   valid ? "" : " (TOKEN OUT OF RANGE)");
            fflush(stdout);
        }
    }
    op->free(be, x);
    op->free(be, p);
    op->free(be, out);
    free(hx);
    free(hp);
    free(hout);
}

/* ---------------------------------------------------------------- JSON */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", (unsigned char)*s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

/* measured: the device sections are filled (not with no device). */
static int write_json(const char *path, const opts *o, const results *r, const char *error, int measured) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return -1;
    }
    fprintf(f, "{\n \"error\": ");
    if (error)
        json_str(f, error);
    else
        fputs("null", f);
    fprintf(f, ",\n \"conventions\": {\"copy_gbps\": \"bytes read + bytes written per second\", "
               "\"read_gbps\": \"bytes read per second\", \"attention_gbps\": \"KV bytes read once per second\", "
               "\"attention_frac\": \"attention_gbps / copy_gbps\", \"attention_ms\": \"kv_store + attention, "
               "one layer, host-timed\"},\n");
    fprintf(f, " \"capacity\": {\"kv_budget_gib\": %.3f, \"seq_len\": %d, \"block_size\": %d, \"n_layer\": %d, "
               "\"n_kv_head\": %d, \"head_dim\": %d, \"bf16_token_bytes\": %.0f, \"e4m3_token_bytes\": %.0f, "
               "\"bf16_seqs\": %ld, \"e4m3_seqs\": %ld, \"ratio\": %.4f}",
            o->kv_budget_gib, o->seq_len, BLOCK, CAP_LAYERS, N_KV, HEAD_DIM, r->cap_tok_bytes[0], r->cap_tok_bytes[1],
            r->cap_seqs[0], r->cap_seqs[1], r->cap_ratio);
    if (measured) {
        fprintf(f, ",\n \"device\": ");
        json_str(f, r->device);
        fprintf(f, ", \"sm_count\": %d, \"compute_capability\": \"%d.%d\", \"mem_gib\": %.2f,\n", r->sm_count,
                r->cc_major, r->cc_minor, r->mem_gib);
        fprintf(f, " \"copy_bytes\": %zu, \"copy_ms\": %.5f, \"copy_gbps\": %.2f, \"read_ms\": %.5f, "
                   "\"read_gbps\": %.2f,\n",
                o->copy_bytes, r->copy_ms, r->copy_gbps, r->read_ms, r->read_gbps);
        fprintf(f, " \"gemm_n\": %d, \"gemm_ms\": %.5f, \"gemm_tflops\": %.2f,\n", o->gemm_n, r->gemm_ms,
                r->gemm_tflops);
        fprintf(f, " \"attention_shape\": {\"seqs\": %d, \"n_head\": %d, \"n_kv_head\": %d, \"head_dim\": %d, "
                   "\"block_size\": %d},\n \"attention\": [",
                o->seqs, N_HEAD, N_KV, HEAD_DIM, BLOCK);
        for (int i = 0; i < r->n_attn; i++) {
            const attn_result *a = &r->attn[i];
            fprintf(f, "%s\n  {\"kv\": \"%s\", \"ctx\": %d, \"ms\": %.5f, \"bytes\": %.0f, \"gbps\": %.2f, "
                       "\"frac_of_copy\": %.4f, \"finite\": %s}",
                    i ? "," : "", kn_type_name(a->type), a->ctx, a->ms, a->bytes, a->gbps, a->frac,
                    a->finite ? "true" : "false");
        }
        fprintf(f, "\n ],\n \"matmul_shape\": {\"n_in\": %d, \"n_out\": %d},\n \"matmul\": [", MM_IN, MM_OUT);
        for (int i = 0; i < r->n_mm; i++) {
            const mm_result *m = &r->mm[i];
            fprintf(f, "%s\n  {\"type\": \"%s\", \"tokens\": %d, \"ms\": %.5f, \"weight_gbps\": %.2f, "
                       "\"weight_frac_of_copy\": %.4f, \"tflops\": %.3f, \"cublas_ms\": %.5f, "
                       "\"cublas_over_ours\": %.4f, \"finite\": %s}",
                    i ? "," : "", kn_type_name(m->type), m->tok, m->ms, m->wgbps, m->wfrac, m->tflops,
                    m->ms * m->vs_cublas, m->vs_cublas, m->finite ? "true" : "false");
        }
        fprintf(f, "\n ],\n \"sample\": [");
        for (int i = 0; i < r->n_smp; i++) {
            const smp_result *m = &r->smp[i];
            fprintf(f, "%s\n  {\"mode\": \"%s\", \"rows\": %d, \"vocab\": %d, \"ms\": %.5f, \"gbps\": %.2f, "
                       "\"frac_of_copy\": %.4f, \"valid\": %s}",
                    i ? "," : "", SMP_MODES[m->mode], m->rows, SMP_VOCAB, m->ms, m->gbps, m->frac,
                    m->valid ? "true" : "false");
        }
        fprintf(f, "\n ]");
    }
    fprintf(f, "\n}\n");
    if (fclose(f)) {
        perror(path);
        return -1;
    }
    return 0;
}

/* The summary for tests/gpu/run.sh's table: "row: NAME = VALUE" lines, printed last. */
static void print_rows(const opts *o, const results *r) {
    printf("\n");
    if (r->copy_ms > 0) {
        printf("row: bench copy D2D = %.0f GB/s read+written (%.0f MiB)\n", r->copy_gbps,
               (double)o->copy_bytes / (1 << 20));
        printf("row: bench read (cublasSasum) = %.0f GB/s read\n", r->read_gbps);
        printf("row: bench BF16 GEMM %d^3 = %.0f TFLOP/s (cublasGemmEx, f32 compute)\n", o->gemm_n, r->gemm_tflops);
    }
    for (int t = 0; t < N_MM_TYPE; t++) {
        char line[512];
        int n = 0;
        for (int i = 0; i < r->n_mm; i++)
            if (r->mm[i].type == MM_TYPES[t])
                n += snprintf(line + n, sizeof line - (size_t)n, "%sb%d %.0f%% / %.1f TF / %.2fx", n ? ", " : "",
                              r->mm[i].tok, 100 * r->mm[i].wfrac, r->mm[i].tflops, r->mm[i].vs_cublas);
        if (n)
            printf("row: bench matmul %s (weights %% of copy / TFLOP/s / cuBLAS time over ours) = %s\n",
                   kn_type_name(MM_TYPES[t]), line);
    }
    static const kn_type types[2] = {KN_BF16, KN_E4M3};
    for (int t = 0; t < 2; t++) {
        char line[256];
        int n = 0, any = 0;
        for (int i = 0; i < r->n_attn; i++) {
            const attn_result *a = &r->attn[i];
            if (a->type != types[t])
                continue;
            n += snprintf(line + n, sizeof line - (size_t)n, "%s%dk %.1f%%", any ? ", " : "", a->ctx / 1024,
                          100 * a->frac);
            any = 1;
        }
        if (any)
            printf("row: bench attn %s %% of copy = %s (%d seqs)%s\n", kn_type_name(types[t]), line, o->seqs,
                   types[t] == KN_E4M3 ? ", target >= 85% at >= 8k" : "");
    }
    for (int m = 0; m < N_SMP_MODES; m++) {
        char line[256];
        int n = 0;
        for (int i = 0; i < r->n_smp; i++)
            if (r->smp[i].mode == m)
                n += snprintf(line + n, sizeof line - (size_t)n, "%sb%d %.3f ms (%.0f%%)", n ? ", " : "",
                              r->smp[i].rows, r->smp[i].ms, 100 * r->smp[i].frac);
        if (n)
            printf("row: bench sample %s, vocab %d = %s of copy\n", SMP_MODES[m], SMP_VOCAB, line);
    }
    printf("row: bench KV capacity %.0f GiB = e4m3 %ld / bf16 %ld seqs of %d = %.2fx (8B shape, target ~2x)\n",
           o->kv_budget_gib, r->cap_seqs[1], r->cap_seqs[0], o->seq_len, r->cap_ratio);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    opts o;
    if (parse_args(argc, argv, &o))
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    static results r; // large; zeroed
    capacity(&o, &r);
    if (kn_cuda_device_count() == 0) {
        const char *msg = "no CUDA device visible (no driver, no GPU, or CUDA_VISIBLE_DEVICES hides it)";
        fprintf(stderr, "gpu_bench: %s; only the capacity arithmetic ran\n", msg);
        if (o.json)
            write_json(o.json, &o, &r, msg, 0);
        print_rows(&o, &r);
        return 2;
    }
    struct cudaDeviceProp prop;
    CK(cudaSetDevice(0));
    CK(cudaGetDeviceProperties(&prop, 0));
    snprintf(r.device, sizeof r.device, "%s", prop.name);
    r.sm_count = prop.multiProcessorCount;
    r.cc_major = prop.major;
    r.cc_minor = prop.minor;
    r.mem_gib = (double)prop.totalGlobalMem / (1u << 30);
    printf("device    %s, sm_%d%d, %d SMs, %.1f GiB\n", r.device, r.cc_major, r.cc_minor, r.sm_count, r.mem_gib);

    cudaStream_t s;
    cublasHandle_t h;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CKB(cublasCreate(&h));
    CKB(cublasSetStream(h, s));
    ceilings(&o, &r, s, h);
    CKB(cublasDestroy(h));
    CK(cudaStreamDestroy(s));

    kn_backend *be = kn_cuda_create(0);
    if (!be) {
        fprintf(stderr, "gpu_bench: kn_cuda_create(0) failed\n");
        return 1;
    }
    mm_bench(&r, be);
    attention_type(&o, &r, be, KN_BF16);
    attention_type(&o, &r, be, KN_E4M3);
    sample_bench(&r, be);
    be->ops->destroy(be);

    const char *bad = NULL;
    for (int i = 0; i < r.n_attn; i++)
        if (!r.attn[i].finite)
            bad = "attention produced non-finite output";
    for (int i = 0; i < r.n_mm; i++)
        if (!r.mm[i].finite)
            bad = "matmul produced non-finite output";
    for (int i = 0; i < r.n_smp; i++)
        if (!r.smp[i].valid)
            bad = "sample produced a token outside the vocabulary";
    print_rows(&o, &r);
    if (o.json && write_json(o.json, &o, &r, bad, 1))
        return 1;
    if (bad)
        fprintf(stderr, "gpu_bench: %s\n", bad);
    return bad != NULL;
}
