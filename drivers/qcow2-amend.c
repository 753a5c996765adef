/*
 * qcow2-amend.c - `img amend` for qcow2 (QEMU 7.2's qcow2_amend_options):
 * compat (upgrade to v3; downgrade to v2, which turns zero clusters into
 * data clusters first), lazy_refcounts, refcount_bits (a new set of
 * refcount structures), data_file / data_file_raw where QEMU allows them,
 * and backing_file / backing_fmt, which 7.2 only accepts unchanged.
 *
 * The steps run in QEMU's order, with its messages: upgrade, refcount
 * width, data file fields and a header rewrite, the backing check, lazy
 * refcounts, downgrade last (so an error there leaves a valid v3 image).
 * A size is a resize (qcow2-resize.c) before the downgrade.
 *
 * A refcount width change is made crash safe by never touching the old
 * structures: the refcounts as the old blocks hold them are copied into an
 * in-memory table of the new width, the new refcount blocks and table are
 * written past everything the file holds, flushed, and then ONE header
 * write switches refcount_order, refcount_table_offset and
 * refcount_table_clusters together.  The new table already counts the old
 * structures as free, so there is nothing to free after: a crash before the
 * header write leaves the old image plus unreferenced clusters past its end
 * (not even leaks), a crash after it the new image.
 *
 * Runs with no requests in flight (img amend drains the node); s->lock is
 * taken around each step.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

#define REFT_OFFSET_MASK       0xfffffffffffffe00ULL
#define SNAPSHOT_EXTRA_MAX     1024
#define SNAPSHOT_TABLE_MAX     (64 * 1024 * 1024)
/* The in-memory refcount table of a width change is not allowed past this
 * (a crafted refcount block far past the end of the file cannot make us
 * allocate without bound). */
#define AMEND_MAX_IMRT         (1ULL << 30)

/* QEMU's Qcow2AmendHelperCBInfo: progress of several steps as one bar. */
typedef enum { OP_NONE, OP_UPGRADE, OP_ENCRYPT, OP_REFCOUNT, OP_DOWNGRADE } AmendOp;
typedef struct AmendProgress {
    BdrvAmendStatusCB *cb;
    void *opaque;
    AmendOp current, last;
    int total_ops, ops_done;
    int64_t offset_done, last_work;
} AmendProgress;

/* QEMU's qcow2_amend_helper_cb: a step's share of the bar is projected from
 * the work of the steps so far. */
static void progress(BlockDriverState *bs, AmendProgress *p, int64_t done, int64_t total)
{
    if (!p->cb || p->total_ops <= 0) {
        return;
    }
    if (p->current != p->last) {
        if (p->last != OP_NONE) {
            p->offset_done += p->last_work;
            p->ops_done++;
        }
        p->last = p->current;
    }
    if (p->ops_done >= p->total_ops) {
        return;
    }
    p->last_work = total;
    int64_t cur = p->offset_done + total;
    int64_t projected = cur * (p->total_ops - p->ops_done - 1) / (p->ops_done + 1);
    p->cb(bs, p->offset_done + done, cur + projected, p->opaque);
}

/* One internal snapshot, as far as amend needs it. */
typedef struct AmendSnapshot {
    uint64_t l1_offset;
    uint32_t l1_size, extra_size;
    uint64_t vm_state_size, disk_size;
} AmendSnapshot;

