/*
 * qcow2-check.c - `img check` for qcow2: what qemu-img 7.2's check finds, with
 * its messages on stderr and its counts.
 *
 * The check walks every structure that takes host clusters (header, active
 * and snapshot L1 tables with their L2 tables and data clusters, snapshot
 * table, refcount table and blocks, bitmaps) and counts the references in an
 * in-memory refcount table laid out like refcount blocks (so the rebuild in
 * qcow2-check-repair.c can write slices of it as they are).  Then the
 * refcounts on disk are compared with those counts: a count on disk higher
 * than the references is a leak, lower a corruption, and a cluster in use
 * with no refcount at all (or a broken refcount table) asks for the refcount
 * structures to be rebuilt.  Last, the COPIED flags of the active L1 and L2
 * entries are compared with the refcounts (set exactly when the refcount is
 * 1).  The counts, the order of the steps and what each repair level fixes
 * are QEMU's (block/qcow2-refcount.c), so both tools give the same numbers.
 *
 * The check runs with s->lock held on a node with no requests in flight
 * (`img check`, or the repair of a dirty image while it opens).  The caches
 * are written back first so the disk is what the walk reads; tables the
 * repairs write directly are dropped from the caches after.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-check.h"

#define SNAPSHOT_EXTRA_MAX   1024           /* QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA */
#define SNAPSHOT_TABLE_MAX   (1024 * QCOW2_MAX_SNAPSHOTS)
#define BME_OFFSET_MASK      0x00fffffffffffe00ULL
#define BME_RESERVED_MASK    0xff000000000001feULL
#define BME_ALL_ONES         1ULL

/* The in-memory refcount table is not allowed past this: a refcount block
 * far past the end of the file cannot make the check allocate without
 * bound (1 GiB covers 32 TiB of 64 KiB clusters at 16 bits). */
#define QCOW2_CHECK_MAX_IMRT (1ULL << 30)

int qcow2_imrt_grow(Qcow2Check *c, int64_t n)
{
    BDRVQcow2State *s = c->bs->opaque;
    if (c->rt && n <= c->nb) {
        return 0;
    }
    if (n > INT32_MAX) {
        return -EFBIG;
    }
    size_t old = c->rt ? qcow2_imrt_bytes(s, c->nb) : 0, want = qcow2_imrt_bytes(s, n);
    if (want > QCOW2_CHECK_MAX_IMRT) {
        return -EFBIG;
    }
    if (want != old) {
        uint8_t *t = realloc(c->rt, want);
        if (!t) {
            return -ENOMEM;
        }
        memset(t + old, 0, want - old);
        c->rt = t;
    }
    c->nb = n;
    return 0;
}

int coroutine_fn qcow2_check_inc_refcounts(Qcow2Check *c, uint64_t offset, uint64_t size)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint64_t max = qcow2_refcount_max(s);

    if (size == 0) {
        return 0;
    }
    int64_t file_len = bdrv_getlength(c->bs->file->bs);
    if (file_len < 0) {
        return (int)file_len;
    }
    /* The last cluster may be cut short by the end of the file; a whole
     * cluster or more past it is not a truncated cluster but a bad offset. */
    if (offset + size > (uint64_t)file_len &&
        offset + size - (uint64_t)file_len >= s->cluster_size) {
        fprintf(stderr, "ERROR: counting reference for region exceeding the end of the file by"
                " one cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64 "\n", offset, size);
        c->res->corruptions++;
        return 0;
    }
    uint64_t first = offset >> s->cluster_bits, last = (offset + size - 1) >> s->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        if ((int64_t)k >= c->nb) {
            int ret = qcow2_imrt_grow(c, (int64_t)k + 1);
            if (ret < 0) {
                c->res->check_errors++;
                return ret;
            }
        }
        uint64_t rc = qcow2_rc_get(c->rt, k, s->h.refcount_order);
        if (rc == max) {
            fprintf(stderr, "ERROR: overflow cluster offset=0x%" PRIx64 "\n", k << s->cluster_bits);
            fprintf(stderr, "Use qemu-img amend to increase the refcount entry width or qemu-img"
                    " convert to create a clean copy if the image cannot be opened for writing\n");
            c->res->corruptions++;
            continue;
        }
        qcow2_rc_set(c->rt, k, s->h.refcount_order, rc + 1);
    }
    return 0;
}

