/*
 * vdi-check.c - `img check` for vdi: what QEMU's vdi check finds (map entries
 * past the block count, two blocks sharing a slot, a wrong blocks_allocated)
 * with its messages on stderr, plus entries whose slot was past the end of
 * the file (a truncated image) and slots in use past the count of blocks
 * (a hole in the data area).
 *
 * What "right" means: QEMU's and VirtualBox's allocators both put the next
 * block at slot blocks_allocated, and qemu-img check wants blocks_allocated
 * to equal the number of in-range map entries.  Both hold only when the
 * slots in use are exactly 0..n-1.  If they are not (a crash after a data
 * write, a failed allocation whose free slot was not reused before the image
 * was closed, another tool), no count is right: the number of entries
 * makes the next allocation overwrite a live slot, the highest slot + 1
 * keeps qemu-img check failing.  Our own allocator closes such holes by
 * itself (vdi-write.c hands free slots out first); with BDRV_FIX_ERRORS, on
 * a map that is otherwise sound, the blocks in the highest slots are moved
 * down into the holes (as VirtualBox's compaction does) and then the count
 * is rewritten.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "vdi-int.h"

/*
 * Move block `block` from slot `from` to the free slot `to`: copy, flush,
 * then point the map at the copy; a crash at any point leaves the block's
 * entry naming a slot that holds its data.  alloc_lock held; check runs on
 * a node with no other users (in-place writers do not take the lock).
 */
static int coroutine_fn vdi_move_block(BlockDriverState *bs, uint8_t *buf, uint32_t block,
                                       uint32_t from, uint32_t to)
{
    BDRVVdiState *s = bs->opaque;
    IOVector q;
    int ret;

    iov_init_buf(&q, buf, VDI_BLOCK_SIZE);
    ret = bdrv_co_preadv(bs->file, vdi_slot_offset(s, from), VDI_BLOCK_SIZE, &q, 0);
    if (ret >= 0) {
        ret = bdrv_co_pwritev(bs->file, vdi_slot_offset(s, to), VDI_BLOCK_SIZE, &q, 0);
    }
    iov_destroy(&q);
    if (ret >= 0) {
        ret = bdrv_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        return ret;
    }
    vdi_set_entry(s, block, to);
    ret = vdi_write_bmap(bs, block, 1);
    if (ret < 0) {
        vdi_set_entry(s, block, from);
    }
    return ret;
}

/* Move the blocks in slots >= count into the free slots below it. */
static int coroutine_fn vdi_compact(BlockDriverState *bs, uint32_t *owner, uint32_t count,
                                    uint32_t slot_end)
{
    uint8_t *buf = aligned_alloc(4096, VDI_BLOCK_SIZE);
    uint32_t lo = 0;
    int ret = 0;

    if (!buf) {
        return -ENOMEM;
    }
    for (uint32_t hi = count; hi < slot_end && ret >= 0; hi++) {
        if (owner[hi] == UINT32_MAX) {
            continue;
        }
        while (owner[lo] != UINT32_MAX) {
            lo++;                      /* a free slot below count exists for each */
        }
        ret = vdi_move_block(bs, buf, owner[hi], hi, lo);
        if (ret >= 0) {
            owner[lo] = owner[hi];
            owner[hi] = UINT32_MAX;
        }
    }
    free(buf);
    return ret;
}

int coroutine_fn vdi_co_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix)
{
    BDRVVdiState *s = bs->opaque;
    uint32_t *owner, counted = 0, slot_end = 0;
    bool repair, holes, mismatch;
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

    /* Only a map with nothing else wrong is rewritten: with a shared,
     * missing or out-of-range slot there is no layout known to be right. */
    repair = (fix & BDRV_FIX_ERRORS) && res->corruptions == 0;
    /* A shared slot is counted twice, so holes are only told apart on a
     * map with nothing else wrong (as QEMU, the count is compared anyway). */
    holes = res->corruptions == 0 && slot_end > counted;
    mismatch = counted != s->blocks_allocated;
    if (holes) {
        fprintf(stderr, "%s: data slots in use are not contiguous, %" PRIu32
                " blocks use slots up to %" PRIu32 "\n", repair ? "Repairing" : "ERROR",
                counted, slot_end - 1);
    }
    if (mismatch) {
        fprintf(stderr, "%s: allocated blocks mismatch, is %" PRIu32 ", should be %" PRIu32 "\n",
                repair ? "Repairing" : "ERROR", counted, s->blocks_allocated);
    }
    if (repair && (holes || mismatch)) {
        uint32_t old = s->blocks_allocated;
        if (holes) {
            ret = vdi_compact(bs, owner, counted, slot_end);
        }
        if (ret >= 0) {
            s->blocks_allocated = counted;
            ret = vdi_write_header(bs);
            if (ret < 0) {
                s->blocks_allocated = old;
            }
        }
        if (ret < 0) {
            res->check_errors++;
            res->corruptions += holes + mismatch;
        } else {
            /* Slots from counted on are free now; none is missing (the map
             * had no missing slot), so the next block can go there. */
            s->next_slot = counted;
            vdi_free_slots_clear(s);
            res->corruptions_fixed += holes + mismatch;
        }
    } else {
        res->corruptions += holes + mismatch;
    }
    co_mutex_unlock(&s->alloc_lock);
    free(owner);
    return ret < 0 ? ret : 0;
}
