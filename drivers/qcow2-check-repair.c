/*
 * qcow2-check-repair.c - what `img check -r` writes on a qcow2 image: single
 * refcounts, L1 and L2 entries (COPIED flags, unaligned preallocated
 * entries), a file grown under a refcount block past its end, and, when the
 * refcount structures cannot be trusted, new ones built from the counted
 * references (QEMU's rebuild_refcount_structure).
 *
 * The rebuild never frees what it replaces: the old table and blocks are
 * leaks in the new structures, and the leak pass that follows frees them.
 * New refcount blocks are slices of the in-memory table, so they count
 * themselves and everything allocated before them; the new refcount table
 * is placed last, and the blocks covering it are written again, until the
 * table stops growing.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-check.h"

static int coroutine_fn pwrite_sync(BlockDriverState *bs, uint64_t offset, uint64_t bytes,
                                    const void *buf)
{
    int ret = bdrv_pwrite(bs->file, (int64_t)offset, (int64_t)bytes, buf, 0);
    return ret < 0 ? ret : bdrv_co_flush(bs->file->bs);
}

int coroutine_fn qcow2_check_zero_l2_entry(Qcow2Check *c, uint64_t l2_offset, uint32_t i,
                                           bool active, bool *overlap)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint64_t entry_offset = l2_offset + (uint64_t)i * s->l2_entry_size;
    int ret;

    (void)active;   /* snapshot L2 tables are not in our overlap check anyway */
    if (qcow2_has_subclusters(s)) {
        /* allocated subclusters read as zeros, as they did */
        uint64_t bitmap = qcow2_check_l2_bitmap(c, i);
        bitmap |= bitmap << 32;
        bitmap &= QCOW2_L2_BITMAP_ALL_ZEROES;
        c->l2[i * 2 + 1] = htobe64(bitmap);
        qcow2_check_set_l2e(c, i, 0);
    } else {
        qcow2_check_set_l2e(c, i, QCOW2_OFLAG_ZERO);
    }
    *overlap = qcow2_overlaps_metadata(c->bs, entry_offset, s->l2_entry_size, l2_offset);
    if (*overlap) {
        fprintf(stderr, "ERROR: Overlap check failed\n");
        ret = -EIO;
        goto fail;
    }
    ret = pwrite_sync(c->bs, entry_offset, s->l2_entry_size,
                      &c->l2[i * (s->l2_entry_size / 8)]);
    if (ret < 0) {
        fprintf(stderr, "ERROR: Failed to overwrite L2 table entry: %s\n", strerror(-ret));
        goto fail;
    }
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return 0;

fail:
    c->res->check_errors++;
    return ret;
}

int coroutine_fn qcow2_check_grow_file_for_refblock(Qcow2Check *c, uint64_t offset)
{
    BDRVQcow2State *s = c->bs->opaque;
    Error *err = NULL;
    int ret;

    if (offset > (uint64_t)INT64_MAX - s->cluster_size) {
        return -EINVAL;
    }
    ret = bdrv_co_truncate(c->bs->file, (int64_t)(offset + s->cluster_size), false,
                           PREALLOC_MODE_OFF, 0, &err);
    if (ret < 0) {
        error_report_err(err);
        return ret;
    }
    int64_t size = bdrv_getlength(c->bs->file->bs);
    if (size < 0) {
        return (int)size;
    }
    ret = qcow2_imrt_grow(c, DIV_ROUND_UP(size, (int64_t)s->cluster_size));
    if (ret < 0) {
        c->res->check_errors++;
        return ret;
    }
    return (int64_t)(offset >> s->cluster_bits) < c->nb ? 0 : -EINVAL;
}

/* The refcount of `cluster`, whose refcount block exists (its count on
 * disk is not 0), becomes `value`, through the refcount cache. */
int coroutine_fn qcow2_check_set_refcount(Qcow2Check *c, uint64_t cluster, uint64_t value)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint64_t ti = cluster >> s->refcount_block_bits;
    uint64_t rb = s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK;
    uint64_t index = cluster & ((1ULL << s->refcount_block_bits) - 1);
    uint64_t slice_bytes = meta_cache_entry_size(s->refcount_cache);
    uint64_t start = ((index << s->h.refcount_order) / 8) & ~(slice_bytes - 1);
    uint8_t *slice;

    if (qcow2_overlaps_metadata(c->bs, rb, s->cluster_size, rb)) {
        return -EIO;
    }
    int ret = meta_cache_get(s->refcount_cache, (int64_t)(rb + start), (void **)&slice);
    if (ret < 0) {
        return ret;
    }
    qcow2_rc_set(slice, index - ((start * 8) >> s->h.refcount_order), s->h.refcount_order,
                 value);
    meta_cache_mark_dirty(s->refcount_cache, slice);
    meta_cache_put(s->refcount_cache, slice);
    return 0;
}

