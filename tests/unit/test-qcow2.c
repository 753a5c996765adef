/*
 * test-qcow2.c - the qcow2 driver's open path (every header check with its
 * message, extensions, feature bits, table bounds) and reads (normal, zero,
 * unallocated, compressed, extended L2 subclusters, corrupt entries), block
 * status and info, on images built in mem nodes (qcow2-image.h).
 */
#include <errno.h>
#include <zlib.h>
#ifdef CONFIG_ZSTD
#include <zstd.h>
#endif
#include "qcow2-image.h"

extern const BlockDriver bdrv_qcow2;

static void test_probe(void **state)
{
    (void)state;
    uint8_t buf[512] = { 0 };
    assert_int_equal(bdrv_qcow2.probe(buf, sizeof(buf), "x"), 0);
    uint32_t be = htobe32(QCOW2_MAGIC);
    memcpy(buf, &be, 4);
    assert_int_equal(bdrv_qcow2.probe(buf, sizeof(buf), "x"), 0);   /* version 0 */
    be = htobe32(3);
    memcpy(buf + 4, &be, 4);
    assert_int_equal(bdrv_qcow2.probe(buf, sizeof(buf), "x"), 100);
    assert_int_equal(bdrv_qcow2.probe(buf, 50, "x"), 0);            /* too short */
}

static void test_open_good(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, 3 * MiB, false, 0);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_getlength(img.bs), 3 * MiB);
    BlockDriverInfo bdi = { 0 };
    assert_int_equal(bdrv_get_info(img.bs, &bdi), 0);
    assert_int_equal(bdi.cluster_size, 65536);
    assert_false(bdi.is_dirty);
    q2_free(&img);
}

static void test_open_v2(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_put32(img.file, QH_VERSION, 2);
    /* Extensions start at 72 in version 2 (here: the end marker); what
     * version 3 keeps after it is not a header field. */
    uint8_t ff[32];
    memset(ff, 0xff, sizeof(ff));
    q2_put64(img.file, QH_INCOMPAT, 0);
    mem_write_raw(img.file, QH_COMPAT, ff, sizeof(ff));
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    ImageSpecificInfo info = { 0 };
    img.bs->drv->get_specific_info(img.bs, &info);
    assert_int_equal(info.n, 3);
    assert_string_equal(info.entries[0].value, "0.10");
    assert_string_equal(info.entries[2].key, "refcount-bits");
    assert_string_equal(info.entries[2].value, "16");
    image_info_free(&info);
    q2_free(&img);
}

/* Odd virtual sizes are rounded down to a sector, as QEMU 7.2 counts them. */
static void test_open_odd_size(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB + 1000, false, 0);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_getlength(img.bs), MiB + 512);
    q2_free(&img);
}

/* A dirty image opened read-write is checked and repaired first, which
 * clears the bit (test-qcow2-check.c has one with damage to repair). */
static void test_open_rw_dirty(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_DIRTY);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint64_t be;
    mem_read_raw(img.file, QH_INCOMPAT, &be, 8);
    assert_int_equal(be64toh(be), 0);
    q2_free(&img);
}

#define BAD_HDR(fn, width, off, val, msg)                                \
    static void fn(void **state)                                        \
    {                                                                   \
        (void)state;                                                    \
        Q2Image img = q2_make(16, 4 * MiB, false, 0);                   \
        q2_put##width(img.file, off, val);                              \
        q2_expect_open_error(&img, 0, msg);                             \
    }

BAD_HDR(test_bad_magic, 32, QH_MAGIC, 0x514649fa, "Image is not in qcow2 format (magic 0x514649fa)")
BAD_HDR(test_bad_version1, 32, QH_VERSION, 1, "Unsupported qcow2 version 1")
BAD_HDR(test_bad_version4, 32, QH_VERSION, 4, "Unsupported qcow2 version 4")
BAD_HDR(test_bad_cluster_bits_low, 32, QH_CLUSTER_BITS, 8, "Unsupported cluster size: 2^8")
BAD_HDR(test_bad_cluster_bits_high, 32, QH_CLUSTER_BITS, 22, "Unsupported cluster size: 2^22")
BAD_HDR(test_bad_cluster_bits_huge, 32, QH_CLUSTER_BITS, 0xffffffff,
        "Unsupported cluster size: 2^4294967295")
