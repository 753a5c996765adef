/*
 * test-qcow2-bitmap.c - qcow2 persistent dirty bitmaps (drivers/qcow2-bitmap.c)
 * on images built in mem nodes: the directory and tables read back from
 * the file's bytes (not through the driver) after add / record / store;
 * in_use set while open writable and cleared at close; writes, zero writes
 * and discards set exactly the granules they touch; several threads
 * recording at once lose no bit; the old clusters freed and the refcounts
 * right (the driver's own check finds nothing); crafted directories and
 * tables refused with QEMU's reasons; a table naming metadata never makes
 * the store free that metadata.
 */
#include <errno.h>
#include <pthread.h>
#include "crash-file.h"
#include "qcow2-image.h"

#define DIR_OFF(img)   Q2_DATA(img, 0)
#define TABLE_OFF(img) Q2_DATA(img, 1)
#define DATA_OFF(img)  Q2_DATA(img, 2)

static uint64_t get64(BlockDriverState *f, int64_t off)
{
    uint64_t be;
    mem_read_raw(f, off, &be, 8);
    return be64toh(be);
}
static uint32_t get32(BlockDriverState *f, int64_t off)
{
    uint32_t be;
    mem_read_raw(f, off, &be, 4);
    return be32toh(be);
}

static uint16_t refcount_of(Q2Image *img, uint64_t cluster)
{
    uint16_t be;
    mem_read_raw(img->file, (int64_t)(2 * Q2_C(img) + cluster * 2), &be, 2);
    return be16toh(be);
}

/* One bitmap on disk, read from the file's bytes. */
typedef struct DiskBitmap {
    char name[64];
    uint32_t flags, gbits, tsize;
    uint64_t toff;
    uint8_t *bits;              /* the data, table_size clusters */
} DiskBitmap;

/* The bitmaps extension and directory as the file holds them; returns how
 * many (at most max). */