/* QEMU's qcow2_get_cluster_type. */
static Qcow2ClusterType cluster_type(BDRVQcow2State *s, uint64_t e)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        return Q2C_COMPRESSED;
    }
    if ((e & QCOW2_OFLAG_ZERO) && !qcow2_has_subclusters(s)) {
        return (e & QCOW2_L2E_OFFSET_MASK) ? Q2C_ZERO_ALLOC : Q2C_ZERO_PLAIN;
    }
    if (!(e & QCOW2_L2E_OFFSET_MASK)) {
        /* offset 0 is valid in an external data file; COPIED tells it apart */
        return qcow2_has_data_file(s) && (e & QCOW2_OFLAG_COPIED) ? Q2C_NORMAL
                                                                   : Q2C_UNALLOCATED;
    }
    return Q2C_NORMAL;
}

Qcow2ClusterType qcow2_check_cluster_type(BDRVQcow2State *s, uint64_t l2e)
{
    return cluster_type(s, l2e);
}

/* Read the L2 table at l2_offset (whole cluster) into c->l2 (big-endian). */
int coroutine_fn qcow2_check_read_l2(Qcow2Check *c, uint64_t l2_offset)
{
    BDRVQcow2State *s = c->bs->opaque;
    return bdrv_pread(c->bs->file, (int64_t)l2_offset, s->cluster_size, c->l2, 0);
}

static int coroutine_fn check_l2(Qcow2Check *c, uint64_t l2_offset, bool frag_info, bool active)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint32_t l2_size = s->cluster_size / s->l2_entry_size;
    uint64_t next_contiguous = 0;
    int ret = qcow2_check_read_l2(c, l2_offset);

    if (ret < 0) {
        fprintf(stderr, "ERROR: I/O error in check_refcounts_l2\n");
        c->res->check_errors++;
        return ret;
    }
    for (uint32_t i = 0; i < l2_size; i++) {
        uint64_t e = qcow2_check_l2e(c, i), bitmap = qcow2_check_l2_bitmap(c, i);
        Qcow2ClusterType type = cluster_type(s, e);

        if (type != Q2C_COMPRESSED && (e & QCOW2_L2E_STD_RESERVED_MASK)) {
            fprintf(stderr, "ERROR found l2 entry with reserved bits set: %" PRIx64 "\n", e);
            c->res->corruptions++;
        }
        switch (type) {
        case Q2C_COMPRESSED: {
            if (e & QCOW2_OFLAG_COPIED) {
                fprintf(stderr, "ERROR: coffset=0x%" PRIx64 ": copied flag must never be set for"
                        " compressed clusters\n", e & s->cluster_offset_mask);
                e &= ~QCOW2_OFLAG_COPIED;
                c->res->corruptions++;
            }
            if (qcow2_has_data_file(s)) {
                fprintf(stderr, "ERROR compressed cluster %" PRIu32 " with data file, entry=0x%"
                        PRIx64 "\n", i, e);
                c->res->corruptions++;
                break;
            }
            if (bitmap) {
                fprintf(stderr, "ERROR compressed cluster %" PRIu32 " with non-zero subcluster"
                        " allocation bitmap, entry=0x%" PRIx64 "\n", i, e);
                c->res->corruptions++;
                break;
            }
            uint64_t coffset = e & s->cluster_offset_mask;
            uint64_t nb_sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
            uint64_t csize = nb_sectors * 512 - (coffset & 511);
            ret = qcow2_check_inc_refcounts(c, coffset, csize);
            if (ret < 0) {
                return ret;
            }
            if (frag_info) {
                /* compressed clusters share sectors: fragmented by nature */
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            break;
        }
        case Q2C_ZERO_ALLOC:
        case Q2C_NORMAL: {
            uint64_t offset = e & QCOW2_L2E_OFFSET_MASK;
            if ((bitmap >> 32) & bitmap) {
                c->res->corruptions++;
                fprintf(stderr, "ERROR offset=%" PRIx64 ": Allocated cluster has corrupted"
                        " subcluster allocation bitmap\n", offset);
            }
            if (qcow2_offset_into_cluster(s, offset)) {
                bool has_data = qcow2_has_subclusters(s) ? (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC)
                                                         : !(e & QCOW2_OFLAG_ZERO);
                c->res->corruptions++;
                if (!has_data) {
                    bool fix = c->fix & BDRV_FIX_ERRORS;
                    fprintf(stderr, "%s offset=%" PRIx64 ": Preallocated cluster is not properly"
                            " aligned; L2 entry corrupted.\n", fix ? "Repairing" : "ERROR", offset);
                    if (fix) {
                        bool overlap = false;
                        ret = qcow2_check_zero_l2_entry(c, l2_offset, i, active, &overlap);
                        if (overlap) {
                            return ret;     /* this table is not what it seems: stop here */
                        }
                        if (ret == 0) {
                            continue;       /* the entry holds no cluster any more */
                        }
                    }
                } else {
                    fprintf(stderr, "ERROR offset=%" PRIx64 ": Data cluster is not properly"
                            " aligned; L2 entry corrupted.\n", offset);
                }
            }
            if (frag_info) {
                c->res->allocated_clusters++;
                if (next_contiguous && offset != next_contiguous) {
                    c->res->fragmented_clusters++;
                }
                next_contiguous = offset + s->cluster_size;
            }
            if (!qcow2_has_data_file(s)) {
                ret = qcow2_check_inc_refcounts(c, offset, s->cluster_size);
                if (ret < 0) {
                    return ret;
                }
            }
            break;
        }
        case Q2C_ZERO_PLAIN:
            break;
        case Q2C_UNALLOCATED:
            if (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC) {
                c->res->corruptions++;
                fprintf(stderr, "ERROR: Unallocated cluster has non-zero subcluster allocation"
                        " map\n");
            }
            break;
        }
    }
    return 0;
}

