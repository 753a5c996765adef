/*
 * raw.c - the "raw" format: the image is the file, optionally a window of it
 * (offset=, size=), e.g. a partition inside a disk image.
 *
 * Every request is forwarded to the "file" child with the window's offset
 * added; the request path of the child does the real work.  When the format
 * was probed rather than given, a guest could write another format's header
 * into sector 0 and the next open would probe that format instead (and
 * follow its backing file: a host file read).  So a probed raw node refuses
 * such writes with -EPERM, as QEMU does.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-driver.h"
#include "iov-fixed.h"

typedef struct RawState {
    uint64_t offset;
    uint64_t size;
    bool has_size;
} RawState;

static int raw_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    (void)buf;
    (void)buf_size;
    (void)filename;
    return 1;   /* anything is raw; every real format scores higher */
}

static int raw_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)flags;
    RawState *s = bs->opaque;
    s->has_size = optdict_has(options, "size");
    if (optdict_take_size(options, "offset", 0, &s->offset, errp) < 0 ||
        optdict_take_size(options, "size", 0, &s->size, errp) < 0) {
        return -EINVAL;
    }
    /* A window (offset/size) is not the child's data as it is (QEMU's rule). */
    BdrvChildRole role = s->has_size || s->offset ? BDRV_CHILD_DATA | BDRV_CHILD_PRIMARY
                                                  : BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY;
    if (!bdrv_open_child(NULL, options, "file", bs, role, false, errp)) {
        return -EINVAL;
    }
    int64_t real_size = bdrv_getlength(bs->file->bs);
    if (real_size < 0) {
        error_setg_errno(errp, (int)-real_size, "Could not get the size of '%s'",
                         bs->file->bs->filename);
        return (int)real_size;
    }
    if (s->offset > (uint64_t)real_size) {
        error_setg(errp, "Offset (%" PRIu64 ") cannot be greater than the size of the "
                   "containing file '%s' (%" PRId64 ")", s->offset, bs->file->bs->filename,
                   real_size);
        return -EINVAL;
    }
    if (s->has_size && (uint64_t)real_size - s->offset < s->size) {
        error_setg(errp, "The sum of offset (%" PRIu64 ") and size (%" PRIu64 ") must not "
                   "exceed the size of the containing file '%s' (%" PRId64 ")", s->offset,
                   s->size, bs->file->bs->filename, real_size);
        return -EINVAL;
    }
    if (s->has_size && s->size % BDRV_SECTOR_SIZE) {
        error_setg(errp, "Specified size (%" PRIu64 ") is not a multiple of %llu", s->size,
                   BDRV_SECTOR_SIZE);
        return -EINVAL;
    }
    bs->supported_write_flags = BDRV_REQ_FUA & bs->file->bs->supported_write_flags;
    bs->supported_zero_flags = (BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK) &
                               bs->file->bs->supported_zero_flags;
    if (bs->probed && !bs->read_only) {
        /* qemu's words and layout, no program name (img resize's output
         * matches qemu-img's byte for byte) */
        fprintf(stderr, "WARNING: Image format was not specified for '%s' and probing guessed "
                "raw.\n"
                "         Automatically detecting the format is dangerous for raw images, "
                "write operations on block 0 will be restricted.\n"
                "         Specify the 'raw' format explicitly to remove the restrictions.\n",
                bs->file->bs->filename);
    }
    return 0;
}

static void raw_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    if (bs->probed) {
        /* The header check needs all of sector 0 in one request. */
        bs->bl.request_alignment = MAX(bs->bl.request_alignment, (uint32_t)BDRV_SECTOR_SIZE);
    }
}

/* Window the request; reads past the window are invalid, writes would not fit. */
static int raw_adjust(BlockDriverState *bs, int64_t *offset, int64_t bytes, bool is_write)
{
    RawState *s = bs->opaque;
    if (s->has_size && ((uint64_t)*offset > s->size || (uint64_t)bytes > s->size - *offset)) {
        return is_write ? -ENOSPC : -EINVAL;
    }
    *offset += (int64_t)s->offset;
    return 0;
}

static int coroutine_fn raw_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    int ret = raw_adjust(bs, &offset, bytes, false);
    return ret < 0 ? ret : bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

/* Would writing buf (the new first sector) make the image probe as something
 * else?  (Through the ring when the sector is in a registered buffer.) */
static int coroutine_fn header_write_changes_format(const IOVector *qiov, size_t qiov_offset)
{
    uint8_t sector[BLOCK_PROBE_BUF_SIZE];
    int ret = iov_co_to_buf(qiov, qiov_offset, sector, sizeof(sector));
    if (ret < 0) {
        return ret;
    }
    const BlockDriver *drv = bdrv_probe_buf(sector, sizeof(sector), NULL);
    return drv && strcmp(drv->format_name, "raw") != 0;
}

