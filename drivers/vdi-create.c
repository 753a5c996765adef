/*
 * vdi-create.c - `img create -f vdi`: a new image laid out as qemu-img 7.2
 * lays it out (header sector, block map padded to 512 bytes right after it,
 * data area after the map), so images from either tool look alike.
 * `static=on` makes every block allocated up front, slot i for block i.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <uuid/uuid.h>
#include "vdi-int.h"

const CreateOptDesc vdi_create_opts[] = {
    { "size", "size", "Virtual disk size", NULL },
    { "static", "bool", "VDI static (pre-allocated) image", "off" },
    { NULL, NULL, NULL, NULL },
};

/* libuuid gives RFC 4122 byte order; VirtualBox stores the first three
 * fields little-endian (IPRT's RTUUID layout). */
static void vdi_uuid_generate(uint8_t *out)
{
    uuid_t u;

    uuid_generate(u);
    out[0] = u[3]; out[1] = u[2]; out[2] = u[1]; out[3] = u[0];
    out[4] = u[5]; out[5] = u[4];
    out[6] = u[7]; out[7] = u[6];
    memcpy(out + 8, u + 8, 8);
}

static void vdi_fill_header(uint8_t *h, uint64_t disk_size, uint32_t blocks, bool is_static,
                            uint32_t bmap_bytes)
{
    memset(h, 0, VDI_HEADER_SECTOR);
    memcpy(h, VDI_TEXT, sizeof(VDI_TEXT) - 1);
    vdi_st32(h, VDI_OFF_SIGNATURE, VDI_SIGNATURE);
    vdi_st32(h, VDI_OFF_VERSION, VDI_VERSION_1_1);
    vdi_st32(h, VDI_OFF_HEADER_SIZE, VDI_HEADER_SIZE);
    vdi_st32(h, VDI_OFF_IMAGE_TYPE, is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    vdi_st32(h, VDI_OFF_OFFSET_BMAP, VDI_HEADER_SECTOR);
    vdi_st32(h, VDI_OFF_OFFSET_DATA, VDI_HEADER_SECTOR + bmap_bytes);
    vdi_st32(h, VDI_OFF_SECTOR_SIZE, VDI_SECTOR_SIZE);
    vdi_st64(h, VDI_OFF_DISK_SIZE, disk_size);
    vdi_st32(h, VDI_OFF_BLOCK_SIZE, VDI_BLOCK_SIZE);
    vdi_st32(h, VDI_OFF_BLOCKS_IN_IMAGE, blocks);
    vdi_st32(h, VDI_OFF_BLOCKS_ALLOCATED, is_static ? blocks : 0);
    vdi_uuid_generate(h + VDI_OFF_UUID_IMAGE);
    vdi_uuid_generate(h + VDI_OFF_UUID_LAST_SNAP);
}

/* The map goes out through one bounded buffer: at the size limit it is 2 GiB,
 * which need not be in memory at once. */
#define VDI_CREATE_CHUNK (4 * MiB)

static int vdi_write_bmap_init(BdrvChild *file, uint32_t *buf, uint32_t blocks, bool is_static,
                               uint64_t bmap_bytes)
{
    for (uint64_t done = 0; done < bmap_bytes;) {
        uint64_t n = MIN(bmap_bytes - done, (uint64_t)VDI_CREATE_CHUNK);
        uint32_t first = done / 4;
        int ret;

        memset(buf, 0, n);             /* the padding after the last entry */
        for (uint32_t i = 0; i < n / 4 && first + i < blocks; i++) {
            buf[i] = htole32(is_static ? first + i : VDI_UNALLOCATED);
        }
        ret = bdrv_pwrite(file, VDI_HEADER_SECTOR + done, n, buf, 0);
        if (ret < 0) {
            return ret;
        }
        done += n;
    }
    return 0;
}

int coroutine_fn vdi_co_create(const char *filename, OptDict *opts, Error **errp)
{
    uint64_t size = 0, bmap_bytes;
    uint32_t blocks, *bmap = NULL;
    uint8_t *header = NULL;
    bool is_static = false;
    BlockDriverState *file_bs;
    BdrvChild *file;
    OptDict *file_opts;
    int ret;

    if (optdict_take_size(opts, "size", 0, &size, errp) < 0 ||
        optdict_take_bool(opts, "static", false, &is_static, errp) < 0) {
        return -EINVAL;
    }
    size = ALIGN_UP(size, (uint64_t)VDI_SECTOR_SIZE);     /* silently, as qemu-img */
    if (size > VDI_DISK_SIZE_MAX) {
        error_setg(errp, "Unsupported VDI image size (size is 0x%" PRIx64
                   ", max supported is 0x%" PRIx64 ")", size, VDI_DISK_SIZE_MAX);
        return -ENOTSUP;
    }
    blocks = DIV_ROUND_UP(size, VDI_BLOCK_SIZE);
    bmap_bytes = ALIGN_UP((uint64_t)blocks * 4, (uint64_t)VDI_SECTOR_SIZE);

    /* What is left is the protocol's (preallocation=...), as in qemu: it
     * applies to the empty file the image is written into. */
    file_opts = optdict_clone(opts);
    optdict_set_int(file_opts, "size", 0);
    ret = bdrv_co_create_file(filename, file_opts, errp);
    optdict_free(file_opts);
    if (ret < 0) {
        return ret;
    }
    file_bs = bdrv_open(filename, NULL, BDRV_O_RDWR | BDRV_O_PROTOCOL, errp);
    if (!file_bs) {
        return -EIO;
    }
    file = bdrv_root_attach_child(file_bs, "vdi-create", BDRV_CHILD_IMAGE | BDRV_CHILD_PRIMARY,
                                  BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                  BLK_PERM_EXCLUSIVE_SHARED, errp);
    if (!file) {
        return -EIO;
    }

    header = aligned_alloc_or_die(4096, VDI_HEADER_SECTOR);
    vdi_fill_header(header, size, blocks, is_static, bmap_bytes);
    ret = bdrv_pwrite(file, 0, VDI_HEADER_SECTOR, header, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vdi: %s: error writing the header", filename);
        goto out;
    }
    if (bmap_bytes) {
        size_t chunk = MIN(bmap_bytes, (uint64_t)VDI_CREATE_CHUNK);
        bmap = aligned_alloc(4096, ALIGN_UP(chunk, 4096));
        if (!bmap) {
            error_setg(errp, "vdi: %s: cannot allocate %zu bytes for the block map",
                       filename, chunk);
            ret = -ENOMEM;
            goto out;
        }
        ret = vdi_write_bmap_init(file, bmap, blocks, is_static, bmap_bytes);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "vdi: %s: error writing the block map", filename);
            goto out;
        }
    }
    if (is_static) {
        ret = bdrv_truncate(file, VDI_HEADER_SECTOR + bmap_bytes + (uint64_t)blocks * VDI_BLOCK_SIZE,
                            false, PREALLOC_MODE_OFF, 0, errp);
        if (ret < 0) {
            error_prepend(errp, "vdi: %s: cannot preallocate the data area: ", filename);
            goto out;
        }
    }
    ret = bdrv_flush(file->bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "vdi: %s: flush failed", filename);
    }
out:
    free(bmap);
    free(header);
    bdrv_unref_child(NULL, file);
    return ret < 0 ? ret : 0;
}
