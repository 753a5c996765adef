/*
 * test-raw.c - the raw format: offset/size windows and their bounds, the
 * probed-raw protection of sector 0, block status pointing into the file,
 * create with preallocation, resize rules.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "test-util.h"

/* A format that probes on a magic, so a raw image can be made to look like it. */
static int magic_probe(const uint8_t *buf, int size, const char *filename)
{
    (void)filename;
    return size >= 8 && !memcmp(buf, "MAGICFMT", 8) ? 100 : 0;
}
static const BlockDriver bdrv_magic = { .format_name = "magic", .is_format = true,
                                        .probe = magic_probe };

static int setup(void **state)
{
    (void)state;
    test_tmpdir_create("raw");
    test_loop_init();
    bdrv_register(&bdrv_magic);
    return 0;
}

static uint8_t *pattern_file(const char *path, size_t size, uint64_t seed)
{
    uint8_t *buf = malloc(size);
    test_pattern(buf, size, seed);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(write(fd, buf, size), (ssize_t)size);
    close(fd);
    return buf;
}

static BlockDriverState *open_raw(const char *path, const char *extra, int flags, Error **errp)
{
    char opts[800];
    snprintf(opts, sizeof(opts), "driver=raw,file.filename=%s%s%s", path, extra ? "," : "",
             extra ? extra : "");
    return bdrv_open(NULL, optdict_parse(opts, NULL, NULL), flags, errp);
}

static void read_file(const char *path, int64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
    close(fd);
}

typedef struct BoundsCo {
    BlockDriverState *bs;
    IOVector *q;
    int r, w;
} BoundsCo;

static void coroutine_fn bounds_entry(void *opaque)
{
    BoundsCo *x = opaque;
    x->r = x->bs->drv->co_preadv(x->bs, 128 * KiB, 512, x->q, 0, 0);
    x->w = x->bs->drv->co_pwritev(x->bs, 128 * KiB - 256, 512, x->q, 0, 0);
}

static void test_window(void **state)
{
    (void)state;
    const char *p = test_path("win.img");
    uint8_t *orig = pattern_file(p, 1 * MiB, 1);
    Error *err = NULL;
    BlockDriverState *bs = open_raw(p, "offset=64k,size=128k", BDRV_O_RDWR, &err);
    assert_non_null(bs);
    assert_int_equal(bdrv_getlength(bs), 128 * KiB);
    BdrvChild *c = test_child_new(bs);

    uint8_t buf[8192];
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    assert_memory_equal(buf, orig + 64 * KiB, sizeof(buf));
    assert_int_equal(bdrv_pread(c, 120 * KiB, sizeof(buf), buf, 0), 0);
    assert_memory_equal(buf, orig + 184 * KiB, sizeof(buf));

    /* Writes land at offset + 64k in the file and nowhere else. */
    uint8_t w[3000];
    test_pattern(w, sizeof(w), 2);
    assert_int_equal(bdrv_pwrite(c, 100, sizeof(w), w, 0), 0);
    read_file(p, 64 * KiB + 100, buf, sizeof(w));
    assert_memory_equal(buf, w, sizeof(w));
    read_file(p, 0, buf, 100);
    assert_memory_equal(buf, orig, 100);

    /* Zeroes and discard are shifted too. */
    assert_int_equal(bdrv_pwrite_zeroes(c, 8192, 4096, 0), 0);
    read_file(p, 64 * KiB + 8192, buf, 4096);
    assert_true(test_buf_is(buf, 4096, 0));
    read_file(p, 8192, buf, 4096);
    assert_memory_equal(buf, orig + 8192, 4096);

    /* Beyond the window nothing of the file shows: reads past the end are
     * zeros (the request path's rule), writes are refused. */
    assert_int_equal(bdrv_pread(c, 128 * KiB, 512, buf, 0), 0);
    assert_true(test_buf_is(buf, 512, 0));
    assert_true(bdrv_pwrite(c, 128 * KiB - 256, 512, w, 0) < 0);
    read_file(p, 192 * KiB - 256, buf, 512);
    assert_memory_equal(buf, orig + 192 * KiB - 256, 512);

    /* The driver's own bounds: -EINVAL for reads, -ENOSPC for writes. */
    IOVector q;
    iov_init_buf(&q, buf, 512);
    BoundsCo t = { bs, &q, 0, 0 };
    test_run_co(bounds_entry, &t);
    assert_int_equal(t.r, -EINVAL);
    assert_int_equal(t.w, -ENOSPC);

    Error *terr = NULL;
    assert_int_equal(bdrv_truncate(c, 256 * KiB, true, PREALLOC_MODE_OFF, 0, &terr), -ENOTSUP);
    assert_non_null(strstr(error_get_pretty(terr), "Cannot resize fixed-size raw disks"));
    error_free(terr);
    test_child_free(c);
    bdrv_unref(bs);
    free(orig);
}

