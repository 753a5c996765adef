/*
 * qcow2-alloc.c - host cluster allocation on a live image: refcount
 * updates through the refcount-block cache, new refcount blocks, new L2
 * tables, the overlap check.  Everything here runs with s->lock held (the
 * metadata lock of both caches).  Compressed clusters get bytes, not
 * clusters (qcow2_alloc_bytes): packed one after another, each adding a
 * reference to every host cluster it touches.
 *
 * The rules are QEMU's (qcow2-refcount.c), so an image we grow looks like
 * one QEMU grew: first fit from free_cluster_index, a new refcount block
 * placed at the first free cluster (describing itself when it can), and a
 * restart of the search after one was made, because it may have taken the
 * clusters the caller had found.  Ordering: a new refcount block reaches
 * the disk (cache flushed) before the refcount table points at it; a new
 * L2 table before the L1 entry that points at it; L2 entries that point at
 * new clusters wait for the refcount blocks that count them (cache
 * dependency, set by the caller); refcount blocks that drop a reference
 * wait for the L2 tables that dropped it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ULL

int coroutine_fn qcow2_write_header_field(BlockDriverState *bs, size_t off, uint64_t v)
{
    uint64_t be = htobe64(v);
    int ret = bdrv_pwrite(bs->file, (int64_t)off, 8, &be, 0);
    return ret < 0 ? ret : bdrv_co_flush(bs->file->bs);
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

bool coroutine_fn qcow2_overlaps_metadata(BlockDriverState *bs, uint64_t offset, uint64_t len,
                                          uint64_t self)
{
    BDRVQcow2State *s = bs->opaque;
    unsigned ol = s->overlap_check;
    const char *what = NULL;

    /* The snapshots' L2 tables (inactive-l2) are not compared. */
    if ((ol & QCOW2_OL_MAIN_HEADER) && ranges_overlap(offset, len, 0, s->cluster_size)) {
        what = "qcow2_header";
    } else if ((what = qcow2_snapshot_overlap(s, ol, offset, len))) {
        /* the snapshot table or a snapshot's L1 table */
    } else if ((ol & QCOW2_OL_ACTIVE_L1) &&
               ranges_overlap(offset, len, s->h.l1_table_offset, (uint64_t)s->l1_size * 8)) {
        what = "active L1 table";
    } else if ((ol & QCOW2_OL_REFCOUNT_TABLE) &&
               ranges_overlap(offset, len, s->h.refcount_table_offset,
                              (uint64_t)s->refcount_table_size * 8)) {
        what = "refcount table";
    } else if ((ol & QCOW2_OL_BITMAP_DIRECTORY) && s->bitmap_directory_size &&
               ranges_overlap(offset, len, s->bitmap_directory_offset,
                              s->bitmap_directory_size)) {
        what = "bitmap directory";
    } else {
        /* self is the table being written: not an overlap with itself, but one
         * cluster that is both a refcount block and an L2 table is. */
        bool self_rb = false, self_l2 = false;
        for (uint32_t i = 0; (ol & QCOW2_OL_REFCOUNT_BLOCK) && i < s->refcount_table_size && !what;
             i++) {
            uint64_t rb = s->refcount_table[i] & QCOW2_REFT_OFFSET_MASK;
            self_rb |= self && rb == self;
            if (rb && rb != self && ranges_overlap(offset, len, rb, s->cluster_size)) {
                what = "refcount block";
            }
        }
        for (uint32_t i = 0; (ol & QCOW2_OL_ACTIVE_L2) && i < s->l1_size && !what; i++) {
            uint64_t l2 = s->l1_table[i] & QCOW2_L1E_OFFSET_MASK;
            self_l2 |= self && l2 == self;
            if (self_rb && self_l2) {
                what = "refcount block";
            }
            if (l2 && l2 != self && ranges_overlap(offset, len, l2, s->cluster_size)) {
                what = "active L2 table";
            }
        }
    }
    if (!what) {
        return false;
    }
    /* Writing there would destroy metadata: the refcounts are wrong.  Mark
     * the image corrupt, as QEMU does, so nobody writes it until checked. */
    char msg[160];
    snprintf(msg, sizeof(msg), "Preventing invalid write on metadata (overlaps with %s) at 0x%"
             PRIx64 ", %" PRIu64 " bytes", what, offset, len);
    qcow2_signal_corruption(bs, msg);
    return true;
}