static int coroutine_fn check_l1(Qcow2Check *c, uint64_t l1_offset, uint32_t l1_size,
                                 bool frag_info, bool active)
{
    size_t bytes = (size_t)l1_size * 8;
    uint64_t *l1;
    int ret;

    if (!l1_size) {
        return 0;
    }
    ret = qcow2_check_inc_refcounts(c, l1_offset, bytes);
    if (ret < 0) {
        return ret;
    }
    l1 = malloc(bytes);
    if (!l1) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    ret = bdrv_pread(c->bs->file, (int64_t)l1_offset, (int64_t)bytes, l1, 0);
    if (ret < 0) {
        fprintf(stderr, "ERROR: I/O error in check_refcounts_l1\n");
        c->res->check_errors++;
        free(l1);
        return ret;
    }
    for (uint32_t i = 0; i < l1_size && ret >= 0; i++) {
        uint64_t e = be64toh(l1[i]);
        if (!e) {
            continue;
        }
        if (e & QCOW2_L1E_RESERVED_MASK) {
            fprintf(stderr, "ERROR found L1 entry with reserved bits set: %" PRIx64 "\n", e);
            c->res->corruptions++;
        }
        uint64_t l2_offset = e & QCOW2_L1E_OFFSET_MASK;
        ret = qcow2_check_inc_refcounts(c, l2_offset, c->cluster_size);
        if (ret < 0) {
            break;
        }
        if (l2_offset & (c->cluster_size - 1)) {
            fprintf(stderr, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry"
                    " corrupted\n", l2_offset);
            c->res->corruptions++;
        }
        ret = check_l2(c, l2_offset, frag_info, active);
    }
    free(l1);
    return ret;
}

/* The count of snapshots in the header (QEMU writes it at once when it
 * drops snapshots, before the refcounts are checked). */
static int coroutine_fn write_nb_snapshots(Qcow2Check *c, uint32_t n)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint32_t be = htobe32(n);
    int ret = bdrv_pwrite(c->bs->file, QH_NB_SNAPSHOTS, sizeof(be), &be, 0);
    if (ret == 0) {
        ret = bdrv_co_flush(c->bs->file->bs);
    }
    if (ret == 0) {
        /* the driver's array, if it had one, had the old count */
        qcow2_free_snapshots(s);
        s->h.nb_snapshots = n;
    }
    return ret;
}

/*
 * The snapshot table, as QEMU reads it when it checks (qcow2_check_read_
 * snapshot_table and qcow2_do_read_snapshots): entries 8-byte aligned, 40
 * bytes, extra data (at most 1 KiB; v3 wants at least 16), id, name; at most
 * 65536 entries and 64 MiB.  Failures to read it are check errors, as in
 * QEMU.  With -r all, snapshots past the limits are dropped (the header's
 * count written now, the clusters left to the refcount repair to free),
 * and extra data past 1 KiB and incomplete v3 entries are corruptions that
 * fix_snapshots() repairs by writing the table anew.  The findings go to
 * c->snap, added to the result at the end as QEMU does.
 */
