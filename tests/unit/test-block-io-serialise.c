/*
 * test-block-io-serialise.c - overlapping requests while an RMW is in
 * flight are serialised: concurrent unaligned writes (same thread with
 * yields, and from several threads) never leave a torn result.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
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

static void test_same_thread_overlapping_rmw(void **state)
{
    (void)state;
    AioContext *ctx = test_loop_init();
    MemConfig cfg = { .size = 64 * KiB, .request_alignment = ALIGN };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x11);
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
    MemConfig cfg = { .size = 64 * KiB, .request_alignment = ALIGN };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x11);
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

static void test_threads_overlapping_rmw(void **state)
{
    (void)state;
    MemConfig cfg = { .size = 64 * KiB, .request_alignment = ALIGN };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x11);
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

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_thread_overlapping_rmw),
        cmocka_unit_test(test_aligned_write_waits_for_rmw),
        cmocka_unit_test(test_threads_overlapping_rmw),
    };
    return cmocka_run_group_tests_name("block-io-serialise", tests, NULL, NULL);
}
