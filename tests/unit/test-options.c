/* test-options.c - OptDict parsing (text and JSON), escaping, typed getters and their errors. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "options.h"

static void assert_error_contains(Error *err, const char *needle)
{
    assert_non_null(err);
    if (!strstr(error_get_pretty(err), needle)) {
        fail_msg("error '%s' does not contain '%s'", error_get_pretty(err), needle);
    }
}

static void test_parse_basic(void **state)
{
    (void)state;
    Error *err = NULL;
    OptDict *d = optdict_parse("driver=qcow2,file.filename=disk.qcow2,backing.file.filename=b.raw",
                               NULL, &err);
    assert_null(err);
    assert_non_null(d);
    assert_int_equal(optdict_count(d), 3);
    assert_string_equal(optdict_get(d, "driver"), "qcow2");
    assert_string_equal(optdict_get(d, "file.filename"), "disk.qcow2");
    assert_string_equal(optdict_get(d, "backing.file.filename"), "b.raw");
    assert_null(optdict_get(d, "file"));
    assert_true(optdict_has_prefix(d, "file."));
    assert_true(optdict_has_prefix(d, "backing."));
    assert_false(optdict_has_prefix(d, "children."));
    /* Order is kept: first key is the first given. */
    assert_string_equal(optdict_key_at(d, 0), "driver");
    optdict_free(d);
}

static void test_parse_escaping_and_implied(void **state)
{
    (void)state;
    Error *err = NULL;
    OptDict *d = optdict_parse("my,,disk.img,read-only=on,label=a,,b,,,,c", "filename", &err);
    assert_null(err);
    assert_string_equal(optdict_get(d, "filename"), "my,disk.img");
    assert_string_equal(optdict_get(d, "read-only"), "on");
    assert_string_equal(optdict_get(d, "label"), "a,b,,c");
    char *s = optdict_to_string(d);
    assert_string_equal(s, "filename=my,,disk.img,read-only=on,label=a,,b,,,,c");
    /* The canonical form parses back to the same dict. */
    OptDict *again = optdict_parse(s, NULL, &err);
    assert_null(err);
    assert_string_equal(optdict_get(again, "label"), "a,b,,c");
    assert_string_equal(optdict_get(again, "filename"), "my,disk.img");
    free(s);
    optdict_free(again);
    optdict_free(d);

    /* '=' inside a value is part of the value; last duplicate wins. */
    d = optdict_parse("a=x=y,a=z,b=", NULL, &err);
    assert_null(err);
    assert_string_equal(optdict_get(d, "a"), "z");
    assert_string_equal(optdict_get(d, "b"), "");
    assert_int_equal(optdict_count(d), 2);
    optdict_free(d);

    d = optdict_parse("", NULL, &err);
    assert_non_null(d);
    assert_int_equal(optdict_count(d), 0);
    optdict_free(d);
}

static void test_parse_errors(void **state)
{
    (void)state;
    Error *err = NULL;
    assert_null(optdict_parse("driver=raw,foo", NULL, &err));
    assert_error_contains(err, "Expected '=' after option 'foo'");
    error_free(err);
    err = NULL;

    /* Without an implied key even the first element needs '='. */
    assert_null(optdict_parse("disk.img", NULL, &err));
    assert_error_contains(err, "'disk.img'");
    error_free(err);
    err = NULL;

    assert_null(optdict_parse("file..filename=x", NULL, &err));
    assert_error_contains(err, "Invalid option name 'file..filename'");
    error_free(err);
    err = NULL;

    assert_null(optdict_parse("=x", NULL, &err));
    assert_error_contains(err, "Invalid option name ''");
    error_free(err);
    err = NULL;

    /* ",," is an escaped comma, greedily: "a=1,,b=2" is one option. */
    OptDict *d = optdict_parse("a=1,,b=2", NULL, &err);
    assert_null(err);
    assert_int_equal(optdict_count(d), 1);
    assert_string_equal(optdict_get(d, "a"), "1,b=2");
    optdict_free(d);

    /* Two escaped commas then a separator: "b" is a new option without '='. */
    assert_null(optdict_parse("a=1,,,,,b", NULL, &err));
    assert_error_contains(err, "Expected '=' after option 'b'");
    error_free(err);
    err = NULL;

    assert_null(optdict_parse(",a=1", NULL, &err));
    assert_error_contains(err, "Empty option");
    error_free(err);
}

