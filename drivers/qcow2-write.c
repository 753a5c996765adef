/*
 * qcow2-write.c - guest writes: in place into allocated clusters (no
 * metadata I/O, no lock), or into newly allocated clusters with
 * copy-on-write of the partial head and tail; flush of the metadata caches.
 *
 * An allocating write takes s->lock only to find its clusters (waiting
 * while another request allocates any of the same guest clusters, then
 * looking again: that one may have made them writable in place) and to
 * publish its L2 entries; the data, with the head and tail read from what
 * the clusters showed before (backing file, zeros, a compressed or shared
 * cluster), is written without the lock.  L2 entries are published after
 * the data is written, so a reader never follows one to data not yet there,
 * and they reach the disk after the refcount blocks that count their
 * clusters (cache dependency).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "qcow2-int.h"

/*
 * lazy_refcounts: before the first metadata change the dirty bit goes into
 * the header, and refcount blocks no longer have to reach the disk before
 * the L2 entries that depend on them (a crash leaves the refcounts to
 * repair: qemu-img check -r all).  s->lock held.
 */
int coroutine_fn qcow2_mark_dirty(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (!(s->h.compat & QCOW2_COMPAT_LAZY_REFCOUNTS) || (s->h.incompat & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    int ret = qcow2_write_header_field(bs, QH_INCOMPAT, s->h.incompat | QCOW2_INCOMPAT_DIRTY);
    if (ret == 0) {
        s->h.incompat |= QCOW2_INCOMPAT_DIRTY;
    }
    return ret;
}

int coroutine_fn qcow2_l2_after_refcounts(BDRVQcow2State *s)
{
    if (s->h.incompat & QCOW2_INCOMPAT_DIRTY) {
        return 0;
    }
    return meta_cache_set_dependency(s->l2_cache, s->refcount_cache);
}

/* New L2 entries were published: a write-through round that began before
 * this cannot count their data as flushed (write_through_metadata). */
static void published(BDRVQcow2State *s)
{
    s->publish_gen++;
    meta_cache_depends_on_flush(s->l2_cache);
}

/*
 * An L2 entry that points at a newly written cluster (or newly allocated
 * subclusters) reaches the disk only after that data: the image file is
 * flushed before the L2 table's next write (QEMU does this after
 * copy-on-write; we do it for every allocation, so that after a crash an
 * entry never shows the old contents of a reused cluster, or zeros where
 * the backing file's data was copied).  An external data file is not the
 * cache's child: the caches' write check flushes it first
 * (qcow2_cache_check_write), or an entry that stops reading as zeros or
 * as the backing file would show what the data file held at that offset
 * before.  s->lock held, before the entries change.
 */
void qcow2_l2_after_data(BDRVQcow2State *s)
{
    s->publish_gen++;
    meta_cache_depends_on_flush(s->l2_cache);
    if (qcow2_has_data_file(s)) {
        s->data_file_unflushed = true;
    }
}

bool qcow2_alloc_overlaps(BDRVQcow2State *s, uint64_t first, uint64_t nb)
{
    for (Qcow2Alloc *a = s->allocs; a; a = a->next) {
        if (first < a->first + a->nb && a->first < first + nb) {
            return true;
        }
    }
    return false;
}

void qcow2_alloc_end(BDRVQcow2State *s, Qcow2Alloc *alloc)
{
    for (Qcow2Alloc **p = &s->allocs; *p; p = &(*p)->next) {
        if (*p == alloc) {
            *p = alloc->next;
            break;
        }
    }
    co_queue_restart_all(&s->alloc_wait);
}

int coroutine_fn qcow2_l2_slice_for_write(BlockDriverState *bs, uint64_t offset,
                                          uint64_t **slice, uint32_t *in_slice)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l1_index = offset >> (s->l2_bits + s->cluster_bits);
    uint32_t l2_index = (uint32_t)((offset >> s->cluster_bits) & ((1ULL << s->l2_bits) - 1));
    int ret;

    *in_slice = l2_index & (s->l2_slice_entries - 1);
    if (l1_index >= s->l1_size) {
        return -EIO;
    }
    if (!(s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK)) {
        ret = qcow2_l2_allocate(bs, l1_index);
        if (ret < 0) {
            return ret;
        }
    } else if (!(s->l1_table[l1_index] & QCOW2_OFLAG_COPIED)) {
        ret = qcow2_l2_cow(bs, l1_index);      /* shared with a snapshot */
        if (ret < 0) {
            return ret;
        }
    }
    uint64_t l2_offset = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
    if (qcow2_overlaps_metadata(bs, l2_offset, s->cluster_size, l2_offset)) {
        return -EIO;
    }
    return meta_cache_get(s->l2_cache, (int64_t)(l2_offset + (uint64_t)(l2_index - *in_slice) *
                                                              s->l2_entry_size),
                          (void **)slice);
}

/*
 * An allocating write lets go of its L2 slice for its data write and looks
 * it up again (a hit, almost always) to publish: a request holds cache
 * entries only while it holds s->lock.  Held across the data write, a deep
 * queue of allocating writes filled a small cache, and a miss under the
 * lock then waited for entries whose holders were waiting for the lock
 * (a 4-queue device failed writes with ENOSPC).  What the entries said is
 * kept in the caller's locals; the clusters themselves are the request's
 * (s->allocs) until it publishes.
 */
static void release_slice_for_data(BDRVQcow2State *s, uint64_t **slice)
{
    meta_cache_put(s->l2_cache, *slice);
    *slice = NULL;
}

static uint64_t get_l2(BDRVQcow2State *s, const uint64_t *slice, uint32_t i, uint64_t *bitmap)
{
    if (bitmap) {
        *bitmap = qcow2_has_subclusters(s) ? be64toh(slice[i * 2 + 1]) : 0;
    }
    return be64toh(slice[i * (s->l2_entry_size / 8)]);
}

int coroutine_fn qcow2_free_old_entry(BlockDriverState *bs, uint64_t e)
{
    BDRVQcow2State *s = bs->opaque;

    if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coffset = e & s->cluster_offset_mask;
        uint64_t nb_csectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
        return qcow2_update_refcount(bs, coffset & ~511ULL, nb_csectors * 512, true);
    }
    uint64_t host = e & QCOW2_L2E_OFFSET_MASK;
    if (host && !qcow2_has_data_file(s)) {
        return qcow2_update_refcount(bs, host, s->cluster_size, true);
    }
    return 0;
}

