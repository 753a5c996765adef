/*
 * block-status.c - what a range of a node holds (QEMU 7.2's
 * bdrv_co_block_status and bdrv_co_common_block_status_above).
 *
 * A driver answers for its own layer; this file adds the rules every
 * layer shares: clamp to the image end and flag EOF, round to
 * request_alignment, follow BDRV_BLOCK_RAW to the node it names, let filters
 * forward, mark DATA/ZERO answers ALLOCATED, call an unallocated range of a
 * format without backing (or beyond its backing's end) ZERO, and ask the
 * file underneath when the driver sets RECURSE (it may know about holes).
 * A driver without co_block_status is "all data" (a protocol: at the same
 * offset in itself).
 */
#include <errno.h>
#include "block-io-int.h"

static int coroutine_fn block_status_one(BlockDriverState *bs, bool want_zero, int64_t offset,
                                         int64_t bytes, int64_t *pnum, int64_t *map,
                                         BlockDriverState **file)
{
    int64_t local_map = 0;
    BlockDriverState *local_file = NULL;
    int64_t total_size;
    int ret;

    *pnum = 0;
    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    total_size = bdrv_total_bytes(bs);
    if (offset >= total_size) {
        ret = BDRV_BLOCK_EOF;
        goto early_out;
    }
    if (!bytes) {
        ret = 0;
        goto early_out;
    }
    bytes = MIN(bytes, total_size - offset);

    BlockDriverState *filtered = bdrv_filter_bs(bs);
    if (!bs->drv->co_block_status && !filtered) {
        *pnum = bytes;
        ret = BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED;
        if (offset + bytes == total_size) {
            ret |= BDRV_BLOCK_EOF;
        }
        if (!bs->drv->is_format) {
            ret |= BDRV_BLOCK_OFFSET_VALID;
            local_map = offset;
            local_file = bs;
        }
        goto early_out;
    }

    bdrv_inc_in_flight(bs);
    int64_t align = bs->bl.request_alignment ? bs->bl.request_alignment : 1;
    int64_t aligned_offset = ALIGN_DOWN(offset, align);
    int64_t aligned_bytes = ALIGN_UP(offset + bytes, align) - aligned_offset;

    if (bs->drv->co_block_status) {
        ret = bs->drv->co_block_status(bs, want_zero, aligned_offset, aligned_bytes, pnum,
                                       &local_map, &local_file);
    } else {
        local_file = filtered;
        *pnum = aligned_bytes;
        local_map = aligned_offset;
        ret = BDRV_BLOCK_RAW | BDRV_BLOCK_OFFSET_VALID;
    }
    if (ret < 0) {
        *pnum = 0;
        goto out;
    }
    if (*pnum <= offset - aligned_offset) {
        /* A driver must answer for at least the first aligned block. */
        ret = -EIO;
        *pnum = 0;
        goto out;
    }
    /* Back to the caller's range. */
    *pnum -= offset - aligned_offset;
    if (*pnum > bytes) {
        *pnum = bytes;
    }
    if (ret & BDRV_BLOCK_OFFSET_VALID) {
        local_map += offset - aligned_offset;
    }

    if (ret & BDRV_BLOCK_RAW) {
        if (!(ret & BDRV_BLOCK_OFFSET_VALID) || !local_file) {
            ret = -EIO;
            goto out;
        }
        ret = block_status_one(local_file, want_zero, local_map, *pnum, pnum, &local_map,
                               &local_file);
        goto out;
    }

    if (ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO)) {
        ret |= BDRV_BLOCK_ALLOCATED;
    } else if (bs->drv->supports_backing) {
        BlockDriverState *cow = bdrv_backing_bs(bs);
        if (!cow) {
            ret |= BDRV_BLOCK_ZERO;
        } else if (want_zero && offset >= bdrv_total_bytes(cow)) {
            ret |= BDRV_BLOCK_ZERO;
        }
    }

    if (want_zero && (ret & BDRV_BLOCK_RECURSE) && local_file && local_file != bs &&
        (ret & BDRV_BLOCK_DATA) && !(ret & BDRV_BLOCK_ZERO) &&
        (ret & BDRV_BLOCK_OFFSET_VALID)) {
        int64_t file_pnum;
        int64_t dummy_map;
        BlockDriverState *dummy_file;
        int ret2 = block_status_one(local_file, want_zero, local_map, *pnum, &file_pnum,
                                    &dummy_map, &dummy_file);
        /* Extra information only: errors are ignored. */
        if (ret2 >= 0) {
            if ((ret2 & BDRV_BLOCK_EOF) && (!file_pnum || (ret2 & BDRV_BLOCK_ZERO))) {
                /* Data reported past the file's end reads as zeros. */
                ret |= BDRV_BLOCK_ZERO;
            } else {
                *pnum = file_pnum;
                ret |= ret2 & BDRV_BLOCK_ZERO;
            }
        }
    }
    ret &= ~BDRV_BLOCK_RECURSE;

