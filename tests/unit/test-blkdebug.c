/*
 * test-blkdebug.c - the fault-injection filter over an in-memory node:
 * rules by event/offset/once, errno values, align= and max-transfer= as seen
 * by the child, option errors; under a format the filter's image is a
 * protocol (a VDI file read through raw/blkdebug shows its own bytes).
 * The grown filter: offset ranges, every Nth, seeded probability, the
 * corrupt/delay/lost-write actions, the control file changed at run time,
 * and rules matched from several threads at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#include "iov-fixed.h"
#include "../../drivers/blkdebug-int.h"
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

/* ---- the grown filter ---- */

static BdrvChild *open_dbg_child(const char *opts, BlockDriverState **bsp)
{
    Error *err = NULL;
    BlockDriverState *bs = open_dbg(opts, &err);
    if (!bs) {
        fail_msg("open '%s': %s", opts, error_get_pretty(err));
    }
    *bsp = bs;
    return test_child_new(bs);
}

static void close_dbg(BdrvChild *c, BlockDriverState *bs)
{
    test_child_free(c);
    bdrv_unref(bs);
}

/* A range matches every request that overlaps it, and only those. */
static void test_offset_range(void **state)
{
    (void)state;
    BlockDriverState *bs;
    BdrvChild *c = open_dbg_child("inject-error.0.event=read,inject-error.0.offset=64k,"
                                  "inject-error.0.length=8k,"
                                  "inject-fault.0.event=write,inject-fault.0.action=error,"
                                  "inject-fault.0.errno=28,inject-fault.0.sector=256,"
                                  "inject-fault.0.end=135168", &bs);
    uint8_t buf[8192];
    assert_int_equal(bdrv_pread(c, 56 * KiB, 8 * KiB, buf, 0), 0);          /* ends at 64k */
    assert_int_equal(bdrv_pread(c, 60 * KiB, 8 * KiB, buf, 0), -EIO);       /* head */
    assert_int_equal(bdrv_pread(c, 66 * KiB, 1 * KiB, buf, 0), -EIO);       /* inside */
    assert_int_equal(bdrv_pread(c, 72 * KiB - 1, 2, buf, 0), -EIO);         /* last byte */
    assert_int_equal(bdrv_pread(c, 72 * KiB, 8 * KiB, buf, 0), 0);          /* just after */
    uint8_t *big = malloc(64 * KiB);
    assert_int_equal(bdrv_pread(c, 32 * KiB, 64 * KiB, big, 0), -EIO);     /* spans it */
    free(big);
    /* sector=256 (128k) to end=132k, on writes only */
    assert_int_equal(bdrv_pwrite(c, 124 * KiB, 4 * KiB, buf, 0), 0);
    assert_int_equal(bdrv_pwrite(c, 131 * KiB, 2 * KiB, buf, 0), -ENOSPC);
    assert_int_equal(bdrv_pwrite(c, 132 * KiB, 4 * KiB, buf, 0), 0);
    assert_int_equal(bdrv_pread(c, 128 * KiB, 4 * KiB, buf, 0), 0);
    close_dbg(c, bs);
}

/* The failures of n reads of 512 bytes at offset 0, as a bitmap. */
static void read_pattern(BdrvChild *c, int n, bool *failed)
{
    uint8_t buf[512];
    for (int i = 0; i < n; i++) {
        int ret = bdrv_pread(c, 0, sizeof(buf), buf, 0);
        assert_true(ret == 0 || ret == -EIO);
        failed[i] = ret < 0;
    }
}

static void test_every_nth(void **state)
{
    (void)state;
    BlockDriverState *bs;
    BdrvChild *c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=error,"
                                  "inject-fault.0.every=3,inject-fault.0.offset=0,"
                                  "inject-fault.0.length=4k", &bs);
    bool failed[12];
    uint8_t buf[512];
    /* Requests outside the range do not count. */
    assert_int_equal(bdrv_pread(c, 8192, sizeof(buf), buf, 0), 0);
    assert_int_equal(bdrv_pread(c, 8192, sizeof(buf), buf, 0), 0);
    read_pattern(c, 12, failed);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(failed[i], (i + 1) % 3 == 0);
    }
    close_dbg(c, bs);

    /* every with once: the Nth match only */
    c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=error,"
                       "inject-fault.0.every=4,inject-fault.0.once=on", &bs);
    read_pattern(c, 12, failed);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(failed[i], i == 3);
    }
    close_dbg(c, bs);
}