static int coroutine_fn read_snapshots(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;
    BdrvCheckResult *res = &c->snap;
    bool repair = c->fix & BDRV_FIX_ERRORS;
    uint64_t offset = s->h.snapshots_offset;
    uint32_t nb = s->h.nb_snapshots, reduced = 0, dropped = 0;
    uint8_t h[QCOW2_SNAPSHOT_HEADER_MIN];
    int ret;

    c->nb_snapshots = 0;
    c->snapshots_size = 0;
    if (nb > QCOW2_MAX_SNAPSHOTS && repair) {
        fprintf(stderr, "Discarding %" PRIu32 " overhanging snapshots\n",
                nb - QCOW2_MAX_SNAPSHOTS);
        reduced += nb - QCOW2_MAX_SNAPSHOTS;
        nb = QCOW2_MAX_SNAPSHOTS;
    }
    /* QEMU's qcow2_validate_table */
    if (nb > QCOW2_MAX_SNAPSHOTS) {
        res->check_errors++;
        error_report("ERROR snapshot table too large");
        fprintf(stderr, "You can force-remove all %" PRIu32 " overhanging snapshots with"
                " qemu-img check -r all\n", nb - QCOW2_MAX_SNAPSHOTS);
        return -EFBIG;
    }
    if ((uint64_t)INT64_MAX - (uint64_t)nb * QCOW2_SNAPSHOT_HEADER_MIN < offset ||
        qcow2_offset_into_cluster(s, offset)) {
        res->check_errors++;
        error_report("ERROR snapshot table offset invalid");
        return -EINVAL;
    }
    if (!nb) {
        return 0;
    }
    c->snapshots = calloc(nb, sizeof(*c->snapshots));
    if (!c->snapshots) {
        res->check_errors++;
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < nb; i++) {
        Qcow2CheckSnapshot *sn = &c->snapshots[i];
        offset = ALIGN_UP(offset, 8);
        uint64_t entry = offset;
        ret = bdrv_pread(c->bs->file, (int64_t)offset, sizeof(h), h, 0);
        if (ret < 0) {
            res->check_errors++;
            error_report("ERROR failed to read the snapshot table: Failed to read snapshot"
                         " table: %s", strerror(-ret));
            return ret;
        }
        offset += sizeof(h);
        sn->l1_table_offset = qcow2_ld64(h, 0);
        sn->l1_size = qcow2_ld32(h, 8);
        uint16_t id_size = qcow2_ld16(h, 12), name_size = qcow2_ld16(h, 14);
        sn->extra_data_size = qcow2_ld32(h, 36);
        offset += sn->extra_data_size;
        if (sn->extra_data_size > SNAPSHOT_EXTRA_MAX) {
            if (!repair) {
                res->check_errors++;
                error_report("ERROR failed to read the snapshot table: Too much extra metadata"
                             " in snapshot table entry %" PRIu32, i);
                fprintf(stderr, "You can force-remove this extra metadata with qemu-img check"
                        " -r all\n");
                return -EFBIG;
            }
            fprintf(stderr, "Discarding too much extra metadata in snapshot table entry %"
                    PRIu32 " (%" PRIu32 " > %u)\n", i, sn->extra_data_size, SNAPSHOT_EXTRA_MAX);
            dropped++;
            sn->extra_data_size = 24;       /* what the rewritten entry keeps */
        }
        uint8_t text[2 * 65536 + 2];
        ret = bdrv_pread(c->bs->file, (int64_t)offset, id_size + name_size, text, 0);
        if (ret < 0) {
            res->check_errors++;
            error_report("ERROR failed to read the snapshot table: Failed to read snapshot"
                         " table: %s", strerror(-ret));
            return ret;
        }
        snprintf(sn->id, sizeof(sn->id), "%.*s", (int)MIN(id_size, sizeof(sn->id) - 1), text);
        snprintf(sn->name, sizeof(sn->name), "%.*s", (int)MIN(name_size, sizeof(sn->name) - 1),
                 text + id_size);
        offset += (uint64_t)id_size + name_size;
        if (offset - s->h.snapshots_offset > SNAPSHOT_TABLE_MAX) {
            if (!repair) {
                res->check_errors++;
                error_report("ERROR failed to read the snapshot table: Snapshot table is too"
                             " big");
                fprintf(stderr, "You can force-remove all %" PRIu32 " overhanging snapshots"
                        " with qemu-img check -r all\n", nb - i);
                return -EFBIG;
            }
            fprintf(stderr, "Discarding %" PRIu32 " overhanging snapshots (snapshot table is"
                    " too big)\n", nb - i);
            reduced += nb - i;
            offset = entry;
            break;
        }
        c->nb_snapshots++;
    }
    c->snapshots_size = offset - s->h.snapshots_offset;
    if (s->h.version >= 3) {
        for (uint32_t i = 0; i < c->nb_snapshots; i++) {
            if (c->snapshots[i].extra_data_size < 16) {
                res->corruptions++;
                fprintf(stderr, "%s snapshot table entry %" PRIu32 " is incomplete\n",
                        repair ? "Repairing" : "ERROR", i);
            }
        }
    }
    res->corruptions += reduced + dropped;
    if (reduced) {
        ret = write_nb_snapshots(c, c->nb_snapshots);
        if (ret < 0) {
            res->check_errors++;
            fprintf(stderr, "ERROR failed to update the snapshot count in the image header:"
                    " %s\n", strerror(-ret));
            return ret;
        }
        res->corruptions_fixed += reduced;
        res->corruptions -= reduced;
    }
    return 0;
}

