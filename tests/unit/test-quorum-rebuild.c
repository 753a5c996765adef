/*
 * test-quorum-rebuild.c - children replaced, added and removed on a live
 * quorum over in-memory children, and the rebuild of a new child:
 *   - a replaced child is rebuilt to what the majority holds (5 children,
 *     one of the sources corrupt in a block), with START/DONE events and
 *     the progress counters;
 *   - the race: a guest write to the chunk being copied lands on the new
 *     child and is not overwritten by the copy of the old data, whether it
 *     arrives while the copy reads the others, or was in flight before;
 *   - reads while the rebuild runs never let the new child vote where it
 *     is not rebuilt (a tie it would decide the wrong way);
 *   - a rebuild whose writes fail stops, says so, and the child votes only
 *     below where it stopped (a read straddling that point);
 *   - add and remove: the threshold against the new count, numbering,
 *     sizes, blkverify, and a remove that would leave too few complete
 *     children while another is rebuilt; each refusal names its reason;
 *   - children.N.rebuild=on at open (what a recovered daemon opens).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "test-util.h"

#define MAXC 6
#define SIZE (4 * 1024 * 1024)
#define CHUNK (1024 * 1024)

static BlockDriverState *kids[MAXC];
static int nkids;
static AioContext *ctx;

/* ---- events ---- */

#define MAX_LINES 256
static char *lines[MAX_LINES];
static int nlines;

static void sink(const char *line, void *opaque)
{
    (void)opaque;
    if (nlines < MAX_LINES) {
        lines[nlines++] = strdup(line);
    }
}

static void events_clear(void)
{
    for (int i = 0; i < nlines; i++) {
        free(lines[i]);
    }
    nlines = 0;
}

static int events_matching(const char *a, const char *b)
{
    int n = 0;
    for (int i = 0; i < nlines; i++) {
        n += strstr(lines[i], a) && (!b || strstr(lines[i], b));
    }
    return n;
}

static int setup_each(void **state)
{
    (void)state;
    ctx = test_loop_init();
    bdrv_set_event_sink(sink, NULL);
    events_clear();
    nkids = 0;
    return 0;
}

static int teardown_each(void **state)
{
    (void)state;
    for (int i = 0; i < nkids; i++) {
        bdrv_unref(kids[i]);
        kids[i] = NULL;
    }
    nkids = 0;
    events_clear();
    return 0;
}

static uint8_t *good(void)
{
    static uint8_t *g;
    if (!g) {
        g = malloc(SIZE);
        test_pattern(g, SIZE, 1);
    }
    return g;
}

static BlockDriverState *new_kid(const char *name, bool fill, int64_t size)
{
    MemConfig cfg = { .size = size ? size : SIZE, .open_flags = BDRV_O_UNMAP,
                      .node_name = name };
    BlockDriverState *bs = mem_node_new(&cfg);
    if (fill) {
        mem_write_raw(bs, 0, good(), SIZE);
    }
    return bs;
}

/* n children "qc0".. holding the good pattern. */
static void make_kids(int n)
{
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof(name), "qc%d", i);
        kids[i] = new_kid(name, true, 0);
    }
    nkids = n;
}

/* A spare child (unreferenced by the teardown list until added to it). */
static BlockDriverState *spare(const char *name, int byte)
{
    BlockDriverState *bs = new_kid(name, false, 0);
    mem_fill(bs, 0, SIZE, byte);
    kids[nkids++] = bs;
    return bs;
}

static BlockDriverState *open_quorum_err(int n, const char *extra, Error **errp)
{
    OptDict *o = extra && *extra ? optdict_parse(extra, NULL, NULL) : optdict_new();
    optdict_set(o, "driver", "quorum");
    optdict_set(o, "node-name", "qtop");
    for (int i = 0; i < n; i++) {
        char k[32], v[16];
        snprintf(k, sizeof(k), "children.%d", i);
        snprintf(v, sizeof(v), "qc%d", i);
        optdict_set(o, k, v);
    }
    return bdrv_open(NULL, o, BDRV_O_RDWR | BDRV_O_UNMAP, errp);
}

