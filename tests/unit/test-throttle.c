/*
 * test-throttle.c - token buckets with QEMU semantics on a virtual clock
 * (iops, bps, burst rate and length, iops-size, read/write/total), config
 * validation and the throttling.* options, and ordered waiting: first come
 * first served per direction, on one thread and across two queue threads
 * sharing a ThrottleState.  The BlockBackend's use of it (and throttle
 * groups) is in test-block-backend.c.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#include "throttle.h"
#include "test-util.h"

#define SEC 1000000000LL

/* cfg with a single limit: avg per second in bucket b. */
static void one_limit(ThrottleConfig *cfg, ThrottleBucketType b, double avg)
{
    throttle_config_init(cfg);
    cfg->buckets[b].avg = avg;
}

/* cfg limiting all ops to avg/s, with bursts of max/s for length seconds. */
static void ops_burst(ThrottleConfig *cfg, double avg, double max, uint64_t length)
{
    one_limit(cfg, THROTTLE_OPS_TOTAL, avg);
    cfg->buckets[THROTTLE_OPS_TOTAL].max = max;
    cfg->buckets[THROTTLE_OPS_TOTAL].burst_length = length;
}

/* How many reads of bytes go at time now before one has to wait. */
static int reads_allowed(ThrottleState *ts, uint64_t bytes, int64_t now)
{
    int n = 0;
    while (throttle_try_account(ts, false, bytes, now) == 0) {
        n++;
        assert_true(n < 1000);   /* else the limit does not bite at all */
    }
    return n;
}

