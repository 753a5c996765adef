/*
 * vdi-check.c - `img check` for vdi: what QEMU's vdi check finds (map entries
 * past the block count, two blocks sharing a slot, a wrong blocks_allocated)
 * with its messages on stderr, plus entries whose slot starts beyond the end
 * of the file (a truncated image).  With BDRV_FIX_ERRORS a wrong
 * blocks_allocated is rewritten when the slots in use are exactly 0..n-1, the
 * only case where one value satisfies both qemu-img check (it compares the
 * count) and QEMU's allocator (it appends at slot blocks_allocated).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "vdi-int.h"

int coroutine_fn vdi_co_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix)
{
    BDRVVdiState *s = bs->opaque;
    uint32_t *owner, counted = 0, slot_end = 0;
    int ret = 0;

    /* owner[slot] = the block using it; bounded by the map already in memory. */
    owner = s->blocks_in_image ? malloc((size_t)s->blocks_in_image * sizeof(*owner)) : NULL;
    if (s->blocks_in_image && !owner) {
        res->check_errors++;
        return -ENOMEM;
    }
    if (owner) {
        memset(owner, 0xff, (size_t)s->blocks_in_image * sizeof(*owner));
    }

    co_mutex_lock(&s->alloc_lock);
    for (uint32_t block = 0; block < s->blocks_in_image; block++) {
        uint32_t entry = vdi_entry(s, block);
        if (!vdi_is_allocated(entry)) {
            continue;
        }
        if (entry >= s->blocks_in_image) {
            fprintf(stderr, "ERROR: block index %" PRIu32 " too large, is %" PRIu32 "\n",
                    block, entry);
            res->corruptions++;
            continue;
        }
        counted++;
        slot_end = MAX(slot_end, entry + 1);
        if (owner[entry] != UINT32_MAX) {
            fprintf(stderr, "ERROR: block index %" PRIu32 " also used by %" PRIu32 "\n",
                    owner[entry], block);
            res->corruptions++;
            continue;
        }
        owner[entry] = block;
        if (vdi_slot_missing(s, entry)) {
            fprintf(stderr, "ERROR: block index %" PRIu32 " points beyond the end of the"
                    " file (slot %" PRIu32 ")\n", block, entry);
            res->corruptions++;
        }
    }

    if (counted != s->blocks_allocated) {
        bool dense = slot_end == counted && res->corruptions == 0;
        fprintf(stderr, "%s: allocated blocks mismatch, is %" PRIu32 ", should be %" PRIu32 "\n",
                (fix & BDRV_FIX_ERRORS) && dense ? "Repairing" : "ERROR",
                counted, s->blocks_allocated);
        if ((fix & BDRV_FIX_ERRORS) && dense) {
            uint32_t old = s->blocks_allocated;
            s->blocks_allocated = counted;
            ret = vdi_write_header(bs);
            if (ret < 0) {
                s->blocks_allocated = old;
                res->check_errors++;
                res->corruptions++;
            } else {
                res->corruptions_fixed++;
            }
        } else {
            res->corruptions++;
        }
    }
    co_mutex_unlock(&s->alloc_lock);
    free(owner);
    return ret < 0 ? ret : 0;
}