static BlockDriverState *open_quorum(int n, const char *extra)
{
    Error *err = NULL;
    BlockDriverState *bs = open_quorum_err(n, extra, &err);
    if (!bs) {
        fail_msg("open quorum: %s", error_get_pretty(err));
    }
    return bs;
}

static int64_t counter(BlockDriverState *bs, const char *key)
{
    ImageSpecificInfo info = { 0 };
    bdrv_get_counters(bs, &info);
    int64_t v = -1;
    for (int i = 0; i < info.n; i++) {
        if (!strcmp(info.entries[i].key, key)) {
            v = strtoll(info.entries[i].value, NULL, 0);
        }
    }
    image_info_free(&info);
    return v;
}

static int64_t child_counter(BlockDriverState *bs, int i, const char *what)
{
    char key[64];
    snprintf(key, sizeof(key), "children.%d.%s", i, what);
    return counter(bs, key);
}

/* Run the loop (the rebuild job lives there) until cond, for at most 10 s. */
#define POLL_UNTIL(cond, what)                                         \
    do {                                                               \
        int n_ = 0;                                                    \
        while (!(cond)) {                                              \
            if (!aio_poll(ctx, false)) {                               \
                usleep(200);                                           \
            }                                                          \
            if (++n_ > 50000) {                                        \
                fail_msg("timed out waiting for %s", what);            \
            }                                                          \
        }                                                              \
    } while (0)

static void wait_rebuilt(BlockDriverState *bs, int i)
{
    POLL_UNTIL(child_counter(bs, i, "rebuild-running") == 0, "the rebuild to end");
}

static void change_ok(BlockDriverState *q, BdrvChildChange op, int index, BlockDriverState *nb,
                      int want)
{
    Error *err = NULL;
    int ret = bdrv_change_child_bs(q, op, index, nb, &err);
    if (ret < 0) {
        fail_msg("change refused: %s", error_get_pretty(err));
    }
    assert_int_equal(ret, want);
}

static void change_fails(BlockDriverState *q, BdrvChildChange op, int index,
                         BlockDriverState *nb, const char *want)
{
    Error *err = NULL;
    int ret = bdrv_change_child_bs(q, op, index, nb, &err);
    assert_true(ret < 0);
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), want)) {
        fail_msg("error '%s' does not say '%s'", error_get_pretty(err), want);
    }
    error_free(err);
}

static void assert_holds(BlockDriverState *bs, int64_t off, const uint8_t *want, int64_t len)
{
    uint8_t *b = malloc(len);
    mem_read_raw(bs, off, b, len);
    if (memcmp(b, want, len)) {
        int64_t k = 0;
        while (b[k] == want[k]) {
            k++;
        }
        fail_msg("%s differs at byte %lld: 0x%02x, want 0x%02x", bdrv_get_node_name(bs),
                 (long long)(off + k), b[k], want[k]);
    }
    free(b);
}

/* ---- a guest write as a coroutine ---- */

typedef struct Write {
    BdrvChild *c;
    int64_t offset;
    uint8_t buf[4096];
    bool done;
    int ret;
} Write;

static void coroutine_fn write_entry(void *opaque)
{
    Write *w = opaque;
    IOVector q;
    iov_init_buf(&q, w->buf, sizeof(w->buf));
    w->ret = bdrv_co_pwritev(w->c, w->offset, sizeof(w->buf), &q, 0);
    w->done = true;
}

static void write_start(Write *w)
{
    co_enter(co_create(write_entry, w));
}

/* ---- replace ---- */

/* 5 children, threshold 3; child 4 is wrong in a block of chunk 2: the
 * rebuild of child 1 copies what the majority holds there, not child 4's. */
