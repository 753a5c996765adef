/*
 * test-meta-cache.c - the metadata cache (io/meta-cache.c) over the mem
 * driver: hits and misses, one load for concurrent misses on two threads,
 * failed loads, eviction (never of a referenced entry, write-back of dirty
 * ones), dependency order with the flush barrier, flush, the clean timer on
 * a virtual clock, and a two-thread stress that checks every byte it reads.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "iov.h"
#include "meta-cache.h"
#include "test-util.h"

#define ES 4096                       /* entry size */
#define IMG_SIZE ((int64_t)MiB)
#define SEC 1000000000LL

static BlockDriverState *bs;
static BdrvChild *child;
static CoMutex meta_lock;

static int setup(void **state)
{
    (void)state;
    test_loop_init();
    MemConfig cfg = { .size = IMG_SIZE };
    bs = mem_node_new(&cfg);
    uint8_t buf[ES];
    for (int64_t off = 0; off < IMG_SIZE; off += ES) {
        test_pattern(buf, ES, (uint64_t)off);
        mem_write_raw(bs, off, buf, ES);
    }
    child = test_child_new(bs);
    co_mutex_init(&meta_lock);
    mem_log_clear(bs);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    test_child_free(child);
    bdrv_unref(bs);
    co_mutex_destroy(&meta_lock);
    return 0;
}

static MetaCache *new_cache_wait(unsigned n, const char *name, int64_t room_wait_ns)
{
    MetaCacheConfig cfg = { .child = child, .entry_size = ES, .nr_entries = n,
                            .lock = &meta_lock, .name = name, .room_wait_ns = room_wait_ns };
    Error *err = NULL;
    MetaCache *c = meta_cache_new(&cfg, &err);
    if (!c) {
        fail_msg("meta_cache_new: %s", error_get_pretty(err));
    }
    return c;
}

static MetaCache *new_cache(unsigned n, const char *name)
{
    return new_cache_wait(n, name, 0);
}

/* The table holds what setup wrote at off (or was written there since). */
static bool holds_pattern(const void *table, int64_t off)
{
    uint8_t want[ES];
    test_pattern(want, ES, (uint64_t)off);
    return memcmp(table, want, ES) == 0;
}

static void coroutine_fn get_put_ok(MetaCache *c, int64_t off)
{
    void *t;
    assert_int_equal(meta_cache_get(c, off, &t), 0);
    assert_true(holds_pattern(t, off));
    meta_cache_put(c, t);
}

/* A logged call; calls of different ops compare by position in the log. */
static const MemLogEntry *log_pos(MemOp op, int i)
{
    const MemLogEntry *e = mem_log(bs, op, i);
    assert_non_null(e);
    return e;
}

/* ---- hit and miss ---- */

static void coroutine_fn hit_miss_co(void *opaque)
{
    (void)opaque;
    MetaCache *c = new_cache(4, "hit");
    void *t1, *t2;
    assert_false(meta_cache_contains(c, 0));
    assert_int_equal(meta_cache_get(c, 0, &t1), 0);
    assert_true(holds_pattern(t1, 0));
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    assert_int_equal(meta_cache_get(c, 0, &t2), 0);      /* hit while referenced */
    assert_ptr_equal(t1, t2);
    meta_cache_put(c, t2);
    meta_cache_put(c, t1);
    get_put_ok(c, 0);                                     /* hit, unreferenced */
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    get_put_ok(c, 3 * ES);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 2);
    const MemLogEntry *r = mem_log(bs, MEM_OP_READ, 1);
    assert_int_equal(r->offset, 3 * ES);
    assert_int_equal(r->bytes, ES);
    assert_true(meta_cache_contains(c, 0));
    assert_int_equal(meta_cache_nr_cached(c), 2);
    assert_int_equal(meta_cache_get(c, 100, &t1), -EINVAL);  /* not entry-aligned */
    meta_cache_free(c);
}

static void test_hit_miss(void **state)
{
    (void)state;
    test_run_co(hit_miss_co, NULL);
}

static void coroutine_fn get_empty_co(void *opaque)
{
    (void)opaque;
    MetaCache *c = new_cache(2, "empty");
    void *t;
    assert_int_equal(meta_cache_get_empty(c, 5 * ES, &t), 0);
    assert_true(test_buf_is(t, ES, 0));
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 0);
    meta_cache_put(c, t);
    assert_int_equal(meta_cache_get(c, 5 * ES, &t), 0);     /* a hit: still no read */
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 0);
    meta_cache_put(c, t);
    meta_cache_free(c);
}

static void test_get_empty(void **state)
{
    (void)state;
    test_run_co(get_empty_co, NULL);
}