BAD_HDR(test_bad_header_short, 32, QH_HEADER_LENGTH, 100, "qcow2 header too short (header_length 100)")
BAD_HDR(test_bad_header_long, 32, QH_HEADER_LENGTH, 65537, "qcow2 header exceeds cluster size")
BAD_HDR(test_bad_backing_offset, 64, QH_BACKING_OFFSET, 65537, "Invalid backing file offset 0x10001")
BAD_HDR(test_bad_refcount_order, 32, QH_REFCOUNT_ORDER, 7, "Reference count entry width too large")
#ifdef CONFIG_CRYPTO
/* encrypted images need their key (qcow2-crypto.c, test-crypto.c) */
BAD_HDR(test_bad_crypt_aes, 32, QH_CRYPT_METHOD, 1, "Parameter 'encrypt.key-secret' is required for cipher (the image is aes-encrypted")
BAD_HDR(test_bad_crypt_luks, 32, QH_CRYPT_METHOD, 2, "Parameter 'encrypt.key-secret' is required for cipher (the image is luks-encrypted")
#else
BAD_HDR(test_bad_crypt_aes, 32, QH_CRYPT_METHOD, 1, "encrypted images are not supported (crypt_method 1; built without CONFIG_CRYPTO)")
BAD_HDR(test_bad_crypt_luks, 32, QH_CRYPT_METHOD, 2, "encrypted images are not supported (crypt_method 2; built without CONFIG_CRYPTO)")
#endif
BAD_HDR(test_bad_crypt_other, 32, QH_CRYPT_METHOD, 3, "Unsupported encryption method: 3")
BAD_HDR(test_bad_l1_huge, 32, QH_L1_SIZE, 0xffffffff, "Active L1 table too large (l1_size 4294967295)")
BAD_HDR(test_bad_l1_small, 64, QH_SIZE, 1ULL << 40, "L1 table is too small (l1_size 1")
BAD_HDR(test_bad_size_huge, 64, QH_SIZE, ~0ULL >> 1, "Image is too big")
BAD_HDR(test_bad_l1_unaligned, 64, QH_L1_OFFSET, 3 * 65536 + 512, "Invalid L1 table offset 0x30200")
BAD_HDR(test_bad_l1_overflow, 64, QH_L1_OFFSET, 0xffffffffffff0000ULL, "Invalid L1 table offset")
BAD_HDR(test_bad_l1_beyond_eof, 64, QH_L1_OFFSET, 100 * 65536, "L1 table at 0x640000 (8 bytes) extends beyond the end of the file")
BAD_HDR(test_bad_reftable_huge, 32, QH_REFTABLE_CLUSTERS, 129, "Reference count table too large (refcount_table_clusters 129)")
BAD_HDR(test_bad_reftable_none, 32, QH_REFTABLE_CLUSTERS, 0, "Image does not contain a reference count table")
BAD_HDR(test_bad_reftable_unaligned, 64, QH_REFTABLE_OFFSET, 100, "Invalid reference count table offset 0x64")
BAD_HDR(test_bad_reftable_beyond_eof, 32, QH_REFTABLE_CLUSTERS, 10, "reference count table at 0x10000 (655360 bytes) extends beyond the end of the file")
BAD_HDR(test_bad_snapshots_many, 32, QH_NB_SNAPSHOTS, 65537, "Too many snapshots (nb_snapshots 65537)")
BAD_HDR(test_bad_snapshots_beyond_eof, 32, QH_NB_SNAPSHOTS, 10000, "snapshot table at 0x0 (400000 bytes) extends beyond the end of the file")

static void test_bad_compression(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    uint8_t t = 2;
    mem_write_raw(img.file, QH_COMPRESSION_TYPE, &t, 1);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
    q2_expect_open_error(&img, 0, "unknown compression type: 2");

    img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
    q2_expect_open_error(&img, 0, "Compression type incompatible feature bit must not be set");

#ifdef CONFIG_ZSTD
    img = q2_make(16, MiB, false, 0);
    t = 1;
    mem_write_raw(img.file, QH_COMPRESSION_TYPE, &t, 1);
    q2_expect_open_error(&img, 0, "Compression type incompatible feature bit must be set");
#endif
    /* A 104-byte header has no compression type byte: zlib, whatever follows. */
    img = q2_make(16, MiB, false, 0);
    t = 7;
    mem_write_raw(img.file, QH_COMPRESSION_TYPE, &t, 1);
    q2_put32(img.file, QH_HEADER_LENGTH, 104);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    q2_free(&img);
}

