/*
 * aio.h - the event loop: one AioContext per thread, on one io_uring ring.
 *
 * An AioContext owns an io_uring ring and runs, on its thread only:
 *   - completions of SQEs submitted through it (each SQE's user_data points
 *     at an AioCompletion whose callback runs on completion),
 *   - bottom halves (deferred callbacks, schedulable from any thread),
 *   - timers (monotonic clock, or a virtual clock for tests),
 *   - coroutines scheduled onto it from other threads (aio_co_schedule).
 * All SQEs queued during one loop iteration go to the kernel with a single
 * io_uring_submit (plug/unplug).  Rings use SINGLE_ISSUER|DEFER_TASKRUN or
 * COOP_TASKRUN where the kernel supports them and fall back otherwise.
 *
 * Coroutine I/O helpers (aio_co_preadv, ...) submit on the *current thread's*
 * context and yield until the completion re-enters the coroutine; they return
 * the CQE result (bytes or -errno).  Nothing here blocks except aio_poll(ctx,
 * true) waiting for events.
 *
 * Threads: each thread that does I/O calls aio_context_new() and
 * aio_set_current(); aio_current() returns it.  The main thread of tools gets
 * one from aio_main_init().  A context may be created on one thread and used
 * on another: its ring is bound (SINGLE_ISSUER) to the first thread that
 * calls aio_set_current, aio_poll, aio_get_sqe or aio_submit on it, its
 * owner, and only that thread may use it afterwards.  A later call of those
 * (or aio_register_buffer_slots, aio_timer_mod, aio_timer_del of an armed
 * timer) from another thread aborts with a message
 * naming both threads, in every build without NDEBUG (Kconfig.md), instead
 * of failing the submission (-EEXIST) or corrupting the ring.  Reaching
 * another thread's context is what aio_bh_schedule, aio_co_schedule,
 * aio_co_wake and aio_notify are for: they never touch its ring.  Setting
 * UBLKD_IO_URING_SETUP=coop or =none in the environment caps the ring flags
 * tried (for old kernels/tests).
 */
#ifndef UBLKD_AIO_H
#define UBLKD_AIO_H

#include <liburing.h>
#include <signal.h>
#include <sys/uio.h>
#include "compiler.h"
#include "coroutine.h"
#include "error.h"

typedef struct AioContext AioContext;

/* ---- context lifecycle ---- */
#define AIO_DEFAULT_ENTRIES 256
AioContext *aio_context_new(unsigned entries, Error **errp);
void aio_context_free(AioContext *ctx);        /* on its own thread, idle */
void aio_set_current(AioContext *ctx);         /* thread-local */
AioContext *aio_current(void);
/* Create and set the calling thread's context if it has none. */
AioContext *aio_main_init(Error **errp);
struct io_uring *aio_ring(AioContext *ctx);
/* True on ctx's owner thread, or while ctx has no owner yet. */
bool aio_context_is_owner(AioContext *ctx);
/* Setup flags the ring actually got (IORING_SETUP_*), for tests and info. */
unsigned aio_ring_flags(AioContext *ctx);

/*
 * Run one loop iteration: submit queued SQEs, reap completions, run expired
 * timers, bottom halves and scheduled coroutines.  With blocking=true, waits
 * until at least one event happened.  Returns true if progress was made.
 * While it runs, ctx is the thread's current context (aio_current()), so
 * coroutines it resumes get ctx as their home.
 */
bool aio_poll(AioContext *ctx, bool blocking);
/* Wake ctx's thread out of a blocking aio_poll; callable from any thread.
 * ctx must outlive the call: aio_co_schedule and bottom halves see to that
 * themselves; a direct caller that sets a flag the owner may act on (and
 * free ctx) must free ctx only after, e.g. by joining the owner first. */
void aio_notify(AioContext *ctx);

/* Poll ctx (blocking) while cond holds; use outside coroutines only. */
#define AIO_WAIT_WHILE(ctx, cond) \
    do { while (cond) { aio_poll((ctx), true); } } while (0)