static void test_bad_config(void **state)
{
    (void)state;
    MetaCacheConfig cfg = { .child = child, .entry_size = ES, .nr_entries = 0, .name = "x" };
    Error *err = NULL;
    assert_null(meta_cache_new(&cfg, &err));
    assert_non_null(err);
    assert_non_null(strstr(error_get_pretty(err), "x cache"));
    error_free(err);
}

/* ---- concurrent misses ---- */

typedef struct {
    MetaCache *c;
    int64_t off;
    int ret;
    void *table;
    bool content_ok;
    atomic_bool done;
} Getter;

static void coroutine_fn getter_co(void *opaque)
{
    Getter *g = opaque;
    g->ret = meta_cache_get(g->c, g->off, &g->table);
    if (g->ret == 0) {
        g->content_ok = holds_pattern(g->table, g->off);
        meta_cache_put(g->c, g->table);
    }
    atomic_store(&g->done, true);
}

static void *getter_thread(void *opaque)
{
    Getter *g = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    aio_set_current(ctx);
    co_enter(co_create(getter_co, g));
    AIO_WAIT_WHILE(ctx, !atomic_load(&g->done));
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

/*
 * Thread A misses and its load parks in the mem gate; thread B and the main
 * thread miss the same entry meanwhile.  If either issued a read of its own
 * it would park too.  After the gate opens all three have the one table.
 */
static void run_concurrent_miss(bool fail)
{
    MetaCache *c = new_cache(4, "concurrent");
    Getter a = { .c = c, .off = 2 * ES }, b = a, m = a;
    pthread_t ta, tb;
    if (fail) {
        mem_inject_error(bs, MEM_OP_READ, 2 * ES, ES, -EIO, 1);
    }
    mem_gate_close(bs, 1u << MEM_OP_READ);
    pthread_create(&ta, NULL, getter_thread, &a);
    WAIT_FOR(mem_gate_parked(bs) == 1, "the loader to park");
    pthread_create(&tb, NULL, getter_thread, &b);
    co_enter(co_create(getter_co, &m));
    /* The loader's reference and one of each waiter's. */
    WAIT_FOR(meta_cache_refs(c, 2 * ES) == 3, "B and main to wait for the load");
    usleep(20000);                     /* a read of B's own would park by now */
    assert_int_equal(mem_gate_parked(bs), 1);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    assert_false(atomic_load(&b.done));
    assert_false(atomic_load(&m.done));
    mem_gate_open(bs);
    AIO_WAIT_WHILE(aio_current(), !atomic_load(&m.done));
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    if (fail) {
        assert_int_equal(a.ret, -EIO);
        assert_int_equal(b.ret, -EIO);
        assert_int_equal(m.ret, -EIO);
        /* Not poisoned: the next get loads again, and succeeds. */
        assert_false(meta_cache_contains(c, 2 * ES));
        Getter again = { .c = c, .off = 2 * ES };
        test_run_co(getter_co, &again);
        assert_int_equal(again.ret, 0);
        assert_true(again.content_ok);
        assert_int_equal(mem_calls(bs, MEM_OP_READ), 2);
    } else {
        assert_int_equal(a.ret, 0);
        assert_int_equal(b.ret, 0);
        assert_int_equal(m.ret, 0);
        assert_true(a.content_ok && b.content_ok && m.content_ok);
        assert_ptr_equal(a.table, b.table);
        assert_ptr_equal(a.table, m.table);
    }
    meta_cache_free(c);
}

static void test_concurrent_miss_loads_once(void **state)
{
    (void)state;
    run_concurrent_miss(false);
}

static void test_load_error_to_all_waiters(void **state)
{
    (void)state;
    run_concurrent_miss(true);
}

/* ---- eviction ---- */

static void coroutine_fn in_use_co(void *opaque)
{
    (void)opaque;
    MetaCache *c = new_cache(2, "in-use");
    void *a, *b, *x;
    assert_int_equal(meta_cache_get(c, 0, &a), 0);
    assert_int_equal(meta_cache_get(c, ES, &b), 0);
    assert_int_equal(meta_cache_get(c, 2 * ES, &x), -ENOSPC);   /* both in use */
    meta_cache_put(c, a);
    /* Many misses: each may only take a's slot, never b's. */
    for (int i = 2; i < 40; i++) {
        get_put_ok(c, i * ES);
        assert_true(meta_cache_contains(c, ES));
        assert_true(holds_pattern(b, ES));
    }
    meta_cache_put(c, b);
    meta_cache_free(c);
}

static void test_in_use_not_evicted(void **state)
{
    (void)state;
    test_run_co(in_use_co, NULL);
}

/* A miss on a full cache waits for a reference to go rather than failing. */
typedef struct {
    MetaCache *c;
    int ret;
    bool done;
} RoomWaiter;

static void coroutine_fn room_waiter_co(void *opaque)
{
    RoomWaiter *w = opaque;
    void *t;
    w->ret = meta_cache_get(w->c, 7 * ES, &t);
    if (w->ret == 0) {
        assert_true(holds_pattern(t, 7 * ES));
        meta_cache_put(w->c, t);
    }
    w->done = true;
}

static void coroutine_fn hold_one_co(void *opaque)
{
    RoomWaiter *w = opaque;
    void *t;
    assert_int_equal(meta_cache_get(w->c, 0, &t), 0);
    /* Keep it while the waiter tries, then let go. */
    for (int i = 0; i < 20; i++) {
        aio_co_schedule(aio_current(), co_self());
        co_yield();
    }
    meta_cache_put(w->c, t);
}

static void test_miss_waits_for_room(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    MetaCache *c = new_cache(1, "room");
    RoomWaiter h = { .c = c }, w = { .c = c, .ret = 1 };
    co_enter(co_create(hold_one_co, &h));
    co_enter(co_create(room_waiter_co, &w));
    assert_false(w.done);                   /* the only entry is held */
    AIO_WAIT_WHILE(ctx, !w.done);
    assert_int_equal(w.ret, 0);
    assert_true(meta_cache_contains(c, 7 * ES));
    meta_cache_free(c);
}

/* Holds entry 0 for hold_ns, as a request keeps its L2 slice across a
 * data write that takes that long. */
typedef struct SlowHolder {
    MetaCache *c;
    int64_t hold_ns;
    bool done;
} SlowHolder;

static void coroutine_fn hold_slow_co(void *opaque)
{
    SlowHolder *h = opaque;
    void *t;
    assert_int_equal(meta_cache_get(h->c, 0, &t), 0);
    aio_co_sleep_ns(h->hold_ns);
    meta_cache_put(h->c, t);
    h->done = true;
}

/* A slow holder is not a full cache: the miss waits as long as it takes
 * (it gave up after 10 ms once, and a 4-queue qcow2 device in a TCG guest
 * failed writes with ENOSPC). */
static void test_miss_outwaits_slow_holder(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    MetaCache *c = new_cache_wait(1, "slow", 500LL * 1000 * 1000);
    SlowHolder h = { .c = c, .hold_ns = 100LL * 1000 * 1000 };
    RoomWaiter w = { .c = c, .ret = 1 };
    co_enter(co_create(hold_slow_co, &h));
    co_enter(co_create(room_waiter_co, &w));
    AIO_WAIT_WHILE(ctx, !w.done);
    assert_int_equal(w.ret, 0);
    meta_cache_free(c);
}

/* Entries released now and then by others keep a waiter waiting past
 * room_wait_ns; with none released for that long it gives up: the cache is
 * too small for its load, which is -ENOSPC, not a hang. */
static void coroutine_fn churn_co(void *opaque)
{
    MetaCache *c = opaque;
    for (int i = 0; i < 12; i++) {
        void *t;
        assert_int_equal(meta_cache_get(c, (int64_t)(20 + i) * ES, &t), 0);
        aio_co_sleep_ns(100LL * 1000 * 1000);
        meta_cache_put(c, t);
        /* Take the next one before the waiter can: it sees puts, not room. */
    }
}

typedef struct HoldTwo {
    MetaCache *c;
    bool *done;
} HoldTwo;

static void coroutine_fn hold_two_co(void *opaque)
{
    HoldTwo *ht = opaque;
    MetaCache *c = ht->c;
    void *a, *b;
    assert_int_equal(meta_cache_get(c, 0, &a), 0);
    assert_int_equal(meta_cache_get(c, ES, &b), 0);
    aio_co_sleep_ns(1200LL * 1000 * 1000);
    meta_cache_put(c, a);
    meta_cache_put(c, b);
    *ht->done = true;
}

static void test_miss_waits_while_entries_move(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    /* 3 entries: two held for 1.2 s, one churned every 100 ms for 1.2 s; a
     * waiter gives up after 400 ms without a put.  The margins are wide: a
     * loaded CI machine stalls the thread for tens of milliseconds (a 20 ms
     * churn against a 60 ms wait failed there with -ENOSPC). */
    MetaCache *c = new_cache_wait(3, "churn", 400LL * 1000 * 1000);
    RoomWaiter w = { .c = c, .ret = 1 };
    bool held = false;
    HoldTwo ht = { .c = c, .done = &held };
    co_enter(co_create(hold_two_co, &ht));
    co_enter(co_create(churn_co, c));
    int64_t t0 = clock_monotonic_ns();
    co_enter(co_create(room_waiter_co, &w));
    AIO_WAIT_WHILE(ctx, !w.done);
    int64_t waited = clock_monotonic_ns() - t0;
    assert_int_equal(w.ret, 0);
    /* The churn reserves its next entry before it yields, so the waiter
     * saw only puts until the churn ended (~1.2 s, three room_waits). */
    assert_true(waited >= 1000LL * 1000 * 1000);

    /* Nobody lets go for 60 ms: give up (long before the holder's 1 s). */
    AIO_WAIT_WHILE(ctx, !held);
    MetaCache *c2 = new_cache_wait(1, "full", 60LL * 1000 * 1000);
    SlowHolder h = { .c = c2, .hold_ns = 1000LL * 1000 * 1000 };
    RoomWaiter w2 = { .c = c2, .ret = 1 };
    co_enter(co_create(hold_slow_co, &h));
    t0 = clock_monotonic_ns();
    co_enter(co_create(room_waiter_co, &w2));
    AIO_WAIT_WHILE(ctx, !w2.done);
    waited = clock_monotonic_ns() - t0;
    assert_int_equal(w2.ret, -ENOSPC);
    assert_true(waited >= 60LL * 1000 * 1000 && waited < 1000LL * 1000 * 1000);
    AIO_WAIT_WHILE(ctx, !h.done);
    meta_cache_free(c);
    meta_cache_free(c2);
}

static void coroutine_fn evict_dirty_co(void *opaque)
{
    bool hold_lock = *(bool *)opaque;
    MetaCache *c = new_cache(2, "evict");
    void *a, *b, *d;
    co_mutex_lock(&meta_lock);
    assert_int_equal(meta_cache_get(c, 0, &a), 0);
    memset(a, 0xa5, ES);
    meta_cache_mark_dirty(c, a);
    meta_cache_put(c, a);
    co_mutex_unlock(&meta_lock);
    assert_int_equal(meta_cache_get(c, ES, &b), 0);    /* held: only a can go */
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 0);
    if (hold_lock) {
        co_mutex_lock(&meta_lock);                      /* a driver mid-update */
    }
    assert_int_equal(meta_cache_get(c, 2 * ES, &d), 0);
    if (hold_lock) {
        co_mutex_unlock(&meta_lock);
    }
    assert_true(holds_pattern(d, 2 * ES));
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);
    const MemLogEntry *w = mem_log(bs, MEM_OP_WRITE, 0);
    assert_int_equal(w->offset, 0);
    assert_int_equal(w->bytes, ES);
    uint8_t disk[ES];
    mem_read_raw(bs, 0, disk, ES);
    assert_true(test_buf_is(disk, ES, 0xa5));
    assert_false(meta_cache_contains(c, 0));
    assert_int_equal(meta_cache_nr_dirty(c), 0);
    meta_cache_put(c, d);
    meta_cache_put(c, b);
    meta_cache_free(c);
}

