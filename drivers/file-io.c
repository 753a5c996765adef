/*
 * file-io.c - the request callbacks of the file protocol: reads and writes
 * on the calling thread's io_uring (bounced when O_DIRECT cannot take the
 * caller's buffers, one operation per element for registered buffers),
 * flush, write-zeroes and discard through fallocate, block status through
 * SEEK_DATA/SEEK_HOLE.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "aio.h"
#include "file-int.h"
#include "iov-fixed.h"

/* ---- data I/O ---- */

#define FILE_STACK_IOVS 32

/* The [off, off+bytes) part of qiov as a private iovec array we may trim. */
typedef struct IoSlice {
    struct iovec stack[FILE_STACK_IOVS];
    struct iovec *iov;
    int niov;
} IoSlice;

/* -ENOMEM if a many-segment vector needs an array we cannot allocate. */
static int slice_init(IoSlice *sl, const IOVector *qiov, size_t off, size_t bytes)
{
    sl->iov = iov_slice_array(qiov, off, bytes, sl->stack, FILE_STACK_IOVS, &sl->niov);
    return sl->iov ? 0 : -ENOMEM;
}

static void slice_advance(IoSlice *sl, size_t n)
{
    while (n && sl->niov) {
        size_t step = MIN(n, sl->iov[0].iov_len);
        sl->iov[0].iov_base = (char *)sl->iov[0].iov_base + step;
        sl->iov[0].iov_len -= step;
        n -= step;
        if (sl->iov[0].iov_len == 0) {
            sl->iov++;
            sl->niov--;
        }
    }
}

static void slice_destroy(IoSlice *sl, struct iovec *base)
{
    if (base != sl->stack) {
        free(base);
    }
}

/* Read until bytes or EOF: bytes read, or -errno. */
static int64_t coroutine_fn read_loop(FileState *s, IoSlice *sl, int64_t offset, int64_t bytes)
{
    int64_t done = 0;
    while (done < bytes) {
        ssize_t n = aio_co_preadv(s->fd, sl->iov, sl->niov, offset + done);
        if (n == -EINTR || n == -EAGAIN) {
            continue;
        }
        if (n < 0) {
            return n;
        }
        done += n;
        /* 0 is EOF; so is an O_DIRECT read ending mid-block (a further
         * read there would be unaligned). */
        if (n == 0 || (s->direct && !IS_ALIGNED(offset + done, (int64_t)s->req_align))) {
            break;
        }
        slice_advance(sl, (size_t)n);
    }
    return done;
}

static int coroutine_fn write_loop(FileState *s, IoSlice *sl, int64_t offset, int64_t bytes,
                                   int rw_flags)
{
    int64_t done = 0;
    while (done < bytes) {
        ssize_t n = aio_co_pwritev(s->fd, sl->iov, sl->niov, offset + done, rw_flags);
        if (n == -EINTR || n == -EAGAIN) {
            continue;
        }
        if (n <= 0) {
            return n < 0 ? (int)n : -ENOSPC;
        }
        done += n;
        slice_advance(sl, (size_t)n);
    }
    return 0;
}

/*
 * O_DIRECT wants every segment's address aligned to the buffer alignment and
 * its length to the block size.  Padded or split requests from the layers
 * above may not be; those go through a bounce buffer.  Callers with aligned
 * buffers (the ublk per-tag buffers) never take that path.
 */
static bool needs_bounce(const FileState *s, const IOVector *qiov, size_t off, size_t bytes)
{
    if (!s->direct) {
        return false;
    }
    int i = 0;
    while (i < qiov->niov && off >= qiov->iov[i].iov_len) {
        off -= qiov->iov[i++].iov_len;
    }
    for (; i < qiov->niov && bytes; i++) {
        size_t len = MIN(bytes, qiov->iov[i].iov_len - off);
        uintptr_t base = (uintptr_t)qiov->iov[i].iov_base + off;
        if (base % s->buf_align || len % s->req_align) {
            return true;
        }
        bytes -= len;
        off = 0;
    }
    return false;
}

#define FILE_BOUNCE_CHUNK (1 * MiB)