/* Read the snapshot table (QEMU's checks on its shape); *out NULL if none. */
static int coroutine_fn read_snapshots(BlockDriverState *bs, AmendSnapshot **out, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t off = s->h.snapshots_offset;
    uint8_t h[QCOW2_SNAPSHOT_HEADER_MIN], extra[16];
    AmendSnapshot *sn;

    *out = NULL;
    if (!s->h.nb_snapshots) {
        return 0;
    }
    if (s->h.nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        error_setg(errp, "Too many snapshots");
        return -EFBIG;
    }
    sn = calloc(s->h.nb_snapshots, sizeof(*sn));
    if (!sn) {
        error_setg_errno(errp, ENOMEM, "Failed to read the snapshot table");
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
        off = ALIGN_UP(off, 8);
        int ret = bdrv_pread(bs->file, (int64_t)off, sizeof(h), h, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read snapshot table");
            free(sn);
            return ret;
        }
        off += sizeof(h);
        sn[i].l1_offset = qcow2_ld64(h, 0);
        sn[i].l1_size = qcow2_ld32(h, 8);
        uint16_t id_size = qcow2_ld16(h, 12), name_size = qcow2_ld16(h, 14);
        sn[i].vm_state_size = qcow2_ld32(h, 32);
        sn[i].extra_size = qcow2_ld32(h, 36);
        sn[i].disk_size = s->h.size;
        if (sn[i].extra_size > SNAPSHOT_EXTRA_MAX) {
            error_setg(errp, "Too much extra metadata in snapshot table entry %" PRIu32, i);
            free(sn);
            return -EFBIG;
        }
        memset(extra, 0, sizeof(extra));
        if (sn[i].extra_size) {
            ret = bdrv_pread(bs->file, (int64_t)off, MIN(sn[i].extra_size, 16U), extra, 0);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to read snapshot table");
                free(sn);
                return ret;
            }
        }
        if (sn[i].extra_size >= 8) {
            sn[i].vm_state_size = qcow2_ld64(extra, 0);
        }
        if (sn[i].extra_size >= 16) {
            sn[i].disk_size = qcow2_ld64(extra, 8);
        }
        off += sn[i].extra_size + (uint64_t)id_size + name_size;
        if (off - s->h.snapshots_offset > SNAPSHOT_TABLE_MAX) {
            error_setg(errp, "Snapshot table is too big");
            free(sn);
            return -EFBIG;
        }
    }
    *out = sn;
    return 0;
}

/* ---- compat=1.1 ---- */

static int coroutine_fn upgrade(BlockDriverState *bs, AmendProgress *p, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    AmendSnapshot *sn;
    int ret;

    progress(bs, p, 0, 2);
    ret = read_snapshots(bs, &sn, errp);
    if (ret < 0) {
        return ret;
    }
    bool rewrite = false;
    for (uint32_t i = 0; sn && i < s->h.nb_snapshots; i++) {
        rewrite |= sn[i].extra_size < 16;
    }
    free(sn);

    co_mutex_lock(&s->lock);
    if (rewrite) {
        /* Entries from QEMU before 1.1 lack the extra data v3 requires (the
         * VM state's 64-bit size and the disk size): the table is written
         * anew, complete, before the header says v3, as QEMU's upgrade does.
         * A crash in between leaves a v2 image with a complete table. */
        ret = qcow2_snapshot_table_rewrite(bs, s->h.nb_snapshots);
        if (ret < 0) {
            co_mutex_unlock(&s->lock);
            error_setg_errno(errp, -ret, "Failed to update the snapshot table");
            return ret;
        }
    }
    co_mutex_unlock(&s->lock);
    progress(bs, p, 1, 2);

    co_mutex_lock(&s->lock);
    s->h.version = 3;
    s->h.refcount_order = 4;
    ret = qcow2_update_header_locked(bs, false, NULL, NULL);
    if (ret < 0) {
        s->h.version = 2;
        co_mutex_unlock(&s->lock);
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }
    co_mutex_unlock(&s->lock);
    progress(bs, p, 2, 2);
    return 0;
}

/* ---- refcount_bits ---- */

/* The refcount block named by old reftable entry i, or 0 (none, or an
 * entry the image's check would call corrupt: never read). */
