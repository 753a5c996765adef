/*
 * config.c - a device's configuration and its state file (see include/ublk.h).
 *
 * `ublkd add` arguments become a UblkDevConfig; the daemon stores it, with
 * what the kernel granted (id, flags, queues, depth) and its pid, as JSON in
 * the run directory so that `list` and `recover` work after the adding
 * process has gone (and `recover` can rebuild the same graph after a crash).
 * Counters go to a separate file the daemon rewrites periodically, so the
 * state file is written only at add/recover time.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "ublk.h"
#ifdef CONFIG_CRYPTO
#include "crypto.h"
#endif
#ifdef CONFIG_NBD
#include "nbd-tls.h"
#endif
#define UBLK_KEY_FILE_SECRET "ublkd-key-file"

void ublk_dev_config_init(UblkDevConfig *c)
{
    memset(c, 0, sizeof(*c));
    c->dev_id = -1;
    c->nr_queues = UBLK_DEFAULT_QUEUES;
    c->depth = UBLK_DEFAULT_DEPTH;
    c->max_io_size = UBLK_DEFAULT_MAX_IO;
    c->recovery = UBLK_RECOVERY_REISSUE;
    c->affinity = UBLK_AFFINITY_NONE;
    c->batch = UBLK_BATCH_DEFAULT;
}

void ublk_dev_config_free(UblkDevConfig *c)
{
    free(c->type);
    for (int i = 0; i < c->nfiles; i++) {
        free(c->files[i]);
    }
    free(c->files);
    free(c->blockdev);
    free(c->cache);
    free(c->discard);
    free(c->log_file);
    free(c->io_scheduler);
    free(c->key_file);
    for (int i = 0; i < c->nobjects; i++) {
        free(c->objects[i]);
    }
    free(c->objects);
    free(c->extra_opts);
    memset(c, 0, sizeof(*c));
    c->dev_id = -1;
}

void ublk_dev_config_usage(FILE *f)
{
    fprintf(f,
        "usage: ublkd add TYPE FILE... [options]\n"
        "       ublkd add -t TYPE -f FILE [-f FILE...] [options]   (as ublksrv and rublk)\n"
        "       ublkd add null [--size SIZE] [options]\n"
        "       ublkd add --blockdev 'driver=...,file.filename=...' [options]\n"
        "TYPE is a block driver of this build:");
    for (int i = 0; bdrv_driver_at(i); i++) {
        fprintf(f, " %s", bdrv_driver_name(bdrv_driver_at(i)));
    }
    fprintf(f, ".\n"
        "  -t, --type TYPE             the driver, as the first word would be\n"
        "  -f, --file FILE             an image, as the words after TYPE would be\n"
        "  -n, --id ID                 device id (default: the kernel picks)\n"
        "  -q, --queues N              hardware queues, one thread each (default 1)\n"
        "      --per-io-threads N      N threads share the tags of all queues instead\n"
        "                              (UBLK_F_PER_IO_DAEMON, Linux 6.16+; default off)\n"
        "      --batch[=MODE]          off (default), auto, on (--batch alone): prepare, fetch\n"
        "                              and commit many tags per command (UBLK_F_BATCH_IO,\n"
        "                              Linux 7.3); on fails where the kernel lacks it\n"
        "  -d, --depth D               queue depth, 1..4096 (default 128)\n"
        "  -o, --option K=V[,K=V]      extra options for the root node\n"
        "      --key-file PATH         passphrase of an encrypted qcow2 (LUKS): the whole file\n"
        "      --object DEF            secret,id=ID,file=PATH[,format=raw|base64] (named by\n"
        "                              encrypt.key-secret=ID; data= is refused: the state file\n"
        "                              would hold it), tls-creds-psk,id=ID,dir=DIR,endpoint=client\n"
        "                              [,username=U] or tls-creds-x509,id=ID,dir=DIR,endpoint=client\n"
        "                              [,verify-peer=on|off] (named by an nbd node's tls-creds=ID);\n"
        "                              repeatable, kept for recover and upgrade\n"
        "      --size SIZE             size of a null device (default 250G, as ublksrv's)\n"
        "      --cache MODE            none (default), writeback, writethrough, directsync, unsafe\n"
        "      --discard unmap|ignore  what discards do (default unmap)\n"
        "      --no-discard            do not advertise discard at all\n"
        "      --read-only             export read-only\n"
        "      --snapshot NAME         export qcow2 internal snapshot NAME, read-only\n"
        "      --rotational            advertise a rotational disk\n"
        "      --logical-block-size N  512..4096 (default: from the image, at least 512)\n"
        "      --physical-block-size N (default: the logical block size)\n"
        "      --io-opt N              optimal I/O size (default: from the image)\n"
        "      --max-io-size N         largest request, 4k..32M (default 512k)\n"
        "      --discard-granularity N, --max-discard N\n"
        "  -u, --user-copy             copy data with pread/pwrite on /dev/ublkcN (UBLK_F_USER_COPY)\n"
        "  -g, --need-get-data         UBLK_F_NEED_GET_DATA for writes\n"
        "      --no-partition-scan     the kernel does not scan the disk for partitions\n"
        "                              (UBLK_F_NO_AUTO_PART_SCAN, Linux 7.x)\n"
        "      --zero-copy MODE        auto (default), on, off, register: let the kernel hand\n"
        "                              the request's pages to the backing I/O instead of copying\n"
        "                              (UBLK_F_AUTO_BUF_REG, else UBLK_F_SUPPORT_ZERO_COPY; Linux\n"
        "                              6.15+, root only); on fails where that is impossible,\n"
        "                              register uses per-request buffer commands (the 6.15 way)\n"
        "      --recovery MODE         none, fail, reissue (default), fail-io: what happens to I/O\n"
        "                              while the daemon is dead (see ublkd recover)\n"
        "      --reissue               same as --recovery=reissue\n"
        "  -r                          same as --recovery=fail (UBLK_F_USER_RECOVERY alone,\n"
        "                              what -r means to ublksrv and rublk)\n"
        "      --io-scheduler NAME     the device's I/O scheduler: none (default; the kernel\n"
        "                              gives 1-queue devices mq-deadline, which on 7.x sends\n"
        "                              every request through a kworker), kernel (keep its\n"
        "                              choice), or a scheduler's name\n"
        "      --affinity queue|none   pin each queue thread to the kernel's CPUs for it (default none)\n"
        "      --foreground            do not daemonize; log to stderr\n"
        "      --log FILE              log to FILE instead of syslog\n");
}

static char *xstrdup(const char *s)
{
    char *r = s ? strdup(s) : NULL;
    if (s && !r) {
        abort();
    }
    return r;
}

static int parse_u32(const char *opt, const char *arg, uint64_t max, bool allow_suffix,
                     uint32_t *out, Error **errp)
{
    uint64_t v;
    char *end;
    if (allow_suffix) {
        if (parse_size(arg, &v) < 0) {
            error_setg(errp, "invalid value for %s: '%s'", opt, arg);
            return -1;
        }
    } else {
        errno = 0;
        v = strtoull(arg, &end, 0);
        if (errno || end == arg || *end || arg[0] == '-') {
            error_setg(errp, "invalid value for %s: '%s' (expected a number)", opt, arg);
            return -1;
        }
    }
    if (v > max) {
        error_setg(errp, "%s %s is too large (at most %llu)", opt, arg, (unsigned long long)max);
        return -1;
    }
    *out = v;
    return 0;
}

void ublk_getopt_error(int opt, char **argv, Error **errp)
{
    /* For a long option optopt is its val (>= 256 for long-only ones),
     * not a character: those are named as typed. */
    const char *name = argv[optind - 1];
    if (opt == ':') {
        error_setg(errp, "option '%s' needs a value", name);
    } else if (optopt && optopt < 256 && strncmp(name, "--", 2)) {
        error_setg(errp, "unknown option '-%c'", optopt);
    } else if (strchr(name, '=')) {
        error_setg(errp, "option '%s' is unknown or takes no value", name);
    } else {
        error_setg(errp, "unknown option '%s'", name);
    }
}

enum {
    OPT_SIZE = 256, OPT_CACHE, OPT_DISCARD, OPT_NO_DISCARD, OPT_ROT, OPT_LBS, OPT_PBS,
    OPT_IOOPT, OPT_MAXIO, OPT_DGRAN, OPT_DMAX, OPT_RECOVERY, OPT_REISSUE, OPT_AFFINITY,
    OPT_LOG, OPT_BLOCKDEV, OPT_RO, OPT_FOREGROUND, OPT_ZC, OPT_NO_PART_SCAN, OPT_PER_IO,
    OPT_KEY_FILE,
    OPT_SNAPSHOT,
    OPT_BATCH,
    OPT_IO_SCHED,
    OPT_OBJECT,
};

