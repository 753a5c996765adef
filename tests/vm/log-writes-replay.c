/*
 * log-writes-replay - read the log a dm-log-writes target recorded and
 * rebuild the data device as it stood after any entry of it.
 *
 * Power-loss tests (tests/vm/test_powerloss.sh) put a file system on a
 * log-writes device, run a workload, then rebuild the device at flush marks
 * and at points between them: each is a state a power cut could have left.
 * Debian ships no replay tool, so this is the project's own, written from the
 * format in the kernel's Documentation/admin-guide/device-mapper/
 * log-writes.rst and drivers/md/dm-log-writes.c:
 *
 *   sector 0 of the log:  struct log_write_super (magic, version, entry
 *                         count, the data device's logical sector size)
 *   then, from byte offset `sectorsize`, one entry after another:
 *     one sector:         struct log_write_entry (+ the mark's name for MARK)
 *     nr_sectors sectors: the data written (none for DISCARD, MARK, a FLUSH
 *                         without data)
 *   entry.sector and entry.nr_sectors count the data device's sectors.
 *
 *   log-writes-replay LOG list
 *       one line per entry: INDEX FLAGS SECTOR NR_SECTORS [MARK]
 *       (FLAGS is a string of F=flush, U=fua, D=discard, M=mark, m=metadata
 *       or '-').
 *   log-writes-replay LOG replay TARGET FROM TO
 *       apply entries FROM..TO-1 to TARGET (a file or a block device that
 *       already holds the state after entry FROM-1; start from zeros for 0).
 *
 * Exit 0 on success, 1 with a message on stderr naming the log, entry and
 * field for a malformed log or a failed write, 2 for bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOG_FLUSH_FLAG    (1u << 0)
#define LOG_FUA_FLAG      (1u << 1)
#define LOG_DISCARD_FLAG  (1u << 2)
#define LOG_MARK_FLAG     (1u << 3)
#define LOG_METADATA_FLAG (1u << 4)
#define LOG_KNOWN_FLAGS   0x1fu

#define WRITE_LOG_VERSION 1
#define WRITE_LOG_MAGIC   0x6a736677736872ULL

struct log_write_super {
    uint64_t magic;
    uint64_t version;
    uint64_t nr_entries;
    uint32_t sectorsize;
} __attribute__((packed));

struct log_write_entry {
    uint64_t sector;
    uint64_t nr_sectors;
    uint64_t flags;
    uint64_t data_len;
} __attribute__((packed));

struct log {
    const char *path;
    int fd;
    uint64_t size;          /* bytes */
    uint32_t sectorsize;
    uint64_t nr_entries;
    uint64_t pos;           /* byte offset of the next entry header */
    uint64_t index;         /* index of the next entry */
    unsigned char *sect;    /* one sector: the current header */
};

/* The entry just read, in host order. */
struct entry {
    uint64_t sector, nr_sectors, flags, data_len;
    uint64_t data_pos;      /* byte offset of its data in the log */
    char mark[65536];       /* the name of a MARK: less than one sector */
};

static int die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int die(const char *fmt, ...)
{
    va_list ap;
    fputs("log-writes-replay: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void pread_full(int fd, void *buf, size_t len, uint64_t off, const char *what)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("%s: read of %zu bytes at %" PRIu64 ": %s", what, len, off, strerror(errno));
        if (n == 0)
            die("%s: ends at %" PRIu64 ", %zu bytes short", what, off + done, len - done);
        done += (size_t)n;
    }
}

static void pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *what)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("%s: write of %zu bytes at %" PRIu64 ": %s", what, len, off,
                n < 0 ? strerror(errno) : "wrote nothing");
        done += (size_t)n;
    }
}

static uint64_t fd_size(int fd, const char *path)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("%s: %s", path, strerror(errno));
    if (S_ISBLK(st.st_mode)) {
        uint64_t sz;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
            die("%s: BLKGETSIZE64: %s", path, strerror(errno));
        return sz;
    }
    if (!S_ISREG(st.st_mode))
        die("%s: neither a regular file nor a block device", path);
    return (uint64_t)st.st_size;
}

