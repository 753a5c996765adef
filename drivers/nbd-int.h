/*
 * nbd-int.h - the NBD protocol driver's parts that need no server: where
 * the server is (QEMU's nbd:// and nbd+unix:// URLs and its server.* /
 * export options, parsed in drivers/nbd-uri.c, unit-tested) and the TLS
 * credentials `--object tls-creds-psk|tls-creds-x509` defines.
 */
#ifndef UBLKD_NBD_INT_H
#define UBLKD_NBD_INT_H

#include <pthread.h>
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

/* ---- the driver's state (drivers/nbd.c: connection, drivers/nbd-io.c:
 * requests); needs <libnbd.h>, "aio.h" and "block-driver.h" first. ---- */
#ifdef LIBNBD_H
#define NBD_MAX_TRANSFER       (32 * 1024 * 1024LL)  /* libnbd refuses more than 64 MiB */
#define NBD_MAX_UNMAP          (1024 * 1024 * 1024LL)   /* 32-bit lengths on the wire */

enum { NBD_CONNECTED, NBD_RECONNECTING, NBD_FAILED };

typedef struct NbdState {
    NbdAddr addr;
    char *desc;                 /* "host:port" / "unix:path", for messages */
    const NbdTlsCreds *tls;     /* NULL: no TLS (unless nbds://) */
    int64_t reconnect_delay_ns;
    AioContext *home;           /* the connection's loop, on its own thread */
    pthread_t thread;

    /* The connection thread only. */
    struct nbd_handle *h;       /* the connection (NULL while reconnecting) */
    /* Our dup of the connection's socket, which the coroutines poll: libnbd
     * closes its own fd when the connection dies, and a poll pending on a
     * closed fd would never end; shutdown() of the dup ends it. */
    int poll_fd;
    int connect_fd;             /* a reconnect's socket while it handshakes, or -1 */
    uint64_t gen;               /* bumped when a connection is lost */
    CoQueue waiters;            /* requests waiting for a connection */
    Coroutine *manager, *writer;
    bool manager_sleeping, writer_idle, writer_polling;
    bool manager_done, writer_done;
    bool closing;
    AioTimer delay_timer;

    /* What the export offered at open (a reconnect must offer the same). */
    int64_t size;
    bool can_flush, can_fua, can_trim, can_zero, can_fast_zero, can_block_status;
    uint32_t min_block, pref_block, max_block;

    int state;                  /* NBD_*; atomic (read by get_counters) */
    uint64_t reconnects;        /* atomic */
} NbdState;

typedef struct NbdReq {
    Coroutine *co;
    int err;
    bool done;
    /* block status */
    int64_t bs_len;
    uint32_t bs_flags;
    bool bs_got;
} NbdReq;

static inline int nbd_state_get(NbdState *s)
{
    return __atomic_load_n(&s->state, __ATOMIC_RELAXED);
}

static inline void nbd_state_set(NbdState *s, int st)
{
    __atomic_store_n(&s->state, st, __ATOMIC_RELAXED);
}


/* drivers/nbd.c: a connection that died outside the manager's own
 * notify_read is shut down so that the manager sees it; the writer is woken
 * when libnbd has bytes to send. */
void nbd_check_dead(NbdState *s);
void nbd_kick_writer(NbdState *s);

/* drivers/nbd-io.c: the request callbacks. */
int coroutine_fn nbd_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                               IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn nbd_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn nbd_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      BdrvRequestFlags flags);
int coroutine_fn nbd_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes);
int coroutine_fn nbd_co_flush(BlockDriverState *bs);
int coroutine_fn nbd_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                                     int64_t bytes, int64_t *pnum, int64_t *map,
                                     BlockDriverState **file);
#endif

#endif
