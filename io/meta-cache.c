/*
 * meta-cache.c - the metadata cache (include/meta-cache.h).
 *
 * Entry states and who changes them:
 *   FREE      unhashed, no key; a victim for the next miss
 *   RESERVED  owned by an evictor (transient, evict_lock held)
 *   LOADING   hashed; one coroutine reads it, others wait on load_wait
 *   VALID     hashed and loaded
 *   FAILED    unhashed after a failed load; waiters still holding
 *             references read load_err, then it is a victim like FREE
 *
 * References: each thread that ever calls get owns one of the thread slots'
 * rows of counters (thread-slot.h) (a cache has one int32 per entry per row), and only that
 * thread writes its row, so a hit is a store to a line no other thread
 * writes, then a re-check of the entry's key and state, all sequentially
 * consistent.  The evictor marks the entry RESERVED and sums every row:
 * either it sees the reference or the reader sees RESERVED and backs off
 * (Dekker).
 * A put on another thread than its get decrements that thread's row; only
 * the sum means anything.  Threads beyond the slots use a shared atomic.
 *
 * The hash is one array of chain heads, read without a lock; chains change
 * under the lock of the shard the bucket belongs to.  A reader that races
 * with a change may miss an entry that is there: it then takes the shard
 * lock and looks again, so a race costs time, never correctness.
 *
 * Lock order: the driver's metadata CoMutex, then evict_lock, then a shard
 * lock.  No pthread mutex is held across I/O or a yield (co_queue_wait_mutex
 * drops the shard lock while a waiter sleeps).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "iov.h"
#include "meta-cache.h"
#include "thread-slot.h"

#define MC_THREAD_SLOTS THREAD_SLOTS   /* row 0 unused: slot 0 is shared */
#define MC_SHARDS 16                 /* power of two */
#define MC_DEP_DEPTH 8               /* deeper dependency chains are a bug */
#define MC_FAST_STEPS 8              /* chain steps before the fast path gives up */
#define MC_ROOM_WAIT_NS (2000LL * 1000 * 1000)  /* default room_wait_ns */

enum { ENTRY_FREE, ENTRY_RESERVED, ENTRY_LOADING, ENTRY_VALID, ENTRY_FAILED };

typedef struct MetaEntry {
    _Atomic int64_t key;             /* offset in the child, -1 when none */
    _Atomic int state;
    _Atomic int32_t next;            /* hash chain, -1 ends it */
    _Atomic uint8_t used;            /* clock bit: looked up since the last sweep */
    _Atomic bool dirty;
    _Atomic int32_t shared_refs;     /* references of threads without a slot */
    int load_err;                    /* FAILED: what the load returned */
    CoQueue load_wait;               /* shard lock */
    MetaCache *dep;                  /* metadata lock: written before us */
    int64_t dep_offset;
} __attribute__((aligned(64))) MetaEntry;

typedef struct MetaShard {
    pthread_mutex_t lock;
} __attribute__((aligned(64))) MetaShard;

struct MetaCache {
    /* read-mostly */
    BdrvChild *child;
    size_t entry_size;
    int entry_shift;                 /* log2(entry_size), or -1: divide */
    unsigned n;
    unsigned bucket_bits;
    CoMutex *lock;
    const char *name;
    int (*check_write)(void *opaque, int64_t offset, size_t len);
    void *opaque;
    uint8_t *buf;
    MetaEntry *entries;
    int32_t *refs;                   /* MC_THREAD_SLOTS rows of ref_stride */
    size_t ref_stride;
    _Atomic int32_t *buckets;
    AioContext *home;
    int64_t clean_interval_ns;
    AioTimer timer;

    MetaShard shards[MC_SHARDS];
    pthread_mutex_t evict_lock __attribute__((aligned(64)));
    unsigned clock_hand;             /* evict_lock */

    /* Misses waiting for room, and the puts seen while any waits: a waiter
     * gives up only after room_wait_ns without one.  Own line: a put reads
     * room_waiters (relaxed, almost always 0) and writes nothing else here. */
    _Atomic unsigned room_waiters __attribute__((aligned(64)));
    _Atomic uint64_t room_puts;
    int64_t room_wait_ns;

    /* metadata lock */
    MetaCache *dep;
    bool depends_on_flush;
    bool unflushed;                  /* written since the child's last flush */
    uint64_t write_seq;              /* entries written so far */
};

