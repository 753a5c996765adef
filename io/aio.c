/*
 * aio.c - AioContext: one io_uring ring per thread, with bottom halves,
 * timers, cross-thread coroutine scheduling and coroutine I/O helpers.
 *
 * Cross-thread traffic (aio_bh_schedule, aio_co_schedule, aio_notify) uses
 * lock-free push lists; the owner takes a whole list with one exchange.  A
 * sleeping owner is woken through an eventfd that always has a READ armed
 * on the ring.  To keep that write(2) off the fast path, the owner
 * advertises "I may sleep" in notify_me before its last check for work, and
 * wakers only write the eventfd when they see it (both sides use seq_cst,
 * so one of them always sees the other).
 *
 * Rings are created disabled (IORING_SETUP_R_DISABLED) and enabled by the
 * first thread that uses them, so SINGLE_ISSUER names the thread that really
 * submits even when the context was created on another one.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "aio.h"
#include "iov.h"
#include "coroutine-int.h"
#include "sanitizer.h"

struct AioBH {
    AioContext *ctx;
    AioBHFn *cb;
    void *opaque;
    atomic_uint flags;
    AioBH *next;
};
enum { BH_SCHEDULED = 1, BH_DELETED = 2, BH_ONESHOT = 4 };

/* What SQEs must say for a buffer registered at an index: the address its
 * byte 0 has for the ring (0 for a buffer the kernel registered itself, such
 * as a ublk request's pages), and how many bytes it has. */
typedef struct AioFixedRef {
    uint64_t addr;
    size_t len;                  /* 0: nothing registered here */
} AioFixedRef;

struct AioContext {
    struct io_uring ring;
    unsigned ring_flags;
    bool enabled;
    pthread_t owner;             /* the thread that enabled the ring and runs it */
    char owner_name[16];         /* its name then, for the owner check's message */
    int efd;
    AioCompletion efd_comp;
    atomic_int notify_me;
    atomic_bool notified;
    /* Other threads between handing us work and their aio_notify: once the
     * work is visible we may run it and want to free the context, so
     * aio_context_free waits for this to drop to 0 (remote_wake_*). */
    atomic_uint remote_wakers;
    _Atomic(AioBH *) bh_list;
    _Atomic(Coroutine *) co_list;
    AioTimer *timers;            /* sorted by expire_ns, owner thread only */
    int64_t loop_now;            /* aio_loop_now_ns(); owner thread only */
    AioClockFn *clock;
    void *clock_opaque;
    /* Registered buffer slots (aio_register_buffer_slots); owner thread only. */
    char *fixed_base;
    size_t fixed_slot_size, fixed_size;
    size_t *fixed_len;           /* bytes registered per slot, 0 = none yet */
    bool fixed_full;             /* a registration failed: grow no more */
    /* Buffers that references (include/iov.h) name, by index; owner thread only. */
    unsigned ring_id;            /* in every reference to this ring's buffers */
    AioFixedRef *refs;
    unsigned nrefs;
    bool kernel_refs;            /* refs is aio_kernel_buffers_init's table */
};

static __thread AioContext *current_ctx;

/* ------------------------------------------------------------------ clock */

int64_t clock_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t default_clock(void *opaque)
{
    (void)opaque;
    return clock_monotonic_ns();
}

int64_t aio_now_ns(AioContext *ctx)
{
    return ctx->clock(ctx->clock_opaque);
}

/* The loop time: one reading of ctx's clock (virtual or not) at the start of
 * each aio_poll iteration and one when it is back from io_uring, so that
 * per-request accounting loads it instead of reading the clock twice per
 * request.  Timers read the clock itself. */
static inline void loop_time_update(AioContext *ctx)
{
    ctx->loop_now = ctx->clock(ctx->clock_opaque);
}

int64_t aio_loop_now_ns(AioContext *ctx)
{
    return ctx->loop_now;
}

void aio_context_set_clock(AioContext *ctx, AioClockFn *now, void *opaque)
{
    ctx->clock = now ? now : default_clock;
    ctx->clock_opaque = now ? opaque : NULL;
    loop_time_update(ctx);   /* follows the new clock at once */
}

static bool clock_is_virtual(AioContext *ctx)
{
    return ctx->clock != default_clock;
}

/* -------------------------------------------------------------- lifecycle */

static void efd_arm(AioContext *ctx);

/* Where wake-up reads land.  The value is never looked at, and keeping it
 * out of AioContext means a read still completing while the ring is torn
 * down cannot write into a freed context. */
static uint64_t efd_sink;

static void efd_done(AioCompletion *c, int res, unsigned flags)
{
    AioContext *ctx = container_of(c, AioContext, efd_comp);
    (void)flags;
    if (res < 0 && res != -EINTR && res != -EAGAIN && res != -ECANCELED) {
        fprintf(stderr, "ublkd: aio: eventfd read failed: %s\n", strerror(-res));
    }
    efd_arm(ctx);
}

static void efd_arm(AioContext *ctx)
{
    struct io_uring_sqe *sqe = aio_get_sqe(ctx);
    io_uring_prep_read(sqe, ctx->efd, &efd_sink, sizeof(efd_sink), 0);
    aio_sqe_set_completion(sqe, &ctx->efd_comp);
}

