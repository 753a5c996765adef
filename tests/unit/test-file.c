/*
 * test-file.c - the file protocol on real files (and a loop device when one
 * can be set up): open errors, O_DIRECT alignment detection, I/O through the
 * request path, EOF zero-fill, FUA/flush, write-zeroes and discard checked
 * with SEEK_HOLE/st_blocks, block status, truncate, create.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test-util.h"

static int setup(void **state)
{
    (void)state;
    test_tmpdir_create("file");
    test_loop_init();
    return 0;
}

/* A file of size bytes filled with a pattern (seed) written by plain I/O. */
static void make_file(const char *path, size_t size, uint64_t seed)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    if (size) {
        uint8_t *buf = malloc(size);
        test_pattern(buf, size, seed);
        assert_int_equal(pwrite(fd, buf, size, 0), (ssize_t)size);
        free(buf);
    }
    close(fd);
}

static BlockDriverState *open_file(const char *path, const char *extra, int flags)
{
    Error *err = NULL;
    OptDict *o = optdict_parse(extra ? extra : "", NULL, &err);
    assert_non_null(o);
    optdict_set(o, "driver", "file");
    optdict_set(o, "filename", path);
    BlockDriverState *bs = bdrv_open(NULL, o, flags, &err);
    if (!bs) {
        fail_msg("open %s: %s", path, error_get_pretty(err));
    }
    return bs;
}

static void expect_open_error(const char *filename, OptDict *o, int flags, const char *msg)
{
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(filename, o, flags, &err);
    assert_null(bs);
    assert_non_null(err);
    if (strcmp(error_get_pretty(err), msg) != 0) {
        fail_msg("got error '%s', expected '%s'", error_get_pretty(err), msg);
    }
    error_free(err);
}

static void test_open_errors(void **state)
{
    (void)state;
    char msg[700];
    const char *missing = test_path("nope.img");
    snprintf(msg, sizeof(msg), "Could not open '%s': No such file or directory", missing);
    expect_open_error(missing, NULL, BDRV_O_RDWR | BDRV_O_PROTOCOL, msg);
    /* Same through a format: the message still names the file. */
    if (bdrv_find_format("raw")) {
        expect_open_error(missing, optdict_parse("driver=raw", NULL, NULL), BDRV_O_RDWR, msg);
    }

    snprintf(msg, sizeof(msg), "Could not open '%s': Is a directory", test_tmpdir());
    expect_open_error(test_tmpdir(), NULL, BDRV_O_PROTOCOL, msg);

    expect_open_error(NULL, optdict_parse("driver=file", NULL, NULL), 0,
                      "The 'file' block driver requires a file name (filename=...)");

    const char *p = test_path("opt.img");
    make_file(p, 4096, 1);
    OptDict *o = optdict_parse("driver=file,bogus=1", NULL, NULL);
    optdict_set(o, "filename", p);
    expect_open_error(NULL, o, 0, "Block protocol 'file' does not support the option 'bogus'");
}

