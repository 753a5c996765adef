/*
 * iov.c - IOVector: scatter/gather lists that point into callers' buffers.
 *
 * Storage modes (nalloc): 0 = the single inline element `local` (or empty),
 * >0 = an owned heap array that grows by doubling, -1 = an external array
 * the caller owns (read-only here).  Adjacent appends are merged, so a
 * slice of a slice of one buffer stays one element and never allocates.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif
#include "iov.h"

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "ublkd: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

void iov_init(IOVector *q, int alloc_hint)
{
    q->niov = 0;
    q->size = 0;
    if (alloc_hint > 1) {
        q->iov = xrealloc(NULL, (size_t)alloc_hint * sizeof(struct iovec));
        q->nalloc = alloc_hint;
    } else {
        q->iov = &q->local;
        q->nalloc = 0;
    }
}

void iov_init_buf(IOVector *q, void *buf, size_t len)
{
    q->local.iov_base = buf;
    q->local.iov_len = len;
    q->iov = &q->local;
    q->niov = 1;
    q->nalloc = 0;
    q->size = len;
}

void iov_init_external(IOVector *q, struct iovec *iov, int niov)
{
    q->iov = iov;
    q->niov = niov;
    q->nalloc = -1;
    q->size = iov_size(iov, niov);
}

/* Make room for one more element. */
static void iov_grow(IOVector *q)
{
    if (q->nalloc < 0) {
        fprintf(stderr, "ublkd: iov_add on an external IOVector\n");
        abort();
    }
    if (q->nalloc == 0) {
        if (q->niov == 0) {
            q->iov = &q->local;
            return;
        }
        struct iovec *a = xrealloc(NULL, 4 * sizeof(*a));
        a[0] = q->local;
        q->iov = a;
        q->nalloc = 4;
        return;
    }
    if (q->niov == q->nalloc) {
        q->nalloc *= 2;
        q->iov = xrealloc(q->iov, (size_t)q->nalloc * sizeof(struct iovec));
    }
}

void iov_add(IOVector *q, void *base, size_t len)
{
    if (len == 0) {
        return;
    }
    if (q->niov > 0) {
        struct iovec *last = &q->iov[q->niov - 1];
        if ((char *)last->iov_base + last->iov_len == (char *)base && q->nalloc >= 0) {
            last->iov_len += len;
            q->size += len;
            return;
        }
    }
    iov_grow(q);
    q->iov[q->niov].iov_base = base;
    q->iov[q->niov].iov_len = len;
    q->niov++;
    q->size += len;
}

void iov_add_reg(IOVector *q, unsigned ring_id, unsigned index, uint64_t offset, size_t len)
{
    /* Strictly below the limit: an end at the limit would equal the next
     * index's offset 0, and iov_add would merge the two. */
    if (index >= IOV_REG_INDEX_MAX || offset >= IOV_REG_OFFSET_LIMIT ||
        len >= IOV_REG_OFFSET_LIMIT - offset) {
        fprintf(stderr, "ublkd: registered buffer reference out of range (index %u, "
                "offset %llu, length %zu)\n", index, (unsigned long long)offset, len);
        abort();
    }
    iov_add(q, iov_reg_cookie(ring_id, index, offset), len);
}

IOVKind iov_kind(const IOVector *q, size_t offset, size_t len)
{
    unsigned kind = IOV_KIND_NONE;
    for (int i = 0; i < q->niov && len > 0; i++) {
        size_t l = q->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        kind |= iov_base_is_reg(q->iov[i].iov_base) ? IOV_KIND_REG : IOV_KIND_MAPPED;
        len -= MIN(l - offset, len);
        offset = 0;
    }
    return (IOVKind)kind;
}

void iov_concat(IOVector *q, const IOVector *src, size_t offset, size_t len)
{
    for (int i = 0; i < src->niov && len > 0; i++) {
        size_t l = src->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        size_t n = MIN(l - offset, len);
        iov_add(q, (char *)src->iov[i].iov_base + offset, n);
        offset = 0;
        len -= n;
    }
    if (len) {
        fprintf(stderr, "ublkd: iov_concat beyond the end of the source vector\n");
        abort();
    }
}

void iov_init_slice(IOVector *q, const IOVector *src, size_t offset, size_t len)
{
    iov_init(q, 0);
    iov_concat(q, src, offset, len);
}

struct iovec *iov_slice_array(const IOVector *src, size_t offset, size_t len,
                              struct iovec *stack, int nstack, int *niov)
{
    int i = 0, n = 0;
    while (i < src->niov && offset >= src->iov[i].iov_len) {
        offset -= src->iov[i++].iov_len;
    }
    size_t left = len, o = offset;
    for (int k = i; k < src->niov && left; k++, n++) {
        left -= MIN(left, src->iov[k].iov_len - o);
        o = 0;
    }
    /* Rare (many segments): one allocation rather than a wrong answer. */
    struct iovec *v = n <= nstack ? stack : malloc((size_t)n * sizeof(*v));
    if (!v) {
        return NULL;
    }
    left = len;
    for (int k = 0; k < n; k++, i++) {
        size_t l = MIN(left, src->iov[i].iov_len - offset);
        v[k].iov_base = (char *)src->iov[i].iov_base + offset;
        v[k].iov_len = l;
        left -= l;
        offset = 0;
    }
    *niov = n;
    return v;
}

