/* kt: the unit-test harness. Each tests/unit/test_<module>.c is its own process
 * (CTest runs it with a timeout); a failed check prints both values with file and
 * line, and the binary exits non-zero if any check failed. */
#ifndef KT_H
#define KT_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int kt_failures = 0;
static int kt_checks = 0;

#define KT_FAIL_(...)                                                                                          \
    do {                                                                                                       \
        kt_failures++;                                                                                         \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                                        \
        fprintf(stderr, __VA_ARGS__);                                                                          \
        fputc('\n', stderr);                                                                                   \
    } while (0)

#define ASSERT_TRUE(c)                                                                                         \
    do {                                                                                                       \
        kt_checks++;                                                                                           \
        if (!(c))                                                                                              \
            KT_FAIL_("expected true: %s", #c);                                                                 \
    } while (0)

#define ASSERT_EQ(a, b)                                                                                        \
    do {                                                                                                       \
        kt_checks++;                                                                                           \
        long long kt_a_ = (long long)(a), kt_b_ = (long long)(b);                                              \
        if (kt_a_ != kt_b_)                                                                                    \
            KT_FAIL_("%s == %s: %lld != %lld", #a, #b, kt_a_, kt_b_);                                          \
    } while (0)

#define ASSERT_STREQ(a, b)                                                                                     \
    do {                                                                                                       \
        kt_checks++;                                                                                           \
        const char *kt_a_ = (a), *kt_b_ = (b);                                                                 \
        if (!kt_a_ || !kt_b_ || strcmp(kt_a_, kt_b_))                                                          \
            KT_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, kt_a_ ? kt_a_ : "(null)", kt_b_ ? kt_b_ : "(null)"); \
    } while (0)

#define ASSERT_NEAR(a, b, tol)                                                                                 \
    do {                                                                                                       \
        kt_checks++;                                                                                           \
        double kt_a_ = (double)(a), kt_b_ = (double)(b);                                                       \
        if (!(fabs(kt_a_ - kt_b_) <= (tol)))                                                                   \
            KT_FAIL_("%s ~= %s: %.9g != %.9g (tol %g)", #a, #b, kt_a_, kt_b_, (double)(tol));                  \
    } while (0)

/* The default model's GGUF for the tests that need one: $KOLM_TEST_MODEL, else
 * ${KOLM_HOME:-~/.kolm}/models/gemma-3-270m-q4_k_m.gguf (into buf). */
static inline const char *kt_model_path(char *buf, size_t n) {
    const char *path = getenv("KOLM_TEST_MODEL"), *home = getenv("KOLM_HOME"), *user = getenv("HOME");
    if (path && *path)
        return path;
    if (home && *home)
        snprintf(buf, n, "%s/models/gemma-3-270m-q4_k_m.gguf", home);
    else
        snprintf(buf, n, "%s/.kolm/models/gemma-3-270m-q4_k_m.gguf", user ? user : "");
    return buf;
}

/* Call at the end of main: prints the plain closing line and returns the exit code. */
static inline int kt_done(const char *name) {
    printf("%s: %d checks, %d failed\n", name, kt_checks, kt_failures);
    return kt_failures ? 1 : 0;
}

#endif
