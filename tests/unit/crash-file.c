/*
 * crash-file.c - the "crashfile" protocol (see crash-file.h): a current
 * image for reads, a durable image, and the operations in between.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "crash-file.h"
#include "test-util.h"

typedef enum { CF_WRITE, CF_ZERO } CfKind;

typedef struct CfOp {
    CfKind kind;
    int64_t offset, bytes;
    uint8_t *data;              /* CF_WRITE */
} CfOp;

typedef struct CfBuf {
    uint8_t *p;
    size_t len, cap;
} CfBuf;

typedef struct CrashFileState {
    CfBuf cur, durable;
    CfOp *pending;
    int npending, cap;
} CrashFileState;

/* One simulated machine: every crashfile node counts its operations on one
 * clock and freezes at the same crash (an image and its data file). */
static struct {
    int64_t ops;                /* operations seen */
    int64_t crash_at;           /* op number that crashes; 0 none */
    bool crashed;
} cf_machine;

/* Handed from crash_file_new to open (nodes are opened on one thread). */
static const CfBuf *cf_pending_init;

static CrashFileState *cfs(BlockDriverState *bs)
{
    return bs->opaque;
}

static void buf_grow(CfBuf *b, size_t len)
{
    if (len <= b->len) {
        return;
    }
    if (len > b->cap) {
        /* geometric: a file that grows by appends is not copied each time */
        b->cap = MAX(len, b->cap + b->cap / 2);
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memset(b->p + b->len, 0, len - b->len);
    b->len = len;
}

static void buf_apply(CfBuf *b, const CfOp *op, int64_t from, int64_t to)
{
    buf_grow(b, (size_t)(op->offset + to));
    if (op->kind == CF_WRITE) {
        memcpy(b->p + op->offset + from, op->data + from, (size_t)(to - from));
    } else {
        memset(b->p + op->offset + from, 0, (size_t)(to - from));
    }
}

static void cf_wake(void *opaque)
{
    aio_co_wake(opaque);
}

static void coroutine_fn cf_yield(void)
{
    aio_bh_schedule_oneshot(aio_current(), cf_wake, co_self());
    co_yield();
}

/* Count an operation; the crash point freezes the durable image. */
static int64_t cf_count(CrashFileState *s)
{
    (void)s;
    int64_t n = ++cf_machine.ops;
    if (cf_machine.crash_at && n == cf_machine.crash_at) {
        cf_machine.crashed = true;
    }
    return n;
}

/* Whether an operation numbered n may still reach the disk. */
static bool cf_before_crash(CrashFileState *s, int64_t n)
{
    (void)s;
    return !cf_machine.crash_at || n < cf_machine.crash_at;
}

static int cf_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    CrashFileState *s = cfs(bs);
    (void)options; (void)flags; (void)errp;
    const CfBuf *init = cf_pending_init;
    buf_grow(&s->cur, init->len);
    memcpy(s->cur.p, init->p, init->len);
    buf_grow(&s->durable, init->len);
    memcpy(s->durable.p, init->p, init->len);
    bs->growable = true;
    bdrv_set_total_bytes(bs, (int64_t)s->cur.len);
    return 0;
}

static void cf_close(BlockDriverState *bs)
{
    CrashFileState *s = cfs(bs);
    for (int i = 0; i < s->npending; i++) {
        free(s->pending[i].data);
    }
    free(s->pending);
    free(s->cur.p);
    free(s->durable.p);
}

static int coroutine_fn cf_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    CrashFileState *s = cfs(bs);
    (void)flags;
    cf_yield();
    int64_t have = offset < (int64_t)s->cur.len ? MIN(bytes, (int64_t)s->cur.len - offset) : 0;
    if (have > 0) {
        iov_from_buf(qiov, qiov_offset, s->cur.p + offset, (size_t)have);
    } else {
        have = 0;
    }
    iov_memset(qiov, qiov_offset + (size_t)have, 0, (size_t)(bytes - have));
    return 0;
}

/* A write, zeroes or discard: acts on the current image after a yield and
 * is recorded as pending if it started before the crash. */
static int coroutine_fn cf_modify(BlockDriverState *bs, CfKind kind, int64_t offset,
                                  int64_t bytes, IOVector *qiov, size_t qiov_offset)
{
    CrashFileState *s = cfs(bs);
    int64_t n = cf_count(s);
    CfOp op = { kind, offset, bytes, NULL };

    cf_yield();
    if (kind == CF_WRITE) {
        op.data = malloc((size_t)bytes);
        assert_non_null(op.data);
        iov_to_buf(qiov, qiov_offset, op.data, (size_t)bytes);
    }
    buf_apply(&s->cur, &op, 0, bytes);
    if (s->cur.len > (size_t)bdrv_getlength(bs)) {
        bdrv_set_total_bytes(bs, (int64_t)s->cur.len);
    }
    if (!cf_before_crash(s, n)) {
        free(op.data);
        return 0;
    }
    if (s->npending == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->pending = realloc(s->pending, (size_t)s->cap * sizeof(*s->pending));
        assert_non_null(s->pending);
    }
    s->pending[s->npending++] = op;
    return 0;
}

static int coroutine_fn cf_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)flags;
    return cf_modify(bs, CF_WRITE, offset, bytes, qiov, qiov_offset);
}

