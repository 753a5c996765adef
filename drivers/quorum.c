/*
 * quorum.c - N-way replication with voting reads, after QEMU's quorum:
 *
 *   driver=quorum,vote-threshold=2,children.0.file.filename=a.img,
 *       children.1.file.filename=b.img,children.2.file.filename=c.img
 *
 * Writes, zero writes, discards and flushes go to every child at once and
 * succeed when vote-threshold children succeed.  Reads (read-pattern=quorum)
 * go to every child at once and vote per block (quorum-vote.c): the version
 * with at least vote-threshold votes is returned, children that returned
 * something else are reported (QUORUM_REPORT_BAD) and, with
 * rewrite-corrupted=on, rewritten with it.  read-pattern=fifo reads the
 * children in order until one succeeds.  blkverify=on (two children,
 * threshold 2) fails a read whose children differ, naming the offset.
 *
 * Parallel sub-requests are coroutines on the calling thread: one per
 * child, entered in turn (each runs until its I/O is submitted), and the
 * request's coroutine sleeps until the last one ends (quorum_run).  Their
 * stacks come from the per-thread coroutine pool and the read buffers from
 * a per-thread arena (quorum_buf_get), so a warm thread allocates nothing
 * per request.
 *
 * Rewrites run inside the read, before it completes: the winning data is
 * then still in the caller's buffer (no copy, nothing to allocate), the
 * request's in-flight count covers the rewrite (drain and close wait for it
 * without any background bookkeeping), and the next read of the range finds
 * the child repaired.  The cost is latency, on the rare read that found a
 * bad child.  A rewrite that fails is reported (QUORUM_REWRITE_FAILED) and
 * the read still succeeds.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-driver.h"
#include "quorum-int.h"

static const char *const read_patterns[] = { "quorum", "fifo", NULL };

/* Per-child counters, striped per thread slot (thread-slot.h): every read
 * counts on every child, from every queue thread. */
static const char *const qc_names[QC__MAX] = {
    "reads", "writes", "errors", "corruptions", "rewrites", "rewrite-failures",
};

static uint64_t *quorum_stat_ptr(QuorumState *s, unsigned slot, int child, int which)
{
    return &s->stats[(size_t)slot * QUORUM_STATS_STRIDE + (size_t)child * QC__MAX + which];
}

void quorum_count(QuorumState *s, int child, int which)
{
    unsigned slot = thread_slot();
    thread_slot_add(quorum_stat_ptr(s, slot, child, which), 1, slot);
}

static uint64_t quorum_stat(QuorumState *s, int child, int which)
{
    uint64_t sum = 0;
    for (unsigned slot = 0; slot < THREAD_SLOTS; slot++) {
        sum += __atomic_load_n(quorum_stat_ptr(s, slot, child, which), __ATOMIC_RELAXED);
    }
    return sum;
}

/* ---- per-thread buffer arena ----
 * Free lists by power-of-two size (4 KiB .. 16 MiB), linked through the
 * buffers themselves, kept per thread with no cap: a thread keeps what its
 * busiest moment needed (reads in flight x children - 1) and allocates
 * nothing once warm.  (The block layer's bounce cache keeps 16 buffers per
 * size and thread, fewer than a queue at depth 32 holds in quorum reads.)
 * Larger requests, or children that need more than 4 KiB memory alignment,
 * get a buffer of their own. */
#define QA_MIN_SHIFT 12
#define QA_CLASSES   13
#define QA_ALIGN     4096

typedef struct QuorumArena {
    void *free[QA_CLASSES];
} QuorumArena;

typedef struct QuorumBuf {
    void *p;
    int cls;        /* -1: allocated for this request alone */
} QuorumBuf;

static __thread QuorumArena *quorum_arena;
static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void arena_destroy(void *opaque)
{
    QuorumArena *a = opaque;
    for (int c = 0; c < QA_CLASSES; c++) {
        while (a->free[c]) {
            void *next = *(void **)a->free[c];
            free(a->free[c]);
            a->free[c] = next;
        }
    }
    free(a);
}

static void arena_key_init(void)
{
    pthread_key_create(&arena_key, arena_destroy);
}

/* Out of line: a coroutine that yielded may be on another thread now. */
static __attribute__((noinline)) QuorumArena *arena_get(void)
{
    QuorumArena *a = quorum_arena;
    __asm__ volatile("" : : : "memory");
    if (!a) {
        pthread_once(&arena_once, arena_key_init);
        a = calloc(1, sizeof(*a));
        if (!a) {
            return NULL;
        }
        pthread_setspecific(arena_key, a);
        quorum_arena = a;
    }
    return a;
}

static void *quorum_buf_get(size_t size, size_t align, QuorumBuf *b)
{
    int cls = 0;
    while (cls < QA_CLASSES && ((size_t)1 << (QA_MIN_SHIFT + cls)) < size) {
        cls++;
    }
    b->p = NULL;
    b->cls = -1;
    if (cls == QA_CLASSES || align > QA_ALIGN) {
        if (posix_memalign(&b->p, MAX(align, (size_t)QA_ALIGN), ALIGN_UP(size, QA_ALIGN))) {
            b->p = NULL;
        }
        return b->p;
    }
    QuorumArena *a = arena_get();
    if (!a) {
        return NULL;
    }
    if (a->free[cls]) {
        b->p = a->free[cls];
        a->free[cls] = *(void **)b->p;
    } else if (posix_memalign(&b->p, QA_ALIGN, (size_t)1 << (QA_MIN_SHIFT + cls))) {
        b->p = NULL;
    }
    if (b->p) {
        b->cls = cls;
    }
    return b->p;
}

static void quorum_buf_put(QuorumBuf *b)
{
    if (!b->p) {
        return;
    }
    QuorumArena *a = b->cls >= 0 ? arena_get() : NULL;
    if (a) {
        *(void **)b->p = a->free[b->cls];
        a->free[b->cls] = b->p;
    } else {
        free(b->p);
    }
    b->p = NULL;
}

