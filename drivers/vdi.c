/*
 * vdi.c - the VDI format driver (VirtualBox images): probe, open with header
 * validation, reads, block status, info and the ops table.  The write side
 * (allocation, zeroes, discard) is in vdi-write.c, creation in vdi-create.c,
 * the consistency check in vdi-check.c, the layout in vdi-int.h.
 *
 * Queue threads share one node.  The block map is read without a lock:
 * entries only change from "no slot" to a slot, or from UNALLOCATED to
 * DISCARDED, are published after the map write reached the disk, and are
 * loaded atomically.  See vdi-write.c for allocation and crash ordering.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "iov-fixed.h"
#include "vdi-int.h"

const char *vdi_image_name(BlockDriverState *bs)
{
    BlockDriverState *named = bs->file ? bs->file->bs : bs;

    if (named->filename[0] || !named->node_name) {
        return named->filename;
    }
    return named->node_name;         /* e.g. an in-memory node */
}

static int vdi_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    (void)filename;
    if (buf_size < VDI_HEADER_SECTOR) {
        return 0;
    }
    return vdi_ld32(buf, VDI_OFF_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

static bool uuid_is_null(const uint8_t *u)
{
    static const uint8_t zero[16];
    return memcmp(u, zero, 16) == 0;
}

/* Every check of the header, each with its own message.  file_len bounds the
 * block map so a crafted header cannot make us allocate more than the image
 * itself holds.  Checks QEMU 7.2 does not make are listed, with the reason
 * for each, in the vdi section of docs/ARCHITECTURE.md. */
static int vdi_validate_header(const uint8_t *h, const char *name, int64_t file_len,
                               bool writable, Error **errp)
{
    uint32_t signature = vdi_ld32(h, VDI_OFF_SIGNATURE);
    uint32_t version = vdi_ld32(h, VDI_OFF_VERSION);
    uint32_t image_type = vdi_ld32(h, VDI_OFF_IMAGE_TYPE);
    uint32_t offset_bmap = vdi_ld32(h, VDI_OFF_OFFSET_BMAP);
    uint32_t offset_data = vdi_ld32(h, VDI_OFF_OFFSET_DATA);
    uint32_t sector_size = vdi_ld32(h, VDI_OFF_SECTOR_SIZE);
    uint64_t disk_size = vdi_ld64(h, VDI_OFF_DISK_SIZE);
    uint32_t block_size = vdi_ld32(h, VDI_OFF_BLOCK_SIZE);
    uint32_t blocks = vdi_ld32(h, VDI_OFF_BLOCKS_IN_IMAGE);
    uint64_t bmap_end = offset_bmap + (uint64_t)blocks * 4;

    if (signature != VDI_SIGNATURE) {
        error_setg(errp, "vdi: %s: not a VDI image (bad signature 0x%08" PRIx32 ")",
                   name, signature);
        return -EINVAL;
    }
    if (version != VDI_VERSION_1_1) {
        error_setg(errp, "vdi: %s: unsupported VDI version %" PRIu32 ".%" PRIu32
                   " (only 1.1)", name, version >> 16, version & 0xffff);
        return -ENOTSUP;
    }
    /* QEMU takes any type as dynamic.  VirtualBox defines 1..4 and refuses
     * the rest; what another type means for the map is unknown, so such an
     * image is read (as QEMU reads it) but never written. */
    if ((image_type < VDI_TYPE_DYNAMIC || image_type > VDI_TYPE_DIFF) && writable) {
        error_setg(errp, "vdi: %s: unsupported image type %" PRIu32 " for writing"
                   " (VirtualBox defines 1..4; open read-only to read it)", name, image_type);
        return -ENOTSUP;
    }
    if (offset_bmap % VDI_SECTOR_SIZE) {
        error_setg(errp, "vdi: %s: unaligned block map offset 0x%" PRIx32
                   " (must be a multiple of 512)", name, offset_bmap);
        return -ENOTSUP;
    }
    if (offset_bmap < VDI_HEADER_SECTOR) {
        error_setg(errp, "vdi: %s: block map offset 0x%" PRIx32 " overlaps the header",
                   name, offset_bmap);
        return -EINVAL;
    }
    if (offset_data % VDI_SECTOR_SIZE) {
        error_setg(errp, "vdi: %s: unaligned data offset 0x%" PRIx32
                   " (must be a multiple of 512)", name, offset_data);
        return -ENOTSUP;
    }
    if (sector_size != VDI_SECTOR_SIZE) {
        error_setg(errp, "vdi: %s: unsupported sector size %" PRIu32 " (must be 512)",
                   name, sector_size);
        return -ENOTSUP;
    }
    if (block_size != VDI_BLOCK_SIZE) {
        error_setg(errp, "vdi: %s: unsupported block size %" PRIu32 " (must be %u)",
                   name, block_size, VDI_BLOCK_SIZE);
        return -ENOTSUP;
    }
    if (disk_size > VDI_DISK_SIZE_MAX) {
        error_setg(errp, "vdi: %s: Unsupported VDI image size (size is 0x%" PRIx64
                   ", max supported is 0x%" PRIx64 ")", name, disk_size, VDI_DISK_SIZE_MAX);
        return -ENOTSUP;
    }
    if (blocks > VDI_BLOCKS_IN_IMAGE_MAX) {
        error_setg(errp, "vdi: %s: too many blocks %" PRIu32 " (max is %u)",
                   name, blocks, VDI_BLOCKS_IN_IMAGE_MAX);
        return -ENOTSUP;
    }
    if (ALIGN_UP(disk_size, VDI_SECTOR_SIZE) > (uint64_t)blocks * VDI_BLOCK_SIZE) {
        error_setg(errp, "vdi: %s: disk size %" PRIu64 " does not fit the block map"
                   " (%" PRIu32 " blocks have room for %" PRIu64 " bytes)", name,
                   disk_size, blocks, (uint64_t)blocks * VDI_BLOCK_SIZE);
        return -ENOTSUP;
    }
    if (!uuid_is_null(h + VDI_OFF_UUID_LINK)) {
        error_setg(errp, "vdi: %s: differencing images are not supported"
                   " (non-null link UUID)", name);
        return -ENOTSUP;
    }
    if (!uuid_is_null(h + VDI_OFF_UUID_PARENT)) {
        error_setg(errp, "vdi: %s: differencing images are not supported"
                   " (non-null parent UUID)", name);
        return -ENOTSUP;
    }
    if (offset_data < bmap_end) {
        error_setg(errp, "vdi: %s: data offset 0x%" PRIx32 " overlaps the block map"
                   " (0x%" PRIx32 "..0x%" PRIx64 ")", name, offset_data, offset_bmap,
                   bmap_end);
        return -EINVAL;
    }
    if (bmap_end > (uint64_t)file_len) {
        error_setg(errp, "vdi: %s: block map of %" PRIu32 " entries at 0x%" PRIx32
                   " extends beyond the end of the file (%" PRId64 " bytes)",
                   name, blocks, offset_bmap, file_len);
        return -EINVAL;
    }
    return 0;
}

/* Read the block map in bounded chunks (the byte API caps request size). */
static int vdi_load_bmap(BlockDriverState *bs, int64_t file_len)
{
    BDRVVdiState *s = bs->opaque;
    uint64_t avail = MIN(s->bmap_alloc_bytes, (uint64_t)file_len - s->offset_bmap);
    uint64_t done = 0;

    while (done < avail) {
        uint64_t n = MIN(avail - done, 64 * MiB);
        int ret = bdrv_pread(bs->file, s->offset_bmap + done, n, (uint8_t *)s->bmap + done, 0);
        if (ret < 0) {
            return ret;
        }
        done += n;
    }
    return 0;
}

static void vdi_free_state(BDRVVdiState *s)
{
    free(s->bmap);
    free(s->header);
    free(s->map_bounce);
    free(s->shared_slots);
    free(s->free_slots);
    s->free_slots = NULL;
    s->bmap = NULL;
    s->header = NULL;
    s->map_bounce = NULL;
    s->shared_slots = NULL;
}

/*
 * One pass over the map: the end of the slots in use, which slots more
 * than one block points at, and (*seen, for the caller to free) which
 * slots any block points at.  Two bits per slot of scratch, bounded by the
 * map (itself bounded by the file size); shared kept only if a slot is.
 */
static int vdi_scan_bmap(BlockDriverState *bs, uint32_t *slot_end, uint32_t *shared_count,
                         uint8_t **seen_out)
{
    BDRVVdiState *s = bs->opaque;
    size_t bytes = DIV_ROUND_UP((size_t)s->blocks_in_image, 8);
    uint8_t *seen = bytes ? calloc(1, bytes) : NULL;
    uint8_t *shared = bytes ? calloc(1, bytes) : NULL;

    *slot_end = 0;
    *shared_count = 0;
    if (bytes && (!seen || !shared)) {
        free(seen);
        free(shared);
        return -ENOMEM;
    }
    for (uint32_t b = 0; b < s->blocks_in_image; b++) {
        uint32_t e = vdi_entry(s, b);
        uint8_t bit;
        if (!vdi_is_allocated(e) || e >= s->blocks_in_image) {
            continue;
        }
        *slot_end = MAX(*slot_end, e + 1);
        bit = 1U << (e % 8);
        if (seen[e / 8] & bit) {
            *shared_count += !(shared[e / 8] & bit);
            shared[e / 8] |= bit;
        }
        seen[e / 8] |= bit;
    }
    *seen_out = seen;
    if (*shared_count) {
        s->shared_slots = shared;
    } else {
        free(shared);
    }
    return 0;
}

static int vdi_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    BDRVVdiState *s = bs->opaque;
    int64_t file_len;
    uint32_t max_slot_end = 0, shared_count = 0, file_slots = 0;
    uint8_t *seen = NULL;
    int ret;

    /* Attaching a FILE child sets bs->file. */
    if (!bdrv_open_child(NULL, options, "file", bs, BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY, false, errp)) {
        return -EINVAL;
    }

    file_len = bdrv_getlength(bs->file->bs);
    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "vdi: %s: cannot get file size",
                         vdi_image_name(bs));
        return (int)file_len;
    }
    if (file_len < VDI_HEADER_SECTOR) {
        error_setg(errp, "vdi: %s: file too small for a VDI header (%" PRId64 " bytes)",
                   vdi_image_name(bs), file_len);
        return -EINVAL;
    }
    s->header = aligned_alloc_or_die(4096, VDI_HEADER_SECTOR);
    s->map_bounce = aligned_alloc_or_die(4096, VDI_MAP_BOUNCE);
    ret = bdrv_pread(bs->file, 0, VDI_HEADER_SECTOR, s->header, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vdi: %s: cannot read the header", vdi_image_name(bs));
        goto fail;
    }
    ret = vdi_validate_header(s->header, vdi_image_name(bs), file_len,
                              flags & BDRV_O_RDWR, errp);
    if (ret < 0) {
        goto fail;
    }

    s->image_type = vdi_ld32(s->header, VDI_OFF_IMAGE_TYPE);
    s->offset_bmap = vdi_ld32(s->header, VDI_OFF_OFFSET_BMAP);
    s->offset_data = vdi_ld32(s->header, VDI_OFF_OFFSET_DATA);
    s->blocks_in_image = vdi_ld32(s->header, VDI_OFF_BLOCKS_IN_IMAGE);
    s->blocks_allocated = vdi_ld32(s->header, VDI_OFF_BLOCKS_ALLOCATED);
    /* VBoxManage convertfromraw makes odd sizes; QEMU rounds them up. */
    s->disk_size = ALIGN_UP(vdi_ld64(s->header, VDI_OFF_DISK_SIZE), (uint64_t)VDI_SECTOR_SIZE);

    s->bmap_alloc_bytes = ALIGN_UP((size_t)s->blocks_in_image * 4, (size_t)VDI_SECTOR_SIZE);
    s->bmap = s->bmap_alloc_bytes ? aligned_alloc(4096, ALIGN_UP(s->bmap_alloc_bytes, 4096))
                                  : NULL;
    if (s->bmap_alloc_bytes && !s->bmap) {
        error_setg(errp, "vdi: %s: cannot allocate %zu bytes for the block map",
                   vdi_image_name(bs), s->bmap_alloc_bytes);
        ret = -ENOMEM;
        goto fail;
    }
    if (s->bmap) {
        memset(s->bmap, 0, s->bmap_alloc_bytes);
    }
    ret = vdi_load_bmap(bs, file_len);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vdi: %s: cannot read the block map", vdi_image_name(bs));
        goto fail;
    }

    ret = vdi_scan_bmap(bs, &max_slot_end, &shared_count, &seen);
    if (ret < 0) {
        error_setg(errp, "vdi: %s: cannot allocate the slot bitmap for %" PRIu32 " blocks",
                   vdi_image_name(bs), s->blocks_in_image);
        goto fail;
    }
    if (shared_count) {
        warn_report("vdi: %s: %" PRIu32 " data slots are used by more than one block"
                    " (corrupt block map, see img check); writes to those blocks fail",
                    vdi_image_name(bs), shared_count);
    }
    /* New slots go after every slot in use, even if blocks_allocated lags
     * (a crash between map and header write); out-of-range entries are
     * corruption that check reports, and never collide with new slots. */
    s->next_slot = MAX(s->blocks_allocated, max_slot_end);
    if (file_len > (int64_t)s->offset_data) {
        file_slots = (uint32_t)MIN(DIV_ROUND_UP((uint64_t)file_len - s->offset_data,
                                                (uint64_t)VDI_BLOCK_SIZE),
                                   (uint64_t)UINT32_MAX);
    }
    /* Only slots some block points at matter: with none past the end of the
     * file the range is empty, and new blocks may go anywhere past it. */
    s->missing_start = file_slots;
    s->missing_end = max_slot_end > file_slots ? MAX(file_slots, s->next_slot) : file_slots;
    /* Slots below next_slot that no block names (an allocation that failed
     * while a later one was in flight, a crash, an overstated count) are
     * handed out first, so the data area closes up again.  Not with slots
     * missing: then nothing is allocated at all. */
    if (s->missing_start >= s->missing_end) {
        for (uint32_t slot = 0; slot < MIN(s->next_slot, s->blocks_in_image); slot++) {
            if (!(seen[slot / 8] & (1U << (slot % 8))) && !vdi_free_slot_add(s, slot)) {
                error_setg(errp, "vdi: %s: cannot allocate the free-slot bitmap for %" PRIu32
                           " blocks", vdi_image_name(bs), s->blocks_in_image);
                ret = -ENOMEM;
                goto fail;
            }
        }
    }
    free(seen);
    seen = NULL;

    co_mutex_init(&s->alloc_lock);
    co_queue_init(&s->alloc_wait);
    co_queue_init(&s->publish_wait);
    s->allocs = NULL;
    bdrv_set_total_bytes(bs, s->disk_size);
    return 0;

