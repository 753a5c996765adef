/*
 * test-block-io-cor.c - copy-on-read over a backing chain: reads of clusters
 * the top does not allocate copy them up (whole clusters, zero clusters as
 * write-zeroes), from the open flag or the per-request flag.
 */
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

static void test_copy_on_read(void **state)
{
    (void)state;
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 64 * KiB, true);
    BdrvChild *c = test_child_new(top);
    uint8_t buf[100];
    assert_int_equal(bdrv_pread(c, 5000, 100, buf, 0), 0);
    assert_true(test_buf_is(buf, 100, 0xba));
    /* the whole cluster 4096..8192 was written into the top */
    assert_int_equal(mem_calls(top, MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(top, MEM_OP_WRITE, 0)->offset, 4096);
    assert_int_equal(mem_log(top, MEM_OP_WRITE, 0)->bytes, 4096);
    assert_int_equal(mem_get_status(top, 4096), MEM_DATA);
    assert_int_equal(mem_get_status(top, 8192), MEM_UNALLOC);
    /* a second read finds it allocated: no more copying, base untouched */
    int base_reads = mem_calls(base, MEM_OP_READ);
    assert_int_equal(bdrv_pread(c, 5000, 100, buf, 0), 0);
    assert_int_equal(mem_calls(top, MEM_OP_WRITE), 1);
    assert_int_equal(mem_calls(base, MEM_OP_READ), base_reads);
    test_child_free(c);
    bdrv_unref(top);
    bdrv_unref(base);
}

static void test_copy_on_read_request_flag_and_zero_clusters(void **state)
{
    (void)state;
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 64 * KiB, false);
    mem_fill(base, 16384, 4096, 0);
    BdrvChild *c = test_child_new(top);
    uint8_t buf[8192];
    /* without the flag: no copy */
    assert_int_equal(bdrv_pread(c, 12288, 8192, buf, 0), 0);
    assert_int_equal(mem_calls(top, MEM_OP_WRITE) + mem_calls(top, MEM_OP_ZEROES), 0);
    assert_int_equal(bdrv_pread(c, 12288, 8192, buf, BDRV_REQ_COPY_ON_READ), 0);
    assert_true(test_buf_is(buf, 4096, 0xba));
    assert_true(test_buf_is(buf + 4096, 4096, 0));
    /* one unallocated run: copied as one data write */
    assert_int_equal(mem_calls(top, MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(top, MEM_OP_WRITE, 0)->bytes, 8192);
    /* a run that is all zeros in the base is copied as write-zeroes */
    mem_fill(base, 32768, 4096, 0);
    assert_int_equal(bdrv_pread(c, 32768, 4096, buf, BDRV_REQ_COPY_ON_READ), 0);
    assert_int_equal(mem_calls(top, MEM_OP_WRITE), 1);
    assert_int_equal(mem_calls(top, MEM_OP_ZEROES), 1);
    assert_int_equal(mem_log(top, MEM_OP_ZEROES, 0)->offset, 32768);
    assert_int_equal(mem_get_status(top, 32768), MEM_ZERO);
    test_child_free(c);
    bdrv_unref(top);
    bdrv_unref(base);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_on_read),
        cmocka_unit_test(test_copy_on_read_request_flag_and_zero_clusters),
    };
    return cmocka_run_group_tests_name("block-io-cor", tests, NULL, NULL);
}