/* How messages name a child: its file, or its node name if it has none. */
static const char *child_label(const BlockDriverState *c)
{
    return c->filename[0] ? c->filename : bdrv_get_node_name(c);
}

/* ---- events ---- */

/* A child's event: node and file name the child (the disk the user must
 * look at, as QEMU's QUORUM_REPORT_BAD names the child's node); extra names
 * the quorum node, the edge and the operation. */
void quorum_child_event(BlockDriverState *bs, int child, const char *type, const char *op,
                        int64_t offset, int64_t bytes, int err, const char *more)
{
    QuorumState *s = bs->opaque;
    BlockDriverState *cbs = s->children[child]->bs;
    char qnode[96], cnode[96], extra[512];
    bdrv_json_escape(bdrv_get_node_name(bs), qnode, sizeof(qnode));
    bdrv_json_escape(bdrv_get_node_name(cbs), cnode, sizeof(cnode));
    snprintf(extra, sizeof(extra),
             ",\"quorum\":\"%s\",\"child\":\"children.%d\",\"child-node\":\"%s\",\"op\":\"%s\"%s",
             qnode, child, cnode, op, more ? more : "");
    bdrv_event(cbs, type, offset, bytes, err, extra);
}

/* ---- parallel sub-requests ---- */

typedef enum { QOP_READ, QOP_WRITE, QOP_ZEROES, QOP_DISCARD, QOP_FLUSH } QuorumOp;
static const char *const op_names[] = { "read", "write", "write-zeroes", "discard", "flush" };

typedef struct QuorumReq QuorumReq;

typedef struct QuorumChildReq {
    QuorumReq *req;
    int idx;
    int ret;
    IOVector qiov;      /* reads: the child's own buffer */
} QuorumChildReq;

struct QuorumReq {
    BlockDriverState *bs;
    QuorumState *s;
    QuorumOp op;
    int64_t offset, bytes;
    IOVector *qiov;     /* writes: the caller's data */
    size_t qiov_offset;
    BdrvRequestFlags flags;
    Coroutine *co;      /* the request, sleeping in quorum_run */
    uint32_t mask;      /* the children it goes to */
    int pending;
    bool waiting;
    QuorumChildReq child[QUORUM_MAX_CHILDREN];
};

static void coroutine_fn quorum_child_entry(void *opaque)
{
    QuorumChildReq *c = opaque;
    QuorumReq *r = c->req;
    BdrvChild *child = r->s->children[c->idx];
    switch (r->op) {
    case QOP_READ:
        c->ret = bdrv_co_preadv(child, r->offset, r->bytes, &c->qiov, 0);
        break;
    case QOP_WRITE:
        c->ret = bdrv_co_pwritev_part(child, r->offset, r->bytes, r->qiov, r->qiov_offset,
                                      r->flags);
        break;
    case QOP_ZEROES:
        c->ret = bdrv_co_pwrite_zeroes(child, r->offset, r->bytes, r->flags);
        break;
    case QOP_DISCARD:
        c->ret = bdrv_co_pdiscard(child, r->offset, r->bytes);
        break;
    case QOP_FLUSH:
        c->ret = bdrv_co_flush(child->bs);
        break;
    }
    /* All of a request's coroutines run on its thread (they were entered
     * here and their I/O completes on this thread's ring), so plain
     * fields do.  The request only sleeps once every child has been
     * entered; one that ends before that must not wake it. */
    if (--r->pending == 0 && r->waiting) {
        aio_co_wake(r->co);
    }
}

/* Run r->op on the children in r->mask at once and wait for all of them;
 * the others get QUORUM_NO_VOTE. */
static void coroutine_fn quorum_run(QuorumReq *r)
{
    r->co = co_self();
    r->pending = __builtin_popcount(r->mask);
    r->waiting = false;
    for (int i = 0; i < r->s->n; i++) {
        r->child[i].req = r;
        r->child[i].idx = i;
        r->child[i].ret = QUORUM_NO_VOTE;
        if (r->mask & (1u << i)) {
            co_enter(co_create(quorum_child_entry, &r->child[i]));
        }
    }
    while (r->pending) {
        r->waiting = true;
        co_yield();
        r->waiting = false;
    }
}

static void quorum_req_init(QuorumReq *r, BlockDriverState *bs, QuorumOp op, int64_t offset,
                            int64_t bytes, IOVector *qiov, size_t qiov_offset,
                            BdrvRequestFlags flags)
{
    r->bs = bs;
    r->s = bs->opaque;
    r->op = op;
    r->offset = offset;
    r->bytes = bytes;
    r->qiov = qiov;
    r->qiov_offset = qiov_offset;
    r->flags = flags;
    r->mask = r->s->n == 32 ? UINT32_MAX : (1u << r->s->n) - 1;
}

/* ---- reads ---- */

/* The caller's buffer for [off, off + len) if it is one piece of memory. */
static uint8_t *qiov_contiguous(IOVector *qiov, size_t off, size_t len)
{
    for (int i = 0; i < qiov->niov; i++) {
        size_t l = qiov->iov[i].iov_len;
        if (off < l) {
            return len <= l - off ? (uint8_t *)qiov->iov[i].iov_base + off : NULL;
        }
        off -= l;
    }
    return NULL;
}

static void quorum_failure_event(BlockDriverState *bs, QuorumOp op, int64_t offset,
                                 int64_t bytes, int err, const char *more)
{
    QuorumState *s = bs->opaque;
    char extra[256];
    snprintf(extra, sizeof(extra), ",\"op\":\"%s\",\"threshold\":%d,\"children\":%d%s",
             op_names[op], s->threshold, s->n, more ? more : "");
    bdrv_event(bs, "QUORUM_FAILURE", offset, bytes, err, extra);
}

