/*
 * test-aio-main-loop.c - the pieces of a serving daemon's main loop that run
 * without the kernel driver: signals read through a signalfd on the ring,
 * a periodic timer beside them, and background coroutines started on the
 * loop from other threads (aio_co_spawn).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <cmocka.h>
#include "aio.h"

static sigset_t watched;

/* Before any thread exists, so that every thread inherits the mask and the
 * signals can only be taken through the signalfd. */
static int setup(void **state)
{
    (void)state;
    sigemptyset(&watched);
    sigaddset(&watched, SIGTERM);
    sigaddset(&watched, SIGHUP);
    sigaddset(&watched, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &watched, NULL);
    return aio_main_init(NULL) ? 0 : -1;
}

typedef struct {
    int n;
    int signo[8];
    uint32_t pid[8];
    bool stop;
} SigLog;

static void on_signal(void *opaque, const struct signalfd_siginfo *si)
{
    SigLog *l = opaque;
    if (l->n < 8) {
        l->signo[l->n] = (int)si->ssi_signo;
        l->pid[l->n] = si->ssi_pid;
        l->n++;
    }
    if (si->ssi_signo == SIGTERM) {
        l->stop = true;
    }
}

/* Polls until cond or ~5 s of loop time (a safety net: a lost signal
 * fails the test instead of hanging it). */
#define POLL_UNTIL(ctx, cond)                                           \
    do {                                                                \
        AioTimer guard_;                                                \
        bool expired_ = false;                                          \
        aio_timer_init(&guard_, (ctx), set_flag, &expired_);            \
        aio_timer_mod(&guard_, aio_now_ns(ctx) + 5000000000LL);         \
        while (!(cond) && !expired_) {                                  \
            aio_poll((ctx), true);                                      \
        }                                                               \
        aio_timer_del(&guard_);                                         \
        assert_false(expired_);                                         \
    } while (0)

static void set_flag(void *opaque)
{
    *(bool *)opaque = true;
}

/* SIGTERM to ourselves: the callback runs from the loop, with the sender. */
static void test_sigterm_runs_callback(void **state)
{
    (void)state;
    AioContext *ctx = aio_current();
    SigLog l = { 0 };
    AioSignalWatch *w = aio_signal_watch_new(ctx, &watched, on_signal, &l, NULL);
    assert_non_null(w);
    aio_poll(ctx, false);
    assert_int_equal(l.n, 0);
    assert_int_equal(kill(getpid(), SIGTERM), 0);
    POLL_UNTIL(ctx, l.stop);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.signo[0], SIGTERM);
    assert_int_equal(l.pid[0], (uint32_t)getpid());
    aio_signal_watch_free(w);
}

/* Several kinds, and the watch keeps working after each one (re-armed). */
static void test_signals_one_after_another(void **state)
{
    (void)state;
    AioContext *ctx = aio_current();
    SigLog l = { 0 };
    AioSignalWatch *w = aio_signal_watch_new(ctx, &watched, on_signal, &l, NULL);
    assert_non_null(w);
    kill(getpid(), SIGUSR2);
    POLL_UNTIL(ctx, l.n == 1);
    kill(getpid(), SIGHUP);
    POLL_UNTIL(ctx, l.n == 2);
    kill(getpid(), SIGTERM);
    POLL_UNTIL(ctx, l.stop);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.signo[0], SIGUSR2);
    assert_int_equal(l.signo[1], SIGHUP);
    assert_int_equal(l.signo[2], SIGTERM);
    aio_signal_watch_free(w);
}

/* A signal sent while nobody watched is pending: the watch picks it up. */
static void test_pending_signal_is_delivered(void **state)
{
    (void)state;
    AioContext *ctx = aio_current();
    SigLog l = { 0 };
    kill(getpid(), SIGHUP);
    AioSignalWatch *w = aio_signal_watch_new(ctx, &watched, on_signal, &l, NULL);
    assert_non_null(w);
    POLL_UNTIL(ctx, l.n == 1);
    assert_int_equal(l.signo[0], SIGHUP);
    aio_signal_watch_free(w);
}

/* Free while its poll is in the kernel, then again with a signal pending:
 * nothing is delivered to the freed watch, and the next one gets it. */
static void test_free_while_armed(void **state)
{
    (void)state;
    AioContext *ctx = aio_current();
    SigLog l1 = { 0 }, l2 = { 0 };
    AioSignalWatch *w = aio_signal_watch_new(ctx, &watched, on_signal, &l1, NULL);
    assert_non_null(w);
    aio_poll(ctx, false);        /* the poll is in the kernel now */
    aio_signal_watch_free(w);
    kill(getpid(), SIGUSR2);
    aio_poll(ctx, false);
    assert_int_equal(l1.n, 0);
    w = aio_signal_watch_new(ctx, &watched, on_signal, &l2, NULL);
    POLL_UNTIL(ctx, l2.n == 1);
    assert_int_equal(l2.signo[0], SIGUSR2);
    assert_int_equal(l1.n, 0);
    aio_signal_watch_free(w);
}

/* ---- the daemon's shape: a periodic timer until SIGTERM ---- */

typedef struct {
    AioTimer t;
    int ticks;
    int64_t period;
} Ticker;

