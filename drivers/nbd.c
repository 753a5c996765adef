/*
 * nbd.c - the "nbd" protocol driver: an NBD client on libnbd (QEMU's nbd
 * block driver, its URLs and options).  Open connects (blocking, with a
 * deadline), reads the export's size, flags and block size constraints and
 * asks for structured replies and base:allocation.
 *
 * One connection per node, owned by the node's home context (the daemon's
 * main loop).  A request from another thread moves its coroutine there
 * (aio_co_reschedule_self), issues the libnbd AIO call, yields until the
 * completion callback wakes it, and moves back: no lock is held across I/O,
 * nothing blocks.  The connection's socket is watched by two coroutines on
 * the home context: the manager polls for input (nbd_aio_notify_read) and
 * reconnects when the connection drops; the writer polls for output only
 * while libnbd has bytes it could not send yet (nbd_aio_notify_write).
 *
 * Reconnect (QEMU's reconnect-delay): when the connection drops, requests
 * in flight and new ones wait up to reconnect-delay seconds for a new
 * connection and are then retried on it; after the delay (at once with the
 * default 0) they fail with -EIO while reconnecting goes on in the
 * background.  `ublkd list` shows the state among the node's counters.
 */
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "aio.h"
#include "block-driver.h"
#include "iov.h"
#include "nbd-int.h"

#define NBD_OPEN_TIMEOUT_S     10          /* connect at open, unless open-timeout */
#define NBD_RECONNECT_PAUSE_NS (200 * 1000 * 1000LL)   /* between failed attempts */
#define NBD_MAX_TRANSFER       (32 * 1024 * 1024LL)  /* libnbd refuses more than 64 MiB */
#define NBD_MAX_UNMAP          (1024 * 1024 * 1024LL)   /* 32-bit lengths on the wire */

enum { NBD_CONNECTED, NBD_RECONNECTING, NBD_FAILED };
static const char *const nbd_state_names[] = { "connected", "reconnecting", "failed" };

typedef struct NbdState {
    NbdAddr addr;
    char *desc;                 /* "host:port" / "unix:path", for messages */
    const NbdTlsCreds *tls;     /* NULL: no TLS (unless nbds://) */
    int64_t reconnect_delay_ns;
    AioContext *home;

    /* Home thread only. */
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

static int state_get(NbdState *s)
{
    return __atomic_load_n(&s->state, __ATOMIC_RELAXED);
}

static void state_set(NbdState *s, int st)
{
    __atomic_store_n(&s->state, st, __ATOMIC_RELAXED);
}

/* ---- handle setup and the connect state machine ---- */

static struct nbd_handle *nbd_new_handle(NbdState *s, Error **errp)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        error_setg(errp, "nbd: %s", nbd_get_error());
        return NULL;
    }
    if (nbd_set_export_name(h, s->addr.export_name) < 0 ||
        nbd_set_request_structured_replies(h, true) < 0 ||
        nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0) {
        goto fail;
    }
    if (s->tls || s->addr.tls_from_url) {
        if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0) {
            goto fail;
        }
        if (s->tls && s->tls->psk) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/keys.psk", s->tls->dir);
            if (nbd_set_tls_psk_file(h, path) < 0 ||
                nbd_set_tls_username(h, s->tls->username) < 0) {
                goto fail;
            }
        } else if (s->tls) {
            if (nbd_set_tls_certificates(h, s->tls->dir) < 0 ||
                nbd_set_tls_verify_peer(h, s->tls->verify_peer) < 0) {
                goto fail;
            }
        }
    }
    return h;
fail:
    error_setg(errp, "nbd: setting up the connection to %s: %s", s->desc, nbd_get_error());
    nbd_close(h);
    return NULL;
}

static int nbd_start_connect(NbdState *s, struct nbd_handle *h)
{
    if (s->addr.is_unix) {
        return nbd_aio_connect_unix(h, s->addr.path);
    }
    return nbd_aio_connect_tcp(h, s->addr.host, s->addr.port);
}