static void test_iops_limit(void **state)
{
    (void)state;
    ThrottleConfig cfg;
    ThrottleState ts;
    one_limit(&cfg, THROTTLE_OPS_TOTAL, 100);
    assert_true(throttle_is_valid(&cfg, NULL));
    throttle_init(&ts, &cfg, 0);
    /* bucket size avg/10 = 10: requests go while level <= 10 */
    assert_int_equal(reads_allowed(&ts, 4096, 0), 11);
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
    one_limit(&cfg, THROTTLE_BPS_READ, 1 * MiB);
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
    ops_burst(&cfg, 10, 100, 2);
    assert_true(throttle_is_valid(&cfg, NULL));
    throttle_init(&ts, &cfg, 0);
    /* at t=0 the burst bucket (max/10 = 10) limits first */
    int n = reads_allowed(&ts, 512, 0);
    assert_int_equal(n, 11);
    /* over 2 s at up to 100/s the burst allows far more than avg would */
    int total = n;
    for (int64_t t = 0; t < 2 * SEC; t += SEC / 1000) {
        total += reads_allowed(&ts, 512, t);
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
    one_limit(&cfg, THROTTLE_OPS_TOTAL, 100);
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
    expect_invalid("throttling.iops-total=1,throttling.group=", "name must be");
}

/* Per-bucket errors say which option is wrong. */
static void test_validation_names_option(void **state)
{
    (void)state;
    expect_invalid("throttling.bps-write=10,throttling.bps-write-max=5",
                   "throttling.bps-write-max: ");
    expect_invalid("throttling.iops-read-max=5", "throttling.iops-read-max: ");
    expect_invalid("throttling.bps-read=5,throttling.bps-read-max-length=3",
                   "throttling.bps-read-max-length: ");
    expect_invalid("throttling.iops-write=5,throttling.iops-write-max=10,"
                   "throttling.iops-write-max-length=0", "throttling.iops-write-max-length: ");
}

/* ---- waiting in order (throttle_co_wait on a virtual clock) ---- */

static int64_t vclock_ns;    /* shared by every context of these tests */
static int64_t vclock(void *opaque)
{
    (void)opaque;
    return __atomic_load_n(&vclock_ns, __ATOMIC_SEQ_CST);
}

static void set_vclock(int64_t ns)
{
    __atomic_store_n(&vclock_ns, ns, __ATOMIC_SEQ_CST);
}

typedef struct {
    ThrottleState *ts;
    bool is_write;
    uint64_t bytes;
    int id;
    bool done;
} Waiter;

static int done_order[64];
static int done_count;

static void coroutine_fn waiter_entry(void *opaque)
{
    Waiter *w = opaque;
    throttle_co_wait(w->ts, w->is_write, w->bytes);
    done_order[__atomic_fetch_add(&done_count, 1, __ATOMIC_SEQ_CST)] = w->id;
    __atomic_store_n(&w->done, true, __ATOMIC_SEQ_CST);
}

static void start_waiter(Waiter *w)
{
    co_enter(co_create(waiter_entry, w));
}

static bool waiter_done(Waiter *w)
{
    return __atomic_load_n(&w->done, __ATOMIC_SEQ_CST);
}

/* Run whatever is ready on ctx (expired timers, woken coroutines). */
static void poll_ready(AioContext *ctx)
{
    for (int i = 0; i < 20; i++) {
        aio_poll(ctx, false);
    }
}

static unsigned waiting(ThrottleState *ts, bool is_write)
{
    pthread_mutex_lock(&ts->lock);
    unsigned n = ts->waiting[is_write];
    pthread_mutex_unlock(&ts->lock);
    return n;
}

static AioContext *virtual_loop(void)
{
    AioContext *ctx = test_loop_init();
    set_vclock(0);
    done_count = 0;
    aio_context_set_clock(ctx, vclock, NULL);
    return ctx;
}

/*
 * A large request that waits is not overtaken: small ones arriving when the
 * bucket has room again queue behind it (without the queue they would go at
 * once and, as a stream, could keep the large one waiting for ever).
 */
static void test_fifo_large_before_small(void **state)
{
    (void)state;
    AioContext *ctx = virtual_loop();
    ThrottleConfig cfg;
    ThrottleState ts;
    one_limit(&cfg, THROTTLE_BPS_TOTAL, 1 * MiB);
    throttle_init(&ts, &cfg, 0);
    assert_int_equal(throttle_try_account(&ts, false, 1 * MiB, 0), 0);

    Waiter big = { &ts, false, 4 * MiB, 0, false };
    Waiter small[3];
    start_waiter(&big);                     /* waits 0.9 s */
    assert_false(big.done);
    set_vclock(SEC);                        /* room again, big's timer not run yet */
    for (int i = 0; i < 3; i++) {
        small[i] = (Waiter){ &ts, false, 512, i + 1, false };
        start_waiter(&small[i]);
        assert_false(small[i].done);        /* queued behind big */
    }
    assert_int_equal(waiting(&ts, false), 4);
    poll_ready(ctx);
    assert_true(big.done);
    /* big overshot by ~4 MiB: the small ones now wait ~4 s for it */
    for (int i = 0; i < 3; i++) {
        assert_false(small[i].done);
    }
    set_vclock(4 * SEC);
    poll_ready(ctx);
    assert_false(small[0].done);
    set_vclock(6 * SEC);
    poll_ready(ctx);
    for (int i = 0; i < 3; i++) {
        assert_true(small[i].done);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(done_order[i], i);
    }
    assert_int_equal(waiting(&ts, false), 0);
    throttle_destroy(&ts);
    aio_context_set_clock(ctx, NULL, NULL);
}

/* Reads and writes queue separately: a waiting write does not hold up reads
 * limited by nothing; with a total limit both count against it. */
static void test_read_write_total_independent(void **state)
{
    (void)state;
    AioContext *ctx = virtual_loop();
    ThrottleConfig cfg;
    ThrottleState ts;
    one_limit(&cfg, THROTTLE_OPS_WRITE, 10);
    throttle_init(&ts, &cfg, 0);
    assert_int_equal(throttle_try_account(&ts, true, 512, 0), 0);
    assert_int_equal(throttle_try_account(&ts, true, 512, 0), 0);
    Waiter w = { &ts, true, 512, 0, false }, w2 = { &ts, true, 512, 1, false };
    Waiter r = { &ts, false, 512, 2, false };
    start_waiter(&w);
    assert_false(w.done);
    start_waiter(&r);
    assert_true(r.done);                    /* reads are not limited, nor queued */
    set_vclock(SEC / 10);
    start_waiter(&w2);                      /* room, but behind w */
    assert_false(w2.done);
    poll_ready(ctx);
    assert_true(w.done);
    assert_false(w2.done);
    set_vclock(2 * SEC / 10);
    poll_ready(ctx);
    assert_true(w2.done);
    throttle_destroy(&ts);

    /* bps-read limits reads only; iops-total counts reads and writes */
    throttle_config_init(&cfg);
    cfg.buckets[THROTTLE_BPS_READ].avg = 1 * MiB;
    cfg.buckets[THROTTLE_OPS_TOTAL].avg = 10;
    throttle_init(&ts, &cfg, 0);
    assert_int_equal(throttle_try_account(&ts, false, 1 * MiB, 0), 0);    /* reads full */
    assert_true(throttle_try_account(&ts, false, 512, 0) > SEC / 2);
    assert_int_equal(throttle_try_account(&ts, true, 1 * MiB, 0), 0);     /* write: 2nd op */
    assert_true(throttle_try_account(&ts, true, 512, 0) > 0);             /* total: 2 ops */
    assert_true(throttle_try_account(&ts, true, 512, SEC / 10) == 0);     /* 1 op leaked */
    throttle_destroy(&ts);
    aio_context_set_clock(ctx, NULL, NULL);
}

/*
 * Burst: with avg 10/s, max 100/s for 2 s, the bucket holds max *
 * burst_length = 200 ops and fills at (max - avg) = 90/s while requests go
 * at the burst rate, so ~2.2 s at ~100/s, then avg.
 */
static void test_burst_rate_and_length(void **state)
{
    (void)state;
    ThrottleConfig cfg;
    ThrottleState ts;
    ops_burst(&cfg, 10, 100, 2);
    throttle_init(&ts, &cfg, 0);
    int per_sec[8] = { 0 };
    for (int64_t t = 0; t < 8 * SEC; t += SEC / 1000) {
        per_sec[t / SEC] += reads_allowed(&ts, 512, t);
    }
    /* second 0: max/10 at once, then 100/s */
    assert_in_range(per_sec[0], 100, 112);
    assert_in_range(per_sec[1], 99, 101);
    /* the burst ends during second 2 */
    assert_in_range(per_sec[2], 11, 99);
    for (int s = 3; s < 8; s++) {
        assert_in_range(per_sec[s], 9, 11);
    }
    throttle_destroy(&ts);

    /* max-length 1 (the default): no sustained burst beyond max/10 */
    ops_burst(&cfg, 10, 100, 1);
    throttle_init(&ts, &cfg, 0);
    int n = 0;
    for (int64_t t = 0; t < 4 * SEC; t += SEC / 1000) {
        n += reads_allowed(&ts, 512, t);
    }
    /* a bucket of max = 100 ops, then 10/s */
    assert_in_range(n, 100 + 4 * 10 - 2, 100 + 4 * 10 + 2);
    throttle_destroy(&ts);
}

/* iops-size: ops larger than op_size count as bytes / op_size ops, smaller
 * ones as one; the size does not matter for byte limits' op count. */
static void test_iops_size_units(void **state)
{
    (void)state;
    ThrottleConfig cfg;
    ThrottleState ts;
    one_limit(&cfg, THROTTLE_OPS_TOTAL, 100);
    cfg.op_size = 4096;
    throttle_init(&ts, &cfg, 0);
    assert_int_equal(throttle_try_account(&ts, false, 64 * KiB, 0), 0);
    /* 16 ops in a bucket of 10: (16 - 10) / 100 s */
    int64_t wait = throttle_try_account(&ts, false, 512, 0);
    assert_in_range(wait, 60 * 1000000LL - 1000, 60 * 1000000LL + 1000);
    throttle_destroy(&ts);

    throttle_init(&ts, &cfg, 0);
    assert_int_equal(reads_allowed(&ts, 4096, 0), 11);   /* one op each */
    throttle_destroy(&ts);

    throttle_init(&ts, &cfg, 0);
    assert_int_equal(reads_allowed(&ts, 8192, 0), 6);    /* two ops each */
    throttle_destroy(&ts);
}

/* ---- two queue threads sharing one ThrottleState ---- */

typedef struct {
    Waiter w[32];
    int n;
    AioContext *ctx;            /* published once the thread runs */
    bool go;                    /* start the requests */
    bool stop;                  /* leave the loop; main frees ctx after join */
} ThreadArg;

static void *throttle_thread(void *opaque)
{
    ThreadArg *a = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    aio_context_set_clock(ctx, vclock, NULL);
    __atomic_store_n(&a->ctx, ctx, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&a->go, __ATOMIC_SEQ_CST)) {
        aio_poll(ctx, true);
    }
    for (int i = 0; i < a->n; i++) {
        start_waiter(&a->w[i]);
    }
    /* reads and writes queue apart: the last started need not end last */
    for (int i = 0; i < a->n; i++) {
        AIO_WAIT_WHILE(ctx, !waiter_done(&a->w[i]));
    }
    AIO_WAIT_WHILE(ctx, !__atomic_load_n(&a->stop, __ATOMIC_SEQ_CST));
    aio_set_current(NULL);
    /* Not freed here: main may still be inside aio_notify(ctx) after we
     * saw stop.  thread_stop frees it once we are joined. */
    return NULL;
}

