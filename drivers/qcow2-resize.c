/*
 * qcow2-resize.c - the co_truncate op: QEMU 7.2's qcow2_co_truncate, growing
 * (with the L1 table grown crash-safely, preallocation off, metadata, falloc
 * or full, zeros over a longer backing file) and shrinking.
 *
 * Shrinking departs from QEMU on purpose.  QEMU discards whatever lies past
 * the new end; here a shrink is refused when any guest byte at or past the
 * new end holds data of this image, naming the first such offset, so a
 * mistyped size cannot destroy data (issue 13: "shrink only when the tail
 * is free, or report what is in the way").  Data is a compressed cluster,
 * or a normal one whose host range the file reports as data (never-written
 * preallocated clusters are holes: not data); in the cluster the new end
 * falls in, which stays, only non-zero bytes past the end count.  Zero and
 * unallocated clusters are not in the way: they are discarded as QEMU does.  An image whose tail L2 tables are shared with an
 * internal snapshot (not COPIED) is refused too: dropping them would need
 * the snapshot's references rewritten, which this driver does not do.
 *
 * Crash safety.  Growing the L1 table: the new table's clusters are counted
 * (refcount blocks flushed), the table written and flushed, and only then
 * does one header write switch to it; the old table is freed after.  A
 * crash leaves the old table or the new one, at worst with leaked clusters.
 * The size field is written last when growing (after the metadata of a
 * preallocation is on disk) and first when shrinking (before anything past
 * the new end is dropped), so the size never covers what is not there.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ULL

/* L1 entries needed for size bytes (QEMU's size_to_l1). */
static uint64_t size_to_l1(const BDRVQcow2State *s, uint64_t size)
{
    unsigned shift = s->cluster_bits + s->l2_bits;
    return (size + (UINT64_C(1) << shift) - 1) >> shift;
}

/* QEMU's qcow2_grow_l1_table with exact_size; s->lock held. */
static int coroutine_fn grow_l1_table(BlockDriverState *bs, uint64_t min_size)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old_size = s->l1_size, old_offset = s->h.l1_table_offset;
    int ret;

    if (min_size <= old_size) {
        return 0;
    }
    if (min_size > QCOW2_MAX_L1_BYTES / 8) {
        return -EFBIG;
    }
    uint64_t bytes = min_size * 8;
    uint64_t *t = calloc(min_size, 8);
    uint64_t *be = calloc(min_size, 8);
    Qcow2RetiredL1 *retired = malloc(sizeof(*retired));
    if (!t || !be || !retired) {
        ret = -ENOMEM;
        goto fail;
    }
    for (uint64_t i = 0; i < old_size; i++) {
        t[i] = s->l1_table[i];
        be[i] = htobe64(t[i]);
    }
    int64_t off = qcow2_alloc_clusters(bs, bytes);
    if (off < 0) {
        ret = (int)off;
        goto fail;
    }
    /* The new table's refcounts before anything points at it. */
    ret = meta_cache_flush(s->refcount_cache);
    if (ret == 0) {
        ret = bdrv_pwrite(bs->file, off, (int64_t)bytes, be, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret == 0) {
        /* l1_size and l1_table_offset are adjacent: one write switches both. */
        uint8_t hdr[12];
        uint32_t size_be = htobe32((uint32_t)min_size);
        uint64_t off_be = htobe64((uint64_t)off);
        memcpy(hdr, &size_be, 4);
        memcpy(hdr + 4, &off_be, 8);
        ret = bdrv_pwrite(bs->file, QH_L1_SIZE, sizeof(hdr), hdr, 0);
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
    }
    if (ret < 0) {
        /* The header may or may not have reached the disk: keep the new
         * clusters counted (at worst a leak) rather than risk freeing the
         * table the header names. */
        goto fail;
    }
    free(be);
    retired->table = s->l1_table;
    retired->next = s->retired_l1;
    s->retired_l1 = retired;
    __atomic_store_n(&s->l1_table, t, __ATOMIC_RELEASE);
    __atomic_store_n(&s->l1_size, (uint32_t)min_size, __ATOMIC_RELEASE);
    s->h.l1_size = (uint32_t)min_size;
    s->h.l1_table_offset = (uint64_t)off;
    if (old_size) {
        /* A failure here leaks the old table's clusters, nothing worse. */
        qcow2_update_refcount(bs, old_offset, old_size * 8, true);
    }
    return 0;

fail:
    free(t);
    free(be);
    free(retired);
    return ret;
}

