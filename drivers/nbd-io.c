/*
 * nbd-io.c - the nbd driver's requests (drivers/nbd.c has the connection).
 * A request coroutine moves to the connection's context, where the
 * connection lives, issues one libnbd AIO command with a completion
 * callback that wakes it, and moves back.  A command lost with its
 * connection waits for the reconnect (reconnect-delay) and is issued again
 * on the new one, or fails with -EIO.
 */
#include <errno.h>
#include <libnbd.h>
#include <string.h>
#include <sys/socket.h>
#include "aio.h"
#include "block-driver.h"
#include "iov.h"
#include "nbd-int.h"

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
 * Run one command on the connection's context, waiting for a
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
        while (nbd_state_get(s) != NBD_CONNECTED && !s->closing) {
            if (nbd_state_get(s) == NBD_FAILED) {
                break;
            }
            co_queue_wait(&s->waiters, NULL);
        }
        if (nbd_state_get(s) != NBD_CONNECTED || s->closing) {
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

int coroutine_fn nbd_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    return nbd_co_rw(bs, false, offset, bytes, qiov, qiov_offset, flags);
}

int coroutine_fn nbd_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    return nbd_co_rw(bs, true, offset, bytes, qiov, qiov_offset, flags);
}

int coroutine_fn nbd_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
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

int coroutine_fn nbd_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    NbdState *s = bs->opaque;
    if (!s->can_trim) {
        return 0;   /* discard is advisory */
    }
    NbdCall c = { .op = NBD_OP_TRIM, .offset = (uint64_t)offset, .bytes = (uint64_t)bytes };
    NbdReq r;
    return nbd_co_call(bs, &c, &r);
}

int coroutine_fn nbd_co_flush(BlockDriverState *bs)
{
    NbdState *s = bs->opaque;
    if (!s->can_flush) {
        return 0;
    }
    NbdCall c = { .op = NBD_OP_FLUSH };
    NbdReq r;
    return nbd_co_call(bs, &c, &r);
}

int coroutine_fn nbd_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
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
