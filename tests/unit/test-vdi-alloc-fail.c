/*
 * test-vdi-alloc-fail.c - a failed allocation leaves no scar (issue #10):
 * a data write that fails (EIO, ENOSPC) or a block-map write that fails
 * while other allocations are in flight leaves no hole that lasts: the slot
 * goes back or is reused by the next allocation (also after a reopen), the
 * last block of a full disk can be written, and check is clean.  Header
 * writes that fail are retried by flush.  Over a mem node with injected
 * errors; the coroutines of one test share a thread.
 */
#include <errno.h>
#include "vdi-image.h"

typedef struct Writer {
    BdrvChild *child;
    int64_t offset;
    IOVector *qiov;
    int ret;
    int *pending;
} Writer;

static void coroutine_fn writer_co(void *opaque)
{
    Writer *w = opaque;
    w->ret = bdrv_co_pwritev(w->child, w->offset, w->qiov->size, w->qiov, 0);
    (*w->pending)--;
}

static void run_until_done(int *pending)
{
    AioContext *ctx = test_loop_init();
    while (*pending > 0) {
        aio_poll(ctx, true);
    }
}

static int check_corruptions(VdiTestImage *img)
{
    BdrvCheckResult res = { 0 };
    assert_int_equal(bdrv_check(img->bs, &res, 0), 0);
    return res.corruptions;
}

/* Each of the image's blocks holds 4 KiB of byte b+1 at its start. */
static void assert_blocks(VdiTestImage *img, int nblocks)
{
    uint8_t buf[4096];
    for (int b = 0; b < nblocks; b++) {
        assert_true(bdrv_pread(img->child, (int64_t)b * MiB, sizeof(buf), buf, 0) >= 0);
        assert_true(test_buf_is(buf, sizeof(buf), b + 1));
    }
}

static void write_block(VdiTestImage *img, int b)
{
    uint8_t data[4096];
    memset(data, b + 1, sizeof(data));
    assert_int_equal(bdrv_pwrite(img->child, (int64_t)b * MiB, sizeof(data), data, 0), 0);
}

/* Writes logged at or past the start of the data area. */
static int writes_of_data(BlockDriverState *f, int64_t offset_data)
{
    int n = 0;
    for (int i = 0; mem_log(f, MEM_OP_WRITE, i); i++) {
        n += mem_log(f, MEM_OP_WRITE, i)->offset >= offset_data;
    }
    return n;
}

static int slot_of_block(VdiTestImage *img, int b)
{
    return (int)vdi_test_entry(img->file, b);
}

/*
 * Four blocks, four allocations in flight.  The first reserved (slot 0,
 * block 2) has a long vector, so its data goes out in two writes; the
 * second fails with err after the other three have their slots.  Returns
 * with the failed write's result checked.
 */
static void fail_first_of_four(VdiTestImage *img, int err)
{
    enum { NV = 40, PIECE = 4096 };
    static uint8_t long_data[NV * PIECE];
    uint8_t small[3][4096];
    struct iovec long_iov[NV], small_iov[3];
    IOVector q[4];
    Writer w[4];
    int pending = 4;
    const int blocks[4] = { 2, 0, 1, 3 };

    memset(long_data, 3, sizeof(long_data));
    for (int i = 0; i < NV; i++) {
        long_iov[i] = (struct iovec){ long_data + i * PIECE, PIECE };
    }
    iov_init_external(&q[0], long_iov, NV);
    for (int i = 0; i < 3; i++) {
        memset(small[i], blocks[i + 1] + 1, sizeof(small[i]));
        small_iov[i] = (struct iovec){ small[i], sizeof(small[i]) };
        iov_init_external(&q[i + 1], &small_iov[i], 1);
    }
    /* the second piece of slot 0's data: past the first 32 buffers */
    mem_inject_error(img->file, MEM_OP_WRITE, img->offset_data + 32 * PIECE, PIECE, err, 1);
    mem_set_yield(img->file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_FLUSH));
    for (int i = 0; i < 4; i++) {
        w[i] = (Writer){ img->child, (int64_t)blocks[i] * MiB, &q[i], 1, &pending };
        co_enter(co_create(writer_co, &w[i]));
    }
    run_until_done(&pending);
    mem_set_yield(img->file, 0);
    assert_int_equal(w[0].ret, err);
    for (int i = 1; i < 4; i++) {
        assert_int_equal(w[i].ret, 0);
        assert_int_equal(slot_of_block(img, blocks[i]), i);
    }
    for (int i = 0; i < 4; i++) {
        iov_destroy(&q[i]);
    }
}

