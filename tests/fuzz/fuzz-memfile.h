/*
 * fuzz-memfile.h - the in-memory protocol the image-format harnesses open
 * their input through (fuzz_file holds the input; writes may grow it up to
 * FUZZ_FILE_CAP, or fuzz_file.cap when set), and the libFuzzer
 * initialisation that registers it.  It is also the protocol "fuzzfile:",
 * so a format's create can make an image in it (create empties the file).
 * fuzz_file.yield, when set, is asked before each read and write whether
 * the request should let other coroutines run first (as real I/O would);
 * fuzz_file.refuse_growth before each write past the end whether it fails
 * with -ENOSPC this time.  native_zeroes and discard_scribbles choose how
 * the file zeroes and discards (see there).
 * Included by one harness per binary (tests/fuzz/fuzz-vdi.c, fuzz-qcow2.c,
 * fuzz-qcow2-write.c).
 */
#ifndef UBLKD_FUZZ_MEMFILE_H
#define UBLKD_FUZZ_MEMFILE_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-driver.h"

/* Writes may grow the file up to this, so allocations are exercised but a
 * crafted image cannot make the harness eat memory. */
#define FUZZ_FILE_CAP ((int64_t)(24 * MiB))

static struct {
    uint8_t *data;
    size_t size, alloc;         /* alloc: bytes allocated at data */
    int64_t cap;                /* 0: FUZZ_FILE_CAP */
    bool (*yield)(void);        /* NULL: never yield */
    bool (*refuse_growth)(void);    /* NULL: growth within the cap succeeds */
    bool native_zeroes;         /* open: zeroes with MAY_UNMAP and NO_FALLBACK */
    bool discard_scribbles;     /* a discard leaves 0xdd, not the old bytes */
} fuzz_file;

static inline void fuzz_file_reset(void)
{
    free(fuzz_file.data);
    fuzz_file.data = NULL;
    fuzz_file.size = fuzz_file.alloc = 0;
}

/* The file holds a copy of data. */
static inline void fuzz_file_load(const uint8_t *data, size_t size)
{
    fuzz_file_reset();
    fuzz_file.data = malloc(size ? size : 1);
    if (!fuzz_file.data) {
        abort();
    }
    memcpy(fuzz_file.data, data, size);
    fuzz_file.size = fuzz_file.alloc = size;
}

static int ff_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)flags; (void)errp;
    char *filename = NULL;
    optdict_take_str(options, "filename", NULL, &filename);     /* "fuzzfile:..." */
    free(filename);
    bs->growable = true;
    bs->supported_zero_flags = fuzz_file.native_zeroes ? BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK : 0;
    bdrv_set_total_bytes(bs, fuzz_file.size);
    return 0;
}

static int64_t ff_cap(void)
{
    return fuzz_file.cap ? fuzz_file.cap : FUZZ_FILE_CAP;
}

static void ff_wake(void *opaque)
{
    aio_co_wake(opaque);
}

static void coroutine_fn ff_maybe_yield(void)
{
    if (fuzz_file.yield && fuzz_file.yield()) {
        aio_bh_schedule_oneshot(aio_current(), ff_wake, co_self());
        co_yield();
    }
}

/* Grow the file to end bytes (zeros), within the cap. */
static int ff_grow(BlockDriverState *bs, int64_t end)
{
    if (end > ff_cap()) {
        return -ENOSPC;
    }
    if ((size_t)end > fuzz_file.size && fuzz_file.refuse_growth && fuzz_file.refuse_growth()) {
        return -ENOSPC;             /* a full file system that may have room later */
    }
    if ((size_t)end > fuzz_file.size) {
        /* geometric, or a file grown a cluster at a time copies quadratically */
        size_t have = fuzz_file.alloc;
        if ((size_t)end > have) {
            size_t want = MAX((size_t)end, 2 * have);
            uint8_t *p = realloc(fuzz_file.data, want);
            if (!p) {
                return -ENOMEM;
            }
            fuzz_file.data = p;
            fuzz_file.alloc = want;
        }
        memset(fuzz_file.data + fuzz_file.size, 0, end - fuzz_file.size);
        fuzz_file.size = end;
        bdrv_set_total_bytes(bs, fuzz_file.size);
    }
    return 0;
}