static void log_open(struct log *l, const char *path)
{
    struct log_write_super s;
    unsigned char buf[sizeof(s)];

    l->path = path;
    l->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (l->fd < 0)
        die("%s: %s", path, strerror(errno));
    l->size = fd_size(l->fd, path);
    pread_full(l->fd, buf, sizeof(buf), 0, path);
    memcpy(&s, buf, sizeof(s));
    if (le64toh(s.magic) != WRITE_LOG_MAGIC)
        die("%s: super: magic %#" PRIx64 ", want %#llx (not a dm-log-writes log)",
            path, le64toh(s.magic), WRITE_LOG_MAGIC);
    if (le64toh(s.version) != WRITE_LOG_VERSION)
        die("%s: super: version %" PRIu64 ", only %d is known", path, le64toh(s.version),
            WRITE_LOG_VERSION);
    l->sectorsize = le32toh(s.sectorsize);
    if (l->sectorsize < 512 || l->sectorsize > 65536 || (l->sectorsize & (l->sectorsize - 1)))
        die("%s: super: sectorsize %" PRIu32 " is not a power of two in 512..65536", path,
            l->sectorsize);
    l->nr_entries = le64toh(s.nr_entries);
    l->pos = l->sectorsize;
    l->index = 0;
    l->sect = malloc(l->sectorsize);
    if (!l->sect)
        die("out of memory");
}

/* Read the header of entry l->index and step past it and its data.
 * Returns 0 at the end of the log (nr_entries from the super). */
static int log_next(struct log *l, struct entry *e)
{
    struct log_write_entry raw;
    char what[600];

    if (l->index >= l->nr_entries)
        return 0;
    snprintf(what, sizeof(what), "%s: entry %" PRIu64 " (log offset %" PRIu64 ")", l->path,
             l->index, l->pos);
    if (l->pos > l->size || l->size - l->pos < l->sectorsize)
        die("%s: header lies past the end of the log (%" PRIu64 " bytes; super says %" PRIu64
            " entries)", what, l->size, l->nr_entries);
    pread_full(l->fd, l->sect, l->sectorsize, l->pos, what);
    memcpy(&raw, l->sect, sizeof(raw));
    e->sector = le64toh(raw.sector);
    e->nr_sectors = le64toh(raw.nr_sectors);
    e->flags = le64toh(raw.flags);
    e->data_len = le64toh(raw.data_len);
    e->mark[0] = 0;
    if (e->flags & ~(uint64_t)LOG_KNOWN_FLAGS)
        die("%s: flags %#" PRIx64 " has unknown bits", what, e->flags);
    if (e->flags & LOG_MARK_FLAG) {
        if (e->data_len > l->sectorsize - sizeof(raw) || e->data_len >= sizeof(e->mark))
            die("%s: mark name of %" PRIu64 " bytes does not fit its sector", what, e->data_len);
        memcpy(e->mark, l->sect + sizeof(raw), e->data_len);
        e->mark[e->data_len] = 0;
    } else if (e->data_len)
        die("%s: data_len %" PRIu64 " on an entry that is no mark (inline data is not"
            " produced by the kernel)", what, e->data_len);
    l->pos += l->sectorsize;
    e->data_pos = l->pos;
    if (!(e->flags & LOG_DISCARD_FLAG)) {
        if (e->nr_sectors > (l->size - l->pos) / l->sectorsize)
            die("%s: nr_sectors %" PRIu64 " runs past the end of the log", what, e->nr_sectors);
        l->pos += e->nr_sectors * l->sectorsize;
    }
    l->index++;
    return 1;
}

static void flags_str(uint64_t f, char *s)
{
    const char *names = "FUDMm";
    int n = 0;
    for (int i = 0; i < 5; i++)
        if (f & (1u << i))
            s[n++] = names[i];
    if (!n)
        s[n++] = '-';
    s[n] = 0;
}