void coroutine_fn qcow2_signal_corruption(BlockDriverState *bs, const char *msg)
{
    BDRVQcow2State *s = bs->opaque;

    if (__atomic_exchange_n(&s->corrupt_reported, true, __ATOMIC_ACQ_REL)) {
        return;
    }
    if (!s->writable) {
        error_report("qcow2: %s: Image is corrupt: %s; further non-fatal corruption events will"
                     " be suppressed", qcow2_image_name(bs), msg);
        return;
    }
    error_report("qcow2: %s: Marking image as corrupt: %s; further corruption events will be"
                 " suppressed", qcow2_image_name(bs), msg);
    /* A header write racing with this one (the dirty bit, under s->lock)
     * writes the whole field from s->h.incompat, which has the bit by then. */
    uint64_t incompat = __atomic_or_fetch(&s->h.incompat, QCOW2_INCOMPAT_CORRUPT,
                                          __ATOMIC_ACQ_REL);
    qcow2_write_header_field(bs, QH_INCOMPAT, incompat);
}

/* The caches' write-back check (MetaCacheConfig.check_write): a table entry that a
 * corrupted pointer put over other metadata never reaches the disk, and marks the image
 * corrupt.  The table's own cluster is not an overlap.  Runs in the write-back's
 * coroutine under s->lock: an external data file with data that new L2 entries name
 * is flushed first (qcow2_l2_after_data). */
int qcow2_cache_check_write(void *opaque, int64_t offset, size_t len)
{
    BlockDriverState *bs = opaque;
    BDRVQcow2State *s = bs->opaque;
    uint64_t self = (uint64_t)offset & ~((uint64_t)s->cluster_size - 1);
    if (qcow2_overlaps_metadata(bs, (uint64_t)offset, len, self)) {
        return -EIO;
    }
    if (s->data_file_unflushed) {
        int ret = bdrv_co_flush(s->data_file->bs);
        if (ret < 0) {
            return ret;
        }
        s->data_file_unflushed = false;
    }
    return 0;
}

/* The slice of refcount block rb_offset holding refcount `index`. */
static int coroutine_fn rc_slice(BlockDriverState *bs, uint64_t rb_offset, uint64_t index,
                                 bool empty, uint8_t **slice, uint64_t *i)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t slice_bytes = meta_cache_entry_size(s->refcount_cache);
    uint64_t start = ((index << s->h.refcount_order) / 8) & ~(slice_bytes - 1);
    int ret = empty ? meta_cache_get_empty(s->refcount_cache, (int64_t)(rb_offset + start),
                                           (void **)slice)
                    : meta_cache_get(s->refcount_cache, (int64_t)(rb_offset + start),
                                     (void **)slice);
    *i = index - ((start * 8) >> s->h.refcount_order);
    return ret;
}

static int64_t coroutine_fn alloc_clusters_noref(BlockDriverState *bs, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t n = DIV_ROUND_UP(size, (uint64_t)s->cluster_size);
retry:
    for (uint64_t i = 0; i < n; i++) {
        uint64_t refcount;
        int ret = qcow2_get_refcount(bs, s->free_cluster_index++, &refcount);
        if (ret < 0) {
            return ret;
        }
        if (refcount) {
            goto retry;
        }
    }
    if (s->free_cluster_index > (UINT64_C(1) << (56 - s->cluster_bits))) {
        return -EFBIG;
    }
    return (int64_t)((s->free_cluster_index - n) << s->cluster_bits);
}

/* QEMU's qcow2_refcount_metadata_size: refcount blocks that cover
 * `clusters` clusters plus themselves and their table (*table: the table's
 * clusters, if asked). */
