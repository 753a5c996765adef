/*
 * vdi-int.h - the VDI format (VirtualBox disk images): on-disk layout and the
 * driver state shared by drivers/vdi.c (open, reads, status, info),
 * vdi-write.c (allocation, zeroes, discard), vdi-create.c and vdi-check.c.  Nothing outside drivers/vdi*.c includes this.
 *
 * Layout: a 512-byte header sector (64-byte text line, then little-endian
 * fields at the offsets below), a block map of uint32 LE entries at
 * offset_bmap (one per 1 MiB block of the virtual disk: the index of the
 * block's slot in the data area, or UNALLOCATED / DISCARDED), and the data
 * area at offset_data, slot i at offset_data + i MiB.
 */
#ifndef UBLKD_DRIVERS_VDI_INT_H
#define UBLKD_DRIVERS_VDI_INT_H

#include <endian.h>
#include <limits.h>
#include <string.h>
#include "block-driver.h"

#define VDI_TEXT            "<<< QEMU VM Virtual Disk Image >>>\n"
#define VDI_TEXT_LEN        64
#define VDI_SIGNATURE       0xbeda107fU
#define VDI_VERSION_1_1     0x00010001U
#define VDI_TYPE_DYNAMIC    1
#define VDI_TYPE_STATIC     2
/* VirtualBox's undo and differencing images: with null link and parent UUIDs
 * (checked at open) they stand alone and read like dynamic ones. */
#define VDI_TYPE_UNDO       3
#define VDI_TYPE_DIFF       4
#define VDI_SECTOR_SIZE     512
#define VDI_BLOCK_SIZE      (1U << 20)
#define VDI_BLOCK_SHIFT     20
#define VDI_HEADER_SECTOR   512
/* Map sectors being rewritten with new entries are staged here; one 1 GiB
 * request needs at most 1025 entries (under 5 KiB).  Where the map follows
 * the header sector, the header and the map up to this many bytes (16384
 * entries: the first 16 GiB of the disk) go out as one write, so the count
 * and the entries it counts change together (vdi-write.c). */
#define VDI_MAP_BOUNCE      (64 * 1024)
/* header_size counts from offset 72 (after text, signature, version): 0x180
 * is VirtualBox's VDIHEADER1 (what qemu writes), 0x190 its VDIHEADER1PLUS.
 * Like QEMU we never use it: fields are read at fixed offsets of the first
 * sector and only that sector is rewritten, so any value is accepted. */
#define VDI_HEADER_SIZE     0x180U

/* Block map entries.  UNALLOCATED: never written, reads as zeros.
 * DISCARDED: explicitly zero (VirtualBox's "zero block"). */
#define VDI_UNALLOCATED     0xffffffffU
#define VDI_DISCARDED       0xfffffffeU
static inline bool vdi_is_allocated(uint32_t entry) { return entry < VDI_DISCARDED; }

/* QEMU 7.2's limit, so both tools accept and refuse the same sizes: the map,
 * rounded up to a sector, must fit in an int (its byte-count type), i.e.
 * max * 4 + 512 == INT_MAX + 1: 536870784 blocks, 0x1fffff8000000 bytes. */
#define VDI_BLOCKS_IN_IMAGE_MAX ((uint32_t)((INT_MAX + 1U - VDI_SECTOR_SIZE) / 4))
#define VDI_DISK_SIZE_MAX   ((uint64_t)VDI_BLOCKS_IN_IMAGE_MAX * VDI_BLOCK_SIZE)

/* Byte offsets of the header fields in the first sector. */
enum {
    VDI_OFF_SIGNATURE        = 64,
    VDI_OFF_VERSION          = 68,
    VDI_OFF_HEADER_SIZE      = 72,
    VDI_OFF_IMAGE_TYPE       = 76,
    VDI_OFF_IMAGE_FLAGS      = 80,
    VDI_OFF_DESCRIPTION      = 84,    /* 256 bytes */
    VDI_OFF_OFFSET_BMAP      = 340,
    VDI_OFF_OFFSET_DATA      = 344,
    VDI_OFF_CYLINDERS        = 348,
    VDI_OFF_HEADS            = 352,
    VDI_OFF_SECTORS          = 356,
    VDI_OFF_SECTOR_SIZE      = 360,
    VDI_OFF_UNUSED1          = 364,
    VDI_OFF_DISK_SIZE        = 368,   /* u64 */
    VDI_OFF_BLOCK_SIZE       = 376,
    VDI_OFF_BLOCK_EXTRA      = 380,
    VDI_OFF_BLOCKS_IN_IMAGE  = 384,
    VDI_OFF_BLOCKS_ALLOCATED = 388,
    VDI_OFF_UUID_IMAGE       = 392,   /* 16 bytes each, IPRT byte order */
    VDI_OFF_UUID_LAST_SNAP   = 408,
    VDI_OFF_UUID_LINK        = 424,
    VDI_OFF_UUID_PARENT      = 440,
};

