/*
 * img-rebase.c - `ublkd img rebase`: put an image on another backing file,
 * as qemu-img 7.2's img_rebase does.
 *
 * Unsafe mode (-u) only records the new name (the backing chain is not
 * even opened).  Safe mode keeps what the guest reads: every range the
 * image does not allocate itself is read from the old chain and from the
 * new backing file (each read as zeros past its end, or entirely with
 * -b ""), in chunks of up to 2 MiB, compared 512-byte sector by sector,
 * and every run of sectors that differs is written into the image (zeros
 * as a zero write where the old chain ends).  Only then is the new name
 * recorded, in one header write: a crash before it leaves the old backing
 * with the same contents.  If the new backing file is in the old chain,
 * ranges no layer above it allocates are skipped.  Messages, progress and
 * exit codes are qemu-img's.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

#define IO_BUF_SIZE (2 * MiB)

/* QEMU's bdrv_find_backing_image: the node in bs's backing chain that
 * `name` names, resolved relative to each layer's own directory. */
BlockDriverState *img_find_backing_image(BlockDriverState *bs, const char *name)
{
    for (BlockDriverState *curr = bs; curr && bdrv_backing_bs(curr);
         curr = bdrv_backing_bs(curr)) {
        const char *recorded = bdrv_get_backing_filename(curr);
        const char *image = bdrv_get_filename(curr);
        char want[PATH_MAX], have[PATH_MAX];
        if (!strcmp(name, recorded)) {
            return bdrv_backing_bs(curr);
        }
        char *a = img_backing_path(image, name), *b = img_backing_path(image, recorded);
        bool same = a && b && realpath(a, want) && realpath(b, have) && !strcmp(want, have);
        free(a);
        free(b);
        if (same) {
            return bdrv_backing_bs(curr);
        }
    }
    return NULL;
}

/* Allocated in bs itself (not below it). */
static int is_allocated_top(BlockDriverState *bs, int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t map;
    BlockDriverState *file;
    int ret = bdrv_block_status_above(bs, bdrv_backing_bs(bs), offset, bytes, pnum, &map, &file);
    return ret < 0 ? ret : !!(ret & BDRV_BLOCK_ALLOCATED);
}

/* Allocated somewhere from top down to (not including) base. */
static int is_allocated_above(BlockDriverState *top, BlockDriverState *base, int64_t offset,
                              int64_t bytes, int64_t *pnum)
{
    int64_t map;
    BlockDriverState *file;
    int ret = bdrv_block_status_above(top, base, offset, bytes, pnum, &map, &file);
    return ret < 0 ? ret : !!(ret & BDRV_BLOCK_ALLOCATED);
}

static int copy_differences(BlockBackend *blk, BlockBackend *old_blk, BlockBackend *new_blk,
                            BlockDriverState *prefix, const char *filename,
                            const char *out_baseimg)
{
    BlockDriverState *bs = blk_bs(blk);
    uint8_t *buf_old = aligned_alloc_or_die(4096, IO_BUF_SIZE);
    uint8_t *buf_new = aligned_alloc_or_die(4096, IO_BUF_SIZE);
    int64_t size, old_size = 0, new_size = 0, n;
    float local_progress = 0;
    int ret = 0;

    size = blk_getlength(blk);
    if (size < 0) {
        error_report("Could not get size of '%s': %s", filename, strerror((int)-size));
        ret = -1;
        goto out;
    }
    if (old_blk) {
        old_size = blk_getlength(old_blk);
        if (old_size < 0) {
            error_report("Could not get size of '%s': %s", bdrv_get_backing_filename(bs),
                         strerror((int)-old_size));
            ret = -1;
            goto out;
        }
    }
    if (new_blk) {
        new_size = blk_getlength(new_blk);
        if (new_size < 0) {
            error_report("Could not get size of '%s': %s", out_baseimg,
                         strerror((int)-new_size));
            ret = -1;
            goto out;
        }
    }
    if (size != 0) {
        local_progress = (float)100 / (float)(size / MIN(size, (int64_t)IO_BUF_SIZE));
    }
    for (int64_t offset = 0; offset < size; offset += n) {
        bool old_is_zero = false;

        n = MIN((int64_t)IO_BUF_SIZE, size - offset);
        ret = is_allocated_top(bs, offset, n, &n);
        if (ret < 0) {
            error_report("error while reading image metadata: %s", strerror(-ret));
            goto out;
        }
        if (ret) {
            continue;
        }
        if (prefix) {
            /* unchanged since the new backing file: nothing to do */
            ret = is_allocated_above(bdrv_backing_bs(bs), prefix, offset, n, &n);
            if (ret < 0) {
                error_report("error while reading image metadata: %s", strerror(-ret));
                goto out;
            }
            if (!ret) {
                continue;
            }
        }
        if (offset >= old_size) {
            memset(buf_old, 0, (size_t)n);
            old_is_zero = true;
        } else {
            n = MIN(n, old_size - offset);
            ret = blk_pread(old_blk, offset, n, buf_old, 0);
            if (ret < 0) {
                error_report("error while reading from old backing file");
                goto out;
            }
        }
        if (!new_blk || offset >= new_size) {
            memset(buf_new, 0, (size_t)n);
        } else {
            n = MIN(n, new_size - offset);
            ret = blk_pread(new_blk, offset, n, buf_new, 0);
            if (ret < 0) {
                error_report("error while reading from new backing file");
                goto out;
            }
        }
        for (int64_t written = 0; written < n;) {
            int64_t pnum;
            if (img_compare_buffers(buf_old + written, buf_new + written, n - written, &pnum)) {
                ret = old_is_zero ? blk_pwrite_zeroes(blk, offset + written, pnum, 0)
                                  : blk_pwrite(blk, offset + written, pnum, buf_old + written, 0);
                if (ret < 0) {
                    error_report("Error while writing to COW image: %s", strerror(-ret));
                    goto out;
                }
            }
            written += pnum;
        }
        progress_print(local_progress, 100);
    }
    ret = 0;
out:
    free(buf_old);
    free(buf_new);
    return ret;
}

