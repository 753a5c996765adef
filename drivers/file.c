/*
 * file.c - the "file" protocol driver: regular files and block devices.
 * Open, close, reopen, limits, size and create are here; the request
 * callbacks are in file-io.c, the image locks in file-lock.c.
 *
 * Data I/O goes through io_uring on the calling thread's AioContext
 * (aio_co_preadv/pwritev), so a queue thread never blocks in read/write.
 * cache=none opens with O_DIRECT; the alignment it needs (offset/length and
 * buffer) is found at open from statx(STATX_DIOALIGN) or BLKSSZGET, else by
 * trial reads, and published as request_alignment/min_mem_alignment so the
 * request path pads for us.  Write-zeroes and discard use fallocate modes;
 * when the file system refuses one we remember it and answer -ENOTSUP at
 * once, so the request path falls back without a syscall per request.
 *
 * Image locking (locking=auto|on|off, as QEMU's file-posix) keeps two users
 * from writing one image, or one reading it while another writes.  The
 * bytes held stand for the node's cumulative permissions (check_perm and
 * friends below); file-lock.c takes and tests them.
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

/* ---- O_DIRECT alignment ---- */

/*
 * Find the offset/length alignment O_DIRECT needs.  Buffers are then asked to
 * be aligned to the same value: the kernel's rules for smaller buffer
 * alignment differ between versions (page-crossing segments must hold whole
 * blocks on some), and aligned callers - ublk buffers, the request path's
 * bounce buffers - lose nothing.  Trial reads are only conclusive when the
 * file has data at offset 0 (a read at EOF succeeds whatever the alignment),
 * so an empty file without statx information gets the safe 4096.
 */
static int probe_alignment(FileState *s, const struct stat *st, const char *filename,
                           Error **errp)
{
    struct statx stx;

    s->req_align = 0;
    if (s->is_bdev) {
        int sector_size = 0;
        if (ioctl(s->fd, BLKSSZGET, &sector_size) == 0 && sector_size > 0) {
            s->req_align = (uint32_t)sector_size;
        }
    } else if (statx(s->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
               (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
        s->req_align = stx.stx_dio_offset_align;
    } else if (st->st_size == 0) {
        s->req_align = 4096;
    }
    if (!s->req_align) {
        uint8_t *buf = aligned_alloc_or_die(4096, 4096);
        static const uint32_t sizes[] = { 512, 1024, 2048, 4096 };
        for (size_t i = 0; i < ARRAY_SIZE(sizes) && !s->req_align; i++) {
            if (pread(s->fd, buf, sizes[i], 0) >= 0) {
                s->req_align = sizes[i];
            }
        }
        free(buf);
    }
    if (!s->req_align || !IS_POW2(s->req_align)) {
        error_setg(errp, "Could not find a working O_DIRECT alignment for '%s'; try "
                   "cache=writeback (cache.direct=off)", filename);
        return -EINVAL;
    }
    s->buf_align = s->req_align;
    return 0;
}

/* ---- open / close ---- */

static int file_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    FileState *s = bs->opaque;
    char *filename;

    s->fd = -1;
    optdict_take_str(options, "filename", NULL, &filename);
    if (!filename || !*filename) {
        error_setg(errp, "The 'file' block driver requires a file name (filename=...)");
        free(filename);
        return -EINVAL;
    }
    const char *path = !strncmp(filename, "file:", 5) ? filename + 5 : filename;
    snprintf(bs->filename, sizeof(bs->filename), "%s", path);

    int locking = file_locking_mode(options, errp);
    if (locking < 0) {
        free(filename);
        return -EINVAL;
    }
    /* QEMU's rule: a user who lets everyone else write must not write. */
    if ((flags & BDRV_O_FORCE_SHARE) && (flags & BDRV_O_RDWR)) {
        error_setg(errp, "force-share=on can only be used with read-only images");
        free(filename);
        return -EINVAL;
    }
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
     * writer; it is refused below once fstat says what it is. */
    int oflags = O_CLOEXEC | O_NONBLOCK | ((flags & BDRV_O_RDWR) ? O_RDWR : O_RDONLY);
    s->direct = flags & BDRV_O_NOCACHE;
    if (s->direct) {
        oflags |= O_DIRECT;
    }
    s->fd = open(path, oflags);
    if (s->fd < 0) {
        int err = errno;
        int probe_fd = err == EINVAL && s->direct ? open(path, oflags & ~O_DIRECT) : -1;
        if (probe_fd >= 0) {
            close(probe_fd);
            error_setg(errp, "Could not open '%s': the file system does not support O_DIRECT "
                       "(cache=none); use cache=writeback", path);
        } else {
            error_setg_errno(errp, err, "Could not open '%s'", path);
        }
        free(filename);
        return -err;
    }
    struct stat st;
    int ret = -EINVAL;
    if (fstat(s->fd, &st) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not stat '%s'", path);
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        ret = -EISDIR;
        error_setg_errno(errp, EISDIR, "Could not open '%s'", path);
        goto fail;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        const char *type = S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISCHR(st.st_mode) ?
                           "a character device" : S_ISSOCK(st.st_mode) ? "a socket" :
                           "of an unsupported type";
        error_setg(errp, "Could not open '%s': it is %s, not a regular file or block device",
                   path, type);
        goto fail;
    }
    if (fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) & ~O_NONBLOCK) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not open '%s': clearing O_NONBLOCK", path);
        goto fail;
    }
    s->is_bdev = S_ISBLK(st.st_mode);
    /* The lock bytes come with the permissions (file_check_perm), right
     * after open.  force-share (read-only) takes none at all. */
    s->locking = (flags & BDRV_O_FORCE_SHARE) ? LOCKING_OFF : locking;
    s->perm = 0;
    s->shared = BLK_PERM_ALL;
    s->reopen_fd = -1;
    bs->growable = !s->is_bdev;
    if (s->direct) {
        ret = probe_alignment(s, &st, path, errp);
        if (ret < 0) {
            goto fail;
        }
    } else {
        s->req_align = 1;
        s->buf_align = 1;
    }
    free(filename);
    return 0;