static void test_bad_subcluster_size(void **state)
{
    (void)state;
    Q2Image img = q2_make(13, MiB, true, 0);
    q2_expect_open_error(&img, 0, "Unsupported subcluster size: 256");
}

/* Unknown incompatible bits are named from the feature table if it has them. */
static void test_unknown_incompat(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, 1ULL << 9);
    q2_expect_open_error(&img, 0, "Unsupported qcow2 feature(s): Unknown incompatible feature: 200");

    img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, (1ULL << 9) | (1ULL << 33));
    uint8_t table[96] = { 0 };
    table[0] = QCOW2_FEAT_INCOMPAT;
    table[1] = 9;
    strcpy((char *)table + 2, "time travel");
    table[48] = QCOW2_FEAT_COMPAT;      /* same bit, other type: not used */
    table[49] = 33;
    strcpy((char *)table + 50, "not this one");
    q2_add_ext(&img, 112, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table));
    q2_expect_open_error(&img, 0, "Unsupported qcow2 feature(s): time travel, Unknown"
                         " incompatible feature: 200000000");
}

/* Corrupt images open read-only (reads work) and are refused read-write. */
static void test_corrupt_bit(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_CORRUPT);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    ImageSpecificInfo info = { 0 };
    img.bs->drv->get_specific_info(img.bs, &info);
    bool found = false;
    for (int i = 0; i < info.n; i++) {
        if (!strcmp(info.entries[i].key, "corrupt")) {
            found = true;
            assert_string_equal(info.entries[i].value, "true");
        }
    }
    assert_true(found);
    image_info_free(&info);
    q2_close(&img);
    q2_expect_open_error(&img, BDRV_O_RDWR, "Image is corrupt; cannot be opened read/write");
}

static void test_dirty_bit(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_DIRTY);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    BlockDriverInfo bdi = { 0 };
    assert_int_equal(bdrv_get_info(img.bs, &bdi), 0);
    assert_true(bdi.is_dirty);
    q2_free(&img);
}

static void test_data_file_bits(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_AUTOCLEAR, QCOW2_AUTOCLEAR_DATA_RAW);
    q2_expect_open_error(&img, 0, "data-file-raw requires a data file");

    img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
    q2_expect_open_error(&img, 0, "'data-file' is required for this image");

    img = q2_make(16, MiB, false, 0);
    q2_open(&img, 0, "data-file", "nowhere");
    assert_null(img.bs);
    assert_non_null(strstr(error_get_pretty(img.err), "'data-file' can only be set for images"
                           " with an external data file"));
    q2_free(&img);
}

static void test_bad_extensions(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    q2_put32(img.file, 112, 0x12345678);
    q2_put32(img.file, 116, 65536);
    q2_expect_open_error(&img, 0, "Header extension too large (type 0x12345678, length 65536");

    img = q2_make(16, MiB, false, 0);
    q2_add_ext(&img, 112, QCOW2_EXT_BACKING_FORMAT, "0123456789012345678901234567890123456789", 40);
    q2_expect_open_error(&img, 0, "backing format name of 40 bytes is too long");

    img = q2_make(16, MiB, false, 0);
    uint8_t bm[24] = { 0 };
    bm[3] = 1;          /* one bitmap */
    bm[7] = 1;          /* reserved */
    q2_put64(img.file, QH_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS);
    q2_add_ext(&img, 112, QCOW2_EXT_BITMAPS, bm, sizeof(bm));
    q2_expect_open_error(&img, 0, "bitmaps_ext: Reserved field is not zero");

    img = q2_make(16, MiB, false, 0);
    memset(bm, 0, sizeof(bm));
    bm[3] = 1;
    bm[15] = 16;        /* directory size 16 */
    bm[21] = 0x10;      /* directory at 0x100000: past the end of the file */
    q2_put64(img.file, QH_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS);
    q2_add_ext(&img, 112, QCOW2_EXT_BITMAPS, bm, sizeof(bm));
    q2_expect_open_error(&img, 0, "bitmap directory at 0x100000 (16 bytes) extends beyond");

    img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_BACKING_OFFSET, 65000);
    q2_put32(img.file, QH_BACKING_SIZE, 1000);
    q2_expect_open_error(&img, 0, "Backing file name too long (backing_file_size 1000");
}

