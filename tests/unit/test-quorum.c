/*
 * test-quorum.c - the quorum driver over in-memory children: reads that
 * vote per block (agreement, corruption, errors, 3 and 5 children), fifo
 * fallback, rewrite-corrupted checked by reading each child directly,
 * blkverify mismatches, threshold edges, writes/zeroes/discards/flushes with
 * k failing children around the threshold, block status, every option
 * error with its own message, mismatched sizes, the events (through a sink)
 * and the per-child counters `img info` shows.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "test-util.h"

#define MAXC 5
#define SIZE (256 * 1024)

static BlockDriverState *kids[MAXC];
static int nkids;

/* ---- events ---- */

#define MAX_LINES 128
static char *lines[MAX_LINES];
static int nlines;
static int64_t sink_second;
static int sink_in_second;

static int64_t now_second(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static void sink(const char *line, void *opaque)
{
    (void)opaque;
    int64_t sec = now_second();
    if (sec != sink_second) {
        sink_second = sec;
        sink_in_second = 0;
    }
    sink_in_second++;
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

/* Events are cut at BDRV_EVENTS_PER_SEC per type and second: a test that
 * asserts on k events starts in a fresh second if this one has no room. */
static void events_reserve(int k)
{
    if (sink_second == now_second() && sink_in_second + k > BDRV_EVENTS_PER_SEC) {
        int64_t s = now_second();
        while (now_second() == s) {
            usleep(1000);
        }
    }
    events_clear();
}

/* The number of event lines that contain every one of the strings. */
static int events_matching(const char *a, const char *b, const char *c, const char *d)
{
    int n = 0;
    for (int i = 0; i < nlines; i++) {
        if (strstr(lines[i], a) && (!b || strstr(lines[i], b)) && (!c || strstr(lines[i], c)) &&
            (!d || strstr(lines[i], d))) {
            n++;
        }
    }
    return n;
}

static void dump_events(void)
{
    for (int i = 0; i < nlines; i++) {
        print_message("event: %s\n", lines[i]);
    }
}

/* ---- graphs ---- */

static int setup_each(void **state)
{
    (void)state;
    test_loop_init();
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

/* n children "qc0".. of size SIZE, all holding pattern 1. */
static void make_kids(int n, const MemConfig *base)
{
    uint8_t *buf = malloc(SIZE);
    test_pattern(buf, SIZE, 1);
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof(name), "qc%d", i);
        MemConfig cfg = base ? *base : (MemConfig){ 0 };
        if (!cfg.size) {
            cfg.size = SIZE;
        }
        cfg.open_flags |= BDRV_O_UNMAP;     /* discards reach them */
        cfg.node_name = name;
        kids[i] = mem_node_new(&cfg);
        mem_write_raw(kids[i], 0, buf, MIN((int64_t)SIZE, cfg.size));
    }
    nkids = n;
    free(buf);
}

/* A quorum over the first n kids with extra options ("k=v,..."), or NULL
 * with the error in *errp. */
static BlockDriverState *open_quorum_flags(int n, const char *extra, int flags, Error **errp)
{
    OptDict *o = extra && *extra ? optdict_parse(extra, NULL, NULL) : optdict_new();
    assert_non_null(o);
    optdict_set(o, "driver", "quorum");
    optdict_set(o, "node-name", "qtop");
    for (int i = 0; i < n; i++) {
        char k[32], v[16];
        snprintf(k, sizeof(k), "children.%d", i);
        snprintf(v, sizeof(v), "qc%d", i);
        optdict_set(o, k, v);
    }
    return bdrv_open(NULL, o, flags, errp);
}

static BlockDriverState *open_quorum(int n, const char *extra)
{
    Error *err = NULL;
    BlockDriverState *bs = open_quorum_flags(n, extra, BDRV_O_RDWR | BDRV_O_UNMAP, &err);
    if (!bs) {
        fail_msg("open quorum: %s", error_get_pretty(err));
    }
    return bs;
}

/* Open must fail with a message containing want. */
static void open_fails(int n, const char *extra, int flags, const char *want)
{
    Error *err = NULL;
    BlockDriverState *bs = open_quorum_flags(n, extra, flags, &err);
    assert_null(bs);
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), want)) {
        fail_msg("open error '%s' does not say '%s'", error_get_pretty(err), want);
    }
    error_free(err);
}