static void test_buffered_rw(void **state)
{
    (void)state;
    const char *p = test_path("rw.img");
    make_file(p, 64 * KiB, 7);
    BlockDriverState *bs = open_file(p, NULL, BDRV_O_RDWR);
    assert_int_equal(bs->bl.request_alignment, 1);
    assert_true(bs->growable);
    assert_int_equal(bdrv_getlength(bs), 64 * KiB);
    assert_string_equal(bs->filename, p);
    assert_true(bs->supported_write_flags & BDRV_REQ_FUA);

    BdrvChild *c = test_child_new(bs);
    uint8_t wbuf[3000], rbuf[3000], fbuf[3000];
    test_pattern(wbuf, sizeof(wbuf), 99);
    assert_int_equal(bdrv_pwrite(c, 1001, sizeof(wbuf), wbuf, 0), 0);
    assert_int_equal(bdrv_pread(c, 1001, sizeof(rbuf), rbuf, 0), 0);
    assert_memory_equal(rbuf, wbuf, sizeof(wbuf));
    /* FUA write then flush: both succeed and the data is in the file. */
    assert_int_equal(bdrv_pwrite(c, 20000, 100, wbuf, BDRV_REQ_FUA), 0);
    assert_int_equal(bdrv_flush(bs), 0);

    int fd = open(p, O_RDONLY);
    assert_int_equal(pread(fd, fbuf, sizeof(fbuf), 1001), (ssize_t)sizeof(fbuf));
    assert_memory_equal(fbuf, wbuf, sizeof(wbuf));
    assert_int_equal(pread(fd, fbuf, 100, 20000), 100);
    assert_memory_equal(fbuf, wbuf, 100);
    /* Bytes around the write are untouched. */
    uint8_t orig[64 * KiB];
    test_pattern(orig, sizeof(orig), 7);
    assert_int_equal(pread(fd, fbuf, 1001, 0), 1001);
    assert_memory_equal(fbuf, orig, 1001);
    close(fd);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_odirect_alignment(void **state)
{
    (void)state;
    const char *p = test_path("direct.img");
    make_file(p, 1 * MiB, 3);
    BlockDriverState *bs = open_file(p, "cache.direct=on", BDRV_O_RDWR);
    assert_true(bs->open_flags & BDRV_O_NOCACHE);
    uint32_t ra = bs->bl.request_alignment;
    assert_true(IS_POW2(ra));
    assert_true(ra >= 512 && ra <= 4096);
    assert_int_equal(bs->bl.min_mem_alignment, ra);

    /* The detected alignment really is what O_DIRECT accepts... */
    int fd = open(p, O_RDONLY | O_DIRECT);
    assert_true(fd >= 0);
    uint8_t *abuf = aligned_alloc_or_die(4096, 8192);
    assert_int_equal(pread(fd, abuf, ra, ra), (ssize_t)ra);
    /* ...and half of it is not (only meaningful above 512). */
    if (ra > 512) {
        assert_true(pread(fd, abuf, ra / 2, 0) < 0);
    }
    close(fd);

    /* Unaligned I/O still works: the request path pads for us. */
    BdrvChild *c = test_child_new(bs);
    uint8_t wbuf[777], rbuf[777];
    test_pattern(wbuf, sizeof(wbuf), 5);
    assert_int_equal(bdrv_pwrite(c, 12345, sizeof(wbuf), wbuf, 0), 0);
    assert_int_equal(bdrv_pread(c, 12345, sizeof(rbuf), rbuf, 0), 0);
    assert_memory_equal(rbuf, wbuf, sizeof(wbuf));
    /* A misaligned multi-page buffer goes through a bounce buffer. */
    uint8_t *big = malloc(64 * KiB + 16), *orig_big = malloc(64 * KiB);
    test_pattern(orig_big, 64 * KiB, 3);
    assert_int_equal(bdrv_pread(c, 256 * KiB, 64 * KiB, big + 16, 0), 0);
    uint8_t *orig_all = malloc(1 * MiB);
    test_pattern(orig_all, 1 * MiB, 3);
    assert_memory_equal(big + 16, orig_all + 256 * KiB, 64 * KiB);
    free(orig_all);
    free(orig_big);
    free(big);
    test_child_free(c);
    bdrv_unref(bs);

    fd = open(p, O_RDONLY);
    assert_int_equal(pread(fd, rbuf, sizeof(rbuf), 12345), (ssize_t)sizeof(rbuf));
    assert_memory_equal(rbuf, wbuf, sizeof(wbuf));
    uint8_t *orig = malloc(1 * MiB), before[345];
    test_pattern(orig, 1 * MiB, 3);
    assert_int_equal(pread(fd, before, sizeof(before), 12000), (ssize_t)sizeof(before));
    assert_memory_equal(before, orig + 12000, sizeof(before));
    free(orig);
    free(abuf);
    close(fd);
}

typedef struct DrvRead {
    BlockDriverState *bs;
    int64_t offset, bytes;
    uint8_t *buf;
    int ret;
} DrvRead;

static void coroutine_fn drv_read_entry(void *opaque)
{
    DrvRead *r = opaque;
    IOVector q;
    iov_init_buf(&q, r->buf, r->bytes);
    r->ret = r->bs->drv->co_preadv(r->bs, r->offset, r->bytes, &q, 0, 0);
}

static void test_eof_zero_fill(void **state)
{
    (void)state;
    for (int direct = 0; direct <= 1; direct++) {
        const char *p = test_path(direct ? "eof-direct.img" : "eof.img");
        make_file(p, 1000, 11);
        BlockDriverState *bs = open_file(p, direct ? "cache=none" : NULL, 0);
        uint8_t *buf = aligned_alloc_or_die(4096, 4096), expect[1000];
        memset(buf, 0xAA, 4096);
        test_pattern(expect, sizeof(expect), 11);
        /* The driver itself: short read at EOF, rest zero-filled. */
        DrvRead r = { bs, 0, 4096, buf, -1 };
        test_run_co(drv_read_entry, &r);
        assert_int_equal(r.ret, 0);
        assert_memory_equal(buf, expect, 1000);
        assert_true(test_buf_is(buf + 1000, 4096 - 1000, 0));
        bdrv_unref(bs);
        free(buf);
    }
}

static off_t next_hole(const char *p, off_t from)
{
    int fd = open(p, O_RDONLY);
    off_t h = lseek(fd, from, SEEK_HOLE);
    close(fd);
    return h;
}

static off_t next_data(const char *p, off_t from)
{
    int fd = open(p, O_RDONLY);
    off_t d = lseek(fd, from, SEEK_DATA);
    close(fd);
    return d;
}

typedef struct Discard {
    BdrvChild *c;
    int64_t offset, bytes;
    int ret;
} Discard;

static void coroutine_fn discard_entry(void *opaque)
{
    Discard *d = opaque;
    d->ret = bdrv_co_pdiscard(d->c, d->offset, d->bytes);
}

static void test_zeroes_and_discard(void **state)
{
    (void)state;
    const char *p = test_path("zero.img");
    make_file(p, 1 * MiB, 21);
    BlockDriverState *bs = open_file(p, "discard=unmap", BDRV_O_RDWR);
    assert_true(bs->bl.has_discard);
    BdrvChild *c = test_child_new(bs);
    uint8_t *buf = malloc(256 * KiB);

    /* MAY_UNMAP zeroes punch a hole. */
    assert_int_equal(next_hole(p, 0), 1 * MiB);
    assert_int_equal(bdrv_pwrite_zeroes(c, 256 * KiB, 256 * KiB, BDRV_REQ_MAY_UNMAP), 0);
    assert_int_equal(next_hole(p, 0), 256 * KiB);
    assert_int_equal(next_data(p, 256 * KiB), 512 * KiB);
    assert_int_equal(bdrv_pread(c, 256 * KiB, 256 * KiB, buf, 0), 0);
    assert_true(test_buf_is(buf, 256 * KiB, 0));

    /* Plain zeroes read back as zero and keep the size. */
    assert_int_equal(bdrv_pwrite_zeroes(c, 600 * KiB, 100 * KiB, 0), 0);
    assert_int_equal(bdrv_pread(c, 600 * KiB, 100 * KiB, buf, 0), 0);
    assert_true(test_buf_is(buf, 100 * KiB, 0));
    assert_int_equal(bdrv_getlength(bs), 1 * MiB);

    /* Zeroes past EOF extend the file. */
    assert_int_equal(bdrv_pwrite_zeroes(c, 1 * MiB, 64 * KiB, BDRV_REQ_MAY_UNMAP), 0);
    assert_int_equal(bdrv_getlength(bs), 1 * MiB + 64 * KiB);

    /* Discard punches too: blocks go away. */
    struct stat st0, st1;
    assert_int_equal(stat(p, &st0), 0);
    Discard d = { c, 0, 128 * KiB, -1 };
    test_run_co(discard_entry, &d);
    assert_int_equal(d.ret, 0);
    assert_int_equal(stat(p, &st1), 0);
    assert_true(st1.st_blocks < st0.st_blocks);
    assert_int_equal(next_data(p, 0), 128 * KiB);
    assert_int_equal(bdrv_pread(c, 0, 128 * KiB, buf, 0), 0);
    assert_true(test_buf_is(buf, 128 * KiB, 0));
    /* The part after the discard is intact. */
    uint8_t *orig = malloc(1 * MiB);
    test_pattern(orig, 1 * MiB, 21);
    assert_int_equal(bdrv_pread(c, 128 * KiB, 128 * KiB, buf, 0), 0);
    assert_memory_equal(buf, orig + 128 * KiB, 128 * KiB);
    assert_true(bdrv_get_allocated_file_size(bs) < (int64_t)(1 * MiB));
    free(orig);
    free(buf);
    test_child_free(c);
    bdrv_unref(bs);
}

/* tmpfs has no FALLOC_FL_ZERO_RANGE: the driver must fall back (punch +
 * allocate) and keep working on later calls. */
static void test_zeroes_without_zero_range(void **state)
{
    (void)state;
    char dir[] = "/dev/shm/ublkd-test-XXXXXX";
    if (!mkdtemp(dir)) {
        skip();
    }
    char p[64];
    snprintf(p, sizeof(p), "%s/z.img", dir);
    make_file(p, 256 * KiB, 8);
    BlockDriverState *bs = open_file(p, NULL, BDRV_O_RDWR);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[64 * KiB];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(bdrv_pwrite_zeroes(c, i * 64 * KiB, 64 * KiB, 0), 0);
        assert_int_equal(bdrv_pread(c, i * 64 * KiB, sizeof(buf), buf, 0), 0);
        assert_true(test_buf_is(buf, sizeof(buf), 0));
    }
    uint8_t orig[256 * KiB];
    test_pattern(orig, sizeof(orig), 8);
    assert_int_equal(bdrv_pread(c, 128 * KiB, sizeof(buf), buf, 0), 0);
    assert_memory_equal(buf, orig + 128 * KiB, sizeof(buf));
    test_child_free(c);
    bdrv_unref(bs);
    unlink(p);
    rmdir(dir);
}