/*
 * The first guest offset in [from, to) whose (sub)cluster holds this
 * image's data, or `to` if none; and whether an L2 table covering
 * [drop_from, to) is shared (not COPIED).  No lock: the block layer keeps
 * requests out of the range a truncate changes.
 */
static int coroutine_fn find_tail_data(BlockDriverState *bs, uint64_t from, uint64_t to,
                                       uint64_t drop_from, uint64_t *data_at,
                                       uint64_t *shared_at)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l1_span = (uint64_t)s->cluster_size << s->l2_bits;

    *data_at = to;
    *shared_at = to;
    uint64_t head_end = MIN(ALIGN_UP(from, (uint64_t)s->cluster_size), to);
    if (head_end > from) {
        /* The cluster the new end falls in stays: what counts there is
         * whether the bytes past the end are zeros, not the allocation. */
        uint64_t n = head_end - from, host;
        Qcow2SubclusterType type;
        int ret = qcow2_get_host_offset(bs, from, &n, &host, &type);
        if (ret < 0) {
            return ret;
        }
        if (type == QCOW2_SC_NORMAL || type == QCOW2_SC_COMPRESSED) {
            uint8_t *buf = malloc(head_end - from);
            IOVector v;
            if (!buf) {
                return -ENOMEM;
            }
            iov_init_buf(&v, buf, head_end - from);
            ret = qcow2_co_preadv(bs, (int64_t)from, (int64_t)(head_end - from), &v, 0, 0);
            for (uint64_t i = 0; ret == 0 && i < head_end - from; i++) {
                if (buf[i]) {
                    *data_at = from + i;
                    break;
                }
            }
            free(buf);
            if (ret < 0 || *data_at < to) {
                return ret;
            }
        }
        from = head_end;
    }
    for (uint64_t off = from; off < to;) {
        uint64_t l1_index = off / l1_span;
        uint64_t l1e = l1_index < s->l1_size ? s->l1_table[l1_index] : 0;
        uint64_t next_l1 = MIN((l1_index + 1) * l1_span, to);
        if (!(l1e & QCOW2_L1E_OFFSET_MASK)) {
            off = next_l1;
            continue;
        }
        if (!(l1e & QCOW2_OFLAG_COPIED) && next_l1 > drop_from && *shared_at == to) {
            *shared_at = MAX(off, drop_from);
        }
        uint64_t n = next_l1 - off, host;
        Qcow2SubclusterType type;
        int ret = qcow2_get_host_offset(bs, off, &n, &host, &type);
        if (ret < 0) {
            return ret;
        }
        if (type == QCOW2_SC_COMPRESSED) {
            *data_at = off;
            return 0;
        }
        if (type == QCOW2_SC_NORMAL) {
            /* Preallocated clusters (metadata, data-file-raw) that were never
             * written are holes in the file: not data. */
            for (uint64_t done = 0; done < n;) {
                int64_t pnum = 0, map;
                BlockDriverState *file;
                ret = bdrv_co_block_status(s->data_file->bs, (int64_t)(host + done),
                                           (int64_t)(n - done), &pnum, &map, &file);
                if (ret < 0) {
                    return ret;
                }
                if ((ret & BDRV_BLOCK_DATA) && !(ret & BDRV_BLOCK_ZERO)) {
                    *data_at = off + done;
                    return 0;
                }
                if (ret & BDRV_BLOCK_EOF) {
                    break;
                }
                done += (uint64_t)pnum;
            }
        }
        off += n;
    }
    return 0;
}

