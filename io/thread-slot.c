/*
 * thread-slot.c - per-thread slot indices (see thread-slot.h).
 *
 * Slots 1..THREAD_SLOTS-1 are handed out from a bitmap and returned by a
 * pthread key destructor at thread exit.  The thread-local caches slot + 1,
 * so that 0 means "not asked yet".
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include "thread-slot.h"

_Static_assert(THREAD_SLOTS <= 64, "the slot bitmap is one 64-bit word");

static uint64_t slots_used = 1;      /* bit 0: the shared slot, never handed out */
static __thread unsigned my_slot_plus1;
static pthread_key_t slot_key;
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;

static void slot_release(void *opaque)
{
    unsigned slot = (unsigned)(uintptr_t)opaque - 1;
    /* Another key's destructor may still do I/O on this thread: from now on
     * it adds to the shared slot, never to one handed to another thread. */
    my_slot_plus1 = 1;
    if (slot) {
        __atomic_fetch_and(&slots_used, ~(1ULL << slot), __ATOMIC_RELEASE);
    }
}

static void slot_key_init(void)
{
    pthread_key_create(&slot_key, slot_release);
}

static unsigned slot_take(void)
{
    uint64_t used = __atomic_load_n(&slots_used, __ATOMIC_RELAXED);
    for (;;) {
        uint64_t all = THREAD_SLOTS == 64 ? ~0ULL : (1ULL << THREAD_SLOTS) - 1;
        uint64_t free_bits = ~used & all;
        if (!free_bits) {
            return 0;
        }
        unsigned slot = (unsigned)__builtin_ctzll(free_bits);
        if (__atomic_compare_exchange_n(&slots_used, &used, used | (1ULL << slot), false,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            return slot;
        }
    }
}

__attribute__((noinline)) unsigned thread_slot(void)
{
    unsigned s = my_slot_plus1;
    __asm__ volatile("" : : : "memory");
    if (__builtin_expect(s != 0, 1)) {
        return s - 1;
    }
    pthread_once(&slot_once, slot_key_init);
    unsigned slot = slot_take();
    /* A shared slot is not given back: nothing to remember at exit. */
    if (slot) {
        pthread_setspecific(slot_key, (void *)(uintptr_t)(slot + 1));
    }
    my_slot_plus1 = slot + 1;
    return slot;
}

unsigned thread_slots_in_use(void)
{
    return (unsigned)__builtin_popcountll(__atomic_load_n(&slots_used, __ATOMIC_ACQUIRE)) - 1;
}
