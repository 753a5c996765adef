/*
 * block-io.c - the request path for reads and writes (QEMU 7.2 block/io.c
 * semantics), written once for every layer of the graph.
 *
 * A request enters through bdrv_co_preadv/pwritev_part on a BdrvChild, is
 * counted in flight, padded to the node's request_alignment (a bounce buffer
 * for the head/tail, the caller's buffers referenced in place), tracked for
 * serialisation, split at max_transfer and handed to the driver.  Unaligned
 * writes are read-modify-write: the request is made serialising first, so
 * no overlapping request can slip in between the read and the write.
 *
 * Write-zeroes and discard live in block-io-zero.c, drain/flush/truncate in
 * block-io-drain.c, block status in block-status.c.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "block-io-int.h"
#include "iov-fixed.h"

/* ------------------------------------------------------------ bounce buffers */

#define BOUNCE_MIN_SHIFT 12                 /* 4 KiB */
#define BOUNCE_CLASSES   9                  /* 4 KiB .. 1 MiB */
#define BOUNCE_PER_CLASS 16
#define BOUNCE_ALIGN     4096

typedef struct BouncePool {
    void *free[BOUNCE_CLASSES][BOUNCE_PER_CLASS];
    int nfree[BOUNCE_CLASSES];
} BouncePool;

static __thread BouncePool *bounce_pool;
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_pool_free(void *opaque)
{
    BouncePool *pool = opaque;
    for (int c = 0; c < BOUNCE_CLASSES; c++) {
        for (int i = 0; i < pool->nfree[c]; i++) {
            free(pool->free[c][i]);
        }
    }
    free(pool);
}

static void bounce_key_init(void)
{
    pthread_key_create(&bounce_key, bounce_pool_free);
}

/* A coroutine can resume on another thread, so the pool's TLS address must
 * be looked up afresh after any yield: keep this out of line. */
static __attribute__((noinline)) BouncePool *bounce_pool_get(void)
{
    BouncePool *pool = bounce_pool;
    __asm__ volatile("" : : : "memory");
    if (!pool) {
        pthread_once(&bounce_once, bounce_key_init);
        pool = calloc(1, sizeof(*pool));
        if (!pool) {
            return NULL;
        }
        pthread_setspecific(bounce_key, pool);
        bounce_pool = pool;
    }
    return pool;
}

atomic_int bdrv_bounce_fail_next;

/* posix_memalign, NULL on failure: the request path must not abort. */
static void *bounce_alloc(size_t align, size_t size)
{
    void *p;
    return posix_memalign(&p, align, size) ? NULL : p;
}

void *bdrv_bounce_get(BlockDriverState *bs, size_t size, BounceBuf *b)
{
    size_t align = MAX(bs->bl.min_mem_alignment, (size_t)1);
    int cls = 0;
    b->p = NULL;
    b->cls = -1;
    if (unlikely(atomic_load_explicit(&bdrv_bounce_fail_next, memory_order_relaxed) > 0) &&
        atomic_fetch_sub(&bdrv_bounce_fail_next, 1) > 0) {
        return NULL;
    }
    while (cls < BOUNCE_CLASSES && ((size_t)1 << (BOUNCE_MIN_SHIFT + cls)) < size) {
        cls++;
    }
    if (cls == BOUNCE_CLASSES || align > BOUNCE_ALIGN) {
        b->size = size;
        b->p = bounce_alloc(MAX(align, (size_t)BOUNCE_ALIGN), ALIGN_UP(size, BOUNCE_ALIGN));
        return b->p;
    }
    BouncePool *pool = bounce_pool_get();
    if (!pool) {
        return NULL;
    }
    b->size = (size_t)1 << (BOUNCE_MIN_SHIFT + cls);
    if (pool->nfree[cls]) {
        b->p = pool->free[cls][--pool->nfree[cls]];
    } else {
        b->p = bounce_alloc(BOUNCE_ALIGN, b->size);
    }
    if (b->p) {
        b->cls = cls;
    }
    return b->p;
}

void bdrv_bounce_put(BounceBuf *b)
{
    if (!b->p) {
        return;
    }
    if (b->cls >= 0) {
        BouncePool *pool = bounce_pool_get();
        if (pool && pool->nfree[b->cls] < BOUNCE_PER_CLASS) {
            pool->free[b->cls][pool->nfree[b->cls]++] = b->p;
            b->p = NULL;
            return;
        }
    }
    free(b->p);
    b->p = NULL;
}

/* In .bss: never written, so its pages stay the kernel's shared zero page,
 * and nothing is allocated on the request path that first needs it. */
static uint8_t zero_buffer[BDRV_MAX_BOUNCE_BUFFER] __attribute__((aligned(BOUNCE_ALIGN)));

void *bdrv_zero_buffer(void)
{
    return zero_buffer;
}

/* ------------------------------------------------------------ checks, flags */

int bdrv_check_request(int64_t offset, int64_t bytes)
{
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    if (bytes > BDRV_MAX_LENGTH || offset > BDRV_MAX_LENGTH - bytes) {
        return -EIO;
    }
    return 0;
}

