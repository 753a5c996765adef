/*
 * file-int.h - what the parts of the file protocol driver share: its state,
 * the image locks (file-lock.c) and the request callbacks (file-io.c);
 * open, reopen, limits, size and create are in file.c.
 */
#ifndef UBLKD_FILE_INT_H
#define UBLKD_FILE_INT_H

#include "block-driver.h"

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
    int locking;                 /* LockingMode; OFF too where locks do not work */
    unsigned perm, shared;       /* the permissions the lock bytes stand for */
    int reopen_fd;               /* between reopen prepare and commit/abort */
} FileState;

static inline bool flag_get(const bool *f)
{
    return __atomic_load_n(f, __ATOMIC_RELAXED);
}

static inline void flag_set(bool *f)
{
    __atomic_store_n(f, true, __ATOMIC_RELAXED);
}

/* ---- image locking (file-lock.c) ---- */
/* Bit i of a BLK_PERM_* set is lock byte LOCK_PERM_BASE + i (held by every
 * user that has permission i) and LOCK_SHARED_BASE + i (held by every user
 * that does not let others have it). */
#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200
typedef enum { LOCKING_AUTO, LOCKING_ON, LOCKING_OFF } LockingMode;

/* The locking mode to use (takes "locking" from options), or -1 after
 * setting errp. */
int file_locking_mode(OptDict *options, Error **errp);
/* Take the bytes for holding perm while sharing only shared: 1 if locked,
 * 0 if the file system cannot lock and mode is auto, else -errno. */
int file_lock_apply(int fd, LockingMode mode, unsigned perm, unsigned shared,
                    const char *path, Error **errp);
/* Check nobody else conflicts with perm/shared: 1, 0 (as above), -errno. */
int file_lock_check(int fd, LockingMode mode, unsigned perm, unsigned shared,
                    const char *path, Error **errp);
/* Apply, then check. */
int file_lock_image(int fd, LockingMode mode, unsigned perm, unsigned shared,
                    const char *path, Error **errp);
/* Drop every lock byte fd holds. */
void file_unlock_image(int fd);
/* Drop the bytes fd holds beyond those for holding perm and sharing shared. */
void file_lock_keep_only(int fd, unsigned perm, unsigned shared);
/* ---- request callbacks (file-io.c) ---- */
int coroutine_fn file_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn file_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                 IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn file_co_flush(BlockDriverState *bs);
int coroutine_fn file_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                       BdrvRequestFlags flags);
int coroutine_fn file_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes);
int coroutine_fn file_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                                      int64_t bytes, int64_t *pnum, int64_t *map,
                                      BlockDriverState **file);

#endif