/* QEMU's qcow2_check_fix_snapshot_table: after the refcounts, a damaged
 * table is written anew (the snapshot code's crash-safe table write). */
static int coroutine_fn fix_snapshots(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;

    if (!c->snap.corruptions || !(c->fix & BDRV_FIX_ERRORS)) {
        return 0;
    }
    int ret = qcow2_snapshot_table_rewrite(c->bs, c->nb_snapshots);
    if (ret == 0) {
        ret = meta_cache_flush(s->refcount_cache);
    }
    if (ret < 0) {
        c->snap.check_errors++;
        fprintf(stderr, "ERROR failed to update snapshot table: %s\n", strerror(-ret));
        return ret;
    }
    c->snap.corruptions_fixed += c->snap.corruptions;
    c->snap.corruptions = 0;
    return 0;
}

/* QEMU's qcow2_check_bitmaps_refcounts: the directory, each bitmap's table
 * and the clusters it names. */
static int coroutine_fn count_bitmaps(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint8_t *dir = NULL;
    uint64_t *table = NULL;
    int ret;

    if (!s->nb_bitmaps) {
        return 0;
    }
    ret = qcow2_check_inc_refcounts(c, s->bitmap_directory_offset, s->bitmap_directory_size);
    if (ret < 0) {
        return ret;
    }
    dir = malloc(s->bitmap_directory_size + 1);
    if (!dir) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    ret = bdrv_pread(c->bs->file, (int64_t)s->bitmap_directory_offset,
                     (int64_t)s->bitmap_directory_size, dir, 0);
    if (ret < 0) {
        c->res->corruptions++;
        goto out;
    }
    uint64_t pos = 0;
    for (uint32_t b = 0; b < s->nb_bitmaps; b++) {
        if (pos + 24 > s->bitmap_directory_size) {
            c->res->corruptions++;
            ret = -EINVAL;
            goto out;
        }
        uint64_t toff = qcow2_ld64(dir, pos);
        uint32_t tsize = qcow2_ld32(dir, pos + 8);
        uint32_t extra = qcow2_ld32(dir, pos + 20);
        uint16_t nsize = qcow2_ld16(dir, pos + 18);
        pos += ALIGN_UP(24 + (uint64_t)extra + nsize, 8);
        if (pos > s->bitmap_directory_size || qcow2_offset_into_cluster(s, toff) ||
            (uint64_t)tsize * 8 > (uint64_t)bdrv_getlength(c->bs->file->bs)) {
            c->res->corruptions++;
            ret = -EINVAL;
            goto out;
        }
        ret = qcow2_check_inc_refcounts(c, toff, (uint64_t)tsize * 8);
        if (ret < 0) {
            goto out;
        }
        free(table);
        table = malloc((size_t)tsize * 8 + 8);
        if (!table) {
            c->res->check_errors++;
            ret = -ENOMEM;
            goto out;
        }
        if (tsize && bdrv_pread(c->bs->file, (int64_t)toff, (int64_t)tsize * 8, table, 0) < 0) {
            c->res->corruptions++;
            break;
        }
        for (uint32_t i = 0; i < tsize; i++) {
            uint64_t e = be64toh(table[i]), off = e & BME_OFFSET_MASK;
            if ((e & BME_RESERVED_MASK) || qcow2_offset_into_cluster(s, off) ||
                ((e & BME_ALL_ONES) && off)) {
                c->res->corruptions++;
                continue;
            }
            if (off) {
                ret = qcow2_check_inc_refcounts(c, off, s->cluster_size);
                if (ret < 0) {
                    goto out;
                }
            }
        }
    }
    ret = 0;
out:
    free(table);
    free(dir);
    return ret;
}

