/*
 * rbd.c - the "rbd" protocol: a Ceph RBD image through librbd, as QEMU's
 * block/rbd.c.  Named `rbd:pool/[namespace/]image[@snap][:conf=PATH][:id=USER]`
 * (rbd-name.c) or by the options pool, namespace, image, snapshot, conf, user.
 *
 * Opening connects to the cluster on the opening thread (the control plane;
 * the mount timeout is capped so a dead cluster fails the open instead of
 * hanging it), then opens the image: read-only opens and snapshots with
 * rbd_open_read_only, which takes no exclusive lock, so `img info` works on
 * an image a device serves.  Snapshots are read-only: a read-write open of one
 * is refused.  Data I/O is in rbd-io.c.  librbd and librados are loaded on
 * the first connect (rbd-lib.c), so every call goes through rbdlib.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rbd-int.h"

/* A dead or unreachable cluster fails an open after this long instead of
 * librados' 300 s; a conf file or a `:client_mount_timeout=N` overrides it. */
#define RBD_DEFAULT_MOUNT_TIMEOUT "20"

static const char *spec_name(const RbdSpec *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s%s%s%s%s", s->pool, s->ns && *s->ns ? s->ns : "",
             s->ns && *s->ns ? "/" : "", s->image, s->snap ? "@" : "", s->snap ? s->snap : "");
    return buf;
}

/* Take option key into *field; a value the filename gave too must agree. */
static int take_opt(OptDict *options, const char *key, char **field, Error **errp)
{
    char *v = NULL;
    optdict_take_str(options, key, NULL, &v);
    if (!v) {
        return 0;
    }
    if (*field && strcmp(*field, v) != 0) {
        error_setg(errp, "rbd: option '%s' is '%s' but the filename says '%s'", key, v, *field);
        free(v);
        return -EINVAL;
    }
    free(*field);
    *field = v;
    return 0;
}

/* The spec from the filename (if any) and the options; checked complete. */
static int spec_from_options(OptDict *options, RbdSpec *spec, Error **errp)
{
    char *filename = NULL;
    memset(spec, 0, sizeof(*spec));
    optdict_take_str(options, "filename", NULL, &filename);
    if (filename && rbd_parse_filename(filename, spec, errp) < 0) {
        free(filename);
        return -EINVAL;
    }
    free(filename);
    static const char *const keys[] = { "pool", "namespace", "image", "snapshot", "conf", "user" };
    char **fields[] = { &spec->pool, &spec->ns, &spec->image, &spec->snap, &spec->conf,
                        &spec->user };
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        if (take_opt(options, keys[i], fields[i], errp) < 0) {
            rbd_spec_free(spec);
            return -EINVAL;
        }
    }
    const char *missing = !spec->pool || !*spec->pool ? "pool"
                          : !spec->image || !*spec->image ? "image"
                          : spec->snap && !*spec->snap ? "snapshot" : NULL;
    if (missing) {
        error_setg(errp, "rbd: no %s name given (rbd:pool/image[@snapshot], or the option "
                   "'%s')", missing, missing);
        rbd_spec_free(spec);
        return -EINVAL;
    }
    return 0;
}

/*
 * Connect to the cluster the spec names and open an I/O context on its pool
 * and namespace.  Blocking: open and create only.
 */
