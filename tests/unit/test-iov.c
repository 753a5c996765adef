/*
 * test-iov.c - IOVector: storage modes, merging, slicing, copies, zero checks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "iov.h"

static void test_inline_and_growth(void **state)
{
    (void)state;
    IOVector q;
    static char bufs[100][8];

    iov_init(&q, 0);
    assert_int_equal(q.niov, 0);
    iov_add(&q, bufs[0], 8);
    assert_int_equal(q.nalloc, 0);          /* one element stays inline */
    assert_ptr_equal(q.iov, &q.local);
    /* Every other buffer so nothing merges: 50 separate elements. */
    for (int i = 2; i < 100; i += 2) {
        iov_add(&q, bufs[i], 8);
    }
    assert_int_equal(q.niov, 50);
    assert_true(q.nalloc >= 50);
    assert_int_equal(q.size, 400);
    assert_ptr_equal(q.iov[0].iov_base, bufs[0]);
    assert_ptr_equal(q.iov[49].iov_base, bufs[98]);
    assert_int_equal(iov_size(q.iov, q.niov), 400);
    iov_reset(&q);
    assert_int_equal(q.niov, 0);
    assert_int_equal(q.size, 0);
    iov_destroy(&q);
}

static void test_merge_adjacent(void **state)
{
    (void)state;
    char buf[64];
    IOVector q;
    iov_init(&q, 4);
    iov_add(&q, buf, 16);
    iov_add(&q, buf + 16, 16);
    iov_add(&q, buf + 40, 8);
    iov_add(&q, buf + 48, 0);                /* empty adds are ignored */
    assert_int_equal(q.niov, 2);
    assert_int_equal(q.iov[0].iov_len, 32);
    assert_int_equal(q.size, 40);
    iov_destroy(&q);
}

static void test_init_buf_and_external(void **state)
{
    (void)state;
    char a[10], b[20];
    IOVector q;
    iov_init_buf(&q, a, sizeof(a));
    assert_int_equal(q.niov, 1);
    assert_int_equal(q.size, 10);
    assert_ptr_equal(q.iov[0].iov_base, a);
    iov_destroy(&q);

    struct iovec v[2] = { { a, 10 }, { b, 20 } };
    iov_init_external(&q, v, 2);
    assert_int_equal(q.nalloc, -1);
    assert_int_equal(q.size, 30);
    assert_ptr_equal(q.iov, v);
    iov_destroy(&q);                          /* must not free v */
    assert_ptr_equal(v[1].iov_base, b);
}

static void test_slice(void **state)
{
    (void)state;
    /* Gaps between the buffers so that nothing merges by accident. */
    static char mem[100];
    char *a = mem, *b = mem + 20, *c = mem + 50;
    struct iovec v[3] = { { a, 10 }, { b, 20 }, { c, 30 } };
    IOVector src, s;
    iov_init_external(&src, v, 3);

    /* Inside one element: inline, no allocation. */
    iov_init_slice(&s, &src, 12, 5);
    assert_int_equal(s.niov, 1);
    assert_int_equal(s.nalloc, 0);
    assert_ptr_equal(s.iov[0].iov_base, b + 2);
    assert_int_equal(s.size, 5);
    iov_destroy(&s);

    /* Across all three. */
    iov_init_slice(&s, &src, 5, 40);
    assert_int_equal(s.niov, 3);
    assert_ptr_equal(s.iov[0].iov_base, a + 5);
    assert_int_equal(s.iov[0].iov_len, 5);
    assert_int_equal(s.iov[1].iov_len, 20);
    assert_ptr_equal(s.iov[2].iov_base, c);
    assert_int_equal(s.iov[2].iov_len, 15);
    assert_int_equal(s.size, 40);

    /* Slice of a slice. */
    IOVector s2;
    iov_init_slice(&s2, &s, 4, 2);
    assert_int_equal(s2.niov, 2);
    assert_ptr_equal(s2.iov[0].iov_base, a + 9);
    assert_ptr_equal(s2.iov[1].iov_base, b);
    iov_destroy(&s2);
    iov_destroy(&s);

    /* concat appends pieces after existing content. */
    IOVector q;
    iov_init(&q, 0);
    iov_add(&q, c + 29, 1);
    iov_concat(&q, &src, 0, 3);
    assert_int_equal(q.niov, 2);
    assert_int_equal(q.size, 4);
    assert_ptr_equal(q.iov[1].iov_base, a);
    iov_destroy(&q);
}

