/*
 * blkdebug.c - a fault-injection filter for tests, after QEMU's blkdebug.
 *
 *   driver=blkdebug,image.filename=x.img,
 *       inject-error.0.event=read,inject-error.0.errno=5,
 *       inject-error.0.offset=4096,inject-error.0.once=on,align=4096
 *
 * Requests pass through to the "image" child (also accepted as "file")
 * unless a rule matches: same event, and its offset (or sector) inside the
 * request, or no offset given.  A matching rule fails the request with
 * -errno; a "once" rule fires for exactly one request, whichever thread it
 * is on.  align= and max-transfer= impose limits so tests can exercise the
 * request path's padding and splitting over any child.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "block-driver.h"

typedef enum {
    EV_READ, EV_WRITE, EV_FLUSH, EV_DISCARD, EV_WRITE_ZEROES, EV_BLOCK_STATUS,
} BlkdebugEvent;

static const char *const event_names[] = {
    "read", "write", "flush", "discard", "write-zeroes", "block-status", NULL,
};

#define BLKDEBUG_MAX_RULES 32

typedef struct InjectRule {
    BlkdebugEvent event;
    int error;          /* positive errno */
    int64_t offset;     /* -1: any request */
    bool once;
    bool fired;         /* atomic, once rules */
} InjectRule;

typedef struct BlkdebugState {
    InjectRule rules[BLKDEBUG_MAX_RULES];
    int nrules;
    uint64_t align;
    uint64_t max_transfer;
} BlkdebugState;

static int parse_rule(BlkdebugState *s, OptDict *opts, int n, Error **errp)
{
    char what[64];
    snprintf(what, sizeof(what), "blkdebug rule inject-error.%d", n);
    if (s->nrules == BLKDEBUG_MAX_RULES) {
        error_setg(errp, "blkdebug: too many inject-error rules (at most %d)",
                   BLKDEBUG_MAX_RULES);
        return -EINVAL;
    }
    InjectRule *r = &s->rules[s->nrules];
    if (!optdict_has(opts, "event")) {
        error_setg(errp, "blkdebug: inject-error.%d.event is required (one of read, write, "
                   "flush, discard, write-zeroes, block-status)", n);
        return -EINVAL;
    }
    int ev = optdict_take_enum(opts, "event", event_names, 0, errp);
    int64_t err, offset, sector;
    if (ev < 0 ||
        optdict_take_int(opts, "errno", EIO, &err, errp) < 0 ||
        optdict_take_int(opts, "offset", -1, &offset, errp) < 0 ||
        optdict_take_int(opts, "sector", -1, &sector, errp) < 0 ||
        optdict_take_bool(opts, "once", false, &r->once, errp) < 0) {
        error_prepend(errp, "blkdebug inject-error.%d: ", n);
        return -EINVAL;
    }
    if (err <= 0 || err > 4095) {
        error_setg(errp, "blkdebug: inject-error.%d.errno must be a positive errno value, "
                   "got %" PRId64, n, err);
        return -EINVAL;
    }
    if (offset >= 0 && sector >= 0) {
        error_setg(errp, "blkdebug: inject-error.%d: give offset or sector, not both", n);
        return -EINVAL;
    }
    if (optdict_check_empty(opts, what, errp) < 0) {
        return -EINVAL;
    }
    r->event = (BlkdebugEvent)ev;
    r->error = (int)err;
    r->offset = sector >= 0 ? sector * (int64_t)BDRV_SECTOR_SIZE : offset;
    s->nrules++;
    return 0;
}

static int blkdebug_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)flags;
    BlkdebugState *s = bs->opaque;
    char prefix[48];

    for (int n = 0;; n++) {
        snprintf(prefix, sizeof(prefix), "inject-error.%d.", n);
        if (!optdict_has_prefix(options, prefix)) {
            break;   /* rules are numbered from 0 without gaps; others are leftovers */
        }
        OptDict *rule = optdict_extract_prefix(options, prefix);
        int ret = parse_rule(s, rule, n, errp);
        optdict_free(rule);
        if (ret < 0) {
            return ret;
        }
    }
    if (optdict_take_size(options, "align", 0, &s->align, errp) < 0 ||
        optdict_take_size(options, "max-transfer", 0, &s->max_transfer, errp) < 0) {
        return -EINVAL;
    }
    if (s->align && (!IS_POW2(s->align) || s->align > 1 * GiB)) {
        error_setg(errp, "blkdebug: align (%" PRIu64 ") must be a power of two up to 1G",
                   s->align);
        return -EINVAL;
    }
    if (s->max_transfer && s->align && s->max_transfer % s->align) {
        error_setg(errp, "blkdebug: max-transfer (%" PRIu64 ") must be a multiple of "
                   "align (%" PRIu64 ")", s->max_transfer, s->align);
        return -EINVAL;
    }
    const char *child = optdict_has_prefix(options, "image.") ? "image" : "file";
    if (!bdrv_open_child(NULL, options, child, bs, BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, false, errp)) {
        return -EINVAL;
    }
    /* A filter grows when its child does: otherwise a format on top (vdi
     * appending blocks) would get -EIO for every write past the end. */
    bs->growable = bs->file->bs->growable;
    bs->supported_write_flags = bs->file->bs->supported_write_flags;
    bs->supported_zero_flags = bs->file->bs->supported_zero_flags;
    return 0;
}