/* Unknown extensions are kept; the backing format and name are read. */
static void test_extensions_kept(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    int64_t off = q2_add_ext(&img, 112, 0xabcdef01, "xyz", 3);
    off = q2_add_ext(&img, off, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
    q2_add_ext(&img, off, QCOW2_EXT_END, NULL, 0);
    mem_write_raw(img.file, 1024, "base.img", 8);
    q2_put64(img.file, QH_BACKING_OFFSET, 1024);
    q2_put32(img.file, QH_BACKING_SIZE, 8);
    OptDict *o = NULL;
    (void)o;
    /* no backing opened: BDRV_O_NO_BACKING */
    q2_open(&img, BDRV_O_NO_BACKING, NULL, NULL);
    assert_non_null(img.bs);
    assert_string_equal(img.bs->backing_file, "base.img");
    assert_string_equal(img.bs->backing_format, "raw");
    BDRVQcow2State *s = img.bs->opaque;
    assert_non_null(s->unknown_exts);
    assert_int_equal(s->unknown_exts->type, 0xabcdef01);
    assert_int_equal(s->unknown_exts->len, 3);
    assert_memory_equal(s->unknown_exts->data, "xyz", 3);
    assert_null(s->unknown_exts->next);
    q2_free(&img);
}

/* Normal, zero (plain and allocated), unallocated clusters. */
static void test_read_clusters(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 4);
    uint64_t c = Q2_C(&img);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 0), (int64_t)c, 0xa1);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 1), (int64_t)c, 0xa2);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 2), (int64_t)c, 0xa3);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    q2_set_l2(&img, 1, Q2_DATA(&img, 1) | QCOW2_OFLAG_COPIED, 0);      /* contiguous */
    q2_set_l2(&img, 2, QCOW2_OFLAG_ZERO, 0);                           /* zero plain */
    q2_set_l2(&img, 3, Q2_DATA(&img, 2) | QCOW2_OFLAG_ZERO, 0);        /* zero alloc */
    q2_set_l2(&img, 5, Q2_DATA(&img, 2), 0);                           /* not copied */
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);

    uint8_t *buf = malloc(8 * c);
    assert_true(bdrv_pread(img.child, 0, (int64_t)(8 * c), buf, 0) >= 0);
    assert_true(test_buf_is(buf, c, 0xa1));
    assert_true(test_buf_is(buf + c, c, 0xa2));
    assert_true(test_buf_is(buf + 2 * c, 3 * c, 0));
    assert_true(test_buf_is(buf + 5 * c, c, 0xa3));
    assert_true(test_buf_is(buf + 6 * c, 2 * c, 0));
    /* an unaligned read across clusters */
    assert_true(bdrv_pread(img.child, (int64_t)c - 100, 200, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 100, 0xa1));
    assert_true(test_buf_is(buf + 100, 100, 0xa2));

    int64_t pnum, map;
    BlockDriverState *file;
    int ret = bdrv_block_status_above(img.bs, NULL, 0, (int64_t)(8 * c), &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_true(ret & BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, 2 * c);
    assert_int_equal(map, Q2_DATA(&img, 0));
    ret = bdrv_block_status_above(img.bs, NULL, (int64_t)(2 * c), (int64_t)c, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_false(ret & (BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID));
    ret = bdrv_block_status_above(img.bs, NULL, (int64_t)(3 * c), (int64_t)c, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_true(ret & BDRV_BLOCK_OFFSET_VALID);
    assert_false(ret & BDRV_BLOCK_DATA);
    ret = bdrv_block_status_above(img.bs, NULL, (int64_t)(4 * c), (int64_t)c, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_false(ret & BDRV_BLOCK_ALLOCATED);
    free(buf);
    q2_free(&img);
}

/* Entries that cannot be right fail the read with -EIO, never crash. */
static void test_read_corrupt_entries(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, 4 * MiB, false, 1);
    uint64_t c = Q2_C(&img);
    q2_set_l2(&img, 0, (Q2_DATA(&img, 0) + 512) | QCOW2_OFLAG_COPIED, 0);   /* unaligned */
    q2_put64(img.file, (int64_t)(3 * c + 8), (4 * c + 512) | QCOW2_OFLAG_COPIED); /* L1[1] */
    q2_set_l2(&img, 2, 100ULL << 40 | QCOW2_OFLAG_COPIED, 0);                /* past EOF */
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[512];
    uint64_t l2_span = c * (c / 8);
    assert_int_equal(bdrv_pread(img.child, 0, 512, buf, 0), -EIO);
    assert_int_equal(bdrv_pread(img.child, (int64_t)l2_span, 512, buf, 0), -EIO);
    /* data past the end of the file reads as zeros from the file, as in QEMU */
    assert_true(bdrv_pread(img.child, (int64_t)(2 * c), 512, buf, 0) >= 0);
    q2_free(&img);
}

/* Extended L2: per-subcluster allocated / zero / unallocated, and
 * contradictory bitmaps. */
static void test_read_subclusters(void **state)
{
    (void)state;
    Q2Image img = q2_make(14, MiB, true, 1);    /* 16 KiB clusters, 512 B subclusters */
    uint64_t c = Q2_C(&img), sc = c / 32;
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 0), (int64_t)c, 0xb1);
    /* subclusters 0-1 data, 2 zero, rest unallocated */
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0x3ULL | (0x4ULL << 32));
    q2_set_l2(&img, 1, 0, 0xffULL << 32);          /* zero plain, no host cluster */
    q2_set_l2(&img, 2, Q2_DATA(&img, 0), 0x1ULL | (0x1ULL << 32));   /* both: invalid */
    q2_set_l2(&img, 3, 0, 0x1ULL);                 /* allocated without cluster: invalid */
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);

    uint8_t *buf = malloc(2 * c);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 0) + (int64_t)(2 * sc), (int64_t)(c - 2 * sc), 0xee);
    assert_true(bdrv_pread(img.child, 0, (int64_t)(2 * c), buf, 0) >= 0);
    assert_true(test_buf_is(buf, 2 * sc, 0xb1));
    assert_true(test_buf_is(buf + 2 * sc, 2 * c - 2 * sc, 0));

    int64_t pnum, map;
    BlockDriverState *file;
    int ret = bdrv_block_status_above(img.bs, NULL, 0, (int64_t)c, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_int_equal(pnum, 2 * sc);
    ret = bdrv_block_status_above(img.bs, NULL, (int64_t)(2 * sc), (int64_t)c, &pnum, &map, &file);
    assert_true(ret & BDRV_BLOCK_ZERO);
    assert_true(ret & BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(pnum, sc);
    ret = bdrv_block_status_above(img.bs, NULL, (int64_t)(3 * sc), (int64_t)c, &pnum, &map, &file);
    assert_false(ret & BDRV_BLOCK_ALLOCATED);
    assert_int_equal(pnum, c - 3 * sc);

    assert_int_equal(bdrv_pread(img.child, (int64_t)(2 * c), 512, buf, 0), -EIO);
    assert_int_equal(bdrv_pread(img.child, (int64_t)(3 * c), 512, buf, 0), -EIO);
    free(buf);
    q2_free(&img);
}

/* Compressed L2 entry for data at host offset off, len bytes. */
static uint64_t compressed_entry(uint32_t cb, uint64_t off, uint64_t len)
{
    uint32_t shift = 62 - (cb - 8);
    uint64_t nb_sectors = (off + len - 1) / 512 - off / 512;
    return QCOW2_OFLAG_COMPRESSED | off | (nb_sectors << shift);
}

static void test_read_compressed_zlib(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 2);
    uint64_t c = Q2_C(&img);
    uint8_t *plain = malloc(c), *packed = malloc(2 * c), *buf = malloc(c);
    test_pattern(plain, c, 42);
    memset(plain, 0x5a, c / 2);               /* compressible */
    z_stream z = { 0 };
    assert_int_equal(deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                                  Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = plain;
    z.avail_in = (uInt)c;
    z.next_out = packed;
    z.avail_out = (uInt)(2 * c);
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    uint64_t len = z.total_out;
    deflateEnd(&z);
    /* at an odd byte offset inside data cluster 0 */
    uint64_t off = Q2_DATA(&img, 0) + 1234;
    mem_write_raw(img.file, (int64_t)off, packed, (int64_t)len);
    q2_set_l2(&img, 3, compressed_entry(16, off, len), 0);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    assert_true(bdrv_pread(img.child, (int64_t)(3 * c), (int64_t)c, buf, 0) >= 0);
    assert_memory_equal(buf, plain, c);
    assert_true(bdrv_pread(img.child, (int64_t)(3 * c) + 1000, 3000, buf, 0) >= 0);
    assert_memory_equal(buf, plain + 1000, 3000);

    int64_t pnum, map;
    BlockDriverState *file;
    int ret = bdrv_block_status_above(img.bs, NULL, (int64_t)(3 * c), (int64_t)c, &pnum, &map,
                                      &file);
    assert_true(ret & BDRV_BLOCK_DATA);
    assert_false(ret & BDRV_BLOCK_OFFSET_VALID);
    q2_close(&img);

    /* garbage instead of deflate data fails the read */
    memset(packed, 0xff, len);
    mem_write_raw(img.file, (int64_t)off, packed, (int64_t)len);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_pread(img.child, (int64_t)(3 * c), 512, buf, 0), -EIO);
    free(plain);
    free(packed);
    free(buf);
    q2_free(&img);
}