static int rbd_connect(const RbdSpec *spec, int flags, rados_t *cluster, rados_ioctx_t *io,
                       Error **errp)
{
    char name[1024];
    spec_name(spec, name, sizeof(name));
    int r = rbd_lib_load(errp);   /* the first use in this process loads librbd */
    if (r < 0) {
        return r;
    }
    r = rbdlib.rados_create(cluster, spec->user);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: cannot set up a cluster handle for '%s' (user '%s')",
                         name, spec->user ? spec->user : "admin");
        return r;
    }
    rbdlib.rados_conf_set(*cluster, "client_mount_timeout", RBD_DEFAULT_MOUNT_TIMEOUT);
    rbdlib.rados_conf_set(*cluster, "rados_mon_op_timeout", RBD_DEFAULT_MOUNT_TIMEOUT);
    if (spec->conf) {
        r = rbdlib.rados_conf_read_file(*cluster, spec->conf);
        if (r < 0) {
            error_setg_errno(errp, -r, "rbd: cannot read the Ceph configuration '%s' for '%s'",
                             spec->conf, name);
            goto fail;
        }
    } else {
        /* The default places ($CEPH_CONF, /etc/ceph/ceph.conf...); none is fine
         * when the options say enough (mon_host, key). */
        rbdlib.rados_conf_read_file(*cluster, NULL);
    }
    for (int i = 0; i < spec->nkv; i++) {
        r = rbdlib.rados_conf_set(*cluster, spec->keys[i], spec->values[i]);
        if (r < 0) {
            error_setg_errno(errp, -r, "rbd: cannot set the Ceph option '%s' to '%s' for '%s'",
                             spec->keys[i], spec->values[i], name);
            goto fail;
        }
    }
    /* QEMU's mapping: cache=none turns librbd's cache off, anything else
     * keeps what the configuration says. */
    if (flags & BDRV_O_NOCACHE) {
        rbdlib.rados_conf_set(*cluster, "rbd_cache", "false");
    }
    r = rbdlib.rados_connect(*cluster);
    if (r < 0) {
        char mon[256] = "";
        rbdlib.rados_conf_get(*cluster, "mon_host", mon, sizeof(mon));
        error_setg_errno(errp, -r, "rbd: cannot connect to the Ceph cluster (mon_host '%s', user "
                         "'%s'%s%s) for '%s'", mon, spec->user ? spec->user : "admin",
                         spec->conf ? ", conf " : "", spec->conf ? spec->conf : "", name);
        goto fail;
    }
    r = rbdlib.rados_ioctx_create(*cluster, spec->pool, io);
    if (r < 0) {
        if (r == -ENOENT) {
            error_setg(errp, "rbd: pool '%s' does not exist (opening '%s')", spec->pool, name);
        } else {
            error_setg_errno(errp, -r, "rbd: cannot open pool '%s' (opening '%s')", spec->pool,
                             name);
        }
        goto fail;
    }
    rbdlib.rados_ioctx_set_namespace(*io, spec->ns ? spec->ns : "");
    return 0;
fail:
    rbdlib.rados_shutdown(*cluster);
    *cluster = NULL;
    return r;
}

static void rbd_disconnect(rados_t cluster, rados_ioctx_t io)
{
    if (io) {
        rbdlib.rados_ioctx_destroy(io);
    }
    if (cluster) {
        rbdlib.rados_shutdown(cluster);
    }
}

static int rbd_open_bs(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    RbdState *s = bs->opaque;
    char name[1024];
    int r = spec_from_options(options, &s->spec, errp);
    if (r < 0) {
        return r;
    }
    const RbdSpec *spec = &s->spec;
    spec_name(spec, name, sizeof(name));
    if (spec->snap && (flags & BDRV_O_RDWR)) {
        error_setg(errp, "rbd: snapshot '%s' of %s/%s is read-only: open it read-only",
                   spec->snap, spec->pool, spec->image);
        r = -EROFS;
        goto fail;
    }
    r = rbd_connect(spec, flags, &s->cluster, &s->io, errp);
    if (r < 0) {
        goto fail;
    }
    s->opened_rw = flags & BDRV_O_RDWR;
    if (s->opened_rw) {
        r = rbdlib.rbd_open(s->io, spec->image, &s->image, NULL);
    } else {
        r = rbdlib.rbd_open_read_only(s->io, spec->image, &s->image, spec->snap);
    }
    if (r == -ENOENT && spec->snap) {
        /* The image or its snapshot?  Say which. */
        rbd_image_t probe;
        if (rbdlib.rbd_open_read_only(s->io, spec->image, &probe, NULL) == 0) {
            rbdlib.rbd_close(probe);
            error_setg(errp, "rbd: image %s/%s has no snapshot '%s'", spec->pool, spec->image,
                       spec->snap);
            goto fail;
        }
    }
    if (r < 0) {
        if (r == -ENOENT) {
            error_setg(errp, "rbd: image '%s' does not exist in pool '%s'%s%s", spec->image,
                       spec->pool, spec->ns && *spec->ns ? ", namespace " : "",
                       spec->ns && *spec->ns ? spec->ns : "");
        } else {
            error_setg_errno(errp, -r, "rbd: cannot open image '%s'", name);
        }
        goto fail;
    }
    s->image_open = true;
    uint64_t size;
    rbd_image_info_t info;
    r = rbdlib.rbd_get_size(s->image, &size);
    if (r == 0) {
        r = rbdlib.rbd_stat(s->image, &info, sizeof(info));
    }
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: cannot read the size of '%s'", name);
        goto fail;
    }
    s->object_size = info.obj_size;
    s->size = (int64_t)size;
    co_mutex_init(&s->grow_lock);
    s->grow_lock_init = true;
    /* Writes past the end grow the image, as in QEMU: a qcow2 on RBD
     * (img create -f qcow2 rbd:...) allocates at its end. */
    bs->growable = s->opened_rw;
    bdrv_set_total_bytes(bs, (int64_t)size);
    snprintf(bs->filename, sizeof(bs->filename), "rbd:%s", name);
    return 0;