static int read_disk_bitmaps(Q2Image *img, DiskBitmap *out, int max)
{
    uint64_t c = Q2_C(img);
    if (!(get64(img->file, QH_AUTOCLEAR) & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    int64_t p = (int64_t)get32(img->file, QH_HEADER_LENGTH);
    uint32_t nb = 0;
    uint64_t dsize = 0, doff = 0;
    for (;;) {
        uint32_t type = get32(img->file, p), len = get32(img->file, p + 4);
        if (type == 0) {
            break;
        }
        if (type == QCOW2_EXT_BITMAPS) {
            nb = get32(img->file, p + 8);
            dsize = get64(img->file, p + 16);
            doff = get64(img->file, p + 24);
        }
        p += 8 + ALIGN_UP((int64_t)len, 8);
    }
    assert_true((int)nb <= max);
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        DiskBitmap *d = &out[i];
        int64_t e = (int64_t)(doff + pos);
        d->toff = get64(img->file, e);
        d->tsize = get32(img->file, e + 8);
        d->flags = get32(img->file, e + 12);
        uint8_t tg[2];
        mem_read_raw(img->file, e + 16, tg, 2);
        assert_int_equal(tg[0], 1);
        d->gbits = tg[1];
        uint16_t nl = (uint16_t)(get32(img->file, e + 16) & 0xffff);
        assert_int_equal(get32(img->file, e + 20), 0);
        assert_true(nl < sizeof(d->name));
        mem_read_raw(img->file, e + 24, d->name, nl);
        d->name[nl] = 0;
        pos += ALIGN_UP(24 + nl, 8);
        d->bits = calloc(d->tsize, c);
        for (uint32_t t = 0; t < d->tsize; t++) {
            uint64_t te = get64(img->file, (int64_t)(d->toff + t * 8));
            if (te & ~1ULL) {
                mem_read_raw(img->file, (int64_t)(te & ~1ULL), d->bits + t * c, (int64_t)c);
            } else if (te & 1) {
                memset(d->bits + t * c, 0xff, c);
            }
        }
    }
    assert_int_equal(pos, dsize);
    return (int)nb;
}

static void free_disk_bitmaps(DiskBitmap *d, int n)
{
    for (int i = 0; i < n; i++) {
        free(d[i].bits);
    }
}

static bool bit(const DiskBitmap *d, uint64_t i)
{
    return (d->bits[i / 8] >> (i % 8)) & 1;
}

static void add_bitmap(Q2Image *img, const char *name, uint64_t gran, int want)
{
    BdrvBitmapOp op = { .type = BDRV_BITMAP_ADD, .name = name, .has_granularity = gran != 0,
                        .granularity = gran };
    Error *err = NULL;
    assert_int_equal(bdrv_bitmap_op(img->bs, &op, &err) < 0 ? -1 : 0, want);
    if (err) {
        error_free(err);
    }
}

static void op_bitmap(Q2Image *img, BdrvBitmapOpType type, const char *name)
{
    BdrvBitmapOp op = { .type = type, .name = name };
    Error *err = NULL;
    assert_int_equal(bdrv_bitmap_op(img->bs, &op, &err), 0);
}

static void check_clean(Q2Image *img)
{
    BdrvCheckResult r;
    q2_open(img, BDRV_O_CHECK, NULL, NULL);
    assert_non_null(img->bs);
    assert_int_equal(bdrv_check(img->bs, &r, 0), 0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(r.check_errors, 0);
    q2_close(img);
}

typedef struct { BdrvChild *child; int64_t offset, bytes; int ret; } DiscardCo;
static void coroutine_fn discard_co(void *opaque)
{
    DiscardCo *d = opaque;
    d->ret = bdrv_co_pdiscard(d->child, d->offset, d->bytes);
}

/* add, store, reopen (in_use while open), record, store: the bits on disk
 * are exactly the granules written, the disabled bitmap unchanged, in_use
 * clear after close, the checker clean. */
static void test_add_record_store(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, 4 * MiB, false, 0);
    DiskBitmap d[4];

    q2_open(&img, BDRV_O_RDWR | BDRV_O_UNMAP, NULL, NULL);
    assert_non_null(img.bs);
    /* QEMU stores the bitmaps a session added newest first */
    add_bitmap(&img, "off", 4096, 0);
    add_bitmap(&img, "b512", 512, 0);
    add_bitmap(&img, "b64k", 0, 0);
    add_bitmap(&img, "b64k", 0, -1);             /* exists */
    add_bitmap(&img, "bad", 1000, -1);           /* not a power of 2 */
    add_bitmap(&img, "", 0, -1);
    op_bitmap(&img, BDRV_BITMAP_DISABLE, "off");
    q2_close(&img);
    assert_int_equal(read_disk_bitmaps(&img, d, 4), 3);
    assert_string_equal(d[0].name, "b64k");
    assert_int_equal(d[0].gbits, 16);
    assert_int_equal(d[0].flags, 2);             /* auto */
    assert_string_equal(d[1].name, "b512");
    assert_int_equal(d[1].gbits, 9);
    assert_int_equal(d[1].tsize, 1);             /* 8192 bits: 1 KiB */
    assert_int_equal(d[2].flags, 0);
    free_disk_bitmaps(d, 3);
    check_clean(&img);

    q2_open(&img, BDRV_O_RDWR | BDRV_O_UNMAP, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(read_disk_bitmaps(&img, d, 4), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d[i].flags & 1, 1);     /* in use while open */
    }
    free_disk_bitmaps(d, 3);
    uint8_t buf[4096];
    memset(buf, 0x5a, sizeof(buf));
    assert_true(bdrv_pwrite(img.child, 1000, 1, buf, 0) >= 0);          /* granule 1 of 512 */
    assert_true(bdrv_pwrite(img.child, 200 * 1024, 4096, buf, 0) >= 0);
    assert_true(bdrv_pwrite_zeroes(img.child, 1 * MiB, 64 * 1024, 0) >= 0);
    DiscardCo dc = { img.child, 3 * MiB + 512, 1024, -EINPROGRESS };
    test_run_co(discard_co, &dc);
    assert_int_equal(dc.ret, 0);
    q2_close(&img);

    assert_int_equal(read_disk_bitmaps(&img, d, 4), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d[i].flags & 1, 0);     /* stored: no longer in use */
    }
    /* 64 KiB granules: 0, 3 (200k), 16 (1M), 48 (3M) */
    for (uint64_t i = 0; i < 64; i++) {
        assert_int_equal(bit(&d[0], i), i == 0 || i == 3 || i == 16 || i == 48);
    }
    for (uint64_t i = 0; i < 8192; i++) {
        bool want = i == 1 || (i >= 400 && i < 408) || (i >= 2048 && i < 2176) ||
                    (i == 6145 || i == 6146);
        if (bit(&d[1], i) != want) {
            fail_msg("b512 bit %" PRIu64 " is %d", i, bit(&d[1], i));
        }
    }
    for (uint64_t i = 0; i < 1024; i++) {
        assert_false(bit(&d[2], i));             /* disabled: records nothing */
    }
    free_disk_bitmaps(d, 3);
    check_clean(&img);

    /* clear, remove: the old clusters go back, the checker stays clean */
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    op_bitmap(&img, BDRV_BITMAP_CLEAR, "b64k");
    op_bitmap(&img, BDRV_BITMAP_REMOVE, "b512");
    q2_close(&img);
    assert_int_equal(read_disk_bitmaps(&img, d, 4), 2);
    assert_string_equal(d[1].name, "off");
    for (uint64_t i = 0; i < 64; i++) {
        assert_false(bit(&d[0], i));
    }
    free_disk_bitmaps(d, 2);
    check_clean(&img);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    op_bitmap(&img, BDRV_BITMAP_REMOVE, "b64k");
    op_bitmap(&img, BDRV_BITMAP_REMOVE, "off");
    q2_close(&img);
    assert_int_equal(read_disk_bitmaps(&img, d, 4), 0);   /* the autoclear bit is gone too */
    check_clean(&img);
    q2_free(&img);
}