static void test_trailing_comma(void **state)
{
    (void)state;
    Error *err = NULL;
    /* A trailing separator is harmless; an escaped one belongs to the value. */
    OptDict *d = optdict_parse("a=1,", NULL, &err);
    assert_null(err);
    assert_int_equal(optdict_count(d), 1);
    assert_string_equal(optdict_get(d, "a"), "1");
    optdict_free(d);
    d = optdict_parse("a=1,,,", NULL, &err);
    assert_null(err);
    assert_string_equal(optdict_get(d, "a"), "1,");
    optdict_free(d);
}

static void test_typed_getters(void **state)
{
    (void)state;
    Error *err = NULL;
    OptDict *d = optdict_parse("ro=on,direct=false,n=-42,hex=0x10,sz=1.5G,s2=4k,s3=512,"
                               "mode=unmap", NULL, &err);
    assert_null(err);
    bool b = false;
    assert_int_equal(optdict_take_bool(d, "ro", false, &b, &err), 0);
    assert_true(b);
    assert_int_equal(optdict_take_bool(d, "direct", true, &b, &err), 0);
    assert_false(b);
    assert_int_equal(optdict_take_bool(d, "absent", true, &b, &err), 0);
    assert_true(b);
    int64_t n = 0;
    assert_int_equal(optdict_take_int(d, "n", 0, &n, &err), 0);
    assert_int_equal(n, -42);
    assert_int_equal(optdict_take_int(d, "hex", 0, &n, &err), 0);
    assert_int_equal(n, 16);
    uint64_t sz = 0;
    assert_int_equal(optdict_take_size(d, "sz", 0, &sz, &err), 0);
    assert_int_equal(sz, 1536ULL << 20);
    assert_int_equal(optdict_take_size(d, "s2", 0, &sz, &err), 0);
    assert_int_equal(sz, 4096);
    assert_int_equal(optdict_take_size(d, "s3", 0, &sz, &err), 0);
    assert_int_equal(sz, 512);
    assert_int_equal(optdict_take_size(d, "absent", 7, &sz, &err), 0);
    assert_int_equal(sz, 7);
    static const char *const modes[] = { "off", "on", "unmap", NULL };
    assert_int_equal(optdict_take_enum(d, "mode", modes, 0, &err), 2);
    assert_int_equal(optdict_take_enum(d, "mode", modes, 1, &err), 1);
    char *s = NULL;
    assert_int_equal(optdict_take_str(d, "absent", "dflt", &s), 0);
    assert_string_equal(s, "dflt");
    free(s);
    assert_null(err);
    /* Everything was taken. */
    assert_int_equal(optdict_count(d), 0);
    assert_int_equal(optdict_check_empty(d, "Block format 'raw'", &err), 0);
    optdict_free(d);
}