static void good_data(void *buf, int64_t offset, int64_t len)
{
    uint8_t *all = malloc(SIZE);
    test_pattern(all, SIZE, 1);
    memcpy(buf, all + offset, len);
    free(all);
}

/* Corrupt [offset, offset + len) of kid i on "disk". */
static void corrupt(int i, int64_t offset, int64_t len, int byte)
{
    mem_fill(kids[i], offset, len, byte);
}

static int64_t info_int(BlockDriverState *bs, const char *key)
{
    /* Settings from the info, run-time counters from the counters. */
    ImageSpecificInfo info = { 0 };
    bdrv_get_specific_info(bs, &info);
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

/* ---- requests from a coroutine ---- */

typedef struct CoReq {
    BdrvChild *c;
    int64_t offset;
    IOVector *q;
    int ret;
} CoReq;

static void coroutine_fn co_readv_entry(void *opaque)
{
    CoReq *r = opaque;
    r->ret = bdrv_co_preadv(r->c, r->offset, (int64_t)r->q->size, r->q, 0);
}

static int co_readv(BdrvChild *c, int64_t offset, IOVector *q)
{
    CoReq r = { c, offset, q, -1 };
    test_run_co(co_readv_entry, &r);
    return r.ret;
}

typedef struct DiscardReq {
    BdrvChild *c;
    int64_t offset, bytes;
    int ret;
} DiscardReq;

static void coroutine_fn discard_entry(void *opaque)
{
    DiscardReq *r = opaque;
    r->ret = bdrv_co_pdiscard(r->c, r->offset, r->bytes);
}

static int co_discard(BdrvChild *c, int64_t offset, int64_t bytes)
{
    DiscardReq r = { c, offset, bytes, -1 };
    test_run_co(discard_entry, &r);
    return r.ret;
}

typedef struct StatusReq {
    BlockDriverState *bs;
    int64_t offset, bytes, pnum;
    int ret;
} StatusReq;

static void coroutine_fn status_entry(void *opaque)
{
    StatusReq *r = opaque;
    int64_t map;
    BlockDriverState *file;
    r->ret = bdrv_co_block_status(r->bs, r->offset, r->bytes, &r->pnum, &map, &file);
}

/* ---- reads ---- */

static void test_read_agree(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[8192], want[8192];
    good_data(want, 4096, sizeof(want));
    assert_int_equal(bdrv_pread(c, 4096, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mem_calls(kids[i], MEM_OP_READ), 1);
        char key[32];
        snprintf(key, sizeof(key), "children.%d.reads", i);
        assert_int_equal(info_int(bs, key), 1);
    }
    assert_int_equal(nlines, 0);
    test_child_free(c);
    bdrv_unref(bs);
}

/* Children 1 and 2 are wrong in different blocks of one request: QEMU's
 * whole-request vote fails it, the per-block vote returns the majority and
 * reports each child's bad range. */
static void test_read_per_block(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    corrupt(1, 8192 + 512, 1024, 0xa1);     /* two blocks */
    corrupt(2, 8192 + 3000, 1, 0xb2);       /* one byte: block 2560..3072 of the request */
    events_reserve(4);
    uint8_t r[16384], want[16384];
    good_data(want, 8192, sizeof(want));
    assert_int_equal(bdrv_pread(c, 8192, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    dump_events();
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "\"child\":\"children.1\"",
                                     "\"offset\":8704,\"length\":1024", "\"node\":\"qc1\""), 1);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "\"child\":\"children.2\"",
                                     "\"offset\":10752,\"length\":512", "\"quorum\":\"qtop\""), 1);
    assert_int_equal(nlines, 2);
    assert_int_equal(info_int(bs, "children.1.corruptions"), 1);
    assert_int_equal(info_int(bs, "children.2.corruptions"), 1);
    assert_int_equal(info_int(bs, "children.0.corruptions"), 0);
    /* Without rewrite-corrupted the children stay as they were. */
    uint8_t b;
    mem_read_raw(kids[2], 8192 + 3000, &b, 1);
    assert_int_equal(b, 0xb2);
    test_child_free(c);
    bdrv_unref(bs);
}

