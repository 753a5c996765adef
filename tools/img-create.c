/*
 * img-create.c - `ublkd img create`: make a new image through the format
 * driver's co_create, with qemu-img's options, "Formatting ..." line and
 * error messages.  Also used by convert (img_create_image) for the target.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

static const char *type_name(const char *type)
{
    if (!strcmp(type, "string")) {
        return "str";
    }
    if (!strcmp(type, "number")) {
        return "num";
    }
    if (!strcmp(type, "bool")) {
        return "bool (on/off)";
    }
    return type;
}

static int desc_cmp(const void *a, const void *b)
{
    return strcmp((*(const CreateOptDesc *const *)a)->name,
                  (*(const CreateOptDesc *const *)b)->name);
}

void img_print_opt_descs(const CreateOptDesc **descs, int n)
{
    qsort(descs, (size_t)n, sizeof(descs[0]), desc_cmp);
    for (int i = 0; i < n; i++) {
        char s[128];
        snprintf(s, sizeof(s), "%s=<%s>", descs[i]->name, type_name(descs[i]->type));
        printf("  %-22s - %s\n", s, descs[i]->help ? descs[i]->help : "");
    }
}

int img_print_create_help(const BlockDriver *drv)
{
    const CreateOptDesc *descs[64];
    int n = 0;
    bool have_size = false;
    for (const CreateOptDesc *d = bdrv_driver_create_opts(drv); d && d->name && n < 63; d++) {
        descs[n++] = d;
        have_size |= !strcmp(d->name, "size");
    }
    static const CreateOptDesc size_desc = { "size", "size", "Virtual disk size", NULL };
    if (!have_size) {
        descs[n++] = &size_desc;
    }
    printf("Supported %s options:\n", bdrv_driver_name(drv));
    img_print_opt_descs(descs, n);
    printf("\nThe protocol level may support further options.\n"
           "Specify the target filename to include those options.\n");
    return 0;
}

static const CreateOptDesc *find_in(const CreateOptDesc *d, const char *name)
{
    for (; d && d->name; d++) {
        if (!strcmp(d->name, name)) {
            return d;
        }
    }
    return NULL;
}

static const CreateOptDesc *find_desc(const BlockDriver *drv, const char *name)
{
    return find_in(bdrv_driver_create_opts(drv), name);
}

/* qemu's qapi_bool_parse: the spellings a bool option takes; -1 if none. */
int img_parse_bool(const char *v)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "y")) {
        return 1;
    }
    if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "n")) {
        return 0;
    }
    return -1;
}

/* The file a backing name refers to: a relative name is relative to the directory of
 * the image that names it (QEMU's path_combine), not to the current directory; names
 * with a protocol prefix ("nbd:", "json:") are taken as they are. NULL on ENOMEM. */
char *img_backing_path(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    const char *colon = strchr(backing, ':');
    char *path = NULL;
    if (backing[0] == '/' || !slash || (colon && !memchr(backing, '/', colon - backing))) {
        return strdup(backing);
    }
    if (asprintf(&path, "%.*s%s", (int)(slash - image + 1), image, backing) < 0) {
        return NULL;
    }
    return path;
}

static bool is_backing_key(const char *k)
{
    return !strcmp(k, "backing_file") || !strcmp(k, "backing_fmt");
}

/* Sizes print as qemu-img parsed them ("2M" is 2097152); everything else,
 * bools included ("static=yes"), as typed. */
static const char *norm_value(const CreateOptDesc *d, const char *v)
{
    static char num[32];
    uint64_t n;
    if (d && !strcmp(d->type, "size") && parse_size(v, &n) == 0) {
        snprintf(num, sizeof(num), "%" PRIu64, n);
        return num;
    }
    return v;
}

/* The format's options, then the protocol's it does not have (qemu-img
 * appends the protocol's list), then the backing keys. */
