/*
 * vdi-write.c - the vdi driver's write side: allocating writes, publishing
 * new block-map entries, write-zeroes and discard.
 *
 * A write that meets blocks without a slot reserves consecutive slots for
 * the whole run under alloc_lock, registers the run as in flight and drops
 * the lock; the data plus zero padding goes out as one write with no lock
 * held.  Writers from any queue thread that meet a block in flight wait on
 * alloc_wait and then write in place, so each block is allocated once.
 * Crash ordering: data written, then flushed (one flush shared by the
 * allocations written before it), then the map entries and the header's
 * blocks_allocated together in one write, allocations in slot order, so a
 * crash leaves the count equal to the entries on disk, never an entry
 * pointing at unwritten data.  (qemu-img check calls any difference between
 * count and map a corruption.)  For map entries beyond the first 64 KiB of
 * the map, the count goes ahead instead, before the data flush (see
 * vdi_count_ahead).  Only metadata I/O runs under the lock.
 *
 * A failed allocation leaves no hole.  If its data write or flush fails
 * (EIO, ENOSPC on a full host file system) its slots go back: at the end
 * of the data area next_slot moves back over them, below a later
 * allocation they become free slots that the next allocations take first.
 * A failed map write is tried once more (the data is already durable); if
 * that fails too the disk may or may not name the slots, so the map
 * sectors are rewritten from memory before any slot is handed out again.
 * A failed header write is retried by the next allocation and by flush.
 * So the count in the header is again the number of mapped blocks (what
 * qemu-img check compares) as soon as the free slots are used up, and the
 * last block of a full disk can always be written.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include "vdi-int.h"

/* Source of the zero padding of newly allocated blocks; never written. */
static uint8_t vdi_zero_block[VDI_BLOCK_SIZE] __attribute__((aligned(4096)));

/* Caller buffers per data write of a new run; longer vectors take several
 * writes, so the padded vector always fits on the stack. */
#define VDI_STACK_IOV 32

static VdiAllocation *vdi_alloc_find(BDRVVdiState *s, uint32_t block)
{
    for (VdiAllocation *a = s->allocs; a; a = a->next) {
        if (block >= a->first_block && block - a->first_block < a->nb_blocks) {
            return a;
        }
    }
    return NULL;
}

static void vdi_alloc_remove(BDRVVdiState *s, VdiAllocation *alloc)
{
    for (VdiAllocation **p = &s->allocs; *p; p = &(*p)->next) {
        if (*p == alloc) {
            *p = alloc->next;
            return;
        }
    }
}

int coroutine_fn vdi_write_bmap(BlockDriverState *bs, uint32_t first, uint32_t count)
{
    BDRVVdiState *s = bs->opaque;
    uint64_t start = ALIGN_DOWN_POW2((uint64_t)first * 4, VDI_SECTOR_SIZE);
    uint64_t end = ALIGN_UP_POW2((uint64_t)(first + count) * 4, VDI_SECTOR_SIZE);
    IOVector q;
    int ret;

    iov_init_buf(&q, (uint8_t *)s->bmap + start, end - start);
    ret = bdrv_co_pwritev(bs->file, s->offset_bmap + start, end - start, &q, 0);
    iov_destroy(&q);
    return ret;
}

int coroutine_fn vdi_write_header(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;
    IOVector q;
    int ret;

    vdi_st32(s->header, VDI_OFF_BLOCKS_ALLOCATED, s->blocks_allocated);
    iov_init_buf(&q, s->header, VDI_HEADER_SECTOR);
    ret = bdrv_co_pwritev(bs->file, 0, VDI_HEADER_SECTOR, &q, 0);
    iov_destroy(&q);
    __atomic_store_n(&s->header_dirty, ret < 0, __ATOMIC_RELAXED);
    return ret;
}

/* The header count is only promised durable by a flush, so a header write
 * that failed is retried here and its error, if it persists, is the
 * flush's. */