uint64_t qcow2_refblocks_needed(uint64_t clusters, uint64_t cs, uint32_t order, bool generous,
                                uint64_t *table_out)
{
    uint64_t per_table = cs / 8, per_block = cs * 8 >> order;
    uint64_t table = 0, blocks = 0, last, n = 0;
    do {
        last = n;
        blocks = DIV_ROUND_UP(clusters + table + blocks, per_block);
        table = DIV_ROUND_UP(blocks, per_table);
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += DIV_ROUND_UP(table, 2);
            n = 0;
            generous = false;
        }
    } while (n != last);
    if (table_out) {
        *table_out = table;
    }
    return blocks;
}

/*
 * QEMU's qcow2_refcount_area: a new refcount table at start_offset, after
 * the new refcount blocks it needs, all of them counted by themselves;
 * then the header points at it and the old table is freed.  Returns the
 * end of the new structures.
 */
static int64_t coroutine_fn refcount_area(BlockDriverState *bs, uint64_t start_offset,
                                          uint64_t additional_clusters, bool exact_size,
                                          uint64_t new_index, uint64_t new_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size, rb_size = 1ULL << s->refcount_block_bits;
    uint64_t total = qcow2_refblocks_needed(start_offset / cs + additional_clusters, cs,
                                      s->h.refcount_order, !exact_size, NULL);
    uint64_t area_index = (start_offset / cs) / rb_size;
    uint64_t table_size = exact_size ? total : total + DIV_ROUND_UP(total, 2);
    table_size = ALIGN_UP(table_size, cs / 8);
    uint64_t table_clusters = table_size * 8 / cs;
    int ret;

    if (total > QCOW2_MAX_REFTABLE_BYTES || table_size * 8 > QCOW2_MAX_REFTABLE_BYTES) {
        return -EFBIG;
    }
    uint64_t *t = calloc(table_size, 8);
    if (!t) {
        return -ENOMEM;
    }
    uint64_t max_index = 0;
    for (uint64_t i = 0; i < s->refcount_table_size; i++) {
        if (s->refcount_table[i]) {
            max_index = i;
        }
    }
    memcpy(t, s->refcount_table, MIN(table_size, max_index + 1) * 8);
    if (new_offset) {
        t[new_index] = new_offset;
    }
    uint64_t additional = 0;
    for (uint64_t i = area_index; i < total; i++) {
        additional += !t[i];
    }
    uint64_t table_offset = start_offset + additional * cs;
    uint64_t end_offset = table_offset + table_clusters * cs;
    uint64_t block_offset = start_offset;
    uint64_t slice_bytes = meta_cache_entry_size(s->refcount_cache);
    for (uint64_t i = area_index; i < total; i++) {
        if (!t[i]) {
            for (uint64_t o = 0; o < cs; o += slice_bytes) {
                uint8_t *slice;
                ret = meta_cache_get_empty(s->refcount_cache, (int64_t)(block_offset + o),
                                           (void **)&slice);
                if (ret < 0) {
                    goto fail;
                }
                memset(slice, 0, slice_bytes);
                meta_cache_mark_dirty(s->refcount_cache, slice);
                meta_cache_put(s->refcount_cache, slice);
            }
            t[i] = block_offset;
            block_offset += cs;
        }
        uint64_t first = i * rb_size * cs;
        if (first < end_offset) {
            uint64_t j = first < start_offset ? (start_offset - first) / cs : 0;
            uint64_t end = MIN((end_offset - first) / cs, rb_size);
            for (; j < end; j++) {
                uint8_t *slice;
                uint64_t k;
                ret = rc_slice(bs, t[i] & QCOW2_REFT_OFFSET_MASK, j, false, &slice, &k);
                if (ret < 0) {
                    goto fail;
                }
                qcow2_rc_set(slice, k, s->h.refcount_order, 1);
                meta_cache_mark_dirty(s->refcount_cache, slice);
                meta_cache_put(s->refcount_cache, slice);
            }
        }
    }
    ret = meta_cache_flush(s->refcount_cache);
    if (ret < 0) {
        goto fail;
    }
    for (uint64_t i = 0; i < table_size; i++) {
        t[i] = htobe64(t[i]);
    }
    ret = bdrv_pwrite(bs->file, (int64_t)table_offset, (int64_t)(table_size * 8), t, 0);
    for (uint64_t i = 0; i < table_size; i++) {
        t[i] = be64toh(t[i]);
    }
    if (ret < 0 || (ret = bdrv_co_flush(bs->file->bs)) < 0) {
        goto fail;
    }
    uint8_t hdr[12];
    uint64_t be64 = htobe64(table_offset);
    uint32_t be32 = htobe32((uint32_t)table_clusters);
    memcpy(hdr, &be64, 8);
    memcpy(hdr + 8, &be32, 4);
    ret = bdrv_pwrite(bs->file, QH_REFTABLE_OFFSET, sizeof(hdr), hdr, 0);
    if (ret < 0 || (ret = bdrv_co_flush(bs->file->bs)) < 0) {
        goto fail;
    }
    /* Lookups of refcounts run under s->lock, so the table can change here. */
    uint64_t old_offset = s->h.refcount_table_offset, old_size = s->refcount_table_size;
    free(s->refcount_table);
    s->refcount_table = t;
    s->refcount_table_size = (uint32_t)table_size;
    s->h.refcount_table_offset = table_offset;
    s->h.refcount_table_clusters = (uint32_t)table_clusters;
    ret = qcow2_update_refcount(bs, old_offset, old_size * 8, true);
    if (ret == 0 && s->discard_other) {
        /* pass-discard-other: the old table's clusters go back to the file
         * (their refcount is 0 now: the table was this image's only user) */
        bdrv_co_pdiscard(bs->file, (int64_t)old_offset,
                         (int64_t)ALIGN_UP(old_size * 8, (uint64_t)s->cluster_size));
    }
    return ret < 0 ? ret : (int64_t)end_offset;

fail:
    free(t);
    return ret;
}

