/*
 * img-amend.c - `ublkd img amend`: change a qcow2 image's format options in
 * place (compat, lazy_refcounts, refcount_bits, data_file, data_file_raw,
 * size; backing_file/backing_fmt only as recorded; encrypt.* LUKS keyslots,
 * secrets from --object), with qemu-img 7.2's
 * syntax, option checks, messages, progress bar and exit codes.  The work
 * is the format driver's co_amend (drivers/qcow2-amend.c).
 *
 * As in qemu-img, the -o list is checked against the driver's amend
 * options after the image is open (a create-only option gets qemu-img's
 * hint), every value for its type before anything changes.  The driver
 * resizes too (a size is in its order of steps: before a downgrade).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

/* qemu-img's print_amend_option_help. */
static int print_amend_help(const char *fmt)
{
    const BlockDriver *drv = bdrv_find_format(fmt);
    const CreateOptDesc *opts = drv ? bdrv_driver_amend_opts(drv) : NULL;
    const CreateOptDesc *descs[64];
    int n = 0;

    if (!drv) {
        error_report("Unknown file format '%s'", fmt);
        return 1;
    }
    if (!opts) {
        error_report("Format driver '%s' does not support option amendment", fmt);
        return 1;
    }
    for (const CreateOptDesc *d = opts; d->name && n < 64; d++) {
        descs[n++] = d;
    }
    printf("Amend options for '%s':\n", fmt);
    img_print_opt_descs(descs, n);
    return 0;
}

static const CreateOptDesc *find_desc(const CreateOptDesc *d, const char *name)
{
    for (; d && d->name; d++) {
        if (!strcmp(d->name, name)) {
            return d;
        }
    }
    return NULL;
}

/* qemu-img's is_valid_option_list: not empty, no leading comma, no odd
 * run of trailing commas (an escaped comma is two). */
static bool valid_option_list(const char *s)
{
    size_t len = strlen(s), i = len;
    if (!s[0] || s[0] == ',') {
        return false;
    }
    while (i > 0 && s[i - 1] == ',') {
        i--;
    }
    return (len - i) % 2 == 0;
}

/* One element of a qemu option list (qemu's get_opt_name_value): "name=value"
 * with ",," a comma in the value, or a bare "name" (on) / "noname" (off).
 * Returns where the next element starts; *name and *value are malloc'd. */
static const char *next_option(const char *p, char **name, char **value)
{
    size_t n = strcspn(p, "=,");
    char *v;
    if (p[n] != '=') {
        bool no = !strncmp(p, "no", 2);
        *name = strndup(no ? p + 2 : p, no ? n - 2 : n);
        *value = strdup(no ? "off" : "on");
        p += n;
    } else {
        *name = strndup(p, n);
        p += n + 1;
        v = *value = malloc(strlen(p) + 1);
        while (v && *p && (*p != ',' || p[1] == ',')) {
            *v++ = *p;
            p += *p == ',' ? 2 : 1;
        }
        if (v) {
            *v = 0;
        }
    }
    if (!*name || !*value) {
        abort();
    }
    return *p == ',' ? p + 1 : p;
}

/*
 * qemu_opts_do_parse of the -o list against the amend options: the first
 * unknown name or badly typed value (in the order given) is reported.
 * *opts gets the options for the driver (the last value of a repeated
 * one; a size in bytes).
 */
static int parse_amend_options(const BlockDriver *drv, const char *list, OptDict **opts)
{
    const CreateOptDesc *amend = bdrv_driver_amend_opts(drv);
    OptDict *out = optdict_new();
    char *k = NULL, *v = NULL;
    const char *p = list;

    *opts = NULL;
    while (*p) {
        free(k);
        free(v);
        p = next_option(p, &k, &v);
        const CreateOptDesc *d = find_desc(amend, k);
        if (!d) {
            if (find_desc(bdrv_driver_create_opts(drv), k)) {
                error_report("Invalid parameter '%s'\n"
                             "This option is only supported for image creation", k);
            } else {
                error_report("Invalid parameter '%s'", k);
            }
            goto fail;
        }
        if (!strcmp(d->type, "bool") && img_parse_bool(v) < 0) {
            error_report("Parameter '%s' expects 'on' or 'off'", k);
            goto fail;
        }
        if (!strcmp(d->type, "number")) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(v, &end, 0);
            (void)n;
            if (*v && !*end && errno == ERANGE) {
                error_report("Value '%s' is too large for parameter '%s'", v, k);
                goto fail;
            }
            if (!*v || *end || errno) {
                error_report("Parameter '%s' expects a number", k);
                goto fail;
            }
        }
        if (!strcmp(d->type, "size")) {
            uint64_t n;
            int perr = img_parse_size(v, 'B', &n);
            if (perr == -ERANGE) {
                error_report("Value '%s' is out of range for parameter '%s'", v, k);
                goto fail;
            }
            if (perr < 0) {
                error_report("Parameter '%s' expects a non-negative number below 2^64\n"
                             "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                             "tera-, peta-\nand exabytes, respectively.", k);
                goto fail;
            }
            char num[24];
            snprintf(num, sizeof(num), "%" PRIu64, n);
            optdict_set(out, k, num);
            continue;
        }
        optdict_set(out, k, v);
    }
    free(k);
    free(v);
    *opts = out;
    return 0;
fail:
    free(k);
    free(v);
    optdict_free(out);
    return -1;
}