static uint64_t old_refblock(BDRVQcow2State *s, uint64_t i, int64_t file_len)
{
    uint64_t off = s->refcount_table[i] & REFT_OFFSET_MASK;
    if (!off || qcow2_offset_into_cluster(s, off) || off >= (uint64_t)file_len) {
        return 0;
    }
    return off;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int check_refblocks_distinct(BDRVQcow2State *s, int64_t file_len, Error **errp)
{
    uint64_t *offs = malloc(((size_t)s->refcount_table_size + 1) * sizeof(*offs));
    size_t n = 0;
    int ret = 0;

    if (!offs) {
        error_setg_errno(errp, ENOMEM, "Failed to change the refcount width");
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t off = old_refblock(s, i, file_len);
        if (off) {
            offs[n++] = off;
        }
    }
    qsort(offs, n, sizeof(*offs), cmp_u64);
    for (size_t i = 1; i < n; i++) {
        if (offs[i] == offs[i - 1]) {
            error_setg(errp, "Refcount block at %#" PRIx64 " is named more than once in the"
                       " refcount table; repair the image first (check -r all)", offs[i]);
            ret = -EIO;
            break;
        }
    }
    free(offs);
    return ret;
}

static int coroutine_fn change_refcount_order(BlockDriverState *bs, uint32_t order,
                                              AmendProgress *p, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint32_t old_order = s->h.refcount_order;
    uint64_t per_old_block = 1ULL << s->refcount_block_bits;
    uint64_t per_new_block = (cs * 8) >> order;
    uint64_t new_max = order == 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
    uint8_t *block = NULL, *rt = NULL;
    uint64_t *reftable = NULL, n = 0;
    int64_t file_len;
    int ret;

    ret = meta_cache_flush(s->l2_cache);
    if (ret == 0) {
        ret = meta_cache_flush(s->refcount_cache);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to flush the refcount block cache");
        return ret;
    }
    meta_cache_drop_clean(s->refcount_cache);
    if (meta_cache_nr_cached(s->refcount_cache)) {
        error_setg(errp, "Refcount blocks still in use");
        return -EBUSY;
    }
    file_len = bdrv_getlength(bs->file->bs);
    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "Failed to get the image file length");
        return (int)file_len;
    }
    if (posix_memalign((void **)&block, 4096, cs)) {
        error_setg_errno(errp, ENOMEM, "Failed to change the refcount width");
        return -ENOMEM;
    }

    /* A refcount block named twice (never in a sound image) would have us
     * scan it again for every name: a crafted table of a million names of
     * one 2 MiB block is days of work.  Distinct blocks inside the file
     * bound the scans by the file's size. */
    ret = check_refblocks_distinct(s, file_len, errp);
    if (ret < 0) {
        goto out;
    }

    /* Pass 1: how many clusters have a refcount (the highest one + 1), and
     * no refcount too large for the new width (QEMU's message). */
    uint64_t nb_blocks = s->refcount_table_size;
    for (uint64_t i = 0; i < nb_blocks; i++) {
        uint64_t off = old_refblock(s, i, file_len);
        progress(bs, p, (int64_t)i, (int64_t)nb_blocks * 3);
        if (!off) {
            continue;
        }
        ret = bdrv_pread(bs->file, (int64_t)off, (int64_t)cs, block, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read refcount block");
            goto out;
        }
        for (uint64_t j = 0; j < per_old_block; j++) {
            uint64_t v = qcow2_rc_get(block, j, old_order);
            if (!v) {
                continue;
            }
            if (v > new_max) {
                error_setg(errp, "Cannot decrease refcount entry width to %u bits: Cluster at"
                           " offset %#" PRIx64 " has a refcount of %" PRIu64, 1U << order,
                           ((i << s->refcount_block_bits) + j) << s->cluster_bits, v);
                ret = -EINVAL;
                goto out;
            }
            n = (i << s->refcount_block_bits) + j + 1;
        }
    }

    /* Where the new structures go: past the end of the file and of every
     * cluster with a refcount, so that nothing the old image uses is
     * overwritten before the header switches. */
    uint64_t start = MAX(n, DIV_ROUND_UP((uint64_t)file_len, cs));
    uint64_t nb_rb = 0, rt_clusters = 0;
    for (;;) {
        uint64_t covered = start + nb_rb + rt_clusters;
        uint64_t rb = DIV_ROUND_UP(covered, per_new_block);
        uint64_t t = DIV_ROUND_UP(rb * 8, cs);
        if (rb == nb_rb && t == rt_clusters) {
            break;
        }
        nb_rb = rb;
        rt_clusters = t;
    }
    if (rt_clusters * cs > QCOW2_MAX_REFTABLE_BYTES ||
        ((start + nb_rb + rt_clusters) << s->cluster_bits) >> s->cluster_bits !=
        start + nb_rb + rt_clusters) {
        error_setg(errp, "Refcount table too large for the new refcount width");
        ret = -EFBIG;
        goto out;
    }
    uint64_t rt_bytes = nb_rb * cs;
    if (rt_bytes > AMEND_MAX_IMRT) {
        error_setg(errp, "Image too large to change its refcount width");
        ret = -EFBIG;
        goto out;
    }
    rt = calloc(1, rt_bytes);
    reftable = calloc(1, rt_clusters * cs);
    if (!rt || !reftable) {
        error_setg_errno(errp, ENOMEM, "Failed to change the refcount width");
        ret = -ENOMEM;
        goto out;
    }

    /* Pass 2: copy the refcounts; then the old structures are free and the
     * new ones hold one reference each. */
    for (uint64_t i = 0; i < nb_blocks; i++) {
        uint64_t off = old_refblock(s, i, file_len);
        progress(bs, p, (int64_t)(nb_blocks + i), (int64_t)nb_blocks * 3);
        if (!off) {
            continue;
        }
        ret = bdrv_pread(bs->file, (int64_t)off, (int64_t)cs, block, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to read refcount block");
            goto out;
        }
        for (uint64_t j = 0; j < per_old_block; j++) {
            uint64_t k = (i << s->refcount_block_bits) + j;
            uint64_t v = qcow2_rc_get(block, j, old_order);
            if (v && k < n) {
                qcow2_rc_set(rt, k, order, v);
            }
        }
    }
    for (uint64_t i = 0; i < nb_blocks; i++) {
        uint64_t off = old_refblock(s, i, file_len), k = off >> s->cluster_bits;
        uint64_t v = off && k < n ? qcow2_rc_get(rt, k, order) : 0;
        if (v) {
            qcow2_rc_set(rt, k, order, v - 1);
        }
    }
    uint64_t old_rt_first = s->h.refcount_table_offset >> s->cluster_bits;
    uint64_t old_rt_nb = DIV_ROUND_UP((uint64_t)s->refcount_table_size * 8, cs);
    for (uint64_t k = old_rt_first; k < old_rt_first + old_rt_nb && k < n; k++) {
        uint64_t v = qcow2_rc_get(rt, k, order);
        if (v) {
            qcow2_rc_set(rt, k, order, v - 1);
        }
    }
    for (uint64_t k = start; k < start + nb_rb + rt_clusters; k++) {
        qcow2_rc_set(rt, k, order, 1);
    }
    for (uint64_t i = 0; i < nb_rb; i++) {
        reftable[i] = htobe64((start + i) << s->cluster_bits);
    }

    /* The new structures, then a flush, then the header. */
    for (uint64_t i = 0; i < nb_rb; i++) {
        progress(bs, p, (int64_t)(2 * nb_blocks + i * nb_blocks / nb_rb),
                 (int64_t)nb_blocks * 3);
        ret = bdrv_pwrite(bs->file, (int64_t)((start + i) << s->cluster_bits), (int64_t)cs,
                          rt + i * cs, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to write refcount block");
            goto out;
        }
    }
    ret = bdrv_pwrite(bs->file, (int64_t)((start + nb_rb) << s->cluster_bits),
                      (int64_t)(rt_clusters * cs), reftable, 0);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to write the new refcount table");
        goto out;
    }

    uint64_t old_rt_offset = s->h.refcount_table_offset;
    uint32_t old_rt_size = s->refcount_table_size, old_rt_clusters = s->h.refcount_table_clusters;
    s->h.refcount_order = order;
    s->h.refcount_table_offset = (start + nb_rb) << s->cluster_bits;
    s->h.refcount_table_clusters = (uint32_t)rt_clusters;
    s->refcount_table_size = (uint32_t)(rt_clusters * cs / 8);
    ret = qcow2_update_header_locked(bs, false, NULL, NULL);
    if (ret < 0) {
        s->h.refcount_order = old_order;
        s->h.refcount_table_offset = old_rt_offset;
        s->h.refcount_table_clusters = old_rt_clusters;
        s->refcount_table_size = old_rt_size;
        error_setg_errno(errp, -ret, "Failed to update the image header");
        goto out;
    }
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        reftable[i] = be64toh(reftable[i]);
    }
    free(s->refcount_table);
    s->refcount_table = reftable;
    reftable = NULL;
    s->refcount_block_bits = s->cluster_bits - (order - 3);
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    __atomic_store_n(&s->metadata_prealloc, -1, __ATOMIC_RELEASE);
    progress(bs, p, (int64_t)nb_blocks * 3, (int64_t)nb_blocks * 3);
    ret = 0;
