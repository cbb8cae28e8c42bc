/* kolm-worker: one model on one device, serving jobs from the gateway.
 *
 *   kolm-worker --fd N --model PATH [--model-id ID] [--worker-id K] [--threads T]
 *               [--device cpu|cuda:N] [--kv-dtype f16|bf16|f32|fp8] [--quantization none|fp8] [--ctx N]
 *               [--kv-mib M | --gpu-memory-fraction F] [--block-size B] [--max-seqs S]
 *               [--cuda-graphs on|off]
 *   kolm-worker --model PATH --prompt TEXT [--max-tokens N] [--temperature T]
 *               [--seed S] [--stop S]...      (standalone: one request, text to stdout)
 *   kolm-worker --describe GGUF               (the model's metadata as JSON, for kolm pack)
 *   kolm-worker --devices                     (how many GPUs it can use, for kolm serve)
 *
 * PATH is a GGUF file or a .kolm artifact. An artifact's weights blob is mapped in
 * place (no copy) while a thread hashes every blob against the manifest; the
 * worker says HELLO only when both are done and fails naming the blob otherwise.
 * With --artifact-cid the artifact must be exactly the one the gateway verified.
 *
 * With --fd the worker speaks proto/ frames on that Unix socket: HELLO once the
 * model is loaded, then SUBMIT/CANCEL/STATS_REQ/SHUTDOWN in, EVENT/STATS out. The
 * loop alternates non-blocking socket I/O with one scheduler step; it blocks in
 * poll() only when no job is pending. EOF on the socket means the gateway is gone:
 * the worker exits at once. A malformed frame is a gateway bug: log and exit 1 (the
 * gateway respawns workers). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cm_buf.h"
#include "common/cm_crypto.h"
#include "common/cm_kolm.h"
#include "common/cm_log.h"
#include "kernels/cpu/kn_cpu.h"
#include "proto/proto.h"
#include "worker/wk_gguf.h"
#include "worker/wk_kv.h"
#include "worker/wk_model.h"
#include "worker/wk_sched.h"
#include "worker/wk_template.h"
#include "worker/wk_tools.h"
#include "worker/wk_tok.h"

#define MAX_OUT_BUF (256u << 20) // a gateway that stops reading this long is gone

typedef struct opts {
    int fd;
    const char *model;
    const char *model_id;
    const char *artifact_cid;
    const char *device; // "cpu" or "cuda:N"
    kn_type kv_type;    // --kv-dtype: f16 (default), bf16, f32, or fp8 (E4M3 with a scale per token and head)
    wk_quant quant;     // --quantization: none (default) or fp8 (float layer projections to E4M3, wk_model.h)
    int worker_id, threads, ctx, kv_mib, block_size, max_seqs;
    double gpu_fraction; // --gpu-memory-fraction; 0: not given
    int cuda_graphs;     // --cuda-graphs on (default) | off
    const char *prompt;
    int max_tokens;
    float temperature;
    int has_seed;
    uint64_t seed;
    proto_str stop[PROTO_MAX_STOP];
    int n_stop;
} opts;

typedef struct worker {
    opts o;
    wk_gguf *g;
    wk_tok *tok;
    wk_model *m;
    wk_kv *kv;
    kn_backend *be;
    wk_sched *sched;
    wk_template_family tmpl;
    int n_ctx;
    cm_buf out; // frames waiting to be written (socket mode)
    proto_stats last; // the last STATS sent
    int stats_sent;
    // standalone mode
    cm_buf text;
    int done;
    int failed;
} worker;

static void usage(void) {
    fprintf(stderr, "usage: kolm-worker --fd N --model PATH [--model-id ID] [--artifact-cid CID] [--worker-id K]\n"
                    "                   [--device cpu|cuda:N] [--kv-dtype f16|bf16|f32|fp8] [--threads T] [--ctx N]\n"
                    "                   [--kv-mib M | --gpu-memory-fraction F] [--block-size B] [--max-seqs S]\n"
                    "                   [--quantization none|fp8] [--cuda-graphs on|off]\n"
                    "       kolm-worker --model PATH --prompt TEXT [--max-tokens N] [--temperature T]\n"
                    "                   [--seed S] [--stop S]...\n"
                    "       kolm-worker --describe GGUF\n"
                    "       kolm-worker --devices\n"
                    "  --kv-dtype T  KV cache storage: f16 (default), bf16 (f32's range, 8 significant bits),\n"
                    "                f32, or fp8 (E4M3 with a scale per token and head; slow on CPU)\n"
                    "  --quantization Q  none (default), or fp8: the layer projections a GGUF stores as\n"
                    "                f32, f16 or bf16 become E4M3 with a scale per output row (half of bf16's\n"
                    "                bytes); embeddings, the LM head and quantized GGUF weights are kept\n"
                    "  --kv-mib M    KV cache size (default on CPU: 512)\n"
                    "  --gpu-memory-fraction F  on a GPU (the default way there, F = 0.9): the share of the\n"
                    "                device's memory the worker may use; the KV cache gets what the weights,\n"
                    "                the activations and a margin for the libraries leave of it\n"
                    "  --cuda-graphs on|off  on a GPU: replay decode steps from CUDA graphs recorded per\n"
                    "                batch shape (default on; off runs every op with its own launch)\n");
}

static int parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

/* --kv-dtype NAME -> the KV cache's kn_type; -1 for an unknown name. */
static int parse_kv_dtype(const char *s, kn_type *out) {
    static const struct {
        const char *name;
        kn_type type;
    } names[] = {{"f16", KN_F16}, {"bf16", KN_BF16}, {"f32", KN_F32}, {"fp8", KN_E4M3}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) {
            *out = names[i].type;
            return 0;
        }
    return -1;
}

