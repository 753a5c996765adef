/*
 * meta-cache.h - a cache of fixed-size metadata entries for format drivers
 * (qcow2's L2 slices and refcount blocks, vdi's map if it wants one).
 *
 * An entry is entry_size bytes of a child, keyed by its byte offset there,
 * loaded and written back through the request path (bdrv_co_preadv/pwritev
 * on the child).  Every queue thread looks entries up at once:
 *
 *     uint64_t *l2;
 *     int ret = meta_cache_get(c, l2_offset, (void **)&l2);  // may load
 *     if (ret < 0) return ret;
 *     uint64_t e = __atomic_load_n(&l2[i], __ATOMIC_ACQUIRE);
 *     meta_cache_put(c, l2);
 *
 * A hit takes no lock and writes no shared cache line: the reference is
 * counted in the calling thread's own row of counters, and a fence against
 * the evictor (which marks the entry, fences, and sums the rows) keeps an
 * entry with references from being evicted.  A miss takes a short pthread
 * mutex (one of a few shards by key) for the hash update, never across I/O;
 * one coroutine loads, the others that miss the same key wait for it.
 *
 * Updates are the driver's job and go under ONE CoMutex of its own, the
 * "metadata lock" given in MetaCacheConfig.lock: change entry words (with
 * atomic stores, readers do not take the lock), meta_cache_mark_dirty,
 * set dependencies, call meta_cache_flush.  Every write-back runs under that
 * lock too (a miss that must write back a dirty victim takes it, unless the
 * calling coroutine already holds it), so a written entry never tears.
 * See "Metadata cache" in docs/ARCHITECTURE.md.
 *
 * Entries and buffers are allocated at creation; nothing is allocated per
 * lookup.  Functions return -errno.
 */
#ifndef UBLKD_META_CACHE_H
#define UBLKD_META_CACHE_H

#include "aio.h"
#include "block-driver.h"
#include "coroutine.h"
#include "error.h"

typedef struct MetaCache MetaCache;

typedef struct MetaCacheConfig {
    BdrvChild *child;          /* where entries live */
    size_t entry_size;         /* bytes per entry (e.g. a cluster or an L2 slice) */
    unsigned nr_entries;       /* capacity; at least 1 */
    CoMutex *lock;             /* the driver's metadata lock (NULL: caller serialises) */
    AioContext *home;          /* runs the clean timer (NULL: no timer) */
    int64_t clean_interval_ns; /* drop entries unused for this long (0: never) */
    const char *name;          /* for messages: "l2", "refcount" */
    /* Asked before every write-back, under the metadata lock, with the entry's offset
     * and size: a negative -errno refuses the write (the entry stays dirty and the
     * error goes to whoever wrote it back).  qcow2's overlap check: a corrupted
     * table must not write over other metadata.  NULL: no check. */
    int (*check_write)(void *opaque, int64_t offset, size_t len);
    void *opaque;
    /* A miss that finds every entry in use waits for one; -ENOSPC only after
     * this long with no entry released meanwhile (0: 2 s).  Requests keep
     * their L2 slice across their data I/O, so a deep queue on a small cache
     * waits as long as writes take, which under load is far longer than a
     * fixed few milliseconds; only a cache whose holders all wait for it
     * (too small for its load) ends in -ENOSPC. */
    int64_t room_wait_ns;
} MetaCacheConfig;

/*
 * Create a cache.  With a clean timer, call on home's thread (the timer is
 * armed there) and free it there too.  NULL with errp set on failure.
 */
MetaCache *meta_cache_new(const MetaCacheConfig *cfg, Error **errp);
/* No references may be held; dirty entries are dropped (flush first). */
void meta_cache_free(MetaCache *c);

/*
 * Get a reference to the entry at offset (a multiple of entry_size), loading
 * it on a miss; *table points at its entry_size bytes until meta_cache_put.
 * A hit does not sleep.  A failed load returns its -errno to every waiter
 * and leaves nothing cached.  When every entry is in use, a miss lets other
 * requests run and retries for up to 10 ms, then fails -ENOSPC: size the
 * cache for the references held at once (queues x depth x tables held by
 * one request), with room to spare.
 */
int coroutine_fn meta_cache_get(MetaCache *c, int64_t offset, void **table);
/* Like get, without reading: a new table the caller fills (zeroed first if
 * it was not cached).  Mark it dirty after filling. */
int coroutine_fn meta_cache_get_empty(MetaCache *c, int64_t offset, void **table);
/* Drop the reference taken by get (any thread; does not sleep). */
void meta_cache_put(MetaCache *c, void *table);

/* With a reference held and the metadata lock held: the entry must be
 * written back before it is evicted or the cache is flushed. */
void meta_cache_mark_dirty(MetaCache *c, void *table);

/*
 * Ordering, metadata lock held.  Set these BEFORE changing the dependent
 * entry: no write of it reaches the child until what it depends on is
 * written AND the child of that cache flushed (the flush is the barrier).
 *
 * meta_cache_set_dependency: every entry of c waits for all of dep (QEMU's
 * qcow2_cache_set_dependency: refcount blocks before the L2 tables).
 * meta_cache_entry_set_dependency: the entry `table` of c waits for the
 * entry at dep_offset of dep (which may be c).  An entry records one
 * dependency: setting another first writes back the old one.
 * meta_cache_depends_on_flush: the child is flushed before c's next write
 * (e.g. after freeing clusters, before an entry that reuses them).
 */
int coroutine_fn meta_cache_set_dependency(MetaCache *c, MetaCache *dep);
int coroutine_fn meta_cache_entry_set_dependency(MetaCache *c, void *table, MetaCache *dep,
                                                 int64_t dep_offset);
void meta_cache_depends_on_flush(MetaCache *c);

/* Metadata lock held: write back every dirty entry, honouring dependencies
 * (write_back), then flush the child too (flush). */
int coroutine_fn meta_cache_write_back(MetaCache *c);
int coroutine_fn meta_cache_flush(MetaCache *c);
/* The child flushed by the caller, without the metadata lock so others
 * share the flush: take meta_cache_write_seq (lock held) after writing
 * back and before the flush, then call meta_cache_flushed_since with it
 * (lock held) after the flush succeeded.  If the cache wrote nothing in
 * between, what it wrote counts as flushed and a dependency on it needs
 * no flush of its own.  pending_covered: the caller knows every
 * meta_cache_depends_on_flush on c was set before the flush began (the
 * caller counts them), so that flush satisfied them. */
uint64_t meta_cache_write_seq(MetaCache *c);
void meta_cache_flushed_since(MetaCache *c, uint64_t seq, bool pending_covered);

/* Drop every unreferenced clean entry now (what the timer does to unused
 * ones).  Any thread, in a coroutine or not; does not sleep. */
void meta_cache_drop_clean(MetaCache *c);

/* ---- introspection, for tests and statistics ---- */
size_t meta_cache_entry_size(const MetaCache *c);
bool meta_cache_contains(MetaCache *c, int64_t offset);   /* cached and loaded */
unsigned meta_cache_nr_dirty(MetaCache *c);
unsigned meta_cache_nr_cached(MetaCache *c);
unsigned meta_cache_nr_entries(const MetaCache *c);        /* capacity */
/* References to the entry hashed under offset (loading or loaded), or -1. */
int meta_cache_refs(MetaCache *c, int64_t offset);

#endif
