/*
 * test-qcow2-write.c - the qcow2 write path on images built in mem nodes
 * (qcow2-image.h): in-place writes touch no metadata, allocating writes set
 * refcounts and L2 entries, concurrent allocations of one cluster end in one
 * cluster, readers never see an L2 entry before its data, zero writes and
 * discards, lazy refcounts' dirty bit, the overlap check.
 */
#include <errno.h>
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
        cmocka_unit_test(test_concurrent_allocation_one_cluster),
        cmocka_unit_test(test_reader_never_sees_unwritten_data),
        cmocka_unit_test(test_zero_and_discard),
        cmocka_unit_test(test_lazy_refcounts_dirty_bit),
        cmocka_unit_test(test_overlap_marks_corrupt),
        cmocka_unit_test(test_l2_on_refcount_block),
        cmocka_unit_test(test_discard_waits_for_in_place_write),
        cmocka_unit_test(test_unmap_zero_waits_for_in_place_write),
    };
    return cmocka_run_group_tests_name("qcow2-write", tests, NULL, NULL);
}
