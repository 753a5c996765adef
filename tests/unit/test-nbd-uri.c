/* test-nbd-uri.c - the nbd driver's server addresses: QEMU's URL forms and
 * server.* / export options, their errors, and the tls-creds objects. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#include "../../drivers/nbd-int.h"

static void url_ok(const char *url, bool is_unix, const char *host, const char *port,
                   const char *path, const char *export_name)
{
    NbdAddr a;
    Error *err = NULL;
    assert_int_equal(nbd_parse_url(url, &a, &err), 0);
    assert_null(err);
    assert_int_equal(a.is_unix, is_unix);
    if (host) {
        assert_string_equal(a.host, host);
        assert_string_equal(a.port, port);
    } else {
        assert_null(a.host);
        assert_string_equal(a.path, path);
    }
    assert_string_equal(a.export_name, export_name);
    nbd_addr_free(&a);
}

static void url_bad(const char *url, const char *msg)
{
    NbdAddr a;
    Error *err = NULL;
    assert_int_equal(nbd_parse_url(url, &a, &err), -EINVAL);
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), msg)) {
        fail_msg("'%s': got '%s', want '%s'", url, error_get_pretty(err), msg);
    }
    /* the message names the URL */
    assert_non_null(strstr(error_get_pretty(err), url));
    error_free(err);
}

static void test_urls(void **state)
{
    (void)state;
    url_ok("nbd://localhost/exp", false, "localhost", "10809", NULL, "exp");
    url_ok("nbd://127.0.0.1:1234/a/b", false, "127.0.0.1", "1234", NULL, "a/b");
    url_ok("nbd+tcp://h:1/", false, "h", "1", NULL, "");
    url_ok("nbd://h", false, "h", "10809", NULL, "");
    url_ok("nbd://[::1]:99/e%20x", false, "::1", "99", NULL, "e x");
    url_ok("nbd://[fe80::1]/x", false, "fe80::1", "10809", NULL, "x");
    url_ok("nbd+unix:///exp?socket=/tmp/s.sock", true, NULL, NULL, "/tmp/s.sock", "exp");
    url_ok("nbd+unix://?socket=/tmp/a%3Fb", true, NULL, NULL, "/tmp/a?b", "");
}

static void test_url_errors(void **state)
{
    (void)state;
    url_bad("http://h/x", "unknown scheme");
    url_bad("nbd://", "no server host");
    url_bad("nbd://:10809/x", "no server host");
    url_bad("nbd://h:0/x", "bad port '0'");
    url_bad("nbd://h:65536/x", "bad port");
    url_bad("nbd://h:12a/x", "bad port");
    url_bad("nbd://[::1/x", "unterminated '['");
    url_bad("nbd://[::1]x/x", "junk after the host");
    url_bad("nbd+unix:///x", "needs ?socket=PATH");
    url_bad("nbd+unix://host/x?socket=/s", "takes no host");
    url_bad("nbd://h/x?socket=/s", "unexpected query parameter 'socket=/s'");
    url_bad("nbd+unix:///x?socket=/a&socket=/b", "unexpected query parameter");
    url_bad("nbd://h/x%zz", "bad %-escape");
    url_bad("nbd://h/x%00y", "bad %-escape");
    url_bad("nbd://h/x%4", "bad %-escape");
    url_bad("nbd://h/x#frag", "fragment");
}

static int from_opts(const char *s, NbdAddr *a, Error **errp)
{
    OptDict *o = optdict_parse(s, NULL, NULL);
    assert_non_null(o);
    int r = nbd_addr_from_options(o, a, errp);
    /* everything about the address is taken */
    if (r == 0) {
        assert_false(optdict_has(o, "server.type") || optdict_has(o, "export") ||
                     optdict_has(o, "filename"));
    }
    optdict_free(o);
    return r;
}

static void opts_bad(const char *s, const char *msg)
{
    NbdAddr a;
    Error *err = NULL;
    assert_int_equal(from_opts(s, &a, &err), -EINVAL);
    if (!strstr(error_get_pretty(err), msg)) {
        fail_msg("'%s': got '%s', want '%s'", s, error_get_pretty(err), msg);
    }
    error_free(err);
}

