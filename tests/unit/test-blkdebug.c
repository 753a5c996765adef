/*
 * test-blkdebug.c - the fault-injection filter over an in-memory node:
 * rules by event/offset/once, errno values, align= and max-transfer= as seen
 * by the child, option errors; under a format the filter's image is a
 * protocol (a VDI file read through raw/blkdebug shows its own bytes).
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#ifdef CONFIG_VDI
#include "vdi-image.h"
#endif

static BlockDriverState *mem;

static int setup_each(void **state)
{
    (void)state;
    test_loop_init();
    MemConfig cfg = { .size = 1 * MiB, .node_name = "memimg" };
    mem = mem_node_new(&cfg);
    return 0;
}

static int teardown_each(void **state)
{
    (void)state;
    bdrv_unref(mem);
    return 0;
}

static BlockDriverState *open_dbg(const char *opts, Error **errp)
{
    OptDict *o = optdict_parse(opts, NULL, NULL);
    assert_non_null(o);
    optdict_set(o, "driver", "blkdebug");
    optdict_set(o, "image", "memimg");
    return bdrv_open(NULL, o, BDRV_O_RDWR | BDRV_O_UNMAP, errp);
}

static void test_passthrough(void **state)
{
    (void)state;
    Error *err = NULL;
    BlockDriverState *bs = open_dbg("", &err);
    assert_non_null(bs);
    assert_ptr_equal(bs->file->bs, mem);
    assert_string_equal(bs->file->name, "image");
    assert_ptr_equal(bdrv_skip_filters(bs), mem);
    assert_int_equal(bdrv_getlength(bs), 1 * MiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t w[4096], r[4096];
    test_pattern(w, sizeof(w), 1);
    assert_int_equal(bdrv_pwrite(c, 8192, sizeof(w), w, 0), 0);
    assert_int_equal(bdrv_pread(c, 8192, sizeof(r), r, 0), 0);
    assert_memory_equal(r, w, sizeof(w));
    mem_read_raw(mem, 8192, r, sizeof(r));
    assert_memory_equal(r, w, sizeof(w));
    test_child_free(c);
    bdrv_unref(bs);
}

/* A format over blkdebug appends past the end of the file (vdi allocating a
 * block): the filter must be as growable as its child. */
