/*
 * block-counters.c - a node's per-request counters, striped per thread.
 *
 * Every request on a node counts itself in flight (for drain), every write
 * bumps the write generation (so a flush with nothing new to flush is
 * skipped), and a request that is not on the tracked list counts itself as
 * unlisted (so a request that starts serialising can wait for it).  With one
 * shared counter each, two queue threads write the same cache line on every
 * request and the request path stops scaling with threads; here each thread
 * writes only its own slot (thread-slot.h) and readers sum the slots.
 *
 * Sums are exact enough for their users.  A counted request that began
 * before the reader started and ends after it finished is always seen: the
 * reader loads all "ended" counts before all "started" counts, and a request
 * whose end it saw had its start ordered before that end, so no request is
 * counted ended without being counted started.  All updates and loads are
 * sequentially consistent, so the Dekker-style pairings of the callers
 * (request: count, then check quiesce_counter / serialising_in_flight;
 * drain or serialiser: raise those, then sum) keep working as with a single
 * counter.
 */
#include "block-io-int.h"

static inline BdrvNodeSlot *my_slot(BlockDriverState *bs)
{
    return &bs->slot[thread_slot()];
}

void bdrv_inc_in_flight(BlockDriverState *bs)
{
    __atomic_fetch_add(&my_slot(bs)->in_flight_started, 1, __ATOMIC_SEQ_CST);
}

void bdrv_dec_in_flight(BlockDriverState *bs)
{
    __atomic_fetch_add(&my_slot(bs)->in_flight_ended, 1, __ATOMIC_SEQ_CST);
    bdrv_in_flight_ended(bs);
}

/* Ends first (see the header comment). */
#define SLOT_SUM(bs, started, ended) ({                                              \
    uint64_t e_ = 0, s_ = 0;                                                         \
    for (int i_ = 0; i_ < THREAD_SLOTS; i_++) {                                      \
        e_ += __atomic_load_n(&(bs)->slot[i_].ended, __ATOMIC_SEQ_CST);              \
    }                                                                                \
    for (int i_ = 0; i_ < THREAD_SLOTS; i_++) {                                      \
        s_ += __atomic_load_n(&(bs)->slot[i_].started, __ATOMIC_SEQ_CST);            \
    }                                                                                \
    s_ - e_;                                                                         \
})

unsigned bdrv_in_flight(BlockDriverState *bs)
{
    return (unsigned)SLOT_SUM(bs, in_flight_started, in_flight_ended);
}

void bdrv_untracked_begin(BlockDriverState *bs)
{
    __atomic_fetch_add(&my_slot(bs)->untracked_started, 1, __ATOMIC_SEQ_CST);
}

void bdrv_untracked_end(BlockDriverState *bs)
{
    __atomic_fetch_add(&my_slot(bs)->untracked_ended, 1, __ATOMIC_SEQ_CST);
}

uint64_t bdrv_untracked_in_flight(BlockDriverState *bs)
{
    return SLOT_SUM(bs, untracked_started, untracked_ended);
}

void bdrv_write_gen_bump(BlockDriverState *bs)
{
    /* Ordered by the callers' own synchronisation: a flush only has to see
     * the writes that completed before it was issued. */
    unsigned slot = thread_slot();
    thread_slot_add(&bs->slot[slot].write_gen, 1, slot);
}

uint64_t bdrv_write_gen(BlockDriverState *bs)
{
    uint64_t gen = 0;
    for (int i = 0; i < THREAD_SLOTS; i++) {
        gen += __atomic_load_n(&bs->slot[i].write_gen, __ATOMIC_ACQUIRE);
    }
    return gen;
}
