/*
 * test-block-io-serialise.c - overlapping requests while an RMW is in
 * flight are serialised: concurrent unaligned writes (same thread with
 * yields, and from several threads) never leave a torn result.
 *
 * The two-thread tests do not rely on luck: the mem driver's gate holds the
 * first RMW's read (data already read) until the second request has either
 * reached the driver too (no serialisation: both reads done before either
 * write, so one update is lost) or is seen waiting for the first.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "block-req.h"
#include "test-util.h"

#define ALIGN 512
#define NWRITERS 4

typedef struct {
    BdrvChild *c;
    int64_t offset, bytes;
    int byte;
    int ret;
    bool done;
} WriteReq;

static void coroutine_fn do_write(void *opaque)
{
    WriteReq *w = opaque;
    uint8_t buf[4096];
    memset(buf, w->byte, w->bytes);
    IOVector q;
    iov_init_buf(&q, buf, w->bytes);
    w->ret = bdrv_co_pwritev(w->c, w->offset, w->bytes, &q, 0);
    __atomic_store_n(&w->done, true, __ATOMIC_SEQ_CST);
}

/* Writer i writes byte 0xa0+i at [writer_offset(i), +WRITE_LEN): the
 * ranges overlap each other and share partial blocks, so a lost RMW update
 * or an interleaved write shows up as a result no serial order produces. */
#define WRITE_LEN 700
static int64_t writer_offset(int i)
{
    return 100 + 230 * i;
}

static bool matches_order(const uint8_t *got, size_t len, const int *order)
{
    uint8_t expect[4096];
    memset(expect, 0x11, len);
    for (int k = 0; k < NWRITERS; k++) {
        memset(expect + writer_offset(order[k]), 0xa0 + order[k], WRITE_LEN);
    }
    return memcmp(got, expect, len) == 0;
}

static bool permute(const uint8_t *got, size_t len, int *order, int k)
{
    if (k == NWRITERS) {
        return matches_order(got, len, order);
    }
    for (int i = k; i < NWRITERS; i++) {
        int t = order[k]; order[k] = order[i]; order[i] = t;
        bool ok = permute(got, len, order, k + 1);
        t = order[k]; order[k] = order[i]; order[i] = t;
        if (ok) {
            return true;
        }
    }
    return false;
}

static void check_not_torn(BlockDriverState *bs)
{
    uint8_t got[4096];
    int order[NWRITERS];
    for (int i = 0; i < NWRITERS; i++) {
        order[i] = i;
    }
    mem_read_raw(bs, 0, got, sizeof(got));
    assert_true(permute(got, sizeof(got), order, 0));
}

/* 64 KiB of 0x11 with ALIGN-byte requests: unaligned writes need an RMW. */
static BlockDriverState *filled_node(void)
{
    MemConfig cfg = { .size = 64 * KiB, .request_alignment = ALIGN };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x11);
    return bs;
}

static void test_same_thread_overlapping_rmw(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *bs = filled_node();
    mem_set_yield(bs, (1 << MEM_OP_READ) | (1 << MEM_OP_WRITE));
    BdrvChild *c = test_child_new(bs);
    WriteReq w[NWRITERS];
    for (int i = 0; i < NWRITERS; i++) {
        w[i] = (WriteReq){ c, writer_offset(i), WRITE_LEN, 0xa0 + i, -1, false };
        co_enter(co_create(do_write, &w[i]));
    }
    for (int i = 0; i < NWRITERS; i++) {
        AIO_WAIT_WHILE(ctx, !w[i].done);
        assert_int_equal(w[i].ret, 0);
    }
    check_not_torn(bs);
    /* every writer did its own RMW: 2 reads each (head and tail blocks) */
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), NWRITERS);
    assert_int_equal(bs->serialising_in_flight, 0);
    assert_null(bs->tracked_reqs);
    test_child_free(c);
    bdrv_unref(bs);
}