/* Index of the last cluster of the image file with a refcount, or -1. */
static int64_t coroutine_fn last_used_cluster(BlockDriverState *bs, int64_t file_len)
{
    BDRVQcow2State *s = bs->opaque;
    for (int64_t i = (file_len - 1) >> s->cluster_bits; i >= 0; i--) {
        uint64_t rc;
        int ret = qcow2_get_refcount(bs, (uint64_t)i, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc) {
            return i;
        }
    }
    return -1;
}

/* Set the size field (and the size the block layer sees); s->lock held. */
static int coroutine_fn write_size(BlockDriverState *bs, uint64_t size)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = qcow2_write_header_field(bs, QH_SIZE, size);
    if (ret == 0) {
        s->h.size = size;
        bdrv_set_total_bytes(bs, (int64_t)size);
    }
    return ret;
}

static int coroutine_fn do_shrink(BlockDriverState *bs, uint64_t old_length, uint64_t offset,
                                  Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t drop_from = ALIGN_UP(offset, cs);
    uint64_t new_l1_size = size_to_l1(s, offset);
    uint64_t data_at, shared_at;
    int ret;

    ret = find_tail_data(bs, offset, old_length, drop_from, &data_at, &shared_at);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to look up the clusters past the new end");
        return ret;
    }
    if (data_at < old_length) {
        error_setg(errp, "Cannot shrink to %" PRIu64 " bytes: guest offset %" PRIu64
                   " (0x%" PRIx64 ") past the new end holds data; discard what lies past the"
                   " new end first (nothing changed)", offset, data_at, data_at);
        return -ENOTEMPTY;
    }
    if (shared_at < old_length) {
        error_setg(errp, "Cannot shrink to %" PRIu64 " bytes: the L2 table for guest offset %"
                   PRIu64 " is shared with an internal snapshot (nothing changed)", offset,
                   shared_at);
        return -ENOTSUP;
    }

    /* What is left past the new end (zero clusters, never-written
     * preallocated ones) is dropped, host clusters freed, as QEMU's full
     * discard does; whole L2 tables past the new L1 size go below. */
    {
        uint64_t l1_span = cs << s->l2_bits;
        for (uint64_t off = drop_from; off < old_length;) {
            uint64_t l1_index = off / l1_span;
            uint64_t end = MIN((l1_index + 1) * l1_span, old_length);
            if (l1_index < s->l1_size && (s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK)) {
                ret = qcow2_discard_full(bs, off, ALIGN_UP(end - off, cs));
                if (ret < 0) {
                    error_setg_errno(errp, -ret, "Failed to discard cropped clusters");
                    return ret;
                }
            }
            off = end;
        }
    }

    co_mutex_lock(&s->lock);
    ret = write_size(bs, offset);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image size");
        goto out;
    }
    /* L2 tables wholly past the new end: their L1 entries go first (on
     * disk and flushed), then the tables' clusters (QEMU's
     * qcow2_shrink_l1_table; the header's l1_size stays, as there). */
    uint64_t first = new_l1_size, nb = s->l1_size > first ? s->l1_size - first : 0;
    bool any = false;
    for (uint64_t i = first; i < first + nb; i++) {
        any |= s->l1_table[i] != 0;
    }
    if (any) {
        uint64_t *zeros = calloc(nb, 8);
        uint64_t *old = malloc(nb * 8);
        if (!zeros || !old) {
            free(zeros);
            free(old);
            ret = -ENOMEM;
            error_setg_errno(errp, -ret, "Failed to reduce the number of L2 tables");
            goto out;
        }
        ret = meta_cache_flush(s->l2_cache);
        if (ret == 0) {
            ret = bdrv_pwrite(bs->file, (int64_t)(s->h.l1_table_offset + first * 8),
                              (int64_t)(nb * 8), zeros, 0);
        }
        if (ret == 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
        if (ret == 0) {
            for (uint64_t i = 0; i < nb; i++) {
                old[i] = s->l1_table[first + i];
                __atomic_store_n(&s->l1_table[first + i], 0, __ATOMIC_RELEASE);
            }
            /* Their slices must not be written over whatever reuses the
             * clusters: all are clean after the flush; drop them. */
            meta_cache_drop_clean(s->l2_cache);
            for (uint64_t i = 0; i < nb && ret == 0; i++) {
                uint64_t l2 = old[i] & QCOW2_L1E_OFFSET_MASK;
                if (l2) {
                    ret = qcow2_update_refcount(bs, l2, cs, true);
                }
            }
        }
        free(zeros);
        free(old);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to reduce the number of L2 tables");
            goto out;
        }
    }
    ret = meta_cache_flush(s->refcount_cache);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to discard unused refblocks");
        goto out;
    }
    /* Free clusters at the end of the file go (not exact: a block device
     * keeps its size, and that is no reason to fail). */
    int64_t file_len = bdrv_getlength(bs->file->bs);
    if (file_len < 0) {
        ret = (int)file_len;
        error_setg_errno(errp, -ret, "Failed to inquire current file length");
        goto out;
    }
    int64_t last = last_used_cluster(bs, file_len);
    if (last < 0 && last != -1) {
        ret = (int)last;
        error_setg_errno(errp, -ret, "Failed to find the last cluster");
        goto out;
    }
    if ((last + 1) * (int64_t)cs < file_len) {
        Error *local = NULL;
        if (bdrv_co_truncate(bs->file, (last + 1) * (int64_t)cs, false, PREALLOC_MODE_OFF, 0,
                             &local) < 0) {
            error_prepend(&local, "Failed to truncate the tail of the image: ");
            warn_report("%s", error_get_pretty(local));
            error_free(local);
        }
    }
    ret = 0;