int coroutine_fn vdi_co_flush_to_os(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;
    int ret = 0;

    if (!__atomic_load_n(&s->header_dirty, __ATOMIC_RELAXED)) {
        return 0;
    }
    co_mutex_lock(&s->alloc_lock);
    if (s->header_dirty) {
        ret = vdi_write_header(bs);
    }
    co_mutex_unlock(&s->alloc_lock);
    return ret;
}

static bool vdi_slot_is_free(BDRVVdiState *s, uint32_t slot)
{
    return s->free_slots && (s->free_slots[slot / 8] & (1U << (slot % 8)));
}

bool vdi_free_slot_add(BDRVVdiState *s, uint32_t slot)
{
    if (!s->free_slots) {
        s->free_slots = calloc(1, DIV_ROUND_UP((size_t)s->blocks_in_image, 8));
        if (!s->free_slots) {
            return false;
        }
    }
    if (!vdi_slot_is_free(s, slot)) {
        if (!s->free_count || slot < s->free_hint) {
            s->free_hint = slot;
        }
        s->free_slots[slot / 8] |= 1U << (slot % 8);
        s->free_count++;
    }
    return true;
}

static void vdi_free_slot_take(BDRVVdiState *s, uint32_t slot)
{
    s->free_slots[slot / 8] &= ~(1U << (slot % 8));
    s->free_count--;
}

void vdi_free_slots_clear(BDRVVdiState *s)
{
    if (s->free_slots) {
        memset(s->free_slots, 0, DIV_ROUND_UP((size_t)s->blocks_in_image, 8));
    }
    s->free_count = 0;
}

/* The lowest free slot and the number of free slots from it on (at most
 * max); free_count > 0. */
static uint32_t vdi_free_run(BDRVVdiState *s, uint32_t max, uint32_t *first)
{
    uint32_t slot = s->free_hint, n = 0;

    while (!vdi_slot_is_free(s, slot)) {
        slot = s->free_slots[slot / 8] >> (slot % 8) ? slot + 1 : ALIGN_DOWN(slot, 8) + 8;
    }
    s->free_hint = slot;
    while (n < max && slot + n < s->next_slot && vdi_slot_is_free(s, slot + n)) {
        n++;
    }
    *first = slot;
    return n;
}

/*
 * Give back slots [slot, slot+count), which no block points at (their
 * allocation failed).  At the end of the data area next_slot moves back
 * over them and over free slots below; elsewhere they become free slots.
 * alloc_lock held.
 */
static void vdi_release_slots(BlockDriverState *bs, uint32_t slot, uint32_t count)
{
    BDRVVdiState *s = bs->opaque;

    if (slot + count == s->next_slot) {
        s->next_slot = slot;
        while (s->next_slot > 0 && vdi_slot_is_free(s, s->next_slot - 1)) {
            vdi_free_slot_take(s, --s->next_slot);
        }
        return;
    }
    for (uint32_t i = 0; i < count; i++) {
        if (!vdi_free_slot_add(s, slot + i)) {
            error_report("vdi: %s: out of memory recording free data slot %" PRIu32
                         ": it stays a hole until img check -r all", vdi_image_name(bs),
                         slot + i);
            return;
        }
    }
}

/* Rewrite the map sectors whose last write failed, so that the disk names
 * no slot that memory does not; alloc_lock held. */
static int coroutine_fn vdi_resync_map(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;
    int ret;

    if (s->suspect_first >= s->suspect_end) {
        return 0;
    }
    ret = vdi_write_bmap(bs, s->suspect_first, s->suspect_end - s->suspect_first);
    if (ret >= 0) {
        s->suspect_first = s->suspect_end = 0;
    }
    return ret;
}

/*
 * Write the map sectors for blocks [block, block+count) -> slots
 * [slot, slot+count) from a copy, so the in-memory map only changes once
 * the disk has it: a writer that saw the new entry could otherwise write in
 * place into a slot we then have to give up.  alloc_lock held (it guards
 * map_bounce too).
 */
