/*
 * block-io-drain.c - in-flight counting and drain, flush, truncate, and the
 * synchronous wrappers of the request path.
 *
 * Drain: quiesce_counter is raised on the node and all its descendants, so
 * requests arriving from outside the graph park in the node's drain_queue;
 * then we wait until no node of the subtree has a request in flight.  The
 * last request to finish on any node wakes the drainers: a coroutine drainer
 * is re-entered on its own context, a drainer polling its event loop gets an
 * aio_notify (the request may have finished on another thread).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include "aio.h"
#include "block-io-int.h"

/* --------------------------------------------------------------- waiters */

typedef struct DrainWaiter {
    AioContext *ctx;
    Coroutine *co;               /* NULL: the waiter polls ctx */
    int armed;                   /* a coroutine waiter may still be woken */
    struct DrainWaiter *next;
    struct DrainWaiter *wake_next;
} DrainWaiter;

static pthread_mutex_t waiters_lock = PTHREAD_MUTEX_INITIALIZER;
static DrainWaiter *waiters;
static unsigned num_waiters;

static void waiter_add(DrainWaiter *w)
{
    pthread_mutex_lock(&waiters_lock);
    w->next = waiters;
    waiters = w;
    __atomic_fetch_add(&num_waiters, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&waiters_lock);
}

