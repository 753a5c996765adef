/*
 * test-img-parse.c - the pure helpers of `ublkd img` (tools/img-util.c):
 * qemu's number syntax, size strings, qemu-io's cvtstr/timestr, sparse-run
 * detection for convert, compare's sector rules, map-entry merging and
 * printing, and qemu's JSON key order.  Expected values were taken from
 * qemu-img/qemu-io 7.2 output.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "../../tools/img.h"

static void test_parse_size(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(img_parse_size("4096", 'B', &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(img_parse_size("4k", 'B', &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(img_parse_size("1.5k", 'B', &v), 0);
    assert_int_equal(v, 1536);
    assert_int_equal(img_parse_size("1G", 'B', &v), 0);
    assert_int_equal(v, 1ULL << 30);
    assert_int_equal(img_parse_size("2M", 'B', &v), 0);
    assert_int_equal(v, 2ULL << 20);
    assert_int_equal(img_parse_size("0x1000", 'B', &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(img_parse_size("1b", 'B', &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(img_parse_size("3", 'M', &v), 0);
    assert_int_equal(v, 3ULL << 20);
    assert_int_equal(img_parse_size("7E", 'B', &v), 0);
    assert_int_equal(v, 7ULL << 60);
    /* qemu refuses these */
    assert_int_equal(img_parse_size("1Q", 'B', &v), -EINVAL);
    assert_int_equal(img_parse_size("-1", 'B', &v), -EINVAL);
    assert_int_equal(img_parse_size("1.5", 'B', &v), -EINVAL);
    assert_int_equal(img_parse_size("", 'B', &v), -EINVAL);
    assert_int_equal(img_parse_size("2x", 'B', &v), -EINVAL);
    assert_int_equal(img_parse_size("4kk", 'B', &v), -EINVAL);
    assert_int_equal(img_parse_size("99E", 'B', &v), -ERANGE);
    assert_int_equal(img_parse_size("99999999999999999999999", 'B', &v), -ERANGE);
}

static void test_cvtnum(void **state)
{
    (void)state;
    assert_int_equal(img_cvtnum("1M"), 1 << 20);
    assert_int_equal(img_cvtnum("8E"), -ERANGE);    /* 2^63 does not fit int64 */
    assert_int_equal(img_cvtnum("abc"), -EINVAL);
}

static void check_size_str(uint64_t v, const char *want)
{
    char *s = img_size_to_str(v);
    assert_string_equal(s, want);
    free(s);
}

static void test_size_to_str(void **state)
{
    (void)state;
    check_size_str(0, "0 B");
    check_size_str(512, "512 B");
    check_size_str(999, "999 B");
    check_size_str(1000, "0.977 KiB");
    check_size_str(77824, "76 KiB");
    check_size_str(10485760, "10 MiB");
    check_size_str(1073741824, "1 GiB");
    check_size_str(1536ULL << 20, "1.5 GiB");
    check_size_str(200704, "196 KiB");
}

static void check_cvtstr(double v, const char *want)
{
    char s[64];
    img_cvtstr(v, s, sizeof(s));
    assert_string_equal(s, want);
}

static void check_timestr(double secs, const char *want)
{
    char s[64];
    img_timestr(secs, s, sizeof(s));
    assert_string_equal(s, want);
}

static void test_cvtstr_timestr(void **state)
{
    (void)state;
    check_cvtstr(4096, "4 KiB");
    check_cvtstr(32, "32 bytes");
    check_cvtstr(1536, "1.500 KiB");
    check_cvtstr(10485760, "10 MiB");
    check_cvtstr(0, "0 bytes");
    check_timestr(0.001, "00.00 sec");
    check_timestr(0.5, "00.50 sec");
    check_timestr(61.25, "0:01:01.25");
}

static void test_sparse_run(void **state)
{
    (void)state;
    uint8_t *buf = calloc(1, 64 * 1024);
    bool data;
    /* all zero: one zero run */
    assert_int_equal(img_sparse_run(buf, 65536, 0, 4096, &data), 65536);
    assert_false(data);
    /* one byte of data in the second 4k block */
    buf[4096 + 100] = 1;
    assert_int_equal(img_sparse_run(buf, 65536, 0, 4096, &data), 4096);
    assert_false(data);
    assert_int_equal(img_sparse_run(buf + 4096, 65536 - 4096, 4096, 4096, &data), 4096);
    assert_true(data);
    assert_int_equal(img_sparse_run(buf + 8192, 65536 - 8192, 8192, 4096, &data), 65536 - 8192);
    assert_false(data);
    /* the grid is anchored at the image offset, not the buffer */
    assert_int_equal(img_sparse_run(buf, 65536, 1024, 4096, &data), 3072);
    assert_false(data);
    /* -S 0: everything is data */
    assert_int_equal(img_sparse_run(buf, 65536, 0, 0, &data), 65536);
    assert_true(data);
    /* data runs merge across cells */
    memset(buf, 0xff, 3 * 4096);
    assert_int_equal(img_sparse_run(buf, 65536, 0, 4096, &data), 3 * 4096);
    assert_true(data);
    free(buf);
}