/* ---- SQE submission (for drivers and the ublk queue code) ---- */
typedef struct AioCompletion AioCompletion;
typedef void AioCompletionFn(AioCompletion *c, int res, unsigned cqe_flags);
struct AioCompletion {
    AioCompletionFn *cb;
};
/* Never NULL: submits pending SQEs to make room if the SQ ring is full. */
struct io_uring_sqe *aio_get_sqe(AioContext *ctx);
static inline void aio_sqe_set_completion(struct io_uring_sqe *sqe, AioCompletion *c)
{
    io_uring_sqe_set_data(sqe, c);
}
/* Submit now rather than at the end of the iteration (rarely needed). */
int aio_submit(AioContext *ctx);

/* ---- coroutine I/O on the current thread's ring ---- */
ssize_t coroutine_fn aio_co_preadv(int fd, const struct iovec *iov, int iovcnt, int64_t offset);
ssize_t coroutine_fn aio_co_pwritev(int fd, const struct iovec *iov, int iovcnt, int64_t offset,
                                    int rw_flags /* RWF_DSYNC for FUA */);
int coroutine_fn aio_co_fsync(int fd, bool datasync);
int coroutine_fn aio_co_fallocate(int fd, int mode, int64_t offset, int64_t len);
/* Returns revents (>0) or -errno. */
int coroutine_fn aio_co_poll(int fd, short events);
/* Submit a prepared SQE (user_data is set here) and wait for its result. */
int coroutine_fn aio_co_submit_sqe_wait(struct io_uring_sqe *sqe, unsigned *cqe_flags);
void coroutine_fn aio_co_sleep_ns(int64_t ns);   /* on the context's clock */

/*
 * Registered buffers.  A thread's long-lived I/O buffers (the ublk queue's
 * tag buffers: nslots slots of slot_size bytes from base) can be registered
 * with its ring, so that aio_co_preadv/pwritev of one segment inside a slot
 * use READ_FIXED/WRITE_FIXED and the kernel does not pin and unpin the pages
 * for every O_DIRECT request.  Slots are registered lazily, only as far as
 * requests have reached into them (doubling from one page), so the pinned
 * memory stays within twice what the buffers' users touched.  Returns false,
 * and I/O goes the ordinary way, where the kernel cannot do it.  After a
 * registration fails (RLIMIT_MEMLOCK when unprivileged) the slots registered
 * so far stay in use and no slot grows further: requests beyond them go the
 * ordinary way.  Owner thread only; the memory must outlive ctx.
 */
bool aio_register_buffer_slots(AioContext *ctx, void *base, size_t slot_size, unsigned nslots);
/* Bytes of slot registered so far (0: none, or no slots), for tests. */
size_t aio_buffer_slot_registered(AioContext *ctx, unsigned slot);

/*
 * Registered-buffer references (include/iov.h): an IOVector element naming
 * [offset, offset+len) of the buffer at index `i` of this ring's table,
 * made with iov_add_reg(q, aio_ring_id(ctx), i, offset, len).  Passed as the
 * only element of aio_co_preadv/pwritev's vector it goes out as
 * READ_FIXED/WRITE_FIXED at the buffer's own address for the ring; from
 * another ring it fails -EXDEV, in a vector of several elements -EINVAL.
 * aio_fixed_buffer_add registers len bytes at base at a free index (a table
 * of 64 made on first use; -EBUSY when the tag slots own the table) and
 * returns the index or -errno; tests use it to stand in for the buffers that
 * ublk zero copy registers.  Owner thread only.
 */
unsigned aio_ring_id(AioContext *ctx);
int aio_fixed_buffer_add(AioContext *ctx, void *base, size_t len);
int aio_fixed_buffer_remove(AioContext *ctx, unsigned index);
/*
 * Buffers the kernel registers itself (ublk zero copy puts a request's
 * pages at an index of the ring that fetched it).  aio_kernel_buffers_init
 * makes the ring's table: n empty indexes, for the kernel only (not with
 * aio_register_buffer_slots or aio_fixed_buffer_add; 0 or -errno).  While
 * the kernel holds len bytes at index i, aio_kernel_buffer_set lets
 * references to it go out (addressed from 0, as io_uring does for kernel
 * buffers); aio_kernel_buffer_clear stops them (-ENOENT) before the index
 * goes back to the kernel.  Owner thread only.
 */
int aio_kernel_buffers_init(AioContext *ctx, unsigned n);
void aio_kernel_buffer_set(AioContext *ctx, unsigned i, size_t len);
void aio_kernel_buffer_clear(AioContext *ctx, unsigned i);