int64_t bdrv_total_bytes(BlockDriverState *bs)
{
    return __atomic_load_n(&bs->total_bytes, __ATOMIC_ACQUIRE);
}

/* The node's flags: copied from the driver before open, narrowed by open. */
BdrvRequestFlags bdrv_write_flags(BlockDriverState *bs)
{
    return bs->supported_write_flags;
}

BdrvRequestFlags bdrv_zero_flags(BlockDriverState *bs)
{
    if (!bs->drv->co_pwrite_zeroes) {
        return 0;
    }
    return bs->supported_zero_flags;
}

static uint32_t bdrv_align(BlockDriverState *bs)
{
    return bs->bl.request_alignment ? bs->bl.request_alignment : 1;
}

int64_t bdrv_get_cluster_size(BlockDriverState *bs)
{
    BlockDriverInfo bdi = { 0 };
    if (bs->drv->get_info && bs->drv->get_info(bs, &bdi) == 0 && bdi.cluster_size > 0) {
        return bdi.cluster_size;
    }
    return bdrv_align(bs);
}

BlockDriverState *bdrv_filter_bs(BlockDriverState *bs)
{
    return bs->drv && bs->drv->is_filter && bs->file ? bs->file->bs : NULL;
}

/* ------------------------------------------------------- tracked requests */

/*
 * Unlisted requests.  Linking every request into bs->tracked_reqs costs two
 * lock/unlock pairs on one cache line shared by all queue threads, and the
 * list only matters to serialising requests (an RMW, a copy-on-read, a
 * truncate), which are rare.  So while bs->serialising_in_flight is 0 a
 * request is not linked; it is counted in the per-thread "untracked" counters
 * instead, and a request that starts serialising waits until every unlisted
 * request has finished (all of them, not only the overlapping ones: they
 * cannot be told apart, and they are few and short) before it looks at the
 * list.  Requests that begin while something serialises are listed as before.
 *
 * The race: request U begins while serialising request S is being made
 * serialising.  U counts itself unlisted, then reads serialising_in_flight;
 * S raises serialising_in_flight, then sums the unlisted counters.  All four
 * are sequentially consistent, so at least one of them sees the other:
 *   - U sees S: U takes back its count and links itself; S then finds it on
 *     the list like any listed request (or waits for its count, if S summed
 *     before U took it back: U's take-back wakes S, see below);
 *   - S sees U's count: S waits for U to end.
 * Both may happen; neither can be missed.  The wake-up has the same shape:
 * an unlisted request that ends lowers its count, then reads
 * serialising_in_flight and, if it is raised, wakes untracked_queue under
 * reqs_lock; S sums the counters under reqs_lock and sleeps on that queue
 * with the lock released only once queued, so an end after S's sum finds S
 * queued.  An unlisted request never waits for serialising ones (a
 * serialising request that came after it waits for it instead; one that was
 * there before made it listed), so S waiting for it cannot deadlock.
 */
static void untracked_end(BlockDriverState *bs)
{
    bdrv_untracked_end(bs);
    if (__atomic_load_n(&bs->serialising_in_flight, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&bs->reqs_lock);
        CoQueue waiters = bs->untracked_queue;
        co_queue_init(&bs->untracked_queue);
        pthread_mutex_unlock(&bs->reqs_lock);
        co_queue_restart_all(&waiters);
    }
}

/* reqs_lock held. */
static void tracked_request_link_locked(BdrvTrackedRequest *req)
{
    BlockDriverState *bs = req->bs;
    req->next = bs->tracked_reqs;
    if (req->next) {
        req->next->pprev = &req->next;
    }
    req->pprev = &bs->tracked_reqs;
    bs->tracked_reqs = req;
    req->listed = true;
}

void coroutine_fn tracked_request_begin(BdrvTrackedRequest *req, BlockDriverState *bs,
                                        int64_t offset, int64_t bytes,
                                        BdrvTrackedRequestType type)
{
    *req = (BdrvTrackedRequest){
        .bs = bs, .offset = offset, .bytes = bytes, .type = type,
        .overlap_offset = offset, .overlap_bytes = bytes, .co = co_self(),
    };
    co_queue_init(&req->wait_queue);
    if (!__atomic_load_n(&bs->serialising_in_flight, __ATOMIC_SEQ_CST)) {
        bdrv_untracked_begin(bs);
        if (likely(!__atomic_load_n(&bs->serialising_in_flight, __ATOMIC_SEQ_CST))) {
            return;
        }
        untracked_end(bs);
    }
    pthread_mutex_lock(&bs->reqs_lock);
    tracked_request_link_locked(req);
    pthread_mutex_unlock(&bs->reqs_lock);
}

