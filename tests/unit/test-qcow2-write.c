/*
 * test-qcow2-write.c - the qcow2 write path on images built in mem nodes
 * (qcow2-image.h): in-place writes touch no metadata, allocating writes set
 * refcounts and L2 entries, concurrent allocations of one cluster end in one
 * cluster, readers never see an L2 entry before its data, zero writes and
 * discards, lazy refcounts' dirty bit, the overlap check.
 */
#include <errno.h>
#include <zlib.h>
#include "qcow2-image.h"

static uint64_t get64(BlockDriverState *f, int64_t off)
{
    uint64_t be;
    mem_read_raw(f, off, &be, 8);
    return be64toh(be);
}

static uint16_t refcount_of(Q2Image *img, uint64_t cluster)
{
    uint16_t be;
    mem_read_raw(img->file, (int64_t)(2 * Q2_C(img) + cluster * 2), &be, 2);
    return be16toh(be);
}

/* An allocated, COPIED cluster is overwritten where it is: one write, at
 * the data, nothing else. */
static void test_write_in_place(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 1);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[1024];
    memset(buf, 0x3c, sizeof(buf));
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, 100, sizeof(buf), buf, 0) >= 0);
    assert_int_equal(mem_calls(img.file, MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(img.file, MEM_OP_WRITE, 0)->offset, Q2_DATA(&img, 0) + 100);
    q2_free(&img);
}

/* A write to an unallocated cluster: a new cluster after the last one in
 * use, counted, mapped with COPIED; head and tail read as before (zeros). */
static void test_write_allocates(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[4096];
    memset(buf, 0x5e, 1000);
    assert_true(bdrv_pwrite(img.child, 3 * 4096 + 500, 1000, buf, 0) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    uint64_t e = get64(img.file, (int64_t)(4 * Q2_C(&img) + 3 * 8));
    assert_int_equal(e, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED);
    assert_int_equal(refcount_of(&img, 5), 1);
    assert_true(bdrv_pread(img.child, 3 * 4096, 4096, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 500, 0));
    assert_true(test_buf_is(buf + 500, 1000, 0x5e));
    assert_true(test_buf_is(buf + 1500, 4096 - 1500, 0));
    q2_free(&img);
}

/*
 * Zero COW: a 4k write into a new cluster of a file that zeroes natively
 * zeroes the cluster and writes only the 4k (QEMU's handle_alloc_space),
 * and the rest of a reused cluster that held old data reads as zeros.
 * With a backing file the head must come from it: the full write stays.
 */
static void test_write_allocating_zeroes_cow(void **state)
{
    (void)state;
    for (int backed = 0; backed < 2; backed++) {
        Q2Image img = q2_make(16, MiB, false, 1);
        uint64_t c = Q2_C(&img);
        mem_fill(img.file, (int64_t)Q2_DATA(&img, 0), (int64_t)c, 0xaa);  /* old data */
        uint16_t zero = 0;
        mem_write_raw(img.file, (int64_t)(2 * c + 5 * 2), &zero, 2);      /* cluster 5 free */
        mem_config(img.file)->zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
        mem_apply_config(img.file);
        BlockDriverState *base = NULL;
        if (backed) {
            MemConfig bcfg = { .size = MiB, .node_name = "q2zcbase" };
            base = mem_node_new(&bcfg);
            mem_fill(base, 0, MiB, 0x11);
            q2_open(&img, BDRV_O_RDWR, "backing", "q2zcbase");
        } else {
            q2_open(&img, BDRV_O_RDWR, NULL, NULL);
        }
        assert_non_null(img.bs);
        uint8_t *buf = malloc(c);
        memset(buf, 0x5e, 4096);
        mem_log_clear(img.file);
        assert_true(bdrv_pwrite(img.child, 2 * 4096, 4096, buf, 0) >= 0);
        if (!backed) {
            assert_int_equal(mem_calls(img.file, MEM_OP_ZEROES), 1);
            assert_int_equal(mem_log(img.file, MEM_OP_ZEROES, 0)->offset, Q2_DATA(&img, 0));
            assert_int_equal(mem_log(img.file, MEM_OP_ZEROES, 0)->bytes, c);
            /* data: only the 4k went out as a data write at the cluster */
            bool found = false;
            for (int i = 0; i < mem_calls(img.file, MEM_OP_WRITE); i++) {
                const MemLogEntry *w = mem_log(img.file, MEM_OP_WRITE, i);
                if (w->offset >= (int64_t)Q2_DATA(&img, 0) &&
                    w->offset < (int64_t)(Q2_DATA(&img, 0) + c)) {
                    assert_int_equal(w->offset, Q2_DATA(&img, 0) + 2 * 4096);
                    assert_int_equal(w->bytes, 4096);
                    found = true;
                }
            }
            assert_true(found);
        } else {
            assert_int_equal(mem_calls(img.file, MEM_OP_ZEROES), 0);
        }
        assert_true(bdrv_pread(img.child, 0, (int64_t)c, buf, 0) >= 0);
        int before = backed ? 0x11 : 0;
        assert_true(test_buf_is(buf, 2 * 4096, before));
        assert_true(test_buf_is(buf + 2 * 4096, 4096, 0x5e));
        assert_true(test_buf_is(buf + 3 * 4096, (size_t)c - 3 * 4096, before));
        free(buf);
        q2_free(&img);
        if (base) {
            bdrv_unref(base);
        }
    }
}

/* The zeroing failing fails the write and frees the cluster again. */
static void test_write_allocating_zeroes_error(void **state)
{
    (void)state;
    Q2Image img = q2_make(16, MiB, false, 0);
    mem_config(img.file)->zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    mem_apply_config(img.file);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    mem_inject_error(img.file, MEM_OP_ZEROES, 0, 0, -EIO, 1);
    uint8_t buf[4096];
    memset(buf, 0x5e, sizeof(buf));
    assert_int_equal(bdrv_pwrite(img.child, 0, 4096, buf, 0), -EIO);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img))), 0);   /* nothing mapped */
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(refcount_of(&img, 5), 0);
    q2_free(&img);
}

