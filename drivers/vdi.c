/*
 * vdi.c - the VDI format driver (VirtualBox images): probe, open with header
 * validation, reads, allocating writes, zeroes/discard, block status, info.
 * Creation is in vdi-create.c, the consistency check in vdi-check.c, the
 * layout in vdi-int.h.
 *
 * Concurrency: queue threads share one node.  The block map is read without
 * a lock (entries only change from "not allocated" to a slot, or to
 * DISCARDED, and are loaded atomically).  A write that needs new slots
 * reserves them under alloc_lock and registers the blocks as in flight, then
 * writes data with no lock held; writers that meet a block in flight wait on
 * alloc_wait and then write in place.  Crash ordering: the new slots' data is
 * written and flushed before the block map entries pointing at them are
 * written, and the header's blocks_allocated is written after the map, so a
 * crash leaves at worst unreferenced (leaked) slots, never a map entry that
 * points at unwritten data.  Only metadata I/O runs under alloc_lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "vdi-int.h"

/* Source of the zero padding of newly allocated blocks; never written. */
static uint8_t vdi_zero_block[VDI_BLOCK_SIZE] __attribute__((aligned(4096)));

/* Requests with more buffers than this build their padded vector on the heap. */
#define VDI_STACK_IOV 32

const char *vdi_image_name(BlockDriverState *bs)
{
    BlockDriverState *named = bs->file ? bs->file->bs : bs;

    if (named->filename[0] || !named->node_name) {
        return named->filename;
    }
    return named->node_name;         /* e.g. an in-memory node */
}

void vdi_uuid_unparse(const uint8_t *u, char out[37])
{
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6],
             u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
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
 * itself holds. */