typedef struct Status {
    BlockDriverState *bs;
    int64_t offset, bytes, pnum, map;
    BlockDriverState *file;
    int ret;
} Status;

static void coroutine_fn status_entry(void *opaque)
{
    Status *s = opaque;
    s->ret = bdrv_co_block_status(s->bs, s->offset, s->bytes, &s->pnum, &s->map, &s->file);
}

static int status(BlockDriverState *bs, int64_t offset, int64_t bytes, int64_t *pnum)
{
    Status s = { .bs = bs, .offset = offset, .bytes = bytes, .ret = -1 };
    test_run_co(status_entry, &s);
    if (s.ret >= 0 && (s.ret & BDRV_BLOCK_OFFSET_VALID)) {
        assert_int_equal(s.map, offset);
        assert_ptr_equal(s.file, bs);
    }
    *pnum = s.pnum;
    return s.ret;
}

static void test_block_status(void **state)
{
    (void)state;
    const char *p = test_path("sparse.img");
    int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644);
    uint8_t blk[4096];
    memset(blk, 1, sizeof(blk));
    assert_int_equal(pwrite(fd, blk, sizeof(blk), 0), 4096);
    assert_int_equal(pwrite(fd, blk, sizeof(blk), 1 * MiB), 4096);
    assert_int_equal(ftruncate(fd, 2 * MiB), 0);
    close(fd);

    BlockDriverState *bs = open_file(p, NULL, 0);
    int64_t pnum;
    int ret = status(bs, 0, 2 * MiB, &pnum);
    assert_int_equal(ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_ZERO), BDRV_BLOCK_DATA);
    assert_true(ret & BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 4096);
    ret = status(bs, 4096, 2 * MiB - 4096, &pnum);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_false(ret & BDRV_BLOCK_DATA);
    assert_int_equal(pnum, 1 * MiB - 4096);
    ret = status(bs, 1 * MiB, 1 * MiB, &pnum);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_int_equal(pnum, 4096);
    /* The trailing hole. */
    ret = status(bs, 1 * MiB + 4096, 1 * MiB - 4096, &pnum);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_int_equal(pnum, 1 * MiB - 4096);
    assert_true(bdrv_get_allocated_file_size(bs) <= (int64_t)(64 * KiB));
    assert_int_equal(bdrv_has_zero_init(bs), 1);
    bdrv_unref(bs);
}