/* ---------------------------------------------------- per-thread ref rows */

/* The calling thread's row of reference counters, or -1 for the shared
 * atomic: thread_slot() 0 is shared by the threads beyond the slots. */
static inline int my_slot(void)
{
    unsigned s = thread_slot();
    return s ? (int)s : -1;
}

/*
 * Take a reference.  Sequentially consistent, like the caller's re-check of
 * state and the evictor's mark (CAS) and sum: in the single order of those
 * operations either the evictor's sum sees this count or our re-check sees
 * its mark.  (x86: one XCHG on our own line; arm64: STLR then LDAR.)
 */
static inline void ref_inc(MetaCache *c, unsigned i)
{
    int s = my_slot();
    if (likely(s >= 0)) {
        int32_t *r = &c->refs[(size_t)s * c->ref_stride + i];
        __atomic_store_n(r, __atomic_load_n(r, __ATOMIC_RELAXED) + 1, __ATOMIC_SEQ_CST);
    } else {
        atomic_fetch_add_explicit(&c->entries[i].shared_refs, 1, memory_order_seq_cst);
    }
}

/* Release: what we did to the entry happens before an evictor reuses it. */
static inline void ref_dec(MetaCache *c, unsigned i)
{
    int s = my_slot();
    if (likely(s >= 0)) {
        int32_t *r = &c->refs[(size_t)s * c->ref_stride + i];
        __atomic_store_n(r, __atomic_load_n(r, __ATOMIC_RELAXED) - 1, __ATOMIC_RELEASE);
    } else {
        atomic_fetch_sub_explicit(&c->entries[i].shared_refs, 1, memory_order_release);
    }
}

static int32_t ref_sum(MetaCache *c, unsigned i)
{
    int32_t sum = atomic_load_explicit(&c->entries[i].shared_refs, memory_order_seq_cst);
    for (int s = 0; s < MC_THREAD_SLOTS; s++) {
        sum += __atomic_load_n(&c->refs[(size_t)s * c->ref_stride + i], __ATOMIC_SEQ_CST);
    }
    return sum;
}

/* ------------------------------------------------------------------- hash */

static inline unsigned bucket_of(const MetaCache *c, int64_t offset)
{
    uint64_t k = c->entry_shift >= 0 ? (uint64_t)offset >> c->entry_shift
                                     : (uint64_t)offset / c->entry_size;
    return (unsigned)((k * 0x9e3779b97f4a7c15ull) >> (64 - c->bucket_bits));
}

static inline MetaShard *shard_of(MetaCache *c, unsigned bucket)
{
    return &c->shards[bucket & (MC_SHARDS - 1)];
}

static inline void *entry_buf(const MetaCache *c, unsigned i)
{
    return c->buf + (size_t)i * c->entry_size;
}

static int entry_index(const MetaCache *c, const void *table)
{
    ptrdiff_t d = (const uint8_t *)table - c->buf;
    size_t i = c->entry_shift >= 0 ? (size_t)d >> c->entry_shift : (size_t)d / c->entry_size;
    if (unlikely(d < 0 || i >= c->n || i * c->entry_size != (size_t)d)) {
        fprintf(stderr, "ublkd: %s cache: %p is not one of its tables\n", c->name, table);
        abort();
    }
    return (int)i;
}

/* Shard lock held: the entry hashed under offset, or -1. */
static int lookup_locked(MetaCache *c, unsigned b, int64_t offset)
{
    for (int32_t i = atomic_load_explicit(&c->buckets[b], memory_order_relaxed); i >= 0;
         i = atomic_load_explicit(&c->entries[i].next, memory_order_relaxed)) {
        if (atomic_load_explicit(&c->entries[i].key, memory_order_relaxed) == offset) {
            return i;
        }
    }
    return -1;
}

