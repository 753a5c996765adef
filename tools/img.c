/*
 * img.c - `ublkd img`: the qemu-img-like image tool's dispatch and the
 * helpers the subcommands share (opening an image from -f / --image-opts /
 * json: / cache modes, --output parsing, the options of info, check and map,
 * usage errors).
 *
 * Messages and exit codes follow qemu-img 7.2 so scripts written against it
 * work unchanged; the subcommands live in tools/img-<name>.c.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-backend.h"
#include "img.h"
#ifdef CONFIG_NBD
#include "nbd-tls.h"
#endif
#ifdef CONFIG_CRYPTO
#include "crypto.h"
#endif
#include "tools.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *synopsis;
} commands[] = {
    { "amend", img_amend,
      "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force]"
      " -o options filename" },
    { "bench", img_bench,
      "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n]"
      " [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size]"
      " [-t cache] [-w] [-U] [--random] [--seed=N] [--threads=N] filename" },
    { "bitmap", img_bitmap,
      "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)..."
      " [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef]"
      " [--image-opts | -f fmt] filename bitmap" },
    { "check", img_check,
      "check [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache]"
      " [-U] filename" },
    { "compare", img_compare,
      "compare [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U]"
      " filename1 filename2" },
    { "commit", img_commit,
      "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit]"
      " [-d] [-p] filename" },
    { "convert", img_convert,
      "convert [--image-opts] [--target-image-opts] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt]"
      " [-t cache] [-T src_cache] [-O output_fmt] [-o options] [-S sparse_size] [-m num_coroutines]"
      " [-W] filename output_filename" },
    { "create", img_create,
      "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u]"
      " [-o options] filename [size]" },
    { "dd", img_dd,
      "dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks]"
      " [skip=blocks] if=input of=output" },
    { "info", img_info,
      "info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename" },
    { "io", img_io,
      "io [-f fmt] [--image-opts] [-n] [-t cache] [-r] [-q] [-U] [-c command]... filename" },
    { "measure", img_measure,
      "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--image-opts] [-f fmt]"
      " [-U] filename]" },
    { "rebase", img_rebase,
      "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache]"
      " [-p] [-u] -b backing_file [-F backing_fmt] filename" },
    { "map", img_map,
      "map [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len]"
      " [--output=ofmt] [-U] filename" },
    { "snapshot", img_snapshot,
      "snapshot [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot]"
      " filename" },
    { "resize", img_resize,
      "resize [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink]"
      " filename [+ | -]size" },
};

static void help(void)
{
    printf("ublkd img version %s (qemu-img 7.2 compatible)\n"
           "usage: ublkd img [standard options] command [command options]\n"
           "Disk image utility\n\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n\n"
           "Command syntax:\n", ublkd_version());
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        printf("  %s\n", commands[i].synopsis);
    }
    printf("\nCommand parameters:\n"
           "  'filename' is a disk image filename\n"
           "  'fmt' is the disk image format (raw, null, vdi, ...); probed if not given\n"
           "  'cache' is the cache mode: none, writeback, writethrough, directsync, unsafe\n"
           "  'size' is the disk image size in bytes; k, M, G, T, P or E suffixes allowed\n"
           "  '--output' takes 'human' or 'json'\n"
           "  'ublkd img io' runs qemu-io style commands: read, write, readv, writev,\n"
           "     discard, flush, map, length, truncate (-c help lists them)\n\n"
           "Supported formats:");
    for (int i = 0; bdrv_driver_at(i); i++) {
        printf(" %s", bdrv_driver_name(bdrv_driver_at(i)));
    }
    printf("\n");
}

int img_usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "ublkd img: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'ublkd img --help' for more information\n");
    return 1;
}

int img_opt_error(int c, char **argv)
{
    if (c == ':') {
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    }
    return img_usage_error("unrecognized option '%s'", argv[optind - 1]);
}

const char *img_opt_text(char **argv)
{
    static char buf[64];
    /* With its argument in the next word, the option is the word before. */
    const char *tok = optarg && optind >= 2 && optarg == argv[optind - 1] ? argv[optind - 2]
                                                                         : argv[optind - 1];
    if (!strncmp(tok, "--", 2)) {
        snprintf(buf, sizeof(buf), "%.*s", (int)strcspn(tok, "="), tok);
    } else {
        /* "-Bfile" or a group of flags: getopt has just read the character
         * before where it stands; the first one is all a message needs. */
        snprintf(buf, sizeof(buf), "%.2s", tok);
    }
    return buf;
}

int img_image_opt(int c, char **argv, ImgOpenOpts *oo, OutputFormat *ofmt)
{
    switch (c) {
    case 'f': oo->fmt = optarg; break;
    case 'O': return img_parse_output_format(optarg, ofmt) < 0 ? 1 : 0;
    case 'I': oo->image_opts = true; break;
    case 'U': oo->force_share = true; break;
    case 'X': return img_object_add(optarg);
    default: return img_opt_error(c, argv);
    }
    return 0;
}

int img_object_add(const char *def)
{
#ifdef CONFIG_NBD
    {
        Error *err = NULL;
        int r = nbd_tls_object_add(def, &err);   /* 0: not a tls-creds-* */
        if (r < 0) {
            error_report_err(err);
            return 1;
        }
        if (r > 0) {
            return 0;
        }
    }
#endif
#ifdef CONFIG_CRYPTO
    Error *err = NULL;
    if (secret_object_add(def, &err) < 0) {
        error_report_err(err);
        return 1;
    }
    return 0;
#else
    (void)def;
    error_report("--object is not supported by ublkd img (built without CONFIG_CRYPTO)");
    return 1;
#endif
}

