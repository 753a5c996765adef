/*
 * test-vdi-io.c - the vdi driver's request side over a mem node: merged
 * reads, allocating writes (one padded write per run of new blocks), crash
 * ordering (data, flush, then header and map in one write), concurrent allocating writers from two
 * threads, write-zeroes/discard marking, truncated images, and check on
 * corrupted block maps.
 */
#include <errno.h>
#include <pthread.h>
#include "vdi-image.h"

static BdrvCheckResult run_check(BlockDriverState *f, BdrvCheckMode fix, int *ret);

static uint8_t *xmalloc(size_t n)
{
    uint8_t *p = malloc(n);
    assert_non_null(p);
    return p;
}

/* Count writes of exactly `bytes` (the data writes of new blocks are whole blocks). */
static int writes_of(BlockDriverState *f, int64_t bytes)
{
    int n = 0;
    for (int i = 0; mem_log(f, MEM_OP_WRITE, i); i++) {
        n += mem_log(f, MEM_OP_WRITE, i)->bytes == bytes;
    }
    return n;
}

static void test_read_unallocated_no_io(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t *buf = xmalloc(4 * MiB);
    memset(buf, 0xaa, 4 * MiB);
    mem_log_clear(img.file);
    assert_true(bdrv_pread(img.child, 0, 4 * MiB, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 4 * MiB, 0));
    assert_int_equal(mem_calls(img.file, MEM_OP_READ), 0);
    free(buf);
    vdi_test_close(&img);
}

/* Consecutive slots are one backing read however many blocks they span. */
static void test_read_merges_contiguous_blocks(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(8 * MiB, true);
    uint32_t off = vdi_test_hdr32(f, VDI_OFF_OFFSET_DATA);
    uint8_t *pat = xmalloc(8 * MiB), *buf = xmalloc(8 * MiB);
    test_pattern(pat, 8 * MiB, 1);
    mem_write_raw(f, off, pat, 8 * MiB);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    mem_log_clear(f);
    assert_true(bdrv_pread(img.child, 0, 8 * MiB, buf, 0) >= 0);
    assert_memory_equal(buf, pat, 8 * MiB);
    assert_int_equal(mem_calls(f, MEM_OP_READ), 1);
    mem_log_clear(f);
    assert_true(bdrv_pread(img.child, MiB / 2, 6 * MiB, buf, 0) >= 0);
    assert_memory_equal(buf, pat + MiB / 2, 6 * MiB);
    assert_int_equal(mem_calls(f, MEM_OP_READ), 1);
    free(pat);
    free(buf);
    vdi_test_close(&img);
}

/* Allocated, hole, allocated (but not adjacent in the file): two reads, and
 * the hole is zero-filled without I/O. */
static void test_read_mixed_runs(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(6 * MiB, true);
    uint32_t off = vdi_test_hdr32(f, VDI_OFF_OFFSET_DATA);
    uint8_t *pat = xmalloc(6 * MiB), *buf = xmalloc(6 * MiB);
    test_pattern(pat, 6 * MiB, 2);
    mem_write_raw(f, off, pat, 6 * MiB);
    vdi_test_set_entry(f, 2, VDI_UNALLOCATED);
    vdi_test_set_entry(f, 3, VDI_DISCARDED);
    vdi_test_set_entry(f, 4, 5);
    vdi_test_set_entry(f, 5, 4);      /* swapped: not contiguous */
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    mem_log_clear(f);
    assert_true(bdrv_pread(img.child, 0, 6 * MiB, buf, 0) >= 0);
    assert_memory_equal(buf, pat, 2 * MiB);
    assert_true(test_buf_is(buf + 2 * MiB, 2 * MiB, 0));
    assert_memory_equal(buf + 4 * MiB, pat + 5 * MiB, MiB);
    assert_memory_equal(buf + 5 * MiB, pat + 4 * MiB, MiB);
    assert_int_equal(mem_calls(f, MEM_OP_READ), 3);
    free(pat);
    free(buf);
    vdi_test_close(&img);
}

/* A small write into a new block writes the whole block (data + zero
 * padding) in one request, then the map entry, then the header. */
