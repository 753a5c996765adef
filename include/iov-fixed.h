/*
 * iov-fixed.h - bytes in and out of registered-buffer references.
 *
 * A reference (include/iov.h) names bytes this process may not be able to
 * map, so memcpy cannot reach them.  The layers that must see or set the
 * bytes (padding, detect-zeroes, copy-on-read, zero-fill past EOF or of
 * unallocated blocks, drivers that flag needs_mapped_data) use these
 * instead of iov_to_buf/iov_from_buf/iov_memset: they do the same on mapped
 * elements and go through the current thread's ring for references, so
 * they must run on the thread of the ring that owns them (-EXDEV
 * otherwise).  0 or -errno.
 *
 * Direction: a ublk zero-copy buffer is readable by the ring for a WRITE
 * request and writable for a READ; iov_co_to_buf only reads a reference and
 * the other two only write one, which is what a bounce for each needs.
 */
#ifndef UBLKD_IOV_FIXED_H
#define UBLKD_IOV_FIXED_H

#include <errno.h>
#include "coroutine.h"
#include "iov.h"

/* Copies between mapped memory and references done so far (one per
 * reference element touched; all threads): the zero-copy statistics. */
uint64_t iov_fixed_copy_count(void);

int coroutine_fn iov_co_to_buf_slow(const IOVector *q, size_t offset, void *buf, size_t len);
int coroutine_fn iov_co_from_buf_slow(const IOVector *q, size_t offset, const void *buf,
                                      size_t len);
int coroutine_fn iov_co_zero_slow(const IOVector *q, size_t offset, size_t len);

/* Mapped vectors (null reads, zeros past EOF: per request) cost one bit
 * test more than the plain helpers. */
static inline int coroutine_fn iov_co_to_buf(const IOVector *q, size_t offset, void *buf,
                                             size_t len)
{
    if (likely(!iov_has_reg(q, offset, len))) {
        return iov_to_buf(q, offset, buf, len) == len ? 0 : -EINVAL;
    }
    return iov_co_to_buf_slow(q, offset, buf, len);
}

static inline int coroutine_fn iov_co_from_buf(const IOVector *q, size_t offset,
                                               const void *buf, size_t len)
{
    if (likely(!iov_has_reg(q, offset, len))) {
        return iov_from_buf(q, offset, buf, len) == len ? 0 : -EINVAL;
    }
    return iov_co_from_buf_slow(q, offset, buf, len);
}

static inline int coroutine_fn iov_co_zero(const IOVector *q, size_t offset, size_t len)
{
    if (likely(!iov_has_reg(q, offset, len))) {
        return iov_memset(q, offset, 0, len) == len ? 0 : -EINVAL;
    }
    return iov_co_zero_slow(q, offset, len);
}

#endif
