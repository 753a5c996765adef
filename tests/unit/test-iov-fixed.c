/*
 * test-iov-fixed.c - registered-buffer references (include/iov.h) through the
 * request path.  An ordinary malloc'd buffer registered with the test
 * thread's ring stands in for the pages ublk zero copy registers: requests
 * carry only its index and offset, never its address, and the test checks
 * the buffer itself.  Covers the representation (slicing, merging, kinds),
 * the ring op (READ_FIXED/WRITE_FIXED, wrong ring, bad index), copies
 * through the ring, the file protocol buffered and O_DIRECT at swept offsets
 * and lengths across max_transfer splits, raw with offset=, vdi, the bounce
 * for layers that must see the bytes, and vectors mixing both kinds.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "test-util.h"
#include "iov-fixed.h"
#include "../../io/block-io-int.h"
#ifdef CONFIG_CRYPTO
#include "crypto.h"
#endif

#define REGBUF_SIZE (1 * MiB)
#define FILE_SIZE   (1 * MiB)

static uint8_t *regbuf;          /* the stand-in: only the test looks at it */
static int regidx;
static unsigned ring;

static int setup(void **state)
{
    (void)state;
    test_tmpdir_create("iov-fixed");
    AioContext *ctx = test_loop_init();
    regbuf = aligned_alloc_or_die(4096, REGBUF_SIZE);
    regidx = aio_fixed_buffer_add(ctx, regbuf, REGBUF_SIZE);
    if (regidx < 0) {
        fprintf(stderr, "cannot register a buffer: %s\n", strerror(-regidx));
        return -1;
    }
    ring = aio_ring_id(ctx);
    return 0;
}

static int teardown(void **state)
{
    assert_int_equal(aio_fixed_buffer_remove(test_loop_init(), (unsigned)regidx), 0);
    free(regbuf);
    return test_tmpdir_teardown(state);
}

/* A vector of one reference to [off, off+len) of the stand-in. */
static void ref_vec(IOVector *q, size_t off, size_t len)
{
    iov_init(q, 0);
    iov_add_reg(q, ring, (unsigned)regidx, off, len);
}

static void make_file(const char *path, size_t size, uint64_t seed)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    uint8_t *buf = malloc(size);
    test_pattern(buf, size, seed);
    assert_int_equal(pwrite(fd, buf, size, 0), (ssize_t)size);
    free(buf);
    close(fd);
}

static void read_file(const char *path, int64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
    close(fd);
}

static BlockDriverState *open_opts(const char *opts, int flags)
{
    Error *err = NULL;
    BlockDriverState *bs = bdrv_open(NULL, optdict_parse(opts, NULL, NULL), flags, &err);
    if (!bs) {
        fail_msg("open %s: %s", opts, error_get_pretty(err));
    }
    return bs;
}

typedef struct Rw {
    BdrvChild *c;
    int64_t off, bytes;
    IOVector *q;
    size_t qoff;
    bool write;
    BdrvRequestFlags flags;
    int ret;
} Rw;

static void coroutine_fn rw_entry(void *opaque)
{
    Rw *r = opaque;
    r->ret = r->write ? bdrv_co_pwritev_part(r->c, r->off, r->bytes, r->q, r->qoff, r->flags)
                      : bdrv_co_preadv_part(r->c, r->off, r->bytes, r->q, r->qoff, r->flags);
}

static int do_rw(BdrvChild *c, bool write, int64_t off, int64_t bytes, IOVector *q, size_t qoff,
                 BdrvRequestFlags flags)
{
    Rw r = { c, off, bytes, q, qoff, write, flags, -1 };
    test_run_co(rw_entry, &r);
    return r.ret;
}

/* ------------------------------------------------------------ representation */

static void test_representation(void **state)
{
    (void)state;
    IOVector q, s;
    ref_vec(&q, 4096, 8192);
    assert_int_equal(q.niov, 1);
    assert_true(iov_base_is_reg(q.iov[0].iov_base));
    assert_int_equal(iov_reg_index(q.iov[0].iov_base), regidx);
    assert_int_equal(iov_reg_ring(q.iov[0].iov_base), ring);
    assert_int_equal(iov_reg_offset(q.iov[0].iov_base), 4096);
    /* Adjacent references merge; a gap or another index does not. */
    iov_add_reg(&q, ring, (unsigned)regidx, 12288, 100);
    assert_int_equal(q.niov, 1);
    assert_int_equal(q.size, 8292);
    iov_add_reg(&q, ring, (unsigned)regidx + 1, 12388, 100);
    assert_int_equal(q.niov, 2);
    uint8_t m[64];
    iov_add(&q, m, sizeof(m));
    assert_int_equal(q.niov, 3);
    /* A slice of a reference is a reference at the right offset. */
    iov_init_slice(&s, &q, 1000, 5000);
    assert_int_equal(s.niov, 1);
    assert_int_equal(iov_reg_offset(s.iov[0].iov_base), 5096);
    assert_int_equal(s.iov[0].iov_len, 5000);
    iov_destroy(&s);
    assert_int_equal(iov_kind(&q, 0, 100), IOV_KIND_REG);
    assert_int_equal(iov_kind(&q, 8292 + 100, 10), IOV_KIND_MAPPED);
    assert_int_equal(iov_kind(&q, 8000, 1000), IOV_KIND_MIXED);
    assert_int_equal(iov_kind(&q, 0, 0), IOV_KIND_NONE);
    /* No user pointer has bit 63 set. */
    assert_false(iov_base_is_reg(m));
    assert_false(iov_base_is_reg(regbuf));
    iov_destroy(&q);
}

