/*
 * coroutine-int.h - coroutine internals shared by io/coroutine.c and io/aio.c.
 *
 * The event loop needs two hooks into a coroutine: an intrusive link so that
 * aio_co_schedule can queue it on another context without allocating, and a
 * "move me after I yield" slot for aio_co_reschedule_self (the move must not
 * be published before the coroutine is off its stack, or the other thread
 * could enter it while it is still running here).  Nothing outside io/ may
 * include this.
 */
#ifndef UBLKD_COROUTINE_INT_H
#define UBLKD_COROUTINE_INT_H

#include <stdatomic.h>
#include "coroutine.h"

/* Link for AioContext's lock-free list of scheduled coroutines. */
Coroutine **co_sched_link(Coroutine *co);
/* Set while co sits on some context's scheduled list (double-schedule check). */
atomic_bool *co_sched_flag(Coroutine *co);
/* Ask co_enter to aio_co_schedule(ctx, self) once self has yielded. */
void co_set_reschedule(Coroutine *self, AioContext *ctx);
/* Queue co to be entered right after the current coroutine yields. */
void co_queue_wakeup_after_yield(Coroutine *co);

/*
 * Thread-local lookups that are safe across a yield: a coroutine may resume
 * on another thread, so the compiler must not cache a TLS address across a
 * switch.  These are noinline with an opaque body for that reason.
 */
AioContext *aio_current(void);

#endif