static int parse_args(int argc, char **argv, opts *o) {
    *o = (opts){.fd = -1, .kv_type = KN_F16, .threads = 0, .ctx = 8192, .kv_mib = 0, .block_size = 16,
                .max_seqs = 32, .cuda_graphs = 1, .max_tokens = 128, .temperature = 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            exit(0);
        }
        if (!v) {
            fprintf(stderr, "kolm-worker: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (!strcmp(a, "--fd"))
            bad = parse_int(v, 0, INT_MAX, &o->fd);
        else if (!strcmp(a, "--model"))
            o->model = v;
        else if (!strcmp(a, "--model-id"))
            o->model_id = v;
        else if (!strcmp(a, "--artifact-cid"))
            o->artifact_cid = v;
        else if (!strcmp(a, "--device"))
            o->device = v;
        else if (!strcmp(a, "--kv-dtype"))
            bad = parse_kv_dtype(v, &o->kv_type);
        else if (!strcmp(a, "--quantization")) {
            bad = strcmp(v, "none") && strcmp(v, "fp8");
            o->quant = !strcmp(v, "fp8") ? WK_QUANT_FP8 : WK_QUANT_NONE;
        }
        else if (!strcmp(a, "--worker-id"))
            bad = parse_int(v, 0, 1 << 20, &o->worker_id);
        else if (!strcmp(a, "--threads"))
            bad = parse_int(v, 0, 1024, &o->threads);
        else if (!strcmp(a, "--ctx"))
            bad = parse_int(v, 16, 1 << 20, &o->ctx);
        else if (!strcmp(a, "--kv-mib"))
            bad = parse_int(v, 1, 1 << 20, &o->kv_mib);
        else if (!strcmp(a, "--gpu-memory-fraction")) {
            char *end;
            errno = 0;
            o->gpu_fraction = strtod(v, &end);
            bad = errno || *end || end == v || !(o->gpu_fraction > 0 && o->gpu_fraction <= 1);
        }
        else if (!strcmp(a, "--cuda-graphs")) {
            o->cuda_graphs = !strcmp(v, "on");
            bad = !o->cuda_graphs && strcmp(v, "off") != 0;
        } else if (!strcmp(a, "--block-size"))
            bad = parse_int(v, 1, 1024, &o->block_size);
        else if (!strcmp(a, "--max-seqs"))
            bad = parse_int(v, 1, 1024, &o->max_seqs);
        else if (!strcmp(a, "--prompt"))
            o->prompt = v;
        else if (!strcmp(a, "--max-tokens"))
            bad = parse_int(v, 1, 1 << 20, &o->max_tokens);
        else if (!strcmp(a, "--temperature"))
            o->temperature = strtof(v, NULL);
        else if (!strcmp(a, "--seed")) {
            o->has_seed = 1;
            o->seed = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--stop") && o->n_stop < PROTO_MAX_STOP) {
            o->stop[o->n_stop].p = (char *)v;
            o->stop[o->n_stop++].len = (uint32_t)strlen(v);
        } else {
            fprintf(stderr, "kolm-worker: unknown option %s\n", a);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "kolm-worker: bad value for %s: %s\n", a, v);
            return -1;
        }
    }
    if (!o->model || (o->fd < 0 && !o->prompt)) {
        usage();
        return -1;
    }
    return 0;
}

