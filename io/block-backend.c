/*
 * block-backend.c - the export handle (see include/block-backend.h).
 *
 * A BlockBackend owns a parent-less root edge to its node and admits its own
 * requests through it (bdrv_co_root_admit): a request, flush included, first
 * waits while a drained section reaches the node, then counts in flight, and
 * only then is throttled.  A drained section lifts the throttle limits (the
 * root edge's drained_begin), so requests already admitted and sleeping in
 * the throttle queue go on at once and the drain does not wait out their
 * delay.  On top of the node's request path it adds what belongs to an
 * export: a size check (nothing past the end, whatever the node would
 * allow), throttling, and per-operation statistics kept with relaxed atomics
 * so queue threads never contend on a lock for them.  The throttle state is
 * the export's own, or shared with the other members of its
 * throttling.group.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-backend.h"
#include "block-req.h"

struct BlockBackend {
    BdrvChild *root;
    ThrottleState *throttle;     /* NULL: unthrottled; set before I/O starts */
    /* One copy per thread slot (thread-slot.h), added to with
     * thread_slot_add: with one copy, every queue thread wrote the same
     * cache line three times per request, with locked adds.  blk_get_stats
     * sums them. */
    struct {
        BlockAcctStats s;
    } __attribute__((aligned(CACHE_LINE))) stats[THREAD_SLOTS];
};



static int64_t blk_clock_ns(void);

static void blk_root_drained_begin(BdrvChild *root)
{
    BlockBackend *blk = root->root_opaque;
    throttle_lift_limits(blk->throttle);
}

static void blk_root_drained_end(BdrvChild *root)
{
    BlockBackend *blk = root->root_opaque;
    throttle_restore_limits(blk->throttle);
}

static const BdrvRootOps blk_root_ops = {
    .drained_begin = blk_root_drained_begin,
    .drained_end = blk_root_drained_end,
};

BlockBackend *blk_new_with_bs(BlockDriverState *bs, Error **errp)
{
    BlockBackend *blk = aligned_alloc(CACHE_LINE, ALIGN_UP(sizeof(*blk), CACHE_LINE));
    if (!blk) {
        error_setg(errp, "out of memory");
        return NULL;
    }
    memset(blk, 0, sizeof(*blk));
    bdrv_ref(bs);   /* becomes the root edge's */
    /* An export needs what the node's mode allows and lets others only read,
     * like a QEMU guest device; everything with force-share, or with
     * BDRV_O_SHARE_WRITE as qemu-img's blk_new_open without NO_SHARE. */
    unsigned perm = BLK_PERM_CONSISTENT_READ |
                    (bs->read_only ? 0 : BLK_PERM_WRITE | BLK_PERM_RESIZE);
    unsigned shared = (bs->open_flags & (BDRV_O_FORCE_SHARE | BDRV_O_SHARE_WRITE))
                      ? BLK_PERM_ALL : BLK_PERM_EXCLUSIVE_SHARED;
    blk->root = bdrv_root_attach_child(bs, "root", BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                                       perm, shared, errp);
    if (!blk->root) {
        free(blk);
        return NULL;
    }
    bdrv_child_set_root_ops(blk->root, &blk_root_ops, blk);
    return blk;
}

BlockBackend *blk_new_open(const char *filename, OptDict *options, int flags, Error **errp)
{
    ThrottleConfig cfg;
    throttle_config_init(&cfg);
    if (options && optdict_has_prefix(options, "throttling.") &&
        throttle_config_from_options(&cfg, options, errp) < 0) {
        optdict_free(options);
        return NULL;
    }
    BlockDriverState *bs = bdrv_open(filename, options, flags, errp);
    if (!bs) {
        return NULL;
    }
    BlockBackend *blk = blk_new_with_bs(bs, errp);
    bdrv_unref(bs);
    if (blk && (throttle_enabled(&cfg) || cfg.group[0]) &&
        blk_set_throttle(blk, &cfg, errp) < 0) {
        blk_unref(blk);
        return NULL;
    }
    return blk;
}

