/*
 * test-block-io-max-iov.c - padding never hands a driver more iovec elements
 * than its max_iov: when the head/tail bounce elements would push the vector
 * over the limit, the trailing elements are merged into one bounce buffer
 * (copied in before a write, out after a read).  The mem driver fails any
 * call whose vector is longer than its max_iov, as preadv(2) does.
 */
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

#define NPIECES 6
static const size_t piece_len[NPIECES] = { 100, 200, 300, 50, 400, 150 };   /* 1200 */
#define TOTAL 1200

/* A caller vector of NPIECES separate allocations over one logical buffer. */
typedef struct {
    struct iovec iov[NPIECES];
    IOVector q;
} Pieces;

static void pieces_init(Pieces *p, int n)
{
    size_t size = 0;
    for (int i = 0; i < n; i++) {
        p->iov[i].iov_base = malloc(piece_len[i]);
        p->iov[i].iov_len = piece_len[i];
        size += piece_len[i];
    }
    p->q = (IOVector){ .iov = p->iov, .niov = n, .nalloc = -1, .size = size };
}

static void pieces_free(Pieces *p)
{
    for (int i = 0; i < p->q.niov; i++) {
        free(p->iov[i].iov_base);
    }
}

typedef struct {
    BdrvChild *c;
    int64_t offset;
    IOVector *q;
    bool write;
    int ret;
} VecReq;

static void coroutine_fn vec_entry(void *opaque)
{
    VecReq *r = opaque;
    r->ret = r->write ? bdrv_co_pwritev(r->c, r->offset, r->q->size, r->q, 0)
                      : bdrv_co_preadv(r->c, r->offset, r->q->size, r->q, 0);
}

static int vec_io(BdrvChild *c, int64_t offset, IOVector *q, bool write)
{
    VecReq r = { c, offset, q, write, -1 };
    test_run_co(vec_entry, &r);
    return r.ret;
}

/* Write a pattern through an n-piece vector at offset (unaligned at both
 * ends), check the image, read it back through another n-piece vector. */
static void roundtrip(int max_iov, int n, int64_t offset, int expect_niov)
{
    MemConfig cfg = { .size = 64 * KiB, .request_alignment = 512, .max_iov = max_iov };
    BlockDriverState *bs = mem_node_new(&cfg);
    mem_fill(bs, 0, 64 * KiB, 0x11);
    BdrvChild *c = test_child_new(bs);
    Pieces w, r;
    uint8_t pattern[TOTAL], got[TOTAL + 1024];
    size_t len = 0;

    pieces_init(&w, n);
    pieces_init(&r, n);
    len = w.q.size;
    test_pattern(pattern, len, 42);
    iov_from_buf(&w.q, 0, pattern, len);

    assert_int_equal(vec_io(c, offset, &w.q, true), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_WRITE), 1);
    assert_int_equal(mem_log(bs, MEM_OP_WRITE, 0)->niov, expect_niov);
    mem_read_raw(bs, offset - 512, got, len + 1024);
    assert_true(test_buf_is(got, 512, 0x11));
    assert_memory_equal(got + 512, pattern, len);
    assert_true(test_buf_is(got + 512 + len, 512, 0x11));

    mem_log_clear(bs);
    assert_int_equal(vec_io(c, offset, &r.q, false), 0);
    assert_int_equal(mem_calls(bs, MEM_OP_READ), 1);
    assert_int_equal(mem_log(bs, MEM_OP_READ, 0)->niov, expect_niov);
    iov_to_buf(&r.q, 0, got, len);
    assert_memory_equal(got, pattern, len);

    pieces_free(&w);
    pieces_free(&r);
    test_child_free(c);
    bdrv_unref(bs);
}

/* 6 pieces + head + tail = 8 > 4: pieces 3.. merge with the tail. */
static void test_padding_merges_tail_over_max_iov(void **state)
{
    (void)state;
    roundtrip(4, NPIECES, 4096 + 300, 4);
}

/* 2 pieces + head + tail = 4 = max_iov: the caller's buffers stay in place. */
static void test_padding_within_max_iov_not_merged(void **state)
{
    (void)state;
    roundtrip(4, 2, 4096 + 300, 4);
}

/* max_iov 1: head bounce, the data and the tail bounce all become one. */
static void test_padding_max_iov_one(void **state)
{
    (void)state;
    roundtrip(1, NPIECES, 4096 + 300, 1);
}

/* Only a tail to pad (the head is aligned): 6 + 1 = 7 > 3. */
static void test_tail_only_padding(void **state)
{
    (void)state;
    roundtrip(3, NPIECES, 4096, 3);
}

/* The default (no limit from the driver) is IOV_MAX: nothing merges. */
static void test_no_limit_keeps_vector(void **state)
{
    (void)state;
    roundtrip(0, NPIECES, 4096 + 300, NPIECES + 2);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_padding_merges_tail_over_max_iov),
        cmocka_unit_test(test_padding_within_max_iov_not_merged),
        cmocka_unit_test(test_padding_max_iov_one),
        cmocka_unit_test(test_tail_only_padding),
        cmocka_unit_test(test_no_limit_keeps_vector),
    };
    return cmocka_run_group_tests_name("block-io-max-iov", tests, NULL, NULL);
}
