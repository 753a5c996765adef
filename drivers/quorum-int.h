/*
 * quorum-int.h - the quorum driver's vote (drivers/quorum-vote.c), shared by
 * the driver (drivers/quorum.c) and the unit tests; and the driver's state,
 * shared by quorum.c and quorum-rebuild.c (children replaced, added and
 * removed on a live device, and the rebuild of a new child).
 *
 * The vote is a pure function over what N children returned for one read:
 * a buffer per child that succeeded, -errno per child that failed.  It does
 * no I/O and allocates nothing, so tests can cover every split directly and
 * the driver can call it block by block on the request path.
 */
#ifndef UBLKD_QUORUM_INT_H
#define UBLKD_QUORUM_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Children are named by bit in 32-bit masks. */
#define QUORUM_MAX_CHILDREN 32
/* The "error" of a child that was not asked, or whose data does not count
 * in a range (a child being rebuilt, beyond what is rebuilt): it has not
 * answered there.  Outside the errno range, so it is never a real error. */
#define QUORUM_NO_VOTE (-100000)

typedef struct QuorumVoteIn {
    int n;                          /* children, 1..QUORUM_MAX_CHILDREN */
    const uint8_t *const *bufs;     /* per child: its data for the whole request */
    const int *errs;                /* per child: 0, or -errno (its buffer is ignored) */
    int threshold;                  /* votes a version needs to win */
} QuorumVoteIn;

typedef struct QuorumBlockVote {
    int winner;         /* a child holding the winning version; -1: none reached threshold */
    int votes;          /* children holding the most common version */
    int versions;       /* distinct versions among the children that returned */
    uint32_t agree;     /* children holding the most common version */
    uint32_t minority;  /* children that returned something else */
    uint32_t failed;    /* children that returned an error */
} QuorumBlockVote;

/*
 * Vote on bytes [off, off + len) of every child's buffer.  Versions are
 * grouped by memcmp; a 64-bit hash per child only keeps memcmp away from
 * versions that differ.  The most common version wins if it has at least
 * threshold votes; between versions with as many votes, the one the
 * lowest-numbered child returned (QEMU also takes one of them, whichever it
 * met first).  agree/minority describe that version even when it lost.
 */
void quorum_vote_block(const QuorumVoteIn *in, size_t off, size_t len, QuorumBlockVote *out);
/* Every child that succeeded returned the same bytes in [off, off + len):
 * the common case, one memcmp per child and no hashing. */
bool quorum_all_agree(const QuorumVoteIn *in, size_t off, size_t len);
/* Blocks of a request at offset: boundaries at multiples of block (absolute,
 * so a child's bad range is the same whatever request found it); the first
 * and the last may be partial. */
int64_t quorum_nblocks(int64_t offset, int64_t bytes, uint32_t block);
/* The length of the block of the request that starts at request byte pos. */
size_t quorum_block_len(int64_t offset, int64_t bytes, uint32_t block, int64_t pos);
/* quorum_vote_block for each block; out has quorum_nblocks entries. */
void quorum_vote_blocks(const QuorumVoteIn *in, int64_t offset, int64_t bytes, uint32_t block,
                        QuorumBlockVote *out);
/* The -errno most failed children returned (ties: the lowest child's); 0 if
 * none failed. */
int quorum_most_common_error(const int *errs, int n);
/* Number of children that returned data. */
int quorum_successes(const int *errs, int n);
/* The pre-filter hash (64-bit, word at a time; not cryptographic). */
uint64_t quorum_hash(const void *buf, size_t len);


/* ---- the driver's state (quorum.c, quorum-rebuild.c) ---- */
#include <pthread.h>
#include "block-driver.h"

/* Per-child counters, striped per thread slot (thread-slot.h). */
enum { QC_READS, QC_WRITES, QC_ERRORS, QC_CORRUPTIONS, QC_REWRITES, QC_REWRITE_FAILURES, QC__MAX };
/* Counters per slot: room for every child a quorum may grow to, whole
 * cache lines, so adding a child needs no new array. */
#define QUORUM_STATS_STRIDE (QUORUM_MAX_CHILDREN * QC__MAX)

typedef enum { QUORUM_READ_QUORUM, QUORUM_READ_FIFO } QuorumReadPattern;

