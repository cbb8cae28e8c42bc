/* kn_bench: matmul throughput of the CPU backend per weight type.
 *
 * Usage: kn_bench [n_threads] [n_in] [weight_mib]
 *        kn_bench [n_threads] model
 * For each type, a random weight of about weight_mib MiB (larger than the caches)
 * is multiplied at n_tok 1 and 8; prints ms per call, weight GB/s (bytes of the
 * weight matrix per second) and GFLOP/s. With "model", the matmul shapes and
 * types of the default model (Gemma 3 270M Q4_K_M) at n_tok 1, 4, 8 and 16, plus
 * microseconds per token and the cost of n_tok tokens relative to one.
 * Not a test: numbers only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/kn_cpu.h"
#include "kernels/kn.h"
#include "kernels/kn_half.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Random weight bytes with small sane f16 scales at every block's scale offsets. */
static void fill_weight(kn_type t, uint8_t *w, size_t bytes) {
    for (size_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)(i * 2654435761u >> 13);
    int off[2] = {-1, -1};
    switch (t) {
    case KN_Q4_0: case KN_Q5_0: case KN_Q8_0: off[0] = 0; break;
    case KN_Q4_1: case KN_Q5_1: case KN_Q4_K: case KN_Q5_K: off[0] = 0; off[1] = 2; break;
    case KN_Q6_K: off[0] = 208; break;
    default: break;
    }
    const size_t bb = kn_type_block_bytes(t);
    for (size_t b = 0; off[0] >= 0 && b < bytes / bb; b++)
        for (int k = 0; k < 2; k++)
            if (off[k] >= 0) {
                uint16_t h = kn_f32_to_f16(0.01f);
                memcpy(w + b * bb + off[k], &h, 2);
            }
}

/* Seconds per call: the best of 7 windows of >= 0.08 s (the machine is shared). */
static double time_mm(kn_backend *be, const kn_weight *wt, const float *x, int nt, float *y) {
    be->ops->matmul(be, &wt, 1, x, nt, &y); // warm-up
    double best = 1e30;
    for (int win = 0; win < 7; win++) {
        int reps = 0;
        double t0 = now_s(), el;
        do {
            be->ops->matmul(be, &wt, 1, x, nt, &y);
            reps++;
            el = now_s() - t0;
        } while (el < 0.08);
        if (el / reps < best)
            best = el / reps;
    }
    return best;
}

static int bench_model(kn_backend *be) {
    static const struct {
        const char *what;
        kn_type t;
        int64_t n_in, n_out;
    } shapes[] = {
        {"attn_q", KN_Q5_0, 640, 1024},    {"ffn_up", KN_Q5_0, 640, 2048}, {"ffn_down", KN_Q6_K, 2048, 640},
        {"attn_out", KN_Q4_K, 1024, 640}, {"attn_v", KN_Q8_0, 640, 256},  {"lm_head", KN_Q8_0, 640, 262144},
    };
    static const int toks[] = {1, 4, 8, 16};
    float *x = malloc(sizeof(float) * 16 * 2048);
    if (!x)
        return 1;
    for (int64_t i = 0; i < 16 * 2048; i++)
        x[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    printf("%-9s %-5s %6s %7s %5s %10s %9s %8s\n", "tensor", "type", "n_in", "n_out", "n_tok", "us/call",
           "us/tok", "vs 1tok");
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        size_t bytes = kn_row_bytes(shapes[si].t, shapes[si].n_in) * (size_t)shapes[si].n_out;
        uint8_t *w = be->ops->alloc(be, bytes);
        float *y = malloc(sizeof(float) * 16 * (size_t)shapes[si].n_out);
        if (!w || !y)
            return 1;
        fill_weight(shapes[si].t, w, bytes);
        kn_weight wt = {shapes[si].t, shapes[si].n_in, shapes[si].n_out, w, NULL};
        double one = 0;
        for (size_t k = 0; k < sizeof(toks) / sizeof(toks[0]); k++) {
            double per = time_mm(be, &wt, x, toks[k], y);
            if (k == 0)
                one = per;
            printf("%-9s %-5s %6lld %7lld %5d %10.1f %9.1f %8.2f\n", shapes[si].what, kn_type_name(shapes[si].t),
                   (long long)shapes[si].n_in, (long long)shapes[si].n_out, toks[k], per * 1e6,
                   per * 1e6 / toks[k], per / one);
        }
        be->ops->free(be, w);
        free(y);
    }
    free(x);
    return 0;
}

/* Paged attention at the default model's shape (4 query heads on 1 KV head of
 * 256, f16 cache, block 16): n_seq sequences decoding one token each at
 * context ctx. */
