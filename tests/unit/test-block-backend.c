/*
 * test-block-backend.c - the export handle: size check against the export's
 * length, per-operation statistics (request times on the event loop's
 * per-iteration clock), flush on unref, throttled requests
 * waiting on the context's (virtual) clock, and throttle groups (exports
 * naming the same throttling.group share one ThrottleState; joining,
 * conflicting limits and unknown groups are errors with clear messages).
 */
#include <errno.h>
#include <string.h>
#include "block-backend.h"
#include "test-util.h"

#define SEC 1000000000LL

static int64_t vclock_ns;
static int64_t vclock(void *opaque)
{
    (void)opaque;
    return vclock_ns;
}

typedef struct {
    BlockBackend *blk;
    int ret;
    bool done;
} BlkReq;

static void coroutine_fn blk_read_one(void *opaque)
{
    BlkReq *r = opaque;
    uint8_t buf[512];
    IOVector q;
    iov_init_buf(&q, buf, sizeof(buf));
    r->ret = blk_co_preadv(r->blk, 0, 512, &q, 0);
    r->done = true;
}

static void test_backend_throttled_requests_wait(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    vclock_ns = 0;
    aio_context_set_clock(ctx, vclock, NULL);
    BlockDriverState *bs = mem_node_new(NULL);
    BlockBackend *blk = blk_new_with_bs(bs, NULL);
    bdrv_unref(bs);
    ThrottleConfig cfg;
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_READ].avg = 10;
    assert_int_equal(blk_set_throttle(blk, &cfg, NULL), 0);
    BlkReq r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = (BlkReq){ blk, -1, false };
        co_enter(co_create(blk_read_one, &r[i]));
    }
    /* bucket of avg/10 = 1 op: two go (level 0, then 1), the third waits */
    assert_true(r[0].done && r[1].done);
    assert_false(r[2].done);
    aio_poll(ctx, false);
    assert_false(r[2].done);
    /* The waiting request counts as in flight, so a drain would wait for it. */
    assert_int_equal(bdrv_in_flight(bs), 1);
    vclock_ns = SEC;
    AIO_WAIT_WHILE(ctx, !r[2].done);
    assert_int_equal(r[2].ret, 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 3);
    assert_int_equal(bdrv_in_flight(bs), 0);
    blk_unref(blk);
    aio_context_set_clock(ctx, NULL, NULL);
}

static void test_backend_bounds_stats_unref(void **state)
{
    (void)state;
    test_loop_init();
    MemConfig mc = { .size = 8192, .growable = true };
    BlockDriverState *bs = mem_node_new(&mc);
    BlockBackend *blk = blk_new_with_bs(bs, NULL);
    uint8_t b[512] = { 0 };
    assert_int_equal(blk_getlength(blk), 8192);
    /* the node would grow, the export does not */
    assert_int_equal(blk_pwrite(blk, 8000, 512, b, 0), -EIO);
    assert_int_equal(blk_pread(blk, -1, 512, b, 0), -EINVAL);
    assert_int_equal(blk_pwrite(blk, 0, 512, b, 0), 0);
    assert_int_equal(blk_pread(blk, 512, 512, b, 0), 0);
    assert_int_equal(blk_pwrite_zeroes(blk, 1024, 1024, 0), 0);
    assert_int_equal(blk_pdiscard(blk, 0, 512), 0);
    BlockAcctStats st;
    blk_get_stats(blk, &st);
    assert_int_equal(st.ops[BLK_OP_WRITE], 1);
    assert_int_equal(st.errors[BLK_OP_WRITE], 1);
    assert_int_equal(st.bytes[BLK_OP_READ], 512);
    assert_int_equal(st.errors[BLK_OP_READ], 1);
    assert_int_equal(st.bytes[BLK_OP_WRITE_ZEROES], 1024);
    assert_int_equal(st.ops[BLK_OP_DISCARD], 1);
    assert_int_equal(mem_size(bs), 8192);
    int flushes = mem_calls(bs, MEM_OP_FLUSH);
    blk_unref(blk);   /* drains and flushes */
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), flushes + 1);
    bdrv_unref(bs);
}

static uint64_t read_total_ns(BlockBackend *blk)
{
    BlockAcctStats st;
    blk_get_stats(blk, &st);
    return st.total_ns[BLK_OP_READ];
}

static int64_t vclock_low(void *opaque)
{
    (void)opaque;
    return 10;
}

/* Request times come from the event loop's per-iteration clock: a request
 * that ends in a later iteration than it started in counts the time between
 * them, one done within an iteration adds nothing, and the sum never goes
 * backwards, even when the clock does. */