/* Refcount blocks named by the refcount table: sound entries, inside the
 * file, each used once. */
static int coroutine_fn check_refblocks(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;

    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        uint64_t offset = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
        uint64_t cluster = offset >> s->cluster_bits;
        int ret;

        if (s->refcount_table[i] & QCOW2_REFT_RESERVED_MASK) {
            fprintf(stderr, "ERROR refcount table entry %" PRIu64 " has reserved bits set\n", i);
            c->res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if (qcow2_offset_into_cluster(s, offset)) {
            fprintf(stderr, "ERROR refcount block %" PRIu64 " is not cluster aligned; refcount"
                    " table entry corrupted\n", i);
            c->res->corruptions++;
            c->rebuild = true;
            continue;
        }
        if ((int64_t)cluster >= c->nb) {
            bool fix = c->fix & BDRV_FIX_ERRORS;
            c->res->corruptions++;
            fprintf(stderr, "%s refcount block %" PRIu64 " is outside image\n",
                    fix ? "Repairing" : "ERROR", i);
            if (fix) {
                ret = qcow2_check_grow_file_for_refblock(c, offset);
                if (ret == -ENOMEM) {
                    return ret;
                }
                if (ret == 0) {
                    c->res->corruptions--;
                    c->res->corruptions_fixed++;
                    ret = qcow2_check_inc_refcounts(c, offset, s->cluster_size);
                    if (ret < 0) {
                        return ret;
                    }
                    continue;       /* a fresh cluster: its count is exactly 1 */
                }
                c->rebuild = true;
                fprintf(stderr, "ERROR could not resize image: %s\n", strerror(-ret));
            }
            continue;
        }
        if (offset) {
            ret = qcow2_check_inc_refcounts(c, offset, s->cluster_size);
            if (ret < 0) {
                return ret;
            }
            uint64_t rc = qcow2_rc_get(c->rt, cluster, s->h.refcount_order);
            if (rc != 1) {
                fprintf(stderr, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64 "\n", i, rc);
                c->res->corruptions++;
                c->rebuild = true;
            }
        }
    }
    return 0;
}

/* QEMU's calculate_refcounts: count every reference into c->rt. */
int coroutine_fn qcow2_check_calculate(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;
    int ret;

    if (!c->rt) {
        int64_t n = c->nb;
        c->nb = 0;
        ret = qcow2_imrt_grow(c, MAX(n, 1));
        if (ret < 0) {
            c->res->check_errors++;
            return ret;
        }
    }
    ret = qcow2_check_inc_refcounts(c, 0, s->cluster_size);
    if (ret < 0) {
        return ret;
    }
    ret = check_l1(c, s->h.l1_table_offset, s->l1_size, true, true);
    if (ret < 0) {
        return ret;
    }
    if (qcow2_has_data_file(s) && c->nb_snapshots) {
        fprintf(stderr, "ERROR %" PRIu32 " snapshots in image with data file\n", c->nb_snapshots);
        c->res->corruptions++;
    }
    for (uint32_t i = 0; i < c->nb_snapshots; i++) {
        Qcow2CheckSnapshot *sn = &c->snapshots[i];
        if (qcow2_offset_into_cluster(s, sn->l1_table_offset)) {
            fprintf(stderr, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is not"
                    " cluster aligned; snapshot table entry corrupted\n", sn->id, sn->name,
                    sn->l1_table_offset);
            c->res->corruptions++;
            continue;
        }
        if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8) {
            fprintf(stderr, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is too large;"
                    " snapshot table entry corrupted\n", sn->id, sn->name, sn->l1_size);
            c->res->corruptions++;
            continue;
        }
        ret = check_l1(c, sn->l1_table_offset, sn->l1_size, false, false);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_check_inc_refcounts(c, s->h.snapshots_offset, c->snapshots_size);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_check_inc_refcounts(c, s->h.refcount_table_offset,
                                    (uint64_t)s->refcount_table_size * 8);
    if (ret < 0) {
        return ret;
    }
    if (s->crypto_header_length) {
        ret = qcow2_check_inc_refcounts(c, s->crypto_header_offset, s->crypto_header_length);
        if (ret < 0) {
            return ret;
        }
    }
    ret = count_bitmaps(c);
    if (ret < 0) {
        return ret;
    }
    return check_refblocks(c);
}

