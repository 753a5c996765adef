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
#include "block-snapshot.h"
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

/* ---- the snapshot table ---- */

#define SN_EXTRA_KNOWN   24                     /* vm_state_size_large, disk_size, icount */
#define SN_EXTRA_MAX     1024                   /* QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA */
#define SN_TABLE_MAX     (1024ULL * QCOW2_MAX_SNAPSHOTS)   /* QCOW_MAX_SNAPSHOTS_SIZE */

typedef struct Qcow2Snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str, *name;
    uint64_t vm_state_size, disk_size, icount, vm_clock_nsec;
    uint32_t date_sec, date_nsec;
    uint32_t extra_data_size;        /* as read (0 for a new one) */
    uint8_t *unknown_extra;          /* extra data past the known 24 bytes, kept */
} Qcow2Snapshot;

static void free_snapshot(Qcow2Snapshot *sn)
{
    free(sn->id_str);
    free(sn->name);
    free(sn->unknown_extra);
}

void qcow2_free_snapshots(BDRVQcow2State *s)
{
    for (uint32_t i = 0; s->snapshots && i < s->h.nb_snapshots; i++) {
        free_snapshot(&s->snapshots[i]);
    }
    free(s->snapshots);
    s->snapshots = NULL;
}

static int read_at(BlockDriverState *bs, uint64_t off, uint64_t len, void *buf, int64_t file_len)
{
    if (off > (uint64_t)file_len || len > (uint64_t)file_len - off) {
        return -EINVAL;                         /* past the end of the file */
    }
    return len ? bdrv_pread(bs->file, (int64_t)off, (int64_t)len, buf, 0) : 0;
}

static char *read_str(BlockDriverState *bs, uint64_t off, uint32_t len, int64_t file_len,
                      int *ret)
{
    char *p = malloc(len + 1);
    if (!p) {
        *ret = -ENOMEM;
        return NULL;
    }
    *ret = read_at(bs, off, len, p, file_len);
    if (*ret < 0) {
        free(p);
        return NULL;
    }
    p[len] = 0;
    return p;
}

static void free_array(Qcow2Snapshot *sns, uint32_t n)
{
    for (uint32_t i = 0; sns && i < n; i++) {
        free_snapshot(&sns[i]);
    }
    free(sns);
}

/* QEMU's qcow2_do_read_snapshots: entries 8-byte aligned; the 40-byte header,
 * extra data (at most 1 KiB), id and name; the table at most 64 MiB.  The
 * first n entries into *out, the table's bytes into *size.  With repair
 * (img check -r all, which has reported the damage), extra data past 1 KiB
 * is dropped rather than refused: the entry keeps only its known fields. */
static int read_table(BlockDriverState *bs, uint32_t n, bool repair, Qcow2Snapshot **out,
                      uint64_t *size, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *iname = qcow2_image_name(bs);
    uint64_t offset = s->h.snapshots_offset;
    int64_t file_len = bdrv_getlength(bs->file->bs);
    Qcow2Snapshot *sns;
    int ret = 0;

    *out = NULL;
    *size = 0;
    if (!n) {
        return 0;
    }
    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "qcow2: %s: cannot get file size", iname);
        return (int)file_len;
    }
    sns = calloc(n, sizeof(*sns));
    if (!sns) {
        error_setg(errp, "qcow2: %s: no memory for %" PRIu32 " snapshots", iname, n);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        Qcow2Snapshot *sn = &sns[i];
        uint8_t h[QCOW2_SNAPSHOT_HEADER_MIN], extra[SN_EXTRA_KNOWN] = { 0 };

        offset = ALIGN_UP(offset, 8);
        ret = read_at(bs, offset, sizeof(h), h, file_len);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "qcow2: %s: Failed to read snapshot table (entry %"
                             PRIu32 " at 0x%" PRIx64 ")", iname, i, offset);
            goto fail;
        }
        offset += sizeof(h);
        sn->l1_table_offset = qcow2_ld64(h, 0);
        sn->l1_size = qcow2_ld32(h, 8);
        uint32_t id_len = qcow2_ld16(h, 12), name_len = qcow2_ld16(h, 14);
        sn->date_sec = qcow2_ld32(h, 16);
        sn->date_nsec = qcow2_ld32(h, 20);
        sn->vm_clock_nsec = qcow2_ld64(h, 24);
        sn->vm_state_size = qcow2_ld32(h, 32);
        sn->extra_data_size = qcow2_ld32(h, 36);
        uint32_t on_disk = sn->extra_data_size;
        if (sn->extra_data_size > SN_EXTRA_MAX) {
            if (!repair) {
                error_setg(errp, "qcow2: %s: Too much extra metadata in snapshot table entry %"
                           PRIu32 " (%" PRIu32 " bytes; You can force-remove this extra"
                           " metadata with qemu-img check -r all)", iname, i,
                           sn->extra_data_size);
                ret = -EFBIG;
                goto fail;
            }
            sn->extra_data_size = SN_EXTRA_KNOWN;
        }
        uint32_t known = MIN(sn->extra_data_size, (uint32_t)SN_EXTRA_KNOWN);
        ret = read_at(bs, offset, known, extra, file_len);
        if (ret == 0 && sn->extra_data_size > SN_EXTRA_KNOWN) {
            uint32_t unknown = sn->extra_data_size - SN_EXTRA_KNOWN;
            sn->unknown_extra = malloc(unknown);
            ret = sn->unknown_extra ? read_at(bs, offset + SN_EXTRA_KNOWN, unknown,
                                              sn->unknown_extra, file_len) : -ENOMEM;
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "qcow2: %s: Failed to read snapshot table (extra data"
                             " of entry %" PRIu32 ")", iname, i);
            goto fail;
        }
        offset += on_disk;
        if (sn->extra_data_size >= 8) {
            sn->vm_state_size = qcow2_ld64(extra, 0);
        }
        sn->disk_size = sn->extra_data_size >= 16 ? qcow2_ld64(extra, 8) : s->h.size;
        sn->icount = sn->extra_data_size >= 24 ? qcow2_ld64(extra, 16) : UINT64_MAX;
        sn->id_str = read_str(bs, offset, id_len, file_len, &ret);
        if (sn->id_str) {
            offset += id_len;
            sn->name = read_str(bs, offset, name_len, file_len, &ret);
            offset += name_len;
        }
        if (ret < 0) {
            error_setg_errno(errp, -ret, "qcow2: %s: Failed to read snapshot table (id or name"
                             " of entry %" PRIu32 ")", iname, i);
            goto fail;
        }
        if (offset - s->h.snapshots_offset > SN_TABLE_MAX) {
            error_setg(errp, "qcow2: %s: Snapshot table is too big", iname);
            ret = -EFBIG;
            goto fail;
        }
    }
    *out = sns;
    *size = offset - s->h.snapshots_offset;
    return 0;

