/*
 * fuzz-qcow2.c - libFuzzer harness for the qcow2 driver: the input is the
 * image file, held by a tiny in-memory protocol driver; the harness opens it
 * read-only as qcow2 (no backing file), reads the start and the end of the
 * disk and walks block status; opens it read-write and closes it (the
 * persistent bitmaps loaded, marked in use and stored again); then runs
 * `img check` on it, and `check -r all` on the in-memory copy followed by a
 * second check.  Any crash,
 * sanitizer report or hang is a bug; errors are fine.  One property: two
 * checks in a row, on the image as it came and after the repair, say the
 * same (a check changes nothing, caches included).  "Clean after -r all"
 * is not one: QEMU's rebuild can end with "rebuilt refcount structure is
 * still broken" and report no corruption left, and we count as QEMU does.
 * Built and run by tests/fuzz/run.sh.
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

static BlockDriverState *open_qcow2(int flags)
{
    Error *err = NULL;
    OptDict *opts = optdict_new();
    optdict_set(opts, "driver", "qcow2");
    optdict_set(opts, "file", "fuzzfile");
    optdict_set(opts, "l2-cache-size", "64k");
    BlockDriverState *bs = bdrv_open(NULL, opts, flags, &err);
    error_free(err);
    return bs;
}

/* Two plain checks of bs agree. */
static void check_twice(BlockDriverState *bs)
{
    BdrvCheckResult a, b;
    int ra = bdrv_check(bs, &a, 0), rb = bdrv_check(bs, &b, 0);
    if (ra != rb || memcmp(&a, &b, sizeof(a))) {
        abort();
    }
}

/* check, then check -r all and check again (the input is already a copy). */
static void check_and_repair(void)
{
    BdrvCheckResult r;
    BlockDriverState *bs = open_qcow2(BDRV_O_NO_BACKING | BDRV_O_CHECK);
    if (bs) {
        check_twice(bs);
        bdrv_unref(bs);
    }
    bs = open_qcow2(BDRV_O_NO_BACKING | BDRV_O_CHECK | BDRV_O_RDWR);
    if (!bs) {
        return;
    }
    if (bdrv_check(bs, &r, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS) == 0) {
        check_twice(bs);
    }
    bdrv_unref(bs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Error *err = NULL;
    BlockDriverState *file, *bs;
    OptDict *opts;

    fuzz_file_load(data, size);

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
    /* A writable open loads the persistent bitmaps (tables and data), marks
     * them in use, and its close stores them again: crafted directories and
     * tables through the whole bitmap path, then the checks below. */
    bs = open_qcow2(BDRV_O_NO_BACKING | BDRV_O_RDWR);
    if (bs) {
        bdrv_unref(bs);
    }
    check_and_repair();
    bdrv_unref(file);
    fuzz_file_reset();
    return 0;
}
