/*
 * test-qcow2-crash.c - crash consistency of the qcow2 driver, simulated
 * (crash-file.h): random I/O (allocating writes, overwrites, partial
 * clusters over a backing file, zero writes with and without unmap,
 * discards, flushes) from several coroutines at once through the block
 * layer, on top of a protocol that freezes the disk at a chosen operation.
 * For every seed the workload is run once to count the protocol operations,
 * then again crashing at many of them; each crash leaves several images
 * (the durable state plus random subsets of the writes not yet flushed,
 * some torn).  Each must
 *   (a) open (read-write; read-only when lazy refcounts left it dirty),
 *   (b) read back every write acknowledged before the last completed
 *       flush: every sector holds the last durable version or one written
 *       after it,
 *   (c) be consistent: no cluster used twice, no refcount below its
 *       references (unless the dirty bit is set, with lazy refcounts), at
 *       worst leaked clusters (qcow2-refcheck.h, and the driver's check
 *       once it has one).
 *
 * CRASH_SEEDS=N runs N seeds (default: one per configuration).  With
 * CRASH_DUMP_DIR set, some crash images are written there with what the
 * driver read from them, for tests/interop/test_qcow2_crash.sh to give to
 * qemu-img check and qemu-img convert.
 */
#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>
#include "crash-file.h"
#include "qcow2-image.h"
#include "qcow2-refcheck.h"

/* Sanitizer builds (make asan, make tsan) run ~20x slower: they get a
 * lighter default load (the env variables still choose any). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED_BUILD 1
#endif
#endif
#ifndef SANITIZED_BUILD
#define SANITIZED_BUILD 0
#endif

typedef struct Cfg {
    uint32_t cb;
    bool extl2, lazy, backing;
    uint64_t size;
    const char *create;         /* made by the driver's create with these options */
    int64_t max_op;             /* longest request (default: 3 clusters, at most 64 KiB) */
    bool small_cache;           /* the smallest L2 and refcount caches */
} Cfg;

static const Cfg cfgs[] = {
    { 12, false, false, true, 3 * MiB, NULL, 0, false },
    { 9, false, false, false, 160 * KiB, NULL, 0, false },
    { 12, false, true, true, 3 * MiB, NULL, 0, false },
    { 14, true, false, true, 2 * MiB, NULL, 0, false },
    { 9, false, false, true, 96 * KiB, NULL, 0, false },
    { 16, false, false, false, 4 * MiB, NULL, 0, false },
    { 14, true, true, false, 2 * MiB, NULL, 0, false },
    { 10, false, true, false, 256 * KiB, NULL, 0, false },
    /* 64-bit refcounts in 512-byte clusters: the refcount table grows */
    { 9, false, false, false, 4 * MiB, "cluster_size=512,refcount_bits=64", 256 * KiB, false },
    /* more L2 tables than the smallest cache holds: entries are evicted and
     * loaded again (dirty ones rarely: a new L2 table flushes the cache) */
    { 9, false, false, true, 6 * MiB, "cluster_size=512", 256 * KiB, true },
    { 12, false, false, true, 2 * MiB, "compat=0.10,cluster_size=4096", 0, false },
    { 12, false, false, false, 2 * MiB, "compat=0.10,cluster_size=4096", 0, false },
    { 12, false, false, true, 2 * MiB, "refcount_bits=1,cluster_size=4096", 0, false },
    { 11, false, true, true, MiB, "cluster_size=2048,lazy_refcounts=on,refcount_bits=8", 0, false },
    /* an external data file ('@': its path), crashing with the image */
    { 12, false, false, true, 2 * MiB, "cluster_size=4096,data_file=@", 0, false },
};
#define NCFGS ((int)(sizeof(cfgs) / sizeof(cfgs[0])))

typedef enum { OP_WRITE, OP_ZERO, OP_ZERO_UNMAP, OP_DISCARD, OP_FLUSH, OP_COMPRESSED } OpKind;

typedef struct GOp {
    OpKind kind;
    int64_t off, len;
    int64_t done_seq;           /* completion order, 0 while running */
    int64_t covers;             /* flush: ops with done_seq <= this are covered */
    int ret;
    bool durable;
    bool unchanged;             /* leaves the data as it was (v2 discard over backing) */
} GOp;

typedef struct Run {
    Cfg cfg;
    uint64_t seed, rng;
    int rounds;
    BlockDriverState *file, *base;
    BlockDriverState *dfile;    /* the external data file, if the image has one */
    Q2Image img;
    GOp *ops;
    int nops, cap;
    int64_t done_counter;
    int running;
    /* The model: per 512-byte sector, the ops that wrote it (in time order)
     * and the last durable one (-1: the initial contents). */
    int64_t nsect;
    int **hist;
    int *nhist;
    int *durable;
    uint8_t *backing;
    size_t backing_len;
    uint8_t *scratch;           /* one write's data */
    bool compress;              /* the image takes compressed writes */
} Run;

static int dumped;

