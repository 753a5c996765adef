/*
 * img-check.c - `ublkd img check`: run the driver's consistency check and
 * report it with qemu-img's text, JSON and exit codes
 * (0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 not supported).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "block-backend.h"
#include "img.h"

static void dump_human(const BdrvCheckResult *r, bool quiet)
{
    if (quiet) {
        return;
    }
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            printf("\n%d errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        }
        if (r->leaks) {
            printf("\n%d leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n", r->leaks);
        }
        if (r->check_errors) {
            printf("\n%d internal errors have occurred during the check.\n", r->check_errors);
        }
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0) {
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
    }
}

#ifdef CONFIG_JSON
static void dump_json(const BdrvCheckResult *r, const char *filename, const char *format,
                      bool quiet)
{
    if (quiet) {
        return;
    }
    json_object *o = json_object_new_object();
#define ADD_IF(key, v) \
    do { if (v) { json_object_object_add(o, key, json_object_new_int64((int64_t)(v))); } } while (0)
    ADD_IF("image-end-offset", r->image_end_offset);
    ADD_IF("corruptions", r->corruptions);
    ADD_IF("leaks", r->leaks);
    ADD_IF("corruptions-fixed", r->corruptions_fixed);
    ADD_IF("leaks-fixed", r->leaks_fixed);
    ADD_IF("total-clusters", r->total_clusters);
    ADD_IF("allocated-clusters", r->allocated_clusters);
    ADD_IF("fragmented-clusters", r->fragmented_clusters);
    ADD_IF("compressed-clusters", r->compressed_clusters);
#undef ADD_IF
    json_object_object_add(o, "check-errors", json_object_new_int64(r->check_errors));
    json_object_object_add(o, "filename", json_object_new_string(filename));
    json_object_object_add(o, "format", json_object_new_string(format));
    img_json_print(stdout, o);
    json_object_put(o);
}
#endif

int img_check(int argc, char **argv)
{
    ImgOpenOpts oo = { 0 };
    OutputFormat ofmt = OFORMAT_HUMAN;
    int fix = 0;
    bool quiet = false;
    static const struct option longopts[] = {
        IMG_IMAGE_LONGOPTS,
        { "repair", required_argument, NULL, 'r' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (!strcmp(optarg, "leaks")) {
                fix = BDRV_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                fix = BDRV_FIX_LEAKS | BDRV_FIX_ERRORS;
            } else {
                return img_usage_error("Unknown option value for -r "
                                       "(expecting 'leaks' or 'all'): %s", optarg);
            }
            break;
        case 'T': oo.cache = optarg; oo.source_cache = true; break;
        case 'q': quiet = true; break;
        case 'h':
            printf("usage: ublkd img check [--image-opts] [-q] [-f fmt] [--output=ofmt]"
                   " [-r [leaks | all]] [-T src_cache] [-U] filename\n");
            return 0;
        default:
            if (img_image_opt(c, argv, &oo, &ofmt)) {
                return 1;
            }
        }
    }
    oo.writable = fix != 0;
    oo.extra_flags |= BDRV_O_CHECK;   /* no repair at open: the check reports it */
    BlockBackend *blk = img_open_arg(argc, argv, &oo);
    if (!blk) {
        return 1;
    }
    BlockDriverState *bs = blk_bs(blk);
    BdrvCheckResult r = { 0 };
    int ret = bdrv_check(bs, &r, fix);
    if (ret == -ENOTSUP) {
        error_report("This image format does not support checks");
        blk_unref(blk);
        return 63;
    }
    if (ret == 0 && (r.corruptions_fixed || r.leaks_fixed)) {
        int cf = r.corruptions_fixed, lf = r.leaks_fixed;
        if (ofmt == OFORMAT_HUMAN && !quiet) {
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %d leaked clusters\n    %d corruptions\n\n"
                   "Double checking the fixed image now...\n", lf, cf);
        }
        memset(&r, 0, sizeof(r));
        ret = bdrv_check(bs, &r, 0);
        r.corruptions_fixed = cf;
        r.leaks_fixed = lf;
    }
    if (ret == 0) {
        if (ofmt == OFORMAT_HUMAN) {
            dump_human(&r, quiet);
        }
#ifdef CONFIG_JSON
        else {
            dump_json(&r, argv[optind], bdrv_get_format_name(bs), quiet);
        }
#endif
    }
    blk_unref(blk);
    if (ret < 0 || r.check_errors) {
        if (ret < 0) {
            error_report("Check failed: %s", strerror(-ret));
        } else {
            error_report("Check failed");
        }
        return 1;
    }
    return r.corruptions ? 2 : r.leaks ? 3 : 0;
}
