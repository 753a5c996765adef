/*
 * test-block-open.c - opening graphs: by filename (probing), by dotted
 * options and json:, node references, generic options and flag inheritance,
 * backing files (recorded format used without probing, read-only, relative
 * paths), errors with their exact messages, refcounting and close order,
 * limits merging.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "test-util.h"

/* ---- a tiny format for probing and backing tests ----
 * "TESTFMT\0" magic, then at byte 16 an optional backing file name and at
 * byte 272 its format; data follows at 4096. */
#define TESTFMT_MAGIC "TESTFMT"
#define TESTFMT_DATA 4096

static int closed_order[8], n_closed;

static int testfmt_probe(const uint8_t *buf, int size, const char *filename)
{
    (void)filename;
    return size >= 8 && !memcmp(buf, TESTFMT_MAGIC, 8) ? 100 : 0;
}

static int testfmt_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)flags;
    char hdr[512];
    if (!bdrv_open_child(NULL, options, "file", bs, BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, false, errp)) {
        return -EINVAL;
    }
    int ret = bdrv_pread(bs->file, 0, sizeof(hdr), hdr, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "testfmt: cannot read header of '%s'", bs->filename);
        return ret;
    }
    if (memcmp(hdr, TESTFMT_MAGIC, 8)) {
        error_setg(errp, "testfmt: '%s' is not a testfmt image", bs->filename);
        return -EINVAL;
    }
    snprintf(bs->backing_file, sizeof(bs->backing_file), "%.255s", hdr + 16);
    snprintf(bs->backing_format, sizeof(bs->backing_format), "%.31s", hdr + 272);
    return 0;
}

static void testfmt_close(BlockDriverState *bs)
{
    (void)bs;
    closed_order[n_closed++ % 8] = 1;   /* format closed */
}

static int coroutine_fn testfmt_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                          IOVector *qiov, size_t qoff, BdrvRequestFlags flags)
{
    return bdrv_co_preadv_part(bs->file, offset + TESTFMT_DATA, bytes, qiov, qoff, flags);
}

static int64_t testfmt_getlength(BlockDriverState *bs)
{
    int64_t len = bdrv_getlength(bs->file->bs);
    return len < TESTFMT_DATA ? 0 : len - TESTFMT_DATA;
}

static const BlockDriver bdrv_testfmt = {
    .format_name = "testfmt",
    .is_format = true,
    .supports_backing = true,
    .probe = testfmt_probe,
    .open = testfmt_open,
    .close = testfmt_close,
    .co_preadv = testfmt_co_preadv,
    .getlength = testfmt_getlength,
};

/* A format with no children of its own, for limits merging. */
static const BlockDriver bdrv_pair = { .format_name = "pair", .is_format = true };

/* A protocol known only by its prefix, for bdrv_find_protocol. */
static int proto_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)flags; (void)errp;
    char *fn = NULL;
    optdict_take_str(options, "filename", NULL, &fn);
    snprintf(bs->filename, sizeof(bs->filename), "%s", fn ? fn : "");
    free(fn);
    bdrv_set_total_bytes(bs, 4096);
    return 0;
}

static const BlockDriver bdrv_testproto = {
    .format_name = "testproto",
    .protocol_names = { "tproto", "tproto-alias" },
    .open = proto_open,
};

static int setup(void **state)
{
    (void)state;
    test_tmpdir_create("open");
    test_loop_init();
    bdrv_register(&bdrv_testfmt);
    bdrv_register(&bdrv_pair);
    bdrv_register(&bdrv_testproto);
    return 0;
}

static void make_raw(const char *path, size_t size, int byte)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    char *buf = malloc(size);
    memset(buf, byte, size);
    assert_int_equal(write(fd, buf, size), (ssize_t)size);
    free(buf);
    close(fd);
}