/* Child i returned other data than the winner for [start, end) of the
 * request: report it, and rewrite it from the caller's buffer (which holds
 * the winning data there by now) if asked to. */
static void coroutine_fn quorum_bad_range(BlockDriverState *bs, int i, int64_t offset,
                                          int64_t start, int64_t end, IOVector *qiov,
                                          size_t qiov_offset)
{
    QuorumState *s = bs->opaque;
    quorum_count(s, i, QC_CORRUPTIONS);
    quorum_child_event(bs, i, "QUORUM_REPORT_BAD", "read", offset + start, end - start, 0,
                       ",\"reason\":\"outvoted\"");
    if (!s->rewrite_corrupted || bs->read_only) {
        return;
    }
    int ret = bdrv_co_pwritev_part(s->children[i], offset + start, end - start, qiov,
                                   qiov_offset + (size_t)start, 0);
    if (ret < 0) {
        quorum_count(s, i, QC_REWRITE_FAILURES);
        quorum_child_event(bs, i, "QUORUM_REWRITE_FAILED", "write", offset + start,
                           end - start, ret, NULL);
    } else {
        quorum_count(s, i, QC_REWRITES);
    }
}

/* The children disagree somewhere: vote block by block, put each block's
 * winner into the caller's buffer, report (and rewrite) the runs of blocks
 * each child lost.  direct: child 0 read straight into the caller's buffer. */
static int coroutine_fn quorum_vote_read(BlockDriverState *bs, const QuorumVoteIn *in,
                                         int64_t offset, int64_t bytes, int64_t from,
                                         int64_t to, IOVector *qiov, size_t qiov_offset,
                                         bool direct)
{
    QuorumState *s = bs->opaque;
    uint32_t block = MAX(bs->bl.request_alignment, (uint32_t)BDRV_SECTOR_SIZE);
    int64_t run[QUORUM_MAX_CHILDREN];
    int ret = 0;
    int64_t pos = from;

    for (int i = 0; i < s->n; i++) {
        run[i] = -1;
    }
    while (pos < to) {
        size_t len = MIN(quorum_block_len(offset, bytes, block, pos), (size_t)(to - pos));
        QuorumBlockVote v;
        quorum_vote_block(in, (size_t)pos, len, &v);
        if (v.winner < 0) {
            char more[160];
            if (s->blkverify) {
                const uint8_t *a = in->bufs[0] + pos, *b = in->bufs[1] + pos;
                size_t k = 0;
                while (k < len && a[k] == b[k]) {
                    k++;
                }
                snprintf(more, sizeof(more), ",\"mismatch-offset\":%" PRId64
                         ",\"request-offset\":%" PRId64 ",\"request-length\":%" PRId64,
                         offset + pos + (int64_t)k, offset, bytes);
                bdrv_event(bs, "QUORUM_BLKVERIFY_MISMATCH", offset + pos, (int64_t)len, -EIO,
                           more);
            } else {
                snprintf(more, sizeof(more), ",\"bad-offset\":%" PRId64 ",\"bad-length\":%zu"
                         ",\"versions\":%d,\"votes\":%d", offset + pos, len, v.versions, v.votes);
                quorum_failure_event(bs, QOP_READ, offset, bytes, -EIO, more);
            }
            ret = -EIO;
            break;
        }
        if (!(direct && (v.agree & 1))) {
            iov_from_buf(qiov, qiov_offset + (size_t)pos, in->bufs[v.winner] + pos, len);
        }
        for (int i = 0; i < s->n; i++) {
            bool bad = v.minority & (1u << i);
            if (bad && run[i] < 0) {
                run[i] = pos;
            } else if (!bad && run[i] >= 0) {
                quorum_bad_range(bs, i, offset, run[i], pos, qiov, qiov_offset);
                run[i] = -1;
            }
        }
        pos += (int64_t)len;
    }
    /* Runs still open end where the vote ended: their blocks all had a
     * winner, which is in the caller's buffer. */
    for (int i = 0; i < s->n; i++) {
        if (run[i] >= 0) {
            quorum_bad_range(bs, i, offset, run[i], pos, qiov, qiov_offset);
        }
    }
    return ret;
}

/* The most common real error among errs (QUORUM_NO_VOTE is none), or -EIO
 * when the only "errors" were children that do not vote there. */
static int quorum_real_error(const int *errs, int n)
{
    int real[QUORUM_MAX_CHILDREN];
    for (int i = 0; i < n; i++) {
        real[i] = errs[i] == QUORUM_NO_VOTE ? 0 : errs[i];
    }
    int ret = quorum_most_common_error(real, n);
    return ret ? ret : -EIO;
}

/* Settle [from, to) of a read whose children returned bufs/errs. */
static int coroutine_fn quorum_vote_segment(BlockDriverState *bs, const uint8_t *const *bufs,
                                            const int *errs, int64_t offset, int64_t bytes,
                                            int64_t from, int64_t to, IOVector *qiov,
                                            size_t qiov_offset, bool direct)
{
    QuorumState *s = bs->opaque;
    QuorumVoteIn in = { .n = s->n, .bufs = bufs, .errs = errs, .threshold = s->threshold };
    size_t len = (size_t)(to - from);
    if (quorum_successes(errs, s->n) < s->threshold) {
        int ret = quorum_real_error(errs, s->n);
        quorum_failure_event(bs, QOP_READ, offset + from, (int64_t)len, ret, NULL);
        return ret;
    }
    if (quorum_all_agree(&in, (size_t)from, len)) {
        int first = 0;
        while (errs[first]) {
            first++;
        }
        if (!(direct && first == 0)) {
            iov_from_buf(qiov, qiov_offset + (size_t)from, bufs[first] + from, len);
        }
        return 0;
    }
    return quorum_vote_read(bs, &in, offset, bytes, from, to, qiov, qiov_offset, direct);
}

