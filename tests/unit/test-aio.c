/*
 * test-aio.c - AioContext: ring setup and fallback, bottom halves, timers
 * (real and virtual clock), cross-thread wake-ups, coroutine file I/O,
 * submission batching and a ring smaller than the I/O in flight.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <linux/falloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "aio.h"
#include "iov.h"

static AioContext *ctx;

static int setup(void **state)
{
    (void)state;
    ctx = aio_context_new(AIO_DEFAULT_ENTRIES, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    aio_set_current(NULL);
    aio_context_free(ctx);
    ctx = NULL;
    return 0;
}

/* See test-coroutine.c: pthread_self() is const, hide it from CSE. */
static pthread_t __attribute__((noinline)) current_thread(void)
{
    pthread_t t = pthread_self();
    __asm__ volatile("" : "+r"(t));
    return t;
}

static bool kernel_at_least(int maj, int min)
{
    struct utsname u;
    int a = 0, b = 0;
    uname(&u);
    sscanf(u.release, "%d.%d", &a, &b);
    return a > maj || (a == maj && b >= min);
}

/* ---- ring flags ---- */

static void coroutine_fn nop_io(void *opaque)
{
    struct io_uring_sqe *sqe = aio_get_sqe(aio_current());
    io_uring_prep_nop(sqe);
    *(int *)opaque = aio_co_submit_sqe_wait(sqe, NULL) + 1;
}

static void test_ring_flags_fallback(void **state)
{
    (void)state;
    static const struct { const char *env; unsigned want; } cases[] = {
        { "none", 0 },
        { "coop", IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG },
        { "defer", IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN },
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        setenv("UBLKD_IO_URING_SETUP", cases[i].env, 1);
        AioContext *c = aio_context_new(8, NULL);
        unsetenv("UBLKD_IO_URING_SETUP");
        assert_non_null(c);
        unsigned got = aio_ring_flags(c);
        if (i == 2) {
            /* TASKRUN_FLAG is optional on DEFER_TASKRUN rings (adaptive
             * polling wants it, older kernels refuse the pair). */
            got &= ~IORING_SETUP_TASKRUN_FLAG;
        }
        if (i < 2 || kernel_at_least(6, 1)) {
            assert_int_equal(got, cases[i].want);
        }
        /* Whatever we got must actually work. */
        aio_set_current(c);
        int r = 0;
        aio_co_run_sync(nop_io, &r);
        assert_int_equal(r, 1);
        aio_set_current(ctx);
        aio_context_free(c);
    }
}

/* A context made on one thread and used on another (SINGLE_ISSUER binding). */
static void *use_foreign_ctx(void *arg)
{
    AioContext *c = arg;
    aio_set_current(c);
    int r = 0;
    aio_co_run_sync(nop_io, &r);
    aio_set_current(NULL);
    return (void *)(intptr_t)r;
}

static void test_ctx_created_elsewhere(void **state)
{
    (void)state;
    AioContext *c = aio_context_new(8, NULL);
    pthread_t t;
    void *ret;
    pthread_create(&t, NULL, use_foreign_ctx, c);
    pthread_join(t, &ret);
    assert_int_equal((intptr_t)ret, 1);
    aio_context_free(c);
}

/* ---- bottom halves ---- */

static int bh_log[16], bh_n;
static void bh_cb(void *opaque)
{
    bh_log[bh_n++] = (int)(intptr_t)opaque;
}

static void test_bh_basic(void **state)
{
    (void)state;
    bh_n = 0;
    AioBH *a = aio_bh_new(ctx, bh_cb, (void *)1);
    AioBH *b = aio_bh_new(ctx, bh_cb, (void *)2);
    AioBH *c = aio_bh_new(ctx, bh_cb, (void *)3);
    aio_bh_schedule(b);
    aio_bh_schedule(a);
    aio_bh_schedule(b);                  /* already scheduled: runs once */
    aio_bh_schedule(c);
    aio_bh_delete(c);                    /* deleted while scheduled: never runs */
    aio_bh_schedule_oneshot(ctx, bh_cb, (void *)4);
    assert_true(aio_poll(ctx, false));
    assert_int_equal(bh_n, 3);
    assert_int_equal(bh_log[0], 2);      /* FIFO */
    assert_int_equal(bh_log[1], 1);
    assert_int_equal(bh_log[2], 4);
    assert_false(aio_poll(ctx, false));  /* nothing left */
    aio_bh_schedule(a);                  /* reusable */
    aio_poll(ctx, false);
    assert_int_equal(bh_n, 4);
    aio_bh_delete(a);
    aio_bh_delete(b);
}

