/*
 * test-block-io-drain.c - bounds checks, flush (generations, NO_FLUSH,
 * children), truncate, in-flight counting and drain.
 */
#include <errno.h>
#include <string.h>
#include "test-util.h"

static void test_bounds_and_read_only(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 8192 };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    uint8_t b[512] = { 0 };
    assert_int_equal(bdrv_pread(c, -1, 1, b, 0), -EINVAL);
    assert_int_equal(bdrv_pwrite(c, 8000, 512, b, 0), -EIO);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 0);
    test_child_free(c);
    bdrv_unref(bs);

    cfg.read_only = true;
    bs = mem_node_new(&cfg);
    c = test_child_new(bs);
    assert_int_equal(bdrv_pwrite(c, 0, 512, b, 0), -EPERM);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 512, 0), -EPERM);
    assert_int_equal(bdrv_truncate(c, 4096, true, PREALLOC_MODE_OFF, 0, NULL), -EACCES);
    assert_int_equal(bdrv_pread(c, 0, 512, b, 0), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_flush_skips_when_clean(void **state)
{
    (void)state;
    BlockDriverState *bs = mem_node_new(NULL);
    BdrvChild *c = test_child_new(bs);
    uint8_t b[512] = { 0 };
    assert_int_equal(bdrv_pwrite(c, 0, 512, b, 0), 0);
    assert_int_equal(bdrv_flush(bs), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 1);
    assert_int_equal(bdrv_flush(bs), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 1);      /* nothing new */
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH_OS), 2);   /* always */
    assert_int_equal(bdrv_pwrite(c, 0, 512, b, 0), 0);
    mem_inject_error(bs, MEM_OP_FLUSH, 0, 0, -EIO, 1);
    assert_int_equal(bdrv_flush(bs), -EIO);
    assert_int_equal(bdrv_flush(bs), 0);                    /* retried */
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 3);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_flush_no_flush_and_children(void **state)
{
    (void)state;
    MemConfig cfg = { .open_flags = BDRV_O_NO_FLUSH };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    uint8_t b[512] = { 0 };
    assert_int_equal(bdrv_pwrite(c, 0, 512, b, 0), 0);
    assert_int_equal(bdrv_flush(bs), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH_OS), 1);
    test_child_free(c);
    bdrv_unref(bs);

    /* a format node's flush reaches its (writable) child */
    MemConfig base_cfg = { 0 };
    BlockDriverState *child = mem_node_new(&base_cfg);
    MemConfig top_cfg = { .format = true };
    BlockDriverState *top = mem_node_new(&top_cfg);
    bdrv_ref(child);
    assert_non_null(bdrv_attach_child(top, child, "file", BDRV_CHILD_FILE, NULL));
    BdrvChild *cc = test_child_new(child);
    assert_int_equal(bdrv_pwrite(cc, 0, 512, b, 0), 0);
    assert_int_equal(bdrv_flush(top), 0);
    assert_int_equal(mem_calls(child, MEM_OP_FLUSH), 1);
    test_child_free(cc);
    bdrv_unref(top);
    bdrv_unref(child);
}

static void test_truncate(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 8192 };
    BlockDriverState *bs = mem_node_new(&cfg);
    BdrvChild *c = test_child_new(bs);
    Error *err = NULL;
    assert_int_equal(bdrv_truncate(c, 16384, true, PREALLOC_MODE_OFF, 0, &err), 0);
    assert_null(err);
    assert_int_equal(bs->total_bytes, 16384);
    assert_int_equal(mem_calls(bs, MEM_OP_TRUNCATE), 1);
    uint8_t b[512] = { 0 };
    assert_int_equal(bdrv_pwrite(c, 16000, 384, b, 0), 0);
    assert_int_equal(bdrv_truncate(c, -1, true, PREALLOC_MODE_OFF, 0, &err), -EINVAL);
    assert_non_null(err);
    error_free(err);
    test_child_free(c);
    bdrv_unref(bs);
}

typedef struct {
    BdrvChild *c;
    int ret;
    bool done;
} ReadReq;

static void coroutine_fn do_read(void *opaque)
{
    ReadReq *r = opaque;
    uint8_t buf[512];
    IOVector q;
    iov_init_buf(&q, buf, sizeof(buf));
    r->ret = bdrv_co_preadv(r->c, 0, 512, &q, 0);
    r->done = true;
}

static void test_drain_waits_and_parks_new_requests(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *bs = mem_node_new(NULL);
    mem_set_yield(bs, 1 << MEM_OP_READ);
    BdrvChild *c = test_child_new(bs);
    ReadReq r1 = { c, -1, false };
    co_enter(co_create(do_read, &r1));
    assert_false(r1.done);
    assert_int_equal(bdrv_in_flight(bs), 1);
    bdrv_drained_begin(bs);          /* polls until r1 completes */
    assert_true(r1.done);
    assert_int_equal(bdrv_in_flight(bs), 0);
    ReadReq r2 = { c, -1, false };
    co_enter(co_create(do_read, &r2));
    for (int i = 0; i < 5; i++) {
        aio_poll(ctx, false);
    }
    assert_false(r2.done);           /* parked while drained */
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    bdrv_drained_end(bs);
    AIO_WAIT_WHILE(ctx, !r2.done);
    assert_int_equal(r2.ret, 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 2);
    test_child_free(c);
    bdrv_unref(bs);
}

static void coroutine_fn drain_in_co(void *opaque)
{
    BlockDriverState *bs = opaque;
    bdrv_drain(bs);
}

static void test_drain_from_coroutine(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *bs = mem_node_new(NULL);
    mem_set_yield(bs, 1 << MEM_OP_READ);
    BdrvChild *c = test_child_new(bs);
    ReadReq r1 = { c, -1, false };
    co_enter(co_create(do_read, &r1));
    test_run_co(drain_in_co, bs);
    assert_true(r1.done);
    assert_int_equal(bdrv_in_flight(bs), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds_and_read_only),
        cmocka_unit_test(test_flush_skips_when_clean),
        cmocka_unit_test(test_flush_no_flush_and_children),
        cmocka_unit_test(test_truncate),
        cmocka_unit_test(test_drain_waits_and_parks_new_requests),
        cmocka_unit_test(test_drain_from_coroutine),
    };
    return cmocka_run_group_tests_name("block-io-drain", tests, NULL, NULL);
}