static void test_truncate_and_create(void **state)
{
    (void)state;
    Error *err = NULL;
    const char *p = test_path("created.img");
    const BlockDriver *file = bdrv_find_format("file");
    assert_non_null(file);

    OptDict *o = optdict_parse("size=1M,preallocation=full", NULL, NULL);
    assert_int_equal(bdrv_create(file, p, o, &err), 0);
    optdict_free(o);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, 1 * MiB);
    assert_true(st.st_blocks * 512 >= (off_t)(1 * MiB));

    /* An unknown create option fails before anything is created. */
    const char *q = test_path("never.img");
    o = optdict_parse("size=1M,cluster_size=64k", NULL, NULL);
    assert_int_equal(bdrv_create(file, q, o, &err), -EINVAL);
    optdict_free(o);
    assert_string_equal(error_get_pretty(err),
                        "Block format 'file' does not support the create option 'cluster_size'");
    error_free(err);
    err = NULL;
    assert_int_equal(access(q, F_OK), -1);

    o = optdict_parse("size=1M,preallocation=lots", NULL, NULL);
    assert_true(bdrv_create(file, q, o, &err) < 0);
    optdict_free(o);
    assert_string_equal(error_get_pretty(err), "invalid parameter value: lots");   /* qemu's */
    error_free(err);
    err = NULL;
    assert_int_equal(access(q, F_OK), -1);
    o = optdict_parse("size=1M,preallocation=metadata", NULL, NULL);
    assert_true(bdrv_create(file, q, o, &err) < 0);
    optdict_free(o);
    assert_string_equal(error_get_pretty(err), "Unsupported preallocation mode: metadata");
    error_free(err);
    err = NULL;

    BlockDriverState *bs = open_file(p, NULL, BDRV_O_RDWR);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(bdrv_truncate(c, 3 * MiB, true, PREALLOC_MODE_OFF, 0, &err), 0);
    assert_null(err);
    assert_int_equal(bdrv_getlength(bs), 3 * MiB);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, 3 * MiB);
    blkcnt_t blocks = st.st_blocks;
    assert_int_equal(bdrv_truncate(c, 4 * MiB, true, PREALLOC_MODE_FALLOC, 0, &err), 0);
    assert_int_equal(stat(p, &st), 0);
    assert_true(st.st_blocks >= blocks + (off_t)(1 * MiB / 512));
    assert_int_equal(bdrv_truncate(c, 512 * KiB, true, PREALLOC_MODE_OFF, 0, &err), 0);
    assert_int_equal(bdrv_getlength(bs), 512 * KiB);
    assert_true(bdrv_truncate(c, 1 * MiB, true, PREALLOC_MODE_METADATA, 0, &err) < 0);
    /* qemu-img resize --preallocation=metadata of a raw file prints this */
    assert_string_equal(error_get_pretty(err), "Unsupported preallocation mode: metadata");
    error_free(err);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_read_only(void **state)
{
    (void)state;
    const char *p = test_path("ro.img");
    make_file(p, 8192, 4);
    BlockDriverState *bs = open_file(p, "read-only=on", BDRV_O_RDWR);
    assert_true(bs->read_only);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[512] = { 0 }, orig[512];
    int ret = bdrv_pwrite(c, 0, sizeof(buf), buf, 0);
    assert_true(ret == -EPERM || ret == -EACCES);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    test_pattern(orig, sizeof(orig), 4);
    assert_memory_equal(buf, orig, sizeof(buf));
    test_child_free(c);
    bdrv_unref(bs);

    if (geteuid() != 0) {
        /* root ignores file modes, so this only means something for others. */
        char msg[600];
        chmod(p, 0444);
        snprintf(msg, sizeof(msg), "Could not open '%s': Permission denied", p);
        expect_open_error(p, NULL, BDRV_O_RDWR | BDRV_O_PROTOCOL, msg);
    }
}