/* ---- events out ---- */

static void on_event(void *ud, const proto_event *ev) {
    worker *w = ud;
    if (w->o.fd >= 0) {
        if (proto_encode_event(&w->out, ev))
            cm_error("cannot encode event for job %llu", (unsigned long long)ev->job_id);
        return;
    }
    switch (ev->kind) {
    case PROTO_EV_DELTA: cm_buf_append(&w->text, ev->text.p, ev->text.len); break;
    case PROTO_EV_FINISH: w->done = 1; break;
    case PROTO_EV_ERROR:
        fprintf(stderr, "kolm-worker: %s: %.*s\n", ev->code.p, (int)ev->message.len, ev->message.p);
        w->done = w->failed = 1;
        break;
    default: break;
    }
}

/* ---- loading ---- */

/* An artifact's blob check, run beside the model load. */
typedef struct blob_check {
    const cm_kolm *k;
    int rc;
    char err[1024];
} blob_check;

static void *check_blobs(void *arg) {
    blob_check *c = arg;
    c->rc = cm_kolm_verify_blobs(c->k, c->err, sizeof c->err);
    return NULL;
}

/* Opens the model: a GGUF file, or an artifact's weights blob (its other blobs'
 * uses are not built yet: an adapter would change the answers, so it is refused). */
static int open_model(worker *w, cm_kolm **art, char *err, size_t errlen) {
    *art = NULL;
    if (cm_kolm_is_artifact(w->o.model) != 1)
        return wk_gguf_open(w->o.model, &w->g, err, errlen);
    char home[4096];
    cm_kolm_home(home, sizeof home);
    if (cm_kolm_open(w->o.model, home, art, err, errlen))
        return -EINVAL;
    if (w->o.artifact_cid && strcmp(w->o.artifact_cid, (*art)->cid)) {
        cm_set_err(err, errlen, "%s changed since the gateway verified it (CID %s, expected %s)", w->o.model,
                   (*art)->cid, w->o.artifact_cid);
        return -EINVAL;
    }
    if (cm_kolm_blob_role(*art, "adapter")) {
        cm_set_err(err, errlen, "%s carries a LoRA adapter, which this worker cannot apply yet", w->o.model);
        return -ENOTSUP;
    }
    for (int i = 0; i < (*art)->n_blobs; i++)
        if (strcmp((*art)->blobs[i].role, "weights"))
            cm_warn("%s: its '%s' blob is not used by this worker yet", w->o.model, (*art)->blobs[i].role);
    const cm_kolm_blob *b = cm_kolm_blob_role(*art, "weights");
    return wk_gguf_open_at(b->path, b->offset, b->size, &w->g, err, errlen);
}

static int load_model(worker *w);

