/* kolm: the command-line entry. `kolm serve` runs the gateway: it checks the
 * artifact's signature against the keyring, spawns the worker pool (the workers
 * check the blob hashes as they load), listens for HTTP, and runs the h2o event
 * loop until SIGINT/SIGTERM, then stops the workers and exits 0. The artifact
 * commands (keygen, pack, inspect, verify) are in gw_cli.c. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cm_crypto.h"
#include "common/cm_kolm.h"
#include "common/cm_log.h"
#include "gateway/gw_cli.h"
#include "gateway/gw_http.h"
#include "gateway/gw_pool.h"

#define DEFAULT_ARTIFACT "gemma-3-270m-q4_k_m.kolm"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

/* A worker exited: the pools reap it on their next tick (the signal also ends the
 * loop's epoll_wait early when it lands on the loop's thread). */
static void on_sigchld(int sig) {
    (void)sig;
    gw_pool_child_exited();
}

static void usage(FILE *f) {
    fprintf(f, "usage: kolm serve [--http] [ARTIFACT.kolm] [--port 8765] [--host 127.0.0.1] [--workers N]\n"
               "                  [--threads T] [--ctx N] [--max-body BYTES] [--max-jobs N] [--max-messages N]\n"
               "                  [--max-request-tokens N] [--request-timeout S] [--sse-keepalive S]\n"
               "                  [--api-key KEY] [--keyring DIR] [--allow-unsigned] [--receipt-key FILE]\n"
               "                  [--receipt-log-max BYTES] [--max-models N] [--devices LIST]\n"
               "                  [--kv-dtype f16|bf16|f32|fp8] [--quantization none|fp8]\n"
               "                  [--gpu-memory-fraction F]\n"
               "       kolm keygen | pack | inspect | verify ...   (kolm COMMAND --help)\n"
               "\n"
               "Serves ARTIFACT.kolm (default $KOLM_HOME/artifacts/" DEFAULT_ARTIFACT ", KOLM_HOME\n"
               "defaulting to ~/.kolm) with an OpenAI-compatible API on http://HOST:PORT/v1. Every answer\n"
               "carries a signed x-kolm-receipt; receipts are logged in $KOLM_HOME/receipts/.\n"
               "  --keyring DIR   trusted artifact signers: a directory of .pub files (default\n"
               "                  $KOLM_HOME/keys/trusted; kolm keygen adds its key there)\n"
               "  --allow-unsigned  serve an artifact that is unsigned, signed by an untrusted key or whose\n"
               "                  signature fails, or a raw GGUF file (logged; blob hashes are still checked)\n"
               "  --receipt-key FILE  the receipt signing key (default $KOLM_HOME/keys/gateway.key, made on\n"
               "                  first use)\n"
               "  --receipt-log-max B  receipt log size before rotation (default 67108864)\n"
               "  --kv-dtype T    KV cache storage: f16 (default), bf16, f32, or fp8 (E4M3, a scale per token\n"
               "                  and head; made for GPU workers, correct but slow on CPU)\n"
               "  --quantization Q  none (default), or fp8: the layer projections the model stores as\n"
               "                  f32, f16 or bf16 are quantized at load to E4M3 with a scale per output\n"
               "                  row (half of bf16's bytes per token); embeddings, the LM head and\n"
               "                  weights the GGUF already quantizes are kept\n"
               "  --gpu-memory-fraction F  the share of each GPU its worker may use (default 0.9): the\n"
               "                  KV cache gets what the weights and activations leave of it\n"
               "  --devices LIST  one worker per device: cpu or GPU ordinals, e.g. 0,1 (cuda:0, cuda:1);\n"
               "                  default: one worker per visible GPU, or with none (or with --workers)\n"
               "                  CPU workers\n"
               "  --max-models N  models loaded at once, the served one and those of $KOLM_HOME/artifacts/\n"
               "                  loaded on request (default 4)\n"
               "  --http          serve HTTP (the default and only transport)\n"
               "  --port N        TCP port (default 8765)\n"
               "  --host ADDR     bind address (default 127.0.0.1: loopback only)\n"
               "  --workers N     CPU worker processes (default 1 when no GPU is visible)\n"
               "  --threads T     compute threads per worker (default: all cores / workers)\n"
               "  --ctx N         context window in tokens (default min(model, 8192))\n"
               "  --max-body B    largest request body in bytes (default 8388608)\n"
               "  --max-jobs N    requests running or queued per worker before 429s (default 256)\n"
               "  --max-messages N  messages in one chat request (default 2048)\n"
               "  --max-request-tokens N  completion tokens one request may ask for, over all its\n"
               "                  choices (default 1048576)\n"
               "  --request-timeout S  seconds before a request is cancelled with a 504 (default 600; 0 = none)\n"
               "  --sse-keepalive S  seconds without output before a stream gets a ': keep-alive' comment\n"
               "                  (default 15; 0 = none)\n"
               "  --api-key KEY   require 'Authorization: Bearer KEY' on /v1 (default $KOLM_API_KEY; unset = open)\n");
}