/* A loop device over a file: sector-size alignment, not growable, fixed size. */
static void test_block_device(void **state)
{
    (void)state;
    const char *p = test_path("loop-backing.img");
    make_file(p, 4 * MiB, 31);
    char cmd[600], dev[64] = "";
    snprintf(cmd, sizeof(cmd), "losetup -f --show '%s' 2>/dev/null", p);
    FILE *f = geteuid() == 0 ? popen(cmd, "r") : NULL;
    if (!f) {
        skip();
    }
    if (!fgets(dev, sizeof(dev), f)) {
        dev[0] = '\0';
    }
    pclose(f);
    dev[strcspn(dev, "\n")] = '\0';
    if (!dev[0]) {
        skip();
    }

    BlockDriverState *bs = open_file(dev, "cache=none", BDRV_O_RDWR);
    assert_false(bs->growable);
    assert_int_equal(bdrv_getlength(bs), 4 * MiB);
    assert_true(bs->bl.request_alignment >= 512);
    assert_int_equal(bdrv_has_zero_init(bs), 0);
    BdrvChild *c = test_child_new(bs);
    uint8_t wbuf[1000], rbuf[1000];
    test_pattern(wbuf, sizeof(wbuf), 77);
    assert_int_equal(bdrv_pwrite(c, 4000, sizeof(wbuf), wbuf, 0), 0);
    assert_int_equal(bdrv_pread(c, 4000, sizeof(rbuf), rbuf, 0), 0);
    assert_memory_equal(rbuf, wbuf, sizeof(wbuf));
    assert_int_equal(bdrv_pwrite_zeroes(c, 64 * KiB, 64 * KiB, 0), 0);
    uint8_t *zb = malloc(64 * KiB);
    assert_int_equal(bdrv_pread(c, 64 * KiB, 64 * KiB, zb, 0), 0);
    assert_true(test_buf_is(zb, 64 * KiB, 0));
    free(zb);
    Error *err = NULL;
    assert_true(bdrv_truncate(c, 8 * MiB, true, PREALLOC_MODE_OFF, 0, &err) < 0);
    assert_non_null(strstr(error_get_pretty(err), "Cannot resize device"));
    error_free(err);
    test_child_free(c);
    bdrv_unref(bs);

    snprintf(cmd, sizeof(cmd), "losetup -d %s", dev);
    assert_int_equal(system(cmd), 0);
    /* What we wrote went to the backing file. */
    int fd = open(p, O_RDONLY);
    assert_int_equal(pread(fd, rbuf, sizeof(rbuf), 4000), (ssize_t)sizeof(rbuf));
    assert_memory_equal(rbuf, wbuf, sizeof(wbuf));
    close(fd);
}

/* Error text of a failed open_file-like open, "" if it succeeded (closed). */
static const char *try_open(const char *path, const char *extra, int flags)
{
    static char msg[1024];
    Error *err = NULL;
    OptDict *o = optdict_parse(extra ? extra : "", NULL, &err);
    assert_non_null(o);
    optdict_set(o, "driver", "file");
    optdict_set(o, "filename", path);
    BlockDriverState *bs = bdrv_open(NULL, o, flags, &err);
    if (bs) {
        bdrv_unref(bs);
        return "";
    }
    snprintf(msg, sizeof(msg), "%s", error_get_pretty(err));
    error_free(err);
    return msg;
}

