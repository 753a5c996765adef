/*
 * test-block-counters.c - the per-thread request counters and the unlisted
 * fast path of request tracking (block-counters.c, block-io.c).
 *
 * - thread slots: distinct per live thread, given back at exit;
 * - bdrv_in_flight sums every thread's slot: drain from the main thread sees,
 *   and waits for, a request parked in the driver on another thread; a count
 *   taken on one thread and dropped on another nets to zero;
 * - while nothing serialises, requests are not on the tracked list; a
 *   request that starts serialising while such a request is in flight on
 *   another thread still waits for it (the handshake of untracked_end).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "block-req.h"
#include "test-util.h"

#define ALIGN 512

/* ---- thread slots ---- */

typedef struct {
    unsigned slot;
    pthread_barrier_t *hold;     /* keep the thread (and its slot) alive */
} SlotThread;

static void *slot_thread(void *opaque)
{
    SlotThread *t = opaque;
    t->slot = thread_slot();
    pthread_barrier_wait(t->hold);   /* slot taken */
    pthread_barrier_wait(t->hold);   /* main has looked */
    return NULL;
}

static void test_thread_slots_distinct_and_returned(void **state)
{
    (void)state;
    unsigned mine = thread_slot();
    unsigned before = thread_slots_in_use();
    pthread_barrier_t hold;
    pthread_barrier_init(&hold, NULL, 3);
    SlotThread a = { .hold = &hold }, b = { .hold = &hold };
    pthread_t ta, tb;
    pthread_create(&ta, NULL, slot_thread, &a);
    pthread_create(&tb, NULL, slot_thread, &b);
    pthread_barrier_wait(&hold);
    assert_true(a.slot != 0 && b.slot != 0);   /* few threads: own slots */
    assert_true(a.slot != b.slot && a.slot != mine && b.slot != mine);
    assert_int_equal(thread_slots_in_use(), before + 2);
    pthread_barrier_wait(&hold);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_int_equal(thread_slots_in_use(), before);
    assert_int_equal(thread_slot(), mine);
    pthread_barrier_destroy(&hold);
}

/* ---- in flight across threads ---- */

typedef struct {
    BdrvChild *c;
    int64_t offset, bytes;
    int byte;                    /* -1: read */
    int ret;
    bool done;
} Req;

static void coroutine_fn do_req(void *opaque)
{
    Req *r = opaque;
    uint8_t buf[4096];
    IOVector q;
    iov_init_buf(&q, buf, r->bytes);
    if (r->byte < 0) {
        r->ret = bdrv_co_preadv(r->c, r->offset, r->bytes, &q, 0);
    } else {
        memset(buf, r->byte, r->bytes);
        r->ret = bdrv_co_pwritev(r->c, r->offset, r->bytes, &q, 0);
    }
    __atomic_store_n(&r->done, true, __ATOMIC_SEQ_CST);
}

static void *req_thread(void *opaque)
{
    Req *r = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    co_enter(co_create(do_req, r));
    AIO_WAIT_WHILE(ctx, !__atomic_load_n(&r->done, __ATOMIC_SEQ_CST));
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

static bool is_done(Req *r)
{
    return __atomic_load_n(&r->done, __ATOMIC_SEQ_CST);
}

static BlockDriverState *filled_node(void)
{
    MemConfig cfg = { .size = 64 * KiB, .request_alignment = ALIGN };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x11);
    return bs;
}

typedef struct {
    BlockDriverState *bs;
    bool *draining;
    bool opening;                /* set just before the gate opens */
} Opener;

/* Open the gate once the main thread is inside drain (and a little after,
 * so that a drain that did not wait would have returned by then). */
static void *open_gate_later(void *opaque)
{
    Opener *o = opaque;
    WAIT_FOR(__atomic_load_n(o->draining, __ATOMIC_SEQ_CST), "drain to start");
    usleep(20 * 1000);
    __atomic_store_n(&o->opening, true, __ATOMIC_SEQ_CST);
    mem_gate_open(o->bs);
    return NULL;
}

static void test_drain_waits_for_other_thread(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *bs = filled_node();
    BdrvChild *c = test_child_new(bs);
    Req r = { c, 0, ALIGN, -1, -1, false };
    bool draining = false;
    Opener o = { bs, &draining, false };
    pthread_t tr, to;

    mem_gate_close(bs, 1 << MEM_OP_READ);
    pthread_create(&tr, NULL, req_thread, &r);
    WAIT_FOR(mem_gate_parked(bs) == 1, "the read at the gate");
    /* counted on the other thread's slot, seen from here */
    assert_int_equal(bdrv_in_flight(bs), 1);
    pthread_create(&to, NULL, open_gate_later, &o);
    __atomic_store_n(&draining, true, __ATOMIC_SEQ_CST);
    bdrv_drained_begin(bs);
    /* (r.done is set a moment after the request has ended: not a test of
     * drain) */
    assert_true(__atomic_load_n(&o.opening, __ATOMIC_SEQ_CST));
    assert_int_equal(mem_gate_parked(bs), 0);
    assert_int_equal(bdrv_in_flight(bs), 0);
    bdrv_drained_end(bs);
    pthread_join(to, NULL);
    pthread_join(tr, NULL);
    assert_true(is_done(&r));
    assert_int_equal(r.ret, 0);
    test_child_free(c);
    bdrv_unref(bs);
}