static short nbd_poll_events(struct nbd_handle *h)
{
    unsigned dir = nbd_aio_get_direction(h);
    return (short)(((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
                   ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0));
}

/* One step of the handshake for what poll reported; -1 when it failed. */
static int nbd_connect_step(struct nbd_handle *h, short events, int revents)
{
    if ((events & POLLIN) && (revents & (POLLIN | POLLHUP | POLLERR))) {
        return nbd_aio_notify_read(h);
    }
    if ((events & POLLOUT) && (revents & (POLLOUT | POLLHUP | POLLERR))) {
        return nbd_aio_notify_write(h);
    }
    return 0;
}

/* Blocking connect for open (not the I/O path), bounded by timeout_s. */
static struct nbd_handle *nbd_connect_sync(NbdState *s, int64_t timeout_s, Error **errp)
{
    struct nbd_handle *h = nbd_new_handle(s, errp);
    if (!h) {
        return NULL;
    }
    int64_t deadline = clock_monotonic_ns() + timeout_s * 1000000000LL;
    if (nbd_start_connect(s, h) < 0) {
        goto fail;
    }
    while (nbd_aio_is_connecting(h)) {
        int64_t left = deadline - clock_monotonic_ns();
        if (left <= 0) {
            error_setg(errp, "Could not connect to NBD server %s (export '%s'): timed out after "
                       "%" PRId64 " s", s->desc, s->addr.export_name, timeout_s);
            nbd_close(h);
            return NULL;
        }
        short ev = nbd_poll_events(h);
        struct pollfd p = { .fd = nbd_aio_get_fd(h), .events = ev };
        int r = poll(&p, 1, (int)MIN(left / 1000000 + 1, 1000));
        if (r < 0 && errno != EINTR) {
            error_setg_errno(errp, errno, "nbd: poll");
            nbd_close(h);
            return NULL;
        }
        if (r > 0 && nbd_connect_step(h, ev, p.revents) < 0) {
            goto fail;
        }
    }
    if (!nbd_aio_is_ready(h)) {
        goto fail;
    }
    return h;
fail:
    error_setg(errp, "Could not connect to NBD server %s (export '%s'): %s", s->desc,
               s->addr.export_name, nbd_get_error() ? nbd_get_error() : "connection closed");
    nbd_close(h);
    return NULL;
}

/* ---- the connection's coroutines (home context) ---- */

/* A connection that died outside the manager's own notify_read (a send
 * failed): end the manager's poll so that it reconnects. */
static void nbd_check_dead(NbdState *s)
{
    if (s->h && s->poll_fd >= 0 && (nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h))) {
        shutdown(s->poll_fd, SHUT_RDWR);
    }
}

static int nbd_attach_handle(NbdState *s, struct nbd_handle *h)
{
    int fd = dup(nbd_aio_get_fd(h));
    if (fd < 0) {
        return -errno;
    }
    s->h = h;
    s->poll_fd = fd;
    return 0;
}

static void nbd_kick_writer(NbdState *s)
{
    if (s->writer_idle && s->h && state_get(s) == NBD_CONNECTED &&
        (nbd_aio_get_direction(s->h) & LIBNBD_AIO_DIRECTION_WRITE)) {
        s->writer_idle = false;
        aio_co_wake(s->writer);
    }
}

static void coroutine_fn nbd_writer_co(void *opaque)
{
    BlockDriverState *bs = opaque;
    NbdState *s = bs->opaque;
    while (!s->closing) {
        if (!s->h || state_get(s) != NBD_CONNECTED ||
            !(nbd_aio_get_direction(s->h) & LIBNBD_AIO_DIRECTION_WRITE)) {
            s->writer_idle = true;
            co_yield();
            continue;
        }
        struct nbd_handle *h = s->h;
        s->writer_polling = true;
        int r = aio_co_poll(s->poll_fd, POLLOUT);
        s->writer_polling = false;
        if (r > 0 && h == s->h && !s->closing) {
            /* A failure shows on the socket: the manager handles it. */
            nbd_aio_notify_write(h);
            nbd_check_dead(s);
        }
    }
    s->writer_done = true;
}