/*
 * The owner check.  A SINGLE_ISSUER ring fails a submission from another
 * thread with -EEXIST, a ring without it would be corrupted silently (the
 * SQ tail is not atomic), and the timer and completion state beside the
 * ring is the owner's alone: either way the bug shows up far from its cause.
 * So every entry that touches the ring checks the caller, unless NDEBUG
 * (Kconfig.md: on in every build the Makefile makes, off only when a
 * packager adds -DNDEBUG).  It costs a TLS load and a compare.
 */
#ifdef NDEBUG
#define aio_assert_owner(ctx, what) ((void)0)
#else
static void __attribute__((noinline, cold, noreturn)) owner_violation(AioContext *ctx,
                                                                    const char *what)
{
    char self[16] = "?";
    pthread_getname_np(pthread_self(), self, sizeof(self));
    fprintf(stderr, "ublkd: aio: %s on AioContext %p from thread '%s', but its ring belongs "
            "to thread '%s': only the owner may submit (use aio_bh_schedule or "
            "aio_co_schedule to get there)\n", what, (void *)ctx, self, ctx->owner_name);
    abort();
}

#define aio_assert_owner(ctx, what)                                         \
    do {                                                                    \
        if (unlikely(!pthread_equal((ctx)->owner, pthread_self()))) {      \
            owner_violation((ctx), (what));                                 \
        }                                                                   \
    } while (0)
#endif

bool aio_context_is_owner(AioContext *ctx)
{
    return !ctx->enabled || pthread_equal(ctx->owner, pthread_self());
}

/* First use by the owner thread: enable the ring, arm the wake-up read.
 * Later uses: assert that the caller is that thread. */
static inline void aio_bind(AioContext *ctx, const char *what)
{
    if (likely(ctx->enabled)) {
        aio_assert_owner(ctx, what);
        return;
    }
    (void)what;
    ctx->owner = pthread_self();
    pthread_getname_np(ctx->owner, ctx->owner_name, sizeof(ctx->owner_name));
    if (ctx->ring_flags & IORING_SETUP_R_DISABLED) {
        /* liburing 2.3 declares io_uring_enable_rings but does not export it. */
        long ret = syscall(__NR_io_uring_register, ctx->ring.ring_fd,
                           IORING_REGISTER_ENABLE_RINGS, NULL, 0);
        if (ret < 0) {
            fprintf(stderr, "ublkd: aio: IORING_REGISTER_ENABLE_RINGS: %s\n", strerror(errno));
            abort();
        }
    }
    ctx->enabled = true;
    efd_arm(ctx);
}

/* Ring setup levels, best first; UBLKD_IO_URING_SETUP=defer|coop|none caps it. */
static const unsigned ring_levels[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    0,
};

static unsigned ring_first_level(void)
{
    const char *env = getenv("UBLKD_IO_URING_SETUP");
    if (!env || !strcmp(env, "defer")) {
        return 0;
    }
    if (!strcmp(env, "coop")) {
        return 1;
    }
    return 2;
}

/* See sanitizer.h: ring memory is unmapped behind TSan's back. */
static char ring_reuse_sync;

/* Around "publish work for ctx, then aio_notify(ctx)" from another thread. */
static inline void remote_wake_begin(AioContext *ctx)
{
    atomic_fetch_add(&ctx->remote_wakers, 1);
}

static inline void remote_wake_end(AioContext *ctx)
{
    atomic_fetch_sub_explicit(&ctx->remote_wakers, 1, memory_order_release);
}

AioContext *aio_context_new(unsigned entries, Error **errp)
{
    AioContext *ctx = calloc(1, sizeof(*ctx));
    int ret = -EINVAL;

    if (!ctx) {
        error_setg(errp, "aio: out of memory");
        return NULL;
    }
    if (!entries) {
        entries = AIO_DEFAULT_ENTRIES;
    }
    for (unsigned i = ring_first_level(); i < ARRAY_SIZE(ring_levels); i++) {
        struct io_uring_params p = { .flags = ring_levels[i] };
        ret = io_uring_queue_init_params(entries, &ctx->ring, &p);
        if (ret == 0) {
            ctx->ring_flags = ring_levels[i];
            tsan_acquire(&ring_reuse_sync);
            break;
        }
        if (ret != -EINVAL) {
            break;
        }
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "aio: io_uring_queue_init(%u entries)", entries);
        free(ctx);
        return NULL;
    }
    /* Blocking on purpose: some kernels complete an io_uring read of an
     * O_NONBLOCK file with -EAGAIN instead of waiting, which would spin. */
    ctx->efd = eventfd(0, EFD_CLOEXEC);
    if (ctx->efd < 0) {
        error_setg_errno(errp, errno, "aio: eventfd");
        tsan_release(&ring_reuse_sync);
        io_uring_queue_exit(&ctx->ring);
        free(ctx);
        return NULL;
    }
    ctx->efd_comp.cb = efd_done;
    ctx->clock = default_clock;
    /* 0 is never an id, so a zeroed cookie matches no ring. */
    static atomic_uint next_ring_id;
    ctx->ring_id = atomic_fetch_add(&next_ring_id, 1) % 0xffff + 1;
    loop_time_update(ctx);
    return ctx;
}