static void *inc_thread(void *opaque)
{
    bdrv_inc_in_flight(opaque);
    return NULL;
}

/* A coroutine that resumes on another thread ends its request there: the
 * count is raised in one slot and dropped in another. */
static void test_in_flight_moves_between_threads(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *bs = filled_node();
    pthread_t t;
    for (int i = 0; i < 3; i++) {
        pthread_create(&t, NULL, inc_thread, bs);
        pthread_join(t, NULL);
    }
    assert_int_equal(bdrv_in_flight(bs), 3);
    for (int i = 0; i < 3; i++) {
        bdrv_dec_in_flight(bs);
    }
    assert_int_equal(bdrv_in_flight(bs), 0);
    bdrv_unref(bs);
}

/* ---- unlisted requests and serialisation ---- */

static bool serialiser_waits_for_unlisted(BlockDriverState *bs)
{
    pthread_mutex_lock(&bs->reqs_lock);
    bool waits = !co_queue_empty(&bs->untracked_queue);
    pthread_mutex_unlock(&bs->reqs_lock);
    return waits;
}

/* Requests that serialise nothing are not linked: no lock per request. */
static void test_plain_requests_unlisted(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *bs = filled_node();
    BdrvChild *c = test_child_new(bs);
    Req r = { c, 0, ALIGN, 0xa0, -1, false };
    pthread_t tr;

    mem_gate_close(bs, 1 << MEM_OP_WRITE);
    pthread_create(&tr, NULL, req_thread, &r);
    WAIT_FOR(mem_gate_parked(bs) == 1, "the write at the gate");
    assert_null(bs->tracked_reqs);
    assert_int_equal(bdrv_in_flight(bs), 1);
    mem_gate_open(bs);
    pthread_join(tr, NULL);
    assert_int_equal(r.ret, 0);
    test_child_free(c);
    bdrv_unref(bs);
}

/*
 * Thread A's aligned write of block 0 is unlisted and held in the driver
 * (data stored, not returned).  Thread B's unaligned write into block 0
 * becomes serialising: it must wait for A, although A is on no list.  If it
 * did not, its RMW would read block 0 and its write reach the gate too.
 */
static void test_serialising_waits_for_unlisted(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *bs = filled_node();
    BdrvChild *c = test_child_new(bs);
    Req a = { c, 0, ALIGN, 0xa0, -1, false };
    Req b = { c, 100, 200, 0xb0, -1, false };
    pthread_t ta, tb;

    mem_gate_close(bs, 1 << MEM_OP_WRITE);
    pthread_create(&ta, NULL, req_thread, &a);
    WAIT_FOR(mem_gate_parked(bs) == 1, "A's write at the gate");
    assert_null(bs->tracked_reqs);
    pthread_create(&tb, NULL, req_thread, &b);
    WAIT_FOR(mem_gate_parked(bs) == 2 || serialiser_waits_for_unlisted(bs),
             "B's write at the gate, or B waiting for A");
    int parked = mem_gate_parked(bs);
    int reads = mem_calls(bs, MEM_OP_READ);
    /* B is listed and serialising while it waits */
    assert_int_equal(bs->serialising_in_flight, 1);
    assert_non_null(bs->tracked_reqs);
    mem_gate_open(bs);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);

    assert_int_equal(a.ret, 0);
    assert_int_equal(b.ret, 0);
    if (parked != 1 || reads != 0) {
        fail_msg("the RMW did not wait for the unlisted write: %d writes at the gate, "
                 "%d reads done", parked, reads);
    }
    uint8_t got[ALIGN], expect[ALIGN];
    mem_read_raw(bs, 0, got, sizeof(got));
    memset(expect, 0xa0, sizeof(expect));
    memset(expect + 100, 0xb0, 200);
    assert_memory_equal(got, expect, sizeof(got));
    assert_int_equal(bs->serialising_in_flight, 0);
    assert_null(bs->tracked_reqs);
    test_child_free(c);
    bdrv_unref(bs);
}

/*
 * Once something serialises, new requests are listed and wait for it as
 * before: thread A's RMW is held at its write, thread B's aligned write of
 * the same block must wait on the list.
 */