static void test_eviction_writes_back_dirty(void **state)
{
    (void)state;
    bool hold_lock = false;
    test_run_co(evict_dirty_co, &hold_lock);
}

/* A driver that misses while it holds the metadata lock must not deadlock
 * on the write-back taking it. */
static void test_eviction_under_meta_lock(void **state)
{
    (void)state;
    bool hold_lock = true;
    test_run_co(evict_dirty_co, &hold_lock);
}

/* A dirty entry whose write-back fails stays dirty and cached. */
static void coroutine_fn evict_fail_co(void *opaque)
{
    (void)opaque;
    MetaCache *c = new_cache(1, "evict-fail");
    void *a;
    co_mutex_lock(&meta_lock);
    assert_int_equal(meta_cache_get(c, 0, &a), 0);
    memset(a, 0x11, ES);
    meta_cache_mark_dirty(c, a);
    meta_cache_put(c, a);
    co_mutex_unlock(&meta_lock);
    mem_inject_error(bs, MEM_OP_WRITE, 0, ES, -ENOSPC, 1);
    assert_int_equal(meta_cache_get(c, ES, &a), -ENOSPC);
    assert_true(meta_cache_contains(c, 0));
    assert_int_equal(meta_cache_nr_dirty(c), 1);
    co_mutex_lock(&meta_lock);
    assert_int_equal(meta_cache_flush(c), 0);
    co_mutex_unlock(&meta_lock);
    meta_cache_free(c);
}

