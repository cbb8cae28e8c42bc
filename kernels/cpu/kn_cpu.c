/* Temporary: the CPU backend forwards to the reference until the fast one lands. */
#include "kernels/cpu/kn_cpu.h"

kn_backend *kn_cpu_create(int n_threads) {
    return kn_ref_create();
}

int kn_cpu_reserve(kn_backend *be, int64_t max_tok, int64_t max_n_in) {
    return 0;
}

int kn_cpu_simd(const kn_backend *be) {
    return 0;
}
