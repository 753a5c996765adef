/*
 * qcow2-header-write.c - rewriting the header cluster (QEMU's
 * qcow2_update_header), the change_backing_file and make_empty ops built
 * on it.
 *
 * The rewrite builds the whole of cluster 0 in memory, in QEMU 7.2's
 * layout and order: the header fields (version 3: 112 bytes plus any
 * unknown trailing header fields, kept), then the extensions (backing
 * format, external data file name, crypto header pointer, QEMU's feature
 * name table for version 3 images with clusters over 4 KiB, bitmaps,
 * unknown extensions as they were read, the end marker), then the backing
 * file name.  It goes to the file in ONE write, then a flush: a header
 * that does not fit is refused with -ENOSPC before anything is written,
 * so an image has the old header or the new one (a torn write of one
 * cluster aside, as in QEMU).  Fields come from the driver state; the
 * recorded backing name and format, and unknown header fields, from the
 * cluster on disk, so the graph's view of the backing (which a child
 * replacement changes) never leaks into the image.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

#define QCOW2_HEADER_SIZE 112       /* QEMU's sizeof(QCowHeader), version 3 */

/* The backing name and format recorded in cluster 0 as it is on disk
 * (buf), or "" for none; both NUL-terminated into name/fmt. */
static void recorded_backing(BDRVQcow2State *s, const uint8_t *buf, char *name, size_t name_len,
                             char *fmt, size_t fmt_len)
{
    uint64_t boff = qcow2_ld64(buf, QH_BACKING_OFFSET);
    uint32_t bsize = qcow2_ld32(buf, QH_BACKING_SIZE);
    /* The version on disk: an amend changes s->h.version before rewriting. */
    uint32_t hl = qcow2_ld32(buf, QH_VERSION) == 2 ? QCOW2_V2_HEADER_LENGTH
                                                   : qcow2_ld32(buf, QH_HEADER_LENGTH);
    uint64_t end = boff ? boff : s->cluster_size;

    name[0] = fmt[0] = 0;
    if (boff && boff < s->cluster_size && bsize <= s->cluster_size - boff &&
        bsize < name_len) {
        memcpy(name, buf + boff, bsize);
        name[bsize] = 0;
    }
    for (uint64_t off = hl; off + 8 <= end && off + 8 <= s->cluster_size;) {
        uint32_t type = qcow2_ld32(buf, off), len = qcow2_ld32(buf, off + 4);
        if (type == QCOW2_EXT_END || len > s->cluster_size - off - 8) {
            break;
        }
        if (type == QCOW2_EXT_BACKING_FORMAT && len < fmt_len) {
            memcpy(fmt, buf + off + 8, len);
            fmt[len] = 0;
        }
        off += 8 + ALIGN_UP((uint64_t)len, 8);
    }
}

/* QEMU's header_ext_add: 8 bytes of type and length, the data padded to 8. */
static int ext_add(uint8_t *buf, size_t *pos, size_t cap, uint32_t type, const void *data,
                   size_t len)
{
    size_t need = 8 + ALIGN_UP(len, (size_t)8);
    uint32_t be;

    if (cap - *pos < need) {
        return -ENOSPC;
    }
    be = htobe32(type);
    memcpy(buf + *pos, &be, 4);
    be = htobe32((uint32_t)len);
    memcpy(buf + *pos + 4, &be, 4);
    if (len) {
        memcpy(buf + *pos + 8, data, len);
    }
    *pos += need;
    return 0;
}


/* QEMU 7.2's feature name table, as every header it writes carries it
 * (create too); out holds QCOW2_FEATURE_TABLE_BYTES. */
size_t qcow2_feature_table(uint8_t *out)
{
    static const struct { uint8_t type, bit; const char *name; } f[] = {
        { QCOW2_FEAT_INCOMPAT, 0, "dirty bit" },
        { QCOW2_FEAT_INCOMPAT, 1, "corrupt bit" },
        { QCOW2_FEAT_INCOMPAT, 2, "external data file" },
        { QCOW2_FEAT_INCOMPAT, 3, "compression type" },
        { QCOW2_FEAT_INCOMPAT, 4, "extended L2 entries" },
        { QCOW2_FEAT_COMPAT, 0, "lazy refcounts" },
        { QCOW2_FEAT_AUTOCLEAR, 0, "bitmaps" },
        { QCOW2_FEAT_AUTOCLEAR, 1, "raw external data" },
    };
    memset(out, 0, sizeof(f) / sizeof(f[0]) * 48);
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        out[i * 48] = f[i].type;
        out[i * 48 + 1] = f[i].bit;
        memcpy(out + i * 48 + 2, f[i].name, strlen(f[i].name));
    }
    return sizeof(f) / sizeof(f[0]) * 48;
}