/* A block with no majority fails the read -EIO with a QUORUM_FAILURE event. */
static void test_read_no_majority(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    corrupt(1, 4096, 512, 0x11);
    corrupt(2, 4096, 512, 0x22);
    events_reserve(4);
    uint8_t r[8192];
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -EIO);
    dump_events();
    assert_int_equal(events_matching("QUORUM_FAILURE", "\"offset\":0,\"length\":8192",
                                     "\"bad-offset\":4096", "\"versions\":3"), 1);
    test_child_free(c);
    bdrv_unref(bs);
}

/* Child 0 reads straight into the caller's buffer: when it is the one
 * outvoted, the winner must replace its bytes there. */
static void test_read_child0_outvoted(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    corrupt(0, 0, 4096, 0x00);
    events_reserve(1);
    uint8_t r[8192], want[8192];
    good_data(want, 0, sizeof(want));
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.0", "\"length\":4096", NULL),
                     1);
    test_child_free(c);
    bdrv_unref(bs);
}

/* A vector of several pieces and an unaligned range: the vote runs on
 * bounces and the partial blocks at both ends. */
static void test_read_vector_unaligned(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    corrupt(0, 1000, 10, 0x55);
    corrupt(1, 3000, 10, 0x66);
    uint8_t a[1500], b[2600], want[4100];
    good_data(want, 100, sizeof(want));
    IOVector q;
    iov_init(&q, 2);
    iov_add(&q, a, sizeof(a));
    iov_add(&q, b, sizeof(b));
    events_reserve(2);
    assert_int_equal(co_readv(c, 100, &q), 0);
    assert_memory_equal(a, want, sizeof(a));
    assert_memory_equal(b, want + sizeof(a), sizeof(b));
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.0", "\"offset\":512,\"length\":512",
                                     NULL), 1);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.1",
                                     "\"offset\":2560,\"length\":512", NULL), 1);
    test_child_free(c);
    bdrv_unref(bs);
    iov_destroy(&q);
}


/* Two children fail with different errors, threshold 2: too few return, and
 * the read fails with the errno most of them had. */
static void test_read_too_few_return(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[4096];
    mem_inject_error(kids[1], MEM_OP_READ, 0, 0, -ENOSPC, 1);
    mem_inject_error(kids[2], MEM_OP_READ, 0, 0, -ENOSPC, 1);
    events_reserve(3);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -ENOSPC);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.1", "\"errno\":28", NULL), 1);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.2", "\"errno\":28", NULL), 1);
    assert_int_equal(events_matching("QUORUM_FAILURE", "\"errno\":28", NULL, NULL), 1);
    assert_int_equal(info_int(bs, "children.1.errors"), 1);
    /* All three fail, two of them alike: that errno. */
    mem_inject_error(kids[0], MEM_OP_READ, 0, 0, -EIO, 1);
    mem_inject_error(kids[1], MEM_OP_READ, 0, 0, -EPERM, 1);
    mem_inject_error(kids[2], MEM_OP_READ, 0, 0, -EPERM, 1);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -EPERM);
    /* One failure, threshold 2: the other two agree, the read succeeds. */
    mem_inject_error(kids[0], MEM_OP_READ, 0, 0, -EIO, 1);
    uint8_t want[4096];
    good_data(want, 0, sizeof(want));
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    test_child_free(c);
    bdrv_unref(bs);
}

/* An error and a corruption among 3 at threshold 2: one good vote is not a
 * majority, so the read fails rather than guess. */
static void test_read_error_plus_corruption(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[4096];
    mem_inject_error(kids[0], MEM_OP_READ, 0, 0, -EIO, 1);
    corrupt(1, 0, 512, 0x77);
    events_reserve(3);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -EIO);
    assert_int_equal(events_matching("QUORUM_FAILURE", "\"bad-offset\":0", NULL, NULL), 1);
    test_child_free(c);
    bdrv_unref(bs);
}

/* 5 children, two of them wrong alike: threshold 3 outvotes them, threshold
 * 4 fails; three alike wrong ones win at threshold 3 (a majority is all a
 * vote can know). */