static void nbd_delay_expired(void *opaque)
{
    NbdState *s = opaque;
    if (state_get(s) == NBD_RECONNECTING) {
        state_set(s, NBD_FAILED);
        co_queue_restart_all(&s->waiters);
    }
}

static void coroutine_fn nbd_pause(NbdState *s, int64_t ns)
{
    s->manager_sleeping = true;
    aio_co_sleep_ns(ns);
    s->manager_sleeping = false;
}

/* A new connection, or NULL after one failed attempt (or on close). */
static struct nbd_handle *coroutine_fn nbd_reconnect_once(BlockDriverState *bs)
{
    NbdState *s = bs->opaque;
    Error *err = NULL;
    struct nbd_handle *h = nbd_new_handle(s, &err);
    if (!h) {
        error_free(err);
        return NULL;
    }
    if (nbd_start_connect(s, h) < 0) {
        goto fail;
    }
    while (nbd_aio_is_connecting(h) && !s->closing) {
        short ev = nbd_poll_events(h);
        s->connect_fd = nbd_aio_get_fd(h);
        int r = aio_co_poll(s->connect_fd, ev);
        s->connect_fd = -1;
        if (r > 0 && !s->closing && nbd_connect_step(h, ev, r) < 0) {
            goto fail;
        }
    }
    if (s->closing || !nbd_aio_is_ready(h)) {
        goto fail;
    }
    /* The same export, or the node's view of it would be wrong. */
    if (nbd_get_size(h) != s->size) {
        bdrv_event(bs, "nbd-reconnect-refused", 0, 0, -EIO, NULL);
        goto fail;
    }
    return h;
fail:
    nbd_close(h);
    return NULL;
}

static void coroutine_fn nbd_manager_co(void *opaque)
{
    BlockDriverState *bs = opaque;
    NbdState *s = bs->opaque;
    while (!s->closing) {
        /* Connected: feed the replies to libnbd until the connection ends. */
        while (!s->closing && s->h) {
            int r = aio_co_poll(s->poll_fd, POLLIN);
            if (s->closing) {
                break;
            }
            if (r < 0 || nbd_aio_notify_read(s->h) < 0 || nbd_aio_is_dead(s->h) ||
                nbd_aio_is_closed(s->h)) {
                break;
            }
            nbd_kick_writer(s);
        }
        if (s->closing) {
            break;
        }
        /* Lost.  libnbd has completed the requests in flight with an error;
         * the new generation tells them to retry (or fail). */
        s->gen++;
        bdrv_event(bs, "nbd-disconnected", 0, 0, -ENOTCONN, NULL);
        shutdown(s->poll_fd, SHUT_RDWR);   /* ends the writer's poll too */
        close(s->poll_fd);
        s->poll_fd = -1;
        nbd_close(s->h);
        s->h = NULL;
        if (s->reconnect_delay_ns) {
            state_set(s, NBD_RECONNECTING);
            aio_timer_mod(&s->delay_timer, aio_now_ns(s->home) + s->reconnect_delay_ns);
        } else {
            state_set(s, NBD_FAILED);
            co_queue_restart_all(&s->waiters);
        }
        while (!s->closing) {
            struct nbd_handle *h = nbd_reconnect_once(bs);
            if (h && nbd_attach_handle(s, h) < 0) {
                nbd_close(h);
                h = NULL;
            }
            if (h) {
                aio_timer_del(&s->delay_timer);
                state_set(s, NBD_CONNECTED);
                __atomic_fetch_add(&s->reconnects, 1, __ATOMIC_RELAXED);
                bdrv_event(bs, "nbd-reconnected", 0, 0, 0, NULL);
                co_queue_restart_all(&s->waiters);
                break;
            }
            if (!s->closing) {
                nbd_pause(s, NBD_RECONNECT_PAUSE_NS);
            }
        }
    }
    s->manager_done = true;
}