static void thread_start(pthread_t *th, ThreadArg *a)
{
    pthread_create(th, NULL, throttle_thread, a);
    WAIT_FOR(__atomic_load_n(&a->ctx, __ATOMIC_SEQ_CST), "the thread's context");
}

static void thread_go(ThreadArg *a)
{
    __atomic_store_n(&a->go, true, __ATOMIC_SEQ_CST);
    aio_notify(a->ctx);
}

static void thread_stop(pthread_t th, ThreadArg *a)
{
    __atomic_store_n(&a->stop, true, __ATOMIC_SEQ_CST);
    aio_notify(a->ctx);
    pthread_join(th, NULL);
    aio_context_free(a->ctx);
}

/* The first to wait goes first, whichever thread it is on: the head's
 * thread wakes the next waiter on the other thread's own context. */
static void test_threads_fifo(void **state)
{
    (void)state;
    virtual_loop();
    ThrottleConfig cfg;
    ThrottleState ts;
    one_limit(&cfg, THROTTLE_OPS_TOTAL, 10);
    throttle_init(&ts, &cfg, 0);
    assert_int_equal(throttle_try_account(&ts, false, 512, 0), 0);
    assert_int_equal(throttle_try_account(&ts, false, 512, 0), 0);

    ThreadArg a = { .n = 1 }, b = { .n = 1 };
    a.w[0] = (Waiter){ &ts, false, 512, 0, false };
    b.w[0] = (Waiter){ &ts, false, 512, 1, false };
    pthread_t ta, tb;
    thread_start(&ta, &a);
    thread_start(&tb, &b);
    thread_go(&a);
    WAIT_FOR(waiting(&ts, false) == 1, "A waiting");
    thread_go(&b);
    WAIT_FOR(waiting(&ts, false) == 2, "B queued behind A");
    set_vclock(SEC / 10);
    aio_notify(a.ctx);
    aio_notify(b.ctx);
    WAIT_FOR(waiter_done(&a.w[0]), "A through");
    WAIT_FOR(waiting(&ts, false) == 1, "A gone");
    usleep(20000);
    assert_false(waiter_done(&b.w[0]));    /* B sleeps until 0.2 s */
    set_vclock(2 * SEC / 10);
    aio_notify(b.ctx);
    WAIT_FOR(waiter_done(&b.w[0]), "B through");
    thread_stop(ta, &a);
    thread_stop(tb, &b);
    assert_int_equal(done_order[0], 0);
    assert_int_equal(done_order[1], 1);
    throttle_destroy(&ts);
    aio_context_set_clock(test_loop_init(), NULL, NULL);
}