void blk_unref(BlockBackend *blk)
{
    if (!blk) {
        return;
    }
    blk_drain(blk);
    if (!blk_is_read_only(blk)) {
        int ret = blk_flush(blk);
        if (ret < 0) {
            warn_report("%s: flush on close failed: %s", blk_bs(blk)->filename,
                        strerror(-ret));
        }
    }
    bdrv_unref_child(NULL, blk->root);
    throttle_group_unref(blk->throttle);
    free(blk);
}

BlockDriverState *blk_bs(BlockBackend *blk)
{
    return blk->root->bs;
}

static AioContext *blk_thread_ctx(const char *what)
{
    AioContext *ctx = aio_current();
    if (!ctx) {
        fprintf(stderr, "ublkd: %s: the calling thread has no AioContext\n", what);
        abort();
    }
    return ctx;
}

void blk_attach_thread(BlockBackend *blk)
{
    if (blk_bs(blk)) {
        bdrv_attach_thread(blk_bs(blk), blk_thread_ctx("blk_attach_thread"));
    }
}

void blk_detach_thread(BlockBackend *blk)
{
    if (blk_bs(blk)) {
        bdrv_detach_thread(blk_bs(blk), blk_thread_ctx("blk_detach_thread"));
    }
}

int64_t blk_getlength(BlockBackend *blk)
{
    return __atomic_load_n(&blk_bs(blk)->total_bytes, __ATOMIC_ACQUIRE);
}

bool blk_is_read_only(BlockBackend *blk)
{
    BlockDriverState *bs = blk_bs(blk);
    return bs->read_only || !(bs->open_flags & BDRV_O_RDWR);
}

int blk_set_throttle(BlockBackend *blk, const ThrottleConfig *cfg, Error **errp)
{
    ThrottleState *ts = NULL;
    if (!throttle_is_valid(cfg, errp)) {
        return -EINVAL;
    }
    if (throttle_enabled(cfg) || cfg->group[0]) {
        ts = throttle_group_ref(cfg, blk_clock_ns(), errp);
        if (!ts) {
            return -EINVAL;
        }
    }
    /* A drained section in progress lifted the old state's limits. */
    bool drained = __atomic_load_n(&blk->root->parent_quiesce, __ATOMIC_SEQ_CST) > 0;
    if (drained) {
        throttle_restore_limits(blk->throttle);
        throttle_lift_limits(ts);
    }
    throttle_group_unref(blk->throttle);
    blk->throttle = ts;
    return 0;
}

void blk_get_stats(BlockBackend *blk, BlockAcctStats *out)
{
    memset(out, 0, sizeof(*out));
    for (int slot = 0; slot < THREAD_SLOTS; slot++) {
        BlockAcctStats *s = &blk->stats[slot].s;
        for (int i = 0; i < BLK_OP__MAX; i++) {
            out->ops[i] += __atomic_load_n(&s->ops[i], __ATOMIC_RELAXED);
            out->bytes[i] += __atomic_load_n(&s->bytes[i], __ATOMIC_RELAXED);
            out->errors[i] += __atomic_load_n(&s->errors[i], __ATOMIC_RELAXED);
            out->total_ns[i] += __atomic_load_n(&s->total_ns[i], __ATOMIC_RELAXED);
        }
        out->fua_writes += __atomic_load_n(&s->fua_writes, __ATOMIC_RELAXED);
    }
}

/* ------------------------------------------------------------ request path */

static int blk_check_request(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    int64_t len = blk_getlength(blk);
    if (offset > len || len - offset < bytes) {
        return -EIO;
    }
    return 0;
}

/* The clock itself: the throttle state starts from it. */
static int64_t blk_clock_ns(void)
{
    AioContext *ctx = aio_current();
    return ctx ? aio_now_ns(ctx) : clock_monotonic_ns();
}