static void test_compare_helpers(void **state)
{
    (void)state;
    uint8_t a[2048] = { 0 }, b[2048] = { 0 };
    int64_t pnum;
    assert_int_equal(img_find_nonzero(a, sizeof(a)), -1);
    a[1500] = 1;
    /* reported at the sector boundary, like qemu-img compare */
    assert_int_equal(img_find_nonzero(a, sizeof(a)), 1024);
    assert_false(img_compare_buffers(a, b, sizeof(a), &pnum));
    assert_int_equal(pnum, 1024);
    assert_true(img_compare_buffers(a + 1024, b + 1024, 1024, &pnum));
    assert_int_equal(pnum, 512);
    memcpy(b, a, sizeof(a));
    assert_false(img_compare_buffers(a, b, sizeof(a), &pnum));
    assert_int_equal(pnum, 2048);
}

static void test_map_merge(void **state)
{
    (void)state;
    ImgMapEntry a = { .start = 0, .length = 4096, .offset = 0, .data = true, .present = true,
                      .has_offset = true, .filename = "a.raw" };
    ImgMapEntry b = a;
    b.start = b.offset = 4096;
    assert_true(img_map_entry_mergeable(&a, &b));
    b.offset = 8192;                 /* not contiguous in the file */
    assert_false(img_map_entry_mergeable(&a, &b));
    b.offset = 4096;
    b.zero = true;
    assert_false(img_map_entry_mergeable(&a, &b));
    ImgMapEntry empty = { 0 };
    assert_false(img_map_entry_mergeable(&empty, &a));
}

static void test_map_dump(void **state)
{
    (void)state;
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    ImgMapEntry a = { .start = 0, .length = 4096, .offset = 0, .data = true, .present = true,
                      .has_offset = true, .filename = "a.raw" };
    ImgMapEntry z = { .start = 4096, .length = 1044480, .offset = 4096, .zero = true,
                      .present = true, .has_offset = true, .filename = "a.raw" };
    img_map_dump_entry(f, OFORMAT_HUMAN, &a, &z);
#ifdef CONFIG_JSON
    img_map_dump_entry(f, OFORMAT_JSON, &a, &z);
    img_map_dump_entry(f, OFORMAT_JSON, &z, NULL);
    fclose(f);
    assert_string_equal(out,
        "0               0x1000          0               a.raw\n"
        "{ \"start\": 0, \"length\": 4096, \"depth\": 0, \"present\": true, \"zero\": false,"
        " \"data\": true, \"offset\": 0},\n"
        "{ \"start\": 4096, \"length\": 1044480, \"depth\": 0, \"present\": true, \"zero\": true,"
        " \"data\": false, \"offset\": 4096}");
    /* The entry is a json-c object (no offset key without an offset). */
    ImgMapEntry u = { .start = 8192, .length = 512, .depth = 1 };
    struct json_object *o = img_map_entry_to_json(&u), *v;
    assert_true(json_object_object_get_ex(o, "depth", &v));
    assert_int_equal(json_object_get_int64(v), 1);
    assert_false(json_object_object_get_ex(o, "offset", NULL));
    assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
                        "{\"start\":8192,\"length\":512,\"depth\":1,\"present\":false,"
                        "\"zero\":false,\"data\":false}");
    json_object_put(o);
#else
    /* Without json-c there is no JSON form (--output=json is refused). */
    assert_int_equal(img_map_dump_entry(f, OFORMAT_JSON, &a, &z), -1);
    fclose(f);
    assert_string_equal(out, "0               0x1000          0               a.raw\n");
#endif
    free(out);
}

static void test_qdict_order(void **state)
{
    (void)state;
    /* qemu-img info --output=json prints a raw image's keys in this order. */
    const char *order[] = { "virtual-size", "filename", "format", "actual-size", "dirty-flag" };
    for (size_t i = 1; i < sizeof(order) / sizeof(order[0]); i++) {
        assert_true(img_qdict_bucket(order[i - 1]) < img_qdict_bucket(order[i]));
    }
    /* and a qcow2 image's (keys qemu has for formats with clusters/backing) */
    const char *q[] = { "backing-filename-format", "virtual-size", "filename", "cluster-size",
                        "format", "actual-size", "format-specific", "full-backing-filename",
                        "backing-filename", "dirty-flag" };
    for (size_t i = 1; i < sizeof(q) / sizeof(q[0]); i++) {
        assert_true(img_qdict_bucket(q[i - 1]) <= img_qdict_bucket(q[i]));
    }
}

static void test_dump_buffer(void **state)
{
    (void)state;
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    uint8_t buf[20];
    memset(buf, 0xab, sizeof(buf));
    buf[0] = 'A';
    img_dump_buffer(f, buf, 0x100000, sizeof(buf));
    fclose(f);
    assert_string_equal(out,
        "00100000:  41 ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab  A...............\n"
        "00100010:  ab ab ab ab  ....\n");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_cvtnum),
        cmocka_unit_test(test_size_to_str),
        cmocka_unit_test(test_cvtstr_timestr),
        cmocka_unit_test(test_sparse_run),
        cmocka_unit_test(test_compare_helpers),
        cmocka_unit_test(test_map_merge),
        cmocka_unit_test(test_map_dump),
        cmocka_unit_test(test_qdict_order),
        cmocka_unit_test(test_dump_buffer),
    };
    return cmocka_run_group_tests_name("img-parse", tests, NULL, NULL);
}
