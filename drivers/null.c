/*
 * null.c - the "null" protocol (QEMU's null-co): a device of a given size
 * that stores nothing.  Reads return zeros (read-zeroes=on, the default) or
 * leave the buffer as it is (read-zeroes=off, to measure the block layer
 * without a memset), writes succeed, and latency-ns= delays every request on
 * the event loop's timer.  Used for overhead benchmarks and `ublkd add null`.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "aio.h"
#include "block-driver.h"
#include "iov-fixed.h"

typedef struct NullState {
    int64_t length;
    int64_t latency_ns;
    bool read_zeroes;
} NullState;

static int null_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)flags;
    NullState *s = bs->opaque;
    uint64_t size;
    int64_t latency;
    char *filename;

    /* "null-co://" and the like name the protocol, not a file. */
    optdict_take_str(options, "filename", NULL, &filename);
    free(filename);
    if (optdict_take_size(options, "size", 1 * GiB, &size, errp) < 0 ||
        optdict_take_int(options, "latency-ns", 0, &latency, errp) < 0 ||
        optdict_take_bool(options, "read-zeroes", true, &s->read_zeroes, errp) < 0) {
        return -EINVAL;
    }
    if (size > (uint64_t)BDRV_MAX_LENGTH) {
        error_setg(errp, "null: size %" PRIu64 " is too large (at most %" PRId64 ")", size,
                   (int64_t)BDRV_MAX_LENGTH);
        return -EINVAL;
    }
    if (latency < 0) {
        error_setg(errp, "null: latency-ns must be >= 0, got %" PRId64, latency);
        return -EINVAL;
    }
    s->length = (int64_t)size;
    s->latency_ns = latency;
    snprintf(bs->filename, sizeof(bs->filename), "null-co://");
    return 0;
}

static void coroutine_fn null_delay(NullState *s)
{
    if (s->latency_ns) {
        aio_co_sleep_ns(s->latency_ns);
    }
}

static int coroutine_fn null_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)offset;
    (void)flags;
    NullState *s = bs->opaque;
    null_delay(s);
    if (s->read_zeroes) {
        return iov_co_zero(qiov, qiov_offset, (size_t)bytes);
    }
    return 0;
}

static int coroutine_fn null_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                        IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)offset;
    (void)bytes;
    (void)qiov;
    (void)qiov_offset;
    (void)flags;
    null_delay(bs->opaque);
    return 0;
}

static int coroutine_fn null_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                              int64_t bytes, BdrvRequestFlags flags)
{
    (void)offset;
    (void)bytes;
    (void)flags;
    null_delay(bs->opaque);
    return 0;
}

static int coroutine_fn null_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return null_co_pwrite_zeroes(bs, offset, bytes, 0);
}

static int coroutine_fn null_co_flush(BlockDriverState *bs)
{
    null_delay(bs->opaque);
    return 0;
}

static int coroutine_fn null_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                                             int64_t bytes, int64_t *pnum, int64_t *map,
                                             BlockDriverState **file)
{
    (void)want_zero;
    NullState *s = bs->opaque;
    *pnum = bytes;
    *map = offset;
    *file = bs;
    return BDRV_BLOCK_OFFSET_VALID | (s->read_zeroes ? BDRV_BLOCK_ZERO : 0);
}

static int64_t null_getlength(BlockDriverState *bs)
{
    NullState *s = bs->opaque;
    return s->length;
}

static int null_has_zero_init(BlockDriverState *bs)
{
    NullState *s = bs->opaque;
    return s->read_zeroes;
}

static void null_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    NullState *s = bs->opaque;
    image_info_add_bool(info, "read-zeroes", s->read_zeroes);
    image_info_add_int(info, "latency-ns", s->latency_ns);
}

const BlockDriver bdrv_null = {
    .format_name = "null",
    .protocol_names = { "null-co", "null" },
    .instance_size = sizeof(NullState),
    .is_format = false,
    .open = null_open,
    .co_preadv = null_co_preadv,
    .co_pwritev = null_co_pwritev,
    .co_pwrite_zeroes = null_co_pwrite_zeroes,
    .co_pdiscard = null_co_pdiscard,
    .co_flush_to_disk = null_co_flush,
    .co_block_status = null_co_block_status,
    .getlength = null_getlength,
    .get_specific_info = null_get_specific_info,
    .has_zero_init = null_has_zero_init,
    .supported_write_flags = BDRV_REQ_FUA,
    .supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA | BDRV_REQ_NO_FALLBACK,
};
