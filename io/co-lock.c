/*
 * co-lock.c - coroutine locks that work across threads: CoQueue, CoMutex,
 * CoRwLock.
 *
 * A waiter is a CoWaiter on the waiting coroutine's own stack, linked into
 * the lock's FIFO under a short pthread mutex (never held across a yield).
 * Wake-ups go through aio_co_wake, so a waiter whose home AioContext is on
 * another thread is scheduled there and runs on its own thread; the waker
 * never runs it.  This is safe against the waiter not having yielded yet:
 * its thread cannot run the scheduled entry until the waiter has yielded.
 *
 * CoMutex hands ownership directly to the first waiter on unlock (FIFO, no
 * barging), which is what makes it fair across threads.  Before queueing, a
 * locker spins for a bounded time while the holder belongs to another
 * AioContext (so may be running on another CPU right now) and nobody is
 * queued: the lock can only become free while nobody waits, so a spinner
 * never takes it from a queued waiter.  Spinning for a holder on our own
 * context would be pointless: it cannot run until we yield.
 */
#include <stdio.h>
#include <stdlib.h>
#include "aio.h"
#include "coroutine.h"

struct CoWaiter {
    Coroutine *co;
    CoWaiter *next;
};

static inline void waiter_push(CoWaiter **head, CoWaiter **tail, CoWaiter *w)
{
    w->next = NULL;
    if (*tail) {
        (*tail)->next = w;
    } else {
        *head = w;
    }
    *tail = w;
}

static inline CoWaiter *waiter_pop(CoWaiter **head, CoWaiter **tail)
{
    CoWaiter *w = *head;
    if (w) {
        *head = w->next;
        if (!*head) {
            *tail = NULL;
        }
    }
    return w;
}

/*
 * Wake a waiter.  From a coroutine, aio_co_wake defers it until we yield (or
 * sends it home).  From plain code the caller may still hold the lock the
 * waiter re-takes (co_queue_next under a pthread mutex), so never enter it
 * right here: let its context's loop run it.
 */
static void wake_waiter(Coroutine *co)
{
    AioContext *ctx = co_get_ctx(co);
    if (in_coroutine() || !ctx) {
        aio_co_wake(co);
    } else {
        aio_co_schedule(ctx, co);
    }
}

static Coroutine *self_or_die(const char *what)
{
    Coroutine *self = co_self();
    if (!self) {
        fprintf(stderr, "ublkd: %s called outside coroutine\n", what);
        abort();
    }
    return self;
}

/* ---------------------------------------------------------------- CoQueue */

void co_queue_init(CoQueue *q)
{
    q->head = q->tail = NULL;
}

void coroutine_fn co_queue_wait(CoQueue *q, CoMutex *lock)
{
    CoWaiter w = { .co = self_or_die("co_queue_wait") };
    waiter_push(&q->head, &q->tail, &w);
    if (lock) {
        co_mutex_unlock(lock);
    }
    co_yield();
    if (lock) {
        co_mutex_lock(lock);
    }
}

void coroutine_fn co_queue_wait_mutex(CoQueue *q, pthread_mutex_t *lock)
{
    CoWaiter w = { .co = self_or_die("co_queue_wait_mutex") };
    waiter_push(&q->head, &q->tail, &w);
    pthread_mutex_unlock(lock);
    co_yield();
    pthread_mutex_lock(lock);
}

bool co_queue_next(CoQueue *q)
{
    CoWaiter *w = waiter_pop(&q->head, &q->tail);
    if (!w) {
        return false;
    }
    /* w lives on the waiter's stack: read it before the waiter may run. */
    Coroutine *co = w->co;
    wake_waiter(co);
    return true;
}

void co_queue_restart_all(CoQueue *q)
{
    while (co_queue_next(q)) {
    }
}

bool co_queue_empty(const CoQueue *q)
{
    return q->head == NULL;
}

/* ---------------------------------------------------------------- CoMutex */

