/*
 * throttle.c - leaky-bucket I/O throttling with QEMU's semantics
 * (util/throttle.c): a bucket fills by each request's bytes or ops and leaks
 * at avg per second; a request may go while the bucket holds less than
 * avg/10 (no burst configured) or max * burst_length (burst configured), and
 * with a burst the second "burst" bucket, leaking at max, caps the rate of
 * the burst itself.  A request that may go is accounted in full at once,
 * so a large one can overshoot and delay the next.
 *
 * Waiters queue per direction (see throttle.h); the registry of named groups
 * is a list under its own mutex, used only when exports open and close.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "throttle.h"

#define NS_PER_SEC 1000000000.0
#define THROTTLE_VALUE_MAX 1000000000000000LL

void throttle_config_init(ThrottleConfig *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        cfg->buckets[i].burst_length = 1;
    }
}

bool throttle_enabled(const ThrottleConfig *cfg)
{
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        if (cfg->buckets[i].avg > 0) {
            return true;
        }
    }
    return false;
}

static bool conflicts(const ThrottleConfig *cfg, ThrottleBucketType total,
                      ThrottleBucketType read, ThrottleBucketType write, bool use_max)
{
    const ThrottleBucket *b = cfg->buckets;
    if (use_max) {
        return b[total].max && (b[read].max || b[write].max);
    }
    return b[total].avg && (b[read].avg || b[write].avg);
}

static const char *const bucket_names[THROTTLE_BUCKETS] = {
    [THROTTLE_BPS_TOTAL] = "bps-total", [THROTTLE_BPS_READ] = "bps-read",
    [THROTTLE_BPS_WRITE] = "bps-write", [THROTTLE_OPS_TOTAL] = "iops-total",
    [THROTTLE_OPS_READ] = "iops-read",  [THROTTLE_OPS_WRITE] = "iops-write",
};

bool throttle_is_valid(const ThrottleConfig *cfg, Error **errp)
{
    if (conflicts(cfg, THROTTLE_BPS_TOTAL, THROTTLE_BPS_READ, THROTTLE_BPS_WRITE, false) ||
        conflicts(cfg, THROTTLE_OPS_TOTAL, THROTTLE_OPS_READ, THROTTLE_OPS_WRITE, false) ||
        conflicts(cfg, THROTTLE_BPS_TOTAL, THROTTLE_BPS_READ, THROTTLE_BPS_WRITE, true) ||
        conflicts(cfg, THROTTLE_OPS_TOTAL, THROTTLE_OPS_READ, THROTTLE_OPS_WRITE, true)) {
        error_setg(errp, "throttling: bps/iops/max total values and read/write values "
                         "cannot be used at the same time");
        return false;
    }
    if (cfg->op_size && !cfg->buckets[THROTTLE_OPS_TOTAL].avg &&
        !cfg->buckets[THROTTLE_OPS_READ].avg && !cfg->buckets[THROTTLE_OPS_WRITE].avg) {
        error_setg(errp, "throttling: iops-size requires an iops value to be set");
        return false;
    }
    /* Each message names the option it is about (throttling.<bucket>[-max[-length]]). */
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        const ThrottleBucket *b = &cfg->buckets[i];
        const char *name = bucket_names[i];
        bool avg_bad = b->avg < 0 || b->avg > THROTTLE_VALUE_MAX;
        if (avg_bad || b->max < 0 || b->max > THROTTLE_VALUE_MAX) {
            error_setg(errp, "throttling.%s%s: bps/iops/max values must be within [0, %lld], "
                       "got %g", name, avg_bad ? "" : "-max", THROTTLE_VALUE_MAX,
                       avg_bad ? b->avg : b->max);
            return false;
        }
        if (!b->burst_length) {
            error_setg(errp, "throttling.%s-max-length: the burst length cannot be 0", name);
            return false;
        }
        if (b->burst_length > 1 && !b->max) {
            error_setg(errp, "throttling.%s-max-length: burst length set without burst rate "
                       "(throttling.%s-max)", name, name);
            return false;
        }
        if (b->max && b->burst_length > THROTTLE_VALUE_MAX / b->max) {
            error_setg(errp, "throttling.%s-max-length: burst length too high for this burst "
                       "rate", name);
            return false;
        }
        if (b->max && !b->avg) {
            error_setg(errp, "throttling.%s-max: bps_max/iops_max require corresponding "
                       "bps/iops values (throttling.%s)", name, name);
            return false;
        }
        if (b->max && b->max < b->avg) {
            error_setg(errp, "throttling.%s-max: bps_max/iops_max cannot be lower than "
                       "bps/iops (throttling.%s)", name, name);
            return false;
        }
    }
    return true;
}

