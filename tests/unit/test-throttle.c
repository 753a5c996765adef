/*
 * test-throttle.c - token buckets with QEMU semantics on a virtual clock,
 * config validation and the throttling.* options; the BlockBackend (size
 * check, accounting, throttled requests waiting on the context's clock).
 */
#include <errno.h>
#include <string.h>
#include "block-backend.h"
#include "test-util.h"

#define SEC 1000000000LL

static void test_iops_limit(void **state)
{
    (void)state;
    ThrottleConfig cfg;
    ThrottleState ts;
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_TOTAL].avg = 100;
    assert_true(throttle_is_valid(&cfg, NULL));
    throttle_init(&ts, &cfg, 0);
    /* bucket size avg/10 = 10: requests go while level <= 10 */
    int allowed = 0;
    while (throttle_try_account(&ts, false, 4096, 0) == 0) {
        allowed++;
        assert_true(allowed < 100);
    }
    assert_int_equal(allowed, 11);
    int64_t wait = throttle_try_account(&ts, false, 4096, 0);
    assert_true(wait > 0 && wait <= SEC / 100 + 1);
    /* after the wait one more may go */
    assert_int_equal(throttle_try_account(&ts, true, 4096, wait), 0);
    /* a full second later the bucket has leaked 100 ops */
    assert_int_equal(throttle_try_account(&ts, true, 4096, wait + SEC), 0);
    throttle_destroy(&ts);
}

static void test_bps_read_write_separate(void **state)
{
    (void)state;
    ThrottleConfig cfg;
    ThrottleState ts;
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_BPS_READ].avg = 1 * MiB;
    throttle_init(&ts, &cfg, 0);
    assert_int_equal(throttle_try_account(&ts, false, 2 * MiB, 0), 0);   /* overshoot */
    int64_t wait = throttle_try_account(&ts, false, 4096, 0);
    /* extra = 2 MiB - 1 MiB/10 at 1 MiB/s */
    assert_true(wait > (int64_t)(1.85 * SEC) && wait < (int64_t)(1.95 * SEC));
    assert_int_equal(throttle_try_account(&ts, true, 2 * MiB, 0), 0);     /* writes free */
    throttle_destroy(&ts);
}

static void test_burst(void **state)
{
    (void)state;
    ThrottleConfig cfg;
    ThrottleState ts;
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_TOTAL].avg = 10;
    cfg.buckets[THROTTLE_OPS_TOTAL].max = 100;
    cfg.buckets[THROTTLE_OPS_TOTAL].burst_length = 2;
    assert_true(throttle_is_valid(&cfg, NULL));
    throttle_init(&ts, &cfg, 0);
    /* at t=0 the burst bucket (max/10 = 10) limits first */
    int n = 0;
    while (throttle_try_account(&ts, false, 512, 0) == 0) {
        n++;
    }
    assert_int_equal(n, 11);
    /* over 2 s at up to 100/s the burst allows far more than avg would */
    int total = n;
    for (int64_t t = 0; t < 2 * SEC; t += SEC / 1000) {
        while (throttle_try_account(&ts, false, 512, t) == 0) {
            total++;
        }
    }
    assert_true(total > 150);
    assert_true(total <= 2 * 100 + 20);
    throttle_destroy(&ts);
}

static void test_iops_size(void **state)
{
    (void)state;
    ThrottleConfig cfg;
    ThrottleState ts;
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_OPS_TOTAL].avg = 100;
    cfg.op_size = 4096;
    throttle_init(&ts, &cfg, 0);
    assert_int_equal(throttle_try_account(&ts, false, 64 * KiB, 0), 0);  /* 16 ops */
    assert_true(throttle_try_account(&ts, false, 512, 0) > 0);
    throttle_destroy(&ts);
}

static void expect_invalid(const char *opts, const char *msg)
{
    Error *err = NULL;
    ThrottleConfig cfg;
    OptDict *d = optdict_parse(opts, NULL, NULL);
    assert_non_null(d);
    assert_int_equal(throttle_config_from_options(&cfg, d, &err), -EINVAL);
    assert_non_null(err);
    assert_non_null(strstr(error_get_pretty(err), msg));
    error_free(err);
    optdict_free(d);
}

static void test_options_and_validation(void **state)
{
    (void)state;
    Error *err = NULL;
    ThrottleConfig cfg;
    OptDict *d = optdict_parse("throttling.iops-total=100,throttling.iops-total-max=200,"
                               "throttling.iops-total-max-length=5,throttling.bps-read=1048576,"
                               "throttling.iops-size=8192,driver=x", NULL, NULL);
    assert_int_equal(throttle_config_from_options(&cfg, d, &err), 0);
    assert_null(err);
    assert_true(cfg.buckets[THROTTLE_OPS_TOTAL].avg == 100);
    assert_true(cfg.buckets[THROTTLE_OPS_TOTAL].max == 200);
    assert_int_equal(cfg.buckets[THROTTLE_OPS_TOTAL].burst_length, 5);
    assert_true(cfg.buckets[THROTTLE_BPS_READ].avg == 1048576);
    assert_int_equal(cfg.op_size, 8192);
    assert_int_equal(optdict_count(d), 1);   /* only driver= left */
    optdict_free(d);

    expect_invalid("throttling.iops-total=1,throttling.iops-read=1", "cannot be used at the same time");
    expect_invalid("throttling.iops-total=10,throttling.iops-total-max=5", "cannot be lower");
    expect_invalid("throttling.iops-total-max=5", "require corresponding");
    expect_invalid("throttling.iops-total=5,throttling.iops-total-max-length=3", "without burst rate");
    expect_invalid("throttling.iops-size=4096", "iops-size requires");
    expect_invalid("throttling.bps-total=-1", "out of range");
    expect_invalid("throttling.bps-total=abc", "bps-total");
}

/* ---- BlockBackend ---- */

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
    vclock_ns = SEC;
    AIO_WAIT_WHILE(ctx, !r[2].done);
    assert_int_equal(r[2].ret, 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 3);
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

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iops_limit),
        cmocka_unit_test(test_bps_read_write_separate),
        cmocka_unit_test(test_burst),
        cmocka_unit_test(test_iops_size),
        cmocka_unit_test(test_options_and_validation),
        cmocka_unit_test(test_backend_throttled_requests_wait),
        cmocka_unit_test(test_backend_bounds_stats_unref),
    };
    return cmocka_run_group_tests_name("throttle", tests, NULL, NULL);
}
