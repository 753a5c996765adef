/*
 * quorum-vote.c - the per-block vote of the quorum driver (quorum-int.h).
 *
 * Why per block: QEMU votes on whole requests, so two children that are
 * wrong in different places fail a read although every block has a
 * majority.  Here every block (the largest child request_alignment, at
 * least 512 bytes) has its own vote.
 *
 * Cost: the driver first asks quorum_all_agree for the whole request (one
 * memcmp per child, which is what almost every read needs); only when that
 * fails does it vote block by block, hashing each child's block once and
 * comparing with memcmp only versions whose hashes match.
 */
#include <string.h>
#include "quorum-int.h"

uint64_t quorum_hash(const void *buf, size_t len)
{
    /* FNV-1a's offset basis and a 64-bit multiply-xorshift per word: fast
     * enough to be cheaper than the memcmp it saves, and any change to a
     * byte changes the word it is in and so (almost surely) the result. */
    const uint8_t *p = buf;
    uint64_t h = 0xcbf29ce484222325ULL ^ (len * 0x9E3779B97F4A7C15ULL);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < len; i++) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
    }
    h ^= h >> 32;
    return h * 0xff51afd7ed558ccdULL;
}

int quorum_successes(const int *errs, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        k += errs[i] == 0;
    }
    return k;
}

int quorum_most_common_error(const int *errs, int n)
{
    int best = 0, best_count = 0;
    for (int i = 0; i < n; i++) {
        if (!errs[i]) {
            continue;
        }
        int count = 0;
        for (int j = 0; j < n; j++) {
            count += errs[j] == errs[i];
        }
        if (count > best_count) {
            best = errs[i];
            best_count = count;
        }
    }
    return best;
}

bool quorum_all_agree(const QuorumVoteIn *in, size_t off, size_t len)
{
    const uint8_t *first = NULL;
    for (int i = 0; i < in->n; i++) {
        if (in->errs[i]) {
            continue;
        }
        if (!first) {
            first = in->bufs[i] + off;
        } else if (memcmp(first, in->bufs[i] + off, len)) {
            return false;
        }
    }
    return true;
}

void quorum_vote_block(const QuorumVoteIn *in, size_t off, size_t len, QuorumBlockVote *out)
{
    struct {
        uint64_t hash;
        int rep;            /* the lowest child holding this version */
        int votes;
        uint32_t mask;
    } groups[QUORUM_MAX_CHILDREN];
    int ngroups = 0;
    uint32_t failed = 0;

    for (int i = 0; i < in->n; i++) {
        if (in->errs[i]) {
            failed |= 1u << i;
            continue;
        }
        const uint8_t *p = in->bufs[i] + off;
        uint64_t h = quorum_hash(p, len);
        int g = 0;
        for (; g < ngroups; g++) {
            if (groups[g].hash == h && !memcmp(in->bufs[groups[g].rep] + off, p, len)) {
                break;
            }
        }
        if (g == ngroups) {
            groups[ngroups].hash = h;
            groups[ngroups].rep = i;
            groups[ngroups].votes = 0;
            groups[ngroups].mask = 0;
            ngroups++;
        }
        groups[g].votes++;
        groups[g].mask |= 1u << i;
    }

    /* Groups are in order of their lowest child: a strict > keeps the
     * earliest of equal ones. */
    int best = -1;
    for (int g = 0; g < ngroups; g++) {
        if (best < 0 || groups[g].votes > groups[best].votes) {
            best = g;
        }
    }
    out->failed = failed;
    out->versions = ngroups;
    if (best < 0) {
        out->winner = -1;
        out->votes = 0;
        out->agree = 0;
        out->minority = 0;
        return;
    }
    uint32_t returned = ~failed & (in->n == 32 ? ~0u : (1u << in->n) - 1);
    out->votes = groups[best].votes;
    out->agree = groups[best].mask;
    out->minority = returned & ~groups[best].mask;
    out->winner = groups[best].votes >= in->threshold ? groups[best].rep : -1;
}

int64_t quorum_nblocks(int64_t offset, int64_t bytes, uint32_t block)
{
    if (bytes <= 0) {
        return 0;
    }
    int64_t first = offset / block, last = (offset + bytes - 1) / block;
    return last - first + 1;
}

size_t quorum_block_len(int64_t offset, int64_t bytes, uint32_t block, int64_t pos)
{
    int64_t abs = offset + pos;
    int64_t next = (abs / block + 1) * block;
    int64_t end = offset + bytes;
    return (size_t)((next < end ? next : end) - abs);
}

void quorum_vote_blocks(const QuorumVoteIn *in, int64_t offset, int64_t bytes, uint32_t block,
                        QuorumBlockVote *out)
{
    int64_t k = 0;
    for (int64_t pos = 0; pos < bytes; k++) {
        size_t len = quorum_block_len(offset, bytes, block, pos);
        quorum_vote_block(in, (size_t)pos, len, &out[k]);
        pos += (int64_t)len;
    }
}