/* ---------------------------------------------------------- the ring op */

typedef struct RawOp {
    int fd;
    struct iovec iov[3];
    int niov;
    bool write;
    int64_t off;
    ssize_t ret;
} RawOp;

static void coroutine_fn raw_op_entry(void *opaque)
{
    RawOp *o = opaque;
    o->ret = o->write ? aio_co_pwritev(o->fd, o->iov, o->niov, o->off, 0)
                      : aio_co_preadv(o->fd, o->iov, o->niov, o->off);
}

static ssize_t raw_op(int fd, bool write, struct iovec *iov, int niov, int64_t off)
{
    RawOp o = { .fd = fd, .niov = niov, .write = write, .off = off, .ret = -1 };
    memcpy(o.iov, iov, (size_t)niov * sizeof(*iov));
    test_run_co(raw_op_entry, &o);
    return o.ret;
}

static void test_ring_op_and_misuse(void **state)
{
    (void)state;
    const char *p = test_path("op.img");
    make_file(p, 64 * KiB, 3);
    int fd = open(p, O_RDWR);
    uint8_t expect[8192], got[8192];
    test_pattern(expect, sizeof(expect), 3);

    /* READ_FIXED into the middle of the stand-in. */
    memset(regbuf, 0xee, 3 * 4096);
    struct iovec ref = { iov_reg_cookie(ring, (unsigned)regidx, 4096 + 3), 4000 };
    assert_int_equal(raw_op(fd, false, &ref, 1, 17), 4000);
    assert_memory_equal(regbuf + 4096 + 3, expect + 17, 4000);
    assert_true(test_buf_is(regbuf + 4096, 3, 0xee));
    assert_true(test_buf_is(regbuf + 4096 + 4003, 93, 0xee));

    /* WRITE_FIXED out of it. */
    test_pattern(regbuf, 8192, 77);
    ref = (struct iovec){ iov_reg_cookie(ring, (unsigned)regidx, 100), 5000 };
    assert_int_equal(raw_op(fd, true, &ref, 1, 30000), 5000);
    read_file(p, 30000, got, 5000);
    assert_memory_equal(got, regbuf + 100, 5000);

    /* Past the registered buffer, an empty index, another ring's id, a
     * reference inside a multi-element vector: refused, nothing submitted. */
    ref = (struct iovec){ iov_reg_cookie(ring, (unsigned)regidx, REGBUF_SIZE - 10), 11 };
    assert_int_equal(raw_op(fd, false, &ref, 1, 0), -EINVAL);
    ref = (struct iovec){ iov_reg_cookie(ring, (unsigned)regidx + 1, 0), 512 };
    assert_int_equal(raw_op(fd, false, &ref, 1, 0), -ENOENT);
    ref = (struct iovec){ iov_reg_cookie(ring + 1, (unsigned)regidx, 0), 512 };
    assert_int_equal(raw_op(fd, false, &ref, 1, 0), -EXDEV);
    struct iovec two[2] = { { got, 512 }, { iov_reg_cookie(ring, (unsigned)regidx, 0), 512 } };
    assert_int_equal(raw_op(fd, false, two, 2, 0), -EINVAL);
    close(fd);
}

/* A reference used on a thread whose ring does not own the buffer: the
 * request path fails it with -EXDEV instead of reading into whatever that
 * ring has at the index. */
