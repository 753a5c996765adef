/*
 * img-measure.c - `ublkd img measure`: the file size an image of a format
 * needs for an existing image's data or for a virtual size, as qemu-img
 * measure 7.2 prints it (its messages, checks in its order, exit codes).
 *
 *   ublkd img measure [--output=human|json] [-O FMT] [-o OPTS]
 *                     [--size N | [--image-opts] [-f FMT] [-U] FILE]
 *
 * Provisioning scripts size volumes from these numbers, so they must be
 * qemu-img's to the byte; the arithmetic is the format driver's (measure).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

static const CreateOptDesc *find_opt(const CreateOptDesc *d, const char *name)
{
    for (; d && d->name; d++) {
        if (!strcmp(d->name, name)) {
            return d;
        }
    }
    return NULL;
}

/* qemu's option lists take a bare name as "name=on" ("-o lazy_refcounts"). */
static char *implied_on(const char *options)
{
    size_t n = strlen(options);
    char *out = malloc(n * 4 + 4), *o = out;
    if (!out) {
        abort();
    }
    bool has_eq = false;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && options[i] == ',' && options[i + 1] == ',') {
            *o++ = ',';
            *o++ = ',';
            i++;
            continue;
        }
        if (i == n || options[i] == ',') {
            if (!has_eq && o > out && o[-1] != ',') {
                memcpy(o, "=on", 3);
                o += 3;
            }
            has_eq = false;
            if (i < n) {
                *o++ = ',';
            }
            continue;
        }
        has_eq |= options[i] == '=';
        *o++ = options[i];
    }
    *o = '\0';
    return out;
}

/* qemu_opts_do_parse against the format's and the file protocol's create
 * options: unknown names and values of the wrong type are refused, with
 * qemu's message and then "Invalid options for file format". */
static OptDict *parse_options(const BlockDriver *drv, const char *fmt, const char *options)
{
    Error *err = NULL;
    char *text = options ? implied_on(options) : NULL;
    OptDict *opts = text ? optdict_parse(text, NULL, &err) : optdict_new();
    free(text);
    const char *why = NULL;
    char *msg = NULL;
    if (!opts) {
        error_report_err(err);
        error_report("Invalid options for file format '%s'", fmt);
        return NULL;
    }
    const CreateOptDesc *proto = bdrv_protocol_create_opts("measure");
    for (size_t i = 0; i < optdict_count(opts) && !why; i++) {
        const char *k = optdict_key_at(opts, i), *v = optdict_value_at(opts, i);
        const CreateOptDesc *d = find_opt(bdrv_driver_create_opts(drv), k);
        if (!d) {
            d = find_opt(proto, k);
        }
        uint64_t n;
        char *end;
        if (!d) {
            why = "Invalid parameter '%s'";
        } else if (!strcmp(d->type, "bool") && img_parse_bool(v) < 0) {
            why = "Parameter '%s' expects 'on' or 'off'";
        } else if (!strcmp(d->type, "size") && img_parse_size(v, 'B', &n) < 0) {
            why = "Parameter '%s' expects a non-negative number below 2^64\n"
                  "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                  "and exabytes, respectively.";
        } else if (!strcmp(d->type, "number") && (strtoull(v, &end, 0), !*v || *end)) {
            why = "Parameter '%s' expects a number";
        }
        if (why && asprintf(&msg, why, k) < 0) {
            abort();
        }
        if (d && !why && !strcmp(d->type, "bool")) {
            optdict_set(opts, k, img_parse_bool(v) ? "on" : "off");
        }
    }
    if (why) {
        error_report("%s", msg);
        error_report("Invalid options for file format '%s'", fmt);
        free(msg);
        optdict_free(opts);
        return NULL;
    }
    return opts;
}

static void usage(void)
{
    printf("usage: ublkd img measure [--output=ofmt] [-O output_fmt] [-o options]"
           " [--size N | [--image-opts] [-f fmt] [-U] filename]\n");
}

int img_measure(int argc, char **argv)
{
    enum { OPT_SIZE = 256, OPT_OUTPUT, OPT_IMAGE_OPTS, OPT_OBJECT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "size", required_argument, NULL, OPT_SIZE },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenOpts oo = { 0 };
    const char *out_fmt = "raw", *options = NULL, *snapshot = NULL;
    OutputFormat ofmt = OFORMAT_HUMAN;
    int64_t size = -1;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': usage(); return 0;
        case 'f': oo.fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': img_add_options(&options, optarg); break;
        case 'l': snapshot = optarg; break;
        case 'U': oo.force_share = true; break;
        case OPT_IMAGE_OPTS: oo.image_opts = true; break;
        case OPT_OBJECT:
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case OPT_OUTPUT:
            if (img_parse_output_format(optarg, &ofmt) < 0) {
                return 1;
            }
            break;
        case OPT_SIZE:
            size = img_cvtnum_full("image size", optarg, 0, INT64_MAX);
            if (size < 0) {
                return 1;
            }
            break;
        default:
            return img_opt_error(c, argv);
        }
    }
    const char *filename = NULL;
    if (argc - optind > 1) {
        error_report("At most one filename argument is allowed.");
        return 1;
    }
    if (argc - optind == 1) {
        filename = argv[optind];
    }
    if (!filename && (oo.image_opts || oo.fmt || snapshot)) {
        error_report("--image-opts, -f, and -l require a filename argument.");
        return 1;
    }
    if (filename && size >= 0) {
        error_report("--size N cannot be used together with a filename.");
        return 1;
    }
    if (!filename && size < 0) {
        error_report("Either --size N or one filename must be specified.");
        return 1;
    }
    BlockBackend *blk = NULL;
    if (filename) {
        blk = img_open(filename, &oo);
        if (!blk) {
            return 1;
        }
        if (snapshot) {
            error_report("Failed to load snapshot: internal snapshots are not supported by"
                         " ublkd img yet");
            blk_unref(blk);
            return 1;
        }
    }
    int ret = 1;
    OptDict *opts = NULL;
    const BlockDriver *drv = bdrv_find_format(out_fmt);
    if (!drv) {
        error_report("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (!bdrv_driver_can_create(drv)) {
        error_report("Format driver '%s' does not support image creation",
                     bdrv_driver_name(drv));
        goto out;
    }
    opts = parse_options(drv, out_fmt, options);
    if (!opts) {
        goto out;
    }
    if (size >= 0) {
        optdict_set_int(opts, "size", size);
    }
    BlockMeasureInfo info;
    Error *err = NULL;
    if (bdrv_measure(drv, opts, blk ? blk_bs(blk) : NULL, &info, &err) < 0) {
        error_report_err(err);
        goto out;
    }
    if (ofmt == OFORMAT_HUMAN) {
        printf("required size: %" PRIu64 "\n", info.required);
        printf("fully allocated size: %" PRIu64 "\n", info.fully_allocated);
        if (info.has_bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", info.bitmaps);
        }
    } else {
        /* qemu's QAPI order: the optional member first. */
        printf("{\n");
        if (info.has_bitmaps) {
            printf("    \"bitmaps\": %" PRIu64 ",\n", info.bitmaps);
        }
        printf("    \"required\": %" PRIu64 ",\n", info.required);
        printf("    \"fully-allocated\": %" PRIu64 "\n}\n", info.fully_allocated);
    }
    ret = 0;
out:
    optdict_free(opts);
    if (blk) {
        blk_unref(blk);
    }
    return ret;
}
