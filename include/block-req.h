/*
 * block-req.h - request-path internals shared by the block layer's own files
 * (io/block-io*.c, io/block-status.c, io/block-backend.c) and by drivers that
 * need to take part in request tracking (e.g. to serialise their own
 * metadata-changing requests against guest I/O).
 *
 * A tracked request lives on the stack of the coroutine that issued it, from
 * its entry into the request path until it completes.  bs->reqs_lock is held
 * only to link/unlink it and to look for conflicts, never across I/O, and
 * only while some request on the node serialises: otherwise requests are not
 * linked at all, only counted per thread.
 */
#ifndef UBLKD_BLOCK_REQ_H
#define UBLKD_BLOCK_REQ_H

#include "block-driver.h"

typedef enum {
    BDRV_TRACKED_READ,
    BDRV_TRACKED_WRITE,
    BDRV_TRACKED_DISCARD,
    BDRV_TRACKED_TRUNCATE,
} BdrvTrackedRequestType;

struct BdrvTrackedRequest {
    BlockDriverState *bs;
    int64_t offset, bytes;
    BdrvTrackedRequestType type;
    /* A serialising request (an RMW or copy-on-read in progress) waits for,
     * and is waited for by, every overlapping request; the overlap range is
     * the request widened to the serialisation alignment. */
    bool serialising;
    int64_t overlap_offset, overlap_bytes;
    Coroutine *co;
    CoQueue wait_queue;                 /* requests waiting for this one */
    BdrvTrackedRequest *waiting_for;    /* deadlock avoidance, see block-io.c */
    /* On bs->tracked_reqs.  While no request on bs serialises, requests
     * skip the list (block-io.c) and are only counted. */
    bool listed;
    /* Has done its serialisation check (atomic): from then on it waits
     * only for requests that had done theirs too; later ones wait for it. */
    bool passed;
    BdrvTrackedRequest *next, **pprev;  /* in bs->tracked_reqs */
};

/* In-flight accounting: every request holds one count on the node it runs on
 * for its whole duration; drain waits for the count to reach zero. */
void bdrv_inc_in_flight(BlockDriverState *bs);
void bdrv_dec_in_flight(BlockDriverState *bs);

void coroutine_fn tracked_request_begin(BdrvTrackedRequest *req, BlockDriverState *bs,
                                        int64_t offset, int64_t bytes,
                                        BdrvTrackedRequestType type);
void coroutine_fn tracked_request_end(BdrvTrackedRequest *req);
/* Widen req to align and make it serialising, then wait for overlapping
 * requests.  Returns true if it had to wait. */
bool coroutine_fn bdrv_make_request_serialising(BdrvTrackedRequest *req, uint64_t align);
/* Wait for overlapping serialising requests (cheap when there are none). */
bool coroutine_fn bdrv_wait_serialising_requests(BdrvTrackedRequest *req);

/* Cluster size for copy-on-read rounding (request_alignment if none). */
int64_t bdrv_get_cluster_size(BlockDriverState *bs);

/* The node bs forwards to if it is a filter, else NULL. */
BlockDriverState *bdrv_filter_bs(BlockDriverState *bs);
/* The copy-on-write parent is bdrv_backing_bs (block.h). */

#endif