typedef struct {
    AioContext *ctx;
    AioBH *bh;
    int delay_ms;
    int64_t sent_ns;
} Remote;

static void *remote_schedule(void *arg)
{
    Remote *r = arg;
    usleep(r->delay_ms * 1000);
    r->sent_ns = clock_monotonic_ns();
    if (r->bh) {
        aio_bh_schedule(r->bh);
    } else {
        aio_notify(r->ctx);
    }
    return NULL;
}

static atomic_int remote_bh_ran;
static pthread_t remote_bh_thread;
static void remote_bh_cb(void *opaque)
{
    (void)opaque;
    remote_bh_thread = current_thread();
    atomic_store(&remote_bh_ran, 1);
}

static void test_bh_from_other_thread(void **state)
{
    (void)state;
    for (int i = 0; i < 20; i++) {
        atomic_store(&remote_bh_ran, 0);
        Remote r = { .ctx = ctx, .bh = aio_bh_new(ctx, remote_bh_cb, NULL),
                     .delay_ms = i & 1 ? 0 : 5 };
        pthread_t t;
        pthread_create(&t, NULL, remote_schedule, &r);
        int64_t start = clock_monotonic_ns();
        AIO_WAIT_WHILE(ctx, !atomic_load(&remote_bh_ran));
        assert_true(clock_monotonic_ns() - start < 2000000000LL);
        assert_true(pthread_equal(remote_bh_thread, pthread_self()));
        pthread_join(t, NULL);
        aio_bh_delete(r.bh);
    }
}

static void test_notify_wakes_poll(void **state)
{
    (void)state;
    while (aio_poll(ctx, false)) {
    }
    int64_t worst = 0;
    for (int i = 0; i < 10; i++) {
        Remote r = { .ctx = ctx, .delay_ms = 20 };
        pthread_t t;
        pthread_create(&t, NULL, remote_schedule, &r);
        bool progress = aio_poll(ctx, true);   /* nothing else can wake us */
        int64_t end = clock_monotonic_ns();
        pthread_join(t, NULL);
        assert_true(progress);
        /* Really slept until the notify: not end - start >= the delay,
         * because under TSan pthread_create can return after the thread
         * has already slept part of it. */
        assert_true(end >= r.sent_ns);
        if (end - r.sent_ns > worst) {
            worst = end - r.sent_ns;
        }
    }
    /* Sanity bound, not a benchmark: a wake-up takes microseconds. */
    assert_true(worst < 50000000);
    /* A notify that arrives before the poll is not lost. */
    aio_notify(ctx);
    assert_true(aio_poll(ctx, true));
}

/* Many threads scheduling one-shot BHs at once: none lost or run twice. */
#define BH_THREADS 4
#define BH_PER_THREAD 5000
static atomic_int bh_storm_count;

static void bh_storm_cb(void *opaque)
{
    (void)opaque;
    atomic_fetch_add(&bh_storm_count, 1);
}

static void *bh_storm(void *arg)
{
    for (int i = 0; i < BH_PER_THREAD; i++) {
        aio_bh_schedule_oneshot(arg, bh_storm_cb, NULL);
    }
    return NULL;
}

static void test_bh_storm(void **state)
{
    (void)state;
    pthread_t t[BH_THREADS];
    atomic_store(&bh_storm_count, 0);
    for (int i = 0; i < BH_THREADS; i++) {
        pthread_create(&t[i], NULL, bh_storm, ctx);
    }
    AIO_WAIT_WHILE(ctx, atomic_load(&bh_storm_count) < BH_THREADS * BH_PER_THREAD);
    for (int i = 0; i < BH_THREADS; i++) {
        pthread_join(t[i], NULL);
    }
    while (aio_poll(ctx, false)) {
    }
    assert_int_equal(atomic_load(&bh_storm_count), BH_THREADS * BH_PER_THREAD);
}