int ublk_dev_config_parse(UblkDevConfig *c, int argc, char **argv, Error **errp)
{
    static const struct option longopts[] = {
        { "id", required_argument, NULL, 'n' },
        { "queues", required_argument, NULL, 'q' },
        { "depth", required_argument, NULL, 'd' },
        { "option", required_argument, NULL, 'o' },
        { "read-only", no_argument, NULL, OPT_RO },
        { "user-copy", no_argument, NULL, 'u' },
        { "need-get-data", no_argument, NULL, 'g' },
        { "foreground", no_argument, NULL, OPT_FOREGROUND },
        { "type", required_argument, NULL, 't' },
        { "file", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { "size", required_argument, NULL, OPT_SIZE },
        { "cache", required_argument, NULL, OPT_CACHE },
        { "discard", required_argument, NULL, OPT_DISCARD },
        { "no-discard", no_argument, NULL, OPT_NO_DISCARD },
        { "rotational", no_argument, NULL, OPT_ROT },
        { "logical-block-size", required_argument, NULL, OPT_LBS },
        { "physical-block-size", required_argument, NULL, OPT_PBS },
        { "io-opt", required_argument, NULL, OPT_IOOPT },
        { "max-io-size", required_argument, NULL, OPT_MAXIO },
        { "discard-granularity", required_argument, NULL, OPT_DGRAN },
        { "max-discard", required_argument, NULL, OPT_DMAX },
        { "recovery", required_argument, NULL, OPT_RECOVERY },
        { "reissue", no_argument, NULL, OPT_REISSUE },
        { "affinity", required_argument, NULL, OPT_AFFINITY },
        { "log", required_argument, NULL, OPT_LOG },
        { "blockdev", required_argument, NULL, OPT_BLOCKDEV },
        { "zero-copy", required_argument, NULL, OPT_ZC },
        { "no-partition-scan", no_argument, NULL, OPT_NO_PART_SCAN },
        { "per-io-threads", required_argument, NULL, OPT_PER_IO },
        { "key-file", required_argument, NULL, OPT_KEY_FILE },
        { "snapshot", required_argument, NULL, OPT_SNAPSHOT },
        { "batch", optional_argument, NULL, OPT_BATCH },
        { "io-scheduler", required_argument, NULL, OPT_IO_SCHED },
        { "object", required_argument, NULL, OPT_OBJECT },
        { NULL, 0, NULL, 0 },
    };
    uint32_t v;
    int opt;
    optind = 0;           /* full re-initialisation: parse may run twice */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":n:q:d:o:rugt:f:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'n':
            if (parse_u32("--id", optarg, (1U << 20) - 1, false, &v, errp) < 0) {
                return -1;
            }
            c->dev_id = v;
            break;
        case 'q':
            if (parse_u32("--queues", optarg, UINT32_MAX, false, &c->nr_queues, errp) < 0) {
                return -1;
            }
            break;
        case 'd':
            if (parse_u32("--depth", optarg, UINT32_MAX, false, &c->depth, errp) < 0) {
                return -1;
            }
            break;
        case 'o': {
            size_t old = c->extra_opts ? strlen(c->extra_opts) : 0;
            char *n = realloc(c->extra_opts, old + strlen(optarg) + 2);
            if (!n) {
                abort();
            }
            if (old) {
                n[old++] = ',';
            }
            strcpy(n + old, optarg);
            c->extra_opts = n;
            break;
        }
        case OPT_RO: c->read_only = true; break;
        case OPT_SNAPSHOT: {
            /* a qcow2 internal snapshot, read-only: -o load-snapshot-name=NAME
             * with the name's commas doubled, as options escape them */
            size_t old = c->extra_opts ? strlen(c->extra_opts) : 0, extra = 0;
            for (const char *p = optarg; *p; p++) {
                extra += *p == ',';
            }
            char *n = realloc(c->extra_opts, old + strlen(optarg) + extra + 24);
            if (!n) {
                abort();
            }
            if (old) {
                n[old++] = ',';
            }
            old += (size_t)sprintf(n + old, "load-snapshot-name=");
            for (const char *p = optarg; *p; p++) {
                n[old++] = *p;
                if (*p == ',') {
                    n[old++] = ',';
                }
            }
            n[old] = 0;
            c->extra_opts = n;
            c->read_only = true;
            break;
        }
        case 'r': c->recovery = UBLK_RECOVERY_FAIL; c->recovery_given = true; break;
        case 'u': c->user_copy = true; break;
        case 'g': c->need_get_data = true; break;
        case OPT_FOREGROUND: c->foreground = true; break;
        case 't': free(c->type); c->type = xstrdup(optarg); break;
        case 'f':
            c->files = realloc(c->files, (c->nfiles + 1) * sizeof(char *));
            if (!c->files) {
                abort();
            }
            c->files[c->nfiles++] = xstrdup(optarg);
            break;
        case 'h':
            ublk_dev_config_usage(stdout);
            return 1;
        case OPT_SIZE:
            if (parse_size(optarg, &c->size) < 0) {
                error_setg(errp, "invalid value for --size: '%s'", optarg);
                return -1;
            }
            if (c->size == 0) {
                error_setg(errp, "--size must be greater than 0");
                return -1;
            }
            /* Checked here, as given: the null driver's size is an int64. */
            if (c->size > (uint64_t)BDRV_MAX_LENGTH) {
                error_setg(errp, "--size %s is too large (at most %lld bytes)", optarg,
                           (long long)BDRV_MAX_LENGTH);
                return -1;
            }
            break;
        case OPT_CACHE: free(c->cache); c->cache = xstrdup(optarg); break;
        case OPT_KEY_FILE: free(c->key_file); c->key_file = xstrdup(optarg); break;
        case OPT_OBJECT:
            /* Checked with the others in ublk_dev_config_check. */
            c->objects = realloc(c->objects, (c->nobjects + 1) * sizeof(char *));
            if (!c->objects) {
                abort();
            }
            c->objects[c->nobjects++] = xstrdup(optarg);
            break;
        case OPT_DISCARD:
            if (strcmp(optarg, "unmap") && strcmp(optarg, "ignore")) {
                error_setg(errp, "invalid value for --discard: '%s' (unmap or ignore)", optarg);
                return -1;
            }
            free(c->discard);
            c->discard = xstrdup(optarg);
            break;
        case OPT_NO_DISCARD: c->no_discard = true; break;
        case OPT_ROT: c->rotational = true; break;
        case OPT_LBS:
            if (parse_u32("--logical-block-size", optarg, 1U << 20, true, &c->logical_bs, errp) < 0) {
                return -1;
            }
            break;
        case OPT_PBS:
            if (parse_u32("--physical-block-size", optarg, 1U << 20, true, &c->physical_bs, errp) < 0) {
                return -1;
            }
            break;
        case OPT_IOOPT:
            if (parse_u32("--io-opt", optarg, 1U << 30, true, &c->io_opt, errp) < 0) {
                return -1;
            }
            break;
        case OPT_MAXIO:
            if (parse_u32("--max-io-size", optarg, 1U << 30, true, &c->max_io_size, errp) < 0) {
                return -1;
            }
            break;
        case OPT_DGRAN:
            if (parse_u32("--discard-granularity", optarg, 1U << 30, true,
                          &c->discard_granularity, errp) < 0) {
                return -1;
            }
            break;
        case OPT_DMAX:
            if (parse_size(optarg, &c->max_discard) < 0) {
                error_setg(errp, "invalid value for --max-discard: '%s'", optarg);
                return -1;
            }
            /* The kernel takes whole sectors in a u32: anything else would be
             * cut without a word. */
            if (c->max_discard % 512 || c->max_discard > ((uint64_t)UINT32_MAX << 9)) {
                error_setg(errp, "--max-discard %s must be a multiple of 512 up to %llu bytes",
                           optarg, (unsigned long long)UINT32_MAX << 9);
                return -1;
            }
            break;
        case OPT_RECOVERY:
            if (!strcmp(optarg, "none")) {
                c->recovery = UBLK_RECOVERY_NONE;
            } else if (!strcmp(optarg, "fail")) {
                c->recovery = UBLK_RECOVERY_FAIL;
            } else if (!strcmp(optarg, "reissue")) {
                c->recovery = UBLK_RECOVERY_REISSUE;
            } else if (!strcmp(optarg, "fail-io")) {
                c->recovery = UBLK_RECOVERY_FAIL_IO;
            } else {
                error_setg(errp, "invalid value for --recovery: '%s' (none, fail, reissue, fail-io)",
                           optarg);
                return -1;
            }
            c->recovery_given = true;
            break;
        case OPT_REISSUE: c->recovery = UBLK_RECOVERY_REISSUE; c->recovery_given = true; break;
        case OPT_AFFINITY:
            if (!strcmp(optarg, "queue")) {
                c->affinity = UBLK_AFFINITY_QUEUE;
            } else if (!strcmp(optarg, "none")) {
                c->affinity = UBLK_AFFINITY_NONE;
            } else {
                error_setg(errp, "invalid value for --affinity: '%s' (queue or none)", optarg);
                return -1;
            }
            break;
        case OPT_LOG:
            if (!*optarg) {
                error_setg(errp, "--log needs a file name");
                return -1;
            }
            free(c->log_file);
            c->log_file = xstrdup(optarg);
            break;
        case OPT_BLOCKDEV: free(c->blockdev); c->blockdev = xstrdup(optarg); break;
        case OPT_NO_PART_SCAN: c->no_part_scan = true; break;
        case OPT_PER_IO:
            if (parse_u32("--per-io-threads", optarg, UINT32_MAX, false, &c->per_io_threads,
                          errp) < 0) {
                return -1;
            }
            if (c->per_io_threads == 0) {
                error_setg(errp, "--per-io-threads 0: give at least 1 (or leave it out for "
                           "one thread per queue)");
                return -1;
            }
            break;
        case OPT_ZC: {
            unsigned i;
            for (i = 0; i <= UBLK_ZC_REGISTER && strcmp(optarg, ublk_zero_copy_name(i)); i++) {
            }
            if (i > UBLK_ZC_REGISTER) {
                error_setg(errp, "invalid value for --zero-copy: '%s' (auto, on, off, register)",
                           optarg);
                return -1;
            }
            c->zero_copy = (UblkZeroCopy)i;
            break;
        }
        case OPT_BATCH: {
            unsigned i = UBLK_BATCH_ON;
            if (optarg) {
                for (i = 0; i <= UBLK_BATCH_ON && strcmp(optarg, ublk_batch_name(i)); i++) {
                }
            }
            if (i > UBLK_BATCH_ON) {
                error_setg(errp, "invalid value for --batch: '%s' (off, auto, on)", optarg);
                return -1;
            }
            c->batch = (UblkBatch)i;
            break;
        }
        case OPT_IO_SCHED:
            /* A sysfs word: what the kernel's elevator names are made of. */
            if (!*optarg || strlen(optarg) > 31 ||
                strspn(optarg, "abcdefghijklmnopqrstuvwxyz0123456789-_") != strlen(optarg)) {
                error_setg(errp, "invalid value for --io-scheduler: '%s' (none, kernel, or an "
                           "I/O scheduler's name such as mq-deadline)", optarg);
                return -1;
            }
            free(c->io_scheduler);
            c->io_scheduler = xstrdup(optarg);
            break;
        case ':':
        case '?':
        default:
            ublk_getopt_error(opt, argv, errp);
            return -1;
        }
    }
    int pos = optind;
    if (!c->blockdev && !c->type) {
        if (pos >= argc) {
            error_setg(errp, "missing TYPE (raw, vdi, qcow2, null, ...) or --blockdev");
            return -1;
        }
        c->type = xstrdup(argv[pos++]);
    }
    for (; pos < argc; pos++) {
        if (argv[pos][0] == '-' && argv[pos][1]) {
            error_setg(errp, "options must come before the files: '%s'", argv[pos]);
            return -1;
        }
        c->files = realloc(c->files, (c->nfiles + 1) * sizeof(char *));
        if (!c->files) {
            abort();
        }
        c->files[c->nfiles++] = xstrdup(argv[pos]);
    }
    return ublk_dev_config_check(c, errp) < 0 ? -1 : 0;
}

