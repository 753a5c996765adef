/*
 * test-block-events.c - events drivers report (io/block-events.c): one
 * valid JSON line each, node and range named, the error spelled out, floods
 * cut per type with the count reported, a sink that sees every line.
 */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "test-util.h"

#define MAX_LINES 256

typedef struct {
    char *lines[MAX_LINES];
    int n;
} Sink;

static void sink_line(const char *line, void *opaque)
{
    Sink *s = opaque;
    if (s->n < MAX_LINES) {
        s->lines[s->n++] = strdup(line);
    }
}

static void sink_clear(Sink *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->lines[i]);
    }
    s->n = 0;
}

static BlockDriverState *open_null(const char *name)
{
    char opts[128];
    Error *err = NULL;
    snprintf(opts, sizeof(opts), "driver=null,size=1M,node-name=%s", name);
    BlockDriverState *bs = bdrv_open(NULL, optdict_parse(opts, NULL, NULL), 0, &err);
    error_free(err);
    return bs;
}

static const char *field(json_object *o, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_string(v);
}

/* Wait into a fresh second so a test's events share one window. */
static void second_start(void)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do {
        clock_gettime(CLOCK_MONOTONIC, &b);
    } while (b.tv_sec == a.tv_sec);
}

static void test_event_line_is_json(void **state)
{
    (void)state;
    test_loop_init();
    Sink s = { 0 };
    bdrv_set_event_sink(sink_line, &s);
    BlockDriverState *bs = open_null("c\"1");
    assert_null(bs);   /* a quote is not a valid node name: the escape is tested below */
    bs = open_null("child1");
    assert_non_null(bs);
    bdrv_event(bs, "QUORUM_REPORT_BAD", 4096, 512, -EIO, ",\"extra\":\"a\\\"b\"");
    bdrv_event(bs, "QUORUM_REWRITE", 0, 65536, 0, NULL);
    assert_int_equal(s.n, 2);
    json_object *o = json_tokener_parse(s.lines[0]);
    assert_non_null(o);
    assert_string_equal(field(o, "type"), "QUORUM_REPORT_BAD");
    assert_string_equal(field(o, "node"), "child1");
    assert_string_equal(field(o, "offset"), "4096");
    assert_string_equal(field(o, "length"), "512");
    assert_string_equal(field(o, "error"), "Input/output error");
    assert_string_equal(field(o, "errno"), "5");
    assert_string_equal(field(o, "extra"), "a\"b");
    json_object_put(o);
    o = json_tokener_parse(s.lines[1]);
    assert_non_null(o);
    assert_false(json_object_object_get_ex(o, "error", NULL));
    json_object_put(o);
    assert_null(strchr(s.lines[0], '\n'));
    bdrv_unref(bs);
    bdrv_set_event_sink(NULL, NULL);
    sink_clear(&s);
}

static void test_json_escape(void **state)
{
    (void)state;
    char buf[64];
    assert_string_equal(bdrv_json_escape("a\"b\\c\n\x01", buf, sizeof(buf)),
                        "a\\\"b\\\\c\\u000a\\u0001");
    /* Truncation never cuts an escape in half. */
    char small[8];
    bdrv_json_escape("\"\"\"\"\"\"", small, sizeof(small));
    assert_true(strlen(small) % 2 == 0);
}

