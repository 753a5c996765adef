/*
 * nbd-tls.h - TLS credentials for the nbd protocol driver, as QEMU's
 * `--object tls-creds-psk|tls-creds-x509,id=ID,dir=DIR,endpoint=client`
 * defines them: `ublkd img --object` registers them, a node's tls-creds=ID
 * option names one (drivers/nbd-uri.c; built with CONFIG_NBD).
 */
#ifndef UBLKD_NBD_TLS_H
#define UBLKD_NBD_TLS_H

#include <stdbool.h>
#include "error.h"

/* TLS credentials by id (drivers/nbd-uri.c). */
typedef struct NbdTlsCreds {
    bool psk;            /* tls-creds-psk, else tls-creds-x509 */
    char *dir;
    char *username;      /* psk: QEMU's default "qemu" */
    bool verify_peer;    /* x509 */
} NbdTlsCreds;
/* "tls-creds-psk,id=ID,dir=DIR,endpoint=client[,username=U]" or
 * "tls-creds-x509,id=ID,dir=DIR,endpoint=client[,verify-peer=on|off]":
 * 1 if taken, 0 if def is another object type, -errno with errp. */
int nbd_tls_object_add(const char *def, Error **errp);
/* NULL with errp set ("No TLS credentials with id 'X'"). */
const NbdTlsCreds *nbd_tls_lookup(const char *id, Error **errp);
void nbd_tls_clear_all(void);

#endif