typedef struct WriteCo {
    BdrvChild *child;
    int64_t offset, bytes;
    int byte, ret;
    int *pending;
} WriteCo;

static void coroutine_fn write_co(void *opaque)
{
    WriteCo *w = opaque;
    uint8_t buf[4096];
    IOVector q;
    memset(buf, w->byte, sizeof(buf));
    iov_init_buf(&q, buf, (size_t)w->bytes);
    w->ret = bdrv_co_pwritev(w->child, w->offset, w->bytes, &q, 0);
    (*w->pending)--;
}

/* Two writers of one unallocated cluster: the second waits for the first's
 * allocation and then writes in place; one cluster, both halves kept. */
static void test_concurrent_allocation_one_cluster(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    AioContext *ctx = test_loop_init();
    int pending = 2;
    WriteCo w[2] = {
        { img.child, 0, 2048, 0x11, 0, &pending },
        { img.child, 2048, 2048, 0x22, 0, &pending },
    };
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_READ));
    co_enter(co_create(write_co, &w[0]));
    co_enter(co_create(write_co, &w[1]));
    while (pending > 0) {
        aio_poll(ctx, true);
    }
    mem_set_yield(img.file, 0);
    assert_int_equal(w[0].ret, 0);
    assert_int_equal(w[1].ret, 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    uint8_t buf[4096];
    assert_true(bdrv_pread(img.child, 0, 4096, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 2048, 0x11));
    assert_true(test_buf_is(buf + 2048, 2048, 0x22));
    assert_int_equal(refcount_of(&img, 5), 1);
    assert_int_equal(refcount_of(&img, 6), 0);       /* nothing else allocated */
    q2_free(&img);
}

/* More allocating writes in flight, each in its own L2 slice, than the L2
 * cache has entries: a request holds its slice only under s->lock, so the
 * one that misses under the lock finds room.  (Held across the data write,
 * the holders waited for the lock that the missing request held while it
 * waited for room: -ENOSPC for every write past the cache's size.) */
static void q2_open_opts(Q2Image *img, int flags, const char *opts);

static void test_allocating_writes_beyond_l2_cache(void **state)
{
    (void)state;
    /* 4 KiB clusters: a slice is one L2 table, 512 entries = 2 MiB; the
     * cache at its minimum, 256 slices. */
    Q2Image img = q2_make(12, 1024 * MiB, false, 0);
    q2_open_opts(&img, BDRV_O_RDWR, "l2-cache-size=1M");
    if (!img.bs) {
        fail_msg("%s", error_get_pretty(img.err));
    }
    BDRVQcow2State *s = img.bs->opaque;
    unsigned n = meta_cache_nr_entries(s->l2_cache) + 16;
    assert_true((uint64_t)n * 2 * MiB <= 1024 * MiB);
    AioContext *ctx = test_loop_init();
    WriteCo *w = calloc(n, sizeof(*w));
    assert_non_null(w);
    int pending = (int)n;
    for (unsigned i = 0; i < n; i++) {
        w[i] = (WriteCo){ img.child, (int64_t)i * 2 * MiB, 512, 1 + (int)(i % 250), -1,
                          &pending };
    }
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_READ));
    for (unsigned i = 0; i < n; i++) {
        co_enter(co_create(write_co, &w[i]));
    }
    while (pending > 0) {
        aio_poll(ctx, true);
    }
    mem_set_yield(img.file, 0);
    for (unsigned i = 0; i < n; i++) {
        if (w[i].ret != 0) {
            fail_msg("write %u of %u at %" PRId64 ": %s", i, n, w[i].offset, strerror(-w[i].ret));
        }
    }
    uint8_t buf[512];
    for (unsigned i = 0; i < n; i++) {
        assert_true(bdrv_pread(img.child, w[i].offset, 512, buf, 0) >= 0);
        assert_true(test_buf_is(buf, 512, w[i].byte));
    }
    free(w);
    q2_free(&img);
}