/* Seconds (decimals allowed) in [0, hi] -> milliseconds. */
static int parse_seconds(const char *s, double hi, uint64_t *ms) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0 && v <= hi))
        return -1;
    *ms = (uint64_t)(v * 1000 + 0.5);
    return 0;
}

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

#define MAX_DEVICES 64

/* "0,1,cpu" -> "cuda:0", "cuda:1", "cpu"; the count, or -1 when malformed. */
static int parse_devices(const char *s, char names[][16], const char **out) {
    int n = 0;
    for (const char *p = s;; p++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char item[16];
        long ord;
        if (!len || len >= sizeof item || n == MAX_DEVICES)
            return -1;
        memcpy(item, p, len);
        item[len] = 0;
        if (!strcmp(item, "cpu"))
            snprintf(names[n], 16, "cpu");
        else if (!parse_long(!strncmp(item, "cuda:", 5) ? item + 5 : item, 0, 1023, &ord))
            snprintf(names[n], 16, "cuda:%ld", ord);
        else
            return -1;
        out[n] = names[n];
        n++;
        if (!e)
            return n;
        p = e;
    }
}

/* The GPUs the worker sees (`kolm-worker --devices`: 0 when it was built without
 * CUDA or finds no device) as "cuda:0" .. into names/out; their count. */
static int visible_gpus(char names[][16], const char **out) {
    char buf[64];
    size_t len;
    long n;
    if (gw_cli_worker_run("--devices", NULL, buf, sizeof buf, &len) || !len)
        return 0;
    buf[strcspn(buf, "\n")] = 0;
    if (parse_long(buf, 0, MAX_DEVICES, &n))
        return 0;
    for (long i = 0; i < n; i++) {
        snprintf(names[i], 16, "cuda:%d", (int)i);
        out[i] = names[i];
    }
    return (int)n;
}

static void on_model_change(void *ud, gw_model *m) {
    gw_http **http = ud;
    if (*http)
        gw_http_model_changed(*http, m);
}