/* Whether any QEMU lock byte (100-103, 200-203) of path is held by anyone:
 * a write lock on it from a fresh description would be refused. */
static bool lock_bytes_held(const char *path)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    bool held = false;
    for (int base = 100; base <= 200 && !held; base += 100) {
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = base,
                            .l_len = 4 };
        assert_int_equal(fcntl(fd, F_OFD_GETLK, &fl), 0);
        held = fl.l_type != F_UNLCK;
    }
    close(fd);
    return held;
}

/* A second reference to the open file description that bs's fd uses, the
 * way an io_uring request still being freed holds one. */
static int dup_description_of(const char *path)
{
    struct stat want, st;
    assert_int_equal(stat(path, &want), 0);
    for (int fd = 3; fd < 1024; fd++) {
        if (fstat(fd, &st) == 0 && st.st_ino == want.st_ino && st.st_dev == want.st_dev) {
            return dup(fd);
        }
    }
    fail_msg("no descriptor of %s is open", path);
    return -1;
}

/*
 * The locks go with the close, not with the last reference to the open file
 * description.  io_uring can hold such a reference past close(): under
 * DEFER_TASKRUN a request an io-wq worker ran (fsync, fallocate, a write that
 * would block) can be freed after its completion was reaped, and the fput
 * waits in the ring's task-work list, or in its exit work after the process
 * is gone.  The next open, in this process or the next, then met a lock that
 * nobody owned ("Failed to get "write" lock" on a fresh convert target, 1 in
 * 100-200 runs in the 6.12 VM).  A dup() stands in for that reference here,
 * so the test fails every time the close leaves the bytes to the last fput.
 */
static void test_lock_released_at_close(void **state)
{
    (void)state;
    const char *p = test_path("relock.img");
    make_file(p, 1 * MiB, 5);
    uint8_t *buf = aligned_alloc(4096, 64 * KiB);
    test_pattern(buf, 64 * KiB, 11);
    for (int i = 0; i < 4; i++) {
        BlockDriverState *bs = open_file(p, i % 2 ? "cache=none" : NULL,
                                         i < 2 ? BDRV_O_RDWR : 0);
        BdrvChild *c = test_child_new(bs);
        if (i < 2) {
            assert_int_equal(bdrv_pwrite(c, 0, 64 * KiB, buf, 0), 0);
            assert_int_equal(bdrv_flush(bs), 0);
        }
        assert_true(lock_bytes_held(p));
        int lingering = dup_description_of(p);
        test_child_free(c);
        bdrv_unref(bs);
        assert_false(lock_bytes_held(p));
        /* And the image opens again at once, as the next command would. */
        assert_string_equal(try_open(p, NULL, BDRV_O_RDWR), "");
        close(lingering);
    }
    free(buf);
}

/* A forked copy that closes its inherited image leaves the parent's locks:
 * they belong to the description both share. */
static void test_lock_kept_after_forked_close(void **state)
{
    (void)state;
    const char *p = test_path("forklock.img");
    make_file(p, 64 * KiB, 5);
    BlockDriverState *bs = open_file(p, NULL, BDRV_O_RDWR);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        bdrv_unref(bs);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(lock_bytes_held(p));
    bdrv_unref(bs);
    assert_false(lock_bytes_held(p));
}

static void test_locking(void **state)
{
    (void)state;
    const char *p = test_path("locked.img");
    char want_w[700], want_sw[700];
    make_file(p, 64 * KiB, 3);
    snprintf(want_w, sizeof(want_w),
             "Failed to get \"write\" lock\nIs another process using the image [%s]?", p);
    snprintf(want_sw, sizeof(want_sw),
             "Failed to get shared \"write\" lock\nIs another process using the image [%s]?", p);

    /* A writer excludes other writers and readers (OFD locks conflict
     * within one process too: each open is its own description). */
    BlockDriverState *w = open_file(p, NULL, BDRV_O_RDWR);
    assert_string_equal(try_open(p, NULL, BDRV_O_RDWR), want_w);
    assert_string_equal(try_open(p, NULL, 0), want_sw);
    assert_string_equal(try_open(p, "force-share=on", 0), "");
    assert_string_equal(try_open(p, "locking=off", BDRV_O_RDWR), "");
    assert_non_null(strstr(try_open(p, "locking=maybe", 0), "locking"));
    /* Creating over it would empty it: refused, the data is still there. */
    Error *err = NULL;
    OptDict *o = optdict_parse("size=4k", NULL, NULL);
    assert_true(bdrv_create(bdrv_find_format("file"), p, o, &err) < 0);
    optdict_free(o);
    assert_string_equal(error_get_pretty(err), want_w);
    error_free(err);
    err = NULL;
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_size, 64 * KiB);
    bdrv_unref(w);

    /* Readers share; a writer (or create) cannot join them. */
    BlockDriverState *r1 = open_file(p, NULL, 0);
    BlockDriverState *r2 = open_file(p, NULL, 0);
    assert_string_equal(try_open(p, NULL, BDRV_O_RDWR), want_w);
    o = optdict_parse("size=4k", NULL, NULL);
    assert_true(bdrv_create(bdrv_find_format("file"), p, o, &err) < 0);
    optdict_free(o);
    assert_string_equal(error_get_pretty(err), want_w);
    error_free(err);
    bdrv_unref(r1);
    bdrv_unref(r2);
    /* Closing drops the locks. */
    assert_string_equal(try_open(p, NULL, BDRV_O_RDWR), "");

    /* force-share promises not to write. */
    assert_string_equal(try_open(p, "force-share=on", BDRV_O_RDWR),
                        "force-share=on can only be used with read-only images");
}

