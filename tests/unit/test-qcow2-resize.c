/*
 * test-qcow2-resize.c - the qcow2 driver's co_truncate (drivers/qcow2-resize.c):
 * growth inside the L1 table and growth that needs a new one, a crash at
 * every protocol operation of an L1 growth (crash-file.h: each leaves the
 * old image or the new one, at worst with leaked clusters, never lost
 * data), shrinking a free tail (L2 tables past the end freed), a shrink
 * refused while data lies past the new end, v2 images with snapshots
 * refused, and the preallocation modes.
 */
#include <errno.h>
#include <inttypes.h>
#include "crash-file.h"
#include "qcow2-image.h"
#include "qcow2-refcheck.h"

/* 4 KiB clusters: one L2 table (512 entries) covers 2 MiB. */
#define CB 12
#define C  (1ULL << CB)

static uint8_t *image_bytes(Q2Image *img, size_t *len)
{
    *len = (size_t)mem_size(img->file);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    mem_read_raw(img->file, 0, buf, (int64_t)*len);
    return buf;
}

static uint64_t be64_at(const uint8_t *p, uint64_t off)
{
    return qcow2_ld64(p, (size_t)off);
}

/* Refcount of cluster ci in an image of q2_make's layout (one 16-bit block). */
static unsigned refcount_of(const uint8_t *p, uint64_t ci)
{
    return qcow2_ld16(p, (size_t)(2 * C + ci * 2));
}

static void assert_clean(const uint8_t *p, size_t len, bool leaks_ok)
{
    Q2Check c = q2_refcheck(p, len);
    if (c.errors || c.low || c.copied || (!leaks_ok && c.leaks)) {
        fail_msg("inconsistent: %d errors, %d low, %d copied, %d leaks: %s", c.errors, c.low,
                 c.copied, c.leaks, c.first);
    }
}