out:
    free(block);
    free(rt);
    free(reftable);
    return ret;
}

/* ---- compat=0.10 ---- */

/*
 * QEMU's expand_zero_clusters_in_l1: every zero cluster of the L2 tables
 * l1 names becomes an allocated cluster of zeros, or unallocated when no
 * backing file could show through.  Tables are changed on disk (the L2
 * cache is flushed and emptied around this); a new cluster's refcount and
 * zeros reach the disk before the entry naming it, and references the
 * table gives up are dropped only after it is written (a crash: leaks).
 *
 * One deliberate difference: QEMU 7.2 writes zeros into the host cluster
 * of a zero cluster that still has one even when another table (a
 * snapshot's) uses it as data, which destroys the snapshot's data (and
 * leaves COPIED set on a shared cluster).  Here such a cluster is left to
 * its other users: the entry gets a fresh zeroed cluster (or none without
 * a backing file).  COPIED is set where the cluster's refcount is 1.
 */
static int coroutine_fn expand_l1(BlockDriverState *bs, const uint64_t *l1, uint32_t l1_size,
                                  int64_t *visited, int64_t total, AmendProgress *p,
                                  uint64_t *l2, uint64_t *drop)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t l2_entries = s->cluster_size / 8, nb_drop = 0;
    int ret;

    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2_offset = l1[i] & QCOW2_L1E_OFFSET_MASK, l2_refcount;
        bool dirty = false;

        if (l2_offset) {
            if (qcow2_offset_into_cluster(s, l2_offset)) {
                char msg[128];
                snprintf(msg, sizeof(msg), "L2 table offset %#" PRIx64 " unaligned (L1 index:"
                         " %#" PRIx32 ")", l2_offset, i);
                qcow2_signal_corruption(bs, msg);
                return -EIO;
            }
            ret = qcow2_get_refcount(bs, l2_offset >> s->cluster_bits, &l2_refcount);
            if (ret < 0) {
                return ret;
            }
            ret = bdrv_pread(bs->file, (int64_t)l2_offset, s->cluster_size, l2, 0);
            if (ret < 0) {
                return ret;
            }
            for (uint32_t j = 0; j < l2_entries; j++) {
                uint64_t e = be64toh(l2[j]);
                uint64_t off = e & QCOW2_L2E_OFFSET_MASK;
                if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_ZERO)) {
                    continue;
                }
                if (off) {
                    uint64_t rc;
                    ret = qcow2_get_refcount(bs, off >> s->cluster_bits, &rc);
                    if (ret < 0) {
                        return ret;
                    }
                    if (rc > l2_refcount) {
                        /* data of another table: not ours to zero */
                        drop[nb_drop++] = off;
                        off = 0;
                    }
                }
                if (!off) {
                    if (!bs->backing) {
                        l2[j] = 0;
                        dirty = true;
                        continue;
                    }
                    int64_t a = qcow2_alloc_clusters(bs, s->cluster_size);
                    if (a < 0) {
                        return (int)a;
                    }
                    off = (uint64_t)a;
                    if (l2_refcount > 1) {
                        /* a shared table: every sharer references the cluster */
                        for (uint64_t r = 1; r < l2_refcount; r++) {
                            ret = qcow2_update_refcount(bs, off, s->cluster_size, false);
                            if (ret < 0) {
                                return ret;
                            }
                        }
                    }
                }
                if (qcow2_offset_into_cluster(s, off)) {
                    char msg[128];
                    snprintf(msg, sizeof(msg), "Cluster allocation offset %#" PRIx64
                             " unaligned (L2 offset: %#" PRIx64 ", L2 index: %#" PRIx32 ")",
                             off, l2_offset, j);
                    qcow2_signal_corruption(bs, msg);
                    return -EIO;
                }
                if (qcow2_overlaps_metadata(bs, off, s->cluster_size, 0)) {
                    return -EIO;
                }
                ret = bdrv_pwrite_zeroes(s->data_file, (int64_t)off, s->cluster_size, 0);
                if (ret < 0) {
                    return ret;
                }
                l2[j] = htobe64(l2_refcount == 1 ? off | QCOW2_OFLAG_COPIED : off);
                dirty = true;
            }
            if (dirty) {
                ret = meta_cache_flush(s->refcount_cache);
                if (ret == 0) {
                    ret = bdrv_co_flush(bs->file->bs);
                }
                if (ret < 0) {
                    return ret;
                }
                if (qcow2_overlaps_metadata(bs, l2_offset, s->cluster_size, l2_offset)) {
                    return -EIO;
                }
                ret = bdrv_pwrite(bs->file, (int64_t)l2_offset, s->cluster_size, l2, 0);
                if (ret == 0) {
                    ret = bdrv_co_flush(bs->file->bs);
                }
                if (ret < 0) {
                    return ret;
                }
                for (uint32_t k = 0; k < nb_drop; k++) {
                    for (uint64_t r = 0; r < l2_refcount; r++) {
                        ret = qcow2_update_refcount(bs, drop[k], s->cluster_size, true);
                        if (ret < 0) {
                            return ret;
                        }
                    }
                }
                nb_drop = 0;
            }
        }
        (*visited)++;
        progress(bs, p, *visited, total);
    }
    return 0;
}

