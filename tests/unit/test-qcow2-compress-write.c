/*
 * test-qcow2-compress-write.c - compressed writes to qcow2 images built in
 * mem nodes (qcow2-image.h): the round trip through the L2 entry and
 * decompression (zlib and zstd), the ordinary write when the data does not
 * shrink, several compressed clusters packed into one host cluster and
 * across into the next with a reference per cluster touched, overwrites
 * that give their references back, the order on disk (data before the
 * entry is visible, refcounts before the L2 table), concurrent writers,
 * and the requests that are refused.
 *
 * After each scenario every refcount in the image is compared with the
 * references its L2 entries hold (refcounts_match), so a leak or a lost
 * reference anywhere fails the test.
 */
#include <errno.h>
#include <pthread.h>
#include "qcow2-image.h"

#define CB 12                         /* 4 KiB clusters */
#define C  (1u << CB)

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

static uint64_t l2e(Q2Image *img, uint32_t i)
{
    return get64(img->file, (int64_t)(4 * Q2_C(img) + i * (img->extl2 ? 16 : 8)));
}

/* A compressed entry's first byte and the host clusters its sectors touch. */
static uint64_t coffset(Q2Image *img, uint64_t e)
{
    uint32_t shift = 62 - (img->cb - 8);
    return e & ((1ULL << shift) - 1);
}
static void csector_clusters(Q2Image *img, uint64_t e, uint64_t *first, uint64_t *last)
{
    uint32_t shift = 62 - (img->cb - 8);
    uint64_t nb = ((e >> shift) & ((1ULL << (img->cb - 8)) - 1)) + 1;
    uint64_t start = coffset(img, e) & ~511ULL;
    *first = start >> img->cb;
    *last = (start + nb * 512 - 1) >> img->cb;
}

/* Every cluster's refcount is what the metadata (clusters 0-4) and the
 * L2 entries of the first nb_entries guest clusters hold, nothing more. */
static void refcounts_match(Q2Image *img, uint32_t nb_entries)
{
    uint64_t nb_clusters = DIV_ROUND_UP((uint64_t)mem_size(img->file), Q2_C(img));
    uint16_t *want = calloc(nb_clusters + 2, sizeof(*want));
    assert_non_null(want);
    for (int i = 0; i < 5; i++) {
        want[i] = 1;
    }
    for (uint32_t i = 0; i < nb_entries; i++) {
        uint64_t e = l2e(img, i), first, last;
        if (e & QCOW2_OFLAG_COMPRESSED) {
            csector_clusters(img, e, &first, &last);
            assert_true(last < nb_clusters + 2);
            for (uint64_t c = first; c <= last; c++) {
                want[c]++;
            }
        } else if (e & QCOW2_L2E_OFFSET_MASK) {
            want[(e & QCOW2_L2E_OFFSET_MASK) >> img->cb]++;
        }
    }
    for (uint64_t c = 0; c < nb_clusters + 2; c++) {
        if (refcount_of(img, c) != want[c]) {
            fail_msg("cluster %llu: refcount %u, the L2 entries hold %u",
                     (unsigned long long)c, refcount_of(img, c), want[c]);
        }
    }
    free(want);
}

/* Text that deflates to a few dozen bytes. */
static void compressible(uint8_t *buf, size_t len, int tag)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)("cluster of text "[i % 16] + tag);
    }
}

static int write_c(Q2Image *img, int64_t off, int64_t len, const uint8_t *buf)
{
    return bdrv_pwrite(img->child, off, len, buf, BDRV_REQ_WRITE_COMPRESSED);
}

static void read_back(Q2Image *img, int64_t off, int64_t len, const uint8_t *want)
{
    uint8_t *got = malloc((size_t)len);
    assert_non_null(got);
    assert_true(bdrv_pread(img->child, off, len, got, 0) >= 0);
    assert_memory_equal(got, want, (size_t)len);
    free(got);
}