static void test_write_allocates_whole_block(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[4096], *buf = xmalloc(MiB);
    test_pattern(data, sizeof(data), 3);
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, MiB + 8192, sizeof(data), data, 0) >= 0);
    assert_int_equal(writes_of(img.file, MiB), 1);
    assert_int_equal(mem_log(img.file, MEM_OP_WRITE, 0)->offset, img.offset_data);
    assert_int_equal(vdi_test_entry(img.file, 1), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 1);
    assert_int_equal(mem_size(img.file), img.offset_data + MiB);
    assert_true(bdrv_pread(img.child, MiB, MiB, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 8192, 0));
    assert_memory_equal(buf + 8192, data, sizeof(data));
    assert_true(test_buf_is(buf + 8192 + sizeof(data), MiB - 8192 - sizeof(data), 0));

    /* a second write to the block goes in place: no metadata */
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, MiB, sizeof(data), data, 0) >= 0);
    assert_int_equal(mem_calls(img.file, MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(img.file, MEM_OP_WRITE, 0)->offset, img.offset_data);
    free(buf);
    vdi_test_close(&img);
}

/* 3 MiB starting mid-block touches 4 new blocks: one 4 MiB data write. */
static void test_write_multi_block_one_io(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(8 * MiB, false), BDRV_O_RDWR);
    uint8_t *data = xmalloc(3 * MiB), *buf = xmalloc(8 * MiB);
    test_pattern(data, 3 * MiB, 4);
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, MiB / 2, 3 * MiB, data, 0) >= 0);
    assert_int_equal(writes_of(img.file, 4 * MiB), 1);
    assert_int_equal(mem_calls(img.file, MEM_OP_FLUSH), 1);
    assert_int_equal(mem_calls(img.file, MEM_OP_WRITE), 2);   /* data, header + map */
    for (uint32_t b = 0; b < 4; b++) {
        assert_int_equal(vdi_test_entry(img.file, b), b);
    }
    assert_int_equal(vdi_test_entry(img.file, 4), VDI_UNALLOCATED);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 4);
    mem_log_clear(img.file);
    assert_true(bdrv_pread(img.child, 0, 8 * MiB, buf, 0) >= 0);
    assert_int_equal(mem_calls(img.file, MEM_OP_READ), 1);
    assert_true(test_buf_is(buf, MiB / 2, 0));
    assert_memory_equal(buf + MiB / 2, data, 3 * MiB);
    assert_true(test_buf_is(buf + 7 * MiB / 2, 9 * MiB / 2, 0));
    free(data);
    free(buf);
    vdi_test_close(&img);
}

/* mem_log() entries point into one array in call order, so pointer order is
 * global order across ops.  The data is durable before anything names it;
 * then the header count and the map entry go out in ONE write (offset 0,
 * header sector + map sector), so no crash leaves a count that differs
 * from the map (qemu-img check calls either difference a corruption). */
static void test_crash_ordering(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[512] = { 1 };
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, 2 * MiB, sizeof(data), data, 0) >= 0);
    const MemLogEntry *w_data = mem_log(img.file, MEM_OP_WRITE, 0);
    const MemLogEntry *flush = mem_log(img.file, MEM_OP_FLUSH, 0);
    const MemLogEntry *w_meta = mem_log(img.file, MEM_OP_WRITE, 1);
    assert_non_null(w_data);
    assert_non_null(flush);
    assert_non_null(w_meta);
    assert_null(mem_log(img.file, MEM_OP_WRITE, 2));
    assert_int_equal(w_data->offset, img.offset_data);
    assert_int_equal(w_meta->offset, 0);
    assert_int_equal(w_meta->bytes, 1024);
    assert_true(w_data < flush);
    assert_true(flush < w_meta);
    assert_int_equal(vdi_test_entry(img.file, 2), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 1);
    vdi_test_close(&img);
}

/* A block whose map entry lies beyond the first 64 KiB of the map (here
 * block 20000 of a 20 GiB disk): the count goes first, written before the
 * data flush that makes it durable, and the map sector after that flush.
 * A crash in between leaves a slot counted and unused, never an entry
 * beyond the count. */
static void test_crash_ordering_far_entry(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(20ULL * 1024 * MiB, false),
                                     BDRV_O_RDWR);
    uint8_t data[512] = { 1 };
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, 20000 * MiB, sizeof(data), data, 0) >= 0);
    const MemLogEntry *w_data = mem_log(img.file, MEM_OP_WRITE, 0);
    const MemLogEntry *w_hdr = mem_log(img.file, MEM_OP_WRITE, 1);
    const MemLogEntry *flush = mem_log(img.file, MEM_OP_FLUSH, 0);
    const MemLogEntry *w_map = mem_log(img.file, MEM_OP_WRITE, 2);
    assert_non_null(w_map);
    assert_int_equal(w_data->offset, img.offset_data);
    assert_int_equal(w_hdr->offset, 0);
    assert_int_equal(w_hdr->bytes, 512);
    assert_int_equal(w_map->offset, 512 + 20000 * 4 / 512 * 512);
    assert_true(w_data < w_hdr);
    assert_true(w_hdr < flush);
    assert_true(flush < w_map);
    assert_int_equal(vdi_test_entry(img.file, 20000), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 1);
    vdi_test_close(&img);
}

