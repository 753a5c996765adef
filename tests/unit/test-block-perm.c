/*
 * test-block-perm.c - permissions on graph edges (io/block-perm.c): the
 * defaults by role, cumulative permissions, conflicts refused on attach and
 * replace with nothing changed, and the node that nobody uses yet being its
 * opener's.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "block-backend.h"
#include "test-util.h"

enum {
    CR = BLK_PERM_CONSISTENT_READ,
    W = BLK_PERM_WRITE,
    WU = BLK_PERM_WRITE_UNCHANGED,
    RS = BLK_PERM_RESIZE,
    ALL = BLK_PERM_ALL,
};

static BlockDriverState *node(bool read_only)
{
    MemConfig cfg = { .size = 64 * KiB, .read_only = read_only };
    return mem_node_new(&cfg);
}

static BlockDriverState *format_node(void)
{
    MemConfig cfg = { .size = 64 * KiB, .format = true };
    return mem_node_new(&cfg);
}

/* QEMU's defaults, role by role. */
static void test_default_child_perm(void **state)
{
    (void)state;
    BlockDriverState *rw = node(false), *ro = node(true);
    unsigned p, s;

    /* A filter passes its users' needs and sharing through. */
    bdrv_default_child_perm(rw, NULL, BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, CR | W, CR | WU,
                            &p, &s);
    assert_int_equal(p, CR | W);
    assert_int_equal(s, CR | WU);
    /* A format's file: metadata is read and (writable) written and resized
     * even if the users only read; nobody else writes or resizes it. */
    bdrv_default_child_perm(rw, NULL, BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, CR, ALL, &p, &s);
    assert_int_equal(p, CR | W | RS);
    assert_int_equal(s, CR | WU);
    bdrv_default_child_perm(ro, NULL, BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, CR, ALL, &p, &s);
    assert_int_equal(p, CR);
    assert_int_equal(s, CR | WU);
    /* A data file: a writer may grow it; nobody else resizes it. */
    bdrv_default_child_perm(rw, NULL, BDRV_CHILD_DATA, W, ALL, &p, &s);
    assert_int_equal(p, W | RS);
    assert_int_equal(s, CR | W | WU);
    bdrv_default_child_perm(rw, NULL, BDRV_CHILD_DATA, WU, ALL, &p, &s);
    assert_int_equal(p, W | WU | RS);
    /* A metadata-only file (qcow2 with a data-file) while read-only. */
    bdrv_default_child_perm(ro, NULL, BDRV_CHILD_METADATA | BDRV_CHILD_PRIMARY, 0, ALL, &p, &s);
    assert_int_equal(p, CR);
    assert_int_equal(s, CR | WU);
    /* Backing: read only; others may write it only if the users allow
     * writes under them. */
    bdrv_default_child_perm(rw, NULL, BDRV_CHILD_COW, CR | W | RS, CR | WU, &p, &s);
    assert_int_equal(p, CR);
    assert_int_equal(s, CR | WU);
    bdrv_default_child_perm(rw, NULL, BDRV_CHILD_COW, CR | W, ALL, &p, &s);
    assert_int_equal(p, CR);
    assert_int_equal(s, CR | W | WU | RS);
    bdrv_unref(rw);
    bdrv_unref(ro);
}

/* Until someone attaches it a node is its opener's; then its users'. */
static void test_cumulative_perm(void **state)
{
    (void)state;
    BlockDriverState *bs = node(false);
    unsigned p, s;
    bdrv_get_cumulative_perm(bs, &p, &s);
    assert_int_equal(p, CR | W | RS);
    assert_int_equal(s, CR | WU);

    /* A handle that states no needs changes nothing. */
    BdrvChild *h = test_child_new(bs);
    bdrv_get_cumulative_perm(bs, &p, &s);
    assert_int_equal(p, CR | W | RS);
    assert_int_equal(s, CR | WU);

    /* Two readers: union of needs, intersection of sharing. */
    bdrv_ref(bs);
    BdrvChild *r1 = bdrv_root_attach_child(bs, "r1", BDRV_CHILD_FILTERED, CR, ALL, NULL);
    bdrv_ref(bs);
    BdrvChild *r2 = bdrv_root_attach_child(bs, "r2", BDRV_CHILD_FILTERED, CR | WU, CR | W | WU,
                                           NULL);
    assert_non_null(r1);
    assert_non_null(r2);
    bdrv_get_cumulative_perm(bs, &p, &s);
    assert_int_equal(p, CR | WU);
    assert_int_equal(s, CR | W | WU);
    bdrv_unref_child(NULL, r2);
    bdrv_get_cumulative_perm(bs, &p, &s);
    assert_int_equal(p, CR);
    assert_int_equal(s, ALL);
    /* The last user gone, the opener holds it again. */
    bdrv_unref_child(NULL, r1);
    bdrv_get_cumulative_perm(bs, &p, &s);
    assert_int_equal(p, CR | W | RS);
    test_child_free(h);
    bdrv_unref(bs);
}

