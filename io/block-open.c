/*
 * block-open.c - opening graphs: bdrv_open (filename, dotted options or
 * "json:{...}"), the generic per-node options (node-name, read-only, cache,
 * discard, detect-zeroes, copy-on-read), format probing, children and
 * backing files, leftover-option errors; plus image creation and check.
 *
 * Flags flow down: a child inherits its parent's RDWR/cache/discard flags,
 * a backing child is always read-only, and the file child of a format is
 * opened as a protocol (no probing below a format, as in QEMU).  Filters pass
 * protocol-ness down: the child of a filter under a format is a protocol too,
 * while a filter at the top lets its child be probed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "aio.h"
#include "block-int.h"

static int child_flags(const BlockDriverState *parent, BdrvChildRole role)
{
    int f = parent->open_flags & (BDRV_O_RDWR | BDRV_O_NOCACHE | BDRV_O_NO_FLUSH | BDRV_O_UNMAP |
                                  BDRV_O_FORCE_SHARE | BDRV_O_SHARE_WRITE);
    if (role & BDRV_CHILD_COW) {
        f &= ~BDRV_O_RDWR;
    } else if (parent->drv->is_format) {
        f |= BDRV_O_PROTOCOL;
    } else if (parent->drv->is_filter && (role & BDRV_CHILD_FILTERED)) {
        /* A filter is transparent: what sits under it is whatever its parent
         * expected there.  Under a format that is a protocol (raw over
         * blkdebug over x.vdi reads x.vdi's bytes); at the top it is probed. */
        f |= parent->open_flags & BDRV_O_PROTOCOL;
    }
    return f;
}

typedef struct GenericOpts {
    char *node_name;
    BdrvDetectZeroes detect_zeroes;
} GenericOpts;