static void print_formatting(const char *filename, const BlockDriver *drv, const OptDict *opts,
                             const OptDict *typed)
{
    printf("Formatting '%s', fmt=%s", filename, bdrv_driver_name(drv));
    bool size_done = false;
    if (!find_desc(drv, "size")) {
        printf(" size=%s", optdict_get(opts, "size"));
        size_done = true;
    }
    for (const CreateOptDesc *d = bdrv_driver_create_opts(drv); d && d->name; d++) {
        const char *v = optdict_get(opts, d->name);
        /* qemu declares no default for preallocation, so never prints one. */
        if (!v && strcmp(d->name, "preallocation")) {
            v = d->def;
        }
        if (!strcmp(d->name, "size")) {
            size_done = true;
        }
        if (v) {
            const char *as_typed = optdict_get(typed, d->name);
            printf(" %s=%s", d->name, norm_value(d, as_typed ? as_typed : v));
        }
    }
    (void)size_done;
    for (const CreateOptDesc *d = bdrv_protocol_create_opts(filename); d && d->name; d++) {
        const char *v = optdict_get(typed, d->name);
        if (v && !find_desc(drv, d->name)) {
            printf(" %s=%s", d->name, norm_value(d, v));
        }
    }
    for (size_t i = 0; i < optdict_count(opts); i++) {
        const char *k = optdict_key_at(opts, i);
        if (is_backing_key(k) && !find_desc(drv, k)) {
            printf(" %s=%s", k, optdict_value_at(opts, i));
        }
    }
    printf("\n");
    fflush(stdout);
}

int img_create_image(const char *filename, const char *fmt, const char *options,
                     const char *backing, const char *backing_fmt, int64_t size,
                     bool unsafe, bool quiet, bool prefix_filename, bool converting)
{
    const BlockDriver *drv = bdrv_find_format(fmt);
    const char *pfx = prefix_filename ? filename : NULL;
    if (!drv || !bdrv_driver_can_create(drv)) {
        const char *msg = drv ? "Format driver '%s' does not support image creation"
                              : "Unknown file format '%s'";
        char *m = NULL;
        if (asprintf(&m, msg, fmt) < 0) {
            abort();
        }
        if (pfx) {
            error_report("%s: %s", pfx, m);
        } else {
            error_report("%s", m);
        }
        free(m);
        return 1;
    }
    Error *err = NULL;
    OptDict *opts = optdict_new();
    OptDict *typed = optdict_new();   /* the values as given, for "Formatting" */
    const CreateOptDesc *proto_opts = bdrv_protocol_create_opts(filename);
    const char *pre = pfx ? pfx : "", *sep = pfx ? ": " : "";
    if (options) {
        OptDict *user = optdict_parse(options, NULL, &err);
        if (!user) {
            error_prepend(&err, "Invalid options for file format '%s': ", fmt);
            error_report_err(err);
            optdict_free(opts);
            optdict_free(typed);
            return 1;
        }
        for (size_t i = 0; i < optdict_count(user); i++) {
            const char *k = optdict_key_at(user, i), *v = optdict_value_at(user, i);
            const CreateOptDesc *d = find_desc(drv, k);
            if (!d) {
                d = find_in(proto_opts, k);
            }
            if (strcmp(k, "size") && !d &&
                !(is_backing_key(k) && bdrv_driver_supports_backing(drv))) {
                error_report("%s%sInvalid parameter '%s'", pre, sep, k);
                optdict_free(user);
                optdict_free(opts);
                optdict_free(typed);
                return 1;
            }
            optdict_set(typed, k, v);
            if (d && !strcmp(d->type, "bool")) {
                int b = img_parse_bool(v);
                if (b < 0) {
                    error_report("%s%sParameter '%s' expects 'on' or 'off'", pre, sep, k);
                    optdict_free(user);
                    optdict_free(opts);
                    optdict_free(typed);
                    return 1;
                }
                optdict_set(user, k, b ? "on" : "off");
            }
        }
        optdict_merge(opts, user, true);
        optdict_free(user);
    }
    if ((backing || backing_fmt) && !bdrv_driver_supports_backing(drv)) {
        const char *what = backing ? "Backing file" : "Backing file format";
        if (pfx) {
            error_report("%s: %s not supported for file format '%s'", pfx, what, fmt);
        } else {
            error_report("%s not supported for file format '%s'", what, fmt);
        }
        optdict_free(opts);
        optdict_free(typed);
        return 1;
    }
    if (backing) {
        optdict_set(opts, "backing_file", backing);
    }
    if (backing_fmt) {
        /* alone, the format driver refuses it (qcow2: "cannot be used
         * without backing file") */
        optdict_set(opts, "backing_fmt", backing_fmt);
    }
    /* As qemu-img: a backing file's format must be named, never probed
     * into the image (the probe result is offered as a hint). */
    const char *bfile = optdict_get(opts, "backing_file");
    if (bfile && !optdict_get(opts, "backing_fmt")) {
        const BlockDriver *probed = NULL;
        if (!unsafe) {
            char *path = img_backing_path(filename, bfile);
            Error *perr = NULL;
            probed = path ? bdrv_probe_format(path, &perr) : NULL;
            free(path);
            if (!probed) {
                error_prepend(&perr, "%s%sCould not open backing image: ", pre, sep);
                error_report_err(perr);
                optdict_free(opts);
                optdict_free(typed);
                return 1;
            }
        }
        if (probed) {
            error_report("%s%sBacking file specified without backing format\n"
                         "Detected format of %s.", pre, sep, bdrv_driver_name(probed));
        } else {
            error_report("%s%sBacking file specified without backing format", pre, sep);
        }
        optdict_free(opts);
        optdict_free(typed);
        return 1;
    }
    if (size >= 0) {
        optdict_set_int(opts, "size", size);
    } else if (optdict_has(opts, "size")) {
        uint64_t v;
        if (img_parse_size(optdict_get(opts, "size"), 'B', &v) < 0 || v > INT64_MAX) {
            error_report("Parameter 'size' expects a non-negative number below 2^64\n"
                         "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
                         "tera-, peta-\nand exabytes, respectively.");
            optdict_free(opts);
            optdict_free(typed);
            return 1;
        }
        optdict_set_int(opts, "size", (int64_t)v);
    } else if (backing && !unsafe) {
        /* Like qemu-img: the size defaults to the backing file's. */
        ImgOpenOpts bo = { .fmt = backing_fmt, .force_share = true };
        char *path = img_backing_path(filename, backing);
        BlockBackend *bb = path ? img_open(path, &bo) : NULL;
        free(path);
        if (!bb) {
            optdict_free(opts);
            optdict_free(typed);
            return 1;
        }
        optdict_set_int(opts, "size", blk_getlength(bb));
        blk_unref(bb);
    } else {
        if (pfx) {
            error_report("%s: Image creation needs a size parameter", pfx);
        } else {
            error_report("Image creation needs a size parameter");
        }
        optdict_free(opts);
        optdict_free(typed);
        return 1;
    }
    if (!quiet) {
        print_formatting(filename, drv, opts, typed);
    }
    optdict_free(typed);
    if (!strncmp(filename, "json:", 5)) {
        /* Options, not a file name: creating a file called "json:{..."
         * would be a silent surprise (qemu-img's words). */
        error_report("%s: Unknown protocol 'json'", filename);
        optdict_free(opts);
        return 1;
    }
    int ret = bdrv_create(drv, filename, opts, &err);
    optdict_free(opts);
    if (ret < 0) {
        if (!err) {
            error_setg_errno(&err, -ret, "Could not create '%s'", filename);
        }
        if (converting) {
            error_prepend(&err, "%s: error while converting %s: ", filename, fmt);
        } else if (pfx) {
            error_prepend(&err, "%s: ", pfx);
        }
        error_report_err(err);
        return 1;
    }
    return 0;
}