static void test_other_ring_refused(void **state)
{
    (void)state;
    const char *p = test_path("xring.img");
    make_file(p, 64 * KiB, 4);
    char opts[600];
    snprintf(opts, sizeof(opts), "driver=file,filename=%s", p);
    BlockDriverState *bs = open_opts(opts, BDRV_O_RDWR | BDRV_O_PROTOCOL);
    BdrvChild *c = test_child_new(bs);

    AioContext *mine = test_loop_init();
    Error *err = NULL;
    AioContext *other = aio_context_new(0, &err);
    assert_non_null(other);
    aio_fixed_buffer_add(other, regbuf, 4096);   /* same index there, another ring */
    aio_set_current(other);
    IOVector q;
    ref_vec(&q, 0, 4096);
    int ret = do_rw(c, false, 0, 4096, &q, 0, 0);
    aio_set_current(mine);
    aio_context_free(other);
    assert_int_equal(ret, -EXDEV);
    iov_destroy(&q);
    test_child_free(c);
    bdrv_unref(bs);
}

/* A table of buffers the kernel registers (ublk zero copy): nothing of ours
 * may take an index, a reference goes out only while its index is marked
 * held (else -ENOENT, nothing submitted), and what the ring then finds
 * there is the kernel's business (here: nothing, so the op fails). */
static void test_kernel_buffer_table(void **state)
{
    (void)state;
    const char *p = test_path("ktable.img");
    make_file(p, 64 * KiB, 5);
    int fd = open(p, O_RDWR);
    AioContext *mine = test_loop_init();
    Error *err = NULL;
    AioContext *k = aio_context_new(0, &err);
    assert_non_null(k);
    aio_set_current(k);
    assert_int_equal(aio_kernel_buffers_init(k, 8), 0);
    assert_int_equal(aio_kernel_buffers_init(k, 8), -EBUSY);
    assert_int_equal(aio_fixed_buffer_add(k, regbuf, 4096), -EBUSY);
    assert_int_equal(aio_fixed_buffer_remove(k, 3), -EBUSY);
    unsigned kr = aio_ring_id(k);
    struct iovec ref = { iov_reg_cookie(kr, 3, 0), 4096 };
    assert_int_equal(raw_op(fd, false, &ref, 1, 0), -ENOENT);
    aio_kernel_buffer_set(k, 3, 4096);
    ssize_t ret = raw_op(fd, false, &ref, 1, 0);
    assert_true(ret < 0 && ret != -ENOENT);          /* reached the ring: an empty slot */
    ref.iov_len = 4097;
    assert_int_equal(raw_op(fd, false, &ref, 1, 0), -EINVAL);   /* past what is held */
    ref = (struct iovec){ iov_reg_cookie(kr, 8, 0), 512 };
    assert_int_equal(raw_op(fd, false, &ref, 1, 0), -ENOENT);   /* past the table */
    aio_kernel_buffer_clear(k, 3);
    ref = (struct iovec){ iov_reg_cookie(kr, 3, 0), 4096 };
    assert_int_equal(raw_op(fd, false, &ref, 1, 0), -ENOENT);
    aio_set_current(mine);
    aio_context_free(k);
    close(fd);
}

/* ------------------------------------------------------ copies via the ring */

typedef struct CopyCo {
    IOVector *q;
    size_t off, len;
    uint8_t *buf;
    int op;   /* 0 to_buf, 1 from_buf, 2 zero */
    int ret;
} CopyCo;

static void coroutine_fn copy_entry(void *opaque)
{
    CopyCo *c = opaque;
    c->ret = c->op == 0 ? iov_co_to_buf(c->q, c->off, c->buf, c->len)
           : c->op == 1 ? iov_co_from_buf(c->q, c->off, c->buf, c->len)
                        : iov_co_zero(c->q, c->off, c->len);
}

static void test_copy_through_ring(void **state)
{
    (void)state;
    /* [ref 300 KiB at 5][mapped 1000][ref 7 at 400 KiB]: pieces larger than a
     * staging slot, unaligned, and mixed. */
    static uint8_t mapped[1000];
    size_t total = 300 * KiB + 1000 + 7;
    uint8_t *want = malloc(total), *got = malloc(total);
    IOVector q;
    iov_init(&q, 0);
    iov_add_reg(&q, ring, (unsigned)regidx, 5, 300 * KiB);
    iov_add(&q, mapped, sizeof(mapped));
    iov_add_reg(&q, ring, (unsigned)regidx, 400 * KiB, 7);

    test_pattern(want, total, 5);
    CopyCo c = { &q, 0, total, want, 1, -1 };
    test_run_co(copy_entry, &c);
    assert_int_equal(c.ret, 0);
    assert_memory_equal(regbuf + 5, want, 300 * KiB);
    assert_memory_equal(mapped, want + 300 * KiB, 1000);
    assert_memory_equal(regbuf + 400 * KiB, want + 300 * KiB + 1000, 7);

    c = (CopyCo){ &q, 17, total - 20, got, 0, -1 };
    test_run_co(copy_entry, &c);
    assert_int_equal(c.ret, 0);
    assert_memory_equal(got, want + 17, total - 20);

    c = (CopyCo){ &q, 1000, total - 1003, NULL, 2, -1 };
    test_run_co(copy_entry, &c);
    assert_int_equal(c.ret, 0);
    assert_memory_equal(regbuf + 5, want, 1000);
    assert_true(test_buf_is(regbuf + 1005, 300 * KiB - 1000, 0));
    assert_true(test_buf_is(mapped, sizeof(mapped), 0));
    assert_true(test_buf_is(regbuf + 400 * KiB, 4, 0));
    assert_memory_equal(regbuf + 400 * KiB + 4, want + total - 3, 3);
    iov_destroy(&q);
    free(want);
    free(got);
}