void coroutine_fn tracked_request_end(BdrvTrackedRequest *req)
{
    BlockDriverState *bs = req->bs;
    CoQueue waiters;
    if (!req->listed) {
        untracked_end(bs);
        return;
    }
    pthread_mutex_lock(&bs->reqs_lock);
    if (req->serialising) {
        __atomic_fetch_sub(&bs->serialising_in_flight, 1, __ATOMIC_SEQ_CST);
    }
    *req->pprev = req->next;
    if (req->next) {
        req->next->pprev = req->pprev;
    }
    /* Waiters only join under the lock after finding req in the list, so
     * once it is unlinked the queue is complete: take it in the same
     * critical section and wake it after the lock is dropped (a waiter
     * re-takes the lock as it resumes). */
    waiters = req->wait_queue;
    co_queue_init(&req->wait_queue);
    pthread_mutex_unlock(&bs->reqs_lock);
    co_queue_restart_all(&waiters);
}

static bool tracked_request_overlaps(BdrvTrackedRequest *req, int64_t offset, int64_t bytes)
{
    return offset < req->overlap_offset + req->overlap_bytes &&
           req->overlap_offset < offset + bytes;
}

/* reqs_lock held. */
static BdrvTrackedRequest *find_conflicting_request(BdrvTrackedRequest *self)
{
    bool self_passed = __atomic_load_n(&self->passed, __ATOMIC_ACQUIRE);
    for (BdrvTrackedRequest *req = self->bs->tracked_reqs; req; req = req->next) {
        if (req == self || (!req->serialising && !self->serialising)) {
            continue;
        }
        if (!tracked_request_overlaps(req, self->overlap_offset, self->overlap_bytes)) {
            continue;
        }
        /* A request of our own coroutine is a driver issuing nested I/O on
         * the same node: waiting for it would deadlock. */
        if (req->co == self->co) {
            continue;
        }
        /*
         * Linking a request and checking it for conflicts are two steps, and
         * with queue threads another request runs between them (in QEMU both
         * happen on one thread without a yield).  So an RMW that had already
         * read its block (passed) could find a write that was only linked,
         * wait for it, and then write back its stale block over that write,
         * while the write skipped the RMW as "waiting".  Rule: a request that
         * has passed never waits for one that has not (that one will wait
         * for it), and one that has not passed always waits for one that
         * has, even if that one is waiting: a passed request only waits for
         * passed ones, so no cycle can go through us.  Among requests on
         * the same side, one that is itself waiting will wait for us once it
         * wakes (or already waits for us indirectly): going on is what keeps
         * two of them from waiting for each other.
         */
        bool req_passed = __atomic_load_n(&req->passed, __ATOMIC_ACQUIRE);
        if (self_passed && !req_passed) {
            continue;
        }
        if (req->waiting_for && !(req_passed && !self_passed)) {
            continue;
        }
        return req;
    }
    return NULL;
}

/* reqs_lock held; dropped while sleeping. */
static bool wait_serialising_requests_locked(BdrvTrackedRequest *self)
{
    BdrvTrackedRequest *req;
    bool waited = false;
    while ((req = find_conflicting_request(self))) {
        self->waiting_for = req;
        co_queue_wait_mutex(&req->wait_queue, &self->bs->reqs_lock);
        self->waiting_for = NULL;
        waited = true;
    }
    __atomic_store_n(&self->passed, true, __ATOMIC_RELEASE);
    return waited;
}

/* reqs_lock held; dropped while sleeping.  Unlisted requests in flight
 * began before anything serialised (see untracked_end). */
static void wait_unlisted_requests_locked(BlockDriverState *bs)
{
    while (bdrv_untracked_in_flight(bs)) {
        co_queue_wait_mutex(&bs->untracked_queue, &bs->reqs_lock);
    }
}

bool coroutine_fn bdrv_make_request_serialising(BdrvTrackedRequest *req, uint64_t align)
{
    BlockDriverState *bs = req->bs;
    align = MAX(align, (uint64_t)1);
    int64_t overlap_offset = ALIGN_DOWN(req->offset, (int64_t)align);
    int64_t overlap_bytes = ALIGN_UP(req->offset + req->bytes, (int64_t)align) - overlap_offset;

    if (!req->listed) {
        /* Raise the count first, so that requests beginning from now on
         * list themselves; then stop counting as unlisted (which also wakes
         * other serialisers waiting for the unlisted ones). */
        __atomic_fetch_add(&bs->serialising_in_flight, 1, __ATOMIC_SEQ_CST);
        req->serialising = true;
        pthread_mutex_lock(&bs->reqs_lock);
        tracked_request_link_locked(req);
        pthread_mutex_unlock(&bs->reqs_lock);
        untracked_end(bs);
    }
    pthread_mutex_lock(&bs->reqs_lock);
    if (!req->serialising) {
        __atomic_fetch_add(&bs->serialising_in_flight, 1, __ATOMIC_SEQ_CST);
        req->serialising = true;
    }
    req->overlap_offset = MIN(req->overlap_offset, overlap_offset);
    req->overlap_bytes = MAX(req->overlap_offset + req->overlap_bytes,
                             overlap_offset + overlap_bytes) - req->overlap_offset;
    wait_unlisted_requests_locked(bs);
    bool waited = wait_serialising_requests_locked(req);
    pthread_mutex_unlock(&bs->reqs_lock);
    return waited;
}

