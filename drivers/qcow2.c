/*
 * qcow2.c - the qcow2 format driver: probe, open (children, tables,
 * caches), reads, block status, info and the ops table.  The header is
 * parsed in qcow2-header.c, L2 lookups are in qcow2-cluster.c, refcounts in
 * qcow2-refcount.c, compressed clusters in qcow2-compress.c, the layout in
 * qcow2-int.h.
 *
 * Writes are in qcow2-write.c (allocation in qcow2-alloc.c, compressed
 * writes in qcow2-compress-write.c), check and repair in qcow2-check*.c; a
 * dirty image opened read-write is repaired here first.  Queue threads read
 * in parallel: the L1 and refcount tables are in memory, L2 slices and
 * refcount blocks in meta-cache entries looked up without a lock, and data
 * reads go to the file (or the external data file, or the backing node)
 * straight into the caller's vector, references included.  Only compressed
 * clusters are bounced.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "iov-fixed.h"
#include "qcow2-int.h"

/* The L2 cache covers the whole image up to this size (QEMU's default). */
#define QCOW2_DEFAULT_L2_CACHE_MAX   (32 * 1024 * 1024)
#define QCOW2_DEFAULT_REFCOUNT_CACHE (256 * 1024)
/* Entries each cache has at least: every request in flight holds one
 * reference at a time, and many queues x depth can be in flight. */
#define QCOW2_MIN_CACHE_ENTRIES      256
#define QCOW2_CACHE_CLEAN_INTERVAL_S 600

const char *qcow2_image_name(BlockDriverState *bs)
{
    BlockDriverState *named = bs->file ? bs->file->bs : bs;

    if (named->filename[0] || !named->node_name) {
        return named->filename;
    }
    return named->node_name;
}

static int qcow2_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    (void)filename;
    if (buf_size < QCOW2_V3_HEADER_LENGTH) {
        return 0;
    }
    return qcow2_ld32(buf, QH_MAGIC) == QCOW2_MAGIC && qcow2_ld32(buf, QH_VERSION) >= 2 ? 100 : 0;
}

/* Read a big-endian table of n u64 entries at offset into host order. */
static int load_table(BlockDriverState *bs, uint64_t offset, uint32_t n, uint64_t **out)
{
    size_t bytes = (size_t)n * 8;
    uint64_t *t = NULL;

    *out = NULL;
    if (!n) {
        return 0;
    }
    if (posix_memalign((void **)&t, 4096, ALIGN_UP(bytes, 4096))) {
        return -ENOMEM;
    }
    for (size_t done = 0; done < bytes;) {
        size_t chunk = MIN(bytes - done, (size_t)(64 * MiB));
        int ret = bdrv_pread(bs->file, (int64_t)(offset + done), (int64_t)chunk,
                             (uint8_t *)t + done, 0);
        if (ret < 0) {
            free(t);
            return ret;
        }
        done += chunk;
    }
    for (uint32_t i = 0; i < n; i++) {
        t[i] = be64toh(t[i]);
    }
    *out = t;
    return 0;
}

/* The data file's name relative to the image's directory, as QEMU resolves it. */
static char *data_file_path(BlockDriverState *bs, const char *name)
{
    const char *image = bs->file->bs->filename;
    const char *slash = strrchr(image, '/');
    char *path = NULL;

    if (name[0] == '/' || !slash || !strncmp(image, "json:", 5) || !strncmp(name, "json:", 5)) {
        return strdup(name);
    }
    if (asprintf(&path, "%.*s/%s", (int)(slash - image), image, name) < 0) {
        return NULL;
    }
    return path;
}