/* ---------------------------------------- sweeps through the request path */

/*
 * Read and write [off, off+len) of c's node through a reference at regoff,
 * for a sweep of offsets and lengths; `model` is what the node holds (kept
 * in step), `path`/`file_base` where its bytes are in the host file.
 */
static void sweep(BdrvChild *c, uint8_t *model, int64_t size, const char *path,
                  int64_t file_base, const int64_t *offs, int noffs, const int64_t *lens,
                  int nlens, const size_t *regoffs, int nregoffs)
{
    uint8_t *file = malloc((size_t)size);
    uint64_t seed = 1000;
    for (int i = 0; i < noffs; i++) {
        for (int j = 0; j < nlens; j++) {
            for (int k = 0; k < nregoffs; k++) {
                int64_t off = offs[i], len = lens[j];
                size_t ro = regoffs[k];
                if (off + len > size) {
                    continue;
                }
                IOVector q;
                ref_vec(&q, ro, (size_t)len);
                /* read: exactly the range lands at regoff, nothing around it */
                memset(regbuf, 0x5a, (size_t)(ro + len + 64));
                assert_int_equal(do_rw(c, false, off, len, &q, 0, 0), 0);
                if (memcmp(regbuf + ro, model + off, (size_t)len)) {
                    fail_msg("read off %lld len %lld regoff %zu: wrong data",
                             (long long)off, (long long)len, ro);
                }
                assert_true(test_buf_is(regbuf, ro, 0x5a));
                assert_true(test_buf_is(regbuf + ro + len, 64, 0x5a));
                /* write: new bytes from the stand-in land at off */
                test_pattern(regbuf + ro, (size_t)len, seed++);
                assert_int_equal(do_rw(c, true, off, len, &q, 0, 0), 0);
                memcpy(model + off, regbuf + ro, (size_t)len);
                iov_destroy(&q);
            }
        }
    }
    if (path) {
        read_file(path, file_base, file, (size_t)size);
        assert_memory_equal(file, model, (size_t)size);
    }
    free(file);
}

static const int64_t sweep_offs[] = { 0, 1, 511, 512, 4095, 4096, 20000, 65536 - 512 };
static const int64_t sweep_lens[] = { 1, 512, 4096, 4097, 12288, 65536 + 512, 200 * KiB };
static const size_t sweep_regoffs[] = { 0, 4096, 7 };

static void file_sweep(bool direct)
{
    const char *p = test_path(direct ? "sweep-direct.img" : "sweep.img");
    make_file(p, FILE_SIZE, 21);
    char opts[600];
    snprintf(opts, sizeof(opts), "driver=file,filename=%s%s", p, direct ? ",cache.direct=on" : "");
    BlockDriverState *bs = open_opts(opts, BDRV_O_RDWR | BDRV_O_PROTOCOL);
    assert_int_equal(bs->bl.request_alignment > 1, direct);
    bs->bl.max_transfer = 16 * KiB;   /* splits: each piece a reference slice */
    BdrvChild *c = test_child_new(bs);
    uint8_t *model = malloc(FILE_SIZE);
    test_pattern(model, FILE_SIZE, 21);

    uint64_t before = bdrv_mapped_bounce_count();
    /* Aligned requests at an aligned reference pass the reference down. */
    static const int64_t aoffs[] = { 0, 4096, 65536 };
    static const int64_t alens[] = { 4096, 16 * KiB, 16 * KiB + 4096, 200 * KiB };
    static const size_t aregoffs[] = { 0, 8192 };
    sweep(c, model, FILE_SIZE, p, 0, aoffs, 3, alens, 4, aregoffs, 2);
    assert_int_equal(bdrv_mapped_bounce_count(), before);

    /* Everything else: padded (O_DIRECT) or passed through (buffered). */
    sweep(c, model, FILE_SIZE, p, 0, sweep_offs, ARRAY_SIZE(sweep_offs), sweep_lens,
          ARRAY_SIZE(sweep_lens), sweep_regoffs, ARRAY_SIZE(sweep_regoffs));
    if (direct) {
        assert_true(bdrv_mapped_bounce_count() > before);
    } else {
        assert_int_equal(bdrv_mapped_bounce_count(), before);
    }
    free(model);
    test_child_free(c);
    bdrv_unref(bs);
}