static void test_options(void **state)
{
    (void)state;
    NbdAddr a;
    Error *err = NULL;
    assert_int_equal(from_opts("server.type=inet,server.host=h,server.port=77,export=e", &a, &err), 0);
    assert_false(a.is_unix);
    assert_string_equal(a.host, "h");
    assert_string_equal(a.port, "77");
    assert_string_equal(a.export_name, "e");
    char *d = nbd_addr_describe(&a);
    assert_string_equal(d, "h:77");
    free(d);
    nbd_addr_free(&a);

    assert_int_equal(from_opts("server.type=inet,server.host=::1", &a, &err), 0);
    assert_string_equal(a.port, "10809");
    assert_string_equal(a.export_name, "");
    d = nbd_addr_describe(&a);
    assert_string_equal(d, "[::1]:10809");
    free(d);
    nbd_addr_free(&a);

    assert_int_equal(from_opts("server.type=unix,server.path=/run/s", &a, &err), 0);
    assert_true(a.is_unix);
    assert_string_equal(a.path, "/run/s");
    d = nbd_addr_describe(&a);
    assert_string_equal(d, "unix:/run/s");
    free(d);
    nbd_addr_free(&a);

    assert_int_equal(from_opts("filename=nbd://x:5/y", &a, &err), 0);
    assert_string_equal(a.host, "x");
    assert_string_equal(a.export_name, "y");
    nbd_addr_free(&a);

    opts_bad("", "no server given");
    opts_bad("server.type=vsock", "server.type 'vsock' is not supported");
    opts_bad("server.type=unix", "needs server.path");
    opts_bad("server.type=unix,server.path=/s,server.host=h", "needs server.path");
    opts_bad("server.type=inet", "needs server.host");
    opts_bad("server.type=inet,server.host=h,server.port=x", "bad server.port 'x'");
    opts_bad("filename=nbd://h/x,export=y", "cannot be used together");
    opts_bad("filename=nbd:/x", "unknown scheme");
}

static void test_tls_objects(void **state)
{
    (void)state;
    Error *err = NULL;
    assert_int_equal(nbd_tls_object_add("secret,id=s,data=x", &err), 0);   /* not ours */
    assert_null(err);
    assert_int_equal(nbd_tls_object_add("tls-creds-psk,id=p,dir=/k,endpoint=client", &err), 1);
    const NbdTlsCreds *c = nbd_tls_lookup("p", &err);
    assert_non_null(c);
    assert_true(c->psk);
    assert_string_equal(c->dir, "/k");
    assert_string_equal(c->username, "qemu");
    assert_int_equal(nbd_tls_object_add("tls-creds-x509,id=x,dir=/c,verify-peer=off", &err), 1);
    c = nbd_tls_lookup("x", &err);
    assert_non_null(c);
    assert_false(c->psk);
    assert_false(c->verify_peer);

    static const char *const bad[][2] = {
        { "tls-creds-psk,id=p,dir=/k", "duplicate" },
        { "tls-creds-psk,dir=/k", "'id' is missing" },
        { "tls-creds-psk,id=q", "'dir' is missing" },
        { "tls-creds-psk,id=q,dir=/k,endpoint=server", "only endpoint=client" },
        { "tls-creds-x509,id=q,dir=/k,username=u", "'username' is for tls-creds-psk" },
        { "tls-creds-x509,id=q,dir=/k,verify-peer=maybe", "verify-peer must be on or off" },
        { "tls-creds-psk,id=q,dir=/k,priority=NORMAL", "'priority' is not supported" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_true(nbd_tls_object_add(bad[i][0], &err) < 0);
        if (!strstr(error_get_pretty(err), bad[i][1])) {
            fail_msg("'%s': got '%s'", bad[i][0], error_get_pretty(err));
        }
        error_free(err);
        err = NULL;
    }
    assert_null(nbd_tls_lookup("q", &err));
    assert_non_null(strstr(error_get_pretty(err), "No TLS credentials with id 'q'"));
    error_free(err);
    nbd_tls_clear_all();
    err = NULL;
    assert_null(nbd_tls_lookup("p", &err));
    error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_url_errors),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_tls_objects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