void aio_context_free(AioContext *ctx)
{
    if (!ctx) {
        return;
    }
    /* A waker that queued work we already ran may still be in aio_notify. */
    while (atomic_load_explicit(&ctx->remote_wakers, memory_order_acquire)) {
        sched_yield();
    }
    /* Bottom halves still queued are freed unrun. */
    AioBH *bh = atomic_exchange(&ctx->bh_list, NULL);
    while (bh) {
        AioBH *next = bh->next;
        unsigned f = atomic_load(&bh->flags);
        if (f & (BH_DELETED | BH_ONESHOT)) {
            free(bh);
        } else {
            atomic_fetch_and(&bh->flags, ~(unsigned)BH_SCHEDULED);
        }
        bh = next;
    }
    tsan_release(&ring_reuse_sync);
    io_uring_queue_exit(&ctx->ring);   /* also drops registered buffers */
    free(ctx->fixed_len);
    free(ctx->refs);
    close(ctx->efd);
    if (current_ctx == ctx) {
        current_ctx = NULL;
    }
    free(ctx);
}

void aio_set_current(AioContext *ctx)
{
    current_ctx = ctx;
    if (ctx) {
        aio_bind(ctx, "aio_set_current");
    }
}

/* noinline + opaque: see coroutine-int.h (coroutines migrate threads). */
__attribute__((noinline)) AioContext *aio_current(void)
{
    AioContext **p = &current_ctx;
    __asm__ volatile("" : "+r"(p));
    return *p;
}

AioContext *aio_main_init(Error **errp)
{
    AioContext *ctx = aio_current();
    if (!ctx) {
        ctx = aio_context_new(AIO_DEFAULT_ENTRIES, errp);
        if (ctx) {
            aio_set_current(ctx);
        }
    }
    return ctx;
}

struct io_uring *aio_ring(AioContext *ctx)
{
    return &ctx->ring;
}

unsigned aio_ring_flags(AioContext *ctx)
{
    return ctx->ring_flags & ~IORING_SETUP_R_DISABLED;
}

/* ------------------------------------------------------------ submission */

struct io_uring_sqe *aio_get_sqe(AioContext *ctx)
{
    aio_bind(ctx, "aio_get_sqe");
    for (int tries = 0;; tries++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ctx->ring);
        if (likely(sqe)) {
            return sqe;
        }
        /* SQ full: hand what we have to the kernel to make room.  With a
         * full CQ the kernel says EBUSY; flushing task work drains it into
         * the overflow list, which is unbounded (IORING_FEAT_NODROP). */
        int ret = io_uring_submit(&ctx->ring);
        if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR) {
            fprintf(stderr, "ublkd: aio: io_uring_submit: %s\n", strerror(-ret));
            abort();
        }
        if (ret <= 0) {
            io_uring_get_events(&ctx->ring);
        }
        if (tries > 1000000) {
            fprintf(stderr, "ublkd: aio: submission queue stuck\n");
            abort();
        }
    }
}

int aio_submit(AioContext *ctx)
{
    aio_bind(ctx, "aio_submit");
    return io_uring_submit(&ctx->ring);
}

/* ------------------------------------------------------------- wake-up */

void aio_notify(AioContext *ctx)
{
    atomic_store(&ctx->notified, true);
    if (atomic_load(&ctx->notify_me)) {
        uint64_t one = 1;
        ssize_t r = write(ctx->efd, &one, sizeof(one));
        (void)r;  /* EAGAIN means the counter is already non-zero: fine */
    }
}

/* ---------------------------------------------------------- bottom halves */

AioBH *aio_bh_new(AioContext *ctx, AioBHFn *cb, void *opaque)
{
    AioBH *bh = calloc(1, sizeof(*bh));
    if (!bh) {
        abort();
    }
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    return bh;
}

static void bh_push(AioBH *bh)
{
    AioContext *ctx = bh->ctx;
    bool remote = ctx != aio_current();
    if (remote) {
        remote_wake_begin(ctx);
    }
    AioBH *old = atomic_load(&ctx->bh_list);
    do {
        bh->next = old;
    } while (!atomic_compare_exchange_weak(&ctx->bh_list, &old, bh));
    if (remote) {
        aio_notify(ctx);
        remote_wake_end(ctx);
    }
}

void aio_bh_schedule(AioBH *bh)
{
    unsigned old = atomic_fetch_or(&bh->flags, BH_SCHEDULED);
    if (!(old & BH_SCHEDULED)) {
        bh_push(bh);
    }
}

void aio_bh_delete(AioBH *bh)
{
    if (!bh) {
        return;
    }
    unsigned old = atomic_fetch_or(&bh->flags, BH_DELETED);
    if (!(old & BH_SCHEDULED)) {
        free(bh);
    }
    /* else: freed when the list is run */
}

void aio_bh_schedule_oneshot(AioContext *ctx, AioBHFn *cb, void *opaque)
{
    AioBH *bh = aio_bh_new(ctx, cb, opaque);
    atomic_store(&bh->flags, BH_SCHEDULED | BH_ONESHOT);
    bh_push(bh);
}

/* Pushes are LIFO; reverse so work runs in the order it was scheduled. */
#define REVERSE_LIST(head, type, field) ({                  \
    type *_prev = NULL, *_cur = (head);                     \
    while (_cur) {                                          \
        type *_n = _cur->field;                             \
        _cur->field = _prev;                                \
        _prev = _cur;                                       \
        _cur = _n;                                          \
    }                                                       \
    _prev; })