static void test_growable_follows_child(void **state)
{
    (void)state;
    Error *err = NULL;
    MemConfig cfg = { .size = 64 * 1024, .growable = true, .node_name = "growimg" };
    BlockDriverState *grow = mem_node_new(&cfg);
    OptDict *o = optdict_new();
    optdict_set(o, "driver", "blkdebug");
    optdict_set(o, "image", "growimg");
    BlockDriverState *bs = bdrv_open(NULL, o, BDRV_O_RDWR, &err);
    assert_non_null(bs);
    assert_true(bs->growable);
    BdrvChild *c = test_child_new(bs);
    uint8_t w[4096], r[4096];
    test_pattern(w, sizeof(w), 7);
    assert_int_equal(bdrv_pwrite(c, 1 * MiB, sizeof(w), w, 0), 0);
    assert_int_equal(mem_size(grow), 1 * MiB + 4096);
    assert_int_equal(bdrv_pread(c, 1 * MiB, sizeof(r), r, 0), 0);
    assert_memory_equal(r, w, sizeof(w));
    test_child_free(c);
    bdrv_unref(bs);
    bdrv_unref(grow);

    /* and not growable over a fixed-size child */
    bs = open_dbg("", &err);
    assert_non_null(bs);
    assert_false(bs->growable);
    c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite(c, 1 * MiB, sizeof(w), w, 0), -EIO);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_read_error_at_offset_once(void **state)
{
    (void)state;
    Error *err = NULL;
    BlockDriverState *bs = open_dbg("inject-error.0.event=read,inject-error.0.errno=5,"
                                    "inject-error.0.offset=65536,inject-error.0.once=on", &err);
    assert_non_null(bs);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[4096];
    /* Not covering the offset: fine. */
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    int reads = mem_calls(mem, MEM_OP_READ);
    /* Covering it: fails, without reaching the child. */
    assert_int_equal(bdrv_pread(c, 64 * KiB - 100, 200, buf, 0), -EIO);
    assert_int_equal(mem_calls(mem, MEM_OP_READ), reads);
    /* Once: the next one passes. */
    assert_int_equal(bdrv_pread(c, 64 * KiB, sizeof(buf), buf, 0), 0);
    /* Writes were never affected. */
    assert_int_equal(bdrv_pwrite(c, 64 * KiB, sizeof(buf), buf, 0), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

typedef struct DiscardCo {
    BdrvChild *c;
    int ret;
} DiscardCo;

static void coroutine_fn discard_entry(void *opaque)
{
    DiscardCo *d = opaque;
    d->ret = bdrv_co_pdiscard(d->c, 0, 64 * KiB);
}

static void test_errors_by_event(void **state)
{
    (void)state;
    Error *err = NULL;
    BlockDriverState *bs = open_dbg("inject-error.0.event=write,inject-error.0.errno=28,"
                                    "inject-error.1.event=flush,"
                                    "inject-error.2.event=discard,inject-error.2.errno=95,"
                                    "inject-error.3.event=write-zeroes,inject-error.3.sector=8",
                                    &err);
    if (!bs) {
        fail_msg("%s", error_get_pretty(err));
    }
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[4096] = { 1 };
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(buf), buf, 0), -ENOSPC);
    assert_int_equal(bdrv_pwrite(c, 512 * KiB, sizeof(buf), buf, 0), -ENOSPC);   /* any offset */
    assert_int_equal(mem_calls(mem, MEM_OP_WRITE), 0);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    /* A flush after a (failed) write: the rule fires with the default EIO. */
    assert_int_equal(bdrv_flush(bs), -EIO);
    DiscardCo d = { c, 0 };
    test_run_co(discard_entry, &d);
    /* -ENOTSUP from discard is advisory: the request path may swallow it,
     * but the child must not have been asked. */
    assert_true(d.ret == -ENOTSUP || d.ret == 0);
    assert_int_equal(mem_calls(mem, MEM_OP_DISCARD), 0);
    /* Zeroes: sector 8 = byte 4096. */
    assert_int_equal(bdrv_pwrite_zeroes(c, 4096, 512, 0), -EIO);
    assert_int_equal(bdrv_pwrite_zeroes(c, 8192, 512, 0), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_align_and_max_transfer(void **state)
{
    (void)state;
    Error *err = NULL;
    BlockDriverState *bs = open_dbg("align=4096,max-transfer=8k", &err);
    assert_non_null(bs);
    assert_int_equal(bs->bl.request_alignment, 4096);
    assert_int_equal(bs->bl.max_transfer, 8192);
    BdrvChild *c = test_child_new(bs);
    mem_fill(mem, 0, 64 * KiB, 0x33);
    mem_log_clear(mem);

    /* An unaligned 100-byte write becomes a 4k read-modify-write below. */
    uint8_t w[100];
    memset(w, 0x44, sizeof(w));
    assert_int_equal(bdrv_pwrite(c, 5000, sizeof(w), w, 0), 0);
    const MemLogEntry *e = mem_log(mem, MEM_OP_WRITE, 0);
    assert_non_null(e);
    assert_int_equal(e->offset, 4096);
    assert_int_equal(e->bytes, 4096);
    uint8_t back[4096];
    mem_read_raw(mem, 4096, back, sizeof(back));
    assert_true(test_buf_is(back, 904, 0x33));
    assert_true(test_buf_is(back + 904, 100, 0x44));
    assert_true(test_buf_is(back + 1004, 4096 - 1004, 0x33));

    /* A 32k read is split into 8k pieces. */
    mem_log_clear(mem);
    uint8_t *buf = malloc(32 * KiB);
    assert_int_equal(bdrv_pread(c, 16 * KiB, 32 * KiB, buf, 0), 0);
    assert_int_equal(mem_calls(mem, MEM_OP_READ), 4);
    for (int i = 0; i < 4; i++) {
        e = mem_log(mem, MEM_OP_READ, i);
        assert_int_equal(e->bytes, 8192);
        assert_int_equal(e->offset % 8192, 0);
    }
    free(buf);
    test_child_free(c);
    bdrv_unref(bs);
}

static void expect_error(const char *opts, const char *msg)
{
    Error *err = NULL;
    BlockDriverState *bs = open_dbg(opts, &err);
    assert_null(bs);
    if (!err || strcmp(error_get_pretty(err), msg)) {
        fail_msg("got '%s', expected '%s'", err ? error_get_pretty(err) : "(none)", msg);
    }
    error_free(err);
}

static void test_option_errors(void **state)
{
    (void)state;
    expect_error("align=3000", "blkdebug: align (3000) must be a power of two up to 1G");
    expect_error("align=4096,max-transfer=6k",
                 "blkdebug: max-transfer (6144) must be a multiple of align (4096)");
    expect_error("inject-error.0.errno=5",
                 "blkdebug: inject-error.0.event is required (one of read, write, flush, "
                 "discard, write-zeroes, block-status)");
    expect_error("inject-error.0.event=explode",
                 "blkdebug inject-error.0: Invalid value 'explode' for option 'event': expected "
                 "one of read, write, flush, discard, write-zeroes, block-status");
    expect_error("inject-error.0.event=read,inject-error.0.errno=-1",
                 "blkdebug: inject-error.0.errno must be a positive errno value, got -1");
    expect_error("inject-error.0.event=read,inject-error.0.offset=0,inject-error.0.sector=0",
                 "blkdebug: inject-error.0: give offset or sector, not both");
    expect_error("inject-error.0.event=read,inject-error.0.colour=red",
                 "blkdebug rule inject-error.0 does not support the option 'colour'");
    /* Rules are numbered from 0; a gap leaves the rest as unknown options. */
    expect_error("inject-error.1.event=read",
                 "Block format 'blkdebug' does not support the option 'inject-error.1.event'");
    assert_int_equal(mem->refcnt, 1);   /* failed opens dropped their references */
}

#ifdef CONFIG_VDI
/* Under a format, blkdebug's image is the file as it is: raw over blkdebug
 * over a VDI file reads the VDI header, and vdi over blkdebug opens it. */
static void test_image_is_protocol_under_format(void **state)
{
    (void)state;
    require_driver("raw");
    require_driver("vdi");
    test_tmpdir_create("blkdebug");
    const uint64_t disk = 4 * MiB;
    BlockDriverState *memvdi = vdi_test_make_file(disk, true);
    int64_t len = mem_size(memvdi);
    uint8_t *img = malloc(len);
    mem_read_raw(memvdi, 0, img, len);
    bdrv_unref(memvdi);
    char *path = test_path("x.vdi");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, img, len), len);
    close(fd);

    char opts[600];
    Error *err = NULL;
    snprintf(opts, sizeof(opts), "driver=raw,file.driver=blkdebug,file.image.filename=%s", path);
    BlockDriverState *bs = bdrv_open(NULL, optdict_parse(opts, NULL, NULL), 0, &err);
    assert_non_null(bs);
    assert_string_equal(bdrv_get_format_name(bs->file->bs->file->bs), "file");
    assert_true(bs->file->bs->file->bs->open_flags & BDRV_O_PROTOCOL);
    assert_int_equal(bdrv_getlength(bs), len);
    BdrvChild *c = test_child_new(bs);
    uint8_t r[512];
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, img, sizeof(r));
    test_child_free(c);
    bdrv_unref(bs);

    snprintf(opts, sizeof(opts), "driver=vdi,file.driver=blkdebug,file.image.filename=%s", path);
    bs = bdrv_open(NULL, optdict_parse(opts, NULL, NULL), 0, &err);
    if (!bs) {
        fail_msg("vdi over blkdebug: %s", error_get_pretty(err));
    }
    assert_int_equal(bdrv_getlength(bs), disk);
    bdrv_unref(bs);
    free(img);
    test_tmpdir_teardown(NULL);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_passthrough, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_growable_follows_child, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_error_at_offset_once, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_errors_by_event, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_align_and_max_transfer, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_option_errors, setup_each, teardown_each),
#ifdef CONFIG_VDI
        cmocka_unit_test_setup_teardown(test_image_is_protocol_under_format, setup_each,
                                        teardown_each),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
