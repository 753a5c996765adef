/*
 * img-commit.c - `ublkd img commit`: write what an image (and the layers
 * down to the base) allocates into the base, so the base reads as the
 * image did; as qemu-img 7.2's img_commit, whose active commit job this
 * does without a job.
 *
 * The base is opened read-write inside the image's own chain (the
 * backing.read-only=off option at its depth) so that there is one node per
 * file: the image's backing edges let that node be written because the
 * image is opened sharing writes, and nobody but this command holds it.
 * Ranges allocated above the base, rounded out to the job's granularity
 * (the base's cluster size within 4 KiB..64 KiB), are read through the top
 * and written into the base; a range that reads as zeros and covers whole
 * base clusters becomes a zero write that may unmap.  The base grows first
 * if it is shorter.  Without -d (and -b) the image is emptied afterwards
 * (make_empty: qcow2 rebuilds it empty), so it reads as its backing file.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "block-backend.h"
#include "img.h"

#define COMMIT_BUF_SIZE (2 * MiB)

typedef struct Run {
    int64_t start, end;
} Run;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The runs allocated above base, rounded out to gran and merged. */
static int dirty_runs(BlockDriverState *top, BlockDriverState *base, int64_t size, int64_t gran,
                      Run **out, size_t *nout, int64_t *total)
{
    Run *runs = NULL;
    size_t n = 0, cap = 0;
    int64_t pnum, map;
    BlockDriverState *file;

    *total = 0;
    for (int64_t off = 0; off < size; off += pnum) {
        int ret = bdrv_block_status_above(top, base, off, size - off, &pnum, &map, &file);
        if (ret < 0) {
            free(runs);
            return ret;
        }
        if (!(ret & BDRV_BLOCK_ALLOCATED)) {
            continue;
        }
        int64_t s = ALIGN_DOWN(off, gran), e = MIN(ALIGN_UP(off + pnum, gran), size);
        if (n && runs[n - 1].end >= s) {
            runs[n - 1].end = MAX(runs[n - 1].end, e);
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            Run *r = realloc(runs, cap * sizeof(*r));
            if (!r) {
                free(runs);
                return -ENOMEM;
            }
            runs = r;
        }
        runs[n++] = (Run){ s, e };
    }
    for (size_t i = 0; i < n; i++) {
        *total += runs[i].end - runs[i].start;
    }
    *out = runs;
    *nout = n;
    return 0;
}

static int commit_data(BlockBackend *blk, BlockBackend *base_blk, BlockDriverState *base,
                       int64_t rate, Error **errp)
{
    BlockDriverState *top = blk_bs(blk);
    int64_t size = blk_getlength(blk), base_len = blk_getlength(base_blk), total;
    BlockDriverInfo bdi = { 0 };
    Run *runs = NULL;
    size_t nruns = 0;
    int ret;

    if (size < 0 || base_len < 0) {
        ret = (int)(size < 0 ? size : base_len);
        error_setg_errno(errp, -ret, "Block job failed");
        return ret;
    }
    /* QEMU's bdrv_get_default_bitmap_granularity */
    int64_t gran = 65536, base_cluster = 1;
    if (bdrv_get_info(base, &bdi) >= 0 && bdi.cluster_size > 0) {
        gran = MIN(65536, MAX(4096, bdi.cluster_size));
        base_cluster = bdi.cluster_size;
    }
    if (size > base_len) {
        Error *local = NULL;
        ret = blk_truncate(base_blk, size, false, PREALLOC_MODE_OFF, &local);
        error_free(local);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Block job failed");
            return ret;
        }
    }
    ret = dirty_runs(top, base, size, gran, &runs, &nruns, &total);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Block job failed");
        return ret;
    }
    uint8_t *buf = aligned_alloc_or_die(4096, COMMIT_BUF_SIZE);
    double start = now_s();
    int64_t done = 0;
    for (size_t i = 0; i < nruns && ret == 0; i++) {
        for (int64_t off = runs[i].start; off < runs[i].end && ret == 0;) {
            int64_t left = runs[i].end - off, pnum, map;
            BlockDriverState *file;
            int st = bdrv_block_status_above(top, NULL, off, left, &pnum, &map, &file);
            int64_t io = MIN(left, (int64_t)COMMIT_BUF_SIZE);
            bool zero = false;
            if (st >= 0 && !(st & BDRV_BLOCK_DATA)) {
                int64_t z = ALIGN_DOWN(MIN(pnum, left), gran);
                if (z >= gran && (st & BDRV_BLOCK_ZERO) && !(off % base_cluster) &&
                    !(z % base_cluster)) {
                    io = z;
                    zero = true;
                }
            } else if (st >= 0) {
                io = MIN(io, MAX(ALIGN_DOWN(MIN(pnum, left), gran), MIN(gran, left)));
            }
            if (zero) {
                ret = blk_pwrite_zeroes(base_blk, off, io, BDRV_REQ_MAY_UNMAP);
            } else {
                ret = blk_pread(blk, off, io, buf, 0);
                if (ret == 0) {
                    ret = blk_pwrite(base_blk, off, io, buf, 0);
                }
            }
            off += io;
            done += io;
            if (total) {
                progress_print((float)io / (float)total * 100, 100);
            }
            if (rate > 0) {
                double ahead = (double)done / (double)rate - (now_s() - start);
                if (ahead > 0) {
                    struct timespec ts = { (time_t)ahead,
                                           (long)((ahead - (double)(time_t)ahead) * 1e9) };
                    nanosleep(&ts, NULL);
                }
            }
        }
    }
    free(buf);
    free(runs);
    if (ret == 0) {
        ret = blk_flush(base_blk);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Block job failed");
    }
    return ret;
}

