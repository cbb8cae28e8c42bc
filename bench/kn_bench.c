/* kn_bench: matmul throughput of the CPU backend per weight type.
 *
 * Usage: kn_bench [n_threads] [n_in] [weight_mib]
 * For each type, a random weight of about weight_mib MiB (larger than the caches)
 * is multiplied at n_tok 1 and 8; prints ms per call, weight GB/s (bytes of the
 * weight matrix per second) and GFLOP/s. Not a test: numbers only. */
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

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 0;
    int64_t n_in = argc > 2 ? atoll(argv[2]) : 2048;
    double mib = argc > 3 ? atof(argv[3]) : 128;
    static const kn_type types[] = {KN_Q8_0, KN_Q5_0, KN_Q4_0, KN_Q4_K, KN_Q5_K, KN_Q6_K, KN_F16, KN_F32};
    kn_backend *be = kn_cpu_create(n_threads);
    if (!be) {
        fprintf(stderr, "kn_bench: cannot create the cpu backend\n");
        return 1;
    }
    printf("cpu backend: %d threads, %s kernels, n_in %lld\n", be->n_threads, kn_cpu_simd(be) ? "avx2" : "portable",
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
        kn_weight wt = {t, n_in, n_out, w};
        for (int nt = 1; nt <= 8; nt += 7) {
            be->ops->matmul(be, &wt, x, nt, y); // warm-up
            int reps = 0;
            double t0 = now_s(), el;
            do {
                be->ops->matmul(be, &wt, x, nt, y);
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