static void test_backend_total_ns_loop_time(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    vclock_ns = 1000;
    aio_context_set_clock(ctx, vclock, NULL);
    BlockDriverState *bs = mem_node_new(NULL);
    BlockBackend *blk = blk_new_with_bs(bs, NULL);
    bdrv_unref(bs);
    mem_set_yield(bs, 1u << MEM_OP_READ);   /* each read waits for the next poll */

    /* The request starts at the loop time, 1000, not at the clock's 1500:
     * no clock read per request. */
    vclock_ns = 1500;
    BlkReq r = { blk, -1, false };
    co_enter(co_create(blk_read_one, &r));
    assert_false(r.done);
    vclock_ns = 1777;
    aio_poll(ctx, false);
    assert_true(r.done);
    assert_int_equal(r.ret, 0);
    assert_int_equal(read_total_ns(blk), 777);

    /* done where it started: nothing added */
    mem_set_yield(bs, 0);
    r = (BlkReq){ blk, -1, false };
    co_enter(co_create(blk_read_one, &r));
    assert_true(r.done);
    assert_int_equal(read_total_ns(blk), 777);

    /* the clock goes back under a request: no wrap-around */
    mem_set_yield(bs, 1u << MEM_OP_READ);
    r = (BlkReq){ blk, -1, false };
    co_enter(co_create(blk_read_one, &r));
    assert_false(r.done);
    aio_context_set_clock(ctx, vclock_low, NULL);
    aio_poll(ctx, false);
    assert_true(r.done);
    assert_int_equal(read_total_ns(blk), 777);

    /* on the real clock, a request across an iteration takes time too */
    aio_context_set_clock(ctx, NULL, NULL);
    r = (BlkReq){ blk, -1, false };
    co_enter(co_create(blk_read_one, &r));
    assert_false(r.done);
    AIO_WAIT_WHILE(ctx, !r.done);
    assert_true(read_total_ns(blk) > 777);

    BlockAcctStats st;
    blk_get_stats(blk, &st);
    assert_int_equal(st.ops[BLK_OP_READ], 4);
    blk_unref(blk);
}

static BlockBackend *open_null(const char *opts, Error **errp)
{
    OptDict *d = optdict_parse(opts, NULL, NULL);
    assert_non_null(d);
    return blk_new_open(NULL, d, BDRV_O_RDWR, errp);
}

/* Two exports in one group share the bucket: reads on the first use up what
 * the second may do. */
static void test_backend_throttle_group_shared(void **state)
{
    (void)state;
    require_driver("null");
    AioContext *ctx = test_loop_init();
    Error *err = NULL;
    vclock_ns = 0;
    aio_context_set_clock(ctx, vclock, NULL);
    BlockBackend *b1 = open_null("driver=null,size=1M,throttling.group=g1,"
                                 "throttling.iops-total=10", &err);
    assert_non_null(b1);
    /* a member that gives no limits joins; the same limits join too */
    BlockBackend *b2 = open_null("driver=null,size=1M,throttling.group=g1", &err);
    assert_non_null(b2);
    BlockBackend *b3 = open_null("driver=null,size=1M,throttling.group=g1,"
                                 "throttling.iops-total=10", &err);
    assert_non_null(b3);
    assert_null(err);

    BlkReq r[3] = { { b1, -1, false }, { b1, -1, false }, { b2, -1, false } };
    for (int i = 0; i < 3; i++) {
        co_enter(co_create(blk_read_one, &r[i]));
    }
    /* a bucket of 1 op for the whole group: b2's read waits for b1's two */
    assert_true(r[0].done && r[1].done);
    assert_false(r[2].done);
    BlkReq r3 = { b3, -1, false };
    co_enter(co_create(blk_read_one, &r3));
    assert_false(r3.done);                /* queued behind b2's */
    vclock_ns = SEC / 10;
    AIO_WAIT_WHILE(ctx, !r[2].done);
    assert_false(r3.done);
    vclock_ns = 2 * SEC / 10;
    AIO_WAIT_WHILE(ctx, !r3.done);
    assert_int_equal(r[2].ret, 0);
    assert_int_equal(r3.ret, 0);

    /* an export without a group is not limited by it */
    BlockBackend *free_blk = open_null("driver=null,size=1M", &err);
    BlkReq f = { free_blk, -1, false };
    co_enter(co_create(blk_read_one, &f));
    assert_true(f.done);
    blk_unref(free_blk);
    blk_unref(b1);
    blk_unref(b2);
    blk_unref(b3);
    aio_context_set_clock(ctx, NULL, NULL);
}

static void expect_open_error(const char *opts, const char *msg)
{
    Error *err = NULL;
    assert_null(open_null(opts, &err));
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), msg)) {
        fail_msg("'%s': got '%s', expected '%s'", opts, error_get_pretty(err), msg);
    }
    error_free(err);
}

static void test_backend_throttle_group_errors(void **state)
{
    (void)state;
    require_driver("null");
    test_loop_init();
    Error *err = NULL;
    expect_open_error("driver=null,throttling.group=nosuch", "'nosuch' does not exist");
    expect_open_error("driver=null,throttling.group=,throttling.iops-total=5", "name must be");
    BlockBackend *b1 = open_null("driver=null,throttling.group=g2,throttling.bps-total=1000",
                                 &err);
    assert_non_null(b1);
    expect_open_error("driver=null,throttling.group=g2,throttling.bps-total=2000",
                      "'g2': limits differ");
    /* when its last member goes, the group goes: new limits are fine */
    blk_unref(b1);
    expect_open_error("driver=null,throttling.group=g2", "does not exist");
    b1 = open_null("driver=null,throttling.group=g2,throttling.bps-total=2000", &err);
    assert_non_null(b1);
    blk_unref(b1);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_throttled_requests_wait),
        cmocka_unit_test(test_backend_bounds_stats_unref),
        cmocka_unit_test(test_backend_total_ns_loop_time),
        cmocka_unit_test(test_backend_throttle_group_shared),
        cmocka_unit_test(test_backend_throttle_group_errors),
    };
    return cmocka_run_group_tests_name("block-backend", tests, NULL, NULL);
}