static void test_typed_errors(void **state)
{
    (void)state;
    Error *err = NULL;
    OptDict *d = optdict_parse("ro=maybe,n=12x,big=99999999999999999999,sz=3Q,mode=fast,neg=-1",
                               NULL, &err);
    bool b;
    assert_int_equal(optdict_take_bool(d, "ro", false, &b, &err), -EINVAL);
    assert_error_contains(err, "Invalid value 'maybe' for option 'ro'");
    error_free(err);
    err = NULL;
    int64_t n;
    assert_int_equal(optdict_take_int(d, "n", 0, &n, &err), -EINVAL);
    assert_error_contains(err, "'12x' for option 'n'");
    error_free(err);
    err = NULL;
    assert_int_equal(optdict_take_int(d, "big", 0, &n, &err), -EINVAL);
    assert_error_contains(err, "out of range");
    error_free(err);
    err = NULL;
    uint64_t sz;
    assert_int_equal(optdict_take_size(d, "sz", 0, &sz, &err), -EINVAL);
    assert_error_contains(err, "Invalid value '3Q' for option 'sz'");
    error_free(err);
    err = NULL;
    assert_int_equal(optdict_take_size(d, "neg", 0, &sz, &err), -EINVAL);
    assert_error_contains(err, "'-1' for option 'neg'");
    error_free(err);
    err = NULL;
    static const char *const modes[] = { "off", "on", "unmap", NULL };
    assert_int_equal(optdict_take_enum(d, "mode", modes, 0, &err), -EINVAL);
    assert_error_contains(err, "Invalid value 'fast' for option 'mode': expected one of off, on, unmap");
    error_free(err);
    optdict_free(d);
}

static void test_parse_size(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(parse_size("1G", &v), 0);
    assert_int_equal(v, 1ULL << 30);
    assert_int_equal(parse_size("2T", &v), 0);
    assert_int_equal(v, 2ULL << 40);
    assert_int_equal(parse_size("1m", &v), 0);
    assert_int_equal(v, 1ULL << 20);
    assert_int_equal(parse_size("100b", &v), 0);
    assert_int_equal(v, 100);
    assert_int_equal(parse_size("0.5k", &v), 0);
    assert_int_equal(v, 512);
    assert_int_equal(parse_size("15E", &v), 0);
    assert_int_equal(v, 15ULL << 60);
    assert_int_equal(parse_size("16E", &v), -ERANGE);
    assert_int_equal(parse_size("99999999999999999999999", &v), -ERANGE);
    assert_int_equal(parse_size("1.5", &v), -EINVAL);
    assert_int_equal(parse_size("", &v), -EINVAL);
    assert_int_equal(parse_size("G", &v), -EINVAL);
    assert_int_equal(parse_size("1GB", &v), -EINVAL);
    assert_int_equal(parse_size("-5", &v), -EINVAL);
}

static void test_extract_and_check_empty(void **state)
{
    (void)state;
    Error *err = NULL;
    OptDict *d = optdict_parse("driver=raw,file=node0,file.filename=x,file.aio=io_uring,"
                               "filex.y=1,foo=bar", NULL, &err);
    OptDict *sub = optdict_extract_prefix(d, "file.");
    assert_int_equal(optdict_count(sub), 2);
    assert_string_equal(optdict_get(sub, "filename"), "x");
    assert_string_equal(optdict_get(sub, "aio"), "io_uring");
    /* "file" itself and "filex.y" are not under "file.". */
    assert_string_equal(optdict_get(d, "file"), "node0");
    assert_string_equal(optdict_get(d, "filex.y"), "1");
    assert_true(optdict_has_prefix(d, "file."));   /* "file" counts */
    optdict_del(d, "file");
    assert_false(optdict_has_prefix(d, "file."));
    optdict_del(d, "driver");
    optdict_del(d, "filex.y");
    assert_int_equal(optdict_check_empty(d, "Block format 'raw'", &err), -EINVAL);
    assert_non_null(err);
    assert_string_equal(error_get_pretty(err), "Block format 'raw' does not support the option 'foo'");
    error_free(err);
    optdict_free(sub);
    optdict_free(d);
}

static void test_merge_clone(void **state)
{
    (void)state;
    OptDict *a = optdict_parse("x=1,y=2", NULL, NULL);
    OptDict *b = optdict_parse("y=3,z=4", NULL, NULL);
    OptDict *c = optdict_clone(a);
    optdict_merge(a, b, false);
    assert_string_equal(optdict_get(a, "y"), "2");
    assert_string_equal(optdict_get(a, "z"), "4");
    optdict_merge(c, b, true);
    assert_string_equal(optdict_get(c, "y"), "3");
    optdict_set_int(c, "n", -7);
    assert_string_equal(optdict_get(c, "n"), "-7");
    optdict_free(a);
    optdict_free(b);
    optdict_free(c);
}