static int cmd_list(struct log *l)
{
    struct entry e;
    char fl[8];
    printf("# %s: %" PRIu64 " entries, sectorsize %" PRIu32 "\n", l->path, l->nr_entries,
           l->sectorsize);
    while (log_next(l, &e)) {
        flags_str(e.flags, fl);
        printf("%" PRIu64 " %s %" PRIu64 " %" PRIu64 "%s%s\n", l->index - 1, fl, e.sector,
               e.nr_sectors, e.mark[0] ? " " : "", e.mark);
    }
    return 0;
}

/* Zero [off, off+len) of the target: a discard leaves zeros on the loop
 * devices the tests log (their backing files get holes punched). */
static void zero_range(int fd, int is_blk, uint64_t off, uint64_t len, const char *what)
{
    if (is_blk) {
        uint64_t range[2] = { off, len };
        if (ioctl(fd, BLKZEROOUT, range) < 0)
            die("%s: BLKZEROOUT %" PRIu64 "+%" PRIu64 ": %s", what, off, len, strerror(errno));
    } else if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                         (off_t)len) < 0)
        die("%s: punching %" PRIu64 "+%" PRIu64 ": %s", what, off, len, strerror(errno));
}

static int cmd_replay(struct log *l, const char *target, uint64_t from, uint64_t to)
{
    struct entry e;
    struct stat st;
    char what[700];
    size_t bufsz = 1 << 20;
    unsigned char *buf = malloc(bufsz);
    int fd = open(target, O_WRONLY | O_CLOEXEC);

    if (!buf)
        die("out of memory");
    if (fd < 0)
        die("%s: %s", target, strerror(errno));
    if (fstat(fd, &st) < 0)
        die("%s: %s", target, strerror(errno));
    uint64_t tsize = fd_size(fd, target);
    if (to > l->nr_entries)
        die("%s: entry %" PRIu64 " asked for, the log has %" PRIu64, l->path, to, l->nr_entries);
    if (from > to)
        die("FROM %" PRIu64 " is after TO %" PRIu64, from, to);
    while (l->index < to && log_next(l, &e)) {
        if (l->index - 1 < from || !e.nr_sectors)
            continue;
        snprintf(what, sizeof(what), "%s: entry %" PRIu64 " sector %" PRIu64 "+%" PRIu64,
                 target, l->index - 1, e.sector, e.nr_sectors);
        if (e.sector > tsize / l->sectorsize || e.nr_sectors > tsize / l->sectorsize - e.sector)
            die("%s: past the end of the target (%" PRIu64 " bytes)", what, tsize);
        uint64_t off = e.sector * l->sectorsize, len = e.nr_sectors * l->sectorsize;
        if (e.flags & LOG_DISCARD_FLAG) {
            zero_range(fd, S_ISBLK(st.st_mode), off, len, what);
            continue;
        }
        for (uint64_t done = 0; done < len;) {
            size_t n = len - done < bufsz ? (size_t)(len - done) : bufsz;
            pread_full(l->fd, buf, n, e.data_pos + done, l->path);
            pwrite_full(fd, buf, n, off + done, what);
            done += n;
        }
    }
    if (fsync(fd) < 0)
        die("%s: fsync: %s", target, strerror(errno));
    close(fd);
    free(buf);
    return 0;
}

static uint64_t parse_u64(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-') {
        fprintf(stderr, "log-writes-replay: %s '%s' is not a number\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    struct log l;

    if (argc == 3 && !strcmp(argv[2], "list")) {
        log_open(&l, argv[1]);
        return cmd_list(&l);
    }
    if (argc == 6 && !strcmp(argv[2], "replay")) {
        uint64_t from = parse_u64(argv[4], "FROM"), to = parse_u64(argv[5], "TO");
        log_open(&l, argv[1]);
        return cmd_replay(&l, argv[3], from, to);
    }
    fprintf(stderr, "usage: log-writes-replay LOG list\n"
                    "       log-writes-replay LOG replay TARGET FROM TO\n");
    return 2;
}