static void test_copy_memset_zero(void **state)
{
    (void)state;
    static char mem[40];
    char *a = mem, *b = mem + 10, *c = mem + 30;
    struct iovec v[3] = { { a, 7 }, { b, 13 }, { c, 5 } };
    IOVector q;
    iov_init_external(&q, v, 3);

    char in[25], out[25];
    for (int i = 0; i < 25; i++) {
        in[i] = (char)(i + 1);
    }
    assert_int_equal(iov_from_buf(&q, 0, in, 25), 25);
    assert_int_equal(a[0], 1);
    assert_int_equal(b[0], 8);
    assert_int_equal(c[4], 25);
    memset(out, 0, sizeof(out));
    assert_int_equal(iov_to_buf(&q, 5, out, 10), 10);
    assert_memory_equal(out, in + 5, 10);
    /* Copies stop at the end of the vector. */
    assert_int_equal(iov_to_buf(&q, 20, out, 100), 5);
    assert_int_equal(iov_to_buf(&q, 30, out, 10), 0);

    assert_false(iov_is_zero(&q, 0, 25));
    assert_int_equal(iov_memset(&q, 6, 0, 15), 15);
    assert_true(iov_is_zero(&q, 6, 15));
    assert_false(iov_is_zero(&q, 5, 15));
    assert_false(iov_is_zero(&q, 6, 16));
    assert_int_equal(a[5], 6);
    assert_int_equal(c[1], 22);
}

static void test_buffer_is_zero(void **state)
{
    (void)state;
    size_t lens[] = { 0, 1, 15, 16, 17, 63, 64, 65, 4096, 65536 + 3 };
    for (size_t i = 0; i < ARRAY_SIZE(lens); i++) {
        size_t len = lens[i];
        unsigned char *buf = calloc(1, len + 1);
        assert_true(buffer_is_zero(buf, len));
        /* A single set byte anywhere must be found. */
        size_t pos[] = { 0, len / 2, len ? len - 1 : 0 };
        for (size_t j = 0; j < ARRAY_SIZE(pos) && len; j++) {
            buf[pos[j]] = 0x80;
            assert_false(buffer_is_zero(buf, len));
            buf[pos[j]] = 0;
        }
        buf[len] = 1;                        /* just past the end: ignored */
        assert_true(buffer_is_zero(buf, len));
        free(buf);
    }
}

/* Every length and misalignment around the vector loop's edges: exactly
 * [off, off+len) becomes zero, the guard bytes around it stay. */
static void test_buffer_zero(void **state)
{
    (void)state;
    static unsigned char buf[70000];
    static const size_t lens[] = { 0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 4095, 4096,
                                   4097, 65535, 65536, 65537, 69000 };
    for (size_t off = 0; off < 17; off++) {
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
            size_t len = lens[i];
            if (off + len + 1 > sizeof(buf)) {
                continue;
            }
            memset(buf, 0x5a, off + len + 1);
            buffer_zero(buf + off, len);
            for (size_t j = 0; j < off + len + 1; j++) {
                bool in = j >= off && j < off + len;
                if (buf[j] != (in ? 0 : 0x5a)) {
                    fail_msg("off %zu len %zu: byte %zu is 0x%02x", off, len, j, buf[j]);
                }
            }
        }
    }
}

static void test_aligned_alloc(void **state)
{
    (void)state;
    for (size_t align = 8; align <= 65536; align *= 4) {
        void *p = aligned_alloc_or_die(align, 3 * align + 1);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % align, 0);
        memset(p, 0xaa, 3 * align + 1);
        free(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inline_and_growth),
        cmocka_unit_test(test_merge_adjacent),
        cmocka_unit_test(test_init_buf_and_external),
        cmocka_unit_test(test_slice),
        cmocka_unit_test(test_copy_memset_zero),
        cmocka_unit_test(test_buffer_is_zero),
        cmocka_unit_test(test_buffer_zero),
        cmocka_unit_test(test_aligned_alloc),
    };
    return cmocka_run_group_tests_name("iov", tests, NULL, NULL);
}