static int coroutine_fn vdi_write_new_entries(BlockDriverState *bs, uint32_t block,
                                              uint32_t count, uint32_t slot)
{
    BDRVVdiState *s = bs->opaque;
    /* sector rounding can add up to a sector at each end */
    const uint32_t per_chunk = (VDI_MAP_BOUNCE - 2 * VDI_SECTOR_SIZE) / 4;

    for (uint32_t done = 0; done < count;) {
        uint32_t n = MIN(count - done, per_chunk), first = block + done;
        uint64_t start = ALIGN_DOWN_POW2((uint64_t)first * 4, VDI_SECTOR_SIZE);
        uint64_t end = ALIGN_UP_POW2((uint64_t)(first + n) * 4, VDI_SECTOR_SIZE);
        uint32_t *entries = (uint32_t *)s->map_bounce;
        IOVector q;
        int ret;

        memcpy(s->map_bounce, (uint8_t *)s->bmap + start, end - start);
        for (uint32_t i = 0; i < n; i++) {
            entries[first - start / 4 + i] = htole32(slot + done + i);
        }
        iov_init_buf(&q, s->map_bounce, end - start);
        ret = bdrv_co_pwritev(bs->file, s->offset_bmap + start, end - start, &q, 0);
        iov_destroy(&q);
        if (ret < 0) {
            return ret;
        }
        done += n;
    }
    return 0;
}

/* Whether the entries of blocks [block, block+count) can go out in one
 * write together with the header: the map starts right after the header
 * sector (as qemu-img and VirtualBox make it) and their sectors lie within
 * VDI_MAP_BOUNCE of its start. */
static bool vdi_publish_with_header(BDRVVdiState *s, uint32_t block, uint32_t count)
{
    uint64_t end = ALIGN_UP_POW2((uint64_t)(block + count) * 4, VDI_SECTOR_SIZE);
    return s->offset_bmap == VDI_HEADER_SECTOR && end <= VDI_MAP_BOUNCE;
}

/* The header sector with blocks_allocated = new_count and the map from its
 * start through the new entries' last sector, in one write from copies
 * (memory changes only once the disk has it).  alloc_lock held. */
static int coroutine_fn vdi_write_header_and_entries(BlockDriverState *bs, uint32_t block,
                                                     uint32_t count, uint32_t slot,
                                                     uint32_t new_count)
{
    BDRVVdiState *s = bs->opaque;
    uint64_t end = ALIGN_UP_POW2((uint64_t)(block + count) * 4, VDI_SECTOR_SIZE);
    uint32_t *entries = (uint32_t *)s->map_bounce;
    struct iovec iov[2];
    IOVector q;
    int ret;

    memcpy(s->map_bounce, s->bmap, end);
    for (uint32_t i = 0; i < count; i++) {
        entries[block + i] = htole32(slot + i);
    }
    vdi_st32(s->header, VDI_OFF_BLOCKS_ALLOCATED, new_count);
    iov[0] = (struct iovec){ s->header, VDI_HEADER_SECTOR };
    iov[1] = (struct iovec){ s->map_bounce, end };
    iov_init_external(&q, iov, 2);
    ret = bdrv_co_pwritev(bs->file, 0, VDI_HEADER_SECTOR + end, &q, 0);
    iov_destroy(&q);
    if (ret < 0) {
        vdi_st32(s->header, VDI_OFF_BLOCKS_ALLOCATED, s->blocks_allocated);
    }
    return ret;
}

/*
 * Where the entries cannot share a write with the header (a large image, or
 * a map apart from the header), the count goes first: written before the
 * data flush, which then makes it durable too, so it is on disk before any
 * entry it counts.  A crash in between leaves the count ahead of the map:
 * a slot nobody uses, which no allocator (ours or QEMU's, which appends at
 * the count) hands out twice; qemu-img check reports it as a mismatch
 * ("allocated blocks mismatch"), img check -r all repairs it.  alloc_lock
 * held.  On failure the count in memory stays as it was and the header is
 * left dirty, so no entry is published for these slots.
 */
