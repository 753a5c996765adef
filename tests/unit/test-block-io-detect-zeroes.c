/*
 * test-block-io-detect-zeroes.c - detect-zeroes: off writes zero buffers as
 * data, on turns them into write-zeroes, unmap adds MAY_UNMAP but only with
 * discard=unmap (BDRV_O_UNMAP).
 */
#include <string.h>
#include "test-util.h"

static void test_detect_zeroes(void **state)
{
    (void)state;
    uint8_t zeros[4096] = { 0 }, data[4096];
    memset(data, 1, sizeof(data));
    for (int mode = BDRV_DETECT_ZEROES_OFF; mode <= BDRV_DETECT_ZEROES_UNMAP; mode++) {
        MemConfig cfg = { .open_flags = BDRV_O_UNMAP, .zero_flags = BDRV_REQ_MAY_UNMAP };
        BlockDriverState *bs = mem_node_new(&cfg);
        bs->detect_zeroes = mode;
        BdrvChild *c = test_child_new(bs);
        assert_int_equal(bdrv_pwrite(c, 0, 4096, zeros, 0), 0);
        assert_int_equal(bdrv_pwrite(c, 4096, 4096, data, 0), 0);
        if (mode == BDRV_DETECT_ZEROES_OFF) {
            assert_int_equal(mem_calls(bs, MEM_OP_ZEROES), 0);
            assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 2);
        } else {
            assert_int_equal(mem_calls(bs, MEM_OP_ZEROES), 1);
            assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);   /* the data */
            bool unmap = mem_log(bs, MEM_OP_ZEROES, 0)->flags & BDRV_REQ_MAY_UNMAP;
            assert_int_equal(unmap, mode == BDRV_DETECT_ZEROES_UNMAP);
        }
        test_child_free(c);
        bdrv_unref(bs);
    }
}

static void test_detect_zeroes_unmap_needs_discard_unmap(void **state)
{
    (void)state;
    uint8_t zeros[4096] = { 0 };
    MemConfig cfg = { .zero_flags = BDRV_REQ_MAY_UNMAP };
    BlockDriverState *bs = mem_node_new(&cfg);
    bs->detect_zeroes = BDRV_DETECT_ZEROES_UNMAP;
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite(c, 0, 4096, zeros, 0), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_ZEROES), 1);
    assert_false(mem_log(bs, MEM_OP_ZEROES, 0)->flags & BDRV_REQ_MAY_UNMAP);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect_zeroes),
        cmocka_unit_test(test_detect_zeroes_unmap_needs_discard_unmap),
    };
    return cmocka_run_group_tests_name("block-io-detect-zeroes", tests, NULL, NULL);
}