/* Several threads recording at once (the ublk queues): every bit set.
 * They start together (a barrier) and set interleaved granules, so the
 * words they share are first written by several at once: a plain
 * read-modify-write would lose bits.  Several rounds, each on a cleared
 * bitmap, stored and read back. */
#define REC_GRANULES (1024 * 2048)
typedef struct { BDRVQcow2State *s; pthread_barrier_t *go; int id, n; } RecArg;
static void *rec_thread(void *opaque)
{
    RecArg *a = opaque;
    pthread_barrier_wait(a->go);
    for (uint64_t g = (uint64_t)a->id; g < REC_GRANULES; g += (uint64_t)a->n) {
        qcow2_bitmaps_record(a->s, g * 512, 1);
    }
    return NULL;
}

static void test_record_threads(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, 1024 * MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    add_bitmap(&img, "t", 512, 0);
    q2_close(&img);
    enum { N = 4 };
    for (int round = 0; round < 8; round++) {
        q2_open(&img, BDRV_O_RDWR, NULL, NULL);
        assert_non_null(img.bs);
        op_bitmap(&img, BDRV_BITMAP_CLEAR, "t");
        pthread_t th[N];
        RecArg args[N];
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, N);
        for (int i = 0; i < N; i++) {
            args[i] = (RecArg){ img.bs->opaque, &go, i, N + 1 };  /* every 5th stays clear */
            assert_int_equal(pthread_create(&th[i], NULL, rec_thread, &args[i]), 0);
        }
        for (int i = 0; i < N; i++) {
            pthread_join(th[i], NULL);
        }
        pthread_barrier_destroy(&go);
        q2_close(&img);
        DiskBitmap d[1];
        assert_int_equal(read_disk_bitmaps(&img, d, 1), 1);
        for (uint64_t g = 0; g < REC_GRANULES; g++) {
            if (bit(&d[0], g) != (g % (N + 1) != N)) {
                fail_msg("round %d, granule %" PRIu64 ": %d", round, g, bit(&d[0], g));
            }
        }
        free_disk_bitmaps(d, 1);
    }
    check_clean(&img);
    q2_free(&img);
}

/* A hand-made image with one bitmap "b0": directory in data cluster 0,
 * table in 1, the data in 2 (4 MiB at 64 KiB granules: 8 bytes of bits). */
static Q2Image make_bitmap_image(void)
{
    Q2Image img = q2_make(16, 4 * MiB, false, 3);
    uint8_t ext[24] = { 0 };
    int64_t d = (int64_t)DIR_OFF(&img);
    q2_put64(img.file, d, TABLE_OFF(&img));
    q2_put32(img.file, d + 8, 1);
    q2_put32(img.file, d + 12, 2);                  /* auto */
    uint8_t tg[4] = { 1, 16, 0, 2 };                /* type, granularity bits, name size */
    mem_write_raw(img.file, d + 16, tg, 4);
    q2_put32(img.file, d + 20, 0);
    mem_write_raw(img.file, d + 24, "b0", 2);
    q2_put64(img.file, (int64_t)TABLE_OFF(&img), DATA_OFF(&img));
    uint8_t bits = 0x81;                            /* granules 0 and 7 */
    mem_write_raw(img.file, (int64_t)DATA_OFF(&img), &bits, 1);
    ext[3] = 1;                                     /* one bitmap */
    ext[15] = 32;                                   /* directory size */
    uint64_t be = htobe64(DIR_OFF(&img));
    memcpy(ext + 16, &be, 8);
    q2_put64(img.file, QH_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS);
    q2_add_ext(&img, 112, QCOW2_EXT_BITMAPS, ext, sizeof(ext));
    return img;
}