/* If the data cannot be made durable, the map never points at it. */
static void test_flush_failure_keeps_map(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[512], buf[512];
    memset(data, 0x5a, sizeof(data));
    mem_inject_error(img.file, MEM_OP_FLUSH, 0, 0, -EIO, 1);
    mem_log_clear(img.file);
    assert_true(bdrv_pwrite(img.child, 0, sizeof(data), data, 0) < 0);
    assert_int_equal(mem_calls(img.file, MEM_OP_WRITE), 1);     /* data only */
    assert_int_equal(vdi_test_entry(img.file, 0), VDI_UNALLOCATED);
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    /* retry succeeds and reuses the slot */
    assert_true(bdrv_pwrite(img.child, 0, sizeof(data), data, 0) >= 0);
    assert_int_equal(vdi_test_entry(img.file, 0), 0);
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_memory_equal(buf, data, sizeof(buf));
    vdi_test_close(&img);
}

/* The map write fails, and so does its one retry. */
static void test_map_write_failure_reverts(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[512], buf[512];
    memset(data, 0x6b, sizeof(data));
    mem_inject_error(img.file, MEM_OP_WRITE, 512, 512, -EIO, 2);
    assert_true(bdrv_pwrite(img.child, 0, sizeof(data), data, 0) < 0);
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 0);
    assert_true(bdrv_pwrite(img.child, 0, sizeof(data), data, 0) >= 0);
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_memory_equal(buf, data, sizeof(buf));
    /* the failed attempt gave its slot back: the retry used slot 0 and the
     * count matches the map, so check finds the image clean */
    assert_int_equal(vdi_test_entry(img.file, 0), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 1);
    BdrvCheckResult res = { 0 };
    assert_int_equal(bdrv_check(img.bs, &res, 0), 0);
    assert_int_equal(res.corruptions, 0);
    vdi_test_close(&img);
}

typedef struct VecWrite {
    BdrvChild *child;
    int64_t offset;
    IOVector *qiov;
    int ret;
} VecWrite;

static void coroutine_fn vec_write_co(void *opaque)
{
    VecWrite *w = opaque;
    w->ret = bdrv_co_pwritev(w->child, w->offset, w->qiov->size, w->qiov, 0);
}

/* A caller vector longer than the stack vector is written in pieces (no heap
 * on the request path), still before the flush and the map. */
static void test_write_long_vector_split(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    enum { NV = 40, PIECE = 1024 };
    static uint8_t data[NV * PIECE];
    uint8_t *buf = xmalloc(MiB);
    struct iovec iov[NV];
    IOVector q;
    test_pattern(data, sizeof(data), 11);
    for (int i = 0; i < NV; i++) {
        iov[i] = (struct iovec){ data + i * PIECE, PIECE };
    }
    iov_init_external(&q, iov, NV);
    mem_log_clear(img.file);
    VecWrite w = { img.child, MiB + 4096, &q, -1 };
    test_run_co(vec_write_co, &w);
    assert_true(w.ret >= 0);
    iov_destroy(&q);
    /* data pieces: contiguous from the slot start, a whole block in all */
    int64_t at = img.offset_data, n = 0;
    for (int i = 0; mem_log(img.file, MEM_OP_WRITE, i); i++) {
        const MemLogEntry *w = mem_log(img.file, MEM_OP_WRITE, i);
        if (w->offset >= img.offset_data) {
            assert_int_equal(w->offset, at);
            at += w->bytes;
            n++;
        }
    }
    assert_int_equal(at, img.offset_data + MiB);
    assert_int_equal(n, 2);
    assert_true(bdrv_pread(img.child, MiB, MiB, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 4096, 0));
    assert_memory_equal(buf + 4096, data, sizeof(data));
    assert_true(test_buf_is(buf + 4096 + sizeof(data), MiB - 4096 - sizeof(data), 0));
    free(buf);
    vdi_test_close(&img);
}

/* ---- two threads allocating the same blocks ---- */

#define RACE_BLOCKS 16
typedef struct RaceArg {
    BdrvChild *child;
    pthread_barrier_t *barrier;
    int half;
    int failures;
} RaceArg;

