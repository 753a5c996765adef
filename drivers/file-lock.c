/*
 * file-lock.c - image locks of the file protocol, as QEMU's file-posix takes
 * them, so that ublkd and QEMU processes see each other.  Which permissions
 * to lock for is file.c's business (the node's cumulative permissions);
 * these functions take, test and drop the bytes of one fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include "file-int.h"

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
static const char *const perm_names[] = { "consistent read", "write", "write unchanged",
                                          "resize" };

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
int file_lock_apply(int fd, LockingMode mode, unsigned perm, unsigned shared,
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

int file_lock_check(int fd, LockingMode mode, unsigned perm, unsigned shared,
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

int file_lock_image(int fd, LockingMode mode, unsigned perm, unsigned shared,
                    const char *path, Error **errp)
{
    int ret = file_lock_apply(fd, mode, perm, shared, path, errp);
    return ret <= 0 ? ret : file_lock_check(fd, mode, perm, shared, path, errp);
}

void file_unlock_image(int fd)
{
    struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = LOCK_PERM_BASE,
                        .l_len = LOCK_SHARED_BASE + 100 - LOCK_PERM_BASE };
    (void)fcntl(fd, F_OFD_SETLK, &fl);   /* nothing to do about a failure at close */
}

/* The locking mode to use, or -1 after setting errp. */
int file_locking_mode(OptDict *options, Error **errp)
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

void file_lock_keep_only(int fd, unsigned perm, unsigned shared)
{
    for (int i = 0; i < (int)ARRAY_SIZE(perm_names); i++) {
        int bytes[2] = { !(perm & (1u << i)) ? LOCK_PERM_BASE + i : -1,
                         (shared & (1u << i)) ? LOCK_SHARED_BASE + i : -1 };
        for (int k = 0; k < 2; k++) {
            if (bytes[k] >= 0) {
                struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET,
                                    .l_start = bytes[k], .l_len = 1 };
                (void)fcntl(fd, F_OFD_SETLK, &fl);   /* unlocking a byte cannot conflict */
            }
        }
    }
}
