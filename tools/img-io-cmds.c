/*
 * img-io-cmds.c - the commands of `ublkd img io`, a qemu-io 7.2 look-alike:
 * read, readv, write, writev, discard, flush, length, map, truncate, help.
 *
 * Output and failure rules are qemu-io's, because test suites compare them:
 * "wrote N/N bytes at offset O" plus a statistics line (suppressed by -q),
 * "Pattern verification failed at offset O, N bytes" (the command then
 * fails), errors as "read failed: <strerror>".  A command returns 0 or
 * -errno; img-io.c turns any failure into exit code 1.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-backend.h"
#include "img.h"

typedef struct IoCmd {
    const char *name, *altname;
    int (*fn)(BlockBackend *blk, int argc, char **argv);
    int argmin, argmax;          /* argmax -1: unlimited */
    bool needs_write;
    const char *args, *oneline;
} IoCmd;

static const IoCmd *find_cmd(const char *name);

static void usage_of(const IoCmd *c)
{
    printf("%s %s -- %s\n", c->name, c->args, c->oneline);
}

static int64_t arg_num(const char *s)
{
    int64_t v = img_cvtnum(s);
    if (v == -EINVAL) {
        printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n",
               s);
    } else if (v == -ERANGE) {
        printf("Parsing error: argument too large -- %s\n", s);
    } else if (v < 0) {
        printf("Parsing error: %s\n", s);
    }
    return v;
}

static int parse_pattern(const char *arg)
{
    char *end;
    long p = strtol(arg, &end, 0);
    if (p < 0 || p > UCHAR_MAX || *end) {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)p;
}

static void print_report(const char *op, double secs, int64_t offset, int64_t count,
                         int64_t total, int cnt)
{
    char s1[64], s2[64], ts[64];
    if (secs <= 0) {
        secs = 1e-9;   /* a too-fast op must not print inf */
    }
    img_timestr(secs, ts, sizeof(ts));
    img_cvtstr((double)total, s1, sizeof(s1));
    img_cvtstr(total / secs, s2, sizeof(s2));
    printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op, total, count, offset);
    printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", s1, cnt, ts, s2, cnt / secs);
}

/* ---- the request, run in a coroutine ---- */
typedef enum { OP_READ, OP_WRITE, OP_ZEROES, OP_DISCARD } IoOp;
typedef struct IoReq {
    BlockBackend *blk;
    IoOp op;
    int64_t offset, bytes;
    IOVector *qiov;
    BdrvRequestFlags flags;
    int ret;
} IoReq;

static void coroutine_fn io_req_entry(void *opaque)
{
    IoReq *r = opaque;
    switch (r->op) {
    case OP_READ:
        r->ret = blk_co_preadv(r->blk, r->offset, r->bytes, r->qiov, r->flags);
        break;
    case OP_WRITE:
        r->ret = blk_co_pwritev(r->blk, r->offset, r->bytes, r->qiov, r->flags);
        break;
    case OP_ZEROES:
        r->ret = blk_co_pwrite_zeroes(r->blk, r->offset, r->bytes, r->flags);
        break;
    case OP_DISCARD:
        r->ret = blk_co_pdiscard(r->blk, r->offset, r->bytes);
        break;
    }
}

static int do_req(BlockBackend *blk, IoOp op, int64_t offset, int64_t bytes, IOVector *qiov,
                  BdrvRequestFlags flags, double *secs)
{
    IoReq r = { blk, op, offset, bytes, qiov, flags, 0 };
    int64_t t0 = clock_monotonic_ns();
    aio_co_run_sync(io_req_entry, &r);
    *secs = (clock_monotonic_ns() - t0) / 1e9;
    return r.ret < 0 ? r.ret : 0;
}

static int check_len(int64_t count)
{
    if (count > (int64_t)BDRV_REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %" PRId64 "\n",
               (uint64_t)BDRV_REQUEST_MAX_BYTES, count);
        return -EINVAL;
    }
    return 0;
}

static void *alloc_buf(int64_t len, int pattern)
{
    void *buf = aligned_alloc_or_die(4096, len ? len : 1);
    img_fill_pattern(buf, len, pattern);
    return buf;
}

/*
 * The options of the data commands.  A letter means the same in every
 * command that takes it (as in qemu-io); a command's optstring says which
 * it takes.
 */