/* A data write fails (ENOSPC, as on a full host file system) while later
 * allocations are in flight: the next allocation takes the slot, so the
 * last block of the full disk can be written and check is clean. */
static void test_data_write_failure_slot_is_reused(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t buf[4096];

    fail_first_of_four(&img, -ENOSPC);
    assert_int_equal(vdi_test_entry(img.file, 2), VDI_UNALLOCATED);
    assert_true(bdrv_pread(img.child, 2 * MiB, sizeof(buf), buf, 0) >= 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    /* the hole is there until reused: holes + count, as qemu-img sees it */
    assert_int_equal(check_corruptions(&img), 2);

    write_block(&img, 2);                 /* the last free block of the disk */
    assert_int_equal(slot_of_block(&img, 2), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 4);
    assert_int_equal(mem_size(img.file), img.offset_data + 4 * MiB);
    assert_blocks(&img, 4);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

/* Same with EIO, then the image closed before anything else is written:
 * the reopened image finds the hole and fills it first. */
static void test_hole_is_reused_after_reopen(void **state)
{
    (void)state;
    BlockDriverState *f = vdi_test_make_file(4 * MiB, false);
    VdiTestImage img = vdi_test_open(f, BDRV_O_RDWR);

    bdrv_ref(f);
    fail_first_of_four(&img, -EIO);
    vdi_test_close(&img);

    img = vdi_test_open(f, BDRV_O_RDWR);
    assert_non_null(img.bs);
    write_block(&img, 2);
    assert_int_equal(slot_of_block(&img, 2), 0);
    assert_int_equal(mem_size(f), img.offset_data + 4 * MiB);
    assert_blocks(&img, 4);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

/*
 * Four allocations in flight; the first map write and its retry fail.  The
 * sector may or may not hold the entry, so it is rewritten from memory
 * before a slot is handed out again; then the slot is reused.
 */
static void test_map_write_failure_in_flight(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[4][4096];
    struct iovec iov[4];
    IOVector q[4];
    Writer w[4];
    int pending = 4, failed = -1;

    mem_inject_error(img.file, MEM_OP_WRITE, 512, 512, -EIO, 2);
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_FLUSH));
    for (int b = 0; b < 4; b++) {
        memset(data[b], b + 1, sizeof(data[b]));
        iov[b] = (struct iovec){ data[b], sizeof(data[b]) };
        iov_init_external(&q[b], &iov[b], 1);
        w[b] = (Writer){ img.child, (int64_t)b * MiB, &q[b], 1, &pending };
        co_enter(co_create(writer_co, &w[b]));
    }
    run_until_done(&pending);
    mem_set_yield(img.file, 0);
    for (int b = 0; b < 4; b++) {
        if (w[b].ret < 0) {
            assert_int_equal(w[b].ret, -EIO);
            assert_int_equal(failed, -1);
            failed = b;
        }
        iov_destroy(&q[b]);
    }
    assert_true(failed >= 0);
    assert_int_equal(vdi_test_entry(img.file, failed), VDI_UNALLOCATED);

    mem_log_clear(img.file);
    write_block(&img, failed);
    /* the map sector first, then the data of the reused slot */
    assert_int_equal(mem_log(img.file, MEM_OP_WRITE, 0)->offset, 512);
    assert_true(mem_log(img.file, MEM_OP_WRITE, 1)->offset < (int64_t)(img.offset_data + 4 * MiB));
    assert_int_equal(mem_size(img.file), img.offset_data + 4 * MiB);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 4);
    assert_blocks(&img, 4);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

/* One transient map-write error costs nothing: the retry publishes the
 * block, the write succeeds and no slot is lost. */
static void test_map_write_transient_error_retried(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);

    mem_inject_error(img.file, MEM_OP_WRITE, 512, 512, -EIO, 1);
    write_block(&img, 1);
    assert_int_equal(slot_of_block(&img, 1), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 1);
    write_block(&img, 0);
    assert_int_equal(slot_of_block(&img, 0), 1);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

/* A map sector that cannot be rewritten: no slot is handed out (the disk
 * might name it for another block), allocating writes fail, in-place writes
 * work; once the map can be written again all is as before. */
static void test_unknown_map_sector_blocks_allocation(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[4096] = { 0 };

    write_block(&img, 0);
    mem_inject_error(img.file, MEM_OP_WRITE, 512, 512, -EIO, 3);
    assert_int_equal(bdrv_pwrite(img.child, MiB, sizeof(data), data, 0), -EIO);
    mem_log_clear(img.file);
    assert_int_equal(bdrv_pwrite(img.child, 2 * MiB, sizeof(data), data, 0), -EIO);
    assert_int_equal(writes_of_data(img.file, img.offset_data), 0);
    write_block(&img, 0);                 /* in place */
    write_block(&img, 1);
    write_block(&img, 2);
    write_block(&img, 3);
    assert_int_equal(mem_size(img.file), img.offset_data + 4 * MiB);
    assert_blocks(&img, 4);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

/* Every data write fails ENOSPC (a full host file system): each slot goes
 * back, the file does not grow, the image stays clean, and once space is
 * back the disk fills up completely. */
static void test_enospc_everywhere_rolls_back(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[4][4096];
    struct iovec iov[4];
    IOVector q[4];
    Writer w[4];
    int pending = 4;

    mem_inject_error(img.file, MEM_OP_WRITE, img.offset_data, 4 * MiB, -ENOSPC, 4);
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_FLUSH));
    for (int b = 0; b < 4; b++) {
        memset(data[b], b + 1, sizeof(data[b]));
        iov[b] = (struct iovec){ data[b], sizeof(data[b]) };
        iov_init_external(&q[b], &iov[b], 1);
        w[b] = (Writer){ img.child, (int64_t)b * MiB, &q[b], 1, &pending };
        co_enter(co_create(writer_co, &w[b]));
    }
    run_until_done(&pending);
    mem_set_yield(img.file, 0);
    for (int b = 0; b < 4; b++) {
        assert_int_equal(w[b].ret, -ENOSPC);
        assert_int_equal(vdi_test_entry(img.file, b), VDI_UNALLOCATED);
        iov_destroy(&q[b]);
    }
    assert_int_equal(mem_size(img.file), img.offset_data);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 0);
    assert_int_equal(check_corruptions(&img), 0);
    for (int b = 3; b >= 0; b--) {
        write_block(&img, b);
        assert_int_equal(slot_of_block(&img, b), 3 - b);
    }
    assert_blocks(&img, 4);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