static void test_read_five_children(void **state)
{
    (void)state;
    make_kids(5, NULL);
    corrupt(1, 0, 512, 0x42);
    corrupt(3, 0, 512, 0x42);
    uint8_t r[1024], want[1024];
    good_data(want, 0, sizeof(want));
    BlockDriverState *bs = open_quorum(5, "vote-threshold=3");
    BdrvChild *c = test_child_new(bs);
    events_reserve(2);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.1", NULL, NULL), 1);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.3", NULL, NULL), 1);
    test_child_free(c);
    bdrv_unref(bs);

    bs = open_quorum(5, "vote-threshold=4");
    c = test_child_new(bs);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -EIO);
    test_child_free(c);
    bdrv_unref(bs);

    corrupt(4, 0, 512, 0x42);
    bs = open_quorum(5, "vote-threshold=3");
    c = test_child_new(bs);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_true(test_buf_is(r, 512, 0x42));
    assert_memory_equal(r + 512, want + 512, 512);
    test_child_free(c);
    bdrv_unref(bs);
}

/* Threshold 1: any version wins; with three different ones, child 0's (the
 * lowest child's, as QEMU takes the first it met).  Threshold N: one
 * corrupt child fails the read. */
static void test_threshold_edges(void **state)
{
    (void)state;
    make_kids(3, NULL);
    corrupt(0, 0, 512, 0x10);
    corrupt(1, 0, 512, 0x20);
    uint8_t r[512];
    BlockDriverState *bs = open_quorum(3, "vote-threshold=1");
    BdrvChild *c = test_child_new(bs);
    events_reserve(2);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_true(test_buf_is(r, sizeof(r), 0x10));
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.1", NULL, NULL), 1);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.2", NULL, NULL), 1);
    test_child_free(c);
    bdrv_unref(bs);

    corrupt(0, 0, 512, 0x20);     /* now 0 and 1 agree on 0x20, 2 has the original */
    bs = open_quorum(3, "vote-threshold=3");
    c = test_child_new(bs);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -EIO);
    assert_int_equal(bdrv_pread(c, 512, sizeof(r), r, 0), 0);   /* unanimous elsewhere */
    test_child_free(c);
    bdrv_unref(bs);
}

/* The vote granularity is the largest child request_alignment: a one-byte
 * difference marks a whole 4 KiB block. */
static void test_granularity_follows_alignment(void **state)
{
    (void)state;
    MemConfig cfg = { .request_alignment = 4096 };
    make_kids(3, &cfg);
    corrupt(2, 8192 + 100, 1, 0x99);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[16384];
    events_reserve(1);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.2",
                                     "\"offset\":8192,\"length\":4096", NULL), 1);
    test_child_free(c);
    bdrv_unref(bs);
}

/* ---- fifo ---- */

static void test_fifo(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2,read-pattern=fifo");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[4096], want[4096];
    good_data(want, 0, sizeof(want));
    /* Only child 0 is read while it works, corrupt or not (no vote). */
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_int_equal(mem_calls(kids[0], MEM_OP_READ), 1);
    assert_int_equal(mem_calls(kids[1], MEM_OP_READ), 0);
    /* Child 0 fails: child 1 answers, the failure is reported. */
    mem_inject_error(kids[0], MEM_OP_READ, 0, 0, -EIO, 1);
    events_reserve(2);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    assert_int_equal(mem_calls(kids[1], MEM_OP_READ), 1);
    assert_int_equal(mem_calls(kids[2], MEM_OP_READ), 0);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.0", "\"errno\":5", NULL), 1);
    /* 0 and 1 fail: child 2.  All fail: the last error, and a failure event. */
    mem_inject_error(kids[0], MEM_OP_READ, 0, 0, -EIO, 1);
    mem_inject_error(kids[1], MEM_OP_READ, 0, 0, -EIO, 1);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    mem_inject_error(kids[0], MEM_OP_READ, 0, 0, -EIO, 1);
    mem_inject_error(kids[1], MEM_OP_READ, 0, 0, -EIO, 1);
    mem_inject_error(kids[2], MEM_OP_READ, 0, 0, -ENOSPC, 1);
    events_reserve(4);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -ENOSPC);
    assert_int_equal(events_matching("QUORUM_FAILURE", "\"errno\":28", NULL, NULL), 1);
    test_child_free(c);
    bdrv_unref(bs);
}

/* ---- rewrite-corrupted ---- */