bool coroutine_fn bdrv_wait_serialising_requests(BdrvTrackedRequest *req)
{
    BlockDriverState *bs = req->bs;
    /* Unlisted: any serialising request came after us and waits for us. */
    if (!req->listed ||
        (!__atomic_load_n(&bs->serialising_in_flight, __ATOMIC_SEQ_CST) && !req->serialising)) {
        /* Nothing serialised when we looked: one that starts now finds us
         * (listed or counted) while it has not passed, and waits for us. */
        __atomic_store_n(&req->passed, true, __ATOMIC_RELEASE);
        return false;
    }
    pthread_mutex_lock(&bs->reqs_lock);
    bool waited = wait_serialising_requests_locked(req);
    pthread_mutex_unlock(&bs->reqs_lock);
    return waited;
}

/* ----------------------------------------------------------------- padding */

/* offset % align without a division for the usual power-of-two alignment. */
static inline int64_t align_rem(int64_t offset, int64_t align)
{
    return (align & (align - 1)) ? offset % align : offset & (align - 1);
}

int bdrv_init_padding(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      BdrvRequestPadding *pad)
{
    int64_t align = bdrv_align(bs);
    int64_t head = align_rem(offset, align), tail = align_rem(offset + bytes, align);
    if (!head && !tail) {
        /* The aligned fast path: only what bdrv_padding_destroy looks at. */
        pad->bounce.p = pad->collapse.p = NULL;
        pad->heap_iov = NULL;
        return 0;
    }
    memset(pad, 0, offsetof(BdrvRequestPadding, inline_iov));
    pad->heap_iov = NULL;
    pad->head = head;
    pad->tail = tail ? align - tail : 0;
    int64_t sum = pad->head + bytes + pad->tail;
    pad->buf_len = (sum > align && pad->head && pad->tail) ? 2 * align : align;
    pad->buf = bdrv_bounce_get(bs, pad->buf_len, &pad->bounce);
    if (!pad->buf) {
        return -ENOMEM;
    }
    pad->merge_reads = sum == (int64_t)pad->buf_len;
    if (pad->tail) {
        pad->tail_buf = pad->buf + pad->buf_len - align;
    }
    return 1;
}

void bdrv_padding_destroy(BdrvRequestPadding *pad)
{
    bdrv_bounce_put(&pad->bounce);
    bdrv_bounce_put(&pad->collapse);
    free(pad->heap_iov);
    pad->heap_iov = NULL;
}

/* Count the iovec elements covering [offset, offset+len) of q. */
static int iov_count_range(const IOVector *q, size_t offset, size_t len)
{
    int n = 0;
    for (int i = 0; i < q->niov && len; i++) {
        size_t l = q->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        size_t take = MIN(l - offset, len);
        len -= take;
        offset = 0;
        n++;
    }
    return n;
}

/* Append the [offset, offset+len) part of q to out[*n]. */
static void iov_copy_range(struct iovec *out, int *n, const IOVector *q, size_t offset,
                           size_t len)
{
    for (int i = 0; i < q->niov && len; i++) {
        size_t l = q->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        size_t take = MIN(l - offset, len);
        out[(*n)++] = (struct iovec){ (char *)q->iov[i].iov_base + offset, take };
        len -= take;
        offset = 0;
    }
}

void bdrv_padding_collapse_copy(BdrvRequestPadding *pad, bool to_bounce)
{
    uint8_t *p = pad->collapse.p;
    if (!p) {
        return;
    }
    for (int i = pad->collapse_idx; i < pad->collapse_n; i++) {
        struct iovec v = i == pad->collapse_idx ? pad->collapse_first : pad->local_qiov.iov[i];
        if (to_bounce) {
            memcpy(p, v.iov_base, v.iov_len);
        } else {
            memcpy(v.iov_base, p, v.iov_len);
        }
        p += v.iov_len;
    }
}

/*
 * Widen [*offset, *offset+*bytes) to the alignment: *qiov becomes pad's
 * local vector of head bounce + the caller's bytes in place + tail bounce.
 * If the two extra elements push the vector past the node's max_iov, its
 * trailing elements are merged into one bounce buffer, as QEMU's
 * bdrv_create_padded_qiov does (only for vectors already near the limit).
 * Returns false (nothing changed) for an aligned request.
 */
