/*
 * nbd.c - the "nbd" protocol driver: an NBD client on libnbd (QEMU's nbd
 * block driver, its URLs and options).  Open connects (blocking, with a
 * deadline), reads the export's size, flags and block size constraints and
 * asks for structured replies and base:allocation.
 *
 * One connection per node, with an event loop on a thread of its own (the
 * daemon's main thread blocks in START_DEV while the kernel reads the new
 * disk's partition table, so the node's home context cannot serve those
 * reads).  A request moves its coroutine there
 * (aio_co_reschedule_self), issues the libnbd AIO call, yields until the
 * completion callback wakes it, and moves back: no lock is held across I/O,
 * nothing blocks.  The connection's socket is watched by two coroutines on
 * that context: the manager polls for input (nbd_aio_notify_read) and
 * reconnects when the connection drops; the writer polls for output only
 * while libnbd has bytes it could not send yet (nbd_aio_notify_write).
 *
 * Reconnect (QEMU's reconnect-delay): when the connection drops, requests
 * in flight and new ones wait up to reconnect-delay seconds for a new
 * connection and are then retried on it; after the delay (at once with the
 * default 0) they fail with -EIO while reconnecting goes on in the
 * background.  `ublkd list` shows the state among the node's counters.
 * The requests themselves are in drivers/nbd-io.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <poll.h>
#include <pthread.h>
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

static const char *const nbd_state_names[] = { "connected", "reconnecting", "failed" };

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

/* ---- the connection's coroutines (the connection's thread) ---- */

/* A connection that died outside the manager's own notify_read (a send
 * failed): end the manager's poll so that it reconnects. */
void nbd_check_dead(NbdState *s)
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

void nbd_kick_writer(NbdState *s)
{
    if (s->writer_idle && s->h && nbd_state_get(s) == NBD_CONNECTED &&
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
        if (!s->h || nbd_state_get(s) != NBD_CONNECTED ||
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
    if (nbd_state_get(s) == NBD_RECONNECTING) {
        nbd_state_set(s, NBD_FAILED);
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
            nbd_state_set(s, NBD_RECONNECTING);
            aio_timer_mod(&s->delay_timer, aio_now_ns(s->home) + s->reconnect_delay_ns);
        } else {
            nbd_state_set(s, NBD_FAILED);
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
                nbd_state_set(s, NBD_CONNECTED);
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

/* ---- open / close ---- */

static void *nbd_io_thread(void *opaque);

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

    /*
     * The connection gets a thread and event loop of its own rather than
     * the node's home context: the daemon's main thread blocks in START_DEV
     * while the kernel scans the new disk, and the scan's reads must reach
     * the server meanwhile.
     */
    s->home = aio_context_new(64, errp);
    if (!s->home) {
        ret = -ENOMEM;
        goto out;
    }
    co_queue_init(&s->waiters);
    aio_timer_init(&s->delay_timer, s->home, nbd_delay_expired, s);
    nbd_state_set(s, NBD_CONNECTED);
    s->manager = co_create(nbd_manager_co, bs);
    s->writer = co_create(nbd_writer_co, bs);
    aio_co_schedule(s->home, s->manager);
    aio_co_schedule(s->home, s->writer);
    int e = pthread_create(&s->thread, NULL, nbd_io_thread, s);
    if (e) {
        /* Nothing ran on the context yet: it can go with the coroutines
         * never entered (they hold nothing). */
        error_setg_errno(errp, e, "nbd: cannot start the connection's thread");
        ret = -e;
        goto out;
    }
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
        if (s->home) {
            aio_context_free(s->home);
            s->home = NULL;
        }
        free(s->desc);
        s->desc = NULL;
        nbd_addr_free(&s->addr);
    }
    return ret;
}

/* The connection's own thread: its loop runs the coroutines and the
 * requests' commands until both coroutines have ended (close). */
static void *nbd_io_thread(void *opaque)
{
    NbdState *s = opaque;
    aio_set_current(s->home);
    while (!s->manager_done || !s->writer_done) {
        aio_poll(s->home, true);
    }
    aio_timer_del(&s->delay_timer);
    aio_context_free(s->home);   /* on its own thread, idle */
    return NULL;
}

/* On the connection's thread: end the coroutines. */
static void nbd_close_bh(void *opaque)
{
    NbdState *s = opaque;
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
}

static void nbd_close_bs(BlockDriverState *bs)
{
    NbdState *s = bs->opaque;
    aio_bh_schedule_oneshot(s->home, nbd_close_bh, s);
    pthread_join(s->thread, NULL);
    s->home = NULL;
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
    image_info_add(info, "state", "%s", nbd_state_names[nbd_state_get(s)]);
    image_info_add_int(info, "reconnect-delay", s->reconnect_delay_ns / 1000000000LL);
}

/* `ublkd list`: integers only, so the state is one flag per name. */
static void nbd_get_counters(BlockDriverState *bs, ImageSpecificInfo *out)
{
    NbdState *s = bs->opaque;
    int st = nbd_state_get(s);
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
