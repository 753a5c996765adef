/* test-rbd-lib.c - librbd and librados are loaded at run time (rbd-lib.c):
 * not linked, a missing library or function is an Error naming it, and the
 * real libraries fill every entry of the table. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#include "../../drivers/rbd-int.h"

static void assert_error_starts(Error *err, const char *want)
{
    assert_non_null(err);
    if (strncmp(error_get_pretty(err), want, strlen(want)) != 0) {
        fprintf(stderr, "got: %s\nwant: %s...\n", error_get_pretty(err), want);
        fail();
    }
}

static void assert_table_empty(const RbdLib *lib)
{
    static const RbdLib zero;
    assert_memory_equal(lib, &zero, sizeof(zero));
}

/* First, before anything here loads them: the link did not (LDLIBS has no
 * -lrbd/-lrados), so a process that never opens rbd never pays for them. */
static void test_not_linked(void **state)
{
    (void)state;
    assert_null(dlopen(RBD_LIB_RBD_SONAME, RTLD_NOW | RTLD_NOLOAD));
    assert_null(dlopen(RBD_LIB_RADOS_SONAME, RTLD_NOW | RTLD_NOLOAD));
    assert_null(rbdlib.rbd_open);
}

static void test_missing_library(void **state)
{
    (void)state;
    RbdLib lib, global = rbdlib;
    Error *err = NULL;
    memset(&lib, 0xa5, sizeof(lib));
    assert_int_equal(rbd_lib_load_from(&lib, "libublkd-test-no-such-rados.so.2",
                                       RBD_LIB_RBD_SONAME, &err), -ELIBACC);
    assert_error_starts(err, "rbd: cannot load libublkd-test-no-such-rados.so.2 (");
    assert_non_null(strstr(error_get_pretty(err), "cannot open shared object file"));
    assert_table_empty(&lib);
    error_free(err);

    err = NULL;
    assert_int_equal(rbd_lib_load_from(&lib, RBD_LIB_RADOS_SONAME,
                                       "libublkd-test-no-such-rbd.so.1", &err), -ELIBACC);
    assert_error_starts(err, "rbd: cannot load libublkd-test-no-such-rbd.so.1 (");
    assert_table_empty(&lib);
    error_free(err);

    /* A path is a soname to dlopen too; a missing one fails the same way. */
    err = NULL;
    assert_int_equal(rbd_lib_load_from(&lib, "/nonexistent/librados.so.2", RBD_LIB_RBD_SONAME,
                                       &err), -ELIBACC);
    assert_error_starts(err, "rbd: cannot load /nonexistent/librados.so.2 (");
    error_free(err);
    /* The global table was not touched by any of it. */
    assert_memory_equal(&rbdlib, &global, sizeof(global));
}

/* A library that loads but lacks a function (an older librbd): named. */
static void test_missing_function(void **state)
{
    (void)state;
    RbdLib lib;
    Error *err = NULL;
    assert_int_equal(rbd_lib_load_from(&lib, RBD_LIB_RADOS_SONAME, "libz.so.1", &err), -ELIBACC);
    assert_error_starts(err, "rbd: libz.so.1 has no function rbd_open (");
    assert_table_empty(&lib);
    error_free(err);
}

static void coroutine_fn load_in_co(void *opaque)
{
    int *r = opaque;
    Error *err = NULL;
    *r = rbd_lib_load(&err);
    if (err) {
        fprintf(stderr, "%s\n", error_get_pretty(err));
        error_free(err);
    }
}

/* The first load in the process, from a coroutine (img create: co_create
 * runs in one): librados' constructors (get_global_options) overran its
 * stack and crashed the create.  Must run before anything else loads them. */
static void test_first_load_in_coroutine(void **state)
{
    (void)state;
    test_loop_init();
    int r = 1;
    test_run_co(load_in_co, &r);
    assert_int_equal(r, 0);
    assert_non_null(rbdlib.rbd_open);
}

static int thread_results[4];

static void *load_thread(void *opaque)
{
    int *r = opaque;
    Error *err = NULL;
    *r = rbd_lib_load(&err);
    if (err) {
        fprintf(stderr, "%s\n", error_get_pretty(err));
        error_free(err);
    }
    return NULL;
}

/* Several threads at once (two devices opening) all see the one result. */
static void test_load_concurrent(void **state)
{
    (void)state;
    pthread_t t[ARRAY_SIZE(thread_results)];
    for (size_t i = 0; i < ARRAY_SIZE(t); i++) {
        thread_results[i] = 1;
        assert_int_equal(pthread_create(&t[i], NULL, load_thread, &thread_results[i]), 0);
    }
    for (size_t i = 0; i < ARRAY_SIZE(t); i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(thread_results[i], 0);
    }
    assert_int_equal(rbd_lib_load(NULL), 0);
}

/* Every entry is filled, with the function of the library it names. */
static void test_real_table(void **state)
{
    (void)state;
    RbdLib lib;
    Error *err = NULL;
    int r = rbd_lib_load_from(&lib, RBD_LIB_RADOS_SONAME, RBD_LIB_RBD_SONAME, &err);
    if (r < 0) {
        fprintf(stderr, "%s\n", error_get_pretty(err));
    }
    assert_int_equal(r, 0);
    void *rados = dlopen(RBD_LIB_RADOS_SONAME, RTLD_NOW | RTLD_NOLOAD);
    void *rbd = dlopen(RBD_LIB_RBD_SONAME, RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(rados);
    assert_non_null(rbd);
    size_t n = 0;
#define CHECK(h, fn)                                                           \
    do {                                                                       \
        assert_non_null(lib.fn);                                               \
        assert_ptr_equal((void *)lib.fn, dlsym(h, #fn));                       \
        assert_ptr_equal((void *)rbdlib.fn, (void *)lib.fn);                   \
        n++;                                                                   \
    } while (0);
#define CHECK_RADOS(fn) CHECK(rados, fn)
#define CHECK_RBD(fn) CHECK(rbd, fn)
    RBD_LIB_RADOS_SYMBOLS(CHECK_RADOS)
    RBD_LIB_RBD_SYMBOLS(CHECK_RBD)
    /* ...and the lists name every entry the table has. */
    assert_int_equal(n * sizeof(void (*)(void)), sizeof(RbdLib));
    dlclose(rbd);
    dlclose(rados);

    /* A call through the table, no cluster needed. */
    rados_t cluster;
    assert_int_equal(rbdlib.rados_create(&cluster, NULL), 0);
    assert_int_equal(rbdlib.rados_conf_set(cluster, "rbd_cache", "false"), 0);
    assert_int_equal(rbdlib.rados_conf_set(cluster, "no_such_ceph_option", "1"), -ENOENT);
    rbdlib.rados_shutdown(cluster);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_linked),
        cmocka_unit_test(test_first_load_in_coroutine),
        cmocka_unit_test(test_missing_library),
        cmocka_unit_test(test_missing_function),
        cmocka_unit_test(test_load_concurrent),
        cmocka_unit_test(test_real_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
