/*
 * file.c - the "file" protocol driver: regular files and block devices.
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
 * from writing one image, or one reading it while another writes: see
 * "image locking" below.
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
#include "block-io-int.h"
#include "iov-fixed.h"

typedef struct FileState {
    int fd;
    bool is_bdev;
    bool direct;
    uint32_t req_align;          /* O_DIRECT offset/length alignment, 1 when buffered */
    size_t buf_align;            /* O_DIRECT buffer alignment */
    /* What the file system turned down; set from any queue thread. */
    bool no_zero_range;
    bool no_punch_hole;
    bool no_fallocate;
    pid_t lock_pid;              /* process that took the lock bytes, 0 = none */
    int locking;                 /* LockingMode, for a reopen */
    int reopen_fd;               /* between reopen prepare and commit/abort */
} FileState;

static bool flag_get(const bool *f)
{
    return __atomic_load_n(f, __ATOMIC_RELAXED);
}

static void flag_set(bool *f)
{
    __atomic_store_n(f, true, __ATOMIC_RELAXED);
}

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

/* ---- image locking ----
 *
 * QEMU's byte layout (block/file-posix.c), so that ublkd and QEMU processes
 * see each other: byte 100+i is held by every user that has permission i,
 * byte 200+i by every user that does not let others have it.  Every lock is
 * a read lock (a read-only fd can take it); a conflict is found by asking
 * whether a write lock on the other side's byte would be refused.  Taking
 * first and checking second means two racing openers cannot both miss each
 * other.  OFD locks belong to the open file description: they conflict with
 * another open of the same file in the same process, survive fork for as
 * long as any process keeps the fd, and would go away only with the last
 * reference to the description.  io_uring can hold such a reference after
 * our close(): under DEFER_TASKRUN a request that an io-wq worker ran (fsync,
 * fallocate, a write the file system would block on) may be freed by the
 * worker after we reaped its completion, and that free - with its fput -
 * waits in the ring's task-work list until the ring is entered again, or
 * until the ring's exit work runs in a kernel thread after the process is
 * gone.  Locks tied to that reference outlived the close by milliseconds and
 * made the next open fail (a convert target reopened right after creation,
 * qemu-img right after ublkd).  So file_close drops the bytes itself - but
 * only in the process that took them: a forked copy closing its inherited fd
 * must not unlock the description its parent still uses.
 */
enum {
    PERM_CONSISTENT_READ = 1 << 0,
    PERM_WRITE = 1 << 1,
    PERM_WRITE_UNCHANGED = 1 << 2,
    PERM_RESIZE = 1 << 3,
    PERM_ALL = (1 << 4) - 1,
};
#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

static const char *const perm_names[] = { "consistent read", "write", "write unchanged",
                                          "resize" };

typedef enum { LOCKING_AUTO, LOCKING_ON, LOCKING_OFF } LockingMode;
static const char *const locking_names[] = { "auto", "on", "off", NULL };

static bool have_ofd_locks(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET };
        v = fd >= 0 && (fcntl(fd, F_OFD_GETLK, &fl) == 0 || errno != EINVAL);
        if (fd >= 0) {
            close(fd);
        }
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* "This file system cannot lock" rather than "somebody holds the lock". */
static bool lock_unsupported(int err)
{
    return err == EINVAL || err == ENOTSUP || err == EOPNOTSUPP || err == ENOLCK ||
           err == ENOSYS;
}

static int lock_byte(int fd, int byte)
{
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 0 if nobody else holds byte, -EAGAIN if someone does, else -errno. */
static int test_byte(int fd, int byte)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

/*
 * Take the lock bytes for holding perm while sharing only `shared`, then
 * check nobody conflicts.  Returns 1 if locked, 0 if the file system cannot
 * lock and mode is auto (QEMU's auto only looks at the kernel; on NFS without
 * lockd that fails every open, so ublkd goes on unlocked there), -errno on a
 * conflict or error.  On failure the caller closes fd, which drops the bytes
 * taken so far.
 */
static int lock_apply(int fd, LockingMode mode, unsigned perm, unsigned shared,
                      const char *path, Error **errp)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < (int)ARRAY_SIZE(perm_names); i++) {
            bool want = pass == 0 ? perm & (1u << i) : !(shared & (1u << i));
            int byte = (pass == 0 ? LOCK_PERM_BASE : LOCK_SHARED_BASE) + i;
            int ret = want ? lock_byte(fd, byte) : 0;
            if (ret < 0) {
                if (mode == LOCKING_AUTO && lock_unsupported(-ret)) {
                    return 0;
                }
                error_setg_errno(errp, -ret, "Failed to lock byte %d of '%s'", byte, path);
                return ret;
            }
        }
    }
    return 1;
}