void iov_reset(IOVector *q)
{
    if (q->nalloc < 0) {
        fprintf(stderr, "ublkd: iov_reset on an external IOVector\n");
        abort();
    }
    q->niov = 0;
    q->size = 0;
}

void iov_destroy(IOVector *q)
{
    if (q->nalloc > 0) {
        free(q->iov);
    }
    q->iov = &q->local;
    q->niov = 0;
    q->nalloc = 0;
    q->size = 0;
}

static __attribute__((noreturn, cold)) void iov_reg_touched(void)
{
    /* A layer that needs the bytes got a reference instead of a bounce
     * (io/iov-fixed.c): a bug, and memcpy on the cookie would fault anyway. */
    fprintf(stderr, "ublkd: byte access to a registered (unmapped) buffer reference\n");
    abort();
}

/* Walk [offset, offset+len) of q, calling fn on each piece; returns bytes. */
#define IOV_WALK(q, offset, len, piece, plen, body) ({                      \
    size_t _done = 0, _off = (offset), _len = (len);                        \
    for (int _i = 0; _i < (q)->niov && _done < _len; _i++) {               \
        size_t _l = (q)->iov[_i].iov_len;                                   \
        if (_off >= _l) {                                                   \
            _off -= _l;                                                     \
            continue;                                                       \
        }                                                                   \
        char *piece = (char *)(q)->iov[_i].iov_base + _off;                 \
        if (unlikely(iov_base_is_reg(piece))) {                             \
            iov_reg_touched();                                              \
        }                                                                   \
        size_t plen = MIN(_l - _off, _len - _done);                         \
        body;                                                               \
        _done += plen;                                                      \
        _off = 0;                                                           \
    }                                                                       \
    _done; })

size_t iov_to_buf(const IOVector *q, size_t offset, void *buf, size_t len)
{
    char *b = buf;
    return IOV_WALK(q, offset, len, p, n, (memcpy(b, p, n), b += n));
}

size_t iov_from_buf(const IOVector *q, size_t offset, const void *buf, size_t len)
{
    const char *b = buf;
    return IOV_WALK(q, offset, len, p, n, (memcpy(p, b, n), b += n));
}

/*
 * Zero-filling request-sized buffers (null reads, zeros past EOF) is on the
 * I/O path.  glibc picks `rep stosb` for these sizes, which costs a few ns
 * per byte under an emulating hypervisor (QEMU TCG: 4 us for 4 KiB, against
 * 0.3 us for this loop); on hardware both are a few dozen cycles.  The asm
 * keeps the compiler from turning the loop back into a memset call.
 */
void buffer_zero(void *buf, size_t len)
{
#if defined(__x86_64__)
    if (len >= 16 && len <= 65536) {
        char *p = buf, *end = p + len;
        const __m128i z = _mm_setzero_si128();
        _mm_storeu_si128((__m128i *)p, z);
        char *a = (char *)(((uintptr_t)p + 16) & ~(uintptr_t)15);
        for (; end - a >= 64; a += 64) {
            __asm__("" : "+r"(a));
            _mm_store_si128((__m128i *)a, z);
            _mm_store_si128((__m128i *)(a + 16), z);
            _mm_store_si128((__m128i *)(a + 32), z);
            _mm_store_si128((__m128i *)(a + 48), z);
        }
        for (; end - a >= 16; a += 16) {
            __asm__("" : "+r"(a));
            _mm_store_si128((__m128i *)a, z);
        }
        _mm_storeu_si128((__m128i *)(end - 16), z);
        return;
    }
#endif
    memset(buf, 0, len);
}

size_t iov_memset(const IOVector *q, size_t offset, int c, size_t len)
{
    if (c == 0) {
        return IOV_WALK(q, offset, len, p, n, buffer_zero(p, n));
    }
    return IOV_WALK(q, offset, len, p, n, memset(p, c, n));
}

bool iov_is_zero(const IOVector *q, size_t offset, size_t len)
{
    bool zero = true;
    IOV_WALK(q, offset, len, p, n, if (zero && !buffer_is_zero(p, n)) zero = false);
    return zero;
}

size_t iov_size(const struct iovec *iov, int niov)
{
    size_t s = 0;
    for (int i = 0; i < niov; i++) {
        s += iov[i].iov_len;
    }
    return s;
}

bool buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    if (len < 64) {
        for (size_t i = 0; i < len; i++) {
            if (p[i]) {
                return false;
            }
        }
        return true;
    }
    /* If the first 16 bytes are zero and every byte equals the one 16
     * before it, all are zero; memcmp is vectorised by libc. */
    static const unsigned char zero16[16];
    return !memcmp(p, zero16, 16) && !memcmp(p, p + 16, len - 16);
}

void *aligned_alloc_or_die(size_t align, size_t size)
{
    void *p = NULL;
    if (align < sizeof(void *)) {
        align = sizeof(void *);
    }
    int ret = posix_memalign(&p, align, size ? size : align);
    if (ret) {
        fprintf(stderr, "ublkd: out of memory (%zu bytes aligned to %zu)\n", size, align);
        abort();
    }
    return p;
}
