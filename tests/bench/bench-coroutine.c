/*
 * bench-coroutine.c - micro-benchmarks of the runtime: coroutine switch,
 * pooled create/terminate, CoMutex uncontended, cross-thread hand-off and
 * short sections from two threads, and one NOP SQE round trip through the
 * ring.
 *
 * Prints one line per result: "name: N ns/op (iterations)".
 * Usage: bench-coroutine [scale]   (scale multiplies iteration counts)
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include "aio.h"

static long scale = 1;

static void report(const char *name, int64_t ns, long iters)
{
    printf("%s: %.1f ns/op (%ld)\n", name, (double)ns / (double)iters, iters);
    fflush(stdout);
}

/* ---- enter + yield ---- */

static volatile bool stop_yielder;

static void coroutine_fn yielder(void *opaque)
{
    (void)opaque;
    while (!stop_yielder) {
        co_yield();
    }
}

static void bench_enter_yield(void)
{
    long n = 10000000 * scale;
    Coroutine *co = co_create(yielder, NULL);
    co_enter(co);                        /* warm up */
    int64_t t0 = clock_monotonic_ns();
    for (long i = 0; i < n; i++) {
        co_enter(co);
    }
    int64_t t1 = clock_monotonic_ns();
    stop_yielder = true;
    co_enter(co);
    report("coroutine enter+yield", t1 - t0, n);
}

static void coroutine_fn nop(void *opaque)
{
    (void)opaque;
}

static void bench_create_terminate(void)
{
    long n = 2000000 * scale;
    co_enter(co_create(nop, NULL));
    int64_t t0 = clock_monotonic_ns();
    for (long i = 0; i < n; i++) {
        co_enter(co_create(nop, NULL));
    }
    report("coroutine create+enter+terminate (pooled)", clock_monotonic_ns() - t0, n);
}

/* ---- CoMutex ---- */

static CoMutex m;

static void coroutine_fn uncontended(void *opaque)
{
    long n = *(long *)opaque;
    int64_t t0 = clock_monotonic_ns();
    for (long i = 0; i < n; i++) {
        co_mutex_lock(&m);
        co_mutex_unlock(&m);
    }
    *(long *)opaque = clock_monotonic_ns() - t0;
}

static void bench_mutex_uncontended(void)
{
    long n = 10000000 * scale, arg = n;
    co_mutex_init(&m);
    co_enter(co_create(uncontended, &arg));
    report("comutex lock+unlock uncontended", arg, n);
}

/* Two threads, one coroutine each, passing m back and forth: the holder
 * keeps the lock (going back to its event loop meanwhile, as a qcow2
 * metadata update would for its I/O) until the other side is queued, so
 * every acquisition is a hand-off woken through the waiter's own
 * AioContext.  The latency from unlock to the waiter running on its thread
 * is recorded; on a loaded machine the mean is dominated by the OS
 * scheduler's tail, so the median is printed as well. */
#define HANDOFF_MAX 1000000

typedef struct {
    long iters;
    atomic_bool done;
    AioContext *ctx;
} Contender;

static atomic_int ready;
static atomic_int finished;
static _Atomic int64_t t_unlock;
static int64_t *handoff_lat;
static long handoff_n;

static void coroutine_fn contend(void *opaque)
{
    Contender *c = opaque;
    for (long i = 0; i < c->iters; i++) {
        co_mutex_lock(&m);
        int64_t t = atomic_load(&t_unlock);
        if (t && handoff_n < HANDOFF_MAX) {
            handoff_lat[handoff_n++] = clock_monotonic_ns() - t;
        }
        while (!__atomic_load_n(&m.waiters, __ATOMIC_ACQUIRE) && atomic_load(&finished) == 0) {
            /* Let the other thread have a CPU on a busy machine. */
            sched_yield();
            aio_co_schedule(c->ctx, co_self());
            co_yield();
        }
        atomic_store(&t_unlock, atomic_load(&finished) ? 0 : clock_monotonic_ns());
        co_mutex_unlock(&m);
    }
    atomic_fetch_add(&finished, 1);
    atomic_store(&c->done, true);
}