out:
    co_mutex_unlock(&s->lock);
    return ret;
}

static bool has_host(const BDRVQcow2State *s, const uint64_t *slice, uint64_t i)
{
    uint64_t e = be64toh(slice[i * (s->l2_entry_size / 8)]);
    return (e & (QCOW2_OFLAG_COMPRESSED | QCOW2_L2E_OFFSET_MASK)) ||
           (qcow2_has_data_file(s) && (e & QCOW2_OFLAG_COPIED));
}

/*
 * Preallocate [old_length, offset) (QEMU's preallocate_co, and its falloc
 * and full modes): every cluster without a host cluster gets one, run by
 * run within an L2 slice, the L2 table before its data clusters; falloc
 * and full also allocate the data's storage in the file (full with
 * written zeros).  s->lock held.
 */
static int coroutine_fn preallocate(BlockDriverState *bs, uint64_t old_length, uint64_t offset,
                                    PreallocMode mode, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t guest = qcow2_start_of_cluster(s, old_length), end = ALIGN_UP(offset, cs);
    uint64_t host_end = 0;
    int ret = qcow2_mark_dirty(bs);

    while (ret == 0 && guest < end) {
        uint64_t *slice;
        uint32_t in_slice;
        ret = qcow2_l2_slice_for_write(bs, guest, &slice, &in_slice);
        if (ret < 0) {
            break;
        }
        uint64_t nb = MIN((end - guest) / cs, (uint64_t)(s->l2_slice_entries - in_slice));
        /* skip the clusters that have a host cluster, then take the run
         * of those that do not */
        uint64_t skip = 0, run = 0;
        while (skip < nb && has_host(s, slice, in_slice + skip)) {
            skip++;
        }
        while (skip + run < nb && !has_host(s, slice, in_slice + skip + run)) {
            run++;
        }
        guest += skip * cs;
        in_slice += (uint32_t)skip;
        if (!run) {
            meta_cache_put(s->l2_cache, slice);
            continue;
        }
        int64_t host;
        if (qcow2_has_data_file(s)) {
            host = (int64_t)guest;           /* data at guest offsets */
        } else {
            host = qcow2_alloc_clusters(bs, run * cs);
        }
        if (host < 0) {
            ret = (int)host;
            meta_cache_put(s->l2_cache, slice);
            break;
        }
        if (!qcow2_has_data_file(s) && mode == PREALLOC_MODE_FALLOC) {
            /* the storage itself: allocated zeros (a fallocate on a file) */
            ret = bdrv_co_pwrite_zeroes(s->data_file, host, (int64_t)(run * cs), 0);
        } else if (!qcow2_has_data_file(s) && mode == PREALLOC_MODE_FULL) {
            /* ... or written ones */
            void *zeros = bdrv_zero_buffer();
            for (uint64_t o = 0; o < run * cs && ret == 0; o += BDRV_MAX_BOUNCE_BUFFER) {
                IOVector v;
                iov_init_buf(&v, zeros, MIN((uint64_t)BDRV_MAX_BOUNCE_BUFFER, run * cs - o));
                ret = bdrv_co_pwritev(s->data_file, host + (int64_t)o, (int64_t)v.size, &v, 0);
            }
        }
        if (ret == 0) {
            ret = qcow2_l2_after_refcounts(s);
        }
        if (ret < 0) {
            if (!qcow2_has_data_file(s)) {
                qcow2_update_refcount(bs, (uint64_t)host, run * cs, true);
            }
            meta_cache_put(s->l2_cache, slice);
            break;
        }
        qcow2_l2_after_data(s);
        for (uint64_t j = 0; j < run; j++) {
            uint64_t e = be64toh(slice[(in_slice + j) * (s->l2_entry_size / 8)]);
            /* a zero flag stays (the cluster reads as zeros, now allocated);
             * extended L2 keeps its bitmap, as QEMU's prealloc links do */
            qcow2_set_l2_entry(s, slice, in_slice + (uint32_t)j,
                               ((uint64_t)host + j * cs) | QCOW2_OFLAG_COPIED |
                               (e & QCOW2_OFLAG_ZERO));
        }
        meta_cache_mark_dirty(s->l2_cache, slice);
        meta_cache_put(s->l2_cache, slice);
        host_end = MAX(host_end, (uint64_t)host + run * cs);
        guest += run * cs;
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not preallocate metadata");
        return ret;
    }
    /* Reads of the last clusters must not fail past the end of the file. */
    BdrvChild *f = s->data_file;
    uint64_t want = qcow2_has_data_file(s) ? offset : host_end;
    int64_t len = bdrv_getlength(f->bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the size of the data file");
        return (int)len;
    }
    if (want > (uint64_t)len) {
        ret = bdrv_co_truncate(f, (int64_t)want, false,
                               mode == PREALLOC_MODE_METADATA ? PREALLOC_MODE_OFF : mode, 0,
                               errp);
        if (ret < 0) {
            return ret;
        }
    }
    /* The metadata on disk before the size covers it. */
    ret = meta_cache_flush(s->refcount_cache);
    if (ret == 0) {
        ret = meta_cache_flush(s->l2_cache);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to flush the preallocated area to disk");
    }
    return ret;
}

