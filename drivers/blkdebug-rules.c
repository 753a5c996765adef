/*
 * blkdebug-rules.c - the fault-injection filter's rules: parsing the
 * inject-error.N.* / inject-fault.N.* families and matching a request
 * against them from any thread; drivers/blkdebug-control.c replaces the
 * control set at run time.  The syntax is described in drivers/blkdebug.c.
 *
 * Concurrency.  Queue threads match in parallel and take no lock:
 *   - a published rule set is immutable except for each rule's counters,
 *     which are atomics (matched: fetch-add; fired: compare-and-swap);
 *   - the control set is one atomic pointer.  The main thread builds a new
 *     set, publishes it with a release store, and keeps the old one on a
 *     retired list until close, so a request that loaded the old pointer
 *     can keep reading it.  Close runs after every request has finished
 *     (the node is drained), so nothing can be reading any set then.  The
 *     cost is a few hundred bytes per reload for the node's lifetime, which
 *     a test's handful of reloads does not notice; a reclaim scheme (RCU,
 *     hazard pointers) would cost the I/O path more than it saves.
 *
 * Reproducibility.  Each rule draws from its own stream: the n-th matching
 * request's draw is splitmix64(rule seed + n * golden ratio), where n comes
 * from the rule's atomic counter.  The same requests in the same order give
 * the same pattern whatever threads they ran on; the rule seed mixes the
 * node's seed= with the rule's family and number, so rules are independent.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "blkdebug-int.h"

static const char *const event_names[] = {
    "read", "write", "flush", "discard", "write-zeroes", "block-status", NULL,
};
/* Indexes are BlkdebugAction - 1. */
static const char *const action_names[] = {
    "error", "corrupt", "delay", "lost-write", NULL,
};

#define BLKDEBUG_MAX_DELAY_MS 600000

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* probability: a decimal from 0 to 1 (optdict has no float getter). */
static int take_probability(OptDict *d, const char *family, int n, BlkdebugRule *r,
                            Error **errp)
{
    char *v;
    optdict_take_str(d, "probability", NULL, &v);
    if (!v) {
        return 0;
    }
    char *end;
    errno = 0;
    double p = strtod(v, &end);
    if (!*v || *end || errno || !(p >= 0.0 && p <= 1.0)) {
        error_setg(errp, "blkdebug: %s.%d.probability must be a number from 0 to 1, got '%s'",
                   family, n, v);
        free(v);
        return -EINVAL;
    }
    free(v);
    r->has_probability = true;
    r->always = p >= 1.0;
    /* p * 2^64: below 2^64 since p < 1 here (p <= 1 - 2^-53) */
    r->threshold = r->always ? 0 : (uint64_t)(p * 18446744073709551616.0);
    return 0;
}

/* One rule of family ("inject-error": action error; "inject-fault": action=)
 * from d, which holds that rule's keys without the "family.n." prefix. */