/* ---- requests ---- */

static int nbd_complete_cb(void *user_data, int *error)
{
    NbdReq *r = user_data;
    r->err = *error;
    r->done = true;
    /* libnbd may fail a command inside the call that issued it (the
     * connection died while sending): that coroutine is running and sees
     * done without yielding. */
    if (co_self() != r->co) {
        aio_co_wake(r->co);
    }
    return 1;   /* retire the command */
}

static int nbd_extent_cb(void *user_data, const char *metacontext, uint64_t offset,
                         uint32_t *entries, size_t nr_entries, int *error)
{
    (void)offset;
    (void)error;
    NbdReq *r = user_data;
    if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) || r->bs_got || nr_entries < 2) {
        return 0;
    }
    r->bs_len = entries[0];
    r->bs_flags = entries[1];
    r->bs_got = true;
    return 0;
}

typedef enum { NBD_OP_READ, NBD_OP_WRITE, NBD_OP_TRIM, NBD_OP_ZERO, NBD_OP_FLUSH,
               NBD_OP_STATUS } NbdOp;

typedef struct NbdCall {
    NbdOp op;
    void *buf;
    uint64_t offset, bytes;
    uint32_t flags;
} NbdCall;

static int64_t nbd_issue(NbdState *s, const NbdCall *c, NbdReq *r)
{
    nbd_completion_callback cb = { .callback = nbd_complete_cb, .user_data = r };
    switch (c->op) {
    case NBD_OP_READ:
        return nbd_aio_pread(s->h, c->buf, c->bytes, c->offset, cb, 0);
    case NBD_OP_WRITE:
        return nbd_aio_pwrite(s->h, c->buf, c->bytes, c->offset, cb, c->flags);
    case NBD_OP_TRIM:
        return nbd_aio_trim(s->h, c->bytes, c->offset, cb, c->flags);
    case NBD_OP_ZERO:
        return nbd_aio_zero(s->h, c->bytes, c->offset, cb, c->flags);
    case NBD_OP_FLUSH:
        return nbd_aio_flush(s->h, cb, 0);
    case NBD_OP_STATUS: {
        nbd_extent_callback ecb = { .callback = nbd_extent_cb, .user_data = r };
        return nbd_aio_block_status(s->h, c->bytes, c->offset, ecb, cb, c->flags);
    }
    }
    return -1;
}

/* The connection died, and the manager may not have seen it yet. */
static bool nbd_lost(NbdState *s)
{
    return !s->h || nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h);
}

/* The connection of generation gen died in a call of ours: have the manager
 * notice (it may still sit in its poll) and wait until it has reconnected
 * or given up. */
static void coroutine_fn nbd_wait_for_manager(NbdState *s, uint64_t gen)
{
    nbd_check_dead(s);
    if (gen == s->gen) {
        co_queue_wait(&s->waiters, NULL);
    }
}

/*
 * Run one command on the home context's connection, waiting for a
 * reconnect (and retrying there) as reconnect-delay allows.  Returns 0 or
 * -errno.
 */