static void test_file_buffered_sweep(void **state)
{
    (void)state;
    file_sweep(false);
}

static void test_file_direct_sweep(void **state)
{
    (void)state;
    file_sweep(true);
}

typedef struct DrvRead {
    BlockDriverState *bs;
    IOVector *q;
    int ret;
} DrvRead;

static void coroutine_fn drv_read_entry(void *opaque)
{
    DrvRead *x = opaque;
    x->ret = x->bs->drv->co_preadv(x->bs, 0, 4096, x->q, 0, 0);
}

/* EOF inside a reference read: the rest of the reference is zeroed through
 * the ring. */
static void test_file_eof_zero_fill(void **state)
{
    (void)state;
    for (int direct = 0; direct <= 1; direct++) {
        const char *p = test_path(direct ? "eof-d.img" : "eof.img");
        make_file(p, 1000, 11);
        char opts[600];
        snprintf(opts, sizeof(opts), "driver=file,filename=%s%s", p,
                 direct ? ",cache.direct=on" : "");
        BlockDriverState *bs = open_opts(opts, BDRV_O_PROTOCOL);
        memset(regbuf, 0xaa, 8192);
        IOVector q;
        ref_vec(&q, 4096, 4096);
        /* through the driver: the request path stops reads at the node's end */
        DrvRead d = { bs, &q, -1 };
        test_run_co(drv_read_entry, &d);
        assert_int_equal(d.ret, 0);
        uint8_t expect[1000];
        test_pattern(expect, sizeof(expect), 11);
        assert_memory_equal(regbuf + 4096, expect, 1000);
        assert_true(test_buf_is(regbuf + 4096 + 1000, 3096, 0));
        assert_true(test_buf_is(regbuf, 4096, 0xaa));
        iov_destroy(&q);
        bdrv_unref(bs);
    }
}

/* raw with offset= (and size=): a window onto the file, references passed
 * through at the shifted offset; past the window refused. */
static void test_raw_offset_sweep(void **state)
{
    (void)state;
    require_driver("raw");
    for (int direct = 0; direct <= 1; direct++) {
        const char *p = test_path(direct ? "raw-d.img" : "raw.img");
        make_file(p, FILE_SIZE, 31);
        char opts[700];
        snprintf(opts, sizeof(opts), "driver=raw,offset=65536,size=524288,file.filename=%s%s",
                 p, direct ? ",file.cache.direct=on" : "");
        BlockDriverState *bs = open_opts(opts, BDRV_O_RDWR);
        bs->file->bs->bl.max_transfer = 16 * KiB;
        BdrvChild *c = test_child_new(bs);
        uint8_t *model = malloc(FILE_SIZE);
        test_pattern(model, FILE_SIZE, 31);
        sweep(c, model + 65536, 524288, NULL, 0, sweep_offs, ARRAY_SIZE(sweep_offs),
              sweep_lens, ARRAY_SIZE(sweep_lens), sweep_regoffs, ARRAY_SIZE(sweep_regoffs));
        uint8_t *file = malloc(FILE_SIZE);
        read_file(p, 0, file, FILE_SIZE);
        assert_memory_equal(file, model, FILE_SIZE);   /* outside the window untouched */
        /* A read across the window's end: zeros past it, set through the ring. */
        IOVector q;
        ref_vec(&q, 0, 4096);
        memset(regbuf, 0x77, 4096);
        assert_int_equal(do_rw(c, false, 524288 - 2048, 4096, &q, 0, 0), 0);
        assert_memory_equal(regbuf, model + 65536 + 524288 - 2048, 2048);
        assert_true(test_buf_is(regbuf + 2048, 2048, 0));
        iov_destroy(&q);
        free(file);
        free(model);
        test_child_free(c);
        bdrv_unref(bs);
    }
}

/* vdi: reads of allocated and unallocated blocks, allocating writes (zero
 * padding around the reference: a mixed vector the file splits), writes in
 * place, across a block boundary; O_DIRECT and buffered. */
