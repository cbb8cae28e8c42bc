/* gr_bench: grammar costs on a model's vocabulary.
 *
 *   gr_bench MODEL.gguf SCHEMAS.jsonl [walks [steps]]
 *
 * For every schema (one JSON document per line): compile time (wk_jsonschema to a
 * sealed grammar, median of 5), then `walks` random walks of at most `steps`
 * tokens through the grammar, timing each step's mask as the worker applies it
 * (wk_gcache_mask: the cached or freshly computed mask, written as the bitmask
 * the sample op reads). Walk tokens are drawn from the allowed set, half the time the
 * shortest of 8 draws, so walks reach the end of their documents. Prints one
 * line per schema and the p50 / p99 over all steps. Not a test. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/wk_gcache.h"
#include "worker/wk_gguf.h"
#include "worker/wk_jsonschema.h"
#include "worker/wk_tok.h"

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int dcmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p) {
    if (!n)
        return 0;
    qsort(v, n, sizeof *v, dcmp);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf SCHEMAS.jsonl [walks [steps]]\n", argv[0]);
        return 2;
    }
    int walks = argc > 3 ? atoi(argv[3]) : 4, steps = argc > 4 ? atoi(argv[4]) : 200;
    char err[512];
    wk_gguf *gg;
    wk_tok *tok;
    if (wk_gguf_open(argv[1], &gg, err, sizeof err) || wk_tok_load(gg, &tok, err, sizeof err)) {
        fprintf(stderr, "gr_bench: %s\n", err);
        return 1;
    }
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    const int nv = wk_tok_n_vocab(tok);
    uint32_t *bits = calloc(((size_t)nv + 31) / 32, sizeof *bits);
    int32_t *allowed = malloc((size_t)nv * sizeof *allowed);
    size_t cap = 1 << 20, n_all = 0, n_comp = 0;
    double *all = malloc(cap * sizeof *all), *comp = malloc(4096 * sizeof *comp);
    wk_gcache *gc = wk_gcache_new(tok, WK_TEMPLATE_GEMMA);
    double t0 = now_us();
    proto_submit warm = {.format = PROTO_FORMAT_JSON_OBJECT};
    int status;
    char param[64];
    wk_grammar *wg = wk_gcache_get(gc, &warm, &status, err, sizeof err, param, sizeof param); // builds the vocab
    printf("vocabulary: %d tokens, trie built in %.1f ms\n", nv, (now_us() - t0) / 1e3);
    wk_gcache_put(gc, wg);
    printf("%-4s %10s %8s %10s %10s %10s\n", "#", "compile ms", "steps", "p50 us", "p99 us", "max us");
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    int idx = 0;
    while ((len = getline(&line, &lcap, f)) > 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (!len)
            continue;
        double ct[5];
        for (int r = 0; r < 5; r++) {
            wk_grammar *g = NULL;
            double a = now_us();
            int rc = wk_jsonschema_grammar(line, (size_t)len, 0, &g, err, sizeof err);
            ct[r] = (now_us() - a) / 1e3;
            wk_grammar_free(g);
            if (rc) {
                fprintf(stderr, "schema %d: %s\n", idx, err);
                ct[r] = -1;
            }
        }
        if (ct[0] < 0) {
            idx++;
            continue;
        }
        if (n_comp < 4096)
            comp[n_comp++] = pct(ct, 5, 0.5);
        proto_submit sub = {.format = PROTO_FORMAT_JSON_SCHEMA, .schema = {line, (uint32_t)len},
                            .schema_name = {"bench", 5}};
        wk_grammar *g = wk_gcache_get(gc, &sub, &status, err, sizeof err, param, sizeof param);
        size_t first = n_all;
        double mx = 0;
        for (int w = 0; g && w < walks; w++) {
            int32_t s = wk_grammar_start(g);
            for (int k = 0; k < steps && !wk_grammar_complete(g, s); k++) {
                int restricted;
                double a = now_us();
                int n_ok = wk_gcache_mask(gc, g, s, -1, bits, nv, &restricted);
                double dt = now_us() - a;
                if (n_ok <= 0)
                    break;
                if (n_all == cap) {
                    cap *= 2;
                    all = realloc(all, cap * sizeof *all);
                }
                all[n_all++] = dt;
                mx = dt > mx ? dt : mx;
                int m = 0;
                for (int i = 0; i < nv; i++)
                    if ((bits[i >> 5] >> (i & 31) & 1) && !wk_tok_is_eog(tok, i))
                        allowed[m++] = i;
                if (!m)
                    break;
                int32_t id = allowed[rnd() % (uint32_t)m];
                if (rnd() % 2)
                    for (int tries = 0; tries < 8; tries++) {
                        int32_t c = allowed[rnd() % (uint32_t)m];
                        const char *pc, *pi;
                        if (wk_tok_piece(tok, c, 0, &pc) < wk_tok_piece(tok, id, 0, &pi))
                            id = c;
                    }
                s = wk_gcache_advance(gc, g, s, id);
                if (s <= 0)
                    break;
            }
        }
        wk_gcache_put(gc, g);
        size_t ns = n_all - first;
        double *tmp = malloc((ns ? ns : 1) * sizeof *tmp);
        memcpy(tmp, all + first, ns * sizeof *tmp);
        printf("%-4d %10.2f %8zu %10.1f %10.1f %10.1f\n", idx, comp[n_comp - 1], ns, pct(tmp, ns, 0.5),
               pct(tmp, ns, 0.99), mx);
        free(tmp);
        idx++;
    }
    printf("all: %d schemas, compile p50 %.2f ms max %.2f ms; %zu masks: p50 %.1f us, p99 %.1f us\n", idx,
           pct(comp, n_comp, 0.5), pct(comp, n_comp, 1.0), n_all, pct(all, n_all, 0.5), pct(all, n_all, 0.99));
    free(line);
    fclose(f);
    free(bits);
    free(allowed);
    free(all);
    free(comp);
    wk_gcache_free(gc);
    wk_tok_free(tok);
    wk_gguf_close(gg);
    return 0;
}