static void test_rewrite_repairs(void **state)
{
    (void)state;
    make_kids(3, NULL);
    corrupt(1, 4096, 1024, 0xc1);
    corrupt(2, 6144, 512, 0xc2);
    corrupt(2, 7168, 512, 0xc2);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2,rewrite-corrupted=on");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[8192], want[8192], d[8192];
    good_data(want, 0, sizeof(want));
    events_reserve(3);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    dump_events();
    for (int i = 0; i < 3; i++) {
        mem_read_raw(kids[i], 0, d, sizeof(d));
        assert_memory_equal(d, want, sizeof(d));
    }
    /* One rewrite per bad run: child 1 one, child 2 two (not the good block
     * between them). */
    assert_int_equal(mem_calls(kids[1], MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(kids[1], MEM_OP_WRITE, 0)->offset, 4096);
    assert_int_equal(mem_log(kids[1], MEM_OP_WRITE, 0)->bytes, 1024);
    assert_int_equal(mem_calls(kids[2], MEM_OP_WRITE), 2);
    assert_int_equal(mem_calls(kids[0], MEM_OP_WRITE), 0);
    assert_int_equal(info_int(bs, "children.2.rewrites"), 2);
    assert_int_equal(info_int(bs, "children.2.corruptions"), 2);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "children.2", NULL, NULL), 2);
    /* Repaired: the next read reports nothing. */
    events_clear();
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_int_equal(nlines, 0);
    test_child_free(c);
    bdrv_unref(bs);
}

/* A rewrite that fails is reported and counted; the read still succeeds. */
static void test_rewrite_failure_not_fatal(void **state)
{
    (void)state;
    make_kids(3, NULL);
    corrupt(0, 0, 512, 0xd0);
    mem_inject_error(kids[0], MEM_OP_WRITE, 0, 0, -EROFS, 1);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2,rewrite-corrupted=on");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[1024], want[1024];
    good_data(want, 0, sizeof(want));
    events_reserve(2);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    assert_int_equal(events_matching("QUORUM_REWRITE_FAILED", "children.0", "\"errno\":30",
                                     "\"length\":512"), 1);
    assert_int_equal(info_int(bs, "children.0.rewrite-failures"), 1);
    assert_int_equal(info_int(bs, "children.0.rewrites"), 0);
    uint8_t b;
    mem_read_raw(kids[0], 0, &b, 1);
    assert_int_equal(b, 0xd0);
    test_child_free(c);
    bdrv_unref(bs);
}

/* ---- blkverify ---- */

static void test_blkverify_mismatch(void **state)
{
    (void)state;
    make_kids(2, NULL);
    BlockDriverState *bs = open_quorum(2, "vote-threshold=2,blkverify=on");
    BdrvChild *c = test_child_new(bs);
    uint8_t r[8192], want[8192];
    good_data(want, 0, sizeof(want));
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), 0);
    assert_memory_equal(r, want, sizeof(r));
    corrupt(1, 5000, 1, 0xee);
    events_reserve(1);
    assert_int_equal(bdrv_pread(c, 0, sizeof(r), r, 0), -EIO);
    dump_events();
    assert_int_equal(events_matching("QUORUM_BLKVERIFY_MISMATCH", "\"offset\":4608,\"length\":512",
                                     "\"mismatch-offset\":5000", NULL), 1);
    /* The node keeps working: other ranges read fine. */
    assert_int_equal(bdrv_pread(c, 0, 4096, r, 0), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

/* ---- writes and friends ---- */

typedef struct WriteCase {
    int threshold, failing;
    int want;
} WriteCase;

/* k of 3 children fail a write: it succeeds while 3 - k >= threshold. */
static void test_writes_around_threshold(void **state)
{
    (void)state;
    static const WriteCase cases[] = {
        { 2, 0, 0 }, { 2, 1, 0 }, { 2, 2, -ENOSPC }, { 2, 3, -ENOSPC },
        { 3, 1, -ENOSPC }, { 1, 2, 0 }, { 1, 3, -ENOSPC },
    };
    make_kids(3, NULL);
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        char opts[32];
        snprintf(opts, sizeof(opts), "vote-threshold=%d", cases[k].threshold);
        BlockDriverState *bs = open_quorum(3, opts);
        BdrvChild *c = test_child_new(bs);
        for (int i = 0; i < cases[k].failing; i++) {
            mem_inject_error(kids[2 - i], MEM_OP_WRITE, 0, 0, -ENOSPC, 1);
        }
        uint8_t w[4096], d[4096];
        test_pattern(w, sizeof(w), 100 + k);
        events_reserve(4);
        assert_int_equal(bdrv_pwrite(c, 65536, sizeof(w), w, 0), cases[k].want);
        assert_int_equal(events_matching("QUORUM_REPORT_BAD", "\"op\":\"write\"", NULL, NULL),
                         cases[k].failing);
        assert_int_equal(events_matching("QUORUM_FAILURE", NULL, NULL, NULL),
                         cases[k].want ? 1 : 0);
        for (int i = 0; i < 3 - cases[k].failing; i++) {
            mem_read_raw(kids[i], 65536, d, sizeof(d));
            assert_memory_equal(d, w, sizeof(d));
        }
        if (cases[k].failing) {
            assert_int_equal(info_int(bs, "children.2.errors"), 1);
        }
        assert_int_equal(info_int(bs, "children.0.writes"), 1);
        test_child_free(c);
        bdrv_unref(bs);
    }
}