fail:
    free_array(sns, n);
    return ret;
}

int qcow2_read_snapshots(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    return read_table(bs, s->h.nb_snapshots, false, &s->snapshots, &s->snapshots_size, errp);
}

/* The table's bytes for the snapshots sn[0, n) (QEMU's qcow2_write_snapshots:
 * always the 24 known bytes of extra data, then what we did not know). */
static uint8_t *build_table(const Qcow2Snapshot *sns, uint32_t n, uint64_t *size)
{
    uint64_t len = 0;
    for (uint32_t i = 0; i < n; i++) {
        len = ALIGN_UP(len, 8) + QCOW2_SNAPSHOT_HEADER_MIN +
              MAX(sns[i].extra_data_size, (uint32_t)SN_EXTRA_KNOWN) +
              strlen(sns[i].id_str) + strlen(sns[i].name);
        if (len > SN_TABLE_MAX) {
            return NULL;
        }
    }
    uint8_t *b = calloc(1, len ? len : 1);
    if (!b) {
        return NULL;
    }
    uint64_t o = 0;
    for (uint32_t i = 0; i < n; i++) {
        const Qcow2Snapshot *sn = &sns[i];
        uint32_t extra = MAX(sn->extra_data_size, (uint32_t)SN_EXTRA_KNOWN);
        size_t id_len = strlen(sn->id_str), name_len = strlen(sn->name);
        uint64_t v64;
        uint32_t v32;
        uint16_t v16;

        o = ALIGN_UP(o, 8);
#define PUT(off, val, bits) (v##bits = htobe##bits(val), memcpy(b + o + (off), &v##bits, bits / 8))
        PUT(0, sn->l1_table_offset, 64);
        PUT(8, sn->l1_size, 32);
        PUT(12, (uint16_t)id_len, 16);
        PUT(14, (uint16_t)name_len, 16);
        PUT(16, sn->date_sec, 32);
        PUT(20, sn->date_nsec, 32);
        PUT(24, sn->vm_clock_nsec, 64);
        /* a VM state past 4 GiB: old readers see a disk-only snapshot */
        PUT(32, sn->vm_state_size <= 0xffffffffULL ? (uint32_t)sn->vm_state_size : 0, 32);
        PUT(36, extra, 32);
        PUT(40, sn->vm_state_size, 64);
        PUT(48, sn->disk_size, 64);
        PUT(56, sn->icount, 64);
#undef PUT
        o += QCOW2_SNAPSHOT_HEADER_MIN + SN_EXTRA_KNOWN;
        if (extra > SN_EXTRA_KNOWN) {
            memcpy(b + o, sn->unknown_extra, extra - SN_EXTRA_KNOWN);
            o += extra - SN_EXTRA_KNOWN;
        }
        memcpy(b + o, sn->id_str, id_len);
        o += id_len;
        memcpy(b + o, sn->name, name_len);
        o += name_len;
    }
    *size = len;
    return b;
}

/*
 * Write the table sns[0, n) to new clusters, flush, then point the header at
 * it (nb_snapshots and snapshots_offset: 12 bytes in one sector, written and
 * flushed), then free the old table.  A crash leaves the old table or the
 * new one, and at worst the other's clusters leaked.  On success s->snapshots
 * becomes sns (the caller's array, taken over) and the old array is freed
 * by the caller.  s->lock held.
 */
