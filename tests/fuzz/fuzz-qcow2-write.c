/*
 * fuzz-qcow2-write.c - libFuzzer harness for qcow2 guest writes.  The input
 * is a geometry header and an op script, not an image: the driver's own
 * create makes a fresh image in the in-memory file (fuzz-memfile.h, the
 * "fuzzfile:" protocol), the harness opens it read-write and runs the ops
 * through the block layer while it keeps a byte model of the disk.
 *
 * Header (8 bytes):
 *   0  cluster_bits 9 + b % 8
 *   1  bit 0 extended_l2 (dropped below 16 KiB clusters), 1 lazy_refcounts,
 *      2 zstd, 3 compat=0.10 (drops 0-2 and other refcount widths), 4 a raw
 *      backing node with pattern data, 5 preallocation=metadata, 6 smallest
 *      caches, 7 metadata-write-through
 *   2  refcount_bits 1 << (b % 7); bits 3-4 how often an I/O of the file
 *      yields first (never, 1/4, 1/2, 3/4); bit 5 overlap-check=all; bit 6
 *      the file zeroes natively (NO_FALLBACK: qcow2's zero copy-on-write)
 *      (the file's discards always leave garbage: nothing may rely on them)
 *   3-4 virtual size in sectors: 1 + (b3b4 % 8192)
 *   5  the file's space: < 128 64 MiB; 128-191 64 MiB, but a write that
 *      grows the file fails -ENOSPC with a chance of (b - 127) / 128 (a file
 *      system that is full for now); >= 192 the created file's size plus
 *      (b - 192) clusters, writes past that fail -ENOSPC
 *   6  backing length, a fraction of the virtual size plus an odd tail
 *   7  seed of the yield and growth choices
 * Ops (5 bytes each, at most MAX_OPS): kind byte, 16-bit offset (a
 * fraction of the size), 16-bit length (a fraction of the longest).
 * Kind % 8: 0 write, 1 read, 2 write zeroes (bit 5: MAY_UNMAP), 3 discard,
 * 4 compressed write (whole clusters; bit 5: incompressible data), 5 flush,
 * 6 the next 2-4 ops run at once from coroutines, 7 flush, close and
 * reopen read-write.  Bit 3 aligns the offset down to a cluster, bit 4 the
 * length up, bit 6 allows lengths up to 16 clusters or 256 KiB, whichever
 * is more, at most 1 MiB (else 2 clusters).
 *
 * Concurrency.  The ops of a batch start one after the other from
 * coroutines and may overlap.  The block layer keeps a serialising request
 * (write zeroes, discard and compressed writes are, at cluster granularity:
 * serialise_unmap, io/block-io.c) from running beside an overlapping one,
 * but does not keep the order they were issued in (a request waiting for
 * unlisted ones can be overtaken by a later one), and plain writes never
 * wait for each other.  So each byte that several ops of a batch touch
 * may hold the value of any of them: the model adds each op's value as a
 * possibility there.  Bytes only one op touches hold its value.
 *
 * The model holds per byte one value, two possible values, or "unknown"
 * (three or more).  A failed op (-ENOSPC) leaves each byte of its range
 * old or new; a failed flush before a close leaves every byte written
 * since the last successful flush unknown.  Discard: clusters it covers
 * whole read as zeros (v3, or v2 without a backing file: v2 over a backing
 * file cannot discard, the driver declines); the partial clusters at its
 * ends are left as they were.  Write zeroes: zeros.
 *
 * Checked: a read op that ran beside others saw each byte as the model had
 * it before its batch or has it after; after each batch the ops' ranges
 * read as the model; at a reopen and at the end the whole disk does.  At
 * the end the image is closed and reopened read-only: no corrupt bit; the
 * disk reads as the model; the driver's check finds no corruption and no
 * check error, and, if no op, flush or close failed, no leak and no dirty
 * bit either.  After errors, leaks are allowed (QEMU leaks clusters on a
 * failed allocation too), and a lazy-refcounts image left dirty is opened
 * read-write (which repairs it, as QEMU does) before the check.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-driver.h"

#include "fuzz-memfile.h"
#include "fuzz-check.h"
#include "../../drivers/qcow2-int.h"

#define HDR_LEN     8
#define OP_LEN      5
#define MAX_OPS     64
#define MAX_BATCH   4
#define MAX_SIZE    ((int64_t)8192 * 512)
#define MAX_OP_LEN  ((int64_t)MiB)
#define BIG_CAP     ((int64_t)64 * MiB)

/* The model's byte loops are the harness's, not the driver's: no coverage
 * feedback from them (it would only reward the fuzzer for longer loops). */