void co_mutex_init(CoMutex *m)
{
    pthread_mutex_init(&m->lock, NULL);
    m->holder = NULL;
    m->holder_ctx = NULL;
    m->head = m->tail = NULL;
    m->waiters = 0;
    m->sleeps = 0;
}

/*
 * How long a locker spins: longer than a short critical section on another
 * CPU, shorter than a wake through the event loop (~3 us median, far more
 * on a loaded machine).  A holder that waits for I/O or was preempted costs
 * a locker this much before it sleeps.  Bounded by time, not by PAUSEs,
 * whose cost differs tenfold between CPUs.
 */
#define CO_MUTEX_SPIN_NS 2000

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#else
    __asm__ volatile("" ::: "memory");
#endif
}

static inline void set_holder(CoMutex *m, Coroutine *co, AioContext *ctx)
{
    __atomic_store_n(&m->holder_ctx, ctx, __ATOMIC_RELAXED);
    __atomic_store_n(&m->holder, co, __ATOMIC_RELEASE);
}

/*
 * m->lock not held.  Spin while the holder belongs to another context and
 * nobody is queued; true when the lock looked free (the caller still has to
 * take it under m->lock, and look again there).
 */
static bool co_mutex_spin(CoMutex *m, AioContext *ctx)
{
    int64_t deadline = clock_monotonic_ns() + CO_MUTEX_SPIN_NS;
    for (unsigned i = 1;; i++) {
        if (!__atomic_load_n(&m->holder, __ATOMIC_RELAXED)) {
            return true;
        }
        if (__atomic_load_n(&m->holder_ctx, __ATOMIC_RELAXED) == ctx ||
            __atomic_load_n(&m->waiters, __ATOMIC_RELAXED)) {
            return false;
        }
        cpu_relax();
        if (i % 8 == 0 && clock_monotonic_ns() > deadline) {
            return false;
        }
    }
}

void co_mutex_destroy(CoMutex *m)
{
    if (m->holder || m->head) {
        fprintf(stderr, "ublkd: co_mutex_destroy on a busy mutex\n");
        abort();
    }
    pthread_mutex_destroy(&m->lock);
}

void coroutine_fn co_mutex_lock(CoMutex *m)
{
    Coroutine *self = self_or_die("co_mutex_lock");
    AioContext *ctx = aio_current();
    pthread_mutex_lock(&m->lock);
    if (!m->holder) {
        set_holder(m, self, ctx);
        pthread_mutex_unlock(&m->lock);
        return;
    }
    if (m->holder_ctx != ctx && !m->waiters) {
        pthread_mutex_unlock(&m->lock);
        co_mutex_spin(m, ctx);
        pthread_mutex_lock(&m->lock);
        /* Free now, whatever the spin saw: queueing behind no holder would
         * wait for an unlock that never comes. */
        if (!m->holder) {
            set_holder(m, self, ctx);
            pthread_mutex_unlock(&m->lock);
            return;
        }
    }
    CoWaiter w = { .co = self };
    waiter_push(&m->head, &m->tail, &w);
    __atomic_store_n(&m->waiters, m->waiters + 1, __ATOMIC_RELAXED);
    m->sleeps++;
    pthread_mutex_unlock(&m->lock);
    co_yield();
    /* The unlocker made us the holder before waking us; anything else is a
     * stray wake-up of a coroutine parked here, which would break the lock. */
    if (unlikely(m->holder != self)) {
        fprintf(stderr, "ublkd: co_mutex_lock: coroutine %p resumed without the lock\n",
                (void *)self);
        abort();
    }
}

bool coroutine_fn co_mutex_trylock(CoMutex *m)
{
    Coroutine *self = self_or_die("co_mutex_trylock");
    bool ok = false;
    pthread_mutex_lock(&m->lock);
    if (!m->holder) {
        set_holder(m, self, aio_current());
        ok = true;
    }
    pthread_mutex_unlock(&m->lock);
    return ok;
}