/* A writer on a node another user reads as a backing file is refused, in
 * either order, with a message naming the user, the edge, the permission
 * and the node; nothing is left attached. */
static void test_conflicting_attach_refused(void **state)
{
    (void)state;
    BlockDriverState *top = format_node(), *base = node(false);
    mem_set_backing(top, base);
    char want[256];
    Error *err = NULL;

    bdrv_ref(base);
    assert_null(bdrv_root_attach_child(base, "writer", BDRV_CHILD_FILTERED, CR | W, ALL, &err));
    snprintf(want, sizeof(want), "Conflicts with use by node '%s' as 'backing', which does not "
             "allow 'write' on node '%s'", bdrv_get_node_name(top), bdrv_get_node_name(base));
    assert_string_equal(error_get_pretty(err), want);
    error_free(err);
    err = NULL;
    assert_ptr_equal(base->parents, top->backing);
    assert_null(base->parents->next_parent);
    assert_int_equal(base->refcnt, 2);   /* the caller's and the backing edge's */

    /* A BlockBackend writing base first; then top cannot take it as backing. */
    bdrv_unref_child(top, top->backing);
    BlockBackend *blk = blk_new_with_bs(base, &err);
    assert_non_null(blk);
    bdrv_ref(base);
    assert_null(bdrv_attach_child(top, base, "backing", BDRV_CHILD_COW, &err));
    snprintf(want, sizeof(want), "Conflicts with use by node '%s' as 'backing', which does not "
             "allow 'write, resize' on node '%s'", bdrv_get_node_name(top),
             bdrv_get_node_name(base));
    assert_string_equal(error_get_pretty(err), want);
    error_free(err);
    err = NULL;
    assert_null(top->backing);
    assert_null(top->children);
    assert_int_equal(base->refcnt, 2);   /* the caller's and the BlockBackend's */

    /* A reader is fine next to it: the backend shares reads. */
    bdrv_ref(base);
    BdrvChild *r = bdrv_root_attach_child(base, "reader", BDRV_CHILD_FILTERED, CR, ALL, &err);
    assert_non_null(r);
    /* ... but not one that lets nobody write. */
    bdrv_ref(base);
    assert_null(bdrv_root_attach_child(base, "excl", BDRV_CHILD_FILTERED, CR, CR, &err));
    assert_non_null(strstr(error_get_pretty(err), "which does not allow 'write, resize' on node"));
    error_free(err);
    bdrv_unref_child(NULL, r);
    blk_unref(blk);
    bdrv_unref(top);
    bdrv_unref(base);
}

/* Two formats cannot both write one file; a read-only one can share it. */
static void test_two_formats_one_file(void **state)
{
    (void)state;
    BlockDriverState *file = node(false), *f1 = format_node(), *f2 = format_node();
    Error *err = NULL;
    bdrv_ref(file);
    BdrvChild *c1 = bdrv_attach_child(f1, file, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY,
                                      &err);
    assert_non_null(c1);
    assert_int_equal(c1->perm, CR | W | RS);
    assert_int_equal(c1->shared_perm, CR | WU);
    bdrv_ref(file);
    assert_null(bdrv_attach_child(f2, file, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, &err));
    assert_non_null(strstr(error_get_pretty(err), "Conflicts with use by node '"));
    error_free(err);
    err = NULL;
    assert_int_equal(file->refcnt, 2);

    /* Even read-only, f2 lets nobody write its metadata under it. */
    assert_int_equal(bdrv_reopen_set_read_only(f2, true, &err), 0);
    bdrv_ref(file);
    assert_null(bdrv_attach_child(f2, file, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, &err));
    error_free(err);
    bdrv_unref(f2);
    bdrv_unref(f1);   /* drops its edge: the file is its opener's again */
    unsigned p, s;
    bdrv_get_cumulative_perm(file, &p, &s);
    assert_int_equal(p, CR | W | RS);
    bdrv_unref(file);
}

