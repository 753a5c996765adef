/*
 * test-block-threads.c - a node's home context and the per-thread
 * attach/detach callbacks over a whole graph.
 *
 * A small driver ("threadlog") keeps per-thread state the way a real one
 * would (the set of contexts attached to the node) and logs every callback
 * with its node, context and thread, so the tests can check that each node
 * is attached exactly once per thread, on that thread, in graph order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>
#include "aio.h"
#include "block-backend.h"
#include "test-util.h"

#define MAX_CTX 8
#define MAX_LOG 128

typedef struct {
    AioContext *attached[MAX_CTX];   /* the per-thread state: who is attached */
    int n_attached;
} ThreadLogState;

typedef struct {
    bool attach;
    BlockDriverState *bs;
    AioContext *ctx;
    pthread_t thread;
} LogEntry;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static LogEntry log_entries[MAX_LOG];
static int log_n;

static void log_event(bool attach, BlockDriverState *bs, AioContext *ctx)
{
    pthread_mutex_lock(&log_lock);
    assert_true(log_n < MAX_LOG);
    log_entries[log_n++] = (LogEntry){ attach, bs, ctx, pthread_self() };
    pthread_mutex_unlock(&log_lock);
}

static void tl_attach(BlockDriverState *bs, AioContext *ctx)
{
    ThreadLogState *s = bs->opaque;
    /* The callback runs on the attaching thread, with its context. */
    assert_ptr_equal(aio_current(), ctx);
    pthread_mutex_lock(&log_lock);
    for (int i = 0; i < s->n_attached; i++) {
        assert_ptr_not_equal(s->attached[i], ctx);   /* never twice */
    }
    assert_true(s->n_attached < MAX_CTX);
    s->attached[s->n_attached++] = ctx;
    pthread_mutex_unlock(&log_lock);
    log_event(true, bs, ctx);
}