typedef struct ReadCo {
    BdrvChild *child;
    uint8_t buf[4096];
    int ret;
    bool done;
} ReadCo;

static void coroutine_fn read_co(void *opaque)
{
    ReadCo *r = opaque;
    IOVector q;
    iov_init_buf(&q, r->buf, sizeof(r->buf));
    r->ret = bdrv_co_preadv(r->child, 0, sizeof(r->buf), &q, 0);
    r->done = true;
}

/* While the data of an allocating write is not written, a reader sees the
 * cluster as it was (the backing file), never the new cluster. */
static void test_reader_never_sees_unwritten_data(void **state)
{
    (void)state;
    MemConfig bcfg = { .size = MiB, .node_name = "q2wbase" };
    BlockDriverState *base = mem_node_new(&bcfg);
    mem_fill(base, 0, MiB, 0xba);
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, "backing", "q2wbase");
    assert_non_null(img.bs);
    AioContext *ctx = test_loop_init();
    int pending = 1;
    WriteCo w = { img.child, 0, 4096, 0x77, 0, &pending };
    mem_gate_close(img.file, 1u << MEM_OP_WRITE);
    co_enter(co_create(write_co, &w));
    WAIT_FOR((aio_poll(ctx, false), mem_gate_parked(img.file) > 0), "the data write");
    /* garbage where the new cluster will be: a reader must not see it */
    ReadCo r = { .child = img.child };
    co_enter(co_create(read_co, &r));
    while (!r.done) {
        aio_poll(ctx, true);
    }
    assert_int_equal(r.ret, 0);
    assert_true(test_buf_is(r.buf, sizeof(r.buf), 0xba));
    mem_gate_open(img.file);
    while (pending > 0) {
        aio_poll(ctx, true);
    }
    assert_int_equal(w.ret, 0);
    r.done = false;
    co_enter(co_create(read_co, &r));
    while (!r.done) {
        aio_poll(ctx, true);
    }
    assert_true(test_buf_is(r.buf, sizeof(r.buf), 0x77));
    q2_free(&img);
    bdrv_unref(base);
}

typedef struct DiscardCo {
    BdrvChild *child;
    int64_t offset, bytes;
    int ret;
} DiscardCo;

static void coroutine_fn discard_co(void *opaque)
{
    DiscardCo *d = opaque;
    d->ret = bdrv_co_pdiscard(d->child, d->offset, d->bytes);
}

static int bdrv_pdiscard_sync_for_test(BdrvChild *child, int64_t offset, int64_t bytes)
{
    DiscardCo d = { child, offset, bytes, -EINPROGRESS };
    test_run_co(discard_co, &d);
    return d.ret;
}

/* Zero writes set the zero flag (unmap frees the cluster); discard of a
 * cluster without backing leaves it reading as zeros and frees it. */
static void test_zero_and_discard(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 2);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 0), 2 * 4096, 0x44);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    q2_set_l2(&img, 1, Q2_DATA(&img, 1) | QCOW2_OFLAG_COPIED, 0);
    q2_open(&img, BDRV_O_RDWR | BDRV_O_UNMAP, NULL, NULL);      /* discard=unmap */
    assert_non_null(img.bs);
    assert_true(bdrv_pwrite_zeroes(img.child, 0, 4096, 0) >= 0);
    assert_true(bdrv_pwrite_zeroes(img.child, 4096, 4096, BDRV_REQ_MAY_UNMAP) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img))),
                     Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img) + 8)), QCOW2_OFLAG_ZERO);
    assert_int_equal(refcount_of(&img, 5), 1);
    assert_int_equal(refcount_of(&img, 6), 0);
    uint8_t buf[8192];
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    /* discard drops the cluster the zero write kept */
    assert_true(bdrv_pdiscard_sync_for_test(img.child, 0, 4096) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img))), QCOW2_OFLAG_ZERO);
    assert_int_equal(refcount_of(&img, 5), 0);
    q2_free(&img);
}