static void waiter_del(DrainWaiter *w)
{
    pthread_mutex_lock(&waiters_lock);
    for (DrainWaiter **p = &waiters; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    __atomic_fetch_sub(&num_waiters, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&waiters_lock);
}

static void kick_waiters(void)
{
    DrainWaiter *wake = NULL;
    pthread_mutex_lock(&waiters_lock);
    for (DrainWaiter *w = waiters; w; w = w->next) {
        if (!w->co) {
            aio_notify(w->ctx);
        } else if (__atomic_exchange_n(&w->armed, 0, __ATOMIC_SEQ_CST)) {
            w->wake_next = wake;
            wake = w;
        }
    }
    pthread_mutex_unlock(&waiters_lock);
    /* Outside the lock: a same-thread waiter may be entered right here.  A
     * disarmed waiter cannot leave before it is woken, so w stays valid. */
    while (wake) {
        DrainWaiter *w = wake;
        wake = w->wake_next;
        aio_co_wake(w->co);
    }
}

void bdrv_inc_in_flight(BlockDriverState *bs)
{
    __atomic_fetch_add(&bs->in_flight, 1, __ATOMIC_SEQ_CST);
}

void bdrv_dec_in_flight(BlockDriverState *bs)
{
    if (__atomic_sub_fetch(&bs->in_flight, 1, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n(&num_waiters, __ATOMIC_SEQ_CST)) {
        kick_waiters();
    }
}

unsigned bdrv_in_flight(BlockDriverState *bs)
{
    return __atomic_load_n(&bs->in_flight, __ATOMIC_SEQ_CST);
}

/* ----------------------------------------------------------------- drain */

static bool subtree_busy(BlockDriverState *bs)
{
    if (bdrv_in_flight(bs)) {
        return true;
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (c->bs && subtree_busy(c->bs)) {
            return true;
        }
    }
    return false;
}

static void drain_wait(BlockDriverState *bs)
{
    if (in_coroutine()) {
        DrainWaiter w = { .ctx = aio_current(), .co = co_self() };
        for (;;) {
            w.armed = 1;
            waiter_add(&w);
            if (!subtree_busy(bs)) {
                waiter_del(&w);
                if (!__atomic_exchange_n(&w.armed, 0, __ATOMIC_SEQ_CST)) {
                    co_yield();   /* a kick is already on its way: take it */
                }
                return;
            }
            co_yield();
            waiter_del(&w);
        }
    }
    AioContext *ctx = aio_current();
    if (!ctx) {
        ctx = aio_main_init(NULL);
    }
    DrainWaiter w = { .ctx = ctx };
    waiter_add(&w);
    while (subtree_busy(bs)) {
        aio_poll(ctx, true);
    }
    waiter_del(&w);
}

static void quiesce_begin(BlockDriverState *bs)
{
    if (__atomic_fetch_add(&bs->quiesce_counter, 1, __ATOMIC_SEQ_CST) == 0 &&
        bs->drv && bs->drv->drain_begin) {
        bs->drv->drain_begin(bs);
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (c->bs) {
            quiesce_begin(c->bs);
        }
    }
}

static void quiesce_end(BlockDriverState *bs)
{
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (c->bs) {
            quiesce_end(c->bs);
        }
    }
    CoQueue parked;
    pthread_mutex_lock(&bs->reqs_lock);
    int left = __atomic_sub_fetch(&bs->quiesce_counter, 1, __ATOMIC_SEQ_CST);
    parked = bs->drain_queue;
    if (left == 0) {
        co_queue_init(&bs->drain_queue);
    } else {
        co_queue_init(&parked);
    }
    pthread_mutex_unlock(&bs->reqs_lock);
    if (left == 0) {
        if (bs->drv && bs->drv->drain_end) {
            bs->drv->drain_end(bs);
        }
        co_queue_restart_all(&parked);
    }
}

void bdrv_drained_begin(BlockDriverState *bs)
{
    quiesce_begin(bs);
    drain_wait(bs);
}

void bdrv_drained_end(BlockDriverState *bs)
{
    quiesce_end(bs);
}

void bdrv_drain(BlockDriverState *bs)
{
    bdrv_drained_begin(bs);
    bdrv_drained_end(bs);
}

/* ----------------------------------------------------------------- flush */

int coroutine_fn bdrv_co_flush(BlockDriverState *bs)
{
    int ret = 0;

    if (!bs || !bs->drv || bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        return 0;
    }
    bdrv_inc_in_flight(bs);
    /* Flushes run one at a time and in the order of the generation they
     * cover, so flushed_gen only moves forward. */
    co_mutex_lock(&bs->flush_lock);
    unsigned current_gen = __atomic_load_n(&bs->write_gen, __ATOMIC_SEQ_CST);

    /* Hand cached data to the OS even with cache=unsafe. */
    if (bs->drv->co_flush_to_os) {
        ret = bs->drv->co_flush_to_os(bs);
        if (ret < 0) {
            goto out;
        }
    }
    if (!(bs->open_flags & BDRV_O_NO_FLUSH) &&
        __atomic_load_n(&bs->flushed_gen, __ATOMIC_SEQ_CST) != current_gen &&
        bs->drv->co_flush_to_disk) {
        /* A driver without flush_to_disk is write-through or cannot tell:
         * failing would only break callers, as QEMU reasons. */
        ret = bs->drv->co_flush_to_disk(bs);
        if (ret < 0) {
            goto out;
        }
    }
    /* Then what lies below; read-only children return at once. */
    for (BdrvChild *c = bs->children; c; c = c->next) {
        int child_ret = bdrv_co_flush(c->bs);
        if (!ret) {
            ret = child_ret;
        }
    }
out:
    if (ret == 0) {
        __atomic_store_n(&bs->flushed_gen, current_gen, __ATOMIC_SEQ_CST);
    }
    co_mutex_unlock(&bs->flush_lock);
    bdrv_dec_in_flight(bs);
    return ret;
}

/* -------------------------------------------------------------- truncate */

int coroutine_fn bdrv_co_truncate(BdrvChild *child, int64_t offset, bool exact,
                                  PreallocMode prealloc, BdrvRequestFlags flags, Error **errp)
{
    BlockDriverState *bs = child->bs;
    BdrvTrackedRequest req;
    Error *local_err = NULL;
    int ret;

    if (!bs || !bs->drv) {
        error_setg(errp, "No medium inserted");
        return -ENOMEDIUM;
    }
    if (offset < 0) {
        error_setg(errp, "%s: image size cannot be negative", bs->filename);
        return -EINVAL;
    }
    if (offset > BDRV_MAX_LENGTH) {
        error_setg(errp, "%s: image size %" PRId64 " too big (at most %" PRId64 ")",
                   bs->filename, offset, (int64_t)BDRV_MAX_LENGTH);
        return -EFBIG;
    }
    if (bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        error_setg(errp, "%s: image is read-only", bs->filename);
        return -EACCES;
    }

    bdrv_co_enter_request(child);
    int64_t old_size = bdrv_total_bytes(bs);
    int64_t lo = MIN(offset, old_size), hi = MAX(offset, old_size);
    tracked_request_begin(&req, bs, lo, hi - lo, BDRV_TRACKED_TRUNCATE);
    if (hi > lo) {
        /* Nothing may run in the range that appears or disappears. */
        bdrv_make_request_serialising(&req, 1);
    }

    if (bs->drv->co_truncate) {
        ret = bs->drv->co_truncate(bs, offset, exact, prealloc, flags, &local_err);
    } else if (bdrv_filter_bs(bs)) {
        ret = bdrv_co_truncate(bs->file, offset, exact, prealloc, flags, &local_err);
    } else {
        /* Even a no-op: saying yes to a shrink that did nothing hides from
         * the caller that the image keeps its size (qemu-io's words). */
        error_setg(&local_err, "Image format driver does not support resize");
        ret = -ENOTSUP;
    }
    if (ret < 0 && !local_err) {
        error_setg_errno(&local_err, -ret, "%s: could not resize image", bs->filename);
    }
    if (ret == 0) {
        int64_t len = bs->drv->getlength ? bs->drv->getlength(bs) : offset;
        __atomic_store_n(&bs->total_bytes, len >= 0 ? len : offset, __ATOMIC_RELEASE);
        __atomic_fetch_add(&bs->write_gen, 1, __ATOMIC_SEQ_CST);
    }
    error_propagate(errp, local_err);
    tracked_request_end(&req);
    bdrv_dec_in_flight(bs);
    return ret;
}

/* ---------------------------------------------------- synchronous wrappers */

typedef enum {
    SYNC_READ, SYNC_WRITE, SYNC_WRITE_SYNC, SYNC_ZEROES, SYNC_FLUSH, SYNC_TRUNCATE,
    SYNC_STATUS_ABOVE,
} SyncOp;

typedef struct SyncReq {
    SyncOp op;
    BdrvChild *child;
    BlockDriverState *bs, *base;
    int64_t offset, bytes;
    IOVector qiov;
    BdrvRequestFlags flags;
    bool exact;
    PreallocMode prealloc;
    Error **errp;
    int64_t *pnum, *map;
    BlockDriverState **file;
    int ret;
} SyncReq;

static void coroutine_fn sync_entry(void *opaque)
{
    SyncReq *r = opaque;
    switch (r->op) {
    case SYNC_READ:
        r->ret = bdrv_co_preadv(r->child, r->offset, r->bytes, &r->qiov, r->flags);
        break;
    case SYNC_WRITE:
    case SYNC_WRITE_SYNC:
        r->ret = bdrv_co_pwritev(r->child, r->offset, r->bytes, &r->qiov, r->flags);
        if (r->ret == 0 && r->op == SYNC_WRITE_SYNC) {
            r->ret = bdrv_co_flush(r->child->bs);
        }
        break;
    case SYNC_ZEROES:
        r->ret = bdrv_co_pwrite_zeroes(r->child, r->offset, r->bytes, r->flags);
        break;
    case SYNC_FLUSH:
        r->ret = bdrv_co_flush(r->bs);
        break;
    case SYNC_TRUNCATE:
        r->ret = bdrv_co_truncate(r->child, r->offset, r->exact, r->prealloc, r->flags, r->errp);
        break;
    case SYNC_STATUS_ABOVE:
        r->ret = bdrv_co_block_status_above(r->bs, r->base, r->offset, r->bytes, r->pnum,
                                            r->map, r->file, NULL);
        break;
    }
}

static int sync_run(SyncReq *r)
{
    aio_co_run_sync(sync_entry, r);
    return r->ret;
}

/* bdrv_pread/pwrite/pwrite_sync: one buffer, one op. */
static int sync_rw(SyncOp op, BdrvChild *child, int64_t offset, int64_t bytes, void *buf,
                   BdrvRequestFlags flags)
{
    SyncReq r = { .op = op, .child = child, .offset = offset, .bytes = bytes, .flags = flags };
    if (bytes < 0) {
        return -EINVAL;
    }
    iov_init_buf(&r.qiov, buf, bytes);
    return sync_run(&r);
}

int bdrv_pread(BdrvChild *child, int64_t offset, int64_t bytes, void *buf, BdrvRequestFlags flags)
{
    return sync_rw(SYNC_READ, child, offset, bytes, buf, flags);
}

int bdrv_pwrite(BdrvChild *child, int64_t offset, int64_t bytes, const void *buf,
                BdrvRequestFlags flags)
{
    return sync_rw(SYNC_WRITE, child, offset, bytes, (void *)buf, flags);
}

int bdrv_pwrite_sync(BdrvChild *child, int64_t offset, int64_t bytes, const void *buf,
                     BdrvRequestFlags flags)
{
    return sync_rw(SYNC_WRITE_SYNC, child, offset, bytes, (void *)buf, flags);
}

int bdrv_pwrite_zeroes(BdrvChild *child, int64_t offset, int64_t bytes, BdrvRequestFlags flags)
{
    SyncReq r = { .op = SYNC_ZEROES, .child = child, .offset = offset, .bytes = bytes,
                  .flags = flags };
    return sync_run(&r);
}

int bdrv_flush(BlockDriverState *bs)
{
    SyncReq r = { .op = SYNC_FLUSH, .bs = bs };
    return sync_run(&r);
}

int bdrv_truncate(BdrvChild *child, int64_t offset, bool exact, PreallocMode prealloc,
                  BdrvRequestFlags flags, Error **errp)
{
    SyncReq r = { .op = SYNC_TRUNCATE, .child = child, .offset = offset, .exact = exact,
                  .prealloc = prealloc, .flags = flags, .errp = errp };
    return sync_run(&r);
}

int bdrv_block_status_above(BlockDriverState *bs, BlockDriverState *base, int64_t offset,
                            int64_t bytes, int64_t *pnum, int64_t *map, BlockDriverState **file)
{
    SyncReq r = { .op = SYNC_STATUS_ABOVE, .bs = bs, .base = base, .offset = offset,
                  .bytes = bytes, .pnum = pnum, .map = map, .file = file };
    return sync_run(&r);
}