static uint64_t rnd(Run *r)
{
    uint64_t z = (r->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(Run *r, uint64_t n)
{
    return n ? rnd(r) % n : 0;
}

/* ---- the model ---- */

static void model_add(Run *r, int id)
{
    GOp *op = &r->ops[id];
    for (int64_t s = op->off / 512; s < (op->off + op->len) / 512; s++) {
        r->hist[s] = realloc(r->hist[s], (size_t)(r->nhist[s] + 1) * sizeof(int));
        assert_non_null(r->hist[s]);
        r->hist[s][r->nhist[s]++] = id;
    }
}

static void model_make_durable(Run *r, int id)
{
    GOp *op = &r->ops[id];
    if (op->durable || op->kind == OP_FLUSH || op->unchanged) {
        return;
    }
    op->durable = true;
    for (int64_t s = op->off / 512; s < (op->off + op->len) / 512; s++) {
        if (id > r->durable[s]) {
            r->durable[s] = id;
        }
    }
}

/* The data op id writes at guest offset off (a multiple of 8): a function
 * of both, so any sector names the write it came from. */
static void op_fill(Run *r, int id, int64_t off, int64_t len, uint8_t *out)
{
    for (int64_t i = 0; i < len; i += 8) {
        uint64_t z = r->seed * 0x100000001B3ULL + (uint64_t)id * 0x9E3779B97F4A7C15ULL +
                     (uint64_t)(off + i) / 8;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        memcpy(out + i, &z, 8);
    }
}

/* What a compressed write of op id puts at off: compressible (a tag per
 * sector, then one byte repeated), still naming the op in every sector. */
static void op_fill_compressible(Run *r, int id, int64_t off, int64_t len, uint8_t *out)
{
    for (int64_t i = 0; i < len; i += 512) {
        op_fill(r, id, off + i, 8, out + i);
        memset(out + i + 8, (int)((uint64_t)id * 31 + (uint64_t)(off + i) / 512) & 0xff, 504);
    }
}

/* Sector s as version id left it (-1: the initial contents). */
static void version_sector(Run *r, int id, int64_t s, uint8_t *out)
{
    if (id < 0) {
        int64_t off = s * 512;
        memset(out, 0, 512);
        if (r->cfg.backing && off < (int64_t)r->backing_len) {
            memcpy(out, r->backing + off, MIN((size_t)512, r->backing_len - (size_t)off));
        }
        return;
    }
    GOp *op = &r->ops[id];
    if (op->kind == OP_COMPRESSED) {
        op_fill_compressible(r, id, s * 512, 512, out);
        return;
    }
    if (op->kind != OP_WRITE) {
        memset(out, 0, 512);
        return;
    }
    op_fill(r, id, s * 512, 512, out);
}

/* ---- the workload ---- */

typedef struct OpCo {
    Run *r;
    int id;
} OpCo;

static void coroutine_fn op_co(void *opaque)
{
    OpCo *oc = opaque;
    Run *r = oc->r;
    GOp *op = &r->ops[oc->id];
    int ret = 0;

    switch (op->kind) {
    case OP_COMPRESSED: {
        uint8_t *buf = malloc((size_t)op->len);
        assert_non_null(buf);
        op_fill_compressible(r, oc->id, op->off, op->len, buf);
        IOVector q;
        iov_init_buf(&q, buf, (size_t)op->len);
        ret = bdrv_co_pwritev(r->img.child, op->off, op->len, &q, BDRV_REQ_WRITE_COMPRESSED);
        free(buf);
        break;
    }
    case OP_WRITE: {
        uint8_t *buf = malloc((size_t)op->len);
        assert_non_null(buf);
        op_fill(r, oc->id, op->off, op->len, buf);
        IOVector q;
        iov_init_buf(&q, buf, (size_t)op->len);
        ret = bdrv_co_pwritev(r->img.child, op->off, op->len, &q, 0);
        free(buf);
        break;
    }
    case OP_ZERO:
    case OP_ZERO_UNMAP:
        ret = bdrv_co_pwrite_zeroes(r->img.child, op->off, op->len,
                                    op->kind == OP_ZERO_UNMAP ? BDRV_REQ_MAY_UNMAP : 0);
        break;
    case OP_DISCARD:
        ret = bdrv_co_pdiscard(r->img.child, op->off, op->len);
        break;
    case OP_FLUSH:
        op->covers = r->done_counter;
        ret = bdrv_co_flush(r->img.bs);
        /* acknowledged before the disk froze: what it covers is durable */
        if (ret == 0 && !crash_file_crashed(r->file)) {
            for (int i = 0; i < r->nops; i++) {
                if (r->ops[i].done_seq && r->ops[i].done_seq <= op->covers) {
                    model_make_durable(r, i);
                }
            }
        }
        break;
    }
    op->ret = ret;
    if (ret == 0) {
        op->done_seq = ++r->done_counter;
    }
    r->running--;
    free(oc);
}

static bool sectors_free(Run *r, int first_of_round, int64_t off, int64_t len)
{
    for (int i = first_of_round; i < r->nops; i++) {
        GOp *o = &r->ops[i];
        if (o->kind != OP_FLUSH && off < o->off + o->len && o->off < off + len) {
            return false;
        }
    }
    return true;
}

/* The next round: 1 to 4 operations on distinct sectors. */
static void gen_round(Run *r)
{
    int first = r->nops;
    int k = 1 + (int)rnd_below(r, 4);
    int64_t cs = (int64_t)1 << r->cfg.cb, size = (int64_t)r->cfg.size;
    for (int n = 0; n < k; n++) {
        GOp op = { 0 };
        uint64_t p = rnd_below(r, 100);
        op.kind = p < 55 ? OP_WRITE : p < 65 ? OP_ZERO : p < 73 ? OP_ZERO_UNMAP
                : p < 83 ? OP_DISCARD : OP_FLUSH;
        /* half the requests go to a hot eighth of the image: overwrites */
        int64_t area = rnd_below(r, 2) ? size / 8 : size;
        if (op.kind == OP_DISCARD) {
            op.len = cs * (1 + (int64_t)rnd_below(r, 4));
            op.len = MIN(op.len, area);
            op.off = (int64_t)rnd_below(r, (uint64_t)((area - op.len) / cs + 1)) * cs;
        } else if (op.kind != OP_FLUSH) {
            int64_t max = r->cfg.max_op ? r->cfg.max_op : MIN(3 * cs, (int64_t)(64 * KiB));
            op.len = 512 * (1 + (int64_t)rnd_below(r, (uint64_t)(max / 512)));
            op.len = MIN(op.len, area);
            op.off = 512 * (int64_t)rnd_below(r, (uint64_t)((area - op.len) / 512 + 1));
            if (rnd_below(r, 4) == 0) {
                op.off = ALIGN_DOWN(op.off, cs);          /* whole clusters too */
                op.len = ALIGN_UP(op.len, cs);
                op.len = MIN(op.len, size - op.off);
                /* some of them compressed, where the image can */
                if (op.kind == OP_WRITE && r->compress && rnd_below(r, 2)) {
                    op.kind = OP_COMPRESSED;
                }
            }
        }
        if (op.kind != OP_FLUSH && !sectors_free(r, first, op.off, op.len)) {
            continue;
        }
        /* v2 has no zero flag: a discard over a backing file does nothing */
        op.unchanged = op.kind == OP_DISCARD && r->cfg.backing && r->cfg.create &&
                       strstr(r->cfg.create, "compat=0.10");
        if (r->nops == r->cap) {
            r->cap = r->cap ? 2 * r->cap : 128;
            r->ops = realloc(r->ops, (size_t)r->cap * sizeof(GOp));
            assert_non_null(r->ops);
        }
        r->ops[r->nops++] = op;
        if (op.kind != OP_FLUSH && !op.unchanged) {
            model_add(r, r->nops - 1);
        }
    }
}

static void run_round(Run *r, int first)
{
    AioContext *ctx = test_loop_init();
    r->running = r->nops - first;
    for (int i = first; i < r->nops; i++) {
        OpCo *oc = malloc(sizeof(*oc));
        assert_non_null(oc);
        *oc = (OpCo){ r, i };
        co_enter(co_create(op_co, oc));
    }
    while (r->running > 0) {
        aio_poll(ctx, true);
    }
    for (int i = first; i < r->nops; i++) {
        if (r->ops[i].ret < 0) {
            fail_msg("seed %" PRIu64 ": op %d (kind %d, %" PRId64 "+%" PRId64 ") failed: %s",
                     r->seed, i, r->ops[i].kind, r->ops[i].off, r->ops[i].len,
                     strerror(-r->ops[i].ret));
        }
    }
}

static bool has_data_file(const Cfg *cfg)
{
    return cfg->create && strstr(cfg->create, "data_file=");
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    struct stat st;
    assert_int_equal(fstat(fileno(f), &st), 0);
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)st.st_size, f), (size_t)st.st_size);
    fclose(f);
    unlink(path);
    *len = (size_t)st.st_size;
    return buf;
}