static bool run_bhs(AioContext *ctx)
{
    /* A plain load first: the common empty case needs no locked RMW. */
    if (!atomic_load_explicit(&ctx->bh_list, memory_order_relaxed)) {
        return false;
    }
    AioBH *bh = atomic_exchange(&ctx->bh_list, NULL);
    if (!bh) {
        return false;
    }
    bh = REVERSE_LIST(bh, AioBH, next);
    while (bh) {
        AioBH *next = bh->next;
        /* After clearing SCHEDULED another thread may re-push bh. */
        unsigned f = atomic_fetch_and(&bh->flags, ~(unsigned)BH_SCHEDULED);
        if (f & BH_DELETED) {
            free(bh);
        } else {
            bh->cb(bh->opaque);
            if (f & BH_ONESHOT) {
                free(bh);
            }
        }
        bh = next;
    }
    return true;
}

/* ------------------------------------------------- coroutine scheduling */

void aio_co_schedule(AioContext *ctx, Coroutine *co)
{
    if (atomic_exchange(co_sched_flag(co), true)) {
        fprintf(stderr, "ublkd: aio_co_schedule: coroutine %p was already scheduled\n",
                (void *)co);
        abort();
    }
    bool remote = ctx != aio_current();
    if (remote) {
        remote_wake_begin(ctx);
    }
    Coroutine *old = atomic_load(&ctx->co_list);
    do {
        *co_sched_link(co) = old;
    } while (!atomic_compare_exchange_weak(&ctx->co_list, &old, co));
    if (remote) {
        aio_notify(ctx);
        remote_wake_end(ctx);
    }
}

static bool run_scheduled(AioContext *ctx)
{
    if (!atomic_load_explicit(&ctx->co_list, memory_order_relaxed)) {
        return false;
    }
    Coroutine *co = atomic_exchange(&ctx->co_list, NULL);
    if (!co) {
        return false;
    }
    Coroutine *prev = NULL;
    while (co) {
        Coroutine *n = *co_sched_link(co);
        *co_sched_link(co) = prev;
        prev = co;
        co = n;
    }
    for (co = prev; co;) {
        Coroutine *next = *co_sched_link(co);
        *co_sched_link(co) = NULL;
        atomic_store(co_sched_flag(co), false);
        co_enter(co);
        co = next;
    }
    return true;
}

void aio_co_wake(Coroutine *co)
{
    AioContext *ctx = co_get_ctx(co);
    if (ctx && ctx != aio_current()) {
        aio_co_schedule(ctx, co);
    } else if (in_coroutine()) {
        co_queue_wakeup_after_yield(co);
    } else {
        co_enter(co);
    }
}

void aio_co_spawn(AioContext *ctx, CoroutineEntry *fn, void *opaque)
{
    /* Scheduled, not entered, even on ctx's own thread: the caller may hold
     * locks or be in the middle of something fn must not see half done. */
    aio_co_schedule(ctx, co_create(fn, opaque));
}

void coroutine_fn aio_co_reschedule_self(AioContext *ctx)
{
    Coroutine *self = co_self();
    if (!self) {
        abort();
    }
    if (ctx == aio_current()) {
        return;
    }
    /* Published by co_enter once we are off our stack. */
    co_set_reschedule(self, ctx);
    co_yield();
}

/* ----------------------------------------------------------------- timers */

void aio_timer_init(AioTimer *t, AioContext *ctx, void (*cb)(void *), void *opaque)
{
    t->ctx = ctx;
    t->expire_ns = -1;
    t->cb = cb;
    t->opaque = opaque;
    t->next = NULL;
}

void aio_timer_del(AioTimer *t)
{
    if (t->expire_ns < 0) {
        return;
    }
    if (t->ctx->enabled) {
        aio_assert_owner(t->ctx, "aio_timer_del");
    }
    for (AioTimer **p = &t->ctx->timers; *p; p = &(*p)->next) {
        if (*p == t) {
            *p = t->next;
            break;
        }
    }
    t->next = NULL;
    t->expire_ns = -1;
}

void aio_timer_mod(AioTimer *t, int64_t expire_ns)
{
    /* The timer list is the owner's, unlocked, like the ring. */
    if (t->ctx->enabled) {
        aio_assert_owner(t->ctx, "aio_timer_mod");
    }
    aio_timer_del(t);
    if (expire_ns < 0) {
        expire_ns = 0;
    }
    AioTimer **p = &t->ctx->timers;
    /* Equal deadlines run in arming order. */
    while (*p && (*p)->expire_ns <= expire_ns) {
        p = &(*p)->next;
    }
    t->expire_ns = expire_ns;
    t->next = *p;
    *p = t;
}

bool aio_timer_pending(const AioTimer *t)
{
    return t->expire_ns >= 0;
}

static bool run_timers(AioContext *ctx)
{
    if (!ctx->timers) {
        return false;
    }
    int64_t now = aio_now_ns(ctx);
    bool progress = false;
    while (ctx->timers && ctx->timers->expire_ns <= now) {
        AioTimer *t = ctx->timers;
        ctx->timers = t->next;
        t->next = NULL;
        t->expire_ns = -1;
        t->cb(t->opaque);
        progress = true;
    }
    return progress;
}