/* A compressed L2 entry (16 KiB clusters) for len bytes at host off. */
static uint64_t compressed_entry14(uint64_t off, uint64_t len)
{
    uint32_t shift = 62 - (14 - 8);
    uint64_t nb_sectors = (off + len - 1) / 512 - off / 512;
    return QCOW2_OFLAG_COMPRESSED | off | (nb_sectors << shift);
}

/* Extended L2: a zero write of whole subclusters sets their zero bits and
 * clears their allocation bits, as QEMU's zero_l2_subclusters: allocated
 * and unallocated clusters keep their entries (nothing allocated, nothing
 * freed), a request across two clusters zeroes the tail of one and the
 * head of the next; a compressed cluster cannot be zeroed in part and is
 * copied by the zeros written instead.  The driver asks for requests split
 * at subclusters.  Part of a subcluster: as QEMU, zeroed whole if the rest
 * reads as zeros and it holds no data, else zeros written. */
static void test_zero_subclusters(void **state)
{
    (void)state;
    Q2Image img = q2_make(14, MiB, true, 3);    /* 16 KiB clusters, 512 B subclusters */
    uint64_t c = Q2_C(&img), sc = c / 32;
    uint8_t *plain = malloc(c), *packed = malloc(2 * c), *buf = malloc(4 * c);
    memset(plain, 0x66, c);
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
    mem_write_raw(img.file, (int64_t)Q2_DATA(&img, 2) + 100, packed, (int64_t)len);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 0), (int64_t)c, 0x44);
    mem_fill(img.file, (int64_t)Q2_DATA(&img, 1), (int64_t)c, 0x55);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, QCOW2_L2_BITMAP_ALL_ALLOC);
    q2_set_l2(&img, 1, Q2_DATA(&img, 1) | QCOW2_OFLAG_COPIED, QCOW2_L2_BITMAP_ALL_ALLOC);
    q2_set_l2(&img, 3, compressed_entry14(Q2_DATA(&img, 2) + 100, len), 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    assert_int_equal(img.bs->bl.pwrite_zeroes_alignment, sc);

    assert_true(bdrv_pwrite_zeroes(img.child, (int64_t)(2 * sc), (int64_t)(3 * sc), 0) >= 0);
    assert_true(bdrv_pwrite_zeroes(img.child, (int64_t)(c - 2 * sc), (int64_t)(4 * sc), 0) >= 0);
    assert_true(bdrv_pwrite_zeroes(img.child, (int64_t)(2 * c + 5 * sc), (int64_t)sc,
                                   BDRV_REQ_MAY_UNMAP) >= 0);
    assert_true(bdrv_pwrite_zeroes(img.child, (int64_t)(3 * c + 4 * sc), (int64_t)(2 * sc),
                                   0) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);

    int64_t l2 = (int64_t)(4 * c);
    uint64_t z0 = 0x1cULL | 0xc0000000ULL;          /* subclusters 2-4, 30-31 */
    assert_int_equal(get64(img.file, l2), Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED);
    assert_int_equal(get64(img.file, l2 + 8), (QCOW2_L2_BITMAP_ALL_ALLOC & ~z0) | z0 << 32);
    assert_int_equal(get64(img.file, l2 + 16), Q2_DATA(&img, 1) | QCOW2_OFLAG_COPIED);
    assert_int_equal(get64(img.file, l2 + 24), (QCOW2_L2_BITMAP_ALL_ALLOC & ~3ULL) | 3ULL << 32);
    assert_int_equal(get64(img.file, l2 + 32), 0);                  /* still no cluster */
    assert_int_equal(get64(img.file, l2 + 40), 1ULL << (32 + 5));
    uint64_t e3 = get64(img.file, l2 + 48);
    assert_false(e3 & QCOW2_OFLAG_COMPRESSED);
    assert_true(e3 & QCOW2_OFLAG_COPIED);
    assert_int_equal(get64(img.file, l2 + 56), QCOW2_L2_BITMAP_ALL_ALLOC);
    assert_int_equal(refcount_of(&img, 5), 1);
    assert_int_equal(refcount_of(&img, 6), 1);

    assert_true(bdrv_pread(img.child, 0, (int64_t)(4 * c), buf, 0) >= 0);
    assert_true(test_buf_is(buf, 2 * sc, 0x44));
    assert_true(test_buf_is(buf + 2 * sc, 3 * sc, 0));
    assert_true(test_buf_is(buf + 5 * sc, c - 7 * sc, 0x44));
    assert_true(test_buf_is(buf + c - 2 * sc, 4 * sc, 0));
    assert_true(test_buf_is(buf + c + 2 * sc, c - 2 * sc, 0x55));
    assert_true(test_buf_is(buf + 2 * c, c, 0));
    assert_true(test_buf_is(buf + 3 * c, 4 * sc, 0x66));
    assert_true(test_buf_is(buf + 3 * c + 4 * sc, 2 * sc, 0));
    assert_true(test_buf_is(buf + 3 * c + 6 * sc, c - 6 * sc, 0x66));

    /* part of a subcluster whose rest reads as zeros (nothing under it):
     * the subcluster becomes zero, nothing allocated (QEMU's is_zero path) */
    assert_true(bdrv_pwrite_zeroes(img.child, (int64_t)(2 * c + 100), 200, 0) >= 0);
    /* part of one with data: zeros are written, the subcluster stays data */
    assert_true(bdrv_pwrite_zeroes(img.child, (int64_t)(c + 5 * sc + 100), 200, 0) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(get64(img.file, l2 + 32), 0);
    assert_int_equal(get64(img.file, l2 + 40), (1ULL << (32 + 5)) | (1ULL << 32));
    assert_int_equal(get64(img.file, l2 + 24), (QCOW2_L2_BITMAP_ALL_ALLOC & ~3ULL) | 3ULL << 32);
    assert_true(bdrv_pread(img.child, (int64_t)c, (int64_t)c, buf, 0) >= 0);
    assert_true(test_buf_is(buf + 5 * sc, 100, 0x55));
    assert_true(test_buf_is(buf + 5 * sc + 100, 200, 0));
    assert_true(test_buf_is(buf + 5 * sc + 300, c - 5 * sc - 300, 0x55));
    free(plain);
    free(packed);
    free(buf);
    q2_free(&img);
}

/* lazy_refcounts: the dirty bit is set before the first change and gone
 * after a clean close. */
static void test_lazy_refcounts_dirty_bit(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_put64(img.file, QH_COMPAT, QCOW2_COMPAT_LAZY_REFCOUNTS);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[512] = { 1 };
    assert_true(bdrv_pwrite(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_true(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_DIRTY);
    q2_close(&img);
    assert_false(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_DIRTY);
    assert_int_equal(refcount_of(&img, 5), 1);
    q2_free(&img);
}

/* A data cluster that lies on the refcount table: the write fails, the
 * image is marked corrupt, and read-write opens are refused after. */
static void test_overlap_marks_corrupt(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_set_l2(&img, 0, Q2_C(&img) | QCOW2_OFLAG_COPIED, 0);   /* = the refcount table */
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[512] = { 0 };
    assert_int_equal(bdrv_pwrite(img.child, 0, sizeof(buf), buf, 0), -EIO);
    assert_true(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_CORRUPT);
    assert_int_equal(get64(img.file, (int64_t)Q2_C(&img)), 2 * Q2_C(&img));  /* intact */
    q2_close(&img);
    q2_expect_open_error(&img, BDRV_O_RDWR, "Image is corrupt");
}


/* metadata-write-through: a completed allocating write has its metadata
 * in the file, with no flush asked for: the daemon may be killed right
 * after (recover reopens the image from the file).  In power-safe order: data and refcount, a flush,
 * then the L2 entry.  Zero writes likewise. */
static void test_metadata_in_file_on_completion(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, "metadata-write-through", "on");
    assert_non_null(img.bs);
    uint8_t buf[4096];
    memset(buf, 0x42, sizeof(buf));
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, 7 * 4096 + 512, 512, buf, 0) >= 0);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img) + 7 * 8)),
                     Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED);
    assert_int_equal(refcount_of(&img, 5), 1);
    const MemLogEntry *data = NULL, *rc = NULL, *l2 = NULL, *flush = NULL;
    for (int i = 0; mem_log(img.file, MEM_OP_WRITE, i); i++) {
        const MemLogEntry *e = mem_log(img.file, MEM_OP_WRITE, i);
        if (e->offset == (int64_t)Q2_DATA(&img, 0)) {
            data = e;
        } else if (e->offset == 2 * (int64_t)Q2_C(&img)) {
            rc = e;
        } else if (e->offset == 4 * (int64_t)Q2_C(&img)) {
            l2 = e;
        }
    }
    for (int i = 0; mem_log(img.file, MEM_OP_FLUSH, i); i++) {
        const MemLogEntry *f = mem_log(img.file, MEM_OP_FLUSH, i);
        if (rc && f > rc && (!flush || f < flush)) {
            flush = f;
        }
    }
    assert_non_null(data);
    assert_non_null(rc);
    assert_non_null(flush);
    assert_non_null(l2);
    assert_true(data < flush);
    assert_true(flush < l2);
    /* a zero write of a whole cluster: the zero flag is in the file */
    assert_true(bdrv_pwrite_zeroes(img.child, 7 * 4096, 4096, 0) >= 0);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img) + 7 * 8)),
                     Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO);
    q2_free(&img);

    /* without it (QEMU's behaviour) the entry waits for a flush */
    img = q2_make(12, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_true(bdrv_pwrite(img.child, 7 * 4096 + 512, 512, buf, 0) >= 0);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img) + 7 * 8)), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(get64(img.file, (int64_t)(4 * Q2_C(&img) + 7 * 8)),
                     Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED);
    q2_free(&img);
}