static void tick(void *opaque)
{
    Ticker *k = opaque;
    __atomic_add_fetch(&k->ticks, 1, __ATOMIC_RELEASE);
    aio_timer_mod(&k->t, aio_now_ns(k->t.ctx) + k->period);
}

typedef struct {
    const int *ticks;          /* SIGTERM once the loop has ticked this often */
    int until;
    int64_t killed_at;
} KillArg;

/* Counts ticks rather than time: a loaded machine may stall the loop for
 * longer than a few periods (a fixed 150 ms once saw too few ticks). */
static void *kill_later(void *opaque)
{
    KillArg *a = opaque;
    struct timespec ts = { 0, 5 * 1000000L };
    for (int i = 0; i < 1000 && __atomic_load_n(a->ticks, __ATOMIC_ACQUIRE) < a->until; i++) {
        nanosleep(&ts, NULL);
    }
    __atomic_store_n(&a->killed_at, clock_monotonic_ns(), __ATOMIC_RELEASE);
    kill(getpid(), SIGTERM);
    return NULL;
}

/* The loop sleeps in io_uring between ticks (the timer is real time), and a
 * signal from another thread ends it at once rather than at the next tick. */
static void test_timer_ticks_until_sigterm(void **state)
{
    (void)state;
    AioContext *ctx = aio_current();
    SigLog l = { 0 };
    Ticker k = { .period = 20 * 1000000LL };
    AioSignalWatch *w = aio_signal_watch_new(ctx, &watched, on_signal, &l, NULL);
    assert_non_null(w);
    aio_timer_init(&k.t, ctx, tick, &k);
    tick(&k);
    KillArg a = { .ticks = &k.ticks, .until = 6 };
    pthread_t th;
    pthread_create(&th, NULL, kill_later, &a);
    int64_t start = clock_monotonic_ns();
    int polls = 0;
    while (!l.stop) {
        aio_poll(ctx, true);
        polls++;
    }
    int64_t end = clock_monotonic_ns(), took = end - start;
    pthread_join(th, NULL);
    aio_timer_del(&k.t);
    aio_signal_watch_free(w);
    assert_true(k.ticks >= 6);
    /* Never more ticks than periods went by (the first tick was at once). */
    assert_true(k.ticks <= 1 + took / k.period + 1);
    /* Slept between events, no busy loop. */
    assert_true(polls < 4 * (k.ticks + 2));
    /* The signal ended the loop promptly (loose: a loaded machine may not
     * run this thread for a while). */
    assert_true(end - __atomic_load_n(&a.killed_at, __ATOMIC_ACQUIRE) < 1000 * 1000000LL);
}

/* ---- background coroutines on the main loop ---- */

typedef struct {
    AioContext *main_ctx;
    pthread_t ran_on;
    AioContext *ran_in;
    int64_t slept;
    bool done;
} BgWork;

static pthread_t __attribute__((noinline)) current_thread(void)
{
    pthread_t t = pthread_self();
    __asm__ volatile("" : "+r"(t));
    return t;
}

static void coroutine_fn background(void *opaque)
{
    BgWork *b = opaque;
    int64_t t0 = clock_monotonic_ns();
    aio_co_sleep_ns(5 * 1000000LL);     /* a timer on the loop it runs on */
    b->slept = clock_monotonic_ns() - t0;
    b->ran_on = current_thread();
    b->ran_in = aio_current();
    __atomic_store_n(&b->done, true, __ATOMIC_RELEASE);
}

static void *spawner(void *opaque)
{
    BgWork *b = opaque;
    AioContext *mine = aio_context_new(16, NULL);
    aio_set_current(mine);
    aio_co_spawn(b->main_ctx, background, b);
    aio_set_current(NULL);
    aio_context_free(mine);
    return NULL;
}

/* A queue thread starts work for the home context; the main loop runs it. */
static void test_spawn_from_other_thread_runs_on_loop(void **state)
{
    (void)state;
    AioContext *ctx = aio_current();
    BgWork b = { .main_ctx = ctx };
    pthread_t th;
    pthread_create(&th, NULL, spawner, &b);
    pthread_join(th, NULL);
    POLL_UNTIL(ctx, __atomic_load_n(&b.done, __ATOMIC_ACQUIRE));
    assert_true(pthread_equal(b.ran_on, pthread_self()));
    assert_ptr_equal(b.ran_in, ctx);
    assert_true(b.slept >= 5 * 1000000LL);
}

/* On its own thread too it is only scheduled: the caller finishes first. */
static void test_spawn_on_own_loop_is_deferred(void **state)
{
    (void)state;
    AioContext *ctx = aio_current();
    BgWork b = { .main_ctx = ctx };
    aio_co_spawn(ctx, background, &b);
    assert_false(b.done);
    assert_null(b.ran_in);
    POLL_UNTIL(ctx, b.done);
    assert_ptr_equal(b.ran_in, ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm_runs_callback),
        cmocka_unit_test(test_signals_one_after_another),
        cmocka_unit_test(test_pending_signal_is_delivered),
        cmocka_unit_test(test_free_while_armed),
        cmocka_unit_test(test_timer_ticks_until_sigterm),
        cmocka_unit_test(test_spawn_from_other_thread_runs_on_loop),
        cmocka_unit_test(test_spawn_on_own_loop_is_deferred),
    };
    return cmocka_run_group_tests_name("aio-main-loop", tests, setup, NULL);
}