static void test_vdi(void **state)
{
    (void)state;
    require_driver("vdi");
    for (int direct = 0; direct <= 1; direct++) {
        const char *p = test_path(direct ? "zc-d.vdi" : "zc.vdi");
        Error *err = NULL;
        unlink(p);
        OptDict *co = optdict_parse("size=4M", NULL, NULL);
        if (bdrv_create(bdrv_find_format("vdi"), p, co, &err) < 0) {
            fail_msg("create: %s", error_get_pretty(err));
        }
        optdict_free(co);
        char opts[700];
        snprintf(opts, sizeof(opts), "driver=vdi,file.filename=%s%s", p,
                 direct ? ",file.cache.direct=on" : "");
        BlockDriverState *bs = open_opts(opts, BDRV_O_RDWR);
        BdrvChild *c = test_child_new(bs);
        int64_t size = 4 * MiB;
        uint8_t *model = calloc(1, (size_t)size);
        uint64_t before = bdrv_mapped_bounce_count();
        static const int64_t offs[] = { 0, 4096, 1 * MiB - 4096, 2 * MiB + 65536, 3 * MiB };
        static const int64_t lens[] = { 4096, 12288, 200 * KiB };
        static const size_t regoffs[] = { 0, 8192 };
        sweep(c, model, size, NULL, 0, offs, ARRAY_SIZE(offs), lens, ARRAY_SIZE(lens), regoffs,
              ARRAY_SIZE(regoffs));
        /* All aligned: every request passed its reference down. */
        assert_int_equal(bdrv_mapped_bounce_count(), before);
        test_child_free(c);
        bdrv_unref(bs);
        /* Reopened, the image holds what the model says. */
        bs = open_opts(opts, 0);
        c = test_child_new(bs);
        uint8_t *got = malloc((size_t)size);
        assert_int_equal(bdrv_pread(c, 0, size, got, 0), 0);
        assert_memory_equal(got, model, (size_t)size);
        free(got);
        free(model);
        test_child_free(c);
        bdrv_unref(bs);
    }
}

/* An encrypted qcow2 (LUKS) node must see the bytes: requests made of
 * references run on a mapped bounce, the ciphertext goes to the file, and
 * the bytes read back are the guest's. */