/*
 * QEMU's compare_refcounts: the refcounts on disk against c->rt, fixing
 * leaks and too-small counts as `fix` allows.  A cluster in use with
 * refcount 0 cannot be fixed in place (it may have no refcount block): it
 * sets c->rebuild.
 */
void coroutine_fn qcow2_check_compare(Qcow2Check *c, BdrvCheckMode fix, int64_t *highest)
{
    BDRVQcow2State *s = c->bs->opaque;

    *highest = 0;
    for (int64_t i = 0; i < c->nb; i++) {
        uint64_t on_disk, counted;
        int ret = qcow2_get_refcount(c->bs, (uint64_t)i, &on_disk);
        if (ret < 0) {
            fprintf(stderr, "Can't get refcount for cluster %" PRId64 ": %s\n", i, strerror(-ret));
            c->res->check_errors++;
            continue;
        }
        counted = qcow2_rc_get(c->rt, (uint64_t)i, s->h.refcount_order);
        if (on_disk || counted) {
            *highest = i;
        }
        if (on_disk == counted) {
            continue;
        }
        int *fixed = NULL;
        if (on_disk == 0) {
            c->rebuild = true;
        } else if (on_disk > counted && (fix & BDRV_FIX_LEAKS)) {
            fixed = &c->res->leaks_fixed;
        } else if (on_disk < counted && (fix & BDRV_FIX_ERRORS)) {
            fixed = &c->res->corruptions_fixed;
        }
        fprintf(stderr, "%s cluster %" PRId64 " refcount=%" PRIu64 " reference=%" PRIu64 "\n",
                fixed ? "Repairing" : on_disk < counted ? "ERROR" : "Leaked", i, on_disk, counted);
        if (fixed && qcow2_check_set_refcount(c, (uint64_t)i, counted) >= 0) {
            (*fixed)++;
            continue;
        }
        if (on_disk < counted) {
            c->res->corruptions++;
        } else {
            c->res->leaks++;
        }
    }
}

/* QEMU's check_oflag_copied: COPIED set exactly where the refcount is 1. */
static int coroutine_fn check_copied(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;
    uint32_t l2_size = s->cluster_size / s->l2_entry_size;
    bool repair;

    if (c->fix & BDRV_FIX_ERRORS) {
        repair = true;
    } else if (c->fix & BDRV_FIX_LEAKS) {
        /* the refcounts are known right only if nothing else is wrong */
        repair = !c->res->check_errors && !c->res->corruptions && !c->res->leaks;
    } else {
        repair = false;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l1e = s->l1_table[i], l2_offset = l1e & QCOW2_L1E_OFFSET_MASK, rc;
        int dirty = 0, ret;

        if (!l2_offset) {
            continue;
        }
        if (qcow2_get_refcount(c->bs, l2_offset >> s->cluster_bits, &rc) < 0) {
            continue;
        }
        if ((rc == 1) != !!(l1e & QCOW2_OFLAG_COPIED)) {
            c->res->corruptions++;
            fprintf(stderr, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32 " l1_entry=%" PRIx64
                    " refcount=%" PRIu64 "\n", repair ? "Repairing" : "ERROR", i, l1e, rc);
            if (repair) {
                ret = qcow2_check_write_l1_entry(c, i, rc == 1 ? l1e | QCOW2_OFLAG_COPIED
                                                               : l1e & ~QCOW2_OFLAG_COPIED);
                if (ret < 0) {
                    c->res->check_errors++;
                    return ret;
                }
                c->res->corruptions--;
                c->res->corruptions_fixed++;
            }
        }
        ret = qcow2_check_read_l2(c, l2_offset);
        if (ret < 0) {
            fprintf(stderr, "ERROR: Could not read L2 table: %s\n", strerror(-ret));
            c->res->check_errors++;
            return ret;
        }
        for (uint32_t j = 0; j < l2_size; j++) {
            uint64_t e = qcow2_check_l2e(c, j);
            Qcow2ClusterType type = cluster_type(s, e);
            if (type != Q2C_NORMAL && type != Q2C_ZERO_ALLOC) {
                continue;
            }
            if (qcow2_has_data_file(s)) {
                rc = 1;
            } else if (qcow2_get_refcount(c->bs, (e & QCOW2_L2E_OFFSET_MASK) >> s->cluster_bits,
                                          &rc) < 0) {
                continue;
            }
            if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
                c->res->corruptions++;
                fprintf(stderr, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
                        PRIu64 "\n", repair ? "Repairing" : "ERROR", e, rc);
                if (repair) {
                    qcow2_check_set_l2e(c, j, rc == 1 ? e | QCOW2_OFLAG_COPIED
                                                      : e & ~QCOW2_OFLAG_COPIED);
                    dirty++;
                }
            }
        }
        if (dirty) {
            ret = qcow2_check_write_l2(c, l2_offset);
            if (ret < 0) {
                c->res->check_errors++;
                return ret;
            }
            c->res->corruptions -= dirty;
            c->res->corruptions_fixed += dirty;
        }
    }
    return 0;
}