/*
 * Build cluster 0 into buf (cluster_size bytes) from the state, old (the
 * cluster as it is on disk) and the backing to record (nb_file NULL: none).
 * -ENOSPC if it does not fit.
 */
static int build_header(BlockDriverState *bs, const uint8_t *old, uint8_t *buf,
                        const char *nb_file, const char *nb_fmt)
{
    BDRVQcow2State *s = bs->opaque;
    size_t cap = s->cluster_size, pos;
    uint32_t old_hl = qcow2_ld32(old, QH_VERSION) == 2 ? QCOW2_V2_HEADER_LENGTH
                                                       : qcow2_ld32(old, QH_HEADER_LENGTH);
    size_t unknown_fields = s->h.version >= 3 && old_hl > QCOW2_HEADER_SIZE &&
                            old_hl <= s->cluster_size ? old_hl - QCOW2_HEADER_SIZE : 0;
    int ret;

    memset(buf, 0, cap);
    qcow2_st32(buf, QH_MAGIC, QCOW2_MAGIC);
    qcow2_st32(buf, QH_VERSION, s->h.version);
    qcow2_st32(buf, QH_CLUSTER_BITS, s->cluster_bits);
    qcow2_st64(buf, QH_SIZE, s->h.size & ~(uint64_t)(BDRV_SECTOR_SIZE - 1));
    qcow2_st32(buf, QH_CRYPT_METHOD, s->h.crypt_method);
    qcow2_st32(buf, QH_L1_SIZE, s->l1_size);
    qcow2_st64(buf, QH_L1_OFFSET, s->h.l1_table_offset);
    qcow2_st64(buf, QH_REFTABLE_OFFSET, s->h.refcount_table_offset);
    qcow2_st32(buf, QH_REFTABLE_CLUSTERS, s->refcount_table_size >> (s->cluster_bits - 3));
    qcow2_st32(buf, QH_NB_SNAPSHOTS, s->h.nb_snapshots);
    qcow2_st64(buf, QH_SNAPSHOTS_OFFSET, s->h.snapshots_offset);
    if (s->h.version >= 3) {
        if (cap < QCOW2_HEADER_SIZE + unknown_fields) {
            return -ENOSPC;
        }
        qcow2_st64(buf, QH_INCOMPAT, s->h.incompat);
        qcow2_st64(buf, QH_COMPAT, s->h.compat);
        qcow2_st64(buf, QH_AUTOCLEAR, s->h.autoclear);
        qcow2_st32(buf, QH_REFCOUNT_ORDER, s->h.refcount_order);
        qcow2_st32(buf, QH_HEADER_LENGTH, (uint32_t)(QCOW2_HEADER_SIZE + unknown_fields));
        buf[QH_COMPRESSION_TYPE] = s->h.compression_type;
        memcpy(buf + QCOW2_HEADER_SIZE, old + QCOW2_HEADER_SIZE, unknown_fields);
        pos = QCOW2_HEADER_SIZE + unknown_fields;
    } else {
        pos = QCOW2_V2_HEADER_LENGTH;
    }

    if (nb_fmt && nb_fmt[0]) {
        ret = ext_add(buf, &pos, cap, QCOW2_EXT_BACKING_FORMAT, nb_fmt, strlen(nb_fmt));
        if (ret < 0) {
            return ret;
        }
    }
    if (qcow2_has_data_file(s) && s->image_data_file) {
        ret = ext_add(buf, &pos, cap, QCOW2_EXT_DATA_FILE, s->image_data_file,
                      strlen(s->image_data_file));
        if (ret < 0) {
            return ret;
        }
    }
    if (s->crypto_header_offset) {
        uint8_t c[16];
        qcow2_st64(c, 0, s->crypto_header_offset);
        qcow2_st64(c, 8, s->crypto_header_length);
        ret = ext_add(buf, &pos, cap, QCOW2_EXT_CRYPTO, c, sizeof(c));
        if (ret < 0) {
            return ret;
        }
    }
    if (s->h.version >= 3 && s->cluster_size > 4096) {
        /* QEMU leaves it out of small clusters: it would crowd out the
         * backing file name. */
        uint8_t t[QCOW2_FEATURE_TABLE_BYTES];
        ret = ext_add(buf, &pos, cap, QCOW2_EXT_FEATURE_TABLE, t, qcow2_feature_table(t));
        if (ret < 0) {
            return ret;
        }
    }
    if (s->nb_bitmaps) {
        uint8_t b[24] = { 0 };
        qcow2_st32(b, 0, s->nb_bitmaps);
        qcow2_st64(b, 8, s->bitmap_directory_size);
        qcow2_st64(b, 16, s->bitmap_directory_offset);
        ret = ext_add(buf, &pos, cap, QCOW2_EXT_BITMAPS, b, sizeof(b));
        if (ret < 0) {
            return ret;
        }
    }
    for (Qcow2UnknownExt *e = s->unknown_exts; e; e = e->next) {
        ret = ext_add(buf, &pos, cap, e->type, e->data, e->len);
        if (ret < 0) {
            return ret;
        }
    }
    ret = ext_add(buf, &pos, cap, QCOW2_EXT_END, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    if (nb_file) {
        size_t len = strlen(nb_file);
        if (cap - pos < len) {
            return -ENOSPC;
        }
        memcpy(buf + pos, nb_file, len);
        qcow2_st64(buf, QH_BACKING_OFFSET, pos);
        qcow2_st32(buf, QH_BACKING_SIZE, (uint32_t)len);
    }
    return 0;
}

/*
 * Rewrite cluster 0, s->lock held.  change: record nb_file/nb_fmt as the
 * backing (NULL: none); otherwise keep what the image records.
 */
int coroutine_fn qcow2_update_header_locked(BlockDriverState *bs, bool change,
                                            const char *nb_file, const char *nb_fmt)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t *old = NULL, *buf = NULL;
    char *name = NULL, fmt[sizeof(bs->backing_format)];
    int ret = -ENOMEM;

    if (posix_memalign((void **)&old, 4096, s->cluster_size) ||
        posix_memalign((void **)&buf, 4096, s->cluster_size) ||
        !(name = malloc(QCOW2_MAX_BACKING_NAME + 1))) {
        goto out;
    }
    ret = bdrv_pread(bs->file, 0, s->cluster_size, old, 0);
    if (ret < 0) {
        goto out;
    }
    if (!change) {
        recorded_backing(s, old, name, QCOW2_MAX_BACKING_NAME + 1, fmt, sizeof(fmt));
        nb_file = name[0] ? name : NULL;
        nb_fmt = fmt;
    }
    ret = build_header(bs, old, buf, nb_file, nb_fmt);
    if (ret < 0) {
        goto out;
    }
    ret = bdrv_pwrite(bs->file, 0, s->cluster_size, buf, 0);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret == 0) {
        s->h.backing_file_offset = qcow2_ld64(buf, QH_BACKING_OFFSET);
        s->h.backing_file_size = qcow2_ld32(buf, QH_BACKING_SIZE);
        if (s->h.version >= 3) {
            s->h.header_length = qcow2_ld32(buf, QH_HEADER_LENGTH);
        }
    }
