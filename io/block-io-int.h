/*
 * block-io-int.h - what the request-path files of io/ share with each other
 * (block-io.c: reads/writes, padding, tracking; block-io-zero.c: write-zeroes
 * and discard; block-io-drain.c: drain, flush, truncate, sync wrappers;
 * block-status.c).  Nothing outside io/ includes this.
 */
#ifndef UBLKD_BLOCK_IO_INT_H
#define UBLKD_BLOCK_IO_INT_H

#include <stdatomic.h>
#include "block-req.h"

/* ---- bounce buffers (the cache itself is declared in block-driver.h) ---- */
/* Fault injection for tests: the next n bdrv_bounce_get calls fail. */
extern atomic_int bdrv_bounce_fail_next;

/* ---- head/tail padding to request_alignment ---- */
#define BDRV_PAD_INLINE_IOV 16
typedef struct BdrvRequestPadding {
    BounceBuf bounce;
    uint8_t *buf;           /* head block at buf, tail block at tail_buf */
    size_t buf_len;
    uint8_t *tail_buf;
    size_t head, tail;      /* padding bytes before and after the request */
    bool merge_reads;       /* head and tail are the same block */
    /* Elements [collapse_idx, collapse_n) of the padded vector did not fit in
     * max_iov and share one bounce buffer, local_qiov's last element; the
     * first of them is kept in collapse_first, the rest stay in the array
     * beyond local_qiov's end. */
    BounceBuf collapse;
    struct iovec collapse_first;
    int collapse_idx, collapse_n;
    IOVector local_qiov;
    struct iovec inline_iov[BDRV_PAD_INLINE_IOV];
    struct iovec *heap_iov;
} BdrvRequestPadding;
/* 0: aligned, nothing to pad; 1: padded; -ENOMEM.  pad is always safe to
 * hand to bdrv_padding_destroy afterwards. */
int bdrv_init_padding(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      BdrvRequestPadding *pad);
void bdrv_padding_destroy(BdrvRequestPadding *pad);
/* A collapsed tail (see above) is copied in before a write, out after a read. */
void bdrv_padding_collapse_copy(BdrvRequestPadding *pad, bool to_bounce);
int coroutine_fn bdrv_padding_rmw_read(BdrvChild *child, BdrvTrackedRequest *req,
                                       BdrvRequestPadding *pad, bool zero_middle);

/* ---- per-thread counters (block-counters.c; bdrv_inc/dec_in_flight and
 * bdrv_in_flight are in block-req.h and block.h) ---- */
/* Called by bdrv_dec_in_flight after every end of a request (block-io-drain.c):
 * wakes drainers if bs has nothing in flight any more. */
void bdrv_in_flight_ended(BlockDriverState *bs);
/* Requests running without being on bs->tracked_reqs (block-io.c). */
void bdrv_untracked_begin(BlockDriverState *bs);
void bdrv_untracked_end(BlockDriverState *bs);
uint64_t bdrv_untracked_in_flight(BlockDriverState *bs);
/* Writes done on bs; a flush covers what the sum was when it started. */
void bdrv_write_gen_bump(BlockDriverState *bs);
uint64_t bdrv_write_gen(BlockDriverState *bs);

/* ---- checks and flags ---- */
int bdrv_check_request(int64_t offset, int64_t bytes);
int64_t bdrv_total_bytes(BlockDriverState *bs);
BdrvRequestFlags bdrv_write_flags(BlockDriverState *bs);
BdrvRequestFlags bdrv_zero_flags(BlockDriverState *bs);
/* Count the request in flight (block-io-drain.c); requests through a root
 * edge that no user admits (a tool's or a test's handle) first wait here
 * while the node is quiesced. */
void coroutine_fn bdrv_co_enter_request(BdrvChild *child);
void coroutine_fn bdrv_co_leave_request(BdrvChild *child);   /* the matching end */

/* ---- the layers below the public entry points ---- */
int coroutine_fn bdrv_aligned_preadv(BdrvChild *child, BdrvTrackedRequest *req,
                                     int64_t offset, int64_t bytes, int64_t align,
                                     IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn bdrv_aligned_pwritev(BdrvChild *child, BdrvTrackedRequest *req,
                                      int64_t offset, int64_t bytes, int64_t align,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn bdrv_driver_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                    IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn bdrv_driver_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                     IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
void bdrv_co_write_req_finish(BdrvChild *child, int64_t offset, int64_t bytes,
                              BdrvTrackedRequest *req, int ret);

/* block-io-fixed.c: a request whose buffers hold registered-buffer
 * references (include/iov.h) but that some layer of this node must see the
 * bytes of goes through a mapped bounce instead (see that file). */
bool bdrv_layer_needs_bytes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                            BdrvRequestFlags flags, bool is_write);
static inline bool bdrv_needs_mapped(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                     IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags,
                                     bool is_write)
{
    return qiov && iov_has_reg(qiov, qiov_offset, (size_t)bytes) &&
           bdrv_layer_needs_bytes(bs, offset, bytes, flags, is_write);
}
int coroutine_fn bdrv_co_rw_mapped(BdrvChild *child, int64_t offset, int64_t bytes,
                                   IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags,
                                   bool is_write);

/* block-io-zero.c */
int coroutine_fn bdrv_co_do_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                          BdrvRequestFlags flags);
int coroutine_fn bdrv_co_do_zero_pwritev(BdrvChild *child, int64_t offset, int64_t bytes,
                                         BdrvRequestFlags flags, BdrvTrackedRequest *req);

#endif