#define PROB_N 4000

static int count_true(const bool *b, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        k += b[i];
    }
    return k;
}

static void test_probability_seeded(void **state)
{
    (void)state;
    static bool a[PROB_N], b[PROB_N], d[PROB_N], dflt1[PROB_N], dflt2[PROB_N];
    const char *rule = "inject-fault.0.event=read,inject-fault.0.action=error,"
                       "inject-fault.0.probability=0.25";
    char opts[256];
    BlockDriverState *bs;
    BdrvChild *c;

    snprintf(opts, sizeof(opts), "seed=7,%s", rule);
    c = open_dbg_child(opts, &bs);
    read_pattern(c, PROB_N, a);
    close_dbg(c, bs);
    c = open_dbg_child(opts, &bs);
    read_pattern(c, PROB_N, b);
    close_dbg(c, bs);
    snprintf(opts, sizeof(opts), "seed=8,%s", rule);
    c = open_dbg_child(opts, &bs);
    read_pattern(c, PROB_N, d);
    close_dbg(c, bs);
    /* The default seed is fixed too. */
    c = open_dbg_child(rule, &bs);
    read_pattern(c, PROB_N, dflt1);
    close_dbg(c, bs);
    c = open_dbg_child(rule, &bs);
    read_pattern(c, PROB_N, dflt2);
    close_dbg(c, bs);

    assert_memory_equal(a, b, sizeof(a));
    assert_memory_equal(dflt1, dflt2, sizeof(dflt1));
    assert_memory_not_equal(a, d, sizeof(a));
    assert_memory_not_equal(a, dflt1, sizeof(a));
    /* Roughly P: 1000 expected, sd ~27; +-150 is > 5 sd. */
    int ka = count_true(a, PROB_N), kd = count_true(d, PROB_N);
    assert_in_range(ka, 850, 1150);
    assert_in_range(kd, 850, 1150);

    /* 0 never fires, 1 always. */
    c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=error,"
                       "inject-fault.0.probability=0", &bs);
    read_pattern(c, 200, a);
    assert_int_equal(count_true(a, 200), 0);
    close_dbg(c, bs);
    c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=error,"
                       "inject-fault.0.probability=1", &bs);
    read_pattern(c, 200, a);
    assert_int_equal(count_true(a, 200), 200);
    close_dbg(c, bs);
}

/* Bytes of got that differ from want: their offsets into out (at most max). */
static int diff_offsets(const uint8_t *got, const uint8_t *want, size_t len, size_t *out,
                        int max)
{
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        if (got[i] != want[i]) {
            if (n < max) {
                out[n] = i;
            }
            n++;
            assert_int_equal(got[i], want[i] ^ 0xff);
        }
    }
    return n;
}

static void test_corrupt(void **state)
{
    (void)state;
    uint8_t *img = malloc(64 * KiB), *buf = malloc(64 * KiB), *after = malloc(64 * KiB);
    test_pattern(img, 64 * KiB, 3);
    mem_write_raw(mem, 0, img, 64 * KiB);
    BlockDriverState *bs;
    /* sectors 8 and 9 (bytes 4096..5119) */
    BdrvChild *c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=corrupt,"
                                  "inject-fault.0.offset=4096,inject-fault.0.length=1k", &bs);
    size_t at[8];

    /* The read succeeds; one byte per sector of the range, nothing else. */
    assert_int_equal(bdrv_pread(c, 0, 16 * KiB, buf, 0), 0);
    assert_int_equal(diff_offsets(buf, img, 16 * KiB, at, 8), 2);
    assert_int_equal(at[0], 4096);
    assert_int_equal(at[1], 4608);
    /* Deterministic: the same read gives the same bytes. */
    memcpy(after, buf, 16 * KiB);
    assert_int_equal(bdrv_pread(c, 0, 16 * KiB, buf, 0), 0);
    assert_memory_equal(buf, after, 16 * KiB);
    /* A read starting inside a sector: the first byte of the overlap there. */
    assert_int_equal(bdrv_pread(c, 4200, 1000, buf, 0), 0);
    assert_int_equal(diff_offsets(buf, img + 4200, 1000, at, 8), 2);
    assert_int_equal(at[0], 0);               /* 4200 */
    assert_int_equal(at[1], 4608 - 4200);
    /* Outside the range: the child's data. */
    assert_int_equal(bdrv_pread(c, 8192, 8192, buf, 0), 0);
    assert_memory_equal(buf, img + 8192, 8192);
    /* The child itself is untouched. */
    mem_read_raw(mem, 0, after, 64 * KiB);
    assert_memory_equal(after, img, 64 * KiB);
    close_dbg(c, bs);

    /* No range: every sector of every read. */
    c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=corrupt", &bs);
    assert_int_equal(bdrv_pread(c, 1024, 4096, buf, 0), 0);
    assert_int_equal(diff_offsets(buf, img + 1024, 4096, at, 8), 8);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(at[i], i * 512);
    }
    close_dbg(c, bs);
    free(img);
    free(buf);
    free(after);
}