/*
 * An --object definition `add` keeps: its type and id (caller frees).  The
 * state file holds the definition, since recover and upgrade open the graph
 * again, so a secret may only name its file.  The registries check the rest
 * (io/crypto-secret.c, drivers/nbd-uri.c) where the graph is opened.
 */
static int object_parse(const char *def, char **type, char **id, Error **errp)
{
    OptDict *d = optdict_parse(def, "qom-type", errp);
    if (!d) {
        error_prepend(errp, "--object: ");
        return -1;
    }
    const char *t = optdict_get(d, "qom-type"), *i = optdict_get(d, "id");
    bool secret = t && !strcmp(t, "secret");
    bool tls = t && (!strcmp(t, "tls-creds-psk") || !strcmp(t, "tls-creds-x509"));
    int ret = -1;
    if (!secret && !tls) {
        error_setg(errp, "--object type '%s' is not supported by ublkd add (secret, "
                   "tls-creds-psk, tls-creds-x509)", t ? t : "");
        goto out;
    }
    if (!i || !*i) {
        error_setg(errp, "--object %s: parameter 'id' is missing", t);
        goto out;
    }
    if (!strcmp(i, UBLK_KEY_FILE_SECRET)) {
        error_setg(errp, "--object %s: id '%s' is the one --key-file uses; pick another", t, i);
        goto out;
    }
    if (secret && optdict_has(d, "data")) {
        error_setg(errp, "--object secret '%s': data= is refused by ublkd add: the device's "
                   "state file keeps every --object for recover and upgrade, and a secret's "
                   "value must not be written there; put it in a file only you can read and "
                   "give file=PATH", i);
        goto out;
    }
    if (secret && !optdict_get(d, "file")) {
        error_setg(errp, "--object secret '%s': file=PATH is missing", i);
        goto out;
    }
#ifndef CONFIG_CRYPTO
    if (secret) {
        error_setg(errp, "--object secret '%s': secrets need CONFIG_CRYPTO", i);
        goto out;
    }
#endif
#ifndef CONFIG_NBD
    if (tls) {
        error_setg(errp, "--object %s '%s': TLS credentials are for the nbd driver "
                   "(built without CONFIG_NBD)", t, i);
        goto out;
    }
#endif
    *type = xstrdup(t);
    *id = xstrdup(i);
    ret = 0;
out:
    optdict_free(d);
    return ret;
}

static int objects_check(const UblkDevConfig *c, Error **errp)
{
    char **ids = calloc((size_t)c->nobjects + 1, sizeof(char *));
    int ret = 0, n = 0;
    if (!ids) {
        abort();
    }
    for (; n < c->nobjects; n++) {
        char *type;
        if (object_parse(c->objects[n], &type, &ids[n], errp) < 0) {
            ret = -1;
            break;
        }
        free(type);
        for (int j = 0; j < n; j++) {
            if (!strcmp(ids[j], ids[n])) {
                error_setg(errp, "--object: two objects have the id '%s'", ids[n]);
                ret = -1;
                break;
            }
        }
        if (ret < 0) {
            n++;
            break;
        }
    }
    for (int j = 0; j < n; j++) {
        free(ids[j]);
    }
    free(ids);
    return ret;
}

/* c's objects into this process's registries (the daemon's); one already
 * there, from an earlier graph of the same device, is kept. */
static int objects_register(const UblkDevConfig *c, Error **errp)
{
    for (int n = 0; n < c->nobjects; n++) {
        char *type, *id;
        int r = 0;
        if (object_parse(c->objects[n], &type, &id, errp) < 0) {
            return -1;
        }
        if (!strcmp(type, "secret")) {
#ifdef CONFIG_CRYPTO
            Error *local = NULL;
            size_t len;
            if (!secret_lookup(id, &len, &local)) {
                error_free(local);
                r = secret_object_add(c->objects[n], errp);
            }
#endif
        } else {
#ifdef CONFIG_NBD
            Error *local = NULL;
            if (!nbd_tls_lookup(id, &local)) {
                error_free(local);
                r = nbd_tls_object_add(c->objects[n], errp);
            }
#endif
        }
        free(type);
        free(id);
        if (r < 0) {
            error_prepend(errp, "--object: ");
            return -1;
        }
    }
    return 0;
}

int ublk_dev_config_check(const UblkDevConfig *c, Error **errp)
{
    if (objects_check(c, errp) < 0) {
        return -1;
    }
    if (!c->blockdev && !c->type) {
        error_setg(errp, "missing TYPE (raw, vdi, qcow2, null, ...) or --blockdev");
        return -1;
    }
    if (c->blockdev && (c->type || c->nfiles)) {
        error_setg(errp, "--blockdev replaces TYPE and FILE: give one or the other");
        return -1;
    }
    if (c->type && !strcmp(c->type, "null")) {
        if (c->nfiles) {
            error_setg(errp, "a null device has no file (use --size)");
            return -1;
        }

    } else if (c->type && !c->nfiles) {
        error_setg(errp, "missing FILE for a %s device", c->type);
        return -1;
    }
    if (c->type && strcmp(c->type, "quorum") && c->nfiles > 1) {
        error_setg(errp, "a %s device takes one file, got %d", c->type, c->nfiles);
        return -1;
    }
    if (c->nr_queues < 1 || c->nr_queues > UBLK_MAX_NR_QUEUES) {
        error_setg(errp, "--queues %u is out of range (1..%u)", c->nr_queues, UBLK_MAX_NR_QUEUES);
        return -1;
    }
    if (c->depth < 1 || c->depth > UBLK_MAX_QUEUE_DEPTH) {
        error_setg(errp, "--depth %u is out of range (1..%u)", c->depth, UBLK_MAX_QUEUE_DEPTH);
        return -1;
    }
    if (c->max_io_size < 4096 || c->max_io_size > UBLK_MAX_IO_LIMIT || c->max_io_size % 4096) {
        error_setg(errp, "--max-io-size %u must be a multiple of 4096 between 4k and 32M",
                   c->max_io_size);
        return -1;
    }
    if (c->logical_bs && (!IS_POW2(c->logical_bs) || c->logical_bs < 512 || c->logical_bs > 4096)) {
        error_setg(errp, "--logical-block-size %u must be a power of two from 512 to 4096",
                   c->logical_bs);
        return -1;
    }
    if (c->physical_bs && (!IS_POW2(c->physical_bs) || c->physical_bs < 512 ||
                           c->physical_bs > (1U << 20))) {
        error_setg(errp, "--physical-block-size %u must be a power of two from 512 to 1M",
                   c->physical_bs);
        return -1;
    }
    if (c->physical_bs && c->logical_bs && c->physical_bs < c->logical_bs) {
        error_setg(errp, "--physical-block-size %u is smaller than --logical-block-size %u",
                   c->physical_bs, c->logical_bs);
        return -1;
    }
    if (c->io_opt && (!IS_POW2(c->io_opt) || c->io_opt < 512)) {
        error_setg(errp, "--io-opt %u must be a power of two of at least 512", c->io_opt);
        return -1;
    }
    if (c->discard_granularity && (!IS_POW2(c->discard_granularity) ||
                                   c->discard_granularity < 512)) {
        error_setg(errp, "--discard-granularity %u must be a power of two of at least 512",
                   c->discard_granularity);
        return -1;
    }
    if (c->max_discard % 512 || c->max_discard > ((uint64_t)UINT32_MAX << 9)) {
        error_setg(errp, "--max-discard %llu must be a multiple of 512 up to %llu bytes",
                   (unsigned long long)c->max_discard, (unsigned long long)UINT32_MAX << 9);
        return -1;
    }
    if (c->per_io_threads > UBLK_MAX_PER_IO_THREADS) {
        error_setg(errp, "--per-io-threads %u is out of range (1..%u)", c->per_io_threads,
                   UBLK_MAX_PER_IO_THREADS);
        return -1;
    }
    if (c->per_io_threads > c->nr_queues * c->depth) {
        error_setg(errp, "--per-io-threads %u: more threads than the %u tags of --queues %u "
                   "--depth %u (some would serve nothing)", c->per_io_threads,
                   c->nr_queues * c->depth, c->nr_queues, c->depth);
        return -1;
    }
    if (c->per_io_threads && c->affinity == UBLK_AFFINITY_QUEUE) {
        /* Each thread serves tags of every queue: there is no one queue's
         * CPU set to pin it to. */
        error_setg(errp, "--affinity=queue and --per-io-threads exclude each other: a per-I/O "
                   "thread serves tags of every queue");
        return -1;
    }
    if (c->batch == UBLK_BATCH_ON && c->per_io_threads) {
        /* ADD_DEV drops UBLK_F_PER_IO_DAEMON from a BATCH_IO device. */
        error_setg(errp, "--batch=on and --per-io-threads exclude each other: the kernel does "
                   "not give UBLK_F_PER_IO_DAEMON to a UBLK_F_BATCH_IO device");
        return -1;
    }
    if (c->batch == UBLK_BATCH_ON && c->need_get_data) {
        error_setg(errp, "--batch=on and --need-get-data exclude each other: the kernel drops "
                   "UBLK_F_NEED_GET_DATA from a UBLK_F_BATCH_IO device");
        return -1;
    }
    if (c->user_copy && c->need_get_data) {
        error_setg(errp, "--user-copy and --need-get-data exclude each other");
        return -1;
    }
    if ((c->user_copy || c->need_get_data) &&
        (c->zero_copy == UBLK_ZC_ON || c->zero_copy == UBLK_ZC_REGISTER)) {
        error_setg(errp, "--zero-copy=%s and %s exclude each other: they are other ways of "
                   "moving the data", ublk_zero_copy_name(c->zero_copy),
                   c->user_copy ? "--user-copy" : "--need-get-data");
        return -1;
    }
    return 0;
}