fail:
    close(s->fd);
    s->fd = -1;
    free(filename);
    return ret;
}

static void file_close(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    if (s->fd >= 0) {
        if (s->lock_pid && s->lock_pid == getpid()) {
            file_unlock_image(s->fd);
        }
        close(s->fd);
        s->fd = -1;
    }
}

/* ---- permissions: image locks ----
 *
 * The lock bytes stand for the node's cumulative permissions (what its
 * parents need, and what they let others do), QEMU's layout.  A change takes
 * the new bytes before it drops the old, so no byte is ever free for
 * another process to take in between, then checks for conflicts.
 *
 * Inside a reopen (read-only <-> read-write, a drained section: no request
 * uses the fd) the bytes move to the new fd: it takes the new bytes before
 * the old fd lets its own go, and the conflict check comes after, from the
 * new fd, once our old description no longer holds bytes that the check
 * would see as someone else's.
 */
static int file_check_perm(BlockDriverState *bs, unsigned perm, unsigned shared, Error **errp)
{
    FileState *s = bs->opaque;
    LockingMode mode = (LockingMode)s->locking;
    const char *path = bs->filename;
    int ret;
    if (mode == LOCKING_OFF) {
        return 0;
    }
    if (s->reopen_fd >= 0) {
        ret = file_lock_apply(s->reopen_fd, mode, perm, shared, path, errp);
        if (ret > 0) {
            file_unlock_image(s->fd);
            ret = file_lock_check(s->reopen_fd, mode, perm, shared, path, errp);
            if (ret < 0) {
                /* Read locks: taking the old ones back cannot conflict. */
                file_lock_apply(s->fd, mode, s->perm, s->shared, path, NULL);
            }
        }
        if (ret < 0) {
            file_unlock_image(s->reopen_fd);
            return ret;
        }
    } else {
        ret = file_lock_apply(s->fd, mode, perm, shared, path, errp);
        if (ret > 0) {
            ret = file_lock_check(s->fd, mode, perm, shared, path, errp);
        }
        if (ret < 0) {
            file_lock_keep_only(s->fd, s->perm, s->shared);
            return ret;
        }
    }
    if (ret == 0) {
        /* locking=auto on a file system that cannot lock: go on without,
         * now and for later changes (QEMU fails every open there). */
        file_unlock_image(s->fd);
        if (s->reopen_fd >= 0) {
            file_unlock_image(s->reopen_fd);
        }
        s->locking = LOCKING_OFF;
        s->lock_pid = 0;
        return 0;
    }
    s->lock_pid = getpid();
    return 0;
}