out:
    free(old);
    free(buf);
    free(name);
    return ret;
}

int coroutine_fn qcow2_update_header(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    co_mutex_lock(&s->lock);
    int ret = qcow2_update_header_locked(bs, false, NULL, NULL);
    co_mutex_unlock(&s->lock);
    return ret;
}

/* QEMU's qcow2_change_backing_file.  What the image holds is made durable
 * first (the data a safe rebase copied, its L2 entries), so the new name
 * never reaches the disk ahead of what makes it right. */
int coroutine_fn qcow2_co_change_backing_file(BlockDriverState *bs, const char *file,
                                              const char *fmt)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (file && qcow2_data_file_is_raw(s)) {
        return -EINVAL;      /* the raw data file alone would no longer be the disk */
    }
    if (file && strlen(file) > QCOW2_MAX_BACKING_NAME) {
        return -EINVAL;
    }
    if (fmt && strlen(fmt) >= sizeof(bs->backing_format)) {
        return -EINVAL;
    }
    if (!s->writable) {
        return -EACCES;
    }
    ret = qcow2_co_flush_to_os(bs);
    if (ret == 0 && s->data_file != bs->file) {
        ret = bdrv_co_flush(s->data_file->bs);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        return ret;
    }
    co_mutex_lock(&s->lock);
    ret = qcow2_update_header_locked(bs, true, file, fmt);
    co_mutex_unlock(&s->lock);
    return ret;
}

/* ---- make_empty (QEMU's qcow2_make_empty) ---- */

/*
 * QEMU's make_completely_empty: the image file is cut back to a header,
 * a refcount table (cluster 1), one refcount block (cluster 2) and a
 * zeroed L1 table (from cluster 3).  The dirty bit is set first: between
 * that and the final header rewrite the refcounts are knowingly wrong (and
 * the data is meant to be gone).  s->lock held; every cache is flushed and
 * then emptied, since what they held is overwritten.
 */