/* The hand-made image loads (bits kept), stores elsewhere and frees its old
 * clusters. */
static void test_load_and_replace(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    check_clean(&img);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    assert_true(bdrv_pwrite_zeroes(img.child, 2 * MiB, 4096, 0) >= 0);
    q2_close(&img);
    DiskBitmap d[1];
    assert_int_equal(read_disk_bitmaps(&img, d, 1), 1);
    assert_true(d[0].toff != TABLE_OFF(&img));
    for (uint64_t i = 0; i < 64; i++) {
        assert_int_equal(bit(&d[0], i), i == 0 || i == 7 || i == 32);
    }
    free_disk_bitmaps(d, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(refcount_of(&img, 5 + (uint64_t)i), 0);   /* old dir, table, data */
    }
    check_clean(&img);
    q2_free(&img);
}

/* poke: change the hand-made image, then expect an open (flags) to fail. */
static void crafted(int64_t off_in_dir, const void *bytes, size_t n, int flags, const char *want)
{
    Q2Image img = make_bitmap_image();
    if (off_in_dir >= 0) {
        mem_write_raw(img.file, (int64_t)DIR_OFF(&img) + off_in_dir, bytes, (int64_t)n);
    } else {
        mem_write_raw(img.file, (int64_t)TABLE_OFF(&img), bytes, (int64_t)n);
    }
    q2_expect_open_error(&img, flags, want);
}

static void test_crafted(void **state)
{
    (void)state;
    const char *constraints = "Bitmap 'b0' doesn't satisfy the constraints";
    crafted(17, "\x08", 1, 0, constraints);                 /* granularity 256 */
    crafted(17, "\x20", 1, 0, constraints);                 /* granularity 4 GiB */
    crafted(16, "\x02", 1, 0, constraints);                 /* unknown type */
    crafted(12, "\x00\x00\x00\x06", 4, 0, constraints);     /* reserved flag */
    crafted(8, "\x00\x00\x00\x00", 4, 0, constraints);      /* empty table */
    crafted(8, "\x08\x00\x00\x01", 4, 0, constraints);      /* table too big */
    crafted(0, "\x00\x00\x00\x00\x00\x00\x00\x00", 8, 0, constraints);
    crafted(7, "\x01", 1, 0, constraints);                  /* table unaligned */
    crafted(20, "\x00\x00\x00\x08", 4, 0, "Broken bitmap directory");  /* past its end */
    crafted(20, "\x00\x01\x00\x00", 4, 0, "Broken bitmap directory");
    crafted(18, "\x00\x0b", 2, 0, "Broken bitmap directory");  /* past the directory */
    /* tables are read by a writable open: bad entries, and a size that
     * does not match the image */
    uint64_t be = htobe64(DATA_OFF(&(Q2Image){ .cb = 16 }) | 0x100);
    crafted(-1, &be, 8, BDRV_O_RDWR, "Could not read bitmap_table table from image for bitmap"
                                     " 'b0'");
    be = htobe64(DATA_OFF(&(Q2Image){ .cb = 16 }) | 1);
    crafted(-1, &be, 8, BDRV_O_RDWR, "Could not read bitmap_table table");
    be = htobe64(0xff00000000000000ULL);
    crafted(-1, &be, 8, BDRV_O_RDWR, "Could not read bitmap_table table");
    crafted(8, "\x00\x00\x00\x02", 4, BDRV_O_RDWR, "Could not read bitmap 'b0' from image");

    /* extra data inside the directory */
    Q2Image x = make_bitmap_image();
    q2_put32(x.file, (int64_t)DIR_OFF(&x) + 20, 8);
    q2_put64(x.file, 112 + 8 + 8, 40);
    q2_expect_open_error(&x, 0, "Bitmap extra data is not supported");
    /* a name of 1024 bytes */
    x = make_bitmap_image();
    mem_write_raw(x.file, (int64_t)DIR_OFF(&x) + 18, "\x04\x00", 2);
    mem_fill(x.file, (int64_t)DIR_OFF(&x) + 24, 1024, 'n');
    q2_put64(x.file, 112 + 8 + 8, 1048);
    q2_expect_open_error(&x, 0, "doesn't satisfy the constraints");
    /* the header says two bitmaps, the directory holds one */
    Q2Image img = make_bitmap_image();
    q2_put32(img.file, 112 + 8, 2);
    q2_expect_open_error(&img, 0, "Less bitmaps found than specified in header extension");
    /* ... or the other way round */
    img = make_bitmap_image();
    q2_put64(img.file, 112 + 8 + 8, 64);
    int64_t d2 = (int64_t)DIR_OFF(&img) + 32;
    q2_put64(img.file, d2, TABLE_OFF(&img));
    q2_put32(img.file, d2 + 8, 1);
    uint8_t tg[4] = { 1, 16, 0, 2 };
    mem_write_raw(img.file, d2 + 16, tg, 4);
    mem_write_raw(img.file, d2 + 24, "b1", 2);
    q2_expect_open_error(&img, 0, "More bitmaps found than specified in header extension");
}