static void blkdebug_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    BlkdebugState *s = bs->opaque;
    if (s->align) {
        bs->bl.request_alignment = MAX(bs->bl.request_alignment, (uint32_t)s->align);
    }
    if (s->max_transfer) {
        bs->bl.max_transfer = bs->bl.max_transfer ? MIN(bs->bl.max_transfer, s->max_transfer)
                                                  : s->max_transfer;
    }
}

/* -errno of the first matching rule, 0 to let the request through. */
static int inject(BlockDriverState *bs, BlkdebugEvent ev, int64_t offset, int64_t bytes)
{
    BlkdebugState *s = bs->opaque;
    for (int i = 0; i < s->nrules; i++) {
        InjectRule *r = &s->rules[i];
        if (r->event != ev) {
            continue;
        }
        if (r->offset >= 0 && ev != EV_FLUSH &&
            (r->offset < offset || r->offset >= offset + MAX(bytes, (int64_t)1))) {
            continue;
        }
        if (r->once) {
            bool expected = false;
            if (!__atomic_compare_exchange_n(&r->fired, &expected, true, false,
                                             __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
                continue;
            }
        }
        return -r->error;
    }
    return 0;
}

static int coroutine_fn blkdebug_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                           IOVector *qiov, size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    int ret = inject(bs, EV_READ, offset, bytes);
    return ret ? ret : bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                            IOVector *qiov, size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    int ret = inject(bs, EV_WRITE, offset, bytes);
    return ret ? ret : bdrv_co_pwritev_part(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                                  int64_t bytes, BdrvRequestFlags flags)
{
    int ret = inject(bs, EV_WRITE_ZEROES, offset, bytes);
    return ret ? ret : bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn blkdebug_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    int ret = inject(bs, EV_DISCARD, offset, bytes);
    return ret ? ret : bdrv_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn blkdebug_co_flush(BlockDriverState *bs)
{
    /* The core flushes the child after us. */
    return inject(bs, EV_FLUSH, 0, 0);
}

static int coroutine_fn blkdebug_co_block_status(BlockDriverState *bs, bool want_zero,
                                                 int64_t offset, int64_t bytes, int64_t *pnum,
                                                 int64_t *map, BlockDriverState **file)
{
    (void)want_zero;
    int ret = inject(bs, EV_BLOCK_STATUS, offset, bytes);
    if (ret) {
        return ret;
    }
    *pnum = bytes;
    *map = offset;
    *file = bs->file->bs;
    return BDRV_BLOCK_RAW | BDRV_BLOCK_OFFSET_VALID;
}

static int coroutine_fn blkdebug_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                             PreallocMode prealloc, BdrvRequestFlags flags,
                                             Error **errp)
{
    return bdrv_co_truncate(bs->file, offset, exact, prealloc, flags, errp);
}

static int64_t blkdebug_getlength(BlockDriverState *bs)
{
    return bdrv_getlength(bs->file->bs);
}

const BlockDriver bdrv_blkdebug = {
    .format_name = "blkdebug",
    .instance_size = sizeof(BlkdebugState),
    .is_filter = true,
    .open = blkdebug_open,
    .refresh_limits = blkdebug_refresh_limits,
    .co_preadv = blkdebug_co_preadv,
    .co_pwritev = blkdebug_co_pwritev,
    .co_pwrite_zeroes = blkdebug_co_pwrite_zeroes,
    .co_pdiscard = blkdebug_co_pdiscard,
    .co_flush_to_disk = blkdebug_co_flush,
    .co_block_status = blkdebug_co_block_status,
    .co_truncate = blkdebug_co_truncate,
    .getlength = blkdebug_getlength,
    .supported_write_flags = BDRV_REQ_FUA,
    .supported_zero_flags = BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK,
};