static void test_zeroes_discard_flush(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    BdrvChild *c = test_child_new(bs);
    uint8_t d[4096];
    /* zeroes: one failure is outvoted, two fail it */
    mem_inject_error(kids[1], MEM_OP_ZEROES, 0, 0, -EIO, 1);
    events_reserve(4);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 4096, 0), 0);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "\"op\":\"write-zeroes\"", "children.1",
                                     NULL), 1);
    mem_read_raw(kids[0], 0, d, sizeof(d));
    assert_true(test_buf_is(d, sizeof(d), 0));
    mem_inject_error(kids[1], MEM_OP_ZEROES, 0, 0, -EIO, 1);
    mem_inject_error(kids[2], MEM_OP_ZEROES, 0, 0, -EIO, 1);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 4096, 0), -EIO);
    test_child_free(c);
    bdrv_unref(bs);
    for (int i = 0; i < 3; i++) {
        mem_log_clear(kids[i]);
    }

    bs = open_quorum(3, "vote-threshold=2");
    c = test_child_new(bs);
    /* discard: a child that cannot discard is not a failure */
    mem_config(kids[2])->discard_enotsup = true;
    events_reserve(4);
    assert_int_equal(co_discard(c, 8192, 4096), 0);
    assert_int_equal(mem_calls(kids[0], MEM_OP_DISCARD), 1);
    assert_int_equal(nlines, 0);
    mem_config(kids[2])->discard_enotsup = false;
    mem_inject_error(kids[0], MEM_OP_DISCARD, 0, 0, -EIO, 1);
    mem_inject_error(kids[1], MEM_OP_DISCARD, 0, 0, -EIO, 1);
    assert_int_equal(co_discard(c, 8192, 4096), -EIO);
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "\"op\":\"discard\"", NULL, NULL), 2);
    /* flush: every child, one failure outvoted, two fail it */
    uint8_t w[512] = { 1 };
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(w), w, 0), 0);
    mem_inject_error(kids[0], MEM_OP_FLUSH, 0, 0, -EIO, 1);
    events_reserve(4);
    assert_int_equal(bdrv_flush(bs), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mem_calls(kids[i], MEM_OP_FLUSH), 1);
    }
    assert_int_equal(events_matching("QUORUM_REPORT_BAD", "\"op\":\"flush\"", "children.0", NULL), 1);
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(w), w, 0), 0);
    mem_inject_error(kids[0], MEM_OP_FLUSH, 0, 0, -EIO, 1);
    mem_inject_error(kids[1], MEM_OP_FLUSH, 0, 0, -EIO, 1);
    assert_int_equal(bdrv_flush(bs), -EIO);
    test_child_free(c);
    bdrv_unref(bs);
}

/* ---- block status ---- */

static void test_block_status(void **state)
{
    (void)state;
    make_kids(3, NULL);
    /* 0..64k zero on all three; 64k..128k zero on two; the rest data */
    for (int i = 0; i < 3; i++) {
        mem_set_status(kids[i], 0, 65536, MEM_ZERO);
        if (i < 2) {
            mem_set_status(kids[i], 65536, 65536, MEM_ZERO);
        }
    }
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    StatusReq q = { bs, 0, SIZE, 0, -1 };
    test_run_co(status_entry, &q);
    assert_true(q.ret & BDRV_BLOCK_ZERO);
    assert_false(q.ret & BDRV_BLOCK_DATA);
    assert_int_equal(q.pnum, 65536);
    q = (StatusReq){ bs, 65536, SIZE - 65536, 0, -1 };
    test_run_co(status_entry, &q);
    assert_true(q.ret & BDRV_BLOCK_DATA);
    assert_false(q.ret & BDRV_BLOCK_ZERO);
    assert_true(q.pnum >= 65536);
    bdrv_unref(bs);
}