/* A read onto registered-buffer references: the filter passes them on
 * untouched unless it corrupts, and then goes through a mapped bounce. */
typedef struct RegRead {
    BdrvChild *c;
    IOVector *q;
    int ret;
} RegRead;

static void coroutine_fn reg_read_entry(void *opaque)
{
    RegRead *r = opaque;
    r->ret = bdrv_co_preadv(r->c, 4096, 4096, r->q, 0);
}

static void test_corrupt_registered_buffer(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    uint8_t *reg = aligned_alloc_or_die(4096, 16 * KiB);
    memset(reg, 0xaa, 16 * KiB);
    int idx = aio_fixed_buffer_add(ctx, reg, 16 * KiB);
    if (idx < 0) {
        free(reg);
        print_message("skipped: cannot register a buffer: %s\n", strerror(-idx));
        skip();
    }
    uint8_t img[8192];
    test_pattern(img, sizeof(img), 11);
    mem_write_raw(mem, 0, img, sizeof(img));
    BlockDriverState *bs;
    BdrvChild *c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=corrupt,"
                                  "inject-fault.0.offset=5000", &bs);
    IOVector q;
    iov_init(&q, 0);
    iov_add_reg(&q, aio_ring_id(ctx), (unsigned)idx, 8192, 4096);
    RegRead r = { c, &q, 1 };
    test_run_co(reg_read_entry, &r);
    assert_int_equal(r.ret, 0);
    size_t at[4];
    assert_int_equal(diff_offsets(reg + 8192, img + 4096, 4096, at, 4), 1);
    assert_int_equal(at[0], 5000 - 4096);
    assert_true(test_buf_is(reg, 8192, 0xaa));
    iov_destroy(&q);
    close_dbg(c, bs);
    assert_int_equal(aio_fixed_buffer_remove(ctx, (unsigned)idx), 0);
    free(reg);
}

typedef struct DelayCo {
    BdrvChild *c;
    int64_t offset;
    int n;
    int ret;
    bool done;
    int64_t done_ns;
} DelayCo;

static void coroutine_fn delay_entry(void *opaque)
{
    DelayCo *d = opaque;
    uint8_t buf[512];
    IOVector q;
    d->ret = 0;
    for (int i = 0; i < d->n && d->ret == 0; i++) {
        iov_init_buf(&q, buf, sizeof(buf));
        d->ret = bdrv_co_preadv(d->c, d->offset, sizeof(buf), &q, 0);
    }
    d->done_ns = clock_monotonic_ns();
    d->done = true;
}

static void test_delay(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *bs;
    BdrvChild *c = open_dbg_child("inject-fault.0.event=read,inject-fault.0.action=delay,"
                                  "inject-fault.0.delay-ms=150,inject-fault.0.offset=0,"
                                  "inject-fault.0.length=4k", &bs);
    DelayCo slow = { c, 0, 1, -1, false, 0 }, fast = { c, 8192, 20, -1, false, 0 };
    int64_t t0 = clock_monotonic_ns();
    co_enter(co_create(delay_entry, &slow));
    /* The delayed request did not block the thread: we are back at once... */
    assert_false(slow.done);
    assert_true(clock_monotonic_ns() - t0 < 100 * 1000000LL);
    /* ...and another coroutine of the thread runs to its end meanwhile. */
    co_enter(co_create(delay_entry, &fast));
    while (!slow.done || !fast.done) {
        aio_poll(ctx, true);
    }
    assert_int_equal(slow.ret, 0);
    assert_int_equal(fast.ret, 0);
    assert_true(fast.done_ns < slow.done_ns);
    assert_true(slow.done_ns - t0 >= 150 * 1000000LL);
    close_dbg(c, bs);

    /* A delay goes on to the next rule: delayed, then failed. */
    c = open_dbg_child("inject-fault.0.event=write,inject-fault.0.action=delay,"
                       "inject-fault.0.delay-ms=50,"
                       "inject-fault.1.event=write,inject-fault.1.action=error", &bs);
    uint8_t buf[512] = { 0 };
    t0 = clock_monotonic_ns();
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(buf), buf, 0), -EIO);
    assert_true(clock_monotonic_ns() - t0 >= 50 * 1000000LL);
    close_dbg(c, bs);
}