typedef struct IoOpts {
    bool quiet;                  /* -q: no report */
    bool dump;                   /* -v: hex dump of what was read */
    bool fua;                    /* -f */
    bool zeroes, unmap, no_fallback;   /* -z, -u, -n */
    bool compressed;             /* -c */
    bool pattern_given;
    int pattern;                 /* -P, or the command's default */
    int64_t poff, plen;          /* -s, -l: the part of a read -P checks */
} IoOpts;

/* Print the command's usage line (argv[0] may be its alias); -EINVAL. */
static int usage_error(char **argv)
{
    usage_of(find_cmd(argv[0]));
    return -EINVAL;
}

/* 0, or -errno with the reason printed. */
static int io_getopt(int argc, char **argv, const char *optstring, IoOpts *o)
{
    int c;
    optind = 0;
    while ((c = getopt(argc, argv, optstring)) != -1) {
        switch (c) {
        case 'P':
            o->pattern_given = true;
            if ((o->pattern = parse_pattern(optarg)) < 0) {
                return -EINVAL;
            }
            break;
        case 's':
            if ((o->poff = arg_num(optarg)) < 0) {
                return -EINVAL;
            }
            break;
        case 'l':
            if ((o->plen = arg_num(optarg)) < 0) {
                return -EINVAL;
            }
            break;
        case 'q': o->quiet = true; break;
        case 'v': o->dump = true; break;
        case 'f': o->fua = true; break;
        case 'z': o->zeroes = true; break;
        case 'u': o->unmap = true; break;
        case 'n': o->no_fallback = true; break;
        case 'C': case 'p': break;   /* qemu-io's, accepted without effect */
        case 'c': o->compressed = true; break;
        default:                     /* -b too: qemu-io's vmstate access is not served */
            return usage_error(argv);
        }
    }
    return 0;
}

/* The "off len" of read, write and discard, after the options. */
static int off_len_args(int argc, char **argv, int64_t *offset, int64_t *len)
{
    if (optind != argc - 2) {
        return usage_error(argv);
    }
    *offset = arg_num(argv[optind]);
    *len = *offset < 0 ? -1 : arg_num(argv[optind + 1]);
    return *offset < 0 || *len < 0 ? -EINVAL : 0;
}

/* ---- read / readv ---- */
static int verify(const uint8_t *buf, int64_t offset, int64_t poff, int64_t plen, int pattern)
{
    for (int64_t i = 0; i < plen; i++) {
        if (buf[poff + i] != pattern) {
            printf("Pattern verification failed at offset %" PRId64 ", %" PRId64 " bytes\n",
                   offset + poff, plen);
            return -EINVAL;
        }
    }
    return 0;
}

static int read_f(BlockBackend *blk, int argc, char **argv)
{
    IoOpts o = { .pattern = -1, .plen = -1 };
    int64_t offset, count;
    int ret = io_getopt(argc, argv, "bCl:pP:qs:v", &o);
    if (ret < 0) {
        return ret;
    }
    if (off_len_args(argc, argv, &offset, &count) < 0 || check_len(count) < 0) {
        return -EINVAL;
    }
    if (o.plen < 0) {
        o.plen = count - o.poff;
    }
    /* Compared without adding: -s and -l may each be near INT64_MAX. */
    if (o.pattern >= 0 && (o.poff > count || o.plen > count - o.poff)) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    uint8_t *buf = alloc_buf(count, 0xab);
    IOVector q;
    iov_init_buf(&q, buf, count);
    double secs;
    ret = do_req(blk, OP_READ, offset, count, &q, 0, &secs);
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        free(buf);
        return ret;
    }
    if (o.pattern >= 0) {
        ret = verify(buf, offset, o.poff, o.plen, o.pattern);
    }
    if (!o.quiet) {
        if (o.dump) {
            img_dump_buffer(stdout, buf, offset, count);
        }
        print_report("read", secs, offset, count, count, 1);
    }
    free(buf);
    return ret;
}