/* The image's bytes (and its data file's in *data, if it has one). */
static uint8_t *initial_image(const Cfg *cfg, size_t *len, uint8_t **data, size_t *dlen)
{
    if (data) {
        *data = NULL;
        *dlen = 0;
    }
    if (cfg->create) {
        char path[256], dpath[256], sz[32], opts[512];
        Error *err = NULL;
        snprintf(path, sizeof(path), "%s/crash.qcow2", test_tmpdir());
        snprintf(dpath, sizeof(dpath), "%s/crash-data.raw", test_tmpdir());
        const char *at = strchr(cfg->create, '@');
        if (at) {
            snprintf(opts, sizeof(opts), "%.*s%s%s", (int)(at - cfg->create), cfg->create, dpath,
                     at + 1);
        } else {
            snprintf(opts, sizeof(opts), "%s", cfg->create);
        }
        OptDict *o = optdict_parse(opts, NULL, NULL);
        snprintf(sz, sizeof(sz), "%" PRIu64, cfg->size);
        optdict_set(o, "size", sz);
        int ret = bdrv_create(bdrv_find_format("qcow2"), path, o, &err);
        optdict_free(o);
        if (ret < 0) {
            fail_msg("create %s: %s", cfg->create, err ? error_get_pretty(err) : strerror(-ret));
        }
        if (at) {
            assert_non_null(data);
            *data = slurp(dpath, dlen);
        }
        return slurp(path, len);
    }
    Q2Image img = q2_make(cfg->cb, cfg->size, cfg->extl2, 0);
    if (cfg->lazy) {
        q2_put64(img.file, QH_COMPAT, QCOW2_COMPAT_LAZY_REFCOUNTS);
    }
    *len = (size_t)mem_size(img.file);
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    mem_read_raw(img.file, 0, buf, (int64_t)*len);
    q2_free(&img);
    return buf;
}