static void *race_thread(void *opaque)
{
    RaceArg *a = opaque;
    uint8_t data[64 * 1024];
    test_loop_init();
    for (int b = 0; b < RACE_BLOCKS; b++) {
        test_pattern(data, sizeof(data), b * 2 + a->half);
        pthread_barrier_wait(a->barrier);
        if (bdrv_pwrite(a->child, (int64_t)b * MiB + a->half * (MiB / 2), sizeof(data), data,
                        0) < 0) {
            a->failures++;
        }
    }
    aio_context_free(aio_current());
    aio_set_current(NULL);
    return NULL;
}

static void test_concurrent_allocation_two_threads(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(RACE_BLOCKS * MiB, false), BDRV_O_RDWR);
    pthread_barrier_t barrier;
    pthread_t th[2];
    RaceArg args[2];
    pthread_barrier_init(&barrier, NULL, 2);
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_FLUSH));
    mem_log_clear(img.file);
    for (int i = 0; i < 2; i++) {
        args[i] = (RaceArg){ .child = img.child, .barrier = &barrier, .half = i };
        pthread_create(&th[i], NULL, race_thread, &args[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    pthread_barrier_destroy(&barrier);

    /* exactly one allocation per block, all slots distinct, both halves kept */
    assert_int_equal(writes_of(img.file, MiB), RACE_BLOCKS);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), RACE_BLOCKS);
    assert_int_equal(mem_size(img.file), img.offset_data + RACE_BLOCKS * MiB);
    bool seen[RACE_BLOCKS] = { false };
    uint8_t want[64 * 1024], got[64 * 1024];
    for (int b = 0; b < RACE_BLOCKS; b++) {
        uint32_t e = vdi_test_entry(img.file, b);
        assert_true(e < RACE_BLOCKS);
        assert_false(seen[e]);
        seen[e] = true;
        for (int half = 0; half < 2; half++) {
            test_pattern(want, sizeof(want), b * 2 + half);
            assert_true(bdrv_pread(img.child, (int64_t)b * MiB + half * (MiB / 2), sizeof(got),
                                   got, 0) >= 0);
            assert_memory_equal(got, want, sizeof(got));
        }
    }
    mem_set_yield(img.file, 0);
    vdi_test_close(&img);
}

/* ---- group commit ---- */

typedef struct AllocCo {
    BdrvChild *child;
    int64_t offset;
    int ret;
    int *pending;
} AllocCo;

static void coroutine_fn alloc_co(void *opaque)
{
    AllocCo *a = opaque;
    uint8_t data[4096];
    IOVector q;
    memset(data, (int)(a->offset >> 20) + 1, sizeof(data));
    iov_init_buf(&q, data, sizeof(data));
    a->ret = bdrv_co_pwritev(a->child, a->offset, sizeof(data), &q, 0);
    iov_destroy(&q);
    (*a->pending)--;
}

/* Eight allocations in flight on one thread: the first flushes alone, the
 * second flush covers the other seven, whose data was written by then. */
static void test_allocations_share_flush(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(8 * MiB, false), BDRV_O_RDWR);
    AioContext *ctx = test_loop_init();
    AllocCo a[8];
    int pending = 8;
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_FLUSH));
    mem_log_clear(img.file);
    for (int i = 0; i < 8; i++) {
        a[i] = (AllocCo){ img.child, (int64_t)i * MiB, 0, &pending };
        co_enter(co_create(alloc_co, &a[i]));
    }
    while (pending > 0) {
        aio_poll(ctx, true);
    }
    mem_set_yield(img.file, 0);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(a[i].ret, 0);
    }
    assert_int_equal(writes_of(img.file, MiB), 8);
    assert_true(mem_calls(img.file, MEM_OP_FLUSH) <= 2);
    /* the first map write (with the header, at 0) still follows a flush
     * that follows a data write */
    const MemLogEntry *first_map = NULL, *flush_before = NULL;
    for (int i = 0; mem_log(img.file, MEM_OP_WRITE, i); i++) {
        if (mem_log(img.file, MEM_OP_WRITE, i)->offset == 0) {
            first_map = mem_log(img.file, MEM_OP_WRITE, i);
            break;
        }
    }
    assert_non_null(first_map);
    for (int i = 0; mem_log(img.file, MEM_OP_FLUSH, i); i++) {
        if (mem_log(img.file, MEM_OP_FLUSH, i) < first_map) {
            flush_before = mem_log(img.file, MEM_OP_FLUSH, i);
        }
    }
    assert_non_null(flush_before);
    assert_true(mem_log(img.file, MEM_OP_WRITE, 0) < flush_before);
    uint8_t buf[4096];
    for (int i = 0; i < 8; i++) {
        assert_true(bdrv_pread(img.child, (int64_t)i * MiB, sizeof(buf), buf, 0) >= 0);
        assert_true(test_buf_is(buf, sizeof(buf), i + 1));
    }
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 8);
    vdi_test_close(&img);
}