/* 0 when cluster ci has a refcount block; -EAGAIN after making one. */
static int coroutine_fn alloc_refcount_block(BlockDriverState *bs, uint64_t ci)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t ti = ci >> s->refcount_block_bits;
    uint64_t slice_bytes = meta_cache_entry_size(s->refcount_cache);
    int ret;

    if (ti < s->refcount_table_size && (s->refcount_table[ti] & QCOW2_REFT_OFFSET_MASK)) {
        return 0;
    }
    int64_t new_block = alloc_clusters_noref(bs, s->cluster_size);
    if (new_block <= 0) {
        return new_block < 0 ? (int)new_block : -EIO;
    }
    if (qcow2_overlaps_metadata(bs, (uint64_t)new_block, s->cluster_size, 0)) {
        return -EIO;
    }
    bool self = ((uint64_t)new_block >> (s->cluster_bits + s->refcount_block_bits)) == ti;
    if (!self) {
        ret = qcow2_update_refcount(bs, (uint64_t)new_block, s->cluster_size, false);
        if (ret < 0) {
            return ret;
        }
    }
    for (uint64_t off = 0; off < s->cluster_size; off += slice_bytes) {
        uint8_t *slice;
        ret = meta_cache_get_empty(s->refcount_cache, new_block + (int64_t)off, (void **)&slice);
        if (ret < 0) {
            return ret;
        }
        memset(slice, 0, slice_bytes);
        meta_cache_mark_dirty(s->refcount_cache, slice);
        meta_cache_put(s->refcount_cache, slice);
    }
    if (self) {
        uint8_t *slice;
        uint64_t i;
        ret = rc_slice(bs, (uint64_t)new_block,
                       ((uint64_t)new_block >> s->cluster_bits) & ((1ULL << s->refcount_block_bits) - 1),
                       false, &slice, &i);
        if (ret < 0) {
            return ret;
        }
        qcow2_rc_set(slice, i, s->h.refcount_order, 1);
        meta_cache_mark_dirty(s->refcount_cache, slice);
        meta_cache_put(s->refcount_cache, slice);
    }
    ret = meta_cache_flush(s->refcount_cache);
    if (ret < 0) {
        return ret;
    }
    if (ti >= s->refcount_table_size) {
        /* The table is full: a new one, and refcount blocks for it and for
         * themselves, go after everything in use (QEMU's layout). */
        uint64_t rb_size = 1ULL << s->refcount_block_bits;
        uint64_t blocks_used = DIV_ROUND_UP(MAX(ci + 1, ((uint64_t)new_block >> s->cluster_bits) + 1),
                                            rb_size);
        int64_t end = refcount_area(bs, blocks_used * rb_size * s->cluster_size, 0, false, ti,
                                    (uint64_t)new_block);
        return end < 0 ? (int)end : -EAGAIN;
    }
    uint64_t be = htobe64((uint64_t)new_block);
    ret = bdrv_pwrite(bs->file, (int64_t)(s->h.refcount_table_offset + ti * 8), 8, &be, 0);
    if (ret < 0) {
        return ret;
    }
    ret = bdrv_co_flush(bs->file->bs);
    if (ret < 0) {
        return ret;
    }
    __atomic_store_n(&s->refcount_table[ti], (uint64_t)new_block, __ATOMIC_RELEASE);
    return -EAGAIN;
}

