/*
 * rbd-int.h - the Ceph RBD protocol driver's shared state (drivers/rbd*.c).
 *
 * rbd.c opens the cluster and the image (options, filename, errors), creates,
 * resizes and describes images; rbd-io.c moves data through librbd's AIO API
 * and answers block status; rbd-name.c parses QEMU's `rbd:` filenames and is
 * pure, so the unit tests cover it without a cluster.  rbd-lib.c loads
 * librbd and librados on the first open or create: linked, those two C++
 * libraries were most of every ublkd process's start-up, rbd or not.
 */
#ifndef UBLKD_RBD_INT_H
#define UBLKD_RBD_INT_H

#include <rados/librados.h>
#include <rbd/librbd.h>
#include "block-driver.h"

/*
 * Every librados/librbd function the driver calls, which library has it, and
 * one table of pointers to them typed from the libraries' own headers.  The
 * driver calls them as rbdlib.rbd_open(...); rbdlib is filled by
 * rbd_lib_load(), which every path to the cluster (rbd_connect: open and
 * create) calls first, so nothing reaches the table before it is loaded.
 */
#define RBD_LIB_RADOS_SYMBOLS(X) \
    X(rados_create) X(rados_conf_set) X(rados_conf_get) X(rados_conf_read_file) \
    X(rados_connect) X(rados_shutdown) X(rados_ioctx_create) X(rados_ioctx_destroy) \
    X(rados_ioctx_set_namespace)
#define RBD_LIB_RBD_SYMBOLS(X) \
    X(rbd_open) X(rbd_open_read_only) X(rbd_close) X(rbd_get_size) X(rbd_stat) \
    X(rbd_get_features) X(rbd_get_flags) X(rbd_resize) X(rbd_diff_iterate2) \
    X(rbd_image_options_create) X(rbd_image_options_destroy) \
    X(rbd_image_options_set_uint64) X(rbd_create4) \
    X(rbd_aio_create_completion) X(rbd_aio_get_return_value) X(rbd_aio_release) \
    X(rbd_aio_readv) X(rbd_aio_writev) X(rbd_aio_discard) X(rbd_aio_write_zeroes) \
    X(rbd_aio_flush)

typedef struct RbdLib {
#define RBD_LIB_MEMBER(fn) __typeof__(fn) *fn;
    RBD_LIB_RADOS_SYMBOLS(RBD_LIB_MEMBER)
    RBD_LIB_RBD_SYMBOLS(RBD_LIB_MEMBER)
#undef RBD_LIB_MEMBER
} RbdLib;

/* The sonames loaded; fixed, never from the environment or an option: the
 * daemon runs as root. */
#define RBD_LIB_RADOS_SONAME "librados.so.2"
#define RBD_LIB_RBD_SONAME "librbd.so.1"

extern RbdLib rbdlib;

/* Load both libraries into rbdlib, once per process (thread-safe); later
 * calls return the first one's result.  0, or -ELIBACC with errp set
 * ("rbd: cannot load librbd.so.1 (...): install Debian's librbd1"). */
int rbd_lib_load(Error **errp);

/* rbd_lib_load's work with the sonames given, into *lib: for the unit tests
 * (a missing library fails cleanly).  On failure *lib is zeroed and nothing
 * stays loaded that this call loaded. */
int rbd_lib_load_from(RbdLib *lib, const char *rados_soname, const char *rbd_soname,
                      Error **errp);

/* What an `rbd:pool/[namespace/]image[@snap][:key=value]...` name says
 * (QEMU 7.2's syntax; '\' escapes the next character).  Missing parts are
 * NULL; "id" becomes user, "conf" conf, every other key=value pair is a
 * Ceph configuration option, set in the order given. */
typedef struct RbdSpec {
    char *pool, *ns, *image, *snap, *conf, *user;
    char **keys, **values;
    int nkv;
} RbdSpec;

/* 0, or -EINVAL with errp set (QEMU's words where it has them). */
int rbd_parse_filename(const char *filename, RbdSpec *spec, Error **errp);
void rbd_spec_free(RbdSpec *spec);

typedef struct RbdState {
    rados_t cluster;
    rados_ioctx_t io;
    rbd_image_t image;
    RbdSpec spec;            /* what was opened (image, snap, ...) */
    bool image_open;
    bool opened_rw;          /* rbd_open (may write), not rbd_open_read_only */
    rbd_image_t reopen_image;  /* the writable handle a reopen prepared */
    bool reopen_pending;
    uint64_t object_size;
    /* The image's size as this node last set or saw it (atomic); growing
     * writes resize under grow_lock so that two never shrink each other. */
    int64_t size;
    CoMutex grow_lock;
    bool grow_lock_init;
} RbdState;

/* rbd_resize to size on the helper thread; updates s->size.  Under grow_lock. */
int coroutine_fn rbd_co_resize(RbdState *s, int64_t size);

/* rbd-io.c */
int coroutine_fn rbd_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                               IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn rbd_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn rbd_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      BdrvRequestFlags flags);
int coroutine_fn rbd_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes);
int coroutine_fn rbd_co_flush(BlockDriverState *bs);
int coroutine_fn rbd_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                                     int64_t bytes, int64_t *pnum, int64_t *map,
                                     BlockDriverState **file);
/* Run fn(opaque) (a blocking librbd call) on a thread of its own while the
 * calling coroutine yields, so no event loop waits for the cluster: for the
 * synchronous calls librbd has no AIO form of (resize, diff iterate).
 * Returns fn's result, or -errno if no thread could be started. */
int coroutine_fn rbd_co_run_blocking(int (*fn)(void *opaque), void *opaque);

#endif