static int coroutine_fn bounce_rw(BlockDriverState *bs, bool is_write, int64_t offset,
                                  int64_t bytes, IOVector *qiov, size_t qiov_offset, int rw_flags)
{
    FileState *s = bs->opaque;
    size_t chunk = (size_t)MIN(bytes, (int64_t)FILE_BOUNCE_CHUNK);
    /* From the request path's per-thread cache (aligned to at least
     * min_mem_alignment >= buf_align): no allocation per padded request. */
    BounceBuf bounce = { 0 };
    void *buf = bdrv_bounce_get(bs, chunk, &bounce);
    int64_t pos = 0;
    int ret = 0;
    if (!buf) {
        return -ENOMEM;
    }

    while (pos < bytes) {
        size_t len = (size_t)MIN((int64_t)chunk, bytes - pos);
        IoSlice sl = { .iov = sl.stack, .niov = 1 };
        sl.stack[0] = (struct iovec){ buf, len };
        if (is_write) {
            ret = iov_co_to_buf(qiov, qiov_offset + (size_t)pos, buf, len);
            if (ret == 0) {
                ret = write_loop(s, &sl, offset + pos, (int64_t)len, rw_flags);
            }
            if (ret < 0) {
                break;
            }
        } else {
            int64_t n = read_loop(s, &sl, offset + pos, (int64_t)len);
            if (n < 0) {
                ret = (int)n;
                break;
            }
            ret = iov_co_from_buf(qiov, qiov_offset + (size_t)pos, buf, (size_t)n);
            if (ret == 0 && n < (int64_t)len) {   /* EOF: the rest reads as zeros */
                ret = iov_co_zero(qiov, qiov_offset + (size_t)(pos + n), (size_t)(bytes - pos - n));
                break;
            }
            if (ret < 0) {
                break;
            }
        }
        pos += (int64_t)len;
    }
    bdrv_bounce_put(&bounce);
    return ret;
}

/*
 * A vector holding registered-buffer references (include/iov.h) goes out one
 * element at a time: a reference can only be the single element of a
 * READ_FIXED/WRITE_FIXED (io/aio.c).  Mapped elements among them are rare
 * (vdi's zero padding around an allocating write).  O_DIRECT alignment of a
 * reference is that of its offset in the registered buffer, which starts on
 * a page (a ublk request's pages, an aligned stand-in), so needs_bounce
 * above judges it from the cookie as it is.  Reads return the bytes read
 * before EOF, writes 0; or -errno.
 */
static int64_t coroutine_fn rw_by_element(FileState *s, bool is_write, int64_t offset,
                                          int64_t bytes, IOVector *qiov, size_t qiov_offset,
                                          int rw_flags)
{
    int64_t pos = 0;
    for (int i = 0; i < qiov->niov && pos < bytes; i++) {
        size_t l = qiov->iov[i].iov_len;
        if (qiov_offset >= l) {
            qiov_offset -= l;
            continue;
        }
        size_t len = MIN(l - qiov_offset, (size_t)(bytes - pos));
        IoSlice sl = { .iov = sl.stack, .niov = 1 };
        sl.stack[0] = (struct iovec){ (char *)qiov->iov[i].iov_base + qiov_offset, len };
        qiov_offset = 0;
        if (is_write) {
            int ret = write_loop(s, &sl, offset + pos, (int64_t)len, rw_flags);
            if (ret < 0) {
                return ret;
            }
        } else {
            int64_t n = read_loop(s, &sl, offset + pos, (int64_t)len);
            if (n < (int64_t)len) {
                return n < 0 ? n : pos + n;   /* EOF */
            }
        }
        pos += (int64_t)len;
    }
    return is_write ? 0 : pos;
}

int coroutine_fn file_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset,
                                BdrvRequestFlags flags)
{
    (void)flags;
    FileState *s = bs->opaque;
    int64_t n;
    if (needs_bounce(s, qiov, qiov_offset, (size_t)bytes)) {
        return bounce_rw(bs, false, offset, bytes, qiov, qiov_offset, 0);
    }
    if (unlikely(iov_has_reg(qiov, qiov_offset, (size_t)bytes))) {
        n = rw_by_element(s, false, offset, bytes, qiov, qiov_offset, 0);
    } else {
        IoSlice sl;
        if (slice_init(&sl, qiov, qiov_offset, (size_t)bytes) < 0) {
            return -ENOMEM;
        }
        struct iovec *base = sl.iov;
        n = read_loop(s, &sl, offset, bytes);
        slice_destroy(&sl, base);
    }
    if (n < 0) {
        return (int)n;
    }
    /* Beyond EOF reads as zeros. */
    return n < bytes ? iov_co_zero(qiov, qiov_offset + (size_t)n, (size_t)(bytes - n)) : 0;
}

int coroutine_fn file_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                 IOVector *qiov, size_t qiov_offset,
                                 BdrvRequestFlags flags)
{
    FileState *s = bs->opaque;
    if (bs->read_only) {
        return -EPERM;
    }
    int rw_flags = (flags & BDRV_REQ_FUA) ? RWF_DSYNC : 0;
    int ret;
    if (needs_bounce(s, qiov, qiov_offset, (size_t)bytes)) {
        ret = bounce_rw(bs, true, offset, bytes, qiov, qiov_offset, rw_flags);
    } else if (unlikely(iov_has_reg(qiov, qiov_offset, (size_t)bytes))) {
        ret = (int)rw_by_element(s, true, offset, bytes, qiov, qiov_offset, rw_flags);
    } else {
        IoSlice sl;
        ret = slice_init(&sl, qiov, qiov_offset, (size_t)bytes);
        if (ret < 0) {
            return ret;
        }
        struct iovec *base = sl.iov;
        ret = write_loop(s, &sl, offset, bytes, rw_flags);
        slice_destroy(&sl, base);
    }
    if (ret == 0 && bs->growable) {
        bdrv_note_growth(bs, offset + bytes);
    }
    return ret;
}