/* An image of size bytes with a pattern written at 0 (64 KiB) through the driver. */
static Q2Image make_image(uint64_t size, uint8_t *pattern)
{
    Q2Image img = q2_make(CB, size, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    test_pattern(pattern, 64 * KiB, 42);
    assert_int_equal(bdrv_pwrite(img.child, 0, 64 * KiB, pattern, 0), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    return img;
}

static void assert_pattern(Q2Image *img, const uint8_t *pattern)
{
    uint8_t buf[64 * KiB];
    assert_int_equal(bdrv_pread(img->child, 0, sizeof(buf), buf, 0), 0);
    assert_memory_equal(buf, pattern, sizeof(buf));
}

static int truncate_to(Q2Image *img, int64_t size, PreallocMode mode, Error **errp)
{
    return bdrv_truncate(img->child, size, true, mode, 0, errp);
}

static void test_grow_within_l1(void **state)
{
    (void)state;
    uint8_t pat[64 * KiB];
    Q2Image img = make_image(1 * MiB, pat);
    Error *err = NULL;
    assert_int_equal(truncate_to(&img, 2 * MiB, PREALLOC_MODE_OFF, &err), 0);
    assert_int_equal(bdrv_getlength(img.bs), 2 * MiB);
    assert_pattern(&img, pat);
    q2_close(&img);
    size_t len;
    uint8_t *p = image_bytes(&img, &len);
    assert_int_equal(be64_at(p, QH_SIZE), 2 * MiB);
    assert_int_equal(qcow2_ld32(p, QH_L1_SIZE), 1);           /* no new table */
    assert_int_equal(be64_at(p, QH_L1_OFFSET), 3 * C);
    assert_clean(p, len, false);
    free(p);
    q2_free(&img);
}

static void test_grow_l1(void **state)
{
    (void)state;
    uint8_t pat[64 * KiB];
    Q2Image img = make_image(1 * MiB, pat);
    Error *err = NULL;
    assert_int_equal(truncate_to(&img, 64 * MiB, PREALLOC_MODE_OFF, &err), 0);
    assert_pattern(&img, pat);
    /* the new area takes writes (a new L2 table under the new L1) */
    uint8_t buf[4096];
    memset(buf, 0x5c, sizeof(buf));
    assert_int_equal(bdrv_pwrite(img.child, 63 * MiB, sizeof(buf), buf, 0), 0);
    q2_close(&img);
    size_t len;
    uint8_t *p = image_bytes(&img, &len);
    assert_int_equal(be64_at(p, QH_SIZE), 64 * MiB);
    assert_int_equal(qcow2_ld32(p, QH_L1_SIZE), 32);
    uint64_t l1 = be64_at(p, QH_L1_OFFSET);
    assert_int_not_equal(l1, 3 * C);
    assert_int_equal(be64_at(p, l1), (4 * C) | QCOW2_OFLAG_COPIED);   /* entries copied */
    /* the old table was freed: the next L2 table took its cluster */
    assert_int_equal(be64_at(p, l1 + 31 * 8), (3 * C) | QCOW2_OFLAG_COPIED);
    assert_int_equal(refcount_of(p, 3), 1);
    assert_clean(p, len, false);
    free(p);
    /* and it reads back after a reopen */
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    assert_pattern(&img, pat);
    uint8_t back[4096];
    assert_int_equal(bdrv_pread(img.child, 63 * MiB, sizeof(back), back, 0), 0);
    assert_memory_equal(back, buf, sizeof(back));
    q2_free(&img);
}

/* A crash at every protocol operation of a grow that replaces the L1 table,
 * each crash image made with several subsets of the unflushed writes: the
 * old size with the old table or the new size with the new one, data
 * intact, refcounts never below the references (leaks allowed). */
static void test_grow_l1_crash(void **state)
{
    (void)state;
    uint8_t pat[64 * KiB];
    Q2Image src = make_image(1 * MiB, pat);
    q2_close(&src);
    size_t len;
    uint8_t *init = image_bytes(&src, &len);
    q2_free(&src);
    int64_t total = 0;
    int n_old = 0, n_new = 0;
    for (int64_t at = 0; at <= total; at++) {
        BlockDriverState *file = crash_file_new("rsz", init, len);
        crash_file_arm(file, 0);
        Q2Image img = { .file = file, .cb = CB };
        q2_open(&img, BDRV_O_RDWR, NULL, NULL);
        assert_non_null(img.bs);
        int64_t ops0 = crash_file_ops(file);
        crash_file_arm(file, at);
        Error *err = NULL;
        int ret = truncate_to(&img, 64 * MiB, PREALLOC_MODE_OFF, &err);
        if (ret < 0) {
            fail_msg("truncate: %s", error_get_pretty(err));
        }
        if (at == 0) {
            total = crash_file_ops(file) - ops0;
            assert_true(total > 3);
        }
        q2_close(&img);
        for (uint64_t seed = 1; seed <= 6; seed++) {
            size_t plen;
            uint8_t *p = crash_file_persisted(file, seed * 7919 + (uint64_t)at, 50, 20, &plen);
            assert_clean(p, plen, true);
            uint64_t size = be64_at(p, QH_SIZE);
            uint32_t l1_size = qcow2_ld32(p, QH_L1_SIZE);
            if (size == 1 * MiB) {
                n_old++;
            } else {
                assert_int_equal(size, 64 * MiB);
                assert_int_equal(l1_size, 32);        /* the size never outruns the table */
                n_new++;
            }
            BlockDriverState *f2 = crash_file_new("rsz2", p, plen);
            free(p);
            Q2Image v = { .file = f2, .cb = CB };
            q2_open(&v, 0, NULL, NULL);
            if (!v.bs) {
                fail_msg("crash at %" PRId64 ": open: %s", at, error_get_pretty(v.err));
            }
            assert_pattern(&v, pat);
            q2_free(&v);
        }
        bdrv_unref(file);
    }
    free(init);
    /* the crash points cover both outcomes */
    assert_true(n_old > 0);
    assert_true(n_new > 0);
}

static void test_shrink_free_tail(void **state)
{
    (void)state;
    uint8_t pat[64 * KiB];
    Q2Image img = make_image(1 * MiB, pat);
    Error *err = NULL;
    assert_int_equal(truncate_to(&img, 16 * MiB, PREALLOC_MODE_OFF, &err), 0);
    /* zero clusters with host clusters past the new end, and L2 tables there */
    uint8_t buf[8192];
    memset(buf, 0x33, sizeof(buf));
    assert_int_equal(bdrv_pwrite(img.child, 9 * MiB, sizeof(buf), buf, 0), 0);
    assert_int_equal(bdrv_pwrite(img.child, 1 * MiB, sizeof(buf), buf, 0), 0);
    assert_int_equal(bdrv_pwrite_zeroes(img.child, 9 * MiB, sizeof(buf), 0), 0);
    assert_int_equal(bdrv_pwrite_zeroes(img.child, 1 * MiB, sizeof(buf), 0), 0);
    assert_int_equal(truncate_to(&img, 512 * KiB, PREALLOC_MODE_OFF, &err), 0);
    assert_int_equal(bdrv_getlength(img.bs), 512 * KiB);
    assert_pattern(&img, pat);
    q2_close(&img);
    size_t len;
    uint8_t *p = image_bytes(&img, &len);
    assert_int_equal(be64_at(p, QH_SIZE), 512 * KiB);
    uint64_t l1 = be64_at(p, QH_L1_OFFSET);
    for (uint32_t i = 1; i < qcow2_ld32(p, QH_L1_SIZE); i++) {
        assert_int_equal(be64_at(p, l1 + i * 8), 0);    /* tables past the end dropped */
    }
    /* the zero cluster at 1 MiB (inside the kept L2 table) is gone too */
    assert_int_equal(be64_at(p, 4 * C + (1 * MiB / C) * 8), 0);
    assert_clean(p, len, false);                        /* nothing leaked */
    free(p);
    q2_free(&img);
}

static void test_shrink_refused_data(void **state)
{
    (void)state;
    uint8_t pat[64 * KiB];
    Q2Image img = make_image(4 * MiB, pat);
    uint8_t buf[512];
    memset(buf, 0x44, sizeof(buf));
    assert_int_equal(bdrv_pwrite(img.child, 3 * MiB + 4096, sizeof(buf), buf, 0), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    size_t len0, len1;
    uint8_t *before = image_bytes(&img, &len0);
    Error *err = NULL;
    assert_int_equal(truncate_to(&img, 1 * MiB, PREALLOC_MODE_OFF, &err), -ENOTEMPTY);
    assert_non_null(strstr(error_get_pretty(err), "guest offset 3149824 (0x301000)"));
    error_free(err);
    err = NULL;
    /* the partial cluster of the new end counts from the new end: data
     * right after it is in the way, data before it is not */
    assert_int_equal(truncate_to(&img, 3 * MiB + 4096, PREALLOC_MODE_OFF, &err), -ENOTEMPTY);
    error_free(err);
    err = NULL;
    assert_int_equal(bdrv_getlength(img.bs), 4 * MiB);
    uint8_t *after = image_bytes(&img, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(before, after, len0);           /* nothing changed */
    free(before);
    free(after);
    assert_int_equal(truncate_to(&img, 3 * MiB + 4096 + 512, PREALLOC_MODE_OFF, &err), 0);
    uint8_t back[512];
    assert_int_equal(bdrv_pread(img.child, 3 * MiB + 4096, sizeof(back), back, 0), 0);
    assert_memory_equal(back, buf, sizeof(back));
    /* prealloc and shrink do not go together */
    assert_int_equal(truncate_to(&img, 1 * MiB, PREALLOC_MODE_METADATA, &err), -EINVAL);
    assert_non_null(strstr(error_get_pretty(err), "Preallocation can't be used for shrinking"));
    error_free(err);
    q2_free(&img);
}

static void test_v2_snapshots_refused(void **state)
{
    (void)state;
    Q2Image img = q2_make(CB, 1 * MiB, false, 1);
    q2_put32(img.file, QH_VERSION, 2);
    q2_put32(img.file, QH_NB_SNAPSHOTS, 1);
    q2_put64(img.file, QH_SNAPSHOTS_OFFSET, Q2_DATA(&img, 0));
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    if (!img.bs) {
        fail_msg("open: %s", error_get_pretty(img.err));
    }
    Error *err = NULL;
    assert_int_equal(truncate_to(&img, 2 * MiB, PREALLOC_MODE_OFF, &err), -ENOTSUP);
    assert_string_equal(error_get_pretty(err), "Can't resize a v2 image which has snapshots");
    error_free(err);
    assert_int_equal(bdrv_getlength(img.bs), 1 * MiB);
    q2_free(&img);
}

static void test_prealloc_modes(void **state)
{
    (void)state;
    PreallocMode modes[] = { PREALLOC_MODE_METADATA, PREALLOC_MODE_FALLOC, PREALLOC_MODE_FULL };
    for (size_t m = 0; m < ARRAY_SIZE(modes); m++) {
        uint8_t pat[64 * KiB];
        Q2Image img = make_image(1 * MiB, pat);
        Error *err = NULL;
        assert_int_equal(truncate_to(&img, 5 * MiB + 1024, modes[m], &err), 0);
        uint8_t buf[4096];
        assert_int_equal(bdrv_pread(img.child, 5 * MiB - 4096, sizeof(buf), buf, 0), 0);
        for (size_t i = 0; i < sizeof(buf); i++) {
            assert_int_equal(buf[i], 0);
        }
        q2_close(&img);
        size_t len;
        uint8_t *p = image_bytes(&img, &len);
        assert_clean(p, len, false);
        /* every cluster of the new area is allocated, inside the file */
        uint64_t l1 = be64_at(p, QH_L1_OFFSET);
        int allocated = 0;
        for (uint64_t g = 1 * MiB; g < 5 * MiB + 1024; g += C) {
            uint64_t l2 = be64_at(p, l1 + (g >> (CB + 9)) * 8) & QCOW2_L1E_OFFSET_MASK;
            assert_int_not_equal(l2, 0);
            uint64_t e = be64_at(p, l2 + ((g >> CB) & 511) * 8);
            assert_true(e & QCOW2_OFLAG_COPIED);
            assert_true((e & QCOW2_L2E_OFFSET_MASK) + C <= len);
            allocated++;
        }
        assert_int_equal(allocated, (4 * MiB + 1024 + C - 1) / C);
        free(p);
        q2_free(&img);
    }
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow_within_l1),
        cmocka_unit_test(test_grow_l1),
        cmocka_unit_test(test_grow_l1_crash),
        cmocka_unit_test(test_shrink_free_tail),
        cmocka_unit_test(test_shrink_refused_data),
        cmocka_unit_test(test_v2_snapshots_refused),
        cmocka_unit_test(test_prealloc_modes),
    };
    return cmocka_run_group_tests_name("qcow2-resize", tests, NULL, NULL);
}