static void test_replace_rebuilds_majority(void **state)
{
    (void)state;
    make_kids(5);
    BlockDriverState *q = open_quorum(5, "vote-threshold=3");
    mem_fill(kids[4], 2 * CHUNK + 4096, 512, 0x44);
    BlockDriverState *nb = spare("new1", 0xee);
    change_ok(q, BDRV_CHILD_REPLACE, 1, nb, 1);
    assert_int_equal(bdrv_find_child(q, "children.1")->bs, nb);
    assert_int_equal(bdrv_incomplete_children(q), 1u << 1);
    wait_rebuilt(q, 1);
    assert_int_equal(bdrv_incomplete_children(q), 0);
    assert_holds(nb, 0, good(), SIZE);
    assert_int_equal(child_counter(q, 1, "rebuild-done"), SIZE);
    assert_int_equal(child_counter(q, 1, "rebuild-total"), SIZE);
    assert_int_equal(child_counter(q, 1, "rebuild-eta-s"), 0);
    assert_int_equal(child_counter(q, 1, "rebuild-error"), 0);
    assert_int_equal(events_matching("QUORUM_REBUILD_START", "\"child\":\"children.1\""), 1);
    assert_int_equal(events_matching("QUORUM_REBUILD_DONE", "\"node\":\"new1\""), 1);
    /* The old child is out of the graph; its counters started over. */
    assert_int_equal(child_counter(q, 1, "reads"), 0);
    bdrv_unref(q);
}

/* The copy of chunk 0 has read the others (the read of child 0 is held
 * after it filled the buffer) when a guest write to that chunk arrives.
 * Without the window the write lands on the new child first and the copy
 * of the old data then overwrites it. */
static void test_write_during_copy_not_overwritten(void **state)
{
    (void)state;
    make_kids(3);
    BlockDriverState *q = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(q);
    BlockDriverState *nb = spare("new1", 0);
    mem_gate_close(kids[0], 1u << MEM_OP_READ);
    change_ok(q, BDRV_CHILD_REPLACE, 1, nb, 1);
    POLL_UNTIL(mem_gate_parked(kids[0]) == 1, "the copy's read of child 0");

    Write w = { .c = c, .offset = 8192 };
    test_pattern(w.buf, sizeof(w.buf), 7);
    write_start(&w);
    for (int i = 0; i < 100; i++) {
        aio_poll(ctx, false);
    }
    mem_gate_open(kids[0]);
    POLL_UNTIL(w.done, "the guest write");
    assert_int_equal(w.ret, 0);
    wait_rebuilt(q, 1);
    for (int i = 0; i < 3; i++) {
        assert_holds(bdrv_find_child(q, i == 1 ? "children.1" : i ? "children.2" : "children.0")
                         ->bs, 8192, w.buf, sizeof(w.buf));
    }
    assert_holds(nb, 0, good(), 8192);
    assert_holds(nb, 8192 + 4096, good() + 8192 + 4096, SIZE - 8192 - 4096);
    uint8_t r[4096];
    assert_int_equal(bdrv_pread(c, 8192, sizeof(r), r, 0), 0);
    assert_memory_equal(r, w.buf, sizeof(r));
    test_child_free(c);
    bdrv_unref(q);
}

/* A guest write already in flight (held on child 2 before it stored
 * anything) when the copy of its chunk starts: the copy waits for it, so
 * it reads the new data. */
