/*
 * fuzz-vdi.c - libFuzzer harness for the vdi driver: the input is the image
 * file, held by a tiny in-memory protocol driver; the harness opens it as
 * vdi, reads the start and the end of the disk, walks block status, runs
 * check, writes a little (allocation, zeroes, discard) and checks again.
 * Any crash, sanitizer report or hang is a bug; errors are fine.
 * Built and run by tests/fuzz/run.sh.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-driver.h"

#include "fuzz-memfile.h"

typedef struct FuzzDiscard {
    BdrvChild *child;
    int64_t offset, bytes;
} FuzzDiscard;

static void coroutine_fn fuzz_discard_co(void *opaque)
{
    FuzzDiscard *d = opaque;
    bdrv_co_pdiscard(d->child, d->offset, d->bytes);
}

static void exercise(BlockDriverState *vdi)
{
    static uint8_t buf[2 * MiB];
    BdrvChild *child;
    Error *err = NULL;
    int64_t len = bdrv_getlength(vdi), off, pnum, map;
    BlockDriverState *file;
    BdrvCheckResult res = { 0 };

    bdrv_ref(vdi);
    child = bdrv_attach_child(NULL, vdi, "fuzz", BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, &err);
    if (!child) {
        error_free(err);
        return;
    }
    if (len > 0) {
        bdrv_pread(child, 0, MIN(len, (int64_t)sizeof(buf)), buf, 0);
        off = len > (int64_t)sizeof(buf) ? len - (int64_t)sizeof(buf) : 0;
        bdrv_pread(child, off, MIN(len, (int64_t)sizeof(buf)), buf, 0);
        for (off = 0; off < len && off < 64 * (int64_t)MiB; off += pnum) {
            if (bdrv_block_status_above(vdi, NULL, off, len - off, &pnum, &map, &file) < 0 ||
                pnum <= 0) {
                break;
            }
        }
    }
    bdrv_check(vdi, &res, 0);
    if (len > 0) {
        memset(buf, 0x5a, 4096);
        bdrv_pwrite(child, 0, MIN(len, (int64_t)4096), buf, 0);
        bdrv_pwrite(child, len - MIN(len, (int64_t)512), MIN(len, (int64_t)512), buf, 0);
        bdrv_pwrite_zeroes(child, len / 2, MIN(len - len / 2, (int64_t)(3 * MiB)), 0);
        FuzzDiscard d = { child, len / 4, MIN(len - len / 4, (int64_t)(5 * MiB) / 2) };
        aio_co_run_sync(fuzz_discard_co, &d);
        bdrv_pread(child, 0, MIN(len, (int64_t)sizeof(buf)), buf, 0);
    }
    memset(&res, 0, sizeof(res));
    bdrv_check(vdi, &res, BDRV_FIX_ERRORS | BDRV_FIX_LEAKS);
    bdrv_unref_child(NULL, child);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Error *err = NULL;
    BlockDriverState *file, *vdi;
    OptDict *opts;

    fuzz_file_load(data, size);

    file = bdrv_new_open_driver(&fuzz_file_drv, "fuzzfile", BDRV_O_RDWR, NULL, &err);
    if (!file) {
        abort();
    }
    opts = optdict_new();
    optdict_set(opts, "driver", "vdi");
    optdict_set(opts, "file", "fuzzfile");
    vdi = bdrv_open(NULL, opts, BDRV_O_RDWR, &err);
    if (vdi) {
        exercise(vdi);
        bdrv_unref(vdi);
    } else {
        error_free(err);
    }
    bdrv_unref(file);
    fuzz_file_reset();
    return 0;
}