/* Which lock bytes of path someone holds: bit i for byte 100+i, bit 4+i for
 * byte 200+i (a write lock from a fresh description would be refused). */
static unsigned held_bytes(const char *path)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    unsigned held = 0;
    for (int i = 0; i < 8; i++) {
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                            .l_start = (i < 4 ? 100 : 196) + i, .l_len = 1 };
        assert_int_equal(fcntl(fd, F_OFD_GETLK, &fl), 0);
        held |= fl.l_type != F_UNLCK ? 1u << i : 0;
    }
    close(fd);
    return held;
}

#define PERM_BYTES(perm, shared) ((perm) | ((~(shared) & BLK_PERM_ALL) << 4))

/*
 * The lock bytes stand for the permissions the node's users need and
 * share, not for its read-write flag: a read-write node that only a reader
 * which shares everything uses holds just the read byte; when that user
 * goes, the node is its opener's again (write and resize, sharing reads).
 */
static void test_lock_bytes_follow_perms(void **state)
{
    (void)state;
    const char *p = test_path("perm.img");
    make_file(p, 64 * KiB, 1);
    BlockDriverState *bs = open_file(p, NULL, BDRV_O_RDWR);
    if (!held_bytes(p)) {
        bdrv_unref(bs);
        skip();   /* no lock support here */
    }
    const unsigned opener = PERM_BYTES(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                       BLK_PERM_RESIZE, BLK_PERM_EXCLUSIVE_SHARED);
    assert_int_equal(held_bytes(p), opener);

    bdrv_ref(bs);
    BdrvChild *r = bdrv_root_attach_child(bs, "reader", BDRV_CHILD_FILTERED,
                                          BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, NULL);
    assert_non_null(r);
    assert_int_equal(held_bytes(p), PERM_BYTES(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL));
    /* so another writer may come in now */
    assert_string_equal(try_open(p, NULL, BDRV_O_RDWR), "");

    /* A second user that writes and shares only reads: both sets. */
    bdrv_ref(bs);
    BdrvChild *w = bdrv_root_attach_child(bs, "writer", BDRV_CHILD_FILTERED,
                                          BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                          BLK_PERM_ALL & ~BLK_PERM_RESIZE, NULL);
    assert_non_null(w);
    assert_int_equal(held_bytes(p), PERM_BYTES(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                               BLK_PERM_ALL & ~BLK_PERM_RESIZE));
    char want[700];
    snprintf(want, sizeof(want),   /* the writer does not let others resize */
             "Failed to get \"resize\" lock\nIs another process using the image [%s]?", p);
    assert_string_equal(try_open(p, NULL, BDRV_O_RDWR), want);
    bdrv_unref_child(NULL, w);
    assert_int_equal(held_bytes(p), PERM_BYTES(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL));

    /* A user that another process's lock refuses is not attached, and
     * what the node held stays as it was. */
    int other = open(p, O_RDWR);
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 101, .l_len = 1 };
    assert_int_equal(fcntl(other, F_OFD_SETLK, &fl), 0);   /* someone writes */
    Error *err = NULL;
    bdrv_ref(bs);
    assert_null(bdrv_root_attach_child(bs, "excl", BDRV_CHILD_FILTERED, BLK_PERM_CONSISTENT_READ,
                                       BLK_PERM_CONSISTENT_READ, &err));
    assert_non_null(strstr(error_get_pretty(err), "Failed to get shared \"write\" lock"));
    assert_int_equal(error_get_errno(err), EAGAIN);   /* what `recover` retries on */
    error_free(err);
    close(other);
    assert_int_equal(held_bytes(p), PERM_BYTES(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL));

    bdrv_unref_child(NULL, r);
    assert_int_equal(held_bytes(p), opener);
    bdrv_unref(bs);
    assert_int_equal(held_bytes(p), 0);
}

