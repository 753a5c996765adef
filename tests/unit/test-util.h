/*
 * test-util.h - shared helpers for the cmocka unit tests.
 *
 * The centre piece is "mem", an in-memory block driver registered at run time
 * (tests/unit/mem-driver.c).  A test builds a node with the knobs it needs
 * (size, limits, which callbacks exist, native FUA/unmap support, a block
 * status map, per-request yields, error injection), runs requests through the
 * real request path, and then asserts on what the driver was asked to do:
 * every callback is counted and logged with its (offset, bytes, flags).
 *
 * A mem node is a protocol by default (everything MEM_DATA).  With
 * cfg.format = true it behaves like a format with a backing file and starts
 * all MEM_UNALLOC: such ranges read from bs->backing (zeros without one) and
 * writes allocate.
 *
 * Nodes are opened on the calling thread; requests may come from any thread
 * (the driver's state has its own mutex, never held across a yield).
 */
#ifndef UBLKD_TEST_UTIL_H
#define UBLKD_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <unistd.h>
#include <cmocka.h>
#include "aio.h"
#include "block-driver.h"

/* Skip the calling test when a driver it needs is configured out
 * (make CONFIG_RAW=n ...): shared suites keep their other tests. */
#define require_driver(name)                                                   \
    do {                                                                       \
        if (!bdrv_find_format(name)) {                                         \
            print_message("skipped: driver '%s' is not built\n", (name));      \
            skip();                                                            \
        }                                                                      \
    } while (0)

typedef enum {
    MEM_OP_READ, MEM_OP_WRITE, MEM_OP_ZEROES, MEM_OP_DISCARD,
    MEM_OP_FLUSH, MEM_OP_FLUSH_OS, MEM_OP_STATUS, MEM_OP_TRUNCATE,
    MEM_OP__MAX
} MemOp;

/* Bits of MemConfig.callbacks: leave that callback out of the driver table,
 * so the core's fallback is exercised. */
enum {
    MEM_NO_ZEROES_CB  = 1 << 0,
    MEM_NO_DISCARD_CB = 1 << 1,
    MEM_NO_STATUS_CB  = 1 << 2,
    MEM_NO_FLUSH_CB   = 1 << 3,
    MEM_NO_TRUNCATE_CB = 1 << 4,
};

/* Per-granule content state, reported by co_block_status. */
typedef enum {
    MEM_DATA,      /* allocated, holds data (the default) */
    MEM_ZERO,      /* allocated, reads as zeros */
    MEM_UNALLOC,   /* not allocated here: backing (format mode) or zeros */
} MemStatus;

typedef struct MemConfig {
    int64_t size;                     /* default 1 MiB */
    int open_flags;                   /* default BDRV_O_RDWR; 0 is read-only */
    bool read_only;                   /* open without BDRV_O_RDWR */
    uint32_t request_alignment;       /* default 1 */
    uint64_t max_transfer;            /* 0 = none */
    uint32_t pdiscard_alignment;
    uint64_t max_pdiscard;
    uint32_t pwrite_zeroes_alignment;
    uint64_t max_pwrite_zeroes;
    size_t min_mem_alignment;         /* default 1 */
    BdrvRequestFlags write_flags;     /* supported_write_flags (e.g. FUA) */
    BdrvRequestFlags zero_flags;      /* supported_zero_flags (MAY_UNMAP, FUA) */
    bool zeroes_enotsup;              /* co_pwrite_zeroes exists but says -ENOTSUP */
    bool discard_enotsup;
    unsigned callbacks;               /* MEM_NO_*_CB */
    bool format;                      /* behaves as a format with backing support */
    bool growable;                    /* writes past EOF extend the image */
    int cluster_size;                 /* reported by get_info (0: none) */
    uint32_t status_granularity;      /* default max(request_alignment, 512) */
    bool status_recurse;              /* co_block_status adds BDRV_BLOCK_RECURSE on DATA */
    const char *node_name;
    int max_iov;                      /* bl.max_iov; longer vectors fail -EINVAL (0: none) */
} MemConfig;

typedef struct MemLogEntry {
    MemOp op;
    int64_t offset, bytes;
    BdrvRequestFlags flags;
    int ret;
    int niov;                         /* read/write: iovec elements the range spans */
} MemLogEntry;

/* ---- nodes ---- */
/* Open a mem node (cfg NULL: defaults).  Fails the test on error. */
BlockDriverState *mem_node_new(const MemConfig *cfg);
/* top gets base as its "backing" child (top must be cfg.format). */
void mem_set_backing(BlockDriverState *top, BlockDriverState *base);
/* A two-node backing chain: *base a protocol of base_size filled with 0xba,
 * *top a format of top_size (4 KiB clusters, all unallocated) over it,
 * opened with BDRV_O_COPY_ON_READ if cor.  The caller unrefs both. */
