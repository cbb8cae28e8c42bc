/* gw_admin: the routes about the server rather than a completion: GET /v1/models,
 * GET /v1/models/{id}, GET /v1/kolm/keys (the receipt key and the loaded artifacts'
 * signers) and GET /metrics (Prometheus text from each worker's last STATS, labelled
 * with its model). */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <h2o.h>

#include "gateway/gw_models.h"
#include "gateway/gw_receipt.h"

/* started: the gateway's start, the `created` of models not loaded. */
void gw_admin_models(gw_receipts *rc, h2o_req_t *req, gw_models *ms, long long started);
void gw_admin_model(gw_receipts *rc, h2o_req_t *req, gw_models *ms, long long started, h2o_iovec_t id);
void gw_admin_keys(gw_receipts *rc, h2o_req_t *req, gw_models *ms);
void gw_admin_metrics(gw_receipts *rc, h2o_req_t *req, gw_models *ms);

#endif