static int parse_rule(OptDict *d, const char *family, int n, uint64_t seed, BlkdebugRule *r,
                      Error **errp)
{
    bool fault = !strcmp(family, "inject-fault");
    char what[64];
    snprintf(what, sizeof(what), "blkdebug rule %s.%d", family, n);
    memset(r, 0, sizeof(*r));

    if (!optdict_has(d, "event")) {
        error_setg(errp, "blkdebug: %s.%d.event is required (one of read, write, "
                   "flush, discard, write-zeroes, block-status)", family, n);
        return -EINVAL;
    }
    if (fault && !optdict_has(d, "action")) {
        error_setg(errp, "blkdebug: %s.%d.action is required (one of error, corrupt, delay, "
                   "lost-write)", family, n);
        return -EINVAL;
    }
    bool has_errno = optdict_has(d, "errno"), has_delay = optdict_has(d, "delay-ms");
    bool has_offset = optdict_has(d, "offset"), has_sector = optdict_has(d, "sector");
    bool has_length = optdict_has(d, "length"), has_end = optdict_has(d, "end");
    bool has_every = optdict_has(d, "every");
    int ev = optdict_take_enum(d, "event", event_names, 0, errp);
    int act = ev < 0 ? -1 : fault ? optdict_take_enum(d, "action", action_names, 0, errp) : 0;
    /* Byte values take size suffixes (offset=1M); sector is a number. */
    int64_t err, sector, every, delay_ms;
    uint64_t uoffset, ulength, uend;
    if (ev < 0 || act < 0 ||
        optdict_take_int(d, "errno", EIO, &err, errp) < 0 ||
        optdict_take_size(d, "offset", 0, &uoffset, errp) < 0 ||
        optdict_take_int(d, "sector", 0, &sector, errp) < 0 ||
        optdict_take_size(d, "length", 0, &ulength, errp) < 0 ||
        optdict_take_size(d, "end", 0, &uend, errp) < 0 ||
        optdict_take_int(d, "every", 1, &every, errp) < 0 ||
        optdict_take_int(d, "delay-ms", 0, &delay_ms, errp) < 0 ||
        optdict_take_bool(d, "once", false, &r->once, errp) < 0) {
        error_prepend(errp, "blkdebug %s.%d: ", family, n);
        return -EINVAL;
    }
    if (take_probability(d, family, n, r, errp) < 0) {
        return -EINVAL;
    }
    if (optdict_check_empty(d, what, errp) < 0) {
        return -EINVAL;
    }
    r->event = (BlkdebugEvent)ev;
    r->action = (BlkdebugAction)(act + 1);

    /* Action and its parameters. */
    if (has_errno && r->action != BD_ACT_ERROR) {
        error_setg(errp, "blkdebug: %s.%d.errno is only for action=error", family, n);
        return -EINVAL;
    }
    if (err <= 0 || err > 4095) {
        error_setg(errp, "blkdebug: %s.%d.errno must be a positive errno value, "
                   "got %" PRId64, family, n, err);
        return -EINVAL;
    }
    if (has_delay && r->action != BD_ACT_DELAY) {
        error_setg(errp, "blkdebug: %s.%d.delay-ms is only for action=delay", family, n);
        return -EINVAL;
    }
    if (r->action == BD_ACT_DELAY && !has_delay) {
        error_setg(errp, "blkdebug: %s.%d: action=delay needs delay-ms", family, n);
        return -EINVAL;
    }
    if (has_delay && (delay_ms <= 0 || delay_ms > BLKDEBUG_MAX_DELAY_MS)) {
        error_setg(errp, "blkdebug: %s.%d.delay-ms must be from 1 to %d, got %" PRId64,
                   family, n, BLKDEBUG_MAX_DELAY_MS, delay_ms);
        return -EINVAL;
    }
    if (r->action == BD_ACT_CORRUPT && r->event != BD_EV_READ) {
        error_setg(errp, "blkdebug: %s.%d: action=corrupt needs event=read", family, n);
        return -EINVAL;
    }
    if (r->action == BD_ACT_LOST_WRITE && r->event != BD_EV_WRITE &&
        r->event != BD_EV_WRITE_ZEROES && r->event != BD_EV_DISCARD) {
        error_setg(errp, "blkdebug: %s.%d: action=lost-write needs event=write, write-zeroes "
                   "or discard", family, n);
        return -EINVAL;
    }

    /* Range. */
    if (has_offset && has_sector) {
        error_setg(errp, "blkdebug: %s.%d: give offset or sector, not both", family, n);
        return -EINVAL;
    }
    if (has_length && has_end) {
        error_setg(errp, "blkdebug: %s.%d: give length or end, not both", family, n);
        return -EINVAL;
    }
    if ((has_length || has_end) && !has_offset && !has_sector) {
        error_setg(errp, "blkdebug: %s.%d: %s needs offset or sector", family, n,
                   has_length ? "length" : "end");
        return -EINVAL;
    }
    if (r->event == BD_EV_FLUSH && (has_offset || has_sector)) {
        error_setg(errp, "blkdebug: %s.%d: a flush has no offset; event=flush takes no "
                   "offset or sector", family, n);
        return -EINVAL;
    }
    if (sector < 0 || sector > INT64_MAX / (int64_t)BDRV_SECTOR_SIZE) {
        error_setg(errp, "blkdebug: %s.%d.sector must be from 0 to 2^54-1, got %" PRId64,
                   family, n, sector);
        return -EINVAL;
    }
    if (uoffset > INT64_MAX || ulength > INT64_MAX || uend > INT64_MAX) {
        error_setg(errp, "blkdebug: %s.%d.%s must be below 2^63", family, n,
                   uoffset > INT64_MAX ? "offset" : ulength > INT64_MAX ? "length" : "end");
        return -EINVAL;
    }
    int64_t offset = (int64_t)uoffset, length = (int64_t)ulength, endv = (int64_t)uend;
    if (has_length && length <= 0) {
        error_setg(errp, "blkdebug: %s.%d.length must be positive, got %" PRId64,
                   family, n, length);
        return -EINVAL;
    }
    r->start = has_sector ? sector * (int64_t)BDRV_SECTOR_SIZE : offset;
    if (has_end && endv <= r->start) {
        error_setg(errp, "blkdebug: %s.%d.end (%" PRId64 ") must be above the start of the "
                   "range (%" PRId64 ")", family, n, endv, r->start);
        return -EINVAL;
    }
    if (!has_offset && !has_sector) {
        r->start = 0;
        r->end = INT64_MAX;
    } else if (has_end) {
        r->end = endv;
    } else {
        /* Without a length, QEMU's meaning: requests containing this byte. */
        int64_t len = has_length ? length : 1;
        r->end = len > INT64_MAX - r->start ? INT64_MAX : r->start + len;
    }

    /* Frequency. */
    if (has_every && r->has_probability) {
        error_setg(errp, "blkdebug: %s.%d: give every or probability, not both", family, n);
        return -EINVAL;
    }
    if (every < 1) {
        error_setg(errp, "blkdebug: %s.%d.every must be at least 1, got %" PRId64,
                   family, n, every);
        return -EINVAL;
    }
    r->every = (uint64_t)every;
    r->error = (int)err;
    r->delay_ns = delay_ms * 1000000LL;
    r->seed = splitmix64(seed ^ ((uint64_t)fault << 40) ^ (uint64_t)n);
    return 0;
}

