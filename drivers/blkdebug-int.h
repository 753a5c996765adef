/*
 * blkdebug-int.h - the fault-injection filter's rules, shared by
 * drivers/blkdebug.c (the driver: open, requests, actions),
 * drivers/blkdebug-rules.c (parsing, matching) and
 * drivers/blkdebug-control.c (the control file).
 * See drivers/blkdebug.c for the option syntax.
 */
#ifndef UBLKD_BLKDEBUG_INT_H
#define UBLKD_BLKDEBUG_INT_H

#include <stdint.h>
#include <sys/stat.h>
#include "aio.h"
#include "block-driver.h"

typedef enum {
    BD_EV_READ, BD_EV_WRITE, BD_EV_FLUSH, BD_EV_DISCARD, BD_EV_WRITE_ZEROES,
    BD_EV_BLOCK_STATUS,
} BlkdebugEvent;

typedef enum {
    BD_ACT_NONE,          /* no terminal rule fired (a delay may have) */
    BD_ACT_ERROR,
    BD_ACT_CORRUPT,
    BD_ACT_DELAY,
    BD_ACT_LOST_WRITE,
} BlkdebugAction;

typedef struct BlkdebugRule {
    /* Fixed once the rule set is published. */
    BlkdebugEvent event;
    BlkdebugAction action;
    int error;                 /* positive errno (BD_ACT_ERROR) */
    int64_t delay_ns;          /* BD_ACT_DELAY */
    int64_t start, end;        /* [start, end): requests overlapping it match */
    bool once;
    uint64_t every;            /* fire on every Nth match (1: every match) */
    bool has_probability;
    uint64_t threshold;        /* fire when the draw is below it ... */
    bool always;               /* ... or always (probability=1) */
    uint64_t seed;             /* this rule's PRNG stream */
    /* Changed by requests, on any thread: atomics only. */
    uint64_t matched;          /* matching requests so far */
    bool fired;                /* a once rule has fired */
} BlkdebugRule;

/* Immutable after publication except the rules' atomic counters. */
typedef struct BlkdebugRuleSet {
    struct BlkdebugRuleSet *retired_next;   /* main thread: sets to free at close */
    int n;
    BlkdebugRule rules[];
} BlkdebugRuleSet;

/* What the matching rules ask of one request. */
typedef struct BlkdebugHit {
    int64_t delay_ns;          /* the sum of the delay rules that fired */
    BlkdebugAction action;     /* the first terminal rule that fired, or NONE */
    int error;
    int64_t start, end;        /* that rule's range (corrupt) */
} BlkdebugHit;

typedef struct BlkdebugState {
    BlkdebugRuleSet *rules;    /* from the open options; NULL: none */
    BlkdebugRuleSet *ctl;      /* from the control file; atomic pointer, NULL: none */
    BlkdebugRuleSet *retired;  /* replaced control sets, freed at close */
    uint64_t seed;
    uint64_t align;
    uint64_t max_transfer;
    /* The control file, polled on the home context (main thread). */
    char *ctl_path;
    AioTimer ctl_timer;
    bool ctl_timer_live;
    bool ctl_seen;             /* ctl_stat describes the file we last loaded */
    struct stat ctl_stat;
    uint64_t ctl_loads;        /* successful (re)loads, for tests */
} BlkdebugState;

#define BLKDEBUG_DEFAULT_SEED 0x626c6b6465627567ULL   /* "blkdebug" */
#define BLKDEBUG_CTL_POLL_NS (100 * 1000 * 1000LL)
#define BLKDEBUG_CTL_MAX_BYTES (64 * 1024)

/* Take every inject-error.N.* and inject-fault.N.* family from opts into a
 * new set (*out NULL when there are none).  0 or -EINVAL with errp set. */
int blkdebug_parse_rules(OptDict *opts, uint64_t seed, BlkdebugRuleSet **out, Error **errp);
void blkdebug_rules_free(BlkdebugRuleSet *set);

/* Any thread: fill *hit from the rules that fire for this request; false
 * (and *hit untouched) when none does. */
bool blkdebug_match(BlkdebugState *s, BlkdebugEvent ev, int64_t offset, int64_t bytes,
                    BlkdebugHit *hit);

/* Control file, home context only.  start loads it once (a bad file fails
 * the open) and arms the poll timer; stop disarms it. */
int blkdebug_control_start(BlockDriverState *bs, Error **errp);
void blkdebug_control_stop(BlockDriverState *bs);
/* Look at the file now (what the timer does); true if the rules changed. */
bool blkdebug_control_poll(BlockDriverState *bs);
/* Successful loads of the control file so far (tests wait for it). */
uint64_t blkdebug_control_loads(BlockDriverState *bs);

#endif