static int open_data_file(BlockDriverState *bs, OptDict *options, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *name = qcow2_image_name(bs);
    bool given = optdict_has(options, "data-file") || optdict_has_prefix(options, "data-file.");

    if (!qcow2_has_data_file(s)) {
        if (given) {
            error_setg(errp, "qcow2: %s: 'data-file' can only be set for images with an"
                       " external data file", name);
            return -EINVAL;
        }
        s->data_file = bs->file;
        return 0;
    }
    char *path = NULL;
    if (!given) {
        if (!s->image_data_file) {
            error_setg(errp, "qcow2: %s: 'data-file' is required for this image (it has an"
                       " external data file and records no name)", name);
            return -EINVAL;
        }
        path = data_file_path(bs, s->image_data_file);
        if (!path) {
            return -ENOMEM;
        }
    }
    Error *local = NULL;
    s->data_file = bdrv_open_child(path, options, "data-file", bs, BDRV_CHILD_DATA, false,
                                   &local);
    if (s->data_file) {
        /* The guest's data is in the data file: "file" holds metadata only. */
        bs->file->role = BDRV_CHILD_METADATA | BDRV_CHILD_PRIMARY;
    }
    free(path);
    if (!s->data_file) {
        int err = error_get_errno(local);
        error_prepend(&local, "qcow2: %s: Could not open data file: ", name);
        error_propagate(errp, local);
        return -err;
    }
    return 0;
}

/* A dirty image (lazy refcounts, not closed cleanly) opened read-write is
 * repaired first, as QEMU does: check -r all, which clears the bit. */
typedef struct RepairDirty {
    BlockDriverState *bs;
    BdrvCheckResult res;
    int ret;
} RepairDirty;

static void coroutine_fn repair_dirty_co(void *opaque)
{
    RepairDirty *r = opaque;
    r->ret = qcow2_co_check(r->bs, &r->res, BDRV_FIX_LEAKS | BDRV_FIX_ERRORS);
}

static int repair_dirty(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    RepairDirty r = { .bs = bs };

    aio_co_run_sync(repair_dirty_co, &r);
    if (r.ret < 0 || r.res.check_errors) {
        int err = r.ret < 0 ? -r.ret : EIO;
        error_setg_errno(errp, err, "qcow2: %s: Could not repair dirty image (incompatible_features"
                         " 0x%" PRIx64 ")", qcow2_image_name(bs), s->h.incompat);
        return -err;
    }
    return 0;
}

/* QEMU's read_cache_sizes: cache-size splits between the two caches,
 * l2-cache-size never exceeds what covers the whole image. */
static int take_cache_sizes(BlockDriverState *bs, OptDict *options, uint64_t *l2_bytes,
                            uint64_t *rc_bytes, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    const char *name = qcow2_image_name(bs);
    uint64_t max_l2 = ALIGN_UP(DIV_ROUND_UP(s->h.size, (uint64_t)s->cluster_size) *
                               s->l2_entry_size, (uint64_t)s->cluster_size);
    bool combined_set = optdict_has(options, "cache-size");
    bool l2_set = optdict_has(options, "l2-cache-size");
    bool rc_set = optdict_has(options, "refcount-cache-size");
    uint64_t combined, l2, rc;

    if (optdict_take_size(options, "cache-size", 0, &combined, errp) < 0 ||
        optdict_take_size(options, "l2-cache-size", QCOW2_DEFAULT_L2_CACHE_MAX, &l2, errp) < 0 ||
        optdict_take_size(options, "refcount-cache-size", QCOW2_DEFAULT_REFCOUNT_CACHE, &rc,
                          errp) < 0) {
        return -EINVAL;
    }
    l2 = MIN(l2, max_l2);
    if (combined_set) {
        if (l2_set && rc_set) {
            error_setg(errp, "qcow2: %s: cache-size, l2-cache-size and refcount-cache-size may"
                       " not be set at the same time", name);
            return -EINVAL;
        }
        if (l2_set && l2 > combined) {
            error_setg(errp, "qcow2: %s: l2-cache-size may not exceed cache-size", name);
            return -EINVAL;
        }
        if (rc_set && rc > combined) {
            error_setg(errp, "qcow2: %s: refcount-cache-size may not exceed cache-size", name);
            return -EINVAL;
        }
        if (l2_set) {
            rc = combined - l2;
        } else if (rc_set) {
            l2 = MIN(combined - rc, max_l2);
        } else {
            uint64_t min_rc = 4ULL * s->cluster_size;
            rc = combined >= max_l2 + min_rc ? combined - max_l2 : MIN(combined, min_rc);
            l2 = MIN(combined - rc, max_l2);
        }
    }
    *l2_bytes = l2;
    *rc_bytes = rc;
    return 0;
}