static int lock_check(int fd, LockingMode mode, unsigned perm, unsigned shared,
                      const char *path, Error **errp)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < (int)ARRAY_SIZE(perm_names); i++) {
            /* What we hold must not be unshared by others; what we do not
             * share must not be held by others. */
            bool check = pass == 0 ? perm & (1u << i) : !(shared & (1u << i));
            int byte = (pass == 0 ? LOCK_SHARED_BASE : LOCK_PERM_BASE) + i;
            int ret = check ? test_byte(fd, byte) : 0;
            if (ret == -EAGAIN) {
                error_setg_code(errp, EAGAIN, "Failed to get %s\"%s\" lock\n"
                           "Is another process using the image [%s]?",
                           pass == 0 ? "" : "shared ", perm_names[i], path);
                return ret;
            }
            if (ret < 0) {
                if (mode == LOCKING_AUTO && lock_unsupported(-ret)) {
                    return 0;
                }
                error_setg_errno(errp, -ret, "Failed to check lock byte %d of '%s'", byte, path);
                return ret;
            }
        }
    }
    return 1;
}

static int lock_image(int fd, LockingMode mode, unsigned perm, unsigned shared,
                      const char *path, Error **errp)
{
    int ret = lock_apply(fd, mode, perm, shared, path, errp);
    return ret <= 0 ? ret : lock_check(fd, mode, perm, shared, path, errp);
}

static void unlock_image(int fd)
{
    struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = LOCK_PERM_BASE,
                        .l_len = LOCK_SHARED_BASE + 100 - LOCK_PERM_BASE };
    (void)fcntl(fd, F_OFD_SETLK, &fl);   /* nothing to do about a failure at close */
}

/* What an open with flags holds, and what it lets others do. */
#define LOCK_SHARED_PERM (PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
static unsigned lock_perm(int flags)
{
    return PERM_CONSISTENT_READ | ((flags & BDRV_O_RDWR) ? PERM_WRITE | PERM_RESIZE : 0);
}

/* The locking mode to use, or -1 after setting errp. */
static int locking_mode(OptDict *options, Error **errp)
{
    int mode = optdict_take_enum(options, "locking", locking_names, LOCKING_AUTO, errp);
    if (mode < 0) {
        return -1;
    }
    if (mode == LOCKING_AUTO && !have_ofd_locks()) {
        return LOCKING_OFF;
    }
    if (mode == LOCKING_ON && !have_ofd_locks()) {
        error_setg(errp, "locking=on: this kernel has no OFD locks (F_OFD_SETLK)");
        return -1;
    }
    return mode;
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

    int locking = locking_mode(options, errp);
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
    /* As a format's file child in QEMU: others may read, nobody else may
     * write or resize.  force-share (read-only) takes nothing at all. */
    s->locking = locking;
    s->reopen_fd = -1;
    if (locking != LOCKING_OFF && !(flags & BDRV_O_FORCE_SHARE)) {
        ret = lock_image(s->fd, (LockingMode)locking, lock_perm(flags), LOCK_SHARED_PERM, path,
                         errp);
        if (ret < 0) {
            goto fail;
        }
        s->lock_pid = ret ? getpid() : 0;
        ret = -EINVAL;
    }
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
    if (s->lock_pid) {
        unlock_image(s->fd);
        s->lock_pid = 0;
    }
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
            unlock_image(s->fd);
        }
        close(s->fd);
        s->fd = -1;
    }
}

