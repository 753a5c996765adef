/*
 * test-qcow2-check.c - `img check` on qcow2 images built in mem nodes
 * (qcow2-image.h) and damaged on purpose: what is counted (leaks, refcounts
 * too small, COPIED flags, entries past the end or unaligned, overlapping
 * tables, compressed clusters, extended-L2 bitmaps), what each repair level
 * fixes and that a second check then finds nothing; the dirty bit repaired
 * by a read-write open; corruption found at runtime sets the corrupt bit.
 * tests/interop/test_qcow2_check.sh compares the same kinds of damage with
 * qemu-img check itself.
 */
#include <errno.h>
#include "qcow2-image.h"

static uint64_t get64(BlockDriverState *f, int64_t off)
{
    uint64_t be;
    mem_read_raw(f, off, &be, 8);
    return be64toh(be);
}

static void set_refcount(Q2Image *img, uint64_t cluster, uint16_t v)
{
    uint16_t be = htobe16(v);
    mem_write_raw(img->file, (int64_t)(2 * Q2_C(img) + cluster * 2), &be, 2);
}

/* The refcount of `cluster` as the image's (possibly rebuilt) refcount
 * structures on disk say. */
static uint64_t refcount_of(Q2Image *img, uint64_t cluster)
{
    uint64_t rt = get64(img->file, QH_REFTABLE_OFFSET);
    uint64_t per_block = Q2_C(img) / 2;
    uint64_t rb = get64(img->file, (int64_t)(rt + cluster / per_block * 8));
    uint16_t be;
    if (!rb) {
        return 0;
    }
    mem_read_raw(img->file, (int64_t)(rb + cluster % per_block * 2), &be, 2);
    return be16toh(be);
}

static BdrvCheckResult check(Q2Image *img, int flags, BdrvCheckMode fix, int want_ret)
{
    BdrvCheckResult r;
    q2_open(img, flags | BDRV_O_CHECK, NULL, NULL);
    assert_non_null(img->bs);
    assert_int_equal(bdrv_check(img->bs, &r, fix), want_ret);
    q2_close(img);
    return r;
}

/* Repair with `fix`, then a plain check finds nothing. */
static BdrvCheckResult repair_clean(Q2Image *img, BdrvCheckMode fix)
{
    BdrvCheckResult r = check(img, BDRV_O_RDWR, fix, 0);
    BdrvCheckResult again = check(img, 0, 0, 0);
    assert_int_equal(again.corruptions, 0);
    assert_int_equal(again.leaks, 0);
    assert_int_equal(again.check_errors, 0);
    return r;
}

/* Two data clusters, not contiguous: counted, one fragment, the image end. */
static void test_clean(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 3);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    q2_set_l2(&img, 1, Q2_DATA(&img, 2) | QCOW2_OFLAG_COPIED, 0);
    q2_set_l2(&img, 2, QCOW2_OFLAG_ZERO, 0);
    set_refcount(&img, 6, 0);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(r.check_errors, 0);
    assert_int_equal(r.total_clusters, 256);
    assert_int_equal(r.allocated_clusters, 2);
    assert_int_equal(r.fragmented_clusters, 1);
    assert_int_equal(r.compressed_clusters, 0);
    assert_int_equal(r.image_end_offset, 8 * 4096);
    q2_free(&img);
}

/* A cluster with a refcount that nothing uses: a leak, freed by -r leaks. */
static void test_leak(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 2);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.leaks, 1);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.image_end_offset, 7 * 4096);
    r = repair_clean(&img, BDRV_FIX_LEAKS);
    assert_int_equal(r.leaks_fixed, 1);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(refcount_of(&img, 6), 0);
    q2_free(&img);
}

/* Two L2 entries share a cluster counted once: refcount too small (an
 * error), and neither entry may be COPIED.  -r leaks leaves it, -r all
 * sets the refcount to 2. */
static void test_refcount_too_small(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 1);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0), 0);
    q2_set_l2(&img, 1, Q2_DATA(&img, 0), 0);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    /* the refcount, and the COPIED flag of both entries (refcount 1 says set) */
    assert_int_equal(r.corruptions, 3);
    r = check(&img, BDRV_O_RDWR, BDRV_FIX_LEAKS, 0);
    assert_int_equal(r.corruptions_fixed, 0);
    assert_int_equal(refcount_of(&img, 5), 1);
    r = repair_clean(&img, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(refcount_of(&img, 5), 2);
    q2_free(&img);
}