static int coroutine_fn make_completely_empty(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t l1_clusters = DIV_ROUND_UP((uint64_t)s->l1_size * 8, cs);
    uint64_t *reftable = NULL;
    int ret;

    ret = meta_cache_flush(s->l2_cache);
    if (ret == 0) {
        ret = meta_cache_flush(s->refcount_cache);
    }
    if (ret < 0) {
        return ret;
    }
    meta_cache_drop_clean(s->l2_cache);
    meta_cache_drop_clean(s->refcount_cache);
    if (meta_cache_nr_cached(s->l2_cache) || meta_cache_nr_cached(s->refcount_cache)) {
        return -EBUSY;       /* a table still referenced: nothing is touched yet */
    }
    if (posix_memalign((void **)&reftable, 4096, cs)) {
        return -ENOMEM;
    }
    memset(reftable, 0, cs);

    ret = qcow2_write_header_field(bs, QH_INCOMPAT, s->h.incompat | QCOW2_INCOMPAT_DIRTY);
    if (ret < 0) {
        goto out;
    }
    s->h.incompat |= QCOW2_INCOMPAT_DIRTY;
    ret = bdrv_pwrite_zeroes(bs->file, (int64_t)s->h.l1_table_offset,
                             (int64_t)(l1_clusters * cs), 0);
    if (ret < 0) {
        goto out;
    }
    memset(s->l1_table, 0, (size_t)s->l1_size * 8);
    ret = bdrv_pwrite_zeroes(bs->file, (int64_t)cs, (int64_t)((2 + l1_clusters) * cs), 0);
    if (ret < 0) {
        goto out;
    }
    uint8_t f[20];
    qcow2_st64(f, 0, 3 * cs);          /* l1_table_offset */
    qcow2_st64(f, 8, cs);              /* refcount_table_offset */
    qcow2_st32(f, 16, 1);              /* refcount_table_clusters */
    ret = bdrv_pwrite(bs->file, QH_L1_OFFSET, sizeof(f), f, 0);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        goto out;
    }
    s->h.l1_table_offset = 3 * cs;
    s->h.refcount_table_offset = cs;
    s->h.refcount_table_clusters = 1;
    free(s->refcount_table);
    s->refcount_table = reftable;
    s->refcount_table_size = (uint32_t)(cs / 8);
    reftable = NULL;

    uint64_t rt0 = htobe64(2 * cs);
    ret = bdrv_pwrite(bs->file, (int64_t)cs, 8, &rt0, 0);
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        goto out;
    }
    s->refcount_table[0] = 2 * cs;
    s->free_cluster_index = 0;
    s->free_byte_offset = 0;
    /* The new tables are what the clusters are allocated for: not an overlap. */
    unsigned ol = s->overlap_check;
    s->overlap_check = 0;
    int64_t first = qcow2_alloc_clusters(bs, 3 * cs + (uint64_t)s->l1_size * 8);
    s->overlap_check = ol;
    if (first != 0) {
        ret = first < 0 ? (int)first : -EIO;
        goto out;
    }
    ret = meta_cache_flush(s->refcount_cache);
    if (ret < 0) {
        goto out;
    }
    s->h.incompat &= ~QCOW2_INCOMPAT_DIRTY;
    ret = qcow2_update_header_locked(bs, false, NULL, NULL);
    if (ret < 0) {
        goto out;
    }
    ret = bdrv_truncate(bs->file, (int64_t)((3 + l1_clusters) * cs), false, PREALLOC_MODE_OFF, 0,
                        NULL);
    __atomic_store_n(&s->metadata_prealloc, -1, __ATOMIC_RELEASE);
out:
    free(reftable);
    return ret;
}

int coroutine_fn qcow2_co_make_empty(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l1_clusters = DIV_ROUND_UP((uint64_t)s->l1_size * 8, s->cluster_size);
    int ret;

    if (!s->writable) {
        return -EACCES;
    }
    /* QEMU's condition: nothing else keeps clusters (snapshots, bitmaps,
     * a LUKS header), no data file, and the new layout fits one refcount
     * block. */
    if (s->h.version >= 3 && !s->h.nb_snapshots && !s->nb_bitmaps &&
        3 + l1_clusters <= (1ULL << s->refcount_block_bits) &&
        s->h.crypt_method != QCOW2_CRYPT_LUKS && !qcow2_has_data_file(s)) {
        co_mutex_lock(&s->lock);
        ret = make_completely_empty(bs);
        co_mutex_unlock(&s->lock);
        return ret;
    }
    /* Otherwise every cluster goes, so that the image reads as its backing
     * file (QEMU's full discard). */
    uint64_t step = ALIGN_DOWN((uint64_t)INT32_MAX, (uint64_t)s->cluster_size);
    uint64_t end = s->h.size & ~(uint64_t)(BDRV_SECTOR_SIZE - 1);
    for (uint64_t off = 0; off < end; off += step) {
        ret = qcow2_discard_full(bs, off, MIN(step, end - off));
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}
