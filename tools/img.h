/*
 * img.h - internals shared by the `ublkd img` subcommands (tools/img*.c).
 *
 * img.c owns dispatch and the helpers every subcommand needs (opening an
 * image the way qemu-img does, output-format parsing, the human size
 * strings); img-util.c holds the pure logic (number parsing, sparse-run
 * detection, map-entry merging, qemu's JSON key order) so unit tests can
 * link it without a block layer.  Subcommands return the process exit code.
 */
#ifndef UBLKD_IMG_H
#define UBLKD_IMG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "compiler.h"

typedef struct BlockBackend BlockBackend;

/* ---- subcommands ---- */
int img_create(int argc, char **argv);
int img_info(int argc, char **argv);
int img_check(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_map(int argc, char **argv);
int img_bench(int argc, char **argv);
int img_io(int argc, char **argv);
int img_dd(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_snapshot(int argc, char **argv);
/* img-snapshot.c: qemu-img's snapshot list (info and snapshot -l). */
struct BdrvSnapshotInfo;
void img_snapshot_dump(FILE *f, const struct BdrvSnapshotInfo *sn);
void img_dump_snapshots(FILE *f, const struct BdrvSnapshotInfo *sns, int n);
typedef struct ImgSnapshotParam {
    bool given, by_id_or_name;    /* by_id_or_name: a plain argument, in name */
    const char *id, *name;        /* into buf, or NULL */
    char buf[4096];
} ImgSnapshotParam;
int img_parse_snapshot_param(const char *arg, ImgSnapshotParam *p);
int img_bitmap(int argc, char **argv);
int img_amend(int argc, char **argv);
/* img-create.c: -o help's list of options, sorted by name, as qemu-img prints it. */
struct CreateOptDesc;
void img_print_opt_descs(const struct CreateOptDesc **descs, int n);

/* ---- common (img.c) ---- */
typedef enum { OFORMAT_HUMAN, OFORMAT_JSON } OutputFormat;
/* Parse --output's argument; prints qemu-img's message and returns -1 if bad. */
int img_parse_output_format(const char *arg, OutputFormat *out);

typedef struct ImgOpenOpts {
    const char *fmt;        /* -f, NULL = probe */
    bool image_opts;        /* --image-opts: filename is "driver=...,file.filename=..." */
    const char *cache;      /* -t / -T, NULL = caller's default */
    bool source_cache;      /* a bad cache is "Invalid source cache option" (-T) */
    bool writable;
    bool force_share;       /* -U: read-only and no image locks (force-share=on) */
    bool no_backing;
    bool no_share;          /* read-only and nobody may write it meanwhile (convert's
                             * source, qemu's BDRV_O_NO_SHARE); other read-only opens
                             * let writers in, as qemu-img's do */
    int extra_flags;        /* more BDRV_O_* (img io: BDRV_O_UNMAP) */
    const char *extra_options;  /* more "key=value,..." for the graph (commit:
                                 * backing.read-only=off), or NULL */
} ImgOpenOpts;
/* Open an image, printing qemu-img's "Could not open 'X': ..." on failure. */
BlockBackend *img_open(const char *filename, const ImgOpenOpts *o);
/* img_open of the one file name left after the options (argv[optind]); if
 * there is not exactly one, NULL after a usage error. */
BlockBackend *img_open_arg(int argc, char **argv, const ImgOpenOpts *o);
/* img-snapshot.c: open showing an internal snapshot (convert -l). */
BlockBackend *img_open_snapshot(const char *filename, const ImgOpenOpts *o, const char *id,
                                const char *name, bool by_id_or_name);
/* Print "Try 'ublkd img --help' ..." after a usage error; returns 1. */
int img_usage_error(const char *fmt, ...) PRINTF_FMT(1, 2);
/* The usage error for what getopt_long returned on a bad option (the
 * subcommands' optstrings start with ':', so a missing argument is ':'). */
int img_opt_error(int c, char **argv);
/* The option getopt_long just returned as typed ("-B", "--object"), for
 * messages: never its argument. */
const char *img_opt_text(char **argv);

/*
 * info, check and map read one image the same way, so they share -f,
 * --image-opts, -U and --output (long only: -O is convert's output format).
 * Their option tables start with these (--help too, which each command
 * answers with its own usage line); img_image_opt takes every option the
 * command does not handle itself, bad ones included, and returns 0, or 1
 * (the exit code) when it printed why the command cannot go on.
 */
#define IMG_IMAGE_LONGOPTS \
    { "help", no_argument, NULL, 'h' }, \
    { "format", required_argument, NULL, 'f' }, \
    { "output", required_argument, NULL, 'O' }, \
    { "image-opts", no_argument, NULL, 'I' }, \
    { "force-share", no_argument, NULL, 'U' }, \
    { "object", required_argument, NULL, 'X' }
int img_image_opt(int c, char **argv, ImgOpenOpts *oo, OutputFormat *ofmt);

/* --object as qemu-img takes it (secret objects only, include/crypto.h):
 * 0, or 1 (the exit code) after printing why not. */
int img_object_add(const char *def);

/* -o as qemu-img takes it: a repeated -o adds to the list, after a comma. */
void img_add_options(const char **options, const char *arg);
/* qemu-img's cvtnum_full: parse a size argument named `name`, printing
 * qemu-img's messages; returns the value or -errno. */
int64_t img_cvtnum_full(const char *name, const char *value, int64_t min, int64_t max);
/* Create an image (create and convert); prints messages, returns exit code.
 * size < 0: from -o size= or the backing file.  converting: a failed create
 * reads "<file>: error while converting <fmt>: ...", as qemu-img convert. */
int img_create_image(const char *filename, const char *fmt, const char *options,
                     const char *backing, const char *backing_fmt, int64_t size,
                     bool unsafe, bool quiet, bool prefix_filename, bool converting);
/* The file a backing name refers to, as QEMU resolves it: relative to the
 * directory of image (the image that records it); protocol names as they
 * are.  NULL on ENOMEM. */
char *img_backing_path(const char *image, const char *backing);
/* QEMU's bdrv_find_backing_image (img-rebase.c): the node of bs's backing
 * chain that name refers to, relative to each layer's directory; NULL. */
struct BlockDriverState;
struct BlockDriverState *img_find_backing_image(struct BlockDriverState *bs, const char *name);
struct BlockDriver;
int img_print_create_help(const struct BlockDriver *drv);
/* qemu's bool option values: on/yes/true/y 1, off/no/false/n 0, else -1. */
int img_parse_bool(const char *v);
/* Parse qemu-img's -o list ("k=v,k2=v2"; "help" / "?" handled by caller). */
bool img_is_help_option(const char *opts);

/* Run one qemu-io style command line on blk (img-io-cmds.c); 0 or -errno. */
int img_io_command(BlockBackend *blk, const char *line);

/* ---- pure helpers (img-util.c) ---- */
/*
 * qemu's strtosz: "4096", "4k", "1.5G" ("b"/"B" = bytes; k K M G T P E
 * binary).  default_suffix applies to a number without suffix (qemu-img
 * bench / qemu-io use bytes).  Returns 0, -EINVAL (bad text) or -ERANGE.
 */
int img_parse_size(const char *str, char default_suffix, uint64_t *out);
/* qemu-io's cvtnum: like img_parse_size but returns the value or -errno. */
int64_t img_cvtnum(const char *str);
/* "1 GiB", "1.5 MiB", "512 B" as qemu's size_to_str. Caller frees. */
char *img_size_to_str(uint64_t bytes);
/* qemu-io's cvtstr ("4 KiB", "32 bytes", "1.500 KiB"). */
void img_cvtstr(double value, char *str, size_t size);
/* qemu-io's timestr for the non-verbose format ("00.00 sec", "0:00:01.23"). */
void img_timestr(double seconds, char *ts, size_t size);

/*
 * Sparse detection for convert: the length of the run at the start of
 * buf[0, len) that is all data or all zero, on a grid of min_sparse bytes
 * anchored at absolute image offset `offset` (so runs line up with the
 * target's clusters).  *is_data tells which.  Each cell (partial ones at
 * the edges included) is zero or data by its content alone.
 */
size_t img_sparse_run(const uint8_t *buf, size_t len, int64_t offset, size_t min_sparse,
                      bool *is_data);
/* First 512-byte sector boundary in buf whose sector is non-zero, or -1. */
int64_t img_find_nonzero(const uint8_t *buf, int64_t n);
/* Bytes at the start of a and b that agree in "equal or not" per sector
 * (qemu-img's compare_buffers); returns true if the first sector differs. */
bool img_compare_buffers(const uint8_t *a, const uint8_t *b, int64_t bytes, int64_t *pnum);

/* One run of `img map` output (qemu-img's MapEntry). */
typedef struct ImgMapEntry {
    int64_t start, length, offset;
    int depth;
    bool data, zero, present, has_offset;
    const char *filename;   /* NULL if no offset */
} ImgMapEntry;
bool img_map_entry_mergeable(const ImgMapEntry *curr, const ImgMapEntry *next);
/* Print one entry in qemu-img's human or JSON format; next may be adjusted
 * (the human form coalesces zero and unallocated).  -1 on an entry the
 * human form cannot show, or JSON without CONFIG_JSON.  The JSON form is
 * built with json-c (img_map_entry_to_json) and printed by img-json.c. */
int img_map_dump_entry(FILE *f, OutputFormat fmt, const ImgMapEntry *e, ImgMapEntry *next);

/* qemu's QDict bucket of a key: qemu prints JSON objects in this order. */
unsigned img_qdict_bucket(const char *key);

/* Fill buf with qemu-io's pattern (one byte value). */
void img_fill_pattern(void *buf, size_t len, int pattern);
/* qemu-io's hex dump ("00100000:  ab ab ...  ................"). */
void img_dump_buffer(FILE *f, const void *buf, int64_t offset, int64_t len);

/* ---- progress (progress.c), qemu's "    (12.34/100%)\r" ---- */
void progress_init(bool enabled, float min_skip);
void progress_print(float delta, int max);
void progress_end(void);

/* ---- JSON (img-json.c); built with json-c, printed in qemu's layout ---- */
#ifdef CONFIG_JSON
struct json_object;
/* Print obj as qemu does: 4-space indent, keys in QDict order, newline. */
void img_json_print(FILE *f, struct json_object *obj);
char *img_json_to_string(struct json_object *obj);
/* Print obj on one line in insertion order, as qemu-img map's entries. */
void img_json_print_inline(FILE *f, struct json_object *obj);
/* A map entry as qemu-img map --output=json has it (caller puts it). */
struct json_object *img_map_entry_to_json(const ImgMapEntry *e);
#endif

#endif