/* A replace whose new child cannot give what the edge needs changes nothing. */
static void test_replace_refused_by_perm(void **state)
{
    (void)state;
    BlockDriverState *top = format_node(), *base = node(false), *other = node(false);
    mem_set_backing(top, base);
    /* other has a writer that does not let anyone else in */
    bdrv_ref(other);
    BdrvChild *w = bdrv_root_attach_child(other, "w", BDRV_CHILD_FILTERED, CR | W, CR, NULL);
    assert_non_null(w);
    Error *err = NULL;
    assert_int_equal(bdrv_replace_child_bs(top->backing, other, &err), -EPERM);
    assert_non_null(strstr(error_get_pretty(err), "Conflicts with use by "));
    error_free(err);
    assert_ptr_equal(top->backing->bs, base);
    assert_ptr_equal(base->parents, top->backing);
    assert_ptr_equal(other->parents, w);
    assert_null(w->next_parent);
    assert_int_equal(other->refcnt, 2);

    bdrv_unref_child(NULL, w);
    assert_int_equal(bdrv_replace_child_bs(top->backing, other, &err), 0);
    assert_null(base->parents);
    bdrv_unref(top);
    bdrv_unref(base);
    bdrv_unref(other);
}

/* Reopening read-only lowers what a BlockBackend on the node needs, so its
 * node can then be shared with a backing user; read-write again is refused
 * while that user does not share writing. */
static void test_reopen_changes_root_perm(void **state)
{
    (void)state;
    BlockDriverState *base = node(false), *top = format_node();
    Error *err = NULL;
    BlockBackend *blk = blk_new_with_bs(base, &err);
    assert_non_null(blk);
    assert_int_equal(base->parents->perm, CR | W | RS);
    assert_int_equal(bdrv_reopen_set_read_only(base, true, &err), 0);
    assert_int_equal(base->parents->perm, CR);
    mem_set_backing(top, base);
    assert_int_equal(bdrv_reopen_set_read_only(base, false, &err), -EPERM);
    assert_non_null(strstr(error_get_pretty(err), "as 'backing', which does not allow 'write"));
    error_free(err);
    assert_true(base->read_only);
    bdrv_unref(top);
    blk_unref(blk);
    bdrv_unref(base);
}

/* A format that writes its metadata cannot sit on a read-only file. */
static void test_writer_on_read_only_node_refused(void **state)
{
    (void)state;
    BlockDriverState *fmt = format_node(), *ro = node(true);
    Error *err = NULL;
    bdrv_ref(ro);
    assert_null(bdrv_attach_child(fmt, ro, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, &err));
    char want[256];
    snprintf(want, sizeof(want), "Node '%s' is read-only, but node '%s' needs to write to it as "
             "'file'", bdrv_get_node_name(ro), bdrv_get_node_name(fmt));
    assert_string_equal(error_get_pretty(err), want);
    error_free(err);
    assert_null(ro->parents);
    /* read-only, the format only reads it */
    assert_int_equal(bdrv_reopen_set_read_only(fmt, true, &err), 0);
    bdrv_ref(ro);
    assert_non_null(bdrv_attach_child(fmt, ro, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY,
                                      &err));
    bdrv_unref(fmt);
    bdrv_unref(ro);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_child_perm),
        cmocka_unit_test(test_cumulative_perm),
        cmocka_unit_test(test_conflicting_attach_refused),
        cmocka_unit_test(test_two_formats_one_file),
        cmocka_unit_test(test_replace_refused_by_perm),
        cmocka_unit_test(test_reopen_changes_root_perm),
        cmocka_unit_test(test_writer_on_read_only_node_refused),
    };
    test_loop_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