static int make_caches(BlockDriverState *bs, OptDict *options, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l2_bytes, rc_bytes;
    int64_t clean_s;

    if (take_cache_sizes(bs, options, &l2_bytes, &rc_bytes, errp) < 0 ||
        optdict_take_int(options, "cache-clean-interval", QCOW2_CACHE_CLEAN_INTERVAL_S, &clean_s,
                         errp) < 0) {
        return -EINVAL;
    }
    if (clean_s < 0 || clean_s > UINT32_MAX) {
        error_setg(errp, "qcow2: %s: cache-clean-interval %" PRId64 " is out of range (0 to"
                   " %" PRIu32 " seconds)", qcow2_image_name(bs), clean_s, UINT32_MAX);
        return -EINVAL;
    }
    size_t slice = MIN((size_t)QCOW2_L2_SLICE_BYTES, (size_t)s->cluster_size);
    s->l2_slice_entries = (uint32_t)(slice / s->l2_entry_size);
    /* Sizes above what fits in memory fail in meta_cache_new with ENOMEM:
     * the counts are capped only so they cannot wrap. */
    MetaCacheConfig cfg = {
        .child = bs->file,
        .entry_size = slice,
        .nr_entries = (unsigned)MIN(MAX(l2_bytes / slice, (uint64_t)QCOW2_MIN_CACHE_ENTRIES),
                                    (uint64_t)INT32_MAX / 2),
        .lock = &s->lock,
        .home = bdrv_get_home_context(bs),
        .clean_interval_ns = clean_s * 1000000000LL,
        .name = "l2",
        .check_write = qcow2_cache_check_write,
        .opaque = bs,
    };
    s->l2_cache = meta_cache_new(&cfg, errp);
    if (s->l2_cache) {
        cfg.nr_entries = (unsigned)MIN(MAX(rc_bytes / slice, (uint64_t)QCOW2_MIN_CACHE_ENTRIES),
                                       (uint64_t)INT32_MAX / 2);
        cfg.name = "refcount";
        s->refcount_cache = meta_cache_new(&cfg, errp);
    }
    if (!s->refcount_cache) {
        error_prepend(errp, "qcow2: %s: ", qcow2_image_name(bs));
        return -ENOMEM;
    }
    return 0;
}

/* QEMU's overlap-check (a template: none, constant, cached, all; also as
 * overlap-check.template) with each check on or off by its own
 * overlap-check.NAME. */
static int take_overlap_check(BlockDriverState *bs, OptDict *options, Error **errp)
{
    static const char *const templates[] = { "none", "constant", "cached", "all", NULL };
    static const unsigned masks[] = { 0, QCOW2_OL_CONSTANT, QCOW2_OL_CACHED, QCOW2_OL_ALL };
    static const char *const names[QCOW2_OL_MAX_BITNR] = {
        "main-header", "active-l1", "active-l2", "refcount-table", "refcount-block",
        "snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory",
    };
    BDRVQcow2State *s = bs->opaque;
    const char *name = qcow2_image_name(bs);
    char *mode = NULL, *tmpl = NULL;
    int ret = -EINVAL;

    optdict_take_str(options, "overlap-check", NULL, &mode);
    optdict_take_str(options, "overlap-check.template", NULL, &tmpl);
    if (mode && tmpl && strcmp(mode, tmpl)) {
        error_setg(errp, "qcow2: %s: Conflicting values for qcow2 options 'overlap-check' ('%s')"
                   " and 'overlap-check.template' ('%s')", name, mode, tmpl);
        goto out;
    }
    const char *m = mode ? mode : tmpl ? tmpl : "cached";
    int t = 0;
    while (templates[t] && strcmp(templates[t], m)) {
        t++;
    }
    if (!templates[t]) {
        error_setg(errp, "qcow2: %s: Unsupported value '%s' for qcow2 option 'overlap-check'."
                   " Allowed are any of the following: none, constant, cached, all", name, m);
        goto out;
    }
    s->overlap_check = 0;
    for (int i = 0; i < QCOW2_OL_MAX_BITNR; i++) {
        char key[48];
        bool on;
        snprintf(key, sizeof(key), "overlap-check.%s", names[i]);
        if (optdict_take_bool(options, key, masks[t] & (1U << i), &on, errp) < 0) {
            goto out;
        }
        s->overlap_check |= on ? 1U << i : 0;
    }
    ret = 0;
out:
    free(mode);
    free(tmpl);
    return ret;
}