int coroutine_fn qcow2_update_refcount(BlockDriverState *bs, uint64_t offset, uint64_t length,
                                       bool decrease)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t start = qcow2_start_of_cluster(s, offset);
    uint64_t last = qcow2_start_of_cluster(s, offset + length - 1);
    uint64_t max = s->h.refcount_order == 6 ? UINT64_MAX
                                            : (UINT64_C(1) << (1U << s->h.refcount_order)) - 1;
    uint64_t cluster_offset, checked_rb = 0;
    int ret = 0;

    if (!length) {
        return 0;
    }
    if (decrease) {
        /* the reference is dropped on disk before the count */
        ret = meta_cache_set_dependency(s->refcount_cache, s->l2_cache);
        if (ret < 0) {
            return ret;
        }
    }
    for (cluster_offset = start; cluster_offset <= last; cluster_offset += s->cluster_size) {
        uint64_t ci = cluster_offset >> s->cluster_bits;
        ret = alloc_refcount_block(bs, ci);
        if (ret == -EAGAIN && s->free_cluster_index > (start >> s->cluster_bits)) {
            s->free_cluster_index = start >> s->cluster_bits;
        }
        if (ret < 0) {
            break;
        }
        uint64_t rb = s->refcount_table[ci >> s->refcount_block_bits] & QCOW2_REFT_OFFSET_MASK;
        if (rb != checked_rb) {
            /* a refcount block the table points into other metadata */
            if (qcow2_overlaps_metadata(bs, rb, s->cluster_size, rb)) {
                ret = -EIO;
                break;
            }
            checked_rb = rb;
        }
        uint8_t *slice;
        uint64_t i;
        ret = rc_slice(bs, rb, ci & ((1ULL << s->refcount_block_bits) - 1), false, &slice, &i);
        if (ret < 0) {
            break;
        }
        uint64_t rc = qcow2_rc_get(slice, i, s->h.refcount_order);
        if (decrease ? rc == 0 : rc == max) {
            meta_cache_put(s->refcount_cache, slice);
            ret = -EINVAL;
            break;
        }
        rc = decrease ? rc - 1 : rc + 1;
        if (rc == 0 && ci < s->free_cluster_index) {
            s->free_cluster_index = ci;
        }
        if (rc == 0 && s->free_byte_offset && ci == s->free_byte_offset >> s->cluster_bits) {
            /* free now, and maybe soon another cluster's: pack no more into it */
            s->free_byte_offset = 0;
        }
        qcow2_rc_set(slice, i, s->h.refcount_order, rc);
        meta_cache_mark_dirty(s->refcount_cache, slice);
        meta_cache_put(s->refcount_cache, slice);
    }
    if (ret < 0 && cluster_offset > start) {
        qcow2_update_refcount(bs, offset, cluster_offset - offset, !decrease);
    }
    return ret;
}

