/*
 * test-quorum-vote.c - the quorum driver's per-block vote as a pure function
 * (drivers/quorum-vote.c): every split of 3 and 5 children into agreeing,
 * corrupt (alike or each different) and failing ones, at every threshold,
 * against a counting oracle; per-block votes where a whole-request vote
 * fails; block boundaries; the errno chosen when too few children return.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"
#include "../../drivers/quorum-int.h"

#define BLK 512

enum { AGREE, CORRUPT, FAIL };

/* Oracle: versions by counting, ties to the lowest child's version. */
typedef struct Expect {
    int winner_version;     /* -1: none reached threshold */
    uint32_t agree, minority, failed;
    int votes, versions;
} Expect;

/* version[i]: 0 = the good data, k > 0 = wrong data k, -1 = failed */
static Expect oracle(const int *version, int n, int threshold)
{
    Expect e = { .winner_version = -1 };
    int count[64] = { 0 }, first[64];
    for (int v = 0; v < 64; v++) {
        first[v] = 99;
    }
    for (int i = 0; i < n; i++) {
        if (version[i] < 0) {
            e.failed |= 1u << i;
            continue;
        }
        if (!count[version[i]]++) {
            e.versions++;
        }
        if (i < first[version[i]]) {
            first[version[i]] = i;
        }
    }
    int best = -1;
    for (int v = 0; v < 64; v++) {
        if (count[v] && (best < 0 || count[v] > count[best] ||
                         (count[v] == count[best] && first[v] < first[best]))) {
            best = v;
        }
    }
    if (best < 0) {
        return e;
    }
    e.votes = count[best];
    for (int i = 0; i < n; i++) {
        if (version[i] == best) {
            e.agree |= 1u << i;
        } else if (version[i] >= 0) {
            e.minority |= 1u << i;
        }
    }
    if (count[best] >= threshold) {
        e.winner_version = best;
    }
    return e;
}

static void fill_version(uint8_t *buf, int version)
{
    test_pattern(buf, BLK, 1000);
    if (version > 0) {
        /* One byte off, somewhere different per version: a vote that
         * compared less than the whole block would miss it. */
        buf[(version * 97) % BLK] ^= (uint8_t)version;
    }
}

/* Every assignment of states to n children, corrupt ones alike or each
 * different, at every threshold. */
static void check_all_splits(int n)
{
    int states = 1;
    for (int i = 0; i < n; i++) {
        states *= 3;
    }
    uint8_t data[5][BLK];
    const uint8_t *bufs[5];
    int errs[5], version[5];
    int checked = 0;
    for (int alike = 0; alike < 2; alike++) {
        for (int code = 0; code < states; code++) {
            int c = code, wrong = 0;
            for (int i = 0; i < n; i++, c /= 3) {
                int st = c % 3;
                version[i] = st == AGREE ? 0 : st == FAIL ? -1 : (alike ? 1 : ++wrong);
                errs[i] = st == FAIL ? (i % 2 ? -EIO : -ENOSPC) : 0;
                fill_version(data[i], version[i] < 0 ? 0 : version[i]);
                if (st == FAIL) {
                    memset(data[i], 0xee, BLK);   /* a failed child's buffer is ignored */
                }
                bufs[i] = data[i];
            }
            for (int t = 1; t <= n; t++) {
                QuorumVoteIn in = { .n = n, .bufs = bufs, .errs = errs, .threshold = t };
                QuorumBlockVote v;
                quorum_vote_block(&in, 0, BLK, &v);
                Expect e = oracle(version, n, t);
                assert_int_equal(v.failed, e.failed);
                assert_int_equal(v.versions, e.versions);
                assert_int_equal(v.votes, e.votes);
                assert_int_equal(v.agree, e.agree);
                assert_int_equal(v.minority, e.minority);
                if (e.winner_version < 0) {
                    assert_int_equal(v.winner, -1);
                } else {
                    assert_true(v.winner >= 0 && v.winner < n);
                    assert_int_equal(version[v.winner], e.winner_version);
                    assert_true(v.agree & (1u << v.winner));
                }
                /* all_agree is exactly "one version or none". */
                assert_int_equal(quorum_all_agree(&in, 0, BLK), e.versions <= 1);
                checked++;
            }
        }
    }
    assert_int_equal(checked, 2 * states * n);
}

static void test_every_split_of_3(void **state)
{
    (void)state;
    check_all_splits(3);
}

static void test_every_split_of_5(void **state)
{
    (void)state;
    check_all_splits(5);
}

/* 3 children, threshold 2: child 1 wrong in block 1, child 2 in block 3.
 * A vote over the whole request sees three versions of one vote each and
 * fails (QEMU's); per block, each block has two votes. */