/*
 * Write [head bytes of hb][len bytes of qiov from qiov_offset][tail bytes of
 * tb] at host in the data file: one write through a vector on the stack
 * (nothing allocated per request), or three writes when the caller's
 * vector has too many pieces for it.
 */
#define COW_VEC_MAX 16
static int coroutine_fn write_with_cow(BlockDriverState *bs, uint64_t host, uint8_t *hb,
                                       uint64_t head, IOVector *qiov, size_t qiov_offset,
                                       uint64_t len, uint8_t *tb, uint64_t tail)
{
    BDRVQcow2State *s = bs->opaque;
    if (s->crypto) {
        /* Encrypted (LUKS: IVs from host offsets): head and tail are our
         * bounces, encrypted in place; the caller's data through the
         * crypto bounce.  Writable encrypted images are LUKS only. */
        int ret = 0;
        IOVector part;
        if (head) {
            ret = qcow2_crypto_encrypt_buf(s, host, 0, hb, head);
            iov_init_buf(&part, hb, head);
            ret = ret ? ret : bdrv_co_pwritev(s->data_file, (int64_t)host, (int64_t)head, &part, 0);
        }
        if (ret == 0) {
            ret = qcow2_crypto_pwritev(bs, host + head, 0, len, qiov, qiov_offset);
        }
        if (ret == 0 && tail) {
            ret = qcow2_crypto_encrypt_buf(s, host + head + len, 0, tb, tail);
            iov_init_buf(&part, tb, tail);
            ret = ret ? ret : bdrv_co_pwritev(s->data_file, (int64_t)(host + head + len),
                                              (int64_t)tail, &part, 0);
        }
        return ret;
    }
    struct iovec vec[COW_VEC_MAX];
    size_t skip = qiov_offset, left = len;
    int n = 0;

    if (head) {
        vec[n++] = (struct iovec){ hb, head };
    }
    for (int i = 0; i < qiov->niov && left; i++) {
        size_t l = qiov->iov[i].iov_len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        if (n == COW_VEC_MAX - 1) {
            goto split;
        }
        size_t take = MIN(l - skip, left);
        /* base + n arithmetic is right for registered-buffer references too */
        vec[n++] = (struct iovec){ (char *)qiov->iov[i].iov_base + skip, take };
        skip = 0;
        left -= take;
    }
    if (tail) {
        vec[n++] = (struct iovec){ tb, tail };
    }
    IOVector v;
    iov_init_external(&v, vec, n);
    return bdrv_co_pwritev(s->data_file, (int64_t)host, (int64_t)(head + len + tail), &v, 0);

split: ;
    int ret = 0;
    IOVector part;
    if (head) {
        iov_init_buf(&part, hb, head);
        ret = bdrv_co_pwritev(s->data_file, (int64_t)host, (int64_t)head, &part, 0);
    }
    if (ret == 0) {
        ret = bdrv_co_pwritev_part(s->data_file, (int64_t)(host + head), (int64_t)len, qiov,
                                   qiov_offset, 0);
    }
    if (ret == 0 && tail) {
        iov_init_buf(&part, tb, tail);
        ret = bdrv_co_pwritev(s->data_file, (int64_t)(host + head + len), (int64_t)tail, &part, 0);
    }
    return ret;
}

/* Whether a cluster with L2 entry e (not extended L2) reads as zeros: a
 * zero flag, or nothing there and no backing file to fall through to. */
static bool reads_as_zeros(BlockDriverState *bs, uint64_t e)
{
    if (e & QCOW2_OFLAG_COMPRESSED) {
        return false;
    }
    if (e & QCOW2_OFLAG_ZERO) {
        return true;
    }
    return !(e & QCOW2_L2E_OFFSET_MASK) && !bs->backing &&
           !qcow2_has_data_file((BDRVQcow2State *)bs->opaque);
}

/*
 * Write [offset, offset + *bytes) into new clusters, at most up to the end
 * of the L2 slice; *bytes becomes what was written.  1 if the first cluster
 * turned out writable in place (another request allocated it meanwhile):
 * nothing was written.
 */