static int bdrv_pad_request(BlockDriverState *bs, IOVector **qiov, size_t *qiov_offset,
                            int64_t *offset, int64_t *bytes, BdrvRequestPadding *pad)
{
    int ret = bdrv_init_padding(bs, *offset, *bytes, pad);
    if (ret <= 0) {
        return ret;
    }
    int need = iov_count_range(*qiov, *qiov_offset, *bytes) + 2;
    struct iovec *iov = pad->inline_iov;
    if (need > BDRV_PAD_INLINE_IOV) {
        /* Only callers with very fragmented buffers get here. */
        iov = pad->heap_iov = malloc(need * sizeof(*iov));
        if (!iov) {
            return -ENOMEM;
        }
    }
    int n = 0;
    if (pad->head) {
        iov[n++] = (struct iovec){ pad->buf, pad->head };
    }
    iov_copy_range(iov, &n, *qiov, *qiov_offset, *bytes);
    if (pad->tail) {
        iov[n++] = (struct iovec){ pad->buf + pad->buf_len - pad->tail, pad->tail };
    }
    int max_iov = bs->bl.max_iov > 0 ? bs->bl.max_iov : IOV_MAX;
    if (n > max_iov) {
        int k = max_iov - 1;
        size_t len = 0;
        for (int i = k; i < n; i++) {
            len += iov[i].iov_len;
        }
        pad->collapse_first = iov[k];
        pad->collapse_idx = k;
        pad->collapse_n = n;
        iov[k] = (struct iovec){ bdrv_bounce_get(bs, len, &pad->collapse), len };
        if (!iov[k].iov_base) {
            return -ENOMEM;
        }
        n = max_iov;
    }
    pad->local_qiov = (IOVector){ .iov = iov, .niov = n, .nalloc = -1,
                                  .size = pad->head + *bytes + pad->tail };
    *offset -= pad->head;
    *bytes += pad->head + pad->tail;
    *qiov = &pad->local_qiov;
    *qiov_offset = 0;
    return 1;
}

/* Read the partial head/tail blocks of a padded write into the bounce buffer.
 * req has been made serialising at the alignment: its overlap range is the
 * padded request. */
int coroutine_fn bdrv_padding_rmw_read(BdrvChild *child, BdrvTrackedRequest *req,
                                       BdrvRequestPadding *pad, bool zero_middle)
{
    BlockDriverState *bs = child->bs;
    int64_t align = bdrv_align(bs);
    IOVector local;
    int ret;

    if (pad->head || pad->merge_reads) {
        int64_t bytes = pad->merge_reads ? (int64_t)pad->buf_len : align;
        iov_init_buf(&local, pad->buf, bytes);
        ret = bdrv_aligned_preadv(child, req, req->overlap_offset, bytes, align, &local, 0, 0);
        if (ret < 0) {
            return ret;
        }
    }
    if (pad->tail && !pad->merge_reads) {
        iov_init_buf(&local, pad->tail_buf, align);
        ret = bdrv_aligned_preadv(child, req, req->overlap_offset + req->overlap_bytes - align,
                                  align, align, &local, 0, 0);
        if (ret < 0) {
            return ret;
        }
    }
    if (zero_middle) {
        memset(pad->buf + pad->head, 0, pad->buf_len - pad->head - pad->tail);
    }
    return 0;
}

/* ----------------------------------------------------------- driver calls */

int coroutine_fn bdrv_driver_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                    IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    if (!bs->drv->co_preadv) {
        return -ENOTSUP;
    }
    return bs->drv->co_preadv(bs, offset, bytes, qiov, qiov_offset,
                              flags & ~BDRV_REQ_COPY_ON_READ);
}

int coroutine_fn bdrv_driver_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                     IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    if (!bs->drv->co_pwritev) {
        return -ENOTSUP;
    }
    BdrvRequestFlags supported = bdrv_write_flags(bs);
    bool emulate_fua = (flags & BDRV_REQ_FUA) && !(supported & BDRV_REQ_FUA);
    int ret = bs->drv->co_pwritev(bs, offset, bytes, qiov, qiov_offset, flags & supported);
    /* Count the write before the emulated FUA flush, or that flush would
     * find nothing new to flush. */
    bdrv_write_gen_bump(bs);
    if (ret == 0 && emulate_fua) {
        ret = bdrv_co_flush(bs);
    }
    return ret;
}

/* Compressed writes go to the driver whole (its clusters), never split. */
static int coroutine_fn bdrv_driver_pwritev_compressed(BlockDriverState *bs, int64_t offset,
                                                       int64_t bytes, IOVector *qiov,
                                                       size_t qiov_offset, BdrvRequestFlags flags)
{
    int ret = bs->drv->co_pwritev_compressed(bs, offset, bytes, qiov, qiov_offset);
    bdrv_write_gen_bump(bs);
    if (ret == 0 && (flags & BDRV_REQ_FUA)) {
        ret = bdrv_co_flush(bs);
    }
    return ret;
}

/* ------------------------------------------------------------------ reads */

/*
 * Copy-on-read: the parts of [offset, offset+bytes) that this node does not
 * allocate are read (through the driver, i.e. from the backing) in whole
 * clusters and written back into this node, so later reads find them here.
 */