static void make_testfmt(const char *path, const char *backing, const char *backing_fmt,
                         int fill)
{
    char hdr[TESTFMT_DATA + 4096];
    memset(hdr, 0, TESTFMT_DATA);
    memset(hdr + TESTFMT_DATA, fill, 4096);
    memcpy(hdr, TESTFMT_MAGIC, 8);
    if (backing) {
        snprintf(hdr + 16, 256, "%s", backing);
    }
    if (backing_fmt) {
        snprintf(hdr + 272, 32, "%s", backing_fmt);
    }
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_int_equal(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    close(fd);
}

static BlockDriverState *must_open(const char *filename, const char *opts, int flags)
{
    Error *err = NULL;
    OptDict *o = opts ? optdict_parse(opts, NULL, &err) : NULL;
    BlockDriverState *bs = bdrv_open(filename, o, flags, &err);
    if (!bs) {
        fail_msg("open %s / %s: %s", filename ? filename : "-", opts ? opts : "-",
                 error_get_pretty(err));
    }
    return bs;
}

static void expect_error(const char *filename, const char *opts, int flags, const char *msg)
{
    Error *err = NULL;
    OptDict *o = opts ? optdict_parse(opts, NULL, &err) : NULL;
    assert_null(err);
    BlockDriverState *bs = bdrv_open(filename, o, flags, &err);
    if (bs) {
        fail_msg("open %s / %s succeeded, expected '%s'", filename, opts, msg);
    }
    if (!err || strcmp(error_get_pretty(err), msg) != 0) {
        fail_msg("got error '%s', expected '%s'", err ? error_get_pretty(err) : "(none)", msg);
    }
    error_free(err);
}

static void test_open_by_filename_probes(void **state)
{
    (void)state;
    require_driver("raw");
    const char *raw = test_path("plain.img"), *tf = test_path("fmt.img");
    make_raw(raw, 64 * KiB, 0x5a);
    make_testfmt(tf, NULL, NULL, 0x11);

    BlockDriverState *bs = must_open(raw, NULL, 0);
    assert_string_equal(bdrv_get_format_name(bs), "raw");
    assert_true(bs->probed);
    assert_non_null(bs->file);
    assert_string_equal(bs->file->name, "file");
    assert_int_equal(bs->file->role, BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY);
    assert_ptr_equal(bs->file->parent, bs);
    assert_ptr_equal(bdrv_find_child(bs, "file"), bs->file);
    assert_string_equal(bdrv_get_format_name(bs->file->bs), "file");
    assert_string_equal(bs->filename, raw);
    assert_int_equal(bdrv_getlength(bs), 64 * KiB);
    bdrv_unref(bs);

    bs = must_open(tf, NULL, 0);
    assert_string_equal(bdrv_get_format_name(bs), "testfmt");
    assert_true(bs->probed);
    assert_int_equal(bdrv_getlength(bs), 4096);
    BdrvChild *c = test_child_new(bs);
    uint8_t buf[16];
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0x11));
    test_child_free(c);
    bdrv_unref(bs);

    /* A given driver is used as is: no probing. */
    bs = must_open(tf, "driver=raw", 0);
    assert_string_equal(bdrv_get_format_name(bs), "raw");
    assert_false(bs->probed);
    assert_int_equal(bdrv_getlength(bs), TESTFMT_DATA + 4096);
    bdrv_unref(bs);

    /* bdrv_probe_format on its own. */
    Error *err = NULL;
    assert_ptr_equal(bdrv_probe_format(tf, &err), &bdrv_testfmt);
    assert_string_equal(bdrv_probe_format(raw, &err)->format_name, "raw");
    assert_null(err);
}