static void test_eviction_write_error(void **state)
{
    (void)state;
    test_run_co(evict_fail_co, NULL);
}

/* ---- dependencies ---- */

static void coroutine_fn dirty_entry(MetaCache *c, int64_t off, int byte, void **keep)
{
    void *t;
    assert_int_equal(meta_cache_get(c, off, &t), 0);
    memset(t, byte, ES);
    meta_cache_mark_dirty(c, t);
    if (keep) {
        *keep = t;
    } else {
        meta_cache_put(c, t);
    }
}

/* qcow2's case: refcount blocks (r) on disk before the L2 table (l). */
static void coroutine_fn cache_dep_co(void *opaque)
{
    (void)opaque;
    MetaCache *r = new_cache(4, "refcount"), *l = new_cache(4, "l2");
    co_mutex_lock(&meta_lock);
    dirty_entry(r, 16 * ES, 0x01, NULL);
    dirty_entry(r, 17 * ES, 0x02, NULL);
    assert_int_equal(meta_cache_set_dependency(l, r), 0);
    dirty_entry(l, 32 * ES, 0x03, NULL);
    mem_log_clear(bs);
    assert_int_equal(meta_cache_flush(l), 0);
    co_mutex_unlock(&meta_lock);
    /* r's two writes, a flush, l's write, l's flush. */
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 3);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 2);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 2)->offset, 32 * ES);
    assert_true(log_pos(MEM_OP_WRITE, 1) < log_pos(MEM_OP_FLUSH, 0));
    assert_true(log_pos(MEM_OP_FLUSH, 0) < log_pos(MEM_OP_WRITE, 2));
    assert_int_equal(meta_cache_nr_dirty(r), 0);
    assert_int_equal(meta_cache_nr_dirty(l), 0);
    /* Satisfied: l's next write does not flush r again. */
    co_mutex_lock(&meta_lock);
    dirty_entry(l, 33 * ES, 0x04, NULL);
    mem_log_clear(bs);
    assert_int_equal(meta_cache_write_back(l), 0);
    co_mutex_unlock(&meta_lock);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 0);
    meta_cache_free(l);
    meta_cache_free(r);
}

