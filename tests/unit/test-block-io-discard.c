/*
 * test-block-io-discard.c - the discard policy: ignored by default
 * (discard=ignore), with discard=unmap only whole pdiscard_alignment blocks
 * go to the driver in pieces of at most max_pdiscard; -ENOTSUP from the
 * driver is success, other errors are not.
 */
#include <errno.h>
#include "test-util.h"

typedef struct {
    BdrvChild *c;
    int64_t offset, bytes;
    int ret;
} DiscardReq;

static void coroutine_fn do_discard(void *opaque)
{
    DiscardReq *d = opaque;
    d->ret = bdrv_co_pdiscard(d->c, d->offset, d->bytes);
}

static int discard(BdrvChild *c, int64_t offset, int64_t bytes)
{
    DiscardReq d = { c, offset, bytes, -1 };
    test_run_co(do_discard, &d);
    return d.ret;
}

static void test_discard_ignore_by_default(void **state)
{
    (void)state;
    BlockDriverState *bs = mem_node_new(NULL);
    mem_fill(bs, 0, 8192, 0x55);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(discard(c, 0, 8192), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_DISCARD), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_discard_unmap_aligned_and_split(void **state)
{
    (void)state;
    MemConfig cfg = { .open_flags = BDRV_O_UNMAP, .pdiscard_alignment = 4096,
                      .max_pdiscard = 8192 };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    /* 1000 .. 30000: whole 4 KiB blocks are 4096 .. 28672 */
    assert_int_equal(discard(c, 1000, 29000), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_DISCARD), 3);
    assert_int_equal(mem_log(bs, MEM_OP_DISCARD, 0)->offset, 4096);
    assert_int_equal(mem_log(bs, MEM_OP_DISCARD, 0)->bytes, 8192);
    assert_int_equal(mem_log(bs, MEM_OP_DISCARD, 2)->offset, 20480);
    assert_int_equal(mem_log(bs, MEM_OP_DISCARD, 2)->bytes, 8192);
    assert_int_equal(mem_bytes(bs, MEM_OP_DISCARD), 28672 - 4096);
    /* smaller than one aligned block: nothing to do */
    mem_log_clear(bs);
    assert_int_equal(discard(c, 100, 3000), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_DISCARD), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_discard_enotsup_is_success(void **state)
{
    (void)state;
    MemConfig cfg = { .open_flags = BDRV_O_UNMAP, .discard_enotsup = true };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(discard(c, 0, 4096), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_DISCARD), 1);
    mem_inject_error(bs, MEM_OP_DISCARD, 0, 0, -EIO, 1);
    assert_int_equal(discard(c, 0, 4096), -EIO);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_discard_ignore_by_default),
        cmocka_unit_test(test_discard_unmap_aligned_and_split),
        cmocka_unit_test(test_discard_enotsup_is_success),
    };
    return cmocka_run_group_tests_name("block-io-discard", tests, NULL, NULL);
}
