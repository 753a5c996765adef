/*
 * block-io-fixed.c - requests on registered-buffer references that a layer
 * must see the bytes of.
 *
 * References (include/iov.h) travel down the request path untouched as long
 * as every layer only passes them on: raw's window, filters, vdi's data
 * blocks, the file protocol's READ_FIXED/WRITE_FIXED.  Where a layer of this
 * node would look at or build bytes - padding to request_alignment (RMW, and
 * the head/tail of a padded read), detect-zeroes, copy-on-read, a driver
 * with needs_mapped_data - the whole request is done on a mapped bounce
 * buffer instead, and the bytes cross between bounce and references through
 * the ring (include/iov-fixed.h): before a write, after a successful read.
 * Deciding per request keeps the common aligned pass-through at one bit test
 * per element; doing the whole request keeps the rule simple (no layer below
 * sees a vector it could not use).
 */
#include <errno.h>
#include "block-io-int.h"
#include "iov-fixed.h"

static uint64_t mapped_bounces;

uint64_t bdrv_mapped_bounce_count(void)
{
    return __atomic_load_n(&mapped_bounces, __ATOMIC_RELAXED);
}

bool bdrv_graph_needs_mapped_data(BlockDriverState *bs)
{
    if (!bs || !bs->drv) {
        return false;
    }
    if (bs->drv->needs_mapped_data || bs->needs_mapped_data) {
        return true;
    }
    for (BdrvChild *c = bs->children; c; c = c->next) {
        if (bdrv_graph_needs_mapped_data(c->bs)) {
            return true;
        }
    }
    return false;
}

/* qiov holds references: must a layer of bs see the bytes? */
bool bdrv_layer_needs_bytes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                            BdrvRequestFlags flags, bool is_write)
{
    uint32_t align = bs->bl.request_alignment ? bs->bl.request_alignment : 1;
    if (bs->drv->needs_mapped_data || bs->needs_mapped_data || offset % align || bytes % align ||
        (flags & BDRV_REQ_WRITE_COMPRESSED)) {
        return true;
    }
    if (is_write) {
        /* detect-zeroes looks at every write it may turn into zeroes */
        return bs->detect_zeroes != BDRV_DETECT_ZEROES_OFF && bs->drv->co_pwrite_zeroes &&
               !(flags & BDRV_REQ_ZERO_WRITE);
    }
    /* copy-on-read writes what it read back into this node */
    return (flags & BDRV_REQ_COPY_ON_READ) || __atomic_load_n(&bs->copy_on_read, __ATOMIC_RELAXED) ||
           (bs->open_flags & BDRV_O_COPY_ON_READ);
}

int coroutine_fn bdrv_co_rw_mapped(BdrvChild *child, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags,
                                   bool is_write)
{
    BounceBuf bounce = { 0 };
    IOVector local;
    int ret;

    __atomic_fetch_add(&mapped_bounces, 1, __ATOMIC_RELAXED);
    /* From the per-thread cache up to 1 MiB, the usual ublk maximum. */
    void *buf = bdrv_bounce_get(child->bs, (size_t)bytes, &bounce);
    if (!buf) {
        return -ENOMEM;
    }
    iov_init_buf(&local, buf, (size_t)bytes);
    if (is_write) {
        ret = iov_co_to_buf(qiov, qiov_offset, local.iov[0].iov_base, (size_t)bytes);
        if (ret == 0) {
            ret = bdrv_co_pwritev_part(child, offset, bytes, &local, 0, flags);
        }
    } else {
        ret = bdrv_co_preadv_part(child, offset, bytes, &local, 0, flags);
        if (ret == 0) {
            ret = iov_co_from_buf(qiov, qiov_offset, local.iov[0].iov_base, (size_t)bytes);
        }
    }
    bdrv_bounce_put(&bounce);
    return ret;
}