static void test_cache_dependency_order(void **state)
{
    (void)state;
    test_run_co(cache_dep_co, NULL);
}

/* Entry granularity: l waits for r1 only; r2 stays dirty. */
static void coroutine_fn entry_dep_co(void *opaque)
{
    (void)opaque;
    MetaCache *r = new_cache(4, "refcount"), *l = new_cache(4, "l2");
    void *lt;
    co_mutex_lock(&meta_lock);
    dirty_entry(r, 16 * ES, 0x01, NULL);
    dirty_entry(r, 17 * ES, 0x02, NULL);
    dirty_entry(l, 32 * ES, 0x03, &lt);
    assert_int_equal(meta_cache_entry_set_dependency(l, lt, r, 17 * ES), 0);
    meta_cache_put(l, lt);
    mem_log_clear(bs);
    assert_int_equal(meta_cache_write_back(l), 0);
    co_mutex_unlock(&meta_lock);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 2);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 1);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->offset, 17 * ES);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 1)->offset, 32 * ES);
    assert_true(log_pos(MEM_OP_WRITE, 0) < log_pos(MEM_OP_FLUSH, 0));
    assert_true(log_pos(MEM_OP_FLUSH, 0) < log_pos(MEM_OP_WRITE, 1));
    assert_int_equal(meta_cache_nr_dirty(r), 1);
    co_mutex_lock(&meta_lock);
    assert_int_equal(meta_cache_flush(r), 0);
    co_mutex_unlock(&meta_lock);
    meta_cache_free(l);
    meta_cache_free(r);
}

static void test_entry_dependency_order(void **state)
{
    (void)state;
    test_run_co(entry_dep_co, NULL);
}

/* Eviction honours dependencies too: the victim's refcount block goes first. */
static void coroutine_fn evict_dep_co(void *opaque)
{
    (void)opaque;
    MetaCache *r = new_cache(4, "refcount"), *l = new_cache(1, "l2");
    void *t;
    co_mutex_lock(&meta_lock);
    dirty_entry(r, 16 * ES, 0x01, NULL);
    assert_int_equal(meta_cache_set_dependency(l, r), 0);
    dirty_entry(l, 32 * ES, 0x03, NULL);
    co_mutex_unlock(&meta_lock);
    mem_log_clear(bs);
    assert_int_equal(meta_cache_get(l, 40 * ES, &t), 0);
    meta_cache_put(l, t);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->offset, 16 * ES);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 1)->offset, 32 * ES);
    assert_true(log_pos(MEM_OP_WRITE, 0) < log_pos(MEM_OP_FLUSH, 0));
    assert_true(log_pos(MEM_OP_FLUSH, 0) < log_pos(MEM_OP_WRITE, 1));
    assert_true(log_pos(MEM_OP_WRITE, 1) < log_pos(MEM_OP_READ, 0));
    meta_cache_free(l);
    meta_cache_free(r);
}

