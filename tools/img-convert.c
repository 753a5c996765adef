/*
 * img-convert.c - `ublkd img convert`: copy an image into a new (or, with
 * -n, existing) image of any format, keeping it sparse.
 *
 * Like qemu-img: the source's block status splits it into zero and data
 * ranges; zero ranges cost nothing when the target reads as zeros after
 * creation (has_zero_init) and a write-zeroes otherwise; data ranges are
 * read and scanned for zero runs of at least -S bytes (default 4k), which
 * are treated as zero ranges.  -m coroutines (default 8) keep several
 * requests in flight; each claims the next range in order, and unless -W
 * the writes are issued in claim order so the target is laid out
 * sequentially.  Any error makes the exit code 1; partial output is left as
 * qemu-img leaves it, never reported as a success.
 *
 * -c writes every cluster compressed (one cluster per request, as qemu-img;
 * clusters of zeros are left out like any zero range).  With a backing file
 * for the target (-B, or -o backing_file) only what the source itself
 * allocates above its own backing file is written; the rest is left to the
 * target's backing file, as are zeros past its end.
 *
 * --bitmaps copies the source's persistent bitmaps after the data, as
 * qemu-img: checked before the target is created (an inconsistent one
 * refuses the convert, or is skipped with --skip-broken-bitmaps), then
 * each added to the target and merged from the source.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-backend.h"
#include "img.h"

#define IO_BUF_SIZE     (2 * MiB)
#define MAX_COROUTINES  16
#define MAX_BUF_SECTORS 32768

/* BLK_BACKING: left unallocated, the target's backing file shows through. */
enum { BLK_ZERO, BLK_DATA, BLK_BACKING };
enum { OPT_BITMAPS = 256, OPT_SKIP_BROKEN };

typedef struct ConvertState {
    BlockBackend *src, *dst;
    int64_t total;
    size_t min_sparse;
    bool has_zero_init, unordered;
    bool compressed;
    int64_t cluster_size;        /* of the target, with -c */
    bool target_has_backing;
    BlockDriverState *src_base;  /* with a target backing: the source's own backing */
    int64_t target_backing_len;  /* a new target's backing file's length, or -1 */
    int nworkers, running;
    int ret;                     /* first error (-errno), stops all workers */

    CoMutex claim_lock;          /* serialises claiming + block status */
    int64_t next_offset;
    int64_t status_end;          /* cached block status covers [.., status_end) */
    int status;

    uint64_t claim_seq, write_seq;
    Coroutine *waiter[MAX_COROUTINES];
    uint64_t waiter_seq[MAX_COROUTINES];
} ConvertState;

/* Claim the next range: returns its length (0 at the end) and kind. */
static int64_t coroutine_fn claim(ConvertState *s, int64_t *offset, int *kind, uint64_t *seq)
{
    co_mutex_lock(&s->claim_lock);
    int64_t n = 0;
    if (s->ret || s->next_offset >= s->total) {
        goto out;
    }
    *offset = s->next_offset;
    if (*offset >= s->status_end) {
        int64_t pnum = 0, map, want = s->total - *offset;
        BlockDriverState *file;
        int depth;
        /* A new target reads zeros past its backing file's end by itself. */
        bool post_backing_zero = false;
        if (s->target_backing_len >= 0) {
            if (*offset >= s->target_backing_len) {
                post_backing_zero = true;
            } else {
                want = MIN(want, s->target_backing_len - *offset);
            }
        }
        int ret = bdrv_co_block_status_above(blk_bs(s->src), s->src_base, *offset, want,
                                             &pnum, &map, &file, &depth);
        if (ret < 0) {
            error_report("error while reading block status at offset %" PRId64 ": %s",
                         *offset, strerror(-ret));
            s->ret = ret;
            goto out;
        }
        if (pnum <= 0) {
            pnum = MIN(want, (int64_t)IO_BUF_SIZE);
            ret = BDRV_BLOCK_DATA;
        }
        if (ret & BDRV_BLOCK_ZERO) {
            s->status = post_backing_zero ? BLK_BACKING : BLK_ZERO;
        } else if (ret & BDRV_BLOCK_DATA) {
            s->status = BLK_DATA;
        } else {
            /* Unallocated everywhere reads as zeroes; let the scan find them. */
            s->status = s->target_has_backing ? BLK_BACKING : BLK_DATA;
        }
        /* -S 0: the output is to be fully allocated, zeros too */
        if (s->status == BLK_ZERO && s->min_sparse == 0) {
            s->status = BLK_DATA;
        }
        s->status_end = *offset + pnum;
    }
    *kind = s->status;
    n = MIN(s->status_end - *offset, (int64_t)IO_BUF_SIZE);
    if (s->compressed) {
        /* One cluster at a time (each is kept or left out whole); a shorter
         * range is written as data, with what follows it up to the
         * cluster's end. */
        if (*kind == BLK_DATA) {
            n = MIN(n, s->cluster_size);
        }
        if (n < s->cluster_size) {
            n = MIN(s->cluster_size, s->total - *offset);
            *kind = s->status = BLK_DATA;
        } else {
            n = ALIGN_DOWN(n, s->cluster_size);
        }
    }
    s->next_offset += n;
    *seq = s->claim_seq++;
out:
    co_mutex_unlock(&s->claim_lock);
    return n;
}

