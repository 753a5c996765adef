/*
 * test-block-io-chain.c - behaviour over a backing chain: block status
 * (single layer and above), zeros beyond a shorter backing, growable reads
 * past EOF.  Copy-on-read is in test-block-io-cor.c.
 */
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

typedef struct {
    BlockDriverState *bs, *base;
    int64_t offset, bytes, pnum, map;
    BlockDriverState *file;
    int ret;
    bool above;
} StatusReq;

static void coroutine_fn do_status(void *opaque)
{
    StatusReq *r = opaque;
    if (r->above) {
        r->ret = bdrv_co_block_status_above(r->bs, r->base, r->offset, r->bytes, &r->pnum,
                                            &r->map, &r->file, NULL);
    } else {
        r->ret = bdrv_co_block_status(r->bs, r->offset, r->bytes, &r->pnum, &r->map, &r->file);
    }
}

static StatusReq status(BlockDriverState *bs, bool above, int64_t offset, int64_t bytes)
{
    StatusReq r = { .bs = bs, .offset = offset, .bytes = bytes, .above = above };
    test_run_co(do_status, &r);
    return r;
}

static void test_status_protocol_without_callback(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 64 * KiB, .callbacks = MEM_NO_STATUS_CB };
    BlockDriverState *bs = mem_node_new(&cfg);
    StatusReq r = status(bs, false, 4096, 100 * KiB);
    assert_int_equal(r.ret, BDRV_BLOCK_DATA | BDRV_BLOCK_ALLOCATED | BDRV_BLOCK_OFFSET_VALID |
                            BDRV_BLOCK_EOF);
    assert_int_equal(r.pnum, 60 * KiB);
    assert_int_equal(r.map, 4096);
    assert_ptr_equal(r.file, bs);
    r = status(bs, false, 64 * KiB, 512);
    assert_int_equal(r.ret, BDRV_BLOCK_EOF);
    assert_int_equal(r.pnum, 0);
    bdrv_unref(bs);
}

static void test_status_map_and_alignment(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 64 * KiB, .request_alignment = 4096 };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_set_status(bs, 8192, 8192, MEM_ZERO);
    StatusReq r = status(bs, false, 100, 64 * KiB);
    assert_true(r.ret & BDRV_BLOCK_DATA);
    assert_true(r.ret & BDRV_BLOCK_ALLOCATED);
    assert_int_equal(r.pnum, 8192 - 100);
    assert_int_equal(r.map, 100);
    /* the driver was asked for the aligned range */
    assert_int_equal(mem_log(bs, MEM_OP_STATUS, 0)->offset, 0);
    r = status(bs, false, 8192, 64 * KiB);
    assert_true(r.ret & BDRV_BLOCK_ZERO);
    assert_true(r.ret & BDRV_BLOCK_ALLOCATED);
    assert_int_equal(r.pnum, 8192);
    bdrv_unref(bs);
}

static void test_status_above_through_backing(void **state)
{
    (void)state;
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 32 * KiB, false);
    mem_set_status(top, 0, 4096, MEM_DATA);
    /* top allocates 0..4096 */
    StatusReq r = status(top, true, 0, 64 * KiB);
    assert_true(r.ret & BDRV_BLOCK_ALLOCATED);
    assert_int_equal(r.pnum, 4096);
    assert_ptr_equal(r.file, top);
    /* 4096..32768 comes from the base */
    r = status(top, true, 4096, 64 * KiB);
    assert_true(r.ret & BDRV_BLOCK_DATA);
    assert_int_equal(r.pnum, 32 * KiB - 4096);
    assert_ptr_equal(r.file, base);
    /* beyond the base's end: zeros, allocated (synthesised by the base) */
    r = status(top, true, 40 * KiB, 4096);
    assert_true(r.ret & BDRV_BLOCK_ZERO);
    assert_true(r.ret & BDRV_BLOCK_ALLOCATED);
    /* top alone: unallocated, and ZERO beyond the backing's end */
    r = status(top, false, 4096, 4096);
    assert_false(r.ret & BDRV_BLOCK_ALLOCATED);
    assert_false(r.ret & BDRV_BLOCK_ZERO);
    r = status(top, false, 40 * KiB, 4096);
    assert_true(r.ret & BDRV_BLOCK_ZERO);
    bdrv_unref(top);
    bdrv_unref(base);
}

static void test_read_beyond_backing_eof_is_zero(void **state)
{
    (void)state;
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 10000, false);
    BdrvChild *c = test_child_new(top);
    uint8_t buf[8192];
    assert_int_equal(bdrv_pread(c, 8192, 8192, buf, 0), 0);
    assert_true(test_buf_is(buf, 10000 - 8192, 0xba));
    assert_true(test_buf_is(buf + 10000 - 8192, 8192 - (10000 - 8192), 0));
    /* the base driver never saw a read past its end */
    for (int i = 0; i < mem_calls(base, MEM_OP_READ); i++) {
        const MemLogEntry *e = mem_log(base, MEM_OP_READ, i);
        assert_true(e->offset + e->bytes <= 10000);
    }
    test_child_free(c);
    bdrv_unref(top);
    bdrv_unref(base);
}

static void test_growable_read_past_eof(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 4096, .growable = true };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 4096, 0x77);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[8192];
    assert_int_equal(bdrv_pread(c, 0, 8192, buf, 0), 0);
    assert_true(test_buf_is(buf, 4096, 0x77));
    assert_true(test_buf_is(buf + 4096, 4096, 0));
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->bytes, 4096);
    /* writing past the end grows it */
    assert_int_equal(bdrv_pwrite(c, 6000, 100, buf, 0), 0);
    assert_int_equal(bs->total_bytes, 6100);
    assert_int_equal(mem_size(bs), 6100);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_protocol_without_callback),
        cmocka_unit_test(test_status_map_and_alignment),
        cmocka_unit_test(test_status_above_through_backing),
        cmocka_unit_test(test_read_beyond_backing_eof_is_zero),
        cmocka_unit_test(test_growable_read_past_eof),
    };
    return cmocka_run_group_tests_name("block-io-chain", tests, NULL, NULL);
}
