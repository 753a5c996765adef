/*
 * img-compare.c - `ublkd img compare`: are two images' guest-visible
 * contents the same?  qemu-img's algorithm: walk both images' block status;
 * ranges zero in both are equal without reading, allocated-vs-unallocated
 * ranges only need the allocated side checked for zeroes, the rest is read
 * and compared.  Exit codes are qemu-img's: 0 identical, 1 different,
 * 2 open error, 3 block status error, 4 read error.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

#define IO_BUF_SIZE (2 * MiB)

static int check_empty(BlockBackend *blk, int64_t offset, int64_t bytes, const char *filename,
                       uint8_t *buf, bool quiet)
{
    int ret = blk_pread(blk, offset, bytes, buf, 0);
    if (ret < 0) {
        error_report("Error while reading offset %" PRId64 " of %s: %s", offset, filename,
                     strerror(-ret));
        return 4;
    }
    int64_t idx = img_find_nonzero(buf, bytes);
    if (idx >= 0) {
        if (!quiet) {
            printf("Content mismatch at offset %" PRId64 "!\n", offset + idx);
        }
        return 1;
    }
    return 0;
}

static int compare(BlockBackend *blk1, BlockBackend *blk2, const char *f1, const char *f2,
                   bool strict, bool quiet)
{
    BlockDriverState *bs1 = blk_bs(blk1), *bs2 = blk_bs(blk2);
    int64_t size1 = blk_getlength(blk1), size2 = blk_getlength(blk2);
    if (size1 < 0 || size2 < 0) {
        error_report("Can't get size of %s: %s", size1 < 0 ? f1 : f2,
                     strerror(-(int)(size1 < 0 ? size1 : size2)));
        return 4;
    }
    int64_t total = MIN(size1, size2), progress_base = MAX(size1, size2);
    uint8_t *buf1 = aligned_alloc_or_die(4096, IO_BUF_SIZE);
    uint8_t *buf2 = aligned_alloc_or_die(4096, IO_BUF_SIZE);
    int64_t offset = 0, map;
    BlockDriverState *file;
    int ret = 0;

    progress_print(0, 100);
    if (strict && size1 != size2) {
        if (!quiet) {
            printf("Strict mode: Image size mismatch!\n");
        }
        ret = 1;
        goto out;
    }
    while (offset < total) {
        int64_t pnum1, pnum2;
        int st1 = bdrv_block_status_above(bs1, NULL, offset, size1 - offset, &pnum1, &map, &file);
        if (st1 < 0) {
            error_report("Sector allocation test failed for %s", f1);
            ret = 3;
            goto out;
        }
        int st2 = bdrv_block_status_above(bs2, NULL, offset, size2 - offset, &pnum2, &map, &file);
        if (st2 < 0) {
            error_report("Sector allocation test failed for %s", f2);
            ret = 3;
            goto out;
        }
        bool alloc1 = st1 & BDRV_BLOCK_ALLOCATED, alloc2 = st2 & BDRV_BLOCK_ALLOCATED;
        int64_t chunk = MIN(pnum1, pnum2);
        chunk = MIN(chunk, total - offset);
        if (strict && st1 != st2) {
            if (!quiet) {
                printf("Strict mode: Offset %" PRId64 " block status mismatch!\n", offset);
            }
            ret = 1;
            goto out;
        }
        if ((st1 & BDRV_BLOCK_ZERO) && (st2 & BDRV_BLOCK_ZERO)) {
            /* equal without reading */
        } else if (alloc1 == alloc2) {
            if (alloc1) {
                chunk = MIN(chunk, (int64_t)IO_BUF_SIZE);
                int r = blk_pread(blk1, offset, chunk, buf1, 0);
                if (r < 0) {
                    error_report("Error while reading offset %" PRId64 " of %s: %s", offset, f1,
                                 strerror(-r));
                    ret = 4;
                    goto out;
                }
                r = blk_pread(blk2, offset, chunk, buf2, 0);
                if (r < 0) {
                    error_report("Error while reading offset %" PRId64 " of %s: %s", offset, f2,
                                 strerror(-r));
                    ret = 4;
                    goto out;
                }
                int64_t pnum;
                bool diff = img_compare_buffers(buf1, buf2, chunk, &pnum);
                if (diff || pnum != chunk) {
                    if (!quiet) {
                        printf("Content mismatch at offset %" PRId64 "!\n",
                               offset + (diff ? 0 : pnum));
                    }
                    ret = 1;
                    goto out;
                }
            }
        } else {
            chunk = MIN(chunk, (int64_t)IO_BUF_SIZE);
            ret = alloc1 ? check_empty(blk1, offset, chunk, f1, buf1, quiet)
                         : check_empty(blk2, offset, chunk, f2, buf1, quiet);
            if (ret) {
                goto out;
            }
        }
        offset += chunk;
        progress_print(((float)chunk / progress_base) * 100, 100);
    }
    if (size1 != size2) {
        BlockBackend *over = size1 > size2 ? blk1 : blk2;
        const char *fover = size1 > size2 ? f1 : f2;
        if (!quiet) {
            printf("Warning: Image size mismatch!\n");
        }
        while (offset < progress_base) {
            int64_t chunk;
            int st = bdrv_block_status_above(blk_bs(over), NULL, offset, progress_base - offset,
                                             &chunk, &map, &file);
            if (st < 0) {
                error_report("Sector allocation test failed for %s", fover);
                ret = 3;
                goto out;
            }
            if ((st & BDRV_BLOCK_ALLOCATED) && !(st & BDRV_BLOCK_ZERO)) {
                chunk = MIN(chunk, (int64_t)IO_BUF_SIZE);
                ret = check_empty(over, offset, chunk, fover, buf1, quiet);
                if (ret) {
                    goto out;
                }
            }
            offset += chunk;
            progress_print(((float)chunk / progress_base) * 100, 100);
        }
    }
    if (!quiet) {
        printf("Images are identical.\n");
    }
    ret = 0;
