/* gw_models: the models this gateway can answer for, each with its worker pool.
 *
 * The served model (the `kolm serve` argument) is loaded at start. Every
 * `*.kolm` in KOLM_HOME/artifacts/ is listed too, under its file name, and loaded
 * on the first request that names it: the same checks as at start (signature,
 * signer in the keyring unless --allow-unsigned; the workers hash the blobs), then
 * a pool with the served model's settings. Requests wait for it (gw_http parks
 * them); gw_models_tick reports each model that became ready or failed. */
#ifndef GW_MODELS_H
#define GW_MODELS_H

#include <h2o.h>

#include "gateway/gw_pool.h"

typedef struct gw_models gw_models;
typedef struct gw_model gw_model;

typedef enum gw_model_state { GW_MODEL_STARTING, GW_MODEL_READY, GW_MODEL_FAILED } gw_model_state;

/* Why gw_models_get found no model. */
typedef enum gw_model_refusal {
    GW_MODEL_NOT_FOUND,   // not served, not loaded, no such artifact file
    GW_MODEL_UNTRUSTED,   // the artifact fails its checks (signature, signer, format)
    GW_MODEL_AT_CAPACITY, // max_models are loaded already
} gw_model_refusal;

typedef struct gw_models_config {
    h2o_loop_t *loop;
    const char *home;    // KOLM_HOME
    const char *keyring; // trusted signers
    int allow_unsigned;
    int max_models;      // models loaded at once, the served one included (0: 64)
    gw_pool_config pool; // worker settings; its model fields are filled per model
    void (*on_change)(void *ud, gw_model *m); // a model became ready or failed
    void *ud;
} gw_models_config;

gw_models *gw_models_create(const gw_models_config *cfg);
/* Checks and starts the served model. 0, or -1 with the reason in err. */
int gw_models_serve(gw_models *ms, const char *path, char *err, size_t errlen);
/* Stops every pool (SHUTDOWN, then kill after timeout_ms) and frees all. */
void gw_models_free(gw_models *ms, int timeout_ms);
void gw_models_tick(gw_models *ms);

/* The model named id, loading a listed artifact on first use; NULL with *why (and,
 * but for NOT_FOUND, the reason in err) when there is none. Loaded models stay loaded. */
gw_model *gw_models_get(gw_models *ms, const char *id, size_t len, gw_model_refusal *why, char *err,
                        size_t errlen);
/* Without loading anything: the loaded model named id (NULL when it is not
 * loaded), and in *listed whether id is one /v1/models lists. */
const gw_model *gw_models_find(gw_models *ms, const char *id, size_t len, int *listed);
gw_model *gw_models_served(gw_models *ms);
/* Calls cb for the served and loaded models, then for every other artifact file
 * (m NULL), in a stable order. */
void gw_models_list(gw_models *ms, void (*cb)(void *ud, const char *id, const gw_model *m), void *ud);
/* Loaded models by index (for /metrics): NULL past the end. */
gw_model *gw_models_at(gw_models *ms, int i);

gw_pool *gw_model_pool(const gw_model *m);
const char *gw_model_id(const gw_model *m);
const char *gw_model_cid(const gw_model *m);       // NULL for a raw GGUF
const char *gw_model_signer(const gw_model *m);    // key id, NULL when unsigned
const char *gw_model_signer_pk(const gw_model *m); // base64url
gw_model_state gw_model_get_state(const gw_model *m);
/* Seconds since the Unix epoch when the model was loaded. */
long long gw_model_created(const gw_model *m);

#endif
