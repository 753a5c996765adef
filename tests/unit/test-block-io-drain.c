/*
 * test-block-io-drain.c - bounds checks, flush (generations, NO_FLUSH,
 * children), truncate, in-flight counting and drain: a drained backing node
 * holds back its parents' new requests while theirs in flight finish,
 * drain_begin/drain_end run once per node in order, sections nest, a flush
 * waits like any request, and a throttled request is released at once.
 */
#include <errno.h>
#include <string.h>
#include "block-backend.h"
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
    assert_non_null(bdrv_attach_child(top, child, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, NULL));
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

/* ---- drained sections across the graph ---- */

typedef struct {
    BlockDriverState *bs;
    bool done;
} DrainCo;

static void coroutine_fn drained_begin_co(void *opaque)
{
    DrainCo *d = opaque;
    bdrv_drained_begin(d->bs);
    d->done = true;
}

static void poll_some(AioContext *ctx)
{
    for (int i = 0; i < 20; i++) {
        aio_poll(ctx, false);
    }
}

/*
 * Draining the backing node of a chain while a read of the top is in flight
 * in it: the drain waits for that read, the top's new requests (and new
 * requests on the backing node's own root edge, attached mid-section) wait
 * before they enter, and the drivers are told top first, ended base first.
 */
static void test_drain_backing_node_under_io(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 64 * KiB, false);
    BdrvChild *c = test_child_new(top);

    mem_gate_close(base, 1 << MEM_OP_READ);
    ReadReq r1 = { c, -1, false };
    co_enter(co_create(do_read, &r1));
    assert_int_equal(mem_gate_parked(base), 1);      /* in flight in the backing node */

    DrainCo d = { base, false };
    co_enter(co_create(drained_begin_co, &d));
    assert_false(d.done);                            /* waits for r1 */
    assert_int_equal(mem_drain_calls(top, false), 1);
    assert_int_equal(mem_drain_calls(base, false), 1);
    assert_true(mem_drain_seq(top, false) < mem_drain_seq(base, false));

    ReadReq r2 = { c, -1, false };
    co_enter(co_create(do_read, &r2));
    BdrvChild *cb = test_child_new(base);
    ReadReq r3 = { cb, -1, false };
    co_enter(co_create(do_read, &r3));
    poll_some(ctx);
    assert_false(r2.done);
    assert_false(r3.done);
    assert_int_equal(mem_calls(top, MEM_OP_READ), 1);     /* r2 never reached the top */
    assert_int_equal(mem_calls(base, MEM_OP_READ), 1);    /* nor r3 the base */
    assert_false(d.done);

    mem_gate_open(base);
    AIO_WAIT_WHILE(ctx, !d.done);
    assert_true(r1.done);
    assert_int_equal(r1.ret, 0);
    assert_int_equal(bdrv_in_flight(top), 0);
    assert_int_equal(bdrv_in_flight(base), 0);
    poll_some(ctx);
    assert_false(r2.done);
    assert_false(r3.done);
    assert_int_equal(mem_drain_calls(top, true), 0);

    bdrv_drained_end(base);
    assert_int_equal(mem_drain_calls(top, true), 1);
    assert_int_equal(mem_drain_calls(base, true), 1);
    assert_true(mem_drain_seq(base, true) < mem_drain_seq(top, true));
    AIO_WAIT_WHILE(ctx, !r2.done || !r3.done);
    assert_int_equal(r2.ret, 0);
    assert_int_equal(r3.ret, 0);
    assert_int_equal(mem_calls(top, MEM_OP_READ), 2);
    assert_int_equal(mem_calls(base, MEM_OP_READ), 3);
    test_child_free(cb);
    test_child_free(c);
    bdrv_unref(top);
    bdrv_unref(base);
}

/* The top's read is past its backing read but not finished (it could still
 * issue more): draining the backing node waits for it too. */
static void test_drain_waits_for_parents_requests(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 64 * KiB, false);
    BdrvChild *c = test_child_new(top);

    mem_gate_close(top, 1 << MEM_OP_READ);
    ReadReq r = { c, -1, false };
    co_enter(co_create(do_read, &r));
    assert_int_equal(mem_gate_parked(top), 1);
    assert_int_equal(mem_calls(base, MEM_OP_READ), 1);
    assert_int_equal(bdrv_in_flight(base), 0);

    DrainCo d = { base, false };
    co_enter(co_create(drained_begin_co, &d));
    poll_some(ctx);
    assert_false(d.done);
    mem_gate_open(top);
    AIO_WAIT_WHILE(ctx, !d.done);
    assert_true(r.done);
    assert_int_equal(r.ret, 0);
    bdrv_drained_end(base);
    test_child_free(c);
    bdrv_unref(top);
    bdrv_unref(base);
}

/* Nested and overlapping sections: callbacks on the first begin and the
 * last end of each node only; the top stays quiet while its child is
 * drained even after the top's own section ended. */