static void open_image(Run *r, BlockDriverState *file, BlockDriverState *dfile, int flags)
{
    r->img = (Q2Image){ .file = file, .cb = r->cfg.cb, .extl2 = r->cfg.extl2 };
    OptDict *opts = optdict_new();
    optdict_set(opts, "driver", "qcow2");
    optdict_set(opts, "file", file->node_name);
    if (r->cfg.backing) {
        optdict_set(opts, "backing", r->base->node_name);
    }
    if (dfile) {
        optdict_set(opts, "data-file", dfile->node_name);
    }
    if (r->cfg.small_cache) {
        optdict_set(opts, "l2-cache-size", "1");
        optdict_set(opts, "refcount-cache-size", "1");
    }
    r->img.bs = bdrv_open(NULL, opts, flags, &r->img.err);
    if (r->img.bs) {
        r->img.child = test_child_new(r->img.bs);
    }
}

static void run_init(Run *r, int cfg_index, uint64_t seed)
{
    static int serial;
    char name[48];
    memset(r, 0, sizeof(*r));
    r->cfg = cfgs[cfg_index];
    r->seed = seed;
    r->rng = seed;
    r->rounds = (SANITIZED_BUILD ? 12 : 24) + (int)rnd_below(r, 16);
    r->nsect = (int64_t)r->cfg.size / 512;
    r->hist = calloc((size_t)r->nsect, sizeof(int *));
    r->nhist = calloc((size_t)r->nsect, sizeof(int));
    r->durable = malloc((size_t)r->nsect * sizeof(int));
    assert_true(r->hist && r->nhist && r->durable);
    for (int64_t s = 0; s < r->nsect; s++) {
        r->durable[s] = -1;
    }
    if (r->cfg.backing) {
        /* shorter than the image and not sector-aligned: reads past its end are zeros */
        r->backing_len = r->cfg.size * 3 / 4 + 300;
        MemConfig bcfg = { .size = (int64_t)r->backing_len };
        snprintf(name, sizeof(name), "crashbase%d", serial);
        bcfg.node_name = name;
        r->base = mem_node_new(&bcfg);
        r->backing = malloc(r->backing_len);
        assert_non_null(r->backing);
        test_pattern(r->backing, r->backing_len, seed ^ 0xba5e);
        mem_write_raw(r->base, 0, r->backing, (int64_t)r->backing_len);
    }
    size_t len, dlen;
    uint8_t *dinit;
    uint8_t *init = initial_image(&r->cfg, &len, &dinit, &dlen);
    if (dinit) {
        snprintf(name, sizeof(name), "crashdata%d", serial);
        r->dfile = crash_file_new(name, dinit, dlen);
        free(dinit);
    }
    snprintf(name, sizeof(name), "crashfile%d", serial++);
    r->file = crash_file_new(name, init, len);
    free(init);
    crash_file_arm(r->file, 0);             /* the last run's crash is over */
    open_image(r, r->file, r->dfile, BDRV_O_RDWR | BDRV_O_UNMAP);
    if (!r->img.bs) {
        fail_msg("open: %s", error_get_pretty(r->img.err));
    }
    /* an external data file takes no compressed clusters (-ENOTSUP, as QEMU) */
    r->compress = bdrv_supports_compressed_writes(r->img.bs) && !r->dfile;
}

static void run_free(Run *r)
{
    q2_free(&r->img);                      /* also drops the crash file */
    if (r->dfile) {
        bdrv_unref(r->dfile);
    }
    if (r->base) {
        bdrv_unref(r->base);
    }
    for (int64_t s = 0; s < r->nsect; s++) {
        free(r->hist[s]);
    }
    free(r->hist);
    free(r->nhist);
    free(r->durable);
    free(r->backing);
    free(r->ops);
}

/* Run the workload, crashing at protocol operation crash_at (0: never);
 * returns the protocol operations it took.  Leaves the image closed. */