/* ---- bottom halves ---- */
typedef struct AioBH AioBH;
typedef void AioBHFn(void *opaque);
AioBH *aio_bh_new(AioContext *ctx, AioBHFn *cb, void *opaque);
void aio_bh_schedule(AioBH *bh);     /* any thread; runs once on bh's ctx */
void aio_bh_delete(AioBH *bh);       /* on bh's ctx thread */
/* Allocate, run once on ctx, free.  Not for the per-request path. */
void aio_bh_schedule_oneshot(AioContext *ctx, AioBHFn *cb, void *opaque);

/* ---- clock and timers ---- */
typedef int64_t AioClockFn(void *opaque);
/* Replace ctx's clock (default CLOCK_MONOTONIC ns; NULL restores it).  With
 * a virtual clock, aio_poll does not sleep for timers: tests advance time and
 * poll (or aio_notify a context that another thread is blocked on). */
void aio_context_set_clock(AioContext *ctx, AioClockFn *now, void *opaque);
int64_t aio_now_ns(AioContext *ctx);
/*
 * A cached reading of ctx's clock (the virtual one too), refreshed at the
 * start of every aio_poll iteration, again when the iteration is back from
 * io_uring, and when aio_co_run_sync starts its coroutine: accurate to one
 * loop iteration and costs a load, for accounting (the BlockBackend's
 * request times).  NOT for timers or deadlines: code that runs without
 * polling sees it stand still.  Owner thread only.
 */
int64_t aio_loop_now_ns(AioContext *ctx);
int64_t clock_monotonic_ns(void);

typedef struct AioTimer {
    AioContext *ctx;
    int64_t expire_ns;           /* -1 when not armed */
    void (*cb)(void *opaque);
    void *opaque;
    struct AioTimer *next;
} AioTimer;
void aio_timer_init(AioTimer *t, AioContext *ctx, void (*cb)(void *), void *opaque);
void aio_timer_mod(AioTimer *t, int64_t expire_ns);  /* absolute, ctx clock; ctx thread */
void aio_timer_del(AioTimer *t);
bool aio_timer_pending(const AioTimer *t);

/* ---- signals (io/aio-signal.c) ---- */
/*
 * Run cb(opaque, siginfo) on ctx's thread, from its loop, for each signal
 * in set that arrives.  The caller blocks the signals in every thread first
 * (pthread_sigmask before it starts any), or they take their default action
 * or go to another thread.  Owner thread only; free it outside its own
 * callback (the callback sets a flag, the loop's caller frees).
 */
typedef struct AioSignalWatch AioSignalWatch;
struct signalfd_siginfo;
typedef void AioSignalFn(void *opaque, const struct signalfd_siginfo *si);
AioSignalWatch *aio_signal_watch_new(AioContext *ctx, const sigset_t *set, AioSignalFn *cb,
                                     void *opaque, Error **errp);
void aio_signal_watch_free(AioSignalWatch *w);

/* ---- coroutines across contexts ---- */
/* Run co on ctx (any thread; co must not be running). */
void aio_co_schedule(AioContext *ctx, Coroutine *co);
/*
 * Resume co on its home context: entered directly if that is the current
 * thread and we are not in a coroutine, queued to run after the current
 * coroutine yields if we are, scheduled on its own thread otherwise.
 */
void aio_co_wake(Coroutine *co);
/*
 * Start fn(opaque) in a new coroutine on ctx, from any thread: background
 * work that belongs to no request (a node's home context runs it, see
 * bdrv_get_home_context).  Control plane only: it allocates.
 */
void aio_co_spawn(AioContext *ctx, CoroutineEntry *fn, void *opaque);
/* Move the calling coroutine to ctx (yields, resumes on ctx's thread). */
void coroutine_fn aio_co_reschedule_self(AioContext *ctx);

/*
 * Run fn(opaque) in a coroutine and wait for it: called in a coroutine it just
 * calls fn; otherwise it creates one on the current context and polls until
 * it terminates.  The synchronous wrappers (bdrv_pread, blk_pwrite...) use it.
 */
void aio_co_run_sync(CoroutineEntry *fn, void *opaque);

#endif