/* ---- timers ---- */

static int64_t vclock;
static int64_t virtual_now(void *opaque)
{
    (void)opaque;
    return vclock;
}

static void timer_cb(void *opaque)
{
    bh_log[bh_n++] = (int)(intptr_t)opaque;
}

static void test_timers_virtual(void **state)
{
    (void)state;
    vclock = 1000;
    aio_context_set_clock(ctx, virtual_now, NULL);
    assert_int_equal(aio_now_ns(ctx), 1000);
    AioTimer t[4];
    bh_n = 0;
    for (int i = 0; i < 4; i++) {
        aio_timer_init(&t[i], ctx, timer_cb, (void *)(intptr_t)i);
        assert_false(aio_timer_pending(&t[i]));
    }
    aio_timer_mod(&t[0], 1300);
    aio_timer_mod(&t[1], 1100);
    aio_timer_mod(&t[2], 1200);
    aio_timer_mod(&t[3], 1150);
    aio_timer_del(&t[3]);
    aio_timer_mod(&t[0], 1250);          /* re-arm moves it */
    assert_true(aio_timer_pending(&t[0]));
    assert_false(aio_timer_pending(&t[3]));

    aio_poll(ctx, false);
    assert_int_equal(bh_n, 0);
    vclock = 1199;
    aio_poll(ctx, false);
    assert_int_equal(bh_n, 1);
    assert_int_equal(bh_log[0], 1);
    vclock = 10000;
    aio_poll(ctx, false);
    assert_int_equal(bh_n, 3);
    assert_int_equal(bh_log[1], 2);
    assert_int_equal(bh_log[2], 0);
    for (int i = 0; i < 4; i++) {
        assert_false(aio_timer_pending(&t[i]));
    }
    aio_context_set_clock(ctx, NULL, NULL);
}

static void test_timer_monotonic_blocks(void **state)
{
    (void)state;
    AioTimer t;
    bh_n = 0;
    aio_timer_init(&t, ctx, timer_cb, (void *)7);
    int64_t start = aio_now_ns(ctx);
    aio_timer_mod(&t, start + 20000000);
    AIO_WAIT_WHILE(ctx, aio_timer_pending(&t));
    int64_t el = clock_monotonic_ns() - start;
    assert_int_equal(bh_n, 1);
    assert_true(el >= 20000000);
    assert_true(el < 2000000000LL);
}

static void coroutine_fn sleeper(void *opaque)
{
    aio_co_sleep_ns(500);
    *(int *)opaque = 1;
}

static void test_co_sleep_virtual(void **state)
{
    (void)state;
    int done = 0;
    vclock = 0;
    aio_context_set_clock(ctx, virtual_now, NULL);
    co_enter(co_create(sleeper, &done));
    aio_poll(ctx, false);
    vclock = 499;
    aio_poll(ctx, false);
    assert_int_equal(done, 0);
    vclock = 500;
    aio_poll(ctx, false);
    assert_int_equal(done, 1);
    aio_context_set_clock(ctx, NULL, NULL);
}

/* ---- coroutine I/O on a file ---- */

static int tmp_fd(void)
{
    char path[] = "/tmp/ublkd-test-aio-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    return fd;
}