static void test_lost_write(void **state)
{
    (void)state;
    mem_fill(mem, 0, 64 * KiB, 0x11);
    BlockDriverState *bs;
    BdrvChild *c = open_dbg_child("inject-fault.0.event=write,inject-fault.0.action=lost-write,"
                                  "inject-fault.0.offset=4096,inject-fault.0.length=4096,"
                                  "inject-fault.1.event=write-zeroes,"
                                  "inject-fault.1.action=lost-write,"
                                  "inject-fault.2.event=discard,inject-fault.2.action=lost-write",
                                  &bs);
    uint8_t w[4096], r[4096];
    memset(w, 0x22, sizeof(w));
    mem_log_clear(mem);
    /* Reported written, never reached the child. */
    assert_int_equal(bdrv_pwrite(c, 4096, sizeof(w), w, 0), 0);
    assert_int_equal(bdrv_pwrite(c, 6000, 100, w, 0), 0);
    assert_int_equal(mem_calls(mem, MEM_OP_WRITE), 0);
    mem_read_raw(mem, 0, r, sizeof(r));
    assert_true(test_buf_is(r, sizeof(r), 0x11));
    mem_read_raw(mem, 4096, r, sizeof(r));
    assert_true(test_buf_is(r, sizeof(r), 0x11));
    /* A read sees the old data. */
    assert_int_equal(bdrv_pread(c, 4096, sizeof(r), r, 0), 0);
    assert_true(test_buf_is(r, sizeof(r), 0x11));
    /* Outside the range, writes land. */
    assert_int_equal(bdrv_pwrite(c, 8192, sizeof(w), w, 0), 0);
    mem_read_raw(mem, 8192, r, sizeof(r));
    assert_true(test_buf_is(r, sizeof(r), 0x22));
    /* Zeroes and discards are dropped too. */
    assert_int_equal(bdrv_pwrite_zeroes(c, 16 * KiB, 4096, 0), 0);
    mem_read_raw(mem, 16 * KiB, r, sizeof(r));
    assert_true(test_buf_is(r, sizeof(r), 0x11));
    DiscardCo d = { c, -1 };
    test_run_co(discard_entry, &d);
    assert_int_equal(d.ret, 0);
    assert_int_equal(mem_calls(mem, MEM_OP_ZEROES), 0);
    assert_int_equal(mem_calls(mem, MEM_OP_DISCARD), 0);
    close_dbg(c, bs);
}