/* Replacing a child moves what its edge needs: the new file takes the
 * edge's bytes, the old one is its opener's again. */
static void test_lock_bytes_follow_replace(void **state)
{
    (void)state;
    const char *pa = test_path("repl-a.img"), *pb = test_path("repl-b.img");
    make_file(pa, 64 * KiB, 1);
    make_file(pb, 64 * KiB, 2);
    BlockDriverState *a = open_file(pa, NULL, BDRV_O_RDWR), *b = open_file(pb, NULL, BDRV_O_RDWR);
    if (!held_bytes(pa)) {
        bdrv_unref(a);
        bdrv_unref(b);
        skip();
    }
    const unsigned opener = PERM_BYTES(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE |
                                       BLK_PERM_RESIZE, BLK_PERM_EXCLUSIVE_SHARED);
    const unsigned reader = PERM_BYTES(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    /* a filter-like parent whose only user reads and shares everything */
    BlockDriverState *top = mem_node_new(NULL);
    bdrv_ref(top);   /* the user edge's reference; we keep ours */
    BdrvChild *user = bdrv_root_attach_child(top, "user", BDRV_CHILD_FILTERED,
                                             BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, NULL);
    assert_non_null(user);
    bdrv_ref(a);
    BdrvChild *fc = bdrv_attach_child(top, a, "file", BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                                      NULL);
    assert_non_null(fc);
    assert_int_equal(held_bytes(pa), reader);
    assert_int_equal(held_bytes(pb), opener);

    Error *err = NULL;
    assert_int_equal(bdrv_replace_child_bs(fc, b, &err), 0);
    assert_int_equal(held_bytes(pa), opener);
    assert_int_equal(held_bytes(pb), reader);

    bdrv_unref_child(NULL, user);   /* top is its opener's: it and b take more */
    assert_int_equal(held_bytes(pb), opener);
    bdrv_unref(top);
    bdrv_unref(a);
    bdrv_unref(b);
    assert_int_equal(held_bytes(pa), 0);
    assert_int_equal(held_bytes(pb), 0);
}

static void test_not_a_file(void **state)
{
    (void)state;
    char msg[700];
    const char *f = test_path("fifo");
    assert_int_equal(mkfifo(f, 0600), 0);
    /* Without a writer a plain open() of a FIFO would wait forever. */
    snprintf(msg, sizeof(msg),
             "Could not open '%s': it is a FIFO, not a regular file or block device", f);
    assert_string_equal(try_open(f, NULL, 0), msg);
    assert_string_equal(try_open(f, NULL, BDRV_O_RDWR), msg);
    snprintf(msg, sizeof(msg),
             "Could not open '/dev/null': it is a character device, not a regular file or "
             "block device");
    assert_string_equal(try_open("/dev/null", NULL, 0), msg);
}

static void test_create_rounds_to_sectors(void **state)
{
    (void)state;
    static const struct { const char *size; off_t want; } cases[] = {
        { "1000", 1024 }, { "1", 512 }, { "512", 512 }, { "0", 0 }, { "1048577", 1049088 },
    };
    const char *p = test_path("round.img");
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        Error *err = NULL;
        char opts[64];
        snprintf(opts, sizeof(opts), "size=%s", cases[i].size);
        OptDict *o = optdict_parse(opts, NULL, NULL);
        assert_int_equal(bdrv_create(bdrv_find_format("file"), p, o, &err), 0);
        optdict_free(o);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        if (st.st_size != cases[i].want) {
            fail_msg("size=%s made %lld bytes, want %lld", cases[i].size,
                     (long long)st.st_size, (long long)cases[i].want);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_buffered_rw),
        cmocka_unit_test(test_odirect_alignment),
        cmocka_unit_test(test_eof_zero_fill),
        cmocka_unit_test(test_zeroes_and_discard),
        cmocka_unit_test(test_zeroes_without_zero_range),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_truncate_and_create),
        cmocka_unit_test(test_read_only),
        cmocka_unit_test(test_locking),
        cmocka_unit_test(test_lock_released_at_close),
        cmocka_unit_test(test_lock_kept_after_forked_close),
        cmocka_unit_test(test_lock_bytes_follow_perms),
        cmocka_unit_test(test_lock_bytes_follow_replace),
        cmocka_unit_test(test_not_a_file),
        cmocka_unit_test(test_create_rounds_to_sectors),
        cmocka_unit_test(test_block_device),
    };
    return cmocka_run_group_tests(tests, setup, test_tmpdir_teardown);
}
