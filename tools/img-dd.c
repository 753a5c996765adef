/*
 * img-dd.c - `ublkd img dd`: copy part of an image into a new one, as
 * qemu-img 7.2's dd does: operands if=, of=, bs= (default 512), count=
 * (blocks) and skip= (blocks of the input); -f, -O (default raw), -U,
 * --image-opts for the input.  The output is created with the size of what
 * is copied and written block by block; every byte is written, so the
 * output is not sparse.
 *
 * qemu-img's quirks are kept so that scripts get the same files: count
 * bounds the input end (count * bs), not the amount copied after skip, and
 * a skip past the end makes an empty output after a warning.
 */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

typedef struct DdArgs {
    const char *in, *out;
    int64_t bs, count, skip;
    bool has_count, has_skip;
} DdArgs;

/* One "name=value" operand; prints qemu-img's message and returns -1 if bad. */
static int dd_operand(const char *arg, DdArgs *a)
{
    const char *eq = strchr(arg, '=');
    if (!eq) {
        error_report("unrecognized operand %s", arg);
        return -1;
    }
    const char *v = eq + 1;
    size_t n = (size_t)(eq - arg);
    if (n == 2 && !strncmp(arg, "bs", 2)) {
        a->bs = img_cvtnum_full("bs", v, 1, INT_MAX);
        return a->bs < 0 ? -1 : 0;
    } else if (n == 5 && !strncmp(arg, "count", 5)) {
        a->count = img_cvtnum_full("count", v, 0, INT64_MAX);
        a->has_count = true;
        return a->count < 0 ? -1 : 0;
    } else if (n == 4 && !strncmp(arg, "skip", 4)) {
        a->skip = img_cvtnum_full("skip", v, 0, INT64_MAX);
        a->has_skip = true;
        return a->skip < 0 ? -1 : 0;
    } else if (n == 2 && !strncmp(arg, "if", 2)) {
        a->in = v;
        return 0;
    } else if (n == 2 && !strncmp(arg, "of", 2)) {
        a->out = v;
        return 0;
    }
    error_report("unrecognized operand %.*s", (int)n, arg);
    return -1;
}

int img_dd(int argc, char **argv)
{
    ImgOpenOpts io = { 0 };
    const char *out_fmt = "raw";
    DdArgs a = { .bs = 512 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, 'X' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': io.fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'U': io.force_share = true; break;
        case 'I': io.image_opts = true; break;
        case 'X':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case 'h':
            printf("usage: ublkd img dd [--image-opts] [-U] [-f fmt] [-O output_fmt]"
                   " [bs=block_size] [count=blocks] [skip=blocks] if=input of=output\n");
            return 0;
        default:
            return img_opt_error(c, argv);
        }
    }
    for (int i = optind; i < argc; i++) {
        if (dd_operand(argv[i], &a) < 0) {
            return 1;
        }
    }
    if (!a.in || !a.out) {
        error_report("Must specify both input and output files");
        return 1;
    }
    BlockBackend *src = img_open(a.in, &io);
    if (!src) {
        return 1;
    }
    int ret = 1;
    BlockBackend *dst = NULL;
    uint8_t *buf = NULL;
    const BlockDriver *drv = bdrv_find_format(out_fmt);
    if (!drv) {
        error_report("Unknown file format");
        goto out;
    }
    if (!bdrv_driver_can_create(drv)) {
        error_report("Format driver '%s' does not support image creation", out_fmt);
        goto out;
    }
    int64_t size = blk_getlength(src);
    if (size < 0) {
        error_report("Failed to get size for '%s'", a.in);
        goto out;
    }
    if (a.has_count && a.count <= INT64_MAX / a.bs && a.count * a.bs < size) {
        size = a.count * a.bs;
    }
    /* A skip beyond the input (or overflowing) gives an empty output. */
    bool skip_past = a.has_skip && (a.skip > INT64_MAX / a.bs || size < a.skip * a.bs);
    OptDict *opts = optdict_new();
    optdict_set_int(opts, "size", skip_past ? 0 : size - a.skip * a.bs);
    Error *err = NULL;
    int r = bdrv_create(drv, a.out, opts, &err);
    optdict_free(opts);
    if (r < 0) {
        error_prepend(&err, "%s: error while creating output image: ", a.out);
        error_report_err(err);
        goto out;
    }
    ImgOpenOpts oo = { .fmt = out_fmt, .writable = true };
    dst = img_open(a.out, &oo);
    if (!dst) {
        goto out;
    }
    int64_t in_pos = a.skip * a.bs;
    if (skip_past) {
        /* Like dd(1): a warning and an empty output, successfully. */
        error_report("%s: cannot skip to specified offset", a.in);
        ret = 0;
        goto out;
    }
    buf = aligned_alloc_or_die(4096, ALIGN_UP((size_t)a.bs, 4096));
    for (int64_t out_pos = 0; in_pos < size;) {
        int64_t n = MIN(a.bs, size - in_pos);
        r = blk_pread(src, in_pos, n, buf, 0);
        if (r < 0) {
            error_report("error while reading from input image file: %s", strerror(-r));
            goto out;
        }
        in_pos += n;
        r = blk_pwrite(dst, out_pos, n, buf, 0);
        if (r < 0) {
            error_report("error while writing to output image file: %s", strerror(-r));
            goto out;
        }
        out_pos += n;
    }
    ret = 0;
out:
    free(buf);
    blk_unref(dst);
    blk_unref(src);
    return ret;
}