/* Requests from two threads share the rate: at no time have more gone than
 * the bucket plus avg * elapsed, and all of them get through. */
static void test_threads_share_rate(void **state)
{
    (void)state;
    virtual_loop();
    ThrottleConfig cfg;
    ThrottleState ts;
    one_limit(&cfg, THROTTLE_OPS_TOTAL, 100);
    throttle_init(&ts, &cfg, 0);
    ThreadArg a = { .n = 30 }, b = { .n = 30 };
    for (int i = 0; i < 30; i++) {
        a.w[i] = (Waiter){ &ts, i % 2, 512, 100 + i, false };
        b.w[i] = (Waiter){ &ts, i % 2, 4096, 200 + i, false };
    }
    pthread_t ta, tb;
    thread_start(&ta, &a);
    thread_start(&tb, &b);
    thread_go(&a);
    thread_go(&b);
    int64_t t = 0;
    while (__atomic_load_n(&done_count, __ATOMIC_SEQ_CST) < 60) {
        /* bucket avg/10 = 10, plus the one that may go at the limit */
        int bound = 11 + (int)(t * 100 / SEC);
        assert_true(__atomic_load_n(&done_count, __ATOMIC_SEQ_CST) <= bound);
        usleep(200);
        t += SEC / 1000;
        if (t >= 100 * SEC) {
            fail_msg("stuck: %d done, waiting r %u w %u", done_count, waiting(&ts, false), waiting(&ts, true));
        }
        set_vclock(t);
        aio_notify(a.ctx);
        aio_notify(b.ctx);
    }
    /* 60 ops at 100/s after a bucket of 11 take at least 0.49 s */
    assert_true(t >= 49 * SEC / 100);
    thread_stop(ta, &a);
    thread_stop(tb, &b);
    assert_int_equal(waiting(&ts, false) + waiting(&ts, true), 0);
    throttle_destroy(&ts);
    aio_context_set_clock(test_loop_init(), NULL, NULL);
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
        cmocka_unit_test(test_validation_names_option),
        cmocka_unit_test(test_fifo_large_before_small),
        cmocka_unit_test(test_read_write_total_independent),
        cmocka_unit_test(test_burst_rate_and_length),
        cmocka_unit_test(test_iops_size_units),
        cmocka_unit_test(test_threads_fifo),
        cmocka_unit_test(test_threads_share_rate),
    };
    return cmocka_run_group_tests_name("throttle", tests, NULL, NULL);
}