/* ---- zeroes and discard ---- */

typedef struct DiscardArg {
    BdrvChild *child;
    int64_t offset, bytes;
    int ret;
} DiscardArg;

static void coroutine_fn discard_co(void *opaque)
{
    DiscardArg *a = opaque;
    a->ret = bdrv_co_pdiscard(a->child, a->offset, a->bytes);
}

static void test_zeroes_mark_unallocated_blocks(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    mem_log_clear(img.file);
    /* 1.5 MiB .. 4 MiB: block 1 partial (nothing to do), blocks 2-3 whole */
    assert_true(bdrv_pwrite_zeroes(img.child, 3 * MiB / 2, 5 * MiB / 2, 0) >= 0);
    assert_int_equal(vdi_test_entry(img.file, 0), VDI_UNALLOCATED);
    assert_int_equal(vdi_test_entry(img.file, 1), VDI_UNALLOCATED);
    assert_int_equal(vdi_test_entry(img.file, 2), VDI_DISCARDED);
    assert_int_equal(vdi_test_entry(img.file, 3), VDI_DISCARDED);
    assert_int_equal(mem_calls(img.file, MEM_OP_ZEROES), 0);
    assert_int_equal(mem_calls(img.file, MEM_OP_WRITE), 1);           /* one map sector */
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 0);
    /* a discarded block is allocated again by a write */
    uint8_t data[512] = { 7 }, buf[1024];
    assert_true(bdrv_pwrite(img.child, 2 * MiB + 512, sizeof(data), data, 0) >= 0);
    assert_int_equal(vdi_test_entry(img.file, 2), 0);
    assert_true(bdrv_pread(img.child, 2 * MiB, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, 512, 0));
    assert_memory_equal(buf + 512, data, 512);
    vdi_test_close(&img);
}

/* Allocated blocks keep their slot (see vdi_co_zero_range) and are zeroed in
 * the file; discard passes MAY_UNMAP so the file can punch a hole. */
static void test_zeroes_and_discard_allocated_in_place(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    uint32_t off = vdi_test_hdr32(f, VDI_OFF_OFFSET_DATA);
    mem_fill(f, off, 4 * MiB, 0xee);
    f->open_flags |= BDRV_O_UNMAP;    /* as if opened under discard=unmap */
    mem_config(f)->zero_flags = BDRV_REQ_MAY_UNMAP;     /* and able to punch holes */
    mem_apply_config(f);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR | BDRV_O_UNMAP);   /* discard=unmap */
    uint8_t *buf = xmalloc(4 * MiB);
    mem_log_clear(f);
    assert_true(bdrv_pwrite_zeroes(img.child, 4096, 4096, 0) >= 0);
    assert_int_equal(mem_calls(f, MEM_OP_ZEROES), 1);
    assert_int_equal(mem_log(f, MEM_OP_ZEROES, 0)->offset, off + 4096);
    assert_int_equal(vdi_test_entry(f, 0), 0);

    DiscardArg d = { img.child, MiB / 2, 3 * MiB, 0 };   /* whole blocks 1 and 2 */
    mem_log_clear(f);
    test_run_co(discard_co, &d);
    assert_true(d.ret >= 0);
    assert_int_equal(mem_calls(f, MEM_OP_ZEROES), 1);
    assert_int_equal(mem_log(f, MEM_OP_ZEROES, 0)->offset, off + MiB);
    assert_int_equal(mem_log(f, MEM_OP_ZEROES, 0)->bytes, 2 * MiB);
    assert_true(mem_log(f, MEM_OP_ZEROES, 0)->flags & BDRV_REQ_MAY_UNMAP);
    assert_true(bdrv_pread(img.child, 0, 4 * MiB, buf, 0) >= 0);
    assert_true(test_buf_is(buf, 4096, 0xee));
    assert_true(test_buf_is(buf + 4096, 4096, 0));
    assert_true(test_buf_is(buf + MiB, 2 * MiB, 0));
    assert_true(test_buf_is(buf + 3 * MiB, MiB, 0xee));
    free(buf);
    vdi_test_close(&img);
}

/* ---- damaged images ---- */

