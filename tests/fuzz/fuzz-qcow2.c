/*
 * fuzz-qcow2.c - libFuzzer harness for the qcow2 driver: the input is the
 * image file, held by a tiny in-memory protocol driver; the harness opens it
 * read-only as qcow2 (no backing file), reads the start and the end of the
 * disk and walks block status.  Any crash, sanitizer report or hang is a
 * bug; errors are fine.  Built and run by tests/fuzz/run.sh.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-driver.h"

#include "fuzz-memfile.h"

static void exercise(BlockDriverState *bs)
{
    static uint8_t buf[2 * MiB];
    BdrvChild *child;
    Error *err = NULL;
    int64_t len = bdrv_getlength(bs), off, pnum, map;
    BlockDriverState *file;
    ImageSpecificInfo info = { 0 };

    bdrv_ref(bs);
    child = bdrv_attach_child(NULL, bs, "fuzz", BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, &err);
    if (!child) {
        error_free(err);
        return;
    }
    if (len > 0) {
        bdrv_pread(child, 0, MIN(len, (int64_t)sizeof(buf)), buf, 0);
        off = len > (int64_t)sizeof(buf) ? len - (int64_t)sizeof(buf) : 0;
        bdrv_pread(child, off, MIN(len, (int64_t)sizeof(buf)), buf, 0);
        bdrv_pread(child, len / 2, MIN(len - len / 2, (int64_t)4096), buf, 0);
        for (off = 0; off < len && off < 64 * (int64_t)MiB; off += pnum) {
            if (bdrv_block_status_above(bs, NULL, off, len - off, &pnum, &map, &file) < 0 ||
                pnum <= 0) {
                break;
            }
        }
    }
    if (bs->drv->get_specific_info) {
        bs->drv->get_specific_info(bs, &info);
        image_info_free(&info);
    }
    bdrv_unref_child(NULL, child);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Error *err = NULL;
    BlockDriverState *file, *bs;
    OptDict *opts;

    fuzz_file.data = malloc(size ? size : 1);
    memcpy(fuzz_file.data, data, size);
    fuzz_file.size = size;

    file = bdrv_new_open_driver(&fuzz_file_drv, "fuzzfile", BDRV_O_RDWR, NULL, &err);
    if (!file) {
        abort();
    }
    opts = optdict_new();
    optdict_set(opts, "driver", "qcow2");
    optdict_set(opts, "file", "fuzzfile");
    optdict_set(opts, "l2-cache-size", "64k");
    bs = bdrv_open(NULL, opts, BDRV_O_NO_BACKING, &err);
    if (bs) {
        exercise(bs);
        bdrv_unref(bs);
    } else {
        error_free(err);
    }
    bdrv_unref(file);
    free(fuzz_file.data);
    fuzz_file.data = NULL;
    return 0;
}