static int coroutine_fn vdi_count_ahead(BlockDriverState *bs, uint32_t slot_end)
{
    BDRVVdiState *s = bs->opaque;
    uint32_t old = s->blocks_allocated;
    int ret;

    if (slot_end <= old && !s->header_dirty) {
        return 0;
    }
    __atomic_store_n(&s->blocks_allocated, MAX(old, slot_end), __ATOMIC_RELAXED);
    ret = vdi_write_header(bs);
    if (ret < 0) {
        ret = vdi_write_header(bs);
    }
    if (ret < 0) {
        __atomic_store_n(&s->blocks_allocated, old, __ATOMIC_RELAXED);
        vdi_st32(s->header, VDI_OFF_BLOCKS_ALLOCATED, old);
    }
    return ret;
}

/* An allocation with a lower first slot is still in flight: publishing
 * ours first would count our slots before its entry exists. */
static bool vdi_lower_slot_in_flight(BDRVVdiState *s, const VdiAllocation *me)
{
    for (VdiAllocation *a = s->allocs; a; a = a->next) {
        if (a != me && a->slot < me->slot) {
            return true;
        }
    }
    return false;
}

/*
 * Point blocks [block, block+count) at slots [slot, slot+count), whose data
 * is already durable.  alloc_lock held; allocations publish in slot order.
 * Near the start of the map the header count and the entries go out in one
 * write, so the disk never counts other than what the map holds, as far as
 * that one request (at most 64.5 KiB; 1 KiB for images up to 64 MiB, 4 KiB
 * up to 448 MiB) reaches the disk whole.  Further out the count went ahead before the data flush (vdi_count_ahead)
 * and only the entries are written here.
 * The write is tried twice: the data is durable, so a transient error need
 * not cost the write.  If both fail the blocks stay as they were in memory
 * and their map sectors are marked for rewriting (the disk may hold the new
 * entries or the old), as is the header.
 */
static int coroutine_fn vdi_publish(BlockDriverState *bs, uint32_t block, uint32_t count,
                                    uint32_t slot)
{
    BDRVVdiState *s = bs->opaque;
    uint32_t new_count = MAX(s->blocks_allocated, slot + count);
    bool with_header = vdi_publish_with_header(s, block, count);
    int ret;

    if (with_header) {
        ret = vdi_write_header_and_entries(bs, block, count, slot, new_count);
        if (ret < 0) {
            ret = vdi_write_header_and_entries(bs, block, count, slot, new_count);
        }
    } else {
        ret = vdi_write_new_entries(bs, block, count, slot);
        if (ret < 0) {
            ret = vdi_write_new_entries(bs, block, count, slot);
        }
    }
    if (ret < 0) {
        if (s->suspect_first >= s->suspect_end) {
            s->suspect_first = block;
            s->suspect_end = block + count;
        } else {
            s->suspect_first = MIN(s->suspect_first, block);
            s->suspect_end = MAX(s->suspect_end, block + count);
        }
        if (with_header) {
            __atomic_store_n(&s->header_dirty, true, __ATOMIC_RELAXED);
        }
        return ret;
    }
    for (uint32_t i = 0; i < count; i++) {
        vdi_set_entry(s, block + i, slot + i);
    }
    if (with_header) {
        __atomic_store_n(&s->blocks_allocated, new_count, __ATOMIC_RELAXED);
        __atomic_store_n(&s->header_dirty, false, __ATOMIC_RELAXED);
    } else if (s->header_dirty) {
        vdi_write_header(bs);          /* a failure stays dirty for flush */
    }
    return 0;
}

/* Fill iov[] with at most max elements from [off, off+len) of src; returns
 * the element count, *taken the bytes they cover. */
static int vdi_fill_iov(struct iovec *iov, int max, const IOVector *src, size_t off, size_t len,
                        size_t *taken)
{
    int n = 0;

    *taken = 0;
    for (int i = 0; i < src->niov && len > 0 && n < max; i++) {
        size_t l = src->iov[i].iov_len, take;
        if (off >= l) {
            off -= l;
            continue;
        }
        take = MIN(l - off, len);
        iov[n].iov_base = (uint8_t *)src->iov[i].iov_base + off;
        iov[n].iov_len = take;
        n++;
        len -= take;
        *taken += take;
        off = 0;
    }
    return n;
}