static void test_per_block_where_whole_request_fails(void **state)
{
    (void)state;
    enum { NB = 4, LEN = NB * BLK };
    uint8_t good[LEN], b1[LEN], b2[LEN];
    test_pattern(good, LEN, 7);
    memcpy(b1, good, LEN);
    memcpy(b2, good, LEN);
    b1[1 * BLK + 10] ^= 0xff;
    b2[3 * BLK + BLK - 1] ^= 0x01;
    const uint8_t *bufs[3] = { good, b1, b2 };
    int errs[3] = { 0, 0, 0 };
    QuorumVoteIn in = { .n = 3, .bufs = bufs, .errs = errs, .threshold = 2 };

    QuorumBlockVote whole;
    quorum_vote_block(&in, 0, LEN, &whole);
    assert_int_equal(whole.winner, -1);
    assert_int_equal(whole.versions, 3);
    assert_int_equal(whole.votes, 1);

    QuorumBlockVote v[NB];
    assert_int_equal(quorum_nblocks(0, LEN, BLK), NB);
    quorum_vote_blocks(&in, 0, LEN, BLK, v);
    for (int k = 0; k < NB; k++) {
        assert_true(v[k].winner >= 0);
        assert_memory_equal(bufs[v[k].winner] + k * BLK, good + k * BLK, BLK);
    }
    assert_int_equal(v[0].minority, 0);
    assert_int_equal(v[1].minority, 1u << 1);
    assert_int_equal(v[2].minority, 0);
    assert_int_equal(v[3].minority, 1u << 2);
    assert_int_equal(v[3].votes, 2);
}

/* Blocks sit at absolute multiples: an unaligned request has a partial
 * first and last block. */
static void test_block_boundaries(void **state)
{
    (void)state;
    assert_int_equal(quorum_nblocks(0, 0, 512), 0);
    assert_int_equal(quorum_nblocks(0, 1, 512), 1);
    assert_int_equal(quorum_nblocks(511, 2, 512), 2);
    assert_int_equal(quorum_nblocks(100, 1000, 512), 3);     /* 100..1100: 412 + 512 + 76 */
    assert_int_equal(quorum_block_len(100, 1000, 512, 0), 412);
    assert_int_equal(quorum_block_len(100, 1000, 512, 412), 512);
    assert_int_equal(quorum_block_len(100, 1000, 512, 924), 76);
    assert_int_equal(quorum_nblocks(4096, 8192, 4096), 2);
    assert_int_equal(quorum_block_len(4096, 8192, 4096, 4096), 4096);

    /* A difference in the partial last block is found there. */
    uint8_t a[1000], b[1000];
    test_pattern(a, sizeof(a), 3);
    memcpy(b, a, sizeof(b));
    b[999] ^= 1;
    const uint8_t *bufs[3] = { a, a, b };
    int errs[3] = { 0 };
    QuorumVoteIn in = { .n = 3, .bufs = bufs, .errs = errs, .threshold = 2 };
    QuorumBlockVote v[3];
    quorum_vote_blocks(&in, 100, 1000, 512, v);
    assert_int_equal(v[0].minority, 0);
    assert_int_equal(v[1].minority, 0);
    assert_int_equal(v[2].minority, 1u << 2);
}

static void test_most_common_error(void **state)
{
    (void)state;
    int none[3] = { 0, 0, 0 };
    assert_int_equal(quorum_most_common_error(none, 3), 0);
    int two[3] = { -EIO, -ENOSPC, -ENOSPC };
    assert_int_equal(quorum_most_common_error(two, 3), -ENOSPC);
    int tie[4] = { 0, -EPERM, -EIO, 0 };
    assert_int_equal(quorum_most_common_error(tie, 4), -EPERM);   /* the lowest child's */
    assert_int_equal(quorum_successes(tie, 4), 2);
}

/* The hash is only a pre-filter, but one that misses single-bit changes
 * would make every vote fall back to memcmp of all pairs; and equal data
 * must hash equal wherever it sits in memory. */
static void test_hash_sees_every_bit(void **state)
{
    (void)state;
    uint8_t a[520], b[520];
    test_pattern(a, sizeof(a), 11);
    uint64_t h = quorum_hash(a, 512);
    memcpy(b + 3, a, 512);
    assert_true(quorum_hash(b + 3, 512) == h);   /* unaligned copy */
    for (int bit = 0; bit < 512 * 8; bit += 7) {
        a[bit / 8] ^= (uint8_t)(1 << (bit % 8));
        assert_true(quorum_hash(a, 512) != h);
        a[bit / 8] ^= (uint8_t)(1 << (bit % 8));
    }
    assert_true(quorum_hash(a, 511) != quorum_hash(a, 512));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_split_of_3),
        cmocka_unit_test(test_every_split_of_5),
        cmocka_unit_test(test_per_block_where_whole_request_fails),
        cmocka_unit_test(test_block_boundaries),
        cmocka_unit_test(test_most_common_error),
        cmocka_unit_test(test_hash_sees_every_bit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
