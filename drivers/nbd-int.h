/*
 * nbd-int.h - the NBD protocol driver's parts that need no server: where
 * the server is (QEMU's nbd:// and nbd+unix:// URLs and its server.* /
 * export options, parsed in drivers/nbd-uri.c, unit-tested) and the TLS
 * credentials `--object tls-creds-psk|tls-creds-x509` defines.
 */
#ifndef UBLKD_NBD_INT_H
#define UBLKD_NBD_INT_H

#include <stdbool.h>
#include "error.h"
#include "options.h"

#define NBD_DEFAULT_PORT 10809

typedef struct NbdAddr {
    bool is_unix;
    char *host;          /* inet */
    char *port;          /* inet, decimal (default 10809) */
    char *path;          /* unix socket */
    char *export_name;   /* "" is the server's default export */
    bool tls_from_url;   /* nbds:// */
} NbdAddr;

/* "nbd[+tcp|+unix]://[host[:port]]/[export][?socket=PATH]" into a (which
 * the caller frees with nbd_addr_free).  -EINVAL with errp naming the URL. */
int nbd_parse_url(const char *url, NbdAddr *a, Error **errp);
/*
 * Where to connect, from a node's options: "filename" (an nbd URL) or
 * QEMU's server.type/server.host/server.port/server.path and export, taken
 * from options.  Both given, or neither, is an error.
 */
int nbd_addr_from_options(OptDict *options, NbdAddr *a, Error **errp);
void nbd_addr_free(NbdAddr *a);
/* "unix:PATH" / "HOST:PORT" (brackets around an IPv6 host), for messages. */
char *nbd_addr_describe(const NbdAddr *a);

#include "nbd-tls.h"

#endif
