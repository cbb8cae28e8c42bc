/* gw_receipt: the signed receipt on every response, and the receipt log.
 *
 * A receipt is libsodium's combined signed message, signature (64 bytes) then
 * payload, in base64url without padding: PyNaCl's VerifyKey(pk).verify(bytes)
 * checks it and returns the payload. The payload is canonical JSON (sorted keys,
 * no whitespace):
 *
 *   v                  1
 *   seq                this gateway key's sequence number, increasing across restarts
 *   created            unix seconds
 *   key_id             the gateway key's id (GET /v1/kolm/keys lists its public key)
 *   artifact           the answering artifact's CID, null for a raw GGUF or no model
 *   model              the model id, null when the request named none that is served
 *   method, path       the request line
 *   status             the HTTP status
 *   request_sha256     hex SHA-256 of the request body as received
 *   response_sha256    hex SHA-256 of the response body as sent; null in the header
 *                      receipt of an SSE stream (it binds the request only)
 *   stream             true for SSE
 *   prompt_tokens, completion_tokens   usage, null where there is none
 *
 * For SSE the last event before the end carries "kolm_receipt" as its last member;
 * its response_sha256 covers the whole streamed body with the 17 bytes
 * `,"kolm_receipt":"` , the token and its closing quote removed.
 *
 * Every receipt is appended, one token per line, to KOLM_HOME/receipts/receipts.log
 * by a writer thread: lines are written at once, fdatasync'd in groups at most every
 * 50 ms (and before rotation and at close), and the file rotates past a size
 * (receipts.log.1 … .N, oldest dropped); the event loop never waits on the disk. */
#ifndef GW_RECEIPT_H
#define GW_RECEIPT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/cm_buf.h"
#include "common/cm_crypto.h"

typedef struct gw_receipts gw_receipts;

typedef struct gw_receipts_config {
    const char *home;     // KOLM_HOME
    const char *key_path; // NULL: home/keys/gateway.key, created on first use
    uint64_t log_max;     // bytes before rotation (0: 64 MiB)
    int log_keep;         // rotated files kept (0: 8)
} gw_receipts_config;

/* Loads (or makes) the key, finds the last sequence number in the log, starts the
 * writer. NULL with err set on failure. */
gw_receipts *gw_receipts_open(const gw_receipts_config *cfg, char *err, size_t errlen);
/* Writes what is queued, fsyncs, stops the writer. */
void gw_receipts_close(gw_receipts *r);
const cm_key *gw_receipts_key(const gw_receipts *r);

typedef struct gw_receipt_in {
    const char *artifact, *model; // NULL -> null
    const char *method, *path;
    size_t method_len, path_len;
    int status;
    const uint8_t *request_sha256;  // CM_SHA256_LEN bytes
    const uint8_t *response_sha256; // NULL -> null
    int stream;
    long long prompt_tokens, completion_tokens; // < 0 -> null
} gw_receipt_in;

/* Decodes a receipt token into its payload object (*payload, json_decref it),
 * checking the signature against pk unless pk is NULL. 0, or -1 (bad base64url,
 * too short, signature mismatch, payload not a JSON object). */
int gw_receipt_open(const char *tok, size_t len, const uint8_t *pk, json_t **payload);

/* Signs one receipt, queues it for the log, and appends its token to out. */
int gw_receipt_make(gw_receipts *r, const gw_receipt_in *in, cm_buf *out);

#endif