static int coroutine_fn write_allocating(BlockDriverState *bs, uint64_t offset, uint64_t *bytes,
                                         IOVector *qiov, size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t first = offset >> s->cluster_bits;
    uint32_t slice_entries = s->l2_slice_entries;
    uint32_t in_slice = (uint32_t)(first & ((1ULL << s->l2_bits) - 1)) & (slice_entries - 1);
    uint64_t nb = DIV_ROUND_UP(qcow2_offset_into_cluster(s, offset) + *bytes,
                               (uint64_t)s->cluster_size);
    Qcow2Alloc alloc;
    uint64_t *slice = NULL;
    int64_t host;
    int ret;

    nb = MIN(nb, (uint64_t)(slice_entries - in_slice));
    co_mutex_lock(&s->lock);
    while (qcow2_alloc_overlaps(s, first, nb)) {
        co_queue_wait(&s->alloc_wait, &s->lock);
    }
    ret = qcow2_mark_dirty(bs);
    if (ret == 0) {
        ret = qcow2_l2_slice_for_write(bs, offset, &slice, &in_slice);
    }
    if (ret < 0) {
        goto unlock;
    }
    /* Now under the lock: the clusters from the first that need new ones. */
    uint64_t e_first = 0, e_last = 0;
    for (uint64_t i = 0; i < nb; i++) {
        uint64_t e = be64toh(slice[(in_slice + i) * (s->l2_entry_size / 8)]);
        if (i == 0) {
            e_first = e;
        }
        e_last = e;
        bool in_place = !(e & QCOW2_OFLAG_COMPRESSED) && !(e & QCOW2_OFLAG_ZERO) &&
                        (e & QCOW2_OFLAG_COPIED) &&
                        ((e & QCOW2_L2E_OFFSET_MASK) || qcow2_has_data_file(s));
        if (in_place) {
            if (i == 0) {
                ret = 1;
                goto put;
            }
            nb = i;
            break;
        }
    }
    if (qcow2_has_data_file(s)) {
        host = (int64_t)(first << s->cluster_bits);       /* data at guest offsets */
    } else {
        host = qcow2_alloc_clusters(bs, nb << s->cluster_bits);
        if (host < 0) {
            ret = (int)host;
            goto put;
        }
    }
    alloc = (Qcow2Alloc){ .first = first, .nb = nb, .next = s->allocs };
    s->allocs = &alloc;
    release_slice_for_data(s, &slice);
    co_mutex_unlock(&s->lock);

    /* The data: head and tail as the clusters read before, then the caller's. */
    uint64_t head = qcow2_offset_into_cluster(s, offset);
    uint64_t span = nb << s->cluster_bits;
    uint64_t len = MIN(*bytes, span - head);
    uint64_t tail = span - head - len;
    /* (not when encrypted: zeros in the file are not zeros to the guest) */
    if ((head || tail) && !s->crypto && (!head || reads_as_zeros(bs, e_first)) &&
        (!tail || reads_as_zeros(bs, e_last))) {
        /* QEMU's zero COW: a 4k write into a new 64k cluster costs a
         * fallocate and 4k of data, not 64k of data of which 60k is zeros.
         * The zeroing goes first: the data lies inside its range. */
        ret = bdrv_co_pwrite_zeroes(s->data_file, (int64_t)host, (int64_t)span,
                                    BDRV_REQ_NO_FALLBACK);
        if (ret == 0) {
            ret = bdrv_co_pwritev_part(s->data_file, (int64_t)(host + head), (int64_t)len,
                                       qiov, qiov_offset, 0);
            goto written;
        }
        if (ret != -ENOTSUP) {
            goto written;
        }
    }
    Qcow2Bounce *b = (head || tail) ? qcow2_bounce_get(s) : NULL;
    if ((head || tail) && !b) {
        ret = -ENOMEM;
    } else {
        ret = 0;
        if (head) {
            IOVector h;
            iov_init_buf(&h, b->in, head);
            ret = qcow2_co_preadv(bs, (int64_t)(first << s->cluster_bits), (int64_t)head, &h, 0, 0);
        }
        if (ret == 0 && tail) {
            IOVector t;
            iov_init_buf(&t, b->out, tail);
            ret = qcow2_co_preadv(bs, (int64_t)(offset + len), (int64_t)tail, &t, 0, 0);
        }
        if (ret == 0) {
            ret = write_with_cow(bs, (uint64_t)host, b ? b->in : NULL, head, qiov, qiov_offset,
                                 len, b ? b->out : NULL, tail);
        }
    }
    if (b) {
        qcow2_bounce_put(s, b);
    }

written:
    co_mutex_lock(&s->lock);
    qcow2_alloc_end(s, &alloc);
    if (ret == 0) {
        ret = qcow2_l2_slice_for_write(bs, offset, &slice, &in_slice);
    }
    if (ret < 0) {
        if (!qcow2_has_data_file(s)) {
            qcow2_update_refcount(bs, (uint64_t)host, span, true);
        }
        goto put;
    }
    /* Publish: L2 entries after the refcount blocks that count them. */
    ret = qcow2_l2_after_refcounts(s);
    if (ret < 0) {
        goto put;
    }
    qcow2_l2_after_data(s);
    uint64_t old[QCOW2_L2_SLICE_BYTES / 8];   /* nb <= entries per slice */
    uint64_t nb_old = 0;
    bool need_free = false;
    for (uint64_t i = 0; i < nb; i++) {
        uint64_t e = be64toh(slice[(in_slice + i) * (s->l2_entry_size / 8)]);
        qcow2_set_l2_entry(s, slice, in_slice + (uint32_t)i,
                     ((uint64_t)host + (i << s->cluster_bits)) | QCOW2_OFLAG_COPIED);
        if ((e & (QCOW2_OFLAG_COMPRESSED | QCOW2_L2E_OFFSET_MASK)) && !qcow2_has_data_file(s)) {
            need_free = true;
            old[nb_old++] = e;
        }
    }
    meta_cache_mark_dirty(s->l2_cache, slice);
    published(s);
    if (need_free) {
        /* Clusters given up are reused only once no L2 entry on disk
         * points at them any more. */
        ret = meta_cache_flush(s->l2_cache);
        for (uint64_t i = 0; ret == 0 && i < nb_old; i++) {
            ret = qcow2_free_old_entry(bs, old[i]);
        }
    }
    *bytes = len;
put:
    if (slice) {
        meta_cache_put(s->l2_cache, slice);
    }
unlock:
    co_mutex_unlock(&s->lock);
    return ret;
}