/*
 * Read-only <-> read-write (inside a drained section: no request uses the
 * fd).  A new fd with the new access mode takes the new lock bytes before
 * the old fd lets its own go, so no byte is ever free for another process
 * to take in between; the conflict check comes after, from the new fd, once
 * our old description no longer holds bytes that the check would see as
 * someone else's.
 */
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
    if (s->lock_pid) {
        LockingMode mode = (LockingMode)s->locking;
        int ret = lock_apply(fd, mode, lock_perm(flags), LOCK_SHARED_PERM, path, errp);
        if (ret > 0) {
            unlock_image(s->fd);
            ret = lock_check(fd, mode, lock_perm(flags), LOCK_SHARED_PERM, path, errp);
            if (ret < 0) {
                /* Read locks: taking the old ones back cannot conflict. */
                lock_apply(s->fd, mode, lock_perm(bs->open_flags), LOCK_SHARED_PERM, path, NULL);
            }
        }
        if (ret < 0) {
            unlock_image(fd);
            close(fd);
            return ret;
        }
    }
    s->reopen_fd = fd;
    return 0;
}

static void file_reopen_commit(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    close(s->fd);   /* its lock bytes went in prepare */
    s->fd = s->reopen_fd;
    s->reopen_fd = -1;
}

static void file_reopen_abort(BlockDriverState *bs)
{
    FileState *s = bs->opaque;
    if (s->lock_pid) {
        lock_apply(s->fd, (LockingMode)s->locking, lock_perm(bs->open_flags), LOCK_SHARED_PERM,
                   bs->filename, NULL);
        unlock_image(s->reopen_fd);
    }
    close(s->reopen_fd);
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
    int i = 0, n = 0;
    while (i < qiov->niov && off >= qiov->iov[i].iov_len) {
        off -= qiov->iov[i++].iov_len;
    }
    size_t left = bytes, o = off;
    for (int k = i; k < qiov->niov && left; k++, n++) {
        left -= MIN(left, qiov->iov[k].iov_len - o);
        o = 0;
    }
    /* Rare (many segments): one allocation rather than a wrong answer. */
    sl->iov = n <= FILE_STACK_IOVS ? sl->stack : malloc((size_t)n * sizeof(struct iovec));
    if (!sl->iov) {
        return -ENOMEM;
    }
    sl->niov = n;
    left = bytes;
    for (int k = 0; k < n; k++, i++) {
        size_t len = MIN(left, qiov->iov[i].iov_len - off);
        sl->iov[k].iov_base = (char *)qiov->iov[i].iov_base + off;
        sl->iov[k].iov_len = len;
        left -= len;
        off = 0;
    }
    return 0;
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

static int coroutine_fn file_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
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

static void note_growth(BlockDriverState *bs, int64_t end)
{
    int64_t cur = __atomic_load_n(&bs->total_bytes, __ATOMIC_RELAXED);
    while (end > cur &&
           !__atomic_compare_exchange_n(&bs->total_bytes, &cur, end, true,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static int coroutine_fn file_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
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
        note_growth(bs, offset + bytes);
    }
    return ret;
}

static int coroutine_fn file_co_flush(BlockDriverState *bs)
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

static int coroutine_fn file_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
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

    int64_t eof = __atomic_load_n(&bs->total_bytes, __ATOMIC_RELAXED);
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
            note_growth(bs, offset + bytes);
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
            note_growth(bs, offset + bytes);
        }
        return ret;
    }
    return -ENOTSUP;
}

static int coroutine_fn file_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    FileState *s = bs->opaque;
    if (bs->read_only) {
        return -EPERM;
    }
    int64_t end = offset + bytes;
    if (!s->is_bdev) {
        /* Nothing to drop beyond EOF, and KEEP_SIZE means it stays so. */
        end = MIN(end, __atomic_load_n(&bs->total_bytes, __ATOMIC_RELAXED));
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
static int coroutine_fn file_co_block_status(BlockDriverState *bs, bool want_zero,
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
        error_setg(errp, "Preallocation mode 'metadata' is not supported by the file "
                   "protocol ('%s')", name);
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
        __atomic_store_n(&bs->total_bytes, offset, __ATOMIC_RELAXED);
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
    int prealloc = optdict_take_enum(opts, "preallocation", prealloc_names,
                                     PREALLOC_MODE_OFF, errp);
    if (prealloc < 0) {
        return -EINVAL;
    }
    int locking = locking_mode(opts, errp);
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
        ret = lock_image(fd, (LockingMode)locking, PERM_WRITE | PERM_RESIZE,
                         PERM_ALL & ~PERM_RESIZE, path, errp);
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
    .instance_size = sizeof(FileState),
    .is_format = false,
    .open = file_open,
    .close = file_close,
    .refresh_limits = file_refresh_limits,
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