/* ---- open ---- */

static void test_option_errors(void **state)
{
    (void)state;
    make_kids(3, NULL);
    int rw = BDRV_O_RDWR;
    open_fails(0, "vote-threshold=1", rw, "no children given");
    open_fails(3, "", rw, "vote-threshold is required");
    open_fails(3, "vote-threshold=0", rw, "vote-threshold=0 is out of range");
    open_fails(3, "vote-threshold=4", rw, "between 1 and the number of children (3)");
    open_fails(3, "vote-threshold=two", rw, "vote-threshold");
    open_fails(3, "vote-threshold=2,read-pattern=random", rw, "read-pattern");
    open_fails(3, "vote-threshold=2,blkverify=on", rw, "blkverify=on needs exactly 2 children, got 3");
    open_fails(2, "vote-threshold=1,blkverify=on", rw, "blkverify=on needs vote-threshold=2, got 1");
    open_fails(2, "vote-threshold=2,blkverify=on,read-pattern=fifo", rw, "read-pattern=fifo reads only one");
    open_fails(2, "vote-threshold=2,blkverify=on,rewrite-corrupted=on", rw,
               "rewrite-corrupted=on cannot be used with blkverify=on");
    open_fails(3, "vote-threshold=2,rewrite-corrupted=on,read-pattern=fifo", rw,
               "rewrite-corrupted=on needs read-pattern=quorum");
    open_fails(3, "vote-threshold=2,rewrite-corrupted=on", 0,
               "rewrite-corrupted=on needs writable children");
    open_fails(2, "vote-threshold=2,children.3=qc2", rw, "without gaps");
    /* Nothing was left attached by the failed opens: a valid one works. */
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2,rewrite-corrupted=on");
    assert_int_equal(bdrv_getlength(bs), SIZE);
    bdrv_unref(bs);
    /* read-only without rewrite is fine */
    Error *err = NULL;
    bs = open_quorum_flags(3, "vote-threshold=2", 0, &err);
    assert_non_null(bs);
    bdrv_unref(bs);
}

static void test_size_mismatch(void **state)
{
    (void)state;
    make_kids(2, NULL);
    MemConfig cfg = { .size = SIZE + 512, .node_name = "qc2" };
    kids[2] = mem_node_new(&cfg);
    nkids = 3;
    open_fails(3, "vote-threshold=2", BDRV_O_RDWR,
               "children.2 ('qc2') is 262656 bytes but children.0 ('qc0') is 262144");
}

static void test_info_lists_children(void **state)
{
    (void)state;
    make_kids(3, NULL);
    BlockDriverState *bs = open_quorum(3, "vote-threshold=2");
    ImageSpecificInfo info = { 0 };
    bdrv_get_specific_info(bs, &info);
    bool node1 = false;
    for (int i = 0; i < info.n; i++) {
        if (!strcmp(info.entries[i].key, "children.1.node")) {
            node1 = !strcmp(info.entries[i].value, "qc1");
        }
    }
    image_info_free(&info);
    assert_true(node1);
    assert_int_equal(info_int(bs, "vote-threshold"), 2);
    assert_int_equal(info_int(bs, "children"), 3);
    bdrv_unref(bs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_agree, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_per_block, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_no_majority, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_child0_outvoted, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_vector_unaligned, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_too_few_return, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_error_plus_corruption, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_read_five_children, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_threshold_edges, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_granularity_follows_alignment, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_fifo, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_rewrite_repairs, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_rewrite_failure_not_fatal, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_blkverify_mismatch, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_writes_around_threshold, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_zeroes_discard_flush, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_block_status, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_option_errors, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_size_mismatch, setup_each, teardown_each),
        cmocka_unit_test_setup_teardown(test_info_lists_children, setup_each, teardown_each),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