/* -------------------------------------------------------------- the loop */

/*
 * While reaping a batch of completions, hand new SQEs to the kernel once a
 * few have queued up instead of only at the end of the iteration: with QD32
 * a batch often holds ~10 completions, and holding their follow-up requests
 * back until the whole batch is processed leaves the device a third idle.
 * Measured on 4k O_DIRECT random reads at QD32: +20-25% IOPS; a threshold of
 * 4 costs no more CPU per I/O than submitting once per iteration, where 1
 * (a syscall per request, as qemu-img does) costs ~20% more.
 *
 * Except when the batch drained the kernel: if what it still holds is under
 * 1/AIO_DRAINED_FRACTION of what it held before this batch completed, the
 * device sits idle until we feed it, so each follow-up request goes at once
 * until it holds that fraction again, then every AIO_SUBMIT_EARLY_SQES.
 * A virtio disk at QD32 completes ~31 of 32 requests in one burst, so this
 * costs ~3 extra io_uring_enter per burst: measured interleaved (6 rounds,
 * 4k QD32 -S step, vs qemu-img -i io_uring): randwrite 130k vs 120k IOPS
 * (1.07x qemu-img, was 0.99x) at the same CPU per I/O; randread unchanged
 * (88k, 3.83 vs 3.90 us/IO), where a fixed threshold of 2 cost +15% CPU.
 * A ublk queue ring holds an idle FETCH command per free tag (depth 128 by
 * default, QD32 in the VM bench), so there it only fires when nearly every
 * tag is busy; the VM numbers were taken with the plain threshold.
 */
#define AIO_SUBMIT_EARLY_SQES 4
#define AIO_DRAINED_FRACTION 8

/* Requests the kernel holds: SQEs it consumed minus CQEs it posted (the
 * armed eventfd read included).  Both are free-running counters in the
 * shared ring, so this is two loads and no syscall. */
static inline unsigned kernel_held(AioContext *ctx)
{
    int held = (int)(IO_URING_READ_ONCE(*ctx->ring.sq.khead) -
                     IO_URING_READ_ONCE(*ctx->ring.cq.ktail));
    return held > 0 ? (unsigned)held : 0;
}

static bool reap_cqes(AioContext *ctx)
{
    struct io_uring_cqe *cqe;
    bool progress = false;
    /* What the kernel held before this batch: still held plus completed. */
    uint64_t before = (uint64_t)kernel_held(ctx) + io_uring_cq_ready(&ctx->ring);
    /* One CQE at a time, marked seen before its callback, so a callback
     * that polls recursively cannot see it twice. */
    while (io_uring_peek_cqe(&ctx->ring, &cqe) == 0) {
        AioCompletion *c = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        unsigned flags = cqe->flags;
        io_uring_cqe_seen(&ctx->ring, cqe);
        if (c) {
            c->cb(c, res, flags);
            unsigned ready = io_uring_sq_ready(&ctx->ring);
            if (ready >= AIO_SUBMIT_EARLY_SQES ||
                (ready && (uint64_t)kernel_held(ctx) * AIO_DRAINED_FRACTION < before)) {
                io_uring_submit(&ctx->ring);
            }
            if (c != &ctx->efd_comp) {
                progress = true;
            }
        }
    }
    return progress;
}

static inline bool take_notified(AioContext *ctx)
{
    return atomic_load_explicit(&ctx->notified, memory_order_relaxed) &&
           atomic_exchange(&ctx->notified, false);
}

static bool has_pending_work(AioContext *ctx)
{
    return atomic_load(&ctx->bh_list) || atomic_load(&ctx->co_list) ||
           atomic_load(&ctx->notified);
}

bool aio_poll(AioContext *ctx, bool blocking)
{
    bool progress = false;
    /* Coroutines entered from here get ctx as their home, even if the
     * caller forgot aio_set_current (or polls a second context). */
    AioContext *saved = current_ctx;
    current_ctx = ctx;

    aio_bind(ctx, "aio_poll");
    loop_time_update(ctx);
    if (take_notified(ctx)) {
        progress = true;  /* someone asked us to look around */
    }
    progress |= run_scheduled(ctx);
    progress |= run_bhs(ctx);
    progress |= run_timers(ctx);
    progress |= reap_cqes(ctx);

    bool wait = blocking && !progress;
    if (wait) {
        atomic_store(&ctx->notify_me, 1);
        if (has_pending_work(ctx)) {
            wait = false;
        }
    }
    if (wait) {
        struct __kernel_timespec ts, *tsp = NULL;
        if (ctx->timers && !clock_is_virtual(ctx)) {
            int64_t d = ctx->timers->expire_ns - aio_now_ns(ctx);
            if (d < 0) {
                d = 0;
            }
            ts.tv_sec = d / 1000000000LL;
            ts.tv_nsec = d % 1000000000LL;
            tsp = &ts;
        }
        struct io_uring_cqe *cqe;
        int ret = io_uring_submit_and_wait_timeout(&ctx->ring, &cqe, 1, tsp, NULL);
        if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN) {
            fprintf(stderr, "ublkd: aio: io_uring wait: %s\n", strerror(-ret));
            abort();
        }
        atomic_store(&ctx->notify_me, 0);
    } else {
        if (blocking) {
            atomic_store(&ctx->notify_me, 0);
        }
        /* One submit for everything queued this iteration; DEFER_TASKRUN
         * rings also need the enter to post completions at all. */
        if (io_uring_sq_ready(&ctx->ring) || (ctx->ring_flags & IORING_SETUP_DEFER_TASKRUN)) {
            io_uring_submit_and_get_events(&ctx->ring);
        }
    }
    loop_time_update(ctx);   /* for what is reaped and run below */
    if (take_notified(ctx)) {
        progress = true;
    }
    progress |= reap_cqes(ctx);
    progress |= run_scheduled(ctx);
    progress |= run_bhs(ctx);
    progress |= run_timers(ctx);
    current_ctx = saved;
    return progress;
}

