/*
 * qcow2-compress-write.c - compressed writes (QEMU's
 * qcow2_co_pwritev_compressed_part): `img convert -c`, `img io write -c`.
 *
 * Each guest cluster is compressed as the image's compression type says
 * (raw deflate with QEMU's parameters, or one zstd frame), into at most a
 * cluster minus one byte; a cluster that does not shrink that far is
 * written the ordinary way.  The compressed bytes are packed after the
 * previous compressed cluster's (qcow2_alloc_bytes), so one host cluster
 * holds several and a compressed cluster may cross into the next.
 *
 * The order is an allocating write's (qcow2-write.c): under s->lock the
 * guest cluster is claimed (writers of it wait) and the bytes allocated
 * (refcounts up); the data goes out without the lock; under the lock again
 * the L2 entry is published, after the refcount blocks that count it and
 * after the compressed bytes (the file is flushed before the L2 write), and
 * what it pointed at before loses its references only once the L2 table
 * that dropped them is on disk.  Unlike QEMU (which fails with -EIO), an
 * allocated cluster may be overwritten compressed.  The request path
 * serialises the request against every overlapping one, so in-place
 * writers, which take no lock, never write into a cluster given up here.
 *
 * Buffers and compression contexts come with the bounces of
 * qcow2-compress.c: made on first use, reused after (deflateReset and
 * ZSTD_CCtx_reset keep the parameters, so the bytes are QEMU's).
 * Compression runs on the calling thread; only the tools write compressed.
 */
#include <errno.h>
#include <stdlib.h>
#include <zlib.h>
#ifdef CONFIG_ZSTD
#include <zstd.h>
#endif
#include "qcow2-int.h"

void qcow2_bounce_free_compressors(Qcow2Bounce *b)
{
    if (b->deflate) {
        deflateEnd(b->deflate);
        free(b->deflate);
        b->deflate = NULL;
    }
#ifdef CONFIG_ZSTD
    ZSTD_freeCCtx(b->zstd_c);
    b->zstd_c = NULL;
#endif
}

/* The compressed length, -ENOSPC when it does not fit in dst_len, -errno. */
static ssize_t deflate_cluster(Qcow2Bounce *b, const uint8_t *src, size_t len, uint8_t *dst,
                               size_t dst_len)
{
    z_stream *strm = b->deflate;
    if (!strm) {
        strm = calloc(1, sizeof(*strm));
        if (!strm) {
            return -ENOMEM;
        }
        /* QEMU's: default level, 4 KiB window, no zlib header, memLevel 9 */
        if (deflateInit2(strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            free(strm);
            return -ENOMEM;
        }
        b->deflate = strm;
    } else if (deflateReset(strm) != Z_OK) {
        return -EIO;
    }
    strm->next_in = (Bytef *)src;
    strm->avail_in = (uInt)len;
    strm->next_out = dst;
    strm->avail_out = (uInt)dst_len;
    int ret = deflate(strm, Z_FINISH);
    if (ret == Z_STREAM_END) {
        return (ssize_t)(dst_len - strm->avail_out);
    }
    return ret == Z_OK || ret == Z_BUF_ERROR ? -ENOSPC : -EIO;
}

static ssize_t zstd_compress_cluster(Qcow2Bounce *b, const uint8_t *src, size_t len,
                                     uint8_t *dst, size_t dst_len)
{
#ifdef CONFIG_ZSTD
    if (!b->zstd_c) {
        b->zstd_c = ZSTD_createCCtx();
        if (!b->zstd_c) {
            return -ENOMEM;
        }
    } else {
        ZSTD_CCtx_reset(b->zstd_c, ZSTD_reset_session_only);
    }
    ZSTD_outBuffer output = { dst, dst_len, 0 };
    ZSTD_inBuffer input = { src, len, 0 };
    /* One call, as QEMU: anything but 0 (done) means the frame did not fit
     * (or an error, which QEMU too answers with an ordinary write). */
    size_t zret = ZSTD_compressStream2(b->zstd_c, &output, &input, ZSTD_e_end);
    return zret ? -ENOSPC : (ssize_t)output.pos;
#else
    (void)b, (void)src, (void)len, (void)dst, (void)dst_len;
    return -ENOTSUP;
#endif
}

/*
 * Store zlen compressed bytes as guest cluster `cluster`.  The steps and
 * their order are in the comment at the top.
 */
static int coroutine_fn store_compressed(BlockDriverState *bs, uint64_t cluster,
                                         const uint8_t *z, size_t zlen)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Alloc alloc = { .first = cluster, .nb = 1 };
    uint64_t *slice = NULL;
    uint32_t in_slice;
    int64_t host;
    int ret;

    co_mutex_lock(&s->lock);
    while (qcow2_alloc_overlaps(s, cluster, 1)) {
        co_queue_wait(&s->alloc_wait, &s->lock);
    }
    ret = qcow2_mark_dirty(bs);
    if (ret == 0) {
        ret = qcow2_l2_slice_for_write(bs, cluster << s->cluster_bits, &slice, &in_slice);
    }
    if (ret < 0) {
        goto unlock;
    }
    host = qcow2_alloc_bytes(bs, zlen);
    if (host < 0) {
        ret = (int)host;
        goto put;
    }
    alloc.next = s->allocs;
    s->allocs = &alloc;
    /* No cache entry is held across data I/O (release_slice_for_data in
     * qcow2-write.c says why); looked up again to publish. */
    meta_cache_put(s->l2_cache, slice);
    slice = NULL;
    co_mutex_unlock(&s->lock);

    IOVector v;
    iov_init_buf(&v, (void *)z, zlen);
    ret = bdrv_co_pwritev(bs->file, host, (int64_t)zlen, &v, 0);

    co_mutex_lock(&s->lock);
    qcow2_alloc_end(s, &alloc);
    if (ret == 0) {
        ret = qcow2_l2_slice_for_write(bs, cluster << s->cluster_bits, &slice, &in_slice);
    }
    if (ret == 0) {
        ret = qcow2_l2_after_refcounts(s);
    }
    if (ret < 0) {
        qcow2_update_refcount(bs, (uint64_t)host, zlen, true);
        goto put;
    }
    /* the compressed bytes reach the disk before the entry that names them:
     * without, a crash can leave an entry over sectors never written, and
     * the cluster reads -EIO */
    qcow2_l2_after_data(s);
    /* Additional 512-byte sectors after the first, as the entry counts them. */
    uint64_t nb_csectors = ((uint64_t)host + zlen - 1) / 512 - (uint64_t)host / 512;
    uint64_t old = be64toh(slice[in_slice * (s->l2_entry_size / 8)]);
    qcow2_set_l2_bitmap(s, slice, in_slice, 0);
    qcow2_set_l2_entry(s, slice, in_slice,
                       (uint64_t)host | QCOW2_OFLAG_COMPRESSED | (nb_csectors << s->csize_shift));
    meta_cache_mark_dirty(s->l2_cache, slice);
    if (old & (QCOW2_OFLAG_COMPRESSED | QCOW2_L2E_OFFSET_MASK)) {
        /* reused only once no L2 entry on disk points at it */
        ret = meta_cache_flush(s->l2_cache);
        if (ret == 0) {
            ret = qcow2_free_old_entry(bs, old);
        }
    }
put:
    if (slice) {
        meta_cache_put(s->l2_cache, slice);
    }
unlock:
    co_mutex_unlock(&s->lock);
    return ret;
}

