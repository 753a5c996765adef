/*
 * test-aio-loop-time.c - the AioContext's cached loop time
 * (aio_loop_now_ns): taken from the context's clock, virtual clocks
 * included, at the start of every aio_poll iteration, again when the
 * iteration is back from io_uring, and when aio_co_run_sync starts its
 * coroutine; between those it stands still.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include "aio.h"

static AioContext *ctx;

static int setup(void **state)
{
    (void)state;
    ctx = aio_context_new(AIO_DEFAULT_ENTRIES, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    while (aio_poll(ctx, false)) {
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    aio_context_set_clock(ctx, NULL, NULL);
    aio_set_current(NULL);
    aio_context_free(ctx);
    ctx = NULL;
    return 0;
}

static int64_t vclock;
static int64_t virtual_now(void *opaque)
{
    (void)opaque;
    return vclock;
}

/* Every poll moves the cached time to the virtual clock; nothing else does. */
static void test_follows_virtual_clock(void **state)
{
    (void)state;
    vclock = 1000;
    aio_context_set_clock(ctx, virtual_now, NULL);
    assert_int_equal(aio_loop_now_ns(ctx), 1000);   /* installing reads it */
    vclock = 2500;
    assert_int_equal(aio_loop_now_ns(ctx), 1000);   /* a cache, not a clock */
    aio_poll(ctx, false);
    assert_int_equal(aio_loop_now_ns(ctx), 2500);
    vclock = 3000;
    aio_poll(ctx, false);
    assert_int_equal(aio_loop_now_ns(ctx), 3000);

    /* Back on the real clock, the cache follows it at once. */
    int64_t before = clock_monotonic_ns();
    aio_context_set_clock(ctx, NULL, NULL);
    int64_t after = clock_monotonic_ns();
    assert_true(aio_loop_now_ns(ctx) >= before && aio_loop_now_ns(ctx) <= after);
    aio_poll(ctx, false);
    assert_true(aio_loop_now_ns(ctx) >= after);
}

/* A clock that moves on while a request is in the kernel: 1000 while the
 * SQE waits in the submission queue, 5000 once the kernel has taken it. */
static int64_t kernel_clock(void *opaque)
{
    AioContext *c = opaque;
    return io_uring_sq_ready(aio_ring(c)) ? 1000 : 5000;
}

typedef struct {
    AioCompletion comp;
    int64_t seen;
    int res;
} NopReq;

static void nop_done(AioCompletion *c, int res, unsigned flags)
{
    (void)flags;
    NopReq *r = container_of(c, NopReq, comp);
    r->res = res;
    r->seen = aio_loop_now_ns(ctx);
}

/* A completion reaped after the iteration's io_uring_enter sees the time
 * read after it, not the one from the iteration's start, whether the
 * iteration waited (blocking) or only submitted. */
static void test_refreshed_after_kernel(void **state)
{
    (void)state;
    for (int blocking = 0; blocking < 2; blocking++) {
        NopReq r = { .comp.cb = nop_done, .seen = -1, .res = -1 };
        struct io_uring_sqe *sqe = aio_get_sqe(ctx);
        io_uring_prep_nop(sqe);
        aio_sqe_set_completion(sqe, &r.comp);
        aio_context_set_clock(ctx, kernel_clock, ctx);
        assert_int_equal(aio_loop_now_ns(ctx), 1000);
        assert_true(aio_poll(ctx, blocking));
        assert_int_equal(r.res, 0);
        assert_int_equal(r.seen, 5000);
        aio_context_set_clock(ctx, NULL, NULL);
    }
}

static void coroutine_fn record_loop_time(void *opaque)
{
    *(int64_t *)opaque = aio_loop_now_ns(aio_current());
}

/* A synchronous caller may have been busy since its last poll: the
 * coroutine aio_co_run_sync starts sees the time of the call. */
static void test_run_sync_refreshes(void **state)
{
    (void)state;
    vclock = 1000;
    aio_context_set_clock(ctx, virtual_now, NULL);
    vclock = 7000;
    int64_t seen = -1;
    aio_co_run_sync(record_loop_time, &seen);
    assert_int_equal(seen, 7000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_follows_virtual_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refreshed_after_kernel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_sync_refreshes, setup, teardown),
    };
    return cmocka_run_group_tests_name("aio-loop-time", tests, NULL, NULL);
}