void coroutine_fn co_mutex_unlock(CoMutex *m)
{
    pthread_mutex_lock(&m->lock);
    if (!m->holder) {
        pthread_mutex_unlock(&m->lock);
        fprintf(stderr, "ublkd: co_mutex_unlock of an unlocked mutex\n");
        abort();
    }
    CoWaiter *w = waiter_pop(&m->head, &m->tail);
    Coroutine *next = w ? w->co : NULL;
    if (next) {
        __atomic_store_n(&m->waiters, m->waiters - 1, __ATOMIC_RELAXED);
    }
    /* A waiter resumes on its own context (wake_waiter). */
    set_holder(m, next, next ? co_get_ctx(next) : NULL);
    pthread_mutex_unlock(&m->lock);
    if (next) {
        wake_waiter(next);
    }
}

void co_mutex_assert_locked(CoMutex *m)
{
    pthread_mutex_lock(&m->lock);
    bool locked = m->holder != NULL;
    pthread_mutex_unlock(&m->lock);
    if (!locked) {
        fprintf(stderr, "ublkd: CoMutex %p expected to be locked\n", (void *)m);
        abort();
    }
}

/* --------------------------------------------------------------- CoRwLock */

void co_rwlock_init(CoRwLock *l)
{
    co_mutex_init(&l->mutex);
    l->readers = 0;
    co_queue_init(&l->queue);
    l->pending_writers = 0;
}

void coroutine_fn co_rwlock_rdlock(CoRwLock *l)
{
    co_mutex_lock(&l->mutex);
    /* Writer-preferring: a queued writer blocks new readers. */
    while (l->readers < 0 || l->pending_writers) {
        co_queue_wait(&l->queue, &l->mutex);
    }
    l->readers++;
    co_mutex_unlock(&l->mutex);
}

static void coroutine_fn rwlock_wait_for_writer(CoRwLock *l)
{
    l->pending_writers++;
    while (l->readers != 0) {
        co_queue_wait(&l->queue, &l->mutex);
    }
    l->pending_writers--;
    l->readers = -1;
}

void coroutine_fn co_rwlock_wrlock(CoRwLock *l)
{
    co_mutex_lock(&l->mutex);
    rwlock_wait_for_writer(l);
    co_mutex_unlock(&l->mutex);
}

/* Not atomic: another writer may get the lock between our read and write
 * sections, so the caller must re-check what it read. */
void coroutine_fn co_rwlock_upgrade(CoRwLock *l)
{
    co_mutex_lock(&l->mutex);
    if (l->readers <= 0) {
        fprintf(stderr, "ublkd: co_rwlock_upgrade without a read lock\n");
        abort();
    }
    l->readers--;
    rwlock_wait_for_writer(l);
    co_mutex_unlock(&l->mutex);
}

void coroutine_fn co_rwlock_downgrade(CoRwLock *l)
{
    co_mutex_lock(&l->mutex);
    if (l->readers != -1) {
        fprintf(stderr, "ublkd: co_rwlock_downgrade without the write lock\n");
        abort();
    }
    l->readers = 1;
    /* Readers that queued behind us may now share the lock, unless another
     * writer is pending: they re-check and go back to sleep then. */
    co_queue_restart_all(&l->queue);
    co_mutex_unlock(&l->mutex);
}

void coroutine_fn co_rwlock_unlock(CoRwLock *l)
{
    co_mutex_lock(&l->mutex);
    if (l->readers < 0) {
        l->readers = 0;
    } else if (l->readers > 0) {
        l->readers--;
    } else {
        co_mutex_unlock(&l->mutex);
        fprintf(stderr, "ublkd: co_rwlock_unlock of an unlocked rwlock\n");
        abort();
    }
    if (l->readers == 0) {
        co_queue_restart_all(&l->queue);
    }
    co_mutex_unlock(&l->mutex);
}