static int coroutine_fn write_snapshots(BlockDriverState *bs, Qcow2Snapshot *sns, uint32_t n)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t size = 0;
    int64_t off = 0;
    int ret;

    uint8_t *buf = build_table(sns, n, &size);
    if (!buf) {
        return size > SN_TABLE_MAX ? -EFBIG : -ENOMEM;
    }
    if (size) {
        off = qcow2_alloc_clusters(bs, size);
        if (off < 0) {
            free(buf);
            return (int)off;
        }
    }
    /* the flush after the table makes the refcounts durable before the header */
    ret = meta_cache_write_back(s->refcount_cache);
    if (ret == 0 && size) {
        ret = qcow2_overlaps_metadata(bs, (uint64_t)off, size, 0) ? -EIO :
              bdrv_pwrite(bs->file, off, (int64_t)size, buf, 0);
    }
    free(buf);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret == 0) {
        uint8_t hd[12];
        uint32_t nb = htobe32(n);
        uint64_t o = htobe64((uint64_t)off);
        memcpy(hd, &nb, 4);
        memcpy(hd + 4, &o, 8);
        ret = bdrv_pwrite(bs->file, QH_NB_SNAPSHOTS, sizeof(hd), hd, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        return ret;                     /* the new table's clusters leak */
    }
    uint64_t old_off = s->h.snapshots_offset, old_size = s->snapshots_size;
    s->h.nb_snapshots = n;
    s->h.snapshots_offset = (uint64_t)off;
    s->snapshots_size = size;
    s->snapshots = sns;
    if (old_size) {
        qcow2_update_refcount(bs, old_off, old_size, true);   /* a failure leaks them */
    }
    return 0;
}

/*
 * img check -r all (QEMU's qcow2_check_fix_snapshot_table): the table's
 * first n entries, read again with the repairs (extra data past 1 KiB
 * dropped; build_table completes short extra data with the known fields)
 * and written as every table change here is written.  The old table
 * (n entries' worth, what the check counted) is freed.  s->lock held.
 */
int coroutine_fn qcow2_snapshot_table_rewrite(BlockDriverState *bs, uint32_t n)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Snapshot *sns;
    uint64_t size;
    Error *err = NULL;

    int ret = read_table(bs, n, true, &sns, &size, &err);
    error_free(err);
    if (ret < 0) {
        return ret;
    }
    qcow2_free_snapshots(s);
    s->h.nb_snapshots = n;
    s->snapshots_size = size;
    ret = write_snapshots(bs, sns, n);
    if (ret < 0) {
        free_array(sns, n);
    }
    return ret;
}

/* ---- reference counts of a whole tree ---- */

static int coroutine_fn rc_change(BlockDriverState *bs, uint64_t off, uint64_t len, bool dec)
{
    int ret;
    do {
        ret = qcow2_update_refcount(bs, off, len, dec);
    } while (ret == -EAGAIN);     /* a refcount block was made: once more */
    return ret;
}

static int coroutine_fn rc_get(BlockDriverState *bs, uint64_t off, uint64_t *rc)
{
    BDRVQcow2State *s = bs->opaque;
    return qcow2_get_refcount(bs, off >> s->cluster_bits, rc);
}

/* An L2 table offset from an L1 table (a snapshot's comes from the file
 * unchecked): aligned, and not over the header, the L1 or refcount tables
 * or a refcount block (the overlap check marks the image corrupt). */
static int l2_offset_bad(BlockDriverState *bs, uint64_t l2, uint64_t i)
{
    BDRVQcow2State *s = bs->opaque;
    if (!qcow2_offset_into_cluster(s, l2) &&
        qcow2_overlaps_metadata(bs, l2, s->cluster_size, l2)) {
        return -EIO;
    }
    if (qcow2_offset_into_cluster(s, l2)) {
        char msg[120];
        snprintf(msg, sizeof(msg), "L2 table offset 0x%" PRIx64 " of L1 entry %" PRIu64
                 " unaligned", l2, i);
        qcow2_signal_corruption(bs, msg);
        return -EIO;
    }
    return 0;
}

/*
 * Add (dec: drop) one reference to every cluster of the tree of L1 table l1
 * (host-endian): its L2 tables and what their entries name (QEMU's
 * qcow2_update_snapshot_refcount with addend +-1).  clear_copied: the
 * entries of the tree's L2 tables lose COPIED, written after the refcount
 * blocks (used on the active tree when a snapshot takes it).  s->lock held.
 */
