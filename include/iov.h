/*
 * iov.h - scatter/gather vectors (IOVector) and helpers.
 *
 * The request path passes data as an IOVector plus a byte offset into it
 * (qiov_offset), so splitting and padding never copy data: they build
 * sub-vectors that point into the caller's buffers.  An IOVector with one
 * element lives inline (no allocation), which covers the ublk per-tag buffer.
 */
#ifndef UBLKD_IOV_H
#define UBLKD_IOV_H

#include <sys/uio.h>
#include "compiler.h"

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
void iov_add(IOVector *q, void *base, size_t len);
/* Append the [offset, offset+len) part of src. */
void iov_concat(IOVector *q, const IOVector *src, size_t offset, size_t len);
void iov_reset(IOVector *q);                          /* niov = size = 0 */
void iov_destroy(IOVector *q);

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