static int coroutine_fn expand_zero_clusters(BlockDriverState *bs, const AmendSnapshot *sn,
                                             AmendProgress *p)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t *l2 = NULL, *l1 = NULL, *drop = NULL;
    int64_t total = s->l1_size, visited = 0;
    int ret;

    for (uint32_t i = 0; sn && i < s->h.nb_snapshots; i++) {
        total += sn[i].l1_size;
    }
    co_mutex_lock(&s->lock);
    ret = meta_cache_flush(s->l2_cache);
    if (ret < 0) {
        goto out;
    }
    meta_cache_drop_clean(s->l2_cache);
    if (meta_cache_nr_cached(s->l2_cache)) {
        ret = -EBUSY;
        goto out;
    }
    if (posix_memalign((void **)&l2, 4096, s->cluster_size) ||
        !(drop = malloc(s->cluster_size))) {
        ret = -ENOMEM;
        goto out;
    }
    ret = expand_l1(bs, s->l1_table, s->l1_size, &visited, total, p, l2, drop);
    for (uint32_t i = 0; ret == 0 && sn && i < s->h.nb_snapshots; i++) {
        uint64_t bytes = (uint64_t)sn[i].l1_size * 8;
        int64_t file_len = bdrv_getlength(bs->file->bs);
        /* QEMU's qcow2_validate_table for a snapshot's L1. */
        if (sn[i].l1_size > QCOW2_MAX_L1_BYTES / 8 ||
            qcow2_offset_into_cluster(s, sn[i].l1_offset) || file_len < 0 ||
            sn[i].l1_offset > (uint64_t)file_len || bytes > (uint64_t)file_len - sn[i].l1_offset) {
            ret = -EFBIG;
            break;
        }
        free(l1);
        l1 = malloc(bytes ? bytes : 1);
        if (!l1) {
            ret = -ENOMEM;
            break;
        }
        ret = bdrv_pread(bs->file, (int64_t)sn[i].l1_offset, (int64_t)bytes, l1, 0);
        if (ret < 0) {
            break;
        }
        for (uint32_t j = 0; j < sn[i].l1_size; j++) {
            l1[j] = be64toh(l1[j]);
        }
        ret = expand_l1(bs, l1, sn[i].l1_size, &visited, total, p, l2, drop);
    }
    if (ret == 0) {
        ret = meta_cache_flush(s->refcount_cache);
    }