/* metadata-write-through with eight allocating writes in flight: each
 * completes with its L2 entry and refcount in the file, and the rounds
 * share flushes (fewer than one per write). */
static void test_write_through_rounds_share_flushes(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, "metadata-write-through", "on");
    assert_non_null(img.bs);
    AioContext *ctx = test_loop_init();
    int pending = 8;
    WriteCo w[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (WriteCo){ img.child, (int64_t)(i * 2 + 1) * 4096, 4096, 0x30 + i, -1, &pending };
    }
    mem_log_clear(img.file);
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_FLUSH));
    for (int i = 0; i < 8; i++) {
        co_enter(co_create(write_co, &w[i]));
    }
    while (pending > 0) {
        aio_poll(ctx, true);
    }
    mem_set_yield(img.file, 0);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(w[i].ret, 0);
        uint64_t e = get64(img.file, (int64_t)(4 * Q2_C(&img) + (uint64_t)(i * 2 + 1) * 8));
        assert_true(e & QCOW2_OFLAG_COPIED);
        assert_int_equal(refcount_of(&img, (e & QCOW2_L2E_OFFSET_MASK) >> 12), 1);
    }
    assert_true(mem_calls(img.file, MEM_OP_FLUSH) < 8);
    uint8_t buf[4096];
    for (int i = 0; i < 8; i++) {
        assert_true(bdrv_pread(img.child, (int64_t)(i * 2 + 1) * 4096, 4096, buf, 0) >= 0);
        assert_true(test_buf_is(buf, sizeof(buf), 0x30 + i));
    }
    q2_free(&img);
}