#if defined(__clang__)
#define NOCOV __attribute__((no_sanitize("coverage")))
#else
#define NOCOV
#endif

enum { K_WRITE, K_READ, K_ZERO, K_DISCARD, K_COMPRESSED, K_FLUSH, K_BATCH, K_REOPEN };

/* The backing node: read-only pattern bytes. */
static struct { uint8_t data[MAX_SIZE + 1024]; size_t size; } fuzz_back;

static int fb_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)options; (void)flags; (void)errp;
    bdrv_set_total_bytes(bs, fuzz_back.size);
    return 0;
}

static int coroutine_fn fb_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                  IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    (void)bs; (void)flags;
    fuzz_buf_read(fuzz_back.data, fuzz_back.size, offset, bytes, qiov, qiov_offset);
    return 0;
}

static int64_t fb_getlength(BlockDriverState *bs)
{
    (void)bs;
    return fuzz_back.size;
}

static const BlockDriver fuzz_back_drv = {
    .format_name = "fuzzback",
    .instance_size = sizeof(int),
    .open = fb_open,
    .co_preadv = fb_preadv,
    .getlength = fb_getlength,
};

typedef struct Geo {
    uint32_t cb;
    int64_t cs, size;
    bool extl2, lazy, zstd, v2, backing, prealloc, small_cache, write_through, overlap_all;
    bool native_zeroes;
    unsigned refcount_bits;
} Geo;

typedef struct Op {
    int kind;
    unsigned idx;               /* position in the script: the data pattern */
    int64_t off, len;
    bool unmap, incompressible;
    int ret;
} Op;

/* The model: per byte cur (st 0), cur or alt (st 1), anything (st 2). */
enum { M_EXACT, M_EITHER, M_ANY };
static uint8_t m_cur[MAX_SIZE], m_alt[MAX_SIZE], m_st[MAX_SIZE];
static uint8_t m_dirty[MAX_SIZE];       /* written since the last successful flush */
static uint8_t m_batch[MAX_SIZE];       /* touched by an earlier op of this batch */
static uint8_t readbuf[MAX_SIZE];
static uint8_t opbuf[MAX_BATCH][MAX_OP_LEN];

static struct {
    Geo g;
    BlockDriverState *file, *back, *bs;
    BdrvChild *child;
    bool compress;              /* the image takes compressed writes */
    bool errors;                /* an op, flush or close failed */
    int running;
    uint64_t rng;               /* yields and refused growth */
    unsigned yield_pct, refuse_growth;
    bool trace;                 /* FUZZ_TRACE=1: print each op and its result */
    bool growth_fails;          /* the file is capped or refuses growth */
} F;

NOCOV static void model_set(int64_t p, uint8_t v)
{
    m_cur[p] = v;
    m_st[p] = M_EXACT;
    m_dirty[p] = 1;
}

/* The byte may also be v now. */
NOCOV static void model_add(int64_t p, uint8_t v)
{
    m_dirty[p] = 1;
    if (m_st[p] == M_EXACT && m_cur[p] != v) {
        m_alt[p] = v;
        m_st[p] = M_EITHER;
    } else if (m_st[p] == M_EITHER && m_cur[p] != v && m_alt[p] != v) {
        m_st[p] = M_ANY;
    }
}

NOCOV static bool model_allows(int64_t p, uint8_t v)
{
    return m_st[p] == M_ANY || m_cur[p] == v || (m_st[p] == M_EITHER && m_alt[p] == v);
}