static int coroutine_fn tree_refcount(BlockDriverState *bs, const uint64_t *l1, uint32_t l1_size,
                                      bool dec, bool clear_copied)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t slice_bytes = meta_cache_entry_size(s->l2_cache);
    uint32_t step = s->l2_entry_size / 8;
    int ret = 0;

    if (clear_copied) {
        ret = meta_cache_set_dependency(s->l2_cache, s->refcount_cache);
        if (ret < 0) {
            return ret;
        }
    }
    for (uint64_t i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK;
        if (!l2) {
            continue;
        }
        ret = l2_offset_bad(bs, l2, i);
        for (uint64_t o = 0; ret == 0 && o < s->cluster_size; o += slice_bytes) {
            uint64_t *slice;
            ret = meta_cache_get(s->l2_cache, (int64_t)(l2 + o), (void **)&slice);
            if (ret < 0) {
                break;
            }
            /* Runs of contiguous data clusters change in one call (each call
             * costs an overlap check of its refcount block).  `counted`:
             * entries [0, counted) have their new reference; only those lose
             * COPIED, so a failure leaves flags that match the refcounts. */
            uint32_t nent = (uint32_t)(slice_bytes / s->l2_entry_size), counted = 0;
            uint64_t run = 0, run_len = 0;
            for (uint32_t j = 0; j <= nent; j++) {
                uint64_t e = j < nent ? be64toh(slice[j * step]) : 0;
                uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
                bool compressed = e & QCOW2_OFLAG_COMPRESSED;
                if (j < nent && !compressed && host && run_len && host == run + run_len) {
                    run_len += s->cluster_size;
                    continue;
                }
                if (run_len) {
                    ret = rc_change(bs, run, run_len, dec);
                    if (ret < 0) {
                        break;
                    }
                    counted = j;
                    run_len = 0;
                }
                if (j == nent) {
                    break;
                }
                if (compressed) {
                    uint64_t coff = e & s->cluster_offset_mask;
                    uint64_t nb = ((e >> s->csize_shift) & s->csize_mask) + 1;
                    ret = rc_change(bs, coff & ~511ULL, nb * 512, dec);
                    if (ret < 0) {
                        break;
                    }
                    counted = j + 1;
                } else if (host) {
                    run = host;
                    run_len = s->cluster_size;
                } else {
                    counted = j + 1;
                }
            }
            bool dirty = false;
            for (uint32_t j = 0; clear_copied && j < counted; j++) {
                uint64_t e = be64toh(slice[j * step]);
                if (e & QCOW2_OFLAG_COPIED) {
                    qcow2_set_l2_entry(s, slice, j, e & ~QCOW2_OFLAG_COPIED);
                    dirty = true;
                }
            }
            if (dirty) {
                meta_cache_mark_dirty(s->l2_cache, slice);
            }
            meta_cache_put(s->l2_cache, slice);
        }
        if (ret == 0) {
            ret = rc_change(bs, l2, s->cluster_size, dec);
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Write the active L1 table (n entries of t) in place; flush if asked. */
static int coroutine_fn write_active_l1(BlockDriverState *bs, const uint64_t *t, uint32_t n,
                                        bool flush)
{
    BDRVQcow2State *s = bs->opaque;
    if (!n) {
        return 0;
    }
    uint64_t *be = malloc((size_t)n * 8);
    if (!be) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        be[i] = htobe64(t[i]);
    }
    int ret = bdrv_pwrite(bs->file, (int64_t)s->h.l1_table_offset, (int64_t)n * 8, be, 0);
    free(be);
    return ret < 0 || !flush ? ret : bdrv_co_flush(bs->file->bs);
}

/*
 * COPIED on the active tree as the refcounts say (QEMU's addend-0 pass): an
 * L2 table or data cluster with refcount 1 gets it, others lose it.  Tables
 * still shared are left alone (their entries cannot be exclusive).  Called
 * with the refcounts on disk; L2 tables written, then the L1.  s->lock held.
 */
static int coroutine_fn fix_active_copied(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t slice_bytes = meta_cache_entry_size(s->l2_cache);
    uint32_t step = s->l2_entry_size / 8;
    bool l1_changed = false;
    int ret = 0;

    if (!s->l1_size) {
        return 0;
    }
    uint64_t *l1 = malloc((size_t)s->l1_size * 8);
    if (!l1) {
        return -ENOMEM;
    }
    memcpy(l1, s->l1_table, (size_t)s->l1_size * 8);
    for (uint64_t i = 0; ret == 0 && i < s->l1_size; i++) {
        uint64_t l2 = l1[i] & QCOW2_L1E_OFFSET_MASK, rc;
        if (!l2) {
            continue;
        }
        ret = rc_get(bs, l2, &rc);
        if (ret < 0) {
            break;
        }
        uint64_t ne = rc == 1 ? l2 | QCOW2_OFLAG_COPIED : l2;
        if (ne != l1[i]) {
            l1[i] = ne;
            l1_changed = true;
        }
        if (rc != 1) {
            continue;
        }
        for (uint64_t o = 0; ret == 0 && o < s->cluster_size; o += slice_bytes) {
            uint64_t *slice;
            ret = meta_cache_get(s->l2_cache, (int64_t)(l2 + o), (void **)&slice);
            if (ret < 0) {
                break;
            }
            bool dirty = false;
            for (uint32_t j = 0; ret == 0 && j < slice_bytes / s->l2_entry_size; j++) {
                uint64_t e = be64toh(slice[j * step]), drc;
                if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_L2E_OFFSET_MASK)) {
                    continue;
                }
                ret = rc_get(bs, e & QCOW2_L2E_OFFSET_MASK, &drc);
                uint64_t want = drc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
                if (ret == 0 && want != e) {
                    qcow2_set_l2_entry(s, slice, j, want);
                    dirty = true;
                }
            }
            if (dirty) {
                meta_cache_mark_dirty(s->l2_cache, slice);
            }
            meta_cache_put(s->l2_cache, slice);
        }
    }
    if (ret == 0) {
        ret = meta_cache_flush(s->l2_cache);
    }
    if (ret == 0 && l1_changed) {
        ret = write_active_l1(bs, l1, s->l1_size, true);
        for (uint32_t i = 0; ret == 0 && i < s->l1_size; i++) {
            __atomic_store_n(&s->l1_table[i], l1[i], __ATOMIC_RELEASE);
        }
    }
    free(l1);
    return ret;
}