/* Write head zeros, the caller's bytes and tail zeros at file offset foff:
 * one request unless the caller's vector has more than VDI_STACK_IOV
 * buffers, then consecutive ones, so nothing is allocated per request.  All
 * of it precedes the flush and the map update, so splitting changes no
 * crash outcome. */
static int coroutine_fn vdi_write_padded(BlockDriverState *bs, uint64_t foff, size_t head,
                                         IOVector *qiov, size_t qiov_offset, size_t len,
                                         size_t tail)
{
    struct iovec iov[VDI_STACK_IOV + 2];
    IOVector q;
    int ret;

    do {
        size_t taken, bytes;
        int n = 0;
        if (head) {
            iov[n++] = (struct iovec){ vdi_zero_block, head };
        }
        n += vdi_fill_iov(iov + n, VDI_STACK_IOV, qiov, qiov_offset, len, &taken);
        if (!taken && len) {
            return -EINVAL;            /* the caller's vector is shorter than len */
        }
        if (taken == len && tail) {
            iov[n++] = (struct iovec){ vdi_zero_block, tail };
        }
        bytes = head + taken + (taken == len ? tail : 0);
        iov_init_external(&q, iov, n);
        ret = bdrv_co_pwritev(bs->file, foff, bytes, &q, 0);
        iov_destroy(&q);
        foff += bytes;
        qiov_offset += taken;
        len -= taken;
        head = 0;
    } while (ret >= 0 && len > 0);
    return ret;
}

/* Make the caller's just-written block data durable.  Concurrent
 * allocations share flushes: bdrv_co_flush groups them (a flush that
 * started after our data write covers it), with no lock held across it. */
static int coroutine_fn vdi_flush_new_data(BlockDriverState *bs)
{
    return bdrv_co_flush(bs->file->bs);
}

/*
 * Write the part of [offset, offset+bytes) that falls in not-yet-allocated
 * blocks starting at `block`, allocating new slots for them.  *done is the
 * number of bytes written; 0 means another writer allocated the block
 * meanwhile and the caller should write in place.
 */
static int coroutine_fn vdi_co_allocating_write(BlockDriverState *bs, uint32_t block,
                                                uint32_t in_block, int64_t bytes,
                                                IOVector *qiov, size_t qiov_offset,
                                                int64_t *done)
{
    BDRVVdiState *s = bs->opaque;
    VdiAllocation alloc;
    uint32_t want, count, slot;
    uint64_t len, tail;
    int ret;

    *done = 0;
    if (s->missing_start < s->missing_end) {
        if (!__atomic_exchange_n(&s->warned_missing, true, __ATOMIC_RELAXED)) {
            error_report("vdi: %s: data area truncated (slots %" PRIu32 "..%" PRIu32
                         " missing): allocating writes refused, see img check",
                         vdi_image_name(bs), s->missing_start, s->missing_end - 1);
        }
        return -EIO;
    }
    co_mutex_lock(&s->alloc_lock);
    for (;;) {
        if (vdi_is_allocated(vdi_entry(s, block))) {
            co_mutex_unlock(&s->alloc_lock);
            return 0;
        }
        if (!vdi_alloc_find(s, block)) {
            break;
        }
        co_queue_wait(&s->alloc_wait, &s->alloc_lock);
    }
    ret = vdi_resync_map(bs);
    if (ret < 0) {
        co_mutex_unlock(&s->alloc_lock);
        return ret;
    }
    if (!s->free_count && s->next_slot >= s->blocks_in_image) {
        /* Unreachable with a sound map: a block without a slot means a
         * slot without a block, which open or a failure made free. */
        co_mutex_unlock(&s->alloc_lock);
        return -ENOSPC;
    }
    want = DIV_ROUND_UP(in_block + (uint64_t)bytes, VDI_BLOCK_SIZE);
    for (count = 1; count < want; count++) {
        if (vdi_is_allocated(vdi_entry(s, block + count)) || vdi_alloc_find(s, block + count)) {
            break;
        }
    }
    if (s->free_count) {
        count = vdi_free_run(s, count, &slot);
        for (uint32_t i = 0; i < count; i++) {
            vdi_free_slot_take(s, slot + i);
        }
    } else {
        count = MIN(count, s->blocks_in_image - s->next_slot);
        slot = s->next_slot;
        s->next_slot += count;
    }
    alloc = (VdiAllocation){ .first_block = block, .nb_blocks = count, .slot = slot,
                             .next = s->allocs };
    s->allocs = &alloc;
    co_mutex_unlock(&s->alloc_lock);

    len = MIN((uint64_t)bytes, (uint64_t)count * VDI_BLOCK_SIZE - in_block);
    tail = (uint64_t)count * VDI_BLOCK_SIZE - in_block - len;
    ret = vdi_write_padded(bs, vdi_slot_offset(s, slot), in_block, qiov, qiov_offset, len, tail);
    if (ret >= 0 && !vdi_publish_with_header(s, block, count)) {
        co_mutex_lock(&s->alloc_lock);
        ret = vdi_count_ahead(bs, slot + count);
        co_mutex_unlock(&s->alloc_lock);
    }
    if (ret >= 0) {
        ret = vdi_flush_new_data(bs);     /* the data, and a count written ahead */
    }

    co_mutex_lock(&s->alloc_lock);
    while (ret >= 0 && vdi_lower_slot_in_flight(s, &alloc)) {
        co_queue_wait(&s->publish_wait, &s->alloc_lock);
    }
    if (ret >= 0) {
        ret = vdi_publish(bs, block, count, slot);
    }
    if (ret < 0) {
        vdi_release_slots(bs, slot, count);
    }
    vdi_alloc_remove(s, &alloc);
    co_queue_restart_all(&s->alloc_wait);
    co_queue_restart_all(&s->publish_wait);
    co_mutex_unlock(&s->alloc_lock);
    *done = len;
    return ret < 0 ? ret : 0;
}