/*
 * Request times for stats.total_ns.  These were two clock reads per request
 * (start and end), about 30% of the CPU of a null-driver `img bench`; they
 * are now the event loop's per-iteration timestamp (aio_loop_now_ns), a load.
 * A request that completes in the loop iteration it started in counts 0 ns;
 * one that waited for the kernel, a timer or another coroutine counts the
 * time between the readings of the iterations it started and ended in.
 * Outside any AioContext (nothing caches there) it reads the clock.
 */
static int64_t blk_now(void)
{
    AioContext *ctx = aio_current();
    return ctx ? aio_loop_now_ns(ctx) : clock_monotonic_ns();
}

static int blk_account(BlockBackend *blk, BlockAcctOp op, int64_t bytes, int64_t start_ns,
                       int ret)
{
    unsigned slot = thread_slot();
    BlockAcctStats *s = &blk->stats[slot].s;
    if (ret < 0) {
        thread_slot_add(&s->errors[op], 1, slot);
    } else {
        thread_slot_add(&s->ops[op], 1, slot);
        thread_slot_add(&s->bytes[op], (uint64_t)bytes, slot);
    }
    /* Never negative, so total_ns only grows: a coroutine that moved to
     * another thread ends on that context's loop time, and a test may swap
     * in a virtual clock under a running request. */
    int64_t ns = blk_now() - start_ns;
    if (ns > 0) {
        thread_slot_add(&s->total_ns[op], (uint64_t)ns, slot);
    }
    return ret;
}

/* Admitted (in flight) while it waits, so a drain (and unref, which drains)
 * sees it; the drain lifts the limits, so it does not wait long. */
static void coroutine_fn blk_throttle(BlockBackend *blk, bool is_write, int64_t bytes)
{
    if (blk->throttle) {
        throttle_co_wait(blk->throttle, is_write, bytes);
    }
}

int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset, int64_t bytes,
                               IOVector *qiov, BdrvRequestFlags flags)
{
    int64_t start = blk_now();
    int ret = blk_check_request(blk, offset, bytes);
    if (ret == 0) {
        bdrv_co_root_admit(blk->root);
        blk_throttle(blk, false, bytes);
        ret = bdrv_co_preadv(blk->root, offset, bytes, qiov, flags);
        bdrv_root_done(blk->root);
    }
    return blk_account(blk, BLK_OP_READ, bytes, start, ret);
}

int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes,
                                IOVector *qiov, BdrvRequestFlags flags)
{
    int64_t start = blk_now();
    int ret = blk_check_request(blk, offset, bytes);
    if (ret == 0) {
        bdrv_co_root_admit(blk->root);
        blk_throttle(blk, true, bytes);
        ret = bdrv_co_pwritev(blk->root, offset, bytes, qiov, flags);
        bdrv_root_done(blk->root);
    }
    if (ret >= 0 && (flags & BDRV_REQ_FUA)) {
        unsigned slot = thread_slot();
        thread_slot_add(&blk->stats[slot].s.fua_writes, 1, slot);
    }
    return blk_account(blk, BLK_OP_WRITE, bytes, start, ret);
}

int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                                      BdrvRequestFlags flags)
{
    int64_t start = blk_now();
    int ret = blk_check_request(blk, offset, bytes);
    if (ret == 0) {
        bdrv_co_root_admit(blk->root);
        blk_throttle(blk, true, bytes);
        ret = bdrv_co_pwrite_zeroes(blk->root, offset, bytes, flags);
        bdrv_root_done(blk->root);
    }
    return blk_account(blk, BLK_OP_WRITE_ZEROES, bytes, start, ret);
}

int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    int64_t start = blk_now();
    int ret = blk_check_request(blk, offset, bytes);
    if (ret == 0) {
        bdrv_co_root_admit(blk->root);
        ret = bdrv_co_pdiscard(blk->root, offset, bytes);
        bdrv_root_done(blk->root);
    }
    return blk_account(blk, BLK_OP_DISCARD, bytes, start, ret);
}