static int coroutine_fn raw_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    /* request_alignment >= 512 when probed, so a write touching sector 0 covers it. */
    if (bs->probed && offset < BLOCK_PROBE_BUF_SIZE && bytes >= BLOCK_PROBE_BUF_SIZE) {
        int changes = header_write_changes_format(qiov, qiov_offset);
        if (changes) {
            return changes < 0 ? changes : -EPERM;
        }
    }
    int ret = raw_adjust(bs, &offset, bytes, true);
    return ret < 0 ? ret : bdrv_co_pwritev_part(bs->file, offset, bytes, qiov, qiov_offset, flags);
}

static int coroutine_fn raw_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                             BdrvRequestFlags flags)
{
    int ret = raw_adjust(bs, &offset, bytes, true);
    return ret < 0 ? ret : bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn raw_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    int ret = raw_adjust(bs, &offset, bytes, true);
    return ret < 0 ? ret : bdrv_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn raw_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                                            int64_t bytes, int64_t *pnum, int64_t *map,
                                            BlockDriverState **file)
{
    (void)want_zero;
    RawState *s = bs->opaque;
    *pnum = bytes;
    *file = bs->file->bs;
    *map = offset + (int64_t)s->offset;
    return BDRV_BLOCK_RAW | BDRV_BLOCK_OFFSET_VALID;
}

static int coroutine_fn raw_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                        PreallocMode prealloc, BdrvRequestFlags flags,
                                        Error **errp)
{
    RawState *s = bs->opaque;
    if (s->has_size) {
        error_setg(errp, "Cannot resize fixed-size raw disks (size=%" PRIu64 ")", s->size);
        return -ENOTSUP;
    }
    if (offset > INT64_MAX - (int64_t)s->offset) {
        error_setg(errp, "Disk size too large for the chosen offset");
        return -EINVAL;
    }
    return bdrv_co_truncate(bs->file, offset + (int64_t)s->offset, exact, prealloc, flags, errp);
}

static int64_t raw_getlength(BlockDriverState *bs)
{
    RawState *s = bs->opaque;
    if (s->has_size) {
        return (int64_t)s->size;
    }
    int64_t len = bdrv_getlength(bs->file->bs);
    if (len < 0) {
        return len;
    }
    return len > (int64_t)s->offset ? len - (int64_t)s->offset : 0;
}

static int raw_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    return bdrv_get_info(bs->file->bs, bdi);
}

static int raw_has_zero_init(BlockDriverState *bs)
{
    return bdrv_has_zero_init(bs->file->bs);
}

static int coroutine_fn raw_co_create(const char *filename, OptDict *opts, Error **errp)
{
    /* A raw image is just a file (of its protocol) of the right size. */
    return bdrv_co_create_file(filename, opts, errp);
}

/* QEMU's raw_measure: a raw image is as big as its data, holes included. */
static int raw_measure(OptDict *opts, BlockDriverState *in_bs, BlockMeasureInfo *info,
                       Error **errp)
{
    uint64_t size = 0;
    if (in_bs) {
        int64_t len = bdrv_getlength(in_bs);
        if (len < 0) {
            error_setg_errno(errp, (int)-len, "Unable to get image size");
            return (int)len;
        }
        size = (uint64_t)len;
    } else if (optdict_take_size(opts, "size", 0, &size, errp) < 0) {
        return -EINVAL;
    } else {
        size = ALIGN_UP(size, (uint64_t)BDRV_SECTOR_SIZE);
    }
    info->required = info->fully_allocated = size;
    return 0;
}

static const CreateOptDesc raw_create_opts[] = {
    { "size", "size", "Virtual disk size", NULL },
    { NULL, NULL, NULL, NULL },
};

const BlockDriver bdrv_raw = {
    .format_name = "raw",
    .instance_size = sizeof(RawState),
    .is_format = true,
    .probe = raw_probe,
    .open = raw_open,
    .refresh_limits = raw_refresh_limits,
    .co_preadv = raw_co_preadv,
    .co_pwritev = raw_co_pwritev,
    .co_pwrite_zeroes = raw_co_pwrite_zeroes,
    .co_pdiscard = raw_co_pdiscard,
    .co_block_status = raw_co_block_status,
    .co_truncate = raw_co_truncate,
    .co_create = raw_co_create,
    .create_opts = raw_create_opts,
    .measure = raw_measure,
    .getlength = raw_getlength,
    .get_info = raw_get_info,
    .has_zero_init = raw_has_zero_init,
    .supported_write_flags = BDRV_REQ_FUA,
    .supported_zero_flags = BDRV_REQ_FUA | BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK,
};