/* A bitmap in use (a crash) is kept as it is: not loaded, not stored, its
 * clusters untouched; resize is refused; remove frees them. */
static void test_in_use_kept(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    q2_put32(img.file, (int64_t)DIR_OFF(&img) + 12, 3);       /* auto, in use */
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    BdrvBitmapOp op = { .type = BDRV_BITMAP_CLEAR, .name = "b0" };
    Error *err = NULL;
    assert_true(bdrv_bitmap_op(img.bs, &op, &err) < 0);
    assert_non_null(strstr(error_get_pretty(err), "Bitmap 'b0' is inconsistent and cannot be"
                                                  " used"));
    error_free(err);
    err = NULL;
    assert_true(bdrv_truncate(img.child, 8 * MiB, false, PREALLOC_MODE_OFF, 0, &err) < 0);
    assert_non_null(strstr(error_get_pretty(err), "Bitmap 'b0' is inconsistent"));
    error_free(err);
    assert_true(bdrv_pwrite_zeroes(img.child, 0, 4096, 0) >= 0);
    q2_close(&img);
    assert_int_equal(get32(img.file, (int64_t)DIR_OFF(&img) + 12), 3);
    assert_int_equal(get64(img.file, (int64_t)TABLE_OFF(&img)), DATA_OFF(&img));
    assert_int_equal(refcount_of(&img, 7), 1);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    op_bitmap(&img, BDRV_BITMAP_REMOVE, "b0");
    q2_close(&img);
    assert_int_equal(refcount_of(&img, 5), 0);
    assert_int_equal(refcount_of(&img, 6), 0);
    assert_int_equal(refcount_of(&img, 7), 0);
    check_clean(&img);
    q2_free(&img);
}

/* A table naming metadata (the L1 table) as its data cluster: replacing
 * the bitmap must not drop the L1 table's reference. */
static void test_table_names_metadata(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    q2_put64(img.file, (int64_t)TABLE_OFF(&img), 3 * Q2_C(&img));
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    q2_close(&img);
    assert_int_equal(refcount_of(&img, 3), 1);
    q2_free(&img);
}

/* A directory lying on the active L2 table: the writable open refuses to
 * mark it in use there (QEMU's overlap check of the in-place store), and
 * the L2 table is not written. */
static void test_dir_on_l2_table(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    uint8_t entry[32];
    mem_read_raw(img.file, (int64_t)DIR_OFF(&img), entry, sizeof(entry));
    mem_write_raw(img.file, (int64_t)(4 * Q2_C(&img)), entry, sizeof(entry));
    q2_put64(img.file, 112 + 8 + 16, 4 * Q2_C(&img));          /* directory offset */
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_null(img.bs);
    assert_non_null(strstr(error_get_pretty(img.err), "cannot mark the bitmaps in use"));
    q2_close(&img);
    assert_int_equal(get32(img.file, (int64_t)(4 * Q2_C(&img)) + 12), 2);   /* untouched */
    q2_free(&img);
}

/* Resize: the bitmaps take the new size, bits past a shrink are gone and
 * a grow adds clear bits. */