int coroutine_fn blk_co_flush(BlockBackend *blk)
{
    int64_t start = blk_now();
    bdrv_co_root_admit(blk->root);
    int ret = bdrv_co_flush(blk_bs(blk));
    bdrv_root_done(blk->root);
    return blk_account(blk, BLK_OP_FLUSH, 0, start, ret);
}

/* ---------------------------------------------------------- sync wrappers */

typedef enum { BLK_SYNC_READ, BLK_SYNC_WRITE, BLK_SYNC_ZEROES, BLK_SYNC_DISCARD,
               BLK_SYNC_FLUSH, BLK_SYNC_TRUNCATE } BlkSyncOp;

typedef struct BlkSync {
    BlkSyncOp op;
    BlockBackend *blk;
    int64_t offset, bytes;
    IOVector qiov;
    BdrvRequestFlags flags;
    bool exact;
    PreallocMode prealloc;
    Error **errp;
    int ret;
} BlkSync;

static void coroutine_fn blk_sync_entry(void *opaque)
{
    BlkSync *s = opaque;
    switch (s->op) {
    case BLK_SYNC_READ:
        s->ret = blk_co_preadv(s->blk, s->offset, s->bytes, &s->qiov, s->flags);
        break;
    case BLK_SYNC_WRITE:
        s->ret = blk_co_pwritev(s->blk, s->offset, s->bytes, &s->qiov, s->flags);
        break;
    case BLK_SYNC_ZEROES:
        s->ret = blk_co_pwrite_zeroes(s->blk, s->offset, s->bytes, s->flags);
        break;
    case BLK_SYNC_DISCARD:
        s->ret = blk_co_pdiscard(s->blk, s->offset, s->bytes);
        break;
    case BLK_SYNC_FLUSH:
        s->ret = blk_co_flush(s->blk);
        break;
    case BLK_SYNC_TRUNCATE:
        bdrv_co_root_admit(s->blk->root);
        s->ret = bdrv_co_truncate(s->blk->root, s->offset, s->exact, s->prealloc, 0, s->errp);
        bdrv_root_done(s->blk->root);
        break;
    }
}

static int blk_sync(BlkSync *s)
{
    aio_co_run_sync(blk_sync_entry, s);
    return s->ret;
}

int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf, BdrvRequestFlags flags)
{
    BlkSync s = { .op = BLK_SYNC_READ, .blk = blk, .offset = offset, .bytes = bytes,
                  .flags = flags };
    if (bytes < 0) {
        return -EINVAL;
    }
    iov_init_buf(&s.qiov, buf, bytes);
    return blk_sync(&s);
}

int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes, const void *buf,
               BdrvRequestFlags flags)
{
    BlkSync s = { .op = BLK_SYNC_WRITE, .blk = blk, .offset = offset, .bytes = bytes,
                  .flags = flags };
    if (bytes < 0) {
        return -EINVAL;
    }
    iov_init_buf(&s.qiov, (void *)buf, bytes);
    return blk_sync(&s);
}

int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes, BdrvRequestFlags flags)
{
    BlkSync s = { .op = BLK_SYNC_ZEROES, .blk = blk, .offset = offset, .bytes = bytes,
                  .flags = flags };
    return blk_sync(&s);
}

int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    BlkSync s = { .op = BLK_SYNC_DISCARD, .blk = blk, .offset = offset, .bytes = bytes };
    return blk_sync(&s);
}

int blk_flush(BlockBackend *blk)
{
    BlkSync s = { .op = BLK_SYNC_FLUSH, .blk = blk };
    return blk_sync(&s);
}

int blk_truncate(BlockBackend *blk, int64_t offset, bool exact, PreallocMode prealloc,
                 Error **errp)
{
    BlkSync s = { .op = BLK_SYNC_TRUNCATE, .blk = blk, .offset = offset, .exact = exact,
                  .prealloc = prealloc, .errp = errp };
    return blk_sync(&s);
}

void blk_drain(BlockBackend *blk)
{
    bdrv_drain(blk_bs(blk));
}