/* Build a vector of the lengths in argv, backed by one buffer. */
static int64_t build_vec(IOVector *q, uint8_t **bufp, int argc, char **argv, int pattern)
{
    int64_t total = 0;
    for (int i = 0; i < argc; i++) {
        int64_t len = arg_num(argv[i]);
        if (len < 0) {
            return -EINVAL;
        }
        /* Each length is bounded before the sum, which then cannot overflow. */
        if (check_len(len) < 0 || check_len(total + len) < 0) {
            return -EINVAL;
        }
        total += len;
        if (check_len(total) < 0) {
            return -EINVAL;
        }
    }
    uint8_t *buf = alloc_buf(total, pattern);
    iov_init(q, argc);
    int64_t pos = 0;
    for (int i = 0; i < argc; i++) {
        int64_t len = img_cvtnum(argv[i]);
        iov_add(q, buf + pos, len);
        pos += len;
    }
    *bufp = buf;
    return total;
}

/* The "off len [len..]" of readv and writev, after the options; the total
 * length or -EINVAL. */
static int64_t vec_args(int argc, char **argv, int64_t *offset, IOVector *q, uint8_t **bufp,
                        int pattern)
{
    if (optind > argc - 2) {
        return usage_error(argv);
    }
    *offset = arg_num(argv[optind++]);
    if (*offset < 0) {
        return -EINVAL;
    }
    return build_vec(q, bufp, argc - optind, argv + optind, pattern);
}

static int readv_f(BlockBackend *blk, int argc, char **argv)
{
    IoOpts o = { .pattern = -1 };
    int64_t offset;
    IOVector q;
    uint8_t *buf;
    int ret = io_getopt(argc, argv, "CP:qv", &o);
    if (ret < 0) {
        return ret;
    }
    int64_t count = vec_args(argc, argv, &offset, &q, &buf, 0xab);
    if (count < 0) {
        return -EINVAL;
    }
    double secs;
    ret = do_req(blk, OP_READ, offset, count, &q, 0, &secs);
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
    } else {
        if (o.pattern >= 0) {
            ret = verify(buf, offset, 0, count, o.pattern);
        }
        if (!o.quiet) {
            if (o.dump) {
                img_dump_buffer(stdout, buf, offset, count);
            }
            print_report("read", secs, offset, count, count, 1);
        }
    }
    iov_destroy(&q);
    free(buf);
    return ret;
}

/* ---- write / writev ---- */
static int write_f(BlockBackend *blk, int argc, char **argv)
{
    IoOpts o = { .pattern = 0xcd };
    int64_t offset, count;
    int ret = io_getopt(argc, argv, "bcCfnpP:quz", &o);
    if (ret < 0) {
        return ret;
    }
    /* A wrong argument count is told before the flag mix-ups, as qemu-io does;
     * off_len_args checks it again. */
    if (optind != argc - 2) {
        return usage_error(argv);
    }
    if (o.fua && o.compressed) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (o.zeroes && o.pattern_given) {
        printf("-z and -P cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (!o.zeroes && o.unmap) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (!o.zeroes && o.no_fallback) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if (off_len_args(argc, argv, &offset, &count) < 0) {
        return -EINVAL;
    }
    if (!o.zeroes && check_len(count) < 0) {
        return -EINVAL;
    }
    /* with -z, -c is dropped on the way (zeroes are not compressed), as in qemu-io */
    BdrvRequestFlags flags = (o.fua ? BDRV_REQ_FUA : 0) |
                             (o.compressed ? BDRV_REQ_WRITE_COMPRESSED : 0);
    double secs;
    if (o.zeroes) {
        flags |= (o.unmap ? BDRV_REQ_MAY_UNMAP : 0) | (o.no_fallback ? BDRV_REQ_NO_FALLBACK : 0);
        ret = do_req(blk, OP_ZEROES, offset, count, NULL, flags, &secs);
    } else {
        uint8_t *buf = alloc_buf(count, o.pattern);
        IOVector q;
        iov_init_buf(&q, buf, count);
        ret = do_req(blk, OP_WRITE, offset, count, &q, flags, &secs);
        free(buf);
    }
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!o.quiet) {
        print_report("wrote", secs, offset, count, count, 1);
    }
    return 0;
}

static int writev_f(BlockBackend *blk, int argc, char **argv)
{
    IoOpts o = { .pattern = 0xcd };
    int64_t offset;
    IOVector q;
    uint8_t *buf;
    int ret = io_getopt(argc, argv, "CfqP:", &o);
    if (ret < 0) {
        return ret;
    }
    int64_t count = vec_args(argc, argv, &offset, &q, &buf, o.pattern);
    if (count < 0) {
        return -EINVAL;
    }
    double secs;
    ret = do_req(blk, OP_WRITE, offset, count, &q, o.fua ? BDRV_REQ_FUA : 0, &secs);
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
    } else if (!o.quiet) {
        print_report("wrote", secs, offset, count, count, 1);
    }
    iov_destroy(&q);
    free(buf);
    return ret;
}