/* ------------------------------------------------------ coroutine helpers */

typedef struct CoIO {
    AioCompletion comp;
    Coroutine *co;
    int res;
    unsigned flags;
} CoIO;

static void co_io_done(AioCompletion *c, int res, unsigned flags)
{
    CoIO *io = container_of(c, CoIO, comp);
    io->res = res;
    io->flags = flags;
    aio_co_wake(io->co);
}

static AioContext *co_io_ctx(const char *what)
{
    AioContext *ctx = aio_current();
    if (!ctx || !in_coroutine()) {
        fprintf(stderr, "ublkd: %s needs a coroutine on a thread with an AioContext\n", what);
        abort();
    }
    return ctx;
}

static int coroutine_fn co_io_wait(struct io_uring_sqe *sqe, unsigned *cqe_flags)
{
    CoIO io = { .comp.cb = co_io_done, .co = co_self() };
    aio_sqe_set_completion(sqe, &io.comp);
    co_yield();
    if (cqe_flags) {
        *cqe_flags = io.flags;
    }
    return io.res;
}

int coroutine_fn aio_co_submit_sqe_wait(struct io_uring_sqe *sqe, unsigned *cqe_flags)
{
    co_io_ctx("aio_co_submit_sqe_wait");
    return co_io_wait(sqe, cqe_flags);
}

/* ---------------------------------------------------- registered buffers */

bool aio_register_buffer_slots(AioContext *ctx, void *base, size_t slot_size, unsigned nslots)
{
    if (ctx->fixed_len || ctx->refs || !nslots || slot_size > UINT32_MAX || nslots > 16384) {
        return false;
    }
    size_t *len = calloc(nslots, sizeof(*len));
    if (!len) {
        return false;
    }
    aio_bind(ctx, "aio_register_buffer_slots");
    if (io_uring_register_buffers_sparse(&ctx->ring, nslots) < 0) {
        free(len);     /* before 5.19, or not allowed: plain I/O it is */
        return false;
    }
    ctx->fixed_base = base;
    ctx->fixed_slot_size = slot_size;
    ctx->fixed_size = slot_size * nslots;
    ctx->fixed_len = len;
    return true;
}

size_t aio_buffer_slot_registered(AioContext *ctx, unsigned slot)
{
    return ctx->fixed_len && slot < ctx->fixed_size / ctx->fixed_slot_size
           ? ctx->fixed_len[slot] : 0;
}

unsigned aio_ring_id(AioContext *ctx)
{
    return ctx->ring_id;
}

#define AIO_FIXED_REFS 64

int aio_fixed_buffer_add(AioContext *ctx, void *base, size_t len)
{
    if (ctx->fixed_len || ctx->kernel_refs) {
        return -EBUSY;       /* the table is the tag slots' or the kernel's */
    }
    if (!len || len > UINT32_MAX) {
        return -EINVAL;
    }
    aio_bind(ctx, "aio_fixed_buffer_add");
    if (!ctx->refs) {
        AioFixedRef *refs = calloc(AIO_FIXED_REFS, sizeof(*refs));
        if (!refs) {
            return -ENOMEM;
        }
        int ret = io_uring_register_buffers_sparse(&ctx->ring, AIO_FIXED_REFS);
        if (ret < 0) {
            free(refs);
            return ret;
        }
        ctx->refs = refs;
        ctx->nrefs = AIO_FIXED_REFS;
    }
    for (unsigned i = 0; i < ctx->nrefs; i++) {
        if (ctx->refs[i].len) {
            continue;
        }
        struct iovec iov = { base, len };
        int ret = io_uring_register_buffers_update_tag(&ctx->ring, i, &iov, NULL, 1);
        if (ret != 1) {
            return ret < 0 ? ret : -EIO;
        }
        ctx->refs[i] = (AioFixedRef){ (uint64_t)(uintptr_t)base, len };
        return (int)i;
    }
    return -ENOSPC;
}

int aio_fixed_buffer_remove(AioContext *ctx, unsigned index)
{
    aio_bind(ctx, "aio_fixed_buffer_remove");
    if (ctx->kernel_refs) {
        return -EBUSY;
    }
    if (index >= ctx->nrefs || !ctx->refs[index].len) {
        return -ENOENT;
    }
    /* An empty iovec unregisters; requests already in flight keep the
     * buffer until they complete (the kernel holds a reference). */
    struct iovec iov = { NULL, 0 };
    int ret = io_uring_register_buffers_update_tag(&ctx->ring, index, &iov, NULL, 1);
    if (ret != 1) {
        return ret < 0 ? ret : -EIO;
    }
    ctx->refs[index].len = 0;
    return 0;
}