out:
    free(buf1);
    free(buf2);
    return ret;
}

int img_compare(int argc, char **argv)
{
    ImgOpenOpts o1 = { 0 }, o2 = { 0 };
    bool strict = false, progress = false, quiet = false;
    const char *cache = NULL;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, 'X' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': o1.fmt = optarg; break;
        case 'F': o2.fmt = optarg; break;
        case 'T': cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 's': strict = true; break;
        case 'X':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case 'U': o1.force_share = o2.force_share = true; break;
        case 'I': o1.image_opts = o2.image_opts = true; break;
        case 'h':
            printf("usage: ublkd img compare [--image-opts] [-f fmt] [-F fmt] [-T src_cache]"
                   " [-p] [-q] [-s] [-U] filename1 filename2\n");
            return 0;
        default:
            return img_opt_error(c, argv);   /* 1, as qemu-img's usage errors */
        }
    }
    /* Progress is for humans; -q wins, as in qemu-img. */
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 2) {
        return img_usage_error("Expecting two image file names");
    }
    const char *f1 = argv[optind], *f2 = argv[optind + 1];
    int cache_flags;
    if (cache && bdrv_parse_cache_mode(cache, &cache_flags, NULL) < 0) {
        error_report("Invalid source cache option: %s", cache);
        return 2;
    }
    o1.cache = o2.cache = cache;
    BlockBackend *blk1 = img_open(f1, &o1);
    if (!blk1) {
        return 2;
    }
    BlockBackend *blk2 = img_open(f2, &o2);
    if (!blk2) {
        blk_unref(blk1);
        return 2;
    }
    progress_init(progress, 2.0);
    int ret = compare(blk1, blk2, f1, f2, strict, quiet);
    blk_unref(blk2);
    blk_unref(blk1);
    progress_end();
    return ret;
}
