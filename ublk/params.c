/*
 * params.c - what the kernel is told about the device (see include/ublk.h).
 *
 * Everything is derived from the root node (its size and merged limits) and
 * the cache mode, with the user's --logical-block-size etc. overriding.  The
 * block layer pads and splits whatever the kernel sends, so the limits here
 * are about performance (no RMW for aligned I/O, no needless splitting) and
 * semantics (a volatile cache means flushes must reach us), not safety.
 */
#include <errno.h>
#include <string.h>
#include "ublk.h"

static unsigned ilog2_u64(uint64_t v)
{
    unsigned r = 0;
    while (v >>= 1) {
        r++;
    }
    return r;
}

static uint64_t pow2_ceil(uint64_t v)
{
    uint64_t p = 1;
    while (p < v) {
        p <<= 1;
    }
    return p;
}

int ublk_params_build(const UblkDevConfig *c, const BlockLimits *bl, int64_t size,
                      int open_flags, bool read_only, bool has_discard,
                      struct ublk_params *p, Error **errp)
{
    memset(p, 0, sizeof(*p));
    if (size <= 0) {
        error_setg(errp, "the image has size %lld: a block device needs at least one block",
                   (long long)size);
        return -1;
    }

    uint32_t lbs = c->logical_bs;
    if (!lbs) {
        uint64_t align = bl && bl->request_alignment ? pow2_ceil(bl->request_alignment) : 512;
        lbs = MIN(MAX(align, (uint64_t)512), (uint64_t)4096);
        /* The alignment is only a preference (the block layer pads): a
         * smaller block that covers the whole image beats a cut tail. */
        while (lbs > 512 && size % lbs) {
            lbs >>= 1;
        }
    }
    uint32_t pbs = c->physical_bs ? c->physical_bs : lbs;
    if (pbs < lbs) {
        error_setg(errp, "physical block size %u is smaller than the logical block size %u",
                   pbs, lbs);
        return -1;
    }
    if ((uint64_t)size < lbs) {
        error_setg(errp, "the image (%lld bytes) is smaller than one %u-byte block",
                   (long long)size, lbs);
        return -1;
    }
    if (size % lbs) {
        /* The kernel counts whole blocks: the tail would be unreachable, and
         * serving a partial last block would need zero-fill and a size change
         * of the image on write.  Refuse, saying what would be lost. */
        uint64_t tail = (uint64_t)size % lbs;
        error_setg(errp, "the image is %lld bytes, not a multiple of the %u-byte logical block "
                   "size: its last %llu bytes would be unreachable (resize it to %llu bytes%s)",
                   (long long)size, lbs, (unsigned long long)tail,
                   (unsigned long long)ALIGN_UP((uint64_t)size, lbs),
                   lbs > 512 && size % 512 == 0 ? ", or give a smaller --logical-block-size" : "");
        return -1;
    }
    uint64_t usable = (uint64_t)size;
    uint32_t io_opt = c->io_opt;
    if (!io_opt && bl && bl->opt_transfer && IS_POW2(bl->opt_transfer)) {
        io_opt = bl->opt_transfer;
    }

    struct ublk_param_basic *b = &p->basic;
    p->types = UBLK_PARAM_TYPE_BASIC;
    b->logical_bs_shift = ilog2_u64(lbs);
    b->physical_bs_shift = ilog2_u64(pbs);
    b->io_min_shift = ilog2_u64(pbs);
    b->io_opt_shift = io_opt ? ilog2_u64(io_opt) : 0;
    b->max_sectors = c->max_io_size >> 9;
    b->dev_sectors = usable >> 9;
    if (read_only) {
        b->attrs |= UBLK_ATTR_READ_ONLY;
    }
    if (c->rotational) {
        b->attrs |= UBLK_ATTR_ROTATIONAL;
    }
    /* With writethrough every write is already stable, and with unsafe
     * flushes are ignored: either way the kernel need not send flushes. */
    if (!(open_flags & (BDRV_O_WRITETHROUGH | BDRV_O_NO_FLUSH))) {
        b->attrs |= UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA;
    }

    /* --no-discard hides discard only: write-zeroes offload shares the
     * parameter block, so it is still sent, with no discard sectors. */
    if (!read_only) {
        struct ublk_param_discard *d = &p->discard;
        bool discard = has_discard && !c->no_discard;
        uint32_t gran = c->discard_granularity;
        if (!gran) {
            uint64_t a = bl && bl->pdiscard_alignment ? pow2_ceil(bl->pdiscard_alignment) : 0;
            gran = MAX((uint64_t)lbs, a);
        }
        uint64_t maxd = c->max_discard ? c->max_discard
                                       : (bl && bl->max_pdiscard ? bl->max_pdiscard : 1ULL << 30);
        uint64_t maxz = bl && bl->max_pwrite_zeroes ? bl->max_pwrite_zeroes : 1ULL << 30;
        maxd = MIN(maxd, (uint64_t)UINT32_MAX << 9) >> 9;
        maxz = MIN(maxz, (uint64_t)UINT32_MAX << 9) >> 9;
        if (discard && maxd < (gran >> 9)) {
            error_setg(errp, "--max-discard is smaller than the discard granularity %u", gran);
            return -1;
        }
        p->types |= UBLK_PARAM_TYPE_DISCARD;
        d->discard_alignment = 0;
        d->discard_granularity = gran;
        d->max_discard_sectors = discard ? maxd : 0;
        d->max_write_zeroes_sectors = maxz;
        d->max_discard_segments = 1;   /* one range per request: what the queue code handles */
    }
    return 0;
}