static uint64_t fw_rand(void)
{
    uint64_t z = (F.rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static bool fw_yield(void)
{
    return F.yield_pct && fw_rand() % 100 < F.yield_pct;
}

static bool fw_refuse_growth(void)
{
    return fw_rand() % 128 < F.refuse_growth;
}

/* The data of write idx at disk offset p: constant per sector when
 * compressible, else varying per byte. */
NOCOV static uint8_t pattern(unsigned idx, int64_t p, bool compressible)
{
    uint8_t v = (uint8_t)(idx * 0x4d + 0x11 + (uint64_t)(p >> 9) * 0x3b);
    return compressible ? v : v ^ (uint8_t)(p * 0x9e + (p >> 8));
}

typedef struct OpCo {
    Op *op;
    uint8_t *buf;
} OpCo;

NOCOV static void coroutine_fn op_co(void *opaque)
{
    OpCo *c = opaque;
    Op *op = c->op;
    IOVector q;

    switch (op->kind) {
    case K_WRITE:
    case K_COMPRESSED:
        for (int64_t i = 0; i < op->len; i++) {
            c->buf[i] = pattern(op->idx, op->off + i, op->kind == K_COMPRESSED && !op->incompressible);
        }
        iov_init_buf(&q, c->buf, (size_t)op->len);
        op->ret = bdrv_co_pwritev(F.child, op->off, op->len, &q,
                                  op->kind == K_COMPRESSED ? BDRV_REQ_WRITE_COMPRESSED : 0);
        break;
    case K_READ:
        iov_init_buf(&q, c->buf, (size_t)op->len);
        op->ret = bdrv_co_preadv(F.child, op->off, op->len, &q, 0);
        break;
    case K_ZERO:
        op->ret = bdrv_co_pwrite_zeroes(F.child, op->off, op->len, op->unmap ? BDRV_REQ_MAY_UNMAP : 0);
        break;
    case K_DISCARD:
        op->ret = bdrv_co_pdiscard(F.child, op->off, op->len);
        break;
    default:
        op->ret = bdrv_co_flush(F.bs);
        break;
    }
    if (F.trace) {
        fprintf(stderr, "op %u done\n", op->idx);
    }
    F.running--;
}

/* What a finished op did to the model (ops applied in issue order). */
NOCOV static void model_apply(const Op *op, bool solo)
{
    bool ok = op->ret == 0;
    int64_t cs = F.g.cs;

    F.errors |= !ok;
    if (F.trace) {
        static const char *const names[] = { "write", "read", "zeroes", "discard", "compressed",
                                             "flush", "batch", "reopen" };
        fprintf(stderr, "op %u: %s%s %" PRId64 "+%" PRId64 "%s: %s\n", op->idx, names[op->kind],
                op->kind == K_ZERO && op->unmap ? " (unmap)" : "", op->off, op->len,
                solo ? "" : " (batch)", op->ret ? strerror(-op->ret) : "ok");
    }

    int64_t lo = op->off, hi = op->off + op->len;
    switch (op->kind) {
    case K_WRITE:
    case K_COMPRESSED:
    case K_ZERO:
        break;
    case K_DISCARD:
        if (F.g.v2 && F.g.backing) {
            return;                 /* nothing falls through to zeros: declined */
        }
        lo = ALIGN_UP(lo, cs);
        hi = ALIGN_DOWN(hi, cs);
        break;
    case K_READ:
        /* reads change nothing; one fails only when evicting a dirty
         * table hits the full file */
        CHECK(ok || F.growth_fails);
        return;
    default:
        if (ok && solo) {
            memset(m_dirty, 0, (size_t)F.g.size);
        }
        return;
    }
    for (int64_t p = lo; p < hi; p++) {
        uint8_t v = 0;
        if (op->kind == K_WRITE || op->kind == K_COMPRESSED) {
            v = pattern(op->idx, p, op->kind == K_COMPRESSED && !op->incompressible);
        }
        if (ok && !m_batch[p]) {
            model_set(p, v);
        } else {
            model_add(p, v);
        }
        m_batch[p] = 1;
    }
}

/* [off, off+len) of the disk reads as the model. */
NOCOV static void compare(int64_t off, int64_t len, const char *when)
{
    int ret = bdrv_pread(F.child, off, len, readbuf, 0);
    if (ret < 0) {
        /* a read fails only when evicting a dirty table hits the full file */
        fprintf(stderr, "%s: read %" PRId64 "+%" PRId64 ": %s\n", when, off, len, strerror(-ret));
        CHECK(F.growth_fails);
        F.errors = true;
        return;
    }
    if (!memcmp(readbuf, m_cur + off, (size_t)len)) {
        return;
    }
    for (int64_t i = 0; i < len; i++) {
        int64_t p = off + i;
        if (!model_allows(p, readbuf[i])) {
            fprintf(stderr, "%s: byte 0x%" PRIx64 " (cluster %" PRId64 ") reads 0x%02x, the model"
                    " has 0x%02x%s (alt 0x%02x)\n", when, p, p / F.g.cs, readbuf[i], m_cur[p],
                    m_st[p] == M_EITHER ? " or" : "", m_alt[p]);
            CHECK(!"the disk reads as the model");
        }
    }
}

/* The model over a read's range before its batch ran. */
static uint8_t pre_cur[MAX_BATCH][MAX_OP_LEN], pre_alt[MAX_BATCH][MAX_OP_LEN];
static uint8_t pre_st[MAX_BATCH][MAX_OP_LEN];

/* A read that ran beside the other ops of its batch saw, per byte, the
 * disk before them or after them. */
NOCOV static void check_read(const Op *op, int slot)
{
    const uint8_t *buf = opbuf[slot];
    for (int64_t i = 0; i < op->len; i++) {
        int64_t p = op->off + i;
        uint8_t v = buf[i];
        bool before = pre_st[slot][i] == M_ANY || pre_cur[slot][i] == v ||
                      (pre_st[slot][i] == M_EITHER && pre_alt[slot][i] == v);
        if (!before && !model_allows(p, v)) {
            fprintf(stderr, "read %u: byte 0x%" PRIx64 " (cluster %" PRId64 ") read 0x%02x; before"
                    " the batch the model had 0x%02x, after it 0x%02x\n", op->idx, p, p / F.g.cs,
                    v, pre_cur[slot][i], m_cur[p]);
            CHECK(!"a read sees the disk before or after the ops beside it");
        }
    }
}

static void run_batch(Op *ops, int n)
{
    OpCo cos[MAX_BATCH];
    AioContext *ctx = aio_current();

    for (int i = 0; i < n; i++) {
        if (ops[i].kind == K_READ) {
            memcpy(pre_cur[i], m_cur + ops[i].off, (size_t)ops[i].len);
            memcpy(pre_alt[i], m_alt + ops[i].off, (size_t)ops[i].len);
            memcpy(pre_st[i], m_st + ops[i].off, (size_t)ops[i].len);
        }
    }
    F.running = n;
    for (int i = 0; i < n; i++) {
        cos[i] = (OpCo){ &ops[i], opbuf[i] };
        co_enter(co_create(op_co, &cos[i]));
    }
    while (F.running > 0) {
        aio_poll(ctx, true);
    }
    for (int i = 0; i < n; i++) {
        model_apply(&ops[i], n == 1);
    }
    for (int i = 0; i < n; i++) {
        if (ops[i].kind == K_READ && ops[i].ret == 0) {
            check_read(&ops[i], i);
        }
    }
    for (int i = 0; i < n; i++) {
        if (ops[i].kind != K_FLUSH && ops[i].kind != K_READ) {
            memset(m_batch + ops[i].off, 0, (size_t)ops[i].len);
            int64_t lo = ALIGN_DOWN(ops[i].off, F.g.cs);
            int64_t hi = MIN(ALIGN_UP(ops[i].off + ops[i].len, F.g.cs), F.g.size);
            compare(lo, hi - lo, "after a batch");
        }
    }
}

static bool open_image(int flags)
{
    Error *err = NULL;
    OptDict *o = optdict_new();
    optdict_set(o, "driver", "qcow2");
    optdict_set(o, "file", "fuzzfile");
    if (F.g.backing) {
        optdict_set(o, "backing", "fuzzback");
    }
    if (F.g.small_cache) {
        optdict_set(o, "l2-cache-size", "1");
        optdict_set(o, "refcount-cache-size", "1");
    }
    if (F.g.write_through && (flags & BDRV_O_RDWR)) {
        optdict_set(o, "metadata-write-through", "on");
    }
    if (F.g.overlap_all) {
        optdict_set(o, "overlap-check", "all");
    }
    F.bs = bdrv_open(NULL, o, flags, &err);
    if (!F.bs) {
        fprintf(stderr, "open: %s\n", error_get_pretty(err));
        error_free(err);
        return false;
    }
    bdrv_ref(F.bs);
    F.child = bdrv_attach_child(NULL, F.bs, "fuzz", BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, &err);
    CHECK(F.child);
    F.compress = (flags & BDRV_O_RDWR) && bdrv_supports_compressed_writes(F.bs);
    return true;
}

NOCOV static void model_forget_dirty(void)
{
    for (int64_t p = 0; p < F.g.size; p++) {
        if (m_dirty[p]) {
            m_st[p] = M_ANY;
        }
    }
}

/* Flush and close; a failed flush leaves what was written since the last
 * good one unknown. */
static void close_image(void)
{
    if (bdrv_flush(F.bs) < 0) {
        F.errors = true;
        model_forget_dirty();
    }
    memset(m_dirty, 0, (size_t)F.g.size);
    bdrv_unref_child(NULL, F.child);
    bdrv_unref(F.bs);
    F.child = NULL;
    F.bs = NULL;
}

static uint64_t header_incompat(void)
{
    return fuzz_file.size >= 80 ? qcow2_ld64(fuzz_file.data, QH_INCOMPAT) : 0;
}

static bool create_image(void)
{
    char opts[256];
    Error *err = NULL;
    const Geo *g = &F.g;
    snprintf(opts, sizeof(opts), "size=%" PRId64 ",cluster_size=%" PRId64 ",refcount_bits=%u%s%s%s%s%s",
             g->size, g->cs, g->refcount_bits, g->extl2 ? ",extended_l2=on" : "",
             g->lazy ? ",lazy_refcounts=on" : "", g->zstd ? ",compression_type=zstd" : "",
             g->v2 ? ",compat=0.10" : "", g->prealloc ? ",preallocation=metadata" : "");
    OptDict *o = optdict_parse(opts, NULL, &err);
    CHECK(o);
    int ret = bdrv_create(bdrv_find_format("qcow2"), "fuzzfile:image", o, &err);
    optdict_free(o);
    if (ret < 0) {
        /* only zstd may be missing from the build */
        fprintf(stderr, "create %s: %s\n", opts, err ? error_get_pretty(err) : strerror(-ret));
        CHECK(g->zstd);
        error_free(err);
        return false;
    }
    return true;
}

static void parse_geometry(const uint8_t *h)
{
    Geo *g = &F.g;
    memset(g, 0, sizeof(*g));
    g->cb = 9 + h[0] % 8;
    g->cs = (int64_t)1 << g->cb;
    g->v2 = h[1] & 8;
    g->extl2 = (h[1] & 1) && g->cb >= 14 && !g->v2;
    g->lazy = (h[1] & 2) && !g->v2;
    g->zstd = (h[1] & 4) && !g->v2;
    g->backing = h[1] & 16;
    g->prealloc = h[1] & 32;
    g->small_cache = h[1] & 64;
    g->write_through = h[1] & 128;
    g->refcount_bits = g->v2 ? 16 : 1u << (h[2] % 7);
    g->overlap_all = h[2] & 32;
    g->native_zeroes = h[2] & 64;
    g->size = (int64_t)(1 + ((h[3] << 8 | h[4]) % 8192)) * 512;
    F.yield_pct = ((h[2] >> 3) & 3) * 25;
    F.rng = h[7];
    F.refuse_growth = h[5] >= 128 && h[5] < 192 ? h[5] - 127 : 0;
    F.growth_fails = h[5] >= 128;
}

/* The op at script position idx from its 5 bytes. */
static Op parse_op(const uint8_t *b, unsigned idx)
{
    Op op = { .kind = b[0] % 8, .idx = idx };
    int64_t size = F.g.size, cs = F.g.cs;
    op.unmap = b[0] & 32;
    op.incompressible = b[0] & 32;
    op.off = (int64_t)(((uint64_t)(b[1] << 8 | b[2]) * (uint64_t)size) >> 16);
    int64_t max = (b[0] & 64) ? MIN(MAX(16 * cs, (int64_t)(256 * KiB)), MAX_OP_LEN) : 2 * cs;
    op.len = 1 + (int64_t)(((uint64_t)(b[3] << 8 | b[4]) * (uint64_t)max) >> 16);
    if (b[0] & 8) {
        op.off = ALIGN_DOWN(op.off, cs);
    }
    if (b[0] & 16) {
        op.len = ALIGN_UP(op.len, cs);
    }
    if (op.kind == K_COMPRESSED) {
        if (F.compress) {
            op.off = ALIGN_DOWN(op.off, cs);
            op.len = ALIGN_UP(op.len, cs);
        } else {
            op.kind = K_WRITE;
        }
    }
    op.len = MIN(op.len, size - op.off);
    return op;
}

static void run_script(const uint8_t *data, size_t size)
{
    size_t nops = MIN(size / OP_LEN, (size_t)MAX_OPS);
    for (size_t i = 0; i < nops && F.bs; i++) {
        const uint8_t *b = data + i * OP_LEN;
        int kind = b[0] % 8;
        if (kind == K_REOPEN) {
            close_image();
            if (!open_image(BDRV_O_RDWR | BDRV_O_UNMAP)) {
                /* a dirty image's repair may need space the cap refuses */
                CHECK(F.errors);
                return;
            }
            compare(0, F.g.size, "after reopening");
            continue;
        }
        Op ops[MAX_BATCH];
        int n = 0;
        if (kind == K_BATCH) {
            int want = 2 + (b[0] >> 3) % 3;
            for (int j = 0; j < want && i + 1 < nops; j++) {
                i++;
                Op op = parse_op(data + i * OP_LEN, (unsigned)i);
                if (op.kind == K_BATCH || op.kind == K_REOPEN) {
                    op.kind = K_FLUSH;
                }
                ops[n++] = op;
            }
        } else {
            ops[n++] = parse_op(b, (unsigned)i);
        }
        if (n) {
            run_batch(ops, n);
        }
    }
}

/* The image as the last close left it: consistent, and as the model says. */
static void final_checks(void)
{
    BdrvCheckResult r;
    uint64_t incompat = header_incompat();

    CHECK(!(incompat & QCOW2_INCOMPAT_CORRUPT));
    CHECK(F.errors || !(incompat & QCOW2_INCOMPAT_DIRTY));
    fuzz_file.cap = BIG_CAP;
    fuzz_file.refuse_growth = NULL;
    if (incompat & QCOW2_INCOMPAT_DIRTY) {
        /* lazy refcounts after a failed close: a read-write open repairs */
        CHECK(F.g.lazy);
        CHECK(open_image(BDRV_O_RDWR));
        close_image();
        CHECK(!(header_incompat() & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT)));
    }
    CHECK(open_image(0));
    compare(0, F.g.size, "after reopening read-only");
    CHECK(bdrv_check(F.bs, &r, 0) == 0);
    if (r.corruptions || r.check_errors || (!F.errors && r.leaks)) {
        fprintf(stderr, "check: %d corruptions, %d leaks, %d errors (ops failed: %d)\n",
                r.corruptions, r.leaks, r.check_errors, F.errors);
        CHECK(!"the image checks clean");
    }
    close_image();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool registered;
    Error *err = NULL;

    if (!registered) {
        bdrv_register(&fuzz_back_drv);
        for (size_t i = 0; i < sizeof(fuzz_back.data); i++) {
            fuzz_back.data[i] = (uint8_t)(0xb0 ^ (i >> 9) ^ (i * 7));
        }
        registered = true;
    }
    if (size < HDR_LEN) {
        return 0;
    }
    memset(&F, 0, sizeof(F));
    F.trace = getenv("FUZZ_TRACE") != NULL;
    parse_geometry(data);
    if (F.trace) {
        const Geo *g = &F.g;
        fprintf(stderr, "geometry: cluster %" PRId64 ", size %" PRId64 ", refcount_bits %u%s%s%s%s%s"
                "%s%s%s%s%s, yields %u%%, cap %s\n", g->cs, g->size, g->refcount_bits,
                g->extl2 ? ", extended_l2" : "", g->lazy ? ", lazy_refcounts" : "",
                g->zstd ? ", zstd" : "", g->v2 ? ", v2" : "", g->backing ? ", backing" : "",
                g->prealloc ? ", preallocation=metadata" : "", g->small_cache ? ", small caches" : "",
                g->write_through ? ", metadata-write-through" : "",
                g->overlap_all ? ", overlap-check=all" : "",
                g->native_zeroes ? ", native zeroes" : "", F.yield_pct,
                data[5] >= 192 ? "fixed" : data[5] >= 128 ? "growth refused at times" : "no");
    }
    fuzz_file.cap = 0;
    if (!create_image()) {
        return 0;
    }
    if (data[5] >= 192) {
        fuzz_file.cap = (int64_t)fuzz_file.size + (data[5] - 192) * F.g.cs;
    } else {
        fuzz_file.cap = BIG_CAP;
    }
    fuzz_file.yield = fw_yield;
    fuzz_file.refuse_growth = fw_refuse_growth;

    memset(m_cur, 0, (size_t)F.g.size);
    memset(m_st, 0, (size_t)F.g.size);
    memset(m_dirty, 0, (size_t)F.g.size);
    memset(m_batch, 0, (size_t)F.g.size);
    if (F.g.backing) {
        fuzz_back.size = (size_t)(F.g.size * (data[6] + 1) / 256 + (data[6] % 7) * 111);
        /* preallocated clusters read as zeros, but with extended L2 their
         * subclusters are not allocated (QEMU's rule): the backing shows */
        if (!F.g.prealloc || F.g.extl2) {
            memcpy(m_cur, fuzz_back.data, MIN(fuzz_back.size, (size_t)F.g.size));
        }
        F.back = bdrv_new_open_driver(&fuzz_back_drv, "fuzzback", 0, NULL, &err);
        CHECK(F.back);
    }
    fuzz_file.native_zeroes = F.g.native_zeroes;
    fuzz_file.discard_scribbles = true;
    F.file = bdrv_new_open_driver(&fuzz_file_drv, "fuzzfile", BDRV_O_RDWR, NULL, &err);
    CHECK(F.file);

    if (open_image(BDRV_O_RDWR | BDRV_O_UNMAP)) {
        run_script(data + HDR_LEN, size - HDR_LEN);
        if (F.bs) {
            compare(0, F.g.size, "at the end");
            close_image();
        }
        final_checks();
    } else {
        /* a fresh image opens, whatever its geometry */
        CHECK(!"the new image opens");
    }

    fuzz_file.yield = NULL;
    fuzz_file.refuse_growth = NULL;
    fuzz_file.native_zeroes = fuzz_file.discard_scribbles = false;
    bdrv_unref(F.file);
    if (F.back) {
        bdrv_unref(F.back);
    }
    fuzz_back.size = 0;
    fuzz_file.size = 0;             /* its memory serves the next input */
    return 0;
}