fail:
    free(seen);
    vdi_free_state(s);
    return ret;
}

static void vdi_close(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;

    if (s->header) {
        co_mutex_destroy(&s->alloc_lock);
    }
    vdi_free_state(s);
}

static int64_t vdi_getlength(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;
    return s->disk_size;
}

static int coroutine_fn vdi_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      IOVector *qiov, size_t qiov_offset,
                                      BdrvRequestFlags flags)
{
    BDRVVdiState *s = bs->opaque;

    (void)flags;
    while (bytes > 0) {
        uint32_t block = offset >> VDI_BLOCK_SHIFT;
        uint32_t in_block = offset & (VDI_BLOCK_SIZE - 1);
        uint32_t entry = vdi_entry(s, block);
        int64_t n;

        int ret;
        if (!vdi_is_allocated(entry)) {
            n = vdi_unallocated_run(s, block, in_block, bytes);
            /* through the ring when qiov holds registered-buffer references */
            ret = iov_co_zero(qiov, qiov_offset, (size_t)n);
            if (ret < 0) {
                return ret;
            }
        } else {
            if (vdi_slot_missing(s, entry)) {
                return -EIO;
            }
            n = vdi_contiguous_run(s, block, in_block, bytes, entry);
            ret = bdrv_co_preadv_part(bs->file, vdi_slot_offset(s, entry) + in_block, n,
                                      qiov, qiov_offset, 0);
            if (ret < 0) {
                return ret;
            }
        }
        offset += n;
        bytes -= n;
        qiov_offset += n;
    }
    return 0;
}