/* An aligned write overlapping an RMW in flight waits for it. */
static void test_aligned_write_waits_for_rmw(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    BlockDriverState *bs = filled_node();
    mem_set_yield(bs, (1 << MEM_OP_READ) | (1 << MEM_OP_WRITE));
    BdrvChild *c = test_child_new(bs);
    WriteReq rmw = { c, 10, 100, 0xa0, -1, false };
    WriteReq aligned = { c, 0, 512, 0xa1, -1, false };
    co_enter(co_create(do_write, &rmw));
    co_enter(co_create(do_write, &aligned));
    AIO_WAIT_WHILE(ctx, !rmw.done || !aligned.done);
    /* the aligned write came second, so its data wins everywhere */
    uint8_t got[512];
    mem_read_raw(bs, 0, got, 512);
    assert_true(test_buf_is(got, 512, 0xa1));
    const MemLogEntry *first = mem_log(bs, MEM_OP_WRITE, 0);
    assert_int_equal(first->offset, 0);
    assert_int_equal(first->bytes, 512);   /* the RMW's write went first */
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 2);
    test_child_free(c);
    bdrv_unref(bs);
}

typedef struct {
    BdrvChild *c;
    int id;
    int rounds;
} ThreadArg;

static void *writer_thread(void *opaque)
{
    ThreadArg *a = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    for (int r = 0; r < a->rounds; r++) {
        WriteReq w = { a->c, writer_offset(a->id), WRITE_LEN, 0xa0 + a->id, -1, false };
        co_enter(co_create(do_write, &w));
        AIO_WAIT_WHILE(ctx, !__atomic_load_n(&w.done, __ATOMIC_SEQ_CST));
        assert_int_equal(w.ret, 0);
    }
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

/* A stress run: it finds crashes and leaks in the threaded path, but the
 * forced tests below are the ones that prove serialisation. */
static void test_threads_overlapping_rmw(void **state)
{
    (void)state;
    BlockDriverState *bs = filled_node();
    mem_set_yield(bs, (1 << MEM_OP_READ) | (1 << MEM_OP_WRITE));
    BdrvChild *c = test_child_new(bs);
    pthread_t th[NWRITERS];
    ThreadArg args[NWRITERS];
    for (int i = 0; i < NWRITERS; i++) {
        args[i] = (ThreadArg){ c, i, 50 };
        pthread_create(&th[i], NULL, writer_thread, &args[i]);
    }
    for (int i = 0; i < NWRITERS; i++) {
        pthread_join(th[i], NULL);
    }
    check_not_torn(bs);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), NWRITERS * 50);
    assert_int_equal(bs->serialising_in_flight, 0);
    assert_null(bs->tracked_reqs);
    assert_int_equal(bdrv_in_flight(bs), 0);
    test_child_free(c);
    bdrv_unref(bs);
}

/* ---- two threads, forced interleaving ---- */