out:
    bdrv_dec_in_flight(bs);
    if (ret >= 0 && offset + *pnum == total_size) {
        ret |= BDRV_BLOCK_EOF;
    }
early_out:
    if (file) {
        *file = local_file;
    }
    if (map) {
        *map = local_map;
    }
    return ret;
}

/* The next layer down: a filter's child or the copy-on-write parent. */
static BlockDriverState *filter_or_cow_bs(BlockDriverState *bs)
{
    BlockDriverState *f = bdrv_filter_bs(bs);
    return f ? f : bdrv_backing_bs(bs);
}

static int coroutine_fn block_status_above(BlockDriverState *bs, BlockDriverState *base,
                                           bool want_zero, int64_t offset, int64_t bytes,
                                           int64_t *pnum, int64_t *map,
                                           BlockDriverState **file, int *depth)
{
    int dummy;
    int64_t eof = 0;
    int ret;

    if (!depth) {
        depth = &dummy;
    }
    *depth = 0;
    if (bs == base) {
        *pnum = bytes;
        return 0;
    }
    ret = block_status_one(bs, want_zero, offset, bytes, pnum, map, file);
    ++*depth;
    if (ret < 0 || *pnum == 0 || (ret & BDRV_BLOCK_ALLOCATED)) {
        return ret;
    }
    if (ret & BDRV_BLOCK_EOF) {
        eof = offset + *pnum;
    }
    bytes = *pnum;
    for (BlockDriverState *p = filter_or_cow_bs(bs); p && p != base; p = filter_or_cow_bs(p)) {
        ret = block_status_one(p, want_zero, offset, bytes, pnum, map, file);
        ++*depth;
        if (ret < 0) {
            return ret;
        }
        if (*pnum == 0) {
            /* Beyond this (shorter) layer's end: the zeros it synthesises
             * count as allocated here.  EOF is the top's business. */
            *pnum = bytes;
            if (file) {
                *file = p;
            }
            ret = BDRV_BLOCK_ZERO | BDRV_BLOCK_ALLOCATED;
            break;
        }
        if (ret & BDRV_BLOCK_ALLOCATED) {
            ret &= ~BDRV_BLOCK_EOF;
            break;
        }
        bytes = *pnum;
    }
    if (offset + *pnum == eof) {
        ret |= BDRV_BLOCK_EOF;
    }
    return ret;
}

int coroutine_fn bdrv_co_block_status(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map, BlockDriverState **file)
{
    int64_t local_pnum;
    return block_status_one(bs, true, offset, bytes, pnum ? pnum : &local_pnum, map, file);
}

int coroutine_fn bdrv_co_block_status_above(BlockDriverState *bs, BlockDriverState *base,
                                            int64_t offset, int64_t bytes, int64_t *pnum,
                                            int64_t *map, BlockDriverState **file, int *depth)
{
    int64_t local_pnum;
    return block_status_above(bs, base, true, offset, bytes, pnum ? pnum : &local_pnum, map,
                              file, depth);
}

int coroutine_fn bdrv_co_is_allocated(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      int64_t *pnum)
{
    int64_t local_pnum;
    int ret = block_status_one(bs, false, offset, bytes, pnum ? pnum : &local_pnum, NULL, NULL);
    if (ret < 0) {
        return ret;
    }
    return !!(ret & BDRV_BLOCK_ALLOCATED);
}