int64_t quorum_vote_limit(QuorumState *s, int i)
{
    if (!(__atomic_load_n(&s->incomplete, __ATOMIC_ACQUIRE) & (1u << i))) {
        return INT64_MAX;
    }
    return __atomic_load_n(&s->rb[i].done, __ATOMIC_ACQUIRE);
}

static int coroutine_fn quorum_read_quorum(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                           IOVector *qiov, size_t qiov_offset)
{
    QuorumState *s = bs->opaque;
    QuorumReq r;
    const uint8_t *bufs[QUORUM_MAX_CHILDREN];
    int errs[QUORUM_MAX_CHILDREN];
    /* Request bytes [0, lim[i]) are where child i votes: all of it, but for
     * a child being rebuilt only what was rebuilt before its read was
     * issued (taken now: a block rebuilt later may have been read before
     * the copy reached it).  Beyond that the child has not answered. */
    int64_t lim[QUORUM_MAX_CHILDREN];
    uint32_t incomplete = __atomic_load_n(&s->incomplete, __ATOMIC_ACQUIRE);
    /* Child 0 reads straight into the caller's buffer when it is one piece
     * (every ublk request): when it agrees, nothing is copied. */
    uint8_t *direct = qiov_contiguous(qiov, qiov_offset, (size_t)bytes);
    size_t stride = ALIGN_UP((size_t)bytes, (size_t)QA_ALIGN);
    int nbuf = s->n - (direct ? 1 : 0);
    QuorumBuf qb;
    uint8_t *area = quorum_buf_get(stride * (size_t)nbuf, bs->bl.min_mem_alignment, &qb);
    if (!area) {
        return -ENOMEM;
    }
    quorum_req_init(&r, bs, QOP_READ, offset, bytes, NULL, 0, 0);
    for (int i = 0, k = 0; i < s->n; i++) {
        uint8_t *b = i == 0 && direct ? direct : area + stride * (size_t)k++;
        bufs[i] = b;
        iov_init_buf(&r.child[i].qiov, b, (size_t)bytes);
        lim[i] = bytes;
        if (incomplete & (1u << i)) {
            int64_t l = quorum_vote_limit(s, i);
            lim[i] = l <= offset ? 0 : MIN(l - offset, bytes);
            if (!lim[i]) {
                r.mask &= ~(1u << i);   /* nothing it could say counts */
            }
        }
    }
    quorum_run(&r);

    for (int i = 0; i < s->n; i++) {
        errs[i] = r.child[i].ret < 0 ? r.child[i].ret : 0;
        if (!(r.mask & (1u << i))) {
            continue;
        }
        quorum_count(s, i, QC_READS);
        if (errs[i]) {
            quorum_count(s, i, QC_ERRORS);
            quorum_child_event(bs, i, "QUORUM_REPORT_BAD", "read", offset, bytes, errs[i], NULL);
        }
    }
    int ret = 0;
    if (!incomplete) {
        ret = quorum_vote_segment(bs, bufs, errs, offset, bytes, 0, bytes, qiov, qiov_offset,
                                  direct != NULL);
    } else {
        /* Segments between the limits, each voted by the children whose
         * data counts throughout it. */
        for (int64_t pos = 0; pos < bytes && ret == 0;) {
            int64_t end = bytes;
            int seg[QUORUM_MAX_CHILDREN];
            for (int i = 0; i < s->n; i++) {
                if (lim[i] > pos && lim[i] < end) {
                    end = lim[i];
                }
                seg[i] = lim[i] > pos ? errs[i] : QUORUM_NO_VOTE;
            }
            ret = quorum_vote_segment(bs, bufs, seg, offset, bytes, pos, end, qiov, qiov_offset,
                                      direct != NULL);
            pos = end;
        }
    }
    quorum_buf_put(&qb);
    return ret;
}

/* For the rebuild (quorum-rebuild.c): no counters, no events, no vote. */
void coroutine_fn quorum_read_children(BlockDriverState *bs, uint32_t mask, int64_t offset,
                                       int64_t bytes, uint8_t *const *bufs, int *errs)
{
    QuorumState *s = bs->opaque;
    QuorumReq r;
    quorum_req_init(&r, bs, QOP_READ, offset, bytes, NULL, 0, 0);
    r.mask &= mask;
    for (int i = 0; i < s->n; i++) {
        if (r.mask & (1u << i)) {
            iov_init_buf(&r.child[i].qiov, bufs[i], (size_t)bytes);
        }
    }
    quorum_run(&r);
    for (int i = 0; i < s->n; i++) {
        errs[i] = r.child[i].ret < 0 ? r.child[i].ret : 0;
    }
}

static int coroutine_fn quorum_read_fifo(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                         IOVector *qiov, size_t qiov_offset)
{
    QuorumState *s = bs->opaque;
    int ret = -EIO;
    for (int i = 0; i < s->n; i++) {
        if (offset + bytes > quorum_vote_limit(s, i)) {
            continue;           /* being rebuilt, not that far yet */
        }
        quorum_count(s, i, QC_READS);
        ret = bdrv_co_preadv_part(s->children[i], offset, bytes, qiov, qiov_offset, 0);
        if (ret >= 0) {
            return 0;
        }
        quorum_count(s, i, QC_ERRORS);
        quorum_child_event(bs, i, "QUORUM_REPORT_BAD", "read", offset, bytes, ret, NULL);
    }
    quorum_failure_event(bs, QOP_READ, offset, bytes, ret, NULL);
    return ret;
}

static int coroutine_fn quorum_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                         IOVector *qiov, size_t qiov_offset,
                                         BdrvRequestFlags flags)
{
    (void)flags;
    QuorumState *s = bs->opaque;
    if (s->read_pattern == QUORUM_READ_FIFO) {
        return quorum_read_fifo(bs, offset, bytes, qiov, qiov_offset);
    }
    return quorum_read_quorum(bs, offset, bytes, qiov, qiov_offset);
}

/* ---- writes, zeroes, discards, flushes ---- */