static void test_open_by_options_and_json(void **state)
{
    (void)state;
    require_driver("raw");
    const char *raw = test_path("opts.img");
    make_raw(raw, 8 * KiB, 1);
    char opts[700];

    snprintf(opts, sizeof(opts), "driver=raw,file.filename=%s,node-name=top", raw);
    BlockDriverState *bs = must_open(NULL, opts, BDRV_O_RDWR);
    assert_string_equal(bs->node_name, "top");
    assert_ptr_equal(bdrv_find_node("top"), bs);
    assert_false(bs->probed);
    assert_false(bs->read_only);
    assert_string_equal(bs->filename, raw);
    char *g = bdrv_graph_to_string(bs);
    char expect[800];
    snprintf(expect, sizeof(expect), "driver=raw,node-name=top,file.driver=file,file.filename=%s",
             raw);
    assert_string_equal(g, expect);
    free(g);
    bdrv_unref(bs);
    assert_null(bdrv_find_node("top"));

#ifdef CONFIG_JSON
    char json[800];
    snprintf(json, sizeof(json),
             "json:{\"driver\": \"raw\", \"offset\": 4096, \"file\": {\"driver\": \"file\", "
             "\"filename\": \"%s\"}}", raw);
    bs = must_open(json, NULL, 0);
    assert_string_equal(bdrv_get_format_name(bs), "raw");
    assert_int_equal(bdrv_getlength(bs), 4 * KiB);
    bdrv_unref(bs);
    expect_error("json:{\"driver\": ", NULL, 0, "Could not parse JSON options "
                 "'{\"driver\": ': unexpected end of input");
#endif

    /* A string "file" naming an existing node is a reference to it. */
    snprintf(opts, sizeof(opts), "driver=file,filename=%s,node-name=proto", raw);
    BlockDriverState *proto = must_open(NULL, opts, 0);
    bs = must_open(NULL, "driver=raw,file=proto", 0);
    assert_ptr_equal(bs->file->bs, proto);
    assert_int_equal(proto->refcnt, 2);
    bdrv_unref(bs);
    assert_int_equal(proto->refcnt, 1);
    expect_error(NULL, "driver=raw,file=proto,file.filename=x", 0,
                 "Cannot reference an existing block device ('proto') with additional "
                 "options ('file.filename')");
    bdrv_unref(proto);
}

static void test_open_errors(void **state)
{
    (void)state;
    require_driver("raw");
    char msg[700], opts[700];
    const char *raw = test_path("err.img");
    make_raw(raw, 4096, 0);

    expect_error(raw, "driver=foo", 0, "Unknown driver 'foo'");
    expect_error(raw, "driver=raw,foo=bar", 0,
                 "Block format 'raw' does not support the option 'foo'");
    snprintf(opts, sizeof(opts), "driver=raw,file.filename=%s,file.bar=1", raw);
    expect_error(NULL, opts, 0, "Block protocol 'file' does not support the option 'bar'");
    expect_error(NULL, "driver=raw", 0, "A block device must be specified for \"file\"");
    expect_error(NULL, NULL, 0,
                 "No driver given and no file name to probe the format of (give driver=... "
                 "or a file name)");
    snprintf(msg, sizeof(msg), "Could not open '%s/missing.img': No such file or directory",
             test_tmpdir());
    expect_error(test_path("missing.img"), NULL, 0, msg);
    expect_error(raw, "cache=sometimes", 0, "Invalid cache mode 'sometimes': expected none, "
                 "writeback, writethrough, directsync or unsafe");
    expect_error(raw, "read-only=perhaps", 0,
                 "Invalid value 'perhaps' for option 'read-only': expected 'on' or 'off'");
    expect_error(raw, "detect-zeroes=unmap", 0,
                 "detect-zeroes=unmap needs discard=unmap (zeroes can only be unmapped where "
                 "discards are)");
    expect_error(raw, "node-name=1bad", 0, "Invalid node-name '1bad': it must start with a "
                 "letter and contain only letters, digits, '-', '.' and '_' (at most 31 "
                 "characters)");
    BlockDriverState *a = must_open(raw, "node-name=dup", 0);
    expect_error(raw, "node-name=dup", 0, "Duplicate nodes with node-name='dup'");
    bdrv_unref(a);
    /* A format that rejects the file: its message, naming the file. */
    snprintf(msg, sizeof(msg), "testfmt: '%s' is not a testfmt image", raw);
    expect_error(raw, "driver=testfmt", 0, msg);
}