out:
    meta_cache_drop_clean(s->l2_cache);
    co_mutex_unlock(&s->lock);
    free(l1);
    free(l2);
    free(drop);
    return ret;
}

/* QEMU's qcow2_has_compressed_clusters, over the active L1. */
static int coroutine_fn has_compressed_clusters(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t *l2 = NULL;
    uint32_t step = s->l2_entry_size / 8;
    int ret = 0;

    if (posix_memalign((void **)&l2, 4096, s->cluster_size)) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->l1_size && ret == 0; i++) {
        uint64_t l2_offset = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2_offset) {
            continue;
        }
        ret = bdrv_pread(bs->file, (int64_t)l2_offset, s->cluster_size, l2, 0);
        for (uint32_t j = 0; ret == 0 && j < s->cluster_size / 8; j += step) {
            if (be64toh(l2[j]) & QCOW2_OFLAG_COMPRESSED) {
                ret = 1;
            }
        }
    }
    free(l2);
    return ret;
}

static int coroutine_fn downgrade(BlockDriverState *bs, AmendProgress *p, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    AmendSnapshot *sn = NULL;
    int ret;

    if (s->h.refcount_order != 4) {
        error_setg(errp, "compat=0.10 requires refcount_bits=16");
        return -ENOTSUP;
    }
    if (qcow2_has_data_file(s)) {
        error_setg(errp, "Cannot downgrade an image with a data file");
        return -ENOTSUP;
    }
    ret = read_snapshots(bs, &sn, errp);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t i = 0; sn && i < s->h.nb_snapshots; i++) {
        if (sn[i].vm_state_size > UINT32_MAX || sn[i].disk_size != s->h.size) {
            error_setg(errp, "Internal snapshots prevent downgrade of image");
            free(sn);
            return -ENOTSUP;
        }
    }
    if (s->h.incompat & QCOW2_INCOMPAT_DIRTY) {
        ret = qcow2_mark_clean(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to make the image clean");
            free(sn);
            return ret;
        }
    }
    if (s->h.incompat & ~QCOW2_INCOMPAT_COMPRESSION) {
        error_setg(errp, "Cannot downgrade an image with incompatible features 0x%" PRIx64 " set",
                   (uint64_t)(s->h.incompat & ~QCOW2_INCOMPAT_COMPRESSION));
        free(sn);
        return -ENOTSUP;
    }
    uint64_t old_compat = s->h.compat, old_autoclear = s->h.autoclear;
    s->h.compat = 0;
    s->h.autoclear = 0;
    ret = expand_zero_clusters(bs, sn, p);
    free(sn);
    if (ret < 0) {
        s->h.compat = old_compat;
        s->h.autoclear = old_autoclear;
        error_setg_errno(errp, -ret, "Failed to turn zero into data clusters");
        return ret;
    }
    if (s->h.incompat & QCOW2_INCOMPAT_COMPRESSION) {
        co_mutex_lock(&s->lock);
        ret = has_compressed_clusters(bs);
        co_mutex_unlock(&s->lock);
        if (ret < 0) {
            error_setg(errp, "Failed to check block status");
            return -EINVAL;
        }
        if (ret) {
            error_setg(errp, "Cannot downgrade an image with zstd compression type and existing"
                       " compressed clusters");
            return -ENOTSUP;
        }
        s->h.incompat &= ~QCOW2_INCOMPAT_COMPRESSION;
        s->h.compression_type = QCOW2_COMPRESSION_ZLIB;
    }
    co_mutex_lock(&s->lock);
    s->h.version = 2;
    ret = qcow2_update_header_locked(bs, false, NULL, NULL);
    if (ret < 0) {
        s->h.version = 3;
        co_mutex_unlock(&s->lock);
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }
    s->h.header_length = QCOW2_V2_HEADER_LENGTH;
    co_mutex_unlock(&s->lock);
    return 0;
}