static inline uint32_t vdi_ld32(const uint8_t *hdr, int off)
{
    uint32_t v;
    memcpy(&v, hdr + off, 4);
    return le32toh(v);
}
static inline uint64_t vdi_ld64(const uint8_t *hdr, int off)
{
    uint64_t v;
    memcpy(&v, hdr + off, 8);
    return le64toh(v);
}
static inline void vdi_st32(uint8_t *hdr, int off, uint32_t v)
{
    v = htole32(v);
    memcpy(hdr + off, &v, 4);
}
static inline void vdi_st64(uint8_t *hdr, int off, uint64_t v)
{
    v = htole64(v);
    memcpy(hdr + off, &v, 8);
}

/* A run of virtual blocks whose data slots are being written by one request
 * before the block map points at them; lives on that request's stack. */
typedef struct VdiAllocation {
    uint32_t first_block, nb_blocks;
    uint32_t slot;             /* its first data slot: publishes go in slot order */
    struct VdiAllocation *next;
} VdiAllocation;

typedef struct BDRVVdiState {
    uint8_t *header;           /* the header sector as on disk (aligned) */
    uint32_t image_type;
    uint32_t offset_bmap, offset_data;
    uint32_t blocks_in_image;
    uint64_t disk_size;        /* rounded up to 512 as QEMU does */

    /* Entries little-endian as on disk, so sectors of it are written as is.
     * Read without the lock (atomic 32-bit loads); changed only under it. */
    uint32_t *bmap;
    size_t bmap_alloc_bytes;   /* blocks_in_image * 4 rounded up to 512 */
    uint8_t *map_bounce;       /* VDI_MAP_BOUNCE bytes, under alloc_lock */

    /*
     * Damage found at open, fixed for the life of the node.  Slots
     * [missing_start, missing_end) were past the end of the file at open
     * (a truncated image): their blocks read and write -EIO, and while any
     * block points there (the range is not empty) no new block is
     * allocated, because appending data would grow the file over the hole
     * and turn the lost blocks into zeros that neither reads nor check
     * could tell from data.
     * Slots handed out since open start at missing_end or later.  Slots
     * set in shared_slots are used by more than one block: writing one
     * would change the other, so writes to them fail -EIO (reads work).
     */
    uint32_t missing_start, missing_end;
    uint8_t *shared_slots;     /* bitmap by slot; NULL when no slot is shared */
    bool warned_missing, warned_shared;    /* atomic: log each once */

    /*
     * Allocation state, under alloc_lock.  Slots are handed out from the
     * free slots first, then in order from next_slot; blocks_allocated is
     * the header's count (rewritten when a published slot goes past it).
     */
    CoMutex alloc_lock;
    CoQueue alloc_wait;        /* writers waiting for a block in allocs */
    CoQueue publish_wait;      /* allocations waiting for a lower slot's publish */
    VdiAllocation *allocs;
    uint32_t next_slot;
    uint32_t blocks_allocated;
    /* Slots below next_slot that no block points at: one whose allocation
     * failed while a later one was in flight, or a hole found at open.
     * The next allocations take them (lowest first), so the hole closes
     * and the count matches the map again.  Bitmap by slot, allocated when
     * the first free slot appears; free_hint: no free slot below it. */
    uint8_t *free_slots;
    uint32_t free_count, free_hint;
    /* Map entries [suspect_first, suspect_end) whose sector write failed:
     * the disk may or may not name the slot there, so those sectors are
     * rewritten from memory before any slot is handed out again. */
    uint32_t suspect_first, suspect_end;
    /* The last header write failed: rewritten by the next allocation that
     * publishes and by flush, which reports the failure if it persists. */
    bool header_dirty;
} BDRVVdiState;