static void test_generic_options_and_inheritance(void **state)
{
    (void)state;
    require_driver("raw");
    const char *raw = test_path("gen.img");
    make_raw(raw, 4096, 0);

    BlockDriverState *bs = must_open(raw, "cache=none,discard=unmap,detect-zeroes=unmap",
                                     BDRV_O_RDWR);
    assert_true(bs->open_flags & BDRV_O_NOCACHE);
    assert_true(bs->open_flags & BDRV_O_UNMAP);
    assert_int_equal(bs->detect_zeroes, BDRV_DETECT_ZEROES_UNMAP);
    /* Children inherit cache and discard modes, not detect-zeroes. */
    assert_true(bs->file->bs->open_flags & BDRV_O_NOCACHE);
    assert_true(bs->file->bs->open_flags & BDRV_O_UNMAP);
    assert_int_equal(bs->file->bs->detect_zeroes, BDRV_DETECT_ZEROES_OFF);
    assert_true(bs->file->bs->bl.request_alignment >= 512);
    bdrv_unref(bs);

    bs = must_open(raw, "cache=unsafe,copy-on-read=on,file.cache.direct=off", BDRV_O_RDWR);
    assert_true(bs->open_flags & BDRV_O_NO_FLUSH);
    assert_true(bs->copy_on_read);
    assert_false(bs->file->bs->copy_on_read);
    assert_false(bs->file->bs->open_flags & BDRV_O_NOCACHE);
    bdrv_unref(bs);

    /* read-only=on overrides the caller's RDWR, and reaches the child. */
    bs = must_open(raw, "read-only=on", BDRV_O_RDWR);
    assert_true(bs->read_only);
    assert_true(bs->file->bs->read_only);
    BdrvChild *c = test_child_new(bs);
    char buf[512] = { 0 };
    int ret = bdrv_pwrite(c, 0, sizeof(buf), buf, 0);
    assert_true(ret == -EPERM || ret == -EACCES);
    test_child_free(c);
    bdrv_unref(bs);

    int flags = BDRV_O_RDWR;
    Error *err = NULL;
    assert_int_equal(bdrv_parse_cache_mode("directsync", &flags, &err), 0);
    assert_int_equal(flags, BDRV_O_RDWR | BDRV_O_NOCACHE | BDRV_O_WRITETHROUGH);
    assert_int_equal(bdrv_parse_cache_mode("writeback", &flags, &err), 0);
    assert_int_equal(flags, BDRV_O_RDWR);
    assert_int_equal(bdrv_parse_cache_mode("writethrough", &flags, &err), 0);
    assert_int_equal(flags, BDRV_O_RDWR | BDRV_O_WRITETHROUGH);
}

