/* test-rbd-name.c - the rbd protocol's filename parser (QEMU 7.2's syntax and
 * escaping) and the open errors that come before any cluster is contacted. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#include "../../drivers/rbd-int.h"

static RbdSpec parse_ok(const char *name)
{
    RbdSpec s;
    Error *err = NULL;
    int r = rbd_parse_filename(name, &s, &err);
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", name, error_get_pretty(err));
        error_free(err);
    }
    assert_int_equal(r, 0);
    return s;
}

static void assert_str_or_null(const char *got, const char *want)
{
    if (!want) {
        assert_null(got);
    } else {
        assert_non_null(got);
        assert_string_equal(got, want);
    }
}

static void test_plain(void **state)
{
    (void)state;
    RbdSpec s = parse_ok("rbd:rbd/disk");
    assert_string_equal(s.pool, "rbd");
    assert_string_equal(s.image, "disk");
    assert_null(s.ns);
    assert_null(s.snap);
    assert_null(s.conf);
    assert_null(s.user);
    assert_int_equal(s.nkv, 0);
    rbd_spec_free(&s);
}

static void test_all_parts(void **state)
{
    (void)state;
    RbdSpec s = parse_ok("rbd:pool/ns1/img@snap1:conf=/etc/ceph/x.conf:id=bob:mon_host=10.0.0.1"
                         ":rbd_cache=false");
    assert_string_equal(s.pool, "pool");
    assert_string_equal(s.ns, "ns1");
    assert_string_equal(s.image, "img");
    assert_string_equal(s.snap, "snap1");
    assert_string_equal(s.conf, "/etc/ceph/x.conf");
    assert_string_equal(s.user, "bob");
    assert_int_equal(s.nkv, 2);
    assert_string_equal(s.keys[0], "mon_host");
    assert_string_equal(s.values[0], "10.0.0.1");
    assert_string_equal(s.keys[1], "rbd_cache");
    assert_string_equal(s.values[1], "false");
    rbd_spec_free(&s);
}

static void test_escapes(void **state)
{
    (void)state;
    /* \: keeps a ':' in a value (a mon address with its port), \@ and \/ in
     * names, \\ a backslash. */
    RbdSpec s = parse_ok("rbd:p\\/q/im\\:g\\@x\\\\:mon_host=[\\:\\:1]\\:6789\\,127.0.0.1\\:3300");
    assert_string_equal(s.pool, "p/q");
    assert_string_equal(s.image, "im:g@x\\");
    assert_null(s.snap);
    assert_null(s.ns);
    assert_int_equal(s.nkv, 1);
    assert_string_equal(s.values[0], "[::1]:6789,127.0.0.1:3300");
    rbd_spec_free(&s);

    s = parse_ok("rbd:rbd/img@s\\:1:id=a\\:b");
    assert_string_equal(s.snap, "s:1");
    assert_string_equal(s.user, "a:b");
    rbd_spec_free(&s);
}

static void test_at_in_conf_is_not_a_snapshot(void **state)
{
    (void)state;
    /* QEMU would take "conf=/tmp/a" as part of the image and "b" as the
     * snapshot; the snapshot is only looked for in the image part. */
    RbdSpec s = parse_ok("rbd:rbd/img:conf=/tmp/a@b");
    assert_string_equal(s.image, "img");
    assert_null(s.snap);
    assert_string_equal(s.conf, "/tmp/a@b");
    rbd_spec_free(&s);
}

static void test_namespace_and_empty_parts(void **state)
{
    (void)state;
    /* The first '/' after the pool splits namespace from image. */
    RbdSpec s = parse_ok("rbd:p/ns/a/b");
    assert_string_equal(s.ns, "ns");
    assert_string_equal(s.image, "a/b");
    rbd_spec_free(&s);
    /* Empty parts parse; the open names what is missing. */
    s = parse_ok("rbd:p/");
    assert_string_equal(s.image, "");
    rbd_spec_free(&s);
    s = parse_ok("rbd:p/img@");
    assert_str_or_null(s.snap, "");
    rbd_spec_free(&s);
    /* The last conf= / id= counts, as in QEMU. */
    s = parse_ok("rbd:p/i:id=a:id=b");
    assert_string_equal(s.user, "b");
    rbd_spec_free(&s);
}