static int coroutine_fn cf_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                         BdrvRequestFlags flags)
{
    (void)flags;
    return cf_modify(bs, CF_ZERO, offset, bytes, NULL, 0);
}

/* A discarded range reads as zeros here; on a crash it may or may not be. */
static int coroutine_fn cf_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return cf_modify(bs, CF_ZERO, offset, bytes, NULL, 0);
}

/* What completed before the flush started becomes durable when it ends,
 * unless the disk froze meanwhile. */
static int coroutine_fn cf_flush(BlockDriverState *bs)
{
    CrashFileState *s = cfs(bs);
    int64_t n = cf_count(s);
    int covered = s->npending;

    cf_yield();
    if (!cf_before_crash(s, n) || cf_machine.crashed) {
        return 0;
    }
    for (int i = 0; i < covered; i++) {
        buf_apply(&s->durable, &s->pending[i], 0, s->pending[i].bytes);
        free(s->pending[i].data);
    }
    memmove(s->pending, s->pending + covered, (size_t)(s->npending - covered) * sizeof(CfOp));
    s->npending -= covered;
    return 0;
}

static int64_t cf_getlength(BlockDriverState *bs)
{
    return (int64_t)cfs(bs)->cur.len;
}

static BlockDriver crash_file_drv = {
    .format_name = "crashfile",
    .instance_size = sizeof(CrashFileState),
    .open = cf_open,
    .close = cf_close,
    .co_preadv = cf_preadv,
    .co_pwritev = cf_pwritev,
    .co_pwrite_zeroes = cf_pwrite_zeroes,
    .co_pdiscard = cf_pdiscard,
    .co_flush_to_disk = cf_flush,
    .getlength = cf_getlength,
};

BlockDriverState *crash_file_new(const char *node_name, const void *data, size_t len)
{
    static bool registered;
    Error *err = NULL;
    if (!registered) {
        bdrv_register(&crash_file_drv);
        registered = true;
    }
    CfBuf init = { (uint8_t *)data, len, len };
    cf_pending_init = &init;
    BlockDriverState *bs = bdrv_new_open_driver(&crash_file_drv, node_name, BDRV_O_RDWR, NULL,
                                                &err);
    cf_pending_init = NULL;
    if (!bs) {
        fail_msg("crash_file_new: %s", err ? error_get_pretty(err) : "failed");
    }
    bs->growable = true;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    return bs;
}

void crash_file_arm(BlockDriverState *bs, int64_t nth)
{
    (void)bs;
    cf_machine.crash_at = nth ? cf_machine.ops + nth : 0;
    cf_machine.crashed = false;
}

bool crash_file_crashed(BlockDriverState *bs)
{
    (void)bs;
    return cf_machine.crashed;
}

int64_t crash_file_ops(BlockDriverState *bs)
{
    (void)bs;
    return cf_machine.ops;
}

int crash_file_pending(BlockDriverState *bs)
{
    return cfs(bs)->npending;
}

static uint64_t cf_rand(uint64_t *x)
{
    /* splitmix64 */
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static CfBuf durable_copy(CrashFileState *s)
{
    CfBuf out = { NULL, 0, 0 };
    buf_grow(&out, s->durable.len ? s->durable.len : 1);
    out.len = s->durable.len;
    memcpy(out.p, s->durable.p, s->durable.len);
    return out;
}

uint8_t *crash_file_persisted_if(BlockDriverState *bs,
                                 bool (*keep)(int64_t offset, int64_t bytes, void *opaque),
                                 void *opaque, size_t *len)
{
    CrashFileState *s = cfs(bs);
    CfBuf out = durable_copy(s);
    for (int i = 0; i < s->npending; i++) {
        if (keep(s->pending[i].offset, s->pending[i].bytes, opaque)) {
            buf_apply(&out, &s->pending[i], 0, s->pending[i].bytes);
        }
    }
    *len = out.len;
    return out.p;
}

uint8_t *crash_file_persisted(BlockDriverState *bs, uint64_t seed, int keep_pct, int torn_pct,
                              size_t *len)
{
    CrashFileState *s = cfs(bs);
    CfBuf out = durable_copy(s);
    uint64_t rng = seed;

    for (int i = 0; i < s->npending; i++) {
        const CfOp *op = &s->pending[i];
        if ((int)(cf_rand(&rng) % 100) >= keep_pct) {
            continue;
        }
        if ((int)(cf_rand(&rng) % 100) >= torn_pct || op->bytes <= 512) {
            buf_apply(&out, op, 0, op->bytes);
            continue;
        }
        /* Torn: each sector (as the file's sectors fall) made it or not;
         * the file's length did grow if the fs logged it. */
        buf_grow(&out, (size_t)(op->offset + op->bytes));
        int64_t pos = 0;
        while (pos < op->bytes) {
            int64_t next = MIN(op->bytes, ((op->offset + pos) / 512 + 1) * 512 - op->offset);
            if (cf_rand(&rng) & 1) {
                buf_apply(&out, op, pos, next);
            }
            pos = next;
        }
    }
    *len = out.len;
    return out.p;
}

const uint8_t *crash_file_current(BlockDriverState *bs, size_t *len)
{
    *len = cfs(bs)->cur.len;
    return cfs(bs)->cur.p;
}
