/*
 * test-qcow2-header-write.c - the qcow2 header rewrite (QEMU's
 * qcow2_update_header, drivers/qcow2-header-write.c) through the
 * change_backing_file op: every extension kind in QEMU 7.2's order, unknown
 * extensions and unknown header fields kept, a name that does not fit
 * refused with nothing written, and crash safety: a crash at any write of a
 * backing change leaves an image that opens with the old or the new backing.
 */
#include <errno.h>
#include "crash-file.h"
#include "qcow2-image.h"
#include "qcow2-refcheck.h"

#define FEATURE_TABLE_LEN (8 * 48)

/* An image with a backing name and format, two unknown extensions (one
 * empty), an ignored data-file name, and 8 unknown header bytes. */
static Q2Image make_rich(uint32_t cb)
{
    Q2Image img = q2_make(cb, MiB, false, 0);
    q2_put32(img.file, QH_HEADER_LENGTH, 120);
    mem_write_raw(img.file, 112, "UNKNOWNF", 8);
    int64_t off = 120;
    off = q2_add_ext(&img, off, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
    off = q2_add_ext(&img, off, 0x12345678, "hello", 5);
    off = q2_add_ext(&img, off, 0xdeadbeef, NULL, 0);
    off = q2_add_ext(&img, off, 0, NULL, 0);
    mem_write_raw(img.file, off, "old-base.img", 12);
    q2_put64(img.file, QH_BACKING_OFFSET, (uint64_t)off);
    q2_put32(img.file, QH_BACKING_SIZE, 12);
    return img;
}

static uint32_t ld32(const uint8_t *b, size_t o) { return qcow2_ld32(b, o); }

static void expect_ext(const uint8_t *c0, size_t *off, uint32_t type, const void *data,
                       uint32_t len)
{
    assert_int_equal(ld32(c0, *off), type);
    assert_int_equal(ld32(c0, *off + 4), len);
    if (data) {
        assert_memory_equal(c0 + *off + 8, data, len);
    }
    *off += 8 + ALIGN_UP(len, 8);
}

static void test_round_trip(void **state)
{
    (void)state;
    for (uint32_t cb = 12; cb <= 16; cb += 4) {
        Q2Image img = make_rich(cb);
        q2_open(&img, BDRV_O_RDWR | BDRV_O_NO_BACKING, NULL, NULL);
        assert_non_null(img.bs);
        assert_string_equal(bdrv_get_backing_filename(img.bs), "old-base.img");
        assert_int_equal(bdrv_change_backing_file(img.bs, "new-base.qcow2", "qcow2", true), 0);
        assert_string_equal(bdrv_get_backing_filename(img.bs), "new-base.qcow2");
        q2_close(&img);

        uint8_t *c0 = malloc(Q2_C(&img));
        mem_read_raw(img.file, 0, c0, (int64_t)Q2_C(&img));
        assert_int_equal(ld32(c0, QH_HEADER_LENGTH), 120);
        assert_memory_equal(c0 + 112, "UNKNOWNF", 8);
        size_t off = 120;
        expect_ext(c0, &off, QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
        if (cb > 12) {          /* QEMU's table only above 4 KiB clusters */
            assert_int_equal(ld32(c0, off), QCOW2_EXT_FEATURE_TABLE);
            assert_memory_equal(c0 + off + 8 + 2, "dirty bit", 9);
            expect_ext(c0, &off, QCOW2_EXT_FEATURE_TABLE, NULL, FEATURE_TABLE_LEN);
        }
        expect_ext(c0, &off, 0x12345678, "hello", 5);
        expect_ext(c0, &off, 0xdeadbeef, NULL, 0);
        expect_ext(c0, &off, 0, NULL, 0);
        assert_int_equal(qcow2_ld64(c0, QH_BACKING_OFFSET), off);
        assert_int_equal(ld32(c0, QH_BACKING_SIZE), 14);
        assert_memory_equal(c0 + off, "new-base.qcow2", 14);
        free(c0);

        /* it opens again with all of it; a second rewrite drops the backing */
        q2_open(&img, BDRV_O_RDWR | BDRV_O_NO_BACKING, NULL, NULL);
        assert_non_null(img.bs);
        assert_string_equal(bdrv_get_backing_filename(img.bs), "new-base.qcow2");
        assert_string_equal(bdrv_get_backing_format(img.bs), "qcow2");
        assert_int_equal(bdrv_change_backing_file(img.bs, NULL, NULL, false), 0);
        q2_close(&img);
        q2_open(&img, BDRV_O_RDWR | BDRV_O_NO_BACKING, NULL, NULL);
        assert_non_null(img.bs);
        assert_string_equal(bdrv_get_backing_filename(img.bs), "");
        assert_string_equal(bdrv_get_backing_format(img.bs), "");
        q2_close(&img);
        c0 = malloc(Q2_C(&img));
        mem_read_raw(img.file, 0, c0, (int64_t)Q2_C(&img));
        assert_int_equal(qcow2_ld64(c0, QH_BACKING_OFFSET), 0);
        off = 120;
        if (cb > 12) {
            expect_ext(c0, &off, QCOW2_EXT_FEATURE_TABLE, NULL, FEATURE_TABLE_LEN);
        }
        expect_ext(c0, &off, 0x12345678, "hello", 5);   /* still kept */
        free(c0);
        q2_free(&img);
    }
}

/* The API's own refusals, and a format without backing files. */
static void test_refusals(void **state)
{
    (void)state;
    Q2Image img = make_rich(12);
    q2_open(&img, BDRV_O_RDWR | BDRV_O_NO_BACKING, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_change_backing_file(img.bs, "x", NULL, true), -EINVAL);
    assert_int_equal(bdrv_change_backing_file(img.bs, NULL, "raw", false), -EINVAL);
    char longname[1100];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = 0;
    assert_int_equal(bdrv_change_backing_file(img.bs, longname, "raw", true), -EINVAL);
    q2_free(&img);

    MemConfig cfg = { .size = MiB };
    BlockDriverState *mem = mem_node_new(&cfg);
    assert_int_equal(bdrv_change_backing_file(mem, "x", "raw", true), -ENOTSUP);
    bdrv_unref(mem);
}

/* A name that does not fit the cluster: -ENOSPC, and not one byte written. */
static void test_no_space(void **state)
{
    (void)state;
    Q2Image img = make_rich(9);
    q2_open(&img, BDRV_O_RDWR | BDRV_O_NO_BACKING, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t before[512], after[512];
    mem_read_raw(img.file, 0, before, 512);
    int writes = mem_calls(img.file, MEM_OP_WRITE);
    char name[400];
    memset(name, 'b', sizeof(name) - 1);
    name[sizeof(name) - 1] = 0;
    assert_int_equal(bdrv_change_backing_file(img.bs, name, "raw", true), -ENOSPC);
    assert_int_equal(mem_calls(img.file, MEM_OP_WRITE), writes);
    mem_read_raw(img.file, 0, after, 512);
    assert_memory_equal(before, after, 512);
    assert_string_equal(bdrv_get_backing_filename(img.bs), "old-base.img");
    /* what fits does */
    name[300] = 0;
    assert_int_equal(bdrv_change_backing_file(img.bs, name, "raw", true), 0);
    q2_free(&img);
}

/* A crash at every write and flush of a change: each image a crash can
 * leave opens with the old or the new backing and is consistent. */
static void test_crash(void **state)
{
    (void)state;
    for (uint32_t cb = 9; cb <= 16; cb += 7) {
        Q2Image src = make_rich(cb);
        size_t len = (size_t)mem_size(src.file);
        uint8_t *init = malloc(len);
        mem_read_raw(src.file, 0, init, (int64_t)len);
        q2_free(&src);

        int64_t total = 0;
        for (int64_t at = 0; at == 0 || at <= total + 1; at++) {
            static int serial;
            char name[32];
            snprintf(name, sizeof(name), "hwcrash%d", serial++);
            Q2Image img = { .file = crash_file_new(name, init, len), .cb = cb };
            q2_open(&img, BDRV_O_RDWR | BDRV_O_NO_BACKING, NULL, NULL);
            assert_non_null(img.bs);
            int64_t ops0 = crash_file_ops(img.file);
            crash_file_arm(img.file, at);
            bdrv_change_backing_file(img.bs, "new-base.qcow2", "qcow2", true);
            if (at == 0) {
                total = crash_file_ops(img.file) - ops0;
                assert_true(total >= 2);          /* the write and its flush */
            }
            for (uint64_t seed = 0; seed < 8; seed++) {
                size_t plen;
                /* 512-byte clusters: the one sector may be torn, i.e. not */
                uint8_t *p = crash_file_persisted(img.file, seed, 50, cb == 9 ? 50 : 0, &plen);
                Q2Check c = q2_refcheck(p, plen);
                if (c.errors) {
                    fail_msg("cb %u crash at %" PRId64 " seed %" PRIu64 ": %s", cb, at, seed,
                             c.first);
                }
                snprintf(name, sizeof(name), "hwcheck%d", serial++);
                Q2Image chk = { .file = crash_file_new(name, p, plen), .cb = cb };
                q2_open(&chk, BDRV_O_NO_BACKING, NULL, NULL);
                if (!chk.bs) {
                    fail_msg("cb %u crash at %" PRId64 ": %s", cb, at,
                             error_get_pretty(chk.err));
                }
                const char *b = bdrv_get_backing_filename(chk.bs);
                const char *f = bdrv_get_backing_format(chk.bs);
                bool old = !strcmp(b, "old-base.img") && !strcmp(f, "raw");
                bool new = !strcmp(b, "new-base.qcow2") && !strcmp(f, "qcow2");
                if (!old && !new) {
                    fail_msg("cb %u crash at %" PRId64 ": backing '%s' (%s)", cb, at, b, f);
                }
                q2_free(&chk);
                free(p);
            }
            q2_free(&img);
        }
        free(init);
    }
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_no_space),
        cmocka_unit_test(test_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