static void test_backing(void **state)
{
    (void)state;
    require_driver("raw");
    const char *base_raw = test_path("base-raw.img"), *base_tf = test_path("base-tf.img");
    const char *top1 = test_path("top1.img"), *top2 = test_path("top2.img");
    /* A raw base whose content looks like testfmt: a recorded format "raw"
     * must win over probing. */
    make_testfmt(base_raw, NULL, NULL, 0x22);
    make_testfmt(top1, "base-raw.img", "raw", 0x33);   /* relative name */
    BlockDriverState *bs = must_open(top1, NULL, BDRV_O_RDWR);
    assert_non_null(bs->backing);
    BlockDriverState *base = bdrv_backing_bs(bs);
    assert_string_equal(bs->backing->name, "backing");
    assert_int_equal(bs->backing->role, BDRV_CHILD_COW);
    assert_string_equal(bdrv_get_format_name(base), "raw");
    assert_false(base->probed);
    assert_true(base->read_only);
    assert_true(base->file->bs->read_only);
    assert_false(bs->read_only);
    assert_string_equal(base->filename, base_raw);
    bdrv_unref(bs);

    /* Without a recorded format the backing file is probed (read-only). */
    make_testfmt(base_tf, NULL, NULL, 0x44);
    make_testfmt(top2, base_tf, NULL, 0x55);
    bs = must_open(top2, NULL, BDRV_O_RDWR);
    assert_string_equal(bdrv_get_format_name(bdrv_backing_bs(bs)), "testfmt");
    assert_true(bdrv_backing_bs(bs)->probed);
    assert_true(bdrv_backing_bs(bs)->read_only);
    bdrv_unref(bs);

    /* "backing": null (empty) - no backing file. */
    bs = must_open(top2, "backing=", 0);
    assert_null(bs->backing);
    bdrv_unref(bs);

    /* Options for the backing node override what the image says. */
    char opts[700];
    snprintf(opts, sizeof(opts), "backing.driver=raw,backing.file.filename=%s", base_tf);
    bs = must_open(top2, opts, 0);
    assert_string_equal(bdrv_get_format_name(bdrv_backing_bs(bs)), "raw");
    bdrv_unref(bs);

    /* A missing backing file: the message says so and names it. */
    const char *top3 = test_path("top3.img");
    make_testfmt(top3, "gone.img", "raw", 0);
    char msg[800];
    snprintf(msg, sizeof(msg), "Could not open backing file: Could not open '%s/gone.img': "
             "No such file or directory", test_tmpdir());
    expect_error(top3, NULL, 0, msg);

    /* A format without backing support does not take backing options. */
    expect_error(base_raw, "driver=raw,backing.driver=raw", 0,
                 "Block format 'raw' does not support the option 'backing.driver'");
}

static void test_refcount_and_close_order(void **state)
{
    (void)state;
    const char *tf = test_path("rc.img");
    make_testfmt(tf, NULL, NULL, 1);
    BlockDriverState *bs = must_open(tf, "node-name=rctop,file.node-name=rcfile", 0);
    BlockDriverState *file = bdrv_find_node("rcfile");
    assert_ptr_equal(file, bs->file->bs);
    assert_int_equal(bs->refcnt, 1);
    assert_int_equal(file->refcnt, 1);

    bdrv_ref(bs);
    bdrv_unref(bs);
    assert_ptr_equal(bdrv_find_node("rctop"), bs);   /* still open */

    /* Hold the file node: closing the format leaves it open. */
    bdrv_ref(file);
    n_closed = 0;
    bdrv_unref(bs);
    assert_int_equal(n_closed, 1);
    assert_null(bdrv_find_node("rctop"));
    assert_ptr_equal(bdrv_find_node("rcfile"), file);
    assert_int_equal(file->refcnt, 1);
    bdrv_unref(file);
    assert_null(bdrv_find_node("rcfile"));

    /* attach consumes the caller's reference; unref_child drops it. */
    BlockDriverState *p = bdrv_new_open_driver(&bdrv_pair, "pairnode", 0, NULL, NULL);
    assert_non_null(p);
    MemConfig cfg = { .size = 4096 };
    BlockDriverState *m = mem_node_new(&cfg);
    bdrv_ref(m);
    BdrvChild *c = bdrv_attach_child(p, m, "children.0", BDRV_CHILD_DATA, NULL);
    assert_non_null(c);
    assert_int_equal(c->index, 0);
    assert_int_equal(m->refcnt, 2);
    Error *err = NULL;
    bdrv_ref(m);
    assert_null(bdrv_attach_child(p, m, "children.0", BDRV_CHILD_DATA, &err));
    assert_non_null(strstr(error_get_pretty(err), "already has a child named 'children.0'"));
    error_free(err);
    assert_int_equal(m->refcnt, 2);
    bdrv_unref_child(p, c);
    assert_int_equal(m->refcnt, 1);
    assert_null(p->children);
    bdrv_unref(m);
    bdrv_unref(p);
}

