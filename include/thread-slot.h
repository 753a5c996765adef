/*
 * thread-slot.h - a small per-thread index for striped counters.
 *
 * Counters that every queue thread updates per request (a node's requests
 * in flight, its write generation, a BlockBackend's statistics) are kept as
 * one copy per slot, each on its own cache line, so threads never write the
 * same line; readers (drain, flush, stats) sum the slots.  A thread gets a
 * slot of its own the first time it asks, up to THREAD_SLOTS - 1 threads at
 * once, and gives it back when it exits; threads beyond that share slot 0.
 * Since a slot may be shared (slot 0, or a coroutine that resumes on another
 * thread and finishes on that thread's slot), slot counters are updated with
 * atomic read-modify-writes and only their sum means anything.
 */
#ifndef UBLKD_THREAD_SLOT_H
#define UBLKD_THREAD_SLOT_H

#include <stdint.h>

#define THREAD_SLOTS 32
#define CACHE_LINE 64

/* The calling thread's slot, 0..THREAD_SLOTS-1.  Out of line: a coroutine
 * may resume on another thread, and the TLS address must be looked up anew. */
unsigned thread_slot(void);
/* Threads holding a slot of their own, for tests. */
unsigned thread_slots_in_use(void);

/*
 * Add v to a counter of slot (the calling thread's, from thread_slot()),
 * without ordering.  A slot of its own is written by no other thread, so a
 * plain load and store do (readers use relaxed atomic loads): no locked
 * instruction per request.  The shared slot 0 needs a real atomic add.
 */
static inline void thread_slot_add(uint64_t *counter, uint64_t v, unsigned slot)
{
    if (slot) {
        __atomic_store_n(counter, __atomic_load_n(counter, __ATOMIC_RELAXED) + v,
                         __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(counter, v, __ATOMIC_RELAXED);
    }
}

#endif