const char *ublk_zero_copy_name(UblkZeroCopy zc)
{
    switch (zc) {
    case UBLK_ZC_AUTO:     return "auto";
    case UBLK_ZC_ON:       return "on";
    case UBLK_ZC_OFF:      return "off";
    case UBLK_ZC_REGISTER: return "register";
    }
    return "?";
}

const char *ublk_batch_name(UblkBatch b)
{
    switch (b) {
    case UBLK_BATCH_OFF:  return "off";
    case UBLK_BATCH_AUTO: return "auto";
    case UBLK_BATCH_ON:   return "on";
    }
    return "?";
}

int ublk_dev_config_batch_flag(const UblkDevConfig *c, uint64_t supported, uint64_t *flag,
                               Error **errp)
{
    *flag = 0;
    if (c->batch == UBLK_BATCH_OFF || c->per_io_threads || c->need_get_data) {
        return 0;     /* parse refused these with on */
    }
    if (!(supported & UBLK_F_BATCH_IO)) {
        if (c->batch == UBLK_BATCH_ON) {
            error_setg(errp, "--batch=on: the kernel's ublk driver lacks UBLK_F_BATCH_IO "
                       "(Linux 7.3+; features 0x%llx); use --batch=off or auto",
                       (unsigned long long)supported);
            return -1;
        }
        return 0;
    }
    *flag = UBLK_F_BATCH_IO;
    return 0;
}

int ublk_dev_config_zero_copy_flags(const UblkDevConfig *c, uint64_t supported,
                                    bool unprivileged, bool graph_needs_bytes, uint64_t *flags,
                                    Error **errp)
{
    bool must = c->zero_copy == UBLK_ZC_ON || c->zero_copy == UBLK_ZC_REGISTER;
    const char *opt = must && c->zero_copy == UBLK_ZC_REGISTER ? "--zero-copy=register"
                                                               : "--zero-copy=on";
    *flags = 0;
    if (c->zero_copy == UBLK_ZC_OFF || c->user_copy || c->need_get_data) {
        return 0;     /* parse refused these with on/register */
    }
    if (unprivileged && !must) {
        /* Every kernel through 7.3 refuses USER_COPY, SUPPORT_ZERO_COPY and
         * AUTO_BUF_REG to unprivileged devices (ADD_DEV: -EINVAL): the
         * server decides what a READ leaves in the kernel's pages, so it
         * must be trusted.  on/register ask anyway, and the refusal is
         * their error (ublk/server.c), should a kernel ever allow it. */
        return 0;
    }
    if (graph_needs_bytes) {
        /* Every request would bounce through the copy path and pay more
         * than the plain copy does. */
        if (must) {
            error_setg(errp, "%s: a driver of this graph must see the data of every request "
                       "(needs_mapped_data), so nothing could pass through without a copy "
                       "(use --zero-copy=off or auto)", opt);
            return -1;
        }
        return 0;
    }
    if (c->zero_copy != UBLK_ZC_REGISTER && (supported & UBLK_F_AUTO_BUF_REG)) {
        /* SUPPORT_ZERO_COPY beside it is the fallback: a request whose
         * pages the kernel could not register (UBLK_IO_F_NEED_REG_BUF) is
         * registered by hand with REGISTER_IO_BUF (ublk/queue.c). */
        *flags = UBLK_F_AUTO_BUF_REG | (supported & UBLK_F_SUPPORT_ZERO_COPY);
        return 0;
    }
    if (supported & UBLK_F_SUPPORT_ZERO_COPY) {
        *flags = UBLK_F_SUPPORT_ZERO_COPY;
        return 0;
    }
    if (must) {
        error_setg(errp, "%s: the kernel's ublk driver lacks zero copy (UBLK_F_SUPPORT_ZERO_COPY "
                   "needs Linux 6.15, UBLK_F_AUTO_BUF_REG 6.16; features 0x%llx); use "
                   "--zero-copy=off or auto, which copies", opt, (unsigned long long)supported);
        return -1;
    }
    return 0;
}

OptDict *ublk_dev_config_to_options(const UblkDevConfig *c, int *flags, Error **errp)
{
    OptDict *d;
    if (c->blockdev) {
        d = !strncmp(c->blockdev, "json:", 5) ? optdict_parse_json(c->blockdev + 5, errp)
                                               : optdict_parse(c->blockdev, NULL, errp);
        if (!d) {
            error_prepend(errp, "--blockdev: ");
            return NULL;
        }
    } else {
        d = optdict_new();
        optdict_set(d, "driver", c->type);
        if (!strcmp(c->type, "null")) {
            /* ublksrv's null target is 250 GiB unless told (-o size= wins too). */
            optdict_set_int(d, "size", c->size ? (int64_t)c->size : 250LL << 30);
        } else if (!strcmp(c->type, "quorum")) {
            char key[64];
            for (int i = 0; i < c->nfiles; i++) {
                snprintf(key, sizeof(key), "children.%d.file.filename", i);
                optdict_set(d, key, c->files[i]);
            }
        } else if (!strcmp(c->type, "file")) {
            optdict_set(d, "filename", c->files[0]);
        } else {
            optdict_set(d, "file.filename", c->files[0]);
        }
    }
    if (c->extra_opts) {
        OptDict *x = optdict_parse(c->extra_opts, NULL, errp);
        if (!x) {
            error_prepend(errp, "--option: ");
            optdict_free(d);
            return NULL;
        }
        optdict_merge(d, x, true);
        optdict_free(x);
    }
    if (objects_register(c, errp) < 0) {
        optdict_free(d);
        return NULL;
    }
    if (c->key_file) {
#ifdef CONFIG_CRYPTO
        /* The passphrase as a secret of this process; the image's
         * encrypt.key-secret names it unless -o named another. */
        size_t len;
        Error *local = NULL;
        if (!secret_lookup(UBLK_KEY_FILE_SECRET, &len, &local)) {
            error_free(local);
            if (secret_add_file(UBLK_KEY_FILE_SECRET, c->key_file, errp) < 0) {
                error_prepend(errp, "--key-file: ");
                optdict_free(d);
                return NULL;
            }
        }
        if (!optdict_has(d, "encrypt.key-secret")) {
            optdict_set(d, "encrypt.key-secret", UBLK_KEY_FILE_SECRET);
        }
#else
        error_setg(errp, "--key-file: encrypted images need CONFIG_CRYPTO");
        optdict_free(d);
        return NULL;
#endif
    }
    /* The driver's own message names the option, not how `add` takes it. */
    if (!c->blockdev && !strcmp(c->type, "quorum") && !optdict_has(d, "vote-threshold")) {
        error_setg(errp, "a quorum device needs -o vote-threshold=K: how many of its %d files "
                   "must agree (1..%d; %d is a majority)", c->nfiles, c->nfiles,
                   c->nfiles / 2 + 1);
        optdict_free(d);
        return NULL;
    }
    /* A device's daemon may be killed and its device recovered under I/O:
     * a qcow2 image then has to hold the metadata of every completed write
     * (drivers/qcow2.c, metadata-write-through), as raw and vdi always do. */
    const char *drv = optdict_get(d, "driver");
    if (drv && !strcmp(drv, "qcow2") && !optdict_has(d, "metadata-write-through")) {
        optdict_set(d, "metadata-write-through", "on");
    }
    if (optdict_has(d, "throttling.group")) {
        /* The group registry lives in one process and every device is its
         * own daemon: a group would silently hold this one device only. */
        error_setg(errp, "throttling.group: every ublkd device is served by its own daemon, so "
                   "a group cannot share limits between devices; give this device its own "
                   "limits (throttling.iops-total=..., throttling.bps-total=..., ...) "
                   "without a group");
        optdict_free(d);
        return NULL;
    }
    int f = 0;
    if (bdrv_parse_cache_mode(c->cache ? c->cache : "none", &f, errp) < 0) {
        error_prepend(errp, "--cache: ");
        optdict_free(d);
        return NULL;
    }
    if (!c->read_only) {
        f |= BDRV_O_RDWR;
    }
    if (!c->discard || !strcmp(c->discard, "unmap")) {
        f |= BDRV_O_UNMAP;
    }
    *flags = f;
    return d;
}