static int64_t run_workload(Run *r, int64_t crash_at)
{
    int64_t ops0 = crash_file_ops(r->file);
    crash_file_arm(r->file, crash_at);
    for (int round = 0; round < r->rounds && !crash_file_crashed(r->file); round++) {
        int first = r->nops;
        gen_round(r);
        run_round(r, first);
    }
    if (!crash_file_crashed(r->file)) {
        /* a last flush: with no crash everything is durable */
        int first = r->nops;
        r->ops = realloc(r->ops, (size_t)(r->nops + 1) * sizeof(GOp));
        r->cap = r->nops + 1;
        r->ops[r->nops++] = (GOp){ .kind = OP_FLUSH };
        run_round(r, first);
    }
    int64_t used = crash_file_ops(r->file) - ops0;
    q2_close(&r->img);                      /* what a clean close writes may be lost too */
    return used;
}

static void dump(Run *r, const char *tag, const uint8_t *img, size_t len, const uint8_t *data)
{
    const char *dir = getenv("CRASH_DUMP_DIR");
    char path[512];
    /* the random subsets (k2, k3) and the end states are the interesting ones */
    if (!dir || dumped >= 200 || strstr(tag, "-k0") || strstr(tag, "-k1") ||
        has_data_file(&r->cfg)) {
        return;
    }
    dumped++;
    snprintf(path, sizeof(path), "%s/%s.qcow2", dir, tag);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(img, 1, len, f), len);
    fclose(f);
    snprintf(path, sizeof(path), "%s/%s.raw", dir, tag);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, r->cfg.size, f), r->cfg.size);
    fclose(f);
    if (r->cfg.backing) {
        snprintf(path, sizeof(path), "%s/%s.base", dir, tag);
        f = fopen(path, "w");
        assert_non_null(f);
        assert_int_equal(fwrite(r->backing, 1, r->backing_len, f), r->backing_len);
        fclose(f);
    }
}

static void expect_consistent(Run *r, const char *what, const uint8_t *img, size_t len,
                              bool allow_dirty)
{
    Q2Check c = q2_refcheck(img, len);
    if (c.errors || ((c.low || c.copied) && !(allow_dirty && r->cfg.lazy && c.dirty))) {
        fail_msg("seed %" PRIu64 " %s: %d errors, %d refcounts too low, %d COPIED mismatches"
                 " (dirty %d): %s", r->seed, what, c.errors, c.low, c.copied, c.dirty, c.first);
    }
}