/* --device: "cpu" (the default) or "cuda:N". */
static int create_backend(worker *w) {
    const char *d = w->o.device ? w->o.device : "cpu";
    if (!strcmp(d, "cpu")) {
        w->be = kn_cpu_create(w->o.threads);
        if (!w->be) {
            cm_error("cannot create the CPU backend");
            return -ENOMEM;
        }
        return 0;
    }
    int n = -1;
    if (strncmp(d, "cuda:", 5) || parse_int(d + 5, 0, 1023, &n)) {
        cm_error("--device %s: expected cpu or cuda:N", d);
        return -EINVAL;
    }
#ifdef KOLM_HAVE_CUDA
    w->be = kn_cuda_create(n);
    if (!w->be) {
        cm_error("--device %s: no such CUDA device (or it cannot be used)", d);
        return -ENODEV;
    }
    return 0;
#else
    cm_error("--device %s: this kolm-worker was built without CUDA (configure with -DKOLM_CUDA=ON)", d);
    return -ENOTSUP;
#endif
}

static int load(worker *w) {
    char err[1024] = "";
    cm_kolm *art = NULL;
    int rc = open_model(w, &art, err, sizeof err);
    if (rc) {
        cm_error("cannot open model %s: %s", w->o.model, err);
        cm_kolm_close(art);
        return rc;
    }
    if (!art)
        return load_model(w);
    blob_check bc = {.k = art};
    pthread_t th;
    int threaded = !pthread_create(&th, NULL, check_blobs, &bc);
    if (!threaded)
        check_blobs(&bc);
    rc = load_model(w);
    if (threaded)
        pthread_join(th, NULL);
    if (!rc && bc.rc) {
        cm_error("refusing %s: %s", w->o.model, bc.err);
        rc = -EINVAL;
    }
    cm_kolm_close(art);
    return rc;
}

/* The KV pool's size in blocks of per_block bytes: --kv-mib when given; else, on a
 * GPU, --gpu-memory-fraction (default 0.9) of the device's memory less what is in
 * use after the weights, the scheduler's activations and a margin for the
 * CUDA runtime (its context, graphs) and allocation rounding; else 512 MiB. < 2 after
 * saying why when no pool fits. */
static long kv_blocks(worker *w, const wk_sched_config *cfg, size_t per_block) {
    const kn_backend *be = w->be;
    if (w->o.gpu_fraction > 0 && w->o.kv_mib) {
        cm_error("--kv-mib and --gpu-memory-fraction both size the KV cache: give one");
        return 0;
    }
    if (w->o.gpu_fraction > 0 && !be->ops->mem_info) {
        cm_error("--gpu-memory-fraction sizes a GPU worker's KV cache; this worker runs on %s (use --kv-mib)",
                 be->ops->name);
        return 0;
    }
    if (w->o.kv_mib || !be->ops->mem_info) {
        int mib = w->o.kv_mib ? w->o.kv_mib : 512;
        long n = (long)(((size_t)mib << 20) / per_block);
        if (n < 2)
            cm_error("--kv-mib %d is too small for two blocks of this model", mib);
        return n;
    }
    size_t free_b, total_b;
    be->ops->mem_info(w->be, &free_b, &total_b);
    const double fraction = w->o.gpu_fraction > 0 ? w->o.gpu_fraction : 0.9;
    const int n_layer = wk_model_hparams(w->m)->n_layer;
    size_t reserve = wk_sched_reserve_bytes(w->m, cfg, w->o.block_size) + ((size_t)256 << 20) +
                     (size_t)(2 * n_layer + 1) * ((size_t)2 << 20);
    long n = wk_kv_blocks_for_memory(total_b, free_b, fraction, reserve, per_block);
    if (n < 2)
        cm_error("--gpu-memory-fraction %.2f leaves no room for the KV cache: %.1f of %.1f GiB in use after "
                 "the weights, %.1f GiB more needed for activations",
                 fraction, (double)(total_b - free_b) / (1 << 30), (double)total_b / (1 << 30),
                 (double)reserve / (1 << 30));
    return n;
}

