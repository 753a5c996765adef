/*
 * qcow2-compress.c - compressed clusters: raw deflate (zlib, window 2^12,
 * no header) or zstd frames, one guest cluster each, stored as a run of
 * 512-byte sectors at any byte offset of the image file (so a compressed
 * cluster may cross host clusters and end past the end of the file; the
 * part past the end reads as zeros, as in QEMU).
 *
 * The bytes are decompressed into a bounce (Qcow2Bounce) taken from a free
 * list under a short mutex: buffers and decompression contexts are made the
 * first time they are needed and reused, so reads allocate nothing once
 * the list holds as many as are used at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>
#ifdef CONFIG_ZSTD
#include <zstd.h>
#endif
#include "qcow2-int.h"

Qcow2Bounce *qcow2_bounce_get(BDRVQcow2State *s)
{
    pthread_mutex_lock(&s->bounce_lock);
    Qcow2Bounce *b = s->bounce_free;
    if (b) {
        s->bounce_free = b->next;
    }
    pthread_mutex_unlock(&s->bounce_lock);
    if (b) {
        return b;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        return NULL;
    }
    b->in_len = 2 * (size_t)s->cluster_size;
    b->out_len = s->cluster_size;
    b->plaintext = s->crypto != NULL;
    size_t align = 4096;
    if (b->plaintext) {
        /* COW heads and tails of an encrypted image are decrypted here:
         * whole pages, so that MADV_DONTDUMP covers them and nothing else */
        align = MAX(align, (size_t)sysconf(_SC_PAGESIZE));
        b->in_len = ALIGN_UP(b->in_len, align);
        b->out_len = ALIGN_UP(b->out_len, align);
    }
    if (posix_memalign((void **)&b->in, align, b->in_len) ||
        posix_memalign((void **)&b->out, align, b->out_len)) {
        free(b->in);
        free(b);
        return NULL;
    }
    if (b->plaintext) {
        madvise(b->in, b->in_len, MADV_DONTDUMP);
        madvise(b->out, b->out_len, MADV_DONTDUMP);
    }
    return b;
}

void qcow2_bounce_put(BDRVQcow2State *s, Qcow2Bounce *b)
{
    pthread_mutex_lock(&s->bounce_lock);
    b->next = s->bounce_free;
    s->bounce_free = b;
    pthread_mutex_unlock(&s->bounce_lock);
}

void qcow2_bounce_free_all(BDRVQcow2State *s)
{
    while (s->bounce_free) {
        Qcow2Bounce *b = s->bounce_free;
        s->bounce_free = b->next;
        if (b->zlib) {
            inflateEnd(b->zlib);
            free(b->zlib);
        }
#ifdef CONFIG_ZSTD
        ZSTD_freeDCtx(b->zstd);
#endif
        qcow2_bounce_free_compressors(b);
        if (b->plaintext) {
            explicit_bzero(b->in, b->in_len);
            explicit_bzero(b->out, b->out_len);
            madvise(b->in, b->in_len, MADV_DODUMP);     /* the heap may reuse the pages */
            madvise(b->out, b->out_len, MADV_DODUMP);
        }
        free(b->in);
        free(b->out);
        free(b);
    }
}

static int inflate_cluster(Qcow2Bounce *b, size_t in_len, uint8_t *out, size_t out_len)
{
    z_stream *strm = b->zlib;
    if (!strm) {
        strm = calloc(1, sizeof(*strm));
        if (!strm) {
            return -ENOMEM;
        }
        if (inflateInit2(strm, -12) != Z_OK) {
            free(strm);
            return -ENOMEM;
        }
        b->zlib = strm;
    } else if (inflateReset(strm) != Z_OK) {
        return -EIO;
    }
    strm->next_in = b->in;
    strm->avail_in = (uInt)in_len;
    strm->next_out = out;
    strm->avail_out = (uInt)out_len;
    int ret = inflate(strm, Z_FINISH);
    /* The sectors hold padding after the stream; only a full cluster counts. */
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && strm->avail_out == 0) {
        return 0;
    }
    return -EIO;
}

static int zstd_cluster(Qcow2Bounce *b, size_t in_len, uint8_t *out, size_t out_len)
{
#ifdef CONFIG_ZSTD
    if (!b->zstd) {
        b->zstd = ZSTD_createDCtx();
        if (!b->zstd) {
            return -ENOMEM;
        }
    } else {
        ZSTD_DCtx_reset(b->zstd, ZSTD_reset_session_only);
    }
    ZSTD_outBuffer output = { out, out_len, 0 };
    ZSTD_inBuffer input = { b->in, in_len, 0 };
    size_t zret = 0;
    while (output.pos < output.size) {
        size_t last_in = input.pos, last_out = output.pos;
        zret = ZSTD_decompressStream(b->zstd, &output, &input);
        if (ZSTD_isError(zret)) {
            return -EIO;
        }
        if (last_in >= input.pos && last_out >= output.pos) {
            return -EIO;          /* no progress: truncated or damaged */
        }
    }
    /* A frame that goes on past a full cluster is damaged. */
    return zret > 0 ? -EIO : 0;
#else
    (void)b, (void)in_len, (void)out, (void)out_len;
    return -ENOTSUP;
#endif
}

int coroutine_fn qcow2_read_compressed(BlockDriverState *bs, uint64_t l2e, Qcow2Bounce *b)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t coffset = l2e & s->cluster_offset_mask;
    uint64_t nb_csectors = ((l2e >> s->csize_shift) & s->csize_mask) + 1;
    uint64_t csize = nb_csectors * 512 - (coffset & 511);
    int64_t file_len = bdrv_getlength(bs->file->bs);
    IOVector qiov;
    int ret;

    if (file_len < 0) {
        return (int)file_len;
    }
    uint64_t avail = coffset < (uint64_t)file_len ? MIN(csize, (uint64_t)file_len - coffset) : 0;
    if (avail) {
        iov_init_buf(&qiov, b->in, avail);
        ret = bdrv_co_preadv(bs->file, (int64_t)coffset, (int64_t)avail, &qiov, 0);
        if (ret < 0) {
            return ret;
        }
    }
    memset(b->in + avail, 0, csize - avail);
    if (s->h.compression_type == QCOW2_COMPRESSION_ZSTD) {
        return zstd_cluster(b, csize, b->out, s->cluster_size);
    }
    return inflate_cluster(b, csize, b->out, s->cluster_size);
}