/* The child number of key under P ("<prefix>children.") and what follows
 * it ("" or ".rest"); -1 if key is not a child key. */
static int child_key(const char *key, const char *p, const char **rest)
{
    size_t n = strlen(p);
    if (strncmp(key, p, n) || key[n] < '0' || key[n] > '9') {
        return -1;
    }
    char *end;
    long v = strtol(key + n, &end, 10);
    if ((*end && *end != '.') || v > 1000) {
        return -1;
    }
    *rest = end;
    return (int)v;
}

/* c in its --blockdev form, from d. */
static void config_set_graph(UblkDevConfig *c, OptDict *d)
{
    free(c->blockdev);
    c->blockdev = optdict_to_string(d);
    free(c->type);
    c->type = NULL;
    for (int i = 0; i < c->nfiles; i++) {
        free(c->files[i]);
    }
    free(c->files);
    c->files = NULL;
    c->nfiles = 0;
    free(c->extra_opts);
    c->extra_opts = NULL;
}

int ublk_dev_config_change_child(UblkDevConfig *c, const char *prefix, BdrvChildChange op,
                                 int index, const char *child_options, bool rebuild,
                                 Error **errp)
{
    int flags;
    OptDict *d = ublk_dev_config_to_options(c, &flags, errp);
    if (!d) {
        return -1;
    }
    OptDict *child = NULL;
    if (op != BDRV_CHILD_REMOVE) {
        child = !strncmp(child_options, "json:", 5) ? optdict_parse_json(child_options + 5, errp)
                                                    : optdict_parse(child_options, NULL, errp);
        if (!child) {
            error_prepend(errp, "the new child's options: ");
            optdict_free(d);
            return -1;
        }
    }
    char p[512], key[600];
    snprintf(p, sizeof(p), "%schildren.", prefix);
    OptDict *out = optdict_new();
    for (size_t i = 0; i < optdict_count(d); i++) {
        const char *k = optdict_key_at(d, i), *v = optdict_value_at(d, i), *rest;
        int m = child_key(k, p, &rest);
        if (m < 0) {
            optdict_set(out, k, v);
        } else if (m == index && op != BDRV_CHILD_ADD) {
            continue;                          /* the old child goes */
        } else if (op == BDRV_CHILD_REMOVE && m > index) {
            snprintf(key, sizeof(key), "%s%d%s", p, m - 1, rest);
            optdict_set(out, key, v);
        } else {
            optdict_set(out, k, v);
        }
    }
    for (size_t i = 0; child && i < optdict_count(child); i++) {
        snprintf(key, sizeof(key), "%s%d.%s", p, index, optdict_key_at(child, i));
        optdict_set(out, key, optdict_value_at(child, i));
    }
    if (child && rebuild) {
        snprintf(key, sizeof(key), "%s%d.rebuild", p, index);
        optdict_set(out, key, "on");
    }
    config_set_graph(c, out);
    optdict_free(out);
    optdict_free(child);
    optdict_free(d);
    return 0;
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

void ublk_dev_config_graph_save(const UblkDevConfig *c, UblkGraphSave *g)
{
    g->type = dup_or_null(c->type);
    g->blockdev = dup_or_null(c->blockdev);
    g->extra_opts = dup_or_null(c->extra_opts);
    g->nfiles = c->nfiles;
    g->files = c->nfiles ? calloc((size_t)c->nfiles, sizeof(char *)) : NULL;
    if (c->nfiles && !g->files) {
        abort();
    }
    for (int i = 0; i < c->nfiles; i++) {
        g->files[i] = xstrdup(c->files[i]);
    }
}

void ublk_dev_config_graph_free(UblkGraphSave *g)
{
    free(g->type);
    free(g->blockdev);
    free(g->extra_opts);
    for (int i = 0; i < g->nfiles; i++) {
        free(g->files[i]);
    }
    free(g->files);
    memset(g, 0, sizeof(*g));
}

void ublk_dev_config_graph_restore(UblkDevConfig *c, UblkGraphSave *g)
{
    OptDict *none = optdict_new();
    config_set_graph(c, none);          /* frees c's graph fields */
    optdict_free(none);
    free(c->blockdev);
    c->type = g->type;
    c->blockdev = g->blockdev;
    c->extra_opts = g->extra_opts;
    c->files = g->files;
    c->nfiles = g->nfiles;
    memset(g, 0, sizeof(*g));
}

int ublk_dev_config_clear_rebuild(UblkDevConfig *c, const char *prefix, int index)
{
    char key[600];
    snprintf(key, sizeof(key), "%schildren.%d.rebuild", prefix, index);
    int flags;
    OptDict *d = ublk_dev_config_to_options(c, &flags, NULL);
    if (!d || !optdict_has(d, key)) {
        optdict_free(d);
        return 0;
    }
    optdict_del(d, key);
    config_set_graph(c, d);
    optdict_free(d);
    return 1;
}

uint64_t ublk_dev_config_flags(const UblkDevConfig *c, uint64_t supported, bool unprivileged)
{
    uint64_t f = supported & UBLK_F_CMD_IOCTL_ENCODE;
    if (c->user_copy) {
        f |= UBLK_F_USER_COPY;
    }
    if (c->need_get_data) {
        f |= UBLK_F_NEED_GET_DATA;
    }
    if (c->no_part_scan) {
        f |= UBLK_F_NO_AUTO_PART_SCAN;      /* ublk_dev_config_check_kernel: the kernel has it */
    }
    if (c->per_io_threads) {
        f |= UBLK_F_PER_IO_DAEMON;          /* likewise */
    }
    if (unprivileged) {
        /* The kernel refuses recovery for unprivileged devices. */
        f |= UBLK_F_UNPRIVILEGED_DEV;
    } else {
        switch (c->recovery) {
        case UBLK_RECOVERY_NONE:
            break;
        case UBLK_RECOVERY_FAIL:
            f |= UBLK_F_USER_RECOVERY;
            break;
        case UBLK_RECOVERY_REISSUE:
            f |= UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
            break;
        case UBLK_RECOVERY_FAIL_IO:
            f |= UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO;
            break;
        }
        /* Only the default mode gets here on a kernel that lacks it (an
         * explicit one was refused by ublk_dev_config_check_kernel): the
         * default degrades to what the kernel has. */
        if (!(supported & UBLK_F_USER_RECOVERY_FAIL_IO)) {
            f &= ~UBLK_F_USER_RECOVERY_FAIL_IO;
        }
        if (!(supported & UBLK_F_USER_RECOVERY)) {
            f &= ~(UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE);
        }
        /* QUIESCE_DEV works only on a device added with this flag, and
         * ADD_DEV refuses it without USER_RECOVERY (-EINVAL): `upgrade`
         * needs it, nothing else changes. */
        if ((f & UBLK_F_USER_RECOVERY) && (supported & UBLK_F_QUIESCE)) {
            f |= UBLK_F_QUIESCE;
        }
    }
    return f;
}

static const char *recovery_option(const UblkDevConfig *c)
{
    switch (c->recovery) {
    case UBLK_RECOVERY_FAIL:    return "--recovery=fail";
    case UBLK_RECOVERY_REISSUE: return "--recovery=reissue";
    case UBLK_RECOVERY_FAIL_IO: return "--recovery=fail-io";
    default:                    return "--recovery=none";
    }
}

int ublk_dev_config_check_kernel(const UblkDevConfig *c, uint64_t supported, bool unprivileged,
                                 Error **errp)
{
    if (c->no_part_scan && !(supported & UBLK_F_NO_AUTO_PART_SCAN)) {
        /* Older kernels scan every ublk disk (but unprivileged ones): the
         * partitions would appear, which is what the user asked to avoid. */
        error_setg(errp, "--no-partition-scan: the kernel's ublk driver lacks "
                   "UBLK_F_NO_AUTO_PART_SCAN (Linux 7.x; features 0x%llx)",
                   (unsigned long long)supported);
        return -1;
    }
    if (c->per_io_threads && !(supported & UBLK_F_PER_IO_DAEMON)) {
        /* Without the flag the kernel takes every command of a queue from
         * the one task that fetched its first tag, and fails the others. */
        error_setg(errp, "--per-io-threads: the kernel's ublk driver lacks "
                   "UBLK_F_PER_IO_DAEMON (Linux 6.16+; features 0x%llx)",
                   (unsigned long long)supported);
        return -1;
    }
    /* A mode that silently became another one changes what happens to the
     * device's I/O when the daemon dies (hanging in D state instead of
     * failing): what the user chose must be what the kernel does. */
    if (!c->recovery_given || c->recovery == UBLK_RECOVERY_NONE) {
        return 0;
    }
    if (unprivileged) {
        error_setg(errp, "%s: the kernel does not allow recovery for unprivileged devices "
                   "(use --recovery=none)", recovery_option(c));
        return -1;
    }
    if (!(supported & UBLK_F_USER_RECOVERY)) {
        error_setg(errp, "%s: the kernel's ublk driver lacks UBLK_F_USER_RECOVERY "
                   "(use --recovery=none)", recovery_option(c));
        return -1;
    }
    if (c->recovery == UBLK_RECOVERY_FAIL_IO && !(supported & UBLK_F_USER_RECOVERY_FAIL_IO)) {
        error_setg(errp, "--recovery=fail-io: the kernel's ublk driver lacks "
                   "UBLK_F_USER_RECOVERY_FAIL_IO (I/O would wait for recovery instead of "
                   "failing; use --recovery=fail or reissue for that)");
        return -1;
    }
    return 0;
}

int ublk_dev_config_check_log(const UblkDevConfig *c, Error **errp)
{
    if (!c->log_file) {
        return 0;
    }
    const char *path = c->log_file;
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            error_setg(errp, "--log %s: is a directory", path);
            return -1;
        }
        if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode)) {
            /* A FIFO without a reader would block the daemon's open forever. */
            error_setg(errp, "--log %s: not a regular file or character device", path);
            return -1;
        }
        if (access(path, W_OK) < 0) {
            error_setg_errno(errp, errno, "--log %s: cannot write to it", path);
            return -1;
        }
        return 0;
    }
    if (errno != ENOENT) {
        error_setg_errno(errp, errno, "--log %s", path);
        return -1;
    }
    /* Not there yet: the daemon creates it, so its directory must take it. */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) {
        abort();
    }
    int ret = 0;
    if (stat(dir, &st) < 0) {
        error_setg_errno(errp, errno, "--log %s: directory %s", path, dir);
        ret = -1;
    } else if (!S_ISDIR(st.st_mode)) {
        error_setg(errp, "--log %s: %s is not a directory", path, dir);
        ret = -1;
    } else if (access(dir, W_OK | X_OK) < 0) {
        error_setg_errno(errp, errno, "--log %s: cannot create files in %s", path, dir);
        ret = -1;
    }
    free(dir);
    return ret;
}