/* The write of header and map fails: once is retried at no cost; twice
 * fails the request with nothing published (the slot goes back), flush
 * rewrites the header from memory, and reports the failure if the header
 * still cannot be written. */
static void test_header_write_failure_retried_by_flush(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    uint8_t data[4096];

    mem_inject_error(img.file, MEM_OP_WRITE, 0, 512, -EIO, 1);
    write_block(&img, 0);
    assert_int_equal(slot_of_block(&img, 0), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 1);

    mem_inject_error(img.file, MEM_OP_WRITE, 0, 512, -EIO, 2);
    memset(data, 2, sizeof(data));
    assert_int_equal(bdrv_pwrite(img.child, MiB, sizeof(data), data, 0), -EIO);
    assert_int_equal(vdi_test_entry(img.file, 1), VDI_UNALLOCATED);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 1);
    mem_inject_error(img.file, MEM_OP_WRITE, 0, 512, -EIO, 1);
    assert_int_equal(bdrv_flush(img.bs), -EIO);
    assert_int_equal(bdrv_flush(img.bs), 0);
    write_block(&img, 1);
    write_block(&img, 2);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 3);
    assert_int_equal(bdrv_flush(img.bs), 0);
    assert_blocks(&img, 3);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

/* Allocations publish in slot order: slot 0's data goes out in eight
 * writes (a 256-buffer vector) and finishes long after the others have
 * theirs durable, yet no header+map write happens before its last one, so
 * the disk never counts slots 1..3 while slot 0's entry is missing. */
