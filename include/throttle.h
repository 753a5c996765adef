/*
 * throttle.h - I/O throttling with token buckets (as QEMU's throttle groups).
 *
 * Six buckets: iops and bytes/s, each for read, write and total.  Each has an
 * average rate (avg per second), an optional burst rate (max) and the time the
 * burst may last (burst_length seconds).  Buckets leak at avg; a request may
 * go when every bucket that applies has room.  The state is shared by all
 * queue threads of one export, or of every export naming the same
 * throttling.group (a short pthread mutex around the arithmetic, never held
 * while waiting).
 *
 * Waiting is first come, first served per direction, as QEMU's groups queue
 * throttled requests: once a read (write) waits, later reads (writes) queue
 * behind it, so a large request is not starved by a stream of small ones.
 * Only the head of a queue accounts; it sleeps on its own thread's timer and,
 * once through, wakes the next on that waiter's own AioContext.  Time comes
 * from the caller's AioContext clock, so tests drive it with a virtual clock.
 */
#ifndef UBLKD_THROTTLE_H
#define UBLKD_THROTTLE_H

#include <pthread.h>
#include "compiler.h"
#include "coroutine.h"
#include "error.h"
#include "options.h"

typedef enum {
    THROTTLE_BPS_TOTAL, THROTTLE_BPS_READ, THROTTLE_BPS_WRITE,
    THROTTLE_OPS_TOTAL, THROTTLE_OPS_READ, THROTTLE_OPS_WRITE,
    THROTTLE_BUCKETS
} ThrottleBucketType;

typedef struct ThrottleBucket {
    double avg;            /* units per second, 0 = unlimited */
    double max;            /* burst rate, 0 = avg */
    double level;          /* current fill */
    double burst_level;    /* fill of the burst bucket */
    uint64_t burst_length; /* seconds the burst may last (>= 1) */
} ThrottleBucket;

#define THROTTLE_GROUP_NAME_MAX 64

typedef struct ThrottleConfig {
    ThrottleBucket buckets[THROTTLE_BUCKETS];
    uint64_t op_size;      /* iops-size: larger ops count as several */
    char group[THROTTLE_GROUP_NAME_MAX];   /* throttling.group, "" = none */
} ThrottleConfig;

typedef struct ThrottleState {
    pthread_mutex_t lock;
    ThrottleConfig cfg;
    int64_t previous_leak_ns;
    /* Per direction (0 read, 1 write): requests waiting, the head included;
     * all but the head wait in queue, in arrival order. */
    unsigned waiting[2];
    CoQueue queue[2];
    struct ThrottleSleep *head_sleep[2];   /* the sleeping head, if any */
    unsigned lifted;       /* >0: limits lifted (a member is drained) */
    /* Registry (throttle_group_ref): references, next named group. */
    int refcnt;
    struct ThrottleState *next_group;
} ThrottleState;

void throttle_config_init(ThrottleConfig *cfg);
bool throttle_enabled(const ThrottleConfig *cfg);
/* Check limits (conflicts, negative values, burst < avg) with clear messages. */
bool throttle_is_valid(const ThrottleConfig *cfg, Error **errp);
/* Take "throttling.iops-total", "throttling.bps-read-max", ...,
 * "throttling.group" style keys (QEMU's names) from opts. */
int throttle_config_from_options(ThrottleConfig *cfg, OptDict *opts, Error **errp);
/* Same limits (the group name and bucket levels aside). */
bool throttle_config_equal(const ThrottleConfig *a, const ThrottleConfig *b);

void throttle_init(ThrottleState *ts, const ThrottleConfig *cfg, int64_t now_ns);
void throttle_destroy(ThrottleState *ts);
/*
 * Account a request of `bytes` if allowed at now_ns and return 0; otherwise
 * return the number of ns to wait before trying again (nothing accounted).
 */
int64_t throttle_try_account(ThrottleState *ts, bool is_write, uint64_t bytes, int64_t now_ns);
/* Coroutine helper: queues behind earlier waiters of the same direction,
 * waits (on the current context's timers) and accounts. */
void coroutine_fn throttle_co_wait(ThrottleState *ts, bool is_write, uint64_t bytes);
/*
 * While a drained section reaches a member of ts, requests must not wait out
 * a delay: lift wakes the sleeping heads at once and, until the matching
 * restore, every request goes without waiting (still accounted, so the
 * rate evens out afterwards).  Nested lifts count.  It lifts the limits of
 * the whole group, not only of the drained member: the queues are shared
 * and first come, first served, so one member's requests cannot leave them
 * ahead of the others'.  ts may be NULL (no throttling).
 */
void throttle_lift_limits(ThrottleState *ts);
void throttle_restore_limits(ThrottleState *ts);

/*
 * The state an export throttles on.  Without cfg->group: a new private one.
 * With a group: the group's, created by its first member with cfg's limits;
 * a later member may give no limits (it joins) or the same ones, different
 * limits are an error, as is joining a group that does not exist yet.
 */
ThrottleState *throttle_group_ref(const ThrottleConfig *cfg, int64_t now_ns, Error **errp);
void throttle_group_unref(ThrottleState *ts);   /* the last reference frees it */

#endif