/* Open with the options in `opts` ("k=v,k=v") on top of q2_open's. */
static void q2_open_opts(Q2Image *img, int flags, const char *opts)
{
    OptDict *o = optdict_parse(opts, NULL, NULL);
    assert_non_null(o);
    optdict_set(o, "driver", "qcow2");
    optdict_set(o, "file", img->file->node_name);
    img->bs = bdrv_open(NULL, o, flags, &img->err);
    if (img->bs) {
        img->child = test_child_new(img->bs);
    }
}

/* overlap-check=none turns the check off: the same write as above goes
 * through (onto the refcount table, as asked) and nothing is marked. */
static void test_overlap_check_none(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_set_l2(&img, 0, Q2_C(&img) | QCOW2_OFLAG_COPIED, 0);
    q2_open_opts(&img, BDRV_O_RDWR, "overlap-check=none");
    assert_non_null(img.bs);
    uint8_t buf[512] = { 0 };
    assert_true(bdrv_pwrite(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_false(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_CORRUPT);
    assert_int_equal(get64(img.file, (int64_t)Q2_C(&img)), 0);   /* overwritten */
    q2_free(&img);
}

/* The templates and the per-check flags: an allocation whose L2 table
 * points into the L1 table is caught by "constant" (active-l1), not when
 * overlap-check.active-l1=off takes that one check away. */
static void test_overlap_check_flags(void **state)
{
    (void)state;
    static const struct { const char *opts; bool caught; } cases[] = {
        { "overlap-check=constant", true },
        { "overlap-check.template=cached", true },
        { "overlap-check=all,overlap-check.active-l1=off", false },
        { "overlap-check=none,overlap-check.active-l1=on", true },
    };
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        Q2Image img = q2_make(12, MiB, false, 0);
        q2_put64(img.file, 3 * (int64_t)Q2_C(&img), (3 * Q2_C(&img)) | QCOW2_OFLAG_COPIED);
        q2_open_opts(&img, BDRV_O_RDWR, cases[c].opts);
        assert_non_null(img.bs);
        uint8_t buf[512] = { 0x77 };
        int ret = bdrv_pwrite(img.child, 0, sizeof(buf), buf, 0);
        if (cases[c].caught != (ret == -EIO)) {
            fail_msg("%s: write returned %d", cases[c].opts, ret);
        }
        assert_int_equal(!!(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_CORRUPT),
                         cases[c].caught);
        q2_free(&img);
    }
    Q2Image img = q2_make(12, MiB, false, 0);
    q2_open_opts(&img, BDRV_O_RDWR, "overlap-check=sometimes");
    assert_null(img.bs);
    assert_non_null(strstr(error_get_pretty(img.err), "Unsupported value 'sometimes'"));
    q2_close(&img);
    q2_open_opts(&img, BDRV_O_RDWR, "overlap-check=none,overlap-check.template=all");
    assert_null(img.bs);
    assert_non_null(strstr(error_get_pretty(img.err), "Conflicting values"));
    q2_free(&img);
}

/* l2-cache-size, refcount-cache-size and cache-size as QEMU reads them:
 * the L2 cache never exceeds what covers the image (a huge value is not
 * allocated), cache-size fills the L2 cache first. */
static void test_cache_sizes(void **state)
{
    (void)state;
    /* 4 KiB clusters, 1 GiB: 2 MiB of L2 tables = 512 slices */
    static const struct { const char *opts; unsigned l2, rc; } cases[] = {
        { "", 512, 256 },
        { "l2-cache-size=1536k", 384, 256 },
        { "l2-cache-size=1T", 512, 256 },
        { "refcount-cache-size=2M", 512, 512 },
        { "cache-size=3M", 512, 256 },
        { "cache-size=4M,l2-cache-size=1M", 256, 768 },
    };
    for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
        Q2Image img = q2_make(12, 1024 * MiB, false, 0);
        q2_open_opts(&img, 0, cases[c].opts);
        if (!img.bs) {
            fail_msg("%s: %s", cases[c].opts, error_get_pretty(img.err));
        }
        BDRVQcow2State *s = img.bs->opaque;
        if (meta_cache_nr_entries(s->l2_cache) != cases[c].l2 ||
            meta_cache_nr_entries(s->refcount_cache) != cases[c].rc) {
            fail_msg("%s: %u L2 and %u refcount entries, want %u and %u", cases[c].opts,
                     meta_cache_nr_entries(s->l2_cache), meta_cache_nr_entries(s->refcount_cache),
                     cases[c].l2, cases[c].rc);
        }
        q2_free(&img);
    }
    Q2Image img = q2_make(12, 1024 * MiB, false, 0);
    q2_open_opts(&img, 0, "cache-size=1M,l2-cache-size=1M,refcount-cache-size=1M");
    assert_null(img.bs);
    assert_non_null(strstr(error_get_pretty(img.err), "may not be set at the same time"));
    q2_close(&img);
    q2_open_opts(&img, 0, "cache-clean-interval=-1");
    assert_null(img.bs);
    assert_non_null(strstr(error_get_pretty(img.err), "cache-clean-interval"));
    q2_free(&img);
}