static void test_flood_cut_and_counted(void **state)
{
    (void)state;
    Sink s = { 0 };
    bdrv_set_event_sink(sink_line, &s);
    BlockDriverState *bs = open_null("flood");
    assert_non_null(bs);
    uint64_t e0, s0, e1, s1;
    bdrv_event_totals(&e0, &s0);
    second_start();
    for (int i = 0; i < BDRV_EVENTS_PER_SEC + 30; i++) {
        bdrv_event(bs, "FLOOD_A", i, 1, -EIO, NULL);
    }
    /* Another type has its own budget. */
    bdrv_event(bs, "FLOOD_B", 0, 1, 0, NULL);
    assert_int_equal(s.n, BDRV_EVENTS_PER_SEC + 1);
    bdrv_event_totals(&e1, &s1);
    assert_int_equal(s1 - s0, 30);
    assert_int_equal(e1 - e0, BDRV_EVENTS_PER_SEC + 1);
    sink_clear(&s);
    bdrv_event_flush();
    assert_int_equal(s.n, 1);
    json_object *o = json_tokener_parse(s.lines[0]);
    assert_non_null(o);
    assert_string_equal(field(o, "type"), "EVENTS_SUPPRESSED");
    assert_string_equal(field(o, "event"), "FLOOD_A");
    assert_string_equal(field(o, "count"), "30");
    json_object_put(o);
    sink_clear(&s);
    bdrv_event_flush();          /* nothing left to report */
    assert_int_equal(s.n, 0);
    bdrv_unref(bs);
    bdrv_set_event_sink(NULL, NULL);
}

static void test_suppressed_count_precedes_next(void **state)
{
    (void)state;
    Sink s = { 0 };
    bdrv_set_event_sink(sink_line, &s);
    BlockDriverState *bs = open_null("next");
    assert_non_null(bs);
    second_start();
    for (int i = 0; i < BDRV_EVENTS_PER_SEC + 5; i++) {
        bdrv_event(bs, "FLOOD_C", i, 1, 0, NULL);
    }
    sink_clear(&s);
    second_start();
    bdrv_event(bs, "FLOOD_C", 99, 1, 0, NULL);
    assert_int_equal(s.n, 2);
    assert_non_null(strstr(s.lines[0], "\"EVENTS_SUPPRESSED\""));
    assert_non_null(strstr(s.lines[0], "\"count\":5"));
    assert_non_null(strstr(s.lines[1], "\"offset\":99"));
    sink_clear(&s);
    bdrv_unref(bs);
    bdrv_set_event_sink(NULL, NULL);
}

/* ---- run-time counters of a graph (bdrv_get_counters) ---- */

static int ctr_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)bs; (void)options; (void)flags; (void)errp;
    return 0;
}

static int64_t ctr_getlength(BlockDriverState *bs)
{
    (void)bs;
    return 1 << 20;
}

static void ctr_get_counters(BlockDriverState *bs, ImageSpecificInfo *out)
{
    (void)bs;
    image_info_add_int(out, "children.0.reads", 7);
    image_info_add_int(out, "children.0.errors", 1);
}

static const BlockDriver ctr_driver = {
    .format_name = "ctr-test",
    .open = ctr_open,
    .getlength = ctr_getlength,
    .get_counters = ctr_get_counters,
};

static void test_counters_prefixed_by_path(void **state)
{
    (void)state;
    test_loop_init();
    static bool registered;
    if (!registered) {
        bdrv_register(&ctr_driver);
        registered = true;
    }
    require_driver("raw");
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(NULL, optdict_parse("driver=raw,file.driver=ctr-test",
                                                         NULL, NULL), 0, &err);
    assert_non_null(bs);
    ImageSpecificInfo info = { 0 };
    bdrv_get_counters(bs, &info);
    assert_int_equal(info.n, 2);
    assert_string_equal(info.entries[0].key, "file/children.0.reads");
    assert_string_equal(info.entries[0].value, "7");
    assert_true(info.entries[0].is_number);
    assert_string_equal(info.entries[1].key, "file/children.0.errors");
    image_info_free(&info);
    bdrv_unref(bs);
    /* A node with no counters anywhere below gives none. */
    bs = open_null("quiet");
    assert_non_null(bs);
    bdrv_get_counters(bs, &info);
    assert_int_equal(info.n, 0);
    image_info_free(&info);
    bdrv_unref(bs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_line_is_json),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_flood_cut_and_counted),
        cmocka_unit_test(test_suppressed_count_precedes_next),
        cmocka_unit_test(test_counters_prefixed_by_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