static int coroutine_fn flush_caches(BDRVQcow2State *s)
{
    int ret = meta_cache_flush(s->l2_cache);
    if (ret == 0) {
        ret = meta_cache_flush(s->refcount_cache);
    }
    return ret;
}

/* ---- lookups ---- */

/* QEMU's find_snapshot_by_id_and_name: both must match when both given. */
static uint32_t nb_snapshots(const BDRVQcow2State *s)
{
    return s->snapshots ? s->h.nb_snapshots : 0;   /* a check open may lack the table */
}

static int find_snapshot(BDRVQcow2State *s, const char *id, const char *name)
{
    for (uint32_t i = 0; i < nb_snapshots(s); i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        if ((id || name) && (!id || !strcmp(sn->id_str, id)) &&
            (!name || !strcmp(sn->name, name))) {
            return (int)i;
        }
    }
    return -ENOENT;
}

static int find_by_id_or_name(BDRVQcow2State *s, const char *id_or_name)
{
    int i = find_snapshot(s, id_or_name, NULL);
    return i >= 0 ? i : find_snapshot(s, NULL, id_or_name);
}

/* A snapshot's L1 table, checked as QEMU's qcow2_validate_table does, read
 * into *out (host-endian, n entries, zero-padded past its own size). */
static int coroutine_fn load_snapshot_l1(BlockDriverState *bs, const Qcow2Snapshot *sn,
                                         uint32_t n, uint64_t **out, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t file_len = bdrv_getlength(bs->file->bs);

    *out = NULL;
    if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8) {
        error_setg(errp, "Snapshot L1 table too large (snapshot %s, %" PRIu32 " entries)",
                   sn->id_str, sn->l1_size);
        return -EFBIG;
    }
    if (qcow2_offset_into_cluster(s, sn->l1_table_offset) || file_len < 0 ||
        sn->l1_table_offset > (uint64_t)file_len ||
        (uint64_t)sn->l1_size * 8 > (uint64_t)file_len - sn->l1_table_offset) {
        error_setg(errp, "Snapshot L1 table offset invalid (snapshot %s, 0x%" PRIx64 ")",
                   sn->id_str, sn->l1_table_offset);
        return -EINVAL;
    }
    n = MAX(n, sn->l1_size);
    uint64_t *t = calloc(n ? n : 1, 8);
    if (!t) {
        error_setg(errp, "Snapshot L1 table: out of memory");
        return -ENOMEM;
    }
    int ret = sn->l1_size ? bdrv_pread(bs->file, (int64_t)sn->l1_table_offset,
                                       (int64_t)sn->l1_size * 8, t, 0) : 0;
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to read l1 table for snapshot %s", sn->id_str);
        free(t);
        return ret;
    }
    for (uint32_t i = 0; i < sn->l1_size; i++) {
        t[i] = be64toh(t[i]);
    }
    *out = t;
    return 0;
}

int qcow2_snapshot_list(BlockDriverState *bs, BdrvSnapshotInfo **list)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t n = nb_snapshots(s);

    *list = NULL;
    if (!n) {
        return 0;
    }
    BdrvSnapshotInfo *l = calloc(n, sizeof(*l));
    if (!l) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        snprintf(l[i].id_str, sizeof(l[i].id_str), "%s", sn->id_str);
        snprintf(l[i].name, sizeof(l[i].name), "%s", sn->name);
        l[i].vm_state_size = sn->vm_state_size;
        l[i].date_sec = sn->date_sec;
        l[i].date_nsec = sn->date_nsec;
        l[i].vm_clock_nsec = sn->vm_clock_nsec;
        l[i].icount = sn->icount;
        l[i].disk_size = sn->disk_size;
    }
    *list = l;
    return (int)n;
}

static int refuse(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if (s->h.nb_snapshots && !s->snapshots) {
        error_setg(errp, "qcow2: %s: the snapshot table was not read", qcow2_image_name(bs));
        return -EIO;
    }
    if (!s->writable || s->snapshot_loaded) {
        error_setg(errp, "qcow2: %s: the image is open read-only", qcow2_image_name(bs));
        return -EACCES;
    }
    if (qcow2_has_data_file(s)) {
        error_setg(errp, "qcow2: %s: internal snapshots are not supported with an external"
                   " data file", qcow2_image_name(bs));
        return -ENOTSUP;
    }
    return 0;
}

/* ---- create, apply, delete ---- */

/*
 * QEMU's qcow2_snapshot_create: the active L1 copied to new clusters, every
 * cluster of the active tree one more reference (and COPIED gone from its
 * entries: they are shared now), then the new table, the header last.  A
 * crash before the header leaves the old image with leaked references.
 */
