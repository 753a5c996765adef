/*
 * test-vdi.c - the vdi driver's open path: probe, every header validation
 * with its message, odd disk sizes, info and block status.  I/O, allocation,
 * concurrency and check are in test-vdi-io.c.
 */
#include <errno.h>
#include <limits.h>
#include "vdi-image.h"

extern const BlockDriver bdrv_vdi;

static void test_probe(void **state)
{
    (void)state;
    uint8_t buf[512] = { 0 };
    assert_int_equal(bdrv_vdi.probe(buf, sizeof(buf), "x"), 0);
    vdi_st32(buf, VDI_OFF_SIGNATURE, VDI_SIGNATURE);
    assert_int_equal(bdrv_vdi.probe(buf, sizeof(buf), "x"), 100);
    assert_int_equal(bdrv_vdi.probe(buf, 100, "x"), 0);     /* too short */
}

static void test_open_good(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(3 * MiB, false), BDRV_O_RDWR);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_getlength(img.bs), 3 * MiB);
    BlockDriverInfo bdi = { 0 };
    assert_int_equal(bdrv_get_info(img.bs, &bdi), 0);
    assert_int_equal(bdi.cluster_size, 1 * MiB);
    vdi_test_close(&img);
}

static void test_open_empty(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(0, false), BDRV_O_RDWR);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_getlength(img.bs), 0);
    vdi_test_close(&img);
}

/* VBoxManage convertfromraw makes sizes that are not sector multiples. */
static void test_open_odd_size_rounds_up(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(MiB + 1000, false);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_getlength(img.bs), MiB + 1024);
    vdi_test_close(&img);
}

/* VirtualBox puts the data area on a 1 MiB boundary and uses 0x190 headers. */
static void test_open_virtualbox_layout(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(2 * MiB, false);
    vdi_test_set_hdr32(f, VDI_OFF_OFFSET_DATA, 1 * MiB);
    vdi_test_set_hdr32(f, VDI_OFF_HEADER_SIZE, 0x190);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    vdi_test_close(&img);
}

#define BAD_HDR32(fn, off, val, msg)                                   \
    static void fn(void **state)                                       \
    {                                                                  \
        (void)state;                                                   \
        BlockDriverState *f = vdi_test_make_file(4 * MiB, false);      \
        vdi_test_set_hdr32(f, off, val);                               \
        vdi_test_expect_open_error(f, msg);                            \
    }

BAD_HDR32(test_bad_signature, VDI_OFF_SIGNATURE, 0xbeda1070, "bad signature 0xbeda1070")
BAD_HDR32(test_bad_version, VDI_OFF_VERSION, 0x00010000, "unsupported VDI version 1.0")
BAD_HDR32(test_bad_image_type, VDI_OFF_IMAGE_TYPE, 5, "unsupported image type 5 for writing")
BAD_HDR32(test_bad_bmap_unaligned, VDI_OFF_OFFSET_BMAP, 0x300, "unaligned block map offset 0x300")
BAD_HDR32(test_bad_bmap_in_header, VDI_OFF_OFFSET_BMAP, 0, "block map offset 0x0 overlaps the header")
BAD_HDR32(test_bad_data_unaligned, VDI_OFF_OFFSET_DATA, 0x401, "unaligned data offset 0x401")
BAD_HDR32(test_bad_data_overlaps_bmap, VDI_OFF_OFFSET_DATA, 0x200, "data offset 0x200 overlaps the block map")
BAD_HDR32(test_bad_sector_size, VDI_OFF_SECTOR_SIZE, 4096, "unsupported sector size 4096")
BAD_HDR32(test_bad_block_size, VDI_OFF_BLOCK_SIZE, 65536, "unsupported block size 65536 (must be 1048576)")
BAD_HDR32(test_bad_blocks_few, VDI_OFF_BLOCKS_IN_IMAGE, 2, "disk size 4194304 does not fit the block map")
BAD_HDR32(test_bad_blocks_max, VDI_OFF_BLOCKS_IN_IMAGE, 536870785, "too many blocks 536870785 (max is 536870784)")
BAD_HDR32(test_bad_link_uuid, VDI_OFF_UUID_LINK + 4, 1, "non-null link UUID")
BAD_HDR32(test_bad_parent_uuid, VDI_OFF_UUID_PARENT + 12, 0x80000000, "non-null parent UUID")

static void test_bad_disk_size_max(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, false);
    vdi_test_set_hdr64(f, VDI_OFF_DISK_SIZE, VDI_DISK_SIZE_MAX + 512);
    vdi_test_expect_open_error(f, "Unsupported VDI image size (size is 0x1fffff8000200, "
                                  "max supported is 0x1fffff8000000)");
}

/* qemu-img 7.2's limits, byte for byte: its map must fit in an int. */
static void test_limits_match_qemu(void **state)
{
    (void)state;
    assert_int_equal(VDI_BLOCKS_IN_IMAGE_MAX, 536870784);
    assert_true(VDI_DISK_SIZE_MAX == 0x1fffff8000000ULL);
    assert_true((uint64_t)VDI_BLOCKS_IN_IMAGE_MAX * 4 + 512 == (uint64_t)INT_MAX + 1);
}

/* qemu-img 7.2 opens any header_size (it never uses it) and any image type;
 * so do we, except that a type VirtualBox does not define is read-only. */
