/*
 * test-block-io-align.c - byte-granular I/O on a node with a
 * request_alignment: what the driver is asked for (aligned ranges only,
 * head/tail read-modify-write) and that the data comes out right.
 */
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "test-util.h"
#include "../../io/block-io-int.h"

static BlockDriverState *aligned_node(uint32_t align, int64_t size)
{
    MemConfig cfg = { .size = size, .request_alignment = align };
    BlockDriverState *bs = mem_node_new(&cfg);
    uint8_t *pat = malloc(size);
    test_pattern(pat, size, 1);
    mem_write_raw(bs, 0, pat, size);
    free(pat);
    return bs;
}

static void test_unaligned_read_is_padded(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(512, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t expect[64 * KiB], buf[1000];
    mem_read_raw(bs, 0, expect, sizeof(expect));

    assert_int_equal(bdrv_pread(c, 700, 1000, buf, 0), 0);
    assert_memory_equal(buf, expect + 700, 1000);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    const MemLogEntry *e = mem_log(bs, MEM_OP_READ, 0);
    assert_int_equal(e->offset, 512);
    assert_int_equal(e->bytes, 1536);   /* 512..2048 covers 700..1700 */
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_aligned_read_goes_straight(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(4096, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[8192], expect[8192];
    mem_read_raw(bs, 4096, expect, sizeof(expect));
    assert_int_equal(bdrv_pread(c, 4096, 8192, buf, 0), 0);
    assert_memory_equal(buf, expect, sizeof(buf));
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->offset, 4096);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->bytes, 8192);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_unaligned_write_rmw(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(512, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t before[64 * KiB], after[64 * KiB], data[1500];
    mem_read_raw(bs, 0, before, sizeof(before));
    memset(data, 0xab, sizeof(data));

    /* 100..1600: head block 0..512 and tail block 1536..2048 are partial */
    assert_int_equal(bdrv_pwrite(c, 100, sizeof(data), data, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 2);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->offset, 0);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->bytes, 512);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 1)->offset, 1536);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 1)->bytes, 512);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->offset, 0);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->bytes, 2048);

    mem_read_raw(bs, 0, after, sizeof(after));
    assert_memory_equal(after, before, 100);
    assert_true(test_buf_is(after + 100, 1500, 0xab));
    assert_memory_equal(after + 1600, before + 1600, sizeof(after) - 1600);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_unaligned_write_within_one_block_reads_once(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(4096, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t before[4096], after[4096], data[10] = "0123456789";
    mem_read_raw(bs, 8192, before, sizeof(before));
    assert_int_equal(bdrv_pwrite(c, 8192 + 3000, 10, data, 0), 0);
    /* head and tail in the same block: one read of it, one write */
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->offset, 8192);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->bytes, 4096);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->bytes, 4096);
    mem_read_raw(bs, 8192, after, sizeof(after));
    memcpy(before + 3000, data, 10);
    assert_memory_equal(after, before, sizeof(after));
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_aligned_write_no_rmw(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(512, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t data[1024];
    memset(data, 7, sizeof(data));
    assert_int_equal(bdrv_pwrite(c, 512, sizeof(data), data, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);
    test_child_free(c);
    bdrv_unref(bs);
}

typedef struct {
    BdrvChild *c;
    IOVector *q;
    int64_t offset, bytes;
    size_t qoff;
    int ret;
} PartReq;

static void coroutine_fn read_part(void *opaque)
{
    PartReq *r = opaque;
    r->ret = bdrv_co_preadv_part(r->c, r->offset, r->bytes, r->q, r->qoff, 0);
}

/* A fragmented caller vector with a qiov_offset: the caller's buffers are
 * filled in place, around the bounce head/tail. */
static void test_multi_iov_with_offset(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(512, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t expect[64 * KiB], a[300], b[17], d[900];
    mem_read_raw(bs, 0, expect, sizeof(expect));
    IOVector q;
    iov_init(&q, 3);
    iov_add(&q, a, sizeof(a));
    iov_add(&q, b, sizeof(b));
    iov_add(&q, d, sizeof(d));
    /* skip the first 50 bytes of the vector; read 1000 bytes at 1234 */
    PartReq r = { c, &q, 1234, 1000, 50, -1 };
    test_run_co(read_part, &r);
    assert_int_equal(r.ret, 0);
    uint8_t got[1000];
    iov_to_buf(&q, 50, got, 1000);
    assert_memory_equal(got, expect + 1234, 1000);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->offset, 1024);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->bytes, 1536);
    iov_destroy(&q);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_zero_length_is_noop(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(512, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t x;
    assert_int_equal(bdrv_pread(c, 3, 0, &x, 0), 0);
    assert_int_equal(bdrv_pwrite(c, 3, 0, &x, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ) + mem_calls(bs, MEM_OP_WRITE), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_rmw_read_error_fails_write(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(512, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t data[10] = { 0 };
    mem_inject_error(bs, MEM_OP_READ, 0, 0, -EIO, 1);
    assert_int_equal(bdrv_pwrite(c, 5, 10, data, 0), -EIO);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 0);
    assert_int_equal(bdrv_in_flight(bs), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

/* A padding buffer that cannot be had fails that request with -ENOMEM (the
 * request path never aborts on allocation), touches nothing, and the next
 * request works. */
static void test_bounce_alloc_failure_is_enomem(void **state)
{
    (void)state;
    BlockDriverState *bs = aligned_node(512, 64 * KiB);
    BdrvChild *c = test_child_new(bs);
    uint8_t before[64 * KiB], after[64 * KiB], buf[1000];
    mem_read_raw(bs, 0, before, sizeof(before));

    atomic_store(&bdrv_bounce_fail_next, 1);
    assert_int_equal(bdrv_pread(c, 700, 1000, buf, 0), -ENOMEM);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 0);
    memset(buf, 0xab, sizeof(buf));
    atomic_store(&bdrv_bounce_fail_next, 1);
    assert_int_equal(bdrv_pwrite(c, 700, 1000, buf, 0), -ENOMEM);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 0);
    atomic_store(&bdrv_bounce_fail_next, 1);
    assert_int_equal(bdrv_pwrite_zeroes(c, 700, 1000, 0), -ENOMEM);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE) + mem_calls(bs, MEM_OP_ZEROES), 0);
    mem_read_raw(bs, 0, after, sizeof(after));
    assert_memory_equal(after, before, sizeof(after));

    assert_int_equal(atomic_load(&bdrv_bounce_fail_next), 0);
    assert_int_equal(bdrv_pwrite(c, 700, 1000, buf, 0), 0);
    mem_read_raw(bs, 700, after, 1000);
    assert_memory_equal(after, buf, 1000);

    /* Through a BlockBackend, whose admission holds the in-flight count:
     * the failed request gives back exactly that one (it used to drop a
     * second, wrapping the count, and every later drain hung). */
    BlockBackend *blk = blk_new_with_bs(bs, NULL);
    assert_non_null(blk);
    atomic_store(&bdrv_bounce_fail_next, 1);
    assert_int_equal(blk_pread(blk, 700, 1000, buf, 0), -ENOMEM);
    atomic_store(&bdrv_bounce_fail_next, 1);
    assert_int_equal(blk_pwrite(blk, 700, 1000, buf, 0), -ENOMEM);
    assert_int_equal(bdrv_in_flight(bs), 0);
    bdrv_drain(bs);
    blk_unref(blk);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unaligned_read_is_padded),
        cmocka_unit_test(test_aligned_read_goes_straight),
        cmocka_unit_test(test_unaligned_write_rmw),
        cmocka_unit_test(test_unaligned_write_within_one_block_reads_once),
        cmocka_unit_test(test_aligned_write_no_rmw),
        cmocka_unit_test(test_multi_iov_with_offset),
        cmocka_unit_test(test_zero_length_is_noop),
        cmocka_unit_test(test_rmw_read_error_fails_write),
        cmocka_unit_test(test_bounce_alloc_failure_is_enomem),
    };
    return cmocka_run_group_tests_name("block-io-align", tests, NULL, NULL);
}