static void test_requests_listed_while_serialising(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *bs = filled_node();
    BdrvChild *c = test_child_new(bs);
    Req a = { c, 100, 200, 0xa0, -1, false };
    Req b = { c, 0, ALIGN, 0xb0, -1, false };
    pthread_t ta, tb;

    mem_gate_close(bs, 1 << MEM_OP_WRITE);
    pthread_create(&ta, NULL, req_thread, &a);
    WAIT_FOR(mem_gate_parked(bs) == 1, "A's RMW write at the gate");
    pthread_create(&tb, NULL, req_thread, &b);
    bool waited = false;
    for (int i = 0; i < 2000 && !waited && mem_gate_parked(bs) < 2; i++) {
        pthread_mutex_lock(&bs->reqs_lock);
        for (BdrvTrackedRequest *r = bs->tracked_reqs; r; r = r->next) {
            waited |= r->waiting_for != NULL;
        }
        pthread_mutex_unlock(&bs->reqs_lock);
        usleep(500);
    }
    int parked = mem_gate_parked(bs);
    mem_gate_open(bs);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    assert_true(waited);
    assert_int_equal(parked, 1);
    uint8_t got[ALIGN];
    mem_read_raw(bs, 0, got, sizeof(got));
    assert_true(test_buf_is(got, ALIGN, 0xb0));
    test_child_free(c);
    bdrv_unref(bs);
}

/*
 * Many rounds of an aligned write of block 0 (thread A) against an RMW of
 * [100, 300) in it (thread B), started together, with the driver yielding
 * halfway through every copy.  Whichever begins first, the other must wait:
 * the block ends as A-then-B or B-then-A, never torn or with an update lost.
 */
#define RACE_ROUNDS 200

typedef struct {
    Req req;
    pthread_barrier_t *round;
} Racer;

static void *racer_thread(void *opaque)
{
    Racer *r = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    for (int i = 0; i < RACE_ROUNDS; i++) {
        pthread_barrier_wait(r->round);            /* round i starts */
        r->req.byte = (r->req.offset ? 0x80 : 0x00) + (i % 100);
        __atomic_store_n(&r->req.done, false, __ATOMIC_SEQ_CST);
        co_enter(co_create(do_req, &r->req));
        AIO_WAIT_WHILE(ctx, !__atomic_load_n(&r->req.done, __ATOMIC_SEQ_CST));
        pthread_barrier_wait(r->round);            /* round i done */
        pthread_barrier_wait(r->round);            /* main has checked */
    }
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

static void test_unlisted_against_rmw_race(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *bs = filled_node();
    mem_set_yield(bs, (1 << MEM_OP_READ) | (1 << MEM_OP_WRITE));
    BdrvChild *c = test_child_new(bs);
    pthread_barrier_t round;
    pthread_barrier_init(&round, NULL, 3);
    Racer a = { { c, 0, ALIGN, 0, -1, false }, &round };
    Racer b = { { c, 100, 200, 0, -1, false }, &round };
    pthread_t ta, tb;
    pthread_create(&ta, NULL, racer_thread, &a);
    pthread_create(&tb, NULL, racer_thread, &b);
    int a_first = 0, b_first = 0;
    for (int i = 0; i < RACE_ROUNDS; i++) {
        pthread_barrier_wait(&round);
        pthread_barrier_wait(&round);
        assert_int_equal(a.req.ret, 0);
        assert_int_equal(b.req.ret, 0);
        uint8_t got[ALIGN], ab[ALIGN], ba[ALIGN];
        int va = i % 100, vb = 0x80 + i % 100;
        memset(ab, va, ALIGN);
        memset(ab + 100, vb, 200);
        memset(ba, va, ALIGN);
        mem_read_raw(bs, 0, got, ALIGN);
        if (!memcmp(got, ab, ALIGN)) {
            a_first++;
        } else if (!memcmp(got, ba, ALIGN)) {
            b_first++;
        } else {
            fail_msg("round %d: block 0 is neither A-then-B nor B-then-A "
                     "(bytes 0, 100, 256, 300, 511: %02x %02x %02x %02x %02x)", i,
                     got[0], got[100], got[256], got[300], got[511]);
        }
        pthread_barrier_wait(&round);
    }
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&round);
    assert_int_equal(a_first + b_first, RACE_ROUNDS);
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
        cmocka_unit_test(test_thread_slots_distinct_and_returned),
        cmocka_unit_test(test_drain_waits_for_other_thread),
        cmocka_unit_test(test_in_flight_moves_between_threads),
        cmocka_unit_test(test_plain_requests_unlisted),
        cmocka_unit_test(test_serialising_waits_for_unlisted),
        cmocka_unit_test(test_requests_listed_while_serialising),
        cmocka_unit_test(test_unlisted_against_rmw_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
