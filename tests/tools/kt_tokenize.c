/* kt_tokenize: the tokenizer oracle tool for tests/integration/test_tokenizer.py.
 *
 * Usage: kt_tokenize MODEL.gguf < lines
 * Each stdin line is a JSON object {"text": str, "add_bos": bool, "special": bool};
 * each output line is the JSON array of token ids (or {"error": msg}). With
 * "decode": true in a line, it prints {"ids": [...], "text": decoded} instead, the
 * decoded text being the concatenated pieces (render_special = "special"). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/wk_gguf.h"
#include "worker/wk_tok.h"

static int run_line(const wk_tok *t, const char *line) {
    json_error_t jerr;
    json_t *in = json_loads(line, JSON_ALLOW_NUL, &jerr), *res = NULL;
    int32_t *ids = NULL;
    if (!in || !json_is_object(in)) {
        printf("{\"error\":\"bad json line\"}\n");
        json_decref(in);
        return 0;
    }
    const char *text = json_string_value(json_object_get(in, "text"));
    size_t len = json_string_length(json_object_get(in, "text"));
    int add_bos = json_is_true(json_object_get(in, "add_bos"));
    int special = json_is_true(json_object_get(in, "special"));
    int decode = json_is_true(json_object_get(in, "decode"));
    if (!text)
        text = "", len = 0;
    int n = wk_tok_encode(t, text, len, add_bos, special, NULL, 0);
    if (n >= 0) {
        ids = malloc(((size_t)n + 1) * sizeof(int32_t));
        n = ids ? wk_tok_encode(t, text, len, add_bos, special, ids, n) : -12;
    }
    if (n < 0) {
        printf("{\"error\":\"encode failed %d\"}\n", n);
        goto done;
    }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, json_integer(ids[i]));
    if (decode) {
        size_t cap = 64, dl = 0;
        char *dec = malloc(cap);
        for (int i = 0; i < n && dec; i++) {
            const char *p;
            int pl = wk_tok_piece(t, ids[i], special, &p);
            if (pl < 0)
                continue;
            if (dl + (size_t)pl + 1 > cap) {
                cap = (dl + (size_t)pl + 1) * 2;
                char *nd = realloc(dec, cap);
                if (!nd) {
                    free(dec);
                    dec = NULL;
                    break;
                }
                dec = nd;
            }
            memcpy(dec + dl, p, (size_t)pl);
            dl += (size_t)pl;
        }
        res = json_object();
        json_object_set_new(res, "ids", arr);
        json_object_set_new(res, "text", dec ? json_stringn_nocheck(dec, dl) : json_null());
        free(dec);
    } else {
        res = arr;
    }
    char *s = json_dumps(res, JSON_COMPACT | JSON_ENSURE_ASCII);
    printf("%s\n", s ? s : "null");
    free(s);
done:
    json_decref(res);
    json_decref(in);
    free(ids);
    return 0;
}

int main(int argc, char **argv) {
    char err[256] = "";
    wk_gguf *g = NULL;
    wk_tok *t = NULL;
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.gguf < jsonl\n", argv[0]);
        return 2;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    if (wk_gguf_open(argv[1], &g, err, sizeof err) < 0 || wk_tok_load(g, &t, err, sizeof err) < 0) {
        fprintf(stderr, "kt_tokenize: %s\n", err);
        wk_gguf_close(g);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    fprintf(stderr, "kt_tokenize: loaded %d tokens in %.1f ms\n", wk_tok_n_vocab(t),
            (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        if (n == 1 && line[0] == '\n')
            continue;
        run_line(t, line);
        fflush(stdout);
    }
    free(line);
    wk_tok_free(t);
    wk_gguf_close(g);
    return 0;
}