#ifdef CONFIG_ZSTD
static void test_read_compressed_zstd(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 3);
    uint64_t c = Q2_C(&img);
    uint8_t *plain = malloc(c), *packed = malloc(4 * c), *buf = malloc(c);
    test_pattern(plain, c, 7);
    size_t len = ZSTD_compress(packed, 4 * c, plain, c, 3);
    assert_false(ZSTD_isError(len));
    /* crossing from data cluster 0 into 1 */
    uint64_t off = Q2_DATA(&img, 1) - 100;
    mem_write_raw(img.file, (int64_t)off, packed, (int64_t)len);
    q2_set_l2(&img, 0, compressed_entry(12, off, len), 0);
    uint8_t t = QCOW2_COMPRESSION_ZSTD;
    mem_write_raw(img.file, QH_COMPRESSION_TYPE, &t, 1);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    assert_true(bdrv_pread(img.child, 0, (int64_t)c, buf, 0) >= 0);
    assert_memory_equal(buf, plain, c);
    free(plain);
    free(packed);
    free(buf);
    q2_free(&img);
}
#endif

/* Unallocated clusters read from the backing node, zeros past its end. */
static void test_read_backing(void **state)
{
    (void)state;
    MemConfig bcfg = { .size = 6 * 4096, .node_name = "q2base" };
    BlockDriverState *base = mem_node_new(&bcfg);
    mem_fill(base, 0, 6 * 4096, 0xcc);
    Q2Image img = q2_make(12, MiB, false, 1);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 0), 4096, 0xdd);
    q2_set_l2(&img, 1, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    q2_set_l2(&img, 2, QCOW2_OFLAG_ZERO, 0);
    q2_open(&img, 0, "backing", "q2base");
    assert_non_null(img.bs);
    uint8_t *buf = malloc(8 * 4096);
    assert_true(bdrv_pread(img.child, 0, 8 * 4096, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 4096, 0xcc));
    assert_true(test_buf_is(buf + 4096, 4096, 0xdd));
    assert_true(test_buf_is(buf + 2 * 4096, 4096, 0));        /* zero cluster hides base */
    assert_true(test_buf_is(buf + 3 * 4096, 3 * 4096, 0xcc));
    assert_true(test_buf_is(buf + 6 * 4096, 2 * 4096, 0));    /* past the base's end */
    free(buf);
    q2_free(&img);
    bdrv_unref(base);
}