static int load_model(worker *w) {
    char err[512] = "";
    int rc;
    if ((rc = wk_tok_load(w->g, &w->tok, err, sizeof err))) {
        cm_error("cannot load the tokenizer of %s: %s", w->o.model, err);
        return rc;
    }
    if ((rc = create_backend(w)))
        return rc;
    if ((rc = wk_model_load(w->g, w->be, w->o.quant, &w->m, err, sizeof err))) {
        cm_error("cannot load model %s: %s", w->o.model, err);
        return rc;
    }
    if (w->o.quant == WK_QUANT_FP8) {
        int n_fp8, n_proj;
        wk_model_quantized(w->m, &n_fp8, &n_proj);
        cm_info("fp8: %d of %d layer projections quantized to E4M3 (the others keep their GGUF quantization)",
                n_fp8, n_proj);
    }
    wk_model_set_exec(w->m, w->o.cuda_graphs ? WK_EXEC_GRAPHS : WK_EXEC_EAGER);
    const wk_hparams *hp = wk_model_hparams(w->m);
    w->n_ctx = w->o.ctx < hp->n_ctx_train ? w->o.ctx : hp->n_ctx_train;
    const kn_type kvt = w->o.kv_type;
    size_t per_block = (size_t)2 * hp->n_layer * w->o.block_size * hp->n_head_kv *
                       wk_kv_head_bytes(kvt, hp->head_dim); // K+V
    w->tmpl = wk_template_detect(w->g, hp->arch_name);
    wk_sched_config cfg = {.n_ctx = w->n_ctx, .max_seqs = w->o.max_seqs, .step_tokens = 512, .family = w->tmpl};
    long n_blocks = kv_blocks(w, &cfg, per_block);
    if (n_blocks < 2)
        return -EINVAL;
    w->kv = wk_kv_create(w->be, hp->n_layer, hp->n_head_kv, hp->head_dim, w->o.block_size, (int)n_blocks, kvt);
    if (!w->kv) {
        cm_error("cannot allocate the KV cache (%ld blocks, %.0f MiB)", n_blocks,
                 (double)n_blocks * (double)per_block / (1 << 20));
        return -ENOMEM;
    }
    w->sched = wk_sched_create(w->m, w->kv, w->tok, &cfg, on_event, w);
    if (!w->sched) {
        cm_error("cannot create the scheduler");
        return -ENOMEM;
    }
    cm_info("loaded %s (%s, %d layers, ctx %d, %ld %s KV blocks of %d, template %s, %s backend, %d threads)",
            w->o.model, hp->arch_name, hp->n_layer, w->n_ctx, n_blocks, kn_type_name(kvt), w->o.block_size,
            wk_template_name(w->tmpl), w->be->ops->name, w->be->n_threads);
    return 0;
}

static void unload(worker *w) {
    wk_sched_free(w->sched);
    wk_kv_free(w->kv);
    wk_model_free(w->m);
    if (w->be)
        w->be->ops->destroy(w->be);
    wk_tok_free(w->tok);
    wk_gguf_close(w->g);
    cm_buf_free(&w->out);
    cm_buf_free(&w->text);
}

static void submit_error(worker *w, uint64_t job, int status, const char *code, const char *param, const char *msg) {
    proto_event ev = {.job_id = job, .kind = PROTO_EV_ERROR, .status = (uint16_t)status};
    ev.code = (proto_str){(char *)code, (uint32_t)strlen(code)};
    ev.message = (proto_str){(char *)msg, (uint32_t)strlen(msg)};
    ev.param = (proto_str){(char *)param, (uint32_t)strlen(param)};
    on_event(w, &ev);
}

/* Renders (chat) or tokenizes (raw prompts) and queues a submit; errors go back
 * as events. */