/* ---------------- state files ---------------- */

void ublk_dev_state_free(UblkDevState *s)
{
    ublk_dev_config_free(&s->cfg);
    free(s->graph);
    free(s->bdev);
    memset(s, 0, sizeof(*s));
}

const char *ublk_run_dir(void)
{
    static char dir[512];
    const char *env = getenv("UBLKD_RUN_DIR");
    if (env && *env) {
        return env;
    }
    if (geteuid() == 0) {
        return "/run/ublkd";
    }
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (xdg && *xdg) {
        snprintf(dir, sizeof(dir), "%s/ublkd", xdg);
    } else {
        snprintf(dir, sizeof(dir), "/tmp/ublkd-%u", (unsigned)geteuid());
    }
    return dir;
}

int ublk_run_dir_open(bool create, Error **errp)
{
    const char *dir = ublk_run_dir();
    if (create && mkdir(dir, 0700) < 0 && errno != EEXIST) {
        error_setg_errno(errp, errno, "cannot create the run directory %s", dir);
        return -1;
    }
    /* O_NOFOLLOW: a symlink planted at our name must not redirect us. */
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP || e == ENOTDIR) {
            error_setg(errp, "the run directory %s is a symlink or not a directory: "
                       "refusing it (someone else may have made it; remove it)", dir);
        } else {
            error_setg_errno(errp, e, "cannot open the run directory %s", dir);
        }
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "cannot stat the run directory %s", dir);
        close(fd);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        error_setg(errp, "the run directory %s belongs to uid %u, not to you (uid %u): "
                   "refusing it (remove it)", dir, (unsigned)st.st_uid, (unsigned)geteuid());
        close(fd);
        return -1;
    }
    if (st.st_mode & 022) {
        error_setg(errp, "the run directory %s is writable by others (mode %04o): refusing it",
                   dir, (unsigned)(st.st_mode & 07777));
        close(fd);
        return -1;
    }
    /* Ours and nobody else could write in it (an older ublkd made it 0755):
     * close it to readers too, since state files name the images. */
    if ((st.st_mode & 077) && fchmod(fd, 0700) < 0) {
        error_setg_errno(errp, errno, "cannot make the run directory %s private (mode 0700)", dir);
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * Write name in dirfd through a temporary file and rename.  The temporary
 * is made with O_EXCL | O_NOFOLLOW: whatever sits at its name (a stale
 * temporary of a dead process with our pid) is removed, never written
 * through.
 */
static int write_file_atomic(int dirfd, const char *name, const char *text)
{
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s.tmp%d", name, (int)getpid());
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 2; tries++) {
        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 && (errno != EEXIST || unlinkat(dirfd, tmp, 0) < 0)) {
            return -errno;
        }
    }
    if (fd < 0) {
        return -EEXIST;
    }
    size_t len = strlen(text), done = 0;
    int ret = 0;
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            ret = n < 0 ? -errno : -EIO;
            break;
        }
        done += n;
    }
    if (!ret && write(fd, "\n", 1) != 1) {
        ret = -EIO;
    }
    if (close(fd) < 0 && !ret) {
        ret = -errno;
    }
    if (!ret && renameat(dirfd, tmp, dirfd, name) < 0) {
        ret = -errno;
    }
    if (ret) {
        unlinkat(dirfd, tmp, 0);
    }
    return ret;
}

/*
 * The text of name in dirfd, or NULL with errno set.  Only a regular file
 * of our own uid is read: EPERM for another's (it could have been planted;
 * *why says so), ELOOP for a symlink.
 */
static char *read_file(int dirfd, const char *name, const char **why)
{
    *why = NULL;
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP) {
            *why = "is a symlink";
        }
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        st.st_mode = 0;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        *why = !S_ISREG(st.st_mode) ? "is not a regular file" : "belongs to another user";
        close(fd);
        errno = EPERM;
        return NULL;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (n + 1 >= cap) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger) {
                free(buf);   /* realloc keeps the old block on failure */
            }
            buf = bigger;
        }
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
    } else {
        errno = ENOMEM;
    }
    return buf;
}

static void state_name(uint32_t id, const char *suffix, char *buf, size_t len)
{
    snprintf(buf, len, "%u%s", id, suffix);
}

static void state_path(uint32_t id, const char *suffix, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%u%s", ublk_run_dir(), id, suffix);
}

int ublk_state_write(const UblkDevState *s, Error **errp)
{
    char *json = ublk_dev_state_to_json(s);
    if (!json) {
        error_setg(errp, "cannot write device state: built without JSON support");
        return -1;
    }
    int dirfd = ublk_run_dir_open(true, errp);
    if (dirfd < 0) {
        free(json);
        return -1;
    }
    char name[64], path[600];
    state_name(s->dev_id, ".json", name, sizeof(name));
    int ret = write_file_atomic(dirfd, name, json);
    close(dirfd);
    free(json);
    if (ret < 0) {
        state_path(s->dev_id, ".json", path, sizeof(path));
        error_setg_errno(errp, -ret, "cannot write %s", path);
        return -1;
    }
    return 0;
}

int ublk_state_read(uint32_t dev_id, UblkDevState *s, Error **errp)
{
    char name[64], path[600];
    state_name(dev_id, ".json", name, sizeof(name));
    state_path(dev_id, ".json", path, sizeof(path));
    memset(s, 0, sizeof(*s));
    Error *local = NULL;
    int dirfd = ublk_run_dir_open(false, &local);
    if (dirfd < 0) {
        if (error_get_errno(local) == ENOENT) {
            error_free(local);
            error_setg_errno(errp, ENOENT, "no state for device %u (%s)", dev_id, path);
            return -1;
        }
        error_propagate(errp, local);
        return -2;
    }
    const char *why;
    char *text = read_file(dirfd, name, &why);
    close(dirfd);
    if (!text) {
        if (why) {
            error_setg(errp, "%s %s: ignored", path, why);
            return -2;
        }
        error_setg_errno(errp, errno, "no state for device %u (%s)", dev_id, path);
        return -1;
    }
    int ret = ublk_dev_state_from_json(text, s, errp);
    free(text);
    if (ret == 0 && s->dev_id != dev_id) {
        error_setg(errp, "it is the state of device %u", s->dev_id);
        ublk_dev_state_free(s);
        ret = -1;
    }
    if (ret < 0) {
        error_prepend(errp, "%s: ignored: ", path);
        return -2;
    }
    return 0;
}