static void test_new_option_errors(void **state)
{
    (void)state;
#define R "inject-fault.0."
    expect_error(R "event=read",
                 "blkdebug: inject-fault.0.action is required (one of error, corrupt, delay, "
                 "lost-write)");
    expect_error(R "event=read," R "action=melt",
                 "blkdebug inject-fault.0: Invalid value 'melt' for option 'action': expected "
                 "one of error, corrupt, delay, lost-write");
    expect_error(R "action=error",
                 "blkdebug: inject-fault.0.event is required (one of read, write, flush, "
                 "discard, write-zeroes, block-status)");
    expect_error(R "event=read," R "action=corrupt," R "errno=5",
                 "blkdebug: inject-fault.0.errno is only for action=error");
    expect_error(R "event=read," R "action=error," R "errno=0",
                 "blkdebug: inject-fault.0.errno must be a positive errno value, got 0");
    expect_error(R "event=read," R "action=error," R "delay-ms=5",
                 "blkdebug: inject-fault.0.delay-ms is only for action=delay");
    expect_error(R "event=read," R "action=delay",
                 "blkdebug: inject-fault.0: action=delay needs delay-ms");
    expect_error(R "event=read," R "action=delay," R "delay-ms=0",
                 "blkdebug: inject-fault.0.delay-ms must be from 1 to 600000, got 0");
    expect_error(R "event=write," R "action=corrupt",
                 "blkdebug: inject-fault.0: action=corrupt needs event=read");
    expect_error(R "event=read," R "action=lost-write",
                 "blkdebug: inject-fault.0: action=lost-write needs event=write, write-zeroes "
                 "or discard");
    expect_error(R "event=read," R "action=error," R "offset=0," R "length=1," R "end=5",
                 "blkdebug: inject-fault.0: give length or end, not both");
    expect_error(R "event=read," R "action=error," R "length=4096",
                 "blkdebug: inject-fault.0: length needs offset or sector");
    expect_error("inject-error.0.event=read,inject-error.0.end=4096",
                 "blkdebug: inject-error.0: end needs offset or sector");
    expect_error(R "event=flush," R "action=error," R "offset=0",
                 "blkdebug: inject-fault.0: a flush has no offset; event=flush takes no offset "
                 "or sector");
    expect_error(R "event=read," R "action=error," R "offset=-1",
                 "blkdebug inject-fault.0: Invalid value '-1' for option 'offset': expected a "
                 "size in bytes, optionally with a suffix k, M, G, T, P or E");
    expect_error(R "event=read," R "action=error," R "sector=-1",
                 "blkdebug: inject-fault.0.sector must be from 0 to 2^54-1, got -1");
    expect_error(R "event=read," R "action=error," R "offset=8E",
                 "blkdebug: inject-fault.0.offset must be below 2^63");
    expect_error(R "event=read," R "action=error," R "offset=0," R "length=0",
                 "blkdebug: inject-fault.0.length must be positive, got 0");
    expect_error(R "event=read," R "action=error," R "offset=8192," R "end=4096",
                 "blkdebug: inject-fault.0.end (4096) must be above the start of the range "
                 "(8192)");
    expect_error(R "event=read," R "action=error," R "every=2," R "probability=0.5",
                 "blkdebug: inject-fault.0: give every or probability, not both");
    expect_error(R "event=read," R "action=error," R "every=0",
                 "blkdebug: inject-fault.0.every must be at least 1, got 0");
    expect_error(R "event=read," R "action=error," R "probability=1.5",
                 "blkdebug: inject-fault.0.probability must be a number from 0 to 1, got '1.5'");
    expect_error(R "event=read," R "action=error," R "probability=often",
                 "blkdebug: inject-fault.0.probability must be a number from 0 to 1, got "
                 "'often'");
    expect_error(R "event=read," R "action=error," R "probability=nan",
                 "blkdebug: inject-fault.0.probability must be a number from 0 to 1, got 'nan'");
    expect_error(R "event=read," R "action=error," R "frequency=3",
                 "blkdebug rule inject-fault.0 does not support the option 'frequency'");
    expect_error("seed=x", "blkdebug: Invalid value 'x' for option 'seed': expected an integer");
    expect_error("control=rules.txt",
                 "blkdebug: control must be an absolute path, got 'rules.txt'");
#undef R
    assert_int_equal(mem->refcnt, 1);
}

/* ---- the control file ---- */

/* Replace path's content atomically (a new inode, so the change is seen
 * whatever the timestamps' granularity). */
static void put_file(const char *path, const char *text, mode_t mode)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    assert_int_equal(rename(tmp, path), 0);
}

/* Run the loop until the filter has looked at the file after our change:
 * two timer rounds after the loads counter moved, or 3 s. */
static void poll_for(BlockDriverState *bs, int ms)
{
    AioContext *ctx = test_loop_init();
    int64_t end = clock_monotonic_ns() + ms * 1000000LL;
    while (clock_monotonic_ns() < end) {
        aio_poll(ctx, true);
    }
    (void)bs;
}

static bool wait_loads(BlockDriverState *bs, uint64_t want)
{
    AioContext *ctx = test_loop_init();
    int64_t end = clock_monotonic_ns() + 3000 * 1000000LL;
    while (blkdebug_control_loads(bs) < want && clock_monotonic_ns() < end) {
        aio_poll(ctx, true);
    }
    return blkdebug_control_loads(bs) >= want;
}