static void test_limits_merge(void **state)
{
    (void)state;
    require_driver("raw");
    require_driver("blkdebug");
    BlockDriverState *p = bdrv_new_open_driver(&bdrv_pair, NULL, BDRV_O_RDWR, NULL, NULL);
    MemConfig a = { .request_alignment = 512, .max_transfer = 1 * MiB, .min_mem_alignment = 512,
                    .max_pdiscard = 0 };
    MemConfig b = { .request_alignment = 4096, .max_transfer = 256 * KiB,
                    .min_mem_alignment = 8, .max_pdiscard = 64 * KiB };
    MemConfig z = { .request_alignment = 1, .max_transfer = 0 };
    assert_non_null(bdrv_attach_child(p, mem_node_new(&a), "children.0", BDRV_CHILD_DATA,
                                      NULL));
    assert_non_null(bdrv_attach_child(p, mem_node_new(&b), "children.1", BDRV_CHILD_DATA,
                                      NULL));
    assert_non_null(bdrv_attach_child(p, mem_node_new(&z), "children.2", BDRV_CHILD_DATA,
                                      NULL));
    bdrv_refresh_limits(p, NULL);
    assert_int_equal(p->bl.request_alignment, 4096);       /* max of alignments */
    assert_int_equal(p->bl.max_transfer, 256 * KiB);       /* min of non-zero limits */
    assert_int_equal(p->bl.min_mem_alignment, 512);
    assert_int_equal(p->bl.max_pdiscard, 64 * KiB);
    bdrv_unref(p);

    /* Through a real graph: blkdebug's limits show on the raw node above. */
    const char *raw = test_path("lim.img");
    make_raw(raw, 64 * KiB, 0);
    char opts[700];
    snprintf(opts, sizeof(opts), "driver=raw,file.driver=blkdebug,file.align=4096,"
             "file.max-transfer=16k,file.image.filename=%s", raw);
    BlockDriverState *bs = must_open(NULL, opts, 0);
    assert_int_equal(bs->bl.request_alignment, 4096);
    assert_int_equal(bs->bl.max_transfer, 16 * KiB);
    assert_int_equal(bs->file->bs->bl.request_alignment, 4096);
    /* Under a format the filter's child is a protocol: the file itself. */
    BlockDriverState *img = bs->file->bs->file->bs;
    assert_string_equal(bdrv_get_format_name(img), "file");
    assert_false(img->probed);
    assert_int_equal(img->bl.request_alignment, 1);
    assert_ptr_equal(bdrv_skip_filters(bs->file->bs), img);
    bdrv_unref(bs);
}

/* Roles decide which children limit a parent (QEMU's rules, include/block-driver.h). */
static void test_limits_merge_by_role(void **state)
{
    (void)state;
    BlockDriverState *p = bdrv_new_open_driver(&bdrv_pair, NULL, BDRV_O_RDWR, NULL, NULL);
    MemConfig meta = { .request_alignment = 65536, .max_transfer = 4 * KiB };
    MemConfig data = { .request_alignment = 512, .discard_enotsup = true };
    MemConfig cow = { .request_alignment = 4096, .max_transfer = 1 * MiB };
    BdrvChild *mc = bdrv_attach_child(p, mem_node_new(&meta), "file",
                                      BDRV_CHILD_METADATA | BDRV_CHILD_PRIMARY, NULL);
    BdrvChild *dc = bdrv_attach_child(p, mem_node_new(&data), "data-file", BDRV_CHILD_DATA, NULL);
    assert_non_null(mc);
    assert_non_null(dc);
    assert_ptr_equal(p->file, mc);
    bdrv_refresh_limits(p, NULL);
    /* A metadata-only file does not limit guest requests; the data file does. */
    assert_int_equal(p->bl.request_alignment, 512);
    assert_int_equal(p->bl.max_transfer, 0);
    /* Discard follows the data child: the metadata file could, the data cannot. */
    assert_true(mc->bs->bl.has_discard);
    assert_false(dc->bs->bl.has_discard);
    assert_false(p->bl.has_discard);

    /* A backing file limits reads through it, but gives no discard. */
    BdrvChild *bc = bdrv_attach_child(p, mem_node_new(&cow), "backing", BDRV_CHILD_COW, NULL);
    assert_ptr_equal(p->backing, bc);
    bdrv_refresh_limits(p, NULL);
    assert_int_equal(p->bl.request_alignment, 4096);
    assert_int_equal(p->bl.max_transfer, 1 * MiB);
    assert_false(p->bl.has_discard);
    bdrv_unref(p);

    /* A filtered child is the parent's data: its discard counts. */
    p = bdrv_new_open_driver(&bdrv_pair, NULL, BDRV_O_RDWR, NULL, NULL);
    MemConfig f = { .request_alignment = 2048 };
    assert_non_null(bdrv_attach_child(p, mem_node_new(&f), "file",
                                      BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, NULL));
    bdrv_refresh_limits(p, NULL);
    assert_int_equal(p->bl.request_alignment, 2048);
    assert_true(p->bl.has_discard);
    bdrv_unref(p);
}

