/*
 * test-block-graph-change.c - the graph changes inside drained sections:
 * replacing a child's node under random I/O from two queue threads (no
 * request lost, failed, or served by the old node once the replacement
 * returned), the refusals, the drain bookkeeping of a replaced edge, and
 * reopening nodes read-write (mem nodes in a chain; the file protocol with
 * its image lock bytes).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "block-backend.h"
#include "test-util.h"

#define BLK 4096
#define DISK (1 * MiB)
#define NTHREADS 2
#define NCO 4                                     /* coroutines per thread */
#define REGION (DISK / (NTHREADS * NCO))          /* each coroutine's own blocks */
#define POISON 0xee

/* ---- replacing the backing node under I/O ---- */

static uint8_t base_image[DISK];

typedef struct Worker Worker;

typedef struct {
    Worker *w;
    int64_t start;                  /* of its region */
    uint8_t model[REGION];          /* what the disk must hold there */
    uint64_t seed;
    int ops, failed, mismatched;
    bool done;
} IoCo;

struct Worker {
    BlockBackend *blk;
    bool *stop;
    IoCo co[NCO];
};

static uint64_t next_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Random 4 KiB reads (checked against the model) and writes in its region. */
static void coroutine_fn io_co(void *opaque)
{
    IoCo *c = opaque;
    uint8_t buf[BLK];
    IOVector q;
    while (!__atomic_load_n(c->w->stop, __ATOMIC_SEQ_CST)) {
        int64_t off = (int64_t)(next_rand(&c->seed) % (REGION / BLK)) * BLK;
        bool write = next_rand(&c->seed) % 4 == 0;
        int ret;
        iov_init_buf(&q, buf, BLK);
        if (write) {
            test_pattern(buf, BLK, next_rand(&c->seed));
            ret = blk_co_pwritev(c->w->blk, c->start + off, BLK, &q, 0);
            if (ret == 0) {
                memcpy(c->model + off, buf, BLK);
            }
        } else {
            ret = blk_co_preadv(c->w->blk, c->start + off, BLK, &q, 0);
            if (ret == 0 && memcmp(buf, c->model + off, BLK) != 0) {
                c->mismatched++;
            }
        }
        c->failed += ret < 0;
        __atomic_fetch_add(&c->ops, 1, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&c->done, true, __ATOMIC_SEQ_CST);
}

static bool worker_done(Worker *w)
{
    for (int i = 0; i < NCO; i++) {
        if (!__atomic_load_n(&w->co[i].done, __ATOMIC_SEQ_CST)) {
            return false;
        }
    }
    return true;
}

static void *worker_thread(void *opaque)
{
    Worker *w = opaque;
    AioContext *ctx = aio_context_new(64, NULL);
    assert_non_null(ctx);
    aio_set_current(ctx);
    for (int i = 0; i < NCO; i++) {
        co_enter(co_create(io_co, &w->co[i]));
    }
    AIO_WAIT_WHILE(ctx, !worker_done(w));
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

static int total_ops(Worker *w)
{
    int n = 0;
    for (int i = 0; i < NCO; i++) {
        n += __atomic_load_n(&w[0].co[i].ops, __ATOMIC_RELAXED);
    }
    return n;
}

/*
 * A format node over one of two identical backing nodes, random I/O from two
 * threads (each its own AioContext) through a BlockBackend, while the main
 * thread swaps the backing node back and forth.  The node just replaced is
 * filled with POISON at once, and restored only before it is put back: a
 * read that was still in flight in it (the drain did not wait), or that went
 * to it after the swap (a stale edge), returns POISON and no longer matches.
 * Reads yield inside the driver, so requests are in flight at every swap.
 */
static void test_replace_backing_under_io_two_threads(void **state)
{
    (void)state;
    test_loop_init();
    MemConfig bcfg = { .size = DISK };
    BlockDriverState *base[2] = { mem_node_new(&bcfg), mem_node_new(&bcfg) };
    test_pattern(base_image, DISK, 42);
    for (int i = 0; i < 2; i++) {
        mem_write_raw(base[i], 0, base_image, DISK);
        mem_set_yield(base[i], 1 << MEM_OP_READ);
    }
    MemConfig tcfg = { .size = DISK, .format = true, .cluster_size = BLK,
                       .status_granularity = BLK };
    BlockDriverState *top = mem_node_new(&tcfg);
    mem_set_backing(top, base[0]);
    mem_set_yield(top, (1 << MEM_OP_READ) | (1 << MEM_OP_WRITE));
    BlockBackend *blk = blk_new_with_bs(top, NULL);
    assert_non_null(blk);

    bool stop = false;
    Worker w[NTHREADS];
    pthread_t th[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        w[t].blk = blk;
        w[t].stop = &stop;
        for (int i = 0; i < NCO; i++) {
            IoCo *c = &w[t].co[i];
            *c = (IoCo){ .w = &w[t], .start = (int64_t)(t * NCO + i) * REGION,
                         .seed = 1 + t * NCO + i };
            memcpy(c->model, base_image + c->start, REGION);
        }
        pthread_create(&th[t], NULL, worker_thread, &w[t]);
    }

    int swaps = 0, cur = 0;
    for (; swaps < 60; swaps++) {
        int before = total_ops(&w[0]) + total_ops(&w[1]);
        WAIT_FOR(total_ops(&w[0]) + total_ops(&w[1]) > before + 8, "I/O between swaps");
        Error *err = NULL;
        int next = 1 - cur;
        mem_write_raw(base[next], 0, base_image, DISK);
        assert_int_equal(bdrv_replace_child_bs(top->backing, base[next], &err), 0);
        mem_fill(base[cur], 0, DISK, POISON);
        cur = next;
    }
    __atomic_store_n(&stop, true, __ATOMIC_SEQ_CST);
    for (int t = 0; t < NTHREADS; t++) {
        pthread_join(th[t], NULL);
    }

    assert_ptr_equal(top->backing->bs, base[cur]);
    for (int t = 0; t < NTHREADS; t++) {
        int ops = 0;
        for (int i = 0; i < NCO; i++) {
            IoCo *c = &w[t].co[i];
            if (c->failed || c->mismatched) {
                fail_msg("thread %d coroutine %d: %d of %d requests failed, %d reads "
                         "mismatched", t, i, c->failed, c->ops, c->mismatched);
            }
            ops += c->ops;
        }
        assert_true(ops > swaps);            /* both threads ran during the swaps */
    }
    /* Everything reads back as the models say. */
    uint8_t *got = malloc(REGION);
    for (int t = 0; t < NTHREADS; t++) {
        for (int i = 0; i < NCO; i++) {
            IoCo *c = &w[t].co[i];
            assert_int_equal(blk_pread(blk, c->start, REGION, got, 0), 0);
            assert_memory_equal(got, c->model, REGION);
        }
    }
    free(got);
    assert_int_equal(bdrv_in_flight(top), 0);
    assert_int_equal(top->quiesce_counter, 0);
    assert_int_equal(base[0]->quiesce_counter, 0);
    assert_int_equal(base[1]->quiesce_counter, 0);
    assert_int_equal(top->backing->parent_quiesce, 0);
    blk_unref(blk);
    bdrv_unref(top);
    bdrv_unref(base[0]);
    bdrv_unref(base[1]);
}

/* Replacing inside a drained section of the parent: the new child is
 * drained with it (its drain_begin ran, root-edge requests on it wait), the
 * old one is released, and every count is back to 0 at the end. */
static void test_replace_inside_parent_section(void **state)
{
    (void)state;
    test_loop_init();
    BlockDriverState *top, *base;
    mem_chain_new(&top, &base, 64 * KiB, 64 * KiB, false);
    BlockDriverState *other = mem_node_new(NULL);
    BdrvChild *edge_other = test_child_new(other);
    Error *err = NULL;

    bdrv_drained_begin(top);
    assert_int_equal(bdrv_replace_child_bs(top->backing, other, &err), 0);
    assert_int_equal(base->quiesce_counter, 0);
    assert_int_equal(mem_drain_calls(base, true), 1);
    assert_true(other->quiesce_counter > 0);
    assert_int_equal(mem_drain_calls(other, false), 1);
    assert_int_equal(mem_drain_calls(other, true), 0);
    assert_int_equal(top->backing->parent_quiesce, other->quiesce_counter);
    assert_string_equal(top->backing_format, other->drv->format_name);

    uint8_t buf[512];
    assert_true(edge_other->parent_quiesce > 0);   /* its own user is held back */
    bdrv_drained_end(top);
    assert_int_equal(mem_drain_calls(other, true), 1);
    assert_int_equal(other->quiesce_counter, 0);
    assert_int_equal(top->quiesce_counter, 0);
    assert_int_equal(edge_other->parent_quiesce, 0);
    assert_int_equal(top->backing->parent_quiesce, 0);
    assert_int_equal(bdrv_pread(edge_other, 0, sizeof(buf), buf, 0), 0);

    test_child_free(edge_other);
    bdrv_unref(other);
    bdrv_unref(top);
    bdrv_unref(base);
}

static void test_replace_refused(void **state)
{
    (void)state;
    test_loop_init();
    MemConfig fcfg = { 0 };
    BlockDriverState *file = mem_node_new(&fcfg);
    MemConfig tcfg = { .format = true };
    BlockDriverState *top = mem_node_new(&tcfg);
    bdrv_ref(file);
    BdrvChild *fc = bdrv_attach_child(top, file, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, NULL);
    assert_non_null(fc);
    MemConfig rocfg = { .read_only = true };
    BlockDriverState *ro = mem_node_new(&rocfg);
    Error *err = NULL;

    /* the top writes to its file: a read-only node cannot be it */
    assert_int_equal(bdrv_replace_child_bs(fc, ro, &err), -EPERM);
    assert_non_null(err);
    assert_non_null(strstr(error_get_pretty(err), "read-only"));
    error_free(err);
    err = NULL;
    /* a node cannot become its own child */
    assert_int_equal(bdrv_replace_child_bs(fc, top, &err), -EINVAL);
    error_free(err);
    err = NULL;
    BdrvChild *root = test_child_new(top);
    assert_int_equal(bdrv_replace_child_bs(root, file, &err), -EINVAL);
    error_free(err);
    assert_ptr_equal(fc->bs, file);
    assert_int_equal(mem_drain_calls(file, false), 0);   /* nothing was drained */

    test_child_free(root);
    bdrv_unref(ro);
    bdrv_unref(top);
    bdrv_unref(file);
}

/* ---- reopen ---- */

/* A read-only backing node made read-write inside a drained section (its
 * parent's read in flight finished first), then read-only again; refused
 * while a writer above it needs it. */
static void test_reopen_backing_read_write(void **state)
{
    (void)state;
    test_loop_init();
    MemConfig bcfg = { .size = 64 * KiB, .read_only = true };
    BlockDriverState *base = mem_node_new(&bcfg);
    mem_fill(base, 0, 64 * KiB, 0xba);
    MemConfig tcfg = { .size = 64 * KiB, .format = true, .cluster_size = 4096,
                       .status_granularity = 4096 };
    BlockDriverState *top = mem_node_new(&tcfg);
    mem_set_backing(top, base);
    BdrvChild *cb = test_child_new(base);
    uint8_t buf[512] = { 0 };
    Error *err = NULL;

    assert_int_equal(bdrv_pwrite(cb, 0, 512, buf, 0), -EPERM);
    assert_int_equal(bdrv_reopen_set_read_only(base, false, &err), 0);
    assert_null(err);
    assert_false(base->read_only);
    assert_int_equal(mem_drain_calls(base, false), 1);    /* inside a drained section */
    assert_int_equal(mem_drain_calls(top, false), 1);     /* of the parent too */
    assert_int_equal(mem_drain_calls(base, true), 1);
    assert_int_equal(bdrv_pwrite(cb, 0, 512, buf, 0), 0);
    assert_int_equal(bdrv_reopen_set_read_only(base, true, &err), 0);
    assert_true(base->read_only);
    assert_int_equal(mem_calls(base, MEM_OP_FLUSH), 1);   /* flushed before */
    assert_int_equal(bdrv_pwrite(cb, 0, 512, buf, 0), -EPERM);

    /* a node a writer uses as its file stays read-write */
    MemConfig fcfg = { 0 };
    BlockDriverState *file = mem_node_new(&fcfg);
    MemConfig wcfg = { .format = true };
    BlockDriverState *writer = mem_node_new(&wcfg);
    bdrv_ref(file);
    assert_non_null(bdrv_attach_child(writer, file, "file", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, NULL));
    assert_int_equal(bdrv_reopen_set_read_only(file, true, &err), -EPERM);
    assert_non_null(strstr(error_get_pretty(err), "writes to it"));
    error_free(err);
    err = NULL;
    assert_false(file->read_only);
    /* ... unless the writer goes read-only with it */
    assert_int_equal(bdrv_reopen_set_read_only(writer, true, &err), 0);
    assert_true(file->read_only && writer->read_only);

    bdrv_unref(writer);
    bdrv_unref(file);
    test_child_free(cb);
    bdrv_unref(top);
    bdrv_unref(base);
}

static int setup(void **state)
{
    (void)state;
    test_tmpdir_create("graph-change");
    test_loop_init();
    return 0;
}

static BlockDriverState *open_file(const char *path, int flags, Error **errp)
{
    OptDict *o = optdict_new();
    optdict_set(o, "driver", "file");
    optdict_set(o, "filename", path);
    return bdrv_open(NULL, o, flags, errp);
}

/*
 * The file protocol reopens its fd read-write and takes the write lock
 * bytes: refused while another user that does not share writing has the
 * image open; afterwards it writes, and another writer is refused; back to
 * read-only, the bytes are free again.
 */
static void test_reopen_file_read_write(void **state)
{
    (void)state;
    const char *path = test_path("img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 64 * KiB), 0);
    close(fd);
    Error *err = NULL;

    BlockDriverState *a = open_file(path, 0, &err);
    assert_non_null(a);
    BlockDriverState *b = open_file(path, 0, &err);      /* another reader */
    assert_non_null(b);
    BlockDriverState *w = open_file(path, BDRV_O_RDWR, &err);
    if (w) {
        /* no lock support on this file system: nothing to check here */
        bdrv_unref(w);
        bdrv_unref(a);
        bdrv_unref(b);
        skip();
    }
    error_free(err);
    err = NULL;
    assert_int_equal(bdrv_reopen_set_read_only(a, false, &err), -EAGAIN);
    assert_non_null(err);
    assert_non_null(strstr(error_get_pretty(err), "\"write\" lock"));
    error_free(err);
    err = NULL;
    assert_true(a->read_only);
    bdrv_unref(b);
    /* a failed reopen keeps a's own locks: a writer is still refused */
    w = open_file(path, BDRV_O_RDWR, &err);
    assert_null(w);
    error_free(err);
    err = NULL;

    BdrvChild *c = test_child_new(a);
    uint8_t buf[512];
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(bdrv_pwrite(c, 0, 512, buf, 0), -EPERM);
    assert_int_equal(bdrv_reopen_set_read_only(a, false, &err), 0);
    assert_null(err);
    assert_int_equal(bdrv_pwrite(c, 0, 512, buf, 0), 0);
    assert_int_equal(bdrv_flush(a), 0);
    uint8_t back[512];
    fd = open(path, O_RDONLY);
    assert_int_equal(pread(fd, back, 512, 0), 512);
    close(fd);
    assert_memory_equal(back, buf, 512);
    w = open_file(path, BDRV_O_RDWR, &err);            /* we hold "write" now */
    assert_null(w);
    assert_non_null(strstr(error_get_pretty(err), "lock"));
    error_free(err);
    err = NULL;

    assert_int_equal(bdrv_reopen_set_read_only(a, true, &err), 0);
    assert_int_equal(bdrv_pwrite(c, 0, 512, buf, 0), -EPERM);
    assert_int_equal(bdrv_pread(c, 0, 512, back, 0), 0);
    assert_memory_equal(back, buf, 512);
    test_child_free(c);
    bdrv_unref(a);
    w = open_file(path, BDRV_O_RDWR, &err);
    assert_non_null(w);
    bdrv_unref(w);
}

int main(void)
{
    test_loop_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replace_backing_under_io_two_threads),
        cmocka_unit_test(test_replace_inside_parent_section),
        cmocka_unit_test(test_replace_refused),
        cmocka_unit_test(test_reopen_backing_read_write),
        cmocka_unit_test(test_reopen_file_read_write),
    };
    return cmocka_run_group_tests_name("block-graph-change", tests, setup, test_tmpdir_teardown);
}
