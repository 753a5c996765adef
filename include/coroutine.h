/*
 * coroutine.h - stackful coroutines and coroutine locks.
 *
 * Every request in ublkd runs in a coroutine: it issues I/O on its thread's
 * AioContext and yields until the completion resumes it.  Coroutines come from
 * a per-thread pool (no malloc per request in steady state) and run on
 * mmap'ed stacks with a guard page below them.  The context switch is a few
 * instructions of assembly on x86-64/aarch64 (no signal-mask syscalls).
 *
 * A coroutine has a home AioContext: the one it was last entered on.  Locks
 * here work across threads: when a coroutine releases a CoMutex or restarts a
 * CoQueue, a waiter that belongs to another AioContext is scheduled on that
 * context (aio_co_wake) and runs on its own thread, never on the waker's.
 *
 * Migration caveat: a coroutine moved with aio_co_reschedule_self (or entered
 * on another thread after a yield) continues on a different thread, but the
 * compiler may reuse TLS addresses computed before the yield: errno,
 * pthread_self() and __thread variables read directly in the coroutine's own
 * function can be stale after a yield.  Read them through a noinline helper,
 * or don't keep them across a yield.  Lock waiters never migrate.
 *
 * Usage:
 *     Coroutine *co = co_create(entry, opaque);
 *     co_enter(co);              // runs entry until it yields or returns
 *     ... inside entry: co_yield(); resumed later by co_enter/aio_co_wake
 */
#ifndef UBLKD_COROUTINE_H
#define UBLKD_COROUTINE_H

#include <pthread.h>
#include "compiler.h"

typedef struct Coroutine Coroutine;
typedef struct AioContext AioContext;
typedef void coroutine_fn CoroutineEntry(void *opaque);

/* Stack size of pooled coroutines (bytes, excluding the guard page). */
#define COROUTINE_STACK_SIZE (256 * 1024)

Coroutine *co_create(CoroutineEntry *entry, void *opaque);
/*
 * Switch into co on the calling thread.  Returns when co yields or
 * terminates (a terminated coroutine goes back to the pool).  co's home
 * context becomes the caller's current AioContext.
 */
void co_enter(Coroutine *co);
void coroutine_fn co_yield(void);
Coroutine *co_self(void);            /* NULL outside coroutine context */
bool in_coroutine(void);
AioContext *co_get_ctx(const Coroutine *co);
/* Entering a coroutine that is already running or terminated aborts. */
bool co_entered(const Coroutine *co);

/* Pool statistics, for tests that assert no allocation in steady state. */
size_t co_pool_allocated(void);      /* stacks ever mmap'ed by all threads */

/*
 * CoQueue: coroutines waiting for a condition.  Protected by the caller's
 * lock (a CoMutex or a pthread mutex), which co_queue_wait drops while
 * waiting and re-takes before returning, like a condition variable.
 */
typedef struct CoMutex CoMutex;
typedef struct CoWaiter CoWaiter;
typedef struct CoQueue {
    CoWaiter *head, *tail;
} CoQueue;

void co_queue_init(CoQueue *q);
void coroutine_fn co_queue_wait(CoQueue *q, CoMutex *lock);
void coroutine_fn co_queue_wait_mutex(CoQueue *q, pthread_mutex_t *lock);
/* Wake one / all waiters (they run later, on their own contexts: after the
 * calling coroutine yields, or from the context's loop when called outside
 * a coroutine, never nested inside the caller). */
bool co_queue_next(CoQueue *q);
void co_queue_restart_all(CoQueue *q);
bool co_queue_empty(const CoQueue *q);

/*
 * CoMutex: a sleeping lock for coroutines, fair (FIFO), usable from any
 * thread.  Held across metadata I/O (e.g. a qcow2 L2 table load), never
 * across data I/O.  A locker whose holder belongs to another thread spins
 * briefly before it sleeps (nobody queued, bounded), because a sleep costs
 * a wake through the event loop, microseconds, for a lock that is often
 * free again in nanoseconds.
 */
struct CoMutex {
    pthread_mutex_t lock;        /* protects the fields below, held briefly */
    Coroutine *holder;           /* written atomically: spinners read it */
    AioContext *holder_ctx;      /* where the holder runs */
    CoWaiter *head, *tail;
    unsigned waiters;            /* written atomically: spinners read it */
    unsigned long sleeps;        /* acquisitions that queued (statistics) */
};
void co_mutex_init(CoMutex *m);
void co_mutex_destroy(CoMutex *m);
void coroutine_fn co_mutex_lock(CoMutex *m);
bool coroutine_fn co_mutex_trylock(CoMutex *m);
void coroutine_fn co_mutex_unlock(CoMutex *m);
void co_mutex_assert_locked(CoMutex *m);

/* CoRwLock: many readers or one writer, writer-preferring, cross-thread. */
typedef struct CoRwLock {
    CoMutex mutex;
    int readers;                 /* >0 readers, -1 writer */
    CoQueue queue;
    unsigned pending_writers;
} CoRwLock;
void co_rwlock_init(CoRwLock *l);
void coroutine_fn co_rwlock_rdlock(CoRwLock *l);
void coroutine_fn co_rwlock_wrlock(CoRwLock *l);
void coroutine_fn co_rwlock_upgrade(CoRwLock *l);    /* reader -> writer */
void coroutine_fn co_rwlock_downgrade(CoRwLock *l);  /* writer -> reader */
void coroutine_fn co_rwlock_unlock(CoRwLock *l);

#endif