/* Take the options every node understands; adjust *flags. */
static int take_generic_options(OptDict *options, int *flags, GenericOpts *g, Error **errp)
{
    static const char *const discard_modes[] = { "ignore", "off", "unmap", "on", NULL };
    static const char *const dz_modes[] = { "off", "on", "unmap", NULL };
    bool b;
    int ret;

    optdict_take_str(options, "node-name", NULL, &g->node_name);
    if (optdict_take_bool(options, "read-only", !(*flags & BDRV_O_RDWR), &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? *flags & ~BDRV_O_RDWR : *flags | BDRV_O_RDWR;

    char *mode;
    optdict_take_str(options, "cache", NULL, &mode);
    if (mode) {
        ret = bdrv_parse_cache_mode(mode, flags, errp);
        free(mode);
        if (ret < 0) {
            return ret;
        }
    }
    if (optdict_take_bool(options, "cache.direct", *flags & BDRV_O_NOCACHE, &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? *flags | BDRV_O_NOCACHE : *flags & ~BDRV_O_NOCACHE;
    if (optdict_take_bool(options, "cache.no-flush", *flags & BDRV_O_NO_FLUSH, &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? *flags | BDRV_O_NO_FLUSH : *flags & ~BDRV_O_NO_FLUSH;

    ret = optdict_take_enum(options, "discard", discard_modes,
                            (*flags & BDRV_O_UNMAP) ? 2 : 0, errp);
    if (ret < 0) {
        return ret;
    }
    *flags = ret >= 2 ? *flags | BDRV_O_UNMAP : *flags & ~BDRV_O_UNMAP;

    ret = optdict_take_enum(options, "detect-zeroes", dz_modes, 0, errp);
    if (ret < 0) {
        return ret;
    }
    g->detect_zeroes = (BdrvDetectZeroes)ret;
    if (g->detect_zeroes == BDRV_DETECT_ZEROES_UNMAP && !(*flags & BDRV_O_UNMAP)) {
        error_setg(errp, "detect-zeroes=unmap needs discard=unmap (zeroes can only be "
                   "unmapped where discards are)");
        return -EINVAL;
    }
    if (optdict_take_bool(options, "copy-on-read", false, &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? *flags | BDRV_O_COPY_ON_READ : *flags & ~BDRV_O_COPY_ON_READ;
    /* Inherited by children (child_flags); the file protocol acts on it. */
    if (optdict_take_bool(options, "force-share", *flags & BDRV_O_FORCE_SHARE, &b, errp) < 0) {
        return -EINVAL;
    }
    *flags = b ? *flags | BDRV_O_FORCE_SHARE : *flags & ~BDRV_O_FORCE_SHARE;
    if ((*flags & BDRV_O_FORCE_SHARE) && (*flags & BDRV_O_RDWR)) {
        error_setg(errp, "force-share=on can only be used with read-only images");
        return -EINVAL;
    }
    return 0;
}

/* The node's own options as given: everything not meant for a child. */
static OptDict *own_options(const OptDict *given, BlockDriverState *bs)
{
    OptDict *own = optdict_new();
    for (size_t i = 0; i < optdict_count(given); i++) {
        const char *key = optdict_key_at(given, i);
        bool child_key = !strcmp(key, "driver") || !strcmp(key, "backing") ||
                         !strncmp(key, "backing.", 8);
        for (BdrvChild *c = bs->children; c && !child_key; c = c->next) {
            size_t n = strlen(c->name);
            child_key = !strncmp(key, c->name, n) && (key[n] == '\0' || key[n] == '.');
        }
        if (!child_key) {
            optdict_set(own, key, optdict_value_at(given, i));
        }
    }
    return own;
}

/* Open bs (already created) with its driver; consumes nothing: the caller
 * frees options, whose leftovers are an error here. */
static int open_common(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    const BlockDriver *drv = bs->drv;
    bs->open_flags = flags;
    bs->read_only = !(flags & BDRV_O_RDWR);
    bs->copy_on_read = (flags & BDRV_O_COPY_ON_READ) ? 1 : 0;
    if (!drv->is_format && !drv->is_filter && optdict_get(options, "filename")) {
        snprintf(bs->filename, sizeof(bs->filename), "%s", optdict_get(options, "filename"));
    }
    OptDict *given = optdict_clone(options);
    int ret = drv->open ? drv->open(bs, options, flags, errp) : 0;
    if (ret < 0) {
        optdict_free(given);
        return ret;
    }
    bs->opened = true;
    if (drv->supports_backing && !(flags & BDRV_O_NO_BACKING)) {
        ret = bdrv_open_backing(bs, options, errp);
        if (ret < 0) {
            optdict_free(given);
            return ret;
        }
    }
    /* Until a parent attaches it, the node is its opener's: take what its
     * mode needs (the file protocol locks the image here). */
    ret = bdrv_refresh_perms(bs, errp);
    if (ret < 0) {
        optdict_free(given);
        return ret;
    }
    char what[96];
    snprintf(what, sizeof(what), "Block %s '%s'",
             drv->is_format || drv->is_filter ? "format" : "protocol", drv->format_name);
    ret = optdict_check_empty(options, what, errp);
    if (ret < 0) {
        optdict_free(given);
        return ret;
    }
    if (!bs->filename[0] && bs->file) {
        snprintf(bs->filename, sizeof(bs->filename), "%s", bs->file->bs->filename);
    }
    bs->own_options = own_options(given, bs);
    optdict_free(given);

    Error *local = NULL;
    bdrv_refresh_limits(bs, &local);
    if (local) {
        error_propagate(errp, local);
        return -EINVAL;
    }
    int64_t len = bdrv_getlength(bs);
    if (len >= 0) {
        bdrv_set_total_bytes(bs, len);
    }
    return 0;
}

static BlockDriverState *create_and_open(const BlockDriver *drv, GenericOpts *g, OptDict *options,
                                         int flags, bool probed, Error **errp)
{
    BlockDriverState *bs = bdrv_new_node(drv, g->node_name, errp);
    if (!bs) {
        return NULL;
    }
    bs->probed = probed;
    bs->detect_zeroes = g->detect_zeroes;
    if (open_common(bs, options, flags, errp) < 0) {
        bdrv_unref(bs);
        return NULL;
    }
    return bs;
}

BlockDriverState *bdrv_new_open_driver(const BlockDriver *drv, const char *node_name,
                                       int flags, OptDict *options, Error **errp)
{
    GenericOpts g = { .node_name = node_name ? strdup(node_name) : NULL };
    if (!options) {
        options = optdict_new();
    }
    BlockDriverState *bs = create_and_open(drv, &g, options, flags, false, errp);
    free(g.node_name);
    optdict_free(options);
    return bs;
}

/* Read the first bytes of bs through the request path and pick a format. */
static const BlockDriver *probe_node(BlockDriverState *bs, const char *name, Error **errp)
{
    int64_t len = bdrv_getlength(bs);
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not determine the size of '%s'", name);
        return NULL;
    }
    uint8_t *buf = aligned_alloc_or_die(4096, 4096);
    int n = (int)MIN(len, (int64_t)BLOCK_PROBE_BUF_SIZE);
    memset(buf, 0, BLOCK_PROBE_BUF_SIZE);
    BdrvChild probe = { .bs = bs, .name = (char *)"probe", .role = BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY,
                       .index = -1 };
    int ret = n ? bdrv_pread(&probe, 0, n, buf, 0) : 0;
    const BlockDriver *drv = NULL;
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read image for determining its format ('%s')",
                         name);
    } else {
        drv = bdrv_probe_buf(buf, n, name);
        if (!drv) {
            error_setg(errp, "Could not determine the image format of '%s': no driver "
                       "recognises it", name);
        }
    }
    free(buf);
    return drv;
}

BlockDriverState *bdrv_open(const char *filename, OptDict *options, int flags, Error **errp)
{
    BlockDriverState *bs = NULL, *probed_file = NULL;
    GenericOpts g = { 0 };
    char *fname = filename ? strdup(filename) : NULL, *drvname = NULL;
    const BlockDriver *drv = NULL;

    if (!options) {
        options = optdict_new();
    }
    if (fname && !strncmp(fname, "json:", 5)) {
        OptDict *json = optdict_parse_json(fname + 5, errp);
        if (!json) {
            goto out;
        }
        optdict_merge(options, json, false);   /* explicit options win */
        optdict_free(json);
        free(fname);
        fname = NULL;
    }
    if (take_generic_options(options, &flags, &g, errp) < 0) {
        goto out;
    }
    optdict_take_str(options, "driver", NULL, &drvname);
    if (drvname) {
        drv = bdrv_find_format(drvname);
        if (!drv) {
            error_setg(errp, "Unknown driver '%s'", drvname);
            goto out;
        }
    } else if (!fname && !optdict_has_prefix(options, "file.")) {
        optdict_take_str(options, "filename", NULL, &fname);
    }

    if (!drv && (flags & BDRV_O_PROTOCOL)) {
        drv = bdrv_find_protocol(fname ? fname : optdict_get(options, "filename"), errp);
        if (!drv) {
            goto out;
        }
    }
    if (!drv) {
        /* Probe: open what the format would sit on and look at its start. */
        const char *ref = optdict_get(options, "file");
        BlockDriverState *ref_bs = ref ? bdrv_find_node(ref) : NULL;
        if (ref_bs) {
            bdrv_ref(ref_bs);
            probed_file = ref_bs;
        } else if (fname || optdict_has_prefix(options, "file.")) {
            OptDict *file_opts = optdict_extract_prefix(options, "file.");
            char *ref_name = NULL;
            optdict_take_str(options, "file", NULL, &ref_name);   /* a file name, then */
            const char *child_fname = fname ? fname : ref_name;
            if (child_fname && !optdict_has(file_opts, "filename") &&
                !optdict_has(file_opts, "driver")) {
                optdict_set(file_opts, "filename", child_fname);
            }
            int pflags = (flags & (BDRV_O_RDWR | BDRV_O_NOCACHE | BDRV_O_NO_FLUSH |
                                   BDRV_O_UNMAP | BDRV_O_FORCE_SHARE | BDRV_O_SHARE_WRITE)) |
                         BDRV_O_PROTOCOL;
            probed_file = bdrv_open(NULL, file_opts, pflags, errp);
            free(ref_name);
            if (!probed_file) {
                goto out;
            }
        } else {
            error_setg(errp, "No driver given and no file name to probe the format of "
                       "(give driver=... or a file name)");
            goto out;
        }
        drv = probe_node(probed_file, probed_file->filename, errp);
        if (!drv) {
            goto out;
        }
        optdict_set(options, "file", probed_file->node_name);
        bs = create_and_open(drv, &g, options, flags, true, errp);
        goto out;
    }

    if (fname) {
        if (!drv->is_format && !drv->is_filter) {
            if (!optdict_has(options, "filename")) {
                optdict_set(options, "filename", fname);
            }
        } else if (!optdict_has_prefix(options, "file.")) {
            optdict_set(options, "file.filename", fname);
        }
    }
    bs = create_and_open(drv, &g, options, flags, false, errp);

out:
    bdrv_unref(probed_file);   /* the format's file edge holds its own */
    free(g.node_name);
    free(drvname);
    free(fname);
    optdict_free(options);
    return bs;
}

BdrvChild *bdrv_open_child(const char *filename, OptDict *options, const char *name,
                           BlockDriverState *parent, BdrvChildRole role, bool allow_none,
                           Error **errp)
{
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "%s.", name);
    OptDict *child_opts = optdict_extract_prefix(options, prefix);
    char *ref = NULL;
    optdict_take_str(options, name, NULL, &ref);
    BlockDriverState *child_bs = NULL;

    if (ref) {
        BlockDriverState *node = *ref ? bdrv_find_node(ref) : NULL;
        if (node) {
            if (optdict_count(child_opts)) {
                error_setg(errp, "Cannot reference an existing block device ('%s') with "
                           "additional options ('%s.%s')", ref, name,
                           optdict_key_at(child_opts, 0));
                goto fail;
            }
            bdrv_ref(node);
            child_bs = node;
        } else if (*ref) {
            filename = ref;    /* not a node name: a file name */
        }
    }
    if (!child_bs) {
        if (!filename && optdict_count(child_opts) == 0) {
            if (allow_none) {
                free(ref);
                optdict_free(child_opts);
                return NULL;
            }
            error_setg(errp, "A block device must be specified for \"%s\"", name);
            goto fail;
        }
        child_bs = bdrv_open(filename, child_opts, child_flags(parent, role), errp);
        child_opts = NULL;
        if (!child_bs) {
            goto fail;
        }
    }
    free(ref);
    optdict_free(child_opts);
    BdrvChild *c = bdrv_attach_child(parent, child_bs, name, role, errp);
    if (c && (role & BDRV_CHILD_PRIMARY) && !parent->filename[0]) {
        /* Formats name their file in messages while still opening. */
        snprintf(parent->filename, sizeof(parent->filename), "%s", child_bs->filename);
    }
    return c;

fail:
    free(ref);
    optdict_free(child_opts);
    return NULL;
}

BlockDriverState *bdrv_open_for_child(BlockDriverState *parent, BdrvChildRole role,
                                      OptDict *options, Error **errp)
{
    return bdrv_open(NULL, options, child_flags(parent, role), errp);
}

/* backing_file relative to the image that names it, as QEMU resolves it. */
static char *backing_path(const BlockDriverState *bs)
{
    const char *b = bs->backing_file;
    const char *slash = strrchr(bs->filename, '/');
    char *path;
    if (b[0] == '/' || !strncmp(b, "json:", 5) || !slash || !strncmp(bs->filename, "json:", 5)) {
        path = strdup(b);
    } else if (asprintf(&path, "%.*s/%s", (int)(slash - bs->filename), bs->filename, b) < 0) {
        abort();
    }
    return path;
}

/*
 * The images whose backing files this thread is opening, innermost first.
 * A backing file that is one of them (same device and inode) would make
 * the chain a loop, and opening it would recurse until memory runs out
 * (qemu-img 7.2 does): it is refused.
 */
typedef struct BackingOpening {
    dev_t dev;
    ino_t ino;
    struct BackingOpening *outer;
} BackingOpening;
static __thread BackingOpening *backing_opening;

static bool file_identity(const char *path, dev_t *dev, ino_t *ino)
{
    struct stat st;
    if (!path || !*path || !strncmp(path, "json:", 5) || stat(path, &st) < 0) {
        return false;
    }
    *dev = st.st_dev;
    *ino = st.st_ino;
    return true;
}

static int open_backing_child(BlockDriverState *bs, const char *filename, OptDict *options,
                              BdrvChild **child, Error **errp)
{
    const char *own = bs->file ? bs->file->bs->filename : bs->filename;
    BackingOpening me = { .outer = backing_opening };
    bool have_me = file_identity(own, &me.dev, &me.ino);
    dev_t dev;
    ino_t ino;

    if (filename && file_identity(filename, &dev, &ino)) {
        for (BackingOpening *p = have_me ? &me : me.outer; p; p = p->outer) {
            if (p->dev == dev && p->ino == ino) {
                error_setg(errp, "Backing file '%s' of '%s' makes a loop in the backing chain",
                           filename, own);
                return -ELOOP;
            }
        }
    }
    if (have_me) {
        backing_opening = &me;
    }
    *child = bdrv_open_child(filename, options, "backing", bs, BDRV_CHILD_COW, false, errp);
    backing_opening = me.outer;
    return 0;
}

int bdrv_open_backing(BlockDriverState *bs, OptDict *options, Error **errp)
{
    const char *ref = optdict_get(options, "backing");
    if (ref && !*ref) {
        optdict_del(options, "backing");    /* "backing": null - none wanted */
        return 0;
    }
    if (bs->backing) {
        return 0;
    }
    bool has_opts = optdict_has_prefix(options, "backing.");
    if (!ref && !has_opts && !bs->backing_file[0]) {
        return 0;
    }
    char *filename = NULL;
    if (!ref && bs->backing_file[0] && !optdict_has(options, "backing.file.filename") &&
        !optdict_has(options, "backing.filename") && !optdict_has(options, "backing.file")) {
        filename = backing_path(bs);
    }
    /* The recorded format is used as is: no probing of a named backing file. */
    if (bs->backing_format[0] && !optdict_has(options, "backing.driver")) {
        optdict_set(options, "backing.driver", bs->backing_format);
    }
    Error *local = NULL;
    BdrvChild *c = NULL;
    open_backing_child(bs, filename, options, &c, &local);
    free(filename);
    if (!c) {
        int err = error_get_errno(local);
        error_prepend(&local, "Could not open backing file: ");
        error_propagate(errp, local);
        return -err;
    }
    bdrv_refresh_limits(bs, NULL);
    return 0;
}

const BlockDriver *bdrv_probe_format(const char *filename, Error **errp)
{
    BlockDriverState *bs = bdrv_open(filename, NULL, BDRV_O_PROTOCOL, errp);
    if (!bs) {
        return NULL;
    }
    const BlockDriver *drv = probe_node(bs, filename, errp);
    bdrv_unref(bs);
    return drv;
}

/* ---- create and check: run the driver's coroutine from any context ---- */

typedef struct CreateCo {
    const BlockDriver *drv;
    const char *filename;
    OptDict *opts;
    Error *err;
    int ret;
} CreateCo;

static void coroutine_fn create_entry(void *opaque)
{
    CreateCo *c = opaque;
    c->ret = c->drv->co_create(c->filename, c->opts, &c->err);
}

int bdrv_measure(const BlockDriver *drv, OptDict *opts, BlockDriverState *in_bs,
                 BlockMeasureInfo *info, Error **errp)
{
    memset(info, 0, sizeof(*info));
    if (!drv->measure) {
        error_setg(errp, "Block driver '%s' does not support size measurement",
                   drv->format_name);
        return -ENOTSUP;
    }
    return drv->measure(opts, in_bs, info, errp);
}

int bdrv_bitmaps_size(BlockDriverState *bs, uint64_t cluster_size, uint64_t *size)
{
    *size = 0;
    return bs->drv && bs->drv->bitmaps_size ? bs->drv->bitmaps_size(bs, cluster_size, size)
                                            : -ENOTSUP;
}

int bdrv_bitmap_op(BlockDriverState *bs, const BdrvBitmapOp *op, Error **errp)
{
    if (!bs->drv || !bs->drv->bitmap_op) {
        if (op->type == BDRV_BITMAP_ADD) {
            error_setg_errno(errp, ENOTSUP, "Can't store persistent bitmaps to %s",
                             bdrv_get_node_name(bs));
            return -ENOTSUP;
        }
        error_setg(errp, "Dirty bitmap '%s' not found", op->name);
        return -ENOENT;
    }
    return bs->drv->bitmap_op(bs, op, errp);
}

int bdrv_bitmap_list(BlockDriverState *bs, BdrvBitmapInfo **list, size_t *nb)
{
    *list = NULL;
    *nb = 0;
    return bs->drv && bs->drv->bitmap_list ? bs->drv->bitmap_list(bs, list, nb) : -ENOTSUP;
}

void bdrv_bitmap_list_free(BdrvBitmapInfo *list, size_t nb)
{
    for (size_t i = 0; list && i < nb; i++) {
        free(list[i].name);
    }
    free(list);
}

int bdrv_create(const BlockDriver *drv, const char *filename, OptDict *opts, Error **errp)
{
    if (!drv->co_create) {
        error_setg(errp, "Format '%s' does not support image creation", drv->format_name);
        return -ENOTSUP;
    }
    /* Check every option before touching the file, so a typo creates nothing.
     * The protocol's options go to the format's co_create, which hands them
     * on when it creates its file. */
    const CreateOptDesc *proto_opts = bdrv_protocol_create_opts(filename);
    for (size_t i = 0; i < optdict_count(opts); i++) {
        const char *key = optdict_key_at(opts, i);
        bool known = !strcmp(key, "size");
        for (const CreateOptDesc *d = drv->create_opts; d && d->name && !known; d++) {
            known = !strcmp(d->name, key);
        }
        for (const CreateOptDesc *d = proto_opts; d && d->name && !known; d++) {
            known = !strcmp(d->name, key);
        }
        if (!known) {
            error_setg(errp, "Block format '%s' does not support the create option '%s'",
                       drv->format_name, key);
            return -EINVAL;
        }
    }
    CreateCo c = { .drv = drv, .filename = filename, .opts = optdict_clone(opts) };
    aio_co_run_sync(create_entry, &c);
    optdict_free(c.opts);
    if (c.ret < 0) {
        if (!c.err) {
            error_setg_errno(&c.err, -c.ret, "Could not create '%s'", filename);
        }
        error_propagate(errp, c.err);
    } else {
        error_free(c.err);
    }
    return c.ret < 0 ? c.ret : 0;
}

const CreateOptDesc *bdrv_protocol_create_opts(const char *filename)
{
    const BlockDriver *proto = filename ? bdrv_find_protocol(filename, NULL) : NULL;
    return proto && proto->co_create ? proto->create_opts : NULL;
}

int coroutine_fn bdrv_co_create_file(const char *filename, OptDict *opts, Error **errp)
{
    const BlockDriver *proto = bdrv_find_protocol(filename, errp);
    if (!proto) {
        return -ENOENT;
    }
    if (!proto->co_create) {
        error_setg(errp, "Protocol '%s' does not support image creation ('%s')",
                   proto->format_name, filename);
        return -ENOTSUP;
    }
    return proto->co_create(filename, opts, errp);
}

typedef struct CheckCo {
    BlockDriverState *bs;
    BdrvCheckResult *res;
    BdrvCheckMode fix;
    int ret;
} CheckCo;

static void coroutine_fn check_entry(void *opaque)
{
    CheckCo *c = opaque;
    c->ret = c->bs->drv->co_check(c->bs, c->res, c->fix);
}

int bdrv_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix)
{
    memset(res, 0, sizeof(*res));
    if (!bs->drv->co_check) {
        return -ENOTSUP;
    }
    CheckCo c = { .bs = bs, .res = res, .fix = fix };
    aio_co_run_sync(check_entry, &c);
    return c.ret;
}

/* ---- metadata changes: backing file, make_empty ---- */

typedef struct MetaCo {
    BlockDriverState *bs;
    const char *file, *fmt;
    int ret;
} MetaCo;

static void coroutine_fn change_backing_entry(void *opaque)
{
    MetaCo *m = opaque;
    m->ret = m->bs->drv->co_change_backing_file(m->bs, m->file, m->fmt);
}

int bdrv_change_backing_file(BlockDriverState *bs, const char *file, const char *fmt,
                             bool require)
{
    if ((fmt && !file) || (require && file && !fmt)) {
        return -EINVAL;
    }
    if (!bs->drv->co_change_backing_file) {
        return -ENOTSUP;
    }
    MetaCo m = { .bs = bs, .file = file, .fmt = fmt };
    bdrv_drained_begin(bs);
    aio_co_run_sync(change_backing_entry, &m);
    bdrv_drained_end(bs);
    if (m.ret == 0) {
        snprintf(bs->backing_file, sizeof(bs->backing_file), "%s", file ? file : "");
        snprintf(bs->backing_format, sizeof(bs->backing_format), "%s", fmt ? fmt : "");
    }
    return m.ret;
}

static void coroutine_fn make_empty_entry(void *opaque)
{
    MetaCo *m = opaque;
    m->ret = m->bs->drv->co_make_empty(m->bs);
}

int bdrv_make_empty(BlockDriverState *bs)
{
    if (!bs->drv->co_make_empty) {
        return -ENOTSUP;
    }
    MetaCo m = { .bs = bs };
    bdrv_drained_begin(bs);
    aio_co_run_sync(make_empty_entry, &m);
    bdrv_drained_end(bs);
    return m.ret;
}

/* ---- img amend ---- */

typedef struct AmendCo {
    BlockDriverState *bs;
    OptDict *opts;
    BdrvAmendStatusCB *cb;
    void *opaque;
    bool force;
    Error **errp;
    int ret;
} AmendCo;

static void coroutine_fn amend_entry(void *opaque)
{
    AmendCo *a = opaque;
    a->ret = a->bs->drv->co_amend(a->bs, a->opts, a->cb, a->opaque, a->force, a->errp);
}

int bdrv_amend_options(BlockDriverState *bs, OptDict *opts, BdrvAmendStatusCB *cb, void *opaque,
                       bool force, Error **errp)
{
    if (!bs->drv->co_amend) {
        error_setg(errp, "Block driver '%s' does not support option amendment",
                   bs->drv->format_name);
        return -ENOTSUP;
    }
    AmendCo a = { .bs = bs, .opts = opts, .cb = cb, .opaque = opaque, .force = force,
                  .errp = errp };
    bdrv_drained_begin(bs);
    aio_co_run_sync(amend_entry, &a);
    bdrv_drained_end(bs);
    return a.ret;
}

const CreateOptDesc *bdrv_driver_amend_opts(const BlockDriver *drv)
{
    return drv->co_amend ? drv->amend_opts : NULL;
}