static int take_value(OptDict *opts, const char *key, int64_t *out, Error **errp)
{
    int ret = optdict_take_int(opts, key, 0, out, errp);
    if (ret < 0) {
        return ret;
    }
    if (*out < 0 || *out > THROTTLE_VALUE_MAX) {
        error_setg(errp, "%s: value %lld out of range [0, %lld]", key, (long long)*out,
                   THROTTLE_VALUE_MAX);
        return -EINVAL;
    }
    return 0;
}

int throttle_config_from_options(ThrottleConfig *cfg, OptDict *opts, Error **errp)
{
    char key[64];
    int64_t v;

    throttle_config_init(cfg);
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        ThrottleBucket *b = &cfg->buckets[i];
        snprintf(key, sizeof(key), "throttling.%s", bucket_names[i]);
        if (take_value(opts, key, &v, errp) < 0) {
            return -EINVAL;
        }
        b->avg = v;
        snprintf(key, sizeof(key), "throttling.%s-max", bucket_names[i]);
        if (take_value(opts, key, &v, errp) < 0) {
            return -EINVAL;
        }
        b->max = v;
        snprintf(key, sizeof(key), "throttling.%s-max-length", bucket_names[i]);
        if (optdict_has(opts, key)) {
            if (take_value(opts, key, &v, errp) < 0) {
                return -EINVAL;
            }
            b->burst_length = v;
        }
    }
    if (take_value(opts, "throttling.iops-size", &v, errp) < 0) {
        return -EINVAL;
    }
    cfg->op_size = v;
    const char *group = optdict_get(opts, "throttling.group");
    if (group) {
        if (!group[0] || strlen(group) >= sizeof(cfg->group)) {
            error_setg(errp, "throttling.group: the name must be 1 to %zu characters, "
                       "got '%s'", sizeof(cfg->group) - 1, group);
            return -EINVAL;
        }
        snprintf(cfg->group, sizeof(cfg->group), "%s", group);
        optdict_del(opts, "throttling.group");
    }
    return throttle_is_valid(cfg, errp) ? 0 : -EINVAL;
}

bool throttle_config_equal(const ThrottleConfig *a, const ThrottleConfig *b)
{
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        const ThrottleBucket *x = &a->buckets[i], *y = &b->buckets[i];
        if (x->avg != y->avg || x->max != y->max || x->burst_length != y->burst_length) {
            return false;
        }
    }
    return a->op_size == b->op_size;
}

void throttle_init(ThrottleState *ts, const ThrottleConfig *cfg, int64_t now_ns)
{
    pthread_mutex_init(&ts->lock, NULL);
    ts->cfg = *cfg;
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        ts->cfg.buckets[i].level = 0;
        ts->cfg.buckets[i].burst_level = 0;
    }
    ts->previous_leak_ns = now_ns;
    for (int i = 0; i < 2; i++) {
        ts->waiting[i] = 0;
        co_queue_init(&ts->queue[i]);
        ts->head_sleep[i] = NULL;
    }
    ts->lifted = 0;
    ts->refcnt = 1;
    ts->next_group = NULL;
}

void throttle_destroy(ThrottleState *ts)
{
    pthread_mutex_destroy(&ts->lock);
}

static void leak_bucket(ThrottleBucket *b, int64_t delta_ns)
{
    double leak = b->avg * (double)delta_ns / NS_PER_SEC;
    b->level = MAX(b->level - leak, 0.0);
    if (b->burst_length > 1) {
        leak = b->max * (double)delta_ns / NS_PER_SEC;
        b->burst_level = MAX(b->burst_level - leak, 0.0);
    }
}