static void test_encrypted_qcow2(void **state)
{
    (void)state;
#ifdef CONFIG_CRYPTO
    require_driver("qcow2");
    const char *p = test_path("zc-luks.qcow2");
    Error *err = NULL;
    unlink(p);
    size_t len;
    if (!secret_lookup("zc-key", &len, NULL)) {
        assert_int_equal(secret_object_add("secret,id=zc-key,data=zc-pass", &err), 0);
    }
    OptDict *co = optdict_parse("size=4M,encrypt.format=luks,encrypt.key-secret=zc-key,"
                                "encrypt.iter-time=1", NULL, NULL);
    if (bdrv_create(bdrv_find_format("qcow2"), p, co, &err) < 0) {
        fail_msg("create: %s", error_get_pretty(err));
    }
    optdict_free(co);
    char opts[700];
    snprintf(opts, sizeof(opts), "driver=qcow2,file.filename=%s,encrypt.key-secret=zc-key", p);
    BlockDriverState *bs = open_opts(opts, BDRV_O_RDWR);
    assert_true(bdrv_graph_needs_mapped_data(bs));
    BdrvChild *c = test_child_new(bs);
    int64_t size = 4 * MiB;
    uint8_t *model = calloc(1, (size_t)size);
    uint64_t before = bdrv_mapped_bounce_count();
    static const int64_t offs[] = { 0, 4096, 1 * MiB - 4096, 2 * MiB + 65536 + 512 };
    static const int64_t lens[] = { 4096, 12288, 200 * KiB };
    static const size_t regoffs[] = { 0, 8192 };
    sweep(c, model, size, NULL, 0, offs, ARRAY_SIZE(offs), lens, ARRAY_SIZE(lens), regoffs,
          ARRAY_SIZE(regoffs));
    assert_true(bdrv_mapped_bounce_count() > before);
    test_child_free(c);
    bdrv_unref(bs);
    /* Reopened, the image holds what the model says; the file holds none of
     * it in the clear (the sweep's data is a pattern that never repeats). */
    bs = open_opts(opts, 0);
    c = test_child_new(bs);
    uint8_t *got = malloc((size_t)size);
    assert_int_equal(bdrv_pread(c, 0, size, got, 0), 0);
    assert_memory_equal(got, model, (size_t)size);
    test_child_free(c);
    bdrv_unref(bs);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    uint8_t *file = malloc((size_t)st.st_size);
    assert_int_equal(pread(fd, file, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    assert_null(memmem(file, (size_t)st.st_size, model + 4096, 64));
    free(file);
    free(got);
    free(model);
#else
    skip();
#endif
}

/* A probed raw image looks at sector 0 of a write to refuse another format's
 * header: through the ring when that sector is a reference. */
static void test_probed_raw_header_check(void **state)
{
    (void)state;
    require_driver("raw");
    require_driver("vdi");
    const char *v = test_path("hdr.vdi"), *p = test_path("probed.img");
    Error *err = NULL;
    unlink(v);
    OptDict *co = optdict_parse("size=1M", NULL, NULL);
    assert_int_equal(bdrv_create(bdrv_find_format("vdi"), v, co, &err), 0);
    optdict_free(co);
    read_file(v, 0, regbuf, 512);
    make_file(p, 64 * KiB, 71);
    BlockDriverState *bs = bdrv_open(p, NULL, BDRV_O_RDWR, &err);
    assert_non_null(bs);
    assert_true(bs->probed);
    BdrvChild *c = test_child_new(bs);
    IOVector q;
    ref_vec(&q, 0, 512);
    assert_int_equal(do_rw(c, true, 0, 512, &q, 0, 0), -EPERM);
    memset(regbuf, 0x33, 512);
    assert_int_equal(do_rw(c, true, 0, 512, &q, 0, 0), 0);
    uint8_t back[512];
    read_file(p, 0, back, sizeof(back));
    assert_true(test_buf_is(back, sizeof(back), 0x33));
    iov_destroy(&q);
    test_child_free(c);
    bdrv_unref(bs);
}

/* ----------------------------------- layers that must see the bytes */

/* detect-zeroes: a zero write from a reference is seen (through a bounce)
 * and becomes write-zeroes; non-zero data still arrives. */
static void test_detect_zeroes_bounces(void **state)
{
    (void)state;
    const char *p = test_path("dz.img");
    make_file(p, FILE_SIZE, 41);
    char opts[600];
    snprintf(opts, sizeof(opts), "driver=file,filename=%s,detect-zeroes=unmap,discard=unmap", p);
    BlockDriverState *bs = open_opts(opts, BDRV_O_RDWR | BDRV_O_PROTOCOL);
    BdrvChild *c = test_child_new(bs);
    IOVector q;
    ref_vec(&q, 0, 256 * KiB);
    memset(regbuf, 0, 256 * KiB);
    uint64_t before = bdrv_mapped_bounce_count();
    assert_int_equal(do_rw(c, true, 256 * KiB, 256 * KiB, &q, 0, 0), 0);
    assert_int_equal(bdrv_mapped_bounce_count(), before + 1);
    uint8_t *file = malloc(256 * KiB);
    read_file(p, 256 * KiB, file, 256 * KiB);
    assert_true(test_buf_is(file, 256 * KiB, 0));
    /* Punched: the zero write did not go out as data. */
    int fd = open(p, O_RDONLY);
    assert_true(lseek(fd, 256 * KiB, SEEK_HOLE) < (off_t)(512 * KiB));
    close(fd);
    test_pattern(regbuf, 4096, 42);
    assert_int_equal(do_rw(c, true, 0, 4096, &q, 0, 0), 0);
    read_file(p, 0, file, 4096);
    assert_memory_equal(file, regbuf, 4096);
    /* No bounce buffer to be had: the request fails -ENOMEM, the file keeps
     * what it had (it used to be written from a NULL buffer). */
    test_pattern(regbuf, 4096, 43);
    atomic_store(&bdrv_bounce_fail_next, 1);
    assert_int_equal(do_rw(c, true, 0, 4096, &q, 0, 0), -ENOMEM);
    atomic_store(&bdrv_bounce_fail_next, 0);
    read_file(p, 0, regbuf, 4096);
    assert_memory_equal(file, regbuf, 4096);
    free(file);
    iov_destroy(&q);
    test_child_free(c);
    bdrv_unref(bs);
}

/* Copy-on-read over a mem chain: the mem driver memcpy's (it would abort on
 * a reference), so it must get the bounce, and the caller the data. */
static void test_copy_on_read_bounces(void **state)
{
    (void)state;
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 1 * MiB, 1 * MiB, true);
    BdrvChild *c = test_child_new(top);
    IOVector q;
    ref_vec(&q, 4096, 12288);
    memset(regbuf, 0, 20000);
    uint64_t before = bdrv_mapped_bounce_count();
    assert_int_equal(do_rw(c, false, 8192, 12288, &q, 0, 0), 0);
    assert_true(bdrv_mapped_bounce_count() > before);
    assert_true(test_buf_is(regbuf + 4096, 12288, 0xba));
    assert_int_equal(mem_get_status(top, 8192), MEM_DATA);   /* copied up */
    iov_destroy(&q);
    test_child_free(c);
    bdrv_unref(top);
    bdrv_unref(base);
}

/* A driver that says needs_mapped_data gets mapped buffers; the mem driver
 * stands in for compression/encryption. */
static void test_needs_mapped_driver(void **state)
{
    (void)state;
    BlockDriverState *bs = mem_node_new(NULL);
    /* The mem tables are the test's own; flag this one for this test only. */
    BlockDriver *drv = (BlockDriver *)bs->drv;
    drv->needs_mapped_data = true;
    BdrvChild *c = test_child_new(bs);
    IOVector q;
    ref_vec(&q, 100, 3000);
    test_pattern(regbuf + 100, 3000, 51);
    uint64_t before = bdrv_mapped_bounce_count();
    uint64_t copies = iov_fixed_copy_count();
    assert_true(bdrv_graph_needs_mapped_data(bs));
    assert_int_equal(do_rw(c, true, 777, 3000, &q, 0, 0), 0);
    uint8_t got[3000];
    mem_read_raw(bs, 777, got, sizeof(got));
    assert_memory_equal(got, regbuf + 100, 3000);
    memset(regbuf, 0, 4096);
    assert_int_equal(do_rw(c, false, 777, 3000, &q, 0, 0), 0);
    assert_memory_equal(regbuf + 100, got, 3000);
    assert_int_equal(bdrv_mapped_bounce_count(), before + 2);
    assert_int_equal(iov_fixed_copy_count(), copies + 2);    /* one out, one in */
    drv->needs_mapped_data = false;
    assert_false(bdrv_graph_needs_mapped_data(bs));
    iov_destroy(&q);
    test_child_free(c);
    bdrv_unref(bs);
}

/* --------------------------------------------------- mixed vectors */

/* [mapped][reference][mapped] through the request path: split by the file
 * protocol into one op per element, O_DIRECT and buffered. */
static void test_mixed_vector_split(void **state)
{
    (void)state;
    for (int direct = 0; direct <= 1; direct++) {
        const char *p = test_path(direct ? "mix-d.img" : "mix.img");
        make_file(p, FILE_SIZE, 61);
        char opts[600];
        snprintf(opts, sizeof(opts), "driver=file,filename=%s%s", p,
                 direct ? ",cache.direct=on" : "");
        BlockDriverState *bs = open_opts(opts, BDRV_O_RDWR | BDRV_O_PROTOCOL);
        BdrvChild *c = test_child_new(bs);
        uint8_t *a = aligned_alloc_or_die(4096, 8192), *b = aligned_alloc_or_die(4096, 4096);
        IOVector q;
        iov_init(&q, 0);
        iov_add(&q, a, 8192);
        iov_add_reg(&q, ring, (unsigned)regidx, 4096, 16384);
        iov_add(&q, b, 4096);
        test_pattern(a, 8192, 62);
        test_pattern(regbuf + 4096, 16384, 63);
        test_pattern(b, 4096, 64);
        uint64_t before = bdrv_mapped_bounce_count();
        assert_int_equal(do_rw(c, true, 12288, 28672, &q, 0, 0), 0);
        assert_int_equal(bdrv_mapped_bounce_count(), before);
        uint8_t *file = malloc(28672);
        read_file(p, 12288, file, 28672);
        assert_memory_equal(file, a, 8192);
        assert_memory_equal(file + 8192, regbuf + 4096, 16384);
        assert_memory_equal(file + 24576, b, 4096);
        /* Read back a part that starts in the reference and ends mapped. */
        memset(regbuf, 0, 32768);
        memset(b, 0, 4096);
        assert_int_equal(do_rw(c, false, 12288 + 12288, 16384, &q, 12288, 0), 0);
        assert_memory_equal(regbuf + 4096 + 4096, file + 12288, 12288);
        assert_memory_equal(b, file + 24576, 4096);
        free(file);
        free(a);
        free(b);
        iov_destroy(&q);
        test_child_free(c);
        bdrv_unref(bs);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_representation),
        cmocka_unit_test(test_ring_op_and_misuse),
        cmocka_unit_test(test_other_ring_refused),
        cmocka_unit_test(test_kernel_buffer_table),
        cmocka_unit_test(test_copy_through_ring),
        cmocka_unit_test(test_file_buffered_sweep),
        cmocka_unit_test(test_file_direct_sweep),
        cmocka_unit_test(test_file_eof_zero_fill),
        cmocka_unit_test(test_raw_offset_sweep),
        cmocka_unit_test(test_vdi),
        cmocka_unit_test(test_probed_raw_header_check),
        cmocka_unit_test(test_detect_zeroes_bounces),
        cmocka_unit_test(test_copy_on_read_bounces),
        cmocka_unit_test(test_needs_mapped_driver),
        cmocka_unit_test(test_encrypted_qcow2),
        cmocka_unit_test(test_mixed_vector_split),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
