/* kn_cpu_dot_vnni: the multi-token kernels (kn_cpu_mm_x86.inc) built for
 * AVX512-VNNI on 256-bit vectors (see kn_cpu_dot.h).
 *
 * vpdpbusd replaces the maddubs + madd pair of the AVX2 build for the 32-element
 * types (same exact int32 lane sums, one instruction instead of two), and the
 * EVEX encoding gives the compiler 32 vector registers. Installed by
 * kn_dot_table_vnni only when __builtin_cpu_supports reports avx512f, avx512bw,
 * avx512vl and avx512vnni. */
#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/kn_cpu_dot.h"
#include "kernels/kn_half.h"
#include "kernels/kn_quant.h"

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static inline float h2f(uint16_t h) {
    return _cvtsh_ss(h);
}

static inline __m256i nibbles32(const uint8_t *q) {
    __m128i v = _mm_loadu_si128((const __m128i *)q);
    __m128i m = _mm_set1_epi8(0xF);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* The 32 bits of qh -> 0x10 in byte j where bit j is set (a mask move). */
static inline __m256i hbits32(const uint8_t *qh) {
    uint32_t b;
    memcpy(&b, qh, 4);
    return _mm256_maskz_mov_epi8((__mmask32)b, _mm256_set1_epi8(0x10));
}

#define KN_MM(name) name##_vnni
#define KN_MM_XU 1
#define KN_DOT_I8(a, b) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (a), (b))
#include "kernels/cpu/kn_cpu_mm_x86.inc"

#pragma GCC pop_options

int kn_dot_table_vnni(kn_dot_table *t) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512vnni"))
        return -1;
    fill_vnni(t);
    return 0;
}

#else

#include "kernels/cpu/kn_cpu_dot.h"

int kn_dot_table_vnni(kn_dot_table *t) {
    return -1;
}

#endif