static void test_publish_in_slot_order(void **state)
{
    (void)state;
    VdiTestImage img = vdi_test_open(vdi_test_make_file(4 * MiB, false), BDRV_O_RDWR);
    enum { NV = 256, PIECE = 4096 };
    static uint8_t long_data[NV * PIECE];
    uint8_t small[3][4096];
    struct iovec long_iov[NV], small_iov[3];
    IOVector q[4];
    Writer w[4];
    int pending = 4;
    const int blocks[4] = { 2, 0, 1, 3 };

    memset(long_data, 3, sizeof(long_data));
    for (int i = 0; i < NV; i++) {
        long_iov[i] = (struct iovec){ long_data + i * PIECE, PIECE };
    }
    iov_init_external(&q[0], long_iov, NV);
    for (int i = 0; i < 3; i++) {
        memset(small[i], blocks[i + 1] + 1, sizeof(small[i]));
        small_iov[i] = (struct iovec){ small[i], sizeof(small[i]) };
        iov_init_external(&q[i + 1], &small_iov[i], 1);
    }
    mem_log_clear(img.file);
    mem_set_yield(img.file, (1u << MEM_OP_WRITE) | (1u << MEM_OP_FLUSH));
    for (int i = 0; i < 4; i++) {
        w[i] = (Writer){ img.child, (int64_t)blocks[i] * MiB, &q[i], 1, &pending };
        co_enter(co_create(writer_co, &w[i]));
    }
    run_until_done(&pending);
    mem_set_yield(img.file, 0);
    int last_slot0 = -1, first_meta = -1;
    for (int i = 0; mem_log(img.file, MEM_OP_WRITE, i); i++) {
        const MemLogEntry *e = mem_log(img.file, MEM_OP_WRITE, i);
        if (e->offset == (int64_t)img.offset_data + 7 * 32 * PIECE) {
            last_slot0 = i;
        }
        if (e->offset == 0 && first_meta < 0) {
            first_meta = i;
        }
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(w[i].ret, 0);
        iov_destroy(&q[i]);
    }
    assert_true(last_slot0 >= 0);
    assert_true(first_meta > last_slot0);
    assert_int_equal(slot_of_block(&img, 2), 0);
    assert_int_equal(vdi_test_hdr32(img.file, VDI_OFF_BLOCKS_ALLOCATED), 4);
    assert_int_equal(check_corruptions(&img), 0);
    vdi_test_close(&img);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_write_failure_slot_is_reused),
        cmocka_unit_test(test_hole_is_reused_after_reopen),
        cmocka_unit_test(test_map_write_failure_in_flight),
        cmocka_unit_test(test_map_write_transient_error_retried),
        cmocka_unit_test(test_unknown_map_sector_blocks_allocation),
        cmocka_unit_test(test_enospc_everywhere_rolls_back),
        cmocka_unit_test(test_header_write_failure_retried_by_flush),
        cmocka_unit_test(test_publish_in_slot_order),
    };
    return cmocka_run_group_tests_name("vdi-alloc-fail", tests, NULL, NULL);
}