static void coroutine_fn file_io(void *opaque)
{
    int fd = *(int *)opaque;
    char a[100], b[300], r[500];
    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    struct iovec w[2] = { { a, sizeof(a) }, { b, sizeof(b) } };

    assert_int_equal(aio_co_pwritev(fd, w, 2, 4096, 0), 400);
    assert_int_equal(aio_co_fsync(fd, false), 0);
    assert_int_equal(aio_co_fsync(fd, true), 0);
    assert_int_equal(aio_co_pwritev(fd, w, 1, 0, RWF_DSYNC), 100);

    struct iovec rv[2] = { { r, 50 }, { r + 50, 450 } };
    memset(r, 0, sizeof(r));
    assert_int_equal(aio_co_preadv(fd, rv, 2, 4096), 400);  /* short at EOF */
    assert_memory_equal(r, a, 100);
    assert_memory_equal(r + 100, b, 300);
    assert_int_equal(aio_co_preadv(fd, rv, 2, 4496), 0);    /* at EOF */
    assert_int_equal(aio_co_preadv(fd, rv, 1, 99), 50);
    assert_int_equal(r[0], 'a');
    assert_int_equal(r[1], 0);                              /* hole */

    assert_int_equal(aio_co_fallocate(fd, 0, 0, 1 << 20), 0);
    struct stat st;
    fstat(fd, &st);
    assert_int_equal(st.st_size, 1 << 20);
    assert_int_equal(aio_co_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                      4096, 4096), 0);
    assert_int_equal(aio_co_preadv(fd, rv, 1, 4096), 50);
    assert_true(buffer_is_zero(r, 50));

    assert_int_equal(aio_co_preadv(-1, rv, 1, 0), -EBADF);
    assert_int_equal(aio_co_fsync(-1, false), -EBADF);
    *(int *)opaque = -1;
}

static void test_file_io(void **state)
{
    (void)state;
    int fd = tmp_fd();
    int arg = fd;
    aio_co_run_sync(file_io, &arg);
    assert_int_equal(arg, -1);
    close(fd);
}

/* ---- registered buffer slots ---- */

#define SLOT (64 * 1024)
typedef struct FixedArg {
    int fd;
    unsigned char *region;     /* 4 slots */
    AioContext *ctx;
} FixedArg;

static unsigned char pattern_at(size_t off)
{
    return (unsigned char)(off * 7 + off / 4096);
}

static void coroutine_fn fixed_io(void *opaque)
{
    FixedArg *a = opaque;
    unsigned char *s1 = a->region + SLOT, *s3 = a->region + 3 * SLOT;

    /* A 4 KiB read registers one page of slot 1 and nothing else. */
    struct iovec v = { s1, 4096 };
    assert_int_equal(aio_co_preadv(a->fd, &v, 1, 8192), 4096);
    assert_int_equal(aio_buffer_slot_registered(a->ctx, 1), 4096);
    assert_int_equal(aio_buffer_slot_registered(a->ctx, 0), 0);
    assert_int_equal(aio_buffer_slot_registered(a->ctx, 2), 0);
    for (size_t i = 0; i < 4096; i++) {
        assert_int_equal(s1[i], pattern_at(8192 + i));
    }
    /* Reaching to 24 KiB into the slot grows it to the next power of two. */
    v = (struct iovec){ s1 + 4096, 20480 };
    assert_int_equal(aio_co_preadv(a->fd, &v, 1, 0), 20480);
    assert_int_equal(aio_buffer_slot_registered(a->ctx, 1), 32768);
    for (size_t i = 0; i < 20480; i++) {
        assert_int_equal(s1[4096 + i], pattern_at(i));
    }
    /* Crossing into slot 2 is not one registered buffer: plain read. */
    v = (struct iovec){ s1 + SLOT - 4096, 8192 };
    assert_int_equal(aio_co_preadv(a->fd, &v, 1, 4096), 8192);
    assert_int_equal(aio_buffer_slot_registered(a->ctx, 2), 0);
    for (size_t i = 0; i < 8192; i++) {
        assert_int_equal(s1[SLOT - 4096 + i], pattern_at(4096 + i));
    }
    /* A whole slot, then a write from a registered slot lands on disk. */
    v = (struct iovec){ s3, SLOT };
    assert_int_equal(aio_co_preadv(a->fd, &v, 1, SLOT), SLOT);
    assert_int_equal(aio_buffer_slot_registered(a->ctx, 3), SLOT);
    for (size_t i = 0; i < SLOT; i++) {
        s3[i] = (unsigned char)~s3[i];
    }
    v = (struct iovec){ s3 + 512, 3072 };
    assert_int_equal(aio_co_pwritev(a->fd, &v, 1, 4 * SLOT, 0), 3072);
    /* Outside the region: ordinary I/O still works. */
    unsigned char other[512];
    v = (struct iovec){ other, sizeof(other) };
    assert_int_equal(aio_co_preadv(a->fd, &v, 1, 4 * SLOT + 1024), 512);
    assert_memory_equal(other, s3 + 1024, 512);
    a->fd = -1;
}