static void test_registry(void **state)
{
    (void)state;
    static const char *const builtin[] = {
        "file",
#ifdef CONFIG_RAW
        "raw",
#endif
#ifdef CONFIG_NULL
        "null",
#endif
#ifdef CONFIG_BLKDEBUG
        "blkdebug",
#endif
    };
    for (size_t i = 0; i < ARRAY_SIZE(builtin); i++) {
        const BlockDriver *drv = bdrv_find_format(builtin[i]);
        assert_non_null(drv);
        assert_string_equal(drv->format_name, builtin[i]);
    }
    assert_null(bdrv_find_format("nonesuch"));
    bool seen = false;
    const BlockDriver *drv;
    for (int i = 0; (drv = bdrv_driver_at(i)); i++) {
        seen |= drv == &bdrv_testfmt;
    }
    assert_true(seen);
    bdrv_register(&bdrv_testfmt);    /* twice is harmless */
    int n = 0;
    for (int i = 0; (drv = bdrv_driver_at(i)); i++) {
        n += drv == &bdrv_testfmt;
    }
    assert_int_equal(n, 1);
}

/* A filter under a format is a protocol: protocol-ness passes down through
 * blkdebug, while blkdebug at the top lets its image be probed (as QEMU). */
static void test_filter_passes_protocol_down(void **state)
{
    (void)state;
    require_driver("raw");
    require_driver("blkdebug");
    const char *tf = test_path("filtered.img");
    make_testfmt(tf, NULL, NULL, 0x33);
    char opts[700];
    uint8_t buf[8];

    /* raw over blkdebug over a testfmt file: the file's bytes, magic first */
    snprintf(opts, sizeof(opts), "driver=raw,file.driver=blkdebug,file.image.filename=%s", tf);
    BlockDriverState *bs = must_open(NULL, opts, 0);
    BlockDriverState *dbg = bs->file->bs;
    assert_string_equal(bdrv_get_format_name(dbg), "blkdebug");
    assert_string_equal(bdrv_get_format_name(dbg->file->bs), "file");
    assert_int_equal(bdrv_getlength(bs), TESTFMT_DATA + 4096);
    BdrvChild *c = test_child_new(bs);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    assert_memory_equal(buf, TESTFMT_MAGIC, 8);
    test_child_free(c);
    bdrv_unref(bs);

    /* a format over blkdebug finds its own header */
    snprintf(opts, sizeof(opts), "driver=testfmt,file.driver=blkdebug,file.image.filename=%s",
             tf);
    bs = must_open(NULL, opts, 0);
    assert_string_equal(bdrv_get_format_name(bs->file->bs->file->bs), "file");
    assert_int_equal(bdrv_getlength(bs), 4096);
    c = test_child_new(bs);
    assert_int_equal(bdrv_pread(c, 0, sizeof(buf), buf, 0), 0);
    assert_true(test_buf_is(buf, sizeof(buf), 0x33));
    test_child_free(c);
    bdrv_unref(bs);

    /* two filters deep, the protocol flag still arrives */
    snprintf(opts, sizeof(opts), "driver=raw,file.driver=blkdebug,file.image.driver=blkdebug,"
             "file.image.image.filename=%s", tf);
    bs = must_open(NULL, opts, 0);
    assert_string_equal(bdrv_get_format_name(bs->file->bs->file->bs->file->bs), "file");
    bdrv_unref(bs);

    /* blkdebug at the top: nothing above expects a protocol, so probe */
    snprintf(opts, sizeof(opts), "driver=blkdebug,image.filename=%s", tf);
    bs = must_open(NULL, opts, 0);
    assert_string_equal(bdrv_get_format_name(bs->file->bs), "testfmt");
    assert_true(bs->file->bs->probed);
    bdrv_unref(bs);
}