static int serve(int argc, char **argv) {
    const char *model = NULL, *host = "127.0.0.1";
    long port = 8765, workers = 1, threads = 0, ctx = 0, max_body = 8L << 20, max_jobs = 256, max_messages = 2048,
         max_request_tokens = 1L << 20;
    uint64_t timeout_ms = 600000, keepalive_ms = 15000;
    const char *api_key = getenv("KOLM_API_KEY");
    const char *keyring = NULL, *receipt_key = NULL;
    int allow_unsigned = 0;
    long receipt_log_max = 64L << 20, max_models = 4;
    const char *devices_arg = NULL, *kv_dtype = NULL, *quantization = NULL, *gpu_fraction = NULL;
    int workers_given = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--http"))
            continue;
        if (!strcmp(a, "--allow-unsigned")) {
            allow_unsigned = 1;
            continue;
        }
        if (a[0] != '-') {
            if (model) {
                fprintf(stderr, "kolm serve: more than one model given (%s, %s)\n", model, a);
                return 2;
            }
            model = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kolm serve: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int bad = 0;
        if (!strcmp(a, "--port"))
            bad = parse_long(v, 1, 65535, &port);
        else if (!strcmp(a, "--host"))
            host = v;
        else if (!strcmp(a, "--workers")) {
            bad = parse_long(v, 1, 256, &workers);
            workers_given = 1;
        } else if (!strcmp(a, "--devices"))
            devices_arg = v;
        else if (!strcmp(a, "--gpu-memory-fraction")) {
            char *end;
            errno = 0;
            double f = strtod(v, &end);
            gpu_fraction = v;
            bad = errno || *end || end == v || !(f > 0 && f <= 1);
        } else if (!strcmp(a, "--kv-dtype")) {
            kv_dtype = v;
            bad = strcmp(v, "f16") && strcmp(v, "bf16") && strcmp(v, "f32") && strcmp(v, "fp8");
        } else if (!strcmp(a, "--quantization")) {
            quantization = v;
            bad = strcmp(v, "none") && strcmp(v, "fp8");
        }
        else if (!strcmp(a, "--threads"))
            bad = parse_long(v, 1, 1024, &threads);
        else if (!strcmp(a, "--ctx"))
            bad = parse_long(v, 16, 1 << 20, &ctx);
        else if (!strcmp(a, "--max-body"))
            bad = parse_long(v, 1024, 1L << 30, &max_body);
        else if (!strcmp(a, "--max-jobs"))
            bad = parse_long(v, 1, 1 << 20, &max_jobs);
        else if (!strcmp(a, "--max-messages"))
            bad = parse_long(v, 1, PROTO_MAX_MESSAGES, &max_messages);
        else if (!strcmp(a, "--max-request-tokens"))
            bad = parse_long(v, 1, 1L << 30, &max_request_tokens);
        else if (!strcmp(a, "--request-timeout"))
            bad = parse_seconds(v, 86400 * 7, &timeout_ms);
        else if (!strcmp(a, "--sse-keepalive"))
            bad = parse_seconds(v, 3600, &keepalive_ms);
        else if (!strcmp(a, "--keyring"))
            keyring = v;
        else if (!strcmp(a, "--receipt-key"))
            receipt_key = v;
        else if (!strcmp(a, "--max-models"))
            bad = parse_long(v, 1, 64, &max_models);
        else if (!strcmp(a, "--receipt-log-max"))
            bad = parse_long(v, 4096, 1L << 40, &receipt_log_max);
        else if (!strcmp(a, "--api-key")) {
            api_key = v;
            bad = !*v; // an empty key would silently leave the server open
        }
        else {
            fprintf(stderr, "kolm serve: unknown option %s (see kolm serve --help)\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "kolm serve: bad value for %s: %s\n", a, v);
            return 2;
        }
    }
    char home[PATH_MAX], defpath[PATH_MAX + 64], ring[PATH_MAX + 64];
    cm_kolm_home(home, sizeof home);
    if (!model) {
        snprintf(defpath, sizeof defpath, "%s/artifacts/" DEFAULT_ARTIFACT, home);
        model = defpath;
    }
    if (!keyring) {
        cm_kolm_keyring(ring, sizeof ring);
        keyring = ring;
    }
    struct stat stb;
    if (stat(model, &stb) || !S_ISREG(stb.st_mode)) {
        fprintf(stderr,
                "kolm serve: model file %s not found.\n"
                "Install and pack the embedded default model with deploy/serve-default.sh,\n"
                "or pass the path of a .kolm artifact.\n",
                model);
        return 1;
    }
    static char dev_names[MAX_DEVICES][16];
    static const char *devices[MAX_DEVICES];
    if (devices_arg) {
        int nd = parse_devices(devices_arg, dev_names, devices);
        if (nd <= 0) {
            fprintf(stderr, "kolm serve: bad value for --devices: %s (a list of cpu and GPU ordinals, e.g. 0,1)\n",
                    devices_arg);
            return 2;
        }
        if (workers_given && workers != nd) {
            fprintf(stderr, "kolm serve: --devices names %d device(s), one worker each; --workers %ld disagrees\n", nd,
                    workers);
            return 2;
        }
        workers = nd;
    }
    cm_log_init("gateway", CM_LOG_INFO);
    char wexe[PATH_MAX];
    if (gw_cli_worker_path(wexe, sizeof wexe)) {
        fprintf(stderr, "kolm serve: cannot find the kolm-worker executable next to kolm\n");
        return 1;
    }
    int gpus = 0; // neither --devices nor --workers: a worker per visible GPU, else one CPU worker
    if (!devices_arg && !workers_given && (gpus = visible_gpus(dev_names, devices)) > 0) {
        workers = gpus;
        cm_info("%d GPU(s) visible: one worker each (--devices chooses others, --devices cpu the CPU)", gpus);
    }
    int gpu_workers = 0;
    for (long i = 0; (devices_arg || gpus) && i < workers; i++)
        gpu_workers += !strncmp(devices[i], "cuda:", 5);
    if (gpu_fraction && !gpu_workers) {
        fprintf(stderr, "kolm serve: --gpu-memory-fraction sizes GPU workers' KV caches, and this serve runs "
                        "none (no GPU visible, or --devices/--workers chose CPU workers)\n");
        return 2;
    }
    if (!threads) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cpus / workers > 0 ? cpus / workers : 1;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct sigaction sc = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigaction(SIGCHLD, &sc, NULL);

    char err[1100] = "";
    gw_receipts_config rc_cfg = {.home = home, .key_path = receipt_key, .log_max = (uint64_t)receipt_log_max};
    gw_receipts *receipts = gw_receipts_open(&rc_cfg, err, sizeof err);
    if (!receipts) {
        fprintf(stderr, "kolm serve: %s\n", err);
        return 1;
    }
    h2o_evloop_t *loop = h2o_evloop_create();
    gw_http *http = NULL;
    gw_models_config mc = {.loop = loop,
                           .home = home,
                           .keyring = keyring,
                           .allow_unsigned = allow_unsigned,
                           .max_models = (int)max_models,
                           .pool = {.worker_exe = wexe, .n_workers = (int)workers,
                                    .devices = devices_arg || gpus ? devices : NULL, .kv_dtype = kv_dtype,
                                    .quantization = quantization, .gpu_fraction = gpu_fraction,
                                    .threads = (int)threads,
                                    .ctx = (int)ctx, .max_jobs = (int)max_jobs},
                           .on_change = on_model_change,
                           .ud = &http};
    gw_models *models = gw_models_create(&mc);
    if (!models || gw_models_serve(models, model, err, sizeof err)) {
        fprintf(stderr, "kolm serve: refusing %s\n", *err ? err : "(out of memory)");
        gw_models_free(models, 2000);
        gw_receipts_close(receipts);
        return 1;
    }
    gw_http_config hc = {.host = host,
                         .port = (int)port,
                         .max_body = (size_t)max_body,
                         .max_messages = (int)max_messages,
                         .max_request_tokens = max_request_tokens,
                         .request_timeout_ms = timeout_ms,
                         .keepalive_ms = keepalive_ms,
                         .api_key = api_key,
                         .receipts = receipts};
    http = gw_http_create(loop, models, &hc);
    if (!http) {
        gw_models_free(models, 2000);
        gw_receipts_close(receipts);
        return 1;
    }
    gw_model *served = gw_models_served(models);
    cm_info("serving %s as '%s' on http://%s:%ld/v1 (%ld worker(s), %ld thread(s) each%s); receipts signed by %s",
            model, gw_model_id(served), host, port, workers, threads, api_key && *api_key ? ", API key required" : "",
            gw_receipts_key(receipts)->id);
    int rc = 0;
    while (!g_stop) {
        h2o_evloop_run(loop, 100);
        gw_models_tick(models);
        if (gw_model_get_state(served) == GW_MODEL_FAILED) {
            cm_error("the worker could not load %s (its error is above); exiting", model);
            rc = 1;
            break;
        }
    }
    cm_info("shutting down");
    gw_models_free(models, 5000);
    gw_http_free(http);
    gw_receipts_close(receipts);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (cm_crypto_init()) {
        fprintf(stderr, "kolm: libsodium cannot initialize\n");
        return 1;
    }
    if (!strcmp(argv[1], "serve"))
        return serve(argc - 2, argv + 2);
    if (!strcmp(argv[1], "keygen"))
        return gw_cli_keygen(argc - 2, argv + 2);
    if (!strcmp(argv[1], "pack"))
        return gw_cli_pack(argc - 2, argv + 2);
    if (!strcmp(argv[1], "inspect"))
        return gw_cli_inspect(argc - 2, argv + 2);
    if (!strcmp(argv[1], "verify"))
        return gw_cli_verify(argc - 2, argv + 2);
    fprintf(stderr, "kolm: unknown command '%s' (see kolm --help)\n", argv[1]);
    return 2;
}