/* What the filter prints to stderr while fn-like polling runs. */
static char stderr_text[4096];
static int saved_stderr = -1;
static void capture_stderr(void)
{
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(test_path("stderr.txt"), O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    dup2(fd, 2);
    close(fd);
}
static const char *release_stderr(void)
{
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    int fd = open(test_path("stderr.txt"), O_RDONLY);
    ssize_t n = read(fd, stderr_text, sizeof(stderr_text) - 1);
    close(fd);
    stderr_text[n > 0 ? n : 0] = 0;
    return stderr_text;
}

static void test_control_file(void **state)
{
    (void)state;
    test_tmpdir_create("blkdebug-ctl");
    char path[512], opts[700];
    snprintf(path, sizeof(path), "%s", test_path("rules"));
    snprintf(opts, sizeof(opts), "control=%s", path);
    uint8_t buf[4096];

    /* No file yet: no rules. */
    BlockDriverState *bs;
    BdrvChild *c = open_dbg_child(opts, &bs);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);

    /* Written: applies after a poll of the loop (lines, a comment, a comma list). */
    put_file(path, "# reads of the first 4k fail\n"
                   "inject-error.0.event=read\n"
                   "  inject-error.0.errno=61 ,\n"
                   "\n"
                   "inject-error.0.offset=0,inject-error.0.length=4096\n", 0644);
    assert_true(wait_loads(bs, 1));
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), -ENODATA);
    assert_int_equal(bdrv_pread(c, 4096, sizeof(buf), buf, 0), 0);

    /* Changed: the new rules replace the old ones. */
    put_file(path, "inject-fault.0.event=write,inject-fault.0.action=error,"
                   "inject-fault.0.errno=28\n", 0644);
    assert_true(wait_loads(bs, 2));
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(buf), buf, 0), -ENOSPC);

    /* Malformed: reported, the rules in force stay. */
    capture_stderr();
    put_file(path, "inject-fault.0.event=write,inject-fault.0.action=explode\n", 0644);
    poll_for(bs, 350);
    const char *msg = release_stderr();
    if (!strstr(msg, "control file") ||
        !strstr(msg, "Invalid value 'explode' for option 'action'") ||
        !strstr(msg, "keeping the previous rules")) {
        fail_msg("stderr: '%s'", msg);
    }
    /* ...once, not every 100 ms */
    assert_null(strstr(strstr(msg, "explode") + 1, "explode'"));
    assert_int_equal(blkdebug_control_loads(bs), 2);
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(buf), buf, 0), -ENOSPC);

    /* Options the control file may not change. */
    capture_stderr();
    put_file(path, "align=4096\n", 0644);
    poll_for(bs, 350);
    msg = release_stderr();
    if (!strstr(msg, "the control file does not support the option 'align'")) {
        fail_msg("stderr: '%s'", msg);
    }
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(buf), buf, 0), -ENOSPC);

    /* A file others may write is refused, the rules stay. */
    capture_stderr();
    put_file(path, "inject-fault.0.event=read,inject-fault.0.action=error\n", 0666);
    poll_for(bs, 350);
    msg = release_stderr();
    if (!strstr(msg, "is writable by group or others (refused)")) {
        fail_msg("stderr: '%s'", msg);
    }
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);

    /* A good file again, then an empty one: no rules. */
    put_file(path, "inject-fault.0.event=read,inject-fault.0.action=error\n", 0600);
    assert_true(wait_loads(bs, 3));
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), -EIO);
    put_file(path, "\n# nothing\n", 0600);
    assert_true(wait_loads(bs, 4));
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(buf), buf, 0), 0);

    /* Removed: no rules. */
    put_file(path, "inject-fault.0.event=read,inject-fault.0.action=error\n", 0600);
    assert_true(wait_loads(bs, 5));
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), -EIO);
    assert_int_equal(unlink(path), 0);
    poll_for(bs, 250);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);

    /* A symlink planted as the file is never followed. */
    char target[512];
    snprintf(target, sizeof(target), "%s", test_path("elsewhere"));
    put_file(target, "inject-fault.0.event=read,inject-fault.0.action=error\n", 0600);
    assert_int_equal(symlink(target, path), 0);
    capture_stderr();
    poll_for(bs, 250);
    msg = release_stderr();
    if (!strstr(msg, "is a symbolic link (refused)")) {
        fail_msg("stderr: '%s'", msg);
    }
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    close_dbg(c, bs);

    /* At open, a bad file fails the open with a message naming it. */
    char want[800];
    snprintf(want, sizeof(want), "blkdebug: control file '%s': is a symbolic link (refused)",
             path);
    expect_error(opts, want);
    unlink(path);
    put_file(path, "inject-fault.0.event=read\n", 0600);
    snprintf(want, sizeof(want), "blkdebug: control file '%s': blkdebug: inject-fault.0.action "
             "is required (one of error, corrupt, delay, lost-write)", path);
    expect_error(opts, want);
    unlink(target);
    assert_int_equal(link(path, target), 0);
    snprintf(want, sizeof(want), "blkdebug: control file '%s': has 2 hard links (refused)", path);
    expect_error(opts, want);
    unlink(target);
    assert_int_equal(mkfifo(target, 0600), 0);
    snprintf(opts, sizeof(opts), "control=%s", target);
    snprintf(want, sizeof(want), "blkdebug: control file '%s': is not a regular file (refused)",
             target);
    expect_error(opts, want);

    /* Option rules come first; the file's after them, with its own seed. */
    put_file(path, "seed=3\ninject-fault.0.event=read,inject-fault.0.action=error,"
                   "inject-fault.0.errno=61\n", 0600);
    snprintf(opts, sizeof(opts), "control=%s,inject-error.0.event=read,inject-error.0.once=on",
             path);
    c = open_dbg_child(opts, &bs);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), -EIO);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), -ENODATA);
    close_dbg(c, bs);
    test_tmpdir_teardown(NULL);
}

