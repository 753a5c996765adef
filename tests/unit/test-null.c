/* test-null.c - the null protocol: size, read-zeroes, latency, status, options. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

static BlockDriverState *open_null(const char *opts, int flags, Error **errp)
{
    OptDict *o = optdict_parse(opts, NULL, NULL);
    optdict_set(o, "driver", "null");
    return bdrv_open(NULL, o, flags, errp);
}

static void test_defaults(void **state)
{
    (void)state;
    test_loop_init();
    Error *err = NULL;
    BlockDriverState *bs = open_null("", BDRV_O_RDWR, &err);
    assert_non_null(bs);
    assert_int_equal(bdrv_getlength(bs), 1 * GiB);
    assert_int_equal(bdrv_has_zero_init(bs), 1);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[4096];
    memset(buf, 0xAA, sizeof(buf));
    assert_int_equal(bdrv_pread(c, 512 * MiB, sizeof(buf), buf, 0), 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0));
    assert_int_equal(bdrv_pwrite(c, 0, sizeof(buf), buf, BDRV_REQ_FUA), 0);
    assert_int_equal(bdrv_pwrite_zeroes(c, 0, 1 * MiB, BDRV_REQ_MAY_UNMAP), 0);
    assert_int_equal(bdrv_flush(bs), 0);
    test_child_free(c);
    bdrv_unref(bs);

    /* The protocol name as a file name, as QEMU spells it. */
    bs = bdrv_open("null-co://", NULL, BDRV_O_PROTOCOL, &err);
    assert_non_null(bs);
    assert_string_equal(bdrv_get_format_name(bs), "null");
    bdrv_unref(bs);
}

static void test_read_zeroes_off(void **state)
{
    (void)state;
    Error *err = NULL;
    BlockDriverState *bs = open_null("size=1M,read-zeroes=off", 0, &err);
    assert_non_null(bs);
    assert_int_equal(bdrv_getlength(bs), 1 * MiB);
    assert_int_equal(bdrv_has_zero_init(bs), 0);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[4096];
    memset(buf, 0xAA, sizeof(buf));
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0xAA));   /* untouched */
    /* Opened read-only: writes fail. */
    int ret = bdrv_pwrite(c, 0, sizeof(buf), buf, 0);
    assert_true(ret == -EPERM || ret == -EACCES);
    test_child_free(c);
    bdrv_unref(bs);
}

typedef struct Status {
    BlockDriverState *bs;
    int64_t pnum, map;
    BlockDriverState *file;
    int ret;
} Status;

static void coroutine_fn status_entry(void *opaque)
{
    Status *s = opaque;
    s->ret = s->bs->drv->co_block_status(s->bs, true, 4096, 8192, &s->pnum, &s->map, &s->file);
}

static void test_block_status(void **state)
{
    (void)state;
    Error *err = NULL;
    BlockDriverState *bs = open_null("size=1M", 0, &err);
    Status s = { .bs = bs };
    test_run_co(status_entry, &s);
    assert_int_equal(s.ret, BDRV_BLOCK_ZERO | BDRV_BLOCK_OFFSET_VALID);
    assert_int_equal(s.pnum, 8192);
    assert_int_equal(s.map, 4096);
    assert_ptr_equal(s.file, bs);
    bdrv_unref(bs);

    bs = open_null("size=1M,read-zeroes=off", 0, &err);
    s = (Status){ .bs = bs };
    test_run_co(status_entry, &s);
    assert_int_equal(s.ret, BDRV_BLOCK_OFFSET_VALID);
    bdrv_unref(bs);
}

static void test_latency(void **state)
{
    (void)state;
    Error *err = NULL;
    BlockDriverState *bs = open_null("size=1M,latency-ns=20000000", 0, &err);
    assert_non_null(bs);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[512];
    int64_t t0 = clock_monotonic_ns();
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    int64_t dt = clock_monotonic_ns() - t0;
    assert_true(dt >= 20000000);
    assert_true(dt < 2000000000);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_option_errors(void **state)
{
    (void)state;
    Error *err = NULL;
    assert_null(open_null("size=1M,foo=1", 0, &err));
    assert_string_equal(error_get_pretty(err), "Block protocol 'null' does not support the option 'foo'");
    error_free(err);
    err = NULL;
    assert_null(open_null("latency-ns=-5", 0, &err));
    assert_string_equal(error_get_pretty(err), "null: latency-ns must be >= 0, got -5");
    error_free(err);
    err = NULL;
    assert_null(open_null("size=huge", 0, &err));
    assert_non_null(strstr(error_get_pretty(err), "Invalid value 'huge' for option 'size'"));
    error_free(err);
    err = NULL;
    assert_null(open_null("read-zeroes=sometimes", 0, &err));
    assert_non_null(strstr(error_get_pretty(err), "'sometimes' for option 'read-zeroes'"));
    error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_read_zeroes_off),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_latency),
        cmocka_unit_test(test_option_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
