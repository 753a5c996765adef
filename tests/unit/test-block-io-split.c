/*
 * test-block-io-split.c - max_transfer splitting of reads/writes (FUA is in
 * test-block-io-fua.c).
 */
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

static void test_read_write_split_at_max_transfer(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 1 * MiB, .request_alignment = 512, .max_transfer = 4096 };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    uint8_t *buf = malloc(10000), *back = malloc(10000);
    test_pattern(buf, 10000, 7);
    assert_int_equal(bdrv_pwrite(c, 4096, 10000, buf, 0), 0);
    /* padded to 4096..14336 (10240 bytes): 4096 + 4096 + 2048 */
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 3);
    for (int i = 0; i < 3; i++) {
        const MemLogEntry *e = mem_log(bs, MEM_OP_WRITE, i);
        assert_int_equal(e->offset, 4096 + 4096 * i);
        assert_true(e->bytes <= 4096);
    }
    mem_log_clear(bs);
    assert_int_equal(bdrv_pread(c, 4096, 10000, back, 0), 0);
    assert_memory_equal(buf, back, 10000);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 3);
    free(buf);
    free(back);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_write_split_at_max_transfer),
    };
    return cmocka_run_group_tests_name("block-io-split", tests, NULL, NULL);
}