/* As QEMU: unallocated and discarded blocks are ZERO (no backing file to
 * fall through to); allocated ones DATA at their file offset, and static
 * images let the file say whether the preallocated data is zero.  Unlike
 * QEMU, a block whose slot is missing (truncated image) is DATA with no
 * offset: the file past its end would say "zero" and convert or compare
 * would skip the block, while reading it fails with -EIO as it should. */
static int coroutine_fn vdi_co_block_status(BlockDriverState *bs, bool want_zero,
                                            int64_t offset, int64_t bytes, int64_t *pnum,
                                            int64_t *map, BlockDriverState **file)
{
    BDRVVdiState *s = bs->opaque;
    uint32_t block = offset >> VDI_BLOCK_SHIFT;
    uint32_t in_block = offset & (VDI_BLOCK_SIZE - 1);
    uint32_t entry = vdi_entry(s, block);

    (void)want_zero;
    if (!vdi_is_allocated(entry)) {
        *pnum = vdi_unallocated_run(s, block, in_block, bytes);
        return BDRV_BLOCK_ZERO;
    }
    if (vdi_slot_missing(s, entry)) {
        *pnum = MIN(bytes, (int64_t)(VDI_BLOCK_SIZE - in_block));
        return BDRV_BLOCK_DATA;
    }
    *pnum = vdi_contiguous_run(s, block, in_block, bytes, entry);
    *map = vdi_slot_offset(s, entry) + in_block;
    *file = bs->file->bs;
    return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID |
           (s->image_type == VDI_TYPE_STATIC ? BDRV_BLOCK_RECURSE : 0);
}