static int coroutine_fn write_zeroes(ConvertState *s, int64_t offset, int64_t bytes)
{
    if (s->has_zero_init) {
        return 0;
    }
    return blk_co_pwrite_zeroes(s->dst, offset, bytes, BDRV_REQ_MAY_UNMAP);
}

static int coroutine_fn write_data(ConvertState *s, int64_t offset, uint8_t *buf, int64_t n)
{
    while (n > 0) {
        bool is_data = true;
        size_t run = (size_t)n;
        int ret;
        if (s->min_sparse && s->compressed) {
            /* a compressed cluster is written whole, or not at all if all zeros */
            is_data = !buffer_is_zero(buf, run);
        } else if (s->min_sparse) {
            run = img_sparse_run(buf, n, offset, s->min_sparse, &is_data);
        }
        if (is_data) {
            IOVector q;
            iov_init_buf(&q, buf, run);
            ret = blk_co_pwritev(s->dst, offset, run, &q,
                                 s->compressed ? BDRV_REQ_WRITE_COMPRESSED : 0);
        } else {
            ret = write_zeroes(s, offset, run);
        }
        if (ret < 0) {
            error_report("error while writing at byte %" PRId64 ": %s", offset, strerror(-ret));
            return ret;
        }
        offset += run;
        buf += run;
        n -= run;
    }
    return 0;
}

static void coroutine_fn wait_turn(ConvertState *s, int slot, uint64_t seq)
{
    while (!s->unordered && s->write_seq != seq && !s->ret) {
        s->waiter[slot] = co_self();
        s->waiter_seq[slot] = seq;
        co_yield();
        s->waiter[slot] = NULL;
    }
}

static void end_turn(ConvertState *s)
{
    s->write_seq++;
    for (int i = 0; i < s->nworkers; i++) {
        /* On error everyone waiting must wake up and leave. */
        if (s->waiter[i] && (s->ret || s->waiter_seq[i] == s->write_seq)) {
            Coroutine *co = s->waiter[i];
            s->waiter[i] = NULL;
            aio_co_wake(co);
        }
    }
}

typedef struct Worker {
    ConvertState *s;
    int slot;
} Worker;

