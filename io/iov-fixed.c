/*
 * iov-fixed.c - copying between mapped memory and registered-buffer
 * references, through the ring.
 *
 * io_uring has no memcpy operation.  What a ring can do with a registered
 * buffer is READ_FIXED into it and WRITE_FIXED out of it, on any file.  So
 * each thread keeps a staging file: a memfd, mapped shared into our address
 * space and cut into slots.  Into a reference: memcpy into a slot, then
 * READ_FIXED from the memfd at that slot into the reference.  Out of one:
 * WRITE_FIXED the reference into the slot, then memcpy out of the mapping.
 * Both are page-cache copies on tmpfs and never wait for a device.  Zeroing
 * reads from slot 0, which is never written and so stays a hole.
 *
 * A slot is held across one ring op by one coroutine; the coroutine resumes
 * on the ring's thread (its completion runs there), so the per-thread state
 * needs no lock.  The memfd is sparse: memory is what the busiest moment
 * touched, at most STAGE_SLOTS * STAGE_SLOT per thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "aio.h"
#include "iov-fixed.h"

#define STAGE_SLOT  (128 * 1024)
#define STAGE_SLOTS 512                  /* slot 0 is the zero hole */

typedef struct Stage {
    int fd;
    char *map;
    int nfree;
    unsigned short free[STAGE_SLOTS];
} Stage;

static __thread Stage *stage_tls;
static uint64_t ref_copies;

uint64_t iov_fixed_copy_count(void)
{
    return __atomic_load_n(&ref_copies, __ATOMIC_RELAXED);
}
static pthread_key_t stage_key;
static pthread_once_t stage_once = PTHREAD_ONCE_INIT;

static void stage_free(void *opaque)
{
    Stage *st = opaque;
    munmap(st->map, (size_t)STAGE_SLOTS * STAGE_SLOT);
    close(st->fd);
    free(st);
}

static void stage_key_init(void)
{
    pthread_key_create(&stage_key, stage_free);
}

/* Out of line: a coroutine may run on another thread after a yield, and must
 * read this thread's pointer, not a cached one (see block-io.c's bounce pool). */
static __attribute__((noinline)) int stage_get(Stage **out)
{
    Stage *st = stage_tls;
    __asm__ volatile("" : : : "memory");
    if (st) {
        *out = st;
        return 0;
    }
    pthread_once(&stage_once, stage_key_init);
    st = calloc(1, sizeof(*st));
    if (!st) {
        return -ENOMEM;
    }
    size_t size = (size_t)STAGE_SLOTS * STAGE_SLOT;
    st->fd = memfd_create("ublkd-stage", MFD_CLOEXEC);
    if (st->fd < 0 || ftruncate(st->fd, (off_t)size) < 0) {
        int err = errno;
        if (st->fd >= 0) {
            close(st->fd);
        }
        free(st);
        return -err;
    }
    st->map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, st->fd, 0);
    if (st->map == MAP_FAILED) {
        int err = errno;
        close(st->fd);
        free(st);
        return -err;
    }
    for (int i = STAGE_SLOTS - 1; i >= 1; i--) {
        st->free[st->nfree++] = (unsigned short)i;
    }
    pthread_setspecific(stage_key, st);
    stage_tls = st;
    *out = st;
    return 0;
}

/* One ring op between a reference and the memfd at off; loops over short
 * transfers (a tmpfs read or write can stop at a page boundary only in
 * theory, but a short count must not become a silent hole). */
static int coroutine_fn stage_op(int fd, bool into_ref, void *ref, size_t len, int64_t off)
{
    size_t done = 0;
    while (done < len) {
        struct iovec iov = { (char *)ref + done, len - done };
        ssize_t n = into_ref ? aio_co_preadv(fd, &iov, 1, off + (int64_t)done)
                             : aio_co_pwritev(fd, &iov, 1, off + (int64_t)done, 0);
        if (n == -EINTR || n == -EAGAIN) {
            continue;
        }
        if (n <= 0) {
            return n < 0 ? (int)n : -EIO;
        }
        done += (size_t)n;
    }
    return 0;
}

typedef enum { COPY_TO_BUF, COPY_FROM_BUF, COPY_ZERO } CopyDir;

/* One reference element, [ref, ref+len), in STAGE_SLOT pieces. */
static int coroutine_fn ref_copy(CopyDir dir, void *ref, char *buf, size_t len)
{
    Stage *st;
    int ret = stage_get(&st);
    if (ret < 0) {
        return ret;
    }
    if (dir == COPY_ZERO) {
        for (size_t pos = 0; pos < len && ret == 0; pos += STAGE_SLOT) {
            ret = stage_op(st->fd, true, (char *)ref + pos, MIN((size_t)STAGE_SLOT, len - pos), 0);
        }
        return ret;
    }
    if (!st->nfree) {
        return -EBUSY;    /* STAGE_SLOTS copies at once on one thread: not a ublk queue */
    }
    unsigned slot = st->free[--st->nfree];
    int64_t off = (int64_t)slot * STAGE_SLOT;
    char *p = st->map + off;
    for (size_t pos = 0; pos < len && ret == 0; pos += STAGE_SLOT) {
        size_t n = MIN((size_t)STAGE_SLOT, len - pos);
        if (dir == COPY_FROM_BUF) {
            memcpy(p, buf + pos, n);
            ret = stage_op(st->fd, true, (char *)ref + pos, n, off);
        } else {
            ret = stage_op(st->fd, false, (char *)ref + pos, n, off);
            if (ret == 0) {
                memcpy(buf + pos, p, n);
            }
        }
    }
    st->free[st->nfree++] = (unsigned short)slot;
    return ret;
}

static int coroutine_fn iov_co_copy(CopyDir dir, const IOVector *q, size_t offset, char *buf,
                                    size_t len)
{
    for (int i = 0; i < q->niov && len > 0; i++) {
        size_t l = q->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        char *piece = (char *)q->iov[i].iov_base + offset;
        size_t n = MIN(l - offset, len);
        if (iov_base_is_reg(piece)) {
            /* A shared line, but this is the slow path: a ring op or two. */
            __atomic_fetch_add(&ref_copies, 1, __ATOMIC_RELAXED);
            int ret = ref_copy(dir, piece, buf, n);
            if (ret < 0) {
                return ret;
            }
        } else if (dir == COPY_TO_BUF) {
            memcpy(buf, piece, n);
        } else if (dir == COPY_FROM_BUF) {
            memcpy(piece, buf, n);
        } else {
            buffer_zero(piece, n);
        }
        if (buf) {
            buf += n;
        }
        len -= n;
        offset = 0;
    }
    return len ? -EINVAL : 0;
}

int coroutine_fn iov_co_to_buf_slow(const IOVector *q, size_t offset, void *buf, size_t len)
{
    return iov_co_copy(COPY_TO_BUF, q, offset, buf, len);
}

int coroutine_fn iov_co_from_buf_slow(const IOVector *q, size_t offset, const void *buf,
                                      size_t len)
{
    return iov_co_copy(COPY_FROM_BUF, q, offset, (char *)buf, len);
}

int coroutine_fn iov_co_zero_slow(const IOVector *q, size_t offset, size_t len)
{
    return iov_co_copy(COPY_ZERO, q, offset, NULL, len);
}