static void *single_write_thread(void *opaque)
{
    WriteReq *w = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    co_enter(co_create(do_write, w));
    AIO_WAIT_WHILE(ctx, !__atomic_load_n(&w->done, __ATOMIC_SEQ_CST));
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

/* Some tracked request of bs is waiting for a serialising one. */
static bool some_request_waits(BlockDriverState *bs)
{
    bool found = false;
    pthread_mutex_lock(&bs->reqs_lock);
    for (BdrvTrackedRequest *r = bs->tracked_reqs; r; r = r->next) {
        found |= r->waiting_for != NULL;
    }
    pthread_mutex_unlock(&bs->reqs_lock);
    return found;
}

static bool is_done(WriteReq *w)
{
    return __atomic_load_n(&w->done, __ATOMIC_SEQ_CST);
}

/* got[0, len) is what writing a then b (in that order) over 0x11 gives. */
static bool serial_outcome(const uint8_t *got, size_t len, const WriteReq *a,
                           const WriteReq *b)
{
    uint8_t expect[4096];
    memset(expect, 0x11, len);
    memset(expect + a->offset, a->byte, a->bytes);
    memset(expect + b->offset, b->byte, b->bytes);
    return memcmp(got, expect, len) == 0;
}

/*
 * Two RMWs of the same block from two threads (each its own AioContext).
 * Thread A's read of the block is held at the gate after it read the old
 * data; thread B's RMW then either reads the same old data (no
 * serialisation) or waits for A.  Only then is the gate opened.  Without
 * serialisation the order is read, read, write, write and the second write
 * puts back the old bytes under the first one's data.
 */
static void test_threads_rmw_same_block_forced(void **state)
{
    (void)state;
    BlockDriverState *bs = filled_node();
    BdrvChild *c = test_child_new(bs);
    WriteReq a = { c, 100, 200, 0xa0, -1, false };   /* [100, 300) */
    WriteReq b = { c, 200, 200, 0xb0, -1, false };   /* [200, 400), same block */
    pthread_t ta, tb;

    mem_gate_close(bs, 1 << MEM_OP_READ);
    pthread_create(&ta, NULL, single_write_thread, &a);
    WAIT_FOR(mem_gate_parked(bs) == 1, "A's RMW read at the gate");
    pthread_create(&tb, NULL, single_write_thread, &b);
    WAIT_FOR(mem_gate_parked(bs) == 2 || some_request_waits(bs),
             "B's RMW read at the gate, or B waiting for A");
    int parked = mem_gate_parked(bs);
    mem_gate_open(bs);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);

    assert_int_equal(a.ret, 0);
    assert_int_equal(b.ret, 0);
    uint8_t got[4096];
    mem_read_raw(bs, 0, got, sizeof(got));
    if (parked != 1 || !serial_outcome(got, sizeof(got), &a, &b)) {
        fail_msg("RMWs interleaved: %d reads in flight at once, result %s the serial "
                 "outcome A-then-B (bytes 100..300: %02x %02x)", parked,
                 serial_outcome(got, sizeof(got), &a, &b) ? "is" : "is not", got[100], got[299]);
    }
    /* A, then B: two reads and two writes, each alternately */
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 2);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 2);
    assert_int_equal(bs->serialising_in_flight, 0);
    assert_null(bs->tracked_reqs);
    test_child_free(c);
    bdrv_unref(bs);
}

/*
 * An aligned write from thread B to the block whose RMW thread A holds
 * (read done, write not yet): B must wait, else A's write puts back the old
 * block around A's bytes and B's data is lost.
 */
static void test_threads_aligned_write_waits_for_rmw_forced(void **state)
{
    (void)state;
    BlockDriverState *bs = filled_node();
    BdrvChild *c = test_child_new(bs);
    WriteReq a = { c, 10, 100, 0xa0, -1, false };    /* RMW of block 0 */
    WriteReq b = { c, 0, ALIGN, 0xb0, -1, false };   /* all of block 0 */
    pthread_t ta, tb;

    mem_gate_close(bs, 1 << MEM_OP_READ);
    pthread_create(&ta, NULL, single_write_thread, &a);
    WAIT_FOR(mem_gate_parked(bs) == 1, "A's RMW read at the gate");
    pthread_create(&tb, NULL, single_write_thread, &b);
    WAIT_FOR(is_done(&b) || some_request_waits(bs), "B done, or B waiting for A");
    bool b_overtook = is_done(&b);
    mem_gate_open(bs);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);

    assert_int_equal(a.ret, 0);
    assert_int_equal(b.ret, 0);
    uint8_t got[4096];
    mem_read_raw(bs, 0, got, sizeof(got));
    if (b_overtook || !serial_outcome(got, sizeof(got), &a, &b)) {
        fail_msg("aligned write %s the RMW; block 0 is %s A-then-B (byte 0: %02x)",
                 b_overtook ? "overtook" : "waited for",
                 serial_outcome(got, sizeof(got), &a, &b) ? "" : "not", got[0]);
    }
    assert_true(test_buf_is(got, ALIGN, 0xb0));
    assert_null(bs->tracked_reqs);
    test_child_free(c);
    bdrv_unref(bs);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_thread_overlapping_rmw),
        cmocka_unit_test(test_aligned_write_waits_for_rmw),
        cmocka_unit_test(test_threads_overlapping_rmw),
        cmocka_unit_test(test_threads_rmw_same_block_forced),
        cmocka_unit_test(test_threads_aligned_write_waits_for_rmw_forced),
    };
    return cmocka_run_group_tests_name("block-io-serialise", tests, NULL, NULL);
}