int aio_kernel_buffers_init(AioContext *ctx, unsigned n)
{
    if (ctx->fixed_len || ctx->refs) {
        return -EBUSY;
    }
    if (!n || n > IOV_REG_INDEX_MAX) {
        return -EINVAL;
    }
    AioFixedRef *refs = calloc(n, sizeof(*refs));
    if (!refs) {
        return -ENOMEM;
    }
    aio_bind(ctx, "aio_kernel_buffers_init");
    int ret = io_uring_register_buffers_sparse(&ctx->ring, n);
    if (ret < 0) {
        free(refs);
        return ret;
    }
    ctx->refs = refs;
    ctx->nrefs = n;
    ctx->kernel_refs = true;
    return 0;
}

void aio_kernel_buffer_set(AioContext *ctx, unsigned i, size_t len)
{
    assert(ctx->kernel_refs && i < ctx->nrefs);
    ctx->refs[i] = (AioFixedRef){ 0, len };
}

void aio_kernel_buffer_clear(AioContext *ctx, unsigned i)
{
    assert(ctx->kernel_refs && i < ctx->nrefs);
    ctx->refs[i].len = 0;
}

/* Grow slot's registration to cover its first `end` bytes.  Sizes double
 * (from one page), so a slot is registered a handful of times over its life
 * and pins at most twice what its requests have touched. */
static bool fixed_slot_grow(AioContext *ctx, unsigned slot, size_t end)
{
    size_t page = 4096, want = page;
    while (want < end) {
        want <<= 1;
    }
    want = MIN(want, ctx->fixed_slot_size);
    struct iovec iov = { ctx->fixed_base + (size_t)slot * ctx->fixed_slot_size, want };
    int ret = io_uring_register_buffers_update_tag(&ctx->ring, slot, &iov, NULL, 1);
    if (ret != 1) {
        /* Typically RLIMIT_MEMLOCK for an unprivileged daemon: the slots
         * registered so far stay in use, the rest go the ordinary way, and
         * no request pays for a register call that would fail again. */
        ctx->fixed_full = true;
        return false;
    }
    ctx->fixed_len[slot] = want;
    return true;
}

/* The registered buffer index covering [p, p + len), or -1. */
static inline int fixed_slot(AioContext *ctx, const void *p, size_t len)
{
    if (!ctx->fixed_len) {
        return -1;
    }
    size_t off = (size_t)((const char *)p - ctx->fixed_base);   /* wraps if below */
    if (off >= ctx->fixed_size) {
        return -1;
    }
    unsigned slot = off / ctx->fixed_slot_size;
    size_t end = off - (size_t)slot * ctx->fixed_slot_size + len;
    if (end > ctx->fixed_slot_size) {
        return -1;
    }
    if (unlikely(end > ctx->fixed_len[slot]) &&
        (ctx->fixed_full || !fixed_slot_grow(ctx, slot, end))) {
        return -1;
    }
    return (int)slot;
}

/*
 * A vector holding registered-buffer references (include/iov.h) can go out
 * only as one READ_FIXED/WRITE_FIXED: the reference must be the vector's only
 * element, belong to this ring and lie inside what is registered at its
 * index.  Returns 1 with *addr set for a reference, 0 for mapped memory, or
 * -EXDEV (another ring's reference: it must never reach this ring, whose
 * index means another buffer or nothing), -EINVAL (a reference in a
 * multi-element vector, or past its buffer), -ENOENT (nothing at the index).
 */
static int fixed_ref_resolve(AioContext *ctx, const struct iovec *iov, int iovcnt,
                             uint64_t *addr)
{
    if (likely(iovcnt == 1 && !iov_base_is_reg(iov[0].iov_base))) {
        return 0;
    }
    if (iovcnt != 1) {
        for (int i = 0; i < iovcnt; i++) {
            if (iov_base_is_reg(iov[i].iov_base)) {
                return -EINVAL;
            }
        }
        return 0;
    }
    const void *ref = iov[0].iov_base;
    unsigned index = iov_reg_index(ref);
    uint64_t off = iov_reg_offset(ref);
    if (iov_reg_ring(ref) != ctx->ring_id) {
        return -EXDEV;
    }
    if (index >= ctx->nrefs || !ctx->refs[index].len) {
        return -ENOENT;
    }
    if (off > ctx->refs[index].len || iov[0].iov_len > ctx->refs[index].len - off ||
        iov[0].iov_len > UINT32_MAX) {
        return -EINVAL;
    }
    *addr = ctx->refs[index].addr + off;
    return 1;
}

/*
 * Prepare a read or write of iov at offset.  One segment (the usual ublk
 * request): READ/WRITE spare the kernel the copy and import of an iovec
 * array, READ_FIXED/WRITE_FIXED also the page pinning of O_DIRECT.
 */