/* pass-discard-request follows discard= by default; off, a discarded
 * cluster is freed in the image but the file keeps its bytes. */
static void test_pass_discard_request(void **state)
{
    (void)state;
    for (int pass = 0; pass < 2; pass++) {
        Q2Image img = q2_make(12, MiB, false, 1);
        q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
        img.file->open_flags |= BDRV_O_UNMAP;   /* the file takes discards when asked */
        q2_open_opts(&img, BDRV_O_RDWR | BDRV_O_UNMAP,
                     pass ? "discard=unmap" : "pass-discard-request=off");
        assert_non_null(img.bs);
        mem_log_clear(img.file);
        assert_true(bdrv_pdiscard_sync_for_test(img.child, 0, 4096) >= 0);
        assert_int_equal(bdrv_flush(img.bs), 0);
        assert_int_equal(refcount_of(&img, 5), 0);
        assert_int_equal(mem_calls(img.file, MEM_OP_DISCARD), pass);
        q2_free(&img);
    }
}

typedef struct ZeroCo {
    BdrvChild *child;
    int64_t offset, bytes;
    bool discard;
    int ret;
    bool done;
} ZeroCo;

static void coroutine_fn unmap_co(void *opaque)
{
    ZeroCo *z = opaque;
    z->ret = z->discard ? bdrv_co_pdiscard(z->child, z->offset, z->bytes)
                        : bdrv_co_pwrite_zeroes(z->child, z->offset, z->bytes, BDRV_REQ_MAY_UNMAP);
    z->done = true;
}