int img_rebase(int argc, char **argv)
{
    ImgOpenOpts oo = { .writable = true };
    const char *cache = "writeback", *src_cache = "writeback";
    const char *out_baseimg = NULL, *out_basefmt = NULL;
    bool unsafe = false, progress = false, quiet = false, force_share = false;
    BlockBackend *blk = NULL, *old_blk = NULL, *new_blk = NULL;
    BlockDriverState *prefix = NULL;
    Error *err = NULL;
    int ret = -1, c, src_flags = 0;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: ublkd img rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt]"
                   " [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt]"
                   " filename\n");
            return 0;
        case 'f': oo.fmt = optarg; break;
        case 'F': out_basefmt = optarg; break;
        case 'b': out_baseimg = optarg; break;
        case 'u': unsafe = true; break;
        case 'p': progress = true; break;
        case 't': cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': quiet = true; break;
        case 'I': oo.image_opts = true; break;
        case 'U': force_share = true; break;
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
    if (!unsafe && !out_baseimg) {
        return img_usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
    }
    const char *filename = argv[optind];

    progress_init(progress, 2.0);
    progress_print(0, 100);
    int flags = 0;
    if (bdrv_parse_cache_mode(cache, &flags, NULL) < 0) {
        error_report("Invalid cache option: %s", cache);
        goto out;
    }
    if (bdrv_parse_cache_mode(src_cache, &src_flags, NULL) < 0) {
        error_report("Invalid source cache option: %s", src_cache);
        goto out;
    }
    /* The old backing file need not open for an unsafe rebase: it may be
     * the very file that moved. */
    oo.cache = cache;
    oo.no_backing = unsafe;
    blk = img_open(filename, &oo);
    if (!blk) {
        goto out;
    }
    BlockDriverState *bs = blk_bs(blk);
    if (out_basefmt && !bdrv_find_format(out_basefmt)) {
        error_report("Invalid format name: '%s'", out_basefmt);
        goto out;
    }

    if (!unsafe) {
        BlockDriverState *base_bs = bdrv_backing_bs(bs);
        if (base_bs) {
            old_blk = blk_new_with_bs(base_bs, &err);
            if (!old_blk) {
                error_prepend(&err, "Could not reuse old backing file '%s': ",
                              bdrv_get_filename(base_bs));
                error_report_err(err);
                goto out;
            }
        }
        if (out_baseimg[0]) {
            char *path = img_backing_path(bdrv_get_filename(bs), out_baseimg);
            if (!path) {
                error_report("Could not resolve backing filename: %s", strerror(ENOMEM));
                goto out;
            }
            prefix = img_find_backing_image(bs, path);
            if (prefix) {
                new_blk = blk_new_with_bs(prefix, &err);
                if (!new_blk) {
                    free(path);
                    error_prepend(&err, "Could not reuse backing file '%s': ", out_baseimg);
                    error_report_err(err);
                    goto out;
                }
            } else {
                OptDict *opts = optdict_new();
                if (out_basefmt) {
                    optdict_set(opts, "driver", out_basefmt);
                }
                int nflags = src_flags | (force_share ? BDRV_O_FORCE_SHARE : BDRV_O_SHARE_WRITE);
                new_blk = blk_new_open(path, opts, nflags, &err);
                if (!new_blk) {
                    free(path);
                    error_prepend(&err, "Could not open new backing file '%s': ", out_baseimg);
                    error_report_err(err);
                    goto out;
                }
            }
            free(path);
        }
        if (copy_differences(blk, old_blk, new_blk, prefix, filename, out_baseimg) < 0) {
            goto out;
        }
    }

    /* Everything that differed is in the image now: the name can change. */
    if (out_baseimg && *out_baseimg) {
        ret = bdrv_change_backing_file(bs, out_baseimg, out_basefmt, true);
    } else {
        ret = bdrv_change_backing_file(bs, NULL, NULL, false);
    }
    if (ret == -ENOSPC) {
        error_report("Could not change the backing file to '%s': No space left in the file"
                     " header", out_baseimg);
    } else if (ret == -EINVAL && out_baseimg && !out_basefmt) {
        error_report("Could not change the backing file to '%s': backing format must be"
                     " specified", out_baseimg);
    } else if (ret < 0) {
        /* glibc prints a NULL name so, and qemu-img relies on it */
        error_report("Could not change the backing file to '%s': %s",
                     out_baseimg ? out_baseimg : "(null)", strerror(-ret));
    }
    progress_print(100, 0);
out:
    progress_end();
    blk_unref(old_blk);
    blk_unref(new_blk);
    blk_unref(blk);
    return ret ? 1 : 0;
}