static void submit(worker *w, const proto_submit *sub) {
    char err[256] = "";
    int np = sub->n_prompts ? (int)sub->n_prompts : 1;
    int32_t **toks = calloc((size_t)np, sizeof *toks);
    int *nt = calloc((size_t)np, sizeof *nt);
    wk_chat_msg *msgs = calloc(sub->n_msgs + 1, sizeof *msgs);
    char *tools = NULL, *sys = NULL;
    if (!toks || !nt || !msgs)
        goto nomem;
    if (!sub->n_prompts) {
        int nm = 0;
        if (sub->n_tools) {
            // The tool definitions join the system message (or make one).
            if (!(tools = wk_tools_prompt(w->tmpl, sub)))
                goto nomem;
            const proto_msg *m0 = sub->n_msgs ? &sub->msgs[0] : NULL;
            int has_sys = m0 && (!strcmp(m0->role.p, "system") || !strcmp(m0->role.p, "developer"));
            size_t tl = strlen(tools), cl = has_sys ? m0->content.len : 0;
            if (!(sys = malloc(cl + 2 + tl + 1)))
                goto nomem;
            if (has_sys) {
                memcpy(sys, m0->content.p, cl);
                memcpy(sys + cl, "\n\n", 2);
                cl += 2;
            }
            memcpy(sys + cl, tools, tl + 1);
            msgs[nm++] = (wk_chat_msg){"system", sys, cl + tl, NULL, 0};
        }
        int first = nm && sub->n_msgs && !strcmp(msgs[0].role, "system") &&
                    (!strcmp(sub->msgs[0].role.p, "system") || !strcmp(sub->msgs[0].role.p, "developer"));
        for (uint32_t i = first ? 1 : 0; i < sub->n_msgs; i++)
            msgs[nm++] = (wk_chat_msg){sub->msgs[i].role.p, sub->msgs[i].content.p, sub->msgs[i].content.len,
                                       sub->msgs[i].calls, (int)sub->msgs[i].n_calls};
        int rc = wk_template_render(w->tmpl, w->tok, msgs, nm, &toks[0], &nt[0], err, sizeof err);
        if (rc == -ENOMEM)
            goto nomem;
        if (rc) {
            submit_error(w, sub->job_id, 400, "invalid_request_error", "messages", err);
            goto out;
        }
    }
    for (uint32_t p = 0; p < sub->n_prompts; p++) {
        const proto_prompt *pr = &sub->prompts[p];
        if (pr->tokens) {
            toks[p] = malloc(((size_t)pr->n_tokens + 1) * sizeof **toks);
            if (!toks[p])
                goto nomem;
            memcpy(toks[p], pr->tokens, (size_t)pr->n_tokens * sizeof **toks);
            nt[p] = (int)pr->n_tokens;
            continue;
        }
        size_t cap = (size_t)pr->text.len + 2; // tokens rarely outnumber bytes; retried if they do
        toks[p] = malloc(cap * sizeof **toks);
        if (!toks[p])
            goto nomem;
        int n = wk_tok_encode(w->tok, pr->text.p, pr->text.len, 1, 0, toks[p], (int)cap);
        if (n > (int)cap) {
            int32_t *bigger = realloc(toks[p], (size_t)n * sizeof **toks);
            if (!bigger)
                goto nomem;
            toks[p] = bigger;
            n = wk_tok_encode(w->tok, pr->text.p, pr->text.len, 1, 0, toks[p], n);
        }
        if (n < 0) {
            submit_error(w, sub->job_id, 400, "invalid_request_error", "prompt", "the prompt cannot be tokenized");
            goto out;
        }
        nt[p] = n;
    }
    wk_sched_submit(w->sched, sub, np, (const int32_t *const *)toks, nt);
    goto out;
nomem:
    submit_error(w, sub->job_id, 503, "server_overloaded", "", "out of memory");
out:
    for (int p = 0; toks && p < np; p++)
        free(toks[p]);
    free(toks);
    free(nt);
    free(msgs);
    free(tools);
    free(sys);
}

/* ---- standalone ---- */