static int coroutine_fn quorum_multi(BlockDriverState *bs, QuorumOp op, int64_t offset,
                                     int64_t bytes, IOVector *qiov, size_t qiov_offset,
                                     BdrvRequestFlags flags)
{
    QuorumState *s = bs->opaque;
    QuorumReq r;
    QuorumWriteReg w;
    int errs[QUORUM_MAX_CHILDREN];
    quorum_req_init(&r, bs, op, offset, bytes, qiov, qiov_offset, flags);
    /* Data-changing requests and a rebuild's copy: see quorum-rebuild.c. */
    bool reg = op != QOP_FLUSH && quorum_write_begin(s, &w, offset, bytes);
    quorum_run(&r);
    if (reg) {
        quorum_write_end(s, &w);
    }

    bool enotsup = false;
    for (int i = 0; i < s->n; i++) {
        int ret = r.child[i].ret;
        /* A discard is advisory: a child that cannot discard did nothing
         * wrong.  A zero write that a child cannot do without a fallback
         * (NO_FALLBACK) fails as a whole, so the caller writes zeros to
         * every child instead of leaving that one different. */
        if (ret == -ENOTSUP && op == QOP_DISCARD) {
            ret = 0;
        }
        enotsup |= ret == -ENOTSUP && op == QOP_ZEROES;
        errs[i] = ret < 0 ? ret : 0;
        if (op != QOP_FLUSH) {
            quorum_count(s, i, QC_WRITES);
        }
        if (errs[i] && !enotsup) {
            quorum_count(s, i, QC_ERRORS);
            quorum_child_event(bs, i, "QUORUM_REPORT_BAD", op_names[op], offset, bytes, errs[i],
                               NULL);
        }
    }
    if (enotsup) {
        return -ENOTSUP;
    }
    if (quorum_successes(errs, s->n) >= s->threshold) {
        return 0;
    }
    int ret = quorum_most_common_error(errs, s->n);
    quorum_failure_event(bs, op, offset, bytes, ret, NULL);
    return ret;
}

static int coroutine_fn quorum_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                          IOVector *qiov, size_t qiov_offset,
                                          BdrvRequestFlags flags)
{
    return quorum_multi(bs, QOP_WRITE, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn quorum_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                                int64_t bytes, BdrvRequestFlags flags)
{
    return quorum_multi(bs, QOP_ZEROES, offset, bytes, NULL, 0, flags);
}

static int coroutine_fn quorum_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return quorum_multi(bs, QOP_DISCARD, offset, bytes, NULL, 0, 0);
}

static int coroutine_fn quorum_co_flush(BlockDriverState *bs)
{
    return quorum_multi(bs, QOP_FLUSH, 0, 0, NULL, 0, 0);
}

/* ---- block status ---- */

/* Zero only where every child says zero; data (without an offset: no one
 * child is the data) otherwise.  A child that cannot tell counts as data. */
static int coroutine_fn quorum_co_block_status(BlockDriverState *bs, bool want_zero,
                                               int64_t offset, int64_t bytes, int64_t *pnum,
                                               int64_t *map, BlockDriverState **file)
{
    (void)want_zero;
    QuorumState *s = bs->opaque;
    int64_t zero = bytes, data = 0;
    for (int i = 0; i < s->n; i++) {
        int64_t n = 0;
        int ret = bdrv_co_block_status_above(s->children[i]->bs, NULL, offset, bytes, &n, NULL,
                                             NULL, NULL);
        if (ret < 0 || n <= 0) {
            data = bytes;
            continue;
        }
        if (ret & BDRV_BLOCK_ZERO) {
            zero = MIN(zero, n);
        } else {
            /* At least one child has data in [offset, offset + n): the
             * quorum has data there, whatever the others say. */
            data = MAX(data, n);
        }
    }
    *map = 0;
    *file = NULL;
    if (data) {
        *pnum = data;
        return BDRV_BLOCK_DATA;
    }
    *pnum = zero;
    return BDRV_BLOCK_ZERO;
}

/* ---- open, close, info ---- */

static int quorum_count_children(const OptDict *options)
{
    int n = 0;
    char key[32];
    for (;; n++) {
        snprintf(key, sizeof(key), "children.%d.", n);
        if (!optdict_has_prefix(options, key)) {
            return n;
        }
    }
}

static int quorum_parse(QuorumState *s, OptDict *options, int flags, Error **errp)
{
    s->n = quorum_count_children(options);
    if (s->n == 0) {
        error_setg(errp, "quorum: no children given (children.0.*, children.1.*, ...)");
        return -EINVAL;
    }
    if (s->n > QUORUM_MAX_CHILDREN) {
        error_setg(errp, "quorum: %d children given, at most %d are supported", s->n,
                   QUORUM_MAX_CHILDREN);
        return -EINVAL;
    }
    if (!optdict_has(options, "vote-threshold")) {
        error_setg(errp, "quorum: vote-threshold is required: how many of the %d children "
                   "must agree (1..%d)", s->n, s->n);
        return -EINVAL;
    }
    int64_t t;
    if (optdict_take_int(options, "vote-threshold", 0, &t, errp) < 0) {
        error_prepend(errp, "quorum: ");
        return -EINVAL;
    }
    if (t < 1 || t > s->n) {
        error_setg(errp, "quorum: vote-threshold=%" PRId64 " is out of range: it must be "
                   "between 1 and the number of children (%d)", t, s->n);
        return -EINVAL;
    }
    s->threshold = (int)t;
    int rp = optdict_take_enum(options, "read-pattern", read_patterns, QUORUM_READ_QUORUM, errp);
    if (rp < 0) {
        error_prepend(errp, "quorum: ");
        return -EINVAL;
    }
    s->read_pattern = (QuorumReadPattern)rp;
    if (optdict_take_bool(options, "rewrite-corrupted", false, &s->rewrite_corrupted, errp) < 0 ||
        optdict_take_bool(options, "blkverify", false, &s->blkverify, errp) < 0) {
        error_prepend(errp, "quorum: ");
        return -EINVAL;
    }
    if (s->blkverify && s->n != 2) {
        error_setg(errp, "quorum: blkverify=on needs exactly 2 children, got %d", s->n);
        return -EINVAL;
    }
    if (s->blkverify && s->threshold != 2) {
        error_setg(errp, "quorum: blkverify=on needs vote-threshold=2, got %d", s->threshold);
        return -EINVAL;
    }
    if (s->blkverify && s->read_pattern == QUORUM_READ_FIFO) {
        error_setg(errp, "quorum: blkverify=on compares both children's data, but "
                   "read-pattern=fifo reads only one");
        return -EINVAL;
    }
    if (s->rewrite_corrupted && s->blkverify) {
        error_setg(errp, "quorum: rewrite-corrupted=on cannot be used with blkverify=on "
                   "(a mismatch fails the read: there is no majority to rewrite from)");
        return -EINVAL;
    }
    if (s->rewrite_corrupted && s->read_pattern == QUORUM_READ_FIFO) {
        error_setg(errp, "quorum: rewrite-corrupted=on needs read-pattern=quorum (fifo reads "
                   "one child, so nothing is compared or rewritten)");
        return -EINVAL;
    }
    if (s->rewrite_corrupted && !(flags & BDRV_O_RDWR)) {
        error_setg(errp, "quorum: rewrite-corrupted=on needs writable children, but the "
                   "quorum is opened read-only");
        return -EINVAL;
    }
    return 0;
}