/* COPIED missing on an L2 entry and on the L1 entry: -r leaks fixes them
 * when nothing else is wrong. */
static void test_copied_flags(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 1);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0), 0);
    q2_put64(img.file, 3 * 4096, 4 * 4096);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 2);
    r = repair_clean(&img, BDRV_FIX_LEAKS);
    assert_int_equal(r.corruptions_fixed, 2);
    assert_true(get64(img.file, 4 * 4096) & QCOW2_OFLAG_COPIED);
    assert_true(get64(img.file, 3 * 4096) & QCOW2_OFLAG_COPIED);
    q2_free(&img);
}

/* A used cluster with refcount 0: only a rebuild of the refcount
 * structures fixes it (-r leaks says so and fails). */
static void test_refcount_zero_rebuilds(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 2);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    q2_set_l2(&img, 1, Q2_DATA(&img, 1) | QCOW2_OFLAG_COPIED, 0);
    set_refcount(&img, 6, 0);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 2);          /* the refcount, the COPIED flag */
    r = check(&img, BDRV_O_RDWR, BDRV_FIX_LEAKS, -EIO);
    assert_int_equal(r.check_errors, 1);
    uint64_t old_rt = get64(img.file, QH_REFTABLE_OFFSET);
    r = repair_clean(&img, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS);
    /* the refcount; the COPIED flag is right once the refcount is (QEMU
     * counts it neither as fixed nor as left) */
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_not_equal(get64(img.file, QH_REFTABLE_OFFSET), old_rt);
    assert_int_equal(refcount_of(&img, 6), 1);
    assert_int_equal(refcount_of(&img, 5), 1);
    assert_int_equal(refcount_of(&img, 1), 0);   /* the old table was freed */
    /* the data is where it was */
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    q2_close(&img);
    assert_int_equal(get64(img.file, 4 * 4096 + 8) & ~QCOW2_OFLAG_COPIED, Q2_DATA(&img, 1));
    q2_free(&img);
}

/* An L2 table past the end of the file: one corruption for the reference,
 * one for the L1 COPIED flag (no refcount), and the table it replaced
 * leaks. */
static void test_l2_past_eof(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_put64(img.file, 3 * 4096, (1ULL << 40) | QCOW2_OFLAG_COPIED);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 2);
    assert_int_equal(r.leaks, 1);
    /* -r all: the COPIED flag and the leak; the reference stays wrong */
    r = check(&img, BDRV_O_RDWR, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS, 0);
    assert_int_equal(r.corruptions, 1);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(r.leaks_fixed, 1);
    q2_free(&img);
}

/* An unaligned data cluster is an error; an unaligned preallocated zero
 * cluster is made a plain zero cluster by -r all, which frees the two
 * clusters its unaligned range touched (counted as QEMU counts them). */
static void test_unaligned_entries(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 2);
    q2_set_l2(&img, 0, (Q2_DATA(&img, 0) + 512) | QCOW2_OFLAG_COPIED, 0);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_true(r.corruptions >= 1);
    q2_free(&img);

    img = q2_make(12, MiB, false, 2);
    q2_set_l2(&img, 0, (Q2_DATA(&img, 0) + 512) | QCOW2_OFLAG_ZERO | QCOW2_OFLAG_COPIED, 0);
    r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 1);
    assert_int_equal(r.leaks, 0);
    r = repair_clean(&img, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(r.leaks_fixed, 2);
    assert_int_equal(get64(img.file, 4 * 4096), QCOW2_OFLAG_ZERO);
    assert_int_equal(refcount_of(&img, 5), 0);
    q2_free(&img);
}

/* The L1 entry names the refcount table as its L2 table: the table is
 * counted twice (refcount too small) and the real L2 table leaks. */
static void test_overlapping_l1_refcount_table(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_put64(img.file, 3 * 4096, 4096 | QCOW2_OFLAG_COPIED);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    /* cluster 1 counted twice; the refcount table entry, read as an L2
     * entry, names the refcount block: counted twice too, without COPIED */
    assert_true(r.corruptions >= 2);
    assert_int_equal(r.leaks, 1);
    /* the image is not writable until repaired, and no write lands on
     * the refcount table */
    q2_free(&img);
}