/* ---- discard, flush, length, truncate, map ---- */
static int discard_f(BlockBackend *blk, int argc, char **argv)
{
    IoOpts o = { 0 };
    int64_t offset, bytes;
    int ret = io_getopt(argc, argv, "Cq", &o);
    if (ret < 0) {
        return ret;
    }
    if (off_len_args(argc, argv, &offset, &bytes) < 0) {
        return -EINVAL;
    }
    if (bytes > (int64_t)BDRV_REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n",
               (uint64_t)BDRV_REQUEST_MAX_BYTES, argv[optind + 1]);
        return -EINVAL;
    }
    double secs;
    ret = do_req(blk, OP_DISCARD, offset, bytes, NULL, 0, &secs);
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!o.quiet) {
        print_report("discard", secs, offset, bytes, bytes, 1);
    }
    return 0;
}

static int flush_f(BlockBackend *blk, int argc UNUSED, char **argv UNUSED)
{
    int ret = blk_flush(blk);
    return ret < 0 ? ret : 0;
}

static int length_f(BlockBackend *blk, int argc UNUSED, char **argv UNUSED)
{
    int64_t size = blk_getlength(blk);
    if (size < 0) {
        printf("getlength: %s\n", strerror(-(int)size));
        return (int)size;
    }
    char s[64];
    img_cvtstr((double)size, s, sizeof(s));
    printf("%s\n", s);
    return 0;
}

static int truncate_f(BlockBackend *blk, int argc, char **argv)
{
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    int c;
    optind = 0;
    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            if (!strcmp(optarg, "off")) {
                prealloc = PREALLOC_MODE_OFF;
            } else if (!strcmp(optarg, "metadata")) {
                prealloc = PREALLOC_MODE_METADATA;
            } else if (!strcmp(optarg, "falloc")) {
                prealloc = PREALLOC_MODE_FALLOC;
            } else if (!strcmp(optarg, "full")) {
                prealloc = PREALLOC_MODE_FULL;
            } else {
                printf("Invalid preallocation mode '%s'\n", optarg);
                return -EINVAL;
            }
            break;
        default:
            return usage_error(argv);
        }
    }
    if (optind != argc - 1) {
        return usage_error(argv);
    }
    int64_t offset = arg_num(argv[optind]);
    if (offset < 0) {
        return -EINVAL;
    }
    Error *err = NULL;
    int ret = blk_truncate(blk, offset, false, prealloc, &err);
    if (ret < 0) {
        if (err) {
            error_report_err(err);
        } else {
            error_report("truncate failed: %s", strerror(-ret));
        }
        return ret;
    }
    return 0;
}

/* qemu-io's map: allocated/not allocated runs of the top layer only. */
static int is_allocated(BlockDriverState *bs, int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t map;
    BlockDriverState *file;
    int ret = bdrv_block_status_above(bs, bdrv_backing_bs(bs), offset, bytes, pnum, &map, &file);
    if (ret < 0) {
        return ret;
    }
    return !!(ret & BDRV_BLOCK_ALLOCATED);
}

static int map_f(BlockBackend *blk, int argc UNUSED, char **argv UNUSED)
{
    BlockDriverState *bs = blk_bs(blk);
    int64_t offset = 0, bytes = blk_getlength(blk);
    if (bytes < 0) {
        error_report("Failed to query image length: %s", strerror(-(int)bytes));
        return (int)bytes;
    }
    while (bytes) {
        int64_t num, n;
        int ret = is_allocated(bs, offset, bytes, &num);
        if (ret < 0) {
            error_report("Failed to get allocation status: %s", strerror(-ret));
            return ret;
        }
        if (!num) {
            error_report("Unexpected end of image");
            return -EIO;
        }
        /* Merge following runs of the same kind, as qemu-io does. */
        int first = ret;
        while (bytes - num > 0) {
            int r = is_allocated(bs, offset + num, bytes - num, &n);
            if (r != first || !n) {
                break;
            }
            num += n;
        }
        char s1[64], s2[64];
        img_cvtstr((double)num, s1, sizeof(s1));
        img_cvtstr((double)offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n", s1, (uint64_t)num,
               first ? "    allocated" : "not allocated", s2, (uint64_t)offset);
        offset += num;
        bytes -= num;
    }
    return 0;
}

