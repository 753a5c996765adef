/*
 * rbd-io.c - data I/O of the rbd protocol through librbd's AIO API, and block
 * status from its diff iterator.
 *
 * A request submits one librbd AIO and yields; librbd completes it on one of
 * its own threads, whose callback stores the result and wakes the coroutine
 * with aio_co_wake, which schedules it on its home AioContext (a lock-free
 * push and an eventfd kick: nothing of ours runs on librbd's thread).  The
 * coroutine yields exactly once per AIO and the callback wakes it exactly
 * once, so a completion that comes before the yield only queues the wake.
 * Per request, librbd allocates its completion (its API has no other way);
 * the rest lives on the coroutine's stack, the iovec array too unless the
 * vector has more than RBD_STACK_IOVS segments.  No lock is held meanwhile.
 *
 * librbd has no AIO form of diff iterate or resize: those run on a thread of
 * their own (rbd_co_run_blocking) while the coroutine waits, so no event
 * loop - a ublk queue's least of all - waits for the cluster.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include "aio.h"
#include "iov.h"
#include "rbd-int.h"

#define RBD_STACK_IOVS 16

typedef struct RbdTask {
    Coroutine *co;
    int64_t ret;
} RbdTask;

/* librbd's thread. */
static void rbd_task_done(rbd_completion_t c, void *arg)
{
    RbdTask *t = arg;
    t->ret = rbdlib.rbd_aio_get_return_value(c);
    rbdlib.rbd_aio_release(c);
    aio_co_wake(t->co);
}

typedef enum { RBD_READ, RBD_WRITE, RBD_DISCARD, RBD_ZEROES, RBD_FLUSH } RbdOp;

static int coroutine_fn rbd_co_aio(BlockDriverState *bs, RbdOp op, int64_t offset,
                                   int64_t bytes, const struct iovec *iov, int niov)
{
    RbdState *s = bs->opaque;
    RbdTask t = { .co = co_self(), .ret = 0 };
    rbd_completion_t c;
    int r = rbdlib.rbd_aio_create_completion(&t, rbd_task_done, &c);
    if (r < 0) {
        return r;
    }
    switch (op) {
    case RBD_READ:
        r = rbdlib.rbd_aio_readv(s->image, iov, niov, (uint64_t)offset, c);
        break;
    case RBD_WRITE:
        r = rbdlib.rbd_aio_writev(s->image, iov, niov, (uint64_t)offset, c);
        break;
    case RBD_DISCARD:
        r = rbdlib.rbd_aio_discard(s->image, (uint64_t)offset, (uint64_t)bytes, c);
        break;
    case RBD_ZEROES:
        r = rbdlib.rbd_aio_write_zeroes(s->image, (uint64_t)offset, (size_t)bytes, c, 0, 0);
        break;
    case RBD_FLUSH:
        r = rbdlib.rbd_aio_flush(s->image, c);
        break;
    }
    if (r < 0) {
        /* Not queued: no callback will come. */
        rbdlib.rbd_aio_release(c);
        return r;
    }
    co_yield();
    /* Reads return the bytes read, fewer only past the image's end (a
     * resize by another client): the caller zero-fills the rest. */
    return t.ret < 0 ? (int)t.ret : op == RBD_READ ? (int)MIN(t.ret, bytes) : 0;
}

/* [off, off+bytes) of qiov as an iovec array: on the stack, or (many
 * segments) allocated - *heap says which. */
static struct iovec *slice(const IOVector *qiov, size_t off, size_t bytes,
                           struct iovec *stack, int *niov, bool *heap)
{
    struct iovec *v = iov_slice_array(qiov, off, bytes, stack, RBD_STACK_IOVS, niov);
    *heap = v && v != stack;
    return v;
}

static int coroutine_fn rbd_co_rw(BlockDriverState *bs, RbdOp op, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset)
{
    struct iovec stack[RBD_STACK_IOVS] = { { 0 } };   /* (gcc cannot see slice() fill it) */
    int niov = 0;
    bool heap;
    struct iovec *v = slice(qiov, qiov_offset, (size_t)bytes, stack, &niov, &heap);
    if (!v) {
        return -ENOMEM;
    }
    int r = rbd_co_aio(bs, op, offset, bytes, v, niov);
    if (heap) {
        free(v);
    }
    if (op == RBD_READ && r >= 0) {
        if (r < bytes) {
            iov_memset(qiov, qiov_offset + (size_t)r, 0, (size_t)(bytes - r));
        }
        r = 0;
    }
    return r;
}

typedef struct RbdResize {
    rbd_image_t image;
    uint64_t size;
} RbdResize;

static int do_resize(void *opaque)
{
    RbdResize *r = opaque;
    return rbdlib.rbd_resize(r->image, r->size);
}

int coroutine_fn rbd_co_resize(RbdState *s, int64_t size)
{
    RbdResize req = { s->image, (uint64_t)size };
    int r = rbd_co_run_blocking(do_resize, &req);
    if (r == 0) {
        __atomic_store_n(&s->size, size, __ATOMIC_RELEASE);
    }
    return r;
}

/* A write that ends past the image's end grows it first (QEMU's rbd does the
 * same): rare, so a lock and a resize on the helper thread are fine here. */
static int coroutine_fn rbd_co_grow(BlockDriverState *bs, int64_t end)
{
    RbdState *s = bs->opaque;
    if (likely(end <= __atomic_load_n(&s->size, __ATOMIC_ACQUIRE))) {
        return 0;
    }
    int r = 0;
    co_mutex_lock(&s->grow_lock);
    if (end > __atomic_load_n(&s->size, __ATOMIC_ACQUIRE)) {
        r = rbd_co_resize(s, end);
    }
    co_mutex_unlock(&s->grow_lock);
    return r;
}