static void test_eviction_dependency_order(void **state)
{
    (void)state;
    test_run_co(evict_dep_co, NULL);
}

static void coroutine_fn flush_dep_co(void *opaque)
{
    (void)opaque;
    MetaCache *c = new_cache(4, "l2");
    /* A write the request path has not flushed yet (say, a refcount
     * decrement that freed a cluster the new entry will reuse). */
    uint8_t buf[512] = { 0 };
    IOVector qiov;
    iov_init_buf(&qiov, buf, sizeof(buf));
    assert_int_equal(bdrv_co_pwritev(child, 100 * ES, sizeof(buf), &qiov, 0), 0);
    co_mutex_lock(&meta_lock);
    meta_cache_depends_on_flush(c);
    dirty_entry(c, 8 * ES, 0x08, NULL);
    mem_log_clear(bs);
    assert_int_equal(meta_cache_write_back(c), 0);
    co_mutex_unlock(&meta_lock);
    assert_int_equal(mem_calls(bs, MEM_OP_FLUSH), 1);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);
    assert_true(log_pos(MEM_OP_FLUSH, 0) < log_pos(MEM_OP_WRITE, 0));
    meta_cache_free(c);
}

static void test_depends_on_flush(void **state)
{
    (void)state;
    test_run_co(flush_dep_co, NULL);
}

/* ---- flush ---- */

static void coroutine_fn flush_co(void *opaque)
{
    (void)opaque;
    MetaCache *c = new_cache(4, "flush");
    co_mutex_lock(&meta_lock);
    dirty_entry(c, 0, 0x21, NULL);
    dirty_entry(c, ES, 0x22, NULL);
    get_put_ok(c, 2 * ES);                           /* clean: not written */
    assert_int_equal(meta_cache_nr_dirty(c), 2);
    mem_log_clear(bs);
    mem_inject_error(bs, MEM_OP_WRITE, ES, ES, -EIO, 1);
    assert_int_equal(meta_cache_flush(c), -EIO);
    assert_int_equal(meta_cache_nr_dirty(c), 1);      /* the failed one */
    assert_int_equal(meta_cache_flush(c), 0);
    co_mutex_unlock(&meta_lock);
    assert_int_equal(meta_cache_nr_dirty(c), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 3);
    assert_true(mem_calls(bs, MEM_OP_FLUSH) >= 1);
    assert_true(log_pos(MEM_OP_WRITE, 2) < log_pos(MEM_OP_FLUSH, mem_calls(bs, MEM_OP_FLUSH) - 1));
    uint8_t disk[ES];
    mem_read_raw(bs, 0, disk, ES);
    assert_true(test_buf_is(disk, ES, 0x21));
    mem_read_raw(bs, ES, disk, ES);
    assert_true(test_buf_is(disk, ES, 0x22));
    /* Still cached, and clean: no more writes. */
    assert_true(meta_cache_contains(c, 0));
    meta_cache_free(c);
}

static void test_flush(void **state)
{
    (void)state;
    test_run_co(flush_co, NULL);
}

/* ---- the write-back check (qcow2's overlap check) ---- */

static int64_t refused_offset = -1;
static int check_calls;
static int refuse_one(void *opaque, int64_t offset, size_t len)
{
    assert_ptr_equal(opaque, &refused_offset);
    assert_int_equal(len, ES);
    check_calls++;
    return offset == refused_offset ? -EIO : 0;
}

static void coroutine_fn check_write_co(void *opaque)
{
    (void)opaque;
    MetaCacheConfig cfg = { .child = child, .entry_size = ES, .nr_entries = 4,
                            .lock = &meta_lock, .name = "checked",
                            .check_write = refuse_one, .opaque = &refused_offset };
    Error *err = NULL;
    MetaCache *c = meta_cache_new(&cfg, &err);
    assert_non_null(c);
    check_calls = 0;
    refused_offset = 2 * ES;
    co_mutex_lock(&meta_lock);
    dirty_entry(c, 1 * ES, 0x11, NULL);
    dirty_entry(c, 2 * ES, 0x22, NULL);
    /* The refused entry fails the flush; nothing is written over it. */
    assert_int_equal(meta_cache_flush(c), -EIO);
    assert_true(check_calls >= 1);
    uint8_t b[ES];
    mem_read_raw(bs, 2 * ES, b, ES);
    assert_true(holds_pattern(b, 2 * ES));
    /* It stays dirty: once allowed, the next flush writes it. */
    refused_offset = -1;
    assert_int_equal(meta_cache_flush(c), 0);
    co_mutex_unlock(&meta_lock);
    mem_read_raw(bs, 1 * ES, b, ES);
    assert_int_equal(b[0], 0x11);
    mem_read_raw(bs, 2 * ES, b, ES);
    assert_int_equal(b[0], 0x22);
    assert_int_equal(b[ES - 1], 0x22);
    meta_cache_free(c);
}

