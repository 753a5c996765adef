/*
 * test-qcow2-diff.c - differential random-operation test of the qcow2
 * driver: the same random writes (any byte range), zero writes (with and
 * without unmap), discards and compressed writes (whole clusters) go
 * through the driver, several at a time
 * from coroutines, and into a model (a byte array).  After each batch the
 * whole image is read and compared with the model, and the image file is
 * checked (qcow2-refcheck.h: no errors, no refcount below its references,
 * no COPIED mismatch, no leak; the driver's own check once it has one).
 * At the end the image is closed, reopened and compared again.
 *
 * Images are made by the driver's create (every layout option the
 * configurations name) and run in an in-memory file (crash-file.h, never
 * crashed).  DIFF_SEEDS=N runs N seeds (default: two per configuration).
 * tests/interop/test_qcow2_diff.sh does the same through `ublkd img io`
 * with qemu-img check and qemu-img convert as the judges.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
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

typedef struct DCfg {
    const char *opts;
    bool backing;
    uint64_t size;
} DCfg;

static const DCfg dcfgs[] = {
    { "cluster_size=65536", true, 4 * MiB },
    { "cluster_size=512", false, 512 * KiB },
    { "cluster_size=4096,refcount_bits=1", true, 2 * MiB },
    { "cluster_size=512,refcount_bits=64", true, 256 * KiB },
    { "compat=0.10,cluster_size=4096", false, 2 * MiB },
    { "compat=0.10,cluster_size=4096", true, 2 * MiB },
    { "lazy_refcounts=on,cluster_size=4096", true, 2 * MiB },
    { "extended_l2=on,cluster_size=16384", true, 2 * MiB },
    { "extended_l2=on", false, 4 * MiB },
    { "cluster_size=1024,refcount_bits=8", false, 1 * MiB },
    { "cluster_size=2097152", true, 8 * MiB },
    /* an external data file ('@': its path), plain and raw */
    { "cluster_size=4096,data_file=@", true, 2 * MiB },
    { "cluster_size=65536,data_file=@,data_file_raw=on", false, 2 * MiB },
};
#define NDCFGS ((int)(sizeof(dcfgs) / sizeof(dcfgs[0])))

typedef enum { D_WRITE, D_ZERO, D_ZERO_UNMAP, D_DISCARD, D_COMPRESSED } DKind;

typedef struct DOp {
    DKind kind;
    int64_t off, len;
    uint64_t pattern;
    int ret;
} DOp;

typedef struct Diff {
    const DCfg *cfg;
    uint64_t seed, rng;
    uint32_t cs;
    bool v2;
    BlockDriverState *file, *base, *dfile;
    BlockDriverState *bs;
    BdrvChild *child;
    uint8_t *model, *backing;
    bool compress;              /* the image takes compressed writes */
    size_t backing_len;
    int running;
} Diff;

