/*
 * fuzz-check.h - what the libFuzzer harnesses in tests/fuzz/ share: CHECK,
 * which aborts (so libFuzzer keeps the input) when a property fails, and
 * the comparison of two device states the state-file and `add` argument
 * harnesses both need.  Header-only: run.sh builds each fuzz-*.c alone.
 */
#ifndef UBLKD_FUZZ_CHECK_H
#define UBLKD_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ublk.h"

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
    abort(); } } while (0)

static inline bool same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static inline void check_same_state(const UblkDevState *a, const UblkDevState *b)
{
    const UblkDevConfig *x = &a->cfg, *y = &b->cfg;
    CHECK(a->dev_id == b->dev_id && a->pid == b->pid && a->start_time == b->start_time);
    CHECK(a->flags == b->flags && a->nr_queues == b->nr_queues && a->depth == b->depth);
    CHECK(same_str(a->graph, b->graph) && same_str(a->bdev, b->bdev));
    CHECK(x->dev_id == y->dev_id && same_str(x->type, y->type) && x->nfiles == y->nfiles);
    for (int i = 0; i < x->nfiles; i++) {
        CHECK(same_str(x->files[i], y->files[i]));
    }
    CHECK(same_str(x->blockdev, y->blockdev) && same_str(x->extra_opts, y->extra_opts));
    CHECK(x->size == y->size && same_str(x->cache, y->cache) && same_str(x->discard, y->discard));
    CHECK(x->nr_queues == y->nr_queues && x->depth == y->depth);
    CHECK(x->max_io_size == y->max_io_size && x->logical_bs == y->logical_bs);
    CHECK(x->physical_bs == y->physical_bs && x->io_opt == y->io_opt);
    CHECK(x->discard_granularity == y->discard_granularity && x->max_discard == y->max_discard);
    CHECK(x->read_only == y->read_only && x->rotational == y->rotational);
    CHECK(x->no_discard == y->no_discard && x->user_copy == y->user_copy);
    CHECK(x->need_get_data == y->need_get_data && x->recovery == y->recovery);
    CHECK(x->affinity == y->affinity && same_str(x->log_file, y->log_file));
}

#endif