/* Queue threads match while the main thread swaps the control set: the
 * counters stay exact and nothing races (run under `make tsan`). */
#define MT_THREADS 3
#define MT_READS 600

typedef struct MtArg {
    BdrvChild *c;
    int failures;
    volatile bool *stop;
} MtArg;

static void *mt_thread(void *opaque)
{
    MtArg *a = opaque;
    uint8_t buf[512];
    test_loop_init();
    for (int i = 0; i < MT_READS; i++) {
        int ret = bdrv_pread(a->c, 0, sizeof(buf), buf, 0);
        assert_true(ret == 0 || ret == -EIO);
        a->failures += ret < 0;
    }
    aio_context_free(aio_current());
    aio_set_current(NULL);
    return NULL;
}

static void test_threads_and_reloads(void **state)
{
    (void)state;
    test_tmpdir_create("blkdebug-mt");
    char path[512], opts[700];
    snprintf(path, sizeof(path), "%s", test_path("rules"));
    snprintf(opts, sizeof(opts), "control=%s,inject-fault.0.event=read,"
             "inject-fault.0.action=error,inject-fault.0.every=4", path);
    BlockDriverState *bs;
    BdrvChild *c = open_dbg_child(opts, &bs);
    pthread_t t[MT_THREADS];
    MtArg a[MT_THREADS];
    for (int i = 0; i < MT_THREADS; i++) {
        a[i] = (MtArg){ c, 0, NULL };
        assert_int_equal(pthread_create(&t[i], NULL, mt_thread, &a[i]), 0);
    }
    /* Swap sets that never fire on reads (a range past every read). */
    for (int i = 0; i < 20; i++) {
        char text[200];
        snprintf(text, sizeof(text), "inject-fault.0.event=read,inject-fault.0.action=error,"
                 "inject-fault.0.offset=%d\n", 512 * 1024 + i);
        put_file(path, text, 0600);
        blkdebug_control_poll(bs);
    }
    int failures = 0;
    for (int i = 0; i < MT_THREADS; i++) {
        pthread_join(t[i], NULL);
        failures += a[i].failures;
    }
    assert_int_equal(failures, MT_THREADS * MT_READS / 4);
    assert_int_equal(blkdebug_control_loads(bs), 20);
    close_dbg(c, bs);
    test_tmpdir_teardown(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_passthrough, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_growable_follows_child, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_error_at_offset_once, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_errors_by_event, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_align_and_max_transfer, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_option_errors, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_offset_range, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_every_nth, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_probability_seeded, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_corrupt, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_corrupt_registered_buffer, setup_each,
                                        teardown_each),
        cmocka_unit_test_setup_teardown(test_delay, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_lost_write, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_new_option_errors, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_control_file, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_threads_and_reloads, setup_each, teardown_each),
#ifdef CONFIG_VDI
        cmocka_unit_test_setup_teardown(test_image_is_protocol_under_format, setup_each,
                                        teardown_each),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