/* Subclusters [a, b) of a bitmap's allocation half (b <= 32). */
static uint64_t sc_range(uint32_t a, uint32_t b)
{
    return ((b >= 32 ? 0xffffffffULL : ((1ULL << b) - 1)) & ~((1ULL << a) - 1));
}

/* Takes s->lock (held on return, also on failure) once no allocation in
 * flight covers offset's cluster, marks the image dirty and gets the L2 slice
 * of offset for writing. */
static int coroutine_fn lock_cluster_l2(BlockDriverState *bs, uint64_t offset,
                                        uint64_t **slice, uint32_t *in_slice)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cluster = offset >> s->cluster_bits;

    co_mutex_lock(&s->lock);
    while (qcow2_alloc_overlaps(s, cluster, 1)) {
        co_queue_wait(&s->alloc_wait, &s->lock);
    }
    int ret = qcow2_mark_dirty(bs);
    return ret < 0 ? ret : qcow2_l2_slice_for_write(bs, offset, slice, in_slice);
}

/*
 * Extended L2: write [offset, offset + *bytes) within one cluster, allocating
 * the subclusters it touches.  A cluster with a host cluster of its own
 * keeps it (only partial subclusters that were not allocated are filled
 * from what they showed); one without gets a new cluster with only the
 * touched subclusters allocated; a compressed or shared one is copied whole
 * into a new cluster.  *bytes becomes what was written.
 */
static int coroutine_fn write_subclusters(BlockDriverState *bs, uint64_t offset, uint64_t *bytes,
                                          IOVector *qiov, size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cluster = offset >> s->cluster_bits;
    uint32_t in_slice;
    uint64_t start = qcow2_offset_into_cluster(s, offset);
    uint64_t end = MIN(start + *bytes, (uint64_t)s->cluster_size);
    uint32_t first_sc = (uint32_t)(start >> s->subcluster_bits);
    uint32_t last_sc = (uint32_t)((end - 1) >> s->subcluster_bits);
    uint64_t guest_base = cluster << s->cluster_bits;
    Qcow2Alloc alloc = { .first = cluster, .nb = 1 };
    uint64_t *slice = NULL, e, bitmap, host;
    bool new_cluster, whole;
    int ret;

    ret = lock_cluster_l2(bs, offset, &slice, &in_slice);
    if (ret < 0) {
        goto unlock;
    }
    e = get_l2(s, slice, in_slice, &bitmap);
    bool has_host = !(e & QCOW2_OFLAG_COMPRESSED) &&
                    ((e & QCOW2_L2E_OFFSET_MASK) || qcow2_has_data_file(s)) &&
                    (e & QCOW2_OFLAG_COPIED);
    uint64_t touched = sc_range(first_sc, last_sc + 1);
    if (has_host && (bitmap & touched) == touched && !((bitmap >> 32) & touched)) {
        ret = 1;                    /* allocated meanwhile: in place */
        goto put;
    }
    new_cluster = !has_host;
    /* Compressed and shared clusters are copied whole: their allocated
     * subclusters are data the new cluster must carry. */
    whole = (e & QCOW2_OFLAG_COMPRESSED) ||
            (!has_host && (e & QCOW2_L2E_OFFSET_MASK) && !qcow2_has_data_file(s));
    if (!new_cluster) {
        host = e & QCOW2_L2E_OFFSET_MASK;
    } else if (qcow2_has_data_file(s)) {
        host = guest_base;
    } else {
        int64_t h = qcow2_alloc_clusters(bs, s->cluster_size);
        if (h < 0) {
            ret = (int)h;
            goto put;
        }
        host = (uint64_t)h;
    }
    alloc.next = s->allocs;
    s->allocs = &alloc;
    release_slice_for_data(s, &slice);
    co_mutex_unlock(&s->lock);

    /* What to fill from the old contents: the whole cluster, or the parts
     * of partial subclusters that were not allocated. */
    uint64_t from = start, to = end;
    if (whole) {
        from = 0;
        to = s->cluster_size;
    } else {
        if (!(bitmap & (1ULL << first_sc)) || ((bitmap >> 32) & (1ULL << first_sc))) {
            from = (uint64_t)first_sc << s->subcluster_bits;
        }
        if (!(bitmap & (1ULL << last_sc)) || ((bitmap >> 32) & (1ULL << last_sc))) {
            to = (uint64_t)(last_sc + 1) << s->subcluster_bits;
        }
    }
    uint64_t head = start - from, tail = to - end, len = end - start;
    Qcow2Bounce *b = (head || tail) ? qcow2_bounce_get(s) : NULL;
    if ((head || tail) && !b) {
        ret = -ENOMEM;
    } else {
        ret = 0;
        if (head) {
            IOVector h;
            iov_init_buf(&h, b->in, head);
            ret = qcow2_co_preadv(bs, (int64_t)(guest_base + from), (int64_t)head, &h, 0, 0);
        }
        if (ret == 0 && tail) {
            IOVector t;
            iov_init_buf(&t, b->out, tail);
            ret = qcow2_co_preadv(bs, (int64_t)(guest_base + end), (int64_t)tail, &t, 0, 0);
        }
        if (ret == 0) {
            ret = write_with_cow(bs, host + from, b ? b->in : NULL, head, qiov, qiov_offset, len,
                                 b ? b->out : NULL, tail);
        }
    }
    if (b) {
        qcow2_bounce_put(s, b);
    }

    co_mutex_lock(&s->lock);
    qcow2_alloc_end(s, &alloc);
    if (ret == 0) {
        ret = qcow2_l2_slice_for_write(bs, offset, &slice, &in_slice);
    }
    if (ret < 0) {
        if (new_cluster && !qcow2_has_data_file(s)) {
            qcow2_update_refcount(bs, host, s->cluster_size, true);
        }
        goto put;
    }
    if (new_cluster) {
        ret = qcow2_l2_after_refcounts(s);
        if (ret < 0) {
            goto put;
        }
    }
    qcow2_l2_after_data(s);
    uint64_t fill = sc_range((uint32_t)(from >> s->subcluster_bits),
                             (uint32_t)DIV_ROUND_UP(to, (uint64_t)s->subcluster_size));
    uint64_t nbitmap = whole ? QCOW2_L2_BITMAP_ALL_ALLOC
                             : (((bitmap & QCOW2_L2_BITMAP_ALL_ALLOC) | fill) |
                                ((bitmap >> 32) & ~fill) << 32);
    if (new_cluster && !whole) {
        nbitmap &= ~(QCOW2_L2_BITMAP_ALL_ALLOC & ~fill);   /* nothing else is in it */
    }
    qcow2_set_l2_bitmap(s, slice, in_slice, nbitmap);
    qcow2_set_l2_entry(s, slice, in_slice, host | QCOW2_OFLAG_COPIED);
    meta_cache_mark_dirty(s->l2_cache, slice);
    published(s);
    if (whole && !qcow2_has_data_file(s)) {
        ret = meta_cache_flush(s->l2_cache);
        if (ret == 0) {
            ret = qcow2_free_old_entry(bs, e);
        }
    }
    *bytes = len;
put:
    if (slice) {
        meta_cache_put(s->l2_cache, slice);
    }
unlock:
    co_mutex_unlock(&s->lock);
    return ret;
}