/* A read of [offset, offset+bytes) from the size bytes at data: zeros past them. */
static inline void fuzz_buf_read(const uint8_t *data, size_t size, int64_t offset, int64_t bytes,
                                 IOVector *qiov, size_t qiov_offset)
{
    size_t have = offset < (int64_t)size ? MIN((size_t)bytes, size - offset) : 0;
    iov_from_buf(qiov, qiov_offset, data + (have ? offset : 0), have);
    iov_memset(qiov, qiov_offset + have, 0, bytes - have);
}

static int coroutine_fn ff_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)bs; (void)flags;
    ff_maybe_yield();
    fuzz_buf_read(fuzz_file.data, fuzz_file.size, offset, bytes, qiov, qiov_offset);
    return 0;
}

static int coroutine_fn ff_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)flags;
    ff_maybe_yield();
    int ret = ff_grow(bs, offset + bytes);
    if (ret < 0) {
        return ret;
    }
    iov_to_buf(qiov, qiov_offset, fuzz_file.data + offset, bytes);
    return 0;
}

/* Zeroes grow the file as writes do (fallocate without KEEP_SIZE). */
static int coroutine_fn ff_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                         BdrvRequestFlags flags)
{
    (void)flags;
    ff_maybe_yield();
    size_t old = fuzz_file.size;
    int ret = ff_grow(bs, offset + bytes);
    if (ret < 0) {
        return ret;
    }
    if ((size_t)offset < old) {
        memset(fuzz_file.data + offset, 0, MIN((size_t)bytes, old - offset));
    }
    return 0;
}

/* What a discarded range reads as is not promised: with discard_scribbles
 * it is garbage, so nothing can depend on it. */
static int coroutine_fn ff_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    (void)bs;
    ff_maybe_yield();
    if (fuzz_file.discard_scribbles && (size_t)offset < fuzz_file.size) {
        memset(fuzz_file.data + offset, 0xdd, MIN((size_t)bytes, fuzz_file.size - offset));
    }
    return 0;
}

/* Only growth (metadata preallocation); the cap holds as for writes. */
static int coroutine_fn ff_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                    PreallocMode prealloc, BdrvRequestFlags flags, Error **errp)
{
    (void)exact; (void)prealloc; (void)flags;
    int ret = (size_t)offset >= fuzz_file.size ? ff_grow(bs, offset) : -ENOTSUP;
    if (ret < 0) {
        error_setg_errno(errp, -ret, "fuzzfile: cannot resize to %lld", (long long)offset);
    }
    return ret;
}

/* "fuzzfile:NAME": the in-memory file, emptied (its memory is kept for the
 * next image: ASan maps and unmaps big blocks on every allocation). */
static int coroutine_fn ff_create(const char *filename, OptDict *opts, Error **errp)
{
    (void)filename; (void)opts; (void)errp;
    fuzz_file.size = 0;
    return 0;
}

static int coroutine_fn ff_flush(BlockDriverState *bs)
{
    (void)bs;
    return 0;
}

static int64_t ff_getlength(BlockDriverState *bs)
{
    (void)bs;
    return fuzz_file.size;
}

static const BlockDriver fuzz_file_drv = {
    .format_name = "fuzzfile",
    .protocol_names = { "fuzzfile" },
    .instance_size = sizeof(int),
    .open = ff_open,
    .co_preadv = ff_preadv,
    .co_pwritev = ff_pwritev,
    .co_pwrite_zeroes = ff_pwrite_zeroes,
    .co_pdiscard = ff_pdiscard,
    .co_flush_to_disk = ff_flush,
    .co_truncate = ff_truncate,
    .co_create = ff_create,
    .getlength = ff_getlength,
};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    Error *err = NULL;
    if (!aio_main_init(&err)) {
        error_report_err(err);
        abort();
    }
    bdrv_register(&fuzz_file_drv);
    return 0;
}

#endif