/* Check one image a crash left (see the top of the file). */
static void verify_image(Run *r, const char *tag, uint8_t *img, size_t len, uint8_t *dimg,
                         size_t dlen)
{
    expect_consistent(r, tag, img, len, true);
    Q2Check c = q2_refcheck(img, len);

    char name[64];
    static int serial;
    snprintf(name, sizeof(name), "crashcheck%d", serial++);
    BlockDriverState *file = crash_file_new(name, img, len);
    BlockDriverState *dfile = NULL;
    if (dimg) {
        snprintf(name, sizeof(name), "crashcheckdata%d", serial);
        dfile = crash_file_new(name, dimg, dlen);
    }
    Run v = *r;
    open_image(&v, file, dfile, BDRV_O_RDWR);
    bool rw = v.img.bs != NULL;
    if (!rw) {
        /* a dirty image (lazy refcounts) opens read-write only once repaired */
        if (!c.dirty) {
            fail_msg("seed %" PRIu64 " %s: open: %s", r->seed, tag,
                     error_get_pretty(v.img.err));
        }
        error_free(v.img.err);
        v.img.err = NULL;
        open_image(&v, file, dfile, 0);
        if (!v.img.bs) {
            fail_msg("seed %" PRIu64 " %s: read-only open: %s", r->seed, tag,
                     error_get_pretty(v.img.err));
        }
    }
    bdrv_unref(file);                       /* the qcow2 node holds it */

    uint8_t *data = malloc(r->cfg.size);
    assert_non_null(data);
    int ret = bdrv_pread(v.img.child, 0, (int64_t)r->cfg.size, data, 0);
    if (ret < 0) {
        fail_msg("seed %" PRIu64 " %s: read: %s", r->seed, tag, strerror(-ret));
    }
    uint8_t want[512];
    for (int64_t s = 0; s < r->nsect; s++) {
        bool ok = false;
        if (r->durable[s] < 0) {
            version_sector(r, -1, s, want);
            ok = !memcmp(want, data + s * 512, 512);
        }
        for (int i = r->nhist[s] - 1; i >= 0 && !ok && r->hist[s][i] >= r->durable[s]; i--) {
            version_sector(r, r->hist[s][i], s, want);
            ok = !memcmp(want, data + s * 512, 512);
        }
        if (!ok) {
            print_message("sector %" PRId64 ": %s; written by", s,
                          test_buf_is(data + s * 512, 512, 0) ? "zeros" : "not zeros");
            for (int i = 0; i < r->nhist[s]; i++) {
                GOp *o = &r->ops[r->hist[s][i]];
                print_message(" op %d (kind %d, %" PRId64 "+%" PRId64 ", done %" PRId64 ")",
                              r->hist[s][i], o->kind, o->off, o->len, o->done_seq);
            }
            print_message("\n");
            fail_msg("seed %" PRIu64 " %s: sector %" PRId64 " (0x%" PRIx64 ") holds none of the"
                     " versions since the last durable one (op %d)", r->seed, tag, s,
                     (uint64_t)s * 512, r->durable[s]);
        }
    }
    dump(r, tag, img, len, data);
    free(data);

    if (rw) {
        BdrvCheckResult res;
        ret = bdrv_check(v.img.bs, &res, 0);
        if (ret != -ENOTSUP) {
            assert_int_equal(ret, 0);
            if (res.corruptions || res.check_errors) {
                fail_msg("seed %" PRIu64 " %s: check: %d corruptions, %d errors", r->seed, tag,
                         res.corruptions, res.check_errors);
            }
        }
    }
    /* the recovered image takes new writes (leaked clusters stay out of the
     * allocator's way; a repaired one is whole again) */
    int64_t cs = (int64_t)1 << r->cfg.cb, wlen = MIN(2 * cs, (int64_t)r->cfg.size);
    int64_t woff[3];
    uint8_t *wbuf = malloc((size_t)wlen), *rbuf = malloc((size_t)wlen);
    assert_true(wbuf && rbuf);
    for (int i = 0; rw && i < 3; i++) {
        woff[i] = (int64_t)((r->seed * 7 + (uint64_t)serial * 13 + (uint64_t)i * 101) %
                            (uint64_t)(r->cfg.size / 512 - (uint64_t)wlen / 512 + 1)) * 512;
        test_pattern(wbuf, (size_t)wlen, (uint64_t)serial * 3 + (uint64_t)i);
        ret = bdrv_pwrite(v.img.child, woff[i], wlen, wbuf, 0);
        if (ret < 0) {
            fail_msg("seed %" PRIu64 " %s: a write after recovery: %s", r->seed, tag,
                     strerror(-ret));
        }
    }
    BlockDriverState *f = v.img.file;
    bdrv_ref(f);
    q2_close(&v.img);
    if (rw) {
        /* the driver's own clean close: consistent and not dirty */
        size_t clen;
        const uint8_t *after = crash_file_current(f, &clen);
        expect_consistent(r, "after a read-write open and close", after, clen, false);
        assert_false(q2_refcheck(after, clen).dirty);
        open_image(&v, f, dfile, 0);
        assert_non_null(v.img.bs);
        for (int i = 0; i < 3; i++) {
            test_pattern(wbuf, (size_t)wlen, (uint64_t)serial * 3 + (uint64_t)i);
            assert_true(bdrv_pread(v.img.child, woff[i], wlen, rbuf, 0) >= 0);
            /* later writes may overlap earlier ones: compare what is left */
            int64_t from = 0, to = wlen;
            for (int j = i + 1; j < 3; j++) {
                if (woff[j] <= woff[i] + from && woff[j] + wlen > woff[i] + from) {
                    from = MIN(to, woff[j] + wlen - woff[i]);
                }
                if (woff[j] > woff[i] + from && woff[j] < woff[i] + to) {
                    to = woff[j] - woff[i];
                }
            }
            if (from < to && memcmp(wbuf + from, rbuf + from, (size_t)(to - from))) {
                fail_msg("seed %" PRIu64 " %s: a write after recovery does not read back",
                         r->seed, tag);
            }
        }
        v.img.file = NULL;
        q2_close(&v.img);
    }
    free(wbuf);
    free(rbuf);
    bdrv_unref(f);
    if (dfile) {
        bdrv_unref(dfile);
    }
}

/* ---- regressions: one bad subset each, at every crash point ---- */

typedef struct Range {
    int64_t off, len;
} Range;

/* Everything pending reaches the disk except what touches the range. */
static bool keep_but(int64_t offset, int64_t bytes, void *opaque)
{
    Range *r = opaque;
    return offset + bytes <= r->off || offset >= r->off + r->len;
}

typedef struct DiscardCo {
    BdrvChild *child;
    int64_t offset, bytes;
    int ret;
} DiscardCo;

static void coroutine_fn discard_co(void *opaque)
{
    DiscardCo *d = opaque;
    d->ret = bdrv_co_pdiscard(d->child, d->offset, d->bytes);
}

/* The two steps of a scenario: before() runs with no crash, after() with
 * the crash armed; then the image is checked by expect(). */
typedef struct Scenario {
    bool backing, lazy;
    void (*before)(Q2Image *img);
    void (*after)(Q2Image *img);
    void (*expect)(const uint8_t *cluster0, const uint8_t *cluster1);
} Scenario;

