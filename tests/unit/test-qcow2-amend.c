/*
 * test-qcow2-amend.c - the qcow2 driver's co_amend (drivers/qcow2-amend.c):
 * a crash at every protocol operation of a refcount width change and of a
 * downgrade (crash-file.h: each leaves the old image or the new one, at
 * worst with leaked clusters, data intact), the refcounts of a width change
 * carried over exactly, and the refusals that need no qemu-img.
 */
#include <errno.h>
#include <inttypes.h>
#include "crash-file.h"
#include "qcow2-image.h"
#include "qcow2-refcheck.h"

/* 4 KiB clusters: at 16 bits a refcount block covers 2048 clusters. */
#define CB 12
#define C  (1ULL << CB)
#define DATA (256 * KiB)

static uint8_t *image_bytes(BlockDriverState *file, size_t *len)
{
    const uint8_t *cur = crash_file_current(file, len);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    memcpy(buf, cur, *len);
    return buf;
}

static void assert_clean(const uint8_t *p, size_t len, bool leaks_ok, const char *what)
{
    Q2Check c = q2_refcheck(p, len);
    if (c.errors || c.low || c.copied || (!leaks_ok && c.leaks)) {
        fail_msg("%s: %d errors, %d low, %d copied, %d leaks: %s", what, c.errors, c.low,
                 c.copied, c.leaks, c.first);
    }
}

/* An image (in a crashfile) with DATA bytes of pattern at 0, a zeroed
 * cluster that keeps its host cluster at 1 MiB, and a second data run at
 * 6 MiB; *len its bytes. */
static uint8_t *make_image(uint8_t *pattern, size_t *len)
{
    Q2Image src = q2_make(CB, 8 * MiB, false, 0);
    size_t n = (size_t)mem_size(src.file);
    uint8_t *raw = malloc(n);
    assert_non_null(raw);
    mem_read_raw(src.file, 0, raw, (int64_t)n);
    q2_free(&src);

    BlockDriverState *file = crash_file_new("amk", raw, n);
    free(raw);
    Q2Image img = { .file = file, .cb = CB };
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    test_pattern(pattern, DATA, 7);
    assert_int_equal(bdrv_pwrite(img.child, 0, DATA, pattern, 0), 0);
    assert_int_equal(bdrv_pwrite(img.child, 1 * MiB, 4 * C, pattern, 0), 0);
    assert_int_equal(bdrv_pwrite_zeroes(img.child, 1 * MiB, 2 * C, 0), 0);
    assert_int_equal(bdrv_pwrite(img.child, 6 * MiB, DATA, pattern, 0), 0);
    assert_int_equal(bdrv_flush(img.bs), 0);
    q2_close(&img);
    uint8_t *out = image_bytes(file, len);
    bdrv_unref(file);
    return out;
}

static void assert_content(BlockDriverState *bs, const uint8_t *pattern, const char *what)
{
    static uint8_t buf[DATA];
    BdrvChild *child = test_child_new(bs);
    assert_int_equal(bdrv_pread(child, 0, DATA, buf, 0), 0);
    if (memcmp(buf, pattern, DATA)) {
        fail_msg("%s: data at 0 differs", what);
    }
    assert_int_equal(bdrv_pread(child, 1 * MiB, 4 * C, buf, 0), 0);
    for (size_t i = 0; i < 2 * C; i++) {
        if (buf[i]) {
            fail_msg("%s: the zeroed clusters read %#x at %zu", what, buf[i], i);
        }
    }
    if (memcmp(buf + 2 * C, pattern + 2 * C, 2 * C)) {
        fail_msg("%s: data at 1 MiB + 8 KiB differs", what);
    }
    assert_int_equal(bdrv_pread(child, 6 * MiB, DATA, buf, 0), 0);
    if (memcmp(buf, pattern, DATA)) {
        fail_msg("%s: data at 6 MiB differs", what);
    }
    test_child_free(child);
}

static int amend(BlockDriverState *bs, const char *key, const char *value, Error **errp)
{
    OptDict *o = optdict_new();
    optdict_set(o, key, value);
    int ret = bdrv_amend_options(bs, o, NULL, NULL, false, errp);
    optdict_free(o);
    return ret;
}