/* An in-place write is parked before its data reaches the cluster when a
 * discard (or an unmapping zero write) of the same cluster comes: the
 * discard waits for it, so the cluster is freed only after the write landed,
 * and an allocation after that, which may reuse the cluster, keeps its own
 * data.  Without the wait the late write would land in the reused cluster. */
static void unmap_waits_for_in_place_write(bool discard)
{
    Q2Image img = q2_make(12, MiB, false, 1);
    q2_set_l2(&img, 0, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED, 0);
    q2_open(&img, BDRV_O_RDWR, "discard", "unmap");
    assert_non_null(img.bs);
    AioContext *ctx = test_loop_init();
    int pending = 1;
    WriteCo w = { img.child, 0, 4096, 0x41, 0, &pending };
    mem_gate_close_before(img.file, (int64_t)Q2_DATA(&img, 0), 4096);
    co_enter(co_create(write_co, &w));
    WAIT_FOR((aio_poll(ctx, false), mem_gate_parked(img.file) > 0), "the in-place write");
    ZeroCo z = { img.child, 0, 4096, discard, -EINPROGRESS, false };
    co_enter(co_create(unmap_co, &z));
    for (int i = 0; i < 50; i++) {
        aio_poll(ctx, false);
    }
    assert_false(z.done);                       /* waits for the write in flight */
    mem_gate_open(img.file);
    while (pending > 0 || !z.done) {
        aio_poll(ctx, true);
    }
    assert_int_equal(w.ret, 0);
    assert_int_equal(z.ret, 0);
    /* A new allocation (guest cluster 1) may now take the freed cluster. */
    uint8_t buf[4096];
    memset(buf, 0x42, sizeof(buf));
    assert_true(bdrv_pwrite(img.child, 4096, sizeof(buf), buf, 0) >= 0);
    assert_true(bdrv_pread(img.child, 4096, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0x42));
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    q2_free(&img);
}

static void test_discard_waits_for_in_place_write(void **state)
{
    (void)state;
    unmap_waits_for_in_place_write(true);
}

static void test_unmap_zero_waits_for_in_place_write(void **state)
{
    (void)state;
    unmap_waits_for_in_place_write(false);
}

/* An L1 entry that points at the refcount block: the cluster is "its own"
 * table to the write path, yet two tables at once - refused before any L2
 * entry lands in the refcount block, and the image is marked corrupt. */
static void test_l2_on_refcount_block(void **state)
{
    (void)state;
    Q2Image img = q2_make(12, MiB, false, 0);
    uint64_t before[512];
    mem_read_raw(img.file, (int64_t)(2 * Q2_C(&img)), before, sizeof(before));
    q2_put64(img.file, (int64_t)(3 * Q2_C(&img)), 2 * Q2_C(&img) | QCOW2_OFLAG_COPIED);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[512];
    memset(buf, 0x6b, sizeof(buf));
    assert_int_equal(bdrv_pwrite(img.child, 0, sizeof(buf), buf, 0), -EIO);
    assert_true(get64(img.file, QH_INCOMPAT) & QCOW2_INCOMPAT_CORRUPT);
    uint64_t after[512];
    mem_read_raw(img.file, (int64_t)(2 * Q2_C(&img)), after, sizeof(after));
    assert_memory_equal(before, after, sizeof(before));
    q2_free(&img);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_in_place),
        cmocka_unit_test(test_write_allocates),
        cmocka_unit_test(test_write_allocating_zeroes_cow),
        cmocka_unit_test(test_write_allocating_zeroes_error),
        cmocka_unit_test(test_concurrent_allocation_one_cluster),
        cmocka_unit_test(test_allocating_writes_beyond_l2_cache),
        cmocka_unit_test(test_reader_never_sees_unwritten_data),
        cmocka_unit_test(test_zero_and_discard),
        cmocka_unit_test(test_zero_subclusters),
        cmocka_unit_test(test_lazy_refcounts_dirty_bit),
        cmocka_unit_test(test_overlap_marks_corrupt),
        cmocka_unit_test(test_l2_on_refcount_block),
        cmocka_unit_test(test_metadata_in_file_on_completion),
        cmocka_unit_test(test_write_through_rounds_share_flushes),
        cmocka_unit_test(test_overlap_check_none),
        cmocka_unit_test(test_overlap_check_flags),
        cmocka_unit_test(test_cache_sizes),
        cmocka_unit_test(test_pass_discard_request),
        cmocka_unit_test(test_discard_waits_for_in_place_write),
        cmocka_unit_test(test_unmap_zero_waits_for_in_place_write),
    };
    return cmocka_run_group_tests_name("qcow2-write", tests, NULL, NULL);
}