/*
 * With metadata-write-through (what `ublkd add` asks for), before an
 * allocating write completes the metadata it changed goes into the image
 * file: a completed write must read back even if the daemon is killed next (`ublkd recover` serves the image anew, from the file), as it
 * does for raw and vdi.  Not durable - that is flush's job - but in the
 * order a flush keeps: refcount blocks written, then the file flushed
 * (with the request's data, copy-on-write bytes included), then the L2
 * slices.  So an L2 entry never reaches the disk before the cluster it
 * names is counted and written, whenever power fails.
 *
 * Rounds are a group commit: one runs at a time, without the lock across
 * the flush; a request waits for the first round that began after its
 * entries were published, so the requests in flight share the writes and
 * the flush.  Entries published while a round flushes make its L2 write
 * flush once more first (their data must be durable too).
 */
static int coroutine_fn write_through_metadata(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t seq, l2_seq, gen;
    int ret;

    co_mutex_lock(&s->lock);
    uint64_t mine = s->publish_gen;
    for (;;) {
        if (s->sync_done_gen >= mine) {
            ret = s->sync_done_ret;
            co_mutex_unlock(&s->lock);
            return ret;
        }
        if (!s->sync_running) {
            break;
        }
        co_queue_wait(&s->sync_wait, &s->lock);
    }
    s->sync_running = true;
    gen = s->publish_gen;
    ret = meta_cache_write_back(s->refcount_cache);
    seq = meta_cache_write_seq(s->refcount_cache);
    l2_seq = meta_cache_write_seq(s->l2_cache);
    co_mutex_unlock(&s->lock);
    if (ret == 0 && s->data_file != bs->file) {
        ret = bdrv_co_flush(s->data_file->bs);
    }
    if (ret == 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    co_mutex_lock(&s->lock);
    if (ret == 0) {
        meta_cache_flushed_since(s->refcount_cache, seq, false);
        /* The data of every entry published before the flush began is
         * durable: if none was published since, no flush is needed first. */
        meta_cache_flushed_since(s->l2_cache, l2_seq, s->publish_gen == gen);
        ret = meta_cache_write_back(s->l2_cache);
    }
    s->sync_running = false;
    s->sync_done_gen = gen;
    s->sync_done_ret = ret;
    co_queue_restart_all(&s->sync_wait);
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    bool allocated = false;

    (void)flags;
    qcow2_note_guest_change(s);
    qcow2_bitmaps_note(s, offset, bytes);
    while (bytes > 0) {
        uint64_t n = (uint64_t)bytes, host;
        Qcow2SubclusterType type;
        bool copied;
        int ret = qcow2_get_host_offset_copied(bs, (uint64_t)offset, &n, &host, &type, &copied);
        if (ret < 0) {
            return ret;
        }
        if (type == QCOW2_SC_NORMAL && copied) {
            /* The tables at fixed places cost three compares to guard; the
             * others are checked when clusters are handed out. */
            if (!qcow2_has_data_file(s) &&
                (((s->overlap_check & QCOW2_OL_MAIN_HEADER) && host < s->cluster_size) ||
                 ((s->overlap_check & QCOW2_OL_ACTIVE_L1) &&
                  host < s->h.l1_table_offset + (uint64_t)s->l1_size * 8 &&
                  s->h.l1_table_offset < host + n) ||
                 ((s->overlap_check & QCOW2_OL_REFCOUNT_TABLE) &&
                  host < s->h.refcount_table_offset + (uint64_t)s->refcount_table_size * 8 &&
                  s->h.refcount_table_offset < host + n))) {
                co_mutex_lock(&s->lock);
                bool hit = qcow2_overlaps_metadata(bs, host, n, 0);
                co_mutex_unlock(&s->lock);
                if (hit) {
                    return -EIO;
                }
            }
            ret = s->crypto ? qcow2_crypto_pwritev(bs, host, (uint64_t)offset, n, qiov,
                                                   qiov_offset)
                            : bdrv_co_pwritev_part(s->data_file, (int64_t)host, (int64_t)n,
                                                   qiov, qiov_offset, 0);
        } else if (qcow2_has_subclusters(s)) {
            n = (uint64_t)bytes;
            ret = write_subclusters(bs, (uint64_t)offset, &n, qiov, qiov_offset);
            if (ret == 1) {
                continue;
            }
            allocated = true;
        } else {
            ret = write_allocating(bs, (uint64_t)offset, &n, qiov, qiov_offset);
            if (ret == 1) {
                continue;             /* allocated meanwhile: in place now */
            }
            allocated = true;
        }
        if (ret < 0) {
            return ret;
        }
        offset += (int64_t)n;
        bytes -= (int64_t)n;
        qiov_offset += n;
    }
    return allocated && s->write_through ? write_through_metadata(bs) : 0;
}

/* At a clean close: caches written and flushed, then the dirty bit goes. */
int coroutine_fn qcow2_mark_clean(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (!s->writable || !(s->h.incompat & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    co_mutex_lock(&s->lock);
    int ret = meta_cache_flush(s->refcount_cache);
    if (ret == 0) {
        ret = meta_cache_flush(s->l2_cache);
    }
    if (ret == 0) {
        ret = qcow2_write_header_field(bs, QH_INCOMPAT, s->h.incompat & ~QCOW2_INCOMPAT_DIRTY);
    }
    if (ret == 0) {
        s->h.incompat &= ~QCOW2_INCOMPAT_DIRTY;
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_co_flush_to_os(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (!s->writable) {
        return 0;
    }
    co_mutex_lock(&s->lock);
    int ret = meta_cache_write_back(s->l2_cache);
    if (ret == 0) {
        ret = meta_cache_write_back(s->refcount_cache);
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

/*
 * Zero writes and discards of whole clusters (QEMU's zero_in_l2_slice and
 * discard_in_l2_slice): L2 entries first, then the refcounts of clusters
 * given up, once no L2 entry on disk points at them.  A freed cluster is
 * discarded in the file too.
 */
/* Q2_DISCARD_FULL: entries become 0 whatever was there (QEMU's
 * full_discard, for clusters past the end after a shrink). */
typedef enum { Q2_ZERO, Q2_ZERO_UNMAP, Q2_DISCARD, Q2_DISCARD_FULL } Qcow2ClearMode;

/* only_if_not_data (zeroes, one cluster, not extended L2): -ENOTSUP if the
 * cluster holds data, checked under the lock with the change (the caller
 * saw its other bytes read as zeros). */
static int coroutine_fn clear_clusters_if(BlockDriverState *bs, uint64_t offset, uint64_t bytes,
                                          Qcow2ClearMode mode, bool only_if_not_data)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t old[QCOW2_L2_SLICE_BYTES / 8];
    int ret = 0;

    qcow2_note_guest_change(s);
    co_mutex_lock(&s->lock);
    ret = qcow2_mark_dirty(bs);
    while (bytes && ret == 0) {
        uint64_t first = offset >> s->cluster_bits;
        uint64_t l1_index = offset >> (s->l2_bits + s->cluster_bits);
        uint32_t l2_index = (uint32_t)(first & ((1ULL << s->l2_bits) - 1));
        uint32_t in_slice = l2_index & (s->l2_slice_entries - 1);
        uint64_t nb = MIN(bytes >> s->cluster_bits, (uint64_t)(s->l2_slice_entries - in_slice));
        uint64_t nb_old = 0;
        uint64_t *slice;

        while (qcow2_alloc_overlaps(s, first, nb)) {
            co_queue_wait(&s->alloc_wait, &s->lock);
        }
        if (l1_index >= s->l1_size) {
            ret = -EIO;
            break;
        }
        uint64_t l2_offset = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
        if (!l2_offset) {
            if ((mode == Q2_DISCARD && !bs->backing) || mode == Q2_DISCARD_FULL) {
                goto next;                  /* unallocated already */
            }
            ret = qcow2_l2_allocate(bs, l1_index);
            if (ret < 0) {
                break;
            }
            l2_offset = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
        } else if (!(s->l1_table[l1_index] & QCOW2_OFLAG_COPIED)) {
            ret = qcow2_l2_cow(bs, l1_index);  /* shared with a snapshot */
            if (ret < 0) {
                break;
            }
            l2_offset = s->l1_table[l1_index] & QCOW2_L1E_OFFSET_MASK;
        }
        if (qcow2_overlaps_metadata(bs, l2_offset, s->cluster_size, l2_offset)) {
            ret = -EIO;
            break;
        }
        ret = meta_cache_get(s->l2_cache, (int64_t)(l2_offset + (uint64_t)(l2_index - in_slice) *
                                                                s->l2_entry_size),
                             (void **)&slice);
        if (ret < 0) {
            break;
        }
        if (only_if_not_data) {
            uint64_t e = be64toh(slice[in_slice * (s->l2_entry_size / 8)]);
            if ((e & QCOW2_OFLAG_COMPRESSED) ||
                (((e & QCOW2_L2E_OFFSET_MASK) ||
                  (qcow2_has_data_file(s) && (e & QCOW2_OFLAG_COPIED))) &&
                 !(e & QCOW2_OFLAG_ZERO))) {
                meta_cache_put(s->l2_cache, slice);
                ret = -ENOTSUP;
                break;
            }
        }
        for (uint64_t i = 0; i < nb; i++) {
            uint64_t e = be64toh(slice[(in_slice + i) * (s->l2_entry_size / 8)]);
            bool compressed = e & QCOW2_OFLAG_COMPRESSED;
            bool allocated = compressed || (e & QCOW2_L2E_OFFSET_MASK) ||
                             (qcow2_has_data_file(s) && (e & QCOW2_OFLAG_COPIED));
            uint64_t ne, obm = 0, nbm = 0;
            if (qcow2_has_subclusters(s)) {
                get_l2(s, slice, in_slice + (uint32_t)i, &obm);
                if (mode == Q2_DISCARD_FULL) {
                    if (!e && !obm) {
                        continue;
                    }
                    qcow2_set_l2_bitmap(s, slice, in_slice + (uint32_t)i, 0);
                    qcow2_set_l2_entry(s, slice, in_slice + (uint32_t)i, 0);
                    if (allocated) {
                        old[nb_old++] = e;
                    }
                    continue;
                }
                bool unmap = mode == Q2_DISCARD || compressed ||
                             (mode == Q2_ZERO_UNMAP && allocated);
                if (mode == Q2_DISCARD && !bs->backing && !allocated) {
                    continue;
                }
                ne = unmap || mode == Q2_DISCARD_FULL ? 0 : e;
                /* every subcluster zero (full discard: nothing at all) */
                nbm = mode == Q2_DISCARD_FULL ? 0 : QCOW2_L2_BITMAP_ALL_ALLOC << 32;
                if (ne == e && nbm == obm) {
                    continue;
                }
                qcow2_set_l2_bitmap(s, slice, in_slice + (uint32_t)i, nbm);
                qcow2_set_l2_entry(s, slice, in_slice + (uint32_t)i, ne);
                if (allocated && !(ne & QCOW2_L2E_OFFSET_MASK) && !(ne & QCOW2_OFLAG_COPIED)) {
                    old[nb_old++] = e;
                }
                continue;
            }
            if (mode == Q2_DISCARD_FULL) {
                ne = 0;                     /* falls through to the backing file */
            } else if (mode == Q2_DISCARD) {
                /* reads as zeros, or falls through to nothing on v2 */
                ne = (bs->backing || allocated) ? (s->h.version >= 3 ? QCOW2_OFLAG_ZERO : 0) : e;
            } else {
                bool unmap = compressed || (mode == Q2_ZERO_UNMAP && allocated);
                ne = (unmap ? 0 : e) | QCOW2_OFLAG_ZERO;
            }
            if (ne == e) {
                continue;
            }
            qcow2_set_l2_entry(s, slice, in_slice + (uint32_t)i, ne);
            if (allocated && !(ne & QCOW2_L2E_OFFSET_MASK)) {
                old[nb_old++] = e;
            }
        }
        meta_cache_mark_dirty(s->l2_cache, slice);
        meta_cache_put(s->l2_cache, slice);
        if (nb_old) {
            ret = meta_cache_flush(s->l2_cache);
            for (uint64_t i = 0; ret == 0 && i < nb_old; i++) {
                if (qcow2_has_data_file(s)) {
                    /* nothing counts data-file clusters: the data file forgets it */
                    if (s->discard_passthrough) {
                        bdrv_co_pdiscard(s->data_file,
                                         (int64_t)(old[i] & QCOW2_L2E_OFFSET_MASK),
                                         s->cluster_size);
                    }
                    continue;
                }
                ret = qcow2_free_old_entry(bs, old[i]);
                if (ret == 0 && s->discard_passthrough && !(old[i] & QCOW2_OFLAG_COMPRESSED)) {
                    uint64_t rc;
                    uint64_t host = old[i] & QCOW2_L2E_OFFSET_MASK;
                    if (qcow2_get_refcount(bs, host >> s->cluster_bits, &rc) == 0 && !rc) {
                        bdrv_co_pdiscard(bs->file, (int64_t)host, s->cluster_size);
                    }
                }
            }
        }
next:
        offset += nb << s->cluster_bits;
        bytes -= nb << s->cluster_bits;
    }
    if (ret == 0 && s->write_through) {
        /* into the file before completing, as for writes (write_through_metadata):
         * zeroed L2 entries need no ordering, freed refcounts follow the L2
         * tables that dropped them (their cache dependency) */
        ret = meta_cache_write_back(s->l2_cache);
        if (ret == 0) {
            ret = meta_cache_write_back(s->refcount_cache);
        }
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

static int coroutine_fn clear_clusters(BlockDriverState *bs, uint64_t offset, uint64_t bytes,
                                       Qcow2ClearMode mode)
{
    return clear_clusters_if(bs, offset, bytes, mode, false);
}

/*
 * Extended L2: subclusters [offset, offset + bytes) of one cluster, fewer
 * than all of them, read as zeros from now on (QEMU's zero_l2_subclusters):
 * their zero bits set and allocation bits cleared in the L2 bitmap.  The
 * entry keeps its host cluster (unallocated stays unallocated): nothing is
 * written or freed, so no ordering against data or refcounts.  A compressed
 * cluster cannot be zeroed in part: -ENOTSUP, and the request path writes
 * zeros, which copies the cluster (write_subclusters).  A request that
 * allocates in the cluster is waited for: it publishes a bitmap computed
 * from the one it saw.  only_if_not_data: -ENOTSUP if any of them is
 * allocated (the caller saw it read as zeros or as the backing file).
 */
static int coroutine_fn zero_subclusters(BlockDriverState *bs, uint64_t offset, uint64_t bytes,
                                         bool only_if_not_data)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t sc = (uint32_t)(qcow2_offset_into_cluster(s, offset) >> s->subcluster_bits);
    uint32_t nb = (uint32_t)(bytes >> s->subcluster_bits);
    uint64_t *slice = NULL, bitmap;
    uint32_t in_slice;
    int ret;

    qcow2_note_guest_change(s);
    ret = lock_cluster_l2(bs, offset, &slice, &in_slice);
    if (ret < 0) {
        goto unlock;
    }
    uint64_t e = get_l2(s, slice, in_slice, &bitmap);
    if (e & QCOW2_OFLAG_COMPRESSED) {
        ret = -ENOTSUP;
        goto put;
    }
    uint64_t range = sc_range(sc, sc + nb);
    if (only_if_not_data && (bitmap & range)) {
        ret = -ENOTSUP;             /* allocated meanwhile: its other bytes are data */
        goto put;
    }
    uint64_t nbitmap = (bitmap | range << 32) & ~range;
    if (nbitmap != bitmap) {
        qcow2_set_l2_bitmap(s, slice, in_slice, nbitmap);
        meta_cache_mark_dirty(s->l2_cache, slice);
    }
put:
    meta_cache_put(s->l2_cache, slice);
    if (ret == 0 && s->write_through) {
        ret = meta_cache_write_back(s->l2_cache);   /* as clear_clusters */
    }
unlock:
    co_mutex_unlock(&s->lock);
    return ret;
}

/* QEMU's is_zero: [offset, offset + bytes), clamped to the image, reads as
 * zeros by block status (through the backing chain). */
static bool coroutine_fn reads_as_zero(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    int64_t len = bdrv_getlength(bs);
    if (len < 0) {
        return false;
    }
    bytes = MIN(bytes, len - offset);
    while (bytes > 0) {
        int64_t pnum = 0;
        int ret = bdrv_co_block_status_above(bs, NULL, offset, bytes, &pnum, NULL, NULL, NULL);
        if (ret < 0 || !(ret & BDRV_BLOCK_ZERO) || pnum <= 0) {
            return false;
        }
        offset += pnum;
        bytes -= pnum;
    }
    return true;
}

/*
 * QEMU's qcow2_co_pwrite_zeroes and qcow2_subcluster_zeroize: whole
 * clusters through clear_clusters; on extended L2 images the subclusters
 * of a partial cluster at either end get their zero bits.  What is not
 * aligned to that (a cluster, a subcluster) is -ENOTSUP, and the request
 * path writes zeros instead; pwrite_zeroes_alignment (qcow2_refresh_limits)
 * makes it split requests there (an unaligned piece stays inside one
 * subcluster).  The order (head, whole clusters, tail)
 * is QEMU's, so a compressed cluster at the tail leaves the same image.
 */
int coroutine_fn qcow2_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                        BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    uint64_t align = qcow2_has_subclusters(s) ? s->subcluster_size : cs;
    Qcow2ClearMode mode = (flags & BDRV_REQ_MAY_UNMAP) ? Q2_ZERO_UNMAP : Q2_ZERO;
    uint64_t start = (uint64_t)offset, end = (uint64_t)(offset + bytes);
    int ret;

    qcow2_bitmaps_note(s, offset, bytes);
    /* v2 has no zero flag and a raw data file must hold the zeros itself:
     * the request path writes zeros there instead. */
    if (qcow2_data_file_is_raw(s) || s->h.version < 3) {
        return -ENOTSUP;
    }
    /* at the end of the image the last, partial cluster is all ours */
    bool at_end = (int64_t)end == bdrv_getlength(bs);
    if (start % align || (end % align && !at_end)) {
        /* A part of one subcluster (a cluster without extended L2) whose
         * other bytes read as zeros zeroes all of it, as QEMU does, unless
         * it holds data (looked at again under the lock). */
        uint64_t sc_start = ALIGN_DOWN(start, align);
        uint64_t sc_end = sc_start + align;
        if (end > sc_end ||
            !reads_as_zero(bs, (int64_t)sc_start, (int64_t)(start - sc_start)) ||
            (!at_end && !reads_as_zero(bs, (int64_t)end, (int64_t)(sc_end - end)))) {
            return -ENOTSUP;
        }
        return qcow2_has_subclusters(s) ? zero_subclusters(bs, sc_start, align, true)
                                        : clear_clusters_if(bs, sc_start, align, mode, true);
    }
    if (start % cs) {
        uint64_t head_end = MIN(ALIGN_UP(end, align), ALIGN_UP(start, cs));
        ret = zero_subclusters(bs, start, head_end - start, false);
        if (ret < 0) {
            return ret;
        }
        start = head_end;
    }
    uint64_t whole_end = at_end ? ALIGN_UP(end, cs) : ALIGN_DOWN(end, cs);
    if (whole_end > start) {
        ret = clear_clusters(bs, start, whole_end - start, mode);
        if (ret < 0) {
            return ret;
        }
        start = whole_end;
    }
    if (!at_end && end > start) {
        return zero_subclusters(bs, start, end - start, false);
    }
    return 0;
}

int coroutine_fn qcow2_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;

    if (qcow2_offset_into_cluster(s, (uint64_t)(offset | bytes))) {
        if (qcow2_offset_into_cluster(s, (uint64_t)offset) ||
            offset + bytes != bdrv_getlength(bs)) {
            return -ENOTSUP;            /* partial clusters are left alone */
        }
        bytes = (int64_t)ALIGN_UP((uint64_t)bytes, (uint64_t)s->cluster_size);
    }
    if (s->h.version < 3) {
        /* no zero flag: only clusters that fall through to nothing */
        if (bs->backing) {
            return -ENOTSUP;
        }
    }
    return clear_clusters(bs, (uint64_t)offset, (uint64_t)bytes, Q2_DISCARD);
}

int coroutine_fn qcow2_discard_full(BlockDriverState *bs, uint64_t offset, uint64_t bytes)
{
    BDRVQcow2State *s = bs->opaque;
    return clear_clusters(bs, offset, ALIGN_UP(bytes, (uint64_t)s->cluster_size),
                          Q2_DISCARD_FULL);
}

int coroutine_fn qcow2_zero_clusters(BlockDriverState *bs, uint64_t offset, uint64_t bytes,
                                     bool unmap)
{
    return clear_clusters(bs, offset, bytes, unmap ? Q2_ZERO_UNMAP : Q2_ZERO);
}