/* ns until b lets a request through (0: now). */
static int64_t bucket_wait(const ThrottleBucket *b)
{
    double bucket_size, burst_bucket_size, extra;
    if (!b->avg) {
        return 0;
    }
    if (!b->max) {
        /* Without a burst rate still allow short bursts, or every other
         * request would be delayed. */
        bucket_size = b->avg / 10;
        burst_bucket_size = 0;
    } else {
        bucket_size = b->max * b->burst_length;
        burst_bucket_size = b->max / 10;
    }
    extra = b->level - bucket_size;
    if (extra > 0) {
        return (int64_t)(extra * NS_PER_SEC / b->avg);
    }
    if (b->burst_length > 1) {
        extra = b->burst_level - burst_bucket_size;
        if (extra > 0) {
            return (int64_t)(extra * NS_PER_SEC / b->max);
        }
    }
    return 0;
}

/* ts->lock held.  With force, the request is accounted even if it should
 * wait (limits lifted by a drain: it goes anyway, and later ones pay). */
static int64_t account_locked(ThrottleState *ts, bool is_write, uint64_t bytes, int64_t now_ns,
                              bool force)
{
    static const ThrottleBucketType check[2][4] = {
        { THROTTLE_BPS_TOTAL, THROTTLE_OPS_TOTAL, THROTTLE_BPS_READ, THROTTLE_OPS_READ },
        { THROTTLE_BPS_TOTAL, THROTTLE_OPS_TOTAL, THROTTLE_BPS_WRITE, THROTTLE_OPS_WRITE },
    };
    ThrottleBucket *b = ts->cfg.buckets;
    int64_t wait = 0;

    int64_t delta = now_ns - ts->previous_leak_ns;
    if (delta > 0) {
        ts->previous_leak_ns = now_ns;
        for (int i = 0; i < THROTTLE_BUCKETS; i++) {
            leak_bucket(&b[i], delta);
        }
    }
    for (int i = 0; i < 4; i++) {
        wait = MAX(wait, bucket_wait(&b[check[is_write][i]]));
    }
    if (wait == 0 || force) {
        double units = 1.0;
        if (ts->cfg.op_size && bytes > ts->cfg.op_size) {
            units = (double)bytes / ts->cfg.op_size;
        }
        ThrottleBucketType bps[2] = { THROTTLE_BPS_TOTAL,
                                      is_write ? THROTTLE_BPS_WRITE : THROTTLE_BPS_READ };
        ThrottleBucketType ops[2] = { THROTTLE_OPS_TOTAL,
                                      is_write ? THROTTLE_OPS_WRITE : THROTTLE_OPS_READ };
        for (int i = 0; i < 2; i++) {
            b[bps[i]].level += bytes;
            b[ops[i]].level += units;
            if (b[bps[i]].burst_length > 1) {
                b[bps[i]].burst_level += bytes;
            }
            if (b[ops[i]].burst_length > 1) {
                b[ops[i]].burst_level += units;
            }
        }
    }
    return wait;
}

int64_t throttle_try_account(ThrottleState *ts, bool is_write, uint64_t bytes, int64_t now_ns)
{
    pthread_mutex_lock(&ts->lock);
    int64_t wait = account_locked(ts, is_write, bytes, now_ns, false);
    pthread_mutex_unlock(&ts->lock);
    return wait;
}

/* The head's sleep: ended by its timer or by throttle_lift_limits, whichever
 * comes first (armed makes sure only one wakes it). */
typedef struct ThrottleSleep {
    Coroutine *co;
    int armed;
} ThrottleSleep;

static void throttle_sleep_timer(void *opaque)
{
    ThrottleSleep *sl = opaque;
    if (__atomic_exchange_n(&sl->armed, 0, __ATOMIC_SEQ_CST)) {
        aio_co_wake(sl->co);
    }
}

void throttle_lift_limits(ThrottleState *ts)
{
    Coroutine *wake[2];
    int n = 0;
    if (!ts) {
        return;
    }
    pthread_mutex_lock(&ts->lock);
    ts->lifted++;
    for (int i = 0; i < 2; i++) {
        ThrottleSleep *sl = ts->head_sleep[i];
        if (sl && __atomic_exchange_n(&sl->armed, 0, __ATOMIC_SEQ_CST)) {
            wake[n++] = sl->co;
        }
    }
    pthread_mutex_unlock(&ts->lock);
    /* Outside the lock: a head of this thread may be entered right here, and
     * takes the lock.  Disarmed, it cannot leave before we wake it. */
    for (int i = 0; i < n; i++) {
        aio_co_wake(wake[i]);    /* on its own AioContext */
    }
}