/* A filename's prefix picks the protocol; adding one touches only its driver. */
static void test_protocol_prefix(void **state)
{
    (void)state;
    Error *err = NULL;
    assert_ptr_equal(bdrv_find_protocol("tproto://x", NULL), &bdrv_testproto);
    assert_ptr_equal(bdrv_find_protocol("tproto-alias:y", NULL), &bdrv_testproto);
    assert_string_equal(bdrv_driver_name(bdrv_find_protocol("/a/tproto:b", NULL)), "file");
    assert_string_equal(bdrv_driver_name(bdrv_find_protocol("a:b.img", NULL)), "file");
    assert_string_equal(bdrv_driver_name(bdrv_find_protocol("file:/x", NULL)), "file");
    assert_string_equal(bdrv_driver_name(bdrv_find_protocol("plain.img", NULL)), "file");
    if (bdrv_find_format("null")) {
        assert_string_equal(bdrv_driver_name(bdrv_find_protocol("null-co://", NULL)), "null");
        assert_string_equal(bdrv_driver_name(bdrv_find_protocol("null://", NULL)), "null");
    }
    /* what `ublkd add TYPE FILE` neither access()es nor makes absolute */
    assert_true(bdrv_is_protocol_filename("tproto://x"));
    assert_false(bdrv_is_protocol_filename("/a/tproto:b"));
    assert_false(bdrv_is_protocol_filename("a:b.img"));
    assert_false(bdrv_is_protocol_filename("file:/x"));
    assert_false(bdrv_is_protocol_filename("plain.img"));
    assert_false(bdrv_is_protocol_filename("nosuch://x"));
    assert_null(bdrv_find_protocol("nosuch://host/x", &err));
    assert_string_equal(error_get_pretty(err), "Unknown protocol 'nosuch' in 'nosuch://host/x'");
    error_free(err);
    err = NULL;

    /* bdrv_open as a protocol, and under a format given by name */
    BlockDriverState *bs = bdrv_open("tproto://node1", NULL, BDRV_O_PROTOCOL, &err);
    assert_non_null(bs);
    assert_string_equal(bdrv_get_format_name(bs), "testproto");
    assert_string_equal(bdrv_get_filename(bs), "tproto://node1");
    bdrv_unref(bs);
    assert_null(bdrv_open("nosuch://x", NULL, BDRV_O_PROTOCOL, &err));
    assert_string_equal(error_get_pretty(err), "Unknown protocol 'nosuch' in 'nosuch://x'");
    error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_open_by_filename_probes),
        cmocka_unit_test(test_open_by_options_and_json),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_generic_options_and_inheritance),
        cmocka_unit_test(test_backing),
        cmocka_unit_test(test_refcount_and_close_order),
        cmocka_unit_test(test_limits_merge),
        cmocka_unit_test(test_limits_merge_by_role),
        cmocka_unit_test(test_filter_passes_protocol_down),
        cmocka_unit_test(test_protocol_prefix),
    };
    return cmocka_run_group_tests(tests, setup, test_tmpdir_teardown);
}