static void test_check_write(void **state)
{
    (void)state;
    test_run_co(check_write_co, NULL);
}

/* ---- the clean timer ---- */

static int64_t vclock_ns;
static int64_t vclock(void *opaque)
{
    (void)opaque;
    return __atomic_load_n(&vclock_ns, __ATOMIC_SEQ_CST);
}

static void tick_to(AioContext *ctx, int64_t ns)
{
    __atomic_store_n(&vclock_ns, ns, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 10; i++) {
        aio_poll(ctx, false);
    }
}

typedef struct {
    MetaCache *c;
    int64_t off;
    void *held;
} TimerStep;

static void coroutine_fn touch_co(void *opaque)
{
    TimerStep *s = opaque;
    get_put_ok(s->c, s->off);
}

static void coroutine_fn hold_co(void *opaque)
{
    TimerStep *s = opaque;
    assert_int_equal(meta_cache_get(s->c, s->off, &s->held), 0);
}

static void coroutine_fn dirty_co(void *opaque)
{
    TimerStep *s = opaque;
    co_mutex_lock(&meta_lock);
    dirty_entry(s->c, s->off, 0x77, NULL);
    co_mutex_unlock(&meta_lock);
}

static void coroutine_fn flush_step_co(void *opaque)
{
    TimerStep *s = opaque;
    co_mutex_lock(&meta_lock);
    assert_int_equal(meta_cache_flush(s->c), 0);
    co_mutex_unlock(&meta_lock);
}

static void test_clean_timer(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    __atomic_store_n(&vclock_ns, 0, __ATOMIC_SEQ_CST);
    aio_context_set_clock(ctx, vclock, NULL);
    MetaCacheConfig cfg = { .child = child, .entry_size = ES, .nr_entries = 8,
                            .lock = &meta_lock, .home = ctx, .clean_interval_ns = SEC,
                            .name = "timer" };
    MetaCache *c = meta_cache_new(&cfg, NULL);
    assert_non_null(c);
    TimerStep a = { c, 0, NULL }, b = { c, ES, NULL }, h = { c, 2 * ES, NULL },
              d = { c, 3 * ES, NULL };
    test_run_co(touch_co, &a);
    test_run_co(touch_co, &b);
    test_run_co(hold_co, &h);                   /* referenced across ticks */
    test_run_co(dirty_co, &d);                  /* dirty across ticks */
    tick_to(ctx, SEC / 2);                      /* not yet */
    assert_int_equal(meta_cache_nr_cached(c), 4);
    tick_to(ctx, SEC);                          /* all were used: a second chance */
    assert_int_equal(meta_cache_nr_cached(c), 4);
    test_run_co(touch_co, &a);
    tick_to(ctx, 2 * SEC);                      /* b unused for an interval */
    assert_true(meta_cache_contains(c, 0));
    assert_false(meta_cache_contains(c, ES));
    assert_true(meta_cache_contains(c, 2 * ES));   /* in use */
    assert_true(meta_cache_contains(c, 3 * ES));   /* dirty */
    tick_to(ctx, 3 * SEC);
    assert_false(meta_cache_contains(c, 0));
    assert_true(meta_cache_contains(c, 2 * ES));
    assert_true(meta_cache_contains(c, 3 * ES));
    meta_cache_put(c, h.held);
    test_run_co(flush_step_co, &d);
    tick_to(ctx, 4 * SEC);
    assert_int_equal(meta_cache_nr_cached(c), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 4);   /* nothing loaded twice */
    meta_cache_free(c);
    aio_context_set_clock(ctx, NULL, NULL);
}

/* ---- two threads, every byte checked ---- */

#define STRESS_ITERS 3000
#define STRESS_KEYS 24

typedef struct {
    MetaCache *c;
    unsigned seed;
    int bad, errors;
    atomic_int done;
} Stress;

static void coroutine_fn stress_co(void *opaque)
{
    Stress *s = opaque;
    for (int i = 0; i < STRESS_ITERS; i++) {
        int64_t o1 = (int64_t)(rand_r(&s->seed) % STRESS_KEYS) * ES;
        int64_t o2 = (int64_t)(rand_r(&s->seed) % STRESS_KEYS) * ES;
        void *t1, *t2;
        if (meta_cache_get(s->c, o1, &t1) < 0) {
            s->errors++;
            continue;
        }
        if (meta_cache_get(s->c, o2, &t2) < 0) {
            s->errors++;
        } else {
            s->bad += !holds_pattern(t2, o2);
            meta_cache_put(s->c, t2);
        }
        s->bad += !holds_pattern(t1, o1);
        meta_cache_put(s->c, t1);
    }
    atomic_fetch_add(&s->done, 1);
}

