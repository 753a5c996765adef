/*
 * test-block-io-flush.c - flush group commit (bdrv_co_flush): a flush that
 * finds one running waits without a lock held across the driver's flush,
 * takes its result when that flush covered its writes, and otherwise shares
 * one new flush with the other waiters.
 */
#include <errno.h>
#include <string.h>
#include "test-util.h"

typedef struct {
    BlockDriverState *bs;
    int ret;
    bool done;
} FlushReq;

static void coroutine_fn do_flush(void *opaque)
{
    FlushReq *r = opaque;
    r->ret = bdrv_co_flush(r->bs);
    r->done = true;
}

typedef struct {
    BdrvChild *c;
    int64_t offset;
    int ret;
    bool done;
} WriteReq;

static void coroutine_fn do_write(void *opaque)
{
    WriteReq *w = opaque;
    uint8_t buf[512];
    memset(buf, 0x5a, sizeof(buf));
    IOVector q;
    iov_init_buf(&q, buf, sizeof(buf));
    w->ret = bdrv_co_pwritev(w->c, w->offset, sizeof(buf), &q, 0);
    w->done = true;
}

static void start(CoroutineEntry *fn, void *opaque)
{
    co_enter(co_create(fn, opaque));
}

static void test_flushes_share_and_wait_unlocked(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *bs = mem_node_new(NULL);
    BdrvChild *c = test_child_new(bs);
    mem_set_yield(bs, 1 << MEM_OP_FLUSH);   /* a flush stays in the driver a while */
    WriteReq w0 = { c, 0, -1, false };
    start(do_write, &w0);
    assert_true(w0.done);

    FlushReq a = { bs, -1, false }, b = { bs, -1, false };
    start(do_flush, &a);
    assert_false(a.done);                    /* in the driver's flush */
    start(do_flush, &b);                     /* nothing new to cover: waits for a */
    assert_false(b.done);

    /* A write is not held up by the flush in flight... */
    WriteReq w1 = { c, 4096, -1, false };
    start(do_write, &w1);
    assert_true(w1.done);
    assert_int_equal(w1.ret, 0);
    /* ...and flushes after it need a new flush, which they share. */
    FlushReq c1 = { bs, -1, false }, c2 = { bs, -1, false };
    start(do_flush, &c1);
    start(do_flush, &c2);
    AIO_WAIT_WHILE(ctx, !(a.done && b.done && c1.done && c2.done));
    assert_int_equal(a.ret, 0);
    assert_int_equal(b.ret, 0);
    assert_int_equal(c1.ret, 0);
    assert_int_equal(c2.ret, 0);
    /* a's flush and one for c1 and c2; b and the second of c1/c2 did not
     * go down to the driver at all (not even flush_to_os). */
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 2);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH_OS), 2);
    test_child_free(c);
    bdrv_unref(bs);
}

/* A failed flush fails the callers whose writes it was to cover; the next
 * flush tries again. */
static void test_failed_flush_fails_its_waiters(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *bs = mem_node_new(NULL);
    BdrvChild *c = test_child_new(bs);
    mem_set_yield(bs, 1 << MEM_OP_FLUSH);
    WriteReq w0 = { c, 0, -1, false };
    start(do_write, &w0);
    mem_inject_error(bs, MEM_OP_FLUSH, 0, 0, -EIO, 1);

    FlushReq a = { bs, -1, false }, b = { bs, -1, false };
    start(do_flush, &a);
    assert_false(a.done);
    start(do_flush, &b);
    AIO_WAIT_WHILE(ctx, !(a.done && b.done));
    assert_int_equal(a.ret, -EIO);
    assert_int_equal(b.ret, -EIO);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 1);

    FlushReq r = { bs, -1, false };
    start(do_flush, &r);
    AIO_WAIT_WHILE(ctx, !r.done);
    assert_int_equal(r.ret, 0);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 2);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flushes_share_and_wait_unlocked),
        cmocka_unit_test(test_failed_flush_fails_its_waiters),
    };
    return cmocka_run_group_tests_name("block-io-flush", tests, NULL, NULL);
}
