/*
 * blkdebug.c - the fault-injection filter, after QEMU's blkdebug, grown so a
 * test can make one child of a quorum go bad mid-run.
 *
 *   driver=blkdebug,image.filename=x.img,seed=42,control=/run/x.rules,
 *       inject-error.0.event=read,inject-error.0.errno=5,
 *       inject-error.0.offset=4096,inject-error.0.once=on,
 *       inject-fault.0.event=read,inject-fault.0.action=corrupt,
 *       inject-fault.0.offset=1M,inject-fault.0.length=64k,inject-fault.0.probability=0.01,
 *       align=4096,max-transfer=64k
 *
 * Requests pass through to the "image" child (also accepted as "file").
 * Rules (rules are numbered from 0 without gaps in each family):
 *   inject-error.N.*  QEMU's family: the action is always "error".
 *   inject-fault.N.*  action=error|corrupt|delay|lost-write (required).
 * Keys of both families:
 *   event=read|write|flush|discard|write-zeroes|block-status (required)
 *   offset=B or sector=S     start of the range; without length or end,
 *                            the range is that one byte (QEMU's meaning:
 *                            requests containing it); neither: any offset
 *   length=B or end=B        the range is [start, start+length) / [start, end)
 *                            A request matches when it overlaps the range.
 *   once=on                  fire for one request only, whichever thread
 *   every=N                  fire on every Nth matching request
 *   probability=P            fire with probability P (0..1), drawn from the
 *                            rule's own stream of the node's seed= (default
 *                            fixed): the same requests in the same order
 *                            give the same pattern
 *   errno=E                  action=error (default 5, EIO)
 *   delay-ms=M               action=delay (required there, 1..600000)
 * Actions: error fails the request with -errno without reaching the child;
 * corrupt (event=read) reads from the child, then XORs with 0xff the first
 * byte of the overlap of request and range in each 512-byte sector (by
 * absolute offset) the overlap touches, so the read succeeds with wrong
 * data there and only there; delay waits delay-ms on a timer of the
 * request's AioContext (the coroutine yields: the thread serves others),
 * then goes on matching; lost-write (write, write-zeroes, discard) reports
 * success without reaching the child.  Delays add up; the first error,
 * corrupt or lost-write rule that fires decides the request.
 *
 * control=PATH (absolute) names a rules file, polled every 100 ms on the
 * node's home context and re-read when it changes: the same inject-*.N.*
 * keys and seed=, one per line or comma lists, '#' comments.  Its rules
 * apply after the option rules; each reload starts them afresh (counters,
 * once).  A missing or empty file is no rules; a bad one keeps the rules
 * in force and is reported on stderr (at open it fails the open).  See
 * drivers/blkdebug-rules.c for how a swap is safe against queue threads,
 * drivers/blkdebug-control.c for how the file is opened.
 *
 * align= and max-transfer= impose limits so tests can exercise the request
 * path's padding and splitting over any child.
 *
 * Zero copy: the filter does not set needs_mapped_data, so requests on
 * registered-buffer references pass through untouched.  Only a read that a
 * corrupt rule hits needs its bytes; if it holds references it is read
 * into a mapped bounce, corrupted there and copied out through the ring
 * (include/iov-fixed.h), since a ublk READ buffer cannot be read back.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "blkdebug-int.h"
#include "iov-fixed.h"

static void blkdebug_free_state(BlkdebugState *s)
{
    blkdebug_rules_free(s->rules);
    s->rules = NULL;
    blkdebug_rules_free(__atomic_exchange_n(&s->ctl, NULL, __ATOMIC_ACQ_REL));
    while (s->retired) {
        BlkdebugRuleSet *next = s->retired->retired_next;
        blkdebug_rules_free(s->retired);
        s->retired = next;
    }
    free(s->ctl_path);
    s->ctl_path = NULL;
}

static int blkdebug_open_opts(BlockDriverState *bs, OptDict *options, Error **errp)
{
    BlkdebugState *s = bs->opaque;
    int64_t seed;
    if (optdict_take_int(options, "seed", (int64_t)BLKDEBUG_DEFAULT_SEED, &seed, errp) < 0) {
        error_prepend(errp, "blkdebug: ");
        return -EINVAL;
    }
    s->seed = (uint64_t)seed;
    if (blkdebug_parse_rules(options, s->seed, &s->rules, errp) < 0) {
        return -EINVAL;
    }
    optdict_take_str(options, "control", NULL, &s->ctl_path);
    if (s->ctl_path && s->ctl_path[0] != '/') {
        error_setg(errp, "blkdebug: control must be an absolute path, got '%s'", s->ctl_path);
        return -EINVAL;
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
    return 0;
}

static int blkdebug_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)flags;
    BlkdebugState *s = bs->opaque;
    if (blkdebug_open_opts(bs, options, errp) < 0) {
        goto fail;
    }
    const char *child = optdict_has_prefix(options, "image.") ? "image" : "file";
    if (!bdrv_open_child(NULL, options, child, bs, BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, false, errp)) {
        goto fail;
    }
    if (s->ctl_path && blkdebug_control_start(bs, errp) < 0) {
        goto fail;   /* the core detaches the child */
    }
    /* A filter grows when its child does: otherwise a format on top (vdi
     * appending blocks) would get -EIO for every write past the end. */
    bs->growable = bs->file->bs->growable;
    bs->supported_write_flags = bs->file->bs->supported_write_flags;
    bs->supported_zero_flags = bs->file->bs->supported_zero_flags;
    return 0;