static void test_nested_drains(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 64 * KiB, false);
    BdrvChild *c = test_child_new(top);

    bdrv_drained_begin(top);
    bdrv_drained_begin(top);
    bdrv_drained_begin(base);            /* a child while the top is drained */
    assert_int_equal(mem_drain_calls(top, false), 1);
    assert_int_equal(mem_drain_calls(base, false), 1);
    bdrv_drained_end(top);
    bdrv_drained_end(top);
    assert_int_equal(mem_drain_calls(top, true), 0);
    assert_int_equal(mem_drain_calls(base, true), 0);

    ReadReq r = { c, -1, false };
    co_enter(co_create(do_read, &r));
    poll_some(ctx);
    assert_false(r.done);                /* the top is quiesced as base's parent */
    assert_int_equal(mem_calls(top, MEM_OP_READ), 0);

    bdrv_drained_end(base);
    assert_int_equal(mem_drain_calls(top, true), 1);
    assert_int_equal(mem_drain_calls(base, true), 1);
    AIO_WAIT_WHILE(ctx, !r.done);
    assert_int_equal(r.ret, 0);
    assert_int_equal(top->quiesce_counter, 0);
    assert_int_equal(base->quiesce_counter, 0);
    assert_int_equal(c->parent_quiesce, 0);
    assert_int_equal(top->backing->parent_quiesce, 0);
    test_child_free(c);
    bdrv_unref(top);
    bdrv_unref(base);
}

typedef struct {
    BlockBackend *blk;
    int ret;
    bool done;
} BlkReq;

static void coroutine_fn blk_flush_co(void *opaque)
{
    BlkReq *r = opaque;
    r->ret = blk_co_flush(r->blk);
    r->done = true;
}

static void coroutine_fn blk_read_co(void *opaque)
{
    BlkReq *r = opaque;
    uint8_t buf[512];
    IOVector q;
    iov_init_buf(&q, buf, sizeof(buf));
    r->ret = blk_co_preadv(r->blk, 0, 512, &q, 0);
    r->done = true;
}

/* A flush that arrives during a drained section waits for its end. */
static void test_flush_waits_for_drain(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *bs = mem_node_new(NULL);
    BlockBackend *blk = blk_new_with_bs(bs, NULL);
    assert_non_null(blk);

    bdrv_drained_begin(bs);
    BlkReq f = { blk, -1, false };
    co_enter(co_create(blk_flush_co, &f));
    poll_some(ctx);
    assert_false(f.done);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH_OS), 0);
    bdrv_drained_end(bs);
    AIO_WAIT_WHILE(ctx, !f.done);
    assert_int_equal(f.ret, 0);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH_OS), 1);
    blk_unref(blk);
    bdrv_unref(bs);
}

static int64_t vclock_ns;
static int64_t vclock(void *opaque)
{
    (void)opaque;
    return vclock_ns;
}

/*
 * A request sleeping in the throttle queue is released as soon as a drain
 * begins (the virtual clock never moves), so the drain does not wait out its
 * delay; a request arriving during the section waits before the throttle;
 * afterwards the limits apply again.
 */
static void test_drain_releases_throttled_request(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    vclock_ns = 0;
    aio_context_set_clock(ctx, vclock, NULL);
    BlockDriverState *bs = mem_node_new(NULL);
    BlockBackend *blk = blk_new_with_bs(bs, NULL);
    ThrottleConfig cfg;
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_READ].avg = 10;
    assert_int_equal(blk_set_throttle(blk, &cfg, NULL), 0);
    BlkReq r[4];
    for (int i = 0; i < 3; i++) {
        r[i] = (BlkReq){ blk, -1, false };
        co_enter(co_create(blk_read_co, &r[i]));
    }
    assert_true(r[0].done && r[1].done);
    poll_some(ctx);
    assert_false(r[2].done);                 /* asleep for 100 ms of virtual time */

    DrainCo d = { bs, false };
    co_enter(co_create(drained_begin_co, &d));
    poll_some(ctx);
    assert_true(r[2].done);
    assert_int_equal(r[2].ret, 0);
    assert_true(d.done);
    assert_int_equal(vclock_ns, 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 3);

    r[3] = (BlkReq){ blk, -1, false };
    co_enter(co_create(blk_read_co, &r[3]));
    poll_some(ctx);
    assert_false(r[3].done);
    assert_int_equal(bdrv_in_flight(bs), 0);   /* held back before it was counted */
    bdrv_drained_end(bs);
    poll_some(ctx);
    assert_false(r[3].done);                 /* limits back: the bucket is full */
    vclock_ns = 1000000000LL;
    AIO_WAIT_WHILE(ctx, !r[3].done);
    assert_int_equal(r[3].ret, 0);

    /* The same from the loop rather than a coroutine: the sleeping head of
     * this very thread is entered from the drain, and must not find the
     * throttle's lock held. */
    BlkReq r4 = { blk, -1, false };
    for (int i = 0; i < 20; i++) {
        r4 = (BlkReq){ blk, -1, false };
        co_enter(co_create(blk_read_co, &r4));
        poll_some(ctx);
        if (!r4.done) {
            break;
        }
    }
    assert_false(r4.done);
    bdrv_drain(bs);
    assert_true(r4.done);
    assert_int_equal(r4.ret, 0);
    blk_unref(blk);
    bdrv_unref(bs);
    aio_context_set_clock(ctx, NULL, NULL);
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
        cmocka_unit_test(test_drain_backing_node_under_io),
        cmocka_unit_test(test_drain_waits_for_parents_requests),
        cmocka_unit_test(test_nested_drains),
        cmocka_unit_test(test_flush_waits_for_drain),
        cmocka_unit_test(test_drain_releases_throttled_request),
    };
    return cmocka_run_group_tests_name("block-io-drain", tests, NULL, NULL);
}