uint64_t ublk_proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (pid <= 0 || fd < 0) {
        if (fd >= 0) {
            close(fd);
        }
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = 0;
    /* comm (field 2) may hold spaces and parentheses: count from the last ')'. */
    char *p = strrchr(buf, ')');
    for (int field = 2; p && field < 22; field++) {
        p = strchr(p + 1, ' ');
    }
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

void ublk_state_remove(uint32_t dev_id)
{
    int dirfd = ublk_run_dir_open(false, NULL);
    if (dirfd < 0) {
        return;
    }
    char name[64];
    state_name(dev_id, ".json", name, sizeof(name));
    unlinkat(dirfd, name, 0);
    state_name(dev_id, ".stats.json", name, sizeof(name));
    unlinkat(dirfd, name, 0);
    /* A daemon removes its own socket; one killed with -9 leaves it. */
    ublk_ctl_socket_name(dev_id, name, sizeof(name));
    unlinkat(dirfd, name, 0);
    close(dirfd);
}

static const char *const op_names[BLK_OP__MAX] = {
    "read", "write", "flush", "discard", "write_zeroes",
};

#ifdef CONFIG_JSON
static void add_str(json_object *o, const char *k, const char *v)
{
    if (v) {
        json_object_object_add(o, k, json_object_new_string(v));
    }
}

static void add_int(json_object *o, const char *k, int64_t v)
{
    json_object_object_add(o, k, json_object_new_int64(v));
}

static void add_bool(json_object *o, const char *k, bool v)
{
    json_object_object_add(o, k, json_object_new_boolean(v));
}

static const char *const recovery_names[] = { "none", "fail", "reissue", "fail-io" };
static const char *const affinity_names[] = { "none", "queue" };
static const char *const zero_copy_names[] = { "auto", "on", "off", "register" };
static const char *const batch_names[] = { "off", "auto", "on" };

char *ublk_dev_state_to_json(const UblkDevState *s)
{
    const UblkDevConfig *c = &s->cfg;
    json_object *o = json_object_new_object();
    char flags[512];
    add_int(o, "id", s->dev_id);
    add_int(o, "pid", s->pid);
    add_int(o, "start_time", (int64_t)s->start_time);
    add_str(o, "bdev", s->bdev);
    add_int(o, "flags", (int64_t)s->flags);
    ublk_flags_to_string(s->flags, flags, sizeof(flags));
    add_str(o, "flags_names", flags);
    add_int(o, "queues", s->nr_queues);
    add_int(o, "depth", s->depth);
    if (s->size) {
        add_int(o, "size", s->size);
    }
    add_str(o, "graph", s->graph);

    json_object *co = json_object_new_object();
    add_int(co, "dev_id", c->dev_id);
    add_str(co, "type", c->type);
    if (c->nfiles) {
        json_object *fa = json_object_new_array();
        for (int i = 0; i < c->nfiles; i++) {
            json_object_array_add(fa, json_object_new_string(c->files[i]));
        }
        json_object_object_add(co, "files", fa);
    }
    add_str(co, "blockdev", c->blockdev);
    add_str(co, "options", c->extra_opts);
    add_int(co, "size", (int64_t)c->size);
    add_str(co, "cache", c->cache);
    add_str(co, "discard", c->discard);
    add_int(co, "queues", c->nr_queues);
    add_int(co, "depth", c->depth);
    add_int(co, "max_io_size", c->max_io_size);
    add_int(co, "logical_block_size", c->logical_bs);
    add_int(co, "physical_block_size", c->physical_bs);
    add_int(co, "io_opt", c->io_opt);
    add_int(co, "discard_granularity", c->discard_granularity);
    add_int(co, "max_discard", (int64_t)c->max_discard);
    add_bool(co, "read_only", c->read_only);
    add_bool(co, "rotational", c->rotational);
    add_bool(co, "no_discard", c->no_discard);
    add_bool(co, "user_copy", c->user_copy);
    add_bool(co, "need_get_data", c->need_get_data);
    add_bool(co, "no_partition_scan", c->no_part_scan);
    add_str(co, "recovery", recovery_names[c->recovery]);
    add_str(co, "affinity", affinity_names[c->affinity]);
    add_str(co, "zero_copy", ublk_zero_copy_name(c->zero_copy));
    add_int(co, "per_io_threads", c->per_io_threads);
    add_str(co, "batch", ublk_batch_name(c->batch));
    add_str(co, "io_scheduler", c->io_scheduler);
    add_str(co, "log", c->log_file);
    add_str(co, "key_file", c->key_file);
    if (c->nobjects) {
        json_object *oa = json_object_new_array();
        for (int i = 0; i < c->nobjects; i++) {
            json_object_array_add(oa, json_object_new_string(c->objects[i]));
        }
        json_object_object_add(co, "objects", oa);
    }
    json_object_object_add(o, "config", co);

    char *out = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    return out;
}

/*
 * Reading a state file: a field that is there must have the type and range
 * its writer gives it.  Anything else (a hand edit, a truncated or foreign
 * file) is refused naming the field, never reinterpreted: "queues": 2^32 + 1
 * must not become 1, "read_only": "false" must not become true.
 */
static bool bad_field(const char *k, json_object *v, const char *want, Error **errp)
{
    error_setg(errp, "\"%s\": %.64s is not %s", k, json_object_to_json_string(v), want);
    return false;
}

static bool get_int(json_object *o, const char *k, int64_t min, int64_t max, int64_t def,
                    int64_t *out, Error **errp)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v)) {
        *out = def;
        return true;
    }
    int64_t n = json_object_get_int64(v);
    /* json-c clamps an integer above INT64_MAX to INT64_MAX. */
    bool clamped = n == INT64_MAX && json_object_get_uint64(v) != (uint64_t)INT64_MAX;
    if (!json_object_is_type(v, json_type_int) || clamped || n < min || n > max) {
        char want[96];
        snprintf(want, sizeof(want), "an integer from %lld to %lld", (long long)min,
                 (long long)max);
        return bad_field(k, v, want, errp);
    }
    *out = n;
    return true;
}

static bool get_u32(json_object *o, const char *k, uint32_t def, uint32_t *out, Error **errp)
{
    int64_t n;
    if (!get_int(o, k, 0, UINT32_MAX, def, &n, errp)) {
        return false;
    }
    *out = (uint32_t)n;
    return true;
}

/* Absent (or null): *out = NULL.  The string is copied. */
static bool get_str(json_object *o, const char *k, char **out, Error **errp)
{
    json_object *v;
    *out = NULL;
    if (!json_object_object_get_ex(o, k, &v) || !v) {
        return true;
    }
    if (!json_object_is_type(v, json_type_string)) {
        return bad_field(k, v, "a string", errp);
    }
    *out = xstrdup(json_object_get_string(v));
    return true;
}

static bool get_bool(json_object *o, const char *k, bool *out, Error **errp)
{
    json_object *v;
    *out = false;
    if (!json_object_object_get_ex(o, k, &v)) {
        return true;
    }
    if (!json_object_is_type(v, json_type_boolean)) {
        return bad_field(k, v, "true or false", errp);
    }
    *out = json_object_get_boolean(v);
    return true;
}

/* An array of strings at k (what = what they are, for the message). */
static bool get_strings(json_object *co, const char *k, const char *what, char ***out,
                        int *count, Error **errp)
{
    json_object *fa;
    if (!json_object_object_get_ex(co, k, &fa)) {
        return true;
    }
    if (!json_object_is_type(fa, json_type_array)) {
        return bad_field(k, fa, what, errp);
    }
    size_t n = json_object_array_length(fa);
    for (size_t i = 0; i < n; i++) {
        if (!json_object_is_type(json_object_array_get_idx(fa, i), json_type_string)) {
            return bad_field(k, fa, what, errp);
        }
    }
    *out = calloc(n ? n : 1, sizeof(char *));
    if (!*out) {
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        (*out)[(*count)++] = xstrdup(json_object_get_string(json_object_array_get_idx(fa, i)));
    }
    return true;
}

/* One of names (count of them) into *out; absent: *out untouched. */
static bool get_choice(json_object *o, const char *k, const char *const *names, unsigned count,
                       unsigned *out, Error **errp)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v)) {
        return true;
    }
    const char *str = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    for (unsigned i = 0; str && i < count; i++) {
        if (!strcmp(str, names[i])) {
            *out = i;
            return true;
        }
    }
    char want[96] = "one of";
    for (unsigned i = 0; i < count; i++) {
        snprintf(want + strlen(want), sizeof(want) - strlen(want), " %s", names[i]);
    }
    return bad_field(k, v, want, errp);
}