/* What `img info` and events show as the quorum's file name: QEMU's json:
 * form, with each child given by its own file name. */
static void quorum_set_filename(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    size_t cap = sizeof(bs->filename), o = 0;
    o += (size_t)snprintf(bs->filename, cap, "json:{\"driver\": \"quorum\", \"vote-threshold\": "
                          "%d, \"children\": [", s->threshold);
    for (int i = 0; i < s->n && o < cap; i++) {
        char esc[1024];
        bdrv_json_escape(child_label(s->children[i]->bs), esc, sizeof(esc));
        o += (size_t)snprintf(bs->filename + o, cap - o, "%s\"%s\"", i ? ", " : "", esc);
    }
    if (o < cap) {
        snprintf(bs->filename + o, cap - o, "]}");
    }
}

static void quorum_free(QuorumState *s)
{
    free(s->stats);
    s->stats = NULL;
}

/* A flag is native only if every child has it natively. */
static void quorum_refresh_flags(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    BdrvRequestFlags wf = BDRV_REQ_FUA, zf = BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP;
    for (int i = 0; i < s->n; i++) {
        wf &= s->children[i]->bs->supported_write_flags;
        zf &= s->children[i]->bs->supported_zero_flags;
    }
    bs->supported_write_flags = wf;
    bs->supported_zero_flags = zf;
}

static int quorum_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    QuorumState *s = bs->opaque;
    quorum_rebuild_init(s);
    int ret = quorum_parse(s, options, flags, errp);
    if (ret < 0) {
        return ret;
    }
    uint32_t rebuild = 0;
    for (int i = 0; i < s->n; i++) {
        char name[32];
        /* children.N.rebuild=on: the child's data is not complete (the
         * daemon records it for a child replaced or added and not yet
         * rebuilt, so a recovered daemon rebuilds it again from 0 instead
         * of letting it vote). */
        bool rb = false;
        snprintf(name, sizeof(name), "children.%d.rebuild", i);
        if (optdict_take_bool(options, name, false, &rb, errp) < 0) {
            error_prepend(errp, "quorum: ");
            return -EINVAL;
        }
        rebuild |= rb ? 1u << i : 0;
        snprintf(name, sizeof(name), "children.%d", i);
        s->children[i] = bdrv_open_child(NULL, options, name, bs, BDRV_CHILD_DATA, false, errp);
        if (!s->children[i]) {
            error_prepend(errp, "quorum: %s: ", name);
            return -EINVAL;
        }
    }
    /* children.5 with no children.4: numbered from 0 without gaps. */
    for (size_t k = 0; k < optdict_count(options); k++) {
        const char *key = optdict_key_at(options, k);
        if (!strncmp(key, "children.", 9)) {
            error_setg(errp, "quorum: option '%s': children are numbered 0, 1, 2, ... without "
                       "gaps, and %d were found", key, s->n);
            return -EINVAL;
        }
    }
    int64_t size0 = 0;
    for (int i = 0; i < s->n; i++) {
        BlockDriverState *c = s->children[i]->bs;
        int64_t len = bdrv_getlength(c);
        if (len < 0) {
            error_setg_errno(errp, (int)-len, "quorum: could not get the size of children.%d "
                             "('%s')", i, child_label(c));
            return (int)len;
        }
        if (i == 0) {
            size0 = len;
        } else if (len != size0) {
            error_setg(errp, "quorum: children.%d ('%s') is %" PRId64 " bytes but children.0 "
                       "('%s') is %" PRId64 ": all children must have the same size", i,
                       child_label(c), len, child_label(s->children[0]->bs), size0);
            return -EINVAL;
        }
    }
    quorum_refresh_flags(bs);

    size_t sz = THREAD_SLOTS * QUORUM_STATS_STRIDE * sizeof(uint64_t);
    s->stats = aligned_alloc(CACHE_LINE, ALIGN_UP(sz, CACHE_LINE));
    if (!s->stats) {
        error_setg(errp, "quorum: out of memory for the child counters");
        return -ENOMEM;
    }
    memset(s->stats, 0, sz);
    quorum_set_filename(bs);
    for (int i = 0; i < s->n; i++) {
        if (rebuild & (1u << i)) {
            quorum_rebuild_mark(bs, i);
        }
    }
    return 0;
}