static void test_window_errors(void **state)
{
    (void)state;
    const char *p = test_path("small.img");
    free(pattern_file(p, 1 * MiB, 3));
    char msg[800];
    Error *err = NULL;

    assert_null(open_raw(p, "offset=2M", 0, &err));
    snprintf(msg, sizeof(msg), "Offset (2097152) cannot be greater than the size of the "
             "containing file '%s' (1048576)", p);
    assert_string_equal(error_get_pretty(err), msg);
    error_free(err);
    err = NULL;

    assert_null(open_raw(p, "offset=512k,size=768k", 0, &err));
    snprintf(msg, sizeof(msg), "The sum of offset (524288) and size (786432) must not exceed "
             "the size of the containing file '%s' (1048576)", p);
    assert_string_equal(error_get_pretty(err), msg);
    error_free(err);
    err = NULL;

    assert_null(open_raw(p, "size=1000", 0, &err));
    assert_string_equal(error_get_pretty(err), "Specified size (1000) is not a multiple of 512");
    error_free(err);
    err = NULL;

    assert_null(open_raw(p, "offset=lots", 0, &err));
    assert_non_null(strstr(error_get_pretty(err), "Invalid value 'lots' for option 'offset'"));
    error_free(err);
    err = NULL;

    /* A window exactly at the end is fine (and empty). */
    BlockDriverState *bs = open_raw(p, "offset=1M", 0, &err);
    assert_non_null(bs);
    assert_int_equal(bdrv_getlength(bs), 0);
    bdrv_unref(bs);
}

static void test_probed_header_protection(void **state)
{
    (void)state;
    const char *p = test_path("probed.img");
    free(pattern_file(p, 64 * KiB, 4));
    Error *err = NULL;
    uint8_t hdr[512] = "MAGICFMT", data[512], back[512];
    memset(data, 0x77, sizeof(data));

    BlockDriverState *bs = bdrv_open(p, NULL, BDRV_O_RDWR, &err);
    assert_non_null(bs);
    assert_true(bs->probed);
    assert_string_equal(bdrv_get_format_name(bs), "raw");
    assert_true(bs->bl.request_alignment >= 512);
    BdrvChild *c = test_child_new(bs);
    /* A header of another format in sector 0 is refused... */
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(hdr), hdr, 0), -EPERM);
    /* ...also when part of a larger or unaligned write covering it... */
    uint8_t big[4096] = "MAGICFMT";
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(big), big, 0), -EPERM);
    assert_int_equal(bdrv_pwrite(c, 0, 8, "MAGICFMT", 0), -EPERM);
    read_file(p, 0, back, 8);
    assert_true(memcmp(back, "MAGICFMT", 8) != 0);
    /* ...but ordinary data there, and the header elsewhere, are fine. */
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(data), data, 0), 0);
    assert_int_equal(bdrv_pwrite(c, 512, sizeof(hdr), hdr, 0), 0);
    read_file(p, 0, back, sizeof(back));
    assert_memory_equal(back, data, sizeof(data));
    test_child_free(c);
    bdrv_unref(bs);

    /* With driver=raw given explicitly there is no restriction. */
    bs = open_raw(p, NULL, BDRV_O_RDWR, &err);
    assert_false(bs->probed);
    c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(hdr), hdr, 0), 0);
    test_child_free(c);
    bdrv_unref(bs);
    /* And now the file probes as that format. */
    assert_ptr_equal(bdrv_probe_format(p, &err), &bdrv_magic);
}

