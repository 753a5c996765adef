/*
 * block-io-drain.c - in-flight counting and drain, flush, truncate, and the
 * synchronous wrappers of the request path.
 *
 * Drain (see "drain" below and docs/ARCHITECTURE.md): a drained section of a
 * node quiesces it, everything below it and everything above those; new
 * requests wait at the root edges they come through, and the drainer waits
 * until none of those nodes has a request in flight.  The last request to
 * finish on any node wakes the drainers: a coroutine drainer is re-entered
 * on its own context, a drainer polling its event loop gets an aio_notify
 * (the request may have finished on another thread).
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

/* The in-flight counters are per thread (block-counters.c): the thread
 * that ends a request cannot tell cheaply whether it was the last one, so
 * while anybody waits it sums them. */
void bdrv_in_flight_ended(BlockDriverState *bs)
{
    if (__atomic_load_n(&num_waiters, __ATOMIC_SEQ_CST) && bdrv_in_flight(bs) == 0) {
        kick_waiters();
    }
}

/* ----------------------------------------------------------------- drain */

/*
 * Who waits where.  Requests enter the graph only through root edges (a
 * BlockBackend, a tool's handle); everything else is a driver calling its
 * children on behalf of a request that already entered, and must go on or
 * that request could never finish.  So quiescing a node means quiescing
 * the users above it: every edge passes the drained sections of its child to
 * its parent (parent_quiesce, always equal to the child's quiesce_counter),
 * a node parent passes them further up, and a root edge's new requests wait
 * while its parent_quiesce is non-zero.  A drained section of bs quiesces bs
 * and every node below it (each with all its parents, so a node shared with
 * another graph is quiet too), then polls until none of those nodes, nor any
 * node above them, has a request in flight.
 */

/* Held to change a root edge's parent_quiesce and to park on its queue. */
static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;

static void quiesce_begin(BlockDriverState *bs);
static void quiesce_end(BlockDriverState *bs);

/* One more drained section reaches the user of edge c. */
static void parent_quiesce_begin(BdrvChild *c)
{
    if (c->parent) {
        __atomic_fetch_add(&c->parent_quiesce, 1, __ATOMIC_SEQ_CST);
        quiesce_begin(c->parent);
        return;
    }
    pthread_mutex_lock(&park_lock);
    int old = __atomic_fetch_add(&c->parent_quiesce, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&park_lock);
    if (old == 0 && c->root_ops && c->root_ops->drained_begin) {
        c->root_ops->drained_begin(c);
    }
}

static void parent_quiesce_end(BdrvChild *c)
{
    if (c->parent) {
        quiesce_end(c->parent);
        __atomic_fetch_sub(&c->parent_quiesce, 1, __ATOMIC_SEQ_CST);
        return;
    }
    if (__atomic_load_n(&c->parent_quiesce, __ATOMIC_SEQ_CST) == 1 && c->root_ops &&
        c->root_ops->drained_end) {
        c->root_ops->drained_end(c);
    }
    CoQueue parked;
    co_queue_init(&parked);
    pthread_mutex_lock(&park_lock);
    if (__atomic_sub_fetch(&c->parent_quiesce, 1, __ATOMIC_SEQ_CST) == 0) {
        parked = c->drain_queue;
        co_queue_init(&c->drain_queue);
    }
    pthread_mutex_unlock(&park_lock);
    /* Each wakes on its own AioContext. */
    co_queue_restart_all(&parked);
}

/* bs and, upward, everything that could send it requests: parents are
 * quiesced (and told) before bs's driver is. */
static void quiesce_begin(BlockDriverState *bs)
{
    int old = __atomic_fetch_add(&bs->quiesce_counter, 1, __ATOMIC_SEQ_CST);
    for (BdrvChild *c = bs->parents; c; c = c->next_parent) {
        parent_quiesce_begin(c);
    }
    if (old == 0 && bs->drv && bs->drv->drain_begin) {
        bs->drv->drain_begin(bs);
    }
}

static void quiesce_end(BlockDriverState *bs)
{
    if (__atomic_load_n(&bs->quiesce_counter, __ATOMIC_SEQ_CST) == 1 && bs->drv &&
        bs->drv->drain_end) {
        bs->drv->drain_end(bs);
    }
    __atomic_fetch_sub(&bs->quiesce_counter, 1, __ATOMIC_SEQ_CST);
    for (BdrvChild *c = bs->parents; c; c = c->next_parent) {
        parent_quiesce_end(c);
    }
}