fail:
    if (s->image_open) {
        rbdlib.rbd_close(s->image);
        s->image_open = false;
    }
    rbd_disconnect(s->cluster, s->io);
    s->cluster = NULL;
    s->io = NULL;
    rbd_spec_free(&s->spec);
    return r < 0 ? r : -EIO;
}

static void rbd_close_bs(BlockDriverState *bs)
{
    RbdState *s = bs->opaque;
    if (s->grow_lock_init) {
        co_mutex_destroy(&s->grow_lock);
    }
    if (s->image_open) {
        rbdlib.rbd_close(s->image);
    }
    rbd_disconnect(s->cluster, s->io);
    rbd_spec_free(&s->spec);
}

/*
 * A read-only handle (rbd_open_read_only) cannot write: going read-write
 * (img commit into an RBD base) opens a writable one in prepare, which
 * commit swaps in and abort drops.  A snapshot stays read-only.  Going
 * read-only keeps the handle: the block layer stops the writes.  bs is
 * drained, so no request uses the old handle when commit closes it.
 */
static int rbd_reopen_prepare(BlockDriverState *bs, int flags, Error **errp)
{
    RbdState *s = bs->opaque;
    char name[1024];
    if (!(flags & BDRV_O_RDWR) || s->opened_rw) {
        return 0;
    }
    spec_name(&s->spec, name, sizeof(name));
    if (s->spec.snap) {
        error_setg(errp, "rbd: snapshot '%s' of %s/%s is read-only", s->spec.snap,
                   s->spec.pool, s->spec.image);
        return -EROFS;
    }
    int r = rbdlib.rbd_open(s->io, s->spec.image, &s->reopen_image, NULL);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: cannot reopen '%s' read-write", name);
        return r;
    }
    s->reopen_pending = true;
    return 0;
}

static void rbd_reopen_commit(BlockDriverState *bs)
{
    RbdState *s = bs->opaque;
    if (s->reopen_pending) {
        rbdlib.rbd_close(s->image);
        s->image = s->reopen_image;
        s->opened_rw = true;
        bs->growable = true;
        s->reopen_pending = false;
    }
}

static void rbd_reopen_abort(BlockDriverState *bs)
{
    RbdState *s = bs->opaque;
    if (s->reopen_pending) {
        rbdlib.rbd_close(s->reopen_image);
        s->reopen_pending = false;
    }
}

static void rbd_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    RbdState *s = bs->opaque;
    /* librbd takes any offset and length; an object is the unit it
     * allocates and frees in, so discards are worth it only in whole ones. */
    bs->bl.request_alignment = 1;
    bs->bl.max_transfer = 1 * GiB;   /* a read's result is an int */
    bs->bl.opt_transfer = (uint32_t)MIN(s->object_size, UINT32_MAX);
    bs->bl.pdiscard_alignment = (uint32_t)MIN(s->object_size, UINT32_MAX);
    bs->bl.has_discard = true;
}

static int64_t rbd_getlength(BlockDriverState *bs)
{
    RbdState *s = bs->opaque;
    uint64_t size;
    int r = rbdlib.rbd_get_size(s->image, &size);
    return r < 0 ? r : (int64_t)size;
}

static int coroutine_fn rbd_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                        PreallocMode prealloc, BdrvRequestFlags flags,
                                        Error **errp)
{
    (void)exact;
    (void)flags;
    RbdState *s = bs->opaque;
    char name[1024];
    spec_name(&s->spec, name, sizeof(name));
    if (prealloc != PREALLOC_MODE_OFF) {
        /* QEMU's words */
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   prealloc == PREALLOC_MODE_METADATA ? "metadata"
                   : prealloc == PREALLOC_MODE_FALLOC ? "falloc" : "full");
        return -ENOTSUP;
    }
    if (bs->read_only) {
        error_setg(errp, "Cannot resize 'rbd:%s': it is open read-only", name);
        return -EPERM;
    }
    co_mutex_lock(&s->grow_lock);
    int r = rbd_co_resize(s, offset);
    co_mutex_unlock(&s->grow_lock);
    if (r < 0) {
        error_setg_errno(errp, -r, "rbd: cannot resize '%s' to %" PRId64 " bytes", name, offset);
        return r;
    }
    bdrv_set_total_bytes(bs, offset);
    return 0;
}

static int rbd_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    RbdState *s = bs->opaque;
    bdi->cluster_size = (int)MIN(s->object_size, (uint64_t)INT32_MAX);
    return 0;
}