static void set_zstd(Q2Image *img)
{
    q2_put64(img->file, QH_INCOMPAT, get64(img->file, QH_INCOMPAT) | QCOW2_INCOMPAT_COMPRESSION);
    uint8_t one = QCOW2_COMPRESSION_ZSTD;
    mem_write_raw(img->file, QH_COMPRESSION_TYPE, &one, 1);
}

/* Written, published as a compressed entry (no COPIED), counted, and read
 * back through decompression, also after a reopen. */
static void round_trip(bool zstd)
{
    Q2Image img = q2_make(CB, MiB, false, 0);
    if (zstd) {
        set_zstd(&img);
    }
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[2 * C];
    compressible(buf, sizeof(buf), 1);
    assert_int_equal(write_c(&img, 3 * C, 2 * C, buf), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    for (uint32_t i = 3; i < 5; i++) {
        uint64_t e = l2e(&img, i);
        assert_true(e & QCOW2_OFLAG_COMPRESSED);
        assert_false(e & QCOW2_OFLAG_COPIED);
        assert_true(coffset(&img, e) >= Q2_DATA(&img, 0));
    }
    uint8_t magic[4];
    mem_read_raw(img.file, (int64_t)coffset(&img, l2e(&img, 3)), magic, 4);
    /* a zstd frame starts with its magic number; raw deflate has none */
    assert_int_equal(!memcmp(magic, "\x28\xb5\x2f\xfd", 4), zstd);
    refcounts_match(&img, 16);
    read_back(&img, 3 * C, 2 * C, buf);
    q2_close(&img);
    q2_open(&img, 0, NULL, NULL);
    assert_non_null(img.bs);
    read_back(&img, 3 * C, 2 * C, buf);
    q2_free(&img);
}

static void test_round_trip_zlib(void **state)
{
    (void)state;
    round_trip(false);
}

static void test_round_trip_zstd(void **state)
{
    (void)state;
#ifdef CONFIG_ZSTD
    round_trip(true);
#else
    skip();
#endif
}

/* Data that does not shrink below a cluster is written as an ordinary
 * cluster: COPIED, a whole host cluster, its bytes as they are. */
static void test_incompressible_falls_back(void **state)
{
    (void)state;
    Q2Image img = q2_make(CB, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[C], raw[C];
    test_pattern(buf, sizeof(buf), 42);
    assert_int_equal(write_c(&img, 7 * C, C, buf), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    uint64_t e = l2e(&img, 7);
    assert_false(e & QCOW2_OFLAG_COMPRESSED);
    assert_int_equal(e, Q2_DATA(&img, 0) | QCOW2_OFLAG_COPIED);
    mem_read_raw(img.file, (int64_t)Q2_DATA(&img, 0), raw, C);
    assert_memory_equal(raw, buf, C);
    refcounts_match(&img, 16);
    read_back(&img, 7 * C, C, buf);
    q2_free(&img);
}

/* Small compressed clusters share a host cluster (one reference each);
 * one that does not fit in what is left crosses into the next cluster,
 * which is then counted too. */
static void test_packing(void **state)
{
    (void)state;
    Q2Image img = q2_make(CB, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[C];
    for (int i = 0; i < 3; i++) {
        compressible(buf, C, i);
        assert_int_equal(write_c(&img, i * (int64_t)C, C, buf), 0);
    }
    assert_int_equal(bdrv_flush(img.bs), 0);
    uint64_t host = Q2_DATA(&img, 0);
    uint64_t end = 0;
    for (uint32_t i = 0; i < 3; i++) {
        uint64_t e = l2e(&img, i), first, last;
        csector_clusters(&img, e, &first, &last);
        assert_int_equal(first, host >> CB);
        assert_int_equal(last, host >> CB);
        /* one after another, byte-granular */
        assert_true(coffset(&img, e) >= end);
        end = coffset(&img, e) + 1;
    }
    assert_int_equal(refcount_of(&img, host >> CB), 3);

    /* About 60% of a cluster each: the second crosses into the next cluster. */
    for (int i = 3; i < 5; i++) {
        test_pattern(buf, C * 6 / 10, 100 + (uint64_t)i);
        memset(buf + C * 6 / 10, 0, C - C * 6 / 10);
        assert_int_equal(write_c(&img, i * (int64_t)C, C, buf), 0);
    }
    assert_int_equal(bdrv_flush(img.bs), 0);
    uint64_t f3, l3, f4, l4;
    csector_clusters(&img, l2e(&img, 3), &f3, &l3);
    csector_clusters(&img, l2e(&img, 4), &f4, &l4);
    assert_int_equal(f3, host >> CB);          /* fills up the first cluster */
    assert_int_equal(l4, f4 + 1);              /* and the next one goes over */
    assert_true(refcount_of(&img, l4) >= 1);
    refcounts_match(&img, 16);
    for (int i = 0; i < 3; i++) {
        compressible(buf, C, i);
        read_back(&img, i * (int64_t)C, C, buf);
    }
    for (int i = 3; i < 5; i++) {
        test_pattern(buf, C * 6 / 10, 100 + (uint64_t)i);
        memset(buf + C * 6 / 10, 0, C - C * 6 / 10);
        read_back(&img, i * (int64_t)C, C, buf);
    }
    q2_free(&img);
}

/* An ordinary write over a compressed cluster takes a new cluster and gives
 * the compressed sectors' reference back; a compressed write over one does
 * the same.  A cluster shared by two compressed clusters is freed only
 * when both are gone, and stays readable until then. */
static void test_overwrite_frees(void **state)
{
    (void)state;
    Q2Image img = q2_make(CB, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t a[C], b[C], c[C];
    compressible(a, C, 1);
    compressible(b, C, 2);
    assert_int_equal(write_c(&img, 0, C, a), 0);
    assert_int_equal(write_c(&img, C, C, b), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    uint64_t shared = coffset(&img, l2e(&img, 0)) >> CB;
    assert_int_equal(coffset(&img, l2e(&img, 1)) >> CB, shared);
    assert_int_equal(refcount_of(&img, shared), 2);

    /* ordinary write over guest cluster 0 */
    memset(c, 0x5a, C);
    assert_true(bdrv_pwrite(img.child, 0, C, c, 0) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_true(l2e(&img, 0) & QCOW2_OFLAG_COPIED);
    assert_int_equal(refcount_of(&img, shared), 1);
    read_back(&img, C, C, b);
    refcounts_match(&img, 16);

    /* compressed over compressed: the new bytes go after the old ones (in
     * `shared`, which has room), the old ones' reference goes */
    uint64_t old1 = coffset(&img, l2e(&img, 1));
    compressible(c, C, 3);
    assert_int_equal(write_c(&img, C, C, c), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_true(l2e(&img, 1) & QCOW2_OFLAG_COMPRESSED);
    assert_true(coffset(&img, l2e(&img, 1)) > old1);
    assert_int_equal(coffset(&img, l2e(&img, 1)) >> CB, shared);
    assert_int_equal(refcount_of(&img, shared), 1);
    read_back(&img, C, C, c);
    refcounts_match(&img, 16);

    /* compressed over the ordinary cluster: that cluster is freed */
    uint64_t plain = (l2e(&img, 0) & QCOW2_L2E_OFFSET_MASK) >> CB;
    assert_int_equal(write_c(&img, 0, C, a), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(refcount_of(&img, plain), 0);
    /* guest cluster 1 rewritten plainly: the last reference to `shared` */
    assert_true(bdrv_pwrite(img.child, C, C, b, 0) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(coffset(&img, l2e(&img, 0)) >> CB, shared);    /* packed in again */
    assert_int_equal(refcount_of(&img, shared), 1);
    read_back(&img, C, C, b);
    read_back(&img, 0, C, a);
    refcounts_match(&img, 16);

    /* a zero write with unmap and a discard give compressed sectors back */
    assert_true(bdrv_pwrite_zeroes(img.child, 0, C, BDRV_REQ_MAY_UNMAP) >= 0);
    assert_true(bdrv_pwrite_zeroes(img.child, C, C, BDRV_REQ_MAY_UNMAP) >= 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_int_equal(refcount_of(&img, shared), 0);
    refcounts_match(&img, 16);
    /* a freed cluster is not packed into any more (it may be anything's now) */
    assert_int_equal(img.bs ? ((BDRVQcow2State *)img.bs->opaque)->free_byte_offset : 1, 0);
    q2_free(&img);
}

/* The last cluster of an image whose size is not a cluster multiple: the
 * part of it inside the image is written, the rest is zeros. */
static void test_partial_last_cluster(void **state)
{
    (void)state;
    Q2Image img = q2_make(CB, 8 * C + 1536, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[1536];
    compressible(buf, sizeof(buf), 7);
    assert_int_equal(write_c(&img, 8 * C, sizeof(buf), buf), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_true(l2e(&img, 8) & QCOW2_OFLAG_COMPRESSED);
    read_back(&img, 8 * C, sizeof(buf), buf);
    /* elsewhere, only whole clusters */
    assert_int_equal(write_c(&img, C, 1536, buf), -EINVAL);
    assert_int_equal(write_c(&img, 512, C, buf), -EINVAL);
    refcounts_match(&img, 9);
    q2_free(&img);
}

/* Formats that cannot store compressed clusters, and qcow2 with an external
 * data file (clusters at their guest offsets), refuse the request. */
static void test_refused(void **state)
{
    (void)state;
    MemConfig cfg = { .size = MiB, .node_name = "q2craw" };
    BlockDriverState *mem = mem_node_new(&cfg);
    BdrvChild *ch = test_child_new(mem);
    uint8_t buf[C] = { 0 };
    assert_false(bdrv_supports_compressed_writes(mem));
    assert_int_equal(bdrv_pwrite(ch, 0, C, buf, BDRV_REQ_WRITE_COMPRESSED), -ENOTSUP);
    /* a zero write ignores the flag */
    assert_true(bdrv_pwrite_zeroes(ch, 0, C, BDRV_REQ_WRITE_COMPRESSED) >= 0);
    test_child_free(ch);

    MemConfig dcfg = { .size = MiB, .node_name = "q2cdata", .growable = true };
    BlockDriverState *data = mem_node_new(&dcfg);
    Q2Image img = q2_make(CB, MiB, false, 0);
    q2_put64(img.file, QH_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
    q2_open(&img, BDRV_O_RDWR, "data-file", "q2cdata");
    assert_non_null(img.bs);
    assert_true(bdrv_supports_compressed_writes(img.bs));
    assert_int_equal(write_c(&img, 0, C, buf), -ENOTSUP);
    q2_free(&img);
    bdrv_unref(data);
    bdrv_unref(mem);
}

typedef struct CWriteCo {
    Q2Image *img;
    int64_t offset;
    int tag, ret;
    bool plain;                  /* an ordinary write instead */
    int *pending;
} CWriteCo;

static void coroutine_fn cwrite_co(void *opaque)
{
    CWriteCo *w = opaque;
    uint8_t buf[C];
    IOVector q;
    compressible(buf, C, w->tag);
    iov_init_buf(&q, buf, C);
    w->ret = bdrv_co_pwritev(w->img->child, w->offset, C, &q,
                             w->plain ? 0 : BDRV_REQ_WRITE_COMPRESSED);
    (*w->pending)--;
}

/* Many writers at once, each I/O yielding: compressed writes of different
 * clusters pack without overlapping, compressed and ordinary writes of the
 * same cluster are ordered, and nothing leaks. */
static void test_concurrent_writers(void **state)
{
    (void)state;
    enum { N = 24 };
    Q2Image img = q2_make(CB, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    AioContext *ctx = test_loop_init();
    CWriteCo w[N];
    int pending = N;
    for (int i = 0; i < N; i++) {
        /* the last 8 rewrite clusters 0..7, half ordinary, half compressed */
        int64_t cl = i < 16 ? i : i - 16;
        w[i] = (CWriteCo){ &img, cl * (int64_t)C, i, 0, i >= 16 && i % 2, &pending };
    }
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_READ) | (1u << MEM_OP_FLUSH));
    for (int i = 0; i < N; i++) {
        co_enter(co_create(cwrite_co, &w[i]));
    }
    while (pending > 0) {
        aio_poll(ctx, true);
    }
    mem_set_yield(img.file, 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(w[i].ret, 0);
    }
    assert_int_equal(bdrv_flush(img.bs), 0);
    refcounts_match(&img, 16);
    uint8_t buf[C], got[C];
    for (int cl = 0; cl < 16; cl++) {
        assert_true(bdrv_pread(img.child, cl * (int64_t)C, C, got, 0) >= 0);
        /* the later of the two writers of a cluster won */
        int t1 = cl, t2 = cl < 8 ? cl + 16 : -1;
        compressible(buf, C, t1);
        bool is1 = !memcmp(buf, got, C);
        bool is2 = false;
        if (t2 >= 0) {
            compressible(buf, C, t2);
            is2 = !memcmp(buf, got, C);
        }
        assert_true(is1 || is2);
    }
    q2_free(&img);
}

typedef struct DriverRead {
    BlockDriverState *bs;
    int64_t offset;
    uint8_t buf[C];
    int ret;
} DriverRead;

static void coroutine_fn driver_read_co(void *opaque)
{
    DriverRead *r = opaque;
    IOVector q;
    iov_init_buf(&q, r->buf, C);
    r->ret = qcow2_co_preadv(r->bs, r->offset, C, &q, 0, 0);
}

/* ---- two threads writing compressed clusters at once ---- */

#define T_CLUSTERS 32
typedef struct ThreadArg {
    Q2Image *img;
    pthread_barrier_t *barrier;
    int id, failures;
} ThreadArg;

static void *compress_thread(void *opaque)
{
    ThreadArg *a = opaque;
    uint8_t buf[C];
    test_loop_init();
    for (int i = a->id; i < T_CLUSTERS; i += 2) {
        compressible(buf, C, i);
        if (i % 5 == 4) {
            test_pattern(buf, C, (uint64_t)i);       /* does not shrink: ordinary */
        }
        pthread_barrier_wait(a->barrier);
        if (write_c(a->img, i * (int64_t)C, C, buf) < 0) {
            a->failures++;
        }
    }
    aio_context_free(aio_current());
    aio_set_current(NULL);
    return NULL;
}

/* Each thread's compressed clusters land in distinct bytes of shared host
 * clusters, every reference is counted once, everything reads back. */
static void test_two_threads(void **state)
{
    (void)state;
    Q2Image img = q2_make(CB, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    pthread_barrier_t barrier;
    pthread_t th[2];
    ThreadArg args[2];
    pthread_barrier_init(&barrier, NULL, 2);
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_READ));
    for (int i = 0; i < 2; i++) {
        args[i] = (ThreadArg){ .img = &img, .barrier = &barrier, .id = i };
        pthread_create(&th[i], NULL, compress_thread, &args[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    pthread_barrier_destroy(&barrier);
    mem_set_yield(img.file, 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    refcounts_match(&img, T_CLUSTERS);
    uint8_t buf[C];
    for (int i = 0; i < T_CLUSTERS; i++) {
        bool plain = i % 5 == 4;
        assert_int_equal(!!(l2e(&img, (uint32_t)i) & QCOW2_OFLAG_COMPRESSED), !plain);
        compressible(buf, C, i);
        if (plain) {
            test_pattern(buf, C, (uint64_t)i);
        }
        read_back(&img, i * (int64_t)C, C, buf);
    }
    q2_free(&img);
}

/* While the compressed bytes are being written a reader sees the cluster as
 * it was (the backing file); and on disk the refcount block is written
 * before the L2 table that points into it. */
static void test_order(void **state)
{
    (void)state;
    MemConfig bcfg = { .size = MiB, .node_name = "q2cbase" };
    BlockDriverState *base = mem_node_new(&bcfg);
    mem_fill(base, 0, MiB, 0xba);
    Q2Image img = q2_make(CB, MiB, false, 0);
    q2_open(&img, BDRV_O_RDWR, "backing", "q2cbase");
    assert_non_null(img.bs);
    AioContext *ctx = test_loop_init();
    int pending = 1;
    CWriteCo w = { &img, 2 * C, 9, 0, false, &pending };
    mem_log_clear(img.file);
    mem_gate_close(img.file, 1u << MEM_OP_WRITE);
    co_enter(co_create(cwrite_co, &w));
    WAIT_FOR((aio_poll(ctx, false), mem_gate_parked(img.file) > 0), "the data write");
    /* The request path holds readers of the range back while the write is
     * in flight; the driver must be right without that too. */
    DriverRead r = { .bs = img.bs, .offset = 2 * C };
    test_run_co(driver_read_co, &r);
    assert_int_equal(r.ret, 0);
    assert_true(test_buf_is(r.buf, C, 0xba));
    mem_gate_open(img.file);
    while (pending > 0) {
        aio_poll(ctx, true);
    }
    assert_int_equal(w.ret, 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    int rc_write = -1, l2_write = -1, data_write = -1;
    for (int i = 0; mem_log(img.file, MEM_OP_WRITE, i); i++) {
        const MemLogEntry *e = mem_log(img.file, MEM_OP_WRITE, i);
        if (e->offset == 2 * C && rc_write < 0) {
            rc_write = i;
        } else if (e->offset == 4 * C) {
            l2_write = i;
        } else if ((uint64_t)e->offset >= Q2_DATA(&img, 0) && data_write < 0) {
            data_write = i;
        }
    }
    assert_true(data_write >= 0 && rc_write >= 0 && l2_write >= 0);
    assert_true(rc_write < l2_write);
    assert_true(data_write < l2_write);
    uint8_t buf[C];
    compressible(buf, C, 9);
    read_back(&img, 2 * C, C, buf);
    q2_free(&img);
    bdrv_unref(base);
}

/* 1-bit refcounts hold one reference: no packing, every compressed cluster
 * gets a host cluster of its own. */
static void test_refcount_bits_1(void **state)
{
    (void)state;
    Q2Image img = q2_make(CB, MiB, false, 0);
    /* rewrite the refcount block as 1-bit counts for clusters 0..4 */
    uint8_t block[C] = { 0x1f };
    mem_write_raw(img.file, 2 * C, block, C);
    q2_put32(img.file, QH_REFCOUNT_ORDER, 0);
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    uint8_t buf[C];
    for (int i = 0; i < 3; i++) {
        compressible(buf, C, i);
        assert_int_equal(write_c(&img, i * (int64_t)C, C, buf), 0);
    }
    assert_int_equal(bdrv_flush(img.bs), 0);
    uint64_t h0 = coffset(&img, l2e(&img, 0)) >> CB;
    uint64_t h1 = coffset(&img, l2e(&img, 1)) >> CB;
    uint64_t h2 = coffset(&img, l2e(&img, 2)) >> CB;
    assert_true(h0 != h1 && h1 != h2 && h0 != h2);
    mem_read_raw(img.file, 2 * C, block, 1);
    assert_int_equal(block[0], 0x1f | (1 << h0) | (1 << h1) | (1 << h2));
    for (int i = 0; i < 3; i++) {
        compressible(buf, C, i);
        read_back(&img, i * (int64_t)C, C, buf);
    }
    q2_free(&img);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_zlib),
        cmocka_unit_test(test_round_trip_zstd),
        cmocka_unit_test(test_incompressible_falls_back),
        cmocka_unit_test(test_packing),
        cmocka_unit_test(test_overwrite_frees),
        cmocka_unit_test(test_partial_last_cluster),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_concurrent_writers),
        cmocka_unit_test(test_two_threads),
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_refcount_bits_1),
    };
    return cmocka_run_group_tests_name("qcow2-compress-write", tests, NULL, NULL);
}