static int coroutine_fn nbd_co_call(BlockDriverState *bs, const NbdCall *c, NbdReq *r)
{
    NbdState *s = bs->opaque;
    AioContext *orig = aio_current();
    int ret;
    if (orig != s->home) {
        aio_co_reschedule_self(s->home);
    }
    for (;;) {
        while (state_get(s) != NBD_CONNECTED && !s->closing) {
            if (state_get(s) == NBD_FAILED) {
                break;
            }
            co_queue_wait(&s->waiters, NULL);
        }
        if (state_get(s) != NBD_CONNECTED || s->closing) {
            ret = -EIO;
            break;
        }
        uint64_t gen = s->gen;
        r->co = co_self();
        r->done = false;
        r->err = 0;
        r->bs_got = false;
        if (nbd_issue(s, c, r) < 0) {
            int e = nbd_get_errno();
            if (gen == s->gen && !nbd_lost(s)) {
                ret = -(e ? e : EIO);
                break;
            }
            nbd_wait_for_manager(s, gen);
            continue;
        }
        nbd_check_dead(s);
        nbd_kick_writer(s);
        while (!r->done) {
            co_yield();
        }
        if (gen != s->gen) {
            continue;   /* lost with the connection: wait, retry or fail */
        }
        if (r->err == ESHUTDOWN && s->poll_fd >= 0) {
            /* NBD_ESHUTDOWN: the server is going away (nbdkit on SIGTERM
             * answers so).  Drop the connection now and reconnect. */
            shutdown(s->poll_fd, SHUT_RDWR);
        }
        if (r->err && (r->err == ESHUTDOWN || nbd_lost(s))) {
            nbd_wait_for_manager(s, gen);
            continue;
        }
        ret = r->err ? -r->err : 0;
        break;
    }
    if (orig != s->home) {
        aio_co_reschedule_self(orig);
    }
    return ret;
}

/* [qiov_offset, +bytes) as one mapped buffer, or NULL when it spans elements. */
static void *nbd_flat_buffer(IOVector *qiov, size_t qiov_offset, size_t bytes)
{
    for (int i = 0; i < qiov->niov; i++) {
        struct iovec *v = &qiov->iov[i];
        if (qiov_offset < v->iov_len) {
            return qiov_offset + bytes <= v->iov_len ? (char *)v->iov_base + qiov_offset : NULL;
        }
        qiov_offset -= v->iov_len;
    }
    return NULL;
}

static int coroutine_fn nbd_co_rw(BlockDriverState *bs, bool write, int64_t offset,
                                  int64_t bytes, IOVector *qiov, size_t qiov_offset,
                                  BdrvRequestFlags flags)
{
    NbdState *s = bs->opaque;
    BounceBuf bounce = { 0 };
    void *buf = nbd_flat_buffer(qiov, qiov_offset, (size_t)bytes);
    if (!buf) {
        buf = bdrv_bounce_get(bs, (size_t)bytes, &bounce);
        if (!buf) {
            return -ENOMEM;
        }
        if (write) {
            iov_to_buf(qiov, qiov_offset, buf, (size_t)bytes);
        }
    }
    NbdCall c = { .op = write ? NBD_OP_WRITE : NBD_OP_READ, .buf = buf,
                  .offset = (uint64_t)offset, .bytes = (uint64_t)bytes,
                  .flags = (write && (flags & BDRV_REQ_FUA) && s->can_fua) ? LIBNBD_CMD_FLAG_FUA : 0 };
    NbdReq r;
    int ret = nbd_co_call(bs, &c, &r);
    if (bounce.p) {
        if (!write && ret == 0) {
            iov_from_buf(qiov, qiov_offset, buf, (size_t)bytes);
        }
        bdrv_bounce_put(&bounce);
    }
    return ret;
}

