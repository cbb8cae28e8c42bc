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

/* Call at the end of main: prints the plain closing line and returns the exit code. */
static inline int kt_done(const char *name) {
    printf("%s: %d checks, %d failed\n", name, kt_checks, kt_failures);
    return kt_failures ? 1 : 0;
}

#endif