static int coroutine_fn bdrv_co_do_copy_on_readv(BdrvChild *child, int64_t offset,
                                                 int64_t bytes, IOVector *qiov,
                                                 size_t qiov_offset, BdrvRequestFlags flags)
{
    BlockDriverState *bs = child->bs;
    int64_t cluster_size = bdrv_get_cluster_size(bs);
    int64_t cluster_offset = ALIGN_DOWN(offset, cluster_size);
    int64_t cluster_bytes = ALIGN_UP(offset + bytes, cluster_size) - cluster_offset;
    int64_t skip_bytes = offset - cluster_offset;
    int64_t max_chunk = MAX((int64_t)BDRV_MAX_BOUNCE_BUFFER, cluster_size);
    int64_t progress = 0;
    BounceBuf bounce = { 0 };
    int ret = 0;

    if (bs->bl.max_transfer) {
        max_chunk = MIN(max_chunk, (int64_t)bs->bl.max_transfer);
    }
    while (cluster_bytes) {
        int64_t pnum;
        ret = bdrv_co_is_allocated(bs, cluster_offset, MIN(cluster_bytes, max_chunk), &pnum);
        if (ret < 0) {
            /* Treat as unallocated: the read will report a better error. */
            pnum = MIN(cluster_bytes, max_chunk);
        }
        if (ret == 0 && pnum == 0) {
            break;   /* the image ends inside the last cluster */
        }
        pnum = MIN(pnum, max_chunk);
        int64_t want = MIN(pnum - skip_bytes, bytes - progress);
        if (ret <= 0) {
            IOVector local;
            if (!bounce.p && !bdrv_bounce_get(bs, MIN(cluster_bytes, max_chunk), &bounce)) {
                ret = -ENOMEM;
                goto out;
            }
            iov_init_buf(&local, bounce.p, pnum);
            ret = bdrv_driver_preadv(bs, cluster_offset, pnum, &local, 0, 0);
            if (ret < 0) {
                goto out;
            }
            if (bs->drv->co_pwrite_zeroes && buffer_is_zero(bounce.p, pnum)) {
                ret = bdrv_co_do_pwrite_zeroes(bs, cluster_offset, pnum, 0);
            } else {
                /* Unchanged data: no flush needed even in writethrough mode. */
                ret = bdrv_driver_pwritev(bs, cluster_offset, pnum, &local, 0, 0);
            }
            if (ret < 0) {
                goto out;
            }
            if (!(flags & BDRV_REQ_PREFETCH) && want > 0) {
                iov_from_buf(qiov, qiov_offset + progress, (uint8_t *)bounce.p + skip_bytes, want);
            }
        } else if (!(flags & BDRV_REQ_PREFETCH) && want > 0) {
            ret = bdrv_driver_preadv(bs, offset + progress, want, qiov, qiov_offset + progress, 0);
            if (ret < 0) {
                goto out;
            }
        }
        /* Past the caller's range the loop still copies whole clusters. */
        cluster_offset += pnum;
        cluster_bytes -= pnum;
        progress += MAX(want, (int64_t)0);
        skip_bytes = MAX(skip_bytes - pnum, (int64_t)0);
    }
    ret = 0;
out:
    bdrv_bounce_put(&bounce);
    return ret < 0 ? ret : 0;
}

/* [offset, offset+bytes) is aligned; beyond the node's end reads are zeros. */
int coroutine_fn bdrv_aligned_preadv(BdrvChild *child, BdrvTrackedRequest *req,
                                     int64_t offset, int64_t bytes, int64_t align,
                                     IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    BlockDriverState *bs = child->bs;
    int64_t max_transfer = bs->bl.max_transfer ? (int64_t)bs->bl.max_transfer : INT64_MAX;
    int ret = 0;

    max_transfer = MAX(ALIGN_DOWN(MIN(max_transfer, (int64_t)BDRV_REQUEST_MAX_BYTES), align), align);

    if (!(flags & BDRV_REQ_COPY_ON_READ) || bs->read_only) {
        bdrv_wait_serialising_requests(req);
    } else {
        int64_t pnum;
        /* Serialise per cluster, so that two copy-on-reads (or a write) of
         * the same cluster cannot both allocate it. */
        bdrv_make_request_serialising(req, bdrv_get_cluster_size(bs));
        flags &= ~BDRV_REQ_COPY_ON_READ;
        ret = bdrv_co_is_allocated(bs, offset, bytes, &pnum);
        if (ret < 0) {
            return ret;
        }
        if (!ret || pnum != bytes) {
            return bdrv_co_do_copy_on_readv(child, offset, bytes, qiov, qiov_offset, flags);
        }
        if (flags & BDRV_REQ_PREFETCH) {
            return 0;
        }
    }
    flags &= ~(BDRV_REQ_COPY_ON_READ | BDRV_REQ_PREFETCH);

    int64_t total_bytes = bdrv_total_bytes(bs);
    int64_t max_bytes = ALIGN_UP(MAX((int64_t)0, total_bytes - offset), align);
    if (bytes <= max_bytes && bytes <= max_transfer) {
        return bdrv_driver_preadv(bs, offset, bytes, qiov, qiov_offset, flags);
    }
    int64_t done = 0;
    while (done < bytes) {
        int64_t num;
        if (max_bytes) {
            num = MIN(bytes - done, MIN(max_bytes, max_transfer));
            ret = bdrv_driver_preadv(bs, offset + done, num, qiov, qiov_offset + done, flags);
            max_bytes -= num;
        } else {
            num = bytes - done;
            ret = iov_co_zero(qiov, qiov_offset + done, num);
        }
        if (ret < 0) {
            return ret;
        }
        done += num;
    }
    return 0;
}

