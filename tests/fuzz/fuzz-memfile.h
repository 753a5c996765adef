/*
 * fuzz-memfile.h - the in-memory protocol the image-format harnesses open
 * their input through (fuzz_file holds the input; writes may grow it up to
 * FUZZ_FILE_CAP), and the libFuzzer initialisation that registers it.
 * Included by one harness per binary (tests/fuzz/fuzz-vdi.c, fuzz-qcow2.c).
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

static struct { uint8_t *data; size_t size; } fuzz_file;

static int ff_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)options; (void)flags; (void)errp;
    bs->growable = true;
    bdrv_set_total_bytes(bs, fuzz_file.size);
    return 0;
}

static int coroutine_fn ff_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)bs; (void)flags;
    size_t have = offset < (int64_t)fuzz_file.size ? MIN((size_t)bytes, fuzz_file.size - offset) : 0;
    iov_from_buf(qiov, qiov_offset, fuzz_file.data + (have ? offset : 0), have);
    iov_memset(qiov, qiov_offset + have, 0, bytes - have);
    return 0;
}

static int coroutine_fn ff_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)flags;
    if (offset + bytes > FUZZ_FILE_CAP) {
        return -ENOSPC;
    }
    if ((size_t)(offset + bytes) > fuzz_file.size) {
        uint8_t *p = realloc(fuzz_file.data, offset + bytes);
        if (!p) {
            return -ENOMEM;
        }
        memset(p + fuzz_file.size, 0, offset + bytes - fuzz_file.size);
        fuzz_file.data = p;
        fuzz_file.size = offset + bytes;
        bdrv_set_total_bytes(bs, fuzz_file.size);
    }
    iov_to_buf(qiov, qiov_offset, fuzz_file.data + offset, bytes);
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
    .instance_size = sizeof(int),
    .open = ff_open,
    .co_preadv = ff_preadv,
    .co_pwritev = ff_pwritev,
    .co_flush_to_disk = ff_flush,
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