static void test_fixed_buffers(void **state)
{
    (void)state;
    int fd = tmp_fd();
    static unsigned char file[5 * SLOT];
    for (size_t i = 0; i < sizeof(file); i++) {
        file[i] = pattern_at(i);
    }
    assert_int_equal(pwrite(fd, file, sizeof(file), 0), (ssize_t)sizeof(file));

    Error *err = NULL;
    AioContext *c2 = aio_context_new(64, &err);
    assert_non_null(c2);
    aio_set_current(c2);
    FixedArg a = { .fd = fd, .ctx = c2, .region = aligned_alloc(4096, 4 * SLOT) };
    assert_non_null(a.region);
    memset(a.region, 0, 4 * SLOT);
    if (!aio_register_buffer_slots(c2, a.region, SLOT, 4)) {
        aio_context_free(c2);
        aio_set_current(ctx);
        free(a.region);
        close(fd);
        skip();   /* kernel before 5.19 */
    }
    assert_false(aio_register_buffer_slots(c2, a.region, SLOT, 4));   /* once per ring */
    aio_co_run_sync(fixed_io, &a);
    assert_int_equal(a.fd, -1);
    unsigned char back[3072];
    assert_int_equal(pread(fd, back, sizeof(back), 4 * SLOT), (ssize_t)sizeof(back));
    assert_memory_equal(back, a.region + 3 * SLOT + 512, sizeof(back));
    aio_context_free(c2);
    aio_set_current(ctx);
    free(a.region);
    close(fd);
}

static void coroutine_fn poll_pipe(void *opaque)
{
    int *p = opaque;
    p[2] = aio_co_poll(p[0], POLLIN);
}

static void test_co_poll(void **state)
{
    (void)state;
    int p[3] = { 0, 0, 0 };
    assert_int_equal(pipe(p), 0);
    Coroutine *co = co_create(poll_pipe, p);
    co_enter(co);
    aio_poll(ctx, false);
    assert_int_equal(p[2], 0);           /* still waiting */
    assert_int_equal(write(p[1], "x", 1), 1);
    AIO_WAIT_WHILE(ctx, p[2] == 0);
    assert_true(p[2] & POLLIN);
    close(p[0]);
    close(p[1]);
}

/* ---- batching and a full ring ---- */

typedef struct {
    int fd;
    int idx;
    int *done;
} Reader;

static void coroutine_fn read_block(void *opaque)
{
    Reader *rd = opaque;
    uint32_t buf[1024];
    struct iovec v = { buf, sizeof(buf) };
    ssize_t r = aio_co_preadv(rd->fd, &v, 1, (int64_t)rd->idx * 4096);
    assert_int_equal(r, 4096);
    assert_int_equal(buf[0], rd->idx);
    assert_int_equal(buf[1023], rd->idx);
    (*rd->done)++;
}

static int file_with_blocks(int n)
{
    int fd = tmp_fd();
    uint32_t buf[1024];
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 1024; j++) {
            buf[j] = (uint32_t)i;
        }
        assert_int_equal(pwrite(fd, buf, sizeof(buf), (off_t)i * 4096), 4096);
    }
    return fd;
}

static void test_submit_batched(void **state)
{
    (void)state;
    int fd = file_with_blocks(16);
    int done = 0;
    Reader rd[16];
    while (aio_poll(ctx, false)) {
    }
    unsigned base = io_uring_sq_ready(aio_ring(ctx));
    for (int i = 0; i < 16; i++) {
        rd[i] = (Reader){ fd, i, &done };
        co_enter(co_create(read_block, &rd[i]));
    }
    /* Queued, not yet submitted: the loop submits them in one go. */
    assert_int_equal(io_uring_sq_ready(aio_ring(ctx)) - base, 16);
    AIO_WAIT_WHILE(ctx, done < 16);
    assert_int_equal(io_uring_sq_ready(aio_ring(ctx)), 0);
    close(fd);
}