void img_add_options(const char **options, const char *arg)
{
    if (!*options) {
        *options = arg;
        return;
    }
    char *joined = NULL;
    if (asprintf(&joined, "%s,%s", *options, arg) < 0) {
        abort();
    }
    *options = joined;
}

int img_parse_output_format(const char *arg, OutputFormat *out)
{
    if (!strcmp(arg, "human")) {
        *out = OFORMAT_HUMAN;
    } else if (!strcmp(arg, "json")) {
#ifdef CONFIG_JSON
        *out = OFORMAT_JSON;
#else
        error_report("--output=json is not available: ublkd was built without json-c "
                     "(CONFIG_JSON=n)");
        return -1;
#endif
    } else {
        error_report("--output must be used with human or json as argument.");
        return -1;
    }
    return 0;
}

int64_t img_cvtnum_full(const char *name, const char *value, int64_t min, int64_t max)
{
    uint64_t res;
    int err = img_parse_size(value, 'B', &res);
    if (err < 0 && err != -ERANGE) {
        error_report("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", name);
        error_report("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return err;
    }
    if (err == -ERANGE || res > (uint64_t)max || (int64_t)res < min) {
        error_report("Invalid %s specified. Must be between %" PRId64 " and %" PRId64 ".",
                     name, min, max);
        return -ERANGE;
    }
    return (int64_t)res;
}

bool img_is_help_option(const char *opts)
{
    if (!opts) {
        return false;
    }
    /* "help" or "?" anywhere in the list, as qemu's is_help_option. */
    OptDict *d = optdict_parse(opts, NULL, NULL);
    bool help = !strcmp(opts, "help") || !strcmp(opts, "?");
    if (d) {
        for (size_t i = 0; i < optdict_count(d); i++) {
            const char *k = optdict_key_at(d, i);
            if (!strcmp(k, "help") || !strcmp(k, "?")) {
                help = true;
            }
        }
        optdict_free(d);
    }
    return help;
}

BlockBackend *img_open(const char *filename, const ImgOpenOpts *o)
{
    Error *err = NULL;
    int flags = 0;
    OptDict *opts;

    const char *cache = o->cache ? o->cache : "writeback";
    if (bdrv_parse_cache_mode(cache, &flags, NULL) < 0) {
        error_report("Invalid %scache option: %s", o->source_cache ? "source " : "", cache);
        return NULL;
    }
    if (o->writable) {
        flags |= BDRV_O_RDWR;
    }
    if (o->force_share) {
        flags |= BDRV_O_FORCE_SHARE;
    }
    if (!o->writable && !o->force_share && !o->no_share) {
        /* qemu-img info/map/check/compare/bench next to a running writer
         * work (a format still refuses one that writes its metadata).
         * Writers stay exclusive: a second writer of a raw image is
         * refused where qemu-img lets it in (docs/QEMU-IMG.md). */
        flags |= BDRV_O_SHARE_WRITE;
    }
    if (o->no_backing) {
        flags |= BDRV_O_NO_BACKING;
    }
    flags |= o->extra_flags;
    if (o->image_opts) {
        if (o->fmt) {
            error_report("--image-opts and --format are mutually exclusive");
            return NULL;
        }
        opts = optdict_parse(filename, NULL, &err);
        if (!opts) {
            error_report_err(err);
            return NULL;
        }
    } else {
        if (o->fmt && !bdrv_find_format(o->fmt)) {
            error_report("Could not open '%s': Unknown driver '%s'", filename, o->fmt);
            return NULL;
        }
        opts = optdict_new();
        if (o->fmt) {
            optdict_set(opts, "driver", o->fmt);
        }
    }
    if (o->extra_options) {
        OptDict *extra = optdict_parse(o->extra_options, NULL, &err);
        if (!extra) {
            error_report_err(err);
            optdict_free(opts);
            return NULL;
        }
        for (size_t i = 0; i < optdict_count(extra); i++) {
            optdict_set(opts, optdict_key_at(extra, i), optdict_value_at(extra, i));
        }
        optdict_free(extra);
    }
    BlockBackend *blk = blk_new_open(o->image_opts ? NULL : filename, opts, flags, &err);
    if (!blk) {
        const char *name = filename ? filename : "";
        if (err) {
            error_prepend(&err, "Could not open '%s': ", name);
            error_report_err(err);
        } else {
            error_report("Could not open '%s'", name);
        }
        return NULL;
    }
    return blk;
}

BlockBackend *img_open_arg(int argc, char **argv, const ImgOpenOpts *o)
{
    if (optind != argc - 1) {
        img_usage_error("Expecting one image file name");
        return NULL;
    }
    return img_open(argv[optind], o);
}

int img_main(int argc, char **argv)
{
    if (argc < 2) {
        return img_usage_error("Not enough arguments");
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        help();
        return 0;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        printf("ublkd img version %s\n", ublkd_version());
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++) {
        if (!strcmp(cmd, commands[i].name)) {
            Error *err = NULL;
            if (!aio_main_init(&err)) {
                error_report_err(err);
                return 1;
            }
            /* Subcommands parse with getopt from argv[0] == their name. */
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    error_report("Command not found: %s", cmd);
    fprintf(stderr, "Try 'ublkd img --help' for more information\n");
    return 1;
}