/* Number of rules family.0, family.1, ... in opts (numbered without gaps;
 * a rule after a gap is left over, an unknown option). */
static int count_family(OptDict *opts, const char *family)
{
    char prefix[48];
    int n = 0;
    for (;; n++) {
        snprintf(prefix, sizeof(prefix), "%s.%d.", family, n);
        if (!optdict_has_prefix(opts, prefix)) {
            return n;
        }
    }
}

int blkdebug_parse_rules(OptDict *opts, uint64_t seed, BlkdebugRuleSet **out, Error **errp)
{
    static const char *const families[] = { "inject-error", "inject-fault" };
    int counts[2] = { count_family(opts, families[0]), count_family(opts, families[1]) };
    *out = NULL;
    if (!counts[0] && !counts[1]) {
        return 0;
    }
    BlkdebugRuleSet *set = calloc(1, sizeof(*set) +
                                     (size_t)(counts[0] + counts[1]) * sizeof(BlkdebugRule));
    if (!set) {
        error_setg(errp, "blkdebug: out of memory for %d rules", counts[0] + counts[1]);
        return -ENOMEM;
    }
    char prefix[48];
    for (int f = 0; f < 2; f++) {
        for (int n = 0; n < counts[f]; n++) {
            snprintf(prefix, sizeof(prefix), "%s.%d.", families[f], n);
            OptDict *d = optdict_extract_prefix(opts, prefix);
            int ret = parse_rule(d, families[f], n, seed, &set->rules[set->n], errp);
            optdict_free(d);
            if (ret < 0) {
                free(set);
                return ret;
            }
            set->n++;
        }
    }
    *out = set;
    return 0;
}

void blkdebug_rules_free(BlkdebugRuleSet *set)
{
    free(set);
}

/* Does r fire for this (matching) request?  Counts the match. */
static bool rule_fires(BlkdebugRule *r)
{
    uint64_t nth = __atomic_add_fetch(&r->matched, 1, __ATOMIC_RELAXED);
    if (r->every > 1 && nth % r->every) {
        return false;
    }
    if (r->has_probability && !r->always &&
        splitmix64(r->seed + nth * 0x9e3779b97f4a7c15ULL) >= r->threshold) {
        return false;
    }
    if (r->once) {
        bool expected = false;
        return __atomic_compare_exchange_n(&r->fired, &expected, true, false,
                                           __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
    }
    return true;
}

/* Delays add up and matching goes on; the first error, corrupt or
 * lost-write that fires ends it.  True if anything fired. */
static bool match_set(BlkdebugRuleSet *set, BlkdebugEvent ev, int64_t offset, int64_t bytes,
                      BlkdebugHit *hit)
{
    bool any = false;
    int64_t end = offset + MAX(bytes, (int64_t)1);
    for (int i = 0; i < set->n && hit->action == BD_ACT_NONE; i++) {
        BlkdebugRule *r = &set->rules[i];
        if (r->event != ev || (ev != BD_EV_FLUSH && (r->end <= offset || r->start >= end))) {
            continue;
        }
        if (!rule_fires(r)) {
            continue;
        }
        any = true;
        if (r->action == BD_ACT_DELAY) {
            hit->delay_ns += r->delay_ns;
            continue;
        }
        hit->action = r->action;
        hit->error = r->error;
        hit->start = r->start;
        hit->end = r->end;
    }
    return any;
}

bool blkdebug_match(BlkdebugState *s, BlkdebugEvent ev, int64_t offset, int64_t bytes,
                    BlkdebugHit *out)
{
    BlkdebugRuleSet *ctl = __atomic_load_n(&s->ctl, __ATOMIC_ACQUIRE);
    if (likely(!s->rules && !ctl)) {
        return false;
    }
    BlkdebugHit hit = { .action = BD_ACT_NONE };
    bool any = false;
    if (s->rules) {
        any = match_set(s->rules, ev, offset, bytes, &hit);
    }
    if (ctl && hit.action == BD_ACT_NONE) {
        any |= match_set(ctl, ev, offset, bytes, &hit);
    }
    if (any) {
        *out = hit;
    }
    return any;
}