int coroutine_fn qcow2_co_snapshot_create(BlockDriverState *bs, BdrvSnapshotInfo *info,
                                          Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t n = s->h.nb_snapshots;
    int ret = refuse(bs, errp);

    if (ret < 0) {
        return ret;
    }
    if (n >= QCOW2_MAX_SNAPSHOTS) {
        error_setg(errp, "qcow2: %s: too many snapshots (%" PRIu32 ")", qcow2_image_name(bs), n);
        return -EFBIG;
    }
    co_mutex_lock(&s->lock);
    /* a new id: one past the largest number among the ids (QEMU's
     * find_new_snapshot_id) */
    unsigned long max_id = 0;
    for (uint32_t i = 0; i < n; i++) {
        unsigned long v = strtoul(s->snapshots[i].id_str, NULL, 10);
        max_id = MAX(max_id, v);
    }
    Qcow2Snapshot sn = {
        .l1_size = s->l1_size, .disk_size = (uint64_t)bdrv_get_total_bytes(bs),
        .vm_state_size = info->vm_state_size, .date_sec = info->date_sec,
        .date_nsec = info->date_nsec, .vm_clock_nsec = info->vm_clock_nsec,
        .icount = info->icount, .extra_data_size = SN_EXTRA_KNOWN,
    };
    Qcow2Snapshot *sns = calloc(n + 1, sizeof(*sns));
    if (asprintf(&sn.id_str, "%lu", max_id + 1) < 0) {
        sn.id_str = NULL;
    }
    sn.name = strdup(info->name);
    if (!sns || !sn.id_str || !sn.name) {
        ret = -ENOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!strcmp(s->snapshots[i].id_str, sn.id_str)) {
            ret = -EEXIST;
            goto fail;
        }
    }
    snprintf(info->id_str, sizeof(info->id_str), "%s", sn.id_str);
    /* Flushes are few (each costs a disk cache flush): the L1 copy and the
     * refcounts reach the disk with the L2 tables' flush below, the active
     * L1 with the table's, all before the header names the snapshot. */
    /* The copy keeps the entries as they are (COPIED too, as QEMU's). */
    if (s->l1_size) {
        int64_t off = qcow2_alloc_clusters(bs, (uint64_t)s->l1_size * 8);
        if (off < 0) {
            ret = (int)off;
            goto fail;
        }
        sn.l1_table_offset = (uint64_t)off;
        uint64_t *be = malloc((size_t)s->l1_size * 8);
        if (!be) {
            ret = -ENOMEM;
            goto fail;
        }
        for (uint32_t i = 0; i < s->l1_size; i++) {
            be[i] = htobe64(s->l1_table[i]);
        }
        ret = qcow2_overlaps_metadata(bs, (uint64_t)off, (uint64_t)s->l1_size * 8, 0) ? -EIO
              : bdrv_pwrite(bs->file, off, (int64_t)s->l1_size * 8, be, 0);
        free(be);
        if (ret < 0) {
            goto fail;
        }
    }
    ret = tree_refcount(bs, s->l1_table, s->l1_size, false, true);
    if (ret == 0) {
        /* refcounts written, flushed, then the L2 tables without COPIED, flushed */
        ret = meta_cache_write_back(s->refcount_cache);
    }
    if (ret == 0) {
        ret = meta_cache_flush(s->l2_cache);
    }
    if (ret == 0) {
        /* no active L2 table is exclusive any more */
        uint64_t *l1 = malloc((size_t)MAX(s->l1_size, 1U) * 8);
        if (!l1) {
            ret = -ENOMEM;
            goto fail;
        }
        for (uint32_t i = 0; i < s->l1_size; i++) {
            l1[i] = s->l1_table[i] & ~QCOW2_OFLAG_COPIED;
        }
        ret = write_active_l1(bs, l1, s->l1_size, false);
        for (uint32_t i = 0; ret == 0 && i < s->l1_size; i++) {
            __atomic_store_n(&s->l1_table[i], l1[i], __ATOMIC_RELEASE);
        }
        free(l1);
    }
    if (ret < 0) {
        goto fail;
    }
    memcpy(sns, s->snapshots, n * sizeof(*sns));
    sns[n] = sn;
    Qcow2Snapshot *old = s->snapshots;
    ret = write_snapshots(bs, sns, n + 1);
    if (ret < 0) {
        sn.id_str = sn.name = NULL;    /* still owned through sns[n]: freed below */
        free_snapshot(&sns[n]);
        free(sns);
        error_setg_errno(errp, -ret, "qcow2: %s: cannot write the snapshot table",
                         qcow2_image_name(bs));
        co_mutex_unlock(&s->lock);
        return ret;
    }
    free(old);
    co_mutex_unlock(&s->lock);
    return 0;

fail:
    co_mutex_unlock(&s->lock);
    free(sns);
    free_snapshot(&sn);
    error_setg_errno(errp, -ret, "qcow2: %s: cannot create the snapshot", qcow2_image_name(bs));
    return ret;
}

/*
 * QEMU's qcow2_snapshot_delete: the entry leaves the table first (header
 * written), then the snapshot's tree loses its references and its L1 table
 * is freed; COPIED is set again where the active tree became the only
 * owner.  A crash after the table write leaves leaked clusters only.
 */