static int prep_rw(AioContext *ctx, struct io_uring_sqe **sqep, bool write, int fd,
                   const struct iovec *iov, int iovcnt, int64_t offset)
{
    uint64_t ref_addr;
    int ref = fixed_ref_resolve(ctx, iov, iovcnt, &ref_addr);
    if (unlikely(ref < 0)) {
        return ref;
    }
    struct io_uring_sqe *sqe = *sqep = aio_get_sqe(ctx);
    if (unlikely(ref)) {
        io_uring_prep_rw(write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED, sqe, fd,
                         (void *)(uintptr_t)ref_addr, (unsigned)iov[0].iov_len,
                         (uint64_t)offset);
        sqe->buf_index = (uint16_t)iov_reg_index(iov[0].iov_base);
    } else if (iovcnt == 1 && iov[0].iov_len <= UINT32_MAX) {
        void *buf = iov[0].iov_base;
        unsigned len = (unsigned)iov[0].iov_len;
        int slot = fixed_slot(ctx, buf, len);
        if (slot >= 0) {
            io_uring_prep_rw(write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED, sqe, fd,
                             buf, len, (uint64_t)offset);
            sqe->buf_index = (uint16_t)slot;
        } else {
            io_uring_prep_rw(write ? IORING_OP_WRITE : IORING_OP_READ, sqe, fd, buf, len,
                             (uint64_t)offset);
        }
    } else {
        io_uring_prep_rw(write ? IORING_OP_WRITEV : IORING_OP_READV, sqe, fd, iov,
                         (unsigned)iovcnt, (uint64_t)offset);
    }
    return 0;
}

ssize_t coroutine_fn aio_co_preadv(int fd, const struct iovec *iov, int iovcnt, int64_t offset)
{
    AioContext *ctx = co_io_ctx("aio_co_preadv");
    struct io_uring_sqe *sqe;
    int ret = prep_rw(ctx, &sqe, false, fd, iov, iovcnt, offset);
    return ret < 0 ? ret : co_io_wait(sqe, NULL);
}

ssize_t coroutine_fn aio_co_pwritev(int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                                    int rw_flags)
{
    AioContext *ctx = co_io_ctx("aio_co_pwritev");
    struct io_uring_sqe *sqe;
    int ret = prep_rw(ctx, &sqe, true, fd, iov, iovcnt, offset);
    if (ret < 0) {
        return ret;
    }
    sqe->rw_flags = rw_flags;
    return co_io_wait(sqe, NULL);
}

int coroutine_fn aio_co_fsync(int fd, bool datasync)
{
    AioContext *ctx = co_io_ctx("aio_co_fsync");
    struct io_uring_sqe *sqe = aio_get_sqe(ctx);
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    return co_io_wait(sqe, NULL);
}

int coroutine_fn aio_co_fallocate(int fd, int mode, int64_t offset, int64_t len)
{
    AioContext *ctx = co_io_ctx("aio_co_fallocate");
    struct io_uring_sqe *sqe = aio_get_sqe(ctx);
    io_uring_prep_fallocate(sqe, fd, mode, (off_t)offset, (off_t)len);
    return co_io_wait(sqe, NULL);
}

int coroutine_fn aio_co_poll(int fd, short events)
{
    AioContext *ctx = co_io_ctx("aio_co_poll");
    struct io_uring_sqe *sqe = aio_get_sqe(ctx);
    io_uring_prep_poll_add(sqe, fd, (unsigned)(unsigned short)events);
    return co_io_wait(sqe, NULL);
}

static void sleep_done(void *opaque)
{
    aio_co_wake(opaque);
}

void coroutine_fn aio_co_sleep_ns(int64_t ns)
{
    AioContext *ctx = co_io_ctx("aio_co_sleep_ns");
    AioTimer t;
    aio_timer_init(&t, ctx, sleep_done, co_self());
    aio_timer_mod(&t, aio_now_ns(ctx) + ns);
    co_yield();
    aio_timer_del(&t);   /* no-op unless woken early: t is on our stack */
}

/* -------------------------------------------------------- synchronous run */

typedef struct RunSync {
    CoroutineEntry *fn;
    void *opaque;
    AioContext *home;
    atomic_bool done;
} RunSync;

static void coroutine_fn run_sync_entry(void *opaque)
{
    RunSync *rs = opaque;
    rs->fn(rs->opaque);
    AioContext *home = rs->home;
    /* The coroutine may have moved; make sure the waiter looks again.
     * rs may be gone once done is set, hence the copy of home. */
    bool remote = home != aio_current();
    if (remote) {
        remote_wake_begin(home);
    }
    atomic_store(&rs->done, true);
    if (remote) {
        aio_notify(home);
        remote_wake_end(home);
    }
}

void aio_co_run_sync(CoroutineEntry *fn, void *opaque)
{
    if (in_coroutine()) {
        fn(opaque);
        return;
    }
    AioContext *ctx = aio_current();
    if (!ctx) {
        Error *err = NULL;
        ctx = aio_main_init(&err);
        if (!ctx) {
            error_report_err(err);
            abort();
        }
    }
    RunSync rs = { .fn = fn, .opaque = opaque, .home = ctx };
    loop_time_update(ctx);   /* the caller may have been busy since its last poll */
    Coroutine *co = co_create(run_sync_entry, &rs);
    co_enter(co);
    AIO_WAIT_WHILE(ctx, !atomic_load(&rs.done));
}