static int run_standalone(worker *w) {
    proto_msg msg = {.role = {"user", 4}, .content = {(char *)w->o.prompt, (uint32_t)strlen(w->o.prompt)}};
    proto_submit sub = {.job_id = 1, .n = 1, .n_msgs = 1, .msgs = &msg, .max_tokens = w->o.max_tokens,
                        .temperature = w->o.temperature, .top_p = 1, .has_seed = (uint8_t)w->o.has_seed,
                        .seed = w->o.seed, .n_stop = (uint32_t)w->o.n_stop, .stop = w->o.stop};
    submit(w, &sub);
    while (!w->done && wk_sched_busy(w->sched))
        if (wk_sched_step(w->sched))
            return 1;
    fwrite(w->text.data, 1, w->text.len, stdout);
    fputc('\n', stdout);
    return w->failed;
}

/* ---- socket mode ---- */

/* Writes as much of w->out as the socket takes. 0, or -1 when the peer is gone. */
static int flush_out(worker *w) {
    while (w->out.len) {
        ssize_t n = write(w->o.fd, w->out.data, w->out.len);
        if (n > 0) {
            cm_buf_consume(&w->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        return -1;
    }
    if (w->out.len > MAX_OUT_BUF) {
        cm_error("the gateway stopped reading (%zu bytes queued)", w->out.len);
        return -1;
    }
    return 0;
}

/* Sends STATS unprompted when the job or sequence counts changed since the last
 * STATS sent, so the gateway's view (/metrics) follows admissions and ends. */
static void push_stats(worker *w) {
    proto_stats st;
    wk_sched_stats(w->sched, &st);
    if (w->stats_sent && st.jobs == w->last.jobs && st.running == w->last.running && st.waiting == w->last.waiting)
        return;
    if (!proto_encode_stats(&w->out, &st)) {
        w->last = st;
        w->stats_sent = 1;
    }
}

/* Handles one frame. Returns 1 to shut down, 0 to go on. */
static int handle(worker *w, const proto_frame *f) {
    switch (f->type) {
    case PROTO_SUBMIT: submit(w, &f->u.submit); return 0;
    case PROTO_CANCEL:
        cm_debug("job %llu cancelled by the gateway", (unsigned long long)f->u.cancel_job_id);
        wk_sched_cancel(w->sched, f->u.cancel_job_id);
        return 0;
    case PROTO_STATS_REQ: {
        proto_stats st;
        wk_sched_stats(w->sched, &st);
        if (!proto_encode_stats(&w->out, &st)) {
            w->last = st;
            w->stats_sent = 1;
        }
        return 0;
    }
    case PROTO_SHUTDOWN: return 1;
    default: cm_warn("ignoring frame type %d from the gateway", f->type); return 0;
    }
}

static int run_socket(worker *w) {
    int fd = w->o.fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    const wk_hparams *hp = wk_model_hparams(w->m);
    const char *base = strrchr(w->o.model, '/');
    const char *id = w->o.model_id ? w->o.model_id : base ? base + 1 : w->o.model;
    proto_hello h = {.worker_id = (uint32_t)w->o.worker_id, .pid = (int32_t)getpid(),
                     .model_id = {(char *)id, (uint32_t)strlen(id)},
                     .arch = {(char *)hp->arch_name, (uint32_t)strlen(hp->arch_name)},
                     .n_ctx = (uint32_t)w->n_ctx, .n_vocab = (uint32_t)hp->n_vocab};
    if (proto_encode_hello(&w->out, &h))
        return 1;
    push_stats(w); // the KV pool's size from the start, not after the first job
    if (flush_out(w))
        return 1;
    cm_buf in = CM_BUF_INIT;
    int rc = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN | (w->out.len ? POLLOUT : 0)};
        int timeout = wk_sched_busy(w->sched) ? 0 : -1;
        if (poll(&p, 1, timeout) < 0 && errno != EINTR) {
            rc = 1;
            break;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            int eof = 0;
            for (;;) {
                if (cm_buf_reserve(&in, 65536)) {
                    rc = 1;
                    goto out;
                }
                ssize_t n = read(fd, in.data + in.len, in.cap - in.len);
                if (n > 0) {
                    in.len += (size_t)n;
                    continue;
                }
                if (n < 0 && errno == EINTR)
                    continue;
                if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                    eof = 1;
                break;
            }
            size_t off = 0;
            while (off < in.len) {
                proto_frame f;
                ssize_t n = proto_decode(in.data + off, in.len - off, &f);
                if (n == 0)
                    break;
                if (n < 0) {
                    cm_error("bad frame from the gateway: %s", proto_strerror((int)n));
                    rc = 1;
                    goto out;
                }
                off += (size_t)n;
                int stop = handle(w, &f);
                proto_frame_free(&f);
                if (stop) {
                    cm_info("shutdown requested");
                    flush_out(w);
                    goto out;
                }
            }
            cm_buf_consume(&in, off);
            if (flush_out(w)) { // ACCEPTED leaves before a long step, so streams start at once
                rc = 1;
                break;
            }
            if (eof) {
                cm_info("the gateway closed the socket; exiting");
                goto out;
            }
        }
        if (wk_sched_busy(w->sched) && wk_sched_step(w->sched)) {
            rc = 1;
            break;
        }
        push_stats(w);
        if (flush_out(w)) {
            rc = 1;
            break;
        }
    }
out:
    cm_buf_free(&in);
    return rc;
}

