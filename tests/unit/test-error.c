/* test-error.c - error objects: messages, errno codes, prepend, propagate. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>
#include "error.h"

static void test_setg_message(void **state)
{
    (void)state;
    Error *err = NULL;
    error_setg(&err, "vdi: '%s': unsupported block size %d", "d.vdi", 65536);
    assert_non_null(err);
    assert_string_equal(error_get_pretty(err), "vdi: 'd.vdi': unsupported block size 65536");
    assert_int_equal(error_get_errno(err), EINVAL);
    error_free(err);
}

static void test_setg_errno_appends_strerror(void **state)
{
    (void)state;
    Error *err = NULL;
    error_setg_errno(&err, -ENOENT, "Could not open '%s'", "x.img");
    assert_string_equal(error_get_pretty(err), "Could not open 'x.img': No such file or directory");
    assert_int_equal(error_get_errno(err), ENOENT);
    error_free(err);
}

static void test_setg_code_keeps_message(void **state)
{
    (void)state;
    Error *err = NULL;
    error_setg_code(&err, EAGAIN, "Failed to get \"%s\" lock", "write");
    assert_string_equal(error_get_pretty(err), "Failed to get \"write\" lock");
    assert_int_equal(error_get_errno(err), EAGAIN);
    /* A second set must not change the first error's message or code. */
    error_setg_code(&err, EBUSY, "second");
    assert_string_equal(error_get_pretty(err), "Failed to get \"write\" lock");
    assert_int_equal(error_get_errno(err), EAGAIN);
    error_free(err);
}

static void test_null_errp_is_ignored(void **state)
{
    (void)state;
    error_setg(NULL, "nobody listens");
    error_setg_code(NULL, EAGAIN, "nobody listens");
    error_prepend(NULL, "x");
}

static void test_prepend_and_propagate(void **state)
{
    (void)state;
    Error *local = NULL, *dst = NULL;
    error_setg(&local, "bad header");
    error_prepend(&local, "%s: ", "disk.vdi");
    error_propagate(&dst, local);
    assert_ptr_equal(dst, local);
    assert_string_equal(error_get_pretty(dst), "disk.vdi: bad header");
    /* Propagating into an already set error keeps the first one. */
    Error *other = NULL;
    error_setg(&other, "later");
    error_propagate(&dst, other);
    assert_string_equal(error_get_pretty(dst), "disk.vdi: bad header");
    error_free(dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_setg_message),
        cmocka_unit_test(test_setg_errno_appends_strerror),
        cmocka_unit_test(test_setg_code_keeps_message),
        cmocka_unit_test(test_null_errp_is_ignored),
        cmocka_unit_test(test_prepend_and_propagate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