/* Many coroutines read at once through one node: each sees its cluster. */
typedef struct ParReads {
    BdrvChild *child;
    int index, ret;
    uint64_t c;
    int *done;
} ParReads;

static void coroutine_fn par_read_co(void *opaque)
{
    ParReads *p = opaque;
    uint8_t buf[4096];
    for (int round = 0; round < 4 && p->ret == 0; round++) {
        IOVector q;
        iov_init_buf(&q, buf, sizeof(buf));
        p->ret = bdrv_co_preadv(p->child, (int64_t)(p->index * p->c), sizeof(buf), &q, 0);
        if (p->ret == 0 && !test_buf_is(buf, sizeof(buf), 0x10 + p->index)) {
            p->ret = -EILSEQ;
        }
    }
    (*p->done)++;
}

static void test_parallel_reads(void **state)
{
    (void)state;
    enum { N = 32 };
    Q2Image img = q2_make(12, MiB, false, N);
    uint64_t c = Q2_C(&img);
    for (int i = 0; i < N; i++) {
        mem_fill(img.file, (int64_t)Q2_DATA(&img, N - 1 - i), (int64_t)c, 0x10 + i);
        q2_set_l2(&img, (uint32_t)i, Q2_DATA(&img, N - 1 - i) | QCOW2_OFLAG_COPIED, 0);
    }
    mem_set_yield(img.file, 1U << MEM_OP_READ);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    ParReads p[N];
    int done = 0;
    for (int i = 0; i < N; i++) {
        p[i] = (ParReads){ .child = img.child, .index = i, .c = c, .done = &done };
        co_enter(co_create(par_read_co, &p[i]));
    }
    AioContext *ctx = test_loop_init();
    for (int spins = 0; done < N && spins < 100000; spins++) {
        aio_poll(ctx, true);
    }
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(p[i].ret, 0);
    }
    q2_free(&img);
}