static void quorum_close(BlockDriverState *bs)
{
    quorum_rebuild_cleanup(bs);
    quorum_free(bs->opaque);
}

/* ---- children replaced, added and removed on a live device ---- */

static int quorum_complete_children(QuorumState *s)
{
    return s->n - __builtin_popcount(__atomic_load_n(&s->incomplete, __ATOMIC_ACQUIRE));
}

static void quorum_zero_stats(QuorumState *s, int child)
{
    for (unsigned slot = 0; slot < THREAD_SLOTS; slot++) {
        for (int k = 0; k < QC__MAX; k++) {
            __atomic_store_n(quorum_stat_ptr(s, slot, child, k), 0, __ATOMIC_RELAXED);
        }
    }
}

static void quorum_after_change(BlockDriverState *bs)
{
    quorum_refresh_flags(bs);
    quorum_set_filename(bs);
}

/* Why a change is refused, before anything changes. */
static int quorum_change_check(BlockDriverState *bs, BdrvChildChange op, int index,
                               BlockDriverState *new_bs, Error **errp)
{
    QuorumState *s = bs->opaque;
    const char *q = bdrv_get_node_name(bs);
    bool complete = index >= 0 && index < s->n && !(s->incomplete & (1u << index));
    int after = quorum_complete_children(s) - (complete ? 1 : 0);
    if (s->blkverify) {
        error_setg(errp, "quorum '%s': blkverify=on compares exactly 2 children: they cannot be "
                   "replaced, added or removed", q);
        return -ENOTSUP;
    }
    if (bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        error_setg(errp, "quorum '%s' is read-only: a new child could not be written, nor "
                   "rebuilt", q);
        return -EROFS;
    }
    if (op != BDRV_CHILD_ADD && (index < 0 || index >= s->n)) {
        error_setg(errp, "quorum '%s' has no children.%d (its children are 0..%d)", q, index,
                   s->n - 1);
        return -EINVAL;
    }
    switch (op) {
    case BDRV_CHILD_REPLACE:
        if (complete && after < s->threshold) {
            error_setg(errp, "quorum '%s': replacing children.%d would leave %d complete "
                       "children, fewer than vote-threshold=%d: until the new one is rebuilt "
                       "no read could reach the threshold, and the rebuild could not read a "
                       "majority to copy", q, index, after, s->threshold);
            return -EINVAL;
        }
        break;
    case BDRV_CHILD_ADD:
        if (index != s->n) {
            error_setg(errp, "quorum '%s': children are numbered without gaps: a new one is "
                       "children.%d, not children.%d", q, s->n, index);
            return -EINVAL;
        }
        if (s->n == QUORUM_MAX_CHILDREN) {
            error_setg(errp, "quorum '%s' has %d children, the most it can have", q, s->n);
            return -EINVAL;
        }
        break;
    case BDRV_CHILD_REMOVE:
        if (s->n - 1 < s->threshold) {
            error_setg(errp, "quorum '%s': removing children.%d would leave %d children, fewer "
                       "than vote-threshold=%d: no read or write could reach it", q, index,
                       s->n - 1, s->threshold);
            return -EINVAL;
        }
        if (complete && after < s->threshold) {
            error_setg(errp, "quorum '%s': removing children.%d would leave %d complete "
                       "children (the others are not rebuilt yet), fewer than "
                       "vote-threshold=%d", q, index, after, s->threshold);
            return -EINVAL;
        }
        break;
    }
    if (new_bs) {
        int64_t len = bdrv_getlength(new_bs), want = bdrv_getlength(s->children[0]->bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len, "quorum '%s': could not get the size of the new "
                             "child ('%s')", q, child_label(new_bs));
            return (int)len;
        }
        if (len != want) {
            error_setg(errp, "quorum '%s': the new child ('%s') is %" PRId64 " bytes but the "
                       "children are %" PRId64 ": all children must have the same size", q,
                       child_label(new_bs), len, want);
            return -EINVAL;
        }
        if (new_bs->read_only || !(new_bs->open_flags & BDRV_O_RDWR)) {
            error_setg(errp, "quorum '%s': the new child ('%s') is read-only", q,
                       child_label(new_bs));
            return -EROFS;
        }
    }
    return 0;
}

/*
 * Only the child that goes or comes is drained: a drained section of it
 * quiesces the quorum and the users above (new requests wait at the root,
 * those in flight finish), which is what changing s->children needs, while
 * the other children are neither drained nor told (their background work
 * goes on) and the slow parts (opening the new node before, the rebuild
 * after) run while the device serves.  The pause is one round of requests
 * in flight.
 */