static void test_resize(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    Error *err = NULL;
    assert_int_equal(bdrv_truncate(img.child, 8 * MiB, false, PREALLOC_MODE_OFF, 0, &err), 0);
    uint8_t buf[512] = { 0 };
    assert_true(bdrv_pwrite(img.child, 7 * MiB, 512, buf, 0) >= 0);
    q2_close(&img);
    DiskBitmap d[1];
    assert_int_equal(read_disk_bitmaps(&img, d, 1), 1);
    assert_int_equal(d[0].tsize, 1);
    for (uint64_t i = 0; i < 128; i++) {
        assert_int_equal(bit(&d[0], i), i == 0 || i == 7 || i == 112);
    }
    free_disk_bitmaps(d, 1);
    check_clean(&img);
    q2_free(&img);
    img = make_bitmap_image();
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_int_equal(bdrv_truncate(img.child, 256 * 1024, false, PREALLOC_MODE_OFF, 0, &err),
                     0);
    q2_close(&img);
    assert_int_equal(read_disk_bitmaps(&img, d, 1), 1);
    assert_int_equal(d[0].bits[0], 0x01);           /* granule 7 is past the end now */
    free_disk_bitmaps(d, 1);
    check_clean(&img);
    q2_free(&img);
}

/* Bits a shrink dropped stay dropped after a regrow in the same session
 * (the arrays a resize replaced are folded in at store only up to the
 * smallest size since). */
static void test_shrink_regrow(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    Error *err = NULL;
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    qcow2_bitmaps_record(img.bs->opaque, 40 * 65536, 1);
    assert_int_equal(bdrv_truncate(img.child, 1 * MiB, false, PREALLOC_MODE_OFF, 0, &err), 0);
    assert_int_equal(bdrv_truncate(img.child, 4 * MiB, false, PREALLOC_MODE_OFF, 0, &err), 0);
    qcow2_bitmaps_record(img.bs->opaque, 50 * 65536, 1);
    q2_close(&img);
    DiskBitmap d[1];
    assert_int_equal(read_disk_bitmaps(&img, d, 1), 1);
    for (uint64_t i = 0; i < 64; i++) {
        assert_int_equal(bit(&d[0], i), i == 0 || i == 7 || i == 50);
    }
    free_disk_bitmaps(d, 1);
    check_clean(&img);
    q2_free(&img);
}

/* A crash at every write and flush of a writable session's close (the
 * bitmap stored: data, table, directory, header, old clusters freed):
 * every image a crash can leave opens, checks without corruption (leaks
 * at worst) and holds the old bitmap (in use, as loaded) or the new one
 * (not in use, the write recorded). */
static void test_store_crash(void **state)
{
    (void)state;
    Q2Image src = make_bitmap_image();
    size_t len = (size_t)mem_size(src.file);
    uint8_t *init = malloc(len);
    mem_read_raw(src.file, 0, init, (int64_t)len);
    q2_free(&src);
    int64_t total = 0;
    int n_old = 0, n_new = 0;
    for (int64_t at = 0; at == 0 || at <= total + 1; at++) {
        static int serial;
        char name[32];
        snprintf(name, sizeof(name), "bmcrash%d", serial++);
        Q2Image img = { .file = crash_file_new(name, init, len), .cb = 16 };
        crash_file_arm(img.file, 0);      /* the last round's crash is over */
        q2_open(&img, BDRV_O_RDWR, NULL, NULL);
        assert_non_null(img.bs);
        uint8_t buf[512] = { 1 };
        assert_true(bdrv_pwrite(img.child, 2 * MiB, 512, buf, 0) >= 0);     /* granule 32 */
        assert_int_equal(bdrv_flush(img.bs), 0);
        int64_t ops0 = crash_file_ops(img.file);
        crash_file_arm(img.file, at);
        q2_close(&img);
        if (at == 0) {
            total = crash_file_ops(img.file) - ops0;
            assert_true(total >= 4);
        }
        for (uint64_t seed = 0; seed < 6; seed++) {
            size_t plen;
            uint8_t *p = crash_file_persisted(img.file, seed, 50, 0, &plen);
            MemConfig cfg = { .size = (int64_t)plen, .growable = true };
            snprintf(name, sizeof(name), "bmcheck%d", serial++);
            cfg.node_name = name;
            Q2Image chk = { .file = mem_node_new(&cfg), .cb = 16 };
            mem_write_raw(chk.file, 0, p, (int64_t)plen);
            free(p);
            BdrvCheckResult r;
            q2_open(&chk, BDRV_O_CHECK, NULL, NULL);
            if (!chk.bs) {
                fail_msg("crash at %" PRId64 " seed %" PRIu64 ": %s", at, seed,
                         error_get_pretty(chk.err));
            }
            assert_int_equal(bdrv_check(chk.bs, &r, 0), 0);
            if (r.corruptions || r.check_errors) {
                fail_msg("crash at %" PRId64 " seed %" PRIu64 ": %d corruptions", at, seed,
                         r.corruptions);
            }
            q2_close(&chk);
            q2_open(&chk, 0, NULL, NULL);
            if (!chk.bs) {
                fail_msg("crash at %" PRId64 " seed %" PRIu64 ": %s", at, seed,
                         error_get_pretty(chk.err));
            }
            q2_close(&chk);
            DiskBitmap d[1];
            assert_int_equal(read_disk_bitmaps(&chk, d, 1), 1);
            bool old = d[0].flags == 3 && d[0].bits[0] == 0x81 && !bit(&d[0], 32);
            bool new = d[0].flags == 2 && d[0].bits[0] == 0x81 && bit(&d[0], 32);
            if (!old && !new) {
                fail_msg("crash at %" PRId64 " seed %" PRIu64 ": flags %u bits %02x", at, seed,
                         d[0].flags, d[0].bits[0]);
            }
            n_old += old;
            n_new += new;
            free_disk_bitmaps(d, 1);
            q2_free(&chk);
        }
        q2_free(&img);
    }
    assert_true(n_old > 0 && n_new > 0);
    free(init);
}