int coroutine_fn qcow2_check_write_l1_entry(Qcow2Check *c, uint32_t i, uint64_t e)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint64_t be = htobe64(e);
    int ret = pwrite_sync(c->bs, s->h.l1_table_offset + (uint64_t)i * 8, 8, &be);

    if (ret == 0) {
        __atomic_store_n(&s->l1_table[i], e, __ATOMIC_RELEASE);
    }
    return ret;
}

int coroutine_fn qcow2_check_write_l2(Qcow2Check *c, uint64_t l2_offset)
{
    BDRVQcow2State *s = c->bs->opaque;

    if (qcow2_overlaps_metadata(c->bs, l2_offset, s->cluster_size, l2_offset)) {
        fprintf(stderr, "ERROR: Could not write L2 table; metadata overlap check failed: %s\n",
                strerror(EIO));
        return -EIO;
    }
    int ret = bdrv_pwrite(c->bs->file, (int64_t)l2_offset, s->cluster_size, c->l2, 0);
    if (ret < 0) {
        fprintf(stderr, "ERROR: Could not write L2 table: %s\n", strerror(-ret));
    }
    return ret;
}

/* QEMU's alloc_clusters_imrt: n free clusters in a row in c->rt from
 * *first_free on (growing the table at the end), counted there. */
static int64_t alloc_clusters_imrt(Qcow2Check *c, int64_t n, int64_t *first_free)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint32_t order = s->h.refcount_order;
    int64_t cluster = *first_free, run = 0;
    bool first_gap = true;

    for (; cluster < c->nb && run < n; cluster++) {
        if (!qcow2_rc_get(c->rt, (uint64_t)cluster, order)) {
            run++;
            if (first_gap) {
                *first_free = cluster;
                first_gap = false;
            }
        } else {
            run = 0;
        }
    }
    if (run < n) {
        int ret = qcow2_imrt_grow(c, cluster + n - run);
        if (ret < 0) {
            return ret;
        }
    }
    cluster -= run;
    for (int64_t i = 0; i < n; i++) {
        qcow2_rc_set(c->rt, (uint64_t)(cluster + i), order, 1);
    }
    return cluster << s->cluster_bits;
}

typedef struct Reftable {
    uint64_t *t;
    uint64_t entries;
} Reftable;

/*
 * Write a refcount block for every block's worth of clusters in
 * [first, end) that holds a counted cluster, allocating the block (and
 * growing the new table) where there is none yet.  1 if the table grew.
 */
static int coroutine_fn write_refblocks(Qcow2Check *c, int64_t first, int64_t end, Reftable *rt)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint64_t per_block = 1ULL << s->refcount_block_bits;
    int64_t first_free = 0;
    bool grown = false;

    for (int64_t cluster = first; cluster < end; cluster++) {
        if (!qcow2_rc_get(c->rt, (uint64_t)cluster, s->h.refcount_order)) {
            continue;
        }
        uint64_t index = (uint64_t)cluster >> s->refcount_block_bits;
        int64_t block_start = (int64_t)(index << s->refcount_block_bits);
        int64_t block_offset;

        if (index < rt->entries && rt->t[index]) {
            block_offset = (int64_t)rt->t[index];
        } else {
            /* never in a block's range that is already written */
            first_free = MAX(first_free, block_start);
            block_offset = alloc_clusters_imrt(c, 1, &first_free);
            if (block_offset < 0) {
                error_report("ERROR allocating refblock: %s", strerror((int)-block_offset));
                return (int)block_offset;
            }
            end = MAX(end, (block_offset >> s->cluster_bits) + 1);
            if (index >= rt->entries) {
                uint64_t n = ALIGN_UP((index + 1) * 8, (uint64_t)s->cluster_size) / 8;
                uint64_t *t = realloc(rt->t, n * 8);
                if (!t) {
                    error_report("ERROR allocating reftable memory");
                    return -ENOMEM;
                }
                memset(t + rt->entries, 0, (n - rt->entries) * 8);
                rt->t = t;
                rt->entries = n;
                grown = true;
            }
            rt->t[index] = (uint64_t)block_offset;
        }
        if (qcow2_overlaps_metadata(c->bs, (uint64_t)block_offset, s->cluster_size, 0)) {
            error_report("ERROR writing refblock: %s", strerror(EIO));
            return -EIO;
        }
        int ret = bdrv_pwrite(c->bs->file, block_offset, s->cluster_size,
                              c->rt + index * s->cluster_size, 0);
        if (ret < 0) {
            error_report("ERROR writing refblock: %s", strerror(-ret));
            return ret;
        }
        cluster = block_start + (int64_t)per_block - 1;
    }
    return grown;
}