/* pass-discard-request (default: what discard= says), -snapshot, -other:
 * whether clusters freed for that reason are discarded in the file too. */
static int take_discard_options(BlockDriverState *bs, OptDict *options, int flags,
                                Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    bool snapshot;

    if (optdict_take_bool(options, "pass-discard-request", flags & BDRV_O_UNMAP,
                          &s->discard_passthrough, errp) < 0 ||
        /* no snapshot is ever deleted here: accepted for QEMU's command lines */
        optdict_take_bool(options, "pass-discard-snapshot", true, &snapshot, errp) < 0 ||
        optdict_take_bool(options, "pass-discard-other", false, &s->discard_other, errp) < 0) {
        return -EINVAL;
    }
    return 0;
}

/* metadata-write-through (ours, not QEMU's; off by default, as QEMU
 * behaves): allocating writes, zero writes and discards put the metadata
 * they changed into the file before they complete (qcow2-write.c), so a
 * completed request survives the death of the process.  `ublkd add` turns
 * it on: a device's daemon may be killed and recovered under I/O. */
static int take_write_through(BlockDriverState *bs, OptDict *options, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    return optdict_take_bool(options, "metadata-write-through", false, &s->write_through,
                             errp) < 0 ? -EINVAL : 0;
}

static void qcow2_free_state(BDRVQcow2State *s)
{
    if (s->l2_cache) {
        meta_cache_free(s->l2_cache);
        s->l2_cache = NULL;
    }
    if (s->refcount_cache) {
        meta_cache_free(s->refcount_cache);
        s->refcount_cache = NULL;
    }
    free(s->l1_table);
    s->l1_table = NULL;
    while (s->retired_l1) {
        Qcow2RetiredL1 *r = s->retired_l1;
        s->retired_l1 = r->next;
        free(r->table);
        free(r);
    }
    free(s->refcount_table);
    s->refcount_table = NULL;
    qcow2_crypto_close(s);
    qcow2_bounce_free_all(s);
    qcow2_free_snapshots(s);
    qcow2_free_header_state(s);
}