/* A read-only open lists the bitmaps (bdrv_bitmap_list: convert --bitmaps,
 * info) and lends their bits to a merge, but marks nothing in use and
 * refuses changes; a bad table fails it, as QEMU's read-only open. */
static void test_read_only(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    BdrvBitmapInfo *l = NULL;
    size_t n = 0;
    assert_int_equal(bdrv_bitmap_list(img.bs, &l, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].name, "b0");
    assert_int_equal(l[0].granularity, 65536);
    assert_true(l[0].enabled);
    assert_false(l[0].inconsistent);
    bdrv_bitmap_list_free(l, n);
    assert_int_equal(get32(img.file, (int64_t)DIR_OFF(&img) + 12), 2);   /* not in use */
    BdrvBitmapOp op = { .type = BDRV_BITMAP_ADD, .name = "x" };
    Error *err = NULL;
    assert_true(bdrv_bitmap_op(img.bs, &op, &err) < 0);
    error_free(err);

    /* its bits merged into a writable image's bitmap */
    Q2Image dst = q2_make(16, 4 * MiB, false, 0);
    q2_open(&dst, BDRV_O_RDWR, NULL, NULL);
    add_bitmap(&dst, "d", 0, 0);
    BdrvBitmapOp m = { .type = BDRV_BITMAP_MERGE, .name = "d", .src = img.bs, .src_name = "b0" };
    assert_int_equal(bdrv_bitmap_op(dst.bs, &m, &err), 0);
    q2_close(&dst);
    q2_close(&img);
    DiskBitmap d[1];
    assert_int_equal(read_disk_bitmaps(&dst, d, 1), 1);
    assert_int_equal(d[0].bits[0], 0x81);
    free_disk_bitmaps(d, 1);
    q2_free(&dst);

    /* a table entry with reserved bits: the read-only open fails */
    q2_put64(img.file, (int64_t)TABLE_OFF(&img), DATA_OFF(&img) | 2);
    q2_expect_open_error(&img, 0, "Could not read bitmap_table");
}

/* A remove frees the bitmap's table and data clusters at once (QEMU's
 * qcow2_co_remove_persistent_dirty_bitmap), not at close: after it and a
 * flush, the header names no bitmap and the refcounts are 0, while the
 * image is still open. */
static void test_remove_frees_now(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint64_t c = Q2_C(&img);
    assert_int_equal(refcount_of(&img, TABLE_OFF(&img) / c), 1);
    assert_int_equal(refcount_of(&img, DATA_OFF(&img) / c), 1);
    op_bitmap(&img, BDRV_BITMAP_REMOVE, "b0");
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(refcount_of(&img, TABLE_OFF(&img) / c), 0);
    assert_int_equal(refcount_of(&img, DATA_OFF(&img) / c), 0);
    assert_int_equal(refcount_of(&img, DIR_OFF(&img) / c), 0);
    DiskBitmap d[1];
    assert_int_equal(read_disk_bitmaps(&img, d, 1), 0);
    q2_close(&img);
    check_clean(&img);
    q2_free(&img);
}

/* Two bitmaps, the first removed: the new directory keeps the second one
 * as it is on disk (in use while open), and the close stores it. */