static void link_locked(MetaCache *c, unsigned b, unsigned i)
{
    atomic_store_explicit(&c->entries[i].next,
                          atomic_load_explicit(&c->buckets[b], memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&c->buckets[b], (int32_t)i, memory_order_release);
}

static void unlink_locked(MetaCache *c, unsigned b, unsigned i)
{
    _Atomic int32_t *link = &c->buckets[b];
    for (int32_t j = atomic_load_explicit(link, memory_order_relaxed); j >= 0;
         j = atomic_load_explicit(link, memory_order_relaxed)) {
        if ((unsigned)j == i) {
            atomic_store_explicit(link, atomic_load_explicit(&c->entries[i].next,
                                                             memory_order_relaxed),
                                  memory_order_release);
            return;
        }
        link = &c->entries[j].next;
    }
}

/* The hit path: no lock, no store to a shared line unless the clock bit
 * was cleared by a sweep.  Returns the entry with a reference, or -1. */
static inline int lookup_fast(MetaCache *c, unsigned b, int64_t offset)
{
    int32_t i = atomic_load_explicit(&c->buckets[b], memory_order_acquire);
    for (int steps = 0; i >= 0 && steps < MC_FAST_STEPS; steps++) {
        MetaEntry *e = &c->entries[i];
        if (atomic_load_explicit(&e->key, memory_order_relaxed) == offset) {
            ref_inc(c, (unsigned)i);
            if (atomic_load_explicit(&e->state, memory_order_seq_cst) == ENTRY_VALID &&
                atomic_load_explicit(&e->key, memory_order_relaxed) == offset) {
                if (!atomic_load_explicit(&e->used, memory_order_relaxed)) {
                    atomic_store_explicit(&e->used, 1, memory_order_relaxed);
                }
                return i;
            }
            ref_dec(c, (unsigned)i);
            return -1;
        }
        i = atomic_load_explicit(&e->next, memory_order_acquire);
    }
    return -1;
}

/* ------------------------------------------------------------- eviction */

/*
 * evict_lock held.  Make entry i (in state st) RESERVED if nobody holds a
 * reference and it is clean; a hashed entry leaves its chain.
 */
static bool try_reserve(MetaCache *c, unsigned i, int st)
{
    MetaEntry *e = &c->entries[i];
    MetaShard *sh = NULL;
    unsigned b = 0;
    bool ok = false;
    if (st == ENTRY_VALID) {
        b = bucket_of(c, atomic_load_explicit(&e->key, memory_order_relaxed));
        sh = shard_of(c, b);
        pthread_mutex_lock(&sh->lock);
    }
    int expected = st;
    if (!atomic_compare_exchange_strong(&e->state, &expected, ENTRY_RESERVED)) {
        goto out;
    }
    /* dirty is read after the references: a writer marks it, then puts. */
    if (ref_sum(c, i) != 0 || atomic_load_explicit(&e->dirty, memory_order_relaxed)) {
        atomic_store_explicit(&e->state, st, memory_order_release);
        goto out;
    }
    if (sh) {
        unlink_locked(c, b, i);
    }
    atomic_store_explicit(&e->key, -1, memory_order_relaxed);
    e->dep = NULL;
    ok = true;
out:
    if (sh) {
        pthread_mutex_unlock(&sh->lock);
    }
    return ok;
}

/* Take a reference on entry i if it is still VALID (for write-back). */
static bool pin_valid(MetaCache *c, unsigned i)
{
    MetaEntry *e = &c->entries[i];
    ref_inc(c, i);
    if (atomic_load_explicit(&e->state, memory_order_seq_cst) == ENTRY_VALID) {
        return true;
    }
    ref_dec(c, i);
    return false;
}

static bool holds_meta_lock(MetaCache *c)
{
    return !c->lock || __atomic_load_n(&c->lock->holder, __ATOMIC_ACQUIRE) == co_self();
}

static void require_meta_lock(MetaCache *c, const char *what)
{
    if (unlikely(!holds_meta_lock(c))) {
        fprintf(stderr, "ublkd: %s cache: %s without the metadata lock\n", c->name, what);
        abort();
    }
}

static int coroutine_fn write_entry(MetaCache *c, unsigned i, int depth);

/*
 * A free entry, RESERVED for the caller.  Clean unreferenced entries go
 * first, in clock order (a lookup sets the bit, the hand clears it and
 * passes over once); if only dirty ones are left, one is written back
 * (under the metadata lock) and the search starts again.  When every entry
 * is referenced, loading or reserved, other requests are let run while
 * entries keep being released (a deep queue on a small cache: each holder's
 * data write ends, however long it takes); after room_wait_ns with no
 * release at all the cache is too small for its load: -ENOSPC, not a
 * deadlock between requests that each hold an entry and want another.
 */
static int coroutine_fn reserve_victim_waiting(MetaCache *c, bool *waiting);

static int coroutine_fn reserve_victim(MetaCache *c)
{
    bool waiting = false;
    int ret = reserve_victim_waiting(c, &waiting);
    if (waiting) {
        atomic_fetch_sub_explicit(&c->room_waiters, 1, memory_order_relaxed);
    }
    return ret;
}

static int coroutine_fn reserve_victim_waiting(MetaCache *c, bool *waiting)
{
    int64_t give_up = 0;
    uint64_t puts_seen = 0;
    unsigned writes = 0;
    for (;;) {
        int found = -1, dirty = -1;
        pthread_mutex_lock(&c->evict_lock);
        for (unsigned k = 0; k < 2 * c->n && found < 0; k++) {
            unsigned i = c->clock_hand;
            c->clock_hand = (i + 1) % c->n;
            MetaEntry *e = &c->entries[i];
            int st = atomic_load_explicit(&e->state, memory_order_acquire);
            if (st == ENTRY_FREE || st == ENTRY_FAILED) {
                found = try_reserve(c, i, st) ? (int)i : -1;
            } else if (st == ENTRY_VALID) {
                if (atomic_load_explicit(&e->used, memory_order_relaxed)) {
                    atomic_store_explicit(&e->used, 0, memory_order_relaxed);
                } else if (atomic_load_explicit(&e->dirty, memory_order_relaxed)) {
                    if (dirty < 0 && ref_sum(c, i) == 0) {
                        dirty = (int)i;
                    }
                } else {
                    found = try_reserve(c, i, st) ? (int)i : -1;
                }
            }
        }
        if (found < 0 && dirty >= 0 && !pin_valid(c, (unsigned)dirty)) {
            dirty = -1;
        }
        pthread_mutex_unlock(&c->evict_lock);
        if (found >= 0) {
            return found;
        }
        if (dirty < 0) {
            if (!aio_current()) {
                return -ENOSPC;
            }
            int64_t now = clock_monotonic_ns();
            if (!*waiting) {
                *waiting = true;
                atomic_fetch_add_explicit(&c->room_waiters, 1, memory_order_seq_cst);
            }
            uint64_t puts = atomic_load_explicit(&c->room_puts, memory_order_relaxed);
            if (!give_up || puts != puts_seen) {
                puts_seen = puts;
                give_up = now + c->room_wait_ns;
            }
            if (now > give_up) {
                return -ENOSPC;
            }
            aio_co_schedule(aio_current(), co_self());
            co_yield();
            continue;
        }
        if (++writes > c->n) {
            return -ENOSPC;            /* entries keep getting dirty again */
        }
        bool took = !holds_meta_lock(c);
        if (took) {
            co_mutex_lock(c->lock);
        }
        int ret = write_entry(c, (unsigned)dirty, 0);
        if (took) {
            co_mutex_unlock(c->lock);
        }
        ref_dec(c, (unsigned)dirty);
        if (ret < 0) {
            return ret;
        }
    }
}

/* ------------------------------------------------------------ get / put */

static int coroutine_fn cache_get(MetaCache *c, int64_t offset, void **table, bool read)
{
    if (unlikely(offset < 0 || (c->entry_shift >= 0
                                ? (uint64_t)offset & (c->entry_size - 1)
                                : (uint64_t)offset % c->entry_size))) {
        return -EINVAL;
    }
    unsigned b = bucket_of(c, offset);
    MetaShard *sh = shard_of(c, b);
    for (;;) {
        int i = lookup_fast(c, b, offset);
        if (likely(i >= 0)) {
            *table = entry_buf(c, (unsigned)i);
            return 0;
        }

        pthread_mutex_lock(&sh->lock);
        i = lookup_locked(c, b, offset);
        if (i >= 0) {
            MetaEntry *e = &c->entries[i];
            ref_inc(c, (unsigned)i);
            atomic_store_explicit(&e->used, 1, memory_order_relaxed);
            while (atomic_load_explicit(&e->state, memory_order_acquire) == ENTRY_LOADING) {
                co_queue_wait_mutex(&e->load_wait, &sh->lock);
            }
            int err = atomic_load_explicit(&e->state, memory_order_acquire) == ENTRY_VALID
                      ? 0 : e->load_err;
            pthread_mutex_unlock(&sh->lock);
            if (err < 0) {
                ref_dec(c, (unsigned)i);
                return err;
            }
            *table = entry_buf(c, (unsigned)i);
            return 0;
        }
        pthread_mutex_unlock(&sh->lock);

        int v = reserve_victim(c);
        if (v < 0) {
            return v;
        }
        MetaEntry *e = &c->entries[v];
        pthread_mutex_lock(&sh->lock);
        if (lookup_locked(c, b, offset) >= 0) {
            /* Someone loaded it while we looked for room: use theirs. */
            atomic_store_explicit(&e->state, ENTRY_FREE, memory_order_release);
            pthread_mutex_unlock(&sh->lock);
            continue;
        }
        atomic_store_explicit(&e->dirty, false, memory_order_relaxed);
        atomic_store_explicit(&e->used, 1, memory_order_relaxed);
        atomic_store_explicit(&e->key, offset, memory_order_relaxed);
        atomic_store_explicit(&e->state, ENTRY_LOADING, memory_order_release);
        ref_inc(c, (unsigned)v);
        link_locked(c, b, (unsigned)v);
        pthread_mutex_unlock(&sh->lock);

        int ret = 0;
        if (read) {
            IOVector qiov;
            iov_init_buf(&qiov, entry_buf(c, (unsigned)v), c->entry_size);
            ret = bdrv_co_preadv(c->child, offset, (int64_t)c->entry_size, &qiov, 0);
        } else {
            memset(entry_buf(c, (unsigned)v), 0, c->entry_size);
        }

        pthread_mutex_lock(&sh->lock);
        if (ret < 0) {
            unlink_locked(c, b, (unsigned)v);
            e->load_err = ret;
            atomic_store_explicit(&e->key, -1, memory_order_relaxed);
            atomic_store_explicit(&e->state, ENTRY_FAILED, memory_order_release);
        } else {
            atomic_store_explicit(&e->state, ENTRY_VALID, memory_order_release);
        }
        co_queue_restart_all(&e->load_wait);
        pthread_mutex_unlock(&sh->lock);
        if (ret < 0) {
            ref_dec(c, (unsigned)v);
            return ret;
        }
        *table = entry_buf(c, (unsigned)v);
        return 0;
    }
}

int coroutine_fn meta_cache_get(MetaCache *c, int64_t offset, void **table)
{
    return cache_get(c, offset, table, true);
}

int coroutine_fn meta_cache_get_empty(MetaCache *c, int64_t offset, void **table)
{
    return cache_get(c, offset, table, false);
}

void meta_cache_put(MetaCache *c, void *table)
{
    ref_dec(c, (unsigned)entry_index(c, table));
    /* Seq-cst, like the waiter's increment: either it sees this put's count
     * or this sees it waiting.  Almost always 0: one load of a quiet line. */
    if (unlikely(atomic_load_explicit(&c->room_waiters, memory_order_seq_cst))) {
        atomic_fetch_add_explicit(&c->room_puts, 1, memory_order_relaxed);
    }
}

void meta_cache_mark_dirty(MetaCache *c, void *table)
{
    int i = entry_index(c, table);
    atomic_store_explicit(&c->entries[i].dirty, true, memory_order_release);
}

/* ----------------------------------------------------------- write-back */

static int coroutine_fn flush_child(MetaCache *c)
{
    int ret = bdrv_co_flush(c->child->bs);
    if (ret == 0) {
        c->unflushed = false;
        c->depends_on_flush = false;
    }
    return ret;
}

static int coroutine_fn write_back_all(MetaCache *c, int depth);

/* Everything of dep on disk: its dirty entries written, its child flushed. */
static int coroutine_fn flush_dependency(MetaCache *dep, int depth)
{
    int ret = write_back_all(dep, depth);
    if (ret == 0 && dep->unflushed) {
        ret = flush_child(dep);
    }
    return ret;
}

/* The entry at offset of dep on disk (if cached and dirty), then dep's
 * child flushed if dep wrote anything since its last flush. */
static int coroutine_fn flush_entry_dependency(MetaCache *dep, int64_t offset, int depth)
{
    unsigned b = bucket_of(dep, offset);
    MetaShard *sh = shard_of(dep, b);
    int ret = 0;
    pthread_mutex_lock(&sh->lock);
    int i = lookup_locked(dep, b, offset);
    bool pinned = i >= 0 && pin_valid(dep, (unsigned)i);
    pthread_mutex_unlock(&sh->lock);
    if (pinned) {
        ret = write_entry(dep, (unsigned)i, depth);
        ref_dec(dep, (unsigned)i);
    }
    if (ret == 0 && dep->unflushed) {
        ret = flush_child(dep);
    }
    return ret;
}

/*
 * Metadata lock held, a reference on i held.  Write entry i if dirty, after
 * what it depends on is on disk.  QEMU's order: the cache's dependency, the
 * entry's, then a pending flush, then the write.
 */
static int coroutine_fn write_entry(MetaCache *c, unsigned i, int depth)
{
    MetaEntry *e = &c->entries[i];
    int ret;
    if (depth > MC_DEP_DEPTH) {
        fprintf(stderr, "ublkd: %s cache: dependency chain deeper than %d (a cycle?)\n",
                c->name, MC_DEP_DEPTH);
        return -ELOOP;
    }
    if (!atomic_load_explicit(&e->dirty, memory_order_acquire)) {
        return 0;
    }
    if (c->dep) {
        ret = flush_dependency(c->dep, depth + 1);
        if (ret < 0) {
            return ret;
        }
        c->dep = NULL;
    }
    if (e->dep) {
        ret = flush_entry_dependency(e->dep, e->dep_offset, depth + 1);
        if (ret < 0) {
            return ret;
        }
        e->dep = NULL;
    }
    if (c->depends_on_flush) {
        ret = flush_child(c);
        if (ret < 0) {
            return ret;
        }
    }
    if (c->check_write) {
        ret = c->check_write(c->opaque, atomic_load_explicit(&e->key, memory_order_relaxed),
                             c->entry_size);
        if (ret < 0) {
            return ret;
        }
    }
    /* Cleared before the write: our lock excludes writers, and a failed
     * write sets it again so the entry is not evicted. */
    atomic_store_explicit(&e->dirty, false, memory_order_relaxed);
    IOVector qiov;
    iov_init_buf(&qiov, entry_buf(c, i), c->entry_size);
    ret = bdrv_co_pwritev(c->child, atomic_load_explicit(&e->key, memory_order_relaxed),
                          (int64_t)c->entry_size, &qiov, 0);
    if (ret < 0) {
        atomic_store_explicit(&e->dirty, true, memory_order_release);
        return ret;
    }
    c->unflushed = true;
    c->write_seq++;
    return 0;
}

static int coroutine_fn write_back_all(MetaCache *c, int depth)
{
    int ret = 0;
    for (unsigned i = 0; i < c->n; i++) {
        if (!atomic_load_explicit(&c->entries[i].dirty, memory_order_acquire) ||
            !pin_valid(c, i)) {
            continue;
        }
        int r = write_entry(c, i, depth);
        ref_dec(c, i);
        /* Keep going: write what can be written, report the first error. */
        if (r < 0 && ret == 0) {
            ret = r;
        }
    }
    return ret;
}

uint64_t meta_cache_write_seq(MetaCache *c)
{
    require_meta_lock(c, "write_seq");
    return c->write_seq;
}

void meta_cache_flushed_since(MetaCache *c, uint64_t seq, bool pending_covered)
{
    require_meta_lock(c, "flushed_since");
    if (c->write_seq == seq) {
        c->unflushed = false;
    }
    if (pending_covered) {
        c->depends_on_flush = false;
    }
}

int coroutine_fn meta_cache_write_back(MetaCache *c)
{
    require_meta_lock(c, "write_back");
    return write_back_all(c, 0);
}

int coroutine_fn meta_cache_flush(MetaCache *c)
{
    require_meta_lock(c, "flush");
    int ret = write_back_all(c, 0);
    int r = flush_child(c);
    return ret < 0 ? ret : r;
}

int coroutine_fn meta_cache_set_dependency(MetaCache *c, MetaCache *dep)
{
    require_meta_lock(c, "set_dependency");
    int ret;
    if (dep == c) {
        return -EINVAL;
    }
    /* dep must not wait for anything itself when c waits for it, or the
     * chain could come back to c. */
    if (dep->dep) {
        ret = flush_dependency(dep->dep, 1);
        if (ret < 0) {
            return ret;
        }
        dep->dep = NULL;
    }
    if (c->dep && c->dep != dep) {
        ret = flush_dependency(c->dep, 1);
        if (ret < 0) {
            return ret;
        }
    }
    c->dep = dep;
    return 0;
}

int coroutine_fn meta_cache_entry_set_dependency(MetaCache *c, void *table, MetaCache *dep,
                                                 int64_t dep_offset)
{
    require_meta_lock(c, "entry_set_dependency");
    MetaEntry *e = &c->entries[entry_index(c, table)];
    if (dep == c && dep_offset == atomic_load_explicit(&e->key, memory_order_relaxed)) {
        return -EINVAL;
    }
    if (dep_offset < 0 || (uint64_t)dep_offset % dep->entry_size) {
        return -EINVAL;
    }
    if (e->dep && (e->dep != dep || e->dep_offset != dep_offset)) {
        int ret = flush_entry_dependency(e->dep, e->dep_offset, 1);
        if (ret < 0) {
            return ret;
        }
    }
    e->dep = dep;
    e->dep_offset = dep_offset;
    return 0;
}

void meta_cache_depends_on_flush(MetaCache *c)
{
    c->depends_on_flush = true;
}

/* ---------------------------------------------------------------- clean */

static void drop_clean(MetaCache *c, bool unused_only)
{
    pthread_mutex_lock(&c->evict_lock);
    for (unsigned i = 0; i < c->n; i++) {
        MetaEntry *e = &c->entries[i];
        if (atomic_load_explicit(&e->state, memory_order_acquire) != ENTRY_VALID) {
            continue;
        }
        /* Looked up since the last tick: give it another interval. */
        if (unused_only && atomic_load_explicit(&e->used, memory_order_relaxed)) {
            atomic_store_explicit(&e->used, 0, memory_order_relaxed);
            continue;
        }
        if (try_reserve(c, i, ENTRY_VALID)) {
            atomic_store_explicit(&e->state, ENTRY_FREE, memory_order_release);
        }
    }
    pthread_mutex_unlock(&c->evict_lock);
}

void meta_cache_drop_clean(MetaCache *c)
{
    drop_clean(c, false);
}

static void clean_timer_cb(void *opaque)
{
    MetaCache *c = opaque;
    drop_clean(c, true);
    aio_timer_mod(&c->timer, aio_now_ns(c->home) + c->clean_interval_ns);
}

/* ------------------------------------------------------------ lifecycle */

MetaCache *meta_cache_new(const MetaCacheConfig *cfg, Error **errp)
{
    const char *name = cfg->name ? cfg->name : "metadata";
    if (!cfg->child || !cfg->entry_size || !cfg->nr_entries || cfg->nr_entries > INT32_MAX / 2) {
        error_setg(errp, "%s cache: needs a child, an entry size and 1 to %d entries "
                   "(got %u entries of %zu bytes)", name, INT32_MAX / 2, cfg->nr_entries,
                   cfg->entry_size);
        return NULL;
    }
    if (cfg->entry_size > SIZE_MAX / cfg->nr_entries) {
        error_setg(errp, "%s cache: %u entries of %zu bytes overflow", name, cfg->nr_entries,
                   cfg->entry_size);
        return NULL;
    }
    MetaCache *c = NULL;
    if (posix_memalign((void **)&c, 64, sizeof(*c)) != 0) {
        goto nomem;
    }
    memset(c, 0, sizeof(*c));
    c->child = cfg->child;
    c->entry_size = cfg->entry_size;
    c->entry_shift = IS_POW2(c->entry_size) ? __builtin_ctzll(c->entry_size) : -1;
    c->n = cfg->nr_entries;
    c->lock = cfg->lock;
    c->name = name;
    c->check_write = cfg->check_write;
    c->opaque = cfg->opaque;
    c->home = cfg->home;
    c->clean_interval_ns = cfg->clean_interval_ns;
    c->room_wait_ns = cfg->room_wait_ns > 0 ? cfg->room_wait_ns : MC_ROOM_WAIT_NS;
    c->bucket_bits = 4;
    while ((1u << c->bucket_bits) < 2 * c->n) {
        c->bucket_bits++;
    }
    c->ref_stride = ALIGN_UP((size_t)c->n, 16);   /* rows start on their own line */

    size_t refs_bytes = MC_THREAD_SLOTS * c->ref_stride * sizeof(int32_t);
    if (posix_memalign((void **)&c->entries, 64, c->n * sizeof(MetaEntry)) != 0) {
        c->entries = NULL;
        goto nomem_free;
    }
    if (posix_memalign((void **)&c->buf, 4096, c->n * c->entry_size) != 0) {
        c->buf = NULL;
        goto nomem_free;
    }
    if (posix_memalign((void **)&c->refs, 64, refs_bytes) != 0) {
        c->refs = NULL;
        goto nomem_free;
    }
    c->buckets = malloc(sizeof(*c->buckets) << c->bucket_bits);
    if (!c->buckets) {
        goto nomem_free;
    }
    memset(c->refs, 0, refs_bytes);
    for (unsigned b = 0; b < (1u << c->bucket_bits); b++) {
        atomic_init(&c->buckets[b], -1);
    }
    for (unsigned i = 0; i < c->n; i++) {
        MetaEntry *e = &c->entries[i];
        memset(e, 0, sizeof(*e));
        atomic_init(&e->key, -1);
        atomic_init(&e->state, ENTRY_FREE);
        atomic_init(&e->next, -1);
        co_queue_init(&e->load_wait);
    }
    for (int s = 0; s < MC_SHARDS; s++) {
        pthread_mutex_init(&c->shards[s].lock, NULL);
    }
    pthread_mutex_init(&c->evict_lock, NULL);
    if (c->home && c->clean_interval_ns > 0) {
        aio_timer_init(&c->timer, c->home, clean_timer_cb, c);
        aio_timer_mod(&c->timer, aio_now_ns(c->home) + c->clean_interval_ns);
    }
    return c;

nomem_free:
    free(c->buckets);
    free(c->refs);
    free(c->buf);
    free(c->entries);
    free(c);
nomem:
    error_setg_errno(errp, ENOMEM, "%s cache: cannot allocate %u entries of %zu bytes", name,
                     cfg->nr_entries, cfg->entry_size);
    return NULL;
}

void meta_cache_free(MetaCache *c)
{
    if (!c) {
        return;
    }
    if (c->home && c->clean_interval_ns > 0) {
        aio_timer_del(&c->timer);
    }
    for (unsigned i = 0; i < c->n; i++) {
        if (ref_sum(c, i) != 0) {
            fprintf(stderr, "ublkd: %s cache freed with entry %u still referenced\n",
                    c->name, i);
            abort();
        }
    }
    unsigned dirty = meta_cache_nr_dirty(c);
    if (dirty) {
        fprintf(stderr, "ublkd: %s cache freed with %u dirty entries (not flushed)\n",
                c->name, dirty);
    }
    for (int s = 0; s < MC_SHARDS; s++) {
        pthread_mutex_destroy(&c->shards[s].lock);
    }
    pthread_mutex_destroy(&c->evict_lock);
    free(c->buckets);
    free(c->refs);
    free(c->buf);
    free(c->entries);
    free(c);
}

/* -------------------------------------------------------- introspection */

size_t meta_cache_entry_size(const MetaCache *c)
{
    return c->entry_size;
}

bool meta_cache_contains(MetaCache *c, int64_t offset)
{
    unsigned b = bucket_of(c, offset);
    MetaShard *sh = shard_of(c, b);
    pthread_mutex_lock(&sh->lock);
    int i = lookup_locked(c, b, offset);
    bool ok = i >= 0 &&
              atomic_load_explicit(&c->entries[i].state, memory_order_acquire) == ENTRY_VALID;
    pthread_mutex_unlock(&sh->lock);
    return ok;
}

unsigned meta_cache_nr_dirty(MetaCache *c)
{
    unsigned n = 0;
    for (unsigned i = 0; i < c->n; i++) {
        n += atomic_load_explicit(&c->entries[i].dirty, memory_order_relaxed);
    }
    return n;
}

unsigned meta_cache_nr_entries(const MetaCache *c)
{
    return c->n;
}

unsigned meta_cache_nr_cached(MetaCache *c)
{
    unsigned n = 0;
    for (unsigned i = 0; i < c->n; i++) {
        n += atomic_load_explicit(&c->entries[i].state, memory_order_relaxed) == ENTRY_VALID;
    }
    return n;
}

int meta_cache_refs(MetaCache *c, int64_t offset)
{
    unsigned b = bucket_of(c, offset);
    MetaShard *sh = shard_of(c, b);
    pthread_mutex_lock(&sh->lock);
    int i = lookup_locked(c, b, offset);
    int refs = i >= 0 ? ref_sum(c, (unsigned)i) : -1;
    pthread_mutex_unlock(&sh->lock);
    return refs;
}