typedef struct Status {
    BlockDriverState *bs;
    int64_t offset, bytes, pnum, map;
    BlockDriverState *file;
    int ret;
    bool direct;
} Status;

static void coroutine_fn status_entry(void *opaque)
{
    Status *s = opaque;
    if (s->direct) {
        s->ret = s->bs->drv->co_block_status(s->bs, true, s->offset, s->bytes, &s->pnum,
                                             &s->map, &s->file);
    } else {
        s->ret = bdrv_co_block_status(s->bs, s->offset, s->bytes, &s->pnum, &s->map, &s->file);
    }
}

static void test_block_status(void **state)
{
    (void)state;
    const char *p = test_path("status.img");
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    uint8_t blk[4096];
    memset(blk, 9, sizeof(blk));
    assert_int_equal(pwrite(fd, blk, sizeof(blk), 64 * KiB), 4096);
    assert_int_equal(ftruncate(fd, 1 * MiB), 0);
    close(fd);

    Error *err = NULL;
    BlockDriverState *bs = open_raw(p, "offset=64k", 0, &err);
    assert_non_null(bs);
    Status s = { bs, 0, 64 * KiB, 0, 0, NULL, -1, true };
    test_run_co(status_entry, &s);
    assert_int_equal(s.ret, BDRV_BLOCK_RAW | BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(s.map, 64 * KiB);
    assert_ptr_equal(s.file, bs->file->bs);

    /* Through the request path, RAW is followed into the file. */
    s = (Status){ bs, 0, 64 * KiB, 0, 0, NULL, -1, false };
    test_run_co(status_entry, &s);
    assert_true(s.ret & BDRV_BLOCK_DATA);
    assert_int_equal(s.pnum, 4096);
    s = (Status){ bs, 4096, 64 * KiB, 0, 0, NULL, -1, false };
    test_run_co(status_entry, &s);
    assert_true(s.ret & BDRV_BLOCK_ZERO);
    assert_false(s.ret & BDRV_BLOCK_DATA);
    bdrv_unref(bs);
}

static void test_create(void **state)
{
    (void)state;
    const BlockDriver *raw = bdrv_find_format("raw");
    Error *err = NULL;
    const char *p = test_path("new.img");
    OptDict *o = optdict_parse("size=2M", NULL, NULL);
    assert_int_equal(bdrv_create(raw, p, o, &err), 0);
    optdict_free(o);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, 2 * MiB);
    assert_true(st.st_blocks * 512 < (off_t)(64 * KiB));   /* sparse */

    const char *q = test_path("falloc.img");
    o = optdict_parse("size=1M,preallocation=falloc", NULL, NULL);
    assert_int_equal(bdrv_create(raw, q, o, &err), 0);
    optdict_free(o);
    assert_int_equal(stat(q, &st), 0);
    assert_int_equal(st.st_size, 1 * MiB);
    assert_true(st.st_blocks * 512 >= (off_t)(1 * MiB));

    o = optdict_parse("size=1M,compat=1.1", NULL, NULL);
    assert_int_equal(bdrv_create(raw, test_path("bad.img"), o, &err), -EINVAL);
    optdict_free(o);
    assert_string_equal(error_get_pretty(err),
                        "Block format 'raw' does not support the create option 'compat'");
    error_free(err);

    /* The created image opens and reads as zeros, and can grow. */
    BlockDriverState *bs = open_raw(p, NULL, BDRV_O_RDWR, &err);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[4096];
    assert_int_equal(bdrv_pread(c, 1 * MiB, sizeof(buf), buf, 0), 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    assert_int_equal(bdrv_has_zero_init(bs), 1);
    assert_int_equal(bdrv_truncate(c, 3 * MiB, true, PREALLOC_MODE_OFF, 0, &err), 0);
    assert_int_equal(bdrv_getlength(bs), 3 * MiB);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_window_errors),
        cmocka_unit_test(test_probed_header_protection),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_create),
    };
    return cmocka_run_group_tests(tests, setup, test_tmpdir_teardown);
}