/* Writing a block whose slot another block shares would change that block
 * too (QEMU does so silently); refuse, and say why once per node. */
static void vdi_refuse_shared(BlockDriverState *bs, uint32_t block, uint32_t slot)
{
    BDRVVdiState *s = bs->opaque;

    if (!__atomic_exchange_n(&s->warned_shared, true, __ATOMIC_RELAXED)) {
        error_report("vdi: %s: block %" PRIu32 " shares data slot %" PRIu32 " with another"
                     " block (corrupt block map): writes to it fail, see img check",
                     vdi_image_name(bs), block, slot);
    }
}

int coroutine_fn vdi_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    BDRVVdiState *s = bs->opaque;

    (void)flags;
    while (bytes > 0) {
        uint32_t block = offset >> VDI_BLOCK_SHIFT;
        uint32_t in_block = offset & (VDI_BLOCK_SIZE - 1);
        uint32_t entry = vdi_entry(s, block);
        int64_t n;
        int ret;

        if (vdi_is_allocated(entry)) {
            if (vdi_slot_missing(s, entry)) {
                return -EIO;
            }
            if (vdi_slot_shared(s, entry)) {
                vdi_refuse_shared(bs, block, entry);
                return -EIO;
            }
            n = vdi_contiguous_run(s, block, in_block, bytes, entry);
            ret = bdrv_co_pwritev_part(bs->file, vdi_slot_offset(s, entry) + in_block, n,
                                       qiov, qiov_offset, 0);
        } else {
            ret = vdi_co_allocating_write(bs, block, in_block, bytes, qiov, qiov_offset, &n);
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}

/*
 * Mark the never-written blocks among [first, first+count) DISCARDED (reads
 * zeros by definition, where UNALLOCATED is "undefined" in VirtualBox's
 * terms).  Blocks being allocated are left alone: that write overlaps the
 * caller's request, so either order is a valid outcome.
 */
static int coroutine_fn vdi_mark_discarded(BlockDriverState *bs, uint32_t first, uint32_t count)
{
    BDRVVdiState *s = bs->opaque;
    uint32_t lo = UINT32_MAX, hi = 0;
    int ret = 0;

    co_mutex_lock(&s->alloc_lock);
    for (uint32_t b = first; b < first + count; b++) {
        if (vdi_entry(s, b) == VDI_UNALLOCATED && !vdi_alloc_find(s, b)) {
            vdi_set_entry(s, b, VDI_DISCARDED);
            lo = MIN(lo, b);
            hi = b;
        }
    }
    if (lo <= hi) {
        ret = vdi_write_bmap(bs, lo, hi - lo + 1);
        if (ret < 0) {
            for (uint32_t b = lo; b <= hi; b++) {
                if (vdi_entry(s, b) == VDI_DISCARDED) {
                    vdi_set_entry(s, b, VDI_UNALLOCATED);
                }
            }
        }
    }
    co_mutex_unlock(&s->alloc_lock);
    return ret;
}

/*
 * Write-zeroes and discard (beyond QEMU, whose vdi has neither; see the vdi
 * section of docs/ARCHITECTURE.md).  Whole never-written blocks are marked
 * DISCARDED in the map.  Allocated blocks keep their slot and are zeroed in
 * place (with MAY_UNMAP the file can punch a hole): freeing a slot would
 * either leave blocks_allocated short of the slots in use, so QEMU's
 * allocator (next slot = blocks_allocated) would hand out a live slot, or
 * leave it larger than the mapped count, which qemu-img check calls
 * corruption.  Partial blocks: zeroes are written for write-zeroes (a no-op
 * if the block is not allocated), discard ignores them.
 */
static int coroutine_fn vdi_co_zero_range(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                          BdrvRequestFlags flags, bool discard)
{
    BDRVVdiState *s = bs->opaque;

    while (bytes > 0) {
        uint32_t block = offset >> VDI_BLOCK_SHIFT;
        uint32_t in_block = offset & (VDI_BLOCK_SIZE - 1);
        uint32_t entry = vdi_entry(s, block);
        int64_t n;
        int ret = 0;

        if (vdi_is_allocated(entry)) {
            /* The run's blocks are consecutive in the file too. */
            uint64_t run_file = vdi_slot_offset(s, entry) - ((uint64_t)block << VDI_BLOCK_SHIFT);
            uint64_t start = offset, end;
            n = vdi_contiguous_run(s, block, in_block, bytes, entry);
            end = offset + n;
            if (discard) {
                /* Whole blocks only; the end of the disk ends a block. */
                start = ALIGN_UP_POW2(start, (uint64_t)VDI_BLOCK_SIZE);
                if (end < s->disk_size) {
                    end = ALIGN_DOWN_POW2(end, (uint64_t)VDI_BLOCK_SIZE);
                }
            }
            if (end > start && vdi_slot_shared(s, entry)) {
                vdi_refuse_shared(bs, block, entry);
                return -EIO;
            }
            if (vdi_slot_missing(s, entry)) {
                /* The block's data is not in the image: zeroing it is a
                 * write and fails as one; a discard may skip it. */
                if (!discard) {
                    return -EIO;
                }
            } else if (end > start) {
                ret = bdrv_co_pwrite_zeroes(bs->file, run_file + start, end - start,
                                            discard ? BDRV_REQ_MAY_UNMAP
                                                    : (flags & BDRV_REQ_MAY_UNMAP));
            }
        } else {
            uint64_t first, last;
            n = vdi_unallocated_run(s, block, in_block, bytes);
            first = DIV_ROUND_UP((uint64_t)offset, VDI_BLOCK_SIZE);
            last = (uint64_t)(offset + n) >= s->disk_size
                   ? DIV_ROUND_UP(s->disk_size, VDI_BLOCK_SIZE)
                   : (uint64_t)(offset + n) >> VDI_BLOCK_SHIFT;
            if (last > first) {
                ret = vdi_mark_discarded(bs, first, last - first);
            }
        }
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

int coroutine_fn vdi_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      BdrvRequestFlags flags)
{
    return vdi_co_zero_range(bs, offset, bytes, flags, false);
}

int coroutine_fn vdi_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return vdi_co_zero_range(bs, offset, bytes, 0, true);
}