/* qemu's has_help_option: "help" or "?" as an element of the list (",,"
 * is a comma inside a value). */
static bool has_help_option(const char *list)
{
    const char *p = list;
    while (*p) {
        size_t n = 0;
        while (p[n] && (p[n] != ',' || p[n + 1] == ',')) {
            n += p[n] == ',' ? 2 : 1;
        }
        if ((n == 4 && !strncmp(p, "help", 4)) || (n == 1 && *p == '?')) {
            return true;
        }
        p += n;
        if (*p == ',') {
            p++;
        }
    }
    return false;
}

/* qemu-img's amend_status_cb; progress_print adds what it is given. */
static float amend_progress_last;
static void amend_status_cb(BlockDriverState *bs, int64_t offset, int64_t total, void *opaque)
{
    (void)bs;
    (void)opaque;
    if (total <= 0) {
        return;
    }
    float now = 100.f * (float)offset / (float)total;
    progress_print(now - amend_progress_last, 0);
    amend_progress_last = now;
}

int img_amend(int argc, char **argv)
{
    ImgOpenOpts oo = { .writable = true, .cache = "writeback" };
    const char *options = NULL;
    bool quiet = false, progress = false, force = false;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force", no_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: ublkd img amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt]"
                   " [-t cache] [--force] -o options filename\n");
            return 0;
        case 'o':
            if (!valid_option_list(optarg)) {
                error_report("Invalid option list: %s", optarg);
                return 1;
            }
            img_add_options(&options, optarg);
            break;
        case 'f': oo.fmt = optarg; break;
        case 't': oo.cache = optarg; break;
        case 'p': progress = true; break;
        case 'q': quiet = true; break;
        case 'I': oo.image_opts = true; break;
        case 'F': force = true; break;
        case 'O':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        default:
            return img_opt_error(c, argv);
        }
    }
    if (!options) {
        return img_usage_error("Must specify options (-o)");
    }
    if (quiet) {
        progress = false;
    }
    progress_init(progress, 1.0);

    int ret = 1;
    BlockBackend *blk = NULL;
    OptDict *opts = NULL;
    if (oo.fmt && has_help_option(options)) {
        ret = print_amend_help(oo.fmt);
        goto out;
    }
    if (optind != argc - 1) {
        error_report("Expecting one image file name");
        goto out;
    }
    int flags;
    if (bdrv_parse_cache_mode(oo.cache, &flags, NULL) < 0) {
        error_report("Invalid cache option: %s", oo.cache);
        goto out;
    }
    blk = img_open(argv[optind], &oo);
    if (!blk) {
        goto out;
    }
    BlockDriverState *bs = blk_bs(blk);
    const char *fmt = bdrv_get_format_name(bs);
    const BlockDriver *drv = bdrv_find_format(fmt);
    if (has_help_option(options)) {
        ret = print_amend_help(fmt);
        goto out;
    }
    if (!drv || !bdrv_driver_amend_opts(drv)) {
        error_report("Format driver '%s' does not support option amendment", fmt);
        goto out;
    }
    if (parse_amend_options(drv, options, &opts) < 0) {
        goto out;
    }

    Error *err = NULL;
    amend_progress_last = 0;
    progress_print(0, 0);
    int r = bdrv_amend_options(bs, opts, amend_status_cb, NULL, force, &err);
    progress_print(100, 0);
    if (r < 0) {
        if (err) {
            error_report_err(err);
        } else {
            error_report("%s", strerror(-r));
        }
        goto out;
    }
    ret = 0;
out:
    progress_end();
    optdict_free(opts);
    blk_unref(blk);
    return ret;
}