static int quorum_change_child(BlockDriverState *bs, BdrvChildChange op, int index,
                               BlockDriverState *new_bs, Error **errp)
{
    QuorumState *s = bs->opaque;
    if (op == BDRV_CHILD_ADD && index < 0) {
        index = s->n;
    }
    int ret = quorum_change_check(bs, op, index, new_bs, errp);
    if (ret < 0) {
        return ret;
    }
    char name[32];
    snprintf(name, sizeof(name), "children.%d", index);

    if (op == BDRV_CHILD_REPLACE) {
        BdrvChild *c = s->children[index];
        BlockDriverState *old = c->bs;
        bdrv_ref(old);
        bdrv_drained_begin(old);
        quorum_rebuild_wait_idle(bs);
        /* The new node's own section keeps the quorum quiesced after the
         * swap moves the old one's away, until the state below is set. */
        bdrv_drained_begin(new_bs);
        QuorumRebuild saved = s->rb[index];
        uint32_t saved_inc = s->incomplete;
        /* Marked before the swap: no request runs now, and none may see
         * the new child without its mark. */
        quorum_rebuild_mark(bs, index);
        ret = bdrv_replace_child_bs(c, new_bs, errp);
        if (ret < 0) {
            s->rb[index] = saved;
            __atomic_store_n(&s->incomplete, saved_inc, __ATOMIC_RELEASE);
        } else {
            quorum_zero_stats(s, index);
            quorum_after_change(bs);
        }
        bdrv_drained_end(new_bs);
        bdrv_drained_end(old);
        bdrv_unref(old);
        return ret < 0 ? ret : index;
    }

    if (op == BDRV_CHILD_ADD) {
        bdrv_ref(new_bs);
        BdrvChild *c = bdrv_attach_child(bs, new_bs, name, BDRV_CHILD_DATA, errp);
        if (!c) {
            error_prepend(errp, "quorum '%s': %s: ", bdrv_get_node_name(bs), name);
            return -EINVAL;
        }
        /* The edge is there but no request uses it (s->n is unchanged):
         * now wait for those in flight. */
        bdrv_drained_begin(new_bs);
        quorum_rebuild_wait_idle(bs);
        quorum_zero_stats(s, index);
        s->children[index] = c;
        s->rb[index] = (QuorumRebuild){ 0 };
        quorum_rebuild_mark(bs, index);
        s->n++;
        quorum_after_change(bs);
        bdrv_refresh_limits_upward(bs);
        bdrv_drained_end(new_bs);
        return index;
    }

    /* Remove.  The limits stay what they were: they held for the child
     * that goes too, so they are stricter than needed, never wrong. */
    BdrvChild *c = s->children[index];
    BlockDriverState *old = c->bs;
    bdrv_ref(old);
    bdrv_drained_begin(old);
    quorum_rebuild_wait_idle(bs);
    for (unsigned slot = 0; slot < THREAD_SLOTS; slot++) {
        for (int j = index; j < s->n - 1; j++) {
            for (int k = 0; k < QC__MAX; k++) {
                *quorum_stat_ptr(s, slot, j, k) = *quorum_stat_ptr(s, slot, j + 1, k);
            }
        }
    }
    quorum_zero_stats(s, s->n - 1);
    uint32_t inc = s->incomplete, low = (1u << index) - 1;
    for (int j = index; j < s->n - 1; j++) {
        BdrvChild *e = s->children[j + 1];
        s->children[j] = e;
        s->rb[j] = s->rb[j + 1];
        char *nn = NULL;
        if (asprintf(&nn, "children.%d", j) < 0) {
            abort();
        }
        free(e->name);
        e->name = nn;
        e->index = j;
    }
    s->rb[s->n - 1] = (QuorumRebuild){ 0 };
    __atomic_store_n(&s->incomplete, (inc & low) | ((inc >> 1) & ~low), __ATOMIC_RELEASE);
    if (s->job_child == index) {
        s->job_child = -1;
    } else if (s->job_child > index) {
        s->job_child--;
    }
    s->n--;
    quorum_after_change(bs);
    /* Detaching ends what old's section passed up: requests go on from
     * here, over the children that stay. */
    bdrv_unref_child(bs, c);
    bdrv_drained_end(old);
    bdrv_unref(old);
    return index;
}

static uint32_t quorum_incomplete_children(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    return __atomic_load_n(&s->incomplete, __ATOMIC_ACQUIRE);
}

static int64_t quorum_getlength(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    return bdrv_getlength(s->children[0]->bs);
}

static int quorum_has_zero_init(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    for (int i = 0; i < s->n; i++) {
        if (!bdrv_has_zero_init(s->children[i]->bs)) {
            return 0;
        }
    }
    return 1;
}

static void quorum_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    QuorumState *s = bs->opaque;
    image_info_add_int(info, "vote-threshold", s->threshold);
    image_info_add(info, "read-pattern", "%s", read_patterns[s->read_pattern]);
    image_info_add_bool(info, "rewrite-corrupted", s->rewrite_corrupted);
    image_info_add_bool(info, "blkverify", s->blkverify);
    image_info_add_int(info, "children", s->n);
    for (int i = 0; i < s->n; i++) {
        BlockDriverState *c = s->children[i]->bs;
        char key[64];
        snprintf(key, sizeof(key), "children.%d.file", i);
        image_info_add(info, key, "%s", c->filename);
        snprintf(key, sizeof(key), "children.%d.format", i);
        image_info_add(info, key, "%s", bdrv_get_format_name(c));
        snprintf(key, sizeof(key), "children.%d.node", i);
        image_info_add(info, key, "%s", bdrv_get_node_name(c));
    }
}

/* Per child, for `ublkd list`: what the child has served and what the vote
 * found wrong with it. */
static void quorum_get_counters(BlockDriverState *bs, ImageSpecificInfo *out)
{
    QuorumState *s = bs->opaque;
    for (int i = 0; i < s->n; i++) {
        for (int k = 0; k < QC__MAX; k++) {
            char key[64];
            snprintf(key, sizeof(key), "children.%d.%s", i, qc_names[k]);
            image_info_add_int(out, key, (int64_t)quorum_stat(s, i, k));
        }
    }
    quorum_rebuild_counters(bs, out);
}

const BlockDriver bdrv_quorum = {
    .format_name = "quorum",
    .instance_size = sizeof(QuorumState),
    .needs_mapped_data = true,
    .open = quorum_open,
    .close = quorum_close,
    .co_preadv = quorum_co_preadv,
    .co_pwritev = quorum_co_pwritev,
    .co_pwrite_zeroes = quorum_co_pwrite_zeroes,
    .co_pdiscard = quorum_co_pdiscard,
    .co_flush = quorum_co_flush,
    .co_block_status = quorum_co_block_status,
    .getlength = quorum_getlength,
    .has_zero_init = quorum_has_zero_init,
    .get_specific_info = quorum_get_specific_info,
    .get_counters = quorum_get_counters,
    .change_child = quorum_change_child,
    .incomplete_children = quorum_incomplete_children,
    .drain_begin = quorum_drain_begin,
    .drain_end = quorum_drain_end,
    .supported_write_flags = BDRV_REQ_FUA,
    .supported_zero_flags = BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP,
};