static void file_set_perm(BlockDriverState *bs, unsigned perm, unsigned shared)
{
    FileState *s = bs->opaque;
    if (s->locking != LOCKING_OFF && s->reopen_fd < 0) {
        file_lock_keep_only(s->fd, perm, shared);
    }
    /* In a reopen the new fd holds exactly these; the old one none. */
    s->perm = perm;
    s->shared = shared;
}

static void file_abort_perm_update(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    if (s->locking == LOCKING_OFF) {
        return;
    }
    if (s->reopen_fd >= 0) {
        file_lock_apply(s->fd, (LockingMode)s->locking, s->perm, s->shared, bs->filename, NULL);
        file_unlock_image(s->reopen_fd);
    } else {
        file_lock_keep_only(s->fd, s->perm, s->shared);
    }
}

/* Open the file again in the new mode; the lock bytes follow in
 * file_check_perm. */
static int file_reopen_prepare(BlockDriverState *bs, int flags, Error **errp)
{
    FileState *s = bs->opaque;
    const char *path = bs->filename;
    bool rw = flags & BDRV_O_RDWR;
    int oflags = O_CLOEXEC | (rw ? O_RDWR : O_RDONLY) | (s->direct ? O_DIRECT : 0);
    struct stat st_old, st_new;

    int fd = open(path, oflags);
    if (fd < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not reopen '%s' %s", path,
                         rw ? "read-write" : "read-only");
        return -err;
    }
    if (fstat(fd, &st_new) < 0 || fstat(s->fd, &st_old) < 0 ||
        st_new.st_dev != st_old.st_dev || st_new.st_ino != st_old.st_ino) {
        error_setg(errp, "Could not reopen '%s': the path no longer names the open file", path);
        close(fd);
        return -ESTALE;
    }
    s->reopen_fd = fd;
    return 0;
}

static void file_reopen_commit(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    close(s->fd);   /* its lock bytes went in file_check_perm */
    s->fd = s->reopen_fd;
    s->reopen_fd = -1;
}

static void file_reopen_abort(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    close(s->reopen_fd);   /* its lock bytes went in file_abort_perm_update */
    s->reopen_fd = -1;
}

static void file_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    FileState *s = bs->opaque;
    bs->bl.request_alignment = MAX(bs->bl.request_alignment, s->req_align);
    bs->bl.min_mem_alignment = MAX(bs->bl.min_mem_alignment, s->buf_align);
    bs->bl.opt_mem_alignment = MAX(bs->bl.opt_mem_alignment, s->buf_align);
    long iov_max = sysconf(_SC_IOV_MAX);
    bs->bl.max_iov = iov_max > 0 ? (int)iov_max : 1024;
    bs->bl.has_discard = !flag_get(&s->no_punch_hole);
    if (s->is_bdev) {
        /* fallocate on a block device takes whole logical blocks only. */
        bs->bl.pdiscard_alignment = MAX(bs->bl.pdiscard_alignment, s->req_align);
        bs->bl.pwrite_zeroes_alignment = MAX(bs->bl.pwrite_zeroes_alignment, s->req_align);
    }
}

/* ---- size ---- */

static int64_t file_getlength(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    if (s->is_bdev) {
        uint64_t size;
        return ioctl(s->fd, BLKGETSIZE64, &size) < 0 ? -errno : (int64_t)size;
    }
    struct stat st;
    return fstat(s->fd, &st) < 0 ? -errno : (int64_t)st.st_size;
}