static void coroutine_fn convert_worker(void *opaque)
{
    Worker *w = opaque;
    ConvertState *s = w->s;
    uint8_t *buf = aligned_alloc_or_die(4096, IO_BUF_SIZE);
    for (;;) {
        int64_t offset;
        int kind;
        uint64_t seq;
        int64_t n = claim(s, &offset, &kind, &seq);
        if (n == 0) {
            break;
        }
        int ret = 0;
        if (kind == BLK_DATA) {
            IOVector q;
            iov_init_buf(&q, buf, n);
            ret = blk_co_preadv(s->src, offset, n, &q, 0);
            if (ret < 0) {
                error_report("error while reading at byte %" PRId64 ": %s", offset,
                             strerror(-ret));
            }
        }
        wait_turn(s, w->slot, seq);
        if (ret == 0 && !s->ret && kind != BLK_BACKING) {
            ret = kind == BLK_DATA ? write_data(s, offset, buf, n) : write_zeroes(s, offset, n);
            if (ret < 0 && kind == BLK_ZERO) {
                error_report("error while writing at byte %" PRId64 ": %s", offset,
                             strerror(-ret));
            }
        }
        if (ret < 0 && !s->ret) {
            s->ret = ret;
        }
        if (!s->unordered) {
            end_turn(s);
        }
        if (s->ret) {
            break;
        }
        progress_print(100.0f * n / s->total, 0);
    }
    free(buf);
    s->running--;
    if (s->ret && !s->unordered) {
        end_turn(s);
    }
}

static int do_copy(ConvertState *s)
{
    Worker w[MAX_COROUTINES];
    co_mutex_init(&s->claim_lock);
    s->running = s->nworkers;
    for (int i = 0; i < s->nworkers; i++) {
        w[i] = (Worker){ s, i };
        co_enter(co_create(convert_worker, &w[i]));
    }
    AIO_WAIT_WHILE(aio_current(), s->running > 0);
    return s->ret;
}

/* qemu-img's convert_check_bitmaps: before the target is created. */
static int check_bitmaps(BlockDriverState *src, bool skip_broken)
{
    BdrvBitmapInfo *l = NULL;
    size_t n = 0;
    int ret = bdrv_bitmap_list(src, &l, &n);

    if (ret == -ENOTSUP) {
        error_report("Source lacks bitmap support");
        return -1;
    }
    if (ret < 0) {
        error_report("Could not list the bitmaps of the source: %s", strerror(-ret));
        return -1;
    }
    /* QEMU walks its bitmaps newest (last loaded) first. */
    for (size_t i = n; i-- > 0 && ret == 0;) {
        if (!skip_broken && l[i].inconsistent) {
            error_report("Cannot copy inconsistent bitmap '%s'", l[i].name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to"
                         " delete it\n");
            ret = -1;
        }
    }
    bdrv_bitmap_list_free(l, n);
    return ret;
}

/* qemu-img's convert_copy_bitmaps, after the data: each bitmap is added
 * to the target with the source's name, granularity and enabled state,
 * then the source's bits are merged into it.  In qemu-img's order (the
 * source's last bitmap first), which the qcow2 driver stores back in the
 * source's order. */
static int copy_bitmaps(BlockDriverState *src, BlockDriverState *dst, bool skip_broken)
{
    BdrvBitmapInfo *l = NULL;
    size_t n = 0;
    int ret = bdrv_bitmap_list(src, &l, &n);

    if (ret < 0) {
        error_report("Could not list the bitmaps of the source: %s", strerror(-ret));
        return -1;
    }
    for (size_t i = n; i-- > 0 && ret == 0;) {
        const char *name = l[i].name;
        Error *err = NULL;
        if (skip_broken && l[i].inconsistent) {
            warn_report("Skipping inconsistent bitmap '%s'", name);
            continue;
        }
        BdrvBitmapOp add = { .type = BDRV_BITMAP_ADD, .name = name, .has_granularity = true,
                             .granularity = l[i].granularity, .disabled = !l[i].enabled };
        if (bdrv_bitmap_op(dst, &add, &err) < 0) {
            error_prepend(&err, "Failed to create bitmap %s: ", name);
            error_report_err(err);
            ret = -1;
            break;
        }
        BdrvBitmapOp merge = { .type = BDRV_BITMAP_MERGE, .name = name, .src = src,
                               .src_name = name };
        if (bdrv_bitmap_op(dst, &merge, &err) < 0) {
            error_prepend(&err, "Failed to populate bitmap %s: ", name);
            error_report_err(err);
            BdrvBitmapOp rm = { .type = BDRV_BITMAP_REMOVE, .name = name };
            bdrv_bitmap_op(dst, &rm, NULL);
            ret = -1;
        }
    }
    bdrv_bitmap_list_free(l, n);
    return ret;
}