static int vdi_validate_header(const uint8_t *h, const char *name, int64_t file_len,
                               Error **errp)
{
    uint32_t signature = vdi_ld32(h, VDI_OFF_SIGNATURE);
    uint32_t version = vdi_ld32(h, VDI_OFF_VERSION);
    uint32_t header_size = vdi_ld32(h, VDI_OFF_HEADER_SIZE);
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
    if (header_size < VDI_HEADER_SIZE || header_size > VDI_HEADER_SIZE_MAX) {
        error_setg(errp, "vdi: %s: unsupported header size 0x%" PRIx32
                   " (must be 0x%x..0x%x)", name, header_size, VDI_HEADER_SIZE,
                   VDI_HEADER_SIZE_MAX);
        return -ENOTSUP;
    }
    if (image_type != VDI_TYPE_DYNAMIC && image_type != VDI_TYPE_STATIC) {
        error_setg(errp, "vdi: %s: unsupported image type %" PRIu32
                   " (only 1 dynamic and 2 static)", name, image_type);
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
    s->bmap = NULL;
    s->header = NULL;
    s->map_bounce = NULL;
}

static int vdi_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    BDRVVdiState *s = bs->opaque;
    BdrvChild *file;
    int64_t file_len;
    uint32_t max_slot_end = 0;
    int ret;

    (void)flags;
    file = bdrv_open_child(NULL, options, "file", bs, BDRV_CHILD_FILE, false, errp);
    if (!file) {
        return -EINVAL;
    }
    if (!bs->file) {
        bs->file = file;
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
    ret = vdi_validate_header(s->header, vdi_image_name(bs), file_len, errp);
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

    /* New slots go after every slot in use, even if blocks_allocated lags
     * (a crash between map and header write); out-of-range entries are
     * corruption that check reports, and never collide with new slots. */
    for (uint32_t b = 0; b < s->blocks_in_image; b++) {
        uint32_t e = vdi_entry(s, b);
        if (vdi_is_allocated(e) && e < s->blocks_in_image && e + 1 > max_slot_end) {
            max_slot_end = e + 1;
        }
    }
    s->next_slot = MAX(s->blocks_allocated, max_slot_end);
    if (file_len > (int64_t)s->offset_data) {
        s->data_slots = (uint32_t)MIN(DIV_ROUND_UP((uint64_t)file_len - s->offset_data,
                                                   (uint64_t)VDI_BLOCK_SIZE),
                                      (uint64_t)UINT32_MAX);
    }

    co_mutex_init(&s->alloc_lock);
    co_mutex_init(&s->flush_lock);
    co_queue_init(&s->alloc_wait);
    s->allocs = NULL;
    bs->total_bytes = s->disk_size;
    return 0;

fail:
    vdi_free_state(s);
    return ret;
}

static void vdi_close(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;

    if (s->header) {
        co_mutex_destroy(&s->alloc_lock);
        co_mutex_destroy(&s->flush_lock);
    }
    vdi_free_state(s);
}

static int64_t vdi_getlength(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;
    return s->disk_size;
}

/*
 * Bytes from (block, in_block) that map to consecutive file offsets: the
 * following blocks' entries continue entry+1, entry+2, ... (what qemu-img
 * convert and sequential writers produce), so one backing I/O covers them.
 */
static int64_t vdi_contiguous_run(BDRVVdiState *s, uint32_t block, uint32_t in_block,
                                  int64_t bytes, uint32_t entry)
{
    int64_t n = MIN(bytes, (int64_t)(VDI_BLOCK_SIZE - in_block));

    while (n < bytes) {
        uint32_t next = vdi_entry(s, ++block);
        if (next != ++entry || vdi_slot_missing(s, entry)) {
            break;
        }
        n += MIN(bytes - n, (int64_t)VDI_BLOCK_SIZE);
    }
    return n;
}

/* Bytes from (block, in_block) whose blocks are all unallocated or discarded. */
static int64_t vdi_unallocated_run(BDRVVdiState *s, uint32_t block, uint32_t in_block,
                                   int64_t bytes)
{
    int64_t n = MIN(bytes, (int64_t)(VDI_BLOCK_SIZE - in_block));

    while (n < bytes && !vdi_is_allocated(vdi_entry(s, ++block))) {
        n += MIN(bytes - n, (int64_t)VDI_BLOCK_SIZE);
    }
    return n;
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

        if (!vdi_is_allocated(entry)) {
            n = vdi_unallocated_run(s, block, in_block, bytes);
            iov_memset(qiov, qiov_offset, 0, n);
        } else {
            int ret;
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

/* Write the block-map sectors holding entries [first, first+count). */
static int coroutine_fn vdi_write_bmap(BlockDriverState *bs, uint32_t first, uint32_t count)
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

/*
 * Point blocks [block, block+count) at slots [slot, slot+count), whose data
 * is already on disk: map first, then the header count.  alloc_lock held.
 * On failure the slots leak and the blocks stay as they were.
 */
static int coroutine_fn vdi_publish(BlockDriverState *bs, uint32_t block, uint32_t count,
                                    uint32_t slot)
{
    BDRVVdiState *s = bs->opaque;
    int ret;

    if (slot + count > __atomic_load_n(&s->data_slots, __ATOMIC_RELAXED)) {
        __atomic_store_n(&s->data_slots, slot + count, __ATOMIC_RELEASE);
    }
    ret = vdi_write_new_entries(bs, block, count, slot);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t i = 0; i < count; i++) {
        vdi_set_entry(s, block + i, slot + i);
    }
    if (slot + count > s->blocks_allocated) {
        s->blocks_allocated = slot + count;
        ret = vdi_write_header(bs);
    }
    return ret;
}

/* Fill iov[] with [off, off+len) of src; -1 if more than max elements. */
static int vdi_fill_iov(struct iovec *iov, int max, const IOVector *src, size_t off, size_t len)
{
    int n = 0;

    for (int i = 0; i < src->niov && len > 0; i++) {
        size_t l = src->iov[i].iov_len, take;
        if (off >= l) {
            off -= l;
            continue;
        }
        if (n == max) {
            return -1;
        }
        take = MIN(l - off, len);
        iov[n].iov_base = (uint8_t *)src->iov[i].iov_base + off;
        iov[n].iov_len = take;
        n++;
        len -= take;
        off = 0;
    }
    return n;
}

/* Write head zeros, the caller's bytes and tail zeros at file offset foff in
 * one request.  The vector lives on the stack unless the caller's is long. */
static int coroutine_fn vdi_write_padded(BlockDriverState *bs, uint64_t foff, size_t head,
                                         IOVector *qiov, size_t qiov_offset, size_t len,
                                         size_t tail)
{
    struct iovec iov[VDI_STACK_IOV + 2];
    IOVector q;
    int n = 0, m, ret;

    if (head) {
        iov[n++] = (struct iovec){ vdi_zero_block, head };
    }
    m = vdi_fill_iov(iov + n, VDI_STACK_IOV, qiov, qiov_offset, len);
    if (m >= 0) {
        n += m;
        if (tail) {
            iov[n++] = (struct iovec){ vdi_zero_block, tail };
        }
        iov_init_external(&q, iov, n);
    } else {
        iov_init(&q, qiov->niov + 2);
        if (head) {
            iov_add(&q, vdi_zero_block, head);
        }
        iov_concat(&q, qiov, qiov_offset, len);
        if (tail) {
            iov_add(&q, vdi_zero_block, tail);
        }
    }
    ret = bdrv_co_pwritev(bs->file, foff, head + len + tail, &q, 0);
    iov_destroy(&q);
    return ret;
}

/* Make the caller's just-written block data durable, sharing the flush with
 * every allocation whose data was written before the flush started. */
static int coroutine_fn vdi_flush_new_data(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;
    uint64_t mine = __atomic_add_fetch(&s->data_seq, 1, __ATOMIC_SEQ_CST);
    int ret = 0;

    co_mutex_lock(&s->flush_lock);
    if (s->flushed_seq < mine) {
        uint64_t covered = __atomic_load_n(&s->data_seq, __ATOMIC_SEQ_CST);
        ret = bdrv_co_flush(bs->file->bs);
        if (ret >= 0) {
            s->flushed_seq = covered;
        }
    }
    co_mutex_unlock(&s->flush_lock);
    return ret;
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
    if (s->next_slot >= s->blocks_in_image) {
        /* Only a corrupt blocks_allocated gets here: the map is full. */
        co_mutex_unlock(&s->alloc_lock);
        return -ENOSPC;
    }
    want = DIV_ROUND_UP(in_block + (uint64_t)bytes, VDI_BLOCK_SIZE);
    want = MIN(want, s->blocks_in_image - s->next_slot);
    for (count = 1; count < want; count++) {
        if (vdi_is_allocated(vdi_entry(s, block + count)) || vdi_alloc_find(s, block + count)) {
            break;
        }
    }
    slot = s->next_slot;
    s->next_slot += count;
    alloc = (VdiAllocation){ .first_block = block, .nb_blocks = count, .next = s->allocs };
    s->allocs = &alloc;
    co_mutex_unlock(&s->alloc_lock);

    len = MIN((uint64_t)bytes, (uint64_t)count * VDI_BLOCK_SIZE - in_block);
    tail = (uint64_t)count * VDI_BLOCK_SIZE - in_block - len;
    ret = vdi_write_padded(bs, vdi_slot_offset(s, slot), in_block, qiov, qiov_offset, len, tail);
    if (ret >= 0) {
        ret = vdi_flush_new_data(bs);
    }

    co_mutex_lock(&s->alloc_lock);
    if (ret >= 0) {
        ret = vdi_publish(bs, block, count, slot);
    } else if (s->next_slot == slot + count) {
        s->next_slot = slot;           /* nobody reserved after us: reuse */
    }
    vdi_alloc_remove(s, &alloc);
    co_queue_restart_all(&s->alloc_wait);
    co_mutex_unlock(&s->alloc_lock);
    *done = len;
    return ret < 0 ? ret : 0;
}

static int coroutine_fn vdi_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
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

        if (vdi_is_allocated(entry)) {
            if (vdi_slot_missing(s, entry)) {
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
            if (end > start && !vdi_slot_missing(s, entry)) {
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

static int coroutine_fn vdi_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                             int64_t bytes, BdrvRequestFlags flags)
{
    return vdi_co_zero_range(bs, offset, bytes, flags, false);
}

static int coroutine_fn vdi_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    return vdi_co_zero_range(bs, offset, bytes, 0, true);
}

/* As QEMU: unallocated and discarded blocks are ZERO (no backing file to
 * fall through to); allocated ones DATA at their file offset, and static
 * images let the file say whether the preallocated data is zero. */
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

static void vdi_get_specific_info(BlockDriverState *bs, ImageSpecificInfo *info)
{
    BDRVVdiState *s = bs->opaque;
    char uuid[37];

    image_info_add(info, "type", "%s", s->image_type == VDI_TYPE_STATIC ? "static" : "dynamic");
    vdi_uuid_unparse(s->header + VDI_OFF_UUID_IMAGE, uuid);
    image_info_add(info, "uuid", "%s", uuid);
    vdi_uuid_unparse(s->header + VDI_OFF_UUID_LAST_SNAP, uuid);
    image_info_add(info, "last-snapshot-uuid", "%s", uuid);
    image_info_add_int(info, "allocated-blocks", __atomic_load_n(&s->blocks_allocated,
                                                                 __ATOMIC_RELAXED));
    image_info_add_int(info, "disk-size", (int64_t)vdi_ld64(s->header, VDI_OFF_DISK_SIZE));
}

static int vdi_has_zero_init(BlockDriverState *bs)
{
    BDRVVdiState *s = bs->opaque;

    return s->image_type == VDI_TYPE_STATIC ? bdrv_has_zero_init(bs->file->bs) : 1;
}

const BlockDriver bdrv_vdi = {
    .format_name = "vdi",
    .instance_size = sizeof(BDRVVdiState),
    .is_format = true,
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .co_preadv = vdi_co_preadv,
    .co_pwritev = vdi_co_pwritev,
    .co_pwrite_zeroes = vdi_co_pwrite_zeroes,
    .co_pdiscard = vdi_co_pdiscard,
    .co_block_status = vdi_co_block_status,
    .co_check = vdi_co_check,
    .co_create = vdi_co_create,
    .create_opts = vdi_create_opts,
    .getlength = vdi_getlength,
    .get_info = vdi_get_info,
    .get_specific_info = vdi_get_specific_info,
    .has_zero_init = vdi_has_zero_init,
};