static int qcow2_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    co_mutex_init(&s->lock);
    pthread_mutex_init(&s->bounce_lock, NULL);
    s->metadata_prealloc = -1;
    if (!bdrv_open_child(NULL, options, "file", bs, BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, false,
                         errp)) {
        ret = -EINVAL;
        goto fail_locks;
    }
    const char *name = qcow2_image_name(bs);
    int64_t file_len = bdrv_getlength(bs->file->bs);
    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "qcow2: %s: cannot get file size", name);
        ret = (int)file_len;
        goto fail_locks;
    }
    ret = qcow2_read_header(bs, file_len, flags, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_crypto_open(bs, options, flags, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = load_table(bs, s->h.l1_table_offset, s->h.l1_size, &s->l1_table);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot read the L1 table (%" PRIu32
                         " entries at 0x%" PRIx64 ")", name, s->h.l1_size, s->h.l1_table_offset);
        goto fail;
    }
    s->l1_size = s->h.l1_size;
    s->refcount_table_size = s->h.refcount_table_clusters << (s->cluster_bits - 3);
    ret = load_table(bs, s->h.refcount_table_offset, s->refcount_table_size,
                     &s->refcount_table);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "qcow2: %s: cannot read the reference count table", name);
        goto fail;
    }
    ret = make_caches(bs, options, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = take_overlap_check(bs, options, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = take_discard_options(bs, options, flags, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = take_write_through(bs, options, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = open_data_file(bs, options, errp);
    if (ret < 0) {
        goto fail;
    }
    {
        /* a check reads and reports the table itself */
        Error *snap_err = NULL;
        ret = s->h.nb_snapshots > QCOW2_MAX_SNAPSHOTS ? -EFBIG :
              qcow2_read_snapshots(bs, &snap_err);
        if (ret < 0 && !(flags & BDRV_O_CHECK)) {
            error_propagate(errp, snap_err);
            goto fail;
        }
        error_free(snap_err);
    }
    ret = qcow2_load_snapshot_opts(bs, options, flags, errp);
    if (ret < 0) {
        goto fail;
    }
    if (flags & BDRV_O_RDWR) {
        /* Unknown autoclear bits name what we do not keep up to date:
         * clearing them tells every reader those parts are stale.  Bitmaps
         * are marked in use instead (qcow2-header-write.c).  A check
         * changes no guest data, so the bitmaps stay valid (and counted). */
        uint64_t keep = s->h.autoclear & (QCOW2_AUTOCLEAR_DATA_RAW | QCOW2_AUTOCLEAR_BITMAPS);
        if (s->h.version == 3 && s->h.autoclear != keep && !(flags & BDRV_O_CHECK)) {
            s->h.autoclear = keep;
            uint64_t be = htobe64(keep);
            ret = bdrv_pwrite(bs->file, QH_AUTOCLEAR, 8, &be, 0);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "qcow2: %s: cannot update the header", name);
                goto fail;
            }
        }
        s->writable = true;
    }
    co_queue_init(&s->alloc_wait);
    co_queue_init(&s->sync_wait);
    /* QEMU counts whole sectors: an odd size is rounded down. */
    bdrv_set_total_bytes(bs, (int64_t)(s->h.size & ~(uint64_t)(BDRV_SECTOR_SIZE - 1)));
    if (s->writable && (s->h.incompat & QCOW2_INCOMPAT_DIRTY) && !(flags & BDRV_O_CHECK)) {
        ret = repair_dirty(bs, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    /* Bitmaps last: a writable open marks them in use on disk. */
    ret = qcow2_bitmaps_open(bs, flags, errp);
    if (ret < 0) {
        goto fail;
    }
    return 0;

fail:
    qcow2_free_state(s);
fail_locks:
    co_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->bounce_lock);
    return ret;
}

static void coroutine_fn close_flush_co(void *opaque)
{
    if (qcow2_co_flush_to_os(opaque) == 0) {
        qcow2_mark_clean(opaque);
    }
}

static void qcow2_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    /* The bitmaps are stored (and in_use cleared) before the final flush. */
    qcow2_bitmaps_close(bs);
    /* The core flushed before close; this catches a failed or skipped one. */
    if (s->writable && aio_current() &&
        (meta_cache_nr_dirty(s->l2_cache) || meta_cache_nr_dirty(s->refcount_cache) ||
         (s->h.incompat & QCOW2_INCOMPAT_DIRTY))) {
        aio_co_run_sync(close_flush_co, bs);
    }

    qcow2_free_state(s);
    co_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->bounce_lock);
}

static int64_t qcow2_getlength(BlockDriverState *bs)
{
    return bdrv_get_total_bytes(bs);
}

/* Unallocated: the backing node's bytes up to its end, zeros after. */
static int coroutine_fn read_unallocated(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                         IOVector *qiov, size_t qiov_offset)
{
    int64_t from_backing = 0;

    if (bs->backing) {
        int64_t backing_len = bdrv_getlength(bs->backing->bs);
        if (backing_len < 0) {
            return (int)backing_len;
        }
        from_backing = offset < backing_len ? MIN(bytes, backing_len - offset) : 0;
        if (from_backing) {
            int ret = bdrv_co_preadv_part(bs->backing, offset, from_backing, qiov, qiov_offset, 0);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (bytes > from_backing) {
        return iov_co_zero(qiov, qiov_offset + (size_t)from_backing,
                           (size_t)(bytes - from_backing));
    }
    return 0;
}

static int coroutine_fn read_compressed(BlockDriverState *bs, uint64_t l2e, int64_t offset,
                                        int64_t bytes, IOVector *qiov, size_t qiov_offset)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2Bounce *b = qcow2_bounce_get(s);
    if (!b) {
        return -ENOMEM;
    }
    int ret = qcow2_read_compressed(bs, l2e, b);
    if (ret == 0) {
        ret = iov_co_from_buf(qiov, qiov_offset, b->out + qcow2_offset_into_cluster(s, offset),
                              (size_t)bytes);
    }
    qcow2_bounce_put(s, b);
    return ret;
}

int coroutine_fn qcow2_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                        IOVector *qiov, size_t qiov_offset,
                                        BdrvRequestFlags flags)
{
    BDRVQcow2State *s = bs->opaque;

    (void)flags;
    while (bytes > 0) {
        uint64_t n = (uint64_t)bytes, host;
        Qcow2SubclusterType type;
        int ret = qcow2_get_host_offset(bs, (uint64_t)offset, &n, &host, &type);
        if (ret < 0) {
            return ret;
        }
        switch (type) {
        case QCOW2_SC_UNALLOCATED_PLAIN:
        case QCOW2_SC_UNALLOCATED_ALLOC:
            ret = read_unallocated(bs, offset, (int64_t)n, qiov, qiov_offset);
            break;
        case QCOW2_SC_ZERO_PLAIN:
        case QCOW2_SC_ZERO_ALLOC:
            ret = iov_co_zero(qiov, qiov_offset, n);
            break;
        case QCOW2_SC_NORMAL:
            ret = bdrv_co_preadv_part(s->data_file, (int64_t)host, (int64_t)n, qiov,
                                      qiov_offset, 0);
            if (ret == 0 && s->crypto) {
                ret = qcow2_crypto_decrypt(s, host, (uint64_t)offset, qiov, qiov_offset, n);
            }
            break;
        case QCOW2_SC_COMPRESSED:
            ret = read_compressed(bs, host, offset, (int64_t)n, qiov, qiov_offset);
            break;
        default:
            ret = -EIO;
        }
        if (ret < 0) {
            return ret;
        }
        offset += (int64_t)n;
        bytes -= (int64_t)n;
        qiov_offset += n;
    }
    return 0;
}