static int64_t file_get_allocated_file_size(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    struct stat st;
    return fstat(s->fd, &st) < 0 ? -errno : (int64_t)st.st_blocks * 512;
}

static int file_has_zero_init(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    return !s->is_bdev;
}

/*
 * Resize a regular file to offset, preallocating growth as asked.  ftruncate
 * is synchronous, but resizing is a control operation (create, img resize),
 * not per request.
 */
static int coroutine_fn regular_truncate(int fd, bool direct, int64_t offset,
                                         PreallocMode prealloc, const char *name, Error **errp)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not stat '%s'", name);
        return -err;
    }
    int64_t cur = st.st_size;
    int ret = 0;

    if (prealloc == PREALLOC_MODE_METADATA) {
        /* qemu's words (file-posix handle_aiocb_truncate) */
        error_setg(errp, "Unsupported preallocation mode: metadata");
        return -ENOTSUP;
    }
    if (offset > cur && prealloc == PREALLOC_MODE_FALLOC) {
        ret = aio_co_fallocate(fd, 0, cur, offset - cur);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not preallocate '%s' (falloc) to %lld bytes",
                             name, (long long)offset);
        }
        return ret;
    }
    if (offset > cur && prealloc == PREALLOC_MODE_FULL) {
        const int64_t chunk = BDRV_MAX_BOUNCE_BUFFER;
        int64_t end = direct ? ALIGN_DOWN(offset, 4096) : offset;
        if (direct && !IS_ALIGNED(cur, 4096)) {
            end = cur;   /* writes there would be unaligned: holes will do */
        }
        void *zeroes = bdrv_zero_buffer();   /* shared, 4 KiB aligned, never written */
        for (int64_t pos = cur; pos < end && ret >= 0;) {
            struct iovec iov = { zeroes, (size_t)MIN(chunk, end - pos) };
            ssize_t n = aio_co_pwritev(fd, &iov, 1, pos, 0);
            ret = n < 0 ? (int)n : n == 0 ? -ENOSPC : 0;
            pos += n > 0 ? n : 0;
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not preallocate '%s' (full) to %lld bytes",
                             name, (long long)offset);
            return ret;
        }
    }
    if (ftruncate(fd, offset) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not resize '%s' to %lld bytes", name,
                         (long long)offset);
    }
    return ret;
}

static int coroutine_fn file_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                         PreallocMode prealloc, BdrvRequestFlags flags,
                                         Error **errp)
{
    (void)flags;
    FileState *s = bs->opaque;
    if (bs->read_only) {
        error_setg(errp, "Cannot resize '%s': it is open read-only", bs->filename);
        return -EPERM;
    }
    if (s->is_bdev) {
        int64_t size = file_getlength(bs);
        if (size < 0) {
            error_setg_errno(errp, (int)-size, "Could not get the size of '%s'", bs->filename);
            return (int)size;
        }
        if (offset > size || (exact && offset != size)) {
            error_setg(errp, "Cannot resize device '%s' (%lld bytes) to %lld bytes",
                       bs->filename, (long long)size, (long long)offset);
            return -ENOTSUP;
        }
        return 0;
    }
    int ret = regular_truncate(s->fd, s->direct, offset, prealloc, bs->filename, errp);
    if (ret == 0) {
        bdrv_set_total_bytes(bs, offset);
    }
    return ret;
}

/* ---- create ---- */

static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };

