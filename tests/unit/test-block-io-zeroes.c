/*
 * test-block-io-zeroes.c - write-zeroes (driver callback, MAY_UNMAP only
 * with BDRV_O_UNMAP, -ENOTSUP fallback to bounded zero-buffer writes,
 * NO_FALLBACK, unaligned head/tail, max_pwrite_zeroes).  Detect-zeroes and
 * discard have their own files.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

static void test_zeroes_use_driver_and_unmap_policy(void **state)
{
    (void)state;
    MemConfig cfg = { .zero_flags = BDRV_REQ_MAY_UNMAP };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x55);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite_zeroes(c, 4096, 8192, BDRV_REQ_MAY_UNMAP), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_ZEROES), 1);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 0);
    /* discard=ignore: MAY_UNMAP is dropped */
    assert_false(mem_log(bs, MEM_OP_ZEROES, 0)->flags & BDRV_REQ_MAY_UNMAP);
    uint8_t buf[8192];
    mem_read_raw(bs, 4096, buf, sizeof(buf));
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    test_child_free(c);
    bdrv_unref(bs);

    cfg.open_flags = BDRV_O_UNMAP;
    bs = mem_node_new(&cfg);
    c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 4096, BDRV_REQ_MAY_UNMAP), 0);
    assert_true(mem_log(bs, MEM_OP_ZEROES, 0)->flags & BDRV_REQ_MAY_UNMAP);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_zeroes_fallback_in_bounded_chunks(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 4 * MiB, .zeroes_enotsup = true };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 4 * MiB, 0x55);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 3 * MiB, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 3);
    for (int i = 0; i < 3; i++) {
        assert_true(mem_log(bs, MEM_OP_WRITE, i)->bytes <= (int64_t)MiB);
    }
    uint8_t *buf = malloc(4 * MiB);
    mem_read_raw(bs, 0, buf, 4 * MiB);
    assert_true(test_buf_is(buf, 3 * MiB, 0));
    assert_true(test_buf_is(buf + 3 * MiB, MiB, 0x55));
    free(buf);
    test_child_free(c);
    bdrv_unref(bs);

    /* no callback at all, and max_transfer below 1 MiB bounds the chunks */
    cfg = (MemConfig){ .size = 1 * MiB, .callbacks = MEM_NO_ZEROES_CB, .max_transfer = 65536 };
    bs = mem_node_new(&cfg);
    c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 200000, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 4);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->bytes, 65536);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_zeroes_no_fallback(void **state)
{
    (void)state;
    MemConfig cfg = { .zeroes_enotsup = true };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 4096, BDRV_REQ_NO_FALLBACK), -ENOTSUP);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_zeroes_unaligned_head_tail(void **state)
{
    (void)state;
    MemConfig cfg = { .request_alignment = 512, .pwrite_zeroes_alignment = 4096 };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x55);
    BdrvChild *c = test_child_new(bs);
    /* 100 .. 20000: partial blocks 0..512 and 19968..20480 are RMW data
     * writes; between them zeroes pieces split at 4096 boundaries */
    assert_int_equal(bdrv_pwrite_zeroes(c, 100, 19900, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 2);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->offset, 0);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 1)->offset, 19968);
    for (int i = 0; i < mem_calls(bs, MEM_OP_ZEROES); i++) {
        const MemLogEntry *e = mem_log(bs, MEM_OP_ZEROES, i);
        /* an unaligned piece never crosses a 4096 boundary */
        assert_true(e->offset % 4096 == 0 || e->offset / 4096 == (e->offset + e->bytes - 1) / 4096);
    }
    assert_int_equal(mem_log(bs, MEM_OP_ZEROES, 0)->offset, 512);
    assert_int_equal(mem_log(bs, MEM_OP_ZEROES, 0)->bytes, 4096 - 512);
    uint8_t buf[21000];
    mem_read_raw(bs, 0, buf, sizeof(buf));
    assert_true(test_buf_is(buf, 100, 0x55));
    assert_true(test_buf_is(buf + 100, 19900, 0));
    assert_true(test_buf_is(buf + 20000, sizeof(buf) - 20000, 0x55));
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_zeroes_split_at_max_pwrite_zeroes(void **state)
{
    (void)state;
    MemConfig cfg = { .max_pwrite_zeroes = 8192 };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 20000, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_ZEROES), 3);
    assert_int_equal(mem_bytes(bs, MEM_OP_ZEROES), 20000);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zeroes_use_driver_and_unmap_policy),
        cmocka_unit_test(test_zeroes_fallback_in_bounded_chunks),
        cmocka_unit_test(test_zeroes_no_fallback),
        cmocka_unit_test(test_zeroes_unaligned_head_tail),
        cmocka_unit_test(test_zeroes_split_at_max_pwrite_zeroes),
    };
    return cmocka_run_group_tests_name("block-io-zeroes", tests, NULL, NULL);
}