static uint64_t drnd(Diff *d)
{
    uint64_t z = (d->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t dbelow(Diff *d, uint64_t n)
{
    return n ? drnd(d) % n : 0;
}

typedef struct DCo {
    Diff *d;
    DOp *op;
} DCo;

/* Compressible data for a compressed write: a few random bytes per sector
 * on a constant fill. */
static void compressible(uint8_t *buf, int64_t len, uint64_t pattern)
{
    memset(buf, (int)(pattern & 0xff), (size_t)len);
    for (int64_t i = 0; i < len; i += 512) {
        test_pattern(buf + i, 16, pattern + (uint64_t)i);
    }
}

static void coroutine_fn dop_co(void *opaque)
{
    DCo *c = opaque;
    DOp *op = c->op;
    Diff *d = c->d;
    switch (op->kind) {
    case D_COMPRESSED: {
        uint8_t *buf = malloc((size_t)op->len);
        assert_non_null(buf);
        compressible(buf, op->len, op->pattern);
        IOVector q;
        iov_init_buf(&q, buf, (size_t)op->len);
        op->ret = bdrv_co_pwritev(d->child, op->off, op->len, &q, BDRV_REQ_WRITE_COMPRESSED);
        free(buf);
        break;
    }
    case D_WRITE: {
        uint8_t *buf = malloc((size_t)op->len);
        assert_non_null(buf);
        test_pattern(buf, (size_t)op->len, op->pattern);
        IOVector q;
        iov_init_buf(&q, buf, (size_t)op->len);
        op->ret = bdrv_co_pwritev(d->child, op->off, op->len, &q, 0);
        free(buf);
        break;
    }
    case D_ZERO:
    case D_ZERO_UNMAP:
        op->ret = bdrv_co_pwrite_zeroes(d->child, op->off, op->len,
                                        op->kind == D_ZERO_UNMAP ? BDRV_REQ_MAY_UNMAP : 0);
        break;
    case D_DISCARD:
        op->ret = bdrv_co_pdiscard(d->child, op->off, op->len);
        break;
    }
    d->running--;
    free(c);
}

/* What op does to the model. */
static void model_apply(Diff *d, const DOp *op)
{
    switch (op->kind) {
    case D_COMPRESSED:
        compressible(d->model + op->off, op->len, op->pattern);
        break;
    case D_WRITE:
        test_pattern(d->model + op->off, (size_t)op->len, op->pattern);
        break;
    case D_ZERO:
    case D_ZERO_UNMAP:
        memset(d->model + op->off, 0, (size_t)op->len);
        break;
    case D_DISCARD: {
        /* whole clusters read as zeros after (v2 with a backing file keeps
         * them: it has no zero flag); partial ones are left alone */
        if (d->v2 && d->cfg->backing) {
            break;
        }
        int64_t a = ALIGN_UP(op->off, (int64_t)d->cs), b = ALIGN_DOWN(op->off + op->len, (int64_t)d->cs);
        if (a < b) {
            memset(d->model + a, 0, (size_t)(b - a));
        }
        break;
    }
    }
}

static void diff_open(Diff *d, const char *filename)
{
    OptDict *o = optdict_new();
    optdict_set(o, "driver", "qcow2");
    optdict_set(o, "file", d->file->node_name);
    if (d->dfile) {
        optdict_set(o, "data-file", d->dfile->node_name);
    }
    if (d->cfg->backing) {
        optdict_set(o, "backing", d->base->node_name);
    }
    (void)filename;
    Error *err = NULL;
    d->bs = bdrv_open(NULL, o, BDRV_O_RDWR | BDRV_O_UNMAP, &err);
    if (!d->bs) {
        fail_msg("seed %" PRIu64 " (%s): open: %s", d->seed, d->cfg->opts, error_get_pretty(err));
    }
    d->child = test_child_new(d->bs);
    /* an external data file takes no compressed clusters (-ENOTSUP, as QEMU) */
    d->compress = bdrv_supports_compressed_writes(d->bs) && !d->dfile;
}

static void diff_close(Diff *d)
{
    test_child_free(d->child);
    bdrv_unref(d->bs);
    d->child = NULL;
    d->bs = NULL;
}

/* The image reads as the model, and its file is consistent with no leaks. */
static void diff_compare(Diff *d, const char *when)
{
    uint8_t *buf = malloc(d->cfg->size);
    assert_non_null(buf);
    assert_true(bdrv_pread(d->child, 0, (int64_t)d->cfg->size, buf, 0) >= 0);
    bool same = !memcmp(buf, d->model, d->cfg->size);
    for (uint64_t i = 0; !same && i < d->cfg->size; i++) {
        if (buf[i] != d->model[i]) {
            fail_msg("seed %" PRIu64 " (%s%s) %s: byte 0x%" PRIx64 " is 0x%02x, the model has 0x%02x",
                     d->seed, d->cfg->opts, d->cfg->backing ? ", backing" : "", when, i, buf[i],
                     d->model[i]);
        }
    }
    free(buf);
    assert_int_equal(bdrv_flush(d->bs), 0);
    size_t len;
    const uint8_t *img = crash_file_current(d->file, &len);
    Q2Check c = q2_refcheck(img, len);
    if (c.errors || c.low || c.copied || c.leaks) {
        fail_msg("seed %" PRIu64 " (%s) %s: %d errors, %d refcounts too low, %d COPIED mismatches,"
                 " %d leaks: %s", d->seed, d->cfg->opts, when, c.errors, c.low, c.copied, c.leaks,
                 c.first);
    }
    BdrvCheckResult res;
    int ret = bdrv_check(d->bs, &res, 0);
    if (ret != -ENOTSUP) {
        assert_int_equal(ret, 0);
        if (res.corruptions || res.leaks || res.check_errors) {
            fail_msg("seed %" PRIu64 " (%s) %s: check: %d corruptions, %d leaks, %d errors",
                     d->seed, d->cfg->opts, when, res.corruptions, res.leaks, res.check_errors);
        }
    }
}

static void diff_batch(Diff *d)
{
    DOp ops[6];
    int n = 1 + (int)dbelow(d, 6);
    int64_t size = (int64_t)d->cfg->size, cs = d->cs;
    int k = 0;
    for (int i = 0; i < n; i++) {
        DOp op = { .pattern = drnd(d) };
        uint64_t p = dbelow(d, 100);
        op.kind = p < 60 ? D_WRITE : p < 72 ? D_ZERO : p < 84 ? D_ZERO_UNMAP : D_DISCARD;
        int64_t area = dbelow(d, 2) ? size / 8 : size;
        int64_t max = MIN(4 * cs, (int64_t)(256 * KiB));
        op.len = 1 + (int64_t)dbelow(d, (uint64_t)max);
        if (dbelow(d, 3) == 0) {
            op.len = ALIGN_UP(op.len, cs);
        }
        op.len = MIN(op.len, area);
        op.off = (int64_t)dbelow(d, (uint64_t)(area - op.len + 1));
        if (dbelow(d, 3) == 0) {
            op.off = ALIGN_DOWN(op.off, cs);
        }
        /* compressed writes: whole clusters, where the image takes them */
        if (op.kind == D_WRITE && d->compress && dbelow(d, 4) == 0) {
            op.kind = D_COMPRESSED;
            op.off = ALIGN_DOWN(op.off, cs);
            op.len = MIN(ALIGN_UP(op.len, cs), size - op.off);
        }
        /* disjoint bytes, so the outcome does not depend on the order */
        bool clash = false;
        for (int j = 0; j < k; j++) {
            int64_t lo = ops[j].off, hi = ops[j].off + ops[j].len;
            if (ops[j].kind == D_DISCARD || op.kind == D_DISCARD) {
                /* a discard acts on whole clusters: keep clusters apart */
                lo = ALIGN_DOWN(lo, cs);
                hi = ALIGN_UP(hi, cs);
            }
            if (op.off < hi && lo < op.off + op.len) {
                clash = true;
            }
        }
        if (!clash) {
            ops[k++] = op;
        }
    }
    AioContext *ctx = test_loop_init();
    d->running = k;
    for (int i = 0; i < k; i++) {
        DCo *c = malloc(sizeof(*c));
        assert_non_null(c);
        *c = (DCo){ d, &ops[i] };
        co_enter(co_create(dop_co, c));
    }
    while (d->running > 0) {
        aio_poll(ctx, true);
    }
    for (int i = 0; i < k; i++) {
        if (ops[i].ret < 0) {
            fail_msg("seed %" PRIu64 " (%s): op kind %d at %" PRId64 "+%" PRId64 ": %s", d->seed,
                     d->cfg->opts, ops[i].kind, ops[i].off, ops[i].len, strerror(-ops[i].ret));
        }
        model_apply(d, &ops[i]);
    }
}

/* A file's bytes (then the file goes). */
static uint8_t *slurp(const char *path, struct stat *st)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_int_equal(fstat(fileno(f), st), 0);
    uint8_t *buf = malloc((size_t)st->st_size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)st->st_size, f), (size_t)st->st_size);
    fclose(f);
    unlink(path);
    return buf;
}