/* QEMU's qcow2_check_refcounts. */
static int coroutine_fn check_refcounts(Qcow2Check *c)
{
    BDRVQcow2State *s = c->bs->opaque;
    BdrvCheckResult *res = c->res;
    int64_t highest = 0;
    int ret;

    int64_t size = bdrv_getlength(c->bs->file->bs);
    if (size < 0) {
        res->check_errors++;
        return (int)size;
    }
    c->nb = DIV_ROUND_UP(size, (int64_t)s->cluster_size);
    if (c->nb > INT32_MAX) {
        res->check_errors++;
        return -EFBIG;
    }
    res->total_clusters = DIV_ROUND_UP((uint64_t)bdrv_get_total_bytes(c->bs), s->cluster_size);

    ret = qcow2_check_calculate(c);
    if (ret < 0) {
        return ret;
    }
    /* Without a rebuild, a repair runs the comparison again with fixes:
     * this first pass's counts are then dropped. */
    BdrvCheckResult pre_compare = *res;
    qcow2_check_compare(c, 0, &highest);

    if (c->rebuild && (c->fix & BDRV_FIX_ERRORS)) {
        ret = qcow2_check_rebuild(c, &highest);
        if (ret < 0) {
            return ret;
        }
    } else if (c->fix) {
        if (c->rebuild) {
            fprintf(stderr, "ERROR need to rebuild refcount structures\n");
            res->check_errors++;
            return -EIO;
        }
        if (res->leaks || res->corruptions) {
            *res = pre_compare;
            qcow2_check_compare(c, c->fix, &highest);
            ret = meta_cache_flush(s->refcount_cache);
            if (ret < 0) {
                res->check_errors++;
                return ret;
            }
        }
    }
    ret = check_copied(c);
    if (ret < 0) {
        return ret;
    }
    res->image_end_offset = (highest + 1) * (int64_t)s->cluster_size;
    return 0;
}

int coroutine_fn qcow2_check_locked(BlockDriverState *bs, BdrvCheckResult *res,
                                    BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Check c = { .bs = bs, .res = res, .fix = fix, .cluster_size = s->cluster_size };
    int ret;

    /* The walk reads tables from the disk: what the caches hold goes
     * there first. */
    ret = meta_cache_flush(s->l2_cache);
    if (ret == 0) {
        ret = meta_cache_flush(s->refcount_cache);
    }
    if (ret < 0) {
        res->check_errors++;
        return ret;
    }
    if (posix_memalign((void **)&c.l2, 4096, s->cluster_size)) {
        res->check_errors++;
        return -ENOMEM;
    }
    ret = read_snapshots(&c);
    if (ret == 0) {
        ret = check_refcounts(&c);
        if (ret == 0) {
            ret = fix_snapshots(&c);
        }
    }
    /* QEMU's qcow2_add_check_result without the sizes */
    res->corruptions += c.snap.corruptions;
    res->leaks += c.snap.leaks;
    res->check_errors += c.snap.check_errors;
    res->corruptions_fixed += c.snap.corruptions_fixed;
    res->leaks_fixed += c.snap.leaks_fixed;
    /* Repairs wrote tables past the caches. */
    meta_cache_drop_clean(s->l2_cache);
    meta_cache_drop_clean(s->refcount_cache);
    s->free_cluster_index = 0;
    free(c.l2);
    free(c.rt);
    free(c.snapshots);
    return ret;
}

int coroutine_fn qcow2_co_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (fix && !s->writable) {
        res->check_errors++;
        return -EACCES;
    }
    co_mutex_lock(&s->lock);
    ret = qcow2_check_locked(bs, res, fix);
    co_mutex_unlock(&s->lock);
    if (ret == 0 && fix && !res->check_errors && !res->corruptions) {
        /* QEMU: a repaired image is consistent again (dirty and corrupt
         * bits cleared). */
        ret = qcow2_mark_clean(bs);
        if (ret == 0) {
            ret = qcow2_mark_consistent(bs);
        }
    }
    return ret;
}
