/*
 * img-bitmap.c - `ublkd img bitmap`: add, remove, clear, enable, disable and
 * merge persistent dirty bitmaps, with qemu-img 7.2's syntax, order of
 * checks, messages and exit codes.
 *
 * The actions run in the order given, on the image opened read-write
 * without its backing chain; the format driver changes its in-memory
 * bitmaps (bdrv_bitmap_op) and stores them when the image is closed, so
 * the actions before a failing one stay done, as in qemu-img.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

enum { OPT_ADD = 256, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE, OPT_OBJECT,
       OPT_IMAGE_OPTS };

static const char *const op_names[] = {
    [BDRV_BITMAP_ADD] = "add", [BDRV_BITMAP_REMOVE] = "remove", [BDRV_BITMAP_CLEAR] = "clear",
    [BDRV_BITMAP_ENABLE] = "enable", [BDRV_BITMAP_DISABLE] = "disable",
    [BDRV_BITMAP_MERGE] = "merge",
};

int img_bitmap(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "add", no_argument, NULL, OPT_ADD },
        { "remove", no_argument, NULL, OPT_REMOVE },
        { "clear", no_argument, NULL, OPT_CLEAR },
        { "enable", no_argument, NULL, OPT_ENABLE },
        { "disable", no_argument, NULL, OPT_DISABLE },
        { "merge", required_argument, NULL, OPT_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenOpts oo = { .writable = true, .no_backing = true };
    const char *src_filename = NULL, *src_fmt = NULL;
    int64_t granularity = 0;
    bool add = false, merge = false;
    BdrvBitmapOp *ops = calloc((size_t)argc + 1, sizeof(*ops));
    int nb_ops = 0, ret = 1, c;
    BlockBackend *blk = NULL, *src = NULL;

    if (!ops) {
        error_report("out of memory");
        return 1;
    }
    optind = 0;
    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': src_filename = optarg; break;
        case 'f': oo.fmt = optarg; break;
        case 'F': src_fmt = optarg; break;
        case 'g':
            granularity = img_cvtnum_full("granularity", optarg, 0, INT64_MAX);
            if (granularity < 0) {
                goto out;
            }
            break;
        case OPT_ADD: ops[nb_ops++].type = BDRV_BITMAP_ADD; add = true; break;
        case OPT_REMOVE: ops[nb_ops++].type = BDRV_BITMAP_REMOVE; break;
        case OPT_CLEAR: ops[nb_ops++].type = BDRV_BITMAP_CLEAR; break;
        case OPT_ENABLE: ops[nb_ops++].type = BDRV_BITMAP_ENABLE; break;
        case OPT_DISABLE: ops[nb_ops++].type = BDRV_BITMAP_DISABLE; break;
        case OPT_MERGE:
            ops[nb_ops].type = BDRV_BITMAP_MERGE;
            ops[nb_ops++].src_name = optarg;
            merge = true;
            break;
        case OPT_IMAGE_OPTS: oo.image_opts = true; break;
        case OPT_OBJECT:
            error_report("--object is not supported by ublkd img");
            goto out;
        case 'h':
            printf("usage: ublkd img bitmap (--merge SOURCE | --add | --remove | --clear |"
                   " --enable | --disable)... [-b source_file [-F source_fmt]]"
                   " [-g granularity] [--object objectdef] [--image-opts | -f fmt]"
                   " filename bitmap\n");
            ret = 0;
            goto out;
        default:
            ret = img_opt_error(c, argv);
            goto out;
        }
    }
    if (!nb_ops) {
        error_report("Need at least one of --add, --remove, --clear, --enable, --disable,"
                     " or --merge");
        goto out;
    }
    if (granularity && !add) {
        error_report("granularity only supported with --add");
        goto out;
    }
    if (src_fmt && !src_filename) {
        error_report("-F only supported with -b");
        goto out;
    }
    if (src_filename && !merge) {
        error_report("Merge bitmap source file only supported with --merge");
        goto out;
    }
    if (optind != argc - 2) {
        error_report("Expecting filename and bitmap name");
        goto out;
    }
    const char *filename = argv[optind], *bitmap = argv[optind + 1];

    blk = img_open(filename, &oo);
    if (!blk) {
        goto out;
    }
    BlockDriverState *src_bs = blk_bs(blk);
    if (src_filename) {
        ImgOpenOpts so = { .fmt = src_fmt, .no_backing = true };
        src = img_open(src_filename, &so);
        if (!src) {
            goto out;
        }
        src_bs = blk_bs(src);
    }
    for (int i = 0; i < nb_ops; i++) {
        Error *err = NULL;
        ops[i].name = bitmap;
        /* qemu-img passes the size to QMP's uint32 granularity; 0 means
         * "not given" before that. */
        ops[i].has_granularity = granularity != 0;
        ops[i].granularity = (uint32_t)granularity;
        ops[i].src = src_bs;
        if (bdrv_bitmap_op(blk_bs(blk), &ops[i], &err) < 0) {
            error_prepend(&err, "Operation %s on bitmap %s failed: ", op_names[ops[i].type],
                          bitmap);
            error_report_err(err);
            goto out;
        }
    }
    ret = 0;
out:
    if (src) {
        blk_unref(src);
    }
    if (blk) {
        blk_unref(blk);
    }
    free(ops);
    return ret;
}
