/*
 * block-backend.h - the export handle: what a user of a graph holds.
 *
 * A BlockBackend sits above a root node and is what the ublk queue threads
 * and `ublkd img` call: it adds the per-export policies that do not belong to
 * a node (throttling, I/O accounting per operation, a size check on every
 * request) and synchronous wrappers for tools.  It opens graphs from a
 * filename + options or from a "--blockdev" string.
 */
#ifndef UBLKD_BLOCK_BACKEND_H
#define UBLKD_BLOCK_BACKEND_H

#include "block.h"
#include "throttle.h"

typedef struct BlockBackend BlockBackend;

typedef enum { BLK_OP_READ, BLK_OP_WRITE, BLK_OP_FLUSH, BLK_OP_DISCARD, BLK_OP_WRITE_ZEROES,
               BLK_OP__MAX } BlockAcctOp;
#define BLK_NODE_COUNTERS_MAX 96
typedef struct BlockAcctStats {
    uint64_t ops[BLK_OP__MAX];
    uint64_t bytes[BLK_OP__MAX];
    uint64_t errors[BLK_OP__MAX];
    uint64_t total_ns[BLK_OP__MAX];   /* sum of request times, read from the event
                                       * loop's per-iteration clock (aio_loop_now_ns):
                                       * a request done within one iteration adds 0 */
    uint64_t fua_writes;       /* successful writes that asked for FUA */
    /* Zero copy, filled in by the ublk server (not blk_get_stats) from the
     * process-wide counters, as a daemon serves one device: requests that
     * bounced through a mapped buffer (bdrv_mapped_bounce_count) and copies
     * through the ring into or out of the request's pages
     * (iov_fixed_copy_count: zero fills of holes, bounces, probing). */
    uint64_t zc_bounced;
    uint64_t zc_ring_copies;
    uint64_t zc_reg_fallbacks;   /* AUTO_BUF_REG failed, registered by hand
                                    (ublk_zc_reg_fallback_count) */
    /* Filled in by the ublk server too: the graph's run-time counters
     * (bdrv_get_counters: a quorum's per-child reads, errors, corruptions,
     * rewrites) and the block-layer events reported and cut (block.h). */
    struct {
        char key[64];
        uint64_t value;
    } node_counters[BLK_NODE_COUNTERS_MAX];
    int n_node_counters;
    uint64_t events, events_suppressed;
} BlockAcctStats;

/* Open a graph; options consumed.  Recognises top-level "throttling.*". */
BlockBackend *blk_new_open(const char *filename, OptDict *options, int flags, Error **errp);
/* Wrap an existing node (takes a reference). */
BlockBackend *blk_new_with_bs(BlockDriverState *bs, Error **errp);
void blk_unref(BlockBackend *blk);   /* drains, flushes if writable, closes */
BlockDriverState *blk_bs(BlockBackend *blk);
int64_t blk_getlength(BlockBackend *blk);
bool blk_is_read_only(BlockBackend *blk);
int blk_set_throttle(BlockBackend *blk, const ThrottleConfig *cfg, Error **errp);
void blk_get_stats(BlockBackend *blk, BlockAcctStats *out);
/*
 * A thread other than the opener's starts (attach) or stops (detach)
 * issuing requests to blk: call from that thread, with its AioContext
 * current, before its first request and after its last one has completed.
 * Drivers set up and drop per-thread state (bdrv_attach_thread).
 */
void blk_attach_thread(BlockBackend *blk);
void blk_detach_thread(BlockBackend *blk);

int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset, int64_t bytes,
                               IOVector *qiov, BdrvRequestFlags flags);
int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes,
                                IOVector *qiov, BdrvRequestFlags flags);
int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                                      BdrvRequestFlags flags);
int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes);
int coroutine_fn blk_co_flush(BlockBackend *blk);

/* Synchronous forms for tools. */
int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf, BdrvRequestFlags flags);
int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes, const void *buf,
               BdrvRequestFlags flags);
int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes, BdrvRequestFlags flags);
int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes);
int blk_flush(BlockBackend *blk);
int blk_truncate(BlockBackend *blk, int64_t offset, bool exact, PreallocMode prealloc,
                 Error **errp);
void blk_drain(BlockBackend *blk);

#endif