static bool state_fields_from_json(json_object *o, json_object *co, UblkDevState *s,
                                   Error **errp)
{
    UblkDevConfig *c = &s->cfg;
    int64_t n;
    unsigned choice;
    bool ok = get_int(o, "id", 0, UINT32_MAX, 0, &n, errp) && ((s->dev_id = n), true) &&
              get_int(o, "pid", 0, INT32_MAX, 0, &n, errp) && ((s->pid = n), true) &&
              get_int(o, "start_time", 0, INT64_MAX, 0, &n, errp) &&
              ((s->start_time = n), true) &&
              get_str(o, "bdev", &s->bdev, errp) &&
              /* written as the int64 of the u64 */
              get_int(o, "flags", INT64_MIN, INT64_MAX, 0, &n, errp) &&
              ((s->flags = (uint64_t)n), true) &&
              get_u32(o, "queues", 0, &s->nr_queues, errp) &&
              get_u32(o, "depth", 0, &s->depth, errp) &&
              get_int(o, "size", 0, BDRV_MAX_LENGTH, 0, &n, errp) && ((s->size = n), true) &&
              get_str(o, "graph", &s->graph, errp);
    if (!ok) {
        return false;
    }
    choice = c->recovery;
    ok = get_int(co, "dev_id", -1, INT32_MAX, -1, &n, errp) && ((c->dev_id = n), true) &&
         get_str(co, "type", &c->type, errp) &&
         get_strings(co, "files", "an array of file names", &c->files, &c->nfiles, errp) &&
         get_str(co, "blockdev", &c->blockdev, errp) &&
         get_str(co, "options", &c->extra_opts, errp) &&
         get_int(co, "size", 0, BDRV_MAX_LENGTH, 0, &n, errp) && ((c->size = n), true) &&
         get_str(co, "cache", &c->cache, errp) &&
         get_str(co, "discard", &c->discard, errp) &&
         get_u32(co, "queues", UBLK_DEFAULT_QUEUES, &c->nr_queues, errp) &&
         get_u32(co, "depth", UBLK_DEFAULT_DEPTH, &c->depth, errp) &&
         get_u32(co, "max_io_size", UBLK_DEFAULT_MAX_IO, &c->max_io_size, errp) &&
         get_u32(co, "logical_block_size", 0, &c->logical_bs, errp) &&
         get_u32(co, "physical_block_size", 0, &c->physical_bs, errp) &&
         get_u32(co, "io_opt", 0, &c->io_opt, errp) &&
         get_u32(co, "discard_granularity", 0, &c->discard_granularity, errp) &&
         get_int(co, "max_discard", 0, INT64_MAX, 0, &n, errp) && ((c->max_discard = n), true) &&
         get_bool(co, "read_only", &c->read_only, errp) &&
         get_bool(co, "rotational", &c->rotational, errp) &&
         get_bool(co, "no_discard", &c->no_discard, errp) &&
         get_bool(co, "user_copy", &c->user_copy, errp) &&
         get_bool(co, "need_get_data", &c->need_get_data, errp) &&
         get_bool(co, "no_partition_scan", &c->no_part_scan, errp) &&
         get_choice(co, "recovery", recovery_names, ARRAY_SIZE(recovery_names), &choice, errp) &&
         ((c->recovery = choice), true) &&
         ((choice = c->affinity), true) &&
         get_choice(co, "affinity", affinity_names, ARRAY_SIZE(affinity_names), &choice, errp) &&
         ((c->affinity = choice), true) &&
         ((choice = c->zero_copy), true) &&
         get_choice(co, "zero_copy", zero_copy_names, ARRAY_SIZE(zero_copy_names), &choice,
                    errp) &&
         ((c->zero_copy = choice), true) &&
         get_u32(co, "per_io_threads", 0, &c->per_io_threads, errp) &&
         ((choice = c->batch), true) &&
         get_choice(co, "batch", batch_names, ARRAY_SIZE(batch_names), &choice, errp) &&
         ((c->batch = choice), true) &&
         get_str(co, "io_scheduler", &c->io_scheduler, errp) &&
         get_str(co, "log", &c->log_file, errp) &&
         get_str(co, "key_file", &c->key_file, errp) &&
         get_strings(co, "objects", "an array of --object definitions", &c->objects,
                     &c->nobjects, errp);
    return ok;
}

int ublk_dev_state_from_json(const char *json, UblkDevState *s, Error **errp)
{
    memset(s, 0, sizeof(*s));
    ublk_dev_config_init(&s->cfg);
    json_object *o = json_tokener_parse(json);
    json_object *co;
    if (!o || !json_object_is_type(o, json_type_object) ||
        !json_object_object_get_ex(o, "config", &co) ||
        !json_object_is_type(co, json_type_object)) {
        error_setg(errp, "not a ublkd state file (bad JSON or no \"config\")");
        json_object_put(o);
        return -1;
    }
    bool ok = state_fields_from_json(o, co, s, errp);
    json_object_put(o);
    if (!ok) {
        ublk_dev_state_free(s);
        return -1;
    }
    if (ublk_dev_config_check(&s->cfg, errp) < 0) {
        error_prepend(errp, "stored configuration: ");
        ublk_dev_state_free(s);
        return -1;
    }
    return 0;
}

int ublk_stats_write(uint32_t dev_id, const BlockAcctStats *st)
{
    json_object *o = json_object_new_object();
    for (int i = 0; i < BLK_OP__MAX; i++) {
        json_object *op = json_object_new_object();
        add_int(op, "ops", st->ops[i]);
        add_int(op, "bytes", st->bytes[i]);
        add_int(op, "errors", st->errors[i]);
        add_int(op, "total_ns", st->total_ns[i]);
        json_object_object_add(o, op_names[i], op);
    }
    add_int(o, "fua_writes", st->fua_writes);
    add_int(o, "zc_bounced", st->zc_bounced);
    add_int(o, "zc_ring_copies", st->zc_ring_copies);
    add_int(o, "zc_reg_fallbacks", st->zc_reg_fallbacks);
    add_int(o, "events", st->events);
    add_int(o, "events_suppressed", st->events_suppressed);
    if (st->n_node_counters) {
        json_object *nc = json_object_new_object();
        for (int i = 0; i < st->n_node_counters && i < BLK_NODE_COUNTERS_MAX; i++) {
            add_int(nc, st->node_counters[i].key, st->node_counters[i].value);
        }
        json_object_object_add(o, "node_counters", nc);
    }
    char name[64];
    state_name(dev_id, ".stats.json", name, sizeof(name));
    int dirfd = ublk_run_dir_open(false, NULL);
    int ret = dirfd < 0 ? -EACCES
              : write_file_atomic(dirfd, name, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    if (dirfd >= 0) {
        close(dirfd);
    }
    json_object_put(o);
    return ret;
}

/* Counters are only shown: a bad one reads as 0. */
static uint64_t stat_int(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

int ublk_stats_read(uint32_t dev_id, BlockAcctStats *st)
{
    char name[64];
    state_name(dev_id, ".stats.json", name, sizeof(name));
    memset(st, 0, sizeof(*st));
    int dirfd = ublk_run_dir_open(false, NULL);
    if (dirfd < 0) {
        return -EACCES;
    }
    const char *why;
    char *text = read_file(dirfd, name, &why);
    int e = errno;
    close(dirfd);
    if (!text) {
        return -e;
    }
    json_object *o = json_tokener_parse(text);
    free(text);
    if (!o) {
        return -EINVAL;
    }
    for (int i = 0; i < BLK_OP__MAX; i++) {
        json_object *op;
        if (json_object_object_get_ex(o, op_names[i], &op)) {
            st->ops[i] = stat_int(op, "ops");
            st->bytes[i] = stat_int(op, "bytes");
            st->errors[i] = stat_int(op, "errors");
            st->total_ns[i] = stat_int(op, "total_ns");
        }
    }
    st->fua_writes = stat_int(o, "fua_writes");
    st->zc_bounced = stat_int(o, "zc_bounced");
    st->zc_ring_copies = stat_int(o, "zc_ring_copies");
    st->zc_reg_fallbacks = stat_int(o, "zc_reg_fallbacks");
    st->events = stat_int(o, "events");
    st->events_suppressed = stat_int(o, "events_suppressed");
    json_object *nc;
    if (json_object_object_get_ex(o, "node_counters", &nc) &&
        json_object_is_type(nc, json_type_object)) {
        json_object_object_foreach(nc, k, v) {
            if (st->n_node_counters == BLK_NODE_COUNTERS_MAX) {
                break;
            }
            snprintf(st->node_counters[st->n_node_counters].key,
                     sizeof(st->node_counters[0].key), "%s", k);
            st->node_counters[st->n_node_counters++].value = (uint64_t)json_object_get_int64(v);
        }
    }
    json_object_put(o);
    return 0;
}
#else
char *ublk_dev_state_to_json(const UblkDevState *s)
{
    (void)s;
    return NULL;
}

int ublk_dev_state_from_json(const char *json, UblkDevState *s, Error **errp)
{
    (void)json;
    memset(s, 0, sizeof(*s));
    error_setg(errp, "built without JSON support (CONFIG_JSON=n)");
    return -1;
}

int ublk_stats_write(uint32_t dev_id, const BlockAcctStats *st)
{
    (void)dev_id; (void)st; (void)op_names;
    return -ENOTSUP;
}

int ublk_stats_read(uint32_t dev_id, BlockAcctStats *st)
{
    (void)dev_id;
    memset(st, 0, sizeof(*st));
    return -ENOTSUP;
}
#endif

int ublk_exec_check(int fd, const char *name, uid_t uid, Error **errp)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "%s", name);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "%s is not a regular file", name);
        return -1;
    }
    if (!(st.st_mode & S_IXUSR)) {
        error_setg(errp, "%s is not executable", name);
        return -1;
    }
    /* The daemon of root's device runs as root: a binary someone else
     * could have written would run their code as root. */
    if (st.st_uid != 0 && st.st_uid != uid) {
        error_setg(errp, "%s is owned by uid %u, neither root nor uid %u", name,
                   (unsigned)st.st_uid, (unsigned)uid);
        return -1;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        error_setg(errp, "%s is writable by %s (mode %04o)", name,
                   (st.st_mode & S_IWOTH) ? "others" : "its group",
                   (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}