/* Compressed clusters are counted per sector range and must not be COPIED. */
static void test_compressed(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 1);
    /* 4 KiB clusters: 8 bits of sector count above bit 54 (62 - (12 - 8)) */
    uint64_t ce = QCOW2_OFLAG_COMPRESSED | Q2_DATA(&img, 0) | (1ULL << 58);  /* 2 sectors */
    q2_set_l2(&img, 0, ce, 0);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.compressed_clusters, 1);
    assert_int_equal(r.fragmented_clusters, 1);
    q2_set_l2(&img, 0, ce | QCOW2_OFLAG_COPIED, 0);
    r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 1);
    q2_free(&img);
}

/* Extended L2: allocation bits on an unallocated cluster, and bits both
 * allocated and zero. */
static void test_extended_l2_bitmaps(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, true, 1);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 3 | (1ULL << 33));
    q2_set_l2(&img, 1, 0, 4);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 2);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 3 | (1ULL << 34));
    q2_set_l2(&img, 1, 0, 4ULL << 32);
    r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 0);
    q2_free(&img);
}

/* A refcount block past the end of the file: -r all grows the file; the
 * block's own cluster then has no refcount (block 0 does not count it),
 * so the structures are rebuilt as well. */
static void test_refblock_outside_image(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_put64(img.file, 4096 + 8, 64 * 4096);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 1);
    r = repair_clean(&img, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS);
    assert_int_equal(r.corruptions_fixed, 2);
    assert_true(mem_size(img.file) >= 65 * 4096);
    q2_free(&img);
}

/* lazy_refcounts left dirty with a refcount not written: a read-write open
 * repairs it and clears the bit; img check (BDRV_O_CHECK) does not. */
static void test_dirty_repaired_on_open(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 1);
    q2_put64(img.file, QH_COMPAT, QCOW2_COMPAT_LAZY_REFCOUNTS);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_DIRTY);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    set_refcount(&img, 5, 0);
    BdrvCheckResult r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions, 2);
    assert_true(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_DIRTY);

    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    assert_false(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_DIRTY);
    assert_int_equal(refcount_of(&img, 5), 1);
    uint8_t buf[512] = { 7 };
    assert_true(bdrv_pwrite(img.child, 4096, sizeof(buf), buf, 0) >= 0);
    q2_close(&img);
    r = check(&img, 0, 0, 0);
    assert_int_equal(r.corruptions + r.leaks + r.check_errors, 0);
    q2_free(&img);
}

/* A corrupt image opens read-write only for check; -r all on a sound
 * image clears the bit. */
static void test_corrupt_bit_cleared(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_CORRUPT);
    repair_clean(&img, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS);
    assert_int_equal(get64(img.file, QH_INCOMPAT), 0);
    q2_free(&img);
}

/* A corrupt entry met by a request on a writable image marks it corrupt;
 * on a read-only one it only fails the request. */
static void test_runtime_corruption_sets_bit(void **state)
{
    (void)state;
    uint8_t buf[512];
    Q2Image img = q2_make(12, MiB, false, 1);
    q2_set_l2(&img, 0, (Q2_DATA(&img, 0) + 512) | QCOW2_OFLAG_COPIED, 0);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_pread(img.child, 0, sizeof(buf), buf, 0), -EIO);
    q2_close(&img);
    assert_false(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_CORRUPT);

    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_pread(img.child, 0, sizeof(buf), buf, 0), -EIO);
    assert_true(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_CORRUPT);
    q2_close(&img);
    q2_expect_open_error(&img, BDRV_O_RDWR, "Image is corrupt");
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean),
        cmocka_unit_test(test_leak),
        cmocka_unit_test(test_refcount_too_small),
        cmocka_unit_test(test_copied_flags),
        cmocka_unit_test(test_refcount_zero_rebuilds),
        cmocka_unit_test(test_l2_past_eof),
        cmocka_unit_test(test_unaligned_entries),
        cmocka_unit_test(test_overlapping_l1_refcount_table),
        cmocka_unit_test(test_compressed),
        cmocka_unit_test(test_extended_l2_bitmaps),
        cmocka_unit_test(test_refblock_outside_image),
        cmocka_unit_test(test_dirty_repaired_on_open),
        cmocka_unit_test(test_corrupt_bit_cleared),
        cmocka_unit_test(test_runtime_corruption_sets_bit),
    };
    return cmocka_run_group_tests_name("qcow2-check", tests, NULL, NULL);
}