static int coroutine_fn nbd_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    return nbd_co_rw(bs, false, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn nbd_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    return nbd_co_rw(bs, true, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn nbd_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                             int64_t bytes, BdrvRequestFlags flags)
{
    NbdState *s = bs->opaque;
    if (!s->can_zero) {
        return -ENOTSUP;
    }
    if ((flags & BDRV_REQ_NO_FALLBACK) && !s->can_fast_zero) {
        return -ENOTSUP;
    }
    uint32_t f = 0;
    if (!(flags & BDRV_REQ_MAY_UNMAP)) {
        f |= LIBNBD_CMD_FLAG_NO_HOLE;
    }
    if ((flags & BDRV_REQ_FUA) && s->can_fua) {
        f |= LIBNBD_CMD_FLAG_FUA;
    }
    if (flags & BDRV_REQ_NO_FALLBACK) {
        f |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    NbdCall c = { .op = NBD_OP_ZERO, .offset = (uint64_t)offset, .bytes = (uint64_t)bytes,
                  .flags = f };
    NbdReq r;
    return nbd_co_call(bs, &c, &r);
}

static int coroutine_fn nbd_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    NbdState *s = bs->opaque;
    if (!s->can_trim) {
        return 0;   /* discard is advisory */
    }
    NbdCall c = { .op = NBD_OP_TRIM, .offset = (uint64_t)offset, .bytes = (uint64_t)bytes };
    NbdReq r;
    return nbd_co_call(bs, &c, &r);
}

static int coroutine_fn nbd_co_flush(BlockDriverState *bs)
{
    NbdState *s = bs->opaque;
    if (!s->can_flush) {
        return 0;
    }
    NbdCall c = { .op = NBD_OP_FLUSH };
    NbdReq r;
    return nbd_co_call(bs, &c, &r);
}

static int coroutine_fn nbd_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum, int64_t *map,
                                            BlockDriverState **file)
{
    (void)want_zero;
    NbdState *s = bs->opaque;
    *map = offset;
    *file = bs;
    if (!s->can_block_status) {
        *pnum = bytes;
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    NbdCall c = { .op = NBD_OP_STATUS, .offset = (uint64_t)offset,
                  .bytes = (uint64_t)MIN(bytes, (int64_t)NBD_MAX_UNMAP),
                  .flags = LIBNBD_CMD_FLAG_REQ_ONE };
    NbdReq r;
    int ret = nbd_co_call(bs, &c, &r);
    if (ret < 0) {
        return ret;
    }
    if (!r.bs_got || r.bs_len <= 0) {
        /* A server that answered nothing useful: claim data, as QEMU does. */
        *pnum = s->min_block ? MIN(bytes, (int64_t)s->min_block) : bytes;
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    *pnum = MIN(r.bs_len, bytes);
    return ((r.bs_flags & LIBNBD_STATE_HOLE) ? 0 : BDRV_BLOCK_DATA) |
           ((r.bs_flags & LIBNBD_STATE_ZERO) ? BDRV_BLOCK_ZERO : 0) | BDRV_BLOCK_OFFSET_VALID;
}

/* ---- open / close ---- */

static int nbd_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    NbdState *s = bs->opaque;
    int64_t delay, open_timeout;
    char *tls_creds = NULL, *tls_hostname = NULL;
    int ret = -EINVAL;

    s->poll_fd = -1;
    s->connect_fd = -1;
    if (nbd_addr_from_options(options, &s->addr, errp) < 0) {
        return -EINVAL;
    }
    s->desc = nbd_addr_describe(&s->addr);
    optdict_take_str(options, "tls-creds", NULL, &tls_creds);
    optdict_take_str(options, "tls-hostname", NULL, &tls_hostname);
    if (optdict_take_int(options, "reconnect-delay", 0, &delay, errp) < 0 ||
        optdict_take_int(options, "open-timeout", 0, &open_timeout, errp) < 0) {
        goto out;
    }
    if (delay < 0 || delay > 3600) {
        error_setg(errp, "nbd: reconnect-delay must be 0..3600 seconds, got %" PRId64, delay);
        goto out;
    }
    if (open_timeout < 0) {
        error_setg(errp, "nbd: open-timeout must be >= 0, got %" PRId64, open_timeout);
        goto out;
    }
    s->reconnect_delay_ns = delay * 1000000000LL;
    if (tls_creds) {
        if (s->addr.is_unix && !tls_hostname) {
            /* QEMU needs a hostname for x509 over unix; libnbd checks none there. */
        }
        s->tls = nbd_tls_lookup(tls_creds, errp);
        if (!s->tls) {
            goto out;
        }
    }
    if (tls_hostname && (s->addr.is_unix || strcmp(tls_hostname, s->addr.host))) {
        /* libnbd 1.14 checks the certificate against server.host only. */
        error_setg(errp, "nbd: tls-hostname '%s' differs from the server's host: not supported "
                   "(libnbd verifies the certificate against server.host)", tls_hostname);
        goto out;
    }

    s->h = nbd_connect_sync(s, open_timeout ? open_timeout : NBD_OPEN_TIMEOUT_S, errp);
    if (!s->h) {
        ret = -EIO;
        goto out;
    }
    struct nbd_handle *h = s->h;
    s->h = NULL;
    if (nbd_attach_handle(s, h) < 0) {
        error_setg_errno(errp, errno, "nbd: dup");
        nbd_close(h);
        ret = -EIO;
        goto out;
    }
    s->size = nbd_get_size(s->h);
    if (s->size < 0) {
        error_setg(errp, "nbd: %s export '%s': %s", s->desc, s->addr.export_name, nbd_get_error());
        ret = -EIO;
        goto out;
    }
    if ((flags & BDRV_O_RDWR) && nbd_is_read_only(s->h) == 1) {
        error_setg(errp, "nbd: export '%s' on %s is read-only (open it read-only)",
                   s->addr.export_name, s->desc);
        ret = -EACCES;
        goto out;
    }
    s->can_flush = nbd_can_flush(s->h) == 1;
    s->can_fua = nbd_can_fua(s->h) == 1;
    s->can_trim = nbd_can_trim(s->h) == 1;
    s->can_zero = nbd_can_zero(s->h) == 1;
    s->can_fast_zero = nbd_can_fast_zero(s->h) == 1;
    s->can_block_status = nbd_can_meta_context(s->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    int64_t v = nbd_get_block_size(s->h, LIBNBD_SIZE_MINIMUM);
    s->min_block = v > 0 && v <= 64 * 1024 ? (uint32_t)v : 0;
    v = nbd_get_block_size(s->h, LIBNBD_SIZE_PREFERRED);
    s->pref_block = v > 0 ? (uint32_t)MIN(v, NBD_MAX_TRANSFER) : 0;
    v = nbd_get_block_size(s->h, LIBNBD_SIZE_MAXIMUM);
    s->max_block = v > 0 ? (uint32_t)MIN(v, 0xffffffffLL) : 0;

    bs->supported_write_flags = s->can_fua ? BDRV_REQ_FUA : 0;
    bs->supported_zero_flags = s->can_zero ? (BDRV_REQ_MAY_UNMAP |
                                              (s->can_fua ? BDRV_REQ_FUA : 0) |
                                              (s->can_fast_zero ? BDRV_REQ_NO_FALLBACK : 0)) : 0;
    snprintf(bs->filename, sizeof(bs->filename), "%s%s%s%s%s",
             s->addr.is_unix ? "nbd+unix:///" : "nbd://",
             s->addr.is_unix ? "" : s->desc, s->addr.is_unix ? "" : "/",
             s->addr.export_name, "");
    if (s->addr.is_unix) {
        size_t l = strlen(bs->filename);
        snprintf(bs->filename + l, sizeof(bs->filename) - l, "?socket=%s", s->addr.path);
    }

    s->home = bdrv_get_home_context(bs);
    if (!s->home) {
        s->home = aio_current();
    }
    co_queue_init(&s->waiters);
    aio_timer_init(&s->delay_timer, s->home, nbd_delay_expired, s);
    state_set(s, NBD_CONNECTED);
    s->manager = co_create(nbd_manager_co, bs);
    s->writer = co_create(nbd_writer_co, bs);
    aio_co_schedule(s->home, s->manager);
    aio_co_schedule(s->home, s->writer);
    ret = 0;
out:
    free(tls_creds);
    free(tls_hostname);
    if (ret < 0) {
        if (s->h) {
            nbd_close(s->h);
            s->h = NULL;
        }
        if (s->poll_fd >= 0) {
            close(s->poll_fd);
            s->poll_fd = -1;
        }
        free(s->desc);
        s->desc = NULL;
        nbd_addr_free(&s->addr);
    }
    return ret;
}

static void nbd_close_bs(BlockDriverState *bs)
{
    NbdState *s = bs->opaque;
    s->closing = true;
    /* Wake the coroutines out of their polls and sleeps; they end. */
    if (s->poll_fd >= 0) {
        shutdown(s->poll_fd, SHUT_RDWR);
    }
    if (s->connect_fd >= 0) {
        shutdown(s->connect_fd, SHUT_RDWR);
    }
    if (s->manager_sleeping) {
        aio_co_wake(s->manager);
    }
    if (s->writer_idle) {
        s->writer_idle = false;
        aio_co_wake(s->writer);
    }
    co_queue_restart_all(&s->waiters);
    AIO_WAIT_WHILE(s->home, !s->manager_done || !s->writer_done);
    aio_timer_del(&s->delay_timer);
    if (s->h) {
        nbd_close(s->h);   /* the node is drained: nothing in flight */
    }
    if (s->poll_fd >= 0) {
        close(s->poll_fd);
    }
    free(s->desc);
    nbd_addr_free(&s->addr);
}

static void nbd_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    NbdState *s = bs->opaque;
    uint64_t max = (uint64_t)NBD_MAX_TRANSFER;
    if (s->max_block && s->max_block < max) {
        max = s->max_block;
    }
    if (s->min_block) {
        bs->bl.request_alignment = MAX(bs->bl.request_alignment, s->min_block);
        max -= max % s->min_block;
    }
    bs->bl.max_transfer = max;
    bs->bl.opt_transfer = s->pref_block;
    bs->bl.max_pdiscard = (uint64_t)NBD_MAX_UNMAP;
    bs->bl.max_pwrite_zeroes = (uint64_t)NBD_MAX_UNMAP;
    bs->bl.pdiscard_alignment = MAX(bs->bl.pdiscard_alignment, s->min_block);
    bs->bl.pwrite_zeroes_alignment = MAX(bs->bl.pwrite_zeroes_alignment, s->min_block);
    bs->bl.has_discard = s->can_trim;
}

static int64_t nbd_getlength(BlockDriverState *bs)
{
    NbdState *s = bs->opaque;
    return s->size;
}

static void nbd_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    NbdState *s = bs->opaque;
    image_info_add(info, "server", "%s", s->desc);
    image_info_add(info, "export", "%s", s->addr.export_name);
    image_info_add(info, "state", "%s", nbd_state_names[state_get(s)]);
    image_info_add_int(info, "reconnect-delay", s->reconnect_delay_ns / 1000000000LL);
}