/* QEMU's qcow2_co_block_status. */
static int coroutine_fn qcow2_co_block_status(BlockDriverState *bs, bool want_zero,
                                              int64_t offset, int64_t bytes, int64_t *pnum,
                                              int64_t *map, BlockDriverState **file)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t n = (uint64_t)bytes, host;
    Qcow2SubclusterType type;
    int status = 0;

    (void)want_zero;
    if (__atomic_load_n(&s->metadata_prealloc, __ATOMIC_ACQUIRE) < 0) {
        co_mutex_lock(&s->lock);
        if (s->metadata_prealloc < 0) {
            int r = qcow2_detect_metadata_preallocation(bs);
            __atomic_store_n(&s->metadata_prealloc, r == 1, __ATOMIC_RELEASE);
        }
        co_mutex_unlock(&s->lock);
    }
    int ret = qcow2_get_host_offset(bs, (uint64_t)offset, &n, &host, &type);
    if (ret < 0) {
        return ret;
    }
    *pnum = (int64_t)n;
    /* QEMU: encrypted data has no offset a reader could use as it is */
    if ((type == QCOW2_SC_NORMAL || type == QCOW2_SC_ZERO_ALLOC ||
         type == QCOW2_SC_UNALLOCATED_ALLOC) && !s->crypto) {
        *map = (int64_t)host;
        *file = s->data_file->bs;
        status |= BDRV_BLOCK_OFFSET_VALID;
    }
    if (type == QCOW2_SC_ZERO_PLAIN || type == QCOW2_SC_ZERO_ALLOC) {
        status |= BDRV_BLOCK_ZERO;
    } else if (type != QCOW2_SC_UNALLOCATED_PLAIN && type != QCOW2_SC_UNALLOCATED_ALLOC) {
        status |= BDRV_BLOCK_DATA;
    }
    if (__atomic_load_n(&s->metadata_prealloc, __ATOMIC_ACQUIRE) == 1 &&
        (status & BDRV_BLOCK_DATA) && (status & BDRV_BLOCK_OFFSET_VALID)) {
        status |= BDRV_BLOCK_RECURSE;
    }
    return status;
}

/* Zero writes act on whole clusters, or on extended L2 images on
 * subclusters (QEMU: pwrite_zeroes_alignment = subcluster size); discards
 * on whole clusters. */
static void qcow2_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;

    (void)errp;
    bs->bl.pwrite_zeroes_alignment = qcow2_has_subclusters(s) ? s->subcluster_size
                                                               : s->cluster_size;
    bs->bl.pdiscard_alignment = s->cluster_size;
    if (s->crypto) {
        /* data is encrypted per 512-byte sector */
        bs->bl.request_alignment = MAX(bs->bl.request_alignment, (uint32_t)BDRV_SECTOR_SIZE);
    }
}