static void test_ring_full(void **state)
{
    (void)state;
    enum { N = 200 };
    AioContext *small = aio_context_new(4, NULL);   /* 4 SQEs, 8 CQEs */
    assert_non_null(small);
    aio_set_current(small);
    int fd = file_with_blocks(N);
    int done = 0;
    static Reader rd[N];
    for (int i = 0; i < N; i++) {
        rd[i] = (Reader){ fd, i, &done };
        co_enter(co_create(read_block, &rd[i]));
    }
    AIO_WAIT_WHILE(small, done < N);
    assert_int_equal(done, N);
    close(fd);
    aio_set_current(ctx);
    aio_context_free(small);
}

/* ---- coroutines across threads ---- */

typedef struct {
    AioContext *ctx;
    pthread_t thread;
    atomic_bool stop;
} Worker;

static void *worker_main(void *arg)
{
    Worker *w = arg;
    aio_set_current(w->ctx);
    AIO_WAIT_WHILE(w->ctx, !atomic_load(&w->stop));
    return NULL;
}

static void worker_start(Worker *w)
{
    w->ctx = aio_context_new(32, NULL);
    assert_non_null(w->ctx);
    atomic_store(&w->stop, false);
    pthread_create(&w->thread, NULL, worker_main, w);
}

static void worker_stop(Worker *w)
{
    atomic_store(&w->stop, true);
    aio_notify(w->ctx);
    pthread_join(w->thread, NULL);
    aio_context_free(w->ctx);
}

typedef struct {
    Worker *w;
    pthread_t seen[4];
    AioContext *ctx_seen[4];
    int nop_res;
} Hop;

static void coroutine_fn hopper(void *opaque)
{
    Hop *h = opaque;
    AioContext *home = aio_current();
    h->seen[0] = current_thread();
    aio_co_reschedule_self(h->w->ctx);
    h->seen[1] = current_thread();
    h->ctx_seen[1] = aio_current();
    /* I/O now goes through the worker's ring. */
    int r = 0;
    nop_io(&r);
    h->nop_res = r;
    aio_co_reschedule_self(home);
    h->seen[2] = current_thread();
    h->ctx_seen[2] = aio_current();
}

static void test_reschedule_self(void **state)
{
    (void)state;
    Worker w;
    worker_start(&w);
    for (int i = 0; i < 50; i++) {
        Hop h = { .w = &w };
        aio_co_run_sync(hopper, &h);
        assert_true(pthread_equal(h.seen[0], pthread_self()));
        assert_true(pthread_equal(h.seen[1], w.thread));
        assert_ptr_equal(h.ctx_seen[1], w.ctx);
        assert_int_equal(h.nop_res, 1);
        assert_true(pthread_equal(h.seen[2], pthread_self()));
        assert_ptr_equal(h.ctx_seen[2], ctx);
    }
    worker_stop(&w);
}

static atomic_int woken;
static void coroutine_fn wait_for_wake(void *opaque)
{
    co_yield();
    *(pthread_t *)opaque = current_thread();
    atomic_store(&woken, 1);
}

static void *wake_from_thread(void *arg)
{
    usleep(5000);
    aio_co_wake(arg);
    return NULL;
}

static void test_co_wake_other_thread(void **state)
{
    (void)state;
    pthread_t ran_on = 0;
    atomic_store(&woken, 0);
    Coroutine *co = co_create(wait_for_wake, &ran_on);
    co_enter(co);
    assert_ptr_equal(co_get_ctx(co), ctx);
    pthread_t t;
    pthread_create(&t, NULL, wake_from_thread, co);
    AIO_WAIT_WHILE(ctx, !atomic_load(&woken));
    pthread_join(t, NULL);
    assert_true(pthread_equal(ran_on, pthread_self()));
}