void throttle_restore_limits(ThrottleState *ts)
{
    if (!ts) {
        return;
    }
    pthread_mutex_lock(&ts->lock);
    ts->lifted--;
    pthread_mutex_unlock(&ts->lock);
}

void coroutine_fn throttle_co_wait(ThrottleState *ts, bool is_write, uint64_t bytes)
{
    AioContext *ctx = aio_current();
    unsigned *waiting = &ts->waiting[is_write];

    pthread_mutex_lock(&ts->lock);
    if ((*waiting)++) {
        /* Someone came first: the one ahead of us wakes us when it is through
         * (on our own context), and then we are the head. */
        co_queue_wait_mutex(&ts->queue[is_write], &ts->lock);
    }
    for (;;) {
        int64_t wait = account_locked(ts, is_write, bytes, aio_now_ns(ctx), ts->lifted > 0);
        if (wait == 0 || ts->lifted) {
            break;
        }
        /* Sleep on this thread's clock; the lock is not held meanwhile. */
        ThrottleSleep sl = { .co = co_self(), .armed = 1 };
        AioTimer timer;
        aio_timer_init(&timer, ctx, throttle_sleep_timer, &sl);
        aio_timer_mod(&timer, aio_now_ns(ctx) + wait);
        ts->head_sleep[is_write] = &sl;
        pthread_mutex_unlock(&ts->lock);
        co_yield();
        aio_timer_del(&timer);   /* woken early: the timer is on our stack */
        pthread_mutex_lock(&ts->lock);
        ts->head_sleep[is_write] = NULL;
    }
    if (--(*waiting)) {
        /* From a coroutine this only schedules the next head. */
        co_queue_next(&ts->queue[is_write]);
    }
    pthread_mutex_unlock(&ts->lock);
}

/* ---------------------------------------------------------------- groups */

static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static ThrottleState *groups;

ThrottleState *throttle_group_ref(const ThrottleConfig *cfg, int64_t now_ns, Error **errp)
{
    const char *name = cfg->group;
    ThrottleState *ts = NULL;

    if (!throttle_is_valid(cfg, errp)) {
        return NULL;
    }
    pthread_mutex_lock(&groups_lock);
    if (name[0]) {
        for (ts = groups; ts && strcmp(ts->cfg.group, name); ts = ts->next_group) {
        }
    }
    if (ts) {
        if (throttle_enabled(cfg) && !throttle_config_equal(&ts->cfg, cfg)) {
            error_setg(errp, "throttling.group '%s': limits differ from the ones the group "
                       "already has (give the same ones, or none to just join)", name);
            ts = NULL;
        } else {
            ts->refcnt++;
        }
    } else if (!throttle_enabled(cfg)) {
        if (name[0]) {
            error_setg(errp, "throttling.group '%s' does not exist: its first member must "
                       "give its limits", name);
        } else {
            error_setg(errp, "throttling: no limits given");
        }
    } else {
        ts = calloc(1, sizeof(*ts));
        if (!ts) {
            error_setg(errp, "out of memory");
        } else {
            throttle_init(ts, cfg, now_ns);
            if (name[0]) {
                ts->next_group = groups;
                groups = ts;
            }
        }
    }
    pthread_mutex_unlock(&groups_lock);
    return ts;
}

void throttle_group_unref(ThrottleState *ts)
{
    if (!ts) {
        return;
    }
    pthread_mutex_lock(&groups_lock);
    bool last = --ts->refcnt == 0;
    if (last && ts->cfg.group[0]) {
        for (ThrottleState **p = &groups; *p; p = &(*p)->next_group) {
            if (*p == ts) {
                *p = ts->next_group;
                break;
            }
        }
    }
    pthread_mutex_unlock(&groups_lock);
    if (last) {
        throttle_destroy(ts);
        free(ts);
    }
}