/* The new area reads as zeros, not as the longer backing file (QEMU's
 * BDRV_REQ_ZERO_WRITE, which bdrv_co_truncate asks for then).  No lock. */
static int coroutine_fn zero_new_area(BlockDriverState *bs, uint64_t old_length, uint64_t offset,
                                      Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t zero_start = ALIGN_UP(old_length, cs);
    int ret = 0;

    if (offset > zero_start) {
        ret = s->h.version >= 3 ? qcow2_zero_clusters(bs, zero_start,
                                                      ALIGN_UP(offset, cs) - zero_start, false)
                                : -ENOTSUP;
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to zero out new clusters");
            return ret;
        }
    }
    if (zero_start > old_length) {
        uint64_t len = MIN(zero_start, offset) - old_length;
        IOVector v;
        iov_init_buf(&v, bdrv_zero_buffer(), len);
        ret = qcow2_co_pwritev(bs, (int64_t)old_length, (int64_t)len, &v, 0, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to zero out the new area");
        }
    }
    return ret;
}

static int bitmaps_follow(BlockDriverState *bs, uint64_t size, Error **errp)
{
    int ret = qcow2_bitmaps_truncate(bs, size);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot resize the bitmaps",
                         qcow2_image_name(bs));
    }
    return ret;
}

int coroutine_fn qcow2_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                   PreallocMode prealloc, BdrvRequestFlags flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old_length = (uint64_t)bdrv_get_total_bytes(bs);
    int ret;

    (void)flags;
    if (prealloc != PREALLOC_MODE_OFF && prealloc != PREALLOC_MODE_METADATA &&
        prealloc != PREALLOC_MODE_FALLOC && prealloc != PREALLOC_MODE_FULL) {
        error_setg(errp, "Unsupported preallocation mode");
        return -ENOTSUP;
    }
    if (offset % BDRV_SECTOR_SIZE) {
        error_setg(errp, "The new size must be a multiple of %u", (unsigned)BDRV_SECTOR_SIZE);
        return -EINVAL;
    }
    if (!s->writable) {
        error_setg(errp, "qcow2: %s: image is read-only", qcow2_image_name(bs));
        return -EACCES;
    }
    if (s->crypto && prealloc != PREALLOC_MODE_OFF) {
        /* preallocated clusters hold no ciphertext: they would read as garbage */
        error_setg(errp, "qcow2: %s: preallocation is not supported with encryption",
                   qcow2_image_name(bs));
        return -ENOTSUP;
    }
    /* Even though the snapshot table has each snapshot's size, v2 did not
     * require it: QEMU refuses, and so do we. */
    if (s->h.nb_snapshots && s->h.version < 3) {
        error_setg(errp, "Can't resize a v2 image which has snapshots");
        return -ENOTSUP;
    }
    /* Bitmaps in use cannot follow the size: QEMU refuses. */
    ret = qcow2_bitmaps_truncate_check(bs, errp);
    if (ret < 0) {
        return ret;
    }
    if ((uint64_t)offset < old_length) {
        if (prealloc != PREALLOC_MODE_OFF) {
            error_setg(errp, "Preallocation can't be used for shrinking an image");
            return -EINVAL;
        }
        ret = do_shrink(bs, old_length, (uint64_t)offset, errp);
        if (ret == 0 && qcow2_has_data_file(s)) {
            ret = bdrv_co_truncate(s->data_file, offset, exact, PREALLOC_MODE_OFF, 0, errp);
        }
        return ret == 0 ? bitmaps_follow(bs, (uint64_t)offset, errp) : ret;
    }

    /* A backing file longer than the image would show through (QEMU's
     * bdrv_co_truncate sets BDRV_REQ_ZERO_WRITE then). */
    bool zero_write = false;
    if ((uint64_t)offset > old_length && bs->backing) {
        int64_t backing_len = bdrv_getlength(bs->backing->bs);
        if (backing_len < 0) {
            error_setg_errno(errp, (int)-backing_len, "Could not get backing file size");
            return (int)backing_len;
        }
        zero_write = (uint64_t)backing_len > old_length;
    }

    co_mutex_lock(&s->lock);
    ret = grow_l1_table(bs, size_to_l1(s, (uint64_t)offset));
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to grow the L1 table");
        goto out;
    }
    if (qcow2_data_file_is_raw(s) && prealloc == PREALLOC_MODE_OFF) {
        /* data-file-raw images have their metadata preallocated (create
         * enforces it), so the data file reads as the image does. */
        prealloc = PREALLOC_MODE_METADATA;
    }
    if (prealloc == PREALLOC_MODE_OFF) {
        if (qcow2_has_data_file(s)) {
            ret = bdrv_co_truncate(s->data_file, offset, exact, prealloc, 0, errp);
        }
    } else {
        ret = preallocate(bs, old_length, (uint64_t)offset, prealloc, errp);
    }
    if (ret < 0) {
        goto out;
    }
    if (zero_write) {
        co_mutex_unlock(&s->lock);
        ret = zero_new_area(bs, old_length, (uint64_t)offset, errp);
        co_mutex_lock(&s->lock);
        if (ret < 0) {
            goto out;
        }
    }
    ret = write_size(bs, (uint64_t)offset);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image size");
    }
out:
    co_mutex_unlock(&s->lock);
    return ret == 0 ? bitmaps_follow(bs, (uint64_t)offset, errp) : ret;
}