/* --describe: what kolm pack records about a GGUF, as one JSON object. */
static int describe(const char *path) {
    char err[512];
    wk_gguf *g;
    if (wk_gguf_open(path, &g, err, sizeof err)) {
        fprintf(stderr, "kolm-worker: %s\n", err);
        return 1;
    }
    const char *s;
    size_t n;
    char arch[64] = "";
    if (!wk_gguf_get_str(g, "general.architecture", &s, &n))
        snprintf(arch, sizeof arch, "%.*s", (int)n, s);
    json_t *j = json_object();
    json_object_set_new(j, "architecture", json_string(arch));
    if (!wk_gguf_get_str(g, "general.name", &s, &n))
        json_object_set_new(j, "name", json_stringn(s, n));
    if (!wk_gguf_get_str(g, "tokenizer.ggml.model", &s, &n))
        json_object_set_new(j, "tokenizer", json_stringn(s, n));
    wk_gguf_vtype et;
    uint64_t nv;
    const void *d;
    if (!wk_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &nv, &d))
        json_object_set_new(j, "vocab_size", json_integer((json_int_t)nv));
    char key[128];
    int64_t ctx;
    snprintf(key, sizeof key, "%s.context_length", arch);
    if (!wk_gguf_get_i64(g, key, &ctx))
        json_object_set_new(j, "context_length", json_integer(ctx));
    json_object_set_new(j, "chat_template", json_string(wk_template_name(wk_template_detect(g, arch))));
    if (!wk_gguf_get_str(g, "tokenizer.chat_template", &s, &n)) {
        uint8_t h[CM_SHA256_LEN];
        char hex[2 * CM_SHA256_LEN + 1];
        cm_sha256(s, n, h);
        cm_hex(h, sizeof h, hex);
        json_object_set_new(j, "chat_template_sha256", json_string(hex));
    }
    char *out = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    int rc = out ? puts(out) < 0 : 1;
    free(out);
    json_decref(j);
    wk_gguf_close(g);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--describe"))
        return describe(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "--devices")) { // the GPUs this worker can use, for kolm serve
#ifdef KOLM_HAVE_CUDA
        printf("%d\n", kn_cuda_device_count());
#else
        printf("0\n");
#endif
        return 0;
    }
    worker w = {0};
    if (parse_args(argc, argv, &w.o))
        return 2;
    char tag[32];
    snprintf(tag, sizeof tag, "worker%d", w.o.worker_id);
    cm_log_init(tag, CM_LOG_INFO);
    signal(SIGPIPE, SIG_IGN);
    int rc = load(&w) ? 1 : w.o.fd >= 0 ? run_socket(&w) : run_standalone(&w);
    unload(&w);
    return rc;
}