static void open_with_hdr32(int off, uint32_t val, int flags, bool want_ok)
{
    BlockDriverState *f = vdi_test_make_file(2 * MiB, true);
    vdi_test_set_hdr32(f, off, val);
    VdiTestImage img = vdi_test_open(f, flags);
    if (want_ok != (img.bs != NULL)) {
        fail_msg("field at %d = 0x%x: open %s (%s)", off, val, img.bs ? "succeeded" : "failed",
                 img.err ? error_get_pretty(img.err) : "");
    }
    if (img.bs) {
        uint8_t buf[512];
        assert_true(bdrv_pread(img.child, MiB, sizeof(buf), buf, 0) >= 0);
    }
    vdi_test_close(&img);
}

static void test_open_any_header_size(void **state)
{
    (void)state;
    static const uint32_t sizes[] = { 0, 0x100, 0x17f, 0x180, 0x190, 0x1b8, 0x1000, 0xffffffff };
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        open_with_hdr32(VDI_OFF_HEADER_SIZE, sizes[i], BDRV_O_RDWR, true);
    }
}

static void test_open_image_types(void **state)
{
    (void)state;
    for (uint32_t t = 1; t <= 4; t++) {
        open_with_hdr32(VDI_OFF_IMAGE_TYPE, t, BDRV_O_RDWR, true);
    }
    open_with_hdr32(VDI_OFF_IMAGE_TYPE, 0, BDRV_O_RDWR, false);
    open_with_hdr32(VDI_OFF_IMAGE_TYPE, 5, BDRV_O_RDWR, false);
    open_with_hdr32(VDI_OFF_IMAGE_TYPE, 0, 0, true);
    open_with_hdr32(VDI_OFF_IMAGE_TYPE, 100, 0, true);
}

/* A header that claims a huge map in a small file must not make us allocate
 * it: the map has to be inside the file. */
static void test_bad_bmap_beyond_eof(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, false);
    vdi_test_set_hdr64(f, VDI_OFF_DISK_SIZE, 0x3fffff00000ULL);
    vdi_test_set_hdr32(f, VDI_OFF_BLOCKS_IN_IMAGE, 0x3fffff);
    vdi_test_set_hdr32(f, VDI_OFF_OFFSET_DATA, 0x1000200);
    vdi_test_expect_open_error(f, "extends beyond the end of the file");
}

static void test_bad_file_too_small(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 100, .node_name = "tiny" };
    vdi_test_expect_open_error(mem_node_new(&cfg), "file too small for a VDI header");
}

static void test_block_status(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_set_entry(f, 0, VDI_UNALLOCATED);
    vdi_test_set_entry(f, 1, 0);
    vdi_test_set_entry(f, 2, 1);
    vdi_test_set_entry(f, 3, VDI_DISCARDED);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    int64_t pnum = 0, map = -1;
    BlockDriverState *file = NULL;

    int ret = bdrv_block_status_above(img.bs, NULL, 0, 4 * MiB, &pnum, &map, &file);
    assert_true(ret >= 0);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_false(ret & BDRV_BLOCK_DATA);
    assert_int_equal(pnum, 1 * MiB);
    ret = bdrv_block_status_above(img.bs, NULL, 1 * MiB, 3 * MiB, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_true(ret & BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 2 * MiB);              /* two contiguous slots in one answer */
    assert_int_equal(map, img.offset_data);
    ret = bdrv_block_status_above(img.bs, NULL, 3 * MiB, 1 * MiB, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_ZERO);
    vdi_test_close(&img);
}

/* A static image whose data area was cut off: the file past its end would
 * report "zero" through RECURSE, so convert and compare would turn the lost
 * blocks into zeros.  The block must be DATA with no offset (reads -EIO). */
static void test_block_status_missing_slot(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_truncate(f, vdi_test_hdr32(f, VDI_OFF_OFFSET_DATA) + 2 * MiB);   /* slots 0, 1 */
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    int64_t pnum = 0, map = -1;
    BlockDriverState *file = NULL;
    uint8_t buf[4096];

    int ret = bdrv_block_status_above(img.bs, NULL, 0, 4 * MiB, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 2 * MiB);
    ret = bdrv_block_status_above(img.bs, NULL, 2 * MiB, 2 * MiB, &pnum, &map, &file);
    assert_true(ret >= 0);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_false(ret & (BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID));
    assert_true(pnum > 0 && pnum <= (int64_t)(2 * MiB));
    assert_int_equal(bdrv_pread(img.child, 3 * MiB, sizeof(buf), buf, 0), -EIO);
    vdi_test_close(&img);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe),
        cmocka_unit_test(test_open_good),
        cmocka_unit_test(test_open_empty),
        cmocka_unit_test(test_open_odd_size_rounds_up),
        cmocka_unit_test(test_open_virtualbox_layout),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_limits_match_qemu),
        cmocka_unit_test(test_open_any_header_size),
        cmocka_unit_test(test_open_image_types),
        cmocka_unit_test(test_bad_image_type),
        cmocka_unit_test(test_bad_bmap_unaligned),
        cmocka_unit_test(test_bad_bmap_in_header),
        cmocka_unit_test(test_bad_data_unaligned),
        cmocka_unit_test(test_bad_data_overlaps_bmap),
        cmocka_unit_test(test_bad_sector_size),
        cmocka_unit_test(test_bad_block_size),
        cmocka_unit_test(test_bad_blocks_few),
        cmocka_unit_test(test_bad_blocks_max),
        cmocka_unit_test(test_bad_link_uuid),
        cmocka_unit_test(test_bad_parent_uuid),
        cmocka_unit_test(test_bad_disk_size_max),
        cmocka_unit_test(test_bad_bmap_beyond_eof),
        cmocka_unit_test(test_bad_file_too_small),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_block_status_missing_slot),
    };
    return cmocka_run_group_tests_name("vdi-open", tests, NULL, NULL);
}