static void test_entry_past_eof_is_eio(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_set_entry(f, 3, 1000);       /* slot far past the end of the file */
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    uint8_t buf[4096];
    assert_non_null(img.bs);
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_int_equal(bdrv_pread(img.child, 3 * MiB, sizeof(buf), buf, 0), -EIO);
    assert_int_equal(bdrv_pwrite(img.child, 3 * MiB, sizeof(buf), buf, 0), -EIO);
    vdi_test_close(&img);
}

/* Write-zeroes over a block whose slot is missing is a write like any other:
 * it fails -EIO instead of reporting zeros that a read cannot return. */
static void test_zeroes_missing_slot_is_eio(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_set_entry(f, 3, 1000);       /* slot far past the end of the file */
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_pwrite_zeroes(img.child, 3 * MiB, 4096, 0), -EIO);
    assert_int_equal(bdrv_pwrite_zeroes(img.child, 3 * MiB, MiB, 0), -EIO);
    assert_true(bdrv_pwrite_zeroes(img.child, 0, 4096, 0) >= 0);
    vdi_test_close(&img);
}

/* A header count lower than the slots in use (crash between map and header
 * writes) must not make the next allocation reuse a live slot. */
static void test_lagging_count_does_not_reuse_slot(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_set_entry(f, 2, VDI_UNALLOCATED);
    vdi_test_set_entry(f, 3, VDI_UNALLOCATED);
    vdi_test_set_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED, 0);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    uint8_t data[512] = { 9 };
    assert_true(bdrv_pwrite(img.child, 2 * MiB, sizeof(data), data, 0) >= 0);
    assert_int_equal(vdi_test_entry(f, 2), 2);
    vdi_test_close(&img);
}

/* Blocks 0-2 in slots 0-2 but the file ends after slot 1.  Appending a new
 * block would grow the file over slot 2 and make the lost block read as
 * zeros, even after a reopen: allocating writes are refused instead. */
static void test_truncated_image_refuses_allocation(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(8 * MiB, true);
    uint32_t off = vdi_test_hdr32(f, VDI_OFF_OFFSET_DATA);
    for (uint32_t b = 3; b < 8; b++) {
        vdi_test_set_entry(f, b, VDI_UNALLOCATED);
    }
    vdi_test_set_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED, 3);
    vdi_test_set_hdr32(f, VDI_OFF_IMAGE_TYPE, VDI_TYPE_DYNAMIC);
    vdi_test_truncate(f, off + 2 * MiB);
    int64_t size = mem_size(f);
    uint8_t buf[4096] = { 0 };
    bdrv_ref(f);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    assert_int_equal(bdrv_pread(img.child, 2 * MiB, sizeof(buf), buf, 0), -EIO);
    assert_int_equal(bdrv_pwrite(img.child, 5 * MiB, sizeof(buf), buf, 0), -EIO);
    assert_int_equal(bdrv_pread(img.child, 2 * MiB, sizeof(buf), buf, 0), -EIO);
    assert_true(bdrv_pwrite(img.child, MiB, sizeof(buf), buf, 0) >= 0);   /* in place */
    assert_int_equal(mem_size(f), size);
    assert_int_equal(vdi_test_entry(f, 5), VDI_UNALLOCATED);
    BdrvCheckResult res = { 0 };
    assert_int_equal(bdrv_check(img.bs, &res, 0), 0);
    assert_int_equal(res.corruptions, 1);
    vdi_test_close(&img);

    /* and the same after a reopen */
    int ret;
    res = run_check(f, 0, &ret);
    assert_int_equal(res.corruptions, 1);
    img = vdi_test_open(f, BDRV_O_RDWR);
    assert_int_equal(bdrv_pread(img.child, 2 * MiB, sizeof(buf), buf, 0), -EIO);
    vdi_test_close(&img);
}

/* Two blocks in one slot: writing either would change the other, so writes
 * (and zeroing) fail -EIO; reads and the other blocks keep working. */
