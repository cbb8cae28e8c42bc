/* gw_cli: the artifact commands of the `kolm` CLI (keys, packing, inspection,
 * verification of artifacts and receipts); `kolm serve` is in gw_main.c.
 *
 *   kolm keygen [--name NAME] [--force]
 *   kolm pack MODEL.gguf [--adapter F] [--draft F] [--embed F] [--training F.json]
 *             [--eval F.json] [--name N] [--key NAME|PATH | --unsigned] [--reference] -o OUT.kolm
 *   kolm inspect NAME.kolm [--json]
 *   kolm verify NAME.kolm [--key PUB] [--keyring DIR]
 *   kolm verify --receipt RECEIPT [--body FILE] [--request FILE] [--key PUB]
 *
 * Each returns the process exit status: 0 done, 1 failed (verification failed, a
 * file unreadable), 2 bad usage. */
#ifndef GW_CLI_H
#define GW_CLI_H

#include <stddef.h>

/* Path of kolm-worker beside this executable: 0, or -1 when it is not there. */
int gw_cli_worker_path(char *out, size_t n);
/* Runs `kolm-worker arg [arg2]` (arg2 may be NULL) and keeps up to cap - 1 bytes
 * of its standard output in out (NUL-terminated), *len of them: 0 when it exited
 * with status 0, else -1. */
int gw_cli_worker_run(const char *arg, const char *arg2, char *out, size_t cap, size_t *len);

int gw_cli_keygen(int argc, char **argv);
int gw_cli_pack(int argc, char **argv);
int gw_cli_inspect(int argc, char **argv);
int gw_cli_verify(int argc, char **argv);

#endif