int coroutine_fn rbd_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                               IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)flags;
    return rbd_co_rw(bs, RBD_READ, offset, bytes, qiov, qiov_offset);
}

int coroutine_fn rbd_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)flags;
    if (bs->read_only) {
        return -EPERM;
    }
    int r = rbd_co_grow(bs, offset + bytes);
    if (r == 0) {
        r = rbd_co_rw(bs, RBD_WRITE, offset, bytes, qiov, qiov_offset);
    }
    if (r == 0) {
        bdrv_note_growth(bs, offset + bytes);
    }
    return r;
}

int coroutine_fn rbd_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      BdrvRequestFlags flags)
{
    (void)flags;   /* librbd frees whole objects it zeroes whatever the flags */
    if (bs->read_only) {
        return -EPERM;
    }
    int r = rbd_co_grow(bs, offset + bytes);
    if (r == 0) {
        r = rbd_co_aio(bs, RBD_ZEROES, offset, bytes, NULL, 0);
    }
    if (r == 0) {
        bdrv_note_growth(bs, offset + bytes);
    }
    return r;
}

int coroutine_fn rbd_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    if (bs->read_only) {
        return -EPERM;
    }
    return rbd_co_aio(bs, RBD_DISCARD, offset, bytes, NULL, 0);
}

int coroutine_fn rbd_co_flush(BlockDriverState *bs)
{
    return rbd_co_aio(bs, RBD_FLUSH, 0, 0, NULL, 0);
}

/* ---- blocking calls on a thread of their own ---- */

typedef struct RbdBlocking {
    int (*fn)(void *opaque);
    void *opaque;
    int ret;
    Coroutine *co;
} RbdBlocking;

static void *blocking_thread(void *arg)
{
    RbdBlocking *b = arg;
    b->ret = b->fn(b->opaque);
    aio_co_wake(b->co);   /* b (on the coroutine's stack) is not touched after */
    return NULL;
}

int coroutine_fn rbd_co_run_blocking(int (*fn)(void *opaque), void *opaque)
{
    RbdBlocking b = { .fn = fn, .opaque = opaque, .co = co_self() };
    pthread_attr_t attr;
    pthread_t th;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&th, &attr, blocking_thread, &b);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        return -r;
    }
    co_yield();
    return b.ret;
}

/* ---- block status ---- */

/* A callback's way to stop rbd_diff_iterate2 early (QEMU's value). */
#define RBD_DIFF_STOP (-9000)

typedef struct RbdDiff {
    rbd_image_t image;
    uint64_t offset, bytes;      /* the question */
    uint64_t pnum;               /* the answer: length of the first extent ... */
    bool exists;                 /* ... and whether it has data */
} RbdDiff;

/* QEMU's qemu_rbd_diff_iterate_cb: extents come in order; stop at the first
 * change between allocated and unallocated. */
static int diff_cb(uint64_t offs, size_t len, int exists, void *opaque)
{
    RbdDiff *d = opaque;
    if (offs < d->offset) {
        /* a whole object that starts before the question */
        uint64_t cut = MIN((uint64_t)len, d->offset - offs);
        offs += cut;
        len -= cut;
    }
    if (!exists || !len) {
        return 0;   /* a hole is as unallocated as nothing reported */
    }
    if (!d->exists && offs > d->offset) {
        d->pnum = offs - d->offset;   /* a hole first, up to this extent */
        return RBD_DIFF_STOP;
    }
    if (d->exists && offs > d->offset + d->pnum) {
        return RBD_DIFF_STOP;         /* data, then a gap */
    }
    d->pnum += len;
    d->exists = true;
    return 0;
}

/* 1: not known (no fast-diff, or its map invalid); else rbd_diff_iterate2's result.
 * The feature and flag getters are here too: they may refresh the image's
 * header from the cluster. */
static int do_diff(void *opaque)
{
    RbdDiff *d = opaque;
    uint64_t features, flags;
    /* Only the object map (fast-diff) answers quickly and exactly. */
    if (rbdlib.rbd_get_features(d->image, &features) < 0 || !(features & RBD_FEATURE_FAST_DIFF) ||
        rbdlib.rbd_get_flags(d->image, &flags) < 0 || (flags & RBD_FLAG_FAST_DIFF_INVALID)) {
        return 1;
    }
    return rbdlib.rbd_diff_iterate2(d->image, NULL, d->offset, d->bytes, true, true, diff_cb, d);
}

int coroutine_fn rbd_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                                     int64_t bytes, int64_t *pnum, int64_t *map,
                                     BlockDriverState **file)
{
    (void)want_zero;
    RbdState *s = bs->opaque;
    *pnum = bytes;
    *map = offset;
    *file = bs;
    RbdDiff d = { .image = s->image, .offset = (uint64_t)offset, .bytes = (uint64_t)bytes };
    int r = rbd_co_run_blocking(do_diff, &d);
    if (r == 1 || (r < 0 && r != RBD_DIFF_STOP)) {
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;   /* not known: all data */
    }
    if (!d.exists) {
        if (r == 0) {
            d.pnum = (uint64_t)bytes;   /* no extent at all: all of it is a hole */
        }
        *pnum = (int64_t)d.pnum;
        return BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID;
    }
    *pnum = (int64_t)MIN(d.pnum, (uint64_t)bytes);
    return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
}
