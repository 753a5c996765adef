/*
 * block-io-zero.c - write-zeroes and discard on the request path.
 *
 * Write-zeroes tries the driver's efficient callback on pieces aligned to
 * pwrite_zeroes_alignment and no larger than max_pwrite_zeroes; where that
 * says -ENOTSUP (or does not exist) it writes a shared buffer of zeros in
 * chunks of at most 1 MiB / max_transfer, unless the caller asked for
 * NO_FALLBACK.  Partial blocks at an unaligned head/tail are read-modify-
 * written like any unaligned write.
 *
 * Discard is advisory: with discard=ignore (no BDRV_O_UNMAP) it succeeds
 * without doing anything; with discard=unmap the part aligned to
 * pdiscard_alignment goes to the driver in pieces of at most max_pdiscard,
 * and an unaligned head/tail is dropped.  -ENOTSUP from the driver is not an
 * error.
 */
#include <errno.h>
#include <string.h>
#include "block-io-int.h"

int coroutine_fn bdrv_co_do_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                          BdrvRequestFlags flags)
{
    const BlockDriver *drv = bs->drv;
    BdrvRequestFlags zero_flags = bdrv_zero_flags(bs);
    BdrvRequestFlags write_flags = bdrv_write_flags(bs);
    int64_t request_alignment = bs->bl.request_alignment ? bs->bl.request_alignment : 1;
    int64_t alignment = MAX((int64_t)bs->bl.pwrite_zeroes_alignment, request_alignment);
    int64_t max_write_zeroes = bs->bl.max_pwrite_zeroes ? (int64_t)bs->bl.max_pwrite_zeroes
                                                        : INT64_MAX;
    int64_t max_transfer = bs->bl.max_transfer ? (int64_t)bs->bl.max_transfer : INT64_MAX;
    bool need_flush = false;
    int ret = 0;

    if ((flags & ~zero_flags) & BDRV_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    max_transfer = MIN(max_transfer, (int64_t)BDRV_MAX_BOUNCE_BUFFER);
    max_transfer = MAX(ALIGN_DOWN(max_transfer, request_alignment), request_alignment);
    max_write_zeroes = MAX(ALIGN_DOWN(max_write_zeroes, alignment), alignment);

    int64_t head = offset % alignment;
    int64_t tail = (offset + bytes) % alignment;
    while (bytes > 0 && ret == 0) {
        int64_t num = bytes;
        /* Drivers can expect the bulk of a request to be aligned, and an
         * unaligned piece not to cross an alignment boundary. */
        if (head) {
            num = MIN(MIN(bytes, max_transfer), alignment - head);
            head = (head + num) % alignment;
        } else if (tail && num > alignment) {
            num -= tail;
        }
        num = MIN(num, max_write_zeroes);

        ret = -ENOTSUP;
        if (drv->co_pwrite_zeroes) {
            ret = drv->co_pwrite_zeroes(bs, offset, num, flags & zero_flags &
                                        ~BDRV_REQ_ZERO_WRITE);
            bdrv_write_gen_bump(bs);
            if (ret != -ENOTSUP && (flags & BDRV_REQ_FUA) && !(zero_flags & BDRV_REQ_FUA)) {
                need_flush = true;
            }
        }
        if (ret == -ENOTSUP && !(flags & BDRV_REQ_NO_FALLBACK)) {
            BdrvRequestFlags wflags = flags & ~(BDRV_REQ_ZERO_WRITE | BDRV_REQ_MAY_UNMAP |
                                                BDRV_REQ_NO_FALLBACK);
            if ((flags & BDRV_REQ_FUA) && !(write_flags & BDRV_REQ_FUA)) {
                /* One flush at the end rather than one per chunk. */
                wflags &= ~BDRV_REQ_FUA;
                need_flush = true;
            }
            num = MIN(num, max_transfer);
            IOVector qiov;
            BounceBuf bounce = { 0 };
            void *zeros = bdrv_zero_buffer();
            if (bs->bl.min_mem_alignment > 4096) {
                zeros = bdrv_bounce_get(bs, num, &bounce);
                if (!zeros) {
                    ret = -ENOMEM;
                    break;
                }
                memset(zeros, 0, num);
            }
            iov_init_buf(&qiov, zeros, num);
            ret = bdrv_driver_pwritev(bs, offset, num, &qiov, 0, wflags);
            bdrv_bounce_put(&bounce);
        }
        offset += num;
        bytes -= num;
    }
    if (ret == 0 && need_flush) {
        ret = bdrv_co_flush(bs);
    }
    return ret;
}

/* Zero [offset, offset+bytes) at request_alignment: partial blocks at the
 * ends are read, zeroed in the middle and written back as data. */
int coroutine_fn bdrv_co_do_zero_pwritev(BdrvChild *child, int64_t offset, int64_t bytes,
                                         BdrvRequestFlags flags, BdrvTrackedRequest *req)
{
    BlockDriverState *bs = child->bs;
    int64_t align = bs->bl.request_alignment ? bs->bl.request_alignment : 1;
    BdrvRequestPadding pad;
    IOVector local;
    int ret = 0;

    int padding = bdrv_init_padding(bs, offset, bytes, &pad);
    if (padding < 0) {
        ret = padding;
        goto out;
    }
    if (padding) {
        bdrv_make_request_serialising(req, align);
        ret = bdrv_padding_rmw_read(child, req, &pad, true);
        if (ret < 0) {
            goto out;
        }
        if (pad.head || pad.merge_reads) {
            int64_t aligned_offset = ALIGN_DOWN(offset, align);
            int64_t write_bytes = pad.merge_reads ? (int64_t)pad.buf_len : align;
            iov_init_buf(&local, pad.buf, write_bytes);
            ret = bdrv_aligned_pwritev(child, req, aligned_offset, write_bytes, align, &local, 0,
                                       flags & ~BDRV_REQ_ZERO_WRITE);
            if (ret < 0 || pad.merge_reads) {
                goto out;
            }
            offset += write_bytes - pad.head;
            bytes -= write_bytes - pad.head;
        }
    }
    if (bytes >= align) {
        int64_t aligned_bytes = ALIGN_DOWN(bytes, align);
        ret = bdrv_aligned_pwritev(child, req, offset, aligned_bytes, align, NULL, 0, flags);
        if (ret < 0) {
            goto out;
        }
        bytes -= aligned_bytes;
        offset += aligned_bytes;
    }
    if (bytes) {
        iov_init_buf(&local, pad.tail_buf, align);
        ret = bdrv_aligned_pwritev(child, req, offset, align, align, &local, 0,
                                   flags & ~BDRV_REQ_ZERO_WRITE);
    }
out:
    if (padding) {
        bdrv_padding_destroy(&pad);
    }
    return ret;
}

int coroutine_fn bdrv_co_pdiscard(BdrvChild *child, int64_t offset, int64_t bytes)
{
    BlockDriverState *bs = child->bs;
    BdrvTrackedRequest req;
    int ret;

    if (!bs || !bs->drv) {
        return -ENOMEDIUM;
    }
    ret = bdrv_check_request(offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        return -EPERM;
    }
    if (!bs->growable && offset + bytes > bdrv_total_bytes(bs)) {
        return -EIO;
    }
    if (!(bs->open_flags & BDRV_O_UNMAP) || !bs->drv->co_pdiscard) {
        return 0;
    }
    /* Dirty tracking sees the request as made, unaligned edges too (QEMU
     * sets the dirty bits of the whole discard request). */
    if (bs->drv->note_discard) {
        bs->drv->note_discard(bs, offset, bytes);
    }

    int64_t request_alignment = bs->bl.request_alignment ? bs->bl.request_alignment : 1;
    int64_t align = MAX((int64_t)bs->bl.pdiscard_alignment, request_alignment);
    int64_t max_pdiscard = bs->bl.max_pdiscard ? (int64_t)bs->bl.max_pdiscard : INT64_MAX;
    max_pdiscard = MAX(ALIGN_DOWN(max_pdiscard, align), align);

    /* Only whole aligned blocks are discarded. */
    int64_t start = ALIGN_UP(offset, align);
    int64_t end = ALIGN_DOWN(offset + bytes, align);
    if (end <= start) {
        return 0;
    }

    bdrv_co_enter_request(child);
    tracked_request_begin(&req, bs, offset, bytes, BDRV_TRACKED_DISCARD);
    if (bs->drv->serialise_unmap) {
        bdrv_make_request_serialising(&req, bdrv_get_cluster_size(bs));
    } else {
        bdrv_wait_serialising_requests(&req);
    }
    ret = 0;
    for (int64_t pos = start; pos < end; ) {
        int64_t num = MIN(end - pos, max_pdiscard);
        ret = bs->drv->co_pdiscard(bs, pos, num);
        if (ret == -ENOTSUP) {
            ret = 0;
        }
        if (ret < 0) {
            break;
        }
        pos += num;
    }
    bdrv_write_gen_bump(bs);
    bdrv_co_write_req_finish(child, offset, bytes, &req, ret);
    tracked_request_end(&req);
    bdrv_co_leave_request(child);
    return ret;
}