/* ---- the op ---- */

const CreateOptDesc qcow2_amend_opts[] = {
    { "backing_file", "string", "File name of a base image", NULL },
    { "backing_fmt", "string", "Image format of the base image", NULL },
    { "compat", "string", "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "data_file", "string", "File name of an external data file", NULL },
    { "data_file_raw", "bool", "The external data file must stay valid as a raw image", NULL },
    { "encrypt.iter-time", "number", "Time to spend in PBKDF in milliseconds", NULL },
    { "encrypt.keyslot", "number", "Select a single keyslot to modify explicitly", NULL },
    { "encrypt.new-secret", "string",
      "New secret to set in the matching keyslots. Empty string to erase", NULL },
    { "encrypt.old-secret", "string", "Select all keyslots that match this password", NULL },
    { "encrypt.state", "string", "Select new state of affected keyslots (active/inactive)",
      NULL },
    { "lazy_refcounts", "bool", "Postpone refcount updates", NULL },
    { "refcount_bits", "number", "Width of a reference count entry in bits", NULL },
    { "size", "size", "Virtual disk size", NULL },
    { NULL, NULL, NULL, NULL },
};

/* qemu's bool spellings (the caller checked the value). */
static bool opt_bool(const char *v)
{
    return !strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "y");
}

static int str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b));
}