fail:
    blkdebug_free_state(s);
    return -EINVAL;
}

static void blkdebug_close(BlockDriverState *bs)
{
    blkdebug_control_stop(bs);
    blkdebug_free_state(bs->opaque);
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

/*
 * Apply the rules to a request: the delay, if any, then the deciding
 * action.  Returns 0 to let the request through, 1 to report success
 * without doing it (lost write), -errno to fail it; *corrupt is set for a
 * corrupt hit (reads), with the rule's range in *hit.
 */
static int coroutine_fn inject(BlockDriverState *bs, BlkdebugEvent ev, int64_t offset,
                               int64_t bytes, BlkdebugHit *hit)
{
    if (likely(!blkdebug_match(bs->opaque, ev, offset, bytes, hit))) {
        hit->action = BD_ACT_NONE;
        return 0;
    }
    if (hit->delay_ns) {
        aio_co_sleep_ns(hit->delay_ns);
    }
    switch (hit->action) {
    case BD_ACT_ERROR:
        return -hit->error;
    case BD_ACT_LOST_WRITE:
        return 1;
    default:
        return 0;
    }
}

/* XOR 0xff into the first byte of [lo, hi) in each 512-byte sector it
 * touches; q holds the request's bytes from offset, mapped. */
static void corrupt_bytes(IOVector *q, size_t qoff, int64_t offset, int64_t lo, int64_t hi)
{
    for (int64_t pos = lo; pos < hi;
         pos = ALIGN_DOWN(pos, (int64_t)BDRV_SECTOR_SIZE) + BDRV_SECTOR_SIZE) {
        uint8_t b;
        size_t at = qoff + (size_t)(pos - offset);
        iov_to_buf(q, at, &b, 1);
        b ^= 0xff;
        iov_from_buf(q, at, &b, 1);
    }
}

static int coroutine_fn corrupt_read(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                     IOVector *qiov, size_t qiov_offset,
                                     BdrvRequestFlags flags, const BlkdebugHit *hit)
{
    int64_t lo = MAX(offset, hit->start), hi = MIN(offset + bytes, hit->end);
    if (!iov_has_reg(qiov, qiov_offset, (size_t)bytes)) {
        int ret = bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset, flags);
        if (ret == 0) {
            corrupt_bytes(qiov, qiov_offset, offset, lo, hi);
        }
        return ret;
    }
    BounceBuf bounce;
    void *buf = bdrv_bounce_get(bs, (size_t)bytes, &bounce);
    if (!buf) {
        return -ENOMEM;
    }
    IOVector local;
    iov_init_buf(&local, buf, (size_t)bytes);
    int ret = bdrv_co_preadv_part(bs->file, offset, bytes, &local, 0, flags);
    if (ret == 0) {
        corrupt_bytes(&local, 0, offset, lo, hi);
        ret = iov_co_from_buf(qiov, qiov_offset, buf, (size_t)bytes);
    }
    bdrv_bounce_put(&bounce);
    return ret;
}

static int coroutine_fn blkdebug_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                           IOVector *qiov, size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    BlkdebugHit hit;
    int ret = inject(bs, BD_EV_READ, offset, bytes, &hit);
    if (ret) {
        return ret;
    }
    if (hit.action == BD_ACT_CORRUPT) {
        return corrupt_read(bs, offset, bytes, qiov, qiov_offset, flags, &hit);
    }
    return bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                            IOVector *qiov, size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    BlkdebugHit hit;
    int ret = inject(bs, BD_EV_WRITE, offset, bytes, &hit);
    if (ret) {
        return ret > 0 ? 0 : ret;
    }
    return bdrv_co_pwritev_part(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn blkdebug_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                                  int64_t bytes, BdrvRequestFlags flags)
{
    BlkdebugHit hit;
    int ret = inject(bs, BD_EV_WRITE_ZEROES, offset, bytes, &hit);
    if (ret) {
        return ret > 0 ? 0 : ret;
    }
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn blkdebug_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    BlkdebugHit hit;
    int ret = inject(bs, BD_EV_DISCARD, offset, bytes, &hit);
    if (ret) {
        return ret > 0 ? 0 : ret;
    }
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn blkdebug_co_flush(BlockDriverState *bs)
{
    /* The core flushes the child after us. */
    BlkdebugHit hit;
    return inject(bs, BD_EV_FLUSH, 0, 0, &hit);
}

static int coroutine_fn blkdebug_co_block_status(BlockDriverState *bs, bool want_zero,
                                                 int64_t offset, int64_t bytes, int64_t *pnum,
                                                 int64_t *map, BlockDriverState **file)
{
    (void)want_zero;
    BlkdebugHit hit;
    int ret = inject(bs, BD_EV_BLOCK_STATUS, offset, bytes, &hit);
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
    .close = blkdebug_close,
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