static void test_write_in_flight_before_copy(void **state)
{
    (void)state;
    make_kids(3);
    BlockDriverState *q = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(q);
    BlockDriverState *nb = spare("new1", 0);
    /* Child 2 stalls so that the job's first read of it is not over before
     * the write below has started. */
    mem_set_yield(kids[2], 1u << MEM_OP_READ);
    change_ok(q, BDRV_CHILD_REPLACE, 1, nb, 1);
    /* The job is scheduled, not run yet: the write registers first. */
    mem_gate_close_before(kids[2], 4096, 4096);
    Write w = { .c = c, .offset = 4096 };
    test_pattern(w.buf, sizeof(w.buf), 9);
    write_start(&w);
    POLL_UNTIL(mem_gate_parked(kids[2]) == 1, "the write to be held on child 2");
    for (int i = 0; i < 200; i++) {
        aio_poll(ctx, false);
    }
    assert_int_equal(child_counter(q, 1, "rebuild-done"), 0);
    mem_gate_open(kids[2]);
    POLL_UNTIL(w.done, "the guest write");
    assert_int_equal(w.ret, 0);
    wait_rebuilt(q, 1);
    assert_int_equal(child_counter(q, 1, "rebuild-error"), 0);
    assert_holds(nb, 4096, w.buf, sizeof(w.buf));
    assert_holds(nb, 8192, good() + 8192, SIZE - 8192);
    test_child_free(c);
    bdrv_unref(q);
}

/*
 * 4 children, threshold 2.  Child 0 is wrong (0xee) in two blocks; the new
 * child 1 is all 0xee.  Where child 1 is not rebuilt, letting it vote would
 * make a 2:2 tie that the lowest child (0) wins: wrong data.  The job is
 * held at its first write, so nothing is rebuilt while the guest reads.
 */
static void test_reads_skip_unrebuilt(void **state)
{
    (void)state;
    make_kids(4);
    BlockDriverState *q = open_quorum(4, "vote-threshold=2");
    BdrvChild *c = test_child_new(q);
    mem_fill(kids[0], 4096, 4096, 0xee);
    mem_fill(kids[0], 3 * CHUNK + 8192, 4096, 0xee);
    BlockDriverState *nb = spare("new1", 0xee);
    mem_gate_close(nb, 1u << MEM_OP_WRITE);
    change_ok(q, BDRV_CHILD_REPLACE, 1, nb, 1);
    POLL_UNTIL(mem_gate_parked(nb) == 1, "the job's first write");
    uint8_t r[8192];
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, good(), sizeof(r));
    assert_int_equal(bdrv_pread(c, 3 * CHUNK + 8192, 4096, r, 0), 0);
    assert_memory_equal(r, good() + 3 * CHUNK + 8192, 4096);
    /* fifo skips it too: a read-pattern change is not possible live, so
     * only the counters say child 1 was not asked. */
    assert_int_equal(child_counter(q, 1, "reads"), 0);
    mem_gate_open(nb);
    wait_rebuilt(q, 1);
    assert_holds(nb, 0, good(), SIZE);
    /* Rebuilt: it votes again (and reads count on it). */
    assert_int_equal(bdrv_pread(c, 0, 4096, r, 0), 0);
    assert_int_equal(child_counter(q, 1, "reads"), 1);
    test_child_free(c);
    bdrv_unref(q);
}

/* The new child's writes fail from chunk 2 on: the rebuild stops there
 * and says so; the child votes below 2 MiB only (a read straddling it). */
static void test_rebuild_fails(void **state)
{
    (void)state;
    make_kids(4);
    BlockDriverState *q = open_quorum(4, "vote-threshold=2");
    BdrvChild *c = test_child_new(q);
    BlockDriverState *nb = spare("new1", 0);
    mem_inject_error(nb, MEM_OP_WRITE, 2 * CHUNK, CHUNK, -EIO, -1);
    mem_inject_error(nb, MEM_OP_ZEROES, 2 * CHUNK, CHUNK, -EIO, -1);
    change_ok(q, BDRV_CHILD_REPLACE, 1, nb, 1);
    wait_rebuilt(q, 1);
    assert_int_equal(child_counter(q, 1, "rebuild-done"), 2 * CHUNK);
    assert_int_equal(child_counter(q, 1, "rebuild-error"), EIO);
    assert_int_equal(bdrv_incomplete_children(q), 1u << 1);
    for (int i = 0; i < nlines; i++) {
        print_message("event: %s\n", lines[i]);
    }
    assert_int_equal(events_matching("QUORUM_REBUILD_FAILED", "writing the new child failed"),
                     1);
    assert_int_equal(events_matching("QUORUM_REBUILD_DONE", NULL), 0);
    /* Child 0 reads zeros around 2 MiB, as the un-rebuilt part of child 1
     * does: below 2 MiB child 1 is rebuilt and outvotes child 0; above it
     * a vote of child 1 would tie 2:2 and child 0's zeros would win. */
    mem_fill(kids[0], 2 * CHUNK - 4096, 8192, 0);
    uint8_t r[8192];
    assert_int_equal(bdrv_pread(c, 2 * CHUNK - 4096, sizeof(r), r, 0), 0);
    assert_memory_equal(r, good() + 2 * CHUNK - 4096, sizeof(r));
    /* Writes still reach it; the job does not come back by itself. */
    assert_int_equal(bdrv_pwrite(c, 0, 4096, good(), 0), 0);
    assert_int_equal(child_counter(q, 1, "rebuild-running"), 0);
    test_child_free(c);
    bdrv_unref(q);
}

