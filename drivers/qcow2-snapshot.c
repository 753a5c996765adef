/*
 * qcow2-snapshot.c - internal snapshots: the copy of an active L2 table
 * shared with a snapshot before it changes (the write path's side).
 *
 * Refcounts as QEMU keeps them: an L2 table counts the L1 tables (active
 * and snapshots') that name it, a data cluster counts the L1 tables that
 * reach it through some L2 table.  COPIED on an active L1 or L2 entry means
 * refcount 1: the table or cluster may change in place.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

/*
 * The L2 table of L1 entry l1_index lacks COPIED (a snapshot names it too):
 * copy it to a new cluster the active L1 alone names, as QEMU's l2_allocate
 * with an old table does.  Its entries are copied unchanged: each data
 * cluster is still reached from the snapshot, so none becomes COPIED, and
 * no data refcount changes.  Order, for a crash at any point to leave the
 * old tree or the new one with at worst a leaked cluster: the new cluster
 * counted (refcounts flushed), the copy written and flushed, the L1 entry
 * written and flushed, then the old table loses the active L1's reference.
 * s->lock held.
 */
int coroutine_fn qcow2_l2_cow(BlockDriverState *bs, uint64_t l1_index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l1e = s->l1_table[l1_index];
    uint64_t old = l1e & QCOW2_L1E_OFFSET_MASK;
    uint64_t slice_bytes = meta_cache_entry_size(s->l2_cache);
    int ret;

    if (!old || (l1e & QCOW2_OFLAG_COPIED)) {
        return 0;
    }
    if (qcow2_has_data_file(s)) {
        /* no snapshots with a data file (QEMU refuses them): a missing
         * COPIED there is corruption, not sharing */
        char msg[120];
        snprintf(msg, sizeof(msg), "L1 entry %" PRIu64 " without COPIED in an image with a data"
                 " file", l1_index);
        qcow2_signal_corruption(bs, msg);
        return -EIO;
    }
    if (qcow2_overlaps_metadata(bs, old, s->cluster_size, old)) {
        return -EIO;
    }
    int64_t off = qcow2_alloc_clusters(bs, s->cluster_size);
    if (off < 0) {
        return (int)off;
    }
    ret = meta_cache_flush(s->refcount_cache);
    for (uint64_t o = 0; ret == 0 && o < s->cluster_size; o += slice_bytes) {
        void *src, *dst;
        ret = meta_cache_get(s->l2_cache, (int64_t)(old + o), &src);
        if (ret < 0) {
            break;
        }
        ret = meta_cache_get_empty(s->l2_cache, off + (int64_t)o, &dst);
        if (ret == 0) {
            memcpy(dst, src, slice_bytes);
            meta_cache_mark_dirty(s->l2_cache, dst);
            meta_cache_put(s->l2_cache, dst);
        }
        meta_cache_put(s->l2_cache, src);
    }
    if (ret == 0) {
        ret = meta_cache_flush(s->l2_cache);
    }
    uint64_t entry = (uint64_t)off | QCOW2_OFLAG_COPIED;
    if (ret == 0) {
        uint64_t be = htobe64(entry);
        ret = bdrv_pwrite(bs->file, (int64_t)(s->h.l1_table_offset + l1_index * 8), 8, &be, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        /* The copy's cluster stays counted (leaked): its slices may still
         * be dirty in the cache, and a freed cluster reused for data would
         * get them written over it. */
        return ret;
    }
    /* Lock-free readers see the old table or its copy: the same entries. */
    __atomic_store_n(&s->l1_table[l1_index], entry, __ATOMIC_RELEASE);
    return qcow2_update_refcount(bs, old, s->cluster_size, true);
}