static void test_remove_keeps_others(void **state)
{
    (void)state;
    Q2Image img = make_bitmap_image();
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    add_bitmap(&img, "b1", 0, 0);
    q2_close(&img);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    op_bitmap(&img, BDRV_BITMAP_REMOVE, "b0");
    assert_int_equal(bdrv_flush(img.bs), 0);
    DiskBitmap d[2];
    assert_int_equal(read_disk_bitmaps(&img, d, 2), 1);
    assert_string_equal(d[0].name, "b1");
    assert_int_equal(d[0].flags, 3);            /* in use while open */
    free_disk_bitmaps(d, 1);
    q2_close(&img);
    assert_int_equal(read_disk_bitmaps(&img, d, 2), 1);
    assert_int_equal(d[0].flags, 2);
    free_disk_bitmaps(d, 1);
    check_clean(&img);
    q2_free(&img);
}

/* A crash at every write and flush of a remove (new directory, header,
 * freed clusters) and of the close after it: every image a crash can
 * leave opens, checks without corruption (leaks at worst) and has the
 * bitmap as loaded (in use, its bits) or none. */
static void test_remove_crash(void **state)
{
    (void)state;
    Q2Image src = make_bitmap_image();
    size_t len = (size_t)mem_size(src.file);
    uint8_t *init = malloc(len);
    mem_read_raw(src.file, 0, init, (int64_t)len);
    q2_free(&src);
    int64_t total = 0;
    int n_old = 0, n_gone = 0;
    for (int64_t at = 0; at == 0 || at <= total + 1; at++) {
        static int serial;
        char name[32];
        snprintf(name, sizeof(name), "rmcrash%d", serial++);
        Q2Image img = { .file = crash_file_new(name, init, len), .cb = 16 };
        crash_file_arm(img.file, 0);
        q2_open(&img, BDRV_O_RDWR, NULL, NULL);
        assert_non_null(img.bs);
        int64_t ops0 = crash_file_ops(img.file);
        crash_file_arm(img.file, at);
        op_bitmap(&img, BDRV_BITMAP_REMOVE, "b0");
        q2_close(&img);
        if (at == 0) {
            total = crash_file_ops(img.file) - ops0;
            assert_true(total >= 3);
        }
        for (uint64_t seed = 0; seed < 6; seed++) {
            size_t plen;
            uint8_t *p = crash_file_persisted(img.file, seed, 50, 0, &plen);
            MemConfig cfg = { .size = (int64_t)plen, .growable = true };
            snprintf(name, sizeof(name), "rmcheck%d", serial++);
            cfg.node_name = name;
            Q2Image chk = { .file = mem_node_new(&cfg), .cb = 16 };
            mem_write_raw(chk.file, 0, p, (int64_t)plen);
            free(p);
            BdrvCheckResult r;
            q2_open(&chk, BDRV_O_CHECK, NULL, NULL);
            if (!chk.bs) {
                fail_msg("crash at %" PRId64 " seed %" PRIu64 ": %s", at, seed,
                         error_get_pretty(chk.err));
            }
            assert_int_equal(bdrv_check(chk.bs, &r, 0), 0);
            if (r.corruptions || r.check_errors) {
                fail_msg("crash at %" PRId64 " seed %" PRIu64 ": %d corruptions", at, seed,
                         r.corruptions);
            }
            q2_close(&chk);
            DiskBitmap d[1];
            int nb = read_disk_bitmaps(&chk, d, 1);
            if (nb == 1) {
                if (!(d[0].flags & 1) || d[0].bits[0] != 0x81) {
                    fail_msg("crash at %" PRId64 " seed %" PRIu64 ": flags %u bits %02x", at,
                             seed, d[0].flags, d[0].bits[0]);
                }
                free_disk_bitmaps(d, 1);
                n_old++;
            } else {
                n_gone++;
            }
            q2_free(&chk);
        }
        q2_free(&img);
    }
    assert_true(n_old > 0 && n_gone > 0);
    free(init);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_record_store),
        cmocka_unit_test(test_record_threads),
        cmocka_unit_test(test_load_and_replace),
        cmocka_unit_test(test_crafted),
        cmocka_unit_test(test_in_use_kept),
        cmocka_unit_test(test_table_names_metadata),
        cmocka_unit_test(test_resize),
        cmocka_unit_test(test_shrink_regrow),
        cmocka_unit_test(test_dir_on_l2_table),
        cmocka_unit_test(test_store_crash),
        cmocka_unit_test(test_read_only),
        cmocka_unit_test(test_remove_frees_now),
        cmocka_unit_test(test_remove_keeps_others),
        cmocka_unit_test(test_remove_crash),
    };
    return cmocka_run_group_tests_name("qcow2-bitmap", tests, NULL, NULL);
}