static void test_shared_slot_refuses_writes(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    uint32_t off = vdi_test_hdr32(f, VDI_OFF_OFFSET_DATA);
    mem_fill(f, off, 4 * MiB, 0x44);
    vdi_test_set_entry(f, 1, 0);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    uint8_t data[4096], buf[4096];
    memset(data, 0x99, sizeof(data));
    assert_non_null(img.bs);
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0x44));
    assert_true(bdrv_pread(img.child, MiB, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0x44));
    assert_int_equal(bdrv_pwrite(img.child, MiB, sizeof(data), data, 0), -EIO);
    assert_int_equal(bdrv_pwrite(img.child, 0, sizeof(data), data, 0), -EIO);
    assert_int_equal(bdrv_pwrite_zeroes(img.child, MiB, 4096, 0), -EIO);
    /* a write spanning an ordinary block and a shared one stops at the latter */
    assert_int_equal(bdrv_pwrite(img.child, MiB - 4096, 2 * 4096, data, 0), -EIO);
    assert_true(bdrv_pwrite(img.child, 2 * MiB, sizeof(data), data, 0) >= 0);
    assert_true(bdrv_pread(img.child, 0, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0x44));
    assert_true(bdrv_pread(img.child, 2 * MiB, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0x99));
    BdrvCheckResult res = { 0 };
    assert_int_equal(bdrv_check(img.bs, &res, 0), 0);
    assert_true(res.corruptions >= 1);
    vdi_test_close(&img);
}

/* A count that claims both slots although no block names one: the slots are
 * free, so the disk fills up (no ENOSPC) and the count matches in the end. */
static void test_overstated_count_slots_are_free(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(2 * MiB, false);
    vdi_test_set_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED, 2);   /* claims both slots taken */
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    uint8_t data[512] = { 9 };
    assert_true(bdrv_pwrite(img.child, MiB, sizeof(data), data, 0) >= 0);
    assert_int_equal(vdi_test_entry(f, 1), 0);
    assert_true(bdrv_pwrite(img.child, 0, sizeof(data), data, 0) >= 0);
    assert_int_equal(vdi_test_entry(f, 0), 1);
    assert_int_equal(vdi_test_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED), 2);
    assert_int_equal(mem_size(f), img.offset_data + 2 * MiB);
    BdrvCheckResult res = { 0 };
    assert_int_equal(bdrv_check(img.bs, &res, 0), 0);
    assert_int_equal(res.corruptions, 0);
    vdi_test_close(&img);
}

/* ---- check ---- */

static BdrvCheckResult run_check(BlockDriverState *f, BdrvCheckMode fix, int *ret)
{
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    BdrvCheckResult res = { 0 };
    assert_non_null(img.bs);
    bdrv_ref(f);                      /* keep the file for the caller */
    *ret = bdrv_check(img.bs, &res, fix);
    vdi_test_close(&img);
    return res;
}

static void test_check_clean(void **state)
{
    (void)state;
    int ret;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    BdrvCheckResult r = run_check(f, 0, &ret);
    assert_int_equal(ret, 0);
    assert_int_equal(r.corruptions, 0);
    bdrv_unref(f);
}

static void test_check_finds_corruptions(void **state)
{
    (void)state;
    int ret;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_set_entry(f, 1, 0);          /* duplicate of block 0 */
    vdi_test_set_entry(f, 2, 77);         /* too large */
    BdrvCheckResult r = run_check(f, BDRV_FIX_ERRORS, &ret);
    assert_int_equal(ret, 0);
    /* duplicate + too large + count (3 counted, header 4) not fixable here */
    assert_int_equal(r.corruptions, 3);
    assert_int_equal(r.corruptions_fixed, 0);
    bdrv_unref(f);
}

static void test_check_repairs_count(void **state)
{
    (void)state;
    int ret;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_set_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED, 9);
    BdrvCheckResult r = run_check(f, 0, &ret);
    assert_int_equal(r.corruptions, 1);
    r = run_check(f, BDRV_FIX_ERRORS, &ret);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(vdi_test_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED), 4);
    r = run_check(f, 0, &ret);
    assert_int_equal(r.corruptions, 0);
    bdrv_unref(f);
}

/* Block 0's slot given up (a failed allocation, a crash): block 3 sits in
 * slot 3 with blocks_allocated 4 but only 3 blocks mapped.  No count is right
 * for both qemu-img check and QEMU's allocator, so repair moves block 3 into
 * slot 0 and then writes the count. */