int64_t coroutine_fn qcow2_alloc_clusters(BlockDriverState *bs, uint64_t size)
{
    int64_t offset;
    int ret;

    do {
        offset = alloc_clusters_noref(bs, size);
        if (offset < 0) {
            return offset;
        }
        ret = qcow2_update_refcount(bs, (uint64_t)offset, size, false);
    } while (ret == -EAGAIN);
    if (ret < 0) {
        return ret;
    }
    if (qcow2_overlaps_metadata(bs, (uint64_t)offset, size, 0)) {
        return -EIO;
    }
    return offset;
}

int64_t coroutine_fn qcow2_alloc_bytes(BlockDriverState *bs, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t max = s->h.refcount_order == 6 ? UINT64_MAX
                                            : (UINT64_C(1) << (1U << s->h.refcount_order)) - 1;
    uint64_t offset = s->free_byte_offset, free_in_cluster;
    int ret;

    if (!size || size > cs) {
        return -EINVAL;
    }
    if (offset) {
        uint64_t refcount;
        ret = qcow2_get_refcount(bs, offset >> s->cluster_bits, &refcount);
        if (ret < 0) {
            return ret;
        }
        /* one more reference would not fit (1-bit refcounts: every time) */
        if (refcount == max || refcount == 0) {
            offset = 0;
        }
    }
    free_in_cluster = cs - qcow2_offset_into_cluster(s, offset);
    do {
        if (!offset || free_in_cluster < size) {
            int64_t new_cluster = alloc_clusters_noref(bs, cs);
            if (new_cluster < 0) {
                return new_cluster;
            }
            if (new_cluster == 0) {
                qcow2_overlaps_metadata(bs, 0, cs, 0);     /* marks the image corrupt */
                return -EIO;
            }
            /* A cluster right after the one we are filling continues it: the
             * bytes may cross into it (the reader takes sectors as they come). */
            if (!offset || ALIGN_UP(offset, cs) != (uint64_t)new_cluster) {
                offset = (uint64_t)new_cluster;
                free_in_cluster = cs;
            } else {
                free_in_cluster += cs;
            }
        }
        ret = qcow2_update_refcount(bs, offset, size, false);
        if (ret < 0) {
            offset = 0;     /* after -EAGAIN (a new refcount block) look again */
        }
    } while (ret == -EAGAIN);
    if (ret < 0) {
        return ret;
    }
    if (offset + size - 1 > s->cluster_offset_mask) {
        /* past what a compressed L2 entry can name */
        qcow2_update_refcount(bs, offset, size, true);
        return -EFBIG;
    }
    if (qcow2_overlaps_metadata(bs, offset, size, 0)) {
        return -EIO;
    }
    s->free_byte_offset = qcow2_offset_into_cluster(s, offset + size) ? offset + size : 0;
    return (int64_t)offset;
}

int coroutine_fn qcow2_l2_allocate(BlockDriverState *bs, uint64_t l1_index)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t slice_bytes = meta_cache_entry_size(s->l2_cache);
    int64_t off = qcow2_alloc_clusters(bs, s->cluster_size);
    int ret;

    if (off < 0) {
        return (int)off;
    }
    ret = meta_cache_flush(s->refcount_cache);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t o = 0; o < s->cluster_size; o += slice_bytes) {
        void *slice;
        ret = meta_cache_get_empty(s->l2_cache, off + (int64_t)o, &slice);
        if (ret < 0) {
            return ret;
        }
        memset(slice, 0, slice_bytes);
        meta_cache_mark_dirty(s->l2_cache, slice);
        meta_cache_put(s->l2_cache, slice);
    }
    ret = meta_cache_flush(s->l2_cache);
    if (ret < 0) {
        return ret;
    }
    uint64_t entry = (uint64_t)off | QCOW2_OFLAG_COPIED;
    uint64_t be = htobe64(entry);
    ret = bdrv_pwrite(bs->file, (int64_t)(s->h.l1_table_offset + l1_index * 8), 8, &be, 0);
    if (ret < 0) {
        return ret;
    }
    ret = bdrv_co_flush(bs->file->bs);
    if (ret < 0) {
        return ret;
    }
    __atomic_store_n(&s->l1_table[l1_index], entry, __ATOMIC_RELEASE);
    return 0;
}
