/*
 * test-vdi.c - the vdi driver's open path: probe, every header validation
 * with its message, odd disk sizes, info and block status.  I/O, allocation,
 * concurrency and check are in test-vdi-io.c.
 */
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
BAD_HDR32(test_bad_header_size_small, VDI_OFF_HEADER_SIZE, 0x100, "unsupported header size 0x100")
BAD_HDR32(test_bad_header_size_big, VDI_OFF_HEADER_SIZE, 0x1000, "unsupported header size 0x1000")
BAD_HDR32(test_bad_image_type, VDI_OFF_IMAGE_TYPE, 4, "unsupported image type 4")
BAD_HDR32(test_bad_bmap_unaligned, VDI_OFF_OFFSET_BMAP, 0x300, "unaligned block map offset 0x300")
BAD_HDR32(test_bad_bmap_in_header, VDI_OFF_OFFSET_BMAP, 0, "block map offset 0x0 overlaps the header")
BAD_HDR32(test_bad_data_unaligned, VDI_OFF_OFFSET_DATA, 0x401, "unaligned data offset 0x401")
BAD_HDR32(test_bad_data_overlaps_bmap, VDI_OFF_OFFSET_DATA, 0x200, "data offset 0x200 overlaps the block map")
BAD_HDR32(test_bad_sector_size, VDI_OFF_SECTOR_SIZE, 4096, "unsupported sector size 4096")
BAD_HDR32(test_bad_block_size, VDI_OFF_BLOCK_SIZE, 65536, "unsupported block size 65536 (must be 1048576)")
BAD_HDR32(test_bad_blocks_few, VDI_OFF_BLOCKS_IN_IMAGE, 2, "disk size 4194304 does not fit the block map")
BAD_HDR32(test_bad_blocks_max, VDI_OFF_BLOCKS_IN_IMAGE, 0x40000000, "too many blocks 1073741824 (max is 1073741823)")
BAD_HDR32(test_bad_link_uuid, VDI_OFF_UUID_LINK + 4, 1, "non-null link UUID")
BAD_HDR32(test_bad_parent_uuid, VDI_OFF_UUID_PARENT + 12, 0x80000000, "non-null parent UUID")

static void test_bad_disk_size_max(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, false);
    vdi_test_set_hdr64(f, VDI_OFF_DISK_SIZE, VDI_DISK_SIZE_MAX + 512);
    vdi_test_expect_open_error(f, "Unsupported VDI image size (size is 0x3fffffff00200, "
                                  "max supported is 0x3fffffff00000)");
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

static void test_specific_info(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(3 * MiB, true), BDRV_O_RDWR);
    ImageSpecificInfo info = { 0 };
    assert_non_null(img.bs);
    bdrv_vdi.get_specific_info(img.bs, &info);
    bool type = false, uuid = false, alloc = false, size = false, snap = false;
    for (int i = 0; i < info.n; i++) {
        const char *k = info.entries[i].key, *v = info.entries[i].value;
        if (!strcmp(k, "type")) { type = !strcmp(v, "static"); }
        if (!strcmp(k, "uuid")) { uuid = !strcmp(v, "00000011-0000-0000-0000-000000000000"); }
        if (!strcmp(k, "last-snapshot-uuid")) {
            snap = !strcmp(v, "00000022-0000-0000-0000-000000000000");
        }
        if (!strcmp(k, "allocated-blocks")) { alloc = !strcmp(v, "3"); }
        if (!strcmp(k, "disk-size")) { size = !strcmp(v, "3145728"); }
    }
    assert_true(type && uuid && snap && alloc && size);
    image_info_free(&info);
    vdi_test_close(&img);
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
        cmocka_unit_test(test_bad_header_size_small),
        cmocka_unit_test(test_bad_header_size_big),
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
        cmocka_unit_test(test_specific_info),
        cmocka_unit_test(test_block_status),
    };
    return cmocka_run_group_tests_name("vdi-open", tests, NULL, NULL);
}