static int help_f(BlockBackend *blk, int argc, char **argv);

static const IoCmd cmds[] = {
    { "read", "r", read_f, 2, -1, false, "[-qv] [-P pattern [-s off] [-l len]] off len",
      "reads a number of bytes at a specified offset" },
    { "readv", NULL, readv_f, 2, -1, false, "[-qv] [-P pattern] off len [len..]",
      "reads a number of bytes at a specified offset into several buffers" },
    { "write", "w", write_f, 2, -1, true, "[-cfnquz] [-P pattern] off len",
      "writes a number of bytes at a specified offset" },
    { "writev", NULL, writev_f, 2, -1, true, "[-fq] [-P pattern] off len [len..]",
      "writes a number of bytes at a specified offset from several buffers" },
    { "discard", "d", discard_f, 2, -1, true, "[-q] off len",
      "discards a number of bytes at a specified offset" },
    { "flush", "f", flush_f, 0, 0, false, "", "flush all in-core file state to disk" },
    { "length", "l", length_f, 0, 0, false, "", "gets the length of the current file" },
    { "map", NULL, map_f, 0, 0, false, "", "prints the allocated areas of a file" },
    { "truncate", "t", truncate_f, 1, 3, true, "[-m prealloc_mode] off",
      "truncates the current file at the given offset" },
    { "help", "?", help_f, 0, 1, false, "[command]", "help for one or all commands" },
};

static const IoCmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(cmds); i++) {
        if (!strcmp(cmds[i].name, name) || (cmds[i].altname && !strcmp(cmds[i].altname, name))) {
            return &cmds[i];
        }
    }
    return NULL;
}

static int help_f(BlockBackend *blk UNUSED, int argc, char **argv)
{
    if (argc == 2) {
        const IoCmd *c = find_cmd(argv[1]);
        if (!c) {
            printf("command %s not found\n", argv[1]);
            return -EINVAL;
        }
        usage_of(c);
        return 0;
    }
    for (size_t i = 0; i < ARRAY_SIZE(cmds); i++) {
        usage_of(&cmds[i]);
    }
    printf("\nUse 'help commandname' for extended help.\n");
    return 0;
}

int img_io_command(BlockBackend *blk, const char *line)
{
    /* Split on blanks; single and double quotes group words. */
    char *copy = strdup(line), *argv[256];
    int argc = 0;
    char *p = copy;
    while (*p && argc < 255) {
        while (*p == ' ' || *p == '\t' || *p == '\n') {
            p++;
        }
        if (!*p) {
            break;
        }
        char q = 0, *out = p;
        argv[argc++] = p;
        while (*p && (q || (*p != ' ' && *p != '\t' && *p != '\n'))) {
            if (!q && (*p == '"' || *p == '\'')) {
                q = *p++;
            } else if (q && *p == q) {
                q = 0;
                p++;
            } else {
                *out++ = *p++;
            }
        }
        if (*p) {
            p++;
        }
        *out = '\0';
    }
    argv[argc] = NULL;
    int ret = 0;
    if (argc == 0) {
        goto out;
    }
    const IoCmd *c = find_cmd(argv[0]);
    if (!c) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        ret = -EINVAL;
        goto out;
    }
    if (argc - 1 < c->argmin || (c->argmax != -1 && argc - 1 > c->argmax)) {
        if (c->argmax == -1) {
            fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n",
                    argc - 1, argv[0], c->argmin);
        } else if (c->argmin == c->argmax) {
            fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n",
                    argc - 1, argv[0], c->argmin);
        } else {
            fprintf(stderr, "bad argument count %d to %s, expected between %d and %d "
                    "arguments\n", argc - 1, argv[0], c->argmin, c->argmax);
        }
        ret = -EINVAL;
        goto out;
    }
    if (c->needs_write && blk_is_read_only(blk)) {
        error_report("Block node is read-only");
        ret = -EACCES;
        goto out;
    }
    ret = c->fn(blk, argc, argv);
    fflush(stdout);
out:
    free(copy);
    return ret;
}