static void rbd_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    RbdState *s = bs->opaque;
    uint64_t features = 0;
    image_info_add(info, "pool", "%s", s->spec.pool);
    if (s->spec.ns && *s->spec.ns) {
        image_info_add(info, "namespace", "%s", s->spec.ns);
    }
    image_info_add(info, "image", "%s", s->spec.image);
    if (s->spec.snap) {
        image_info_add(info, "snapshot", "%s", s->spec.snap);
    }
    image_info_add_int(info, "object-size", (int64_t)s->object_size);
    if (rbdlib.rbd_get_features(s->image, &features) == 0) {
        image_info_add_int(info, "features", (int64_t)features);
    }
}

static int rbd_has_zero_init(BlockDriverState *bs)
{
    (void)bs;
    return 1;   /* a new RBD image has no objects: it reads as zeros */
}

static int coroutine_fn rbd_co_create(const char *filename, OptDict *opts, Error **errp)
{
    uint64_t size, object_size;
    RbdSpec spec;
    char name[1024];
    if (optdict_take_size(opts, "size", 0, &size, errp) < 0 ||
        optdict_take_size(opts, "cluster_size", 0, &object_size, errp) < 0) {
        return -EINVAL;
    }
    if (object_size && (object_size < 4096 || object_size > 32 * MiB ||
                        (object_size & (object_size - 1)))) {
        error_setg(errp, "rbd: cluster_size (the object size) must be a power of two between "
                   "4 KiB and 32 MiB, not %" PRIu64, object_size);
        return -EINVAL;
    }
    /* The pool, image, conf... options of a -o or json: create go with the name. */
    OptDict *o = optdict_new();
    optdict_set(o, "filename", filename);
    static const char *const keys[] = { "pool", "namespace", "image", "conf", "user" };
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        char *v = NULL;
        optdict_take_str(opts, keys[i], NULL, &v);
        if (v) {
            optdict_set(o, keys[i], v);
            free(v);
        }
    }
    int r = spec_from_options(o, &spec, errp);
    optdict_free(o);
    if (r < 0) {
        return r;
    }
    if (optdict_check_empty(opts, "Block protocol 'rbd'", errp) < 0) {
        rbd_spec_free(&spec);
        return -EINVAL;
    }
    spec_name(&spec, name, sizeof(name));
    if (spec.snap) {
        error_setg(errp, "rbd: cannot create a snapshot ('%s'): create the image, then "
                   "`rbd snap create`", name);
        rbd_spec_free(&spec);
        return -EINVAL;
    }
    rados_t cluster = NULL;
    rados_ioctx_t io = NULL;
    r = rbd_connect(&spec, BDRV_O_RDWR, &cluster, &io, errp);
    if (r == 0) {
        rbd_image_options_t o2;
        rbdlib.rbd_image_options_create(&o2);
        if (object_size) {
            rbdlib.rbd_image_options_set_uint64(o2, RBD_IMAGE_OPTION_ORDER,
                                         (uint64_t)__builtin_ctzll(object_size));
        }
        r = rbdlib.rbd_create4(io, spec.image, size, o2);
        rbdlib.rbd_image_options_destroy(o2);
        if (r == -EEXIST) {
            error_setg(errp, "rbd: image '%s' already exists", name);
        } else if (r < 0) {
            error_setg_errno(errp, -r, "rbd: cannot create image '%s'", name);
        }
    }
    rbd_disconnect(cluster, io);
    rbd_spec_free(&spec);
    return r;
}

static const CreateOptDesc rbd_create_opts[] = {
    { "size", "size", "Virtual disk size", NULL },
    { "cluster_size", "size", "RBD object size", NULL },
    { NULL, NULL, NULL, NULL },
};

const BlockDriver bdrv_rbd = {
    .format_name = "rbd",
    .protocol_names = { "rbd" },
    .instance_size = sizeof(RbdState),
    .is_format = false,
    /* librbd reads and writes the buffers itself: no registered-buffer
     * references reach it. */
    .needs_mapped_data = true,
    .open = rbd_open_bs,
    .close = rbd_close_bs,
    .refresh_limits = rbd_refresh_limits,
    .reopen_prepare = rbd_reopen_prepare,
    .reopen_commit = rbd_reopen_commit,
    .reopen_abort = rbd_reopen_abort,
    .co_preadv = rbd_co_preadv,
    .co_pwritev = rbd_co_pwritev,
    .co_pwrite_zeroes = rbd_co_pwrite_zeroes,
    .co_pdiscard = rbd_co_pdiscard,
    .co_flush_to_disk = rbd_co_flush,
    .co_block_status = rbd_co_block_status,
    .co_truncate = rbd_co_truncate,
    .co_create = rbd_co_create,
    .create_opts = rbd_create_opts,
    .getlength = rbd_getlength,
    .get_info = rbd_get_info,
    .get_specific_info = rbd_get_specific_info,
    .has_zero_init = rbd_has_zero_init,
    .supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK,
};