static void parse_fails(const char *name, const char *msg)
{
    RbdSpec s;
    Error *err = NULL;
    assert_int_equal(rbd_parse_filename(name, &s, &err), -EINVAL);
    assert_non_null(err);
    assert_string_equal(error_get_pretty(err), msg);
    error_free(err);
    /* Nothing is left allocated or half set. */
    assert_null(s.pool);
    assert_null(s.image);
    assert_int_equal(s.nkv, 0);
}

static void test_errors(void **state)
{
    (void)state;
    parse_fails("rbd:pool", "Pool name is required");
    parse_fails("rbd:", "Pool name is required");
    parse_fails("rbd:p\\/i", "Pool name is required");
    parse_fails("file:/x", "File name must start with 'rbd:'");
    parse_fails("rbd:p/i:mon_host", "conf option mon_host has no value");
    parse_fails("rbd:p/i:id=a:x", "conf option x has no value");
    parse_fails("rbd:p/i:=v", "rbd: an empty option name in the filename");
}

static void test_hostile_names(void **state)
{
    (void)state;
    /* A trailing backslash escapes nothing; long and odd names do not crash. */
    RbdSpec s = parse_ok("rbd:p/i\\");
    assert_string_equal(s.image, "i\\");
    rbd_spec_free(&s);
    char big[70000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "rbd:p/", 6);
    for (size_t i = 100; i < sizeof(big) - 10; i += 97) {
        big[i] = (char[]){ ':', '@', '/', '\\', '=' }[i % 5];
    }
    Error *err = NULL;
    if (rbd_parse_filename(big, &s, &err) == 0) {
        assert_non_null(s.pool);
        rbd_spec_free(&s);
    } else {
        error_free(err);
    }
}

static void open_fails(const char *filename, const char *opts, int flags, const char *msg)
{
    OptDict *o = optdict_parse(opts, NULL, NULL);
    Error *err = NULL;
    optdict_set(o, "driver", "rbd");
    if (filename) {
        optdict_set(o, "filename", filename);
    }
    BlockDriverState *bs = bdrv_open(NULL, o, flags, &err);
    assert_null(bs);
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), msg)) {
        fprintf(stderr, "got: %s\nwant: %s\n", error_get_pretty(err), msg);
        fail();
    }
    error_free(err);
}

/* Everything here fails before librados is asked to connect. */
static void test_open_errors(void **state)
{
    (void)state;
    test_loop_init();
    open_fails(NULL, "pool=rbd", 0, "rbd: no image name given");
    open_fails(NULL, "image=x", 0, "rbd: no pool name given");
    open_fails("rbd:p/", "", 0, "rbd: no image name given");
    open_fails("rbd:p/i@", "", 0, "rbd: no snapshot name given");
    open_fails("rbd:p/i", "pool=q", 0, "rbd: option 'pool' is 'q' but the filename says 'p'");
    open_fails("rbd:p/i@s1", "", BDRV_O_RDWR,
               "rbd: snapshot 's1' of p/i is read-only: open it read-only");
    open_fails(NULL, "pool=p,image=i,snapshot=s2", BDRV_O_RDWR,
               "rbd: snapshot 's2' of p/i is read-only");
    open_fails("rbd:p/i:conf=/nonexistent/ceph.conf", "", 0,
               "rbd: cannot read the Ceph configuration '/nonexistent/ceph.conf' for 'p/i'");
    open_fails("rbd:p/i:no_such_ceph_option=1", "", 0,
               "rbd: cannot set the Ceph option 'no_such_ceph_option' to '1' for 'p/i'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_all_parts),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_at_in_conf_is_not_a_snapshot),
        cmocka_unit_test(test_namespace_and_empty_parts),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_hostile_names),
        cmocka_unit_test(test_open_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