static void subtree_begin(BlockDriverState *bs)
{
    bs->subtree_quiesce++;
    quiesce_begin(bs);
    for (BdrvChild *c = bs->children; c; c = c->next) {
        subtree_begin(c->bs);
    }
}

/* Children in reverse order, then bs: the mirror of subtree_begin. */
static void subtree_end_children(BdrvChild *c);

static void subtree_end(BlockDriverState *bs)
{
    subtree_end_children(bs->children);
    quiesce_end(bs);
    bs->subtree_quiesce--;
}

static void subtree_end_children(BdrvChild *c)
{
    if (c) {
        subtree_end_children(c->next);
        subtree_end(c->bs);
    }
}

static bool above_busy(BlockDriverState *bs)
{
    for (BdrvChild *c = bs->parents; c; c = c->next_parent) {
        if (c->parent && (bdrv_in_flight(c->parent) || above_busy(c->parent))) {
            return true;
        }
    }
    return false;
}

/* A request in flight on bs, below it, or above any of those. */
static bool section_busy(BlockDriverState *bs)
{
    if (bdrv_in_flight(bs) || above_busy(bs)) {
        return true;
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (section_busy(c->bs)) {
            return true;
        }
    }
    return false;
}

static void drain_wait(BlockDriverState *bs)
{
    /* Pairs with bdrv_co_root_admit: subtree_begin raised parent_quiesce
     * with seq_cst read-modify-writes and section_busy reads the counters
     * with seq_cst loads; admission raises its counter (seq_cst RMW), then
     * loads parent_quiesce (seq_cst).  All four are in C11's single total
     * order, so either the request sees our parent_quiesce or we see its
     * count.  No separate fence (TSan does not model fences). */
    if (in_coroutine()) {
        DrainWaiter w = { .ctx = aio_current(), .co = co_self() };
        for (;;) {
            w.armed = 1;
            waiter_add(&w);
            if (!section_busy(bs)) {
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
    while (section_busy(bs)) {
        aio_poll(ctx, true);
    }
    waiter_del(&w);
}

void bdrv_drained_begin(BlockDriverState *bs)
{
    subtree_begin(bs);
    drain_wait(bs);
}

void bdrv_drained_end(BlockDriverState *bs)
{
    subtree_end(bs);
}

void bdrv_drain(BlockDriverState *bs)
{
    bdrv_drained_begin(bs);
    bdrv_drained_end(bs);
}

/* ------------------------------------------------------------ root edges */

void bdrv_child_set_root_ops(BdrvChild *root, const BdrvRootOps *ops, void *opaque)
{
    root->root_ops = ops;
    root->root_opaque = opaque;
}

void coroutine_fn bdrv_co_root_admit(BdrvChild *root)
{
    BlockDriverState *bs = root->bs;
    for (;;) {
        bdrv_inc_in_flight(bs);
        /* Counted first (a seq_cst RMW), then the flag read (seq_cst); drain
         * sets the flag, then reads the counts (drain_wait): one of us sees
         * the other. */
        if (!__atomic_load_n(&root->parent_quiesce, __ATOMIC_SEQ_CST)) {
            return;
        }
        bdrv_dec_in_flight(bs);
        pthread_mutex_lock(&park_lock);
        while (__atomic_load_n(&root->parent_quiesce, __ATOMIC_SEQ_CST) > 0) {
            co_queue_wait_mutex(&root->drain_queue, &park_lock);
        }
        pthread_mutex_unlock(&park_lock);
    }
}

void bdrv_root_done(BdrvChild *root)
{
    bdrv_dec_in_flight(root->bs);
}

void coroutine_fn bdrv_co_enter_request(BdrvChild *child)
{
    if (child->parent) {
        /* On behalf of a request in flight above: a driver calling its child. */
        bdrv_inc_in_flight(child->bs);
    } else if (!child->root_ops) {
        bdrv_co_root_admit(child);
    }
    /* Else admitted by its user (bdrv_co_root_admit), which holds the count
     * on this node until bdrv_root_done: no second one. */
}

void coroutine_fn bdrv_co_leave_request(BdrvChild *child)
{
    if (child->parent || !child->root_ops) {
        bdrv_dec_in_flight(child->bs);
    }
}

/* ------------------------------------------------------ edges and drains */

void bdrv_drain_edge_attached(BdrvChild *c)
{
    int q = __atomic_load_n(&c->bs->quiesce_counter, __ATOMIC_SEQ_CST);
    for (int i = 0; i < q; i++) {
        parent_quiesce_begin(c);
    }
    for (int i = 0; c->parent && i < c->parent->subtree_quiesce; i++) {
        subtree_begin(c->bs);
    }
}

void bdrv_drain_edge_detaching(BdrvChild *c)
{
    for (int i = 0; c->parent && i < c->parent->subtree_quiesce; i++) {
        subtree_end(c->bs);
    }
    while (__atomic_load_n(&c->parent_quiesce, __ATOMIC_SEQ_CST) > 0) {
        parent_quiesce_end(c);
    }
}

static void parents_unlink(BdrvChild *c)
{
    for (BdrvChild **p = &c->bs->parents; *p; p = &(*p)->next_parent) {
        if (*p == c) {
            *p = c->next_parent;
            break;
        }
    }
    c->next_parent = NULL;
}

void bdrv_drain_edge_replace(BdrvChild *c, BlockDriverState *new_bs)
{
    BlockDriverState *old_bs = c->bs;
    int sections = c->parent ? c->parent->subtree_quiesce : 0;
    /* The parent's drained sections cover the new child from now on... */
    for (int i = 0; i < sections; i++) {
        subtree_begin(new_bs);
    }
    parents_unlink(c);
    c->bs = new_bs;
    c->next_parent = new_bs->parents;
    new_bs->parents = c;
    /* ...the parent gets the new child's sections instead of the old's... */
    int q = __atomic_load_n(&new_bs->quiesce_counter, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&c->parent_quiesce, __ATOMIC_SEQ_CST) < q) {
        parent_quiesce_begin(c);
    }
    while (__atomic_load_n(&c->parent_quiesce, __ATOMIC_SEQ_CST) > q) {
        parent_quiesce_end(c);
    }
    /* ...and no longer covers the old one. */
    for (int i = 0; i < sections; i++) {
        subtree_end(old_bs);
    }
}

/* ----------------------------------------------------------------- flush */

/* Whether a flush that covered write generation `done` covers `want`
 * (a 64-bit sum of the threads' counts: it does not wrap). */
static inline bool gen_covers(uint64_t done, uint64_t want)
{
    return done >= want;
}

/*
 * Group commit without a lock across I/O.  One flush of bs runs at a time
 * (so flushed_gen only moves forward); flush_mutex is held only to look at
 * and update the flush_* fields.  A caller that finds a flush running waits
 * for it to end: if that flush covered the caller's writes (write_gen had
 * not moved past the caller's when it started) its result is the caller's;
 * otherwise the waiters share the next flush, started by the first of them.
 */
int coroutine_fn bdrv_co_flush(BlockDriverState *bs)
{
    int ret = 0;

    if (!bs || !bs->drv || bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        return 0;
    }
    bdrv_inc_in_flight(bs);
    uint64_t want = bdrv_write_gen(bs);
    pthread_mutex_lock(&bs->flush_mutex);
    while (bs->flush_running) {
        co_queue_wait_mutex(&bs->flush_queue, &bs->flush_mutex);
        /* Woken when a flush ended; if it (or a later one) covered our
         * writes, its result is ours. */
        if (gen_covers(bs->flush_done_gen, want)) {
            ret = bs->flush_done_ret;
            pthread_mutex_unlock(&bs->flush_mutex);
            bdrv_dec_in_flight(bs);
            return ret;
        }
    }
    bs->flush_running = true;
    uint64_t current_gen = bdrv_write_gen(bs);
    pthread_mutex_unlock(&bs->flush_mutex);

    if (bs->drv->co_flush) {
        /* The driver flushes what lies below itself (quorum: every child
         * at once, succeeding by vote), so no child's error is added here. */
        ret = bs->drv->co_flush(bs);
        goto out;
    }
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
    pthread_mutex_lock(&bs->flush_mutex);
    bs->flush_running = false;
    bs->flush_done_gen = current_gen;
    bs->flush_done_ret = ret;
    co_queue_restart_all(&bs->flush_queue);
    pthread_mutex_unlock(&bs->flush_mutex);
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
        bdrv_write_gen_bump(bs);
    }
    error_propagate(errp, local_err);
    tracked_request_end(&req);
    bdrv_co_leave_request(child);
    return ret;
}

/* ---------------------------------------------------- synchronous wrappers */

typedef enum {
    SYNC_READ, SYNC_WRITE, SYNC_ZEROES, SYNC_FLUSH, SYNC_TRUNCATE,
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
        r->ret = bdrv_co_pwritev(r->child, r->offset, r->bytes, &r->qiov, r->flags);
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

/* bdrv_pread/pwrite: one buffer, one op. */
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