static uint32_t order_of(const uint8_t *p)
{
    return qcow2_ld32(p, QH_VERSION) >= 3 ? qcow2_ld32(p, QH_REFCOUNT_ORDER) : 4;
}

/*
 * A crash at every protocol operation of amend key=value on the image,
 * each crash image made with several subsets of the unflushed writes:
 * check(p) says whether it is the old image (0) or the new one (1) and
 * fails on anything else; every one is consistent but for leaks and reads
 * as before.  Both outcomes must show.
 */
static void crash_every_op(const char *key, const char *value, int (*which)(const uint8_t *p))
{
    static uint8_t pat[DATA];
    size_t len;
    uint8_t *init = make_image(pat, &len);
    int64_t total = 0;
    int n[2] = { 0, 0 };

    for (int64_t at = 0; at <= total; at++) {
        BlockDriverState *file = crash_file_new("amc", init, len);
        Q2Image img = { .file = file, .cb = CB };
        q2_open(&img, BDRV_O_RDWR, NULL, NULL);
        assert_non_null(img.bs);
        int64_t ops0 = crash_file_ops(file);
        crash_file_arm(file, at);
        Error *err = NULL;
        if (amend(img.bs, key, value, &err) < 0) {
            fail_msg("amend %s=%s: %s", key, value, error_get_pretty(err));
        }
        if (at == 0) {
            total = crash_file_ops(file) - ops0;
            assert_true(total > 3);
            /* the finished amend itself: no leak at all */
            q2_close(&img);
            size_t flen;
            uint8_t *p = image_bytes(file, &flen);
            assert_clean(p, flen, false, "after the amend");
            assert_int_equal(which(p), 1);
            free(p);
        } else {
            q2_close(&img);
        }
        for (uint64_t seed = 1; seed <= 4; seed++) {
            size_t plen;
            uint8_t *p = crash_file_persisted(file, seed * 7919 + (uint64_t)at, 50, 20, &plen);
            char what[64];
            snprintf(what, sizeof(what), "crash at %" PRId64 " seed %" PRIu64, at, seed);
            assert_clean(p, plen, true, what);
            n[which(p)]++;
            BlockDriverState *f2 = crash_file_new("amc2", p, plen);
            free(p);
            Q2Image v = { .file = f2, .cb = CB };
            q2_open(&v, 0, NULL, NULL);
            if (!v.bs) {
                fail_msg("%s: open: %s", what, error_get_pretty(v.err));
            }
            assert_content(v.bs, pat, what);
            q2_free(&v);
        }
        bdrv_unref(file);
    }
    free(init);
    assert_true(n[0] > 0);
    assert_true(n[1] > 0);
}

static int order_is_1bit(const uint8_t *p)
{
    uint32_t o = order_of(p);
    if (o != 4 && o != 0) {
        fail_msg("refcount order %" PRIu32, o);
    }
    return o == 0;
}

static int order_is_64bit(const uint8_t *p)
{
    uint32_t o = order_of(p);
    if (o != 4 && o != 6) {
        fail_msg("refcount order %" PRIu32, o);
    }
    return o == 6;
}

static int is_v2(const uint8_t *p)
{
    uint32_t v = qcow2_ld32(p, QH_VERSION);
    if (v != 2 && v != 3) {
        fail_msg("version %" PRIu32, v);
    }
    return v == 2;
}

static void test_refcount_1bit_crash(void **state)
{
    (void)state;
    crash_every_op("refcount_bits", "1", order_is_1bit);
}

static void test_refcount_64bit_crash(void **state)
{
    (void)state;
    crash_every_op("refcount_bits", "64", order_is_64bit);
}

static void test_downgrade_crash(void **state)
{
    (void)state;
    crash_every_op("compat", "0.10", is_v2);
}

/* Every refcount survives a round of width changes unchanged (leaks too:
 * the old blocks are copied, not recomputed, as QEMU does). */