int coroutine_fn qcow2_co_snapshot_delete(BlockDriverState *bs, const char *id, const char *name,
                                          Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = refuse(bs, errp);

    if (ret < 0) {
        return ret;
    }
    co_mutex_lock(&s->lock);
    int idx = find_snapshot(s, id, name);
    if (idx < 0) {
        co_mutex_unlock(&s->lock);
        error_setg(errp, "Can't find the snapshot");
        return -ENOENT;
    }
    uint32_t n = s->h.nb_snapshots;
    Qcow2Snapshot sn = s->snapshots[idx];
    uint64_t *l1 = NULL;
    ret = load_snapshot_l1(bs, &sn, 0, &l1, errp);
    if (ret < 0) {
        co_mutex_unlock(&s->lock);
        return ret;
    }
    Qcow2Snapshot *sns = calloc(n, sizeof(*sns));
    if (!sns) {
        ret = -ENOMEM;
        error_setg(errp, "out of memory");
        goto out;
    }
    memcpy(sns, s->snapshots, (size_t)idx * sizeof(*sns));
    memcpy(sns + idx, s->snapshots + idx + 1, (n - (uint32_t)idx - 1) * sizeof(*sns));
    Qcow2Snapshot *old = s->snapshots;
    ret = write_snapshots(bs, sns, n - 1);
    if (ret < 0) {
        free(sns);
        error_setg_errno(errp, -ret, "Failed to remove snapshot from snapshot list");
        goto out;
    }
    free(old);
    free_snapshot(&sn);
    /* From here a failure leaks clusters, nothing worse. */
    ret = tree_refcount(bs, l1, sn.l1_size, true, false);
    if (ret == 0 && sn.l1_size) {
        ret = rc_change(bs, sn.l1_table_offset, (uint64_t)sn.l1_size * 8, true);
    }
    if (ret == 0) {
        /* the lower refcounts go out before COPIED comes back (fix_active_copied
         * flushes); a crash between leaves leaks or COPIED missing, no more */
        ret = meta_cache_write_back(s->refcount_cache);
    }
    if (ret == 0) {
        ret = fix_active_copied(bs);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: snapshot removed, but its clusters could not"
                         " all be freed (leaked: img check -r leaks)", qcow2_image_name(bs));
    }
out:
    free(l1);
    co_mutex_unlock(&s->lock);
    return ret;
}

/*
 * QEMU's qcow2_snapshot_goto, with the switch made in one header write: the
 * snapshot's tree gains a reference, its L1 table (COPIED cleared: it is
 * shared) goes to new clusters, the header names it with the snapshot's
 * size (24 bytes in one sector), then the old active tree loses its
 * references and COPIED is set where the active tree is the only owner.
 * A crash leaves the old or the new state, with at worst leaked clusters.
 */