/* ---- add and remove ---- */

static void test_add_remove(void **state)
{
    (void)state;
    make_kids(3);
    BlockDriverState *q = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(q);
    BlockDriverState *k1 = kids[1], *k2 = kids[2];

    change_fails(q, BDRV_CHILD_REMOVE, 3, NULL, "has no children.3 (its children are 0..2)");
    change_ok(q, BDRV_CHILD_REMOVE, 0, NULL, 0);
    assert_int_equal(bdrv_find_child(q, "children.0")->bs, k1);
    assert_int_equal(bdrv_find_child(q, "children.1")->bs, k2);
    assert_null(bdrv_find_child(q, "children.2"));
    change_fails(q, BDRV_CHILD_REMOVE, 1, NULL,
                 "would leave 1 children, fewer than vote-threshold=2");
    uint8_t r[4096];
    assert_int_equal(bdrv_pread(c, 4096, sizeof(r), r, 0), 0);
    assert_memory_equal(r, good() + 4096, sizeof(r));
    assert_int_equal(mem_calls(kids[0], MEM_OP_READ), 0);
    /* With 2 of threshold 2 a replace would leave 1 complete child. */
    BlockDriverState *x = spare("x", 0);
    change_fails(q, BDRV_CHILD_REPLACE, 0, x, "would leave 1 complete children, fewer than "
                 "vote-threshold=2");

    change_fails(q, BDRV_CHILD_ADD, 5, x, "a new one is children.2, not children.5");
    BlockDriverState *small = new_kid("small", false, SIZE / 2);
    kids[nkids++] = small;
    change_fails(q, BDRV_CHILD_ADD, -1, small, "all children must have the same size");
    change_ok(q, BDRV_CHILD_ADD, -1, x, 2);
    assert_int_equal(bdrv_find_child(q, "children.2")->bs, x);
    wait_rebuilt(q, 2);
    assert_holds(x, 0, good(), SIZE);
    assert_int_equal(events_matching("QUORUM_REBUILD_DONE", "\"child\":\"children.2\""), 1);
    /* Three again: one may go. */
    change_ok(q, BDRV_CHILD_REMOVE, 2, NULL, 2);
    test_child_free(c);
    bdrv_unref(q);
}

/* While child 1 is rebuilt, removing child 0 would leave child 2 the only
 * complete one: refused.  Removing the child being rebuilt is fine. */