int img_create(int argc, char **argv)
{
    const char *fmt = "raw", *options = NULL, *backing = NULL, *backing_fmt = NULL;
    bool quiet = false, unsafe = false;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", longopts, NULL)) != -1) {
        switch (c) {
        case 'F': backing_fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'f': fmt = optarg; break;
        case 'o': img_add_options(&options, optarg); break;
        case 'q': quiet = true; break;
        case 'u': unsafe = true; break;
        case 'O':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case 'h':
            printf("usage: ublkd img create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u]"
                   " [-o options] filename [size]\n");
            return 0;
        default:
            return img_opt_error(c, argv);
        }
    }
    if (img_is_help_option(options)) {
        const BlockDriver *drv = bdrv_find_format(fmt);
        if (!drv) {
            error_report("Unknown file format '%s'", fmt);
            return 1;
        }
        if (!bdrv_driver_can_create(drv)) {
            error_report("Format driver '%s' does not support image creation", fmt);
            return 1;
        }
        return img_print_create_help(drv);
    }
    if (optind >= argc) {
        return img_usage_error("Expecting image file name");
    }
    const char *filename = argv[optind++];
    int64_t size = -1;
    if (optind < argc) {
        size = img_cvtnum_full("image size", argv[optind++], 0, INT64_MAX);
        if (size < 0) {
            return 1;
        }
    }
    if (optind != argc) {
        return img_usage_error("Unexpected argument: %s", argv[optind]);
    }
    if (size >= 0 && options) {
        OptDict *user = optdict_parse(options, NULL, NULL);
        bool twice = user && optdict_has(user, "size");
        optdict_free(user);
        if (twice) {
            error_report("%s: The image size must be specified only once", filename);
            return 1;
        }
    }
    return img_create_image(filename, fmt, options, backing, backing_fmt, size, unsafe, quiet,
                            true, false);
}
