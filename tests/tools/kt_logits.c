/* kt_logits: runs token ids through a GGUF model and prints logits (a test tool).
 *
 *   kt_logits MODEL [--backend ref|cpu] [--threads N] [--block-size B]
 *             [--mode prefill|step|mixed] [--seqs S] [--chunk C] [--kv f16|f32]
 *             [--quantization none|fp8] [--all] [--out FILE]  < tokens.json
 *
 * stdin holds a JSON array of token ids. Without --all the logits of the last
 * token are printed as a JSON array; with --all, a JSON array of one array per
 * token. With --out FILE the rows are written there as raw little-endian float32
 * ([rows, n_vocab]) and stdout gets {"n_vocab": V, "n_rows": R}. In mixed mode S
 * sequences (default 4) carry the same tokens; the rows printed are those of the
 * last sequence, and the largest difference between sequences goes to stderr. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kn.h"
#include "tests/tools/kt_model_run.h"
#include "worker/wk_gguf.h"
#include "worker/wk_kv.h"
#include "worker/wk_model.h"

static void usage(void) {
    fprintf(stderr, "usage: kt_logits MODEL [--backend ref|cpu] [--threads N] [--block-size B]\n"
                    "                 [--mode prefill|step|mixed] [--seqs S] [--chunk C] [--kv f16|f32]\n"
                    "                 [--quantization none|fp8] [--all] [--out FILE] < tokens.json\n");
}

static int read_tokens(int32_t **out, int *n) {
    json_error_t je;
    json_t *arr = json_loadf(stdin, 0, &je);
    if (!arr || !json_is_array(arr) || json_array_size(arr) == 0) {
        fprintf(stderr, "kt_logits: stdin must be a non-empty JSON array of token ids (%s)\n", arr ? "" : je.text);
        json_decref(arr);
        return -EINVAL;
    }
    size_t len = json_array_size(arr);
    int32_t *t = malloc(len * sizeof(int32_t));
    if (!t) {
        json_decref(arr);
        return -ENOMEM;
    }
    for (size_t i = 0; i < len; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            fprintf(stderr, "kt_logits: token %zu is not a valid id\n", i);
            free(t);
            json_decref(arr);
            return -EINVAL;
        }
        t[i] = (int32_t)json_integer_value(v);
    }
    json_decref(arr);
    *out = t;
    *n = (int)len;
    return 0;
}

static void print_row(const float *r, size_t V) {
    putchar('[');
    for (size_t i = 0; i < V; i++)
        printf(i ? ",%.9g" : "%.9g", (double)r[i]);
    putchar(']');
}

int main(int argc, char **argv) {
    const char *path = NULL, *backend = "cpu", *mode_s = "prefill", *outp = NULL, *kv_s = "f16", *quant_s = "none";
    int threads = 0, bs = 16, all = 0, n_seq_arg = 4, chunk = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--all"))
            all = 1;
        else if (!strcmp(a, "--backend") && v)
            backend = argv[++i];
        else if (!strcmp(a, "--threads") && v)
            threads = atoi(argv[++i]);
        else if (!strcmp(a, "--block-size") && v)
            bs = atoi(argv[++i]);
        else if (!strcmp(a, "--mode") && v)
            mode_s = argv[++i];
        else if (!strcmp(a, "--seqs") && v)
            n_seq_arg = atoi(argv[++i]);
        else if (!strcmp(a, "--chunk") && v)
            chunk = atoi(argv[++i]);
        else if (!strcmp(a, "--kv") && v)
            kv_s = argv[++i];
        else if (!strcmp(a, "--quantization") && v)
            quant_s = argv[++i];
        else if (!strcmp(a, "--out") && v)
            outp = argv[++i];
        else if (a[0] != '-' && !path)
            path = a;
        else {
            usage();
            return 2;
        }
    }
    int mode = !strcmp(mode_s, "prefill") ? KT_PREFILL : !strcmp(mode_s, "step") ? KT_STEP
                                                       : !strcmp(mode_s, "mixed") ? KT_MIXED
                                                                                   : -1;
    kn_type kvt = !strcmp(kv_s, "f16") ? KN_F16 : !strcmp(kv_s, "f32") ? KN_F32 : KN_TYPE_COUNT;
    const int quant = !strcmp(quant_s, "fp8") ? WK_QUANT_FP8 : !strcmp(quant_s, "none") ? WK_QUANT_NONE : -1;
    if (!path || mode < 0 || bs <= 0 || kvt == KN_TYPE_COUNT || n_seq_arg < 1 || n_seq_arg > 64 || quant < 0) {
        usage();
        return 2;
    }
    const int n_seq = mode == KT_MIXED ? n_seq_arg : 1;

    int status = 1;
    char err[256];
    int32_t *toks = NULL;
    int n = 0;
    wk_gguf *g = NULL;
    kn_backend *be = NULL;
    wk_model *m = NULL;
    wk_kv *kv = NULL;
    float *out = NULL;
    FILE *f = NULL;
    if (read_tokens(&toks, &n) < 0)
        goto cleanup;
    if (wk_gguf_open(path, &g, err, sizeof(err)) < 0) {
        fprintf(stderr, "kt_logits: %s: %s\n", path, err);
        goto cleanup;
    }
    be = !strcmp(backend, "ref") ? kn_ref_create() : !strcmp(backend, "cpu") ? kn_cpu_create(threads) : NULL;
    if (!be) {
        fprintf(stderr, "kt_logits: cannot create backend '%s'\n", backend);
        goto cleanup;
    }
    if (wk_model_load(g, be, (wk_quant)quant, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "kt_logits: %s: %s\n", path, err);
        goto cleanup;
    }
    const wk_hparams *hp = wk_model_hparams(m);
    const size_t V = (size_t)hp->n_vocab;
    const int mb = kt_blocks_for(n, bs);
    kv = wk_kv_create(be, hp->n_layer, hp->n_head_kv, hp->head_dim, bs, n_seq * mb, kvt);
    if (!kv || kt_reserve(m, n, n_seq, bs) < 0) {
        fprintf(stderr, "kt_logits: out of memory\n");
        goto cleanup;
    }
    const size_t rows_per_seq = all ? (size_t)n : 1;
    out = malloc((size_t)n_seq * rows_per_seq * V * sizeof(float));
    if (!out)
        goto cleanup;
    int rc = kt_run_seqs(m, kv, toks, n, n_seq, mode, chunk, all, out);
    if (rc < 0) {
        fprintf(stderr, "kt_logits: forward failed: %s\n", strerror(-rc));
        goto cleanup;
    }
    if (n_seq > 1) {
        double md = 0.0;
        for (int s = 1; s < n_seq; s++)
            for (size_t i = 0; i < rows_per_seq * V; i++) {
                double d = fabs((double)out[(size_t)s * rows_per_seq * V + i] - out[i]);
                if (isnan(d))
                    md = INFINITY;
                else if (d > md)
                    md = d;
            }
        fprintf(stderr, "kt_logits: mixed: max |seq_s - seq_0| = %g over %d sequences\n", md, n_seq);
    }
    const float *res = out + (size_t)(n_seq - 1) * rows_per_seq * V;
    if (outp) {
        f = fopen(outp, "wb");
        if (!f || fwrite(res, sizeof(float), rows_per_seq * V, f) != rows_per_seq * V) {
            fprintf(stderr, "kt_logits: cannot write %s: %s\n", outp, strerror(errno));
            goto cleanup;
        }
        printf("{\"n_vocab\": %zu, \"n_rows\": %zu}\n", V, rows_per_seq);
    } else if (all) {
        putchar('[');
        for (size_t r = 0; r < rows_per_seq; r++) {
            if (r)
                putchar(',');
            print_row(res + r * V, V);
        }
        puts("]");
    } else {
        print_row(res, V);
        putchar('\n');
    }
    status = 0;
cleanup:
    if (f && fclose(f) != 0)
        status = 1;
    free(out);
    wk_kv_free(kv);
    wk_model_free(m);
    if (be)
        be->ops->destroy(be);
    wk_gguf_close(g);
    free(toks);
    return status;
}