static void *stress_thread(void *opaque)
{
    Stress *s = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    aio_set_current(ctx);
    co_enter(co_create(stress_co, s));
    co_enter(co_create(stress_co, s));
    AIO_WAIT_WHILE(ctx, atomic_load(&s->done) < 2);
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

static void test_two_threads_stress(void **state)
{
    (void)state;
    MetaCache *c = new_cache(10, "stress");
    mem_set_yield(bs, 1u << MEM_OP_READ);    /* loads overlap with lookups */
    Stress s[2] = { { .c = c, .seed = 1 }, { .c = c, .seed = 2 } };
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        pthread_create(&t[i], NULL, stress_thread, &s[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    mem_set_yield(bs, 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(s[i].bad, 0);
        assert_int_equal(s[i].errors, 0);
    }
    /* 24 keys through 10 entries: misses happened, each a single read. */
    assert_true(mem_calls(bs, MEM_OP_READ) > STRESS_KEYS);
    meta_cache_free(c);
}

/* ---- more threads than reference rows ---- */

#define MANY_FILLERS 32           /* every row taken (the main thread has one too) */

typedef struct {
    MetaCache *c;
    bool hold;                    /* keep the reference until release */
    void *table;
    atomic_int *ready;
    atomic_bool *release;
} ManyArg;

static void coroutine_fn many_co(void *opaque)
{
    ManyArg *a = opaque;
    assert_int_equal(meta_cache_get(a->c, 0, &a->table), 0);
    if (!a->hold) {
        meta_cache_put(a->c, a->table);
    }
}

static void *many_thread(void *opaque)
{
    ManyArg *a = opaque;
    AioContext *ctx = aio_context_new(8, NULL);
    aio_set_current(ctx);
    aio_co_run_sync(many_co, a);
    atomic_fetch_add(a->ready, 1);
    while (!atomic_load(a->release)) {
        usleep(1000);
    }
    if (a->hold) {
        meta_cache_put(a->c, a->table);   /* any thread, outside a coroutine */
    }
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

/* Threads beyond the rows count their references in a shared counter: an
 * entry they hold is not dropped either. */
static void test_more_threads_than_rows(void **state)
{
    (void)state;
    MetaCache *c = new_cache(1, "many");
    atomic_int ready = 0;
    atomic_bool release_fillers = false, release_holders = false;
    ManyArg fill[MANY_FILLERS];          /* one each: get writes its table */
    ManyArg hold[2] = { { .c = c, .hold = true, .ready = &ready, .release = &release_holders },
                        { .c = c, .hold = true, .ready = &ready, .release = &release_holders } };
    pthread_t ft[MANY_FILLERS], ht[2];
    for (int i = 0; i < MANY_FILLERS; i++) {
        fill[i] = (ManyArg){ .c = c, .ready = &ready, .release = &release_fillers };
        pthread_create(&ft[i], NULL, many_thread, &fill[i]);
    }
    WAIT_FOR(atomic_load(&ready) == MANY_FILLERS, "the fillers to take every row");
    for (int i = 0; i < 2; i++) {
        pthread_create(&ht[i], NULL, many_thread, &hold[i]);
    }
    WAIT_FOR(atomic_load(&ready) == MANY_FILLERS + 2, "the holders");
    meta_cache_drop_clean(c);
    assert_true(meta_cache_contains(c, 0));          /* held by row-less threads */
    atomic_store(&release_holders, true);
    for (int i = 0; i < 2; i++) {
        pthread_join(ht[i], NULL);
    }
    meta_cache_drop_clean(c);
    assert_false(meta_cache_contains(c, 0));
    atomic_store(&release_fillers, true);
    for (int i = 0; i < MANY_FILLERS; i++) {
        pthread_join(ft[i], NULL);
    }
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    meta_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hit_miss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_miss_loads_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_error_to_all_waiters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_use_not_evicted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_miss_waits_for_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_miss_outwaits_slow_holder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_miss_waits_while_entries_move, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction_writes_back_dirty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction_under_meta_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction_write_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_dependency_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entry_dependency_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction_dependency_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_depends_on_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clean_timer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_threads_stress, setup, teardown),
        cmocka_unit_test_setup_teardown(test_more_threads_than_rows, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