static void test_json(void **state)
{
    (void)state;
    Error *err = NULL;
#ifdef CONFIG_JSON
    OptDict *d = optdict_parse_json(
        "{\"driver\": \"quorum\", \"vote-threshold\": 2, \"read-only\": true,"
        " \"children\": [ {\"driver\": \"raw\", \"file\": {\"filename\": \"a,b.img\"}},"
        "                 {\"file\": {\"driver\": \"null\", \"size\": 1048576}} ],"
        " \"backing\": null, \"ratio\": 1.5 }", &err);
    assert_null(err);
    assert_non_null(d);
    assert_string_equal(optdict_get(d, "driver"), "quorum");
    assert_string_equal(optdict_get(d, "vote-threshold"), "2");
    assert_string_equal(optdict_get(d, "read-only"), "on");
    assert_string_equal(optdict_get(d, "children.0.driver"), "raw");
    assert_string_equal(optdict_get(d, "children.0.file.filename"), "a,b.img");
    assert_string_equal(optdict_get(d, "children.1.file.driver"), "null");
    assert_string_equal(optdict_get(d, "children.1.file.size"), "1048576");
    assert_string_equal(optdict_get(d, "backing"), "");
    assert_string_equal(optdict_get(d, "ratio"), "1.5");
    bool ro = false;
    assert_int_equal(optdict_take_bool(d, "read-only", false, &ro, &err), 0);
    assert_true(ro);
    optdict_free(d);

    assert_null(optdict_parse_json("{\"driver\": ", &err));
    assert_error_contains(err, "Could not parse JSON");
    error_free(err);
    err = NULL;
    assert_null(optdict_parse_json("{\"a\": 1} trailing", &err));
    assert_error_contains(err, "trailing text 'trailing'");
    error_free(err);
    err = NULL;
    assert_null(optdict_parse_json("[1, 2]", &err));
    assert_error_contains(err, "must be an object");
    error_free(err);
    err = NULL;
    assert_null(optdict_parse_json("{\"a b\": 1}", &err));
    assert_error_contains(err, "Invalid option name 'a b'");
    error_free(err);
#else
    assert_null(optdict_parse_json("{}", &err));
    assert_error_contains(err, "built without JSON support");
    error_free(err);
#endif
}

/* A JSON option name longer than the 1023 characters flattening takes used
 * to be cut short without a word, so it named another option. */
static void test_json_long_names(void **state)
{
    (void)state;
#ifdef CONFIG_JSON
    Error *err = NULL;
    char name[1100], json[1300];
    memset(name, 'x', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    snprintf(json, sizeof(json), "{\"file\": {\"%s\": 1}}", name);
    assert_null(optdict_parse_json(json, &err));
    assert_error_contains(err, "too long (at most 1023 characters)");
    error_free(err);
    err = NULL;
    /* the longest name that fits is kept whole */
    name[1023 - 5] = '\0';
    snprintf(json, sizeof(json), "{\"file\": {\"%s\": 1}}", name);
    OptDict *d = optdict_parse_json(json, &err);
    assert_null(err);
    assert_int_equal(strlen(optdict_key_at(d, 0)), 1023);
    optdict_free(d);
    /* an array index that does not fit either */
    memset(name, 'x', 1022);
    name[1022] = '\0';
    snprintf(json, sizeof(json), "{\"%s\": [1]}", name);
    assert_null(optdict_parse_json(json, &err));
    assert_error_contains(err, "too long");
    error_free(err);
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_basic),
        cmocka_unit_test(test_parse_escaping_and_implied),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_trailing_comma),
        cmocka_unit_test(test_typed_getters),
        cmocka_unit_test(test_typed_errors),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_extract_and_check_empty),
        cmocka_unit_test(test_merge_clone),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_json_long_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