static void test_remove_during_rebuild(void **state)
{
    (void)state;
    make_kids(3);
    BlockDriverState *q = open_quorum(3, "vote-threshold=2");
    BlockDriverState *nb = spare("new1", 0);
    mem_gate_close(nb, 1u << MEM_OP_WRITE);
    change_ok(q, BDRV_CHILD_REPLACE, 1, nb, 1);
    POLL_UNTIL(mem_gate_parked(nb) == 1, "the job's first write");
    change_fails(q, BDRV_CHILD_REMOVE, 0, NULL, "would leave 1 complete children (the others "
                 "are not rebuilt yet)");
    BlockDriverState *y = spare("y", 0);
    change_fails(q, BDRV_CHILD_REPLACE, 2, y, "would leave 1 complete children");
    mem_gate_open(nb);
    /* The job finishes its chunk first (remove waits for it), then stops. */
    change_ok(q, BDRV_CHILD_REMOVE, 1, NULL, 1);
    assert_int_equal(bdrv_incomplete_children(q), 0);
    POLL_UNTIL(child_counter(q, 1, "rebuild-running") <= 0, "the job to go");
    assert_int_equal(bdrv_find_child(q, "children.1")->bs, kids[2]);
    bdrv_unref(q);
}

static void test_blkverify_and_readonly_refused(void **state)
{
    (void)state;
    make_kids(2);
    BlockDriverState *q = open_quorum(2, "vote-threshold=2,blkverify=on");
    BlockDriverState *x = spare("x", 0);
    change_fails(q, BDRV_CHILD_ADD, -1, x, "blkverify=on compares exactly 2 children");
    bdrv_unref(q);
    OptDict *o = optdict_parse("driver=quorum,vote-threshold=1,children.0=qc0", NULL, NULL);
    Error *err = NULL;
    q = bdrv_open(NULL, o, 0, &err);
    assert_non_null(q);
    change_fails(q, BDRV_CHILD_REMOVE, 0, NULL, "is read-only");
    bdrv_unref(q);
    /* A node without numbered children. */
    change_fails(kids[0], BDRV_CHILD_ADD, -1, x, "cannot change its children while in use");
}

/* children.N.rebuild=on (a recovered daemon's graph): the child votes
 * nowhere until rebuilt from 0, and is rebuilt. */
static void test_rebuild_marked_at_open(void **state)
{
    (void)state;
    make_kids(3);
    mem_fill(kids[2], 0, SIZE, 0x5a);   /* half-rebuilt garbage */
    BlockDriverState *q = open_quorum(3, "vote-threshold=2,children.2.rebuild=on");
    assert_int_equal(bdrv_incomplete_children(q), 1u << 2);
    assert_int_equal(child_counter(q, 2, "rebuild-done"), 0);
    wait_rebuilt(q, 2);
    assert_holds(kids[2], 0, good(), SIZE);
    assert_int_equal(bdrv_incomplete_children(q), 0);
    bdrv_unref(q);
    /* A read-only open cannot rebuild: the child stays out of the vote. */
    mem_fill(kids[2], 0, 4096, 0x5a);
    mem_log_clear(kids[2]);
    OptDict *o = optdict_parse("driver=quorum,vote-threshold=2,children.0=qc0,children.1=qc1,"
                               "children.2=qc2,children.2.rebuild=on", NULL, NULL);
    Error *err = NULL;
    q = bdrv_open(NULL, o, 0, &err);
    assert_non_null(q);
    for (int i = 0; i < 100; i++) {
        aio_poll(ctx, false);
    }
    assert_int_equal(bdrv_incomplete_children(q), 1u << 2);
    assert_int_equal(mem_calls(kids[2], MEM_OP_WRITE), 0);
    bdrv_unref(q);
}

/* argv[1]: run only the tests matching it (cmocka's filter). */
int main(int argc, char **argv)
{
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replace_rebuilds_majority, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_write_during_copy_not_overwritten, setup_each,
                                        teardown_each),
        cmocka_unit_test_setup_teardown(test_write_in_flight_before_copy, setup_each,
                                        teardown_each),
        cmocka_unit_test_setup_teardown(test_reads_skip_unrebuilt, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_rebuild_fails, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_add_remove, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_remove_during_rebuild, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_blkverify_and_readonly_refused, setup_each,
                                        teardown_each),
        cmocka_unit_test_setup_teardown(test_rebuild_marked_at_open, setup_each, teardown_each),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