int coroutine_fn bdrv_co_preadv_part(BdrvChild *child, int64_t offset, int64_t bytes,
                                     IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    BlockDriverState *bs = child->bs;
    BdrvTrackedRequest req;
    BdrvRequestPadding pad;
    int ret;

    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    ret = bdrv_check_request(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (!qiov || qiov_offset + bytes > qiov->size) {
        return -EINVAL;
    }
    if (bytes == 0) {
        return 0;
    }
    if (unlikely(bdrv_needs_mapped(bs, offset, bytes, qiov, qiov_offset, flags, false))) {
        return bdrv_co_rw_mapped(child, offset, bytes, qiov, qiov_offset, flags, false);
    }
    bdrv_co_enter_request(child);
    if (__atomic_load_n(&bs->copy_on_read, __ATOMIC_RELAXED) ||
        (bs->open_flags & BDRV_O_COPY_ON_READ)) {
        flags |= BDRV_REQ_COPY_ON_READ;
    }
    int64_t align = bdrv_align(bs);
    ret = bdrv_pad_request(bs, &qiov, &qiov_offset, &offset, &bytes, &pad);
    if (ret < 0) {
        bdrv_padding_destroy(&pad);
        bdrv_co_leave_request(child);
        return ret;
    }
    tracked_request_begin(&req, bs, offset, bytes, BDRV_TRACKED_READ);
    ret = bdrv_aligned_preadv(child, &req, offset, bytes, align, qiov, qiov_offset, flags);
    if (ret == 0) {
        bdrv_padding_collapse_copy(&pad, false);
    }
    tracked_request_end(&req);
    bdrv_padding_destroy(&pad);
    bdrv_co_leave_request(child);
    return ret;
}

int coroutine_fn bdrv_co_preadv(BdrvChild *child, int64_t offset, int64_t bytes,
                                IOVector *qiov, BdrvRequestFlags flags)
{
    return bdrv_co_preadv_part(child, offset, bytes, qiov, 0, flags);
}

/* ----------------------------------------------------------------- writes */

static int coroutine_fn bdrv_co_write_req_prepare(BdrvChild *child, BdrvTrackedRequest *req,
                                                  BdrvRequestFlags flags)
{
    (void)child;
    if (flags & BDRV_REQ_SERIALISING) {
        bdrv_make_request_serialising(req, bdrv_get_cluster_size(req->bs));
    } else if (!(flags & BDRV_REQ_NO_SERIALISING)) {
        bdrv_wait_serialising_requests(req);
    }
    return 0;
}

void bdrv_co_write_req_finish(BdrvChild *child, int64_t offset, int64_t bytes,
                              BdrvTrackedRequest *req, int ret)
{
    BlockDriverState *bs = child->bs;
    int64_t end = offset + bytes;
    if (ret == 0 && req->type != BDRV_TRACKED_DISCARD && bs->growable) {
        int64_t cur = bdrv_total_bytes(bs);
        while (end > cur &&
               !__atomic_compare_exchange_n(&bs->total_bytes, &cur, end, false,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        }
    }
}

int coroutine_fn bdrv_aligned_pwritev(BdrvChild *child, BdrvTrackedRequest *req,
                                      int64_t offset, int64_t bytes, int64_t align,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    BlockDriverState *bs = child->bs;
    int64_t max_transfer = bs->bl.max_transfer ? (int64_t)bs->bl.max_transfer : INT64_MAX;
    int ret;

    max_transfer = MAX(ALIGN_DOWN(MIN(max_transfer, (int64_t)BDRV_REQUEST_MAX_BYTES), align), align);

    ret = bdrv_co_write_req_prepare(child, req, flags);
    if (ret == 0 && bs->detect_zeroes != BDRV_DETECT_ZEROES_OFF &&
        !(flags & (BDRV_REQ_ZERO_WRITE | BDRV_REQ_WRITE_COMPRESSED)) && bs->drv->co_pwrite_zeroes &&
        iov_is_zero(qiov, qiov_offset, bytes)) {
        flags |= BDRV_REQ_ZERO_WRITE;
        if (bs->detect_zeroes == BDRV_DETECT_ZEROES_UNMAP && (bs->open_flags & BDRV_O_UNMAP)) {
            flags |= BDRV_REQ_MAY_UNMAP;
        }
        if (bs->drv->serialise_unmap) {
            bdrv_make_request_serialising(req, bdrv_get_cluster_size(bs));
        }
    }
    if (ret < 0) {
        /* nothing */
    } else if (flags & BDRV_REQ_ZERO_WRITE) {
        ret = bdrv_co_do_pwrite_zeroes(bs, offset, bytes, flags);
    } else if (flags & BDRV_REQ_WRITE_COMPRESSED) {
        ret = bdrv_driver_pwritev_compressed(bs, offset, bytes, qiov, qiov_offset, flags);
    } else if (bytes <= max_transfer) {
        ret = bdrv_driver_pwritev(bs, offset, bytes, qiov, qiov_offset, flags);
    } else {
        bool emulate_fua = (flags & BDRV_REQ_FUA) && !(bdrv_write_flags(bs) & BDRV_REQ_FUA);
        int64_t done = 0;
        while (done < bytes && ret == 0) {
            int64_t num = MIN(bytes - done, max_transfer);
            BdrvRequestFlags piece_flags = flags;
            /* An emulated FUA needs only one flush, after the last piece. */
            if (emulate_fua && done + num < bytes) {
                piece_flags &= ~BDRV_REQ_FUA;
            }
            ret = bdrv_driver_pwritev(bs, offset + done, num, qiov, qiov_offset + done,
                                      piece_flags);
            done += num;
        }
    }
    bdrv_co_write_req_finish(child, offset, bytes, req, ret);
    return ret < 0 ? ret : 0;
}

int coroutine_fn bdrv_co_pwritev_part(BdrvChild *child, int64_t offset, int64_t bytes,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    BlockDriverState *bs = child->bs;
    BdrvTrackedRequest req;
    BdrvRequestPadding pad;
    int padded = 0;
    int ret;

    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    ret = bdrv_check_request(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (!(flags & BDRV_REQ_ZERO_WRITE) && (!qiov || qiov_offset + bytes > qiov->size)) {
        return -EINVAL;
    }
    if (bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        return -EPERM;
    }
    if (!bs->growable && offset + bytes > bdrv_total_bytes(bs)) {
        return -EIO;
    }
    int64_t align = bdrv_align(bs);
    if ((flags & BDRV_REQ_NO_FALLBACK) && !IS_ALIGNED(offset | bytes, align)) {
        return -ENOTSUP;
    }
    if (flags & BDRV_REQ_ZERO_WRITE) {
        flags &= ~BDRV_REQ_WRITE_COMPRESSED;      /* zeroes stay zeroes, as in QEMU */
    } else if ((flags & BDRV_REQ_WRITE_COMPRESSED) && !bdrv_supports_compressed_writes(bs)) {
        return -ENOTSUP;
    }
    if (bytes == 0 && (flags & BDRV_REQ_WRITE_COMPRESSED)) {
        /* QEMU's "end of compressed output": the driver may tidy up (qcow2
         * rounds its file up to a whole sector, as qemu-img leaves it). */
        bdrv_co_enter_request(child);
        ret = bs->drv->co_pwritev_compressed(bs, offset, 0, qiov, qiov_offset);
        bdrv_co_leave_request(child);
        return ret;
    }
    if (bytes == 0) {
        return 0;
    }
    if (bs->open_flags & BDRV_O_WRITETHROUGH) {
        flags |= BDRV_REQ_FUA;
    }
    if ((flags & BDRV_REQ_WRITE_COMPRESSED) ||
        ((flags & BDRV_REQ_ZERO_WRITE) && bs->drv->serialise_unmap)) {
        /* The driver replaces or frees whole clusters: nobody may write or
         * read-modify-write the same clusters meanwhile (in-place writes take
         * no driver lock). */
        flags = (flags | BDRV_REQ_SERIALISING) & ~BDRV_REQ_NO_SERIALISING;
    }
    if (unlikely(bdrv_needs_mapped(bs, offset, bytes, qiov, qiov_offset, flags, true))) {
        return bdrv_co_rw_mapped(child, offset, bytes, qiov, qiov_offset, flags, true);
    }

    bdrv_co_enter_request(child);
    if (!(flags & BDRV_REQ_ZERO_WRITE)) {
        padded = bdrv_pad_request(bs, &qiov, &qiov_offset, &offset, &bytes, &pad);
        if (padded < 0) {
            bdrv_padding_destroy(&pad);
            bdrv_co_leave_request(child);
            return padded;
        }
    }
    tracked_request_begin(&req, bs, offset, bytes, BDRV_TRACKED_WRITE);
    if (flags & BDRV_REQ_ZERO_WRITE) {
        ret = bdrv_co_do_zero_pwritev(child, offset, bytes, flags, &req);
    } else {
        if (padded) {
            /* Between our read of the partial blocks and our write of them,
             * nobody else may touch the widened range. */
            bdrv_make_request_serialising(&req, align);
            ret = bdrv_padding_rmw_read(child, &req, &pad, false);
            /* after the read: a collapsed tail may include the tail block */
            bdrv_padding_collapse_copy(&pad, true);
        }
        if (ret == 0) {
            ret = bdrv_aligned_pwritev(child, &req, offset, bytes, align, qiov, qiov_offset, flags);
        }
        if (padded) {
            bdrv_padding_destroy(&pad);
        }
    }
    tracked_request_end(&req);
    bdrv_co_leave_request(child);
    return ret;
}

int coroutine_fn bdrv_co_pwritev(BdrvChild *child, int64_t offset, int64_t bytes,
                                 IOVector *qiov, BdrvRequestFlags flags)
{
    return bdrv_co_pwritev_part(child, offset, bytes, qiov, 0, flags);
}

int coroutine_fn bdrv_co_pwrite_zeroes(BdrvChild *child, int64_t offset, int64_t bytes,
                                       BdrvRequestFlags flags)
{
    if (child->bs && !(child->bs->open_flags & BDRV_O_UNMAP)) {
        flags &= ~BDRV_REQ_MAY_UNMAP;
    }
    return bdrv_co_pwritev_part(child, offset, bytes, NULL, 0, flags | BDRV_REQ_ZERO_WRITE);
}