static void diff_seed(uint64_t seed)
{
    Diff d = { .cfg = &dcfgs[seed % NDCFGS], .seed = seed, .rng = seed * 977 + 1 };
    char path[256], name[64];
    static int serial;
    Error *err = NULL;

    /* the driver's create, into a file; then the bytes into memory */
    char dpath[256], opts[512];
    snprintf(path, sizeof(path), "%s/diff%d.qcow2", test_tmpdir(), serial);
    snprintf(dpath, sizeof(dpath), "%s/diff%d.raw", test_tmpdir(), serial);
    const char *at = strchr(d.cfg->opts, '@');
    if (at) {
        snprintf(opts, sizeof(opts), "%.*s%s%s", (int)(at - d.cfg->opts), d.cfg->opts, dpath,
                 at + 1);
    } else {
        snprintf(opts, sizeof(opts), "%s", d.cfg->opts);
    }
    OptDict *o = optdict_parse(opts, NULL, NULL);
    char sz[32];
    snprintf(sz, sizeof(sz), "%" PRIu64, d.cfg->size);
    optdict_set(o, "size", sz);
    int ret = bdrv_create(bdrv_find_format("qcow2"), path, o, &err);
    optdict_free(o);
    if (ret < 0) {
        fail_msg("create %s: %s", d.cfg->opts, err ? error_get_pretty(err) : strerror(-ret));
    }
    struct stat st;
    uint8_t *init = slurp(path, &st);
    if (at) {
        struct stat dst;
        uint8_t *dinit = slurp(dpath, &dst);
        snprintf(name, sizeof(name), "diffdata%d", serial);
        d.dfile = crash_file_new(name, dinit, (size_t)dst.st_size);
        free(dinit);
    }
    d.cs = 1u << qcow2_ld32(init, QH_CLUSTER_BITS);
    d.v2 = qcow2_ld32(init, QH_VERSION) == 2;
    snprintf(name, sizeof(name), "difffile%d", serial);
    d.file = crash_file_new(name, init, (size_t)st.st_size);
    free(init);

    d.model = calloc(1, d.cfg->size);
    assert_non_null(d.model);
    if (d.cfg->backing) {
        d.backing_len = d.cfg->size - d.cfg->size / 4 + 777;     /* shorter, odd */
        d.backing = malloc(d.backing_len);
        assert_non_null(d.backing);
        test_pattern(d.backing, d.backing_len, seed + 0xba5e);
        snprintf(name, sizeof(name), "diffbase%d", serial);
        MemConfig bcfg = { .size = (int64_t)d.backing_len, .node_name = name };
        d.base = mem_node_new(&bcfg);
        mem_write_raw(d.base, 0, d.backing, (int64_t)d.backing_len);
        memcpy(d.model, d.backing, d.backing_len);
    }
    serial++;

    diff_open(&d, path);
    int batches = (SANITIZED_BUILD ? 6 : 12) + (int)dbelow(&d, 12);
    for (int b = 0; b < batches; b++) {
        diff_batch(&d);
        char when[32];
        snprintf(when, sizeof(when), "after batch %d", b);
        diff_compare(&d, when);
    }
    diff_close(&d);
    size_t len;
    const uint8_t *img = crash_file_current(d.file, &len);
    Q2Check c = q2_refcheck(img, len);
    assert_false(c.dirty);
    diff_open(&d, path);
    diff_compare(&d, "after reopening");
    diff_close(&d);

    bdrv_unref(d.file);
    if (d.dfile) {
        bdrv_unref(d.dfile);
    }
    if (d.base) {
        bdrv_unref(d.base);
    }
    free(d.model);
    free(d.backing);
}

static void test_diff_random(void **state)
{
    (void)state;
    const char *v = getenv("DIFF_SEEDS");
    const char *f = getenv("DIFF_SEED_FIRST");
    int seeds = v && *v ? atoi(v) : (SANITIZED_BUILD ? 1 : 2) * NDCFGS;
    int first = f && *f ? atoi(f) : 0;
    for (int s = first; s < first + seeds; s++) {
        diff_seed((uint64_t)s);
    }
}

static int setup(void **state)
{
    (void)state;
    test_tmpdir_create("qcow2-diff");
    return 0;
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diff_random),
    };
    return cmocka_run_group_tests_name("qcow2-diff", tests, setup, test_tmpdir_teardown);
}