int coroutine_fn file_co_flush(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    if (bs->open_flags & BDRV_O_NO_FLUSH) {
        return 0;
    }
    return aio_co_fsync(s->fd, true);
}

/* fallocate that turns "not supported here" into a remembered -ENOTSUP. */
static int coroutine_fn try_fallocate(FileState *s, bool *unsupported, int mode,
                                      int64_t offset, int64_t bytes)
{
    if (flag_get(unsupported)) {
        return -ENOTSUP;
    }
    int ret = aio_co_fallocate(s->fd, mode, offset, bytes);
    if (ret == -EOPNOTSUPP || ret == -ENOSYS) {
        flag_set(unsupported);
        return -ENOTSUP;
    }
    return ret;
}

int coroutine_fn file_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                       int64_t bytes, BdrvRequestFlags flags)
{
    FileState *s = bs->opaque;
    int ret;
    if (bs->read_only) {
        return -EPERM;
    }
    if (s->is_bdev) {
        /* PUNCH_HOLE on a block device zeroes by unmapping without fallback;
         * ZERO_RANGE is BLKZEROOUT (may write zeroes).  Both keep the size. */
        if (flags & BDRV_REQ_MAY_UNMAP) {
            ret = try_fallocate(s, &s->no_punch_hole,
                                FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
            if (ret != -ENOTSUP) {
                return ret;
            }
        }
        return try_fallocate(s, &s->no_zero_range, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                             offset, bytes);
    }

    int64_t eof = bdrv_get_total_bytes(bs);
    /* A punched hole reads as zeros but does not extend the file. */
    if ((flags & BDRV_REQ_MAY_UNMAP) && offset + bytes <= eof) {
        ret = try_fallocate(s, &s->no_punch_hole, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            offset, bytes);
        if (ret != -ENOTSUP) {
            return ret;
        }
    }
    ret = try_fallocate(s, &s->no_zero_range, FALLOC_FL_ZERO_RANGE, offset, bytes);
    if (ret != -ENOTSUP) {
        if (ret == 0) {
            bdrv_note_growth(bs, offset + bytes);
        }
        return ret;
    }
    /* No ZERO_RANGE (tmpfs, older file systems): punch, then allocate. */
    if (!flag_get(&s->no_punch_hole) && !flag_get(&s->no_fallocate)) {
        if (offset < eof) {
            ret = try_fallocate(s, &s->no_punch_hole,
                                FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                offset, MIN(bytes, eof - offset));
            if (ret < 0) {
                return ret;
            }
        }
        ret = try_fallocate(s, &s->no_fallocate, 0, offset, bytes);
        if (ret == 0) {
            bdrv_note_growth(bs, offset + bytes);
        }
        return ret;
    }
    return -ENOTSUP;
}

int coroutine_fn file_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    FileState *s = bs->opaque;
    if (bs->read_only) {
        return -EPERM;
    }
    int64_t end = offset + bytes;
    if (!s->is_bdev) {
        /* Nothing to drop beyond EOF, and KEEP_SIZE means it stays so. */
        end = MIN(end, bdrv_get_total_bytes(bs));
        if (end <= offset) {
            return 0;
        }
    }
    return try_fallocate(s, &s->no_punch_hole, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         offset, end - offset);
}

/*
 * lseek(SEEK_DATA/SEEK_HOLE) is a synchronous syscall, but it only consults
 * extent metadata and does not wait for device I/O, so it stays inline (as
 * in QEMU's file-posix).
 */
int coroutine_fn file_co_block_status(BlockDriverState *bs, bool want_zero,
                                      int64_t offset, int64_t bytes, int64_t *pnum,
                                      int64_t *map, BlockDriverState **file)
{
    FileState *s = bs->opaque;
    *map = offset;
    *file = bs;
    *pnum = bytes;
    if (!want_zero || s->is_bdev) {
        return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    off_t data = lseek(s->fd, offset, SEEK_DATA);
    if (data < 0) {
        /* ENXIO: offset is in the trailing hole (or past EOF).  Anything
         * else: we cannot tell, and "data" is always a safe answer. */
        return errno == ENXIO ? BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID
                              : BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
    }
    if (data > offset) {
        *pnum = MIN(bytes, data - offset);
        return BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID;
    }
    off_t hole = lseek(s->fd, offset, SEEK_HOLE);
    if (hole > offset) {
        /* The implicit hole at EOF may start mid-block; callers want whole
         * blocks, and the rest of the last block is data-like anyway. */
        int64_t n = ALIGN_UP(hole - offset, (int64_t)bs->bl.request_alignment);
        *pnum = MIN(bytes, n);
    }
    return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
}