static int qcow2_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVQcow2State *s = bs->opaque;

    bdi->cluster_size = (int)s->cluster_size;
    bdi->is_dirty = s->h.incompat & QCOW2_INCOMPAT_DIRTY;
    bdi->encrypted = s->h.crypt_method != QCOW2_CRYPT_NONE;
    bdi->vm_state_offset = (int64_t)s->h.size;   /* unused: snapshots are not read */
    return 0;
}

/* What qemu-img info prints under "Format specific information", in its
 * order. */
static void qcow2_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    BDRVQcow2State *s = bs->opaque;

    image_info_add(info, "compat", "%s", s->h.version == 2 ? "0.10" : "1.1");
    image_info_add(info, "compression-type", "%s",
                   s->h.compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib");
    if (s->h.version == 2) {
        image_info_add_int(info, "refcount-bits", 1LL << s->h.refcount_order);
        return;
    }
    image_info_add_bool(info, "lazy-refcounts", s->h.compat & QCOW2_COMPAT_LAZY_REFCOUNTS);
    qcow2_bitmaps_info(bs, info);
    image_info_add_int(info, "refcount-bits", 1LL << s->h.refcount_order);
    if (s->image_data_file) {
        image_info_add(info, "data-file", "%s", s->image_data_file);
        image_info_add_bool(info, "data-file-raw", qcow2_data_file_is_raw(s));
    }
    qcow2_crypto_info(s, info);
    image_info_add_bool(info, "corrupt", s->h.incompat & QCOW2_INCOMPAT_CORRUPT);
    image_info_add_bool(info, "extended-l2", qcow2_has_subclusters(s));
}

/* QEMU: preallocated images (first L1 entry set) are as zero as their data
 * file; others read as zeros until written. */
static int qcow2_has_zero_init(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    bool preallocated = s->l1_size > 0 && s->l1_table[0];

    return preallocated ? bdrv_has_zero_init(s->data_file->bs) : 1;
}

static int qcow2_reopen_prepare(BlockDriverState *bs, int flags, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    if ((flags & BDRV_O_RDWR) && !s->writable) {
        /* The tables, caches and the dirty-image repair are set up by a
         * read-write open only. */
        error_setg(errp, "qcow2: %s: an image opened read-only cannot be reopened read-write;"
                   " open it read-write", qcow2_image_name(bs));
        return -ENOTSUP;
    }
    return 0;
}

const BlockDriver bdrv_qcow2 = {
    .format_name = "qcow2",
    .instance_size = sizeof(BDRVQcow2State),
    .is_format = true,
    .serialise_unmap = true,   /* in-place writes hold no lock: see qcow2-write.c */
    .supports_backing = true,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .reopen_prepare = qcow2_reopen_prepare,
    .co_preadv = qcow2_co_preadv,
    .co_pwritev = qcow2_co_pwritev,
    .co_pwritev_compressed = qcow2_co_pwritev_compressed,
    .co_flush_to_os = qcow2_co_flush_to_os,
    .co_pwrite_zeroes = qcow2_co_pwrite_zeroes,
    .co_pdiscard = qcow2_co_pdiscard,
    .co_truncate = qcow2_co_truncate,
    .refresh_limits = qcow2_refresh_limits,
    .supported_zero_flags = BDRV_REQ_MAY_UNMAP,
    .co_block_status = qcow2_co_block_status,
    .co_check = qcow2_co_check,
    .co_create = qcow2_co_create,
    .measure = qcow2_measure,
    .bitmaps_size = qcow2_bitmaps_size,
    .bitmap_op = qcow2_bitmap_op,
    .bitmap_list = qcow2_bitmap_list,
    .note_discard = qcow2_note_discard,
    .co_change_backing_file = qcow2_co_change_backing_file,
    .co_make_empty = qcow2_co_make_empty,
    .snapshot_list = qcow2_snapshot_list,
    .co_snapshot_create = qcow2_co_snapshot_create,
    .co_snapshot_goto = qcow2_co_snapshot_goto,
    .co_snapshot_delete = qcow2_co_snapshot_delete,
    .co_amend = qcow2_co_amend,
    .amend_opts = qcow2_amend_opts,
    .create_opts = qcow2_create_opts,
    .getlength = qcow2_getlength,
    .get_info = qcow2_get_info,
    .get_specific_info = qcow2_get_specific_info,
    .has_zero_init = qcow2_has_zero_init,
};
