/*
 * test-block-io-fua.c - FUA: passed down where the driver has it natively,
 * emulated by one flush after the last piece where it has not (never skipped
 * because of an earlier flush), and added to every write in writethrough mode.
 */
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

static void test_native_fua_passed_down(void **state)
{
    (void)state;
    MemConfig cfg = { .write_flags = BDRV_REQ_FUA };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    uint8_t b[512] = { 1 };
    assert_int_equal(bdrv_pwrite(c, 0, 512, b, BDRV_REQ_FUA), 0);
    assert_true(mem_log(bs, MEM_OP_WRITE, 0)->flags & BDRV_REQ_FUA);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_fua_emulated_by_one_flush(void **state)
{
    (void)state;
    MemConfig cfg = { .max_transfer = 4096 };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    uint8_t *b = calloc(1, 12288);
    assert_int_equal(bdrv_pwrite(c, 0, 12288, b, BDRV_REQ_FUA), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 3);
    for (int i = 0; i < 3; i++) {
        assert_false(mem_log(bs, MEM_OP_WRITE, i)->flags & BDRV_REQ_FUA);
    }
    /* one flush, after the last piece */
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 1);
    free(b);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_fua_flush_not_skipped_after_earlier_flush(void **state)
{
    (void)state;
    BlockDriverState *bs = mem_node_new(NULL);
    BdrvChild *c = test_child_new(bs);
    uint8_t b[512] = { 0 };
    assert_int_equal(bdrv_flush(bs), 0);
    int before = mem_calls(bs, MEM_OP_FLUSH);
    assert_int_equal(bdrv_pwrite(c, 0, 512, b, BDRV_REQ_FUA), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), before + 1);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_writethrough_adds_fua(void **state)
{
    (void)state;
    MemConfig cfg = { .open_flags = BDRV_O_WRITETHROUGH, .write_flags = BDRV_REQ_FUA };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    uint8_t b[512] = { 0 };
    assert_int_equal(bdrv_pwrite(c, 0, 512, b, 0), 0);
    assert_true(mem_log(bs, MEM_OP_WRITE, 0)->flags & BDRV_REQ_FUA);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_native_fua_passed_down),
        cmocka_unit_test(test_fua_emulated_by_one_flush),
        cmocka_unit_test(test_fua_flush_not_skipped_after_earlier_flush),
        cmocka_unit_test(test_writethrough_adds_fua),
    };
    return cmocka_run_group_tests_name("block-io-fua", tests, NULL, NULL);
}