int img_convert(int argc, char **argv)
{
    /* The target's zero ranges may be holes (write-zeroes with MAY_UNMAP),
     * as qemu-img's: -n into a sparse file keeps it sparse. */
    ImgOpenOpts so = { 0 }, to = { .writable = true, .extra_flags = BDRV_O_UNMAP };
    const char *out_fmt = NULL, *options = NULL, *out_base = NULL, *base_fmt = NULL;
    const char *src_cache = "writeback", *dst_cache = "unsafe";
    bool no_create = false, progress = false, quiet = false, unordered = false;
    bool compressed = false;
    bool bitmaps = false, skip_broken = false;
    bool target_image_opts = false;
    bool opt_backing = false;          /* -o backing_file */
    int64_t min_sparse = 4096;
    int nworkers = 8;
    ImgSnapshotParam snap = { 0 };     /* -l */
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, 'I' },
        { "target-image-opts", no_argument, NULL, 'J' },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, 'X' },
        { "salvage", no_argument, NULL, 'Y' },
        { "target-is-zero", no_argument, NULL, 'Z' },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:B:F:Cco:l:S:pt:T:qnm:WrU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': so.fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': img_add_options(&options, optarg); break;
        case 'S': {
            int64_t v = img_cvtnum(optarg);
            if (v < 0 || v % 512 || v / 512 > MAX_BUF_SECTORS) {
                error_report("Invalid buffer size for sparse output specified. Valid sizes are "
                             "multiples of 512 up to %d. Select 0 to disable sparse detection "
                             "(fully allocates output).", MAX_BUF_SECTORS * 512);
                return 1;
            }
            min_sparse = v;
            break;
        }
        case 'p': progress = true; break;
        case 't': dst_cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': quiet = true; break;
        case 'n': no_create = true; break;
        case 'm': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > MAX_COROUTINES) {
                error_report("Invalid number of coroutines. Allowed number of coroutines is "
                             "between 1 and %d", MAX_COROUTINES);
                return 1;
            }
            nworkers = (int)v;
            break;
        }
        case 'W': unordered = true; break;
        case 'U': so.force_share = true; break;
        case 'I': so.image_opts = true; break;
        case 'J': target_image_opts = true; break;
        case 'c': compressed = true; break;
        case 'B': out_base = optarg; break;
        case 'F': base_fmt = optarg; break;
        case 'X':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case 'l':
            if (img_parse_snapshot_param(optarg, &snap)) {
                return 1;
            }
            break;
        case OPT_BITMAPS: bitmaps = true; break;
        case OPT_SKIP_BROKEN: skip_broken = true; break;
        case 'C': case 'r': case 'Y': case 'Z':
            error_report("convert option '%s' is not supported by ublkd img",
                         img_opt_text(argv));
            return 1;
        case 'h':
            printf("usage: ublkd img convert [--image-opts] [--target-image-opts] [-U] [-c] [-p] [-q]"
                   " [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]"
                   " [-B backing_file [-F backing_fmt]] [-o options]"
                   " [-S sparse_size] [-m num_coroutines] [-W]"
                   " [--bitmaps [--skip-broken-bitmaps]] filename output_filename\n");
            return 0;
        default:
            return img_opt_error(c, argv);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (!out_fmt && !target_image_opts) {
        out_fmt = "raw";
    }
    if (skip_broken && !bitmaps) {
        error_report("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (img_is_help_option(options)) {
        const BlockDriver *drv = bdrv_find_format(out_fmt ? out_fmt : "raw");
        if (!drv || !bdrv_driver_can_create(drv)) {
            error_report("Unknown file format '%s'", out_fmt);
            return 1;
        }
        return img_print_create_help(drv);
    }
    if (target_image_opts && !no_create) {
        error_report("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (target_image_opts && out_fmt) {
        error_report("--target-image-opts and -O are mutually exclusive");
        return 1;
    }
    if (no_create && options) {
        error_report("-o has no effect when skipping image creation");
        return 1;
    }
    if (argc - optind < 2) {
        return img_usage_error("Must specify image file name");
    }
    if (argc - optind > 2) {
        error_report("concatenating several source images is not supported by ublkd img");
        return 1;
    }
    const char *src_name = argv[optind], *dst_name = argv[optind + 1];
    int flags;
    if (bdrv_parse_cache_mode(dst_cache, &flags, NULL) < 0) {
        error_report("Invalid cache option: %s", dst_cache);
        return 1;
    }
    if (bdrv_parse_cache_mode(src_cache, &flags, NULL) < 0) {
        error_report("Invalid source cache option: %s", src_cache);
        return 1;
    }
    if (out_fmt && !no_create) {
        const BlockDriver *drv = bdrv_find_format(out_fmt);
        if (!drv) {
            error_report("Unknown file format '%s'", out_fmt);
            return 1;
        }
        if (!bdrv_driver_can_create(drv)) {
            error_report("Format driver '%s' does not support image creation", out_fmt);
            return 1;
        }
    }
    /* What qemu-img checks before it creates anything, in its order. */
    const BlockDriver *out_drv = out_fmt ? bdrv_find_format(out_fmt) : NULL;
    if (!no_create) {
        OptDict *o = NULL;
        if (options) {
            Error *err = NULL;
            o = optdict_parse(options, NULL, &err);
            if (!o) {
                error_prepend(&err, "Invalid options for file format '%s': ", out_fmt);
                error_report_err(err);
                return 1;
            }
        }
        if ((out_base || base_fmt) && !bdrv_driver_supports_backing(out_drv)) {
            error_report("%s not supported for file format '%s'",
                         out_base ? "Backing file" : "Backing file format", out_fmt);
            optdict_free(o);
            return 1;
        }
        /* -B wins over -o backing_file, -F over -o backing_fmt */
        const char *obase = o ? optdict_get(o, "backing_file") : NULL;
        const char *ofmt = o ? optdict_get(o, "backing_fmt") : NULL;
        if ((out_base || obase) && !base_fmt && !ofmt) {
            error_report("Use of backing file requires explicit backing format");
            optdict_free(o);
            return 1;
        }
        opt_backing = obase != NULL;
        const char *prealloc = o ? optdict_get(o, "preallocation") : NULL;
        bool encrypt = o && (optdict_get(o, "encrypt.format") || optdict_get(o, "encryption") ||
                             optdict_get(o, "encrypt"));
        if (compressed && !bdrv_driver_supports_compression(out_drv)) {
            error_report("Compression not supported for this file format");
            optdict_free(o);
            return 1;
        }
        if (compressed && encrypt) {
            error_report("Compression and encryption not supported at the same time");
            optdict_free(o);
            return 1;
        }
        if (compressed && prealloc && strcmp(prealloc, "off")) {
            error_report("Compression and preallocation not supported at the same time");
            optdict_free(o);
            return 1;
        }
        optdict_free(o);
    }
    bool target_has_backing = out_base || opt_backing;
    so.cache = src_cache;
    so.no_share = true;
    BlockBackend *src = snap.given ? img_open_snapshot(src_name, &so, snap.id, snap.name,
                                                       snap.by_id_or_name)
                                   : img_open(src_name, &so);
    if (!src) {
        return 1;
    }
    int64_t total = blk_getlength(src);
    if (total < 0) {
        error_report("Could not get size of %s: %s", src_name, strerror(-(int)total));
        blk_unref(src);
        return 1;
    }
    if (bitmaps && check_bitmaps(blk_bs(src), skip_broken) < 0) {
        blk_unref(src);
        return 1;
    }
    if (!no_create) {
        int r = img_create_image(dst_name, out_fmt, options, out_base, base_fmt, total, false,
                                 true, false, true);
        if (r) {
            blk_unref(src);
            return 1;
        }
    }
    to.fmt = out_fmt;
    to.cache = dst_cache;
    to.image_opts = target_image_opts;
    /* qemu-img's img_add_key_secrets: the new image opens with the secret
     * it was encrypted with */
    char *secrets = NULL;
    OptDict *co = options ? optdict_parse(options, NULL, NULL) : NULL;
    for (size_t i = 0; co && i < optdict_count(co); i++) {
        const char *k = optdict_key_at(co, i);
        size_t kl = strlen(k);
        if (kl >= 10 && !strcmp(k + kl - 10, "key-secret")) {
            char *n = NULL;
            if (asprintf(&n, "%s%s%s=%s", secrets ? secrets : "", secrets ? "," : "", k,
                         optdict_value_at(co, i)) < 0) {
                abort();
            }
            free(secrets);
            secrets = n;
        }
    }
    optdict_free(co);
    to.extra_options = secrets;
    BlockBackend *dst = img_open(dst_name, &to);
    free(secrets);
    if (!dst) {
        blk_unref(src);
        return 1;
    }
    if (bitmaps) {
        BdrvBitmapInfo *l = NULL;
        size_t n = 0;
        if (bdrv_bitmap_list(blk_bs(dst), &l, &n) == -ENOTSUP) {
            error_report("Format driver '%s' does not support bitmaps",
                         bdrv_get_format_name(blk_bs(dst)));
            blk_unref(dst);
            blk_unref(src);
            return 1;
        }
        bdrv_bitmap_list_free(l, n);
    }
    int64_t dst_size = blk_getlength(dst);
    if (no_create && dst_size >= 0 && dst_size < total) {
        error_report("output file is smaller than input file");
        blk_unref(dst);
        blk_unref(src);
        return 1;
    }
    ConvertState s = {
        .src = src, .dst = dst, .total = total, .min_sparse = (size_t)min_sparse,
        .has_zero_init = !no_create && !target_has_backing && bdrv_has_zero_init(blk_bs(dst)) > 0,
        .unordered = unordered, .nworkers = nworkers,
        .compressed = compressed, .target_has_backing = target_has_backing,
        .target_backing_len = -1,
    };
    if (target_has_backing) {
        s.src_base = bdrv_backing_bs(bdrv_skip_filters(blk_bs(src)));
        BlockDriverState *tb = bdrv_backing_bs(bdrv_skip_filters(blk_bs(dst)));
        if (!no_create && tb) {
            /* unknown (an error) only costs the zeros past its end */
            s.target_backing_len = bdrv_getlength(tb);
        }
    }
    if (compressed) {
        BlockDriverInfo bdi = { 0 };
        if (!bdrv_supports_compressed_writes(blk_bs(dst))) {
            error_report("Compression not supported for this file format");
            blk_unref(dst);
            blk_unref(src);
            return 1;
        }
        if (bdrv_get_info(blk_bs(dst), &bdi) < 0) {
            error_report("could not get block driver info");
            blk_unref(dst);
            blk_unref(src);
            return 1;
        }
        if (bdi.cluster_size <= 0 || (int64_t)bdi.cluster_size > (int64_t)IO_BUF_SIZE) {
            error_report("invalid cluster size");
            blk_unref(dst);
            blk_unref(src);
            return 1;
        }
        s.cluster_size = bdi.cluster_size;
    }
    progress_init(progress, 1.0);
    progress_print(0, 100);
    int ret = do_copy(&s);
    if (ret == 0 && compressed) {
        /* the end of the compressed output, as qemu-img says it */
        static uint8_t none[1];
        ret = blk_pwrite(dst, 0, 0, none, BDRV_REQ_WRITE_COMPRESSED);
        if (ret < 0) {
            error_report("error while writing at byte 0: %s", strerror(-ret));
        }
    }
    if (ret == 0 && bitmaps) {
        ret = copy_bitmaps(blk_bs(src), blk_bs(dst), skip_broken);
    }
    if (ret == 0) {
        ret = blk_flush(dst);
        if (ret < 0) {
            error_report("error while flushing %s: %s", dst_name, strerror(-ret));
        }
    }
    if (ret == 0) {
        progress_print(100, 0);
    }
    progress_end();
    blk_unref(dst);
    blk_unref(src);
    return ret ? 1 : 0;
}