int img_commit(int argc, char **argv)
{
    ImgOpenOpts oo = { .writable = true, .cache = "writeback" };
    const char *base = NULL;
    bool progress = false, quiet = false, drop = false;
    int64_t rate = 0;
    Error *err = NULL;
    int c;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { NULL, 0, NULL, 0 },
    };

    optind = 0;
    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: ublkd img commit [--object objectdef] [--image-opts] [-q] [-f fmt]"
                   " [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename\n");
            return 0;
        case 'f': oo.fmt = optarg; break;
        case 't': oo.cache = optarg; break;
        case 'b': base = optarg; drop = true; break;     /* -b implies -d */
        case 'd': drop = true; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 'r':
            rate = img_cvtnum_full("rate limit", optarg, 0, INT64_MAX);
            if (rate < 0) {
                return 1;
            }
            break;
        case 'I': oo.image_opts = true; break;
        case 'O':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        default:
            return img_opt_error(c, argv);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 1) {
        return img_usage_error("Expecting one image file name");
    }
    const char *filename = argv[optind];
    int flags;
    if (bdrv_parse_cache_mode(oo.cache, &flags, NULL) < 0) {
        error_report("Invalid cache option: %s", oo.cache);
        return 1;
    }
    /* The backing edges let the base be written (see above). */
    oo.extra_flags = BDRV_O_UNMAP | BDRV_O_SHARE_WRITE;
    BlockBackend *blk = img_open(filename, &oo);
    if (!blk) {
        return 1;
    }
    progress_init(progress, 1.f);
    progress_print(0, 100);

    BlockDriverState *bs = blk_bs(blk), *base_bs;
    if (base) {
        base_bs = img_find_backing_image(bs, base);
        if (!base_bs) {
            error_setg(&err, "Did not find '%s' in the backing chain of '%s'", base, filename);
            goto done;
        }
    } else {
        base_bs = bdrv_backing_bs(bs);
        if (!base_bs) {
            error_setg(&err, "Image does not have a backing file");
            goto done;
        }
    }
    /* Open the chain again with the base read-write (one node per file). */
    int depth = 0;
    for (BlockDriverState *b = bs; b != base_bs; b = bdrv_backing_bs(b)) {
        depth++;
    }
    size_t elen = (size_t)depth * 8 + sizeof("read-only=off");
    char *extra = malloc(elen);
    if (!extra) {
        abort();
    }
    for (int i = 0; i < depth; i++) {
        memcpy(extra + i * 8, "backing.", 8);
    }
    memcpy(extra + (size_t)depth * 8, "read-only=off", sizeof("read-only=off"));
    blk_unref(blk);
    oo.extra_options = extra;
    blk = img_open(filename, &oo);
    free(extra);
    if (!blk) {
        progress_end();
        return 1;
    }
    bs = blk_bs(blk);
    base_bs = bs;
    for (int i = 0; i < depth && base_bs; i++) {
        base_bs = bdrv_backing_bs(base_bs);
    }
    BlockBackend *base_blk = base_bs ? blk_new_with_bs(base_bs, &err) : NULL;
    if (!base_blk) {
        if (!err) {
            error_setg(&err, "Image does not have a backing file");
        }
        goto done;
    }
    int ret = commit_data(blk, base_blk, base_bs, rate, &err);
    blk_unref(base_blk);
    if (ret < 0) {
        goto done;
    }
    progress_print(100, 0);
    if (!drop) {
        ret = bdrv_make_empty(bs);
        if (ret < 0 && ret != -ENOTSUP) {
            error_setg_errno(&err, -ret, "Could not empty %s", filename);
            goto done;
        }
    }
done:
    progress_end();
    blk_unref(blk);
    if (err) {
        error_report_err(err);
        return 1;
    }
    if (!quiet) {
        printf("Image committed.\n");
    }
    return 0;
}