int coroutine_fn qcow2_co_amend(BlockDriverState *bs, OptDict *opts, BdrvAmendStatusCB *cb,
                                void *opaque, bool force, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t old_version = s->h.version, new_version = old_version;
    const char *backing_file = NULL, *backing_fmt = NULL, *data_file = NULL, *v;
    bool lazy = s->h.compat & QCOW2_COMPAT_LAZY_REFCOUNTS;
    bool data_file_raw = qcow2_data_file_is_raw(s);
    uint32_t refcount_bits = 1U << s->h.refcount_order;
    uint64_t new_size = 0;
    bool encryption_update = false;
    int ret;

    if (!s->writable) {
        error_setg(errp, "Image is read-only");
        return -EACCES;
    }
    /* In QEMU's option-list order: the first bad one is the one named. */
    for (size_t i = 0; i < optdict_count(opts); i++) {
        if (!strncmp(optdict_key_at(opts, i), "encrypt.", 8)) {
            if (s->h.crypt_method == QCOW2_CRYPT_NONE) {
                error_setg(errp, "Can't amend encryption options - encryption not present");
                return -EINVAL;
            }
            if (s->h.crypt_method != QCOW2_CRYPT_LUKS) {
                error_setg(errp, "Only LUKS encryption options can be amended");
                return -ENOTSUP;
            }
            encryption_update = true;
        }
    }
    if ((v = optdict_get(opts, "size"))) {
        new_size = strtoull(v, NULL, 10);
    }
    if ((v = optdict_get(opts, "compat"))) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
            new_version = 2;
        } else if (!strcmp(v, "1.1") || !strcmp(v, "v3")) {
            new_version = 3;
        } else {
            error_setg(errp, "Unknown compatibility level %s", v);
            return -EINVAL;
        }
    }
    backing_file = optdict_get(opts, "backing_file");
    backing_fmt = optdict_get(opts, "backing_fmt");
    if ((data_file = optdict_get(opts, "data_file")) && !qcow2_has_data_file(s)) {
        error_setg(errp, "data-file can only be set for images that use an external data file");
        return -EINVAL;
    }
    if ((v = optdict_get(opts, "data_file_raw"))) {
        data_file_raw = opt_bool(v);
        if (data_file_raw && !qcow2_data_file_is_raw(s)) {
            error_setg(errp, "data-file-raw cannot be set on existing images");
            return -EINVAL;
        }
    }
    if ((v = optdict_get(opts, "lazy_refcounts"))) {
        lazy = opt_bool(v);
    }
    if ((v = optdict_get(opts, "refcount_bits"))) {
        char *end;
        unsigned long long b = strtoull(v, &end, 0);
        if (*end || b == 0 || b > 64 || (b & (b - 1))) {
            error_setg(errp, "Refcount width must be a power of two and may not exceed 64 bits");
            return -EINVAL;
        }
        refcount_bits = (uint32_t)b;
    }

    AmendProgress p = {
        .cb = cb, .opaque = opaque,
        .total_ops = (new_version != old_version) + (refcount_bits != 1U << s->h.refcount_order)
                     + encryption_update,
    };

    if (new_version > old_version) {
        p.current = OP_UPGRADE;
        ret = upgrade(bs, &p, errp);
        if (ret < 0) {
            return ret;
        }
    }
    /* QEMU's order: keyslots right after an upgrade */
    if (encryption_update) {
        p.current = OP_ENCRYPT;     /* counted, reports no progress: as QEMU */
        ret = qcow2_crypto_amend(bs, opts, force, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (refcount_bits != 1U << s->h.refcount_order) {
        if (new_version < 3 && refcount_bits != 16) {
            error_setg(errp, "Refcount widths other than 16 bits require compatibility level 1.1"
                       " or above (use compat=1.1 or greater)");
            return -EINVAL;
        }
        p.current = OP_REFCOUNT;
        co_mutex_lock(&s->lock);
        ret = change_refcount_order(bs, (uint32_t)__builtin_ctz(refcount_bits), &p, errp);
        co_mutex_unlock(&s->lock);
        if (ret < 0) {
            return ret;
        }
    }

    if (data_file_raw) {
        s->h.autoclear |= QCOW2_AUTOCLEAR_DATA_RAW;
    } else {
        s->h.autoclear &= ~QCOW2_AUTOCLEAR_DATA_RAW;
    }
    if (data_file) {
        free(s->image_data_file);
        s->image_data_file = *data_file ? strdup(data_file) : NULL;
        if (*data_file && !s->image_data_file) {
            error_setg_errno(errp, ENOMEM, "Failed to update the image header");
            return -ENOMEM;
        }
    }
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }

    if (backing_file || backing_fmt) {
        /* QEMU 7.2 takes them only as the image already records them. */
        const char *cur_file = bs->backing_file[0] ? bs->backing_file : NULL;
        const char *cur_fmt = bs->backing_format[0] ? bs->backing_format : NULL;
        if (str_differs(backing_file, cur_file) || str_differs(backing_fmt, cur_fmt)) {
            error_setg(errp, "Cannot amend the backing file\n"
                       "You can use 'qemu-img rebase' instead.");
            return -EINVAL;
        }
    }

    if (lazy != !!(s->h.compat & QCOW2_COMPAT_LAZY_REFCOUNTS)) {
        if (lazy) {
            if (new_version < 3) {
                error_setg(errp, "Lazy refcounts only supported with compatibility level 1.1 and"
                           " above (use compat=1.1 or greater)");
                return -EINVAL;
            }
            s->h.compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
            ret = qcow2_update_header(bs);
            if (ret < 0) {
                s->h.compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
                error_setg_errno(errp, -ret, "Failed to update the image header");
                return ret;
            }
        } else {
            ret = qcow2_mark_clean(bs);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to make the image clean");
                return ret;
            }
            s->h.compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
            ret = qcow2_update_header(bs);
            if (ret < 0) {
                s->h.compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
                error_setg_errno(errp, -ret, "Failed to update the image header");
                return ret;
            }
        }
    }

    if (new_size) {
        /* exact: amend means "this size" */
        ret = qcow2_co_truncate(bs, (int64_t)MIN(new_size, (uint64_t)INT64_MAX), true,
                                PREALLOC_MODE_OFF, 0, errp);
        if (ret < 0) {
            return ret;
        }
        bdrv_set_total_bytes(bs, (int64_t)new_size);
    }

    if (new_version < old_version) {
        p.current = OP_DOWNGRADE;
        ret = downgrade(bs, &p, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}