static void test_check_compacts_holes(void **state)
{
    (void)state;
    int ret;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    uint32_t off = vdi_test_hdr32(f, VDI_OFF_OFFSET_DATA);
    uint8_t *pat = xmalloc(4 * MiB), *buf = xmalloc(4 * MiB);
    test_pattern(pat, 4 * MiB, 21);
    mem_write_raw(f, off, pat, 4 * MiB);
    vdi_test_set_entry(f, 0, VDI_UNALLOCATED);
    BdrvCheckResult r = run_check(f, 0, &ret);
    assert_int_equal(r.corruptions, 2);                 /* holes + count */
    r = run_check(f, BDRV_FIX_ERRORS, &ret);
    assert_int_equal(ret, 0);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.corruptions_fixed, 2);
    assert_int_equal(vdi_test_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED), 3);
    assert_int_equal(vdi_test_entry(f, 3), 0);
    assert_int_equal(vdi_test_entry(f, 1), 1);
    assert_int_equal(vdi_test_entry(f, 2), 2);
    r = run_check(f, 0, &ret);
    assert_int_equal(r.corruptions, 0);

    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_true(bdrv_pread(img.child, 0, 4 * MiB, buf, 0) >= 0);
    assert_true(test_buf_is(buf, MiB, 0));
    assert_memory_equal(buf + MiB, pat + MiB, 3 * MiB);
    /* the next block goes to slot 3, after the compacted ones */
    assert_true(bdrv_pwrite(img.child, 0, 512, pat, 0) >= 0);
    assert_int_equal(vdi_test_entry(f, 0), 3);
    vdi_test_close(&img);
    free(pat);
    free(buf);
}

/* Holes with a count that matches the map: qemu-img check calls it clean,
 * but QEMU would put its next block into slot 3, which is in use. */
static void test_check_holes_with_matching_count(void **state)
{
    (void)state;
    int ret;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, true);
    vdi_test_set_entry(f, 0, VDI_UNALLOCATED);
    vdi_test_set_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED, 3);
    BdrvCheckResult r = run_check(f, 0, &ret);
    assert_int_equal(r.corruptions, 1);
    r = run_check(f, BDRV_FIX_ERRORS, &ret);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(vdi_test_entry(f, 3), 0);
    r = run_check(f, 0, &ret);
    assert_int_equal(r.corruptions, 0);
    bdrv_unref(f);
}

static void test_check_entry_past_eof(void **state)
{
    (void)state;
    int ret;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, false);   /* no data area */
    vdi_test_set_entry(f, 0, 0);
    vdi_test_set_hdr32(f, VDI_OFF_BLOCKS_ALLOCATED, 1);
    BdrvCheckResult r = run_check(f, 0, &ret);
    assert_int_equal(r.corruptions, 1);
    bdrv_unref(f);
}

/* vdi cannot resize: a shrink (or a no-op) is an error, never a silent yes
 * that leaves the size as it was (issue #10). */
static void test_truncate_is_refused(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, false);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    const int64_t sizes[] = { 1, 4 * MiB, 8 * MiB };
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        Error *err = NULL;
        assert_int_equal(bdrv_truncate(img.child, sizes[i], false, PREALLOC_MODE_OFF, 0, &err),
                         -ENOTSUP);
        assert_non_null(err);
        assert_string_equal(error_get_pretty(err), "Image format driver does not support resize");
        error_free(err);
        assert_int_equal(bdrv_getlength(img.bs), 4 * MiB);
    }
    vdi_test_close(&img);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_unallocated_no_io),
        cmocka_unit_test(test_read_merges_contiguous_blocks),
        cmocka_unit_test(test_read_mixed_runs),
        cmocka_unit_test(test_write_allocates_whole_block),
        cmocka_unit_test(test_write_multi_block_one_io),
        cmocka_unit_test(test_crash_ordering),
        cmocka_unit_test(test_crash_ordering_far_entry),
        cmocka_unit_test(test_flush_failure_keeps_map),
        cmocka_unit_test(test_map_write_failure_reverts),
        cmocka_unit_test(test_write_long_vector_split),
        cmocka_unit_test(test_concurrent_allocation_two_threads),
        cmocka_unit_test(test_allocations_share_flush),
        cmocka_unit_test(test_zeroes_mark_unallocated_blocks),
        cmocka_unit_test(test_zeroes_and_discard_allocated_in_place),
        cmocka_unit_test(test_entry_past_eof_is_eio),
        cmocka_unit_test(test_zeroes_missing_slot_is_eio),
        cmocka_unit_test(test_lagging_count_does_not_reuse_slot),
        cmocka_unit_test(test_truncated_image_refuses_allocation),
        cmocka_unit_test(test_truncate_is_refused),
        cmocka_unit_test(test_shared_slot_refuses_writes),
        cmocka_unit_test(test_overstated_count_slots_are_free),
        cmocka_unit_test(test_check_clean),
        cmocka_unit_test(test_check_finds_corruptions),
        cmocka_unit_test(test_check_repairs_count),
        cmocka_unit_test(test_check_compacts_holes),
        cmocka_unit_test(test_check_holes_with_matching_count),
        cmocka_unit_test(test_check_entry_past_eof),
    };
    return cmocka_run_group_tests_name("vdi-io", tests, NULL, NULL);
}