/* `ublkd list`: integers only, so the state is one flag per name. */
static void nbd_get_counters(BlockDriverState *bs, ImageSpecificInfo *out)
{
    NbdState *s = bs->opaque;
    int st = state_get(s);
    image_info_add_int(out, "nbd-connected", st == NBD_CONNECTED);
    image_info_add_int(out, "nbd-reconnecting", st == NBD_RECONNECTING);
    image_info_add_int(out, "nbd-failed", st == NBD_FAILED);
    image_info_add_int(out, "nbd-reconnects",
                       (int64_t)__atomic_load_n(&s->reconnects, __ATOMIC_RELAXED));
}

const BlockDriver bdrv_nbd = {
    .format_name = "nbd",
    .protocol_names = { "nbd", "nbd+tcp", "nbd+unix", "nbds" },
    .instance_size = sizeof(NbdState),
    .is_format = false,
    .needs_mapped_data = true,
    .open = nbd_open,
    .close = nbd_close_bs,
    .refresh_limits = nbd_refresh_limits,
    .co_preadv = nbd_co_preadv,
    .co_pwritev = nbd_co_pwritev,
    .co_pwrite_zeroes = nbd_co_pwrite_zeroes,
    .co_pdiscard = nbd_co_pdiscard,
    .co_flush_to_disk = nbd_co_flush,
    .co_block_status = nbd_co_block_status,
    .getlength = nbd_getlength,
    .get_specific_info = nbd_get_specific_info,
    .get_counters = nbd_get_counters,
    .supported_write_flags = BDRV_REQ_FUA,
    .supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA | BDRV_REQ_NO_FALLBACK,
};