/* One guest cluster at offset: bytes of it from qiov (fewer than a cluster
 * only at the end of the image; the rest is zeros). */
static int coroutine_fn write_compressed_cluster(BlockDriverState *bs, uint64_t offset,
                                                 uint64_t bytes, IOVector *qiov,
                                                 size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Bounce *b = qcow2_bounce_get(s);
    ssize_t zlen;

    if (!b) {
        return -ENOMEM;
    }
    /* b->out: the cluster; b->in (two clusters): the compressed bytes */
    iov_to_buf(qiov, qiov_offset, b->out, bytes);
    memset(b->out + bytes, 0, s->cluster_size - bytes);
    if (s->h.compression_type == QCOW2_COMPRESSION_ZSTD) {
        zlen = zstd_compress_cluster(b, b->out, s->cluster_size, b->in, s->cluster_size - 1);
    } else {
        zlen = deflate_cluster(b, b->out, s->cluster_size, b->in, s->cluster_size - 1);
    }
    int ret;
    if (zlen == -ENOSPC) {
        qcow2_bounce_put(s, b);
        /* does not shrink: an ordinary write */
        return qcow2_co_pwritev(bs, (int64_t)offset, (int64_t)bytes, qiov, qiov_offset, 0);
    }
    ret = zlen < 0 ? (int)zlen
                   : store_compressed(bs, offset >> s->cluster_bits, b->in, (size_t)zlen);
    qcow2_bounce_put(s, b);
    return ret;
}

int coroutine_fn qcow2_co_pwritev_compressed(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                             IOVector *qiov, size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;

    qcow2_note_guest_change(s);
    qcow2_bitmaps_note(s, offset, bytes);
    /* An external data file holds clusters at their guest offsets;
     * compressed clusters are never encrypted (QEMU refuses both). */
    if (qcow2_has_data_file(s) || s->crypto) {
        return -ENOTSUP;
    }
    if (bytes == 0) {
        /* The end of a compressed output: the file ends on a sector, as
         * QEMU leaves it (the last compressed bytes may end anywhere). */
        int64_t len = bdrv_getlength(bs->file->bs);
        if (len < 0 || len % BDRV_SECTOR_SIZE == 0) {
            return len < 0 ? (int)len : 0;
        }
        return bdrv_co_truncate(bs->file, (int64_t)ALIGN_UP((uint64_t)len, BDRV_SECTOR_SIZE),
                                false, PREALLOC_MODE_OFF, 0, NULL);
    }
    if (qcow2_offset_into_cluster(s, (uint64_t)offset) ||
        (qcow2_offset_into_cluster(s, (uint64_t)bytes) && offset + bytes != bdrv_getlength(bs))) {
        return -EINVAL;
    }
    while (bytes > 0) {
        uint64_t chunk = MIN((uint64_t)bytes, (uint64_t)s->cluster_size);
        int ret = write_compressed_cluster(bs, (uint64_t)offset, chunk, qiov, qiov_offset);
        if (ret < 0) {
            return ret;
        }
        offset += (int64_t)chunk;
        bytes -= (int64_t)chunk;
        qiov_offset += chunk;
    }
    return 0;
}
