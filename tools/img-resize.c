/*
 * img-resize.c - `ublkd img resize`: change an image's virtual size through
 * the format driver's co_truncate (raw: the file; qcow2: its tables), with
 * qemu-img 7.2's syntax, checks, messages and exit codes.
 *
 * qemu-img takes the size off the end of argv before getopt sees it, so a
 * relative "-1G" is not an option; "--" before it works too.  Shrinking
 * needs --shrink; preallocation only applies to growth.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

static const char *const prealloc_names[] = { "off", "metadata", "falloc", "full", NULL };

int img_resize(int argc, char **argv)
{
    ImgOpenOpts oo = { .writable = true };
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    bool quiet = false, shrink = false;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "preallocation", required_argument, NULL, 'P' },
        { "shrink", no_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 },
    };

    if (argc < 3) {
        return img_usage_error("Not enough arguments");
    }
    const char *size = argv[--argc];
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":f:hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': oo.fmt = optarg; break;
        case 'q': quiet = true; break;
        case 'I': oo.image_opts = true; break;
        case 'S': shrink = true; break;
        case 'P': {
            int i = 0;
            while (prealloc_names[i] && strcmp(prealloc_names[i], optarg)) {
                i++;
            }
            if (!prealloc_names[i]) {
                error_report("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            prealloc = (PreallocMode)i;
            break;
        }
        case 'O':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case 'h':
            printf("usage: ublkd img resize [--image-opts] [-f fmt] [--preallocation=prealloc]"
                   " [-q] [--shrink] filename [+ | -]size\n");
            return 0;
        default:
            return img_opt_error(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("Expecting image file name and size");
    }
    const char *filename = argv[optind];

    int relative = 0;
    if (size[0] == '+' || size[0] == '-') {
        relative = size[0] == '+' ? 1 : -1;
        size++;
    }
    /* qemu's QEMU_OPT_SIZE: anything below 2^64; what does not fit an
     * int64 ends up negative below, as in qemu-img. */
    uint64_t n;
    int perr = img_parse_size(size, 'B', &n);
    if (perr == -ERANGE) {
        error_report("Value '%s' is out of range for parameter 'size'", size);
        return 1;
    }
    if (perr < 0) {
        error_report("Parameter 'size' expects a non-negative number below 2^64\n"
                     "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                     "tera-, peta-\nand exabytes, respectively.");
        return 1;
    }

    BlockBackend *blk = img_open(filename, &oo);
    if (!blk) {
        return 1;
    }
    int ret = 1;
    int64_t current = blk_getlength(blk);
    if (current < 0) {
        error_report("Failed to inquire current image length: %s", strerror((int)-current));
        goto out;
    }
    int64_t total = relative ? (int64_t)((uint64_t)current + n * (uint64_t)(int64_t)relative)
                             : (int64_t)n;
    if (total <= 0) {
        error_report("New image size must be positive");
        goto out;
    }
    if (total <= current && prealloc != PREALLOC_MODE_OFF) {
        error_report("Preallocation can only be used for growing images");
        goto out;
    }
    if (total < current && !shrink) {
        error_report("Use the --shrink option to perform a shrink operation.");
        warn_report("Shrinking an image will delete all data beyond the shrunken image's end. "
                    "Before performing such an operation, make sure there is no important data "
                    "there.");
        goto out;
    }
    /* exact: the user wants this size, not "at least" it. */
    Error *err = NULL;
    if (blk_truncate(blk, total, true, prealloc, &err) < 0) {
        error_report_err(err);
        goto out;
    }
    if (!quiet) {
        printf("Image resized.\n");
    }
    ret = 0;
out:
    blk_unref(blk);
    return ret;
}