static void run_scenario(const Scenario *sc)
{
    MemConfig bcfg = { .size = 64 * KiB, .node_name = "crashregbase" };
    BlockDriverState *base = sc->backing ? mem_node_new(&bcfg) : NULL;
    if (base) {
        mem_fill(base, 0, 64 * KiB, 0xba);
    }
    Cfg cfg = { 12, false, sc->lazy, sc->backing, MiB, NULL, 0, false };
    size_t len;
    uint8_t *init = initial_image(&cfg, &len, NULL, NULL);
    int64_t total = 0;
    for (int64_t at = 0; at <= total; at++) {
        BlockDriverState *file = crash_file_new("crashreg", init, len);
        crash_file_arm(file, 0);                /* the last iteration's crash is over */
        Q2Image img = { .file = file, .cb = 12 };
        q2_open(&img, BDRV_O_RDWR | BDRV_O_UNMAP, base ? "backing" : NULL,
                base ? "crashregbase" : NULL);
        assert_non_null(img.bs);
        sc->before(&img);
        int64_t ops0 = crash_file_ops(file);
        crash_file_arm(file, at);
        sc->after(&img);
        if (at == 0) {
            total = crash_file_ops(file) - ops0;      /* then crash at each of them */
        }
        q2_close(&img);
        /* the new data cluster's write is what the crash lost */
        Range lost = { (int64_t)Q2_DATA(&img, 0), 4096 };
        size_t plen;
        uint8_t *p = crash_file_persisted_if(file, keep_but, &lost, &plen);
        q2_free(&img);

        Q2Check c = q2_refcheck(p, plen);
        if (c.errors || ((c.low || c.copied) && !(sc->lazy && c.dirty))) {
            fail_msg("crash at %" PRId64 ": %s", at, c.first);
        }
        BlockDriverState *f2 = crash_file_new("crashreg2", p, plen);
        free(p);
        Q2Image v = { .file = f2, .cb = 12 };
        q2_open(&v, 0, base ? "backing" : NULL, base ? "crashregbase" : NULL);
        assert_non_null(v.bs);
        uint8_t buf[8192];
        assert_true(bdrv_pread(v.child, 0, sizeof(buf), buf, 0) >= 0);
        sc->expect(buf, buf + 4096);
        q2_free(&v);
    }
    free(init);
    if (base) {
        bdrv_unref(base);
    }
}

typedef struct CompressedCo {
    BdrvChild *child;
    IOVector *qiov;
    int ret;
} CompressedCo;

static void coroutine_fn compressed_co(void *opaque)
{
    CompressedCo *c = opaque;
    c->ret = bdrv_co_pwritev(c->child, 0, (int64_t)c->qiov->size, c->qiov,
                             BDRV_REQ_WRITE_COMPRESSED);
}

static void nothing(Q2Image *img)
{
    (void)img;
}

/* A partial write to a cluster of the backing file copies the rest of the
 * cluster into the new one. */
static void cow_write(Q2Image *img)
{
    uint8_t buf[512];
    memset(buf, 0x11, sizeof(buf));
    assert_true(bdrv_pwrite(img->child, 512, sizeof(buf), buf, 0) >= 0);
    assert_int_equal(bdrv_flush(img->bs), 0);
}

static void cow_expect(const uint8_t *c0, const uint8_t *c1)
{
    (void)c1;
    assert_true(test_buf_is(c0, 512, 0xba));
    assert_true(test_buf_is(c0 + 512, 512, 0xba) || test_buf_is(c0 + 512, 512, 0x11));
    assert_true(test_buf_is(c0 + 1024, 4096 - 1024, 0xba));
}

/* Regression: the L2 entry of a copy-on-write allocation reached the disk
 * before the copied data, so a crash made the backing file's data read as
 * zeros in the untouched part of the cluster.  With lazy refcounts nothing
 * else ordered them; without, only the refcount dependency's flush did,
 * when the refcount block had not been flushed since. */
static void test_cow_data_before_l2(void **state)
{
    (void)state;
    run_scenario(&(Scenario){ true, true, nothing, cow_write, cow_expect });
    run_scenario(&(Scenario){ true, false, nothing, cow_write, cow_expect });
}

/* Cluster 0 written and flushed, then discarded and flushed: its host
 * cluster is free again. */
static void write_then_discard(Q2Image *img)
{
    uint8_t buf[4096];
    memset(buf, 0x22, sizeof(buf));
    assert_true(bdrv_pwrite(img->child, 0, sizeof(buf), buf, 0) >= 0);
    assert_int_equal(bdrv_flush(img->bs), 0);
    DiscardCo d = { img->child, 0, 4096, -EINPROGRESS };
    test_run_co(discard_co, &d);
    assert_int_equal(d.ret, 0);
    assert_int_equal(bdrv_flush(img->bs), 0);
}

/* Cluster 1 written whole: it takes the host cluster cluster 0 gave up. */
static void reuse_write(Q2Image *img)
{
    uint8_t buf[4096];
    memset(buf, 0x33, sizeof(buf));
    assert_true(bdrv_pwrite(img->child, 4096, sizeof(buf), buf, 0) >= 0);
    assert_int_equal(bdrv_flush(img->bs), 0);
}

static void reuse_expect(const uint8_t *c0, const uint8_t *c1)
{
    assert_true(test_buf_is(c0, 4096, 0));
    assert_true(test_buf_is(c1, 4096, 0) || test_buf_is(c1, 4096, 0x33));
}

/* Regression: an allocating write into a reused host cluster published its
 * L2 entry before its data was on disk, so after a crash the guest cluster
 * showed what another guest cluster had held there. */