void mem_chain_new(BlockDriverState **top, BlockDriverState **base, int64_t top_size,
                   int64_t base_size, bool cor);
/* The mem driver table used for cfg (one per MEM_NO_* combination). */
const BlockDriver *mem_driver(const MemConfig *cfg);
bool bs_is_mem(BlockDriverState *bs);

/* A parent-less edge to bs, like the one a BlockBackend holds (takes a ref). */
BdrvChild *test_child_new(BlockDriverState *bs);
void test_child_free(BdrvChild *c);   /* drops the ref */

/* ---- contents (direct, bypassing the request path) ---- */
void mem_fill(BlockDriverState *bs, int64_t offset, int64_t len, int byte);
void mem_write_raw(BlockDriverState *bs, int64_t offset, const void *buf, int64_t len);
void mem_read_raw(BlockDriverState *bs, int64_t offset, void *buf, int64_t len);
int64_t mem_size(BlockDriverState *bs);
void mem_set_status(BlockDriverState *bs, int64_t offset, int64_t len, MemStatus st);
MemStatus mem_get_status(BlockDriverState *bs, int64_t offset);

/* ---- knobs after open ---- */
/* Change limits/flags of an open node: edit *cfg (from mem_config) and apply. */
MemConfig *mem_config(BlockDriverState *bs);
void mem_apply_config(BlockDriverState *bs);
/* Yield to the event loop once inside each callback of the ops in op_mask
 * (1 << MEM_OP_*); writes yield halfway through copying, so an unserialised
 * concurrent write could tear. */
void mem_set_yield(BlockDriverState *bs, unsigned op_mask);
/*
 * A gate for forcing an interleaving across threads: while closed, callbacks
 * of the ops in op_mask park just before they return (a read has filled the
 * caller's buffer, a write has stored its data; a read failing with an
 * injected error parks too), whatever thread they run on.
 * mem_gate_parked() counts them; mem_gate_open() stops parking and resumes
 * every parked callback on its own AioContext.
 */
void mem_gate_close(BlockDriverState *bs, unsigned op_mask);
/* Writes overlapping [offset, offset+bytes) park before they store anything
 * (an I/O still in flight), until mem_gate_open(). */
void mem_gate_close_before(BlockDriverState *bs, int64_t offset, int64_t bytes);
int mem_gate_parked(BlockDriverState *bs);
void mem_gate_open(BlockDriverState *bs);
/* Fail calls of op overlapping [offset, offset+bytes) with err, count times
 * (-1: always).  bytes 0 means "any offset". */
void mem_inject_error(BlockDriverState *bs, MemOp op, int64_t offset, int64_t bytes, int err,
                      int count);

/* ---- what the driver saw ---- */
int mem_calls(BlockDriverState *bs, MemOp op);
/* The i-th logged call of op (NULL if fewer). */
const MemLogEntry *mem_log(BlockDriverState *bs, MemOp op, int i);
void mem_log_clear(BlockDriverState *bs);
/* Total bytes passed to op's callbacks. */
int64_t mem_bytes(BlockDriverState *bs, MemOp op);
/* drain_begin (end false) / drain_end (end true) calls, and a global
 * sequence number of the last one, to check the order across nodes. */
int mem_drain_calls(BlockDriverState *bs, bool end);
unsigned mem_drain_seq(BlockDriverState *bs, bool end);

/* ---- running code ---- */
/* Give the calling thread an AioContext (idempotent). */
AioContext *test_loop_init(void);
/* Run fn(opaque) in a coroutine on the current thread and wait for it. */
void test_run_co(CoroutineEntry *fn, void *opaque);

/* Poll a condition that other threads make true, failing the test with
 * "timed out waiting for <what>" after 10 s (that is "never"). */
#define WAIT_FOR(cond, what)                                   \
    do {                                                       \
        int waited_ = 0;                                       \
        while (!(cond)) {                                      \
            if (++waited_ > 20000) {                           \
                fail_msg("timed out waiting for %s", what);    \
            }                                                  \
            usleep(500);                                       \
        }                                                      \
    } while (0)

/* Fill buf with a pattern derived from seed (so pieces can be told apart). */
void test_pattern(void *buf, size_t len, uint64_t seed);
bool test_buf_is(const void *buf, size_t len, int byte);

/* ---- a scratch directory (tmpdir.c) ---- */
/* Make /var/tmp/ublkd-test-<suite>-XXXXXX (fails the test on error); call
 * from the group setup. */
const char *test_tmpdir_create(const char *suite);
const char *test_tmpdir(void);
/* "<tmpdir>/<name>"; the last four results stay valid. */
char *test_path(const char *name);
/* Group teardown: removes the directory and all in it. */
int test_tmpdir_teardown(void **state);

#endif