static int coroutine_fn file_co_create(const char *filename, OptDict *opts, Error **errp)
{
    uint64_t size;
    if (optdict_take_size(opts, "size", 0, &size, errp) < 0) {
        return -EINVAL;
    }
    /* qemu-img's words for a bad or unsupported mode, before any file is touched. */
    char *mode = NULL;
    int prealloc = PREALLOC_MODE_OFF;
    optdict_take_str(opts, "preallocation", NULL, &mode);
    if (mode) {
        for (prealloc = 0; prealloc_names[prealloc] && strcmp(prealloc_names[prealloc], mode);
             prealloc++) {
        }
        if (!prealloc_names[prealloc]) {
            error_setg(errp, "invalid parameter value: %s", mode);
        } else if (prealloc == PREALLOC_MODE_METADATA) {
            error_setg(errp, "Unsupported preallocation mode: %s", mode);
        }
        free(mode);
        if (!prealloc_names[prealloc] || prealloc == PREALLOC_MODE_METADATA) {
            return -EINVAL;
        }
    }
    int locking = file_locking_mode(opts, errp);
    if (locking < 0) {
        return -EINVAL;
    }
    if (optdict_check_empty(opts, "Block protocol 'file'", errp) < 0) {
        return -EINVAL;
    }
    const char *path = !strncmp(filename, "file:", 5) ? filename + 5 : filename;
    /* QEMU's file-posix rounds up to whole sectors (qemu-img create x 1000
     * makes 1024 bytes); images from both tools must be the same size. */
    if (size > (uint64_t)INT64_MAX - 511) {
        error_setg(errp, "Image size %llu for '%s' is too large", (unsigned long long)size, path);
        return -EFBIG;
    }
    size = ALIGN_UP(size, 512);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = errno;
        error_setg_errno(errp, err, "Could not create '%s'", path);
        return -err;
    }
    struct stat st;
    int ret = 0;
    /* The image is emptied below: refuse while anyone uses it (QEMU takes
     * write+resize and lets others do anything but resize). */
    if (locking != LOCKING_OFF) {
        ret = file_lock_image(fd, (LockingMode)locking, BLK_PERM_WRITE | BLK_PERM_RESIZE,
                              BLK_PERM_ALL & ~BLK_PERM_RESIZE, path, errp);
        if (ret < 0) {
            close(fd);
            return ret;
        }
        ret = 0;
    }
    if (fstat(fd, &st) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not stat '%s'", path);
    } else if (S_ISBLK(st.st_mode)) {
        /* A device is not created, only checked to be large enough. */
        uint64_t dev_size = 0;
        if (ioctl(fd, BLKGETSIZE64, &dev_size) < 0) {
            ret = -errno;
            error_setg_errno(errp, -ret, "Could not get the size of '%s'", path);
        } else if (dev_size < size) {
            ret = -ENOSPC;
            error_setg(errp, "Device '%s' is too small (%llu bytes) for an image of %llu "
                       "bytes", path, (unsigned long long)dev_size, (unsigned long long)size);
        }
    } else if (ftruncate(fd, 0) < 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not truncate '%s'", path);
    } else {
        ret = regular_truncate(fd, false, (int64_t)size, (PreallocMode)prealloc, path, errp);
    }
    close(fd);
    return ret;
}

static const CreateOptDesc file_create_opts[] = {
    { "size", "size", "Virtual disk size", NULL },
    { "preallocation", "string", "Preallocation mode (off, falloc, full)", "off" },
    { NULL, NULL, NULL, NULL },
};

const BlockDriver bdrv_file = {
    .format_name = "file",
    .protocol_names = { "file" },
    .instance_size = sizeof(FileState),
    .is_format = false,
    .open = file_open,
    .close = file_close,
    .refresh_limits = file_refresh_limits,
    .check_perm = file_check_perm,
    .set_perm = file_set_perm,
    .abort_perm_update = file_abort_perm_update,
    .reopen_prepare = file_reopen_prepare,
    .reopen_commit = file_reopen_commit,
    .reopen_abort = file_reopen_abort,
    .co_preadv = file_co_preadv,
    .co_pwritev = file_co_pwritev,
    .co_pwrite_zeroes = file_co_pwrite_zeroes,
    .co_pdiscard = file_co_pdiscard,
    .co_flush_to_disk = file_co_flush,
    .co_block_status = file_co_block_status,
    .co_truncate = file_co_truncate,
    .co_create = file_co_create,
    .create_opts = file_create_opts,
    .getlength = file_getlength,
    .get_allocated_file_size = file_get_allocated_file_size,
    .has_zero_init = file_has_zero_init,
    .supported_write_flags = BDRV_REQ_FUA,
    .supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK,
};
