/* libFuzzer target for the .kolm reader: any file must open or be refused with a
 * message, never crash, leak or read out of bounds; an artifact that opens must
 * hold a manifest equal to its own canonical form, and its signature and blob
 * checks must run to an answer. The input is the whole file (through a memfd). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/cm_canon.h"
#include "common/cm_kolm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("kolm-fuzz", MFD_CLOEXEC);
        if (fd < 0 || cm_crypto_init())
            abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    cm_kolm *k = NULL;
    char err[1024];
    if (cm_kolm_open(path, "/nonexistent-kolm-home", &k, err, sizeof err)) {
        if (!err[0])
            abort(); // a refusal always says why
        return 0;
    }
    size_t n = 0;
    char *c = cm_canonical_json(k->m, &n);
    if (!c || n != k->manifest_len || memcmp(c, k->manifest, n))
        abort();
    free(c);
    (void)cm_kolm_check_signature(k, err, sizeof err);
    (void)cm_kolm_verify_blobs(k, err, sizeof err);
    cm_kolm_close(k);
    return 0;
}