static int bench_attn(kn_backend *be, int n_seq, int ctx) {
    enum { NH = 4, NKV = 1, HD = 256, BS = 16 };
    const int max_blocks = (ctx + BS - 1) / BS;
    const size_t cache_elems = (size_t)n_seq * max_blocks * BS * NKV * HD;
    uint16_t *kc = be->ops->alloc(be, cache_elems * 2), *vc = be->ops->alloc(be, cache_elems * 2);
    float *q = malloc(sizeof(float) * n_seq * NH * HD), *out = malloc(sizeof(float) * n_seq * NH * HD);
    int32_t *bt = malloc(sizeof(int32_t) * n_seq * max_blocks), seq[64], pos[64];
    if (!kc || !vc || !q || !out || !bt || n_seq > 64)
        return 1;
    for (size_t i = 0; i < cache_elems; i++)
        kc[i] = vc[i] = kn_f32_to_f16((float)((i * 7919) % 1000) / 1000.0f - 0.5f);
    for (int i = 0; i < n_seq * NH * HD; i++)
        q[i] = (float)((i * 31) % 100) / 100.0f - 0.5f;
    for (int i = 0; i < n_seq * max_blocks; i++)
        bt[i] = i;
    for (int i = 0; i < n_seq; i++) {
        seq[i] = i;
        pos[i] = ctx - 1;
    }
    kn_attn_args a = {.n_tok = n_seq, .n_head = NH, .n_kv_head = NKV, .head_dim = HD, .scale = 0.0625f,
                      .q = q, .out = out, .k_cache = kc, .v_cache = vc, .kv_type = KN_F16, .block_size = BS,
                      .tok_seq = seq, .tok_pos = pos, .block_tables = bt, .max_blocks = max_blocks};
    be->ops->attention(be, &a);
    double best = 1e30;
    for (int win = 0; win < 7; win++) {
        int reps = 0;
        double t0 = now_s(), el;
        do {
            be->ops->attention(be, &a);
            reps++;
            el = now_s() - t0;
        } while (el < 0.05);
        if (el / reps < best)
            best = el / reps;
    }
    printf("attention 4q/1kv hd256 f16: %2d seqs x 1 tok, ctx %5d: %9.1f us/call %8.1f us/tok\n", n_seq, ctx,
           best * 1e6, best * 1e6 / n_seq);
    be->ops->free(be, kc);
    be->ops->free(be, vc);
    free(q);
    free(out);
    free(bt);
    return 0;
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2 && !strcmp(argv[2], "model")) {
        kn_backend *be = kn_cpu_create(n_threads);
        if (!be)
            return 1;
        printf("cpu backend: %d threads, %s kernels\n", be->n_threads, kn_cpu_simd(be) == 2 ? "avx2+vnni" : kn_cpu_simd(be) ? "avx2" : "portable");
        int rc = bench_model(be);
        rc |= bench_attn(be, 1, 512) | bench_attn(be, 8, 512) | bench_attn(be, 1, 4096) | bench_attn(be, 8, 4096);
        be->ops->destroy(be);
        return rc;
    }
    int64_t n_in = argc > 2 ? atoll(argv[2]) : 2048;
    double mib = argc > 3 ? atof(argv[3]) : 128;
    static const kn_type types[] = {KN_Q8_0, KN_Q5_0, KN_Q4_0, KN_Q4_K, KN_Q5_K, KN_Q6_K, KN_F16, KN_F32};
    kn_backend *be = kn_cpu_create(n_threads);
    if (!be) {
        fprintf(stderr, "kn_bench: cannot create the cpu backend\n");
        return 1;
    }
    printf("cpu backend: %d threads, %s kernels, n_in %lld\n", be->n_threads, kn_cpu_simd(be) == 2 ? "avx2+vnni" : kn_cpu_simd(be) ? "avx2" : "portable",
           (long long)n_in);
    printf("%-6s %6s %9s %10s %9s %9s\n", "type", "n_tok", "n_out", "ms/call", "GB/s", "GFLOP/s");
    float *x = malloc(sizeof(float) * 8 * n_in);
    for (int64_t i = 0; i < 8 * n_in; i++)
        x[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        kn_type t = types[ti];
        size_t rb = kn_row_bytes(t, n_in);
        if (!rb)
            continue;
        int64_t n_out = (int64_t)(mib * 1048576.0 / rb);
        size_t bytes = rb * (size_t)n_out;
        uint8_t *w = be->ops->alloc(be, bytes);
        float *y = malloc(sizeof(float) * 8 * n_out);
        if (!w || !y) {
            fprintf(stderr, "kn_bench: out of memory\n");
            return 1;
        }
        // random bytes, then small sane f16 scales in every 2-byte slot at block starts
        for (size_t i = 0; i < bytes; i++)
            w[i] = (uint8_t)(i * 2654435761u >> 13);
        if (t == KN_F32)
            for (size_t i = 0; i < bytes / 4; i++)
                ((float *)w)[i] = 0.01f;
        else if (t == KN_F16)
            for (size_t i = 0; i < bytes / 2; i++)
                ((uint16_t *)w)[i] = kn_f32_to_f16(0.01f);
        kn_weight wt = {t, n_in, n_out, w, NULL};
        const kn_weight *wp = &wt;
        for (int nt = 1; nt <= 8; nt += 7) {
            be->ops->matmul(be, &wp, 1, x, nt, &y); // warm-up
            int reps = 0;
            double t0 = now_s(), el;
            do {
                be->ops->matmul(be, &wp, 1, x, nt, &y);
                reps++;
                el = now_s() - t0;
            } while (el < 1.0);
            double per = el / reps;
            printf("%-6s %6d %9lld %10.3f %9.2f %9.2f\n", kn_type_name(t), nt, (long long)n_out, per * 1e3,
                   bytes / per / 1e9, 2.0 * nt * n_out * n_in / per / 1e9);
        }
        be->ops->free(be, w);
        free(y);
    }
    free(x);
    be->ops->destroy(be);
    return 0;
}