static void test_refcounts_kept(void **state)
{
    (void)state;
    static uint8_t pat[DATA];
    size_t len;
    uint8_t *init = make_image(pat, &len);
    /* a leak: a cluster appended to the file gets refcount 1 with nothing
     * pointing at it */
    Q2Check before = q2_refcheck(init, len);
    assert_int_equal(before.leaks, 0);
    assert_true(len % C == 0);
    uint64_t leak = len / C;
    init = realloc(init, len + C);
    assert_non_null(init);
    memset(init + len, 0, C);
    len += C;
    uint64_t rb = qcow2_ld64(init, qcow2_ld64(init, QH_REFTABLE_OFFSET));
    assert_true(leak < 2048 && rb + 2 * leak + 2 <= len);
    uint16_t one = htobe16(1);
    memcpy(init + rb + 2 * leak, &one, 2);
    assert_int_equal(q2_refcheck(init, len).leaks, 1);
    BlockDriverState *file = crash_file_new("amk2", init, len);
    Q2Image img = { .file = file, .cb = CB };
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    static const char *const widths[] = { "2", "8", "64", "1", "32", "16" };
    for (size_t i = 0; i < ARRAY_SIZE(widths); i++) {
        Error *err = NULL;
        if (amend(img.bs, "refcount_bits", widths[i], &err) < 0) {
            fail_msg("refcount_bits=%s: %s", widths[i], error_get_pretty(err));
        }
        assert_content(img.bs, pat, widths[i]);
    }
    q2_close(&img);
    size_t flen;
    uint8_t *p = image_bytes(file, &flen);
    Q2Check c = q2_refcheck(p, flen);
    assert_int_equal(c.errors + c.low + c.copied, 0);
    assert_int_equal(c.leaks, 1);               /* the one leak, carried along */
    assert_int_equal(order_of(p), 4);
    free(p);
    free(init);
    bdrv_unref(file);
}

static void expect_refusal(const char *key, const char *value, const char *want)
{
    static uint8_t pat[DATA];
    size_t len;
    uint8_t *init = make_image(pat, &len);
    BlockDriverState *file = crash_file_new("amr", init, len);
    Q2Image img = { .file = file, .cb = CB };
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    Error *err = NULL;
    assert_true(amend(img.bs, key, value, &err) < 0);
    if (!strstr(error_get_pretty(err), want)) {
        fail_msg("%s=%s: '%s', want '%s'", key, value, error_get_pretty(err), want);
    }
    error_free(err);
    q2_close(&img);
    size_t flen;
    const uint8_t *now = crash_file_current(file, &flen);
    assert_int_equal(flen, len);
    assert_memory_equal(now, init, len);        /* nothing changed */
    free(init);
    bdrv_unref(file);
}

/* A crafted refcount table naming one block twice is refused before any
 * scan (each name would be scanned again). */
static void test_refblock_named_twice(void **state)
{
    (void)state;
    static uint8_t pat[DATA];
    size_t len;
    uint8_t *init = make_image(pat, &len);
    uint64_t rt = qcow2_ld64(init, QH_REFTABLE_OFFSET);
    memcpy(init + rt + 8, init + rt, 8);
    BlockDriverState *file = crash_file_new("amd", init, len);
    Q2Image img = { .file = file, .cb = CB };
    q2_open(&img, BDRV_O_RDWR, NULL, NULL);
    assert_non_null(img.bs);
    Error *err = NULL;
    assert_true(amend(img.bs, "refcount_bits", "1", &err) < 0);
    assert_non_null(strstr(error_get_pretty(err), "is named more than once"));
    error_free(err);
    q2_close(&img);
    size_t flen;
    const uint8_t *now = crash_file_current(file, &flen);
    assert_int_equal(flen, len);
    assert_memory_equal(now, init, len);
    free(init);
    bdrv_unref(file);
}

static void test_refusals(void **state)
{
    (void)state;
    expect_refusal("refcount_bits", "3", "Refcount width must be a power of two");
    expect_refusal("refcount_bits", "128", "may not exceed 64 bits");
    expect_refusal("compat", "0.9", "Unknown compatibility level 0.9");
    expect_refusal("data_file", "x", "data-file can only be set for images that use");
    expect_refusal("data_file_raw", "on", "data-file-raw cannot be set on existing images");
    expect_refusal("backing_file", "b.qcow2", "Cannot amend the backing file");
    expect_refusal("encrypt.state", "active", "encryption not present");
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refcount_1bit_crash),
        cmocka_unit_test(test_refcount_64bit_crash),
        cmocka_unit_test(test_downgrade_crash),
        cmocka_unit_test(test_refcounts_kept),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_refblock_named_twice),
    };
    return cmocka_run_group_tests_name("qcow2-amend", tests, NULL, NULL);
}