/* New refcount blocks and table from c->rt; the header points at them. */
static int coroutine_fn rebuild_structures(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;
    Reftable rt = { 0 };
    int64_t table_offset = -1;
    uint64_t table_clusters = 0;
    int grown;

    /* Nothing is dirty (the comparison did not fix); the blocks we write
     * replace whatever the cache holds. */
    meta_cache_drop_clean(s->refcount_cache);
    grown = write_refblocks(c, 0, c->nb, &rt);
    while (grown > 0) {
        int64_t first_free = 0;
        table_clusters = DIV_ROUND_UP(rt.entries * 8, (uint64_t)s->cluster_size);
        table_offset = alloc_clusters_imrt(c, (int64_t)table_clusters, &first_free);
        if (table_offset < 0) {
            error_report("ERROR allocating reftable: %s", strerror((int)-table_offset));
            grown = (int)table_offset;
            break;
        }
        int64_t tc = table_offset >> s->cluster_bits;
        grown = write_refblocks(c, tc, tc + (int64_t)table_clusters, &rt);
    }
    if (grown < 0) {
        free(rt.t);
        return grown;
    }
    if (table_offset < 0 || table_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        free(rt.t);
        return -EFBIG;
    }
    uint64_t bytes = rt.entries * 8;
    for (uint64_t i = 0; i < rt.entries; i++) {
        rt.t[i] = htobe64(rt.t[i]);
    }
    int ret = -EIO;
    if (!qcow2_overlaps_metadata(c->bs, (uint64_t)table_offset, bytes, 0)) {
        ret = bdrv_pwrite(c->bs->file, table_offset, (int64_t)bytes, rt.t, 0);
    }
    if (ret < 0) {
        error_report("ERROR writing reftable: %s", strerror(-ret));
        free(rt.t);
        return ret;
    }
    uint8_t hdr[12];
    uint64_t be64 = htobe64((uint64_t)table_offset);
    uint32_t be32 = htobe32((uint32_t)table_clusters);
    memcpy(hdr, &be64, 8);
    memcpy(hdr + 8, &be32, 4);
    ret = bdrv_co_flush(c->bs->file->bs);
    if (ret == 0) {
        ret = pwrite_sync(c->bs, QH_REFTABLE_OFFSET, sizeof(hdr), hdr);
    }
    if (ret < 0) {
        error_report("ERROR setting reftable: %s", strerror(-ret));
        free(rt.t);
        return ret;
    }
    for (uint64_t i = 0; i < rt.entries; i++) {
        rt.t[i] = be64toh(rt.t[i]);
    }
    free(s->refcount_table);
    s->refcount_table = rt.t;
    s->refcount_table_size = (uint32_t)rt.entries;
    s->h.refcount_table_offset = (uint64_t)table_offset;
    s->h.refcount_table_clusters = (uint32_t)table_clusters;
    meta_cache_drop_clean(s->refcount_cache);
    return 0;
}

/*
 * The rebuild branch of QEMU's qcow2_check_refcounts: new structures, then
 * the references counted again against them, the old structures freed as
 * leaks, and the result told as fixed corruptions and leaks.
 */
int coroutine_fn qcow2_check_rebuild(Qcow2Check *c, int64_t *highest)
{
    BDRVQcow2State *s = c->bs->opaque;
    BdrvCheckResult *res = c->res, old = *res;
    BdrvCheckMode fix = c->fix;
    int fresh_leaks = 0;
    int ret;

    fprintf(stderr, "Rebuilding refcount structure\n");
    ret = rebuild_structures(c);
    if (ret < 0) {
        res->check_errors++;
        return ret;
    }
    res->corruptions = 0;
    res->leaks = 0;
    c->rebuild = false;
    memset(c->rt, 0, qcow2_imrt_bytes(s, c->nb));
    c->fix = 0;
    ret = qcow2_check_calculate(c);
    c->fix = fix;
    if (ret < 0) {
        return ret;
    }
    if (fix & BDRV_FIX_LEAKS) {
        /* Only leaks the new structures brought (the old ones) are fixed
         * here; what is left counts as leaks. */
        BdrvCheckResult saved = *res;
        memset(res, 0, sizeof(*res));
        qcow2_check_compare(c, BDRV_FIX_LEAKS, highest);
        if (c->rebuild) {
            fprintf(stderr, "ERROR rebuilt refcount structure is still broken\n");
        }
        fresh_leaks = res->leaks;
        int errs = res->check_errors;
        *res = saved;
        res->check_errors += errs;
        ret = meta_cache_flush(s->refcount_cache);
        if (ret < 0) {
            res->check_errors++;
            return ret;
        }
    }
    if (res->corruptions < old.corruptions) {
        res->corruptions_fixed += old.corruptions - res->corruptions;
    }
    if (res->leaks < old.leaks) {
        res->leaks_fixed += old.leaks - res->leaks;
    }
    res->leaks += fresh_leaks;
    return 0;
}

int coroutine_fn qcow2_mark_consistent(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (!(s->h.incompat & QCOW2_INCOMPAT_CORRUPT)) {
        return 0;
    }
    co_mutex_lock(&s->lock);
    int ret = qcow2_write_header_field(bs, QH_INCOMPAT, s->h.incompat & ~QCOW2_INCOMPAT_CORRUPT);
    if (ret == 0) {
        s->h.incompat &= ~QCOW2_INCOMPAT_CORRUPT;
        s->corrupt_reported = false;
    }
    co_mutex_unlock(&s->lock);
    return ret;
}