static void coroutine_fn run_sync_inner(void *opaque)
{
    *(int *)opaque += 1;
    assert_true(in_coroutine());
}

static void coroutine_fn run_sync_outer(void *opaque)
{
    Coroutine *self = co_self();
    aio_co_run_sync(run_sync_inner, opaque);   /* in a coroutine: direct call */
    assert_ptr_equal(co_self(), self);
    *(int *)opaque += 10;
}

static void test_run_sync(void **state)
{
    (void)state;
    int v = 0;
    aio_co_run_sync(run_sync_outer, &v);
    assert_int_equal(v, 11);
    assert_false(in_coroutine());
}

/* Polling a context that is not the thread's current one: coroutines woken
 * by its completions still get it as their home. */
static void coroutine_fn home_probe(void *opaque)
{
    AioContext **seen = opaque;
    struct io_uring_sqe *sqe = aio_get_sqe(aio_current());
    io_uring_prep_nop(sqe);
    aio_co_submit_sqe_wait(sqe, NULL);
    seen[0] = aio_current();
    seen[1] = co_get_ctx(co_self());
}

static void test_poll_sets_current(void **state)
{
    (void)state;
    AioContext *other = aio_context_new(8, NULL);
    AioContext *seen[2] = { NULL, NULL };
    aio_set_current(other);
    co_enter(co_create(home_probe, seen));
    aio_set_current(ctx);                /* the thread's context is ctx ... */
    AIO_WAIT_WHILE(other, !seen[0]);     /* ... but we poll other */
    assert_ptr_equal(seen[0], other);
    assert_ptr_equal(seen[1], other);
    assert_ptr_equal(aio_current(), ctx);
    aio_context_free(other);
}

/* With a virtual clock an expired timer runs without sleeping. */
static void test_virtual_clock_never_sleeps(void **state)
{
    (void)state;
    AioTimer t;
    bh_n = 0;
    vclock = 0;
    aio_context_set_clock(ctx, virtual_now, NULL);
    aio_timer_init(&t, ctx, timer_cb, (void *)9);
    aio_timer_mod(&t, 1000000000LL);     /* one virtual second */
    vclock = 1000000000LL;
    int64_t start = clock_monotonic_ns();
    assert_true(aio_poll(ctx, true));
    assert_true(clock_monotonic_ns() - start < 500000000LL);
    assert_int_equal(bh_n, 1);
    aio_context_set_clock(ctx, NULL, NULL);
}

static void coroutine_fn park(void *opaque)
{
    (void)opaque;
    co_yield();
}

/* Entering a coroutine that also sits on a scheduled list would run it
 * twice; that is caught. */
static void test_enter_scheduled_aborts(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) {
            _exit(99);
        }
        Coroutine *co = co_create(park, NULL);
        co_enter(co);
        aio_co_schedule(ctx, co);
        co_enter(co);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring_flags_fallback),
        cmocka_unit_test(test_ctx_created_elsewhere),
        cmocka_unit_test(test_bh_basic),
        cmocka_unit_test(test_bh_from_other_thread),
        cmocka_unit_test(test_bh_storm),
        cmocka_unit_test(test_notify_wakes_poll),
        cmocka_unit_test(test_timers_virtual),
        cmocka_unit_test(test_timer_monotonic_blocks),
        cmocka_unit_test(test_co_sleep_virtual),
        cmocka_unit_test(test_file_io),
        cmocka_unit_test(test_fixed_buffers),
        cmocka_unit_test(test_co_poll),
        cmocka_unit_test(test_submit_batched),
        cmocka_unit_test(test_ring_full),
        cmocka_unit_test(test_reschedule_self),
        cmocka_unit_test(test_co_wake_other_thread),
        cmocka_unit_test(test_run_sync),
        cmocka_unit_test(test_poll_sets_current),
        cmocka_unit_test(test_virtual_clock_never_sleeps),
        cmocka_unit_test(test_enter_scheduled_aborts),
    };
    return cmocka_run_group_tests_name("aio", tests, setup, teardown);
}