static void tl_detach(BlockDriverState *bs, AioContext *ctx)
{
    ThreadLogState *s = bs->opaque;
    assert_ptr_equal(aio_current(), ctx);
    bool found = false;
    pthread_mutex_lock(&log_lock);
    for (int i = 0; i < s->n_attached; i++) {
        if (s->attached[i] == ctx) {
            s->attached[i] = s->attached[--s->n_attached];
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&log_lock);
    assert_true(found);
    log_event(false, bs, ctx);
}

static int64_t tl_getlength(BlockDriverState *bs)
{
    (void)bs;
    return 1 << 20;
}

/* Node c below is the file of both a and b, which QEMU's rules would not
 * let both write: these nodes share everything, the graph is about threads. */
static void tl_child_perm(BlockDriverState *bs, BdrvChild *c, BdrvChildRole role, unsigned perm,
                          unsigned shared, unsigned *nperm, unsigned *nshared)
{
    bdrv_default_child_perm(bs, c, role, perm, shared, nperm, nshared);
    *nshared = BLK_PERM_ALL;
}

static const BlockDriver bdrv_threadlog = {
    .child_perm = tl_child_perm,
    .format_name = "threadlog",
    .instance_size = sizeof(ThreadLogState),
    .is_format = true,
    .getlength = tl_getlength,
    .attach_thread = tl_attach,
    .detach_thread = tl_detach,
};

static int setup(void **state)
{
    (void)state;
    bdrv_register(&bdrv_threadlog);
    test_loop_init();
    return 0;
}

static BlockDriverState *tl_node(const char *name)
{
    Error *err = NULL;
    BlockDriverState *bs = bdrv_new_open_driver(&bdrv_threadlog, name, BDRV_O_RDWR, NULL, &err);
    if (!bs) {
        fail_msg("%s", error_get_pretty(err));
    }
    return bs;
}

static void add_child(BlockDriverState *parent, BlockDriverState *child, const char *name,
                      BdrvChildRole role)
{
    bdrv_ref(child);
    assert_non_null(bdrv_attach_child(parent, child, name, role, NULL));
}

/*
 * top --file--> a --file--> c --file--> m (mem: no callbacks)
 *     \-backing-> b --file--/
 * c is shared by a and b: it must still be attached once per thread.
 */
typedef struct {
    BlockDriverState *top, *a, *b, *c, *m;
} Graph;

static Graph graph_new(void)
{
    Graph g;
    g.top = tl_node("top");
    g.a = tl_node("a");
    g.b = tl_node("b");
    g.c = tl_node("c");
    g.m = mem_node_new(NULL);
    add_child(g.c, g.m, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY);
    add_child(g.a, g.c, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY);
    add_child(g.b, g.c, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY);
    add_child(g.top, g.a, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY);
    add_child(g.top, g.b, "backing", BDRV_CHILD_COW);
    /* The graph holds them now; top is the caller's. */
    bdrv_unref(g.a);
    bdrv_unref(g.b);
    bdrv_unref(g.c);
    bdrv_unref(g.m);
    return g;
}

/* Index in the log of thread th's `attach` event for bs, -1 if none;
 * fails the test if there is more than one. */
static int find_event(pthread_t th, bool attach, BlockDriverState *bs)
{
    int at = -1;
    for (int i = 0; i < log_n; i++) {
        LogEntry *e = &log_entries[i];
        if (pthread_equal(e->thread, th) && e->attach == attach && e->bs == bs) {
            assert_int_equal(at, -1);
            at = i;
        }
    }
    return at;
}

/* ---- home context ---- */

static void test_home_is_opening_thread_context(void **state)
{
    (void)state;
    Graph g = graph_new();
    AioContext *ctx = aio_current();
    assert_ptr_equal(bdrv_get_home_context(g.top), ctx);
    assert_ptr_equal(bdrv_get_home_context(g.c), ctx);
    assert_ptr_equal(bdrv_get_home_context(g.m), ctx);
    bdrv_unref(g.top);
}

typedef struct {
    BlockDriverState *bs;
    AioContext *ctx;
} OpenArg;

static void *open_on_thread(void *opaque)
{
    OpenArg *a = opaque;
    a->ctx = aio_context_new(16, NULL);
    aio_set_current(a->ctx);
    a->bs = tl_node(NULL);
    return NULL;
}

static void test_home_of_node_opened_elsewhere(void **state)
{
    (void)state;
    OpenArg a = { 0 };
    pthread_t th;
    pthread_create(&th, NULL, open_on_thread, &a);
    pthread_join(th, NULL);
    assert_non_null(a.bs);
    assert_ptr_equal(bdrv_get_home_context(a.bs), a.ctx);
    assert_ptr_not_equal(bdrv_get_home_context(a.bs), aio_current());
    /* Closing from here is fine: close needs no ring of its own. */
    bdrv_unref(a.bs);
    aio_context_free(a.ctx);
}

/* Background work of a node, started from a request thread, runs on the
 * home context's thread. */
typedef struct {
    BlockDriverState *bs;
    pthread_t ran_on;
    bool done;
} Bg;

static pthread_t __attribute__((noinline)) current_thread(void)
{
    pthread_t t = pthread_self();
    __asm__ volatile("" : "+r"(t));
    return t;
}

static void coroutine_fn bg_work(void *opaque)
{
    Bg *b = opaque;
    b->ran_on = current_thread();
    __atomic_store_n(&b->done, true, __ATOMIC_RELEASE);
}

static void *request_thread(void *opaque)
{
    Bg *b = opaque;
    AioContext *ctx = aio_context_new(16, NULL);
    aio_set_current(ctx);
    aio_co_spawn(bdrv_get_home_context(b->bs), bg_work, b);
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

static void test_background_work_runs_at_home(void **state)
{
    (void)state;
    Bg b = { .bs = tl_node(NULL) };
    pthread_t th;
    pthread_create(&th, NULL, request_thread, &b);
    pthread_join(th, NULL);
    AioContext *home = bdrv_get_home_context(b.bs);
    while (!__atomic_load_n(&b.done, __ATOMIC_ACQUIRE)) {
        aio_poll(home, true);
    }
    assert_true(pthread_equal(b.ran_on, pthread_self()));
    bdrv_unref(b.bs);
}

/* ---- attach / detach ---- */

#define NTHREADS 2

typedef struct {
    BlockBackend *blk;
    Graph *g;
    AioContext *ctx;
    pthread_t self;
    pthread_barrier_t *attached, *checked;
} AttachArg;

static void *attach_thread_fn(void *opaque)
{
    AttachArg *a = opaque;
    a->ctx = aio_context_new(16, NULL);
    aio_set_current(a->ctx);
    a->self = pthread_self();
    blk_attach_thread(a->blk);
    pthread_barrier_wait(a->attached);
    pthread_barrier_wait(a->checked);   /* main looks at the state meanwhile */
    blk_detach_thread(a->blk);
    aio_set_current(NULL);
    return NULL;
}

static void test_attach_detach_every_node_per_thread(void **state)
{
    (void)state;
    Graph g = graph_new();
    BlockBackend *blk = blk_new_with_bs(g.top, NULL);
    assert_non_null(blk);
    log_n = 0;
    pthread_barrier_t attached, checked;
    pthread_barrier_init(&attached, NULL, NTHREADS + 1);
    pthread_barrier_init(&checked, NULL, NTHREADS + 1);
    AttachArg args[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (AttachArg){ blk, &g, NULL, 0, &attached, &checked };
        pthread_create(&th[i], NULL, attach_thread_fn, &args[i]);
    }
    pthread_barrier_wait(&attached);
    /* Every threadlog node has both threads' state, the shared c included. */
    BlockDriverState *tl[] = { g.top, g.a, g.b, g.c };
    for (size_t n = 0; n < ARRAY_SIZE(tl); n++) {
        assert_int_equal(((ThreadLogState *)tl[n]->opaque)->n_attached, NTHREADS);
    }
    assert_int_equal(log_n, NTHREADS * 4);
    pthread_barrier_wait(&checked);
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
    }
    assert_int_equal(log_n, 2 * NTHREADS * 4);
    for (size_t n = 0; n < ARRAY_SIZE(tl); n++) {
        assert_int_equal(((ThreadLogState *)tl[n]->opaque)->n_attached, 0);
    }

    for (int i = 0; i < NTHREADS; i++) {
        pthread_t t = args[i].self;
        int at_top = find_event(t, true, g.top), at_a = find_event(t, true, g.a);
        int at_b = find_event(t, true, g.b), at_c = find_event(t, true, g.c);
        int dt_top = find_event(t, false, g.top), dt_a = find_event(t, false, g.a);
        int dt_b = find_event(t, false, g.b), dt_c = find_event(t, false, g.c);
        int all[] = { at_top, at_a, at_b, at_c, dt_top, dt_a, dt_b, dt_c };
        for (size_t k = 0; k < ARRAY_SIZE(all); k++) {
            assert_true(all[k] >= 0);
            assert_ptr_equal(log_entries[all[k]].ctx, args[i].ctx);
        }
        /* Children before parents on attach ... */
        assert_true(at_c < at_a && at_c < at_b);
        assert_true(at_a < at_top && at_b < at_top);
        /* ... parents before children on detach. */
        assert_true(dt_top < dt_a && dt_top < dt_b);
        assert_true(dt_a < dt_c && dt_b < dt_c);
        /* And all attaches before the first detach (the barrier). */
        assert_true(at_top < dt_top);
    }
    for (int i = 0; i < NTHREADS; i++) {
        aio_context_free(args[i].ctx);
    }
    pthread_barrier_destroy(&attached);
    pthread_barrier_destroy(&checked);
    blk_unref(blk);
    bdrv_unref(g.top);
}

/* The home thread is covered by open/close: attaching it is a no-op. */
static void test_home_thread_is_not_attached(void **state)
{
    (void)state;
    Graph g = graph_new();
    BlockBackend *blk = blk_new_with_bs(g.top, NULL);
    log_n = 0;
    blk_attach_thread(blk);
    blk_detach_thread(blk);
    assert_int_equal(log_n, 0);
    blk_unref(blk);
    bdrv_unref(g.top);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_home_is_opening_thread_context),
        cmocka_unit_test(test_home_of_node_opened_elsewhere),
        cmocka_unit_test(test_background_work_runs_at_home),
        cmocka_unit_test(test_attach_detach_every_node_per_thread),
        cmocka_unit_test(test_home_thread_is_not_attached),
    };
    return cmocka_run_group_tests_name("block-threads", tests, setup, NULL);
}