static void *contender_main(void *arg)
{
    Contender *c = arg;
    c->ctx = aio_context_new(64, NULL);
    aio_set_current(c->ctx);
    atomic_fetch_add(&ready, 1);
    while (atomic_load(&ready) < 2) {
    }
    co_enter(co_create(contend, c));
    AIO_WAIT_WHILE(c->ctx, !atomic_load(&c->done));
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void bench_mutex_cross_thread(void)
{
    long n = 5000 * scale;
    Contender c[2] = { { .iters = n }, { .iters = n } };
    pthread_t t[2];
    co_mutex_init(&m);
    handoff_lat = calloc(HANDOFF_MAX, sizeof(int64_t));
    handoff_n = 0;
    atomic_store(&ready, 0);
    atomic_store(&finished, 0);
    atomic_store(&t_unlock, 0);
    int64_t t0 = clock_monotonic_ns();
    for (int i = 0; i < 2; i++) {
        pthread_create(&t[i], NULL, contender_main, &c[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    int64_t ns = clock_monotonic_ns() - t0;
    for (int i = 0; i < 2; i++) {
        aio_context_free(c[i].ctx);
    }
    report("comutex cross-thread hand-off, 2 threads (mean per acquisition)", ns, 2 * n);
    qsort(handoff_lat, (size_t)handoff_n, sizeof(int64_t), cmp_i64);
    if (handoff_n) {
        printf("comutex cross-thread hand-off, unlock->waiter runs (median): %ld ns/op (%ld)\n",
               (long)handoff_lat[handoff_n / 2], handoff_n);
        printf("comutex cross-thread hand-off, unlock->waiter runs (p99): %ld ns/op (%ld)\n",
               (long)handoff_lat[handoff_n * 99 / 100], handoff_n);
    }
    free(handoff_lat);
}

/* Two threads taking m for a few nanoseconds at a time (a counter
 * increment), as two queues updating one table would.  The holder runs on
 * the other CPU and lets go almost at once: a waiter that sleeps pays a
 * wake through its event loop for a lock that was free nanoseconds later. */
static long short_counter;

static void coroutine_fn short_sections(void *opaque)
{
    Contender *c = opaque;
    for (long i = 0; i < c->iters; i++) {
        co_mutex_lock(&m);
        short_counter++;
        co_mutex_unlock(&m);
        for (volatile int k = 0; k < 50; k++) {
        }
    }
    atomic_store(&c->done, true);
}

static void *short_main(void *arg)
{
    Contender *c = arg;
    c->ctx = aio_context_new(64, NULL);
    aio_set_current(c->ctx);
    atomic_fetch_add(&ready, 1);
    while (atomic_load(&ready) < 2) {
    }
    co_enter(co_create(short_sections, c));
    AIO_WAIT_WHILE(c->ctx, !atomic_load(&c->done));
    return NULL;
}

static void bench_mutex_short_sections(void)
{
    long n = 200000 * scale;
    Contender c[2] = { { .iters = n }, { .iters = n } };
    pthread_t t[2];
    co_mutex_init(&m);
    short_counter = 0;
    atomic_store(&ready, 0);
    int64_t t0 = clock_monotonic_ns();
    for (int i = 0; i < 2; i++) {
        pthread_create(&t[i], NULL, short_main, &c[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    int64_t ns = clock_monotonic_ns() - t0;
    for (int i = 0; i < 2; i++) {
        aio_context_free(c[i].ctx);
    }
    if (short_counter != 2 * n) {
        fprintf(stderr, "bench-coroutine: lost updates under the CoMutex\n");
        exit(1);
    }
    report("comutex short sections, 2 threads (per acquisition)", ns, 2 * n);
    printf("comutex short sections, 2 threads: %.1f%% of acquisitions slept\n",
           100.0 * (double)m.sleeps / (double)(2 * n));
}

/* ---- ring round trip ---- */

static void coroutine_fn nop_sqes(void *opaque)
{
    long n = *(long *)opaque;
    int64_t t0 = clock_monotonic_ns();
    for (long i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = aio_get_sqe(aio_current());
        io_uring_prep_nop(sqe);
        aio_co_submit_sqe_wait(sqe, NULL);
    }
    *(long *)opaque = clock_monotonic_ns() - t0;
}

static void bench_nop_sqe(void)
{
    long n = 500000 * scale, arg = n;
    aio_co_run_sync(nop_sqes, &arg);
    report("aio NOP SQE round trip (1 in flight)", arg, n);
}

/* ---- cross-thread schedule ping-pong ---- */

static AioContext *ctx_a, *ctx_b;
static atomic_bool pp_done;

static void coroutine_fn pingpong(void *opaque)
{
    long n = *(long *)opaque;
    int64_t t0 = clock_monotonic_ns();
    for (long i = 0; i < n; i++) {
        aio_co_reschedule_self(ctx_b);
        aio_co_reschedule_self(ctx_a);
    }
    *(long *)opaque = clock_monotonic_ns() - t0;
}

static void *ctx_b_main(void *arg)
{
    (void)arg;
    aio_set_current(ctx_b);
    AIO_WAIT_WHILE(ctx_b, !atomic_load(&pp_done));
    return NULL;
}

static void bench_reschedule(void)
{
    long n = 100000 * scale, arg = n;
    pthread_t t;
    ctx_a = aio_current();
    ctx_b = aio_context_new(64, NULL);
    pthread_create(&t, NULL, ctx_b_main, NULL);
    aio_co_run_sync(pingpong, &arg);
    atomic_store(&pp_done, true);
    aio_notify(ctx_b);
    pthread_join(t, NULL);
    aio_context_free(ctx_b);
    report("aio_co_reschedule_self to another thread (per hop)", arg, 2 * n);
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        scale = atol(argv[1]) > 0 ? atol(argv[1]) : 1;
    }
    AioContext *ctx = aio_main_init(NULL);
    if (!ctx) {
        return 1;
    }
    bench_enter_yield();
    bench_create_terminate();
    bench_mutex_uncontended();
    bench_mutex_cross_thread();
    bench_mutex_short_sections();
    bench_nop_sqe();
    bench_reschedule();
    return 0;
}