/* A child's rebuild (quorum-rebuild.c). */
typedef enum {
    QRB_NONE,       /* never rebuilt here: complete */
    QRB_PENDING,    /* waits for the rebuild job (another child first) */
    QRB_RUNNING,
    QRB_DONE,       /* complete */
    QRB_FAILED,     /* stopped at done; votes only below it */
} QuorumRebuildState;

typedef struct QuorumRebuild {
    int state;          /* QRB_*; atomic (get_counters reads it) */
    int64_t done;       /* [0, done) is rebuilt: the child votes there; atomic */
    int64_t total;
    int64_t t0_ns;      /* this run's start and its done then: the estimate */
    int64_t done0;
    int err;            /* QRB_FAILED: -errno */
} QuorumRebuild;

/* A guest write in flight while a rebuild runs (on the writer's stack). */
typedef struct QuorumWriteReg {
    int64_t offset, bytes;
    struct QuorumWriteReg *next, *prev;
} QuorumWriteReg;

typedef struct QuorumState {
    int n;
    int threshold;
    QuorumReadPattern read_pattern;
    bool rewrite_corrupted;
    bool blkverify;
    BdrvChild *children[QUORUM_MAX_CHILDREN];
    uint64_t *stats;            /* THREAD_SLOTS * QUORUM_STATS_STRIDE counters */

    /* Rebuilds.  Children whose data is not complete have their bit in
     * incomplete (atomic; requests read it first, and with 0 nothing else);
     * it and rb[] change inside drained sections of the quorum or, for the
     * progress of a rebuild (done, state), by the job on the main thread. */
    uint32_t incomplete;
    QuorumRebuild rb[QUORUM_MAX_CHILDREN];
    /* The job (a coroutine on the node's home context). */
    bool job;                   /* it exists */
    bool job_busy;              /* between its pause points (a chunk in flight) */
    bool paused;                /* a drained section covers the node */
    bool cancel;                /* close: end now */
    int job_child;              /* the child it is rebuilding, -1 */
    Coroutine *job_parked;      /* the job, waiting for drain_end */
    CoQueue idle_q;             /* coroutines waiting for it to stop (main thread) */
    bool idle_poll;             /* ...or a caller polling the loop for that */
    /* The rebuild window: see quorum-rebuild.c for why writes check it. */
    int win_active;             /* atomic: guest writes register while set */
    pthread_mutex_t win_lock;
    int64_t win_off, win_len;   /* the range being copied; len 0: none */
    QuorumWriteReg *writes;     /* registered writes in flight */
    CoQueue win_q;              /* writes waiting for the window to move on */
    CoQueue job_win_q;          /* the job waiting for overlapping writes */
} QuorumState;

/* quorum.c, for quorum-rebuild.c */
void quorum_count(QuorumState *s, int child, int which);
void quorum_child_event(BlockDriverState *bs, int child, const char *type, const char *op,
                        int64_t offset, int64_t bytes, int err, const char *more);
/* Read [offset, offset + bytes) from the children in mask at once into
 * bufs[i] (stride apart), errs[i] per child (0 or -errno; children not in
 * mask get QUORUM_NO_VOTE). */
void coroutine_fn quorum_read_children(BlockDriverState *bs, uint32_t mask, int64_t offset,
                                       int64_t bytes, uint8_t *const *bufs, int *errs);
/* Where child i's data may vote: [0, limit) (INT64_MAX: everywhere). */
int64_t quorum_vote_limit(QuorumState *s, int i);

/* quorum-rebuild.c */
void quorum_rebuild_init(QuorumState *s);
void quorum_rebuild_cleanup(BlockDriverState *bs);
/* Mark child i to be rebuilt from 0 (inside a drained section, or at open)
 * and start the job if it is not running. */
void quorum_rebuild_mark(BlockDriverState *bs, int i);
void quorum_rebuild_kick(BlockDriverState *bs);
/* Wait until the job is between chunks (paused) or gone: main thread, a
 * drained section covering the node already begun. */
void quorum_rebuild_wait_idle(BlockDriverState *bs);
void quorum_drain_begin(BlockDriverState *bs);
void quorum_drain_end(BlockDriverState *bs);
/* Guest writes (data-changing requests) while a rebuild runs. */
bool coroutine_fn quorum_write_begin(QuorumState *s, QuorumWriteReg *w, int64_t offset,
                                     int64_t bytes);
void quorum_write_end(QuorumState *s, QuorumWriteReg *w);
void quorum_rebuild_counters(BlockDriverState *bs, ImageSpecificInfo *out);

#endif