int coroutine_fn qcow2_co_snapshot_goto(BlockDriverState *bs, const char *id_or_name,
                                        Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = refuse(bs, errp);

    if (ret < 0) {
        return ret;
    }
    co_mutex_lock(&s->lock);
    int idx = find_by_id_or_name(s, id_or_name);
    if (idx < 0) {
        co_mutex_unlock(&s->lock);
        error_setg(errp, "Failed to load snapshot: %s", strerror(ENOENT));
        return -ENOENT;
    }
    const Qcow2Snapshot *sn = &s->snapshots[idx];
    uint64_t cur_size = (uint64_t)bdrv_get_total_bytes(bs);
    if (sn->disk_size != cur_size && s->h.version < 3) {
        co_mutex_unlock(&s->lock);
        error_setg(errp, "Failed to load snapshot: Can't resize a v2 image which has snapshots");
        return -ENOTSUP;
    }
    if (sn->disk_size > cur_size &&
        DIV_ROUND_UP(sn->disk_size, (uint64_t)s->cluster_size << s->l2_bits) > sn->l1_size) {
        co_mutex_unlock(&s->lock);
        error_setg(errp, "Failed to load snapshot: its L1 table (%" PRIu32 " entries) is too"
                   " small for its size %" PRIu64, sn->l1_size, sn->disk_size);
        return -EINVAL;
    }
    uint32_t new_l1_size = MAX(s->l1_size, sn->l1_size);
    uint64_t *l1 = NULL, *old_l1 = s->l1_table;
    uint32_t old_l1_size = s->l1_size;
    uint64_t old_l1_off = s->h.l1_table_offset;
    ret = load_snapshot_l1(bs, sn, new_l1_size, &l1, errp);
    if (ret < 0) {
        co_mutex_unlock(&s->lock);
        return ret;
    }
    for (uint32_t i = 0; i < new_l1_size; i++) {
        l1[i] &= ~QCOW2_OFLAG_COPIED;
    }
    ret = flush_caches(s);
    if (ret == 0) {
        ret = tree_refcount(bs, l1, new_l1_size, false, false);
    }
    int64_t off = 0;
    if (ret == 0 && new_l1_size) {
        off = qcow2_alloc_clusters(bs, (uint64_t)new_l1_size * 8);
        ret = off < 0 ? (int)off : 0;
    }
    if (ret == 0) {
        ret = flush_caches(s);
    }
    if (ret == 0 && new_l1_size) {
        uint64_t *be = malloc((size_t)new_l1_size * 8);
        ret = be ? 0 : -ENOMEM;
        for (uint32_t i = 0; be && i < new_l1_size; i++) {
            be[i] = htobe64(l1[i]);
        }
        if (ret == 0) {
            ret = qcow2_overlaps_metadata(bs, (uint64_t)off, (uint64_t)new_l1_size * 8, 0) ? -EIO
                  : bdrv_pwrite(bs->file, off, (int64_t)new_l1_size * 8, be, 0);
        }
        free(be);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
    }
    if (ret == 0) {
        /* size, crypt_method, l1_size, l1_table_offset: bytes 24..48 */
        uint8_t hd[24];
        uint64_t v64 = htobe64(sn->disk_size);
        memcpy(hd, &v64, 8);
        uint32_t v32 = htobe32(s->h.crypt_method);
        memcpy(hd + 8, &v32, 4);
        v32 = htobe32(new_l1_size);
        memcpy(hd + 12, &v32, 4);
        v64 = htobe64((uint64_t)off);
        memcpy(hd + 16, &v64, 8);
        ret = bdrv_pwrite(bs->file, QH_SIZE, sizeof(hd), hd, 0);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
    }
    if (ret < 0) {
        free(l1);
        co_mutex_unlock(&s->lock);
        error_setg_errno(errp, -ret, "qcow2: %s: cannot apply snapshot (leaked clusters may"
                         " remain: img check -r leaks)", qcow2_image_name(bs));
        return ret;
    }
    /* The new state is on disk.  Readers without the lock may still hold
     * the old table: it is retired, freed at close. */
    Qcow2RetiredL1 *r = malloc(sizeof(*r));
    s->h.size = sn->disk_size;
    s->h.l1_table_offset = (uint64_t)off;
    s->h.l1_size = new_l1_size;
    s->l1_table = l1;
    __atomic_store_n(&s->l1_size, new_l1_size, __ATOMIC_RELEASE);
    bdrv_set_total_bytes(bs, (int64_t)(sn->disk_size & ~(uint64_t)(BDRV_SECTOR_SIZE - 1)));
    if (r) {
        r->table = old_l1;
        r->next = s->retired_l1;
        s->retired_l1 = r;
    }
    ret = tree_refcount(bs, old_l1, old_l1_size, true, false);
    if (ret == 0 && old_l1_size) {
        ret = rc_change(bs, old_l1_off, (uint64_t)old_l1_size * 8, true);
    }
    if (!r) {
        free(old_l1);       /* nothing reads it: the tool drained the node */
    }
    if (ret == 0) {
        ret = flush_caches(s);
    }
    if (ret == 0) {
        ret = fix_active_copied(bs);
    }
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: snapshot applied, but the old clusters could"
                         " not all be freed (leaked: img check -r leaks)", qcow2_image_name(bs));
    }
    return ret;
}

/* ---- the overlap check's part ---- */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

const char *qcow2_snapshot_overlap(BDRVQcow2State *s, unsigned ol, uint64_t offset, uint64_t len)
{
    if ((ol & QCOW2_OL_SNAPSHOT_TABLE) && s->snapshots_size &&
        overlaps(offset, len, s->h.snapshots_offset, s->snapshots_size)) {
        return "snapshot table";
    }
    for (uint32_t i = 0; (ol & QCOW2_OL_INACTIVE_L1) && i < nb_snapshots(s); i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        if (sn->l1_size && overlaps(offset, len, sn->l1_table_offset, (uint64_t)sn->l1_size * 8)) {
            return "inactive L1 table";
        }
    }
    return NULL;
}

/* ---- reading a snapshot (read-only open) ---- */

int qcow2_load_snapshot_opts(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    char *id = NULL, *name = NULL;
    int ret = 0;

    optdict_take_str(options, "load-snapshot-id", NULL, &id);
    optdict_take_str(options, "load-snapshot-name", NULL, &name);
    if (!id && !name) {
        return 0;
    }
    if (flags & BDRV_O_RDWR) {
        error_setg(errp, "Device '%s' is writable, but a snapshot can only be loaded read-only",
                   bs->filename);
        ret = -EINVAL;
        goto out;
    }
    int idx = find_snapshot(s, id, name);
    if (idx < 0) {
        error_setg(errp, "Can't find snapshot");
        ret = -ENOENT;
        goto out;
    }
    const Qcow2Snapshot *sn = &s->snapshots[idx];
    uint64_t *l1;
    ret = load_snapshot_l1(bs, sn, 0, &l1, errp);
    if (ret < 0) {
        goto out;
    }
    if (DIV_ROUND_UP(sn->disk_size, (uint64_t)s->cluster_size << s->l2_bits) > sn->l1_size) {
        error_setg(errp, "Snapshot %s: L1 table of %" PRIu32 " entries is too small for its"
                   " size %" PRIu64, sn->id_str, sn->l1_size, sn->disk_size);
        free(l1);
        ret = -EINVAL;
        goto out;
    }
    free(s->l1_table);
    s->l1_table = l1;
    s->l1_size = sn->l1_size;
    s->h.l1_size = sn->l1_size;
    s->h.l1_table_offset = sn->l1_table_offset;
    s->h.size = sn->disk_size;
    s->snapshot_loaded = true;
out:
    free(id);
    free(name);
    return ret;
}