static inline uint32_t vdi_entry(BDRVVdiState *s, uint32_t block)
{
    return le32toh(__atomic_load_n(&s->bmap[block], __ATOMIC_ACQUIRE));
}

static inline void vdi_set_entry(BDRVVdiState *s, uint32_t block, uint32_t entry)
{
    __atomic_store_n(&s->bmap[block], htole32(entry), __ATOMIC_RELEASE);
}

static inline uint64_t vdi_slot_offset(BDRVVdiState *s, uint32_t slot)
{
    return s->offset_data + ((uint64_t)slot << VDI_BLOCK_SHIFT);
}

/* A slot whose data is not in the image: it was past the end of the file at
 * open (a truncated image), or lies outside the data area altogether (an
 * entry past blocks_in_image, which no allocation can ever produce). */
static inline bool vdi_slot_missing(BDRVVdiState *s, uint32_t slot)
{
    return slot >= s->blocks_in_image || (slot >= s->missing_start && slot < s->missing_end);
}

/* A slot that more than one block points at (a corrupt map). */
static inline bool vdi_slot_shared(BDRVVdiState *s, uint32_t slot)
{
    return s->shared_slots && slot < s->blocks_in_image &&
           (s->shared_slots[slot / 8] & (1U << (slot % 8)));
}

/*
 * Bytes from (block, in_block) that map to consecutive file offsets: the
 * following blocks' entries continue entry+1, entry+2, ... (what qemu-img
 * convert and sequential writers produce), so one backing I/O covers them.
 */
static inline int64_t vdi_contiguous_run(BDRVVdiState *s, uint32_t block, uint32_t in_block,
                                  int64_t bytes, uint32_t entry)
{
    int64_t n = MIN(bytes, (int64_t)(VDI_BLOCK_SIZE - in_block));

    while (n < bytes) {
        uint32_t next = vdi_entry(s, ++block);
        if (next != ++entry || vdi_slot_missing(s, entry) || vdi_slot_shared(s, entry)) {
            break;
        }
        n += MIN(bytes - n, (int64_t)VDI_BLOCK_SIZE);
    }
    return n;
}

/* Bytes from (block, in_block) whose blocks are all unallocated or discarded. */
static inline int64_t vdi_unallocated_run(BDRVVdiState *s, uint32_t block, uint32_t in_block,
                                   int64_t bytes)
{
    int64_t n = MIN(bytes, (int64_t)(VDI_BLOCK_SIZE - in_block));

    while (n < bytes && !vdi_is_allocated(vdi_entry(s, ++block))) {
        n += MIN(bytes - n, (int64_t)VDI_BLOCK_SIZE);
    }
    return n;
}

/* "vdi: <file>" for messages. */
const char *vdi_image_name(BlockDriverState *bs);

/* The write side (vdi-write.c). */
int coroutine_fn vdi_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags);
int coroutine_fn vdi_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      BdrvRequestFlags flags);
int coroutine_fn vdi_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes);
/* Write the block-map sectors holding entries [first, first+count) from the
 * in-memory map; alloc_lock held. */
int coroutine_fn vdi_write_bmap(BlockDriverState *bs, uint32_t first, uint32_t count);
/* Rewrite the header sector with blocks_allocated; alloc_lock held. */
int coroutine_fn vdi_write_header(BlockDriverState *bs);
/* Flush hook: rewrite a header whose last write failed. */
int coroutine_fn vdi_co_flush_to_os(BlockDriverState *bs);
/* Mark slot free (a hole below next_slot); alloc_lock held or the node not
 * yet shared.  False if the bitmap cannot be allocated (the hole stays
 * until check -r all). */
bool vdi_free_slot_add(BDRVVdiState *s, uint32_t slot);
/* Forget every free slot (check compacted the data area). */
void vdi_free_slots_clear(BDRVVdiState *s);

int coroutine_fn vdi_co_create(const char *filename, OptDict *opts, Error **errp);
extern const CreateOptDesc vdi_create_opts[];
int coroutine_fn vdi_co_check(BlockDriverState *bs, BdrvCheckResult *res, BdrvCheckMode fix);

#endif