static void test_reused_cluster_not_exposed(void **state)
{
    (void)state;
    run_scenario(&(Scenario){ false, true, write_then_discard, reuse_write, reuse_expect });
    run_scenario(&(Scenario){ false, false, write_then_discard, reuse_write, reuse_expect });
}

/* Cluster 0 written compressed (it compresses to a few bytes). */
static void compressed_write(Q2Image *img)
{
    uint8_t buf[4096];
    memset(buf, 0x44, sizeof(buf));
    IOVector q;
    iov_init_buf(&q, buf, sizeof(buf));
    assert_true(bdrv_supports_compressed_writes(img->bs));
    CompressedCo c = { img->child, &q, -EINPROGRESS };
    test_run_co(compressed_co, &c);
    assert_int_equal(c.ret, 0);
    assert_int_equal(bdrv_flush(img->bs), 0);
}

static void compressed_expect(const uint8_t *c0, const uint8_t *c1)
{
    (void)c1;
    assert_true(test_buf_is(c0, 4096, 0) || test_buf_is(c0, 4096, 0x44));
}

/* Regression: a compressed write published its L2 entry before the
 * compressed bytes were on disk, so after a crash the cluster failed to
 * decompress and read -EIO. */
static void test_compressed_data_before_l2(void **state)
{
    (void)state;
    run_scenario(&(Scenario){ false, true, nothing, compressed_write, compressed_expect });
    run_scenario(&(Scenario){ false, false, nothing, compressed_write, compressed_expect });
}

static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : def;
}

static void crash_seed(uint64_t seed, int points)
{
    int ci = (int)(seed % NCFGS);
    Run r;
    char tag[96];

    /* no crash: count the operations; the end state is all durable */
    run_init(&r, ci, seed);
    int64_t total = run_workload(&r, 0);
    size_t len;
    size_t dlen = 0;
    uint8_t *img = crash_file_persisted(r.file, seed, 0, 0, &len);
    uint8_t *dimg = r.dfile ? crash_file_persisted(r.dfile, seed, 0, 0, &dlen) : NULL;
    snprintf(tag, sizeof(tag), "crash-s%" PRIu64 "-end", seed);
    verify_image(&r, tag, img, len, dimg, dlen);
    free(img);
    free(dimg);
    run_free(&r);

    uint64_t prng = seed * 31 + 7;
    for (int p = 0; p < points; p++) {
        int64_t at = p == 0 ? 1 : p == points - 1 ? total
                   : 1 + (int64_t)((uint64_t)(total * p / points) +
                                   (prng = prng * 6364136223846793005ULL + 1) % (uint64_t)MAX(1, total / points));
        at = MIN(at, total);
        run_init(&r, ci, seed);
        run_workload(&r, at);
        assert_true(crash_file_crashed(r.file));
        for (int k = 0; k < 4; k++) {
            int keep = k == 0 ? 100 : k == 1 ? 0 : 10 + (int)((seed + (uint64_t)at * 13 + (uint64_t)k) % 80);
            int torn = k < 2 ? 0 : 30;
            uint64_t sub = seed * 1000003 + (uint64_t)at * 101 + (uint64_t)k;
            img = crash_file_persisted(r.file, sub, keep, torn, &len);
            dimg = r.dfile ? crash_file_persisted(r.dfile, sub ^ 0xda7a, keep, torn, &dlen) : NULL;
            snprintf(tag, sizeof(tag), "crash-s%" PRIu64 "-at%" PRId64 "-k%d", seed, at, k);
            verify_image(&r, tag, img, len, dimg, dlen);
            free(img);
            free(dimg);
        }
        run_free(&r);
    }
}

static void test_crash_random(void **state)
{
    (void)state;
    int seeds = env_int("CRASH_SEEDS", NCFGS);
    int first = env_int("CRASH_SEED_FIRST", 0);
    for (int s = first; s < first + seeds; s++) {
        crash_seed((uint64_t)s, env_int("CRASH_POINTS", SANITIZED_BUILD ? 3 : 10));
    }
}

/* Regression (seed 7019, an external data file): a durable zero write, then
 * a whole-cluster write at the same place; the L2 entry without the zero
 * flag reached the disk, the data file's write did not (only a
 * copy-on-write flushed that file), and the cluster showed what the data
 * file held there before the zeros. */
static void test_data_file_flushed_before_l2(void **state)
{
    (void)state;
    assert_int_equal(7019 % NCFGS, 14);
    assert_non_null(strstr(cfgs[14].create, "data_file"));
    crash_seed(7019, 20);
}

static int setup(void **state)
{
    (void)state;
    test_tmpdir_create("qcow2-crash");
    return 0;
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cow_data_before_l2),
        cmocka_unit_test(test_reused_cluster_not_exposed),
        cmocka_unit_test(test_compressed_data_before_l2),
        cmocka_unit_test(test_data_file_flushed_before_l2),
        cmocka_unit_test(test_crash_random),
    };
    return cmocka_run_group_tests_name("qcow2-crash", tests, setup, test_tmpdir_teardown);
}
