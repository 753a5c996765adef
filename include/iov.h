/*
 * iov.h - scatter/gather vectors (IOVector) and helpers.
 *
 * The request path passes data as an IOVector plus a byte offset into it
 * (qiov_offset), so splitting and padding never copy data: they build
 * sub-vectors that point into the caller's buffers.  An IOVector with one
 * element lives inline (no allocation), which covers the ublk per-tag buffer.
 *
 * An element is either mapped memory or a registered-buffer reference: bytes
 * in a buffer registered with one io_uring ring (by index), which this
 * process may not be able to map at all (ublk zero copy hands the daemon the
 * request's pages that way).  A reference is stored in the element's
 * iov_base as a cookie in the kernel half of the address space (bit 63 set),
 * which no user pointer ever is: ring id, buffer index and offset within the
 * registered buffer.  Offsets are the low bits, so slicing, splitting and
 * concatenation (base + n arithmetic, merging of adjacent elements) work on
 * references exactly as on pointers.  Only the ring op (io/aio.c prep with
 * READ_FIXED/WRITE_FIXED) may turn a reference into I/O, on the thread of
 * the ring that owns it; the byte helpers below (iov_to_buf, iov_memset...)
 * abort on a reference, and io/iov-fixed.c moves bytes to and from
 * references through the ring for the layers that must see them.
 */
#ifndef UBLKD_IOV_H
#define UBLKD_IOV_H

#include <stdint.h>
#include <sys/uio.h>
#include "compiler.h"

/* ---- registered-buffer references (see above) ---- */
_Static_assert(sizeof(void *) == 8, "references need 64-bit pointers");
#define IOV_REG_TAG          (UINT64_C(1) << 63)
#define IOV_REG_RING_SHIFT   47                   /* 16 bits: AioContext ring id */
#define IOV_REG_INDEX_SHIFT  33                   /* 14 bits: io_uring allows 16384 */
#define IOV_REG_INDEX_MAX    (1u << 14)
#define IOV_REG_OFFSET_LIMIT (UINT64_C(1) << 33)  /* offset + len stay below this (8 GiB) */

static inline bool iov_base_is_reg(const void *base)
{
    return (uintptr_t)base & IOV_REG_TAG;
}
static inline void *iov_reg_cookie(unsigned ring_id, unsigned index, uint64_t offset)
{
    return (void *)(uintptr_t)(IOV_REG_TAG | ((uint64_t)(ring_id & 0xffff) << IOV_REG_RING_SHIFT) |
                               ((uint64_t)index << IOV_REG_INDEX_SHIFT) | offset);
}
static inline unsigned iov_reg_ring(const void *base)
{
    return (unsigned)(((uintptr_t)base >> IOV_REG_RING_SHIFT) & 0xffff);
}
static inline unsigned iov_reg_index(const void *base)
{
    return (unsigned)(((uintptr_t)base >> IOV_REG_INDEX_SHIFT) & (IOV_REG_INDEX_MAX - 1));
}
static inline uint64_t iov_reg_offset(const void *base)
{
    return (uintptr_t)base & (IOV_REG_OFFSET_LIMIT - 1);
}

typedef struct IOVector {
    struct iovec *iov;
    int niov;
    int nalloc;          /* -1: iov is external (not owned), 0: inline local */
    size_t size;
    struct iovec local;  /* storage for the single-element case */
} IOVector;

void iov_init(IOVector *q, int alloc_hint);          /* owned, growable */
void iov_init_buf(IOVector *q, void *buf, size_t len); /* single inline element */
void iov_init_external(IOVector *q, struct iovec *iov, int niov);
/* q points at [offset, offset+len) of src; owns a small array if needed. */
void iov_init_slice(IOVector *q, const IOVector *src, size_t offset, size_t len);
/* [offset, offset+len) of src as a plain iovec array for a syscall or a
 * library: in stack (nstack entries) when it fits, else allocated (the
 * caller frees what is not stack); *niov entries.  NULL: out of memory. */
struct iovec *iov_slice_array(const IOVector *src, size_t offset, size_t len,
                              struct iovec *stack, int nstack, int *niov);
void iov_add(IOVector *q, void *base, size_t len);
/* Append a reference to [offset, offset+len) of buffer `index` registered
 * with the ring whose aio_ring_id() is ring_id.  Aborts past the offset
 * limit (a bug: no registered buffer is that large). */
void iov_add_reg(IOVector *q, unsigned ring_id, unsigned index, uint64_t offset, size_t len);

/* What [offset, offset+len) of q is made of. */
typedef enum IOVKind {
    IOV_KIND_NONE = 0,
    IOV_KIND_MAPPED = 1,
    IOV_KIND_REG = 2,
    IOV_KIND_MIXED = IOV_KIND_MAPPED | IOV_KIND_REG,
} IOVKind;
IOVKind iov_kind(const IOVector *q, size_t offset, size_t len);
/* Inline for the one-element vector every ublk request is: one bit test. */
static inline bool iov_has_reg(const IOVector *q, size_t offset, size_t len)
{
    if (likely(q->niov == 1)) {
        return len && iov_base_is_reg(q->iov[0].iov_base);
    }
    return iov_kind(q, offset, len) & IOV_KIND_REG;
}
/* Append the [offset, offset+len) part of src. */
void iov_concat(IOVector *q, const IOVector *src, size_t offset, size_t len);
void iov_reset(IOVector *q);                          /* niov = size = 0 */
void iov_destroy(IOVector *q);

/* These touch the bytes: mapped elements only (a reference aborts). */
size_t iov_to_buf(const IOVector *q, size_t offset, void *buf, size_t len);
size_t iov_from_buf(const IOVector *q, size_t offset, const void *buf, size_t len);
size_t iov_memset(const IOVector *q, size_t offset, int c, size_t len);
bool iov_is_zero(const IOVector *q, size_t offset, size_t len);
/* Plain-array forms. */
size_t iov_size(const struct iovec *iov, int niov);
bool buffer_is_zero(const void *buf, size_t len);
/* memset(buf, 0, len), cheaper than libc's under emulation (see iov.c). */
void buffer_zero(void *buf, size_t len);

/* Aligned allocation for O_DIRECT buffers (abort on OOM; free with free()). */
void *aligned_alloc_or_die(size_t align, size_t size);

#endif
