/*
 * quorum-int.h - the quorum driver's vote (drivers/quorum-vote.c), shared by
 * the driver (drivers/quorum.c) and the unit tests.
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

#endif