static void test_specific_info(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    q2_put64(img.file, QH_COMPAT, QCOW2_COMPAT_LAZY_REFCOUNTS);
    q2_put32(img.file, QH_REFCOUNT_ORDER, 0);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    ImageSpecificInfo info = { 0 };
    img.bs->drv->get_specific_info(img.bs, &info);
    static const char *const want[][2] = {
        { "compat", "1.1" }, { "compression-type", "zlib" }, { "lazy-refcounts", "true" },
        { "refcount-bits", "1" }, { "corrupt", "false" }, { "extended-l2", "false" },
    };
    assert_int_equal(info.n, 6);
    for (int i = 0; i < 6; i++) {
        assert_string_equal(info.entries[i].key, want[i][0]);
        assert_string_equal(info.entries[i].value, want[i][1]);
    }
    image_info_free(&info);
    q2_free(&img);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probe),
        cmocka_unit_test(test_open_good),
        cmocka_unit_test(test_open_v2),
        cmocka_unit_test(test_open_odd_size),
        cmocka_unit_test(test_open_rw_dirty),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_bad_version1),
        cmocka_unit_test(test_bad_version4),
        cmocka_unit_test(test_bad_cluster_bits_low),
        cmocka_unit_test(test_bad_cluster_bits_high),
        cmocka_unit_test(test_bad_cluster_bits_huge),
        cmocka_unit_test(test_bad_header_short),
        cmocka_unit_test(test_bad_header_long),
        cmocka_unit_test(test_bad_backing_offset),
        cmocka_unit_test(test_bad_refcount_order),
        cmocka_unit_test(test_bad_crypt_aes),
        cmocka_unit_test(test_bad_crypt_luks),
        cmocka_unit_test(test_bad_crypt_other),
        cmocka_unit_test(test_bad_l1_huge),
        cmocka_unit_test(test_bad_l1_small),
        cmocka_unit_test(test_bad_size_huge),
        cmocka_unit_test(test_bad_l1_unaligned),
        cmocka_unit_test(test_bad_l1_overflow),
        cmocka_unit_test(test_bad_l1_beyond_eof),
        cmocka_unit_test(test_bad_reftable_huge),
        cmocka_unit_test(test_bad_reftable_none),
        cmocka_unit_test(test_bad_reftable_unaligned),
        cmocka_unit_test(test_bad_reftable_beyond_eof),
        cmocka_unit_test(test_bad_snapshots_many),
        cmocka_unit_test(test_bad_snapshots_beyond_eof),
        cmocka_unit_test(test_bad_compression),
        cmocka_unit_test(test_bad_subcluster_size),
        cmocka_unit_test(test_unknown_incompat),
        cmocka_unit_test(test_corrupt_bit),
        cmocka_unit_test(test_dirty_bit),
        cmocka_unit_test(test_data_file_bits),
        cmocka_unit_test(test_bad_extensions),
        cmocka_unit_test(test_extensions_kept),
        cmocka_unit_test(test_read_clusters),
        cmocka_unit_test(test_read_corrupt_entries),
        cmocka_unit_test(test_read_subclusters),
        cmocka_unit_test(test_read_compressed_zlib),
#ifdef CONFIG_ZSTD
        cmocka_unit_test(test_read_compressed_zstd),
#endif
        cmocka_unit_test(test_read_backing),
        cmocka_unit_test(test_parallel_reads),
        cmocka_unit_test(test_specific_info),
    };
    return cmocka_run_group_tests_name("qcow2", tests, NULL, NULL);
}