static int vdi_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    (void)bs;
    bdi->cluster_size = VDI_BLOCK_SIZE;
    bdi->vm_state_offset = 0;
    return 0;
}

static int vdi_has_zero_init(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;

    return s->image_type == VDI_TYPE_STATIC ? bdrv_has_zero_init(bs->file->bs) : 1;
}

/* Going read-write must pass the checks an open for writing makes (image
 * types VirtualBox does not define open read-only only). */
static int vdi_reopen_prepare(BlockDriverState *bs, int flags, Error **errp)
{
    BDRVVdiState *s = bs->opaque;
    if (!(flags & BDRV_O_RDWR)) {
        return 0;
    }
    int64_t file_len = bdrv_getlength(bs->file->bs);
    if (file_len < 0) {
        error_setg_errno(errp, (int)-file_len, "vdi: %s: cannot get file size",
                         vdi_image_name(bs));
        return (int)file_len;
    }
    return vdi_validate_header(s->header, vdi_image_name(bs), file_len, true, errp);
}

const BlockDriver bdrv_vdi = {
    .format_name = "vdi",
    .instance_size = sizeof(BDRVVdiState),
    .is_format = true,
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .reopen_prepare = vdi_reopen_prepare,
    .co_preadv = vdi_co_preadv,
    .co_pwritev = vdi_co_pwritev,
    .co_pwrite_zeroes = vdi_co_pwrite_zeroes,
    .co_pdiscard = vdi_co_pdiscard,
    .co_flush_to_os = vdi_co_flush_to_os,
    .co_block_status = vdi_co_block_status,
    .co_check = vdi_co_check,
    .co_create = vdi_co_create,
    .create_opts = vdi_create_opts,
    .getlength = vdi_getlength,
    .get_info = vdi_get_info,
    .has_zero_init = vdi_has_zero_init,
};
